//! S-EPT manager statistics: per-CPU (per slot) counters, summed on read, so the fault path
//! never writes a cache line another CPU writes.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicU64, Ordering};

/// The counters. The discriminant is the index in a slot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(usize)]
pub(crate) enum Counter {
    Faults,
    Mapped4k,
    Mapped2m,
    AlreadyMapped,
    RetryBusy,
    RetryFrozen,
    RetryReturned,
    SeptPagesAdded,
    Unmapped4k,
    Unmapped2m,
    Unmapped1g,
    ZapBusyRetries,
    Demotions,
    Promotions,
    PromotionsRejected,
    LeakedPages4k,
    LeakedSeptPages,
    ReclaimedPages4k,
    ReclaimedSeptPages,
}

const COUNTERS: usize = Counter::ReclaimedSeptPages as usize + 1;

/// One CPU's counters, alone in its cache lines (128 bytes covers adjacent-line prefetch).
#[repr(align(128))]
struct Slot {
    counters: [AtomicU64; COUNTERS],
    /// Fault-path SEAMCALLs of this CPU in flight (see `SeptManager::enter_fault_seamcall`).
    inflight: AtomicU64,
}

/// Per-slot counters.
pub(crate) struct StatSlots {
    slots: Box<[Slot]>,
}

impl StatSlots {
    /// `n` slots for CPUs plus one for the zap path (which runs under the zap lock).
    pub(crate) fn new(n: usize) -> Self {
        let n = n.max(1) + 1;
        StatSlots {
            slots: (0..n)
                .map(|_| Slot {
                    counters: core::array::from_fn(|_| AtomicU64::new(0)),
                    inflight: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    /// Adds `n` to `counter` in the slot of `cpu` (any value; taken modulo the slot count).
    #[inline]
    pub(crate) fn add(&self, cpu: usize, counter: Counter, n: u64) {
        let slot = cpu % (self.slots.len() - 1);
        if let Some(s) = self.slots.get(slot) {
            s.counters[counter as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts a fault-path SEAMCALL of `cpu` as in flight (sequentially consistent: pairs with
    /// the zap path's store of its "hold faults" flag).
    #[inline]
    pub(crate) fn inflight_enter(&self, cpu: usize) {
        let slot = cpu % (self.slots.len() - 1);
        if let Some(s) = self.slots.get(slot) {
            s.inflight.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Ends [`Self::inflight_enter`].
    #[inline]
    pub(crate) fn inflight_exit(&self, cpu: usize) {
        let slot = cpu % (self.slots.len() - 1);
        if let Some(s) = self.slots.get(slot) {
            s.inflight.fetch_sub(1, Ordering::Release);
        }
    }

    /// Fault-path SEAMCALLs in flight on all CPUs.
    pub(crate) fn inflight(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.inflight.load(Ordering::SeqCst))
            .fold(0u64, u64::wrapping_add)
    }

    /// Adds `n` to `counter` in the zap path's slot.
    pub(crate) fn add_zap(&self, counter: Counter, n: u64) {
        if let Some(s) = self.slots.last() {
            s.counters[counter as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Sum of `counter` over every slot.
    pub(crate) fn sum(&self, counter: Counter) -> u64 {
        self.slots
            .iter()
            .map(|s| s.counters[counter as usize].load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }

    /// A snapshot of every counter.
    pub(crate) fn snapshot(&self, mirror_bytes: u64) -> SeptStats {
        use Counter::*;
        SeptStats {
            faults: self.sum(Faults),
            mapped_4k: self.sum(Mapped4k),
            mapped_2m: self.sum(Mapped2m),
            already_mapped: self.sum(AlreadyMapped),
            retries_busy: self.sum(RetryBusy),
            retries_frozen: self.sum(RetryFrozen),
            retries_returned: self.sum(RetryReturned),
            sept_pages_added: self.sum(SeptPagesAdded),
            unmapped_4k: self.sum(Unmapped4k),
            unmapped_2m: self.sum(Unmapped2m),
            unmapped_1g: self.sum(Unmapped1g),
            zap_busy_retries: self.sum(ZapBusyRetries),
            demotions: self.sum(Demotions),
            promotions: self.sum(Promotions),
            promotions_rejected: self.sum(PromotionsRejected),
            leaked_pages_4k: self.sum(LeakedPages4k),
            leaked_sept_pages: self.sum(LeakedSeptPages),
            reclaimed_pages_4k: self.sum(ReclaimedPages4k),
            reclaimed_sept_pages: self.sum(ReclaimedSeptPages),
            mirror_bytes,
        }
    }
}

/// A snapshot of one TD's S-EPT statistics.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct SeptStats {
    /// Calls to `map_private`.
    pub faults: u64,
    /// 4 KiB leaves added (AUG or PAGE.ADD).
    pub mapped_4k: u64,
    /// 2 MiB leaves added with one AUG.
    pub mapped_2m: u64,
    /// Faults that found the GFN already mapped.
    pub already_mapped: u64,
    /// Fault-path retries because the module answered `TDX_OPERAND_BUSY`.
    pub retries_busy: u64,
    /// Fault-path retries because another thread had the entry frozen, or the unmap path was
    /// holding faults back to retry a BUSY SEAMCALL.
    pub retries_frozen: u64,
    /// Faults that ran out of local retries and returned `MapOutcome::Retry`.
    pub retries_returned: u64,
    /// S-EPT pages added with TDH.MEM.SEPT.ADD.
    pub sept_pages_added: u64,
    /// 4 KiB leaves removed by the unmap path.
    pub unmapped_4k: u64,
    /// 2 MiB leaves removed by the unmap path.
    pub unmapped_2m: u64,
    /// 1 GiB leaves removed by the unmap path.
    pub unmapped_1g: u64,
    /// Unmap-path SEAMCALLs retried once with vCPUs kept out after BUSY.
    pub zap_busy_retries: u64,
    /// Huge leaves split with TDH.MEM.PAGE.DEMOTE.
    pub demotions: u64,
    /// Ranges merged with TDH.MEM.PAGE.PROMOTE.
    pub promotions: u64,
    /// Promotions the module refused (children not uniformly PENDING or MAPPED).
    pub promotions_rejected: u64,
    /// Guest pages (in 4 KiB units) deliberately leaked after a failed SEAMCALL.
    pub leaked_pages_4k: u64,
    /// S-EPT pages deliberately leaked after a failed SEAMCALL.
    pub leaked_sept_pages: u64,
    /// Guest pages (in 4 KiB units) taken back with TDH.PHYMEM.PAGE.RECLAIM at teardown.
    pub reclaimed_pages_4k: u64,
    /// S-EPT pages taken back with TDH.PHYMEM.PAGE.RECLAIM at teardown.
    pub reclaimed_sept_pages: u64,
    /// Host memory used by the mirror tables, in bytes.
    pub mirror_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_sum_and_wrap_cpu_numbers() {
        let s = StatSlots::new(4);
        s.add(0, Counter::Faults, 1);
        s.add(5, Counter::Faults, 2); // slot 1
        s.add(3, Counter::Demotions, 7);
        s.add_zap(Counter::Demotions, 1);
        let snap = s.snapshot(123);
        assert_eq!(snap.faults, 3);
        assert_eq!(snap.demotions, 8);
        assert_eq!(snap.mirror_bytes, 123);
        assert_eq!(core::mem::align_of::<Slot>(), 128);
    }
}
