//! The S-EPT manager: keeps a TD's secure EPT in step with a lock-free host mirror and is the
//! only code that issues the S-EPT SEAMCALLs at run time.
//!
//! # Design (after KVM's TDX MMU, Linux `arch/x86/kvm/vmx/tdx.c` and `arch/x86/kvm/mmu/tdp_mmu.c`;
//! module rules from `intel/tdx-module` `sept_manager.h`, `tdx_locks.h`, `tdh_mem_track.c`)
//!
//! * **Mirror**: per TD, a radix tree shaped like the S-EPT (4 levels, 5 with a 52-bit GPAW),
//!   tables created lazily, one 64-bit atomic entry per GFN slot encoding empty / frozen /
//!   non-leaf (with its S-EPT page) / leaf (HPA, level, PAGE.ADD-or-AUG) / leaked leaf
//!   (see `entry.rs`). Reads never lock ([`SeptManager::lookup`]).
//! * **Fault path** ([`SeptManager::map_private`]): no lock, no write to shared cache lines
//!   other than the entries it changes (statistics are per CPU). Per level it compares-and-swaps
//!   the entry from empty to frozen, issues the SEAMCALL (SEPT.ADD for a missing table, PAGE.AUG
//!   for the leaf after finalize, PAGE.ADD with the request's source page before), then
//!   publishes the new entry or restores the old one, exactly like KVM's `FROZEN_SPTE`
//!   protocol. A thread that sees a frozen entry backs off. `TDX_OPERAND_BUSY` is retried
//!   locally a bounded number of times (the vCPU must not re-enter only to fault again: the
//!   module's zero-step filter counts that), then [`MapOutcome::Retry`] goes back to the vCPU
//!   loop.
//! * **Unmap path** ([`SeptManager::unmap_private`]): separate code, serialised per TD by the
//!   zap lock (taken by nothing on the fault path) and exclusive with faults on the affected
//!   GFNs by freezing their entries: BLOCK, TRACK, kick the vCPUs out so the epoch moves,
//!   REMOVE, WBINVD, clear, hand the page back to its owner ([`PrivateMemory`]). On BUSY it
//!   retries exactly once with vCPUs kept out of the TD ([`VcpuControl`]); after that any failure
//!   bugs the TD and the page is deliberately leaked (counted), never reused.
//! * **No pinning**: the private-memory backing owns the pages; the manager only maps and
//!   unmaps them and holds no references.
//! * **Huge pages**: one PAGE.AUG maps 2 MiB when the request allows it and the backing has an
//!   aligned extent; a partial unmap or a fault at a smaller accept level demotes (BLOCK,
//!   TRACK, kick, DEMOTE); a demoted range that becomes uniformly mapped again is promoted
//!   (BLOCK, TRACK, kick, PROMOTE; a module refusal is expected and undone with UNBLOCK).
//!   Removal handles 4 KiB, 2 MiB and 1 GiB leaves.
//! * **Failure policy**: an unexpected status bugs only this TD: every later call returns
//!   [`SeptError::Bugged`], the leaf, status and operand are logged once, the host and other
//!   TDs go on.
//! * **Teardown**: after TDH.MNG.KEY.FREEID, [`SeptManager::reclaim_all`] takes every page and
//!   S-EPT page back with PAGE.RECLAIM (the fast path, no BLOCK/TRACK/REMOVE).
//!
//! # What the runtime implements
//! [`PrivateMemory`] (our guest_memfd), [`SeptPagePool`] (preallocated S-EPT pages, usable on
//! runner CPUs), [`VcpuControl`] (keep vCPUs out / kick them out), a [`PhysMemory`] to clear
//! pages, and the [`Seamcall`] backend.
//!
//! # Tests and benchmark
//! `cargo test -p tdx --lib sept` runs the unit tests against a small model module
//! (`mock`), the tests against the software TDX module (`emu_tests`: a multi-threaded stress
//! on several TDs with BUSY injection, checked entry by entry with TDH.MEM.SEPT.RD, 2 MiB
//! demote/promote, accept at 4 KiB on a 2 MiB mapping, teardown). `cargo bench -p tdx --bench
//! sept` measures fault throughput, the spinlock baseline and mirror memory.
//!
//! # Model checking
//! `RUSTFLAGS="--cfg loom" cargo test -p tdx --release --lib sept::loom_tests` explores the
//! freeze → SEAMCALL → publish/restore protocol against a concurrent unmap with loom.

mod entry;
mod map;
mod stats;
pub(crate) mod sync;
mod table;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod zap;

#[cfg(all(test, not(loom)))]
mod emu_tests;
#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(test)]
// Under loom only part of the model module is used by the loom tests.
#[cfg_attr(loom, allow(dead_code))]
mod mock;
#[cfg(all(test, not(loom)))]
mod tests;

use alloc::boxed::Box;
use alloc::sync::Arc;
use core::fmt;

use tdx_abi::phys::PhysMemory;
use tdx_abi::seamcall::{SeamError, Seamcall};
use tdx_abi::{Gfn, Hkid, Hpa, Leaf, OperandId, PageLevel, TdxStatus};

use entry::{EMPTY, Entry};
pub use stats::SeptStats;
use stats::{Counter, StatSlots};
use sync::{AtomicBool, AtomicU64 as EntryAtomic, Mutex, Ordering};
use table::{Child, DirTable, PtTable, index};

/// Our guest_memfd: the owner of a TD's private pages. The S-EPT manager asks it for the page
/// that backs a GFN when it maps one and gives the page back when it unmaps it; it never keeps
/// a reference. Called from runner CPUs: must not allocate from firmware or block for long.
pub trait PrivateMemory: Send + Sync {
    /// The 4 KiB page that backs `gfn`, or `None` if there is none (out of memory, or the GFN is
    /// outside the TD's private memory).
    fn alloc_4k(&self, gfn: Gfn) -> Option<Hpa>;
    /// A 2 MiB-aligned, physically contiguous 2 MiB extent backing the 512 GFNs from the
    /// 2 MiB-aligned `gfn`, or `None` if the backing has no such extent for it.
    fn alloc_2m(&self, gfn: Gfn) -> Option<Hpa>;
    /// Takes back the `level.pages_4k()` frames from `hpa`, which backed the GFNs from `gfn`.
    /// A 2 MiB extent may come back as 512 separate 4 KiB releases (after a demotion), and 512
    /// contiguous 4 KiB pages as one 2 MiB release (after a promotion).
    fn release(&self, gfn: Gfn, hpa: Hpa, level: PageLevel);
}

/// A source of pages for S-EPT tables (TDH.MEM.SEPT.ADD, TDH.MEM.PAGE.DEMOTE). The runtime
/// fills it in advance so runner CPUs never allocate from firmware.
pub trait SeptPagePool: Send + Sync {
    /// A free 4 KiB page, or `None` if the pool is empty.
    fn take(&self) -> Option<Hpa>;
    /// Returns a page taken earlier (cleared and flushed when the module had used it).
    fn give_back(&self, hpa: Hpa);
}

/// Control over the TD's vCPUs for the unmap path (KVM's `tdx_no_vcpus_enter_start/stop` and
/// `KVM_REQ_OUTSIDE_GUEST_MODE`).
pub trait VcpuControl: Send + Sync {
    /// From now until [`VcpuControl::allow_entry`], no vCPU of the TD enters it (TDH.VP.ENTER).
    fn block_entry(&self);
    /// Forces every vCPU that is in the TD out of it and returns once each has left guest mode
    /// at least once since the call (so a TDH.MEM.TRACK epoch has moved for all of them).
    fn kick_all_and_wait(&self);
    /// Ends [`VcpuControl::block_entry`].
    fn allow_entry(&self);
}

/// The guest physical address width of a TD, which sets the S-EPT depth and the shared bit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Gpaw {
    /// 48-bit GPAW: 4-level S-EPT, shared bit 47.
    Bits48,
    /// 52-bit GPAW: 5-level S-EPT, shared bit 51.
    Bits52,
}

impl Gpaw {
    /// Level of the root table's entries (3 with 4-level EPT, 4 with 5-level).
    pub const fn root_level(self) -> PageLevel {
        match self {
            Gpaw::Bits48 => PageLevel::L512G,
            Gpaw::Bits52 => PageLevel::L256T,
        }
    }
    /// Number of private GFNs (everything below the shared bit).
    pub const fn private_gfns(self) -> u64 {
        match self {
            Gpaw::Bits48 => 1 << (47 - 12),
            Gpaw::Bits52 => 1 << (51 - 12),
        }
    }
}

/// Who the TD is, as far as the S-EPT leaves are concerned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct TdSeptInfo {
    /// HPA of the TD's TDR page.
    pub tdr: Hpa,
    /// The TD's private HKID (for TDH.PHYMEM.PAGE.WBINVD).
    pub hkid: Hkid,
    /// Guest physical address width.
    pub gpaw: Gpaw,
}

/// Tuning knobs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SeptConfig {
    /// Statistics slots (one per CPU that calls `map_private`; CPU numbers wrap).
    pub stat_slots: usize,
    /// Local retries on the fault path (BUSY or frozen entry) before `MapOutcome::Retry`.
    pub fault_retries: u32,
    /// Spin turns the unmap path waits for a fault to release a frozen entry before it
    /// declares the TD bugged.
    pub frozen_wait_spins: u64,
    /// Try TDH.MEM.PAGE.PROMOTE when a fault completes a demoted 2 MiB range and the request
    /// allows 2 MiB.
    pub auto_promote: bool,
}

impl Default for SeptConfig {
    fn default() -> Self {
        SeptConfig {
            stat_slots: 64,
            fault_retries: 16,
            frozen_wait_spins: 1 << 28,
            auto_promote: true,
        }
    }
}

/// The runtime services the manager uses.
#[derive(Clone)]
pub struct SeptBackends {
    /// The owner of the TD's private pages.
    pub memory: Arc<dyn PrivateMemory>,
    /// Pages for S-EPT tables.
    pub pool: Arc<dyn SeptPagePool>,
    /// The TD's vCPUs.
    pub vcpus: Arc<dyn VcpuControl>,
    /// Physical memory access, to clear pages taken back from the TD.
    pub phys: Arc<dyn PhysMemory>,
}

/// One EPT violation (or build-time page) to resolve.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FaultRequest {
    /// The private GFN (shared bit clear).
    pub gfn: Gfn,
    /// The largest mapping the guest accepts here (from the exit's accept level): 4 KiB or
    /// 2 MiB; larger values are treated as 2 MiB. A smaller level than an existing mapping
    /// demotes it.
    pub max_level: PageLevel,
    /// Before finalize: the shared source page PAGE.ADD copies into the new private page.
    /// Must be `None` once the TD is runnable (PAGE.AUG).
    pub source: Option<Hpa>,
    /// The calling CPU (statistics slot).
    pub cpu: usize,
}

impl FaultRequest {
    /// A run-time fault at `gfn` allowing only 4 KiB, on CPU 0.
    pub const fn new(gfn: Gfn) -> Self {
        FaultRequest {
            gfn,
            max_level: PageLevel::L4K,
            source: None,
            cpu: 0,
        }
    }
    /// With a maximum mapping level.
    pub const fn max_level(mut self, level: PageLevel) -> Self {
        self.max_level = level;
        self
    }
    /// With a PAGE.ADD source page (build time).
    pub const fn source(mut self, source: Hpa) -> Self {
        self.source = Some(source);
        self
    }
    /// On CPU `cpu`.
    pub const fn cpu(mut self, cpu: usize) -> Self {
        self.cpu = cpu;
        self
    }
}

/// What `map_private` did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MapOutcome {
    /// This call mapped the GFN with a leaf of `level`.
    Mapped {
        /// Size of the new leaf.
        level: PageLevel,
    },
    /// The GFN was already mapped (by another vCPU, or earlier) with a leaf of `level`.
    AlreadyMapped {
        /// Size of the existing leaf.
        level: PageLevel,
    },
    /// Contention (BUSY or another thread on the same entry) outlasted the local retries: the
    /// vCPU loop should retry the fault, ideally after handling pending events.
    Retry,
}

/// What `unmap_private` removed.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct UnmapOutcome {
    /// 4 KiB leaves removed.
    pub removed_4k: u64,
    /// 2 MiB leaves removed.
    pub removed_2m: u64,
    /// 1 GiB leaves removed.
    pub removed_1g: u64,
    /// Huge leaves demoted because the range covered only part of them.
    pub demoted: u64,
}

/// What `promote` did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PromoteOutcome {
    /// The range is now one huge leaf.
    Promoted,
    /// The mirror does not show 512 contiguous leaves there; nothing was done.
    NotUniform,
    /// The module refused (children not uniformly PENDING or MAPPED); the range was unblocked
    /// and stays as it was.
    Rejected,
}

/// What `reclaim_all` (or one `reclaim_some` slice) took back.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct ReclaimReport {
    /// Guest pages (4 KiB units) reclaimed, cleared and returned to their owner.
    pub pages_4k: u64,
    /// S-EPT pages reclaimed, cleared and returned to the pool.
    pub sept_pages: u64,
    /// Guest pages (4 KiB units) left leaked (earlier failures, or RECLAIM failed now).
    pub leaked_pages_4k: u64,
    /// S-EPT pages whose RECLAIM failed (leaked).
    pub leaked_sept_pages: u64,
}

impl ReclaimReport {
    fn add(&mut self, other: &ReclaimReport) {
        self.pages_4k += other.pages_4k;
        self.sept_pages += other.sept_pages;
        self.leaked_pages_4k += other.leaked_pages_4k;
        self.leaked_sept_pages += other.leaked_sept_pages;
    }
}

/// What one [`SeptManager::reclaim_some`] slice did.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct ReclaimProgress {
    /// What this slice took back (or found leaked).
    pub report: ReclaimReport,
    /// Work done in 4 KiB-page units: a guest leaf counts its size in 4 KiB pages, an S-EPT
    /// page counts one. At most the budget plus the one leaf the slice started and one S-EPT
    /// page per level (see [`SeptManager::reclaim_some`]).
    pub units: u64,
    /// True when the whole S-EPT has been walked: nothing is left to reclaim.
    pub done: bool,
}

/// Why a TD was marked bugged.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BugCause {
    /// A SEAMCALL returned a status the manager did not expect.
    Seamcall {
        /// The leaf.
        leaf: Leaf,
        /// The full status.
        status: TdxStatus,
        /// The operand the status names.
        operand: OperandId,
    },
    /// A fault kept an entry frozen longer than the unmap path waits.
    StuckEntry,
    /// The mirror's own invariants do not hold (a non-leaf entry without a child table).
    MirrorCorrupt,
}

/// The first failure that bugged a TD.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BugReport {
    /// What went wrong.
    pub cause: BugCause,
    /// The GFN the operation was about.
    pub gfn: Gfn,
    /// The level the operation was about.
    pub level: PageLevel,
}

impl fmt::Display for BugReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cause {
            BugCause::Seamcall {
                leaf,
                status,
                operand,
            } => write!(
                f,
                "{} returned {status} (operand {}) for gfn {:#x} at level {}",
                leaf.name(),
                operand.0,
                self.gfn.0,
                self.level.raw()
            ),
            BugCause::StuckEntry => write!(
                f,
                "mirror entry for gfn {:#x} stayed frozen too long",
                self.gfn.0
            ),
            BugCause::MirrorCorrupt => {
                write!(f, "mirror corrupt at gfn {:#x}", self.gfn.0)
            }
        }
    }
}

/// Errors of the S-EPT manager.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum SeptError {
    /// The TD is bugged; every operation is refused.
    #[error("TD is bugged: {0}")]
    Bugged(BugReport),
    /// The GFN range is empty, reversed or outside the TD's private GFNs.
    #[error("GFN range {start:#x}..{end:#x} is not inside the TD's private GFNs")]
    GfnOutOfRange {
        /// First GFN.
        start: u64,
        /// One past the last GFN.
        end: u64,
    },
    /// Before finalize every page must be added with PAGE.ADD from a source page.
    #[error("the TD is not runnable yet: a PAGE.ADD source page is required")]
    SourceRequired,
    /// After finalize PAGE.ADD is no longer possible.
    #[error("the TD is runnable: PAGE.ADD (a source page) is no longer allowed")]
    SourceAfterFinalize,
    /// The private-memory backing had no page for the GFN.
    #[error("no private memory for gfn {gfn:#x}")]
    OutOfPrivateMemory {
        /// The GFN.
        gfn: u64,
    },
    /// The S-EPT page pool is empty.
    #[error("the S-EPT page pool is empty")]
    OutOfSeptPages,
    /// Promotion is only possible at 2 MiB and 1 GiB.
    #[error("cannot promote to level {0:?}")]
    BadPromoteLevel(PageLevel),
    /// `reclaim_all` ran: the mirror is gone.
    #[error("the TD's S-EPT was torn down")]
    TornDown,
}

/// The S-EPT manager of one TD. Shared by all its vCPU runners (`&self` everywhere).
pub struct SeptManager<S: Seamcall + ?Sized> {
    module: Arc<S>,
    td: TdSeptInfo,
    backends: SeptBackends,
    config: SeptConfig,
    /// Level of the root table's entries (3 or 4).
    top_level: u32,
    /// Private GFNs are below this.
    gfn_limit: u64,
    root: Box<DirTable>,
    runnable: AtomicBool,
    bugged: AtomicBool,
    torn_down: AtomicBool,
    /// Set by the unmap path while it retries a BUSY SEAMCALL: faults issue no SEAMCALL then.
    hold_faults: AtomicBool,
    bug_report: Mutex<Option<BugReport>>,
    /// Serialises the unmap, demote, promote and teardown paths (never taken by faults).
    zap: Mutex<()>,
    stats: StatSlots,
    mirror_bytes: core::sync::atomic::AtomicU64,
    reclaim_warned: core::sync::atomic::AtomicBool,
    /// Teardown: the GFNs below this were reclaimed by earlier `reclaim_some` slices (only
    /// read and written under `zap`).
    reclaim_cursor: core::sync::atomic::AtomicU64,
}

impl<S: Seamcall + ?Sized> SeptManager<S> {
    /// A manager for a TD whose root S-EPT page exists (TDH.MNG.INIT done) and whose S-EPT is
    /// otherwise empty. The TD starts not runnable (PAGE.ADD); call
    /// [`SeptManager::set_runnable`] after TDH.MR.FINALIZE.
    pub fn new(module: Arc<S>, td: TdSeptInfo, backends: SeptBackends, config: SeptConfig) -> Self {
        let top_level = td.gpaw.root_level().raw() as u32;
        let root = DirTable::new_frozen(top_level);
        for e in root.entries.iter() {
            e.store(EMPTY, Ordering::Relaxed);
        }
        SeptManager {
            module,
            td,
            backends,
            config,
            top_level,
            gfn_limit: td.gpaw.private_gfns(),
            root,
            runnable: AtomicBool::new(false),
            bugged: AtomicBool::new(false),
            torn_down: AtomicBool::new(false),
            hold_faults: AtomicBool::new(false),
            bug_report: Mutex::new(None),
            zap: Mutex::new(()),
            stats: StatSlots::new(config.stat_slots),
            mirror_bytes: core::sync::atomic::AtomicU64::new(DirTable::BYTES as u64),
            reclaim_warned: core::sync::atomic::AtomicBool::new(false),
            reclaim_cursor: core::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The TD this manager serves.
    pub fn td(&self) -> &TdSeptInfo {
        &self.td
    }

    /// Marks the TD runnable (after TDH.MR.FINALIZE): faults use PAGE.AUG from now on and the
    /// unmap path tracks TLB epochs.
    pub fn set_runnable(&self) {
        self.runnable.store(true, Ordering::Release);
    }

    /// Whether the TD is runnable.
    pub fn is_runnable(&self) -> bool {
        self.runnable.load(Ordering::Acquire)
    }

    /// Whether an unexpected failure bugged this TD.
    pub fn is_bugged(&self) -> bool {
        self.bugged.load(Ordering::Acquire)
    }

    /// The failure that bugged this TD, if any.
    pub fn bug_report(&self) -> Option<BugReport> {
        *self.bug_report.lock()
    }

    /// Marks the TD bugged from outside (e.g. the vCPU loop saw a fatal exit): every later
    /// S-EPT operation is refused.
    pub fn mark_bugged(&self, report: BugReport) {
        self.record_bug(report);
    }

    /// A statistics snapshot (per-CPU counters summed).
    pub fn stats(&self) -> SeptStats {
        self.stats.snapshot(
            self.mirror_bytes
                .load(core::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Host memory used by the mirror tables, in bytes.
    pub fn mirror_bytes(&self) -> u64 {
        self.mirror_bytes
            .load(core::sync::atomic::Ordering::Relaxed)
    }

    /// The page backing `gfn` (the 4 KiB frame inside a huge leaf) and the level of the leaf
    /// that maps it, or `None`. Lock-free; a concurrent map or unmap may or may not be seen.
    pub fn lookup(&self, gfn: Gfn) -> Option<(Hpa, PageLevel)> {
        if gfn.0 >= self.gfn_limit {
            return None;
        }
        let found = self.locate(gfn.0);
        match Entry::decode(found.raw) {
            Entry::Leaf { hpa, level, .. } => {
                let offset = (gfn.0 & (level.pages_4k() - 1)) << 12;
                Some((hpa.add(offset), level))
            }
            _ => None,
        }
    }

    /// Calls `f` for every leaf, leaked leaf and S-EPT page in the mirror (children before
    /// their parent's S-EPT page). Meant for quiescent TDs (teardown, checks).
    pub fn for_each_mapping(&self, f: &mut dyn FnMut(Mapping)) {
        self.walk_dir(&self.root, self.top_level, 0, f);
    }

    fn walk_dir(&self, dir: &DirTable, level: u32, base: u64, f: &mut dyn FnMut(Mapping)) {
        for (i, e) in dir.entries.iter().enumerate() {
            let gfn = base + ((i as u64) << (9 * level));
            let lvl = level_of(level);
            match Entry::decode(e.load(Ordering::Acquire)) {
                Entry::NonLeaf { sept_page, .. } => {
                    match dir.child(i) {
                        Some(Child::Dir(d)) => self.walk_dir(d, level - 1, gfn, f),
                        Some(Child::Pt(p)) => Self::walk_pt(p, gfn, f),
                        None => {}
                    }
                    f(Mapping {
                        gfn: Gfn(gfn),
                        kind: MappingKind::SeptPage {
                            hpa: sept_page,
                            level: lvl,
                        },
                    });
                }
                other => emit_leaf(other, gfn, f),
            }
        }
    }

    fn walk_pt(pt: &PtTable, base: u64, f: &mut dyn FnMut(Mapping)) {
        for (i, e) in pt.entries.iter().enumerate() {
            emit_leaf(Entry::decode(e.load(Ordering::Acquire)), base + i as u64, f);
        }
    }

    /// Refuses operations on a bugged or torn-down TD.
    #[inline]
    fn check_usable(&self) -> Result<(), SeptError> {
        if self.bugged.load(Ordering::Relaxed) {
            return Err(self.bugged_error());
        }
        if self.torn_down.load(Ordering::Relaxed) {
            return Err(SeptError::TornDown);
        }
        Ok(())
    }

    fn bugged_error(&self) -> SeptError {
        match *self.bug_report.lock() {
            Some(r) => SeptError::Bugged(r),
            None => SeptError::Bugged(BugReport {
                cause: BugCause::MirrorCorrupt,
                gfn: Gfn(0),
                level: PageLevel::L4K,
            }),
        }
    }

    fn record_bug(&self, report: BugReport) -> SeptError {
        let first = {
            let mut slot = self.bug_report.lock();
            if slot.is_none() {
                *slot = Some(report);
                true
            } else {
                false
            }
        };
        self.bugged.store(true, Ordering::Release);
        if first {
            log::error!(
                "sept: TD (TDR {}) marked bugged: {report}; further S-EPT operations refused",
                self.td.tdr
            );
        }
        self.bugged_error()
    }

    /// Marks the TD bugged because of an unexpected SEAMCALL failure.
    fn bug(&self, err: &SeamError, gfn: u64, level: PageLevel) -> SeptError {
        self.record_bug(BugReport {
            cause: BugCause::Seamcall {
                leaf: err.leaf,
                status: err.status,
                operand: err.operand(),
            },
            gfn: Gfn(gfn),
            level,
        })
    }

    fn check_range(&self, start: u64, end: u64) -> Result<(), SeptError> {
        if start >= end || end > self.gfn_limit {
            return Err(SeptError::GfnOutOfRange { start, end });
        }
        Ok(())
    }

    /// Walks from the root to the entry that decides `gfn`: the first entry that is not a
    /// non-leaf with a child, or the 4 KiB entry.
    fn locate(&self, gfn: u64) -> Found<'_> {
        self.locate_down_to(gfn, 0)
    }

    /// Like [`Self::locate`] but stops at `stop_level` even if the entry there is a non-leaf.
    fn locate_down_to(&self, gfn: u64, stop_level: u32) -> Found<'_> {
        let mut dir: &DirTable = &self.root;
        let mut level = self.top_level;
        loop {
            let idx = index(gfn, level);
            let slot = &dir.entries[idx];
            let raw = slot.load(Ordering::Acquire);
            let here = Found {
                slot,
                level,
                raw,
                parent: Some((dir, idx)),
            };
            if level == stop_level || !matches!(Entry::decode(raw), Entry::NonLeaf { .. }) {
                return here;
            }
            match dir.child(idx) {
                Some(Child::Dir(d)) => {
                    dir = d;
                    level -= 1;
                }
                Some(Child::Pt(p)) => {
                    if stop_level > 0 {
                        return here;
                    }
                    let i = index(gfn, 0);
                    let slot = &p.entries[i];
                    return Found {
                        slot,
                        level: 0,
                        raw: slot.load(Ordering::Acquire),
                        parent: None,
                    };
                }
                None => return here,
            }
        }
    }
}

/// An entry found by a walk.
pub(crate) struct Found<'a> {
    slot: &'a EntryAtomic,
    /// Level of the entry (module numbering).
    level: u32,
    /// Its value when read.
    raw: u64,
    /// The directory table holding it and its index, for entries above 4 KiB.
    parent: Option<(&'a DirTable, usize)>,
}

/// One item of [`SeptManager::for_each_mapping`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Mapping {
    /// First GFN covered.
    pub gfn: Gfn,
    /// What is there.
    pub kind: MappingKind,
}

/// What a [`Mapping`] is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MappingKind {
    /// A private page mapped by the TD.
    Leaf {
        /// First byte of the page.
        hpa: Hpa,
        /// Its size.
        level: PageLevel,
        /// Added with PAGE.ADD (MAPPED) rather than AUG (PENDING until accepted).
        added: bool,
    },
    /// A page leaked after a failure; never to be reused.
    Leaked {
        /// First byte of the page.
        hpa: Hpa,
        /// Its size.
        level: PageLevel,
    },
    /// An S-EPT page installed under the non-leaf entry at `level` covering `gfn`.
    SeptPage {
        /// The page.
        hpa: Hpa,
        /// Level of the non-leaf entry.
        level: PageLevel,
    },
}

fn emit_leaf(e: Entry, gfn: u64, f: &mut dyn FnMut(Mapping)) {
    let kind = match e {
        Entry::Leaf { hpa, level, added } => MappingKind::Leaf { hpa, level, added },
        Entry::Leaked { hpa, level } => MappingKind::Leaked { hpa, level },
        _ => return,
    };
    f(Mapping {
        gfn: Gfn(gfn),
        kind,
    });
}

/// The [`PageLevel`] of a raw level number the manager produced itself (always 0..=4).
#[inline]
fn level_of(level: u32) -> PageLevel {
    PageLevel::from_raw(level as u64).unwrap_or(PageLevel::L4K)
}

/// First GFN of the `level` entry covering `gfn`.
#[inline]
const fn align_gfn(gfn: u64, level: u32) -> u64 {
    gfn & !((1u64 << (9 * level)) - 1)
}

/// The counter of leaves mapped/unmapped at `level`.
const fn unmapped_counter(level: PageLevel) -> Counter {
    match level {
        PageLevel::L4K => Counter::Unmapped4k,
        PageLevel::L2M => Counter::Unmapped2m,
        _ => Counter::Unmapped1g,
    }
}
