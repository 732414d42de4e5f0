//! Hostile API clients, for `bench api` and the end-to-end availability test: connections that
//! hold the appliance's sockets without ever completing a request, and dashboards that
//! long-poll `GET /v1/events`, all driven from one thread through non-blocking sockets.
//!
//! - **Slow headers**: a request head sent one byte every [`SLOW_BYTE_INTERVAL`], never
//!   finished (a slowloris client).
//! - **Half-open handshakes**: a connection that sends the first bytes of a TLS ClientHello
//!   (or nothing, on a plain port) and then waits.
//! - **Long polls**: `GET /v1/events` with a `since` beyond every event, so the reply waits
//!   its full `wait_ms`; answered polls are sent again at once.
//!
//! Whenever the appliance ends one of these connections (a deadline, a reset), it is opened
//! again, so the pressure stays constant for the whole run.
//!
//! Against an HTTPS port ([`HostileClients::new`] with a client configuration) the slow
//! headers and long polls speak TLS: they complete the handshake at once, then send their
//! HTTP bytes inside TLS records as above (a slow client one record per byte).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::http::{Parsed, parse_response};

/// How often a slow client sends its next header byte.
pub const SLOW_BYTE_INTERVAL: Duration = Duration::from_secs(2);

/// The `wait_ms` of every long poll.
pub const LONG_POLL_WAIT_MS: u64 = 30_000;

/// Threads making connections for the clients (a connect can wait on QEMU's forward).
const CONNECTORS: usize = 16;

/// Timeout of every connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The first bytes of a TLS 1.3 ClientHello: a handshake record header announcing 512 bytes,
/// then the handshake header of a ClientHello announcing 508, then the legacy version. A
/// server waits for the rest.
pub const PARTIAL_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, // record: handshake, TLS 1.0 (as clients send), 512 bytes
    0x01, 0x00, 0x01, 0xfc, // ClientHello, 508 bytes
    0x03, 0x03, // legacy_version TLS 1.2
];

/// How many hostile connections of each kind to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostileCounts {
    /// Slow-header clients.
    pub slow_headers: usize,
    /// Half-open (TLS) handshakes.
    pub half_open: usize,
    /// Long-polling dashboards.
    pub long_polls: usize,
}

impl HostileCounts {
    /// The mix the issue names: 64 slow headers, 32 half-open handshakes, 32 long polls.
    pub const STANDARD: Self = Self {
        slow_headers: 64,
        half_open: 32,
        long_polls: 32,
    };

    /// All connections of the mix.
    pub fn total(&self) -> usize {
        self.slow_headers + self.half_open + self.long_polls
    }
}

/// What the hostile clients saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostileStats {
    /// Connections opened (initial ones and re-openings).
    pub connects: u64,
    /// Connects that failed (each is retried on the next step).
    pub connect_failures: u64,
    /// Connections the appliance ended (they were opened again).
    pub ended_by_server: u64,
    /// Of those, long polls (each restarts its wait).
    pub long_polls_ended: u64,
    /// Long polls answered (each was sent again).
    pub long_polls_answered: u64,
    /// Long-poll connections whose TLS handshake completed, so that their request went out
    /// (on a plain port: every long-poll connection).
    pub long_polls_sent: u64,
    /// Rounds over all clients, and the longest one in milliseconds (a slow round delays
    /// every client).
    pub rounds: u64,
    /// The longest round, in milliseconds.
    pub longest_round_ms: u64,
    /// Milliseconds from the first round until every client had connected once (QEMU's port
    /// forward accepts slowly after a burst of short connections); `None` if some never did.
    pub all_connected_after_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SlowHeaders,
    HalfOpen,
    LongPoll,
}

/// A hostile client's connection: plain TCP, or TLS driven over a non-blocking socket.
#[derive(Debug)]
enum Link {
    Plain(TcpStream),
    Tls(TcpStream, Box<ClientConnection>),
}

impl Link {
    /// Queues `bytes` (encrypted when TLS) and writes what the socket takes now.
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Plain(stream) => stream.write_all(bytes),
            Self::Tls(stream, tls) => {
                tls.writer().write_all(bytes)?;
                flush_tls(stream, tls)
            }
        }
    }

    /// Appends what arrived (decrypted when TLS) to `into`; `Ok(true)` when the peer ended
    /// the connection.
    fn receive(&mut self, into: &mut Vec<u8>) -> std::io::Result<bool> {
        let mut chunk = [0u8; 4096];
        match self {
            Self::Plain(stream) => loop {
                match stream.read(&mut chunk) {
                    Ok(0) => return Ok(true),
                    Ok(n) => into.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(e),
                }
            },
            Self::Tls(stream, tls) => {
                let mut eof = false;
                loop {
                    match tls.read_tls(stream) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                tls.process_new_packets()
                    .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
                loop {
                    match tls.reader().read(&mut chunk) {
                        Ok(0) => return Ok(true),
                        Ok(n) => into.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(true),
                        Err(e) => return Err(e),
                    }
                }
                // Handshake messages and alerts to answer.
                flush_tls(stream, tls)?;
                Ok(eof)
            }
        }
    }
}

/// Writes the TLS records waiting, as far as the non-blocking socket takes them.
fn flush_tls(stream: &mut TcpStream, tls: &mut ClientConnection) -> std::io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[derive(Debug)]
struct Client {
    kind: Kind,
    link: Option<Link>,
    /// A connect was asked of the connector thread and has not arrived yet.
    connecting: bool,
    /// A connect that arrived, to be set up on the next step.
    connected: Option<std::io::Result<TcpStream>>,
    /// Bytes of the slow head sent so far.
    sent: usize,
    /// A long poll's request has gone out on this connection.
    request_sent: bool,
    next_byte_at: Instant,
    received: Vec<u8>,
}

/// The hostile clients of one run.
#[derive(Debug)]
pub struct HostileClients {
    clients: Vec<Client>,
    slow_head: Vec<u8>,
    half_open_bytes: Vec<u8>,
    long_poll: Vec<u8>,
    /// TLS for the slow headers and long polls (an HTTPS port); `None`: plain.
    tls: Option<Arc<ClientConfig>>,
    /// Asks the connector thread for a connection for a client (by index).
    connector: std::sync::mpsc::Sender<usize>,
    /// Connections the connector thread made, by client index.
    arrivals: std::sync::mpsc::Receiver<(usize, std::io::Result<TcpStream>)>,
    stats: HostileStats,
    /// When the first round ran.
    started: Option<Instant>,
}

impl HostileClients {
    /// Clients for the API at `127.0.0.1:port`; `token` authorizes the long polls. With `tls`
    /// (an HTTPS port) slow headers and long polls speak TLS with that configuration, and
    /// half-open clients send [`PARTIAL_CLIENT_HELLO`]; without, everything is plain and
    /// half-open clients send nothing. Nothing connects before the first [`Self::step`].
    pub fn new(
        port: u16,
        counts: HostileCounts,
        token: &str,
        tls: Option<Arc<ClientConfig>>,
    ) -> Self {
        let half_open_bytes: &[u8] = if tls.is_some() {
            PARTIAL_CLIENT_HELLO
        } else {
            &[]
        };
        let now = Instant::now();
        // Long polls connect first: their 30 s wait should start at once.
        let kinds = std::iter::repeat_n(Kind::LongPoll, counts.long_polls)
            .chain(std::iter::repeat_n(Kind::HalfOpen, counts.half_open))
            .chain(std::iter::repeat_n(Kind::SlowHeaders, counts.slow_headers));
        let clients = kinds
            .map(|kind| Client {
                kind,
                link: None,
                connecting: false,
                connected: None,
                request_sent: false,
                sent: 0,
                next_byte_at: now,
                received: Vec::new(),
            })
            .collect();
        let long_poll = format!(
            "GET /v1/events?since=18446744073709551615&wait_ms={LONG_POLL_WAIT_MS} HTTP/1.1\r\n\
             Host: dashboard\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let (connector, requests) = std::sync::mpsc::channel::<usize>();
        let (deliver, arrivals) = std::sync::mpsc::channel();
        // CONNECTORS threads take connect requests from one queue; they end when `connector`
        // is dropped with the clients.
        let requests = Arc::new(std::sync::Mutex::new(requests));
        for _ in 0..CONNECTORS {
            let requests = Arc::clone(&requests);
            let deliver = deliver.clone();
            std::thread::spawn(move || {
                loop {
                    let next = match requests.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    let Ok(index) = next else { return };
                    if deliver.send((index, connect(address))).is_err() {
                        return;
                    }
                }
            });
        }
        Self {
            clients,
            slow_head: b"GET /v1/health HTTP/1.1\r\nHost: slow\r\nX-Padding: ".to_vec(),
            half_open_bytes: half_open_bytes.to_vec(),
            long_poll: long_poll.into_bytes(),
            tls,
            connector,
            arrivals,
            stats: HostileStats::default(),
            started: None,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> HostileStats {
        self.stats
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.clients.iter().filter(|c| c.link.is_some()).count()
    }

    /// One round over every client: (re)connect, send what is due, read what arrived.
    /// Call it every few tens of milliseconds.
    pub fn step(&mut self) {
        let now = Instant::now();
        let started = *self.started.get_or_insert(now);
        self.stats.rounds += 1;
        if self.stats.all_connected_after_ms.is_none()
            && self.stats.connects >= self.clients.len() as u64
        {
            let after = u64::try_from(now.duration_since(started).as_millis()).unwrap_or(u64::MAX);
            self.stats.all_connected_after_ms = Some(after);
        }
        while let Ok((index, stream)) = self.arrivals.try_recv() {
            if let Some(client) = self.clients.get_mut(index) {
                client.connected = Some(stream);
            }
        }
        for index in 0..self.clients.len() {
            self.step_client(index, now);
        }
        let round_ms = u64::try_from(now.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.stats.longest_round_ms = self.stats.longest_round_ms.max(round_ms);
    }

    fn step_client(&mut self, index: usize, now: Instant) {
        let Some(client) = self.clients.get_mut(index) else {
            return;
        };
        if client.link.is_none() {
            // Connects happen on the connector thread (a connect may wait on the listen
            // backlog of QEMU's port forward): ask for one, and take it when it arrives.
            let Some(stream) = client.connected.take() else {
                if !client.connecting {
                    client.connecting = self.connector.send(index).is_ok();
                }
                return;
            };
            client.connecting = false;
            let link = stream.and_then(|stream| match (&self.tls, client.kind) {
                (Some(config), Kind::SlowHeaders | Kind::LongPoll) => {
                    let name = ServerName::try_from("localhost")
                        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
                    let tls = ClientConnection::new(config.clone(), name)
                        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
                    Ok(Link::Tls(stream, Box::new(tls)))
                }
                _ => Ok(Link::Plain(stream)),
            });
            let mut link = match link {
                Ok(link) => link,
                Err(_) => {
                    self.stats.connect_failures += 1;
                    return;
                }
            };
            self.stats.connects += 1;
            let first: &[u8] = match client.kind {
                Kind::SlowHeaders => &[],
                Kind::HalfOpen => &self.half_open_bytes,
                Kind::LongPoll => &self.long_poll,
            };
            // A TLS client's ClientHello goes out with its first flush.
            let sent = match &mut link {
                Link::Tls(stream, tls) if first.is_empty() => flush_tls(stream, tls),
                _ if first.is_empty() => Ok(()),
                _ => link.send(first),
            };
            if sent.is_err() {
                self.stats.ended_by_server += 1;
                return;
            }
            client.link = Some(link);
            client.request_sent = false;
            client.sent = 0;
            client.next_byte_at = now;
            client.received.clear();
        }
        let Some(link) = client.link.as_mut() else {
            return;
        };
        let mut ended = !matches!(link.receive(&mut client.received), Ok(false));
        match client.kind {
            // Any answer to a never-finished head (408, 400) ends the client's attempt.
            Kind::SlowHeaders | Kind::HalfOpen if !client.received.is_empty() => ended = true,
            Kind::SlowHeaders if !ended && now >= client.next_byte_at => {
                // Past the fixed prefix, pad forever.
                let byte = self.slow_head.get(client.sent).copied().unwrap_or(b'a');
                if link.send(&[byte]).is_err() {
                    ended = true;
                }
                client.sent += 1;
                client.next_byte_at = now + SLOW_BYTE_INTERVAL;
            }
            Kind::LongPoll => {
                let sent = match link {
                    Link::Tls(_, tls) => !tls.is_handshaking(),
                    Link::Plain(_) => true,
                };
                if sent && !client.request_sent {
                    client.request_sent = true;
                    self.stats.long_polls_sent += 1;
                }
                while let Ok(Parsed::Complete(_, used)) = parse_response(&client.received, false) {
                    client.received.drain(..used);
                    self.stats.long_polls_answered += 1;
                    if link.send(&self.long_poll).is_err() {
                        ended = true;
                        break;
                    }
                }
            }
            Kind::SlowHeaders | Kind::HalfOpen => {}
        }
        if ended {
            client.link = None;
            self.stats.ended_by_server += 1;
            if client.kind == Kind::LongPoll {
                self.stats.long_polls_ended += 1;
            }
        }
    }
}

fn connect(address: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// Runs `clients` on a thread of their own until `stop` is set; returns them when it ends.
pub fn spawn(
    mut clients: HostileClients,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<HostileClients> {
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            clients.step();
            std::thread::sleep(Duration::from_millis(20));
        }
        clients
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Steps (the connector thread connects in the background) until `done`, at most 5 s.
    fn step_until(clients: &mut HostileClients, done: impl Fn(&HostileClients) -> bool) {
        for _ in 0..500 {
            clients.step();
            if done(clients) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("not reached: {:?}", clients.stats());
    }

    #[test]
    fn clients_hold_connections_and_reconnect_when_the_server_ends_them() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("test I/O");
        let port = listener.local_addr().expect("test I/O").port();
        let counts = HostileCounts {
            slow_headers: 2,
            half_open: 1,
            long_polls: 1,
        };
        let mut clients = HostileClients::new(port, counts, "tok", None);
        step_until(&mut clients, |c| c.open_connections() == 4);
        let mut accepted: Vec<TcpStream> = (0..4)
            .map(|_| listener.accept().expect("test I/O").0)
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        clients.step();
        // Every connection sent what its kind sends first.
        let mut firsts = Vec::new();
        for stream in &mut accepted {
            stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .expect("test I/O");
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf).unwrap_or(0);
            firsts.push(buf[..n].to_vec());
        }
        assert!(
            firsts
                .iter()
                .any(|f| f.starts_with(b"GET /v1/events?since="))
        );
        assert_eq!(
            firsts.iter().filter(|f| f.is_empty()).count(),
            1,
            "half-open: nothing"
        );
        assert_eq!(firsts.iter().filter(|f| f.as_slice() == b"G").count(), 2);
        // The long poll is answered: it is sent again on the same connection.
        let poll = accepted
            .iter_mut()
            .zip(&firsts)
            .find(|(_, f)| f.starts_with(b"GET /v1/events"))
            .map(|(s, _)| s)
            .expect("test I/O");
        poll.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            .expect("test I/O");
        std::thread::sleep(Duration::from_millis(50));
        clients.step();
        let mut again = [0u8; 512];
        let n = poll.read(&mut again).expect("test I/O");
        assert!(again[..n].starts_with(b"GET /v1/events"));
        assert_eq!(clients.stats().long_polls_answered, 1);
        // The server ends everything: each client connects again.
        drop(accepted);
        std::thread::sleep(Duration::from_millis(50));
        clients.step();
        assert_eq!(clients.stats().ended_by_server, 4);
        step_until(&mut clients, |c| c.open_connections() == 4);
        assert_eq!(clients.stats().connects, 8);
    }
}

/// Manual check against a running appliance (not run by default):
/// `HOSTILE_PORT=N HOSTILE_TOKEN=T cargo test -p appliance-image -- --ignored hostile_against`
/// (an HTTPS appliance's fingerprint is read from `HOSTILE_FINGERPRINT`).
#[cfg(test)]
mod manual {
    #[test]
    #[ignore = "needs a running appliance"]
    fn hostile_against_a_running_appliance() {
        let port: u16 = std::env::var("HOSTILE_PORT")
            .expect("HOSTILE_PORT")
            .parse()
            .expect("a port");
        let token = std::env::var("HOSTILE_TOKEN").expect("HOSTILE_TOKEN");
        if let Ok(text) = std::env::var("HOSTILE_FINGERPRINT") {
            let fingerprint = crate::http::parse_fingerprint(&text).expect("a fingerprint");
            crate::http::pin_certificate(port, fingerprint);
        }
        let report = crate::bench_api::probe_under_hostile_mix(
            port,
            &token,
            std::time::Duration::from_secs(65),
            || crate::bench_api::probe_health(port),
        );
        println!(
            "{} answered, {} unanswered, max {:?}, {:?}",
            report.answered.len(),
            report.unanswered,
            report.answered.last(),
            report.hostile
        );
    }
}
