//! Tests for the TDVF parser, layout, plan and expected MRTD: synthetic images for every error
//! path, property tests for panic-freedom, and the real Debian OVMF image.
#![allow(clippy::unwrap_used)]

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use std::println;

use proptest::prelude::*;
use sha2::{Digest, Sha384};

use super::*;
use crate::hob::{Acceptance, HobError, RESOURCE_MEMORY_UNACCEPTED, parse_resources};
use tdx_abi::Gpa;

const IMAGE_LEN: usize = 0x10000;
const DESCRIPTOR_AT: usize = 0xE000;
const METADATA_GUID: [u8; 16] = efi_guid(
    0xe9ea_f9f3,
    0x168e,
    0x44d5,
    [0xa8, 0xeb, 0x7f, 0x4d, 0x87, 0x38, 0xf6, 0xae],
);
const OTHER_GUID: [u8; 16] = efi_guid(0x1234_5678, 1, 2, [3, 4, 5, 6, 7, 8, 9, 10]);

/// A raw section entry (any values, valid or not).
#[derive(Clone, Copy, Debug)]
struct RawSection {
    data_offset: u32,
    raw_size: u32,
    gpa: u64,
    mem_size: u64,
    kind: u32,
    attrs: u32,
}

const fn sec(
    data_offset: u32,
    raw_size: u32,
    gpa: u64,
    mem_size: u64,
    kind: u32,
    attrs: u32,
) -> RawSection {
    RawSection {
        data_offset,
        raw_size,
        gpa,
        mem_size,
        kind,
        attrs,
    }
}

/// Builder for synthetic TDVF images.
#[derive(Clone, Debug)]
struct Synth {
    len: usize,
    descriptor_at: usize,
    signature: u32,
    version: u32,
    /// `None`: 16 + 32·N.
    length: Option<u32>,
    /// `None`: the number of sections.
    count: Option<u32>,
    sections: Vec<RawSection>,
    /// Extra GUIDed-table entries placed before (in file order) the metadata entry.
    extra_entries: Vec<([u8; 16], Vec<u8>)>,
    /// `None`: omit the metadata offset entry; otherwise its data.
    metadata_entry: Option<Vec<u8>>,
}

/// BFV (extended) + CFV in the firmware window, TempMem + TD_HOB + TempMem in RAM at 8 MiB,
/// like OVMF.
fn default_sections() -> Vec<RawSection> {
    vec![
        sec(0x4000, 0x8000, 0xFFFF_0000, 0x10000, 0, 1), // BFV, MR.EXTEND, zero tail
        sec(0x0000, 0x1800, 0xFFFE_0000, 0x2000, 1, 0),  // CFV, partial last page
        sec(0, 0, 0x80_0000, 0x6000, 3, 0),              // TempMem
        sec(0, 0, 0x80_9000, 0x2000, 2, 0),              // TD_HOB
        sec(0, 0, 0x81_0000, 0x1000, 3, 0),              // TempMem
    ]
}

impl Synth {
    fn new() -> Self {
        Self {
            len: IMAGE_LEN,
            descriptor_at: DESCRIPTOR_AT,
            signature: TDVF_SIGNATURE,
            version: 1,
            length: None,
            count: None,
            sections: default_sections(),
            extra_entries: vec![(OTHER_GUID, vec![0xAA; 6])],
            metadata_entry: Some(((IMAGE_LEN - DESCRIPTOR_AT) as u32).to_le_bytes().to_vec()),
        }
    }

    fn with_sections(sections: Vec<RawSection>) -> Self {
        Self {
            sections,
            ..Self::new()
        }
    }

    fn build(&self) -> Vec<u8> {
        let mut img = vec![0u8; self.len];
        // Recognisable content everywhere (so raw data is not all zero).
        for (i, b) in img.iter_mut().enumerate() {
            *b = (i.wrapping_mul(31) ^ (i >> 8)) as u8;
        }
        // Descriptor, preceded by its GUID.
        let d = self.descriptor_at;
        img[d - 16..d].copy_from_slice(&METADATA_GUID);
        let n = self.sections.len() as u32;
        let put32 = |img: &mut Vec<u8>, at: usize, v: u32| {
            if at + 4 <= img.len() {
                img[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        };
        let put64 = |img: &mut Vec<u8>, at: usize, v: u64| {
            if at + 8 <= img.len() {
                img[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        };
        put32(&mut img, d, self.signature);
        put32(&mut img, d + 4, self.length.unwrap_or(16 + 32 * n));
        put32(&mut img, d + 8, self.version);
        put32(&mut img, d + 12, self.count.unwrap_or(n));
        for (i, s) in self.sections.iter().enumerate() {
            let at = d + 16 + 32 * i;
            put32(&mut img, at, s.data_offset);
            put32(&mut img, at + 4, s.raw_size);
            put64(&mut img, at + 8, s.gpa);
            put64(&mut img, at + 16, s.mem_size);
            put32(&mut img, at + 24, s.kind);
            put32(&mut img, at + 28, s.attrs);
        }
        // GUIDed table: entries in file order, then the footer, then 32 bytes.
        let mut table = Vec::new();
        let mut entries = self.extra_entries.clone();
        if let Some(data) = &self.metadata_entry {
            entries.push((TDX_METADATA_OFFSET_GUID, data.clone()));
        }
        for (guid, data) in &entries {
            table.extend_from_slice(data);
            table.extend_from_slice(&((data.len() + 18) as u16).to_le_bytes());
            table.extend_from_slice(guid);
        }
        table.extend_from_slice(&((table.len() + 18) as u16).to_le_bytes());
        table.extend_from_slice(&OVMF_TABLE_FOOTER_GUID);
        let end = self.len - 32;
        img[end - table.len()..end].copy_from_slice(&table);
        img[end..].fill(0xFF);
        img
    }
}

fn parse_err(s: &Synth) -> TdvfError {
    TdvfMetadata::parse(&s.build()).expect_err("image must be rejected")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| alloc::format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------- parser: valid image

#[test]
fn synthetic_image_parses() {
    let img = Synth::new().build();
    let md = TdvfMetadata::parse(&img).unwrap();
    assert_eq!(md.image_len(), IMAGE_LEN);
    assert_eq!(md.descriptor_offset(), DESCRIPTOR_AT);
    let s = md.sections();
    assert_eq!(s.len(), 5);
    assert_eq!(s[0].section_type, SectionType::Bfv);
    assert!(s[0].attributes.mr_extend());
    assert!(!s[0].attributes.page_aug());
    assert_eq!(s[0].memory_address, Gpa(0xFFFF_0000));
    assert_eq!(s[0].pages(), 16);
    assert_eq!(s[1].section_type, SectionType::Cfv);
    assert_eq!(s[3].section_type, SectionType::TdHob);
    assert_eq!(md.td_hob().unwrap().0, 3);

    let table = ovmf_guid_table(&img).unwrap();
    assert_eq!(table.len(), 2);
    // Walked backwards: the metadata entry (last in file order) comes first.
    assert_eq!(table[0].guid, TDX_METADATA_OFFSET_GUID);
    assert_eq!(table[1].guid, OTHER_GUID);
    assert_eq!(table[1].data, &[0xAA; 6]);
}

#[test]
fn empty_table_has_no_metadata_entry() {
    let s = Synth {
        extra_entries: vec![],
        metadata_entry: None,
        ..Synth::new()
    };
    assert_eq!(ovmf_guid_table(&s.build()).unwrap().len(), 0);
    assert_eq!(parse_err(&s), TdvfError::MissingMetadataEntry);
}

#[test]
fn section_types_and_attributes_round_trip() {
    for raw in 0..7 {
        assert_eq!(SectionType::from_raw(raw).unwrap().raw(), raw);
    }
    assert_eq!(SectionType::from_raw(7), None);
    assert_eq!(SectionAttributes::from_raw(4), None);
    assert!(SectionAttributes::from_raw(2).unwrap().page_aug());
}

// ---------------------------------------------------------------- parser: every error path

#[test]
fn truncated_images_are_rejected() {
    for len in [0usize, 1, 31, 48, 49] {
        assert_eq!(
            TdvfMetadata::parse(&vec![0u8; len]),
            Err(TdvfError::ImageTooSmall { len })
        );
    }
    let img = Synth::new().build();
    // Cutting the end removes the footer.
    assert_eq!(
        TdvfMetadata::parse(&img[..img.len() - 1]),
        Err(TdvfError::BadFooterGuid)
    );
}

#[test]
fn bad_footer_guid() {
    let mut img = Synth::new().build();
    let at = img.len() - 48;
    img[at] ^= 1;
    assert_eq!(TdvfMetadata::parse(&img), Err(TdvfError::BadFooterGuid));
}

#[test]
fn table_length_out_of_range() {
    let img = Synth::new().build();
    let at = img.len() - 50;
    for bad in [0u16, 17] {
        let mut m = img.clone();
        m[at..at + 2].copy_from_slice(&bad.to_le_bytes());
        assert_eq!(
            TdvfMetadata::parse(&m),
            Err(TdvfError::TableLengthOutOfRange { len: bad })
        );
    }
    // Longer than the image: small image so a u16 can exceed it.
    let mut small = vec![0u8; 100];
    small[52..68].copy_from_slice(&OVMF_TABLE_FOOTER_GUID);
    small[50..52].copy_from_slice(&70u16.to_le_bytes());
    assert_eq!(
        TdvfMetadata::parse(&small),
        Err(TdvfError::TableLengthOutOfRange { len: 70 })
    );
}

#[test]
fn malformed_table_entries() {
    let img = Synth::new().build();
    // The metadata entry's length field sits right before its GUID, which ends at len-32-18.
    let len_at = img.len() - 32 - 18 - 18;
    for bad in [0u16, 17, 0x4000] {
        let mut m = img.clone();
        m[len_at..len_at + 2].copy_from_slice(&bad.to_le_bytes());
        assert!(
            matches!(
                TdvfMetadata::parse(&m),
                Err(TdvfError::MalformedTableEntry { len, .. }) if len == bad
            ),
            "entry length {bad}"
        );
    }
    // Table length that leaves a fragment shorter than an entry header.
    let mut m = img.clone();
    let tl_at = img.len() - 50;
    let tl = u16::from_le_bytes([m[tl_at], m[tl_at + 1]]);
    m[tl_at..tl_at + 2].copy_from_slice(&(tl + 5).to_le_bytes());
    assert!(matches!(
        TdvfMetadata::parse(&m),
        Err(TdvfError::MalformedTableEntry { .. })
    ));
}

#[test]
fn bad_metadata_entry() {
    let s = Synth {
        metadata_entry: Some(vec![1, 2, 3]),
        ..Synth::new()
    };
    assert_eq!(parse_err(&s), TdvfError::BadMetadataEntrySize { len: 3 });
    for offset in [0u32, 8, (IMAGE_LEN + 1) as u32, u32::MAX] {
        let s = Synth {
            metadata_entry: Some(offset.to_le_bytes().to_vec()),
            ..Synth::new()
        };
        assert_eq!(
            parse_err(&s),
            TdvfError::MetadataOffsetOutOfRange { offset },
            "offset {offset:#x}"
        );
    }
}

#[test]
fn bad_descriptor() {
    let s = Synth {
        signature: 0x4656_4455,
        ..Synth::new()
    };
    assert_eq!(
        parse_err(&s),
        TdvfError::BadSignature { found: 0x4656_4455 }
    );
    let s = Synth {
        version: 2,
        ..Synth::new()
    };
    assert_eq!(parse_err(&s), TdvfError::BadVersion { found: 2 });
    let s = Synth {
        count: Some(0),
        length: Some(16),
        ..Synth::new()
    };
    assert_eq!(parse_err(&s), TdvfError::NoSections);
    let s = Synth {
        length: Some(16 + 32 * 5 + 1),
        ..Synth::new()
    };
    assert_eq!(
        parse_err(&s),
        TdvfError::BadDescriptorLength {
            length: 16 + 32 * 5 + 1,
            sections: 5
        }
    );
    // Huge count: length would overflow u32.
    let s = Synth {
        count: Some(u32::MAX),
        length: Some(u32::MAX),
        ..Synth::new()
    };
    assert!(matches!(
        parse_err(&s),
        TdvfError::BadDescriptorLength { .. }
    ));
    // Consistent count/length that runs past the end of the file.
    let s = Synth {
        count: Some(1000),
        length: Some(16 + 32 * 1000),
        ..Synth::new()
    };
    assert_eq!(
        parse_err(&s),
        TdvfError::DescriptorOutOfFile { sections: 1000 }
    );
}

fn with_section(index: usize, s: RawSection) -> Synth {
    let mut sections = default_sections();
    sections[index] = s;
    Synth::with_sections(sections)
}

#[test]
fn bad_section_fields() {
    let bfv = default_sections()[0];
    let cases: Vec<(RawSection, TdvfError)> = vec![
        (
            RawSection { kind: 9, ..bfv },
            TdvfError::UnknownSectionType { index: 0, raw: 9 },
        ),
        (
            RawSection { attrs: 0x5, ..bfv },
            TdvfError::UnknownAttributes { index: 0, raw: 5 },
        ),
        (
            RawSection {
                data_offset: 0xF000,
                raw_size: 0x1001,
                ..bfv
            },
            TdvfError::SectionOutOfFile {
                index: 0,
                offset: 0xF000,
                size: 0x1001,
            },
        ),
        (
            RawSection {
                data_offset: u32::MAX,
                raw_size: u32::MAX,
                ..bfv
            },
            TdvfError::SectionOutOfFile {
                index: 0,
                offset: u32::MAX,
                size: u32::MAX,
            },
        ),
        (
            RawSection {
                raw_size: 0x8000,
                mem_size: 0x7000,
                gpa: 0xFFFF_0000,
                ..bfv
            },
            TdvfError::RawDataLargerThanMemory {
                index: 0,
                raw: 0x8000,
                memory: 0x7000,
            },
        ),
        (
            RawSection {
                gpa: 0xFFFF_0800,
                ..bfv
            },
            TdvfError::UnalignedSection {
                index: 0,
                gpa: 0xFFFF_0800,
                size: 0x10000,
            },
        ),
        (
            RawSection {
                mem_size: 0x10010,
                ..bfv
            },
            TdvfError::UnalignedSection {
                index: 0,
                gpa: 0xFFFF_0000,
                size: 0x10010,
            },
        ),
        (
            RawSection {
                raw_size: 0,
                mem_size: 0,
                ..bfv
            },
            TdvfError::EmptySection { index: 0 },
        ),
        (
            RawSection {
                gpa: 0xFFFF_FFFF_FFFF_F000,
                ..bfv
            },
            TdvfError::SectionAddressOverflow { index: 0 },
        ),
        (
            RawSection { raw_size: 0, ..bfv },
            TdvfError::MissingRawData {
                index: 0,
                kind: SectionType::Bfv,
            },
        ),
        (
            RawSection { attrs: 3, ..bfv },
            TdvfError::ContentsWithPageAug {
                index: 0,
                kind: SectionType::Bfv,
            },
        ),
    ];
    for (raw, expected) in cases {
        assert_eq!(parse_err(&with_section(0, raw)), expected, "{raw:?}");
    }
    // CFV without data.
    let cfv = default_sections()[1];
    assert_eq!(
        parse_err(&with_section(1, RawSection { raw_size: 0, ..cfv })),
        TdvfError::MissingRawData {
            index: 1,
            kind: SectionType::Cfv
        }
    );
    // TD_HOB / TempMem / PermMem with raw data.
    for (index, kind) in [(3usize, SectionType::TdHob), (2, SectionType::TempMem)] {
        let s = default_sections()[index];
        assert_eq!(
            parse_err(&with_section(
                index,
                RawSection {
                    raw_size: 0x10,
                    ..s
                }
            )),
            TdvfError::UnexpectedRawData { index, kind }
        );
    }
    let perm = sec(0, 0x10, 0x90_0000, 0x1000, 4, 0);
    assert_eq!(
        parse_err(&with_section(2, perm)),
        TdvfError::UnexpectedRawData {
            index: 2,
            kind: SectionType::PermMem
        }
    );
    // TD_HOB marked PAGE.AUG: the HOB could never be written.
    let hob = default_sections()[3];
    assert_eq!(
        parse_err(&with_section(3, RawSection { attrs: 2, ..hob })),
        TdvfError::ContentsWithPageAug {
            index: 3,
            kind: SectionType::TdHob
        }
    );
}

#[test]
fn section_set_rules() {
    // Overlap between BFV and CFV.
    let mut s = default_sections();
    s[1].gpa = 0xFFFF_F000;
    s[1].mem_size = 0x2000;
    assert_eq!(
        parse_err(&Synth::with_sections(s)),
        TdvfError::OverlappingSections {
            first: 0,
            second: 1
        }
    );
    // Overlap between the last and first sections in metadata order.
    let mut s = default_sections();
    s[4].gpa = 0x80_5000;
    assert_eq!(
        parse_err(&Synth::with_sections(s)),
        TdvfError::OverlappingSections {
            first: 2,
            second: 4
        }
    );
    // Adjacent is fine.
    let mut s = default_sections();
    s[4].gpa = 0x80_6000;
    assert!(TdvfMetadata::parse(&Synth::with_sections(s).build()).is_ok());

    // No BFV.
    let s: Vec<_> = default_sections().into_iter().skip(1).collect();
    assert_eq!(parse_err(&Synth::with_sections(s)), TdvfError::MissingBfv);
    // No TD_HOB.
    let mut s = default_sections();
    s.remove(3);
    assert_eq!(parse_err(&Synth::with_sections(s)), TdvfError::MissingTdHob);
    // Two TD_HOBs.
    let mut s = default_sections();
    s.push(sec(0, 0, 0x82_0000, 0x1000, 2, 0));
    assert_eq!(
        parse_err(&Synth::with_sections(s)),
        TdvfError::DuplicateTdHob {
            first: 3,
            second: 5
        }
    );
}

// ---------------------------------------------------------------- layout

fn metadata() -> TdvfMetadata {
    TdvfMetadata::parse(&Synth::new().build()).unwrap()
}

#[test]
fn q35_ram_split() {
    let md = metadata();
    let l = TdMemoryLayout::new(&md, 512).unwrap();
    assert_eq!(
        l.ram_ranges(),
        &[GpaRange {
            start: Gpa(0),
            end: Gpa(512 << 20)
        }]
    );
    // Just below the threshold: all low.
    let below = (LOW_RAM_SPLIT_THRESHOLD >> 20) - 1;
    let l = TdMemoryLayout::new(&md, below).unwrap();
    assert_eq!(l.ram_ranges().len(), 1);
    assert_eq!(l.ram_ranges()[0].end, Gpa(below << 20));
    // At the threshold: 2 GiB low, rest at 4 GiB.
    let l = TdMemoryLayout::new(&md, 4096).unwrap();
    assert_eq!(
        l.ram_ranges(),
        &[
            GpaRange {
                start: Gpa(0),
                end: Gpa(0x8000_0000)
            },
            GpaRange {
                start: Gpa(0x1_0000_0000),
                end: Gpa(0x1_8000_0000)
            }
        ]
    );
    let total: u64 = l.ram_ranges().iter().map(|r| r.len()).sum();
    assert_eq!(total, 4096 << 20);
}

#[test]
fn accepted_and_unaccepted_ram_like_qemu() {
    let l = TdMemoryLayout::new(&metadata(), 4096).unwrap();
    assert_eq!(
        l.placements(),
        &[
            SectionPlacement::FirmwareWindow,
            SectionPlacement::FirmwareWindow,
            SectionPlacement::Ram,
            SectionPlacement::Ram,
            SectionPlacement::Ram
        ]
    );
    let r: Vec<(u64, u64, Acceptance)> = l
        .memory_resources()
        .iter()
        .map(|r| (r.start.0, r.length, r.acceptance))
        .collect();
    use Acceptance::*;
    assert_eq!(
        r,
        vec![
            (0, 0x80_0000, Unaccepted),
            (0x80_0000, 0x6000, Accepted),
            (0x80_6000, 0x3000, Unaccepted),
            (0x80_9000, 0x2000, Accepted),
            (0x80_B000, 0x5000, Unaccepted),
            (0x81_0000, 0x1000, Accepted),
            (0x81_1000, 0x8000_0000 - 0x81_1000, Unaccepted),
            (0x1_0000_0000, 0x8000_0000, Unaccepted),
        ]
    );
    // Resources tile RAM exactly.
    let total: u64 = l.memory_resources().iter().map(|r| r.length).sum();
    assert_eq!(total, 4096 << 20);

    assert_eq!(
        l.classify(Gpa(0xFFFF_1000)),
        GpaKind::Section {
            index: 0,
            added: true
        }
    );
    assert_eq!(l.classify(Gpa(0x80_6000)), GpaKind::UnacceptedRam);
    assert_eq!(l.classify(Gpa(0x9000_0000)), GpaKind::Unmapped);
    assert_eq!(l.classify(Gpa(0x1_7FFF_F000)), GpaKind::UnacceptedRam);
    assert_eq!(l.classify(Gpa(0x1_8000_0000)), GpaKind::Unmapped);
}

#[test]
fn layout_errors() {
    let md = metadata();
    assert_eq!(TdMemoryLayout::new(&md, 0), Err(LayoutError::NoMemory));
    assert_eq!(
        TdMemoryLayout::new(&md, u64::MAX),
        Err(LayoutError::MemoryTooLarge {
            memory_mib: u64::MAX
        })
    );
    assert_eq!(
        TdMemoryLayout::new(&md, 1 << 27),
        Err(LayoutError::MemoryTooLarge {
            memory_mib: 1 << 27
        })
    );
    // 8 MiB: TempMem at 8 MiB is outside RAM.
    assert_eq!(
        TdMemoryLayout::new(&md, 8),
        Err(LayoutError::SectionNotInRam {
            index: 2,
            kind: SectionType::TempMem
        })
    );
    // A section straddling the end of RAM.
    let mut s = default_sections();
    s[2].gpa = 0x1F0_0000;
    s[2].mem_size = 0x20_0000;
    let md2 = TdvfMetadata::parse(&Synth::with_sections(s).build()).unwrap();
    assert_eq!(
        TdMemoryLayout::new(&md2, 32),
        Err(LayoutError::SectionStraddlesRam {
            index: 2,
            kind: SectionType::TempMem
        })
    );
    // A firmware volume inside RAM.
    let mut s = default_sections();
    s[1].gpa = 0x100_0000;
    let md3 = TdvfMetadata::parse(&Synth::with_sections(s).build()).unwrap();
    assert_eq!(
        TdMemoryLayout::new(&md3, 64),
        Err(LayoutError::FirmwareVolumeInRam {
            index: 1,
            kind: SectionType::Cfv
        })
    );
    // Outside RAM and below the firmware window (in the 32-bit hole).
    assert_eq!(
        TdMemoryLayout::new(&md3, 8 + 1),
        Err(LayoutError::SectionOutsideFirmwareWindow {
            index: 1,
            kind: SectionType::Cfv
        })
    );
}

// ---------------------------------------------------------------- plan

#[test]
fn plan_order_and_contents() {
    let img = Synth::new().build();
    let md = TdvfMetadata::parse(&img).unwrap();
    let layout = TdMemoryLayout::new(&md, 256).unwrap();
    let plan = BuildPlan::new(&layout).unwrap();
    // 16 BFV + 2 CFV + 6 TempMem + 2 HOB + 1 TempMem.
    assert_eq!(plan.page_count(), 27);
    assert_eq!(plan.extend_count(), 16 * 16);
    assert_eq!(plan.operation_count(), 27 + 256);

    let ops: Vec<BuildOp> = plan.operations().collect();
    assert_eq!(ops.len() as u64, plan.operation_count());
    // Per page: ADD then 16 ascending EXTENDs; sections in metadata order.
    assert_eq!(
        ops[0],
        BuildOp::PageAdd {
            page: 0,
            gpa: Gpa(0xFFFF_0000)
        }
    );
    for c in 0..16u64 {
        assert_eq!(
            ops[1 + c as usize],
            BuildOp::MrExtend {
                gpa: Gpa(0xFFFF_0000 + 256 * c)
            }
        );
    }
    assert_eq!(
        ops[17],
        BuildOp::PageAdd {
            page: 1,
            gpa: Gpa(0xFFFF_1000)
        }
    );
    let adds: Vec<u64> = ops
        .iter()
        .filter_map(|op| match op {
            BuildOp::PageAdd { gpa, .. } => Some(gpa.0),
            BuildOp::MrExtend { .. } => None,
        })
        .collect();
    let mut expected: Vec<u64> = (0..16).map(|i| 0xFFFF_0000 + i * 0x1000).collect();
    expected.extend([0xFFFE_0000, 0xFFFE_1000]);
    expected.extend((0..6).map(|i| 0x80_0000 + i * 0x1000));
    expected.extend([0x80_9000, 0x80_A000, 0x81_0000]);
    assert_eq!(adds, expected);

    let mut buf = [0xEEu8; PAGE_BYTES];
    // BFV page 3: file bytes at 0x4000 + 0x3000.
    let p = plan.fill_page(3, &img, &mut buf).unwrap();
    assert_eq!(
        p.source,
        PageSource::Image {
            offset: 0x7000,
            len: 0x1000
        }
    );
    assert!(p.extend);
    assert_eq!(&buf[..], &img[0x7000..0x8000]);
    // BFV page 8: past RawDataSize (0x8000) → zeros.
    let p = plan.fill_page(8, &img, &mut buf).unwrap();
    assert_eq!(p.source, PageSource::Zero);
    assert!(buf.iter().all(|&b| b == 0));
    // CFV page 1: 0x800 bytes of file then zeros.
    let p = plan.fill_page(17, &img, &mut buf).unwrap();
    assert_eq!(
        p.source,
        PageSource::Image {
            offset: 0x1000,
            len: 0x800
        }
    );
    assert!(!p.extend);
    assert_eq!(&buf[..0x800], &img[0x1000..0x1800]);
    assert!(buf[0x800..].iter().all(|&b| b == 0));
    // TD_HOB first page: the HOB list; it names every RAM resource.
    let p = plan.fill_page(24, &img, &mut buf).unwrap();
    assert_eq!(p.gpa, Gpa(0x80_9000));
    assert_eq!(p.source, PageSource::TdHob { offset: 0 });
    let resources = parse_resources(&buf).unwrap();
    assert_eq!(resources.len(), layout.memory_resources().len());
    assert_eq!(resources[0].resource_type, RESOURCE_MEMORY_UNACCEPTED);
    assert_eq!(&buf[..plan.td_hob().len()], plan.td_hob());
    // EfiEndOfHobList points just past the list.
    let end = u64::from_le_bytes(buf[48..56].try_into().unwrap());
    assert_eq!(end, 0x80_9000 + plan.td_hob().len() as u64);
    // TD_HOB second page: zeros.
    let p = plan.fill_page(25, &img, &mut buf).unwrap();
    assert_eq!(p.source, PageSource::Zero);
    assert!(buf.iter().all(|&b| b == 0));

    assert_eq!(
        plan.fill_page(27, &img, &mut buf),
        Err(PlanError::PageOutOfRange {
            index: 27,
            count: 27
        })
    );
    assert_eq!(
        plan.fill_page(0, &img[1..], &mut buf),
        Err(PlanError::ImageMismatch {
            expected: IMAGE_LEN,
            found: IMAGE_LEN - 1
        })
    );
    assert_eq!(plan.page(u64::MAX), None);
}

#[test]
fn page_aug_sections_are_skipped() {
    let mut s = default_sections();
    // PermMem marked PAGE.AUG in RAM, and a PAGE.ADDed PermMem in RAM.
    s.push(sec(0, 0, 0x100_0000, 0x4000, 4, 2));
    s.push(sec(0, 0, 0x200_0000, 0x1000, 4, 0));
    let img = Synth::with_sections(s).build();
    let md = TdvfMetadata::parse(&img).unwrap();
    let layout = TdMemoryLayout::new(&md, 256).unwrap();
    let plan = BuildPlan::new(&layout).unwrap();
    assert_eq!(plan.page_count(), 27 + 1);
    assert!(plan.pages().all(|p| p.section != 5));
    assert_eq!(
        layout.classify(Gpa(0x100_1000)),
        GpaKind::Section {
            index: 5,
            added: false
        }
    );
    // The AUG section stays unaccepted RAM in the HOB; the ADDed one is accepted.
    let find = |gpa: u64| {
        layout
            .memory_resources()
            .iter()
            .find(|r| r.start.0 <= gpa && gpa < r.end())
            .unwrap()
            .acceptance
    };
    assert_eq!(find(0x100_1000), Acceptance::Unaccepted);
    assert_eq!(find(0x200_0000), Acceptance::Accepted);
}

#[test]
fn hob_too_large_for_its_section() {
    // 4 KiB TD_HOB and 100 one-page TempMem sections with gaps → > 84 resource descriptors.
    let mut s = vec![default_sections()[0], sec(0, 0, 0x80_0000, 0x1000, 2, 0)];
    for i in 0..100u64 {
        s.push(sec(0, 0, 0x100_0000 + i * 0x2000, 0x1000, 3, 0));
    }
    let img = Synth::with_sections(s).build();
    let md = TdvfMetadata::parse(&img).unwrap();
    let layout = TdMemoryLayout::new(&md, 256).unwrap();
    let err = BuildPlan::new(&layout).unwrap_err();
    assert!(
        matches!(
            err,
            PlanError::Hob(HobError::TooLarge {
                capacity: 0x1000,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(matches!(
        expected_mrtd(&img, &layout),
        Err(ExpectedMrtdError::Plan(PlanError::Hob(_)))
    ));
}

// ---------------------------------------------------------------- expected MRTD

/// Independent MRTD computation straight from the raw section list: the whole hashed byte
/// stream is materialised and hashed once.
fn reference_mrtd(img: &[u8], sections: &[RawSection], hob: &[u8]) -> [u8; 48] {
    let mut stream = Vec::new();
    for s in sections {
        if s.attrs & 2 != 0 {
            continue;
        }
        let mut mem = vec![0u8; s.mem_size as usize];
        if s.kind == 2 {
            mem[..hob.len()].copy_from_slice(hob);
        } else {
            let off = s.data_offset as usize;
            mem[..s.raw_size as usize].copy_from_slice(&img[off..off + s.raw_size as usize]);
        }
        for (p, page) in mem.chunks(4096).enumerate() {
            let gpa = s.gpa + 4096 * p as u64;
            let mut block = [0u8; 128];
            block[..12].copy_from_slice(b"MEM.PAGE.ADD");
            block[16..24].copy_from_slice(&gpa.to_le_bytes());
            stream.extend_from_slice(&block);
            if s.attrs & 1 != 0 {
                for (c, chunk) in page.chunks(256).enumerate() {
                    let mut block = [0u8; 128];
                    block[..9].copy_from_slice(b"MR.EXTEND");
                    block[16..24].copy_from_slice(&(gpa + 256 * c as u64).to_le_bytes());
                    stream.extend_from_slice(&block);
                    stream.extend_from_slice(chunk);
                }
            }
        }
    }
    Sha384::digest(&stream).as_slice().try_into().unwrap()
}

#[test]
fn expected_mrtd_matches_an_independent_computation() {
    let synth = Synth::new();
    let img = synth.build();
    let md = TdvfMetadata::parse(&img).unwrap();
    let layout = TdMemoryLayout::new(&md, 512).unwrap();
    let plan = BuildPlan::new(&layout).unwrap();
    let mrtd = expected_mrtd(&img, &layout).unwrap();
    assert_eq!(mrtd, reference_mrtd(&img, &synth.sections, plan.td_hob()));

    // The same image with a different RAM size: same MRTD (HOB not extended).
    let big = TdMemoryLayout::new(&md, 8192).unwrap();
    assert_eq!(expected_mrtd(&img, &big).unwrap(), mrtd);

    // A BFV byte inside RawDataSize changes it; a CFV byte (not extended) does not.
    let mut bfv_changed = img.clone();
    bfv_changed[0x4000 + 123] ^= 0x40;
    assert_ne!(expected_mrtd(&bfv_changed, &layout).unwrap(), mrtd);
    let mut cfv_changed = img.clone();
    cfv_changed[0x10] ^= 0x40;
    assert_eq!(expected_mrtd(&cfv_changed, &layout).unwrap(), mrtd);

    // A layout made for another image is refused.
    let other = Synth::with_sections({
        let mut s = default_sections();
        s[4].gpa = 0x82_0000;
        s
    });
    let other_md = TdvfMetadata::parse(&other.build()).unwrap();
    let other_layout = TdMemoryLayout::new(&other_md, 512).unwrap();
    assert_eq!(
        expected_mrtd(&img, &other_layout),
        Err(ExpectedMrtdError::LayoutMismatch)
    );
}

/// What the runtime does: walk `operations()`, fill each PAGE.ADD source, and let the module
/// hash every call. Replaying that call by call must give `expected_mrtd`.
fn replay_operations(img: &[u8], layout: &TdMemoryLayout) -> [u8; 48] {
    use tdx_abi::measure::MrtdAccumulator;
    let plan = BuildPlan::new(layout).unwrap();
    let mut acc = MrtdAccumulator::new();
    let mut page = [0u8; PAGE_BYTES];
    let mut page_gpa = Gpa(u64::MAX);
    for op in plan.operations() {
        match op {
            BuildOp::PageAdd { page: index, gpa } => {
                let planned = plan.fill_page(index, img, &mut page).unwrap();
                assert_eq!(planned.gpa, gpa);
                page_gpa = gpa;
                acc.page_add(gpa);
            }
            BuildOp::MrExtend { gpa } => {
                // Only chunks of the page just added are extended.
                let offset = (gpa.0 - page_gpa.0) as usize;
                assert!(offset < PAGE_BYTES && offset.is_multiple_of(256));
                acc.mr_extend(gpa, page[offset..offset + 256].try_into().unwrap());
            }
        }
    }
    acc.finalize()
}

/// The MRTD the software TDX module reports after the plan's pages are PAGE.ADDed (and
/// MR.EXTENDed) into a real TD and TDH.MR.FINALIZE runs.
fn via_module(img: &[u8], layout: &TdMemoryLayout) -> [u8; 48] {
    use tdx_emu::testing::{Platform, TdOptions};
    let p = Platform::new();
    let td = p.create_td(&TdOptions::default()).unwrap();
    let plan = BuildPlan::new(layout).unwrap();
    let mut buf = [0u8; PAGE_BYTES];
    for index in 0..plan.page_count() {
        let page = plan.fill_page(index, img, &mut buf).unwrap();
        p.add_page(&td, page.gpa, &buf, page.extend).unwrap();
    }
    p.finalize(&td).unwrap()
}

#[test]
fn replaying_operations_gives_the_expected_mrtd() {
    let img = Synth::new().build();
    let md = TdvfMetadata::parse(&img).unwrap();
    let layout = TdMemoryLayout::new(&md, 512).unwrap();
    let mrtd = expected_mrtd(&img, &layout).unwrap();
    assert_eq!(replay_operations(&img, &layout), mrtd);
    assert_eq!(via_module(&img, &layout), mrtd);
}

#[test]
fn measured_td_hob_makes_mrtd_depend_on_the_layout() {
    let mut s = default_sections();
    s[3].attrs = 1; // TD_HOB with MR.EXTEND
    let synth = Synth::with_sections(s);
    let img = synth.build();
    let md = TdvfMetadata::parse(&img).unwrap();
    let small = TdMemoryLayout::new(&md, 512).unwrap();
    let big = TdMemoryLayout::new(&md, 8192).unwrap();
    let a = expected_mrtd(&img, &small).unwrap();
    let b = expected_mrtd(&img, &big).unwrap();
    assert_ne!(a, b);
    let plan = BuildPlan::new(&big).unwrap();
    assert_eq!(b, reference_mrtd(&img, &synth.sections, plan.td_hob()));
}

// ---------------------------------------------------------------- panic-freedom

/// Every stage after a successful parse must also be panic-free.
fn run_pipeline(img: &[u8]) {
    if let Ok(md) = TdvfMetadata::parse(img) {
        for mib in [1u64, 64, 4096] {
            if let Ok(layout) = TdMemoryLayout::new(&md, mib) {
                if let Ok(plan) = BuildPlan::new(&layout) {
                    let mut buf = [0u8; PAGE_BYTES];
                    for i in 0..plan.page_count().min(64) {
                        plan.fill_page(i, img, &mut buf).unwrap();
                    }
                }
                if layout.sections().iter().map(|s| s.pages()).sum::<u64>() < 4096 {
                    let _ = expected_mrtd(img, &layout);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = ovmf_guid_table(&bytes);
        run_pipeline(&bytes);
    }

    #[test]
    fn random_footer_tail_never_panics(
        tail in proptest::collection::vec(any::<u8>(), 0..200),
        table_len in any::<u16>(),
    ) {
        // A valid footer with an arbitrary table in front of it.
        let mut img = tail;
        img.extend_from_slice(&table_len.to_le_bytes());
        img.extend_from_slice(&OVMF_TABLE_FOOTER_GUID);
        img.extend_from_slice(&[0u8; 32]);
        run_pipeline(&img);
    }

    #[test]
    fn mutated_images_never_panic(
        flips in proptest::collection::vec((0usize..IMAGE_LEN, any::<u8>()), 1..8),
        cut in 0usize..64,
    ) {
        let mut img = Synth::new().build();
        // Concentrate mutations on the parsed regions: descriptor and GUIDed table.
        for (pos, val) in flips {
            let at = if pos % 2 == 0 {
                DESCRIPTOR_AT + pos % (16 + 32 * 5)
            } else {
                IMAGE_LEN - 32 - 64 + pos % 64
            };
            img[at] = val;
        }
        if cut > 0 {
            img.truncate(IMAGE_LEN - cut);
        }
        run_pipeline(&img);
    }

    #[test]
    fn random_sections_never_panic(
        raw in proptest::collection::vec(
            (any::<u32>(), 0u32..0x2_0000, prop_oneof![any::<u64>(), 0u64..0x1_0000_0000],
             prop_oneof![any::<u64>(), (0u64..64).prop_map(|p| p * 0x1000)], 0u32..9, 0u32..5),
            1..8),
    ) {
        let sections = raw
            .into_iter()
            .map(|(o, r, g, m, k, a)| sec(o % 0x1_0000, r, g & !0xFFF, m, k, a))
            .collect();
        let img = Synth::with_sections(sections).build();
        run_pipeline(&img);
    }
}

// ---------------------------------------------------------------- the real OVMF image

/// SHA-384 of Debian 12's `/usr/share/ovmf/OVMF.fd` (ovmf 2022.11-6+deb12u2), for which the
/// known-answer MRTD below was computed with an independent Python script (struct + hashlib,
/// same block rules). Other images are only checked for invariants and determinism.
const DEBIAN_OVMF_SHA384: &str = "fa0dd56f4e3156e03cb377d56b5785bda51999a9c01fcf4e3d00e8848d6fe02a94d95e2c1fab707a000bb08674a7ce6a";
const DEBIAN_OVMF_MRTD: &str = "4c7206f0f483c524f12c366c711e9049030a8d47c471ee5aa9c4999a08de4057fb887fed0744d5631a212967fb231c47";

#[test]
fn real_ovmf_image() {
    let path = std::env::var("TDVF_IMAGE").unwrap_or_else(|_| "/usr/share/ovmf/OVMF.fd".into());
    let img = match std::fs::read(&path) {
        Ok(img) => img,
        Err(e) => panic!(
            "cannot read TDVF image {path}: {e}. Install Debian's `ovmf` package \
             (apt-get install -y --no-install-recommends ovmf) or set TDVF_IMAGE."
        ),
    };
    let md = TdvfMetadata::parse(&img).expect("OVMF.fd must carry valid TDX metadata");
    println!(
        "{path}: {} bytes, TDVF descriptor at {:#x}",
        img.len(),
        md.descriptor_offset()
    );
    for (i, s) in md.sections().iter().enumerate() {
        println!(
            "  section {i}: {:<7} file {:#08x}+{:#08x} -> GPA {:#010x}+{:#08x} attrs {:#x}{}{}",
            s.section_type.name(),
            s.data_offset,
            s.raw_data_size,
            s.memory_address.0,
            s.memory_data_size,
            s.attributes.raw(),
            if s.attributes.mr_extend() {
                " MR.EXTEND"
            } else {
                ""
            },
            if s.attributes.page_aug() {
                " PAGE.AUG"
            } else {
                ""
            },
        );
    }
    let count = |t: SectionType| md.sections().iter().filter(|s| s.section_type == t).count();
    assert!(count(SectionType::Bfv) >= 1);
    assert!(count(SectionType::Cfv) >= 1);
    assert_eq!(count(SectionType::TdHob), 1);
    assert!(count(SectionType::TempMem) >= 1);
    for s in md.sections() {
        match s.section_type {
            SectionType::Bfv | SectionType::Cfv => assert!(s.raw_data_size > 0),
            SectionType::TdHob | SectionType::TempMem => assert_eq!(s.raw_data_size, 0),
            _ => {}
        }
    }
    assert!(
        md.sections()
            .iter()
            .any(|s| s.section_type == SectionType::Bfv && s.attributes.mr_extend()),
        "the BFV is measured"
    );

    let layout = TdMemoryLayout::new(&md, 2048).unwrap();
    for r in layout.memory_resources() {
        println!(
            "  RAM {:#012x}+{:#012x} {:?}",
            r.start.0, r.length, r.acceptance
        );
    }
    let plan = BuildPlan::new(&layout).unwrap();
    println!(
        "  plan: {} PAGE.ADD, {} MR.EXTEND, TD HOB {} bytes",
        plan.page_count(),
        plan.extend_count(),
        plan.td_hob().len()
    );
    let mrtd = expected_mrtd(&img, &layout).unwrap();
    println!("  expected MRTD: {}", hex(&mrtd));
    assert_eq!(replay_operations(&img, &layout), mrtd);
    assert_eq!(via_module(&img, &layout), mrtd);
    // Deterministic and independent of the RAM size.
    let other = TdMemoryLayout::new(&md, 16384).unwrap();
    assert_eq!(expected_mrtd(&img, &other).unwrap(), mrtd);

    let digest = hex(&Sha384::digest(&img));
    if digest == DEBIAN_OVMF_SHA384 {
        assert_eq!(hex(&mrtd), DEBIAN_OVMF_MRTD);
        println!("  matches the independently computed known answer");
    } else {
        println!(
            "  (image SHA-384 {digest} is not the Debian 12 build; known-answer check skipped)"
        );
    }
}

/// A 6 MiB image: 32 KiB of measured BFV data, a 4 MiB unmeasured CFV, descriptor and GUIDed
/// table at the end.
fn large_image() -> Vec<u8> {
    const LEN: usize = 6 << 20;
    let mut s = Synth::with_sections(vec![
        sec(0x10_0000, 0x8000, 0xFFFF_0000, 0x10000, 0, 1), // BFV, MR.EXTEND
        sec(0x20_0000, 0x40_0000, 0xFFB0_0000, 0x40_0000, 1, 0), // CFV, 4 MiB
        sec(0, 0, 0x80_0000, 0x6000, 3, 0),                 // TempMem
        sec(0, 0, 0x80_9000, 0x2000, 2, 0),                 // TD_HOB
    ]);
    s.len = LEN;
    s.descriptor_at = LEN - 0x1000;
    s.metadata_entry = Some(0x1000u32.to_le_bytes().to_vec());
    s.build()
}

#[test]
fn a_large_image_is_validated_from_its_tail_and_its_measured_pages_only() {
    use crate::host::testing::CountingSource;
    let img = large_image();
    let src = CountingSource::new(&img[..]);
    let md = TdvfMetadata::parse_source(&src).unwrap();
    assert_eq!(md, TdvfMetadata::parse(&img).unwrap(), "one parser");
    let parse_bytes = src.bytes();
    // Footer + table (two entries) + descriptor header + 4 entries: well under 1 KiB.
    assert!(parse_bytes < 1024, "parse read {parse_bytes} bytes");
    assert!(src.largest_read() <= 64 << 10);
    let layout = TdMemoryLayout::new(&md, 64).unwrap();
    let mrtd = expected_mrtd_from(&src, &layout).unwrap();
    assert_eq!(mrtd, expected_mrtd(&img, &layout).unwrap(), "one replay");
    let mrtd_bytes = src.bytes() - parse_bytes;
    // The metadata again (layout check) and the BFV's 32 KiB of measured raw data; the 4 MiB
    // CFV is PAGE.ADDed but not extended, so its bytes are never read.
    assert!(
        mrtd_bytes <= parse_bytes + 0x8000,
        "expected MRTD read {mrtd_bytes} bytes"
    );
    assert!(mrtd_bytes >= 0x8000, "the measured bytes are read");
    assert!(src.largest_read() <= PAGE_BYTES as u64);
    std::println!(
        "6 MiB image: parse read {parse_bytes} B, expected MRTD {mrtd_bytes} B in {} reads",
        src.reads()
    );
}

#[test]
fn page_fills_from_a_source_match_the_slice_fills() {
    let img = large_image();
    let md = TdvfMetadata::parse(&img).unwrap();
    let plan = BuildPlan::new(&TdMemoryLayout::new(&md, 64).unwrap()).unwrap();
    let src = crate::host::testing::CountingSource::new(&img[..]);
    let mut a = [0u8; PAGE_BYTES];
    let mut b = [0u8; PAGE_BYTES];
    for index in (0..plan.page_count()).step_by(97) {
        let pa = plan.fill_page(index, &img, &mut a).unwrap();
        let pb = plan.fill_page_from(index, &src, &mut b).unwrap();
        assert_eq!(pa, pb);
        assert_eq!(a, b, "page {index}");
    }
}
