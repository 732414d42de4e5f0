//! The TD build job (the build sequence of the Intel TDX Module 1.5 ABI specification, as
//! Linux `arch/x86/kvm/vmx/tdx.c` runs it): page by page in plan order, TDH.MEM.PAGE.ADD
//! through [`SeptManager::map_private`](crate::sept::SeptManager::map_private) with the source
//! page in the request, then the page's 16 TDH.MR.EXTENDs if its section is measured; the TD
//! HOB goes into its page's source; finally TDH.MR.FINALIZE. [`Host::step`] runs
//! `build_pages_per_step` pages per call. BUSY answers are retried on the next step; any
//! other failure fails (expected) or bugs (unexpected module status) the TD.

use core::sync::atomic::Ordering;

use crate::sept::{FaultRequest, MapOutcome, SeptError};
use crate::td::lifecycle::TdEvent;
use crate::tdvf::{BuildPlan, MR_EXTEND_CHUNK_SIZE, MR_EXTENDS_PER_PAGE, PageSource, PlannedPage};
use tdx_abi::seamcall::TdxModule;
use tdx_abi::{Hpa, PAGE_SIZE_4K};

use super::{Host, TdId};

/// Progress of one TD's build.
pub(crate) struct BuildJob {
    plan: BuildPlan,
    next: u64,
    added: bool,
    extends: u64,
}

impl BuildJob {
    pub(crate) fn new(plan: BuildPlan) -> Self {
        BuildJob {
            plan,
            next: 0,
            added: false,
            extends: 0,
        }
    }
    pub(crate) fn next_page(&self) -> u64 {
        self.next
    }
    pub(crate) fn page_count(&self) -> u64 {
        self.plan.page_count()
    }
}

/// What a build step ended with.
enum StepEnd {
    /// Budget used or BUSY: continue next step.
    Later,
    /// All pages added and measured.
    Finalize,
    /// Expected failure.
    Fail(alloc::string::String),
    /// Unexpected failure.
    Bug(alloc::string::String),
}

impl Host {
    /// Fills the scratch source page with `page`'s contents, or names the stored image page
    /// that already holds them, and returns the source HPA.
    fn source_page(&self, image: &str, job: &BuildJob, page: &PlannedPage) -> Option<Hpa> {
        let img = self.images.get(image)?;
        let mut buf = [0u8; PAGE_SIZE_4K as usize];
        match page.source {
            PageSource::Image { offset, len } => {
                if let Some(hpa) = img.whole_page(offset, u64::from(len)) {
                    return Some(hpa);
                }
                let n = (len as usize).min(buf.len());
                if let Some(dst) = buf.get_mut(..n) {
                    img.read(&*self.phys, offset, dst);
                }
            }
            PageSource::TdHob { offset } => {
                let hob = job.plan.td_hob();
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(hob.len());
                let end = start.saturating_add(buf.len()).min(hob.len());
                if let (Some(src), Some(dst)) = (hob.get(start..end), buf.get_mut(..end - start)) {
                    dst.copy_from_slice(src);
                }
            }
            PageSource::Zero => {}
        }
        self.phys.write(self.scratch_source, &buf);
        Some(self.scratch_source)
    }

    pub(super) fn build_step(&mut self, id: TdId, now: u64) {
        let Some(td) = self.tds.get_mut(&id) else {
            return;
        };
        let Some(mut job) = td.build.take() else {
            return;
        };
        let shared = td.shared.clone();
        let image = td.image.clone();
        let tdr = td.tdr;
        let cpu = self.runners.len();
        let mut budget = self.config.build_pages_per_step.max(1);
        let end = loop {
            if job.next >= job.plan.page_count() {
                break StepEnd::Finalize;
            }
            if budget == 0 {
                break StepEnd::Later;
            }
            let Some(page) = job.plan.page(job.next) else {
                break StepEnd::Bug(alloc::format!("build plan has no page {}", job.next));
            };
            if !job.added {
                let Some(src) = self.source_page(&image, &job, &page) else {
                    break StepEnd::Fail(alloc::format!("image {image} is gone"));
                };
                let req = FaultRequest::new(page.gpa.gfn()).source(src).cpu(cpu);
                match shared.sept.map_private(req) {
                    Ok(MapOutcome::Mapped { .. }) => {
                        job.added = true;
                        job.extends = 0;
                    }
                    Ok(MapOutcome::AlreadyMapped { .. }) => {
                        break StepEnd::Fail(alloc::format!(
                            "firmware sections overlap at GPA {:#x}",
                            page.gpa.0
                        ));
                    }
                    Ok(MapOutcome::Retry) => break StepEnd::Later,
                    Err(SeptError::Bugged(r)) => break StepEnd::Bug(alloc::format!("S-EPT: {r}")),
                    Err(e) => {
                        break StepEnd::Fail(alloc::format!(
                            "adding GPA {:#x} failed: {e}",
                            page.gpa.0
                        ));
                    }
                }
            }
            if page.extend {
                let mut busy = false;
                while job.extends < MR_EXTENDS_PER_PAGE {
                    let gpa = page.gpa.add(job.extends * MR_EXTEND_CHUNK_SIZE);
                    match self.main.mr_extend(tdr, gpa) {
                        Ok(()) => job.extends += 1,
                        Err(e) if e.is_busy() => {
                            shared.counters.busy_retries.fetch_add(1, Ordering::Relaxed);
                            busy = true;
                            break;
                        }
                        Err(e) => {
                            return self.build_failed(
                                id,
                                StepEnd::Bug(alloc::format!("{e} at GPA {:#x}", gpa.0)),
                                now,
                            );
                        }
                    }
                }
                if busy {
                    break StepEnd::Later;
                }
            }
            job.next += 1;
            job.added = false;
            budget -= 1;
        };
        match end {
            StepEnd::Later => {
                if let Some(td) = self.tds.get_mut(&id) {
                    td.build = Some(job);
                }
            }
            StepEnd::Finalize => match self.main.mr_finalize(tdr) {
                Ok(()) => self.finalized(id, now),
                Err(e) if e.is_busy() => {
                    if let Some(td) = self.tds.get_mut(&id) {
                        td.build = Some(job);
                    }
                }
                Err(e) => self.build_failed(id, StepEnd::Bug(alloc::format!("{e}")), now),
            },
            other => self.build_failed(id, other, now),
        }
    }

    fn build_failed(&mut self, id: TdId, end: StepEnd, now: u64) {
        match end {
            StepEnd::Bug(reason) => self.bug_td(id, reason, now),
            StepEnd::Fail(reason) => self.fail_td(id, reason, now),
            _ => {}
        }
    }

    fn finalized(&mut self, id: TdId, now: u64) {
        let Some(td) = self.tds.get(&id) else {
            return;
        };
        let mut mrtd = [0u8; 48];
        for (i, chunk) in mrtd.chunks_mut(8).enumerate() {
            match self
                .main
                .mng_rd(td.tdr, tdx_abi::metadata::td::MRTD + i as u64)
            {
                Ok(v) => chunk.copy_from_slice(&v.to_le_bytes()),
                Err(e) => return self.bug_td(id, alloc::format!("{e} reading MRTD"), now),
            }
        }
        td.shared.sept.set_runnable();
        let firmware = self.images.get(&td.image).and_then(|i| i.firmware());
        let expected = firmware.map(|(_, mrtd)| *mrtd);
        let hob_measured = firmware.is_some_and(|(metadata, _)| {
            metadata
                .td_hob()
                .is_some_and(|(_, s)| s.attributes.mr_extend())
        });
        if expected.is_some_and(|e| e != mrtd) && !hob_measured {
            log::error!(
                "host: TD {}: MRTD differs from the image's expected MRTD (offline computation)",
                id.0
            );
        }
        if let Some(td) = self.tds.get_mut(&id) {
            td.mrtd = Some(mrtd);
        }
        let _ = self.apply(id, TdEvent::Finalize, now);
    }
}
