//! `cargo xtask bench api`: boots the appliance image in QEMU with a known token, uploads
//! Debian's OVMF.fd and creates one TD (so `GET /v1/tds` has something to list), then
//! measures `GET /v1/health` and `GET /v1/tds` over several concurrent keep-alive
//! connections through the forwarded port for a fixed time.
//!
//! Output: per-route lines, then as the very last line
//! `api: conns=N rps=R p50_ms=P p99_ms=Q` (requests per second over all connections; latency
//! percentiles of single requests, both routes together).

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

/// The final line.
pub fn summary_line(conns: usize, requests: usize, seconds: f64, all: &[f64]) -> String {
    format!(
        "api: conns={conns} rps={:.0} p50_ms={:.2} p99_ms={:.2}",
        requests as f64 / seconds,
        quantile(all, 0.50) * 1e3,
        quantile(all, 0.99) * 1e3
    )
}

/// Builds the image and boots it in QEMU with the benches' token, as `name`; returns the
/// instance, the forwarded port and the firmware files once the API answers.
pub(crate) fn boot_appliance(ws: &Workspace, name: &str) -> Result<(Qemu, u16, Firmware)> {
    let composed = compose(&ConfigArgs {
        file: None,
        token: Some(TOKEN.to_string()),
    })?;
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
    let (mut vm, port, _) = boot_appliance(ws, "api")?;
    let outcome = (|| {
        prepare(port)?;
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
                "bench api: GET {path}: {} requests, {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
                values.len(),
                values.len() as f64 / seconds,
                quantile(&values, 0.5) * 1e3,
                quantile(&values, 0.99) * 1e3
            );
        }
        if errors > 0 {
            println!("bench api: {errors} failed requests (reconnected)");
        }
        let all = sorted(per_route.concat());
        Ok(summary_line(CONNECTIONS, all.len(), seconds, &all))
    })();
    if outcome.is_err() {
        eprintln!("bench api: serial log:\n{}", vm.serial_log());
    }
    vm.kill();
    println!("{}", outcome?);
    Ok(())
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
        let line = summary_line(4, 2000, 10.0, &[0.001, 0.002, 0.003]);
        assert_eq!(line, "api: conns=4 rps=200 p50_ms=2.00 p99_ms=3.00");
    }
}
