//! Application processors through the PI MP Services protocol, as the TD runtime's
//! [`Platform`]. Each application processor gets one **resident loop**, dispatched with a
//! non-blocking `StartupThisAP` (with an event, no timeout) the first time the host needs
//! that CPU, and never returning to MP Services (UEFI PI specification vol. 2,
//! `EFI_MP_SERVICES_PROTOCOL.StartupThisAP`). From then on the loop is the only way work
//! reaches the CPU:
//! * [`Platform::run_on_cpu`] posts a closure to the loop's call slot and waits for it
//!   (TDH.SYS.LP.INIT, VMXON, WBINVD, per-package key configuration, TDH.VP.INIT);
//! * [`Platform::start_runner`] hands the loop its vCPU runner, which it polls while it is
//!   running;
//! * between those, the loop halts until its local APIC timer or a wake-up IPI
//!   ([`super::wake`]), so an idle CPU neither spins nor costs a host core under TCG.
//!
//! Why resident: on a TDX host every logical CPU executes VMXON before TDH.SYS.LP.INIT and
//! stays in VMX root operation (TDX module 1.5 base spec, "TDX Module Lifecycle"). INIT is
//! blocked in VMX root operation (Intel SDM vol. 3C, "Restrictions on VMX Operation"), and
//! MP Services wakes an application processor that waits in its HLT loop with
//! INIT-SIPI-SIPI (edk2 `UefiCpuPkg/Library/MpInitLib`, `PcdCpuApLoopMode` 1): once VMX is on,
//! a CPU handed back to MP Services could never be dispatched again. The same loop serves the
//! software module, so the path the hardware takes is the one every test boot runs.
//!
//! Packages: from each CPU's x2APIC ID, which every CPU reads from its own CPUID through its
//! loop at start-up (MP Services' processor ID only where that fails), and the main CPU's
//! CPUID topology leaf, with [`tdx_runtime::topology`]; a disagreement with MP Services'
//! processor ID or `location.package` is logged and the CPUs' own IDs win.
//!
//! Rules for code on an application processor: no firmware calls, no logging, and no
//! allocation from the UEFI pool — the loop only touches atomics, spin locks and the
//! spin-locked heap (`platform::heap`). MP Services itself is only called from the main CPU.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use log::{info, warn};
use tdx_runtime::host::call_slot::{CallProgress, CallSlot};
use tdx_runtime::host::posted::POSTED_INTERRUPT_VECTOR;
use tdx_runtime::host::runner::Runner;
use tdx_runtime::host::{Platform, PlatformError, RunnerPoll, StepStatus};
use tdx_runtime::topology::{CpuidRegs, Topology, TopologyError, TopologyShifts, X2ApicId, dense};
use uefi::boot::{self, EventType, Tpl};
use uefi::proto::pi::mp::MpServices;

use super::clock::now_ms;

/// The logical CPUs as MP Services numbers them, main CPU first.
pub struct MpPlatform {
    /// MP Services processor number of each of our CPU indices (0 = the main CPU).
    processors: Vec<usize>,
    /// x2APIC ID of each of our CPU indices.
    apic_ids: Vec<u32>,
    /// Package of each of our CPU indices, numbered densely from 0 in order of appearance:
    /// derived from the x2APIC IDs (see [`tdx_runtime::topology`]), MP Services'
    /// `location.package` only when the CPU enumerates no topology leaf.
    package_of: Vec<u32>,
    /// Number of packages.
    packages: u32,
    /// How the packages were found, for the bring-up record.
    topology: (StepStatus, String),
    /// The resident loop of each of our CPU indices but 0 (index `n - 1` for CPU `n`).
    loops: Vec<Arc<CpuLoop>>,
}

/// How long [`Platform::run_on_cpu`] waits for a loop to take a posted call (ms). A loop
/// takes it between two vCPU entries, each bounded by the guest time slice.
const CALL_TAKE_TIMEOUT_MS: u64 = 5_000;
/// How long a loop with nothing to do halts before it looks again (ms); a posted call or
/// a started runner wakes it at once.
const IDLE_HALT_MS: u64 = 100;

/// The resident loop of one application processor: what the main CPU hands it.
struct CpuLoop {
    /// MP Services processor number.
    processor: usize,
    /// x2APIC ID (for wake-up IPIs), as the CPU itself read it.
    apic_id: AtomicU32,
    /// The loop was dispatched (only the main CPU sets it).
    started: AtomicBool,
    /// The posted call: the address of a `&(dyn Fn() + Sync)` on the caller's stack, valid
    /// until the call is done or withdrawn ([`CallSlot`]'s protocol).
    call: CallSlot,
    /// Callers of [`Platform::run_on_cpu`] take turns.
    callers: spin::Mutex<()>,
    /// The runner this CPU polls while it runs.
    runner: spin::Mutex<Option<Arc<Runner>>>,
}

impl CpuLoop {
    /// Runs the posted call, if any (on the loop's CPU).
    fn serve_call(&self) {
        let Some(word) = self.call.take() else {
            return;
        };
        let f = word as usize as *const &(dyn Fn() + Sync);
        // SAFETY: the poster stored the address of a live `&(dyn Fn() + Sync)` and waits
        // until the call is done before its stack frame ends; a taken call can no longer be
        // withdrawn (`CallSlot`, model-checked with loom).
        let f = unsafe { &*f };
        f();
        self.call.finish();
    }
}

/// The resident loop: `arg` is an `Arc<CpuLoop>` leaked for it (never released: the loop
/// never ends).
extern "efiapi" fn resident_entry(arg: *mut c_void) {
    // SAFETY: `ensure_loop` passes `Arc::into_raw` of the CPU's loop and never releases that
    // reference, so the pointer stays valid for as long as this loop runs (forever).
    let cpu = unsafe { &*(arg as *const CpuLoop) };
    loop {
        cpu.serve_call();
        let runner = cpu.runner.lock().clone();
        match runner {
            Some(r) if r.is_running() => match r.poll() {
                RunnerPoll::Busy | RunnerPoll::Parked => {}
                RunnerPoll::Idle { sleep_ms } => super::wake::sleep(sleep_ms),
                RunnerPoll::Exit => *cpu.runner.lock() = None,
            },
            // Parked (the host restarts it through `start_runner`, which wakes us) or none.
            _ => {
                if !cpu.call.is_posted() {
                    super::wake::sleep(IDLE_HALT_MS);
                }
            }
        }
    }
}

fn with_mp<R>(f: impl FnOnce(&MpServices) -> R) -> Option<R> {
    let handle = boot::get_handle_for_protocol::<MpServices>().ok()?;
    let mp = boot::open_protocol_exclusive::<MpServices>(handle).ok()?;
    Some(f(&mp))
}

/// CPUID on this CPU.
fn cpuid(leaf: u32, subleaf: u32) -> CpuidRegs {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    CpuidRegs {
        eax: r.eax,
        ebx: r.ebx,
        ecx: r.ecx,
        edx: r.edx,
    }
}

/// The x2APIC ID layout, from the main CPU's CPUID leaf 0x1F or 0xB (the same on every CPU
/// of the platform: SDM Vol. 3A §10.12.8.1).
fn topology_shifts() -> Result<TopologyShifts, TopologyError> {
    TopologyShifts::from_cpuid(core::arch::x86_64::__cpuid(0).eax, &cpuid)
}

/// Most package disagreements logged one by one.
const LOGGED_DISAGREEMENTS: usize = 8;

/// Packages of the CPUs with x2APIC IDs `apic_ids` (as each CPU read its own), cross-checked against MP Services' `firmware` package
/// numbers; falls back to those when the topology leaves are missing or inconsistent.
/// Returns the dense package of each CPU, the package count and the bring-up record.
fn assign_packages(apic_ids: &[u32], firmware: &[u32]) -> (Vec<u32>, u32, (StepStatus, String)) {
    let shifts = topology_shifts();
    let ids: Vec<X2ApicId> = apic_ids.iter().map(|&a| X2ApicId(a)).collect();
    let derived = shifts.and_then(|s| Topology::new(&s, &ids).map(|t| (s, t)));
    match derived {
        Ok((shifts, topology)) => {
            let wrong = topology.disagreements(firmware);
            for d in wrong.iter().take(LOGGED_DISAGREEMENTS) {
                warn!(
                    "CPU topology: CPU {} (x2APIC ID {}): MP Services says package {}, the \
                     x2APIC ID says package {}; using the x2APIC ID",
                    d.cpu, d.apic_id, d.reported, d.derived.0
                );
            }
            if wrong.len() > LOGGED_DISAGREEMENTS {
                warn!(
                    "CPU topology: {} more CPUs where MP Services' package disagrees",
                    wrong.len() - LOGGED_DISAGREEMENTS
                );
            }
            let agreement = if wrong.is_empty() {
                String::from("MP Services agrees")
            } else {
                format!(
                    "MP Services' packages disagree on {} CPUs; the x2APIC IDs are used",
                    wrong.len()
                )
            };
            let detail = format!(
                "{} logical CPUs, {} cores, {} packages from x2APIC IDs (CPUID leaf {:#x}: SMT \
                 shift {}, package shift {}); {agreement}",
                ids.len(),
                topology.cores(),
                topology.packages().len(),
                shifts.leaf().leaf(),
                shifts.smt_shift(),
                shifts.package_shift()
            );
            info!("CPU topology: {detail}");
            let packages = topology.packages().len() as u32;
            (
                topology.package_indices().to_vec(),
                packages,
                (StepStatus::Ok, detail),
            )
        }
        Err(e) => {
            let (dense_firmware, distinct) = dense(firmware.iter().copied());
            let detail = format!(
                "{e}; using MP Services' packages: {} logical CPUs in {} packages",
                ids.len(),
                distinct.len()
            );
            warn!("CPU topology: {detail}");
            let status = match e {
                TopologyError::NoExtendedTopology => StepStatus::Skipped,
                _ => StepStatus::Failed,
            };
            let packages = distinct.len().max(1) as u32;
            (dense_firmware, packages, (status, detail))
        }
    }
}

impl MpPlatform {
    /// Enumerates the enabled processors (just the main CPU without MP Services) and their
    /// packages.
    pub fn new() -> MpPlatform {
        let found = with_mp(|mp| {
            let me = mp.who_am_i().unwrap_or(0);
            let count = mp.get_number_of_processors().map_or(1, |c| c.total);
            let mut processors = alloc::vec![me];
            let mut firmware = alloc::vec![0u32];
            let mut apic_ids = alloc::vec![0u32];
            // (MP Services' ProcessorId is the APIC ID: edk2 MpInitLib reads it from CPUID
            // leaf 0xB where the CPU has it.)
            let apic = |id: u64| u32::try_from(id).unwrap_or(u32::MAX);
            if let Ok(info) = mp.get_processor_info(me) {
                firmware[0] = info.location.package;
                apic_ids[0] = apic(info.processor_id);
            }
            for n in 0..count {
                let Ok(info) = mp.get_processor_info(n) else {
                    continue;
                };
                if n != me && info.is_enabled() && info.is_healthy() {
                    processors.push(n);
                    firmware.push(info.location.package);
                    apic_ids.push(apic(info.processor_id));
                }
            }
            (processors, apic_ids, firmware)
        });
        let (processors, mut apic_ids, firmware) =
            found.unwrap_or((alloc::vec![0], alloc::vec![0], alloc::vec![0]));
        let loops = processors
            .iter()
            .zip(&apic_ids)
            .skip(1)
            .map(|(&processor, &apic_id)| {
                Arc::new(CpuLoop {
                    processor,
                    apic_id: AtomicU32::new(apic_id),
                    started: AtomicBool::new(false),
                    call: CallSlot::new(),
                    callers: spin::Mutex::new(()),
                    runner: spin::Mutex::new(None),
                })
            })
            .collect();
        let mut platform = MpPlatform {
            processors,
            apic_ids: apic_ids.clone(),
            package_of: Vec::new(),
            packages: 1,
            topology: (StepStatus::Skipped, String::new()),
            loops,
        };
        platform.read_own_apic_ids(&mut apic_ids);
        let (package_of, packages, topology) = assign_packages(&apic_ids, &firmware);
        platform.apic_ids = apic_ids;
        platform.package_of = package_of;
        platform.packages = packages;
        platform.topology = topology;
        platform
    }

    /// Has every CPU read its own x2APIC ID (CPUID leaf 0x1F/0xB, else the initial APIC ID in
    /// CPUID leaf 1), through its resident loop, and replaces what MP Services reported where
    /// they differ: wake-up IPIs and the package topology use these.
    fn read_own_apic_ids(&self, apic_ids: &mut [u32]) {
        let leaf = topology_shifts().ok().map(|s| s.leaf().leaf());
        let mut differ = 0usize;
        for (cpu, reported) in apic_ids.iter_mut().enumerate() {
            let own = AtomicU32::new(*reported);
            let read = self.run_on_cpu(cpu as u32, &|| {
                let id = match leaf {
                    Some(l) => cpuid(l, 0).edx,
                    None => cpuid(1, 0).ebx >> 24,
                };
                own.store(id, Ordering::Release);
            });
            let own = own.load(Ordering::Acquire);
            if let Err(e) = read {
                warn!("CPU {cpu}: could not read its own APIC ID ({e}); using MP Services'");
                continue;
            }
            if own != *reported {
                differ += 1;
                if differ <= LOGGED_DISAGREEMENTS {
                    warn!(
                        "CPU {cpu}: MP Services reports APIC ID {:#x}, the CPU reads x2APIC ID \
                         {own:#x}; using the CPU's",
                        *reported
                    );
                }
                *reported = own;
                if let Some(l) = (cpu as u32)
                    .checked_sub(1)
                    .and_then(|i| self.loops.get(i as usize))
                {
                    l.apic_id.store(own, Ordering::Release);
                }
            }
        }
        if differ > LOGGED_DISAGREEMENTS {
            warn!("{differ} CPUs in all read another APIC ID than MP Services reports");
        }
    }

    /// The resident loop of application processor `cpu`, dispatched if it is not yet (main
    /// CPU only: MP Services).
    fn ensure_loop(&self, cpu: u32) -> Result<&CpuLoop, PlatformError> {
        let l = cpu
            .checked_sub(1)
            .and_then(|i| self.loops.get(i as usize))
            .ok_or(PlatformError::NoSuchCpu(cpu))?;
        if l.started.load(Ordering::Acquire) {
            return Ok(l);
        }
        // SAFETY: a plain event (no notification function) that only MP Services signals;
        // it is never closed, as the loop never returns.
        let event = unsafe { boot::create_event(EventType::empty(), Tpl::CALLBACK, None, None) }
            .map_err(|_| PlatformError::RunnerStart(cpu))?;
        let arg = Arc::into_raw(l.clone()) as *mut c_void;
        let started =
            with_mp(|mp| mp.startup_this_ap(l.processor, resident_entry, arg, Some(event), None));
        match started {
            Some(Ok(())) => {
                l.started.store(true, Ordering::Release);
                info!(
                    "CPU {cpu} (x2APIC ID {}): resident loop started",
                    l.apic_id.load(Ordering::Acquire)
                );
                Ok(l)
            }
            _ => {
                // SAFETY: the AP did not start, so nothing else holds this reference.
                drop(unsafe { Arc::from_raw(arg as *const CpuLoop) });
                Err(PlatformError::RunnerStart(cpu))
            }
        }
    }

    /// Packages.
    pub fn packages(&self) -> u32 {
        self.packages
    }

    /// How the packages were found (for the `cpu-topology` bring-up step).
    pub fn topology_step(&self) -> (StepStatus, &str) {
        (self.topology.0, &self.topology.1)
    }
}

impl Platform for MpPlatform {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn now_ns(&self) -> u64 {
        super::clock::now_ns()
    }

    fn tsc(&self) -> (u64, u64) {
        (
            super::clock::read_tsc(),
            super::clock::ticks_per_ms().max(1),
        )
    }

    fn cpus(&self) -> u32 {
        self.processors.len() as u32
    }

    fn write_back_caches(&self) -> Result<(), PlatformError> {
        for cpu in 0..self.cpus() {
            // SAFETY: the appliance runs at CPL 0 on every CPU.
            self.run_on_cpu(cpu, &|| unsafe { tdx_hw::wbinvd() })?;
        }
        Ok(())
    }

    fn package_of(&self, cpu: u32) -> u32 {
        self.package_of.get(cpu as usize).copied().unwrap_or(0)
    }

    fn run_on_cpu(&self, cpu: u32, f: &(dyn Fn() + Sync)) -> Result<(), PlatformError> {
        if cpu == 0 {
            f();
            return Ok(());
        }
        let l = self.ensure_loop(cpu)?;
        let _turn = l.callers.lock();
        let arg: &(dyn Fn() + Sync) = f;
        let word = &arg as *const &(dyn Fn() + Sync) as usize as u64;
        if !l.call.post(word) {
            // Callers take turns and every call leaves the slot free (done or withdrawn), so
            // this does not happen; refuse rather than overwrite.
            return Err(PlatformError::RunnerBusy(cpu));
        }
        super::wake::wake(l.apic_id.load(Ordering::Acquire));
        let deadline = now_ms().saturating_add(CALL_TAKE_TIMEOUT_MS);
        loop {
            match l.call.progress() {
                CallProgress::Done => return Ok(()),
                // Not taken in time: withdraw it, unless the loop took it meanwhile (then it
                // is waited for: `arg` lives on this stack frame).
                CallProgress::Posted if now_ms() > deadline && l.call.withdraw() => {
                    return Err(PlatformError::NoSuchCpu(cpu));
                }
                _ => core::hint::spin_loop(),
            }
        }
    }

    fn runner_cpus(&self) -> Vec<u32> {
        (1..self.processors.len() as u32).collect()
    }

    fn start_runner(&self, runner: Arc<Runner>) -> Result<(), PlatformError> {
        let l = self.ensure_loop(runner.cpu())?;
        *l.runner.lock() = Some(runner);
        super::wake::wake(l.apic_id.load(Ordering::Acquire));
        Ok(())
    }

    fn kick_cpu(&self, cpu: u32) {
        // Wakes a loop halted between polls. A vCPU inside TDH.VP.ENTER on the software
        // module leaves through the module's kick flag (and this IPI); on the hardware
        // module the IPI makes it exit.
        if cpu != 0
            && let Some(&id) = self.apic_ids.get(cpu as usize)
        {
            super::wake::wake(id);
        }
    }

    fn flush_guest_translations(&self) {
        super::tdx_hardware::flush_guest_translations();
    }

    fn notify_posted_interrupt(&self, cpu: u32) {
        if let Some(&id) = self.apic_ids.get(cpu as usize) {
            super::wake::send(id, POSTED_INTERRUPT_VECTOR);
        }
    }
}
