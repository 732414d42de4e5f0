//! The hardware SEAMCALL backend: the `seamcall` instruction (encoding `66 0f 01 cf`) in
//! assembly, plus TDX detection helpers.
//!
//! Only compiled for x86_64 and never executed unless detection says a TDX module is loaded
//! (or by [`probe_fault_path`], behind a fault handler): on a CPU without SEAM, `seamcall`
//! raises #UD. The runtime's appliance calls
//! [`detect`] (which reads MSRs and therefore is `unsafe`) before it constructs a
//! [`HardwareModule`].
//!
//! Register convention (TDX module 1.5 ABI; Linux `arch/x86/virt/vmx/tdx/seamcall.S` and
//! `tdxcall.S`): RAX = leaf | version << 16, operands in RCX, RDX, R8–R15; outputs in the same
//! registers, status in RAX. TDH.VP.ENTER also takes and returns RBX, RSI and RDI and zeroes
//! RBP on an asynchronous exit, so the call goes through a [`Regs`] in memory, as Linux's
//! "saved" variant (`__seamcall_saved_ret`) does: every general-purpose register is loaded
//! from it and stored back, RBX and RBP are preserved around the instruction. A set carry
//! flag (VMfailInvalid: no module loaded) becomes [`SEAMCALL_VMFAILINVALID`], never success.
//!
//! A `seamcall` that faults (#UD when the CPU is not in VMX root operation or has no SEAM,
//! #GP(0) otherwise) becomes [`SEAMCALL_UD`] or [`SEAMCALL_GP`], as Linux's exception-table
//! fixup does (`tdxcall.S`, `EX_TYPE_SEAMCALL`): the instruction carries a global label
//! ([`seamcall_instruction_address`]), and the platform's #UD/#GP handler calls
//! [`fixup_seamcall_fault`], which resumes right after it with the status in RAX.

#![no_std]

pub mod vmx;

use tdx_abi::Leaf;
use tdx_abi::TdxStatus;
use tdx_abi::seamcall::{ModuleKind, Regs, Seamcall};

/// RFLAGS carry flag.
const RFLAGS_CF: u64 = 1;

/// The status a SEAMCALL that failed with VMfailInvalid reads as (Linux's
/// `TDX_SEAMCALL_VMFAILINVALID`: a software error, class 0xFF, low bits 0xFFFF0000).
pub const SEAMCALL_VMFAILINVALID: u64 = TdxStatus::SEAMCALL_VMFAILINVALID.0;

/// The status a SEAMCALL that raised #UD reads as: Linux's `TDX_SEAMCALL_UD`
/// (`arch/x86/include/asm/tdx.h`: `TDX_SW_ERROR | X86_TRAP_UD`, where `TDX_SW_ERROR` is
/// `TDX_ERROR | GENMASK_ULL(47, 40)`), 0x8000_FF00_0000_0006. The CPU is not in VMX root
/// operation, or has no SEAM.
pub const SEAMCALL_UD: u64 = TdxStatus::SEAMCALL_UD.0;

/// The status a SEAMCALL that raised #GP reads as: Linux's `TDX_SEAMCALL_GP`
/// (`TDX_SW_ERROR | X86_TRAP_GP`), 0x8000_FF00_0000_000D.
pub const SEAMCALL_GP: u64 = TdxStatus::SEAMCALL_GP.0;

/// #UD's exception vector.
pub const VECTOR_UD: u8 = 6;
/// #GP's exception vector.
pub const VECTOR_GP: u8 = 13;
/// Length of the `seamcall` encoding `66 0f 01 cf`.
const SEAMCALL_LEN: u64 = 4;

/// IA32_MTRRCAP: bit 15 reports SEAMRR support.
pub const MSR_IA32_MTRRCAP: u32 = 0xFE;
/// SEAMRR support bit in IA32_MTRRCAP.
pub const MTRRCAP_SEAMRR: u64 = 1 << 15;
/// IA32_SEAMRR_PHYS_BASE.
pub const MSR_IA32_SEAMRR_PHYS_BASE: u32 = 0x1400;
/// IA32_SEAMRR_PHYS_MASK: bit 11 enables the SEAM range (bit 10 locks it).
pub const MSR_IA32_SEAMRR_PHYS_MASK: u32 = 0x1401;
/// SEAMRR enable bit.
pub const SEAMRR_ENABLED: u64 = 1 << 11;
/// IA32_TME_ACTIVATE: bit 0 lock, bit 1 enable, bits 35:32 MKTME KeyID bits.
pub const MSR_IA32_TME_ACTIVATE: u32 = 0x982;
/// IA32_MKTME_KEYID_PARTITIONING: EAX = MKTME KeyIDs, EDX = TDX private KeyIDs.
pub const MSR_IA32_MKTME_KEYID_PARTITIONING: u32 = 0x87;

/// What detection found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TdxPlatform {
    /// First TDX private KeyID (MKTME KeyIDs + 1).
    pub hkid_start: u16,
    /// Number of TDX private KeyIDs.
    pub num_hkids: u16,
    /// KeyID bit position in physical addresses (MAXPHYADDR − KeyID bits).
    pub hkid_shift: u32,
}

/// Why TDX is not usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DetectError {
    /// IA32_MTRRCAP.SEAMRR is clear.
    #[error("CPU does not support SEAMRR")]
    NoSeamrr,
    /// SEAMRR not enabled by the BIOS.
    #[error("SEAM range not enabled")]
    SeamrrDisabled,
    /// TME/MKTME not activated or locked.
    #[error("TME not activated")]
    TmeInactive,
    /// No KeyIDs partitioned for TDX.
    #[error("no TDX KeyIDs")]
    NoTdxKeyIds,
}

/// Pure part of detection: interprets MSR values and MAXPHYADDR (CPUID 0x80000008 EAX[7:0]).
pub fn interpret(
    mtrrcap: u64,
    seamrr_mask: u64,
    tme_activate: u64,
    keyid_partitioning: u64,
    max_phys_addr: u32,
) -> Result<TdxPlatform, DetectError> {
    if mtrrcap & MTRRCAP_SEAMRR == 0 {
        return Err(DetectError::NoSeamrr);
    }
    if seamrr_mask & SEAMRR_ENABLED == 0 {
        return Err(DetectError::SeamrrDisabled);
    }
    if tme_activate & 0b11 != 0b11 {
        return Err(DetectError::TmeInactive);
    }
    let keyid_bits = ((tme_activate >> 32) & 0xF) as u32;
    let mktme = (keyid_partitioning & 0xFFFF_FFFF) as u32;
    let tdx = (keyid_partitioning >> 32) as u32;
    if keyid_bits == 0 || tdx < 2 {
        return Err(DetectError::NoTdxKeyIds);
    }
    Ok(TdxPlatform {
        hkid_start: u16::try_from(mktme + 1).map_err(|_| DetectError::NoTdxKeyIds)?,
        num_hkids: u16::try_from(tdx).map_err(|_| DetectError::NoTdxKeyIds)?,
        hkid_shift: max_phys_addr.saturating_sub(keyid_bits),
    })
}

/// Reads an MSR.
///
/// # Safety
/// The MSR must exist on this CPU (else #GP) and the caller must run at CPL 0.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees CPL 0 and that `msr` exists; rdmsr only reads.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    u64::from(hi) << 32 | u64::from(lo)
}

/// Writes an MSR.
///
/// # Safety
/// The MSR must exist on this CPU, `value` must be valid for it (else #GP), the write must
/// not break an invariant the rest of the program relies on, and the caller must run at
/// CPL 0.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees CPL 0, that `msr` exists and that `value` is valid and
    // safe to write.
    unsafe {
        core::arch::asm!(
            "wrmsr",
            in("ecx") msr,
            in("eax") (value & 0xFFFF_FFFF) as u32,
            in("edx") (value >> 32) as u32,
            options(nostack, preserves_flags),
        );
    }
}

/// Detects a usable TDX platform from the MSRs named in the reference.
///
/// # Safety
/// Must run at CPL 0 on an Intel CPU that implements IA32_MTRRCAP; the SEAMRR, TME and KeyID
/// MSRs are read only after MTRRCAP says SEAMRR exists.
pub unsafe fn detect() -> Result<TdxPlatform, DetectError> {
    // SAFETY: forwarded contract; MTRRCAP exists on every CPU with MTRRs.
    let mtrrcap = unsafe { rdmsr(MSR_IA32_MTRRCAP) };
    if mtrrcap & MTRRCAP_SEAMRR == 0 {
        return Err(DetectError::NoSeamrr);
    }
    // SAFETY: SEAMRR MSRs exist when MTRRCAP.SEAMRR is set; TME MSRs exist on SEAM CPUs.
    let (mask, tme, part) = unsafe {
        (
            rdmsr(MSR_IA32_SEAMRR_PHYS_MASK),
            rdmsr(MSR_IA32_TME_ACTIVATE),
            rdmsr(MSR_IA32_MKTME_KEYID_PARTITIONING),
        )
    };
    let maxpa = core::arch::x86_64::__cpuid(0x8000_0008).eax & 0xFF;
    interpret(mtrrcap, mask, tme, part, maxpa)
}

/// WBINVD: writes back and invalidates this CPU's caches.
///
/// # Safety
/// Ring 0. Slow (the whole cache hierarchy), never call it on a hot path.
pub unsafe fn wbinvd() {
    // SAFETY: the caller runs at CPL 0; WBINVD changes no architectural state.
    unsafe { core::arch::asm!("wbinvd", options(nostack, preserves_flags)) };
}

/// The real TDX module, reached with `seamcall`.
pub struct HardwareModule {
    hkid_shift: u32,
    /// The CPU has CLFLUSHOPT (CPUID.(EAX=7,ECX=0):EBX[23]), read once: donating SEAMCALLs
    /// are on the fault path.
    clflushopt: bool,
}

/// Whether this CPU (and so every CPU of the platform) has CLFLUSHOPT.
fn has_clflushopt() -> bool {
    core::arch::x86_64::__cpuid(0).eax >= 7
        && core::arch::x86_64::__cpuid_count(7, 0).ebx & 1 << 23 != 0
}

impl HardwareModule {
    /// A handle for a platform [`detect`] accepted.
    ///
    /// # Safety
    /// A TDX module must be loaded (SEAMLDR done); otherwise every call raises #UD, which
    /// only a handler applying [`fixup_seamcall_fault`] turns into [`SEAMCALL_UD`]. Memory is
    /// identity-mapped (as UEFI sets it up): the physical address of a page handed to the
    /// module is also a valid address for flushing it from the caches
    /// ([`donated_range`]).
    pub unsafe fn new(platform: TdxPlatform) -> HardwareModule {
        HardwareModule {
            hkid_shift: platform.hkid_shift,
            clflushopt: has_clflushopt(),
        }
    }
}

/// The SEAMCALL entry path around one instruction: `$insn` calls the leaf that holds
/// `seamcall` (`tdx_hw_seamcall`) or, in the tests, a fake leaf with the module's register
/// contract. Every general-purpose
/// register is loaded from the [`Regs`] block at `$args` and stored back to it, RBP included
/// (a TDVMCALL may expose it: the host leaves NO_RBP_MOD clear, so that guests whose
/// TDVMCALL mask selects RBP, as TDVF's does, work); RBX and RBP (which the compiler
/// reserves, and which TDH.VP.ENTER overwrites with guest values or zeroes) are pushed
/// first and popped last; RDI carries the block's address in and is
/// reloaded from the stack afterwards; the flags are returned (CF is VMfailInvalid). XMM0–15
/// are declared clobbered: TDH.VP.ENTER returns with the TD's vector state scrubbed (TDX
/// module 1.5 `td_exit.c`), and Rust's calling convention keeps no XMM register across the
/// block. The stack is balanced before the block ends.
macro_rules! seam_entry {
    ($args:expr, $insn:literal $(, $operand:ident = sym $sym:path)*) => {{
        let flags: u64;
        core::arch::asm!(
            "push rbp",
            "push rbx",
            "push rdi",
            "mov rax, [rdi + {rax}]",
            "mov rcx, [rdi + {rcx}]",
            "mov rdx, [rdi + {rdx}]",
            "mov r8, [rdi + {r8}]",
            "mov r9, [rdi + {r9}]",
            "mov r10, [rdi + {r10}]",
            "mov r11, [rdi + {r11}]",
            "mov r12, [rdi + {r12}]",
            "mov r13, [rdi + {r13}]",
            "mov r14, [rdi + {r14}]",
            "mov r15, [rdi + {r15}]",
            "mov rbx, [rdi + {rbx}]",
            "mov rsi, [rdi + {rsi}]",
            "mov rbp, [rdi + {rbp}]",
            "mov rdi, [rdi + {rdi}]",
            $insn,
            "pushfq",
            "push rdi",
            "mov rdi, [rsp + 16]",
            "mov [rdi + {rax}], rax",
            "mov [rdi + {rcx}], rcx",
            "mov [rdi + {rdx}], rdx",
            "mov [rdi + {r8}], r8",
            "mov [rdi + {r9}], r9",
            "mov [rdi + {r10}], r10",
            "mov [rdi + {r11}], r11",
            "mov [rdi + {r12}], r12",
            "mov [rdi + {r13}], r13",
            "mov [rdi + {r14}], r14",
            "mov [rdi + {r15}], r15",
            "mov [rdi + {rbx}], rbx",
            "mov [rdi + {rsi}], rsi",
            "mov [rdi + {rbp}], rbp",
            "pop rax",
            "mov [rdi + {rdi}], rax",
            "pop rax",
            "add rsp, 8",
            "pop rbx",
            "pop rbp",
            rax = const core::mem::offset_of!(Regs, rax),
            rcx = const core::mem::offset_of!(Regs, rcx),
            rdx = const core::mem::offset_of!(Regs, rdx),
            r8 = const core::mem::offset_of!(Regs, r8),
            r9 = const core::mem::offset_of!(Regs, r9),
            r10 = const core::mem::offset_of!(Regs, r10),
            r11 = const core::mem::offset_of!(Regs, r11),
            r12 = const core::mem::offset_of!(Regs, r12),
            r13 = const core::mem::offset_of!(Regs, r13),
            r14 = const core::mem::offset_of!(Regs, r14),
            r15 = const core::mem::offset_of!(Regs, r15),
            rbx = const core::mem::offset_of!(Regs, rbx),
            rsi = const core::mem::offset_of!(Regs, rsi),
            rdi = const core::mem::offset_of!(Regs, rdi),
            rbp = const core::mem::offset_of!(Regs, rbp),
            $($operand = sym $sym,)*
            inout("rdi") $args => _,
            out("rax") flags,
            out("rcx") _,
            out("rdx") _,
            out("rsi") _,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
            out("r12") _,
            out("r13") _,
            out("r14") _,
            out("r15") _,
            out("xmm0") _,
            out("xmm1") _,
            out("xmm2") _,
            out("xmm3") _,
            out("xmm4") _,
            out("xmm5") _,
            out("xmm6") _,
            out("xmm7") _,
            out("xmm8") _,
            out("xmm9") _,
            out("xmm10") _,
            out("xmm11") _,
            out("xmm12") _,
            out("xmm13") _,
            out("xmm14") _,
            out("xmm15") _,
        );
        flags
    }};
}

/// XCR0 if the OS enabled XSAVE (CR4.OSXSAVE, mirrored in CPUID.1:ECX[27]).
fn read_xcr0() -> Option<u64> {
    if core::arch::x86_64::__cpuid(1).ecx & 1 << 27 == 0 {
        return None;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV with ECX = 0 reads XCR0; OSXSAVE is set, so it does not fault.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi,
            options(nomem, nostack, preserves_flags));
    }
    Some(u64::from(hi) << 32 | u64::from(lo))
}

/// Writes XCR0 back.
fn write_xcr0(value: u64) {
    // SAFETY: the value was read from XCR0 on this CPU, so it is valid for it; XSETBV runs
    // at CPL 0 (the appliance's only level).
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32,
            in("edx") (value >> 32) as u32, options(nomem, nostack, preserves_flags));
    }
}

/// Turns the flags after the instruction into the block's status: a set carry flag
/// (VMfailInvalid: no SEAM module answered, RAX still holds the leaf) reads as
/// [`SEAMCALL_VMFAILINVALID`].
fn finish(regs: &mut Regs, flags: u64) {
    if flags & RFLAGS_CF != 0 {
        regs.rax = SEAMCALL_VMFAILINVALID;
    }
}

// The one hardware `seamcall` instruction, in a leaf the entry block calls (as the tests call
// their fake leaf): `tdx_hw_seamcall_insn` labels the instruction, `ret` follows it and keeps
// the flags. The instruction lives here, in module-level assembly, and not inside the
// `asm!` block of `HardwareModule::seamcall`, because the compiler may copy an inline
// `asm!` block (an optimized build duplicates it on the paths after `read_xcr0`), and a
// global label inside it would then be defined twice; module-level assembly is emitted
// exactly once. (A second definition would be an assembler or link error, never a silent
// bug.)
core::arch::global_asm!(
    ".global tdx_hw_seamcall",
    ".global tdx_hw_seamcall_insn",
    "tdx_hw_seamcall:",
    "tdx_hw_seamcall_insn:",
    ".byte 0x66, 0x0f, 0x01, 0xcf",
    "ret",
);

unsafe extern "C" {
    /// The leaf: `seamcall; ret`, with the TDX module's register contract.
    fn tdx_hw_seamcall();
    /// The `seamcall` instruction inside it. Only its address is used.
    static tdx_hw_seamcall_insn: u8;
}

/// The address of the hardware `seamcall` instruction (the only one: [`HardwareModule`]'s
/// entry path calls it). A #UD or #GP whose RIP is this address is a faulting SEAMCALL,
/// which [`fixup_seamcall_fault`] turns into a status.
pub fn seamcall_instruction_address() -> u64 {
    (&raw const tdx_hw_seamcall_insn) as u64
}

/// The registers an exception handler may change to resume the interrupted code: its saved
/// RIP, RAX and RFLAGS (what the firmware's exception entry restores before `iretq`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultFrame {
    /// Where the fault happened (for #UD and #GP: the faulting instruction).
    pub rip: u64,
    /// RAX at the fault.
    pub rax: u64,
    /// RFLAGS at the fault.
    pub rflags: u64,
}

/// Turns a #UD or #GP raised by the hardware `seamcall` instruction into a status, as
/// Linux's `EX_TYPE_SEAMCALL` fixup does: if `frame.rip` is [`seamcall_instruction_address`]
/// and `vector` is 6 (#UD) or 13 (#GP), RIP moves past the 4-byte instruction, RAX becomes
/// [`SEAMCALL_UD`] or [`SEAMCALL_GP`], CF is cleared, and the answer is true. Anything else
/// is left untouched (false): the fault is not a SEAMCALL's.
///
/// Resuming right after the instruction is correct because a faulting instruction changed
/// no register and no memory: what follows is the leaf's `ret` (which keeps the flags) back
/// into the entry block (`seam_entry!`), which runs on as after a normal return. It stores
/// every register into the caller's [`Regs`], so the caller reads RAX = the typed error and
/// its other registers as they were loaded (its own inputs), restores RBX and RBP, and
/// hands back the flags, where the cleared CF keeps the status from being read as
/// VMfailInvalid. Linux instead jumps to a separate trap label; resuming in place needs no
/// second label and reuses the normal path.
pub fn fixup_seamcall_fault(vector: u8, frame: &mut FaultFrame) -> bool {
    if frame.rip != seamcall_instruction_address() {
        return false;
    }
    let status = match vector {
        VECTOR_UD => SEAMCALL_UD,
        VECTOR_GP => SEAMCALL_GP,
        _ => return false,
    };
    frame.rip += SEAMCALL_LEN;
    frame.rax = status;
    frame.rflags &= !RFLAGS_CF;
    true
}

/// Runs the hardware entry path once, with TDH.SYS.RD of field 0 (a read, harmless if a
/// module does answer), and returns RAX: on a CPU without SEAM (or outside VMX root
/// operation) [`SEAMCALL_UD`], which proves the fault path end to end (the fixup handler,
/// the resumption, the status) on a machine with no TDX.
///
/// # Safety
/// A #UD/#GP handler that applies [`fixup_seamcall_fault`] must be installed on the calling
/// CPU; without it the fault ends in the firmware's exception handler.
pub unsafe fn probe_fault_path() -> u64 {
    let module = HardwareModule {
        hkid_shift: 0,
        clflushopt: false,
    };
    let mut regs = Regs::for_leaf(Leaf::SysRd, 0);
    module.seamcall(&mut regs);
    regs.rax
}

/// The physical range a SEAMCALL hands to the TDX module as a new private or control page,
/// if it does: the TDR (TDH.MNG.CREATE), TDCS and TDCX pages (TDH.MNG.ADDCX, TDH.VP.ADDCX,
/// RCX), the TDVPR (TDH.VP.CREATE, RCX), the destination of TDH.MEM.PAGE.ADD and the new
/// S-EPT page of TDH.MEM.SEPT.ADD and TDH.MEM.PAGE.DEMOTE (R8), and the page or huge page of
/// TDH.MEM.PAGE.AUG (R8, its size from the level in RCX bits 2:0). The module writes these
/// under the TD's KeyID; a dirty cache line left from the host's own use (KeyID 0) could be
/// written back over them later, so Linux flushes each one before the call
/// (`arch/x86/virt/vmx/tdx/tdx.c`, `tdx_clflush_page` in the `tdh_*` wrappers).
pub fn donated_range(regs: &Regs) -> Option<(u64, u64)> {
    const PAGE: u64 = 4096;
    let leaf = Leaf::from_number((regs.rax & 0xFFFF) as u16)?;
    match leaf {
        Leaf::MngCreate | Leaf::MngAddCx | Leaf::VpCreate | Leaf::VpAddCx => Some((regs.rcx, PAGE)),
        Leaf::MemPageAdd | Leaf::MemSeptAdd | Leaf::MemPageDemote => Some((regs.r8, PAGE)),
        Leaf::MemPageAug => match regs.rcx & 7 {
            level @ 0..=2 => Some((regs.r8, PAGE << (9 * level))),
            _ => None,
        },
        _ => None,
    }
}

/// Writes back and invalidates every cache line of `[start, start + len)`, then fences:
/// with CLFLUSHOPT if `opt` (the CPU has it), else CLFLUSH.
///
/// # Safety
/// The range is mapped (identity-mapped memory); flushing changes no memory contents; `opt`
/// only if the CPU has CLFLUSHOPT.
unsafe fn flush_range(start: u64, len: u64, opt: bool) {
    for line in (start..start.saturating_add(len)).step_by(64) {
        // SAFETY: the caller guarantees the line is mapped; a flush writes back and
        // invalidates it without changing its contents.
        unsafe {
            if opt {
                core::arch::asm!("clflushopt [{0}]", in(reg) line, options(nostack, preserves_flags));
            } else {
                core::arch::asm!("clflush [{0}]", in(reg) line, options(nostack, preserves_flags));
            }
        }
    }
    // SAFETY: orders the flushes before the SEAMCALL; touches nothing.
    unsafe { core::arch::asm!("mfence", options(nostack, preserves_flags)) };
}

/// Attempts of a SEAMCALL that answers TDX_RND_NO_ENTROPY (Linux `RDRAND_RETRY_LOOPS`).
const NO_ENTROPY_ATTEMPTS: u32 = 10;

/// Issues `call` on `regs`, again with the same inputs while the module answers exactly
/// TDX_RND_NO_ENTROPY (its RDRAND/RDSEED ran dry), up to [`NO_ENTROPY_ATTEMPTS`] times, as
/// Linux's `sc_retry` does for every SEAMCALL (`arch/x86/include/asm/tdx.h`).
fn retry_no_entropy(regs: &mut Regs, mut call: impl FnMut(&mut Regs)) {
    let input = *regs;
    for attempt in 1..=NO_ENTROPY_ATTEMPTS {
        call(regs);
        if regs.rax != TdxStatus::RND_NO_ENTROPY.0 || attempt == NO_ENTROPY_ATTEMPTS {
            return;
        }
        *regs = input;
    }
}

impl Seamcall for HardwareModule {
    fn seamcall(&self, regs: &mut Regs) {
        if let Some((start, len)) = donated_range(regs) {
            // SAFETY: memory is identity-mapped (the contract of `new`), and a page the host
            // hands to the module is memory it owns.
            unsafe { flush_range(start, len, self.clflushopt) };
        }
        retry_no_entropy(regs, |regs| self.seamcall_once(regs));
    }
    fn kind(&self) -> ModuleKind {
        ModuleKind::Hardware
    }
    fn hkid_shift(&self) -> u32 {
        self.hkid_shift
    }
}

impl HardwareModule {
    /// One `seamcall` through the entry path.
    fn seamcall_once(&self, regs: &mut Regs) {
        let args: *mut Regs = regs;
        // TDH.VP.ENTER returns with XCR0 set from the TD's XFAM (`td_exit.c`): put the
        // host's back.
        let xcr0 = read_xcr0();
        // SAFETY: constructing a HardwareModule requires a loaded TDX module (see `new`), so
        // `seamcall` does not fault, or (`probe_fault_path`) a handler that resumes a fault
        // right after the instruction, which the block then completes as a normal return. The
        // leaf is `seamcall; ret`, so the stack is as the block left it when it returns.
        // `args` points to a live, exclusively borrowed `Regs` (`repr(C)`, offsets from
        // `offset_of!`); the block's register discipline is described at `seam_entry`.
        let flags = unsafe { seam_entry!(args, "call {seamcall}", seamcall = sym tdx_hw_seamcall) };
        if let Some(host) = xcr0
            && read_xcr0() != Some(host)
        {
            write_xcr0(host);
        }
        finish(regs, flags);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn donated_pages_are_the_ones_the_module_takes() {
        let regs_for = |leaf: Leaf, rcx: u64, r8: u64| Regs {
            rax: leaf as u64,
            rcx,
            r8,
            ..Regs::default()
        };
        let k4 = 4096;
        assert_eq!(
            donated_range(&regs_for(Leaf::MngCreate, 0x1000, 0)),
            Some((0x1000, k4))
        );
        assert_eq!(
            donated_range(&regs_for(Leaf::VpAddCx, 0x5000, 0)),
            Some((0x5000, k4))
        );
        assert_eq!(
            donated_range(&regs_for(Leaf::MemSeptAdd, 0x20_0001, 0x9000)),
            Some((0x9000, k4))
        );
        // PAGE.AUG of a 2 MiB page (level 1 in RCX) flushes all of it.
        assert_eq!(
            donated_range(&regs_for(Leaf::MemPageAug, 0x20_0001, 0x40_0000)),
            Some((0x40_0000, 2 << 20))
        );
        assert_eq!(
            donated_range(&regs_for(Leaf::MemPageAug, 0x20_0000, 0x40_0000)),
            Some((0x40_0000, k4))
        );
        // Leaves that hand over nothing.
        for leaf in [
            Leaf::MemTrack,
            Leaf::VpEnter,
            Leaf::MemPageRemove,
            Leaf::MngInit,
        ] {
            assert_eq!(
                donated_range(&regs_for(leaf, 0x1000, 0x2000)),
                None,
                "{leaf:?}"
            );
        }
    }

    #[test]
    fn no_entropy_is_retried_with_the_same_inputs_ten_times_at_most() {
        // Out of entropy twice, then success: three calls, each with the original inputs.
        extern crate std;
        let mut seen = std::vec::Vec::new();
        let mut regs = Regs {
            rax: 5,
            rcx: 0xAB,
            ..Regs::default()
        };
        retry_no_entropy(&mut regs, |r| {
            seen.push((r.rax, r.rcx));
            r.rcx = 0;
            r.rax = if seen.len() < 3 {
                TdxStatus::RND_NO_ENTROPY.0
            } else {
                0
            };
        });
        assert_eq!(seen, [(5, 0xAB); 3]);
        assert_eq!(regs.rax, 0);
        // Never any entropy: ten attempts, then the status stands.
        let mut calls = 0;
        let mut regs = Regs::default();
        retry_no_entropy(&mut regs, |r| {
            calls += 1;
            r.rax = TdxStatus::RND_NO_ENTROPY.0;
        });
        assert_eq!((calls, regs.rax), (10, TdxStatus::RND_NO_ENTROPY.0));
        // Another status (even one with an operand ID) is not retried.
        let mut calls = 0;
        retry_no_entropy(&mut Regs::default(), |r| {
            calls += 1;
            r.rax = TdxStatus::RND_NO_ENTROPY.0 | 1;
        });
        assert_eq!(calls, 1);
    }

    // A fake leaf with the TDX module's register contract for TDH.VP.ENTER: it writes every
    // general-purpose register the block reads back (RBX, RSI, RDI, RBP with "guest" values
    // as a TDVMCALL exit does; RBP = the RBP it was entered with + 0x5B, which proves the
    // block passed the host's RBP in), scribbles over XMM0–15, and sets CF when it is called
    // with RAX = 0xCF (VMfailInvalid).
    core::arch::global_asm!(
        ".global tdx_hw_fake_leaf",
        "tdx_hw_fake_leaf:",
        "mov r8, rbp",
        "cmp rax, 0xCF",
        "mov rax, 0xA0A0",
        "mov rcx, 0xC1C1",
        "mov rdx, 0xD2D2",
        "mov rbx, 0xB3B3",
        "mov rsi, 0x5151",
        "mov rdi, 0xD1D1",
        "lea rbp, [r8 + 0x5B]",
        "mov r8, 0x0808",
        "mov r9, 0x0909",
        "mov r10, 0x1010",
        "mov r11, 0x1111",
        "mov r12, 0x1212",
        "mov r13, 0x1313",
        "mov r14, 0x1414",
        "mov r15, 0x1515",
        "pcmpeqb xmm0, xmm0",
        "pcmpeqb xmm6, xmm6",
        "pcmpeqb xmm15, xmm15",
        "je 2f",
        "clc",
        "ret",
        "2:",
        "stc",
        "ret",
    );

    unsafe extern "C" {
        fn tdx_hw_fake_leaf();
    }

    /// RBX and RBP as they are now.
    #[inline(always)]
    fn rbx_rbp() -> (u64, u64) {
        let (rbx, rbp): (u64, u64);
        // SAFETY: copies two registers; touches nothing else.
        unsafe {
            core::arch::asm!("mov {}, rbx", "mov {}, rbp", out(reg) rbx, out(reg) rbp,
                options(nomem, nostack, preserves_flags));
        }
        (rbx, rbp)
    }

    /// The entry path with the fake leaf in place of `seamcall`; returns RBX and RBP just
    /// before and just after it (the compiler assumes the block keeps them).
    #[inline(never)]
    fn fake_seamcall(regs: &mut Regs) -> [(u64, u64); 2] {
        let args: *mut Regs = regs;
        let before = rbx_rbp();
        // SAFETY: the fake leaf only writes registers the block declares or saves, and
        // returns with the stack as it found it (the `call` pushes the return address,
        // `ret` pops it).
        let flags = unsafe { seam_entry!(args, "call {fake}", fake = sym tdx_hw_fake_leaf) };
        let after = rbx_rbp();
        finish(regs, flags);
        [before, after]
    }

    #[test]
    fn the_entry_path_keeps_the_callers_registers_and_returns_the_modules() {
        // Values the compiler keeps live across the call, in callee-saved registers and in
        // vector registers.
        let keep: [u64; 8] = core::array::from_fn(|i| core::hint::black_box(0x1000 + i as u64));
        let vector = core::hint::black_box([1.5f64, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5]);
        let mut regs = Regs {
            rax: 2,
            rcx: 0x1234_0000,
            rbp: 0xBB00,
            ..Regs::default()
        };
        let _ = fake_seamcall(&mut regs);
        let expected = Regs {
            rbp: 0xBB5B,
            rax: 0xA0A0,
            rcx: 0xC1C1,
            rdx: 0xD2D2,
            rbx: 0xB3B3,
            rsi: 0x5151,
            rdi: 0xD1D1,
            r8: 0x0808,
            r9: 0x0909,
            r10: 0x1010,
            r11: 0x1111,
            r12: 0x1212,
            r13: 0x1313,
            r14: 0x1414,
            r15: 0x1515,
        };
        assert_eq!(regs, expected);
        let keep_after: [u64; 8] = core::hint::black_box(keep);
        assert_eq!(keep_after, core::array::from_fn(|i| 0x1000 + i as u64));
        let vector_after = core::hint::black_box(vector);
        assert_eq!(vector_after, [1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5]);
    }

    #[test]
    fn rbx_and_rbp_survive_the_fake_leaf_overwriting_them() {
        let mut regs = Regs::default();
        let [before, after] = fake_seamcall(&mut regs);
        assert_eq!(before, after);
        assert_eq!((regs.rbx, regs.rsi, regs.rdi), (0xB3B3, 0x5151, 0xD1D1));
    }

    #[test]
    fn a_set_carry_flag_is_vmfailinvalid_not_success() {
        let mut regs = Regs {
            rax: 0xCF,
            ..Regs::default()
        };
        let _ = fake_seamcall(&mut regs);
        assert_eq!(regs.rax, SEAMCALL_VMFAILINVALID);
    }

    #[test]
    fn the_seamcall_instruction_is_labelled() {
        let at = seamcall_instruction_address() as *const [u8; 4];
        // SAFETY: the label marks the 4-byte instruction in this binary's code, which is
        // mapped readable.
        assert_eq!(unsafe { at.read() }, [0x66, 0x0f, 0x01, 0xcf]);
    }

    #[test]
    fn a_fault_at_the_instruction_becomes_its_status() {
        let insn = seamcall_instruction_address();
        for (vector, status) in [(6, SEAMCALL_UD), (13, SEAMCALL_GP)] {
            let mut frame = FaultFrame {
                rip: insn,
                rax: 34,
                rflags: 0x247,
            };
            assert!(fixup_seamcall_fault(vector, &mut frame));
            assert_eq!(
                frame,
                FaultFrame {
                    rip: insn + 4,
                    rax: status,
                    rflags: 0x246,
                }
            );
        }
        assert_eq!(SEAMCALL_UD, 0x8000_FF00_0000_0006);
        assert_eq!(SEAMCALL_GP, 0x8000_FF00_0000_000D);
    }

    #[test]
    fn other_faults_are_left_alone() {
        let insn = seamcall_instruction_address();
        for (rip, vector) in [
            (insn + 4, 6),
            (insn - 1, 13),
            (0x1000, 6),
            (insn, 14),
            (insn, 0),
            (insn, 3),
        ] {
            let before = FaultFrame {
                rip,
                rax: 0xAA,
                rflags: 0x3,
            };
            let mut frame = before;
            assert!(!fixup_seamcall_fault(vector, &mut frame));
            assert_eq!(frame, before);
        }
    }

    #[test]
    fn interpretation_of_msrs() {
        let tme = 0b11 | (6u64 << 32);
        let part = 31 | (32u64 << 32);
        let p = interpret(MTRRCAP_SEAMRR, SEAMRR_ENABLED, tme, part, 52).unwrap();
        assert_eq!(p.hkid_start, 32);
        assert_eq!(p.num_hkids, 32);
        assert_eq!(p.hkid_shift, 46);
        assert_eq!(interpret(0, 0, 0, 0, 52), Err(DetectError::NoSeamrr));
        assert_eq!(
            interpret(MTRRCAP_SEAMRR, 0, tme, part, 52),
            Err(DetectError::SeamrrDisabled)
        );
        assert_eq!(
            interpret(MTRRCAP_SEAMRR, SEAMRR_ENABLED, 1, part, 52),
            Err(DetectError::TmeInactive)
        );
        assert_eq!(
            interpret(MTRRCAP_SEAMRR, SEAMRR_ENABLED, tme, 31, 52),
            Err(DetectError::NoTdxKeyIds)
        );
    }
}
