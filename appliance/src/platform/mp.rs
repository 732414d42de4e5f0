//! Application processors through the PI MP Services protocol, as the TD runtime's
//! [`Platform`]: one vCPU runner loop per application processor, started with a non-blocking
//! `StartupThisAP` (with an event, no timeout) so it runs while the main CPU serves the API
//! (UEFI PI specification vol. 2, `EFI_MP_SERVICES_PROTOCOL.StartupThisAP`). A loop returns when its runner parks (no vCPU bound),
//! so an AP without work sits in MP Services' idle state instead of spinning; the host starts
//! it again later, and [`MpPlatform::start_runner`] only dispatches to an AP once the event of
//! its previous dispatch is signalled (a second StartupThisAP on a busy AP resets it).
//!
//! Rules for code on an application processor: no firmware calls, no logging, and no
//! allocation from the UEFI pool — the runner loop only touches atomics, spin locks and the
//! spin-locked heap (`platform::heap`). MP Services itself is only called from the main CPU.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ffi::c_void;

use tdx_runtime::host::runner::Runner;
use tdx_runtime::host::{Platform, PlatformError, RunnerPoll};
use uefi::boot::{self, EventType, Tpl};
use uefi::proto::pi::mp::MpServices;

use super::clock::now_ms;

/// The logical CPUs as MP Services numbers them, main CPU first.
pub struct MpPlatform {
    /// MP Services processor number of each of our CPU indices (0 = the main CPU).
    processors: Vec<usize>,
    /// Local APIC ID of each of our CPU indices.
    apic_ids: Vec<u32>,
    /// Package of each of our CPU indices, numbered densely from 0 in order of appearance.
    /// MP Services derives a processor's location from its APIC ID and the CPUID topology
    /// leaves (edk2 `MpInitLib`), so CPUs that share a package here share a physical one.
    package_of: Vec<u32>,
    /// Number of packages.
    packages: u32,
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

impl MpPlatform {
    /// Enumerates the enabled processors (just the main CPU without MP Services).
    pub fn new() -> MpPlatform {
        let found = with_mp(|mp| {
            let me = mp.who_am_i().unwrap_or(0);
            let count = mp.get_number_of_processors().map_or(1, |c| c.total);
            let mut processors = alloc::vec![me];
            let mut packages: Vec<u32> = Vec::new();
            let mut package_of = alloc::vec![0u32];
            let mut apic_ids = alloc::vec![0u32];
            let mut dense = |package: u32| match packages.iter().position(|&p| p == package) {
                Some(i) => i as u32,
                None => {
                    packages.push(package);
                    (packages.len() - 1) as u32
                }
            };
            if let Ok(info) = mp.get_processor_info(me) {
                package_of[0] = dense(info.location.package);
                apic_ids[0] = info.processor_id as u32;
            }
            for n in 0..count {
                let Ok(info) = mp.get_processor_info(n) else {
                    continue;
                };
                if n != me && info.is_enabled() && info.is_healthy() {
                    processors.push(n);
                    package_of.push(dense(info.location.package));
                    apic_ids.push(info.processor_id as u32);
                }
            }
            let count = packages.len().max(1) as u32;
            (processors, apic_ids, package_of, count)
        });
        let (processors, apic_ids, package_of, packages) =
            found.unwrap_or((alloc::vec![0], alloc::vec![0], alloc::vec![0], 1));
        MpPlatform {
            processors,
            apic_ids,
            package_of,
            packages,
            dispatches: spin::Mutex::new(Vec::new()),
        }
    }

    /// Packages.
    pub fn packages(&self) -> u32 {
        self.packages
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
