//! `embedded-io` adapters over smoltcp TCP sockets.
//!
//! [`TcpStream`] borrows a `smoltcp::socket::tcp::Socket` and implements
//! `embedded_io::{Read, Write, ReadReady, WriteReady}` **without blocking**: nothing here
//! polls the interface, so an operation that would have to wait for the network returns
//! [`TcpIoError::WouldBlock`] instead (its [`ErrorKind`] is `Interrupted`, "retry later").
//! Poll the interface and retry; `read_ready`/`write_ready` say whether the next call will
//! make progress.
//!
//! Semantics:
//! - `read` returns `Ok(n > 0)` with buffered data, `Ok(0)` only for an empty `buf` or at
//!   end of stream (the peer's FIN arrived and all data before it was read),
//!   `Err(WouldBlock)` while the connection is being set up or no data is buffered, and
//!   `Err(NotConnected)` once the socket is closed or reset (smoltcp does not tell a reset
//!   from a completed close).
//! - `write` copies as much as fits into the send buffer: `Ok(n > 0)`, `Ok(0)` only for an
//!   empty `buf`, `Err(WouldBlock)` when the buffer is full or the handshake is not done,
//!   `Err(WriteClosed)` after our side sent FIN, `Err(NotConnected)` once closed.
//! - `flush` succeeds once every byte written has been acknowledged by the peer, else
//!   `Err(WouldBlock)`.

use embedded_io::{ErrorKind, ErrorType, Read, ReadReady, Write, WriteReady};
use smoltcp::socket::tcp::{Socket, State};

/// Why a [`TcpStream`] operation did not transfer data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TcpIoError {
    /// The operation needs the network to make progress: poll the interface and retry.
    #[error("operation would block; poll the interface and retry")]
    WouldBlock,
    /// Our side already sent FIN; no more data can be written.
    #[error("the sending half of the connection is closed")]
    WriteClosed,
    /// The socket is closed, reset or not connected.
    #[error("the socket is not connected")]
    NotConnected,
}

impl embedded_io::Error for TcpIoError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::WouldBlock => ErrorKind::Interrupted,
            Self::WriteClosed => ErrorKind::BrokenPipe,
            Self::NotConnected => ErrorKind::NotConnected,
        }
    }
}

/// Whether the peer's FIN has been received (the receive half is finished).
pub(crate) fn peer_fin_received(state: State) -> bool {
    matches!(
        state,
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait
    )
}

/// Non-blocking `embedded-io` view of one smoltcp TCP socket; see the [module docs](self).
#[derive(Debug)]
pub struct TcpStream<'s, 'b> {
    socket: &'s mut Socket<'b>,
}

impl<'s, 'b> TcpStream<'s, 'b> {
    /// Wraps `socket`.
    pub fn new(socket: &'s mut Socket<'b>) -> Self {
        Self { socket }
    }

    /// The wrapped socket.
    pub fn socket(&mut self) -> &mut Socket<'b> {
        self.socket
    }

    /// Closes the sending half (FIN after the queued data), like `shutdown(SHUT_WR)`.
    pub fn close(&mut self) {
        self.socket.close();
    }

    fn read_status(&self) -> Result<(), TcpIoError> {
        if self.socket.can_recv() || peer_fin_received(self.socket.state()) {
            return Ok(());
        }
        match self.socket.state() {
            State::Closed | State::Listen => Err(TcpIoError::NotConnected),
            _ => Err(TcpIoError::WouldBlock),
        }
    }

    fn write_status(&self) -> Result<(), TcpIoError> {
        match self.socket.state() {
            State::Established | State::CloseWait => {
                if self.socket.can_send() {
                    Ok(())
                } else {
                    Err(TcpIoError::WouldBlock)
                }
            }
            State::SynSent | State::SynReceived => Err(TcpIoError::WouldBlock),
            State::FinWait1 | State::FinWait2 | State::Closing | State::LastAck => {
                Err(TcpIoError::WriteClosed)
            }
            State::Closed | State::Listen | State::TimeWait => Err(TcpIoError::NotConnected),
        }
    }
}

impl ErrorType for TcpStream<'_, '_> {
    type Error = TcpIoError;
}

impl Read for TcpStream<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, TcpIoError> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.read_status()?;
        if !self.socket.can_recv() {
            return Ok(0); // end of stream
        }
        // `can_recv` implies `may_recv`, so this cannot fail; map defensively anyway.
        self.socket
            .recv_slice(buf)
            .map_err(|_| TcpIoError::NotConnected)
    }
}

impl ReadReady for TcpStream<'_, '_> {
    fn read_ready(&mut self) -> Result<bool, TcpIoError> {
        match self.read_status() {
            Ok(()) => Ok(true),
            Err(TcpIoError::WouldBlock) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

impl Write for TcpStream<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, TcpIoError> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.write_status()?;
        match self.socket.send_slice(buf) {
            Ok(0) => Err(TcpIoError::WouldBlock),
            Ok(n) => Ok(n),
            Err(_) => Err(TcpIoError::NotConnected),
        }
    }

    fn flush(&mut self) -> Result<(), TcpIoError> {
        if self.socket.send_queue() == 0 {
            return Ok(());
        }
        match self.socket.state() {
            State::Closed | State::Listen | State::TimeWait => Err(TcpIoError::NotConnected),
            _ => Err(TcpIoError::WouldBlock),
        }
    }
}

impl WriteReady for TcpStream<'_, '_> {
    fn write_ready(&mut self) -> Result<bool, TcpIoError> {
        match self.write_status() {
            Ok(()) => Ok(true),
            Err(TcpIoError::WouldBlock) => Ok(false),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{Peer, QueueNic};
    use alloc::vec::Vec;
    use embedded_io::Error as _;
    use smoltcp::iface::SocketHandle;

    /// Two plain smoltcp peers joined by an in-memory wire, one connected socket each.
    struct Link {
        a: Peer,
        b: Peer,
        a_sock: SocketHandle,
        b_sock: SocketHandle,
        now: u64,
    }

    impl Link {
        fn new(rx_buffer: usize) -> Self {
            let (nic_a, nic_b) = QueueNic::pair();
            let mut a = Peer::new(nic_a, [10, 9, 0, 1], 0);
            let mut b = Peer::new(nic_b, [10, 9, 0, 2], 0);
            let b_sock = b.listen(7000, rx_buffer);
            let a_sock = a.connect([10, 9, 0, 2], 7000, 40_000);
            let mut link = Self {
                a,
                b,
                a_sock,
                b_sock,
                now: 0,
            };
            link.settle();
            assert_eq!(link.a.socket(a_sock).state(), State::Established);
            link
        }

        fn settle(&mut self) {
            for _ in 0..1000 {
                let moved = self.a.poll(self.now) | self.b.poll(self.now);
                if !moved {
                    self.now += 20; // let delayed ACKs fire
                    if !(self.a.poll(self.now) | self.b.poll(self.now)) {
                        return;
                    }
                }
            }
            panic!("link did not settle");
        }
    }

    #[test]
    fn error_kinds_follow_the_documented_mapping() {
        assert_eq!(TcpIoError::WouldBlock.kind(), ErrorKind::Interrupted);
        assert_eq!(TcpIoError::WriteClosed.kind(), ErrorKind::BrokenPipe);
        assert_eq!(TcpIoError::NotConnected.kind(), ErrorKind::NotConnected);
    }

    #[test]
    fn unconnected_socket_is_not_connected_and_empty_buffers_are_no_ops() {
        let mut socket = Socket::new(
            smoltcp::socket::tcp::SocketBuffer::new(alloc::vec![0; 64]),
            smoltcp::socket::tcp::SocketBuffer::new(alloc::vec![0; 64]),
        );
        let mut stream = TcpStream::new(&mut socket);
        assert_eq!(stream.read(&mut [0; 4]), Err(TcpIoError::NotConnected));
        assert_eq!(stream.write(b"x"), Err(TcpIoError::NotConnected));
        assert_eq!(stream.read_ready(), Err(TcpIoError::NotConnected));
        assert_eq!(stream.write_ready(), Err(TcpIoError::NotConnected));
        assert_eq!(stream.read(&mut []), Ok(0));
        assert_eq!(stream.write(&[]), Ok(0));
        assert_eq!(stream.flush(), Ok(()));
    }

    #[test]
    fn write_read_flush_and_eof_through_real_tcp() {
        let mut link = Link::new(4096);
        let (a_sock, b_sock) = (link.a_sock, link.b_sock);

        let mut reader = TcpStream::new(link.b.socket(b_sock));
        assert_eq!(reader.read_ready(), Ok(false));
        assert_eq!(reader.read(&mut [0; 8]), Err(TcpIoError::WouldBlock));

        let mut writer = TcpStream::new(link.a.socket(a_sock));
        assert_eq!(writer.write_ready(), Ok(true));
        assert_eq!(writer.write(b"hello, stream"), Ok(13));
        assert_eq!(
            writer.flush(),
            Err(TcpIoError::WouldBlock),
            "not acknowledged yet"
        );
        link.settle();

        let mut writer = TcpStream::new(link.a.socket(a_sock));
        assert_eq!(writer.flush(), Ok(()), "acknowledged after settling");

        let mut reader = TcpStream::new(link.b.socket(b_sock));
        assert_eq!(reader.read_ready(), Ok(true));
        let mut buf = [0; 5];
        assert_eq!(reader.read(&mut buf), Ok(5));
        assert_eq!(&buf, b"hello");
        let mut rest = [0; 64];
        assert_eq!(reader.read(&mut rest), Ok(8));
        assert_eq!(&rest[..8], b", stream");

        TcpStream::new(link.a.socket(a_sock)).close();
        link.settle();
        let mut writer = TcpStream::new(link.a.socket(a_sock));
        assert_eq!(writer.write(b"late"), Err(TcpIoError::WriteClosed));
        let mut reader = TcpStream::new(link.b.socket(b_sock));
        assert_eq!(reader.read_ready(), Ok(true), "EOF is ready");
        assert_eq!(reader.read(&mut rest), Ok(0), "EOF");
        // The other direction still works after a half close.
        assert_eq!(reader.write(b"bye"), Ok(3));
        link.settle();
        let mut writer = TcpStream::new(link.a.socket(a_sock));
        assert_eq!(writer.read(&mut rest), Ok(3));
    }

    #[test]
    fn full_send_buffer_would_block_until_the_peer_reads() {
        let mut link = Link::new(4096);
        let (a_sock, b_sock) = (link.a_sock, link.b_sock);
        let payload: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        let mut received = Vec::new();
        let mut would_block_seen = false;
        for _ in 0..10_000 {
            if received.len() == payload.len() {
                break;
            }
            let mut writer = TcpStream::new(link.a.socket(a_sock));
            while sent < payload.len() {
                match writer.write(&payload[sent..]) {
                    Ok(n) => sent += n,
                    Err(TcpIoError::WouldBlock) => {
                        assert_eq!(writer.write_ready(), Ok(false));
                        would_block_seen = true;
                        break;
                    }
                    Err(error) => panic!("unexpected {error:?}"),
                }
            }
            link.settle();
            let mut reader = TcpStream::new(link.b.socket(b_sock));
            let mut buf = [0; 300];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                received.extend_from_slice(&buf[..n]);
            }
        }
        assert!(would_block_seen, "the 64 KiB test send buffer must fill up");
        assert_eq!(received, payload);
    }
}
