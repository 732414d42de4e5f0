//! HTTPS checks, made with TLS implementations other than the appliance's: curl and the
//! OpenSSL command line. The harness itself trusts each instance's certificate by the
//! fingerprint its console printed (see `appliance_image::http`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use appliance_image::http::{self, Connection};
use appliance_image::qemu::api_fingerprint;

use crate::{CheckResult, IO_TIMEOUT, Target};

/// Runs `program` with `args` (stdin empty); returns whether it exited 0, and its stdout and
/// stderr together.
fn run(program: &str, args: &[&str]) -> Result<(bool, String), String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), text))
}

/// `curl --cacert ca https://localhost:port/path` (with the bearer token when given); the
/// parsed JSON body.
fn curl_json(
    ca: &Path,
    port: u16,
    path: &str,
    token: Option<&str>,
) -> Result<serde_json::Value, String> {
    let url = format!("https://localhost:{port}{path}");
    let ca = ca.display().to_string();
    let auth = token.map(|token| format!("Authorization: Bearer {token}"));
    let mut args = vec![
        "-sS",
        "--fail-with-body",
        "--max-time",
        "30",
        "--cacert",
        &ca,
    ];
    if let Some(auth) = &auth {
        args.extend(["-H", auth]);
    }
    args.push(&url);
    let (ok, text) = run("curl", &args)?;
    if !ok {
        return Err(format!("curl {url} failed: {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("curl {url}: not JSON ({e}): {text}"))
}

/// The console's fingerprint of `target`, as printed.
fn console_fingerprint(target: &Target) -> Result<String, String> {
    let fingerprint = api_fingerprint(&target.serial)
        .ok_or("the console printed no TLS certificate fingerprint")?;
    Ok(fingerprint
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// Checks that health and host (curl with `ca`) report `source` and the console's
/// fingerprint.
fn check_reported_certificate(target: &Target, ca: &Path, source: &str) -> Result<String, String> {
    let fingerprint = console_fingerprint(target)?;
    let health = curl_json(ca, target.port, "/v1/health", None)?;
    let host = curl_json(ca, target.port, "/v1/host", Some(&target.token))?;
    for (what, body) in [("health", &health), ("host", &host)] {
        if body["tls"]["fingerprint"] != fingerprint.as_str() {
            return Err(format!(
                "{what} reports {} but the console printed {fingerprint}",
                body["tls"]
            ));
        }
        if body["tls"]["certificate_source"] != source {
            return Err(format!(
                "{what}: certificate_source is {}, not {source}",
                body["tls"]
            ));
        }
    }
    Ok(fingerprint)
}

/// What `openssl x509` says of the PEM certificate at `path`: its SHA-256 fingerprint and
/// its subjectAltName.
fn openssl_x509(path: &Path) -> Result<String, String> {
    let path = path.display().to_string();
    let args = [
        "x509",
        "-in",
        &path,
        "-noout",
        "-fingerprint",
        "-sha256",
        "-ext",
        "subjectAltName",
    ];
    run("openssl", &args).map(|(_, text)| text)
}

/// The generated certificate: fetched over a connection that pins the console's
/// fingerprint, written as PEM, then used by curl as its only trust anchor.
pub fn generated_certificate_via_curl(target: &Target) -> CheckResult {
    let mut connection = Connection::open(target.port, IO_TIMEOUT).map_err(|e| e.to_string())?;
    let chain = connection.handshake().map_err(|e| e.to_string())?;
    let leaf = chain.first().ok_or("the appliance sent no certificate")?;
    let pem = scratch_file(target.port, "generated.pem");
    std::fs::write(&pem, http::certificate_pem(leaf)).map_err(|e| e.to_string())?;
    let x509 = openssl_x509(&pem)?;
    let fingerprint = check_reported_certificate(target, &pem, "generated")?;
    if !x509.contains(&fingerprint) {
        return Err(format!("openssl x509 shows another fingerprint: {x509}"));
    }
    if !x509.contains("DNS:localhost") {
        return Err(format!(
            "the generated certificate does not name localhost: {x509}"
        ));
    }
    let _ = std::fs::remove_file(&pem);
    Ok(())
}

/// The certificate from `appliance.toml`: curl trusts only that file.
pub fn configured_certificate_via_curl(target: &Target) -> CheckResult {
    let (certificate, _) = crate::configured_certificate()?;
    let fingerprint = check_reported_certificate(target, &certificate, "configured")?;
    let x509 = openssl_x509(&certificate)?;
    if x509.contains(&fingerprint) {
        Ok(())
    } else {
        Err(format!("served {fingerprint}, configured {x509}"))
    }
}

/// `openssl s_client`: TLS 1.3 by default, TLS 1.2 on request, TLS 1.1 and 1.0 refused by
/// the server (the client is allowed to offer them: `@SECLEVEL=0`).
pub fn openssl_sees_tls13_and_refusals(target: &Target) -> CheckResult {
    let connect = format!("127.0.0.1:{}", target.port);
    let (ok, text) = run("openssl", &["s_client", "-connect", &connect, "-brief"])?;
    if !ok || !text.contains("Protocol version: TLSv1.3") {
        return Err(format!("default handshake is not TLS 1.3: {text}"));
    }
    let (ok, text) = run(
        "openssl",
        &["s_client", "-connect", &connect, "-brief", "-tls1_2"],
    )?;
    if !ok || !text.contains("Protocol version: TLSv1.2") {
        return Err(format!("TLS 1.2 was not accepted: {text}"));
    }
    for version in ["-tls1_1", "-tls1"] {
        let (ok, text) = run(
            "openssl",
            &[
                "s_client",
                "-connect",
                &connect,
                "-brief",
                version,
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
            ],
        )?;
        if ok || text.contains("Protocol version: TLSv1") && !text.contains("alert") {
            return Err(format!("{version} was accepted: {text}"));
        }
        if !text.contains("alert") {
            return Err(format!(
                "{version}: the server sent no alert (did the client offer it?): {text}"
            ));
        }
    }
    Ok(())
}

/// A plain HTTP request to the TLS port gets no HTTP answer.
pub fn plain_http_gets_no_answer(target: &Target) -> CheckResult {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, target.port));
    let mut stream = TcpStream::connect_timeout(&address, IO_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    if answer.windows(5).any(|w| w == b"HTTP/") || answer.windows(6).any(|w| w == b"status") {
        return Err(format!(
            "plain HTTP got an answer: {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    Ok(())
}

/// A `reader` token reads, and its calls that change something are 403 with a JSON error.
pub fn reader_token_reads_and_is_refused_changes(target: &Target) -> CheckResult {
    let mut connection = Connection::open(target.port, IO_TIMEOUT).map_err(|e| e.to_string())?;
    let auth = format!("Authorization: Bearer {}\r\n", crate::READER_TOKEN);
    for (request, status) in [
        (
            format!("GET /v1/tds HTTP/1.1\r\nHost: h\r\n{auth}\r\n"),
            200,
        ),
        (
            format!("GET /v1/host HTTP/1.1\r\nHost: h\r\n{auth}\r\n"),
            200,
        ),
        (
            format!(
                "POST /v1/tds HTTP/1.1\r\nHost: h\r\n{auth}Content-Type: application/json\r\n\
                 Content-Length: 2\r\n\r\n{{}}"
            ),
            403,
        ),
        (
            format!(
                "POST /v1/tds/1/console HTTP/1.1\r\nHost: h\r\n{auth}Content-Type: application/json\r\n\
                 Content-Length: 2\r\n\r\n{{}}"
            ),
            403,
        ),
        (
            format!("DELETE /v1/images/x HTTP/1.1\r\nHost: h\r\n{auth}\r\n"),
            403,
        ),
    ] {
        connection
            .send(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let response = connection.read_response().map_err(|e| e.to_string())?;
        let line = request.lines().next().unwrap_or_default();
        if response.status != status {
            return Err(format!(
                "{line}: {} {}, expected {status}",
                response.status,
                response.body_text()
            ));
        }
        if status == 403 {
            let body: serde_json::Value =
                serde_json::from_slice(&response.body).map_err(|e| format!("{line}: {e}"))?;
            if body["code"] != "forbidden" {
                return Err(format!("{line}: {body}"));
            }
        }
    }
    // The admin token still may.
    let admin = format!("Authorization: Bearer {}\r\n", target.token);
    let request = format!("DELETE /v1/images/x HTTP/1.1\r\nHost: h\r\n{admin}\r\n");
    connection
        .send(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let response = connection.read_response().map_err(|e| e.to_string())?;
    if response.status != 404 {
        return Err(format!(
            "admin DELETE of a missing image: {}",
            response.status
        ));
    }
    Ok(())
}

/// The hostile mix of `appliance_image::hostile` (64 slow headers, 32 half-open TLS
/// handshakes, 32 long polls) for 60 s while a prober opens a new TLS connection for one
/// `GET /v1/health` every 200 ms: every probe must be answered.
pub fn every_probe_answered_under_the_hostile_mix(target: &Target) -> CheckResult {
    use appliance_image::bench_api::{HOSTILE_DURATION, probe_health, probe_under_hostile_mix};
    let port = target.port;
    if http::pinned_certificate(port).is_none() {
        return Err("the port speaks plain HTTP; this check is for HTTPS".into());
    }
    let report =
        probe_under_hostile_mix(port, &target.token, HOSTILE_DURATION, || probe_health(port));
    let answered = report.answered.len();
    let p99 = report
        .answered
        .get((answered * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN);
    println!(
        "e2e: hostile mix {} s: {answered} probes answered, p99 {:.1} ms, max {:.1} ms; {:?}",
        HOSTILE_DURATION.as_secs(),
        p99 * 1e3,
        report.answered.last().copied().unwrap_or(f64::NAN) * 1e3,
        report.hostile
    );
    if report.unanswered > 0 || answered == 0 {
        return Err(format!(
            "{} of {} probes unanswered",
            report.unanswered,
            report.unanswered + answered
        ));
    }
    // Each long poll waits its 30 s and is sent again: over 60 s every one is answered at
    // least once, so the mix really held TLS connections with requests in progress.
    if report.hostile.connects < 128 || report.hostile.long_polls_answered < 32 {
        return Err(format!(
            "the hostile clients did not hold their connections: {:?}",
            report.hostile
        ));
    }
    Ok(())
}

/// A file in the temporary directory for this port.
fn scratch_file(port: u16, name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("e2e-tls-{}-{port}-{name}", std::process::id()))
}

/// `api.health_port`: plain HTTP with health only, beside the HTTPS API port.
pub fn health_port_answers_only_health(target: &Target) -> CheckResult {
    let port = target
        .health_port
        .ok_or("the instance has no health port")?;
    let mut connection = Connection::open_plain(port, IO_TIMEOUT).map_err(|e| e.to_string())?;
    let health = connection.get("/v1/health").map_err(|e| e.to_string())?;
    let body: serde_json::Value = serde_json::from_slice(&health.body)
        .map_err(|e| format!("health on the plain port: {e}"))?;
    if health.status != 200 || body["status"] != "ok" || !body["tls"].is_object() {
        return Err(format!(
            "health on the plain port: {} {body}",
            health.status
        ));
    }
    let token = format!("Authorization: Bearer {}\r\n", target.token);
    for path in ["/v1/host", "/v1/tds", "/v1/metrics"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: h\r\n{token}\r\n");
        connection
            .send(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let response = connection.read_response().map_err(|e| e.to_string())?;
        if response.status != 404 {
            return Err(format!("{path} on the health port: {}", response.status));
        }
    }
    // The API port itself still refuses plain HTTP.
    plain_http_gets_no_answer(target)
}
