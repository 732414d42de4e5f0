//! Guest-physical memory layout of a TD built from a TDVF image.
//!
//! **RAM placement (q35 rule).** The TD's `memory_mib` of RAM is split like QEMU's q35 machine
//! (`hw/i386/pc_q35.c`, default `gigabyte_align`): if the RAM is smaller than 2.75 GiB
//! ([`LOW_RAM_SPLIT_THRESHOLD`]) it all sits at `[0, mem)`; otherwise the first 2 GiB
//! ([`LOW_RAM_WHEN_SPLIT`]) sit at `[0, 2 GiB)` and the rest at `[4 GiB, 4 GiB + rest)`. The
//! hole `[low_end, 4 GiB)` is left for MMIO and the firmware. This is the layout TDVF expects
//! from QEMU and keeps the 32-bit hole the same as the one QEMU gives a TD, so measurements
//! and guest behaviour match QEMU-launched TDs as closely as possible.
//!
//! **Firmware placement.** Sections that are not inside RAM (BFV and CFV; in OVMF they sit just
//! below 4 GiB) must lie in the firmware window [`FIRMWARE_WINDOW_START`]..4 GiB (the 16 MiB
//! x86 flash window) so a hostile image cannot make the runtime PAGE.ADD gigabytes.
//! Sections inside RAM (TD_HOB, TempMem; OVMF puts them at 8 MiB) must lie entirely inside one
//! RAM range; BFV and CFV must not be in RAM; TD_HOB and TempMem must be.
//!
//! **Accepted vs unaccepted RAM.** Like QEMU's `tdx_accept_ram_range()`: all RAM starts as
//! unaccepted; each PAGE.ADDed section inside RAM is carved out as accepted. The resulting
//! sorted list (not merged, one entry per carved section) is what the TD HOB reports.
//!
//! The upper bound for RAM is [`MAX_GPA`] (bit 47, the shared bit of a 4-level-EPT TD).

use alloc::vec::Vec;

use super::parse::{SectionType, TdvfMetadata, TdvfSection};
use crate::hob::{Acceptance, MemoryResource};
use tdx_abi::{Gpa, PAGE_SIZE_1G};

/// RAM at or above this size is split into 2 GiB low + the rest above 4 GiB.
pub const LOW_RAM_SPLIT_THRESHOLD: u64 = 0xB000_0000;
/// Low RAM when the RAM is split.
pub const LOW_RAM_WHEN_SPLIT: u64 = 0x8000_0000;
/// Where high RAM starts.
pub const HIGH_RAM_BASE: u64 = 4 * PAGE_SIZE_1G;
/// Start of the firmware window (16 MiB below 4 GiB).
pub const FIRMWARE_WINDOW_START: u64 = 0xFF00_0000;
/// End of the firmware window (4 GiB, exclusive).
pub const FIRMWARE_WINDOW_END: u64 = HIGH_RAM_BASE;
/// First GPA the TD's private RAM may not reach: the shared bit of a 4-level-EPT TD (GPAW 48).
pub const MAX_GPA: u64 = 1 << 47;
/// Bytes per MiB.
const MIB: u64 = 1024 * 1024;

/// A half-open guest-physical range `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct GpaRange {
    /// First address.
    pub start: Gpa,
    /// One past the last address.
    pub end: Gpa,
}

impl GpaRange {
    /// Length in bytes.
    pub const fn len(&self) -> u64 {
        self.end.0 - self.start.0
    }
    /// Whether the range is empty.
    pub const fn is_empty(&self) -> bool {
        self.end.0 <= self.start.0
    }
    /// Whether `gpa` is inside.
    pub const fn contains(&self, gpa: Gpa) -> bool {
        self.start.0 <= gpa.0 && gpa.0 < self.end.0
    }
    /// Whether `[start, end)` lies entirely inside.
    pub const fn covers(&self, start: u64, end: u64) -> bool {
        self.start.0 <= start && end <= self.end.0
    }
    /// Whether `[start, end)` shares at least one byte with this range.
    pub const fn overlaps(&self, start: u64, end: u64) -> bool {
        start < self.end.0 && self.start.0 < end
    }
}

/// Where a section lives.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum SectionPlacement {
    /// Inside TD RAM.
    Ram,
    /// In the firmware window below 4 GiB, outside RAM.
    FirmwareWindow,
}

/// What a guest-physical address is, for fault handling and diagnostics.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum GpaKind {
    /// Inside TDVF section `index` (metadata order).
    Section {
        /// Section index.
        index: usize,
        /// Whether the section is PAGE.ADDed (false: PAGE.AUG section).
        added: bool,
    },
    /// RAM outside every section (unaccepted until the guest accepts it).
    UnacceptedRam,
    /// Neither RAM nor firmware.
    Unmapped,
}

/// Why a layout could not be made.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum LayoutError {
    /// `memory_mib` is zero.
    #[error("TD memory size is zero")]
    NoMemory,
    /// RAM would reach the shared bit.
    #[error("TD memory of {memory_mib} MiB does not fit below the shared bit")]
    MemoryTooLarge {
        /// Requested size.
        memory_mib: u64,
    },
    /// A section is partly inside and partly outside RAM.
    #[error("section {index} ({kind:?}) is partly inside RAM")]
    SectionStraddlesRam {
        /// Section index.
        index: usize,
        /// Section type.
        kind: SectionType,
    },
    /// A firmware volume is inside RAM.
    #[error("section {index} ({kind:?}) is a firmware volume inside RAM")]
    FirmwareVolumeInRam {
        /// Section index.
        index: usize,
        /// Section type.
        kind: SectionType,
    },
    /// A TD_HOB/TempMem section is not inside RAM (e.g. the TD is too small).
    #[error("section {index} ({kind:?}) must be inside RAM; give the TD more memory")]
    SectionNotInRam {
        /// Section index.
        index: usize,
        /// Section type.
        kind: SectionType,
    },
    /// A section outside RAM is outside the firmware window.
    #[error("section {index} ({kind:?}) is outside RAM and outside the firmware window")]
    SectionOutsideFirmwareWindow {
        /// Section index.
        index: usize,
        /// Section type.
        kind: SectionType,
    },
}

/// The guest-physical layout of one TD: RAM ranges, TDVF sections and which RAM is accepted.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TdMemoryLayout {
    memory_mib: u64,
    image_len: usize,
    ram: Vec<GpaRange>,
    sections: Vec<TdvfSection>,
    placements: Vec<SectionPlacement>,
    resources: Vec<MemoryResource>,
}

/// RAM ranges for `memory_bytes` of RAM under the q35 rule.
fn q35_ram_ranges(memory_bytes: u64) -> Vec<GpaRange> {
    if memory_bytes < LOW_RAM_SPLIT_THRESHOLD {
        return alloc::vec![GpaRange {
            start: Gpa(0),
            end: Gpa(memory_bytes),
        }];
    }
    alloc::vec![
        GpaRange {
            start: Gpa(0),
            end: Gpa(LOW_RAM_WHEN_SPLIT),
        },
        GpaRange {
            start: Gpa(HIGH_RAM_BASE),
            end: Gpa(HIGH_RAM_BASE + (memory_bytes - LOW_RAM_WHEN_SPLIT)),
        },
    ]
}

impl TdMemoryLayout {
    /// Lays out a TD with `memory_mib` MiB of RAM around the sections of `metadata`.
    pub fn new(metadata: &TdvfMetadata, memory_mib: u64) -> Result<Self, LayoutError> {
        if memory_mib == 0 {
            return Err(LayoutError::NoMemory);
        }
        let too_large = LayoutError::MemoryTooLarge { memory_mib };
        let memory_bytes = memory_mib.checked_mul(MIB).ok_or(too_large)?;
        let ram = q35_ram_ranges(memory_bytes);
        if ram.iter().any(|r| r.end.0 > MAX_GPA) {
            return Err(too_large);
        }

        let mut placements = Vec::with_capacity(metadata.sections().len());
        for (index, section) in metadata.sections().iter().enumerate() {
            let (start, end) = (section.memory_address.0, section.memory_end());
            let kind = section.section_type;
            let inside = ram.iter().any(|r| r.covers(start, end));
            let touches = ram.iter().any(|r| r.overlaps(start, end));
            let placement = if inside {
                if matches!(kind, SectionType::Bfv | SectionType::Cfv) {
                    return Err(LayoutError::FirmwareVolumeInRam { index, kind });
                }
                SectionPlacement::Ram
            } else if touches {
                return Err(LayoutError::SectionStraddlesRam { index, kind });
            } else if matches!(kind, SectionType::TdHob | SectionType::TempMem) {
                return Err(LayoutError::SectionNotInRam { index, kind });
            } else if start < FIRMWARE_WINDOW_START || end > FIRMWARE_WINDOW_END {
                return Err(LayoutError::SectionOutsideFirmwareWindow { index, kind });
            } else {
                SectionPlacement::FirmwareWindow
            };
            placements.push(placement);
        }

        let resources = carve_resources(&ram, metadata.sections(), &placements);
        Ok(Self {
            memory_mib,
            image_len: metadata.image_len(),
            ram,
            sections: metadata.sections().to_vec(),
            placements,
            resources,
        })
    }

    /// RAM size in MiB.
    pub fn memory_mib(&self) -> u64 {
        self.memory_mib
    }

    /// Length of the firmware image this layout was made for.
    pub fn image_len(&self) -> usize {
        self.image_len
    }

    /// RAM ranges in address order (one or two).
    pub fn ram_ranges(&self) -> &[GpaRange] {
        &self.ram
    }

    /// TDVF sections in metadata order.
    pub fn sections(&self) -> &[TdvfSection] {
        &self.sections
    }

    /// Where each section lives (same order as [`Self::sections`]).
    pub fn placements(&self) -> &[SectionPlacement] {
        &self.placements
    }

    /// Sorted RAM ranges with their acceptance state, as reported in the TD HOB.
    pub fn memory_resources(&self) -> &[MemoryResource] {
        &self.resources
    }

    /// The TD_HOB section (parsed metadata has exactly one).
    pub fn td_hob_section(&self) -> Option<&TdvfSection> {
        self.sections
            .iter()
            .find(|s| s.section_type == SectionType::TdHob)
    }

    /// What `gpa` is in this TD.
    pub fn classify(&self, gpa: Gpa) -> GpaKind {
        if let Some((index, section)) = self
            .sections
            .iter()
            .enumerate()
            .find(|(_, s)| s.memory_address.0 <= gpa.0 && gpa.0 < s.memory_end())
        {
            return GpaKind::Section {
                index,
                added: section.is_page_added(),
            };
        }
        if self.ram.iter().any(|r| r.contains(gpa)) {
            GpaKind::UnacceptedRam
        } else {
            GpaKind::Unmapped
        }
    }
}

/// All RAM unaccepted except the PAGE.ADDed sections inside it (QEMU's
/// `tdx_accept_ram_range()` result, sorted by address).
fn carve_resources(
    ram: &[GpaRange],
    sections: &[TdvfSection],
    placements: &[SectionPlacement],
) -> Vec<MemoryResource> {
    let mut accepted: Vec<(u64, u64)> = sections
        .iter()
        .zip(placements)
        .filter(|(s, p)| **p == SectionPlacement::Ram && s.is_page_added())
        .map(|(s, _)| (s.memory_address.0, s.memory_end()))
        .collect();
    accepted.sort_unstable();
    let mut out = Vec::new();
    for range in ram {
        let mut cursor = range.start.0;
        // Sections do not overlap and each lies inside one RAM range.
        for &(start, end) in accepted.iter().filter(|(s, e)| range.covers(*s, *e)) {
            if start > cursor {
                out.push(MemoryResource {
                    start: Gpa(cursor),
                    length: start - cursor,
                    acceptance: Acceptance::Unaccepted,
                });
            }
            out.push(MemoryResource {
                start: Gpa(start),
                length: end - start,
                acceptance: Acceptance::Accepted,
            });
            cursor = end;
        }
        if range.end.0 > cursor {
            out.push(MemoryResource {
                start: Gpa(cursor),
                length: range.end.0 - cursor,
                acceptance: Acceptance::Unaccepted,
            });
        }
    }
    out
}
