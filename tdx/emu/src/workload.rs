//! Declared guest workloads.
//!
//! The software module does not execute guest code. Each vCPU instead runs a *declared
//! workload*: a list of [`Step`]s that the module interprets inside TDH.VP.ENTER with the
//! semantics the real TD would have (page touches that fault through the S-EPT,
//! TDG.MEM.PAGE.ACCEPT, TDVMCALLs for MapGPA, serial output, HLT, fatal-error reports). Exits
//! are real TDX exits in the VP.ENTER output registers, so the host runtime's vCPU loop is
//! exercised exactly as on hardware. Progress is kept per vCPU (the TDVPS), so a step
//! interrupted by an exit resumes where it stopped on the next VP.ENTER.
//!
//! The management API builds these values from JSON; they are plain data.

use alloc::string::String;
use alloc::vec::Vec;

use tdx_abi::{Gpa, PageLevel};

/// The port a [`Step::Print`] writes to, one byte per TDVMCALL Instruction.IO: COM1, the
/// port the host's console UART decodes.
pub const SERIAL_PORT: u64 = 0x3F8;

/// A vCPU's workload: steps run in order. After the last step the vCPU halts (HLT exit) on
/// every further entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// The steps.
    pub steps: Vec<Step>,
}

/// Read or write access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Load from each page (reads the first 8 bytes).
    Read,
    /// Store to each page (writes the page's GPA into its first 8 bytes).
    Write,
}

/// Order pages of a range are visited in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Ascending addresses.
    Sequential,
    /// A deterministic pseudo-random permutation of the pages (each page exactly once).
    Random {
        /// Permutation seed.
        seed: u64,
    },
}

/// One step of a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Touch every 4 KiB page of `[gpa, gpa + len)`. A GPA with the TD's shared bit set is
    /// shared memory (never faults in the S-EPT). A private page that is not MAPPED causes an
    /// EPT-violation exit; a PENDING page exits with the PENDING type if the TD has
    /// `SEPT_VE_DISABLE`, otherwise the guest takes a #VE and accepts the page at 4 KiB
    /// (as a lazy-accept guest would) before retrying.
    Touch {
        /// First GPA (rounded down to 4 KiB).
        gpa: Gpa,
        /// Length in bytes (rounded up to 4 KiB).
        len: u64,
        /// Load or store.
        access: Access,
        /// Visiting order.
        order: Order,
    },
    /// TDG.MEM.PAGE.ACCEPT every `level`-sized page of `[gpa, gpa + len)` (4 KiB or 2 MiB).
    /// A 2 MiB accept that gets `TDX_PAGE_SIZE_MISMATCH` falls back to 512 4 KiB accepts, like
    /// a Linux guest.
    Accept {
        /// First GPA (aligned to `level`).
        gpa: Gpa,
        /// Length in bytes.
        len: u64,
        /// Accept level (4 KiB or 2 MiB).
        level: PageLevel,
    },
    /// TDVMCALL MapGPA: convert `[gpa, gpa + len)` to shared (`to_shared`) or private. The
    /// host may answer RETRY with the next GPA; the guest then re-issues the rest.
    Convert {
        /// First GPA (private form; the guest sets the shared bit itself when converting to
        /// shared).
        gpa: Gpa,
        /// Length in bytes.
        len: u64,
        /// Direction.
        to_shared: bool,
    },
    /// Writes `line` and a newline to the serial port 0x3F8, one IO TDVMCALL per byte.
    Print {
        /// Text (bytes are written as-is).
        line: String,
    },
    /// TDG.MR.RTMR.EXTEND of RTMR `index` with `digest`.
    ExtendRtmr {
        /// RTMR index 0..=3.
        index: u8,
        /// The 48-byte value extended.
        digest: [u8; 48],
    },
    /// TDVMCALL Instruction.HLT; the step completes when the vCPU is entered again.
    Halt,
    /// TDVMCALL ReportFatalError with `code`.
    ReportFatalError {
        /// Error code (R12).
        code: u64,
    },
    /// Triple fault: the vCPU shuts down; every later entry exits with a triple fault again.
    Shutdown,
    /// Any TDVMCALL: `subfunction` in R11, `args` in R12–R15. The step completes when the
    /// host's answer (R10 status, R11 value) is `expect_status` and, if given,
    /// `expect_value`; any other answer makes the guest report fatal error
    /// [`ANSWER_MISMATCH`] (so a test sees a host that answered wrongly as a failed TD).
    Tdvmcall {
        /// R11.
        subfunction: u64,
        /// R12–R15.
        args: [u64; 4],
        /// The status the host must answer.
        expect_status: u64,
        /// The value (R11) the host must answer, if it matters.
        expect_value: Option<u64>,
    },
}

/// The fatal-error code a [`Step::Tdvmcall`] reports when the host's answer is not the
/// expected one.
pub const ANSWER_MISMATCH: u64 = 0x0BAD_A45E;
