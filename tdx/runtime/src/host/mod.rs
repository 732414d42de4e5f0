//! The runtime façade: one [`Host`] object that brings the TDX module up, owns the TD memory
//! pool, the uploaded firmware images, the TDs and their vCPU runners, and answers the
//! management API (see `/work/brief/host-contract.md`).
//!
//! Everything the API calls runs on the main CPU and returns at once; long work (a TD build,
//! a graceful stop, a teardown) is a job advanced by [`Host::step`], which the appliance main
//! loop calls between network polls.

pub mod types;

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use tdx_abi::Hpa;
use tdx_abi::phys::PhysMemory;
use tdx_abi::seamcall::{ModuleKind, SeamError, Seamcall};
use tdx_abi::software::SoftwareModuleHooks;

use crate::devices::serial::{COM1_BASE, Serial16550, UART_PORTS};
use crate::devices::{MmioBus, PortIoBus};
use crate::td::lifecycle::TdState;
use crate::tdvf::TdvfError;

pub use types::*;

/// Identifier of an image upload in progress.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct UploadId(pub u64);

/// The TDX module the host drives.
#[derive(Clone)]
pub enum HostModule {
    /// The real module through the `seamcall` instruction (CPU-agnostic handle: a call runs
    /// on the CPU that makes it).
    Hardware(Arc<dyn Seamcall>),
    /// A software module; SEAMCALLs for logical CPU `n` go through
    /// [`SoftwareModuleHooks::logical_processor`]`(n)`.
    Software(Arc<dyn SoftwareModuleHooks>),
}

impl HostModule {
    /// Which module this is.
    pub fn kind(&self) -> ModuleKind {
        match self {
            HostModule::Hardware(_) => ModuleKind::Hardware,
            HostModule::Software(_) => ModuleKind::Emulated,
        }
    }

    /// The software module's hooks, if that is what runs.
    pub fn software(&self) -> Option<&Arc<dyn SoftwareModuleHooks>> {
        match self {
            HostModule::Software(m) => Some(m),
            HostModule::Hardware(_) => None,
        }
    }

    /// The SEAMCALL handle for code that runs on logical CPU `cpu` (hardware: the
    /// instruction, which runs where it is called; software: that processor's handle).
    pub(crate) fn seamcall_on(&self, cpu: u32) -> Option<Arc<dyn Seamcall>> {
        match self {
            HostModule::Hardware(h) => Some(h.clone()),
            HostModule::Software(m) => m.logical_processor(cpu),
        }
    }
}

/// Physical memory the host may use for TDs: the pool range and the TDX KeyIDs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformMemory {
    /// First byte of the TD memory pool (4 KiB aligned; 2 MiB aligned gives the most 2 MiB
    /// extents). The appliance reserves it at boot.
    pub pool_base: Hpa,
    /// Size of the pool in bytes.
    pub pool_size: u64,
    /// First TDX private KeyID (the first one becomes the module's global KeyID).
    pub hkid_start: u16,
    /// Number of TDX private KeyIDs.
    pub num_hkids: u16,
}

/// Host configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// Largest accepted image (bytes). Default 64 MiB.
    pub max_image_bytes: u64,
    /// Console ring per TD (bytes). Default 64 KiB.
    pub console_ring_bytes: usize,
    /// Events kept. Default 4096.
    pub event_log_len: usize,
    /// PAGE.ADD (+ its MR.EXTENDs) per [`Host::step`]. Default 64.
    pub build_pages_per_step: u32,
    /// The memory and KeyIDs to use.
    pub memory: PlatformMemory,
    /// Period of the emulated guest timer that wakes halted vCPUs (ms). Default 10.
    pub idle_wakeup_ms: u64,
    /// Reclaim work per [`Host::step`] during a TD teardown, in 4 KiB-page units (a 2 MiB page
    /// counts 512, a control or S-EPT page 1). Default 4096 (16 MiB mapped at 4 KiB).
    pub teardown_pages_per_step: u32,
    /// Teardown removes every private page with BLOCK/TRACK/REMOVE while the key is still
    /// live, instead of releasing the key first and reclaiming (for comparison benchmarks).
    pub slow_teardown: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            max_image_bytes: 64 << 20,
            console_ring_bytes: 64 << 10,
            event_log_len: 4096,
            build_pages_per_step: 64,
            teardown_pages_per_step: 4096,
            memory: PlatformMemory {
                pool_base: Hpa(1 << 30),
                pool_size: 1 << 30,
                hkid_start: 32,
                num_hkids: 32,
            },
            idle_wakeup_ms: 10,
            slow_teardown: false,
        }
    }
}

/// Why a platform service failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// The CPU does not exist or cannot run work.
    #[error("CPU {0} is not available")]
    NoSuchCpu(u32),
    /// The platform could not start a runner loop.
    #[error("cannot start a runner on CPU {0}")]
    RunnerStart(u32),
    /// The previous runner loop on this CPU has not finished yet; try again later.
    #[error("the previous runner loop on CPU {0} has not finished")]
    RunnerBusy(u32),
}

/// What a runner loop should do after one [`Runner::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunnerPoll {
    /// Work was done; poll again at once.
    Busy,
    /// Nothing to do right now; the platform may pause briefly (≤ 1 ms) or until kicked.
    Idle,
    /// No vCPU is bound: leave the loop (the CPU goes idle); the host starts it again
    /// through [`Platform::start_runner`] when it binds a vCPU.
    Parked,
    /// The host is gone; leave the loop.
    Exit,
}

/// Platform services the runtime needs (threads in host tests, MP Services on the appliance).
pub trait Platform: Send + Sync {
    /// Monotonic milliseconds since host start.
    fn now_ms(&self) -> u64;
    /// Logical CPUs (each gets TDH.SYS.LP.INIT). CPU 0 is the main CPU that calls [`Host`].
    fn cpus(&self) -> u32;
    /// Package (socket) of logical CPU `cpu`.
    fn package_of(&self, cpu: u32) -> u32;
    /// Runs `f` on logical CPU `cpu` and waits for it (bring-up of the hardware module:
    /// LP.INIT, per-package key configuration). Not called once a runner occupies `cpu`.
    fn run_on_cpu(&self, cpu: u32, f: &(dyn Fn() + Sync)) -> Result<(), PlatformError>;
    /// CPUs that run vCPU runner loops (application processors; never CPU 0).
    fn runner_cpus(&self) -> Vec<u32>;
    /// Starts the runner loop on `runner.cpu()`: call [`Runner::poll`] until it returns
    /// [`RunnerPoll::Parked`] or [`RunnerPoll::Exit`], pausing briefly on
    /// [`RunnerPoll::Idle`]. Called again for the same runner after its loop parked; returns
    /// [`PlatformError::RunnerBusy`] while the previous dispatch on that CPU has not completed
    /// (the host retries in [`Host::step`]).
    ///
    /// [`Runner::poll`]: runner::Runner::poll
    fn start_runner(&self, runner: Arc<runner::Runner>) -> Result<(), PlatformError>;
    /// Interrupts CPU `cpu` (hardware: an IPI that makes a vCPU in TDX non-root mode exit;
    /// threads: unpark the runner).
    fn kick_cpu(&self, cpu: u32);
}

/// Errors of the façade; each maps to one HTTP status in the API.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// No TD with this id.
    #[error("TD {0:?} not found")]
    TdNotFound(TdId),
    /// No image with this name.
    #[error("image not found")]
    ImageNotFound,
    /// No upload with this id.
    #[error("upload not found")]
    UploadNotFound,
    /// The name is already used.
    #[error("name already taken")]
    NameTaken,
    /// The image is used by a TD.
    #[error("image is used by a TD")]
    ImageInUse,
    /// The TD's state does not allow the action.
    #[error("cannot {action} a TD in state {from}")]
    InvalidTransition {
        /// State the TD is in.
        from: TdState,
        /// What was asked.
        action: &'static str,
    },
    /// A field of a request is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidSpec {
        /// The field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The uploaded file is not a usable TDVF image.
    #[error("invalid TDVF image: {0}")]
    InvalidImage(TdvfError),
    /// The image is larger than `max_image_bytes`.
    #[error("image too large")]
    ImageTooLarge,
    /// More or fewer bytes than announced.
    #[error("upload size does not match the announced size")]
    UploadSizeMismatch,
    /// The TD memory pool is exhausted.
    #[error("out of memory: the TD memory pool is exhausted")]
    OutOfMemory,
    /// Every TDX KeyID is in use.
    #[error("out of HKIDs: every TDX private KeyID is in use")]
    OutOfHkids,
    /// A declared workload needs the software TDX module.
    #[error("a declared workload needs the emulated TDX module")]
    WorkloadNeedsEmulation,
    /// The TD is bugged.
    #[error("TD {0:?} is bugged")]
    TdBugged(TdId),
    /// Unexpected module status; the host keeps running.
    #[error("TDX module: {0}")]
    Module(SeamError),
    /// The TDX module lacks a feature the runtime needs (read from TDX_FEATURES0).
    #[error("the TDX module lacks {0}, which this appliance needs; update the TDX module")]
    ModuleUnsupported(&'static str),
}

mod bringup;
mod build;
mod create;
mod events;
pub mod exit;
mod hkids;
mod images;
pub mod memory;
pub mod msr;
pub mod runner;
mod seam;
pub mod td;
pub mod tdvmcall;
mod teardown;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

use alloc::collections::BTreeMap;

use crate::pool::{MemoryPool, MemoryUse};
use crate::sept::{Gpaw, SeptBackends, SeptConfig, SeptManager, TdSeptInfo};
use crate::td::lifecycle::{TdEvent, TdLifecycle};
use crate::tdvf::{BuildPlan, SectionPlacement, TdMemoryLayout};
use tdx_abi::seamcall::TdxModule;
use tdx_abi::td_params::{EPTP_MEMTYPE_WB, TdParams, config_flags};
use tdx_abi::{Hkid, PAGE_SIZE_4K};

use bringup::{CpuCallError, CpuCaller, CpuOp, ModuleLimits};
use create::{ControlPages, ControlSizes, TdReservation};
use events::EventLog;
use hkids::HkidAllocator;
use images::ImageStore;
use memory::{Kicker, SeptPageCache, TdBacking, TdVcpus, VcpuGate};
use seam::{Counted, RetryBusy, SeamcallCounters};
use td::{
    ConsoleRing, RUN_GO, RUN_GRACEFUL, RUN_HALT, RUN_NOT_STARTED, TdCounterCells, TdShared,
    VcpuShared,
};

/// Smallest TD (MiB).
pub const MIN_TD_MEMORY_MIB: u64 = 32;
/// How long teardown waits for runners to park a TD's vCPUs before flushing them itself.
const QUIESCE_TIMEOUT_MS: u64 = 5_000;

/// A TD as the main CPU keeps it.
struct Td {
    shared: Arc<TdShared>,
    lifecycle: TdLifecycle,
    name: String,
    image: String,
    vcpus: u32,
    memory_mib: u64,
    attributes: u64,
    created_ms: u64,
    hkid: u16,
    hkid_live: bool,
    tdr: Hpa,
    tdcs: Vec<Hpa>,
    /// Per vCPU: TDVPR and TDCX pages.
    vcpu_pages: Vec<(Hpa, Vec<Hpa>)>,
    /// Control pages of vCPUs that were never created in the module.
    unused_control: Vec<Hpa>,
    backing: Arc<TdBacking>,
    sept_cache: Arc<SeptPageCache>,
    seam_counters: Arc<SeamcallCounters>,
    build: Option<build::BuildJob>,
    /// The teardown in progress (state `Destroying`).
    teardown: Option<teardown::TeardownJob>,
    stop_deadline: Option<u64>,
    destroy_requested: bool,
    destroy_started_ms: u64,
    reason: Option<String>,
    mrtd: Option<[u8; 48]>,
    leaked_pages: u64,
}

/// What a TD being created holds (freed or torn down together on failure).
struct TdParts {
    id: TdId,
    hkid: u16,
    control: ControlPages,
    backing: Arc<TdBacking>,
    cache: Arc<SeptPageCache>,
    seam_counters: Arc<SeamcallCounters>,
}

/// The runtime façade. See the module docs.
pub struct Host {
    module: HostModule,
    main: Arc<dyn Seamcall>,
    cpus: CpuCaller,
    phys: Arc<dyn PhysMemory>,
    platform: Arc<dyn Platform>,
    config: HostConfig,
    pool: Arc<MemoryPool>,
    limits: ModuleLimits,
    global_hkid: Hkid,
    hkids: Arc<HkidAllocator>,
    runners: Vec<Arc<runner::Runner>>,
    /// Runner loops are first started with the first TD; afterwards a runner parks when no
    /// vCPU is bound to it and [`Host::ensure_runners`] starts it again.
    runners_started: bool,
    next_runner: usize,
    scratch_source: Hpa,
    td_params_page: Hpa,
    images: ImageStore,
    tds: BTreeMap<TdId, Td>,
    next_td: u64,
    events: EventLog,
    main_counters: Arc<SeamcallCounters>,
    retired_seamcalls: Vec<(&'static str, &'static str, u64)>,
    retired_faults: u64,
    retired_busy: u64,
    leaked_pages: u64,
}

impl Drop for Host {
    fn drop(&mut self) {
        for r in &self.runners {
            r.request_exit();
            self.platform.kick_cpu(r.cpu());
        }
    }
}

impl Host {
    /// Bring-up: module init (SYS.INIT, LP.INIT per CPU, TDMRs/PAMT, SYS.CONFIG, KEY.CONFIG
    /// per package, TDMR.INIT) + pool + one runner loop per runner CPU.
    pub fn new(
        module: HostModule,
        phys: Arc<dyn PhysMemory>,
        platform: Arc<dyn Platform>,
        config: HostConfig,
    ) -> Result<Host, HostError> {
        let mem = &config.memory;
        let pool = Arc::new(MemoryPool::new(mem.pool_base, mem.pool_size).map_err(|_| {
            HostError::InvalidSpec {
                field: "td_memory",
                reason: "the TD memory range is empty or not 4 KiB aligned",
            }
        })?);
        if mem.num_hkids < 2 {
            return Err(HostError::InvalidSpec {
                field: "hkids",
                reason: "need the global KeyID and at least one TD KeyID",
            });
        }
        let main_counters = Arc::new(SeamcallCounters::new());
        let cpus = CpuCaller {
            module: module.clone(),
            platform: platform.clone(),
            counters: main_counters.clone(),
        };
        // (`ok_or_else`: the conversion logs the platform error.)
        let main = cpus
            .main()
            .ok_or_else(|| HostError::from(CpuCallError::Platform(PlatformError::NoSuchCpu(0))))?;
        let up = bringup::bring_up(&cpus, &pool, &*phys, mem.hkid_start)?;
        let hkids = Arc::new(HkidAllocator::new(mem.hkid_start, mem.num_hkids));
        let scratch_source = pool
            .alloc_4k(MemoryUse::Control)
            .map_err(|_| HostError::OutOfMemory)?;
        let td_params_page = pool
            .alloc_4k(MemoryUse::Control)
            .map_err(|_| HostError::OutOfMemory)?;
        let mut runners = Vec::new();
        for cpu in platform.runner_cpus() {
            let Some(seam) = cpus.for_cpu(cpu, main_counters.clone()) else {
                log::warn!("host: no SEAMCALL handle for runner CPU {cpu}; skipped");
                continue;
            };
            let index = runners.len();
            runners.push(Arc::new(runner::Runner::new(
                index,
                cpu,
                seam,
                platform.clone(),
            )));
        }
        let kind = module.kind();
        if kind == ModuleKind::Emulated {
            log::warn!(
                "host: no TDX hardware in use: TDs run on the EMULATED (software) TDX module"
            );
        }
        let pamt = up.pamt;
        let mut host = Host {
            module,
            main,
            cpus,
            phys,
            platform,
            pool,
            limits: up.limits,
            global_hkid: up.global_hkid,
            hkids,
            runners,
            runners_started: false,
            next_runner: 0,
            scratch_source,
            td_params_page,
            images: ImageStore::new(config.max_image_bytes),
            tds: BTreeMap::new(),
            next_td: 1,
            events: EventLog::new(config.event_log_len),
            main_counters,
            retired_seamcalls: Vec::new(),
            retired_faults: 0,
            retired_busy: 0,
            leaked_pages: 0,
            config,
        };
        let now = host.platform.now_ms();
        let msg = alloc::format!(
            "{} TDX module initialized ({}); {} runner CPUs; TD memory {} MiB (PAMT {} KiB at {})",
            kind.as_str(),
            host.limits.version,
            host.runners.len(),
            host.config.memory.pool_size >> 20,
            pamt.1 * 4,
            pamt.0
        );
        host.host_event(now, msg);
        Ok(host)
    }

    // ------------------------------------------------------------------ host info

    /// Host-wide information.
    pub fn info(&self) -> HostInfo {
        let stats = self.pool.stats();
        let tds_by_state = TdState::ALL
            .iter()
            .map(|s| {
                let n = self
                    .tds
                    .values()
                    .filter(|t| t.lifecycle.state() == *s)
                    .count();
                (*s, n as u32)
            })
            .collect();
        HostInfo {
            module_kind: self.module_kind().as_str(),
            module_version: self.limits.version.clone(),
            max_vcpus_per_td: self.limits.max_vcpus_per_td,
            hkids_total: self.hkids.total(),
            hkids_free: self.hkids.free(),
            cpus: self.platform.cpus(),
            runners: self.runners.len() as u32,
            memory_total: stats.total_pages * PAGE_SIZE_4K,
            memory_free: stats.free_pages * PAGE_SIZE_4K,
            tds_by_state,
        }
    }

    /// Which module is behind the host.
    pub fn module_kind(&self) -> ModuleKind {
        self.module.kind()
    }

    /// The platform clock (ms since host start); pass it as `now_ms`.
    pub fn now_ms(&self) -> u64 {
        self.platform.now_ms()
    }

    /// The TD memory pool (accounting checks).
    pub fn pool(&self) -> &MemoryPool {
        &self.pool
    }

    /// The vCPU runners.
    pub fn runners(&self) -> &[Arc<runner::Runner>] {
        &self.runners
    }

    /// Counters.
    pub fn metrics(&self) -> HostMetrics {
        let mut seamcalls = self.retired_seamcalls.clone();
        self.main_counters.add_to(&mut seamcalls);
        let mut faults = self.retired_faults;
        let mut busy = self.retired_busy;
        for td in self.tds.values() {
            td.seam_counters.add_to(&mut seamcalls);
            let c = self.td_counters(td);
            faults += c.faults;
            busy += c.busy_retries;
        }
        let stats = self.pool.stats();
        HostMetrics {
            seamcalls,
            faults,
            busy_retries: busy,
            pool_bytes_by_use: MemoryUse::ALL
                .iter()
                .map(|u| (u.name(), stats.used_by(*u) * PAGE_SIZE_4K))
                .collect(),
            pool_total: stats.total_pages * PAGE_SIZE_4K,
            pool_free: stats.free_pages * PAGE_SIZE_4K,
            leaked_pages: self.leaked_pages
                + self.tds.values().map(|t| t.leaked_pages).sum::<u64>(),
        }
    }

    // ------------------------------------------------------------------ events

    fn push_event(&mut self, at_ms: u64, kind: EventKind) {
        self.events.push(at_ms, kind);
    }

    fn host_event(&mut self, at_ms: u64, message: String) {
        log::info!("host: {message}");
        self.push_event(at_ms, EventKind::Host { message });
    }

    /// Events with id > `since`, at most `max`.
    pub fn events_since(&self, since: u64, max: usize) -> Vec<Event> {
        self.events.since(since, max)
    }

    /// Id of the newest event (0 if none).
    pub fn last_event_id(&self) -> u64 {
        self.events.last_id()
    }

    /// Applies `event` to TD `id` and records the change. Refusals are returned unchanged.
    fn apply(&mut self, id: TdId, event: TdEvent, now: u64) -> Result<TdState, HostError> {
        let Some(td) = self.tds.get_mut(&id) else {
            return Err(HostError::TdNotFound(id));
        };
        let from = td.lifecycle.state();
        let to = td
            .lifecycle
            .apply(event)
            .map_err(|e| HostError::InvalidTransition {
                from: e.from,
                action: event.name(),
            })?;
        let name = td.name.clone();
        if from != to {
            log::info!("host: TD {} ({name}): {from} -> {to}", id.0);
            self.push_event(now, EventKind::TdState { id, name, from, to });
        }
        Ok(to)
    }

    /// Marks TD `id` bugged with `reason` (logged once per TD).
    fn bug_td(&mut self, id: TdId, reason: String, now: u64) {
        let Some(td) = self.tds.get_mut(&id) else {
            return;
        };
        if td.reason.is_none() {
            log::error!("host: TD {} ({}) bugged: {reason}", id.0, td.name);
            td.reason = Some(reason.clone());
        }
        td.shared.halt();
        td.build = None;
        self.push_event(now, EventKind::TdBugged { id, reason });
        let _ = self.apply(id, TdEvent::Bug, now);
    }

    /// Marks TD `id` failed with `reason`.
    fn fail_td(&mut self, id: TdId, reason: String, now: u64) {
        let Some(td) = self.tds.get_mut(&id) else {
            return;
        };
        if td.reason.is_none() {
            log::warn!("host: TD {} ({}) failed: {reason}", id.0, td.name);
            td.reason = Some(reason);
        }
        td.shared.halt();
        td.build = None;
        let _ = self.apply(id, TdEvent::Fail, now);
    }

    // ------------------------------------------------------------------ images

    fn in_use_by(&self, image: &str) -> u32 {
        self.tds.values().filter(|t| t.image == image).count() as u32
    }

    /// Starts a streamed image upload of `size` bytes under `name`.
    pub fn begin_image_upload(&mut self, name: &str, size: u64) -> Result<UploadId, HostError> {
        self.images.begin(&self.pool, name, size)
    }

    /// Appends `data` to an upload.
    pub fn write_image_chunk(&mut self, id: UploadId, data: &[u8]) -> Result<(), HostError> {
        self.images.write(&*self.phys, id, data)
    }

    /// Finishes an upload: validates the TDVF image, computes SHA-384 and the expected MRTD.
    /// On any error the upload is freed.
    pub fn finish_image_upload(&mut self, id: UploadId) -> Result<ImageInfo, HostError> {
        let info = self.images.finish(&self.pool, &*self.phys, id)?;
        let now = self.platform.now_ms();
        self.host_event(
            now,
            alloc::format!("image {} uploaded ({} bytes)", info.name, info.size),
        );
        Ok(info)
    }

    /// Abandons an upload and frees its memory.
    pub fn abort_image_upload(&mut self, id: UploadId) {
        self.images.abort(&self.pool, &*self.phys, id);
    }

    /// Uploaded images.
    pub fn images(&self) -> Vec<ImageInfo> {
        self.images
            .all()
            .map(|i| i.info(self.in_use_by(&i.name)))
            .collect()
    }

    /// One image.
    pub fn image(&self, name: &str) -> Result<ImageInfo, HostError> {
        self.images
            .get(name)
            .map(|i| i.info(self.in_use_by(name)))
            .ok_or(HostError::ImageNotFound)
    }

    /// Deletes an image that no TD uses.
    pub fn delete_image(&mut self, name: &str) -> Result<(), HostError> {
        if self.images.get(name).is_none() {
            return Err(HostError::ImageNotFound);
        }
        if self.in_use_by(name) > 0 {
            return Err(HostError::ImageInUse);
        }
        self.images.delete(&self.pool, &*self.phys, name)?;
        let now = self.platform.now_ms();
        self.host_event(now, alloc::format!("image {name} deleted"));
        Ok(())
    }

    // ------------------------------------------------------------------ TDs

    fn validate_spec(&self, spec: &TdSpec) -> Result<(), HostError> {
        let invalid = |field, reason| Err(HostError::InvalidSpec { field, reason });
        if !images::valid_name(&spec.name) {
            return invalid("name", "1-64 characters of A-Z a-z 0-9 . _ -");
        }
        if self.tds.values().any(|t| t.name == spec.name) {
            return Err(HostError::NameTaken);
        }
        if spec.vcpus == 0
            || spec.vcpus > self.limits.max_vcpus_per_td
            || spec.vcpus > u32::from(u16::MAX)
        {
            return invalid("vcpus", "must be between 1 and the module's maximum");
        }
        if spec.memory_mib < MIN_TD_MEMORY_MIB {
            return invalid("memory_mib", "must be at least 32");
        }
        if spec.attributes & !self.limits.attributes_fixed0 != 0 {
            return invalid("attributes", "has bits the TDX module does not support");
        }
        if spec.attributes & self.limits.attributes_fixed1 != self.limits.attributes_fixed1 {
            return invalid("attributes", "lacks bits the TDX module requires");
        }
        if spec.workload.is_some() && self.module_kind() == ModuleKind::Hardware {
            return Err(HostError::WorkloadNeedsEmulation);
        }
        if self.runners.is_empty() {
            return invalid("vcpus", "the host has no runner CPUs");
        }
        Ok(())
    }

    /// TD_PARAMS from the spec and the module's limits (tdx-reference §2.9): the requested
    /// attributes, the XFAM bits the module requires, 4-level EPT (GPAW 48) with write-back
    /// memory type, `NO_RBP_MOD` as KVM sets it, and every configurable CPUID bit left 0.
    fn td_params(&self, spec: &TdSpec) -> TdParams {
        let mut p = TdParams::basic(spec.attributes, spec.vcpus as u16);
        p.xfam = self.limits.xfam_fixed1 & self.limits.xfam_fixed0;
        p.eptp_controls = EPTP_MEMTYPE_WB | (3 << 3);
        p.config_flags = config_flags::NO_RBP_MOD;
        p.cpuid_values = alloc::vec![[0u32; 4]; self.limits.cpuid_config.len()];
        p
    }

    /// Runs `op` on logical CPU `cpu`: through its runner's mailbox once a hardware runner
    /// occupies it, else as [`CpuCaller::on_cpu`] does.
    fn call_on_cpu<T: Send>(&self, cpu: u32, op: CpuOp<'_, T>) -> Result<T, CpuCallError> {
        if let HostModule::Hardware(_) = self.module
            && cpu != 0
            && let Some(r) = self.runners.iter().find(|r| r.cpu() == cpu)
            && r.is_running()
        {
            let mailbox = runner::Mailbox::new(r, 1_000);
            let out = op(&mailbox);
            if mailbox.delivered() {
                return out.map_err(CpuCallError::Seam);
            }
            if r.is_running() {
                return Err(CpuCallError::Platform(PlatformError::NoSuchCpu(cpu)));
            }
            // The loop parked meanwhile: its CPU is free for a direct call.
        }
        self.cpus.on_cpu(cpu, op)
    }

    /// Starts the runner loops (once). Runners that fail to start are dropped.
    fn start_runners(&mut self) {
        if self.runners_started {
            return;
        }
        self.runners_started = true;
        let mut started = Vec::new();
        for r in core::mem::take(&mut self.runners) {
            if !r.claim_start() {
                started.push(r);
                continue;
            }
            match self.platform.start_runner(r.clone()) {
                Ok(()) => started.push(r),
                Err(e) => {
                    r.start_failed();
                    log::warn!("host: {e}; runner skipped");
                }
            }
        }
        // Keep indices dense: vCPUs refer to runners by index.
        self.runners = started
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                r.set_index(i);
                r
            })
            .collect();
    }

    /// Starts the loop of every runner that has vCPUs bound but parked. A start the platform
    /// refuses (the previous loop is still finishing) is retried on the next call; this runs
    /// after binding and on every [`Host::step`].
    fn ensure_runners(&self) {
        for r in &self.runners {
            if r.bound_vcpus() == 0 || r.is_running() || !r.claim_start() {
                continue;
            }
            match self.platform.start_runner(r.clone()) {
                Ok(()) => {}
                Err(e) => {
                    r.start_failed();
                    if !matches!(e, PlatformError::RunnerBusy(_)) && !r.take_start_error_logged() {
                        log::warn!("host: restarting runner: {e}");
                    }
                }
            }
        }
    }

    /// Creates a TD and starts its build. On any error nothing is left allocated.
    pub fn create_td(&mut self, spec: TdSpec, now_ms: u64) -> Result<TdInfo, HostError> {
        self.start_runners();
        self.validate_spec(&spec)?;
        let image = self
            .images
            .get(&spec.image)
            .ok_or(HostError::ImageNotFound)?;
        let layout = TdMemoryLayout::new(&image.metadata, spec.memory_mib).map_err(|_| {
            HostError::InvalidSpec {
                field: "memory_mib",
                reason: "the firmware's sections do not fit this memory size",
            }
        })?;
        let plan = BuildPlan::new(&layout).map_err(|_| HostError::InvalidSpec {
            field: "memory_mib",
            reason: "the TD HOB for this memory size does not fit the firmware's TD_HOB section",
        })?;
        // Private GPAs: RAM and the firmware sections outside it.
        let mut gpa_ranges: Vec<(u64, u64)> = layout
            .ram_ranges()
            .iter()
            .map(|r| (r.start.0, r.end.0))
            .collect();
        for (s, p) in layout.sections().iter().zip(layout.placements()) {
            if *p == SectionPlacement::FirmwareWindow {
                gpa_ranges.push((s.memory_address.0, s.memory_end()));
            }
        }
        let reservation = TdReservation::new(
            &self.pool,
            &self.hkids,
            &gpa_ranges,
            spec.huge_pages,
            spec.vcpus,
            ControlSizes {
                tdcs_pages: self.limits.tdcs_pages,
                tdvps_pages: self.limits.tdvps_pages,
            },
        )?;
        // TDH.MNG.CREATE: until it succeeds the module knows nothing of the TD, and dropping
        // the reservation gives everything back.
        let (Some(tdr), Some(hkid)) = (reservation.tdr(), reservation.hkid()) else {
            return Err(HostError::OutOfMemory);
        };
        if let Err(e) = RetryBusy(&*self.main).mng_create(tdr, Hkid(hkid)) {
            log::error!("host: TDH.MNG.CREATE failed: {e}");
            return Err(HostError::Module(e));
        }
        let Some(reserved) = reservation.consume() else {
            return Err(HostError::OutOfMemory);
        };
        let (control, backing, cache) = (
            reserved.control,
            Arc::new(reserved.backing),
            Arc::new(reserved.cache),
        );
        let id = TdId(self.next_td);
        self.next_td += 1;
        let parts = TdParts {
            id,
            hkid,
            control,
            backing,
            cache,
            seam_counters: Arc::new(SeamcallCounters::new()),
        };
        // Everything below runs on a TD the module knows: failures tear it down.
        let result = self.init_td(&spec, &parts, plan, now_ms);
        match result {
            Ok(()) => {
                let _ = self.apply(id, TdEvent::BeginBuild, now_ms);
                self.td(id)
            }
            Err(e) => {
                log::error!("host: creating TD {} ({}) failed: {e}", id.0, spec.name);
                if let Some(mut td) = self.tds.remove(&id) {
                    for r in &self.runners {
                        r.unbind_td(&td.shared);
                    }
                    let _ = self.teardown(&mut td);
                    self.leaked_pages += td.leaked_pages;
                } else {
                    // init_td failed before the TD object existed: tear down the bare TD.
                    let mut bare = self.bare_td(&spec, &parts);
                    let _ = self.teardown(&mut bare);
                    self.leaked_pages += bare.leaked_pages;
                }
                Err(e)
            }
        }
    }

    /// The TD object for a TD that failed before its vCPUs existed (for teardown).
    fn bare_td(&self, spec: &TdSpec, parts: &TdParts) -> Td {
        let vcpus = Arc::new(TdVcpus {
            vcpus: Vec::new(),
            block: core::sync::atomic::AtomicU32::new(0),
            kicker: self.kicker(),
        });
        let sept = self.sept_manager(parts, &vcpus);
        self.td_object(spec, parts, vcpus, sept, 0)
    }

    fn kicker(&self) -> Kicker {
        match &self.module {
            HostModule::Software(m) => Kicker::Software(m.clone(), self.platform.clone()),
            HostModule::Hardware(_) => Kicker::Hardware(self.platform.clone()),
        }
    }

    fn sept_manager(&self, parts: &TdParts, vcpus: &Arc<TdVcpus>) -> SeptManager<dyn Seamcall> {
        let counters = &parts.seam_counters;
        // The fault and unmap paths run on any CPU; the module sees them as CPU 0's calls
        // (hardware: the CPU that makes them).
        let module: Arc<dyn Seamcall> = Arc::new(Counted {
            counters: counters.clone(),
            inner: self
                .module
                .seamcall_on(0)
                .unwrap_or_else(|| self.main.clone()),
        });
        SeptManager::new(
            module,
            TdSeptInfo {
                tdr: parts.control.tdr,
                hkid: Hkid(parts.hkid),
                gpaw: Gpaw::Bits48,
            },
            SeptBackends {
                memory: parts.backing.clone(),
                pool: parts.cache.clone(),
                vcpus: Arc::new(VcpuGate(vcpus.clone())),
                phys: self.phys.clone(),
            },
            SeptConfig {
                stat_slots: self.runners.len() + 1,
                ..SeptConfig::default()
            },
        )
    }

    fn td_object(
        &self,
        spec: &TdSpec,
        parts: &TdParts,
        vcpus: Arc<TdVcpus>,
        sept: SeptManager<dyn Seamcall>,
        created_vcpus: usize,
    ) -> Td {
        let (id, hkid, control) = (parts.id, parts.hkid, &parts.control);
        let (backing, cache) = (parts.backing.clone(), parts.cache.clone());
        let seam_counters = parts.seam_counters.clone();
        let console = Arc::new(ConsoleRing::new(self.config.console_ring_bytes));
        let shared = Arc::new(TdShared {
            id,
            tdr: control.tdr,
            run: core::sync::atomic::AtomicU8::new(RUN_NOT_STARTED),
            vcpus,
            sept,
            backing: backing.clone(),
            io: td_port_devices(&console),
            mmio: MmioBus::new(),
            console,
            counters: TdCounterCells::default(),
            outcome: spin::Mutex::new(None),
            shared_bit: 47,
            huge_pages: spec.huge_pages,
            idle_wakeup_ms: self.config.idle_wakeup_ms,
            notify_vector: core::sync::atomic::AtomicU8::new(0),
        });
        Td {
            shared,
            lifecycle: TdLifecycle::new(),
            name: spec.name.clone(),
            image: spec.image.clone(),
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            attributes: spec.attributes,
            created_ms: self.platform.now_ms(),
            hkid,
            hkid_live: true,
            tdr: control.tdr,
            tdcs: control.tdcs.clone(),
            vcpu_pages: control.vcpus.iter().take(created_vcpus).cloned().collect(),
            unused_control: control
                .vcpus
                .iter()
                .skip(created_vcpus)
                .flat_map(|(p, cx)| core::iter::once(*p).chain(cx.iter().copied()))
                .collect(),
            backing,
            sept_cache: cache,
            seam_counters,
            build: None,
            teardown: None,
            stop_deadline: None,
            destroy_requested: false,
            destroy_started_ms: 0,
            reason: None,
            mrtd: None,
            leaked_pages: 0,
        }
    }

    /// KEY.CONFIG per package, ADDCX, MNG.INIT, VP.CREATE/ADDCX/INIT per vCPU, the S-EPT
    /// manager, runner binding and the build job. On error the caller tears the TD down.
    fn init_td(
        &mut self,
        spec: &TdSpec,
        parts: &TdParts,
        plan: BuildPlan,
        now_ms: u64,
    ) -> Result<(), HostError> {
        let (id, control) = (parts.id, &parts.control);
        let tdr = control.tdr;
        let main_handle = self.main.clone();
        let main = RetryBusy(&*main_handle);
        for cpu in self.cpus.one_cpu_per_package() {
            self.call_on_cpu(cpu, &|m| m.mng_key_config(tdr).map(drop))?;
        }
        for page in &control.tdcs {
            main.mng_addcx(tdr, *page).map_err(HostError::Module)?;
        }
        let params = self.td_params(spec);
        self.phys.write(self.td_params_page, &params.to_bytes());
        main.mng_init(tdr, self.td_params_page)
            .map_err(HostError::Module)?;
        // vCPUs, each bound to a runner round-robin.
        let mut vcpus = Vec::new();
        let mut created = 0usize;
        let mut fail: Option<HostError> = None;
        for (i, (tdvpr, tdcx)) in control.vcpus.iter().enumerate() {
            if let Err(e) = main.vp_create(tdr, *tdvpr) {
                fail = Some(HostError::Module(e));
                break;
            }
            created += 1;
            let rest = || -> Result<(), SeamError> {
                for page in tdcx {
                    main.vp_addcx(*tdvpr, *page)?;
                }
                // x2APIC ID = vCPU index (TDH.VP.INIT version 1); `i` < the TD's vCPU count.
                main.vp_init(*tdvpr, 0, u32::try_from(i).unwrap_or(u32::MAX))
            };
            if let Err(e) = rest() {
                fail = Some(HostError::Module(e));
                break;
            }
            let runner = self.next_runner % self.runners.len().max(1);
            self.next_runner += 1;
            let cpu = self.runners.get(runner).map(|r| r.cpu()).unwrap_or(0);
            vcpus.push(VcpuShared::new(i as u32, *tdvpr, runner, cpu));
        }
        let vcpus = Arc::new(TdVcpus {
            vcpus,
            block: core::sync::atomic::AtomicU32::new(0),
            kicker: self.kicker(),
        });
        let sept = self.sept_manager(parts, &vcpus);
        let mut td = self.td_object(spec, parts, vcpus, sept, created);
        td.created_ms = now_ms;
        if let Some(e) = fail {
            self.tds.insert(id, td);
            return Err(e);
        }
        if let (Some(program), Some(m)) = (&spec.workload, self.module.software())
            && let Some((tdvpr, _)) = control.vcpus.first()
            && m.bind_guest_program(*tdvpr, program).is_err()
        {
            // The module was asked at create time (`WorkloadNeedsEmulation`); a refusal here
            // is a program of another engine's kind.
            self.tds.insert(id, td);
            return Err(HostError::InvalidSpec {
                field: "workload",
                reason: "the TDX module's guest engine does not run this workload",
            });
        }
        for v in td.shared.vcpus.vcpus.iter() {
            if let Some(r) = self.runners.get(v.runner) {
                r.bind(runner::Slot {
                    td: td.shared.clone(),
                    vcpu: v.index as usize,
                });
            }
        }
        self.ensure_runners();
        td.build = Some(build::BuildJob::new(plan));
        self.tds.insert(id, td);
        Ok(())
    }

    fn td_counters(&self, td: &Td) -> TdCounters {
        let s = td.shared.sept.stats();
        let c = &td.shared.counters;
        let ld = |a: &core::sync::atomic::AtomicU64| a.load(core::sync::atomic::Ordering::Relaxed);
        TdCounters {
            exits: ld(&c.exits),
            ept_violations: ld(&c.ept_violations),
            faults: s.faults,
            busy_retries: s.retries_busy + s.zap_busy_retries + ld(&c.busy_retries),
            conversions: ld(&c.conversions),
            demotions: s.demotions,
            leaked_pages: td.leaked_pages + s.leaked_pages_4k + s.leaked_sept_pages,
            console_bytes: td.shared.console.total(),
        }
    }

    fn td_info(&self, id: TdId, td: &Td) -> TdInfo {
        let s = td.shared.sept.stats();
        let pages_2m = (s.mapped_2m + s.promotions).saturating_sub(s.unmapped_2m + s.demotions);
        let pages_4k =
            (s.mapped_4k + 512 * s.demotions).saturating_sub(s.unmapped_4k + 512 * s.promotions);
        TdInfo {
            id,
            name: td.name.clone(),
            image: td.image.clone(),
            state: td.lifecycle.state(),
            vcpus: td.vcpus,
            memory_mib: td.memory_mib,
            attributes: td.attributes,
            huge_pages: td.shared.huge_pages,
            build_progress: td.build.as_ref().map(|b| (b.next_page(), b.page_count())),
            mapped: MappedPages {
                pages_4k,
                pages_2m,
                pages_1g: 0,
            },
            counters: self.td_counters(td),
            reason: td.reason.clone(),
            created_ms: td.created_ms,
        }
    }

    /// Every TD.
    pub fn tds(&self) -> Vec<TdInfo> {
        self.tds
            .iter()
            .map(|(id, td)| self.td_info(*id, td))
            .collect()
    }

    /// One TD.
    pub fn td(&self, id: TdId) -> Result<TdInfo, HostError> {
        self.tds
            .get(&id)
            .map(|td| self.td_info(id, td))
            .ok_or(HostError::TdNotFound(id))
    }

    /// Runnable → Running (the runners start entering its vCPUs).
    pub fn start_td(&mut self, id: TdId, now_ms: u64) -> Result<Transition, HostError> {
        let td = self.tds.get(&id).ok_or(HostError::TdNotFound(id))?;
        match td.lifecycle.state() {
            TdState::Running => return Ok(Transition::AlreadyDone),
            TdState::Bugged => return Err(HostError::TdBugged(id)),
            _ => {}
        }
        self.apply(id, TdEvent::Start, now_ms)?;
        if let Some(td) = self.tds.get(&id) {
            td.shared
                .run
                .store(RUN_GO, core::sync::atomic::Ordering::SeqCst);
            for v in &td.shared.vcpus.vcpus {
                self.platform.kick_cpu(v.cpu);
            }
        }
        Ok(Transition::Started)
    }

    /// Stops a TD. Graceful: asks the guest — every vCPU that halts (an idle guest, or a
    /// declared workload that has finished) powers off — and forces the rest after
    /// `timeout_ms`. Forced: stop entering now and kick the vCPUs out.
    pub fn stop_td(
        &mut self,
        id: TdId,
        mode: StopMode,
        now_ms: u64,
    ) -> Result<Transition, HostError> {
        let td = self.tds.get_mut(&id).ok_or(HostError::TdNotFound(id))?;
        match td.lifecycle.state() {
            TdState::Stopped => Ok(Transition::AlreadyDone),
            TdState::Stopping => {
                if mode.force {
                    td.shared.halt();
                }
                Ok(Transition::Started)
            }
            TdState::Running => {
                if mode.force {
                    td.shared.halt();
                } else {
                    td.shared
                        .run
                        .store(RUN_GRACEFUL, core::sync::atomic::Ordering::SeqCst);
                    td.shared.vcpus.kick_all();
                    td.stop_deadline = Some(now_ms.saturating_add(mode.timeout_ms));
                }
                self.apply(id, TdEvent::RequestStop, now_ms)?;
                Ok(Transition::Started)
            }
            TdState::Runnable => {
                td.shared.halt();
                self.apply(id, TdEvent::RequestStop, now_ms)?;
                Ok(Transition::Started)
            }
            from => Err(HostError::InvalidTransition {
                from,
                action: "stop",
            }),
        }
    }

    /// Any state → Destroying → removed. A building TD is failed first; a running one is
    /// force-stopped first. Teardown runs in [`Host::step`].
    pub fn destroy_td(&mut self, id: TdId, now_ms: u64) -> Result<Transition, HostError> {
        let td = self.tds.get_mut(&id).ok_or(HostError::TdNotFound(id))?;
        if td.destroy_requested {
            return Ok(Transition::AlreadyDone);
        }
        td.destroy_requested = true;
        td.destroy_started_ms = now_ms;
        td.shared.halt();
        match td.lifecycle.state() {
            TdState::Destroying | TdState::Destroyed => return Ok(Transition::AlreadyDone),
            TdState::Building => {
                td.build = None;
                if td.reason.is_none() {
                    td.reason = Some(String::from("destroyed while building"));
                }
                self.apply(id, TdEvent::Fail, now_ms)?;
                self.apply(id, TdEvent::Destroy, now_ms)?;
            }
            TdState::Running => {
                self.apply(id, TdEvent::RequestStop, now_ms)?;
            }
            TdState::Stopping => {}
            _ => {
                self.apply(id, TdEvent::Destroy, now_ms)?;
            }
        }
        Ok(Transition::Started)
    }

    /// Measurement registers (read from the module).
    pub fn measurement(&self, id: TdId) -> Result<Measurement, HostError> {
        use tdx_abi::metadata::td as f;
        let td = self.tds.get(&id).ok_or(HostError::TdNotFound(id))?;
        if td.lifecycle.state() == TdState::Destroying {
            return Err(HostError::InvalidTransition {
                from: TdState::Destroying,
                action: "measure",
            });
        }
        let rd48 = |base: u64| -> Result<[u8; 48], HostError> {
            let mut out = [0u8; 48];
            for (i, chunk) in out.chunks_mut(8).enumerate() {
                let v = RetryBusy(&*self.main)
                    .mng_rd(td.tdr, base + i as u64)
                    .map_err(HostError::Module)?;
                chunk.copy_from_slice(&v.to_le_bytes());
            }
            Ok(out)
        };
        let finalized = td.mrtd.is_some();
        Ok(Measurement {
            mrtd: if finalized { rd48(f::MRTD)? } else { [0; 48] },
            rtmr: [
                rd48(f::RTMR)?,
                rd48(f::RTMR + f::MR_ELEMENTS)?,
                rd48(f::RTMR + 2 * f::MR_ELEMENTS)?,
                rd48(f::RTMR + 3 * f::MR_ELEMENTS)?,
            ],
            mrconfigid: rd48(f::MRCONFIGID)?,
            mrowner: rd48(f::MROWNER)?,
            mrownerconfig: rd48(f::MROWNERCONFIG)?,
            finalized,
        })
    }

    /// Console output from `offset`.
    pub fn console(
        &self,
        id: TdId,
        offset: u64,
        max_bytes: usize,
    ) -> Result<ConsoleChunk, HostError> {
        let td = self.tds.get(&id).ok_or(HostError::TdNotFound(id))?;
        let (start, data) = td.shared.console.read(offset, max_bytes);
        let next_offset = start + data.len() as u64;
        Ok(ConsoleChunk {
            offset: start,
            data,
            next_offset,
        })
    }

    // ------------------------------------------------------------------ jobs

    /// Advances long jobs (TD builds, stops, teardowns) by a bounded slice and applies what
    /// the runners reported; returns true if work remains.
    pub fn step(&mut self, now_ms: u64) -> bool {
        self.ensure_runners();
        let ids: Vec<TdId> = self.tds.keys().copied().collect();
        let mut work = false;
        for id in ids {
            work |= self.step_td(id, now_ms);
        }
        work
    }

    fn step_td(&mut self, id: TdId, now: u64) -> bool {
        let Some(td) = self.tds.get(&id) else {
            return false;
        };
        let state = td.lifecycle.state();
        match state {
            TdState::Building => {
                self.build_step(id, now);
                true
            }
            TdState::Running | TdState::Stopping => {
                let quiescent = td.shared.quiescent();
                if let Some(outcome) = td.shared.outcome() {
                    if !quiescent {
                        return true;
                    }
                    let reason = alloc::format!("{outcome}");
                    match outcome {
                        td::GuestOutcome::Shutdown => {
                            let _ = self.apply(id, TdEvent::GuestShutdown, now);
                        }
                        td::GuestOutcome::Bugged(_) => self.bug_td(id, reason, now),
                        _ => self.fail_td(id, reason, now),
                    }
                    return true;
                }
                if state == TdState::Stopping {
                    if quiescent {
                        let _ = self.apply(id, TdEvent::VcpusStopped, now);
                    } else if td.stop_deadline.is_some_and(|d| now >= d)
                        && td.shared.run.load(core::sync::atomic::Ordering::SeqCst) != RUN_HALT
                    {
                        log::info!("host: TD {}: graceful stop timed out; forcing", id.0);
                        td.shared.halt();
                    }
                    return true;
                }
                false
            }
            TdState::Destroying => {
                self.teardown_step(id, now);
                true
            }
            _ => {
                if td.destroy_requested {
                    let _ = self.apply(id, TdEvent::Destroy, now);
                    return true;
                }
                false
            }
        }
    }

    /// TDX KeyIDs free for new TDs.
    pub fn free_hkids(&self) -> u32 {
        self.hkids.free()
    }
}

/// The port-I/O devices of a new TD: its console UART on COM1.
fn td_port_devices(console: &Arc<ConsoleRing>) -> PortIoBus {
    let mut io = PortIoBus::new();
    let uart = Arc::new(Serial16550::new(console.clone()));
    // The first device on an empty bus: no range can conflict.
    let _ = io.insert(COM1_BASE, UART_PORTS, uart);
    io
}
