//! Access to host-physical memory by HPA.
//!
//! The software TDX module copies PAGE.ADD sources and hashes MR.EXTEND chunks; the runtime
//! clears pages it takes back and writes the TD HOB. On the appliance memory is identity-mapped
//! and the implementation is a thin unsafe layer there; on the Linux host tests use
//! [`SparseMemory`], which stores only pages that were written.

#[cfg(any(test, feature = "testing"))]
use alloc::{boxed::Box, collections::BTreeMap};

use crate::Hpa;
/// Bytes of a page of [`SparseMemory`].
#[cfg(any(test, feature = "testing"))]
const PAGE_BYTES: usize = 4096;

/// Byte-level access to physical memory. Callers only pass ranges they own (pages handed to
/// them by the memory pool); implementations may panic on addresses outside their range, which
/// would be a bug in the caller, never a consequence of external input.
pub trait PhysMemory: Send + Sync {
    /// Copies `buf.len()` bytes starting at `hpa` into `buf`.
    fn read(&self, hpa: Hpa, buf: &mut [u8]);
    /// Copies `data` to memory starting at `hpa`.
    fn write(&self, hpa: Hpa, data: &[u8]);
    /// Fills `len` bytes starting at `hpa` with zeros.
    fn zero(&self, hpa: Hpa, len: u64);
}

/// Sparse in-memory [`PhysMemory`] for host tests: untouched pages read as zero and cost
/// nothing, so a test can model gigabytes of guest memory.
#[cfg(any(test, feature = "testing"))]
#[derive(Default)]
pub struct SparseMemory {
    pages: spin::Mutex<BTreeMap<u64, Box<[u8; PAGE_BYTES]>>>,
}

#[cfg(any(test, feature = "testing"))]
impl SparseMemory {
    /// An empty memory (all zero).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of 4 KiB pages holding non-default contents.
    pub fn resident_pages(&self) -> usize {
        self.pages.lock().len()
    }

    /// Splits `[hpa, hpa+len)` into (page frame, offset in page, length) pieces.
    fn pieces(hpa: Hpa, len: u64) -> impl Iterator<Item = (u64, usize, usize)> {
        let mut addr = hpa.0;
        let end = hpa.0 + len;
        core::iter::from_fn(move || {
            if addr >= end {
                return None;
            }
            let frame = addr >> 12;
            let off = (addr & 0xFFF) as usize;
            let n = usize::try_from(end - addr)
                .map_or(PAGE_BYTES - off, |left| left.min(PAGE_BYTES - off));
            addr += n as u64;
            Some((frame, off, n))
        })
    }
}

#[cfg(any(test, feature = "testing"))]
impl PhysMemory for SparseMemory {
    fn read(&self, hpa: Hpa, buf: &mut [u8]) {
        let pages = self.pages.lock();
        let mut done = 0;
        for (frame, off, n) in Self::pieces(hpa, buf.len() as u64) {
            let dst = &mut buf[done..done + n];
            match pages.get(&frame) {
                Some(page) => dst.copy_from_slice(&page[off..off + n]),
                None => dst.fill(0),
            }
            done += n;
        }
    }

    fn write(&self, hpa: Hpa, data: &[u8]) {
        let mut pages = self.pages.lock();
        let mut done = 0;
        for (frame, off, n) in Self::pieces(hpa, data.len() as u64) {
            let page = pages
                .entry(frame)
                .or_insert_with(|| Box::new([0u8; PAGE_BYTES]));
            page[off..off + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    fn zero(&self, hpa: Hpa, len: u64) {
        let mut pages = self.pages.lock();
        for (frame, off, n) in Self::pieces(hpa, len) {
            if off == 0 && n == PAGE_BYTES {
                pages.remove(&frame);
            } else if let Some(page) = pages.get_mut(&frame) {
                page[off..off + n].fill(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_memory_reads_back_writes_across_pages() {
        let mem = SparseMemory::new();
        let data: alloc::vec::Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
        mem.write(Hpa(0x1000 + 100), &data);
        let mut back = alloc::vec![0u8; 6000];
        mem.read(Hpa(0x1000 + 100), &mut back);
        assert_eq!(back, data);
        assert_eq!(mem.resident_pages(), 2);
        mem.zero(Hpa(0x1000), 0x2000);
        mem.read(Hpa(0x1000 + 100), &mut back);
        assert!(back.iter().all(|&b| b == 0));
        assert_eq!(mem.resident_pages(), 0);
    }
}
