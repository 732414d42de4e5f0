//! Plain data exchanged between the runtime façade ([`super::Host`]) and its callers (the
//! management API, the appliance main loop). No behaviour, no serde: the API maps these to JSON.

use alloc::string::String;
use alloc::vec::Vec;

use crate::td::lifecycle::TdState;
use tdx_abi::software::GuestProgram;

/// Identifier of a TD, unique for the life of the host (never reused).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TdId(pub u64);

/// What an operator asks for when creating a TD (`POST /v1/tds`).
#[derive(Clone, Debug, PartialEq)]
pub struct TdSpec {
    /// Operator-chosen name (unique among live TDs; 1–64 chars of `[A-Za-z0-9._-]`).
    pub name: String,
    /// Name of an uploaded firmware image ([`ImageInfo::name`]).
    pub image: String,
    /// Number of vCPUs (1..=module max).
    pub vcpus: u32,
    /// Guest RAM in MiB (>= 32).
    pub memory_mib: u64,
    /// TD attributes (TD_PARAMS.ATTRIBUTES bits, e.g. SEPT_VE_DISABLE bit 28); validated
    /// against what the module supports.
    pub attributes: u64,
    /// Map private memory with 2 MiB pages where the guest's accept level allows.
    pub huge_pages: bool,
    /// Software module only: the declared guest program vCPU 0 runs (for a module whose
    /// guest engine runs declared workloads). `None`: the vCPUs idle (HLT) until stopped.
    /// Refused with [`super::HostError::WorkloadNeedsEmulation`] on hardware.
    pub workload: Option<GuestProgram>,
    /// A Linux kernel for the firmware to boot (QEMU's direct kernel boot: the firmware reads
    /// it through fw_cfg).
    pub linux: Option<LinuxBoot>,
    /// Name of an uploaded disk image the TD sees as a virtio block device (its own copy:
    /// the guest's writes are kept until the TD is deleted).
    pub disk: Option<String>,
}

/// What a TD's firmware boots directly (`kernel`, `initrd`, `cmdline` of `POST /v1/tds`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxBoot {
    /// Name of an uploaded kernel image.
    pub kernel: String,
    /// Name of an uploaded initramfs image.
    pub initrd: Option<String>,
    /// The kernel command line (at most what the kernel's header allows).
    pub cmdline: String,
}

/// How to stop a TD (`POST /v1/tds/{id}/stop`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StopMode {
    /// Stop entering and kick the vCPUs out at once instead of asking the guest.
    pub force: bool,
    /// Graceful stop: how long to wait for the guest before forcing (ms).
    pub timeout_ms: u64,
}

/// Result of a lifecycle request that may take time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The operation was started; watch the TD state / events (API: 202).
    Started,
    /// The TD is already in the requested state; nothing to do (API: 200).
    AlreadyDone,
}

/// Memory mapped for a TD, by page size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappedPages {
    /// 4 KiB private pages mapped.
    pub pages_4k: u64,
    /// 2 MiB private pages mapped.
    pub pages_2m: u64,
    /// 1 GiB private pages mapped.
    pub pages_1g: u64,
}

/// Per-TD counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TdCounters {
    /// TD exits handled, all reasons.
    pub exits: u64,
    /// EPT-violation exits.
    pub ept_violations: u64,
    /// Private faults resolved by the S-EPT manager.
    pub faults: u64,
    /// `TDX_OPERAND_BUSY` retries (fault and zap paths).
    pub busy_retries: u64,
    /// MapGPA conversions handled.
    pub conversions: u64,
    /// Bytes of mapped private memory converted to shared.
    pub shared_conversion_bytes: u64,
    /// Nanoseconds the vCPUs spent out of the TD for those conversions.
    pub shared_conversion_ns: u64,
    /// 2 MiB pages demoted.
    pub demotions: u64,
    /// Pages deliberately leaked after an unrecoverable error.
    pub leaked_pages: u64,
    /// Console bytes written by the guest.
    pub console_bytes: u64,
}

/// A TD as the API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct TdInfo {
    /// Identifier.
    pub id: TdId,
    /// Operator name.
    pub name: String,
    /// Image it was built from.
    pub image: String,
    /// Lifecycle state.
    pub state: TdState,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// TD attributes.
    pub attributes: u64,
    /// Whether 2 MiB mappings are allowed.
    pub huge_pages: bool,
    /// Build progress while building: pages added so far / total.
    pub build_progress: Option<(u64, u64)>,
    /// Private pages currently mapped.
    pub mapped: MappedPages,
    /// Counters.
    pub counters: TdCounters,
    /// Why the TD is failed or bugged (guest fatal error message, or leaf/status/operand).
    pub reason: Option<String>,
    /// Milliseconds since host start when the TD was created.
    pub created_ms: u64,
    /// What runs its vCPUs.
    pub engine: GuestEngine,
}

/// Measurement registers of a TD (`GET /v1/tds/{id}/measurement`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Measurement {
    /// MRTD (valid once finalized).
    pub mrtd: [u8; 48],
    /// RTMR0..3.
    pub rtmr: [[u8; 48]; 4],
    /// MRCONFIGID from TD_PARAMS.
    pub mrconfigid: [u8; 48],
    /// MROWNER from TD_PARAMS.
    pub mrowner: [u8; 48],
    /// MROWNERCONFIG from TD_PARAMS.
    pub mrownerconfig: [u8; 48],
    /// Whether MR.FINALIZE has run.
    pub finalized: bool,
}

/// A chunk of a TD's console output (`GET /v1/tds/{id}/console?offset=N`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleChunk {
    /// Offset of `data[0]` in the TD's console stream (greater than the requested offset when
    /// older bytes were already dropped from the ring).
    pub offset: u64,
    /// Bytes.
    pub data: Vec<u8>,
    /// Offset to ask for next.
    pub next_offset: u64,
}

/// One section of a TDVF image, as reported after upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSection {
    /// Section type name (`BFV`, `CFV`, `TD_HOB`, `TempMem`, `PermMem`, `Payload`, ...).
    pub kind: String,
    /// Guest-physical base.
    pub gpa: u64,
    /// Bytes in guest memory.
    pub memory_size: u64,
    /// Bytes taken from the file.
    pub raw_size: u64,
    /// MR.EXTEND attribute.
    pub extend: bool,
    /// PAGE.AUG attribute.
    pub aug: bool,
}

/// An uploaded firmware image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Name given at upload.
    pub name: String,
    /// File size in bytes.
    pub size: u64,
    /// SHA-384 of the file.
    pub sha384: [u8; 48],
    /// What the file is.
    pub kind: ImageKind,
    /// TDVF sections in metadata order (firmware only).
    pub sections: Vec<ImageSection>,
    /// MRTD a TD built from this image will have (offline computation; independent of RAM
    /// size; firmware only).
    pub expected_mrtd: Option<[u8; 48]>,
    /// Number of TDs (not destroyed) built from it.
    pub in_use_by: u32,
}

/// What an uploaded image is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// TDVF firmware (a TD's `image`).
    Firmware,
    /// A Linux kernel: a bzImage with an EFI stub (a TD's `kernel`).
    Kernel,
    /// An initramfs (a TD's `initrd`).
    Initrd,
    /// A raw disk image: a partition table or an ext2/3/4 file system (a TD's `disk`).
    Disk,
}

impl ImageKind {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Firmware => "firmware",
            ImageKind::Kernel => "kernel",
            ImageKind::Initrd => "initrd",
            ImageKind::Disk => "disk",
        }
    }
}

/// An event in the host's event log (`GET /v1/events`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Strictly increasing id, starting at 1.
    pub id: u64,
    /// Milliseconds since host start.
    pub at_ms: u64,
    /// What happened.
    pub kind: EventKind,
}

/// What an [`Event`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A TD changed lifecycle state.
    TdState {
        /// Which TD.
        id: TdId,
        /// Its name.
        name: String,
        /// Previous state.
        from: TdState,
        /// New state.
        to: TdState,
    },
    /// A TD was marked bugged (also reported as a `TdState` change).
    TdBugged {
        /// Which TD.
        id: TdId,
        /// Leaf, status and operand of the unexpected SEAMCALL result, or other cause.
        reason: String,
    },
    /// Host-level event (module initialized, image uploaded/deleted, ...).
    Host {
        /// Short human-readable message.
        message: String,
    },
}

/// What runs a TD's vCPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestEngine {
    /// The TDX module on the CPU (hardware backend).
    Tdx,
    /// The software module's SVM engine: the TD's own code, on AMD SVM with nested paging.
    Svm,
    /// The software module's declared workload (test programs, no guest code).
    DeclaredWorkload,
    /// Nothing: the software module has no guest CPU and the TD declares no workload.
    None,
}

impl GuestEngine {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            GuestEngine::Tdx => "tdx",
            GuestEngine::Svm => "svm",
            GuestEngine::DeclaredWorkload => "declared-workload",
            GuestEngine::None => "none",
        }
    }
}

/// Host-wide information (`GET /v1/host`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    /// `hardware` or `emulated`.
    pub module_kind: &'static str,
    /// What runs TDs without a declared workload ([`GuestEngine::as_str`]).
    pub guest_engine: &'static str,
    /// Module version string (emulated: "emulated 1.5").
    pub module_version: String,
    /// Module limits read with TDH.SYS.RD.
    pub max_vcpus_per_td: u32,
    /// HKIDs usable by TDs.
    pub hkids_total: u32,
    /// HKIDs free.
    pub hkids_free: u32,
    /// Logical CPUs initialized (LP.INIT).
    pub cpus: u32,
    /// vCPU runner loops (one per application processor).
    pub runners: u32,
    /// TD memory pool, bytes.
    pub memory_total: u64,
    /// TD memory pool free, bytes.
    pub memory_free: u64,
    /// TD counts by state (state, count), every state listed.
    pub tds_by_state: Vec<(TdState, u32)>,
    /// How bring-up went, step by step (the platform's steps, then the module's).
    pub bringup: Vec<super::BringupStep>,
}

/// Counters for `/v1/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostMetrics {
    /// SEAMCALLs by (leaf name, status class `success`/`busy`/`error`).
    pub seamcalls: Vec<(&'static str, &'static str, u64)>,
    /// Private faults resolved, all TDs.
    pub faults: u64,
    /// BUSY retries, all TDs.
    pub busy_retries: u64,
    /// Pool bytes by use (use name, bytes).
    pub pool_bytes_by_use: Vec<(&'static str, u64)>,
    /// Pool total bytes.
    pub pool_total: u64,
    /// Pool free bytes.
    pub pool_free: u64,
    /// Pages deliberately leaked after unrecoverable errors (destroyed and live TDs).
    pub leaked_pages: u64,
    /// The software module's guest-engine exit statistics (`None` on the TDX module).
    pub guest_exits: Option<tdx_abi::software::GuestExitStats>,
}
