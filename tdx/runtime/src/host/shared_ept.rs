//! A TD's shared EPT: the host's own 4-level EPT for the shared half of the TD's GPA space
//! (Intel SDM vol. 3C 29.3, "The Extended Page Table Mechanism"; TDX gives its root to the
//! CPU through the TD-VMCS field SHARED_EPTP, written with TDH.VP.WR before first entry).
//!
//! Memory the guest converts to shared (TDVMCALL MapGPA) is backed by the frame that backs
//! the same GFN as private memory: the TD's backing reserves one frame per GFN for the
//! TD's life (see [`super::memory::TdBacking`]), and a shared GFN's private page has just been
//! removed from the S-EPT, so that frame is free to serve the shared alias. The frame is
//! zeroed first, so no private content shows through. Converting back unmaps it here; the
//! next private fault adds it to the TD again.
//!
//! Table pages come from the TD's preallocated S-EPT page cache, which holds room for both
//! trees, so conversions never allocate. Entries grant read, write and execute, write-back
//! memory type; no other bits, and no large pages. Edits are serialised by a lock; an entry
//! is written so that a concurrent walk never sees it half-written (the byte with the
//! permission bits last when setting, first when clearing).

use alloc::sync::Arc;

use tdx_abi::phys::PhysMemory;
use tdx_abi::{Hpa, PAGE_SIZE_4K};

use super::memory::SeptPageCache;
use crate::devices::fw_cfg::DmaMemory;
use crate::sept::SeptPagePool;

/// Read, write, execute.
const RWX: u64 = 7;
/// Leaf memory type write-back (bits 5:3 = 6).
const MEMTYPE_WB: u64 = 6 << 3;
/// Address bits of an entry.
const ADDRESS: u64 = 0x000F_FFFF_FFFF_F000;

/// Why a shared mapping could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedEptError {
    /// The table-page cache is empty (cannot happen within the TD's GPA ranges).
    NoTablePage,
}

/// A TD's shared EPT.
pub struct SharedEpt {
    phys: Arc<dyn PhysMemory>,
    tables: Arc<SeptPageCache>,
    root: spin::Mutex<Option<Hpa>>,
    shared_bit: u32,
}

impl SharedEpt {
    /// An empty shared EPT whose tables come from `tables`; the root is taken on first use
    /// (see [`SharedEpt::eptp`]).
    pub fn new(phys: Arc<dyn PhysMemory>, tables: Arc<SeptPageCache>, shared_bit: u32) -> Self {
        SharedEpt {
            phys,
            tables,
            root: spin::Mutex::new(None),
            shared_bit,
        }
    }

    fn table_page(&self) -> Result<Hpa, SharedEptError> {
        let page = self.tables.take().ok_or(SharedEptError::NoTablePage)?;
        self.phys.zero(page, PAGE_SIZE_4K);
        Ok(page)
    }

    /// The root table, taking its page on first call: what TDH.VP.WR(SHARED_EPTP) writes.
    /// The host owns only the address bits (51:12) of that field; the TDX module supplies
    /// the memory type and walk length (production write mask 0x000F_FFFF_FFFF_F000 in
    /// intel/tdx-module `include/auto_gen/td_vmcs_fields_lookup.c`; KVM's `tdx_load_mmu_pgd`
    /// writes the bare root address).
    pub fn root(&self) -> Result<Hpa, SharedEptError> {
        let mut root = self.root.lock();
        let page = match *root {
            Some(p) => p,
            None => {
                let p = self.table_page()?;
                *root = Some(p);
                p
            }
        };
        Ok(page)
    }

    fn read(&self, at: u64) -> u64 {
        let mut b = [0u8; 8];
        self.phys.read(Hpa(at), &mut b);
        u64::from_le_bytes(b)
    }

    fn write(&self, at: u64, value: u64) {
        let b = value.to_le_bytes();
        if value & RWX != 0 {
            self.phys.write(Hpa(at + 1), &b[1..]);
            self.phys.write(Hpa(at), &b[..1]);
        } else {
            self.phys.write(Hpa(at), &b[..1]);
            self.phys.write(Hpa(at + 1), &b[1..]);
        }
    }

    /// The address of the leaf entry for `gfn` (without the shared bit), creating the
    /// tables on the way when `create`.
    fn leaf_slot(&self, root: Hpa, gfn: u64, create: bool) -> Result<Option<u64>, SharedEptError> {
        let gpa = gfn << 12 | 1u64 << self.shared_bit;
        let mut table = root.0;
        for shift in [39u32, 30, 21] {
            let at = table + ((gpa >> shift) & 511) * 8;
            let entry = self.read(at);
            table = if entry & RWX != 0 {
                entry & ADDRESS
            } else if create {
                let page = self.table_page()?;
                self.write(at, page.0 | RWX);
                page.0
            } else {
                return Ok(None);
            };
        }
        Ok(Some(table + ((gpa >> 12) & 511) * 8))
    }

    /// Maps shared `gfn` (the GFN without the shared bit) to `frame`, after zeroing it.
    pub fn map(&self, gfn: u64, frame: Hpa) -> Result<(), SharedEptError> {
        let root = self.root.lock();
        let Some(root) = *root else {
            return Err(SharedEptError::NoTablePage);
        };
        self.phys.zero(frame, PAGE_SIZE_4K);
        if let Some(slot) = self.leaf_slot(root, gfn, true)? {
            self.write(slot, frame.0 | RWX | MEMTYPE_WB);
        }
        Ok(())
    }

    /// Unmaps shared `gfn`; returns the frame it mapped. The caller makes every vCPU leave
    /// the TD once before the frame is used for anything else.
    pub fn unmap(&self, gfn: u64) -> Option<Hpa> {
        let root = (*self.root.lock())?;
        let _edit = self.root.lock();
        let slot = self.leaf_slot(root, gfn, false).ok()??;
        let entry = self.read(slot);
        if entry & RWX == 0 {
            return None;
        }
        self.write(slot, 0);
        Some(Hpa(entry & ADDRESS))
    }

    /// Writes `data` at byte `offset` of shared page `gfn` (the GFN without the shared bit),
    /// if mapped and the data fits in the page.
    pub fn write_shared(&self, gfn: u64, offset: u64, data: &[u8]) -> bool {
        let fits = offset + data.len() as u64 <= PAGE_SIZE_4K;
        match self.lookup(gfn) {
            Some(frame) if fits => {
                self.phys.write(Hpa(frame.0 + offset), data);
                true
            }
            _ => false,
        }
    }

    /// Copies between `buf` and shared memory at `addr` (a GPA with or without the shared
    /// bit), page by page; `false` if some page is not shared memory.
    fn copy(
        &self,
        addr: u64,
        len: usize,
        mut each: impl FnMut(Hpa, core::ops::Range<usize>),
    ) -> bool {
        let addr = addr & !(1u64 << self.shared_bit);
        let mut done = 0usize;
        while done < len {
            let at = addr + done as u64;
            let in_page = (at % PAGE_SIZE_4K) as usize;
            let n = (PAGE_SIZE_4K as usize - in_page).min(len - done);
            let Some(frame) = self.lookup(at >> 12) else {
                return false;
            };
            each(Hpa(frame.0 + in_page as u64), done..done + n);
            done += n;
        }
        true
    }

    /// The frame shared `gfn` maps, if any.
    pub fn lookup(&self, gfn: u64) -> Option<Hpa> {
        let root = (*self.root.lock())?;
        let slot = self.leaf_slot(root, gfn, false).ok()??;
        let entry = self.read(slot);
        (entry & RWX != 0).then_some(Hpa(entry & ADDRESS))
    }
}

/// Device DMA into a TD goes to its shared memory (the only memory a device can reach in a
/// TD); drivers give addresses without the shared bit.
impl DmaMemory for SharedEpt {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let phys = self.phys.clone();
        self.copy(addr, buf.len(), |hpa, range| {
            phys.read(hpa, &mut buf[range])
        })
    }

    fn write(&self, addr: u64, data: &[u8]) -> bool {
        let phys = self.phys.clone();
        self.copy(addr, data.len(), |hpa, range| phys.write(hpa, &data[range]))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pool::MemoryPool;
    use tdx_abi::phys::SparseMemory;

    fn ept() -> (SharedEpt, Arc<MemoryPool>) {
        let pool = Arc::new(MemoryPool::new(Hpa(0x100_0000), 0x100_0000).unwrap());
        let cache = Arc::new(SeptPageCache::allocate(&pool, 8).unwrap());
        let phys: Arc<dyn PhysMemory> = Arc::new(SparseMemory::default());
        (SharedEpt::new(phys, cache, 47), pool)
    }

    #[test]
    fn maps_walks_and_unmaps_in_the_shared_half() {
        let (e, _pool) = ept();
        assert_eq!(e.map(5, Hpa(0x4000_0000)), Err(SharedEptError::NoTablePage));
        let root = e.root().unwrap().0;
        assert_eq!(root & 0xFFF, 0, "the bare address");
        assert_eq!(e.root().unwrap().0, root, "one root");
        e.map(0x800, Hpa(0x4000_0000)).unwrap();
        e.map(0x801, Hpa(0x4000_1000)).unwrap();
        assert_eq!(e.lookup(0x800), Some(Hpa(0x4000_0000)));
        assert_eq!(e.lookup(0x802), None);
        // The root's entry for GPA 0x800000 | bit 47 is slot 256.
        assert_eq!(e.read(root + 256 * 8) & RWX, RWX);
        assert_eq!(e.read(root) & RWX, 0);
        assert_eq!(e.unmap(0x800), Some(Hpa(0x4000_0000)));
        assert_eq!(e.unmap(0x800), None);
        assert_eq!(e.lookup(0x801), Some(Hpa(0x4000_1000)));
    }

    #[test]
    fn table_pages_come_from_the_cache_and_run_out_cleanly() {
        let (e, _pool) = ept();
        e.root().unwrap();
        // Root + PDPT + PD + PT = 4 pages; 8 in the cache: a second 1 GiB region needs 2
        // more (PD, PT), a third 2 more, then the cache is empty.
        e.map(0, Hpa(0x4000_0000)).unwrap();
        e.map(1 << 18, Hpa(0x4000_1000)).unwrap();
        e.map(2 << 18, Hpa(0x4000_2000)).unwrap();
        assert_eq!(
            e.map(3 << 18, Hpa(0x4000_3000)),
            Err(SharedEptError::NoTablePage)
        );
    }
}
