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
//! line status shows data ready while it is not empty.
//!
//! Interrupts, when the UART has a line to an I/O APIC pin ([`Serial16550::with_interrupt`];
//! a PC's COM1 is ISA IRQ 4): received data (IER bit 0) while the queue holds bytes, and
//! transmitter empty (IER bit 1), which sets when a byte is written or the interrupt is
//! enabled and clears when IIR reports it, as on a 16550. MCR's OUT2 gates the line, as on
//! PCs. The line is edge-triggered (ISA): each rise is one interrupt. Firmware polls and
//! never enables them.

use alloc::collections::VecDeque;
use alloc::sync::Arc;

use super::ioapic::IoApic;
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

/// Interrupt enable: received data available.
const IER_RDI: u8 = 1;
/// Interrupt enable: transmitter holding register empty.
const IER_THRI: u8 = 1 << 1;
/// Interrupt identification: transmitter holding register empty.
const IIR_THRI: u8 = 0x02;
/// Interrupt identification: received data available.
const IIR_RDI: u8 = 0x04;
/// Modem control: OUT2, which gates the interrupt line on PCs.
const MCR_OUT2: u8 = 1 << 3;

/// The registers a guest can write and read back, the receive queue and the interrupt
/// state.
#[derive(Default)]
struct State {
    ier: u8,
    fcr: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    divisor: u16,
    rx: VecDeque<u8>,
    /// A transmitter-empty interrupt is pending (cleared by reading IIR while it is the
    /// one reported).
    thre_pending: bool,
    /// The interrupt line's level after the last access.
    line: bool,
}

impl State {
    fn rx_interrupt(&self) -> bool {
        self.ier & IER_RDI != 0 && !self.rx.is_empty()
    }

    fn thre_interrupt(&self) -> bool {
        self.ier & IER_THRI != 0 && self.thre_pending
    }

    /// Recomputes the line; true if it rose (one edge for the I/O APIC).
    fn update_line(&mut self) -> bool {
        let level = self.mcr & MCR_OUT2 != 0 && (self.rx_interrupt() || self.thre_interrupt());
        let rose = level && !self.line;
        self.line = level;
        rose
    }
}

/// A 16550 UART whose output goes to `console`.
pub struct Serial16550 {
    console: Arc<ConsoleRing>,
    state: spin::Mutex<State>,
    irq: Option<(Arc<IoApic>, usize)>,
}

impl Serial16550 {
    /// A UART writing to `console`, without an interrupt line.
    pub fn new(console: Arc<ConsoleRing>) -> Self {
        Serial16550 {
            console,
            state: spin::Mutex::new(State::default()),
            irq: None,
        }
    }

    /// A UART writing to `console` whose interrupt line is `pin` of `ioapic`.
    pub fn with_interrupt(console: Arc<ConsoleRing>, ioapic: Arc<IoApic>, pin: usize) -> Self {
        Serial16550 {
            irq: Some((ioapic, pin)),
            ..Serial16550::new(console)
        }
    }

    /// Queues `bytes` as received input; returns how many fit (the queue holds at most
    /// [`RX_QUEUE_BYTES`]).
    pub fn type_input(&self, bytes: &[u8]) -> usize {
        let mut s = self.state.lock();
        let room = RX_QUEUE_BYTES.saturating_sub(s.rx.len());
        let n = bytes.len().min(room);
        s.rx.extend(bytes.iter().take(n));
        let rose = s.update_line();
        drop(s);
        self.signal(rose);
        n
    }

    /// Sends an edge to the I/O APIC if the line rose.
    fn signal(&self, rose: bool) {
        if let (true, Some((ioapic, pin))) = (rose, &self.irq) {
            ioapic.pulse(*pin);
        }
    }
}

impl PortIoDevice for Serial16550 {
    fn read(&self, offset: u16, _size: AccessSize) -> u64 {
        let mut s = self.state.lock();
        let dlab = s.lcr & LCR_DLAB != 0;
        let [div_lo, div_hi] = s.divisor.to_le_bytes();
        let value = match offset {
            0 if dlab => div_lo,
            1 if dlab => div_hi,
            0 => s.rx.pop_front().unwrap_or(0),
            1 => s.ier,
            2 => {
                let id = if s.rx_interrupt() {
                    IIR_RDI
                } else if s.thre_interrupt() {
                    // Reading IIR while it reports THRE clears that interrupt.
                    s.thre_pending = false;
                    IIR_THRI
                } else {
                    IIR_NONE
                };
                if s.fcr & FCR_ENABLE != 0 {
                    id | IIR_FIFO
                } else {
                    id
                }
            }
            3 => s.lcr,
            4 => s.mcr,
            5 => {
                let ready = if s.rx.is_empty() { 0 } else { LSR_DR };
                LSR_THRE | LSR_TEMT | ready
            }
            6 => MSR_CONNECTED,
            7 => s.scr,
            _ => 0xFF,
        };
        let rose = s.update_line();
        drop(s);
        self.signal(rose);
        u64::from(value)
    }

    fn write(&self, offset: u16, _size: AccessSize, value: u64) {
        let byte = value.to_le_bytes()[0];
        let mut s = self.state.lock();
        let dlab = s.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => s.divisor = (s.divisor & 0xFF00) | u16::from(byte),
            1 if dlab => s.divisor = (s.divisor & 0x00FF) | u16::from(byte) << 8,
            0 => {
                self.console.push(&[byte]);
                // The byte left at once: the holding register is empty again.
                s.thre_pending = true;
            }
            1 => {
                let ier = byte & 0x0F;
                // Enabling the THRE interrupt while the register is empty raises it.
                if ier & IER_THRI != 0 && s.ier & IER_THRI == 0 {
                    s.thre_pending = true;
                }
                s.ier = ier;
            }
            2 => s.fcr = byte,
            3 => s.lcr = byte,
            4 => s.mcr = byte & 0x1F,
            7 => s.scr = byte,
            // Line and modem status are read-only.
            _ => {}
        }
        let rose = s.update_line();
        drop(s);
        self.signal(rose);
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

    #[derive(Default)]
    struct Messages(spin::Mutex<alloc::vec::Vec<(u64, u32)>>);

    impl crate::devices::MsiSink for Messages {
        fn signal(&self, address: u64, data: u32) {
            self.0.lock().push((address, data));
        }
    }

    /// COM1 on pin 4 of an I/O APIC that routes the pin to vector 0x24 on APIC 0.
    fn com1_with_interrupt() -> (Serial16550, Arc<Messages>) {
        let msgs = Arc::new(Messages::default());
        let ioapic = Arc::new(IoApic::new(msgs.clone()));
        use crate::devices::MmioDevice;
        ioapic.write(0, AccessSize::Byte, 0x10 + 8);
        ioapic.write(0x10, AccessSize::Dword, 0x24);
        let uart = Serial16550::with_interrupt(Arc::new(ConsoleRing::new(64)), ioapic, 4);
        (uart, msgs)
    }

    #[test]
    fn the_thre_interrupt_follows_the_16550_and_out2_gates_the_line() {
        let (uart, msgs) = com1_with_interrupt();
        // Enabled without OUT2: pending, but the line stays low.
        uart.write(1, AccessSize::Byte, u64::from(IER_THRI));
        assert!(msgs.0.lock().is_empty());
        uart.write(4, AccessSize::Byte, u64::from(MCR_OUT2));
        assert_eq!(
            msgs.0.lock().len(),
            1,
            "OUT2 lets the pending interrupt out"
        );
        // IIR reports it once and clears it (Linux's THRE test reads it twice).
        assert_eq!(uart.read(2, AccessSize::Byte), u64::from(IIR_THRI));
        assert_eq!(uart.read(2, AccessSize::Byte), u64::from(IIR_NONE));
        // Re-enabling raises it again; a written byte empties at once and raises it too.
        uart.write(1, AccessSize::Byte, 0);
        uart.write(1, AccessSize::Byte, u64::from(IER_THRI));
        assert_eq!(msgs.0.lock().len(), 2);
        assert_eq!(uart.read(2, AccessSize::Byte), u64::from(IIR_THRI));
        uart.write(0, AccessSize::Byte, u64::from(b'x'));
        assert_eq!(msgs.0.lock().len(), 3);
        // While the line stays high, more bytes are no new edges.
        uart.write(0, AccessSize::Byte, u64::from(b'y'));
        assert_eq!(msgs.0.lock().len(), 3);
        assert_eq!(*msgs.0.lock().last().unwrap(), (0xFEE0_0000, 0x24));
    }

    #[test]
    fn received_data_interrupts_until_the_queue_is_read_empty() {
        let (uart, msgs) = com1_with_interrupt();
        uart.write(4, AccessSize::Byte, u64::from(MCR_OUT2));
        uart.write(1, AccessSize::Byte, u64::from(IER_RDI));
        assert!(msgs.0.lock().is_empty());
        assert_eq!(uart.type_input(b"ab"), 2);
        assert_eq!(msgs.0.lock().len(), 1);
        assert_eq!(uart.read(2, AccessSize::Byte), u64::from(IIR_RDI));
        assert_eq!(uart.read(0, AccessSize::Byte), u64::from(b'a'));
        assert_eq!(uart.type_input(b"c"), 1);
        assert_eq!(msgs.0.lock().len(), 1, "the line was still high");
        assert_eq!(uart.read(0, AccessSize::Byte), u64::from(b'b'));
        assert_eq!(uart.read(0, AccessSize::Byte), u64::from(b'c'));
        assert_eq!(uart.read(2, AccessSize::Byte), u64::from(IIR_NONE));
        assert_eq!(uart.type_input(b"d"), 1);
        assert_eq!(msgs.0.lock().len(), 2, "a new edge after the queue emptied");
    }
}
