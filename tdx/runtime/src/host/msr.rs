//! The MSRs a TD asks its host for (TDVMCALL Instruction.RDMSR/WRMSR): the ones the TDX module
//! leaves to the VMM, after KVM's `tdx_has_emulated_msr` (Linux `arch/x86/kvm/vmx/tdx.c`).
//!
//! Each vCPU keeps the guest-writable ones (PAT, the MTRRs); the identification MSRs read as
//! a plain platform with nothing to report; machine-check banks read zero and ignore writes.
//! Any other MSR is refused (the guest sees the failure as it would see #GP). The x2APIC
//! registers and the TSC deadline are not here: they belong to the virtual APIC.

/// IA32_MTRRCAP: 8 variable ranges, fixed ranges, write-combining.
const MTRRCAP_VALUE: u64 = 0x508;
/// IA32_PAT at reset.
const PAT_RESET: u64 = 0x0007_0406_0007_0406;
/// IA32_APIC_BASE: the default base, x2APIC mode and global enable (TDX vCPUs start in
/// x2APIC mode); bit 8 marks the bootstrap processor.
const APIC_BASE_X2APIC: u64 = 0xFEE0_0000 | 1 << 11 | 1 << 10;
const APIC_BASE_BSP: u64 = 1 << 8;

const IA32_UCODE_REV: u32 = 0x8B;
const IA32_PLATFORM_INFO: u32 = 0xCE;
const IA32_FEATURE_CONTROL: u32 = 0x3A;
const IA32_MTRRCAP: u32 = 0xFE;
const IA32_ARCH_CAPABILITIES: u32 = 0x10A;
const IA32_MCG_CAP: u32 = 0x179;
const IA32_MCG_STATUS: u32 = 0x17A;
const IA32_MCG_CTL: u32 = 0x17B;
const IA32_MISC_ENABLE: u32 = 0x1A0;
const IA32_APIC_BASE: u32 = 0x1B;
const IA32_POWER_CTL: u32 = 0x1FC;
const IA32_MTRR_PHYSBASE0: u32 = 0x200;
const IA32_MTRR_FIX64K_00000: u32 = 0x250;
const IA32_MTRR_FIX16K_80000: u32 = 0x258;
const IA32_MTRR_FIX16K_A0000: u32 = 0x259;
const IA32_MTRR_FIX4K_C0000: u32 = 0x268;
const IA32_PAT: u32 = 0x277;
const IA32_MTRR_DEF_TYPE: u32 = 0x2FF;
const IA32_MC0_CTL: u32 = 0x400;
/// Machine-check banks 0–31, four MSRs each.
const MC_BANK_MSRS: u32 = 32 * 4;

/// Fixed-range MTRRs, in the order of [`MsrFile::fixed`].
const FIXED_MTRRS: [u32; 11] = [
    IA32_MTRR_FIX64K_00000,
    IA32_MTRR_FIX16K_80000,
    IA32_MTRR_FIX16K_A0000,
    IA32_MTRR_FIX4K_C0000,
    IA32_MTRR_FIX4K_C0000 + 1,
    IA32_MTRR_FIX4K_C0000 + 2,
    IA32_MTRR_FIX4K_C0000 + 3,
    IA32_MTRR_FIX4K_C0000 + 4,
    IA32_MTRR_FIX4K_C0000 + 5,
    IA32_MTRR_FIX4K_C0000 + 6,
    IA32_MTRR_FIX4K_C0000 + 7,
];

/// The guest refused an MSR access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrRefused;

/// One vCPU's host-emulated MSRs.
#[derive(Clone, Debug)]
pub struct MsrFile {
    bsp: bool,
    pat: u64,
    def_type: u64,
    /// PHYSBASE/PHYSMASK pairs of the 8 variable ranges.
    variable: [u64; 16],
    fixed: [u64; 11],
}

impl MsrFile {
    /// The MSRs of vCPU `index` at reset (vCPU 0 is the bootstrap processor).
    pub fn new(index: u32) -> Self {
        MsrFile {
            bsp: index == 0,
            pat: PAT_RESET,
            def_type: 0,
            variable: [0; 16],
            fixed: [0; 11],
        }
    }

    /// RDMSR.
    pub fn read(&self, msr: u32) -> Result<u64, MsrRefused> {
        Ok(match msr {
            IA32_UCODE_REV | IA32_PLATFORM_INFO | IA32_ARCH_CAPABILITIES | IA32_POWER_CTL => 0,
            // Locked, no VMX for the guest.
            IA32_FEATURE_CONTROL => 1,
            IA32_MTRRCAP => MTRRCAP_VALUE,
            IA32_MCG_CAP | IA32_MCG_STATUS | IA32_MCG_CTL => 0,
            // Fast strings.
            IA32_MISC_ENABLE => 1,
            IA32_APIC_BASE => APIC_BASE_X2APIC | if self.bsp { APIC_BASE_BSP } else { 0 },
            IA32_PAT => self.pat,
            IA32_MTRR_DEF_TYPE => self.def_type,
            m if (IA32_MTRR_PHYSBASE0..IA32_MTRR_PHYSBASE0 + 16).contains(&m) => {
                self.variable[(m - IA32_MTRR_PHYSBASE0) as usize]
            }
            m if (IA32_MC0_CTL..IA32_MC0_CTL + MC_BANK_MSRS).contains(&m) => 0,
            m => match FIXED_MTRRS.iter().position(|&f| f == m) {
                Some(i) => self.fixed[i],
                None => return Err(MsrRefused),
            },
        })
    }

    /// WRMSR.
    pub fn write(&mut self, msr: u32, value: u64) -> Result<(), MsrRefused> {
        match msr {
            IA32_PAT => self.pat = value,
            IA32_MTRR_DEF_TYPE => self.def_type = value & 0xCFF,
            m if (IA32_MTRR_PHYSBASE0..IA32_MTRR_PHYSBASE0 + 16).contains(&m) => {
                self.variable[(m - IA32_MTRR_PHYSBASE0) as usize] = value;
            }
            // Status writes and bank controls: accepted, nothing to control.
            IA32_MCG_STATUS | IA32_MCG_CTL | IA32_POWER_CTL | IA32_MISC_ENABLE => {}
            // Writing 0 before CPUID(1) is how a kernel asks for the microcode revision
            // (Linux `intel_get_microcode_revision`): accepted, nothing to do.
            IA32_UCODE_REV if value == 0 => {}
            m if (IA32_MC0_CTL..IA32_MC0_CTL + MC_BANK_MSRS).contains(&m) => {}
            // The base cannot move and x2APIC mode cannot be left in a TD.
            IA32_APIC_BASE if value == self.read(IA32_APIC_BASE)? => {}
            m => match FIXED_MTRRS.iter().position(|&f| f == m) {
                Some(i) => self.fixed[i] = value,
                None => return Err(MsrRefused),
            },
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn guest_writable_msrs_read_back() {
        let mut m = MsrFile::new(0);
        assert_eq!(m.read(IA32_PAT), Ok(PAT_RESET));
        m.write(IA32_PAT, 0x0606).unwrap();
        assert_eq!(m.read(IA32_PAT), Ok(0x0606));
        m.write(0x205, 0xFFFF_F000_0800).unwrap();
        assert_eq!(m.read(0x205), Ok(0xFFFF_F000_0800));
        m.write(IA32_MTRR_FIX4K_C0000 + 7, 0x0505).unwrap();
        assert_eq!(m.read(IA32_MTRR_FIX4K_C0000 + 7), Ok(0x0505));
        m.write(IA32_MTRR_DEF_TYPE, u64::MAX).unwrap();
        assert_eq!(m.read(IA32_MTRR_DEF_TYPE), Ok(0xCFF));
        assert_eq!(m.read(IA32_MTRRCAP), Ok(MTRRCAP_VALUE));
    }

    #[test]
    fn apic_base_marks_only_the_bsp_and_cannot_move() {
        let (mut bsp, ap) = (MsrFile::new(0), MsrFile::new(1));
        assert_eq!(bsp.read(IA32_APIC_BASE), Ok(0xFEE0_0D00));
        assert_eq!(ap.read(IA32_APIC_BASE), Ok(0xFEE0_0C00));
        assert_eq!(bsp.write(IA32_APIC_BASE, 0xFEE0_0D00), Ok(()));
        assert_eq!(bsp.write(IA32_APIC_BASE, 0xFEE0_0900), Err(MsrRefused));
    }

    #[test]
    fn other_msrs_are_refused() {
        let mut m = MsrFile::new(0);
        for msr in [0x10, 0x6E0, 0x802, 0xC000_0080, 0xFFFF_FFFF] {
            assert_eq!(m.read(msr), Err(MsrRefused), "{msr:#x}");
            assert_eq!(m.write(msr, 0), Err(MsrRefused), "{msr:#x}");
        }
        assert_eq!(m.read(IA32_MC0_CTL + 5), Ok(0));
    }
}
