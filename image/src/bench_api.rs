//! `cargo xtask bench api`: boots the appliance image in QEMU with a known token, uploads
//! Debian's OVMF.fd and creates one TD (so `GET /v1/tds` has something to list), then
//! measures `GET /v1/health` and `GET /v1/tds` over several concurrent keep-alive
//! connections through the forwarded port for a fixed time.
//!
//! Then two more phases:
//! - 256 keep-alive connections, all open at once (opened one after another), each
//!   sending `GET /v1/health` in a loop for 10 s (no request may fail);
//! - the hostile mix of [`crate::hostile`] (64 slow-header clients, 32 half-open
//!   handshakes, 32 long polls) held for 60 s while a prober opens a fresh connection for
//!   one `GET /v1/health` every 200 ms.
//!
//! It boots the appliance twice: with `api.tls = false` for the plain-HTTP anchor, then with
//! its default HTTPS (the generated certificate, pinned by the fingerprint on the console)
//! for the same keep-alive phase over TLS, `CONNECTIONS` clients doing nothing but full TLS
//! handshakes for 10 s, and the two phases below.
//!
//! Output: per-phase lines, then as the very last line
//! `api: conns=4 rps=A p50_ms=B p99_ms=C tls_rps=D tls_p50_ms=E handshakes_per_s=F
//! conns256_rps=G hostile_probe_p99_ms=H` (requests per second over all connections and
//! latency percentiles of single requests, both routes together, plain and over TLS; full
//! handshakes per second; requests per second over 256 HTTPS connections; the prober's p99).

use std::time::{Duration, Instant};

use crate::appconfig::{ConfigArgs, compose};
use crate::build::build_appliance;
use crate::deps::{self, Firmware};
use crate::error::{ImageError, Result};
use crate::http::{Connection, HttpResponse};
use crate::qemu::{BootMedium, Qemu, QemuConfig, free_port};
use crate::workspace::Workspace;

/// Concurrent keep-alive connections.
pub const CONNECTIONS: usize = 4;
/// How long the measured phase runs.
pub const DURATION: Duration = Duration::from_secs(10);
/// Warm-up before measuring.
const WARM_UP: Duration = Duration::from_secs(1);
/// The bench's token.
pub(crate) const TOKEN: &str = "bench-api-token";
/// Timeout of every connect, read and write.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the image may take to answer health.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// The firmware uploaded (Debian package `ovmf`).
pub(crate) const OVMF_PATH: &str = "/usr/share/ovmf/OVMF.fd";

/// Keep-alive connections of the many-connections phase.
pub const MANY_CONNECTIONS: usize = 256;
/// How long the many-connections phase measures.
const MANY_DURATION: Duration = Duration::from_secs(10);
/// How long the hostile mix is held while the prober runs.
pub const HOSTILE_DURATION: Duration = Duration::from_secs(60);
/// How often the prober sends its health request.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// How long one probe may take before it counts as unanswered.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The two measured requests (alternated on every connection).
const ROUTES: [&str; 2] = ["/v1/health", "/v1/tds"];

/// What one connection measured.
#[derive(Debug, Default)]
struct Samples {
    /// Latencies per route, in seconds.
    latencies: [Vec<f64>; 2],
    errors: usize,
}

pub(crate) fn request(
    connection: &mut Connection,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<HttpResponse> {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n");
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    if !body.is_empty() || method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    connection.send(head.as_bytes())?;
    connection.send(body)?;
    connection.read_response()
}

pub(crate) fn expect(response: &HttpResponse, status: u16, what: &'static str) -> Result<()> {
    if response.status == status {
        Ok(())
    } else {
        eprintln!(
            "bench api: {what}: status {} {}",
            response.status,
            response.body_text()
        );
        Err(ImageError::BadResponse(what))
    }
}

/// Uploads the firmware and creates one TD.
fn prepare(port: u16) -> Result<()> {
    let firmware = std::fs::read(OVMF_PATH).map_err(|source| ImageError::Io {
        action: "read the firmware to upload",
        path: OVMF_PATH.into(),
        source,
    })?;
    let mut connection = Connection::open(port, IO_TIMEOUT)?;
    let response = request(
        &mut connection,
        "PUT",
        "/v1/images/bench",
        Some("application/octet-stream"),
        &firmware,
    )?;
    expect(
        &response,
        201,
        "upload OVMF.fd (the appliance must serve the full API)",
    )?;
    let body = br#"{"name":"bench","image":"bench","vcpus":1,"memory_mib":64}"#;
    let response = request(
        &mut connection,
        "POST",
        "/v1/tds",
        Some("application/json"),
        body,
    )?;
    expect(&response, 201, "create a TD")
}

/// One connection's loop until `end`; samples only after `measure_from`.
fn drive(port: u16, measure_from: Instant, end: Instant) -> Result<Samples> {
    let mut connection = Connection::open(port, IO_TIMEOUT)?;
    let mut samples = Samples::default();
    let mut turn = 0usize;
    loop {
        let start = Instant::now();
        if start >= end {
            return Ok(samples);
        }
        let index = turn % ROUTES.len();
        turn += 1;
        let path = ROUTES.get(index).copied().unwrap_or("/v1/health");
        match request(&mut connection, "GET", path, None, b"") {
            Ok(response) if response.status == 200 => {
                if start >= measure_from
                    && let Some(list) = samples.latencies.get_mut(index)
                {
                    list.push(start.elapsed().as_secs_f64());
                }
            }
            Ok(_) | Err(_) => {
                samples.errors += 1;
                connection = Connection::open(port, IO_TIMEOUT)?;
            }
        }
    }
}

/// `MANY_CONNECTIONS` keep-alive connections, each sending `GET /v1/health` in a loop:
/// (requests answered 200 in the measured time, errors).
///
/// The connections are opened one after another, each answered once, before the
/// measurement starts. Opened all at once, a few of the 256 SYNs are lost: QEMU delivers
/// them faster than the appliance drains the 64 receive buffers OVMF's virtio-net driver
/// keeps posted, and QEMU's user-mode network stack retries a lost SYN only after 3 s, then
/// 6 s, 12 s (a physical NIC has rings of hundreds of buffers).
fn many_connections(port: u16) -> Result<(usize, usize)> {
    let mut connections = Vec::with_capacity(MANY_CONNECTIONS);
    for _ in 0..MANY_CONNECTIONS {
        let mut connection = Connection::open(port, IO_TIMEOUT)?;
        let response = request(&mut connection, "GET", "/v1/health", None, b"")?;
        expect(&response, 200, "health on a new connection")?;
        connections.push(connection);
    }
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(MANY_CONNECTIONS + 1));
    let handles: Vec<_> = connections
        .into_iter()
        .map(|mut connection| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let end = Instant::now() + MANY_DURATION;
                let (mut ok, mut errors) = (0usize, 0usize);
                while Instant::now() < end {
                    match request(&mut connection, "GET", "/v1/health", None, b"") {
                        Ok(response) if response.status == 200 => ok += 1,
                        _ => {
                            errors += 1;
                            match Connection::open(port, IO_TIMEOUT) {
                                Ok(fresh) => connection = fresh,
                                Err(_) => return (ok, errors),
                            }
                        }
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    barrier.wait();
    let mut totals = (0, 0);
    for handle in handles {
        let (ok, errors) = handle
            .join()
            .map_err(|_| ImageError::BadResponse("a bench connection panicked"))?;
        totals.0 += ok;
        totals.1 += errors;
    }
    Ok(totals)
}

/// One probe: `GET /v1/health` on a fresh connection; its latency, or `None` when it was not
/// answered 200 within [`PROBE_TIMEOUT`].
pub fn probe_health(port: u16) -> Option<Duration> {
    let start = Instant::now();
    match crate::http::get(port, "/v1/health", PROBE_TIMEOUT) {
        Ok(response) if response.status == 200 => Some(start.elapsed()),
        _ => None,
    }
}

/// What the prober saw while the hostile mix held the appliance.
#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    /// Latencies of answered probes, in seconds, sorted.
    pub answered: Vec<f64>,
    /// Probes not answered in time.
    pub unanswered: usize,
    /// The hostile clients' counters at the end.
    pub hostile: crate::hostile::HostileStats,
}

/// Holds the standard hostile mix (see [`crate::hostile`]) against the API at `port` for
/// `duration` while `probe` runs every [`PROBE_INTERVAL`].
///
/// On a port with a pinned certificate (HTTPS) the hostile clients speak TLS too.
pub fn probe_under_hostile_mix(
    port: u16,
    token: &str,
    duration: Duration,
    mut probe: impl FnMut() -> Option<Duration>,
) -> ProbeReport {
    use crate::hostile::{HostileClients, HostileCounts, spawn};
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tls = crate::http::pinned_certificate(port).map(crate::http::pinned_client_config);
    let clients = HostileClients::new(port, HostileCounts::STANDARD, token, tls);
    let hostile = spawn(clients, stop.clone());
    // Let every hostile connection open before probing.
    std::thread::sleep(Duration::from_secs(2));
    let mut report = ProbeReport::default();
    let end = Instant::now() + duration;
    let mut next = Instant::now();
    while next < end {
        match probe() {
            Some(latency) => report.answered.push(latency.as_secs_f64()),
            None => report.unanswered += 1,
        }
        next += PROBE_INTERVAL;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Ok(clients) = hostile.join() {
        report.hostile = clients.stats();
    }
    report.answered.sort_by(f64::total_cmp);
    report
}

/// The `q` quantile (0..=1) of sorted `values`, nearest rank.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
        .unwrap_or(f64::NAN)
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// What one keep-alive phase measured.
#[derive(Debug, Clone, Default)]
pub struct KeepAlive {
    /// Latencies of the answered requests, in seconds, sorted (their count is the requests).
    pub latencies: Vec<f64>,
}

/// What the final line reports.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The keep-alive phase over plain HTTP.
    pub plain: KeepAlive,
    /// The keep-alive phase over HTTPS.
    pub tls: KeepAlive,
    /// Full TLS handshakes completed in `DURATION`.
    pub handshakes: usize,
    /// Requests answered over [`MANY_CONNECTIONS`] HTTPS connections in `MANY_DURATION`.
    pub many_requests: usize,
    /// The prober's latencies under the hostile mix, sorted.
    pub probes: Vec<f64>,
}

/// The final line.
pub fn summary_line(summary: &Summary) -> String {
    let seconds = DURATION.as_secs_f64();
    let plain = &summary.plain.latencies;
    let tls = &summary.tls.latencies;
    format!(
        "api: conns={CONNECTIONS} rps={:.0} p50_ms={:.2} p99_ms={:.2} tls_rps={:.0} \
         tls_p50_ms={:.2} handshakes_per_s={:.0} conns256_rps={:.0} hostile_probe_p99_ms={:.1}",
        plain.len() as f64 / seconds,
        quantile(plain, 0.50) * 1e3,
        quantile(plain, 0.99) * 1e3,
        tls.len() as f64 / seconds,
        quantile(tls, 0.50) * 1e3,
        summary.handshakes as f64 / seconds,
        summary.many_requests as f64 / MANY_DURATION.as_secs_f64(),
        quantile(&summary.probes, 0.99) * 1e3,
    )
}

/// Builds the image and boots it in QEMU with the benches' token, as `name`; returns the
/// instance, the forwarded port and the firmware files once the API answers.
pub(crate) fn boot_appliance(ws: &Workspace, name: &str) -> Result<(Qemu, u16, Firmware)> {
    boot_appliance_with(ws, name, None)
}

/// Like [`boot_appliance`], with `config` (an `appliance.toml` text) under the token.
fn boot_appliance_with(
    ws: &Workspace,
    name: &str,
    config: Option<&str>,
) -> Result<(Qemu, u16, Firmware)> {
    let file = match config {
        Some(text) => {
            let path = ws
                .instances_dir()
                .join(format!("bench-{name}-{}.toml", std::process::id()));
            std::fs::create_dir_all(ws.instances_dir()).map_err(|source| ImageError::Io {
                action: "create directory",
                path: ws.instances_dir(),
                source,
            })?;
            std::fs::write(&path, text).map_err(|source| ImageError::Io {
                action: "write",
                path: path.clone(),
                source,
            })?;
            Some(path)
        }
        None => None,
    };
    let composed = compose(&ConfigArgs {
        file: file.clone(),
        token: Some(TOKEN.to_string()),
    });
    if let Some(file) = &file {
        let _ = std::fs::remove_file(file);
    }
    let composed = composed?;
    let image = build_appliance(ws)?;
    let firmware = deps::ensure()?;
    let port = free_port()?;
    let mut config = QemuConfig::new(
        &image,
        port,
        ws.instances_dir()
            .join(format!("bench-{name}-{}-{port}", std::process::id())),
    );
    config.medium = BootMedium::EspDir {
        config: Some(composed.text.clone()),
    };
    config.guest_port = composed.api_port;
    config.guest_address = composed.static_address;
    let mut vm = Qemu::start(&firmware, &config)?;
    match vm.wait_ready(READY_TIMEOUT) {
        Ok(ready) => {
            println!(
                "bench {name}: appliance ready after {:.1} s",
                ready.as_secs_f64()
            );
            Ok((vm, port, firmware))
        }
        Err(e) => {
            eprintln!("bench {name}: serial log:\n{}", vm.serial_log());
            vm.kill();
            Err(e)
        }
    }
}

/// Runs the benchmark; prints its report.
pub fn run(ws: &Workspace) -> Result<()> {
    // Plain HTTP (`api.tls = false`): the anchor the TLS figures are compared with.
    let (mut vm, port, _) = boot_appliance_with(ws, "api", Some("[api]\ntls = false\n"))?;
    let plain = (|| {
        prepare(port)?;
        keep_alive_phase(port, "http")
    })();
    if plain.is_err() {
        eprintln!("bench api: serial log:\n{}", vm.serial_log());
    }
    vm.kill();
    let plain = plain?;

    // HTTPS, the default: the certificate generated at first boot, pinned by its fingerprint.
    let (mut vm, port, _) = boot_appliance(ws, "api-tls")?;
    let outcome = (|| {
        prepare(port)?;
        let tls = keep_alive_phase(port, "https")?;
        let handshakes = handshake_phase(port)?;
        println!(
            "bench api: {CONNECTIONS} clients doing full TLS handshakes for {} s: {handshakes} \
             handshakes",
            DURATION.as_secs()
        );

        let (many_requests, many_errors) = many_connections(port)?;
        println!(
            "bench api: {MANY_CONNECTIONS} keep-alive HTTPS connections: {many_requests} \
             requests in {} s, {many_errors} errors",
            MANY_DURATION.as_secs()
        );
        if many_errors > 0 {
            return Err(ImageError::BadResponse(
                "requests over 256 connections failed (the target is none)",
            ));
        }

        let report = probe_under_hostile_mix(port, TOKEN, HOSTILE_DURATION, || probe_health(port));
        println!(
            "bench api: hostile mix (64 slow headers, 32 half-open TLS handshakes, 32 long \
             polls) for {} s: {} probes answered (each a new TLS connection; p50 {:.1} ms, \
             p99 {:.1} ms, max {:.1} ms), {} unanswered; hostile clients: {:?}",
            HOSTILE_DURATION.as_secs(),
            report.answered.len(),
            quantile(&report.answered, 0.5) * 1e3,
            quantile(&report.answered, 0.99) * 1e3,
            quantile(&report.answered, 1.0) * 1e3,
            report.unanswered,
            report.hostile,
        );
        if report.unanswered > 0 {
            return Err(ImageError::BadResponse(
                "health probes went unanswered under the hostile mix",
            ));
        }
        Ok(summary_line(&Summary {
            plain,
            tls,
            handshakes,
            many_requests,
            probes: report.answered,
        }))
    })();
    if outcome.is_err() {
        eprintln!("bench api: serial log:\n{}", vm.serial_log());
    }
    vm.kill();
    println!("{}", outcome?);
    Ok(())
}

/// `CONNECTIONS` keep-alive connections alternating the two routes for `DURATION` after a
/// warm-up; prints per-route lines labelled `scheme`.
fn keep_alive_phase(port: u16, scheme: &str) -> Result<KeepAlive> {
    let measure_from = Instant::now() + WARM_UP;
    let end = measure_from + DURATION;
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|_| std::thread::spawn(move || drive(port, measure_from, end)))
        .collect();
    let mut per_route: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut errors = 0usize;
    for handle in handles {
        let samples = handle
            .join()
            .map_err(|_| ImageError::BadResponse("a bench connection panicked"))??;
        errors += samples.errors;
        for (all, mine) in per_route.iter_mut().zip(samples.latencies) {
            all.extend(mine);
        }
    }
    let seconds = DURATION.as_secs_f64();
    for (path, values) in ROUTES.iter().zip(&per_route) {
        let values = sorted(values.clone());
        println!(
            "bench api: {scheme} GET {path}: {} requests, {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
            values.len(),
            values.len() as f64 / seconds,
            quantile(&values, 0.5) * 1e3,
            quantile(&values, 0.99) * 1e3
        );
    }
    if errors > 0 {
        println!("bench api: {scheme}: {errors} failed requests (reconnected)");
    }
    Ok(KeepAlive {
        latencies: sorted(per_route.concat()),
    })
}

/// `CONNECTIONS` clients each opening a connection, completing a TLS handshake and closing,
/// in a loop for `DURATION`: handshakes completed.
fn handshake_phase(port: u16) -> Result<usize> {
    let end = Instant::now() + DURATION;
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut done = 0usize;
                while Instant::now() < end {
                    let completed = Connection::open(port, IO_TIMEOUT)
                        .and_then(|mut connection| connection.handshake())
                        .is_ok_and(|chain| !chain.is_empty());
                    if !completed {
                        return Err(ImageError::BadResponse("a TLS handshake failed"));
                    }
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for handle in handles {
        total += handle
            .join()
            .map_err(|_| ImageError::BadResponse("a bench client panicked"))??;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&values, 0.5), 50.0);
        assert_eq!(quantile(&values, 0.99), 99.0);
        assert_eq!(quantile(&values, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn summary_line_has_the_documented_shape() {
        let line = summary_line(&Summary {
            plain: KeepAlive {
                latencies: vec![0.001; 2000],
            },
            tls: KeepAlive {
                latencies: vec![0.002; 1000],
            },
            handshakes: 500,
            many_requests: 30_000,
            probes: vec![0.004, 0.0123],
        });
        assert_eq!(
            line,
            "api: conns=4 rps=200 p50_ms=1.00 p99_ms=1.00 tls_rps=100 tls_p50_ms=2.00 \
             handshakes_per_s=50 conns256_rps=3000 hostile_probe_p99_ms=12.3"
        );
    }
}
