//! Host benchmark of the server path: a `NetStack` and a plain smoltcp client joined by
//! in-memory queues, virtual clock. Measures bulk response throughput (1 MiB responses with
//! CloseAfterFlush) and short request/response connections per second. Wall time is that
//! of both TCP stacks on one host core, so it bounds what the stack itself can do; the
//! appliance's real limit is the NIC (about 60 MB/s measured over SNP).
//!
//! Last line (stable, parseable):
//! `net-bench: bulk_mib_per_s=<f64> connections_per_s=<f64>`

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant as WallClock;

use net::smoltcp::iface::{Config, Interface, SocketSet};
use net::smoltcp::socket::tcp;
use net::smoltcp::time::Instant;
use net::smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use net::{ConnState, Ipv4Config, NetStack, Nic, NicDevice, ServerConfig, Service};

type Queue = Rc<RefCell<VecDeque<Vec<u8>>>>;

struct QueueNic {
    mac: [u8; 6],
    rx: Queue,
    tx: Queue,
}

impl Nic for QueueNic {
    fn mac_address(&self) -> [u8; 6] {
        self.mac
    }
    fn max_frame_len(&self) -> usize {
        1514
    }
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        let frame = self.rx.borrow_mut().pop_front()?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Some(frame.len())
    }
    fn transmit(&mut self, frame: &[u8]) -> bool {
        self.tx.borrow_mut().push_back(frame.to_vec());
        true
    }
}

/// Answers any request with `size` bytes, then closes.
struct Responder {
    body: Rc<Vec<u8>>,
}

struct Conn {
    body: Option<Rc<Vec<u8>>>,
    sent: usize,
}

impl Service for Responder {
    type Conn = Conn;
    fn open(&mut self, _now_ms: u64) -> Conn {
        Conn {
            body: None,
            sent: 0,
        }
    }
    fn on_receive(&mut self, conn: &mut Conn, _data: &[u8], _now_ms: u64) {
        conn.body.get_or_insert_with(|| self.body.clone());
    }
    fn output<'c>(&self, conn: &'c Conn) -> &'c [u8] {
        match &conn.body {
            Some(body) => body.get(conn.sent..).unwrap_or_default(),
            None => &[],
        }
    }
    fn on_sent(&mut self, conn: &mut Conn, n: usize) {
        conn.sent += n;
    }
    fn on_peer_closed(&mut self, _conn: &mut Conn, _now_ms: u64) {}
    fn poll(&mut self, conn: &mut Conn, _now_ms: u64) -> ConnState {
        if conn.body.is_some() {
            ConnState::CloseAfterFlush
        } else {
            ConnState::Open
        }
    }
}

struct Bench {
    now: u64,
    stack: NetStack<QueueNic>,
    service: Responder,
    iface: Interface,
    device: NicDevice<QueueNic>,
    sockets: SocketSet<'static>,
    next_port: u16,
}

impl Bench {
    fn new(size: usize) -> Self {
        let a = Queue::default();
        let b = Queue::default();
        let server_nic = QueueNic {
            mac: [2, 0, 0, 0, 0, 2],
            rx: a.clone(),
            tx: b.clone(),
        };
        let client_nic = QueueNic {
            mac: [2, 0, 0, 0, 0, 1],
            rx: b,
            tx: a,
        };
        let config = ServerConfig {
            ipv4: Ipv4Config::Static {
                address: [10, 0, 0, 2],
                prefix_len: 24,
                gateway: None,
            },
            ..ServerConfig::default()
        };
        let stack = NetStack::new(server_nic, config, 0, 1);
        let mut device = NicDevice::new(client_nic);
        let mac = HardwareAddress::Ethernet(EthernetAddress([2, 0, 0, 0, 0, 1]));
        let mut iface = Interface::new(Config::new(mac), &mut device, Instant::from_millis(0));
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::v4(10, 0, 0, 1), 24));
        });
        Self {
            now: 0,
            stack,
            service: Responder {
                body: Rc::new((0..size).map(|i| i as u8).collect()),
            },
            iface,
            device,
            sockets: SocketSet::new(vec![]),
            next_port: 1024,
        }
    }

    /// One request on a new connection; returns the response length.
    fn fetch(&mut self) -> usize {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
            tcp::SocketBuffer::new(vec![0; 4096]),
        );
        self.next_port = self.next_port.checked_add(1).unwrap_or(1024).max(1024);
        let remote = (IpAddress::from(Ipv4Address::new(10, 0, 0, 2)), 8080);
        socket
            .connect(self.iface.context(), remote, self.next_port)
            .expect("connect");
        let handle = self.sockets.add(socket);
        let mut requested = false;
        let mut received = 0;
        let mut buf = vec![0; 64 * 1024];
        for _ in 0..10_000_000 {
            let server = self.stack.poll(self.now, &mut self.service);
            self.device.unblock_transmit();
            let before = self.device.counters();
            let at = Instant::from_millis(self.now as i64);
            self.iface.poll(at, &mut self.device, &mut self.sockets);
            let client = self.device.counters() != before;
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            if !requested && socket.may_send() {
                socket.send_slice(b"GET").expect("send");
                requested = true;
            }
            while let Ok(n @ 1..) = socket.recv_slice(&mut buf) {
                received += n;
            }
            if requested && !socket.may_recv() {
                socket.close();
                self.iface.poll(at, &mut self.device, &mut self.sockets);
                self.sockets.remove(handle);
                return received;
            }
            if !server && !client {
                self.now += 1; // let delayed ACKs and timers fire
            }
        }
        panic!("request did not finish");
    }
}

fn main() {
    const BULK: usize = 1 << 20;
    const BULK_ROUNDS: usize = 256;
    let mut bench = Bench::new(BULK);
    let start = WallClock::now();
    for _ in 0..BULK_ROUNDS {
        assert_eq!(bench.fetch(), BULK);
    }
    let secs = start.elapsed().as_secs_f64();
    let bulk_mib_per_s = BULK_ROUNDS as f64 / secs;
    println!("bulk: {BULK_ROUNDS} x 1 MiB in {secs:.3} s");

    const SMALL_ROUNDS: usize = 20_000;
    let mut bench = Bench::new(200);
    let start = WallClock::now();
    for _ in 0..SMALL_ROUNDS {
        assert_eq!(bench.fetch(), 200);
    }
    let secs = start.elapsed().as_secs_f64();
    let connections_per_s = SMALL_ROUNDS as f64 / secs;
    println!("small: {SMALL_ROUNDS} connections in {secs:.3} s");
    for _ in 0..10 {
        bench.now += 1;
        bench.stack.poll(bench.now, &mut bench.service);
    }
    let stats = bench.stack.stats();
    assert_eq!(stats.connections_closed, SMALL_ROUNDS as u64);
    assert_eq!(stats.transmit_dropped, 0);
    println!(
        "net-bench: bulk_mib_per_s={bulk_mib_per_s:.1} connections_per_s={connections_per_s:.0}"
    );
}
