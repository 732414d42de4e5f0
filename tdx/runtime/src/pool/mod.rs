//! TD memory pool: the allocator for the reserved host-physical range every TD page comes
//! from (TD private memory, S-EPT pages, TDR/TDCS/TDVPR/TDCX control pages, PAMT arrays and
//! uploaded image storage).
//!
//! # Design
//!
//! The range `[base, base + size)` (4 KiB aligned, given by the appliance or a test) is cut
//! into 2 MiB-aligned *chunks*. Each chunk keeps
//!
//! * a 512-bit bitmap (1 = allocated, or outside the pool for the partial chunks at either end),
//! * a free-page counter,
//! * an owner tag: empty, owned by a single [`MemoryUse`], or *mixed* (a boxed per-page tag
//!   array plus per-use counters, created only when a use must borrow pages from a chunk
//!   another use started).
//!
//! Chunks sit in intrusive index lists by state: *empty whole chunks* (the only source of
//! 2 MiB extents), *empty edge chunks*, *partially used chunks of use U* (one list per use) and
//! *partially used mixed chunks*; full chunks are in no list. A 4 KiB allocation for use U
//! takes, in order: a partial chunk of U, an empty edge chunk, an empty whole chunk, and only
//! then a partial chunk of another use (which becomes mixed). Keeping uses apart means TD
//! private pages freed together re-form whole chunks, so **splitting** (a 2 MiB chunk handing
//! out 4 KiB pages) and **merging** (a chunk whose last page is freed is a 2 MiB extent again;
//! 512 separately allocated pages can also be freed as one extent) fall out of the counters.
//!
//! Why not a binary buddy allocator: TDX only needs 4 KiB and 2 MiB (PAGE.AUG/ACCEPT levels),
//! plus rare contiguous runs; per-chunk bitmaps give O(1) 2 MiB allocation, O(1) 4 KiB
//! allocation (list pop + scan of 8 words), O(1) free, exact per-page double-free detection,
//! and 1 bit of metadata per page (≈ 32 KiB per GiB) instead of per-order free lists.
//! Contiguous runs of N pages ([`MemoryPool::alloc_contiguous`]) are first-fit scans over the
//! bitmaps, O(pool pages / 64) — fine for their callers (PAMT arrays at start-up, image upload).
//!
//! # Accounting
//!
//! [`PoolStats`] is exact: `free + Σ used_by(use) == total` at all times, and per-use counts
//! are exact because every allocated page's use is known (from the chunk tag, or the per-page
//! tag of a mixed chunk). Frees name the use they return; a mismatch is refused
//! ([`PoolError::WrongUse`]) as is freeing a page that is not allocated
//! ([`PoolError::NotAllocated`], which includes double frees). A failing call changes nothing.
//!
//! # Concurrency
//!
//! One `spin::Mutex` around the state, held only for the bitmap/list update (no SEAMCALL, no
//! memory clearing under it). Hot paths that must not contend (vCPU runners) take batches with
//! [`MemoryPool::alloc_4k_batch`] into their own caches ahead of time. The only allocation
//! from the global heap inside the lock is the ~0.5 KiB tag array when a chunk becomes mixed.

#[cfg(test)]
mod tests;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use tdx_abi::{Hpa, PAGE_SIZE_2M, PAGE_SIZE_4K};

/// Pages per 2 MiB chunk.
pub const PAGES_PER_CHUNK: usize = 512;
const WORDS_PER_CHUNK: usize = PAGES_PER_CHUNK / 64;

/// What a pool page is used for.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum MemoryUse {
    /// TD private memory (PAGE.ADD / PAGE.AUG targets).
    TdPrivate,
    /// Secure-EPT table pages (TDH.MEM.SEPT.ADD).
    Sept,
    /// TD control structures: TDR, TDCS, TDVPR, TDCX pages.
    Control,
    /// PAMT arrays handed to the TDX module at initialisation.
    Pamt,
    /// Storage of uploaded images (firmware, kernels).
    ImageStorage,
    /// A TD's virtio disk: its copy of the disk image, written by the guest, kept until the
    /// TD is deleted.
    TdDisk,
}

impl MemoryUse {
    /// Every use, in [`MemoryUse::index`] order.
    pub const ALL: [MemoryUse; 6] = [
        MemoryUse::TdPrivate,
        MemoryUse::Sept,
        MemoryUse::Control,
        MemoryUse::Pamt,
        MemoryUse::ImageStorage,
        MemoryUse::TdDisk,
    ];
    /// Number of uses.
    pub const COUNT: usize = Self::ALL.len();

    /// Dense index 0..[`Self::COUNT`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Name used in metrics.
    pub const fn name(self) -> &'static str {
        match self {
            MemoryUse::TdPrivate => "td_private",
            MemoryUse::Sept => "sept",
            MemoryUse::Control => "control",
            MemoryUse::Pamt => "pamt",
            MemoryUse::ImageStorage => "image_storage",
            MemoryUse::TdDisk => "td_disk",
        }
    }
}

/// Why a pool operation failed. A failed operation leaves the pool unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum PoolError {
    /// The range given to [`MemoryPool::new`] is empty, unaligned or wraps.
    #[error("invalid pool range {base}+{size:#x}")]
    InvalidRange {
        /// Base asked for.
        base: Hpa,
        /// Size asked for.
        size: u64,
    },
    /// An allocation of zero pages.
    #[error("zero-page allocation")]
    ZeroPages,
    /// Not enough free memory of the requested shape.
    #[error("out of memory: {pages} contiguous pages requested")]
    OutOfMemory {
        /// Pages requested.
        pages: u64,
    },
    /// The address is not aligned as the operation requires.
    #[error("{hpa} is not aligned for this operation")]
    Unaligned {
        /// Address given.
        hpa: Hpa,
    },
    /// The range is not inside the pool.
    #[error("{hpa}+{pages} pages is outside the pool")]
    OutOfRange {
        /// Address given.
        hpa: Hpa,
        /// Pages given.
        pages: u64,
    },
    /// A page being freed is not allocated (double free or never allocated).
    #[error("{hpa} is not allocated (double free?)")]
    NotAllocated {
        /// First offending page.
        hpa: Hpa,
    },
    /// A page being freed belongs to another use.
    #[error("{hpa} is allocated for {actual:?}, not {expected:?}")]
    WrongUse {
        /// First offending page.
        hpa: Hpa,
        /// Use the caller named.
        expected: MemoryUse,
        /// Use the page has.
        actual: MemoryUse,
    },
}

/// A snapshot of the pool's accounting.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PoolStats {
    /// 4 KiB pages the pool manages.
    pub total_pages: u64,
    /// Free 4 KiB pages.
    pub free_pages: u64,
    /// Allocated pages per use, indexed by [`MemoryUse::index`].
    pub used_pages: [u64; MemoryUse::COUNT],
    /// Whole free 2 MiB extents available right now.
    pub free_extents_2m: u64,
    /// Chunks currently shared by more than one use.
    pub mixed_chunks: u64,
}

impl PoolStats {
    /// Pages allocated for `use_`.
    pub fn used_by(&self, use_: MemoryUse) -> u64 {
        self.used_pages[use_.index()]
    }
    /// All allocated pages.
    pub fn used_total(&self) -> u64 {
        self.used_pages.iter().sum()
    }
}

/// Per-page tags of a chunk shared by several uses.
struct MixedTags {
    /// `FREE_TAG` or a [`MemoryUse::index`].
    tags: [u8; PAGES_PER_CHUNK],
    /// Allocated pages per use in this chunk.
    counts: [u16; MemoryUse::COUNT],
}

const FREE_TAG: u8 = 0xFF;

enum Owner {
    Empty,
    Single(MemoryUse),
    Mixed(Box<MixedTags>),
}

/// Which state list a chunk is in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ListId {
    None,
    EmptyWhole,
    EmptyEdge,
    Partial(MemoryUse),
    PartialMixed,
}

struct Chunk {
    /// Bit set: allocated or outside the pool.
    bitmap: [u64; WORDS_PER_CHUNK],
    /// Pages `[lo, hi)` of the chunk are inside the pool (only edge chunks have others).
    lo: u16,
    hi: u16,
    usable: u16,
    free: u16,
    owner: Owner,
    list: ListId,
    pos: u32,
}

impl Chunk {
    fn in_pool(&self, page: usize) -> bool {
        usize::from(self.lo) <= page && page < usize::from(self.hi)
    }
    fn is_allocated(&self, page: usize) -> bool {
        self.bitmap[page / 64] & (1 << (page % 64)) != 0
    }
    fn set(&mut self, page: usize, allocated: bool) {
        if allocated {
            self.bitmap[page / 64] |= 1 << (page % 64);
        } else {
            self.bitmap[page / 64] &= !(1 << (page % 64));
        }
    }
    fn first_free(&self) -> Option<usize> {
        self.bitmap
            .iter()
            .enumerate()
            .find(|(_, w)| **w != u64::MAX)
            .map(|(i, w)| i * 64 + (!w).trailing_zeros() as usize)
    }
    /// Use of an allocated page.
    fn use_of(&self, page: usize) -> Option<MemoryUse> {
        match &self.owner {
            Owner::Empty => None,
            Owner::Single(u) => Some(*u),
            Owner::Mixed(m) => MemoryUse::ALL.get(usize::from(m.tags[page])).copied(),
        }
    }
    fn wanted_list(&self) -> ListId {
        if self.free == 0 {
            return ListId::None;
        }
        match &self.owner {
            Owner::Empty if usize::from(self.usable) == PAGES_PER_CHUNK => ListId::EmptyWhole,
            Owner::Empty => ListId::EmptyEdge,
            Owner::Single(u) => ListId::Partial(*u),
            Owner::Mixed(_) => ListId::PartialMixed,
        }
    }
}

struct Lists {
    empty_whole: Vec<u32>,
    empty_edge: Vec<u32>,
    partial: [Vec<u32>; MemoryUse::COUNT],
    partial_mixed: Vec<u32>,
}

impl Lists {
    #[cfg(test)]
    fn get_ref(&self, id: ListId) -> Option<&Vec<u32>> {
        match id {
            ListId::None => None,
            ListId::EmptyWhole => Some(&self.empty_whole),
            ListId::EmptyEdge => Some(&self.empty_edge),
            ListId::Partial(u) => Some(&self.partial[u.index()]),
            ListId::PartialMixed => Some(&self.partial_mixed),
        }
    }

    fn get(&mut self, id: ListId) -> Option<&mut Vec<u32>> {
        match id {
            ListId::None => None,
            ListId::EmptyWhole => Some(&mut self.empty_whole),
            ListId::EmptyEdge => Some(&mut self.empty_edge),
            ListId::Partial(u) => Some(&mut self.partial[u.index()]),
            ListId::PartialMixed => Some(&mut self.partial_mixed),
        }
    }
}

struct PoolState {
    chunks: Vec<Chunk>,
    lists: Lists,
    free_pages: u64,
    used: [u64; MemoryUse::COUNT],
    mixed_chunks: u64,
}

/// The TD memory pool. See the module docs.
pub struct MemoryPool {
    base: Hpa,
    size: u64,
    /// `base` rounded down to 2 MiB: chunk 0 starts here.
    chunk_base: u64,
    total_pages: u64,
    state: spin::Mutex<PoolState>,
}

impl fmt::Debug for MemoryPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPool")
            .field("base", &self.base)
            .field("size", &self.size)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A page location: chunk index and page within the chunk.
#[derive(Clone, Copy)]
struct Loc {
    chunk: usize,
    page: usize,
}

impl PoolState {
    /// Moves chunk `c` to the list its state calls for.
    fn relist(&mut self, c: usize) {
        let Some(chunk) = self.chunks.get(c) else {
            return;
        };
        let (from, pos, to) = (chunk.list, chunk.pos as usize, chunk.wanted_list());
        if from == to {
            return;
        }
        if let Some(list) = self.lists.get(from)
            && pos < list.len()
        {
            list.swap_remove(pos);
            if let Some(&moved) = list.get(pos)
                && let Some(m) = self.chunks.get_mut(moved as usize)
            {
                m.pos = pos as u32;
            }
        }
        let new_pos = match self.lists.get(to) {
            Some(list) => {
                list.push(c as u32);
                list.len() - 1
            }
            None => 0,
        };
        if let Some(chunk) = self.chunks.get_mut(c) {
            chunk.list = to;
            chunk.pos = new_pos as u32;
        }
    }

    /// Marks a free page allocated for `use_` (caller checked it is free and in the pool).
    fn take(&mut self, loc: Loc, use_: MemoryUse) {
        let Some(chunk) = self.chunks.get_mut(loc.chunk) else {
            return;
        };
        // Another use borrowing a page from a single-owner chunk: tag every page.
        if let Owner::Single(other) = chunk.owner
            && other != use_
        {
            let mut mixed = Box::new(MixedTags {
                tags: [FREE_TAG; PAGES_PER_CHUNK],
                counts: [0; MemoryUse::COUNT],
            });
            for page in 0..PAGES_PER_CHUNK {
                if chunk.in_pool(page) && chunk.is_allocated(page) {
                    mixed.tags[page] = other.index() as u8;
                }
            }
            mixed.counts[other.index()] = chunk.usable - chunk.free;
            chunk.owner = Owner::Mixed(mixed);
            self.mixed_chunks += 1;
        }
        chunk.set(loc.page, true);
        chunk.free -= 1;
        match &mut chunk.owner {
            Owner::Empty => chunk.owner = Owner::Single(use_),
            Owner::Single(_) => {}
            Owner::Mixed(m) => {
                m.tags[loc.page] = use_.index() as u8;
                m.counts[use_.index()] += 1;
            }
        }
        self.free_pages -= 1;
        self.used[use_.index()] += 1;
    }

    /// Frees an allocated page of `use_` (caller checked both).
    fn give_back(&mut self, loc: Loc, use_: MemoryUse) {
        let Some(chunk) = self.chunks.get_mut(loc.chunk) else {
            return;
        };
        chunk.set(loc.page, false);
        chunk.free += 1;
        if chunk.free == chunk.usable {
            if matches!(chunk.owner, Owner::Mixed(_)) {
                self.mixed_chunks -= 1;
            }
            chunk.owner = Owner::Empty;
        } else if let Owner::Mixed(m) = &mut chunk.owner {
            m.tags[loc.page] = FREE_TAG;
            m.counts[use_.index()] -= 1;
            // Back to a single owner when only one use is left.
            let mut users = m.counts.iter().enumerate().filter(|(_, n)| **n > 0);
            if let (Some((only, _)), None) = (users.next(), users.next())
                && let Some(&u) = MemoryUse::ALL.get(only)
            {
                chunk.owner = Owner::Single(u);
                self.mixed_chunks -= 1;
            }
        }
        self.free_pages += 1;
        self.used[use_.index()] -= 1;
    }
}

impl MemoryPool {
    /// A pool over `[base, base + size)`; both 4 KiB aligned, `size > 0`.
    pub fn new(base: Hpa, size: u64) -> Result<Self, PoolError> {
        let invalid = PoolError::InvalidRange { base, size };
        let end = base.0.checked_add(size).ok_or(invalid)?;
        if size == 0 || !base.0.is_multiple_of(PAGE_SIZE_4K) || !size.is_multiple_of(PAGE_SIZE_4K) {
            return Err(invalid);
        }
        let chunk_base = base.0 & !(PAGE_SIZE_2M - 1);
        let chunk_count = (end - chunk_base).div_ceil(PAGE_SIZE_2M);
        let chunk_count = u32::try_from(chunk_count).map_err(|_| invalid)? as usize;
        let mut chunks = Vec::with_capacity(chunk_count);
        for c in 0..chunk_count {
            let start = chunk_base + c as u64 * PAGE_SIZE_2M;
            let mut chunk = Chunk {
                bitmap: [0; WORDS_PER_CHUNK],
                lo: PAGES_PER_CHUNK as u16,
                hi: 0,
                usable: 0,
                free: 0,
                owner: Owner::Empty,
                list: ListId::None,
                pos: 0,
            };
            for page in 0..PAGES_PER_CHUNK {
                let addr = start + (page as u64) * PAGE_SIZE_4K;
                if addr < base.0 || addr >= end {
                    chunk.set(page, true);
                } else {
                    chunk.usable += 1;
                    chunk.lo = chunk.lo.min(page as u16);
                    chunk.hi = chunk.hi.max(page as u16 + 1);
                }
            }
            chunk.free = chunk.usable;
            chunks.push(chunk);
        }
        let mut state = PoolState {
            chunks,
            lists: Lists {
                empty_whole: Vec::new(),
                empty_edge: Vec::new(),
                partial: Default::default(),
                partial_mixed: Vec::new(),
            },
            free_pages: size / PAGE_SIZE_4K,
            used: [0; MemoryUse::COUNT],
            mixed_chunks: 0,
        };
        // Push in reverse so low addresses are handed out first (lists pop from the end).
        for c in (0..chunk_count).rev() {
            state.relist(c);
        }
        Ok(Self {
            base,
            size,
            chunk_base,
            total_pages: size / PAGE_SIZE_4K,
            state: spin::Mutex::new(state),
        })
    }

    /// First byte of the pool.
    pub fn base(&self) -> Hpa {
        self.base
    }

    /// Size of the pool in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Accounting snapshot.
    pub fn stats(&self) -> PoolStats {
        let state = self.state.lock();
        PoolStats {
            total_pages: self.total_pages,
            free_pages: state.free_pages,
            used_pages: state.used,
            free_extents_2m: state.lists.empty_whole.len() as u64,
            mixed_chunks: state.mixed_chunks,
        }
    }

    fn hpa_of(&self, loc: Loc) -> Hpa {
        Hpa(self.chunk_base + loc.chunk as u64 * PAGE_SIZE_2M + loc.page as u64 * PAGE_SIZE_4K)
    }

    /// Location of the 4 KiB page at `hpa`, if it is 4 KiB aligned and inside the pool.
    fn loc_of(&self, hpa: Hpa) -> Option<Loc> {
        if !hpa.0.is_multiple_of(PAGE_SIZE_4K)
            || hpa.0 < self.base.0
            || hpa.0 - self.base.0 >= self.size
        {
            return None;
        }
        let offset = hpa.0 - self.chunk_base;
        Some(Loc {
            chunk: (offset / PAGE_SIZE_2M) as usize,
            page: ((offset % PAGE_SIZE_2M) / PAGE_SIZE_4K) as usize,
        })
    }

    /// Checks `[hpa, hpa + pages·4K)` lies in the pool and returns its first location.
    fn check_range(&self, hpa: Hpa, pages: u64) -> Result<Loc, PoolError> {
        if pages == 0 {
            return Err(PoolError::ZeroPages);
        }
        if !hpa.0.is_multiple_of(PAGE_SIZE_4K) {
            return Err(PoolError::Unaligned { hpa });
        }
        let out = PoolError::OutOfRange { hpa, pages };
        let bytes = pages.checked_mul(PAGE_SIZE_4K).ok_or(out)?;
        let end = hpa.0.checked_add(bytes).ok_or(out)?;
        if hpa.0 < self.base.0 || end > self.base.0 + self.size {
            return Err(out);
        }
        self.loc_of(hpa).ok_or(out)
    }

    /// Whether the page at `hpa` is currently allocated (false outside the pool).
    pub fn is_allocated(&self, hpa: Hpa) -> bool {
        let Some(loc) = self.loc_of(hpa) else {
            return false;
        };
        let state = self.state.lock();
        state
            .chunks
            .get(loc.chunk)
            .is_some_and(|c| c.is_allocated(loc.page))
    }

    /// The use of the allocated page at `hpa`.
    pub fn use_of(&self, hpa: Hpa) -> Option<MemoryUse> {
        let loc = self.loc_of(hpa)?;
        let state = self.state.lock();
        let chunk = state.chunks.get(loc.chunk)?;
        if chunk.is_allocated(loc.page) {
            chunk.use_of(loc.page)
        } else {
            None
        }
    }

    /// Allocates one 4 KiB page.
    pub fn alloc_4k(&self, use_: MemoryUse) -> Result<Hpa, PoolError> {
        let mut state = self.state.lock();
        self.alloc_4k_locked(&mut state, use_)
    }

    fn alloc_4k_locked(&self, state: &mut PoolState, use_: MemoryUse) -> Result<Hpa, PoolError> {
        let lists = &state.lists;
        let candidate = lists.partial[use_.index()]
            .last()
            .or_else(|| lists.empty_edge.last())
            .or_else(|| lists.empty_whole.last())
            .or_else(|| lists.partial_mixed.last())
            .or_else(|| lists.partial.iter().find_map(|l| l.last()))
            .copied();
        let c = candidate.ok_or(PoolError::OutOfMemory { pages: 1 })? as usize;
        let page = state
            .chunks
            .get(c)
            .and_then(Chunk::first_free)
            .ok_or(PoolError::OutOfMemory { pages: 1 })?;
        let loc = Loc { chunk: c, page };
        state.take(loc, use_);
        state.relist(c);
        Ok(self.hpa_of(loc))
    }

    /// Allocates `count` 4 KiB pages (not necessarily contiguous) under one lock acquisition
    /// and appends them to `out`; all or nothing. For filling per-CPU caches.
    pub fn alloc_4k_batch(
        &self,
        use_: MemoryUse,
        count: usize,
        out: &mut Vec<Hpa>,
    ) -> Result<(), PoolError> {
        let mut state = self.state.lock();
        if (count as u64) > state.free_pages {
            return Err(PoolError::OutOfMemory {
                pages: count as u64,
            });
        }
        out.reserve(count);
        for _ in 0..count {
            // Cannot fail: enough free pages exist and any free page is eligible.
            let hpa = self.alloc_4k_locked(&mut state, use_)?;
            out.push(hpa);
        }
        Ok(())
    }

    /// Allocates a 2 MiB-aligned 2 MiB extent (a whole free chunk).
    pub fn alloc_2m(&self, use_: MemoryUse) -> Result<Hpa, PoolError> {
        let mut state = self.state.lock();
        let c = *state
            .lists
            .empty_whole
            .last()
            .ok_or(PoolError::OutOfMemory {
                pages: PAGES_PER_CHUNK as u64,
            })? as usize;
        for page in 0..PAGES_PER_CHUNK {
            state.take(Loc { chunk: c, page }, use_);
        }
        state.relist(c);
        Ok(self.hpa_of(Loc { chunk: c, page: 0 }))
    }

    /// Allocates `pages` physically contiguous 4 KiB pages (first fit, lowest address),
    /// preferring memory not shared with other uses.
    pub fn alloc_contiguous(&self, pages: u64, use_: MemoryUse) -> Result<Hpa, PoolError> {
        if pages == 0 {
            return Err(PoolError::ZeroPages);
        }
        let mut state = self.state.lock();
        if pages > state.free_pages {
            return Err(PoolError::OutOfMemory { pages });
        }
        let start = find_run(&state.chunks, pages, Some(use_))
            .or_else(|| find_run(&state.chunks, pages, None))
            .ok_or(PoolError::OutOfMemory { pages })?;
        let mut last_chunk = usize::MAX;
        for i in 0..pages {
            let global = start + i;
            let loc = Loc {
                chunk: (global / PAGES_PER_CHUNK as u64) as usize,
                page: (global % PAGES_PER_CHUNK as u64) as usize,
            };
            state.take(loc, use_);
            if loc.chunk != last_chunk {
                if last_chunk != usize::MAX {
                    state.relist(last_chunk);
                }
                last_chunk = loc.chunk;
            }
        }
        state.relist(last_chunk);
        let start_loc = Loc {
            chunk: (start / PAGES_PER_CHUNK as u64) as usize,
            page: (start % PAGES_PER_CHUNK as u64) as usize,
        };
        Ok(self.hpa_of(start_loc))
    }

    /// Frees one 4 KiB page (also one page out of a 2 MiB extent or a run: that splits it).
    pub fn free_4k(&self, hpa: Hpa, use_: MemoryUse) -> Result<(), PoolError> {
        self.free_contiguous(hpa, 1, use_)
    }

    /// Frees a 2 MiB extent: `hpa` must be 2 MiB aligned and all 512 pages allocated for
    /// `use_` (however they were allocated — freeing 512 single pages this way merges them).
    pub fn free_2m(&self, hpa: Hpa, use_: MemoryUse) -> Result<(), PoolError> {
        if !hpa.0.is_multiple_of(PAGE_SIZE_2M) {
            return Err(PoolError::Unaligned { hpa });
        }
        self.free_contiguous(hpa, PAGES_PER_CHUNK as u64, use_)
    }

    /// Frees `pages` contiguous pages starting at `hpa`, all allocated for `use_`. Checked
    /// completely before anything changes.
    pub fn free_contiguous(&self, hpa: Hpa, pages: u64, use_: MemoryUse) -> Result<(), PoolError> {
        let first = self.check_range(hpa, pages)?;
        let first_global = first.chunk as u64 * PAGES_PER_CHUNK as u64 + first.page as u64;
        let loc_at = |i: u64| {
            let g = first_global + i;
            Loc {
                chunk: (g / PAGES_PER_CHUNK as u64) as usize,
                page: (g % PAGES_PER_CHUNK as u64) as usize,
            }
        };
        let mut state = self.state.lock();
        for i in 0..pages {
            let loc = loc_at(i);
            let page_hpa = self.hpa_of(loc);
            let chunk = state
                .chunks
                .get(loc.chunk)
                .ok_or(PoolError::OutOfRange { hpa, pages })?;
            if !chunk.is_allocated(loc.page) {
                return Err(PoolError::NotAllocated { hpa: page_hpa });
            }
            match chunk.use_of(loc.page) {
                Some(actual) if actual == use_ => {}
                Some(actual) => {
                    return Err(PoolError::WrongUse {
                        hpa: page_hpa,
                        expected: use_,
                        actual,
                    });
                }
                None => return Err(PoolError::NotAllocated { hpa: page_hpa }),
            }
        }
        let mut last_chunk = usize::MAX;
        for i in 0..pages {
            let loc = loc_at(i);
            state.give_back(loc, use_);
            if loc.chunk != last_chunk {
                if last_chunk != usize::MAX {
                    state.relist(last_chunk);
                }
                last_chunk = loc.chunk;
            }
        }
        state.relist(last_chunk);
        Ok(())
    }

    /// Recomputes every counter and list from the bitmaps and tags and compares (tests).
    #[cfg(test)]
    fn audit(&self) -> Result<(), alloc::string::String> {
        use alloc::format;
        let state = self.state.lock();
        let mut free = 0u64;
        let mut used = [0u64; MemoryUse::COUNT];
        let mut mixed = 0u64;
        for (c, chunk) in state.chunks.iter().enumerate() {
            let mut chunk_free = 0u16;
            let mut chunk_used = [0u16; MemoryUse::COUNT];
            for page in 0..PAGES_PER_CHUNK {
                let loc = Loc { chunk: c, page };
                let in_pool = self.loc_of(self.hpa_of(loc)).is_some();
                if in_pool != chunk.in_pool(page) {
                    return Err(format!("chunk {c} page {page} pool bounds wrong"));
                }
                if !in_pool {
                    if !chunk.is_allocated(page) {
                        return Err(format!("chunk {c} page {page} outside pool but free"));
                    }
                    continue;
                }
                if chunk.is_allocated(page) {
                    let u = chunk
                        .use_of(page)
                        .ok_or(format!("chunk {c} page {page} allocated without use"))?;
                    chunk_used[u.index()] += 1;
                } else {
                    chunk_free += 1;
                    if let Owner::Mixed(m) = &chunk.owner
                        && m.tags[page] != FREE_TAG
                    {
                        return Err(format!("chunk {c} page {page} free but tagged"));
                    }
                }
            }
            if chunk_free != chunk.free {
                return Err(format!("chunk {c} free {} != {chunk_free}", chunk.free));
            }
            match &chunk.owner {
                Owner::Empty if chunk_free != chunk.usable => {
                    return Err(format!("chunk {c} empty owner but pages allocated"));
                }
                Owner::Single(_) | Owner::Mixed(_) if chunk_free == chunk.usable => {
                    return Err(format!("chunk {c} owned but empty"));
                }
                Owner::Mixed(m) => {
                    mixed += 1;
                    if m.counts != chunk_used {
                        return Err(format!("chunk {c} mixed counts wrong"));
                    }
                    if chunk_used.iter().filter(|n| **n > 0).count() < 2 {
                        return Err(format!("chunk {c} mixed with < 2 users"));
                    }
                }
                _ => {}
            }
            if chunk.list != chunk.wanted_list() {
                return Err(format!("chunk {c} in list {:?}", chunk.list));
            }
            if let Some(list) = state.lists.get_ref(chunk.list)
                && list.get(chunk.pos as usize) != Some(&(c as u32))
            {
                return Err(format!("chunk {c} list position wrong"));
            }
            free += u64::from(chunk_free);
            for (total, n) in used.iter_mut().zip(chunk_used) {
                *total += u64::from(n);
            }
        }
        if free != state.free_pages || used != state.used || mixed != state.mixed_chunks {
            return Err(format!(
                "totals: free {free} vs {}, used {used:?} vs {:?}, mixed {mixed} vs {}",
                state.free_pages, state.used, state.mixed_chunks
            ));
        }
        if free + used.iter().sum::<u64>() != self.total_pages {
            return Err("free + used != total".into());
        }
        let listed = state.lists.empty_whole.len()
            + state.lists.empty_edge.len()
            + state.lists.partial.iter().map(Vec::len).sum::<usize>()
            + state.lists.partial_mixed.len();
        let with_free = state.chunks.iter().filter(|c| c.free > 0).count();
        if listed != with_free {
            return Err(format!(
                "{listed} listed chunks, {with_free} with free pages"
            ));
        }
        Ok(())
    }
}

/// First-fit search for `pages` free pages in a row, returned as a global page index
/// (chunk · 512 + page). With `only_for = Some(u)`, pages in chunks owned by another use or
/// mixed are not considered.
fn find_run(chunks: &[Chunk], pages: u64, only_for: Option<MemoryUse>) -> Option<u64> {
    let eligible = |chunk: &Chunk| match (&chunk.owner, only_for) {
        (_, None) | (Owner::Empty, _) => true,
        (Owner::Single(u), Some(want)) => *u == want,
        (Owner::Mixed(_), Some(_)) => false,
    };
    let mut run_start = 0u64;
    let mut run_len = 0u64;
    for (c, chunk) in chunks.iter().enumerate() {
        let chunk_first = c as u64 * PAGES_PER_CHUNK as u64;
        if !eligible(chunk) || chunk.free == 0 {
            run_len = 0;
            continue;
        }
        for (w, &word) in chunk.bitmap.iter().enumerate() {
            if word == u64::MAX {
                run_len = 0;
                continue;
            }
            if word == 0 {
                if run_len == 0 {
                    run_start = chunk_first + (w * 64) as u64;
                }
                run_len += 64;
                if run_len >= pages {
                    return Some(run_start);
                }
                continue;
            }
            for bit in 0..64 {
                if word & (1 << bit) != 0 {
                    run_len = 0;
                } else {
                    if run_len == 0 {
                        run_start = chunk_first + (w * 64 + bit) as u64;
                    }
                    run_len += 1;
                    if run_len >= pages {
                        return Some(run_start);
                    }
                }
            }
        }
    }
    None
}
