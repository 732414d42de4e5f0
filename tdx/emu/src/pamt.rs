//! The emulated PAMT: one entry per 4 KiB page of the physical range the module was given
//! (TDX module 1.5 `pamt_manager.h`).
//!
//! The real PAMT is a three-level structure (1G, 2M, 4K arrays) living in host memory the
//! VMM hands over in TDH.SYS.CONFIG. The software module validates those arrays exactly as the
//! real one does (alignment, size, inside CMRs, no overlap) and marks their pages reserved, but
//! keeps the entries themselves in its own heap: one entry per 4 KiB page, created lazily in
//! 2 MiB chunks so a large range costs nothing until it is used. A page mapped at 2 MiB or
//! 1 GiB has every one of its 4 KiB entries set to the same owner/type with the large size, and
//! operations on such a page lock every entry it covers, which gives the same exclusion as the
//! real module's lock on the large entry.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use super::lock::{LockMode, Sharex, SharexGuard};
use tdx_abi::pamt::{PageType, PamtPageSize};
use tdx_abi::{Hpa, OperandId, TdxStatus};

const CHUNK_PAGES: usize = 512;

/// One PAMT entry.
#[derive(Default, Debug)]
pub struct PamtEntry {
    /// The page's sharex lock.
    pub lock: Sharex,
    meta: AtomicU64,
    /// TLB epoch stored by TDH.MEM.RANGE.BLOCK.
    pub bepoch: AtomicU64,
}

/// Decoded type / size / owner of a PAMT entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PamtMeta {
    /// Page type.
    pub page_type: PageType,
    /// Size the page is tracked at.
    pub size: PamtPageSize,
    /// Owner TDR (zero for free pages).
    pub owner: Hpa,
}

impl PamtMeta {
    /// A free page.
    pub const FREE: PamtMeta = PamtMeta {
        page_type: PageType::Nda,
        size: PamtPageSize::S4K,
        owner: Hpa(0),
    };

    /// A page of type `page_type`, tracked at `size`, owned by the TD whose TDR is at `tdr`.
    pub const fn owned(page_type: PageType, size: PamtPageSize, tdr: u64) -> PamtMeta {
        PamtMeta {
            page_type,
            size,
            owner: Hpa(tdr),
        }
    }

    fn encode(self) -> u64 {
        self.page_type.raw() | (self.size.raw() << 8) | (self.owner.0 & 0x000F_FFFF_FFFF_F000)
    }

    fn decode(raw: u64) -> PamtMeta {
        PamtMeta {
            page_type: PageType::from_raw(raw & 0xFF).unwrap_or(PageType::Rsvd),
            size: PamtPageSize::from_raw((raw >> 8) & 3).unwrap_or(PamtPageSize::S4K),
            owner: Hpa(raw & 0x000F_FFFF_FFFF_F000),
        }
    }
}

impl PamtEntry {
    /// Current metadata.
    pub fn meta(&self) -> PamtMeta {
        PamtMeta::decode(self.meta.load(Ordering::Acquire))
    }
    /// Replaces the metadata (caller holds the entry lock exclusively).
    pub fn set_meta(&self, meta: PamtMeta) {
        self.meta.store(meta.encode(), Ordering::Release);
    }
}

/// A configured TDMR as the PAMT sees it.
#[derive(Clone, Debug)]
pub struct TdmrRange {
    /// Base HPA (1 GiB aligned).
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Reserved areas as absolute `(start, size)`.
    pub reserved: Vec<(u64, u64)>,
}

/// The emulated PAMT over `[base, base + size)`.
pub struct Pamt {
    base: u64,
    size: u64,
    chunks: Vec<spin::Once<Box<[PamtEntry]>>>,
    tdmrs: spin::Once<Vec<TdmrRange>>,
}

impl Pamt {
    /// A PAMT for the physical range `[base, base + size)` (both 2 MiB aligned).
    pub fn new(base: u64, size: u64) -> Pamt {
        let nchunks = (size / (CHUNK_PAGES as u64 * 4096)) as usize;
        let mut chunks = Vec::with_capacity(nchunks);
        chunks.resize_with(nchunks, spin::Once::new);
        Pamt {
            base,
            size,
            chunks,
            tdmrs: spin::Once::new(),
        }
    }

    /// Records the TDMRs (TDH.SYS.CONFIG). Only the first call has an effect.
    pub fn configure(&self, tdmrs: Vec<TdmrRange>) {
        self.tdmrs.call_once(|| tdmrs);
    }

    /// The configured TDMRs (empty before TDH.SYS.CONFIG).
    pub fn tdmrs(&self) -> &[TdmrRange] {
        self.tdmrs.get().map(|v| v.as_slice()).unwrap_or(&[])
    }

    /// Whether `[hpa, hpa+len)` lies inside the module's physical range.
    pub fn in_range(&self, hpa: u64, len: u64) -> bool {
        hpa >= self.base
            && len <= self.size
            && hpa
                .checked_add(len)
                .is_some_and(|end| end <= self.base + self.size)
    }

    fn reserved(&self, hpa: u64) -> bool {
        self.tdmrs().iter().any(|t| {
            t.reserved
                .iter()
                .any(|&(start, size)| hpa >= start && hpa - start < size)
        })
    }

    fn in_tdmr(&self, hpa: u64) -> bool {
        self.tdmrs()
            .iter()
            .any(|t| hpa >= t.base && hpa - t.base < t.size)
    }

    /// The entry for the 4 KiB page containing `hpa`, if the page is covered by a TDMR and
    /// lies inside the module's range.
    pub fn entry(&self, hpa: u64) -> Option<&PamtEntry> {
        if !self.in_range(hpa, 1) || !self.in_tdmr(hpa) {
            return None;
        }
        let page = ((hpa - self.base) >> 12) as usize;
        let chunk = self.chunks.get(page / CHUNK_PAGES)?;
        let entries = chunk.call_once(|| {
            let first = self.base + ((page / CHUNK_PAGES) * CHUNK_PAGES) as u64 * 4096;
            (0..CHUNK_PAGES)
                .map(|i| {
                    let e = PamtEntry::default();
                    if self.reserved(first + i as u64 * 4096) {
                        e.set_meta(PamtMeta {
                            page_type: PageType::Rsvd,
                            ..PamtMeta::FREE
                        });
                    }
                    e
                })
                .collect()
        });
        entries.get(page % CHUNK_PAGES)
    }

    /// Checks an explicit page operand (`check_and_lock_explicit_4k_private_hpa` and its
    /// large-page variant): alignment to `size`, no HKID bits, inside a TDMR; then locks every
    /// 4 KiB entry of the page in `mode`. Errors carry `operand`.
    pub fn lock_explicit(
        &self,
        raw: u64,
        size: PamtPageSize,
        hkid_shift: u32,
        mode: LockMode,
        operand: OperandId,
    ) -> Result<PageLock<'_>, TdxStatus> {
        let align = size.pages_4k() * 4096;
        if raw & (align - 1) != 0 || hkid_shift < 64 && raw >> hkid_shift != 0 {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(operand));
        }
        self.lock_pages(raw, size.pages_4k(), mode)
            .map_err(|e| e.with_operand(operand))
    }

    /// Locks `pages` consecutive 4 KiB entries starting at `hpa` (already validated), or
    /// returns `OPERAND_ADDR_RANGE_ERROR` / `OPERAND_BUSY` (without operand ID).
    pub fn lock_pages(
        &self,
        hpa: u64,
        pages: u64,
        mode: LockMode,
    ) -> Result<PageLock<'_>, TdxStatus> {
        let mut entries = Vec::with_capacity(pages as usize);
        let mut guards = Vec::with_capacity(pages as usize);
        for i in 0..pages {
            let e = self
                .entry(hpa + i * 4096)
                .ok_or(TdxStatus::OPERAND_ADDR_RANGE_ERROR)?;
            let g = e.lock.try_lock(mode).ok_or(TdxStatus::OPERAND_BUSY)?;
            entries.push(e);
            guards.push(g);
        }
        Ok(PageLock {
            hpa: Hpa(hpa),
            entries,
            _guards: guards,
        })
    }

    /// Every entry's metadata in the range `[base, base+size)` of the module, for invariant
    /// checks (only materialized chunks; untouched chunks are all free).
    pub fn snapshot(&self) -> Vec<(Hpa, PamtMeta)> {
        let mut out = Vec::new();
        for (ci, chunk) in self.chunks.iter().enumerate() {
            if let Some(entries) = chunk.get() {
                for (i, e) in entries.iter().enumerate() {
                    let hpa = self.base + ((ci * CHUNK_PAGES + i) as u64) * 4096;
                    out.push((Hpa(hpa), e.meta()));
                }
            }
        }
        out
    }
}

/// Locked PAMT entries of one page (every 4 KiB entry it covers).
pub struct PageLock<'a> {
    /// First byte of the page.
    pub hpa: Hpa,
    entries: Vec<&'a PamtEntry>,
    _guards: Vec<SharexGuard<'a>>,
}

impl<'a> PageLock<'a> {
    /// The head entry.
    pub fn head(&self) -> Option<&'a PamtEntry> {
        self.entries.first().copied()
    }
    /// Metadata of the head entry (free if somehow empty).
    pub fn meta(&self) -> PamtMeta {
        self.head().map(|e| e.meta()).unwrap_or(PamtMeta::FREE)
    }
    /// Whether every covered entry is free.
    pub fn all_free(&self) -> bool {
        self.entries
            .iter()
            .all(|e| e.meta().page_type == PageType::Nda)
    }
    /// Sets every covered entry.
    pub fn set_all(&self, meta: PamtMeta) {
        for e in &self.entries {
            e.set_meta(meta);
        }
    }
    /// Sets BEPOCH on the head entry.
    pub fn set_bepoch(&self, epoch: u64) {
        if let Some(h) = self.head() {
            h.bepoch.store(epoch, Ordering::Release);
        }
    }
}
