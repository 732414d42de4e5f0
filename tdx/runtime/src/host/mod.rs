//! The runtime façade: one [`Host`] object that brings the TDX module up, owns the TD memory
//! pool, the uploaded firmware images, the TDs and their vCPU runners, and answers the
//! management API.
//!
//! Everything the API calls runs on the main CPU and returns at once; long work (a TD build,
//! a graceful stop, a teardown) is a job advanced by [`Host::step`], which the appliance main
//! loop calls between network polls.
//!
//! Where things live:
//!
//! * this file: the public types ([`HostModule`], [`HostConfig`], [`PlatformMemory`],
//!   [`Platform`], [`HostError`]), the [`Host`] struct, [`Host::new`], the image methods (which
//!   delegate to the image store and record events), runner start-up and [`Drop`];
//! * API types ([`types`]); module bring-up (`bringup`) and its record (`steps`); SEAMCALL adapters and counters
//!   (`seam`);
//! * the image store (`images`), the KeyID allocator (`hkids`), the event log (`events`);
//! * TD creation and its `TdReservation`, which gives the KeyID and every page back on drop
//!   until TDH.MNG.CREATE succeeds (`create`);
//! * the lifecycle: state changes, start/stop/destroy and [`Host::step`] (`lifecycle`), the
//!   stepped jobs it advances (`build`, `teardown`);
//! * read-only views: host info, metrics, TDs, measurements, console (`query`);
//! * what the runners share with the main CPU: TD memory ([`memory`]) and per-TD state
//!   ([`td`]); on runner CPUs, the runner loop ([`runner`]), exits ([`exit`]), TDVMCALLs
//!   ([`tdvmcall`]) and host-emulated MSRs ([`msr`]).

pub mod types;

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use tdx_abi::Hpa;
use tdx_abi::phys::PhysMemory;
use tdx_abi::seamcall::{ModuleKind, SeamError, Seamcall};
use tdx_abi::software::SoftwareModuleHooks;

use crate::devices::acpi_pm::{
    self, AcpiPmBlock, PIIX4_PM_BASE, PM_BLOCK_PORTS, PowerRequests, ResetControl,
};
use crate::devices::cmos::{CMOS_BASE, CMOS_PORTS, Cmos};
use crate::devices::pci;
use crate::devices::serial::{COM1_BASE, Serial16550, UART_PORTS};
use crate::devices::{DeviceClock, MmioBus, PortIoBus, PortIoDevice};
use crate::td::lifecycle::TdState;
use crate::tdvf::TdvfError;

pub use steps::{BringupLog, BringupStage, BringupStep, NOT_REACHED, StepStatus};
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

/// What a runner loop should do after one [`runner::Runner::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunnerPoll {
    /// Work was done; poll again at once.
    Busy,
    /// Nothing to do right now; the platform may pause up to `sleep_ms` (1 when something
    /// may become runnable any moment, up to 10 when every vCPU halts until later) or until
    /// kicked.
    Idle {
        /// How long the runner may sleep.
        sleep_ms: u64,
    },
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
    /// Monotonic nanoseconds since host start (the virtual APIC timers count on it); by
    /// default [`Platform::now_ms`] scaled.
    fn now_ns(&self) -> u64 {
        self.now_ms().saturating_mul(1_000_000)
    }
    /// The TSC (which TDs see unscaled and unoffset) and its ticks per millisecond, for the
    /// guests' TSC-deadline timers. By default a 1 GHz counter on [`Platform::now_ns`].
    fn tsc(&self) -> (u64, u64) {
        (self.now_ns(), 1_000_000)
    }
    /// Writes back and invalidates the caches of every logical CPU (WBINVD on each), as
    /// the TDX host must between TDH.SYS.CONFIG and TDH.SYS.KEY.CONFIG so that no cache line
    /// of the global KeyID's memory is dirty under another key (Linux
    /// `arch/x86/virt/vmx/tdx/tdx.c`, `config_global_keyid`). Hosts without TDX hardware
    /// (the software module, host tests) need nothing: the default does nothing.
    fn write_back_caches(&self) -> Result<(), PlatformError> {
        Ok(())
    }
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
    /// Sends CPU `cpu` the posted-interrupt notification vector
    /// ([`posted::POSTED_INTERRUPT_VECTOR`]): a vCPU of the hardware module in the TD there
    /// takes its posted interrupts without exiting, a runner about to enter one sends it to
    /// itself. By default [`Platform::kick_cpu`] (platforms without TDX hardware).
    fn notify_posted_interrupt(&self, cpu: u32) {
        self.kick_cpu(cpu);
    }
    /// Invalidates this CPU's cached translations of guest-physical addresses, for every TD
    /// (hardware: INVEPT all-context). A runner calls it before entering a vCPU whose shared
    /// mappings shrank since its last entry: the TDX module flushes a TD's translations only
    /// when its TLB epoch moved or another vCPU ran on the CPU, and KVM flushes the shared
    /// EPT itself with a global INVEPT (`tdx_flush_tlb_current`, `ept_sync_global`). By
    /// default nothing (no VMX).
    fn flush_guest_translations(&self) {}
    /// The physical address of host memory at address `virt`, for structures the TDX module
    /// reads by physical address (posted-interrupt descriptors). By default the address
    /// itself: the appliance runs identity-mapped, as UEFI sets it up.
    fn physical_address_of(&self, virt: u64) -> u64 {
        virt
    }
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
    /// The uploaded file is not a usable TDVF image (nor a kernel or an initramfs).
    #[error("not a TDVF image, Linux kernel or initramfs: {0}")]
    InvalidImage(TdvfError),
    /// The uploaded file has a Linux boot header this host cannot boot.
    #[error("not a bootable Linux kernel: {0}")]
    InvalidKernel(crate::linux::KernelError),
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
pub mod call_slot;
mod create;
mod events;
pub mod exit;
mod hkids;
mod images;
mod lifecycle;
pub mod memory;
pub mod msr;
pub mod posted;
mod query;
pub mod runner;
mod seam;
pub mod shared_ept;
mod steps;
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
use tdx_abi::td_params::{EPTP_MEMTYPE_WB, TdParams};
use tdx_abi::{Hkid, PAGE_SIZE_4K};

use bringup::{CpuCallError, CpuCaller, CpuOp, ModuleLimits};
use create::ControlPages;
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
    /// What the runners see of the TD.
    shared: Arc<TdShared>,
    /// The state machine.
    lifecycle: TdLifecycle,
    /// The TD's name.
    name: String,
    /// The firmware image it was built from.
    image: String,
    /// The kernel (and initramfs, command line) its firmware boots, if any.
    linux: Option<LinuxBoot>,
    /// vCPUs requested.
    vcpus: u32,
    /// Memory requested (MiB).
    memory_mib: u64,
    /// TD attributes.
    attributes: u64,
    /// When it was created (platform ms).
    created_ms: u64,
    /// What runs its vCPUs.
    engine: GuestEngine,
    /// Its KeyID.
    hkid: u16,
    /// The KeyID is still the TD's (until TDH.MNG.KEY.FREEID).
    hkid_live: bool,
    /// The TD root page.
    tdr: Hpa,
    /// The TDCS pages.
    tdcs: Vec<Hpa>,
    /// Per vCPU: TDVPR and TDCX pages.
    vcpu_pages: Vec<(Hpa, Vec<Hpa>)>,
    /// Control pages of vCPUs that were never created in the module.
    unused_control: Vec<Hpa>,
    /// Private memory.
    backing: Arc<TdBacking>,
    /// Pages for the S-EPT.
    sept_cache: Arc<SeptPageCache>,
    /// SEAMCALLs made for this TD.
    seam_counters: Arc<SeamcallCounters>,
    /// The build in progress (state `Building`).
    build: Option<build::BuildJob>,
    /// The teardown in progress (state `Destroying`).
    teardown: Option<teardown::TeardownJob>,
    /// When a graceful stop turns into a forced one.
    stop_deadline: Option<u64>,
    /// Destroy was asked; the TD goes to `Destroying` as soon as its state allows.
    destroy_requested: bool,
    /// When destroy was asked (bounds the wait for the runners to park its vCPUs).
    destroy_started_ms: u64,
    /// The teardown had to flush its vCPUs from the main CPU, which was logged (once).
    teardown_flush_warned: bool,
    /// Why it failed or is bugged.
    reason: Option<String>,
    /// The MRTD once the build finalized it.
    mrtd: Option<[u8; 48]>,
    /// Pages the module did not give back.
    leaked_pages: u64,
}

/// What a TD holds once TDH.MNG.CREATE succeeded (from a consumed `TdReservation`); on a
/// later failure the teardown path gives it back.
struct TdParts {
    /// The TD's id.
    id: TdId,
    /// Its KeyID.
    hkid: u16,
    /// TDR, TDCS and the vCPUs' pages.
    control: ControlPages,
    /// Private memory.
    backing: Arc<TdBacking>,
    /// Pages for the S-EPT.
    cache: Arc<SeptPageCache>,
    /// SEAMCALLs made for this TD.
    seam_counters: Arc<SeamcallCounters>,
    /// Guest RAM below and above 4 GiB (bytes), as the TD's CMOS reports it.
    ram_split: (u64, u64),
    /// The TD's copy of its disk image, until the TD object takes it.
    disk: spin::Mutex<Option<crate::devices::virtio::blk::Disk>>,
}

/// What TDs that are gone leave in the host's metrics: their SEAMCALL counts, S-EPT faults
/// and BUSY retries, and the pages the module did not give back.
#[derive(Default)]
struct Retired {
    /// SEAMCALLs by leaf and outcome.
    seamcalls: Vec<(&'static str, &'static str, u64)>,
    /// S-EPT faults handled.
    faults: u64,
    /// BUSY answers retried.
    busy: u64,
    /// Pages leaked (also those of TDs whose creation failed).
    leaked_pages: u64,
}

impl Retired {
    /// Adds the SEAMCALL counts and S-EPT totals of a TD that is going away.
    fn add_counters(&mut self, td: &Td) {
        let stats = td.shared.sept.stats();
        td.seam_counters.add_to(&mut self.seamcalls);
        self.faults += stats.faults;
        self.busy += stats.retries_busy + stats.zap_busy_retries;
    }
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
    retired: Retired,
    /// How bring-up went, step by step.
    bringup: BringupLog,
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
    /// per package, TDMR.INIT) + pool + one runner loop per runner CPU. The steps are in
    /// [`Host::bringup_steps`]; [`Host::new_recorded`] also gives them on failure.
    pub fn new(
        module: HostModule,
        phys: Arc<dyn PhysMemory>,
        platform: Arc<dyn Platform>,
        config: HostConfig,
    ) -> Result<Host, HostError> {
        Host::new_recorded(module, phys, platform, config, &mut BringupLog::new())
    }

    /// [`Host::new`], recording each bring-up step in `log` after the steps the platform
    /// recorded there already: on success the host keeps the whole log (reported by
    /// [`Host::info`]); on failure `log` ends with the failed step and the steps not reached
    /// (skipped).
    pub fn new_recorded(
        module: HostModule,
        phys: Arc<dyn PhysMemory>,
        platform: Arc<dyn Platform>,
        config: HostConfig,
        log: &mut BringupLog,
    ) -> Result<Host, HostError> {
        let host = Host::bring_up(module, phys, platform, config, log);
        match &host {
            Ok(host) => *log = host.bringup.clone(),
            Err(_) => log.skip_remaining(),
        }
        host
    }

    fn bring_up(
        module: HostModule,
        phys: Arc<dyn PhysMemory>,
        platform: Arc<dyn Platform>,
        config: HostConfig,
        log: &mut BringupLog,
    ) -> Result<Host, HostError> {
        let mem = &config.memory;
        let pool =
            MemoryPool::new(mem.pool_base, mem.pool_size).map_err(|_| HostError::InvalidSpec {
                field: "td_memory",
                reason: "the TD memory range is empty or not 4 KiB aligned",
            });
        let pool = match pool {
            Ok(pool) if mem.num_hkids >= 2 => Arc::new(pool),
            Ok(_) => {
                let e = HostError::InvalidSpec {
                    field: "hkids",
                    reason: "need the global KeyID and at least one TD KeyID",
                };
                log.failed(BringupStage::Pool, alloc::format!("{e}"));
                return Err(e);
            }
            Err(e) => {
                log.failed(BringupStage::Pool, alloc::format!("{e}"));
                return Err(e);
            }
        };
        log.ok(
            BringupStage::Pool,
            alloc::format!(
                "TD memory pool {} MiB at {:#x}; KeyIDs {} to {}",
                mem.pool_size >> 20,
                mem.pool_base.0,
                mem.hkid_start,
                u32::from(mem.hkid_start) + u32::from(mem.num_hkids) - 1
            ),
        );
        let main_counters = Arc::new(SeamcallCounters::new());
        let cpus = CpuCaller {
            module: module.clone(),
            platform: platform.clone(),
            counters: main_counters.clone(),
        };
        let up = bringup::bring_up(&cpus, &pool, &*phys, mem.hkid_start, log)?;
        // (`ok_or_else`: the conversion logs the platform error.)
        let main = cpus
            .main()
            .ok_or_else(|| HostError::from(CpuCallError::Platform(PlatformError::NoSuchCpu(0))))?;
        let hkids = Arc::new(HkidAllocator::new(mem.hkid_start, mem.num_hkids));
        let scratch = pool
            .alloc_4k(MemoryUse::Control)
            .and_then(|a| pool.alloc_4k(MemoryUse::Control).map(|b| (a, b)));
        let Ok((scratch_source, td_params_page)) = scratch else {
            log.failed(
                BringupStage::Runners,
                "no TD memory left for the host's scratch pages",
            );
            return Err(HostError::OutOfMemory);
        };
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
        log.ok(
            BringupStage::Runners,
            alloc::format!(
                "{} vCPU runners on the application processors",
                runners.len()
            ),
        );
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
            retired: Retired::default(),
            config,
            bringup: log.clone(),
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

    /// Which module is behind the host.
    pub fn module_kind(&self) -> ModuleKind {
        self.module.kind()
    }

    /// What runs the vCPUs of a TD with (`declared`) or without a declared workload.
    pub fn guest_engine(&self, declared: bool) -> GuestEngine {
        match &self.module {
            HostModule::Hardware(_) => GuestEngine::Tdx,
            HostModule::Software(_) if declared => GuestEngine::DeclaredWorkload,
            HostModule::Software(m) if m.runs_guest_code() => GuestEngine::Svm,
            HostModule::Software(_) => GuestEngine::None,
        }
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

    /// TDX KeyIDs free for new TDs.
    pub fn free_hkids(&self) -> u32 {
        self.hkids.free()
    }

    // ------------------------------------------------------------------ events

    /// Records an event.
    fn push_event(&mut self, at_ms: u64, kind: EventKind) {
        self.events.push(at_ms, kind);
    }

    /// Logs `message` and records it as a host event.
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

    // ------------------------------------------------------------------ images

    /// How many TDs use `image` (as firmware, kernel or initramfs).
    fn in_use_by(&self, image: &str) -> u32 {
        self.tds
            .values()
            .filter(|t| {
                t.image == image
                    || t.linux
                        .as_ref()
                        .is_some_and(|l| l.kernel == image || l.initrd.as_deref() == Some(image))
            })
            .count() as u32
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

    // ------------------------------------------------------------------ runners

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
}

/// Platform time as the devices see it.
struct PlatformClock(Arc<dyn Platform>);

impl DeviceClock for PlatformClock {
    fn now_ns(&self) -> u64 {
        self.0.now_ns()
    }
}

/// The port-I/O devices of a new TD, a PC with a 440FX chipset as TDVF's platform code knows
/// it: the console UART on COM1, PCI configuration mechanism #1 with the host bridge, the
/// ISA bridge and the PIIX4 power-management function, the PIIX4 ACPI block (PM timer, PM1
/// control with S5 power-off) and CMOS/RTC with the RAM sizes, plus the configuration space
/// of `more_functions` (`(device, function, space)`: the TD's virtio devices). Ports no
/// device decodes read as all ones and drop writes.
fn td_port_devices(
    uart: &Arc<Serial16550>,
    platform: &Arc<dyn Platform>,
    power: &Arc<PowerRequests>,
    (low_ram, high_ram): (u64, u64),
    more_functions: Vec<(u8, u8, pci::SharedConfig)>,
) -> PortIoBus {
    let clock: Arc<dyn DeviceClock> = Arc::new(PlatformClock(platform.clone()));
    let pm_function = pci::piix4_pm();
    let mut functions = alloc::vec![
        (0, 0, pci::i440fx_host_bridge()),
        (1, 0, pci::piix3_isa_bridge()),
        (1, 3, pm_function.clone()),
    ];
    functions.extend(more_functions);
    let reset_control = Arc::new(ResetControl::new(
        acpi_pm::RESET_CONTROL_PORT,
        power.clone(),
    ));
    let devices: [(u16, u16, Arc<dyn PortIoDevice>); 5] = [
        (COM1_BASE, UART_PORTS, uart.clone()),
        (
            pci::PCI_CONFIG_BASE,
            pci::PCI_CONFIG_PORTS,
            Arc::new(pci::PciConfigPorts::new(functions).with_reset_control(reset_control)),
        ),
        (
            PIIX4_PM_BASE,
            PM_BLOCK_PORTS,
            Arc::new(AcpiPmBlock::new(
                PIIX4_PM_BASE,
                pm_function,
                clock.clone(),
                power.clone(),
            )),
        ),
        (
            CMOS_BASE,
            CMOS_PORTS,
            Arc::new(Cmos::new(clock, low_ram, high_ram)),
        ),
        (
            acpi_pm::KBD_COMMAND_PORT,
            1,
            Arc::new(ResetControl::new(acpi_pm::KBD_COMMAND_PORT, power.clone())),
        ),
    ];
    let mut io = PortIoBus::new();
    for (base, len, device) in devices {
        // Fixed, disjoint ranges: a conflict would be a bug in this table.
        if let Err(e) = io.insert(base, len, device) {
            log::error!("host: TD device not placed: {e}");
        }
    }
    io
}
