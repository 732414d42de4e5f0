//! A 16550-compatible UART (the PC's COM1 at ports 0x3F8–0x3FF) whose transmitter writes
//! into the TD's console ring.
//!
//! Register map after the National Semiconductor PC16550D data sheet: with the divisor latch
//! access bit (LCR bit 7) clear, offset 0 is the receive/transmit register and offset 1 the
//! interrupt enable; with it set, offsets 0 and 1 are the divisor latch. Offset 2 reads the
//! interrupt identification (writes go to the FIFO control), 3 is the line control, 4 the
//! modem control, 5 the line status, 6 the modem status, 7 the scratch register.
//!
//! The transmitter is always empty (a byte written is in the ring at once), so the line
//! status always reports THRE and TEMT and the firmware's polled output never waits. Input
//! typed through the API ([`Serial16550::type_input`]) waits in a bounded receive queue; the
//! line status shows data ready while it is not empty. No interrupt is raised (the guest
//! polls, as firmware does).

use alloc::collections::VecDeque;
use alloc::sync::Arc;

use super::{AccessSize, PortIoDevice};
use crate::host::td::ConsoleRing;

/// The PC's first serial port.
pub const COM1_BASE: u16 = 0x3F8;
/// Ports a 16550 decodes.
pub const UART_PORTS: u16 = 8;

/// Bytes the receive queue holds; input beyond it is refused.
pub const RX_QUEUE_BYTES: usize = 4096;

/// Line status: data ready.
const LSR_DR: u8 = 1;
/// Line status: transmit holding register empty.
const LSR_THRE: u8 = 1 << 5;
/// Line status: transmitter empty.
const LSR_TEMT: u8 = 1 << 6;
/// Interrupt identification: no interrupt pending.
const IIR_NONE: u8 = 1;
/// Interrupt identification: FIFOs enabled (bits 7:6).
const IIR_FIFO: u8 = 0xC0;
/// FIFO control: enable.
const FCR_ENABLE: u8 = 1;
/// Line control: divisor latch access.
const LCR_DLAB: u8 = 1 << 7;
/// Modem status with carrier, data set ready and clear to send asserted.
const MSR_CONNECTED: u8 = 0xB0;

/// The registers a guest can write and read back.
#[derive(Clone, Copy, Default)]
struct Registers {
    ier: u8,
    fcr: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
}

/// A 16550 UART whose output goes to `console`.
pub struct Serial16550 {
    console: Arc<ConsoleRing>,
    regs: spin::Mutex<Registers>,
    rx: spin::Mutex<VecDeque<u8>>,
}

impl Serial16550 {
    /// A UART writing to `console`.
    pub fn new(console: Arc<ConsoleRing>) -> Self {
        Serial16550 {
            console,
            regs: spin::Mutex::new(Registers::default()),
            rx: spin::Mutex::new(VecDeque::new()),
        }
    }

    /// Queues `bytes` as received input; returns how many fit (the queue holds at most
    /// [`RX_QUEUE_BYTES`]).
    pub fn type_input(&self, bytes: &[u8]) -> usize {
        let mut rx = self.rx.lock();
        let room = RX_QUEUE_BYTES.saturating_sub(rx.len());
        let n = bytes.len().min(room);
        rx.extend(bytes.iter().take(n));
        n
    }
}

impl PortIoDevice for Serial16550 {
    fn read(&self, offset: u16, _size: AccessSize) -> u64 {
        let r = *self.regs.lock();
        let dlab = r.lcr & LCR_DLAB != 0;
        let [div_lo, div_hi] = r.divisor.to_le_bytes();
        let value = match offset {
            0 if dlab => div_lo,
            1 if dlab => div_hi,
            0 => self.rx.lock().pop_front().unwrap_or(0),
            1 => r.ier,
            2 => {
                if r.fcr & FCR_ENABLE != 0 {
                    IIR_NONE | IIR_FIFO
                } else {
                    IIR_NONE
                }
            }
            3 => r.lcr,
            4 => r.mcr,
            5 => {
                let ready = if self.rx.lock().is_empty() { 0 } else { LSR_DR };
                LSR_THRE | LSR_TEMT | ready
            }
            6 => MSR_CONNECTED,
            7 => r.scr,
            _ => 0xFF,
        };
        u64::from(value)
    }

    fn write(&self, offset: u16, _size: AccessSize, value: u64) {
        let byte = value.to_le_bytes()[0];
        let mut r = self.regs.lock();
        let dlab = r.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => r.divisor = (r.divisor & 0xFF00) | u16::from(byte),
            1 if dlab => r.divisor = (r.divisor & 0x00FF) | u16::from(byte) << 8,
            0 => {
                drop(r);
                self.console.push(&[byte]);
            }
            1 => r.ier = byte & 0x0F,
            2 => r.fcr = byte,
            3 => r.lcr = byte,
            4 => r.mcr = byte & 0x1F,
            7 => r.scr = byte,
            // Line and modem status are read-only.
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::devices::PortIoBus;

    fn com1() -> (PortIoBus, Arc<ConsoleRing>) {
        let console = Arc::new(ConsoleRing::new(64));
        let mut bus = PortIoBus::new();
        bus.insert(
            COM1_BASE,
            UART_PORTS,
            Arc::new(Serial16550::new(console.clone())),
        )
        .unwrap();
        (bus, console)
    }

    #[test]
    fn transmitted_bytes_reach_the_console_and_the_line_is_always_ready() {
        let (bus, console) = com1();
        for &b in b"ok\n" {
            assert_eq!(
                bus.read(COM1_BASE + 5, AccessSize::Byte) & u64::from(LSR_THRE),
                u64::from(LSR_THRE)
            );
            bus.write(COM1_BASE, AccessSize::Byte, u64::from(b));
        }
        assert_eq!(console.read(0, 16), (0, b"ok\n".to_vec()));
        // Nothing to receive: data-ready clear, receive buffer empty.
        assert_eq!(bus.read(COM1_BASE + 5, AccessSize::Byte) & 1, 0);
        assert_eq!(bus.read(COM1_BASE, AccessSize::Byte), 0);
    }

    #[test]
    fn typed_input_is_received_in_order_and_bounded() {
        let console = Arc::new(ConsoleRing::new(64));
        let uart = Serial16550::new(console);
        assert_eq!(uart.type_input(b"ls\r"), 3);
        let mut got = alloc::vec::Vec::new();
        while uart.read(5, AccessSize::Byte) & u64::from(LSR_DR) != 0 {
            got.push(uart.read(0, AccessSize::Byte) as u8);
        }
        assert_eq!(got, b"ls\r");
        let big = alloc::vec![b'x'; RX_QUEUE_BYTES + 10];
        assert_eq!(uart.type_input(&big), RX_QUEUE_BYTES);
        assert_eq!(uart.type_input(b"y"), 0);
    }

    #[test]
    fn divisor_latch_and_scratch_read_back_without_output() {
        let (bus, console) = com1();
        bus.write(COM1_BASE + 3, AccessSize::Byte, 0x83);
        bus.write(COM1_BASE, AccessSize::Byte, 0x01);
        bus.write(COM1_BASE + 1, AccessSize::Byte, 0x00);
        assert_eq!(bus.read(COM1_BASE, AccessSize::Byte), 1);
        bus.write(COM1_BASE + 3, AccessSize::Byte, 0x03);
        bus.write(COM1_BASE + 7, AccessSize::Byte, 0x5A);
        assert_eq!(bus.read(COM1_BASE + 7, AccessSize::Byte), 0x5A);
        assert_eq!(bus.read(COM1_BASE + 3, AccessSize::Byte), 0x03);
        assert_eq!(console.total(), 0);
        bus.write(COM1_BASE + 2, AccessSize::Byte, 0x07);
        assert_eq!(bus.read(COM1_BASE + 2, AccessSize::Byte), 0xC1);
    }
}
