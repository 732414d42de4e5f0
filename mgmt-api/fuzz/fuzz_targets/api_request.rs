//! Fuzzes the whole management API over a live host (the software TDX module): arbitrary
//! bytes, cut into chunks and spread over time as the input's first two bytes say, go
//! through one long-lived `Server<Api>` whose token is `fuzz`, so authenticated requests
//! reach every handler (uploads, TD creation with workloads, lifecycle, events, metrics).
//! It must never panic, never answer 500, and everything it writes must be well-formed
//! HTTP/1.1 with `{"code","message"}` JSON error bodies.
//!
//! Run it a million times (from `mgmt-api/fuzz`, nightly toolchain):
//!
//! ```text
//! mkdir -p corpus/api_request && cp seeds/api-* corpus/api_request/
//! cargo +nightly fuzz run api_request corpus/api_request -- -runs=1000000
//! ```
//!
//! The host persists across inputs (building it per input would dominate the run), so state
//! (TDs, images) accumulates as an operator's would; `Api::step` runs between chunks.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use mgmt_api::{Api, ConnState, Server};
use mgmt_api_fuzz::{ResponseRules, check_responses};

thread_local! {
    static SERVER: RefCell<Server<Api>> = RefCell::new(server());
}

fn server() -> Server<Api> {
    let (api, limits) = mgmt_api_fuzz::fuzz_api();
    Server::new(api, limits)
}

fuzz_target!(|input: &[u8]| {
    let [chunk_ctl, time_ctl, data @ ..] = input else {
        return;
    };
    SERVER.with(|cell| {
        let mut server = cell.borrow_mut();
        let mut now = 0u64;
        let mut conn = server.open(now);
        let mut out = Vec::new();
        let mut rest = data;
        let mut step = 0usize;
        while !rest.is_empty() {
            let size = 1 + (usize::from(*chunk_ctl).wrapping_mul(step + 7) % 256);
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            rest = tail;
            server.on_receive(&mut conn, chunk, now);
            out.extend_from_slice(conn.output());
            conn.consume_output(conn.output().len());
            now += u64::from(*time_ctl) * 100;
            server.handler_mut().step(now);
            if server.poll(&mut conn, now) != ConnState::Open {
                break;
            }
            step += 1;
        }
        conn.peer_closed(now);
        let _ = server.poll(&mut conn, now + 60_000);
        out.extend_from_slice(conn.output());
        server.disconnect(&mut conn, now + 60_000);
        assert_eq!(server.handler().in_flight(), 0, "request state left behind");
        check_responses(
            &out,
            ResponseRules {
                bare_204: true,
                forbid_500: true,
            },
        );
    });
});
