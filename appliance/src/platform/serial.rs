//! The COM1 UART (I/O port 0x3F8), written directly with port I/O.
//!
//! OVMF leaves COM1 initialised (its own console uses it), and QEMU's `-serial stdio` connects
//! it to the host, so writing bytes to the transmit register is all the logger needs. No
//! firmware call is involved, which keeps logging usable in any state (including panics).

use x86_64::instructions::port::{Port, PortReadOnly};

/// I/O base of COM1.
const COM1_BASE: u16 = 0x3F8;
/// Line status register offset and its "transmit holding register empty" bit.
const LINE_STATUS: u16 = 5;
const TRANSMIT_EMPTY: u8 = 0x20;
/// Bounded wait for the transmitter, so a missing UART can never hang the appliance.
const MAX_WAIT_SPINS: u32 = 100_000;

/// The COM1 transmitter.
pub struct Com1 {
    data: Port<u8>,
    line_status: PortReadOnly<u8>,
}

impl Com1 {
    /// A handle to COM1 (no I/O happens here).
    pub const fn new() -> Self {
        Self {
            data: Port::new(COM1_BASE),
            line_status: PortReadOnly::new(COM1_BASE + LINE_STATUS),
        }
    }

    /// Sends one byte, waiting (bounded) for the transmitter to be free.
    pub fn write_byte(&mut self, byte: u8) {
        for _ in 0..MAX_WAIT_SPINS {
            // SAFETY: reading COM1's line status register has no side effects on the UART
            // or on memory; port 0x3FD belongs to COM1 on every PC-compatible machine.
            let status = unsafe { self.line_status.read() };
            if status & TRANSMIT_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        // SAFETY: writing COM1's transmit holding register (port 0x3F8, DLAB clear as the
        // firmware left it) only queues a byte for the serial line; no memory is touched.
        unsafe { self.data.write(byte) }
    }
}
