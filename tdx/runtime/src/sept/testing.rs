//! Minimal backends for exercising and benchmarking the S-EPT manager without a TDX module:
//! a SEAMCALL backend that succeeds at no cost, a private-memory backing with one fixed page
//! per GFN, a bump-allocated S-EPT page pool and vCPU/physical-memory no-ops. They keep no
//! shared state on the fault path, so a benchmark over them measures the manager alone.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use tdx_abi::phys::PhysMemory;
use tdx_abi::seamcall::{ModuleKind, Regs, Seamcall};
use tdx_abi::{Gfn, Hpa, PAGE_SIZE_4K, PageLevel};

use super::{PrivateMemory, SeptPagePool, VcpuControl};

/// A SEAMCALL backend that answers `TDX_SUCCESS` to everything, instantly.
#[derive(Clone, Copy, Default, Debug)]
pub struct NullSeamcall;

impl Seamcall for NullSeamcall {
    #[inline]
    fn seamcall(&self, regs: &mut Regs) {
        regs.rax = 0;
    }
    fn kind(&self) -> ModuleKind {
        ModuleKind::Emulated
    }
    fn hkid_shift(&self) -> u32 {
        46
    }
}

/// A backing where GFN `g` is always backed by the page at `base + g * 4 KiB` (like a
/// guest_memfd whose file offset is the GFN), so 2 MiB-aligned GFN ranges have 2 MiB-aligned
/// extents. Stateless; `release` only counts.
#[derive(Debug)]
pub struct LinearMemory {
    base: u64,
    huge: bool,
    released_4k: AtomicU64,
}

impl LinearMemory {
    /// Pages from `base` (2 MiB aligned); `huge` enables `alloc_2m`.
    pub const fn new(base: Hpa, huge: bool) -> Self {
        LinearMemory {
            base: base.0,
            huge,
            released_4k: AtomicU64::new(0),
        }
    }
    /// 4 KiB frames given back so far.
    pub fn released_4k(&self) -> u64 {
        self.released_4k.load(Ordering::Relaxed)
    }
}

impl PrivateMemory for LinearMemory {
    #[inline]
    fn alloc_4k(&self, gfn: Gfn) -> Option<Hpa> {
        Some(Hpa(self.base + gfn.0 * PAGE_SIZE_4K))
    }
    fn alloc_2m(&self, gfn: Gfn) -> Option<Hpa> {
        self.huge.then(|| Hpa(self.base + gfn.0 * PAGE_SIZE_4K))
    }
    fn release(&self, _gfn: Gfn, _hpa: Hpa, level: PageLevel) {
        self.released_4k
            .fetch_add(level.pages_4k(), Ordering::Relaxed);
    }
}

/// S-EPT pages bump-allocated from a range, with returned pages reused first.
#[derive(Debug)]
pub struct BumpPagePool {
    next: AtomicU64,
    end: u64,
    returned: spin::Mutex<Vec<Hpa>>,
}

impl BumpPagePool {
    /// Pages in `[start, end)`.
    pub const fn new(start: Hpa, end: Hpa) -> Self {
        BumpPagePool {
            next: AtomicU64::new(start.0),
            end: end.0,
            returned: spin::Mutex::new(Vec::new()),
        }
    }
    /// Pages given back and not taken again.
    pub fn returned(&self) -> usize {
        self.returned.lock().len()
    }
}

impl SeptPagePool for BumpPagePool {
    fn take(&self) -> Option<Hpa> {
        if let Some(p) = self.returned.lock().pop() {
            return Some(p);
        }
        let page = self.next.fetch_add(PAGE_SIZE_4K, Ordering::Relaxed);
        (page < self.end).then_some(Hpa(page))
    }
    fn give_back(&self, hpa: Hpa) {
        self.returned.lock().push(hpa);
    }
}

/// vCPU control for a TD without running vCPUs: everything is a no-op that counts kicks.
#[derive(Debug, Default)]
pub struct NoVcpus {
    kicks: AtomicU64,
    blocks: AtomicU64,
}

impl NoVcpus {
    /// Calls of `kick_all_and_wait` so far.
    pub fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Relaxed)
    }
    /// Calls of `block_entry` so far.
    pub fn blocks(&self) -> u64 {
        self.blocks.load(Ordering::Relaxed)
    }
}

impl VcpuControl for NoVcpus {
    fn block_entry(&self) {
        self.blocks.fetch_add(1, Ordering::Relaxed);
    }
    fn kick_all_and_wait(&self) {
        self.kicks.fetch_add(1, Ordering::Relaxed);
    }
    fn allow_entry(&self) {}
}

/// Physical memory that ignores writes and reads zeros (benchmarks).
#[derive(Clone, Copy, Default, Debug)]
pub struct NullPhys;

impl PhysMemory for NullPhys {
    fn read(&self, _hpa: Hpa, buf: &mut [u8]) {
        buf.fill(0);
    }
    fn write(&self, _hpa: Hpa, _data: &[u8]) {}
    fn zero(&self, _hpa: Hpa, _len: u64) {}
}
