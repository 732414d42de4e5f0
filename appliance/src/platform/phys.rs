//! Physical memory for the TD runtime: the TD memory reserved at boot, accessed by physical
//! address. Firmware identity-maps everything AllocatePages returns (UEFI 2.10 §7.2,
//! `AllocatePages`; the x64 binding of §2.3.4 runs with paging on and memory identity-mapped), so an HPA in the range is also a valid pointer.

use tdx_abi::Hpa;
use tdx_abi::phys::PhysMemory;

/// The reserved TD memory range `[base, base + size)`.
pub struct ReservedMemory {
    base: u64,
    size: u64,
}

impl ReservedMemory {
    /// # Safety
    /// `[base, base + size)` must be memory allocated with AllocatePages for the TD runtime
    /// alone, never freed, and identity-mapped.
    pub unsafe fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }

    /// Whether `[hpa, hpa + len)` lies inside the range.
    fn covers(&self, hpa: Hpa, len: usize) -> bool {
        hpa.0 >= self.base
            && (len as u64) <= self.size
            && hpa.0 - self.base <= self.size - len as u64
    }
}

impl PhysMemory for ReservedMemory {
    fn read(&self, hpa: Hpa, buf: &mut [u8]) {
        if !self.covers(hpa, buf.len()) {
            buf.fill(0);
            return;
        }
        // SAFETY: the range is inside the reserved, identity-mapped TD memory (checked above);
        // `buf` is a distinct Rust buffer, so the regions do not overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(hpa.0 as *const u8, buf.as_mut_ptr(), buf.len());
        }
    }

    fn write(&self, hpa: Hpa, data: &[u8]) {
        if !self.covers(hpa, data.len()) {
            return;
        }
        // SAFETY: as in `read`; the runtime writes only pages the pool handed it.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), hpa.0 as *mut u8, data.len());
        }
    }

    fn zero(&self, hpa: Hpa, len: u64) {
        let Ok(n) = usize::try_from(len) else {
            return;
        };
        if !self.covers(hpa, n) {
            return;
        }
        // SAFETY: as in `write`.
        unsafe { core::ptr::write_bytes(hpa.0 as *mut u8, 0, n) };
    }
}
