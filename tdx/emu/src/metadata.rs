//! The software module's metadata field IDs.
//!
//! TD and vCPU fields that the real module has are answered under their real IDs
//! ([`tdx_abi::metadata`], re-exported here). The fields below exist only in the software
//! module: test hooks into state the real module keeps private (the vCPU's association, its
//! declared-workload position) and scratch fields a host can write. They never appear on
//! the hardware path.

/// Number of HKIDs usable for TDs (TDH.SYS.RD; a software-module field).
pub const NUM_TD_HKIDS: u64 = 0x9A00_0001_0000_0000;

/// TD-scope (TDH.MNG.RD/WR) field IDs.
pub mod td {
    pub use tdx_abi::metadata::td::*;

    /// The EPTP controls given in TD_PARAMS (the real EPTP field holds the whole EPTP).
    pub const EPTP_CONTROLS: u64 = EPTP;
    /// A host-writable TD scratch field (software module only): what MNG.WR tests write.
    pub const HOST_SCRATCH: u64 = 0x9810_0000_0000_0400;
}

/// vCPU-scope (TDH.VP.RD/WR) field IDs.
pub mod vcpu {
    pub use tdx_abi::metadata::vcpu::*;

    /// Epoch the vCPU last entered in, read-only (software module only).
    pub const VCPU_EPOCH: u64 = 0xA020_0000_0000_0F02;
    /// Logical processor the vCPU is associated with (`u64::MAX` if none), read-only
    /// (software module only).
    pub const ASSOCIATED_LP: u64 = 0xA020_0000_0000_0F03;
    /// Initial RCX given by TDH.VP.INIT, read-only (software module only).
    pub const INIT_RCX: u64 = 0xA020_0000_0000_0F04;
    /// x2APIC ID given by TDH.VP.INIT v1, read-only (software module only).
    pub const X2APIC_ID: u64 = 0xA020_0000_0000_0F05;
    /// Position in the declared workload (step index << 32 | progress), read-only
    /// (software module only).
    pub const GUEST_RIP: u64 = 0xA020_0000_0000_0F10;
    /// The zero-step counter (`possibly_epf_stepping` of intel/tdx-module
    /// `td_exit_stepping.c`): EPT-violation exits at the RIP of the last entry, up to the
    /// threshold, read-only (software module only).
    pub const ZERO_STEP_COUNT: u64 = 0xA020_0000_0000_0F11;
    /// Host-writable per-vCPU scratch field (software module only).
    pub const HOST_SCRATCH: u64 = 0xA020_0000_0000_0F20;
}
