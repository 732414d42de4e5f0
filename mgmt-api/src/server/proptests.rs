//! Property tests: arbitrary and mutated input in arbitrary chunkings never panics, always
//! yields well-formed responses (JSON `{"code","message"}` bodies on errors), and valid
//! pipelines are answered completely and in order, independently of chunking.

use alloc::string::String;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::tests::{api_server, parse_responses};
use super::*;

/// Valid requests and the status each must get from [`crate::Api`].
const VALID: &[(&str, u16)] = &[
    ("GET /v1/health HTTP/1.1\r\nHost: a\r\n\r\n", 200),
    (
        "GET /v1/health?offset=3 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
        200,
    ),
    ("HEAD /v1/health HTTP/1.1\r\nHost: a\r\n\r\n", 200),
    ("GET /v1/tds/7 HTTP/1.1\r\nHost: a\r\n\r\n", 401),
    ("GET /v1/nothing-here HTTP/1.1\r\nHost: a\r\n\r\n", 404),
    (
        "POST /v1/health HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody",
        405,
    ),
    ("DELETE /v1/health HTTP/1.1\r\nHost: a\r\n\r\n", 405),
    ("GET /v1/%68ealth HTTP/1.1\r\nHost: a\r\n\r\n", 200),
    ("GET /v1/%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("GET http://a/v1/health HTTP/1.1\r\nHost: a\r\n\r\n", 200),
    (
        "GET /v1/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        200,
    ),
];

/// Feeds `data` cut at `cuts` (sorted, deduplicated, in range) at a fixed time (so the
/// health body is comparable across chunkings), polling after each chunk; returns all
/// output bytes and the final state. Panics propagate.
fn run_chunked(data: &[u8], cuts: &[usize], consume_each: bool) -> (Vec<u8>, ConnState) {
    let mut server = api_server();
    let mut conn = server.open(0);
    let mut out = Vec::new();
    let mut start = 0;
    let now = 1;
    for &cut in cuts.iter().chain(core::iter::once(&data.len())) {
        let cut = cut.clamp(start, data.len());
        server.on_receive(&mut conn, &data[start..cut], now);
        start = cut;
        if consume_each {
            out.extend_from_slice(conn.output());
            conn.consume_output(conn.output().len());
        }
        if server.poll(&mut conn, now) != ConnState::Open {
            break;
        }
    }
    let state = server.poll(&mut conn, now);
    out.extend_from_slice(conn.output());
    conn.consume_output(conn.output().len());
    (out, state)
}

fn cuts_for(len: usize, raw: Vec<usize>) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.into_iter().map(|c| c % (len + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// Checks well-formedness and that a closing response ends the stream.
fn check_output(out: &[u8], state: ConnState) -> Result<Vec<super::tests::Parsed>, TestCaseError> {
    let parsed = parse_responses(out).map_err(|e| {
        TestCaseError::fail(alloc::format!("{e}: {:?}", String::from_utf8_lossy(out)))
    })?;
    if let Some(pos) = parsed.iter().position(super::tests::Parsed::closes) {
        prop_assert_eq!(pos, parsed.len() - 1, "responses after Connection: close");
        prop_assert_ne!(state, ConnState::Open);
    }
    Ok(parsed)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn mutate(mut data: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = data.len();
        match *m {
            Mutation::Flip(i, x) if len > 0 => data[i % len] ^= x | 1,
            Mutation::Insert(i, b) => data.insert(i % (len + 1), b),
            Mutation::Delete(i) if len > 0 => {
                data.remove(i % len);
            }
            _ => {}
        }
    }
    data
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (
            any::<usize>(),
            prop_oneof![
                Just(b'\r'),
                Just(b'\n'),
                Just(b' '),
                Just(b':'),
                any::<u8>()
            ]
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
    ]
}

fn pipeline_of(indices: &[usize]) -> (Vec<u8>, Vec<u16>) {
    let mut raw = Vec::new();
    let mut statuses = Vec::new();
    for &i in indices {
        let (req, status) = VALID[i % VALID.len()];
        raw.extend_from_slice(req.as_bytes());
        statuses.push(status);
    }
    (raw, statuses)
}

proptest! {
    #[test]
    fn random_bytes_never_panic_and_answers_are_well_formed(
        data in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        consume_each in any::<bool>(),
    ) {
        let cuts = cuts_for(data.len(), cuts);
        let (out, state) = run_chunked(&data, &cuts, consume_each);
        let parsed = check_output(&out, state)?;
        prop_assert!(parsed.len() <= 1, "random bytes form at most one framing error");
    }

    #[test]
    fn mutated_valid_requests_never_panic_and_answers_are_well_formed(
        indices in prop::collection::vec(any::<usize>(), 1..6),
        mutations in prop::collection::vec(mutation(), 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
        consume_each in any::<bool>(),
    ) {
        let (raw, _) = pipeline_of(&indices);
        let data = mutate(raw, &mutations);
        let cuts = cuts_for(data.len(), cuts);
        let (out, state) = run_chunked(&data, &cuts, consume_each);
        check_output(&out, state)?;
        // Chunking must not change the answer.
        let (whole, whole_state) = run_chunked(&data, &[], consume_each);
        prop_assert_eq!(&out, &whole);
        prop_assert_eq!(state, whole_state);
    }

    #[test]
    fn pipelined_valid_requests_are_all_answered_in_order(
        indices in prop::collection::vec(any::<usize>(), 1..12),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let (raw, statuses) = pipeline_of(&indices);
        let cuts = cuts_for(raw.len(), cuts);
        let (out, state) = run_chunked(&raw, &cuts, true);
        let parsed = check_output(&out, state)?;
        let got: Vec<u16> = parsed.iter().map(|p| p.status).collect();
        prop_assert_eq!(got, statuses);
        prop_assert_eq!(state, ConnState::Open);
    }
}
