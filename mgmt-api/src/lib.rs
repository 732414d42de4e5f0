//! Sans-IO HTTP/1.1 server core, router and REST handlers of the appliance's management API.
//!
//! # Sans-IO design
//! Nothing here performs I/O or reads a clock. A transport (the `net` crate's TCP server on
//! the appliance, plain byte vectors in tests) drives each connection:
//!
//! 1. [`Server::open`] when a TCP connection is accepted → a [`Connection`].
//! 2. [`Server::on_receive`] with every received segment: bytes are parsed (`httparse`)
//!    and each complete request is routed to the [`Handler`]; responses are appended, in
//!    request order, to [`Connection::output`].
//! 3. The transport sends [`Connection::output`] and reports what went out with
//!    [`Connection::consume_output`].
//! 4. [`Server::poll`] regularly, with the current time: it runs the timers (408, idle
//!    close, stalled peer) and deferred responses and returns a [`ConnState`]: keep going,
//!    close once the output is flushed, or abort. [`Connection::peer_closed`] on FIN.
//!
//! Time is passed in as `now_ms` (monotonic milliseconds) everywhere, so every timeout is
//! unit-testable and the state machine is deterministic: the output depends only on the
//! bytes and times fed in, not on how the bytes were split into segments.
//!
//! # HTTP subset
//! HTTP/1.0 and HTTP/1.1, persistent connections and pipelining, `Content-Length` bodies
//! only (`Transfer-Encoding` is refused with 411/501), `Expect: 100-continue`, HEAD for
//! every GET route. Limits are in [`Limits`]; every error is an [`ApiError`] with a
//! `{"code","message"}` JSON body. After a framing error the connection closes.
//!
//! # Extension points
//! [`Handler::admit`] sees each head before its body (bearer-token auth in [`auth`], 404/405 before reading a body,
//! choosing [`Admission::Stream`] for large uploads that must not be buffered);
//! [`Handler::body_chunk`]/[`Handler::body_end`] receive streamed bodies;
//! [`Reply::Later`] + [`Handler::poll_later`] complete long polls later;
//! [`Response`] carries any status, header fields and body (JSON or text).
//!
//! # The REST API
//! [`Api`] is the [`Handler`]: the route table [`api::ROUTES`], bearer-token auth
//! ([`auth`]), the endpoint functions ([`handlers`], including the one mapping of
//! `tdx_runtime::host::HostError` to statuses and codes), the JSON shapes ([`dto`], strict:
//! unknown members are refused with the JSON path in `field`), Prometheus exposition
//! ([`metrics`]) and the OpenAPI 3.1 document `mgmt-api/openapi.json`, served at
//! `GET /v1/openapi.json`. It drives a `tdx_runtime::host::Host` given with [`Api::with_host`];
//! the appliance main loop calls [`Api::step`] between network polls so long jobs (TD
//! builds, stops, teardowns) progress without blocking requests.
//!
//! # Tests and fuzzing
//! * `cargo test -p mgmt-api`: unit tests, in-process API tests over the software TDX
//!   module (they read `/usr/share/ovmf/OVMF.fd`, Debian package `ovmf`), OpenAPI
//!   consistency and response-schema checks, and property tests of the connection and of
//!   the whole API (200 cases each).
//! * A long property run: `PROPTEST_CASES=1000000 cargo test -p mgmt-api --release proptests`.
//! * cargo-fuzz (nightly), from `mgmt-api/fuzz`:
//!   `cargo +nightly fuzz run http_request -- -runs=1000000` (HTTP layer) and
//!   `cargo +nightly fuzz run api_request corpus/api_request -- -runs=1000000` (whole API
//!   over a live host; seed with `mkdir -p corpus/api_request && cp seeds/api-* corpus/api_request/`).
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod api;
pub mod auth;
pub mod dto;
pub mod error;
pub mod handlers;
pub mod metrics;
pub mod request;
pub mod response;
pub mod router;
pub mod server;
pub mod state;
pub mod uri;

pub use auth::{BearerToken, Role, TokenError, TokenSet, TokenSetError};
pub use error::{ApiError, ErrorCode};
pub use request::{Method, Request, RequestId, Version};
pub use response::{Response, StatusCode};
pub use router::{PathParams, RouteError, Router};
pub use server::{Admission, ConnState, Connection, Handler, Limits, Reply, Server};
pub use state::{Access, Api, ApiConfig, HostInfo, TlsInfo};
pub use uri::Query;
