//! The TDX module 1.5 host ABI: leaf numbers, completion statuses, operand IDs, S-EPT states and
//! the address newtypes. Everything here is plain data with no behaviour beyond encoding.

pub mod exit;
pub mod leaf;
pub mod metadata;
pub mod pamt;
pub mod sept;
pub mod status;
pub mod td_params;
pub mod types;

pub use leaf::Leaf;
pub use sept::{SeptLevelState, SeptState};
pub use status::{OperandId, TdxStatus};
pub use types::{Gfn, Gpa, Hkid, Hpa, PAGE_SIZE_1G, PAGE_SIZE_2M, PAGE_SIZE_4K, PageLevel};

/// Encodes the `page_info_api_input_t` operand: GPA frame in bits 51:12, level in bits 2:0.
pub const fn gpa_level_operand(gpa: Gpa, level: PageLevel) -> u64 {
    (gpa.0 & 0x000F_FFFF_FFFF_F000) | level.raw()
}

/// Decodes a `page_info_api_input_t` operand; `None` if reserved bits are set or the level is
/// not a valid level number.
pub const fn decode_gpa_level_operand(raw: u64) -> Option<(Gpa, PageLevel)> {
    if raw & 0xFFF0_0000_0000_0FF8 != 0 {
        return None;
    }
    match PageLevel::from_raw(raw & 7) {
        Some(level) => Some((Gpa(raw & 0x000F_FFFF_FFFF_F000), level)),
        None => None,
    }
}
