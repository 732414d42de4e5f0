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
use crate::abi::mrtd::{MeasuredPage, expected_mrtd};
use crate::abi::{
    Gpa, Hpa, Leaf, OperandId, PageLevel, SeptLevelState, SeptState, TdxStatus, gpa_level_operand,
};
use crate::seamcall::{Regs, SeamError, Seamcall, TdxModule};

const G: u64 = 0x20_0000;

fn runnable(p: &Platform) -> TestTd {
    p.runnable_td(&TdOptions::default()).unwrap()
}

fn state(p: &Platform, td: &TestTd, gpa: Gpa, level: PageLevel) -> SeptState {
    let (_, ls) = p.module.mem_sept_rd(td.tdr, gpa, level).unwrap();
    ls.state().unwrap()
}

fn err(r: Result<impl core::fmt::Debug, SeamError>) -> SeamError {
    r.expect_err("expected an error")
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
    let img: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i.wrapping_mul(37); 4096]).collect();
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
    assert_eq!(mrtd, expected_mrtd(&pages));
    // Order matters.
    let mut swapped = pages.clone();
    swapped.swap(0, 1);
    assert_ne!(mrtd, expected_mrtd(&swapped));
}

#[test]
fn guest_touch_faults_then_runs_after_aug_and_accept() {
    let p = Platform::new();
    let td = runnable(&p);
    let v = td.vcpus[0].tdvpr;
    let gpa = Gpa(8 * G);
    p.module.set_workload(
        v,
        Workload {
            steps: vec![
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
        },
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
                assert_eq!(r.rdx >> 32, 0);
                let page = p.alloc_page().unwrap();
                p.aug(&td, Gpa(r.r8), PageLevel::L4K, page).unwrap();
            }
            exit::TDCALL if r.r11 == exit::TDVMCALL_IO => {
                assert_eq!(r.r14, exit::SERIAL_PORT);
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
