//! TD teardown in the order the hardware requires (tdx-reference §1.9), fast path: once every
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
//! `HostConfig::slow_teardown` first removes every private page with BLOCK/TRACK/REMOVE while
//! the key is live (`unmap_all`), the way a VMM without a terminate step does, for
//! comparison.

use alloc::string::String;
use alloc::vec::Vec;

use crate::abi::{Hpa, Leaf, PAGE_SIZE_4K, TdxStatus};
use crate::pool::MemoryUse;
use crate::seamcall::{Regs, TdxModule};
use crate::sept::MappingKind;
use crate::td::lifecycle::{TdEvent, TdState};

use super::bringup::CpuCallError;
use super::seam::call_retry_busy;
use super::{EventKind, Host, QUIESCE_TIMEOUT_MS, Td, TdId};

/// Resumptions of TDH.PHYMEM.CACHE.WB after `TDX_INTERRUPTED_RESUMABLE` (Linux: 10000).
const CACHE_WB_RESUMES: u32 = 10_000;

impl Host {
    pub(super) fn teardown_step(&mut self, id: TdId, now: u64) {
        let Some(td) = self.tds.get(&id) else {
            return;
        };
        td.shared.halt();
        if !td.shared.quiescent() {
            if now.saturating_sub(td.destroy_started_ms) < QUIESCE_TIMEOUT_MS {
                return;
            }
            // Runners did not park the vCPUs in time: flush them from here.
            log::warn!(
                "host: TD {}: runners did not park its vCPUs; flushing",
                id.0
            );
            for v in &td.shared.vcpus.vcpus {
                if v.entered.load(core::sync::atomic::Ordering::Acquire)
                    && !v.flushed.load(core::sync::atomic::Ordering::Acquire)
                {
                    let mut r = Regs::for_leaf(Leaf::VpFlush, 0);
                    r.rcx = v.tdvpr.0;
                    let _ = self.call_on_cpu(v.cpu, r);
                    v.flushed.store(true, core::sync::atomic::Ordering::Release);
                }
                v.parked.store(true, core::sync::atomic::Ordering::Release);
            }
        }
        for r in &self.runners {
            r.unbind_td(&td.shared);
        }
        let Some(mut td) = self.tds.remove(&id) else {
            return;
        };
        let result = self.teardown(&mut td);
        let stats = td.shared.sept.stats();
        let mut seamcalls = core::mem::take(&mut self.retired_seamcalls);
        td.seam_counters.add_to(&mut seamcalls);
        self.retired_seamcalls = seamcalls;
        self.retired_faults += stats.faults;
        self.retired_busy += stats.retries_busy + stats.zap_busy_retries;
        let leaked = td.leaked_pages;
        self.tds.insert(id, td);
        if let Err(reason) = result {
            self.bug_td(id, reason, now);
            let _ = self.apply(id, TdEvent::Destroy, now);
        }
        let _ = self.apply(id, TdEvent::TeardownDone, now);
        self.leaked_pages += leaked;
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
            Err(e) if e.is_busy() => call_retry_busy(&*self.main, {
                let mut r = Regs::for_leaf(Leaf::PhymemPageReclaim, 0);
                r.rcx = page.0;
                r
            })
            .is_ok(),
            Err(_) => self.module_does_not_own(page),
        }
    }

    /// TDH.PHYMEM.PAGE.RDMD says the page is `PT_NDA` (not the module's).
    fn module_does_not_own(&self, page: Hpa) -> bool {
        self.main
            .phymem_page_rdmd(page)
            .is_ok_and(|m| m.page_type == crate::abi::pamt::PageType::Nda.raw())
    }

    /// Runs the whole teardown of `td` (which must be quiescent and unbound). Returns the
    /// first failure's description.
    pub(super) fn teardown(&mut self, td: &mut Td) -> Result<(), String> {
        let mut first: Option<String> = None;
        let td_id = td.shared.id.0;
        let mut note = |e: String| {
            if first.is_none() {
                log::error!("host: TD {td_id} teardown: {e}");
                first = Some(e);
            }
        };
        let tdr = td.tdr;
        if self.config.slow_teardown
            && td.shared.sept.is_runnable()
            && let Err(e) = td.shared.sept.unmap_all()
        {
            note(alloc::format!("unmap_all: {e}"));
        }
        let mut key_freed = false;
        match call_retry_busy(&*self.main, {
            let mut r = Regs::for_leaf(Leaf::MngVpFlushDone, 0);
            r.rcx = tdr.0;
            r
        }) {
            Ok(_) => {
                let mut wb_ok = true;
                for cpu in self.cpus.one_cpu_per_package() {
                    let mut resume = 0;
                    let mut done = false;
                    for _ in 0..CACHE_WB_RESUMES {
                        let mut r = Regs::for_leaf(Leaf::PhymemCacheWb, 0);
                        r.rcx = resume;
                        match self.call_on_cpu(cpu, r) {
                            Ok(_) => {
                                done = true;
                                break;
                            }
                            Err(CpuCallError::Seam(e))
                                if e.status.is(TdxStatus::INTERRUPTED_RESUMABLE) =>
                            {
                                resume = 1;
                            }
                            Err(CpuCallError::Seam(e)) => {
                                note(alloc::format!("{e} on CPU {cpu}"));
                                break;
                            }
                            Err(CpuCallError::Platform(p)) => {
                                note(alloc::format!("TDH.PHYMEM.CACHE.WB: {p}"));
                                break;
                            }
                        }
                    }
                    wb_ok &= done;
                }
                if wb_ok {
                    match call_retry_busy(&*self.main, {
                        let mut r = Regs::for_leaf(Leaf::MngKeyFreeId, 0);
                        r.rcx = tdr.0;
                        r
                    }) {
                        Ok(_) => key_freed = true,
                        Err(e) => note(alloc::format!("{e}")),
                    }
                }
            }
            Err(e) => note(alloc::format!("{e}")),
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
            note(alloc::format!("KeyID {} leaked", td.hkid));
            self.free_unused_control(td);
            return Err(first.unwrap_or_default());
        }
        self.free_hkids.push(td.hkid);
        td.hkid_live = false;
        // S-EPT and private pages (fast path: PAGE.RECLAIM only).
        if let Err(e) = td.shared.sept.reclaim_all() {
            note(alloc::format!("reclaim_all: {e}"));
        }
        let mut still_leaked: Vec<Hpa> = Vec::new();
        td.shared.sept.for_each_mapping(&mut |m| {
            if let MappingKind::Leaked { hpa, level } = m.kind {
                for i in 0..level.pages_4k() {
                    still_leaked.push(hpa.add(i * PAGE_SIZE_4K));
                }
            }
        });
        // Pages the manager leaked after a failed call: give back those the module does
        // not own (or reclaim them now).
        still_leaked.retain(|p| !(self.module_does_not_own(*p) || self.reclaim_page(*p)));
        if !still_leaked.is_empty() {
            note(alloc::format!(
                "{} guest pages could not be reclaimed",
                still_leaked.len()
            ));
        }
        for p in &still_leaked {
            self.phys.zero(*p, 0);
        }
        let (_, kept) = td.backing.free_except(&self.pool, &still_leaked);
        td.leaked_pages += kept;
        let main = self.main.clone();
        let (_, sept_leaked) = td.sept_cache.free_checked(&self.pool, &|p| {
            main.phymem_page_rdmd(p)
                .is_ok_and(|m| m.page_type == crate::abi::pamt::PageType::Nda.raw())
        });
        if sept_leaked > 0 {
            note(alloc::format!(
                "{sept_leaked} S-EPT pages could not be reclaimed"
            ));
        }
        td.leaked_pages += sept_leaked;
        // vCPU pages, TDCS, then the TDR.
        let mut control: Vec<Hpa> = Vec::new();
        for (tdvpr, tdcx) in &td.vcpu_pages {
            control.extend(tdcx.iter().copied());
            control.push(*tdvpr);
        }
        control.extend(td.tdcs.iter().copied());
        for page in control {
            if self.reclaim_page(page) {
                self.phys.zero(page, PAGE_SIZE_4K);
                let _ = self.pool.free_4k(page, MemoryUse::Control);
            } else {
                td.leaked_pages += 1;
                note(alloc::format!("control page {page} could not be reclaimed"));
            }
        }
        let tdr_back = match self.main.phymem_page_reclaim(tdr) {
            Ok(_) => match self.main.phymem_page_wbinvd(tdr, self.global_hkid) {
                Ok(()) => true,
                Err(e) => {
                    note(alloc::format!("{e} (TDR)"));
                    false
                }
            },
            Err(e) => {
                note(alloc::format!("{e} (TDR)"));
                self.module_does_not_own(tdr)
            }
        };
        if tdr_back {
            self.phys.zero(tdr, PAGE_SIZE_4K);
            let _ = self.pool.free_4k(tdr, MemoryUse::Control);
        } else {
            td.leaked_pages += 1;
        }
        self.free_unused_control(td);
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Control pages allocated for vCPUs the module never saw.
    fn free_unused_control(&self, td: &mut Td) {
        for p in core::mem::take(&mut td.unused_control) {
            let _ = self.pool.free_4k(p, MemoryUse::Control);
        }
    }
}
