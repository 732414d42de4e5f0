//! Entering and leaving VMX root operation on the calling logical CPU (VMXON / VMXOFF).
//!
//! A TDX host must be in VMX root operation on every logical CPU before TDH.SYS.LP.INIT and
//! any other SEAMCALL on that CPU. The steps follow the Intel SDM Vol. 3C §24.7 ("Enabling
//! and Entering VMX Operation") and §24.8 ("Restrictions on VMX Operation"), with the
//! capability MSRs of Appendix A.1 (IA32_VMX_BASIC) and A.7/A.8 (CR0/CR4 fixed bits) and the
//! MSR numbers of SDM Vol. 4; Linux does the same in `arch/x86/kernel/cpu/feat_ctl.c`
//! (IA32_FEATURE_CONTROL) and `arch/x86/kvm/vmx/vmx.c` (`vmx_hardware_enable`,
//! `kvm_cpu_vmxon`).
//!
//! The module is a pure core plus a thin unsafe shell: [`plan`] interprets MSR and control
//! register values and decides every write, [`VmxonRegion::prepare`] lays out the region and
//! [`vmx_outcome`] decodes RFLAGS after a VMX instruction; all of them are tested on the host.
//! [`enable_on_this_cpu`] and [`disable_on_this_cpu`] read the hardware, apply the plan and
//! execute the instructions; they only run on the appliance.

use crate::{rdmsr, wrmsr};

/// IA32_FEATURE_CONTROL: bit 0 lock, bit 1 VMX inside SMX, bit 2 VMX outside SMX.
pub const MSR_IA32_FEATURE_CONTROL: u32 = 0x3A;
/// IA32_FEATURE_CONTROL lock bit: once set, the MSR is read-only until reset.
pub const FEATURE_CONTROL_LOCKED: u64 = 1 << 0;
/// IA32_FEATURE_CONTROL: VMXON allowed outside SMX operation.
pub const FEATURE_CONTROL_VMX_OUTSIDE_SMX: u64 = 1 << 2;
/// IA32_VMX_BASIC: revision identifier, region size, memory type (SDM Appendix A.1).
pub const MSR_IA32_VMX_BASIC: u32 = 0x480;
/// IA32_VMX_CR0_FIXED0: CR0 bits that must be 1 in VMX operation.
pub const MSR_IA32_VMX_CR0_FIXED0: u32 = 0x486;
/// IA32_VMX_CR0_FIXED1: CR0 bits that may be 1 in VMX operation.
pub const MSR_IA32_VMX_CR0_FIXED1: u32 = 0x487;
/// IA32_VMX_CR4_FIXED0: CR4 bits that must be 1 in VMX operation.
pub const MSR_IA32_VMX_CR4_FIXED0: u32 = 0x488;
/// IA32_VMX_CR4_FIXED1: CR4 bits that may be 1 in VMX operation.
pub const MSR_IA32_VMX_CR4_FIXED1: u32 = 0x489;
/// CR0.NE (numeric error), the only CR0 bit [`plan`] turns on by itself.
pub const CR0_NE: u64 = 1 << 5;
/// CR4.VMXE: VMX enable.
pub const CR4_VMXE: u64 = 1 << 13;
/// IA32_VMX_BASIC memory type (bits 53:50) for write-back.
pub const MEMORY_TYPE_WB: u8 = 6;
/// Size of the VMXON region this module provides (the SDM's upper bound).
pub const VMXON_REGION_SIZE: usize = 4096;

/// RFLAGS carry flag (VMfailInvalid).
const RFLAGS_CF: u64 = 1 << 0;
/// RFLAGS zero flag (VMfailValid).
const RFLAGS_ZF: u64 = 1 << 6;
/// IA32_VMX_BASIC bit 48: VMX structures limited to 32-bit physical addresses.
const VMX_BASIC_32BIT_PA: u64 = 1 << 48;

/// The values [`plan`] interprets, read on the CPU that is to enter VMX operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmxMsrs {
    /// CPUID.1:ECX[5]: the CPU implements VMX. When clear, the VMX MSRs do not exist.
    pub cpuid_vmx: bool,
    /// IA32_FEATURE_CONTROL (0x3A).
    pub feature_control: u64,
    /// IA32_VMX_BASIC (0x480).
    pub vmx_basic: u64,
    /// IA32_VMX_CR0_FIXED0 (0x486).
    pub cr0_fixed0: u64,
    /// IA32_VMX_CR0_FIXED1 (0x487).
    pub cr0_fixed1: u64,
    /// IA32_VMX_CR4_FIXED0 (0x488).
    pub cr4_fixed0: u64,
    /// IA32_VMX_CR4_FIXED1 (0x489).
    pub cr4_fixed1: u64,
}

/// What to write before VMXON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxonPlan {
    /// VMCS revision identifier (IA32_VMX_BASIC bits 30:0) for the VMXON region.
    pub revision_id: u32,
    /// CR0 to run with in VMX operation (equal to the current CR0 or with NE added).
    pub new_cr0: u64,
    /// CR4 to run with in VMX operation (VMXE set).
    pub new_cr4: u64,
    /// IA32_FEATURE_CONTROL value to write (and lock) first, if the firmware left it unlocked.
    pub feature_control_write: Option<u64>,
}

/// How a VMX instruction reported failure in RFLAGS (SDM Vol. 3C §31.2, "Conventions").
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VmxInstructionError {
    /// CF = 1: no current VMCS to hold an error number. For VMXON: the region's physical
    /// address is not 4-KiB aligned or too wide, or its revision identifier is wrong.
    #[error("VMfailInvalid (RFLAGS.CF = 1): the operand or VMXON region was rejected")]
    FailInvalid,
    /// ZF = 1: the error number is in the current VMCS's VM-instruction error field. For
    /// VMXON this means the CPU already was in VMX root operation; for VMXOFF, that the
    /// dual-monitor treatment of SMIs is active.
    #[error("VMfailValid (RFLAGS.ZF = 1): see the VM-instruction error field of the current VMCS")]
    FailValid,
}

/// Why this CPU cannot enter VMX root operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VmxError {
    /// CPUID.1:ECX[5] is clear.
    #[error("the CPU does not implement VMX (CPUID.1:ECX[5] is clear); a TDX host needs VT-x")]
    NoVmx,
    /// IA32_FEATURE_CONTROL is locked with VMX outside SMX disabled.
    #[error(
        "VMX is disabled in IA32_FEATURE_CONTROL and locked by the firmware (enable VT-x in \
         the BIOS); IA32_FEATURE_CONTROL = {feature_control:#x}"
    )]
    DisabledByFirmware {
        /// The MSR's value.
        feature_control: u64,
    },
    /// CR4.VMXE is already set: something already executed VMXON on this CPU.
    #[error("CR4.VMXE is already set: this CPU is already in VMX operation")]
    AlreadyOn,
    /// IA32_VMX_BASIC bit 48 is set (32-bit physical addresses only for VMX structures).
    #[error("IA32_VMX_BASIC limits VMX structures to 32-bit physical addresses (bit 48)")]
    PhysicalAddressWidth,
    /// IA32_VMX_BASIC bits 53:50 name a memory type other than write-back.
    #[error("IA32_VMX_BASIC reports VMX structure memory type {0}, expected 6 (write-back)")]
    RegionMemoryType(u8),
    /// IA32_VMX_BASIC bits 44:32 ask for a VMXON region larger than 4 KiB.
    #[error("IA32_VMX_BASIC asks for a {0}-byte VMXON region, more than 4096")]
    RegionSize(u32),
    /// The CR0 fixed-bit MSRs demand a change other than setting CR0.NE.
    #[error(
        "IA32_VMX_CR0_FIXED0/1 require CR0 = {required:#x} but it is {current:#x}; refusing \
         to change bits {:#x} (only CR0.NE is set automatically)",
        .required ^ .current
    )]
    Cr0FixedBits {
        /// CR0 as the fixed-bit MSRs want it.
        required: u64,
        /// CR0 now.
        current: u64,
    },
    /// The CR4 fixed-bit MSRs would clear a CR4 bit that is set now.
    #[error(
        "IA32_VMX_CR4_FIXED1 would clear CR4 bits {:#x} (CR4 = {current:#x}, required \
         {required:#x})",
        .current & !.required
    )]
    Cr4FixedBits {
        /// CR4 as the fixed-bit MSRs want it.
        required: u64,
        /// CR4 now.
        current: u64,
    },
    /// IA32_VMX_CR4_FIXED1 does not allow CR4.VMXE.
    #[error("IA32_VMX_CR4_FIXED1 does not allow CR4.VMXE")]
    VmxeNotAllowed,
    /// VMXON itself reported failure.
    #[error("VMXON failed: {0}")]
    Vmxon(VmxInstructionError),
}

/// Decides how to enter VMX operation from the MSR values and the current CR0/CR4.
///
/// IA32_FEATURE_CONTROL: if locked, VMX outside SMX must be enabled; if unlocked (never the
/// case on a TDX platform, whose BIOS locks it while configuring SEAMRR and TME), the plan
/// writes exactly lock | VMX-outside-SMX, as Linux's `feat_ctl.c` does. IA32_VMX_BASIC
/// bit 48 is always 0 on Intel 64 CPUs; if it were set, the VMXON region would have to lie
/// below 4 GiB, which this host does not guarantee, so it is refused. CR0 may only gain NE
/// (PE and PG are set in long mode already); CR4 gains VMXE and any FIXED0 bit, and no set
/// bit may be cleared.
pub fn plan(msrs: &VmxMsrs, cr0: u64, cr4: u64) -> Result<VmxonPlan, VmxError> {
    if !msrs.cpuid_vmx {
        return Err(VmxError::NoVmx);
    }
    let fc = msrs.feature_control;
    let feature_control_write = if fc & FEATURE_CONTROL_LOCKED == 0 {
        Some(FEATURE_CONTROL_LOCKED | FEATURE_CONTROL_VMX_OUTSIDE_SMX)
    } else if fc & FEATURE_CONTROL_VMX_OUTSIDE_SMX == 0 {
        return Err(VmxError::DisabledByFirmware {
            feature_control: fc,
        });
    } else {
        None
    };
    let basic = msrs.vmx_basic;
    if basic & VMX_BASIC_32BIT_PA != 0 {
        return Err(VmxError::PhysicalAddressWidth);
    }
    let memory_type = ((basic >> 50) & 0xF) as u8;
    if memory_type != MEMORY_TYPE_WB {
        return Err(VmxError::RegionMemoryType(memory_type));
    }
    let size = ((basic >> 32) & 0x1FFF) as u32;
    if size as usize > VMXON_REGION_SIZE {
        return Err(VmxError::RegionSize(size));
    }
    if cr4 & CR4_VMXE != 0 {
        return Err(VmxError::AlreadyOn);
    }
    let new_cr0 = (cr0 | msrs.cr0_fixed0) & msrs.cr0_fixed1;
    if (new_cr0 ^ cr0) & !CR0_NE != 0 {
        return Err(VmxError::Cr0FixedBits {
            required: new_cr0,
            current: cr0,
        });
    }
    if msrs.cr4_fixed1 & CR4_VMXE == 0 {
        return Err(VmxError::VmxeNotAllowed);
    }
    let new_cr4 = (cr4 | msrs.cr4_fixed0 | CR4_VMXE) & msrs.cr4_fixed1;
    if cr4 & !new_cr4 != 0 {
        return Err(VmxError::Cr4FixedBits {
            required: new_cr4,
            current: cr4,
        });
    }
    Ok(VmxonPlan {
        revision_id: (basic & 0x7FFF_FFFF) as u32,
        new_cr0,
        new_cr4,
        feature_control_write,
    })
}

/// Decodes RFLAGS after VMXON or VMXOFF: CF = 1 is VMfailInvalid (checked first), ZF = 1
/// VMfailValid, anything else success.
pub fn vmx_outcome(rflags: u64) -> Result<(), VmxInstructionError> {
    if rflags & RFLAGS_CF != 0 {
        Err(VmxInstructionError::FailInvalid)
    } else if rflags & RFLAGS_ZF != 0 {
        Err(VmxInstructionError::FailValid)
    } else {
        Ok(())
    }
}

/// The 4-KiB-aligned VMXON region (SDM Vol. 3C §25.11.5). Software must not touch it while
/// the CPU is in VMX operation.
#[repr(C, align(4096))]
pub struct VmxonRegion([u8; VMXON_REGION_SIZE]);

impl VmxonRegion {
    /// A zeroed region.
    pub const fn new() -> VmxonRegion {
        VmxonRegion([0; VMXON_REGION_SIZE])
    }

    /// Writes `revision_id` (bit 31 cleared) to the first four bytes and zeroes the rest.
    pub fn prepare(&mut self, revision_id: u32) {
        self.0.fill(0);
        self.0[..4].copy_from_slice(&(revision_id & 0x7FFF_FFFF).to_le_bytes());
    }
}

impl Default for VmxonRegion {
    fn default() -> VmxonRegion {
        VmxonRegion::new()
    }
}

/// What [`enable_on_this_cpu`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxOn {
    /// VMCS revision identifier written to the region.
    pub revision_id: u32,
    /// CR0 before (CR0.NE may have been set since).
    pub cr0_before: u64,
    /// Whether CR0 was changed.
    pub cr0_changed: bool,
    /// CR4 before (VMXE clear).
    pub cr4_before: u64,
    /// Whether IA32_FEATURE_CONTROL was written and locked (irreversible until reset).
    pub feature_control_locked: bool,
}

/// Reads CR0 and CR4.
///
/// # Safety
/// CPL 0.
unsafe fn read_cr0_cr4() -> (u64, u64) {
    let (cr0, cr4): (u64, u64);
    // SAFETY: the caller runs at CPL 0, where reading control registers has no side effect.
    unsafe {
        core::arch::asm!("mov {}, cr0", "mov {}, cr4", out(reg) cr0, out(reg) cr4,
            options(nomem, nostack, preserves_flags));
    }
    (cr0, cr4)
}

/// Writes CR0.
///
/// # Safety
/// CPL 0; `value` must keep paging and protection as the program relies on them.
unsafe fn write_cr0(value: u64) {
    // SAFETY: forwarded contract; no `nomem`, so memory accesses are not moved across it.
    unsafe { core::arch::asm!("mov cr0, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// Writes CR4.
///
/// # Safety
/// CPL 0; `value` must keep paging as the program relies on it and be valid for the CPU.
unsafe fn write_cr4(value: u64) {
    // SAFETY: forwarded contract; no `nomem`, so memory accesses are not moved across it.
    unsafe { core::arch::asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// Puts the calling logical CPU into VMX root operation with `region` as its VMXON region.
///
/// Returns [`VmxError::AlreadyOn`] without changing anything if CR4.VMXE is set. On a VMXON
/// failure CR0 and CR4 are restored; a FEATURE_CONTROL lock cannot be undone. The checks of
/// [`plan`] cover the conditions under which VMXON faults instead of failing (SDM §24.7,
/// §24.8), so the instruction is expected to either succeed or report VMfail.
///
/// # Safety
/// CPL 0 on an Intel CPU, with interrupts (or at least migration) unable to move the caller
/// to another CPU. `region_pa` must be the physical address of `region`, and `region` must
/// stay alive and untouched until [`disable_on_this_cpu`] has run on this CPU.
pub unsafe fn enable_on_this_cpu(
    region: &mut VmxonRegion,
    region_pa: u64,
) -> Result<VmxOn, VmxError> {
    let cpuid_vmx = core::arch::x86_64::__cpuid(1).ecx & (1 << 5) != 0;
    let msrs = if cpuid_vmx {
        // SAFETY: CPL 0 (caller); these MSRs exist on every CPU with CPUID.1:ECX.VMX set.
        unsafe {
            VmxMsrs {
                cpuid_vmx,
                feature_control: rdmsr(MSR_IA32_FEATURE_CONTROL),
                vmx_basic: rdmsr(MSR_IA32_VMX_BASIC),
                cr0_fixed0: rdmsr(MSR_IA32_VMX_CR0_FIXED0),
                cr0_fixed1: rdmsr(MSR_IA32_VMX_CR0_FIXED1),
                cr4_fixed0: rdmsr(MSR_IA32_VMX_CR4_FIXED0),
                cr4_fixed1: rdmsr(MSR_IA32_VMX_CR4_FIXED1),
            }
        }
    } else {
        VmxMsrs::default()
    };
    // SAFETY: CPL 0 (caller).
    let (cr0, cr4) = unsafe { read_cr0_cr4() };
    let plan = plan(&msrs, cr0, cr4)?;
    if let Some(value) = plan.feature_control_write {
        // SAFETY: the MSR is unlocked (plan checked), so writing lock | VMX does not #GP;
        // it only enables VMX, which nothing else relies on being off.
        unsafe { wrmsr(MSR_IA32_FEATURE_CONTROL, value) };
    }
    if plan.new_cr0 != cr0 {
        // SAFETY: plan only adds CR0.NE (x87 errors via #MF instead of FERR#), which leaves
        // paging and protection unchanged.
        unsafe { write_cr0(plan.new_cr0) };
    }
    // SAFETY: plan adds VMXE (allowed by FIXED1) and FIXED0 bits and clears nothing.
    unsafe { write_cr4(plan.new_cr4) };
    region.prepare(plan.revision_id);
    let pa_operand: *const u64 = &region_pa;
    let rflags: u64;
    // SAFETY: CR4.VMXE is set and the CR0/CR4/FEATURE_CONTROL conditions of SDM §24.7/§24.8
    // hold (plan), so VMXON does not fault; its m64 operand points to a live local holding
    // the region's physical address (caller contract), and the region was prepared just
    // before (the block is not `nomem`, so the writes are complete). The stack is balanced.
    unsafe {
        core::arch::asm!(
            "vmxon qword ptr [{pa}]",
            "pushfq",
            "pop {flags}",
            pa = in(reg) pa_operand,
            flags = out(reg) rflags,
        );
    }
    if let Err(e) = vmx_outcome(rflags) {
        // SAFETY: restores the values read above; the CPU is not in VMX operation (VMXON
        // failed), so clearing VMXE is allowed.
        unsafe {
            write_cr4(cr4);
            write_cr0(cr0);
        }
        return Err(VmxError::Vmxon(e));
    }
    Ok(VmxOn {
        revision_id: plan.revision_id,
        cr0_before: cr0,
        cr0_changed: plan.new_cr0 != cr0,
        cr4_before: cr4,
        feature_control_locked: plan.feature_control_write.is_some(),
    })
}

/// Leaves VMX operation on the calling CPU (VMXOFF) and then clears CR4.VMXE. If VMXOFF
/// reports failure, the CPU is still in VMX operation and CR4 is left alone (clearing VMXE
/// there would #GP).
///
/// # Safety
/// CPL 0, on a CPU that [`enable_on_this_cpu`] put into VMX root operation (else VMXOFF
/// raises #UD), with no TDX or VMX work still in flight on it.
pub unsafe fn disable_on_this_cpu() -> Result<(), VmxInstructionError> {
    let rflags: u64;
    // SAFETY: the caller guarantees VMX root operation at CPL 0, where VMXOFF does not
    // fault; the stack is balanced.
    unsafe { core::arch::asm!("vmxoff", "pushfq", "pop {}", out(reg) rflags) };
    vmx_outcome(rflags)?;
    // SAFETY: the CPU has left VMX operation, so clearing VMXE is allowed; nothing else
    // depends on it.
    unsafe { write_cr4(read_cr0_cr4().1 & !CR4_VMXE) };
    Ok(())
}

/// INVEPT type 2 (all-context): invalidates every guest-physical and combined translation
/// this CPU caches, for every EPT hierarchy (SDM Vol. 3C, "INVEPT"; KVM's `ept_sync_global`).
///
/// # Safety
/// CPL 0, on a CPU in VMX root operation (else INVEPT raises #UD).
pub unsafe fn invept_all_contexts() -> Result<(), VmxInstructionError> {
    // The descriptor is ignored for type 2 but must be readable.
    let descriptor = [0u64; 2];
    let rflags: u64;
    // SAFETY: VMX root operation at CPL 0 (the caller's contract); the descriptor is a live
    // 16-byte local; the stack is balanced.
    unsafe {
        core::arch::asm!("invept {kind}, [{descriptor}]", "pushfq", "pop {flags}",
            kind = in(reg) 2u64, descriptor = in(reg) descriptor.as_ptr(), flags = out(reg) rflags);
    }
    vmx_outcome(rflags)
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    // Values in the shape the SDM (Appendix A.1, A.7, A.8) describes for a Sapphire/Emerald
    // Rapids-class server, constructed by hand, not dumped from a machine. IA32_VMX_BASIC:
    // revision 4, region size 0x400 (bits 44:32), dual-monitor (49), WB (6 in bits 53:50),
    // INS/OUTS reporting (54), true controls (55).
    const BASIC: u64 = 0x00DA_0400_0000_0004;
    // Every CR4 bit such a CPU implements: bits 0-14, 16-18, 20-25 (no Key Locker, bit 19).
    const CR4_FIXED1: u64 = 0x03F7_7FFF;
    // Long mode under UEFI: PG | WP | ET | MP | PE, without and with NE.
    const CR0_NO_NE: u64 = 0x8001_0013;
    const CR0: u64 = CR0_NO_NE | CR0_NE;
    // PAE | MCE | PGE | OSFXSR | OSXMMEXCPT | OSXSAVE.
    const CR4: u64 = 0x0004_06E0;

    fn msrs(feature_control: u64) -> VmxMsrs {
        VmxMsrs {
            cpuid_vmx: true,
            feature_control,
            vmx_basic: BASIC,
            cr0_fixed0: 0x8000_0021, // PG | NE | PE
            cr0_fixed1: 0xFFFF_FFFF,
            cr4_fixed0: CR4_VMXE,
            cr4_fixed1: CR4_FIXED1,
        }
    }

    #[test]
    fn locked_enabled_platform() {
        // Lock | VMX outside SMX | SGX (bit 18), as a TDX BIOS leaves it.
        let expected = VmxonPlan {
            revision_id: 4,
            new_cr0: CR0,
            new_cr4: 0x0004_26E0,
            feature_control_write: None,
        };
        assert_eq!(plan(&msrs(0x4_0005), CR0, CR4), Ok(expected));
    }

    #[test]
    fn feature_control_locked_off() {
        for feature_control in [0x1, 0x3] {
            let e = VmxError::DisabledByFirmware { feature_control };
            assert_eq!(plan(&msrs(feature_control), CR0, CR4), Err(e));
        }
        let text = VmxError::DisabledByFirmware { feature_control: 1 }.to_string();
        assert!(text.contains("enable VT-x in the BIOS"), "{text}");
    }

    #[test]
    fn feature_control_unlocked_is_locked_with_vmx() {
        let p = plan(&msrs(0x2), CR0, CR4).map(|p| p.feature_control_write);
        assert_eq!(p, Ok(Some(0x5)));
    }

    #[test]
    fn no_vmx_and_already_on() {
        let none = VmxMsrs::default();
        assert_eq!(plan(&none, CR0, CR4), Err(VmxError::NoVmx));
        let on = CR4 | CR4_VMXE;
        assert_eq!(plan(&msrs(5), CR0, on), Err(VmxError::AlreadyOn));
    }

    #[test]
    fn vmx_basic_checks() {
        let mut m = msrs(5);
        m.vmx_basic = BASIC | 1 << 48;
        assert_eq!(plan(&m, CR0, CR4), Err(VmxError::PhysicalAddressWidth));
        m.vmx_basic = BASIC & !(0xF << 50); // uncacheable
        assert_eq!(plan(&m, CR0, CR4), Err(VmxError::RegionMemoryType(0)));
        m.vmx_basic = BASIC | 0x1FFF << 32;
        assert_eq!(plan(&m, CR0, CR4), Err(VmxError::RegionSize(0x1FFF)));
        m.vmx_basic = BASIC | 0x8000_0000; // bit 31 is not part of the revision
        assert_eq!(plan(&m, CR0, CR4).map(|p| p.revision_id), Ok(4));
    }

    #[test]
    fn cr0_ne_is_set() {
        let p = plan(&msrs(5), CR0_NO_NE, CR4).map(|p| p.new_cr0);
        assert_eq!(p, Ok(0x8001_0033));
    }

    #[test]
    fn cr0_other_changes_refused() {
        // PG clear: FIXED0 would turn on paging.
        let current = CR0 & !(1 << 31);
        let e = VmxError::Cr0FixedBits {
            required: CR0,
            current,
        };
        assert_eq!(plan(&msrs(5), current, CR4), Err(e));
        // FIXED1 forbidding CD (bit 30) while it is set.
        let mut m = msrs(5);
        m.cr0_fixed1 = 0xBFFF_FFFF;
        let current = CR0 | 1 << 30;
        let e = VmxError::Cr0FixedBits {
            required: CR0,
            current,
        };
        assert_eq!(plan(&m, current, CR4), Err(e));
        let text = e.to_string();
        assert!(text.contains("bits 0x40000000"), "{text}");
    }

    #[test]
    fn cr4_checks() {
        let mut m = msrs(5);
        m.cr4_fixed1 = CR4_FIXED1 & !CR4_VMXE;
        assert_eq!(plan(&m, CR0, CR4), Err(VmxError::VmxeNotAllowed));
        m.cr4_fixed1 = CR4_FIXED1 & !(1 << 18); // would clear OSXSAVE
        let e = VmxError::Cr4FixedBits {
            required: 0x26E0,
            current: CR4,
        };
        assert_eq!(plan(&m, CR0, CR4), Err(e));
    }

    #[test]
    fn region_prepare() {
        assert_eq!(core::mem::align_of::<VmxonRegion>(), 4096);
        assert_eq!(core::mem::size_of::<VmxonRegion>(), 4096);
        let mut r = VmxonRegion([0xAA; VMXON_REGION_SIZE]);
        r.prepare(0x8000_0004);
        assert_eq!(r.0[..4], [4, 0, 0, 0]);
        assert!(r.0[4..].iter().all(|&b| b == 0));
        r.prepare(0x1234_5678);
        assert_eq!(r.0[..4], [0x78, 0x56, 0x34, 0x12]);
    }

    #[test]
    fn rflags_decoding() {
        // Bit 1 of RFLAGS always reads 1; IF (bit 9) is irrelevant.
        assert_eq!(vmx_outcome(0x202), Ok(()));
        assert_eq!(vmx_outcome(0x203), Err(VmxInstructionError::FailInvalid));
        assert_eq!(vmx_outcome(0x242), Err(VmxInstructionError::FailValid));
        assert_eq!(vmx_outcome(0x243), Err(VmxInstructionError::FailInvalid));
    }
}
