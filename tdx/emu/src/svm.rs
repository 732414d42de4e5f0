//! The SVM guest engine: TDH.VP.ENTER runs the vCPU's own code with AMD SVM and nested
//! paging, and does between guest and host what the TDX module does between a TD and its
//! VMM.
//!
//! The privileged instructions are not here: a [`GuestCpu`] (the platform's, built on the
//! `tdx-svm` crate) runs a VMCB until its next #VMEXIT. Everything else is data this module
//! keeps in module-owned pages, as the real module keeps its TD-VMCS in the TDVPS:
//!
//! * **VMCB**: the vCPU's first TDCX page; its save area holds the TDX initial vCPU state
//!   (TDX module 1.5 `tdh_vp_init.c` and `td_vmcs_init.c`: 32-bit flat protected mode at the
//!   reset vector 0xFFFFFFF0, CR0 PE|NE, EFER LME|NXE|SCE, RBX the GPA width, RCX and R8 the
//!   TDH.VP.INIT value, RSI the vCPU index). Layout: AMD APM vol. 2 appendix B.
//! * **Nested page tables**: the S-EPT stays the truth; each S-EPT page doubles as the nested
//!   table of the same level (the root lives in the TD's first TDCS page). Entries are filled
//!   from the S-EPT on a nested page fault and dropped when TDH.MEM.RANGE.BLOCK blocks the
//!   S-EPT entry, so a blocked page is gone at the next VMRUN (the TLB is flushed on every
//!   VMRUN), as hardware forgets it after the TLB shoot-down. The shared half of the GPA
//!   space (shared bit set) has no nested mapping yet: an access there is an EPT-violation
//!   exit to the host.
//! * **TDCALL**: the instruction (`66 0F 01 CC`) raises #UD on this CPU; the engine reads the
//!   bytes at the guest's RIP and runs the TDCALL leaf: TDG.VP.VMCALL (a TDVMCALL exit to the
//!   host with the registers the guest selected in RCX, and the host's answer copied back on
//!   the next entry), TDG.VP.INFO, TDG.MEM.PAGE.ACCEPT (an EPT-violation exit of type ACCEPT
//!   when the host has not added the page yet, the TDCALL run again on re-entry). Other
//!   leaves answer `TDX_OPERAND_INVALID`.
//! * **CPUID** is answered by the module (vendor GenuineIntel, leaf 1 with the hypervisor
//!   bit, leaf 0x21 "IntelTDX    "; zeros elsewhere). HLT leaves the TD as a TDVMCALL
//!   Instruction.HLT would. Port I/O and MSR instructions, which TDX turns into #VE, get #GP
//!   for now: a guest that uses TDVMCALLs for them (as TDVF's I/O library does) is served.
//! * **Kicks**: checked between #VMEXITs; a guest is entered for at most
//!   [`MAX_EXITS_PER_ENTRY`] exits before it leaves with an external-interrupt exit.

use alloc::sync::Arc;
use core::sync::atomic::Ordering;

use tdx_abi::exit;
use tdx_abi::seamcall::Regs;
use tdx_abi::{Gpa, Hpa, PageLevel, SeptState, TdxStatus};
use tdx_svm::GuestRegisters;

use super::sept::{self, SeptTable, SeptTree};
use super::td::{Td, Vcpu};
use super::{EmulatedModule, LeafResult};

/// Runs guest code on the calling CPU. The platform implements it with the `tdx-svm`
/// primitives (SVM on, a host save area per CPU).
pub trait GuestCpu: Send + Sync {
    /// Runs the guest of the VMCB at `vmcb` until its next #VMEXIT, moving the registers the
    /// VMCB does not hold in and out of `regs`.
    fn run(&self, vmcb: Hpa, regs: &mut GuestRegisters);
    /// Physical addresses of an I/O permission map (12 KiB) and an MSR permission map (8 KiB)
    /// with every bit set: every port and MSR access of a guest is intercepted.
    fn intercept_all_maps(&self) -> (Hpa, Hpa);
}

/// #VMEXITs one TDH.VP.ENTER handles before it returns an external-interrupt exit, so the
/// runner regains its CPU even from a guest that never makes a TD exit.
pub const MAX_EXITS_PER_ENTRY: u32 = 4096;

/// VMCB offsets (AMD APM vol. 2 appendix B).
mod vmcb {
    pub const INTERCEPT_CR: u64 = 0x000;
    pub const INTERCEPT_EXCEPTIONS: u64 = 0x008;
    pub const INTERCEPT_MISC1: u64 = 0x00C;
    pub const INTERCEPT_MISC2: u64 = 0x010;
    pub const IOPM_BASE: u64 = 0x040;
    pub const MSRPM_BASE: u64 = 0x048;
    pub const ASID: u64 = 0x058;
    pub const TLB_CONTROL: u64 = 0x05C;
    pub const EXIT_CODE: u64 = 0x070;
    pub const EXIT_INFO1: u64 = 0x078;
    pub const EXIT_INFO2: u64 = 0x080;
    pub const NP_ENABLE: u64 = 0x090;
    pub const EVENT_INJ: u64 = 0x0A8;
    pub const N_CR3: u64 = 0x0B0;
    pub const ES: u64 = 0x400;
    pub const CS: u64 = 0x410;
    pub const SS: u64 = 0x420;
    pub const DS: u64 = 0x430;
    pub const FS: u64 = 0x440;
    pub const GS: u64 = 0x450;
    pub const GDTR: u64 = 0x460;
    pub const LDTR: u64 = 0x470;
    pub const IDTR: u64 = 0x480;
    pub const TR: u64 = 0x490;
    pub const EFER: u64 = 0x4D0;
    pub const CR4: u64 = 0x548;
    pub const CR3: u64 = 0x550;
    pub const CR0: u64 = 0x558;
    pub const DR7: u64 = 0x560;
    pub const DR6: u64 = 0x568;
    pub const RFLAGS: u64 = 0x570;
    pub const RIP: u64 = 0x578;
    pub const RAX: u64 = 0x5F8;
    pub const G_PAT: u64 = 0x668;

    /// Exception intercept: #UD (vector 6).
    pub const EXCEPTION_UD: u32 = 1 << 6;
    /// Misc intercepts 1: INTR, NMI, SMI, INIT, CPUID, INVD, HLT, IOIO_PROT, MSR_PROT,
    /// SHUTDOWN.
    pub const MISC1: u32 =
        1 | 1 << 1 | 1 << 2 | 1 << 3 | 1 << 18 | 1 << 22 | 1 << 24 | 1 << 27 | 1 << 28 | 1 << 31;
    /// Misc intercepts 2: VMRUN (required), VMMCALL, VMLOAD, VMSAVE, STGI, CLGI, SKINIT,
    /// WBINVD, MONITOR, MWAIT, XSETBV.
    pub const MISC2: u32 = 1
        | 1 << 1
        | 1 << 2
        | 1 << 3
        | 1 << 4
        | 1 << 5
        | 1 << 6
        | 1 << 9
        | 1 << 10
        | 1 << 11
        | 1 << 13;

    pub const EXIT_EXCEPTION_UD: u64 = 0x46;
    pub const EXIT_INTR: u64 = 0x60;
    pub const EXIT_NMI: u64 = 0x61;
    pub const EXIT_CPUID: u64 = 0x72;
    pub const EXIT_HLT: u64 = 0x78;
    pub const EXIT_SHUTDOWN: u64 = 0x7F;
    pub const EXIT_WBINVD: u64 = 0x89;
    pub const EXIT_NPF: u64 = 0x400;
    pub const EXIT_INVALID: u64 = u64::MAX;

    /// EVENTINJ: valid, exception type, with an error code.
    pub const INJECT_EXCEPTION: u64 = 1 << 31 | 3 << 8;
    pub const INJECT_ERROR_CODE: u64 = 1 << 11;
}

/// Nested page table entry bits: present, writable, user (nested walks are user accesses),
/// large page.
const NPT_PRESENT: u64 = 1;
const NPT_RW: u64 = 1 << 1;
const NPT_US: u64 = 1 << 2;
const NPT_PS: u64 = 1 << 7;
/// TDCALL's encoding.
const TDCALL_BYTES: [u8; 4] = [0x66, 0x0F, 0x01, 0xCC];
/// TDCALL leaves the engine runs.
const TDG_VP_VMCALL: u64 = 0;
const TDG_VP_INFO: u64 = 1;
const TDG_MEM_PAGE_ACCEPT: u64 = 6;
/// The TD's CPUID(1).EAX (family 6, model 0x8F stepping 8: a 4th-generation Xeon, the first
/// with TDX), which the guest also finds in RDX at reset.
const TD_CPUID1_EAX: u32 = 0x0008_06F8;

/// What the vCPU owes the guest on the next entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// Nothing: resume.
    None,
    /// A TDG.VP.VMCALL whose RCX selected these registers: copy the host's answer in.
    Vmcall { mask: u64 },
}

/// A vCPU's engine state (kept with its TDVPS).
pub struct SvmVcpu {
    vmcb: Hpa,
    regs: GuestRegisters,
    pending: Pending,
}

/// Where a nested page fault on a private GPA leads.
enum Fill {
    /// The S-EPT maps it: the nested entry is written; run again.
    Mapped,
    /// The S-EPT has a PENDING page there: the guest must accept it first.
    Pending,
    /// No mapping: the host must add one.
    Missing,
}

impl EmulatedModule {
    /// Lets TDH.VP.ENTER run guest code on `cpu` for every vCPU that has no declared
    /// workload.
    pub fn attach_guest_cpu(&self, cpu: Arc<dyn GuestCpu>) {
        self.guest_cpu.call_once(|| cpu);
    }

    /// Drops the nested twin of S-EPT entry `index` of `table`.
    pub(crate) fn npt_forget(&self, table: &SeptTable, index: usize) {
        let page = table.npt_page.load(Ordering::Acquire);
        if page != 0 {
            self.write_npt_entry(page, index, 0);
        }
    }

    /// Writes a nested entry so that another CPU's page walk never sees a half-written one:
    /// the byte with the present bit goes last when setting and first when clearing.
    fn write_npt_entry(&self, page: u64, index: usize, value: u64) {
        let at = Hpa(page + (index as u64 & 511) * 8);
        let bytes = value.to_le_bytes();
        if value & NPT_PRESENT != 0 {
            self.mem.write(Hpa(at.0 + 1), &bytes[1..]);
            self.mem.write(at, &bytes[..1]);
        } else {
            self.mem.write(at, &bytes[..1]);
            self.mem.write(Hpa(at.0 + 1), &bytes[1..]);
        }
    }

    fn vmcb_read(&self, vmcb: Hpa, offset: u64) -> u64 {
        let mut b = [0u8; 8];
        self.mem.read(Hpa(vmcb.0 + offset), &mut b);
        u64::from_le_bytes(b)
    }

    fn vmcb_write(&self, vmcb: Hpa, offset: u64, value: u64) {
        self.mem.write(Hpa(vmcb.0 + offset), &value.to_le_bytes());
    }

    fn vmcb_write32(&self, vmcb: Hpa, offset: u64, value: u32) {
        self.mem.write(Hpa(vmcb.0 + offset), &value.to_le_bytes());
    }

    /// A segment register of the save area: selector, attributes (SVM's 12-bit packing of
    /// the access byte and the G/DB/L/AVL nibble), limit, base.
    fn vmcb_segment(&self, vmcb: Hpa, offset: u64, attrib: u16, limit: u32, base: u64) {
        let mut b = [0u8; 16];
        b[2..4].copy_from_slice(&attrib.to_le_bytes());
        b[4..8].copy_from_slice(&limit.to_le_bytes());
        b[8..16].copy_from_slice(&base.to_le_bytes());
        self.mem.write(Hpa(vmcb.0 + offset), &b);
    }

    /// The vCPU's engine state, set up on its first entry.
    fn svm_vcpu(&self, td: &Td, vcpu: &Vcpu, cpu: &dyn GuestCpu) -> Result<SvmVcpu, TdxStatus> {
        let vmcb = vcpu
            .tdcx_pages
            .lock()
            .first()
            .copied()
            .ok_or(TdxStatus::TDCX_NUM_INCORRECT)?;
        let root = td
            .tdcs_pages
            .lock()
            .first()
            .copied()
            .ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        let tree = td.tree.get().ok_or(TdxStatus::TDCS_NOT_ALLOCATED)?;
        if tree
            .root
            .npt_page
            .compare_exchange(0, root, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.zero_phys(root, 4096);
        }
        // Map what the S-EPT maps now (the TD's firmware) before the first VMRUN. Besides
        // saving a nested fault per firmware page, this is needed under QEMU 7.2's TCG: after
        // a nested fault on an instruction fetch in a guest without paging, the re-run fetched
        // the host's bytes at the guest's address (the firmware's reset vector) instead of
        // the guest's page.
        let mut mapped = alloc::vec::Vec::new();
        super::td::for_each_leaf(tree, |gpa, _level, word| {
            if sept::state_of(word) == SeptState::Mapped {
                mapped.push(gpa.0);
            }
        });
        for gpa in mapped {
            let _ = self.npt_fill(tree, gpa);
        }
        let vmcb = Hpa(vmcb);
        self.zero_phys(vmcb.0, 4096);
        let (iopm, msrpm) = cpu.intercept_all_maps();
        self.vmcb_write32(vmcb, vmcb::INTERCEPT_CR, 0);
        self.vmcb_write32(vmcb, vmcb::INTERCEPT_EXCEPTIONS, vmcb::EXCEPTION_UD);
        self.vmcb_write32(vmcb, vmcb::INTERCEPT_MISC1, vmcb::MISC1);
        self.vmcb_write32(vmcb, vmcb::INTERCEPT_MISC2, vmcb::MISC2);
        self.vmcb_write(vmcb, vmcb::IOPM_BASE, iopm.0);
        self.vmcb_write(vmcb, vmcb::MSRPM_BASE, msrpm.0);
        self.vmcb_write32(vmcb, vmcb::ASID, 1);
        self.mem.write(Hpa(vmcb.0 + vmcb::TLB_CONTROL), &[1]);
        self.vmcb_write(vmcb, vmcb::NP_ENABLE, 1);
        self.vmcb_write(vmcb, vmcb::N_CR3, root);
        // TDX initial state: flat 32-bit protected mode.
        let code = 0xC9B;
        let data = 0xC93;
        self.vmcb_segment(vmcb, vmcb::CS, code, u32::MAX, 0);
        for seg in [vmcb::ES, vmcb::SS, vmcb::DS, vmcb::FS, vmcb::GS] {
            self.vmcb_segment(vmcb, seg, data, u32::MAX, 0);
        }
        self.vmcb_segment(vmcb, vmcb::GDTR, 0, 0xFFFF, 0);
        self.vmcb_segment(vmcb, vmcb::IDTR, 0, 0xFFFF, 0);
        self.vmcb_segment(vmcb, vmcb::LDTR, 0, 0, 0);
        self.vmcb_segment(vmcb, vmcb::TR, 0x8B, 0xFFFF, 0);
        // EFER.SVME must be set for VMRUN; the guest never sees it (no EFER access reaches
        // it: every RDMSR is intercepted).
        self.vmcb_write(vmcb, vmcb::EFER, 0x901 | 1 << 12);
        self.vmcb_write(vmcb, vmcb::CR0, 0x31);
        self.vmcb_write(vmcb, vmcb::CR4, 0x40);
        self.vmcb_write(vmcb, vmcb::CR3, 0);
        self.vmcb_write(vmcb, vmcb::DR7, 0x400);
        self.vmcb_write(vmcb, vmcb::DR6, 0xFFFF_0FF0);
        self.vmcb_write(vmcb, vmcb::RFLAGS, 0x2);
        self.vmcb_write(vmcb, vmcb::RIP, 0xFFFF_FFF0);
        self.vmcb_write(vmcb, vmcb::RAX, 0);
        self.vmcb_write(vmcb, vmcb::G_PAT, 0x0007_0406_0007_0406);
        let gpaw = td.cfg.get().map_or(48, |c| u64::from(c.shared_bit) + 1);
        let init_rcx = vcpu.init_rcx.load(Ordering::Acquire);
        let regs = GuestRegisters {
            rbx: gpaw,
            rcx: init_rcx,
            r8: init_rcx,
            rdx: u64::from(TD_CPUID1_EAX),
            rsi: u64::from(vcpu.index),
            ..GuestRegisters::default()
        };
        Ok(SvmVcpu {
            vmcb,
            regs,
            pending: Pending::None,
        })
    }

    /// TDH.VP.ENTER on the SVM engine: runs the vCPU until it makes a TD exit and leaves the
    /// exit registers in `r`.
    pub(crate) fn svm_enter(
        &self,
        td: &Td,
        tree: &SeptTree,
        vcpu: &Vcpu,
        cpu: &dyn GuestCpu,
        r: &mut Regs,
    ) -> LeafResult {
        let mut slot = vcpu.svm.lock();
        if slot.is_none() {
            *slot = Some(self.svm_vcpu(td, vcpu, cpu)?);
        }
        let Some(s) = slot.as_mut() else {
            return Err(TdxStatus::VCPU_STATE_INCORRECT);
        };
        if let Pending::Vmcall { mask } = core::mem::replace(&mut s.pending, Pending::None) {
            self.resume_vmcall(s, mask, r);
        }
        for _ in 0..MAX_EXITS_PER_ENTRY {
            if vcpu.kick.swap(false, Ordering::AcqRel) {
                return Ok(td_exit(r, exit::EXTERNAL_INTERRUPT, Regs::default()));
            }
            cpu.run(s.vmcb, &mut s.regs);
            let code = self.vmcb_read(s.vmcb, vmcb::EXIT_CODE);
            match code {
                vmcb::EXIT_NPF => {
                    let gpa = self.vmcb_read(s.vmcb, vmcb::EXIT_INFO2);
                    let info = self.vmcb_read(s.vmcb, vmcb::EXIT_INFO1);
                    let qual = if info & 2 != 0 {
                        exit::QUAL_WRITE
                    } else {
                        exit::QUAL_READ
                    };
                    let shared = td.cfg.get().map_or(1 << 47, |c| 1u64 << c.shared_bit);
                    let ept = |ext: u64| Regs {
                        rcx: qual,
                        rdx: ext,
                        r8: gpa & !0xFFF,
                        ..Regs::default()
                    };
                    if gpa & shared != 0 {
                        return Ok(td_exit(
                            r,
                            exit::EPT_VIOLATION,
                            ept(exit::EXT_QUAL_TYPE_NORMAL),
                        ));
                    }
                    match self.npt_fill(tree, gpa) {
                        Fill::Mapped => {}
                        Fill::Missing => {
                            return Ok(td_exit(
                                r,
                                exit::EPT_VIOLATION,
                                ept(exit::EXT_QUAL_TYPE_NORMAL),
                            ));
                        }
                        Fill::Pending => {
                            // No #VE delivery yet: a PENDING page is the guest's bug, as
                            // with SEPT_VE_DISABLE.
                            return Ok(td_exit(
                                r,
                                exit::EPT_VIOLATION,
                                ept(exit::EXT_QUAL_TYPE_PENDING_EPT_VIOLATION),
                            ));
                        }
                    }
                }
                vmcb::EXIT_EXCEPTION_UD => {
                    if let Some((reason, out)) = self.tdcall(td, tree, vcpu, s) {
                        return Ok(td_exit(r, reason, out));
                    }
                }
                vmcb::EXIT_CPUID => {
                    self.cpuid(s);
                    self.advance(s, 2);
                }
                vmcb::EXIT_HLT => {
                    // What the guest's #VE handler would turn it into: Instruction.HLT.
                    self.advance(s, 1);
                    return Ok(td_exit(
                        r,
                        exit::TDCALL,
                        Regs {
                            r11: exit::TDVMCALL_HLT,
                            ..Regs::default()
                        },
                    ));
                }
                vmcb::EXIT_WBINVD => self.advance(s, 2),
                vmcb::EXIT_SHUTDOWN => return Ok(td_exit(r, exit::TRIPLE_FAULT, Regs::default())),
                vmcb::EXIT_INTR | vmcb::EXIT_NMI => {
                    return Ok(td_exit(r, exit::EXTERNAL_INTERRUPT, Regs::default()));
                }
                vmcb::EXIT_INVALID => return Err(TdxStatus::NON_RECOVERABLE_VCPU),
                // Port I/O, MSRs (TDX: #VE), VMMCALL, SVM instructions, MONITOR/MWAIT,
                // XSETBV: refused.
                0x7B | 0x7C => self.inject_gp(s),
                _ => self.inject_exception(s, 6, None),
            }
        }
        Ok(td_exit(r, exit::EXTERNAL_INTERRUPT, Regs::default()))
    }

    fn advance(&self, s: &SvmVcpu, bytes: u64) {
        let rip = self.vmcb_read(s.vmcb, vmcb::RIP);
        self.vmcb_write(s.vmcb, vmcb::RIP, rip.wrapping_add(bytes));
    }

    fn inject_exception(&self, s: &SvmVcpu, vector: u8, error: Option<u32>) {
        let mut e = vmcb::INJECT_EXCEPTION | u64::from(vector);
        if let Some(code) = error {
            e |= vmcb::INJECT_ERROR_CODE | u64::from(code) << 32;
        }
        self.vmcb_write(s.vmcb, vmcb::EVENT_INJ, e);
    }

    fn inject_gp(&self, s: &SvmVcpu) {
        self.inject_exception(s, 13, Some(0));
    }

    /// The host's answer to the vCPU's TDG.VP.VMCALL: the registers the guest selected get
    /// the entry's values, RAX 0 (the TDCALL completed) and RCX the selection.
    fn resume_vmcall(&self, s: &mut SvmVcpu, mask: u64, r: &Regs) {
        let g = &mut s.regs;
        let take = |bit: u32| mask & (1 << bit) != 0;
        if take(2) {
            g.rdx = r.rdx;
        }
        if take(3) {
            g.rbx = r.rbx;
        }
        if take(6) {
            g.rsi = r.rsi;
        }
        if take(7) {
            g.rdi = r.rdi;
        }
        for (bit, (dst, src)) in [
            (8, (&mut g.r8, r.r8)),
            (9, (&mut g.r9, r.r9)),
            (10, (&mut g.r10, r.r10)),
            (11, (&mut g.r11, r.r11)),
            (12, (&mut g.r12, r.r12)),
            (13, (&mut g.r13, r.r13)),
            (14, (&mut g.r14, r.r14)),
            (15, (&mut g.r15, r.r15)),
        ] {
            if take(bit) {
                *dst = src;
            }
        }
        g.rcx = mask;
        self.vmcb_write(s.vmcb, vmcb::RAX, 0);
    }

    /// Fills the nested path to `gpa` from the S-EPT.
    fn npt_fill(&self, tree: &SeptTree, gpa: u64) -> Fill {
        let mut table = tree.root.clone();
        let mut level = tree.top_level();
        loop {
            let index = sept::index_at(Gpa(gpa), level);
            let word = table.entries[index].load(Ordering::Acquire);
            let page = table.npt_page.load(Ordering::Acquire);
            match sept::state_of(word) {
                SeptState::NlMapped => {
                    let child = sept::hpa_of(word);
                    let (Some(next), Some(lower)) = (tree.table(child), level.lower()) else {
                        return Fill::Missing;
                    };
                    if page != 0 {
                        self.write_npt_entry(page, index, child | NPT_PRESENT | NPT_RW | NPT_US);
                    }
                    table = next;
                    level = lower;
                }
                SeptState::Mapped => {
                    let large = if level == PageLevel::L4K { 0 } else { NPT_PS };
                    if page != 0 {
                        self.write_npt_entry(
                            page,
                            index,
                            sept::hpa_of(word) | NPT_PRESENT | NPT_RW | NPT_US | large,
                        );
                    }
                    return Fill::Mapped;
                }
                SeptState::Pending => return Fill::Pending,
                _ => return Fill::Missing,
            }
        }
    }

    /// The host physical address of private `gpa`, if the S-EPT maps it.
    fn private_hpa(&self, tree: &SeptTree, gpa: u64) -> Option<u64> {
        let w = tree.walk_to_leaf(Gpa(gpa));
        (sept::state_of(w.word) == SeptState::Mapped)
            .then(|| sept::hpa_of(w.word) + (gpa & (w.level.size() - 1)))
    }

    /// Reads guest-physical memory (private pages only).
    fn read_gpa(&self, tree: &SeptTree, gpa: u64, buf: &mut [u8]) -> Option<()> {
        let hpa = self.private_hpa(tree, gpa)?;
        let end_in_page = (gpa & 0xFFF) + buf.len() as u64;
        if end_in_page > 4096 {
            return None;
        }
        self.mem.read(Hpa(hpa), buf);
        Some(())
    }

    /// The guest-physical address of linear `la` in the guest's current paging mode (none,
    /// or 4-level long mode).
    fn linear_to_gpa(&self, tree: &SeptTree, s: &SvmVcpu, la: u64) -> Option<u64> {
        let cr0 = self.vmcb_read(s.vmcb, vmcb::CR0);
        if cr0 & (1 << 31) == 0 {
            return Some(la & 0xFFFF_FFFF);
        }
        let efer = self.vmcb_read(s.vmcb, vmcb::EFER);
        if efer & (1 << 10) == 0 {
            return None;
        }
        let mut table = self.vmcb_read(s.vmcb, vmcb::CR3) & 0x000F_FFFF_FFFF_F000;
        for shift in [39u32, 30, 21, 12] {
            let mut e = [0u8; 8];
            self.read_gpa(tree, table + ((la >> shift) & 511) * 8, &mut e)?;
            let e = u64::from_le_bytes(e);
            if e & 1 == 0 {
                return None;
            }
            let frame = e & 0x000F_FFFF_FFFF_F000;
            if shift == 12 || (shift != 39 && e & NPT_PS != 0) {
                let size = 1u64 << shift;
                return Some((frame & !(size - 1)) | (la & (size - 1)));
            }
            table = frame;
        }
        None
    }

    /// A #UD: TDCALL or a real undefined opcode. Returns the TD exit to make (reason and
    /// registers), if any.
    fn tdcall(
        &self,
        td: &Td,
        tree: &SeptTree,
        vcpu: &Vcpu,
        s: &mut SvmVcpu,
    ) -> Option<(u64, Regs)> {
        let rip = self.vmcb_read(s.vmcb, vmcb::RIP);
        let cs_base = self.vmcb_read(s.vmcb, vmcb::CS + 8);
        let mut bytes = [0u8; 4];
        let fetched = self
            .linear_to_gpa(tree, s, cs_base.wrapping_add(rip))
            .and_then(|gpa| self.read_gpa(tree, gpa, &mut bytes));
        if fetched.is_none() || bytes != TDCALL_BYTES {
            self.inject_exception(s, 6, None);
            return None;
        }
        let leaf = self.vmcb_read(s.vmcb, vmcb::RAX);
        match leaf {
            TDG_VP_VMCALL => {
                let mask = s.regs.rcx & 0xFFFF_FFFF;
                self.advance(s, 4);
                s.pending = Pending::Vmcall { mask };
                let g = &s.regs;
                let pick = |bit: u32, v: u64| if mask & (1 << bit) != 0 { v } else { 0 };
                let out = Regs {
                    rcx: mask,
                    rdx: pick(2, g.rdx),
                    rbx: pick(3, g.rbx),
                    rsi: pick(6, g.rsi),
                    rdi: pick(7, g.rdi),
                    r8: pick(8, g.r8),
                    r9: pick(9, g.r9),
                    r10: pick(10, g.r10),
                    r11: pick(11, g.r11),
                    r12: pick(12, g.r12),
                    r13: pick(13, g.r13),
                    r14: pick(14, g.r14),
                    r15: pick(15, g.r15),
                    ..Regs::default()
                };
                Some((exit::TDCALL, out))
            }
            TDG_VP_INFO => {
                let cfg = td.cfg.get();
                let gpaw = cfg.map_or(48, |c| u64::from(c.shared_bit) + 1);
                let attrs = cfg.map_or(0, |c| c.params.attributes);
                let max = cfg.map_or(0, |c| u64::from(c.params.max_vcpus));
                let num = u64::from(td.num_vcpus.load(Ordering::Acquire));
                let g = &mut s.regs;
                g.rcx = gpaw;
                g.rdx = attrs;
                g.r8 = num | max << 32;
                g.r9 = u64::from(vcpu.index);
                g.r10 = 0;
                g.r11 = 0;
                self.vmcb_write(s.vmcb, vmcb::RAX, 0);
                self.advance(s, 4);
                None
            }
            TDG_MEM_PAGE_ACCEPT => {
                let operand = s.regs.rcx;
                let level = PageLevel::from_raw(operand & 7).filter(|l| *l <= PageLevel::L2M);
                let gpa = Gpa(operand & 0x000F_FFFF_FFFF_F000);
                let Some(level) = level.filter(|l| gpa.0 & (l.size() - 1) == 0) else {
                    self.tdcall_status(s, TdxStatus::OPERAND_INVALID);
                    return None;
                };
                match self.guest_accept(td, tree, gpa, level) {
                    super::guest::AcceptOutcome::Done => self.tdcall_status(s, TdxStatus::SUCCESS),
                    super::guest::AcceptOutcome::SizeMismatch => {
                        self.tdcall_status(s, TdxStatus::PAGE_SIZE_MISMATCH);
                    }
                    super::guest::AcceptOutcome::Busy => {
                        self.tdcall_status(s, TdxStatus::OPERAND_BUSY);
                    }
                    // The host adds the page; the TDCALL runs again on re-entry.
                    super::guest::AcceptOutcome::Exit(_) => {
                        let out = Regs {
                            rcx: exit::QUAL_WRITE,
                            rdx: exit::EXT_QUAL_TYPE_ACCEPT
                                | level.raw() << exit::EXT_QUAL_INFO_SHIFT,
                            r8: gpa.0,
                            ..Regs::default()
                        };
                        return Some((exit::EPT_VIOLATION, out));
                    }
                }
                None
            }
            _ => {
                self.tdcall_status(s, TdxStatus::OPERAND_INVALID);
                None
            }
        }
    }

    /// Completes a TDCALL with `status` in RAX.
    fn tdcall_status(&self, s: &SvmVcpu, status: TdxStatus) {
        self.vmcb_write(s.vmcb, vmcb::RAX, status.0);
        self.advance(s, 4);
    }

    /// CPUID from the module's table for the TD.
    fn cpuid(&self, s: &mut SvmVcpu) {
        let leaf = self.vmcb_read(s.vmcb, vmcb::RAX) & 0xFFFF_FFFF;
        let (a, b, c, d): (u32, u32, u32, u32) = match leaf {
            // Max basic leaf 0x21, "GenuineIntel".
            0 => (0x21, 0x756E_6547, 0x6C65_746E, 0x4965_6E69),
            // Family/model; ECX: SSE3, SSSE3, SSE4.1/4.2, x2APIC, hypervisor; EDX: FPU, TSC,
            // MSR, PAE, CX8, APIC, SEP, MTRR, PGE, CMOV, PAT, CLFLUSH, MMX, FXSR, SSE, SSE2.
            1 => (
                TD_CPUID1_EAX,
                0,
                1 | 1 << 9 | 1 << 19 | 1 << 20 | 1 << 21 | 1 << 31,
                1 | 1 << 4
                    | 1 << 5
                    | 1 << 6
                    | 1 << 8
                    | 1 << 9
                    | 1 << 11
                    | 1 << 12
                    | 1 << 13
                    | 1 << 15
                    | 1 << 16
                    | 1 << 19
                    | 1 << 23
                    | 1 << 24
                    | 1 << 25
                    | 1 << 26,
            ),
            // "IntelTDX    ".
            0x21 => (0, 0x6574_6E49, 0x2020_2020, 0x5844_546C),
            // Max extended leaf; long mode, NX, syscall; 48-bit addresses.
            0x8000_0000 => (0x8000_0008, 0, 0, 0),
            0x8000_0001 => (0, 0, 1, 1 << 11 | 1 << 20 | 1 << 29),
            0x8000_0008 => (0x3030, 0, 0, 0),
            _ => (0, 0, 0, 0),
        };
        self.vmcb_write(s.vmcb, vmcb::RAX, u64::from(a));
        s.regs.rbx = u64::from(b);
        s.regs.rcx = u64::from(c);
        s.regs.rdx = u64::from(d);
    }
}

/// Fills `r` with a TD exit of `reason` (status 0) and the given registers.
fn td_exit(r: &mut Regs, reason: u64, regs: Regs) -> TdxStatus {
    *r = Regs { rax: 0, ..regs };
    TdxStatus(reason)
}
