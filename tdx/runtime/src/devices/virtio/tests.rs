//! The virtio-blk function as a driver sees it: discovery through configuration space,
//! feature negotiation, queue setup, requests and MSI-X messages.

use super::blk::{self, Disk, VirtioBlk};
use super::queue::tests::{FlatMemory, offer, put_desc};
use super::*;
use crate::devices::pci::{PciBarWindow, PciConfigPorts};
use crate::devices::{MmioDevice, PortIoDevice};
use crate::pool::{MemoryPool, MemoryUse};
use alloc::vec;
use tdx_abi::Hpa;
use tdx_abi::phys::{PhysMemory, SparseMemory};

#[derive(Default)]
struct Messages(spin::Mutex<Vec<(u64, u32)>>);

impl MsiSink for Messages {
    fn signal(&self, address: u64, data: u32) {
        self.0.lock().push((address, data));
    }
}

const BAR: u64 = 0x8000_0000;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;

struct Rig {
    window: PciBarWindow,
    ports: PciConfigPorts,
    mem: Arc<FlatMemory>,
    msgs: Arc<Messages>,
    pool: Arc<MemoryPool>,
}

impl Rig {
    /// A block device over a 128 KiB disk whose sector `n` starts with byte `n`.
    fn new() -> Rig {
        let phys: Arc<dyn PhysMemory> = Arc::new(SparseMemory::default());
        let pool = Arc::new(MemoryPool::new(Hpa(0x100_0000), 0x100_0000).unwrap());
        let image: Vec<Hpa> = (0..32).map(|i| Hpa(0x4000_0000 + i * 4096)).collect();
        for (i, p) in image.iter().enumerate() {
            for s in 0..8u64 {
                phys.write(p.add(s * 512), &[(i as u64 * 8 + s) as u8]);
            }
        }
        let disk = Disk::copy_of(phys, pool.clone(), &image, 128 << 10).unwrap();
        let mem = Arc::new(FlatMemory::new(0x20000));
        let msgs = Arc::new(Messages::default());
        let f = Arc::new(VirtioPci::new(
            Box::new(VirtioBlk::new(disk)),
            mem.clone(),
            msgs.clone(),
        ));
        let ports = PciConfigPorts::new(vec![(3, 0, f.config())]);
        let window = PciBarWindow::new(BAR, vec![f as Arc<dyn PciBarDevice>]);
        Rig {
            window,
            ports,
            mem,
            msgs,
            pool,
        }
    }

    fn cfg_read(&self, reg: u8, size: AccessSize) -> u64 {
        self.ports
            .write(0, AccessSize::Dword, 0x8000_1800 | u64::from(reg & 0xFC));
        self.ports.read(4 + u16::from(reg & 3), size)
    }

    fn cfg_write(&self, reg: u8, size: AccessSize, value: u64) {
        self.ports
            .write(0, AccessSize::Dword, 0x8000_1800 | u64::from(reg & 0xFC));
        self.ports.write(4 + u16::from(reg & 3), size, value);
    }

    fn rd(&self, at: u64, size: AccessSize) -> u64 {
        self.window.read(at, size)
    }

    fn wr(&self, at: u64, size: AccessSize, value: u64) {
        self.window.write(at, size, value);
    }

    /// What Linux's virtio_pci_modern does up to DRIVER_OK, with MSI-X vector 1 for queue 0.
    fn bring_up(&self) {
        // The BAR, sized and placed, and memory decoding on.
        self.cfg_write(0x10, AccessSize::Dword, 0xFFFF_FFFF);
        assert_eq!(self.cfg_read(0x10, AccessSize::Dword), 0xFFFF_8000);
        self.cfg_write(0x10, AccessSize::Dword, BAR);
        self.cfg_write(0x04, AccessSize::Word, 0x6);
        // MSI-X on; entry 1 aimed at APIC 1, vector 0x41.
        self.cfg_write(MSIX_CAP + 2, AccessSize::Word, 0x8000);
        self.wr(MSIX_TABLE + 16, AccessSize::Dword, 0xFEE0_1000);
        self.wr(MSIX_TABLE + 24, AccessSize::Dword, 0x41);
        self.wr(MSIX_TABLE + 28, AccessSize::Dword, 0);
        self.wr(0x14, AccessSize::Byte, 1 | 2);
        self.wr(0x00, AccessSize::Dword, 1);
        assert_eq!(
            self.rd(0x04, AccessSize::Dword),
            3,
            "VERSION_1, ACCESS_PLATFORM"
        );
        self.wr(0x08, AccessSize::Dword, 1);
        self.wr(0x0C, AccessSize::Dword, 3);
        self.wr(0x14, AccessSize::Byte, 1 | 2 | 8);
        assert_eq!(self.rd(0x14, AccessSize::Byte), 11, "features accepted");
        self.wr(0x16, AccessSize::Word, 0);
        self.wr(0x18, AccessSize::Word, 8);
        self.wr(0x1A, AccessSize::Word, 1);
        self.wr(0x20, AccessSize::Dword, DESC);
        self.wr(0x24, AccessSize::Dword, 0);
        self.wr(0x28, AccessSize::Qword, AVAIL);
        self.wr(0x30, AccessSize::Qword, USED);
        self.wr(0x1C, AccessSize::Word, 1);
        self.wr(0x14, AccessSize::Byte, 1 | 2 | 8 | 4);
    }

    /// Queues a request of `kind` at `sector` with one data buffer of `len` bytes at
    /// 0x8000 as the `n`-th request, and notifies.
    fn request(&self, n: u16, kind: u32, sector: u64, len: u32) {
        let mut header = vec![];
        header.extend_from_slice(&kind.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&sector.to_le_bytes());
        self.mem.put(0x7000, &header);
        self.mem.put(0x9000, &[0xEE]);
        let data_flags = if kind == 1 { 1 } else { 1 | 2 };
        put_desc(&self.mem, DESC, 0, 0x7000, 16, 1, 1);
        put_desc(&self.mem, DESC, 1, 0x8000, len, data_flags, 2);
        put_desc(&self.mem, DESC, 2, 0x9000, 1, 2, 0);
        offer(&self.mem, AVAIL, 8, n, 0);
        self.wr(NOTIFY, AccessSize::Word, 0);
    }
}

#[test]
fn configuration_space_shows_a_modern_virtio_block_function_with_msix() {
    let r = Rig::new();
    assert_eq!(r.cfg_read(0x00, AccessSize::Dword), 0x1042_1AF4);
    assert_eq!(r.cfg_read(0x34, AccessSize::Byte), 0x40);
    // Walk the capability list: common, ISR, device, notify (vendor 0x09), then MSI-X.
    let mut at = 0x40u8;
    let mut seen = vec![];
    while at != 0 {
        let id = r.cfg_read(at, AccessSize::Byte) as u8;
        let kind = if id == 0x09 {
            r.cfg_read(at + 3, AccessSize::Byte) as u8
        } else {
            0
        };
        seen.push((id, kind));
        at = r.cfg_read(at + 1, AccessSize::Byte) as u8;
    }
    assert_eq!(seen, [(9, 1), (9, 3), (9, 4), (9, 2), (0x11, 0)]);
    assert_eq!(
        r.cfg_read(MSIX_CAP + 2, AccessSize::Word),
        MSIX_ENTRIES as u64 - 1
    );
    // Memory decoding off: nothing answers in the window.
    assert_eq!(r.rd(0x12, AccessSize::Word), 0xFFFF);
}

#[test]
fn a_read_fills_the_buffer_returns_it_used_and_sends_the_queue_message() {
    let r = Rig::new();
    r.bring_up();
    assert_eq!(r.rd(0x12, AccessSize::Word), 1, "one queue");
    assert_eq!(r.rd(DEVICE, AccessSize::Qword), 256, "capacity in sectors");
    assert_eq!(r.rd(DEVICE + 8, AccessSize::Dword), 64 << 10, "size_max");
    assert_eq!(r.rd(DEVICE + 12, AccessSize::Dword), 14, "seg_max");
    r.request(0, 0, 9, 1024);
    assert_eq!(r.mem.get(0x9000, 1), [0], "status OK");
    assert_eq!(r.mem.get(0x8000, 1), [9]);
    assert_eq!(r.mem.get(0x8200, 1), [10]);
    assert_eq!(r.mem.get(USED + 2, 2), [1, 0]);
    assert_eq!(r.mem.get(USED + 8, 4), [0x01, 0x04, 0, 0], "1024 + status");
    assert_eq!(*r.msgs.0.lock(), [(0xFEE0_1000, 0x41)]);
}

#[test]
fn writes_stay_in_the_tds_copy_and_reads_past_the_end_fail() {
    let r = Rig::new();
    r.bring_up();
    r.mem.put(0x8000, &[0x5A; 512]);
    r.request(0, 1, 3, 512);
    assert_eq!(r.mem.get(0x9000, 1), [0]);
    r.mem.put(0x8000, &[0; 512]);
    r.request(1, 0, 3, 512);
    assert_eq!(r.mem.get(0x8000, 2), [0x5A, 0x5A], "read back");
    r.request(2, 0, 255, 1024);
    assert_eq!(r.mem.get(0x9000, 1), [1], "IOERR past the end");
    r.request(3, 0x99, 0, 512);
    assert_eq!(r.mem.get(0x9000, 1), [2], "UNSUPP");
    // A buffer over size_max is refused before anything is copied.
    r.mem.put(0x8000, &[0x77; 4]);
    r.request(4, 0, 0, blk::SIZE_MAX + 512);
    assert_eq!(r.mem.get(0x9000, 1), [1], "IOERR for an oversized buffer");
    assert_eq!(r.mem.get(0x8000, 4), [0x77; 4], "nothing copied");
    assert_eq!(r.msgs.0.lock().len(), 5);
}

#[test]
fn masked_vectors_hold_the_message_until_unmasked_and_reset_forgets_the_queue() {
    let r = Rig::new();
    r.bring_up();
    r.wr(MSIX_TABLE + 28, AccessSize::Dword, 1);
    r.request(0, 0, 0, 512);
    assert!(r.msgs.0.lock().is_empty());
    assert_eq!(
        r.rd(MSIX_PBA, AccessSize::Qword),
        2,
        "pending bit of entry 1"
    );
    r.wr(MSIX_TABLE + 28, AccessSize::Dword, 0);
    assert_eq!(r.msgs.0.lock().len(), 1);
    assert_eq!(r.rd(MSIX_PBA, AccessSize::Qword), 0);
    r.wr(0x14, AccessSize::Byte, 0);
    assert_eq!(r.rd(0x1C, AccessSize::Word), 0, "queue disabled by reset");
    r.request(1, 0, 0, 512);
    assert_eq!(r.msgs.0.lock().len(), 1, "no queue, no request served");
}

#[test]
fn features_the_device_did_not_offer_are_refused() {
    let r = Rig::new();
    r.cfg_write(0x10, AccessSize::Dword, BAR);
    r.cfg_write(0x04, AccessSize::Word, 0x2);
    r.wr(0x08, AccessSize::Dword, 0);
    r.wr(0x0C, AccessSize::Dword, 1 << 28);
    r.wr(0x08, AccessSize::Dword, 1);
    r.wr(0x0C, AccessSize::Dword, 1);
    r.wr(0x14, AccessSize::Byte, 1 | 2 | 8);
    assert_eq!(r.rd(0x14, AccessSize::Byte) & 8, 0);
}

#[test]
fn the_disk_returns_its_pages_to_the_pool_when_dropped() {
    let r = Rig::new();
    assert_eq!(r.pool.stats().used_by(MemoryUse::TdDisk), 32);
    let Rig { window, pool, .. } = r;
    drop(window);
    assert_eq!(pool.stats().used_by(MemoryUse::TdDisk), 0);
}
