//! Server tests: a `NetStack` on one end of an in-memory wire, a plain smoltcp host
//! ([`Peer`]) on the other, real TCP in between, virtual time.

use alloc::vec;
use alloc::vec::Vec;

use embedded_io::{Read, Write};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;
use smoltcp::wire::{
    DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, UdpPacket, UdpRepr,
};

use super::*;
use crate::config::{CLOSE_TIMEOUT_MS, HANDSHAKE_TIMEOUT_MS, SHED_GRACE_MS};
use crate::io::{TcpIoError, TcpStream};
use crate::testkit::{Peer, QueueNic};

const SERVER_IP: [u8; 4] = [10, 0, 0, 2];
const PEER_IP: [u8; 4] = [10, 0, 0, 1];
const PORT: u16 = 8080;

// ---------------------------------------------------------------------------------------
// Test services
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Open,
    Receive(Vec<u8>),
    PeerClosed,
}

/// Output buffer with a read offset, so `on_sent` is O(1).
#[derive(Default)]
struct Outbox {
    data: Vec<u8>,
    sent: usize,
}

impl Outbox {
    fn pending(&self) -> &[u8] {
        self.data.get(self.sent..).unwrap_or_default()
    }

    fn consume(&mut self, n: usize) {
        self.sent += n;
        if self.sent >= self.data.len() {
            self.data.clear();
            self.sent = 0;
        }
    }
}

/// Echoes everything; closes after the peer's FIN once the echo is out.
#[derive(Default)]
struct Echo {
    events: Vec<Event>,
}

struct EchoConn {
    out: Outbox,
    peer_closed: bool,
}

impl Service for Echo {
    type Conn = EchoConn;

    fn open(&mut self, _now_ms: u64) -> EchoConn {
        self.events.push(Event::Open);
        EchoConn {
            out: Outbox::default(),
            peer_closed: false,
        }
    }

    fn on_receive(&mut self, conn: &mut EchoConn, data: &[u8], _now_ms: u64) {
        self.events.push(Event::Receive(data.to_vec()));
        conn.out.data.extend_from_slice(data);
    }

    fn output<'c>(&self, conn: &'c EchoConn) -> &'c [u8] {
        conn.out.pending()
    }

    fn on_sent(&mut self, conn: &mut EchoConn, n: usize) {
        conn.out.consume(n);
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
}

/// On the first received byte, answers with `size` patterned bytes and closes.
struct Blob {
    size: usize,
}

struct BlobConn {
    out: Outbox,
    requested: bool,
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect()
}

impl Service for Blob {
    type Conn = BlobConn;

    fn open(&mut self, _now_ms: u64) -> BlobConn {
        BlobConn {
            out: Outbox::default(),
            requested: false,
        }
    }

    fn on_receive(&mut self, conn: &mut BlobConn, _data: &[u8], _now_ms: u64) {
        if !conn.requested {
            conn.requested = true;
            conn.out.data = pattern(self.size);
        }
    }

    fn output<'c>(&self, conn: &'c BlobConn) -> &'c [u8] {
        conn.out.pending()
    }

    fn on_sent(&mut self, conn: &mut BlobConn, n: usize) {
        conn.out.consume(n);
    }

    fn on_peer_closed(&mut self, _conn: &mut BlobConn, _now_ms: u64) {}

    fn poll(&mut self, conn: &mut BlobConn, _now_ms: u64) -> ConnState {
        if conn.requested {
            ConnState::CloseAfterFlush
        } else {
            ConnState::Open
        }
    }
}

/// Never sends; aborts on request.
#[derive(Default)]
struct Silent {
    abort_on_receive: bool,
}

struct SilentConn {
    abort: bool,
}

impl Service for Silent {
    type Conn = SilentConn;

    fn open(&mut self, _now_ms: u64) -> SilentConn {
        SilentConn { abort: false }
    }

    fn on_receive(&mut self, conn: &mut SilentConn, _data: &[u8], _now_ms: u64) {
        conn.abort = self.abort_on_receive;
    }

    fn output<'c>(&self, _conn: &'c SilentConn) -> &'c [u8] {
        &[]
    }

    fn on_sent(&mut self, _conn: &mut SilentConn, _n: usize) {}

    fn on_peer_closed(&mut self, _conn: &mut SilentConn, _now_ms: u64) {}

    fn poll(&mut self, conn: &mut SilentConn, _now_ms: u64) -> ConnState {
        if conn.abort {
            ConnState::Abort
        } else {
            ConnState::Open
        }
    }
}

/// Echoes like [`Echo`]; a connection is "waiting" (sheddable) since it opened until it
/// receives a `B`, then busy for good.
#[derive(Default)]
struct Patient {
    echo: Echo,
}

struct PatientConn {
    echo: EchoConn,
    opened_ms: u64,
    busy: bool,
}

impl Service for Patient {
    type Conn = PatientConn;

    fn open(&mut self, now_ms: u64) -> PatientConn {
        PatientConn {
            echo: self.echo.open(now_ms),
            opened_ms: now_ms,
            busy: false,
        }
    }

    fn on_receive(&mut self, conn: &mut PatientConn, data: &[u8], now_ms: u64) {
        conn.busy |= data.contains(&b'B');
        self.echo.on_receive(&mut conn.echo, data, now_ms);
    }

    fn output<'c>(&self, conn: &'c PatientConn) -> &'c [u8] {
        self.echo.output(&conn.echo)
    }

    fn on_sent(&mut self, conn: &mut PatientConn, n: usize) {
        self.echo.on_sent(&mut conn.echo, n);
    }

    fn on_peer_closed(&mut self, conn: &mut PatientConn, now_ms: u64) {
        self.echo.on_peer_closed(&mut conn.echo, now_ms);
    }

    fn poll(&mut self, conn: &mut PatientConn, now_ms: u64) -> ConnState {
        self.echo.poll(&mut conn.echo, now_ms)
    }

    fn waiting_since(&self, conn: &PatientConn) -> Option<u64> {
        (!conn.busy).then_some(conn.opened_ms)
    }
}

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

fn static_config() -> ServerConfig {
    ServerConfig {
        ipv4: Ipv4Config::Static {
            address: SERVER_IP,
            prefix_len: 24,
            gateway: Some(PEER_IP),
        },
        ..ServerConfig::default()
    }
}

struct Sim<S: Service> {
    now: u64,
    stack: NetStack<QueueNic>,
    service: S,
    peer: Peer,
    next_port: u16,
}

impl<S: Service> Sim<S>
where
    S::Conn: 'static,
{
    fn new(service: S, config: ServerConfig) -> Self {
        let (server_nic, peer_nic) = QueueNic::pair();
        Self::with_nics(service, config, server_nic, peer_nic)
    }

    fn with_nics(
        service: S,
        config: ServerConfig,
        server_nic: QueueNic,
        peer_nic: QueueNic,
    ) -> Self {
        Self {
            now: 1,
            stack: NetStack::new(server_nic, config, 1, 0x5eed),
            service,
            peer: Peer::new(peer_nic, PEER_IP, 1),
            next_port: 40_000,
        }
    }

    /// Polls both ends once; whether anything moved.
    fn step(&mut self) -> bool {
        let server = self.stack.poll(self.now, &mut self.service);
        let peer = self.peer.poll(self.now);
        server | peer
    }

    /// Steps until `done` holds or `limit_ms` of virtual time pass. Virtual time only
    /// advances when both ends are quiet, straight to the earlier of their poll delays.
    fn run_until(&mut self, limit_ms: u64, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let end = self.now + limit_ms;
        for _ in 0..200_000 {
            if done(self) {
                return true;
            }
            if !self.step() {
                let server = self.stack.poll_delay_ms(self.now);
                let peer = self.peer.poll_delay(self.now);
                let wait = match (server, peer) {
                    (Some(a), Some(b)) => a.min(b),
                    (a, b) => a.or(b).unwrap_or(1000),
                };
                self.now += wait.clamp(1, 1000);
                if self.now > end {
                    return done(self);
                }
            }
        }
        panic!("simulation did not converge");
    }

    /// Lets both ends go quiet (handshakes, ACKs, delayed ACKs), advancing virtual time
    /// only in small steps.
    fn settle(&mut self) {
        let mut quiet_rounds = 0;
        for _ in 0..100_000 {
            if self.step() {
                quiet_rounds = 0;
            } else {
                quiet_rounds += 1;
                if quiet_rounds > 2 {
                    return;
                }
                self.now += 25; // past smoltcp's 10 ms delayed ACK
            }
        }
        panic!("simulation did not settle");
    }

    fn connect(&mut self) -> SocketHandle {
        self.connect_with_rx(64 * 1024)
    }

    fn connect_with_rx(&mut self, rx_buffer: usize) -> SocketHandle {
        let port = self.next_port;
        self.next_port += 1;
        self.peer.connect_with(SERVER_IP, PORT, port, rx_buffer)
    }

    fn client(&mut self, handle: SocketHandle) -> TcpStream<'_, 'static> {
        TcpStream::new(self.peer.socket(handle))
    }

    /// Reads everything the client socket holds.
    fn drain(&mut self, handle: SocketHandle, into: &mut Vec<u8>) -> Result<usize, TcpIoError> {
        let mut client = self.client(handle);
        let mut buf = [0; 4096];
        let mut total = 0;
        loop {
            match client.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    into.extend_from_slice(&buf[..n]);
                    total += n;
                }
                Err(TcpIoError::WouldBlock) => return Ok(total),
                Err(error) => return Err(error),
            }
        }
    }

    fn at_eof(&mut self, handle: SocketHandle) -> bool {
        let state = self.peer.socket(handle).state();
        crate::io::peer_fin_received(state) && !self.peer.socket(handle).can_recv()
    }
}

/// Connects, sends `message`, and reads the echo back.
fn echo_roundtrip(sim: &mut Sim<Echo>, message: &[u8]) -> SocketHandle {
    let handle = sim.connect();
    assert!(
        sim.run_until(5_000, |sim| sim.peer.socket(handle).may_send()),
        "handshake completes"
    );
    assert_eq!(sim.client(handle).write(message), Ok(message.len()));
    let mut echoed = Vec::new();
    assert!(sim.run_until(5_000, |sim| {
        let _ = sim.drain(handle, &mut echoed);
        echoed.len() >= message.len()
    }));
    assert_eq!(echoed, message);
    handle
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn static_address_and_listener_pool_are_set_up() {
    let mut sim = Sim::new(Echo::default(), static_config());
    assert_eq!(sim.stack.ipv4_address(), Some((SERVER_IP, 24)));
    assert_eq!(sim.stack.ipv4_gateway(), Some(PEER_IP));
    assert_eq!(sim.stack.listener_count(), 8);
    assert_eq!(sim.stack.connection_count(), 0);
    assert_eq!(
        sim.stack.poll_delay_ms(sim.now),
        None,
        "nothing to do without traffic"
    );
    assert!(
        !sim.stack.poll(sim.now, &mut sim.service),
        "idle poll reports nothing"
    );
}

#[test]
fn echo_roundtrip_then_peer_close_is_delivered_in_order() {
    let mut sim = Sim::new(Echo::default(), static_config());
    let handle = echo_roundtrip(&mut sim, b"hello appliance");
    assert_eq!(sim.stack.connection_count(), 1);
    assert_eq!(
        sim.stack.listener_count(),
        8,
        "the used listener was replaced"
    );

    // Data and FIN back to back: the service sees the data, then the close.
    assert_eq!(sim.client(handle).write(b"last words"), Ok(10));
    sim.client(handle).close();
    let mut echoed = Vec::new();
    assert!(sim.run_until(5_000, |sim| {
        let _ = sim.drain(handle, &mut echoed);
        sim.at_eof(handle)
    }));
    assert_eq!(
        echoed, b"last words",
        "CloseAfterFlush sent the echo before FIN"
    );
    assert_eq!(
        sim.service.events,
        vec![
            Event::Open,
            Event::Receive(b"hello appliance".to_vec()),
            Event::Receive(b"last words".to_vec()),
            Event::PeerClosed,
        ]
    );
    sim.settle();
    assert_eq!(sim.stack.connection_count(), 0, "closed connection reaped");
    assert_eq!(sim.stack.listener_count(), 8);
    let stats = sim.stack.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.connections_closed, 1);
    assert_eq!(stats.connections_timed_out, 0);
    assert_eq!(stats.bytes_received, 25);
    assert_eq!(stats.bytes_sent, 25);
    assert!(stats.frames_received > 0 && stats.frames_transmitted > 0);
}

#[test]
fn eight_concurrent_clients_are_all_served() {
    let mut sim = Sim::new(Echo::default(), static_config());
    let handles: Vec<_> = (0..8).map(|_| sim.connect()).collect();
    assert!(sim.run_until(5_000, |sim| {
        handles
            .iter()
            .all(|&h| sim.peer.socket(h).state() == State::Established)
    }));
    assert_eq!(sim.stack.connection_count(), 8, "all open at once");
    for (i, &h) in handles.iter().enumerate() {
        let message = [b'a' + i as u8; 100];
        assert_eq!(sim.client(h).write(&message), Ok(100));
    }
    let mut received = vec![Vec::new(); 8];
    assert!(sim.run_until(5_000, |sim| {
        for (i, &h) in handles.iter().enumerate() {
            let _ = sim.drain(h, &mut received[i]);
        }
        received.iter().all(|r| r.len() == 100)
    }));
    for (i, r) in received.iter().enumerate() {
        assert!(
            r.iter().all(|&b| b == b'a' + i as u8),
            "client {i} got its own echo"
        );
    }
    assert_eq!(sim.stack.stats().connections_accepted, 8);
}

#[test]
fn socket_limit_refuses_extra_clients_until_one_closes() {
    let config = ServerConfig {
        max_connections: 8,
        ..static_config()
    };
    let mut sim = Sim::new(Echo::default(), config);
    let max = sim.stack.config().max_sockets();
    assert_eq!(max, 16);
    let handles: Vec<_> = (0..max).map(|_| sim.connect()).collect();
    assert!(sim.run_until(5_000, |sim| {
        handles
            .iter()
            .all(|&h| sim.peer.socket(h).state() == State::Established)
    }));
    assert_eq!(sim.stack.connection_count(), 16);
    assert_eq!(
        sim.stack.listener_count(),
        0,
        "the pool is bounded by max_sockets"
    );

    let refused = sim.connect();
    assert!(sim.run_until(5_000, |sim| sim.peer.socket(refused).state()
        == State::Closed));
    assert_eq!(sim.stack.connection_count(), 16);

    // One client leaves: its socket becomes a listener again and the next client is served.
    sim.client(handles[0]).close();
    assert!(sim.run_until(5_000, |sim| sim.stack.connection_count() == 15));
    assert_eq!(sim.stack.listener_count(), 1);
    let handle = echo_roundtrip(&mut sim, b"seventeenth");
    assert_eq!(sim.peer.socket(handle).state(), State::Established);
    assert_eq!(sim.stack.stats().connections_accepted, 17);
}

/// Opens `count` connections one after another (10 ms apart, so each waited longer than
/// the next) and waits until all are established.
fn open_in_order<S: Service>(sim: &mut Sim<S>, count: usize) -> Vec<SocketHandle>
where
    S::Conn: 'static,
{
    let mut handles = Vec::new();
    for _ in 0..count {
        let handle = sim.connect();
        assert!(sim.run_until(5_000, |sim| sim.peer.socket(handle).state()
            == State::Established));
        sim.now += 10;
        handles.push(handle);
    }
    handles
}

#[test]
fn a_full_table_sheds_the_longest_waiting_connections_to_keep_listening() {
    let config = ServerConfig {
        listeners: 2,
        max_connections: 4,
        ..static_config()
    };
    let mut sim = Sim::new(Patient::default(), config);
    let handles = open_in_order(&mut sim, 4);
    // The two oldest become busy: they must survive.
    for &handle in &handles[..2] {
        assert_eq!(sim.client(handle).write(b"B"), Ok(1));
    }
    sim.settle();
    assert_eq!(sim.stack.listener_count(), 2);
    assert_eq!(sim.stack.stats().connections_shed, 0);
    sim.now += SHED_GRACE_MS;

    // Two more take the listeners; the two longest-waiting (handles 2 and 3) are reset so
    // that two sockets listen again.
    let late = open_in_order(&mut sim, 2);
    sim.settle();
    assert_eq!(sim.stack.stats().connections_shed, 2);
    assert_eq!(sim.stack.listener_count(), 2);
    for &handle in &handles[2..] {
        assert_eq!(sim.peer.socket(handle).state(), State::Closed, "shed");
    }
    for &handle in handles[..2].iter().chain(&late) {
        assert_eq!(sim.peer.socket(handle).state(), State::Established);
    }
    // A new client is served at once (it is the newest, so it is not the next victim).
    let mut sim_echo = Vec::new();
    let fresh = sim.connect();
    assert!(sim.run_until(5_000, |sim| sim.peer.socket(fresh).may_send()));
    assert_eq!(sim.client(fresh).write(b"hello"), Ok(5));
    assert!(sim.run_until(5_000, |sim| {
        let _ = sim.drain(fresh, &mut sim_echo);
        sim_echo.len() == 5
    }));
    assert!(sim.stack.connection_count() <= sim.stack.config().max_sockets());
}

#[test]
fn busy_connections_are_never_shed() {
    let config = ServerConfig {
        listeners: 1,
        max_connections: 2,
        ..static_config()
    };
    let mut sim = Sim::new(Patient::default(), config);
    let handles = open_in_order(&mut sim, 3);
    for &handle in &handles {
        assert_eq!(sim.client(handle).write(b"B"), Ok(1));
    }
    sim.settle();
    assert_eq!(sim.stack.listener_count(), 0, "every socket is busy");
    let refused = sim.connect();
    assert!(sim.run_until(5_000, |sim| sim.peer.socket(refused).state()
        == State::Closed));
    assert_eq!(sim.stack.stats().connections_shed, 0);
    for &handle in &handles {
        assert_eq!(sim.peer.socket(handle).state(), State::Established);
    }
}

#[test]
fn a_half_open_connection_is_shed_to_make_room() {
    let config = ServerConfig {
        listeners: 1,
        max_connections: 1,
        ..static_config()
    };
    let mut sim = Sim::new(Patient::default(), config);
    let busy = open_in_order(&mut sim, 1)[0];
    assert_eq!(sim.client(busy).write(b"B"), Ok(1));
    sim.settle();
    assert_eq!(sim.stack.listener_count(), 1);
    let settled = sim.stack.stats().connections_shed;

    // A SYN whose handshake never completes (the server's replies are swallowed) takes the
    // last socket; it is the only waiting connection, so it is shed.
    let half_open = sim.connect();
    sim.peer.poll(sim.now); // SYN
    sim.stack.poll(sim.now, &mut sim.service); // SYN-ACK; the listener is promoted
    let syn_ms = sim.now;
    while sim.stack.stats().connections_shed == settled {
        while sim.peer.device.nic().take_raw().is_some() {}
        sim.now += 100;
        sim.stack.poll(sim.now, &mut sim.service);
        assert!(sim.now - syn_ms <= SHED_GRACE_MS + 200, "not shed in time");
    }
    assert!(sim.now - syn_ms >= SHED_GRACE_MS, "shed during its grace");
    sim.now += 1;
    sim.stack.poll(sim.now, &mut sim.service);
    while sim.peer.device.nic().take_raw().is_some() {}
    sim.peer.sockets.remove(half_open);
    assert_eq!(sim.stack.stats().connections_shed, 1);
    assert_eq!(sim.stack.listener_count(), 1, "listening again");
    assert_eq!(sim.stack.stats().connections_accepted, 1, "never accepted");

    let mut echoed = Vec::new();
    let fresh = sim.connect();
    assert!(sim.run_until(5_000, |sim| sim.peer.socket(fresh).may_send()));
    assert_eq!(sim.client(fresh).write(b"hi"), Ok(2));
    assert!(sim.run_until(5_000, |sim| {
        let _ = sim.drain(fresh, &mut echoed);
        echoed.len() == 2
    }));
    assert_eq!(sim.peer.socket(busy).state(), State::Established);
}

/// Records the port of every connection it opens; otherwise [`Echo`].
#[derive(Default)]
struct PortLog {
    echo: Echo,
    ports: Vec<u16>,
}

impl Service for PortLog {
    type Conn = EchoConn;

    fn open(&mut self, now_ms: u64) -> EchoConn {
        self.echo.open(now_ms)
    }

    fn open_on(&mut self, now_ms: u64, port: u16) -> EchoConn {
        self.ports.push(port);
        self.echo.open(now_ms)
    }

    fn on_receive(&mut self, conn: &mut EchoConn, data: &[u8], now_ms: u64) {
        self.echo.on_receive(conn, data, now_ms);
    }

    fn output<'c>(&self, conn: &'c EchoConn) -> &'c [u8] {
        self.echo.output(conn)
    }

    fn on_sent(&mut self, conn: &mut EchoConn, n: usize) {
        self.echo.on_sent(conn, n);
    }

    fn on_peer_closed(&mut self, conn: &mut EchoConn, now_ms: u64) {
        self.echo.on_peer_closed(conn, now_ms);
    }

    fn poll(&mut self, conn: &mut EchoConn, now_ms: u64) -> ConnState {
        self.echo.poll(conn, now_ms)
    }
}

#[test]
fn a_second_port_has_its_own_listeners_and_the_service_sees_the_port() {
    let config = ServerConfig {
        second_port: Some(9090),
        ..static_config()
    };
    let mut sim = Sim::new(PortLog::default(), config);
    sim.settle();
    assert_eq!(
        sim.stack.listener_count(),
        8 + crate::config::SECOND_PORT_LISTENERS
    );
    let main = sim.connect();
    let second = sim.peer.connect_with(SERVER_IP, 9090, 41_999, 64 * 1024);
    let unknown = sim.peer.connect_with(SERVER_IP, 9191, 41_998, 64 * 1024);
    assert!(sim.run_until(5_000, |sim| {
        sim.peer.socket(main).may_send()
            && sim.peer.socket(second).may_send()
            && sim.peer.socket(unknown).state() == State::Closed
    }));
    sim.settle();
    let mut ports = sim.service.ports.clone();
    ports.sort_unstable();
    assert_eq!(ports, [PORT, 9090]);
    assert_eq!(
        sim.stack.listener_count(),
        8 + crate::config::SECOND_PORT_LISTENERS,
        "both pools were replenished"
    );
}

#[test]
fn many_sequential_connections_keep_the_socket_set_bounded() {
    let mut sim = Sim::new(Echo::default(), static_config());
    for i in 0..40u8 {
        let handle = echo_roundtrip(&mut sim, &[i; 10]);
        sim.client(handle).close();
        assert!(sim.run_until(5_000, |sim| sim.stack.connection_count() == 0));
        sim.peer.sockets.remove(handle);
    }
    let sockets = sim.stack.sockets.iter().count();
    assert!(
        sockets <= sim.stack.config().max_sockets() + 1,
        "{sockets} sockets"
    );
    assert_eq!(sim.stack.listener_count(), 8);
    let stats = sim.stack.stats();
    assert_eq!(
        (stats.connections_accepted, stats.connections_closed),
        (40, 40)
    );
}

#[test]
fn idle_connection_is_aborted_after_the_idle_timeout() {
    let config = ServerConfig {
        idle_timeout_ms: 10_000,
        ..static_config()
    };
    let mut sim = Sim::new(Silent::default(), config);
    let handle = sim.connect();
    assert!(sim.run_until(5_000, |sim| sim.peer.socket(handle).may_send()));
    sim.settle();
    let opened_at = sim.now;
    let delay = sim
        .stack
        .poll_delay_ms(sim.now)
        .expect("a deadline is pending");
    assert!(
        delay <= 10_000,
        "poll delay {delay} covers the idle deadline"
    );

    assert!(sim.run_until(20_000, |sim| sim.peer.socket(handle).state()
        == State::Closed));
    let elapsed = sim.now - opened_at;
    assert!(
        (9_000..=11_000).contains(&elapsed),
        "aborted after {elapsed} ms"
    );
    assert!(matches!(
        sim.client(handle).read(&mut [0; 4]),
        Err(TcpIoError::NotConnected)
    ));
    sim.settle();
    let stats = sim.stack.stats();
    assert_eq!(stats.connections_timed_out, 1);
    assert_eq!(stats.connections_closed, 1);
    assert_eq!(sim.stack.connection_count(), 0);
}

#[test]
fn active_connection_is_not_idle() {
    let config = ServerConfig {
        idle_timeout_ms: 2_000,
        ..static_config()
    };
    let mut sim = Sim::new(Echo::default(), config);
    let handle = echo_roundtrip(&mut sim, b"x");
    for _ in 0..10 {
        sim.now += 1_500;
        let mut echoed = Vec::new();
        assert_eq!(sim.client(handle).write(b"y"), Ok(1));
        assert!(sim.run_until(1_000, |sim| {
            let _ = sim.drain(handle, &mut echoed);
            !echoed.is_empty()
        }));
    }
    assert_eq!(sim.stack.stats().connections_timed_out, 0);
    assert_eq!(sim.peer.socket(handle).state(), State::Established);
}

#[test]
fn half_open_connection_is_dropped_after_the_handshake_timeout() {
    let mut sim = Sim::new(Echo::default(), static_config());
    let handle = sim.connect();
    // Deliver the SYN but swallow every reply, so the handshake never completes.
    sim.peer.poll(sim.now); // ARP request
    sim.stack.poll(sim.now, &mut sim.service); // ARP reply
    sim.peer.poll(sim.now); // SYN
    sim.stack.poll(sim.now, &mut sim.service); // SYN-ACK
    assert_eq!(sim.stack.connection_count(), 1);
    let start = sim.now;
    while sim.stack.connection_count() > 0 {
        while sim.peer.device.nic().take_raw().is_some() {}
        sim.now += 100;
        sim.stack.poll(sim.now, &mut sim.service);
        assert!(
            sim.now - start <= HANDSHAKE_TIMEOUT_MS + 200,
            "not dropped in time"
        );
    }
    assert!(sim.now - start >= HANDSHAKE_TIMEOUT_MS);
    let stats = sim.stack.stats();
    assert_eq!(stats.handshakes_timed_out, 1);
    assert_eq!(
        (stats.connections_accepted, stats.connections_closed),
        (0, 0)
    );
    assert_eq!(sim.stack.listener_count(), 8);
    let _ = handle;
}

#[test]
fn service_abort_resets_the_connection() {
    let service = Silent {
        abort_on_receive: true,
    };
    let mut sim = Sim::new(service, static_config());
    let handle = sim.connect();
    assert!(sim.run_until(5_000, |sim| sim.peer.socket(handle).may_send()));
    assert_eq!(sim.client(handle).write(b"bad request"), Ok(11));
    assert!(sim.run_until(5_000, |sim| sim.peer.socket(handle).state()
        == State::Closed));
    sim.settle();
    let stats = sim.stack.stats();
    assert_eq!(stats.connections_aborted, 1);
    assert_eq!(stats.connections_closed, 1);
    assert_eq!(sim.stack.connection_count(), 0);
}

#[test]
fn connection_polled_with_another_service_type_is_aborted() {
    let mut sim = Sim::new(Echo::default(), static_config());
    let handle = echo_roundtrip(&mut sim, b"typed");
    let mut other = Silent::default();
    assert!(sim.stack.poll(sim.now, &mut other));
    sim.peer.poll(sim.now);
    assert_eq!(
        sim.peer.socket(handle).state(),
        State::Closed,
        "RST received"
    );
    assert_eq!(sim.stack.stats().connections_aborted, 1);
    assert_eq!(sim.stack.connection_count(), 0);
}

/// Requests a `size`-byte blob on a fresh connection and reads it to EOF.
fn fetch_blob(sim: &mut Sim<Blob>) -> Vec<u8> {
    let handle = sim.connect();
    assert!(sim.run_until(5_000, |sim| sim.peer.socket(handle).may_send()));
    assert_eq!(sim.client(handle).write(b"GET /blob"), Ok(9));
    let mut body = Vec::new();
    assert!(
        sim.run_until(120_000, |sim| {
            let _ = sim.drain(handle, &mut body);
            sim.at_eof(handle)
        }),
        "EOF after {} bytes",
        body.len()
    );
    sim.client(handle).close();
    body
}

#[test]
fn close_after_flush_delivers_a_one_mebibyte_response() {
    const SIZE: usize = 1 << 20;
    let mut sim = Sim::new(Blob { size: SIZE }, static_config());
    let body = fetch_blob(&mut sim);
    assert_eq!(body.len(), SIZE);
    assert!(body == pattern(SIZE), "content intact");
    sim.settle();
    let stats = sim.stack.stats();
    assert_eq!(stats.bytes_sent, SIZE as u64);
    assert_eq!(stats.connections_closed, 1);
    assert_eq!(stats.connections_timed_out, 0);
    assert_eq!(stats.transmit_dropped, 0);
}

#[test]
fn refused_transmits_are_recovered_by_tcp() {
    const SIZE: usize = 256 * 1024;
    let (mut server_nic, peer_nic) = QueueNic::pair();
    server_nic.refuse_every = Some(13);
    let mut sim = Sim::with_nics(Blob { size: SIZE }, static_config(), server_nic, peer_nic);
    let body = fetch_blob(&mut sim);
    assert_eq!(body.len(), SIZE);
    assert!(body == pattern(SIZE), "content intact despite drops");
    let stats = sim.stack.stats();
    assert!(
        stats.transmit_dropped > 10,
        "{} drops",
        stats.transmit_dropped
    );
}

#[test]
fn small_nic_transmit_ring_is_recovered_by_tcp() {
    const SIZE: usize = 256 * 1024;
    let (mut server_nic, peer_nic) = QueueNic::pair();
    server_nic.tx_capacity = 8;
    let mut sim = Sim::with_nics(Blob { size: SIZE }, static_config(), server_nic, peer_nic);
    let body = fetch_blob(&mut sim);
    assert!(
        body == pattern(SIZE),
        "content intact with an 8-frame transmit ring"
    );
    assert!(sim.stack.stats().transmit_dropped > 0);
}

#[test]
fn nic_reporting_transmit_readiness_loses_no_frame() {
    const SIZE: usize = 256 * 1024;
    let (mut server_nic, peer_nic) = QueueNic::pair();
    server_nic.tx_capacity = 3;
    server_nic.report_ready = true;
    let mut sim = Sim::with_nics(Blob { size: SIZE }, static_config(), server_nic, peer_nic);
    let body = fetch_blob(&mut sim);
    assert!(
        body == pattern(SIZE),
        "content intact with a 3-frame transmit ring"
    );
    assert_eq!(sim.stack.stats().transmit_dropped, 0);
}

#[test]
fn closing_connection_that_cannot_flush_is_aborted() {
    let mut sim = Sim::new(Blob { size: 1 << 20 }, static_config());
    let handle = sim.connect_with_rx(4096);
    assert!(sim.run_until(5_000, |sim| sim.peer.socket(handle).may_send()));
    assert_eq!(sim.client(handle).write(b"GET"), Ok(3));
    // The client never reads: its 4 KiB window closes and the response cannot drain.
    let mut stalled_at = None;
    assert!(sim.run_until(60_000, |sim| {
        if stalled_at.is_none() && sim.peer.socket(handle).recv_queue() == 4096 {
            stalled_at = Some(sim.now);
        }
        sim.peer.socket(handle).state() == State::Closed
    }));
    let stalled_at = stalled_at.expect("the client window filled up");
    let waited = sim.now - stalled_at;
    assert!(
        (CLOSE_TIMEOUT_MS - 500..=CLOSE_TIMEOUT_MS + 1_500).contains(&waited),
        "aborted {waited} ms after the stall"
    );
    sim.settle();
    let stats = sim.stack.stats();
    assert_eq!(stats.connections_timed_out, 1);
    assert!(stats.bytes_sent < 1 << 20);
    assert_eq!(sim.stack.connection_count(), 0);
}

#[test]
fn multicast_mac_and_port_zero_do_not_panic() {
    let (mut server_nic, _peer_nic) = QueueNic::pair();
    server_nic.mac = [0xff; 6];
    let config = ServerConfig {
        port: 0,
        ..static_config()
    };
    let mut stack = NetStack::new(server_nic, config, 0, 1);
    assert_eq!(stack.listener_count(), 0, "port 0 cannot listen");
    assert!(!stack.poll(0, &mut Echo::default()));
    assert_eq!(stack.nic().mac, [0xff; 6]);
}

// ---------------------------------------------------------------------------------------
// DHCP: the peer side answers the server's DISCOVER/REQUEST with OFFER/ACK crafted with
// smoltcp's wire types, like QEMU's user-mode DHCP server would.
// ---------------------------------------------------------------------------------------

const DHCP_SERVER: [u8; 4] = [10, 0, 2, 2];
const LEASED: [u8; 4] = [10, 0, 2, 15];

/// Answers every DHCP request waiting on `nic`; returns the message types answered.
/// Other frames are discarded.
fn answer_dhcp(nic: &QueueNic, lease_secs: u32) -> Vec<DhcpMessageType> {
    let mut answered = Vec::new();
    while let Some(frame) = nic.take_raw() {
        let Some(request) = parse_dhcp(&frame) else {
            continue;
        };
        let reply_type = match request.0 {
            DhcpMessageType::Discover => DhcpMessageType::Offer,
            DhcpMessageType::Request => DhcpMessageType::Ack,
            _ => continue,
        };
        answered.push(request.0);
        nic.send_raw(&dhcp_reply(
            nic.mac, reply_type, request.1, request.2, lease_secs,
        ));
    }
    answered
}

/// (message type, transaction id, client MAC) of a DHCP client message.
fn parse_dhcp(frame: &[u8]) -> Option<(DhcpMessageType, u32, EthernetAddress)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Udp {
        return None;
    }
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    if udp.dst_port() != 67 {
        return None;
    }
    let packet = DhcpPacket::new_checked(udp.payload()).ok()?;
    let repr = DhcpRepr::parse(&packet).ok()?;
    Some((
        repr.message_type,
        repr.transaction_id,
        repr.client_hardware_address,
    ))
}

fn dhcp_reply(
    server_mac: [u8; 6],
    message_type: DhcpMessageType,
    transaction_id: u32,
    client: EthernetAddress,
    lease_secs: u32,
) -> Vec<u8> {
    let server = Ipv4Address::from(DHCP_SERVER);
    let reply = DhcpRepr {
        message_type,
        transaction_id,
        secs: 0,
        client_hardware_address: client,
        client_ip: Ipv4Address::UNSPECIFIED,
        your_ip: Ipv4Address::from(LEASED),
        server_ip: server,
        router: Some(server),
        subnet_mask: Some(Ipv4Address::new(255, 255, 255, 0)),
        relay_agent_ip: Ipv4Address::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(server),
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: Some(lease_secs),
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let dhcp_len = reply.buffer_len();
    let udp = UdpRepr {
        src_port: 67,
        dst_port: 68,
    };
    let ip = Ipv4Repr {
        src_addr: server,
        dst_addr: Ipv4Address::BROADCAST,
        next_header: IpProtocol::Udp,
        payload_len: 8 + dhcp_len,
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(server_mac),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Ipv4,
    };
    let caps = smoltcp::phy::ChecksumCapabilities::default();
    let mut frame = vec![0; 14 + 20 + 8 + dhcp_len];
    eth.emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut frame[14..]), &caps);
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut frame[34..]),
        &server.into(),
        &Ipv4Address::BROADCAST.into(),
        dhcp_len,
        |payload| {
            reply
                .emit(&mut DhcpPacket::new_unchecked(payload))
                .expect("DHCP reply fits");
        },
        &caps,
    );
    frame
}

#[test]
fn dhcp_lease_configures_the_interface_serves_tcp_and_expires() {
    let (server_nic, peer_nic) = QueueNic::pair();
    let mut service = Echo::default();
    let mut stack = NetStack::new(server_nic, ServerConfig::default(), 0, 42);
    assert_eq!(stack.ipv4_address(), None);

    let mut now = 0;
    let mut answered = Vec::new();
    while stack.ipv4_address().is_none() {
        stack.poll(now, &mut service);
        answered.extend(answer_dhcp(&peer_nic, 60));
        now += 10;
        assert!(now < 1_000, "DHCP did not complete; answered {answered:?}");
    }
    assert_eq!(
        answered,
        [DhcpMessageType::Discover, DhcpMessageType::Request]
    );
    assert_eq!(stack.ipv4_address(), Some((LEASED, 24)));
    assert_eq!(stack.ipv4_gateway(), Some(DHCP_SERVER));

    // TCP to the leased address from the DHCP server's host.
    let mut sim = Sim {
        now,
        stack,
        service,
        peer: Peer::new(peer_nic, DHCP_SERVER, now),
        next_port: 50_000,
    };
    let handle = sim.peer.connect(LEASED, PORT, 50_000);
    assert!(sim.run_until(5_000, |sim| sim.peer.socket(handle).may_send()));
    assert_eq!(sim.client(handle).write(b"over dhcp"), Ok(9));
    let mut echoed = Vec::new();
    assert!(sim.run_until(5_000, |sim| {
        let _ = sim.drain(handle, &mut echoed);
        echoed.len() == 9
    }));
    assert_eq!(echoed, b"over dhcp");

    // Nobody answers renewals: the 60 s lease expires and the address goes away.
    let leased_at = sim.now;
    assert!(sim.run_until(120_000, |sim| sim.stack.ipv4_address().is_none()));
    let held = sim.now - leased_at;
    assert!(
        (55_000..=61_000).contains(&held),
        "lease lost after {held} ms"
    );
    assert_eq!(sim.stack.ipv4_gateway(), None);
}
