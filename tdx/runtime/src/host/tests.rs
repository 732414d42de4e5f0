//! Host tests over the software TDX module with thread runners: many TDs at once through
//! create, build, run, stop and destroy; BUSY and error injection; exhaustion; refusals.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use std::println;

use sha2::{Digest, Sha384};

use super::testing::{
    EmulatedHost, ThreadTopology, emulated_host_parts, small_config, step_until,
    synthetic_tdvf_image, upload_image,
};
use super::*;
use crate::pool::PoolStats;
use tdx_abi::Leaf;
use tdx_abi::software::GuestProgram;
use tdx_abi::td_params::attributes::SEPT_VE_DISABLE;
use tdx_abi::{Gpa, PageLevel, TdxStatus};
use tdx_emu::Injection;
use tdx_emu::workload::{Access, Order, Step, Workload};

const MIB: u64 = 1 << 20;

fn host() -> EmulatedHost {
    emulated_host_parts(small_config(), ThreadTopology::default())
}

fn spec(name: &str, image: &str, workload: Option<Workload>) -> TdSpec {
    TdSpec {
        name: String::from(name),
        image: String::from(image),
        vcpus: 2,
        memory_mib: 64,
        attributes: SEPT_VE_DISABLE,
        huge_pages: true,
        workload: workload.map(GuestProgram::new),
        linux: None,
        disk: None,
    }
}

/// Touch, accept at 2 MiB and 4 KiB, convert part of a 2 MiB page to shared and back,
/// accept it again, print.
fn workload(n: usize) -> Workload {
    let touch = |gpa: u64, len: u64| Step::Touch {
        gpa: Gpa(gpa),
        len,
        access: Access::Write,
        order: Order::Random { seed: n as u64 },
    };
    Workload {
        steps: vec![
            Step::Accept {
                gpa: Gpa(16 * MIB),
                len: 4 * MIB,
                level: PageLevel::L2M,
            },
            Step::Accept {
                gpa: Gpa(24 * MIB),
                len: 64 << 10,
                level: PageLevel::L4K,
            },
            touch(16 * MIB, 4 * MIB),
            touch(24 * MIB, 64 << 10),
            Step::Convert {
                gpa: Gpa(17 * MIB),
                len: 256 << 10,
                to_shared: true,
            },
            Step::Convert {
                gpa: Gpa(17 * MIB),
                len: 256 << 10,
                to_shared: false,
            },
            Step::Accept {
                gpa: Gpa(17 * MIB),
                len: 256 << 10,
                level: PageLevel::L4K,
            },
            touch(17 * MIB, 256 << 10),
            Step::Print {
                line: alloc::format!("hello from td {n}"),
            },
        ],
    }
}

fn state(h: &Host, id: TdId) -> Option<TdState> {
    h.td(id).ok().map(|t| t.state)
}

fn wait_state(h: &mut Host, id: TdId, want: TdState) {
    let ok = step_until(h, 20_000, |h| state(h, id) == Some(want));
    assert!(ok, "TD {id:?} did not reach {want}: {:?}", h.td(id));
}

fn console_text(h: &Host, id: TdId) -> String {
    let c = h.console(id, 0, 1 << 20).unwrap();
    String::from_utf8_lossy(&c.data).into_owned()
}

fn destroy_all(h: &mut Host) {
    let now = h.now_ms();
    let ids: Vec<TdId> = h.tds().iter().map(|t| t.id).collect();
    for id in &ids {
        h.destroy_td(*id, now).unwrap();
    }
    assert!(
        step_until(h, 20_000, |h| h.tds().is_empty()),
        "{:?}",
        h.tds()
    );
}

fn assert_pool_whole(h: &Host, before: &PoolStats, e: &EmulatedHost) {
    assert_eq!(h.pool().stats(), *before, "every page returned to the pool");
    assert_eq!(h.metrics().leaked_pages, 0);
    e.module.check_invariants().unwrap();
}

#[test]
fn bring_up_reports_the_platform() {
    let e = host();
    let info = e.host.info();
    assert_eq!(info.module_kind, "emulated");
    // No guest CPU is attached in host tests: only declared workloads run.
    assert_eq!(info.guest_engine, "none");
    assert!(info.module_version.starts_with("emulated 1.5"));
    assert_eq!(info.hkids_total, 15);
    assert_eq!(info.hkids_free, 15);
    assert_eq!(info.cpus, 4);
    assert_eq!(info.runners, 3);
    assert_eq!(info.memory_total, 512 * MIB);
    // PAMT for the 1 GiB TDMR and two scratch pages are in use.
    let pamt = e.host.pool().stats().used_by(MemoryUse::Pamt) * 4096;
    assert_eq!(pamt, bringup::pamt_bytes(1 << 30));
    assert_eq!(info.memory_free, 512 * MIB - pamt - 2 * 4096);
    assert_eq!(info.tds_by_state.len(), TdState::ALL.len());
    assert_eq!(e.module.sys_state(), tdx_emu::SysState::Ready);
    let m = e.host.metrics();
    assert!(
        m.seamcalls
            .iter()
            .any(|(l, c, n)| *l == "TDH.SYS.LP.INIT" && *c == "success" && *n == 4)
    );
    assert_eq!(e.host.events_since(0, 10).len(), 1);
}

/// A minimal x86-64 bzImage with an EFI stub that takes 64 bytes of command line.
fn bzimage(len: usize) -> Vec<u8> {
    crate::linux::synthetic_bzimage(len, 64)
}

#[test]
fn kernels_and_initramfs_are_recognised_and_checked_at_create() {
    let mut e = host();
    let h = &mut e.host;
    upload_image(h, "fw", &synthetic_tdvf_image()).unwrap();
    let kernel = upload_image(h, "vmlinuz", &bzimage(0x20000)).unwrap();
    assert_eq!(kernel.kind, ImageKind::Kernel);
    assert!(kernel.sections.is_empty() && kernel.expected_mrtd.is_none());
    let mut gz = vec![0x1F, 0x8B, 8, 0];
    gz.resize(4096, 0);
    assert_eq!(
        upload_image(h, "initrd", &gz).unwrap().kind,
        ImageKind::Initrd
    );
    // A boot header this host cannot boot says why; random bytes are not an image.
    let mut old = bzimage(0x20000);
    old[0x206] = 0x0A;
    assert!(matches!(
        upload_image(h, "old", &old),
        Err(HostError::InvalidKernel(
            crate::linux::KernelError::OldProtocol(0x020A)
        ))
    ));
    assert!(matches!(
        upload_image(h, "noise", &[0x42; 8192]),
        Err(HostError::InvalidImage(_))
    ));
    let linux = |kernel: &str, initrd: Option<&str>, cmdline: &str| {
        let mut s = spec("lx", "fw", None);
        s.linux = Some(LinuxBoot {
            kernel: String::from(kernel),
            initrd: initrd.map(String::from),
            cmdline: String::from(cmdline),
        });
        s
    };
    let field = |r: Result<TdInfo, HostError>| match r {
        Err(HostError::InvalidSpec { field, .. }) => field,
        other => panic!("expected an invalid spec, got {other:?}"),
    };
    assert_eq!(field(h.create_td(linux("fw", None, ""), 0)), "kernel");
    assert_eq!(
        field(h.create_td(linux("vmlinuz", Some("vmlinuz"), ""), 0)),
        "initrd"
    );
    assert_eq!(
        field(h.create_td(linux("vmlinuz", None, &"x".repeat(65)), 0)),
        "cmdline"
    );
    assert_eq!(
        field(h.create_td(linux("vmlinuz", None, "a\nb"), 0)),
        "cmdline"
    );
    let mut as_firmware = spec("k", "vmlinuz", None);
    as_firmware.linux = None;
    assert_eq!(field(h.create_td(as_firmware, 0)), "image");
    let id = h
        .create_td(linux("vmlinuz", Some("initrd"), "console=ttyS0"), 0)
        .unwrap()
        .id;
    assert_eq!(h.image("vmlinuz").unwrap().in_use_by, 1);
    assert_eq!(h.image("initrd").unwrap().in_use_by, 1);
    assert!(matches!(
        h.delete_image("vmlinuz"),
        Err(HostError::ImageInUse)
    ));
    let _ = id;
    destroy_all(h);
    assert_eq!(h.image("vmlinuz").unwrap().in_use_by, 0);
}

#[test]
fn disk_images_are_recognised_copied_per_td_and_checked_at_create() {
    let mut e = host();
    let h = &mut e.host;
    upload_image(h, "fw", &synthetic_tdvf_image()).unwrap();
    // An ext2 superblock's magic, and an MBR boot signature: both disks.
    let mut ext2 = vec![0u8; 8192];
    ext2[1080..1082].copy_from_slice(&[0x53, 0xEF]);
    assert_eq!(
        upload_image(h, "root", &ext2).unwrap().kind,
        ImageKind::Disk
    );
    let mut mbr = vec![0u8; 4096];
    mbr[510..512].copy_from_slice(&[0x55, 0xAA]);
    assert_eq!(upload_image(h, "mbr", &mbr).unwrap().kind, ImageKind::Disk);
    // Not whole sectors, or no partition table or file system: not an image at all.
    let mut ragged = ext2.clone();
    ragged.push(0);
    assert!(matches!(
        upload_image(h, "ragged", &ragged),
        Err(HostError::InvalidImage(_))
    ));
    let with_disk = |disk: &str| {
        let mut s = spec("d", "fw", None);
        s.disk = Some(String::from(disk));
        s
    };
    assert!(matches!(
        h.create_td(with_disk("fw"), 0),
        Err(HostError::InvalidSpec { field: "disk", .. })
    ));
    assert!(matches!(
        h.create_td(with_disk("missing"), 0),
        Err(HostError::ImageNotFound)
    ));
    let disk_pages = |h: &Host| h.pool().stats().used_by(MemoryUse::TdDisk);
    assert_eq!(disk_pages(h), 0, "refused creates copy nothing");
    h.create_td(with_disk("root"), 0).unwrap();
    assert_eq!(disk_pages(h), 2, "the TD's own copy of the 8 KiB disk");
    destroy_all(h);
    assert_eq!(disk_pages(h), 0, "given back with the TD");
}

#[test]
fn image_upload_validates_and_accounts() {
    let mut e = host();
    let h = &mut e.host;
    let before = h.pool().stats();
    let img = synthetic_tdvf_image();
    let info = upload_image(h, "fw", &img).unwrap();
    assert_eq!(info.size, img.len() as u64);
    assert_eq!(info.sha384.as_slice(), Sha384::digest(&img).as_slice());
    let kinds: Vec<&str> = info.sections.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["BFV", "CFV", "TempMem", "TD_HOB"]);
    assert!(info.sections[0].extend && !info.sections[1].extend);
    let md = crate::tdvf::TdvfMetadata::parse(&img).unwrap();
    let layout = crate::tdvf::TdMemoryLayout::new(&md, 32).unwrap();
    assert_eq!(
        info.expected_mrtd,
        Some(crate::tdvf::expected_mrtd(&img, &layout).unwrap())
    );
    assert_eq!(info.kind, ImageKind::Firmware);
    assert_eq!(
        h.pool().stats().used_by(MemoryUse::ImageStorage),
        img.len() as u64 / 4096
    );
    assert_eq!(h.images(), vec![info.clone()]);
    assert!(matches!(
        upload_image(h, "fw", &img),
        Err(HostError::NameTaken)
    ));
    assert!(matches!(
        h.begin_image_upload("big", 65 * MIB),
        Err(HostError::ImageTooLarge)
    ));
    assert!(matches!(
        h.begin_image_upload("bad/name", 10),
        Err(HostError::InvalidSpec { field: "name", .. })
    ));
    // Too many bytes, too few bytes.
    let id = h.begin_image_upload("short", 10).unwrap();
    assert!(matches!(
        h.write_image_chunk(id, &[0; 11]),
        Err(HostError::UploadSizeMismatch)
    ));
    h.write_image_chunk(id, &[0; 5]).unwrap();
    assert!(matches!(
        h.finish_image_upload(id),
        Err(HostError::UploadSizeMismatch)
    ));
    assert!(matches!(
        h.write_image_chunk(id, &[0]),
        Err(HostError::UploadNotFound)
    ));
    // Not a TDVF image.
    let mut broken = img.clone();
    let n = broken.len();
    broken[n - 40] ^= 0xFF; // footer GUID
    assert!(matches!(
        upload_image(h, "broken", &broken),
        Err(HostError::InvalidImage(_))
    ));
    let id = h.begin_image_upload("aborted", 5000).unwrap();
    h.write_image_chunk(id, &[1; 100]).unwrap();
    h.abort_image_upload(id);
    h.delete_image("fw").unwrap();
    assert!(matches!(h.image("fw"), Err(HostError::ImageNotFound)));
    assert_eq!(h.pool().stats(), before);
}

#[test]
fn many_tds_run_a_workload_and_return_every_page() {
    let mut e = host();
    let img = synthetic_tdvf_image();
    let expected = upload_image(&mut e.host, "fw", &img)
        .unwrap()
        .expected_mrtd
        .unwrap();
    let before = e.host.pool().stats();
    let hkids = e.host.free_hkids();
    let h = &mut e.host;
    let now = h.now_ms();
    let ids: Vec<TdId> = (0..4)
        .map(|i| {
            h.create_td(spec(&alloc::format!("td{i}"), "fw", Some(workload(i))), now)
                .unwrap()
                .id
        })
        .collect();
    assert_eq!(h.free_hkids(), hkids - 4);
    assert!(matches!(h.delete_image("fw"), Err(HostError::ImageInUse)));
    for id in &ids {
        wait_state(h, *id, TdState::Runnable);
        let m = h.measurement(*id).unwrap();
        assert!(m.finalized);
        assert_eq!(m.mrtd, expected, "module MRTD equals the offline MRTD");
        assert_eq!(h.start_td(*id, h.now_ms()).unwrap(), Transition::Started);
        assert_eq!(
            h.start_td(*id, h.now_ms()).unwrap(),
            Transition::AlreadyDone
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let want = alloc::format!("hello from td {i}\n");
        let ok = step_until(h, 20_000, |h| console_text(h, *id) == want);
        assert!(
            ok,
            "console of {id:?}: {:?} / {:?}",
            console_text(h, *id),
            h.td(*id)
        );
    }
    for id in &ids {
        let t = h.td(*id).unwrap();
        assert_eq!(t.state, TdState::Running, "{t:?}");
        assert!(t.mapped.pages_2m >= 1, "{t:?}");
        assert!(
            t.counters.conversions >= 2 && t.counters.demotions >= 1,
            "{t:?}"
        );
        // The conversion back to private shrank the shared mappings: the vCPUs' runners
        // flushed their guest translations before entering again.
        assert!(e.platform.translation_flushes() > 0);
        assert_eq!(t.counters.console_bytes, 16);
        assert!(t.counters.faults > 0 && t.counters.exits > 0);
        // Graceful stop: the finished workload halts, so the guest honours it.
        let mode = StopMode {
            force: false,
            timeout_ms: 10_000,
        };
        assert_eq!(
            h.stop_td(*id, mode, h.now_ms()).unwrap(),
            Transition::Started
        );
    }
    for id in &ids {
        wait_state(h, *id, TdState::Stopped);
        assert_eq!(
            h.stop_td(
                *id,
                StopMode {
                    force: true,
                    timeout_ms: 0
                },
                h.now_ms()
            )
            .unwrap(),
            Transition::AlreadyDone
        );
    }
    destroy_all(h);
    assert_eq!(h.free_hkids(), hkids);
    let ev = h.events_since(0, 1000);
    assert!(ev.iter().any(|e| matches!(
        e.kind,
        EventKind::TdState {
            to: TdState::Destroyed,
            ..
        }
    )));
    assert_pool_whole(&e.host, &before, &e);
}

#[test]
fn real_ovmf_image_builds_with_the_expected_mrtd() {
    let path = "/usr/share/ovmf/OVMF.fd";
    let img = std::fs::read(path).unwrap_or_else(|e| {
        panic!("cannot read {path}: {e}; apt-get install -y --no-install-recommends ovmf")
    });
    let mut e = host();
    let info = upload_image(&mut e.host, "ovmf", &img).unwrap();
    let before = e.host.pool().stats();
    let h = &mut e.host;
    let mut s = spec("ovmf-td", "ovmf", None);
    s.memory_mib = images::minimal_memory_mib(&crate::tdvf::TdvfMetadata::parse(&img).unwrap());
    s.vcpus = 1;
    let id = h.create_td(s, h.now_ms()).unwrap().id;
    wait_state(h, id, TdState::Runnable);
    let m = h.measurement(id).unwrap();
    let hex: String = m.mrtd.iter().map(|b| alloc::format!("{b:02x}")).collect();
    println!("OVMF MRTD {hex}");
    assert_eq!(Some(m.mrtd), info.expected_mrtd);
    let sha: String = Sha384::digest(&img)
        .iter()
        .map(|b| alloc::format!("{b:02x}"))
        .collect();
    if sha.starts_with("fa0dd56f4e3156e0") {
        assert!(
            hex.starts_with("4c7206f0f483c524"),
            "Debian 12 OVMF known answer"
        );
    }
    // An idle guest (no workload) runs and stops gracefully.
    h.start_td(id, h.now_ms()).unwrap();
    step_until(h, 30, |_| false);
    let mode = StopMode {
        force: false,
        timeout_ms: 10_000,
    };
    h.stop_td(id, mode, h.now_ms()).unwrap();
    wait_state(h, id, TdState::Stopped);
    destroy_all(h);
    assert_pool_whole(&e.host, &before, &e);
}

#[test]
fn busy_injection_everywhere_is_absorbed() {
    let mut e = host();
    upload_image(&mut e.host, "fw", &synthetic_tdvf_image()).unwrap();
    let before = e.host.pool().stats();
    for (i, leaf) in [
        Leaf::MemPageAug,
        Leaf::MemSeptAdd,
        Leaf::MemPageAdd,
        Leaf::MrExtend,
        Leaf::VpEnter,
    ]
    .into_iter()
    .enumerate()
    {
        e.module.inject(
            leaf,
            Injection::BusyProbability {
                p: 0.05,
                seed: 7 + i as u64,
                operand: tdx_abi::OperandId::SEPT_ENTRY,
            },
        );
    }
    let h = &mut e.host;
    let ids: Vec<TdId> = (0..3)
        .map(|i| {
            h.create_td(
                spec(&alloc::format!("b{i}"), "fw", Some(workload(i))),
                h.now_ms(),
            )
            .unwrap()
            .id
        })
        .collect();
    for id in &ids {
        wait_state(h, *id, TdState::Runnable);
        h.start_td(*id, h.now_ms()).unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let want = alloc::format!("hello from td {i}\n");
        assert!(
            step_until(h, 30_000, |h| console_text(h, *id) == want),
            "{:?}",
            h.td(*id)
        );
    }
    let busy: u64 = ids
        .iter()
        .map(|id| h.td(*id).unwrap().counters.busy_retries)
        .sum();
    assert!(busy > 0, "BUSY was injected and retried");
    assert!(
        h.metrics()
            .seamcalls
            .iter()
            .any(|(_, c, n)| *c == "busy" && *n > 0)
    );
    destroy_all(&mut e.host);
    for l in [
        Leaf::MemPageAug,
        Leaf::MemSeptAdd,
        Leaf::MemPageAdd,
        Leaf::MrExtend,
        Leaf::VpEnter,
    ] {
        e.module.clear_injection(l);
    }
    assert_pool_whole(&e.host, &before, &e);
}

#[test]
fn an_injected_aug_error_bugs_only_that_td() {
    let mut e = host();
    upload_image(&mut e.host, "fw", &synthetic_tdvf_image()).unwrap();
    let before = e.host.pool().stats();
    let h = &mut e.host;
    let a = h
        .create_td(spec("a", "fw", Some(workload(0))), h.now_ms())
        .unwrap()
        .id;
    let b = h
        .create_td(spec("b", "fw", Some(workload(1))), h.now_ms())
        .unwrap()
        .id;
    wait_state(h, a, TdState::Runnable);
    wait_state(h, b, TdState::Runnable);
    assert_eq!(h.td(a).unwrap().engine, GuestEngine::DeclaredWorkload);
    // The 2nd AUG after installation fails: only TD a runs at that point.
    e.module.inject(
        Leaf::MemPageAug,
        Injection::StatusOnNthCall {
            n: 2,
            status: TdxStatus::EPT_WALK_FAILED,
        },
    );
    let h = &mut e.host;
    h.start_td(a, h.now_ms()).unwrap();
    wait_state(h, a, TdState::Bugged);
    let t = h.td(a).unwrap();
    let reason = t.reason.unwrap();
    assert!(reason.contains("TDH.MEM.PAGE.AUG"), "{reason}");
    assert!(matches!(
        h.start_td(a, h.now_ms()),
        Err(HostError::TdBugged(_))
    ));
    assert!(
        h.events_since(0, 100)
            .iter()
            .any(|e| matches!(e.kind, EventKind::TdBugged { id, .. } if id == a))
    );
    h.start_td(b, h.now_ms()).unwrap();
    assert!(step_until(h, 20_000, |h| console_text(h, b) == "hello from td 1\n"));
    assert_eq!(state(h, b), Some(TdState::Running));
    destroy_all(h);
    e.module.clear_injection(Leaf::MemPageAug);
    // The failed AUG never reached the module: RDMD shows the page free, so it comes back.
    assert_pool_whole(&e.host, &before, &e);
}

#[test]
fn guest_outcomes_map_to_states() {
    let mut e = host();
    upload_image(&mut e.host, "fw", &synthetic_tdvf_image()).unwrap();
    let before = e.host.pool().stats();
    let h = &mut e.host;
    let w = |steps: Vec<Step>| Some(Workload { steps });
    let fatal = h
        .create_td(
            spec(
                "fatal",
                "fw",
                w(vec![Step::ReportFatalError { code: 0x42 }]),
            ),
            0,
        )
        .unwrap()
        .id;
    let down = h
        .create_td(spec("down", "fw", w(vec![Step::Shutdown])), 0)
        .unwrap()
        .id;
    let pending = h
        .create_td(
            spec(
                "pending",
                "fw",
                w(vec![Step::Touch {
                    gpa: Gpa(40 * MIB),
                    len: 4096,
                    access: Access::Read,
                    order: Order::Sequential,
                }]),
            ),
            0,
        )
        .unwrap()
        .id;
    for id in [fatal, down, pending] {
        wait_state(h, id, TdState::Runnable);
        h.start_td(id, h.now_ms()).unwrap();
    }
    wait_state(h, fatal, TdState::Failed);
    assert!(h.td(fatal).unwrap().reason.unwrap().contains("0x42"));
    wait_state(h, down, TdState::Stopped);
    wait_state(h, pending, TdState::Failed);
    assert!(
        h.td(pending)
            .unwrap()
            .reason
            .unwrap()
            .contains("before accepting")
    );
    destroy_all(h);
    assert_pool_whole(&e.host, &before, &e);
}

#[test]
fn lifecycle_refusals_and_forced_stops() {
    let mut e = host();
    upload_image(&mut e.host, "fw", &synthetic_tdvf_image()).unwrap();
    let before = e.host.pool().stats();
    let h = &mut e.host;
    let id = h.create_td(spec("t", "fw", None), 0).unwrap().id;
    assert_eq!(state(h, id), Some(TdState::Building));
    assert!(matches!(
        h.start_td(id, 0),
        Err(HostError::InvalidTransition {
            from: TdState::Building,
            ..
        })
    ));
    assert!(matches!(
        h.stop_td(
            id,
            StopMode {
                force: true,
                timeout_ms: 0
            },
            0
        ),
        Err(HostError::InvalidTransition {
            from: TdState::Building,
            ..
        })
    ));
    assert!(matches!(
        h.create_td(spec("t", "fw", None), 0),
        Err(HostError::NameTaken)
    ));
    assert!(matches!(
        h.create_td(spec("u", "nope", None), 0),
        Err(HostError::ImageNotFound)
    ));
    let mut bad = spec("u", "fw", None);
    bad.vcpus = 0;
    assert!(matches!(
        h.create_td(bad, 0),
        Err(HostError::InvalidSpec { field: "vcpus", .. })
    ));
    let mut bad = spec("u", "fw", None);
    bad.attributes = 1 << 5;
    assert!(matches!(
        h.create_td(bad, 0),
        Err(HostError::InvalidSpec {
            field: "attributes",
            ..
        })
    ));
    let mut bad = spec("u", "fw", None);
    bad.memory_mib = 8;
    assert!(matches!(
        h.create_td(bad, 0),
        Err(HostError::InvalidSpec {
            field: "memory_mib",
            ..
        })
    ));
    wait_state(h, id, TdState::Runnable);
    h.start_td(id, h.now_ms()).unwrap();
    // A busy guest (many prints) ignores the graceful request until the timeout forces it.
    let busy = h
        .create_td(
            spec(
                "busy",
                "fw",
                Some(Workload {
                    steps: (0..100_000)
                        .map(|_| Step::Print {
                            line: String::from("x"),
                        })
                        .collect(),
                }),
            ),
            0,
        )
        .unwrap()
        .id;
    wait_state(h, busy, TdState::Runnable);
    h.start_td(busy, h.now_ms()).unwrap();
    assert!(step_until(h, 10_000, |h| h
        .td(busy)
        .unwrap()
        .counters
        .console_bytes
        > 10));
    h.stop_td(
        busy,
        StopMode {
            force: false,
            timeout_ms: 50,
        },
        h.now_ms(),
    )
    .unwrap();
    assert_eq!(state(h, busy), Some(TdState::Stopping));
    wait_state(h, busy, TdState::Stopped);
    // Forced stop of an idle TD, then destroy while running is forced too.
    h.stop_td(
        id,
        StopMode {
            force: true,
            timeout_ms: 0,
        },
        h.now_ms(),
    )
    .unwrap();
    wait_state(h, id, TdState::Stopped);
    let running = h.create_td(spec("r", "fw", None), 0).unwrap().id;
    wait_state(h, running, TdState::Runnable);
    h.start_td(running, h.now_ms()).unwrap();
    assert_eq!(
        h.destroy_td(running, h.now_ms()).unwrap(),
        Transition::Started
    );
    assert_eq!(
        h.destroy_td(running, h.now_ms()).unwrap(),
        Transition::AlreadyDone
    );
    assert!(step_until(h, 20_000, |h| h.td(running).is_err()));
    assert!(matches!(h.td(running), Err(HostError::TdNotFound(_))));
    // Destroy while building.
    let building = h.create_td(spec("b", "fw", None), 0).unwrap().id;
    h.destroy_td(building, h.now_ms()).unwrap();
    assert!(step_until(h, 20_000, |h| h.td(building).is_err()));
    destroy_all(h);
    assert_pool_whole(&e.host, &before, &e);
}

#[test]
fn a_create_that_fails_at_any_seamcall_gives_everything_back() {
    let mut e = host();
    upload_image(&mut e.host, "fw", &synthetic_tdvf_image()).unwrap();
    let before = e.host.pool().stats();
    let hkids = e.host.free_hkids();
    // Before TDH.MNG.CREATE succeeds the reservation is dropped; after it the TD is torn down.
    // (leaf, which call fails): VP.CREATE of the second vCPU leaves one vCPU created.
    for (leaf, n) in [
        (Leaf::MngCreate, 1),
        (Leaf::MngKeyConfig, 1),
        (Leaf::MngAddCx, 2),
        (Leaf::MngInit, 1),
        (Leaf::VpCreate, 2),
        (Leaf::VpAddCx, 1),
        (Leaf::VpInit, 2),
    ] {
        e.module.inject(
            leaf,
            Injection::StatusOnNthCall {
                n,
                status: TdxStatus::OPERAND_INVALID,
            },
        );
        let h = &mut e.host;
        let got = h.create_td(spec("f", "fw", None), h.now_ms());
        e.module.clear_injection(leaf);
        assert!(
            matches!(&got, Err(HostError::Module(err)) if err.leaf == leaf),
            "{leaf:?}: {:?}",
            got.map(|t| t.id)
        );
        let h = &e.host;
        assert!(h.tds().is_empty(), "{leaf:?}");
        assert_eq!(h.free_hkids(), hkids, "{leaf:?}: the KeyID is back");
        assert_pool_whole(h, &before, &e);
    }
    // The host is whole: the next create succeeds.
    let h = &mut e.host;
    let id = h.create_td(spec("ok", "fw", None), h.now_ms()).unwrap().id;
    wait_state(h, id, TdState::Runnable);
    destroy_all(h);
    assert_eq!(e.host.free_hkids(), hkids);
    assert_pool_whole(&e.host, &before, &e);
}

#[test]
fn exhaustion_is_a_clear_error_that_leaks_nothing() {
    let mut cfg = small_config();
    cfg.memory.num_hkids = 6;
    let mut e = emulated_host_parts(cfg, ThreadTopology::default());
    upload_image(&mut e.host, "fw", &synthetic_tdvf_image()).unwrap();
    let h = &mut e.host;
    let before = h.pool().stats();
    // Pool: a TD bigger than the pool.
    let mut huge = spec("huge", "fw", None);
    huge.memory_mib = 1024;
    assert!(matches!(h.create_td(huge, 0), Err(HostError::OutOfMemory)));
    assert_eq!(h.pool().stats(), before);
    assert_eq!(h.free_hkids(), 5);
    // KeyIDs: 5 small TDs, then none left.
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut s = spec(&alloc::format!("k{i}"), "fw", None);
        s.memory_mib = 32;
        s.vcpus = 1;
        ids.push(h.create_td(s, 0).unwrap().id);
    }
    let mid = h.pool().stats();
    let mut s = spec("k5", "fw", None);
    s.memory_mib = 32;
    let err = h.create_td(s, 0).unwrap_err();
    assert!(matches!(err, HostError::OutOfHkids), "{err}");
    assert!(alloc::format!("{err}").contains("HKID"));
    assert_eq!(h.pool().stats(), mid);
    assert_eq!(h.info().tds_by_state.iter().map(|(_, n)| n).sum::<u32>(), 5);
    destroy_all(h);
    assert_eq!(h.free_hkids(), 5);
    assert_pool_whole(&e.host, &before, &e);
}

#[test]
fn slow_teardown_also_returns_everything() {
    let mut cfg = small_config();
    cfg.slow_teardown = true;
    let mut e = emulated_host_parts(
        cfg,
        ThreadTopology {
            cpus: 3,
            packages: 2,
        },
    );
    upload_image(&mut e.host, "fw", &synthetic_tdvf_image()).unwrap();
    let before = e.host.pool().stats();
    let h = &mut e.host;
    let id = h
        .create_td(spec("s", "fw", Some(workload(0))), 0)
        .unwrap()
        .id;
    wait_state(h, id, TdState::Runnable);
    h.start_td(id, h.now_ms()).unwrap();
    assert!(step_until(h, 20_000, |h| console_text(h, id) == "hello from td 0\n"));
    destroy_all(h);
    let m = h.metrics();
    assert!(
        m.seamcalls
            .iter()
            .any(|(l, _, n)| *l == "TDH.MEM.PAGE.REMOVE" && *n > 0)
    );
    assert!(
        m.seamcalls
            .iter()
            .any(|(l, _, n)| *l == "TDH.PHYMEM.CACHE.WB" && *n == 2)
    );
    assert_pool_whole(&e.host, &before, &e);
}

fn seamcall_total(h: &Host, leaf: Option<&str>) -> u64 {
    h.metrics()
        .seamcalls
        .iter()
        .filter(|(l, _, _)| leaf.is_none_or(|want| *l == want))
        .map(|(_, _, n)| n)
        .sum()
}

#[test]
fn teardown_reclaims_in_bounded_slices_across_steps() {
    const BUDGET: u64 = 512;
    const MAPPED_MIB: u64 = 32;
    let mut cfg = small_config();
    cfg.teardown_pages_per_step = BUDGET as u32;
    let mut e = emulated_host_parts(
        cfg,
        ThreadTopology {
            cpus: 2,
            packages: 1,
        },
    );
    upload_image(&mut e.host, "fw", &synthetic_tdvf_image()).unwrap();
    let before = e.host.pool().stats();
    let h = &mut e.host;
    let mut s = spec("big", "fw", None);
    s.memory_mib = MAPPED_MIB + 64;
    s.huge_pages = false;
    s.workload = Some(GuestProgram::new(Workload {
        steps: vec![
            Step::Accept {
                gpa: Gpa(64 * MIB),
                len: MAPPED_MIB * MIB,
                level: PageLevel::L4K,
            },
            Step::Print {
                line: String::from("x"),
            },
        ],
    }));
    let id = h.create_td(s, 0).unwrap().id;
    wait_state(h, id, TdState::Runnable);
    h.start_td(id, h.now_ms()).unwrap();
    assert!(step_until(h, 20_000, |h| console_text(h, id) == "x\n"));
    let mapped = h.td(id).unwrap().mapped;
    assert!(mapped.pages_4k >= MAPPED_MIB * 256, "{mapped:?}");
    let reclaims_before = seamcall_total(h, Some("TDH.PHYMEM.PAGE.RECLAIM"));
    h.destroy_td(id, h.now_ms()).unwrap();
    let mut working_steps = 0u64;
    let mut max_calls = 0u64;
    let deadline = h.now_ms() + 20_000;
    while h.td(id).is_ok() {
        assert!(h.now_ms() < deadline, "teardown did not finish");
        let now = state(h, id);
        assert!(
            matches!(
                now,
                Some(TdState::Running | TdState::Stopping | TdState::Stopped | TdState::Destroying)
            ),
            "{now:?}"
        );
        let calls = seamcall_total(h, None);
        let more = h.step(h.now_ms());
        let calls = seamcall_total(h, None) - calls;
        // A slice: at most BUDGET units of RECLAIM work, plus one S-EPT page per level and
        // the key release (VPFLUSHDONE, CACHE.WB, KEY.FREEID) or the TDR (RECLAIM, WBINVD).
        assert!(calls <= BUDGET + 8, "one step issued {calls} SEAMCALLs");
        max_calls = max_calls.max(calls);
        if calls > 0 {
            working_steps += 1;
        }
        if h.td(id).is_ok() {
            assert!(
                more,
                "step says no work remains while the TD is still there"
            );
        }
    }
    let reclaims = seamcall_total(h, Some("TDH.PHYMEM.PAGE.RECLAIM")) - reclaims_before;
    assert!(reclaims >= MAPPED_MIB * 256, "{reclaims} RECLAIMs");
    assert!(
        working_steps >= MAPPED_MIB * 256 / BUDGET,
        "{working_steps} steps for {reclaims} RECLAIMs"
    );
    println!(
        "teardown of {MAPPED_MIB} MiB at 4K: {working_steps} steps, {reclaims} RECLAIMs, \
         at most {max_calls} SEAMCALLs per step"
    );
    assert_pool_whole(&e.host, &before, &e);
}

#[test]
fn upload_validation_reads_the_stored_pages_not_a_copy() {
    use crate::tdvf::ImageSource;
    let path = "/usr/share/ovmf/OVMF.fd";
    let img = std::fs::read(path).unwrap_or_else(|e| {
        panic!("cannot read {path}: {e}; apt-get install -y --no-install-recommends ovmf")
    });
    let mut e = host();
    let h = &mut e.host;
    let id = h.begin_image_upload("ovmf", img.len() as u64).unwrap();
    for chunk in img.chunks(64 << 10) {
        h.write_image_chunk(id, chunk).unwrap();
    }
    let upload = h.images.upload(id).unwrap();
    let pages = images::StoredPages::new(&*h.phys, &upload.pages, upload.size);
    assert_eq!(pages.len(), img.len());
    let src = super::testing::CountingSource::new(pages);
    let parts = upload.validate(&src).unwrap();
    let md = crate::tdvf::TdvfMetadata::parse(&img).unwrap();
    let Some((metadata, parts_mrtd)) = (match &parts.content {
        super::images::Content::Firmware {
            metadata,
            expected_mrtd,
        } => Some((metadata, *expected_mrtd)),
        _ => None,
    }) else {
        panic!("the synthetic image is firmware");
    };
    assert_eq!(*metadata, md);
    // What validation needs: the metadata (twice: parse, then the layout check of the MRTD
    // replay) and the raw data of MR.EXTENDed pages, read one page at a time.
    let measured: u64 = md
        .sections()
        .iter()
        .filter(|s| s.attributes.mr_extend())
        .map(|s| u64::from(s.raw_data_size))
        .sum();
    let unmeasured: u64 = md
        .sections()
        .iter()
        .filter(|s| !s.attributes.mr_extend())
        .map(|s| u64::from(s.raw_data_size))
        .sum();
    assert!(unmeasured > 0, "OVMF.fd has an unmeasured CFV");
    assert!(
        src.bytes() <= measured + 4096,
        "validation read {} bytes of a {}-byte image ({measured} measured)",
        src.bytes(),
        img.len()
    );
    assert!(src.bytes() < img.len() as u64, "never the whole file");
    assert!(src.largest_read() <= 64 << 10, "no whole-file read");
    println!(
        "OVMF.fd ({} B): validation read {} B in {} reads (largest {} B); measured raw data {measured} B, unmeasured {unmeasured} B",
        img.len(),
        src.bytes(),
        src.reads(),
        src.largest_read()
    );
    // The real upload path validates the same way and agrees.
    let info = h.finish_image_upload(id).unwrap();
    assert_eq!(info.expected_mrtd, Some(parts_mrtd));
}

fn runners_running(h: &Host) -> usize {
    h.runners().iter().filter(|r| r.is_running()).count()
}

#[test]
fn runners_park_without_tds_and_restart_for_the_next_one() {
    let mut e = host();
    upload_image(&mut e.host, "fw", &synthetic_tdvf_image()).unwrap();
    let before = e.host.pool().stats();
    let runners = e.host.runners().len();
    assert!(runners >= 2, "the default topology has several runner CPUs");
    assert_eq!(
        runners_running(&e.host),
        0,
        "no loop runs before the first TD"
    );
    assert_eq!(e.platform.live_runner_threads(), 0);

    for round in 0..2 {
        let h = &mut e.host;
        let id = h
            .create_td(spec("td", "fw", Some(workload(round))), h.now_ms())
            .unwrap()
            .id;
        // Both vCPUs are bound (round-robin over the runners): their loops run.
        let bound = h.runners().iter().filter(|r| r.bound_vcpus() > 0).count();
        assert_eq!(bound, 2);
        assert!(
            step_until(h, 20_000, |h| runners_running(h) >= bound),
            "round {round}: bound runners were (re)started"
        );
        wait_state(h, id, TdState::Runnable);
        h.start_td(id, h.now_ms()).unwrap();
        let want = alloc::format!("hello from td {round}\n");
        assert!(
            step_until(h, 20_000, |h| console_text(h, id) == want),
            "round {round}: the workload ran: {:?} / {:?}",
            console_text(h, id),
            h.td(id)
        );
        assert!(runners_running(h) >= bound);

        destroy_all(h);
        assert!(h.runners().iter().all(|r| r.bound_vcpus() == 0));
        // Every loop parks and its thread returns (the CPU is idle, not spinning).
        let parked = step_until(h, 5_000, |h| {
            runners_running(h) == 0 && e.platform.live_runner_threads() == 0
        });
        assert!(
            parked,
            "round {round}: runners still running: {} (threads {})",
            runners_running(h),
            e.platform.live_runner_threads()
        );
    }
    assert_pool_whole(&e.host, &before, &e);
}

// ---------------------------------------------------------------------------------------
// Bring-up steps
// ---------------------------------------------------------------------------------------

fn stages(steps: &[BringupStep]) -> Vec<(&'static str, &'static str)> {
    steps
        .iter()
        .map(|s| (s.step.as_str(), s.status.as_str()))
        .collect()
}

#[test]
fn bring_up_records_every_step() {
    let e = emulated_host_parts(
        small_config(),
        ThreadTopology {
            cpus: 4,
            packages: 2,
        },
    );
    let info = e.host.info();
    assert_eq!(
        stages(&info.bringup),
        vec![
            ("pool", "ok"),
            ("sys-init", "ok"),
            ("lp-init", "ok"),
            ("features", "ok"),
            ("sys-rd", "ok"),
            ("tdmr-config", "ok"),
            ("cache-wb", "skipped"),
            ("key-config", "ok"),
            ("tdmr-init", "ok"),
            ("runners", "ok"),
        ]
    );
    let detail = |name: &str| {
        info.bringup
            .iter()
            .find(|s| s.step.as_str() == name)
            .map(|s| s.detail.clone())
            .expect("step recorded")
    };
    assert_eq!(detail("lp-init"), "TDH.SYS.LP.INIT on 4 logical CPUs");
    assert_eq!(
        detail("key-config"),
        "TDH.SYS.KEY.CONFIG on 2 packages (logical CPUs 0, 1)"
    );
    assert!(
        detail("sys-rd").starts_with("emulated "),
        "{}",
        detail("sys-rd")
    );
    assert!(detail("tdmr-config").contains("global KeyID 16"));
    assert_eq!(e.host.bringup_steps(), &info.bringup[..]);
}

/// A software module over `module_cpus` logical CPUs and a pool at `module_base`, and a
/// thread platform of `topology`.
fn unbooted(
    module_cpus: u32,
    module_base: u64,
    topology: ThreadTopology,
) -> (
    Arc<tdx_emu::EmulatedModule>,
    HostModule,
    Arc<dyn PhysMemory>,
    Arc<dyn Platform>,
) {
    unbooted_with(
        module_cpus,
        module_base,
        topology,
        tdx_emu::EmuLimits::default(),
    )
}

/// [`unbooted`] with the module's `limits`.
fn unbooted_with(
    module_cpus: u32,
    module_base: u64,
    topology: ThreadTopology,
    limits: tdx_emu::EmuLimits,
) -> (
    Arc<tdx_emu::EmulatedModule>,
    HostModule,
    Arc<dyn PhysMemory>,
    Arc<dyn Platform>,
) {
    let memory = Arc::new(tdx_abi::phys::SparseMemory::new()) as Arc<dyn PhysMemory>;
    let mem = small_config().memory;
    let module = tdx_emu::EmulatedModule::new(
        tdx_emu::EmuConfig {
            phys_base: Hpa(module_base),
            phys_size: mem.pool_size,
            num_lps: module_cpus,
            num_packages: topology.packages,
            hkid_start: mem.hkid_start,
            num_hkids: mem.num_hkids,
            hkid_shift: 46,
            limits,
        },
        memory.clone(),
    )
    .unwrap();
    let hooks = HostModule::Software(module.hooks());
    let platform: Arc<dyn Platform> = super::testing::ThreadPlatform::new(topology);
    (module, hooks, memory, platform)
}

#[test]
fn a_failed_lp_init_names_the_cpu_and_skips_the_rest() {
    // The platform has 4 CPUs, the module only 2 logical processors.
    let (_m, module, phys, platform) = unbooted(
        2,
        small_config().memory.pool_base.0,
        ThreadTopology {
            cpus: 4,
            packages: 1,
        },
    );
    let mut log = BringupLog::new();
    log.ok(BringupStage::Module, "software module for the test");
    let err = Host::new_recorded(module, phys, platform, small_config(), &mut log)
        .err()
        .expect("bring-up fails");
    assert!(matches!(err, HostError::Module(_)), "{err}");
    let steps = log.steps();
    assert_eq!(
        stages(&steps[..4]),
        vec![
            ("module", "ok"),
            ("pool", "ok"),
            ("sys-init", "ok"),
            ("lp-init", "failed")
        ]
    );
    assert_eq!(
        steps[3].detail,
        "logical CPU 2 of 4: CPU 2 is not available"
    );
    let rest: Vec<&str> = steps[4..].iter().map(|s| s.step.as_str()).collect();
    assert_eq!(
        rest,
        vec![
            "features",
            "sys-rd",
            "tdmr-config",
            "cache-wb",
            "key-config",
            "tdmr-init",
            "runners"
        ]
    );
    assert!(
        steps[4..]
            .iter()
            .all(|s| s.status == StepStatus::Skipped && s.detail == NOT_REACHED)
    );
}

#[test]
fn a_pool_outside_the_cmrs_fails_tdmr_config() {
    // The module's convertible memory is elsewhere than the pool the host is given.
    let (_m, module, phys, platform) = unbooted(
        2,
        8 << 30,
        ThreadTopology {
            cpus: 2,
            packages: 1,
        },
    );
    let mut log = BringupLog::new();
    let err = Host::new_recorded(module, phys, platform, small_config(), &mut log)
        .err()
        .expect("bring-up fails");
    assert!(
        matches!(
            err,
            HostError::InvalidSpec {
                field: "td_memory",
                ..
            }
        ),
        "{err}"
    );
    let failed: Vec<&BringupStep> = log
        .steps()
        .iter()
        .filter(|s| s.status == StepStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].step, BringupStage::TdmrConfig);
    assert!(
        failed[0].detail.contains("outside the CMRs"),
        "{}",
        failed[0].detail
    );
}

#[test]
fn a_failed_key_config_names_the_package() {
    let (m, module, phys, platform) = unbooted(
        4,
        small_config().memory.pool_base.0,
        ThreadTopology {
            cpus: 4,
            packages: 2,
        },
    );
    m.inject(
        Leaf::SysKeyConfig,
        Injection::StatusOnNthCall {
            n: 2,
            status: TdxStatus::OPERAND_INVALID,
        },
    );
    let mut log = BringupLog::new();
    assert!(Host::new_recorded(module, phys, platform, small_config(), &mut log).is_err());
    let step = log
        .steps()
        .iter()
        .find(|s| s.step == BringupStage::KeyConfig)
        .expect("key-config recorded");
    assert_eq!(step.status, StepStatus::Failed);
    assert!(
        step.detail.starts_with(
            "package 1 (logical CPU 1) of 2: TDH.SYS.KEY.CONFIG failed: TDX_OPERAND_INVALID"
        ),
        "{}",
        step.detail
    );
}

/// A module without a feature the runtime needs (here TOPOLOGY_ENUM, which TDX module
/// 1.5.01 does not have, and with it neither TDH.VP.INIT version 1 nor MAX_VCPUS_PER_TD) is
/// named at the `features` step, before TDH.SYS.RD of the limits could fail on the field it
/// lacks.
#[test]
fn a_module_without_a_needed_feature_is_named_before_its_limits_are_read() {
    let (_m, module, phys, platform) = unbooted_with(
        4,
        small_config().memory.pool_base.0,
        ThreadTopology {
            cpus: 4,
            packages: 1,
        },
        tdx_emu::EmuLimits {
            tdx_features0: tdx_abi::metadata::sys::features0::NO_RBP_MOD,
            ..tdx_emu::EmuLimits::default()
        },
    );
    let mut log = BringupLog::new();
    assert!(Host::new_recorded(module, phys, platform, small_config(), &mut log).is_err());
    let status = |stage: BringupStage| {
        log.steps()
            .iter()
            .find(|s| s.step == stage)
            .map(|s| (s.status, s.detail.clone()))
    };
    let (features, detail) = status(BringupStage::Features).expect("features recorded");
    assert_eq!(features, StepStatus::Failed);
    assert!(detail.contains("TOPOLOGY_ENUM"), "{detail}");
    assert_eq!(
        status(BringupStage::SysRd).map(|s| s.0),
        Some(StepStatus::Skipped)
    );
}

/// TDH.VP.INIT associates a vCPU with the logical CPU that issues it, and TDH.VP.ENTER on
/// any other CPU fails with TDX_VCPU_ASSOCIATED (intel/tdx-module `tdh_vp_init.c`,
/// `associate_vcpu` in `src/common/helpers/helpers.c`; the software module enforces it): the
/// host initializes each vCPU on its runner's CPU, never on the main CPU, and the TD runs.
/// There, it also set up posted interrupts in the TD-VMCS as KVM's `tdx_vcpu_init` does:
/// the notification vector, the vCPU's descriptor, then the pin-based control.
#[test]
fn vcpus_are_initialized_on_their_runners_cpu() {
    let mut e = host();
    upload_image(&mut e.host, "fw", &synthetic_tdvf_image()).unwrap();
    let h = &mut e.host;
    let id = h
        .create_td(spec("td", "fw", Some(workload(1))), h.now_ms())
        .unwrap()
        .id;
    let vcpus: Vec<(Hpa, u32, u64)> = h.tds[&id]
        .shared
        .vcpus
        .vcpus
        .iter()
        .map(|v| {
            let descriptor = e.platform.physical_address_of(v.posted.address());
            (v.tdvpr, v.cpu, descriptor)
        })
        .collect();
    assert_eq!(vcpus.len(), 2);
    let read = |lp: u32, tdvpr: Hpa, field: u64| {
        let mut r = tdx_abi::seamcall::Regs::for_leaf(Leaf::VpRd, 0);
        r.rcx = tdvpr.0;
        r.rdx = field;
        e.module.lp(lp).unwrap().call(r).map(|r| r.r8)
    };
    use tdx_abi::metadata::vcpu as vf;
    for (tdvpr, cpu, descriptor) in vcpus {
        assert_ne!(cpu, 0, "vCPUs run on the application processors");
        let associated = read(0, tdvpr, tdx_emu::metadata::vcpu::ASSOCIATED_LP).unwrap();
        assert_eq!(associated, u64::from(cpu), "TDVPR {tdvpr:?}");
        // A real field read on the main CPU is refused: the vCPU is not associated there.
        let elsewhere = read(0, tdvpr, vf::POSTED_INTR_NV).unwrap_err().status;
        assert_eq!(elsewhere, TdxStatus::VCPU_ASSOCIATED);
        assert_eq!(
            read(cpu, tdvpr, vf::POSTED_INTR_NV).unwrap(),
            u64::from(posted::POSTED_INTERRUPT_VECTOR)
        );
        assert_eq!(
            read(cpu, tdvpr, vf::POSTED_INTR_DESC_ADDR).unwrap(),
            descriptor
        );
        assert_eq!(
            read(cpu, tdvpr, vf::PIN_BASED_CONTROLS).unwrap(),
            vf::PIN_BASED_POSTED_INTERRUPTS
        );
    }
    wait_state(h, id, TdState::Runnable);
    assert_eq!(h.start_td(id, h.now_ms()).unwrap(), Transition::Started);
    let want = "hello from td 1\n";
    let ok = step_until(h, 20_000, |h| console_text(h, id) == want);
    assert!(ok, "{:?} / {:?}", console_text(h, id), h.td(id));
    destroy_all(h);
}
