//! SEAMCALL plumbing for the host: per-leaf/status-class counters (for `/v1/metrics`), a
//! counting [`Seamcall`] wrapper, and bounded BUSY retries for main-CPU control paths.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::abi::{Leaf, TdxStatus};
use crate::seamcall::{ModuleKind, Regs, SeamError, Seamcall, TdxModule};

/// Leaf numbers counted (every leaf the ABI defines is below 128).
const LEAF_SLOTS: usize = 128;
/// Status classes: success, busy, error.
const CLASSES: [&str; 3] = ["success", "busy", "error"];

/// SEAMCALL counts by leaf and status class. Relaxed atomics: one instance per TD and one for
/// the main CPU, summed on read, so vCPUs of different TDs never share a counter line.
pub(crate) struct SeamcallCounters {
    counts: [[AtomicU64; 3]; LEAF_SLOTS],
}

impl SeamcallCounters {
    pub(crate) fn new() -> Self {
        SeamcallCounters {
            counts: core::array::from_fn(|_| core::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    #[inline]
    pub(crate) fn record(&self, leaf_raw: u64, status: TdxStatus) {
        let leaf = (leaf_raw & 0xFFFF) as usize;
        let class = if !status.is_error() {
            0
        } else if status.is_busy() {
            1
        } else {
            2
        };
        if let Some(slot) = self.counts.get(leaf) {
            slot[class].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds every non-zero count into `out` as `(leaf name, class, count)`.
    pub(crate) fn add_to(&self, out: &mut Vec<(&'static str, &'static str, u64)>) {
        for (leaf, classes) in self.counts.iter().enumerate() {
            for (c, count) in classes.iter().enumerate() {
                let n = count.load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let name = Leaf::from_number(leaf as u16)
                    .map(Leaf::name)
                    .unwrap_or("unknown");
                match out
                    .iter_mut()
                    .find(|(l, k, _)| *l == name && *k == CLASSES[c])
                {
                    Some(e) => e.2 += n,
                    None => out.push((name, CLASSES[c], n)),
                }
            }
        }
    }
}

/// A [`Seamcall`] that counts every call it forwards.
pub(crate) struct Counted<S: ?Sized> {
    pub(crate) counters: Arc<SeamcallCounters>,
    pub(crate) inner: Arc<S>,
}

impl<S: Seamcall + ?Sized> Seamcall for Counted<S> {
    #[inline]
    fn seamcall(&self, regs: &mut Regs) {
        let leaf = regs.rax;
        self.inner.seamcall(regs);
        self.counters.record(leaf, TdxStatus(regs.rax));
    }
    fn kind(&self) -> ModuleKind {
        self.inner.kind()
    }
    fn hkid_shift(&self) -> u32 {
        self.inner.hkid_shift()
    }
}

/// Attempts of a control-path SEAMCALL that keeps answering `TDX_OPERAND_BUSY` (module locks
/// held by runners or other TDs are released within microseconds).
pub(crate) const BUSY_RETRIES: u32 = 100_000;

/// Issues `regs` on `module`, retrying while the module answers BUSY (bounded).
pub(crate) fn call_retry_busy(module: &dyn Seamcall, regs: Regs) -> Result<Regs, SeamError> {
    let mut tries = 0;
    loop {
        match module.call(regs) {
            Err(e) if e.is_busy() && tries < BUSY_RETRIES => {
                tries += 1;
                core::hint::spin_loop();
            }
            other => return other,
        }
    }
}
