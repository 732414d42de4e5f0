//! TDH.VP.ENTER exit ABI: exit reasons, TDVMCALL subfunctions, exit-qualification encodings
//! (Linux `arch/x86/kvm/vmx/tdx.c`, `tdx_arch.h`; the accept-level encoding is from the
//! 2025–2026 huge-page RFCs and therefore marked unverified), and a decoded [`TdExit`].

use crate::abi::{Gpa, PageLevel};
use crate::seamcall::Regs;

/// Exit reason: external interrupt (kick / timer).
pub const EXTERNAL_INTERRUPT: u64 = 1;
/// Exit reason: triple fault (guest shutdown).
pub const TRIPLE_FAULT: u64 = 2;
/// Exit reason: EPT violation.
pub const EPT_VIOLATION: u64 = 48;
/// Exit reason: TDCALL (TDG.VP.VMCALL, i.e. a TDVMCALL).
pub const TDCALL: u64 = 77;
/// TDVMCALL subfunction Instruction.HLT (the VMX exit reason).
pub const TDVMCALL_HLT: u64 = 12;
/// TDVMCALL subfunction Instruction.IO.
pub const TDVMCALL_IO: u64 = 30;
/// TDVMCALL subfunction MapGPA.
pub const TDVMCALL_MAP_GPA: u64 = 0x10001;
/// TDVMCALL subfunction ReportFatalError.
pub const TDVMCALL_REPORT_FATAL_ERROR: u64 = 0x10003;
/// TDVMCALL status: success.
pub const TDVMCALL_STATUS_SUCCESS: u64 = 0;
/// TDVMCALL status: retry (MapGPA partially done; R11 = next GPA).
pub const TDVMCALL_STATUS_RETRY: u64 = 1;
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
/// The serial port the workload prints to.
pub const SERIAL_PORT: u64 = 0x3F8;
/// GPR mask a TDVMCALL exposes (R10–R15).
pub const TDVMCALL_GPR_MASK: u64 = 0xFC00;

/// A decoded TD exit (the registers TDH.VP.ENTER returns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdExit {
    /// External interrupt: a kick or the timer; just re-enter.
    ExternalInterrupt,
    /// Triple fault: the guest shut down.
    TripleFault,
    /// EPT violation on `gpa`.
    EptViolation {
        /// Faulting GPA (shared bit included).
        gpa: Gpa,
        /// Exit qualification (bit 0 read, bit 1 write).
        qualification: u64,
        /// Extended exit qualification type (bits 3:0).
        ext_type: u64,
        /// The guest's accept level when `ext_type` is [`EXT_QUAL_TYPE_ACCEPT`].
        accept_level: Option<PageLevel>,
    },
    /// TDVMCALL Instruction.HLT.
    Hlt,
    /// TDVMCALL Instruction.IO.
    Io {
        /// Access size in bytes.
        size: u64,
        /// true for OUT.
        write: bool,
        /// Port.
        port: u64,
        /// Value written (OUT).
        value: u64,
    },
    /// TDVMCALL MapGPA of `[gpa, gpa + size)`; the shared bit in `gpa` gives the direction.
    MapGpa {
        /// Start (with the shared bit for to-shared).
        gpa: Gpa,
        /// Size in bytes.
        size: u64,
    },
    /// TDVMCALL ReportFatalError.
    ReportFatalError {
        /// Error code (R12).
        code: u64,
    },
    /// Another TDVMCALL subfunction.
    OtherTdvmcall {
        /// R11.
        subfunction: u64,
    },
    /// Another exit reason.
    Other {
        /// RAX bits 31:0.
        reason: u64,
    },
}

impl TdExit {
    /// Decodes the VP.ENTER output registers of a successful TD exit.
    pub fn decode(r: &Regs) -> TdExit {
        match r.rax & 0xFFFF_FFFF {
            EXTERNAL_INTERRUPT => TdExit::ExternalInterrupt,
            TRIPLE_FAULT => TdExit::TripleFault,
            EPT_VIOLATION => {
                let ext_type = r.rdx & EXT_QUAL_TYPE_MASK;
                TdExit::EptViolation {
                    gpa: Gpa(r.r8),
                    qualification: r.rcx,
                    ext_type,
                    accept_level: (ext_type == EXT_QUAL_TYPE_ACCEPT)
                        .then(|| PageLevel::from_raw((r.rdx >> EXT_QUAL_INFO_SHIFT) & 7))
                        .flatten(),
                }
            }
            TDCALL => match r.r11 {
                TDVMCALL_HLT => TdExit::Hlt,
                TDVMCALL_IO => TdExit::Io {
                    size: r.r12,
                    write: r.r13 == 1,
                    port: r.r14,
                    value: r.r15,
                },
                TDVMCALL_MAP_GPA => TdExit::MapGpa {
                    gpa: Gpa(r.r12),
                    size: r.r13,
                },
                TDVMCALL_REPORT_FATAL_ERROR => TdExit::ReportFatalError { code: r.r12 },
                subfunction => TdExit::OtherTdvmcall { subfunction },
            },
            reason => TdExit::Other { reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_accept_level_and_io() {
        let r = Regs {
            rax: EPT_VIOLATION,
            rcx: QUAL_WRITE,
            rdx: EXT_QUAL_TYPE_ACCEPT | 1 << 32,
            r8: 0x20_0000,
            ..Regs::default()
        };
        assert_eq!(
            TdExit::decode(&r),
            TdExit::EptViolation {
                gpa: Gpa(0x20_0000),
                qualification: QUAL_WRITE,
                ext_type: EXT_QUAL_TYPE_ACCEPT,
                accept_level: Some(PageLevel::L2M),
            }
        );
        let r = Regs {
            rax: TDCALL,
            r11: TDVMCALL_IO,
            r12: 1,
            r13: 1,
            r14: SERIAL_PORT,
            r15: b'x' as u64,
            ..Regs::default()
        };
        assert_eq!(
            TdExit::decode(&r),
            TdExit::Io {
                size: 1,
                write: true,
                port: SERIAL_PORT,
                value: b'x' as u64
            }
        );
    }
}
