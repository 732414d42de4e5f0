//! JSON shapes of the management API: request bodies (strict: unknown fields are refused)
//! and response bodies, with their translation to and from the runtime's `tdx_runtime::host` types.
//!
//! Request bodies are read with [`parse_json`], which reports the JSON path of the first
//! offending element (`workload.steps[2].touch.gpa`) as the error's `field`, using
//! `serde_path_to_error`. The OpenAPI document (`docs/openapi.json`) describes the same
//! shapes; a test checks responses produced here against it.

use alloc::borrow::ToOwned;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use tdx_abi::software::GuestProgram;
use tdx_abi::{Gpa, PageLevel};
use tdx_emu::workload as wl;
use tdx_runtime::host::{
    ConsoleChunk, Event, EventKind, ImageInfo, LinuxBoot, Measurement, StopMode, TdInfo, TdSpec,
};

use crate::error::ApiError;

/// Most steps a declared workload may have.
pub const MAX_WORKLOAD_STEPS: usize = 4096;
/// Longest `print` line, in bytes.
pub const MAX_PRINT_LINE: usize = 1024;
/// Graceful-stop timeout used when a stop request gives none.
pub const DEFAULT_STOP_TIMEOUT_MS: u64 = 10_000;
/// Longest graceful-stop timeout accepted.
pub const MAX_STOP_TIMEOUT_MS: u64 = 600_000;

/// Parses a JSON request body into `T`; a syntax error is a 400, a shape error (unknown
/// field, wrong type, missing field, bad value) a 400 whose `field` is the JSON path.
///
/// Beyond what the derived `Deserialize` checks, the body must be a JSON object and may hold
/// arrays only at the paths in `array_paths` (serde accepts an array in place of a struct,
/// `["a","ovmf",1,64,...]`, which this API does not).
pub fn parse_strict_json<'de, T: Deserialize<'de>>(
    body: &'de [u8],
    array_paths: &[&str],
) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|err| ApiError::bad_request(format!("invalid request body: {err}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid request body: expected a JSON object",
        ));
    }
    reject_misplaced_arrays(&value, &mut String::new(), array_paths)?;
    parse_json(body)
}

fn reject_misplaced_arrays(
    value: &serde_json::Value,
    path: &mut String,
    allowed: &[&str],
) -> Result<(), ApiError> {
    match value {
        serde_json::Value::Array(items) => {
            if !allowed.contains(&path.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "invalid request body: an array is not accepted at {path}"
                ))
                .with_field(path.clone()));
            }
            for (index, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                reject_misplaced_arrays(item, path, allowed)?;
                path.truncate(len);
            }
        }
        serde_json::Value::Object(members) => {
            for (key, item) in members {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                reject_misplaced_arrays(item, path, allowed)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// [`parse_strict_json`] without the object/array checks (for types with no struct).
pub fn parse_json<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = format!("invalid request body: {inner}");
        if inner.is_syntax() || inner.is_eof() || path == "." {
            ApiError::bad_request(message)
        } else {
            ApiError::bad_request(message).with_field(path)
        }
    })?;
    de.end()
        .map_err(|err| ApiError::bad_request(format!("invalid request body: {err}")))?;
    Ok(value)
}

/// A `u64` given as a JSON integer or as a string, `"0x1f"` (hex) or `"31"` (decimal):
/// addresses read better in hex, and JSON numbers above 2^53 lose precision in many clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlexU64(pub u64);

impl<'de> Deserialize<'de> for FlexU64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FlexVisitor;
        impl Visitor<'_> for FlexVisitor {
            type Value = FlexU64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer or a string \"0x...\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FlexU64, E> {
                Ok(FlexU64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FlexU64, E> {
                let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                    Some(hex) if !hex.is_empty() && hex.len() <= 16 => {
                        u64::from_str_radix(hex, 16).ok()
                    }
                    Some(_) => None,
                    None if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                        v.parse().ok()
                    }
                    None => None,
                };
                parsed
                    .map(FlexU64)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        deserializer.deserialize_any(FlexVisitor)
    }
}

/// 48 bytes written as 96 hex digits (SHA-384 digests, measurement registers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hex48(pub [u8; 48]);

impl<'de> Deserialize<'de> for Hex48 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        decode_hex48(&text)
            .map(Hex48)
            .ok_or_else(|| de::Error::custom("expected a string of 96 hex digits"))
    }
}

impl Serialize for Hex48 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex(&self.0))
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn decode_hex48(text: &str) -> Option<[u8; 48]> {
    let bytes = text.as_bytes();
    if bytes.len() != 96 {
        return None;
    }
    let mut out = [0u8; 48];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let digit = |b: u8| char::from(b).to_digit(16);
        let (hi, lo) = (digit(*pair.first()?)?, digit(*pair.get(1)?)?);
        *slot = u8::try_from(hi << 4 | lo).ok()?;
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// Where a `POST /v1/tds` body may hold arrays.
pub const CREATE_TD_ARRAYS: &[&str] = &["workload.steps"];

/// Body of `POST /v1/tds`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTdRequest {
    /// Unique name, 1–64 characters of `[A-Za-z0-9._-]`.
    pub name: String,
    /// Name of an uploaded image.
    pub image: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// TD attributes (TD_PARAMS.ATTRIBUTES), default 0 (a Linux TD needs SEPT_VE_DISABLE,
    /// bit 28, unless it is a debug TD).
    #[serde(default)]
    pub attributes: Option<FlexU64>,
    /// Allow 2 MiB private mappings, default true (a guest that accepts at 2 MiB, as TDVF
    /// and Linux do, then costs one EPT violation per 2 MiB instead of 512).
    #[serde(default = "default_huge_pages")]
    pub huge_pages: bool,
    /// Emulated module only: the declared guest workload.
    #[serde(default)]
    pub workload: Option<WorkloadDto>,
    /// A kernel image for the firmware to boot directly.
    #[serde(default)]
    pub kernel: Option<String>,
    /// An initramfs image for that kernel.
    #[serde(default)]
    pub initrd: Option<String>,
    /// That kernel's command line.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// A disk image the TD sees as a virtio block device (the TD writes its own copy).
    #[serde(default)]
    pub disk: Option<String>,
}

fn default_huge_pages() -> bool {
    true
}

impl CreateTdRequest {
    /// The runtime's spec, after the checks that are the API's (workload size).
    pub fn into_spec(self) -> Result<TdSpec, ApiError> {
        let workload = match self.workload {
            Some(dto) => Some(GuestProgram::new(dto.into_workload()?)),
            None => None,
        };
        let linux =
            match (self.kernel, self.initrd, self.cmdline) {
                (Some(kernel), initrd, cmdline) => Some(LinuxBoot {
                    kernel,
                    initrd,
                    cmdline: cmdline.unwrap_or_default(),
                }),
                (None, Some(_), _) => {
                    return Err(ApiError::bad_request("invalid initrd: needs a kernel")
                        .with_field("initrd"));
                }
                (None, None, Some(_)) => {
                    return Err(ApiError::bad_request("invalid cmdline: needs a kernel")
                        .with_field("cmdline"));
                }
                (None, None, None) => None,
            };
        Ok(TdSpec {
            name: self.name,
            image: self.image,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            attributes: self.attributes.map_or(0, |a| a.0),
            huge_pages: self.huge_pages,
            workload,
            linux,
            disk: self.disk,
        })
    }
}

/// Body of `POST /v1/tds/{id}/stop` (optional: an empty body means the defaults).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Kick the vCPUs out at once instead of asking the guest.
    #[serde(default)]
    pub force: bool,
    /// Graceful stop: how long to wait before forcing (default 10 s, at most 600 s).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl StopRequest {
    /// The runtime's stop mode; `timeout_ms` out of range is a 400 on `timeout_ms`.
    pub fn into_mode(self) -> Result<StopMode, ApiError> {
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_STOP_TIMEOUT_MS);
        if timeout_ms > MAX_STOP_TIMEOUT_MS {
            return Err(ApiError::bad_request(format!(
                "timeout_ms must be at most {MAX_STOP_TIMEOUT_MS}"
            ))
            .with_field("timeout_ms"));
        }
        Ok(StopMode {
            force: self.force,
            timeout_ms,
        })
    }
}

/// Most bytes one `POST /v1/tds/{id}/console` may type.
pub const MAX_CONSOLE_INPUT_BYTES: usize = 4096;

/// Body of `POST /v1/tds/{id}/console`: text to type into the TD's console (its UART).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleInput {
    /// The bytes to type, as UTF-8 text (`\r` is the Enter key of a serial terminal).
    pub input: String,
}

impl ConsoleInput {
    /// The bytes; empty or over [`MAX_CONSOLE_INPUT_BYTES`] is a 400 on `input`.
    pub fn bytes(&self) -> Result<&[u8], ApiError> {
        let bytes = self.input.as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_CONSOLE_INPUT_BYTES {
            return Err(ApiError::bad_request(format!(
                "input must be 1 to {MAX_CONSOLE_INPUT_BYTES} bytes"
            ))
            .with_field("input"));
        }
        Ok(bytes)
    }
}

/// Typed console input accepted (`POST /v1/tds/{id}/console`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ConsoleInputAccepted {
    /// Bytes queued in the UART; fewer than sent when its receive queue is full.
    pub accepted_bytes: usize,
}

/// Body of `POST /v1/tds/{id}/start` (optional; only `{}` is accepted when present).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {}

/// Emulated module only: a declared guest workload, not guest code (see
/// `tdx_emu::workload`). vCPU 0 runs the steps in order, then halts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadDto {
    /// The steps.
    pub steps: Vec<StepDto>,
}

impl WorkloadDto {
    fn into_workload(self) -> Result<wl::Workload, ApiError> {
        if self.steps.len() > MAX_WORKLOAD_STEPS {
            return Err(ApiError::bad_request(format!(
                "a workload has at most {MAX_WORKLOAD_STEPS} steps"
            ))
            .with_field("workload.steps"));
        }
        let mut steps = Vec::with_capacity(self.steps.len());
        for (index, step) in self.steps.into_iter().enumerate() {
            steps.push(step.into_step(index)?);
        }
        Ok(wl::Workload { steps })
    }
}

/// Load or store (`"read"`, `"write"`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessDto {
    /// Load from each page.
    Read,
    /// Store to each page.
    Write,
}

/// Visiting order: `"sequential"` or `{"random": {"seed": N}}`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OrderDto {
    /// Ascending addresses.
    #[default]
    Sequential,
    /// A deterministic permutation.
    Random {
        /// Permutation seed.
        seed: u64,
    },
}

/// Accept level: `"4k"` or `"2m"`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub enum LevelDto {
    /// 4 KiB.
    #[serde(rename = "4k")]
    L4K,
    /// 2 MiB.
    #[serde(rename = "2m")]
    L2M,
}

/// `touch` step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TouchDto {
    /// First GPA.
    pub gpa: FlexU64,
    /// Bytes.
    pub len: FlexU64,
    /// Load or store.
    pub access: AccessDto,
    /// Order (default sequential).
    #[serde(default)]
    pub order: OrderDto,
}

/// `accept` step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptDto {
    /// First GPA.
    pub gpa: FlexU64,
    /// Bytes.
    pub len: FlexU64,
    /// Accept level.
    pub level: LevelDto,
}

/// `convert` step (MapGPA).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertDto {
    /// First GPA (private form).
    pub gpa: FlexU64,
    /// Bytes.
    pub len: FlexU64,
    /// To shared (true) or to private (false).
    pub to_shared: bool,
}

/// `print` step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrintDto {
    /// The line written to the serial console.
    pub line: String,
}

/// `extend_rtmr` step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendRtmrDto {
    /// RTMR index 0..=3.
    pub index: u8,
    /// 48 bytes as 96 hex digits.
    pub digest: Hex48,
}

/// `report_fatal_error` step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FatalDto {
    /// Error code.
    pub code: FlexU64,
}

/// One workload step: `{"touch": {...}}`, `"halt"`, ... (externally tagged, so error paths
/// name the step kind: `workload.steps[2].touch.gpa`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StepDto {
    /// Touch every 4 KiB page of a range.
    Touch(TouchDto),
    /// TDG.MEM.PAGE.ACCEPT a range.
    Accept(AcceptDto),
    /// MapGPA a range to shared or private.
    Convert(ConvertDto),
    /// Write a line to the serial console.
    Print(PrintDto),
    /// TDG.MR.RTMR.EXTEND.
    ExtendRtmr(ExtendRtmrDto),
    /// HLT.
    Halt,
    /// ReportFatalError.
    ReportFatalError(FatalDto),
    /// Triple fault.
    Shutdown,
}

impl StepDto {
    fn into_step(self, index: usize) -> Result<wl::Step, ApiError> {
        let field = |kind: &str, name: &str| format!("workload.steps[{index}].{kind}.{name}");
        Ok(match self {
            Self::Touch(t) => wl::Step::Touch {
                gpa: Gpa(t.gpa.0),
                len: t.len.0,
                access: match t.access {
                    AccessDto::Read => wl::Access::Read,
                    AccessDto::Write => wl::Access::Write,
                },
                order: match t.order {
                    OrderDto::Sequential => wl::Order::Sequential,
                    OrderDto::Random { seed } => wl::Order::Random { seed },
                },
            },
            Self::Accept(a) => wl::Step::Accept {
                gpa: Gpa(a.gpa.0),
                len: a.len.0,
                level: match a.level {
                    LevelDto::L4K => PageLevel::L4K,
                    LevelDto::L2M => PageLevel::L2M,
                },
            },
            Self::Convert(c) => wl::Step::Convert {
                gpa: Gpa(c.gpa.0),
                len: c.len.0,
                to_shared: c.to_shared,
            },
            Self::Print(p) => {
                if p.line.len() > MAX_PRINT_LINE {
                    return Err(ApiError::bad_request(format!(
                        "a print line has at most {MAX_PRINT_LINE} bytes"
                    ))
                    .with_field(field("print", "line")));
                }
                wl::Step::Print { line: p.line }
            }
            Self::ExtendRtmr(e) => {
                if e.index > 3 {
                    return Err(ApiError::bad_request("RTMR index must be 0, 1, 2 or 3")
                        .with_field(field("extend_rtmr", "index")));
                }
                wl::Step::ExtendRtmr {
                    index: e.index,
                    digest: e.digest.0,
                }
            }
            Self::Halt => wl::Step::Halt,
            Self::ReportFatalError(f) => wl::Step::ReportFatalError { code: f.code.0 },
            Self::Shutdown => wl::Step::Shutdown,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------

/// One TDVF section of an image.
#[derive(Debug, Clone, Serialize)]
pub struct SectionDto {
    /// Section type (`BFV`, `CFV`, `TD_HOB`, `TempMem`, ...).
    pub kind: String,
    /// Guest-physical base.
    pub gpa: u64,
    /// Bytes in guest memory.
    pub memory_size: u64,
    /// Bytes from the file.
    pub raw_size: u64,
    /// Measured into MRTD with MR.EXTEND.
    pub extend: bool,
    /// Added later with PAGE.AUG instead of at build.
    pub aug: bool,
}

/// An image resource.
#[derive(Debug, Clone, Serialize)]
pub struct ImageDto {
    /// Name.
    pub name: String,
    /// File size in bytes.
    pub size: u64,
    /// SHA-384 of the file, hex.
    pub sha384: String,
    /// `firmware`, `kernel`, `initrd` or `disk`.
    pub kind: &'static str,
    /// TDVF sections (firmware; empty otherwise).
    pub sections: Vec<SectionDto>,
    /// MRTD a TD built from this image gets, hex (firmware; `null` otherwise).
    pub expected_mrtd: Option<String>,
    /// TDs built from it that are not destroyed.
    pub in_use_by: u32,
}

impl From<&ImageInfo> for ImageDto {
    fn from(info: &ImageInfo) -> Self {
        Self {
            name: info.name.clone(),
            size: info.size,
            sha384: hex(&info.sha384),
            kind: info.kind.as_str(),
            sections: info
                .sections
                .iter()
                .map(|s| SectionDto {
                    kind: s.kind.clone(),
                    gpa: s.gpa,
                    memory_size: s.memory_size,
                    raw_size: s.raw_size,
                    extend: s.extend,
                    aug: s.aug,
                })
                .collect(),
            expected_mrtd: info.expected_mrtd.as_ref().map(|m| hex(m)),
            in_use_by: info.in_use_by,
        }
    }
}

/// Build progress of a TD being built.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProgressDto {
    /// Pages added and measured so far.
    pub pages_added: u64,
    /// Pages to add in total.
    pub pages_total: u64,
}

/// Private pages mapped, by size.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MappedDto {
    /// 4 KiB pages.
    #[serde(rename = "4k")]
    pub pages_4k: u64,
    /// 2 MiB pages.
    #[serde(rename = "2m")]
    pub pages_2m: u64,
    /// 1 GiB pages.
    #[serde(rename = "1g")]
    pub pages_1g: u64,
}

/// Per-TD counters.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CountersDto {
    /// TD exits, all reasons.
    pub exits: u64,
    /// EPT-violation exits.
    pub ept_violations: u64,
    /// Private faults resolved.
    pub faults: u64,
    /// BUSY retries.
    pub busy_retries: u64,
    /// MapGPA conversions.
    pub conversions: u64,
    /// 2 MiB pages demoted.
    pub demotions: u64,
    /// Pages leaked after unrecoverable errors.
    pub leaked_pages: u64,
    /// Console bytes written by the guest.
    pub console_bytes: u64,
}

/// A TD resource.
#[derive(Debug, Clone, Serialize)]
pub struct TdDto {
    /// Identifier (used in paths).
    pub id: u64,
    /// Name.
    pub name: String,
    /// Image name.
    pub image: String,
    /// Lifecycle state.
    pub state: &'static str,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// TD attributes, as `0x...`.
    pub attributes: String,
    /// Whether 2 MiB mappings are allowed.
    pub huge_pages: bool,
    /// Build progress while building, else `null`.
    pub build_progress: Option<ProgressDto>,
    /// Private pages mapped by size.
    pub mapped_pages: MappedDto,
    /// Counters.
    pub counters: CountersDto,
    /// Why the TD is failed or bugged, else `null`.
    pub reason: Option<String>,
    /// Milliseconds since host start at creation.
    pub created_ms: u64,
    /// What runs its vCPUs: `tdx`, `svm`, `declared-workload` or `none`.
    pub engine: &'static str,
}

impl From<&TdInfo> for TdDto {
    fn from(td: &TdInfo) -> Self {
        let c = &td.counters;
        Self {
            id: td.id.0,
            name: td.name.clone(),
            image: td.image.clone(),
            state: td.state.name(),
            vcpus: td.vcpus,
            memory_mib: td.memory_mib,
            attributes: format!("{:#018x}", td.attributes),
            huge_pages: td.huge_pages,
            build_progress: td
                .build_progress
                .map(|(pages_added, pages_total)| ProgressDto {
                    pages_added,
                    pages_total,
                }),
            mapped_pages: MappedDto {
                pages_4k: td.mapped.pages_4k,
                pages_2m: td.mapped.pages_2m,
                pages_1g: td.mapped.pages_1g,
            },
            counters: CountersDto {
                exits: c.exits,
                ept_violations: c.ept_violations,
                faults: c.faults,
                busy_retries: c.busy_retries,
                conversions: c.conversions,
                demotions: c.demotions,
                leaked_pages: c.leaked_pages,
                console_bytes: c.console_bytes,
            },
            reason: td.reason.clone(),
            engine: td.engine.as_str(),
            created_ms: td.created_ms,
        }
    }
}

/// Body of `GET /v1/tds/{id}/measurement`.
#[derive(Debug, Clone, Serialize)]
pub struct MeasurementDto {
    /// TD id.
    pub id: u64,
    /// MRTD.
    pub mrtd: Hex48,
    /// RTMR0..3.
    pub rtmr: [Hex48; 4],
    /// MRCONFIGID.
    pub mrconfigid: Hex48,
    /// MROWNER.
    pub mrowner: Hex48,
    /// MROWNERCONFIG.
    pub mrownerconfig: Hex48,
    /// Whether MR.FINALIZE has run (MRTD is final).
    pub finalized: bool,
}

impl MeasurementDto {
    /// The registers of TD `id`.
    pub fn new(id: u64, m: &Measurement) -> Self {
        Self {
            id,
            mrtd: Hex48(m.mrtd),
            rtmr: m.rtmr.map(Hex48),
            mrconfigid: Hex48(m.mrconfigid),
            mrowner: Hex48(m.mrowner),
            mrownerconfig: Hex48(m.mrownerconfig),
            finalized: m.finalized,
        }
    }
}

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct EventDto {
    /// Strictly increasing id.
    pub id: u64,
    /// Milliseconds since host start.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKindDto,
}

/// What an event is about, tagged by `"type"`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKindDto {
    /// A TD changed state.
    TdState {
        /// TD id.
        td_id: u64,
        /// TD name.
        name: String,
        /// Previous state.
        from: &'static str,
        /// New state.
        to: &'static str,
    },
    /// A TD was marked bugged.
    TdBugged {
        /// TD id.
        td_id: u64,
        /// Why.
        reason: String,
    },
    /// Host-level event.
    Host {
        /// What happened.
        message: String,
    },
}

impl From<&Event> for EventDto {
    fn from(event: &Event) -> Self {
        let kind = match &event.kind {
            EventKind::TdState { id, name, from, to } => EventKindDto::TdState {
                td_id: id.0,
                name: name.clone(),
                from: from.name(),
                to: to.name(),
            },
            EventKind::TdBugged { id, reason } => EventKindDto::TdBugged {
                td_id: id.0,
                reason: reason.clone(),
            },
            EventKind::Host { message } => EventKindDto::Host {
                message: message.clone(),
            },
        };
        Self {
            id: event.id,
            at_ms: event.at_ms,
            kind,
        }
    }
}

/// Body of `GET /v1/events`.
#[derive(Debug, Clone, Serialize)]
pub struct EventsDto {
    /// Events with `id > since`, oldest first.
    pub events: Vec<EventDto>,
    /// The id to pass as `since` next (the last event returned, or `since` when none).
    pub next_since: u64,
    /// The newest event id in the log.
    pub last_event_id: u64,
}

/// The console chunk's text (bytes that are not UTF-8 become U+FFFD) and offsets.
pub fn console_text(chunk: &ConsoleChunk) -> String {
    String::from_utf8_lossy(&chunk.data).into_owned()
}

/// `GET /v1/host`: the TDX part.
#[derive(Debug, Clone, Serialize)]
pub struct TdxHostDto {
    /// `hardware` or `emulated`.
    pub module_kind: &'static str,
    /// What runs TDs without a declared workload: `tdx`, `svm` or `none`.
    pub guest_engine: &'static str,
    /// Module version.
    pub module_version: String,
    /// Most vCPUs per TD.
    pub max_vcpus_per_td: u32,
    /// Logical CPUs initialized.
    pub cpus: u32,
    /// vCPU runners.
    pub runners: u32,
    /// TD memory pool size, bytes.
    pub memory_total_bytes: u64,
    /// TD memory pool free, bytes.
    pub memory_free_bytes: u64,
    /// HKIDs usable by TDs.
    pub hkids_total: u32,
    /// HKIDs free.
    pub hkids_free: u32,
    /// TD counts by state (every state present).
    pub tds_by_state: BTreeMap<&'static str, u32>,
}

/// One bring-up step in `GET /v1/host` (`bringup`).
#[derive(Debug, Clone, Serialize)]
pub struct BringupStepDto<'a> {
    /// The step's name ([`tdx_runtime::host::BringupStage::as_str`]).
    pub step: &'static str,
    /// `ok`, `failed` or `skipped`.
    pub status: &'static str,
    /// What was found or done, or why it failed.
    pub detail: &'a str,
}

impl<'a> From<&'a tdx_runtime::host::BringupStep> for BringupStepDto<'a> {
    fn from(s: &'a tdx_runtime::host::BringupStep) -> Self {
        Self {
            step: s.step.as_str(),
            status: s.status.as_str(),
            detail: &s.detail,
        }
    }
}

impl From<&tdx_runtime::host::HostInfo> for TdxHostDto {
    fn from(info: &tdx_runtime::host::HostInfo) -> Self {
        Self {
            module_kind: info.module_kind,
            guest_engine: info.guest_engine,
            module_version: info.module_version.to_owned(),
            max_vcpus_per_td: info.max_vcpus_per_td,
            cpus: info.cpus,
            runners: info.runners,
            memory_total_bytes: info.memory_total,
            memory_free_bytes: info.memory_free,
            hkids_total: info.hkids_total,
            hkids_free: info.hkids_free,
            tds_by_state: info
                .tds_by_state
                .iter()
                .map(|(state, count)| (state.name(), *count))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(json: &str) -> Result<TdSpec, ApiError> {
        parse_strict_json::<CreateTdRequest>(json.as_bytes(), CREATE_TD_ARRAYS)?.into_spec()
    }

    #[test]
    fn arrays_in_place_of_objects_are_refused() {
        let err = create(r#"["a","ovmf",1,64,null,false,null]"#).unwrap_err();
        assert!(err.message.contains("JSON object"), "{}", err.message);
        let err = create(&format!("{{{BASE},\"workload\":[[\"halt\"]]}}")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("workload"));
        let err = create(&format!(
            "{{{BASE},\"workload\":{{\"steps\":[{{\"print\":[\"x\"]}}]}}}}"
        ))
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("workload.steps[0].print"));
        assert!(create(&format!("{{{BASE},\"workload\":{{\"steps\":[\"halt\"]}}}}")).is_ok());
    }

    const BASE: &str = r#""name":"a","image":"ovmf","vcpus":1,"memory_mib":64"#;

    #[test]
    fn minimal_create_gets_defaults() {
        let spec = create(&format!("{{{BASE}}}")).unwrap();
        assert_eq!(spec.name, "a");
        assert_eq!(spec.attributes, 0);
        assert!(spec.huge_pages);
        let spec = create(&format!("{{{BASE},\"huge_pages\":false}}")).unwrap();
        assert!(!spec.huge_pages);
        assert!(spec.workload.is_none());
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let err = create(&format!("{{{BASE},\"colour\":1}}")).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("colour"));
        let err = create(&format!(
            "{{{BASE},\"workload\":{{\"steps\":[\"halt\",{{\"touch\":{{\"gpa\":0,\"len\":1,\"access\":\"read\",\"x\":0}}}}]}}}}"
        ))
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("workload.steps[1].touch.x"));
    }

    #[test]
    fn type_errors_and_missing_fields_name_the_field() {
        let err = create(r#"{"name":"a","image":"i","vcpus":"two","memory_mib":1}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("vcpus"));
        let err = create(r#"{"name":"a","image":"i","vcpus":1}"#).unwrap_err();
        assert!(err.message.contains("memory_mib"), "{}", err.message);
        let err = create(&format!(
            "{{{BASE},\"workload\":{{\"steps\":[{{\"accept\":{{\"gpa\":\"0xZZ\",\"len\":1,\"level\":\"4k\"}}}}]}}}}"
        ))
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("workload.steps[0].accept.gpa"));
    }

    #[test]
    fn syntax_errors_have_no_field() {
        for body in ["", "{", "[1]x", "{\"name\":}", "null"] {
            let err = create(body).unwrap_err();
            assert_eq!(err.status.as_u16(), 400, "{body}");
        }
        let err = create(&format!("{{{BASE}}} trailing")).unwrap_err();
        assert!(err.field.is_none());
    }

    #[test]
    fn workload_steps_translate() {
        let digest = "ab".repeat(48);
        let spec = create(&format!(
            "{{{BASE},\"attributes\":\"0x10000000\",\"workload\":{{\"steps\":[\
             {{\"touch\":{{\"gpa\":\"0x1000\",\"len\":8192,\"access\":\"write\",\"order\":{{\"random\":{{\"seed\":7}}}}}}}},\
             {{\"accept\":{{\"gpa\":0,\"len\":4096,\"level\":\"2m\"}}}},\
             {{\"convert\":{{\"gpa\":0,\"len\":4096,\"to_shared\":true}}}},\
             {{\"print\":{{\"line\":\"hi\"}}}},\
             {{\"extend_rtmr\":{{\"index\":2,\"digest\":\"{digest}\"}}}},\
             \"halt\",{{\"report_fatal_error\":{{\"code\":5}}}},\"shutdown\"]}}}}"
        ))
        .unwrap();
        assert_eq!(spec.attributes, 1 << 28);
        let program = spec.workload.unwrap();
        let steps = &program.downcast::<wl::Workload>().unwrap().steps;
        assert_eq!(steps.len(), 8);
        assert_eq!(
            steps[0],
            wl::Step::Touch {
                gpa: Gpa(0x1000),
                len: 8192,
                access: wl::Access::Write,
                order: wl::Order::Random { seed: 7 }
            }
        );
        assert_eq!(
            steps[4],
            wl::Step::ExtendRtmr {
                index: 2,
                digest: [0xab; 48]
            }
        );
        assert_eq!(steps[5], wl::Step::Halt);
    }

    #[test]
    fn semantic_step_errors_name_the_field() {
        let err = create(&format!(
            "{{{BASE},\"workload\":{{\"steps\":[\"halt\",{{\"extend_rtmr\":{{\"index\":4,\"digest\":\"{}\"}}}}]}}}}",
            "00".repeat(48)
        ))
        .unwrap_err();
        assert_eq!(
            err.field.as_deref(),
            Some("workload.steps[1].extend_rtmr.index")
        );
        let err = create(&format!(
            "{{{BASE},\"workload\":{{\"steps\":[{{\"extend_rtmr\":{{\"index\":1,\"digest\":\"abc\"}}}}]}}}}"
        ))
        .unwrap_err();
        assert_eq!(
            err.field.as_deref(),
            Some("workload.steps[0].extend_rtmr.digest")
        );
    }

    #[test]
    fn stop_defaults_and_limits() {
        let mode = parse_json::<StopRequest>(b"{}")
            .unwrap()
            .into_mode()
            .unwrap();
        assert_eq!(mode.timeout_ms, DEFAULT_STOP_TIMEOUT_MS);
        assert!(!mode.force);
        let err = parse_json::<StopRequest>(b"{\"timeout_ms\":600001}")
            .unwrap()
            .into_mode()
            .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("timeout_ms"));
        let err = parse_json::<StopRequest>(b"{\"forse\":true}").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("forse"));
    }

    #[test]
    fn flex_u64_accepts_hex_and_decimal_strings() {
        for (json, value) in [
            ("5", 5),
            ("\"0x1F\"", 31),
            ("\"31\"", 31),
            ("\"0xffffffffffffffff\"", u64::MAX),
        ] {
            assert_eq!(serde_json::from_str::<FlexU64>(json).unwrap().0, value);
        }
        for json in [
            "-1",
            "1.5",
            "\"0x\"",
            "\"0x10000000000000000\"",
            "\"x\"",
            "true",
        ] {
            assert!(serde_json::from_str::<FlexU64>(json).is_err(), "{json}");
        }
    }

    #[test]
    fn hex_round_trips() {
        let bytes: [u8; 48] = core::array::from_fn(|i| i as u8 * 5);
        let text = hex(&bytes);
        assert_eq!(decode_hex48(&text), Some(bytes));
        assert_eq!(decode_hex48(&text.to_uppercase()), Some(bytes));
        assert_eq!(decode_hex48(&text[1..]), None);
        assert_eq!(decode_hex48(&"g".repeat(96)), None);
    }
}
