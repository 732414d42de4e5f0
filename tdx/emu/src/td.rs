//! TD and vCPU control structures (TDR, TDCS, TDVPS) and their leaves: TDH.MNG.*, TDH.VP.*
//! except VP.ENTER, and the teardown / PHYMEM leaves (module 1.5 `tdh_mng_*.c`,
//! `tdh_vp_*.c`, `tdh_phymem_*.c`).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use super::guest::GuestState;
use super::lock::Sharex;
use super::pamt::{PageLock, PamtMeta};
use super::platform::{CPUID_CONFIG, XFAM_FIXED0, XFAM_FIXED1};
use super::sept::{self, SeptTable, SeptTree};
use super::{EmulatedModule, KotState, LeafResult, LockMode};
use crate::metadata::{td as tf, vcpu as vf};
use tdx_abi::pamt::{PageType, PamtPageSize};
use tdx_abi::seamcall::Regs;
use tdx_abi::td_params::{EPTP_MEMTYPE_WB, TD_PARAMS_SIZE, TdParams, attributes, config_flags};
use tdx_abi::{Gpa, Hpa, Leaf, OperandId, PageLevel, SeptState, TdxStatus};

/// TD lifecycle state (TDR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Lifecycle {
    /// TDH.MNG.CREATE done.
    HkidAssigned = 0,
    /// TDH.MNG.KEY.CONFIG done on every package.
    KeysConfigured = 1,
    /// TDH.MNG.VPFLUSHDONE done.
    Blocked = 2,
    /// TDH.MNG.KEY.FREEID done: pages may be reclaimed.
    Teardown = 3,
}

/// TD operation state (TDCS; migration states not modelled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpState {
    /// Before TDH.MNG.INIT.
    Uninitialized = 0,
    /// TDH.MNG.INIT done; building (PAGE.ADD, MR.EXTEND).
    Initialized = 1,
    /// TDH.MR.FINALIZE done; vCPUs may run.
    Runnable = 2,
}

/// TD configuration from TD_PARAMS.
pub(crate) struct TdCfg {
    pub params: TdParams,
    pub shared_bit: u32,
}

/// Measurement registers.
pub(crate) struct Measure {
    pub sha: Option<tdx_abi::measure::MrtdAccumulator>,
    pub mrtd: [u8; 48],
    pub rtmr: [[u8; 48]; 4],
}

/// A TD (TDR + TDCS).
pub(crate) struct Td {
    pub tdr: u64,
    pub hkid: u16,
    pub lifecycle: AtomicU8,
    pub keys_pkgs: AtomicU64,
    pub chldcnt: AtomicU64,
    pub tdcs_count: AtomicU32,
    /// The TDCS pages, in TDH.MNG.ADDCX order (the SVM engine keeps the nested page table
    /// root in the first one).
    pub tdcs_pages: spin::Mutex<Vec<u64>>,
    pub op_state: AtomicU8,
    pub cfg: spin::Once<TdCfg>,
    pub num_vcpus: AtomicU32,
    /// TDCS.NUM_ASSOC_VCPUS: vCPUs associated with some LP. Raised by `associate_vcpu_initial`
    /// (TDH.VP.INIT) and by `associate_vcpu` on a new association, lowered by TDH.VP.FLUSH;
    /// TDH.MNG.VPFLUSHDONE needs it at 0 (intel/tdx-module `src/common/helpers/helpers.c`,
    /// `tdh_vp_flush.c`, `tdh_mng_vpflushdone.c`).
    pub num_assoc_vcpus: AtomicU32,
    pub vcpus: spin::Mutex<Vec<u64>>,
    pub tree: spin::Once<SeptTree>,
    pub tree_lock: Sharex,
    pub epoch_lock: Sharex,
    pub td_epoch: AtomicU64,
    pub refcount: [AtomicU64; 2],
    pub mr: spin::Mutex<Measure>,
    pub rtmr_lock: Sharex,
    pub notify_enables: AtomicU64,
    /// NOTIFY_ENABLES as the guest wrote it with TDG.VM.WR.
    pub guest_notify_enables: AtomicU64,
}

impl Td {
    /// TDG.MR.RTMR.EXTEND's effect: RTMR `index` (< 4) becomes SHA-384(RTMR || `digest`).
    /// `false` if another extension holds the RTMRs (the caller answers or retries BUSY).
    pub(crate) fn try_extend_rtmr(&self, index: usize, digest: &[u8; 48]) -> bool {
        let Some(_l) = self.rtmr_lock.try_lock(LockMode::Exclusive) else {
            return false;
        };
        if let Some(slot) = self.mr.lock().rtmr.get_mut(index) {
            *slot = tdx_abi::measure::rtmr_extend(slot, digest);
        }
        true
    }

    /// Element `id` of one of the TD's measurement registers (MRTD, RTMR0–3, MRCONFIGID,
    /// MROWNER, MROWNERCONFIG; six 8-byte elements each), if `id` names one.
    pub(crate) fn measurement_element(&self, id: u64) -> Option<u64> {
        let element = |bytes: &[u8; 48], base: u64| -> Option<u64> {
            let i = usize::try_from(id.checked_sub(base).filter(|&i| i < 6)?).ok()?;
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            Some(u64::from_le_bytes(b))
        };
        let mr = self.mr.lock();
        let zero = [0u8; 48];
        let p = self.cfg.get().map(|c| &c.params);
        element(&mr.mrtd, tf::MRTD)
            .or_else(|| {
                (0..4u64)
                    .find_map(|k| element(&mr.rtmr[k as usize], tf::RTMR + k * tf::MR_ELEMENTS))
            })
            .or_else(|| element(p.map_or(&zero, |p| &p.mr_config_id), tf::MRCONFIGID))
            .or_else(|| element(p.map_or(&zero, |p| &p.mr_owner), tf::MROWNER))
            .or_else(|| element(p.map_or(&zero, |p| &p.mr_owner_config), tf::MROWNERCONFIG))
    }

    pub fn lifecycle(&self) -> Lifecycle {
        match self.lifecycle.load(Ordering::Acquire) {
            0 => Lifecycle::HkidAssigned,
            1 => Lifecycle::KeysConfigured,
            2 => Lifecycle::Blocked,
            _ => Lifecycle::Teardown,
        }
    }
    pub fn op_state(&self) -> OpState {
        match self.op_state.load(Ordering::Acquire) {
            0 => OpState::Uninitialized,
            1 => OpState::Initialized,
            _ => OpState::Runnable,
        }
    }
    /// Whether removing mappings needs blocking and TLB tracking (`op_state_is_tlb_tracking_required`).
    pub fn tracking_required(&self) -> bool {
        self.op_state() == OpState::Runnable
    }
    /// `is_tlb_tracked`: a page blocked at `bepoch` is tracked if no vCPU can still hold a
    /// translation from that epoch.
    pub fn is_tracked(&self, bepoch: u64) -> bool {
        let epoch = self.td_epoch.load(Ordering::Acquire);
        if bepoch.saturating_add(1) < epoch {
            return true;
        }
        bepoch.saturating_add(1) == epoch
            && self.refcount[(bepoch & 1) as usize].load(Ordering::Acquire) == 0
    }
}

/// A vCPU (TDVPR + TDCX pages).
pub(crate) struct Vcpu {
    pub tdvpr: u64,
    pub td: Arc<Td>,
    /// VCPU_INDEX, assigned by TDH.VP.INIT.
    pub index: AtomicU32,
    pub tdcx_count: AtomicU32,
    /// The TDCX pages, in TDH.VP.ADDCX order (the SVM engine keeps the vCPU's VMCB in the
    /// first one and its VMSAVE area in the VMCB).
    pub tdcx_pages: spin::Mutex<Vec<u64>>,
    /// The SVM guest engine's state of this vCPU, once it first ran.
    pub svm: spin::Mutex<Option<crate::svm::SvmVcpu>>,
    pub initialized: AtomicBool,
    /// VCPU_DISABLED: a non-recoverable vCPU exit happened (a triple fault).
    pub disabled: AtomicBool,
    pub assoc_lp: AtomicU64,
    pub epoch: AtomicU64,
    pub kick: AtomicBool,
    /// Posted-interrupt requests (vectors 0–255) the SVM engine merges before each VMRUN.
    pub pir: [AtomicU64; 4],
    /// The host's shared EPT pointer (TD-VMCS SHARED_EPTP; 0 = none).
    pub shared_eptp: AtomicU64,
    /// TD-VMCS posted-interrupt notification vector (0xFFFF until written), descriptor
    /// address (NULL_PA, all ones, until written) and pin-based controls. The software
    /// module records them as the real one does, but takes interrupts through
    /// [`tdx_abi::software::SoftwareModuleHooks::post_interrupt`] (it has no VMX).
    pub posted_nv: AtomicU64,
    pub posted_desc: AtomicU64,
    pub pin_based: AtomicU64,
    pub init_rcx: AtomicU64,
    pub x2apic: AtomicU64,
    pub scratch: AtomicU64,
    pub guest: spin::Mutex<GuestState>,
}

impl Vcpu {
    /// VCPU_INDEX (0 until TDH.VP.INIT).
    pub fn index(&self) -> u32 {
        self.index.load(Ordering::Acquire)
    }
}

pub(crate) const NO_LP: u64 = u64::MAX;

/// The TD-VMCS posted-interrupt notification vector before the host writes it
/// (`POSTED_INTERRUPT_NOTFICATION_VECTOR_INIT`, intel/tdx-module
/// `src/common/x86_defs/vmcs_defs.h`).
const POSTED_NV_INIT: u64 = 0xFFFF;

/// `check_and_associate_vcpu` / `associate_vcpu` (intel/tdx-module
/// `src/common/helpers/helpers.c`), used by TDH.VP.RD, TDH.VP.WR and TDH.VP.ENTER: the vCPU
/// must be initialized and, unless `allow_disabled` (TDH.VP.RD), not disabled
/// (`TDX_VCPU_STATE_INCORRECT`), then it is atomically associated with `lp` unless it
/// already is with another LP (`TDX_VCPU_ASSOCIATED`); a new association raises the TD's
/// NUM_ASSOC_VCPUS. Only TDH.VP.FLUSH on that LP ends the association.
pub(crate) fn check_and_associate(
    vcpu: &Vcpu,
    lp: u32,
    allow_disabled: bool,
) -> Result<(), TdxStatus> {
    if !vcpu.initialized.load(Ordering::Acquire)
        || (!allow_disabled && vcpu.disabled.load(Ordering::Acquire))
    {
        return Err(TdxStatus::VCPU_STATE_INCORRECT);
    }
    match vcpu
        .assoc_lp
        .compare_exchange(NO_LP, u64::from(lp), Ordering::AcqRel, Ordering::Acquire)
    {
        Ok(_) => {
            vcpu.td.num_assoc_vcpus.fetch_add(1, Ordering::AcqRel);
            Ok(())
        }
        Err(current) if current == u64::from(lp) => Ok(()),
        Err(_) => Err(TdxStatus::VCPU_ASSOCIATED),
    }
}

/// After a TD exit with status `status`: TDX_NON_RECOVERABLE_VCPU disables the vCPU, which
/// then cannot be entered or written again (`async_tdexit_internal`, intel/tdx-module
/// `src/td_transitions/td_exit.c`).
pub(crate) fn disable_after(vcpu: &Vcpu, status: TdxStatus) {
    if status.0 & 0xFFFF_FFFF_0000_0000 == TdxStatus::NON_RECOVERABLE_VCPU.0 {
        vcpu.disabled.store(true, Ordering::Release);
    }
}

/// The software module's read-only vCPU hooks, which the real module does not have (see
/// [`crate::metadata::vcpu`]): reading them associates nothing.
fn software_only_hook(field: u64) -> bool {
    use crate::metadata::vcpu as vf;
    matches!(
        field,
        vf::VCPU_EPOCH
            | vf::ASSOCIATED_LP
            | vf::INIT_RCX
            | vf::X2APIC_ID
            | vf::GUEST_RIP
            | vf::ZERO_STEP_COUNT
    )
}

/// TDCS pages the real module takes beyond its minimum, for L2 VMs: MAX_NUM_TDCS_PAGES (9)
/// minus MIN_NUM_TDCS_PAGES (6) (intel/tdx-module
/// `src/common/data_structures/td_control_structures.h`).
const TDCS_L2_PAGES: u32 = 3;

/// MAX_L2_VMS: MAX_VMS (4) minus the L1 VM (intel/tdx-module
/// `src/common/data_structures/tdx_tdvps.h`).
const MAX_L2_VMS: u8 = 3;

/// TDH.PHYMEM.CACHE.WB commands in RCX (TDH_PHYMEM_CACHEWB_START_CMD / _RESUME_CMD,
/// intel/tdx-module `include/tdx_api_defs.h`).
const CACHEWB_START_CMD: u64 = 0;
const CACHEWB_RESUME_CMD: u64 = 1;

/// Cache sub-blocks one TDH.PHYMEM.CACHE.WB writes back (the module's
/// `num_of_cached_sub_blocks`, derived from the CPU; the software module's choice): a
/// session can be interrupted at most `CACHE_SUB_BLOCKS - 1` times.
pub const CACHE_SUB_BLOCKS: u64 = 8;

/// Calls `f(gpa, level, word)` for every leaf entry of the tree.
pub(crate) fn for_each_leaf(tree: &SeptTree, mut f: impl FnMut(Gpa, PageLevel, u64)) {
    fn visit(
        tree: &SeptTree,
        table: &SeptTable,
        level: PageLevel,
        base: u64,
        f: &mut dyn FnMut(Gpa, PageLevel, u64),
    ) {
        for (i, e) in table.entries.iter().enumerate() {
            let w = e.load(Ordering::Acquire);
            let s = sept::state_of(w);
            let gpa = base + ((i as u64) << level.shift());
            if s.is_leaf() {
                f(Gpa(gpa), level, w);
            } else if matches!(s, SeptState::NlMapped | SeptState::NlBlocked)
                && let (Some(child), Some(lower)) = (tree.table(sept::hpa_of(w)), level.lower())
            {
                visit(tree, &child, lower, gpa, f);
            }
        }
    }
    visit(tree, &tree.root, tree.top_level(), 0, &mut f);
}

/// Which op-states a leaf is allowed in: the UNINITIALIZED, INITIALIZED and RUNNABLE columns
/// of `seamcall_state_lookup` (intel/tdx-module `include/auto_gen/op_state_lookup.c`, indexed
/// by the leaf numbers of `include/tdx_api_defs.h`); the migration op-states are not modelled.
/// A leaf the table does not list never reaches the op-state check.
fn op_state_allowed(leaf: Leaf, s: OpState) -> bool {
    use Leaf::*;
    // [uninitialized, initialized, runnable]
    let allowed: [bool; 3] = match leaf {
        // [0] TDH.VP.ENTER: only after TDH.MR.FINALIZE.
        VpEnter => [false, false, true],
        // [1] TDH.MNG.ADDCX, [21] TDH.MNG.INIT: only before TDH.MNG.INIT.
        MngAddCx | MngInit => [true, false, false],
        // [2] PAGE.ADD, [4] VP.ADDCX, [10] VP.CREATE, [16] MR.EXTEND, [17] MR.FINALIZE,
        // [22] VP.INIT: only between TDH.MNG.INIT and TDH.MR.FINALIZE.
        MemPageAdd | VpAddCx | VpCreate | MrExtend | MrFinalize | VpInit => [false, true, false],
        // [18] TDH.VP.FLUSH: any op-state.
        VpFlush => [true, true, true],
        // [3] SEPT.ADD, [6] PAGE.AUG (allowed before finalize too), [7] RANGE.BLOCK,
        // [11] MNG.RD, [13] MNG.WR, [15] DEMOTE, [23] PROMOTE, [25] SEPT.RD, [26] VP.RD,
        // [29] PAGE.REMOVE, [30] SEPT.REMOVE, [38] TRACK, [39] RANGE.UNBLOCK, [43] VP.WR:
        // once initialized.
        _ => [false, true, true],
    };
    allowed[s as usize]
}

impl EmulatedModule {
    /// Exclusively locks the 4 KiB page whose HPA is in RCX; it must be free
    /// (PAGE_METADATA_INCORRECT on RCX otherwise). Returns the HPA and the lock.
    fn lock_free_page_rcx(&self, raw: u64) -> Result<(u64, PageLock<'_>), TdxStatus> {
        let hpa = self.check_page_hpa(raw, OperandId::RCX)?;
        let page = self
            .pamt
            .lock_pages(hpa, 1, LockMode::Exclusive)
            .map_err(|e| e.with_operand(OperandId::RCX))?;
        if !page.all_free() {
            return Err(TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::RCX));
        }
        Ok((hpa, page))
    }

    /// Makes the locked free 4 KiB `page` a zeroed control page of type `page_type` owned by
    /// `td`, counted in its child pages.
    fn adopt_child_page(&self, page: &PageLock<'_>, td: &Td, page_type: PageType) {
        self.zero_phys(page.hpa.0, 4096);
        page.set_all(PamtMeta::owned(page_type, PamtPageSize::S4K, td.tdr));
        td.chldcnt.fetch_add(1, Ordering::AcqRel);
    }

    /// `check_state_map_tdcs_and_lock` (intel/tdx-module `src/common/helpers/helpers.c`):
    /// lifecycle KEYS_CONFIGURED (any other lifecycle state, before key configuration as well
    /// as after TDH.MNG.VPFLUSHDONE, is `TDX_TD_KEYS_NOT_CONFIGURED`:
    /// `check_td_in_correct_build_state`), TDCS allocated (`TDX_TDCS_NOT_ALLOCATED`), op-state
    /// allowed for `leaf` (`TDX_OP_STATE_INCORRECT` with no operand ID: only a busy op-state
    /// lock names `OPERAND_ID_OP_STATE`).
    pub(super) fn check_td_state(&self, td: &Td, leaf: Leaf) -> Result<(), TdxStatus> {
        if td.lifecycle() != Lifecycle::KeysConfigured {
            return Err(TdxStatus::TD_KEYS_NOT_CONFIGURED);
        }
        if td.tdcs_count.load(Ordering::Acquire) < self.cfg.limits.tdcs_pages {
            return Err(TdxStatus::TDCS_NOT_ALLOCATED);
        }
        if !op_state_allowed(leaf, td.op_state()) {
            return Err(TdxStatus::OP_STATE_INCORRECT);
        }
        Ok(())
    }

    pub(super) fn leaf_mng_create(&self, r: &mut Regs) -> LeafResult {
        let (tdr, page) = self.lock_free_page_rcx(r.rcx)?;
        let hkid = u16::try_from(r.rdx)
            .ok()
            .filter(|&h| self.kot_entry(h).is_some())
            .ok_or(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX))?;
        let _kot = self
            .kot_lock
            .try_lock(LockMode::Exclusive)
            .ok_or(TdxStatus::OPERAND_BUSY.with_operand(OperandId::KOT))?;
        let kot = self
            .kot_entry(hkid)
            .ok_or(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX))?;
        match kot.state.load(Ordering::Acquire) {
            s if s == KotState::Free as u8 => {}
            s if s == KotState::Global as u8 => {
                return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX));
            }
            _ => return Err(TdxStatus::HKID_NOT_FREE.with_operand(OperandId::RDX)),
        }
        kot.state.store(KotState::Assigned as u8, Ordering::Release);
        kot.wb_pending.store(0, Ordering::Release);
        self.zero_phys(tdr, 4096);
        page.set_all(PamtMeta {
            page_type: PageType::Tdr,
            size: PamtPageSize::S4K,
            owner: Hpa(tdr),
        });
        let td = Td {
            tdr,
            hkid,
            lifecycle: AtomicU8::new(Lifecycle::HkidAssigned as u8),
            keys_pkgs: AtomicU64::new(0),
            chldcnt: AtomicU64::new(0),
            tdcs_count: AtomicU32::new(0),
            tdcs_pages: spin::Mutex::new(Vec::new()),
            op_state: AtomicU8::new(OpState::Uninitialized as u8),
            cfg: spin::Once::new(),
            num_vcpus: AtomicU32::new(0),
            num_assoc_vcpus: AtomicU32::new(0),
            vcpus: spin::Mutex::new(Vec::new()),
            tree: spin::Once::new(),
            tree_lock: Sharex::new(),
            epoch_lock: Sharex::new(),
            td_epoch: AtomicU64::new(1),
            refcount: [AtomicU64::new(0), AtomicU64::new(0)],
            mr: spin::Mutex::new(Measure {
                sha: None,
                mrtd: [0; 48],
                rtmr: [[0; 48]; 4],
            }),
            rtmr_lock: Sharex::new(),
            notify_enables: AtomicU64::new(0),
            guest_notify_enables: AtomicU64::new(0),
        };
        self.tds.write().insert(tdr, Arc::new(td));
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mng_key_config(&self, lp: u32, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rcx, LockMode::Exclusive, OperandId::RCX)?;
        if td.lifecycle() != Lifecycle::HkidAssigned {
            return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
        }
        let bit = 1u64 << self.package_of(lp);
        let prev = td.keys_pkgs.fetch_or(bit, Ordering::AcqRel);
        if prev & bit != 0 {
            return Ok(TdxStatus::KEY_CONFIGURED);
        }
        if prev | bit == self.all_packages_mask() {
            td.lifecycle
                .store(Lifecycle::KeysConfigured as u8, Ordering::Release);
        }
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mng_addcx(&self, r: &mut Regs) -> LeafResult {
        // Order and statuses of intel/tdx-module `src/vmm_dispatcher/api_calls/tdh_mng_add_cx.c`.
        let (td, _l) = self.lock_tdr(r.rdx, LockMode::Exclusive, OperandId::RDX)?;
        // Any lifecycle state but KEYS_CONFIGURED: TDX_TD_KEYS_NOT_CONFIGURED.
        if td.lifecycle() != Lifecycle::KeysConfigured {
            return Err(TdxStatus::TD_KEYS_NOT_CONFIGURED);
        }
        // The module takes up to MAX_NUM_TDCS_PAGES (the minimum plus the pages of L2 VMs);
        // beyond that TDX_TDCX_NUM_INCORRECT, with no operand ID.
        let count = td.tdcs_count.load(Ordering::Acquire);
        if count >= self.cfg.limits.tdcs_pages + TDCS_L2_PAGES {
            return Err(TdxStatus::TDCX_NUM_INCORRECT);
        }
        let (_, page) = self.lock_free_page_rcx(r.rcx)?;
        if count >= self.cfg.limits.tdcs_pages {
            // A page beyond the minimum: OP_STATE exists now and is checked against the
            // ADDCX row of `seamcall_state_lookup` (TDX_OP_STATE_INCORRECT, no operand ID).
            if !op_state_allowed(Leaf::MngAddCx, td.op_state()) {
                return Err(TdxStatus::OP_STATE_INCORRECT);
            }
            // Extra TDCS pages only serve L2 VMs (TD partitioning), which the software
            // module does not model.
            return Err(TdxStatus::TDCX_NUM_INCORRECT);
        }
        self.adopt_child_page(&page, &td, PageType::Tdcx);
        td.tdcs_pages.lock().push(page.hpa.0);
        td.tdcs_count.fetch_add(1, Ordering::AcqRel);
        Ok(TdxStatus::SUCCESS)
    }

    /// TD_PARAMS checks of TDH.MNG.INIT in the module's order
    /// (`read_and_set_td_configurations` and `read_and_set_cpuid_configurations` in intel/tdx-module
    /// `src/vmm_dispatcher/api_calls/tdh_mng_init.c`; the helpers in
    /// `src/common/helpers/helpers.c`). `raw` is the TD_PARAMS page, for the reserved fields.
    fn validate_td_params(
        &self,
        p: &TdParams,
        raw: &[u8; TD_PARAMS_SIZE],
    ) -> Result<(), TdxStatus> {
        let inv = |op| Err(TdxStatus::OPERAND_INVALID.with_operand(op));
        let zero = |range: core::ops::Range<usize>| raw[range].iter().all(|&b| b == 0);
        // `verify_td_attributes`: only the bits the module supports (ATTRIBUTES_FIXED0), and
        // a MIGRATABLE TD can be neither DEBUG nor use PERFMON.
        if p.attributes & !attributes::SUPPORTED != 0
            || (p.attributes & attributes::MIGRATABLE != 0
                && p.attributes & (attributes::DEBUG | attributes::PERFMON) != 0)
        {
            return inv(OperandId::ATTRIBUTES);
        }
        // `check_xfam`: allowed bits (TDX_XFAM_FIXED0 and the platform's XCR0/XSS), the
        // fixed-1 bits (x87, SSE), and the all-or-nothing groups: AVX-512 (k-mask, ZMM_Hi256,
        // Hi16_ZMM; needs AVX), CET (user, supervisor), AMX (XTILECFG, XTILEDATA).
        let bit = |n: u32| p.xfam >> n & 1;
        if p.xfam & !XFAM_FIXED0 != 0
            || p.xfam & XFAM_FIXED1 != XFAM_FIXED1
            || (bit(5) == 1 && bit(2) == 0)
            || bit(5) != bit(6)
            || bit(5) != bit(7)
            || bit(11) != bit(12)
            || bit(17) != bit(18)
        {
            return inv(OperandId::XFAM);
        }
        // MAX_VCPUS: not 0 (the module's only rule); the software module also caps it.
        if p.max_vcpus == 0 || p.max_vcpus > self.cfg.limits.max_vcpus_per_td {
            return inv(OperandId::MAX_VCPUS);
        }
        // NUM_L2_VMS: at most MAX_L2_VMS (3); with L2 VMs the TD needs TDCS pages the
        // software module never takes (it has no TD partitioning), so 1..=3 fails the
        // `is_required_tdcs_allocated` check (the minimum was checked with the TD state).
        if p.num_l2_vms > MAX_L2_VMS {
            return inv(OperandId::NUM_L2_VMS);
        }
        if p.num_l2_vms != 0 {
            return Err(TdxStatus::TDCS_NOT_ALLOCATED);
        }
        // reserved_0 (4 bytes at 0x14).
        if !zero(0x14..0x18) {
            return inv(OperandId::RDX);
        }
        // `verify_td_config_flags`: only the defined CONFIG_FLAGS bits.
        if p.config_flags & !config_flags::ALL != 0 {
            return inv(OperandId::EXEC_CONTROLS);
        }
        // `verify_and_set_td_eptp_controls`: memory type WB, page-walk length 4 or 5 (the
        // modelled platform has 5-level EPT and a MAXPA of at least MIN_PA_FOR_PML5), no A/D
        // or supervisor-shadow-stack control, no address, reserved bits clear; GPAW (shared
        // bit 51) needs 5 levels, reported on EPTP_CONTROLS, not on CONFIG_FLAGS.
        let levels = p.ept_levels();
        if p.eptp_controls & 7 != EPTP_MEMTYPE_WB
            || p.eptp_controls & !0x3F != 0
            || !(levels == 4 || levels == 5)
            || (p.config_flags & config_flags::GPAW != 0 && levels != 5)
        {
            return inv(OperandId::EPTP_CONTROLS);
        }
        // VIRT_TSC_FREQUENCY_MIN..=MAX: 100 MHz .. 10 GHz in units of 25 MHz
        // (`td_control_structures.h`).
        if !(4..=400).contains(&p.tsc_frequency) {
            return inv(OperandId::TSC_FREQUENCY);
        }
        // reserved_1 (38 bytes at 0x2A), MSR_CONFIG_CTLS bits 7:1, reserved_2 (24 bytes at
        // 0xE8).
        if !zero(0x2A..0x50) || p.msr_config_ctls & !1 != 0 || !zero(0xE8..0x100) {
            return inv(OperandId::RDX);
        }
        // CPUID_CONFIG: only bits the module reports as configurable.
        for (value, (_, mask)) in p.cpuid_values.iter().zip(CPUID_CONFIG.iter()) {
            if value.iter().zip(mask.iter()).any(|(v, m)| v & !m != 0) {
                return inv(OperandId::CPUID_CONFIG);
            }
        }
        // reserved_3: every byte after the configurable CPUID leaves' slots.
        if !zero(0x100 + 16 * CPUID_CONFIG.len()..TD_PARAMS_SIZE) {
            return inv(OperandId::RDX);
        }
        Ok(())
    }

    pub(super) fn leaf_mng_init(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rcx, LockMode::Exclusive, OperandId::RCX)?;
        self.check_td_state(&td, Leaf::MngInit)?;
        if !r.rdx.is_multiple_of(TD_PARAMS_SIZE as u64) || r.rdx >> self.cfg.hkid_shift != 0 {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RDX));
        }
        let mut buf = [0u8; TD_PARAMS_SIZE];
        self.read_phys(r.rdx, &mut buf, OperandId::RDX)?;
        let params = TdParams::from_bytes(&buf, CPUID_CONFIG.len());
        self.validate_td_params(&params, &buf)?;
        let levels = params.ept_levels() as u8;
        let shared_bit = params.shared_bit();
        td.tree.call_once(|| SeptTree::new(levels));
        td.cfg.call_once(|| TdCfg { params, shared_bit });
        {
            let mut mr = td.mr.lock();
            mr.sha = Some(tdx_abi::measure::MrtdAccumulator::new());
            mr.rtmr = [[0; 48]; 4];
        }
        td.td_epoch.store(1, Ordering::Release);
        td.op_state
            .store(OpState::Initialized as u8, Ordering::Release);
        r.rcx = 0;
        Ok(TdxStatus::SUCCESS)
    }

    /// TDH.VP.CREATE (intel/tdx-module `src/vmm_dispatcher/api_calls/tdh_vp_create.c`): TDR
    /// (RDX) shared, TD state (op-state INITIALIZED only), the new TDVPR (RCX). The vCPU gets
    /// its index and is counted against MAX_VCPUS by TDH.VP.INIT, not here.
    pub(super) fn leaf_vp_create(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rdx, LockMode::Shared, OperandId::RDX)?;
        self.check_td_state(&td, Leaf::VpCreate)?;
        let (hpa, page) = self.lock_free_page_rcx(r.rcx)?;
        self.adopt_child_page(&page, &td, PageType::Tdvpr);
        td.vcpus.lock().push(hpa);
        let vcpu = Vcpu {
            tdvpr: hpa,
            td: td.clone(),
            index: AtomicU32::new(0),
            tdcx_count: AtomicU32::new(0),
            tdcx_pages: spin::Mutex::new(Vec::new()),
            svm: spin::Mutex::new(None),
            initialized: AtomicBool::new(false),
            disabled: AtomicBool::new(false),
            assoc_lp: AtomicU64::new(NO_LP),
            epoch: AtomicU64::new(0),
            kick: AtomicBool::new(false),
            init_rcx: AtomicU64::new(0),
            x2apic: AtomicU64::new(0),
            pir: [const { AtomicU64::new(0) }; 4],
            shared_eptp: AtomicU64::new(0),
            posted_nv: AtomicU64::new(POSTED_NV_INIT),
            posted_desc: AtomicU64::new(u64::MAX),
            pin_based: AtomicU64::new(0),
            scratch: AtomicU64::new(0),
            guest: spin::Mutex::new(GuestState::undeclared()),
        };
        self.vcpus.write().insert(hpa, Arc::new(vcpu));
        Ok(TdxStatus::SUCCESS)
    }

    /// TDH.VP.ADDCX (intel/tdx-module `src/vmm_dispatcher/api_calls/tdh_vp_addcx.c`): TDVPR
    /// (RDX) exclusive, TD state (op-state INITIALIZED only), vCPU not yet initialized
    /// (`TDX_VCPU_STATE_INCORRECT`), room for another TDCX page (`TDX_TDCX_NUM_INCORRECT`, no
    /// operand ID), the new page (RCX).
    pub(super) fn leaf_vp_addcx(&self, r: &mut Regs) -> LeafResult {
        let (vcpu, _v, _t) = self.lock_tdvpr(r.rdx, LockMode::Exclusive, OperandId::RDX)?;
        self.check_td_state(&vcpu.td, Leaf::VpAddCx)?;
        if vcpu.initialized.load(Ordering::Acquire) {
            return Err(TdxStatus::VCPU_STATE_INCORRECT);
        }
        if vcpu.tdcx_count.load(Ordering::Acquire) + 1 >= self.cfg.limits.tdvps_pages {
            return Err(TdxStatus::TDCX_NUM_INCORRECT);
        }
        let (_, page) = self.lock_free_page_rcx(r.rcx)?;
        self.adopt_child_page(&page, &vcpu.td, PageType::Tdcx);
        vcpu.tdcx_pages.lock().push(page.hpa.0);
        vcpu.tdcx_count.fetch_add(1, Ordering::AcqRel);
        Ok(TdxStatus::SUCCESS)
    }

    /// TDH.VP.INIT (intel/tdx-module `src/vmm_dispatcher/api_calls/tdh_vp_init.c`): TDVPR
    /// (RCX) exclusive, TD state (op-state INITIALIZED only), every TDVPS page added
    /// (`map_tdvps` fails: `TDX_TDCX_NUM_INCORRECT`, no operand ID), vCPU not yet
    /// initialized (`TDX_VCPU_STATE_INCORRECT`), then the vCPU index is the TD's vCPU count
    /// before this call, refused with `TDX_MAX_VCPUS_EXCEEDED` at TD_PARAMS.MAX_VCPUS.
    /// Version 1 (x2APIC ID in R8, the TOPOLOGY_ENUM feature, later than the 1.5.01 source)
    /// checks the ID before the index is taken.
    pub(super) fn leaf_vp_init(&self, lp: u32, version: u8, r: &mut Regs) -> LeafResult {
        let (vcpu, _v, _t) = self.lock_tdvpr(r.rcx, LockMode::Exclusive, OperandId::RCX)?;
        self.check_td_state(&vcpu.td, Leaf::VpInit)?;
        if vcpu.tdcx_count.load(Ordering::Acquire) + 1 < self.cfg.limits.tdvps_pages {
            return Err(TdxStatus::TDCX_NUM_INCORRECT);
        }
        if vcpu.initialized.load(Ordering::Acquire) {
            return Err(TdxStatus::VCPU_STATE_INCORRECT);
        }
        let x2apic = if version >= 1 {
            let x2apic = r.r8;
            let dup = vcpu.td.vcpus.lock().iter().any(|&other| {
                other != vcpu.tdvpr
                    && self.vcpus.read().get(&other).is_some_and(|o| {
                        o.initialized.load(Ordering::Acquire)
                            && o.x2apic.load(Ordering::Acquire) == x2apic
                    })
            });
            if dup || x2apic > u64::from(u32::MAX) {
                return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::R8));
            }
            Some(x2apic)
        } else {
            None
        };
        let td = &vcpu.td;
        let max = td
            .cfg
            .get()
            .map(|c| u32::from(c.params.max_vcpus))
            .unwrap_or(0);
        let index = td
            .num_vcpus
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| TdxStatus::MAX_VCPUS_EXCEEDED)?;
        vcpu.index.store(index, Ordering::Release);
        // Version 0: the x2APIC ID is the vCPU index.
        vcpu.x2apic
            .store(x2apic.unwrap_or(u64::from(index)), Ordering::Release);
        vcpu.init_rcx.store(r.rdx, Ordering::Release);
        // `associate_vcpu_initial`: the vCPU now belongs to the LP that initialized it, and
        // every later VP.RD/WR/ENTER must run there until TDH.VP.FLUSH.
        vcpu.assoc_lp.store(u64::from(lp), Ordering::Release);
        vcpu.td.num_assoc_vcpus.fetch_add(1, Ordering::AcqRel);
        vcpu.initialized.store(true, Ordering::Release);
        Ok(TdxStatus::SUCCESS)
    }

    /// TDH.VP.FLUSH (intel/tdx-module `src/vmm_dispatcher/api_calls/tdh_vp_flush.c`,
    /// `tdh_vp_flush`): the TDVPR exclusively (RCX), its TDR shared (busy on TDR), the TD's
    /// keys configured (`TDX_TD_KEYS_NOT_CONFIGURED`), all TDVPS pages added (`map_tdvps`:
    /// `TDX_TDCX_NUM_INCORRECT`), then the vCPU associated with *this* LP: not associated
    /// and associated with another LP are both `TDX_VCPU_NOT_ASSOCIATED`. Success ends the
    /// association and lowers NUM_ASSOC_VCPUS.
    pub(super) fn leaf_vp_flush(&self, lp: u32, r: &mut Regs) -> LeafResult {
        let (vcpu, _v, _t) = self.lock_tdvpr(r.rcx, LockMode::Exclusive, OperandId::RCX)?;
        if vcpu.td.lifecycle() != Lifecycle::KeysConfigured {
            return Err(TdxStatus::TD_KEYS_NOT_CONFIGURED);
        }
        if vcpu.tdcx_count.load(Ordering::Acquire) + 1 < self.cfg.limits.tdvps_pages {
            return Err(TdxStatus::TDCX_NUM_INCORRECT);
        }
        if vcpu.assoc_lp.load(Ordering::Acquire) != u64::from(lp) {
            return Err(TdxStatus::VCPU_NOT_ASSOCIATED);
        }
        vcpu.assoc_lp.store(NO_LP, Ordering::Release);
        vcpu.td.num_assoc_vcpus.fetch_sub(1, Ordering::AcqRel);
        Ok(TdxStatus::SUCCESS)
    }

    /// TDH.MNG.VPFLUSHDONE (intel/tdx-module
    /// `src/vmm_dispatcher/api_calls/tdh_mng_vpflushdone.c`, `tdh_mng_vpflushdone`): the TDR
    /// exclusively (RCX), then the KOT exclusively (OPERAND_BUSY on KOT), the lifecycle
    /// (HKID_ASSIGNED or KEYS_CONFIGURED, else `TDX_LIFECYCLE_STATE_INCORRECT`), then, once
    /// the TDCS exists and the TD is past UNINITIALIZED, NUM_ASSOC_VCPUS must be 0
    /// (`TDX_FLUSHVP_NOT_DONE`).
    pub(super) fn leaf_mng_vpflushdone(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rcx, LockMode::Exclusive, OperandId::RCX)?;
        let _kot_lock = self
            .kot_lock
            .try_lock(LockMode::Exclusive)
            .ok_or(TdxStatus::OPERAND_BUSY.with_operand(OperandId::KOT))?;
        if !matches!(
            td.lifecycle(),
            Lifecycle::HkidAssigned | Lifecycle::KeysConfigured
        ) {
            return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
        }
        if td.tdcs_count.load(Ordering::Acquire) >= self.cfg.limits.tdcs_pages
            && td.op_state() != OpState::Uninitialized
            && td.num_assoc_vcpus.load(Ordering::Acquire) != 0
        {
            return Err(TdxStatus::FLUSHVP_NOT_DONE);
        }
        let kot = self
            .kot_entry(td.hkid)
            .ok_or(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX))?;
        // Every package with keys configured must write back, not only those that configured
        // this TD's key: WBINVD_BITMAP = the platform's pkg_config_bitmap (intel/tdx-module
        // `src/vmm_dispatcher/api_calls/tdh_mng_vpflushdone.c`).
        kot.wb_pending.store(
            self.sys.key_config_pkgs.load(Ordering::Acquire),
            Ordering::Release,
        );
        kot.state.store(KotState::Flushed as u8, Ordering::Release);
        td.lifecycle
            .store(Lifecycle::Blocked as u8, Ordering::Release);
        Ok(TdxStatus::SUCCESS)
    }

    /// TDH.PHYMEM.CACHE.WB on the caller's package (intel/tdx-module
    /// `src/vmm_dispatcher/api_calls/tdh_phymem_cache_wb.c`), in the source's order:
    /// * RCX above 1 (resume): OPERAND_INVALID on RCX, before any lock;
    /// * the package's WBT mutex, then the KOT lock *shared*: OPERAND_BUSY on WBCACHE / KOT;
    /// * start (RCX = 0): drops any saved interruption point and records which KOT entries
    ///   are FLUSHED now; none: TDX_NO_HKID_READY_TO_WBCACHE (a warning, nothing recorded);
    /// * resume (RCX = 1) without a saved interruption point: TDX_WBCACHE_RESUME_ERROR;
    /// * writes back sub-blocks; with a host interrupt pending, after any but the last one it
    ///   saves the next sub-block and answers TDX_INTERRUPTED_RESUMABLE;
    /// * done: clears this package's bit in the WBINVD bitmap of the entries recorded at the
    ///   start (not those flushed since), SUCCESS.
    pub(super) fn leaf_phymem_cache_wb(
        &self,
        lp: u32,
        r: &mut Regs,
        host_interrupt: bool,
    ) -> LeafResult {
        if r.rcx > CACHEWB_RESUME_CMD {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX));
        }
        let pkg = self.package_of(lp);
        let wbt = self
            .wbt
            .get(pkg as usize)
            .ok_or(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX))?;
        let _w = wbt
            .lock
            .try_lock(LockMode::Exclusive)
            .ok_or(TdxStatus::OPERAND_BUSY.with_operand(OperandId::WBCACHE))?;
        let _kot = self
            .kot_lock
            .try_lock(LockMode::Shared)
            .ok_or(TdxStatus::OPERAND_BUSY.with_operand(OperandId::KOT))?;
        let mut st = wbt.state.lock();
        let mut point = if r.rcx == CACHEWB_START_CMD {
            st.intr_point = 0;
            let flushed: Vec<bool> = self
                .kot
                .iter()
                .map(|e| e.state.load(Ordering::Acquire) == KotState::Flushed as u8)
                .collect();
            if !flushed.contains(&true) {
                return Ok(TdxStatus::NO_HKID_READY_TO_WBCACHE);
            }
            st.hkid_flushed = flushed;
            0
        } else {
            if st.intr_point == 0 {
                return Err(TdxStatus::WBCACHE_RESUME_ERROR);
            }
            st.intr_point
        };
        loop {
            point += 1;
            if point >= CACHE_SUB_BLOCKS {
                break;
            }
            if host_interrupt {
                st.intr_point = point;
                return Err(TdxStatus::INTERRUPTED_RESUMABLE);
            }
        }
        st.intr_point = 0;
        let bit = 1u64 << pkg;
        for (e, _) in self.kot.iter().zip(&st.hkid_flushed).filter(|(_, f)| **f) {
            e.wb_pending.fetch_and(!bit, Ordering::AcqRel);
        }
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mng_key_freeid(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rcx, LockMode::Exclusive, OperandId::RCX)?;
        if td.lifecycle() != Lifecycle::Blocked {
            return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
        }
        let _kot = self
            .kot_lock
            .try_lock(LockMode::Exclusive)
            .ok_or(TdxStatus::OPERAND_BUSY.with_operand(OperandId::KOT))?;
        let kot = self
            .kot_entry(td.hkid)
            .ok_or(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX))?;
        if kot.wb_pending.load(Ordering::Acquire) != 0 {
            return Err(TdxStatus::WBCACHE_NOT_COMPLETE);
        }
        kot.state.store(KotState::Free as u8, Ordering::Release);
        td.lifecycle
            .store(Lifecycle::Teardown as u8, Ordering::Release);
        Ok(TdxStatus::SUCCESS)
    }

    /// TDH.PHYMEM.PAGE.RECLAIM (intel/tdx-module
    /// `src/vmm_dispatcher/api_calls/tdh_phymem_page_reclaim.c`): RCX, RDX, R8 and the
    /// reserved R9–R11 are cleared first; once the page's PAMT entry is locked and is neither
    /// NDA nor reserved, RCX = its page type, RDX = its owner, R8 = its PAMT size, and they
    /// stay so on every later error (misaligned large page, TDR busy, lifecycle not
    /// TEARDOWN, a TDR with children) as on success.
    pub(super) fn leaf_phymem_page_reclaim(&self, r: &mut Regs) -> LeafResult {
        let page_in = r.rcx;
        (r.rcx, r.rdx, r.r8, r.r9, r.r10, r.r11) = (0, 0, 0, 0, 0, 0);
        let hpa = self.check_page_hpa(page_in, OperandId::RCX)?;
        let first = self
            .pamt
            .lock_pages(hpa, 1, LockMode::Exclusive)
            .map_err(|e| e.with_operand(OperandId::RCX))?;
        let meta = first.meta();
        if matches!(meta.page_type, PageType::Nda | PageType::Rsvd) {
            return Err(TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::RCX));
        }
        r.rcx = meta.page_type.raw();
        r.rdx = meta.owner.0;
        r.r8 = meta.size.raw();
        let pages = meta.size.pages_4k();
        if !hpa.is_multiple_of(pages * 4096) {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX));
        }
        let rest = if pages > 1 {
            Some(
                self.pamt
                    .lock_pages(hpa + 4096, pages - 1, LockMode::Exclusive)
                    .map_err(|e| e.with_operand(OperandId::RCX))?,
            )
        } else {
            None
        };
        let td = self
            .tds
            .read()
            .get(&meta.owner.0)
            .cloned()
            .ok_or(TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::RCX))?;
        // The owner's TDR lock (the TDR page itself is already held for a TDR reclaim).
        let _tdr_lock = if meta.page_type == PageType::Tdr {
            None
        } else {
            Some(
                self.pamt
                    .lock_pages(td.tdr, 1, LockMode::Shared)
                    .map_err(|e| e.with_operand(OperandId::TDR))?,
            )
        };
        if td.lifecycle() != Lifecycle::Teardown {
            return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
        }
        if meta.page_type == PageType::Tdr && td.chldcnt.load(Ordering::Acquire) != 0 {
            return Err(TdxStatus::TD_ASSOCIATED_PAGES_EXIST);
        }
        first.set_all(PamtMeta::FREE);
        if let Some(rest) = &rest {
            rest.set_all(PamtMeta::FREE);
        }
        match meta.page_type {
            PageType::Tdr => {
                self.tds.write().remove(&hpa);
            }
            PageType::Tdvpr => {
                self.vcpus.write().remove(&hpa);
                td.vcpus.lock().retain(|&v| v != hpa);
            }
            PageType::Ept => {
                if let Some(tree) = td.tree.get() {
                    tree.remove_table(hpa);
                }
            }
            _ => {}
        }
        // A child page takes its 4 KiB pages off TDR.CHLDCNT, 1 << (9 * PAMT level): 512 for
        // a 2 MiB page (intel/tdx-module `src/vmm_dispatcher/api_calls/tdh_phymem_page_reclaim.c`).
        if meta.page_type != PageType::Tdr {
            td.chldcnt.fetch_sub(pages, Ordering::AcqRel);
        }
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_phymem_page_wbinvd(&self, r: &mut Regs) -> LeafResult {
        let shift = self.cfg.hkid_shift;
        let hpa = r.rcx & ((1u64 << shift) - 1);
        let hkid = r.rcx >> shift;
        if hpa & 0xFFF != 0 || hkid > u64::from(u16::MAX) {
            return Err(TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX));
        }
        let page = self
            .pamt
            .lock_pages(hpa, 1, LockMode::Shared)
            .map_err(|e| e.with_operand(OperandId::RCX))?;
        if page.meta().page_type != PageType::Nda {
            return Err(TdxStatus::PAGE_METADATA_INCORRECT.with_operand(OperandId::RCX));
        }
        Ok(TdxStatus::SUCCESS)
    }

    /// TDH.PHYMEM.PAGE.RDMD: RCX = page type, RDX = owner, R8 = size, R9 = BEPOCH.
    pub(super) fn leaf_phymem_page_rdmd(&self, r: &mut Regs) -> LeafResult {
        let hpa = self.check_page_hpa(r.rcx, OperandId::RCX)?;
        let page = self
            .pamt
            .lock_pages(hpa, 1, LockMode::Shared)
            .map_err(|e| e.with_operand(OperandId::RCX))?;
        let meta = page.meta();
        r.rcx = meta.page_type.raw();
        r.rdx = meta.owner.0;
        r.r8 = meta.size.raw();
        r.r9 = page
            .head()
            .map(|h| h.bepoch.load(Ordering::Acquire))
            .unwrap_or(0);
        Ok(TdxStatus::SUCCESS)
    }

    fn td_field(&self, td: &Td, id: u64) -> Result<u64, TdxStatus> {
        let tdcs_needed = || {
            if td.tdcs_count.load(Ordering::Acquire) < self.cfg.limits.tdcs_pages {
                Err(TdxStatus::TDCS_NOT_ALLOCATED)
            } else {
                Ok(())
            }
        };
        let params = || td.cfg.get().map(|c| &c.params);
        Ok(match id {
            tf::LIFECYCLE_STATE => td.lifecycle() as u64,
            tf::HKID => u64::from(td.hkid),
            tf::CHLDCNT => td.chldcnt.load(Ordering::Acquire),
            _ => {
                tdcs_needed()?;
                match id {
                    tf::OP_STATE => td.op_state() as u64,
                    tf::ATTRIBUTES => params().map(|p| p.attributes).unwrap_or(0),
                    tf::XFAM => params().map(|p| p.xfam).unwrap_or(0),
                    tf::MAX_VCPUS => params().map(|p| u64::from(p.max_vcpus)).unwrap_or(0),
                    tf::NUM_VCPUS => u64::from(td.num_vcpus.load(Ordering::Acquire)),
                    tf::TD_EPOCH => td.td_epoch.load(Ordering::Acquire),
                    tf::EPTP_CONTROLS => params().map(|p| p.eptp_controls).unwrap_or(0),
                    tf::TSC_FREQUENCY => params().map(|p| u64::from(p.tsc_frequency)).unwrap_or(0),
                    // The software module's TDs read the host's TSC as it is: offset 0,
                    // multiplier 1.0 in the module's 16.48 fixed point.
                    tf::TSC_OFFSET => 0,
                    tf::TSC_MULTIPLIER => 1 << 48,
                    tf::HOST_SCRATCH => td.notify_enables.load(Ordering::Acquire),
                    _ => td.measurement_element(id).ok_or(
                        TdxStatus::METADATA_FIELD_ID_INCORRECT.with_operand(OperandId::RDX),
                    )?,
                }
            }
        })
    }

    pub(super) fn leaf_mng_rd(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rcx, LockMode::Shared, OperandId::RCX)?;
        r.r8 = self.td_field(&td, r.rdx)?;
        Ok(TdxStatus::SUCCESS)
    }

    pub(super) fn leaf_mng_wr(&self, r: &mut Regs) -> LeafResult {
        let (td, _l) = self.lock_tdr(r.rcx, LockMode::Exclusive, OperandId::RCX)?;
        if td.lifecycle() != Lifecycle::KeysConfigured {
            return Err(TdxStatus::LIFECYCLE_STATE_INCORRECT);
        }
        let old = self.td_field(&td, r.rdx)?;
        if r.rdx != tf::HOST_SCRATCH {
            return Err(TdxStatus::METADATA_FIELD_NOT_WRITABLE.with_operand(OperandId::RDX));
        }
        let new = (old & !r.r9) | (r.r8 & r.r9);
        td.notify_enables.store(new, Ordering::Release);
        r.r8 = old;
        Ok(TdxStatus::SUCCESS)
    }

    fn vcpu_field(&self, v: &Vcpu, id: u64) -> Result<u64, TdxStatus> {
        Ok(match id {
            vf::VCPU_STATE => u64::from(v.initialized.load(Ordering::Acquire)),
            // Bit 0, VMXIP: a deliverable virtual interrupt waits (the declared-workload
            // engine has none).
            vf::VCPU_STATE_DETAILS => u64::from(
                v.svm
                    .lock()
                    .as_ref()
                    .is_some_and(|s| s.virtual_interrupt_pending()),
            ),
            vf::VCPU_INDEX => u64::from(v.index()),
            vf::VCPU_EPOCH => v.epoch.load(Ordering::Acquire),
            vf::ASSOCIATED_LP => v.assoc_lp.load(Ordering::Acquire),
            vf::INIT_RCX => v.init_rcx.load(Ordering::Acquire),
            vf::X2APIC_ID => v.x2apic.load(Ordering::Acquire),
            vf::GUEST_RIP => v.guest.lock().rip(),
            vf::ZERO_STEP_COUNT => u64::from(v.guest.lock().zero_step_count()),
            vf::HOST_SCRATCH => v.scratch.load(Ordering::Acquire),
            vf::SHARED_EPTP => v.shared_eptp.load(Ordering::Acquire),
            vf::POSTED_INTR_NV => v.posted_nv.load(Ordering::Acquire),
            vf::POSTED_INTR_DESC_ADDR => v.posted_desc.load(Ordering::Acquire),
            // Production read mask 0x80 (`td_vmcs_fields_lookup.c`).
            vf::PIN_BASED_CONTROLS => {
                v.pin_based.load(Ordering::Acquire) & vf::PIN_BASED_POSTED_INTERRUPTS
            }
            _ => {
                return Err(TdxStatus::METADATA_FIELD_ID_INCORRECT.with_operand(OperandId::RDX));
            }
        })
    }

    /// TDH.VP.RD (intel/tdx-module `src/vmm_dispatcher/api_calls/tdh_vp_rd_wr.c`): TDVPR
    /// shared, then `check_and_associate_vcpu`, then the field. The software module's own
    /// read-only hooks ([`software_only_hook`]) skip the association, so a test can look at a
    /// vCPU without moving it.
    pub(super) fn leaf_vp_rd(&self, lp: u32, r: &mut Regs) -> LeafResult {
        let (vcpu, _v, _t) = self.lock_tdvpr(r.rcx, LockMode::Shared, OperandId::RCX)?;
        if !software_only_hook(r.rdx) {
            check_and_associate(&vcpu, lp, true)?;
        }
        r.r8 = self.vcpu_field(&vcpu, r.rdx)?;
        Ok(TdxStatus::SUCCESS)
    }

    /// TDH.VP.WR: as TDH.VP.RD (the source takes the TDVPR shared for both), then the
    /// field's write mask.
    pub(super) fn leaf_vp_wr(&self, lp: u32, r: &mut Regs) -> LeafResult {
        let (vcpu, _v, _t) = self.lock_tdvpr(r.rcx, LockMode::Shared, OperandId::RCX)?;
        check_and_associate(&vcpu, lp, false)?;
        let old = self.vcpu_field(&vcpu, r.rdx)?;
        // `md_vp_write_element` (intel/tdx-module `src/common/metadata_handlers/
        // metadata_vp.c`) with the production write masks of `td_vmcs_fields_lookup.c`: no
        // writable bit in the request is METADATA_FIELD_NOT_WRITABLE; an initial NULL_PA keeps
        // only the writable bits; a request that changes a bit outside the field's mask is
        // METADATA_FIELD_VALUE_NOT_VALID (`md_check_forbidden_bits_unchanged`); then the
        // field's special handling.
        let field_mask = match r.rdx {
            vf::HOST_SCRATCH => u64::MAX,
            vf::SHARED_EPTP => 0x000F_FFFF_FFFF_F000,
            vf::POSTED_INTR_NV => 0xFFFF,
            vf::POSTED_INTR_DESC_ADDR => !0x3F,
            vf::PIN_BASED_CONTROLS => vf::PIN_BASED_POSTED_INTERRUPTS,
            // Readable only (production write mask 0).
            _ => 0,
        };
        let mask = field_mask & r.r9;
        if mask == 0 {
            return Err(TdxStatus::METADATA_FIELD_NOT_WRITABLE);
        }
        let current = if r.rdx == vf::POSTED_INTR_DESC_ADDR && old == u64::MAX {
            old & mask
        } else {
            old
        };
        let forbidden = r.r9 & !field_mask;
        if current & forbidden != r.r8 & forbidden {
            return Err(TdxStatus::METADATA_FIELD_VALUE_NOT_VALID);
        }
        let new = (current & !mask) | (r.r8 & mask);
        match r.rdx {
            vf::HOST_SCRATCH => vcpu.scratch.store(new, Ordering::Release),
            // The host's shared EPT root (bits 51:12; the module supplies the rest).
            vf::SHARED_EPTP => vcpu.shared_eptp.store(new, Ordering::Release),
            // Posted interrupts: NV at most 255; the descriptor a shared HPA, i.e. without
            // KeyID bits; the pin-based control only once both others were written.
            vf::POSTED_INTR_NV => {
                if new > 0xFF {
                    return Err(TdxStatus::METADATA_FIELD_VALUE_NOT_VALID);
                }
                vcpu.posted_nv.store(new, Ordering::Release);
            }
            vf::POSTED_INTR_DESC_ADDR => {
                if new >> self.cfg.hkid_shift != 0 {
                    return Err(TdxStatus::METADATA_FIELD_VALUE_NOT_VALID);
                }
                vcpu.posted_desc.store(new, Ordering::Release);
            }
            _ => {
                if new & vf::PIN_BASED_POSTED_INTERRUPTS != 0 {
                    if vcpu.posted_nv.load(Ordering::Acquire) == POSTED_NV_INIT {
                        return Err(TdxStatus::TD_VMCS_FIELD_NOT_INITIALIZED
                            .with_operand(OperandId(0x0002)));
                    }
                    if vcpu.posted_desc.load(Ordering::Acquire) == u64::MAX {
                        return Err(TdxStatus::TD_VMCS_FIELD_NOT_INITIALIZED
                            .with_operand(OperandId(0x2016)));
                    }
                }
                vcpu.pin_based.store(new, Ordering::Release);
            }
        }
        r.r8 = old;
        Ok(TdxStatus::SUCCESS)
    }
}
