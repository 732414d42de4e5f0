//! The sans-IO HTTP/1.1 connection state machine and the [`Server`] that runs requests
//! through a [`Handler`].
//!
//! A [`Connection`] owns one TCP connection's buffers and timers; it never touches a socket
//! or a clock. The transport hands it received bytes ([`Server::on_receive`]), sends what
//! [`Connection::output`] holds and reports it with [`Connection::consume_output`], and
//! calls [`Server::poll`] regularly (timers, deferred responses), acting on the
//! [`ConnState`] it returns.
//!
//! Per connection, requests are handled strictly in order: a request whose response is
//! deferred ([`Reply::Later`]) holds back the requests pipelined behind it.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::vec::Vec;
use core::cell::Cell;

use crate::error::{ApiError, ErrorCode};
use crate::request::{HeadParse, Method, Request, RequestHead, RequestId, parse_head};
use crate::response::{Framing, Response, StatusCode, write_response};

/// Per-connection limits. Every violation is answered with a JSON [`ApiError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line + header fields + blank line): 431 beyond.
    pub max_header_bytes: usize,
    /// Most header fields in one request: 431 beyond.
    pub max_headers: usize,
    /// Largest body a buffered route accepts: 413 beyond, answered from `Content-Length`
    /// before any of the body is read. Streaming routes set their own limit.
    pub max_body_bytes: u64,
    /// A connection with nothing in flight and no bytes received for this long is closed
    /// silently; a request (head or body) that stops receiving bytes for this long is
    /// answered 408; output the peer does not read for this long aborts the connection.
    pub idle_timeout_ms: u64,
    /// A request head must be complete within this long of its first byte (408), so a
    /// client cannot hold a connection by trickling header bytes.
    pub head_timeout_ms: u64,
    /// Most responses waiting to be sent on one connection; a request arriving beyond
    /// this is answered 503 and the connection closes.
    pub max_pipelined: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 8 * 1024,
            max_headers: 64,
            max_body_bytes: 1024 * 1024,
            idle_timeout_ms: 30_000,
            head_timeout_ms: 10_000,
            max_pipelined: 16,
        }
    }
}

/// What the transport should do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Keep reading and sending.
    Open,
    /// Send what [`Connection::output`] holds, then close. No more input is processed.
    CloseAfterFlush,
    /// Reset the connection now; pending output is abandoned.
    Abort,
}

/// How the connection takes a request's body, decided by [`Handler::admit`] once the head
/// has been parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Buffer the whole body (at most [`Limits::max_body_bytes`]) and pass it to
    /// [`Handler::respond`].
    Buffer,
    /// Pass the body to [`Handler::body_chunk`] piece by piece as it arrives (never
    /// buffered whole), then call [`Handler::body_end`]. For uploads up to `max_body_bytes`.
    Stream {
        /// Largest body accepted for this request: 413 beyond.
        max_body_bytes: u64,
    },
    /// Answer now without reading the body (auth failure, unknown route...). A small body
    /// is read and discarded to keep the connection; a large one closes it.
    Reject(Response),
}

/// A handler's answer to a complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The response, sent now.
    Ready(Response),
    /// The response comes later (long poll, job completion): the server asks
    /// [`Handler::poll_later`] on every drive of the connection until it has one. Requests
    /// pipelined behind this one wait.
    Later,
}

/// Application logic behind the connection. Only [`Handler::handle`] is required; the
/// other methods have defaults that give plain buffered request/response behaviour.
///
/// A handler is shared by all connections of a [`Server`]; per-request state (a streamed
/// upload, a pending long poll) is keyed by [`Request::id`].
pub trait Handler {
    /// Answers a complete request whose body was buffered.
    fn handle(&mut self, req: &Request<'_>, body: &[u8], now_ms: u64) -> Response;

    /// Decides, from the head alone, how the body is taken (and can refuse it, e.g. for a
    /// missing bearer token, before any body byte is read). Default: buffer it.
    fn admit(&mut self, req: &Request<'_>, now_ms: u64) -> Admission {
        let _ = (req, now_ms);
        Admission::Buffer
    }

    /// Answers a complete buffered request, possibly later. Default: `Ready(handle(..))`.
    fn respond(&mut self, req: &Request<'_>, body: &[u8], now_ms: u64) -> Reply {
        Reply::Ready(self.handle(req, body, now_ms))
    }

    /// Takes the next piece of a streamed body. An `Err` response is sent at once; if body
    /// bytes remain unread the connection then closes.
    fn body_chunk(&mut self, req: &Request<'_>, chunk: &[u8], now_ms: u64) -> Result<(), Response> {
        let _ = (req, chunk, now_ms);
        Err(ApiError::internal("this route does not take a streamed body").to_response())
    }

    /// The streamed body is complete: answer the request. Default: `handle` with no body.
    fn body_end(&mut self, req: &Request<'_>, now_ms: u64) -> Reply {
        Reply::Ready(self.handle(req, &[], now_ms))
    }

    /// Asks for the response of a request answered [`Reply::Later`]; `None` while it is
    /// not ready. Long-poll handlers enforce their own deadline here.
    fn poll_later(&mut self, req: &Request<'_>, now_ms: u64) -> Option<Response> {
        let _ = (req, now_ms);
        Some(ApiError::internal("handler deferred a response it cannot produce").to_response())
    }

    /// A streamed body or deferred response was abandoned (timeout, peer gone): drop its
    /// state. Default: nothing.
    fn abandon(&mut self, req: &Request<'_>, now_ms: u64) {
        let _ = (req, now_ms);
    }

    /// Whether `req` may be answered on a public-only connection
    /// ([`Server::open_public_only`]): a route that needs no credentials. Default: none.
    fn is_public(&mut self, req: &Request<'_>) -> bool {
        let _ = req;
        false
    }

    /// The connection layer answered on its own, without the handler producing the
    /// response: an unparsable request or unsupported framing (400, 411, 501, 505...), a
    /// head too large (431), a body over the admitted limit (413), a request or body that
    /// timed out (408), or too many responses waiting (503). Called once per such response,
    /// after it was written; the connection then closes. `req` is the request whose head
    /// had been parsed, `None` when there was none. For metrics; default: nothing.
    fn on_protocol_error(&mut self, req: Option<&Request<'_>>, status: StatusCode, now_ms: u64) {
        let _ = (req, status, now_ms);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyMode {
    Buffer,
    Stream,
    Discard,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Reading a body of which `remaining` bytes have not been taken yet.
    Body {
        head: RequestHead,
        remaining: u64,
        mode: BodyMode,
    },
    /// The handler deferred the response.
    Waiting { head: RequestHead },
}

/// One HTTP/1.1 connection's buffers, parse state and timers (no I/O).
#[derive(Debug)]
pub struct Connection {
    id: u64,
    limits: Limits,
    input: Vec<u8>,
    in_pos: usize,
    output: Vec<u8>,
    out_pos: usize,
    written_total: u64,
    consumed_total: u64,
    /// `written_total` at the end of each response not yet completely consumed.
    response_ends: VecDeque<u64>,
    phase: Phase,
    next_sequence: u64,
    closing: bool,
    aborted: bool,
    peer_closed: bool,
    tx_progressed: bool,
    last_rx_ms: u64,
    last_activity_ms: u64,
    last_tx_progress_ms: u64,
    head_started_ms: Option<u64>,
    /// Only public routes are answered (see [`Server::open_public_only`]).
    public_only: bool,
}

impl Connection {
    /// A fresh connection opened at `now_ms` (id 0; [`Server::open`] numbers connections).
    pub fn new(limits: Limits, now_ms: u64) -> Self {
        Self {
            id: 0,
            limits,
            input: Vec::new(),
            in_pos: 0,
            output: Vec::new(),
            out_pos: 0,
            written_total: 0,
            consumed_total: 0,
            response_ends: VecDeque::new(),
            phase: Phase::Head,
            next_sequence: 0,
            closing: false,
            aborted: false,
            peer_closed: false,
            tx_progressed: false,
            last_rx_ms: now_ms,
            last_activity_ms: now_ms,
            last_tx_progress_ms: now_ms,
            head_started_ms: None,
            public_only: false,
        }
    }

    /// Bytes received from the peer. Buffered until the [`Server`] processes them
    /// ([`Server::on_receive`] does both); ignored once the connection is closing.
    pub fn receive(&mut self, data: &[u8], now_ms: u64) {
        if self.closing || self.aborted || data.is_empty() {
            return;
        }
        if self.in_pos == self.input.len() {
            self.input.clear();
            self.in_pos = 0;
        }
        self.input.extend_from_slice(data);
        self.last_rx_ms = now_ms;
        self.last_activity_ms = now_ms;
    }

    /// Bytes waiting to be sent.
    pub fn output(&self) -> &[u8] {
        self.output.get(self.out_pos..).unwrap_or(&[])
    }

    /// `n` bytes of output were sent (clamped to what is waiting).
    pub fn consume_output(&mut self, n: usize) {
        let n = n.min(self.output.len() - self.out_pos);
        if n == 0 {
            return;
        }
        self.out_pos += n;
        self.consumed_total += n as u64;
        self.tx_progressed = true;
        while self
            .response_ends
            .front()
            .is_some_and(|&end| end <= self.consumed_total)
        {
            self.response_ends.pop_front();
        }
        if self.out_pos == self.output.len() {
            self.output.clear();
            self.out_pos = 0;
        } else if self.out_pos >= 4096 && self.out_pos * 2 >= self.output.len() {
            self.output.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// The peer half-closed: complete requests already received are still answered, a
    /// partial one is dropped, then the connection closes.
    pub fn peer_closed(&mut self, now_ms: u64) {
        self.peer_closed = true;
        self.last_activity_ms = now_ms;
    }

    /// The connection's id (unique per [`Server`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// What the transport should do now (also returned by [`Server::poll`]).
    pub fn state(&self) -> ConnState {
        if self.aborted {
            ConnState::Abort
        } else if self.closing {
            ConnState::CloseAfterFlush
        } else {
            ConnState::Open
        }
    }

    /// Since when the connection has only been waiting for a request: `Some` while no
    /// request is in progress and nothing is left to send (from the first byte of a partial
    /// head, or from the last activity when nothing was received), `None` while a request
    /// is being read, handled (a long poll) or answered, or the connection is closing.
    pub fn waiting_since(&self) -> Option<u64> {
        let idle = matches!(self.phase, Phase::Head)
            && self.output().is_empty()
            && !self.closing
            && !self.aborted;
        idle.then(|| self.head_started_ms.unwrap_or(self.last_activity_ms))
    }

    /// Responses written but not yet completely sent.
    pub fn backlog(&self) -> usize {
        self.response_ends.len()
    }

    /// The limits this connection enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn avail(&self) -> &[u8] {
        self.input.get(self.in_pos..).unwrap_or(&[])
    }

    fn compact_input(&mut self) {
        if self.in_pos == self.input.len() {
            self.input.clear();
            self.in_pos = 0;
        } else if self.in_pos > 0 {
            self.input.drain(..self.in_pos);
            self.in_pos = 0;
        }
    }

    fn append_output(&mut self, now_ms: u64, write: impl FnOnce(&mut Vec<u8>)) {
        if self.output().is_empty() {
            self.last_tx_progress_ms = now_ms;
        }
        let before = self.output.len();
        write(&mut self.output);
        self.written_total += (self.output.len() - before) as u64;
        self.last_activity_ms = now_ms;
    }

    /// Writes a final response; `close` marks the connection closing after it.
    fn write(&mut self, resp: &Response, head: Option<&RequestHead>, close: bool, now_ms: u64) {
        let framing = Framing {
            head_request: head.is_some_and(|h| h.method == Method::Head),
            close,
            keep_alive_token: !close && head.is_some_and(|h| h.keep_alive_token),
        };
        self.append_output(now_ms, |out| write_response(out, resp, framing));
        self.response_ends.push_back(self.written_total);
        if close {
            self.closing = true;
        }
    }

    /// Answers a framing error and closes.
    fn fail(&mut self, err: &ApiError, head: Option<&RequestHead>, now_ms: u64) {
        self.write(&err.to_response(), head, true, now_ms);
    }

    /// `100 Continue` for a client that waits for it before sending the body.
    fn write_continue(&mut self, now_ms: u64) {
        self.append_output(now_ms, |out| {
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        });
    }

    /// Most bytes buffered while a deferred response holds the pipeline.
    fn held_input_cap(&self) -> usize {
        let body = usize::try_from(self.limits.max_body_bytes).unwrap_or(usize::MAX);
        self.limits.max_header_bytes.saturating_add(body)
    }
}

/// Runs the connections of one listener through a [`Handler`].
pub struct Server<H: Handler> {
    handler: H,
    limits: Limits,
    next_connection_id: Cell<u64>,
}

impl<H: Handler> Server<H> {
    /// A server whose connections enforce `limits`.
    pub fn new(handler: H, limits: Limits) -> Self {
        Self {
            handler,
            limits,
            next_connection_id: Cell::new(1),
        }
    }

    /// A new connection, numbered, with the server's limits.
    pub fn open(&self, now_ms: u64) -> Connection {
        let id = self.next_connection_id.get();
        self.next_connection_id.set(id.wrapping_add(1));
        let mut conn = Connection::new(self.limits.clone(), now_ms);
        conn.id = id;
        conn
    }

    /// A new connection that is answered only on public routes (those the handler's
    /// [`Handler::is_public`] accepts, e.g. a plain-HTTP health port for load balancers);
    /// any other request is answered 404 `not_found` before the handler sees it.
    pub fn open_public_only(&self, now_ms: u64) -> Connection {
        let mut conn = self.open(now_ms);
        conn.public_only = true;
        conn
    }

    /// Feeds bytes and runs any complete requests through the handler, appending
    /// responses to the connection's output.
    pub fn on_receive(&mut self, conn: &mut Connection, data: &[u8], now_ms: u64) {
        conn.receive(data, now_ms);
        self.drive(conn, now_ms);
    }

    /// Processes buffered input and deferred responses, runs the timers (408, idle close,
    /// stalled output) and tells the transport what to do with the connection.
    pub fn poll(&mut self, conn: &mut Connection, now_ms: u64) -> ConnState {
        self.drive(conn, now_ms);
        self.run_timers(conn, now_ms);
        conn.state()
    }

    /// The transport lost the connection (reset, error): abandons in-flight work.
    pub fn disconnect(&mut self, conn: &mut Connection, now_ms: u64) {
        let phase = core::mem::replace(&mut conn.phase, Phase::Head);
        self.abandon(phase, now_ms);
        conn.aborted = true;
        conn.input.clear();
        conn.in_pos = 0;
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The handler, mutably (e.g. to complete deferred work from the main loop).
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// The limits new connections get.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn drive(&mut self, conn: &mut Connection, now_ms: u64) {
        if core::mem::take(&mut conn.tx_progressed) {
            conn.last_tx_progress_ms = now_ms;
            conn.last_activity_ms = now_ms;
        }
        while !conn.closing && !conn.aborted {
            let phase = core::mem::replace(&mut conn.phase, Phase::Head);
            let progressed = match phase {
                Phase::Head => self.step_head(conn, now_ms),
                Phase::Body {
                    head,
                    remaining,
                    mode,
                } => self.step_body(conn, head, remaining, mode, now_ms),
                Phase::Waiting { head } => self.step_waiting(conn, head, now_ms),
            };
            if !progressed {
                break;
            }
        }
        if conn.closing || conn.aborted {
            let phase = core::mem::replace(&mut conn.phase, Phase::Head);
            self.abandon(phase, now_ms);
            conn.input.clear();
            conn.in_pos = 0;
            return;
        }
        conn.compact_input();
        if conn.peer_closed {
            match conn.phase {
                Phase::Waiting { .. } => {}
                Phase::Head | Phase::Body { .. } => {
                    let phase = core::mem::replace(&mut conn.phase, Phase::Head);
                    self.abandon(phase, now_ms);
                    conn.closing = true;
                    conn.input.clear();
                }
            }
        }
    }

    /// Parses the next head; returns whether the connection progressed.
    fn step_head(&mut self, conn: &mut Connection, now_ms: u64) -> bool {
        if conn.avail().is_empty() {
            conn.head_started_ms = None;
            return false;
        }
        if conn.head_started_ms.is_none() {
            conn.head_started_ms = Some(conn.last_rx_ms);
        }
        let avail = conn.avail();
        let id = RequestId {
            connection: conn.id,
            sequence: conn.next_sequence,
        };
        let max_head = conn.limits.max_header_bytes;
        match parse_head(avail, &conn.limits, id) {
            HeadParse::Partial => {
                if avail.len() >= max_head {
                    self.protocol_error(conn, &head_too_large(max_head), None, now_ms);
                }
                false
            }
            HeadParse::Invalid(err) => {
                self.protocol_error(conn, &err, None, now_ms);
                false
            }
            HeadParse::Complete(head, len) => {
                if len > max_head {
                    self.protocol_error(conn, &head_too_large(max_head), Some(&head), now_ms);
                    return false;
                }
                conn.in_pos += len;
                conn.head_started_ms = None;
                conn.next_sequence += 1;
                if conn.backlog() >= conn.limits.max_pipelined {
                    let err = ApiError::unavailable(format!(
                        "more than {} responses waiting to be sent on this connection",
                        conn.limits.max_pipelined
                    ));
                    self.protocol_error(conn, &err, Some(&head), now_ms);
                    return false;
                }
                self.start_request(conn, head, now_ms);
                true
            }
        }
    }

    /// Answers `err` on behalf of the connection layer, closes, and tells the handler.
    fn protocol_error(
        &mut self,
        conn: &mut Connection,
        err: &ApiError,
        head: Option<&RequestHead>,
        now_ms: u64,
    ) {
        conn.fail(err, head, now_ms);
        let req = head.map(Request::new);
        self.handler
            .on_protocol_error(req.as_ref(), err.status, now_ms);
    }

    fn start_request(&mut self, conn: &mut Connection, head: RequestHead, now_ms: u64) {
        let admission = if conn.public_only && !self.handler.is_public(&Request::new(&head)) {
            Admission::Reject(
                ApiError::new(
                    ErrorCode::NotFound,
                    "this port serves only the public routes (GET /v1/health)",
                )
                .to_response(),
            )
        } else {
            self.handler.admit(&Request::new(&head), now_ms)
        };
        let len = head.content_length;
        let (max, mode) = match admission {
            Admission::Buffer => (conn.limits.max_body_bytes, BodyMode::Buffer),
            Admission::Stream { max_body_bytes } => (max_body_bytes, BodyMode::Stream),
            Admission::Reject(resp) => {
                // A client waiting for 100-continue may never send the body; one that sent
                // a large body would make us read it all: close in both cases.
                let close = !head.keep_alive
                    || (len > 0 && (len > conn.limits.max_body_bytes || head.expect_continue));
                conn.write(&resp, Some(&head), close, now_ms);
                if !close && len > 0 {
                    conn.phase = Phase::Body {
                        head,
                        remaining: len,
                        mode: BodyMode::Discard,
                    };
                }
                return;
            }
        };
        if len > max {
            let err = ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body of {len} bytes exceeds the limit of {max} bytes"),
            );
            self.protocol_error(conn, &err, Some(&head), now_ms);
            return;
        }
        if head.expect_continue && len > 0 {
            conn.write_continue(now_ms);
        }
        conn.phase = Phase::Body {
            head,
            remaining: len,
            mode,
        };
    }

    fn step_body(
        &mut self,
        conn: &mut Connection,
        head: RequestHead,
        mut remaining: u64,
        mode: BodyMode,
        now_ms: u64,
    ) -> bool {
        let avail = conn.avail();
        let take = usize::try_from(remaining).map_or(avail.len(), |r| r.min(avail.len()));
        match mode {
            BodyMode::Buffer => {
                let body = usize::try_from(remaining)
                    .ok()
                    .filter(|&len| len == take)
                    .and_then(|len| avail.get(..len));
                let Some(body) = body else {
                    conn.phase = Phase::Body {
                        head,
                        remaining,
                        mode,
                    };
                    return false;
                };
                let reply = self.handler.respond(&Request::new(&head), body, now_ms);
                conn.in_pos += take;
                self.deliver(conn, head, reply, now_ms);
                true
            }
            BodyMode::Stream => {
                if take > 0 {
                    let chunk = avail.get(..take).unwrap_or(&[]);
                    let result = self.handler.body_chunk(&Request::new(&head), chunk, now_ms);
                    conn.in_pos += take;
                    remaining -= take as u64;
                    if let Err(resp) = result {
                        conn.write(
                            &resp,
                            Some(&head),
                            !head.keep_alive || remaining > 0,
                            now_ms,
                        );
                        return true;
                    }
                }
                if remaining == 0 {
                    let reply = self.handler.body_end(&Request::new(&head), now_ms);
                    self.deliver(conn, head, reply, now_ms);
                    return true;
                }
                conn.phase = Phase::Body {
                    head,
                    remaining,
                    mode,
                };
                false
            }
            BodyMode::Discard => {
                conn.in_pos += take;
                remaining -= take as u64;
                if remaining == 0 {
                    return true;
                }
                conn.phase = Phase::Body {
                    head,
                    remaining,
                    mode,
                };
                false
            }
        }
    }

    fn step_waiting(&mut self, conn: &mut Connection, head: RequestHead, now_ms: u64) -> bool {
        if let Some(resp) = self.handler.poll_later(&Request::new(&head), now_ms) {
            conn.write(&resp, Some(&head), !head.keep_alive, now_ms);
            return true;
        }
        if conn.avail().len() > conn.held_input_cap() {
            // Pipelined input piles up behind a deferred response and cannot be answered
            // out of order: drop the connection.
            self.handler.abandon(&Request::new(&head), now_ms);
            conn.aborted = true;
            return false;
        }
        conn.phase = Phase::Waiting { head };
        false
    }

    fn deliver(&mut self, conn: &mut Connection, head: RequestHead, reply: Reply, now_ms: u64) {
        match reply {
            Reply::Ready(resp) => conn.write(&resp, Some(&head), !head.keep_alive, now_ms),
            Reply::Later => conn.phase = Phase::Waiting { head },
        }
    }

    fn abandon(&mut self, phase: Phase, now_ms: u64) {
        match phase {
            Phase::Body {
                head,
                mode: BodyMode::Stream,
                ..
            }
            | Phase::Waiting { head } => self.handler.abandon(&Request::new(&head), now_ms),
            Phase::Head | Phase::Body { .. } => {}
        }
    }

    fn run_timers(&mut self, conn: &mut Connection, now_ms: u64) {
        if conn.aborted {
            return;
        }
        let idle = conn.limits.idle_timeout_ms;
        let output_pending = !conn.output().is_empty();
        if output_pending && now_ms.saturating_sub(conn.last_tx_progress_ms) >= idle {
            // The peer does not read its responses.
            self.disconnect(conn, now_ms);
            return;
        }
        if conn.closing {
            return;
        }
        let since_rx = now_ms.saturating_sub(conn.last_rx_ms);
        match &conn.phase {
            Phase::Head if !conn.avail().is_empty() => {
                let started = conn.head_started_ms.unwrap_or(conn.last_rx_ms);
                if now_ms.saturating_sub(started) >= conn.limits.head_timeout_ms || since_rx >= idle
                {
                    let err = ApiError::new(
                        ErrorCode::RequestTimeout,
                        "request head not received in time",
                    );
                    self.protocol_error(conn, &err, None, now_ms);
                    conn.input.clear();
                    conn.in_pos = 0;
                }
            }
            Phase::Head => {
                if !output_pending && now_ms.saturating_sub(conn.last_activity_ms) >= idle {
                    conn.closing = true;
                }
            }
            Phase::Body { .. } if since_rx >= idle => {
                let phase = core::mem::replace(&mut conn.phase, Phase::Head);
                let err = ApiError::new(
                    ErrorCode::RequestTimeout,
                    "request body not received in time",
                );
                if let Phase::Body { head, .. } = &phase {
                    self.protocol_error(conn, &err, Some(head), now_ms);
                }
                self.abandon(phase, now_ms);
                conn.input.clear();
                conn.in_pos = 0;
            }
            Phase::Body { .. } | Phase::Waiting { .. } => {}
        }
    }
}

fn head_too_large(max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::HeadersTooLarge,
        format!("request head larger than {max} bytes"),
    )
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
pub(crate) mod tests;
