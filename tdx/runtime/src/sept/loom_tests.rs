//! Model-checked tests (loom) of the freeze → SEAMCALL → publish/restore protocol against
//! concurrent faults and a concurrent unmap. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p tdx --release --lib sept::loom_tests`.

use alloc::sync::Arc;

use loom::thread;

use tdx_abi::{Gfn, Hkid, Hpa, Leaf, PageLevel};

use super::mock::{CheckedMemory, CountingPool, MockModule, MockVcpus};
use super::testing::NullPhys;
use super::*;

const BASE_GFN: u64 = 0x400;

struct Td {
    mgr: Arc<SeptManager<MockModule>>,
    module: Arc<MockModule>,
    mem: Arc<CheckedMemory>,
}

/// A runnable TD whose tables down to the 4K table of `BASE_GFN` exist (built by mapping
/// `BASE_GFN + 100` with `prebuild`, then unmapping it unless `keep`).
fn td(huge: bool, prebuild: bool) -> Td {
    let module = MockModule::new(3);
    let mem = CheckedMemory::new(0x1_0000_0000, huge);
    let backends = SeptBackends {
        memory: mem.clone(),
        pool: CountingPool::new(0x10_0000, 16),
        vcpus: Arc::new(MockVcpus {
            module: module.clone(),
            kicks: Default::default(),
        }),
        phys: Arc::new(NullPhys),
    };
    let info = TdSeptInfo {
        tdr: Hpa(0x1000),
        hkid: Hkid(1),
        gpaw: Gpaw::Bits48,
    };
    let config = SeptConfig {
        stat_slots: 2,
        fault_retries: 2,
        frozen_wait_spins: 1 << 20,
        auto_promote: false,
    };
    let mgr = Arc::new(SeptManager::new(module.clone(), info, backends, config));
    module.set_runnable();
    mgr.set_runnable();
    if prebuild {
        let r = mgr.map_private(FaultRequest::new(Gfn(BASE_GFN + 100)));
        assert_eq!(
            r,
            Ok(MapOutcome::Mapped {
                level: PageLevel::L4K
            })
        );
    }
    Td { mgr, module, mem }
}

/// Mirror and model agree on `gfn`, and the backing handed out exactly what is mapped.
fn agree(t: &Td, gfn: u64) -> bool {
    let mirror = t.mgr.lookup(Gfn(gfn));
    let model = t.module.leaf_at(gfn).map(|(l, leaf)| {
        let offset = (gfn & ((1u64 << (9 * l)) - 1)) << 12;
        (Hpa(leaf.hpa + offset), l)
    });
    let mirror = mirror.map(|(hpa, level)| (hpa, level.raw() as u32));
    assert_eq!(mirror, model, "gfn {gfn:#x}");
    mirror.is_some()
}

/// Runs `f` under loom; `f` reports which of `N` outcome classes each execution reached, and
/// every class must be reached by some execution (so the interleavings really were explored).
fn model<const N: usize>(f: impl Fn() -> usize + Sync + Send + 'static) {
    use core::sync::atomic::{AtomicUsize, Ordering};
    let seen: Arc<[AtomicUsize; N]> = Arc::new(core::array::from_fn(|_| AtomicUsize::new(0)));
    let counts = seen.clone();
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.max_branches = 100_000;
    builder.check(move || {
        let class = f();
        if let Some(c) = counts.get(class) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    });
    let seen: [usize; N] = core::array::from_fn(|i| seen[i].load(Ordering::Relaxed));
    assert!(
        seen.iter().all(|&n| n > 0),
        "outcome classes reached: {seen:?}"
    );
}

#[test]
fn fault_and_unmap_of_the_same_gfn() {
    // Classes: 0 = the unmap passed before the fault published, 1 = it removed the new page.
    model::<2>(|| {
        let t = td(false, true);
        let gfn = BASE_GFN;
        let mgr = t.mgr.clone();
        let unmapper = thread::spawn(move || {
            mgr.unmap_private(Gfn(gfn)..Gfn(BASE_GFN + 101))
                .expect("unmap")
        });
        let mapped = t.mgr.map_private(FaultRequest::new(Gfn(gfn)));
        let unmapped = unmapper.join().expect("join");
        assert_eq!(
            mapped,
            Ok(MapOutcome::Mapped {
                level: PageLevel::L4K
            })
        );
        assert!(!t.mgr.is_bugged());
        let still = agree(&t, gfn);
        assert!(!agree(&t, BASE_GFN + 100));
        // The unmap removed the prebuilt page, and the new one unless it came later.
        assert_eq!(unmapped.removed_4k, if still { 1 } else { 2 });
        assert_eq!(t.mem.outstanding(), usize::from(still));
        assert!(t.mem.violations().is_empty(), "{:?}", t.mem.violations());
        usize::from(!still)
    });
}

#[test]
fn two_faults_on_one_gfn_with_busy_map_it_once() {
    // Classes: 0 = no thread found the entry frozen, 1 = one backed off from a frozen entry.
    model::<2>(|| {
        let t = td(false, true);
        t.module.busy_once(Leaf::MemPageAug);
        let gfn = BASE_GFN + 1;
        let mgr = t.mgr.clone();
        let other = thread::spawn(move || mgr.map_private(FaultRequest::new(Gfn(gfn)).cpu(1)));
        let mine = t.mgr.map_private(FaultRequest::new(Gfn(gfn)));
        let theirs = other.join().expect("join");
        let mapped = [mine, theirs]
            .iter()
            .filter(|r| matches!(r, Ok(MapOutcome::Mapped { .. })))
            .count();
        let retried = [mine, theirs]
            .iter()
            .filter(|r| matches!(r, Ok(MapOutcome::Retry)))
            .count();
        assert!(mapped <= 1, "{mine:?} {theirs:?}");
        assert!(mine.is_ok() && theirs.is_ok());
        // Unless both ran out of retries, the page is mapped exactly once.
        assert_eq!(agree(&t, gfn), mapped == 1, "{mine:?} {theirs:?}");
        if mapped == 0 {
            assert_eq!(retried, 2);
        }
        assert_eq!(t.mem.outstanding(), 1 + mapped);
        assert!(t.mem.violations().is_empty(), "{:?}", t.mem.violations());
        assert!(!t.mgr.is_bugged());
        usize::from(t.mgr.stats().retries_frozen > 0)
    });
}

#[test]
fn huge_fault_against_a_partial_unmap() {
    // Classes: 0 = the unmap passed first, 1 = it split the new 2M page and removed one.
    model::<2>(|| {
        let t = td(true, false);
        // Build the upper tables so the fault only has the 2M entry left to fill.
        let r = t.mgr.map_private(FaultRequest::new(Gfn(BASE_GFN + 512)));
        assert_eq!(
            r,
            Ok(MapOutcome::Mapped {
                level: PageLevel::L4K
            })
        );
        let mgr = t.mgr.clone();
        let unmapper = thread::spawn(move || {
            mgr.unmap_private(Gfn(BASE_GFN + 5)..Gfn(BASE_GFN + 6))
                .expect("unmap")
        });
        let mapped = t
            .mgr
            .map_private(FaultRequest::new(Gfn(BASE_GFN)).max_level(PageLevel::L2M));
        let out = unmapper.join().expect("join");
        assert_eq!(
            mapped,
            Ok(MapOutcome::Mapped {
                level: PageLevel::L2M
            })
        );
        assert!(!t.mgr.is_bugged());
        assert!(t.mem.violations().is_empty(), "{:?}", t.mem.violations());
        if out.demoted == 1 {
            assert_eq!(out.removed_4k, 1);
            assert!(!agree(&t, BASE_GFN + 5));
            assert!(agree(&t, BASE_GFN + 6));
            assert_eq!(t.mem.outstanding(), 1 + 511);
            1
        } else {
            assert_eq!(out, UnmapOutcome::default());
            assert!(agree(&t, BASE_GFN + 5));
            assert_eq!(t.mem.outstanding(), 1 + 512);
            0
        }
    });
}
