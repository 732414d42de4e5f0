//! The UEFI entry point and the main loop.
//!
//! Order of events: disable the watchdog (boot services are never exited, and an armed
//! watchdog resets the machine after 5 minutes), start logging, calibrate the TSC, read the
//! configuration file from the boot medium or the PXE boot server (before the NIC is opened
//! exclusively, which disconnects the PXE driver), refuse to serve if it is invalid, generate
//! the API token if none is configured, shorten the firmware tick, bring up the NIC, then poll
//! the network stack and the API from one loop forever, sleeping on a timer event whenever
//! traffic stops (see `appliance::idle`).

use api_tls::{TlsIdentity, TlsService};
use appliance::config::{
    ApiTls, ApplianceConfig, ConfigSource, ShowIpv4, Summary, TokenSource, parse_config,
};
use appliance::idle::IdleAction;
use appliance::ratelimit::RateLimit;
use appliance::runtime::Runtime;
use appliance::service::{ApiService, ApiTransport, HttpsWithHealthPort};
use appliance::startup::AddressEvent;
use log::{Level, error, info, warn};
use mgmt_api::{Api, BearerToken, Role, TlsInfo};
use uefi::prelude::*;

use crate::platform::config_file::{self, Fetched};
use crate::platform::{
    self, clock::now_ms, logger::console, snp::SnpNic, timer::SleepTimer, tls_identity,
};

/// Random bytes in a generated API token (written as 64 hex characters).
const GENERATED_TOKEN_BYTES: usize = 32;

/// How often the reason for refusing to serve is printed again.
const REFUSAL_REPEAT_MS: u64 = 30_000;

/// The UEFI entry point: never returns.
#[entry]
fn main() -> Status {
    let entry_tsc = platform::clock::read_tsc();
    // Info until the configuration says otherwise.
    platform::logger::init(log::LevelFilter::Info);
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
    let (mut config, source) = load_configuration();
    log::set_max_level(config.log_level);
    info!("configuration from {source}: {}", Summary(&config));
    let token_source = if config.api_tokens.count(Role::Admin) > 0 {
        TokenSource::Configured
    } else {
        // A fresh random token cannot collide with a configured one (they are checked
        // for duplicates); were it to, the set stays without it and the console says so.
        if let Err(err) = config.api_tokens.insert(generate_token(), Role::Admin) {
            error!("the generated admin token was not accepted: {err}");
        }
        TokenSource::Generated
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
    let tls = api_tls_identity(&config);
    let tls_info = tls.as_ref().map(|(identity, certificate_source)| TlsInfo {
        fingerprint: alloc::format!("{}", identity.fingerprint()),
        certificate_source,
    });
    let mut host_info = config.host_info(&source, token_source);
    host_info.tls = tls_info;
    let mut api = Api::new(now_ms())
        .with_host_info(host_info)
        .with_tokens(config.api_tokens.clone());
    match crate::host_init::bring_up(&config) {
        Ok(host) => api = api.with_host(host),
        Err(failure) => {
            error!("no TD host: {}", failure.reason);
            api.set_host_failure_with_steps(failure.reason, failure.steps);
        }
    }
    match tls {
        Some((identity, _)) => {
            let tls_config = match api_tls::server_config(&identity, tls_identity::unix_now_s) {
                Ok(tls_config) => tls_config,
                Err(e) => halt(format_args!("TLS cannot use its certificate: {e}")),
            };
            let service = TlsService::new(
                ApiService::new(api, config.api_limits.clone()),
                tls_config,
                config.api_limits.head_timeout_ms,
            );
            match config.server.second_port {
                Some(health_port) => {
                    info!("api: plain HTTP on port {health_port} answers GET /v1/health only");
                    let service = HttpsWithHealthPort::new(service, health_port);
                    serve(
                        Runtime::with_service(nic, &config, service, now_ms(), seed),
                        &sleeper,
                    )
                }
                None => serve(
                    Runtime::with_service(nic, &config, service, now_ms(), seed),
                    &sleeper,
                ),
            }
        }
        None => serve(Runtime::new(nic, &config, api, now_ms(), seed), &sleeper),
    }
}

/// The main loop: polls the network and the TD host, logs address changes and frame drops,
/// sleeps when idle. Never returns.
fn serve<S: ApiTransport>(mut runtime: Runtime<SnpNic, S>, sleeper: &SleepTimer) -> !
where
    S::Conn: 'static,
{
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
            let drops = DropCounters::read(runtime.stack());
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

/// The API's TLS identity and where it came from (`"configured"` or `"generated"`), or
/// `None` for plain HTTP. Prints the certificate's fingerprint, as SSH prints host keys.
fn api_tls_identity(config: &ApplianceConfig) -> Option<(TlsIdentity, &'static str)> {
    api_tls::set_random_source(|bytes| platform::rng::secure_random_bytes(bytes).is_ok());
    if tls_identity::init_wall_clock().is_none() {
        warn!("tls: the firmware has no real-time clock; certificates are dated 1970");
    }
    let (identity, source) = match &config.api_tls {
        ApiTls::Off => {
            warn!("api: TLS is off (api.tls = false): the API and its tokens travel in clear text");
            return None;
        }
        ApiTls::Configured(identity) => (identity.clone(), "configured"),
        ApiTls::Generated => match tls_identity::load_or_generate() {
            Ok((identity, _)) => (identity, "generated"),
            Err(e) => halt(format_args!("tls: cannot generate a certificate: {e}")),
        },
    };
    info!(
        "api: HTTPS only; {source} TLS certificate SHA-256 fingerprint {}",
        identity.fingerprint()
    );
    Some((identity, source))
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
    fn read(stack: &net::NetStack<SnpNic>) -> Self {
        let stats = stack.stats();
        let snp = stack.nic().errors();
        Self {
            transmit_dropped: stats.transmit_dropped,
            receive_errors: stats.receive_errors,
            snp_receive_errors: snp.receive,
            snp_transmit_refused: snp.transmit,
            tx_ring_full: snp.tx_ring_full,
        }
    }
}

/// Reads and parses the configuration file; on any error, refuses to serve (never returns).
fn load_configuration() -> (ApplianceConfig, ConfigSource) {
    match config_file::fetch() {
        Ok(Fetched::Missing(source)) => (ApplianceConfig::default(), source),
        Ok(Fetched::File(bytes, source)) => match parse_config(&bytes) {
            Ok(config) => (config, source),
            Err(errors) => refuse_to_serve(&|| {
                console(
                    Level::Error,
                    format_args!("invalid configuration in {source}:"),
                );
                for problem in &errors.0 {
                    console(Level::Error, format_args!("  {problem}"));
                }
            }),
        },
        Err(e) => refuse_to_serve(&|| {
            console(Level::Error, format_args!("configuration unreadable: {e}"));
        }),
    }
}

/// A token from the CPU's random number instructions, printed once on the console (whatever
/// the log level): the operator needs it and it is not stored anywhere.
fn generate_token() -> BearerToken {
    let mut bytes = [0u8; GENERATED_TOKEN_BYTES];
    match platform::rng::secure_random_bytes(&mut bytes) {
        Ok(random_source) => {
            let token = BearerToken::from_random_bytes(&bytes);
            console(
                Level::Warn,
                format_args!(
                    "no api.token configured; generated API token (from {random_source}, shown once): {}",
                    token.as_str()
                ),
            );
            token
        }
        Err(e) => refuse_to_serve(&|| {
            console(
                Level::Error,
                format_args!(
                    "cannot generate an API token: {e}; set api.token in the configuration file"
                ),
            );
        }),
    }
}

/// Shows why the appliance does not serve, again every [`REFUSAL_REPEAT_MS`] (for whoever
/// attaches to the console later), and never brings the network up.
fn refuse_to_serve(report: &dyn Fn()) -> ! {
    let sleeper = SleepTimer::new().ok();
    loop {
        report();
        console(
            Level::Error,
            format_args!(
                "not serving: fix the configuration file and reboot (repeated every {} s)",
                REFUSAL_REPEAT_MS / 1000
            ),
        );
        match &sleeper {
            Some(sleeper) => sleeper.sleep_ms(REFUSAL_REPEAT_MS),
            None => boot::stall(core::time::Duration::from_millis(REFUSAL_REPEAT_MS)),
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
