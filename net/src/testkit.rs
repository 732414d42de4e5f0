//! Test-only helpers: an in-memory Ethernet wire ([`QueueNic`] pairs) and [`Peer`], a plain
//! smoltcp interface on the far side of the wire that plays the client, so tests exchange
//! real TCP segments with the server.

use alloc::collections::VecDeque;
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

use crate::nic::{Nic, NicDevice};

type FrameQueue = Rc<RefCell<VecDeque<Vec<u8>>>>;

/// One end of an in-memory Ethernet wire.
#[derive(Debug)]
pub struct QueueNic {
    pub mac: [u8; 6],
    pub frame_len: usize,
    /// Frames that may wait in the outgoing queue; `transmit` refuses beyond it.
    pub tx_capacity: usize,
    /// Refuse every n-th transmit (simulates a NIC ring that is momentarily full).
    pub refuse_every: Option<u64>,
    /// Implement `transmit_ready` (room in the outgoing queue) instead of the default.
    pub report_ready: bool,
    transmits: u64,
    rx: FrameQueue,
    tx: FrameQueue,
}

impl QueueNic {
    /// Two NICs joined by a wire (MACs 02:00:00:00:00:01 and :02).
    pub fn pair() -> (Self, Self) {
        let a_to_b = FrameQueue::default();
        let b_to_a = FrameQueue::default();
        let end = |last, rx: &FrameQueue, tx: &FrameQueue| Self {
            mac: [2, 0, 0, 0, 0, last],
            frame_len: 1514,
            tx_capacity: 4096,
            refuse_every: None,
            report_ready: false,
            transmits: 0,
            rx: rx.clone(),
            tx: tx.clone(),
        };
        (end(1, &b_to_a, &a_to_b), end(2, &a_to_b, &b_to_a))
    }

    /// Puts a frame on the wire towards the other end, bypassing the capacity limit.
    pub fn send_raw(&self, frame: &[u8]) {
        self.tx.borrow_mut().push_back(frame.to_vec());
    }

    /// Takes the next frame that arrived from the other end.
    pub fn take_raw(&self) -> Option<Vec<u8>> {
        self.rx.borrow_mut().pop_front()
    }
}

impl Nic for QueueNic {
    fn mac_address(&self) -> [u8; 6] {
        self.mac
    }

    fn max_frame_len(&self) -> usize {
        self.frame_len
    }

    /// Copies what fits and reports the real length, like a driver whose buffer is too small.
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        let frame = self.rx.borrow_mut().pop_front()?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Some(frame.len())
    }

    fn transmit_ready(&mut self) -> bool {
        !self.report_ready || self.tx.borrow().len() < self.tx_capacity
    }

    fn transmit(&mut self, frame: &[u8]) -> bool {
        self.transmits += 1;
        if self
            .refuse_every
            .is_some_and(|n| self.transmits.is_multiple_of(n))
        {
            return false;
        }
        let mut tx = self.tx.borrow_mut();
        if tx.len() >= self.tx_capacity {
            return false;
        }
        tx.push_back(frame.to_vec());
        true
    }
}

/// A plain smoltcp host on the far end of the wire (the client side of the tests).
pub struct Peer {
    pub iface: Interface,
    pub device: NicDevice<QueueNic>,
    pub sockets: SocketSet<'static>,
}

impl Peer {
    /// A host with address `ip`/24.
    pub fn new(nic: QueueNic, ip: [u8; 4], now_ms: u64) -> Self {
        let mut device = NicDevice::new(nic);
        let mac = EthernetAddress(device.nic().mac);
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = u64::from(ip[3]) * 7919;
        let mut iface = Interface::new(config, &mut device, Instant::from_millis(now_ms as i64));
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::from(Ipv4Address::from(ip)), 24))
                .expect("room for one address");
        });
        Self {
            iface,
            device,
            sockets: SocketSet::new(vec![]),
        }
    }

    fn tcp_socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; rx]),
            tcp::SocketBuffer::new(vec![0; tx]),
        )
    }

    /// A listening socket on `port`.
    pub fn listen(&mut self, port: u16, rx_buffer: usize) -> SocketHandle {
        let mut socket = Self::tcp_socket(rx_buffer, 64 * 1024);
        socket.listen(port).expect("listen");
        self.sockets.add(socket)
    }

    /// A socket connecting from `local_port` to `ip:port` (64 KiB buffers).
    pub fn connect(&mut self, ip: [u8; 4], port: u16, local_port: u16) -> SocketHandle {
        self.connect_with(ip, port, local_port, 64 * 1024)
    }

    /// Like [`connect`](Self::connect) with a chosen receive buffer.
    pub fn connect_with(
        &mut self,
        ip: [u8; 4],
        port: u16,
        local_port: u16,
        rx_buffer: usize,
    ) -> SocketHandle {
        let mut socket = Self::tcp_socket(rx_buffer, 64 * 1024);
        socket
            .connect(
                self.iface.context(),
                (IpAddress::from(Ipv4Address::from(ip)), port),
                local_port,
            )
            .expect("connect");
        self.sockets.add(socket)
    }

    /// The TCP socket `handle`.
    pub fn socket(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// Runs the interface once; whether any frame moved.
    pub fn poll(&mut self, now_ms: u64) -> bool {
        self.device.unblock_transmit();
        let before = self.device.counters();
        self.iface.poll(
            Instant::from_millis(now_ms as i64),
            &mut self.device,
            &mut self.sockets,
        );
        self.device.counters() != before
    }

    /// smoltcp's advisory wait in milliseconds.
    pub fn poll_delay(&mut self, now_ms: u64) -> Option<u64> {
        self.iface
            .poll_delay(Instant::from_millis(now_ms as i64), &self.sockets)
            .map(|d| d.total_millis())
    }
}
