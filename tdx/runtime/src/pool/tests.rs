//! Tests for the TD memory pool: unit cases for each operation and error, a model-checked
//! property test over random operation sequences, and a multi-threaded stress check.
#![allow(clippy::unwrap_used)]

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::*;

const MIB: u64 = 1024 * 1024;
const BASE: u64 = 0x1_0000_0000;

fn pool(mib: u64) -> MemoryPool {
    MemoryPool::new(Hpa(BASE), mib * MIB).unwrap()
}

#[test]
fn new_rejects_bad_ranges() {
    for (base, size) in [
        (0x1000u64, 0u64),
        (0x1001, 0x1000),
        (0x1000, 0x1001),
        (!0xFFF, 0x2000),
    ] {
        assert_eq!(
            MemoryPool::new(Hpa(base), size).unwrap_err(),
            PoolError::InvalidRange {
                base: Hpa(base),
                size
            }
        );
    }
}

#[test]
fn fresh_pool_accounting() {
    let p = pool(8);
    let s = p.stats();
    assert_eq!(s.total_pages, 2048);
    assert_eq!(s.free_pages, 2048);
    assert_eq!(s.used_total(), 0);
    assert_eq!(s.free_extents_2m, 4);
    p.audit().unwrap();
}

#[test]
fn alloc_4k_and_2m_and_free() {
    let p = pool(8);
    let a = p.alloc_4k(MemoryUse::Sept).unwrap();
    assert_eq!(a, Hpa(BASE)); // lowest address first
    assert!(p.is_allocated(a));
    assert_eq!(p.use_of(a), Some(MemoryUse::Sept));
    // Next S-EPT page comes from the same chunk.
    let b = p.alloc_4k(MemoryUse::Sept).unwrap();
    assert_eq!(b, Hpa(BASE + 0x1000));
    // 4K allocation split one chunk: 3 whole extents left.
    assert_eq!(p.stats().free_extents_2m, 3);
    let e = p.alloc_2m(MemoryUse::TdPrivate).unwrap();
    assert_eq!(e.0 % PAGE_SIZE_2M, 0);
    assert_ne!(e.0, BASE);
    let s = p.stats();
    assert_eq!(s.used_by(MemoryUse::Sept), 2);
    assert_eq!(s.used_by(MemoryUse::TdPrivate), 512);
    assert_eq!(s.free_pages, 2048 - 514);
    p.audit().unwrap();

    p.free_4k(a, MemoryUse::Sept).unwrap();
    p.free_4k(b, MemoryUse::Sept).unwrap();
    // The chunk is whole again (merge).
    assert_eq!(p.stats().free_extents_2m, 3);
    p.free_2m(e, MemoryUse::TdPrivate).unwrap();
    assert_eq!(p.stats().free_extents_2m, 4);
    assert_eq!(p.stats().free_pages, 2048);
    p.audit().unwrap();
}

#[test]
fn free_errors_change_nothing() {
    let p = pool(4);
    let a = p.alloc_4k(MemoryUse::Control).unwrap();
    let before = p.stats();
    assert_eq!(
        p.free_4k(a, MemoryUse::Sept),
        Err(PoolError::WrongUse {
            hpa: a,
            expected: MemoryUse::Sept,
            actual: MemoryUse::Control
        })
    );
    assert_eq!(
        p.free_4k(a.add(0x1000), MemoryUse::Control),
        Err(PoolError::NotAllocated { hpa: a.add(0x1000) })
    );
    assert_eq!(
        p.free_4k(Hpa(a.0 + 1), MemoryUse::Control),
        Err(PoolError::Unaligned { hpa: Hpa(a.0 + 1) })
    );
    assert_eq!(
        p.free_4k(Hpa(BASE - 0x1000), MemoryUse::Control),
        Err(PoolError::OutOfRange {
            hpa: Hpa(BASE - 0x1000),
            pages: 1
        })
    );
    assert_eq!(
        p.free_contiguous(a, 0, MemoryUse::Control),
        Err(PoolError::ZeroPages)
    );
    assert_eq!(
        p.free_contiguous(a, u64::MAX, MemoryUse::Control),
        Err(PoolError::OutOfRange {
            hpa: a,
            pages: u64::MAX
        })
    );
    // A run whose second page is free: nothing is freed.
    assert_eq!(
        p.free_contiguous(a, 2, MemoryUse::Control),
        Err(PoolError::NotAllocated { hpa: a.add(0x1000) })
    );
    assert!(p.is_allocated(a));
    assert_eq!(
        p.free_2m(a.add(0x1000), MemoryUse::Control),
        Err(PoolError::Unaligned { hpa: a.add(0x1000) })
    );
    assert_eq!(p.stats(), before);
    p.free_4k(a, MemoryUse::Control).unwrap();
    // Double free.
    assert_eq!(
        p.free_4k(a, MemoryUse::Control),
        Err(PoolError::NotAllocated { hpa: a })
    );
    p.audit().unwrap();
}

#[test]
fn split_a_2m_extent_into_4k_frees() {
    let p = pool(4);
    let e = p.alloc_2m(MemoryUse::TdPrivate).unwrap();
    // Free the extent page by page (after a demote, say).
    for i in 0..512u64 {
        p.free_4k(e.add(i * 0x1000), MemoryUse::TdPrivate).unwrap();
        if i == 0 {
            assert_eq!(p.stats().free_extents_2m, 1);
            p.audit().unwrap();
        }
    }
    assert_eq!(p.stats().free_extents_2m, 2);
    // 512 separately allocated pages can be freed as one 2M extent (merge).
    let pages: Vec<Hpa> = (0..512)
        .map(|_| p.alloc_4k(MemoryUse::TdPrivate).unwrap())
        .collect();
    assert!(pages.windows(2).all(|w| w[1].0 == w[0].0 + 0x1000));
    p.free_2m(pages[0], MemoryUse::TdPrivate).unwrap();
    assert_eq!(p.stats().free_pages, 1024);
    p.audit().unwrap();
}

#[test]
fn exhaustion_and_2m_unavailable_when_fragmented() {
    let p = pool(4);
    // One 4K page in each chunk.
    let a = p.alloc_4k(MemoryUse::Sept).unwrap();
    let x = p.alloc_2m(MemoryUse::TdPrivate).unwrap();
    p.free_4k(x.add(0x5000), MemoryUse::TdPrivate).unwrap();
    assert_eq!(
        p.alloc_2m(MemoryUse::TdPrivate),
        Err(PoolError::OutOfMemory { pages: 512 })
    );
    // Fill everything with 4K pages.
    let mut n = 0;
    while p.alloc_4k(MemoryUse::Control).is_ok() {
        n += 1;
    }
    // 1024 pages: 1 S-EPT + 511 TD-private still allocated.
    assert_eq!(n, 1024 - 512);
    assert_eq!(p.stats().free_pages, 0);
    assert_eq!(
        p.alloc_4k(MemoryUse::Control),
        Err(PoolError::OutOfMemory { pages: 1 })
    );
    // Control borrowed pages from the S-EPT and TD-private chunks: both mixed.
    assert_eq!(p.stats().mixed_chunks, 2);
    assert_eq!(p.use_of(a), Some(MemoryUse::Sept));
    assert_eq!(p.use_of(a.add(0x1000)), Some(MemoryUse::Control));
    p.audit().unwrap();
    // Freeing the S-EPT page makes its chunk single-owner again.
    p.free_4k(a, MemoryUse::Sept).unwrap();
    assert_eq!(p.stats().mixed_chunks, 1);
    p.audit().unwrap();
}

#[test]
fn edge_chunks_of_an_unaligned_pool() {
    // 2 MiB starting 1 MiB into a chunk: two edge chunks of 256 pages, no whole chunk.
    let p = MemoryPool::new(Hpa(BASE + MIB), 2 * MIB).unwrap();
    assert_eq!(p.stats().total_pages, 512);
    assert_eq!(p.stats().free_extents_2m, 0);
    assert_eq!(
        p.alloc_2m(MemoryUse::TdPrivate),
        Err(PoolError::OutOfMemory { pages: 512 })
    );
    let first = p.alloc_4k(MemoryUse::TdPrivate).unwrap();
    assert_eq!(first, Hpa(BASE + MIB));
    // Pages outside the pool are never handed out nor freeable.
    assert_eq!(
        p.free_4k(Hpa(BASE), MemoryUse::TdPrivate),
        Err(PoolError::OutOfRange {
            hpa: Hpa(BASE),
            pages: 1
        })
    );
    assert_eq!(
        p.free_4k(Hpa(BASE + 3 * MIB), MemoryUse::TdPrivate),
        Err(PoolError::OutOfRange {
            hpa: Hpa(BASE + 3 * MIB),
            pages: 1
        })
    );
    assert_eq!(p.use_of(Hpa(BASE)), None);
    // A run across the chunk boundary at BASE + 2 MiB.
    let run = p.alloc_contiguous(400, MemoryUse::ImageStorage).unwrap();
    assert_eq!(run, Hpa(BASE + MIB + 0x1000));
    assert!(run.0 + 400 * 0x1000 > BASE + 2 * MIB);
    assert_eq!(
        p.alloc_contiguous(112, MemoryUse::ImageStorage),
        Err(PoolError::OutOfMemory { pages: 112 })
    );
    let tail = p.alloc_contiguous(111, MemoryUse::ImageStorage).unwrap();
    assert_eq!(tail.0 + 111 * 0x1000, BASE + 3 * MIB);
    assert_eq!(p.stats().free_pages, 0);
    p.audit().unwrap();
    p.free_contiguous(run, 400, MemoryUse::ImageStorage)
        .unwrap();
    p.free_contiguous(tail, 111, MemoryUse::ImageStorage)
        .unwrap();
    p.free_4k(first, MemoryUse::TdPrivate).unwrap();
    assert_eq!(p.stats().free_pages, 512);
    p.audit().unwrap();
}

#[test]
fn contiguous_runs_cross_chunks_and_prefer_own_chunks() {
    let p = pool(8);
    let s = p.alloc_4k(MemoryUse::Sept).unwrap();
    // 600 pages: must span two chunks; must not start in the S-EPT chunk.
    let run = p.alloc_contiguous(600, MemoryUse::Pamt).unwrap();
    assert_eq!(run, Hpa(BASE + PAGE_SIZE_2M));
    for i in 0..600 {
        assert_eq!(p.use_of(run.add(i * 0x1000)), Some(MemoryUse::Pamt));
    }
    assert_eq!(p.stats().mixed_chunks, 0);
    assert_eq!(
        p.alloc_contiguous(0, MemoryUse::Pamt),
        Err(PoolError::ZeroPages)
    );
    assert_eq!(
        p.alloc_contiguous(5000, MemoryUse::Pamt),
        Err(PoolError::OutOfMemory { pages: 5000 })
    );
    p.audit().unwrap();
    p.free_4k(s, MemoryUse::Sept).unwrap();
    p.free_contiguous(run, 600, MemoryUse::Pamt).unwrap();
    assert_eq!(p.stats().free_extents_2m, 4);
    p.audit().unwrap();
}

#[test]
fn batch_allocation_is_all_or_nothing() {
    let p = pool(2);
    let mut out = Vec::new();
    p.alloc_4k_batch(MemoryUse::Sept, 100, &mut out).unwrap();
    assert_eq!(out.len(), 100);
    assert_eq!(
        p.alloc_4k_batch(MemoryUse::Sept, 500, &mut out),
        Err(PoolError::OutOfMemory { pages: 500 })
    );
    assert_eq!(out.len(), 100);
    assert_eq!(p.stats().used_by(MemoryUse::Sept), 100);
    p.audit().unwrap();
}

#[test]
fn concurrent_alloc_free_keeps_accounting_exact() {
    let p = Arc::new(pool(16));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                let use_ = MemoryUse::ALL[t];
                let mut held = Vec::new();
                for i in 0..2000 {
                    if i % 3 == 2 {
                        if let Some(h) = held.pop() {
                            p.free_4k(h, use_).unwrap();
                        }
                    } else if let Ok(h) = p.alloc_4k(use_) {
                        held.push(h);
                    }
                }
                held
            })
        })
        .collect();
    let mut all = Vec::new();
    for (t, th) in threads.into_iter().enumerate() {
        let held = th.join().unwrap();
        assert_eq!(p.stats().used_by(MemoryUse::ALL[t]), held.len() as u64);
        all.extend(held);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len() as u64, p.stats().used_total());
    p.audit().unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Alloc4k(usize),
    Alloc2m(usize),
    AllocRun(usize, u64),
    /// Free the n-th live allocation (mod count), possibly naming the wrong use.
    Free(usize, bool),
    /// Free a page at an arbitrary offset (may be free, foreign or outside).
    FreeRandom(u64, usize),
    /// Free a single page out of a live multi-page allocation (split).
    FreePart(usize, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..MemoryUse::COUNT).prop_map(Op::Alloc4k),
        1 => (0..MemoryUse::COUNT).prop_map(Op::Alloc2m),
        1 => (0..MemoryUse::COUNT, 1..700u64).prop_map(|(u, n)| Op::AllocRun(u, n)),
        4 => (any::<usize>(), prop::bool::weighted(0.1)).prop_map(|(i, w)| Op::Free(i, w)),
        1 => (0..(9 * 512u64), 0..MemoryUse::COUNT).prop_map(|(o, u)| Op::FreeRandom(o, u)),
        1 => (any::<usize>(), any::<u64>()).prop_map(|(i, o)| Op::FreePart(i, o)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random alloc/free sequences against a model: no overlapping hand-outs, exact
    /// per-use accounting, errors exactly when the model says the free is invalid.
    #[test]
    fn random_sequences_match_the_model(ops in prop::collection::vec(op(), 1..120)) {
        // 8 MiB + 12 KiB starting 4 KiB into a chunk: edge chunks at both ends.
        let base = BASE + 0x1000;
        let p = MemoryPool::new(Hpa(base), 8 * MIB + 0x3000).unwrap();
        let total = p.stats().total_pages;
        let mut owner: BTreeMap<u64, MemoryUse> = BTreeMap::new(); // page addr -> use
        let mut live: Vec<(u64, u64, MemoryUse)> = Vec::new(); // (addr, pages, use)
        let mut used = [0u64; MemoryUse::COUNT]; // model's pages per use, kept in step with `owner`
        let in_pool = |a: u64| a >= base && a < base + total * 0x1000;

        let record = |owner: &mut BTreeMap<u64, MemoryUse>, used: &mut [u64; MemoryUse::COUNT], a: u64, n: u64, u: MemoryUse| {
            used[u.index()] += n;
            for i in 0..n {
                let addr = a + i * 0x1000;
                prop_assert!(in_pool(addr), "handed out {addr:#x} outside the pool");
                prop_assert!(owner.insert(addr, u).is_none(), "{addr:#x} handed out twice");
            }
            Ok(())
        };

        for op in ops {
            match op {
                Op::Alloc4k(u) => {
                    let u = MemoryUse::ALL[u];
                    match p.alloc_4k(u) {
                        Ok(h) => { record(&mut owner, &mut used, h.0, 1, u)?; live.push((h.0, 1, u)); }
                        Err(e) => {
                            prop_assert_eq!(e, PoolError::OutOfMemory { pages: 1 });
                            prop_assert_eq!(owner.len() as u64, total);
                        }
                    }
                }
                Op::Alloc2m(u) => {
                    let u = MemoryUse::ALL[u];
                    if let Ok(h) = p.alloc_2m(u) {
                        prop_assert_eq!(h.0 % PAGE_SIZE_2M, 0);
                        record(&mut owner, &mut used, h.0, 512, u)?;
                        live.push((h.0, 512, u));
                    }
                }
                Op::AllocRun(u, n) => {
                    let u = MemoryUse::ALL[u];
                    if let Ok(h) = p.alloc_contiguous(n, u) {
                        record(&mut owner, &mut used, h.0, n, u)?;
                        live.push((h.0, n, u));
                    }
                }
                Op::Free(i, wrong) => {
                    if live.is_empty() { continue; }
                    let (a, n, u) = live[i % live.len()];
                    // Pieces may have been freed by FreePart: find the model's verdict.
                    let named = if wrong { MemoryUse::ALL[(u.index() + 1) % MemoryUse::COUNT] } else { u };
                    let expected = (0..n).map(|k| a + k * 0x1000).find_map(|addr| {
                        match owner.get(&addr) {
                            None => Some(PoolError::NotAllocated { hpa: Hpa(addr) }),
                            Some(&actual) if actual != named => Some(PoolError::WrongUse {
                                hpa: Hpa(addr), expected: named, actual }),
                            Some(_) => None,
                        }
                    });
                    let got = p.free_contiguous(Hpa(a), n, named);
                    match expected {
                        Some(e) => prop_assert_eq!(got, Err(e)),
                        None => {
                            prop_assert_eq!(got, Ok(()));
                            for k in 0..n { owner.remove(&(a + k * 0x1000)); }
                            used[named.index()] -= n;
                            live.retain(|&(la, _, _)| la != a);
                        }
                    }
                }
                Op::FreeRandom(off, u) => {
                    let u = MemoryUse::ALL[u];
                    let addr = BASE + off * 0x1000;
                    let expected = if !in_pool(addr) {
                        Err(PoolError::OutOfRange { hpa: Hpa(addr), pages: 1 })
                    } else {
                        match owner.get(&addr) {
                            None => Err(PoolError::NotAllocated { hpa: Hpa(addr) }),
                            Some(&actual) if actual != u => Err(PoolError::WrongUse {
                                hpa: Hpa(addr), expected: u, actual }),
                            Some(_) => Ok(()),
                        }
                    };
                    prop_assert_eq!(p.free_4k(Hpa(addr), u), expected);
                    if expected.is_ok() { owner.remove(&addr); used[u.index()] -= 1; }
                }
                Op::FreePart(i, k) => {
                    if live.is_empty() { continue; }
                    let (a, n, u) = live[i % live.len()];
                    let addr = a + (k % n) * 0x1000;
                    // The page may have been freed and handed to another use since.
                    let expected = match owner.get(&addr) {
                        None => Err(PoolError::NotAllocated { hpa: Hpa(addr) }),
                        Some(&actual) if actual != u => Err(PoolError::WrongUse {
                            hpa: Hpa(addr), expected: u, actual }),
                        Some(_) => Ok(()),
                    };
                    prop_assert_eq!(p.free_4k(Hpa(addr), u), expected);
                    if expected.is_ok() { owner.remove(&addr); used[u.index()] -= 1; }
                }
            }
            let s = p.stats();
            prop_assert_eq!(s.total_pages, total);
            prop_assert_eq!(s.free_pages, total - owner.len() as u64);
            for u in MemoryUse::ALL {
                prop_assert_eq!(s.used_by(u), used[u.index()]);
            }
            for (&addr, &u) in owner.iter().take(8) {
                prop_assert_eq!(p.use_of(Hpa(addr)), Some(u));
            }
        }
        let mut recount = [0u64; MemoryUse::COUNT];
        for u in owner.values() { recount[u.index()] += 1; }
        prop_assert_eq!(recount, used);
        p.audit().map_err(TestCaseError::fail)?;
        // Free everything left: the pool returns to fully free with whole extents.
        for (&addr, &u) in owner.clone().iter() {
            p.free_4k(Hpa(addr), u).unwrap();
        }
        let s = p.stats();
        prop_assert_eq!(s.free_pages, total);
        prop_assert_eq!(s.mixed_chunks, 0);
        prop_assert_eq!(s.free_extents_2m, 3);
        p.audit().map_err(TestCaseError::fail)?;
    }
}
