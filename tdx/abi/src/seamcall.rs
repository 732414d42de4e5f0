//! The SEAMCALL seam: one raw trait implemented by the hardware backend and by the software
//! TDX module, and typed wrappers on top of it ([`TdxModule`]).
//!
//! The raw convention follows the TDX module 1.5 ABI (`tdx_api_defs.h`, Linux
//! `arch/x86/virt/vmx/tdx/tdx.c`): RAX carries the leaf (bits 15:0) and version (bits 23:16) in
//! and the completion status out; RCX, RDX, R8–R15 carry operands and outputs. On S-EPT errors
//! the module returns the S-EPT entry in RCX and level/state in RDX.

use crate::{
    Gpa, Hkid, Hpa, Leaf, OperandId, PageLevel, SeptLevelState, TdxStatus, gpa_level_operand,
};

/// General-purpose registers exchanged with the module. Most leaves use RAX, RCX, RDX and
/// R8–R15; TDH.VP.ENTER also returns the guest's RBX, RSI and RDI after a TDVMCALL that
/// exposes them (and takes them back on the next entry). `repr(C)`: the hardware backend
/// loads and stores the fields by offset.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(C)]
#[allow(missing_docs)] // register names
pub struct Regs {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rbx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
}

impl Regs {
    /// Registers for `leaf` at `version`, all operands zero.
    pub const fn for_leaf(leaf: Leaf, version: u8) -> Regs {
        Regs {
            rax: leaf.number() as u64 | (version as u64) << 16,
            rcx: 0,
            rdx: 0,
            r8: 0,
            r9: 0,
            r10: 0,
            r11: 0,
            r12: 0,
            r13: 0,
            r14: 0,
            r15: 0,
            rbx: 0,
            rsi: 0,
            rdi: 0,
            rbp: 0,
        }
    }
}

/// The registers the next TDH.VP.ENTER hands the module after a TDVMCALL exit. The module
/// copies each register the guest exposed (its RCX mask) into the guest, so a host passes
/// back the values the exit delivered, with R10 the GHCI status, R11 the returned value and
/// R12–R15 changed only by sub-functions that return more (Instruction.CPUID,
/// GetTdVmCallInfo). KVM does the same: its TDH.VP.ENTER arguments are the previous exit's
/// outputs, updated by the TDVMCALL handler (Linux `arch/x86/kvm/vmx/tdx.c`, `vp_enter_args`),
/// and the module copies back exactly the guest-selected RDX–R15 (TDX module 1.5
/// `tdh_vp_enter.c`; RBP too, which the host does not forbid: it leaves NO_RBP_MOD clear,
/// `tdg_vp_vmcall.c`);
/// guests rely on it (TDVF's relocated mailbox loop keeps the mailbox address in RBX across
/// a TDVMCALL that exposes RBX).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // register names
pub struct TdvmcallAnswer {
    pub rdx: u64,
    pub rbx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

impl TdvmcallAnswer {
    /// The registers a TDVMCALL exit delivered (`exit`, the TDH.VP.ENTER outputs), to be
    /// handed back with the host's results.
    pub const fn echo(exit: &Regs) -> TdvmcallAnswer {
        TdvmcallAnswer {
            rdx: exit.rdx,
            rbx: exit.rbx,
            rsi: exit.rsi,
            rdi: exit.rdi,
            rbp: exit.rbp,
            r8: exit.r8,
            r9: exit.r9,
            r10: exit.r10,
            r11: exit.r11,
            r12: exit.r12,
            r13: exit.r13,
            r14: exit.r14,
            r15: exit.r15,
        }
    }
}

/// Which implementation is behind a [`Seamcall`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ModuleKind {
    /// The real TDX module, reached with the `seamcall` instruction.
    Hardware,
    /// The software TDX module (crate `tdx-emu`).
    Emulated,
}

impl ModuleKind {
    /// `hardware` or `emulated`, as the API reports it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ModuleKind::Hardware => "hardware",
            ModuleKind::Emulated => "emulated",
        }
    }
}

/// One SEAMCALL, raw. Implementations must be callable from many CPUs at once: the module
/// itself serializes with try-locks and answers `TDX_OPERAND_BUSY` instead of waiting.
pub trait Seamcall: Send + Sync {
    /// Issues the SEAMCALL described by `regs` (RAX = leaf | version << 16) and leaves the
    /// module's outputs in `regs` (RAX = completion status).
    fn seamcall(&self, regs: &mut Regs);

    /// Which implementation this is.
    fn kind(&self) -> ModuleKind;

    /// Bit position of the HKID in a keyed physical address (`pa | hkid << shift`), i.e. the
    /// CPU's reduced MAXPHYADDR.
    fn hkid_shift(&self) -> u32;
}

/// A SEAMCALL that did not succeed: the leaf, the raw status and the registers the module uses
/// to explain S-EPT errors.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[error("{} failed: {status}", leaf.name())]
pub struct SeamError {
    /// Which leaf failed.
    pub leaf: Leaf,
    /// The raw completion status (operand ID in the low 32 bits).
    pub status: TdxStatus,
    /// RCX out: the S-EPT entry for S-EPT errors, else leaf-specific detail.
    pub rcx: u64,
    /// RDX out: level/state for S-EPT errors, else leaf-specific detail.
    pub rdx: u64,
}

impl SeamError {
    /// A try-lock in the module failed; the call may be retried.
    pub const fn is_busy(&self) -> bool {
        self.status.is_busy()
    }
    /// The operand the status names.
    pub const fn operand(&self) -> OperandId {
        self.status.operand()
    }
    /// For S-EPT class errors (class 0x0B), the level and state of the offending entry.
    pub const fn sept_level_state(&self) -> Option<SeptLevelState> {
        if self.status.class() == 0x0B {
            Some(SeptLevelState(self.rdx))
        } else {
            None
        }
    }
}

/// What TDH.PHYMEM.PAGE.RECLAIM reports about the page it gave back.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ReclaimedPage {
    /// PAMT page type the page had (`PT_*`).
    pub page_type: u64,
    /// Owner TDR HPA.
    pub owner: Hpa,
    /// PAMT page size (0 = 4K, 1 = 2M, 2 = 1G).
    pub size: u64,
}

impl ReclaimedPage {
    /// Decodes RCX/RDX/R8 of PHYMEM.PAGE.RECLAIM or PHYMEM.PAGE.RDMD.
    fn from_regs(out: Regs) -> ReclaimedPage {
        ReclaimedPage {
            page_type: out.rcx,
            owner: Hpa(out.rdx),
            size: out.r8,
        }
    }
}

/// Calls version 0 of `leaf` on `module` with the given RCX, RDX and R8 (the other inputs
/// zero).
fn call_leaf<M: TdxModule + ?Sized>(
    module: &M,
    leaf: Leaf,
    rcx: u64,
    rdx: u64,
    r8: u64,
) -> Result<Regs, SeamError> {
    let mut r = Regs::for_leaf(leaf, 0);
    r.rcx = rcx;
    r.rdx = rdx;
    r.r8 = r8;
    module.call(r)
}

/// MNG.WR / VP.WR on `module`: writes `value` under `mask` to `field` of the TDR or TDVPR
/// `owner`; returns the old value (R8).
fn write_field<M: TdxModule + ?Sized>(
    module: &M,
    leaf: Leaf,
    owner: Hpa,
    field: u64,
    value: u64,
    mask: u64,
) -> Result<u64, SeamError> {
    let mut r = Regs::for_leaf(leaf, 0);
    r.rcx = owner.0;
    r.rdx = field;
    r.r8 = value;
    r.r9 = mask;
    module.call(r).map(|out| out.r8)
}

/// Calls an S-EPT leaf on `module`: the GPA+level operand in RCX, the TDR in RDX, and `r8`
/// (a page HPA, or 0 where the leaf takes none).
fn sept_call<M: TdxModule + ?Sized>(
    module: &M,
    leaf: Leaf,
    tdr: Hpa,
    gpa: Gpa,
    level: PageLevel,
    r8: u64,
) -> Result<Regs, SeamError> {
    call_leaf(module, leaf, gpa_level_operand(gpa, level), tdr.0, r8)
}

/// Typed wrappers for the host leaves. Implemented for every [`Seamcall`]; each returns the
/// leaf's outputs or a [`SeamError`] carrying the raw status and the explanatory registers.
pub trait TdxModule: Seamcall {
    /// Issues `regs` for `leaf` and turns an error status into [`SeamError`]. Informational
    /// statuses (bit 63 clear) count as success; callers that care read `regs.rax`.
    fn call(&self, mut regs: Regs) -> Result<Regs, SeamError> {
        let leaf = Leaf::from_number((regs.rax & 0xFFFF) as u16).unwrap_or(Leaf::SysInfo);
        self.seamcall(&mut regs);
        let status = TdxStatus(regs.rax);
        if status.is_error() {
            Err(SeamError {
                leaf,
                status,
                rcx: regs.rcx,
                rdx: regs.rdx,
            })
        } else {
            Ok(regs)
        }
    }

    /// TDH.MEM.PAGE.ADD: add a 4 KiB page to a TD before finalize, copying `source` (a shared
    /// page) into `page`, and extend MRTD with the GPA.
    fn mem_page_add(&self, tdr: Hpa, gpa: Gpa, page: Hpa, source: Hpa) -> Result<(), SeamError> {
        let mut r = Regs::for_leaf(Leaf::MemPageAdd, 0);
        r.rcx = gpa_level_operand(gpa, PageLevel::L4K);
        r.rdx = tdr.0;
        r.r8 = page.0;
        r.r9 = source.0;
        self.call(r).map(drop)
    }

    /// TDH.MEM.SEPT.ADD: install `sept_page` as the table under the entry for `gpa` at `level`
    /// (the level of the non-leaf entry: 1 = the 2 MiB entry pointing to a page table, up to
    /// 4 with 5-level EPT).
    fn mem_sept_add(
        &self,
        tdr: Hpa,
        gpa: Gpa,
        level: PageLevel,
        sept_page: Hpa,
    ) -> Result<(), SeamError> {
        sept_call(self, Leaf::MemSeptAdd, tdr, gpa, level, sept_page.0).map(drop)
    }

    /// TDH.MEM.PAGE.AUG: add `page` at `gpa`/`level` (4 KiB or 2 MiB) in PENDING state after
    /// finalize; the guest must accept it.
    fn mem_page_aug(
        &self,
        tdr: Hpa,
        gpa: Gpa,
        level: PageLevel,
        page: Hpa,
    ) -> Result<(), SeamError> {
        sept_call(self, Leaf::MemPageAug, tdr, gpa, level, page.0).map(drop)
    }

    /// TDH.MEM.RANGE.BLOCK: block the entry for `gpa` at `level` (records BEPOCH).
    fn mem_range_block(&self, tdr: Hpa, gpa: Gpa, level: PageLevel) -> Result<(), SeamError> {
        sept_call(self, Leaf::MemRangeBlock, tdr, gpa, level, 0).map(drop)
    }

    /// TDH.MEM.RANGE.UNBLOCK: unblock a blocked entry (tracking must be done).
    fn mem_range_unblock(&self, tdr: Hpa, gpa: Gpa, level: PageLevel) -> Result<(), SeamError> {
        sept_call(self, Leaf::MemRangeUnblock, tdr, gpa, level, 0).map(drop)
    }

    /// TDH.MEM.TRACK: advance the TD's TLB epoch.
    fn mem_track(&self, tdr: Hpa) -> Result<(), SeamError> {
        call_leaf(self, Leaf::MemTrack, tdr.0, 0, 0).map(drop)
    }

    /// TDH.MEM.PAGE.REMOVE: remove a (blocked and tracked, if the TD can run) leaf at
    /// `gpa`/`level` (4 KiB, 2 MiB or 1 GiB).
    fn mem_page_remove(&self, tdr: Hpa, gpa: Gpa, level: PageLevel) -> Result<(), SeamError> {
        sept_call(self, Leaf::MemPageRemove, tdr, gpa, level, 0).map(drop)
    }

    /// TDH.MEM.PAGE.DEMOTE: split the leaf at `gpa`/`level` (2 MiB or 1 GiB) into 512 entries
    /// of the next level, using `sept_page` as the new table.
    fn mem_page_demote(
        &self,
        tdr: Hpa,
        gpa: Gpa,
        level: PageLevel,
        sept_page: Hpa,
    ) -> Result<(), SeamError> {
        sept_call(self, Leaf::MemPageDemote, tdr, gpa, level, sept_page.0).map(drop)
    }

    /// TDH.MEM.PAGE.PROMOTE: merge the 512 uniform children under the non-leaf entry at
    /// `gpa`/`level` into one leaf; returns the S-EPT page that is no longer used.
    fn mem_page_promote(&self, tdr: Hpa, gpa: Gpa, level: PageLevel) -> Result<Hpa, SeamError> {
        // The module returns the freed S-EPT page in RCX (`tdh_mem_page_promote.c`); the low
        // 12 bits may carry a Dynamic-PAMT hint on newer modules.
        sept_call(self, Leaf::MemPagePromote, tdr, gpa, level, 0)
            .map(|out| Hpa(out.rcx & crate::sept::entry_bits::HPA_MASK))
    }

    /// TDH.MEM.SEPT.REMOVE: remove an empty, blocked, tracked S-EPT page from the non-leaf
    /// entry at `gpa`/`level`; returns the page's HPA.
    fn mem_sept_remove(&self, tdr: Hpa, gpa: Gpa, level: PageLevel) -> Result<Hpa, SeamError> {
        // The module returns the removed S-EPT page in RCX (`tdh_mem_sept_remove.c`).
        sept_call(self, Leaf::MemSeptRemove, tdr, gpa, level, 0)
            .map(|out| Hpa(out.rcx & crate::sept::entry_bits::HPA_MASK))
    }

    /// TDH.MEM.SEPT.RD: read the S-EPT entry for `gpa` at `level`; returns the architectural
    /// entry and its level/state.
    fn mem_sept_rd(
        &self,
        tdr: Hpa,
        gpa: Gpa,
        level: PageLevel,
    ) -> Result<(u64, SeptLevelState), SeamError> {
        sept_call(self, Leaf::MemSeptRd, tdr, gpa, level, 0)
            .map(|out| (out.rcx, SeptLevelState(out.rdx)))
    }

    /// TDH.PHYMEM.PAGE.WBINVD: write back and invalidate the cache lines of `page` under
    /// `hkid` (the page must already be free in PAMT, i.e. removed).
    fn phymem_page_wbinvd(&self, page: Hpa, hkid: Hkid) -> Result<(), SeamError> {
        let rcx = page.0 | u64::from(hkid.0) << self.hkid_shift();
        call_leaf(self, Leaf::PhymemPageWbinvd, rcx, 0, 0).map(drop)
    }

    /// TDH.PHYMEM.PAGE.RECLAIM: take back a page of a TD in TEARDOWN.
    fn phymem_page_reclaim(&self, page: Hpa) -> Result<ReclaimedPage, SeamError> {
        call_leaf(self, Leaf::PhymemPageReclaim, page.0, 0, 0).map(ReclaimedPage::from_regs)
    }

    // ----- platform -----

    /// TDH.SYS.INIT (once per platform).
    fn sys_init(&self) -> Result<(), SeamError> {
        self.call(Regs::for_leaf(Leaf::SysInit, 0)).map(drop)
    }

    /// TDH.SYS.LP.INIT (once on every logical processor; issue it on that LP).
    fn sys_lp_init(&self) -> Result<(), SeamError> {
        self.call(Regs::for_leaf(Leaf::SysLpInit, 0)).map(drop)
    }

    /// TDH.SYS.RD: one global metadata field (`abi::metadata::sys`).
    fn sys_rd(&self, field: u64) -> Result<u64, SeamError> {
        call_leaf(self, Leaf::SysRd, 0, field, 0).map(|out| out.r8)
    }

    /// TDH.SYS.CONFIG: `tdmr_array` is the HPA of an array of `count` TDMR_INFO HPAs (each
    /// 512-byte aligned), `global_hkid` the KeyID the module uses for its own structures.
    fn sys_config(&self, tdmr_array: Hpa, count: u64, global_hkid: Hkid) -> Result<(), SeamError> {
        let hkid = u64::from(global_hkid.0);
        call_leaf(self, Leaf::SysConfig, tdmr_array.0, count, hkid).map(drop)
    }

    /// TDH.SYS.KEY.CONFIG (once per package, on an LP of that package).
    fn sys_key_config(&self) -> Result<(), SeamError> {
        self.call(Regs::for_leaf(Leaf::SysKeyConfig, 0)).map(drop)
    }

    /// TDH.SYS.TDMR.INIT: initializes part of the TDMR at `tdmr_base`; returns the next
    /// address to initialize (call until it reaches the TDMR's end).
    fn sys_tdmr_init(&self, tdmr_base: Hpa) -> Result<Hpa, SeamError> {
        call_leaf(self, Leaf::SysTdmrInit, tdmr_base.0, 0, 0).map(|out| Hpa(out.rdx))
    }

    // ----- TD and vCPU management -----

    /// TDH.MNG.CREATE: make `tdr` the TDR of a new TD using `hkid`.
    fn mng_create(&self, tdr: Hpa, hkid: Hkid) -> Result<(), SeamError> {
        call_leaf(self, Leaf::MngCreate, tdr.0, u64::from(hkid.0), 0).map(drop)
    }

    /// TDH.MNG.KEY.CONFIG (once per package). Returns the raw status, which is
    /// `TDX_KEY_CONFIGURED` (informational) if this package was already done.
    fn mng_key_config(&self, tdr: Hpa) -> Result<TdxStatus, SeamError> {
        call_leaf(self, Leaf::MngKeyConfig, tdr.0, 0, 0).map(|out| TdxStatus(out.rax))
    }

    /// TDH.MNG.ADDCX: add a TDCS page.
    fn mng_addcx(&self, tdr: Hpa, page: Hpa) -> Result<(), SeamError> {
        call_leaf(self, Leaf::MngAddCx, page.0, tdr.0, 0).map(drop)
    }

    /// TDH.MNG.INIT with the 1024-byte TD_PARAMS at `td_params` (1024-byte aligned).
    fn mng_init(&self, tdr: Hpa, td_params: Hpa) -> Result<(), SeamError> {
        call_leaf(self, Leaf::MngInit, tdr.0, td_params.0, 0).map(drop)
    }

    /// TDH.MNG.RD: one TD metadata field.
    fn mng_rd(&self, tdr: Hpa, field: u64) -> Result<u64, SeamError> {
        call_leaf(self, Leaf::MngRd, tdr.0, field, 0).map(|out| out.r8)
    }

    /// TDH.MNG.WR: writes `value` under `mask`; returns the old value.
    fn mng_wr(&self, tdr: Hpa, field: u64, value: u64, mask: u64) -> Result<u64, SeamError> {
        write_field(self, Leaf::MngWr, tdr, field, value, mask)
    }

    /// TDH.VP.CREATE: make `tdvpr` a vCPU of the TD.
    fn vp_create(&self, tdr: Hpa, tdvpr: Hpa) -> Result<(), SeamError> {
        call_leaf(self, Leaf::VpCreate, tdvpr.0, tdr.0, 0).map(drop)
    }

    /// TDH.VP.ADDCX: add a TDCX page to a vCPU.
    fn vp_addcx(&self, tdvpr: Hpa, page: Hpa) -> Result<(), SeamError> {
        call_leaf(self, Leaf::VpAddCx, page.0, tdvpr.0, 0).map(drop)
    }

    /// TDH.VP.INIT version 1 (as upstream Linux): initial guest RCX and x2APIC ID.
    fn vp_init(&self, tdvpr: Hpa, initial_rcx: u64, x2apic_id: u32) -> Result<(), SeamError> {
        let mut r = Regs::for_leaf(Leaf::VpInit, 1);
        r.rcx = tdvpr.0;
        r.rdx = initial_rcx;
        r.r8 = u64::from(x2apic_id);
        self.call(r).map(drop)
    }

    /// TDH.VP.RD: one vCPU metadata field.
    fn vp_rd(&self, tdvpr: Hpa, field: u64) -> Result<u64, SeamError> {
        call_leaf(self, Leaf::VpRd, tdvpr.0, field, 0).map(|out| out.r8)
    }

    /// TDH.VP.WR: writes `value` under `mask`; returns the old value.
    fn vp_wr(&self, tdvpr: Hpa, field: u64, value: u64, mask: u64) -> Result<u64, SeamError> {
        write_field(self, Leaf::VpWr, tdvpr, field, value, mask)
    }

    /// TDH.VP.ENTER. `answer` is the host's answer to the vCPU's previous TDVMCALL exit
    /// (the module copies the registers the guest selected; ignored after other exits).
    /// Returns the exit's output registers (see [`crate::exit`]).
    fn vp_enter(&self, tdvpr: Hpa, answer: &TdvmcallAnswer) -> Result<Regs, SeamError> {
        let mut r = Regs::for_leaf(Leaf::VpEnter, 0);
        r.rcx = tdvpr.0;
        r.rdx = answer.rdx;
        r.rbx = answer.rbx;
        r.rsi = answer.rsi;
        r.rdi = answer.rdi;
        r.rbp = answer.rbp;
        r.r8 = answer.r8;
        r.r9 = answer.r9;
        r.r10 = answer.r10;
        r.r11 = answer.r11;
        r.r12 = answer.r12;
        r.r13 = answer.r13;
        r.r14 = answer.r14;
        r.r15 = answer.r15;
        self.call(r)
    }

    /// TDH.VP.FLUSH (on the LP the vCPU last ran on).
    fn vp_flush(&self, tdvpr: Hpa) -> Result<(), SeamError> {
        call_leaf(self, Leaf::VpFlush, tdvpr.0, 0, 0).map(drop)
    }

    // ----- measurement -----

    /// TDH.MR.EXTEND of the 256-byte chunk at `gpa`.
    fn mr_extend(&self, tdr: Hpa, gpa: Gpa) -> Result<(), SeamError> {
        call_leaf(self, Leaf::MrExtend, gpa.0, tdr.0, 0).map(drop)
    }

    /// TDH.MR.FINALIZE: MRTD is final, the TD becomes RUNNABLE.
    fn mr_finalize(&self, tdr: Hpa) -> Result<(), SeamError> {
        call_leaf(self, Leaf::MrFinalize, tdr.0, 0, 0).map(drop)
    }

    // ----- teardown -----

    /// TDH.MNG.VPFLUSHDONE: every vCPU flushed; the TD is blocked.
    fn mng_vpflushdone(&self, tdr: Hpa) -> Result<(), SeamError> {
        call_leaf(self, Leaf::MngVpFlushDone, tdr.0, 0, 0).map(drop)
    }

    /// TDH.PHYMEM.CACHE.WB on this package (`resume` after `TDX_INTERRUPTED_RESUMABLE`).
    /// Returns the raw status (`TDX_NO_HKID_READY_TO_WBCACHE` is informational).
    fn phymem_cache_wb(&self, resume: bool) -> Result<TdxStatus, SeamError> {
        call_leaf(self, Leaf::PhymemCacheWb, u64::from(resume), 0, 0).map(|out| TdxStatus(out.rax))
    }

    /// TDH.MNG.KEY.FREEID: release the TD's KeyID (after CACHE.WB on every package).
    fn mng_key_freeid(&self, tdr: Hpa) -> Result<(), SeamError> {
        call_leaf(self, Leaf::MngKeyFreeId, tdr.0, 0, 0).map(drop)
    }

    /// TDH.PHYMEM.PAGE.RDMD: the PAMT metadata of `page` (type, owner, size).
    fn phymem_page_rdmd(&self, page: Hpa) -> Result<ReclaimedPage, SeamError> {
        call_leaf(self, Leaf::PhymemPageRdmd, page.0, 0, 0).map(ReclaimedPage::from_regs)
    }
}

impl<T: Seamcall + ?Sized> TdxModule for T {}
