//! SEAMCALL plumbing for the host: per-leaf/status-class counters (for `/v1/metrics`), and
//! [`Seamcall`] adapters that the typed wrappers run over: [`Counted`] counts every call,
//! [`RetryBusy`] retries BUSY answers on control paths.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use tdx_abi::seamcall::{ModuleKind, Regs, Seamcall};
use tdx_abi::{Leaf, TdxStatus};

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

/// A [`Seamcall`] that reissues a call while the module answers `TDX_OPERAND_BUSY`, up to
/// [`BUSY_RETRIES`] times: the control paths' way of waiting for a module lock. Typed
/// wrappers work on it as on any module: `RetryBusy(&*main).mng_rd(tdr, field)`.
pub(crate) struct RetryBusy<'a>(pub(crate) &'a dyn Seamcall);

impl Seamcall for RetryBusy<'_> {
    fn seamcall(&self, regs: &mut Regs) {
        let input = *regs;
        for _ in 0..BUSY_RETRIES {
            self.0.seamcall(regs);
            if !TdxStatus(regs.rax).is_busy() {
                return;
            }
            *regs = input;
            core::hint::spin_loop();
        }
        self.0.seamcall(regs);
    }
    fn kind(&self) -> ModuleKind {
        self.0.kind()
    }
    fn hkid_shift(&self) -> u32 {
        self.0.hkid_shift()
    }
}
