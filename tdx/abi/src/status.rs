//! SEAMCALL completion status (TDX module 1.5 `api_error_code_t`, values from
//! `include/auto_gen/tdx_error_codes_defs.h`).
//!
//! Layout: bits 31:0 operand ID (or details L2), 39:32 details L1, 47:40 class,
//! 60 host-recoverability hint, 61 fatal, 62 non-recoverable, 63 error. Statuses are compared
//! with the low 32 bits masked off ([`TdxStatus::code`]).

use core::fmt;

/// A raw 64-bit completion status as returned in RAX.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TdxStatus(pub u64);

/// Mask that keeps the status code and drops the operand ID / details L2.
pub const STATUS_CODE_MASK: u64 = 0xFFFF_FFFF_0000_0000;

/// An operand ID (low 32 bits of a status): which operand or resource the status is about.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct OperandId(pub u32);

#[allow(missing_docs)] // names are the spec's
impl OperandId {
    pub const RAX: OperandId = OperandId(0);
    pub const RCX: OperandId = OperandId(1);
    pub const RDX: OperandId = OperandId(2);
    pub const RBX: OperandId = OperandId(3);
    pub const R8: OperandId = OperandId(8);
    pub const R9: OperandId = OperandId(9);
    pub const R10: OperandId = OperandId(10);
    pub const R11: OperandId = OperandId(11);
    pub const R12: OperandId = OperandId(12);
    pub const R13: OperandId = OperandId(13);
    pub const R14: OperandId = OperandId(14);
    pub const R15: OperandId = OperandId(15);
    pub const ATTRIBUTES: OperandId = OperandId(64);
    pub const XFAM: OperandId = OperandId(65);
    pub const EXEC_CONTROLS: OperandId = OperandId(66);
    pub const EPTP_CONTROLS: OperandId = OperandId(67);
    pub const MAX_VCPUS: OperandId = OperandId(68);
    pub const CPUID_CONFIG: OperandId = OperandId(69);
    pub const TSC_FREQUENCY: OperandId = OperandId(70);
    pub const NUM_L2_VMS: OperandId = OperandId(71);
    pub const PAGE: OperandId = OperandId(95);
    pub const TDMR_INFO_PA: OperandId = OperandId(96);
    pub const TDR: OperandId = OperandId(128);
    pub const TDCX: OperandId = OperandId(129);
    pub const TDVPR: OperandId = OperandId(130);
    pub const TDCS: OperandId = OperandId(144);
    pub const TDVPS: OperandId = OperandId(145);
    pub const SEPT_TREE: OperandId = OperandId(146);
    pub const SEPT_ENTRY: OperandId = OperandId(147);
    pub const RTMR: OperandId = OperandId(168);
    pub const TD_EPOCH: OperandId = OperandId(169);
    pub const OP_STATE: OperandId = OperandId(172);
    pub const METADATA_FIELD: OperandId = OperandId(176);
    pub const SYS: OperandId = OperandId(184);
    pub const TDMR: OperandId = OperandId(185);
    pub const KOT: OperandId = OperandId(186);
    pub const KET: OperandId = OperandId(187);
    pub const WBCACHE: OperandId = OperandId(188);
}

macro_rules! statuses {
    ($($name:ident = $value:expr;)*) => {
        #[allow(missing_docs)] // names are the spec's
        impl TdxStatus {
            $(pub const $name: TdxStatus = TdxStatus($value);)*
        }
        /// The spec name of a status code, if known (operand bits ignored).
        pub fn status_name(status: TdxStatus) -> Option<&'static str> {
            match status.code().0 {
                $($value => Some(stringify!($name)),)*
                _ => None,
            }
        }
    };
}

statuses! {
    SUCCESS = 0x0000_0000_0000_0000;
    NON_RECOVERABLE_VCPU = 0x4000_0001_0000_0000;
    NON_RECOVERABLE_TD = 0x6000_0002_0000_0000;
    INTERRUPTED_RESUMABLE = 0x8000_0003_0000_0000;
    INTERRUPTED_RESTARTABLE = 0x8000_0004_0000_0000;
    NON_RECOVERABLE_TD_NON_ACCESSIBLE = 0x6000_0005_0000_0000;
    NON_RECOVERABLE_TD_WRONG_APIC_MODE = 0xE000_0007_0000_0000;
    NON_RECOVERABLE_TD_CORRUPTED_MD = 0x6000_000A_0000_0000;
    OPERAND_INVALID = 0xC000_0100_0000_0000;
    OPERAND_ADDR_RANGE_ERROR = 0xC000_0101_0000_0000;
    OPERAND_BUSY = 0x8000_0200_0000_0000;
    PREVIOUS_TLB_EPOCH_BUSY = 0x8000_0201_0000_0000;
    SYS_BUSY = 0x8000_0202_0000_0000;
    RND_NO_ENTROPY = 0x8000_0203_0000_0000;
    OPERAND_BUSY_HOST_PRIORITY = 0x8000_0204_0000_0000;
    HOST_PRIORITY_BUSY_TIMEOUT = 0x9000_0205_0000_0000;
    PAGE_METADATA_INCORRECT = 0xC000_0300_0000_0000;
    PAGE_ALREADY_FREE = 0x0000_0301_0000_0000;
    PAGE_NOT_OWNED_BY_TD = 0xC000_0302_0000_0000;
    PAGE_NOT_FREE = 0xC000_0303_0000_0000;
    TD_ASSOCIATED_PAGES_EXIST = 0xC000_0400_0000_0000;
    SYS_INIT_NOT_PENDING = 0xC000_0500_0000_0000;
    SYS_LP_INIT_NOT_DONE = 0xC000_0502_0000_0000;
    SYS_LP_INIT_DONE = 0xC000_0503_0000_0000;
    SYS_NOT_READY = 0xC000_0505_0000_0000;
    SYS_KEY_CONFIG_NOT_PENDING = 0xC000_0507_0000_0000;
    SYS_STATE_INCORRECT = 0xC000_0508_0000_0000;
    SYS_CONFIG_NOT_PENDING = 0xC000_050C_0000_0000;
    TDCX_NUM_INCORRECT = 0xC000_0610_0000_0000;
    INVALID_RESUMPTION = 0xC000_0006_0000_0000;
    TDMR_ALREADY_INITIALIZED = 0x0000_0A03_0000_0000;
    INVALID_RESERVED_IN_TDMR = 0xC000_0A20_0000_0000;
    NON_ORDERED_RESERVED_IN_TDMR = 0xC000_0A21_0000_0000;
    METADATA_FIELD_VALUE_NOT_VALID = 0xC000_0C03_0000_0000;
    INCORRECT_CPUID_VALUE = 0xC000_0900_0000_0000;
    INVALID_PKG_ID = 0xC000_0906_0000_0000;
    SYS_SHUTDOWN = 0xC000_0506_0000_0000;
    TD_FATAL = 0xE000_0604_0000_0000;
    TD_NON_DEBUG = 0xC000_0605_0000_0000;
    TDCS_NOT_ALLOCATED = 0xC000_0606_0000_0000;
    LIFECYCLE_STATE_INCORRECT = 0xC000_0607_0000_0000;
    OP_STATE_INCORRECT = 0xC000_0608_0000_0000;
    NO_VCPUS = 0xC000_0609_0000_0000;
    VCPU_STATE_INCORRECT = 0xC000_0700_0000_0000;
    VCPU_ASSOCIATED = 0x8000_0701_0000_0000;
    VCPU_NOT_ASSOCIATED = 0x8000_0702_0000_0000;
    NO_VALID_VE_INFO = 0xC000_0704_0000_0000;
    MAX_VCPUS_EXCEEDED = 0xC000_0705_0000_0000;
    KEY_GENERATION_FAILED = 0x8000_0800_0000_0000;
    TD_KEYS_NOT_CONFIGURED = 0x8000_0810_0000_0000;
    KEY_STATE_INCORRECT = 0xC000_0811_0000_0000;
    KEY_CONFIGURED = 0x0000_0815_0000_0000;
    WBCACHE_NOT_COMPLETE = 0x8000_0817_0000_0000;
    HKID_NOT_FREE = 0xC000_0820_0000_0000;
    NO_HKID_READY_TO_WBCACHE = 0x0000_0821_0000_0000;
    WBCACHE_RESUME_ERROR = 0xC000_0823_0000_0000;
    FLUSHVP_NOT_DONE = 0x8000_0824_0000_0000;
    INVALID_TDMR = 0xC000_0A00_0000_0000;
    NON_ORDERED_TDMR = 0xC000_0A01_0000_0000;
    TDMR_OUTSIDE_CMRS = 0xC000_0A02_0000_0000;
    INVALID_PAMT = 0xC000_0A10_0000_0000;
    PAMT_OUTSIDE_CMRS = 0xC000_0A11_0000_0000;
    PAMT_OVERLAP = 0xC000_0A12_0000_0000;
    EPT_WALK_FAILED = 0xC000_0B00_0000_0000;
    EPT_ENTRY_FREE = 0xC000_0B01_0000_0000;
    EPT_ENTRY_NOT_FREE = 0xC000_0B02_0000_0000;
    EPT_ENTRY_NOT_PRESENT = 0xC000_0B03_0000_0000;
    EPT_ENTRY_NOT_LEAF = 0xC000_0B04_0000_0000;
    EPT_ENTRY_LEAF = 0xC000_0B05_0000_0000;
    GPA_RANGE_NOT_BLOCKED = 0xC000_0B06_0000_0000;
    GPA_RANGE_ALREADY_BLOCKED = 0x0000_0B07_0000_0000;
    TLB_TRACKING_NOT_DONE = 0xC000_0B08_0000_0000;
    EPT_INVALID_PROMOTE_CONDITIONS = 0xC000_0B09_0000_0000;
    PAGE_ALREADY_ACCEPTED = 0x0000_0B0A_0000_0000;
    PAGE_SIZE_MISMATCH = 0xC000_0B0B_0000_0000;
    GPA_RANGE_BLOCKED = 0xC000_0B0C_0000_0000;
    EPT_ENTRY_STATE_INCORRECT = 0xC000_0B0D_0000_0000;
    EPT_PAGE_NOT_FREE = 0xC000_0B0E_0000_0000;
    METADATA_FIELD_ID_INCORRECT = 0xC000_0C00_0000_0000;
    METADATA_FIELD_NOT_WRITABLE = 0xC000_0C01_0000_0000;
    METADATA_FIELD_NOT_READABLE = 0xC000_0C02_0000_0000;
    TD_VMCS_FIELD_NOT_INITIALIZED = 0xC000_0730_0000_0000;
}

/// Statuses the host's SEAMCALL path makes up when the instruction itself did not complete
/// (Linux `arch/x86/include/asm/tdx.h`): `TDX_SW_ERROR` is the error bit with class 0xFF
/// (bits 47:40), a class the TDX module never returns; the low bits say what happened. They
/// are whole values, not codes with an operand ID, so they are named by their full value.
impl TdxStatus {
    /// `TDX_SEAMCALL_VMFAILINVALID`: the instruction failed with VMfailInvalid (CF set: no
    /// module loaded).
    pub const SEAMCALL_VMFAILINVALID: TdxStatus = TdxStatus(0x8000_FF00_FFFF_0000);
    /// `TDX_SEAMCALL_GP`: the instruction raised #GP (vector 13).
    pub const SEAMCALL_GP: TdxStatus = TdxStatus(0x8000_FF00_0000_000D);
    /// `TDX_SEAMCALL_UD`: the instruction raised #UD (vector 6): the CPU is not in VMX root
    /// operation or has no SEAM.
    pub const SEAMCALL_UD: TdxStatus = TdxStatus(0x8000_FF00_0000_0006);
}

/// The name of a software-defined status ([`TdxStatus::SEAMCALL_UD`] and its siblings), if
/// `status` is one (the whole value is compared).
pub fn software_status_name(status: TdxStatus) -> Option<&'static str> {
    match status {
        TdxStatus::SEAMCALL_VMFAILINVALID => Some("SEAMCALL_VMFAILINVALID"),
        TdxStatus::SEAMCALL_GP => Some("SEAMCALL_GP"),
        TdxStatus::SEAMCALL_UD => Some("SEAMCALL_UD"),
        _ => None,
    }
}

impl TdxStatus {
    /// Builds `self | operand` (the module's way to say which operand a status is about).
    pub const fn with_operand(self, operand: OperandId) -> TdxStatus {
        TdxStatus(self.0 | operand.0 as u64)
    }
    /// The status with the operand ID / details L2 masked off.
    pub const fn code(self) -> TdxStatus {
        TdxStatus(self.0 & STATUS_CODE_MASK)
    }
    /// The operand ID (low 32 bits).
    pub const fn operand(self) -> OperandId {
        OperandId((self.0 & 0xFFFF_FFFF) as u32)
    }
    /// Class (bits 47:40).
    pub const fn class(self) -> u8 {
        ((self.0 >> 40) & 0xFF) as u8
    }
    /// Bit 63: the call failed.
    pub const fn is_error(self) -> bool {
        self.0 & (1 << 63) != 0
    }
    /// Bit 62: the TD or vCPU cannot continue.
    pub const fn is_non_recoverable(self) -> bool {
        self.0 & (1 << 62) != 0
    }
    /// Bit 61: fatal.
    pub const fn is_fatal(self) -> bool {
        self.0 & (1 << 61) != 0
    }
    /// Success, including the informational (bit 63 clear) statuses such as
    /// `GPA_RANGE_ALREADY_BLOCKED`.
    pub const fn is_success(self) -> bool {
        !self.is_error()
    }
    /// Whether the code (operand masked) equals `other`'s code.
    pub const fn is(self, other: TdxStatus) -> bool {
        self.code().0 == other.code().0
    }
    /// `TDX_OPERAND_BUSY` or `TDX_OPERAND_BUSY_HOST_PRIORITY`: a try-lock failed; retry.
    pub const fn is_busy(self) -> bool {
        self.is(TdxStatus::OPERAND_BUSY) || self.is(TdxStatus::OPERAND_BUSY_HOST_PRIORITY)
    }
    /// Coarse class used for metrics: `success`, `busy`, `error`.
    pub const fn metric_class(self) -> &'static str {
        if !self.is_error() {
            "success"
        } else if self.is_busy() {
            "busy"
        } else {
            "error"
        }
    }
}

impl fmt::Debug for TdxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for TdxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = software_status_name(*self) {
            return write!(f, "TDX_{name}");
        }
        match status_name(*self) {
            Some(name) => write!(f, "TDX_{name}"),
            None => write!(f, "status {:#018x}", self.code().0),
        }?;
        if self.operand().0 != 0 {
            write!(f, " (operand {})", self.operand().0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_uses_bits() {
        let busy = TdxStatus::OPERAND_BUSY.with_operand(OperandId::SEPT_TREE);
        assert!(busy.is_error() && busy.is_busy());
        assert_eq!(busy.operand(), OperandId::SEPT_TREE);
        assert_eq!(busy.0, 0x8000_0200_0000_0092);
        assert!(TdxStatus::GPA_RANGE_ALREADY_BLOCKED.is_success());
        assert!(TdxStatus::NON_RECOVERABLE_TD.is_non_recoverable());
        assert!(TdxStatus::TD_FATAL.is_fatal());
        assert!(!TdxStatus::EPT_WALK_FAILED.is_busy());
        assert_eq!(busy.metric_class(), "busy");
    }

    #[test]
    fn display_names_the_status() {
        let s = TdxStatus::EPT_ENTRY_STATE_INCORRECT.with_operand(OperandId::RCX);
        assert_eq!(
            alloc::format!("{s}"),
            "TDX_EPT_ENTRY_STATE_INCORRECT (operand 1)"
        );
    }

    #[test]
    fn software_statuses_are_named_by_their_whole_value() {
        assert_eq!(
            alloc::format!("{}", TdxStatus::SEAMCALL_UD),
            "TDX_SEAMCALL_UD"
        );
        assert_eq!(
            alloc::format!("{}", TdxStatus::SEAMCALL_GP),
            "TDX_SEAMCALL_GP"
        );
        assert_eq!(
            alloc::format!("{}", TdxStatus(0x8000_FF00_FFFF_0000)),
            "TDX_SEAMCALL_VMFAILINVALID"
        );
        // Another low part in the software class is not one of them.
        assert_eq!(
            alloc::format!("{}", TdxStatus(0x8000_FF00_0000_0007)),
            "status 0x8000ff0000000000 (operand 7)"
        );
        assert!(TdxStatus::SEAMCALL_UD.is_error() && !TdxStatus::SEAMCALL_UD.is_busy());
        assert_eq!(TdxStatus::SEAMCALL_GP.class(), 0xFF);
    }
}
