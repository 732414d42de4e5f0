//! End-to-end tests: build the appliance image, boot it ONCE in QEMU (through the
//! `appliance-image` library, on a free host port), then run named checks against its
//! management API over real TCP from the host.
//!
//! Prints `ok`/`FAILED` per check, the boot-to-ready time and the appliance's own
//! entry-to-listening time, and finally `N passed, M failed`; on failure also the guest's
//! serial log. Exits non-zero when any check fails.

use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use appliance::config::ApplianceConfig;
use appliance_image::build::build_appliance;
use appliance_image::deps;
use appliance_image::http::{self, Connection, HttpResponse};
use appliance_image::qemu::{Qemu, QemuConfig, free_port};
use appliance_image::serial::listening_after_ms;
use appliance_image::workspace::Workspace;

/// Timeout of every connect, read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the image may take from QEMU start to a 200 from `/v1/health`.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Connections opened at once by the concurrency check.
const CONCURRENT_CONNECTIONS: usize = 8;
/// Sequential requests timed for the latency figure.
const LATENCY_SAMPLES: usize = 20;

type CheckResult = Result<(), String>;

/// What every check gets: the forwarded host port.
struct Target {
    port: u16,
}

/// One named check.
struct Check {
    name: &'static str,
    run: fn(&Target) -> CheckResult,
}

const CHECKS: &[Check] = &[
    Check {
        name: "GET /v1/health answers 200 with a JSON body",
        run: health_is_200_json,
    },
    Check {
        name: "a malformed request gets 400 with a JSON error",
        run: malformed_request_is_400_json,
    },
    Check {
        name: "an unknown path gets 404 with a JSON error",
        run: unknown_path_is_404_json,
    },
    Check {
        name: "a body over the limit gets 413",
        run: oversized_body_is_413,
    },
    Check {
        name: "eight concurrent connections are all answered",
        run: concurrent_connections_all_answered,
    },
    Check {
        name: "keep-alive: two requests on one connection",
        run: keep_alive_serves_two_requests,
    },
];

fn expect_status(response: &HttpResponse, status: u16) -> CheckResult {
    if response.status == status {
        Ok(())
    } else {
        Err(format!(
            "expected status {status}, got {}: {}",
            response.status,
            response.body_text()
        ))
    }
}

fn expect_json(response: &HttpResponse) -> Result<serde_json::Value, String> {
    let content_type = response.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(format!("Content-Type is `{content_type}`, not JSON"));
    }
    serde_json::from_slice(&response.body)
        .map_err(|err| format!("body is not JSON ({err}): {}", response.body_text()))
}

fn health_is_200_json(target: &Target) -> CheckResult {
    let response = http::get(target.port, "/v1/health", IO_TIMEOUT).map_err(|e| e.to_string())?;
    expect_status(&response, 200)?;
    let body = expect_json(&response)?;
    match body.get("status").and_then(serde_json::Value::as_str) {
        Some("ok") => Ok(()),
        _ => Err(format!("health body has no \"status\":\"ok\": {body}")),
    }
}

/// Sends raw bytes on a fresh connection and reads one response.
fn raw_exchange(target: &Target, request: &[u8]) -> Result<HttpResponse, String> {
    let mut connection = Connection::open(target.port, IO_TIMEOUT).map_err(|e| e.to_string())?;
    connection.send(request).map_err(|e| e.to_string())?;
    connection.read_response().map_err(|e| e.to_string())
}

fn malformed_request_is_400_json(target: &Target) -> CheckResult {
    // A header line without a colon.
    let response = raw_exchange(target, b"GET /v1/health HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n")?;
    expect_status(&response, 400)?;
    expect_json(&response).map(drop)
}

fn unknown_path_is_404_json(target: &Target) -> CheckResult {
    let response =
        http::get(target.port, "/v1/no-such-thing", IO_TIMEOUT).map_err(|e| e.to_string())?;
    expect_status(&response, 404)?;
    expect_json(&response).map(drop)
}

fn oversized_body_is_413(target: &Target) -> CheckResult {
    let limit = ApplianceConfig::default().api_limits.max_body_bytes;
    let request = format!(
        "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        limit + 1
    );
    let response = raw_exchange(target, request.as_bytes())?;
    expect_status(&response, 413)?;
    expect_json(&response).map(drop)
}

/// Note: QEMU's user networking listens on the forwarded port with a backlog of 1, so some of
/// the eight connects can wait for the host kernel's SYN retransmission (1 s) before slirp
/// accepts them; that is outside the appliance, so only the request phase is timed.
fn concurrent_connections_all_answered(target: &Target) -> CheckResult {
    let port = target.port;
    let barrier = Arc::new(Barrier::new(CONCURRENT_CONNECTIONS));
    let workers: Vec<_> = (0..CONCURRENT_CONNECTIONS)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || -> Result<(u16, Duration), String> {
                let connection = Connection::open(port, IO_TIMEOUT);
                // Every thread reaches the barrier, even after a failed connect, so none waits
                // forever; then all requests go out together on open connections.
                barrier.wait();
                let start = Instant::now();
                let mut connection = connection.map_err(|e| e.to_string())?;
                let response = connection.get("/v1/health").map_err(|e| e.to_string())?;
                Ok((response.status, start.elapsed()))
            })
        })
        .collect();
    let mut failures = Vec::new();
    let mut slowest = Duration::ZERO;
    for (index, worker) in workers.into_iter().enumerate() {
        match worker.join() {
            Ok(Ok((200, took))) => slowest = slowest.max(took),
            Ok(Ok((status, _))) => failures.push(format!("#{index}: status {status}")),
            Ok(Err(err)) => failures.push(format!("#{index}: {err}")),
            Err(_) => failures.push(format!("#{index}: thread panicked")),
        }
    }
    if failures.is_empty() {
        println!(
            "e2e: slowest of {CONCURRENT_CONNECTIONS} concurrent requests: {:.1} ms",
            slowest.as_secs_f64() * 1e3
        );
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn keep_alive_serves_two_requests(target: &Target) -> CheckResult {
    let mut connection = Connection::open(target.port, IO_TIMEOUT).map_err(|e| e.to_string())?;
    for round in ["first", "second"] {
        let response = connection
            .get("/v1/health")
            .map_err(|e| format!("{round} request: {e}"))?;
        expect_status(&response, 200).map_err(|e| format!("{round} request: {e}"))?;
        if response
            .header("connection")
            .is_some_and(|value| value.eq_ignore_ascii_case("close"))
        {
            return Err(format!("{round} response says Connection: close"));
        }
    }
    Ok(())
}

/// Median and maximum of sequential requests, each on a new connection (reported, not
/// asserted: timing goes in measurements, not in pass/fail).
fn measure_latency(port: u16) -> Option<(Duration, Duration)> {
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for _ in 0..LATENCY_SAMPLES {
        let start = Instant::now();
        let response = http::get(port, "/v1/health", IO_TIMEOUT).ok()?;
        if response.status != 200 {
            return None;
        }
        samples.push(start.elapsed());
    }
    samples.sort();
    Some((*samples.get(samples.len() / 2)?, *samples.last()?))
}

fn main() -> ExitCode {
    let ws = Workspace::locate();
    println!("e2e: building the appliance image");
    let image = match build_appliance(&ws) {
        Ok(image) => image,
        Err(err) => {
            println!("FAILED build the image: {err}\n0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    let booted = deps::ensure().and_then(|firmware| {
        let port = free_port()?;
        let config = QemuConfig::new(
            &image,
            port,
            ws.instances_dir()
                .join(format!("e2e-{}-{port}", std::process::id())),
        );
        Qemu::start(&firmware, &config)
    });
    let mut vm = match booted {
        Ok(vm) => vm,
        Err(err) => {
            println!("FAILED start QEMU: {err}\n0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    println!("e2e: booting: {}", vm.command_line());
    let ready_after = match vm.wait_ready(BOOT_TIMEOUT) {
        Ok(ready_after) => ready_after,
        Err(err) => {
            println!("FAILED boot until /v1/health answers 200: {err}");
            println!("--- serial log ---\n{}", vm.serial_log());
            println!("--- QEMU stderr ---\n{}", vm.stderr_log());
            println!("0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    let listening = listening_after_ms(&vm.serial_log());
    println!(
        "e2e: boot to ready (QEMU start to first 200 from /v1/health): {:.2} s",
        ready_after.as_secs_f64()
    );
    match listening {
        Some(ms) => println!("e2e: appliance entry to listening: {ms} ms"),
        None => println!("e2e: appliance entry to listening: not found in the serial log"),
    }

    let target = Target {
        port: vm.host_port(),
    };
    let mut passed = 0usize;
    let mut failed = 0usize;
    for check in CHECKS {
        let start = Instant::now();
        match (check.run)(&target) {
            Ok(()) => {
                passed += 1;
                println!("ok     {} ({} ms)", check.name, start.elapsed().as_millis());
            }
            Err(reason) => {
                failed += 1;
                println!("FAILED {}: {reason}", check.name);
            }
        }
    }
    // The appliance must have logged when it started listening.
    if listening.is_some() {
        passed += 1;
        println!("ok     the appliance logs `listening on port 8080 after N ms`");
    } else {
        failed += 1;
        println!("FAILED the appliance logs `listening on port 8080 after N ms`");
    }
    match measure_latency(target.port) {
        Some((median, max)) => println!(
            "e2e: {LATENCY_SAMPLES} sequential GET /v1/health on new connections: median {:.1} ms, max {:.1} ms",
            median.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        ),
        None => println!("e2e: latency measurement failed"),
    }
    if failed > 0 {
        println!("--- serial log ---\n{}", vm.serial_log());
    }
    vm.kill();
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
