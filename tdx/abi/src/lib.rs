//! The Intel TDX module 1.5 host ABI, as data and one trait.
//!
//! * leaf numbers ([`Leaf`]), completion statuses and operand IDs ([`TdxStatus`],
//!   [`OperandId`]), S-EPT states ([`SeptState`]), PAMT page types ([`pamt`]), the address and
//!   level newtypes ([`types`]);
//! * TD_PARAMS ([`td_params`]), metadata field IDs ([`metadata`]), the TDH.VP.ENTER exit ABI
//!   ([`exit`]);
//! * the SEAMCALL seam ([`seamcall`]): [`seamcall::Regs`], the raw [`seamcall::Seamcall`]
//!   trait every backend implements, and the typed wrappers ([`seamcall::TdxModule`]) that are
//!   the only way the host issues a SEAMCALL;
//! * measurement ([`measure`]): the MRTD and RTMR hash functions;
//! * physical memory access by HPA ([`phys`]);
//! * the hooks a software module offers beyond the ABI ([`software`]).
//!
//! Only values of the real module live here (Intel TDX Module 1.5 ABI specification, the
//! module's source at `intel/tdx-module`, and Linux `arch/x86/virt/vmx/tdx/`,
//! `arch/x86/kvm/vmx/tdx_arch.h`). What the software module invents stays in its own crate.
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]
// The ABI is bit fields: every narrowing is a masked field extraction, said explicitly.
#![cfg_attr(
    not(test),
    warn(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_possible_wrap,
        clippy::cast_lossless
    )
)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod exit;
pub mod leaf;
pub mod measure;
pub mod metadata;
pub mod pamt;
pub mod phys;
pub mod seamcall;
pub mod sept;
pub mod software;
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
