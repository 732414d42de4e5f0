//! The monotonic clock: the TSC, calibrated against the firmware's `Stall`.

use core::time::Duration;

use appliance::clock::{CalibrationError, TscClock};
use spin::Once;
use uefi::boot;

/// How long the calibration stalls. Longer is more precise but delays boot; 5 ms keeps the
/// error from the call overhead well under 0.1%.
const CALIBRATION_STALL_US: u64 = 5_000;

static CLOCK: Once<TscClock> = Once::new();

/// Reads the time-stamp counter.
pub fn read_tsc() -> u64 {
    // SAFETY: RDTSC only reads the CPU's time-stamp counter; it exists on every x86_64 CPU,
    // touches no memory and is allowed at CPL 0 where the appliance runs.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Calibrates the TSC (stalling [`CALIBRATION_STALL_US`]) and installs the global clock with
/// `origin_tsc` as time zero.
pub fn calibrate_and_install(origin_tsc: u64) -> Result<TscClock, CalibrationError> {
    let before = read_tsc();
    boot::stall(Duration::from_micros(CALIBRATION_STALL_US));
    let after = read_tsc();
    let clock = TscClock::calibrate(origin_tsc, before, after, CALIBRATION_STALL_US)?;
    Ok(*CLOCK.call_once(|| clock))
}

/// TSC ticks per millisecond (0 until the clock is calibrated).
pub fn ticks_per_ms() -> u64 {
    CLOCK.get().map_or(0, TscClock::ticks_per_ms)
}

/// Nanoseconds since the entry point (0 until the clock is calibrated).
pub fn now_ns() -> u64 {
    CLOCK.get().map_or(0, |clock| clock.elapsed_ns(read_tsc()))
}

/// Milliseconds since the entry point (0 until the clock is calibrated).
pub fn now_ms() -> u64 {
    CLOCK.get().map_or(0, |clock| clock.elapsed_ms(read_tsc()))
}
