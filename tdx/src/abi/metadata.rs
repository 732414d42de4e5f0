//! TDX metadata field IDs for TDH.SYS.RD/RDALL (global), TDH.MNG.RD/WR (TD) and TDH.VP.RD/WR
//! (vCPU).
//!
//! Global field IDs are the real ones Linux reads (`arch/x86/virt/vmx/tdx/tdx_global_metadata.c`,
//! verified in patch text). The TD and vCPU field IDs below are **the software module's own
//! numbering** for the fields this runtime uses: the real TDCS/TDVPS encodings (class, context
//! and element bits) were not verified from a primary source, so the runtime must treat them as
//! emulator-only until checked against the ABI spec on hardware.

/// Global (TDH.SYS.RD) field IDs.
pub mod sys {
    /// TDX_FEATURES0 bitmap.
    pub const TDX_FEATURES0: u64 = 0x0A00_0003_0000_0008;
    /// Module major version.
    pub const MAJOR_VERSION: u64 = 0x0800_0001_0000_0003;
    /// Module minor version.
    pub const MINOR_VERSION: u64 = 0x0800_0001_0000_0004;
    /// Module update version.
    pub const UPDATE_VERSION: u64 = 0x0800_0001_0000_0005;
    /// Number of CMRs.
    pub const NUM_CMRS: u64 = 0x9000_0001_0000_0000;
    /// CMR base, element `i` is `CMR_BASE + i`.
    pub const CMR_BASE: u64 = 0x9000_0003_0000_0080;
    /// CMR size, element `i` is `CMR_SIZE + i`.
    pub const CMR_SIZE: u64 = 0x9000_0003_0000_0100;
    /// Maximum number of TDMRs.
    pub const MAX_TDMRS: u64 = 0x9100_0001_0000_0008;
    /// Maximum reserved areas per TDMR.
    pub const MAX_RESERVED_PER_TDMR: u64 = 0x9100_0001_0000_0009;
    /// PAMT entry size for 4 KiB pages.
    pub const PAMT_4K_ENTRY_SIZE: u64 = 0x9100_0001_0000_0010;
    /// PAMT entry size for 2 MiB pages.
    pub const PAMT_2M_ENTRY_SIZE: u64 = 0x9100_0001_0000_0011;
    /// PAMT entry size for 1 GiB pages.
    pub const PAMT_1G_ENTRY_SIZE: u64 = 0x9100_0001_0000_0012;
    /// TDR size in bytes.
    pub const TDR_BASE_SIZE: u64 = 0x9800_0001_0000_0000;
    /// TDCS size in bytes (number of TDCS pages × 4096).
    pub const TDCS_BASE_SIZE: u64 = 0x9800_0001_0000_0100;
    /// TDVPS size in bytes (TDVPR + TDCX pages, × 4096).
    pub const TDVPS_BASE_SIZE: u64 = 0x9800_0001_0000_0200;
    /// ATTRIBUTES bits that must be 0.
    pub const ATTRIBUTES_FIXED0: u64 = 0x1900_0003_0000_0000;
    /// ATTRIBUTES bits that must be 1.
    pub const ATTRIBUTES_FIXED1: u64 = 0x1900_0003_0000_0001;
    /// XFAM bits that may be 1.
    pub const XFAM_FIXED0: u64 = 0x1900_0003_0000_0002;
    /// XFAM bits that must be 1.
    pub const XFAM_FIXED1: u64 = 0x1900_0003_0000_0003;
    /// Number of configurable CPUID leaves.
    pub const NUM_CPUID_CONFIG: u64 = 0x9900_0001_0000_0004;
    /// Maximum vCPUs per TD.
    pub const MAX_VCPUS_PER_TD: u64 = 0x9900_0001_0000_0008;
    /// Configurable CPUID leaf `i` (`leaf | subleaf << 32`) is `CPUID_CONFIG_LEAVES + i`.
    pub const CPUID_CONFIG_LEAVES: u64 = 0x9900_0003_0000_0400;
    /// Configurable bit masks: element `2i` = EBX:EAX, `2i+1` = EDX:ECX.
    pub const CPUID_CONFIG_VALUES: u64 = 0x9900_0003_0000_0500;
    /// Number of HKIDs usable for TDs (software-module field).
    pub const NUM_TD_HKIDS: u64 = 0x9A00_0001_0000_0000;
}

/// TD-scope (TDH.MNG.RD/WR) field IDs: software-module numbering (see module docs).
pub mod td {
    /// TD lifecycle state (TDR), read-only: 0 HKID_ASSIGNED, 1 KEYS_CONFIGURED, 2 BLOCKED,
    /// 3 TEARDOWN.
    pub const LIFECYCLE_STATE: u64 = 0x9810_0000_0000_0000;
    /// HKID (TDR), read-only.
    pub const HKID: u64 = 0x9810_0000_0000_0001;
    /// Child page count (TDR), read-only.
    pub const CHLDCNT: u64 = 0x9810_0000_0000_0002;
    /// Operation state (TDCS), read-only.
    pub const OP_STATE: u64 = 0x9810_0000_0000_0010;
    /// ATTRIBUTES (TDCS), read-only.
    pub const ATTRIBUTES: u64 = 0x9810_0000_0000_0011;
    /// XFAM (TDCS), read-only.
    pub const XFAM: u64 = 0x9810_0000_0000_0012;
    /// MAX_VCPUS (TDCS), read-only.
    pub const MAX_VCPUS: u64 = 0x9810_0000_0000_0013;
    /// Number of created vCPUs (TDCS), read-only.
    pub const NUM_VCPUS: u64 = 0x9810_0000_0000_0014;
    /// TD TLB epoch (TDCS), read-only.
    pub const TD_EPOCH: u64 = 0x9810_0000_0000_0015;
    /// EPTP controls (TDCS), read-only.
    pub const EPTP_CONTROLS: u64 = 0x9810_0000_0000_0016;
    /// TSC frequency in 25 MHz units (TDCS), read-only.
    pub const TSC_FREQUENCY: u64 = 0x9810_0000_0000_0017;
    /// MRTD, 6 elements of 8 bytes (`MRTD + i`), read-only, valid after MR.FINALIZE.
    pub const MRTD: u64 = 0x9810_0000_0000_0100;
    /// RTMR `r` element `i` is `RTMR + r * 8 + i` (6 elements each), read-only.
    pub const RTMR: u64 = 0x9810_0000_0000_0200;
    /// MRCONFIGID, 6 elements, read-only.
    pub const MRCONFIGID: u64 = 0x9810_0000_0000_0300;
    /// MROWNER, 6 elements, read-only.
    pub const MROWNER: u64 = 0x9810_0000_0000_0308;
    /// MROWNERCONFIG, 6 elements, read-only.
    pub const MROWNERCONFIG: u64 = 0x9810_0000_0000_0310;
    /// A host-writable scratch field (the software module's stand-in for the writable TD
    /// fields such as the notify-enables bitmap).
    pub const NOTIFY_ENABLES: u64 = 0x9810_0000_0000_0400;
}

/// vCPU-scope (TDH.VP.RD/WR) field IDs: software-module numbering (see module docs).
pub mod vcpu {
    /// vCPU state: 0 uninitialized, 1 initialized (TDVPS), read-only.
    pub const VCPU_STATE: u64 = 0xA020_0000_0000_0000;
    /// vCPU index within the TD, read-only.
    pub const VCPU_INDEX: u64 = 0xA020_0000_0000_0001;
    /// Epoch the vCPU last entered in, read-only.
    pub const VCPU_EPOCH: u64 = 0xA020_0000_0000_0002;
    /// Logical processor the vCPU is associated with (`u64::MAX` if none), read-only.
    pub const ASSOCIATED_LP: u64 = 0xA020_0000_0000_0003;
    /// Initial RCX given by TDH.VP.INIT, read-only.
    pub const INIT_RCX: u64 = 0xA020_0000_0000_0004;
    /// x2APIC ID given by TDH.VP.INIT v1, read-only.
    pub const X2APIC_ID: u64 = 0xA020_0000_0000_0005;
    /// Synthetic guest RIP of the declared workload (step index << 32 | progress), read-only.
    pub const GUEST_RIP: u64 = 0xA020_0000_0000_0010;
    /// Consecutive EPT violations at the same guest RIP (zero-step counter), read-only.
    pub const ZERO_STEP_COUNT: u64 = 0xA020_0000_0000_0011;
    /// Host-writable per-vCPU scratch field (stand-in for writable guest-state fields).
    pub const HOST_SCRATCH: u64 = 0xA020_0000_0000_0020;
}
