//! Application processors through the PI MP Services protocol, as the TD runtime's
//! [`Platform`]: one vCPU runner loop per application processor, started with a non-blocking
//! `StartupThisAP` (with an event, no timeout) so it runs while the main CPU serves the API
//! (UEFI PI specification vol. 2, `EFI_MP_SERVICES_PROTOCOL.StartupThisAP`). A loop returns when its runner parks (no vCPU bound),
//! so an AP without work sits in MP Services' idle state instead of spinning; the host starts
//! it again later, and [`MpPlatform::start_runner`] only dispatches to an AP once the event of
//! its previous dispatch is signalled (a second StartupThisAP on a busy AP resets it).
//!
//! Packages: from each CPU's x2APIC ID (MP Services' processor ID; the main CPU's own CPUID)
//! and the main CPU's CPUID topology leaf, with [`tdx_runtime::topology`]; a disagreement
//! with MP Services' `location.package` is logged and the x2APIC IDs win.
//!
//! Rules for code on an application processor: no firmware calls, no logging, and no
//! allocation from the UEFI pool — the runner loop only touches atomics, spin locks and the
//! spin-locked heap (`platform::heap`). MP Services itself is only called from the main CPU.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ffi::c_void;

use log::{info, warn};
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
    /// Runner loops dispatched and not yet seen completed.
    dispatches: spin::Mutex<Vec<Dispatch>>,
}

/// One runner loop handed to MP Services: its completion event and the `Arc<Runner>`
/// reference leaked for it (both raw, so the platform stays `Send + Sync`; only the main CPU
/// touches them).
struct Dispatch {
    cpu: u32,
    event: *mut c_void,
    runner: *const Runner,
}

// SAFETY: a `Dispatch` is only created, read and consumed on the main CPU (MP Services and
// event services are main-CPU only); the raw pointers are handles, never dereferenced by APs
// through this struct.
unsafe impl Send for Dispatch {}

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

/// Packages of the CPUs with x2APIC IDs `apic_ids` (CPU 0 = the main CPU, whose ID is
/// re-read from its own CPUID), cross-checked against MP Services' `firmware` package
/// numbers; falls back to those when the topology leaves are missing or inconsistent.
/// Returns the dense package of each CPU, the package count and the bring-up record.
fn assign_packages(
    apic_ids: &mut [u32],
    firmware: &[u32],
) -> (Vec<u32>, u32, (StepStatus, String)) {
    let shifts = topology_shifts();
    if let (Ok(s), Some(main)) = (&shifts, apic_ids.first_mut()) {
        let own = cpuid(s.leaf().leaf(), 0).edx;
        if *main != own {
            warn!(
                "CPU topology: MP Services reports APIC ID {:#x} for the main CPU, its CPUID \
                 says x2APIC ID {own:#x}; using CPUID",
                *main
            );
            *main = own;
        }
    }
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
        let (package_of, packages, topology) = assign_packages(&mut apic_ids, &firmware);
        MpPlatform {
            processors,
            apic_ids,
            package_of,
            packages,
            topology,
            dispatches: spin::Mutex::new(Vec::new()),
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

/// The runner loop an application processor runs: `arg` is an `Arc<Runner>` leaked for it.
extern "efiapi" fn runner_entry(arg: *mut c_void) {
    // SAFETY: `start_runner` passes `Arc::into_raw` of a runner and never releases that
    // reference, so the pointer stays valid for as long as this loop runs.
    let runner = unsafe { &*(arg as *const Runner) };
    loop {
        match runner.poll() {
            RunnerPoll::Busy => {}
            RunnerPoll::Idle { sleep_ms } => super::wake::sleep(sleep_ms),
            RunnerPoll::Parked | RunnerPoll::Exit => return,
        }
    }
}

/// Runs the closure `arg` points to (`&&(dyn Fn() + Sync)`) on an application processor.
extern "efiapi" fn call_entry(arg: *mut c_void) {
    // SAFETY: `run_on_cpu` passes a pointer to a `&(dyn Fn() + Sync)` on its stack and blocks
    // in StartupThisAP until this returns, so the reference is live throughout.
    let f = unsafe { &*(arg as *const &(dyn Fn() + Sync)) };
    f();
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
        let n = *self
            .processors
            .get(cpu as usize)
            .ok_or(PlatformError::NoSuchCpu(cpu))?;
        let arg: &(dyn Fn() + Sync) = f;
        let ptr = &arg as *const &(dyn Fn() + Sync) as *mut c_void;
        with_mp(|mp| mp.startup_this_ap(n, call_entry, ptr, None, None))
            .and_then(|r| r.ok())
            .ok_or(PlatformError::NoSuchCpu(cpu))
    }

    fn runner_cpus(&self) -> Vec<u32> {
        (1..self.processors.len() as u32).collect()
    }

    fn start_runner(&self, runner: Arc<Runner>) -> Result<(), PlatformError> {
        let cpu = runner.cpu();
        let n = *self
            .processors
            .get(cpu as usize)
            .ok_or(PlatformError::NoSuchCpu(cpu))?;
        let mut dispatches = self.dispatches.lock();
        if let Some(i) = dispatches.iter().position(|d| d.cpu == cpu) {
            let Some(d) = dispatches.get(i) else {
                return Err(PlatformError::RunnerBusy(cpu));
            };
            // SAFETY: `d.event` came from `create_event` below and is closed only here, after
            // which the dispatch is removed.
            let Some(event) = (unsafe { uefi::Event::from_ptr(d.event) }) else {
                return Err(PlatformError::RunnerBusy(cpu));
            };
            if !boot::check_event(&event).unwrap_or(false) {
                // Still running (or just returning): StartupThisAP now would reset the AP.
                return Err(PlatformError::RunnerBusy(cpu));
            }
            let done = dispatches.swap_remove(i);
            let _ = boot::close_event(event);
            // SAFETY: the AP finished `runner_entry` (its event is signalled), so the
            // reference leaked for it is no longer used.
            drop(unsafe { Arc::from_raw(done.runner) });
        }
        // SAFETY: a plain event (no notification function) that only MP Services signals.
        let event = unsafe { boot::create_event(EventType::empty(), Tpl::CALLBACK, None, None) }
            .map_err(|_| PlatformError::RunnerStart(cpu))?;
        let event_ptr = event.as_ptr();
        let arg = Arc::into_raw(runner) as *mut c_void;
        let started = with_mp(|mp| mp.startup_this_ap(n, runner_entry, arg, Some(event), None));
        match started {
            Some(Ok(())) => {
                dispatches.push(Dispatch {
                    cpu,
                    event: event_ptr,
                    runner: arg as *const Runner,
                });
                Ok(())
            }
            _ => {
                // SAFETY: the AP did not start, so nothing else holds this reference.
                drop(unsafe { Arc::from_raw(arg as *const Runner) });
                Err(PlatformError::RunnerStart(cpu))
            }
        }
    }

    fn kick_cpu(&self, cpu: u32) {
        // Wakes a runner sleeping between polls. A vCPU inside TDH.VP.ENTER on the software
        // module leaves through the module's kick flag; with the hardware module the IPI
        // makes it exit, but nothing posts to its vCPUs yet.
        if cpu != 0
            && let Some(&id) = self.apic_ids.get(cpu as usize)
        {
            super::wake::wake(id);
        }
    }
}
