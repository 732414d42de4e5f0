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
//! * **Paging shim**: until the guest turns paging on, the CPU runs it with paging on over
//!   an identity page directory in the vCPU's second TDCX page (mapped, through a nested
//!   page table in its third, at a GPA of its own in the flash range below 4 GiB that the
//!   TD's memory never uses), and the engine keeps the
//!   guest's CR0, CR3 and CR4 itself (the CR intercepts are on only then). The guest sees
//!   the architectural state; the reason is QEMU 7.2's TCG, which skips the nested
//!   translation of a guest running with paging off (`get_physical_address` in
//!   `target/i386/tcg/sysemu/excp_helper.c`, fixed in later releases).
//! * **Nested page tables**: the S-EPT stays the truth; each S-EPT page doubles as the nested
//!   table of the same level (the root lives in the TD's first TDCS page). Entries are filled
//!   from the S-EPT on a nested page fault and dropped when TDH.MEM.RANGE.BLOCK blocks the
//!   S-EPT entry, so a blocked page is gone at the next VMRUN (the TLB is flushed on every
//!   VMRUN), as hardware forgets it after the TLB shoot-down. The shared half of the GPA
//!   space (shared bit set) has no nested mapping: an access there is a #VE (EPT violation),
//!   which the guest turns into a TDVMCALL #VE.RequestMMIO, as on TDX with a shared EPT
//!   entry whose suppress-#VE bit is clear.
//! * **TDCALL**: the instruction (`66 0F 01 CC`) raises #UD on this CPU; the engine reads the
//!   bytes at the guest's RIP and runs the leaf: TDG.VP.VMCALL (a TDVMCALL exit to the host
//!   with the registers the guest selected in RCX, the host's answer copied back on the next
//!   entry), TDG.VP.INFO, TDG.MR.RTMR.EXTEND, TDG.MR.REPORT, TDG.VP.VEINFO.GET,
//!   TDG.VP.CPUIDVE.SET, TDG.VM.RD/WR, TDG.MEM.PAGE.ACCEPT (an EPT-violation exit of type
//!   ACCEPT when the host has not added the page yet, the TDCALL run again on re-entry).
//!   Other leaves answer `TDX_OPERAND_INVALID`.
//! * **#VE**, as the TDX module raises it (`tdx_inject_ve` in `td_transitions/td_exit.c`):
//!   VE_INFO filled (exit reason, qualification, GPA, instruction length) and vector 20
//!   injected; a second #VE while VE_INFO is still valid is a #DF. Raised for port I/O
//!   (reason 30), the MSRs the VMM emulates (31/32), HLT (12), CPUID leaves
//!   0x40000000–0x4FFFFFFF (10), shared-memory accesses and PENDING private pages without
//!   SEPT_VE_DISABLE (48).
//! * **CPUID** is otherwise answered by the module (vendor GenuineIntel, leaf 1 with the
//!   x2APIC, TSC-deadline and hypervisor bits, leaf 0xB topology, leaf 0x15 the 25 MHz
//!   crystal, leaf 0x16 the TSC's frequency as base and maximum, leaf 0x21 "IntelTDX    ").
//! * **Interrupts**: the host posts vectors ([`EmulatedModule::post_interrupt`], the posted-
//!   interrupt request bits of hardware); the engine merges them into the virtual-APIC page
//!   ([`apic`]: TPR, PPR, EOI, ISR, IRR, the x2APIC registers TDX keeps in the CPU; the rest,
//!   timer included, are the VMM's through #VE) and injects the highest deliverable one
//!   with EVENTINJ when the guest has interrupts enabled and no interrupt shadow. Otherwise
//!   a VINTR intercept (V_IRQ that ignores V_TPR) reports the opening window. CR8 writes
//!   are intercepted: they set the TPR, and QEMU 7.2 aborts on a guest CR8 write while
//!   V_IRQ is pending.
//! * **Kicks**: checked between #VMEXITs; a guest is entered for at most
//!   [`MAX_EXITS_PER_ENTRY`] exits before it leaves with an external-interrupt exit.

pub mod apic;
pub mod decode;

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use tdx_abi::exit;
use tdx_abi::seamcall::Regs;
use tdx_abi::software::{GuestExitStats, exit_overhead_bucket};
use tdx_abi::td_params::{attributes, config_flags};
use tdx_abi::{Gpa, Hpa, OperandId, PageLevel, SeptState, TdxStatus};
use tdx_svm::GuestRegisters;

use self::apic::VirtualApicPage;
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
    /// The time-stamp counter (the guest's TSC too: no offset, no scaling).
    fn tsc(&self) -> u64;
    /// TSC ticks per millisecond (at least 1).
    fn tsc_per_ms(&self) -> u64;
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
    pub const INT_CTL: u64 = 0x060;
    pub const INT_STATE: u64 = 0x068;
    pub const EXIT_CODE: u64 = 0x070;
    pub const EXIT_INFO1: u64 = 0x078;
    pub const EXIT_INFO2: u64 = 0x080;
    pub const EXIT_INT_INFO: u64 = 0x088;
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
    pub const RSP: u64 = 0x5D8;
    pub const RAX: u64 = 0x5F8;
    pub const STAR: u64 = 0x600;
    pub const LSTAR: u64 = 0x608;
    pub const CSTAR: u64 = 0x610;
    pub const SFMASK: u64 = 0x618;
    pub const KERNEL_GS_BASE: u64 = 0x620;
    pub const SYSENTER_CS: u64 = 0x628;
    pub const SYSENTER_ESP: u64 = 0x630;
    pub const SYSENTER_EIP: u64 = 0x638;
    pub const G_PAT: u64 = 0x668;

    /// Exception intercept: #UD (vector 6).
    pub const EXCEPTION_UD: u32 = 1 << 6;
    /// CR intercepts of the paging shim: reads and writes of CR0, CR3 and CR4.
    pub const SHIM_CR: u32 = ((1 | 1 << 3 | 1 << 4) * 0x1_0001) | CR8_WRITE;
    /// Misc intercepts 1: INTR, NMI, SMI, INIT, CPUID, INVD, HLT, IOIO_PROT, MSR_PROT,
    /// SHUTDOWN.
    pub const MISC1: u32 =
        1 | 1 << 1 | 1 << 2 | 1 << 3 | 1 << 18 | 1 << 22 | 1 << 24 | 1 << 27 | 1 << 28 | 1 << 31;
    /// Misc intercepts 1: PAUSE (TDs with more than one vCPU: a spin-wait on a sibling).
    pub const INTERCEPT_PAUSE: u32 = 1 << 23;
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
    /// INT_CTL: V_INTR_MASKING, so the guest's CR8 and RFLAGS.IF never reach the host.
    pub const V_INTR_MASKING: u64 = 1 << 24;
    /// INT_CTL: a virtual interrupt request (V_IRQ) of the highest priority that ignores
    /// V_TPR, used only to learn when the guest opens an interrupt window.
    pub const V_IRQ_WINDOW: u64 = 1 << 8 | 0xF << 16 | 1 << 20;
    /// INT_CTL: V_TPR, the guest's CR8.
    pub const V_TPR: u64 = 0xF;
    /// Misc intercepts 1: VINTR (the guest can take the virtual interrupt).
    pub const INTERCEPT_VINTR: u32 = 1 << 4;
    /// CR intercept: writes of CR8.
    pub const CR8_WRITE: u32 = 1 << 24;

    pub const EXIT_CR_READ_FIRST: u64 = 0x00;
    pub const EXIT_CR8_WRITE: u64 = 0x18;
    pub const EXIT_CR_WRITE_LAST: u64 = 0x1F;
    pub const EXIT_VINTR: u64 = 0x64;
    pub const EXIT_EXCEPTION_UD: u64 = 0x46;
    pub const EXIT_INTR: u64 = 0x60;
    pub const EXIT_NMI: u64 = 0x61;
    pub const EXIT_CPUID: u64 = 0x72;
    pub const EXIT_PAUSE: u64 = 0x77;
    pub const EXIT_HLT: u64 = 0x78;
    pub const EXIT_IOIO: u64 = 0x7B;
    pub const EXIT_MSR: u64 = 0x7C;
    pub const EXIT_SHUTDOWN: u64 = 0x7F;
    pub const EXIT_WBINVD: u64 = 0x89;
    pub const EXIT_NPF: u64 = 0x400;
    pub const EXIT_INVALID: u64 = u64::MAX;

    /// EVENTINJ/EXITINTINFO: valid, exception type, with an error code.
    pub const EVENT_VALID: u64 = 1 << 31;
    pub const INJECT_EXCEPTION: u64 = EVENT_VALID | 3 << 8;
    pub const INJECT_ERROR_CODE: u64 = 1 << 11;
}

/// TDX exit reasons the #VE information carries (VMX basic exit reasons, Intel SDM vol. 3C
/// appendix C).
mod ve_reason {
    pub const CPUID: u32 = 10;
    pub const HLT: u32 = 12;
    pub const IO: u32 = 30;
    pub const RDMSR: u32 = 31;
    pub const WRMSR: u32 = 32;
    pub const EPT_VIOLATION: u32 = 48;
}

/// The #VE vector.
const VE_VECTOR: u8 = 20;
/// The #DF vector.
const DF_VECTOR: u8 = 8;
/// The #GP vector.
const GP_VECTOR: u8 = 13;
/// The #UD vector.
const UD_VECTOR: u8 = 6;

/// MSRs the module answers from the VMCB (the rest of the TD's MSRs either belong to the
/// virtual APIC or are the VMM's, reached through #VE).
mod msr {
    pub const EFER: u32 = 0xC000_0080;
    pub const STAR: u32 = 0xC000_0081;
    pub const LSTAR: u32 = 0xC000_0082;
    pub const CSTAR: u32 = 0xC000_0083;
    pub const SFMASK: u32 = 0xC000_0084;
    pub const FS_BASE: u32 = 0xC000_0100;
    pub const GS_BASE: u32 = 0xC000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xC000_0102;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const TSC: u32 = 0x10;
    pub const MISC_ENABLE: u32 = 0x1A0;
    pub const ARCH_CAPABILITIES: u32 = 0x10A;
    pub const DEBUGCTL: u32 = 0x1D9;
    pub const PAT: u32 = 0x277;
}

/// IA32_MISC_ENABLE as a TD reads it: fast strings on, BTS and PEBS unavailable, perfmon
/// not available (TDX module 1.5 `td_msr_access.c`, `rdmsr_ia32_misc_enables`, for a TD
/// without ATTRIBUTES.PERFMON).
const TD_MISC_ENABLE: u64 = 1 | 1 << 11 | 1 << 12;

/// EFER bits.
/// The highest 2 MiB GPA range a paging shim may use (4 GiB − 4 MiB; firmware images take
/// the top, and ranges they map are skipped); see `shim_slot`.
const SHIM_SEARCH_TOP: u64 = 0xFFC0_0000;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_SVME: u64 = 1 << 12;
/// The TDX initial EFER: SCE, LME, NXE.
const EFER_TD_INITIAL: u64 = 0x901;
/// CR0.PG, CR4.PAE, CR4.PSE.
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_PSE: u64 = 1 << 4;
/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// Nested page table entry bits: present, writable, user (nested walks are user accesses),
/// large page.
const NPT_PRESENT: u64 = 1;
const NPT_RW: u64 = 1 << 1;
const NPT_US: u64 = 1 << 2;
const NPT_PS: u64 = 1 << 7;
/// TDCALL leaves the engine runs.
const TDG_VP_VMCALL: u64 = 0;
const TDG_VP_INFO: u64 = 1;
const TDG_MR_RTMR_EXTEND: u64 = 2;
const TDG_VP_VEINFO_GET: u64 = 3;
const TDG_MR_REPORT: u64 = 4;
const TDG_VP_CPUIDVE_SET: u64 = 5;
const TDG_VM_RD: u64 = 7;
const TDG_VM_WR: u64 = 8;
/// VMCB save area: CPL (1 byte).
const VMCB_CPL: u64 = 0x4CB;
const TDG_MEM_PAGE_ACCEPT: u64 = 6;
/// The TD's CPUID(1).EAX (family 6, model 0x8F stepping 8: a 4th-generation Xeon, the first
/// with TDX), which the guest also finds in RDX at reset.
const TD_CPUID1_EAX: u32 = 0x0008_06F8;
/// The TSC's crystal as TDX reports it in CPUID 0x15 (25 MHz).
const CRYSTAL_HZ: u64 = 25_000_000;

/// What the vCPU owes the guest on the next entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    /// Nothing: resume.
    None,
    /// A TDG.VP.VMCALL whose RCX selected these registers: copy the host's answer in.
    Vmcall { mask: u64 },
}

/// The #VE information of a vCPU (TDVPS VE_INFO), valid until TDG.VP.VEINFO.GET.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct VeInfo {
    reason: u32,
    qualification: u64,
    gla: u64,
    gpa: u64,
    /// Instruction length (31:0) and information (63:32).
    length_and_info: u64,
}

/// The guest's view of paging while it runs with paging off (see the module doc).
#[derive(Clone, Copy, Debug)]
struct PagingShim {
    /// The nested 2 MiB entry that maps the shim's page table: table page and index.
    npt_page: u64,
    npt_index: usize,
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
}

/// The engine's exit statistics (see [`GuestExitStats`]).
pub struct ExitStatsCells {
    exits: AtomicU64,
    buckets: [AtomicU64; 64],
    accepted_bytes: AtomicU64,
    accept_ns: AtomicU64,
}

impl ExitStatsCells {
    /// No exits yet.
    pub const fn new() -> ExitStatsCells {
        ExitStatsCells {
            exits: AtomicU64::new(0),
            buckets: [const { AtomicU64::new(0) }; 64],
            accepted_bytes: AtomicU64::new(0),
            accept_ns: AtomicU64::new(0),
        }
    }

    fn record_accept(&self, bytes: u64, ns: u64) {
        self.accepted_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.accept_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn record(&self, outside_ns: u64) {
        let bucket = exit_overhead_bucket(outside_ns);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> GuestExitStats {
        GuestExitStats {
            exits: self.exits.load(Ordering::Relaxed),
            overhead_buckets: core::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            accepted_bytes: self.accepted_bytes.load(Ordering::Relaxed),
            accept_ns: self.accept_ns.load(Ordering::Relaxed),
        }
    }
}

impl Default for ExitStatsCells {
    fn default() -> Self {
        Self::new()
    }
}

/// A vCPU's engine state (kept with its TDVPS).
pub struct SvmVcpu {
    vmcb: Hpa,
    regs: GuestRegisters,
    pending: Pending,
    ve: Option<VeInfo>,
    apic: VirtualApicPage,
    shim: Option<PagingShim>,
    /// TSC at the last #VMEXIT, while the time until the next VMRUN counts as exit overhead.
    exited_at: Option<u64>,
    /// The GPA of a TDG.MEM.PAGE.ACCEPT that left for the host to add the page, and the TSC
    /// of its first #VMEXIT.
    accept_since: Option<(u64, u64)>,
    /// TDG.VP.CPUIDVE.SET: every CPUID raises #VE at CPL 0 (bit 0) and CPL 3 (bit 1).
    cpuid_ve: u64,
}

impl SvmVcpu {
    /// VCPU_STATE_DETAILS.VMXIP: a virtual interrupt is pending whose priority class is
    /// above the processor priority (RVI above PPR; intel/tdx-module `metadata_vp.c`).
    pub(crate) fn virtual_interrupt_pending(&self) -> bool {
        self.apic.deliverable().is_some()
    }
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

/// What handling one #VMEXIT leads to.
enum Next {
    /// Run the guest again.
    Resume,
    /// Leave TDH.VP.ENTER with this TD exit.
    Exit(u64, Regs),
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

    /// Where vCPU `index`'s paging shim maps its page directory: the `index`-th 2 MiB GPA
    /// range below 4 GiB, counting down from the top, that the S-EPT leaves FREE in the
    /// table that maps the firmware (the flash range holds no RAM, and a TD never accepts
    /// memory there). Each vCPU gets its own range, so vCPUs whose shims overlap in time
    /// (TDVF's application processors wait in 32-bit mode for the boot processor) and the
    /// boot processor's own accepts never meet. Returns the nested table page and index of
    /// that 2 MiB entry, and the range's GPA.
    fn shim_slot(&self, tree: &SeptTree, index: u32) -> Option<(u64, usize, u64)> {
        let top = tree.walk(Gpa(SHIM_SEARCH_TOP), PageLevel::L2M).ok()?;
        let page = top.table.npt_page.load(Ordering::Acquire);
        if page == 0 {
            return None;
        }
        let mut free = (0..=top.index).rev().filter(|i| {
            sept::state_of(top.table.entries[*i].load(Ordering::Acquire)) == SeptState::Free
        });
        let slot = free.nth(index as usize)?;
        let gpa = (SHIM_SEARCH_TOP & !((1 << 30) - 1)) | (slot as u64) << 21;
        Some((page, slot, gpa))
    }

    /// The vCPU's engine state, set up on its first entry.
    fn svm_vcpu(&self, td: &Td, vcpu: &Vcpu, cpu: &dyn GuestCpu) -> Result<SvmVcpu, TdxStatus> {
        let (vmcb, shim_pages) = {
            let pages = vcpu.tdcx_pages.lock();
            (
                pages
                    .first()
                    .copied()
                    .ok_or(TdxStatus::TDCX_NUM_INCORRECT)?,
                pages.get(1).copied().zip(pages.get(2).copied()),
            )
        };
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
        // Map what the S-EPT maps now (the TD's firmware) before the first VMRUN: it saves a
        // nested fault per firmware page, and builds the nested path the shim's slot uses.
        let mut mapped = alloc::vec::Vec::new();
        super::td::for_each_leaf(tree, |gpa, _level, word| {
            if sept::state_of(word) == SeptState::Mapped {
                mapped.push(gpa.0);
            }
        });
        for gpa in &mapped {
            let _ = self.npt_fill(tree, *gpa);
        }
        let vmcb = Hpa(vmcb);
        self.zero_phys(vmcb.0, 4096);
        let (iopm, msrpm) = cpu.intercept_all_maps();
        self.vmcb_write32(vmcb, vmcb::INTERCEPT_EXCEPTIONS, vmcb::EXCEPTION_UD);
        // A vCPU alone in its TD has no sibling to wait for: its PAUSEs stay in the guest.
        let siblings = td.cfg.get().is_some_and(|c| c.params.max_vcpus > 1);
        let pause = if siblings { vmcb::INTERCEPT_PAUSE } else { 0 };
        self.vmcb_write32(vmcb, vmcb::INTERCEPT_MISC1, vmcb::MISC1 | pause);
        self.vmcb_write32(vmcb, vmcb::INTERCEPT_MISC2, vmcb::MISC2);
        self.vmcb_write(vmcb, vmcb::IOPM_BASE, iopm.0);
        self.vmcb_write(vmcb, vmcb::MSRPM_BASE, msrpm.0);
        self.vmcb_write32(vmcb, vmcb::ASID, 1);
        self.mem.write(Hpa(vmcb.0 + vmcb::TLB_CONTROL), &[1]);
        self.vmcb_write(vmcb, vmcb::INT_CTL, vmcb::V_INTR_MASKING);
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
        let (cr0, cr3, cr4) = (0x31, 0, 0x40);
        // The paging shim: an identity page directory of 4 MiB pages (present, writable,
        // user, large) at a free GPA next to the TD's initial pages.
        let shim = match (shim_pages, self.shim_slot(tree, vcpu.index())) {
            (Some((pd, pt)), Some((npt_page, npt_index, slot))) => {
                let mut dir = [0u8; 4096];
                for (i, e) in dir.chunks_exact_mut(4).enumerate() {
                    let pde = (i as u32) << 22 | 0x87;
                    e.copy_from_slice(&pde.to_le_bytes());
                }
                self.mem.write(Hpa(pd), &dir);
                // A nested page table of its own maps the directory at the range's start.
                let mut table = [0u8; 4096];
                table[..8].copy_from_slice(&(pd | NPT_PRESENT | NPT_RW | NPT_US).to_le_bytes());
                self.mem.write(Hpa(pt), &table);
                self.write_npt_entry(npt_page, npt_index, pt | NPT_PRESENT | NPT_RW | NPT_US);
                self.vmcb_write32(vmcb, vmcb::INTERCEPT_CR, vmcb::SHIM_CR);
                self.vmcb_write(vmcb, vmcb::CR0, cr0 | CR0_PG);
                self.vmcb_write(vmcb, vmcb::CR3, slot);
                self.vmcb_write(vmcb, vmcb::CR4, cr4 | CR4_PSE);
                self.vmcb_write(vmcb, vmcb::EFER, EFER_TD_INITIAL & !EFER_LME | EFER_SVME);
                Some(PagingShim {
                    npt_page,
                    npt_index,
                    cr0,
                    cr3,
                    cr4,
                    efer: EFER_TD_INITIAL,
                })
            }
            _ => {
                self.vmcb_write32(vmcb, vmcb::INTERCEPT_CR, vmcb::CR8_WRITE);
                self.vmcb_write(vmcb, vmcb::CR0, cr0);
                self.vmcb_write(vmcb, vmcb::CR3, cr3);
                self.vmcb_write(vmcb, vmcb::CR4, cr4);
                // EFER.SVME must be set for VMRUN; the guest never sees it.
                self.vmcb_write(vmcb, vmcb::EFER, EFER_TD_INITIAL | EFER_SVME);
                None
            }
        };
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
            rsi: u64::from(vcpu.index()),
            ..GuestRegisters::default()
        };
        Ok(SvmVcpu {
            vmcb,
            regs,
            pending: Pending::None,
            ve: None,
            apic: VirtualApicPage::default(),
            shim,
            exited_at: None,
            accept_since: None,
            cpuid_ve: 0,
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
        // Zero-step tracking (`td_entry_stepping_filter`, intel/tdx-module
        // `src/td_transitions/td_exit_stepping.c`): the RIP this entry enters at.
        let entry_rip = self.vmcb_read(s.vmcb, vmcb::RIP);
        vcpu.guest.lock().stepping.entered(entry_rip);
        for _ in 0..MAX_EXITS_PER_ENTRY {
            if vcpu.kick.swap(false, Ordering::AcqRel) {
                return Ok(td_exit(r, exit::EXTERNAL_INTERRUPT, Regs::default()));
            }
            self.deliver_interrupt(s, vcpu);
            if let Some(at) = s.exited_at.take() {
                self.exit_stats.record(ns_since(cpu, at));
            }
            cpu.run(s.vmcb, &mut s.regs);
            s.exited_at = Some(cpu.tsc());
            self.exit_stats.exits.fetch_add(1, Ordering::Relaxed);
            // An event whose delivery the exit interrupted is delivered again.
            let interrupted = self.vmcb_read(s.vmcb, vmcb::EXIT_INT_INFO);
            let reinject = if interrupted & vmcb::EVENT_VALID != 0 {
                interrupted
            } else {
                0
            };
            self.vmcb_write(s.vmcb, vmcb::EVENT_INJ, reinject);
            // `vmexit_stepping_filter`: any exit after progress ends the zero-step tracking.
            let rip = self.vmcb_read(s.vmcb, vmcb::RIP);
            vcpu.guest.lock().stepping.exited(rip);
            match self.handle_exit(td, tree, vcpu, s, cpu)? {
                Next::Resume => {}
                Next::Exit(reason, out) => {
                    if reason == exit::TDCALL && out.r11 == exit::TDVMCALL_HLT {
                        // A halt is idle time, not exit overhead.
                        s.exited_at = None;
                    }
                    return Ok(td_exit(r, reason, out));
                }
            }
        }
        Ok(td_exit(r, exit::EXTERNAL_INTERRUPT, Regs::default()))
    }

    /// Handles one #VMEXIT.
    fn handle_exit(
        &self,
        td: &Td,
        tree: &SeptTree,
        vcpu: &Vcpu,
        s: &mut SvmVcpu,
        cpu: &dyn GuestCpu,
    ) -> Result<Next, TdxStatus> {
        let code = self.vmcb_read(s.vmcb, vmcb::EXIT_CODE);
        match code {
            vmcb::EXIT_CR8_WRITE => self.cr8_write(tree, s),
            vmcb::EXIT_CR_READ_FIRST..=vmcb::EXIT_CR_WRITE_LAST => self.shim_cr_access(tree, s),
            // The window opened: the next delivery attempt injects.
            vmcb::EXIT_VINTR => {}
            vmcb::EXIT_NPF => return Ok(self.nested_fault(td, tree, vcpu, s)),
            vmcb::EXIT_EXCEPTION_UD => {
                if let Some((reason, out)) = self.tdcall(td, tree, vcpu, s, cpu) {
                    return Ok(Next::Exit(reason, out));
                }
            }
            vmcb::EXIT_CPUID => {
                let leaf = self.vmcb_read(s.vmcb, vmcb::RAX) & 0xFFFF_FFFF;
                let cpl = self.vmcb_read(s.vmcb, VMCB_CPL) & 3;
                let all_to_ve = match cpl {
                    0 => s.cpuid_ve & 1 != 0,
                    3 => s.cpuid_ve & 2 != 0,
                    _ => false,
                };
                if all_to_ve || (0x4000_0000..=0x4FFF_FFFF).contains(&leaf) {
                    self.raise_ve(s, ve_reason::CPUID, 0, 0, 2);
                } else {
                    self.cpuid(s, vcpu, cpu);
                    self.advance(s, 2);
                }
            }
            vmcb::EXIT_HLT => self.raise_ve(s, ve_reason::HLT, 0, 0, 1),
            vmcb::EXIT_IOIO => {
                let info = self.vmcb_read(s.vmcb, vmcb::EXIT_INFO1);
                let next_rip = self.vmcb_read(s.vmcb, vmcb::EXIT_INFO2);
                let rip = self.vmcb_read(s.vmcb, vmcb::RIP);
                let size: u64 = match (info >> 4) & 7 {
                    1 => 1,
                    2 => 2,
                    _ => 4,
                };
                // VMX I/O qualification: size − 1, IN, string, REP, port.
                let qual = (size - 1)
                    | (info & 1) << 3
                    | ((info >> 2) & 1) << 4
                    | ((info >> 3) & 1) << 5
                    | (info >> 16 & 0xFFFF) << 16;
                self.raise_ve(s, ve_reason::IO, qual, 0, next_rip.wrapping_sub(rip) & 0xF);
            }
            vmcb::EXIT_MSR => {
                let write = self.vmcb_read(s.vmcb, vmcb::EXIT_INFO1) & 1 != 0;
                self.msr_access(s, cpu, write);
            }
            vmcb::EXIT_WBINVD => self.advance(s, 2),
            vmcb::EXIT_SHUTDOWN => {
                let reason = TdxStatus::NON_RECOVERABLE_VCPU.0 | exit::TRIPLE_FAULT;
                return Ok(Next::Exit(reason, Regs::default()));
            }
            // A spin-wait: give the runner back, as a pause-loop exit would, so a vCPU that
            // waits for another one bound to the same runner does not burn its time slice.
            // The host sees it like a host interrupt.
            vmcb::EXIT_PAUSE => {
                self.advance(s, 2);
                return Ok(Next::Exit(exit::EXTERNAL_INTERRUPT, Regs::default()));
            }
            vmcb::EXIT_INTR | vmcb::EXIT_NMI => {
                return Ok(Next::Exit(exit::EXTERNAL_INTERRUPT, Regs::default()));
            }
            vmcb::EXIT_INVALID => return Err(TdxStatus::NON_RECOVERABLE_VCPU),
            // VMMCALL, the SVM instructions, MONITOR/MWAIT, XSETBV: undefined in a TD here.
            _ => self.inject_exception(s, UD_VECTOR, None),
        }
        Ok(Next::Resume)
    }

    /// A nested page fault: fill from the S-EPT, or the TD exit or #VE TDX would make.
    fn nested_fault(&self, td: &Td, tree: &SeptTree, vcpu: &Vcpu, s: &mut SvmVcpu) -> Next {
        let gpa = self.vmcb_read(s.vmcb, vmcb::EXIT_INFO2);
        let info = self.vmcb_read(s.vmcb, vmcb::EXIT_INFO1);
        // EPT qualification: read, write, fetch.
        let qual = if info & 2 != 0 {
            exit::QUAL_WRITE
        } else if info & 16 != 0 {
            1 << 2
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
            if self.link_shared_ept(vcpu, s, gpa) {
                return Next::Resume;
            }
            // No shared EPT entry: MMIO for the guest to emulate. VE_INFO carries the linear
            // address too (TDX takes it from the VMCS; SVM's nested fault has none, so the
            // engine decodes the access).
            let gla = self.access_linear_address(tree, s).unwrap_or(0);
            self.raise_ve(s, ve_reason::EPT_VIOLATION, qual, gpa, 0);
            if let Some(ve) = s.ve.as_mut().filter(|ve| ve.gpa == gpa) {
                ve.gla = gla;
            }
            return Next::Resume;
        }
        // A TD exit on a private GPA counts toward the zero-step mitigation
        // (`td_exit_epf_stepping_log` in `td_ept_violation_exit`, intel/tdx-module
        // `src/td_dispatcher/vm_exits/td_ept_violation.c`); a #VE does not.
        let log_epf = || {
            let rip = self.vmcb_read(s.vmcb, vmcb::RIP);
            vcpu.guest.lock().stepping.log_epf(
                rip,
                gpa & !0xFFF,
                self.cfg.limits.zero_step_threshold,
            );
        };
        match self.npt_fill(tree, gpa) {
            Fill::Mapped => Next::Resume,
            Fill::Missing => {
                log_epf();
                Next::Exit(exit::EPT_VIOLATION, ept(exit::EXT_QUAL_TYPE_NORMAL))
            }
            Fill::Pending => {
                let attrs = td.cfg.get().map_or(0, |c| c.params.attributes);
                if attrs & attributes::SEPT_VE_DISABLE != 0 {
                    log_epf();
                    Next::Exit(
                        exit::EPT_VIOLATION,
                        ept(exit::EXT_QUAL_TYPE_PENDING_EPT_VIOLATION),
                    )
                } else {
                    self.raise_ve(s, ve_reason::EPT_VIOLATION, qual, gpa, 0);
                    Next::Resume
                }
            }
        }
    }

    /// A nested fault on shared `gpa`: links the host's shared EPT into the shared half of
    /// the nested root and says whether the host maps `gpa` (then the guest runs again and
    /// the CPU walks the host's tables). The host builds its shared EPT with read, write and
    /// execute set in every entry, so each entry reads as a present, writable, user entry in
    /// the nested format (bits 2:0, large page bit 7 and the address bits are in the same
    /// places); EPT's memory-type bits land on cache-control bits this CPU's nested walk does
    /// not act on. As on TDX, the module does not vet the host's shared mappings.
    fn link_shared_ept(&self, vcpu: &Vcpu, s: &SvmVcpu, gpa: u64) -> bool {
        let eptp = vcpu.shared_eptp.load(Ordering::Acquire);
        if eptp == 0 {
            return false;
        }
        let read = |table: u64, index: u64| {
            let mut e = [0u8; 8];
            self.mem.read(Hpa(table + index * 8), &mut e);
            u64::from_le_bytes(e)
        };
        let root = eptp & 0x000F_FFFF_FFFF_F000;
        let top = (gpa >> 39) & 511;
        let entry = read(root, top);
        if entry & 7 == 0 {
            return false;
        }
        // The leaf must be there too, or the access is MMIO.
        let mut table = entry & 0x000F_FFFF_FFFF_F000;
        for shift in [30u32, 21, 12] {
            let e = read(table, (gpa >> shift) & 511);
            if e & 7 == 0 {
                return false;
            }
            if shift == 12 || e & NPT_PS != 0 {
                break;
            }
            table = e & 0x000F_FFFF_FFFF_F000;
        }
        let nested_root = self.vmcb_read(s.vmcb, vmcb::N_CR3);
        let linked = read(nested_root, top);
        let want = entry & 0x000F_FFFF_FFFF_F000 | NPT_PRESENT | NPT_RW | NPT_US;
        if linked == want {
            // Linked and mapped, yet the walk faulted (the TLB is flushed at every VMRUN):
            // nothing to fix here; the guest gets the #VE.
            return false;
        }
        self.write_npt_entry(nested_root, top as usize, want);
        true
    }

    /// Raises a #VE with this exit information (or #DF if the guest has not read the last
    /// one yet), as `tdx_inject_ve` does.
    fn raise_ve(&self, s: &mut SvmVcpu, reason: u32, qualification: u64, gpa: u64, len: u64) {
        if s.ve.is_some() {
            self.inject_exception(s, DF_VECTOR, Some(0));
            return;
        }
        s.ve = Some(VeInfo {
            reason,
            qualification,
            gla: 0,
            gpa,
            length_and_info: len,
        });
        self.inject_exception(s, VE_VECTOR, None);
    }

    /// Merges the interrupts the host posted, then injects the highest deliverable one if
    /// the guest can take it now and no other event is being injected; otherwise asks for a
    /// VINTR exit when the guest opens an interrupt window.
    fn deliver_interrupt(&self, s: &mut SvmVcpu, vcpu: &Vcpu) {
        let posted: [u64; 4] = core::array::from_fn(|i| vcpu.pir[i].swap(0, Ordering::AcqRel));
        if posted != [0; 4] {
            s.apic.merge_posted(posted);
        }
        let vector = s.apic.deliverable();
        let blocked = vector.is_some()
            && (self.vmcb_read(s.vmcb, vmcb::EVENT_INJ) & vmcb::EVENT_VALID != 0
                || self.vmcb_read(s.vmcb, vmcb::RFLAGS) & RFLAGS_IF == 0
                || self.vmcb_read(s.vmcb, vmcb::INT_STATE) & 1 != 0);
        // The window request (V_IRQ, VINTR intercept) changes only when it must: this runs
        // before every VMRUN. QEMU 7.2 aborts on a guest CR8 write while V_IRQ is pending,
        // so CR8 writes are always intercepted (see `cr8_write`).
        let int_ctl = self.vmcb_read(s.vmcb, vmcb::INT_CTL);
        if (int_ctl & vmcb::V_IRQ_WINDOW == vmcb::V_IRQ_WINDOW) != blocked {
            let misc1 = self.vmcb_read(s.vmcb, vmcb::INTERCEPT_MISC1) as u32;
            let (window, misc1) = if blocked {
                (vmcb::V_IRQ_WINDOW, misc1 | vmcb::INTERCEPT_VINTR)
            } else {
                (0, misc1 & !vmcb::INTERCEPT_VINTR)
            };
            self.vmcb_write(
                s.vmcb,
                vmcb::INT_CTL,
                int_ctl & !vmcb::V_IRQ_WINDOW | window,
            );
            self.vmcb_write32(s.vmcb, vmcb::INTERCEPT_MISC1, misc1);
        }
        let Some(vector) = vector.filter(|_| !blocked) else {
            return;
        };
        self.vmcb_write(
            s.vmcb,
            vmcb::EVENT_INJ,
            vmcb::EVENT_VALID | u64::from(vector),
        );
        s.apic.acknowledge(vector);
    }

    /// `MOV CR8, reg`: the task priority goes to the virtual APIC (CR8 is TPR bits 7:4) and
    /// to V_TPR, which the guest's CR8 reads return.
    fn cr8_write(&self, tree: &SeptTree, s: &mut SvmVcpu) {
        let mut bytes = [0u8; 4];
        let op = self
            .fetch(tree, s, &mut bytes)
            .and_then(|()| decode::mov_cr(&bytes, true))
            .filter(|op| op.write && op.cr == 8);
        let Some(op) = op else {
            self.inject_exception(s, UD_VECTOR, None);
            return;
        };
        let value = self.gpr(s, op.gpr);
        if value > 0xF {
            self.inject_gp(s);
            return;
        }
        let _ = s.apic.write(apic::TPR, value << 4);
        let int_ctl = self.vmcb_read(s.vmcb, vmcb::INT_CTL) & !vmcb::V_TPR;
        self.vmcb_write(s.vmcb, vmcb::INT_CTL, int_ctl | value);
        self.advance(s, op.len);
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
        self.inject_exception(s, GP_VECTOR, Some(0));
    }

    /// General register `n` (ModRM numbering) of the guest.
    fn gpr(&self, s: &SvmVcpu, n: u8) -> u64 {
        let g = &s.regs;
        match n {
            0 => self.vmcb_read(s.vmcb, vmcb::RAX),
            1 => g.rcx,
            2 => g.rdx,
            3 => g.rbx,
            4 => self.vmcb_read(s.vmcb, vmcb::RSP),
            5 => g.rbp,
            6 => g.rsi,
            7 => g.rdi,
            8 => g.r8,
            9 => g.r9,
            10 => g.r10,
            11 => g.r11,
            12 => g.r12,
            13 => g.r13,
            14 => g.r14,
            _ => g.r15,
        }
    }

    fn set_gpr(&self, s: &mut SvmVcpu, n: u8, value: u64) {
        let g = &mut s.regs;
        let slot = match n {
            0 => return self.vmcb_write(s.vmcb, vmcb::RAX, value),
            4 => return self.vmcb_write(s.vmcb, vmcb::RSP, value),
            1 => &mut g.rcx,
            2 => &mut g.rdx,
            3 => &mut g.rbx,
            5 => &mut g.rbp,
            6 => &mut g.rsi,
            7 => &mut g.rdi,
            8 => &mut g.r8,
            9 => &mut g.r9,
            10 => &mut g.r10,
            11 => &mut g.r11,
            12 => &mut g.r12,
            13 => &mut g.r13,
            14 => &mut g.r14,
            _ => &mut g.r15,
        };
        *slot = value;
    }

    /// A CR0/CR3/CR4 access while the paging shim runs: the guest's own values are read and
    /// written; turning paging on ends the shim.
    fn shim_cr_access(&self, tree: &SeptTree, s: &mut SvmVcpu) {
        let Some(mut shim) = s.shim else {
            self.inject_exception(s, UD_VECTOR, None);
            return;
        };
        let mut bytes = [0u8; 4];
        // With the shim, linear addresses are physical (see `linear_to_gpa`).
        let fetched = self.fetch(tree, s, &mut bytes[..3]);
        let Some(op) = fetched.and_then(|()| decode::mov_cr(&bytes, false)) else {
            // CLTS, LMSW, SMSW with paging off: not supported by the shim.
            self.inject_exception(s, UD_VECTOR, None);
            return;
        };
        if !op.write {
            let value = match op.cr {
                0 => shim.cr0,
                3 => shim.cr3,
                _ => shim.cr4,
            };
            self.set_gpr(s, op.gpr, value & 0xFFFF_FFFF);
            self.advance(s, op.len);
            return;
        }
        let value = self.gpr(s, op.gpr) & 0xFFFF_FFFF;
        match op.cr {
            3 => shim.cr3 = value,
            4 => shim.cr4 = value,
            _ => shim.cr0 = value,
        }
        self.advance(s, op.len);
        if op.cr == 0 && value & CR0_PG != 0 {
            let long = shim.efer & EFER_LME != 0;
            if long && shim.cr4 & CR4_PAE == 0 {
                self.inject_gp(s);
                return;
            }
            let efer = shim.efer | EFER_SVME | if long { EFER_LMA } else { 0 };
            self.vmcb_write(s.vmcb, vmcb::EFER, efer);
            self.vmcb_write(s.vmcb, vmcb::CR4, shim.cr4);
            self.vmcb_write(s.vmcb, vmcb::CR3, shim.cr3);
            self.vmcb_write(s.vmcb, vmcb::CR0, shim.cr0);
            self.vmcb_write32(s.vmcb, vmcb::INTERCEPT_CR, vmcb::CR8_WRITE);
            self.write_npt_entry(shim.npt_page, shim.npt_index, 0);
            s.shim = None;
            return;
        }
        self.vmcb_write(s.vmcb, vmcb::CR0, shim.cr0 | CR0_PG);
        self.vmcb_write(s.vmcb, vmcb::CR4, shim.cr4 & !CR4_PAE | CR4_PSE);
        s.shim = Some(shim);
    }

    /// RDMSR/WRMSR: the module's own MSRs from the VMCB, the virtualized x2APIC registers
    /// from the virtual-APIC page, everything else the VMM's (#VE).
    fn msr_access(&self, s: &mut SvmVcpu, cpu: &dyn GuestCpu, write: bool) {
        let index = (s.regs.rcx & 0xFFFF_FFFF) as u32;
        let value = (s.regs.rdx << 32) | (self.vmcb_read(s.vmcb, vmcb::RAX) & 0xFFFF_FFFF);
        let in_vmcb = match index {
            msr::STAR => Some(vmcb::STAR),
            msr::LSTAR => Some(vmcb::LSTAR),
            msr::CSTAR => Some(vmcb::CSTAR),
            msr::SFMASK => Some(vmcb::SFMASK),
            msr::FS_BASE => Some(vmcb::FS + 8),
            msr::GS_BASE => Some(vmcb::GS + 8),
            msr::KERNEL_GS_BASE => Some(vmcb::KERNEL_GS_BASE),
            msr::SYSENTER_CS => Some(vmcb::SYSENTER_CS),
            msr::SYSENTER_ESP => Some(vmcb::SYSENTER_ESP),
            msr::SYSENTER_EIP => Some(vmcb::SYSENTER_EIP),
            _ => None,
        };
        let read: Result<Option<u64>, ()> = if let Some(offset) = in_vmcb {
            if write {
                self.vmcb_write(s.vmcb, offset, value);
                Ok(None)
            } else {
                Ok(Some(self.vmcb_read(s.vmcb, offset)))
            }
        } else if index == msr::EFER {
            let efer = s.shim.map_or_else(
                || self.vmcb_read(s.vmcb, vmcb::EFER) & !EFER_SVME,
                |shim| shim.efer,
            );
            if !write {
                Ok(Some(efer))
            } else if value & !(EFER_LMA | 1) == efer & !(EFER_LMA | 1) {
                // TDX fixes LME and NXE; SCE and LMA writes that change nothing are fine.
                Ok(None)
            } else {
                Err(())
            }
        } else if index == msr::TSC && !write {
            Ok(Some(cpu.tsc()))
        } else if !write && index == msr::MISC_ENABLE {
            // Read in the module (Linux's `verify_cpu` does so before it has an IDT);
            // writes are the VMM's.
            Ok(Some(TD_MISC_ENABLE))
        } else if !write && (index == msr::ARCH_CAPABILITIES || index == msr::DEBUGCTL) {
            // ARCH_CAPABILITIES: the virtual value TDH.MNG.INIT computes (nothing claimed
            // here); DEBUGCTL: no debug features enabled.
            Ok(Some(0))
        } else if index == msr::PAT {
            // The TD's PAT lives in the guest state (VMCB G_PAT under nested paging).
            if write {
                self.vmcb_write(s.vmcb, vmcb::G_PAT, value);
                Ok(None)
            } else {
                Ok(Some(self.vmcb_read(s.vmcb, vmcb::G_PAT)))
            }
        } else if apic::is_virtualized(index) {
            if write {
                s.apic.write(index, value).map(|()| None).map_err(|_| ())
            } else {
                s.apic.read(index).map(Some).map_err(|_| ())
            }
        } else {
            let reason = if write {
                ve_reason::WRMSR
            } else {
                ve_reason::RDMSR
            };
            self.raise_ve(s, reason, 0, 0, 2);
            return;
        };
        match read {
            Err(()) => self.inject_gp(s),
            Ok(got) => {
                if let Some(v) = got {
                    self.vmcb_write(s.vmcb, vmcb::RAX, v & 0xFFFF_FFFF);
                    s.regs.rdx = v >> 32;
                }
                self.advance(s, 2);
            }
        }
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
        if take(5) {
            g.rbp = r.rbp;
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

    /// Reads guest-physical memory (private pages only, within one page).
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
        if s.shim.is_some() || self.vmcb_read(s.vmcb, vmcb::CR0) & CR0_PG == 0 {
            return Some(la & 0xFFFF_FFFF);
        }
        let efer = self.vmcb_read(s.vmcb, vmcb::EFER);
        if efer & EFER_LMA == 0 {
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

    /// The linear address the instruction at the guest's RIP accesses (see
    /// [`decode::memory_operand`]).
    fn access_linear_address(&self, tree: &SeptTree, s: &SvmVcpu) -> Option<u64> {
        let mut bytes = [0u8; 15];
        // The instruction may end before a page the guest cannot read: fall back to the
        // bytes up to the end of its first page.
        let rip = self.vmcb_read(s.vmcb, vmcb::RIP);
        let cs_base = self.vmcb_read(s.vmcb, vmcb::CS + 8);
        let first = (4096 - (cs_base.wrapping_add(rip) & 0xFFF) as usize).min(bytes.len());
        let fetched = match self.fetch(tree, s, &mut bytes) {
            Some(()) => &bytes[..],
            None => {
                self.fetch(tree, s, &mut bytes[..first])?;
                &bytes[..first]
            }
        };
        let op = decode::memory_operand(fetched)?;
        let reg = |n: u8| self.gpr(s, n);
        let fs = self.vmcb_read(s.vmcb, vmcb::FS + 8);
        let gs = self.vmcb_read(s.vmcb, vmcb::GS + 8);
        Some(op.linear(reg, rip, fs, gs))
    }

    /// Reads the instruction bytes at the guest's CS:RIP into `buf`, page by page (an
    /// instruction may straddle two pages).
    fn fetch(&self, tree: &SeptTree, s: &SvmVcpu, buf: &mut [u8]) -> Option<()> {
        let rip = self.vmcb_read(s.vmcb, vmcb::RIP);
        let cs_base = self.vmcb_read(s.vmcb, vmcb::CS + 8);
        let mut la = cs_base.wrapping_add(rip);
        let mut done = 0;
        while done < buf.len() {
            let in_page = (4096 - (la & 0xFFF) as usize).min(buf.len() - done);
            let gpa = self.linear_to_gpa(tree, s, la)?;
            self.read_gpa(tree, gpa, &mut buf[done..done + in_page])?;
            done += in_page;
            la = la.wrapping_add(in_page as u64);
        }
        Some(())
    }

    /// A #UD: TDCALL or a real undefined opcode. Returns the TD exit to make (reason and
    /// registers), if any.
    fn tdcall(
        &self,
        td: &Td,
        tree: &SeptTree,
        vcpu: &Vcpu,
        s: &mut SvmVcpu,
        cpu: &dyn GuestCpu,
    ) -> Option<(u64, Regs)> {
        let mut bytes = [0u8; 4];
        let fetched = self.fetch(tree, s, &mut bytes);
        if fetched.is_none() || bytes != decode::TDCALL {
            self.inject_exception(s, UD_VECTOR, None);
            return None;
        }
        let leaf = self.vmcb_read(s.vmcb, vmcb::RAX);
        match leaf {
            TDG_VP_VMCALL => {
                // RCX: the GPR mask in 15:0 (RAX, RCX and RSP cannot be exposed, nor RBP
                // under NO_RBP_MOD) and the XMM mask in 31:16; 63:32 reserved (TDX module 1.5
                // `tdg_vp_vmcall.c`).
                let no_rbp_mod = td
                    .cfg
                    .get()
                    .is_some_and(|c| c.params.config_flags & config_flags::NO_RBP_MOD != 0);
                let refused = 1 | 1 << 1 | 1 << 4 | if no_rbp_mod { 1 << 5 } else { 0 };
                if s.regs.rcx & refused != 0 || s.regs.rcx >> 32 != 0 {
                    self.tdcall_status(s, TdxStatus::OPERAND_INVALID.with_operand(OperandId::RCX));
                    return None;
                }
                let mask = s.regs.rcx & 0xFFFF_FFFF;
                self.advance(s, 4);
                s.pending = Pending::Vmcall { mask };
                let g = &s.regs;
                let pick = |bit: u32, v: u64| if mask & (1 << bit) != 0 { v } else { 0 };
                let out = Regs {
                    rcx: mask,
                    rbp: pick(5, g.rbp),
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
                g.r9 = u64::from(vcpu.index());
                g.r10 = 0;
                g.r11 = 0;
                self.tdcall_status(s, TdxStatus::SUCCESS);
                None
            }
            TDG_VP_VEINFO_GET => {
                let ve = s.ve.take();
                let g = &mut s.regs;
                let v = ve.unwrap_or_default();
                g.rcx = u64::from(v.reason);
                g.rdx = v.qualification;
                g.r8 = v.gla;
                g.r9 = v.gpa;
                g.r10 = v.length_and_info;
                let status = if ve.is_some() {
                    TdxStatus::SUCCESS
                } else {
                    TdxStatus::NO_VALID_VE_INFO
                };
                self.tdcall_status(s, status);
                None
            }
            TDG_MR_REPORT => {
                let (report, data, subtype) = (s.regs.rcx, s.regs.rdx, s.regs.r8);
                let status = self.mr_report(td, tree, report, data, subtype);
                self.tdcall_status(s, status);
                None
            }
            TDG_VP_CPUIDVE_SET => {
                let flags = s.regs.rcx;
                let status = if flags & !3 != 0 {
                    TdxStatus::OPERAND_INVALID
                } else {
                    s.cpuid_ve = flags;
                    TdxStatus::SUCCESS
                };
                self.tdcall_status(s, status);
                None
            }
            TDG_VM_RD | TDG_VM_WR => {
                let field = s.regs.rdx;
                let result = if leaf == TDG_VM_RD {
                    self.guest_td_field(td, field)
                } else {
                    self.guest_td_write(td, field, s.regs.r8, s.regs.r9)
                };
                match result {
                    Ok(value) => {
                        s.regs.r8 = value;
                        self.tdcall_status(s, TdxStatus::SUCCESS);
                    }
                    Err(status) => {
                        s.regs.r8 = 0;
                        self.tdcall_status(s, status);
                    }
                }
                None
            }
            TDG_MR_RTMR_EXTEND => {
                let status = self.rtmr_extend(td, tree, s.regs.rcx, s.regs.rdx);
                self.tdcall_status(s, status);
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
                let exited_at = s.exited_at.unwrap_or_else(|| cpu.tsc());
                match self.guest_accept(td, tree, gpa, level) {
                    super::guest::AcceptOutcome::Done => {
                        let since = match s.accept_since.take() {
                            Some((at_gpa, since)) if at_gpa == gpa.0 => since,
                            _ => exited_at,
                        };
                        self.exit_stats
                            .record_accept(level.size(), ns_since(cpu, since));
                        self.tdcall_status(s, TdxStatus::SUCCESS);
                    }
                    super::guest::AcceptOutcome::AlreadyAccepted(at) => {
                        let status = TdxStatus::PAGE_ALREADY_ACCEPTED;
                        self.tdcall_status(s, status.with_operand(OperandId(at.raw() as u32)));
                    }
                    super::guest::AcceptOutcome::SizeMismatch(at) => {
                        let status = TdxStatus::PAGE_SIZE_MISMATCH;
                        self.tdcall_status(s, status.with_operand(OperandId(at.raw() as u32)));
                    }
                    super::guest::AcceptOutcome::Busy => {
                        self.tdcall_status(s, TdxStatus::OPERAND_BUSY);
                    }
                    // The host adds the page; the TDCALL runs again on re-entry.
                    super::guest::AcceptOutcome::Exit(e) => {
                        if !matches!(s.accept_since, Some((at_gpa, _)) if at_gpa == gpa.0) {
                            s.accept_since = Some((gpa.0, exited_at));
                        }
                        return Some(e.regs());
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

    /// A TD-scope field the guest may read with TDG.VM.RD (the module's guest read mask:
    /// TDX module 1.5 `tdr_tdcs_fields_lookup.c`): the TD's configuration, its measurements,
    /// NOTIFY_ENABLES and TD_CTLS.
    fn guest_td_field(&self, td: &Td, field: u64) -> Result<u64, TdxStatus> {
        use tdx_abi::metadata::td as f;
        let cfg = td.cfg.get().ok_or(TdxStatus::OPERAND_INVALID)?;
        let p = &cfg.params;
        let value = match field {
            f::ATTRIBUTES => p.attributes,
            f::XFAM => p.xfam,
            f::MAX_VCPUS => u64::from(p.max_vcpus),
            f::NUM_VCPUS => u64::from(td.num_vcpus.load(Ordering::Acquire)),
            f::GPAW => u64::from(cfg.shared_bit + 1),
            f::TSC_FREQUENCY => u64::from(p.tsc_frequency),
            f::CONFIG_FLAGS => p.config_flags,
            // No flexible pending #VE: TD_CTLS stays 0.
            f::TD_CTLS => 0,
            f::NOTIFY_ENABLES => td.guest_notify_enables.load(Ordering::Acquire),
            _ => {
                return td
                    .measurement_element(field)
                    .ok_or(TdxStatus::METADATA_FIELD_ID_INCORRECT);
            }
        };
        Ok(value)
    }

    /// TDG.VM.WR: only NOTIFY_ENABLES (bit 0) is guest-writable here; TD_CTLS needs the
    /// flexible pending-#VE configuration, which this module does not offer. Returns the old
    /// value.
    fn guest_td_write(&self, td: &Td, field: u64, value: u64, mask: u64) -> Result<u64, TdxStatus> {
        use tdx_abi::metadata::td as f;
        match field {
            f::NOTIFY_ENABLES => {
                if value & mask & !1 != 0 {
                    return Err(TdxStatus::METADATA_FIELD_VALUE_NOT_VALID);
                }
                let old = td.guest_notify_enables.load(Ordering::Acquire);
                let new = (old & !mask) | (value & mask & 1);
                td.guest_notify_enables.store(new, Ordering::Release);
                Ok(old)
            }
            _ => {
                // Readable fields are not writable; unknown ones are incorrect.
                self.guest_td_field(td, field)?;
                Err(TdxStatus::METADATA_FIELD_NOT_WRITABLE)
            }
        }
    }

    /// TDG.MR.REPORT: RCX the GPA of the 1024-byte TDREPORT_STRUCT to write (1024-aligned),
    /// RDX the GPA of the 64-byte REPORTDATA (64-aligned), R8 the subtype (0). Layout: TDX
    /// module 1.5 `include/tdx_api_defs.h` (`report_mac_struct_t`, `tee_tcb_info_t`,
    /// `td_info_t`). The MAC is zero: the software module has no CPU key, so its reports
    /// verify nowhere (as TDREPORTs verify only on the platform that made them anyway).
    fn mr_report(
        &self,
        td: &Td,
        tree: &SeptTree,
        report: u64,
        data: u64,
        subtype: u64,
    ) -> TdxStatus {
        let shared = td.cfg.get().map_or(1 << 47, |c| 1u64 << c.shared_bit);
        if !report.is_multiple_of(1024)
            || !data.is_multiple_of(64)
            || (report | data) & shared != 0
            || subtype != 0
        {
            return TdxStatus::OPERAND_INVALID;
        }
        let mut report_data = [0u8; 64];
        let Some(target) = self.private_hpa(tree, report) else {
            return TdxStatus::OPERAND_INVALID;
        };
        if self.read_gpa(tree, data, &mut report_data).is_none() {
            return TdxStatus::OPERAND_INVALID;
        }
        let Some(cfg) = td.cfg.get() else {
            return TdxStatus::OPERAND_INVALID;
        };
        let p = &cfg.params;
        let mut out = [0u8; 1024];
        // TDINFO at 512: attributes, XFAM, MRTD, MRCONFIGID, MROWNER, MROWNERCONFIG, RTMR0–3.
        {
            let mr = td.mr.lock();
            let info = &mut out[512..];
            info[0..8].copy_from_slice(&p.attributes.to_le_bytes());
            info[8..16].copy_from_slice(&p.xfam.to_le_bytes());
            info[16..64].copy_from_slice(&mr.mrtd);
            info[64..112].copy_from_slice(&p.mr_config_id);
            info[112..160].copy_from_slice(&p.mr_owner);
            info[160..208].copy_from_slice(&p.mr_owner_config);
            for (k, rtmr) in mr.rtmr.iter().enumerate() {
                info[208 + 48 * k..256 + 48 * k].copy_from_slice(rtmr);
            }
        }
        // TEE_TCB_INFO at 256: no valid fields (no SEAM module measurement to report).
        let tee_tcb_hash = tdx_abi::measure::sha384(&out[256..512]);
        let tee_info_hash = tdx_abi::measure::sha384(&out[512..1024]);
        // REPORTMACSTRUCT: type TDX (0x81), subtype 0, version 0; hashes; REPORTDATA.
        out[0] = 0x81;
        out[32..80].copy_from_slice(&tee_tcb_hash);
        out[80..128].copy_from_slice(&tee_info_hash);
        out[128..192].copy_from_slice(&report_data);
        self.mem.write(Hpa(target), &out);
        TdxStatus::SUCCESS
    }

    /// TDG.MR.RTMR.EXTEND: RCX the GPA of the 48-byte value (64-byte aligned, private), RDX
    /// the RTMR index (TDX module 1.5 `tdg_mr_rtmr_extend.c`).
    fn rtmr_extend(&self, td: &Td, tree: &SeptTree, gpa: u64, index: u64) -> TdxStatus {
        let shared = td.cfg.get().map_or(1 << 47, |c| 1u64 << c.shared_bit);
        if !gpa.is_multiple_of(64) || gpa & shared != 0 || index > 3 {
            return TdxStatus::OPERAND_INVALID;
        }
        let mut digest = [0u8; 48];
        if self.read_gpa(tree, gpa, &mut digest).is_none() {
            return TdxStatus::OPERAND_INVALID;
        }
        // `index` <= 3 was checked above.
        if td.try_extend_rtmr(index as usize, &digest) {
            TdxStatus::SUCCESS
        } else {
            TdxStatus::OPERAND_BUSY
        }
    }

    /// Completes a TDCALL with `status` in RAX.
    fn tdcall_status(&self, s: &SvmVcpu, status: TdxStatus) {
        self.vmcb_write(s.vmcb, vmcb::RAX, status.0);
        self.advance(s, 4);
    }

    /// CPUID from the module's table for the TD.
    fn cpuid(&self, s: &mut SvmVcpu, vcpu: &Vcpu, cpu: &dyn GuestCpu) {
        let leaf = self.vmcb_read(s.vmcb, vmcb::RAX) & 0xFFFF_FFFF;
        let subleaf = s.regs.rcx & 0xFFFF_FFFF;
        let id = vcpu.index();
        let (a, b, c, d): (u32, u32, u32, u32) = match leaf {
            // Max basic leaf 0x21, "GenuineIntel".
            0 => (0x21, 0x756E_6547, 0x6C65_746E, 0x4965_6E69),
            // Family/model; EBX: APIC ID, one logical CPU, 64-byte CLFLUSH lines. ECX: SSE3,
            // x2APIC, TSC deadline (the VMM's timer), RDRAND (Linux's confidential-computing
            // RNG seeding panics without it), hypervisor; EDX: FPU, TSC, MSR, PAE, CX8, APIC, SEP,
            // MTRR, PGE, CMOV, PAT, CLFLUSH, MMX, FXSR, SSE, SSE2. Only what the CPU under the
            // engine runs whatever its model.
            1 => (
                TD_CPUID1_EAX,
                id << 24 | 1 << 16 | 8 << 8,
                1 | 1 << 21 | 1 << 24 | 1 << 30 | 1 << 31,
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
            // x2APIC topology: one thread per core, one core per package.
            0xB => match subleaf {
                0 => (0, 1, 0x100, id),
                1 => (0, 1, 0x201, id),
                n => (0, 0, (n & 0xFF) as u32, id),
            },
            // TSC / crystal ratio over the 25 MHz crystal.
            0x15 => (1, tsc_crystal_ratio(cpu) as u32, CRYSTAL_HZ as u32, 0),
            // Processor frequency: base and maximum at the TSC's rate as leaf 0x15 gives it,
            // 100 MHz bus, as the CPU reports them. Linux takes its CPU frequency from here; without it, it calibrates
            // against the PIT, which a TD lacks: 100,000 port reads (each a #VE and a
            // TDVMCALL) before it gives up.
            0x16 => {
                let mhz = tsc_crystal_ratio(cpu) * (CRYSTAL_HZ / 1_000_000);
                (mhz as u32, mhz as u32, 100, 0)
            }
            // "IntelTDX    ".
            0x21 => (0, 0x6574_6E49, 0x2020_2020, 0x5844_546C),
            // Max extended leaf; LAHF; long mode, NX, syscall; 48-bit addresses.
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

/// The TSC's rate over the crystal's (CPUID 0x15), rounded to the nearest.
fn tsc_crystal_ratio(cpu: &dyn GuestCpu) -> u64 {
    let tsc_hz = cpu.tsc_per_ms().saturating_mul(1000);
    (tsc_hz + CRYSTAL_HZ / 2) / CRYSTAL_HZ
}

/// Nanoseconds from TSC `since` to now on `cpu`.
fn ns_since(cpu: &dyn GuestCpu, since: u64) -> u64 {
    let ticks = cpu.tsc().saturating_sub(since);
    let ns = u128::from(ticks) * 1_000_000 / u128::from(cpu.tsc_per_ms().max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// Fills `r` with a TD exit of `reason` (status 0) and the given registers.
fn td_exit(r: &mut Regs, reason: u64, regs: Regs) -> TdxStatus {
    *r = Regs { rax: 0, ..regs };
    TdxStatus(reason)
}
