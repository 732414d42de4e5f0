//! The virtio-blk function as a driver sees it: discovery through configuration space,
//! feature negotiation, queue setup, requests and MSI-X messages.

use super::blk::{self, Disk, VirtioBlk};
use super::queue::tests::{FlatMemory, offer, put_desc};
use super::*;
use crate::devices::pci::{PciBarWindow, PciConfigPorts};
use crate::devices::{MmioDevice, PortIoDevice};
use crate::host::td::ConsoleRing;
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
        Rig::around(Box::new(VirtioBlk::new(disk)), pool).0
    }

    /// The function of `backend` at 00:03.0, and the function itself.
    fn around(backend: Box<dyn VirtioBackend>, pool: Arc<MemoryPool>) -> (Rig, Arc<VirtioPci>) {
        let mem = Arc::new(FlatMemory::new(0x20000));
        let msgs = Arc::new(Messages::default());
        let f = Arc::new(VirtioPci::new(backend, mem.clone(), msgs.clone()));
        let ports = PciConfigPorts::new(vec![(3, 0, f.config())]);
        let window = PciBarWindow::new(BAR, vec![f.clone() as Arc<dyn PciBarDevice>]);
        let rig = Rig {
            window,
            ports,
            mem,
            msgs,
            pool,
        };
        (rig, f)
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
        self.bring_up_queues(&[(DESC, AVAIL, USED)]);
    }

    /// [`Rig::bring_up`] with queues 0, 1, … at `(desc, avail, used)`, 8 entries each, all
    /// on MSI-X vector 1.
    fn bring_up_queues(&self, queues: &[(u64, u64, u64)]) {
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
        for (index, &(desc, avail, used)) in queues.iter().enumerate() {
            self.wr(0x16, AccessSize::Word, index as u64);
            self.wr(0x18, AccessSize::Word, 8);
            self.wr(0x1A, AccessSize::Word, 1);
            self.wr(0x20, AccessSize::Dword, desc);
            self.wr(0x24, AccessSize::Dword, 0);
            self.wr(0x28, AccessSize::Qword, avail);
            self.wr(0x30, AccessSize::Qword, used);
            self.wr(0x1C, AccessSize::Word, 1);
        }
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

/// The console's queues: receive (0) and transmit (1).
const RX: (u64, u64, u64) = (0x1000, 0x2000, 0x3000);
const TX: (u64, u64, u64) = (0x4000, 0x5000, 0x6000);

#[test]
fn the_console_sends_what_the_guest_transmits_to_the_console_ring() {
    let output = Arc::new(ConsoleRing::new(4096));
    let input = Arc::new(console::ConsoleInput::default());
    let pool = Arc::new(MemoryPool::new(Hpa(0x100_0000), 0x10_0000).unwrap());
    let (r, _) = Rig::around(
        Box::new(console::VirtioConsole::new(output.clone(), input)),
        pool,
    );
    assert_eq!(
        r.cfg_read(0x00, AccessSize::Dword),
        0x1043_1AF4,
        "virtio console"
    );
    r.bring_up_queues(&[RX, TX]);
    assert_eq!(r.rd(0x12, AccessSize::Word), 2, "two queues");
    // Two buffers in one chain, and a device-writable one that is not output.
    r.mem.put(0x8000, b"hello, ");
    r.mem.put(0x8100, b"hvc0\n");
    put_desc(&r.mem, TX.0, 0, 0x8000, 7, 1, 1);
    put_desc(&r.mem, TX.0, 1, 0x8100, 5, 1, 2);
    put_desc(&r.mem, TX.0, 2, 0x8200, 16, 2, 0);
    offer(&r.mem, TX.1, 8, 0, 0);
    r.wr(NOTIFY + 4, AccessSize::Word, 1);
    assert_eq!(output.read(0, 100).1, b"hello, hvc0\n");
    assert_eq!(r.mem.get(TX.2 + 2, 2), [1, 0], "returned used");
    assert_eq!(*r.msgs.0.lock(), [(0xFEE0_1000, 0x41)]);
    // A buffer longer than the cap is cut at it.
    put_desc(&r.mem, TX.0, 3, 0x8000, console::TX_CHAIN_MAX + 4096, 0, 0);
    offer(&r.mem, TX.1, 8, 1, 3);
    r.wr(NOTIFY + 4, AccessSize::Word, 1);
    assert_eq!(output.total(), 12 + u64::from(console::TX_CHAIN_MAX));
    // The cap holds for a chain as a whole: two buffers of the cap's size give one cap.
    put_desc(&r.mem, TX.0, 4, 0x8000, console::TX_CHAIN_MAX, 1, 5);
    put_desc(&r.mem, TX.0, 5, 0x8000, console::TX_CHAIN_MAX, 0, 0);
    offer(&r.mem, TX.1, 8, 2, 4);
    r.wr(NOTIFY + 4, AccessSize::Word, 1);
    assert_eq!(output.total(), 12 + 2 * u64::from(console::TX_CHAIN_MAX));
}

#[test]
fn console_input_waits_for_receive_buffers_and_is_delivered_once() {
    let output = Arc::new(ConsoleRing::new(4096));
    let input = Arc::new(console::ConsoleInput::default());
    let pool = Arc::new(MemoryPool::new(Hpa(0x100_0000), 0x10_0000).unwrap());
    let (r, f) = Rig::around(
        Box::new(console::VirtioConsole::new(output, input.clone())),
        pool,
    );
    // Input before the driver runs waits.
    assert_eq!(input.push(b"ls"), 2);
    f.run_queue(console::RX_QUEUE);
    r.bring_up_queues(&[RX, TX]);
    // The guest offers a 4-byte receive buffer: the waiting input lands in it.
    put_desc(&r.mem, RX.0, 0, 0x9000, 4, 2, 0);
    offer(&r.mem, RX.1, 8, 0, 0);
    r.wr(NOTIFY, AccessSize::Word, 0);
    assert_eq!(r.mem.get(0x9000, 2), *b"ls");
    assert_eq!(r.mem.get(RX.2 + 8, 4), [2, 0, 0, 0], "2 bytes written");
    assert!(input.is_empty());
    // Input after the buffers are offered goes out when the host runs the queue; what does
    // not fit waits for the next buffer.
    put_desc(&r.mem, RX.0, 1, 0x9100, 4, 2, 0);
    offer(&r.mem, RX.1, 8, 1, 1);
    r.msgs.0.lock().clear();
    assert_eq!(input.push(b" -l\n!"), 5);
    f.run_queue(console::RX_QUEUE);
    assert_eq!(r.mem.get(0x9100, 4), *b" -l\n");
    assert_eq!(input.len(), 1);
    assert_eq!(*r.msgs.0.lock(), [(0xFEE0_1000, 0x41)]);
    // The backlog is bounded.
    assert_eq!(
        input.push(&[b'x'; console::INPUT_BYTES]),
        console::INPUT_BYTES - 1
    );
}
