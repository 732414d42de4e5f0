//! PAMT (Physical Address Metadata Table) page types and sizes (TDX module 1.5
//! `pamt_manager.h`).
//!
//! Every 4 KiB page of TDX-convertible memory has a PAMT entry: a sharex lock, the page type,
//! the owner TD (TDR HPA >> 12), the page size the page is mapped at and the BEPOCH (TLB epoch
//! recorded by TDH.MEM.RANGE.BLOCK).

/// Bytes per PAMT entry at each level (module 1.5, non-dynamic PAMT).
pub const PAMT_ENTRY_SIZE: u64 = 16;

/// PAMT page type (`PT_*`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum PageType {
    /// `PT_NDA`: not assigned to any TD (free for the host).
    Nda = 0,
    /// `PT_RSVD`: reserved (PAMT itself, reserved areas of a TDMR).
    Rsvd = 1,
    /// `PT_REG`: a TD's private guest page.
    Reg = 3,
    /// `PT_TDR`: a TD's root control page.
    Tdr = 4,
    /// `PT_TDCX`: a TDCS or TDVPS extension page.
    Tdcx = 5,
    /// `PT_TDVPR`: a vCPU's root page.
    Tdvpr = 6,
    /// `PT_EPT`: a Secure-EPT page.
    Ept = 8,
}

impl PageType {
    /// Decodes a `PT_*` value.
    pub const fn from_raw(raw: u64) -> Option<PageType> {
        Some(match raw {
            0 => PageType::Nda,
            1 => PageType::Rsvd,
            3 => PageType::Reg,
            4 => PageType::Tdr,
            5 => PageType::Tdcx,
            6 => PageType::Tdvpr,
            8 => PageType::Ept,
            _ => return None,
        })
    }
    /// The `PT_*` value.
    pub const fn raw(self) -> u64 {
        self as u64
    }
}

/// Size a page is tracked at in PAMT (`PT_4KB` 0, `PT_2MB` 1, `PT_1GB` 2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u8)]
pub enum PamtPageSize {
    /// 4 KiB.
    S4K = 0,
    /// 2 MiB.
    S2M = 1,
    /// 1 GiB.
    S1G = 2,
}

impl PamtPageSize {
    /// Decodes a size value.
    pub const fn from_raw(raw: u64) -> Option<PamtPageSize> {
        Some(match raw {
            0 => PamtPageSize::S4K,
            1 => PamtPageSize::S2M,
            2 => PamtPageSize::S1G,
            _ => return None,
        })
    }
    /// The raw value.
    pub const fn raw(self) -> u64 {
        self as u64
    }
    /// Number of 4 KiB pages in a page of this size.
    pub const fn pages_4k(self) -> u64 {
        1u64 << (9 * self as u32)
    }
}

/// Minimum size in bytes of the PAMT array for one page size covering `tdmr_size` bytes
/// (`(TDMR size / page size) * 16`, rounded up to 4 KiB as the module requires).
pub const fn pamt_array_size(tdmr_size: u64, page_size: PamtPageSize) -> u64 {
    let entries = tdmr_size >> (12 + 9 * page_size as u32);
    let bytes = entries * PAMT_ENTRY_SIZE;
    (bytes + 0xFFF) & !0xFFF
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn page_types_round_trip_and_pamt_sizing_matches_the_rule() {
        for t in [
            PageType::Nda,
            PageType::Rsvd,
            PageType::Reg,
            PageType::Tdr,
            PageType::Tdcx,
            PageType::Tdvpr,
            PageType::Ept,
        ] {
            assert_eq!(PageType::from_raw(t.raw()), Some(t));
        }
        assert_eq!(PageType::from_raw(7), None);
        // 1 GiB TDMR: 262144 4K entries * 16 B = 4 MiB; 512 2M entries = 8 KiB; 1 1G entry.
        assert_eq!(pamt_array_size(1 << 30, PamtPageSize::S4K), 4 << 20);
        assert_eq!(pamt_array_size(1 << 30, PamtPageSize::S2M), 8192);
        assert_eq!(pamt_array_size(1 << 30, PamtPageSize::S1G), 4096);
    }
}
