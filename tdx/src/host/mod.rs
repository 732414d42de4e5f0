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

use crate::abi::{Hpa, Leaf};
use crate::emu::EmulatedModule;
use crate::phys::PhysMemory;
use crate::seamcall::{ModuleKind, SeamError, Seamcall};
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
    /// The software module; SEAMCALLs for logical CPU `n` go through its LP handle `n`.
    Emulated(Arc<EmulatedModule>),
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
}

/// What a runner loop should do after one [`Runner::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunnerPoll {
    /// Work was done; poll again at once.
    Busy,
    /// Nothing to do right now; the platform may pause briefly (≤ 1 ms) or until kicked.
    Idle,
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
    /// [`RunnerPoll::Exit`], pausing briefly on [`RunnerPoll::Idle`].
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
}

pub mod runner;
#[cfg(feature = "testing")]
pub mod testing;

/// The runtime façade. See the module docs.
pub struct Host {
    module: HostModule,
    phys: Arc<dyn PhysMemory>,
    platform: Arc<dyn Platform>,
    config: HostConfig,
}

impl Host {
    /// Bring-up: module init (SYS.INIT, LP.INIT per CPU, TDMRs/PAMT, SYS.CONFIG, KEY.CONFIG
    /// per package, TDMR.INIT) + pool.
    pub fn new(
        module: HostModule,
        phys: Arc<dyn PhysMemory>,
        platform: Arc<dyn Platform>,
        config: HostConfig,
    ) -> Result<Host, HostError> {
        let _ = Leaf::SysInit;
        Ok(Host {
            module,
            phys,
            platform,
            config,
        })
    }

    /// Host-wide information.
    pub fn info(&self) -> HostInfo {
        HostInfo {
            module_kind: self.module_kind().as_str(),
            module_version: String::new(),
            max_vcpus_per_td: 0,
            hkids_total: 0,
            hkids_free: 0,
            cpus: self.platform.cpus(),
            runners: 0,
            memory_total: self.config.memory.pool_size,
            memory_free: 0,
            tds_by_state: TdState::ALL.iter().map(|s| (*s, 0)).collect(),
        }
    }

    /// Which module is behind the host.
    pub fn module_kind(&self) -> ModuleKind {
        match &self.module {
            HostModule::Hardware(_) => ModuleKind::Hardware,
            HostModule::Emulated(_) => ModuleKind::Emulated,
        }
    }

    /// Advances long jobs by a bounded slice; returns true if work remains.
    pub fn step(&mut self, now_ms: u64) -> bool {
        let _ = (now_ms, &self.phys);
        false
    }

    /// Starts a streamed image upload of `size` bytes under `name`.
    pub fn begin_image_upload(&mut self, name: &str, size: u64) -> Result<UploadId, HostError> {
        let _ = (name, size);
        Err(HostError::OutOfMemory)
    }

    /// Appends `data` to an upload.
    pub fn write_image_chunk(&mut self, id: UploadId, data: &[u8]) -> Result<(), HostError> {
        let _ = (id, data);
        Err(HostError::UploadNotFound)
    }

    /// Finishes an upload: validates the TDVF image, computes SHA-384 and the expected MRTD.
    pub fn finish_image_upload(&mut self, id: UploadId) -> Result<ImageInfo, HostError> {
        let _ = id;
        Err(HostError::UploadNotFound)
    }

    /// Abandons an upload and frees its memory.
    pub fn abort_image_upload(&mut self, id: UploadId) {
        let _ = id;
    }

    /// Uploaded images.
    pub fn images(&self) -> Vec<ImageInfo> {
        Vec::new()
    }

    /// One image.
    pub fn image(&self, name: &str) -> Result<ImageInfo, HostError> {
        let _ = name;
        Err(HostError::ImageNotFound)
    }

    /// Deletes an image that no TD uses.
    pub fn delete_image(&mut self, name: &str) -> Result<(), HostError> {
        let _ = name;
        Err(HostError::ImageNotFound)
    }

    /// Creates a TD and starts its build.
    pub fn create_td(&mut self, spec: TdSpec, now_ms: u64) -> Result<TdInfo, HostError> {
        let _ = (spec, now_ms);
        Err(HostError::OutOfMemory)
    }

    /// Every TD.
    pub fn tds(&self) -> Vec<TdInfo> {
        Vec::new()
    }

    /// One TD.
    pub fn td(&self, id: TdId) -> Result<TdInfo, HostError> {
        Err(HostError::TdNotFound(id))
    }

    /// Runnable → Running.
    pub fn start_td(&mut self, id: TdId, now_ms: u64) -> Result<Transition, HostError> {
        let _ = now_ms;
        Err(HostError::TdNotFound(id))
    }

    /// Running → Stopping → Stopped.
    pub fn stop_td(
        &mut self,
        id: TdId,
        mode: StopMode,
        now_ms: u64,
    ) -> Result<Transition, HostError> {
        let _ = (mode, now_ms);
        Err(HostError::TdNotFound(id))
    }

    /// Any state → Destroying → removed.
    pub fn destroy_td(&mut self, id: TdId, now_ms: u64) -> Result<Transition, HostError> {
        let _ = now_ms;
        Err(HostError::TdNotFound(id))
    }

    /// Measurement registers.
    pub fn measurement(&self, id: TdId) -> Result<Measurement, HostError> {
        Err(HostError::TdNotFound(id))
    }

    /// Console output from `offset`.
    pub fn console(
        &self,
        id: TdId,
        offset: u64,
        max_bytes: usize,
    ) -> Result<ConsoleChunk, HostError> {
        let _ = (offset, max_bytes);
        Err(HostError::TdNotFound(id))
    }

    /// Events with id > `since`, at most `max`.
    pub fn events_since(&self, since: u64, max: usize) -> Vec<Event> {
        let _ = (since, max);
        Vec::new()
    }

    /// Id of the newest event (0 if none).
    pub fn last_event_id(&self) -> u64 {
        0
    }

    /// Counters.
    pub fn metrics(&self) -> HostMetrics {
        HostMetrics::default()
    }
}
