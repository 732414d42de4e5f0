//! virtio-blk (Virtual I/O Device (VIRTIO) Version 1.2, §5.2): one request queue over a
//! [`Disk`], the TD's own copy of an uploaded disk image in pool pages. Requests: read
//! (`IN`), write (`OUT`), flush (nothing to do: the disk is memory) and get-ID; anything
//! else is answered UNSUPP. A request that reaches past the disk's end is IOERR.
//!
//! Writes stay in the TD's copy until the TD is deleted; the uploaded image is never
//! changed, and nothing is written back anywhere.

use alloc::sync::Arc;
use alloc::vec::Vec;

use tdx_abi::phys::PhysMemory;
use tdx_abi::{Hpa, PAGE_SIZE_4K};

use super::super::AccessSize;
use super::super::fw_cfg::DmaMemory;
use super::VirtioBackend;
use super::queue::{Buffer, ChainError, Queue};
use crate::pool::{MemoryPool, MemoryUse};

/// The virtio device ID of a block device.
pub const DEVICE_ID: u16 = 2;
/// Bytes per sector.
pub const SECTOR: u64 = 512;

/// VIRTIO_BLK_F_SIZE_MAX: one data buffer holds at most [`SIZE_MAX`] bytes.
const F_SIZE_MAX: u64 = 1 << 1;
/// VIRTIO_BLK_F_SEG_MAX: a request has at most [`SEG_MAX`] data buffers.
const F_SEG_MAX: u64 = 1 << 2;
/// VIRTIO_BLK_F_FLUSH.
const F_FLUSH: u64 = 1 << 9;

/// The largest data buffer the device takes. With [`SEG_MAX`] it bounds one request to
/// 896 KiB, and one notification (a full queue) to 224 MiB of copying: the work a guest can
/// make its runner do in one exit.
pub const SIZE_MAX: u32 = 64 << 10;
/// The most data buffers in a request: a chain holds the header and the status too.
pub const SEG_MAX: u32 = super::queue::MAX_CHAIN as u32 - 2;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// The ID string `GET_ID` returns (20 bytes, NUL-padded).
const SERIAL: &[u8; 20] = b"tdx-appliance-disk\0\0";

/// A TD's disk: `len` bytes in pool pages, returned to the pool (zeroed) when dropped.
pub struct Disk {
    phys: Arc<dyn PhysMemory>,
    pool: Arc<MemoryPool>,
    pages: Vec<Hpa>,
    len: u64,
}

/// Why a disk could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// The pool has no room for the copy.
    OutOfMemory,
}

impl Disk {
    /// A copy of the `len` bytes held in `source` (4 KiB per page, in order).
    pub fn copy_of(
        phys: Arc<dyn PhysMemory>,
        pool: Arc<MemoryPool>,
        source: &[Hpa],
        len: u64,
    ) -> Result<Disk, DiskError> {
        let count = len.div_ceil(PAGE_SIZE_4K) as usize;
        let mut pages = Vec::new();
        if count > 0 {
            pool.alloc_4k_batch(MemoryUse::TdDisk, count, &mut pages)
                .map_err(|_| DiskError::OutOfMemory)?;
        }
        let disk = Disk {
            phys,
            pool,
            pages,
            len,
        };
        let mut page = [0u8; PAGE_SIZE_4K as usize];
        for (dst, src) in disk.pages.iter().zip(source) {
            disk.phys.read(*src, &mut page);
            disk.phys.write(*dst, &page);
        }
        Ok(disk)
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the disk has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `len` bytes at disk offset `offset` to guest memory at `addr`; false if the
    /// range is outside the disk or the guest memory.
    fn write_to_guest(&self, offset: u64, addr: u64, len: u64, mem: &dyn DmaMemory) -> bool {
        self.chunks(offset, len, |hpa, done, n| {
            let mut buf = [0u8; PAGE_SIZE_4K as usize];
            let Some(b) = buf.get_mut(..n) else {
                return false;
            };
            self.phys.read(hpa, b);
            mem.write(addr + done, b)
        })
    }

    /// Copies `len` bytes from guest memory at `addr` to disk offset `offset`.
    fn read_guest_into(&self, offset: u64, addr: u64, len: u64, mem: &dyn DmaMemory) -> bool {
        self.chunks(offset, len, |hpa, done, n| {
            let mut buf = [0u8; PAGE_SIZE_4K as usize];
            let Some(b) = buf.get_mut(..n) else {
                return false;
            };
            if !mem.read(addr + done, b) {
                return false;
            }
            self.phys.write(hpa, b);
            true
        })
    }

    /// Calls `f(hpa, bytes done, chunk length)` for each piece of `[offset, offset + len)`
    /// within one page; false if the range leaves the disk or `f` fails.
    fn chunks(&self, offset: u64, len: u64, mut f: impl FnMut(Hpa, u64, usize) -> bool) -> bool {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return false;
        }
        let mut done = 0u64;
        while done < len {
            let at = offset + done;
            let in_page = at % PAGE_SIZE_4K;
            let n = (PAGE_SIZE_4K - in_page).min(len - done);
            let Some(page) = self.pages.get((at / PAGE_SIZE_4K) as usize) else {
                return false;
            };
            if !f(page.add(in_page), done, n as usize) {
                return false;
            }
            done += n;
        }
        true
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        for p in &self.pages {
            self.phys.zero(*p, PAGE_SIZE_4K);
            if let Err(e) = self.pool.free_4k(*p, MemoryUse::TdDisk) {
                log::error!("host: disk page {p} could not be freed: {e}");
            }
        }
    }
}

/// The virtio-blk device over a [`Disk`].
pub struct VirtioBlk {
    disk: Disk,
}

impl VirtioBlk {
    /// A block device over `disk`.
    pub fn new(disk: Disk) -> VirtioBlk {
        VirtioBlk { disk }
    }

    /// Serves one request; returns the bytes written into device-writable buffers.
    fn serve(&self, buffers: &[Buffer], mem: &dyn DmaMemory) -> Option<u32> {
        let (header, rest) = buffers.split_first()?;
        let (status, data) = rest.split_last()?;
        if header.device_writes || header.len < 16 || !status.device_writes || status.len < 1 {
            return None;
        }
        let mut h = [0u8; 16];
        if !mem.read(header.addr, &mut h) {
            return None;
        }
        let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
        let mut written = 0u32;
        let oversized = data.len() > SEG_MAX as usize || data.iter().any(|b| b.len > SIZE_MAX);
        let result = match kind {
            _ if oversized => S_IOERR,
            T_IN | T_OUT => {
                let writes_guest = kind == T_IN;
                let mut offset = sector.checked_mul(SECTOR);
                let mut ok = true;
                for b in data {
                    let Some(at) = offset else {
                        ok = false;
                        break;
                    };
                    if b.device_writes != writes_guest {
                        ok = false;
                        break;
                    }
                    let len = u64::from(b.len);
                    ok = if writes_guest {
                        self.disk.write_to_guest(at, b.addr, len, mem)
                    } else {
                        self.disk.read_guest_into(at, b.addr, len, mem)
                    };
                    if !ok {
                        break;
                    }
                    if writes_guest {
                        written = written.saturating_add(b.len);
                    }
                    offset = at.checked_add(len);
                }
                if ok { S_OK } else { S_IOERR }
            }
            T_FLUSH => S_OK,
            T_GET_ID => match data.first() {
                Some(b) if b.device_writes => {
                    let n = (b.len as usize).min(SERIAL.len());
                    if mem.write(b.addr, SERIAL.get(..n).unwrap_or(&[])) {
                        written = n as u32;
                        S_OK
                    } else {
                        S_IOERR
                    }
                }
                _ => S_IOERR,
            },
            _ => S_UNSUPP,
        };
        mem.write(status.addr, &[result]).then_some(written + 1)
    }
}

impl VirtioBackend for VirtioBlk {
    fn device_id(&self) -> u16 {
        DEVICE_ID
    }

    fn features(&self) -> u64 {
        F_SIZE_MAX | F_SEG_MAX | F_FLUSH
    }

    fn queue_count(&self) -> usize {
        1
    }

    fn read_config(&self, offset: u64, size: AccessSize) -> u64 {
        // §5.2.4: capacity in sectors, size_max, seg_max.
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&(self.disk.len() / SECTOR).to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..].copy_from_slice(&SEG_MAX.to_le_bytes());
        super::slice_le(&config, offset as usize, size)
    }

    fn process(&mut self, _index: usize, queue: &mut Queue, mem: &dyn DmaMemory) -> bool {
        let mut used = false;
        // At most one pass over the ring per notification.
        for _ in 0..queue.size {
            let (head, written) = match queue.pop(mem) {
                None => break,
                Some(Ok(chain)) => (chain.head, self.serve(chain.buffers(), mem).unwrap_or(0)),
                Some(Err(ChainError::Malformed(Some(head)))) => (head, 0),
                Some(Err(ChainError::Malformed(None))) => break,
            };
            used |= queue.push_used(mem, head, written);
        }
        used
    }

    fn reset(&mut self) {}
}
