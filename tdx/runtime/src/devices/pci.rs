//! PCI configuration mechanism #1 (ports 0xCF8 address, 0xCFC–0xCFF data) and the functions
//! of a PC with an Intel 440FX host bridge: the host bridge (00:00.0, 8086:1237), the PIIX3
//! ISA bridge (00:01.0, 8086:7000) and the PIIX4 power-management function (00:01.3,
//! 8086:7113), whose PMBA register places the ACPI I/O block ([`super::acpi_pm`]).
//!
//! Sources: PCI Local Bus Specification 3.0 §3.2.2.3.2 (configuration mechanism #1); Intel
//! 82371AB (PIIX4) datasheet §3.4 (function 3: PMBA at 0x40, PMREGMISC bit 0 at 0x80); the
//! same IDs QEMU's `pc` machine presents and OVMF's `PlatformInitLib` expects.
//!
//! A function is its 256-byte configuration space with a per-byte write mask; a read of a
//! function that does not exist returns all ones, as on a real bus.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use super::{AccessSize, PortIoDevice};

/// First port of configuration mechanism #1.
pub const PCI_CONFIG_BASE: u16 = 0xCF8;
/// Ports it decodes (address register and data window).
pub const PCI_CONFIG_PORTS: u16 = 8;
/// Enable bit of the address register.
const ADDRESS_ENABLE: u32 = 1 << 31;

/// One function's configuration space.
pub struct ConfigSpace {
    bytes: [u8; 256],
    writable: [u8; 256],
}

impl ConfigSpace {
    /// A type-0 header with the given IDs and class (`class << 16 | subclass << 8 | prog_if`);
    /// command, status-write bits and the interrupt line are writable.
    pub fn new(vendor: u16, device: u16, revision: u8, class: u32, header_type: u8) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; 256],
            writable: [0; 256],
        };
        c.set16(0x00, vendor);
        c.set16(0x02, device);
        c.bytes[0x08] = revision;
        let [prog_if, subclass, class_code, _] = class.to_le_bytes();
        c.bytes[0x09] = prog_if;
        c.bytes[0x0A] = subclass;
        c.bytes[0x0B] = class_code;
        c.bytes[0x0E] = header_type;
        // Command register (I/O, memory, bus master) and the interrupt line.
        c.writable[0x04] = 0x07;
        c.writable[0x3C] = 0xFF;
        c
    }

    /// Sets a 16-bit read-only value.
    pub fn set16(&mut self, offset: u8, value: u16) {
        let at = usize::from(offset);
        self.bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }

    /// Sets a 32-bit value and which of its bits the guest may write.
    pub fn set32(&mut self, offset: u8, value: u32, writable: u32) {
        let at = usize::from(offset);
        self.bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        self.writable[at..at + 4].copy_from_slice(&writable.to_le_bytes());
    }

    /// Sets read-only bytes from `offset` (capabilities).
    pub fn set_bytes(&mut self, offset: u8, data: &[u8]) {
        let at = usize::from(offset);
        if let Some(dst) = self.bytes.get_mut(at..at + data.len()) {
            dst.copy_from_slice(data);
        }
    }

    /// Makes `len` bytes from `offset` freely writable (chipset registers the firmware
    /// programs and reads back).
    pub fn writable_bytes(&mut self, offset: u8, len: u8) {
        for at in usize::from(offset)..usize::from(offset) + usize::from(len) {
            if let Some(w) = self.writable.get_mut(at) {
                *w = 0xFF;
            }
        }
    }

    /// Little-endian value of `size` at `offset` (wrapping inside the 256 bytes).
    pub fn read(&self, offset: u8, size: AccessSize) -> u64 {
        let mut v = 0u64;
        for i in (0..size.bytes()).rev() {
            let at = usize::from(offset.wrapping_add(i as u8));
            v = v << 8 | u64::from(self.bytes[at]);
        }
        v
    }

    /// Writes the guest-writable bits of `value`.
    pub fn write(&mut self, offset: u8, size: AccessSize, value: u64) {
        for (i, byte) in value
            .to_le_bytes()
            .iter()
            .take(size.bytes() as usize)
            .enumerate()
        {
            let at = usize::from(offset.wrapping_add(i as u8));
            let mask = self.writable[at];
            self.bytes[at] = (self.bytes[at] & !mask) | (byte & mask);
        }
    }
}

/// A function shared between the configuration bus and the device that acts on its
/// registers (the PIIX4 PM function and its I/O block).
pub type SharedConfig = Arc<spin::Mutex<ConfigSpace>>;

/// Configuration mechanism #1 over a set of bus-0 functions. A byte access to 0xCF9,
/// inside the address register's ports, is the PIIX's reset control register instead
/// (Intel 82371AB datasheet §4.1.17), which [`PciConfigPorts::with_reset_control`] plugs in.
pub struct PciConfigPorts {
    address: AtomicU32,
    /// `(device << 3 | function, config)`.
    functions: Vec<(u8, SharedConfig)>,
    /// The device behind byte accesses to 0xCF9.
    reset_control: Option<Arc<dyn PortIoDevice>>,
}

impl PciConfigPorts {
    /// A bus with `functions` as `(device, function, config)`.
    pub fn new(functions: Vec<(u8, u8, SharedConfig)>) -> Self {
        PciConfigPorts {
            address: AtomicU32::new(0),
            functions: functions
                .into_iter()
                .map(|(d, f, c)| ((d & 0x1F) << 3 | (f & 7), c))
                .collect(),
            reset_control: None,
        }
    }

    /// The same bus with `device` answering byte accesses to 0xCF9.
    pub fn with_reset_control(self, device: Arc<dyn PortIoDevice>) -> Self {
        PciConfigPorts {
            reset_control: Some(device),
            ..self
        }
    }

    /// The function the address register selects, and the register offset.
    fn selected(&self) -> Option<(&SharedConfig, u8)> {
        let a = self.address.load(Ordering::Relaxed);
        let bus = (a >> 16) & 0xFF;
        if a & ADDRESS_ENABLE == 0 || bus != 0 {
            return None;
        }
        let devfn = ((a >> 8) & 0xFF) as u8;
        let reg = (a & 0xFC) as u8;
        self.functions
            .iter()
            .find(|(df, _)| *df == devfn)
            .map(|(_, c)| (c, reg))
    }
}

impl PortIoDevice for PciConfigPorts {
    fn read(&self, offset: u16, size: AccessSize) -> u64 {
        match offset {
            0 if size == AccessSize::Dword => u64::from(self.address.load(Ordering::Relaxed)),
            1 if size == AccessSize::Byte => self
                .reset_control
                .as_ref()
                .map_or(size.all_ones(), |rc| rc.read(0, size)),
            4..=7 => match self.selected() {
                Some((config, reg)) => {
                    let byte = (offset - 4) as u8;
                    config.lock().read(reg | byte, size)
                }
                None => size.all_ones(),
            },
            _ => size.all_ones(),
        }
    }

    fn write(&self, offset: u16, size: AccessSize, value: u64) {
        match offset {
            0 if size == AccessSize::Dword => {
                self.address
                    .store((value & 0xFFFF_FFFF) as u32, Ordering::Relaxed);
            }
            1 if size == AccessSize::Byte => {
                if let Some(rc) = &self.reset_control {
                    rc.write(0, size, value);
                }
            }
            4..=7 => {
                if let Some((config, reg)) = self.selected() {
                    let byte = (offset - 4) as u8;
                    config.lock().write(reg | byte, size, value);
                }
            }
            _ => {}
        }
    }
}

/// A function with one memory BAR whose registers a [`PciBarWindow`] routes to it.
pub trait PciBarDevice: Send + Sync {
    /// Where the BAR decodes now (`(base, length)`), or `None` while memory decoding is off
    /// or the BAR is unassigned.
    fn bar(&self) -> Option<(u64, u64)>;
    /// Reads the register at `offset` in the BAR.
    fn bar_read(&self, offset: u64, size: AccessSize) -> u64;
    /// Writes the register at `offset` in the BAR.
    fn bar_write(&self, offset: u64, size: AccessSize, value: u64);
}

/// The PCI memory window on the MMIO bus: BARs move when the firmware or the OS programs
/// them, so the bus holds this one device for the whole window and it finds the function
/// whose BAR decodes the address at the time of the access.
pub struct PciBarWindow {
    base: u64,
    functions: Vec<Arc<dyn PciBarDevice>>,
}

impl PciBarWindow {
    /// The window starting at `base` (the bus offset 0) over `functions`.
    pub fn new(base: u64, functions: Vec<Arc<dyn PciBarDevice>>) -> PciBarWindow {
        PciBarWindow { base, functions }
    }

    fn route(&self, offset: u64) -> Option<(&dyn PciBarDevice, u64)> {
        let addr = self.base.checked_add(offset)?;
        self.functions.iter().find_map(|f| {
            let (base, len) = f.bar()?;
            let at = addr.checked_sub(base)?;
            (at < len).then_some((&**f, at))
        })
    }
}

impl super::MmioDevice for PciBarWindow {
    fn read(&self, offset: u64, size: AccessSize) -> u64 {
        self.route(offset)
            .map_or(size.all_ones(), |(f, at)| f.bar_read(at, size))
    }

    fn write(&self, offset: u64, size: AccessSize, value: u64) {
        if let Some((f, at)) = self.route(offset) {
            f.bar_write(at, size, value);
        }
    }
}

/// Intel's PCI vendor ID.
pub const VENDOR_INTEL: u16 = 0x8086;
/// 440FX host bridge device ID (what OVMF checks to pick its PC code paths).
pub const DEVICE_I440FX: u16 = 0x1237;
/// PIIX3 ISA bridge device ID.
pub const DEVICE_PIIX3_ISA: u16 = 0x7000;
/// PIIX4 power-management function device ID.
pub const DEVICE_PIIX4_PM: u16 = 0x7113;
/// PIIX4 PM: PMBA, the ACPI I/O block base (bits 15:6; bit 0 reads 1: I/O space).
pub const PIIX4_PMBA: u8 = 0x40;
/// PIIX4 PM: PMREGMISC, bit 0 enables the PMBA decode.
pub const PIIX4_PMREGMISC: u8 = 0x80;

/// The 440FX host bridge.
pub fn i440fx_host_bridge() -> SharedConfig {
    let mut c = ConfigSpace::new(VENDOR_INTEL, DEVICE_I440FX, 2, 0x06_00_00, 0);
    // PAM and SMRAM registers (0x59–0x5F, 0x72): the firmware programs them; no effect here.
    c.writable_bytes(0x59, 7);
    c.writable_bytes(0x72, 1);
    Arc::new(spin::Mutex::new(c))
}

/// The PIIX3 ISA bridge (multi-function header).
pub fn piix3_isa_bridge() -> SharedConfig {
    let mut c = ConfigSpace::new(VENDOR_INTEL, DEVICE_PIIX3_ISA, 0, 0x06_01_00, 0x80);
    // PIRQ routing (0x60–0x63) and the APIC base (0x80): programmed, not acted on.
    c.writable_bytes(0x60, 4);
    c.writable_bytes(0x80, 1);
    Arc::new(spin::Mutex::new(c))
}

/// The PIIX4 power-management function.
pub fn piix4_pm() -> SharedConfig {
    let mut c = ConfigSpace::new(VENDOR_INTEL, DEVICE_PIIX4_PM, 3, 0x06_80_00, 0);
    c.set32(PIIX4_PMBA, 1, 0xFFC0);
    c.writable_bytes(PIIX4_PMREGMISC, 1);
    c.bytes[0x3D] = 1;
    Arc::new(spin::Mutex::new(c))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::devices::PortIoBus;

    fn bus() -> (PortIoBus, SharedConfig) {
        let pm = piix4_pm();
        let ports = PciConfigPorts::new(alloc::vec![
            (0, 0, i440fx_host_bridge()),
            (1, 0, piix3_isa_bridge()),
            (1, 3, pm.clone()),
        ]);
        let mut bus = PortIoBus::new();
        bus.insert(PCI_CONFIG_BASE, PCI_CONFIG_PORTS, Arc::new(ports))
            .unwrap();
        (bus, pm)
    }

    #[test]
    fn a_byte_write_to_0xcf9_reaches_the_reset_control_register() {
        use crate::devices::acpi_pm::{PowerRequests, RESET_CONTROL_PORT, ResetControl};
        let power = Arc::new(PowerRequests::default());
        let ports =
            PciConfigPorts::new(alloc::vec![(0, 0, i440fx_host_bridge())]).with_reset_control(
                Arc::new(ResetControl::new(RESET_CONTROL_PORT, power.clone())),
            );
        let mut bus = PortIoBus::new();
        bus.insert(PCI_CONFIG_BASE, PCI_CONFIG_PORTS, Arc::new(ports))
            .unwrap();
        // The configuration address register still takes dwords at 0xCF8.
        bus.write(0xCF8, AccessSize::Dword, address(0, 0, 0));
        assert_eq!(bus.read(0xCFC, AccessSize::Dword), 0x1237_8086);
        bus.write(0xCF9, AccessSize::Byte, 0x02);
        assert!(!power.reset_requested(), "bit 2 clear: no reset");
        bus.write(0xCF9, AccessSize::Byte, 0x06);
        assert!(power.reset_requested());
    }

    fn address(dev: u32, func: u32, reg: u32) -> u64 {
        u64::from(ADDRESS_ENABLE | dev << 11 | func << 8 | reg)
    }

    #[test]
    fn ids_of_present_functions_and_ones_for_absent_ones() {
        let (bus, _) = bus();
        bus.write(0xCF8, AccessSize::Dword, address(0, 0, 0));
        assert_eq!(bus.read(0xCFC, AccessSize::Dword), 0x1237_8086);
        assert_eq!(bus.read(0xCFE, AccessSize::Word), 0x1237);
        bus.write(0xCF8, AccessSize::Dword, address(1, 0, 0xC));
        assert_eq!(bus.read(0xCFE, AccessSize::Byte), 0x80);
        bus.write(0xCF8, AccessSize::Dword, address(2, 0, 0));
        assert_eq!(bus.read(0xCFC, AccessSize::Dword), 0xFFFF_FFFF);
        // Disabled address register: no function answers.
        bus.write(0xCF8, AccessSize::Dword, 0);
        assert_eq!(bus.read(0xCFC, AccessSize::Word), 0xFFFF);
        assert_eq!(bus.read(0xCF8, AccessSize::Dword), 0);
    }

    #[test]
    fn pmba_takes_only_its_writable_bits() {
        let (bus, pm) = bus();
        bus.write(0xCF8, AccessSize::Dword, address(1, 3, 0x40));
        bus.write(0xCFC, AccessSize::Dword, 0xFFFF_B0FF);
        assert_eq!(bus.read(0xCFC, AccessSize::Dword), 0xB0C1);
        bus.write(0xCF8, AccessSize::Dword, address(1, 3, 0x80));
        bus.write(0xCFC, AccessSize::Byte, 1);
        assert_eq!(pm.lock().read(PIIX4_PMREGMISC, AccessSize::Byte), 1);
        // The vendor ID is read-only.
        bus.write(0xCF8, AccessSize::Dword, address(1, 3, 0));
        bus.write(0xCFC, AccessSize::Word, 0x1234);
        assert_eq!(bus.read(0xCFC, AccessSize::Word), 0x8086);
    }
}
