//! The global allocator: the UEFI pool until [`init`], then a spin-locked heap over pages
//! reserved at boot (`linked_list_allocator`).
//!
//! Why: vCPU runner loops run on application processors, which must never call firmware
//! (UEFI PI specification vol. 2, MP Services Protocol: boot services are not MP-safe, so an AP
//! procedure must not call them), yet the S-EPT manager allocates mirror tables and the
//! software TDX module allocates its own structures on the CPU that faults. After [`init`]
//! every new allocation comes from the reserved heap, whose lock is a spin lock any CPU can
//! take. Blocks allocated from the UEFI pool before [`init`] are recognised by address and
//! still freed to the pool (those are made and freed by the main CPU: logger, configuration).

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::{AtomicUsize, Ordering};

use linked_list_allocator::LockedHeap;
use uefi::boot::{self, AllocateType, MemoryType};

/// UEFI pool before [`init`], the reserved heap after.
pub struct HybridAllocator {
    heap: LockedHeap,
    start: AtomicUsize,
    end: AtomicUsize,
}

#[global_allocator]
static ALLOCATOR: HybridAllocator = HybridAllocator {
    heap: LockedHeap::empty(),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
};

// SAFETY: `alloc` returns either a block from the UEFI pool allocator (which implements
// `GlobalAlloc` correctly) or from `linked_list_allocator` over memory reserved for it alone;
// `dealloc` sends every block back to the allocator that made it, told apart by address (the
// heap range is disjoint from pool memory because both come from the firmware's allocator).
unsafe impl GlobalAlloc for HybridAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.end.load(Ordering::Acquire) != 0 {
            return self
                .heap
                .lock()
                .allocate_first_fit(layout)
                .map_or(null_mut(), NonNull::as_ptr);
        }
        // SAFETY: before `init` only the main CPU runs Rust code, and boot services are never
        // exited, so the UEFI pool allocator may be called; `layout` is forwarded unchanged.
        unsafe { uefi::allocator::Allocator.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let addr = ptr as usize;
        let (start, end) = (
            self.start.load(Ordering::Acquire),
            self.end.load(Ordering::Acquire),
        );
        if addr >= start && addr < end {
            if let Some(p) = NonNull::new(ptr) {
                // SAFETY: `ptr` lies in the heap range, so this heap returned it for `layout`
                // (the GlobalAlloc contract) and it is freed once.
                unsafe { self.heap.lock().deallocate(p, layout) };
            }
        } else {
            // SAFETY: not a heap block, so the UEFI pool allocated it before `init`, on the
            // main CPU, which is the only one freeing such blocks.
            unsafe { uefi::allocator::Allocator.dealloc(ptr, layout) };
        }
    }
}

/// Reserves `bytes` (rounded up to pages) with AllocatePages and makes it the heap of every
/// later allocation. Call once, on the main CPU, before any application processor runs Rust
/// code that allocates.
pub fn init(bytes: usize) -> uefi::Result<()> {
    let pages = bytes.div_ceil(4096);
    let base = boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, pages)?;
    let size = pages * 4096;
    // SAFETY: the pages were just allocated for this heap alone and stay allocated forever
    // (boot services are never exited and nothing frees them); `init` runs once, before the
    // range is published, so nothing else uses the heap yet.
    unsafe { ALLOCATOR.heap.lock().init(base.as_ptr(), size) };
    ALLOCATOR
        .start
        .store(base.as_ptr() as usize, Ordering::Release);
    ALLOCATOR
        .end
        .store(base.as_ptr() as usize + size, Ordering::Release);
    Ok(())
}

/// The heap's address range (for the boot log); empty before [`init`].
pub fn range() -> core::ops::Range<usize> {
    ALLOCATOR.start.load(Ordering::Acquire)..ALLOCATOR.end.load(Ordering::Acquire)
}

/// Heap bytes in use and free (for the boot log).
pub fn usage() -> (usize, usize) {
    let heap = ALLOCATOR.heap.lock();
    (heap.used(), heap.free())
}
