//! The device seam: a device is a small object on a bus (a port-I/O range or an MMIO range),
//! owned by its TD, with no knowledge of vCPUs, exits or SEAMCALLs. The exit handlers decode a
//! guest's port or MMIO access into a bus access; the bus finds the device by address.
//!
//! Shape after Cloud Hypervisor's `vm-device` bus and propolis's port-I/O bus: the bus is
//! built when the TD is created and never changes afterwards, so a lookup takes no lock; each
//! device keeps its own (brief) lock for its registers, since several vCPUs may reach it.
//!
//! An access no device claims behaves as on a PC with nothing decoding the address: reads
//! return all ones, writes are dropped.

pub mod acpi_pm;
pub mod cmos;
pub mod fw_cfg;
pub mod ioapic;
pub mod lapic;
pub mod pci;
pub mod serial;
pub mod virtio;

use alloc::sync::Arc;
use alloc::vec::Vec;

use tdx_abi::Gpa;

/// Width of one port-I/O or MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessSize {
    /// 1 byte.
    Byte,
    /// 2 bytes.
    Word,
    /// 4 bytes.
    Dword,
    /// 8 bytes (MMIO only).
    Qword,
}

impl AccessSize {
    /// The size for `bytes` (1, 2, 4 or 8).
    pub const fn from_bytes(bytes: u64) -> Option<AccessSize> {
        match bytes {
            1 => Some(AccessSize::Byte),
            2 => Some(AccessSize::Word),
            4 => Some(AccessSize::Dword),
            8 => Some(AccessSize::Qword),
            _ => None,
        }
    }

    /// Bytes in the access.
    pub const fn bytes(self) -> u64 {
        match self {
            AccessSize::Byte => 1,
            AccessSize::Word => 2,
            AccessSize::Dword => 4,
            AccessSize::Qword => 8,
        }
    }

    /// The value with every bit of the access set (what an unclaimed read returns).
    pub const fn all_ones(self) -> u64 {
        match self {
            AccessSize::Qword => u64::MAX,
            other => (1u64 << (8 * other.bytes())) - 1,
        }
    }

    /// `value` cut to the access width.
    pub const fn truncate(self, value: u64) -> u64 {
        value & self.all_ones()
    }
}

/// Time as devices see it: monotonic nanoseconds.
pub trait DeviceClock: Send + Sync {
    /// Nanoseconds since an arbitrary fixed origin.
    fn now_ns(&self) -> u64;
}

/// Where a device's interrupt messages go (MSI-X entries, I/O APIC redirections): the
/// platform turns `address`/`data` into an interrupt for a vCPU (the x86 MSI format: Intel
/// SDM vol. 3A §11.11, destination APIC ID in address bits 19:12, vector in data bits 7:0).
pub trait MsiSink: Send + Sync {
    /// Delivers one message.
    fn signal(&self, address: u64, data: u32);
}

/// A device behind a port-I/O range. `offset` is relative to the range's first port.
pub trait PortIoDevice: Send + Sync {
    /// A guest `IN` of `size` at `offset`; the value is truncated to the access width.
    fn read(&self, offset: u16, size: AccessSize) -> u64;
    /// A guest `OUT` of `value` (already truncated to `size`) at `offset`.
    fn write(&self, offset: u16, size: AccessSize, value: u64);
}

/// A device behind an MMIO range. `offset` is relative to the range's first byte.
pub trait MmioDevice: Send + Sync {
    /// A guest load of `size` at `offset`.
    fn read(&self, offset: u64, size: AccessSize) -> u64;
    /// A guest store of `value` (already truncated to `size`) at `offset`.
    fn write(&self, offset: u64, size: AccessSize, value: u64);
}

/// Two devices were placed on overlapping or empty ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} is empty or overlaps a device already on the bus")]
pub struct RangeConflict {
    /// First address of the refused range.
    pub base: u64,
    /// Its length.
    pub len: u64,
}

/// An address-ordered set of non-overlapping ranges, each owned by one device.
struct RangeMap<D: ?Sized> {
    /// `(base, len, device)`, sorted by base.
    ranges: Vec<(u64, u64, Arc<D>)>,
}

impl<D: ?Sized> RangeMap<D> {
    const fn new() -> Self {
        RangeMap { ranges: Vec::new() }
    }

    fn insert(&mut self, base: u64, len: u64, device: Arc<D>) -> Result<(), RangeConflict> {
        let conflict = RangeConflict { base, len };
        let end = base.checked_add(len).ok_or(conflict)?;
        if len == 0 {
            return Err(conflict);
        }
        let at = self.ranges.partition_point(|(b, _, _)| *b < base);
        let overlaps_prev = at
            .checked_sub(1)
            .and_then(|i| self.ranges.get(i))
            .is_some_and(|(b, l, _)| b + l > base);
        let overlaps_next = self.ranges.get(at).is_some_and(|(b, _, _)| *b < end);
        if overlaps_prev || overlaps_next {
            return Err(conflict);
        }
        self.ranges.insert(at, (base, len, device));
        Ok(())
    }

    /// The device whose range holds `addr`, and `addr`'s offset in it.
    fn find(&self, addr: u64) -> Option<(&D, u64)> {
        let at = self.ranges.partition_point(|(b, _, _)| *b <= addr);
        let (base, len, device) = self.ranges.get(at.checked_sub(1)?)?;
        (addr - base < *len).then(|| (&**device, addr - base))
    }
}

/// The port-I/O bus of one TD.
pub struct PortIoBus {
    map: RangeMap<dyn PortIoDevice>,
}

impl Default for PortIoBus {
    fn default() -> Self {
        PortIoBus::new()
    }
}

impl PortIoBus {
    /// An empty bus.
    pub const fn new() -> Self {
        PortIoBus {
            map: RangeMap::new(),
        }
    }

    /// Puts `device` on ports `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        device: Arc<dyn PortIoDevice>,
    ) -> Result<(), RangeConflict> {
        self.map.insert(u64::from(base), u64::from(len), device)
    }

    /// A guest `IN`: the device's value, or all ones where no device decodes `port`.
    pub fn read(&self, port: u16, size: AccessSize) -> u64 {
        match self.map.find(u64::from(port)) {
            Some((device, offset)) => size.truncate(device.read(offset_u16(offset), size)),
            None => size.all_ones(),
        }
    }

    /// A guest `OUT` (dropped where no device decodes `port`).
    pub fn write(&self, port: u16, size: AccessSize, value: u64) {
        if let Some((device, offset)) = self.map.find(u64::from(port)) {
            device.write(offset_u16(offset), size, size.truncate(value));
        }
    }
}

/// Offsets inside a port range are below its `u16` length.
fn offset_u16(offset: u64) -> u16 {
    u16::try_from(offset).unwrap_or(u16::MAX)
}

/// The MMIO bus of one TD (guest-physical addresses without the shared bit).
pub struct MmioBus {
    map: RangeMap<dyn MmioDevice>,
}

impl Default for MmioBus {
    fn default() -> Self {
        MmioBus::new()
    }
}

impl MmioBus {
    /// An empty bus.
    pub const fn new() -> Self {
        MmioBus {
            map: RangeMap::new(),
        }
    }

    /// Puts `device` on `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: Gpa,
        len: u64,
        device: Arc<dyn MmioDevice>,
    ) -> Result<(), RangeConflict> {
        self.map.insert(base.0, len, device)
    }

    /// A guest load: the device's value, or all ones where no device decodes `gpa`.
    pub fn read(&self, gpa: Gpa, size: AccessSize) -> u64 {
        match self.map.find(gpa.0) {
            Some((device, offset)) => size.truncate(device.read(offset, size)),
            None => size.all_ones(),
        }
    }

    /// A guest store (dropped where no device decodes `gpa`).
    pub fn write(&self, gpa: Gpa, size: AccessSize, value: u64) {
        if let Some((device, offset)) = self.map.find(gpa.0) {
            device.write(offset, size, size.truncate(value));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU64, Ordering};

    /// Remembers the last write; reads return `offset * 16 + size`.
    #[derive(Default)]
    struct Probe {
        last: AtomicU64,
    }

    impl PortIoDevice for Probe {
        fn read(&self, offset: u16, size: AccessSize) -> u64 {
            u64::from(offset) * 16 + size.bytes()
        }
        fn write(&self, offset: u16, _size: AccessSize, value: u64) {
            self.last
                .store(u64::from(offset) << 32 | value, Ordering::Relaxed);
        }
    }

    impl MmioDevice for Probe {
        fn read(&self, offset: u64, size: AccessSize) -> u64 {
            offset * 16 + size.bytes()
        }
        fn write(&self, offset: u64, _size: AccessSize, value: u64) {
            self.last.store(offset << 32 | value, Ordering::Relaxed);
        }
    }

    #[test]
    fn port_bus_routes_by_range_and_answers_ones_elsewhere() {
        let probe = Arc::new(Probe::default());
        let mut bus = PortIoBus::new();
        bus.insert(0x3F8, 8, probe.clone()).unwrap();
        assert_eq!(bus.read(0x3FD, AccessSize::Byte), 5 * 16 + 1);
        assert_eq!(bus.read(0x3F7, AccessSize::Word), 0xFFFF);
        assert_eq!(bus.read(0x400, AccessSize::Dword), 0xFFFF_FFFF);
        bus.write(0x3F9, AccessSize::Byte, 0x1234);
        assert_eq!(probe.last.load(Ordering::Relaxed), 1 << 32 | 0x34);
        bus.write(0x80, AccessSize::Byte, 7);
        assert_eq!(probe.last.load(Ordering::Relaxed), 1 << 32 | 0x34);
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = PortIoBus::new();
        bus.insert(0x3F8, 8, Arc::new(Probe::default())).unwrap();
        for (base, len) in [
            (0x3F0, 9),
            (0x3FF, 1),
            (0x3F8, 1),
            (0x3F0, 0x20),
            (0x500, 0),
        ] {
            assert_eq!(
                bus.insert(base, len, Arc::new(Probe::default())),
                Err(RangeConflict {
                    base: u64::from(base),
                    len: u64::from(len)
                })
            );
        }
        bus.insert(0x3F0, 8, Arc::new(Probe::default())).unwrap();
        bus.insert(0x400, 1, Arc::new(Probe::default())).unwrap();
        assert_eq!(bus.read(0x3F7, AccessSize::Byte), 7 * 16 + 1);
    }

    #[test]
    fn mmio_bus_routes_by_gpa() {
        let probe = Arc::new(Probe::default());
        let mut bus = MmioBus::new();
        bus.insert(Gpa(0xFEC0_0000), 0x1000, probe.clone()).unwrap();
        assert_eq!(bus.read(Gpa(0xFEC0_0010), AccessSize::Dword), 0x10 * 16 + 4);
        assert_eq!(bus.read(Gpa(0xFEC0_1000), AccessSize::Qword), u64::MAX);
        bus.write(Gpa(0xFEC0_0004), AccessSize::Word, 0xABCDE);
        assert_eq!(probe.last.load(Ordering::Relaxed), 4 << 32 | 0xBCDE);
        assert!(bus.insert(Gpa(u64::MAX), 2, probe).is_err());
    }

    #[test]
    fn access_sizes() {
        assert_eq!(AccessSize::from_bytes(3), None);
        assert_eq!(
            AccessSize::from_bytes(2).map(AccessSize::all_ones),
            Some(0xFFFF)
        );
        assert_eq!(AccessSize::Qword.truncate(u64::MAX), u64::MAX);
        assert_eq!(AccessSize::Byte.truncate(0x1FF), 0xFF);
    }
}
