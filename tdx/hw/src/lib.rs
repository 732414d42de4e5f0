//! The hardware SEAMCALL backend: the `seamcall` instruction (encoding `66 0f 01 cf`) in
//! inline assembly, plus TDX detection helpers.
//!
//! Only compiled for x86_64 and never executed unless detection says a TDX module is loaded:
//! on a CPU without SEAM, `seamcall` raises #UD. The runtime's appliance calls
//! [`detect`] (which reads MSRs and therefore is `unsafe`) before it constructs a
//! [`HardwareModule`].
//!
//! Register convention (TDX module 1.5 ABI, Linux `arch/x86/virt/vmx/tdx/seamcall.S`): RAX =
//! leaf | version << 16, operands in RCX, RDX, R8–R15; outputs in the same registers, status
//! in RAX. The module preserves RBX, RSI, RDI, RBP, RSP and the callee-saved registers; this
//! wrapper declares every register the ABI may write as clobbered/output.

#![no_std]

use tdx_abi::seamcall::{ModuleKind, Regs, Seamcall};

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

/// The real TDX module, reached with `seamcall`.
pub struct HardwareModule {
    hkid_shift: u32,
}

impl HardwareModule {
    /// A handle for a platform [`detect`] accepted.
    ///
    /// # Safety
    /// A TDX module must be loaded (SEAMLDR done); otherwise every call raises #UD.
    pub unsafe fn new(platform: TdxPlatform) -> HardwareModule {
        HardwareModule {
            hkid_shift: platform.hkid_shift,
        }
    }
}

impl Seamcall for HardwareModule {
    fn seamcall(&self, regs: &mut Regs) {
        // SAFETY: constructing a HardwareModule requires a loaded TDX module (see `new`), so
        // `seamcall` does not fault; the asm names every register the ABI reads or writes,
        // and the module preserves the stack and all other registers.
        unsafe {
            core::arch::asm!(
                ".byte 0x66, 0x0f, 0x01, 0xcf",
                inout("rax") regs.rax,
                inout("rcx") regs.rcx,
                inout("rdx") regs.rdx,
                inout("r8") regs.r8,
                inout("r9") regs.r9,
                inout("r10") regs.r10,
                inout("r11") regs.r11,
                inout("r12") regs.r12,
                inout("r13") regs.r13,
                inout("r14") regs.r14,
                inout("r15") regs.r15,
                options(nostack),
            );
        }
    }
    fn kind(&self) -> ModuleKind {
        ModuleKind::Hardware
    }
    fn hkid_shift(&self) -> u32 {
        self.hkid_shift
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
