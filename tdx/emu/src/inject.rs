//! Fault injection for tests: make a chosen leaf return BUSY with a probability, or a chosen
//! status on its Nth call. Deterministic (xorshift64* seeded by the caller).

use alloc::collections::BTreeMap;

use tdx_abi::{Leaf, OperandId, TdxStatus};

/// What to inject on a leaf.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Injection {
    /// Each call returns `TDX_OPERAND_BUSY | operand` with probability `p` (0.0..=1.0), drawn
    /// from a PRNG seeded with `seed`.
    BusyProbability {
        /// Probability of BUSY.
        p: f64,
        /// PRNG seed.
        seed: u64,
        /// Operand ID reported with BUSY.
        operand: OperandId,
    },
    /// The `n`th call (1-based, counted from installation) returns `status`; other calls run
    /// normally.
    StatusOnNthCall {
        /// Which call.
        n: u64,
        /// The status returned.
        status: TdxStatus,
    },
}

struct Installed {
    injection: Injection,
    calls: u64,
    rng: u64,
}

/// Per-leaf injections.
#[derive(Default)]
pub struct Injector {
    by_leaf: spin::Mutex<BTreeMap<u16, Installed>>,
}

impl Injector {
    /// Installs (or replaces) the injection for `leaf`.
    pub fn install(&self, leaf: Leaf, injection: Injection) {
        let seed = match injection {
            Injection::BusyProbability { seed, .. } => seed,
            Injection::StatusOnNthCall { .. } => 0,
        };
        self.by_leaf.lock().insert(
            leaf.number(),
            Installed {
                injection,
                calls: 0,
                rng: seed | 1,
            },
        );
    }

    /// Removes the injection for `leaf`.
    pub fn clear(&self, leaf: Leaf) {
        self.by_leaf.lock().remove(&leaf.number());
    }

    /// Called at the start of every SEAMCALL: the status to return instead of running the
    /// leaf, if any.
    pub fn check(&self, leaf: u16) -> Option<TdxStatus> {
        let mut map = self.by_leaf.lock();
        let inst = map.get_mut(&leaf)?;
        inst.calls += 1;
        match inst.injection {
            Injection::BusyProbability { p, operand, .. } => {
                // xorshift64*
                let mut x = inst.rng;
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                inst.rng = x;
                let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
                let unit = r as f64 / (1u64 << 53) as f64;
                (unit < p).then(|| TdxStatus::OPERAND_BUSY.with_operand(operand))
            }
            Injection::StatusOnNthCall { n, status } => (inst.calls == n).then_some(status),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nth_call_and_probability_are_deterministic() {
        let inj = Injector::default();
        inj.install(
            Leaf::MemPageAug,
            Injection::StatusOnNthCall {
                n: 3,
                status: TdxStatus::EPT_WALK_FAILED,
            },
        );
        let leaf = Leaf::MemPageAug.number();
        assert_eq!(inj.check(leaf), None);
        assert_eq!(inj.check(leaf), None);
        assert_eq!(inj.check(leaf), Some(TdxStatus::EPT_WALK_FAILED));
        assert_eq!(inj.check(leaf), None);
        let run = |seed| {
            let inj = Injector::default();
            inj.install(
                Leaf::MemTrack,
                Injection::BusyProbability {
                    p: 0.5,
                    seed,
                    operand: OperandId::TD_EPOCH,
                },
            );
            (0..1000)
                .filter(|_| inj.check(Leaf::MemTrack.number()).is_some())
                .count()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert!((400..600).contains(&a), "{a}");
    }
}
