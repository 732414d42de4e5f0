//! Physical memory for the TD runtime: the TD memory reserved at boot, accessed by physical
//! address. Firmware identity-maps everything AllocatePages returns (UEFI 2.10 §7.2,
//! `AllocatePages`; the x64 binding of §2.3.4 runs with paging on and memory identity-mapped), so an HPA in the range is also a valid pointer.
//!
//! Zeroing uses MOVDIR64B where the CPU has it: pages that were TDX private memory (a TD's
//! pages and control structures after TDH.PHYMEM.PAGE.RECLAIM) must be cleared with full
//! 64-byte direct stores, because a partial write to such a line can poison it on the first
//! TDX processors (Linux `arch/x86/virt/vmx/tdx/tdx.c`, `tdx_quirk_reset_paddr`, which uses
//! MOVDIR64B and a fence; the "partial write" erratum of Sapphire and Emerald Rapids). Every
//! TDX-capable CPU has MOVDIR64B; elsewhere (QEMU's CPU model here) plain stores are used.

use tdx_abi::Hpa;
use tdx_abi::phys::PhysMemory;

/// The reserved TD memory range `[base, base + size)`.
pub struct ReservedMemory {
    base: u64,
    size: u64,
    /// The CPU has MOVDIR64B (CPUID.(EAX=7, ECX=0):ECX[28]).
    direct_stores: bool,
}

/// The 64 zero bytes MOVDIR64B copies.
#[repr(C, align(64))]
struct ZeroLine([u8; 64]);

static ZERO_LINE: ZeroLine = ZeroLine([0; 64]);

impl ReservedMemory {
    /// # Safety
    /// `[base, base + size)` must be memory allocated with AllocatePages for the TD runtime
    /// alone, never freed, and identity-mapped.
    pub unsafe fn new(base: u64, size: u64) -> Self {
        let leaf7 = core::arch::x86_64::__cpuid_count(7, 0);
        let max_leaf = core::arch::x86_64::__cpuid(0).eax;
        Self {
            base,
            size,
            direct_stores: max_leaf >= 7 && leaf7.ecx & 1 << 28 != 0,
        }
    }

    /// Zeroes whole 64-byte lines with MOVDIR64B, then fences.
    ///
    /// # Safety
    /// `[at, at + len)` is inside the range, `at` is 64-byte aligned, `len` a multiple of 64,
    /// and the CPU has MOVDIR64B.
    unsafe fn zero_lines(at: u64, len: u64) {
        let source = &ZERO_LINE as *const ZeroLine;
        for line in (at..at + len).step_by(64) {
            // SAFETY: the caller's contract: `line` is an aligned 64-byte line of the reserved,
            // identity-mapped range; the source is a static, aligned 64-byte block.
            unsafe {
                core::arch::asm!("movdir64b {dst}, [{src}]", dst = in(reg) line,
                    src = in(reg) source, options(nostack, preserves_flags));
            }
        }
        // SAFETY: a fence orders the direct stores before later accesses; nothing else.
        unsafe { core::arch::asm!("mfence", options(nostack, preserves_flags)) };
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
        if self.direct_stores && hpa.0.is_multiple_of(64) && len.is_multiple_of(64) {
            // SAFETY: inside the range (checked above), aligned, whole lines, and the CPU
            // reports MOVDIR64B.
            unsafe { Self::zero_lines(hpa.0, len) };
            return;
        }
        // SAFETY: as in `write`.
        unsafe { core::ptr::write_bytes(hpa.0 as *mut u8, 0, n) };
    }
}
