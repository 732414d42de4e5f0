//! The UEFI entry point and the main loop.

use log::{LevelFilter, error, info, warn};
use uefi::prelude::*;

use crate::platform::{self, snp::SnpNic};

/// The UEFI entry point: never returns.
#[entry]
fn main() -> Status {
    let entry_tsc = platform::clock::read_tsc();
    platform::logger::init(LevelFilter::Info);
    if let Err(e) = boot::set_watchdog_timer(0, 0x10000, None) {
        warn!("could not disable the watchdog: {:?}", e.status());
    }
    match platform::clock::calibrate_and_install(entry_tsc) {
        Ok(clock) => info!(
            "appliance {} starting; TSC {} MHz",
            env!("CARGO_PKG_VERSION"),
            clock.frequency_khz() / 1000
        ),
        Err(e) => error!("TSC calibration failed ({e}); timestamps stay at zero"),
    }
    match platform::timer::shorten_tick(core::time::Duration::from_millis(1)) {
        Ok(change) => info!(
            "timer tick {} us -> {} us",
            change.before_100ns / 10,
            change.after_100ns / 10
        ),
        Err(e) => warn!("could not shorten the timer tick: {:?}", e.status()),
    }
    let nic = match SnpNic::open_first() {
        Ok(nic) => nic,
        Err(e) => halt(format_args!("{e}")),
    };
    let _ = nic.mac_address();
    halt(format_args!("network stack not integrated yet"))
}

/// Logs a fatal error and halts (the CPU sleeps between timer interrupts) forever.
fn halt(reason: core::fmt::Arguments<'_>) -> ! {
    error!("fatal: {reason}; halting");
    loop {
        x86_64::instructions::hlt();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    platform::logger::emergency_write(format_args!("\npanic: {info}\n"));
    loop {
        x86_64::instructions::hlt();
    }
}
