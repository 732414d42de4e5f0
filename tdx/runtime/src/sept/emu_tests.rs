//! The S-EPT manager against the software TDX module (`tdx_emu`): every operation goes
//! through real SEAMCALLs with the module's locks, state rules and TLB tracking.

extern crate std;

use alloc::collections::BTreeSet;
use alloc::sync::Arc;
use alloc::vec::Vec;

use tdx_abi::pamt::PageType;
use tdx_abi::seamcall::{Regs, TdxModule};
use tdx_abi::sept::entry_bits::HPA_MASK;
use tdx_abi::{Gfn, Hpa, Leaf, OperandId, PageLevel, SeptState, TdxStatus};
use tdx_emu::Injection;
use tdx_emu::testing::{Platform, TdOptions, TestTd};

use super::mock::{random_fault, xorshift};
use super::testing::NoVcpus;
use super::*;

/// guest_memfd stand-in over the platform's page allocator that checks ownership.
struct EmuMemory {
    p: Arc<Platform>,
    out: Mutex<BTreeSet<u64>>,
    violations: Mutex<Vec<alloc::string::String>>,
}

impl EmuMemory {
    fn outstanding(&self) -> usize {
        self.out.lock().len()
    }
    fn track(&self, hpa: Hpa, n: u64) {
        let mut out = self.out.lock();
        for i in 0..n {
            if !out.insert(hpa.0 + i * 4096) {
                self.violations
                    .lock()
                    .push(alloc::format!("{hpa} handed out twice"));
            }
        }
    }
}

impl PrivateMemory for EmuMemory {
    fn alloc_4k(&self, _gfn: Gfn) -> Option<Hpa> {
        let hpa = self.p.alloc_page().ok()?;
        self.track(hpa, 1);
        Some(hpa)
    }
    fn alloc_2m(&self, _gfn: Gfn) -> Option<Hpa> {
        let hpa = self.p.alloc_2m().ok()?;
        self.track(hpa, 512);
        Some(hpa)
    }
    fn release(&self, _gfn: Gfn, hpa: Hpa, level: PageLevel) {
        let mut out = self.out.lock();
        for i in 0..level.pages_4k() {
            if !out.remove(&(hpa.0 + i * 4096)) {
                self.violations
                    .lock()
                    .push(alloc::format!("{hpa} released but not handed out"));
            }
        }
        drop(out);
        if level == PageLevel::L2M {
            self.p.free_2m(hpa);
        } else {
            for i in 0..level.pages_4k() {
                self.p.free_page(hpa.add(i * 4096));
            }
        }
    }
}

/// S-EPT pages from the platform allocator, counted.
struct EmuPool {
    p: Arc<Platform>,
    out: Mutex<BTreeSet<u64>>,
}

impl SeptPagePool for EmuPool {
    fn take(&self) -> Option<Hpa> {
        let hpa = self.p.alloc_page().ok()?;
        self.out.lock().insert(hpa.0);
        Some(hpa)
    }
    fn give_back(&self, hpa: Hpa) {
        self.out.lock().remove(&hpa.0);
        self.p.free_page(hpa);
    }
}

struct EmuTd {
    p: Arc<Platform>,
    td: TestTd,
    mgr: Arc<SeptManager<tdx_emu::EmulatedModule>>,
    mem: Arc<EmuMemory>,
    pool: Arc<EmuPool>,
}

fn emu_td(p: &Arc<Platform>) -> EmuTd {
    let td = p.runnable_td(&TdOptions::default()).expect("runnable TD");
    let mem = Arc::new(EmuMemory {
        p: p.clone(),
        out: Mutex::new(BTreeSet::new()),
        violations: Mutex::new(Vec::new()),
    });
    let pool = Arc::new(EmuPool {
        p: p.clone(),
        out: Mutex::new(BTreeSet::new()),
    });
    let backends = SeptBackends {
        memory: mem.clone(),
        pool: pool.clone(),
        vcpus: Arc::new(NoVcpus::default()),
        phys: p.mem.clone(),
    };
    let info = TdSeptInfo {
        tdr: td.tdr,
        hkid: td.hkid,
        gpaw: Gpaw::Bits48,
    };
    let mgr = Arc::new(SeptManager::new(
        p.module.clone(),
        info,
        backends,
        SeptConfig::default(),
    ));
    mgr.set_runnable();
    EmuTd {
        p: p.clone(),
        td,
        mgr,
        mem,
        pool,
    }
}

/// What the module maps at `gfn`: the HPA of that 4 KiB frame and the leaf's level.
fn module_view(t: &EmuTd, gfn: u64) -> Option<(Hpa, PageLevel)> {
    for level in [PageLevel::L4K, PageLevel::L2M, PageLevel::L1G] {
        let gpa = Gfn(gfn).gpa().align_down(level);
        match t.p.module.mem_sept_rd(t.td.tdr, gpa, level) {
            Ok((raw, ls)) => {
                let state = ls.state()?;
                if !state.is_leaf() {
                    return None;
                }
                let offset = (gfn & (level.pages_4k() - 1)) << 12;
                return Some((Hpa((raw & HPA_MASK) + offset), level));
            }
            Err(e) if e.status.is(TdxStatus::EPT_WALK_FAILED) => continue,
            Err(e) => panic!("SEPT.RD {e}"),
        }
    }
    None
}

/// Mirror and module agree on every GFN in `gfns`, every mirror entry matches SEPT.RD and
/// PAMT, and the module's invariants hold.
fn assert_agree(t: &EmuTd, gfns: core::ops::Range<u64>) {
    for g in gfns {
        let mirror = t.mgr.lookup(Gfn(g));
        assert_eq!(mirror, module_view(t, g), "gfn {g:#x}");
    }
    let mut bad = Vec::new();
    t.mgr.for_each_mapping(&mut |m| match m.kind {
        MappingKind::Leaf { hpa, level, .. } => {
            let (raw, ls) =
                t.p.module
                    .mem_sept_rd(t.td.tdr, m.gfn.gpa(), level)
                    .expect("SEPT.RD leaf");
            let meta = t.p.module.pamt_entry(hpa).expect("PAMT");
            if raw & HPA_MASK != hpa.0
                || !matches!(ls.state(), Some(SeptState::Pending | SeptState::Mapped))
                || meta.page_type != PageType::Reg
                || meta.owner != t.td.tdr
            {
                bad.push(m);
            }
        }
        MappingKind::SeptPage { hpa, level } => {
            let (raw, ls) =
                t.p.module
                    .mem_sept_rd(t.td.tdr, m.gfn.gpa(), level)
                    .expect("SEPT.RD non-leaf");
            let meta = t.p.module.pamt_entry(hpa).expect("PAMT");
            // The module reports a non-leaf entry as RWX and PS only, without the S-EPT
            // page's HPA (`SEPT_ARCH_ENTRY_NON_LEAF_MASK`, intel/tdx-module
            // `src/common/memory_handlers/sept_manager.h`): the page is checked in PAMT.
            if raw != tdx_abi::sept::entry_bits::RWX
                || ls.state() != Some(SeptState::NlMapped)
                || meta.page_type != PageType::Ept
                || meta.owner != t.td.tdr
            {
                bad.push(m);
            }
        }
        MappingKind::Leaked { .. } => bad.push(m),
    });
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(
        t.mem.violations.lock().clone(),
        Vec::<alloc::string::String>::new()
    );
    t.p.module.check_invariants().expect("module invariants");
}

/// VP.FLUSH (TDH.VP.INIT associated each vCPU with LP 0), KEY.FREEID etc., then the
/// manager's reclaim, then the control pages.
fn teardown(t: &EmuTd) -> ReclaimReport {
    let m = &*t.p.module;
    t.p.flush_vcpus(&t.td).expect("VP.FLUSH");
    let mut r = Regs::for_leaf(Leaf::MngVpFlushDone, 0);
    r.rcx = t.td.tdr.0;
    m.call(r).expect("VPFLUSHDONE");
    t.p.module
        .lp(0)
        .expect("lp")
        .call(Regs::for_leaf(Leaf::PhymemCacheWb, 0))
        .expect("CACHE.WB");
    let mut r = Regs::for_leaf(Leaf::MngKeyFreeId, 0);
    r.rcx = t.td.tdr.0;
    m.call(r).expect("KEY.FREEID");
    let report = t.mgr.reclaim_all().expect("reclaim");
    for v in &t.td.vcpus {
        for p in &v.tdcx {
            m.phymem_page_reclaim(*p).expect("TDCX");
        }
        m.phymem_page_reclaim(v.tdvpr).expect("TDVPR");
    }
    for p in &t.td.tdcs {
        m.phymem_page_reclaim(*p).expect("TDCS");
    }
    m.phymem_page_reclaim(t.td.tdr)
        .expect("TDR: every child reclaimed");
    report
}

const M4K: MapOutcome = MapOutcome::Mapped {
    level: PageLevel::L4K,
};

#[test]
fn maps_unmaps_and_tears_down_through_real_seamcalls() {
    let p = Arc::new(Platform::new());
    let t = emu_td(&p);
    for g in 0x100..0x140 {
        assert_eq!(t.mgr.map_private(FaultRequest::new(Gfn(g))), Ok(M4K));
    }
    assert_agree(&t, 0xf0..0x150);
    let out = t.mgr.unmap_private(Gfn(0x110)..Gfn(0x120)).expect("unmap");
    assert_eq!(out.removed_4k, 16);
    assert_eq!(t.mem.outstanding(), 48);
    assert_agree(&t, 0xf0..0x150);
    let report = teardown(&t);
    assert_eq!(report.pages_4k, 48);
    assert_eq!(report.sept_pages, 3);
    assert_eq!(t.mem.outstanding(), 0);
    assert!(t.pool.out.lock().is_empty());
}

#[test]
fn huge_pages_against_the_module() {
    let p = Arc::new(Platform::new());
    let t = emu_td(&p);
    let base = 0x800u64;
    let req = |g: u64, l| FaultRequest::new(Gfn(g)).max_level(l);
    assert_eq!(
        t.mgr.map_private(req(base + 3, PageLevel::L2M)),
        Ok(MapOutcome::Mapped {
            level: PageLevel::L2M
        })
    );
    assert_agree(&t, base..base + 512);
    // Partial conversion: demote, remove 4 pages.
    let out = t
        .mgr
        .unmap_private(Gfn(base + 8)..Gfn(base + 12))
        .expect("unmap");
    assert_eq!((out.demoted, out.removed_4k), (1, 4));
    assert_agree(&t, base..base + 512);
    // Convert back (the backing gives the same frames back only by chance here, so the range
    // is not contiguous: no promotion).
    for g in base + 8..base + 12 {
        assert_eq!(t.mgr.map_private(req(g, PageLevel::L2M)), Ok(M4K));
    }
    assert_agree(&t, base..base + 512);
    // Accept at 4K on another 2M mapping: demote in the fault path.
    let other = base + 512;
    assert_eq!(
        t.mgr.map_private(req(other, PageLevel::L2M)),
        Ok(MapOutcome::Mapped {
            level: PageLevel::L2M
        })
    );
    assert_eq!(
        t.mgr.map_private(req(other + 100, PageLevel::L4K)),
        Ok(MapOutcome::AlreadyMapped {
            level: PageLevel::L4K
        })
    );
    assert_eq!(
        module_view(&t, other + 100).map(|v| v.1),
        Some(PageLevel::L4K)
    );
    assert_agree(&t, other..other + 512);
    // Whole demoted range: promote back (children uniformly PENDING and contiguous). The
    // first PROMOTE is interrupted by a host event (TDX_INTERRUPTED_RESTARTABLE,
    // `tdh_mem_page_promote.c`) and is issued again.
    p.module.inject(
        Leaf::MemPagePromote,
        Injection::StatusOnNthCall {
            n: 1,
            status: TdxStatus::INTERRUPTED_RESTARTABLE,
        },
    );
    assert_eq!(
        t.mgr.promote(Gfn(other), PageLevel::L2M),
        Ok(PromoteOutcome::Promoted)
    );
    assert_eq!(
        module_view(&t, other + 100).map(|v| v.1),
        Some(PageLevel::L2M)
    );
    assert_agree(&t, other..other + 512);
    // Remove the 2M leaf whole.
    let out = t
        .mgr
        .unmap_private(Gfn(other)..Gfn(other + 512))
        .expect("unmap");
    assert_eq!(out.removed_2m, 1);
    assert_agree(&t, base..other + 512);
    let st = t.mgr.stats();
    assert_eq!((st.mapped_2m, st.demotions, st.promotions), (2, 2, 1));
    teardown(&t);
    assert_eq!(t.mem.outstanding(), 0);
    assert!(t.pool.out.lock().is_empty());
}

#[test]
fn zap_busy_is_retried_once_and_a_second_failure_bugs_the_td() {
    let p = Arc::new(Platform::new());
    let t = emu_td(&p);
    for g in 0..4 {
        assert_eq!(t.mgr.map_private(FaultRequest::new(Gfn(g))), Ok(M4K));
    }
    let busy = TdxStatus::OPERAND_BUSY.with_operand(OperandId::SEPT_TREE);
    p.module.inject(
        Leaf::MemPageRemove,
        Injection::StatusOnNthCall { n: 1, status: busy },
    );
    assert_eq!(
        t.mgr.unmap_private(Gfn(0)..Gfn(1)).map(|o| o.removed_4k),
        Ok(1)
    );
    assert_eq!(t.mgr.stats().zap_busy_retries, 1);
    p.module.inject(
        Leaf::MemRangeBlock,
        Injection::BusyProbability {
            p: 1.0,
            seed: 1,
            operand: OperandId::SEPT_TREE,
        },
    );
    let e = t.mgr.unmap_private(Gfn(1)..Gfn(2)).expect_err("bugged");
    assert!(
        matches!(e, SeptError::Bugged(r) if matches!(r.cause, BugCause::Seamcall { leaf: Leaf::MemRangeBlock, .. }))
    );
    assert_eq!(t.mgr.stats().leaked_pages_4k, 1);
    assert!(matches!(
        t.mgr.map_private(FaultRequest::new(Gfn(9))),
        Err(SeptError::Bugged(_))
    ));
    p.module.clear_injection(Leaf::MemRangeBlock);
    // The host goes on: another TD on the same module works.
    let other = emu_td(&p);
    assert_eq!(other.mgr.map_private(FaultRequest::new(Gfn(1))), Ok(M4K));
    assert_agree(&other, 0..4);
}

#[test]
fn stress_faults_conversions_and_releases_on_several_tds() {
    let p = Arc::new(Platform::new());
    let tds: Vec<EmuTd> = (0..2).map(|_| emu_td(&p)).collect();
    for (i, leaf) in [Leaf::MemPageAug, Leaf::MemSeptAdd].into_iter().enumerate() {
        p.module.inject(
            leaf,
            Injection::BusyProbability {
                p: 0.05,
                seed: 7 + i as u64,
                operand: OperandId::SEPT_ENTRY,
            },
        );
    }
    const GFNS: u64 = 4 * 512;
    std::thread::scope(|scope| {
        for t in 0..3u64 {
            for td in &tds {
                let mgr = td.mgr.clone();
                scope.spawn(move || {
                    let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ (t * 0x9E37_79B9);
                    for _ in 0..500 {
                        let rng = xorshift(&mut rng);
                        let gfn = rng % GFNS;
                        match rng >> 61 {
                            0..=4 => {
                                let req = random_fault(gfn, rng, t as usize);
                                mgr.map_private(req).expect("map");
                            }
                            _ => {
                                let end = (gfn + 1 + (rng >> 24) % 24).min(GFNS);
                                mgr.unmap_private(Gfn(gfn)..Gfn(end)).expect("unmap");
                            }
                        }
                    }
                });
            }
        }
    });
    p.module.clear_injection(Leaf::MemPageAug);
    p.module.clear_injection(Leaf::MemSeptAdd);
    for t in &tds {
        assert!(!t.mgr.is_bugged(), "{:?}", t.mgr.bug_report());
        let st = t.mgr.stats();
        assert!(st.retries_busy > 0 && st.unmapped_4k > 0, "{st:?}");
        assert_agree(t, 0..GFNS);
        let mapped: u64 = (0..GFNS)
            .filter(|&g| t.mgr.lookup(Gfn(g)).is_some())
            .count() as u64;
        assert_eq!(
            t.mem.outstanding() as u64,
            mapped,
            "no page outside the mirror"
        );
    }
    // Release everything of TD 0 through the slow path, tear TD 1 down with pages mapped.
    tds[0].mgr.unmap_all().expect("unmap all");
    assert_eq!(tds[0].mem.outstanding(), 0);
    assert_agree(&tds[0], 0..GFNS);
    for t in &tds {
        let report = teardown(t);
        assert_eq!(report.leaked_pages_4k, 0);
        assert_eq!(t.mem.outstanding(), 0, "every page is back with its owner");
        assert!(t.pool.out.lock().is_empty());
    }
    p.module.check_invariants().expect("module invariants");
}
