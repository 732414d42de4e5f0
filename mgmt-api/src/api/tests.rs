//! In-process API tests: raw HTTP bytes through `Server<Api>` over the software TDX module
//! (`tdx_runtime::host::testing`), every endpoint and every error status the API documents.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use crate::router::PathPattern;
use crate::server::tests::{Parsed, parse_responses};
use crate::server::{ConnState, Connection, Limits, Server};

const TOKEN: &str = "tok3n";

pub(crate) mod harness {
    use super::*;

    /// One keep-alive connection to an in-process server, with its own clock.
    pub struct Client {
        pub server: Server<Api>,
        pub conn: Connection,
        pub now: u64,
        /// Every response seen, for the OpenAPI check: (method, route pattern, parsed).
        pub seen: Vec<(Method, &'static str, Parsed)>,
    }

    impl Client {
        pub fn new(api: Api) -> Self {
            let server = Server::new(api, Limits::default());
            let conn = server.open(0);
            Self {
                server,
                conn,
                now: 0,
                seen: Vec::new(),
            }
        }

        pub fn api(&mut self) -> &mut Api {
            self.server.handler_mut()
        }

        /// Feeds raw bytes, drains the output, returns the responses.
        pub fn raw(&mut self, bytes: &[u8]) -> Vec<Parsed> {
            self.server.on_receive(&mut self.conn, bytes, self.now);
            self.drain()
        }

        pub fn drain(&mut self) -> Vec<Parsed> {
            let state = self.server.poll(&mut self.conn, self.now);
            let out = self.conn.output().to_vec();
            self.conn.consume_output(out.len());
            let parsed = parse_responses(&out).unwrap();
            if state != ConnState::Open {
                // A framing error closed the connection: the next request gets a new one.
                self.conn = self.server.open(self.now);
            }
            parsed
        }

        /// One request with the token, `Host`, and `Content-Length` when there is a body.
        pub fn send(
            &mut self,
            method: &str,
            path: &str,
            headers: &[(&str, &str)],
            body: &[u8],
        ) -> Parsed {
            let mut head = format!(
                "{method} {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {TOKEN}\r\n"
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            if !body.is_empty() || matches!(method, "POST" | "PUT") {
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            head.push_str("\r\n");
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(body);
            let mut responses = self.raw(&bytes);
            assert_eq!(responses.len(), 1, "{method} {path}: {responses:?}");
            let resp = responses.remove(0);
            self.record(method, path, &resp);
            resp
        }

        pub fn record(&mut self, method: &str, path: &str, resp: &Parsed) {
            let method = Method::from_token(method);
            let path = path.split('?').next().unwrap_or(path);
            if let Some(spec) = ROUTES.iter().find(|r| {
                r.method == method && PathPattern::parse(r.pattern).unwrap().matches_path(path)
            }) {
                self.seen.push((method, spec.pattern, resp.clone()));
            }
        }

        pub fn get(&mut self, path: &str) -> Parsed {
            self.send("GET", path, &[], b"")
        }

        pub fn post_json(&mut self, path: &str, body: &Value) -> Parsed {
            let body = serde_json::to_vec(body).unwrap();
            self.send("POST", path, &[("Content-Type", "application/json")], &body)
        }

        pub fn post_json_with(
            &mut self,
            path: &str,
            body: &Value,
            extra: &[(&str, &str)],
        ) -> Parsed {
            let body = serde_json::to_vec(body).unwrap();
            let mut headers = vec![("Content-Type", "application/json")];
            headers.extend_from_slice(extra);
            self.send("POST", path, &headers, &body)
        }

        /// Steps the host (as the main loop does) until `done` holds, at most `timeout`.
        pub fn step_until(
            &mut self,
            what: &str,
            timeout: Duration,
            mut done: impl FnMut(&mut Self) -> bool,
        ) {
            let start = Instant::now();
            loop {
                if done(self) {
                    return;
                }
                assert!(start.elapsed() < timeout, "timed out waiting for {what}");
                self.now += 1;
                let now = self.now;
                let more = self.api().step(now);
                if !more {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    pub fn json(resp: &Parsed) -> Value {
        serde_json::from_slice(&resp.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&resp.body)))
    }
}

use harness::{Client, json};

fn small_host() -> tdx_runtime::host::Host {
    tdx_runtime::host::testing::emulated_host(tdx_runtime::host::testing::small_config())
}

pub(crate) fn api_with_host() -> Api {
    Api::new(0)
        .with_token(BearerToken::new(TOKEN).unwrap())
        .with_host(small_host())
}

fn authed_api() -> Api {
    Api::new(0)
        .with_token(BearerToken::new(TOKEN).unwrap())
        .with_host_info(HostInfo {
            api_port: 8080,
            network: "static",
            ipv4: Some("10.0.2.15/24".into()),
            config_source: "boot medium \\EFI\\BOOT\\appliance.toml".into(),
            token_source: "configured",
            tls: Some(crate::state::TlsInfo {
                fingerprint: ["AB"; 32].join(":"),
                certificate_source: "generated",
            }),
        })
}

pub(crate) fn ovmf() -> Vec<u8> {
    const PATH: &str = "/usr/share/ovmf/OVMF.fd";
    std::fs::read(PATH).unwrap_or_else(|e| {
        panic!("{PATH} is needed by this test (Debian package `ovmf`: apt-get install ovmf): {e}")
    })
}

// ---------------------------------------------------------------------------------------
// Route table and routing
// ---------------------------------------------------------------------------------------

#[test]
fn every_route_pattern_parses_and_is_unique() {
    for (i, spec) in ROUTES.iter().enumerate() {
        PathPattern::parse(spec.pattern).unwrap();
        assert!(
            !ROUTES[..i]
                .iter()
                .any(|o| o.method == spec.method && o.pattern == spec.pattern),
            "{} {} twice",
            spec.method.as_str(),
            spec.pattern
        );
    }
}

#[test]
fn each_request_looks_its_route_up_once() {
    let mut client = Client::new(api_with_host());
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let requests = [
        String::from("GET /v1/health HTTP/1.1\r\nHost: h\r\n\r\n"),
        format!("GET /v1/host HTTP/1.1\r\nHost: h\r\n{auth}\r\n"),
        format!("GET /v1/tds/7 HTTP/1.1\r\nHost: h\r\n{auth}\r\n"),
        format!(
            "POST /v1/tds HTTP/1.1\r\nHost: h\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 2\r\n\r\n{{}}"
        ),
        String::from("GET /nowhere HTTP/1.1\r\nHost: h\r\n\r\n"),
        String::from("GET /v1/host HTTP/1.1\r\nHost: h\r\n\r\n"),
    ];
    // Pipelined on one connection: answered in order, one lookup each (admission, then the
    // answer from the remembered route).
    let all: String = requests.concat();
    let r = client.raw(all.as_bytes());
    let statuses: Vec<u16> = r.iter().map(|p| p.status).collect();
    assert_eq!(statuses, [200, 200, 404, 400, 404, 401]);
    assert_eq!(client.api().route_lookups, requests.len() as u64);
}

#[test]
fn health_needs_no_token_and_reports_module_kind() {
    let mut client = Client::new(authed_api());
    client.now = 2_500;
    let r = client.raw(b"GET /v1/health HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r[0].status, 200);
    assert_eq!(r[0].header("content-type"), Some("application/json"));
    let v = json(&r[0]);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["uptime_ms"], 2_500);
    assert!(v["module_kind"].is_null());

    let mut client = Client::new(api_with_host());
    let r = client.raw(b"GET /v1/health HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(json(&r[0])["module_kind"], "emulated");
}

#[test]
fn every_protected_route_needs_the_token() {
    let mut client = Client::new(api_with_host());
    for spec in ROUTES.iter().filter(|r| r.access != Access::Public) {
        let path = spec.pattern.replace("{id}", "1").replace("{name}", "img");
        for auth in [
            "",
            "Authorization: Bearer wrong\r\n",
            "Authorization: Basic eA==\r\n",
        ] {
            let raw = format!(
                "{} {path} HTTP/1.1\r\nHost: h\r\n{auth}Content-Length: 0\r\n\r\n",
                spec.method.as_str()
            );
            let r = client.raw(raw.as_bytes());
            assert_eq!(
                r[0].status,
                401,
                "{} {path} with {auth:?}",
                spec.method.as_str()
            );
            let challenge = r[0].header("www-authenticate").unwrap();
            assert!(challenge.starts_with("Bearer realm="), "{challenge}");
            assert_eq!(r[0].code(), "unauthorized");
        }
    }
    assert!(client.api().http_count(Method::Get, "/v1/tds", 401) >= 3);
}

#[test]
fn only_routes_that_change_nothing_are_open_to_readers() {
    for spec in ROUTES {
        let reads = spec.method == Method::Get;
        assert_eq!(
            spec.access == Access::Admin,
            !reads,
            "{} {}",
            spec.method.as_str(),
            spec.pattern
        );
    }
}

#[test]
fn a_reader_token_reads_and_gets_403_on_every_admin_route() {
    let mut tokens = crate::auth::TokenSet::new();
    let admin = BearerToken::new(TOKEN).unwrap();
    tokens.insert(admin, crate::auth::Role::Admin).unwrap();
    let reader = BearerToken::new("look-only").unwrap();
    tokens.insert(reader, crate::auth::Role::Reader).unwrap();
    let mut client = Client::new(api_with_host().with_tokens(tokens));
    let before = json(&client.get("/v1/tds"));
    for spec in ROUTES.iter().filter(|r| r.access != Access::Public) {
        let path = spec.pattern.replace("{id}", "1").replace("{name}", "img");
        let raw = format!(
            "{} {path} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer look-only\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
            spec.method.as_str()
        );
        let raw = if spec.method == Method::Get {
            format!("GET {path} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer look-only\r\n\r\n")
        } else {
            raw
        };
        let r = client.raw(raw.as_bytes());
        let what = format!("{} {path}", spec.method.as_str());
        if spec.access == Access::Admin {
            assert_eq!(r[0].status, 403, "{what}");
            assert_eq!(r[0].code(), "forbidden", "{what}");
            let challenge = r[0].header("www-authenticate").unwrap();
            assert!(challenge.contains("insufficient_scope"), "{challenge}");
        } else {
            assert!(
                ![401, 403].contains(&r[0].status),
                "{what}: {}",
                r[0].status
            );
        }
    }
    // The refused calls changed nothing.
    assert_eq!(json(&client.get("/v1/tds")), before);
}

#[test]
fn without_a_token_protected_routes_always_refuse() {
    let mut client = Client::new(Api::new(0));
    let r = client.raw(b"GET /v1/host HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer x\r\n\r\n");
    assert_eq!(r[0].status, 401);
}

#[test]
fn host_reports_the_setup_and_the_tdx_host() {
    let mut client = Client::new(authed_api());
    client.now = 10;
    let v = json(&client.get("/v1/host"));
    assert_eq!(v["ipv4"], "10.0.2.15/24");
    assert_eq!(v["api_port"], 8080);
    assert_eq!(v["network"], "static");
    assert_eq!(v["token_source"], "configured");
    assert_eq!(v["uptime_ms"], 10);
    assert!(v["tdx"].is_null());
    client.api().set_ipv4(None);
    client
        .api()
        .set_host_failure("TDX module not loaded".into());
    let v = json(&client.get("/v1/host"));
    assert!(v["ipv4"].is_null());
    assert_eq!(v["tdx_failure"], "TDX module not loaded");
    // TDX routes answer 503 with the reason.
    let r = client.get("/v1/tds");
    assert_eq!(r.status, 503);
    assert!(json(&r)["message"].as_str().unwrap().contains("not loaded"));

    let mut client = Client::new(api_with_host());
    let v = json(&client.get("/v1/host"));
    let tdx = &v["tdx"];
    assert_eq!(tdx["module_kind"], "emulated");
    assert_eq!(tdx["tds_by_state"].as_object().unwrap().len(), 10);
    assert_eq!(tdx["memory_total_bytes"], 512u64 << 20);
}

/// A bring-up that fails at TDH.SYS.LP.INIT: the platform has 4 CPUs, the software module
/// only 2 logical processors. Returns the failure and the steps, after the steps the
/// appliance records before the module's.
fn failed_bringup() -> (String, Vec<tdx_runtime::host::BringupStep>) {
    use alloc::sync::Arc;
    use tdx_abi::phys::{PhysMemory, SparseMemory};
    use tdx_runtime::host::testing::{ThreadPlatform, ThreadTopology, small_config};
    use tdx_runtime::host::{BringupLog, BringupStage, HostModule, Platform};
    let config = small_config();
    let memory: Arc<dyn PhysMemory> = Arc::new(SparseMemory::new());
    let module = tdx_emu::EmulatedModule::new(
        tdx_emu::EmuConfig {
            phys_base: config.memory.pool_base,
            phys_size: config.memory.pool_size,
            num_lps: 2,
            num_packages: 1,
            hkid_start: config.memory.hkid_start,
            num_hkids: config.memory.num_hkids,
            hkid_shift: 46,
            limits: tdx_emu::EmuLimits::default(),
        },
        memory.clone(),
    )
    .expect("software module");
    let platform: Arc<dyn Platform> = ThreadPlatform::new(ThreadTopology {
        cpus: 4,
        packages: 1,
    });
    let mut log = BringupLog::new();
    log.ok(BringupStage::Heap, "heap 48 MiB");
    log.ok(BringupStage::TdMemory, "512 MiB of TD memory");
    log.ok(
        BringupStage::CpuTopology,
        "4 logical CPUs in 1 package (x2APIC IDs, CPUID leaf 0xb)",
    );
    log.failed(
        BringupStage::TdxDetect,
        "no TDX hardware: CPU does not support SEAMRR",
    );
    log.ok(BringupStage::Module, "software TDX module");
    let err = tdx_runtime::host::Host::new_recorded(
        HostModule::Software(module.hooks()),
        memory,
        platform,
        config,
        &mut log,
    )
    .err()
    .expect("bring-up fails");
    (
        format!("TDX module bring-up failed: {err}"),
        log.into_steps(),
    )
}

#[test]
fn host_reports_the_steps_of_a_failed_bring_up() {
    let mut client = Client::new(authed_api());
    let v = json(&client.get("/v1/host"));
    assert_eq!(v["bringup"], json!([]), "no bring-up yet");
    let (reason, steps) = failed_bringup();
    client.api().set_host_failure_with_steps(reason, steps);
    let v = json(&client.get("/v1/host"));
    assert!(v["tdx"].is_null());
    assert!(
        v["tdx_failure"]
            .as_str()
            .unwrap()
            .contains("bring-up failed")
    );
    let steps = v["bringup"].as_array().unwrap();
    let row = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {v}"))
    };
    assert_eq!(steps[0]["step"], "heap");
    assert_eq!(row("tdx-detect")["status"], "failed");
    assert_eq!(row("sys-init")["status"], "ok");
    assert_eq!(
        row("lp-init")["status"],
        "failed",
        "bring-up stopped at LP.INIT: {v}"
    );
    assert_eq!(
        row("lp-init")["detail"],
        "logical CPU 2 of 4: CPU 2 is not available"
    );
    let after: Vec<&Value> = steps
        .iter()
        .skip_while(|s| s["step"] != "lp-init")
        .skip(1)
        .collect();
    assert_eq!(after.len(), 7);
    assert!(after.iter().all(|s| s["status"] == "skipped"));
    assert_eq!(after.last().unwrap()["step"], "runners");
    check_against_openapi(&client.seen);

    // A host reports its own steps, and replaces the failed ones.
    let mut api = Api::new(0).with_token(BearerToken::new(TOKEN).unwrap());
    api.set_host_failure_with_steps(String::from("first attempt"), failed_bringup().1);
    let mut client = Client::new(api.with_host(small_host()));
    let v = json(&client.get("/v1/host"));
    let steps = v["bringup"].as_array().unwrap();
    assert_eq!(steps.first().unwrap()["step"], "pool");
    assert_eq!(steps.last().unwrap()["step"], "runners");
    assert!(steps.iter().all(|s| s["status"] != "failed"), "{v}");
    check_against_openapi(&client.seen);
}

#[test]
fn protocol_errors_are_counted_in_metrics() {
    let mut client = Client::new(authed_api());
    // Each of these closes its connection; `raw` then opens a fresh one.
    let r = client.raw(b"G@T /v1/health HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r[0].status, 400);
    let big = format!(
        "GET /v1/health HTTP/1.1\r\nHost: h\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(9000)
    );
    let r = client.raw(big.as_bytes());
    assert_eq!(r[0].status, 431);
    let r = client.raw(big.trim_end().as_bytes());
    assert_eq!(r[0].status, 431);
    let r = client.raw(
        format!(
            "POST /v1/tds HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r[0].status, 413);
    // A head that stops arriving: 408 once the head timeout passes.
    assert!(client.raw(b"GET /v1/health HTTP/1.1\r\nHo").is_empty());
    client.now += Limits::default().head_timeout_ms;
    let r = client.drain();
    assert_eq!(r[0].status, 408);

    let api = client.api();
    assert_eq!(api.http_count(Method::Get, PROTOCOL_ROUTE, 431), 1);
    assert_eq!(api.http_count(Method::Post, PROTOCOL_ROUTE, 413), 1);
    assert_eq!(
        api.http_count(Method::Post, "/v1/tds", 413),
        0,
        "the handler never answered it"
    );

    let r = client.get("/v1/metrics");
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body.clone()).unwrap();
    check_exposition(&text);
    for series in [
        "tdx_http_requests_total{method=\"(none)\",route=\"(protocol)\",status=\"400\"} 1\n",
        "tdx_http_requests_total{method=\"(none)\",route=\"(protocol)\",status=\"408\"} 1\n",
        "tdx_http_requests_total{method=\"(none)\",route=\"(protocol)\",status=\"431\"} 1\n",
        "tdx_http_requests_total{method=\"GET\",route=\"(protocol)\",status=\"431\"} 1\n",
        "tdx_http_requests_total{method=\"POST\",route=\"(protocol)\",status=\"413\"} 1\n",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
    assert!(text.contains("# HELP tdx_http_requests_total HTTP requests answered by the management API, by method, route pattern and status; route=\"(protocol)\""));
    let protocol_series = text
        .lines()
        .filter(|line| line.starts_with("tdx_http_requests_total{") && line.contains("(protocol)"))
        .count();
    assert_eq!(protocol_series, 5, "{text}");
}

#[test]
fn routing_errors_come_before_authentication() {
    let mut client = Client::new(authed_api());
    let r = client.raw(b"GET /v1/nope HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r[0].status, 404);
    let r = client.raw(b"DELETE /v1/host HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r[0].status, 405);
    assert_eq!(r[0].header("allow"), Some("GET, HEAD"));
    assert_eq!(
        client.api().http_count(Method::Get, UNMATCHED_ROUTE, 404),
        1
    );
}

#[test]
fn framing_and_media_type_errors() {
    let mut client = Client::new(api_with_host());
    // 411: POST without Content-Length.
    let r = client.raw(
        format!("POST /v1/tds HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(
        (r[0].status, r[0].code().as_str()),
        (411, "length_required")
    );
    let r = client.raw(
        format!("PUT /v1/images/x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/octet-stream\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r[0].status, 411);
    // A POST that takes no body needs no Content-Length (curl -X POST sends none).
    let r = client.raw(
        format!(
            "POST /v1/tds/77/start HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r[0].status, 404);
    // 415: JSON route with another type, or none.
    let r = client.send("POST", "/v1/tds", &[("Content-Type", "text/plain")], b"{}");
    assert_eq!(
        (r.status, r.code().as_str()),
        (415, "unsupported_media_type")
    );
    let r = client.send("POST", "/v1/tds", &[], b"{}");
    assert_eq!(r.status, 415);
    let r = client.send(
        "PUT",
        "/v1/images/x",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    assert_eq!(r.status, 415);
    // Parameters after the media type are fine.
    let r = client.send(
        "POST",
        "/v1/tds",
        &[("Content-Type", "application/json; charset=utf-8")],
        b"{}",
    );
    assert_eq!(r.status, 400);
    // 400: body on a route that takes none.
    let r = client.send("GET", "/v1/tds", &[], b"x");
    assert_eq!(r.status, 400);
    // 413: an image over the configured limit, refused from the head alone.
    client.api().config.max_image_bytes = 1000;
    let r = client.send(
        "PUT",
        "/v1/images/big",
        &[("Content-Type", "application/octet-stream")],
        &[0u8; 1001],
    );
    assert_eq!((r.status, r.code().as_str()), (413, "payload_too_large"));
}

// ---------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------

/// Uploads `data` as `name` in `chunk`-byte segments; returns the final response.
pub(crate) fn upload(client: &mut Client, name: &str, data: &[u8], chunk: usize) -> Parsed {
    let head = format!(
        "PUT /v1/images/{name} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    // Like a real client, send the whole body even when the answer comes early (a refused
    // upload's body is read and discarded to keep the connection).
    let mut responses = client.raw(head.as_bytes());
    for piece in data.chunks(chunk.max(1)) {
        responses.extend(client.raw(piece));
    }
    responses.extend(client.drain());
    assert_eq!(responses.len(), 1, "{responses:?}");
    let resp = responses.remove(0);
    client.record("PUT", &format!("/v1/images/{name}"), &resp);
    resp
}

#[test]
fn invalid_image_is_422_with_the_reason_and_leaves_nothing() {
    let mut client = Client::new(api_with_host());
    let free_before = json(&client.get("/v1/host"))["tdx"]["memory_free_bytes"].clone();
    let junk = vec![0x5a_u8; 256 * 1024];
    let r = upload(&mut client, "junk", &junk, 10_000);
    assert_eq!((r.status, r.code().as_str()), (422, "invalid_image"));
    assert!(
        json(&r)["message"].as_str().unwrap().contains("TDVF")
            || json(&r)["message"].as_str().unwrap().contains("OVMF"),
        "{}",
        json(&r)
    );
    assert_eq!(client.get("/v1/images/junk").status, 404);
    assert_eq!(json(&client.get("/v1/images"))["items"], json!([]));
    assert_eq!(
        json(&client.get("/v1/host"))["tdx"]["memory_free_bytes"],
        free_before
    );
    assert_eq!(client.api().in_flight(), 0);
}

#[test]
fn abandoned_upload_is_aborted() {
    let mut client = Client::new(api_with_host());
    let head = format!(
        "PUT /v1/images/partial HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
    );
    assert!(client.raw(head.as_bytes()).is_empty());
    assert!(client.raw(&[1u8; 5000]).is_empty());
    assert_eq!(client.api().in_flight(), 1);
    let now = client.now;
    client.server.disconnect(&mut client.conn, now);
    assert_eq!(client.api().in_flight(), 0);
    // The name is free again.
    client.conn = client.server.open(now);
    let r = upload(&mut client, "partial", &[0u8; 4096], 4096);
    assert_eq!(r.status, 422);
}

// ---------------------------------------------------------------------------------------
// The operator story, in process
// ---------------------------------------------------------------------------------------

fn td_state(client: &mut Client, id: u64) -> String {
    json(&client.get(&format!("/v1/tds/{id}")))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn operator_story_over_the_software_module() {
    let firmware = ovmf();
    let mut client = Client::new(api_with_host());
    let pool_free = json(&client.get("/v1/host"))["tdx"]["memory_free_bytes"]
        .as_u64()
        .unwrap();

    // Upload OVMF.fd in 64 KiB segments.
    let r = upload(&mut client, "ovmf", &firmware, 64 * 1024);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("location"), Some("/v1/images/ovmf"));
    let image = json(&r);
    assert_eq!(image["size"], firmware.len());
    assert_eq!(image["sha384"].as_str().unwrap().len(), 96);
    assert!(!image["sections"].as_array().unwrap().is_empty());
    let expected_mrtd = image["expected_mrtd"].as_str().unwrap().to_string();
    assert_eq!(json(&client.get("/v1/images/ovmf")), image);
    assert_eq!(json(&client.get("/v1/images"))["items"][0]["name"], "ovmf");
    // Same name again: 409.
    let r = upload(&mut client, "ovmf", &firmware[..4096], 4096);
    assert_eq!((r.status, r.code().as_str()), (409, "name_taken"));

    // Create with an Idempotency-Key; the retry returns the same TD.
    let spec = json!({
        "name": "web", "image": "ovmf", "vcpus": 2, "memory_mib": 64,
        "workload": {"steps": [
            {"print": {"line": "hello from the TD"}},
            {"touch": {"gpa": "0x100000", "len": 65536, "access": "write"}},
            "halt"
        ]}
    });
    let body = serde_json::to_vec(&spec).unwrap();
    let headers = [
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "create-web-1"),
    ];
    let r = client.send("POST", "/v1/tds", &headers, &body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let td = json(&r);
    let id = td["id"].as_u64().unwrap();
    assert_eq!(r.header("location"), Some(format!("/v1/tds/{id}").as_str()));
    let r = client.send("POST", "/v1/tds", &headers, &body);
    assert_eq!(r.status, 201);
    assert_eq!(r.header(crate::handlers::IDEMPOTENT_REPLAYED), Some("true"));
    assert_eq!(json(&r)["id"], id);
    let mut other = spec.clone();
    other["vcpus"] = json!(1);
    let r = client.post_json_with("/v1/tds", &other, &[("Idempotency-Key", "create-web-1")]);
    assert_eq!(
        (r.status, r.code().as_str()),
        (422, "idempotency_key_reused")
    );
    assert_eq!(
        json(&client.get("/v1/tds"))["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Same name without the key: 409.
    let r = client.post_json("/v1/tds", &spec);
    assert_eq!((r.status, r.code().as_str()), (409, "name_taken"));
    // The image is in use.
    let r = client.send("DELETE", "/v1/images/ovmf", &[], b"");
    assert_eq!((r.status, r.code().as_str()), (409, "image_in_use"));

    // The build runs in steps; health answers between them.
    let mut health_during_build = 0;
    client.step_until("the build", Duration::from_secs(60), |c| {
        let r = c.raw(b"GET /v1/health HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(r[0].status, 200);
        health_during_build += 1;
        td_state(c, id) == "runnable"
    });
    assert!(health_during_build > 1, "the build took a single step");

    // Measurement: MRTD is the image's expected MRTD.
    let r = client.get(&format!("/v1/tds/{id}/measurement"));
    assert_eq!(r.status, 200);
    let m = json(&r);
    assert_eq!(m["mrtd"], expected_mrtd.as_str());
    assert_eq!(m["finalized"], true);
    assert_eq!(m["rtmr"].as_array().unwrap().len(), 4);

    // Console input needs a running TD.
    let r = client.post_json(&format!("/v1/tds/{id}/console"), &json!({"input": "ls\r"}));
    assert_eq!((r.status, r.code().as_str()), (409, "invalid_transition"));

    // Start: 202, then follow events until running; start again: 200.
    let since = json(&client.get("/v1/events"))["last_event_id"]
        .as_u64()
        .unwrap();
    let r = client.send("POST", &format!("/v1/tds/{id}/start"), &[], b"");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let mut since = since;
    let mut running = false;
    client.step_until("the running event", Duration::from_secs(30), |c| {
        let v = json(&c.get(&format!("/v1/events?since={since}")));
        for e in v["events"].as_array().unwrap() {
            assert!(e["id"].as_u64().unwrap() > since);
            running |= e["type"] == "td_state" && e["td_id"] == id && e["to"] == "running";
        }
        since = v["next_since"].as_u64().unwrap();
        running
    });
    let r = client.send(
        "POST",
        &format!("/v1/tds/{id}/start"),
        &[("Content-Type", "application/json")],
        b"{}",
    );
    assert_eq!(r.status, 200);
    // Console input: queued in the UART; empty or unknown fields are refused by field.
    let r = client.post_json(&format!("/v1/tds/{id}/console"), &json!({"input": "ls\r"}));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(json(&r)["accepted_bytes"], 3);
    let r = client.post_json(&format!("/v1/tds/{id}/console"), &json!({"input": ""}));
    assert_eq!((r.status, json(&r)["field"].as_str()), (400, Some("input")));
    let r = client.post_json(&format!("/v1/tds/{id}/console"), &json!({"text": "x"}));
    assert_eq!(r.status, 400);

    // Console: the workload's line, with offsets in headers.
    let mut console = String::new();
    client.step_until("console output", Duration::from_secs(30), |c| {
        let r = c.get(&format!("/v1/tds/{id}/console?offset=0"));
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
        let next: u64 = r.header("x-console-next-offset").unwrap().parse().unwrap();
        assert_eq!(next as usize, r.body.len());
        console = String::from_utf8_lossy(&r.body).into_owned();
        console.contains("hello from the TD")
    });
    let r = client.get(&format!("/v1/tds/{id}/console?offset={}", console.len()));
    assert!(r.body.is_empty());

    // Metrics: text format with the TD's series.
    let r = client.get("/v1/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(r.body.clone()).unwrap();
    assert!(text.contains("tdx_tds{state=\"running\"} 1\n"), "{text}");
    assert!(text.contains(&format!(
        "tdx_td_info{{id=\"{id}\",name=\"web\",image=\"ovmf\",state=\"running\"}} 1"
    )));
    assert!(
        text.contains(
            "tdx_http_requests_total{method=\"POST\",route=\"/v1/tds\",status=\"201\"} 2\n"
        ),
        "{text}"
    );
    for family in [
        "tdx_uptime_seconds ",
        "tdx_faults_total ",
        "tdx_busy_retries_total ",
        "tdx_seamcalls_total{leaf=\"",
        "tdx_pool_bytes{use=\"",
        "tdx_pool_free_bytes ",
        "tdx_hkids_free ",
        "tdx_leaked_pages ",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
    assert!(text.contains(&format!(
        "tdx_td_mapped_pages{{id=\"{id}\",name=\"web\",size=\"4k\"}}"
    )));
    check_exposition(&text);

    // Stop (graceful, short timeout): 202, then stopped; stop again: 200.
    let r = client.post_json(
        &format!("/v1/tds/{id}/stop"),
        &json!({"force": false, "timeout_ms": 100}),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    client.step_until("stopped", Duration::from_secs(30), |c| {
        td_state(c, id) == "stopped"
    });
    let r = client.post_json(&format!("/v1/tds/{id}/stop"), &json!({"force": true}));
    assert_eq!(r.status, 200);
    let r = client.send("POST", &format!("/v1/tds/{id}/start"), &[], b"");
    assert_eq!((r.status, r.code().as_str()), (409, "invalid_transition"));

    // Delete: teardown reclaims everything.
    let r = client.send("DELETE", &format!("/v1/tds/{id}"), &[], b"");
    assert!(matches!(r.status, 202 | 204), "{}", r.status);
    client.step_until("teardown", Duration::from_secs(30), |c| {
        c.get(&format!("/v1/tds/{id}")).status == 404
    });
    let r = client.send("DELETE", "/v1/images/ovmf", &[], b"");
    assert_eq!(r.status, 204);
    let host = json(&client.get("/v1/host"));
    assert_eq!(
        host["tdx"]["memory_free_bytes"], pool_free,
        "the pool is whole again"
    );
    assert_eq!(host["tdx"]["hkids_free"], host["tdx"]["hkids_total"]);

    check_against_openapi(&client.seen);
}

/// Structural check of a Prometheus text exposition: each family's HELP and TYPE come once
/// and before its samples; sample lines are `name{labels} value`.
fn check_exposition(text: &str) {
    let mut typed: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            assert!(!typed.contains(&name), "TYPE {name} twice");
            typed.push(name);
        } else if !line.starts_with("# HELP ") {
            let name_end = line.find(['{', ' ']).unwrap();
            let name = &line[..name_end];
            assert_eq!(
                typed.last(),
                Some(&name),
                "sample {line} outside its family"
            );
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
    assert!(text.ends_with('\n'));
}

fn check_against_openapi(seen: &[(Method, &'static str, Parsed)]) {
    super::openapi_check::check_responses(seen);
}

// ---------------------------------------------------------------------------------------
// Events long poll
// ---------------------------------------------------------------------------------------

fn spec(name: &str) -> tdx_runtime::host::TdSpec {
    tdx_runtime::host::TdSpec {
        name: name.into(),
        image: "ovmf".into(),
        vcpus: 1,
        memory_mib: 32,
        attributes: 0,
        huge_pages: false,
        workload: None,
        linux: None,
        disk: None,
    }
}

fn client_with_image() -> Client {
    let mut client = Client::new(api_with_host());
    let r = upload(&mut client, "ovmf", &ovmf(), 1 << 20);
    assert_eq!(r.status, 201);
    client
}

fn events_request(since: u64, wait_ms: u64) -> String {
    format!(
        "GET /v1/events?since={since}&wait_ms={wait_ms} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
}

#[test]
fn long_poll_answers_as_soon_as_an_event_exists() {
    let mut client = client_with_image();
    let last = json(&client.get("/v1/events"))["last_event_id"]
        .as_u64()
        .unwrap();
    assert!(last > 0, "the upload is an event");
    client.now = 1_000;
    assert!(
        client
            .raw(events_request(last, 20_000).as_bytes())
            .is_empty()
    );
    client.now = 1_500;
    assert!(client.drain().is_empty(), "no event yet");
    assert_eq!(client.api().in_flight(), 1);
    let td = client
        .api()
        .host_mut()
        .unwrap()
        .create_td(spec("poll"), 1_500)
        .unwrap();
    client.now = 1_501;
    let r = client.drain();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 200);
    let v = json(&r[0]);
    let events = v["events"].as_array().unwrap();
    assert!(!events.is_empty());
    assert!(events.iter().all(|e| e["id"].as_u64().unwrap() > last));
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "td_state" && e["td_id"] == td.id.0),
        "{v}"
    );
    assert_eq!(v["next_since"], events.last().unwrap()["id"]);
    assert_eq!(client.api().in_flight(), 0);
    client.record("GET", "/v1/events", &r[0]);
    check_against_openapi(&client.seen);
}

#[test]
fn long_poll_times_out_empty_and_wait_is_capped() {
    let mut client = client_with_image();
    let last = json(&client.get("/v1/events"))["last_event_id"]
        .as_u64()
        .unwrap();
    client.now = 10_000;
    assert!(client.raw(events_request(last, 250).as_bytes()).is_empty());
    client.now = 10_249;
    assert!(client.drain().is_empty());
    client.now = 10_250;
    let r = client.drain();
    let v = json(&r[0]);
    assert_eq!(v["events"], json!([]));
    assert_eq!(v["next_since"], last);
    // A wait over the cap ends at the cap (30 s).
    assert!(
        client
            .raw(events_request(last, 3_600_000).as_bytes())
            .is_empty()
    );
    client.now = 10_250 + 29_999;
    assert!(client.drain().is_empty());
    client.now = 10_250 + 30_000;
    assert_eq!(client.drain().len(), 1);
    // Events already there: answered at once, whatever the wait.
    let r = client.raw(events_request(0, 30_000).as_bytes());
    assert_eq!(r.len(), 1);
    assert!(!json(&r[0])["events"].as_array().unwrap().is_empty());
    // limit bounds the answer; next_since continues from it.
    let v = json(&client.get("/v1/events?since=0&limit=1"));
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    assert_eq!(v["next_since"], 1);
    let r = client.get("/v1/events?limit=0");
    assert_eq!((r.status, json(&r)["field"].as_str()), (400, Some("limit")));
    let r = client.get("/v1/events?since=abc");
    assert_eq!((r.status, json(&r)["field"].as_str()), (400, Some("since")));
}

#[test]
fn disconnect_abandons_a_long_poll() {
    let mut client = client_with_image();
    client.raw(events_request(u64::MAX - 1, 10_000).as_bytes());
    assert_eq!(client.api().in_flight(), 1);
    let now = client.now;
    client.server.disconnect(&mut client.conn, now);
    assert_eq!(client.api().in_flight(), 0);
}

// ---------------------------------------------------------------------------------------
// Statuses
// ---------------------------------------------------------------------------------------

#[test]
fn not_found_and_validation_statuses() {
    let mut client = client_with_image();
    for path in [
        "/v1/tds/999",
        "/v1/tds/abc",
        "/v1/tds/99999999999999999999999",
        "/v1/tds/999/measurement",
        "/v1/tds/999/console",
        "/v1/images/nothing",
    ] {
        let r = client.get(path);
        assert_eq!((r.status, r.code().as_str()), (404, "not_found"), "{path}");
    }
    for (method, path) in [
        ("POST", "/v1/tds/999/start"),
        ("POST", "/v1/tds/999/stop"),
        ("DELETE", "/v1/tds/999"),
        ("DELETE", "/v1/images/nothing"),
    ] {
        let r = client.send(method, path, &[], b"");
        assert_eq!(r.status, 404, "{method} {path}");
    }
    // Validation errors name the field, as a JSON path.
    let cases = [
        (json!({"name": "a", "image": "ovmf", "vcpus": 1}), None),
        (
            json!({"name": "a", "image": "ovmf", "vcpus": 1, "memory_mib": 64, "ram": 1}),
            Some("ram"),
        ),
        (
            json!({"name": "a", "image": "ovmf", "vcpus": 1, "memory_mib": 64,
                   "workload": {"steps": ["halt", {"touch": {"gpa": "0x1000", "len": 1, "access": "poke"}}]}}),
            Some("workload.steps[1].touch.access"),
        ),
        (
            json!({"name": "bad name!", "image": "ovmf", "vcpus": 1, "memory_mib": 64}),
            Some("name"),
        ),
        (
            json!({"name": "a", "image": "ovmf", "vcpus": 0, "memory_mib": 64}),
            Some("vcpus"),
        ),
    ];
    for (body, field) in cases {
        let r = client.post_json("/v1/tds", &body);
        assert_eq!(
            r.status,
            400,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(json(&r)["field"].as_str(), field, "{body}");
    }
    let r = client.post_json(
        "/v1/tds",
        &json!({"name": "a", "image": "nope", "vcpus": 1, "memory_mib": 64}),
    );
    assert_eq!((r.status, json(&r)["field"].as_str()), (404, Some("image")));
    // More memory than the pool has.
    let r = client.post_json(
        "/v1/tds",
        &json!({"name": "huge", "image": "ovmf", "vcpus": 1, "memory_mib": 1 << 20}),
    );
    assert!(matches!(r.status, 400 | 503), "{}", r.status);
    assert_eq!(json(&client.get("/v1/tds"))["items"], json!([]));
    // Stop body: unknown member, bad timeout.
    let td = client
        .api()
        .host_mut()
        .unwrap()
        .create_td(spec("s"), 0)
        .unwrap();
    let path = format!("/v1/tds/{}/stop", td.id.0);
    let r = client.post_json(&path, &json!({"forse": true}));
    assert_eq!((r.status, json(&r)["field"].as_str()), (400, Some("forse")));
    let r = client.post_json(&path, &json!({"timeout_ms": 10_000_000}));
    assert_eq!(
        (r.status, json(&r)["field"].as_str()),
        (400, Some("timeout_ms"))
    );
    let r = client.post_json(&format!("/v1/tds/{}/start", td.id.0), &json!({"now": 1}));
    assert_eq!(r.status, 400);
    // Idempotency-Key syntax.
    let long = "k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1);
    let r = client.post_json_with(
        "/v1/tds",
        &json!({"name": "k", "image": "ovmf", "vcpus": 1, "memory_mib": 32}),
        &[("Idempotency-Key", &long)],
    );
    assert_eq!(
        (r.status, json(&r)["field"].as_str()),
        (400, Some("Idempotency-Key"))
    );
    check_against_openapi(&client.seen);
}

#[test]
fn head_is_served_for_get_routes() {
    let mut client = client_with_image();
    let r = client.raw(
        format!(
            "HEAD /v1/images/ovmf HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r[0].status, 200);
    assert!(r[0].body.is_empty());
    assert!(
        r[0].header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 0
    );
}

#[test]
fn openapi_document_is_served() {
    let mut client = Client::new(api_with_host());
    let r = client.get("/v1/openapi.json");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, crate::handlers::OPENAPI_JSON.as_bytes());
    assert_eq!(json(&r)["openapi"], "3.1.0");
}

#[test]
fn idempotency_memory_is_bounded() {
    let mut client = client_with_image();
    let config = ApiConfig {
        idempotency_keys: 2,
        ..ApiConfig::default()
    };
    let api = core::mem::replace(client.api(), Api::new(0));
    *client.api() = api.with_config(config);
    let mut ids = Vec::new();
    for (i, key) in ["a", "b", "c"].iter().enumerate() {
        let body = json!({"name": format!("td{i}"), "image": "ovmf", "vcpus": 1, "memory_mib": 32});
        let r = client.post_json_with("/v1/tds", &body, &[("Idempotency-Key", key)]);
        assert_eq!(r.status, 201);
        ids.push(json(&r)["id"].clone());
    }
    // "a" was forgotten: the retry is a new create, refused because the name is taken.
    let body = json!({"name": "td0", "image": "ovmf", "vcpus": 1, "memory_mib": 32});
    let r = client.post_json_with("/v1/tds", &body, &[("Idempotency-Key", "a")]);
    assert_eq!((r.status, r.code().as_str()), (409, "name_taken"));
    // "c" is remembered.
    let body = json!({"name": "td2", "image": "ovmf", "vcpus": 1, "memory_mib": 32});
    let r = client.post_json_with("/v1/tds", &body, &[("Idempotency-Key", "c")]);
    assert_eq!((r.status, json(&r)["id"].clone()), (201, ids[2].clone()));
}

#[test]
fn a_public_only_connection_answers_health_and_404_for_everything_else() {
    let mut server = crate::server::Server::new(api_with_host(), crate::server::Limits::default());
    let mut conn = server.open_public_only(0);
    let raw = format!(
        "GET /v1/health HTTP/1.1\r\nHost: h\r\n\r\n\
         GET /v1/host HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {TOKEN}\r\n\r\n\
         POST /v1/tds HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}\
         HEAD /v1/health HTTP/1.1\r\nHost: h\r\n\r\n"
    );
    server.on_receive(&mut conn, raw.as_bytes(), 1);
    let responses = crate::server::tests::parse_responses(conn.output()).expect("responses");
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 404, 404, 200]);
    assert_eq!(responses[1].code(), "not_found");
    assert!(String::from_utf8_lossy(&responses[1].body).contains("/v1/health"));
    // Nothing was created through the public-only connection.
    assert_eq!(
        server
            .handler_mut()
            .http_count(Method::Post, "/v1/tds", 201),
        0
    );
}
