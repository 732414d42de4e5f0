//! Unit tests of the S-EPT manager against the model module in [`super::mock`].

use alloc::sync::Arc;
use alloc::vec::Vec;

use tdx_abi::phys::SparseMemory;
use tdx_abi::seamcall::TdxModule;
use tdx_abi::{Gfn, Hkid, Hpa, Leaf, PageLevel, SeptState, TdxStatus};

use super::mock::{CheckedMemory, CountingPool, MockModule, MockVcpus, random_fault, xorshift};
use super::*;

const TDR: Hpa = Hpa(0x1000);
const MEM_BASE: u64 = 0x1_0000_0000;
const POOL_BASE: u64 = 0x10_0000;

struct Harness {
    mgr: Arc<SeptManager<MockModule>>,
    module: Arc<MockModule>,
    mem: Arc<CheckedMemory>,
    pool: Arc<CountingPool>,
    vcpus: Arc<MockVcpus>,
}

fn harness_with(huge: bool, runnable: bool, gpaw: Gpaw, config: SeptConfig) -> Harness {
    let top = gpaw.root_level().raw() as u32;
    let module = MockModule::new(top);
    let mem = CheckedMemory::new(MEM_BASE, huge);
    let pool = CountingPool::new(POOL_BASE, 4096);
    let vcpus = Arc::new(MockVcpus {
        module: module.clone(),
        kicks: Default::default(),
    });
    let backends = SeptBackends {
        memory: mem.clone(),
        pool: pool.clone(),
        vcpus: vcpus.clone(),
        phys: Arc::new(SparseMemory::new()),
    };
    let td = TdSeptInfo {
        tdr: TDR,
        hkid: Hkid(5),
        gpaw,
    };
    let mgr = Arc::new(SeptManager::new(module.clone(), td, backends, config));
    if runnable {
        module.set_runnable();
        mgr.set_runnable();
    }
    Harness {
        mgr,
        module,
        mem,
        pool,
        vcpus,
    }
}

fn harness(huge: bool) -> Harness {
    harness_with(huge, true, Gpaw::Bits48, SeptConfig::default())
}

/// Number of S-EPT pages the mirror holds.
fn sept_pages(h: &Harness) -> usize {
    let mut tables = 0;
    h.mgr.for_each_mapping(&mut |m| {
        if let MappingKind::SeptPage { .. } = m.kind {
            tables += 1;
        }
    });
    tables
}

fn map4k(h: &Harness, gfn: u64) -> Result<MapOutcome, SeptError> {
    h.mgr.map_private(FaultRequest::new(Gfn(gfn)))
}

fn map2m(h: &Harness, gfn: u64) -> Result<MapOutcome, SeptError> {
    h.mgr
        .map_private(FaultRequest::new(Gfn(gfn)).max_level(PageLevel::L2M))
}

const M4K: MapOutcome = MapOutcome::Mapped {
    level: PageLevel::L4K,
};
const M2M: MapOutcome = MapOutcome::Mapped {
    level: PageLevel::L2M,
};

/// Mirror and module agree entry by entry (SEPT.RD), the module has nothing the mirror does
/// not, and the backing saw no double hand-out.
fn assert_consistent(h: &Harness) {
    let mut leaves = 0;
    let mut tables = 0;
    let mut problems = Vec::new();
    h.mgr.for_each_mapping(&mut |m| {
        let (hpa, level, leaf) = match m.kind {
            MappingKind::Leaf { hpa, level, .. } => (hpa, level, true),
            MappingKind::SeptPage { hpa, level } => (hpa, level, false),
            MappingKind::Leaked { .. } => {
                problems.push(alloc::format!("leaked entry at {:?}", m.gfn));
                return;
            }
        };
        match h.module.mem_sept_rd(TDR, m.gfn.gpa(), level) {
            Ok((raw, ls)) => {
                let state = ls.state();
                let ok = raw == hpa.0
                    && ls.level() as u64 == level.raw()
                    && if leaf {
                        matches!(state, Some(SeptState::Pending | SeptState::Mapped))
                    } else {
                        state == Some(SeptState::NlMapped)
                    };
                if !ok {
                    problems.push(alloc::format!("{m:?}: module has {raw:#x} {state:?}"));
                }
            }
            Err(e) => problems.push(alloc::format!("{m:?}: SEPT.RD {e}")),
        }
        if leaf {
            leaves += 1;
        } else {
            tables += 1;
        }
    });
    assert!(problems.is_empty(), "{problems:?}");
    let s = h.module.state.lock();
    assert_eq!(s.leaves.len(), leaves, "module leaves vs mirror leaves");
    drop(s);
    assert_eq!(
        h.module.nl_count(),
        tables,
        "module tables vs mirror tables"
    );
    assert_eq!(h.mem.violations(), Vec::<alloc::string::String>::new());
}

#[test]
fn maps_a_4k_page_with_its_tables_and_reads_it_back() {
    let h = harness(false);
    let gfn = 0x12345;
    assert_eq!(map4k(&h, gfn), Ok(M4K));
    assert_eq!(h.module.calls(Leaf::MemSeptAdd), 3);
    assert_eq!(h.module.calls(Leaf::MemPageAug), 1);
    let hpa = Hpa(h.mem.hpa_of(gfn));
    assert_eq!(h.mgr.lookup(Gfn(gfn)), Some((hpa, PageLevel::L4K)));
    assert_eq!(h.mgr.lookup(Gfn(gfn + 1)), None);
    assert_eq!(
        map4k(&h, gfn),
        Ok(MapOutcome::AlreadyMapped {
            level: PageLevel::L4K
        })
    );
    assert_eq!(h.module.calls(Leaf::MemPageAug), 1);
    let st = h.mgr.stats();
    assert_eq!((st.faults, st.mapped_4k, st.already_mapped), (2, 1, 1));
    assert_eq!(st.sept_pages_added, 3);
    assert_eq!(h.pool.free(), h.pool.total - 3);
    assert_consistent(&h);
}

#[test]
fn build_time_pages_use_page_add_with_the_source() {
    let h = harness_with(true, false, Gpaw::Bits48, SeptConfig::default());
    assert_eq!(map4k(&h, 7), Err(SeptError::SourceRequired));
    let req = FaultRequest::new(Gfn(7))
        .source(Hpa(0xdead_0000))
        .max_level(PageLevel::L2M);
    assert_eq!(h.mgr.map_private(req), Ok(M4K), "PAGE.ADD is 4K only");
    assert_eq!(h.module.calls(Leaf::MemPageAdd), 1);
    assert_eq!(h.module.calls(Leaf::MemPageAug), 0);
    let mut added = false;
    h.mgr.for_each_mapping(&mut |m| {
        if let MappingKind::Leaf { added: a, .. } = m.kind {
            added = a;
        }
    });
    assert!(added);
    assert_eq!(h.module.leaf_at(7).map(|(_, l)| l.pending), Some(false));
    h.module.set_runnable();
    h.mgr.set_runnable();
    assert_eq!(h.mgr.map_private(req), Err(SeptError::SourceAfterFinalize));
    assert_consistent(&h);
}

#[test]
fn busy_on_aug_and_sept_add_is_retried_locally() {
    let h = harness(false);
    h.module.busy_once(Leaf::MemSeptAdd);
    h.module.busy_once(Leaf::MemPageAug);
    assert_eq!(map4k(&h, 0x400), Ok(M4K));
    let st = h.mgr.stats();
    assert_eq!(st.retries_busy, 2);
    assert_eq!(st.retries_returned, 0);
    assert_eq!(
        h.mem.outstanding(),
        1,
        "the page of the failed AUG went back"
    );
    assert_eq!(
        h.pool.free(),
        h.pool.total - 3,
        "the S-EPT page of the failed ADD went back"
    );
    assert!(!h.mgr.is_bugged());
    assert_consistent(&h);
}

#[test]
fn persistent_busy_returns_retry_and_leaves_nothing_behind() {
    let cfg = SeptConfig {
        fault_retries: 4,
        ..SeptConfig::default()
    };
    let h = harness_with(false, true, Gpaw::Bits48, cfg);
    h.module.set_busy_per_mille(1000, 1);
    assert_eq!(map4k(&h, 0x400), Ok(MapOutcome::Retry));
    let st = h.mgr.stats();
    assert_eq!(st.retries_busy, 5);
    assert_eq!(st.retries_returned, 1);
    assert_eq!(h.mem.outstanding(), 0);
    assert_eq!(h.pool.free(), h.pool.total);
    assert!(!h.mgr.is_bugged());
    h.module.set_busy_per_mille(0, 1);
    assert_eq!(map4k(&h, 0x400), Ok(M4K));
    assert_consistent(&h);
}

#[test]
fn unexpected_status_bugs_only_this_td_and_leaks_the_page() {
    let h = harness(false);
    let other = harness(false);
    assert_eq!(map4k(&h, 1), Ok(M4K));
    h.module.fail_next(
        Leaf::MemPageAug,
        TdxStatus::EPT_ENTRY_STATE_INCORRECT.with_operand(OperandId::RCX),
    );
    let e = map4k(&h, 2).expect_err("must fail");
    let SeptError::Bugged(report) = e else {
        panic!("{e:?}")
    };
    assert_eq!(
        report.cause,
        BugCause::Seamcall {
            leaf: Leaf::MemPageAug,
            status: TdxStatus::EPT_ENTRY_STATE_INCORRECT.with_operand(OperandId::RCX),
            operand: OperandId::RCX,
        }
    );
    assert_eq!(report.gfn, Gfn(2));
    assert!(h.mgr.is_bugged());
    assert_eq!(h.mgr.bug_report(), Some(report));
    assert!(matches!(map4k(&h, 3), Err(SeptError::Bugged(_))));
    assert!(matches!(
        h.mgr.unmap_private(Gfn(1)..Gfn(2)),
        Err(SeptError::Bugged(_))
    ));
    assert_eq!(h.mgr.stats().leaked_pages_4k, 1);
    assert!(h.mem.is_out(h.mem.hpa_of(2)), "leaked page never returned");
    assert_eq!(map4k(&other, 2), Ok(M4K), "other TDs are unaffected");
    assert!(alloc::format!("{e}").contains("TDH.MEM.PAGE.AUG"));
}

#[test]
fn unmap_blocks_tracks_kicks_removes_and_returns_pages() {
    let h = harness(false);
    for g in 0x200..0x210 {
        assert_eq!(map4k(&h, g), Ok(M4K));
    }
    let out = h.mgr.unmap_private(Gfn(0x204)..Gfn(0x20c)).expect("unmap");
    assert_eq!(out.removed_4k, 8);
    assert_eq!(h.module.calls(Leaf::MemRangeBlock), 8);
    assert_eq!(h.module.calls(Leaf::MemTrack), 1, "one TRACK per batch");
    assert_eq!(h.module.calls(Leaf::MemPageRemove), 8);
    assert_eq!(h.module.calls(Leaf::PhymemPageWbinvd), 8);
    assert!(h.vcpus.kicks.load(core::sync::atomic::Ordering::Relaxed) >= 1);
    assert_eq!(h.mem.outstanding(), 8);
    assert_eq!(h.mgr.lookup(Gfn(0x204)), None);
    assert!(h.mgr.lookup(Gfn(0x20c)).is_some());
    assert_eq!(h.mgr.stats().unmapped_4k, 8);
    assert_consistent(&h);
    // Remapping an unmapped GFN works (AUG on a FREE entry again).
    assert_eq!(map4k(&h, 0x205), Ok(M4K));
    assert_consistent(&h);
}

#[test]
fn unmap_of_many_pages_batches_and_walks_past_holes() {
    let h = harness(false);
    for g in (0..2000).step_by(3) {
        assert_eq!(map4k(&h, g), Ok(M4K));
    }
    assert_eq!(map4k(&h, 1 << 30), Ok(M4K));
    let out = h.mgr.unmap_all().expect("unmap");
    assert_eq!(out.removed_4k, 668);
    assert_eq!(h.mem.outstanding(), 0);
    assert_eq!(h.module.calls(Leaf::MemTrack), 11); // ceil(668 / 64)
    assert_consistent(&h);
}

#[test]
fn unmap_busy_is_retried_once_with_vcpus_kept_out() {
    let h = harness(false);
    assert_eq!(map4k(&h, 9), Ok(M4K));
    h.module.busy_once(Leaf::MemPageRemove);
    let out = h.mgr.unmap_private(Gfn(9)..Gfn(10)).expect("unmap");
    assert_eq!(out.removed_4k, 1);
    assert_eq!(h.mgr.stats().zap_busy_retries, 1);
    assert!(!h.mgr.is_bugged());
    assert_eq!(h.mem.outstanding(), 0);
    assert_consistent(&h);
}

#[test]
fn unmap_busy_twice_bugs_the_td_and_leaks_the_page() {
    let h = harness(false);
    assert_eq!(map4k(&h, 9), Ok(M4K));
    assert_eq!(map4k(&h, 10), Ok(M4K));
    h.module.busy_once(Leaf::MemRangeBlock);
    h.module.busy_once(Leaf::MemRangeBlock);
    let e = h.mgr.unmap_private(Gfn(9)..Gfn(11)).expect_err("bugged");
    assert!(matches!(e, SeptError::Bugged(r) if r.gfn == Gfn(9)));
    assert_eq!(h.mgr.stats().leaked_pages_4k, 1);
    assert_eq!(h.mem.outstanding(), 2, "nothing handed back");
    let mut kinds = Vec::new();
    h.mgr.for_each_mapping(&mut |m| {
        if m.gfn.0 >= 9 && !matches!(m.kind, MappingKind::SeptPage { .. }) {
            kinds.push((m.gfn.0, matches!(m.kind, MappingKind::Leaked { .. })))
        }
    });
    assert_eq!(kinds, [(9, true), (10, false)]);
}

#[test]
fn maps_2m_with_one_aug_when_allowed() {
    let h = harness(true);
    assert_eq!(map2m(&h, 0x400 + 17), Ok(M2M));
    assert_eq!(h.module.calls(Leaf::MemPageAug), 1);
    assert_eq!(h.module.calls(Leaf::MemSeptAdd), 2);
    assert_eq!(h.module.leaf_at(0x400).map(|(l, _)| l), Some(1));
    assert_eq!(
        h.mgr.lookup(Gfn(0x400 + 17)),
        Some((Hpa(h.mem.hpa_of(0x400 + 17)), PageLevel::L2M))
    );
    assert_eq!(
        map2m(&h, 0x5ff),
        Ok(MapOutcome::AlreadyMapped {
            level: PageLevel::L2M
        })
    );
    // 4K-only faults still map 4K elsewhere, and a backing without extents falls back to 4K.
    assert_eq!(map4k(&h, 0x800), Ok(M4K));
    let no_huge = harness(false);
    assert_eq!(map2m(&no_huge, 0x400), Ok(M4K));
    let st = h.mgr.stats();
    assert_eq!((st.mapped_2m, st.mapped_4k), (1, 1));
    assert_consistent(&h);
    assert_consistent(&no_huge);
}

#[test]
fn partial_unmap_of_2m_demotes_then_promotes_back() {
    let h = harness(true);
    assert_eq!(map2m(&h, 0x400), Ok(M2M));
    let out = h.mgr.unmap_private(Gfn(0x410)..Gfn(0x412)).expect("unmap");
    assert_eq!((out.demoted, out.removed_4k, out.removed_2m), (1, 2, 0));
    assert_eq!(h.module.calls(Leaf::MemPageDemote), 1);
    assert_eq!(
        h.mgr.lookup(Gfn(0x413)),
        Some((Hpa(h.mem.hpa_of(0x413)), PageLevel::L4K))
    );
    assert_eq!(h.mgr.lookup(Gfn(0x410)), None);
    assert_eq!(h.mem.outstanding(), 510);
    assert_eq!(h.mgr.stats().demotions, 1);
    assert_consistent(&h);
    // Converting back: the first 4K fault does not complete the range; the second does, and
    // the request allows 2M, so the range is promoted (all children PENDING: uniform).
    assert_eq!(map2m(&h, 0x410), Ok(M4K));
    assert_eq!(h.module.calls(Leaf::MemPagePromote), 0);
    assert_eq!(map2m(&h, 0x411), Ok(M4K));
    assert_eq!(h.module.calls(Leaf::MemPagePromote), 1);
    assert_eq!(h.mgr.stats().promotions, 1);
    assert_eq!(h.mgr.lookup(Gfn(0x411)).map(|x| x.1), Some(PageLevel::L2M));
    assert_eq!(h.module.leaf_at(0x400).map(|(l, _)| l), Some(1));
    assert_eq!(h.mem.outstanding(), 512);
    assert_eq!(
        h.pool.free(),
        h.pool.total - 2,
        "freed S-EPT page back in the pool"
    );
    assert_consistent(&h);
    // And it can be split again (the detached child table is reused).
    let out = h.mgr.unmap_private(Gfn(0x400)..Gfn(0x401)).expect("unmap");
    assert_eq!((out.demoted, out.removed_4k), (1, 1));
    assert_consistent(&h);
}

#[test]
fn promotion_refused_by_the_module_is_undone() {
    let h = harness(true);
    assert_eq!(map2m(&h, 0x400), Ok(M2M));
    assert!(h.module.accept(0x400, PageLevel::L2M));
    h.mgr.unmap_private(Gfn(0x400)..Gfn(0x401)).expect("unmap");
    // The 511 remaining children are MAPPED (accepted); the new one is PENDING.
    assert_eq!(map2m(&h, 0x400), Ok(M4K));
    assert_eq!(h.module.calls(Leaf::MemPagePromote), 1);
    let st = h.mgr.stats();
    assert_eq!((st.promotions, st.promotions_rejected), (0, 1));
    assert_eq!(h.module.calls(Leaf::MemRangeUnblock), 1);
    assert!(!h.mgr.is_bugged());
    assert_consistent(&h);
    // After the guest accepts it, an explicit promote succeeds.
    assert!(h.module.accept(0x400, PageLevel::L4K));
    assert_eq!(
        h.mgr.promote(Gfn(0x400), PageLevel::L2M),
        Ok(PromoteOutcome::Promoted)
    );
    assert_eq!(
        h.mgr.promote(Gfn(0x400), PageLevel::L2M),
        Ok(PromoteOutcome::NotUniform)
    );
    assert_eq!(
        h.mgr.promote(Gfn(0x400), PageLevel::L4K),
        Err(SeptError::BadPromoteLevel(PageLevel::L4K))
    );
    assert_consistent(&h);
}

#[test]
fn accept_at_4k_on_a_2m_mapping_demotes() {
    let h = harness(true);
    assert_eq!(map2m(&h, 0x600), Ok(M2M));
    assert_eq!(
        map4k(&h, 0x655),
        Ok(MapOutcome::AlreadyMapped {
            level: PageLevel::L4K
        })
    );
    assert_eq!(h.module.calls(Leaf::MemPageDemote), 1);
    assert_eq!(h.module.leaf_at(0x655).map(|(l, _)| l), Some(0));
    assert_eq!(h.mgr.lookup(Gfn(0x600)).map(|x| x.1), Some(PageLevel::L4K));
    assert_eq!(h.mem.outstanding(), 512);
    assert_consistent(&h);
}

#[test]
fn one_gigabyte_leaves_are_promoted_split_and_removed() {
    let h = harness(true);
    let base = 1u64 << 18; // 1 GiB-aligned GFN
    for i in 0..512 {
        assert_eq!(map2m(&h, base + i * 512), Ok(M2M));
    }
    assert_eq!(
        h.mgr.promote(Gfn(base), PageLevel::L1G),
        Ok(PromoteOutcome::Promoted)
    );
    assert_eq!(
        h.mgr.lookup(Gfn(base + 5)).map(|x| x.1),
        Some(PageLevel::L1G)
    );
    assert_consistent(&h);
    // A 4K hole: demote 1G → 2M → 4K.
    let out = h
        .mgr
        .unmap_private(Gfn(base + 700)..Gfn(base + 701))
        .expect("unmap");
    assert_eq!((out.demoted, out.removed_4k), (2, 1));
    assert_consistent(&h);
    // Put it back together and remove the whole 1G leaf in one go.
    assert_eq!(map2m(&h, base + 700), Ok(M4K));
    assert_eq!(
        h.mgr.lookup(Gfn(base + 700)).map(|x| x.1),
        Some(PageLevel::L2M)
    );
    assert_eq!(
        h.mgr.promote(Gfn(base), PageLevel::L1G),
        Ok(PromoteOutcome::Promoted)
    );
    let out = h
        .mgr
        .unmap_private(Gfn(base)..Gfn(base + (1 << 18)))
        .expect("unmap");
    assert_eq!(out.removed_1g, 1);
    // One per freed S-EPT page (three promotions), one for the 4K hole, 262144 for the 1G leaf.
    assert_eq!(h.module.calls(Leaf::PhymemPageWbinvd), 3 + 1 + 262144);
    assert_eq!(h.mem.outstanding(), 0);
    assert_consistent(&h);
}

#[test]
fn reclaim_all_returns_every_page_after_freeid() {
    let h = harness(true);
    for g in [1u64, 2, 0x1000, 1 << 27] {
        assert_eq!(map4k(&h, g), Ok(M4K));
    }
    assert_eq!(map2m(&h, 0x2000), Ok(M2M));
    h.mgr
        .unmap_private(Gfn(0x2000)..Gfn(0x2001))
        .expect("demote");
    let tables = sept_pages(&h);
    assert_eq!(tables, h.pool.total - h.pool.free());
    h.module.set_teardown();
    let report = h.mgr.reclaim_all().expect("reclaim");
    assert_eq!(report.pages_4k, 4 + 511);
    assert_eq!(report.leaked_pages_4k, 0);
    assert_eq!(report.sept_pages, tables as u64);
    assert_eq!(h.pool.free(), h.pool.total, "every S-EPT page is back");
    assert_eq!(h.mem.outstanding(), 0);
    assert_eq!(h.module.owned_frames(), 0);
    assert_eq!(map4k(&h, 1), Err(SeptError::TornDown));
    assert_eq!(h.mem.violations(), Vec::<alloc::string::String>::new());
}

#[test]
fn reclaim_some_takes_bounded_slices_and_ends_like_reclaim_all() {
    let h = harness(true);
    for g in [1u64, 2, 0x1000, 1 << 27] {
        assert_eq!(map4k(&h, g), Ok(M4K));
    }
    assert_eq!(map2m(&h, 0x2000), Ok(M2M));
    assert_eq!(map2m(&h, 0x4000), Ok(M2M));
    h.mgr
        .unmap_private(Gfn(0x2000)..Gfn(0x2001))
        .expect("demote");
    let tables = sept_pages(&h);
    h.module.set_teardown();
    let budget = 100;
    let mut total = ReclaimReport::default();
    let mut slices = 0;
    loop {
        let before = h.module.calls(Leaf::PhymemPageReclaim);
        let p = h.mgr.reclaim_some(budget).expect("reclaim");
        let calls = h.module.calls(Leaf::PhymemPageReclaim) - before;
        slices += 1;
        // A 2 MiB leaf (512 units) is finished even though it exceeds the budget alone.
        assert!(p.units <= budget + 512, "slice {slices}: {p:?}");
        // Plus at most one S-EPT page per level whose children the slice finished.
        assert!(calls <= budget + 4, "slice {slices}: {calls} RECLAIMs");
        assert!(p.units > 0 || p.done, "every slice makes progress");
        assert_eq!(map4k(&h, 1), Err(SeptError::TornDown));
        total.pages_4k += p.report.pages_4k;
        total.sept_pages += p.report.sept_pages;
        total.leaked_pages_4k += p.report.leaked_pages_4k;
        total.leaked_sept_pages += p.report.leaked_sept_pages;
        if p.done {
            break;
        }
        assert!(slices < 1000, "reclaim_some never finishes");
    }
    // 4 + 511 4K pages and one 2M leaf: at 100 units a slice that is at least 6 slices.
    assert!(slices >= 6, "{slices} slices");
    assert_eq!(total.pages_4k, 4 + 511 + 512);
    assert_eq!(total.leaked_pages_4k, 0);
    assert_eq!(total.sept_pages, tables as u64);
    assert_eq!(h.pool.free(), h.pool.total, "every S-EPT page is back");
    assert_eq!(h.mem.outstanding(), 0);
    assert_eq!(h.module.owned_frames(), 0);
    assert_eq!(h.mem.violations(), Vec::<alloc::string::String>::new());
    // Done stays done.
    let again = h.mgr.reclaim_some(budget).expect("reclaim");
    assert!(again.done && again.units == 0, "{again:?}");
}

#[test]
fn five_level_tds_use_the_fifth_level() {
    let h = harness_with(false, true, Gpaw::Bits52, SeptConfig::default());
    let gfn = (1u64 << 38) + 3;
    assert_eq!(map4k(&h, gfn), Ok(M4K));
    assert_eq!(h.module.calls(Leaf::MemSeptAdd), 4);
    assert_consistent(&h);
    let h4 = harness(false);
    assert_eq!(
        map4k(&h4, 1 << 35),
        Err(SeptError::GfnOutOfRange {
            start: 1 << 35,
            end: (1 << 35) + 1
        })
    );
    assert!(h4.mgr.unmap_private(Gfn(5)..Gfn(5)).is_err());
}

#[test]
fn stress_many_threads_two_tds_with_busy_injection() {
    extern crate std;
    use std::thread;
    let tds: Vec<Harness> = (0..2).map(|_| harness(true)).collect();
    for (i, h) in tds.iter().enumerate() {
        h.module.set_busy_per_mille(50, 0x1234 + i as u64);
    }
    const GFNS: u64 = 4 * 512; // four 2M ranges
    thread::scope(|scope| {
        for t in 0..4u64 {
            for h in &tds {
                let mgr = h.mgr.clone();
                scope.spawn(move || {
                    let mut rng = 0x9E37_79B9u64 ^ (t << 32) ^ 0x55;
                    for _ in 0..600 {
                        let r = xorshift(&mut rng);
                        let gfn = r % GFNS;
                        match r >> 60 {
                            0..=9 => {
                                let req = random_fault(gfn, r, t as usize);
                                mgr.map_private(req).expect("map");
                            }
                            10..=13 => {
                                let len = 1 + (r >> 20) % 40;
                                let end = (gfn + len).min(GFNS);
                                mgr.unmap_private(Gfn(gfn)..Gfn(end)).expect("unmap");
                            }
                            _ => {
                                let _ = mgr.promote(Gfn(gfn), PageLevel::L2M).expect("promote");
                            }
                        }
                    }
                });
            }
        }
    });
    for h in &tds {
        assert!(!h.mgr.is_bugged(), "{:?}", h.mgr.bug_report());
        assert!(h.module.state.lock().busy_injected > 0);
        let st = h.mgr.stats();
        assert!(
            st.mapped_4k + st.mapped_2m > 0 && st.unmapped_4k > 0,
            "{st:?}"
        );
        assert_consistent(h);
        h.mgr.unmap_all().expect("unmap all");
        assert_eq!(h.mem.outstanding(), 0, "every page is back with its owner");
        assert_consistent(h);
        h.module.set_teardown();
        h.mgr.reclaim_all().expect("reclaim");
        assert_eq!(h.pool.free(), h.pool.total);
        assert_eq!(h.module.owned_frames(), 0);
    }
}

#[test]
fn faults_issue_no_seamcall_while_the_unmap_path_holds_them() {
    let cfg = SeptConfig {
        fault_retries: 3,
        ..SeptConfig::default()
    };
    let h = harness_with(false, true, Gpaw::Bits48, cfg);
    h.mgr
        .hold_faults
        .store(true, core::sync::atomic::Ordering::SeqCst);
    assert_eq!(map4k(&h, 0x42), Ok(MapOutcome::Retry));
    assert_eq!(h.module.calls(Leaf::MemSeptAdd), 0);
    assert_eq!(h.mem.outstanding(), 0);
    assert_eq!(h.mgr.stats().retries_frozen, 4);
    h.mgr
        .hold_faults
        .store(false, core::sync::atomic::Ordering::SeqCst);
    assert_eq!(map4k(&h, 0x42), Ok(M4K));
    assert_eq!(h.mgr.stats.inflight(), 0, "every fault SEAMCALL ended");
    assert_consistent(&h);
}
