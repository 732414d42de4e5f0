//! TDVMCALLs: the guest's requests to the host, decoded once into one typed [`Request`] per
//! sub-function and answered with a typed [`Reply`].
//!
//! Register convention (Intel GHCI for TDX 1.5; Linux `arch/x86/coco/tdx/tdx.c` and
//! `arch/x86/kvm/vmx/tdx.c`): the TD exit reason is TDCALL (77), R10 is 0 for the GHCI
//! sub-functions (anything else is vendor-specific), R11 names the sub-function, R12–R15
//! carry its operands. The reply goes back in R10 (status) and R11 (value) on the next
//! TDH.VP.ENTER.

use tdx_abi::Gpa;
use tdx_abi::exit::{
    TDVMCALL_CPUID, TDVMCALL_GET_QUOTE, TDVMCALL_GET_TD_VM_CALL_INFO, TDVMCALL_HLT, TDVMCALL_IO,
    TDVMCALL_MAP_GPA, TDVMCALL_MMIO, TDVMCALL_RDMSR, TDVMCALL_REPORT_FATAL_ERROR,
    TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT, TDVMCALL_STATUS_INVALID_OPERAND, TDVMCALL_STATUS_RETRY,
    TDVMCALL_STATUS_SUCCESS, TDVMCALL_WRMSR,
};
use tdx_abi::seamcall::{Regs, TdvmcallAnswer};

use crate::devices::AccessSize;

/// Direction and data of a port or MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The guest reads; the reply carries the value.
    Read,
    /// The guest writes this value (already cut to the access size).
    Write(u64),
}

/// One TDVMCALL, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Instruction.HLT: the vCPU is idle. R12 bit 0: interrupts were blocked (STI not
    /// executed), so only an NMI or a kick should wake it.
    Hlt {
        /// R12 bit 0.
        interrupts_blocked: bool,
    },
    /// Instruction.IO: R12 size (1, 2, 4), R13 direction (0 in, 1 out), R14 port, R15 value.
    Io {
        /// Access width.
        size: AccessSize,
        /// The port.
        port: u16,
        /// In or out.
        access: Access,
    },
    /// #VE.RequestMMIO: R12 size (1, 2, 4, 8), R13 direction (0 read, 1 write), R14 GPA
    /// (shared), R15 value.
    Mmio {
        /// Access width.
        size: AccessSize,
        /// The guest-physical address as the guest gave it (shared bit included).
        gpa: Gpa,
        /// Read or write.
        access: Access,
    },
    /// MapGPA: convert `[gpa, gpa + size)` (R12, R13); the shared bit of `gpa` says which way.
    MapGpa {
        /// Start, with the shared bit set for a conversion to shared.
        gpa: Gpa,
        /// Bytes.
        size: u64,
    },
    /// ReportFatalError: R12 error code; with R12 bit 63 set, a 64-byte message in R14,
    /// R15, RBX, RDI, RSI, R8, R9, RDX (in that order).
    ReportFatalError {
        /// The guest's code.
        code: u64,
        /// The message, if the guest gave one.
        message: Option<FatalMessage>,
    },
    /// Instruction.CPUID: R12 leaf (EAX), R13 sub-leaf (ECX); the reply carries EAX, EBX,
    /// ECX, EDX in R12–R15.
    Cpuid {
        /// EAX.
        leaf: u32,
        /// ECX.
        subleaf: u32,
    },
    /// Instruction.RDMSR: R12 the MSR; the reply carries the value in R11.
    Rdmsr {
        /// ECX of the RDMSR.
        msr: u32,
    },
    /// Instruction.WRMSR: R12 the MSR, R13 the value.
    Wrmsr {
        /// ECX of the WRMSR.
        msr: u32,
        /// EDX:EAX.
        value: u64,
    },
    /// GetTdVmCallInfo: R12 0 asks for the GHCI leaves supported beyond the base set (none:
    /// R11–R14 zero).
    GetTdVmCallInfo {
        /// R12.
        leaf: u64,
    },
    /// SetupEventNotifyInterrupt: R12 the vector (32–255) the host posts when a quote is
    /// ready.
    SetupEventNotifyInterrupt {
        /// R12.
        vector: u64,
    },
    /// GetQuote: R12 the shared GPA of the buffer, R13 its size.
    GetQuote {
        /// The buffer (shared bit included).
        gpa: Gpa,
        /// Bytes.
        size: u64,
    },
    /// A known sub-function with operands outside its definition.
    Malformed {
        /// R11.
        subfunction: u64,
    },
    /// A sub-function this host does not implement (or a vendor-specific call).
    Unsupported {
        /// R11.
        subfunction: u64,
    },
}

impl Request {
    /// Decodes the TDVMCALL in the output registers of a TDCALL exit.
    pub fn decode(r: &Regs) -> Request {
        let subfunction = r.r11;
        if r.r10 != 0 {
            return Request::Unsupported { subfunction };
        }
        let malformed = Request::Malformed { subfunction };
        let access = |size: AccessSize| match r.r13 {
            0 => Some(Access::Read),
            1 => Some(Access::Write(size.truncate(r.r15))),
            _ => None,
        };
        match subfunction {
            TDVMCALL_HLT => Request::Hlt {
                interrupts_blocked: r.r12 & 1 != 0,
            },
            TDVMCALL_IO => {
                let size = AccessSize::from_bytes(r.r12).filter(|s| *s != AccessSize::Qword);
                match (size, u16::try_from(r.r14)) {
                    (Some(size), Ok(port)) => match access(size) {
                        Some(access) => Request::Io { size, port, access },
                        None => malformed,
                    },
                    _ => malformed,
                }
            }
            TDVMCALL_MMIO => match AccessSize::from_bytes(r.r12) {
                Some(size) => match access(size) {
                    Some(access) => Request::Mmio {
                        size,
                        gpa: Gpa(r.r14),
                        access,
                    },
                    None => malformed,
                },
                None => malformed,
            },
            TDVMCALL_MAP_GPA => Request::MapGpa {
                gpa: Gpa(r.r12),
                size: r.r13,
            },
            TDVMCALL_REPORT_FATAL_ERROR => Request::ReportFatalError {
                code: r.r12 & !FATAL_MESSAGE_VALID,
                message: (r.r12 & FATAL_MESSAGE_VALID != 0).then(|| FatalMessage::from_regs(r)),
            },
            TDVMCALL_CPUID => match (u32::try_from(r.r12), u32::try_from(r.r13)) {
                (Ok(leaf), Ok(subleaf)) => Request::Cpuid { leaf, subleaf },
                _ => malformed,
            },
            TDVMCALL_RDMSR => match u32::try_from(r.r12) {
                Ok(msr) => Request::Rdmsr { msr },
                Err(_) => malformed,
            },
            TDVMCALL_WRMSR => match u32::try_from(r.r12) {
                Ok(msr) => Request::Wrmsr { msr, value: r.r13 },
                Err(_) => malformed,
            },
            TDVMCALL_GET_TD_VM_CALL_INFO => Request::GetTdVmCallInfo { leaf: r.r12 },
            TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT => {
                Request::SetupEventNotifyInterrupt { vector: r.r12 }
            }
            TDVMCALL_GET_QUOTE => Request::GetQuote {
                gpa: Gpa(r.r12),
                size: r.r13,
            },
            _ => Request::Unsupported { subfunction },
        }
    }
}

/// ReportFatalError R12 bit 63: a message is in the registers.
const FATAL_MESSAGE_VALID: u64 = 1 << 63;

/// The 64-byte message of a ReportFatalError, NUL-padded text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FatalMessage(pub [u8; 64]);

impl FatalMessage {
    /// The message bytes from R14, R15, RBX, RDI, RSI, R8, R9, RDX (GHCI order).
    fn from_regs(r: &Regs) -> FatalMessage {
        let mut bytes = [0u8; 64];
        let words = [r.r14, r.r15, r.rbx, r.rdi, r.rsi, r.r8, r.r9, r.rdx];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        FatalMessage(bytes)
    }

    /// The printable text up to the first NUL (other bytes shown as `?`).
    pub fn text(&self) -> impl Iterator<Item = char> + '_ {
        self.0.iter().take_while(|&&b| b != 0).map(|&b| {
            if (0x20..0x7F).contains(&b) {
                char::from(b)
            } else {
                '?'
            }
        })
    }
}

impl core::fmt::Debug for FatalMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("FatalMessage(\"")?;
        for c in self.text() {
            core::fmt::Write::write_char(f, c)?;
        }
        f.write_str("\")")
    }
}

/// The answer to a TDVMCALL, handed to the next entry: R10 (status), R11 (value) and, for
/// the sub-functions that return more, R12–R15.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// GHCI status.
    pub status: u64,
    /// Returned value (an `IN`'s data, MapGPA's next GPA, …).
    pub value: u64,
    /// R12–R15 (Instruction.CPUID: EAX, EBX, ECX, EDX).
    pub more: [u64; 4],
}

impl Reply {
    /// Success with no value.
    pub const DONE: Reply = Reply::success(0);
    /// The operands were invalid.
    pub const INVALID_OPERAND: Reply = Reply {
        status: TDVMCALL_STATUS_INVALID_OPERAND,
        value: 0,
        more: [0; 4],
    };

    /// Success, returning `value`.
    pub const fn success(value: u64) -> Reply {
        Reply {
            status: TDVMCALL_STATUS_SUCCESS,
            value,
            more: [0; 4],
        }
    }

    /// Success, returning four values in R12–R15.
    pub const fn success4(values: [u64; 4]) -> Reply {
        Reply {
            status: TDVMCALL_STATUS_SUCCESS,
            value: 0,
            more: values,
        }
    }

    /// Partly done: the guest calls again from `next`.
    pub const fn retry(next: u64) -> Reply {
        Reply {
            status: TDVMCALL_STATUS_RETRY,
            value: next,
            more: [0; 4],
        }
    }

    /// The registers the next TDH.VP.ENTER takes.
    pub const fn answer(self) -> TdvmcallAnswer {
        TdvmcallAnswer {
            r10: self.status,
            r11: self.value,
            r12: self.more[0],
            r13: self.more[1],
            r14: self.more[2],
            r15: self.more[3],
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod host_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use tdx_abi::exit::TDCALL;

    fn tdvmcall(r11: u64, r12: u64, r13: u64, r14: u64, r15: u64) -> Regs {
        Regs {
            rax: TDCALL,
            r11,
            r12,
            r13,
            r14,
            r15,
            ..Regs::default()
        }
    }

    #[test]
    fn decodes_port_io_and_checks_its_operands() {
        assert_eq!(
            Request::decode(&tdvmcall(TDVMCALL_IO, 1, 1, 0x3F8, 0x178)),
            Request::Io {
                size: AccessSize::Byte,
                port: 0x3F8,
                access: Access::Write(0x78)
            }
        );
        assert_eq!(
            Request::decode(&tdvmcall(TDVMCALL_IO, 4, 0, 0xCFC, 0)),
            Request::Io {
                size: AccessSize::Dword,
                port: 0xCFC,
                access: Access::Read
            }
        );
        for bad in [
            tdvmcall(TDVMCALL_IO, 3, 0, 0x80, 0),
            tdvmcall(TDVMCALL_IO, 8, 0, 0x80, 0),
            tdvmcall(TDVMCALL_IO, 1, 2, 0x80, 0),
            tdvmcall(TDVMCALL_IO, 1, 0, 0x1_0000, 0),
        ] {
            assert_eq!(
                Request::decode(&bad),
                Request::Malformed {
                    subfunction: TDVMCALL_IO
                }
            );
        }
    }

    #[test]
    fn decodes_the_other_sub_functions() {
        assert_eq!(
            Request::decode(&tdvmcall(TDVMCALL_HLT, 1, 0, 0, 0)),
            Request::Hlt {
                interrupts_blocked: true
            }
        );
        assert_eq!(
            Request::decode(&tdvmcall(TDVMCALL_MMIO, 8, 1, 0x8000_FEC0_0000, u64::MAX)),
            Request::Mmio {
                size: AccessSize::Qword,
                gpa: Gpa(0x8000_FEC0_0000),
                access: Access::Write(u64::MAX)
            }
        );
        assert_eq!(
            Request::decode(&tdvmcall(TDVMCALL_MAP_GPA, 0x1000, 0x2000, 0, 0)),
            Request::MapGpa {
                gpa: Gpa(0x1000),
                size: 0x2000
            }
        );
        assert_eq!(
            Request::decode(&tdvmcall(TDVMCALL_REPORT_FATAL_ERROR, 7, 0, 0, 0)),
            Request::ReportFatalError {
                code: 7,
                message: None
            }
        );
        let mut fatal = tdvmcall(
            TDVMCALL_REPORT_FATAL_ERROR,
            1 << 63 | 9,
            0,
            u64::from_le_bytes(*b"disk on "),
            u64::from_le_bytes(*b"fire\0\0\0\0"),
        );
        fatal.rbx = u64::from_le_bytes(*b"ignored!");
        let Request::ReportFatalError {
            code: 9,
            message: Some(message),
        } = Request::decode(&fatal)
        else {
            panic!("not a fatal error with a message");
        };
        assert_eq!(message.text().collect::<String>(), "disk on fire");
        assert_eq!(
            Request::decode(&tdvmcall(TDVMCALL_CPUID, 0x4000_0000, 0, 0, 0)),
            Request::Cpuid {
                leaf: 0x4000_0000,
                subleaf: 0
            }
        );
        assert_eq!(
            Request::decode(&tdvmcall(TDVMCALL_WRMSR, 0x277, 0x0606, 0, 0)),
            Request::Wrmsr {
                msr: 0x277,
                value: 0x0606
            }
        );
        assert_eq!(
            Request::decode(&tdvmcall(TDVMCALL_RDMSR, 1 << 32, 0, 0, 0)),
            Request::Malformed {
                subfunction: TDVMCALL_RDMSR
            }
        );
        assert_eq!(
            Request::decode(&tdvmcall(0x20000, 0, 0, 0, 0)),
            Request::Unsupported {
                subfunction: 0x20000
            }
        );
        let mut vendor = tdvmcall(TDVMCALL_HLT, 0, 0, 0, 0);
        vendor.r10 = 1;
        assert_eq!(
            Request::decode(&vendor),
            Request::Unsupported {
                subfunction: TDVMCALL_HLT
            }
        );
    }
}
