//! Connection/server behaviour: statuses, keep-alive, pipelining, timers, handler hooks.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::response::StatusCode;
use crate::state::Api;

/// A parsed response from the output stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Parsed {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn closes(&self) -> bool {
        self.header("connection") == Some("close")
    }

    /// The `code` member of a JSON error body.
    pub(crate) fn code(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        v["code"].as_str().unwrap().to_string()
    }
}

/// Splits an output stream into responses, checking each is well-formed HTTP/1.1 with a
/// correct `Content-Length` and, for 4xx/5xx, a JSON `{"code","message"}` body. A response
/// whose announced body is absent (next bytes start a new response, or end) is taken as a
/// HEAD response. Interim 100 responses are skipped.
pub(crate) fn parse_responses(mut out: &[u8]) -> Result<Vec<Parsed>, String> {
    let mut responses = Vec::new();
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(out) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Err("truncated response head".into()),
            Err(e) => return Err(alloc::format!("bad response head: {e}")),
        };
        let status = resp.code.ok_or("no status")?;
        if resp.version != Some(1) {
            return Err("not HTTP/1.1".into());
        }
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        out = &out[len..];
        if status == 100 {
            continue;
        }
        let cl: Vec<&(String, String)> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .collect();
        let body_len = match cl.as_slice() {
            [] if status == 204 || status == 304 => 0,
            [(_, v)] => v.parse::<usize>().map_err(|_| "bad content-length")?,
            _ => return Err("missing or repeated Content-Length".into()),
        };
        let head_response = body_len > 0 && (out.is_empty() || out.starts_with(b"HTTP/1.1 "));
        let body = if head_response {
            Vec::new()
        } else {
            let body = out.get(..body_len).ok_or("truncated body")?.to_vec();
            out = &out[body_len..];
            body
        };
        if status >= 400 && !head_response {
            let v: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| alloc::format!("error body: {e}"))?;
            let obj = v.as_object().ok_or("error body not an object")?;
            if !obj.get("code").is_some_and(|c| c.is_string())
                || !obj.get("message").is_some_and(|m| m.is_string())
                || obj
                    .keys()
                    .any(|k| !["code", "message", "field"].contains(&k.as_str()))
            {
                return Err(alloc::format!("error body shape: {v}"));
            }
        }
        responses.push(Parsed {
            status,
            headers,
            body,
        });
    }
    Ok(responses)
}

pub(crate) fn api_server() -> Server<Api> {
    Server::new(Api::new(0), Limits::default())
}

/// Feeds `chunks` at `now_ms`, drains output, returns the parsed responses and the state.
pub(crate) fn exchange<H: Handler>(
    server: &mut Server<H>,
    conn: &mut Connection,
    chunks: &[&[u8]],
    now_ms: u64,
) -> (Vec<Parsed>, ConnState) {
    let mut out = Vec::new();
    for chunk in chunks {
        server.on_receive(conn, chunk, now_ms);
        out.extend_from_slice(conn.output());
        conn.consume_output(conn.output().len());
    }
    let state = server.poll(conn, now_ms);
    out.extend_from_slice(conn.output());
    conn.consume_output(conn.output().len());
    (parse_responses(&out).unwrap(), state)
}

fn one(raw: &str) -> (Vec<Parsed>, ConnState) {
    let mut server = api_server();
    let mut conn = server.open(0);
    exchange(&mut server, &mut conn, &[raw.as_bytes()], 5)
}

const HEALTH: &str = "GET /v1/health HTTP/1.1\r\nHost: a\r\n\r\n";

#[test]
fn health_is_200_json_and_keeps_alive() {
    let (r, state) = one(HEALTH);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 200);
    assert_eq!(r[0].header("content-type"), Some("application/json"));
    assert!(!r[0].closes());
    let v: serde_json::Value = serde_json::from_slice(&r[0].body).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["uptime_ms"], 5);
    assert_eq!(state, ConnState::Open);
}

#[test]
fn keep_alive_serves_sequential_requests() {
    let mut server = api_server();
    let mut conn = server.open(0);
    for t in 1..5 {
        let (r, state) = exchange(&mut server, &mut conn, &[HEALTH.as_bytes()], t * 100);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].status, 200);
        assert_eq!(state, ConnState::Open);
    }
}

#[test]
fn unknown_path_is_404_and_keeps_alive() {
    let (r, state) = one("GET /v1/nope HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r[0].status, 404);
    assert_eq!(r[0].code(), "not_found");
    assert_eq!(state, ConnState::Open);
}

#[test]
fn wrong_method_is_405_with_allow() {
    let (r, _) = one("DELETE /v1/health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r[0].status, 405);
    assert_eq!(r[0].code(), "method_not_allowed");
    assert_eq!(r[0].header("allow"), Some("GET, HEAD"));
    let (r, _) = one("FROB /v1/health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r[0].status, 405);
}

#[test]
fn post_with_small_body_to_get_route_is_405_and_body_is_skipped() {
    let raw = "POST /v1/health HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    let mut server = api_server();
    let mut conn = server.open(0);
    let (r, state) = exchange(
        &mut server,
        &mut conn,
        &[raw.as_bytes(), HEALTH.as_bytes()],
        1,
    );
    assert_eq!(r.iter().map(|p| p.status).collect::<Vec<_>>(), [405, 200]);
    assert_eq!(state, ConnState::Open);
}

#[test]
fn head_gets_headers_without_body() {
    let (r, _) = one("HEAD /v1/health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r[0].status, 200);
    assert!(r[0].body.is_empty());
    let len: usize = r[0].header("content-length").unwrap().parse().unwrap();
    assert!(len > 10);
}

#[test]
fn malformed_request_is_400_and_closes() {
    for raw in [
        "GARBAGE\r\n\r\n",
        "GET /v1/health HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
        "GET /v1/health HTTP/1.1\r\n\r\n",
        "GET /v1/health HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
        "GET /v1/health HTTP/3.0\r\nHost: a\r\n\r\n",
        "\x00\x01\x02\r\n\r\n",
    ] {
        let (r, state) = one(raw);
        assert_eq!(r.len(), 1, "{raw:?}");
        assert_eq!(r[0].status, 400, "{raw:?}");
        assert_eq!(r[0].code(), "bad_request");
        assert!(r[0].closes());
        assert_eq!(state, ConnState::CloseAfterFlush);
    }
}

#[test]
fn bad_path_escape_is_400_but_keeps_alive() {
    let (r, state) = one("GET /v1/%zz HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r[0].status, 400);
    assert_eq!(state, ConnState::Open);
}

#[test]
fn framing_error_drops_rest_of_pipeline() {
    let raw = alloc::format!("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n{HEALTH}");
    let (r, state) = one(&raw);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 400);
    assert_eq!(state, ConnState::CloseAfterFlush);
}

#[test]
fn chunked_is_411_and_closes() {
    let raw = "POST /v1/health HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let (r, state) = one(raw);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 411);
    assert_eq!(r[0].code(), "length_required");
    assert!(r[0].closes());
    assert_eq!(state, ConnState::CloseAfterFlush);
}

#[test]
fn put_without_length_has_no_body_other_coding_501() {
    // No Content-Length: an empty body, answered by the route (405: health is GET only).
    let (r, _) = one("PUT /v1/health HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r[0].status, 405);
    let (r, _) = one("POST /v1/health HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n");
    assert_eq!(r[0].status, 501);
    assert_eq!(r[0].code(), "not_implemented");
}

#[test]
fn oversized_body_is_413_before_the_body_arrives() {
    let mut server = api_server();
    let mut conn = server.open(0);
    let raw = "POST /v1/health HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n";
    let (r, state) = exchange(&mut server, &mut conn, &[raw.as_bytes()], 1);
    // Unknown route/method is refused first (405), and the big body closes the connection.
    assert_eq!(r[0].status, 405);
    assert_eq!(state, ConnState::CloseAfterFlush);

    // On an accepting route the limit itself answers 413, with no body byte sent.
    let mut server = Server::new(Echo::default(), Limits::default());
    let mut conn = server.open(0);
    let raw = "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n";
    let (r, state) = exchange(&mut server, &mut conn, &[raw.as_bytes()], 1);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 413);
    assert_eq!(r[0].code(), "payload_too_large");
    assert!(r[0].closes());
    assert_eq!(state, ConnState::CloseAfterFlush);
    assert!(server.handler().bodies.is_empty());
}

#[test]
fn body_at_the_limit_is_accepted() {
    let limits = Limits {
        max_body_bytes: 10,
        ..Limits::default()
    };
    let mut server = Server::new(Echo::default(), limits);
    let mut conn = server.open(0);
    let raw = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789";
    let (r, _) = exchange(&mut server, &mut conn, &[raw], 1);
    assert_eq!(r[0].status, 200);
    assert_eq!(r[0].body, b"0123456789");
}

#[test]
fn too_many_headers_is_431() {
    let mut raw = String::from("GET /v1/health HTTP/1.1\r\nHost: a\r\n");
    for i in 0..64 {
        raw.push_str(&alloc::format!("X-{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    let (r, state) = one(&raw);
    assert_eq!(r[0].status, 431);
    assert_eq!(r[0].code(), "headers_too_large");
    assert_eq!(state, ConnState::CloseAfterFlush);
}

#[test]
fn too_large_head_is_431_even_before_it_ends() {
    let big = "a".repeat(9000);
    let partial = alloc::format!("GET /v1/health HTTP/1.1\r\nHost: a\r\nX-Big: {big}");
    let (r, state) = one(&partial);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 431);
    assert_eq!(state, ConnState::CloseAfterFlush);
    let complete = alloc::format!("{partial}\r\n\r\n");
    assert_eq!(one(&complete).0[0].status, 431);
}

#[test]
fn head_of_exactly_the_limit_is_accepted() {
    let base = "GET /v1/health HTTP/1.1\r\nHost: a\r\nX-Pad: \r\n\r\n";
    let pad = "p".repeat(8192 - base.len());
    let raw = alloc::format!("GET /v1/health HTTP/1.1\r\nHost: a\r\nX-Pad: {pad}\r\n\r\n");
    assert_eq!(raw.len(), 8192);
    assert_eq!(one(&raw).0[0].status, 200);
}

#[test]
fn connection_close_is_honoured() {
    let raw =
        alloc::format!("GET /v1/health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n{HEALTH}");
    let (r, state) = one(&raw);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 200);
    assert!(r[0].closes());
    assert_eq!(state, ConnState::CloseAfterFlush);
}

#[test]
fn http10_closes_unless_keep_alive() {
    let (r, state) = one("GET /v1/health HTTP/1.0\r\n\r\n");
    assert_eq!(r[0].status, 200);
    assert!(r[0].closes());
    assert_eq!(state, ConnState::CloseAfterFlush);

    let raw =
        "GET /v1/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /v1/health HTTP/1.0\r\n\r\n";
    let (r, state) = one(raw);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].header("connection"), Some("keep-alive"));
    assert!(r[1].closes());
    assert_eq!(state, ConnState::CloseAfterFlush);
}

fn pipeline(n: usize) -> (String, Vec<u16>) {
    let kinds = [
        (HEALTH, 200),
        ("GET /v1/nope HTTP/1.1\r\nHost: a\r\n\r\n", 404),
        (
            "POST /v1/health HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
            405,
        ),
        ("HEAD /v1/health?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", 200),
    ];
    let mut raw = String::new();
    let mut statuses = Vec::new();
    for i in 0..n {
        let (req, status) = kinds[i % kinds.len()];
        raw.push_str(req);
        statuses.push(status);
    }
    (raw, statuses)
}

fn run_split(raw: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut server = api_server();
    let mut conn = server.open(0);
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(core::iter::once(&raw.len())) {
        server.on_receive(&mut conn, &raw[start..cut], 7);
        start = cut;
        out.extend_from_slice(conn.output());
        conn.consume_output(conn.output().len());
    }
    assert_eq!(server.poll(&mut conn, 7), ConnState::Open);
    out
}

#[test]
fn pipelined_two_and_ten_requests_split_at_every_byte_boundary() {
    for n in [2, 10] {
        let (raw, statuses) = pipeline(n);
        let whole = run_split(raw.as_bytes(), &[]);
        let parsed = parse_responses(&whole).unwrap();
        assert_eq!(
            parsed.iter().map(|p| p.status).collect::<Vec<_>>(),
            statuses
        );
        for cut in 1..raw.len() {
            assert_eq!(run_split(raw.as_bytes(), &[cut]), whole, "n={n} cut={cut}");
        }
    }
}

#[test]
fn byte_at_a_time_delivery() {
    let (raw, statuses) = pipeline(10);
    let cuts: Vec<usize> = (1..raw.len()).collect();
    let out = run_split(raw.as_bytes(), &cuts);
    let parsed = parse_responses(&out).unwrap();
    assert_eq!(
        parsed.iter().map(|p| p.status).collect::<Vec<_>>(),
        statuses
    );
    assert_eq!(out, run_split(raw.as_bytes(), &[]));
}

#[test]
fn pipelined_backlog_over_the_limit_is_503() {
    let limits = Limits {
        max_pipelined: 3,
        ..Limits::default()
    };
    let mut server = Server::new(Api::new(0), limits);
    let mut conn = server.open(0);
    let raw = HEALTH.repeat(6);
    server.on_receive(&mut conn, raw.as_bytes(), 1);
    assert_eq!(conn.backlog(), 4);
    let r = parse_responses(conn.output()).unwrap();
    assert_eq!(
        r.iter().map(|p| p.status).collect::<Vec<_>>(),
        [200, 200, 200, 503]
    );
    assert_eq!(r[3].code(), "unavailable");
    assert!(r[3].closes());
    assert_eq!(server.poll(&mut conn, 1), ConnState::CloseAfterFlush);

    // When the transport drains output between reads, the same requests are all served.
    let mut conn = server.open(0);
    let (r, state) = exchange(&mut server, &mut conn, &[HEALTH.repeat(3).as_bytes(); 2], 1);
    assert_eq!(r.len(), 6);
    assert_eq!(state, ConnState::Open);
}

#[test]
fn partial_consume_tracks_backlog() {
    let mut server = api_server();
    let mut conn = server.open(0);
    server.on_receive(&mut conn, HEALTH.repeat(2).as_bytes(), 1);
    assert_eq!(conn.backlog(), 2);
    let first_len = {
        let out = conn.output();
        out.windows(9)
            .skip(1)
            .position(|w| w == b"HTTP/1.1 ")
            .unwrap()
            + 1
    };
    conn.consume_output(first_len - 1);
    assert_eq!(conn.backlog(), 2);
    conn.consume_output(1);
    assert_eq!(conn.backlog(), 1);
    conn.consume_output(usize::MAX);
    assert_eq!(conn.backlog(), 0);
    assert!(conn.output().is_empty());
}

#[test]
fn incomplete_head_times_out_with_408() {
    let mut server = api_server();
    let mut conn = server.open(0);
    server.on_receive(&mut conn, b"GET /v1/health HTTP/1.1\r\n", 1_000);
    assert_eq!(server.poll(&mut conn, 10_999), ConnState::Open);
    assert!(conn.output().is_empty());
    assert_eq!(server.poll(&mut conn, 11_000), ConnState::CloseAfterFlush);
    let r = parse_responses(conn.output()).unwrap();
    assert_eq!(r[0].status, 408);
    assert_eq!(r[0].code(), "request_timeout");
    assert!(r[0].closes());
}

#[test]
fn trickled_head_times_out_from_its_first_byte() {
    let limits = Limits {
        head_timeout_ms: 5_000,
        ..Limits::default()
    };
    let mut server = Server::new(Api::new(0), limits);
    let mut conn = server.open(0);
    let raw = b"GET /v1/health HTTP/1.1\r\nHost: a\r\n";
    for (i, b) in raw.iter().enumerate() {
        let now = 1_000 * i as u64;
        server.on_receive(&mut conn, core::slice::from_ref(b), now);
        if now < 5_000 {
            assert_eq!(server.poll(&mut conn, now), ConnState::Open);
        }
    }
    assert_eq!(server.poll(&mut conn, 5_000), ConnState::CloseAfterFlush);
    assert_eq!(parse_responses(conn.output()).unwrap()[0].status, 408);
}

#[test]
fn stalled_body_times_out_with_408() {
    let mut server = Server::new(Echo::default(), Limits::default());
    let mut conn = server.open(0);
    let raw = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234";
    server.on_receive(&mut conn, raw, 0);
    assert_eq!(server.poll(&mut conn, 29_999), ConnState::Open);
    assert_eq!(server.poll(&mut conn, 30_000), ConnState::CloseAfterFlush);
    assert_eq!(parse_responses(conn.output()).unwrap()[0].status, 408);
}

#[test]
fn idle_connection_closes_silently() {
    let mut server = api_server();
    let mut conn = server.open(0);
    let (r, _) = exchange(&mut server, &mut conn, &[HEALTH.as_bytes()], 10_000);
    assert_eq!(r.len(), 1);
    assert_eq!(server.poll(&mut conn, 39_999), ConnState::Open);
    assert_eq!(server.poll(&mut conn, 40_000), ConnState::CloseAfterFlush);
    assert!(conn.output().is_empty());
}

#[test]
fn peer_that_never_reads_is_aborted() {
    let mut server = api_server();
    let mut conn = server.open(0);
    server.on_receive(&mut conn, HEALTH.as_bytes(), 0);
    assert!(!conn.output().is_empty());
    assert_eq!(server.poll(&mut conn, 29_000), ConnState::Open);
    conn.consume_output(10);
    assert_eq!(server.poll(&mut conn, 50_000), ConnState::Open);
    assert_eq!(server.poll(&mut conn, 80_000), ConnState::Abort);
}

#[test]
fn peer_close_answers_complete_requests_then_closes() {
    let mut server = api_server();
    let mut conn = server.open(0);
    let raw = alloc::format!("{HEALTH}GET /v1/hea");
    server.on_receive(&mut conn, raw.as_bytes(), 1);
    conn.peer_closed(2);
    assert_eq!(server.poll(&mut conn, 2), ConnState::CloseAfterFlush);
    let r = parse_responses(conn.output()).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 200);
}

#[test]
fn input_after_close_is_ignored() {
    let mut server = api_server();
    let mut conn = server.open(0);
    server.on_receive(&mut conn, b"BAD\r\n\r\n", 1);
    let len = conn.output().len();
    server.on_receive(&mut conn, HEALTH.as_bytes(), 2);
    assert_eq!(conn.output().len(), len);
}

#[test]
fn expect_continue_gets_interim_response() {
    let mut server = Server::new(Echo::default(), Limits::default());
    let mut conn = server.open(0);
    let head =
        b"POST /upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
    server.on_receive(&mut conn, head, 1);
    assert_eq!(conn.output(), b"HTTP/1.1 100 Continue\r\n\r\n");
    server.on_receive(&mut conn, b"abc", 2);
    let r = parse_responses(conn.output()).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].body, b"abc");
}

#[test]
fn server_numbers_connections_and_requests() {
    let mut server = Server::new(Echo::default(), Limits::default());
    let mut a = server.open(0);
    let b = server.open(0);
    assert_ne!(a.id(), b.id());
    let raw = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx";
    exchange(&mut server, &mut a, &[raw, raw], 1);
    let ids: Vec<RequestId> = server.handler().bodies.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        [
            RequestId {
                connection: a.id(),
                sequence: 0
            },
            RequestId {
                connection: a.id(),
                sequence: 1
            }
        ]
    );
}

/// Echoes buffered bodies at any path; streams `/stream`; defers `/later` until released.
#[derive(Default)]
struct Echo {
    bodies: Vec<(RequestId, Vec<u8>)>,
    chunks: Vec<usize>,
    streamed: usize,
    released: bool,
    abandoned: Vec<RequestId>,
    unavailable: bool,
    /// `on_protocol_error` calls.
    protocol_errors: Vec<ProtocolReport>,
}

impl Handler for Echo {
    fn admit(&mut self, req: &Request<'_>, _now_ms: u64) -> Admission {
        match req.path() {
            "/stream" => Admission::Stream {
                max_body_bytes: 64 * 1024 * 1024,
            },
            "/secret" if req.header("authorization") != Some("Bearer t") => Admission::Reject(
                ApiError::new(ErrorCode::Unauthorized, "bearer token required").to_response(),
            ),
            _ => Admission::Buffer,
        }
    }

    fn handle(&mut self, req: &Request<'_>, body: &[u8], _now_ms: u64) -> Response {
        if self.unavailable {
            return ApiError::unavailable("busy").to_response();
        }
        if req.path() == "/stream" {
            return Response::text(StatusCode::OK, alloc::format!("{}", self.streamed));
        }
        self.bodies.push((req.id(), body.to_vec()));
        Response::new(StatusCode::OK)
            .with_header("X-Custom", "yes")
            .with_body(body.to_vec())
    }

    fn respond(&mut self, req: &Request<'_>, body: &[u8], now_ms: u64) -> Reply {
        if req.path() == "/later" {
            Reply::Later
        } else {
            Reply::Ready(self.handle(req, body, now_ms))
        }
    }

    fn body_chunk(
        &mut self,
        _req: &Request<'_>,
        chunk: &[u8],
        _now_ms: u64,
    ) -> Result<(), Response> {
        if chunk.contains(&b'!') {
            return Err(ApiError::bad_request("bang").to_response());
        }
        self.chunks.push(chunk.len());
        self.streamed += chunk.len();
        Ok(())
    }

    fn poll_later(&mut self, _req: &Request<'_>, _now_ms: u64) -> Option<Response> {
        self.released
            .then(|| Response::text(StatusCode::OK, "done"))
    }

    fn abandon(&mut self, req: &Request<'_>, _now_ms: u64) {
        self.abandoned.push(req.id());
    }

    fn on_protocol_error(&mut self, req: Option<&Request<'_>>, status: StatusCode, _now_ms: u64) {
        self.protocol_errors
            .push((req.map(|r| r.path().to_string()), status.as_u16()));
    }
}

#[test]
fn waiting_since_reports_only_connections_without_a_request_in_progress() {
    let mut server = Server::new(Echo::default(), Limits::default());
    let mut conn = server.open(100);
    assert_eq!(
        conn.waiting_since(),
        Some(100),
        "new: waiting since it opened"
    );
    server.on_receive(&mut conn, b"GET /later HTTP/1.1\r\n", 200);
    assert_eq!(server.poll(&mut conn, 300), ConnState::Open);
    assert_eq!(
        conn.waiting_since(),
        Some(200),
        "partial head: since its first byte"
    );
    server.on_receive(&mut conn, b"Host: a\r\n\r\n", 400);
    assert_eq!(server.poll(&mut conn, 400), ConnState::Open);
    assert_eq!(
        conn.waiting_since(),
        None,
        "a deferred reply (long poll) is busy"
    );
    server.handler_mut().released = true;
    assert_eq!(server.poll(&mut conn, 500), ConnState::Open);
    assert!(!conn.output().is_empty());
    assert_eq!(conn.waiting_since(), None, "a response is being sent");
    conn.consume_output(usize::MAX);
    server.on_receive(
        &mut conn,
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab",
        600,
    );
    assert_eq!(server.poll(&mut conn, 600), ConnState::Open);
    assert_eq!(conn.waiting_since(), None, "a body is being read");
    server.on_receive(&mut conn, b"cd", 700);
    assert_eq!(server.poll(&mut conn, 700), ConnState::Open);
    conn.consume_output(usize::MAX);
    assert_eq!(conn.waiting_since(), Some(700), "idle between requests");
}

/// An `on_protocol_error` report: (path of the parsed head, status).
type ProtocolReport = (Option<String>, u16);

/// (what, limits, input chunks, poll time, response statuses, expected reports).
type ProtocolCase<'a> = (
    &'a str,
    Limits,
    Vec<&'a [u8]>,
    u64,
    Vec<u16>,
    Vec<ProtocolReport>,
);

/// Runs `chunks` (at 0 ms, then a poll at `poll_ms`) through a fresh `Echo` server with
/// `limits`; returns the response statuses and the handler's protocol-error reports.
fn protocol_run(limits: Limits, chunks: &[&[u8]], poll_ms: u64) -> (Vec<u16>, Vec<ProtocolReport>) {
    let mut server = Server::new(Echo::default(), limits);
    let mut conn = server.open(0);
    for chunk in chunks {
        server.on_receive(&mut conn, chunk, 0);
    }
    server.poll(&mut conn, poll_ms);
    let statuses = parse_responses(conn.output())
        .unwrap()
        .iter()
        .map(|p| p.status)
        .collect();
    (statuses, server.handler().protocol_errors.clone())
}

#[test]
fn every_response_the_connection_writes_itself_is_reported_to_the_handler() {
    let path = |p: &str| Some(p.to_string());
    let big_head = alloc::format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(9000)
    );
    let cases: [ProtocolCase<'_>; 9] = [
        (
            "malformed request line",
            Limits::default(),
            vec![b"G@T / HTTP/1.1\r\n\r\n"],
            0,
            vec![400],
            vec![(None, 400)],
        ),
        (
            "chunked body",
            Limits::default(),
            vec![b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"],
            0,
            vec![411],
            vec![(None, 411)],
        ),
        (
            "complete head too large",
            Limits::default(),
            vec![big_head.as_bytes()],
            0,
            vec![431],
            vec![(path("/"), 431)],
        ),
        (
            "unfinished head too large",
            Limits::default(),
            vec![big_head.trim_end().as_bytes()],
            0,
            vec![431],
            vec![(None, 431)],
        ),
        (
            "buffered body over the limit",
            Limits::default(),
            vec![b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n"],
            0,
            vec![413],
            vec![(path("/x"), 413)],
        ),
        (
            "streamed body over the route limit",
            Limits::default(),
            vec![b"PUT /stream HTTP/1.1\r\nHost: a\r\nContent-Length: 67108865\r\n\r\n"],
            0,
            vec![413],
            vec![(path("/stream"), 413)],
        ),
        (
            "head timeout",
            Limits::default(),
            vec![b"GET / HTTP/1.1\r\nHo"],
            30_000,
            vec![408],
            vec![(None, 408)],
        ),
        (
            "body timeout",
            Limits::default(),
            vec![b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab"],
            30_000,
            vec![408],
            vec![(path("/x"), 408)],
        ),
        (
            "pipeline full",
            Limits {
                max_pipelined: 1,
                ..Limits::default()
            },
            vec![
                HEALTH.as_bytes(),
                b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n",
            ],
            0,
            vec![200, 503],
            vec![(path("/second"), 503)],
        ),
    ];
    for (what, limits, chunks, poll_ms, statuses, reports) in cases {
        let (got_statuses, got_reports) = protocol_run(limits, &chunks, poll_ms);
        assert_eq!(got_statuses, statuses, "{what}");
        assert_eq!(got_reports, reports, "{what}");
    }
}

#[test]
fn handler_answers_are_not_reported_as_protocol_errors() {
    let (statuses, reports) = protocol_run(
        Limits::default(),
        &[
            b"POST /secret HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nz",
            HEALTH.as_bytes(),
            b"PUT /stream HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nab!",
        ],
        1,
    );
    assert_eq!(statuses, [401, 200, 400]);
    assert!(reports.is_empty(), "{reports:?}");
}

#[test]
fn handler_can_answer_503_and_custom_headers() {
    let mut server = Server::new(Echo::default(), Limits::default());
    let mut conn = server.open(0);
    let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
    let (r, _) = exchange(&mut server, &mut conn, &[raw], 1);
    assert_eq!(r[0].header("x-custom"), Some("yes"));
    server.handler_mut().unavailable = true;
    let (r, state) = exchange(&mut server, &mut conn, &[raw], 2);
    assert_eq!(r[0].status, 503);
    assert_eq!(r[0].code(), "unavailable");
    assert_eq!(state, ConnState::Open);
}

#[test]
fn streamed_body_is_delivered_in_pieces_never_buffered_whole() {
    let mut server = Server::new(Echo::default(), Limits::default());
    let mut conn = server.open(0);
    let total = 3 * 1024 * 1024; // over the buffered limit
    let head = alloc::format!("PUT /stream HTTP/1.1\r\nHost: a\r\nContent-Length: {total}\r\n\r\n");
    server.on_receive(&mut conn, head.as_bytes(), 0);
    let piece = vec![b'x'; 64 * 1024];
    for _ in 0..total / piece.len() {
        server.on_receive(&mut conn, &piece, 1);
        assert!(conn.input.capacity() <= 2 * piece.len() + head.len());
    }
    let (r, state) = exchange(&mut server, &mut conn, &[HEALTH.as_bytes()], 2);
    assert_eq!(r[0].status, 200);
    assert_eq!(r[0].body, alloc::format!("{total}").as_bytes());
    assert_eq!(r[1].status, 200, "pipelined request after the upload");
    assert_eq!(state, ConnState::Open);
    assert_eq!(server.handler().chunks.len(), total / piece.len());
}

#[test]
fn streamed_body_error_answers_at_once_and_closes() {
    let mut server = Server::new(Echo::default(), Limits::default());
    let mut conn = server.open(0);
    let raw = b"PUT /stream HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nab!";
    let (r, state) = exchange(&mut server, &mut conn, &[raw], 0);
    assert_eq!(r[0].status, 400);
    assert!(r[0].closes());
    assert_eq!(state, ConnState::CloseAfterFlush);
}

#[test]
fn streamed_body_over_route_limit_is_413() {
    let mut server = Server::new(Echo::default(), Limits::default());
    let mut conn = server.open(0);
    let raw = b"PUT /stream HTTP/1.1\r\nHost: a\r\nContent-Length: 67108865\r\n\r\n";
    let (r, _) = exchange(&mut server, &mut conn, &[raw], 0);
    assert_eq!(r[0].status, 413);
}

#[test]
fn timed_out_stream_is_abandoned() {
    let mut server = Server::new(Echo::default(), Limits::default());
    let mut conn = server.open(0);
    let raw = b"PUT /stream HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nab";
    server.on_receive(&mut conn, raw, 0);
    assert_eq!(server.poll(&mut conn, 30_000), ConnState::CloseAfterFlush);
    assert_eq!(server.handler().abandoned.len(), 1);
}

#[test]
fn rejected_request_skips_small_body_and_keeps_alive() {
    let mut server = Server::new(Echo::default(), Limits::default());
    let mut conn = server.open(0);
    let raw = b"POST /secret HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nGET POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nz";
    let (r, state) = exchange(&mut server, &mut conn, &[raw], 0);
    assert_eq!(r.iter().map(|p| p.status).collect::<Vec<_>>(), [401, 200]);
    assert_eq!(r[0].code(), "unauthorized");
    assert_eq!(r[1].body, b"z");
    assert_eq!(state, ConnState::Open);
    let ok = b"POST /secret HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\nContent-Length: 1\r\n\r\ny";
    let (r, _) = exchange(&mut server, &mut conn, &[ok], 0);
    assert_eq!(r[0].status, 200);
}

#[test]
fn deferred_response_completes_later_in_order() {
    let mut server = Server::new(Echo::default(), Limits::default());
    let mut conn = server.open(0);
    let later = b"GET /later HTTP/1.1\r\nHost: a\r\n\r\n";
    let next = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nn";
    server.on_receive(&mut conn, &[&later[..], &next[..]].concat(), 0);
    assert!(conn.output().is_empty());
    // Deferred requests are exempt from the idle timeout.
    assert_eq!(server.poll(&mut conn, 100_000), ConnState::Open);
    assert!(
        server.handler().bodies.is_empty(),
        "pipelined request must wait"
    );
    server.handler_mut().released = true;
    assert_eq!(server.poll(&mut conn, 100_001), ConnState::Open);
    let r = parse_responses(conn.output()).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].body, b"done");
    assert_eq!(r[1].body, b"n");
}

#[test]
fn disconnect_abandons_deferred_request() {
    let mut server = Server::new(Echo::default(), Limits::default());
    let mut conn = server.open(0);
    server.on_receive(&mut conn, b"GET /later HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    server.disconnect(&mut conn, 1);
    assert_eq!(server.handler().abandoned.len(), 1);
    assert_eq!(server.poll(&mut conn, 2), ConnState::Abort);
}
