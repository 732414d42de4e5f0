//! Address and identifier newtypes shared by every layer of the runtime.
//!
//! The TDX module ABI passes guest-physical addresses, host-physical addresses, key IDs and
//! mapping levels in plain 64-bit registers; mixing them up is the classic bug. These newtypes
//! make the compiler keep them apart.

use core::fmt;

/// Size of a 4 KiB page.
pub const PAGE_SIZE_4K: u64 = 4096;
/// Size of a 2 MiB page.
pub const PAGE_SIZE_2M: u64 = 2 * 1024 * 1024;
/// Size of a 1 GiB page.
pub const PAGE_SIZE_1G: u64 = 1024 * 1024 * 1024;

/// A guest-physical address (private or shared; the shared bit is part of the value).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gpa(pub u64);

/// A host-physical address (identity-mapped on the appliance, so also a usable pointer there).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hpa(pub u64);

/// A guest frame number: a [`Gpa`] shifted right by 12.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gfn(pub u64);

/// A host key ID (HKID) that encrypts one TD's private memory.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hkid(pub u16);

/// A mapping level in the TDX module's numbering (`page_info_api_input_t` bits 2:0):
/// 0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB, 3 and 4 are non-leaf levels (512 GiB, 256 TiB).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum PageLevel {
    /// 4 KiB page (module level 0, "PT" level).
    L4K = 0,
    /// 2 MiB page (module level 1, "PD" level).
    L2M = 1,
    /// 1 GiB page (module level 2, "PDPT" level).
    L1G = 2,
    /// 512 GiB region (module level 3, "PML4" level); never a leaf.
    L512G = 3,
    /// 256 TiB region (module level 4, "PML5" level); never a leaf.
    L256T = 4,
}

impl PageLevel {
    /// Decodes a module level number.
    pub const fn from_raw(raw: u64) -> Option<Self> {
        match raw {
            0 => Some(Self::L4K),
            1 => Some(Self::L2M),
            2 => Some(Self::L1G),
            3 => Some(Self::L512G),
            4 => Some(Self::L256T),
            _ => None,
        }
    }

    /// The module's level number.
    pub const fn raw(self) -> u64 {
        self as u64
    }

    /// Bytes covered by one entry at this level.
    pub const fn size(self) -> u64 {
        1u64 << self.shift()
    }

    /// log2 of [`Self::size`].
    pub const fn shift(self) -> u32 {
        12 + 9 * (self as u32)
    }

    /// Number of 4 KiB pages one entry at this level covers.
    pub const fn pages_4k(self) -> u64 {
        1u64 << (9 * (self as u32))
    }

    /// The next smaller level, if any.
    pub const fn lower(self) -> Option<Self> {
        Self::from_raw((self as u64).wrapping_sub(1))
    }

    /// The next larger level, if any.
    pub const fn upper(self) -> Option<Self> {
        Self::from_raw(self as u64 + 1)
    }
}

impl Gpa {
    /// The frame number of this address.
    pub const fn gfn(self) -> Gfn {
        Gfn(self.0 >> 12)
    }
    /// Whether the address is aligned to `level`.
    pub const fn is_aligned(self, level: PageLevel) -> bool {
        self.0 & (level.size() - 1) == 0
    }
    /// The address rounded down to `level`.
    pub const fn align_down(self, level: PageLevel) -> Gpa {
        Gpa(self.0 & !(level.size() - 1))
    }
    /// Adds a byte offset.
    pub const fn add(self, bytes: u64) -> Gpa {
        Gpa(self.0 + bytes)
    }
}

impl Gfn {
    /// The first byte of this frame.
    pub const fn gpa(self) -> Gpa {
        Gpa(self.0 << 12)
    }
}

impl Hpa {
    /// Whether the address is aligned to `level`.
    pub const fn is_aligned(self, level: PageLevel) -> bool {
        self.0 & (level.size() - 1) == 0
    }
    /// Adds a byte offset.
    pub const fn add(self, bytes: u64) -> Hpa {
        Hpa(self.0 + bytes)
    }
}

impl fmt::Debug for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpa({:#x})", self.0)
    }
}
impl fmt::Display for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
impl fmt::Debug for Hpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hpa({:#x})", self.0)
    }
}
impl fmt::Display for Hpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
impl fmt::Debug for Gfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gfn({:#x})", self.0)
    }
}
impl fmt::Debug for Hkid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hkid({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_sizes_match_the_module_numbering() {
        assert_eq!(PageLevel::L4K.size(), PAGE_SIZE_4K);
        assert_eq!(PageLevel::L2M.size(), PAGE_SIZE_2M);
        assert_eq!(PageLevel::L1G.size(), PAGE_SIZE_1G);
        assert_eq!(PageLevel::L2M.pages_4k(), 512);
        assert_eq!(PageLevel::from_raw(5), None);
        assert_eq!(PageLevel::L4K.lower(), None);
        assert_eq!(PageLevel::L4K.upper(), Some(PageLevel::L2M));
    }

    #[test]
    fn gpa_alignment_and_gfn() {
        let gpa = Gpa(0x20_1000);
        assert!(gpa.is_aligned(PageLevel::L4K));
        assert!(!gpa.is_aligned(PageLevel::L2M));
        assert_eq!(gpa.align_down(PageLevel::L2M), Gpa(0x20_0000));
        assert_eq!(gpa.gfn(), Gfn(0x201));
        assert_eq!(gpa.gfn().gpa(), gpa);
    }
}
