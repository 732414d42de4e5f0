//! An I/O APIC (Intel 82093AA I/O Advanced Programmable Interrupt Controller datasheet,
//! §3): 24 input pins, each routed by a redirection entry to a vector on a destination
//! APIC, reached through two memory-mapped registers.
//!
//! | offset | register |
//! |---|---|
//! | 0x00 | IOREGSEL: which internal register IOWIN reaches |
//! | 0x10 | IOWIN: the selected register (32 bits) |
//! | 0x40 | EOI (version 0x20): ends a level-triggered interrupt |
//!
//! Internal registers: 0x00 ID, 0x01 version (maximum redirection entry in bits 23:16),
//! 0x02 arbitration ID, 0x10 + 2n / 0x11 + 2n the low and high halves of entry n (vector
//! 7:0, delivery mode 10:8, destination mode 11, polarity 13, trigger mode 15, mask 16,
//! destination 63:56).
//!
//! The platform's interrupt sources here are edge events ([`IoApic::pulse`], the power
//! button's): an unmasked pin turns into a message to the destination's local APIC in the
//! MSI format (SDM vol. 3A §11.11), which the TD's [`MsiSink`] delivers as a posted
//! interrupt. An edge on a masked pin is held and delivered when the guest unmasks it, so a
//! press made before the guest's driver is ready is not lost. No source is level-triggered,
//! so the remote IRR bit never sets and EOI has nothing to end.

use alloc::sync::Arc;

use super::{AccessSize, MmioDevice, MsiSink};

/// Where PCs place the I/O APIC (and where the MADT says it is).
pub const IOAPIC_BASE: u64 = 0xFEC0_0000;
/// Bytes of MMIO the I/O APIC decodes.
pub const IOAPIC_MMIO_BYTES: u64 = 0x1000;
/// Input pins (global system interrupts 0..24).
pub const IOAPIC_PINS: usize = 24;
/// The version register's value: version 0x20 (with the EOI register), 24 entries.
const VERSION: u32 = 0x20 | (IOAPIC_PINS as u32 - 1) << 16;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;

/// Redirection-entry bits the guest can write (everything but delivery status, bit 12, and
/// remote IRR, bit 14).
const ENTRY_WRITABLE: u64 = !(1 << 12 | 1 << 14);
/// Redirection-entry mask bit.
const ENTRY_MASKED: u64 = 1 << 16;

struct Registers {
    select: u8,
    id: u32,
    entries: [u64; IOAPIC_PINS],
    /// Edges that arrived while their pin was masked.
    held: u32,
}

/// One I/O APIC whose messages go to `sink`.
pub struct IoApic {
    sink: Arc<dyn MsiSink>,
    regs: spin::Mutex<Registers>,
}

impl IoApic {
    /// An I/O APIC with every pin masked (its state after reset, datasheet §3.2.4).
    pub fn new(sink: Arc<dyn MsiSink>) -> IoApic {
        IoApic {
            sink,
            regs: spin::Mutex::new(Registers {
                select: 0,
                id: 0,
                entries: [ENTRY_MASKED; IOAPIC_PINS],
                held: 0,
            }),
        }
    }

    /// An edge on input `pin`: delivered now if the pin is unmasked, else held until it is.
    /// Pins past the last are ignored.
    pub fn pulse(&self, pin: usize) {
        let mut r = self.regs.lock();
        let Some(&entry) = r.entries.get(pin) else {
            return;
        };
        if entry & ENTRY_MASKED != 0 {
            r.held |= 1 << pin;
            return;
        }
        drop(r);
        self.deliver(entry);
    }

    /// Sends `entry`'s interrupt as an MSI-format message: destination in address bits
    /// 19:12 and the destination mode in bit 2; vector and delivery mode in the data.
    fn deliver(&self, entry: u64) {
        let destination = entry >> 56;
        let logical = (entry >> 11) & 1;
        let address = 0xFEE0_0000 | destination << 12 | logical << 2;
        let data = (entry & 0x7FF) as u32;
        self.sink.signal(address, data);
    }

    fn read_register(r: &Registers) -> u32 {
        match r.select {
            0x00 => r.id,
            0x01 => VERSION,
            0x02 => r.id,
            s @ 0x10..=0x3F => {
                let entry = r.entries[usize::from((s - 0x10) / 2)];
                if s % 2 == 0 {
                    entry as u32
                } else {
                    (entry >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// Writes the selected register; returns the entry to deliver if the write unmasked a
    /// pin holding an edge.
    fn write_register(r: &mut Registers, value: u32) -> Option<u64> {
        match r.select {
            0x00 => r.id = value & 0x0F00_0000,
            s @ 0x10..=0x3F => {
                let pin = usize::from((s - 0x10) / 2);
                let old = r.entries[pin];
                let new = if s % 2 == 0 {
                    old & !0xFFFF_FFFF | u64::from(value)
                } else {
                    old & 0xFFFF_FFFF | u64::from(value) << 32
                };
                r.entries[pin] = old & !ENTRY_WRITABLE | new & ENTRY_WRITABLE;
                let unmasked = r.entries[pin] & ENTRY_MASKED == 0;
                if unmasked && r.held & 1 << pin != 0 {
                    r.held &= !(1 << pin);
                    return Some(r.entries[pin]);
                }
            }
            _ => {}
        }
        None
    }
}

impl MmioDevice for IoApic {
    fn read(&self, offset: u64, _size: AccessSize) -> u64 {
        let r = self.regs.lock();
        match offset {
            IOREGSEL => u64::from(r.select),
            IOWIN => u64::from(Self::read_register(&r)),
            _ => 0,
        }
    }

    fn write(&self, offset: u64, _size: AccessSize, value: u64) {
        let mut r = self.regs.lock();
        let due = match offset {
            IOREGSEL => {
                r.select = value as u8;
                None
            }
            IOWIN => Self::write_register(&mut r, value as u32),
            _ => None,
        };
        drop(r);
        if let Some(entry) = due {
            self.deliver(entry);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[derive(Default)]
    struct Messages(spin::Mutex<Vec<(u64, u32)>>);

    impl MsiSink for Messages {
        fn signal(&self, address: u64, data: u32) {
            self.0.lock().push((address, data));
        }
    }

    fn write_reg(apic: &IoApic, reg: u8, value: u32) {
        apic.write(IOREGSEL, AccessSize::Byte, u64::from(reg));
        apic.write(IOWIN, AccessSize::Dword, u64::from(value));
    }

    fn read_reg(apic: &IoApic, reg: u8) -> u32 {
        apic.write(IOREGSEL, AccessSize::Byte, u64::from(reg));
        apic.read(IOWIN, AccessSize::Dword) as u32
    }

    #[test]
    fn version_and_entries_read_back_as_written() {
        let apic = IoApic::new(Arc::new(Messages::default()));
        assert_eq!(read_reg(&apic, 1), 0x0017_0020, "version 0x20, 24 entries");
        assert_eq!(read_reg(&apic, 0x10), 1 << 16, "entries start masked");
        // Delivery status and remote IRR are read-only.
        write_reg(&apic, 0x12, 0x0000_F031);
        write_reg(&apic, 0x13, 0x0300_0000);
        assert_eq!(read_reg(&apic, 0x12), 0x0000_A031);
        assert_eq!(read_reg(&apic, 0x13), 0x0300_0000);
        assert_eq!(read_reg(&apic, 0x10 + 2 * 23), 1 << 16);
        assert_eq!(read_reg(&apic, 0x40), 0, "past the last entry");
    }

    #[test]
    fn an_unmasked_pin_sends_its_vector_to_its_destination() {
        let sink = Arc::new(Messages::default());
        let apic = IoApic::new(sink.clone());
        // Pin 9: vector 0x41, fixed, physical, edge, to APIC 1.
        write_reg(&apic, 0x10 + 18, 0x41);
        write_reg(&apic, 0x10 + 19, 0x0100_0000);
        apic.pulse(9);
        assert_eq!(*sink.0.lock(), [(0xFEE0_1000, 0x41)]);
        apic.pulse(IOAPIC_PINS);
        assert_eq!(sink.0.lock().len(), 1, "no such pin");
    }

    #[test]
    fn an_edge_on_a_masked_pin_waits_for_the_unmask() {
        let sink = Arc::new(Messages::default());
        let apic = IoApic::new(sink.clone());
        apic.pulse(9);
        apic.pulse(9);
        assert!(sink.0.lock().is_empty());
        write_reg(&apic, 0x10 + 19, 0);
        write_reg(&apic, 0x10 + 18, 0x52 | 1 << 16);
        assert!(sink.0.lock().is_empty(), "still masked");
        write_reg(&apic, 0x10 + 18, 0x52);
        assert_eq!(*sink.0.lock(), [(0xFEE0_0000, 0x52)], "one held edge, once");
        write_reg(&apic, 0x10 + 18, 0x52);
        assert_eq!(sink.0.lock().len(), 1);
    }

    #[test]
    fn any_register_a_guest_names_is_answered_without_harm() {
        let sink = Arc::new(Messages::default());
        let apic = IoApic::new(sink.clone());
        for reg in 0..=0xFFu8 {
            write_reg(&apic, reg, 0xFFFF_FFFF);
            let _ = read_reg(&apic, reg);
        }
        // Registers past the table read as zero; the version cannot be written.
        assert_eq!(read_reg(&apic, 0x40), 0);
        assert_eq!(read_reg(&apic, 0xFF), 0);
        assert_eq!(read_reg(&apic, 1), 0x0017_0020);
        // Offsets other than IOREGSEL and IOWIN read as zero and drop writes.
        for offset in [0x04, 0x20, 0x40, 0xFFC, 0x1000] {
            apic.write(offset, AccessSize::Dword, 0x1234);
            assert_eq!(apic.read(offset, AccessSize::Dword), 0);
        }
        // The all-ones entries are masked: pulses are held (pins past the last do nothing),
        // and unmasking a pin sends its one held edge, for the TD's sink to judge.
        for pin in 0..IOAPIC_PINS + 8 {
            apic.pulse(pin);
        }
        assert!(sink.0.lock().is_empty());
        write_reg(&apic, 0x10, 0x30);
        write_reg(&apic, 0x10, 0x30);
        assert_eq!(
            *sink.0.lock(),
            [(0xFEEF_F000, 0x30)],
            "one edge, to APIC 0xFF"
        );
    }
}
