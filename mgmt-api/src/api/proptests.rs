//! Property tests of the whole API over a live (emulated) host: requests built from the
//! route table with arbitrary methods, path parameters, queries, credentials, media types
//! and JSON or byte bodies never panic, are always answered with a well-formed response,
//! never with a 500, only with statuses the OpenAPI document lists for the route, and never
//! leave an upload or long poll in flight.
//!
//! CI runs the default number of cases as part of `cargo test`. A long run:
//! `PROPTEST_CASES=1000000 cargo test -p mgmt-api --release api_requests_` (and the
//! cargo-fuzz target `mgmt-api/fuzz`, see its README lines in `fuzz_targets/api_request.rs`).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;

use proptest::prelude::*;
use serde_json::Value;

use super::openapi_check::document;
use super::tests::harness::Client;
use super::*;

const KEYS: &[&str] = &[
    "name",
    "image",
    "vcpus",
    "memory_mib",
    "attributes",
    "huge_pages",
    "workload",
    "steps",
    "touch",
    "accept",
    "print",
    "line",
    "gpa",
    "len",
    "access",
    "level",
    "force",
    "timeout_ms",
    "halt",
    "extend_rtmr",
    "index",
    "digest",
    "x",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        (0u64..200).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just("ovmf".to_string()),
            Just("0x1000".to_string()),
            Just("read".to_string()),
            Just("halt".to_string()),
            Just("4k".to_string()),
            "[a-z0-9._-]{0,8}",
            ".{0,8}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (String::from(k), v))
                        .collect(),
                )
            }),
        ]
    })
}

/// A create body close to valid, so the deeper checks are reached.
fn create_body() -> impl Strategy<Value = Value> {
    (
        "[a-z]{1,6}",
        prop_oneof![4 => Just("ovmf"), 1 => Just("missing")],
        prop_oneof![4 => 1u32..4, 1 => 0u32..1000],
        prop_oneof![1 => Just(0u64), 1 => Just(1 << 40), 6 => Just(32), 6 => Just(64)],
        prop_oneof![2 => Just(None), 1 => json_value().prop_map(Some)],
    )
        .prop_map(|(name, image, vcpus, memory_mib, workload)| {
            let mut v = serde_json::json!({
                "name": name, "image": image, "vcpus": vcpus, "memory_mib": memory_mib,
            });
            if let Some(w) = workload {
                v["workload"] = serde_json::json!({ "steps": [w, "halt"] });
            }
            v
        })
}

#[derive(Debug, Clone)]
struct ApiRequest {
    method: &'static str,
    path: String,
    auth: Option<&'static str>,
    content_type: Option<&'static str>,
    idempotency_key: Option<&'static str>,
    body: Vec<u8>,
}

fn api_request() -> impl Strategy<Value = ApiRequest> {
    let create = ROUTES
        .iter()
        .position(|r| r.method == Method::Post && r.pattern == "/v1/tds")
        .unwrap_or(0);
    let route = prop_oneof![3 => 0..ROUTES.len(), 1 => Just(create)];
    let method = prop_oneof![
        6 => Just(None),
        1 => prop::sample::select(&["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "BREW"][..])
            .prop_map(Some),
    ];
    let id = prop::sample::select(
        &[
            "1",
            "2",
            "3",
            "1",
            "2",
            "0",
            "abc",
            "99999999999999999999999",
            "%31",
            "-1",
        ][..],
    );
    let name = prop::sample::select(&["ovmf", "x", "ovmf", "a%2Fb", "..", "%zz", "n.a-me_1"][..]);
    let odd_query = prop::sample::select(
        &[
            "?offset=0",
            "?offset=99999999999",
            "?offset=-1",
            "?since=0",
            "?since=3&limit=1",
            "?limit=0",
            "?wait_ms=20",
            "?since=999&wait_ms=40",
            "?max_bytes=1",
            "?%",
            "?since=x",
        ][..],
    );
    let query = prop_oneof![2 => Just(""), 1 => odd_query];
    let auth = prop_oneof![8 => Just(Some("tok3n")), 1 => Just(Some("nope")), 1 => Just(None)];
    let content_type = prop::sample::select(
        &[
            Some("application/json"),
            Some("application/octet-stream"),
            None,
            Some("text/plain"),
            Some("application/json; charset=utf-8"),
        ][..],
    );
    let key =
        prop::sample::select(&[None, None, None, None, Some("k1"), Some("k2"), Some(" ")][..]);
    let body = prop_oneof![
        3 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        3 => create_body().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..300),
    ];
    // Mostly what the route takes (so handlers are reached), sometimes anything.
    let fitting = prop::bool::weighted(0.8);
    (
        route,
        method,
        id,
        name,
        query,
        auth,
        (content_type, key, body, fitting),
    )
        .prop_map(
            |(
                route,
                method,
                id,
                name,
                query,
                auth,
                (content_type, idempotency_key, body, fitting),
            )| {
                let spec = &ROUTES[route];
                let path = spec.pattern.replace("{id}", id).replace("{name}", name);
                let (content_type, body) = match (fitting, spec.body) {
                    (false, _) => (content_type, body),
                    (true, BodyKind::None) => (None, Vec::new()),
                    (true, BodyKind::OptionalJson) if body.len() % 2 == 0 => (None, Vec::new()),
                    (true, BodyKind::Json | BodyKind::OptionalJson) => {
                        (Some("application/json"), body)
                    }
                    (true, BodyKind::OctetStream) => (Some("application/octet-stream"), body),
                };
                ApiRequest {
                    method: method.unwrap_or(spec.method.as_str()),
                    path: format!("{path}{query}"),
                    auth,
                    content_type,
                    idempotency_key,
                    body,
                }
            },
        )
}

std::thread_local! {
    static CLIENT: RefCell<Option<Client>> = const { RefCell::new(None) };
    static DOC: Value = document();
}

fn with_client<R>(f: impl FnOnce(&mut Client) -> R) -> R {
    CLIENT.with(|cell| {
        let mut slot = cell.borrow_mut();
        let client = slot.get_or_insert_with(|| {
            let mut client = Client::new(super::tests::api_with_host());
            // One valid image so creates can succeed.
            let firmware = super::tests::ovmf();
            let r = super::tests::upload(&mut client, "ovmf", &firmware, 1 << 20);
            assert_eq!(r.status, 201);
            client
        });
        f(client)
    })
}

fn documented_statuses(method: &str, path: &str) -> Option<Vec<u16>> {
    let path = path.split('?').next().unwrap_or(path);
    let method = Method::from_token(method);
    let method = if method == Method::Head {
        Method::Get
    } else {
        method
    };
    let spec = ROUTES.iter().find(|r| {
        r.method == method
            && crate::router::PathPattern::parse(r.pattern)
                .unwrap()
                .matches_path(path)
    })?;
    DOC.with(|doc| {
        let key = method.as_str().to_ascii_lowercase();
        let responses = doc["paths"][spec.pattern][key]["responses"].as_object()?;
        Some(responses.keys().filter_map(|k| k.parse().ok()).collect())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn api_requests_are_answered_with_documented_statuses(req in api_request()) {
        with_client(|client| {
            let mut raw = format!("{} {} HTTP/1.1\r\nHost: h\r\n", req.method, req.path);
            if let Some(token) = req.auth {
                raw.push_str(&format!("Authorization: Bearer {token}\r\n"));
            }
            if let Some(ct) = req.content_type {
                raw.push_str(&format!("Content-Type: {ct}\r\n"));
            }
            if let Some(key) = req.idempotency_key {
                raw.push_str(&format!("Idempotency-Key: {key}\r\n"));
            }
            raw.push_str(&format!("Content-Length: {}\r\n\r\n", req.body.len()));
            let mut bytes = raw.into_bytes();
            bytes.extend_from_slice(&req.body);
            let mut responses = client.raw(&bytes);
            if responses.is_empty() {
                // A long poll: let its wait run out.
                client.now += 31_000;
                responses = client.drain();
            }
            prop_assert_eq!(responses.len(), 1, "{:?}", req);
            let resp = &responses[0];
            prop_assert!(resp.status != 500, "500 for {:?}: {:?}", req, String::from_utf8_lossy(&resp.body));
            if let Some(statuses) = documented_statuses(req.method, &req.path) {
                prop_assert!(
                    statuses.contains(&resp.status),
                    "{} {} answered {} (documented: {:?}): {}",
                    req.method, req.path, resp.status, statuses, String::from_utf8_lossy(&resp.body)
                );
            }
            if std::env::var("API_PROPTEST_TRACE").is_ok() { std::eprintln!("TRACE {} {} {} {}", req.method, req.path, resp.status, String::from_utf8_lossy(&resp.body).chars().take(150).collect::<String>()); }
            prop_assert_eq!(client.api().in_flight(), 0);
            // Let builds and teardowns progress between requests.
            client.now += 5;
            let now = client.now;
            client.api().step(now);
            Ok(())
        })?;
    }
}
