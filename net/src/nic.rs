//! The network-card seam ([`Nic`]) and [`NicDevice`], which presents any `Nic` to smoltcp as
//! an Ethernet `smoltcp::phy::Device`.
//!
//! The adapter owns one receive and one transmit buffer of the NIC's frame size, allocated
//! once, so moving frames never allocates. When the NIC refuses a frame
//! ([`Nic::transmit`] returns `false`) the frame is dropped, counted, and the adapter stops
//! handing out transmit tokens until [`NicDevice::unblock_transmit`] is called (once per
//! [`NetStack::poll`](crate::NetStack::poll) pass): smoltcp then keeps the remaining
//! segments queued instead of generating frames that would be dropped too, and TCP
//! retransmits the one frame that was lost. A NIC that implements [`Nic::transmit_ready`]
//! avoids even that loss.

use alloc::vec;
use alloc::vec::Vec;

use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

/// A network interface card: the appliance implements it over UEFI SNP; tests over an
/// in-memory pair.
pub trait Nic {
    /// The card's MAC address.
    fn mac_address(&self) -> [u8; 6];
    /// Largest Ethernet frame (without FCS) the NIC sends/receives, e.g. 1514.
    fn max_frame_len(&self) -> usize;
    /// Receive one frame into `buf`; `Some(len)` if one was waiting.
    ///
    /// A `len` larger than `buf.len()` means the frame did not fit; the adapter drops it
    /// and counts it in [`FrameCounters::receive_errors`].
    fn receive(&mut self, buf: &mut [u8]) -> Option<usize>;
    /// Queue one frame for transmission; `false` if the NIC has no room right now (frame
    /// dropped; TCP retransmits).
    fn transmit(&mut self, frame: &[u8]) -> bool;
    /// Whether [`transmit`](Self::transmit) would accept a frame now. Optional: when the
    /// NIC can tell (e.g. free transmit buffers after recycling completed ones), returning
    /// `false` keeps segments queued in TCP instead of losing a frame and waiting for a
    /// retransmission. The default says "always".
    fn transmit_ready(&mut self) -> bool {
        true
    }
}

/// Smallest frame size the adapter advertises to smoltcp: a 14-byte Ethernet header plus
/// the 576-byte minimum IPv4 datagram every host must accept (RFC 791).
pub const MIN_FRAME_LEN: usize = 14 + 576;

/// Largest frame size the adapter advertises (jumbo frames); larger NIC reports are clamped.
pub const MAX_FRAME_LEN: usize = 9216;

/// How many oversized frames one [`Device::receive`] call skips before giving up for this
/// pass, so a misbehaving driver cannot keep the adapter in a loop.
const MAX_SKIPPED_FRAMES_PER_RECEIVE: usize = 16;

/// Receive-buffer room beyond the NIC's advertised frame length. OVMF's virtio-net SNP driver
/// answered every full-size TCP segment from QEMU's user network with `BUFFER_TOO_SMALL` when
/// handed exactly MediaHeaderSize + MaxPacketSize (1514) bytes, so request bodies longer than
/// one segment never arrived; with this room they do (measured with 2 MiB uploads).
const RX_SLACK: usize = 2048;

/// Frame counters kept by [`NicDevice`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameCounters {
    /// Frames received and handed to smoltcp.
    pub received: u64,
    /// Frames the NIC accepted for transmission.
    pub transmitted: u64,
    /// Frames dropped because [`Nic::transmit`] returned `false`.
    pub transmit_dropped: u64,
    /// Frames dropped because the NIC reported a length larger than the receive buffer.
    pub receive_errors: u64,
}

/// A `smoltcp::phy::Device` (Ethernet medium) over a [`Nic`].
#[derive(Debug)]
pub struct NicDevice<N> {
    nic: N,
    frame_len: usize,
    rx_buffer: Vec<u8>,
    tx_buffer: Vec<u8>,
    transmit_blocked: bool,
    counters: FrameCounters,
}

impl<N: Nic> NicDevice<N> {
    /// Wraps `nic`, sizing the frame buffers from [`Nic::max_frame_len`] clamped to
    /// [`MIN_FRAME_LEN`]..=[`MAX_FRAME_LEN`].
    pub fn new(nic: N) -> Self {
        let frame_len = nic.max_frame_len().clamp(MIN_FRAME_LEN, MAX_FRAME_LEN);
        Self {
            nic,
            frame_len,
            rx_buffer: vec![0; frame_len + RX_SLACK],
            tx_buffer: vec![0; frame_len],
            transmit_blocked: false,
            counters: FrameCounters::default(),
        }
    }

    /// The wrapped NIC.
    pub fn nic(&self) -> &N {
        &self.nic
    }

    /// The wrapped NIC, mutably.
    pub fn nic_mut(&mut self) -> &mut N {
        &mut self.nic
    }

    /// The frame size advertised to smoltcp (Ethernet header included, FCS excluded).
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Frame counters so far.
    pub fn counters(&self) -> FrameCounters {
        self.counters
    }

    /// Whether the NIC refused a frame since the last [`unblock_transmit`](Self::unblock_transmit).
    pub fn transmit_blocked(&self) -> bool {
        self.transmit_blocked
    }

    /// Lets smoltcp try to transmit again after the NIC refused a frame.
    pub fn unblock_transmit(&mut self) {
        self.transmit_blocked = false;
    }
}

/// Receive token of [`NicDevice`]: the frame sits in the adapter's receive buffer.
#[derive(Debug)]
pub struct NicRxToken<'a> {
    frame: &'a [u8],
}

impl RxToken for NicRxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

/// Transmit token of [`NicDevice`]: smoltcp builds the frame in the adapter's transmit
/// buffer, then the token hands it to [`Nic::transmit`].
#[derive(Debug)]
pub struct NicTxToken<'a, N> {
    nic: &'a mut N,
    buffer: &'a mut Vec<u8>,
    blocked: &'a mut bool,
    counters: &'a mut FrameCounters,
}

impl<N: Nic> TxToken for NicTxToken<'_, N> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        // smoltcp never builds frames above the advertised MTU; growing keeps this total
        // (no panic) should that ever change.
        if self.buffer.len() < len {
            self.buffer.resize(len, 0);
        }
        let frame = self.buffer.get_mut(..len).unwrap_or_default();
        let result = f(frame);
        if self.nic.transmit(frame) {
            self.counters.transmitted += 1;
        } else {
            self.counters.transmit_dropped += 1;
            *self.blocked = true;
        }
        result
    }
}

impl<N: Nic> Device for NicDevice<N> {
    type RxToken<'a>
        = NicRxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = NicTxToken<'a, N>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let Self {
            nic,
            rx_buffer,
            tx_buffer,
            transmit_blocked,
            counters,
            ..
        } = self;
        let mut len = None;
        for _ in 0..MAX_SKIPPED_FRAMES_PER_RECEIVE {
            let got = nic.receive(rx_buffer)?;
            if got <= rx_buffer.len() {
                len = Some(got);
                break;
            }
            counters.receive_errors += 1;
        }
        let frame = rx_buffer.get(..len?)?;
        counters.received += 1;
        Some((
            NicRxToken { frame },
            NicTxToken {
                nic,
                buffer: tx_buffer,
                blocked: transmit_blocked,
                counters,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if self.transmit_blocked || !self.nic.transmit_ready() {
            return None;
        }
        Some(NicTxToken {
            nic: &mut self.nic,
            buffer: &mut self.tx_buffer,
            blocked: &mut self.transmit_blocked,
            counters: &mut self.counters,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.frame_len;
        caps.max_burst_size = None;
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::QueueNic;

    fn now() -> Instant {
        Instant::from_millis(0)
    }

    #[test]
    fn frame_len_is_clamped_to_sane_bounds() {
        let (mut small, _) = QueueNic::pair();
        small.frame_len = 60;
        assert_eq!(NicDevice::new(small).frame_len(), MIN_FRAME_LEN);
        let (mut big, _) = QueueNic::pair();
        big.frame_len = 1 << 20;
        assert_eq!(NicDevice::new(big).frame_len(), MAX_FRAME_LEN);
        let (normal, _) = QueueNic::pair();
        let device = NicDevice::new(normal);
        assert_eq!(device.frame_len(), 1514);
        assert_eq!(device.capabilities().max_transmission_unit, 1514);
        assert_eq!(device.capabilities().medium, Medium::Ethernet);
    }

    #[test]
    fn received_frame_reaches_the_rx_token_and_is_counted() {
        let (a, b) = QueueNic::pair();
        b.send_raw(&[1, 2, 3, 4]);
        let mut device = NicDevice::new(a);
        let (rx, _tx) = device.receive(now()).expect("a frame is waiting");
        assert_eq!(rx.consume(|frame| frame.to_vec()), [1, 2, 3, 4]);
        assert_eq!(device.counters().received, 1);
        assert!(device.receive(now()).is_none());
    }

    #[test]
    fn oversized_frame_is_skipped_and_counted() {
        let (a, b) = QueueNic::pair();
        b.send_raw(&[7; 1514 + RX_SLACK + 1]);
        b.send_raw(&[9; 10]);
        let mut device = NicDevice::new(a);
        let (rx, _tx) = device.receive(now()).expect("the second frame fits");
        assert_eq!(rx.consume(|frame| frame.len()), 10);
        assert_eq!(device.counters().receive_errors, 1);
        assert_eq!(device.counters().received, 1);
    }

    #[test]
    fn refused_transmit_is_counted_and_blocks_until_unblocked() {
        let (mut a, b) = QueueNic::pair();
        a.tx_capacity = 1;
        let mut device = NicDevice::new(a);
        let tx = device.transmit(now()).expect("not blocked yet");
        tx.consume(3, |buf| buf.copy_from_slice(&[1, 2, 3]));
        let tx = device.transmit(now()).expect("not blocked yet");
        tx.consume(3, |buf| buf.copy_from_slice(&[4, 5, 6]));
        assert_eq!(device.counters().transmitted, 1);
        assert_eq!(device.counters().transmit_dropped, 1);
        assert!(device.transmit_blocked());
        assert!(device.transmit(now()).is_none());
        assert_eq!(b.take_raw(), Some(alloc::vec![1, 2, 3]));
        device.unblock_transmit();
        let tx = device.transmit(now()).expect("unblocked");
        tx.consume(1, |buf| buf[0] = 8);
        assert_eq!(b.take_raw(), Some(alloc::vec![8]));
    }

    #[test]
    fn transmit_ready_false_withholds_tokens_without_dropping() {
        let (mut a, b) = QueueNic::pair();
        a.tx_capacity = 1;
        a.report_ready = true;
        let mut device = NicDevice::new(a);
        let tx = device.transmit(now()).expect("room for one");
        tx.consume(1, |buf| buf[0] = 1);
        assert!(device.transmit(now()).is_none(), "NIC says it is full");
        assert_eq!(device.counters().transmit_dropped, 0);
        assert!(!device.transmit_blocked());
        assert_eq!(b.take_raw(), Some(alloc::vec![1]));
        assert!(device.transmit(now()).is_some(), "room again");
    }

    #[test]
    fn oversized_transmit_request_does_not_panic() {
        let (a, b) = QueueNic::pair();
        let mut device = NicDevice::new(a);
        let tx = device.transmit(now()).expect("not blocked");
        tx.consume(3000, |buf| buf.fill(5));
        assert_eq!(b.take_raw().map(|f| f.len()), Some(3000));
    }
}
