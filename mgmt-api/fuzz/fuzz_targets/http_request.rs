//! Fuzzes the management API's HTTP server: arbitrary bytes, cut into chunks and spread over
//! time as the input's first bytes say, go through `Server<Api>`; it must never panic and
//! everything it writes must be well-formed HTTP/1.1 with JSON error bodies.
//!
//! Run it a million times (from the `mgmt-api/fuzz` directory, nightly toolchain):
//!
//! ```text
//! cargo +nightly fuzz run http_request -- -runs=1000000
//! ```
//!
//! To start from valid requests, seed the corpus first:
//! `mkdir -p corpus/http_request && cp seeds/* corpus/http_request/`. An input's first byte
//! sets the chunk sizes, the second the time step; the rest is the byte stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mgmt_api::{Api, ConnState, Limits, Server};
use mgmt_api_fuzz::{ResponseRules, check_responses};

fuzz_target!(|input: &[u8]| {
    let [chunk_ctl, time_ctl, data @ ..] = input else {
        return;
    };
    // Chunk sizes 1..=64 cycling from the control byte; time steps 0..=255 * 500 ms (so 408
    // and idle timers fire on some inputs).
    let limits = Limits {
        max_header_bytes: 512,
        max_body_bytes: 256,
        max_pipelined: 4,
        ..Limits::default()
    };
    let mut server = Server::new(Api::new(0), limits);
    let mut conn = server.open(0);
    let mut out = Vec::new();
    let mut now = 0u64;
    let mut rest = data;
    let mut step = 0usize;
    while !rest.is_empty() {
        let size = 1 + (usize::from(*chunk_ctl).wrapping_mul(step + 7) % 64);
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        server.on_receive(&mut conn, chunk, now);
        // Send only part of the output sometimes, to exercise the backlog limit.
        let n = if step % 3 == 0 {
            conn.output().len() / 2
        } else {
            conn.output().len()
        };
        out.extend_from_slice(&conn.output()[..n]);
        conn.consume_output(n);
        now += u64::from(*time_ctl) * 500 / 8;
        if server.poll(&mut conn, now) != ConnState::Open {
            break;
        }
        step += 1;
    }
    conn.peer_closed(now);
    let _ = server.poll(&mut conn, now + 60_000);
    out.extend_from_slice(conn.output());
    check_responses(
        &out,
        ResponseRules {
            bare_204: false,
            forbid_500: false,
        },
    );
});
