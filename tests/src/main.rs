//! End-to-end tests: build the appliance image, boot it in QEMU three times at once (through
//! the `appliance-image` library, each on a free host port), then run named checks against
//! each instance's management API over real TCP from the host:
//!
//! - `disk`: `disk.img` (GPT + FAT32 ESP) as a flashed node, with an `appliance.toml` that sets
//!   a token and a static address; the HTTP checks run here;
//! - `netboot`: no disk, OVMF's PXE client and QEMU's TFTP server, the configuration (a token,
//!   DHCP) fetched over TFTP;
//! - `defaults`: the ESP directory without a configuration file: defaults, and a token
//!   generated at boot and printed once on the console.
//!
//! Prints `ok`/`FAILED` per check, each instance's boot-to-ready time and the appliance's own
//! entry-to-listening time, and finally `N passed, M failed`; on failure also the serial logs.
//! Exits non-zero when any check fails.

mod openapi;
mod operator_story;
mod probe;
mod svm_guest;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use appliance::config::ApplianceConfig;
use appliance_image::build::{BuiltImage, build_appliance};
use appliance_image::deps::{self, Firmware};
use appliance_image::disk::write_disk_image;
use appliance_image::http::{self, Connection, HttpResponse};
use appliance_image::netboot::layout_netboot;
use appliance_image::qemu::{BootMedium, Qemu, QemuConfig, free_port};
use appliance_image::serial::{generated_token, listening_after_ms};
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

/// Token of the `disk` instance's configuration file.
const DISK_TOKEN: &str = "e2e-disk-token_2f9c";
/// Token of the `netboot` instance's configuration file.
const NETBOOT_TOKEN: &str = "e2e.netboot~token+7/a==";
/// The plain-HTTP health port of the `disk` instance (guest side).
const DISK_HEALTH_PORT: u16 = 8081;
/// A `reader` token of the `netboot` instance.
const READER_TOKEN: &str = "e2e-reader-only";

/// The certificate and key (PEM files) the `netboot` instance is configured with, made by
/// the OpenSSL command line once per run.
static CONFIGURED_CERTIFICATE: std::sync::OnceLock<Result<(PathBuf, PathBuf), String>> =
    std::sync::OnceLock::new();

/// The configured certificate and key files (made on first use).
fn configured_certificate() -> Result<(PathBuf, PathBuf), String> {
    CONFIGURED_CERTIFICATE
        .get_or_init(|| {
            let dir = std::env::temp_dir();
            let id = std::process::id();
            let certificate = dir.join(format!("e2e-configured-{id}.crt"));
            let key = dir.join(format!("e2e-configured-{id}.key"));
            let output = std::process::Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                ])
                .args(["-nodes", "-days", "30", "-subj", "/CN=localhost"])
                .args(["-addext", "subjectAltName=DNS:localhost"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&certificate)
                .output()
                .map_err(|e| format!("cannot run openssl: {e}"))?;
            if output.status.success() {
                Ok((certificate, key))
            } else {
                Err(format!(
                    "openssl req failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                ))
            }
        })
        .clone()
}

/// The configuration of the `netboot` instance: its admin token, a reader token, and the
/// certificate made by [`configured_certificate`].
fn netboot_config() -> Result<String, String> {
    let (certificate, key) = configured_certificate()?;
    let read = |path: &PathBuf| std::fs::read_to_string(path).map_err(|e| e.to_string());
    Ok(format!(
        "[api]\ntoken = \"{NETBOOT_TOKEN}\"\n\
         tokens = [{{ token = \"{READER_TOKEN}\", role = \"reader\" }}]\n\
         tls_certificate = \"\"\"\n{}\"\"\"\ntls_key = \"\"\"\n{}\"\"\"\n",
        read(&certificate)?,
        read(&key)?
    ))
}

/// What every check gets: the forwarded host port, the token the instance should accept
/// and its serial console so far.
struct Target {
    port: u16,
    /// The host port forwarded to the instance's plain-HTTP health port, if it has one.
    health_port: Option<u16>,
    token: String,
    serial: String,
}

impl Target {
    fn get_authorized(&self, path: &str, token: Option<&str>) -> Result<HttpResponse, String> {
        let authorization = token.map(|token| format!("Bearer {token}"));
        http::get_with_authorization(self.port, path, authorization.as_deref(), IO_TIMEOUT)
            .map_err(|e| e.to_string())
    }
}

/// One named check.
struct Check {
    name: &'static str,
    run: fn(&Target) -> CheckResult,
}

/// Authentication checks, run on every instance.
const AUTH_CHECKS: &[Check] = &[
    Check {
        name: "GET /v1/host without a token is 401 with a Bearer challenge",
        run: host_without_token_is_401,
    },
    Check {
        name: "GET /v1/host with a wrong token is 401 (invalid_token)",
        run: host_with_wrong_token_is_401,
    },
];

/// The `disk` instance: configured token and static address, plus the HTTP checks.
const DISK_CHECKS: &[Check] = &[
    Check {
        name: "GET /v1/host with the configured token reports the static address and the file on the disk",
        run: disk_host_reports_static_config,
    },
    Check {
        name: "the appliance logs `listening on port 8080 after N ms` at the static address",
        run: logs_listening_at_static_address,
    },
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
        name: "a body over the limit gets 413 (authorized POST /v1/tds)",
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
    Check {
        name: "operator story: upload OVMF.fd, create (idempotent), build, start, events, MRTD, console, metrics, stop, delete, pool whole; every response matches openapi.json",
        run: operator_story_check,
    },
    Check {
        name: "api.health_port: plain HTTP answers GET /v1/health and 404 on every other route; the API port stays HTTPS only",
        run: tls::health_port_answers_only_health,
    },
    Check {
        name: "64 slow-header clients, 32 half-open TLS handshakes and 32 long polls held 60 s: every health probe (a new TLS connection every 200 ms) is answered",
        run: tls::every_probe_answered_under_the_hostile_mix,
    },
];

fn operator_story_check(target: &Target) -> CheckResult {
    let openapi = openapi::OpenApi::load()?;
    let summary = operator_story::run(target.port, &target.token, IO_TIMEOUT, &openapi)?;
    println!("e2e: [disk] operator story: {summary}");
    Ok(())
}

/// The `netboot` instance: configuration over TFTP.
const NETBOOT_CHECKS: &[Check] = &[
    Check {
        name: "GET /v1/host with the configured token reports the TFTP configuration and a DHCP address",
        run: netboot_host_reports_tftp_config,
    },
    Check {
        name: "HTTPS with the certificate from appliance.toml: curl --cacert with that file; health and host report its fingerprint",
        run: tls::configured_certificate_via_curl,
    },
    Check {
        name: "a reader token reads (GET 200) and its POST, DELETE and console input are 403 forbidden",
        run: tls::reader_token_reads_and_is_refused_changes,
    },
];

/// The `defaults` instance: no configuration file.
const DEFAULTS_CHECKS: &[Check] = &[
    Check {
        name: "without a configuration file a token is generated, printed once, and accepted",
        run: generated_token_is_printed_once_and_accepted,
    },
    Check {
        name: "HTTPS with the generated certificate: the console's fingerprint is what curl --cacert trusts, health and host report it",
        run: tls::generated_certificate_via_curl,
    },
    Check {
        name: "openssl s_client negotiates TLS 1.3 (and 1.2 on request); TLS 1.1 and 1.0 get an alert",
        run: tls::openssl_sees_tls13_and_refusals,
    },
    Check {
        name: "plain HTTP to the TLS port gets no HTTP answer",
        run: tls::plain_http_gets_no_answer,
    },
    Check {
        name: "a TD runs its own code on the SVM engine: the test guest prints through TDVMCALLs and stops itself",
        run: svm_guest_check,
    },
    Check {
        name: "Debian's OVMF.fd boots as a TD to Shell>, answers a typed command, and powers off with reset -s",
        run: tdvf_shell_check,
    },
    Check {
        name: "the Rust test guest passes every guest-ABI check beside its hostile variant, which ends alone",
        run: probe_check,
    },
    Check {
        name: "Debian's 6.12 cloud kernel boots as a 2-vCPU TD through OVMF.fd, mounts its virtio disk, talks over its virtio console, stops gracefully through its power button; a panicking one ends",
        run: linux_td_check,
    },
];

fn linux_td_check(target: &Target) -> CheckResult {
    let openapi = openapi::OpenApi::load()?;
    let ws = Workspace::locate();
    let guest = appliance_image::linux_guest::ensure(&ws).map_err(|e| e.to_string())?;
    let scratch = ws.root.join("target/linux-guest/disk");
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let summary = operator_story::linux_td(
        target.port,
        &target.token,
        IO_TIMEOUT,
        &openapi,
        &guest,
        &scratch,
    )?;
    println!("e2e: [defaults] Linux TD: {summary}");
    Ok(())
}

fn probe_check(target: &Target) -> CheckResult {
    let openapi = openapi::OpenApi::load()?;
    let ws = Workspace::locate();
    let elf = appliance_image::build::build_td_probe(&ws).map_err(|e| e.to_string())?;
    let summary =
        operator_story::probe_guests(target.port, &target.token, IO_TIMEOUT, &openapi, &elf)?;
    println!("e2e: [defaults] TD probe: {summary}");
    Ok(())
}

fn tdvf_shell_check(target: &Target) -> CheckResult {
    let openapi = openapi::OpenApi::load()?;
    let story = operator_story::tdvf_shell(target.port, &target.token, IO_TIMEOUT, &openapi)?;
    println!("e2e: [defaults] TDVF Shell: {}", story.summary);
    Ok(())
}

fn svm_guest_check(target: &Target) -> CheckResult {
    let openapi = openapi::OpenApi::load()?;
    let summary = operator_story::svm_guest(target.port, &target.token, IO_TIMEOUT, &openapi)?;
    println!("e2e: [defaults] SVM guest: {summary}");
    Ok(())
}

fn host_without_token_is_401(target: &Target) -> CheckResult {
    let response = target.get_authorized("/v1/host", None)?;
    expect_status(&response, 401)?;
    let body = expect_json(&response)?;
    if body.get("code").and_then(serde_json::Value::as_str) != Some("unauthorized") {
        return Err(format!("body code is not \"unauthorized\": {body}"));
    }
    match response.header("www-authenticate") {
        Some(challenge) if challenge.starts_with("Bearer realm=\"tdx-appliance\"") => Ok(()),
        other => Err(format!("WWW-Authenticate is {other:?}")),
    }
}

fn host_with_wrong_token_is_401(target: &Target) -> CheckResult {
    let wrong = format!("{}x", target.token);
    let response = target.get_authorized("/v1/host", Some(&wrong))?;
    expect_status(&response, 401)?;
    match response.header("www-authenticate") {
        Some(challenge) if challenge.contains("invalid_token") => Ok(()),
        other => Err(format!("WWW-Authenticate is {other:?}")),
    }
}

/// `GET /v1/host` with the instance's token: 200 and its JSON body.
fn authorized_host(target: &Target) -> Result<serde_json::Value, String> {
    let response = target.get_authorized("/v1/host", Some(&target.token))?;
    expect_status(&response, 200)?;
    expect_json(&response)
}

fn expect_field(body: &serde_json::Value, field: &str, expected: &str) -> CheckResult {
    match body.get(field).and_then(serde_json::Value::as_str) {
        Some(value) if value == expected => Ok(()),
        other => Err(format!(
            "{field} is {other:?}, expected {expected:?}: {body}"
        )),
    }
}

fn disk_host_reports_static_config(target: &Target) -> CheckResult {
    let body = authorized_host(target)?;
    expect_field(&body, "ipv4", "10.0.2.15/24")?;
    expect_field(&body, "network", "static")?;
    expect_field(
        &body,
        "config_source",
        "boot medium \\EFI\\BOOT\\appliance.toml",
    )?;
    expect_field(&body, "token_source", "configured")?;
    expect_seamcall_fault_probe(&body)
}

/// Without TDX (QEMU) the `tdx-detect` bring-up step makes one real SEAMCALL, which raises
/// #UD: its detail must say that it came back as `TDX_SEAMCALL_UD`, i.e. the fault was
/// turned into a status instead of hanging the appliance.
fn expect_seamcall_fault_probe(body: &serde_json::Value) -> CheckResult {
    let step = body
        .get("bringup")
        .and_then(serde_json::Value::as_array)
        .and_then(|steps| {
            steps
                .iter()
                .find(|s| s.get("step").and_then(serde_json::Value::as_str) == Some("tdx-detect"))
        })
        .ok_or_else(|| format!("no `tdx-detect` step in `bringup`: {body}"))?;
    match step.get("detail").and_then(serde_json::Value::as_str) {
        Some(detail) if detail.contains("TDX_SEAMCALL_UD") => Ok(()),
        other => Err(format!(
            "tdx-detect detail is {other:?}, expected the probe SEAMCALL's TDX_SEAMCALL_UD"
        )),
    }
}

fn logs_listening_at_static_address(target: &Target) -> CheckResult {
    let logged = target.serial.lines().any(|line| {
        line.contains("listening on port 8080 after ") && line.contains(" at 10.0.2.15/24")
    });
    let configured = target
        .serial
        .contains("configuration from boot medium \\EFI\\BOOT\\appliance.toml: network static 10.0.2.15/24 via 10.0.2.2");
    match (logged, configured) {
        (true, true) => Ok(()),
        (false, _) => Err("no `listening ... at 10.0.2.15/24` line".into()),
        (_, false) => Err("no `configuration from boot medium ...: network static` line".into()),
    }
}

fn netboot_host_reports_tftp_config(target: &Target) -> CheckResult {
    let body = authorized_host(target)?;
    expect_field(&body, "config_source", "tftp://10.0.2.2/appliance.toml")?;
    expect_field(&body, "network", "dhcp")?;
    expect_field(&body, "ipv4", "10.0.2.15/24")?;
    expect_field(&body, "token_source", "configured")
}

fn generated_token_is_printed_once_and_accepted(target: &Target) -> CheckResult {
    let printed = target.serial.matches("generated API token").count();
    if printed != 1 {
        return Err(format!("the token line appears {printed} times"));
    }
    if target.token.len() != 64 || !target.token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("token {:?} is not 64 hex digits", target.token));
    }
    let body = authorized_host(target)?;
    expect_field(&body, "token_source", "generated")?;
    expect_field(&body, "network", "dhcp")?;
    match body
        .get("config_source")
        .and_then(serde_json::Value::as_str)
    {
        Some(source) if source.starts_with("defaults (no boot medium") => Ok(()),
        other => Err(format!("config_source is {other:?}")),
    }
}

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
    // An authorized JSON request to a route that takes a body, announcing one byte too many:
    // refused from the head alone, before any body byte is sent.
    let request = format!(
        "POST /v1/tds HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        target.token,
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

/// One booted appliance and its checks.
struct Instance {
    name: &'static str,
    vm: Qemu,
    health_port: Option<u16>,
    token: Option<String>,
    checks: Vec<&'static Check>,
}

/// The configuration of the `disk` instance.
fn disk_config() -> String {
    format!(
        "# e2e: a flashed node with a fixed address\n[api]\ntoken = \"{DISK_TOKEN}\"\n\n\
         health_port = {DISK_HEALTH_PORT}\n\n\
         [network]\nmode = \"static\"\naddress = \"10.0.2.15/24\"\ngateway = \"10.0.2.2\"\n"
    )
}

/// Starts the three instances (they boot in parallel).
fn start_instances(
    ws: &Workspace,
    image: &BuiltImage,
    firmware: &Firmware,
) -> Result<Vec<Instance>, String> {
    let scratch = ws
        .instances_dir()
        .join(format!("e2e-artifacts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let disk = scratch.join("disk.img");
    write_disk_image(&image.efi, Some(&disk_config()), &disk).map_err(|e| e.to_string())?;
    let netboot = scratch.join("netboot");
    let netboot_config = netboot_config()?;
    layout_netboot(&image.efi, Some(&netboot_config), &netboot).map_err(|e| e.to_string())?;

    let with = |checks: &[&'static [Check]]| -> Vec<&'static Check> {
        checks.iter().flat_map(|list| list.iter()).collect()
    };
    let plan: [(&'static str, BootMedium, Option<&str>, Vec<&'static Check>); 3] = [
        (
            "disk",
            BootMedium::Disk(disk),
            Some(DISK_TOKEN),
            with(&[AUTH_CHECKS, DISK_CHECKS]),
        ),
        (
            "netboot",
            BootMedium::Netboot(netboot),
            Some(NETBOOT_TOKEN),
            with(&[AUTH_CHECKS, NETBOOT_CHECKS]),
        ),
        (
            "defaults",
            BootMedium::EspDir { config: None },
            None,
            with(&[AUTH_CHECKS, DEFAULTS_CHECKS]),
        ),
    ];
    let mut instances = Vec::new();
    for (name, medium, token, checks) in plan {
        let port = free_port().map_err(|e| e.to_string())?;
        let mut config = QemuConfig::new(
            image,
            port,
            ws.instances_dir()
                .join(format!("e2e-{name}-{}-{port}", std::process::id())),
        );
        config.medium = medium;
        let health_port = if name == "disk" {
            let host = free_port().map_err(|e| e.to_string())?;
            config.extra_forwards.push((host, DISK_HEALTH_PORT));
            Some(host)
        } else {
            None
        };
        let vm = Qemu::start(firmware, &config).map_err(|e| format!("{name}: {e}"))?;
        println!("e2e: {name}: {}", vm.command_line());
        instances.push(Instance {
            name,
            vm,
            health_port,
            token: token.map(str::to_string),
            checks,
        });
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(instances)
}

/// Power-cycles `vm` (same disk, same UEFI variable store) and checks that the appliance
/// comes back with the certificate it generated at first boot.
fn reboot_keeps_the_certificate(vm: &mut Qemu) -> CheckResult {
    let before = appliance_image::qemu::api_fingerprint(&vm.serial_log())
        .ok_or("no fingerprint on the console before the reboot")?;
    if !vm
        .serial_log()
        .contains("generating a key and self-signed certificate")
    {
        return Err("the first boot did not generate its certificate".into());
    }
    vm.power_cycle().map_err(|e| e.to_string())?;
    vm.wait_ready(BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    let serial = vm.serial_log();
    let after = appliance_image::qemu::api_fingerprint(&serial)
        .ok_or("no fingerprint on the console after the reboot")?;
    if serial.contains("generating a key and self-signed certificate") {
        return Err("the second boot generated a new certificate".into());
    }
    if before != after {
        return Err("the fingerprint changed across the reboot".into());
    }
    // wait_ready pinned the fingerprint: a TLS request succeeding proves the served
    // certificate is that one.
    let response =
        http::get(vm.host_port(), "/v1/health", IO_TIMEOUT).map_err(|e| e.to_string())?;
    if response.status != 200 {
        return Err(format!("health after the reboot: {}", response.status));
    }
    Ok(())
}

fn fail_early(what: &str, err: &str) -> ExitCode {
    println!("FAILED {what}: {err}\n0 passed, 1 failed");
    ExitCode::FAILURE
}

/// `E2E_STORY_PORT=N E2E_STORY_TOKEN=T cargo test -p e2e`: only the operator story, against
/// an appliance already running on `127.0.0.1:N` (e.g. from `cargo xtask run --token T`).
fn story_against_running_appliance(port: &str) -> ExitCode {
    let result = port
        .parse::<u16>()
        .map_err(|e| format!("E2E_STORY_PORT: {e}"))
        .and_then(|port| {
            let token =
                std::env::var("E2E_STORY_TOKEN").map_err(|e| format!("E2E_STORY_TOKEN: {e}"))?;
            let openapi = openapi::OpenApi::load()?;
            operator_story::run(port, &token, IO_TIMEOUT, &openapi)
        });
    match result {
        Ok(summary) => {
            println!("ok     operator story: {summary}\n1 passed, 0 failed");
            ExitCode::SUCCESS
        }
        Err(err) => fail_early("operator story", &err),
    }
}

fn main() -> ExitCode {
    if let Ok(port) = std::env::var("E2E_STORY_PORT") {
        return story_against_running_appliance(&port);
    }
    let ws = Workspace::locate();
    println!("e2e: building the appliance image");
    let image = match build_appliance(&ws) {
        Ok(image) => image,
        Err(err) => return fail_early("build the image", &err.to_string()),
    };
    let firmware = match deps::ensure() {
        Ok(firmware) => firmware,
        Err(err) => return fail_early("find QEMU and OVMF", &err.to_string()),
    };
    let mut instances = match start_instances(&ws, &image, &firmware) {
        Ok(instances) => instances,
        Err(err) => return fail_early("start QEMU", &err),
    };

    let mut passed = 0usize;
    let mut failed = 0usize;
    for instance in &mut instances {
        let name = instance.name;
        match instance.vm.wait_ready(BOOT_TIMEOUT) {
            Ok(ready_after) => {
                passed += 1;
                println!(
                    "ok     [{name}] boots until /v1/health answers 200 ({:.2} s from QEMU start)",
                    ready_after.as_secs_f64()
                );
                let serial = instance.vm.serial_log();
                match listening_after_ms(&serial) {
                    Some(ms) => println!("e2e: [{name}] appliance entry to listening: {ms} ms"),
                    None => println!("e2e: [{name}] appliance entry to listening: not logged"),
                }
            }
            Err(err) => {
                failed += 1 + instance.checks.len();
                println!("FAILED [{name}] boots until /v1/health answers 200: {err}");
                println!("--- [{name}] serial log ---\n{}", instance.vm.serial_log());
                println!("--- [{name}] QEMU stderr ---\n{}", instance.vm.stderr_log());
                instance.vm.kill();
                continue;
            }
        }
        let serial = instance.vm.serial_log();
        let token = instance
            .token
            .clone()
            .or_else(|| generated_token(&serial))
            .unwrap_or_default();
        let target = Target {
            port: instance.vm.host_port(),
            health_port: instance.health_port,
            token,
            serial,
        };
        let mut instance_failed = false;
        for check in &instance.checks {
            let start = Instant::now();
            match (check.run)(&target) {
                Ok(()) => {
                    passed += 1;
                    println!(
                        "ok     [{name}] {} ({} ms)",
                        check.name,
                        start.elapsed().as_millis()
                    );
                }
                Err(reason) => {
                    failed += 1;
                    instance_failed = true;
                    println!("FAILED [{name}] {}: {reason}", check.name);
                }
            }
        }
        if name == "disk" {
            match measure_latency(target.port) {
                Some((median, max)) => println!(
                    "e2e: [disk] {LATENCY_SAMPLES} sequential GET /v1/health on new connections: median {:.1} ms, max {:.1} ms",
                    median.as_secs_f64() * 1e3,
                    max.as_secs_f64() * 1e3
                ),
                None => println!("e2e: [disk] latency measurement failed"),
            }
        }
        if name == "disk" {
            let start = Instant::now();
            match reboot_keeps_the_certificate(&mut instance.vm) {
                Ok(()) => {
                    passed += 1;
                    println!(
                        "ok     [{name}] a power cycle keeps the generated certificate (same fingerprint on the console and over TLS) ({} ms)",
                        start.elapsed().as_millis()
                    );
                }
                Err(reason) => {
                    failed += 1;
                    instance_failed = true;
                    println!(
                        "FAILED [{name}] a power cycle keeps the generated certificate: {reason}"
                    );
                }
            }
        }
        if instance_failed {
            println!("--- [{name}] serial log ---\n{}", instance.vm.serial_log());
        }
        instance.vm.kill();
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
