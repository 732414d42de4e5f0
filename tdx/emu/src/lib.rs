//! The software TDX module: a faithful, thread-safe model of the Intel TDX module 1.5 host
//! ABI (Intel TDX Module 1.5 ABI specification; module source `intel/tdx-module`), for
//! machines without TDX.
//!
//! [`EmulatedModule`] implements [`Seamcall`]: RAX carries the leaf and version, the other
//! registers the operands, exactly as for the real module, and the completion status comes
//! back in RAX with the module's 64-bit values. Behaviour modelled:
//!
//! * platform: TDH.SYS.INIT, LP.INIT per logical processor, SYS.RD/RDALL, SYS.CONFIG (TDMRs and
//!   PAMT arrays checked against the CMR and the sizing rules), SYS.KEY.CONFIG per package,
//!   TDMR.INIT; a KeyID pool with KOT states; one PAMT entry per 4 KiB page ([`pamt`]);
//! * TD and vCPU lifecycle: MNG.CREATE/KEY.CONFIG/ADDCX/INIT (TD_PARAMS validated),
//!   VP.CREATE/ADDCX/INIT, MNG.RD/WR, VP.RD/WR, lifecycle and op-state gating per leaf;
//! * memory: the S-EPT tree ([`sept`]) with the module's state legality table, PAGE.ADD,
//!   SEPT.ADD/RD/REMOVE, PAGE.AUG, RANGE.BLOCK/UNBLOCK, TRACK with epochs and per-vCPU
//!   refcounts, PAGE.REMOVE, PAGE.DEMOTE/PROMOTE, MR.EXTEND/FINALIZE (MRTD), teardown
//!   (VP.FLUSH, VPFLUSHDONE, CACHE.WB, KEY.FREEID, PAGE.RECLAIM, PAGE.WBINVD);
//! * concurrency: try-locks only ([`lock`]); a lock held by a concurrent call gives
//!   `TDX_OPERAND_BUSY` with the lock's operand ID, never a wait;
//! * the guest: TDH.VP.ENTER runs the vCPU's declared [`workload`] and returns real exits
//!   ([`guest`]); zero-step mitigation;
//! * fault injection ([`inject`]).
//!
//! Every address the module reads or writes goes through [`PhysMemory`] and must lie inside
//! the physical range given in [`EmuConfig`] (the CMR); anything else is rejected with a
//! status, so no register value can make the module panic or touch foreign memory.
//!
//! [`testing`] builds an initialized platform and runnable TDs in a few lines.
//!
//! # What the software module leaves out, and why
//!
//! * Migration, TD partitioning (L2 VMs), service TDs, TDX Connect, Dynamic PAMT, module
//!   update/shutdown, TDH.MEM.PAGE.RELOCATE, debug TDH.MEM.RD/WR, TDH.MEM.SEPT.WR,
//!   TDH.SYS.INFO, TDH.MNG.KEY.RECLAIMID: the runtime does not use them; they answer
//!   `TDX_OPERAND_INVALID | RAX` like an unknown leaf. The migration-only S-EPT states
//!   (REMOVED, BLOCKEDW, EXPORTED…) exist in the tree and in the legality tables but only
//!   [`EmulatedModule::force_sept_state`] can produce them.
//! * Guest code: there is no CPU. The guest is a declared [`workload::Workload`]; TDCALLs
//!   other than ACCEPT, RTMR.EXTEND and the TDVMCALLs listed in [`guest`] are not modelled.
//! * Cryptography and caches: no memory encryption, integrity or cache model; KeyIDs, WBINVD
//!   and CACHE.WB only drive the state machines the host can observe. CACHE.WB writes back
//!   [`CACHE_SUB_BLOCKS`] sub-blocks; a host interrupt is pending only when fault injection
//!   asks for `TDX_INTERRUPTED_RESUMABLE` on it (then the leaf saves its point and resumes).
//! * PAMT storage: the PAMT arrays handed over in SYS.CONFIG are validated and reserved but
//!   the entries live in the module's heap (see [`pamt`]).
//! * Platform: one CMR (the configured range); TDMR.INIT must complete for every TDMR before
//!   TDs can be created (the real module allows using initialized parts earlier); TD and
//!   vCPU metadata field IDs are the module's own numbering (`abi::metadata`).
//! * Timing: single-step (TSC-based) zero-step detection, interrupts other than kicks and the
//!   emulated timer, host-priority timeouts (`TDX_HOST_PRIORITY_BUSY_TIMEOUT`).
//! * `TDX_OPERAND_BUSY` from the module's global SYS lock is reported as `TDX_SYS_BUSY` for
//!   SYS.INIT; some error precedences between operands may differ from the real module where
//!   the source order was not checked.

#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

extern crate alloc;
#[cfg(any(test, feature = "testing"))]
extern crate std;

pub mod guest;
pub mod inject;
pub mod lock;
pub mod metadata;
pub mod pamt;
pub mod sept;
pub mod svm;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod workload;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

mod mem;
mod platform;
mod td;

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU64, Ordering};

use tdx_abi::pamt::PageType;
use tdx_abi::phys::PhysMemory;
use tdx_abi::seamcall::{ModuleKind, Regs, Seamcall};
use tdx_abi::software::{GuestExitStats, GuestProgram, GuestProgramRefused, SoftwareModuleHooks};
use tdx_abi::{Gpa, Hpa, Leaf, OperandId, PageLevel, SeptState, TdxStatus};

pub use guest::exit;
pub use inject::Injection;
pub use lock::LockMode;
pub use td::{CACHE_SUB_BLOCKS, Lifecycle, OpState};

use lock::Sharex;
use pamt::Pamt;
use td::{Td, Vcpu};

/// Limits of the emulated module (the real module reports most of them through TDH.SYS.RD).
#[derive(Clone, Debug)]
pub struct EmuLimits {
    /// Maximum TDMRs in TDH.SYS.CONFIG (1.5.01 build: 64).
    pub max_tdmrs: u32,
    /// Maximum reserved areas per TDMR (16).
    pub max_reserved_per_tdmr: u32,
    /// Maximum vCPUs per TD.
    pub max_vcpus_per_td: u16,
    /// TDCS pages a TD needs (TDH.MNG.ADDCX count).
    pub tdcs_pages: u32,
    /// TDVPS pages per vCPU including the TDVPR (so TDH.VP.ADDCX is called this minus one
    /// times).
    pub tdvps_pages: u32,
    /// Bytes of a TDMR one TDH.SYS.TDMR.INIT call initializes.
    pub tdmr_init_chunk: u64,
    /// Workload units (page touches, accepts, IO bytes) one TDH.VP.ENTER runs before the
    /// emulated timer forces an external-interrupt exit.
    pub max_guest_units_per_entry: u64,
    /// `STEPPING_EPF_THRESHOLD` (6, intel/tdx-module `td_exit_stepping.h`): EPT-violation
    /// exits at one guest RIP that are only counted; each further one lists its GPA, and a
    /// listed GPA makes VP.ENTER take the S-EPT tree lock exclusively (see
    /// `guest::Stepping`).
    pub zero_step_threshold: u32,
    /// TDMR base/size alignment (1 GiB on the real module).
    pub tdmr_alignment: u64,
    /// What TDH.SYS.RD reports as TDX_FEATURES0 (the features the module models: NO_RBP_MOD
    /// and TOPOLOGY_ENUM).
    pub tdx_features0: u64,
}

impl Default for EmuLimits {
    fn default() -> Self {
        EmuLimits {
            max_tdmrs: 64,
            max_reserved_per_tdmr: 16,
            max_vcpus_per_td: 256,
            tdcs_pages: 4,
            tdvps_pages: 6,
            tdmr_init_chunk: 256 << 20,
            max_guest_units_per_entry: 1 << 16,
            zero_step_threshold: 6,
            tdmr_alignment: 1 << 30,
            tdx_features0: tdx_abi::metadata::sys::features0::NO_RBP_MOD
                | tdx_abi::metadata::sys::features0::TOPOLOGY_ENUM,
        }
    }
}

/// Construction parameters of the software module.
#[derive(Clone, Debug)]
pub struct EmuConfig {
    /// Base of the physical range the module covers (its single CMR); 2 MiB aligned.
    pub phys_base: Hpa,
    /// Size of the range in bytes; multiple of 2 MiB.
    pub phys_size: u64,
    /// Logical processors (TDH.SYS.LP.INIT is required on each).
    pub num_lps: u32,
    /// Packages; logical processor `n` belongs to package `n % num_packages`.
    pub num_packages: u32,
    /// First TDX private KeyID.
    pub hkid_start: u16,
    /// Number of TDX private KeyIDs (the global KeyID is one of them).
    pub num_hkids: u16,
    /// Bit position of the KeyID in a physical address (reduced MAXPHYADDR).
    pub hkid_shift: u32,
    /// Module limits.
    pub limits: EmuLimits,
}

/// Why a configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmuConfigError {
    /// Range base or size not 2 MiB aligned, empty, or not below the KeyID bits.
    #[error("physical range must be non-empty, 2 MiB aligned and below the KeyID bits")]
    BadRange,
    /// No logical processors or packages, or more packages than fit the 64-bit bitmaps.
    #[error("need 1..=64 packages and at least one logical processor")]
    BadTopology,
    /// KeyID range empty, containing 0, or not representable at `hkid_shift`.
    #[error("invalid KeyID range")]
    BadKeyIds,
}

/// KOT (KeyID ownership table) entry states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum KotState {
    /// Free for TDH.MNG.CREATE.
    Free = 0,
    /// Assigned to a TD.
    Assigned = 1,
    /// TD blocked (TDH.MNG.VPFLUSHDONE); caches must be written back on every package
    /// (TDH.PHYMEM.CACHE.WB) before TDH.MNG.KEY.FREEID.
    Flushed = 2,
    /// The global KeyID (TDH.SYS.CONFIG).
    Global = 3,
}

struct KotEntry {
    state: AtomicU8,
    wb_pending: AtomicU64,
}

/// One package's TDH.PHYMEM.CACHE.WB state (the module's `wbt_entries`, intel/tdx-module
/// `src/common/data_structures/tdx_global_data.h`): a mutex, the sub-block to resume at
/// (0 = no interrupted session) and the KOT entries that were FLUSHED when the session started.
struct WbtEntry {
    lock: Sharex,
    state: spin::Mutex<WbtState>,
}

#[derive(Default)]
struct WbtState {
    intr_point: u64,
    hkid_flushed: Vec<bool>,
}

/// Platform-wide state.
struct Sys {
    state: AtomicU8,
    lp_init: Vec<AtomicBool>,
    key_config_pkgs: AtomicU64,
    global_hkid: AtomicU16,
    lock: Sharex,
    tdmr_next: spin::Mutex<Vec<(u64, u64, u64)>>,
}

/// Platform states (the module's `sys_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SysState {
    /// Before TDH.SYS.INIT.
    Uninitialized = 0,
    /// TDH.SYS.INIT done; LP.INIT and SYS.CONFIG pending.
    SysInitDone = 1,
    /// TDH.SYS.CONFIG done; SYS.KEY.CONFIG pending.
    Configured = 2,
    /// Keys configured on every package; TDMR.INIT pending.
    KeysConfigured = 3,
    /// Every TDMR initialized: TDs may be created.
    Ready = 4,
}

/// The software TDX module.
pub struct EmulatedModule {
    cfg: EmuConfig,
    mem: Arc<dyn PhysMemory>,
    sys: Sys,
    pamt: Pamt,
    kot_lock: Sharex,
    kot: Vec<KotEntry>,
    wbt: Vec<WbtEntry>,
    tds: spin::RwLock<BTreeMap<u64, Arc<Td>>>,
    vcpus: spin::RwLock<BTreeMap<u64, Arc<Vcpu>>>,
    injector: inject::Injector,
    calls: AtomicU64,
    /// Runs guest code for vCPUs without a declared workload (see [`svm`]).
    guest_cpu: spin::Once<Arc<dyn svm::GuestCpu>>,
    /// The guest engine's exit counts and times.
    exit_stats: svm::ExitStatsCells,
}

/// A logical processor of an [`EmulatedModule`]: SEAMCALLs issued through it run "on" that
/// LP (which matters for LP.INIT, per-package key configuration and cache write-back, and
/// vCPU association). `EmulatedModule` itself acts as LP 0.
#[derive(Clone)]
pub struct LpHandle {
    module: Arc<EmulatedModule>,
    lp: u32,
}

impl LpHandle {
    /// The LP number.
    pub fn lp(&self) -> u32 {
        self.lp
    }
    /// The module.
    pub fn module(&self) -> &Arc<EmulatedModule> {
        &self.module
    }
}

impl Seamcall for LpHandle {
    fn seamcall(&self, regs: &mut Regs) {
        self.module.seamcall_on(self.lp, regs);
    }
    fn kind(&self) -> ModuleKind {
        ModuleKind::Emulated
    }
    fn hkid_shift(&self) -> u32 {
        self.module.cfg.hkid_shift
    }
}

/// The module's [`SoftwareModuleHooks`]: logical-processor handles, kicks, declared
/// [`workload::Workload`]s as guest programs.
struct Hooks(Arc<EmulatedModule>);

impl SoftwareModuleHooks for Hooks {
    fn logical_processor(&self, cpu: u32) -> Option<Arc<dyn Seamcall>> {
        self.0.lp(cpu).map(|lp| Arc::new(lp) as Arc<dyn Seamcall>)
    }

    fn kick(&self, tdvpr: Hpa) {
        self.0.kick(tdvpr);
    }

    fn post_interrupt(&self, tdvpr: Hpa, vector: u8) {
        self.0.post_interrupt(tdvpr, vector);
    }

    fn interrupt_pending(&self, tdvpr: Hpa) -> bool {
        self.0
            .vcpus
            .read()
            .get(&tdvpr.0)
            .is_some_and(|v| v.pir.iter().any(|w| w.load(Ordering::Acquire) != 0))
    }

    fn runs_guest_code(&self) -> bool {
        self.0.guest_cpu.get().is_some()
    }

    fn guest_exit_stats(&self) -> GuestExitStats {
        self.0.exit_stats.snapshot()
    }

    fn bind_guest_program(
        &self,
        tdvpr: Hpa,
        program: &GuestProgram,
    ) -> Result<(), GuestProgramRefused> {
        let workload = program
            .downcast::<workload::Workload>()
            .ok_or(GuestProgramRefused)?;
        if self.0.set_workload(tdvpr, workload.clone()) {
            Ok(())
        } else {
            Err(GuestProgramRefused)
        }
    }
}

impl Seamcall for EmulatedModule {
    fn seamcall(&self, regs: &mut Regs) {
        self.seamcall_on(0, regs);
    }
    fn kind(&self) -> ModuleKind {
        ModuleKind::Emulated
    }
    fn hkid_shift(&self) -> u32 {
        self.cfg.hkid_shift
    }
}

/// Result of a leaf handler: the success-class status (SUCCESS or an informational one, or a
/// VP.ENTER exit reason) or the error status. Output registers are written by the handler.
type LeafResult = Result<TdxStatus, TdxStatus>;

/// Outcome of [`EmulatedModule::check_invariants`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvariantViolation {
    /// A PAMT entry names an owner that is not a live TD.
    #[error("page {page} ({page_type:?}) owned by unknown TD {owner}")]
    UnknownOwner {
        /// The page.
        page: Hpa,
        /// Its type.
        page_type: PageType,
        /// The owner recorded.
        owner: Hpa,
    },
    /// A TD's child count differs from the pages PAMT says it owns.
    #[error("TD {tdr}: CHLDCNT {chldcnt} but PAMT records {owned} child pages")]
    ChildCount {
        /// The TD.
        tdr: Hpa,
        /// TDR.CHLDCNT.
        chldcnt: u64,
        /// Child page records found in PAMT.
        owned: u64,
    },
    /// A leaf S-EPT entry maps a page PAMT does not give to the TD at that size.
    #[error("TD {tdr}: GPA {gpa} maps {hpa} which PAMT does not own as a guest page")]
    LeafNotOwned {
        /// The TD.
        tdr: Hpa,
        /// GPA of the leaf.
        gpa: Gpa,
        /// HPA mapped.
        hpa: Hpa,
    },
    /// A page is mapped by more than one S-EPT entry.
    #[error("page {hpa} is mapped more than once")]
    DoubleMapped {
        /// The page.
        hpa: Hpa,
    },
    /// A lock is still held with no SEAMCALL running.
    #[error("lock left held: {what}")]
    LockLeaked {
        /// Which lock.
        what: &'static str,
    },
}

impl EmulatedModule {
    /// Creates a module over `mem` with `cfg`. The module starts in the state the platform
    /// is in after boot: TDH.SYS.INIT is the first call it accepts.
    pub fn new(cfg: EmuConfig, mem: Arc<dyn PhysMemory>) -> Result<Arc<Self>, EmuConfigError> {
        const M2: u64 = 2 << 20;
        let end = cfg.phys_base.0.checked_add(cfg.phys_size);
        if cfg.phys_size == 0
            || !cfg.phys_base.0.is_multiple_of(M2)
            || !cfg.phys_size.is_multiple_of(M2)
            || end.is_none()
            || cfg.hkid_shift >= 64
            || end.is_some_and(|e| e > 1u64 << cfg.hkid_shift)
        {
            return Err(EmuConfigError::BadRange);
        }
        if cfg.num_lps == 0 || cfg.num_packages == 0 || cfg.num_packages > 64 {
            return Err(EmuConfigError::BadTopology);
        }
        let last = u32::from(cfg.hkid_start) + u32::from(cfg.num_hkids);
        if cfg.num_hkids < 2 || cfg.hkid_start == 0 || last > (1 << (64 - cfg.hkid_shift).min(16)) {
            return Err(EmuConfigError::BadKeyIds);
        }
        let kot = (0..cfg.num_hkids)
            .map(|_| KotEntry {
                state: AtomicU8::new(KotState::Free as u8),
                wb_pending: AtomicU64::new(0),
            })
            .collect();
        let lp_init = (0..cfg.num_lps).map(|_| AtomicBool::new(false)).collect();
        let wbt = (0..cfg.num_packages)
            .map(|_| WbtEntry {
                lock: Sharex::new(),
                state: spin::Mutex::new(WbtState::default()),
            })
            .collect();
        Ok(Arc::new(EmulatedModule {
            pamt: Pamt::new(cfg.phys_base.0, cfg.phys_size),
            sys: Sys {
                state: AtomicU8::new(SysState::Uninitialized as u8),
                lp_init,
                key_config_pkgs: AtomicU64::new(0),
                global_hkid: AtomicU16::new(0),
                lock: Sharex::new(),
                tdmr_next: spin::Mutex::new(Vec::new()),
            },
            kot_lock: Sharex::new(),
            kot,
            wbt,
            tds: spin::RwLock::new(BTreeMap::new()),
            vcpus: spin::RwLock::new(BTreeMap::new()),
            injector: inject::Injector::default(),
            calls: AtomicU64::new(0),
            guest_cpu: spin::Once::new(),
            exit_stats: svm::ExitStatsCells::new(),
            cfg,
            mem,
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &EmuConfig {
        &self.cfg
    }

    /// The physical memory the module works on.
    pub fn memory(&self) -> &Arc<dyn PhysMemory> {
        &self.mem
    }

    /// The hooks the host runtime uses beyond SEAMCALLs (see [`SoftwareModuleHooks`]).
    pub fn hooks(self: &Arc<Self>) -> Arc<dyn SoftwareModuleHooks> {
        Arc::new(Hooks(self.clone()))
    }

    /// A handle issuing SEAMCALLs on logical processor `lp`, if it exists.
    pub fn lp(self: &Arc<Self>, lp: u32) -> Option<LpHandle> {
        (lp < self.cfg.num_lps).then(|| LpHandle {
            module: self.clone(),
            lp,
        })
    }

    /// The platform state.
    pub fn sys_state(&self) -> SysState {
        match self.sys.state.load(Ordering::Acquire) {
            0 => SysState::Uninitialized,
            1 => SysState::SysInitDone,
            2 => SysState::Configured,
            3 => SysState::KeysConfigured,
            _ => SysState::Ready,
        }
    }

    /// Total SEAMCALLs handled.
    pub fn call_count(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Installs a fault injection on `leaf` (replacing any previous one).
    pub fn inject(&self, leaf: Leaf, injection: Injection) {
        self.injector.install(leaf, injection);
    }

    /// Removes the fault injection on `leaf`.
    pub fn clear_injection(&self, leaf: Leaf) {
        self.injector.clear(leaf);
    }

    /// KOT state of `hkid`, if it is a TDX KeyID.
    pub fn kot_state(&self, hkid: u16) -> Option<KotState> {
        let e = self.kot_entry(hkid)?;
        Some(match e.state.load(Ordering::Acquire) {
            0 => KotState::Free,
            1 => KotState::Assigned,
            2 => KotState::Flushed,
            _ => KotState::Global,
        })
    }

    fn kot_entry(&self, hkid: u16) -> Option<&KotEntry> {
        self.kot
            .get(usize::from(hkid.checked_sub(self.cfg.hkid_start)?))
    }

    fn package_of(&self, lp: u32) -> u32 {
        lp % self.cfg.num_packages
    }

    fn all_packages_mask(&self) -> u64 {
        if self.cfg.num_packages >= 64 {
            u64::MAX
        } else {
            (1u64 << self.cfg.num_packages) - 1
        }
    }

    /// Runs one SEAMCALL as if issued on logical processor `lp`.
    pub fn seamcall_on(&self, lp: u32, regs: &mut Regs) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let raw = regs.rax;
        let leaf_num = (raw & 0xFFFF) as u16;
        let version = ((raw >> 16) & 0xFF) as u8;
        let Some(leaf) = Leaf::from_number(leaf_num).filter(|_| raw >> 24 == 0) else {
            regs.rax = TdxStatus::OPERAND_INVALID.with_operand(OperandId::RAX).0;
            return;
        };
        let max_version = match leaf {
            // Versions above 0 reach the leaf, which sets R9–R11 before refusing a version
            // above 1 (intel/tdx-module `tdx_vmm_dispatcher.c`, `tdh_mem_sept_remove.c`,
            // `tdh_mem_page_promote.c`).
            Leaf::MemPagePromote | Leaf::MemSeptRemove => u8::MAX,
            Leaf::MemSeptAdd | Leaf::MngRd | Leaf::VpRd | Leaf::VpInit => 1,
            _ => 0,
        };
        if version > max_version || lp >= self.cfg.num_lps {
            regs.rax = TdxStatus::OPERAND_INVALID.with_operand(OperandId::RAX).0;
            return;
        }
        let mut host_interrupt = false;
        if let Some(status) = self.injector.check(leaf_num) {
            // An injected TDX_INTERRUPTED_RESUMABLE on CACHE.WB is a host interrupt pending
            // while the leaf runs: it saves its interruption point, so RCX = 1 can resume.
            if leaf == Leaf::PhymemCacheWb && status == TdxStatus::INTERRUPTED_RESUMABLE {
                host_interrupt = true;
            } else {
                regs.rax = status.0;
                return;
            }
        }
        let result = self.dispatch(lp, leaf, version, regs, host_interrupt);
        regs.rax = match result {
            Ok(s) | Err(s) => s.0,
        };
    }

    fn dispatch(
        &self,
        lp: u32,
        leaf: Leaf,
        version: u8,
        r: &mut Regs,
        host_interrupt: bool,
    ) -> LeafResult {
        use Leaf::*;
        // Platform leaves run before SYS_READY; everything else needs it.
        match leaf {
            SysInit => return self.leaf_sys_init(),
            SysLpInit => return self.leaf_sys_lp_init(lp),
            SysRd => return self.leaf_sys_rd(r),
            SysRdAll => return self.leaf_sys_rdall(r),
            SysConfig => return self.leaf_sys_config(r),
            SysKeyConfig => return self.leaf_sys_key_config(lp),
            SysTdmrInit => return self.leaf_sys_tdmr_init(r),
            _ => {}
        }
        if !self
            .sys
            .lp_init
            .get(lp as usize)
            .is_some_and(|b| b.load(Ordering::Acquire))
        {
            return Err(TdxStatus::SYS_LP_INIT_NOT_DONE);
        }
        if self.sys_state() != SysState::Ready {
            return Err(TdxStatus::SYS_NOT_READY);
        }
        match leaf {
            MngCreate => self.leaf_mng_create(r),
            MngKeyConfig => self.leaf_mng_key_config(lp, r),
            MngAddCx => self.leaf_mng_addcx(r),
            MngInit => self.leaf_mng_init(r),
            MngRd => self.leaf_mng_rd(r),
            MngWr => self.leaf_mng_wr(r),
            VpCreate => self.leaf_vp_create(r),
            VpAddCx => self.leaf_vp_addcx(r),
            VpInit => self.leaf_vp_init(lp, version, r),
            VpRd => self.leaf_vp_rd(lp, r),
            VpWr => self.leaf_vp_wr(lp, r),
            VpFlush => self.leaf_vp_flush(lp, r),
            MngVpFlushDone => self.leaf_mng_vpflushdone(r),
            PhymemCacheWb => self.leaf_phymem_cache_wb(lp, r, host_interrupt),
            MngKeyFreeId => self.leaf_mng_key_freeid(r),
            PhymemPageReclaim => self.leaf_phymem_page_reclaim(r),
            PhymemPageWbinvd => self.leaf_phymem_page_wbinvd(r),
            PhymemPageRdmd => self.leaf_phymem_page_rdmd(r),
            MemPageAdd => self.leaf_mem_page_add(r),
            MemSeptAdd => self.leaf_mem_sept_add(r),
            MemPageAug => self.leaf_mem_page_aug(r),
            MemRangeBlock => self.leaf_mem_range_block(r),
            MemRangeUnblock => self.leaf_mem_range_unblock(r),
            MemTrack => self.leaf_mem_track(r),
            MemPageRemove => self.leaf_mem_page_remove(r),
            MemSeptRemove => self.leaf_mem_sept_remove(version, r),
            MemPageDemote => self.leaf_mem_page_demote(r),
            MemPagePromote => self.leaf_mem_page_promote(version, r),
            MemSeptRd => self.leaf_mem_sept_rd(r),
            MrExtend => self.leaf_mr_extend(r),
            MrFinalize => self.leaf_mr_finalize(r),
            VpEnter => self.leaf_vp_enter(lp, r),
            // Not modelled: migration, relocation, debug MEM.RD/WR, SEPT.WR, SYS.INFO,
            // KEY.RECLAIMID, LP/SYS shutdown.
            _ => Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RAX)),
        }
    }

    // ----- shared helpers -----

    /// Validates an HPA operand for a 4 KiB page: aligned, no KeyID bits.
    fn check_page_hpa(&self, raw: u64, op: OperandId) -> Result<u64, TdxStatus> {
        if raw & 0xFFF != 0 || raw >> self.cfg.hkid_shift != 0 {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(op));
        }
        Ok(raw)
    }

    /// Locks the 4 KiB page of an explicit operand in `mode`; its PAMT type must be
    /// `page_type` (PAGE_METADATA_INCORRECT on `op` otherwise). Returns the HPA and the lock.
    fn lock_typed_page(
        &self,
        raw: u64,
        mode: LockMode,
        op: OperandId,
        page_type: PageType,
    ) -> Result<(u64, pamt::PageLock<'_>), TdxStatus> {
        let hpa = self.check_page_hpa(raw, op)?;
        let lock = self
            .pamt
            .lock_pages(hpa, 1, mode)
            .map_err(|e| e.with_operand(op))?;
        if lock.meta().page_type != page_type {
            return Err(TdxStatus::PAGE_METADATA_INCORRECT.with_operand(op));
        }
        Ok((hpa, lock))
    }

    /// Looks up and locks an explicit TDR operand.
    fn lock_tdr(
        &self,
        raw: u64,
        mode: LockMode,
        op: OperandId,
    ) -> Result<(Arc<Td>, pamt::PageLock<'_>), TdxStatus> {
        let (hpa, lock) = self.lock_typed_page(raw, mode, op, PageType::Tdr)?;
        let td = self
            .tds
            .read()
            .get(&hpa)
            .cloned()
            .ok_or(TdxStatus::PAGE_METADATA_INCORRECT.with_operand(op))?;
        Ok((td, lock))
    }

    /// Looks up and locks an explicit TDVPR operand, and takes its TD's TDR lock shared.
    fn lock_tdvpr(
        &self,
        raw: u64,
        mode: LockMode,
        op: OperandId,
    ) -> Result<(Arc<Vcpu>, pamt::PageLock<'_>, pamt::PageLock<'_>), TdxStatus> {
        let (hpa, lock) = self.lock_typed_page(raw, mode, op, PageType::Tdvpr)?;
        let vcpu = self
            .vcpus
            .read()
            .get(&hpa)
            .cloned()
            .ok_or(TdxStatus::PAGE_METADATA_INCORRECT.with_operand(op))?;
        // Implicit TDR lock: busy reports the TDR operand ID.
        let tdr_lock = self
            .pamt
            .lock_pages(vcpu.td.tdr, 1, LockMode::Shared)
            .map_err(|e| e.with_operand(OperandId::TDR))?;
        Ok((vcpu, lock, tdr_lock))
    }

    /// Reads `buf.len()` bytes at `hpa` if the range is inside the module's range.
    fn read_phys(&self, hpa: u64, buf: &mut [u8], op: OperandId) -> Result<(), TdxStatus> {
        if !self.pamt.in_range(hpa, buf.len() as u64) {
            return Err(TdxStatus::OPERAND_ADDR_RANGE_ERROR.with_operand(op));
        }
        self.mem.read(Hpa(hpa), buf);
        Ok(())
    }

    /// Zeroes `len` bytes at `hpa` (only called on pages the PAMT covers).
    fn zero_phys(&self, hpa: u64, len: u64) {
        if self.pamt.in_range(hpa, len) {
            self.mem.zero(Hpa(hpa), len);
        }
    }

    // ----- test support -----

    /// Kicks the vCPU at `tdvpr` out of TDH.VP.ENTER: the next workload unit boundary exits
    /// with an external-interrupt exit (the real platform sends an IPI). A kick posted while
    /// the vCPU is outside the TD makes its next entry exit immediately. Returns `false` if
    /// `tdvpr` is not a vCPU.
    pub fn kick(&self, tdvpr: Hpa) -> bool {
        match self.vcpus.read().get(&tdvpr.0) {
            Some(v) => {
                v.kick.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Posts interrupt `vector` to the vCPU at `tdvpr`, as a VMM sets a bit in the vCPU's
    /// posted-interrupt descriptor and sends the notification: the vCPU takes it at its next
    /// delivery point (before a VMRUN). Returns `false` if `tdvpr` is not a vCPU.
    pub fn post_interrupt(&self, tdvpr: Hpa, vector: u8) -> bool {
        match self.vcpus.read().get(&tdvpr.0) {
            Some(v) => {
                v.pir[usize::from(vector >> 6)].fetch_or(1 << (vector & 63), Ordering::AcqRel);
                true
            }
            None => false,
        }
    }

    /// Declares the workload the vCPU at `tdvpr` runs (replacing any previous one and
    /// resetting its progress). Returns `false` if `tdvpr` is not a vCPU.
    pub fn set_workload(&self, tdvpr: Hpa, workload: workload::Workload) -> bool {
        match self.vcpus.read().get(&tdvpr.0) {
            Some(v) => {
                *v.guest.lock() = guest::GuestState::new(Arc::new(workload));
                true
            }
            None => false,
        }
    }

    /// Whether the vCPU at `tdvpr` has run every step of its workload.
    pub fn workload_done(&self, tdvpr: Hpa) -> Option<bool> {
        self.vcpus
            .read()
            .get(&tdvpr.0)
            .map(|v| v.guest.lock().is_done())
    }

    /// Takes one of the module's internal locks and keeps it until the returned value is
    /// dropped, so tests can provoke `TDX_OPERAND_BUSY` deterministically. `None` if the
    /// lock is already held incompatibly or the target does not exist.
    pub fn hold_lock(self: &Arc<Self>, target: LockTarget, mode: LockMode) -> Option<HeldLock> {
        let td_of = |tdr: Hpa| self.tds.read().get(&tdr.0).cloned();
        let inner = match target {
            LockTarget::Page(hpa) => {
                let e = self.pamt.entry(hpa.0)?;
                core::mem::forget(e.lock.try_lock(mode)?);
                HeldInner::Page(hpa.0)
            }
            LockTarget::SeptTree(tdr) => {
                let td = td_of(tdr)?;
                core::mem::forget(td.tree_lock.try_lock(mode)?);
                HeldInner::Tree(td)
            }
            LockTarget::TdEpoch(tdr) => {
                let td = td_of(tdr)?;
                core::mem::forget(td.epoch_lock.try_lock(mode)?);
                HeldInner::Epoch(td)
            }
            LockTarget::Kot => {
                core::mem::forget(self.kot_lock.try_lock(mode)?);
                HeldInner::Kot
            }
            LockTarget::Wbt(pkg) => {
                let i = pkg as usize;
                core::mem::forget(self.wbt.get(i)?.lock.try_lock(mode)?);
                HeldInner::Wbt(i)
            }
        };
        Some(HeldLock {
            module: self.clone(),
            inner,
            mode,
        })
    }

    /// Forces the S-EPT entry for `gpa` at `level` of the TD at `tdr` into `state` (keeping
    /// its HPA), bypassing every rule. Test-only hook used to reach states only migration
    /// produces (REMOVED, BLOCKEDW, PENDING_BLOCKEDW) in the legality tables. Returns
    /// `false` if the walk does not reach the entry.
    pub fn force_sept_state(&self, tdr: Hpa, gpa: Gpa, level: PageLevel, state: SeptState) -> bool {
        let Some(td) = self.tds.read().get(&tdr.0).cloned() else {
            return false;
        };
        let Some(tree) = td.tree.get() else {
            return false;
        };
        match tree.walk(gpa, level) {
            Ok(w) => {
                let old = w.entry().load(Ordering::Acquire);
                w.entry()
                    .store(sept::word(state, sept::hpa_of(old)), Ordering::Release);
                true
            }
            Err(_) => false,
        }
    }

    /// The TD's child-page count (TDR.CHLDCNT), if `tdr` is a TD.
    pub fn td_child_count(&self, tdr: Hpa) -> Option<u64> {
        self.tds
            .read()
            .get(&tdr.0)
            .map(|td| td.chldcnt.load(Ordering::Acquire))
    }

    /// The PAMT page type, owner and size of the page at `hpa`, if covered.
    pub fn pamt_entry(&self, hpa: Hpa) -> Option<pamt::PamtMeta> {
        self.pamt.entry(hpa.0).map(|e| e.meta())
    }

    /// Checks the module's global invariants; call only when no SEAMCALL is running.
    /// Every owned PAMT page belongs to a live TD; each TD's CHLDCNT equals the 4 KiB child pages
    /// PAMT records; every S-EPT leaf of a live (not torn-down) TD maps a guest page the TD
    /// owns at that size and no page is mapped twice; no lock is left held.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let tds = self.tds.read();
        let mut owned: BTreeMap<u64, u64> = BTreeMap::new();
        for (hpa, meta) in self.pamt.snapshot() {
            if matches!(meta.page_type, PageType::Nda | PageType::Rsvd) {
                continue;
            }
            if !tds.contains_key(&meta.owner.0) {
                return Err(InvariantViolation::UnknownOwner {
                    page: hpa,
                    page_type: meta.page_type,
                    owner: meta.owner,
                });
            }
            if meta.page_type != PageType::Tdr {
                // CHLDCNT counts 4 KiB pages (512 for a 2 MiB page), as the module does
                // (intel/tdx-module `tdh_mem_page_aug.c`, `tdh_phymem_page_reclaim.c`).
                *owned.entry(meta.owner.0).or_default() += 1;
            }
            if let Some(e) = self.pamt.entry(hpa.0)
                && e.lock.is_locked()
            {
                return Err(InvariantViolation::LockLeaked { what: "PAMT entry" });
            }
        }
        for (tdr, td) in tds.iter() {
            let chldcnt = td.chldcnt.load(Ordering::Acquire);
            let o = owned.get(tdr).copied().unwrap_or(0);
            if chldcnt != o {
                return Err(InvariantViolation::ChildCount {
                    tdr: Hpa(*tdr),
                    chldcnt,
                    owned: o,
                });
            }
            if td.tree_lock.is_locked() {
                return Err(InvariantViolation::LockLeaked { what: "S-EPT tree" });
            }
            if td.epoch_lock.is_locked() {
                return Err(InvariantViolation::LockLeaked { what: "TD epoch" });
            }
            if td.lifecycle() == Lifecycle::Teardown {
                continue;
            }
            if let Some(tree) = td.tree.get() {
                let mut seen = alloc::collections::BTreeSet::new();
                let mut bad = None;
                td::for_each_leaf(tree, |gpa, level, w| {
                    if bad.is_some() {
                        return;
                    }
                    if w & (sept::TDEL) != 0 {
                        bad = Some(InvariantViolation::LockLeaked {
                            what: "S-EPT entry",
                        });
                        return;
                    }
                    let hpa = sept::hpa_of(w);
                    let meta = self.pamt.entry(hpa).map(|e| e.meta());
                    let ok = meta.is_some_and(|m| {
                        m.page_type == PageType::Reg
                            && m.owner.0 == *tdr
                            && m.size.raw() == level.raw()
                    });
                    if !ok {
                        bad = Some(InvariantViolation::LeafNotOwned {
                            tdr: Hpa(*tdr),
                            gpa,
                            hpa: Hpa(hpa),
                        });
                    } else if !seen.insert(hpa) {
                        bad = Some(InvariantViolation::DoubleMapped { hpa: Hpa(hpa) });
                    }
                });
                if let Some(b) = bad {
                    return Err(b);
                }
            }
        }
        Ok(())
    }
}

/// A lock [`EmulatedModule::hold_lock`] can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockTarget {
    /// The PAMT entry lock of a page (e.g. a TDR, TDVPR or guest page).
    Page(Hpa),
    /// A TD's S-EPT tree lock.
    SeptTree(Hpa),
    /// A TD's epoch lock.
    TdEpoch(Hpa),
    /// The KOT lock.
    Kot,
    /// A package's TDH.PHYMEM.CACHE.WB mutex (taken exclusively by the leaf).
    Wbt(u32),
}

enum HeldInner {
    Page(u64),
    Tree(Arc<Td>),
    Epoch(Arc<Td>),
    Kot,
    Wbt(usize),
}

/// A lock held by [`EmulatedModule::hold_lock`]; released on drop.
pub struct HeldLock {
    module: Arc<EmulatedModule>,
    inner: HeldInner,
    mode: LockMode,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        match &self.inner {
            HeldInner::Page(hpa) => {
                if let Some(e) = self.module.pamt.entry(*hpa) {
                    e.lock.release(self.mode);
                }
            }
            HeldInner::Tree(td) => td.tree_lock.release(self.mode),
            HeldInner::Epoch(td) => td.epoch_lock.release(self.mode),
            HeldInner::Kot => self.module.kot_lock.release(self.mode),
            HeldInner::Wbt(i) => {
                if let Some(w) = self.module.wbt.get(*i) {
                    w.lock.release(self.mode);
                }
            }
        }
    }
}
