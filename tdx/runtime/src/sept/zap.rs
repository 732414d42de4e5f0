//! The unmap path and everything else that removes or reshapes mappings: `unmap_private`,
//! demotion, promotion and the teardown reclaim. All of it runs under the per-TD zap lock
//! (never taken by faults) and freezes the entries it changes, so faults on other GFNs go on
//! (KVM `tdx_sept_remove_private_spte`, `tdx_track`, `tdx_mmu_release_hkid`).

use core::ops::Range;

use tdx_abi::seamcall::{SeamError, Seamcall, TdxModule};
use tdx_abi::{Gfn, Hpa, PAGE_SIZE_4K, PageLevel, TdxStatus};

use super::entry::{EMPTY, Entry, FROZEN};
use super::sync::{AtomicU64, Ordering, spin_hint};
use super::table::{Child, DirTable, FANOUT, PtTable};
use super::{
    BugCause, BugReport, Counter, Found, PromoteOutcome, ReclaimProgress, ReclaimReport, SeptError,
    SeptManager, UnmapOutcome, align_gfn, level_of, unmapped_counter,
};

/// Leaves blocked before one TRACK + kick and then removed.
const BATCH: usize = 64;

/// Times a DEMOTE that answers `TDX_INTERRUPTED_RESTARTABLE` is reissued.
const RESTARTS: u32 = 64;

/// A frozen leaf waiting for removal.
#[derive(Clone, Copy)]
struct Pending<'a> {
    slot: &'a AtomicU64,
    /// Value before freezing (a leaf).
    old: u64,
    gfn: u64,
    hpa: Hpa,
    level: PageLevel,
}

/// Up to [`BATCH`] frozen leaves, without heap allocation (runner CPUs may run this).
struct Batch<'a> {
    items: [Option<Pending<'a>>; BATCH],
    len: usize,
}

impl<'a> Batch<'a> {
    fn new() -> Self {
        Batch {
            items: [None; BATCH],
            len: 0,
        }
    }
    fn iter(&self) -> impl Iterator<Item = Pending<'a>> + '_ {
        self.items.iter().take(self.len).flatten().copied()
    }
}

/// If the 512 entries are leaves one level below `level` over one `level`-aligned contiguous
/// extent, all added the same way: the extent's first byte and the shared `added` flag.
pub(crate) fn uniform_children(entries: &[AtomicU64], level: PageLevel) -> Option<(Hpa, bool)> {
    let sub = level.lower()?;
    let (base, added) = match Entry::decode(entries.first()?.load(Ordering::Acquire)) {
        Entry::Leaf {
            hpa,
            level: l,
            added,
        } if l == sub && hpa.is_aligned(level) => (hpa, added),
        _ => return None,
    };
    for (i, e) in entries.iter().enumerate().skip(1) {
        match Entry::decode(e.load(Ordering::Acquire)) {
            Entry::Leaf {
                hpa,
                level: l,
                added: a,
            } if l == sub && a == added && hpa.0 == base.0 + i as u64 * sub.size() => {}
            _ => return None,
        }
    }
    Some((base, added))
}

impl<S: Seamcall + ?Sized> SeptManager<S> {
    /// Removes every private mapping in `range` and hands the pages back to their owner:
    /// BLOCK each leaf, TRACK, kick the vCPUs, REMOVE, WBINVD, clear, release. Huge leaves that
    /// the range covers only partly are demoted first. Used for private-to-shared conversion,
    /// memory release and teardown while the HKID is still assigned.
    ///
    /// Exclusive with other unmaps and with faults on the same GFNs; faults elsewhere go on. A
    /// fault racing with the unmap of the same GFN may map it again afterwards: the runtime
    /// updates the GFN's private/shared attribute first.
    pub fn unmap_private(&self, range: Range<Gfn>) -> Result<UnmapOutcome, SeptError> {
        self.check_usable()?;
        let (start, end) = (range.start.0, range.end.0);
        self.check_range(start, end)?;
        let _zap = self.zap.lock();
        self.check_usable()?;
        let mut out = UnmapOutcome::default();
        let mut batch = Batch::new();
        let mut cursor = start;
        let mut spins = 0u64;
        let mut waited_at = cursor;
        while cursor < end {
            if cursor != waited_at {
                // Progress: the wait budget is per entry.
                spins = 0;
                waited_at = cursor;
            }
            let found = self.locate(cursor);
            let span = 1u64 << (9 * found.level);
            let base = align_gfn(cursor, found.level);
            match Entry::decode(found.raw) {
                Entry::Frozen => {
                    // A fault is between freeze and publish on this entry (ours are never
                    // ahead of the cursor): wait for it.
                    spins += 1;
                    if spins > self.config.frozen_wait_spins {
                        self.flush(&mut batch, &mut out)?;
                        return Err(self.record_bug(BugReport {
                            cause: BugCause::StuckEntry,
                            gfn: Gfn(cursor),
                            level: level_of(found.level),
                        }));
                    }
                    spin_hint();
                }
                Entry::Leaf { hpa, level, .. } if base >= start && base + span <= end => {
                    if found
                        .slot
                        .compare_exchange(found.raw, FROZEN, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        batch.items[batch.len] = Some(Pending {
                            slot: found.slot,
                            old: found.raw,
                            gfn: base,
                            hpa,
                            level,
                        });
                        batch.len += 1;
                        if batch.len == BATCH {
                            self.flush(&mut batch, &mut out)?;
                        }
                        cursor = base + span;
                    }
                }
                Entry::Leaf { .. } => {
                    // Partly covered huge leaf: split it, then walk into it.
                    self.flush(&mut batch, &mut out)?;
                    self.demote_locked(&found, cursor)?;
                    out.demoted += 1;
                }
                Entry::Empty | Entry::Leaked { .. } | Entry::NonLeaf { .. } => {
                    // Nothing mapped (a non-leaf here has no child table).
                    cursor = base + span;
                }
            }
        }
        self.flush(&mut batch, &mut out)?;
        Ok(out)
    }

    /// Unmaps every private GFN of the TD (the slow teardown path, HKID still assigned).
    pub fn unmap_all(&self) -> Result<UnmapOutcome, SeptError> {
        self.unmap_private(Gfn(0)..Gfn(self.gfn_limit))
    }

    /// Removes the frozen leaves of `batch`: BLOCK all, one TRACK and kick, then REMOVE,
    /// WBINVD, clear and release each. On failure the failing page is leaked, the others are
    /// restored, and the TD is bugged.
    fn flush(&self, batch: &mut Batch<'_>, out: &mut UnmapOutcome) -> Result<(), SeptError> {
        if batch.len == 0 {
            return Ok(());
        }
        let tdr = self.td.tdr;
        let mut failure: Option<(usize, SeamError)> = None;
        for (i, p) in batch.iter().enumerate() {
            if let Err(e) =
                self.zap_call(|| self.module.mem_range_block(tdr, Gfn(p.gfn).gpa(), p.level))
            {
                failure = Some((i, e));
                break;
            }
        }
        if failure.is_none()
            && let Err(e) = self.track_and_kick()
        {
            // No page is at fault: restore every one (usize::MAX leaks none).
            failure = Some((usize::MAX, e));
        }
        let mut done = 0;
        if failure.is_none() {
            for (i, p) in batch.iter().enumerate() {
                if let Err(e) = self.remove_page(p) {
                    failure = Some((i, e));
                    break;
                }
                p.slot.store(EMPTY, Ordering::Release);
                self.stats.add_zap(unmapped_counter(p.level), 1);
                match p.level {
                    PageLevel::L4K => out.removed_4k += 1,
                    PageLevel::L2M => out.removed_2m += 1,
                    _ => out.removed_1g += 1,
                }
                done = i + 1;
            }
        }
        let result = match failure {
            None => Ok(()),
            Some((bad, e)) => {
                let mut report = None;
                for (i, p) in batch.iter().enumerate().skip(done) {
                    if i == bad {
                        let leaked = Entry::Leaked {
                            hpa: p.hpa,
                            level: p.level,
                        };
                        p.slot.store(leaked.encode(), Ordering::Release);
                        self.stats
                            .add_zap(Counter::LeakedPages4k, p.level.pages_4k());
                        report = Some(self.bug(&e, p.gfn, p.level));
                    } else {
                        p.slot.store(p.old, Ordering::Release);
                    }
                }
                Err(report.unwrap_or_else(|| self.bug(&e, 0, PageLevel::L4K)))
            }
        };
        batch.items = [None; BATCH];
        batch.len = 0;
        result
    }

    /// REMOVE a blocked, tracked leaf, flush its cache lines, clear it, give it back.
    fn remove_page(&self, p: Pending<'_>) -> Result<(), SeamError> {
        let tdr = self.td.tdr;
        self.zap_call(|| self.module.mem_page_remove(tdr, Gfn(p.gfn).gpa(), p.level))?;
        for i in 0..p.level.pages_4k() {
            let frame = p.hpa.add(i * PAGE_SIZE_4K);
            self.zap_call(|| self.module.phymem_page_wbinvd(frame, self.td.hkid))?;
        }
        self.backends.phys.zero(p.hpa, p.level.size());
        self.backends.memory.release(Gfn(p.gfn), p.hpa, p.level);
        Ok(())
    }

    /// TDH.MEM.TRACK then kick every vCPU so the epoch moves (only once the TD can run).
    fn track_and_kick(&self) -> Result<(), SeamError> {
        if self.runnable.load(Ordering::Acquire) {
            self.zap_call(|| self.module.mem_track(self.td.tdr))?;
            self.backends.vcpus.kick_all_and_wait();
        }
        Ok(())
    }

    /// Issues a zap-path SEAMCALL; on BUSY retries exactly once with the vCPUs kept out of
    /// the TD (KVM's `tdh_do_no_vcpus`).
    fn zap_call<T>(&self, mut op: impl FnMut() -> Result<T, SeamError>) -> Result<T, SeamError> {
        match op() {
            Err(e) if e.is_busy() || e.status.is(TdxStatus::PREVIOUS_TLB_EPOCH_BUSY) => {
                self.stats.add_zap(Counter::ZapBusyRetries, 1);
                let vcpus = &self.backends.vcpus;
                vcpus.block_entry();
                vcpus.kick_all_and_wait();
                self.hold_faults();
                let result = op();
                self.hold_faults.store(false, Ordering::Release);
                vcpus.allow_entry();
                result
            }
            result => result,
        }
    }

    /// Keeps the fault path from issuing SEAMCALLs and waits for those in flight: the other
    /// contenders for the module's S-EPT tree lock (RANGE.BLOCK and PROMOTE take it
    /// exclusively, AUG and SEPT.ADD shared) besides the vCPUs. Bounded: a fault's SEAMCALL
    /// is short; past the bound the retry goes ahead anyway.
    fn hold_faults(&self) {
        self.hold_faults.store(true, Ordering::SeqCst);
        let mut spins = 0u64;
        while self.stats.inflight() != 0 && spins < self.config.frozen_wait_spins {
            spins += 1;
            spin_hint();
        }
    }

    /// Splits the huge leaf `found` (zap lock held): BLOCK, TRACK, kick, DEMOTE, then fills the
    /// child table with the 512 smaller leaves and publishes the non-leaf entry.
    pub(crate) fn demote_locked(&self, found: &Found<'_>, gfn: u64) -> Result<(), SeptError> {
        let Entry::Leaf { hpa, level, added } = Entry::decode(found.raw) else {
            return Ok(());
        };
        let (Some((dir, idx)), Some(sub)) = (found.parent, level.lower()) else {
            return Ok(());
        };
        if found
            .slot
            .compare_exchange(found.raw, FROZEN, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Ok(()); // changed; the caller walks again
        }
        let base = align_gfn(gfn, found.level);
        let gpa = Gfn(base).gpa();
        let tdr = self.td.tdr;
        let restore = || found.slot.store(found.raw, Ordering::Release);
        let Some(page) = self.backends.pool.take() else {
            restore();
            return Err(SeptError::OutOfSeptPages);
        };
        if let Err(e) = self
            .zap_call(|| self.module.mem_range_block(tdr, gpa, level))
            .and_then(|()| self.track_and_kick())
        {
            restore();
            self.backends.pool.give_back(page);
            return Err(self.bug(&e, base, level));
        }
        let demoted = self.zap_call(|| {
            let mut r = self.module.mem_page_demote(tdr, gpa, level, page);
            let mut n = 0;
            while matches!(&r, Err(e) if e.status.is(TdxStatus::INTERRUPTED_RESTARTABLE))
                && n < RESTARTS
            {
                r = self.module.mem_page_demote(tdr, gpa, level, page);
                n += 1;
            }
            r
        });
        if let Err(e) = demoted {
            restore();
            self.stats.add_zap(Counter::LeakedSeptPages, 1);
            return Err(self.bug(&e, base, level));
        }
        let Some((child, bytes)) = dir.child_or_create(idx, found.level) else {
            return Err(self.corrupt_at(base, level));
        };
        if bytes != 0 {
            self.mirror_bytes
                .fetch_add(bytes as u64, core::sync::atomic::Ordering::Relaxed);
        }
        for (i, e) in child.entries().iter().enumerate() {
            let leaf = Entry::Leaf {
                hpa: hpa.add(i as u64 * sub.size()),
                level: sub,
                added,
            };
            e.store(leaf.encode(), Ordering::Relaxed);
        }
        let non_leaf = Entry::NonLeaf {
            sept_page: page,
            demoted: true,
        };
        found.slot.store(non_leaf.encode(), Ordering::Release);
        self.stats.add_zap(Counter::Demotions, 1);
        Ok(())
    }

    /// Merges the 512 leaves under the non-leaf entry at `level` (2 MiB or 1 GiB) covering
    /// `gfn` into one leaf: BLOCK, TRACK, kick, PROMOTE; the freed S-EPT page is flushed,
    /// cleared and returned to the pool. The module refuses unless all children are uniformly
    /// PENDING or MAPPED; that refusal is expected and undone with UNBLOCK.
    pub fn promote(&self, gfn: Gfn, level: PageLevel) -> Result<PromoteOutcome, SeptError> {
        self.check_usable()?;
        if !matches!(level, PageLevel::L2M | PageLevel::L1G) {
            return Err(SeptError::BadPromoteLevel(level));
        }
        self.check_range(gfn.0, gfn.0.wrapping_add(1))?;
        let _zap = self.zap.lock();
        self.check_usable()?;
        let raw_level = level.raw() as u32;
        let found = self.locate_down_to(gfn.0, raw_level);
        let (Some((dir, idx)), true) = (found.parent, found.level == raw_level) else {
            return Ok(PromoteOutcome::NotUniform);
        };
        let Entry::NonLeaf { sept_page, .. } = Entry::decode(found.raw) else {
            return Ok(PromoteOutcome::NotUniform);
        };
        let Some(child) = dir.child(idx) else {
            return Ok(PromoteOutcome::NotUniform);
        };
        let entries = child.entries();
        let Some((hpa, added)) = uniform_children(entries, level) else {
            return Ok(PromoteOutcome::NotUniform);
        };
        // Freeze the parent, then every child (faults never change leaves, so this succeeds
        // unless a racing fault is mid-publish, which uniform_children already excluded).
        if found
            .slot
            .compare_exchange(found.raw, FROZEN, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Ok(PromoteOutcome::NotUniform);
        }
        let olds: [u64; FANOUT] = core::array::from_fn(|i| {
            entries
                .get(i)
                .map_or(FROZEN, |e| e.swap(FROZEN, Ordering::Acquire))
        });
        let restore = || {
            for (e, old) in entries.iter().zip(olds.iter()) {
                e.store(*old, Ordering::Relaxed);
            }
            found.slot.store(found.raw, Ordering::Release);
        };
        if olds
            .iter()
            .any(|&o| !matches!(Entry::decode(o), Entry::Leaf { .. }))
        {
            restore();
            return Ok(PromoteOutcome::NotUniform);
        }
        let base = align_gfn(gfn.0, raw_level);
        let gpa = Gfn(base).gpa();
        let tdr = self.td.tdr;
        if let Err(e) = self
            .zap_call(|| self.module.mem_range_block(tdr, gpa, level))
            .and_then(|()| self.track_and_kick())
        {
            restore();
            return Err(self.bug(&e, base, level));
        }
        // Like DEMOTE, PROMOTE stops with TDX_INTERRUPTED_RESTARTABLE when a host interrupt
        // (an NMI or SMI, even with interrupts off) is pending; it is simply issued again
        // (intel/tdx-module `tdh_mem_page_promote.c`).
        let promoted = self.zap_call(|| {
            let mut r = self.module.mem_page_promote(tdr, gpa, level);
            let mut n = 0;
            while matches!(&r, Err(e) if e.status.is(TdxStatus::INTERRUPTED_RESTARTABLE))
                && n < RESTARTS
            {
                r = self.module.mem_page_promote(tdr, gpa, level);
                n += 1;
            }
            r
        });
        match promoted {
            Ok(freed) => {
                let freed = if freed.0 == 0 { sept_page } else { freed };
                match self.zap_call(|| self.module.phymem_page_wbinvd(freed, self.td.hkid)) {
                    Ok(()) => {
                        self.backends.phys.zero(freed, PAGE_SIZE_4K);
                        self.backends.pool.give_back(freed);
                    }
                    Err(_) => self.stats.add_zap(Counter::LeakedSeptPages, 1),
                }
                // Children stay frozen: the child table is detached until a later demotion.
                let leaf = Entry::Leaf { hpa, level, added };
                found.slot.store(leaf.encode(), Ordering::Release);
                self.stats.add_zap(Counter::Promotions, 1);
                Ok(PromoteOutcome::Promoted)
            }
            Err(e) if e.status.is(TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS) => {
                let unblocked = self.zap_call(|| self.module.mem_range_unblock(tdr, gpa, level));
                restore();
                match unblocked {
                    Ok(()) => {
                        self.stats.add_zap(Counter::PromotionsRejected, 1);
                        Ok(PromoteOutcome::Rejected)
                    }
                    Err(e) => Err(self.bug(&e, base, level)),
                }
            }
            Err(e) => {
                // The range stays blocked in the module unless it is unblocked; the TD is
                // bugged either way, but its other vCPUs need not fault on it meanwhile.
                let _ = self.zap_call(|| self.module.mem_range_unblock(tdr, gpa, level));
                restore();
                Err(self.bug(&e, base, level))
            }
        }
    }

    /// Teardown fast path, after TDH.MNG.KEY.FREEID (TD in TEARDOWN): takes every mapped page
    /// and every S-EPT page back with TDH.PHYMEM.PAGE.RECLAIM, clears it and returns it to its
    /// owner (guest pages to [`super::PrivateMemory`], S-EPT pages to the pool). Pages whose
    /// reclaim fails, and pages leaked earlier, stay leaked. Afterwards every operation answers
    /// [`SeptError::TornDown`]. The runtime calls it once no vCPU can run.
    ///
    /// This is [`SeptManager::reclaim_some`] without a budget; a runtime that must stay
    /// responsive calls `reclaim_some` in slices instead.
    pub fn reclaim_all(&self) -> Result<ReclaimReport, SeptError> {
        let mut total = ReclaimReport::default();
        loop {
            let progress = self.reclaim_some(u64::MAX)?;
            total.add(&progress.report);
            if progress.done {
                return Ok(total);
            }
        }
    }

    /// One bounded slice of the teardown reclaim (see [`SeptManager::reclaim_all`]): reclaims
    /// guest pages and S-EPT pages in ascending GFN order, children before the S-EPT page that
    /// maps them, until `max_units` 4 KiB-page units of work were done. A slice finishes the
    /// item it started (a 2 MiB leaf is 512 units) and the S-EPT pages whose children it just
    /// finished (at most one per level), so it may exceed `max_units` by that much, and every
    /// call makes progress. The first call marks the mirror torn
    /// down (faults and unmaps answer [`SeptError::TornDown`] from then on); later calls resume
    /// where the previous one stopped. Call until [`ReclaimProgress::done`].
    pub fn reclaim_some(&self, max_units: u64) -> Result<ReclaimProgress, SeptError> {
        let _zap = self.zap.lock();
        self.torn_down.store(true, Ordering::Release);
        let mut slice = ReclaimSlice {
            cursor: self
                .reclaim_cursor
                .load(core::sync::atomic::Ordering::Relaxed),
            budget: max_units.max(1),
            units: 0,
            report: ReclaimReport::default(),
        };
        let done = self.reclaim_dir(&self.root, self.top_level, 0, &mut slice);
        self.reclaim_cursor
            .store(slice.cursor, core::sync::atomic::Ordering::Relaxed);
        let report = slice.report;
        self.stats
            .add_zap(Counter::ReclaimedPages4k, report.pages_4k);
        self.stats
            .add_zap(Counter::ReclaimedSeptPages, report.sept_pages);
        self.stats
            .add_zap(Counter::LeakedSeptPages, report.leaked_sept_pages);
        Ok(ReclaimProgress {
            report,
            units: slice.units,
            done,
        })
    }

    /// Walks `dir` (entries at `level`, first GFN `base`) from the slice's cursor; returns
    /// false when the budget ran out inside it.
    fn reclaim_dir(&self, dir: &DirTable, level: u32, base: u64, slice: &mut ReclaimSlice) -> bool {
        let span = 1u64 << (9 * level);
        for (i, e) in dir.entries.iter().enumerate() {
            let gfn = base + ((i as u64) << (9 * level));
            let end = gfn + span;
            if slice.cursor >= end {
                continue;
            }
            match Entry::decode(e.load(Ordering::Acquire)) {
                Entry::NonLeaf { sept_page, .. } => {
                    let children_done = match dir.child(i) {
                        Some(Child::Dir(d)) => self.reclaim_dir(d, level - 1, gfn, slice),
                        Some(Child::Pt(p)) => self.reclaim_pt(p, gfn, slice),
                        None => true,
                    };
                    if !children_done {
                        return false;
                    }
                    // Reclaimed even when the children used up the budget: once the cursor
                    // passes a range, its table page is done (at most one page per level over
                    // budget).
                    slice.units += 1;
                    if self.reclaim_one(sept_page) {
                        self.backends.phys.zero(sept_page, PAGE_SIZE_4K);
                        self.backends.pool.give_back(sept_page);
                        slice.report.sept_pages += 1;
                        e.store(EMPTY, Ordering::Release);
                    } else {
                        slice.report.leaked_sept_pages += 1;
                    }
                }
                other => {
                    if !self.reclaim_leaf(e, other, gfn, slice) {
                        return false;
                    }
                }
            }
            slice.cursor = end;
        }
        true
    }

    fn reclaim_pt(&self, pt: &PtTable, base: u64, slice: &mut ReclaimSlice) -> bool {
        for (i, e) in pt.entries.iter().enumerate() {
            let gfn = base + i as u64;
            if slice.cursor > gfn {
                continue;
            }
            if !self.reclaim_leaf(e, Entry::decode(e.load(Ordering::Acquire)), gfn, slice) {
                return false;
            }
            slice.cursor = gfn + 1;
        }
        true
    }

    /// Reclaims one leaf; false (nothing done) if the slice's budget is spent.
    fn reclaim_leaf(
        &self,
        slot: &AtomicU64,
        entry: Entry,
        gfn: u64,
        slice: &mut ReclaimSlice,
    ) -> bool {
        match entry {
            Entry::Leaf { hpa, level, .. } => {
                if slice.exhausted() {
                    return false;
                }
                slice.units += level.pages_4k();
                if self.reclaim_one(hpa) {
                    self.backends.phys.zero(hpa, level.size());
                    self.backends.memory.release(Gfn(gfn), hpa, level);
                    slice.report.pages_4k += level.pages_4k();
                    slot.store(EMPTY, Ordering::Release);
                } else {
                    slice.report.leaked_pages_4k += level.pages_4k();
                    slot.store(Entry::Leaked { hpa, level }.encode(), Ordering::Release);
                    self.stats.add_zap(Counter::LeakedPages4k, level.pages_4k());
                }
            }
            Entry::Leaked { level, .. } => slice.report.leaked_pages_4k += level.pages_4k(),
            _ => {}
        }
        true
    }

    /// TDH.PHYMEM.PAGE.RECLAIM; a failure is logged once per TD and leaks the page.
    fn reclaim_one(&self, hpa: Hpa) -> bool {
        match self.module.phymem_page_reclaim(hpa) {
            Ok(_) => true,
            Err(e) => {
                if !self
                    .reclaim_warned
                    .swap(true, core::sync::atomic::Ordering::Relaxed)
                {
                    log::warn!(
                        "sept: TD (TDR {}): {e} for page {hpa}; page leaked (further failures counted only)",
                        self.td.tdr
                    );
                }
                false
            }
        }
    }

    fn corrupt_at(&self, gfn: u64, level: PageLevel) -> SeptError {
        self.record_bug(BugReport {
            cause: BugCause::MirrorCorrupt,
            gfn: Gfn(gfn),
            level,
        })
    }
}

/// State of one `reclaim_some` walk.
struct ReclaimSlice {
    /// GFNs below this are done (earlier slices or this one).
    cursor: u64,
    budget: u64,
    units: u64,
    report: ReclaimReport,
}

impl ReclaimSlice {
    fn exhausted(&self) -> bool {
        self.units >= self.budget
    }
}
