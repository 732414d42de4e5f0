//! TD teardown in the order the TDX module requires (Intel TDX Module 1.5 ABI specification;
//! Linux `arch/x86/kvm/vmx/tdx.c`, `tdx_mmu_release_hkid()`), fast path: once every
//! vCPU is parked (runners issued TDH.VP.FLUSH on their CPUs), TDH.MNG.VPFLUSHDONE,
//! TDH.PHYMEM.CACHE.WB on one CPU per package, TDH.MNG.KEY.FREEID (the KeyID is free again),
//! then TDH.PHYMEM.PAGE.RECLAIM of the S-EPT and private pages (the S-EPT manager's
//! `reclaim_all`), the TDCX and TDVPR pages of every vCPU, the TDCS pages, and the TDR last,
//! followed by TDH.PHYMEM.PAGE.WBINVD of the TDR with the global KeyID. Every page that comes
//! back is cleared and returned to the pool; counters prove it.
//!
//! Failures: the first is logged, the TD is marked bugged, and the pages the module may
//! still own stay allocated (leaked, counted). A page the manager had leaked after a failed
//! SEAMCALL is returned only if TDH.PHYMEM.PAGE.RDMD shows the module does not own it (e.g.
//! the failed call never took it). If TDH.MNG.KEY.FREEID cannot run, nothing can be reclaimed:
//! the KeyID and every page of the TD are leaked. Nothing panics.
//!
//! Teardown is a stepped job ([`TeardownJob`]) like the build: each [`Host::step`] does at most
//! `HostConfig::teardown_pages_per_step` 4 KiB-page units of reclaim work (S-EPT manager
//! `reclaim_some` slices, then control pages), so a TD with 1 GiB mapped at 4 KiB (262,144
//! RECLAIMs) never holds the poll loop for long. The TD stays `Destroying` until the TDR is
//! back. The key release (VPFLUSHDONE, CACHE.WB, KEY.FREEID) runs in the first slice; pool
//! pages go back in the slice after the S-EPT walk ends, so pool counts are exact throughout.
//!
//! `HostConfig::slow_teardown` first removes every private page with BLOCK/TRACK/REMOVE while
//! the key is live (`unmap_all`, in the first slice, not bounded), the way a VMM without a
//! terminate step does, for comparison benchmarks only.

use alloc::string::String;
use alloc::vec::Vec;

use crate::pool::MemoryUse;
use crate::sept::MappingKind;
use crate::td::lifecycle::{TdEvent, TdState};
use tdx_abi::seamcall::TdxModule;
use tdx_abi::{Hpa, PAGE_SIZE_4K, TdxStatus};

use super::bringup::CpuCallError;
use super::seam::RetryBusy;
use super::{EventKind, Host, QUIESCE_TIMEOUT_MS, Td, TdId};

/// Resumptions of TDH.PHYMEM.CACHE.WB after `TDX_INTERRUPTED_RESUMABLE` (Linux: 10000).
const CACHE_WB_RESUMES: u32 = 10_000;

impl Host {
    /// TDH.VP.FLUSH, on its CPU, of every vCPU of `td` that no runner flushed (they are
    /// associated with that CPU from TDH.VP.INIT on), and parks them: for vCPUs that no runner
    /// serves any more (a failed create, runners that did not park in time). A vCPU counts as
    /// flushed when the module says so, or that it is associated nowhere; one whose flush
    /// failed otherwise stays unflushed, for the next attempt. Returns whether all are.
    pub(super) fn flush_vcpus_from_host(&self, td: &Td) -> bool {
        use core::sync::atomic::Ordering;
        let mut all = true;
        for v in &td.shared.vcpus.vcpus {
            if !v.flushed.load(Ordering::Acquire) {
                let tdvpr = v.tdvpr;
                let flushed = match self.call_on_cpu(v.cpu, &|m| m.vp_flush(tdvpr)) {
                    Ok(()) => true,
                    Err(CpuCallError::Seam(e)) => e.status.is(TdxStatus::VCPU_NOT_ASSOCIATED),
                    Err(CpuCallError::Platform(_)) => false,
                };
                v.flushed.store(flushed, Ordering::Release);
                all &= flushed;
            }
            v.parked.store(true, Ordering::Release);
        }
        all
    }

    /// One slice of TD `id`'s teardown: waits (bounded) for the runners to park its vCPUs,
    /// then reclaims up to `teardown_pages_per_step` units; when the TDR is back, the TD's
    /// counters are retired and it leaves the host.
    pub(super) fn teardown_step(&mut self, id: TdId, now: u64) {
        let Some(td) = self.tds.get(&id) else {
            return;
        };
        td.shared.halt();
        if !td.shared.quiescent() {
            let waited = now.saturating_sub(td.destroy_started_ms);
            if waited < QUIESCE_TIMEOUT_MS {
                return;
            }
            // Runners did not park the vCPUs in time: flush them from here, again on later
            // steps while a flush fails, for as long again; then the teardown goes on (and
            // leaks what the module still holds).
            if !td.teardown_flush_warned {
                log::warn!(
                    "host: TD {}: runners did not park its vCPUs; flushing",
                    id.0
                );
            }
            let flushed = self.flush_vcpus_from_host(td);
            if let Some(t) = self.tds.get_mut(&id) {
                t.teardown_flush_warned = true;
            }
            if !flushed && waited < 2 * QUIESCE_TIMEOUT_MS {
                return;
            }
        }
        let Some(td) = self.tds.get(&id) else {
            return;
        };
        if td.teardown.is_none() {
            for r in &self.runners {
                r.unbind_td(&td.shared);
            }
        }
        let Some(mut td) = self.tds.remove(&id) else {
            return;
        };
        let mut job = td.teardown.take().unwrap_or_default();
        let budget = u64::from(self.config.teardown_pages_per_step.max(1));
        if !self.teardown_slice(&mut td, &mut job, budget) {
            td.teardown = Some(job);
            self.tds.insert(id, td);
            return;
        }
        let result = job.result();
        self.retired.add_counters(&td);
        let leaked = td.leaked_pages;
        self.tds.insert(id, td);
        if let Err(reason) = result {
            self.bug_td(id, reason, now);
            let _ = self.apply(id, TdEvent::Destroy, now);
        }
        let _ = self.apply(id, TdEvent::TeardownDone, now);
        self.retired.leaked_pages += leaked;
        if let Some(td) = self.tds.remove(&id)
            && leaked > 0
        {
            self.push_event(
                now,
                EventKind::Host {
                    message: alloc::format!(
                        "TD {} ({}) destroyed; {leaked} pages leaked",
                        id.0,
                        td.name
                    ),
                },
            );
        }
        debug_assert!(!self.tds.contains_key(&id));
        let _ = TdState::Destroyed;
    }

    /// Reclaims a page the module owned; true if it may go back to the pool.
    fn reclaim_page(&self, page: Hpa) -> bool {
        match self.main.phymem_page_reclaim(page) {
            Ok(_) => true,
            Err(e) if e.is_busy() => RetryBusy(&*self.main).phymem_page_reclaim(page).is_ok(),
            Err(_) => self.module_does_not_own(page),
        }
    }

    /// TDH.PHYMEM.PAGE.RDMD says the page is `PT_NDA` (not the module's).
    fn module_does_not_own(&self, page: Hpa) -> bool {
        self.main
            .phymem_page_rdmd(page)
            .is_ok_and(|m| m.page_type == tdx_abi::pamt::PageType::Nda.raw())
    }

    /// Runs the whole teardown of `td` (which must be quiescent and unbound) at once (TDs that
    /// failed while being created hold no guest pages yet). Returns the first failure's
    /// description.
    pub(super) fn teardown(&mut self, td: &mut Td) -> Result<(), String> {
        let mut job = TeardownJob::default();
        while !self.teardown_slice(td, &mut job, u64::MAX) {}
        job.result()
    }

    /// Advances `job` on `td` by at most about `budget` 4 KiB-page units of reclaim work;
    /// returns true when the teardown is complete.
    pub(super) fn teardown_slice(
        &mut self,
        td: &mut Td,
        job: &mut TeardownJob,
        budget: u64,
    ) -> bool {
        let mut spent = 0u64;
        loop {
            if spent >= budget {
                return false;
            }
            match core::mem::replace(&mut job.phase, TeardownPhase::Done) {
                TeardownPhase::ReleaseKey => {
                    job.phase = if self.release_key(td, job) {
                        TeardownPhase::Reclaim
                    } else {
                        TeardownPhase::Done
                    };
                    spent += 1;
                }
                TeardownPhase::Reclaim => match td.shared.sept.reclaim_some(budget - spent) {
                    Ok(progress) => {
                        spent += progress.units.max(1);
                        job.phase = if progress.done {
                            TeardownPhase::ReturnPages
                        } else {
                            TeardownPhase::Reclaim
                        };
                    }
                    Err(e) => {
                        job.note(td.shared.id.0, alloc::format!("reclaim: {e}"));
                        job.phase = TeardownPhase::ReturnPages;
                    }
                },
                TeardownPhase::ReturnPages => {
                    let control = self.return_guest_and_sept_pages(td, job);
                    spent += 1;
                    job.phase = TeardownPhase::Control { pages: control };
                }
                TeardownPhase::Control { mut pages } => {
                    // Popped from the end: vCPU pages first, TDCS pages after them.
                    while spent < budget {
                        let Some(page) = pages.pop() else {
                            break;
                        };
                        spent += 1;
                        if self.reclaim_page(page) {
                            self.phys.zero(page, PAGE_SIZE_4K);
                            let _ = self.pool.free_4k(page, MemoryUse::Control);
                        } else {
                            td.leaked_pages += 1;
                            job.note(
                                td.shared.id.0,
                                alloc::format!("control page {page} could not be reclaimed"),
                            );
                        }
                    }
                    job.phase = if pages.is_empty() {
                        TeardownPhase::Tdr
                    } else {
                        TeardownPhase::Control { pages }
                    };
                }
                TeardownPhase::Tdr => {
                    self.reclaim_tdr(td, job);
                    self.free_unused_control(td);
                    job.phase = TeardownPhase::Done;
                    return true;
                }
                TeardownPhase::Done => return true,
            }
        }
    }

    /// Slow path unmap (if configured), TDH.MNG.VPFLUSHDONE, TDH.PHYMEM.CACHE.WB on one CPU per
    /// package, TDH.MNG.KEY.FREEID. False if the key could not be freed: then every page of the
    /// TD is counted leaked and the teardown ends.
    fn release_key(&mut self, td: &mut Td, job: &mut TeardownJob) -> bool {
        let td_id = td.shared.id.0;
        let tdr = td.tdr;
        if self.config.slow_teardown
            && td.shared.sept.is_runnable()
            && let Err(e) = td.shared.sept.unmap_all()
        {
            job.note(td_id, alloc::format!("unmap_all: {e}"));
        }
        let mut key_freed = false;
        match RetryBusy(&*self.main).mng_vpflushdone(tdr) {
            Ok(_) => {
                let mut wb_ok = true;
                for cpu in self.cpus.one_cpu_per_package() {
                    let mut resume = false;
                    let mut done = false;
                    for _ in 0..CACHE_WB_RESUMES {
                        match self.call_on_cpu(cpu, &|m| m.phymem_cache_wb(resume)) {
                            Ok(_) => {
                                done = true;
                                break;
                            }
                            Err(CpuCallError::Seam(e))
                                if e.status.is(TdxStatus::INTERRUPTED_RESUMABLE) =>
                            {
                                resume = true;
                            }
                            Err(CpuCallError::Seam(e)) => {
                                job.note(td_id, alloc::format!("{e} on CPU {cpu}"));
                                break;
                            }
                            Err(CpuCallError::Platform(p)) => {
                                job.note(td_id, alloc::format!("TDH.PHYMEM.CACHE.WB: {p}"));
                                break;
                            }
                        }
                    }
                    wb_ok &= done;
                }
                if wb_ok {
                    match RetryBusy(&*self.main).mng_key_freeid(tdr) {
                        Ok(_) => key_freed = true,
                        Err(e) => job.note(td_id, alloc::format!("{e}")),
                    }
                }
            }
            Err(e) => job.note(td_id, alloc::format!("{e}")),
        }
        if !key_freed {
            // Nothing can be reclaimed while the TD holds its key: leak it all.
            let control = 1
                + td.tdcs.len() as u64
                + td.vcpu_pages
                    .iter()
                    .map(|(_, cx)| 1 + cx.len() as u64)
                    .sum::<u64>();
            td.leaked_pages += td.backing.pages() + td.sept_cache.pages() + control;
            job.note(td_id, alloc::format!("KeyID {} leaked", td.hkid));
            self.free_unused_control(td);
            return false;
        }
        self.hkids.give_back(td.hkid);
        td.hkid_live = false;
        true
    }

    /// After the S-EPT walk: retries pages the manager leaked, returns the guest backing and
    /// the S-EPT pages to the pool. Returns the control pages still to reclaim (TDR excluded),
    /// in the order they are popped: vCPU pages (TDCX, then TDVPR) first, then the TDCS pages.
    fn return_guest_and_sept_pages(&mut self, td: &mut Td, job: &mut TeardownJob) -> Vec<Hpa> {
        let td_id = td.shared.id.0;
        let mut still_leaked: Vec<Hpa> = Vec::new();
        td.shared.sept.for_each_mapping(&mut |m| {
            if let MappingKind::Leaked { hpa, level } = m.kind {
                for i in 0..level.pages_4k() {
                    still_leaked.push(hpa.add(i * PAGE_SIZE_4K));
                }
            }
        });
        // Pages the manager leaked after a failed call: give back those the module does
        // not own (or reclaim them now), cleared first, as every page that was private is
        // (KVM's `tdx_reclaim_page` clears after each reclaim).
        still_leaked.retain(|p| {
            let back = self.module_does_not_own(*p) || self.reclaim_page(*p);
            if back {
                self.phys.zero(*p, PAGE_SIZE_4K);
            }
            !back
        });
        if !still_leaked.is_empty() {
            job.note(
                td_id,
                alloc::format!("{} guest pages could not be reclaimed", still_leaked.len()),
            );
        }
        let (_, kept) = td.backing.free_except(&self.pool, &still_leaked);
        td.leaked_pages += kept;
        let main = self.main.clone();
        // An S-EPT page outside the cache's free list that the module no longer owns held the
        // TD's tables: it is cleared on its way back to the pool.
        let (_, sept_leaked) = td.sept_cache.free_checked(&self.pool, &|p| {
            let free = main
                .phymem_page_rdmd(p)
                .is_ok_and(|m| m.page_type == tdx_abi::pamt::PageType::Nda.raw());
            if free {
                self.phys.zero(p, PAGE_SIZE_4K);
            }
            free
        });
        if sept_leaked > 0 {
            job.note(
                td_id,
                alloc::format!("{sept_leaked} S-EPT pages could not be reclaimed"),
            );
        }
        td.leaked_pages += sept_leaked;
        // Popped from the end: vCPU pages, then TDCS; the TDR comes last on its own.
        let mut control: Vec<Hpa> = td.tdcs.iter().rev().copied().collect();
        for (tdvpr, tdcx) in td.vcpu_pages.iter().rev() {
            control.push(*tdvpr);
            control.extend(tdcx.iter().rev().copied());
        }
        control
    }

    /// TDH.PHYMEM.PAGE.RECLAIM of the TDR, then TDH.PHYMEM.PAGE.WBINVD with the global KeyID.
    fn reclaim_tdr(&mut self, td: &mut Td, job: &mut TeardownJob) {
        let td_id = td.shared.id.0;
        let tdr = td.tdr;
        let tdr_back = match self.main.phymem_page_reclaim(tdr) {
            Ok(_) => match self.main.phymem_page_wbinvd(tdr, self.global_hkid) {
                Ok(()) => true,
                Err(e) => {
                    job.note(td_id, alloc::format!("{e} (TDR)"));
                    false
                }
            },
            Err(e) => {
                job.note(td_id, alloc::format!("{e} (TDR)"));
                self.module_does_not_own(tdr)
            }
        };
        if tdr_back {
            self.phys.zero(tdr, PAGE_SIZE_4K);
            let _ = self.pool.free_4k(tdr, MemoryUse::Control);
        } else {
            td.leaked_pages += 1;
        }
    }

    /// Control pages allocated for vCPUs the module never saw.
    fn free_unused_control(&self, td: &mut Td) {
        for p in core::mem::take(&mut td.unused_control) {
            let _ = self.pool.free_4k(p, MemoryUse::Control);
        }
    }
}

/// Where a TD's teardown is (see the module docs).
#[derive(Default)]
pub(super) enum TeardownPhase {
    /// VPFLUSHDONE, CACHE.WB, KEY.FREEID.
    #[default]
    ReleaseKey,
    /// S-EPT manager `reclaim_some` slices.
    Reclaim,
    /// Leaked-page retries; backing and S-EPT pages back to the pool.
    ReturnPages,
    /// TDCX, TDVPR and TDCS pages still to reclaim (popped from the end).
    Control {
        /// Pages left.
        pages: Vec<Hpa>,
    },
    /// The TDR, last.
    Tdr,
    /// Nothing left.
    Done,
}

/// A TD teardown in progress.
#[derive(Default)]
pub(super) struct TeardownJob {
    phase: TeardownPhase,
    first: Option<String>,
}

impl TeardownJob {
    /// Records a failure; the first one is logged and becomes the TD's reason.
    fn note(&mut self, td: u64, e: String) {
        if self.first.is_none() {
            log::error!("host: TD {td} teardown: {e}");
            self.first = Some(e);
        }
    }

    /// The first failure, if any.
    fn result(&self) -> Result<(), String> {
        match &self.first {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}
