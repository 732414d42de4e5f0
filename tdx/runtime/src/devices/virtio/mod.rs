//! Virtio over PCI, the modern (1.x) transport (Virtual I/O Device (VIRTIO) Version 1.2,
//! §4.1 "Virtio Over PCI Bus"), with MSI-X (PCI Local Bus Specification 3.0 §6.8.2).
//!
//! A [`VirtioPci`] is one PCI function: its configuration space (IDs, a 32-bit memory BAR,
//! the virtio vendor capabilities and the MSI-X capability) and the registers behind the BAR:
//!
//! | BAR offset | what |
//! |---|---|
//! | 0x0000 | common configuration (features, status, queue setup) |
//! | 0x1000 | ISR status (read clears) |
//! | 0x2000 | device-specific configuration |
//! | 0x3000 | queue notifications, 4 bytes apart (`queue_notify_off` = queue index) |
//! | 0x4000 | MSI-X table |
//! | 0x5000 | MSI-X pending-bit array |
//!
//! The device type behind it is a [`VirtioBackend`] (block, console). A notification runs the
//! queue at once, on the vCPU that wrote it; completions are signalled through the queue's
//! MSI-X entry, as a message the host delivers to a vCPU's APIC (a posted interrupt on TDX).
//! The device offers VIRTIO_F_VERSION_1 and VIRTIO_F_ACCESS_PLATFORM (§6.1): a TD's driver
//! must then use DMA addresses in memory it shared, which is all the device can reach.

pub mod blk;
pub mod console;
pub mod queue;

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::fw_cfg::DmaMemory;
use super::pci::{ConfigSpace, PciBarDevice, SharedConfig};
use super::{AccessSize, MsiSink};
use queue::{MAX_QUEUE_SIZE, Queue};

/// "No MSI-X vector" in `config_msix_vector` / `queue_msix_vector`.
pub const NO_VECTOR: u16 = 0xFFFF;
/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_ACCESS_PLATFORM.
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;
/// The virtio PCI vendor ID.
pub const VENDOR_VIRTIO: u16 = 0x1AF4;

/// Size of the BAR.
pub const BAR_SIZE: u64 = 0x8000;
const COMMON: u64 = 0x0000;
const ISR: u64 = 0x1000;
const DEVICE: u64 = 0x2000;
const NOTIFY: u64 = 0x3000;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x5000;
/// Bytes between two queues' notification addresses.
const NOTIFY_MULTIPLIER: u32 = 4;
/// MSI-X table entries (enough for a configuration vector and a vector per queue).
const MSIX_ENTRIES: usize = 8;
/// Where the MSI-X capability sits in configuration space.
const MSIX_CAP: u8 = 0x84;

/// Device status bits (§2.1).
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_DRIVER_OK: u8 = 4;

/// A virtio device type behind the PCI transport.
pub trait VirtioBackend: Send {
    /// The virtio device ID (2: block, 3: console).
    fn device_id(&self) -> u16;
    /// Device-specific feature bits offered (the transport adds VERSION_1 and
    /// ACCESS_PLATFORM).
    fn features(&self) -> u64;
    /// Number of queues.
    fn queue_count(&self) -> usize;
    /// Reads the device-specific configuration (unknown offsets read as zero).
    fn read_config(&self, offset: u64, size: AccessSize) -> u64;
    /// Serves every request available on queue `index`; true if any was returned used.
    fn process(&mut self, index: usize, queue: &mut Queue, mem: &dyn DmaMemory) -> bool;
    /// The driver reset the device.
    fn reset(&mut self);
}

/// One MSI-X table entry.
#[derive(Clone, Copy, Debug)]
struct MsixEntry {
    address: u64,
    data: u32,
    masked: bool,
    pending: bool,
}

impl Default for MsixEntry {
    fn default() -> Self {
        // Entries start masked (PCI 3.0 §6.8.2.9).
        MsixEntry {
            address: 0,
            data: 0,
            masked: true,
            pending: false,
        }
    }
}

struct Registers {
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_msix_vector: u16,
    status: u8,
    queue_select: u16,
    queues: Vec<Queue>,
    isr: u8,
    msix: [MsixEntry; MSIX_ENTRIES],
    backend: Box<dyn VirtioBackend>,
}

/// A virtio PCI function.
pub struct VirtioPci {
    config: SharedConfig,
    mem: Arc<dyn DmaMemory>,
    msi: Arc<dyn MsiSink>,
    regs: spin::Mutex<Registers>,
}

impl VirtioPci {
    /// The function for `backend`, reaching guest memory through `mem` and signalling
    /// through `msi`.
    pub fn new(
        backend: Box<dyn VirtioBackend>,
        mem: Arc<dyn DmaMemory>,
        msi: Arc<dyn MsiSink>,
    ) -> VirtioPci {
        let queues = (0..backend.queue_count())
            .map(|_| Queue::new(MAX_QUEUE_SIZE))
            .collect();
        let config = Arc::new(spin::Mutex::new(config_space(backend.device_id())));
        VirtioPci {
            config,
            mem,
            msi,
            regs: spin::Mutex::new(Registers {
                device_feature_select: 0,
                driver_feature_select: 0,
                driver_features: 0,
                config_msix_vector: NO_VECTOR,
                status: 0,
                queue_select: 0,
                queues,
                isr: 0,
                msix: [MsixEntry::default(); MSIX_ENTRIES],
                backend,
            }),
        }
    }

    /// Serves queue `index` as a guest notification would: the host calls it when a device
    /// has something for the guest (console input) outside of any notification. Nothing
    /// happens before the driver has set DRIVER_OK.
    pub fn run_queue(&self, index: usize) {
        let mut r = self.regs.lock();
        self.notify(&mut r, index);
    }

    /// The function's configuration space (for the configuration ports).
    pub fn config(&self) -> SharedConfig {
        self.config.clone()
    }

    fn offered(r: &Registers) -> u64 {
        r.backend.features() | F_VERSION_1 | F_ACCESS_PLATFORM
    }

    /// MSI-X enable and function-mask bits of the capability's message control.
    fn msix_control(&self) -> (bool, bool) {
        let control = self.config.lock().read(MSIX_CAP + 2, AccessSize::Word);
        (control & 1 << 15 != 0, control & 1 << 14 != 0)
    }

    /// Signals `vector` (a queue's or the configuration's), or records it pending.
    fn raise(&self, r: &mut Registers, vector: u16) {
        let (enabled, function_masked) = self.msix_control();
        if !enabled {
            r.isr |= 1;
            return;
        }
        let Some(entry) = r.msix.get_mut(usize::from(vector)) else {
            return;
        };
        if entry.masked || function_masked {
            entry.pending = true;
        } else {
            self.msi.signal(entry.address, entry.data);
        }
    }

    fn reset(r: &mut Registers) {
        r.status = 0;
        r.driver_features = 0;
        r.config_msix_vector = NO_VECTOR;
        r.queue_select = 0;
        r.isr = 0;
        for q in r.queues.iter_mut() {
            *q = Queue::new(MAX_QUEUE_SIZE);
        }
        r.backend.reset();
    }

    fn common_bytes(r: &Registers) -> [u8; 0x40] {
        let mut b = [0u8; 0x40];
        let mut put = |at: usize, bytes: &[u8]| {
            if let Some(dst) = b.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        };
        let features = Self::offered(r)
            .checked_shr(32 * r.device_feature_select)
            .unwrap_or(0) as u32;
        let driver = r
            .driver_features
            .checked_shr(32 * r.driver_feature_select)
            .unwrap_or(0) as u32;
        put(0x00, &r.device_feature_select.to_le_bytes());
        put(0x04, &features.to_le_bytes());
        put(0x08, &r.driver_feature_select.to_le_bytes());
        put(0x0C, &driver.to_le_bytes());
        put(0x10, &r.config_msix_vector.to_le_bytes());
        put(0x12, &(r.queues.len() as u16).to_le_bytes());
        put(0x14, &[r.status, 0]);
        put(0x16, &r.queue_select.to_le_bytes());
        if let Some(q) = r.queues.get(usize::from(r.queue_select)) {
            put(0x18, &q.size.to_le_bytes());
            put(0x1A, &q.msix_vector.to_le_bytes());
            put(0x1C, &u16::from(q.enabled).to_le_bytes());
            put(0x1E, &r.queue_select.to_le_bytes());
            put(0x20, &q.desc.to_le_bytes());
            put(0x28, &q.avail.to_le_bytes());
            put(0x30, &q.used.to_le_bytes());
        }
        b
    }

    fn write_common(&self, r: &mut Registers, offset: u64, size: AccessSize, value: u64) {
        let half = |old: u64, high: bool| {
            if high {
                old & 0xFFFF_FFFF | value << 32
            } else if size == AccessSize::Qword {
                value
            } else {
                old & !0xFFFF_FFFF | value & 0xFFFF_FFFF
            }
        };
        let select = usize::from(r.queue_select);
        match offset {
            0x00 => r.device_feature_select = value as u32,
            0x08 => r.driver_feature_select = value as u32,
            0x0C => match r.driver_feature_select {
                0 => r.driver_features = r.driver_features & !0xFFFF_FFFF | value & 0xFFFF_FFFF,
                1 => r.driver_features = r.driver_features & 0xFFFF_FFFF | value << 32,
                _ => {}
            },
            0x10 => r.config_msix_vector = value as u16,
            0x14 => {
                let status = value as u8;
                if status == 0 {
                    Self::reset(r);
                    return;
                }
                let mut status = status;
                if status & STATUS_FEATURES_OK != 0 && r.status & STATUS_FEATURES_OK == 0 {
                    // Only features offered, and the modern interface, can be accepted.
                    let offered = Self::offered(r);
                    if r.driver_features & !offered != 0 || r.driver_features & F_VERSION_1 == 0 {
                        status &= !STATUS_FEATURES_OK;
                    }
                }
                r.status = status;
            }
            0x16 => r.queue_select = value as u16,
            _ => {
                let Some(q) = r.queues.get_mut(select) else {
                    return;
                };
                match offset {
                    0x18 => {
                        let n = value as u16;
                        if n.is_power_of_two() && n <= MAX_QUEUE_SIZE {
                            q.size = n;
                        }
                    }
                    0x1A => q.msix_vector = value as u16,
                    0x1C => q.enabled = value & 1 != 0,
                    0x20 | 0x24 => q.desc = half(q.desc, offset == 0x24),
                    0x28 | 0x2C => q.avail = half(q.avail, offset == 0x2C),
                    0x30 | 0x34 => q.used = half(q.used, offset == 0x34),
                    _ => {}
                }
            }
        }
    }

    fn notify(&self, r: &mut Registers, index: usize) {
        if r.status & STATUS_DRIVER_OK == 0 {
            return;
        }
        let Some(mut q) = r.queues.get(index).copied().filter(|q| q.enabled) else {
            return;
        };
        if r.backend.process(index, &mut q, &*self.mem) {
            let vector = q.msix_vector;
            self.raise(r, vector);
        }
        if let Some(slot) = r.queues.get_mut(index) {
            *slot = q;
        }
    }

    fn write_msix(&self, r: &mut Registers, offset: u64, size: AccessSize, value: u64) {
        let Some(entry) = r.msix.get_mut((offset / 16) as usize) else {
            return;
        };
        match (offset % 16, size) {
            (0, AccessSize::Qword) => entry.address = value,
            (0, _) => entry.address = entry.address & !0xFFFF_FFFF | value & 0xFFFF_FFFF,
            (4, _) => entry.address = entry.address & 0xFFFF_FFFF | value << 32,
            (8, AccessSize::Qword) => {
                entry.data = value as u32;
                entry.masked = (value >> 32) & 1 != 0;
            }
            (8, _) => entry.data = value as u32,
            (12, _) => entry.masked = value & 1 != 0,
            _ => {}
        }
        // A message held while masked goes out once unmasked.
        if !entry.masked && entry.pending {
            entry.pending = false;
            let (address, data) = (entry.address, entry.data);
            if !self.msix_control().1 {
                self.msi.signal(address, data);
            }
        }
    }

    fn read_msix(r: &Registers, offset: u64, size: AccessSize) -> u64 {
        let Some(entry) = r.msix.get((offset / 16) as usize) else {
            return 0;
        };
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&entry.address.to_le_bytes());
        b[8..12].copy_from_slice(&entry.data.to_le_bytes());
        b[12] = u8::from(entry.masked);
        slice_le(&b, (offset % 16) as usize, size)
    }
}

/// Little-endian value of `size` at `at` in `bytes` (zero past the end).
fn slice_le(bytes: &[u8], at: usize, size: AccessSize) -> u64 {
    (0..size.bytes() as usize).rev().fold(0u64, |v, i| {
        v << 8 | u64::from(bytes.get(at + i).copied().unwrap_or(0))
    })
}

impl PciBarDevice for VirtioPci {
    fn bar(&self) -> Option<(u64, u64)> {
        let c = self.config.lock();
        let memory_enabled = c.read(0x04, AccessSize::Word) & 2 != 0;
        let base = c.read(0x10, AccessSize::Dword) & !0xF;
        (memory_enabled && base != 0).then_some((base, BAR_SIZE))
    }

    fn bar_read(&self, offset: u64, size: AccessSize) -> u64 {
        let mut r = self.regs.lock();
        match offset {
            COMMON..ISR => slice_le(&Self::common_bytes(&r), offset as usize, size),
            ISR..DEVICE => {
                let isr = r.isr;
                r.isr = 0;
                u64::from(isr)
            }
            DEVICE..NOTIFY => r.backend.read_config(offset - DEVICE, size),
            MSIX_TABLE..MSIX_PBA => Self::read_msix(&r, offset - MSIX_TABLE, size),
            MSIX_PBA.. if offset - MSIX_PBA < 8 => {
                let bits = r
                    .msix
                    .iter()
                    .enumerate()
                    .fold(0u64, |acc, (i, e)| acc | u64::from(e.pending) << i);
                bits >> (8 * (offset - MSIX_PBA))
            }
            _ => 0,
        }
    }

    fn bar_write(&self, offset: u64, size: AccessSize, value: u64) {
        let mut r = self.regs.lock();
        match offset {
            COMMON..ISR => self.write_common(&mut r, offset, size, value),
            NOTIFY..MSIX_TABLE => {
                let index = ((offset - NOTIFY) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                self.notify(&mut r, index);
            }
            MSIX_TABLE..MSIX_PBA => self.write_msix(&mut r, offset - MSIX_TABLE, size, value),
            _ => {}
        }
    }
}

/// The configuration space of a modern virtio function of type `device_id`.
fn config_space(device_id: u16) -> ConfigSpace {
    // Class: mass storage (other) for a block device, communication (other) otherwise.
    let class = if device_id == blk::DEVICE_ID {
        0x01_80_00
    } else {
        0x07_80_00
    };
    let mut c = ConfigSpace::new(VENDOR_VIRTIO, 0x1040 + device_id, 1, class, 0);
    // Status: capabilities list.
    c.set16(0x06, 1 << 4);
    // BAR 0: 32-bit memory, non-prefetchable, BAR_SIZE bytes.
    c.set32(0x10, 0, !(BAR_SIZE as u32 - 1));
    c.set16(0x2C, VENDOR_VIRTIO);
    c.set16(0x2E, 0x40 + device_id);
    c.set_bytes(0x34, &[0x40]);
    // Virtio vendor capabilities (§4.1.4): vendor 0x09, next, length, cfg_type, BAR, id,
    // padding, offset, length (+ the notify multiplier).
    let cap = |cfg_type: u8, next: u8, len: u8, offset: u64, length: u32| {
        let mut b = Vec::with_capacity(usize::from(len));
        b.extend_from_slice(&[0x09, next, len, cfg_type, 0, 0, 0, 0]);
        b.extend_from_slice(&(offset as u32).to_le_bytes());
        b.extend_from_slice(&length.to_le_bytes());
        b
    };
    c.set_bytes(0x40, &cap(1, 0x50, 16, COMMON, 0x40));
    c.set_bytes(0x50, &cap(3, 0x60, 16, ISR, 4));
    c.set_bytes(0x60, &cap(4, 0x70, 16, DEVICE, 0x100));
    let mut notify = cap(2, MSIX_CAP, 20, NOTIFY, 0x1000);
    notify.extend_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes());
    c.set_bytes(0x70, &notify);
    // MSI-X (§6.8.2): table size − 1; table and PBA in BAR 0. Enable and function mask
    // are the writable bits of message control.
    c.set32(
        MSIX_CAP,
        0x11 | (MSIX_ENTRIES as u32 - 1) << 16,
        0xC000 << 16,
    );
    c.set32(MSIX_CAP + 4, MSIX_TABLE as u32, 0);
    c.set32(MSIX_CAP + 8, MSIX_PBA as u32, 0);
    c
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
