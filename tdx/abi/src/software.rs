//! What a software implementation of the TDX module offers the host beyond the SEAMCALL ABI.
//!
//! On hardware the CPU that executes `seamcall` is the logical processor the module sees, a
//! vCPU leaves the TD when its CPU takes an interrupt (the host's kick IPI), and the guest is
//! whatever code the TD runs. A module written in software cannot tell which CPU calls it,
//! needs to be told to stop a vCPU, and may run declared guest programs instead of code; the
//! host asks for those three things through [`SoftwareModuleHooks`] and nothing else. The
//! hardware backend implements only [`Seamcall`](crate::seamcall::Seamcall).

use alloc::sync::Arc;
use core::any::Any;

use crate::Hpa;
use crate::seamcall::Seamcall;

/// A guest program for a module whose guest engine runs declared programs rather than code.
/// Opaque to the host: the API layer builds it from the engine's own description type and the
/// module downcasts it back.
/// Two programs are equal when they are of the same type and equal as that type (a repeated
/// create request with the same body is recognised as such).
#[derive(Clone)]
pub struct GuestProgram {
    program: Arc<dyn Any + Send + Sync>,
    same: fn(&(dyn Any + Send + Sync), &(dyn Any + Send + Sync)) -> bool,
}

impl GuestProgram {
    /// Wraps the engine's own program description.
    pub fn new<T: Any + PartialEq + Send + Sync>(program: T) -> GuestProgram {
        GuestProgram {
            program: Arc::new(program),
            same: |a, b| match (a.downcast_ref::<T>(), b.downcast_ref::<T>()) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            },
        }
    }

    /// The program as the engine's type `T`, if it is one.
    pub fn downcast<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.program.downcast_ref::<T>()
    }
}

impl PartialEq for GuestProgram {
    fn eq(&self, other: &GuestProgram) -> bool {
        (self.same)(&*self.program, &*other.program)
    }
}

impl core::fmt::Debug for GuestProgram {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("GuestProgram(..)")
    }
}

/// The module's guest engine does not run this kind of [`GuestProgram`], or the vCPU does not
/// exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the software module cannot run this guest program on that vCPU")]
pub struct GuestProgramRefused;

/// The bucket of [`GuestExitStats::overhead_buckets`] that counts an exit of `ns`
/// nanoseconds: 100 ns steps below 4 µs (buckets 0–39), 1 µs steps from 4 to 27 µs (40–62),
/// and bucket 63 for everything longer.
pub fn exit_overhead_bucket(ns: u64) -> usize {
    if ns < 4_000 {
        (ns / 100) as usize
    } else {
        (40 + (ns - 4_000) / 1_000).min(63) as usize
    }
}

/// The upper edge (ns) of overhead bucket `i` (for the open last bucket, its lower edge).
pub fn exit_overhead_bucket_upper_ns(i: usize) -> u64 {
    let i = i.min(63) as u64;
    if i < 40 {
        (i + 1) * 100
    } else if i < 63 {
        4_000 + (i - 39) * 1_000
    } else {
        27_000
    }
}

/// The software module's guest-engine exit statistics: how many #VMEXITs it handled, and
/// how long each kept the vCPU out of the guest apart from the world switch itself (from
/// the #VMEXIT to the next VMRUN, through the module and, for TD exits, the host; halts are
/// not counted), bucketed by [`exit_overhead_bucket`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestExitStats {
    /// #VMEXITs handled.
    pub exits: u64,
    /// Histogram of the time outside the guest per exit.
    pub overhead_buckets: [u64; 64],
    /// Bytes the guests' TDG.MEM.PAGE.ACCEPT calls accepted.
    pub accepted_bytes: u64,
    /// Nanoseconds those accepts took, each from the TDCALL's first #VMEXIT (the host's
    /// PAGE.AUG included when the page was missing) to its completion.
    pub accept_ns: u64,
}

impl GuestExitStats {
    /// No exits.
    pub const EMPTY: GuestExitStats = GuestExitStats {
        exits: 0,
        overhead_buckets: [0; 64],
        accepted_bytes: 0,
        accept_ns: 0,
    };

    /// The median time outside the guest per exit (ns, the upper edge of its bucket), if
    /// any exit was measured.
    pub fn median_overhead_ns(&self) -> Option<u64> {
        let total: u64 = self.overhead_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let mut seen = 0;
        for (i, n) in self.overhead_buckets.iter().enumerate() {
            seen += n;
            if seen * 2 >= total {
                return Some(exit_overhead_bucket_upper_ns(i));
            }
        }
        None
    }
}

/// Hooks of a software TDX module (see the module docs).
pub trait SoftwareModuleHooks: Send + Sync {
    /// The SEAMCALL handle of logical processor `cpu`: calls through it are made "on" that
    /// processor (TDH.SYS.LP.INIT, per-package key configuration, vCPU association). `None` if
    /// the module has no such processor.
    fn logical_processor(&self, cpu: u32) -> Option<Arc<dyn Seamcall>>;

    /// Makes the vCPU whose TDVPR is at `tdvpr` leave TDH.VP.ENTER at its next check point,
    /// as the kick IPI does on hardware. A vCPU that is not in the TD leaves at once on its
    /// next entry.
    fn kick(&self, tdvpr: Hpa);

    /// Posts interrupt `vector` to the vCPU whose TDVPR is at `tdvpr`, as the VMM sets the
    /// vector's bit in the vCPU's posted-interrupt descriptor on hardware. The vCPU takes it
    /// at its next delivery point; it is not kicked.
    fn post_interrupt(&self, tdvpr: Hpa, vector: u8);

    /// Whether an interrupt posted to the vCPU at `tdvpr` waits for its next entry (what the
    /// outstanding-notification bit of a posted-interrupt descriptor says on hardware).
    fn interrupt_pending(&self, tdvpr: Hpa) -> bool;

    /// Whether vCPUs without a declared program run their own code (the module has a
    /// guest CPU).
    fn runs_guest_code(&self) -> bool;

    /// What the guest engine measured about its exits since the module started.
    fn guest_exit_stats(&self) -> GuestExitStats;

    /// Has the vCPU whose TDVPR is at `tdvpr` run `program`.
    fn bind_guest_program(
        &self,
        tdvpr: Hpa,
        program: &GuestProgram,
    ) -> Result<(), GuestProgramRefused>;
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_overhead_is_the_upper_edge_of_the_middle_bucket() {
        let mut stats = super::GuestExitStats::EMPTY;
        assert_eq!(stats.median_overhead_ns(), None);
        stats.overhead_buckets[3] = 5;
        stats.overhead_buckets[10] = 4;
        assert_eq!(stats.median_overhead_ns(), Some(400));
        stats.overhead_buckets[63] = 2;
        assert_eq!(stats.median_overhead_ns(), Some(1100));
    }

    #[test]
    fn buckets_are_fine_below_4us_and_coarse_above() {
        use super::{exit_overhead_bucket as b, exit_overhead_bucket_upper_ns as up};
        assert_eq!((b(0), b(99), b(100), b(3_999)), (0, 0, 1, 39));
        assert_eq!((b(4_000), b(4_999), b(5_000), b(26_999)), (40, 40, 41, 62));
        assert_eq!((b(27_000), b(u64::MAX)), (63, 63));
        assert_eq!(
            (up(0), up(39), up(40), up(62), up(63)),
            (100, 4_000, 5_000, 27_000, 27_000)
        );
    }
}
