//! The build plan: the exact, ordered list of TDH.MEM.PAGE.ADD / TDH.MR.EXTEND operations the
//! runtime issues to put a TDVF image into a TD before TDH.MR.FINALIZE.
//!
//! Order (frozen, because MRTD is a hash over the call sequence; reference §3.1/§3.2):
//!
//! * sections in metadata order;
//! * inside a section, 4 KiB pages in ascending GPA order;
//! * per page: one PAGE.ADD, then — if the section has the `MR.EXTEND` attribute — 16
//!   MR.EXTENDs over its 256-byte chunks in ascending GPA order (the per-page order KVM and
//!   current QEMU use, not the old "two-pass" order).
//!
//! Sections with the `PAGE.AUG` attribute (bit 1) are **skipped**: no PAGE.ADD, not part of
//! MRTD; the runtime maps them on demand with PAGE.AUG like other unaccepted memory. Upstream
//! QEMU ignores bit 1 and PAGE.ADDs every section; td-shim's tools and dstack-mr skip such
//! sections. We follow the skip semantics because that is what the attribute means in the TDVF
//! design guide; for OVMF (which never sets bit 1) both choices give the same result.
//!
//! Page contents: BFV/CFV/Payload pages carry the file bytes, zero-padded past `RawDataSize`;
//! TD_HOB pages carry the TD HOB built by [`crate::hob`] (zeros after the list); TempMem and
//! PermMem pages are zeros. The plan does not copy the image: [`BuildPlan::fill_page`] fills a
//! caller-provided 4 KiB buffer for page *i* from the image bytes.

use alloc::vec::Vec;

use super::layout::TdMemoryLayout;
use super::parse::{ImageSource, SectionType};
use crate::hob::{HobError, build_td_hob};
use tdx_abi::{Gpa, PAGE_SIZE_4K};

/// Bytes hashed by one TDH.MR.EXTEND.
pub const MR_EXTEND_CHUNK_SIZE: u64 = 256;
/// MR.EXTENDs per measured 4 KiB page.
pub const MR_EXTENDS_PER_PAGE: u64 = PAGE_SIZE_4K / MR_EXTEND_CHUNK_SIZE;
/// Size of a page buffer.
pub const PAGE_BYTES: usize = PAGE_SIZE_4K as usize;

/// Where a planned page's contents come from.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum PageSource {
    /// `len` (1..=4096) bytes of the image at `offset`, then zeros.
    Image {
        /// Offset in the image file.
        offset: u64,
        /// Bytes taken from the file.
        len: u32,
    },
    /// The TD HOB list starting at `offset` into it, then zeros.
    TdHob {
        /// Offset into the HOB list.
        offset: u64,
    },
    /// All zeros.
    Zero,
}

/// One page the plan PAGE.ADDs.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct PlannedPage {
    /// Position in the plan (0-based).
    pub index: u64,
    /// Guest-physical address of the page.
    pub gpa: Gpa,
    /// TDVF section index (metadata order).
    pub section: usize,
    /// Where the contents come from.
    pub source: PageSource,
    /// Whether the page's 16 chunks are MR.EXTENDed after the PAGE.ADD.
    pub extend: bool,
}

/// One SEAMCALL of the build, in issue order.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum BuildOp {
    /// TDH.MEM.PAGE.ADD of plan page `page` at `gpa`.
    PageAdd {
        /// Plan page index (for [`BuildPlan::fill_page`]).
        page: u64,
        /// Page GPA.
        gpa: Gpa,
    },
    /// TDH.MR.EXTEND of the 256-byte chunk at `gpa`.
    MrExtend {
        /// Chunk GPA.
        gpa: Gpa,
    },
}

/// Why a plan could not be made or used.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum PlanError {
    /// The TD HOB does not fit its section.
    #[error("TD HOB: {0}")]
    Hob(#[from] HobError),
    /// The layout has no TD_HOB section.
    #[error("the layout has no TD_HOB section")]
    NoTdHob,
    /// The image passed in is not the one the plan was made for.
    #[error("image is {found} bytes, the plan was made for {expected}")]
    ImageMismatch {
        /// Length the plan expects.
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// Page index past the end of the plan.
    #[error("plan page {index} does not exist ({count} pages)")]
    PageOutOfRange {
        /// Index asked for.
        index: u64,
        /// Pages in the plan.
        count: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Content {
    Image { data_offset: u64, raw_len: u64 },
    TdHob,
    Zero,
}

/// One PAGE.ADDed section, with the index of its first page in the plan.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct PlanSection {
    section: usize,
    gpa: Gpa,
    pages: u64,
    first_page: u64,
    content: Content,
    extend: bool,
}

/// The build plan for one TD: see the module docs for the order.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BuildPlan {
    sections: Vec<PlanSection>,
    page_count: u64,
    extended_pages: u64,
    td_hob: Vec<u8>,
    td_hob_gpa: Gpa,
    image_len: usize,
}

impl BuildPlan {
    /// Makes the plan for `layout` (which already validated the image's sections against the
    /// TD's RAM) and builds the TD HOB.
    pub fn new(layout: &TdMemoryLayout) -> Result<Self, PlanError> {
        let hob_section = layout.td_hob_section().ok_or(PlanError::NoTdHob)?;
        let td_hob = build_td_hob(
            hob_section.memory_address,
            hob_section.memory_data_size,
            layout.memory_resources(),
        )?;
        let mut sections = Vec::new();
        let mut page_count = 0u64;
        let mut extended_pages = 0u64;
        for (index, section) in layout.sections().iter().enumerate() {
            if !section.is_page_added() {
                continue;
            }
            let content = match section.section_type {
                SectionType::TdHob => Content::TdHob,
                _ if section.raw_data_size > 0 => Content::Image {
                    data_offset: u64::from(section.data_offset),
                    raw_len: u64::from(section.raw_data_size),
                },
                _ => Content::Zero,
            };
            let pages = section.pages();
            let extend = section.attributes.mr_extend();
            sections.push(PlanSection {
                section: index,
                gpa: section.memory_address,
                pages,
                first_page: page_count,
                content,
                extend,
            });
            // Sections lie in RAM or the 16 MiB firmware window, so this cannot overflow.
            page_count = page_count.saturating_add(pages);
            if extend {
                extended_pages = extended_pages.saturating_add(pages);
            }
        }
        Ok(Self {
            sections,
            page_count,
            extended_pages,
            td_hob,
            td_hob_gpa: hob_section.memory_address,
            image_len: layout.image_len(),
        })
    }

    /// Number of PAGE.ADDs.
    pub fn page_count(&self) -> u64 {
        self.page_count
    }

    /// Number of MR.EXTENDs.
    pub fn extend_count(&self) -> u64 {
        self.extended_pages.saturating_mul(MR_EXTENDS_PER_PAGE)
    }

    /// Total SEAMCALLs of the build (PAGE.ADDs + MR.EXTENDs).
    pub fn operation_count(&self) -> u64 {
        self.page_count.saturating_add(self.extend_count())
    }

    /// The TD HOB list written into the TD_HOB section.
    pub fn td_hob(&self) -> &[u8] {
        &self.td_hob
    }

    /// GPA of the TD_HOB section (the value TDVF receives in RCX/R8 at reset is set elsewhere;
    /// this is where the list lives).
    pub fn td_hob_gpa(&self) -> Gpa {
        self.td_hob_gpa
    }

    /// Plan page `index`.
    pub fn page(&self, index: u64) -> Option<PlannedPage> {
        // Sections are sorted by `first_page`; find the last one starting at or before index.
        let pos = self
            .sections
            .partition_point(|s| s.first_page <= index)
            .checked_sub(1)?;
        let section = self.sections.get(pos)?;
        let within = index - section.first_page;
        if within >= section.pages {
            return None;
        }
        let offset_in_section = within * PAGE_SIZE_4K;
        let source = match section.content {
            Content::Zero => PageSource::Zero,
            Content::TdHob => {
                if offset_in_section < self.td_hob.len() as u64 {
                    PageSource::TdHob {
                        offset: offset_in_section,
                    }
                } else {
                    PageSource::Zero
                }
            }
            Content::Image {
                data_offset,
                raw_len,
            } => {
                let len = raw_len.saturating_sub(offset_in_section).min(PAGE_SIZE_4K);
                if len == 0 {
                    PageSource::Zero
                } else {
                    PageSource::Image {
                        offset: data_offset + offset_in_section,
                        len: len as u32,
                    }
                }
            }
        };
        Some(PlannedPage {
            index,
            gpa: section.gpa.add(offset_in_section),
            section: section.section,
            source,
            extend: section.extend,
        })
    }

    /// All planned pages in order.
    pub fn pages(&self) -> impl Iterator<Item = PlannedPage> + '_ {
        (0..self.page_count).filter_map(|i| self.page(i))
    }

    /// Every SEAMCALL of the build in issue order.
    pub fn operations(&self) -> impl Iterator<Item = BuildOp> + '_ {
        self.pages().flat_map(|page| {
            let extends = if page.extend { MR_EXTENDS_PER_PAGE } else { 0 };
            core::iter::once(BuildOp::PageAdd {
                page: page.index,
                gpa: page.gpa,
            })
            .chain((0..extends).map(move |chunk| BuildOp::MrExtend {
                gpa: page.gpa.add(chunk * MR_EXTEND_CHUNK_SIZE),
            }))
        })
    }

    /// Fills `buf` with the contents of plan page `index`, taken from `image` (the same image
    /// the layout was made from), and returns the page's description. Same as
    /// [`BuildPlan::fill_page_from`] over the slice.
    pub fn fill_page(
        &self,
        index: u64,
        image: &[u8],
        buf: &mut [u8; PAGE_BYTES],
    ) -> Result<PlannedPage, PlanError> {
        self.fill_page_from(index, image, buf)
    }

    /// Fills `buf` with the contents of plan page `index`, read from `image` (the same image
    /// the layout was made from; only the page's own bytes are read), and returns the page's
    /// description.
    pub fn fill_page_from<S: ImageSource + ?Sized>(
        &self,
        index: u64,
        image: &S,
        buf: &mut [u8; PAGE_BYTES],
    ) -> Result<PlannedPage, PlanError> {
        if image.len() != self.image_len {
            return Err(PlanError::ImageMismatch {
                expected: self.image_len,
                found: image.len(),
            });
        }
        let page = self.page(index).ok_or(PlanError::PageOutOfRange {
            index,
            count: self.page_count,
        })?;
        buf.fill(0);
        match page.source {
            PageSource::Zero => {}
            PageSource::Image { offset, len } => {
                // Sections lie inside the image (checked by the parser); clamp anyway.
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let n = image
                    .len()
                    .saturating_sub(start)
                    .min(len as usize)
                    .min(PAGE_BYTES);
                if let Some(dst) = buf.get_mut(..n)
                    && image.read_at(start, dst).is_err()
                {
                    dst.fill(0);
                }
            }
            PageSource::TdHob { offset } => {
                let hob = &self.td_hob;
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(hob.len());
                let end = start.saturating_add(PAGE_BYTES).min(hob.len());
                if let (Some(src), Some(dst)) = (hob.get(start..end), buf.get_mut(..end - start)) {
                    dst.copy_from_slice(src);
                }
            }
        }
        Ok(page)
    }
}
