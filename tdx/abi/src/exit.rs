//! TDH.VP.ENTER exit ABI: exit reasons, TDVMCALL sub-functions and statuses,
//! exit-qualification encodings (Linux `arch/x86/kvm/vmx/tdx.c`, `tdx_arch.h`,
//! `arch/x86/include/asm/shared/tdx.h`; Intel GHCI for TDX 1.5; the accept-level encoding is
//! from the 2025–2026 huge-page RFCs and therefore unverified). The host runtime decodes exits
//! into typed values; this module only names the numbers.

/// Exit reason: exception or NMI (with TDX, a host NMI: R9's interruption type 2).
pub const EXCEPTION_OR_NMI: u64 = 0;
/// Exit reason: external interrupt (kick / timer).
pub const EXTERNAL_INTERRUPT: u64 = 1;
/// Exit reason: an SMI that was not an I/O SMI (the platform's SMM ran meanwhile).
pub const OTHER_SMI: u64 = 6;
/// Exit reason: an SMI during a C-state (TDX module 1.5 `vmcs_defs.h`).
pub const C_STATE_SMI: u64 = 42;
/// Exit reason: bus lock detected.
pub const BUS_LOCK: u64 = 74;
/// Exit reason: triple fault (guest shutdown).
pub const TRIPLE_FAULT: u64 = 2;
/// Exit reason: EPT violation.
pub const EPT_VIOLATION: u64 = 48;
/// Exit reason: TDCALL (TDG.VP.VMCALL, i.e. a TDVMCALL).
pub const TDCALL: u64 = 77;
/// TDVMCALL sub-function Instruction.CPUID (the VMX exit reason).
pub const TDVMCALL_CPUID: u64 = 10;
/// TDVMCALL sub-function Instruction.HLT.
pub const TDVMCALL_HLT: u64 = 12;
/// TDVMCALL sub-function Instruction.IO.
pub const TDVMCALL_IO: u64 = 30;
/// TDVMCALL sub-function Instruction.RDMSR.
pub const TDVMCALL_RDMSR: u64 = 31;
/// TDVMCALL sub-function Instruction.WRMSR.
pub const TDVMCALL_WRMSR: u64 = 32;
/// TDVMCALL sub-function #VE.RequestMMIO (the EPT-violation exit reason).
pub const TDVMCALL_MMIO: u64 = 48;
/// TDVMCALL sub-function GetTdVmCallInfo.
pub const TDVMCALL_GET_TD_VM_CALL_INFO: u64 = 0x10000;
/// TDVMCALL sub-function MapGPA.
pub const TDVMCALL_MAP_GPA: u64 = 0x10001;
/// TDVMCALL sub-function GetQuote.
pub const TDVMCALL_GET_QUOTE: u64 = 0x10002;
/// TDVMCALL sub-function ReportFatalError.
pub const TDVMCALL_REPORT_FATAL_ERROR: u64 = 0x10003;
/// TDVMCALL sub-function SetupEventNotifyInterrupt.
pub const TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT: u64 = 0x10004;
/// TDVMCALL status: success.
pub const TDVMCALL_STATUS_SUCCESS: u64 = 0;
/// TDVMCALL status: retry (MapGPA partially done; R11 = next GPA).
pub const TDVMCALL_STATUS_RETRY: u64 = 1;
/// TDVMCALL status: invalid operand.
pub const TDVMCALL_STATUS_INVALID_OPERAND: u64 = 0x8000_0000_0000_0000;
/// TDVMCALL status: the GPA is already in use (MapGPA).
pub const TDVMCALL_STATUS_GPA_INUSE: u64 = 0x8000_0000_0000_0001;
/// TDVMCALL status: an operand is misaligned.
pub const TDVMCALL_STATUS_ALIGN_ERROR: u64 = 0x8000_0000_0000_0002;
/// TDVMCALL status: the sub-function is not supported.
pub const TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED: u64 = 0x8000_0000_0000_0003;
/// Extended exit qualification type: plain EPT violation.
pub const EXT_QUAL_TYPE_NORMAL: u64 = 0;
/// Extended exit qualification type: violation caused by TDG.MEM.PAGE.ACCEPT.
pub const EXT_QUAL_TYPE_ACCEPT: u64 = 1;
/// Extended exit qualification type: PENDING page accessed with SEPT_VE_DISABLE.
pub const EXT_QUAL_TYPE_PENDING_EPT_VIOLATION: u64 = 6;
/// Mask of the type field.
pub const EXT_QUAL_TYPE_MASK: u64 = 0xF;
/// Shift of the info field (accept level in its bits 2:0).
pub const EXT_QUAL_INFO_SHIFT: u32 = 32;
/// Exit qualification bit: data read.
pub const QUAL_READ: u64 = 1 << 0;
/// Exit qualification bit: data write.
pub const QUAL_WRITE: u64 = 1 << 1;
/// GPR mask a TDVMCALL exposes (R10–R15).
pub const TDVMCALL_GPR_MASK: u64 = 0xFC00;

/// VM-exit interruption information: the vector (bits 7:0) is valid (bit 31).
const INTERRUPTION_INFO_VALID: u64 = 1 << 31;
/// VM-exit interruption information: the interruption type (bits 10:8); 2 is an NMI.
const INTERRUPTION_TYPE_NMI: u64 = 2 << 8;

/// Whether RAX after TDH.VP.ENTER carries an exit reason at all: only under TDX_SUCCESS or
/// one of the non-recoverable TD-exit statuses (KVM's `tdx_to_vmx_exit_reason`); any other
/// status is a SEAMCALL error whose low bits are an operand ID.
pub fn exit_reason_is_valid(rax: u64) -> bool {
    matches!(
        rax >> 32,
        0 | 0x4000_0001 | 0x6000_0002 | 0x6000_0005 | 0xE000_0007
    )
}

/// Whether an exit with a valid reason was caused by a host NMI: EXCEPTION_OR_NMI with a
/// valid interruption of type NMI in R9.
pub fn is_host_nmi(rax: u64, r9: u64) -> bool {
    rax & 0xFFFF == EXCEPTION_OR_NMI
        && r9 & INTERRUPTION_INFO_VALID != 0
        && r9 & (7 << 8) == INTERRUPTION_TYPE_NMI
}

/// The vector of the host interrupt that ended a TDH.VP.ENTER, when the processor
/// acknowledged it on the exit: an external-interrupt exit (basic reason 1 in RAX bits 15:0)
/// whose VM-exit interruption information (R9, as TDX module 1.5 `async_tdexit_internal` in
/// `src/td_transitions/td_exit.c` returns it) is valid. The TDX module sets "acknowledge
/// interrupt on exit" (required with posted interrupts), so the interrupt is no longer
/// pending in the local APIC: the host must handle it (at least signal end of interrupt),
/// as KVM's `tdx_handle_exit_irqoff` does with `tdexit_intr_info`.
pub fn acknowledged_vector(rax: u64, r9: u64) -> Option<u8> {
    (exit_reason_is_valid(rax)
        && rax & 0xFFFF == EXTERNAL_INTERRUPT
        && r9 & INTERRUPTION_INFO_VALID != 0)
        .then_some((r9 & 0xFF) as u8)
}

#[cfg(test)]
mod acknowledged {
    use super::*;

    #[test]
    fn only_a_valid_external_interrupt_exit_names_a_vector() {
        assert_eq!(
            acknowledged_vector(EXTERNAL_INTERRUPT, 1 << 31 | 0xF8),
            Some(0xF8)
        );
        assert_eq!(acknowledged_vector(EXTERNAL_INTERRUPT, 0xF8), None);
        assert_eq!(acknowledged_vector(TDCALL, 1 << 31 | 0xF8), None);
        // A non-recoverable exit still carries its reason.
        assert_eq!(
            acknowledged_vector(0x6000_0002_0000_0000 | EXTERNAL_INTERRUPT, 1 << 31 | 0x30),
            Some(0x30)
        );
        // A failed VP.ENTER (OPERAND_BUSY on RCX: operand ID 1) is no exit, and R9 is then
        // the host's own input.
        assert_eq!(
            acknowledged_vector(0x8000_0200_0000_0001, 1 << 31 | 0xF8),
            None
        );
    }

    #[test]
    fn host_nmis_are_told_by_their_interruption_type() {
        assert!(is_host_nmi(EXCEPTION_OR_NMI, 1 << 31 | 2 << 8 | 2));
        assert!(
            !is_host_nmi(EXCEPTION_OR_NMI, 1 << 31 | 3 << 8 | 14),
            "a #PF"
        );
        assert!(!is_host_nmi(EXCEPTION_OR_NMI, 2 << 8 | 2), "not valid");
        assert!(!is_host_nmi(EXTERNAL_INTERRUPT, 1 << 31 | 2 << 8 | 2));
    }
}
