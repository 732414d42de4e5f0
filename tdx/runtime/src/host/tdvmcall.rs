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
    TDVMCALL_HLT, TDVMCALL_IO, TDVMCALL_MAP_GPA, TDVMCALL_MMIO, TDVMCALL_REPORT_FATAL_ERROR,
    TDVMCALL_STATUS_INVALID_OPERAND, TDVMCALL_STATUS_RETRY, TDVMCALL_STATUS_SUCCESS,
};
use tdx_abi::seamcall::Regs;

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
    /// ReportFatalError: R12 error code.
    ReportFatalError {
        /// The guest's code.
        code: u64,
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
            TDVMCALL_REPORT_FATAL_ERROR => Request::ReportFatalError { code: r.r12 },
            _ => Request::Unsupported { subfunction },
        }
    }
}

/// The answer to a TDVMCALL: R10 (status) and R11 (value) of the next entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// GHCI status.
    pub status: u64,
    /// Returned value (an `IN`'s data, MapGPA's next GPA, …).
    pub value: u64,
}

impl Reply {
    /// Success with no value.
    pub const DONE: Reply = Reply::success(0);
    /// The operands were invalid.
    pub const INVALID_OPERAND: Reply = Reply {
        status: TDVMCALL_STATUS_INVALID_OPERAND,
        value: 0,
    };

    /// Success, returning `value`.
    pub const fn success(value: u64) -> Reply {
        Reply {
            status: TDVMCALL_STATUS_SUCCESS,
            value,
        }
    }

    /// Partly done: the guest calls again from `next`.
    pub const fn retry(next: u64) -> Reply {
        Reply {
            status: TDVMCALL_STATUS_RETRY,
            value: next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tdx_abi::exit::{TDCALL, TDVMCALL_GET_QUOTE};

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
            Request::ReportFatalError { code: 7 }
        );
        assert_eq!(
            Request::decode(&tdvmcall(TDVMCALL_GET_QUOTE, 0, 0, 0, 0)),
            Request::Unsupported {
                subfunction: TDVMCALL_GET_QUOTE
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
