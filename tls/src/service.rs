//! [`TlsService`]: a [`net::Service`] that speaks TLS to the client and plaintext to the
//! service inside it (the HTTP server).
//!
//! # Connection lifecycle
//! - [`open`](Service::open) creates a rustls `UnbufferedServerConnection`; the inner
//!   service does not see the connection yet.
//! - Received bytes are buffered and run through rustls (`process_tls_records`): handshake
//!   messages are answered; once the handshake completes (RFC 8446 §4.4.4, RFC 5246 §7.4.9)
//!   the inner service's [`open`](Service::open) is called, and from then on decrypted
//!   application data goes to its [`on_receive`](Service::on_receive).
//! - The inner service's output is encrypted into a bounded buffer (at most
//!   [`OUTGOING_HIGH_WATER`] bytes waiting before more is encrypted), topped up in
//!   [`poll`](Service::poll), after received data and in [`on_sent`](Service::on_sent); the
//!   TCP server sends it via [`output`](Service::output).
//! - When the inner service closes ([`ConnState::CloseAfterFlush`]), a `close_notify` alert
//!   (RFC 8446 §6.1) follows the last of its output, then the TCP connection closes.
//!   A `close_notify` from the client, or its TCP FIN, reaches the inner service as
//!   [`on_peer_closed`](Service::on_peer_closed).
//! - A TLS error (e.g. a ClientHello offering only TLS 1.1, plaintext HTTP, a record that does
//!   not decrypt) queues the fatal alert rustls produces (RFC 8446 §6.2); the connection
//!   closes once it is sent ([`ConnState::CloseAfterFlush`]). A handshake not complete within
//!   the handshake timeout, or a peer that floods more than [`MAX_INCOMING`] bytes rustls
//!   cannot consume, is aborted.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use net::{ConnState, Service};
use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};

/// Largest TLS record on the wire: 5-byte header + 2^14 + 2048 bytes (RFC 5246 §6.2.3; the
/// TLS 1.3 limit, 2^14 + 256, is smaller, RFC 8446 §5.2).
pub const MAX_RECORD_LEN: usize = 5 + 16_384 + 2_048;

/// Most received bytes buffered per connection: rustls consumes every complete record, so a
/// well-behaved peer never leaves more than one partial record; two records of room cover a
/// partial one plus the next chunk. A connection that exceeds it is aborted.
pub const MAX_INCOMING: usize = 2 * MAX_RECORD_LEN;

/// The inner service's output is encrypted only while fewer encrypted bytes than this wait
/// to be sent; each step encrypts at most [`ENCRYPT_CHUNK`] bytes, so the buffer stays below
/// 64 KiB (plus the handshake flight, a few KiB).
pub const OUTGOING_HIGH_WATER: usize = 44 * 1024;

/// Plaintext encrypted per step: one full TLS record (RFC 8446 §5.1).
pub const ENCRYPT_CHUNK: usize = 16 * 1024;

/// Bound on rustls state-machine steps per call (each step makes progress; this only guards
/// against a bug looping forever).
const MAX_STEPS: usize = 4_096;

/// Counters since the service was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsStats {
    /// Handshakes completed (the inner service saw the connection).
    pub handshakes_completed: u64,
    /// Handshakes that failed: rustls rejected the client's input (an alert was sent where
    /// possible) or the client overflowed the receive buffer.
    pub handshakes_failed: u64,
    /// Handshakes aborted because they did not complete in time.
    pub handshakes_timed_out: u64,
    /// Connections that failed after the handshake (a record that did not decrypt, an
    /// unexpected message, an overflowing receive buffer).
    pub connections_failed: u64,
    /// Application data bytes decrypted (given to the inner service).
    pub bytes_decrypted: u64,
    /// Application data bytes encrypted (taken from the inner service).
    pub bytes_encrypted: u64,
}

/// Wraps a plaintext [`net::Service`] (the HTTP server) in TLS; itself a [`net::Service`].
/// See the [module documentation](self).
pub struct TlsService<S> {
    inner: S,
    config: Arc<ServerConfig>,
    handshake_timeout_ms: u64,
    stats: TlsStats,
}

impl<S: Service> TlsService<S> {
    /// Serves `inner` over TLS with `config` (see [`server_config`](crate::server_config));
    /// a handshake not complete `handshake_timeout_ms` after the TCP connection opened is
    /// aborted.
    pub fn new(inner: S, config: Arc<ServerConfig>, handshake_timeout_ms: u64) -> Self {
        Self {
            inner,
            config,
            handshake_timeout_ms,
            stats: TlsStats::default(),
        }
    }

    /// The inner (plaintext) service.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The inner (plaintext) service, mutably.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Counters since creation.
    pub fn stats(&self) -> TlsStats {
        self.stats
    }
}

/// Why a connection ends, once it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Send what is queued (an alert, a `close_notify`), then close.
    Flush,
    /// Reset at once.
    Abort,
}

/// Per-connection state of [`TlsService`]: the rustls connection, the byte buffers on
/// both sides of it, and the inner service's connection once the handshake completed.
pub struct TlsConn<C> {
    /// `None` if rustls refused to create the connection (then it is aborted).
    tls: Option<UnbufferedServerConnection>,
    /// Received bytes rustls has not consumed yet (at most [`MAX_INCOMING`]).
    incoming: Vec<u8>,
    /// Encrypted bytes to send; `outgoing[sent..]` is still waiting.
    outgoing: Vec<u8>,
    sent: usize,
    /// The inner service's connection, opened when the handshake completes.
    inner: Option<C>,
    opened_ms: u64,
    /// The latest time the TCP server passed in (for calls that get none).
    now_ms: u64,
    /// The inner service asked to close: `close_notify` after its last output.
    inner_closing: bool,
    close_notify_queued: bool,
    /// The client sent `close_notify` or a TCP FIN.
    peer_closed: bool,
    end: Option<End>,
}

impl<C> TlsConn<C> {
    /// Whether the TLS handshake completed (the inner service has the connection).
    pub fn handshake_complete(&self) -> bool {
        self.inner.is_some()
    }

    /// The inner service's connection, once the handshake completed.
    pub fn inner(&self) -> Option<&C> {
        self.inner.as_ref()
    }

    /// The negotiated protocol version, once known.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.tls.as_ref().and_then(|tls| tls.protocol_version())
    }

    /// The negotiated cipher suite, once known.
    pub fn cipher_suite(&self) -> Option<rustls::CipherSuite> {
        self.tls
            .as_ref()
            .and_then(|tls| tls.negotiated_cipher_suite())
            .map(|suite| suite.suite())
    }

    fn pending_output(&self) -> usize {
        self.outgoing.len().saturating_sub(self.sent)
    }

    /// Drops already-sent bytes from the front of `outgoing`.
    fn compact(&mut self) {
        if self.sent > 0 {
            let sent = self.sent.min(self.outgoing.len());
            self.outgoing.drain(..sent);
            self.sent = 0;
        }
    }

    fn fail(&mut self, stats: &mut TlsStats, end: End) {
        if self.end.is_none() {
            if self.inner.is_some() {
                stats.connections_failed += 1;
            } else {
                stats.handshakes_failed += 1;
            }
        }
        self.end = Some(end);
        self.incoming = Vec::new();
    }

    /// Runs the rustls state machine until it needs more input: answers handshake
    /// messages, passes decrypted data to the inner service, encrypts its output (bounded)
    /// and queues `close_notify` when due.
    fn drive<S>(&mut self, service: &mut S, stats: &mut TlsStats, now_ms: u64)
    where
        S: Service<Conn = C>,
    {
        if self.end.is_some() {
            return;
        }
        self.compact();
        for _ in 0..MAX_STEPS {
            let Some(tls) = self.tls.as_mut() else {
                self.end = Some(End::Abort);
                return;
            };
            let UnbufferedStatus { mut discard, state } =
                tls.process_tls_records(&mut self.incoming[..]);
            let mut stop = false;
            let mut error = None;
            match state {
                Err(e) => error = Some(e),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    // Application data is only decrypted after the handshake (no early
                    // data), so the inner connection exists or is due now.
                    let inner_conn = open_inner(&mut self.inner, service, stats, now_ms);
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                stats.bytes_decrypted += record.payload.len() as u64;
                                service.on_receive(inner_conn, record.payload, now_ms);
                            }
                            Err(e) => {
                                error = Some(e);
                                break;
                            }
                        }
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    if append_with(
                        &mut self.outgoing,
                        4096,
                        |buf| data.encode(buf),
                        encode_size,
                    )
                    .is_err()
                    {
                        self.end = Some(End::Abort);
                        stop = true;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // `outgoing` is the transmit queue: it goes out in order.
                    transmit.done();
                }
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    // Reached as soon as rustls may send (in TLS 1.3 before the client's
                    // Finished): encrypt only for an opened inner connection.
                    if let Some(inner_conn) = self.inner.as_mut() {
                        let encrypted = encrypt_output(
                            service,
                            inner_conn,
                            &mut self.outgoing,
                            self.sent,
                            |plain, buf| traffic.encrypt(plain, buf),
                        );
                        match encrypted {
                            Ok(n) => stats.bytes_encrypted += n as u64,
                            Err(()) => self.end = Some(End::Abort),
                        }
                        if self.end.is_none()
                            && self.inner_closing
                            && !self.close_notify_queued
                            && service.output(inner_conn).is_empty()
                        {
                            let queued = append_with(
                                &mut self.outgoing,
                                64,
                                |buf| traffic.queue_close_notify(buf),
                                encrypt_size,
                            );
                            match queued {
                                Ok(()) => self.close_notify_queued = true,
                                Err(_) => self.end = Some(End::Abort),
                            }
                        }
                    }
                    stop = true;
                }
                Ok(ConnectionState::BlockedHandshake) | Ok(ConnectionState::Closed) => {
                    stop = true;
                }
                Ok(ConnectionState::PeerClosed) => {
                    // close_notify received (RFC 8446 §6.1).
                    self.peer_closed = true;
                    match self.inner.as_mut() {
                        Some(inner_conn) => service.on_peer_closed(inner_conn, now_ms),
                        None => self.end = Some(End::Flush),
                    }
                }
                Ok(ConnectionState::ReadEarlyData(_)) => {
                    // `max_early_data_size` is 0; treat as a protocol violation.
                    error = Some(rustls::Error::General(String::from(
                        "unexpected early data",
                    )));
                }
                Ok(_) => {
                    // Future states (the enum is non-exhaustive): wait for input.
                    stop = true;
                }
            }
            let discard = discard.min(self.incoming.len());
            self.incoming.drain(..discard);

            if let Some(error) = error {
                self.flush_alert();
                log::debug!("tls: connection failed: {error}");
                self.fail(stats, End::Flush);
                return;
            }
            if self.end.is_some() {
                return;
            }
            if self.inner.is_none() && self.tls.as_ref().is_some_and(|t| !t.is_handshaking()) {
                open_inner(&mut self.inner, service, stats, now_ms);
                stop = false; // encrypt what the inner service said on open
            }
            if stop {
                return;
            }
        }
    }

    /// After a rustls error: collects the fatal alert rustls queued, with one more call.
    /// rustls hands a queued record out (`EncodeTlsData`) before it looks at the input
    /// again, and it must see the received bytes exactly as it left them (its handshake
    /// deframer remembers how far into them it got: a shorter buffer would be sliced out of
    /// range). Nothing more is asked: a further call would parse the offending record
    /// again and raise the error, and send an alert, a second time.
    fn flush_alert(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            let UnbufferedStatus { discard: _, state } =
                tls.process_tls_records(&mut self.incoming);
            if let Ok(ConnectionState::EncodeTlsData(mut data)) = state {
                // A failure leaves the connection without its alert; it ends either way.
                let _ = append_with(&mut self.outgoing, 64, |buf| data.encode(buf), encode_size);
            }
        }
        // The connection is over: nothing received is used any more.
        self.incoming.clear();
    }
}

/// The inner connection, opening it (and counting the handshake) if not yet done.
fn open_inner<'c, S: Service>(
    slot: &'c mut Option<S::Conn>,
    service: &mut S,
    stats: &mut TlsStats,
    now_ms: u64,
) -> &'c mut S::Conn {
    slot.get_or_insert_with(|| {
        stats.handshakes_completed += 1;
        service.open(now_ms)
    })
}

/// Encrypts the inner service's output while fewer than [`OUTGOING_HIGH_WATER`] bytes wait,
/// at most [`ENCRYPT_CHUNK`] per record batch, and tells the inner service what it consumed.
/// Returns the plaintext bytes consumed.
fn encrypt_output<S: Service>(
    service: &mut S,
    inner_conn: &mut S::Conn,
    outgoing: &mut Vec<u8>,
    sent: usize,
    mut encrypt: impl FnMut(&[u8], &mut [u8]) -> Result<usize, EncryptError>,
) -> Result<usize, ()> {
    let mut total = 0;
    while outgoing.len().saturating_sub(sent) < OUTGOING_HIGH_WATER {
        let plain = service.output(inner_conn);
        if plain.is_empty() {
            break;
        }
        let take = plain.len().min(ENCRYPT_CHUNK);
        let chunk = plain.get(..take).unwrap_or(plain);
        // Record header, content type, AEAD tag: well under 64 bytes per record.
        append_with(outgoing, take + 64, |buf| encrypt(chunk, buf), encrypt_size)
            .map_err(|_| ())?;
        service.on_sent(inner_conn, take);
        total += take;
    }
    Ok(total)
}

fn encode_size(error: &EncodeError) -> Option<usize> {
    match error {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

fn encrypt_size(error: &EncryptError) -> Option<usize> {
    match error {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

/// Appends what `write` produces to `out`: offers `guess` bytes of room, and once more the
/// room rustls asks for if that was too little.
fn append_with<E>(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    required: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let start = out.len();
    let mut room = guess;
    loop {
        out.resize(start + room, 0);
        let result = write(out.get_mut(start..).unwrap_or_default());
        match result {
            Ok(n) => {
                out.truncate(start + n.min(room));
                return Ok(());
            }
            Err(e) => {
                out.truncate(start);
                match required(&e) {
                    Some(size) if size > room => room = size,
                    _ => return Err(e),
                }
            }
        }
    }
}

impl<S> Service for TlsService<S>
where
    S: Service,
    S::Conn: 'static,
{
    type Conn = TlsConn<S::Conn>;

    fn open(&mut self, now_ms: u64) -> TlsConn<S::Conn> {
        let tls = match UnbufferedServerConnection::new(self.config.clone()) {
            Ok(tls) => Some(tls),
            Err(e) => {
                log::warn!("tls: cannot create a server connection: {e}");
                None
            }
        };
        TlsConn {
            tls,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            inner: None,
            opened_ms: now_ms,
            now_ms,
            inner_closing: false,
            close_notify_queued: false,
            peer_closed: false,
            end: None,
        }
    }

    fn on_receive(&mut self, conn: &mut TlsConn<S::Conn>, data: &[u8], now_ms: u64) {
        // After the peer's close_notify rustls reads nothing more; later bytes are dropped.
        conn.now_ms = now_ms;
        if conn.end.is_some() || conn.peer_closed {
            return;
        }
        // A chunk at a time, so the buffer holds at most a partial record plus one chunk.
        for chunk in data.chunks(MAX_RECORD_LEN) {
            if conn.incoming.len() + chunk.len() > MAX_INCOMING {
                log::debug!("tls: receive buffer overflow");
                conn.fail(&mut self.stats, End::Abort);
                return;
            }
            conn.incoming.extend_from_slice(chunk);
            conn.drive(&mut self.inner, &mut self.stats, now_ms);
            if conn.end.is_some() || conn.peer_closed {
                return;
            }
        }
    }

    fn output<'c>(&self, conn: &'c TlsConn<S::Conn>) -> &'c [u8] {
        if conn.end == Some(End::Abort) {
            return &[];
        }
        conn.outgoing.get(conn.sent..).unwrap_or_default()
    }

    fn on_sent(&mut self, conn: &mut TlsConn<S::Conn>, n: usize) {
        conn.sent = conn.sent.saturating_add(n).min(conn.outgoing.len());
        if conn.sent == conn.outgoing.len() {
            conn.outgoing.clear();
            conn.sent = 0;
        }
        // Top up with more of the inner service's output.
        if conn.inner.is_some() && conn.pending_output() < OUTGOING_HIGH_WATER {
            let now_ms = conn.now_ms;
            conn.drive(&mut self.inner, &mut self.stats, now_ms);
        }
    }

    fn on_peer_closed(&mut self, conn: &mut TlsConn<S::Conn>, now_ms: u64) {
        conn.now_ms = now_ms;
        conn.peer_closed = true;
        if conn.end.is_some() {
            return;
        }
        match conn.inner.as_mut() {
            Some(inner_conn) => self.inner.on_peer_closed(inner_conn, now_ms),
            // The client gave up during the handshake: send what is queued and close.
            None => conn.end = Some(End::Flush),
        }
    }

    fn poll(&mut self, conn: &mut TlsConn<S::Conn>, now_ms: u64) -> ConnState {
        conn.now_ms = now_ms;
        if let Some(end) = conn.end {
            return conn_state(end);
        }
        let Some(inner_conn) = conn.inner.as_mut() else {
            if now_ms.saturating_sub(conn.opened_ms) >= self.handshake_timeout_ms {
                self.stats.handshakes_timed_out += 1;
                conn.end = Some(End::Abort);
                return ConnState::Abort;
            }
            return ConnState::Open;
        };
        match self.inner.poll(inner_conn, now_ms) {
            ConnState::Open => {}
            ConnState::CloseAfterFlush => conn.inner_closing = true,
            ConnState::Abort => {
                conn.end = Some(End::Abort);
                return ConnState::Abort;
            }
        }
        conn.drive(&mut self.inner, &mut self.stats, now_ms);
        if let Some(end) = conn.end {
            return conn_state(end);
        }
        // Report the close only once close_notify is queued behind the last output, so the
        // TCP server never sends FIN before it.
        if conn.close_notify_queued {
            ConnState::CloseAfterFlush
        } else {
            ConnState::Open
        }
    }

    fn waiting_since(&self, conn: &TlsConn<S::Conn>) -> Option<u64> {
        if conn.end.is_some() {
            return None;
        }
        match conn.inner.as_ref() {
            None => Some(conn.opened_ms),
            Some(inner_conn) => self.inner.waiting_since(inner_conn),
        }
    }
}

fn conn_state(end: End) -> ConnState {
    match end {
        End::Flush => ConnState::CloseAfterFlush,
        End::Abort => ConnState::Abort,
    }
}

#[cfg(test)]
mod tests;
