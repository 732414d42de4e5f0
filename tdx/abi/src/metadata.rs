//! TDX metadata field IDs for TDH.SYS.RD/RDALL (global), TDH.MNG.RD/WR (TD) and TDH.VP.RD/WR
//! (vCPU), as the TDX module 1.5.01 defines them (`intel/tdx-module`, tag `TDX_1.5.01`:
//! `include/auto_gen/global_sys_fields_lookup.c`, `tdr_tdcs_fields_lookup.c`,
//! `tdvps_fields_lookup.c`, `td_vmcs_fields_lookup.c`; the layout is `md_field_id_t` in
//! `include/tdx_api_defs.h`; Linux `arch/x86/virt/vmx/tdx/tdx_global_metadata.c` and
//! `arch/x86/kvm/vmx/tdx_arch.h` use the same values).
//!
//! A field ID is: bits 23:0 the field code, 33:32 the element size code (0 = 1 byte … 3 = 8
//! bytes), 37:34 and 46:38 last element/field (zero in a single-element access), 50 INC_SIZE,
//! 51 write-mask valid, 54:52 the context (0 global, 1 TD, 2 vCPU), 61:56 the class, 63
//! non-architectural. The module matches a single-element access by class and field code
//! only. Element `j` of a multi-element field is the field's ID plus `j` (times 2 with
//! INC_SIZE); field `i` of an array of fields of `n` elements each starts at `i * n`.

/// Global (TDH.SYS.RD) field IDs.
pub mod sys {
    /// TDX_FEATURES0 bitmap.
    pub const TDX_FEATURES0: u64 = 0x0A00_0003_0000_0008;
    /// TDX_FEATURES0 bits (Linux `arch/x86/include/asm/tdx.h`; the module's
    /// `tdx_features_enum0_t`).
    pub mod features0 {
        /// TD_PARAMS.CONFIG_FLAGS.NO_RBP_MOD is supported: TDH.VP.ENTER leaves RBP alone on a
        /// TDVMCALL (KVM refuses a module without it).
        pub const NO_RBP_MOD: u64 = 1 << 18;
        /// TDH.VP.INIT version 1 takes the vCPU's x2APIC ID (topology enumeration).
        pub const TOPOLOGY_ENUM: u64 = 1 << 20;
    }

    /// Module minor version.
    pub const MINOR_VERSION: u64 = 0x0800_0001_0000_0003;
    /// Module major version.
    pub const MAJOR_VERSION: u64 = 0x0800_0001_0000_0004;
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
}

/// TD-scope (TDH.MNG.RD/WR) field IDs (TDR and TDCS).
///
/// A production (non-debug) TD's host may read the measurement registers MRTD, MRCONFIGID,
/// MROWNER and MROWNERCONFIG, but not the RTMRs, NOTIFY_ENABLES or TD_CTLS (the module's
/// host read mask for them is zero).
pub mod td {
    /// TD lifecycle state (TDR): 0 HKID_ASSIGNED, 1 KEYS_CONFIGURED, 2 BLOCKED, 3 TEARDOWN.
    pub const LIFECYCLE_STATE: u64 = 0x8010_0002_0000_0005;
    /// HKID (TDR).
    pub const HKID: u64 = 0x8110_0001_0000_0001;
    /// Child page count (TDR).
    pub const CHLDCNT: u64 = 0x8010_0003_0000_0004;
    /// Number of created vCPUs (TDCS).
    pub const NUM_VCPUS: u64 = 0x9010_0002_0000_0001;
    /// Operation state (TDCS).
    pub const OP_STATE: u64 = 0x9010_0002_0000_0004;
    /// TD TLB epoch (TDCS).
    pub const TD_EPOCH: u64 = 0x9210_0003_0000_0000;
    /// ATTRIBUTES.
    pub const ATTRIBUTES: u64 = 0x1110_0003_0000_0000;
    /// XFAM.
    pub const XFAM: u64 = 0x1110_0003_0000_0001;
    /// MAX_VCPUS (4 bytes).
    pub const MAX_VCPUS: u64 = 0x1110_0002_0000_0002;
    /// GPAW (1 byte).
    pub const GPAW: u64 = 0x1110_0000_0000_0003;
    /// EPTP.
    pub const EPTP: u64 = 0x1110_0003_0000_0004;
    /// TSC offset.
    pub const TSC_OFFSET: u64 = 0x1110_0003_0000_000A;
    /// TSC multiplier.
    pub const TSC_MULTIPLIER: u64 = 0x1110_0003_0000_000B;
    /// TSC frequency in 25 MHz units (2 bytes).
    pub const TSC_FREQUENCY: u64 = 0x1110_0001_0000_000C;
    /// Notification enables (guest-written; not host-readable on a production TD).
    pub const NOTIFY_ENABLES: u64 = 0x9110_0003_0000_0010;
    /// CONFIG_FLAGS.
    pub const CONFIG_FLAGS: u64 = 0x1110_0003_0000_0016;
    /// TD_CTLS.
    pub const TD_CTLS: u64 = 0x1110_0003_0000_0017;
    /// MRTD: 6 elements of 8 bytes, element `j` at `MRTD + j`; final after MR.FINALIZE.
    pub const MRTD: u64 = 0x1310_0003_0000_0000;
    /// MRCONFIGID, 6 elements.
    pub const MRCONFIGID: u64 = 0x1310_0003_0000_0010;
    /// MROWNER, 6 elements.
    pub const MROWNER: u64 = 0x1310_0003_0000_0018;
    /// MROWNERCONFIG, 6 elements.
    pub const MROWNERCONFIG: u64 = 0x1310_0003_0000_0020;
    /// RTMR 0–3: element `j` of RTMR `k` is `RTMR + 6 * k + j`.
    pub const RTMR: u64 = 0x1310_0003_0000_0040;
    /// Elements of a 48-byte measurement register.
    pub const MR_ELEMENTS: u64 = 6;
}

/// vCPU-scope (TDH.VP.RD/WR) field IDs (TDVPS and the TD-VMCS).
pub mod vcpu {
    /// vCPU state (1 byte): 0 uninitialized, 1 initialized.
    pub const VCPU_STATE: u64 = 0xA020_0000_0000_0000;
    /// vCPU index within the TD (4 bytes).
    pub const VCPU_INDEX: u64 = 0xA020_0002_0000_0002;
    /// VCPU_STATE_DETAILS (bit 0: an interrupt is pending for a halted vCPU).
    pub const VCPU_STATE_DETAILS: u64 = 0x9120_0003_0000_0100;
    /// Pending virtual NMI (1 byte).
    pub const PEND_NMI: u64 = 0x2020_0000_0000_000B;

    /// The field ID of TD-VMCS field `encoding` (class 0, context vCPU, INC_SIZE) whose
    /// element size code is `size_code` (1 for 16-bit fields, 2 for 32-bit, 3 for 64-bit and
    /// natural-width).
    pub const fn td_vmcs(encoding: u32, size_code: u64) -> u64 {
        0x0024_0000_0000_0000 | size_code << 32 | encoding as u64
    }

    /// TD-VMCS posted-interrupt notification vector (16-bit field 0x0002).
    pub const POSTED_INTR_NV: u64 = td_vmcs(0x0002, 1);
    /// TD-VMCS posted-interrupt descriptor address (64-bit field 0x2016).
    pub const POSTED_INTR_DESC_ADDR: u64 = td_vmcs(0x2016, 3);
    /// TD-VMCS shared EPTP (64-bit field 0x203C).
    pub const SHARED_EPTP: u64 = td_vmcs(0x203C, 3);
    /// TD-VMCS pin-based VM-execution controls (32-bit field 0x4000); the host may write
    /// only [`PIN_BASED_POSTED_INTERRUPTS`] (production write mask 0x80).
    pub const PIN_BASED_CONTROLS: u64 = td_vmcs(0x4000, 2);
    /// "Process posted interrupts" (bit 7 of the pin-based controls).
    pub const PIN_BASED_POSTED_INTERRUPTS: u64 = 1 << 7;
}

#[cfg(test)]
mod encoding {
    //! Every field ID above against the `md_field_id_t` layout (TDX module 1.5
    //! `include/tdx_api_defs.h`): no reserved bit set (31:24, 49:47, 55, 62), a single-element
    //! access (last element and last field zero), the context of its module (0 global,
    //! 1 TD, 2 vCPU) and the element size its documentation states.
    use super::{sys, td, vcpu};

    /// Bits 31:24, 49:47, 55 and 62.
    const RESERVED: u64 = 0xFF << 24 | 0x7 << 47 | 1 << 55 | 1 << 62;
    /// Bits 37:34 and 46:38.
    const LAST_ELEMENT_AND_FIELD: u64 = 0x1FFF << 34;

    fn context(id: u64) -> u64 {
        (id >> 52) & 7
    }

    fn element_bytes(id: u64) -> u64 {
        1 << ((id >> 32) & 3)
    }

    fn check(name: &str, id: u64, want_context: u64, want_bytes: u64) {
        assert_eq!(id & RESERVED, 0, "{name}: reserved bits set in {id:#x}");
        assert_eq!(
            id & LAST_ELEMENT_AND_FIELD,
            0,
            "{name}: not a single-element ID"
        );
        assert_eq!(context(id), want_context, "{name}: context of {id:#x}");
        assert_eq!(
            element_bytes(id),
            want_bytes,
            "{name}: element size of {id:#x}"
        );
    }

    #[test]
    fn global_fields() {
        for (name, id, bytes) in [
            ("TDX_FEATURES0", sys::TDX_FEATURES0, 8),
            ("MINOR_VERSION", sys::MINOR_VERSION, 2),
            ("MAJOR_VERSION", sys::MAJOR_VERSION, 2),
            ("UPDATE_VERSION", sys::UPDATE_VERSION, 2),
            ("NUM_CMRS", sys::NUM_CMRS, 2),
            ("CMR_BASE", sys::CMR_BASE, 8),
            ("CMR_SIZE", sys::CMR_SIZE, 8),
            ("MAX_TDMRS", sys::MAX_TDMRS, 2),
            ("MAX_RESERVED_PER_TDMR", sys::MAX_RESERVED_PER_TDMR, 2),
            ("PAMT_4K_ENTRY_SIZE", sys::PAMT_4K_ENTRY_SIZE, 2),
            ("PAMT_2M_ENTRY_SIZE", sys::PAMT_2M_ENTRY_SIZE, 2),
            ("PAMT_1G_ENTRY_SIZE", sys::PAMT_1G_ENTRY_SIZE, 2),
            ("TDR_BASE_SIZE", sys::TDR_BASE_SIZE, 2),
            ("TDCS_BASE_SIZE", sys::TDCS_BASE_SIZE, 2),
            ("TDVPS_BASE_SIZE", sys::TDVPS_BASE_SIZE, 2),
        ] {
            check(name, id, 0, bytes);
        }
    }

    #[test]
    fn td_fields() {
        for (name, id, bytes) in [
            ("LIFECYCLE_STATE", td::LIFECYCLE_STATE, 4),
            ("HKID", td::HKID, 2),
            ("CHLDCNT", td::CHLDCNT, 8),
            ("NUM_VCPUS", td::NUM_VCPUS, 4),
            ("OP_STATE", td::OP_STATE, 4),
            ("TD_EPOCH", td::TD_EPOCH, 8),
            ("ATTRIBUTES", td::ATTRIBUTES, 8),
            ("XFAM", td::XFAM, 8),
            ("MAX_VCPUS", td::MAX_VCPUS, 4),
            ("GPAW", td::GPAW, 1),
            ("EPTP", td::EPTP, 8),
            ("TSC_OFFSET", td::TSC_OFFSET, 8),
            ("TSC_MULTIPLIER", td::TSC_MULTIPLIER, 8),
            ("TSC_FREQUENCY", td::TSC_FREQUENCY, 2),
            ("NOTIFY_ENABLES", td::NOTIFY_ENABLES, 8),
            ("CONFIG_FLAGS", td::CONFIG_FLAGS, 8),
            ("TD_CTLS", td::TD_CTLS, 8),
            ("MRTD", td::MRTD, 8),
            ("MRCONFIGID", td::MRCONFIGID, 8),
            ("MROWNER", td::MROWNER, 8),
            ("MROWNERCONFIG", td::MROWNERCONFIG, 8),
            ("RTMR", td::RTMR, 8),
        ] {
            check(name, id, 1, bytes);
        }
        // The measurement registers are six consecutive elements each, in one class.
        assert_eq!(td::MRCONFIGID - td::MRTD, 0x10);
        assert_eq!(td::RTMR + 4 * td::MR_ELEMENTS - td::RTMR, 24);
    }

    #[test]
    fn vcpu_fields() {
        for (name, id, bytes) in [
            ("VCPU_STATE", vcpu::VCPU_STATE, 1),
            ("VCPU_INDEX", vcpu::VCPU_INDEX, 4),
            ("VCPU_STATE_DETAILS", vcpu::VCPU_STATE_DETAILS, 8),
            ("PEND_NMI", vcpu::PEND_NMI, 1),
            ("POSTED_INTR_NV", vcpu::POSTED_INTR_NV, 2),
            ("POSTED_INTR_DESC_ADDR", vcpu::POSTED_INTR_DESC_ADDR, 8),
            ("SHARED_EPTP", vcpu::SHARED_EPTP, 8),
            ("PIN_BASED_CONTROLS", vcpu::PIN_BASED_CONTROLS, 4),
        ] {
            check(name, id, 2, bytes);
        }
        // As listed in intel/tdx-module TDX_1.5.01 `include/auto_gen/td_vmcs_fields_lookup.c`.
        assert_eq!(vcpu::POSTED_INTR_NV, 0x0024_0001_0000_0002);
        assert_eq!(vcpu::POSTED_INTR_DESC_ADDR, 0x0024_0003_0000_2016);
        assert_eq!(vcpu::PIN_BASED_CONTROLS, 0x0024_0002_0000_4000);
        // TD-VMCS fields: class 0 with INC_SIZE, the VMCS encoding as the field code.
        for id in [
            vcpu::POSTED_INTR_NV,
            vcpu::POSTED_INTR_DESC_ADDR,
            vcpu::SHARED_EPTP,
            vcpu::PIN_BASED_CONTROLS,
        ] {
            assert_eq!((id >> 56) & 0x3F, 0);
            assert_eq!((id >> 50) & 1, 1);
        }
    }
}
