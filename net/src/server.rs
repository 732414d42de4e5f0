//! [`NetStack`]: the smoltcp interface, a pool of listening TCP sockets and the table of
//! live connections, each driven through a [`Service`].
//!
//! # Listener pool
//! [`ServerConfig::listeners`] sockets listen on the port at all times (and
//! [`SECOND_PORT_LISTENERS`](crate::config::SECOND_PORT_LISTENERS) on the
//! [`ServerConfig::second_port`], if any; the service learns a connection's port from
//! [`Service::open_on`]). When one receives a
//! SYN it joins the connection table and a new listening socket replaces it (checked after
//! every received frame, so a burst of SYNs finds listeners), as long as the sockets stay
//! within [`ServerConfig::max_sockets`] (`listeners + max_connections`). Sockets of finished connections are kept
//! and reused as listening sockets (socket memory grows to the high-water mark of
//! concurrent connections and stays there, bounded by
//! [`ServerConfig::max_buffer_memory`]), so steady-state serving allocates nothing in the
//! stack beyond the per-connection service state (one `Box` per connection).
//!
//! # Shedding
//! When the table is full and listeners are missing, the stack resets (RST) connections
//! that are only waiting, to reopen the listeners: half-open ones and those the service
//! reports as waiting for a request ([`Service::waiting_since`]), the longest-waiting
//! first, one per missing listener, and only once they have waited
//! [`SHED_GRACE_MS`](crate::config::SHED_GRACE_MS). Connections busy with a request (a body being read, a
//! response being written, a long poll) are never shed; with only those, new connection
//! attempts get a RST until one closes. So clients that hold sockets without completing
//! requests cannot lock out one that sends a request at once. The socket of a shed
//! connection becomes a listener after this poll's egress has sent the RST.
//!
//! # Connection lifecycle
//! A connection is handed to the service ([`Service::open`]) once its handshake completes.
//! Every poll: received bytes go to [`Service::on_receive`]; the peer's FIN, after the data
//! before it, to [`Service::on_peer_closed`]; then [`Service::poll`] decides, and
//! [`Service::output`] is copied into the socket's send buffer as far as it has room.
//! [`ConnState::CloseAfterFlush`] sends FIN once the output is drained;
//! [`ConnState::Abort`] sends RST at once.
//!
//! # Deadlines
//! So a dead or hostile peer never holds a socket forever, each connection has one
//! deadline, counted from its last progress (bytes received, bytes accepted into the send
//! buffer, bytes acknowledged, FIN seen or sent):
//! - handshake not completed: [`ServerConfig::handshake_timeout_ms`];
//! - open: [`ServerConfig::idle_timeout_ms`];
//! - closing (after `CloseAfterFlush`): [`ServerConfig::close_timeout_ms`].
//!
//! A connection past its deadline is aborted (RST) and counted in
//! [`NetStats::connections_timed_out`] (half-open ones in
//! [`NetStats::handshakes_timed_out`]). A connection whose socket reaches TIME-WAIT
//! leaves the table at once; the socket keeps answering a retransmitted FIN only until it is
//! reused as a listener (after that, a late FIN gets a RST).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::any::Any;

use smoltcp::iface::{
    Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress};

use crate::addr::{self, Ipv4Settings};
use crate::config::{Ipv4Config, SHED_GRACE_MS, ServerConfig};
use crate::io::peer_fin_received;
use crate::nic::{Nic, NicDevice};
use crate::service::{ConnState, Service};
use crate::stats::NetStats;

/// Frames processed per [`NetStack::poll`] at most, so one poll is bounded work even under
/// a flood; the caller polls again at once when `poll` returns `true`.
pub const MAX_INGRESS_FRAMES_PER_POLL: usize = 64;

/// Egress rounds per transmit phase at most (each round lets every socket send one segment).
const MAX_EGRESS_ROUNDS: usize = 256;

/// Largest timestamp handed to smoltcp (about 285 000 years), far from `i64` overflow in
/// smoltcp's microsecond arithmetic.
const MAX_TIMESTAMP_MS: u64 = 1 << 53;

fn instant(now_ms: u64) -> Instant {
    // Lossless: the value is below 2^53.
    Instant::from_millis(now_ms.min(MAX_TIMESTAMP_MS) as i64)
}

/// One entry of the connection table.
struct Connection {
    handle: SocketHandle,
    /// The service's state, created when the handshake completes. Type-erased because
    /// `NetStack` is not generic over the service.
    app: Option<Box<dyn Any>>,
    /// Last time the connection made progress; deadlines count from here.
    last_progress_ms: u64,
    /// Bytes in the send buffer after the last poll, to notice acknowledgements.
    queued: usize,
    peer_closed: bool,
    closing: bool,
    fin_sent: bool,
    /// When the SYN arrived (the waiting time of a half-open connection).
    opened_ms: u64,
    /// The local port the connection came in on.
    port: u16,
    /// Reset to make room; its socket is reaped after this poll's egress.
    shed: bool,
}

impl Connection {
    fn new(handle: SocketHandle, port: u16, now_ms: u64) -> Self {
        Self {
            port,
            handle,
            app: None,
            last_progress_ms: now_ms,
            queued: 0,
            peer_closed: false,
            closing: false,
            fin_sent: false,
            opened_ms: now_ms,
            shed: false,
        }
    }

    /// Since when the connection has only been waiting (see the module's "Shedding"), or
    /// `None` when it must not be shed.
    fn waiting_since<S>(&self, service: &S) -> Option<u64>
    where
        S: Service,
        S::Conn: 'static,
    {
        if self.shed || self.closing {
            return None;
        }
        match &self.app {
            None => Some(self.opened_ms),
            Some(app) => app
                .downcast_ref::<S::Conn>()
                .and_then(|app| service.waiting_since(app)),
        }
    }

    fn deadline_ms(&self, config: &ServerConfig) -> u64 {
        let limit = if self.app.is_none() {
            config.handshake_timeout_ms()
        } else if self.closing {
            config.close_timeout_ms()
        } else {
            config.idle_timeout_ms
        };
        self.last_progress_ms.saturating_add(limit)
    }
}

/// The appliance's network stack: one NIC, one smoltcp interface, one TCP server port.
pub struct NetStack<N: Nic> {
    device: NicDevice<N>,
    iface: Interface,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    /// Listening sockets and their ports.
    listeners: Vec<(SocketHandle, u16)>,
    connections: Vec<Connection>,
    config: ServerConfig,
    /// Closed sockets kept for reuse, so serving connections does not allocate buffers.
    /// `listeners + connections + spare` never exceeds `max_sockets`.
    spare: Vec<SocketHandle>,
    /// Set when `listen` failed (port 0): stop creating listeners rather than retrying.
    listen_failed: bool,
    stats: NetStats,
}

impl<N: Nic> NetStack<N> {
    /// Builds the stack on `nic` with `config` (as [`ServerConfig::sanitized`]), starts DHCP
    /// or applies the static address, and opens the listening sockets.
    ///
    /// `random_seed` seeds TCP initial sequence numbers and DHCP transaction ids: pass a
    /// different value each boot (e.g. from the RNG protocol or the TSC). A multicast MAC
    /// reported by the NIC has its group bit cleared (smoltcp needs a unicast address).
    pub fn new(nic: N, config: ServerConfig, now_ms: u64, random_seed: u64) -> Self {
        let config = config.sanitized();
        let mut device = NicDevice::new(nic);
        let mut mac = device.nic().mac_address();
        if mac[0] & 1 != 0 {
            log::warn!("net: NIC reports a multicast MAC address; clearing the group bit");
            mac[0] &= !1;
        }
        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        iface_config.random_seed = random_seed;
        let mut iface = Interface::new(iface_config, &mut device, instant(now_ms));
        let mut sockets = SocketSet::new(Vec::with_capacity(config.max_sockets() + 1));
        let dhcp = match config.ipv4 {
            Ipv4Config::Dhcp => Some(sockets.add(addr::dhcp_socket())),
            Ipv4Config::Static { .. } => {
                addr::apply(
                    &mut iface,
                    Ipv4Settings::from_static(&config.ipv4),
                    "static",
                );
                None
            }
        };
        let mut stack = Self {
            device,
            iface,
            sockets,
            dhcp,
            listeners: Vec::with_capacity(config.total_listeners()),
            connections: Vec::with_capacity(config.max_sockets()),
            config,
            spare: Vec::with_capacity(config.max_sockets()),
            listen_failed: false,
            stats: NetStats::default(),
        };
        stack.replenish_listeners();
        stack
    }

    /// One pass: move frames, run DHCP, keep `listeners` sockets listening, feed/drain
    /// connections through the service, enforce deadlines. Returns true if anything
    /// happened (frames or bytes moved, connection opened/closed, address changed) so the
    /// caller can keep polling hard.
    ///
    /// Use the same service type on every call: connection state lives in the stack between
    /// polls (hence `S::Conn: 'static`); a connection whose state has another type is
    /// aborted.
    pub fn poll<S>(&mut self, now_ms: u64, service: &mut S) -> bool
    where
        S: Service,
        S::Conn: 'static,
    {
        let now = instant(now_ms);
        let before = self.stats();
        self.device.unblock_transmit();

        self.iface.poll_maintenance(now);
        for _ in 0..MAX_INGRESS_FRAMES_PER_POLL {
            match self
                .iface
                .poll_ingress_single(now, &mut self.device, &mut self.sockets)
            {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => self.promote_listeners(now_ms),
            }
        }
        self.egress(now);

        let mut progressed = match self.dhcp {
            Some(handle) => addr::process_dhcp(&mut self.iface, &mut self.sockets, handle),
            None => false,
        };
        self.promote_listeners(now_ms);
        progressed |= self.shed_waiting(service, now_ms);
        progressed |= self.serve(now_ms, service);
        self.egress(now);
        self.reap();
        self.replenish_listeners();

        progressed || activity(&self.stats()) != activity(&before)
    }

    /// Milliseconds until the stack needs polling again even without traffic (smoltcp's
    /// poll delay, connection deadlines); `None` = only on traffic.
    ///
    /// The service's own timing is not included: while connections are open and the service
    /// may produce output on its own (e.g. when a job finishes), poll at the service's pace too.
    pub fn poll_delay_ms(&mut self, now_ms: u64) -> Option<u64> {
        let stack = self
            .iface
            .poll_delay(instant(now_ms), &self.sockets)
            .map(|delay| delay.total_millis());
        let deadline = self
            .connections
            .iter()
            .map(|conn| conn.deadline_ms(&self.config).saturating_sub(now_ms))
            .min();
        match (stack, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Current IPv4 address and prefix (after DHCP or static).
    pub fn ipv4_address(&self) -> Option<([u8; 4], u8)> {
        addr::current(&self.iface).map(|settings| (settings.address, settings.prefix_len))
    }

    /// Current default gateway, if any.
    pub fn ipv4_gateway(&self) -> Option<[u8; 4]> {
        addr::current(&self.iface).and_then(|settings| settings.gateway)
    }

    /// The NIC.
    pub fn nic(&self) -> &N {
        self.device.nic()
    }

    /// The NIC, mutably (e.g. to service its transmit ring).
    pub fn nic_mut(&mut self) -> &mut N {
        self.device.nic_mut()
    }

    /// Counters since creation.
    pub fn stats(&self) -> NetStats {
        let frames = self.device.counters();
        NetStats {
            frames_received: frames.received,
            frames_transmitted: frames.transmitted,
            transmit_dropped: frames.transmit_dropped,
            receive_errors: frames.receive_errors,
            ..self.stats
        }
    }

    /// The configuration in use (sanitized).
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Sockets currently listening.
    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }

    /// Connections in the table (handshaking, open or closing).
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    fn egress(&mut self, now: Instant) {
        for _ in 0..MAX_EGRESS_ROUNDS {
            let result = self
                .iface
                .poll_egress(now, &mut self.device, &mut self.sockets);
            if result == PollResult::None {
                break;
            }
        }
    }

    /// Moves listeners that left LISTEN (a SYN arrived) to the connection table and
    /// replaces them.
    fn promote_listeners(&mut self, now_ms: u64) {
        let mut index = 0;
        while let Some(&(handle, port)) = self.listeners.get(index) {
            if self.sockets.get::<tcp::Socket>(handle).is_listening() {
                index += 1;
            } else {
                self.listeners.swap_remove(index);
                self.connections.push(Connection::new(handle, port, now_ms));
            }
        }
        self.replenish_listeners();
    }

    /// When the connection table is full and listeners are missing, resets the
    /// longest-waiting connections, one per missing listener (see "Shedding").
    fn shed_waiting<S>(&mut self, service: &S, now_ms: u64) -> bool
    where
        S: Service,
        S::Conn: 'static,
    {
        let pending = self.connections.iter().filter(|conn| conn.shed).count();
        let live = self.connections.len() - pending;
        if self.listeners.len() + live < self.config.max_sockets() {
            return false; // `replenish_listeners` has room
        }
        let missing = self
            .config
            .listeners
            .saturating_sub(self.listeners.len() + pending);
        let mut shed_any = false;
        for _ in 0..missing {
            let victim = self
                .connections
                .iter()
                .enumerate()
                .filter_map(|(index, conn)| conn.waiting_since(service).map(|t| (t, index)))
                .filter(|(since, _)| now_ms.saturating_sub(*since) >= SHED_GRACE_MS)
                .min();
            let Some((_, index)) = victim else { break };
            let Some(conn) = self.connections.get_mut(index) else {
                break;
            };
            conn.shed = true;
            self.sockets.get_mut::<tcp::Socket>(conn.handle).abort();
            self.stats.connections_shed += 1;
            shed_any = true;
        }
        shed_any
    }

    /// Opens listening sockets until each port has its listeners or the socket limit is
    /// reached, reusing spare sockets before allocating new ones.
    fn replenish_listeners(&mut self) {
        let ports = [Some(self.config.port), self.config.second_port];
        for port in ports.into_iter().flatten() {
            let wanted = self.config.listeners_on(port);
            while !self.listen_failed
                && self.listeners.iter().filter(|(_, p)| *p == port).count() < wanted
                && self.listeners.len() + self.connections.len() < self.config.max_sockets()
            {
                // Spares were counted in the limit while they were connections, so reusing
                // one never exceeds it; allocating is only needed while the pool still grows.
                let handle = match self.spare.pop() {
                    Some(handle) => handle,
                    None => {
                        let mut socket = tcp::Socket::new(
                            tcp::SocketBuffer::new(alloc::vec![0; self.config.rx_buffer]),
                            tcp::SocketBuffer::new(alloc::vec![0; self.config.tx_buffer]),
                        );
                        // Responses are written in large chunks; Nagle would only add
                        // delayed-ACK stalls.
                        socket.set_nagle_enabled(false);
                        self.sockets.add(socket)
                    }
                };
                if self
                    .sockets
                    .get_mut::<tcp::Socket>(handle)
                    .listen(port)
                    .is_err()
                {
                    log::warn!("net: cannot listen on port {port}");
                    self.listen_failed = true;
                    self.spare.push(handle);
                    return;
                }
                self.listeners.push((handle, port));
            }
        }
    }

    fn serve<S>(&mut self, now_ms: u64, service: &mut S) -> bool
    where
        S: Service,
        S::Conn: 'static,
    {
        let mut progressed = false;
        for conn in &mut self.connections {
            let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            progressed |=
                serve_connection(conn, socket, service, &mut self.stats, &self.config, now_ms);
        }
        progressed
    }

    /// Releases connections whose socket is closed or in TIME-WAIT (after egress, so an RST
    /// or final ACK has gone out), keeping the sockets for reuse.
    fn reap(&mut self) {
        let mut index = 0;
        while let Some(conn) = self.connections.get(index) {
            let state = self.sockets.get::<tcp::Socket>(conn.handle).state();
            if !matches!(state, State::Closed | State::TimeWait) {
                index += 1;
                continue;
            }
            let conn = self.connections.swap_remove(index);
            if conn.app.is_some() {
                self.stats.connections_closed += 1;
            }
            self.spare.push(conn.handle);
        }
    }
}

/// The counters whose change means "something happened" (drops alone do not).
fn activity(stats: &NetStats) -> [u64; 6] {
    [
        stats.frames_received,
        stats.frames_transmitted,
        stats.connections_accepted,
        stats.connections_closed,
        stats.bytes_received,
        stats.bytes_sent,
    ]
}

/// One poll of one connection; returns whether it made progress.
fn serve_connection<S>(
    conn: &mut Connection,
    socket: &mut tcp::Socket<'_>,
    service: &mut S,
    stats: &mut NetStats,
    config: &ServerConfig,
    now_ms: u64,
) -> bool
where
    S: Service,
    S::Conn: 'static,
{
    let mut progressed = false;
    let queued = socket.send_queue();
    if queued < conn.queued {
        progressed = true; // the peer acknowledged data
    }
    conn.queued = queued;

    match socket.state() {
        // Finished: reaped after this poll's egress.
        State::Closed | State::TimeWait => return false,
        // A RST during the handshake returns a socket to LISTEN; it was already replaced
        // in the pool, so close it and let `reap` keep it as a spare.
        State::Listen => {
            socket.abort();
            return false;
        }
        State::SynReceived | State::SynSent if conn.app.is_none() => {
            return enforce_deadline(conn, socket, stats, config, now_ms, false);
        }
        _ => {}
    }

    if conn.app.is_none() {
        conn.app = Some(Box::new(service.open_on(now_ms, conn.port)));
        stats.connections_accepted += 1;
        progressed = true;
    }
    let Some(app) = conn
        .app
        .as_mut()
        .and_then(|app| app.downcast_mut::<S::Conn>())
    else {
        // Polled with a different service type than the one that opened the connection.
        socket.abort();
        stats.connections_aborted += 1;
        return true;
    };

    while socket.can_recv() {
        let received = socket.recv(|data| {
            service.on_receive(app, data, now_ms);
            (data.len(), data.len())
        });
        match received {
            Ok(n) if n > 0 => {
                stats.bytes_received += n as u64;
                progressed = true;
            }
            _ => break,
        }
    }

    if !conn.peer_closed && peer_fin_received(socket.state()) && !socket.can_recv() {
        conn.peer_closed = true;
        service.on_peer_closed(app, now_ms);
        progressed = true;
    }

    match service.poll(app, now_ms) {
        ConnState::Open => {}
        ConnState::CloseAfterFlush => {
            if !conn.closing {
                conn.closing = true;
                progressed = true; // start the close deadline now
            }
        }
        ConnState::Abort => {
            socket.abort();
            stats.connections_aborted += 1;
            return true;
        }
    }

    if socket.may_send() {
        loop {
            let output = service.output(app);
            if output.is_empty() {
                break;
            }
            match socket.send_slice(output) {
                Ok(n) if n > 0 => {
                    service.on_sent(app, n);
                    stats.bytes_sent += n as u64;
                    progressed = true;
                }
                _ => break,
            }
        }
    }
    conn.queued = socket.send_queue();

    if conn.closing && !conn.fin_sent && service.output(app).is_empty() {
        socket.close();
        conn.fin_sent = true;
        progressed = true;
    }

    enforce_deadline(conn, socket, stats, config, now_ms, progressed)
}

/// Records progress or aborts the connection if its deadline passed; returns `progressed`
/// or whether it was aborted.
fn enforce_deadline(
    conn: &mut Connection,
    socket: &mut tcp::Socket<'_>,
    stats: &mut NetStats,
    config: &ServerConfig,
    now_ms: u64,
    progressed: bool,
) -> bool {
    if progressed {
        conn.last_progress_ms = now_ms;
        return true;
    }
    if now_ms >= conn.deadline_ms(config) {
        socket.abort();
        if conn.app.is_some() {
            stats.connections_timed_out += 1;
        } else {
            stats.handshakes_timed_out += 1;
        }
        return true;
    }
    false
}

#[cfg(test)]
mod tests;
