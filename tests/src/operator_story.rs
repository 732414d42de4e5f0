//! The end-to-end operator story, over real HTTP to a booted appliance: upload Debian's
//! `/usr/share/ovmf/OVMF.fd`, create a TD from it, follow events until it is runnable, start
//! it, follow events until it runs, read its measurement (MRTD equals the image's expected
//! MRTD) and console, read metrics, stop it, delete it and the image, and see the TD memory
//! pool and the HKIDs whole again. Every response is checked against the OpenAPI document
//! (`mgmt-api/openapi.json`): its status must be documented for the operation and a JSON body
//! must validate against the documented schema.

use std::time::{Duration, Instant};

use appliance_image::http::{Connection, HttpResponse};
use serde_json::{Value, json};

use crate::openapi::OpenApi;

/// Where the firmware comes from (Debian package `ovmf`).
pub const OVMF_PATH: &str = "/usr/share/ovmf/OVMF.fd";
/// How long each wait of the story (build, start, console, stop, teardown) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// One keep-alive connection with the token, checking every answer against the document.
struct Operator<'a> {
    connection: Connection,
    port: u16,
    io_timeout: Duration,
    token: &'a str,
    openapi: &'a OpenApi,
    requests: usize,
}

impl<'a> Operator<'a> {
    fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Result<HttpResponse, String> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n",
            self.token
        );
        if let Some(content_type) = content_type {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        for (name, value) in extra {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut sent = self
            .connection
            .send(head.as_bytes())
            .and_then(|()| self.connection.send(body));
        if sent.is_err() {
            // The appliance closed an idle keep-alive connection: reconnect once.
            self.connection =
                Connection::open(self.port, self.io_timeout).map_err(|e| e.to_string())?;
            sent = self
                .connection
                .send(head.as_bytes())
                .and_then(|()| self.connection.send(body));
        }
        if let Err(err) = sent {
            // The appliance may have answered early (and closed): show that answer.
            return Err(match self.connection.read_response() {
                Ok(early) => format!(
                    "{method} {path}: sending failed ({err}) after an early answer {}: {}",
                    early.status,
                    early.body_text()
                ),
                Err(_) => format!("{method} {path}: {err}"),
            });
        }
        let response = self
            .connection
            .read_response()
            .map_err(|e| format!("{method} {path}: {e}"))?;
        self.requests += 1;
        self.openapi
            .check(method, path, &response)
            .map_err(|e| format!("{method} {path}: {e}"))?;
        Ok(response)
    }

    fn get(&mut self, path: &str) -> Result<HttpResponse, String> {
        self.request("GET", path, None, &[], b"")
    }

    fn get_json(&mut self, path: &str) -> Result<Value, String> {
        let response = self.get(path)?;
        expect(&response, 200, &format!("GET {path}"))?;
        json_body(&response)
    }

    /// A connection to the appliance on `port`.
    fn open(
        port: u16,
        token: &'a str,
        io_timeout: Duration,
        openapi: &'a OpenApi,
    ) -> Result<Self, String> {
        Ok(Operator {
            connection: Connection::open(port, io_timeout).map_err(|e| e.to_string())?,
            port,
            io_timeout,
            token,
            openapi,
            requests: 0,
        })
    }

    /// The newest event id (to follow events from).
    fn last_event_id(&mut self) -> Result<u64, String> {
        self.get_json("/v1/events")?["last_event_id"]
            .as_u64()
            .ok_or_else(|| String::from("no last_event_id"))
    }

    /// The TD memory pool's free bytes and the free HKIDs, to compare after a story.
    fn pool(&mut self) -> Result<(Value, Value), String> {
        let host = self.get_json("/v1/host")?;
        Ok((
            host["tdx"]["memory_free_bytes"].clone(),
            host["tdx"]["hkids_free"].clone(),
        ))
    }

    /// Fails unless the pool and the HKIDs are as [`Operator::pool`] saw them.
    fn expect_pool_whole(&mut self, before: &(Value, Value)) -> Result<(), String> {
        if self.pool()? != *before {
            let host = self.get_json("/v1/host")?;
            return Err(format!("pool not whole again: {}", host["tdx"]));
        }
        Ok(())
    }

    /// Uploads `bytes` as image `name` (201) and returns its description.
    fn upload(&mut self, name: &str, bytes: &[u8]) -> Result<Value, String> {
        let response = self.request(
            "PUT",
            &format!("/v1/images/{name}"),
            Some("application/octet-stream"),
            &[],
            bytes,
        )?;
        expect(&response, 201, &format!("upload {name}"))?;
        json_body(&response)
    }

    /// Deletes image `name` (204).
    fn delete_image(&mut self, name: &str) -> Result<(), String> {
        let response = self.request("DELETE", &format!("/v1/images/{name}"), None, &[], b"")?;
        expect(&response, 204, &format!("delete image {name}"))
    }

    fn post_json(
        &mut self,
        path: &str,
        body: &Value,
        extra: &[(&str, &str)],
    ) -> Result<HttpResponse, String> {
        let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        self.request("POST", path, Some("application/json"), extra, &body)
    }

    /// Follows `GET /v1/events` (long polls of up to 5 s) from `since` until `done` accepts an
    /// event; returns the id to continue from.
    fn follow_events(
        &mut self,
        mut since: u64,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<u64, String> {
        let start = Instant::now();
        loop {
            let page = self.get_json(&format!("/v1/events?since={since}&wait_ms=5000"))?;
            let events = page["events"].as_array().ok_or("events is not an array")?;
            for event in events {
                let id = event["id"].as_u64().ok_or("event without id")?;
                if id <= since {
                    return Err(format!("event ids do not increase: {id} after {since}"));
                }
                since = id;
                if done(event) {
                    return Ok(since);
                }
            }
            if start.elapsed() > STEP_TIMEOUT {
                return Err(format!("no event for {what} within {STEP_TIMEOUT:?}"));
            }
        }
    }

    /// Deletes TD `id` and waits until it is gone (202 while teardown runs, or 204).
    fn delete_td(&mut self, id: &Value) -> Result<(), String> {
        let response = self.request("DELETE", &format!("/v1/tds/{id}"), None, &[], b"")?;
        if !matches!(response.status, 202 | 204) {
            return Err(format!(
                "delete: {} {}",
                response.status,
                response.body_text()
            ));
        }
        self.wait_for("the TD to be gone", |op| {
            Ok(op.get(&format!("/v1/tds/{id}"))?.status == 404)
        })
    }

    fn wait_for(
        &mut self,
        what: &str,
        mut done: impl FnMut(&mut Self) -> Result<bool, String>,
    ) -> Result<(), String> {
        let start = Instant::now();
        while !done(self)? {
            if start.elapsed() > STEP_TIMEOUT {
                return Err(format!("{what}: not within {STEP_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

fn expect(response: &HttpResponse, status: u16, what: &str) -> Result<(), String> {
    if response.status == status {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected {status}, got {}: {}",
            response.status,
            response.body_text()
        ))
    }
}

fn json_body(response: &HttpResponse) -> Result<Value, String> {
    serde_json::from_slice(&response.body)
        .map_err(|e| format!("not JSON ({e}): {}", response.body_text()))
}

fn is_state_event(event: &Value, id: &Value, to: &str) -> bool {
    event["type"] == "td_state" && event["td_id"] == *id && event["to"] == to
}

/// Runs the story against `127.0.0.1:port` with `token`; returns a one-line summary.
pub fn run(
    port: u16,
    token: &str,
    io_timeout: Duration,
    openapi: &OpenApi,
) -> Result<String, String> {
    let firmware = std::fs::read(OVMF_PATH)
        .map_err(|e| format!("{OVMF_PATH} (Debian package `ovmf`): {e}"))?;
    let started = Instant::now();
    let mut op = Operator::open(port, token, io_timeout, openapi)?;

    let host = op.get_json("/v1/host")?;
    let tdx = &host["tdx"];
    let pool_free = tdx["memory_free_bytes"]
        .as_u64()
        .ok_or(format!("no TDX host: {host}"))?;
    let hkids_total = tdx["hkids_total"].clone();
    let since = op.get_json("/v1/events")?["last_event_id"]
        .as_u64()
        .ok_or("no last_event_id")?;

    // Upload.
    let response = op.request(
        "PUT",
        "/v1/images/ovmf-e2e",
        Some("application/octet-stream"),
        &[],
        &firmware,
    )?;
    expect(&response, 201, "upload OVMF.fd")?;
    let image = json_body(&response)?;
    if image["size"] != json!(firmware.len()) {
        return Err(format!("uploaded size: {}", image["size"]));
    }
    let expected_mrtd = image["expected_mrtd"].clone();

    // Create (idempotently) and follow the build.
    let spec = json!({
        "name": "e2e-story", "image": "ovmf-e2e", "vcpus": 1, "memory_mib": 64,
        "workload": {"steps": [{"print": {"line": "hello from the e2e TD"}}, "halt"]}
    });
    let key = [("Idempotency-Key", "e2e-story-1")];
    let response = op.post_json("/v1/tds", &spec, &key)?;
    expect(&response, 201, "create the TD")?;
    let td = json_body(&response)?;
    let id = td["id"].clone();
    let retry = op.post_json("/v1/tds", &spec, &key)?;
    expect(&retry, 201, "retried create")?;
    if json_body(&retry)?["id"] != id || retry.header("idempotent-replayed") != Some("true") {
        return Err("the retried create did not return the same TD".into());
    }
    let since = op.follow_events(since, "runnable", |e| is_state_event(e, &id, "runnable"))?;

    // Start, follow events until running.
    let response = op.request("POST", &format!("/v1/tds/{id}/start"), None, &[], b"")?;
    expect(&response, 202, "start")?;
    let since = op.follow_events(since, "running", |e| is_state_event(e, &id, "running"))?;

    // Measurement and console.
    let measurement = op.get_json(&format!("/v1/tds/{id}/measurement"))?;
    if measurement["mrtd"] != expected_mrtd {
        return Err(format!(
            "MRTD {} differs from the image's expected MRTD {expected_mrtd}",
            measurement["mrtd"]
        ));
    }
    op.wait_for("the console line", |op| {
        let response = op.get(&format!("/v1/tds/{id}/console?offset=0"))?;
        expect(&response, 200, "console")?;
        if response.header("x-console-next-offset").is_none() {
            return Err("console without X-Console-Next-Offset".into());
        }
        Ok(response.body_text().contains("hello from the e2e TD"))
    })?;

    // Metrics.
    let response = op.get("/v1/metrics")?;
    expect(&response, 200, "metrics")?;
    let metrics = response.body_text();
    for needle in [
        "tdx_tds{state=\"running\"} ",
        "tdx_seamcalls_total{",
        "tdx_http_requests_total{",
        "name=\"e2e-story\"",
    ] {
        if !metrics.contains(needle) {
            return Err(format!("metrics lack {needle}"));
        }
    }

    // Stop, delete, and the pool is whole again.
    let response = op.post_json(
        &format!("/v1/tds/{id}/stop"),
        &json!({"timeout_ms": 2000}),
        &[],
    )?;
    if !matches!(response.status, 200 | 202) {
        return Err(format!(
            "stop: {} {}",
            response.status,
            response.body_text()
        ));
    }
    op.follow_events(since, "stopped", |e| is_state_event(e, &id, "stopped"))?;
    op.delete_td(&id)?;
    let response = op.request("DELETE", "/v1/images/ovmf-e2e", None, &[], b"")?;
    expect(&response, 204, "delete the image")?;
    let host = op.get_json("/v1/host")?;
    if host["tdx"]["memory_free_bytes"] != json!(pool_free)
        || host["tdx"]["hkids_free"] != hkids_total
    {
        return Err(format!(
            "pool not whole again: free {} (was {pool_free}), HKIDs free {} of {hkids_total}",
            host["tdx"]["memory_free_bytes"], host["tdx"]["hkids_free"]
        ));
    }
    Ok(format!(
        "{} requests in {:.1} s, every response matches openapi.json",
        op.requests,
        started.elapsed().as_secs_f64()
    ))
}

/// A TD that runs its own code: the test guest of [`crate::svm_guest`] on the software
/// module's SVM engine. Upload, create without a workload, start, read its line from the
/// console, see it stop by itself (triple fault), delete, pool whole.
pub fn svm_guest(
    port: u16,
    token: &str,
    io_timeout: Duration,
    openapi: &OpenApi,
) -> Result<String, String> {
    let started = Instant::now();
    let mut op = Operator::open(port, token, io_timeout, openapi)?;
    let pool = op.pool()?;
    let since = op.last_event_id()?;
    op.upload("svm-hello", &crate::svm_guest::image())?;
    let spec = json!({"name": "svm-hello", "image": "svm-hello", "vcpus": 1, "memory_mib": 32});
    let response = op.post_json("/v1/tds", &spec, &[])?;
    expect(&response, 201, "create the TD")?;
    let id = json_body(&response)?["id"].clone();
    let since = op.follow_events(since, "runnable", |e| is_state_event(e, &id, "runnable"))?;
    let response = op.request("POST", &format!("/v1/tds/{id}/start"), None, &[], b"")?;
    expect(&response, 202, "start")?;
    op.follow_events(since, "stopped", |e| is_state_event(e, &id, "stopped"))
        .map_err(|e| {
            let td = op
                .get_json(&format!("/v1/tds/{id}"))
                .map_or_else(|e| e, |td| td.to_string());
            format!("{e}; the TD: {td}")
        })?;
    let response = op.get(&format!("/v1/tds/{id}/console?offset=0"))?;
    expect(&response, 200, "console")?;
    let console = response.body_text();
    if console != format!("{}\n", crate::svm_guest::GREETING) {
        return Err(format!("console: {console:?}"));
    }
    op.delete_td(&id)?;
    op.delete_image("svm-hello")?;
    op.expect_pool_whole(&pool)?;
    Ok(format!(
        "the guest printed its line and stopped itself; {} requests in {:.1} s",
        op.requests,
        started.elapsed().as_secs_f64()
    ))
}

/// What the TD firmware story measured.
pub struct ShellStory {
    /// A line for the test log.
    pub summary: String,
}

/// Debian's own `OVMF.fd` as a TD on the software module's SVM engine: upload, create
/// (1 vCPU, 256 MiB, no workload), check the MRTD against the image's offline value, start,
/// read `Shell>` from the console, type a Shell command and read its answer, type
/// `reset -s` and see the TD stop through the PM1 power-off, delete, pool whole.
pub fn tdvf_shell(
    port: u16,
    token: &str,
    io_timeout: Duration,
    openapi: &OpenApi,
) -> Result<ShellStory, String> {
    let firmware = std::fs::read(OVMF_PATH)
        .map_err(|e| format!("{OVMF_PATH} (Debian package `ovmf`): {e}"))?;
    let mut op = Operator::open(port, token, io_timeout, openapi)?;
    let pool = op.pool()?;
    let since = op.last_event_id()?;
    let expected_mrtd = op.upload("debian-ovmf", &firmware)?["expected_mrtd"].clone();
    let spec = json!({"name": "ovmf-shell", "image": "debian-ovmf", "vcpus": 1, "memory_mib": 256});
    let response = op.post_json("/v1/tds", &spec, &[])?;
    expect(&response, 201, "create the TD")?;
    let id = json_body(&response)?["id"].clone();
    let since = op.follow_events(since, "runnable", |e| is_state_event(e, &id, "runnable"))?;
    let measurement = op.get_json(&format!("/v1/tds/{id}/measurement"))?;
    if measurement["mrtd"] != expected_mrtd {
        return Err(format!(
            "MRTD {} differs from the offline MRTD {expected_mrtd}",
            measurement["mrtd"]
        ));
    }
    let started = Instant::now();
    let response = op.request("POST", &format!("/v1/tds/{id}/start"), None, &[], b"")?;
    expect(&response, 202, "start")?;
    let console_has = |op: &mut Operator, needle: &str| -> Result<bool, String> {
        let response = op.get(&format!("/v1/tds/{id}/console?offset=0"))?;
        expect(&response, 200, "console")?;
        Ok(response.body_text().contains(needle))
    };
    op.wait_for("Shell> on the TD console", |op| {
        if !console_has(op, "Shell> ")? {
            let td = op.get_json(&format!("/v1/tds/{id}"))?;
            if td["state"] != "running" {
                return Err(format!("the TD left running: {td}"));
            }
            return Ok(false);
        }
        Ok(true)
    })?;
    let shell_s = started.elapsed().as_secs_f64();
    // The Shell echoes each typed key between cursor moves, so the marker appears in one
    // piece only as the command's output.
    let typed = json!({"input": "echo tdx-e2e-shell-answer\r"});
    let response = op.post_json(&format!("/v1/tds/{id}/console"), &typed, &[])?;
    expect(&response, 200, "type a Shell command")?;
    op.wait_for("the Shell's answer", |op| {
        console_has(op, "tdx-e2e-shell-answer\r\n")
    })?;
    let response = op.post_json(
        &format!("/v1/tds/{id}/console"),
        &json!({"input": "reset -s\r"}),
        &[],
    )?;
    expect(&response, 200, "type reset -s")?;
    op.follow_events(since, "stopped", |e| is_state_event(e, &id, "stopped"))?;
    let td = op.get_json(&format!("/v1/tds/{id}"))?;
    let exits = td["counters"]["exits"].clone();
    op.delete_td(&id)?;
    op.delete_image("debian-ovmf")?;
    op.expect_pool_whole(&pool)?;
    Ok(ShellStory {
        summary: format!(
            "Debian OVMF.fd reached Shell> {shell_s:.1} s after start, answered a typed command, \
             powered off with reset -s ({exits} TD exits); pool whole"
        ),
    })
}

/// The test guest of [`crate::probe`] and its hostile variant as two TDs at once on the same
/// runner: the probe's checks all pass and RTMR 2 holds what it extended; the hostile TD,
/// whose second vCPU spins without exits all along, ends alone (stopped, or failed when the
/// host refuses its last request); the API answered throughout; delete, pool whole.
pub fn probe_guests(
    port: u16,
    token: &str,
    io_timeout: Duration,
    openapi: &OpenApi,
    elf: &std::path::Path,
) -> Result<String, String> {
    let started = Instant::now();
    let mut op = Operator::open(port, token, io_timeout, openapi)?;
    let pool = op.pool()?;
    let mut since = op.last_event_id()?;
    let mut ids = Vec::new();
    for (name, hostile) in [("td-probe-hostile", true), ("td-probe", false)] {
        op.upload(name, &crate::probe::image(elf, hostile)?)?;
        let vcpus = if hostile { 2 } else { 1 };
        let spec = json!({"name": name, "image": name, "vcpus": vcpus, "memory_mib": 32});
        let response = op.post_json("/v1/tds", &spec, &[])?;
        expect(&response, 201, "create a probe TD")?;
        let id = json_body(&response)?["id"].clone();
        since = op.follow_events(since, "runnable", |e| is_state_event(e, &id, "runnable"))?;
        ids.push(id);
    }
    for id in &ids {
        let response = op.request("POST", &format!("/v1/tds/{id}/start"), None, &[], b"")?;
        expect(&response, 202, "start a probe TD")?;
    }
    let mut health_probes = 0;
    op.wait_for("both probe TDs to end", |op| {
        let response = op.get("/v1/health")?;
        expect(&response, 200, "health while the probes run")?;
        health_probes += 1;
        let mut ended = 0;
        for id in &ids {
            let state = op.get_json(&format!("/v1/tds/{id}"))?["state"].clone();
            if state == "stopped" || state == "failed" || state == "bugged" {
                ended += 1;
            }
        }
        Ok(ended == ids.len())
    })?;
    let console = |op: &mut Operator, id: &Value| -> Result<String, String> {
        let response = op.get(&format!("/v1/tds/{id}/console?offset=0"))?;
        expect(&response, 200, "probe console")?;
        Ok(response.body_text())
    };
    let (hostile, probe) = (&ids[0], &ids[1]);
    let td = op.get_json(&format!("/v1/tds/{probe}"))?;
    let text = console(&mut op, probe)?;
    let passed = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("td-probe: all ")?
                .strip_suffix(" checks passed")
        })
        .and_then(|n| n.parse::<u32>().ok());
    if td["state"] != "stopped" || text.contains("FAILED") || passed.is_none_or(|n| n < 26) {
        return Err(format!("the probe: {td}\n{text}"));
    }
    let expected_rtmr2 = tdx_abi::measure::rtmr_extend(&[0; 48], crate::probe::RTMR_VALUE);
    let hex: String = expected_rtmr2.iter().map(|b| format!("{b:02x}")).collect();
    let measurement = op.get_json(&format!("/v1/tds/{probe}/measurement"))?;
    if measurement["rtmr"][2] != json!(hex) {
        return Err(format!(
            "RTMR 2 {} is not the extension of the probe's value ({hex})",
            measurement["rtmr"][2]
        ));
    }
    let hostile_td = op.get_json(&format!("/v1/tds/{hostile}"))?;
    let hostile_text = console(&mut op, hostile)?;
    if !hostile_text.contains("td-probe: hostile: storm done") || hostile_td["state"] == "bugged" {
        return Err(format!("the hostile probe: {hostile_td}\n{hostile_text}"));
    }
    for (id, name) in [(probe, "td-probe"), (hostile, "td-probe-hostile")] {
        op.delete_td(id)?;
        op.delete_image(name)?;
    }
    op.expect_pool_whole(&pool)?;
    Ok(format!(
        "probe: {} checks passed, RTMR 2 as extended; hostile probe (a second vCPU spinning \
         without exits) ended {} after its storm ({} TD exits); {health_probes} health probes \
         answered; {:.1} s",
        passed.unwrap_or(0),
        hostile_td["state"],
        hostile_td["counters"]["exits"],
        started.elapsed().as_secs_f64()
    ))
}

/// What the Linux TD's init prints (to the kernel log, which the console shows).
pub const LINUX_INIT_MARKER: &str = "TDX-LINUX-INIT-MARKER";
/// What the Linux TD's init writes to the UART from user space (`ttyS0`, interrupt-driven),
/// then waits a second: the interrupt-driven output drains meanwhile, while the kernel's own
/// console output and the virtio console's would interleave with it in the TD's console.
pub const LINUX_TTY_TEXT: &str = "written to ttyS0 from user space";
/// What the Linux TD's init writes to the virtio console (`hvc0`).
pub const LINUX_HVC_TEXT: &str = "written to hvc0, the virtio console";
/// What it prints when it waits for a line from the virtio console.
pub const LINUX_HVC_WAIT: &str = "init: reading a line from hvc0";
/// The line the test types into the console for it.
pub const LINUX_HVC_INPUT: &str = "typed through the console API\r";
/// What the Linux TD's init prints when it waits for the power button.
pub const LINUX_BUTTON_WAIT: &str = "init: waiting for the power button";
/// What it prints when the button was pressed, before it powers off.
pub const LINUX_BUTTON_PRESSED: &str = "init: power button pressed, powering off";
/// The text of the file the test puts on the Linux TD's disk.
pub const LINUX_DISK_TEXT: &str = "read from the TD's virtio disk";

/// Debian's cloud kernel as a TD through Debian's OVMF.fd, with an initramfs of busybox
/// whose init prints a marker and powers off: upload the three images, create (1 vCPU,
/// 512 MiB, SEPT_VE_DISABLE), start, follow the TD to `stopped`, find the kernel's TDX line
/// and the marker on the console, delete, pool whole.
pub fn linux_td(
    port: u16,
    token: &str,
    io_timeout: Duration,
    openapi: &OpenApi,
    guest: &appliance_image::linux_guest::LinuxGuest,
    scratch: &std::path::Path,
) -> Result<String, String> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let firmware = read(std::path::Path::new(OVMF_PATH))?;
    let kernel = read(&guest.kernel)?;
    let busybox = read(&guest.busybox)?;
    let modules = guest
        .modules
        .iter()
        .map(|(name, path)| Ok((*name, read(path)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let disk = appliance_image::linux_guest::ext2_image(
        scratch,
        &[("greeting.txt", LINUX_DISK_TEXT.as_bytes())],
        4,
    )
    .map_err(|e| format!("the test disk: {e}"))?;
    // The init loads the drivers that are modules in Debian's cloud kernel (input events,
    // the ACPI power button, virtio-blk), mounts the disk and prints what it read there,
    // with the CPUs Linux brought up. Then it does what a distribution's power-key handler
    // (systemd-logind, acpid) does: waits for the power button's key event, unmounts and
    // powers off.
    let insmods: String = modules
        .iter()
        .map(|(name, _)| format!("/bin/busybox insmod /{name}\n"))
        .collect();
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mkdir -p /proc /dev /sys /mnt\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         /bin/busybox mount -t sysfs sys /sys\n\
         exec 3<>/dev/ttyS0\n\
         {insmods}\
         for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; /bin/busybox sleep 1; done\n\
         /bin/busybox mount -t ext2 -o ro /dev/vda /mnt\n\
         echo \"{LINUX_INIT_MARKER}: init is pid $$ on $(/bin/busybox uname -r), \
         CPUs online $(/bin/busybox cat /sys/devices/system/cpu/online), \
         disk says: $(/bin/busybox cat /mnt/greeting.txt)\" > /dev/kmsg\n\
         /bin/busybox grep -E 'virtio0-req|ttyS0' /proc/interrupts | \
         while read -r irq; do echo \"$irq\" > /dev/kmsg; done\n\
         echo \"{LINUX_HVC_TEXT}\" > /dev/hvc0\n\
         echo \"{LINUX_HVC_WAIT}\" > /dev/kmsg\n\
         read -r line < /dev/hvc0\n\
         echo \"init: hvc0 read: $line\" > /dev/kmsg\n\
         read -r line <&3\n\
         echo \"init: ttyS0 read: $line\" > /dev/kmsg\n\
         echo \"{LINUX_TTY_TEXT}\" >&3\n\
         /bin/busybox sleep 1\n\
         for e in /sys/class/input/event*; do \
         /bin/busybox grep -q 'Power Button' $e/device/name && key=/dev/input/${{e##*/}}; done\n\
         echo \"{LINUX_BUTTON_WAIT}\" > /dev/kmsg\n\
         /bin/busybox dd if=$key of=/dev/null bs=24 count=1 2>/dev/null\n\
         echo \"{LINUX_BUTTON_PRESSED}\" > /dev/kmsg\n\
         /bin/busybox umount /mnt\n\
         /bin/busybox poweroff -f\n"
    );
    let mut files: Vec<(&str, u32, &[u8])> = vec![
        ("bin", 0o40755, b""),
        ("bin/busybox", 0o100755, &busybox),
        ("init", 0o100755, init.as_bytes()),
    ];
    for (name, bytes) in &modules {
        files.push((name, 0o100644, bytes));
    }
    let initrd = appliance_image::linux_guest::cpio_newc(&files);
    let mut op = Operator::open(port, token, io_timeout, openapi)?;
    let pool = op.pool()?;
    let since = op.last_event_id()?;
    for (name, bytes, kind) in [
        ("lx-ovmf", &firmware, "firmware"),
        ("lx-kernel", &kernel, "kernel"),
        ("lx-initrd", &initrd, "initrd"),
        ("lx-disk", &disk, "disk"),
    ] {
        if op.upload(name, bytes)?["kind"] != kind {
            return Err(format!("{name} is not recognised as a {kind}"));
        }
    }
    let spec = json!({
        "name": "linux", "image": "lx-ovmf", "kernel": "lx-kernel", "initrd": "lx-initrd",
        "disk": "lx-disk", "cmdline": "console=ttyS0 rdinit=/init", "attributes": "0x10000000",
        "vcpus": 2, "memory_mib": 512
    });
    let steps = [
        (LINUX_HVC_WAIT, ConsoleStep::Type(LINUX_HVC_INPUT)),
        (LINUX_BUTTON_WAIT, ConsoleStep::Stop),
    ];
    let (text, boot_s, since) = run_linux_td(&mut op, &spec, since, &steps)?;
    let marker = format!(
        "{LINUX_INIT_MARKER}: init is pid 1 on 6.12.95+deb12-cloud-amd64, CPUs online 0-1, \
         disk says: {LINUX_DISK_TEXT}"
    );
    for needle in [
        "Memory Encryption Features active: Intel TDX",
        "smp: Brought up 1 node, 2 CPUs",
        // The disk's request queue interrupts through MSI-X.
        "PCI-MSIX-0000:00:03.0",
        &marker,
        // The virtio console and the UART (its interrupts through the I/O APIC) carried
        // user-space output and the typed line.
        LINUX_HVC_TEXT,
        "init: hvc0 read: typed through the console API",
        LINUX_TTY_TEXT,
        "init: ttyS0 read: typed through the console API",
        "IO-APIC   4-edge      ttyS0",
        // The graceful stop pressed the power button, and the guest powered itself off.
        "ACPI: button: Power Button [PWRB]",
        LINUX_BUTTON_PRESSED,
        "reboot: Power down",
    ] {
        if !text.contains(needle) {
            return Err(format!("the console lacks {needle:?}:\n{text}"));
        }
    }
    // The same kernel with no init to run panics; with panic=1 it asks for a reboot, which
    // ends a TD. The appliance keeps serving meanwhile.
    let spec = json!({
        "name": "linux-panics", "image": "lx-ovmf", "kernel": "lx-kernel",
        "cmdline": "console=ttyS0 init=/nonexistent panic=1", "attributes": "0x10000000",
        "vcpus": 1, "memory_mib": 512
    });
    let (text, panic_s, _) = run_linux_td(&mut op, &spec, since, &[])?;
    if !text.contains("Kernel panic - not syncing") {
        return Err(format!(
            "the panicking TD's console lacks the panic:\n{text}"
        ));
    }
    expect(&op.get("/v1/health")?, 200, "health after the panic")?;
    for name in ["lx-ovmf", "lx-kernel", "lx-initrd", "lx-disk"] {
        op.delete_image(name)?;
    }
    op.expect_pool_whole(&pool)?;
    Ok(format!(
        "Debian's kernel ran as a TD with 2 vCPUs (TDX memory encryption active, both CPUs \
         online), mounted its virtio disk (MSI-X), printed the file's text, wrote to and read \
         a typed line from its virtio console and its UART, and powered off when a graceful stop pressed \
         its power button, {boot_s:.1} s after start; with init=/nonexistent it panicked and \
         its reboot ended the TD after {panic_s:.1} s; pool whole"
    ))
}

/// What the test does to a running Linux TD once its console shows a text.
enum ConsoleStep<'a> {
    /// Types the text into the console (`POST …/console`).
    Type(&'a str),
    /// Stops the TD gracefully (`POST …/stop`, no `force`).
    Stop,
}

/// Creates the TD `spec`, starts it, runs `steps` (each once its console shows the step's
/// text, in order) and waits until it stops. Returns its console, the seconds from start to
/// stop and the last event seen. Deletes the TD.
fn run_linux_td(
    op: &mut Operator,
    spec: &Value,
    since: u64,
    steps: &[(&str, ConsoleStep<'_>)],
) -> Result<(String, f64, u64), String> {
    let response = op.post_json("/v1/tds", spec, &[])?;
    expect(&response, 201, "create the Linux TD")?;
    let id = json_body(&response)?["id"].clone();
    let since = op.follow_events(since, "runnable", |e| is_state_event(e, &id, "runnable"))?;
    let started = Instant::now();
    let response = op.request("POST", &format!("/v1/tds/{id}/start"), None, &[], b"")?;
    expect(&response, 202, "start the Linux TD")?;
    let console = |op: &mut Operator| -> Result<String, String> {
        let response = op.get(&format!("/v1/tds/{id}/console?offset=0"))?;
        expect(&response, 200, "Linux TD console")?;
        Ok(response.body_text())
    };
    for (needle, step) in steps {
        loop {
            let text = console(op)?;
            if text.contains(needle) {
                break;
            }
            if started.elapsed() > STEP_TIMEOUT {
                return Err(format!("the console never showed {needle:?}:\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        match step {
            ConsoleStep::Type(text) => {
                let path = format!("/v1/tds/{id}/console");
                let response = op.post_json(&path, &json!({ "input": text }), &[])?;
                expect(&response, 200, "type into the Linux TD's console")?;
            }
            ConsoleStep::Stop => {
                let path = format!("/v1/tds/{id}/stop");
                let response = op.post_json(&path, &json!({}), &[])?;
                expect(&response, 202, "graceful stop of the Linux TD")?;
            }
        }
    }
    let since = match op.follow_events(since, "stopped", |e| is_state_event(e, &id, "stopped")) {
        Ok(since) => since,
        Err(e) => {
            let td = op.get_json(&format!("/v1/tds/{id}"))?;
            return Err(format!("{e}; the TD: {td}\n{}", console(op)?));
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let text = console(op)?;
    op.delete_td(&id)?;
    Ok((text, seconds, since))
}
