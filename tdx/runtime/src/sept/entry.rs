//! The 64-bit mirror entry: one per GFN slot of every mirror table.
//!
//! Layout (host-physical addresses are 4 KiB aligned, so the low 12 bits are free):
//!
//! | bits | meaning |
//! | --- | --- |
//! | 2:0 | kind: 0 empty, 1 frozen, 2 non-leaf, 3 leaf, 4 leaked leaf |
//! | 5:3 | leaf level (module numbering: 0 = 4 KiB, 1 = 2 MiB, 2 = 1 GiB) |
//! | 6 | leaf added with TDH.MEM.PAGE.ADD (MAPPED from the start) rather than PAGE.AUG (PENDING) |
//! | 7 | non-leaf whose table was created by TDH.MEM.PAGE.DEMOTE (a promotion candidate) |
//! | 51:12 | HPA: the leaf's page, or the non-leaf's S-EPT page |
//!
//! The all-zero value is "empty" so freshly zeroed tables need no initialisation, and
//! "frozen" is a single value, so a compare-and-swap from any observed value to `FROZEN` both
//! claims the slot and proves nobody changed it meanwhile (the mirror equivalent of KVM's
//! `FROZEN_SPTE`, Linux `arch/x86/kvm/mmu/spte.h` and `tdp_mmu.c`). The child table of a non-leaf entry is not in the entry:
//! it is found through the parent table's set-once child slot at the same index, so the entry
//! has room for the S-EPT page HPA that teardown needs.

use tdx_abi::{Hpa, PageLevel};

/// Raw value of an empty slot.
pub(crate) const EMPTY: u64 = 0;
/// Raw value of a frozen slot: somebody is issuing a SEAMCALL for it; back off.
pub(crate) const FROZEN: u64 = KIND_FROZEN;

const KIND_MASK: u64 = 0b111;
const KIND_FROZEN: u64 = 1;
const KIND_NON_LEAF: u64 = 2;
const KIND_LEAF: u64 = 3;
const KIND_LEAKED: u64 = 4;
const LEVEL_SHIFT: u32 = 3;
const LEVEL_MASK: u64 = 0b111 << LEVEL_SHIFT;
const FLAG_ADDED: u64 = 1 << 6;
const FLAG_DEMOTED: u64 = 1 << 7;
const HPA_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// A decoded mirror entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Entry {
    /// Nothing mapped, no table.
    Empty,
    /// A SEAMCALL for this slot is in flight (or the slot belongs to a detached table).
    Frozen,
    /// Points to a child table; `sept_page` is the S-EPT page the module uses for it.
    NonLeaf {
        /// The S-EPT page given with SEPT.ADD or DEMOTE.
        sept_page: Hpa,
        /// The child table was made by demoting a huge leaf.
        demoted: bool,
    },
    /// A mapped private page.
    Leaf {
        /// First byte of the page.
        hpa: Hpa,
        /// Its size.
        level: PageLevel,
        /// Added with PAGE.ADD (MAPPED) rather than AUG (PENDING).
        added: bool,
    },
    /// A page whose removal failed: the TD is bugged and the page is never reused.
    Leaked {
        /// First byte of the page.
        hpa: Hpa,
        /// Its size.
        level: PageLevel,
    },
}

impl Entry {
    /// Decodes a raw entry. Values the manager never writes decode as `Frozen`, which every
    /// path treats as "not mine, back off".
    #[inline]
    pub(crate) fn decode(raw: u64) -> Entry {
        let hpa = Hpa(raw & HPA_MASK);
        let level = || PageLevel::from_raw((raw & LEVEL_MASK) >> LEVEL_SHIFT);
        match raw & KIND_MASK {
            0 if raw == EMPTY => Entry::Empty,
            KIND_NON_LEAF => Entry::NonLeaf {
                sept_page: hpa,
                demoted: raw & FLAG_DEMOTED != 0,
            },
            KIND_LEAF => match level() {
                Some(level) => Entry::Leaf {
                    hpa,
                    level,
                    added: raw & FLAG_ADDED != 0,
                },
                None => Entry::Frozen,
            },
            KIND_LEAKED => match level() {
                Some(level) => Entry::Leaked { hpa, level },
                None => Entry::Frozen,
            },
            _ => Entry::Frozen,
        }
    }

    /// Encodes the entry.
    #[inline]
    pub(crate) fn encode(self) -> u64 {
        match self {
            Entry::Empty => EMPTY,
            Entry::Frozen => FROZEN,
            Entry::NonLeaf { sept_page, demoted } => {
                (sept_page.0 & HPA_MASK) | KIND_NON_LEAF | if demoted { FLAG_DEMOTED } else { 0 }
            }
            Entry::Leaf { hpa, level, added } => {
                (hpa.0 & HPA_MASK)
                    | KIND_LEAF
                    | (level.raw() << LEVEL_SHIFT)
                    | if added { FLAG_ADDED } else { 0 }
            }
            Entry::Leaked { hpa, level } => {
                (hpa.0 & HPA_MASK) | KIND_LEAKED | (level.raw() << LEVEL_SHIFT)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let cases = [
            Entry::Empty,
            Entry::Frozen,
            Entry::NonLeaf {
                sept_page: Hpa(0x000F_FFFF_FFFF_F000),
                demoted: true,
            },
            Entry::NonLeaf {
                sept_page: Hpa(0x1000),
                demoted: false,
            },
            Entry::Leaf {
                hpa: Hpa(0x20_0000),
                level: PageLevel::L2M,
                added: false,
            },
            Entry::Leaf {
                hpa: Hpa(0x7000),
                level: PageLevel::L4K,
                added: true,
            },
            Entry::Leaked {
                hpa: Hpa(0x4000_0000),
                level: PageLevel::L1G,
            },
        ];
        for e in cases {
            assert_eq!(Entry::decode(e.encode()), e, "{e:?}");
        }
        assert_eq!(Entry::Empty.encode(), 0);
        assert_ne!(Entry::Frozen.encode(), Entry::Empty.encode());
    }

    #[test]
    fn garbage_decodes_as_frozen() {
        assert_eq!(Entry::decode(0x1000), Entry::Frozen); // HPA bits with kind 0
        assert_eq!(Entry::decode(7), Entry::Frozen);
        assert_eq!(Entry::decode(KIND_LEAF | (7 << LEVEL_SHIFT)), Entry::Frozen);
    }
}
