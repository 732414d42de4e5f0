//! Adapters from the TD memory pool to the S-EPT manager's traits.
//!
//! * [`TdBacking`] is our guest_memfd ([`PrivateMemory`]): all of a TD's private memory is
//!   allocated from the pool in 2 MiB extents when the TD is created (like a fully
//!   fallocated guest_memfd), and GFN `g` of a backed range is always the same frame. So the
//!   fault path never allocates, a TD can never run out of memory after creation, and every
//!   2 MiB-aligned GFN range has a 2 MiB extent for a huge mapping. A per-GFN "shared" bit
//!   (one bit per 4 KiB, preallocated) records MapGPA conversions: a shared GFN has no
//!   private page, so a racing fault cannot map it again (sept docs, `unmap_private`).
//! * [`SeptPageCache`] ([`SeptPagePool`]): S-EPT table pages preallocated per TD. The
//!   number is an exact upper bound — one table per distinct 2 MiB, 1 GiB (and 512 GiB, 256
//!   TiB) region the TD's private GPAs touch — so runner CPUs never allocate and never run
//!   dry.
//! * [`VcpuGate`] ([`VcpuControl`]): keeps a TD's vCPUs out of the TD and kicks them out,
//!   with a per-vCPU mode word like KVM's `vcpu->mode`.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::pool::{MemoryPool, MemoryUse, PoolError};
use crate::sept::{PrivateMemory, SeptPagePool, VcpuControl};
use tdx_abi::{Gfn, Hpa, PAGE_SIZE_2M, PageLevel};

use tdx_abi::software::SoftwareModuleHooks;

use super::Platform;
use super::td::{MODE_IN_GUEST, VcpuShared};

/// GFNs per 2 MiB extent.
const GFNS_PER_2M: u64 = 512;

/// One 2 MiB-aligned GFN range backed by extents.
struct BackedRange {
    first_gfn: u64,
    extents: Box<[Hpa]>,
    /// One bit per GFN: converted to shared.
    shared: Box<[AtomicU64]>,
}

impl BackedRange {
    fn gfns(&self) -> u64 {
        self.extents.len() as u64 * GFNS_PER_2M
    }
    fn contains(&self, gfn: u64) -> bool {
        gfn >= self.first_gfn && gfn - self.first_gfn < self.gfns()
    }
}

/// A TD's private memory (see the module docs).
pub struct TdBacking {
    ranges: Vec<BackedRange>,
    huge: bool,
}

impl TdBacking {
    /// Allocates extents for every 2 MiB region that `gpa_ranges` (byte ranges, any
    /// alignment) touch. All or nothing: on failure every extent taken is freed.
    pub fn allocate(
        pool: &MemoryPool,
        gpa_ranges: &[(u64, u64)],
        huge: bool,
    ) -> Result<TdBacking, PoolError> {
        let regions = merge_regions(gpa_ranges, PAGE_SIZE_2M);
        let mut ranges: Vec<BackedRange> = Vec::with_capacity(regions.len());
        for (start, end) in regions {
            let n = ((end - start) / PAGE_SIZE_2M) as usize;
            let mut extents = Vec::with_capacity(n);
            for _ in 0..n {
                match pool.alloc_2m(MemoryUse::TdPrivate) {
                    Ok(e) => extents.push(e),
                    Err(err) => {
                        for e in extents {
                            let _ = pool.free_2m(e, MemoryUse::TdPrivate);
                        }
                        TdBacking { ranges, huge }.free(pool);
                        return Err(err);
                    }
                }
            }
            let words = (n as u64 * GFNS_PER_2M).div_ceil(64) as usize;
            ranges.push(BackedRange {
                first_gfn: start >> 12,
                extents: extents.into_boxed_slice(),
                shared: (0..words).map(|_| AtomicU64::new(0)).collect(),
            });
        }
        Ok(TdBacking { ranges, huge })
    }

    /// Pool pages held (4 KiB units).
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.gfns()).sum()
    }

    /// Returns every extent to the pool; returns the number of 4 KiB pages freed.
    pub fn free(&self, pool: &MemoryPool) -> u64 {
        let mut freed = 0;
        for r in &self.ranges {
            for e in r.extents.iter() {
                if pool.free_2m(*e, MemoryUse::TdPrivate).is_ok() {
                    freed += GFNS_PER_2M;
                }
            }
        }
        freed
    }

    /// Returns every page to the pool except the 4 KiB frames listed in `keep` (pages the
    /// module may still own); returns `(freed, kept)` in 4 KiB pages.
    pub fn free_except(&self, pool: &MemoryPool, keep: &[Hpa]) -> (u64, u64) {
        let mut freed = 0;
        let mut kept = 0;
        for r in &self.ranges {
            for e in r.extents.iter() {
                let inside = |p: &Hpa| p.0 >= e.0 && p.0 < e.0 + PAGE_SIZE_2M;
                if !keep.iter().any(inside) {
                    if pool.free_2m(*e, MemoryUse::TdPrivate).is_ok() {
                        freed += GFNS_PER_2M;
                    }
                    continue;
                }
                for i in 0..GFNS_PER_2M {
                    let page = e.add(i << 12);
                    if keep.contains(&page) {
                        kept += 1;
                    } else if pool.free_4k(page, MemoryUse::TdPrivate).is_ok() {
                        freed += 1;
                    }
                }
            }
        }
        (freed, kept)
    }

    fn range_of(&self, gfn: u64) -> Option<&BackedRange> {
        self.ranges.iter().find(|r| r.contains(gfn))
    }

    /// Whether `gfn` is backed and currently private.
    pub fn is_private(&self, gfn: u64) -> bool {
        self.range_of(gfn).is_some_and(|r| {
            let i = gfn - r.first_gfn;
            r.shared
                .get((i / 64) as usize)
                .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (i % 64)) == 0)
        })
    }

    /// The frame that backs `gfn` (private or shared), if the TD has memory there.
    pub fn frame(&self, gfn: u64) -> Option<Hpa> {
        let r = self.range_of(gfn)?;
        let i = gfn - r.first_gfn;
        let extent = r.extents.get((i / GFNS_PER_2M) as usize)?;
        Some(extent.add((i % GFNS_PER_2M) << 12))
    }

    /// Marks `[start, end)` shared (`shared`) or private; GFNs outside the backing are
    /// ignored (they have no private page anyway).
    pub fn set_shared(&self, start: u64, end: u64, shared: bool) {
        for r in &self.ranges {
            let lo = start.max(r.first_gfn);
            let hi = end.min(r.first_gfn + r.gfns());
            let mut g = lo;
            while g < hi {
                let i = g - r.first_gfn;
                let bit = i % 64;
                let n = (64 - bit).min(hi - g);
                let mask = if n == 64 {
                    u64::MAX
                } else {
                    ((1u64 << n) - 1) << bit
                };
                if let Some(w) = r.shared.get((i / 64) as usize) {
                    if shared {
                        w.fetch_or(mask, Ordering::AcqRel);
                    } else {
                        w.fetch_and(!mask, Ordering::AcqRel);
                    }
                }
                g += n;
            }
        }
    }
}

impl PrivateMemory for TdBacking {
    #[inline]
    fn alloc_4k(&self, gfn: Gfn) -> Option<Hpa> {
        let r = self.range_of(gfn.0)?;
        if !self.is_private(gfn.0) {
            return None;
        }
        let i = gfn.0 - r.first_gfn;
        let extent = r.extents.get((i / GFNS_PER_2M) as usize)?;
        Some(extent.add((i % GFNS_PER_2M) << 12))
    }

    fn alloc_2m(&self, gfn: Gfn) -> Option<Hpa> {
        if !self.huge || !gfn.0.is_multiple_of(GFNS_PER_2M) {
            return None;
        }
        let r = self.range_of(gfn.0)?;
        let i = gfn.0 - r.first_gfn;
        let first_word = (i / 64) as usize;
        let all_private = r
            .shared
            .get(first_word..first_word + (GFNS_PER_2M / 64) as usize)
            .is_some_and(|ws| ws.iter().all(|w| w.load(Ordering::Acquire) == 0));
        if !all_private {
            return None;
        }
        r.extents.get((i / GFNS_PER_2M) as usize).copied()
    }

    fn release(&self, _gfn: Gfn, _hpa: Hpa, _level: PageLevel) {
        // The frame stays the GFN's backing until the TD is destroyed (the manager has
        // already cleared it).
    }
}

/// Merges byte ranges into ascending, disjoint ranges aligned out to `align`.
pub(crate) fn merge_regions(ranges: &[(u64, u64)], align: u64) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = ranges
        .iter()
        .filter(|(s, e)| e > s)
        .map(|&(s, e)| (s & !(align - 1), e.saturating_add(align - 1) & !(align - 1)))
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Upper bound of S-EPT table pages a TD whose private GPAs lie in `ranges` can need with a
/// root at `top_level` (3 for 4-level EPT, 4 for 5-level): one table per distinct region
/// covered by a non-leaf entry of levels 1..=top_level.
pub(crate) fn sept_pages_bound(ranges: &[(u64, u64)], top_level: u32) -> u64 {
    let mut total = 0;
    for level in 1..=top_level {
        let shift = 12 + 9 * level;
        let regions = merge_regions(ranges, 1u64 << shift);
        total += regions.iter().map(|(s, e)| (e - s) >> shift).sum::<u64>();
    }
    total
}

/// Preallocated S-EPT pages of one TD.
pub struct SeptPageCache {
    free: spin::Mutex<Vec<Hpa>>,
    all: Vec<Hpa>,
}

impl SeptPageCache {
    /// Takes `n` pages from the pool (all or nothing).
    pub fn allocate(pool: &MemoryPool, n: u64) -> Result<SeptPageCache, PoolError> {
        let mut all = Vec::new();
        pool.alloc_4k_batch(MemoryUse::Sept, n as usize, &mut all)?;
        let mut free = Vec::with_capacity(all.len());
        free.extend(all.iter().rev().copied());
        Ok(SeptPageCache {
            free: spin::Mutex::new(free),
            all,
        })
    }

    /// Pages held in total.
    pub fn pages(&self) -> u64 {
        self.all.len() as u64
    }

    /// Returns to the pool every page that is back in the cache, and every other page for
    /// which `is_free(page)` says the module does not own it; the rest stay allocated
    /// (leaked). Returns `(freed, leaked)`.
    pub fn free_checked(&self, pool: &MemoryPool, is_free: &dyn Fn(Hpa) -> bool) -> (u64, u64) {
        let back = core::mem::take(&mut *self.free.lock());
        let mut freed = 0;
        let mut leaked = 0;
        for p in &self.all {
            if back.contains(p) || is_free(*p) {
                if pool.free_4k(*p, MemoryUse::Sept).is_ok() {
                    freed += 1;
                }
            } else {
                leaked += 1;
            }
        }
        (freed, leaked)
    }

    /// Returns every page to the pool (nothing was given to the module).
    pub fn free(&self, pool: &MemoryPool) -> (u64, u64) {
        self.free_checked(pool, &|_| true)
    }
}

impl SeptPagePool for SeptPageCache {
    fn take(&self) -> Option<Hpa> {
        self.free.lock().pop()
    }
    fn give_back(&self, hpa: Hpa) {
        // Capacity is the total, so this never reallocates.
        self.free.lock().push(hpa);
    }
}

/// How to force a vCPU out of the TD.
#[derive(Clone)]
pub enum Kicker {
    /// The software module's kick, plus a wake-up of the runner.
    Software(Arc<dyn SoftwareModuleHooks>, Arc<dyn Platform>),
    /// An interrupt to the runner's CPU.
    Hardware(Arc<dyn Platform>),
}

impl Kicker {
    /// Kicks the vCPU at `tdvpr` running on `cpu`.
    pub fn kick(&self, cpu: u32, tdvpr: Hpa) {
        match self {
            Kicker::Software(m, p) => {
                m.kick(tdvpr);
                p.kick_cpu(cpu);
            }
            Kicker::Hardware(p) => p.kick_cpu(cpu),
        }
    }

    /// Posts interrupt `vector` to vCPU `v`. The software module takes it at its next
    /// delivery point. On hardware it goes into the vCPU's posted-interrupt descriptor, and
    /// a vCPU in the TD gets the notification IPI (KVM's `__vmx_deliver_posted_interrupt`):
    /// the poster writes the descriptor, then reads the mode; the runner publishes the mode,
    /// then checks the descriptor ([`Kicker::before_entry`]), so one of them notifies.
    pub fn post_interrupt(&self, v: &VcpuShared, vector: u8) {
        match self {
            Kicker::Software(m, _) => m.post_interrupt(v.tdvpr, vector),
            Kicker::Hardware(p) => {
                if v.posted.post(vector) && v.mode.load(Ordering::SeqCst) == MODE_IN_GUEST {
                    p.notify_posted_interrupt(v.cpu);
                }
            }
        }
    }

    /// Whether an interrupt posted to vCPU `v` waits for its next entry: a halting vCPU with
    /// one must not sleep (KVM's `tdx_protected_apic_has_interrupt` checks the descriptor
    /// first too).
    pub fn interrupt_pending(&self, v: &VcpuShared) -> bool {
        match self {
            Kicker::Software(m, _) => m.interrupt_pending(v.tdvpr),
            Kicker::Hardware(_) => v.posted.outstanding(),
        }
    }

    /// Called by vCPU `v`'s runner with interrupts off, after it published
    /// [`MODE_IN_GUEST`] and before TDH.VP.ENTER: on hardware, an outstanding notification
    /// is sent to this CPU itself, so that the CPU processes the descriptor right after the
    /// VM entry (KVM's `tdx_vcpu_run`).
    pub fn before_entry(&self, v: &VcpuShared) {
        if let Kicker::Hardware(p) = self
            && v.posted.outstanding()
        {
            p.notify_posted_interrupt(v.cpu);
        }
    }
}

/// A TD's vCPUs as the unmap path and the host see them.
pub struct TdVcpus {
    /// The vCPUs.
    pub vcpus: Vec<VcpuShared>,
    /// `block_entry` nesting count (no entry while > 0).
    pub block: AtomicU32,
    /// How to kick.
    pub kicker: Kicker,
}

impl TdVcpus {
    /// Kicks every vCPU that may be in the TD.
    pub fn kick_all(&self) {
        for v in &self.vcpus {
            v.wake();
            self.kicker.kick(v.cpu, v.tdvpr);
        }
    }
}

/// A TD's devices signal MSI-X messages to its vCPUs: a fixed interrupt to the vCPU whose
/// x2APIC ID is the message's destination (x86 MSI format, Intel SDM vol. 3A 11.11:
/// address 0xFEExxxxx with the destination ID in bits 19:12, the vector in data bits 7:0),
/// posted, and the vCPU woken or kicked so that it takes the interrupt. Other formats and the
/// reserved vectors 0–15 are dropped.
impl crate::devices::MsiSink for TdVcpus {
    fn signal(&self, address: u64, data: u32) {
        let vector = (data & 0xFF) as u8;
        if address >> 20 != 0xFEE || vector < 16 {
            return;
        }
        let destination = ((address >> 12) & 0xFF) as u32;
        if let Some(v) = self.vcpus.iter().find(|v| v.index == destination) {
            self.kicker.post_interrupt(v, vector);
            v.wake();
            self.kicker.kick(v.cpu, v.tdvpr);
        }
    }
}

/// [`VcpuControl`] over a TD's vCPUs.
pub struct VcpuGate(pub Arc<TdVcpus>);

impl VcpuControl for VcpuGate {
    fn block_entry(&self) {
        self.0.block.fetch_add(1, Ordering::SeqCst);
    }

    fn kick_all_and_wait(&self) {
        for v in &self.0.vcpus {
            let seq = v.exits.load(Ordering::SeqCst);
            if v.mode.load(Ordering::SeqCst) != MODE_IN_GUEST {
                continue;
            }
            self.0.kicker.kick(v.cpu, v.tdvpr);
            // Wait until it has left guest mode once since the snapshot.
            let mut spins = 0u64;
            while v.mode.load(Ordering::SeqCst) == MODE_IN_GUEST
                && v.exits.load(Ordering::SeqCst) == seq
            {
                core::hint::spin_loop();
                spins += 1;
                if spins.is_multiple_of(1 << 16) {
                    self.0.kicker.kick(v.cpu, v.tdvpr);
                }
            }
        }
    }

    fn allow_entry(&self) {
        self.0.block.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn regions_merge_and_bound_tables() {
        let m = merge_regions(&[(0x1000, 0x2000), (0x10_0000, 0x30_0000), (5, 5)], 1 << 21);
        assert_eq!(m, alloc::vec![(0, 0x40_0000)]);
        // 32 MiB RAM + a 2 MiB firmware range just below 4 GiB: 16 + 1 PTs, 2 PDs, 1 PDPT.
        let r = [(0, 32 << 20), (0xFFE0_0000, 0x1_0000_0000)];
        assert_eq!(sept_pages_bound(&r, 3), 17 + 2 + 1);
    }

    #[test]
    fn backing_is_fixed_per_gfn_and_honours_shared_bits() {
        let pool = MemoryPool::new(Hpa(1 << 30), 64 << 20).unwrap();
        let before = pool.stats();
        let b = TdBacking::allocate(&pool, &[(0, 8 << 20)], true).unwrap();
        assert_eq!(b.pages(), 2048);
        let p = b.alloc_4k(Gfn(513)).unwrap();
        assert_eq!(b.alloc_4k(Gfn(513)), Some(p));
        let e = b.alloc_2m(Gfn(512)).unwrap();
        assert_eq!(p, e.add(4096));
        assert_eq!(b.alloc_2m(Gfn(513)), None);
        b.set_shared(600, 700, true);
        assert_eq!(b.alloc_4k(Gfn(650)), None);
        assert_eq!(b.alloc_2m(Gfn(512)), None);
        assert!(b.alloc_2m(Gfn(0)).is_some());
        b.set_shared(600, 700, false);
        assert!(b.alloc_2m(Gfn(512)).is_some());
        assert_eq!(b.alloc_4k(Gfn(2048)), None);
        assert_eq!(b.free(&pool), 2048);
        assert_eq!(pool.stats(), before);
        // All or nothing.
        assert!(TdBacking::allocate(&pool, &[(0, 128 << 20)], false).is_err());
        assert_eq!(pool.stats(), before);
    }
}
