//! TDX detection (Intel TDX Module 1.5 base architecture specification, "Platform enumeration";
//! Linux `arch/x86/virt/vmx/tdx/tdx.c` `tdx_init`): the CPU
//! vendor and MTRR support through CPUID, then IA32_MTRRCAP.SEAMRR, IA32_SEAMRR_PHYS_MASK,
//! IA32_TME_ACTIVATE and IA32_MKTME_KEYID_PARTITIONING through `tdx_hw::detect`.

use tdx_hw::{DetectError, TdxPlatform};

/// Why no TDX hardware is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoTdx {
    /// Not an Intel CPU, or no MTRRs (the TDX MSRs do not exist).
    NotIntel,
    /// The MSRs say TDX is not usable.
    Msr(DetectError),
}

impl core::fmt::Display for NoTdx {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NoTdx::NotIntel => f.write_str("not an Intel CPU with MTRRs"),
            NoTdx::Msr(e) => write!(f, "{e}"),
        }
    }
}

/// Detects a TDX-capable platform.
pub fn detect() -> Result<TdxPlatform, NoTdx> {
    let vendor = core::arch::x86_64::__cpuid(0);
    let intel = (vendor.ebx, vendor.edx, vendor.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e);
    let mtrr = core::arch::x86_64::__cpuid(1).edx & (1 << 12) != 0;
    if !intel || !mtrr {
        return Err(NoTdx::NotIntel);
    }
    // SAFETY: the appliance runs at CPL 0 (UEFI applications run in ring 0 on x64) on an Intel CPU with MTRRs,
    // so IA32_MTRRCAP exists; `detect` reads the SEAM/TME MSRs only when MTRRCAP says SEAMRR
    // is supported.
    unsafe { tdx_hw::detect() }.map_err(NoTdx::Msr)
}
