//! The UEFI entry point and the main loop.
//!
//! Order of events: disable the watchdog (boot services are never exited, and an armed
//! watchdog resets the machine after 5 minutes), start logging, calibrate the TSC, shorten
//! the firmware tick, bring up the NIC, then poll the network stack and the API from one loop
//! forever, sleeping on a timer event whenever traffic stops (see `appliance::idle`).

use appliance::config::{ApplianceConfig, ShowIpv4};
use appliance::idle::IdleAction;
use appliance::ratelimit::RateLimit;
use appliance::runtime::Runtime;
use appliance::startup::AddressEvent;
use log::{error, info, warn};
use uefi::prelude::*;

use crate::platform::{self, clock::now_ms, snp::SnpNic, timer::SleepTimer};

/// The UEFI entry point: never returns.
#[entry]
fn main() -> Status {
    let entry_tsc = platform::clock::read_tsc();
    let config = ApplianceConfig::built_in();
    let log_level = config
        .as_ref()
        .map_or(log::LevelFilter::Info, |config| config.log_level);
    platform::logger::init(log_level);
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
    let config = match config {
        Ok(config) => config,
        Err(e) => halt(format_args!(
            "invalid built-in configuration (APPLIANCE_IPV4): {e}"
        )),
    };
    let tick = core::time::Duration::from_micros(config.timer_tick_us);
    match platform::timer::shorten_tick(tick) {
        Ok(change) => info!(
            "timer tick {} us -> {} us",
            change.before_100ns / 10,
            change.after_100ns / 10
        ),
        Err(e) => warn!(
            "could not shorten the timer tick ({:?}); idle latency follows the default tick",
            e.status()
        ),
    }
    let sleeper = match SleepTimer::new() {
        Ok(sleeper) => sleeper,
        Err(e) => halt(format_args!(
            "cannot create the idle timer event: {:?}",
            e.status()
        )),
    };
    let nic = match SnpNic::open_first() {
        Ok(nic) => nic,
        Err(e) => halt(format_args!("{e}")),
    };
    let (seed, seed_source) = platform::rng::seed();
    info!(
        "network: {}, API port {}, {} listeners (random seed from {seed_source})",
        ShowIpv4(&config.server.ipv4),
        config.server.port,
        config.server.listeners
    );
    let mut runtime = Runtime::new(nic, &config, now_ms(), seed);
    let mut drop_report = RateLimit::new(DROP_REPORT_INTERVAL_MS, now_ms());
    let mut reported_drops = DropCounters::default();
    loop {
        let outcome = runtime.step(now_ms());
        match outcome.address_event {
            Some(AddressEvent::FirstListening(listening)) => info!("{listening}"),
            Some(AddressEvent::Changed {
                address: [a, b, c, d],
                prefix_len,
            }) => info!("address changed to {a}.{b}.{c}.{d}/{prefix_len}"),
            Some(AddressEvent::Lost) => warn!("address lost; reconfiguring"),
            None => {}
        }
        if drop_report.ready(now_ms()) {
            let drops = DropCounters::read(&runtime);
            if drops != reported_drops {
                warn!("frame drops since boot: {drops:?}");
                reported_drops = drops;
            }
        }
        match outcome.action {
            IdleAction::PollAgain => core::hint::spin_loop(),
            IdleAction::Sleep { ms } => sleeper.sleep_ms(ms),
        }
    }
}

/// How often a change in the drop counters may be logged.
const DROP_REPORT_INTERVAL_MS: u64 = 10_000;

/// Counters of lost frames (each loss costs a TCP retransmission timeout).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct DropCounters {
    transmit_dropped: u64,
    receive_errors: u64,
    snp_receive_errors: u64,
    snp_transmit_refused: u64,
    tx_ring_full: u64,
}

impl DropCounters {
    fn read(runtime: &Runtime<SnpNic>) -> Self {
        let stats = runtime.stack().stats();
        let snp = runtime.stack().nic().errors();
        Self {
            transmit_dropped: stats.transmit_dropped,
            receive_errors: stats.receive_errors,
            snp_receive_errors: snp.receive,
            snp_transmit_refused: snp.transmit,
            tx_ring_full: snp.tx_ring_full,
        }
    }
}

/// Logs a fatal error and halts (the CPU sleeps between timer interrupts) forever.
fn halt(reason: core::fmt::Arguments<'_>) -> ! {
    error!("fatal: {reason}; halting");
    loop {
        x86_64::instructions::hlt();
    }
}

/// A panic is a bug: print it on the serial console and reset the machine (which under
/// `qemu -no-reboot` ends QEMU, so tests fail at once instead of waiting for a timeout).
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    platform::logger::emergency_write(format_args!("\npanic: {info}\nresetting\n"));
    uefi::runtime::reset(uefi::runtime::ResetType::COLD, Status::ABORTED, None)
}
