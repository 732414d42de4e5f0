//! TD runtime benchmark (`cargo bench -p tdx --bench td`, or `cargo xtask bench td`), over
//! the software TDX module with thread runners (`tdx_runtime::host::testing`):
//!
//! * `build_ms_per_mib`: create a TD from a firmware image until it is runnable (PAGE.ADD of
//!   every page, MR.EXTEND of the measured ones, TD HOB, MR.FINALIZE), per MiB of image
//!   PAGE.ADDed. The image is `/usr/share/ovmf/OVMF.fd` (or `TDVF_IMAGE`), else the small
//!   synthetic image.
//! * `faultin_4k_ms_per_gib` / `faultin_2m_ms_per_gib`: a guest accepts 1 GiB
//!   (`TD_BENCH_FAULT_MIB`, default 1024) at 4 KiB / 2 MiB; every accept faults into the host
//!   (EPT violation → S-EPT manager → PAGE.AUG) — time from start until the guest prints.
//! * `teardown_fast_vs_slow`: destroying a TD with 256 MiB mapped at 4 KiB
//!   (`TD_BENCH_TEARDOWN_MIB`), slow path (BLOCK/TRACK/REMOVE of every page while the key is
//!   live) time divided by fast path (KEY.FREEID first, then PAGE.RECLAIM) time.
//!
//! Each is the best of `TD_BENCH_REPEATS` (default 2) runs. The last line is exactly
//! `td: build_ms_per_mib=A faultin_4k_ms_per_gib=B faultin_2m_ms_per_gib=C teardown_fast_vs_slow=D`.

use std::time::Instant;

use tdx_abi::software::GuestProgram;
use tdx_abi::td_params::attributes::SEPT_VE_DISABLE;
use tdx_abi::{Gpa, Hpa, PageLevel};
use tdx_emu::workload::{Step, Workload};
use tdx_runtime::host::testing::{
    EmulatedHost, ThreadTopology, emulated_host_parts, small_config, step_until,
    synthetic_tdvf_image, upload_image,
};
use tdx_runtime::host::{Host, HostConfig, TdId, TdSpec};
use tdx_runtime::td::lifecycle::TdState;

const MIB: u64 = 1 << 20;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(pool_mib: u64, slow_teardown: bool) -> HostConfig {
    let mut c = small_config();
    c.memory.pool_base = Hpa(1 << 30);
    c.memory.pool_size = pool_mib.next_multiple_of(1024) * MIB;
    c.build_pages_per_step = 4096;
    c.slow_teardown = slow_teardown;
    c
}

fn spec(image: &str, memory_mib: u64, huge: bool, steps: Vec<Step>) -> TdSpec {
    TdSpec {
        name: "bench".into(),
        image: image.into(),
        vcpus: 1,
        memory_mib,
        attributes: SEPT_VE_DISABLE,
        huge_pages: huge,
        workload: Some(GuestProgram::new(Workload { steps })),
        linux: None,
        disk: None,
    }
}

fn wait(h: &mut Host, id: TdId, state: TdState) {
    assert!(
        step_until(h, 600_000, |h| h.td(id).is_ok_and(|t| t.state == state)),
        "TD did not reach {state}: {:?}",
        h.td(id)
    );
}

fn destroy(h: &mut Host, id: TdId) -> f64 {
    let start = Instant::now();
    h.destroy_td(id, h.now_ms()).expect("destroy");
    assert!(step_until(h, 600_000, |h| h.td(id).is_err()));
    start.elapsed().as_secs_f64() * 1e3
}

/// ms to build a TD from `image`, and the MiB PAGE.ADDed.
fn build_once(image: &[u8]) -> (f64, f64) {
    let mut e = emulated_host_parts(config(1024, false), ThreadTopology::default());
    let h = &mut e.host;
    upload_image(h, "fw", image).expect("upload");
    let md = tdx_runtime::tdvf::TdvfMetadata::parse(image).expect("TDVF image");
    let mib = md
        .sections()
        .iter()
        .filter(|s| s.is_page_added())
        .map(|s| s.memory_data_size)
        .sum::<u64>() as f64
        / MIB as f64;
    let memory = md
        .sections()
        .iter()
        .filter(|s| s.memory_address.0 < 0xFF00_0000)
        .map(|s| s.memory_end())
        .max()
        .unwrap_or(0)
        .div_ceil(MIB)
        .max(32);
    let start = Instant::now();
    let id = h
        .create_td(spec("fw", memory, false, vec![]), h.now_ms())
        .expect("create")
        .id;
    wait(h, id, TdState::Runnable);
    let ms = start.elapsed().as_secs_f64() * 1e3;
    destroy(h, id);
    (ms, mib)
}

/// A host with a running TD whose guest has accepted `mib` MiB at `level` (every page
/// faulted in); returns the host, the TD and the ms the fault-in took.
fn faulted_in(mib: u64, level: PageLevel, slow_teardown: bool) -> (EmulatedHost, TdId, f64) {
    let cfg = config(mib + 256, slow_teardown);
    let mut e = emulated_host_parts(
        cfg,
        ThreadTopology {
            cpus: 2,
            packages: 1,
        },
    );
    let h = &mut e.host;
    upload_image(h, "fw", &synthetic_tdvf_image()).expect("upload");
    let steps = vec![
        Step::Accept {
            gpa: Gpa(64 * MIB),
            len: mib * MIB,
            level,
        },
        Step::Print { line: "x".into() },
    ];
    let huge = level == PageLevel::L2M;
    let id = h
        .create_td(spec("fw", mib + 64, huge, steps), h.now_ms())
        .expect("create")
        .id;
    wait(h, id, TdState::Runnable);
    let start = Instant::now();
    h.start_td(id, h.now_ms()).expect("start");
    assert!(step_until(h, 600_000, |h| h
        .td(id)
        .is_ok_and(|t| t.counters.console_bytes == 2)));
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let t = h.td(id).expect("td");
    let mapped = t.mapped.pages_4k * 4096 + t.mapped.pages_2m * 2 * MIB;
    assert!(mapped >= mib * MIB, "everything faulted in: {t:?}");
    (e, id, ms)
}

/// ms for the guest to accept `mib` MiB at `level`.
fn faultin_once(mib: u64, level: PageLevel) -> f64 {
    let (mut e, id, ms) = faulted_in(mib, level, false);
    destroy(&mut e.host, id);
    ms
}

/// ms to destroy a TD with `mib` MiB mapped at 4 KiB.
fn teardown_once(mib: u64, slow: bool) -> f64 {
    let (mut e, id, _) = faulted_in(mib, PageLevel::L4K, slow);
    let before = e.host.metrics().leaked_pages;
    let ms = destroy(&mut e.host, id);
    assert_eq!(e.host.metrics().leaked_pages, before);
    ms
}

fn best(repeats: u64, mut f: impl FnMut() -> f64) -> f64 {
    (0..repeats.max(1))
        .map(|_| f())
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let repeats = env("TD_BENCH_REPEATS", 2);
    let fault_mib = env("TD_BENCH_FAULT_MIB", 1024);
    let teardown_mib = env("TD_BENCH_TEARDOWN_MIB", 256);
    let path = std::env::var("TDVF_IMAGE").unwrap_or_else(|_| "/usr/share/ovmf/OVMF.fd".into());
    let (image, which) = match std::fs::read(&path) {
        Ok(img) => (img, path),
        Err(_) => (synthetic_tdvf_image(), "synthetic".into()),
    };
    let mut mib = 0.0;
    let build_ms = best(repeats, || {
        let (ms, m) = build_once(&image);
        mib = m;
        ms
    });
    println!("build: {which}: {mib:.2} MiB added in {build_ms:.1} ms");
    let gib = fault_mib as f64 / 1024.0;
    let f4k = best(repeats, || faultin_once(fault_mib, PageLevel::L4K));
    println!("faultin 4K: {fault_mib} MiB in {f4k:.1} ms");
    let f2m = best(repeats, || faultin_once(fault_mib, PageLevel::L2M));
    println!("faultin 2M: {fault_mib} MiB in {f2m:.1} ms");
    let fast = best(repeats, || teardown_once(teardown_mib, false));
    let slow = best(repeats, || teardown_once(teardown_mib, true));
    println!("teardown of {teardown_mib} MiB at 4K: fast {fast:.1} ms, slow {slow:.1} ms");
    println!(
        "td: build_ms_per_mib={:.2} faultin_4k_ms_per_gib={:.1} faultin_2m_ms_per_gib={:.2} teardown_fast_vs_slow={:.2}",
        build_ms / mib.max(1e-9),
        f4k / gib,
        f2m / gib,
        slow / fast
    );
}
