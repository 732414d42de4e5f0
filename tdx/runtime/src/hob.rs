//! TD HOB builder: the hand-off block list the VMM writes into the TDVF `TD_HOB` section.
//!
//! TDVF reads its memory map from this list (TDVF design guide, "TD HOB"; PI spec vol. 3
//! "HOB Code Definitions"). The list produced here has the exact shape QEMU's
//! `hw/i386/tdvf-hob.c` writes:
//!
//! 1. `EFI_HOB_HANDOFF_INFO_TABLE` (PHIT, 56 bytes): version 9, boot mode 0, the four memory
//!    top/bottom fields 0 (TDVF ignores them), `EfiEndOfHobList` = GPA just past the end HOB.
//! 2. One `EFI_HOB_RESOURCE_DESCRIPTOR` (48 bytes) per RAM range in address order: owner GUID
//!    zero, type `EFI_RESOURCE_SYSTEM_MEMORY` (0) for ranges the VMM PAGE.ADDed (already
//!    accepted) or `EFI_RESOURCE_MEMORY_UNACCEPTED` (7) for ranges the guest must accept, both
//!    with attributes PRESENT | INITIALIZED | TESTED (0x7).
//! 3. `EFI_HOB_GENERIC_HEADER` of type `END_OF_HOB_LIST` (0xFFFF, 8 bytes).
//!
//! Every HOB is a multiple of 8 bytes, so QEMU's 8-byte re-alignment after each HOB never adds
//! padding. All fields are little-endian. The HOB must fit in the TD_HOB section; the rest of
//! the section stays zero.
//!
//! Hand-written: the layout is three fixed-size records; crates that model PI HOBs (`r-efi`,
//! `uefi`) describe the consumer side and would add a dependency for ~60 lines of encoding.

use alloc::vec;
use alloc::vec::Vec;

use tdx_abi::Gpa;

/// `EFI_HOB_TYPE_HANDOFF`.
pub const HOB_TYPE_HANDOFF: u16 = 0x0001;
/// `EFI_HOB_TYPE_RESOURCE_DESCRIPTOR`.
pub const HOB_TYPE_RESOURCE_DESCRIPTOR: u16 = 0x0003;
/// `EFI_HOB_TYPE_END_OF_HOB_LIST`.
pub const HOB_TYPE_END_OF_HOB_LIST: u16 = 0xFFFF;
/// `EFI_HOB_HANDOFF_TABLE_VERSION`.
pub const HOB_HANDOFF_TABLE_VERSION: u32 = 0x0009;
/// `EFI_RESOURCE_SYSTEM_MEMORY`.
pub const RESOURCE_SYSTEM_MEMORY: u32 = 0x0000_0000;
/// `EFI_RESOURCE_MEMORY_UNACCEPTED` (PI 1.8).
pub const RESOURCE_MEMORY_UNACCEPTED: u32 = 0x0000_0007;
/// `EFI_RESOURCE_ATTRIBUTE_PRESENT | INITIALIZED | TESTED`, QEMU's
/// `EFI_RESOURCE_ATTRIBUTE_TDVF_PRIVATE` and `..._TDVF_UNACCEPTED`.
pub const RESOURCE_ATTRIBUTES_TDVF: u32 = 0x0000_0007;

/// Size of `EFI_HOB_GENERIC_HEADER`.
pub const GENERIC_HEADER_SIZE: usize = 8;
/// Size of `EFI_HOB_HANDOFF_INFO_TABLE`.
pub const HANDOFF_INFO_TABLE_SIZE: usize = 56;
/// Size of `EFI_HOB_RESOURCE_DESCRIPTOR`.
pub const RESOURCE_DESCRIPTOR_SIZE: usize = 48;

/// Offset of `EfiEndOfHobList` inside the PHIT.
const END_OF_HOB_LIST_FIELD: usize = 48;

/// Whether a RAM range is already accepted when the TD starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Acceptance {
    /// PAGE.ADDed by the VMM before finalize; reported as system memory.
    Accepted,
    /// Left to the guest (TDG.MEM.PAGE.ACCEPT after PAGE.AUG); reported as unaccepted memory.
    Unaccepted,
}

/// One RAM range reported to the guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct MemoryResource {
    /// First guest-physical address.
    pub start: Gpa,
    /// Length in bytes.
    pub length: u64,
    /// Accepted or not.
    pub acceptance: Acceptance,
}

impl MemoryResource {
    /// One past the last address.
    pub const fn end(&self) -> u64 {
        self.start.0.saturating_add(self.length)
    }
}

/// Why the TD HOB could not be built.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum HobError {
    /// The list does not fit in the TD_HOB section.
    #[error("TD HOB needs {needed} bytes but the TD_HOB section holds {capacity}")]
    TooLarge {
        /// Bytes the list needs.
        needed: u64,
        /// Bytes the section holds.
        capacity: u64,
    },
}

/// Bytes the HOB list needs for `resources` RAM ranges.
pub const fn td_hob_size(resources: usize) -> u64 {
    (HANDOFF_INFO_TABLE_SIZE + GENERIC_HEADER_SIZE) as u64
        + resources as u64 * RESOURCE_DESCRIPTOR_SIZE as u64
}

fn put_header(out: &mut Vec<u8>, hob_type: u16, length: usize) {
    out.extend_from_slice(&hob_type.to_le_bytes());
    // Every HOB built here is < 64 KiB.
    out.extend_from_slice(&(length as u16).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
}

/// Builds the TD HOB list for a TD_HOB section at `hob_gpa` holding `capacity` bytes. Returns
/// the list itself ([`td_hob_size`] bytes); the rest of the section is zero.
pub fn build_td_hob(
    hob_gpa: Gpa,
    capacity: u64,
    resources: &[MemoryResource],
) -> Result<Vec<u8>, HobError> {
    let needed = td_hob_size(resources.len());
    if needed > capacity {
        return Err(HobError::TooLarge { needed, capacity });
    }
    let mut out = Vec::with_capacity(usize::try_from(needed).unwrap_or(0));
    // PHIT.
    put_header(&mut out, HOB_TYPE_HANDOFF, HANDOFF_INFO_TABLE_SIZE);
    out.extend_from_slice(&HOB_HANDOFF_TABLE_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // BootMode: BOOT_WITH_FULL_CONFIGURATION
    for _ in 0..5 {
        // EfiMemoryTop, EfiMemoryBottom, EfiFreeMemoryTop, EfiFreeMemoryBottom,
        // EfiEndOfHobList (patched below).
        out.extend_from_slice(&0u64.to_le_bytes());
    }
    // Resource descriptors.
    for resource in resources {
        put_header(
            &mut out,
            HOB_TYPE_RESOURCE_DESCRIPTOR,
            RESOURCE_DESCRIPTOR_SIZE,
        );
        out.extend_from_slice(&[0u8; 16]); // Owner GUID: EFI_HOB_OWNER_ZERO
        let kind = match resource.acceptance {
            Acceptance::Accepted => RESOURCE_SYSTEM_MEMORY,
            Acceptance::Unaccepted => RESOURCE_MEMORY_UNACCEPTED,
        };
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&RESOURCE_ATTRIBUTES_TDVF.to_le_bytes());
        out.extend_from_slice(&resource.start.0.to_le_bytes());
        out.extend_from_slice(&resource.length.to_le_bytes());
    }
    // End of list.
    put_header(&mut out, HOB_TYPE_END_OF_HOB_LIST, GENERIC_HEADER_SIZE);
    let end_gpa = hob_gpa.0.wrapping_add(out.len() as u64);
    if let Some(field) = out.get_mut(END_OF_HOB_LIST_FIELD..END_OF_HOB_LIST_FIELD + 8) {
        field.copy_from_slice(&end_gpa.to_le_bytes());
    }
    Ok(out)
}

/// A resource descriptor read back from a HOB list (used by tests and diagnostics).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ParsedResource {
    /// `ResourceType`.
    pub resource_type: u32,
    /// `ResourceAttribute`.
    pub attributes: u32,
    /// `PhysicalStart`.
    pub start: u64,
    /// `ResourceLength`.
    pub length: u64,
}

/// Reads the resource descriptors of a HOB list, stopping at the end HOB. `None` if the list is
/// malformed (a HOB shorter than its header, or running past the buffer, or no end HOB).
pub fn parse_resources(list: &[u8]) -> Option<Vec<ParsedResource>> {
    let mut out = vec![];
    let mut pos = 0usize;
    loop {
        let header = list.get(pos..pos.checked_add(GENERIC_HEADER_SIZE)?)?;
        let hob_type = u16::from_le_bytes([*header.first()?, *header.get(1)?]);
        let len = usize::from(u16::from_le_bytes([*header.get(2)?, *header.get(3)?]));
        if hob_type == HOB_TYPE_END_OF_HOB_LIST {
            return Some(out);
        }
        if len < GENERIC_HEADER_SIZE {
            return None;
        }
        let hob = list.get(pos..pos.checked_add(len)?)?;
        if hob_type == HOB_TYPE_RESOURCE_DESCRIPTOR {
            let field = |at: usize, n: usize| hob.get(at..at + n);
            let u32_at = |at| field(at, 4).and_then(|b| b.try_into().ok().map(u32::from_le_bytes));
            let u64_at = |at| field(at, 8).and_then(|b| b.try_into().ok().map(u64::from_le_bytes));
            out.push(ParsedResource {
                resource_type: u32_at(24)?,
                attributes: u32_at(28)?,
                start: u64_at(32)?,
                length: u64_at(40)?,
            });
        }
        // HOBs are 8-byte aligned.
        pos = pos.checked_add(len.checked_add(7)? & !7)?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn byte_layout_matches_the_pi_structures() {
        let resources = [
            MemoryResource {
                start: Gpa(0),
                length: 0x80_0000,
                acceptance: Acceptance::Unaccepted,
            },
            MemoryResource {
                start: Gpa(0x80_0000),
                length: 0x6000,
                acceptance: Acceptance::Accepted,
            },
        ];
        let hob = build_td_hob(Gpa(0x80_9000), 0x2000, &resources).unwrap();
        assert_eq!(hob.len(), 56 + 2 * 48 + 8);

        // PHIT.
        assert_eq!(u16_at(&hob, 0), 0x0001);
        assert_eq!(u16_at(&hob, 2), 56);
        assert_eq!(u32_at(&hob, 4), 0);
        assert_eq!(u32_at(&hob, 8), 9); // Version
        assert_eq!(u32_at(&hob, 12), 0); // BootMode
        for field in 0..4 {
            assert_eq!(u64_at(&hob, 16 + 8 * field), 0);
        }
        let total = 56 + 2 * 48 + 8;
        assert_eq!(u64_at(&hob, 48), 0x80_9000 + total as u64); // EfiEndOfHobList

        // First resource descriptor at 56.
        let r = &hob[56..104];
        assert_eq!(u16_at(r, 0), 0x0003);
        assert_eq!(u16_at(r, 2), 48);
        assert_eq!(u32_at(r, 4), 0);
        assert_eq!(&r[8..24], &[0u8; 16]);
        assert_eq!(u32_at(r, 24), 7); // unaccepted
        assert_eq!(u32_at(r, 28), 7);
        assert_eq!(u64_at(r, 32), 0);
        assert_eq!(u64_at(r, 40), 0x80_0000);

        let r = &hob[104..152];
        assert_eq!(u32_at(r, 24), 0); // system memory
        assert_eq!(u32_at(r, 28), 7);
        assert_eq!(u64_at(r, 32), 0x80_0000);
        assert_eq!(u64_at(r, 40), 0x6000);

        // End HOB.
        assert_eq!(&hob[152..160], &[0xff, 0xff, 8, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn exact_fit_is_accepted_and_one_byte_less_is_not() {
        let r = MemoryResource {
            start: Gpa(0),
            length: 0x1000,
            acceptance: Acceptance::Unaccepted,
        };
        let needed = td_hob_size(3);
        assert_eq!(needed, 56 + 3 * 48 + 8);
        assert!(build_td_hob(Gpa(0), needed, &[r; 3]).is_ok());
        assert_eq!(
            build_td_hob(Gpa(0), needed - 1, &[r; 3]),
            Err(HobError::TooLarge {
                needed,
                capacity: needed - 1
            })
        );
        // Capacity comes from firmware metadata: a huge one allocates only the list, a tiny
        // one is an error.
        assert_eq!(
            build_td_hob(Gpa(0), u64::MAX, &[r]).unwrap().len(),
            56 + 48 + 8
        );
        assert!(build_td_hob(Gpa(0), 0, &[]).is_err());
    }

    #[test]
    fn parse_round_trips() {
        let resources: Vec<_> = (0..5u64)
            .map(|i| MemoryResource {
                start: Gpa(i << 30),
                length: 1 << 29,
                acceptance: if i % 2 == 0 {
                    Acceptance::Accepted
                } else {
                    Acceptance::Unaccepted
                },
            })
            .collect();
        let hob = build_td_hob(Gpa(0x1000), 0x1000, &resources).unwrap();
        let parsed = parse_resources(&hob).unwrap();
        assert_eq!(parsed.len(), 5);
        for (p, r) in parsed.iter().zip(&resources) {
            assert_eq!(p.start, r.start.0);
            assert_eq!(p.length, r.length);
            assert_eq!(p.attributes, RESOURCE_ATTRIBUTES_TDVF);
            let expected = match r.acceptance {
                Acceptance::Accepted => RESOURCE_SYSTEM_MEMORY,
                Acceptance::Unaccepted => RESOURCE_MEMORY_UNACCEPTED,
            };
            assert_eq!(p.resource_type, expected);
        }
        assert_eq!(parse_resources(&hob[..100]), None);
    }
}
