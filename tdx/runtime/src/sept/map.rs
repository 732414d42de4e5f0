//! The fault path: `map_private`. Lock-free: per entry, compare-and-swap empty → frozen, one
//! SEAMCALL, then publish the new entry or restore the old one (KVM's `tdp_mmu_set_spte_atomic` with
//! `FROZEN_SPTE`, and its `TDX_OPERAND_BUSY` retries in `tdx_sept_set_private_spte`).

use tdx_abi::seamcall::{Seamcall, TdxModule};
use tdx_abi::{Gfn, Hpa, PageLevel};

use super::entry::{EMPTY, Entry, FROZEN};
use super::sync::{Ordering, spin_hint};
use super::table::{DirTable, PtTable, index};
use super::{
    Counter, FaultRequest, MapOutcome, PromoteOutcome, SeptError, SeptManager, align_gfn, level_of,
};

/// The result of one attempt of the fault path.
enum Step {
    /// Finished.
    Done(MapOutcome),
    /// The module answered BUSY; everything was restored.
    Busy,
    /// Another thread holds an entry on the path frozen.
    Frozen,
    /// A huge leaf of `level` covers the GFN but the request wants a smaller mapping.
    Split { level: u32 },
}

/// A fault-path SEAMCALL in flight; dropping it ends it.
struct FaultSeamcall<'a> {
    stats: &'a super::StatSlots,
    cpu: usize,
}

impl Drop for FaultSeamcall<'_> {
    #[inline]
    fn drop(&mut self) {
        self.stats.inflight_exit(self.cpu);
    }
}

impl<S: Seamcall + ?Sized> SeptManager<S> {
    /// Resolves an EPT violation on a private GFN (or adds a build-time page): makes sure a leaf
    /// of at most `req.max_level` maps `req.gfn`.
    ///
    /// Safe to call from many CPUs at once, for the same or different GFNs. Never blocks on a
    /// lock except when it must split a huge page for a smaller accept level (the zap lock).
    pub fn map_private(&self, req: FaultRequest) -> Result<MapOutcome, SeptError> {
        self.check_usable()?;
        let gfn = req.gfn.0;
        self.check_range(gfn, gfn.wrapping_add(1))?;
        let cpu = req.cpu;
        self.stats.add(cpu, Counter::Faults, 1);
        let runnable = self.runnable.load(Ordering::Acquire);
        let source = match (req.source, runnable) {
            (Some(_), true) => return Err(SeptError::SourceAfterFinalize),
            (None, false) => return Err(SeptError::SourceRequired),
            (source, _) => source,
        };
        // PAGE.ADD is 4 KiB only; PAGE.AUG at most 2 MiB (module 1.5 `tdh_mem_page_add.c`,
        // `tdh_mem_page_aug.c`).
        let max_level = if source.is_some() {
            PageLevel::L4K
        } else {
            req.max_level.min(PageLevel::L2M)
        };
        let mut tries = 0u32;
        loop {
            let counter = match self.map_once(gfn, max_level, source, cpu)? {
                Step::Done(outcome) => {
                    if let MapOutcome::AlreadyMapped { .. } = outcome {
                        self.stats.add(cpu, Counter::AlreadyMapped, 1);
                    }
                    return Ok(outcome);
                }
                Step::Split { level } => {
                    self.split_for_fault(gfn, level)?;
                    None
                }
                Step::Busy => Some(Counter::RetryBusy),
                Step::Frozen => Some(Counter::RetryFrozen),
            };
            if let Some(counter) = counter {
                self.stats.add(cpu, counter, 1);
            }
            tries += 1;
            if tries > self.config.fault_retries {
                self.stats.add(cpu, Counter::RetryReturned, 1);
                return Ok(MapOutcome::Retry);
            }
            // Exponential back-off (one yield under loom, to keep the state space small).
            let spins = if cfg!(loom) { 1 } else { 1u32 << tries.min(8) };
            for _ in 0..spins {
                spin_hint();
            }
            self.check_usable()?;
        }
    }

    /// One walk from the root, installing what is missing.
    fn map_once(
        &self,
        gfn: u64,
        max_level: PageLevel,
        source: Option<Hpa>,
        cpu: usize,
    ) -> Result<Step, SeptError> {
        let mut dir: &DirTable = &self.root;
        let mut level = self.top_level;
        loop {
            let idx = index(gfn, level);
            let slot = &dir.entries[idx];
            match Entry::decode(slot.load(Ordering::Acquire)) {
                Entry::Frozen => return Ok(Step::Frozen),
                Entry::Leaf { level: l, .. } | Entry::Leaked { level: l, .. } => {
                    return Ok(if l > max_level {
                        Step::Split { level }
                    } else {
                        Step::Done(MapOutcome::AlreadyMapped { level: l })
                    });
                }
                Entry::NonLeaf { demoted, .. } => {
                    if level >= 2 {
                        match dir.child_dir(idx) {
                            Some(d) => {
                                dir = d;
                                level -= 1;
                            }
                            None => return Err(self.corrupt(gfn, level)),
                        }
                    } else {
                        return match dir.child_pt(idx) {
                            Some(pt) => {
                                let promote = demoted
                                    && max_level >= PageLevel::L2M
                                    && self.config.auto_promote;
                                self.map_leaf_4k(pt, gfn, source, cpu, promote)
                            }
                            None => Err(self.corrupt(gfn, level)),
                        };
                    }
                }
                Entry::Empty => {
                    if slot
                        .compare_exchange(EMPTY, FROZEN, Ordering::Acquire, Ordering::Relaxed)
                        .is_err()
                    {
                        return Ok(Step::Frozen);
                    }
                    if level == 1
                        && max_level >= PageLevel::L2M
                        && let Some(step) = self.map_leaf_2m(slot, gfn, cpu)?
                    {
                        return Ok(step);
                    }
                    if let Some(step) = self.add_table(dir, idx, gfn, level, cpu)? {
                        return Ok(step);
                    }
                    // Published: read the entry again and descend.
                }
            }
        }
    }

    /// With the level-1 entry frozen, maps a 2 MiB leaf if the backing has an extent.
    /// `Ok(None)`: no extent, the entry is still frozen and the caller adds a table instead.
    fn map_leaf_2m(
        &self,
        slot: &super::sync::AtomicU64,
        gfn: u64,
        cpu: usize,
    ) -> Result<Option<Step>, SeptError> {
        let base = align_gfn(gfn, 1);
        let Some(_call) = self.enter_fault_seamcall(cpu) else {
            slot.store(EMPTY, Ordering::Release);
            return Ok(Some(Step::Frozen));
        };
        let Some(hpa) = self.backends.memory.alloc_2m(Gfn(base)) else {
            return Ok(None);
        };
        if !hpa.is_aligned(PageLevel::L2M) {
            // A backing bug; never hand the module a misaligned extent.
            self.backends.memory.release(Gfn(base), hpa, PageLevel::L2M);
            return Ok(None);
        }
        let result = self
            .module
            .mem_page_aug(self.td.tdr, Gfn(base).gpa(), PageLevel::L2M, hpa);
        match result {
            Ok(()) => {
                let leaf = Entry::Leaf {
                    hpa,
                    level: PageLevel::L2M,
                    added: false,
                };
                slot.store(leaf.encode(), Ordering::Release);
                self.stats.add(cpu, Counter::Mapped2m, 1);
                Ok(Some(Step::Done(MapOutcome::Mapped {
                    level: PageLevel::L2M,
                })))
            }
            Err(e) if e.is_busy() => {
                self.backends.memory.release(Gfn(base), hpa, PageLevel::L2M);
                slot.store(EMPTY, Ordering::Release);
                Ok(Some(Step::Busy))
            }
            Err(e) => {
                let leaked = Entry::Leaked {
                    hpa,
                    level: PageLevel::L2M,
                };
                slot.store(leaked.encode(), Ordering::Release);
                self.stats
                    .add(cpu, Counter::LeakedPages4k, PageLevel::L2M.pages_4k());
                Err(self.bug(&e, base, PageLevel::L2M))
            }
        }
    }

    /// With `dir.entries[idx]` (at `level`) frozen, adds an S-EPT page under it and publishes
    /// the non-leaf entry. `Ok(None)` when published.
    fn add_table(
        &self,
        dir: &DirTable,
        idx: usize,
        gfn: u64,
        level: u32,
        cpu: usize,
    ) -> Result<Option<Step>, SeptError> {
        let slot = &dir.entries[idx];
        let Some(_call) = self.enter_fault_seamcall(cpu) else {
            slot.store(EMPTY, Ordering::Release);
            return Ok(Some(Step::Frozen));
        };
        let Some(page) = self.backends.pool.take() else {
            slot.store(EMPTY, Ordering::Release);
            return Err(SeptError::OutOfSeptPages);
        };
        let base = align_gfn(gfn, level);
        let lvl = level_of(level);
        match self
            .module
            .mem_sept_add(self.td.tdr, Gfn(base).gpa(), lvl, page)
        {
            Ok(()) => {
                let Some((child, bytes)) = dir.child_or_create(idx, level) else {
                    return Err(self.corrupt(gfn, level));
                };
                if bytes != 0 {
                    self.mirror_bytes
                        .fetch_add(bytes as u64, core::sync::atomic::Ordering::Relaxed);
                }
                // The module has the table now: its entries may become usable.
                for e in child.entries() {
                    e.store(EMPTY, Ordering::Relaxed);
                }
                let entry = Entry::NonLeaf {
                    sept_page: page,
                    demoted: false,
                };
                slot.store(entry.encode(), Ordering::Release);
                self.stats.add(cpu, Counter::SeptPagesAdded, 1);
                Ok(None)
            }
            Err(e) if e.is_busy() => {
                self.backends.pool.give_back(page);
                slot.store(EMPTY, Ordering::Release);
                Ok(Some(Step::Busy))
            }
            Err(e) => {
                // The module may or may not own the page now: leak it.
                self.stats.add(cpu, Counter::LeakedSeptPages, 1);
                slot.store(EMPTY, Ordering::Release);
                Err(self.bug(&e, base, lvl))
            }
        }
    }

    /// Maps the 4 KiB leaf for `gfn` in `pt` (PAGE.ADD with `source`, else PAGE.AUG).
    fn map_leaf_4k(
        &self,
        pt: &PtTable,
        gfn: u64,
        source: Option<Hpa>,
        cpu: usize,
        try_promote: bool,
    ) -> Result<Step, SeptError> {
        let slot = &pt.entries[index(gfn, 0)];
        match Entry::decode(slot.load(Ordering::Acquire)) {
            Entry::Empty => {}
            Entry::Leaf { .. } | Entry::Leaked { .. } => {
                return Ok(Step::Done(MapOutcome::AlreadyMapped {
                    level: PageLevel::L4K,
                }));
            }
            Entry::Frozen | Entry::NonLeaf { .. } => return Ok(Step::Frozen),
        }
        if slot
            .compare_exchange(EMPTY, FROZEN, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Ok(Step::Frozen);
        }
        let Some(call) = self.enter_fault_seamcall(cpu) else {
            slot.store(EMPTY, Ordering::Release);
            return Ok(Step::Frozen);
        };
        let Some(hpa) = self.backends.memory.alloc_4k(Gfn(gfn)) else {
            slot.store(EMPTY, Ordering::Release);
            return Err(SeptError::OutOfPrivateMemory { gfn });
        };
        let gpa = Gfn(gfn).gpa();
        let result = match source {
            Some(src) => self.module.mem_page_add(self.td.tdr, gpa, hpa, src),
            None => self
                .module
                .mem_page_aug(self.td.tdr, gpa, PageLevel::L4K, hpa),
        };
        match result {
            Ok(()) => {
                let leaf = Entry::Leaf {
                    hpa,
                    level: PageLevel::L4K,
                    added: source.is_some(),
                };
                slot.store(leaf.encode(), Ordering::Release);
                self.stats.add(cpu, Counter::Mapped4k, 1);
                drop(call);
                if try_promote && self.looks_promotable(pt) {
                    // Best effort: a refusal is expected (children not uniformly accepted).
                    let _: PromoteOutcome = self.promote(Gfn(gfn), PageLevel::L2M)?;
                }
                Ok(Step::Done(MapOutcome::Mapped {
                    level: PageLevel::L4K,
                }))
            }
            Err(e) if e.is_busy() => {
                self.backends.memory.release(Gfn(gfn), hpa, PageLevel::L4K);
                slot.store(EMPTY, Ordering::Release);
                Ok(Step::Busy)
            }
            Err(e) => {
                let leaked = Entry::Leaked {
                    hpa,
                    level: PageLevel::L4K,
                };
                slot.store(leaked.encode(), Ordering::Release);
                self.stats.add(cpu, Counter::LeakedPages4k, 1);
                Err(self.bug(&e, gfn, PageLevel::L4K))
            }
        }
    }

    /// Whether the 512 entries of `pt` are 4 KiB leaves over one aligned contiguous extent.
    fn looks_promotable(&self, pt: &PtTable) -> bool {
        super::zap::uniform_children(&pt.entries, PageLevel::L2M).is_some()
    }

    /// Splits the huge leaf at `level` that covers `gfn` (a fault wants a smaller mapping).
    fn split_for_fault(&self, gfn: u64, level: u32) -> Result<(), SeptError> {
        let _zap = self.zap.lock();
        self.check_usable()?;
        let found = self.locate_down_to(gfn, level);
        if found.level != level {
            return Ok(()); // changed meanwhile; the next walk sees the new shape
        }
        if let Entry::Leaf { .. } = Entry::decode(found.raw) {
            self.demote_locked(&found, gfn)?;
        }
        Ok(())
    }

    /// Announces a fault-path SEAMCALL on `cpu`; `None` while the unmap path holds faults
    /// back (the caller restores its frozen entry and backs off). Only this CPU's statistics
    /// line is written; the flag is only read.
    #[inline]
    fn enter_fault_seamcall(&self, cpu: usize) -> Option<FaultSeamcall<'_>> {
        self.stats.inflight_enter(cpu);
        if self.hold_faults.load(Ordering::SeqCst) {
            self.stats.inflight_exit(cpu);
            return None;
        }
        Some(FaultSeamcall {
            stats: &self.stats,
            cpu,
        })
    }

    /// Marks the TD bugged because the mirror's invariants do not hold.
    fn corrupt(&self, gfn: u64, level: u32) -> SeptError {
        self.record_bug(super::BugReport {
            cause: super::BugCause::MirrorCorrupt,
            gfn: Gfn(gfn),
            level: level_of(level),
        })
    }
}
