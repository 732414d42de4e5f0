//! TDVF firmware images: metadata parsing, the TD's guest memory layout, the build plan
//! (PAGE.ADD / MR.EXTEND sequence) and the expected MRTD computed offline.
//!
//! Flow: [`TdvfMetadata::parse`] the image → [`TdMemoryLayout::new`] for the TD's RAM size →
//! [`BuildPlan::new`] (also builds the TD HOB) → the runtime walks [`BuildPlan::operations`],
//! filling each page with [`BuildPlan::fill_page`]. [`expected_mrtd`] replays the same plan
//! through `tdx_abi::measure` so the MRTD a TD will report can be known before it is built.

mod layout;
mod parse;
mod plan;

#[cfg(test)]
mod tests;

pub use layout::{
    FIRMWARE_WINDOW_END, FIRMWARE_WINDOW_START, GpaKind, GpaRange, HIGH_RAM_BASE,
    LOW_RAM_SPLIT_THRESHOLD, LOW_RAM_WHEN_SPLIT, LayoutError, MAX_GPA, SectionPlacement,
    TdMemoryLayout,
};
pub use parse::{
    GuidTableEntry, ImageSource, OVMF_TABLE_FOOTER_GUID, OutOfImage, SectionAttributes,
    SectionType, TDVF_DESCRIPTOR_SIZE, TDVF_SECTION_ENTRY_SIZE, TDVF_SIGNATURE, TDVF_VERSION,
    TDX_METADATA_OFFSET_GUID, TdvfError, TdvfMetadata, TdvfSection, efi_guid, ovmf_guid_table,
};
pub use plan::{
    BuildOp, BuildPlan, MR_EXTEND_CHUNK_SIZE, MR_EXTENDS_PER_PAGE, PAGE_BYTES, PageSource,
    PlanError, PlannedPage,
};

use tdx_abi::measure::{MRTD_SIZE, MeasuredPage, MrtdAccumulator};

/// Why an expected MRTD could not be computed.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum ExpectedMrtdError {
    /// The image does not parse.
    #[error("firmware image: {0}")]
    Image(#[from] TdvfError),
    /// The layout was made for different metadata.
    #[error("the memory layout was made for a different firmware image")]
    LayoutMismatch,
    /// The plan could not be made.
    #[error("build plan: {0}")]
    Plan(#[from] PlanError),
}

/// The MRTD a TD built from `image` with `layout` reports after TDH.MR.FINALIZE, computed
/// offline by replaying the [`BuildPlan`] through [`MrtdAccumulator`]. Only the image and the
/// layout matter: the TD HOB is PAGE.ADDed (its GPAs are hashed) but its contents are only
/// hashed if the TD_HOB section has MR.EXTEND, which TDVF images do not set. Same as
/// [`expected_mrtd_from`] over the slice.
pub fn expected_mrtd(
    image: &[u8],
    layout: &TdMemoryLayout,
) -> Result<[u8; MRTD_SIZE], ExpectedMrtdError> {
    expected_mrtd_from(image, layout)
}

/// [`expected_mrtd`] for an image read through `image`: reads the metadata (to check the
/// layout belongs to it) and the contents of MR.EXTENDed pages only (pages without MR.EXTEND
/// are hashed by GPA alone).
pub fn expected_mrtd_from<S: ImageSource + ?Sized>(
    image: &S,
    layout: &TdMemoryLayout,
) -> Result<[u8; MRTD_SIZE], ExpectedMrtdError> {
    let metadata = TdvfMetadata::parse_source(image)?;
    if metadata.sections() != layout.sections() || metadata.image_len() != layout.image_len() {
        return Err(ExpectedMrtdError::LayoutMismatch);
    }
    let plan = BuildPlan::new(layout)?;
    let mut acc = MrtdAccumulator::new();
    let mut buf = [0u8; PAGE_BYTES];
    for index in 0..plan.page_count() {
        let page = match plan.page(index) {
            Some(p) if p.extend => plan.fill_page_from(index, image, &mut buf)?,
            Some(p) => p,
            None => {
                return Err(ExpectedMrtdError::Plan(PlanError::PageOutOfRange {
                    index,
                    count: plan.page_count(),
                }));
            }
        };
        acc.add_page(MeasuredPage {
            gpa: page.gpa,
            bytes: &buf,
            extend: page.extend,
        });
    }
    Ok(acc.finalize())
}

/// A section for [`write_tdvf_metadata`]: `(data offset, raw size, GPA, memory size, type,
/// attributes)` as the TDVF section descriptor stores them.
pub type SectionRecord = (u32, u32, u64, u64, u32, u32);

/// Writes TDVF metadata into `image` (for images made by tools and tests): the descriptor
/// with `sections` at `descriptor_at`, and OVMF's GUIDed table pointing at it, ending 32
/// bytes before the end of the image where [`TdvfMetadata::parse`] looks for it. Bytes that
/// would fall outside the image are not written.
pub fn write_tdvf_metadata(image: &mut [u8], descriptor_at: usize, sections: &[SectionRecord]) {
    let len = image.len();
    let mut put = |at: usize, bytes: &[u8]| {
        if let Some(dst) = image.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    let n = u32::try_from(sections.len()).unwrap_or(u32::MAX);
    put(descriptor_at, &TDVF_SIGNATURE.to_le_bytes());
    put(descriptor_at + 4, &(16 + 32 * n).to_le_bytes());
    put(descriptor_at + 8, &TDVF_VERSION.to_le_bytes());
    put(descriptor_at + 12, &n.to_le_bytes());
    for (i, (off, raw, gpa, size, kind, attrs)) in sections.iter().enumerate() {
        let at = descriptor_at + 16 + 32 * i;
        put(at, &off.to_le_bytes());
        put(at + 4, &raw.to_le_bytes());
        put(at + 8, &gpa.to_le_bytes());
        put(at + 16, &size.to_le_bytes());
        put(at + 24, &kind.to_le_bytes());
        put(at + 28, &attrs.to_le_bytes());
    }
    // [offset from the end u32][entry length u16][GUID] [table length u16][footer GUID]
    let mut table = alloc::vec::Vec::new();
    let from_end = u32::try_from(len.saturating_sub(descriptor_at)).unwrap_or(0);
    table.extend_from_slice(&from_end.to_le_bytes());
    table.extend_from_slice(&(4u16 + 18).to_le_bytes());
    table.extend_from_slice(&TDX_METADATA_OFFSET_GUID);
    let table_len = u16::try_from(table.len() + 18).unwrap_or(u16::MAX);
    table.extend_from_slice(&table_len.to_le_bytes());
    table.extend_from_slice(&OVMF_TABLE_FOOTER_GUID);
    let end = len.saturating_sub(32);
    put(end.saturating_sub(table.len()), &table);
}
