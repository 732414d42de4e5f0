//! The [`Service`] seam: what a server application does with connections. The server owns
//! sockets and timing; the service sees bytes in, offers bytes out and says when a
//! connection should end. The management API implements it through a thin adapter.

/// What a server application does with connections (the management API implements it via a
/// thin adapter).
///
/// Per poll and live connection, [`NetStack::poll`](crate::NetStack::poll) calls, in order:
/// [`on_receive`](Self::on_receive) for each received chunk,
/// [`on_peer_closed`](Self::on_peer_closed) once after the peer's FIN (after all data before
/// it), [`poll`](Self::poll), then [`output`](Self::output)/[`on_sent`](Self::on_sent) while
/// the socket's transmit buffer has room.
pub trait Service {
    /// Per-connection state. It lives in the server's connection table between polls, so
    /// it must be `'static` (see [`NetStack::poll`](crate::NetStack::poll)).
    type Conn;
    /// A client completed the TCP handshake; create its state.
    fn open(&mut self, now_ms: u64) -> Self::Conn;
    /// Like [`open`](Self::open), for a connection that came in on `port` (the server's
    /// [`second_port`](crate::ServerConfig::second_port) or its main port). Default: `open`.
    fn open_on(&mut self, now_ms: u64, port: u16) -> Self::Conn {
        let _ = port;
        self.open(now_ms)
    }
    /// Bytes arrived, in order. There is no back-pressure: the service buffers or rejects.
    fn on_receive(&mut self, conn: &mut Self::Conn, data: &[u8], now_ms: u64);
    /// Bytes waiting to be sent.
    fn output<'c>(&self, conn: &'c Self::Conn) -> &'c [u8];
    /// The first `n` bytes of [`output`](Self::output) were handed to TCP; drop them.
    fn on_sent(&mut self, conn: &mut Self::Conn, n: usize);
    /// The peer closed its sending half (FIN); no more data will arrive. The connection
    /// stays open for sending: return [`ConnState::CloseAfterFlush`] once the reply is out.
    fn on_peer_closed(&mut self, conn: &mut Self::Conn, now_ms: u64);
    /// Called every poll for every live connection.
    fn poll(&mut self, conn: &mut Self::Conn, now_ms: u64) -> ConnState;

    /// Since when `conn` has been waiting for a request it has not completed (between
    /// requests, or with part of one received), or `None` while it is busy with one
    /// (reading its body, answering it, holding a long poll). When every socket is in use,
    /// the server resets waiting connections to make room, the longest-waiting first;
    /// busy ones are never shed. Default: always busy (never shed).
    fn waiting_since(&self, conn: &Self::Conn) -> Option<u64> {
        let _ = conn;
        None
    }
}

/// What a [`Service`] wants done with a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Keep the connection open.
    Open,
    /// Send everything [`Service::output`] holds, then close (FIN). If that cannot make
    /// progress for [`CLOSE_TIMEOUT_MS`](crate::config::CLOSE_TIMEOUT_MS) the connection is
    /// aborted.
    CloseAfterFlush,
    /// Drop the connection at once (RST); unsent output is discarded.
    Abort,
}
