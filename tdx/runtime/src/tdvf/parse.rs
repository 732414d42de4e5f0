//! Parser for the OVMF GUIDed table and the TDX metadata ("TDVF descriptor") of a firmware image.
//!
//! Format (reference sheet §3.2; QEMU `hw/i386/tdvf.c` and `hw/i386/pc_sysfw_ovmf.c`, the TDVF
//! design guide, td-shim `td-layout`):
//!
//! * The last 32 bytes of the image are skipped. The 16 bytes before them hold the footer GUID
//!   [`OVMF_TABLE_FOOTER_GUID`], preceded by a `u16` total table length (which includes the
//!   18-byte footer entry itself).
//! * The table entries sit right before the footer entry and are walked backwards: each entry is
//!   `data, u16 length (= data + 18), GUID`.
//! * The entry [`TDX_METADATA_OFFSET_GUID`] holds a `u32`: the TDVF descriptor is at
//!   `image_len - value`.
//! * Descriptor: `Signature` "TDVF", `Length` = 16 + 32·N, `Version` 1, `NumberOfSectionEntries`
//!   N, then N 32-byte [`TdvfSection`] entries.
//!
//! Reading: everything goes through an [`ImageSource`] (`read_at(offset, buf)`), so the runtime
//! validates an image where it was stored (pool pages) without copying the file: the parser
//! reads the footer, the GUIDed table (at most 64 KiB), the 16-byte descriptor and its 32-byte
//! entries, and checks section bounds arithmetically without reading section data. The
//! `&[u8]` entry points ([`TdvfMetadata::parse`], [`ovmf_guid_table`]) run the same code over
//! a slice.
//!
//! Why hand-written: no maintained crate on crates.io parses TDVF metadata in `no_std`. The
//! only one found, `virtfw-igvm-tools` (checked with `cargo info`, 0.2.6), is a std-only Linux
//! tool crate (`std::fmt`, clap, env_logger) and does not validate the rules the runtime relies
//! on (overlaps, alignment, per-type raw-data rules). The format is small; every read here goes
//! through checked slicing so no input can make the parser panic (property-tested below).

use alloc::vec::Vec;

use tdx_abi::{Gpa, PAGE_SIZE_4K};

/// Builds the 16-byte on-disk form of an EFI GUID (first three fields little-endian, the last
/// eight bytes as written).
pub const fn efi_guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> [u8; 16] {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

/// Footer GUID of the OVMF GUIDed table, `96b582de-1fb2-45f7-baea-a366c55a082d`.
pub const OVMF_TABLE_FOOTER_GUID: [u8; 16] = efi_guid(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);

/// GUID of the table entry holding the TDX metadata offset,
/// `e47a6535-984a-4798-865e-4685a7bf8ec2`.
pub const TDX_METADATA_OFFSET_GUID: [u8; 16] = efi_guid(
    0xe47a_6535,
    0x984a,
    0x4798,
    [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2],
);

/// `Signature` of the TDVF descriptor: "TDVF" read as a little-endian `u32`.
pub const TDVF_SIGNATURE: u32 = 0x4656_4454;
/// The only descriptor `Version` defined.
pub const TDVF_VERSION: u32 = 1;
/// Size of the descriptor header.
pub const TDVF_DESCRIPTOR_SIZE: usize = 16;
/// Size of one section entry.
pub const TDVF_SECTION_ENTRY_SIZE: usize = 32;

/// Bytes at the very end of the image that are not part of the GUIDed table.
const BYTES_AFTER_TABLE: usize = 32;
/// Size of an entry header (u16 length + GUID); also the footer entry's total size.
const ENTRY_HEADER_SIZE: usize = 18;

/// A firmware image that can be read piecewise (a byte slice, or an image stored in pool pages).
pub trait ImageSource {
    /// Length of the image in bytes.
    fn len(&self) -> usize;

    /// Whether the image is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the image bytes at `offset..offset + buf.len()`; an error (and `buf`
    /// unspecified) if that range is not inside the image.
    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), OutOfImage>;
}

/// A read outside the image (see [`ImageSource::read_at`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("read outside the image")]
pub struct OutOfImage;

impl ImageSource for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), OutOfImage> {
        let end = offset.checked_add(buf.len()).ok_or(OutOfImage)?;
        buf.copy_from_slice(self.get(offset..end).ok_or(OutOfImage)?);
        Ok(())
    }
}

impl<S: ImageSource + ?Sized> ImageSource for &S {
    fn len(&self) -> usize {
        (**self).len()
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), OutOfImage> {
        (**self).read_at(offset, buf)
    }
}

/// Reads `N` bytes at `offset` of `src`, or `None` if out of range.
fn read_array<const N: usize, S: ImageSource + ?Sized>(src: &S, offset: usize) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    src.read_at(offset, &mut out).ok()?;
    Some(out)
}

/// `Type` of a TDVF section.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum SectionType {
    /// 0: boot firmware volume (code); must carry raw data.
    Bfv,
    /// 1: configuration firmware volume (UEFI variables); must carry raw data.
    Cfv,
    /// 2: the TD HOB, written by the VMM; no raw data.
    TdHob,
    /// 3: temporary memory the firmware uses before it has RAM; no raw data.
    TempMem,
    /// 4: permanent memory; no raw data.
    PermMem,
    /// 5: payload (e.g. a kernel) placed by the VMM; raw data optional.
    Payload,
    /// 6: payload parameters (e.g. a command line); raw data optional.
    PayloadParam,
}

impl SectionType {
    /// Decodes the metadata `Type` field.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            0 => Some(Self::Bfv),
            1 => Some(Self::Cfv),
            2 => Some(Self::TdHob),
            3 => Some(Self::TempMem),
            4 => Some(Self::PermMem),
            5 => Some(Self::Payload),
            6 => Some(Self::PayloadParam),
            _ => None,
        }
    }

    /// The metadata `Type` value.
    pub const fn raw(self) -> u32 {
        match self {
            Self::Bfv => 0,
            Self::Cfv => 1,
            Self::TdHob => 2,
            Self::TempMem => 3,
            Self::PermMem => 4,
            Self::Payload => 5,
            Self::PayloadParam => 6,
        }
    }

    /// Short name as used in the TDVF design guide.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Bfv => "BFV",
            Self::Cfv => "CFV",
            Self::TdHob => "TD_HOB",
            Self::TempMem => "TempMem",
            Self::PermMem => "PermMem",
            Self::Payload => "Payload",
            Self::PayloadParam => "PayloadParam",
        }
    }

    /// Whether a section of this type must carry raw data from the image.
    pub const fn requires_raw_data(self) -> bool {
        matches!(self, Self::Bfv | Self::Cfv)
    }

    /// Whether a section of this type may carry raw data from the image.
    pub const fn allows_raw_data(self) -> bool {
        matches!(
            self,
            Self::Bfv | Self::Cfv | Self::Payload | Self::PayloadParam
        )
    }
}

/// `Attributes` of a TDVF section.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, Default)]
pub struct SectionAttributes(u32);

impl SectionAttributes {
    /// Bit 0: extend the section's page contents into MRTD with TDH.MR.EXTEND.
    pub const MR_EXTEND: u32 = 1 << 0;
    /// Bit 1: the section is added with TDH.MEM.PAGE.AUG at run time, not PAGE.ADDed.
    pub const PAGE_AUG: u32 = 1 << 1;
    /// Every bit this parser understands.
    pub const KNOWN: u32 = Self::MR_EXTEND | Self::PAGE_AUG;

    /// Decodes the field; `None` if a bit outside [`Self::KNOWN`] is set.
    pub const fn from_raw(raw: u32) -> Option<Self> {
        if raw & !Self::KNOWN != 0 {
            None
        } else {
            Some(Self(raw))
        }
    }

    /// The raw field value.
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// Whether page contents are extended into MRTD.
    pub const fn mr_extend(self) -> bool {
        self.0 & Self::MR_EXTEND != 0
    }

    /// Whether the section is left to PAGE.AUG (not PAGE.ADDed).
    pub const fn page_aug(self) -> bool {
        self.0 & Self::PAGE_AUG != 0
    }
}

/// One validated TDVF section entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct TdvfSection {
    /// Offset of the raw data in the image file.
    pub data_offset: u32,
    /// Bytes of raw data in the image (0 for sections without data).
    pub raw_data_size: u32,
    /// First guest-physical address (4 KiB aligned).
    pub memory_address: Gpa,
    /// Bytes of guest memory (non-zero 4 KiB multiple, at least `raw_data_size`).
    pub memory_data_size: u64,
    /// Section type.
    pub section_type: SectionType,
    /// Section attributes.
    pub attributes: SectionAttributes,
}

impl TdvfSection {
    /// One past the last guest-physical address of the section.
    pub const fn memory_end(&self) -> u64 {
        // Never saturates for parsed sections (checked by the parser).
        self.memory_address.0.saturating_add(self.memory_data_size)
    }

    /// Number of 4 KiB pages the section covers.
    pub const fn pages(&self) -> u64 {
        self.memory_data_size / PAGE_SIZE_4K
    }

    /// Whether the runtime PAGE.ADDs this section before finalizing (everything not marked
    /// PAGE.AUG; see the build plan for why).
    pub const fn is_page_added(&self) -> bool {
        !self.attributes.page_aug()
    }
}

/// Why a firmware image was rejected.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum TdvfError {
    /// The image is too short to hold the GUIDed table footer.
    #[error("image of {len} bytes is too small to hold the OVMF GUIDed table footer")]
    ImageTooSmall {
        /// Image length in bytes.
        len: usize,
    },
    /// The footer GUID is not the OVMF table footer GUID.
    #[error("OVMF GUIDed table footer GUID not found (not an OVMF/TDVF image)")]
    BadFooterGuid,
    /// The table length in the footer is smaller than the footer or larger than the image.
    #[error("OVMF GUIDed table length {len} is out of range")]
    TableLengthOutOfRange {
        /// The stored length.
        len: u16,
    },
    /// An entry in the GUIDed table has a length that does not fit the table.
    #[error("OVMF GUIDed table entry ending at image offset {end:#x} has invalid length {len}")]
    MalformedTableEntry {
        /// Image offset just past the entry.
        end: usize,
        /// Length stored in the entry (0 if the entry header itself is cut off).
        len: u16,
    },
    /// The GUIDed table has no TDX metadata offset entry.
    #[error("no TDX metadata offset entry in the OVMF GUIDed table (not a TDVF image)")]
    MissingMetadataEntry,
    /// The TDX metadata offset entry does not hold exactly a `u32`.
    #[error("TDX metadata offset entry holds {len} bytes, expected 4")]
    BadMetadataEntrySize {
        /// Data bytes in the entry.
        len: usize,
    },
    /// The metadata offset points outside the image.
    #[error("TDX metadata offset {offset:#x} from the end is outside the image")]
    MetadataOffsetOutOfRange {
        /// Offset from the end of the image.
        offset: u32,
    },
    /// The descriptor signature is not "TDVF".
    #[error("TDVF descriptor signature {found:#010x} is not \"TDVF\"")]
    BadSignature {
        /// The signature found.
        found: u32,
    },
    /// The descriptor version is not 1.
    #[error("TDVF descriptor version {found} is not supported (expected 1)")]
    BadVersion {
        /// The version found.
        found: u32,
    },
    /// The descriptor declares no sections.
    #[error("TDVF descriptor has no section entries")]
    NoSections,
    /// `Length` does not equal 16 + 32·N.
    #[error("TDVF descriptor length {length} does not match {sections} section entries")]
    BadDescriptorLength {
        /// `Length` field.
        length: u32,
        /// `NumberOfSectionEntries` field.
        sections: u32,
    },
    /// The descriptor and its entries run past the end of the image.
    #[error("TDVF descriptor with {sections} entries runs past the end of the image")]
    DescriptorOutOfFile {
        /// `NumberOfSectionEntries` field.
        sections: u32,
    },
    /// A section has an unknown `Type`.
    #[error("section {index}: unknown type {raw}")]
    UnknownSectionType {
        /// Section index in metadata order.
        index: usize,
        /// The type value.
        raw: u32,
    },
    /// A section has attribute bits this parser does not know.
    #[error("section {index}: unknown attribute bits {raw:#x}")]
    UnknownAttributes {
        /// Section index.
        index: usize,
        /// The attributes value.
        raw: u32,
    },
    /// A section's raw data lies outside the image.
    #[error("section {index}: raw data at {offset:#x}+{size:#x} is outside the image")]
    SectionOutOfFile {
        /// Section index.
        index: usize,
        /// `DataOffset`.
        offset: u32,
        /// `RawDataSize`.
        size: u32,
    },
    /// `RawDataSize` exceeds `MemoryDataSize`.
    #[error("section {index}: raw data size {raw:#x} exceeds memory size {memory:#x}")]
    RawDataLargerThanMemory {
        /// Section index.
        index: usize,
        /// `RawDataSize`.
        raw: u32,
        /// `MemoryDataSize`.
        memory: u64,
    },
    /// `MemoryAddress` or `MemoryDataSize` is not 4 KiB aligned.
    #[error("section {index}: GPA {gpa:#x} or size {size:#x} is not 4 KiB aligned")]
    UnalignedSection {
        /// Section index.
        index: usize,
        /// `MemoryAddress`.
        gpa: u64,
        /// `MemoryDataSize`.
        size: u64,
    },
    /// `MemoryDataSize` is zero.
    #[error("section {index}: memory size is zero")]
    EmptySection {
        /// Section index.
        index: usize,
    },
    /// `MemoryAddress + MemoryDataSize` overflows the address space.
    #[error("section {index}: GPA range overflows")]
    SectionAddressOverflow {
        /// Section index.
        index: usize,
    },
    /// Two sections cover the same guest memory.
    #[error("sections {first} and {second} overlap in guest memory")]
    OverlappingSections {
        /// Index of one section.
        first: usize,
        /// Index of the other.
        second: usize,
    },
    /// A section type that must not carry raw data does.
    #[error("section {index}: {kind:?} must not carry raw data")]
    UnexpectedRawData {
        /// Section index.
        index: usize,
        /// Section type.
        kind: SectionType,
    },
    /// A BFV/CFV section without raw data.
    #[error("section {index}: {kind:?} has no raw data")]
    MissingRawData {
        /// Section index.
        index: usize,
        /// Section type.
        kind: SectionType,
    },
    /// A section with raw data (or the TD HOB) is marked PAGE.AUG, so its contents could
    /// never be placed in the TD.
    #[error("section {index}: {kind:?} has contents but is marked PAGE.AUG")]
    ContentsWithPageAug {
        /// Section index.
        index: usize,
        /// Section type.
        kind: SectionType,
    },
    /// No BFV section.
    #[error("no BFV section")]
    MissingBfv,
    /// No TD_HOB section.
    #[error("no TD_HOB section")]
    MissingTdHob,
    /// More than one TD_HOB section.
    #[error("more than one TD_HOB section (sections {first} and {second})")]
    DuplicateTdHob {
        /// First TD_HOB section index.
        first: usize,
        /// Second TD_HOB section index.
        second: usize,
    },
}

/// Reads `N` bytes at `offset`, or `None` if out of range.
fn bytes_at<const N: usize>(data: &[u8], offset: usize) -> Option<[u8; N]> {
    let end = offset.checked_add(N)?;
    data.get(offset..end)?.try_into().ok()
}

fn u16_at(data: &[u8], offset: usize) -> Option<u16> {
    bytes_at::<2>(data, offset).map(u16::from_le_bytes)
}

fn u32_at(data: &[u8], offset: usize) -> Option<u32> {
    bytes_at::<4>(data, offset).map(u32::from_le_bytes)
}

fn u64_at(data: &[u8], offset: usize) -> Option<u64> {
    bytes_at::<8>(data, offset).map(u64::from_le_bytes)
}

/// One entry of the OVMF GUIDed table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuidTableEntry<'a> {
    /// The entry's GUID in on-disk byte order.
    pub guid: [u8; 16],
    /// The entry's data (without length and GUID).
    pub data: &'a [u8],
}

/// Walks the OVMF GUIDed table at the end of `image` and returns its entries in the order they
/// are found (last entry in the file first). Every entry is validated, so a malformed table is
/// an error even if the wanted entry comes first.
pub fn ovmf_guid_table(image: &[u8]) -> Result<Vec<GuidTableEntry<'_>>, TdvfError> {
    let table = GuidTable::read(image)?;
    Ok(table
        .entries
        .iter()
        .map(|e| GuidTableEntry {
            guid: e.guid,
            data: image.get(e.data.clone()).unwrap_or(&[]),
        })
        .collect())
}

/// Position of one GUIDed table entry (image offsets).
struct GuidTablePos {
    guid: [u8; 16],
    data: core::ops::Range<usize>,
}

/// The GUIDed table read from an [`ImageSource`]: the bytes of its entries (without the footer
/// entry) and where each entry's data lies.
struct GuidTable {
    /// Image bytes `base..base + region.len()`.
    region: Vec<u8>,
    base: usize,
    entries: Vec<GuidTablePos>,
}

impl GuidTable {
    fn read<S: ImageSource + ?Sized>(src: &S) -> Result<GuidTable, TdvfError> {
        let len = src.len();
        let too_small = TdvfError::ImageTooSmall { len };
        // Offset of the footer GUID and of the table length before it.
        let footer_guid_at = len.checked_sub(BYTES_AFTER_TABLE + 16).ok_or(too_small)?;
        let table_len_at = footer_guid_at.checked_sub(2).ok_or(too_small)?;
        let footer: [u8; 16] = read_array(src, footer_guid_at).ok_or(too_small)?;
        if footer != OVMF_TABLE_FOOTER_GUID {
            return Err(TdvfError::BadFooterGuid);
        }
        let table_len = read_array(src, table_len_at)
            .map(u16::from_le_bytes)
            .ok_or(too_small)?;
        let table_start = usize::from(table_len)
            .checked_sub(ENTRY_HEADER_SIZE)
            .and_then(|entries_len| table_len_at.checked_sub(entries_len))
            .ok_or(TdvfError::TableLengthOutOfRange { len: table_len })?;
        // The entries, read once (at most 64 KiB: the length is a u16).
        let mut region = alloc::vec![0u8; table_len_at - table_start];
        src.read_at(table_start, &mut region)
            .map_err(|_| too_small)?;
        let at = |offset: usize| offset - table_start;

        let mut entries = Vec::new();
        // `pos` is one past the end of the next entry to read (its GUID ends there).
        let mut pos = table_len_at;
        while pos > table_start {
            let malformed = |len| TdvfError::MalformedTableEntry { end: pos, len };
            let header_at = pos
                .checked_sub(ENTRY_HEADER_SIZE)
                .filter(|&h| h >= table_start)
                .ok_or(malformed(0))?;
            let entry_len = u16_at(&region, at(header_at)).ok_or(malformed(0))?;
            let guid: [u8; 16] =
                bytes_at(&region, at(header_at) + 2).ok_or(malformed(entry_len))?;
            let entry_start = pos
                .checked_sub(usize::from(entry_len))
                .filter(|&start| {
                    start >= table_start && usize::from(entry_len) >= ENTRY_HEADER_SIZE
                })
                .ok_or(malformed(entry_len))?;
            entries.push(GuidTablePos {
                guid,
                data: entry_start..header_at,
            });
            pos = entry_start;
        }
        Ok(GuidTable {
            region,
            base: table_start,
            entries,
        })
    }

    /// Data of the first entry with `guid`.
    fn find(&self, guid: &[u8; 16]) -> Option<&[u8]> {
        let e = self.entries.iter().find(|e| e.guid == *guid)?;
        self.region
            .get(e.data.start - self.base..e.data.end - self.base)
    }
}

/// Parsed and validated TDX metadata of a TDVF image. Only [`TdvfMetadata::parse`] makes one,
/// so every value satisfies the validation rules.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TdvfMetadata {
    image_len: usize,
    descriptor_offset: usize,
    sections: Vec<TdvfSection>,
}

impl TdvfMetadata {
    /// Parses and validates the TDX metadata of `image`. Never panics; every malformed input
    /// gives a [`TdvfError`]. Same as [`TdvfMetadata::parse_source`] over the slice.
    pub fn parse(image: &[u8]) -> Result<Self, TdvfError> {
        Self::parse_source(image)
    }

    /// Parses and validates the TDX metadata of the image `src` reads. Reads only the GUIDed
    /// table at the end, the descriptor and its section entries; section data is checked to
    /// lie inside the image by arithmetic, never read. Never panics.
    pub fn parse_source<S: ImageSource + ?Sized>(src: &S) -> Result<Self, TdvfError> {
        let image_len = src.len();
        let table = GuidTable::read(src)?;
        let entry = table
            .find(&TDX_METADATA_OFFSET_GUID)
            .ok_or(TdvfError::MissingMetadataEntry)?;
        let raw_offset: [u8; 4] = entry
            .try_into()
            .map_err(|_| TdvfError::BadMetadataEntrySize { len: entry.len() })?;
        let offset_from_end = u32::from_le_bytes(raw_offset);
        let out_of_range = TdvfError::MetadataOffsetOutOfRange {
            offset: offset_from_end,
        };
        let descriptor_offset = usize::try_from(offset_from_end)
            .ok()
            .and_then(|off| image_len.checked_sub(off))
            .ok_or(out_of_range)?;
        let header: [u8; TDVF_DESCRIPTOR_SIZE] =
            read_array(src, descriptor_offset).ok_or(out_of_range)?;
        let field = |i: usize| u32_at(&header, i).ok_or(out_of_range);
        let signature = field(0)?;
        let length = field(4)?;
        let version = field(8)?;
        let count = field(12)?;
        if signature != TDVF_SIGNATURE {
            return Err(TdvfError::BadSignature { found: signature });
        }
        if version != TDVF_VERSION {
            return Err(TdvfError::BadVersion { found: version });
        }
        if count == 0 {
            return Err(TdvfError::NoSections);
        }
        let expected_length =
            u64::from(count) * TDVF_SECTION_ENTRY_SIZE as u64 + TDVF_DESCRIPTOR_SIZE as u64;
        if u64::from(length) != expected_length {
            return Err(TdvfError::BadDescriptorLength {
                length,
                sections: count,
            });
        }
        let out_of_file = TdvfError::DescriptorOutOfFile { sections: count };
        usize::try_from(length)
            .ok()
            .and_then(|len| descriptor_offset.checked_add(len))
            .filter(|end| *end <= image_len)
            .ok_or(out_of_file)?;
        // In the file, so `count` entries of 32 bytes fit in usize.
        let count = count as usize;
        let mut sections = Vec::with_capacity(count);
        for index in 0..count {
            let at = descriptor_offset + TDVF_DESCRIPTOR_SIZE + index * TDVF_SECTION_ENTRY_SIZE;
            let raw: [u8; TDVF_SECTION_ENTRY_SIZE] = read_array(src, at).ok_or(out_of_file)?;
            sections.push(parse_section(image_len, index, &raw)?);
        }
        validate_sections(&sections)?;
        Ok(Self {
            image_len,
            descriptor_offset,
            sections,
        })
    }

    /// Length of the image the metadata was read from.
    pub fn image_len(&self) -> usize {
        self.image_len
    }

    /// Offset of the TDVF descriptor in the image.
    pub fn descriptor_offset(&self) -> usize {
        self.descriptor_offset
    }

    /// Sections in metadata order (the order the runtime adds them in).
    pub fn sections(&self) -> &[TdvfSection] {
        &self.sections
    }

    /// The TD_HOB section and its index (exactly one exists in parsed metadata).
    pub fn td_hob(&self) -> Option<(usize, &TdvfSection)> {
        self.sections
            .iter()
            .enumerate()
            .find(|(_, s)| s.section_type == SectionType::TdHob)
    }
}

/// Decodes and checks one 32-byte section entry on its own.
fn parse_section(image_len: usize, index: usize, raw: &[u8]) -> Result<TdvfSection, TdvfError> {
    // `raw` is exactly 32 bytes (chunks_exact); the `?`s are unreachable but keep this panic-free.
    let short = TdvfError::DescriptorOutOfFile { sections: 0 };
    let data_offset = u32_at(raw, 0).ok_or(short)?;
    let raw_data_size = u32_at(raw, 4).ok_or(short)?;
    let memory_address = u64_at(raw, 8).ok_or(short)?;
    let memory_data_size = u64_at(raw, 16).ok_or(short)?;
    let type_raw = u32_at(raw, 24).ok_or(short)?;
    let attr_raw = u32_at(raw, 28).ok_or(short)?;

    let section_type = SectionType::from_raw(type_raw).ok_or(TdvfError::UnknownSectionType {
        index,
        raw: type_raw,
    })?;
    let attributes = SectionAttributes::from_raw(attr_raw).ok_or(TdvfError::UnknownAttributes {
        index,
        raw: attr_raw,
    })?;
    if raw_data_size != 0 {
        let end = u64::from(data_offset) + u64::from(raw_data_size);
        if end > image_len as u64 {
            return Err(TdvfError::SectionOutOfFile {
                index,
                offset: data_offset,
                size: raw_data_size,
            });
        }
    }
    if !memory_address.is_multiple_of(PAGE_SIZE_4K)
        || !memory_data_size.is_multiple_of(PAGE_SIZE_4K)
    {
        return Err(TdvfError::UnalignedSection {
            index,
            gpa: memory_address,
            size: memory_data_size,
        });
    }
    if memory_data_size == 0 {
        return Err(TdvfError::EmptySection { index });
    }
    if memory_address.checked_add(memory_data_size).is_none() {
        return Err(TdvfError::SectionAddressOverflow { index });
    }
    if u64::from(raw_data_size) > memory_data_size {
        return Err(TdvfError::RawDataLargerThanMemory {
            index,
            raw: raw_data_size,
            memory: memory_data_size,
        });
    }
    if raw_data_size != 0 && !section_type.allows_raw_data() {
        return Err(TdvfError::UnexpectedRawData {
            index,
            kind: section_type,
        });
    }
    if raw_data_size == 0 && section_type.requires_raw_data() {
        return Err(TdvfError::MissingRawData {
            index,
            kind: section_type,
        });
    }
    if attributes.page_aug() && (raw_data_size != 0 || section_type == SectionType::TdHob) {
        return Err(TdvfError::ContentsWithPageAug {
            index,
            kind: section_type,
        });
    }
    Ok(TdvfSection {
        data_offset,
        raw_data_size,
        memory_address: Gpa(memory_address),
        memory_data_size,
        section_type,
        attributes,
    })
}

/// Checks the rules that involve several sections.
fn validate_sections(sections: &[TdvfSection]) -> Result<(), TdvfError> {
    let mut td_hob: Option<usize> = None;
    for (index, section) in sections.iter().enumerate() {
        if section.section_type == SectionType::TdHob {
            if let Some(first) = td_hob {
                return Err(TdvfError::DuplicateTdHob {
                    first,
                    second: index,
                });
            }
            td_hob = Some(index);
        }
    }
    if !sections.iter().any(|s| s.section_type == SectionType::Bfv) {
        return Err(TdvfError::MissingBfv);
    }
    if td_hob.is_none() {
        return Err(TdvfError::MissingTdHob);
    }
    // Overlaps: sort indices by start address, compare neighbours. O(n log n).
    let mut order: Vec<usize> = (0..sections.len()).collect();
    order.sort_by_key(|&i| sections.get(i).map(|s| s.memory_address));
    for pair in order.windows(2) {
        if let [a, b] = *pair
            && let (Some(first), Some(second)) = (sections.get(a), sections.get(b))
            && second.memory_address.0 < first.memory_end()
        {
            return Err(TdvfError::OverlappingSections {
                first: a.min(b),
                second: a.max(b),
            });
        }
    }
    Ok(())
}
