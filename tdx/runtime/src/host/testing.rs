//! Test support (cargo feature `testing`): a [`Host`] over the software TDX module, sparse
//! memory and one thread per vCPU runner, built in one call.
//!
//! Typical use: `let mut host = emulated_host(small_config());`, upload
//! [`synthetic_tdvf_image`] with [`upload_image`], create a TD, and drive the jobs with
//! [`step_until`].

use alloc::sync::Arc;
use alloc::vec::Vec;
use std::sync::Mutex;
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use super::runner::Runner;
use super::{Host, HostConfig, HostModule, Platform, PlatformError, RunnerPoll};
use tdx_abi::Hpa;
use tdx_abi::phys::{PhysMemory, SparseMemory};
use tdx_emu::{EmuConfig, EmuLimits, EmulatedModule};

/// Logical CPUs, packages and runner threads of a test platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadTopology {
    /// Logical CPUs including the main CPU 0.
    pub cpus: u32,
    /// Packages (CPU `n` is in package `n % packages`, as in the software module).
    pub packages: u32,
}

impl Default for ThreadTopology {
    fn default() -> Self {
        ThreadTopology {
            cpus: 4,
            packages: 1,
        }
    }
}

/// A [`Platform`] on std threads: CPUs 1.. run runner loops on their own threads.
pub struct ThreadPlatform {
    topology: ThreadTopology,
    start: Instant,
    threads: Mutex<Vec<(u32, JoinHandle<()>)>>,
    parked: Mutex<Vec<(u32, Thread)>>,
    runners: Mutex<Vec<Arc<Runner>>>,
    translation_flushes: core::sync::atomic::AtomicU64,
}

impl ThreadPlatform {
    /// A platform with `topology`.
    pub fn new(topology: ThreadTopology) -> Arc<ThreadPlatform> {
        Arc::new(ThreadPlatform {
            topology,
            start: Instant::now(),
            threads: Mutex::new(Vec::new()),
            parked: Mutex::new(Vec::new()),
            runners: Mutex::new(Vec::new()),
            translation_flushes: core::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How often a runner flushed its CPU's guest translations.
    pub fn translation_flushes(&self) -> u64 {
        self.translation_flushes
            .load(core::sync::atomic::Ordering::Relaxed)
    }

    /// Asks every runner to leave its loop and joins the threads.
    pub fn join_runners(&self) {
        if let Ok(runners) = self.runners.lock() {
            for r in runners.iter() {
                r.request_exit();
            }
        }
        self.unpark_all();
        let threads = match self.threads.lock() {
            Ok(mut t) => core::mem::take(&mut *t),
            Err(_) => return,
        };
        for (_, t) in threads {
            let _ = t.join();
        }
    }

    /// Runner loop threads that have not returned yet.
    pub fn live_runner_threads(&self) -> usize {
        self.threads
            .lock()
            .map_or(0, |t| t.iter().filter(|(_, h)| !h.is_finished()).count())
    }

    fn unpark_all(&self) {
        if let Ok(p) = self.parked.lock() {
            for (_, t) in p.iter() {
                t.unpark();
            }
        }
    }
}

impl Drop for ThreadPlatform {
    fn drop(&mut self) {
        self.join_runners();
    }
}

impl Platform for ThreadPlatform {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
    fn cpus(&self) -> u32 {
        self.topology.cpus
    }
    fn package_of(&self, cpu: u32) -> u32 {
        cpu % self.topology.packages.max(1)
    }
    fn run_on_cpu(&self, cpu: u32, f: &(dyn Fn() + Sync)) -> Result<(), PlatformError> {
        if cpu >= self.topology.cpus {
            return Err(PlatformError::NoSuchCpu(cpu));
        }
        f();
        Ok(())
    }
    fn runner_cpus(&self) -> Vec<u32> {
        (1..self.topology.cpus).collect()
    }
    /// Spawns a thread for the loop. Like a busy application processor, a CPU whose previous
    /// loop thread has not finished yet refuses with [`PlatformError::RunnerBusy`].
    fn start_runner(&self, runner: Arc<Runner>) -> Result<(), PlatformError> {
        let cpu = runner.cpu();
        let mut threads = self
            .threads
            .lock()
            .map_err(|_| PlatformError::RunnerStart(cpu))?;
        if threads.iter().any(|(c, t)| *c == cpu && !t.is_finished()) {
            return Err(PlatformError::RunnerBusy(cpu));
        }
        // Reap the finished loops of this CPU.
        let (done, keep): (Vec<_>, Vec<_>) = core::mem::take(&mut *threads)
            .into_iter()
            .partition(|(c, _)| *c == cpu);
        *threads = keep;
        for (_, t) in done {
            let _ = t.join();
        }
        if let Ok(mut p) = self.parked.lock() {
            p.retain(|(c, _)| *c != cpu);
        }
        if let Ok(mut r) = self.runners.lock()
            && !r.iter().any(|known| Arc::ptr_eq(known, &runner))
        {
            r.push(runner.clone());
        }
        let handle = thread::Builder::new()
            .name(alloc::format!("runner-{cpu}"))
            .spawn(move || {
                loop {
                    match runner.poll() {
                        RunnerPoll::Busy => {}
                        RunnerPoll::Idle { sleep_ms } => {
                            thread::park_timeout(Duration::from_millis(sleep_ms.min(1)));
                        }
                        RunnerPoll::Parked | RunnerPoll::Exit => break,
                    }
                }
            })
            .map_err(|_| PlatformError::RunnerStart(cpu))?;
        let t = handle.thread().clone();
        if let Ok(mut p) = self.parked.lock() {
            p.push((cpu, t));
        }
        threads.push((cpu, handle));
        Ok(())
    }
    /// A stand-in below the KeyID bits (the software module records such addresses but
    /// never reads through them): the test process's heap addresses are virtual.
    fn physical_address_of(&self, virt: u64) -> u64 {
        virt & 0x0000_00FF_FFFF_FFC0
    }
    fn flush_guest_translations(&self) {
        self.translation_flushes
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }
    fn kick_cpu(&self, cpu: u32) {
        if let Ok(p) = self.parked.lock() {
            for (c, t) in p.iter() {
                if *c == cpu {
                    t.unpark();
                }
            }
        }
    }
}

/// Everything [`emulated_host_parts`] builds.
pub struct EmulatedHost {
    /// The host.
    pub host: Host,
    /// The software module behind it (fault injection, invariants).
    pub module: Arc<EmulatedModule>,
    /// Its memory.
    pub memory: Arc<SparseMemory>,
    /// The thread platform.
    pub platform: Arc<ThreadPlatform>,
}

/// A small default config for tests: 512 MiB pool at 1 GiB, 16 KeyIDs, 8 KiB console rings,
/// 256 pages per build step.
pub fn small_config() -> HostConfig {
    HostConfig {
        console_ring_bytes: 8 << 10,
        event_log_len: 1024,
        build_pages_per_step: 256,
        memory: super::PlatformMemory {
            pool_base: Hpa(1 << 30),
            pool_size: 512 << 20,
            hkid_start: 16,
            num_hkids: 16,
        },
        ..HostConfig::default()
    }
}

/// A host over the software module with `topology`, initialized; panics only if bring-up of a
/// valid configuration fails (a bug the crate's own tests catch).
#[allow(clippy::expect_used)]
pub fn emulated_host_parts(config: HostConfig, topology: ThreadTopology) -> EmulatedHost {
    let memory = Arc::new(SparseMemory::new());
    let mem = &config.memory;
    let module = EmulatedModule::new(
        EmuConfig {
            phys_base: mem.pool_base,
            phys_size: mem.pool_size,
            num_lps: topology.cpus,
            num_packages: topology.packages,
            hkid_start: mem.hkid_start,
            num_hkids: mem.num_hkids,
            hkid_shift: 46,
            limits: EmuLimits::default(),
        },
        memory.clone() as Arc<dyn PhysMemory>,
    )
    .expect("software module configuration");
    let platform = ThreadPlatform::new(topology);
    let host = Host::new(
        HostModule::Software(module.hooks()),
        memory.clone() as Arc<dyn PhysMemory>,
        platform.clone() as Arc<dyn Platform>,
        config,
    )
    .expect("host bring-up over the software module");
    EmulatedHost {
        host,
        module,
        memory,
        platform,
    }
}

/// A host over the software module, sparse memory and 3 runner threads.
pub fn emulated_host(config: HostConfig) -> Host {
    emulated_host_parts(config, ThreadTopology::default()).host
}

/// A small valid TDVF image (64 KiB) shaped like OVMF: a measured BFV and an unmeasured CFV
/// in the firmware window below 4 GiB, TempMem and the TD_HOB in RAM at 8 MiB.
pub fn synthetic_tdvf_image() -> Vec<u8> {
    const LEN: usize = 0x10000;
    const DESCRIPTOR_AT: usize = 0xE000;
    const SECTIONS: [crate::tdvf::SectionRecord; 4] = [
        (0x4000, 0x8000, 0xFFFF_0000, 0x10000, 0, 1),
        (0x0000, 0x1800, 0xFFFE_0000, 0x2000, 1, 0),
        (0, 0, 0x80_0000, 0x6000, 3, 0),
        (0, 0, 0x80_9000, 0x2000, 2, 0),
    ];
    let mut img: Vec<u8> = (0..LEN)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect();
    crate::tdvf::write_tdvf_metadata(&mut img, DESCRIPTOR_AT, &SECTIONS);
    if let Some(last) = img.get_mut(LEN - 32..) {
        last.fill(0xFF);
    }
    img
}

/// Uploads `bytes` as image `name` in 1000-byte chunks.
pub fn upload_image(
    host: &mut Host,
    name: &str,
    bytes: &[u8],
) -> Result<super::ImageInfo, super::HostError> {
    let id = host.begin_image_upload(name, bytes.len() as u64)?;
    for chunk in bytes.chunks(1000) {
        host.write_image_chunk(id, chunk)?;
    }
    host.finish_image_upload(id)
}

/// Calls [`Host::step`] until `done(host)` holds or `timeout_ms` pass; returns whether it
/// held.
pub fn step_until(host: &mut Host, timeout_ms: u64, mut done: impl FnMut(&Host) -> bool) -> bool {
    let deadline = host.now_ms() + timeout_ms;
    loop {
        let now = host.now_ms();
        let busy = host.step(now);
        if done(host) {
            return true;
        }
        if now > deadline {
            return false;
        }
        if !busy {
            thread::sleep(Duration::from_micros(200));
        }
    }
}

/// An [`ImageSource`](crate::tdvf::ImageSource) that counts what is read through it (to check
/// that validation reads only what it needs).
pub struct CountingSource<S> {
    inner: S,
    bytes: core::sync::atomic::AtomicU64,
    reads: core::sync::atomic::AtomicU64,
    largest: core::sync::atomic::AtomicU64,
}

impl<S: crate::tdvf::ImageSource> CountingSource<S> {
    /// Counts reads of `inner`.
    pub fn new(inner: S) -> Self {
        CountingSource {
            inner,
            bytes: core::sync::atomic::AtomicU64::new(0),
            reads: core::sync::atomic::AtomicU64::new(0),
            largest: core::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(core::sync::atomic::Ordering::Relaxed)
    }

    /// `read_at` calls so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(core::sync::atomic::Ordering::Relaxed)
    }

    /// The largest single read (bytes).
    pub fn largest_read(&self) -> u64 {
        self.largest.load(core::sync::atomic::Ordering::Relaxed)
    }
}

impl<S: crate::tdvf::ImageSource> crate::tdvf::ImageSource for CountingSource<S> {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), crate::tdvf::OutOfImage> {
        use core::sync::atomic::Ordering::Relaxed;
        let n = buf.len() as u64;
        self.bytes.fetch_add(n, Relaxed);
        self.reads.fetch_add(1, Relaxed);
        self.largest.fetch_max(n, Relaxed);
        self.inner.read_at(offset, buf)
    }
}
