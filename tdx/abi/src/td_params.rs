//! TD_PARAMS, the 1024-byte input of TDH.MNG.INIT (TDX module 1.5 `td_params_t` in
//! `include/tdx_api_defs.h`), and the TD attribute bits.
//!
//! Layout (little-endian): ATTRIBUTES @0x000 (8), XFAM @0x008 (8), MAX_VCPUS @0x010 (2),
//! NUM_L2_VMS @0x012 (1), MSR_CONFIG_CTLS @0x013 (1), reserved @0x014 (4), EPTP_CONTROLS @0x018
//! (8), CONFIG_FLAGS @0x020 (8), TSC_FREQUENCY @0x028 (2, units of 25 MHz), reserved @0x02A (38),
//! MRCONFIGID @0x050 (48), MROWNER @0x080 (48), MROWNERCONFIG @0x0B0 (48),
//! IA32_ARCH_CAPABILITIES_CONFIG @0x0E0 (8), reserved @0x0E8 (24), CPUID_CONFIG values @0x100
//! (768 = 48 slots of EAX,EBX,ECX,EDX in the order the module reports its configurable leaves).

use alloc::vec::Vec;

/// Size of TD_PARAMS in bytes (also its required alignment).
pub const TD_PARAMS_SIZE: usize = 1024;
/// Number of 16-byte CPUID value slots in TD_PARAMS.
pub const TD_PARAMS_CPUID_SLOTS: usize = 48;

/// TD ATTRIBUTES bits (TD_PARAMS offset 0).
pub mod attributes {
    /// Off-TD debug (host may read/write TD state; not supported by upstream KVM).
    pub const DEBUG: u64 = 1 << 0;
    /// An access to a PENDING page exits to the host as an EPT violation instead of a #VE.
    pub const SEPT_VE_DISABLE: u64 = 1 << 28;
    /// The TD may be migrated.
    pub const MIGRATABLE: u64 = 1 << 29;
    /// Protection keys for supervisor pages.
    pub const PKS: u64 = 1 << 30;
    /// Key Locker.
    pub const KL: u64 = 1 << 31;
    /// Perfmon virtualization.
    pub const PERFMON: u64 = 1 << 63;
    /// Every bit the software module accepts (the others are reserved there).
    pub const SUPPORTED: u64 = DEBUG | SEPT_VE_DISABLE | MIGRATABLE | PKS | KL | PERFMON;
}

/// CONFIG_FLAGS bits (TD_PARAMS offset 0x20).
pub mod config_flags {
    /// GPAW: guest physical address width 52 (shared bit 51) when set, else 48 (bit 47).
    pub const GPAW: u64 = 1 << 0;
    /// Flexible pending #VE.
    pub const FLEXIBLE_PENDING_VE: u64 = 1 << 1;
    /// RBP not modified by TDCALL.
    pub const NO_RBP_MOD: u64 = 1 << 2;
    /// Every defined bit.
    pub const ALL: u64 = GPAW | FLEXIBLE_PENDING_VE | NO_RBP_MOD;
}

/// EPTP_CONTROLS memory type WB (bits 2:0).
pub const EPTP_MEMTYPE_WB: u64 = 6;

/// Decoded TD_PARAMS.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TdParams {
    /// TD attributes ([`attributes`]).
    pub attributes: u64,
    /// Extended features available mask (XCR0 | IA32_XSS format).
    pub xfam: u64,
    /// Maximum number of vCPUs.
    pub max_vcpus: u16,
    /// Number of L2 VMs (TD partitioning); the software module supports 0 only.
    pub num_l2_vms: u8,
    /// MSR_CONFIG_CTLS (bit 0 IA32_ARCH_CAPABILITIES config).
    pub msr_config_ctls: u8,
    /// EPTP controls: bits 2:0 memory type (6 = WB), bits 5:3 page-walk length minus 1.
    pub eptp_controls: u64,
    /// [`config_flags`].
    pub config_flags: u64,
    /// TSC frequency in units of 25 MHz.
    pub tsc_frequency: u16,
    /// MRCONFIGID (copied verbatim into the TD, not hashed).
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// IA32_ARCH_CAPABILITIES configuration.
    pub ia32_arch_capabilities_config: u64,
    /// CPUID values, one `[EAX, EBX, ECX, EDX]` per configurable leaf slot (at most 48).
    pub cpuid_values: Vec<[u32; 4]>,
    /// Whether any reserved byte was non-zero when decoded (the module rejects that).
    pub reserved_nonzero: bool,
}

impl TdParams {
    /// A minimal valid TD_PARAMS: 4-level EPT, WB, given attributes and vCPU count, TSC 2.5 GHz
    /// (100 × 25 MHz), XFAM x87|SSE (the fixed-1 bits), no CPUID overrides.
    pub fn basic(attributes: u64, max_vcpus: u16) -> TdParams {
        TdParams {
            attributes,
            xfam: 0x3,
            max_vcpus,
            num_l2_vms: 0,
            msr_config_ctls: 0,
            eptp_controls: EPTP_MEMTYPE_WB | (3 << 3),
            config_flags: config_flags::NO_RBP_MOD,
            tsc_frequency: 100,
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            ia32_arch_capabilities_config: 0,
            cpuid_values: Vec::new(),
            reserved_nonzero: false,
        }
    }

    /// EPT page-walk length (4 or 5) from EPTP_CONTROLS bits 5:3.
    pub const fn ept_levels(&self) -> u64 {
        ((self.eptp_controls >> 3) & 7) + 1
    }

    /// The shared-GPA bit position implied by CONFIG_FLAGS.GPAW (47 or 51).
    pub const fn shared_bit(&self) -> u32 {
        if self.config_flags & config_flags::GPAW != 0 {
            51
        } else {
            47
        }
    }

    /// Encodes to the 1024-byte wire format.
    pub fn to_bytes(&self) -> [u8; TD_PARAMS_SIZE] {
        let mut b = [0u8; TD_PARAMS_SIZE];
        b[0x00..0x08].copy_from_slice(&self.attributes.to_le_bytes());
        b[0x08..0x10].copy_from_slice(&self.xfam.to_le_bytes());
        b[0x10..0x12].copy_from_slice(&self.max_vcpus.to_le_bytes());
        b[0x12] = self.num_l2_vms;
        b[0x13] = self.msr_config_ctls;
        b[0x18..0x20].copy_from_slice(&self.eptp_controls.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&self.config_flags.to_le_bytes());
        b[0x28..0x2A].copy_from_slice(&self.tsc_frequency.to_le_bytes());
        b[0x50..0x80].copy_from_slice(&self.mr_config_id);
        b[0x80..0xB0].copy_from_slice(&self.mr_owner);
        b[0xB0..0xE0].copy_from_slice(&self.mr_owner_config);
        b[0xE0..0xE8].copy_from_slice(&self.ia32_arch_capabilities_config.to_le_bytes());
        for (slot, v) in self
            .cpuid_values
            .iter()
            .take(TD_PARAMS_CPUID_SLOTS)
            .enumerate()
        {
            let off = 0x100 + slot * 16;
            for (i, reg) in v.iter().enumerate() {
                b[off + i * 4..off + i * 4 + 4].copy_from_slice(&reg.to_le_bytes());
            }
        }
        b
    }

    /// Decodes the 1024-byte wire format. `cpuid_slots` is the number of configurable CPUID
    /// leaves the module reports; that many slots are decoded.
    pub fn from_bytes(b: &[u8; TD_PARAMS_SIZE], cpuid_slots: usize) -> TdParams {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let m48 = |o: usize| {
            let mut a = [0u8; 48];
            a.copy_from_slice(&b[o..o + 48]);
            a
        };
        let reserved_nonzero = b[0x14..0x18].iter().any(|&x| x != 0)
            || b[0x2A..0x50].iter().any(|&x| x != 0)
            || b[0xE8..0x100].iter().any(|&x| x != 0);
        let slots = cpuid_slots.min(TD_PARAMS_CPUID_SLOTS);
        let cpuid_values = (0..slots)
            .map(|s| {
                let off = 0x100 + s * 16;
                let mut v = [0u32; 4];
                for (i, reg) in v.iter_mut().enumerate() {
                    let o = off + i * 4;
                    *reg = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
                }
                v
            })
            .collect();
        TdParams {
            attributes: u64_at(0x00),
            xfam: u64_at(0x08),
            max_vcpus: u16_at(0x10),
            num_l2_vms: b[0x12],
            msr_config_ctls: b[0x13],
            eptp_controls: u64_at(0x18),
            config_flags: u64_at(0x20),
            tsc_frequency: u16_at(0x28),
            mr_config_id: m48(0x50),
            mr_owner: m48(0x80),
            mr_owner_config: m48(0xB0),
            ia32_arch_capabilities_config: u64_at(0xE0),
            cpuid_values,
            reserved_nonzero,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn td_params_round_trip_and_offsets() {
        let mut p = TdParams::basic(attributes::SEPT_VE_DISABLE, 8);
        p.mr_owner[0] = 0xAB;
        p.cpuid_values = alloc::vec![[1, 2, 3, 4], [5, 6, 7, 8]];
        let b = p.to_bytes();
        assert_eq!(b[0x03], 0x10); // bit 28 of ATTRIBUTES
        assert_eq!(b[0x10], 8);
        assert_eq!(b[0x18], 6 | (3 << 3));
        assert_eq!(b[0x80], 0xAB);
        assert_eq!(b[0x110], 5);
        let back = TdParams::from_bytes(&b, 2);
        assert_eq!(back, p);
        assert_eq!(back.ept_levels(), 4);
        assert_eq!(back.shared_bit(), 47);
        let mut bad = b;
        bad[0x30] = 1;
        assert!(TdParams::from_bytes(&bad, 2).reserved_nonzero);
    }
}
