//! Conformance tests of the software module: leaf-by-leaf state tables with exact statuses,
//! operand IDs and RCX/RDX, TLB tracking, lock collisions, teardown order, MRTD, the guest
//! exits, and property tests over random call sequences.

extern crate std;

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use super::exit;
use super::testing::{Platform, TdOptions, TestTd};
use super::workload::{Access, Order, Step, Workload};
use super::{Injection, LockMode, LockTarget};
use tdx_abi::measure::{MeasuredPage, offline_mrtd};
use tdx_abi::phys::PhysMemory;
use tdx_abi::seamcall::{Regs, SeamError, Seamcall, TdxModule};
use tdx_abi::{
    Gpa, Hpa, Leaf, OperandId, PageLevel, SeptLevelState, SeptState, TdxStatus, gpa_level_operand,
};

const G: u64 = 0x20_0000;

/// A platform of two packages (one logical CPU each).
fn two_packages() -> Platform {
    Platform::with_config(super::testing::PlatformConfig {
        num_packages: 2,
        ..Default::default()
    })
    .unwrap()
}

/// TDH.PHYMEM.CACHE.WB with command `rcx` on logical CPU `lp`: its status.
fn cache_wb(p: &Platform, lp: u32, rcx: u64) -> TdxStatus {
    let mut r = regs(Leaf::PhymemCacheWb, rcx, 0, 0);
    p.lp(lp).unwrap().seamcall(&mut r);
    TdxStatus(r.rax)
}

fn runnable(p: &Platform) -> TestTd {
    p.runnable_td(&TdOptions::default()).unwrap()
}

fn state(p: &Platform, td: &TestTd, gpa: Gpa, level: PageLevel) -> SeptState {
    let (_, ls) = p.module.mem_sept_rd(td.tdr, gpa, level).unwrap();
    ls.state().unwrap()
}

/// AUGs a 2 MiB page at `gpa` of a TD that is not finalized (so nothing needs blocking or
/// tracking) and demotes it; returns the page and the new S-EPT page.
fn aug_and_demote_2m(p: &Platform, td: &TestTd, gpa: Gpa) -> (Hpa, Hpa) {
    let big = p.alloc_2m().unwrap();
    p.aug(td, gpa, PageLevel::L2M, big).unwrap();
    let sept = p.alloc_page().unwrap();
    p.module
        .mem_page_demote(td.tdr, gpa, PageLevel::L2M, sept)
        .unwrap();
    (big, sept)
}

fn err(r: Result<impl core::fmt::Debug, SeamError>) -> SeamError {
    r.expect_err("expected an error")
}

/// Gives vCPU `v` a workload of `steps`.
fn set_steps(p: &Platform, v: Hpa, steps: Vec<Step>) {
    p.module.set_workload(v, Workload { steps });
}

fn enter(p: &Platform, tdvpr: Hpa, r10: u64, r11: u64) -> Regs {
    let mut r = Regs::for_leaf(Leaf::VpEnter, 0);
    r.rcx = tdvpr.0;
    r.r10 = r10;
    r.r11 = r11;
    p.module.seamcall(&mut r);
    r
}

#[test]
fn platform_init_and_td_build_reach_runnable() {
    let p = Platform::new();
    assert_eq!(p.module.sys_state(), super::SysState::Ready);
    let td = p.create_td(&TdOptions::default()).unwrap();
    p.add_page(&td, Gpa(0x1000), &[1; 4096], true).unwrap();
    p.finalize(&td).unwrap();
    assert_eq!(
        state(&p, &td, Gpa(0x1000), PageLevel::L4K),
        SeptState::Mapped
    );
    p.module.check_invariants().unwrap();
    p.teardown(&td).unwrap();
    p.module.check_invariants().unwrap();
    assert_eq!(p.module.td_child_count(td.tdr), None);
}

#[test]
fn aug_block_track_remove_cycle() {
    let p = Platform::new();
    let td = runnable(&p);
    let gpa = Gpa(4 * G);
    let page = p.alloc_page().unwrap();
    p.aug(&td, gpa, PageLevel::L4K, page).unwrap();
    assert_eq!(state(&p, &td, gpa, PageLevel::L4K), SeptState::Pending);
    // Remove without blocking: not blocked.
    let e = err(p.module.mem_page_remove(td.tdr, gpa, PageLevel::L4K));
    assert_eq!(
        e.status,
        TdxStatus::GPA_RANGE_NOT_BLOCKED.with_operand(OperandId::RCX)
    );
    assert_eq!(SeptLevelState(e.rdx).state(), Some(SeptState::Pending));
    p.module
        .mem_range_block(td.tdr, gpa, PageLevel::L4K)
        .unwrap();
    let e = err(p.module.mem_page_remove(td.tdr, gpa, PageLevel::L4K));
    assert_eq!(
        e.status,
        TdxStatus::TLB_TRACKING_NOT_DONE.with_operand(OperandId::RCX)
    );
    p.module.mem_track(td.tdr).unwrap();
    p.module
        .mem_page_remove(td.tdr, gpa, PageLevel::L4K)
        .unwrap();
    assert_eq!(state(&p, &td, gpa, PageLevel::L4K), SeptState::Free);
    p.module.phymem_page_wbinvd(page, td.hkid).unwrap();
    p.module.check_invariants().unwrap();
}

#[test]
fn mrtd_matches_the_offline_function() {
    let p = Platform::new();
    let td = p.create_td(&TdOptions::default()).unwrap();
    let img: Vec<[u8; 4096]> = (0..4u8).map(|i| [i.wrapping_mul(37); 4096]).collect();
    let gpas = [0xFFFF_C000u64, 0xFFFF_D000, 0x10_0000, 0x10_1000];
    let extend = [true, true, false, true];
    for i in 0..4 {
        p.add_page(&td, Gpa(gpas[i]), &img[i], extend[i]).unwrap();
    }
    let mrtd = p.finalize(&td).unwrap();
    let pages: Vec<MeasuredPage<'_>> = (0..4)
        .map(|i| MeasuredPage {
            gpa: Gpa(gpas[i]),
            bytes: &img[i],
            extend: extend[i],
        })
        .collect();
    assert_eq!(mrtd, offline_mrtd(pages.iter().copied()));
    // Order matters.
    let mut swapped = pages.clone();
    swapped.swap(0, 1);
    assert_ne!(mrtd, offline_mrtd(swapped));
}

#[test]
fn guest_touch_faults_then_runs_after_aug_and_accept() {
    let p = Platform::new();
    let td = runnable(&p);
    let v = td.vcpus[0].tdvpr;
    let gpa = Gpa(8 * G);
    set_steps(
        &p,
        v,
        vec![
            Step::Accept {
                gpa,
                len: 2 * 4096,
                level: PageLevel::L4K,
            },
            Step::Touch {
                gpa,
                len: 2 * 4096,
                access: Access::Write,
                order: Order::Sequential,
            },
            Step::Print { line: "ok".into() },
            Step::Halt,
        ],
    );
    let mut console = Vec::new();
    let mut exits = 0;
    loop {
        exits += 1;
        assert!(exits < 100);
        let r = enter(&p, v, 0, 0);
        match r.rax {
            exit::EPT_VIOLATION => {
                assert_eq!(r.rdx & exit::EXT_QUAL_TYPE_MASK, exit::EXT_QUAL_TYPE_ACCEPT);
                // `tdaccept_vmx_eeq_info_t.req_sept_level` (intel/tdx-module
                // `include/tdx_api_defs.h`): 4 KiB requested.
                assert_eq!(r.rdx >> 32 & 7, 0);
                let page = p.alloc_page().unwrap();
                p.aug(&td, Gpa(r.r8), PageLevel::L4K, page).unwrap();
            }
            exit::TDCALL if r.r11 == exit::TDVMCALL_IO => {
                assert_eq!(r.r14, crate::workload::SERIAL_PORT);
                console.push(r.r15 as u8);
            }
            exit::TDCALL if r.r11 == exit::TDVMCALL_HLT => break,
            other => panic!("unexpected exit {other:#x}"),
        }
    }
    assert_eq!(console, b"ok\n");
    assert_eq!(state(&p, &td, gpa, PageLevel::L4K), SeptState::Mapped);
    p.module.check_invariants().unwrap();
}

// ---------- helpers ----------

fn raw(p: &Platform, mut r: Regs) -> Regs {
    p.module.seamcall(&mut r);
    r
}

fn regs(leaf: Leaf, rcx: u64, rdx: u64, r8: u64) -> Regs {
    let mut r = Regs::for_leaf(leaf, 0);
    r.rcx = rcx;
    r.rdx = rdx;
    r.r8 = r8;
    r
}

/// Sets up the entry for `gpa` at `level` of an INITIALIZED TD in `state` (through real
/// leaves where possible, `force_sept_state` for the rest).
fn entry_in_state(p: &Platform, td: &TestTd, gpa: Gpa, level: PageLevel, state: SeptState) {
    p.ensure_sept_path(td, gpa, level).unwrap();
    match state {
        SeptState::Free => return,
        SeptState::NlMapped | SeptState::NlBlocked => {
            let page = p.alloc_page().unwrap();
            p.module.mem_sept_add(td.tdr, gpa, level, page).unwrap();
        }
        _ => {
            let page = if level == PageLevel::L2M {
                p.alloc_2m().unwrap()
            } else {
                p.alloc_page().unwrap()
            };
            p.module.mem_page_aug(td.tdr, gpa, level, page).unwrap();
        }
    }
    assert!(p.module.force_sept_state(td.tdr, gpa, level, state));
}

const LEAF_STATES: [SeptState; 8] = [
    SeptState::Free,
    SeptState::Removed,
    SeptState::Mapped,
    SeptState::Blocked,
    SeptState::Pending,
    SeptState::PendingBlocked,
    SeptState::BlockedW,
    SeptState::PendingBlockedW,
];

fn check_table(
    leaf: Leaf,
    level: PageLevel,
    states: &[SeptState],
    allowed: &[SeptState],
    call: impl Fn(&Platform, &TestTd, Gpa) -> Result<Regs, SeamError>,
) {
    for &s in states {
        let p = Platform::new();
        let td = p.create_td(&TdOptions::default()).unwrap();
        let gpa = Gpa(16 * G);
        entry_in_state(&p, &td, gpa, level, s);
        let res = call(&p, &td, gpa);
        let incorrect = TdxStatus::EPT_ENTRY_STATE_INCORRECT.with_operand(OperandId::RCX);
        if allowed.contains(&s) {
            if let Err(e) = &res {
                assert_ne!(
                    e.status,
                    incorrect,
                    "{} in {s:?} must be allowed",
                    leaf.name()
                );
            }
        } else {
            let e = res.expect_err("state must be refused");
            assert_eq!(e.status, incorrect, "{} in {s:?}", leaf.name());
            let ls = SeptLevelState(e.rdx);
            assert_eq!(ls.level(), level as u8, "{} in {s:?}", leaf.name());
            assert_eq!(ls.state(), Some(s), "{} in {s:?}", leaf.name());
        }
    }
}

fn call(p: &Platform, r: Regs) -> Result<Regs, SeamError> {
    p.module.call(r)
}

/// [`check_table`] for a leaf taking the GPA+level of `gpa` at `level` in RCX, the TDR in
/// RDX and, with `new_page`, a freshly allocated page in R8.
fn check_sept_leaf_table(
    leaf: Leaf,
    level: PageLevel,
    states: &[SeptState],
    allowed: &[SeptState],
    new_page: bool,
) {
    check_table(leaf, level, states, allowed, |p, td, gpa| {
        let r8 = if new_page {
            p.alloc_page().unwrap().0
        } else {
            0
        };
        call(p, regs(leaf, gpa_level_operand(gpa, level), td.tdr.0, r8))
    });
}

// ---------- legality tables (seamcall_sept_state_lookup) ----------

#[test]
fn legality_page_aug() {
    check_sept_leaf_table(
        Leaf::MemPageAug,
        PageLevel::L4K,
        &LEAF_STATES,
        &[SeptState::Free, SeptState::Removed],
        true,
    );
}

#[test]
fn legality_page_add() {
    check_table(
        Leaf::MemPageAdd,
        PageLevel::L4K,
        &LEAF_STATES,
        &[SeptState::Free],
        |p, td, gpa| {
            let page = p.alloc_page().unwrap();
            let src = p.alloc_page().unwrap();
            let mut r = regs(Leaf::MemPageAdd, gpa.0, td.tdr.0, page.0);
            r.r9 = src.0;
            call(p, r)
        },
    );
}

#[test]
fn legality_range_block_and_unblock() {
    check_sept_leaf_table(
        Leaf::MemRangeBlock,
        PageLevel::L4K,
        &LEAF_STATES,
        &[
            SeptState::Mapped,
            SeptState::Pending,
            SeptState::Blocked,
            SeptState::PendingBlocked,
            SeptState::BlockedW,
            SeptState::PendingBlockedW,
        ],
        false,
    );
    check_sept_leaf_table(
        Leaf::MemRangeUnblock,
        PageLevel::L4K,
        &LEAF_STATES,
        &[SeptState::Blocked, SeptState::PendingBlocked],
        false,
    );
    check_sept_leaf_table(
        Leaf::MemRangeBlock,
        PageLevel::L2M,
        &[SeptState::NlMapped, SeptState::NlBlocked, SeptState::Free],
        &[SeptState::NlMapped, SeptState::NlBlocked],
        false,
    );
}

#[test]
fn legality_page_remove() {
    check_sept_leaf_table(
        Leaf::MemPageRemove,
        PageLevel::L4K,
        &LEAF_STATES,
        &[
            SeptState::Mapped,
            SeptState::Blocked,
            SeptState::Pending,
            SeptState::PendingBlocked,
            SeptState::BlockedW,
            SeptState::PendingBlockedW,
        ],
        false,
    );
}

#[test]
fn legality_demote_promote_sept_add_remove() {
    let all2m = [
        SeptState::Free,
        SeptState::Mapped,
        SeptState::Blocked,
        SeptState::Pending,
        SeptState::PendingBlocked,
        SeptState::NlMapped,
        SeptState::NlBlocked,
    ];
    let l2m = PageLevel::L2M;
    let non_leaf = [SeptState::NlMapped, SeptState::NlBlocked];
    check_sept_leaf_table(
        Leaf::MemPageDemote,
        l2m,
        &all2m,
        &[
            SeptState::Mapped,
            SeptState::Blocked,
            SeptState::Pending,
            SeptState::PendingBlocked,
        ],
        true,
    );
    check_sept_leaf_table(Leaf::MemPagePromote, l2m, &all2m, &non_leaf, false);
    check_sept_leaf_table(Leaf::MemSeptRemove, l2m, &all2m, &non_leaf, false);
    check_sept_leaf_table(Leaf::MemSeptAdd, l2m, &all2m, &[SeptState::Free], true);
}

#[test]
fn sept_rd_reads_any_state_and_walk_failure_reports_the_stop() {
    let p = Platform::new();
    let td = p.create_td(&TdOptions::default()).unwrap();
    for s in LEAF_STATES {
        let gpa = Gpa(16 * G + (s as u64) * 4096);
        entry_in_state(&p, &td, gpa, PageLevel::L4K, s);
        assert_eq!(state(&p, &td, gpa, PageLevel::L4K), s);
    }
    // No table below the 1 GiB entry of 64 GiB: the walk stops at level 2 (FREE).
    let e = err(p.module.mem_sept_rd(td.tdr, Gpa(64 << 30), PageLevel::L4K));
    assert_eq!(
        e.status,
        TdxStatus::EPT_WALK_FAILED.with_operand(OperandId::RCX)
    );
    assert_eq!(SeptLevelState(e.rdx).level(), 2);
    assert_eq!(SeptLevelState(e.rdx).state(), Some(SeptState::Free));
    // AUG there fails the same way.
    let page = p.alloc_page().unwrap();
    let e = err(p
        .module
        .mem_page_aug(td.tdr, Gpa(64 << 30), PageLevel::L4K, page));
    assert_eq!(
        e.status,
        TdxStatus::EPT_WALK_FAILED.with_operand(OperandId::RCX)
    );
}

// ---------- operand checks ----------

#[test]
fn operand_checks_give_exact_operand_ids() {
    let p = Platform::new();
    let td = runnable(&p);
    p.ensure_sept_path(&td, Gpa(G), PageLevel::L4K).unwrap();
    let page = p.alloc_page().unwrap();
    let st = |r: Regs| TdxStatus(raw(&p, r).rax);
    // Reserved RAX bits and unsupported versions.
    let mut r = Regs::for_leaf(Leaf::MemTrack, 0);
    r.rax |= 1 << 30;
    assert_eq!(
        st(r),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::RAX)
    );
    let mut r = regs(Leaf::MemTrack, td.tdr.0, 0, 0);
    r.rax |= 1 << 16;
    assert_eq!(
        st(r),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::RAX)
    );
    assert_eq!(
        st(Regs {
            rax: 99,
            ..Regs::default()
        }),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::RAX)
    );
    // AUG at 1 GiB is not allowed; misaligned GPA; reserved bits; shared GPA.
    for rcx in [
        gpa_level_operand(Gpa(0), PageLevel::L1G),
        gpa_level_operand(Gpa(G + 0x1000), PageLevel::L2M),
        G | 0x8,
        (1 << 47) | G,
    ] {
        assert_eq!(
            st(regs(Leaf::MemPageAug, rcx, td.tdr.0, page.0)),
            TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX),
            "{rcx:#x}"
        );
    }
    // TDR operand: not a TDR page, misaligned, outside the module's range.
    assert_eq!(
        st(regs(Leaf::MemPageAug, G, page.0, page.0)),
        TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::RDX)
    );
    assert_eq!(
        st(regs(Leaf::MemPageAug, G, td.tdr.0 + 8, page.0)),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX)
    );
    assert_eq!(
        st(regs(Leaf::MemPageAug, G, 0x1000, page.0)),
        TdxStatus::OPERAND_ADDR_RANGE_ERROR.with_operand(OperandId::RDX)
    );
    // Target page already owned (a TDCS page), and 2M AUG with a misaligned page. (The TDR
    // itself as target collides with the TDR lock this very call holds: BUSY.)
    assert_eq!(
        st(regs(Leaf::MemPageAug, G, td.tdr.0, td.tdr.0)),
        TdxStatus::OPERAND_BUSY.with_operand(OperandId::R8)
    );
    assert_eq!(
        st(regs(Leaf::MemPageAug, G, td.tdr.0, td.tdcs[0].0)),
        TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::R8)
    );
    assert_eq!(
        st(regs(Leaf::MemPageAug, G | 1, td.tdr.0, page.0 + 0x1000)),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::R8)
    );
    // PAGE.ADD after finalize: op state, with no operand ID (`check_state_map_tdcs_and_lock`
    // in intel/tdx-module `src/common/helpers/helpers.c`).
    let mut r = regs(Leaf::MemPageAdd, G, td.tdr.0, page.0);
    r.r9 = page.0;
    assert_eq!(st(r), TdxStatus::OP_STATE_INCORRECT);
}

#[test]
fn platform_sequence_and_config_checks() {
    use super::{EmuConfig, EmuLimits, EmulatedModule};
    use tdx_abi::phys::SparseMemory;
    let mem = Arc::new(SparseMemory::new());
    let base = 1u64 << 30;
    let m = EmulatedModule::new(
        EmuConfig {
            phys_base: Hpa(base),
            phys_size: 1 << 30,
            num_lps: 2,
            num_packages: 2,
            hkid_start: 32,
            num_hkids: 8,
            hkid_shift: 46,
            limits: EmuLimits::default(),
        },
        mem.clone() as Arc<dyn PhysMemory>,
    )
    .unwrap();
    let st = |s: &dyn Seamcall, r: Regs| {
        let mut r = r;
        s.seamcall(&mut r);
        TdxStatus(r.rax)
    };
    let lp1 = m.lp(1).unwrap();
    assert_eq!(
        st(&*m, regs(Leaf::MngCreate, base, 33, 0)),
        TdxStatus::SYS_LP_INIT_NOT_DONE
    );
    assert_eq!(
        st(&*m, Regs::for_leaf(Leaf::SysLpInit, 0)),
        TdxStatus::SYS_STATE_INCORRECT
    );
    assert_eq!(
        st(&*m, Regs::for_leaf(Leaf::SysInit, 0)),
        TdxStatus::SUCCESS
    );
    assert_eq!(
        st(&*m, Regs::for_leaf(Leaf::SysInit, 0)),
        TdxStatus::SYS_INIT_NOT_PENDING
    );
    assert_eq!(
        st(&*m, Regs::for_leaf(Leaf::SysLpInit, 0)),
        TdxStatus::SUCCESS
    );
    assert_eq!(
        st(&*m, Regs::for_leaf(Leaf::SysLpInit, 0)),
        TdxStatus::SYS_LP_INIT_DONE
    );
    // TDMR_INFO at base + 0x7F0000, array at base + 0x7F1000.
    let info_pa = base + 0x7F_0000;
    let arr = base + 0x7F_1000;
    mem.write(Hpa(arr), &info_pa.to_le_bytes());
    let write_info = |f: [u64; 10]| {
        let mut info = [0u8; 512];
        for (i, v) in f.iter().enumerate() {
            info[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        mem.write(Hpa(info_pa), &info);
    };
    let good = [
        base,
        1 << 30,
        base + 0x40_2000,
        0x1000,
        base + 0x40_0000,
        0x2000,
        base,
        0x40_0000,
        0,
        0x80_0000,
    ];
    let cfg = regs(Leaf::SysConfig, arr, 1, 32);
    assert_eq!(st(&*m, cfg), TdxStatus::SYS_LP_INIT_NOT_DONE);
    assert_eq!(
        st(&lp1, Regs::for_leaf(Leaf::SysLpInit, 0)),
        TdxStatus::SUCCESS
    );
    let mut bad = good;
    bad[0] = base + 0x20_0000;
    write_info(bad);
    assert_eq!(st(&*m, cfg), TdxStatus::INVALID_TDMR);
    let mut bad = good;
    bad[7] = 0x3F_F000; // 4K PAMT too small
    write_info(bad);
    assert_eq!(st(&*m, cfg), TdxStatus::INVALID_PAMT);
    let mut bad = good;
    bad[9] = 0x40_0000; // reserved area does not cover the 2M/1G PAMT arrays
    write_info(bad);
    assert_eq!(st(&*m, cfg), TdxStatus::PAMT_OVERLAP);
    let mut bad = good;
    bad[1] = 2 << 30; // second GiB outside the CMR
    write_info(bad);
    assert_eq!(st(&*m, cfg), TdxStatus::TDMR_OUTSIDE_CMRS);
    let mut bad = good;
    bad[2] = 0x1000; // PAMT outside the CMR
    write_info(bad);
    assert_eq!(st(&*m, cfg), TdxStatus::PAMT_OUTSIDE_CMRS);
    write_info(good);
    assert_eq!(
        st(&*m, regs(Leaf::SysConfig, arr, 1, 99)),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::R8)
    );
    assert_eq!(
        st(&*m, regs(Leaf::SysConfig, arr, 0, 32)),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX)
    );
    assert_eq!(st(&*m, cfg), TdxStatus::SUCCESS);
    assert_eq!(st(&*m, cfg), TdxStatus::SYS_CONFIG_NOT_PENDING);
    // Keys on both packages before TDMR.INIT.
    assert_eq!(
        st(&*m, regs(Leaf::SysTdmrInit, base, 0, 0)),
        TdxStatus::SYS_STATE_INCORRECT
    );
    assert_eq!(
        st(&*m, Regs::for_leaf(Leaf::SysKeyConfig, 0)),
        TdxStatus::SUCCESS
    );
    assert_eq!(
        st(&*m, Regs::for_leaf(Leaf::SysKeyConfig, 0)),
        TdxStatus::SYS_KEY_CONFIG_NOT_PENDING
    );
    assert_eq!(
        st(&*m, regs(Leaf::SysTdmrInit, base, 0, 0)),
        TdxStatus::SYS_STATE_INCORRECT
    );
    assert_eq!(
        st(&lp1, Regs::for_leaf(Leaf::SysKeyConfig, 0)),
        TdxStatus::SUCCESS
    );
    assert_eq!(
        st(&*m, regs(Leaf::MngCreate, base + (8 << 20), 33, 0)),
        TdxStatus::SYS_NOT_READY
    );
    let mut calls = 0;
    loop {
        let mut r = regs(Leaf::SysTdmrInit, base, 0, 0);
        m.seamcall(&mut r);
        assert_eq!(TdxStatus(r.rax), TdxStatus::SUCCESS);
        calls += 1;
        if r.rdx >= base + (1 << 30) {
            break;
        }
    }
    assert_eq!(calls, 4); // 256 MiB per call
    assert_eq!(m.sys_state(), super::SysState::Ready);
    assert_eq!(
        st(&*m, regs(Leaf::SysTdmrInit, base, 0, 0)),
        TdxStatus::TDMR_ALREADY_INITIALIZED
    );
    // PAMT pages are reserved: not usable as a TDR. The global KeyID is not a TD KeyID.
    assert_eq!(
        st(&*m, regs(Leaf::MngCreate, base, 33, 0)),
        TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::RCX)
    );
    assert_eq!(
        st(&*m, regs(Leaf::MngCreate, base + (8 << 20), 32, 0)),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX)
    );
    assert_eq!(
        st(&*m, regs(Leaf::MngCreate, base + (8 << 20), 33, 0)),
        TdxStatus::SUCCESS
    );
    assert_eq!(
        st(&*m, regs(Leaf::MngCreate, base + (9 << 20), 33, 0)),
        TdxStatus::HKID_NOT_FREE.with_operand(OperandId::RDX)
    );
    // KEY.CONFIG per package; ADDCX before that is refused.
    let tdr = base + (8 << 20);
    assert_eq!(
        st(&*m, regs(Leaf::MngAddCx, tdr + 0x1000, tdr, 0)),
        TdxStatus::TD_KEYS_NOT_CONFIGURED
    );
    assert_eq!(
        st(&*m, regs(Leaf::MngKeyConfig, tdr, 0, 0)),
        TdxStatus::SUCCESS
    );
    assert_eq!(
        st(&*m, regs(Leaf::MngKeyConfig, tdr, 0, 0)),
        TdxStatus::KEY_CONFIGURED
    );
    assert_eq!(
        st(&lp1, regs(Leaf::MngKeyConfig, tdr, 0, 0)),
        TdxStatus::SUCCESS
    );
}

#[test]
fn td_params_are_validated_by_mng_init() {
    use tdx_abi::td_params::TdParams;
    let p = Platform::new();
    type Mutation = fn(&mut TdParams);
    let cases: [(Mutation, OperandId); 6] = [
        (|t| t.attributes |= 1 << 5, OperandId::ATTRIBUTES),
        (|t| t.xfam = 0, OperandId::XFAM),
        (|t| t.max_vcpus = 0, OperandId::MAX_VCPUS),
        (|t| t.eptp_controls = 3 << 3, OperandId::EPTP_CONTROLS),
        (|t| t.tsc_frequency = 1, OperandId::TSC_FREQUENCY),
        (
            |t| t.cpuid_values = vec![[1, 0, 0, 0]],
            OperandId::CPUID_CONFIG,
        ),
    ];
    for (mutate, op) in cases {
        let tdr = p.alloc_page().unwrap();
        p.module.call(regs(Leaf::MngCreate, tdr.0, 40, 0)).unwrap();
        p.module
            .call(regs(Leaf::MngKeyConfig, tdr.0, 0, 0))
            .unwrap();
        let init = regs(Leaf::MngInit, tdr.0, 0, 0);
        // TDCS not allocated yet.
        let e = p.module.call(init).unwrap_err();
        assert_eq!(e.status, TdxStatus::TDCS_NOT_ALLOCATED);
        for _ in 0..4 {
            let cx = p.alloc_page().unwrap();
            p.module.call(regs(Leaf::MngAddCx, cx.0, tdr.0, 0)).unwrap();
        }
        let extra = p.alloc_page().unwrap();
        let e = p
            .module
            .call(regs(Leaf::MngAddCx, extra.0, tdr.0, 0))
            .unwrap_err();
        // A TDCS page beyond the minimum before MNG.INIT: only L2 VMs use those (not
        // modelled); TDX_TDCX_NUM_INCORRECT has no operand ID (`tdh_mng_add_cx.c`).
        assert_eq!(e.status, TdxStatus::TDCX_NUM_INCORRECT);
        let mut params = TdParams::basic(0, 4);
        mutate(&mut params);
        let pa = p.alloc_page().unwrap();
        p.mem.write(pa, &params.to_bytes());
        let e = p
            .module
            .call(regs(Leaf::MngInit, tdr.0, pa.0, 0))
            .unwrap_err();
        assert_eq!(
            e.status,
            TdxStatus::OPERAND_INVALID.with_operand(op),
            "{op:?}"
        );
        // The module stays in UNINITIALIZED: a valid TD_PARAMS then works.
        p.mem.write(pa, &TdParams::basic(0, 4).to_bytes());
        p.module.call(regs(Leaf::MngInit, tdr.0, pa.0, 0)).unwrap();
        let e = p
            .module
            .call(regs(Leaf::MngInit, tdr.0, pa.0, 0))
            .unwrap_err();
        assert_eq!(e.status, TdxStatus::OP_STATE_INCORRECT);
        // Tear this TD down so the KeyID is free again.
        p.module
            .call(regs(Leaf::MngVpFlushDone, tdr.0, 0, 0))
            .unwrap();
        p.module
            .call(Regs::for_leaf(Leaf::PhymemCacheWb, 0))
            .unwrap();
        p.module
            .call(regs(Leaf::MngKeyFreeId, tdr.0, 0, 0))
            .unwrap();
    }
}

/// The op-state gate of the vCPU build, TD build and run leaves: the UNINITIALIZED,
/// INITIALIZED and RUNNABLE columns of `seamcall_state_lookup` (intel/tdx-module
/// `include/auto_gen/op_state_lookup.c`); a refused call answers `TDX_OP_STATE_INCORRECT`
/// with no operand ID (`check_any_td_state_map_tdcs_and_lock`, `src/common/helpers/helpers.c`)
/// and changes nothing.
#[test]
fn op_state_gates_build_and_run_leaves() {
    let p = Platform::new();
    let m = &p.module;
    let op_state = |r: Regs| m.call(r).map(drop).map_err(|e| e.status);
    let refused = Err(TdxStatus::OP_STATE_INCORRECT);

    // UNINITIALIZED (TDCS allocated, no MNG.INIT): VP.CREATE, PAGE.AUG, PAGE.ADD,
    // MR.FINALIZE and VP.ENTER's neighbours are refused.
    let tdr = p.alloc_page().unwrap();
    m.call(regs(Leaf::MngCreate, tdr.0, 41, 0)).unwrap();
    m.call(regs(Leaf::MngKeyConfig, tdr.0, 0, 0)).unwrap();
    for _ in 0..super::EmuLimits::default().tdcs_pages {
        let cx = p.alloc_page().unwrap();
        m.call(regs(Leaf::MngAddCx, cx.0, tdr.0, 0)).unwrap();
    }
    let page = p.alloc_page().unwrap();
    assert_eq!(op_state(regs(Leaf::VpCreate, page.0, tdr.0, 0)), refused);
    assert_eq!(op_state(regs(Leaf::MrFinalize, tdr.0, 0, 0)), refused);
    assert_eq!(op_state(regs(Leaf::MemPageAug, G, tdr.0, page.0)), refused);
    let mut add = regs(Leaf::MemPageAdd, G, tdr.0, page.0);
    add.r9 = page.0;
    assert_eq!(op_state(add), refused);
    assert_eq!(
        m.pamt_entry(page).unwrap().page_type,
        tdx_abi::pamt::PageType::Nda
    );

    // INITIALIZED: the vCPU build leaves and PAGE.AUG (`seamcall_state_lookup[6]` allows
    // it before finalize) work; VP.ENTER, MNG.INIT and another MNG.ADDCX do not.
    let td = p
        .create_td(&TdOptions {
            vcpus: 1,
            max_vcpus: 4,
            ..TdOptions::default()
        })
        .unwrap();
    let half = p.alloc_page().unwrap();
    m.call(regs(Leaf::VpCreate, half.0, td.tdr.0, 0)).unwrap();
    let cx = p.alloc_page().unwrap();
    m.call(regs(Leaf::VpAddCx, cx.0, half.0, 0)).unwrap();
    assert_eq!(
        TdxStatus(enter(&p, td.vcpus[0].tdvpr, 0, 0).rax),
        TdxStatus::OP_STATE_INCORRECT
    );
    let params = p.alloc_page().unwrap();
    p.mem.write(
        params,
        &tdx_abi::td_params::TdParams::basic(0, 4).to_bytes(),
    );
    assert_eq!(
        op_state(regs(Leaf::MngInit, td.tdr.0, params.0, 0)),
        refused
    );
    let extra_cx = p.alloc_page().unwrap();
    assert_eq!(
        op_state(regs(Leaf::MngAddCx, extra_cx.0, td.tdr.0, 0)),
        refused
    );
    let aug_page = p.alloc_page().unwrap();
    p.aug(&td, Gpa(4 * G), PageLevel::L4K, aug_page).unwrap();
    assert_eq!(
        state(&p, &td, Gpa(4 * G), PageLevel::L4K),
        SeptState::Pending
    );
    p.add_page(&td, Gpa(G), &[7; 4096], true).unwrap();
    p.finalize(&td).unwrap();

    // RUNNABLE: VP.CREATE, VP.ADDCX, VP.INIT, PAGE.ADD, MR.EXTEND, MR.FINALIZE refused;
    // VP.ENTER and PAGE.AUG work.
    let late = p.alloc_page().unwrap();
    assert_eq!(op_state(regs(Leaf::VpCreate, late.0, td.tdr.0, 0)), refused);
    assert_eq!(op_state(regs(Leaf::VpAddCx, late.0, half.0, 0)), refused);
    assert_eq!(op_state(regs(Leaf::VpInit, half.0, 0, 0)), refused);
    let mut add = regs(Leaf::MemPageAdd, G + 4096, td.tdr.0, late.0);
    add.r9 = late.0;
    assert_eq!(op_state(add), refused);
    assert_eq!(op_state(regs(Leaf::MrExtend, G, td.tdr.0, 0)), refused);
    assert_eq!(op_state(regs(Leaf::MrFinalize, td.tdr.0, 0, 0)), refused);
    assert_eq!(
        op_state(regs(Leaf::MngInit, td.tdr.0, params.0, 0)),
        refused
    );
    assert_eq!(
        m.pamt_entry(late).unwrap().page_type,
        tdx_abi::pamt::PageType::Nda
    );
    let aug_page2 = p.alloc_page().unwrap();
    p.aug(&td, Gpa(4 * G + 4096), PageLevel::L4K, aug_page2)
        .unwrap();
    set_steps(&p, td.vcpus[0].tdvpr, vec![]);
    let r = enter(&p, td.vcpus[0].tdvpr, 0, 0);
    assert_ne!(TdxStatus(r.rax), TdxStatus::OP_STATE_INCORRECT);
    assert!(!TdxStatus(r.rax).is_error(), "{:#x}", r.rax);
    m.check_invariants().unwrap();
}

/// Lifecycle gate of the leaves that check the TD's build state: any lifecycle state but
/// KEYS_CONFIGURED (here: after TDH.MNG.VPFLUSHDONE) answers `TDX_TD_KEYS_NOT_CONFIGURED`
/// (`check_td_in_correct_build_state` in intel/tdx-module `src/common/helpers/helpers.c`;
/// TDH.MNG.ADDCX the same in `tdh_mng_add_cx.c`).
#[test]
fn blocked_td_answers_keys_not_configured() {
    let p = Platform::new();
    let m = &p.module;
    let td = p.create_td(&TdOptions::default()).unwrap();
    p.flush_vcpus(&td).unwrap();
    m.call(regs(Leaf::MngVpFlushDone, td.tdr.0, 0, 0)).unwrap();
    let page = p.alloc_page().unwrap();
    let keys = Err(TdxStatus::TD_KEYS_NOT_CONFIGURED);
    let call = |r: Regs| m.call(r).map(drop).map_err(|e| e.status);
    assert_eq!(call(regs(Leaf::VpCreate, page.0, td.tdr.0, 0)), keys);
    assert_eq!(call(regs(Leaf::MngAddCx, page.0, td.tdr.0, 0)), keys);
    assert_eq!(call(regs(Leaf::MrFinalize, td.tdr.0, 0, 0)), keys);
    assert_eq!(call(regs(Leaf::VpInit, td.vcpus[0].tdvpr.0, 0, 0)), keys);
    assert_eq!(
        TdxStatus(enter(&p, td.vcpus[0].tdvpr, 0, 0).rax),
        TdxStatus::TD_KEYS_NOT_CONFIGURED
    );
}

/// TD_PARAMS rules of TDH.MNG.INIT and their precedence, as `read_and_set_td_configurations`
/// and `read_and_set_cpuid_configurations` (intel/tdx-module
/// `src/vmm_dispatcher/api_calls/tdh_mng_init.c`) and the helpers `verify_td_attributes`,
/// `check_xfam`, `verify_and_set_td_eptp_controls` (`src/common/helpers/helpers.c`) check
/// them; TDX_XFAM_FIXED0 from `td_control_structures.h`, OPERAND_ID_NUM_L2_VMS (71) from
/// `include/auto_gen/tdx_error_codes_defs.h`.
#[test]
fn td_params_rules_and_precedence() {
    use tdx_abi::td_params::{TD_PARAMS_SIZE, TdParams, attributes, config_flags};
    let p = Platform::new();
    let m = &p.module;
    let pa = p.alloc_page().unwrap();
    // MNG.INIT of a fresh TD (KeyID 42, torn down again) with TD_PARAMS `bytes`.
    let init = |bytes: &[u8; TD_PARAMS_SIZE]| -> Result<(), TdxStatus> {
        let tdr = p.alloc_page().unwrap();
        m.call(regs(Leaf::MngCreate, tdr.0, 42, 0)).unwrap();
        m.call(regs(Leaf::MngKeyConfig, tdr.0, 0, 0)).unwrap();
        for _ in 0..super::EmuLimits::default().tdcs_pages {
            let cx = p.alloc_page().unwrap();
            m.call(regs(Leaf::MngAddCx, cx.0, tdr.0, 0)).unwrap();
        }
        p.mem.write(pa, bytes);
        let result = m
            .call(regs(Leaf::MngInit, tdr.0, pa.0, 0))
            .map(drop)
            .map_err(|e| e.status);
        m.call(regs(Leaf::MngVpFlushDone, tdr.0, 0, 0)).unwrap();
        m.call(Regs::for_leaf(Leaf::PhymemCacheWb, 0)).unwrap();
        m.call(regs(Leaf::MngKeyFreeId, tdr.0, 0, 0)).unwrap();
        result
    };
    let with = |f: &dyn Fn(&mut TdParams)| {
        let mut t = TdParams::basic(attributes::SEPT_VE_DISABLE, 4);
        f(&mut t);
        t.to_bytes()
    };
    let invalid = |op| Err(TdxStatus::OPERAND_INVALID.with_operand(op));
    // One rule each.
    let cases: Vec<([u8; TD_PARAMS_SIZE], Result<(), TdxStatus>)> = vec![
        // A MIGRATABLE TD can be neither DEBUG nor PERFMON.
        (
            with(&|t| t.attributes |= attributes::MIGRATABLE | attributes::DEBUG),
            invalid(OperandId::ATTRIBUTES),
        ),
        (
            with(&|t| t.attributes |= attributes::MIGRATABLE | attributes::PERFMON),
            invalid(OperandId::ATTRIBUTES),
        ),
        (with(&|t| t.attributes |= attributes::MIGRATABLE), Ok(())),
        // MPX (bit 3) is outside TDX_XFAM_FIXED0; AVX-512 needs AVX and all three parts;
        // AMX needs both parts.
        (with(&|t| t.xfam |= 1 << 3), invalid(OperandId::XFAM)),
        (with(&|t| t.xfam |= 0b111 << 5), invalid(OperandId::XFAM)),
        (with(&|t| t.xfam |= 0x64), invalid(OperandId::XFAM)),
        (with(&|t| t.xfam |= 0xE4), Ok(())),
        (with(&|t| t.xfam |= 1 << 17), invalid(OperandId::XFAM)),
        (with(&|t| t.xfam |= 0b11 << 17), Ok(())),
        // NUM_L2_VMS: above 3 invalid; 1..=3 would need TDCS pages for L2 VMs.
        (with(&|t| t.num_l2_vms = 4), invalid(OperandId::NUM_L2_VMS)),
        (
            with(&|t| t.num_l2_vms = 1),
            Err(TdxStatus::TDCS_NOT_ALLOCATED),
        ),
        // EPTP_CONTROLS: WB, 4 or 5 levels, no A/D, no address; GPAW needs 5 levels and is
        // reported on EPTP_CONTROLS.
        (
            with(&|t| t.eptp_controls = EPTP_WB | (2 << 3)),
            invalid(OperandId::EPTP_CONTROLS),
        ),
        (
            with(&|t| t.eptp_controls |= 1 << 6),
            invalid(OperandId::EPTP_CONTROLS),
        ),
        (
            with(&|t| t.eptp_controls |= 0x1000),
            invalid(OperandId::EPTP_CONTROLS),
        ),
        (
            with(&|t| t.config_flags |= config_flags::GPAW),
            invalid(OperandId::EPTP_CONTROLS),
        ),
        (
            with(&|t| {
                t.config_flags |= config_flags::GPAW;
                t.eptp_controls = EPTP_WB | (4 << 3);
            }),
            Ok(()),
        ),
        (
            with(&|t| t.config_flags |= 1 << 3),
            invalid(OperandId::EXEC_CONTROLS),
        ),
        // MSR_CONFIG_CTLS bits 7:1 are reserved.
        (with(&|t| t.msr_config_ctls = 2), invalid(OperandId::RDX)),
    ];
    for (i, (bytes, expected)) in cases.iter().enumerate() {
        assert_eq!(init(bytes), *expected, "case {i}");
    }
    // Reserved bytes, by region, and where each one ranks.
    let patch = |base: [u8; TD_PARAMS_SIZE], at: usize| {
        let mut b = base;
        b[at] = 1;
        b
    };
    let ok = with(&|_| {});
    for at in [0x14, 0x2A, 0x4F, 0xE8, 0xFF, 0x100 + 16 * 2, 0x3FF] {
        assert_eq!(
            init(&patch(ok, at)),
            invalid(OperandId::RDX),
            "byte {at:#x}"
        );
    }
    // reserved_0 comes after ATTRIBUTES but before CONFIG_FLAGS.
    let bad_attr = with(&|t| t.attributes |= 1 << 5);
    assert_eq!(init(&patch(bad_attr, 0x14)), invalid(OperandId::ATTRIBUTES));
    let bad_flags = with(&|t| t.config_flags |= 1 << 3);
    assert_eq!(init(&patch(bad_flags, 0x14)), invalid(OperandId::RDX));
    // reserved_1 before CPUID_CONFIG; reserved_3 after it.
    let bad_cpuid = with(&|t| t.cpuid_values = vec![[1, 0, 0, 0]]);
    assert_eq!(init(&patch(bad_cpuid, 0x2A)), invalid(OperandId::RDX));
    assert_eq!(
        init(&patch(bad_cpuid, 0x3FF)),
        invalid(OperandId::CPUID_CONFIG)
    );
    // EPTP_CONTROLS before TSC_FREQUENCY.
    let both = with(&|t| {
        t.eptp_controls = EPTP_WB | (2 << 3);
        t.tsc_frequency = 1;
    });
    assert_eq!(init(&both), invalid(OperandId::EPTP_CONTROLS));
    m.check_invariants().unwrap();
}

const EPTP_WB: u64 = tdx_abi::td_params::EPTP_MEMTYPE_WB;

#[test]
fn vcpu_creation_limits_and_states() {
    let p = Platform::new();
    let td = p
        .create_td(&TdOptions {
            vcpus: 2,
            max_vcpus: 2,
            ..TdOptions::default()
        })
        .unwrap();
    // MAX_VCPUS is enforced by TDH.VP.INIT, which assigns the vCPU index; TDH.VP.CREATE
    // does not count vCPUs (intel/tdx-module `tdh_vp_create.c`, `tdh_vp_init.c`).
    let extra = p.alloc_page().unwrap();
    p.module
        .call(regs(Leaf::VpCreate, extra.0, td.tdr.0, 0))
        .unwrap();
    for _ in 1..super::EmuLimits::default().tdvps_pages {
        let cx = p.alloc_page().unwrap();
        p.module
            .call(regs(Leaf::VpAddCx, cx.0, extra.0, 0))
            .unwrap();
    }
    let e = p
        .module
        .call(regs(Leaf::VpInit, extra.0, 0, 0))
        .unwrap_err();
    assert_eq!(e.status, TdxStatus::MAX_VCPUS_EXCEEDED);
    // VP.INIT twice.
    let mut r = Regs::for_leaf(Leaf::VpInit, 1);
    r.rcx = td.vcpus[0].tdvpr.0;
    r.r8 = 7;
    assert_eq!(
        p.module.call(r).unwrap_err().status,
        TdxStatus::VCPU_STATE_INCORRECT
    );
    // VP.ENTER before finalize (`seamcall_state_lookup[TDH_VP_ENTER_LEAF]`).
    let r = enter(&p, td.vcpus[0].tdvpr, 0, 0);
    assert_eq!(TdxStatus(r.rax), TdxStatus::OP_STATE_INCORRECT);
    // VP.RD / VP.WR.
    use crate::metadata::vcpu as vf;
    let mut r = regs(Leaf::VpRd, td.vcpus[1].tdvpr.0, vf::VCPU_INDEX, 0);
    assert_eq!(p.module.call(r).unwrap().r8, 1);
    r = regs(Leaf::VpWr, td.vcpus[1].tdvpr.0, vf::HOST_SCRATCH, 0xAB);
    r.r9 = 0xFF;
    p.module.call(r).unwrap();
    r = regs(Leaf::VpRd, td.vcpus[1].tdvpr.0, vf::HOST_SCRATCH, 0);
    assert_eq!(p.module.call(r).unwrap().r8, 0xAB);
    // A field the host may not write: the status of `md_write_element`, passed through
    // without an operand ID (intel/tdx-module `tdh_vp_rd_wr.c`).
    r = regs(Leaf::VpWr, td.vcpus[1].tdvpr.0, vf::VCPU_INDEX, 0);
    assert_eq!(
        p.module.call(r).unwrap_err().status,
        TdxStatus::METADATA_FIELD_NOT_WRITABLE
    );
}

// ---------- TLB tracking with a vCPU inside VP.ENTER ----------

/// Writes a marker into the MAPPED page at `marker` (so the host sees the guest running,
/// after VP.ENTER took its epoch reference), then touches shared memory forever: only a kick
/// ends the entry.
fn busy_forever(marker: Gpa) -> Workload {
    Workload {
        steps: vec![
            Step::Touch {
                gpa: marker,
                len: 4096,
                access: Access::Write,
                order: Order::Sequential,
            },
            Step::Touch {
                gpa: Gpa(1 << 47),
                len: 1 << 46,
                access: Access::Read,
                order: Order::Sequential,
            },
        ],
    }
}

fn platform_without_timer() -> Platform {
    let mut cfg = super::testing::PlatformConfig::default();
    cfg.limits.max_guest_units_per_entry = u64::MAX;
    Platform::with_config(cfg).unwrap()
}

/// Enters until the entry is not BUSY (a host retries BUSY).
fn enter_retrying(p: &Platform, tdvpr: Hpa) -> Regs {
    loop {
        let r = enter(p, tdvpr, 0, 0);
        if !TdxStatus(r.rax).is_busy() {
            return r;
        }
        std::thread::yield_now();
    }
}

/// Waits until the guest wrote `marker`'s GPA into `page`.
fn wait_inside(p: &Platform, page: Hpa, marker: Gpa) {
    for _ in 0..10_000_000 {
        let mut b = [0u8; 8];
        p.mem.read(page, &mut b);
        if u64::from_le_bytes(b) == marker.0 {
            return;
        }
        std::thread::yield_now();
    }
    panic!("vCPU never entered");
}

#[test]
fn remove_waits_for_vcpus_of_the_blocking_epoch() {
    let p = Arc::new(platform_without_timer());
    let td = p.create_td(&TdOptions::default()).unwrap();
    let marker = Gpa(0x1000);
    let marker_page = p.add_page(&td, marker, &[], false).unwrap();
    p.finalize(&td).unwrap();
    let v = td.vcpus[0].tdvpr;
    let gpa = Gpa(4 * G);
    let page = p.alloc_page().unwrap();
    p.aug(&td, gpa, PageLevel::L4K, page).unwrap();
    p.module.set_workload(v, busy_forever(marker));
    let p2 = p.clone();
    let runner = std::thread::spawn(move || enter_retrying(&p2, v));
    wait_inside(&p, marker_page, marker);
    p.module
        .mem_range_block(td.tdr, gpa, PageLevel::L4K)
        .unwrap();
    p.module.mem_track(td.tdr).unwrap();
    // The vCPU entered in the blocking epoch and is still inside.
    let e = err(p.module.mem_page_remove(td.tdr, gpa, PageLevel::L4K));
    assert_eq!(
        e.status,
        TdxStatus::TLB_TRACKING_NOT_DONE.with_operand(OperandId::RCX)
    );
    // A second TRACK cannot advance past an epoch that still has a vCPU in it.
    let e = err(p.module.mem_track(td.tdr));
    assert_eq!(e.status, TdxStatus::PREVIOUS_TLB_EPOCH_BUSY);
    assert!(p.module.kick(v));
    let r = runner.join().unwrap();
    assert_eq!(r.rax, exit::EXTERNAL_INTERRUPT);
    p.module
        .mem_page_remove(td.tdr, gpa, PageLevel::L4K)
        .unwrap();
    p.module.mem_track(td.tdr).unwrap();
    p.module.check_invariants().unwrap();
}

#[test]
fn vp_enter_is_busy_while_track_holds_the_epoch_lock() {
    let p = Arc::new(Platform::new());
    let td = runnable(&p);
    let held = p
        .module
        .hold_lock(LockTarget::TdEpoch(td.tdr), LockMode::Exclusive)
        .unwrap();
    let p2 = p.clone();
    let v = td.vcpus[0].tdvpr;
    let status = std::thread::spawn(move || TdxStatus(enter(&p2, v, 0, 0).rax))
        .join()
        .unwrap();
    assert_eq!(
        status,
        TdxStatus::OPERAND_BUSY.with_operand(OperandId::TD_EPOCH)
    );
    drop(held);
    // TRACK against a shared holder (a vCPU entering) is busy too.
    let held = p
        .module
        .hold_lock(LockTarget::TdEpoch(td.tdr), LockMode::Shared)
        .unwrap();
    assert_eq!(
        err(p.module.mem_track(td.tdr)).status,
        TdxStatus::OPERAND_BUSY.with_operand(OperandId::TD_EPOCH)
    );
    drop(held);
    p.module.mem_track(td.tdr).unwrap();
}

// ---------- lock collisions ----------

#[test]
fn lock_collisions_report_the_lock_operand() {
    let p = Arc::new(Platform::new());
    let td = runnable(&p);
    p.ensure_sept_path(&td, Gpa(G), PageLevel::L4K).unwrap();
    let page = p.alloc_page().unwrap();
    let cases: Vec<(LockTarget, LockMode, Leaf, OperandId)> = vec![
        (
            LockTarget::SeptTree(td.tdr),
            LockMode::Exclusive,
            Leaf::MemPageAug,
            OperandId::SEPT_TREE,
        ),
        (
            LockTarget::SeptTree(td.tdr),
            LockMode::Shared,
            Leaf::MemRangeBlock,
            OperandId::SEPT_TREE,
        ),
        (
            LockTarget::Page(td.tdr),
            LockMode::Exclusive,
            Leaf::MemPageAug,
            OperandId::RDX,
        ),
        (
            LockTarget::Page(td.tdr),
            LockMode::Shared,
            Leaf::MngKeyFreeId,
            OperandId::RCX,
        ),
        (
            LockTarget::Page(page),
            LockMode::Shared,
            Leaf::MemPageAug,
            OperandId::R8,
        ),
        (
            LockTarget::Kot,
            LockMode::Exclusive,
            Leaf::PhymemCacheWb,
            OperandId::KOT,
        ),
        // The package's CACHE.WB mutex (intel/tdx-module `tdh_phymem_cache_wb.c`).
        (
            LockTarget::Wbt(0),
            LockMode::Exclusive,
            Leaf::PhymemCacheWb,
            OperandId::WBCACHE,
        ),
        // VP.ENTER takes the TDVPR shared (intel/tdx-module `tdh_vp_enter.c`): a holder in
        // exclusive mode (as TDH.VP.FLUSH) keeps it out.
        (
            LockTarget::Page(td.vcpus[0].tdvpr),
            LockMode::Exclusive,
            Leaf::VpEnter,
            OperandId::RCX,
        ),
    ];
    for (target, mode, leaf, op) in cases {
        let held = p.module.hold_lock(target, mode).unwrap();
        let p2 = p.clone();
        let (tdr, tdvpr) = (td.tdr, td.vcpus[0].tdvpr);
        let status = std::thread::spawn(move || {
            let r = match leaf {
                Leaf::MemPageAug => regs(leaf, G, tdr.0, page.0),
                Leaf::MemRangeBlock => regs(leaf, G, tdr.0, 0),
                Leaf::VpEnter => regs(leaf, tdvpr.0, 0, 0),
                Leaf::PhymemCacheWb => regs(leaf, 0, 0, 0),
                _ => regs(leaf, tdr.0, 0, 0),
            };
            TdxStatus(raw(&p2, r).rax)
        })
        .join()
        .unwrap();
        assert_eq!(
            status,
            TdxStatus::OPERAND_BUSY.with_operand(op),
            "{target:?} {}",
            leaf.name()
        );
        drop(held);
    }
    p.module
        .mem_page_aug(td.tdr, Gpa(G), PageLevel::L4K, page)
        .unwrap();
    p.module.check_invariants().unwrap();
}

#[test]
fn racing_augs_on_one_gfn_map_it_exactly_once() {
    let p = Arc::new(Platform::new());
    let td = runnable(&p);
    for round in 0..20u64 {
        let gpa = Gpa(G + round * 4096);
        p.ensure_sept_path(&td, gpa, PageLevel::L4K).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                let tdr = td.tdr;
                std::thread::spawn(move || {
                    let page = p.alloc_page().unwrap();
                    let r = p.module.mem_page_aug(tdr, gpa, PageLevel::L4K, page);
                    if r.is_err() {
                        p.free_page(page);
                    }
                    r.map_err(|e| e.status)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        for r in results.iter().filter_map(|r| r.err()) {
            assert!(
                r == TdxStatus::OPERAND_BUSY.with_operand(OperandId::RCX)
                    || r == TdxStatus::EPT_ENTRY_STATE_INCORRECT.with_operand(OperandId::RCX),
                "{r}"
            );
        }
    }
    p.module.check_invariants().unwrap();
}

// ---------- teardown order ----------

#[test]
fn teardown_order_is_enforced() {
    let p = two_packages();
    let td = runnable(&p);
    let page = p.alloc_page().unwrap();
    p.aug(&td, Gpa(G), PageLevel::L4K, page).unwrap();
    // TDH.VP.INIT associated the vCPU with LP 0 (`associate_vcpu_initial`,
    // intel/tdx-module `tdh_vp_init.c`): VP.RD, VP.WR and VP.ENTER on LP 1 are refused
    // (`associate_vcpu`, `src/common/helpers/helpers.c`) until VP.FLUSH on LP 0 moves it.
    let lp1 = p.lp(1).unwrap();
    let tdvpr = td.vcpus[0].tdvpr.0;
    for leaf in [Leaf::VpRd, Leaf::VpWr, Leaf::VpEnter] {
        let mut r = regs(leaf, tdvpr, crate::metadata::vcpu::HOST_SCRATCH, 0);
        lp1.seamcall(&mut r);
        assert_eq!(TdxStatus(r.rax), TdxStatus::VCPU_ASSOCIATED, "{leaf:?}");
    }
    p.module.call(regs(Leaf::VpFlush, tdvpr, 0, 0)).unwrap();
    // Run the vCPU once on LP 1 so it is associated there.
    let mut r = regs(Leaf::VpEnter, tdvpr, 0, 0);
    lp1.seamcall(&mut r);
    assert_eq!(r.rax, exit::TDCALL);
    // Entering on another LP while associated.
    assert_eq!(
        TdxStatus(enter(&p, td.vcpus[0].tdvpr, 0, 0).rax),
        TdxStatus::VCPU_ASSOCIATED
    );
    // Reclaim while the TD is alive.
    assert_eq!(
        err(p.module.phymem_page_reclaim(page)).status,
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    let flushdone = regs(Leaf::MngVpFlushDone, td.tdr.0, 0, 0);
    assert_eq!(
        p.module.call(flushdone).unwrap_err().status,
        TdxStatus::FLUSHVP_NOT_DONE
    );
    // VP.FLUSH on the wrong LP, then the right one. `tdh_vp_flush` (intel/tdx-module
    // `tdh_vp_flush.c`) only compares ASSOC_LPID with the current LP: a vCPU associated
    // elsewhere is TDX_VCPU_NOT_ASSOCIATED, as an unassociated one.
    let flush = regs(Leaf::VpFlush, td.vcpus[0].tdvpr.0, 0, 0);
    assert_eq!(
        p.module.call(flush).unwrap_err().status,
        TdxStatus::VCPU_NOT_ASSOCIATED
    );
    lp1.call(flush).unwrap();
    assert_eq!(
        p.module.call(flush).unwrap_err().status,
        TdxStatus::VCPU_NOT_ASSOCIATED
    );
    // FREEID before VPFLUSHDONE.
    let freeid = regs(Leaf::MngKeyFreeId, td.tdr.0, 0, 0);
    assert_eq!(
        p.module.call(freeid).unwrap_err().status,
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    p.module.call(flushdone).unwrap();
    // AUG after VPFLUSHDONE: the lifecycle is no longer KEYS_CONFIGURED, which
    // `check_td_in_correct_build_state` (intel/tdx-module `src/common/helpers/helpers.c`)
    // reports as TDX_TD_KEYS_NOT_CONFIGURED.
    let page2 = p.alloc_page().unwrap();
    assert_eq!(
        err(p
            .module
            .mem_page_aug(td.tdr, Gpa(G + 4096), PageLevel::L4K, page2))
        .status,
        TdxStatus::TD_KEYS_NOT_CONFIGURED
    );
    // FREEID before CACHE.WB on every package.
    assert_eq!(
        p.module.call(freeid).unwrap_err().status,
        TdxStatus::WBCACHE_NOT_COMPLETE
    );
    p.module
        .call(Regs::for_leaf(Leaf::PhymemCacheWb, 0))
        .unwrap();
    assert_eq!(
        p.module.call(freeid).unwrap_err().status,
        TdxStatus::WBCACHE_NOT_COMPLETE
    );
    let wb = lp1.call(Regs::for_leaf(Leaf::PhymemCacheWb, 0)).unwrap();
    assert_eq!(TdxStatus(wb.rax), TdxStatus::SUCCESS);
    // Again: the KeyID is still FLUSHED (until KEY.FREEID), so there is work to do
    // (intel/tdx-module `tdh_phymem_cache_wb.c` looks at the KOT state, not the bitmap).
    let wb = lp1.call(Regs::for_leaf(Leaf::PhymemCacheWb, 0)).unwrap();
    assert_eq!(TdxStatus(wb.rax), TdxStatus::SUCCESS);
    p.module.call(freeid).unwrap();
    // Once freed, nothing is FLUSHED: TDX_NO_HKID_READY_TO_WBCACHE.
    let wb = lp1.call(Regs::for_leaf(Leaf::PhymemCacheWb, 0)).unwrap();
    assert_eq!(TdxStatus(wb.rax), TdxStatus::NO_HKID_READY_TO_WBCACHE);
    assert_eq!(p.module.kot_state(td.hkid.0), Some(super::KotState::Free));
    // TDR before its children.
    assert_eq!(
        err(p.module.phymem_page_reclaim(td.tdr)).status,
        TdxStatus::TD_ASSOCIATED_PAGES_EXIST
    );
    let rec = p.module.phymem_page_reclaim(page).unwrap();
    assert_eq!(rec.page_type, tdx_abi::pamt::PageType::Reg.raw());
    assert_eq!(rec.owner, td.tdr);
    assert_eq!(rec.size, 0);
    assert_eq!(
        err(p.module.phymem_page_reclaim(page)).status,
        TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::RCX)
    );
    // WBINVD needs a free page.
    assert_eq!(
        err(p.module.phymem_page_wbinvd(td.tdvpr_or_tdr(), td.hkid)).status,
        TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::RCX)
    );
    p.module.phymem_page_wbinvd(page, td.hkid).unwrap();
    // Platform::teardown finishes the rest (it reclaims whatever PAMT says the TD owns).
    let owned: Vec<_> = p
        .module
        .pamt
        .snapshot()
        .into_iter()
        .filter(|(h, m)| m.owner == td.tdr && *h != td.tdr)
        .collect();
    for (h, _) in owned {
        p.module.phymem_page_reclaim(h).unwrap();
    }
    p.module.phymem_page_reclaim(td.tdr).unwrap();
    p.module.check_invariants().unwrap();
}

trait TdvprOrTdr {
    fn tdvpr_or_tdr(&self) -> Hpa;
}
impl TdvprOrTdr for TestTd {
    fn tdvpr_or_tdr(&self) -> Hpa {
        self.vcpus.first().map(|v| v.tdvpr).unwrap_or(self.tdr)
    }
}

// ---------- demote / promote ----------

#[test]
fn demote_then_promote_a_2m_page() {
    let p = Platform::new();
    let td = runnable(&p);
    let gpa = Gpa(8 * G);
    let big = p.alloc_2m().unwrap();
    p.aug(&td, gpa, PageLevel::L2M, big).unwrap();
    let before = p.module.td_child_count(td.tdr).unwrap();
    let sept = p.alloc_page().unwrap();
    let e = err(p.module.mem_page_demote(td.tdr, gpa, PageLevel::L2M, sept));
    assert_eq!(
        e.status,
        TdxStatus::GPA_RANGE_NOT_BLOCKED.with_operand(OperandId::RCX)
    );
    p.module
        .mem_range_block(td.tdr, gpa, PageLevel::L2M)
        .unwrap();
    let e = err(p.module.mem_page_demote(td.tdr, gpa, PageLevel::L2M, sept));
    assert_eq!(
        e.status,
        TdxStatus::TLB_TRACKING_NOT_DONE.with_operand(OperandId::RCX)
    );
    p.module.mem_track(td.tdr).unwrap();
    p.module
        .mem_page_demote(td.tdr, gpa, PageLevel::L2M, sept)
        .unwrap();
    assert_eq!(state(&p, &td, gpa, PageLevel::L2M), SeptState::NlMapped);
    assert_eq!(
        state(&p, &td, Gpa(gpa.0 + 0x1F_F000), PageLevel::L4K),
        SeptState::Pending
    );
    let (entry, _) = p
        .module
        .mem_sept_rd(td.tdr, Gpa(gpa.0 + 0x5000), PageLevel::L4K)
        .unwrap();
    assert_eq!(entry & 0x000F_FFFF_FFFF_F000, big.0 + 0x5000);
    // CHLDCNT counts 4 KiB pages: the 2 MiB page was 512 already; only the S-EPT page adds
    // (intel/tdx-module `tdh_mem_page_demote.c`).
    assert_eq!(p.module.td_child_count(td.tdr).unwrap(), before + 1);
    p.module.check_invariants().unwrap();
    // Promote back: needs the non-leaf blocked and tracked.
    let e = err(p.module.mem_page_promote(td.tdr, gpa, PageLevel::L2M));
    assert_eq!(
        e.status,
        TdxStatus::GPA_RANGE_NOT_BLOCKED.with_operand(OperandId::RCX)
    );
    p.module
        .mem_range_block(td.tdr, gpa, PageLevel::L2M)
        .unwrap();
    assert_eq!(state(&p, &td, gpa, PageLevel::L2M), SeptState::NlBlocked);
    p.module.mem_track(td.tdr).unwrap();
    let freed = p
        .module
        .mem_page_promote(td.tdr, gpa, PageLevel::L2M)
        .unwrap();
    assert_eq!(freed, sept);
    assert_eq!(state(&p, &td, gpa, PageLevel::L2M), SeptState::Pending);
    assert_eq!(p.module.td_child_count(td.tdr).unwrap(), before);
    p.module.check_invariants().unwrap();
}

#[test]
fn promote_refuses_non_uniform_children() {
    let p = Platform::new();
    let td = p.create_td(&TdOptions::default()).unwrap();
    let gpa = Gpa(8 * G);
    // Before finalize no blocking/tracking is required.
    let _ = aug_and_demote_2m(&p, &td, gpa);
    assert!(p.module.force_sept_state(
        td.tdr,
        Gpa(gpa.0 + 4096),
        PageLevel::L4K,
        SeptState::Mapped
    ));
    let e = err(p.module.mem_page_promote(td.tdr, gpa, PageLevel::L2M));
    assert_eq!(
        e.status,
        TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS.with_operand(OperandId::RCX)
    );
    assert_eq!(SeptLevelState(e.rdx).state(), Some(SeptState::NlMapped));
    // SEPT.REMOVE of a non-empty table.
    let e = err(p.module.mem_sept_remove(td.tdr, gpa, PageLevel::L2M));
    assert_eq!(
        e.status,
        TdxStatus::EPT_PAGE_NOT_FREE.with_operand(OperandId::RCX)
    );
    p.module.check_invariants().unwrap();
}

/// TDH.MEM.SEPT.RD's outputs per state: RCX = the architectural entry, RDX = level and
/// state (`set_arch_septe_details_in_vmm_regs` in intel/tdx-module
/// `src/common/memory_handlers/sept_manager.c`; masks in `sept_manager.h`; leaf values from
/// `sept_set_leaf_no_lock_internal` and `block_sept_entry` in `tdh_mem_range_block.c`).
#[test]
fn sept_rd_reports_the_architectural_entry() {
    use tdx_abi::sept::entry_bits::{IPAT, LEAF, MT_WB, RWX, SUPPRESS_VE};
    let p = Platform::new();
    let td = p.create_td(&TdOptions::default()).unwrap();
    let mapped = p.add_page(&td, Gpa(G), &[1; 4096], false).unwrap();
    p.finalize(&td).unwrap();
    let rd = |gpa: Gpa, level: PageLevel| p.module.mem_sept_rd(td.tdr, gpa, level).unwrap();
    let ls = |level: u8, s: SeptState| SeptLevelState::new(level, s);
    // Every leaf: WB, IPAT, PS (4 KiB included), the HPA, SUPPRESS_VE; RWX only if MAPPED.
    let leaf = |hpa: Hpa, rwx: u64| rwx | MT_WB | IPAT | LEAF | hpa.0 | SUPPRESS_VE;
    assert_eq!(
        rd(Gpa(G), PageLevel::L4K),
        (leaf(mapped, RWX), ls(0, SeptState::Mapped))
    );
    // FREE: SUPPRESS_VE only.
    assert_eq!(
        rd(Gpa(G + 4096), PageLevel::L4K),
        (SUPPRESS_VE, ls(0, SeptState::Free))
    );
    // Non-leaf: RWX, no HPA.
    assert_eq!(
        rd(Gpa(G), PageLevel::L2M),
        (RWX, ls(1, SeptState::NlMapped))
    );
    // PENDING (AUG maps with no permissions), 4 KiB and 2 MiB.
    let pending = p.alloc_page().unwrap();
    p.aug(&td, Gpa(G + 4096), PageLevel::L4K, pending).unwrap();
    assert_eq!(
        rd(Gpa(G + 4096), PageLevel::L4K),
        (leaf(pending, 0), ls(0, SeptState::Pending))
    );
    let big = p.alloc_2m().unwrap();
    p.aug(&td, Gpa(8 * G), PageLevel::L2M, big).unwrap();
    assert_eq!(
        rd(Gpa(8 * G), PageLevel::L2M),
        (leaf(big, 0), ls(1, SeptState::Pending))
    );
    // Blocked states drop RWX; a blocked non-leaf entry reports nothing but its state.
    p.module
        .mem_range_block(td.tdr, Gpa(G), PageLevel::L4K)
        .unwrap();
    assert_eq!(
        rd(Gpa(G), PageLevel::L4K),
        (leaf(mapped, 0), ls(0, SeptState::Blocked))
    );
    p.module
        .mem_range_block(td.tdr, Gpa(G + 4096), PageLevel::L4K)
        .unwrap();
    assert_eq!(
        rd(Gpa(G + 4096), PageLevel::L4K),
        (leaf(pending, 0), ls(0, SeptState::PendingBlocked))
    );
    p.ensure_sept_path(&td, Gpa(12 * G), PageLevel::L4K)
        .unwrap();
    p.module
        .mem_range_block(td.tdr, Gpa(12 * G), PageLevel::L2M)
        .unwrap();
    assert_eq!(
        rd(Gpa(12 * G), PageLevel::L2M),
        (0, ls(1, SeptState::NlBlocked))
    );
    // A busy tree lock is reported before the walk: RCX/RDX stay zero.
    let e = {
        let _h = p
            .module
            .hold_lock(LockTarget::SeptTree(td.tdr), LockMode::Exclusive)
            .unwrap();
        err(p.module.mem_sept_rd(td.tdr, Gpa(G), PageLevel::L4K))
    };
    assert_eq!(
        e.status,
        TdxStatus::OPERAND_BUSY.with_operand(OperandId::SEPT_TREE)
    );
    assert_eq!((e.rcx, e.rdx), (0, 0));
    p.module.check_invariants().unwrap();
}

/// TDH.MEM.SEPT.RD clears RCX/RDX before anything else, and RDX bit 0 (read the L2
/// attributes) is refused for a non-DEBUG TD (intel/tdx-module `tdh_mem_sept_rd.c`).
#[test]
fn sept_rd_error_outputs_and_l2_attributes_flag() {
    let p = Platform::new();
    let td = runnable(&p);
    // A bad TDR: OPERAND_INVALID on RDX with RCX/RDX cleared.
    let mut r = regs(
        Leaf::MemSeptRd,
        gpa_level_operand(Gpa(0), PageLevel::L2M),
        0x123,
        0,
    );
    p.module.seamcall(&mut r);
    assert_eq!(
        TdxStatus(r.rax),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX)
    );
    assert_eq!((r.rcx, r.rdx), (0, 0));
    // The L2-attributes flag on a non-DEBUG TD.
    let mut r = regs(
        Leaf::MemSeptRd,
        gpa_level_operand(Gpa(0), PageLevel::L2M),
        td.tdr.0 | 1,
        0,
    );
    p.module.seamcall(&mut r);
    assert_eq!(
        TdxStatus(r.rax),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX)
    );
    assert_eq!((r.rcx, r.rdx), (0, 0));
    // A DEBUG TD may ask: R8 = 0 (no L2 VMs).
    let dbg = p
        .runnable_td(&TdOptions {
            attributes: tdx_abi::td_params::attributes::DEBUG
                | tdx_abi::td_params::attributes::SEPT_VE_DISABLE,
            ..TdOptions::default()
        })
        .unwrap();
    p.ensure_sept_path(&dbg, Gpa(0), PageLevel::L4K).unwrap();
    let mut r = regs(
        Leaf::MemSeptRd,
        gpa_level_operand(Gpa(0), PageLevel::L2M),
        dbg.tdr.0 | 1,
        0xdead,
    );
    p.module.seamcall(&mut r);
    assert_eq!(TdxStatus(r.rax), TdxStatus::SUCCESS);
    assert_eq!(r.r8, 0);
    assert_eq!(SeptLevelState(r.rdx).state(), Some(SeptState::NlMapped));
}

/// TDH.MEM.PAGE.REMOVE's outputs (intel/tdx-module `tdh_mem_page_remove.c`): on success
/// RCX = the removed page's HPA and RDX = 0; a state error carries the entry (RCX) and its
/// level/state (RDX).
#[test]
fn page_remove_outputs() {
    use tdx_abi::sept::entry_bits::{IPAT, LEAF, MT_WB, SUPPRESS_VE};
    let p = Platform::new();
    let td = runnable(&p);
    let gpa = Gpa(4 * G);
    let page = p.alloc_page().unwrap();
    p.aug(&td, gpa, PageLevel::L4K, page).unwrap();
    let remove = regs(
        Leaf::MemPageRemove,
        gpa_level_operand(gpa, PageLevel::L4K),
        td.tdr.0,
        0,
    );
    // Not blocked: the PENDING entry's details.
    let mut r = remove;
    p.module.seamcall(&mut r);
    assert_eq!(
        TdxStatus(r.rax),
        TdxStatus::GPA_RANGE_NOT_BLOCKED.with_operand(OperandId::RCX)
    );
    assert_eq!(r.rcx, page.0 | MT_WB | IPAT | LEAF | SUPPRESS_VE);
    assert_eq!(r.rdx, SeptLevelState::new(0, SeptState::Pending).0);
    // The PAMT lock of the page is taken before the blocked check: busy, no details.
    {
        let _h = p
            .module
            .hold_lock(LockTarget::Page(page), LockMode::Shared)
            .unwrap();
        let mut r = remove;
        p.module.seamcall(&mut r);
        assert_eq!(
            TdxStatus(r.rax),
            TdxStatus::OPERAND_BUSY.with_operand(OperandId::RCX)
        );
        assert_eq!((r.rcx, r.rdx), (0, 0));
    }
    p.module
        .mem_range_block(td.tdr, gpa, PageLevel::L4K)
        .unwrap();
    p.module.mem_track(td.tdr).unwrap();
    let mut r = remove;
    p.module.seamcall(&mut r);
    assert_eq!(TdxStatus(r.rax), TdxStatus::SUCCESS);
    assert_eq!((r.rcx, r.rdx), (page.0, 0));
    p.module.check_invariants().unwrap();
}

/// TDH.PHYMEM.PAGE.RECLAIM's outputs (intel/tdx-module `tdh_phymem_page_reclaim.c`):
/// RCX/RDX/R8 and R9–R11 cleared first; page type, owner and size in RCX/RDX/R8 as soon as
/// the page is known to be a TD page, so also with TDX_LIFECYCLE_STATE_INCORRECT and
/// TDX_TD_ASSOCIATED_PAGES_EXIST; a free page reports zeros.
#[test]
fn page_reclaim_outputs() {
    use tdx_abi::pamt::PageType;
    let p = Platform::new();
    let td = runnable(&p);
    let page = p.alloc_page().unwrap();
    p.aug(&td, Gpa(4 * G), PageLevel::L4K, page).unwrap();
    let reclaim = |hpa: Hpa| {
        let mut r = regs(Leaf::PhymemPageReclaim, hpa.0, 0x11, 0x22);
        (r.r9, r.r10, r.r11) = (0x33, 0x44, 0x55);
        p.module.seamcall(&mut r);
        r
    };
    // TD alive: lifecycle error, with the page's metadata.
    let r = reclaim(page);
    assert_eq!(TdxStatus(r.rax), TdxStatus::LIFECYCLE_STATE_INCORRECT);
    assert_eq!(
        (r.rcx, r.rdx, r.r8, r.r9, r.r10, r.r11),
        (PageType::Reg.raw(), td.tdr.0, 0, 0, 0, 0)
    );
    // A free page: PAGE_METADATA_INCORRECT, nothing reported.
    let free = p.alloc_page().unwrap();
    let r = reclaim(free);
    assert_eq!(
        TdxStatus(r.rax),
        TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::RCX)
    );
    assert_eq!((r.rcx, r.rdx, r.r8, r.r9), (0, 0, 0, 0));
    // Tear down up to KEY.FREEID, then the TDR before its children.
    for v in &td.vcpus {
        let _ = p.module.call(regs(Leaf::VpFlush, v.tdvpr.0, 0, 0));
    }
    p.module
        .call(regs(Leaf::MngVpFlushDone, td.tdr.0, 0, 0))
        .unwrap();
    p.module
        .call(Regs::for_leaf(Leaf::PhymemCacheWb, 0))
        .unwrap();
    p.module
        .call(regs(Leaf::MngKeyFreeId, td.tdr.0, 0, 0))
        .unwrap();
    let r = reclaim(td.tdr);
    assert_eq!(TdxStatus(r.rax), TdxStatus::TD_ASSOCIATED_PAGES_EXIST);
    assert_eq!((r.rcx, r.rdx, r.r8), (PageType::Tdr.raw(), td.tdr.0, 0));
    let r = reclaim(page);
    assert_eq!(TdxStatus(r.rax), TdxStatus::SUCCESS);
    assert_eq!(
        (r.rcx, r.rdx, r.r8, r.r9, r.r10, r.r11),
        (PageType::Reg.raw(), td.tdr.0, 0, 0, 0, 0)
    );
}

#[test]
fn sept_remove_returns_the_page_after_blocking_and_tracking() {
    let p = Platform::new();
    let td = runnable(&p);
    let gpa = Gpa(8 * G);
    p.ensure_sept_path(&td, gpa, PageLevel::L2M).unwrap();
    let table = p.alloc_page().unwrap();
    p.module
        .mem_sept_add(td.tdr, gpa, PageLevel::L2M, table)
        .unwrap();
    // SEPT.RD does not report a non-leaf entry's HPA: only RWX and PS
    // (`SEPT_ARCH_ENTRY_NON_LEAF_MASK`, intel/tdx-module `sept_manager.h`).
    let (entry, _) = p.module.mem_sept_rd(td.tdr, gpa, PageLevel::L2M).unwrap();
    assert_eq!(entry, tdx_abi::sept::entry_bits::RWX);
    let e = err(p.module.mem_sept_remove(td.tdr, gpa, PageLevel::L2M));
    assert_eq!(
        e.status,
        TdxStatus::GPA_RANGE_NOT_BLOCKED.with_operand(OperandId::RCX)
    );
    p.module
        .mem_range_block(td.tdr, gpa, PageLevel::L2M)
        .unwrap();
    p.module.mem_track(td.tdr).unwrap();
    assert_eq!(
        p.module
            .mem_sept_remove(td.tdr, gpa, PageLevel::L2M)
            .unwrap(),
        table
    );
    assert_eq!(state(&p, &td, gpa, PageLevel::L2M), SeptState::Free);
    p.module.check_invariants().unwrap();
}

// ---------- guest semantics ----------

/// Runs the vCPU, answering exits like a simple host (AUG 4K on EPT violations at the accept
/// level; 2M when asked for 2M; MapGPA success), until HLT. Returns (console, exits).
fn run_to_halt(p: &Platform, td: &TestTd, v: Hpa) -> (Vec<u8>, Vec<u64>) {
    let mut console = Vec::new();
    let mut exits = Vec::new();
    let (mut r10, mut r11) = (0, 0);
    for _ in 0..10_000 {
        let r = enter(p, v, r10, r11);
        (r10, r11) = (0, 0);
        exits.push(r.rax);
        match r.rax {
            exit::EPT_VIOLATION => {
                let level = if r.rdx & exit::EXT_QUAL_TYPE_MASK == exit::EXT_QUAL_TYPE_ACCEPT
                    && (r.rdx >> 32) & 7 == 1
                {
                    PageLevel::L2M
                } else {
                    PageLevel::L4K
                };
                let gpa = Gpa(r.r8).align_down(level);
                let page = if level == PageLevel::L2M {
                    p.alloc_2m().unwrap()
                } else {
                    p.alloc_page().unwrap()
                };
                p.aug(td, gpa, level, page).unwrap();
            }
            exit::TDCALL => match r.r11 {
                exit::TDVMCALL_IO => console.push(r.r15 as u8),
                exit::TDVMCALL_HLT => return (console, exits),
                exit::TDVMCALL_MAP_GPA => {}
                other => panic!("unexpected TDVMCALL {other:#x}"),
            },
            exit::EXTERNAL_INTERRUPT => {}
            other => panic!("unexpected exit {other:#x} status {}", TdxStatus(other)),
        }
    }
    panic!("vCPU did not halt");
}

#[test]
fn two_mega_accept_on_a_4k_table_falls_back_to_4k_accepts() {
    let p = Platform::new();
    let td = runnable(&p);
    let v = td.vcpus[0].tdvpr;
    let gpa = Gpa(8 * G);
    // The host already split this 2M range into a 4K table with two pending pages.
    p.ensure_sept_path(&td, gpa, PageLevel::L4K).unwrap();
    for i in 0..2 {
        let page = p.alloc_page().unwrap();
        p.module
            .mem_page_aug(td.tdr, Gpa(gpa.0 + i * 4096), PageLevel::L4K, page)
            .unwrap();
    }
    set_steps(
        &p,
        v,
        vec![
            Step::Accept {
                gpa,
                len: PAGE_2M,
                level: PageLevel::L2M,
            },
            Step::Halt,
        ],
    );
    let (_, exits) = run_to_halt(&p, &td, v);
    // 510 pages were missing: one EPT violation (ACCEPT type, level 4K) each.
    assert_eq!(
        exits.iter().filter(|&&e| e == exit::EPT_VIOLATION).count(),
        510
    );
    for off in [0u64, 4096, 0x1F_F000] {
        assert_eq!(
            state(&p, &td, Gpa(gpa.0 + off), PageLevel::L4K),
            SeptState::Mapped
        );
    }
    p.module.check_invariants().unwrap();
}

const PAGE_2M: u64 = 2 << 20;

#[test]
fn two_mega_accept_maps_a_2m_page_and_4k_accept_inside_it_asks_for_demote() {
    let p = Platform::new();
    let td = runnable(&p);
    let v = td.vcpus[0].tdvpr;
    let gpa = Gpa(8 * G);
    set_steps(
        &p,
        v,
        vec![
            Step::Accept {
                gpa,
                len: PAGE_2M,
                level: PageLevel::L2M,
            },
            Step::Halt,
        ],
    );
    let (_, exits) = run_to_halt(&p, &td, v);
    assert_eq!(
        exits.iter().filter(|&&e| e == exit::EPT_VIOLATION).count(),
        1
    );
    assert_eq!(state(&p, &td, gpa, PageLevel::L2M), SeptState::Mapped);

    // A 4K accept inside a 2M PENDING leaf exits with accept level 4K.
    let gpa2 = Gpa(10 * G);
    let big = p.alloc_2m().unwrap();
    p.aug(&td, gpa2, PageLevel::L2M, big).unwrap();
    set_steps(
        &p,
        v,
        vec![Step::Accept {
            gpa: Gpa(gpa2.0 + 0x3000),
            len: 4096,
            level: PageLevel::L4K,
        }],
    );
    let r = enter(&p, v, 0, 0);
    assert_eq!(r.rax, exit::EPT_VIOLATION);
    // `async_tdexit_ept_violation` (intel/tdx-module `td_other_exits.c`): a write with the
    // PENDING entry's R/W/X (none); the extended qualification names the request (4K), and
    // the entry that stopped it: level 1 (2M), PENDING (2), a leaf (`tdaccept_vmx_eeq_info_t`).
    assert_eq!(r.rcx, exit::QUAL_WRITE);
    assert_eq!(
        r.rdx,
        exit::EXT_QUAL_TYPE_ACCEPT | (1 << 3 | (SeptState::Pending as u64) << 6 | 1 << 14) << 32
    );
    assert_eq!(r.r8, gpa2.0 + 0x3000);
    // The host demotes (block, track, re-entry flushes, demote); the guest then accepts.
    p.module
        .mem_range_block(td.tdr, gpa2, PageLevel::L2M)
        .unwrap();
    p.module.mem_track(td.tdr).unwrap();
    let sept = p.alloc_page().unwrap();
    p.module
        .mem_page_demote(td.tdr, gpa2, PageLevel::L2M, sept)
        .unwrap();
    let r = enter(&p, v, 0, 0);
    assert_eq!((r.rax, r.r11), (exit::TDCALL, exit::TDVMCALL_HLT));
    assert_eq!(
        state(&p, &td, Gpa(gpa2.0 + 0x3000), PageLevel::L4K),
        SeptState::Mapped
    );
    assert_eq!(
        state(&p, &td, Gpa(gpa2.0 + 0x4000), PageLevel::L4K),
        SeptState::Pending
    );
    p.module.check_invariants().unwrap();
}

#[test]
fn accept_zeroes_the_page_and_touch_writes_through_the_mapping() {
    let p = Platform::new();
    let td = runnable(&p);
    let v = td.vcpus[0].tdvpr;
    let gpa = Gpa(8 * G);
    let page = p.alloc_page().unwrap();
    p.mem.write(page, &[0xEE; 4096]);
    p.aug(&td, gpa, PageLevel::L4K, page).unwrap();
    set_steps(
        &p,
        v,
        vec![
            Step::Accept {
                gpa,
                len: 4096,
                level: PageLevel::L4K,
            },
            Step::Accept {
                gpa,
                len: 4096,
                level: PageLevel::L4K,
            },
            Step::Touch {
                gpa,
                len: 4096,
                access: Access::Write,
                order: Order::Sequential,
            },
            Step::Halt,
        ],
    );
    run_to_halt(&p, &td, v);
    let mut back = [0u8; 16];
    p.mem.read(page, &mut back);
    assert_eq!(&back[..8], &gpa.0.to_le_bytes());
    assert_eq!(&back[8..], &[0; 8]);
}

#[test]
fn pending_touch_with_sept_ve_disable_exits_as_pending_violation() {
    let p = Platform::new();
    let td = runnable(&p);
    let v = td.vcpus[0].tdvpr;
    let gpa = Gpa(8 * G);
    let page = p.alloc_page().unwrap();
    p.aug(&td, gpa, PageLevel::L4K, page).unwrap();
    set_steps(
        &p,
        v,
        vec![Step::Touch {
            gpa,
            len: 4096,
            access: Access::Read,
            order: Order::Sequential,
        }],
    );
    let r = enter(&p, v, 0, 0);
    assert_eq!(r.rax, exit::EPT_VIOLATION);
    assert_eq!(r.rdx, exit::EXT_QUAL_TYPE_PENDING_EPT_VIOLATION);
    assert_eq!(r.rcx, exit::QUAL_READ);
    // Without SEPT_VE_DISABLE the guest takes a #VE and accepts the page itself.
    let td2 = p
        .runnable_td(&TdOptions {
            attributes: 0,
            ..TdOptions::default()
        })
        .unwrap();
    let v2 = td2.vcpus[0].tdvpr;
    let page = p.alloc_page().unwrap();
    p.aug(&td2, gpa, PageLevel::L4K, page).unwrap();
    set_steps(
        &p,
        v2,
        vec![Step::Touch {
            gpa,
            len: 4096,
            access: Access::Read,
            order: Order::Sequential,
        }],
    );
    let r = enter(&p, v2, 0, 0);
    assert_eq!((r.rax, r.r11), (exit::TDCALL, exit::TDVMCALL_HLT));
    assert_eq!(state(&p, &td2, gpa, PageLevel::L4K), SeptState::Mapped);
}

#[test]
fn random_touch_resumes_across_exits_and_visits_every_page_once() {
    let p = Platform::new();
    // No SEPT_VE_DISABLE: a PENDING page raises #VE and the guest accepts it itself.
    let td = p
        .runnable_td(&TdOptions {
            attributes: 0,
            ..TdOptions::default()
        })
        .unwrap();
    let v = td.vcpus[0].tdvpr;
    let gpa = Gpa(8 * G);
    let pages = 300u64;
    set_steps(
        &p,
        v,
        vec![
            Step::Touch {
                gpa,
                len: pages * 4096,
                access: Access::Write,
                order: Order::Random { seed: 42 },
            },
            Step::Halt,
        ],
    );
    let (_, exits) = run_to_halt(&p, &td, v);
    // Exactly one EPT violation per page: progress survives every exit.
    assert_eq!(
        exits.iter().filter(|&&e| e == exit::EPT_VIOLATION).count() as u64,
        pages
    );
    let mut first_faults = Vec::new();
    for i in 0..pages {
        let g = Gpa(gpa.0 + i * 4096);
        assert_eq!(state(&p, &td, g, PageLevel::L4K), SeptState::Mapped);
        let (entry, _) = p.module.mem_sept_rd(td.tdr, g, PageLevel::L4K).unwrap();
        let mut b = [0u8; 8];
        p.mem.read(Hpa(entry & 0x000F_FFFF_FFFF_F000), &mut b);
        assert_eq!(u64::from_le_bytes(b), g.0);
        first_faults.push(entry);
    }
    // Random order really is not sequential: the HPAs (allocated in fault order) are not
    // ascending in GPA order.
    assert!(first_faults.windows(2).any(|w| w[0] > w[1]));
    p.module.check_invariants().unwrap();
}

#[test]
fn map_gpa_retry_and_console_and_fatal_and_shutdown() {
    let p = Platform::new();
    let td = runnable(&p);
    let v = td.vcpus[0].tdvpr;
    let gpa = Gpa(8 * G);
    set_steps(
        &p,
        v,
        vec![
            Step::Convert {
                gpa,
                len: 4 * PAGE_2M,
                to_shared: true,
            },
            Step::Print { line: "hi".into() },
            Step::ReportFatalError { code: 0x77 },
            Step::Shutdown,
        ],
    );
    let r = enter(&p, v, 0, 0);
    assert_eq!((r.rax, r.r11), (exit::TDCALL, exit::TDVMCALL_MAP_GPA));
    assert_eq!(r.r12, gpa.0 | 1 << 47);
    assert_eq!(r.r13, 4 * PAGE_2M);
    // Host converts 2 MiB and asks the guest to retry from there.
    let r = enter(
        &p,
        v,
        exit::TDVMCALL_STATUS_RETRY,
        (gpa.0 + PAGE_2M) | 1 << 47,
    );
    assert_eq!(r.r11, exit::TDVMCALL_MAP_GPA);
    assert_eq!(r.r12, (gpa.0 + PAGE_2M) | 1 << 47);
    assert_eq!(r.r13, 3 * PAGE_2M);
    let mut out = Vec::new();
    let mut r = enter(&p, v, 0, 0);
    while r.r11 == exit::TDVMCALL_IO {
        assert_eq!((r.r12, r.r13, r.r14), (1, 1, crate::workload::SERIAL_PORT));
        out.push(r.r15 as u8);
        r = enter(&p, v, 0, 0);
    }
    assert_eq!(out, b"hi\n");
    assert_eq!(
        (r.rax, r.r11, r.r12),
        (exit::TDCALL, exit::TDVMCALL_REPORT_FATAL_ERROR, 0x77)
    );
    // A triple fault is TDX_NON_RECOVERABLE_VCPU with reason 2, and the vCPU is disabled:
    // entering it again is TDX_VCPU_STATE_INCORRECT; reading it is still allowed
    // (`async_tdexit_internal` in `td_exit.c`, `check_and_associate_vcpu` in `helpers.c`).
    assert_eq!(
        enter(&p, v, 0, 0).rax,
        TdxStatus::NON_RECOVERABLE_VCPU.0 | exit::TRIPLE_FAULT
    );
    assert_eq!(
        TdxStatus(enter(&p, v, 0, 0).rax),
        TdxStatus::VCPU_STATE_INCORRECT
    );
    let index = regs(Leaf::VpRd, v.0, crate::metadata::vcpu::VCPU_INDEX, 0);
    assert_eq!(TdxStatus(raw(&p, index).rax), TdxStatus::SUCCESS);
    // A failed MapGPA makes the guest report a fatal error (in another TD: this vCPU is
    // disabled).
    let td = runnable(&p);
    let v = td.vcpus[0].tdvpr;
    set_steps(
        &p,
        v,
        vec![Step::Convert {
            gpa,
            len: 4096,
            to_shared: false,
        }],
    );
    let r = enter(&p, v, 0, 0);
    assert_eq!(r.r12, gpa.0);
    let r = enter(&p, v, 0x8000_0000_0000_0000, 0);
    assert_eq!(r.r11, exit::TDVMCALL_REPORT_FATAL_ERROR);
}

#[test]
fn rtmr_extend_matches_the_offline_function() {
    let p = Platform::new();
    let td = runnable(&p);
    let v = td.vcpus[0].tdvpr;
    let d1 = [7u8; 48];
    let d2 = [9u8; 48];
    set_steps(
        &p,
        v,
        vec![
            Step::ExtendRtmr {
                index: 2,
                digest: d1,
            },
            Step::ExtendRtmr {
                index: 2,
                digest: d2,
            },
        ],
    );
    enter(&p, v, 0, 0);
    let want = tdx_abi::measure::rtmr_extend(&tdx_abi::measure::rtmr_extend(&[0; 48], &d1), &d2);
    let mut got = [0u8; 48];
    for i in 0..6u64 {
        let x = p
            .mng_rd(
                td.tdr,
                crate::metadata::td::RTMR + 2 * crate::metadata::td::MR_ELEMENTS + i,
            )
            .unwrap();
        got[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&x.to_le_bytes());
    }
    assert_eq!(got, want);
}

/// The zero-step mitigation, after intel/tdx-module 1.5.01 `src/td_transitions/td_exit_stepping.c`
/// (`td_exit_epf_stepping_log`, `td_entry_stepping_filter`, `vmexit_stepping_filter`) and
/// `tdh_vp_enter.c` (`handle_stepping_filter`, `emulate_ept_violation_td_exit`):
/// * EPT-violation exits at the entry RIP raise `possibly_epf_stepping` up to
///   STEPPING_EPF_THRESHOLD (6, `td_exit_stepping.h`); only the 7th adds the GPA to
///   `last_epf_gpa_list`, so the 7th entry still runs without the tree lock;
/// * with the list non-empty, VP.ENTER takes the TD_EPOCH lock first (TLB tracking), then
///   the S-EPT tree lock exclusively: OPERAND_BUSY on TD_EPOCH, then on SEPT_TREE;
/// * a listed GPA that is not MAPPED (PENDING included: S-EPT entries always set
///   SUPPRESS_VE, so no violation is convertible, `is_epf_expected`) gives an emulated exit
///   without running the guest: RAX = 48, RCX = write (bit 1), RDX = 0, R8 = the GPA,
///   R9–R15 0, RBP untouched; the TLB-tracking count is given back;
/// * once the GPA is MAPPED the guest runs; its next exit at another RIP clears the count.
#[test]
fn zero_step_arms_on_the_seventh_fault_and_emulates_exits_until_mapped() {
    use crate::metadata::vcpu::{GUEST_RIP, ZERO_STEP_COUNT};
    let p = Arc::new(Platform::new());
    let td = runnable(&p);
    let v = td.vcpus[0].tdvpr;
    let gpa = Gpa(8 * G);
    set_steps(
        &p,
        v,
        vec![
            Step::Touch {
                gpa,
                len: 4096,
                access: Access::Write,
                order: Order::Sequential,
            },
            Step::Halt,
        ],
    );
    let count = || p.module.vp_rd(v, ZERO_STEP_COUNT).unwrap();
    let refcounts = || {
        let tdm = p.module.tds.read().get(&td.tdr.0).cloned().unwrap();
        tdm.refcount[0].load(core::sync::atomic::Ordering::Acquire)
            + tdm.refcount[1].load(core::sync::atomic::Ordering::Acquire)
    };
    for i in 1..=6 {
        assert_eq!(enter(&p, v, 0, 0).rax, exit::EPT_VIOLATION);
        assert_eq!(count(), i);
    }
    // Not armed yet: the 7th entry ignores a shared holder of the tree lock, and its fault
    // puts the GPA in the list (the count stays at the threshold).
    let tree_held = p
        .module
        .hold_lock(LockTarget::SeptTree(td.tdr), LockMode::Shared)
        .unwrap();
    assert_eq!(enter(&p, v, 0, 0).rax, exit::EPT_VIOLATION);
    assert_eq!(count(), 6);
    // Armed: the epoch lock is tried before the tree lock.
    {
        let _e = p
            .module
            .hold_lock(LockTarget::TdEpoch(td.tdr), LockMode::Exclusive)
            .unwrap();
        assert_eq!(
            TdxStatus(enter(&p, v, 0, 0).rax),
            TdxStatus::OPERAND_BUSY.with_operand(OperandId::TD_EPOCH)
        );
    }
    assert_eq!(
        TdxStatus(enter(&p, v, 0, 0).rax),
        TdxStatus::OPERAND_BUSY.with_operand(OperandId::SEPT_TREE)
    );
    assert_eq!(refcounts(), 0);
    drop(tree_held);
    let rip = p.module.vp_rd(v, GUEST_RIP).unwrap();
    let emulated = || {
        let mut r = Regs::for_leaf(Leaf::VpEnter, 0);
        r.rcx = v.0;
        (r.rbx, r.rbp, r.rsi, r.rdi) = (1, 2, 3, 4);
        (r.r9, r.r12, r.r13, r.r14, r.r15) = (9, 12, 13, 14, 15);
        p.module.seamcall(&mut r);
        r
    };
    let r = emulated();
    assert_eq!(r.rax, exit::EPT_VIOLATION);
    assert_eq!((r.rcx, r.rdx, r.r8), (exit::QUAL_WRITE, 0, gpa.0));
    assert_eq!(
        (r.rbx, r.rbp, r.rsi, r.rdi, r.r9, r.r10, r.r11),
        (0, 2, 0, 0, 0, 0, 0)
    );
    assert_eq!((r.r12, r.r13, r.r14, r.r15), (0, 0, 0, 0));
    assert_eq!(refcounts(), 0);
    // The guest did not run.
    assert_eq!(p.module.vp_rd(v, GUEST_RIP).unwrap(), rip);
    // PENDING still faults: the same emulated exit, not the guest's PENDING violation.
    let page = p.alloc_page().unwrap();
    p.aug(&td, gpa, PageLevel::L4K, page).unwrap();
    let r = emulated();
    assert_eq!(
        (r.rax, r.rcx, r.rdx),
        (exit::EPT_VIOLATION, exit::QUAL_WRITE, 0)
    );
    // MAPPED: the guest runs, writes, and halts at another RIP, which ends the tracking.
    assert!(
        p.module
            .force_sept_state(td.tdr, gpa, PageLevel::L4K, SeptState::Mapped)
    );
    let r = enter(&p, v, 0, 0);
    assert_eq!((r.rax, r.r11), (exit::TDCALL, exit::TDVMCALL_HLT));
    assert_eq!(count(), 0);
    // Not armed any more: a shared tree-lock holder does not stop the entry.
    let _tree_held = p
        .module
        .hold_lock(LockTarget::SeptTree(td.tdr), LockMode::Shared)
        .unwrap();
    assert_eq!(enter(&p, v, 0, 0).rax, exit::TDCALL);
}

#[test]
fn kick_before_entry_exits_immediately() {
    let p = Platform::new();
    let td = runnable(&p);
    let v = td.vcpus[0].tdvpr;
    p.module.kick(v);
    assert_eq!(enter(&p, v, 0, 0).rax, exit::EXTERNAL_INTERRUPT);
    assert_eq!(enter(&p, v, 0, 0).r11, exit::TDVMCALL_HLT);
}

#[test]
fn fault_injection_by_nth_call_and_probability() {
    let p = Platform::new();
    let td = runnable(&p);
    p.module.inject(
        Leaf::MemTrack,
        Injection::StatusOnNthCall {
            n: 2,
            status: TdxStatus::OPERAND_BUSY.with_operand(OperandId::TD_EPOCH),
        },
    );
    p.module.mem_track(td.tdr).unwrap();
    assert!(err(p.module.mem_track(td.tdr)).is_busy());
    p.module.mem_track(td.tdr).unwrap();
    p.module.inject(
        Leaf::MemTrack,
        Injection::BusyProbability {
            p: 1.0,
            seed: 1,
            operand: OperandId::TD_EPOCH,
        },
    );
    assert_eq!(
        err(p.module.mem_track(td.tdr)).status,
        TdxStatus::OPERAND_BUSY.with_operand(OperandId::TD_EPOCH)
    );
    p.module.clear_injection(Leaf::MemTrack);
    p.module.mem_track(td.tdr).unwrap();
}

#[test]
fn sys_rd_and_rdall_report_the_module_limits() {
    use tdx_abi::metadata::sys as f;
    let p = Platform::new();
    assert_eq!(p.sys_rd(f::TDCS_BASE_SIZE).unwrap(), 4 * 4096);
    assert_eq!(p.sys_rd(f::MAX_TDMRS).unwrap(), 64);
    assert_eq!(p.sys_rd(f::CMR_BASE).unwrap(), 1 << 30);
    let e = p.sys_rd(0x1234).unwrap_err();
    assert_eq!(
        e.status,
        TdxStatus::METADATA_FIELD_ID_INCORRECT.with_operand(OperandId::RDX)
    );
    let all = p.sys_rdall().unwrap();
    assert!(all.contains(&(f::PAMT_4K_ENTRY_SIZE, 16)));
    assert!(all.contains(&(f::NUM_CPUID_CONFIG, 2)));
}

// ---------- property tests ----------

mod props {
    use super::*;
    use proptest::prelude::*;

    /// One host operation on a small GPA window (8 × 2 MiB) of a runnable TD.
    #[derive(Clone, Debug)]
    enum Op {
        SeptAdd(u8, bool),
        Aug4k(u16),
        Aug2m(u8),
        Block(u16, bool),
        Unblock(u16, bool),
        Track,
        Remove(u16, bool),
        SeptRemove(u8),
        Demote(u8),
        Promote(u8),
        Enter(u8),
        Reclaim(u16),
        Raw(u8, u64, u64, u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..8, any::<bool>()).prop_map(|(a, b)| Op::SeptAdd(a, b)),
            (0u16..4096).prop_map(Op::Aug4k),
            (0u8..8).prop_map(Op::Aug2m),
            (0u16..4096, any::<bool>()).prop_map(|(a, b)| Op::Block(a, b)),
            (0u16..4096, any::<bool>()).prop_map(|(a, b)| Op::Unblock(a, b)),
            Just(Op::Track),
            (0u16..4096, any::<bool>()).prop_map(|(a, b)| Op::Remove(a, b)),
            (0u8..8).prop_map(Op::SeptRemove),
            (0u8..8).prop_map(Op::Demote),
            (0u8..8).prop_map(Op::Promote),
            (0u8..3).prop_map(Op::Enter),
            (0u16..2048).prop_map(Op::Reclaim),
            (
                0u8..64,
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(l, a, b, c, d)| Op::Raw(l, a, b, c, d)),
        ]
    }

    fn run(p: &Platform, td: &TestTd, op: &Op) {
        let base = 8 * G;
        let g4 = |i: u16| Gpa(base + u64::from(i) * 4096);
        let g2 = |i: u8| Gpa(base + u64::from(i) * G);
        let lvl = |big: bool| if big { PageLevel::L2M } else { PageLevel::L4K };
        let at = |i: u16, big: bool| {
            if big {
                g4(i).align_down(PageLevel::L2M)
            } else {
                g4(i)
            }
        };
        let m = &p.module;
        match *op {
            Op::SeptAdd(i, top) => {
                if top {
                    let _ = p.ensure_sept_path(td, g2(i), PageLevel::L2M);
                } else if let Ok(page) = p.alloc_page()
                    && m.mem_sept_add(td.tdr, g2(i), PageLevel::L2M, page).is_err()
                {
                    p.free_page(page);
                }
            }
            Op::Aug4k(i) => {
                if let Ok(page) = p.alloc_page()
                    && m.mem_page_aug(td.tdr, g4(i), PageLevel::L4K, page).is_err()
                {
                    p.free_page(page);
                }
            }
            Op::Aug2m(i) => {
                if let Ok(page) = p.alloc_2m()
                    && m.mem_page_aug(td.tdr, g2(i), PageLevel::L2M, page).is_err()
                {
                    p.free_2m(page);
                }
            }
            Op::Block(i, big) => {
                let _ = m.mem_range_block(td.tdr, at(i, big), lvl(big));
            }
            Op::Unblock(i, big) => {
                let _ = m.mem_range_unblock(td.tdr, at(i, big), lvl(big));
            }
            Op::Track => {
                let _ = m.mem_track(td.tdr);
            }
            Op::Remove(i, big) => {
                let _ = m.mem_page_remove(td.tdr, at(i, big), lvl(big));
            }
            Op::SeptRemove(i) => {
                let _ = m.mem_sept_remove(td.tdr, g2(i), PageLevel::L2M);
            }
            Op::Demote(i) => {
                if let Ok(page) = p.alloc_page()
                    && m.mem_page_demote(td.tdr, g2(i), PageLevel::L2M, page)
                        .is_err()
                {
                    p.free_page(page);
                }
            }
            Op::Promote(i) => {
                let _ = m.mem_page_promote(td.tdr, g2(i), PageLevel::L2M);
            }
            Op::Enter(kind) => {
                let v = td.vcpus[0].tdvpr;
                let steps = match kind {
                    0 => vec![Step::Accept {
                        gpa: Gpa(base),
                        len: 8 * G,
                        level: PageLevel::L2M,
                    }],
                    1 => vec![Step::Touch {
                        gpa: Gpa(base),
                        len: 8 * G,
                        access: Access::Write,
                        order: Order::Random { seed: 3 },
                    }],
                    _ => vec![Step::Accept {
                        gpa: Gpa(base),
                        len: 64 * 4096,
                        level: PageLevel::L4K,
                    }],
                };
                p.module.set_workload(v, Workload { steps });
                let _ = enter(p, v, 0, 0);
            }
            Op::Reclaim(i) => {
                let _ = m.phymem_page_reclaim(Hpa((1 << 30) + u64::from(i) * 4096 * 64));
            }
            Op::Raw(leaf, a, b, c, d) => {
                let mut r = Regs {
                    rax: u64::from(leaf),
                    rcx: a,
                    rdx: b,
                    r8: c,
                    r9: d,
                    ..Regs::default()
                };
                // Only leaves that cannot destroy the fixture's TD lifecycle.
                if !matches!(
                    Leaf::from_number(u16::from(leaf)),
                    Some(Leaf::MngVpFlushDone | Leaf::MngKeyFreeId | Leaf::VpFlush)
                ) {
                    p.module.seamcall(&mut r);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Random host call sequences never panic and keep PAMT ownership, CHLDCNT and the
        /// S-EPT consistent; afterwards the TD can always be torn down completely.
        #[test]
        fn random_sequences_keep_invariants(ops in proptest::collection::vec(op(), 1..60)) {
            let p = Platform::new();
            let td = runnable(&p);
            for op in &ops {
                run(&p, &td, op);
                if let Err(e) = p.module.check_invariants() {
                    panic!("after {op:?}: {e}");
                }
            }
            p.teardown(&td).unwrap();
            p.module.check_invariants().unwrap();
            prop_assert!(p
                .module
                .pamt
                .snapshot()
                .iter()
                .all(|(_, m)| m.owner != td.tdr));
        }

        /// Any register values on any leaf give a status, never a panic.
        #[test]
        fn arbitrary_registers_never_panic(
            rax in any::<u64>(),
            leaf in 0u64..50,
            version in 0u64..3,
            rcx in any::<u64>(),
            rdx in any::<u64>(),
            r8 in any::<u64>(),
            r9 in any::<u64>(),
            near in any::<bool>(),
        ) {
            let p = Platform::new();
            let td = p.create_td(&TdOptions::default()).unwrap();
            // Half the cases use plausible operands (the TD's own pages) to get deep.
            let pick = |x: u64| if near { [td.tdr.0, td.tdcs[0].0, td.vcpus[0].tdvpr.0, (1 << 30) + (x % (1 << 30))][(x % 4) as usize] } else { x };
            let mut r = Regs {
                rax: if near { leaf | version << 16 } else { rax },
                rcx: pick(rcx),
                rdx: pick(rdx),
                r8: pick(r8),
                r9,
                ..Regs::default()
            };
            p.module.seamcall(&mut r);
            p.module.check_invariants().unwrap();
        }
    }
}

// ---------- concurrency stress ----------

#[test]
fn concurrent_map_unmap_from_many_threads_stays_consistent() {
    let p = Arc::new(Platform::new());
    let td = runnable(&p);
    for t in 0..4u64 {
        p.ensure_sept_path(&td, Gpa((t + 1) * G), PageLevel::L4K)
            .unwrap();
    }
    let busy_tree = Arc::new(core::sync::atomic::AtomicU64::new(0));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let p = p.clone();
            let td = td.clone();
            let busy_tree = busy_tree.clone();
            std::thread::spawn(move || {
                let retry = |f: &dyn Fn() -> Result<(), SeamError>| loop {
                    match f() {
                        Ok(()) => return,
                        Err(e) if e.is_busy() => {
                            if e.operand() == OperandId::SEPT_TREE {
                                busy_tree.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
                            }
                            std::thread::yield_now();
                        }
                        Err(e) if e.status.is(TdxStatus::PREVIOUS_TLB_EPOCH_BUSY) => {
                            std::thread::yield_now()
                        }
                        Err(e) => panic!("{e}"),
                    }
                };
                for i in 0..40u64 {
                    let gpa = Gpa((t + 1) * G + (i % 8) * 4096);
                    let page = p.alloc_page().unwrap();
                    retry(&|| p.module.mem_page_aug(td.tdr, gpa, PageLevel::L4K, page));
                    retry(&|| p.module.mem_range_block(td.tdr, gpa, PageLevel::L4K));
                    retry(&|| p.module.mem_track(td.tdr));
                    // Another thread's TRACK may have advanced the epoch already; either way
                    // the page is tracked once one TRACK after the BLOCK succeeded.
                    retry(&|| p.module.mem_page_remove(td.tdr, gpa, PageLevel::L4K));
                    p.free_page(page);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    p.module.check_invariants().unwrap();
    for t in 0..4u64 {
        for i in 0..8 {
            let g = Gpa((t + 1) * G + i * 4096);
            assert_eq!(state(&p, &td, g, PageLevel::L4K), SeptState::Free);
        }
    }
    p.teardown(&td).unwrap();
}

#[test]
fn typed_vp_enter_wrapper_decodes_exits() {
    let p = Platform::new();
    let td = runnable(&p);
    let v = td.vcpus[0].tdvpr;
    set_steps(
        &p,
        v,
        vec![Step::Touch {
            gpa: Gpa(3 * G),
            len: 4096,
            access: Access::Write,
            order: Order::Sequential,
        }],
    );
    // EPT violation: RCX qualification, RDX extended qualification (type in 3:0), R8 GPA.
    let ex = p.module.vp_enter(v, &Default::default()).unwrap();
    assert_eq!(
        (
            ex.rax & 0xFFFF,
            ex.rcx,
            ex.rdx & exit::EXT_QUAL_TYPE_MASK,
            ex.r8
        ),
        (
            exit::EPT_VIOLATION,
            exit::QUAL_WRITE,
            exit::EXT_QUAL_TYPE_NORMAL,
            3 * G
        )
    );
    let ex = {
        let page = p.alloc_page().unwrap();
        p.aug(&td, Gpa(3 * G), PageLevel::L4K, page).unwrap();
        p.module.vp_enter(v, &Default::default()).unwrap()
    };
    assert_eq!(
        (ex.rax & 0xFFFF, ex.rdx & exit::EXT_QUAL_TYPE_MASK),
        (
            exit::EPT_VIOLATION,
            exit::EXT_QUAL_TYPE_PENDING_EPT_VIOLATION
        )
    );
}

// ---------- child counts of large pages, CACHE.WB and KEY.FREEID ----------

/// TDR.CHLDCNT counts 4 KiB pages: a 2 MiB page adds and removes 1 << (9 * level) = 512
/// (intel/tdx-module `tdh_mem_page_aug.c`, `tdh_mem_page_remove.c`,
/// `tdh_phymem_page_reclaim.c`). KEY.FREEID does not look at it (`tdh_mng_key_freeid.c`);
/// reclaiming the TDR answers TDX_TD_ASSOCIATED_PAGES_EXIST until the last 2 MiB page is
/// reclaimed too.
#[test]
fn two_mib_pages_count_512_children_and_hold_back_the_tdr() {
    use crate::metadata::td::CHLDCNT;
    use tdx_abi::pamt::PageType;
    let p = Platform::new();
    let td = runnable(&p);
    let (a, b) = (Gpa(8 * G), Gpa(9 * G));
    p.ensure_sept_path(&td, a, PageLevel::L2M).unwrap();
    p.ensure_sept_path(&td, b, PageLevel::L2M).unwrap();
    let base = p.module.td_child_count(td.tdr).unwrap();
    let (big_a, big_b) = (p.alloc_2m().unwrap(), p.alloc_2m().unwrap());
    p.aug(&td, a, PageLevel::L2M, big_a).unwrap();
    assert_eq!(p.mng_rd(td.tdr, CHLDCNT).unwrap(), base + 512);
    p.aug(&td, b, PageLevel::L2M, big_b).unwrap();
    assert_eq!(p.mng_rd(td.tdr, CHLDCNT).unwrap(), base + 1024);
    p.module.check_invariants().unwrap();
    // PAGE.REMOVE of a 2 MiB page takes 512 off.
    p.module.mem_range_block(td.tdr, a, PageLevel::L2M).unwrap();
    p.module.mem_track(td.tdr).unwrap();
    p.module.mem_page_remove(td.tdr, a, PageLevel::L2M).unwrap();
    assert_eq!(p.mng_rd(td.tdr, CHLDCNT).unwrap(), base + 512);
    p.module.check_invariants().unwrap();
    // Teardown with `b` still mapped: KEY.FREEID succeeds regardless of children.
    p.flush_vcpus(&td).unwrap();
    p.module
        .call(regs(Leaf::MngVpFlushDone, td.tdr.0, 0, 0))
        .unwrap();
    p.module
        .call(Regs::for_leaf(Leaf::PhymemCacheWb, 0))
        .unwrap();
    p.module
        .call(regs(Leaf::MngKeyFreeId, td.tdr.0, 0, 0))
        .unwrap();
    assert_eq!(
        err(p.module.phymem_page_reclaim(td.tdr)).status,
        TdxStatus::TD_ASSOCIATED_PAGES_EXIST
    );
    // Every other child page: the 2 MiB page alone still holds the TDR back.
    let others: Vec<Hpa> = p
        .module
        .pamt
        .snapshot()
        .into_iter()
        .filter(|(hpa, m)| {
            m.owner == td.tdr
                && !matches!(m.page_type, PageType::Tdr | PageType::Nda | PageType::Rsvd)
                && hpa.0 % (m.size.pages_4k() * 4096) == 0
                && *hpa != big_b
        })
        .map(|(hpa, _)| hpa)
        .collect();
    assert!(!others.is_empty());
    for hpa in others {
        p.module.phymem_page_reclaim(hpa).unwrap();
    }
    assert_eq!(p.module.td_child_count(td.tdr), Some(512));
    p.module.check_invariants().unwrap();
    assert_eq!(
        err(p.module.phymem_page_reclaim(td.tdr)).status,
        TdxStatus::TD_ASSOCIATED_PAGES_EXIST
    );
    let rec = p.module.phymem_page_reclaim(big_b).unwrap();
    assert_eq!(
        (rec.page_type, rec.owner, rec.size),
        (PageType::Reg.raw(), td.tdr, 1)
    );
    assert_eq!(p.module.td_child_count(td.tdr), Some(0));
    p.module.phymem_page_reclaim(td.tdr).unwrap();
    assert_eq!(p.module.td_child_count(td.tdr), None);
    p.module.check_invariants().unwrap();
}

/// TDH.PHYMEM.CACHE.WB (intel/tdx-module `tdh_phymem_cache_wb.c`): RCX > 1 is
/// OPERAND_INVALID; a start with no FLUSHED KeyID is TDX_NO_HKID_READY_TO_WBCACHE; a resume
/// without an interrupted session is TDX_WBCACHE_RESUME_ERROR; an interrupted session resumes
/// where it stopped (at most CACHE_SUB_BLOCKS - 1 interruptions) and, when done, clears this
/// package's bit only for the KeyIDs FLUSHED when it started; a new start drops an
/// interrupted session.
#[test]
fn cache_wb_commands_interruption_and_resumption() {
    let p = two_packages();
    let wb = |lp: u32, rcx: u64| cache_wb(&p, lp, rcx);
    let interrupt = || {
        p.module.inject(
            Leaf::PhymemCacheWb,
            Injection::StatusOnNthCall {
                n: 1,
                status: TdxStatus::INTERRUPTED_RESUMABLE,
            },
        )
    };
    let flushdone = |td: &TestTd| {
        p.flush_vcpus(td).unwrap();
        p.module
            .call(regs(Leaf::MngVpFlushDone, td.tdr.0, 0, 0))
            .unwrap();
    };
    let freeid = |td: &TestTd| TdxStatus(raw(&p, regs(Leaf::MngKeyFreeId, td.tdr.0, 0, 0)).rax);
    assert_eq!(
        wb(0, 2),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX)
    );
    assert_eq!(wb(0, 0), TdxStatus::NO_HKID_READY_TO_WBCACHE);
    // An interrupt pending changes nothing when there is nothing to do.
    interrupt();
    assert_eq!(wb(0, 0), TdxStatus::NO_HKID_READY_TO_WBCACHE);
    assert_eq!(wb(0, 1), TdxStatus::WBCACHE_RESUME_ERROR);
    let (a, b) = (runnable(&p), runnable(&p));
    flushdone(&a);
    interrupt();
    assert_eq!(wb(0, 0), TdxStatus::INTERRUPTED_RESUMABLE);
    assert_eq!(freeid(&a), TdxStatus::WBCACHE_NOT_COMPLETE);
    // B is flushed after package 0's session started: that session does not cover it.
    flushdone(&b);
    let mut interruptions = 1;
    loop {
        interrupt();
        match wb(0, 1) {
            TdxStatus::INTERRUPTED_RESUMABLE => interruptions += 1,
            TdxStatus::SUCCESS => break,
            s => panic!("CACHE.WB resume: {s:?}"),
        }
    }
    assert_eq!(interruptions, super::CACHE_SUB_BLOCKS - 1);
    p.module.clear_injection(Leaf::PhymemCacheWb);
    assert_eq!(wb(0, 1), TdxStatus::WBCACHE_RESUME_ERROR);
    // Package 1 in one go covers both.
    assert_eq!(wb(1, 0), TdxStatus::SUCCESS);
    assert_eq!(freeid(&a), TdxStatus::SUCCESS);
    assert_eq!(freeid(&b), TdxStatus::WBCACHE_NOT_COMPLETE);
    // A new start drops an interrupted session.
    interrupt();
    assert_eq!(wb(0, 0), TdxStatus::INTERRUPTED_RESUMABLE);
    assert_eq!(wb(0, 0), TdxStatus::SUCCESS);
    assert_eq!(wb(0, 1), TdxStatus::WBCACHE_RESUME_ERROR);
    assert_eq!(freeid(&b), TdxStatus::SUCCESS);
    assert_eq!(wb(0, 0), TdxStatus::NO_HKID_READY_TO_WBCACHE);
    p.module.check_invariants().unwrap();
}

/// TDH.MNG.KEY.FREEID (intel/tdx-module `tdh_mng_key_freeid.c`): TDR, then lifecycle BLOCKED
/// (else LIFECYCLE_STATE_INCORRECT, also once in TEARDOWN), then the KOT exclusively
/// (OPERAND_BUSY on KOT), then the WBINVD bitmap. CACHE.WB takes the KOT shared, so it runs
/// while another reader holds it.
#[test]
fn key_freeid_order_and_kot_sharing() {
    let p = Arc::new(Platform::new());
    let td = runnable(&p);
    let freeid = regs(Leaf::MngKeyFreeId, td.tdr.0, 0, 0);
    let held = p
        .module
        .hold_lock(LockTarget::Kot, LockMode::Shared)
        .unwrap();
    assert_eq!(
        TdxStatus(raw(&p, Regs::for_leaf(Leaf::PhymemCacheWb, 0)).rax),
        TdxStatus::NO_HKID_READY_TO_WBCACHE
    );
    // The lifecycle is checked before the KOT lock is taken.
    assert_eq!(
        TdxStatus(raw(&p, freeid).rax),
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    drop(held);
    p.flush_vcpus(&td).unwrap();
    p.module
        .call(regs(Leaf::MngVpFlushDone, td.tdr.0, 0, 0))
        .unwrap();
    let held = p
        .module
        .hold_lock(LockTarget::Kot, LockMode::Shared)
        .unwrap();
    assert_eq!(
        TdxStatus(raw(&p, Regs::for_leaf(Leaf::PhymemCacheWb, 0)).rax),
        TdxStatus::SUCCESS
    );
    assert_eq!(
        TdxStatus(raw(&p, freeid).rax),
        TdxStatus::OPERAND_BUSY.with_operand(OperandId::KOT)
    );
    drop(held);
    assert_eq!(TdxStatus(raw(&p, freeid).rax), TdxStatus::SUCCESS);
    assert_eq!(
        TdxStatus(raw(&p, freeid).rax),
        TdxStatus::LIFECYCLE_STATE_INCORRECT
    );
    p.module.check_invariants().unwrap();
}

/// VPFLUSHDONE sets the KeyID's WBINVD bitmap to every package with keys configured on the
/// platform, not only those that ran TDH.MNG.KEY.CONFIG for the TD (intel/tdx-module
/// `tdh_mng_vpflushdone.c`): a TD blocked in HKID_ASSIGNED still needs CACHE.WB on each
/// package before KEY.FREEID.
#[test]
fn freeid_needs_cache_wb_on_every_configured_package() {
    let p = two_packages();
    let tdr = p.alloc_page().unwrap();
    let hkid = 32 + 31;
    p.module
        .call(regs(Leaf::MngCreate, tdr.0, hkid, 0))
        .unwrap();
    // Key configured on package 0 only: the TD stays HKID_ASSIGNED.
    p.lp(0)
        .unwrap()
        .call(regs(Leaf::MngKeyConfig, tdr.0, 0, 0))
        .unwrap();
    p.module
        .call(regs(Leaf::MngVpFlushDone, tdr.0, 0, 0))
        .unwrap();
    let wb = |lp: u32| cache_wb(&p, lp, 0);
    let freeid = || TdxStatus(raw(&p, regs(Leaf::MngKeyFreeId, tdr.0, 0, 0)).rax);
    assert_eq!(wb(0), TdxStatus::SUCCESS);
    assert_eq!(freeid(), TdxStatus::WBCACHE_NOT_COMPLETE);
    assert_eq!(wb(1), TdxStatus::SUCCESS);
    assert_eq!(freeid(), TdxStatus::SUCCESS);
    p.module.phymem_page_reclaim(tdr).unwrap();
    p.module.check_invariants().unwrap();
}

/// The posted-interrupt fields of the TD-VMCS, as the host writes them with TDH.VP.WR
/// (intel/tdx-module TDX_1.5.01 `src/common/metadata_handlers/metadata_vp.c`, special write
/// handling; write masks from `include/auto_gen/td_vmcs_fields_lookup.c`): the pin-based
/// control is refused until the notification vector and the descriptor address are written
/// (TDX_TD_VMCS_FIELD_NOT_INITIALIZED with the missing field's VMCS encoding), a vector above
/// 255 and a descriptor with KeyID bits are not valid values, and only bit 7 of the pin-based
/// controls is host-writable.
#[test]
fn posted_interrupt_fields_are_written_in_order() {
    use crate::metadata::vcpu::{
        PIN_BASED_CONTROLS, PIN_BASED_POSTED_INTERRUPTS, POSTED_INTR_DESC_ADDR, POSTED_INTR_NV,
    };
    let p = Platform::new();
    let td = p.create_td(&TdOptions::default()).unwrap();
    let tdvpr = td.vcpus[0].tdvpr.0;
    let wr = |field: u64, value: u64, mask: u64| {
        let mut r = regs(Leaf::VpWr, tdvpr, field, value);
        r.r9 = mask;
        TdxStatus(raw(&p, r).rax)
    };
    let enable = PIN_BASED_POSTED_INTERRUPTS;
    assert_eq!(
        wr(PIN_BASED_CONTROLS, enable, enable),
        TdxStatus::TD_VMCS_FIELD_NOT_INITIALIZED.with_operand(OperandId(0x0002))
    );
    assert_eq!(
        wr(POSTED_INTR_NV, 0x1F2, 0xFFFF),
        TdxStatus::METADATA_FIELD_VALUE_NOT_VALID
    );
    assert_eq!(wr(POSTED_INTR_NV, 0xF2, 0xFFFF), TdxStatus::SUCCESS);
    assert_eq!(
        wr(PIN_BASED_CONTROLS, enable, enable),
        TdxStatus::TD_VMCS_FIELD_NOT_INITIALIZED.with_operand(OperandId(0x2016))
    );
    assert_eq!(
        wr(POSTED_INTR_DESC_ADDR, 1 << 50 | 0x1000, u64::MAX),
        TdxStatus::METADATA_FIELD_VALUE_NOT_VALID
    );
    // Bits 5:0 are not writable: a descriptor is 64-byte aligned, and a request to change
    // them is refused (`md_check_forbidden_bits_unchanged`, `metadata_generic.h`).
    assert_eq!(
        wr(POSTED_INTR_DESC_ADDR, 0x12_3456, u64::MAX),
        TdxStatus::METADATA_FIELD_VALUE_NOT_VALID
    );
    assert_eq!(
        wr(POSTED_INTR_DESC_ADDR, 0x12_3440, u64::MAX),
        TdxStatus::SUCCESS
    );
    assert_eq!(
        wr(PIN_BASED_CONTROLS, 1, 1),
        TdxStatus::METADATA_FIELD_NOT_WRITABLE
    );
    assert_eq!(wr(PIN_BASED_CONTROLS, u64::MAX, enable), TdxStatus::SUCCESS);
    let rd = |field: u64| raw(&p, regs(Leaf::VpRd, tdvpr, field, 0)).r8;
    assert_eq!(rd(POSTED_INTR_NV), 0xF2);
    assert_eq!(rd(POSTED_INTR_DESC_ADDR), 0x12_3440);
    assert_eq!(rd(PIN_BASED_CONTROLS), enable);
    // The shared EPTP: only the root's address (bits 51:12) is the host's; EPTP control
    // bits in the request are refused, as KVM's `tdx_load_mmu_pgd` writes the bare address.
    use crate::metadata::vcpu::SHARED_EPTP;
    assert_eq!(
        wr(SHARED_EPTP, 0x40_0000 | 0x1E, u64::MAX),
        TdxStatus::METADATA_FIELD_VALUE_NOT_VALID
    );
    assert_eq!(wr(SHARED_EPTP, 0x40_0000, u64::MAX), TdxStatus::SUCCESS);
    assert_eq!(rd(SHARED_EPTP), 0x40_0000);
    // VCPU_STATE_DETAILS is read-only; a vCPU that never ran has no virtual interrupt
    // pending (VMXIP, bit 0).
    use crate::metadata::vcpu::VCPU_STATE_DETAILS;
    assert_eq!(rd(VCPU_STATE_DETAILS), 0);
    assert_eq!(
        wr(VCPU_STATE_DETAILS, 1, 1),
        TdxStatus::METADATA_FIELD_NOT_WRITABLE
    );
}

// ---------- SEPT.REMOVE / PROMOTE outputs (intel/tdx-module 1.5.01) ----------

/// Host-locks the S-EPT entry of `td` for `gpa` at `level` (as a concurrent host leaf
/// would) and returns the walk result to unlock it with [`super::sept::unlock`].
fn host_lock_entry(
    p: &Platform,
    td: &TestTd,
    gpa: Gpa,
    level: PageLevel,
) -> super::sept::WalkResult {
    let tdm = p.module.tds.read().get(&td.tdr.0).cloned().unwrap();
    let w = tdm.tree.get().unwrap().walk(gpa, level).ok().unwrap();
    super::sept::lock_host(w.entry()).unwrap();
    w
}

/// TDH.MEM.SEPT.REMOVE, register by register, in the order of `tdh_mem_sept_remove` in
/// intel/tdx-module `src/vmm_dispatcher/api_calls/tdh_mem_sept_remove.c`:
/// * RCX/RDX are zeroed first, and for version > 0 R9–R11 = NULL_PA (`~0ULL`,
///   `src/common/x86_defs/x86_defs.h`), *then* a version > 1 is OPERAND_INVALID on RAX (the
///   dispatcher, `tdx_vmm_dispatcher.c`, lets versions > 0 of this leaf through);
/// * the S-EPT tree lock (exclusive, `lock_sept_check_and_walk_private_gpa` in
///   `src/common/helpers/helpers.c`): OPERAND_BUSY on SEPT_TREE, no details;
/// * the state check (`sept_state_is_seamcall_leaf_allowed`): EPT_ENTRY_STATE_INCORRECT with
///   the entry (`set_arch_septe_details_in_vmm_regs`, `sept_manager.c`: a FREE entry is only
///   SUPPRESS_VE; a non-leaf keeps RWX and PS) and RDX = level | state << 8;
/// * the child page's PAMT lock (`pamt_implicit_get_and_lock`): busy on RCX, no details;
/// * not blocked: GPA_RANGE_NOT_BLOCKED with the entry; not tracked: TLB_TRACKING_NOT_DONE,
///   no details;
/// * a child entry not FREE: EPT_PAGE_NOT_FREE with the parent entry;
/// * success: RCX = the removed page, RDX = 0, R9–R11 still NULL_PA (no L2 VMs), CHLDCNT −1.
#[test]
fn sept_remove_outputs_follow_the_source_order() {
    use tdx_abi::sept::entry_bits::{RWX, SUPPRESS_VE};
    const NULL_PA: u64 = u64::MAX;
    let p = Platform::new();
    let td = runnable(&p);
    let gpa = Gpa(8 * G);
    p.ensure_sept_path(&td, gpa, PageLevel::L2M).unwrap();
    let table = p.alloc_page().unwrap();
    p.module
        .mem_sept_add(td.tdr, gpa, PageLevel::L2M, table)
        .unwrap();
    let call = |gpa: Gpa, version: u8| {
        let mut r = Regs::for_leaf(Leaf::MemSeptRemove, version);
        r.rcx = gpa_level_operand(gpa, PageLevel::L2M);
        r.rdx = td.tdr.0;
        (r.r8, r.r9, r.r10, r.r11) = (0x11, 0x22, 0x33, 0x44);
        p.module.seamcall(&mut r);
        r
    };
    let details = |state| SeptLevelState::new(1, state).0;
    // Version 2: zeroed RCX/RDX and NULL_PA in R9–R11, then refused.
    let r = call(gpa, 2);
    assert_eq!(
        TdxStatus(r.rax),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::RAX)
    );
    assert_eq!(
        (r.rcx, r.rdx, r.r8, r.r9, r.r10, r.r11),
        (0, 0, 0x11, NULL_PA, NULL_PA, NULL_PA)
    );
    // Version 1, NL_MAPPED while the TD runs: not blocked, with the entry.
    let r = call(gpa, 1);
    assert_eq!(
        TdxStatus(r.rax),
        TdxStatus::GPA_RANGE_NOT_BLOCKED.with_operand(OperandId::RCX)
    );
    assert_eq!((r.rcx, r.rdx), (RWX, details(SeptState::NlMapped)));
    assert_eq!((r.r9, r.r10, r.r11), (NULL_PA, NULL_PA, NULL_PA));
    // Version 0 leaves R9–R11 alone.
    let r = call(gpa, 0);
    assert_eq!((r.r9, r.r10, r.r11), (0x22, 0x33, 0x44));
    // The child page's PAMT lock is taken before the blocked check: busy, no details.
    {
        let _h = p
            .module
            .hold_lock(LockTarget::Page(table), LockMode::Shared)
            .unwrap();
        let r = call(gpa, 0);
        assert_eq!(
            TdxStatus(r.rax),
            TdxStatus::OPERAND_BUSY.with_operand(OperandId::RCX)
        );
        assert_eq!((r.rcx, r.rdx), (0, 0));
    }
    p.module
        .mem_range_block(td.tdr, gpa, PageLevel::L2M)
        .unwrap();
    let r = call(gpa, 0);
    assert_eq!(
        TdxStatus(r.rax),
        TdxStatus::TLB_TRACKING_NOT_DONE.with_operand(OperandId::RCX)
    );
    assert_eq!((r.rcx, r.rdx), (0, 0));
    // The tree lock, exclusive, before the walk: busy on SEPT_TREE, no details.
    {
        let _h = p
            .module
            .hold_lock(LockTarget::SeptTree(td.tdr), LockMode::Shared)
            .unwrap();
        let r = call(gpa, 0);
        assert_eq!(
            TdxStatus(r.rax),
            TdxStatus::OPERAND_BUSY.with_operand(OperandId::SEPT_TREE)
        );
        assert_eq!((r.rcx, r.rdx), (0, 0));
    }
    p.module.mem_track(td.tdr).unwrap();
    let before = p.module.td_child_count(td.tdr).unwrap();
    let r = call(gpa, 1);
    assert_eq!(TdxStatus(r.rax), TdxStatus::SUCCESS);
    assert_eq!(
        (r.rcx, r.rdx, r.r9, r.r10, r.r11),
        (table.0, 0, NULL_PA, NULL_PA, NULL_PA)
    );
    assert_eq!(p.module.td_child_count(td.tdr).unwrap(), before - 1);
    // FREE now: the state check reports SUPPRESS_VE only.
    let r = call(gpa, 0);
    assert_eq!(
        TdxStatus(r.rax),
        TdxStatus::EPT_ENTRY_STATE_INCORRECT.with_operand(OperandId::RCX)
    );
    assert_eq!((r.rcx, r.rdx), (SUPPRESS_VE, details(SeptState::Free)));
    // A child still mapped: EPT_PAGE_NOT_FREE with the (blocked: RWX 0) parent entry.
    let gpa2 = Gpa(10 * G);
    p.ensure_sept_path(&td, gpa2, PageLevel::L2M).unwrap();
    let table2 = p.alloc_page().unwrap();
    p.module
        .mem_sept_add(td.tdr, gpa2, PageLevel::L2M, table2)
        .unwrap();
    let page = p.alloc_page().unwrap();
    p.aug(&td, gpa2, PageLevel::L4K, page).unwrap();
    p.module
        .mem_range_block(td.tdr, gpa2, PageLevel::L2M)
        .unwrap();
    p.module.mem_track(td.tdr).unwrap();
    let r = call(gpa2, 0);
    assert_eq!(
        TdxStatus(r.rax),
        TdxStatus::EPT_PAGE_NOT_FREE.with_operand(OperandId::RCX)
    );
    assert_eq!((r.rcx, r.rdx), (0, details(SeptState::NlBlocked)));
    p.module.check_invariants().unwrap();
}

/// TDH.MEM.PAGE.PROMOTE (intel/tdx-module `src/vmm_dispatcher/api_calls/tdh_mem_page_promote.c`,
/// `tdh_mem_page_promote` and `is_sept_page_valid_for_merge`): the 512 child entries are
/// host-locked and checked one at a time, so a bad first entry (neither MAPPED nor PENDING,
/// `sept_state_is_mapped_or_pending`) is EPT_INVALID_PROMOTE_CONDITIONS even when a later
/// entry is locked by someone else; a busy child lock is OPERAND_BUSY (`sept_lock_acquire_host`
/// in `src/common/helpers/tdx_locks.h`); a child differing from the first by more than its HPA
/// is EPT_INVALID_PROMOTE_CONDITIONS; all with RCX/RDX describing the *parent* entry at the
/// requested level (`set_arch_septe_details_in_vmm_regs`, non-leaf: RWX only). The locks taken
/// are released on failure. Version 1 sets R9–R11 to NULL_PA first; success returns the freed
/// S-EPT page in RCX and RDX = 0.
#[test]
fn promote_locks_and_checks_children_one_by_one() {
    use tdx_abi::sept::entry_bits::{RWX, TDEL};
    const NULL_PA: u64 = u64::MAX;
    let p = Platform::new();
    // Before MR.FINALIZE nothing needs blocking or tracking (`op_state_is_tlb_tracking_required`).
    let td = p.create_td(&TdOptions::default()).unwrap();
    let gpa = Gpa(8 * G);
    let (_, sept) = aug_and_demote_2m(&p, &td, gpa);
    let child = |i: u64| Gpa(gpa.0 + i * 4096);
    let promote = |version: u8| {
        let mut r = Regs::for_leaf(Leaf::MemPagePromote, version);
        r.rcx = gpa_level_operand(gpa, PageLevel::L2M);
        r.rdx = td.tdr.0;
        p.module.seamcall(&mut r);
        r
    };
    let parent = SeptLevelState::new(1, SeptState::NlMapped).0;
    let invalid = TdxStatus::EPT_INVALID_PROMOTE_CONDITIONS.with_operand(OperandId::RCX);
    let force = |i: u64, state: SeptState| {
        assert!(
            p.module
                .force_sept_state(td.tdr, child(i), PageLevel::L4K, state)
        );
    };
    let refused = || {
        let r = promote(0);
        assert_eq!(TdxStatus(r.rax), invalid);
        assert_eq!((r.rcx, r.rdx), (RWX, parent));
    };
    let w5 = host_lock_entry(&p, &td, child(5), PageLevel::L4K);
    force(0, SeptState::Free);
    // Entry 0 fails its check before entry 5's lock is tried.
    refused();
    force(0, SeptState::Pending);
    // Entries 0–4 pass and stay locked until entry 5's lock fails: busy, parent details.
    let r = promote(0);
    assert_eq!(
        TdxStatus(r.rax),
        TdxStatus::OPERAND_BUSY.with_operand(OperandId::RCX)
    );
    assert_eq!((r.rcx, r.rdx), (RWX, parent));
    let tdm = p.module.tds.read().get(&td.tdr.0).cloned().unwrap();
    let tree = tdm.tree.get().unwrap();
    for i in 0..5 {
        let w = tree.walk(child(i), PageLevel::L4K).ok().unwrap();
        assert_eq!(w.word & TDEL, 0, "child {i} released");
    }
    super::sept::unlock(w5.entry());
    // Entry 7 in another state than entry 0.
    force(7, SeptState::Mapped);
    refused();
    force(7, SeptState::Pending);
    // Version 2 is refused after RCX/RDX are zeroed and R9–R11 set.
    let r = promote(2);
    assert_eq!(
        TdxStatus(r.rax),
        TdxStatus::OPERAND_INVALID.with_operand(OperandId::RAX)
    );
    assert_eq!(
        (r.rcx, r.rdx, r.r9, r.r10, r.r11),
        (0, 0, NULL_PA, NULL_PA, NULL_PA)
    );
    let r = promote(1);
    assert_eq!(TdxStatus(r.rax), TdxStatus::SUCCESS);
    assert_eq!(
        (r.rcx, r.rdx, r.r9, r.r10, r.r11),
        (sept.0, 0, NULL_PA, NULL_PA, NULL_PA)
    );
    assert_eq!(state(&p, &td, gpa, PageLevel::L2M), SeptState::Pending);
    p.module.check_invariants().unwrap();
}

/// TDH.VP.FLUSH (intel/tdx-module `src/vmm_dispatcher/api_calls/tdh_vp_flush.c`,
/// `tdh_vp_flush`) and TDH.MNG.VPFLUSHDONE (`tdh_mng_vpflushdone.c`, `tdh_mng_vpflushdone`):
/// * VP.FLUSH: TDVPR, TDR, lifecycle KEYS_CONFIGURED (`TDX_TD_KEYS_NOT_CONFIGURED`), TDVPS
///   pages (`map_tdvps` in `src/common/helpers/helpers.c`: `TDX_TDCX_NUM_INCORRECT`), then
///   `assoc_lpid != lp_id` is `TDX_VCPU_NOT_ASSOCIATED`, also when associated with another
///   LP; success lowers TDCS.NUM_ASSOC_VCPUS;
/// * VPFLUSHDONE: TDR exclusive, then the KOT exclusive (OPERAND_BUSY on KOT) before the
///   lifecycle, then NUM_ASSOC_VCPUS != 0 is `TDX_FLUSHVP_NOT_DONE`; the count is raised by
///   `associate_vcpu_initial` (VP.INIT) and by `associate_vcpu` on a new association
///   (`helpers.c`), e.g. a VP.RD on another LP after a flush.
#[test]
fn vp_flush_and_vpflushdone_follow_the_source() {
    let p = two_packages();
    let td = p.create_td(&TdOptions::default()).unwrap();
    let m = &p.module;
    let lp1 = p.lp(1).unwrap();
    let tdvpr = td.vcpus[0].tdvpr.0;
    let flush = regs(Leaf::VpFlush, tdvpr, 0, 0);
    let flushdone = regs(Leaf::MngVpFlushDone, td.tdr.0, 0, 0);
    // A vCPU without its TDCX pages: map_tdvps fails before the association is looked at.
    let half = p.alloc_page().unwrap();
    m.call(regs(Leaf::VpCreate, half.0, td.tdr.0, 0)).unwrap();
    assert_eq!(
        m.call(regs(Leaf::VpFlush, half.0, 0, 0))
            .unwrap_err()
            .status,
        TdxStatus::TDCX_NUM_INCORRECT
    );
    // VP.INIT associated the vCPU with LP 0: VP.FLUSH on LP 1 is not "associated elsewhere"
    // but plainly not associated (with this LP).
    assert_eq!(
        lp1.call(flush).unwrap_err().status,
        TdxStatus::VCPU_NOT_ASSOCIATED
    );
    // The KOT lock comes before the lifecycle and association checks.
    {
        let _k = m.hold_lock(LockTarget::Kot, LockMode::Shared).unwrap();
        assert_eq!(
            m.call(flushdone).unwrap_err().status,
            TdxStatus::OPERAND_BUSY.with_operand(OperandId::KOT)
        );
    }
    assert_eq!(
        m.call(flushdone).unwrap_err().status,
        TdxStatus::FLUSHVP_NOT_DONE
    );
    m.call(flush).unwrap();
    // A new association on LP 1 (VP.RD of an architectural field) counts again.
    lp1.call(regs(
        Leaf::VpRd,
        tdvpr,
        crate::metadata::vcpu::HOST_SCRATCH,
        0,
    ))
    .unwrap();
    assert_eq!(
        m.call(flushdone).unwrap_err().status,
        TdxStatus::FLUSHVP_NOT_DONE
    );
    lp1.call(flush).unwrap();
    m.call(flushdone).unwrap();
    // BLOCKED now: VP.FLUSH fails on the lifecycle before the association.
    assert_eq!(
        m.call(flush).unwrap_err().status,
        TdxStatus::TD_KEYS_NOT_CONFIGURED
    );
}

/// EPT-violation TD exits, register by register (intel/tdx-module 1.5.01):
/// * a guest access: `td_ept_violation_exit` (`src/td_dispatcher/vm_exits/td_ept_violation.c`)
///   → `tdx_ept_violation_exit_to_vmm` (`td_other_exits.c`: qualification bits 12:7 and GPA
///   bits 11:0 cleared) → `async_tdexit_internal` (`src/td_transitions/td_exit.c`): RAX =
///   TDX_SUCCESS with the VMX exit reason 48 in bits 31:0, RCX = exit qualification (bits
///   33:32 the VM, 0), RDX = extended qualification (type 0 `VMX_EEQ_NONE`), R8 = GPA, R9 = 0
///   (no interruption information), R10–R15, RBX, RSI, RDI zeroed;
/// * TDG.MEM.PAGE.ACCEPT stopped by a blocked 4 KiB entry: `async_tdexit_ept_violation`
///   (`td_other_exits.c`): RCX = write (bit 1) | the entry's R/W/X in bits 5:3 (none when
///   blocked, `block_sept_entry`), RDX = `VMX_EEQ_ACCEPT` (1) | `tdaccept_vmx_eeq_info_t`
///   (`include/tdx_api_defs.h`) << 32: requested level 0, entry level 0, public state
///   PENDING_BLOCKED (3, `sept_get_arch_state`; AUG then BLOCK), leaf (PS set in every leaf
///   state encoding,
///   `sept_state_lookup.h`).
#[test]
fn ept_violation_exit_registers_follow_the_source() {
    let p = Platform::new();
    let td = runnable(&p);
    let v = td.vcpus[0].tdvpr;
    let free = Gpa(8 * G + 0x5000);
    let blocked = Gpa(12 * G);
    let page = p.alloc_page().unwrap();
    p.aug(&td, blocked, PageLevel::L4K, page).unwrap();
    p.module
        .mem_range_block(td.tdr, blocked, PageLevel::L4K)
        .unwrap();
    set_steps(
        &p,
        v,
        vec![
            Step::Touch {
                gpa: free,
                len: 4096,
                access: Access::Read,
                order: Order::Sequential,
            },
            Step::Halt,
        ],
    );
    let entry = || {
        let mut r = Regs::for_leaf(Leaf::VpEnter, 0);
        r.rcx = v.0;
        (r.rbx, r.rsi, r.rdi) = (1, 3, 4);
        (r.r9, r.r12, r.r13, r.r14, r.r15) = (9, 12, 13, 14, 15);
        p.module.seamcall(&mut r);
        r
    };
    let r = entry();
    assert_eq!(r.rax, exit::EPT_VIOLATION);
    assert_eq!((r.rcx, r.rdx, r.r8), (exit::QUAL_READ, 0, free.0));
    assert_eq!(
        (r.rbx, r.rsi, r.rdi, r.r9, r.r10, r.r11),
        (0, 0, 0, 0, 0, 0)
    );
    assert_eq!((r.r12, r.r13, r.r14, r.r15), (0, 0, 0, 0));
    set_steps(
        &p,
        v,
        vec![Step::Accept {
            gpa: blocked,
            len: 4096,
            level: PageLevel::L4K,
        }],
    );
    let r = entry();
    assert_eq!(r.rax, exit::EPT_VIOLATION);
    assert_eq!(r.rcx, exit::QUAL_WRITE);
    let info = (SeptState::PendingBlocked as u64) << 6 | 1 << 14;
    assert_eq!(r.rdx, exit::EXT_QUAL_TYPE_ACCEPT | info << 32);
    assert_eq!((r.r8, r.r9, r.r12, r.r15), (blocked.0, 0, 0, 0));
}

/// TDH.PHYMEM.CACHE.WB's order and per-package state (intel/tdx-module
/// `src/vmm_dispatcher/api_calls/tdh_phymem_cache_wb.c`, `tdh_phymem_cache_wb`): a command
/// above 1 is refused before any lock; the package's WBT mutex is taken before the KOT (so
/// with both held the busy operand is WBCACHE); the interruption point lives in the
/// package's `wbt_entries` slot, so an interrupted session on package 0 cannot be resumed
/// on package 1 (TDX_WBCACHE_RESUME_ERROR) and package 1's own session does not disturb it.
#[test]
fn cache_wb_lock_order_and_per_package_sessions() {
    let p = two_packages();
    let td = runnable(&p);
    p.flush_vcpus(&td).unwrap();
    p.module
        .call(regs(Leaf::MngVpFlushDone, td.tdr.0, 0, 0))
        .unwrap();
    {
        let _w = p
            .module
            .hold_lock(LockTarget::Wbt(0), LockMode::Exclusive)
            .unwrap();
        let _k = p
            .module
            .hold_lock(LockTarget::Kot, LockMode::Exclusive)
            .unwrap();
        assert_eq!(
            cache_wb(&p, 0, 2),
            TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX)
        );
        assert_eq!(
            cache_wb(&p, 0, 0),
            TdxStatus::OPERAND_BUSY.with_operand(OperandId::WBCACHE)
        );
        // Package 1's mutex is free: it gets as far as the KOT.
        assert_eq!(
            cache_wb(&p, 1, 0),
            TdxStatus::OPERAND_BUSY.with_operand(OperandId::KOT)
        );
    }
    p.module.inject(
        Leaf::PhymemCacheWb,
        Injection::StatusOnNthCall {
            n: 1,
            status: TdxStatus::INTERRUPTED_RESUMABLE,
        },
    );
    assert_eq!(cache_wb(&p, 0, 0), TdxStatus::INTERRUPTED_RESUMABLE);
    assert_eq!(cache_wb(&p, 1, 1), TdxStatus::WBCACHE_RESUME_ERROR);
    assert_eq!(cache_wb(&p, 1, 0), TdxStatus::SUCCESS);
    // Package 0 still owes its write-back; its saved point survives package 1's session.
    assert_eq!(
        TdxStatus(raw(&p, regs(Leaf::MngKeyFreeId, td.tdr.0, 0, 0)).rax),
        TdxStatus::WBCACHE_NOT_COMPLETE
    );
    assert_eq!(cache_wb(&p, 0, 1), TdxStatus::SUCCESS);
    assert_eq!(
        TdxStatus(raw(&p, regs(Leaf::MngKeyFreeId, td.tdr.0, 0, 0)).rax),
        TdxStatus::SUCCESS
    );
}

/// A walk stops at a blocked non-leaf entry: `secure_ept_walk` (intel/tdx-module
/// `src/common/memory_handlers/sept_manager.c`) descends only through entries with RWX set,
/// and TDH.MEM.RANGE.BLOCK of a non-leaf entry clears them. So the 4 KiB pages below a
/// blocked 2 MiB table are out of reach of TDH.MEM.SEPT.RD and TDH.MEM.PAGE.REMOVE, which
/// report EPT_WALK_FAILED with the blocked entry at level 1, until it is unblocked.
#[test]
fn a_blocked_table_entry_ends_the_walk() {
    let p = Platform::new();
    let td = p.create_td(&TdOptions::default()).unwrap();
    let gpa = Gpa(16 * G);
    let page = p.alloc_page().unwrap();
    p.aug(&td, gpa, PageLevel::L4K, page).unwrap();
    p.module
        .mem_range_block(td.tdr, gpa, PageLevel::L2M)
        .unwrap();
    assert_eq!(state(&p, &td, gpa, PageLevel::L2M), SeptState::NlBlocked);
    let walk_failed = TdxStatus::EPT_WALK_FAILED.with_operand(OperandId::RCX);
    let e = err(p.module.mem_sept_rd(td.tdr, gpa, PageLevel::L4K));
    assert_eq!(e.status, walk_failed);
    assert_eq!(SeptLevelState(e.rdx).level(), 1);
    assert_eq!(SeptLevelState(e.rdx).state(), Some(SeptState::NlBlocked));
    let e = err(p.module.mem_page_remove(td.tdr, gpa, PageLevel::L4K));
    assert_eq!(e.status, walk_failed);
    p.module
        .mem_range_unblock(td.tdr, gpa, PageLevel::L2M)
        .unwrap();
    // Reachable again: AUG left the page PENDING until the guest accepts it.
    assert_eq!(state(&p, &td, gpa, PageLevel::L4K), SeptState::Pending);
}
