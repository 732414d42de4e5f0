//! TDH.VP.ENTER and the guest side: the vCPU's declared [`Workload`] runs inside VP.ENTER and
//! leaves with real TD exits (module 1.5 `tdh_vp_enter.c`, `td_exit.c`; Linux `arch/x86/kvm/vmx/tdx.c`).
//!
//! Exit ABI (RAX = exit reason; success status bits 63:32 are zero for a TD exit):
//!
//! | exit | RAX | registers |
//! | --- | --- | --- |
//! | external interrupt (kick or emulated timer) | 1 | – |
//! | triple fault (shutdown) | 2 | – |
//! | EPT violation | 48 | RCX exit qualification (bit 0 read, bit 1 write; for ACCEPT bit 1 and bits 5:3 the R/W/X of the S-EPT entry that stopped it), RDX extended exit qualification (bits 3:0 type: 0 normal, 1 ACCEPT, 6 PENDING_EPT_VIOLATION; for ACCEPT bits 63:32 `tdaccept_vmx_eeq_info_t`: 34:32 the requested level, 37:35 the level and 45:38 the state of the entry that stopped it, 46 whether that entry is a leaf), R8 GPA (bits 11:0 clear), R9–R15 0 |
//! | TDCALL (TDVMCALL) | 77 | RCX GPR mask (0xFC00: R10–R15), R10 0 (standard TDVMCALL), R11 subfunction, R12–R15 arguments |
//!
//! TDVMCALL subfunctions: Instruction.HLT (12; R12 = 0), Instruction.IO (30; R12 size 1,
//! R13 direction 1 = out, R14 port 0x3F8, R15 byte), MapGPA (0x10001; R12 GPA with the shared
//! bit set for to-shared, R13 size), ReportFatalError (0x10003; R12 error code).
//! The host answers a TDVMCALL in the *next* VP.ENTER's inputs: R10 = status (0 success,
//! 1 RETRY with R11 = next GPA for MapGPA), R11 = value. EPT-violation exits follow
//! intel/tdx-module 1.5.01: `tdx_ept_violation_exit_to_vmm` (`src/td_dispatcher/vm_exits/
//! td_other_exits.c`) clears exit-qualification bits 12:7 and GPA bits 11:0 and
//! `async_tdexit_internal` (`src/td_transitions/td_exit.c`) puts RAX = TDX_SUCCESS | the VMX
//! exit reason (bits 31:0), RCX = the qualification (bits 33:32 = the VM, 0 here), RDX = the
//! extended qualification, R8 = the GPA, R9 = 0 (no interruption information) and zeroes
//! R10–R15, RBX, RSI, RDI; TDG.MEM.PAGE.ACCEPT's exit is `async_tdexit_ept_violation`
//! (`td_other_exits.c`). Not modelled: the hardware's bits 5:3 for plain violations (always
//! 0: the S-EPT entries a workload faults on are not present).
//!
//! TLB tracking: entry increments the refcount of the current epoch under the epoch lock
//! (shared; `TDX_OPERAND_BUSY | TD_EPOCH` while TDH.MEM.TRACK holds it) and the exit
//! decrements it, so a vCPU inside VP.ENTER keeps pages blocked in its epoch from being
//! removed until it is kicked out. Zero-step mitigation: see [`Stepping`].

use alloc::sync::Arc;
use core::sync::atomic::Ordering;

use super::sept::{self, SeptTree};
use super::td::{Td, Vcpu, check_and_associate, disable_after};
use super::workload::{Access, Order, Step, Workload};
use super::{EmulatedModule, LeafResult, LockMode};
use tdx_abi::seamcall::Regs;
use tdx_abi::td_params::attributes;
use tdx_abi::{Gpa, Hpa, Leaf, OperandId, PageLevel, SeptState, TdxStatus};

pub use tdx_abi::exit;

/// A TDVMCALL waiting for the host's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    None,
    MapGpa,
    Io,
    Halt,
    Fatal,
    Any,
}

/// Per-vCPU guest progress (kept in the TDVPS).
pub struct GuestState {
    workload: Arc<Workload>,
    /// A workload was declared for this vCPU (else it runs its own code when the module has
    /// a guest CPU, or idles).
    declared: bool,
    step: usize,
    unit: u64,
    sub: u64,
    fallback: bool,
    pending: Pending,
    shutdown: bool,
    fatal_code: Option<u64>,
    /// Zero-step tracking (TDVPS fields of the real module).
    pub(crate) stepping: Stepping,
}

/// EPF GPAs the real module remembers per vCPU (`EPF_GPA_LIST_SIZE`, intel/tdx-module
/// `src/common/data_structures/tdx_tdvps.h`).
const EPF_GPA_LIST_SIZE: usize = 32;

/// The zero-step mitigation state of a vCPU, after intel/tdx-module 1.5.01
/// `src/td_transitions/td_exit_stepping.c`:
/// * TDH.VP.ENTER records the guest RIP it enters at (`td_entry_stepping_filter`);
/// * every exit at another RIP (forward progress) clears the count and the GPA list
///   (`vmexit_stepping_filter`, and `td_exit_epf_stepping_log` again);
/// * each EPT-violation TD exit on a private GPA that is not turned into a #VE
///   (`td_ept_violation_exit` in `src/td_dispatcher/vm_exits/td_ept_violation.c`; not the
///   exits of TDG.MEM.PAGE.ACCEPT) raises `possibly_epf_stepping` up to the threshold
///   (`STEPPING_EPF_THRESHOLD` = 6); once there, each further one adds its GPA to the list
///   (up to 32, no duplicates);
/// * while the list is not empty, TDH.VP.ENTER takes the S-EPT tree lock exclusively after
///   the TLB-tracking step (busy: `TDX_OPERAND_BUSY | SEPT_TREE`), and if any listed GPA
///   would still fault (any S-EPT state but MAPPED: `is_epf_expected`, no violation is
///   convertible since every S-EPT entry sets SUPPRESS_VE), does not enter but returns an
///   emulated EPT-violation exit for that GPA (`emulate_ept_violation_td_exit` in
///   `tdh_vp_enter.c`). Mapping the GPA does not clear the list; only progress does.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stepping {
    /// Guest RIP at the last TD entry (`guest_rip_on_tdentry`).
    rip_on_entry: u64,
    /// `possibly_epf_stepping`.
    count: u32,
    /// `last_epf_gpa_list`.
    gpas: alloc::vec::Vec<u64>,
}

impl Stepping {
    /// TD entry at `rip`.
    pub(crate) fn entered(&mut self, rip: u64) {
        self.rip_on_entry = rip;
    }
    /// A VM exit at `rip`: progress since the entry ends the tracking.
    pub(crate) fn exited(&mut self, rip: u64) {
        if rip != self.rip_on_entry {
            self.count = 0;
            self.gpas.clear();
        }
    }
    /// An EPT-violation TD exit at `rip` on private `gpa`, with `threshold` the
    /// STEPPING_EPF_THRESHOLD.
    pub(crate) fn log_epf(&mut self, rip: u64, gpa: u64, threshold: u32) {
        self.exited(rip);
        if self.count < threshold {
            self.count += 1;
        } else if self.gpas.len() < EPF_GPA_LIST_SIZE && !self.gpas.contains(&gpa) {
            self.gpas.push(gpa);
        }
    }
    /// Whether the next TD entry must check the listed GPAs.
    pub(crate) fn armed(&self) -> bool {
        !self.gpas.is_empty()
    }
}

/// Register values of one exit.
#[derive(Default)]
pub(crate) struct Exit {
    reason: u64,
    rcx: u64,
    rdx: u64,
    r8: u64,
    r10: u64,
    r11: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
}

impl Exit {
    /// A triple fault: TDX_NON_RECOVERABLE_VCPU with exit reason 2 (intel/tdx-module
    /// `tdx_td_dispatcher.c`); the vCPU cannot be entered again.
    fn triple_fault() -> Exit {
        Exit::plain(TdxStatus::NON_RECOVERABLE_VCPU.0 | exit::TRIPLE_FAULT)
    }
    fn plain(reason: u64) -> Exit {
        Exit {
            reason,
            ..Exit::default()
        }
    }
    fn tdvmcall(sub: u64, r12: u64, r13: u64, r14: u64, r15: u64) -> Exit {
        Exit {
            reason: exit::TDCALL,
            rcx: exit::TDVMCALL_GPR_MASK,
            r10: 0,
            r11: sub,
            r12,
            r13,
            r14,
            r15,
            ..Exit::default()
        }
    }
    /// An EPT-violation exit from the guest's access (`tdx_ept_violation_exit_to_vmm`: GPA
    /// bits 11:0 cleared).
    fn ept(gpa: Gpa, qual: u64, ext_type: u64) -> Exit {
        Exit {
            reason: exit::EPT_VIOLATION,
            rcx: qual,
            rdx: ext_type,
            r8: gpa.0 & !0xFFF,
            ..Exit::default()
        }
    }
    /// The exit of a TDG.MEM.PAGE.ACCEPT of `gpa` at `req` that the S-EPT entry `word` at
    /// `err` level stopped (`async_tdexit_ept_violation` in intel/tdx-module
    /// `src/td_dispatcher/vm_exits/td_other_exits.c`; `tdaccept_vmx_eeq_info_t` in
    /// `include/tdx_api_defs.h`): a write, with the entry's R/W/X in qualification bits 5:3;
    /// extended qualification type ACCEPT with, from bit 32, the requested level (3 bits),
    /// the entry's level (3 bits), its public state (8 bits) and whether it is a leaf.
    fn accept(gpa: Gpa, req: PageLevel, err: PageLevel, word: u64) -> Exit {
        use tdx_abi::sept::entry_bits::{LEAF, RWX};
        let arch = sept::arch_entry(word, err);
        let info = req.raw()
            | err.raw() << 3
            | u64::from(sept::state_of(word) as u8) << 6
            | u64::from(arch & LEAF != 0) << 14;
        Exit {
            reason: exit::EPT_VIOLATION,
            rcx: exit::QUAL_WRITE | (arch & RWX) << 3,
            rdx: exit::EXT_QUAL_TYPE_ACCEPT | info << exit::EXT_QUAL_INFO_SHIFT,
            r8: gpa.0 & !0xFFF,
            ..Exit::default()
        }
    }
    /// The emulated exit of a TD entry the zero-step mitigation refused
    /// (`emulate_ept_violation_td_exit` in intel/tdx-module `src/td_transitions/tdh_vp_enter.c`):
    /// a write, no extended qualification, the GPA with bits 11:0 cleared.
    fn zero_step(gpa: u64) -> Exit {
        Exit {
            reason: exit::EPT_VIOLATION,
            rcx: exit::QUAL_WRITE,
            r8: gpa & !0xFFF,
            ..Exit::default()
        }
    }
    /// Whether this exit is one `td_ept_violation_exit` logs for the zero-step mitigation:
    /// an EPT violation that TDG.MEM.PAGE.ACCEPT did not cause.
    fn is_logged_epf(&self) -> bool {
        self.reason == exit::EPT_VIOLATION
            && self.rdx & exit::EXT_QUAL_TYPE_MASK != exit::EXT_QUAL_TYPE_ACCEPT
    }
    /// The exit reason and the output registers (all others zero).
    pub(crate) fn regs(&self) -> (u64, Regs) {
        (
            self.reason,
            Regs {
                rax: 0,
                rcx: self.rcx,
                rdx: self.rdx,
                r8: self.r8,
                r9: 0,
                r10: self.r10,
                r11: self.r11,
                r12: self.r12,
                r13: self.r13,
                r14: self.r14,
                r15: self.r15,
                ..Regs::default()
            },
        )
    }
}

/// Result of one guest ACCEPT attempt.
pub(crate) enum AcceptOutcome {
    /// The page was PENDING and is accepted now.
    Done,
    /// A guest-accessible leaf covers the GPA at this level already
    /// (TDX_PAGE_ALREADY_ACCEPTED).
    AlreadyAccepted(PageLevel),
    /// The requested level is a table, not a leaf (TDX_PAGE_SIZE_MISMATCH).
    SizeMismatch(PageLevel),
    /// The entry is locked; the guest retries.
    Busy,
    /// The host must act first (an ACCEPT-type EPT-violation exit).
    Exit(Exit),
}

impl GuestState {
    /// Fresh progress for `workload`.
    pub fn new(workload: Arc<Workload>) -> GuestState {
        GuestState {
            workload,
            declared: true,
            step: 0,
            unit: 0,
            sub: 0,
            fallback: false,
            pending: Pending::None,
            shutdown: false,
            fatal_code: None,
            stepping: Stepping::default(),
        }
    }

    /// No declared workload: an idle vCPU, or one the SVM engine runs.
    pub fn undeclared() -> GuestState {
        GuestState {
            declared: false,
            ..GuestState::new(Arc::new(Workload::default()))
        }
    }

    /// Whether a workload was declared for this vCPU.
    pub fn is_declared(&self) -> bool {
        self.declared
    }

    /// Whether every step ran.
    pub fn is_done(&self) -> bool {
        self.step >= self.workload.steps.len()
    }

    /// Synthetic guest RIP: identifies the current instruction (step, unit, sub-unit).
    pub fn rip(&self) -> u64 {
        ((self.step as u64) << 48) ^ (self.unit << 10) ^ self.sub
    }

    /// The zero-step counter (`possibly_epf_stepping`): EPT-violation exits at the RIP of
    /// the last entry, up to the threshold.
    pub fn zero_step_count(&self) -> u32 {
        self.stepping.count
    }

    fn next_step(&mut self) {
        self.step += 1;
        self.unit = 0;
        self.sub = 0;
        self.fallback = false;
    }
}

/// Page index `i` of `n` in visiting order.
fn page_index(order: Order, i: u64, n: u64) -> u64 {
    match order {
        Order::Sequential => i,
        Order::Random { seed } => {
            // A bijection on [0, n): an affine map modulo n with a multiplier coprime to n.
            let mut a = (seed | 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) % n.max(1);
            while gcd(a, n) != 1 {
                a += 1;
            }
            let c = seed.rotate_left(17) % n.max(1);
            ((a as u128 * i as u128 + c as u128) % n.max(1) as u128) as u64
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl EmulatedModule {
    /// TDH.VP.ENTER (intel/tdx-module `src/td_transitions/tdh_vp_enter.c`): TDVPR, TD
    /// state, association, then the TLB-tracking step (the epoch lock shared: busy on
    /// TD_EPOCH), then the zero-step filter ([`Stepping`]; busy on SEPT_TREE, or an emulated
    /// EPT-violation exit, both after undoing the TLB-tracking step), then the guest runs.
    pub(super) fn leaf_vp_enter(&self, lp: u32, r: &mut Regs) -> LeafResult {
        // TDVPR shared, as `tdh_vp_enter` (intel/tdx-module `src/td_transitions/
        // tdh_vp_enter.c`) takes it: the association below keeps every other LP out, and
        // TDH.VP.FLUSH (exclusive) waits.
        let (vcpu, _v, _t) = self.lock_tdvpr(r.rcx, LockMode::Shared, OperandId::RCX)?;
        let td = vcpu.td.clone();
        self.check_td_state(&td, Leaf::VpEnter)?;
        check_and_associate(&vcpu, lp, false)?;
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        // Associated with this LP, TDVPR held: no other LP touches the guest state now.
        let mut g = vcpu.guest.lock();
        let epoch = {
            let _e = td
                .epoch_lock
                .try_lock(LockMode::Shared)
                .ok_or(TdxStatus::OPERAND_BUSY.with_operand(OperandId::TD_EPOCH))?;
            let epoch = td.td_epoch.load(Ordering::Acquire);
            td.refcount[(epoch & 1) as usize].fetch_add(1, Ordering::AcqRel);
            epoch
        };
        vcpu.epoch.store(epoch, Ordering::Release);
        let revert = || {
            td.refcount[(epoch & 1) as usize].fetch_sub(1, Ordering::AcqRel);
        };
        if g.stepping.armed() {
            // `td_entry_stepping_filter`: the tree lock is held for the check only (released
            // before the guest runs).
            let Some(_x) = td.tree_lock.try_lock(LockMode::Exclusive) else {
                revert();
                return Err(TdxStatus::OPERAND_BUSY.with_operand(OperandId::SEPT_TREE));
            };
            let expected =
                g.stepping.gpas.iter().copied().find(|&gpa| {
                    sept::state_of(tree.walk_to_leaf(Gpa(gpa)).word) != SeptState::Mapped
                });
            if let Some(gpa) = expected {
                revert();
                let (reason, out) = Exit::zero_step(gpa).regs();
                // RBP is not among the registers the emulated exit writes.
                *r = Regs { rbp: r.rbp, ..out };
                return Ok(TdxStatus(reason));
            }
        }
        if !g.is_declared()
            && let Some(cpu) = self.guest_cpu.get()
        {
            drop(g);
            let status = self.svm_enter(&td, tree, &vcpu, &**cpu, r);
            revert();
            return status.inspect(|s| disable_after(&vcpu, *s));
        }
        let out = self.run_guest(&td, tree, &vcpu, &mut g, r);
        revert();
        let (reason, regs) = out.regs();
        *r = regs;
        disable_after(&vcpu, TdxStatus(reason));
        Ok(TdxStatus(reason))
    }

    /// Takes the host's answer to the pending TDVMCALL from the VP.ENTER inputs.
    fn resume_tdvmcall(&self, td: &Td, g: &mut GuestState, r: &Regs) {
        let pending = core::mem::replace(&mut g.pending, Pending::None);
        let step = g.workload.steps.get(g.step).cloned();
        match (pending, step) {
            (Pending::MapGpa, Some(Step::Convert { gpa, len, .. })) => {
                let shared_mask = td.cfg.get().map(|c| 1u64 << c.shared_bit).unwrap_or(0);
                match r.r10 {
                    exit::TDVMCALL_STATUS_SUCCESS => g.next_step(),
                    exit::TDVMCALL_STATUS_RETRY => {
                        let next = r.r11 & !shared_mask;
                        let done = next.wrapping_sub(gpa.0);
                        if next > gpa.0 + g.unit && done <= len {
                            g.unit = done;
                            if done == len {
                                g.next_step();
                            }
                        } else {
                            g.fatal_code = Some(r.r10);
                        }
                    }
                    status => g.fatal_code = Some(status),
                }
            }
            (Pending::Io, _) => g.unit += 1,
            (
                Pending::Any,
                Some(Step::Tdvmcall {
                    expect_status,
                    expect_value,
                    ..
                }),
            ) => {
                if r.r10 != expect_status || expect_value.is_some_and(|v| v != r.r11) {
                    g.fatal_code = Some(crate::workload::ANSWER_MISMATCH);
                }
                g.next_step();
            }
            (Pending::Halt, _) | (Pending::Fatal, _) => g.next_step(),
            _ => {}
        }
    }

    fn run_guest(
        &self,
        td: &Td,
        tree: &SeptTree,
        vcpu: &Vcpu,
        g: &mut GuestState,
        r: &Regs,
    ) -> Exit {
        if g.shutdown {
            return Exit::triple_fault();
        }
        self.resume_tdvmcall(td, g, r);
        // The workload's RIP after the answered TDVMCALL (the module advanced it at that
        // exit) is the RIP this entry enters at.
        g.stepping.entered(g.rip());
        let out = self.run_workload(td, tree, vcpu, g);
        let rip = g.rip();
        if out.is_logged_epf() {
            g.stepping
                .log_epf(rip, out.r8, self.cfg.limits.zero_step_threshold);
        } else {
            g.stepping.exited(rip);
        }
        out
    }

    fn run_workload(&self, td: &Td, tree: &SeptTree, vcpu: &Vcpu, g: &mut GuestState) -> Exit {
        let (shared_bit, attrs) = td
            .cfg
            .get()
            .map(|c| (c.shared_bit, c.params.attributes))
            .unwrap_or((47, 0));
        let budget = self.cfg.limits.max_guest_units_per_entry.max(1);
        let mut units = 0u64;
        loop {
            if vcpu.kick.swap(false, Ordering::AcqRel) || units >= budget {
                return Exit::plain(exit::EXTERNAL_INTERRUPT);
            }
            units += 1;
            if let Some(code) = g.fatal_code.take() {
                g.pending = Pending::Fatal;
                return Exit::tdvmcall(exit::TDVMCALL_REPORT_FATAL_ERROR, code, 0, 0, 0);
            }
            let workload = g.workload.clone();
            let Some(step) = workload.steps.get(g.step) else {
                // Idle: halt forever.
                return Exit::tdvmcall(exit::TDVMCALL_HLT, 0, 0, 0, 0);
            };
            match step {
                Step::Touch {
                    gpa,
                    len,
                    access,
                    order,
                } => {
                    let base = gpa.align_down(PageLevel::L4K);
                    let n = len.div_ceil(4096);
                    if g.unit >= n {
                        g.next_step();
                        continue;
                    }
                    let page = Gpa(base.0.wrapping_add(page_index(*order, g.unit, n) * 4096));
                    match self.guest_access(td, tree, page, *access, shared_bit, attrs) {
                        Ok(true) => g.unit += 1,
                        Ok(false) => {} // busy: retry
                        Err(e) => return e,
                    }
                }
                Step::Accept { gpa, len, level } => {
                    let lsize = level.size();
                    if !matches!(level, PageLevel::L4K | PageLevel::L2M)
                        || !gpa.is_aligned(*level)
                        || gpa.0 >> shared_bit != 0
                    {
                        g.fatal_code = Some(TdxStatus::OPERAND_INVALID.0);
                        g.next_step();
                        continue;
                    }
                    if g.unit >= len.div_ceil(lsize) {
                        g.next_step();
                        continue;
                    }
                    let chunk = Gpa(gpa.0 + g.unit * lsize);
                    let (target, tlevel) = if g.fallback {
                        (Gpa(chunk.0 + g.sub * 4096), PageLevel::L4K)
                    } else {
                        (chunk, *level)
                    };
                    match self.guest_accept(td, tree, target, tlevel) {
                        AcceptOutcome::Done | AcceptOutcome::AlreadyAccepted(_) => {
                            if g.fallback {
                                g.sub += 1;
                                if g.sub == 512 {
                                    g.fallback = false;
                                    g.sub = 0;
                                    g.unit += 1;
                                }
                            } else {
                                g.unit += 1;
                            }
                        }
                        AcceptOutcome::SizeMismatch(_) => {
                            g.fallback = true;
                            g.sub = 0;
                        }
                        AcceptOutcome::Busy => {}
                        AcceptOutcome::Exit(e) => return e,
                    }
                }
                Step::Convert {
                    gpa,
                    len,
                    to_shared,
                } => {
                    if g.unit >= *len {
                        g.next_step();
                        continue;
                    }
                    let start = gpa.0 + g.unit;
                    let start = if *to_shared {
                        start | 1u64 << shared_bit
                    } else {
                        start
                    };
                    g.pending = Pending::MapGpa;
                    return Exit::tdvmcall(exit::TDVMCALL_MAP_GPA, start, len - g.unit, 0, 0);
                }
                Step::Print { line } => {
                    let bytes = line.as_bytes();
                    let total = bytes.len() as u64 + 1;
                    if g.unit >= total {
                        g.next_step();
                        continue;
                    }
                    let byte = bytes.get(g.unit as usize).copied().unwrap_or(b'\n');
                    g.pending = Pending::Io;
                    return Exit::tdvmcall(
                        exit::TDVMCALL_IO,
                        1,
                        1,
                        crate::workload::SERIAL_PORT,
                        u64::from(byte),
                    );
                }
                Step::ExtendRtmr { index, digest } => {
                    if *index > 3 {
                        g.fatal_code = Some(TdxStatus::OPERAND_INVALID.0);
                        g.next_step();
                        continue;
                    }
                    if td.try_extend_rtmr(usize::from(*index), digest) {
                        g.next_step();
                    }
                }
                Step::Halt => {
                    g.pending = Pending::Halt;
                    return Exit::tdvmcall(exit::TDVMCALL_HLT, 0, 0, 0, 0);
                }
                Step::ReportFatalError { code } => {
                    g.pending = Pending::Fatal;
                    return Exit::tdvmcall(exit::TDVMCALL_REPORT_FATAL_ERROR, *code, 0, 0, 0);
                }
                Step::Shutdown => {
                    g.shutdown = true;
                    return Exit::triple_fault();
                }
                Step::Tdvmcall {
                    subfunction, args, ..
                } => {
                    g.pending = Pending::Any;
                    let [r12, r13, r14, r15] = *args;
                    return Exit::tdvmcall(*subfunction, r12, r13, r14, r15);
                }
            }
        }
    }

    /// One guest load/store. `Ok(true)` done, `Ok(false)` busy (retry), `Err(exit)`.
    fn guest_access(
        &self,
        td: &Td,
        tree: &SeptTree,
        gpa: Gpa,
        access: Access,
        shared_bit: u32,
        attrs: u64,
    ) -> Result<bool, Exit> {
        let qual = match access {
            Access::Read => exit::QUAL_READ,
            Access::Write => exit::QUAL_WRITE,
        };
        if gpa.0 >> shared_bit & 1 == 1 {
            // Shared memory is mapped by the host's shared EPT, outside this model.
            return Ok(true);
        }
        if gpa.0 >> shared_bit != 0 {
            return Err(Exit::ept(gpa, qual, exit::EXT_QUAL_TYPE_NORMAL));
        }
        let w = tree.walk_to_leaf(gpa);
        match sept::state_of(w.word) {
            SeptState::Mapped => {
                let hpa = sept::hpa_of(w.word) + (gpa.0 & (w.level.size() - 1));
                if self.pamt.in_range(hpa, 8) {
                    match access {
                        Access::Write => self.mem.write(Hpa(hpa), &gpa.0.to_le_bytes()),
                        Access::Read => {
                            let mut b = [0u8; 8];
                            self.mem.read(Hpa(hpa), &mut b);
                        }
                    }
                }
                Ok(true)
            }
            SeptState::Pending if attrs & attributes::SEPT_VE_DISABLE != 0 => Err(Exit::ept(
                gpa,
                qual,
                exit::EXT_QUAL_TYPE_PENDING_EPT_VIOLATION,
            )),
            SeptState::Pending => {
                // #VE: the guest accepts the page at 4 KiB, then retries the access.
                match self.guest_accept(td, tree, gpa, PageLevel::L4K) {
                    AcceptOutcome::Exit(e) => Err(e),
                    _ => Ok(false),
                }
            }
            _ => Err(Exit::ept(gpa, qual, exit::EXT_QUAL_TYPE_NORMAL)),
        }
    }

    /// TDG.MEM.PAGE.ACCEPT semantics.
    pub(crate) fn guest_accept(
        &self,
        td: &Td,
        tree: &SeptTree,
        gpa: Gpa,
        level: PageLevel,
    ) -> AcceptOutcome {
        // `check_tdaccept_failure` / `async_tdexit_ept_violation` (intel/tdx-module
        // `tdg_mem_page_accept.c`): the exit describes the entry the walk stopped at (above
        // `level`) or the non-acceptable entry at `level`.
        let accept_exit =
            |w: &sept::WalkResult| AcceptOutcome::Exit(Exit::accept(gpa, level, w.level, w.word));
        let Some(_t) = td.tree_lock.try_lock(LockMode::Shared) else {
            return AcceptOutcome::Busy;
        };
        // `check_tdaccept_failure`: a guest-accessible leaf (MAPPED, BLOCKEDW) at the requested
        // level or above it answers TDX_PAGE_ALREADY_ACCEPTED, a table at the requested level
        // TDX_PAGE_SIZE_MISMATCH, each with that entry's level as the operand.
        let accessible =
            |w: u64| matches!(sept::state_of(w), SeptState::Mapped | SeptState::BlockedW);
        match tree.walk(gpa, level) {
            Err(w) if accessible(w.word) => AcceptOutcome::AlreadyAccepted(w.level),
            // Missing table, FREE, PENDING larger leaf (host must demote), blocked.
            Err(w) => accept_exit(&w),
            Ok(w) if accessible(w.word) => AcceptOutcome::AlreadyAccepted(w.level),
            Ok(w) => match sept::state_of(w.word) {
                SeptState::Pending => match sept::lock_guest(w.entry()) {
                    Ok(cur) if sept::state_of(cur) == SeptState::Pending => {
                        let hpa = sept::hpa_of(cur);
                        self.zero_phys(hpa, level.size());
                        sept::store_unlock(w.entry(), sept::word(SeptState::Mapped, hpa));
                        AcceptOutcome::Done
                    }
                    Ok(_) => {
                        sept::unlock(w.entry());
                        AcceptOutcome::Busy
                    }
                    Err(_) => AcceptOutcome::Busy,
                },
                SeptState::NlMapped | SeptState::NlBlocked => AcceptOutcome::SizeMismatch(level),
                _ => accept_exit(&w),
            },
        }
    }
}
