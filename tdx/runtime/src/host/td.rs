//! The part of a TD that runner CPUs share with the main CPU: vCPU run state, the S-EPT
//! manager, the console ring, counters and the guest outcome. Only atomics and briefly held
//! spin locks; nothing here allocates after creation.

use alloc::boxed::Box;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use crate::devices::acpi_pm::PowerRequests;
use crate::devices::lapic::LocalApic;
use crate::devices::serial::Serial16550;
use crate::devices::virtio::console::ConsoleInput;
use crate::devices::{MmioBus, PortIoBus};
use crate::sept::{BugReport, SeptManager};
use tdx_abi::Hpa;
use tdx_abi::seamcall::{Seamcall, TdvmcallAnswer};

use super::memory::{TdBacking, TdVcpus};
use super::msr::MsrFile;
use super::posted::{POSTED_INTERRUPT_VECTOR, PostedInterruptDescriptor};
use super::tdvmcall::FatalMessage;
use super::types::TdId;

/// vCPU mode: not in the TD (KVM `OUTSIDE_GUEST_MODE`).
pub const MODE_OUTSIDE: u8 = 0;
/// vCPU mode: between the entry decision and the exit of TDH.VP.ENTER (KVM `IN_GUEST_MODE`).
pub const MODE_IN_GUEST: u8 = 1;

/// TD run state: vCPUs may not enter (not started yet).
pub const RUN_NOT_STARTED: u8 = 0;
/// TD run state: vCPUs run.
pub const RUN_GO: u8 = 1;
/// TD run state: graceful stop asked; a vCPU that halts powers off.
pub const RUN_GRACEFUL: u8 = 2;
/// TD run state: stop entering; runners flush and park their vCPUs.
pub const RUN_HALT: u8 = 3;

/// One vCPU.
pub struct VcpuShared {
    /// Index in the TD.
    pub index: u32,
    /// TDVPR page.
    pub tdvpr: Hpa,
    /// Runner (index) the vCPU is bound to.
    pub runner: usize,
    /// CPU of that runner.
    pub cpu: u32,
    /// [`MODE_OUTSIDE`] or [`MODE_IN_GUEST`].
    pub mode: AtomicU8,
    /// Exits so far (the unmap path waits for it to move).
    pub exits: AtomicU64,
    /// Its shared mappings shrank: its runner flushes the CPU's guest translations
    /// ([`super::Platform::flush_guest_translations`]) before the next entry.
    pub flush_translations: AtomicBool,
    /// Its posted-interrupt descriptor (hardware module; see [`super::posted`]).
    pub posted: Box<PostedInterruptDescriptor>,
    /// TDH.VP.FLUSH done on its CPU. Until then the vCPU is associated with that CPU: the
    /// host creates a `VcpuShared` only once TDH.VP.INIT ran there.
    pub flushed: AtomicBool,
    /// Powered off / stopped for good; the runner will not enter it again.
    pub parked: AtomicBool,
    /// Halted until this time (ms; 0 = not halted).
    pub halted_until: AtomicU64,
    /// Answer to the pending TDVMCALL for the next entry (only the vCPU's runner touches it).
    pub answer: spin::Mutex<TdvmcallAnswer>,
    /// The MSRs the host emulates for it (only its runner touches them).
    pub msrs: spin::Mutex<MsrFile>,
    /// The x2APIC registers the host emulates for it (timer, LVTs, ICR; x2APIC ID = index).
    pub lapic: spin::Mutex<LocalApic>,
    /// Turns its runner gives the other vCPUs first, because it spent its last slice in
    /// one entry that only the slice's end interrupted (only its runner touches it).
    pub spin_penalty: AtomicU8,
}

impl VcpuShared {
    /// A fresh vCPU bound to `runner` on `cpu`.
    pub fn new(index: u32, tdvpr: Hpa, runner: usize, cpu: u32) -> Self {
        VcpuShared {
            index,
            tdvpr,
            runner,
            cpu,
            mode: AtomicU8::new(MODE_OUTSIDE),
            exits: AtomicU64::new(0),
            flush_translations: AtomicBool::new(false),
            posted: Box::new(PostedInterruptDescriptor::new(POSTED_INTERRUPT_VECTOR, 0)),
            flushed: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            halted_until: AtomicU64::new(0),
            answer: spin::Mutex::new(TdvmcallAnswer::default()),
            msrs: spin::Mutex::new(MsrFile::new(index)),
            lapic: spin::Mutex::new(LocalApic::new(index)),
            spin_penalty: AtomicU8::new(0),
        }
    }

    /// Ends a halt (timer, kick, stop request).
    pub fn wake(&self) {
        self.halted_until.store(0, Ordering::Release);
    }

    /// Whether the vCPU will not run again and holds no association with a CPU.
    pub fn is_quiescent(&self) -> bool {
        self.parked.load(Ordering::Acquire)
            && self.mode.load(Ordering::Acquire) == MODE_OUTSIDE
            && self.flushed.load(Ordering::Acquire)
    }
}

/// How a TD's TSC relates to the host's: TDH.MNG.INIT scales the TD's TSC to its
/// TD_PARAMS frequency and offsets it (intel/tdx-module `tdh_mng_init.c`); the host reads
/// TSC_OFFSET and TSC_MULTIPLIER afterwards, as KVM does, to turn a guest TSC deadline into
/// host time: guest = (host × multiplier) >> 48 + offset.
#[derive(Debug)]
pub struct GuestTsc {
    offset: AtomicU64,
    multiplier: AtomicU64,
}

/// The multiplier's fixed-point fraction bits.
const TSC_MULTIPLIER_FRACTION_BITS: u32 = 48;

impl Default for GuestTsc {
    fn default() -> Self {
        GuestTsc {
            offset: AtomicU64::new(0),
            multiplier: AtomicU64::new(1 << TSC_MULTIPLIER_FRACTION_BITS),
        }
    }
}

impl GuestTsc {
    /// Sets what the module reported.
    pub fn set(&self, offset: u64, multiplier: u64) {
        self.offset.store(offset, Ordering::Release);
        self.multiplier.store(multiplier, Ordering::Release);
    }

    /// The guest's TSC when the host's reads `host`.
    pub fn guest(&self, host: u64) -> u64 {
        let scaled = (u128::from(host) * u128::from(self.multiplier.load(Ordering::Acquire)))
            >> TSC_MULTIPLIER_FRACTION_BITS;
        (scaled as u64).wrapping_add(self.offset.load(Ordering::Acquire))
    }

    /// Nanoseconds from now (the host TSC reads `host`, `host_per_ms` ticks a millisecond)
    /// until the guest's TSC reaches `deadline` (0 if it has).
    pub fn ns_until(&self, deadline: u64, host: u64, host_per_ms: u64) -> u64 {
        let guest_per_ms = (u128::from(host_per_ms.max(1))
            * u128::from(self.multiplier.load(Ordering::Acquire)))
            >> TSC_MULTIPLIER_FRACTION_BITS;
        let ahead =
            u128::from(deadline.saturating_sub(self.guest(host))) * 1_000_000 / guest_per_ms.max(1);
        u64::try_from(ahead).unwrap_or(u64::MAX)
    }
}

/// Why the guest side ended (set by a runner, applied to the lifecycle by the main CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestOutcome {
    /// Triple fault: the guest shut down.
    Shutdown,
    /// The guest switched itself off (ACPI S5 through PM1 control).
    PoweredOff,
    /// The guest asked for a reset, which a TD cannot do: it stops.
    Reset,
    /// TDVMCALL ReportFatalError.
    FatalError {
        /// R12 (without the message-valid bit).
        code: u64,
        /// The guest's message, if it gave one.
        message: Option<FatalMessage>,
    },
    /// The guest did something the host cannot serve (expected failure class).
    Failed {
        /// What.
        what: FailCause,
        /// The GPA/GFN or value concerned.
        value: u64,
    },
    /// Unexpected module status or exit (bug class).
    Bugged(BugCause),
}

/// Expected guest failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailCause {
    /// Access to a PENDING page with SEPT_VE_DISABLE (not accepted first).
    PendingAccess,
    /// Access to a private GFN without private memory (outside RAM or converted to shared).
    NoPrivateMemory,
    /// EPT violation on a shared GPA (no shared memory is modelled).
    SharedAccess,
}

/// Unexpected conditions that bug a TD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BugCause {
    /// The S-EPT manager bugged the TD.
    Sept(BugReport),
    /// A SEAMCALL the runner issued failed unexpectedly.
    Seamcall(tdx_abi::seamcall::SeamError),
    /// An exit reason the host does not handle.
    UnknownExit(u64),
    /// The preallocated S-EPT pages ran out (the bound is wrong).
    SeptPagesExhausted,
}

impl core::fmt::Display for GuestOutcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GuestOutcome::Shutdown => write!(f, "guest shut down (triple fault)"),
            GuestOutcome::PoweredOff => write!(f, "guest powered off (ACPI S5)"),
            GuestOutcome::Reset => write!(f, "guest asked for a reset; a TD cannot be reset"),
            GuestOutcome::FatalError { code, message } => {
                write!(f, "guest reported a fatal error (code {code:#x})")?;
                if let Some(m) = message {
                    f.write_str(": ")?;
                    for c in m.text() {
                        core::fmt::Write::write_char(f, c)?;
                    }
                }
                Ok(())
            }
            GuestOutcome::Failed { what, value } => match what {
                FailCause::PendingAccess => write!(
                    f,
                    "guest accessed GPA {value:#x} before accepting it (SEPT_VE_DISABLE)"
                ),
                FailCause::NoPrivateMemory => write!(
                    f,
                    "guest accessed private GPA {value:#x} which has no private memory"
                ),
                FailCause::SharedAccess => {
                    write!(f, "guest accessed shared GPA {value:#x} (no shared memory)")
                }
            },
            GuestOutcome::Bugged(c) => match c {
                BugCause::Sept(r) => write!(f, "S-EPT: {r}"),
                BugCause::Seamcall(e) => write!(f, "{} returned {}", e.leaf.name(), e.status),
                BugCause::UnknownExit(r) => write!(f, "unhandled TD exit reason {r}"),
                BugCause::SeptPagesExhausted => write!(f, "preallocated S-EPT pages exhausted"),
            },
        }
    }
}

/// A byte ring keeping the newest `capacity` bytes of the TD's console.
pub struct ConsoleRing {
    inner: spin::Mutex<RingState>,
}

struct RingState {
    buf: Box<[u8]>,
    /// Bytes ever written.
    total: u64,
}

impl ConsoleRing {
    /// A ring of `capacity` bytes (at least 1).
    pub fn new(capacity: usize) -> Self {
        ConsoleRing {
            inner: spin::Mutex::new(RingState {
                buf: alloc::vec![0u8; capacity.max(1)].into_boxed_slice(),
                total: 0,
            }),
        }
    }

    /// Appends bytes (runner CPUs; no allocation).
    pub fn push(&self, bytes: &[u8]) {
        let mut s = self.inner.lock();
        let cap = s.buf.len() as u64;
        for &b in bytes {
            let at = (s.total % cap) as usize;
            if let Some(slot) = s.buf.get_mut(at) {
                *slot = b;
            }
            s.total += 1;
        }
    }

    /// Bytes ever written.
    pub fn total(&self) -> u64 {
        self.inner.lock().total
    }

    /// Up to `max` bytes from `offset` (or from the oldest byte kept if `offset` was
    /// dropped): `(first offset, bytes)`.
    pub fn read(&self, offset: u64, max: usize) -> (u64, alloc::vec::Vec<u8>) {
        let s = self.inner.lock();
        let cap = s.buf.len() as u64;
        let oldest = s.total.saturating_sub(cap);
        let start = offset.clamp(oldest, s.total);
        let n = (s.total - start).min(max as u64);
        let mut out = alloc::vec::Vec::with_capacity(n as usize);
        for i in start..start + n {
            out.push(s.buf.get((i % cap) as usize).copied().unwrap_or(0));
        }
        (start, out)
    }
}

/// Per-TD counters runners bump.
#[derive(Default)]
pub struct TdCounterCells {
    /// Exits handled.
    pub exits: AtomicU64,
    /// EPT violations.
    pub ept_violations: AtomicU64,
    /// MapGPA conversions handled.
    pub conversions: AtomicU64,
    /// Bytes of mapped private memory that MapGPA converted to shared (S-EPT leaves
    /// removed; ranges the guest never accepted, such as MMIO, cost nothing and are left
    /// out).
    pub shared_conversion_bytes: AtomicU64,
    /// Nanoseconds vCPUs spent out of the TD for those conversions (exit to the reply).
    pub shared_conversion_ns: AtomicU64,
    /// VP.ENTER or control-path BUSY retries.
    pub busy_retries: AtomicU64,
}

/// What runners share about one TD.
pub struct TdShared {
    /// The TD.
    pub id: TdId,
    /// TDR page.
    pub tdr: Hpa,
    /// [`RUN_NOT_STARTED`], [`RUN_GO`], [`RUN_GRACEFUL`] or [`RUN_HALT`].
    pub run: AtomicU8,
    /// The vCPUs.
    pub vcpus: Arc<TdVcpus>,
    /// The S-EPT manager.
    pub sept: SeptManager<dyn Seamcall>,
    /// Private memory (for MapGPA attribute changes).
    pub backing: Arc<TdBacking>,
    /// The host's EPT for the TD's shared memory.
    pub shared_ept: Arc<super::shared_ept::SharedEpt>,
    /// Console output (the UART on [`TdShared::io`] writes into it).
    pub console: Arc<ConsoleRing>,
    /// The TD's port-I/O devices.
    pub io: PortIoBus,
    /// The console UART (also on [`TdShared::io`]): typed input goes into its receive queue.
    pub uart: Arc<Serial16550>,
    /// What the guest asked of its power logic (the PM1 S5 request).
    pub power: Arc<PowerRequests>,
    /// The TD's MMIO devices (addresses without the shared bit).
    pub mmio: MmioBus,
    /// The virtio console of a TD that boots a kernel (`hvc0`; its output goes to
    /// [`TdShared::console`]) and the input waiting for it; `None` for firmware-only TDs.
    pub virtio_console: Option<(Arc<crate::devices::virtio::VirtioPci>, Arc<ConsoleInput>)>,
    /// The I/O APIC (also on [`TdShared::mmio`]) of a TD that boots a kernel with the host's
    /// ACPI tables, which put the power button on its pin
    /// [`POWER_BUTTON_GSI`](crate::acpi::POWER_BUTTON_GSI); `None` for firmware-only TDs.
    pub ioapic: Option<Arc<crate::devices::ioapic::IoApic>>,
    /// Counters.
    pub counters: TdCounterCells,
    /// First guest outcome.
    pub outcome: spin::Mutex<Option<GuestOutcome>>,
    /// Shared bit position.
    pub shared_bit: u32,
    /// The TD's TSC against the host's (for TSC-deadline timers).
    pub guest_tsc: GuestTsc,
    /// 2 MiB mappings allowed.
    pub huge_pages: bool,
    /// Emulated timer period for halted vCPUs.
    pub idle_wakeup_ms: u64,
    /// The vector SetupEventNotifyInterrupt asked for (0: none).
    pub notify_vector: AtomicU8,
}

impl TdShared {
    /// Records the first outcome, stops every vCPU from entering again and kicks them out.
    pub fn set_outcome(&self, outcome: GuestOutcome) {
        {
            let mut o = self.outcome.lock();
            if o.is_none() {
                *o = Some(outcome);
            }
        }
        self.halt();
    }

    /// Types `bytes` into the TD's consoles: the UART's receive queue and, once its driver
    /// runs, the virtio console's; returns how many bytes the emptier of the two took (each
    /// holds a bounded backlog, and a guest reads the one it uses).
    pub fn type_input(&self, bytes: &[u8]) -> usize {
        let mut taken = self.uart.type_input(bytes);
        if let Some((device, input)) = &self.virtio_console {
            taken = taken.max(input.push(bytes));
            device.run_queue(crate::devices::virtio::console::RX_QUEUE);
        }
        taken
    }

    /// Presses the TD's ACPI power button; false if it has none.
    pub fn press_power_button(&self) -> bool {
        match &self.ioapic {
            Some(ioapic) => {
                ioapic.pulse(crate::acpi::POWER_BUTTON_GSI as usize);
                true
            }
            None => false,
        }
    }

    /// Stops entry for good and kicks every vCPU out.
    pub fn halt(&self) {
        self.run.store(RUN_HALT, Ordering::SeqCst);
        self.vcpus.kick_all();
    }

    /// The recorded outcome.
    pub fn outcome(&self) -> Option<GuestOutcome> {
        *self.outcome.lock()
    }

    /// Every vCPU is parked, out of the TD and flushed.
    pub fn quiescent(&self) -> bool {
        self.vcpus.vcpus.iter().all(VcpuShared::is_quiescent)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_scaled_and_offset_guest_tsc_converts_deadlines_to_host_time() {
        let tsc = GuestTsc::default();
        // Unscaled: 1000 ticks ahead at 1000 ticks per ms is 1 ms.
        assert_eq!(tsc.ns_until(11_000, 10_000, 1_000), 1_000_000);
        // Half the host's rate, started at 5000: at host 10_000 the guest reads 10_000.
        tsc.set(5_000, 1 << 47);
        assert_eq!(tsc.guest(10_000), 10_000);
        // 500 guest ticks at 500 per ms.
        assert_eq!(tsc.ns_until(10_500, 10_000, 1_000), 1_000_000);
        // A deadline in the past is now.
        assert_eq!(tsc.ns_until(9_000, 10_000, 1_000), 0);
    }

    #[test]
    fn console_ring_keeps_the_newest_bytes() {
        let r = ConsoleRing::new(8);
        r.push(b"hello ");
        assert_eq!(r.read(0, 100), (0, b"hello ".to_vec()));
        r.push(b"world");
        assert_eq!(r.total(), 11);
        // Offsets 0..3 were dropped.
        assert_eq!(r.read(0, 100), (3, b"lo world".to_vec()));
        assert_eq!(r.read(6, 3), (6, b"wor".to_vec()));
        assert_eq!(r.read(50, 3), (11, alloc::vec::Vec::new()));
    }
}
