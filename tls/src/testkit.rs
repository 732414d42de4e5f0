//! Test helpers: a TLS client over rustls' unbuffered client API (same RustCrypto provider),
//! an echo service, and a pump that moves bytes between them.

use std::string::ToString;
use std::sync::{Arc, OnceLock};
use std::vec;
use std::vec::Vec;

use net::{ConnState, Service};
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};

use crate::{TlsConn, TlsIdentity, TlsService, provider, server_config};

/// A fixed "now" for certificates and clocks (2025-06-15).
pub const NOW_S: u64 = 1_750_000_000;

pub fn clock() -> Option<u64> {
    Some(NOW_S)
}

/// One generated identity shared by the tests (generation costs a few milliseconds).
pub fn identity() -> &'static TlsIdentity {
    static IDENTITY: OnceLock<TlsIdentity> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        TlsIdentity::generate_self_signed(NOW_S, 30, &["localhost", "10.0.2.15"])
            .expect("generate identity")
    })
}

/// A client configuration trusting exactly `cert` (webpki accepts a self-signed end-entity
/// certificate as its own trust anchor).
pub fn client_config(
    cert: &[u8],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.to_vec()))
        .expect("add root");
    let mut config = ClientConfig::builder_with_details(
        Arc::new(provider()),
        Arc::new(crate::FnTimeProvider(clock)),
    )
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A sans-IO TLS client (adapted from the feasibility spike's driver).
pub struct Client {
    conn: UnbufferedClientConnection,
    incoming: Vec<u8>,
    outgoing: Vec<u8>,
    pub plaintext: Vec<u8>,
    to_send: Vec<u8>,
    want_close: bool,
    pub peer_closed: bool,
    pub handshake_done: bool,
}

impl Client {
    pub fn new(config: Arc<ClientConfig>, name: &str) -> Self {
        let name = ServerName::try_from(name).expect("name").to_owned();
        Self {
            conn: UnbufferedClientConnection::new(config, name).expect("client"),
            incoming: Vec::new(),
            outgoing: Vec::new(),
            plaintext: Vec::new(),
            to_send: Vec::new(),
            want_close: false,
            peer_closed: false,
            handshake_done: false,
        }
    }

    pub fn write(&mut self, data: &[u8]) {
        self.to_send.extend_from_slice(data);
    }

    pub fn close(&mut self) {
        self.want_close = true;
    }

    pub fn received(&mut self, data: &[u8]) {
        self.incoming.extend_from_slice(data);
    }

    pub fn take_outgoing(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outgoing)
    }

    pub fn negotiated(&self) -> (Option<rustls::ProtocolVersion>, Option<rustls::CipherSuite>) {
        (
            self.conn.protocol_version(),
            self.conn.negotiated_cipher_suite().map(|s| s.suite()),
        )
    }

    /// Runs the client until it needs input.
    pub fn process(&mut self) -> Result<(), rustls::Error> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let mut stop = false;
            match state? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record?;
                        discard += record.discard;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    let mut buf = vec![0u8; 16_384];
                    let n = data.encode(&mut buf).map_err(|e| match e {
                        EncodeError::InsufficientSize(_) => rustls::Error::General("buffer".into()),
                        _ => rustls::Error::General("encode".into()),
                    })?;
                    self.outgoing.extend_from_slice(&buf[..n]);
                }
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::BlockedHandshake => stop = true,
                ConnectionState::WriteTraffic(mut traffic) => {
                    self.handshake_done = true;
                    let mut buf = vec![0u8; self.to_send.len() + 4096];
                    if !self.to_send.is_empty() {
                        let n = traffic
                            .encrypt(&self.to_send, &mut buf)
                            .map_err(|e: EncryptError| rustls::Error::General(e.to_string()))?;
                        self.outgoing.extend_from_slice(&buf[..n]);
                        self.to_send.clear();
                    }
                    if self.want_close {
                        self.want_close = false;
                        let n = traffic
                            .queue_close_notify(&mut buf)
                            .map_err(|e| rustls::Error::General(e.to_string()))?;
                        self.outgoing.extend_from_slice(&buf[..n]);
                    }
                    stop = true;
                }
                ConnectionState::PeerClosed => self.peer_closed = true,
                ConnectionState::Closed => stop = true,
                _ => stop = true,
            }
            self.incoming.drain(..discard);
            if stop {
                return Ok(());
            }
        }
    }
}

/// What the echo service saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Open(u64),
    Receive(Vec<u8>),
    PeerClosed,
}

/// Echoes everything; closes after the peer closed, once the echo is out.
#[derive(Default)]
pub struct Echo {
    pub events: Vec<Event>,
    /// Greeting written when a connection opens.
    pub greeting: Vec<u8>,
    /// Report connections as waiting since this time (`waiting_since`).
    pub waiting: Option<u64>,
}

pub struct EchoConn {
    pub out: Vec<u8>,
    pub peer_closed: bool,
}

impl Service for Echo {
    type Conn = EchoConn;

    fn open(&mut self, now_ms: u64) -> EchoConn {
        self.events.push(Event::Open(now_ms));
        EchoConn {
            out: self.greeting.clone(),
            peer_closed: false,
        }
    }

    fn on_receive(&mut self, conn: &mut EchoConn, data: &[u8], _now_ms: u64) {
        self.events.push(Event::Receive(data.to_vec()));
        conn.out.extend_from_slice(data);
    }

    fn output<'c>(&self, conn: &'c EchoConn) -> &'c [u8] {
        &conn.out
    }

    fn on_sent(&mut self, conn: &mut EchoConn, n: usize) {
        conn.out.drain(..n);
    }

    fn on_peer_closed(&mut self, conn: &mut EchoConn, _now_ms: u64) {
        self.events.push(Event::PeerClosed);
        conn.peer_closed = true;
    }

    fn poll(&mut self, conn: &mut EchoConn, _now_ms: u64) -> ConnState {
        if conn.peer_closed {
            ConnState::CloseAfterFlush
        } else {
            ConnState::Open
        }
    }

    fn waiting_since(&self, _conn: &EchoConn) -> Option<u64> {
        self.waiting
    }
}

/// A TLS service around [`Echo`] with the shared identity.
pub fn echo_service(timeout_ms: u64) -> TlsService<Echo> {
    let config = server_config(identity(), clock).expect("server config");
    TlsService::new(Echo::default(), config, timeout_ms)
}

/// Takes everything the service has to send, as the TCP server would (in pieces of at most
/// `max_write` bytes), and returns it.
pub fn drain<S: Service>(service: &mut S, conn: &mut S::Conn, max_write: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let pending = service.output(conn);
        if pending.is_empty() {
            return out;
        }
        let n = pending.len().min(max_write);
        out.extend_from_slice(&pending[..n]);
        service.on_sent(conn, n);
    }
}

/// Moves bytes between `client` and the service until neither side has anything to say.
/// Returns the last `poll` result.
pub fn pump(
    client: &mut Client,
    service: &mut TlsService<Echo>,
    conn: &mut TlsConn<EchoConn>,
    now_ms: u64,
) -> ConnState {
    let mut state = ConnState::Open;
    for _ in 0..32 {
        client.process().expect("client");
        let to_server = client.take_outgoing();
        if !to_server.is_empty() {
            service.on_receive(conn, &to_server, now_ms);
        }
        state = service.poll(conn, now_ms);
        let to_client = drain(service, conn, usize::MAX);
        client.received(&to_client);
        client.process().expect("client");
        if to_server.is_empty() && to_client.is_empty() && client.take_outgoing_peek() {
            break;
        }
    }
    state
}

impl Client {
    /// Whether the client has nothing queued to send.
    fn take_outgoing_peek(&self) -> bool {
        self.outgoing.is_empty()
    }
}
