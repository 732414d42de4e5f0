//! QEMU's firmware configuration device (fw_cfg) on the port-I/O bus, as much of it as a
//! firmware needs to boot a Linux kernel directly: the signature and feature items, an
//! empty file directory, and the kernel, setup, initramfs and command-line items that
//! OVMF's `QemuKernelLoaderFsDxe` reads. Interface: QEMU `docs/specs/fw_cfg.rst` and
//! `include/standard-headers/linux/qemu_fw_cfg.h`: selector at 0x510 (16-bit), data at
//! 0x511 (byte by byte), the DMA interface at 0x514 (address bits 63:32) and 0x518 (bits
//! 31:0, which starts the transfer), both written big-endian. A DMA request
//! `FWCfgDmaAccess { control: be32, length: be32, address: be64 }` lives in guest memory;
//! in a TD both it and the buffer it names are shared memory, addressed without the shared
//! bit (as OVMF and Linux do), so the device reaches them through the TD's shared EPT.

use alloc::sync::Arc;
use alloc::vec::Vec;

use tdx_abi::phys::PhysMemory;
use tdx_abi::{Hpa, PAGE_SIZE_4K};

use super::{AccessSize, PortIoDevice};

/// First port (selector; data at +1; DMA address at +4..+12).
pub const FW_CFG_BASE: u16 = 0x510;
/// Ports the device decodes.
pub const FW_CFG_PORTS: u16 = 12;

/// Item keys (`qemu_fw_cfg.h`).
#[allow(missing_docs)] // names are QEMU's
pub mod key {
    pub const SIGNATURE: u16 = 0x00;
    pub const ID: u16 = 0x01;
    pub const KERNEL_SIZE: u16 = 0x08;
    pub const INITRD_SIZE: u16 = 0x0B;
    pub const KERNEL_DATA: u16 = 0x11;
    pub const INITRD_DATA: u16 = 0x12;
    pub const CMDLINE_SIZE: u16 = 0x14;
    pub const CMDLINE_DATA: u16 = 0x15;
    pub const SETUP_SIZE: u16 = 0x17;
    pub const SETUP_DATA: u16 = 0x18;
    pub const FILE_DIR: u16 = 0x19;
    /// The first key of named files.
    pub const FILE_FIRST: u16 = 0x20;
}

/// DMA control bits.
const DMA_ERROR: u32 = 1;
const DMA_READ: u32 = 1 << 1;
const DMA_SKIP: u32 = 1 << 2;
const DMA_SELECT: u32 = 1 << 3;
const DMA_WRITE: u32 = 1 << 4;
/// ID item: traditional interface and DMA.
const FEATURES: u32 = 1 | 1 << 1;
/// Bytes copied per step of a DMA request.
const DMA_CHUNK: usize = 64 << 10;
/// Largest DMA transfer: the largest item (an image upload is at most 64 MiB). A longer
/// request fails with the error bit, so one guest request cannot keep its runner copying
/// for long.
const MAX_DMA_BYTES: u32 = 64 << 20;

/// Guest memory the DMA interface reads and writes (addresses as the guest's driver gives
/// them). `false` where nothing backs the address.
pub trait DmaMemory: Send + Sync {
    /// Reads `buf.len()` bytes at `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
    /// Writes `data` at `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> bool;
}

/// Where an item's bytes are.
enum ItemData {
    Bytes(Vec<u8>),
    /// A byte range of a stored file (4 KiB of it per page).
    Stored {
        pages: Vec<Hpa>,
        start: u64,
        len: u64,
    },
}

/// The device's register state.
#[derive(Default)]
struct Registers {
    selected: u16,
    offset: u64,
    dma_high: u32,
}

/// The fw_cfg device of one TD.
pub struct FwCfg {
    items: Vec<(u16, ItemData)>,
    phys: Arc<dyn PhysMemory>,
    dma: Arc<dyn DmaMemory>,
    regs: spin::Mutex<Registers>,
}

/// A stored file (its pages and length) to hand out as items.
pub struct StoredFile {
    /// Pages in file order.
    pub pages: Vec<Hpa>,
    /// Length in bytes.
    pub len: u64,
}

impl FwCfg {
    /// A device that offers `kernel` (split at `setup_bytes` into setup and kernel items),
    /// `initrd`, `cmdline` and the named `files` (listed in the file directory, keys from
    /// [`key::FILE_FIRST`] on, names up to 55 bytes).
    pub fn new_linux(
        phys: Arc<dyn PhysMemory>,
        dma: Arc<dyn DmaMemory>,
        kernel: &StoredFile,
        setup_bytes: u64,
        initrd: Option<&StoredFile>,
        cmdline: &str,
        files: Vec<(&str, Vec<u8>)>,
    ) -> FwCfg {
        let le32 =
            |v: u64| ItemData::Bytes(u32::try_from(v).unwrap_or(u32::MAX).to_le_bytes().to_vec());
        let setup = setup_bytes.min(kernel.len);
        let mut command = cmdline.as_bytes().to_vec();
        command.push(0);
        let mut items = alloc::vec![
            (key::SIGNATURE, ItemData::Bytes(b"QEMU".to_vec())),
            (key::ID, ItemData::Bytes(FEATURES.to_le_bytes().to_vec())),
            (key::FILE_DIR, ItemData::Bytes(file_directory(&files))),
            (key::SETUP_SIZE, le32(setup)),
            (
                key::SETUP_DATA,
                ItemData::Stored {
                    pages: kernel.pages.clone(),
                    start: 0,
                    len: setup,
                },
            ),
            (key::KERNEL_SIZE, le32(kernel.len - setup)),
            (
                key::KERNEL_DATA,
                ItemData::Stored {
                    pages: kernel.pages.clone(),
                    start: setup,
                    len: kernel.len - setup,
                },
            ),
            (key::CMDLINE_SIZE, le32(command.len() as u64)),
            (key::CMDLINE_DATA, ItemData::Bytes(command)),
            (key::INITRD_SIZE, le32(initrd.map_or(0, |i| i.len))),
        ];
        for (key, (_, data)) in (key::FILE_FIRST..).zip(files) {
            items.push((key, ItemData::Bytes(data)));
        }
        if let Some(initrd) = initrd {
            items.push((
                key::INITRD_DATA,
                ItemData::Stored {
                    pages: initrd.pages.clone(),
                    start: 0,
                    len: initrd.len,
                },
            ));
        }
        FwCfg {
            items,
            phys,
            dma,
            regs: spin::Mutex::new(Registers::default()),
        }
    }

    fn item(&self, key: u16) -> Option<&ItemData> {
        self.items.iter().find(|(k, _)| *k == key).map(|(_, d)| d)
    }

    /// Copies bytes `[offset, offset + buf.len())` of item `key` into `buf`; zeros past its
    /// end (and for an unknown key). Returns how many bytes came from the item.
    fn read_item(&self, key: u16, offset: u64, buf: &mut [u8]) -> usize {
        buf.fill(0);
        let Some(data) = self.item(key) else {
            return 0;
        };
        match data {
            ItemData::Bytes(bytes) => {
                let from = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let n = (bytes.len() - from).min(buf.len());
                buf[..n].copy_from_slice(&bytes[from..from + n]);
                n
            }
            ItemData::Stored { pages, start, len } => {
                let n = usize::try_from(len.saturating_sub(offset))
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let mut done = 0;
                while done < n {
                    let at = start + offset + done as u64;
                    let in_page = (at % PAGE_SIZE_4K) as usize;
                    let chunk = (PAGE_SIZE_4K as usize - in_page).min(n - done);
                    match pages.get((at / PAGE_SIZE_4K) as usize) {
                        Some(page) => self
                            .phys
                            .read(Hpa(page.0 + in_page as u64), &mut buf[done..done + chunk]),
                        None => break,
                    }
                    done += chunk;
                }
                done
            }
        }
    }

    /// Runs the DMA request at `addr`.
    fn dma(&self, addr: u64) {
        let mut request = [0u8; 16];
        if !self.dma.read(addr, &mut request) {
            return;
        }
        let control = u32::from_be_bytes([request[0], request[1], request[2], request[3]]);
        let length = u32::from_be_bytes([request[4], request[5], request[6], request[7]]);
        let mut target = [0u8; 8];
        target.copy_from_slice(&request[8..16]);
        let target = u64::from_be_bytes(target);
        let mut regs = self.regs.lock();
        if control & DMA_SELECT != 0 {
            regs.selected = (control >> 16) as u16;
            regs.offset = 0;
        }
        let mut status = 0;
        if control & DMA_WRITE != 0 || length > MAX_DMA_BYTES {
            status = DMA_ERROR;
        } else if control & DMA_READ != 0 {
            let mut chunk = alloc::vec![0u8; DMA_CHUNK.min(length as usize)];
            let mut done = 0u64;
            while done < u64::from(length) {
                let n = chunk.len().min((u64::from(length) - done) as usize);
                self.read_item(regs.selected, regs.offset + done, &mut chunk[..n]);
                if !self.dma.write(target + done, &chunk[..n]) {
                    status = DMA_ERROR;
                    break;
                }
                done += n as u64;
            }
            regs.offset += done;
        } else if control & DMA_SKIP != 0 {
            regs.offset += u64::from(length);
        }
        drop(regs);
        let _ = self.dma.write(addr, &status.to_be_bytes());
    }
}

/// The file directory item: a big-endian count, then per file its size (BE32), key (BE16),
/// two reserved bytes and a NUL-padded 56-byte name.
fn file_directory(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut dir = (files.len() as u32).to_be_bytes().to_vec();
    for (key, (name, data)) in (key::FILE_FIRST..).zip(files) {
        dir.extend_from_slice(&(data.len() as u32).to_be_bytes());
        dir.extend_from_slice(&key.to_be_bytes());
        dir.extend_from_slice(&[0, 0]);
        let mut n = [0u8; 56];
        let len = name.len().min(55);
        n[..len].copy_from_slice(&name.as_bytes()[..len]);
        dir.extend_from_slice(&n);
    }
    dir
}

impl PortIoDevice for FwCfg {
    fn read(&self, offset: u16, _size: AccessSize) -> u64 {
        match offset {
            1 => {
                let mut regs = self.regs.lock();
                let mut b = [0u8; 1];
                self.read_item(regs.selected, regs.offset, &mut b);
                regs.offset += 1;
                u64::from(b[0])
            }
            // The DMA address registers read as "QEMU CFG" (the DMA interface's signature).
            4..=11 => u64::from(b"QEMU CFG"[usize::from(offset - 4)]),
            _ => 0,
        }
    }

    fn write(&self, offset: u16, size: AccessSize, value: u64) {
        match (offset, size) {
            (0, AccessSize::Word) => {
                let mut regs = self.regs.lock();
                regs.selected = value as u16;
                regs.offset = 0;
            }
            (4, AccessSize::Dword) => self.regs.lock().dma_high = (value as u32).swap_bytes(),
            (8, AccessSize::Dword) => {
                let high = self.regs.lock().dma_high;
                let addr = u64::from(high) << 32 | u64::from((value as u32).swap_bytes());
                self.dma(addr);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::vec;
    use tdx_abi::phys::SparseMemory;

    /// Guest memory that is just host memory at the same addresses.
    struct Flat(Arc<SparseMemory>);

    impl DmaMemory for Flat {
        fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
            self.0.read(Hpa(addr), buf);
            true
        }
        fn write(&self, addr: u64, data: &[u8]) -> bool {
            self.0.write(Hpa(addr), data);
            true
        }
    }

    fn device() -> (FwCfg, Arc<SparseMemory>) {
        let mem = Arc::new(SparseMemory::new());
        // A 3-page "kernel" at 0x10_0000 (bytes = low byte of the file offset / 7) and a
        // 100-byte "initrd".
        let kernel: Vec<u8> = (0..0x2800u32).map(|i| (i / 7) as u8).collect();
        for (i, chunk) in kernel.chunks(4096).enumerate() {
            mem.write(Hpa(0x10_0000 + i as u64 * 4096), chunk);
        }
        mem.write(Hpa(0x20_0000), &[0x5A; 100]);
        let dev = FwCfg::new_linux(
            mem.clone(),
            Arc::new(Flat(mem.clone())),
            &StoredFile {
                pages: vec![Hpa(0x10_0000), Hpa(0x10_1000), Hpa(0x10_2000)],
                len: 0x2800,
            },
            0x1000,
            Some(&StoredFile {
                pages: vec![Hpa(0x20_0000)],
                len: 100,
            }),
            "console=ttyS0",
            vec![("etc/acpi/rsdp", vec![7; 36])],
        );
        (dev, mem)
    }

    fn select(dev: &FwCfg, key: u16) {
        dev.write(0, AccessSize::Word, u64::from(key));
    }

    fn read_bytes(dev: &FwCfg, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| dev.read(1, AccessSize::Byte) as u8)
            .collect()
    }

    #[test]
    fn signature_features_and_sizes_through_the_data_port() {
        let (dev, _) = device();
        select(&dev, key::SIGNATURE);
        assert_eq!(read_bytes(&dev, 4), b"QEMU");
        select(&dev, key::ID);
        assert_eq!(read_bytes(&dev, 4), [3, 0, 0, 0]);
        select(&dev, key::SETUP_SIZE);
        assert_eq!(read_bytes(&dev, 4), 0x1000u32.to_le_bytes());
        select(&dev, key::KERNEL_SIZE);
        assert_eq!(read_bytes(&dev, 4), 0x1800u32.to_le_bytes());
        select(&dev, key::CMDLINE_DATA);
        assert_eq!(read_bytes(&dev, 15), b"console=ttyS0\0\0");
        select(&dev, key::FILE_DIR);
        let dir = read_bytes(&dev, 4 + 64);
        assert_eq!(dir[..4], 1u32.to_be_bytes());
        assert_eq!(dir[4..8], 36u32.to_be_bytes());
        assert_eq!(dir[8..10], key::FILE_FIRST.to_be_bytes());
        assert_eq!(&dir[12..25], b"etc/acpi/rsdp");
        select(&dev, key::FILE_FIRST);
        assert_eq!(read_bytes(&dev, 2), [7, 7]);
        select(&dev, 0x7777);
        assert_eq!(read_bytes(&dev, 2), [0, 0]);
        assert_eq!(
            (4..12)
                .map(|o| dev.read(o, AccessSize::Byte) as u8)
                .collect::<Vec<_>>(),
            b"QEMU CFG"
        );
    }

    /// Writes a DMA request at `at` and starts it through the big-endian address ports.
    fn dma(dev: &FwCfg, mem: &SparseMemory, at: u64, control: u32, len: u32, target: u64) -> u32 {
        let mut req = [0u8; 16];
        req[0..4].copy_from_slice(&control.to_be_bytes());
        req[4..8].copy_from_slice(&len.to_be_bytes());
        req[8..16].copy_from_slice(&target.to_be_bytes());
        mem.write(Hpa(at), &req);
        dev.write(
            4,
            AccessSize::Dword,
            u64::from(((at >> 32) as u32).swap_bytes()),
        );
        dev.write(8, AccessSize::Dword, u64::from((at as u32).swap_bytes()));
        let mut status = [0u8; 4];
        mem.read(Hpa(at), &mut status);
        u32::from_be_bytes(status)
    }

    #[test]
    fn dma_selects_reads_across_pages_and_skips() {
        let (dev, mem) = device();
        let select_kernel = u32::from(key::KERNEL_DATA) << 16 | DMA_SELECT;
        // Skip 0x10 bytes, then read 0x1000 bytes that start in the file's second page and
        // end in its third.
        assert_eq!(
            dma(&dev, &mem, 0x30_0000, select_kernel | DMA_SKIP, 0x10, 0),
            0
        );
        assert_eq!(dma(&dev, &mem, 0x30_0000, DMA_READ, 0x1000, 0x40_0000), 0);
        let mut got = vec![0u8; 0x1000];
        mem.read(Hpa(0x40_0000), &mut got);
        let want: Vec<u8> = (0x1010..0x2010u32).map(|i| (i / 7) as u8).collect();
        assert_eq!(got, want);
        // Past the end: zeros.
        let initrd = u32::from(key::INITRD_DATA) << 16 | DMA_SELECT | DMA_READ;
        assert_eq!(dma(&dev, &mem, 0x30_0000, initrd, 128, 0x50_0000), 0);
        let mut tail = [0u8; 128];
        mem.read(Hpa(0x50_0000), &mut tail);
        assert!(tail[..100].iter().all(|b| *b == 0x5A) && tail[100..].iter().all(|b| *b == 0));
        // Writes are refused.
        assert_eq!(
            dma(&dev, &mem, 0x30_0000, DMA_WRITE, 4, 0x50_0000),
            DMA_ERROR
        );
        // A transfer longer than any item is refused too.
        assert_eq!(
            dma(&dev, &mem, 0x30_0000, DMA_READ, u32::MAX, 0x50_0000),
            DMA_ERROR
        );
    }
}
