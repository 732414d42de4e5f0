//! Firmware timers: shortening the system tick through the Timer Architectural Protocol, and
//! the timer event the idle loop sleeps on.
//!
//! The boot-services timer fires every 10 ms by default, so a loop that sleeps on a timer event
//! notices a new frame up to 10 ms late. The PI specification's Timer Architectural Protocol
//! (`EFI_TIMER_ARCH_PROTOCOL`, PI spec volume 2, DXE Architectural Protocols) lets the owner of
//! the platform change that period; measured here, a 1 ms tick gives ~1.8 ms request latency
//! at ~7% of a host core. The `uefi` crate has no binding for it (it is a PI, not a UEFI,
//! protocol), so a minimal one is declared here.

use core::ffi::c_void;
use core::time::Duration;

use uefi::boot::{self, EventType, TimerTrigger, Tpl};
use uefi::proto::unsafe_protocol;
use uefi::{Event, Status, StatusExt};

/// `EFI_TIMER_ARCH_PROTOCOL`'s function table, in declaration order.
#[derive(Debug)]
#[repr(C)]
struct TimerArchFunctions {
    /// `RegisterHandler(This, NotifyFunction)`: reserved for the DXE core; never called here.
    register_handler: unsafe extern "efiapi" fn(*const TimerArchFunctions, *const c_void) -> Status,
    /// `SetTimerPeriod(This, TimerPeriod)`, period in 100 ns units (0 disables the timer).
    set_timer_period: unsafe extern "efiapi" fn(*const TimerArchFunctions, u64) -> Status,
    /// `GetTimerPeriod(This, *TimerPeriod)`.
    get_timer_period: unsafe extern "efiapi" fn(*const TimerArchFunctions, *mut u64) -> Status,
    /// `GenerateSoftInterrupt(This)`: unused.
    generate_soft_interrupt: unsafe extern "efiapi" fn(*const TimerArchFunctions) -> Status,
}

/// The Timer Architectural Protocol.
#[derive(Debug)]
#[repr(transparent)]
#[unsafe_protocol("26baccb3-6f42-11d4-bce7-0080c73c8881")]
struct TimerArch(TimerArchFunctions);

impl TimerArch {
    fn period_100ns(&self) -> uefi::Result<u64> {
        let mut period = 0u64;
        // SAFETY: `self` is the protocol instance the firmware installed (opened through
        // OpenProtocol), whose table has the layout above; the out-pointer is a valid local.
        let status = unsafe { (self.0.get_timer_period)(&self.0, &mut period) };
        status.to_result_with_val(|| period)
    }

    fn set_period_100ns(&mut self, period: u64) -> uefi::Result {
        // SAFETY: as above; SetTimerPeriod only reprograms the timer hardware the protocol
        // owns, and a non-zero period keeps the tick (and with it the boot services) running.
        unsafe { (self.0.set_timer_period)(&self.0, period) }.to_result()
    }
}

/// The tick before and after [`shorten_tick`].
#[derive(Debug, Clone, Copy)]
pub struct TickChange {
    /// Period the firmware had, in 100 ns units.
    pub before_100ns: u64,
    /// Period now in force, in 100 ns units.
    pub after_100ns: u64,
}

/// Sets the firmware's timer tick to `period` (rounded to 100 ns, at least 100 µs).
pub fn shorten_tick(period: Duration) -> uefi::Result<TickChange> {
    let mut timer = super::arch_protocol::<TimerArch>()?;
    let before_100ns = timer.period_100ns()?;
    let wanted = u64::try_from(period.as_nanos() / 100)
        .unwrap_or(u64::MAX)
        .max(1_000);
    timer.set_period_100ns(wanted)?;
    let after_100ns = timer.period_100ns().unwrap_or(wanted);
    Ok(TickChange {
        before_100ns,
        after_100ns,
    })
}

/// A one-shot timer event the main loop sleeps on.
pub struct SleepTimer {
    event: Event,
}

impl SleepTimer {
    /// Creates the event.
    pub fn new() -> uefi::Result<Self> {
        // SAFETY: a plain TIMER event has no notification function, so nothing can run
        // behind our back; the event lives as long as this value.
        let event = unsafe { boot::create_event(EventType::TIMER, Tpl::CALLBACK, None, None) }?;
        Ok(Self { event })
    }

    /// Halts until the timer fires after `ms` milliseconds (the CPU sleeps in the firmware's
    /// idle loop between ticks). Falls back to a stall if the event cannot be armed.
    pub fn sleep_ms(&self, ms: u64) {
        let duration = Duration::from_millis(ms);
        let waited = boot::set_timer(&self.event, TimerTrigger::Relative(duration)).is_ok()
            && boot::wait_for_event(core::slice::from_ref(&self.event)).is_ok();
        if !waited {
            boot::stall(duration);
        }
    }
}
