//! Brings the TD runtime up at boot: reserve the TD memory, detect TDX, and on a TDX machine
//! put every logical CPU in VMX root operation and drive the machine's TDX module (else run
//! the software module over the reserved range), then the vCPU runners on the application
//! processors, and say which module runs. Each step is recorded
//! ([`BringupLog`]) for `GET /v1/host`, also when bring-up fails.
//!
//! TD memory size: `td_memory` from the configuration, or by default most of the free RAM
//! (what the firmware's memory map shows as conventional memory) minus a margin for the
//! appliance itself (a quarter, at least 128 MiB). The heap every CPU allocates from is
//! reserved at the same time (16 MiB plus 1/32 of the TD memory: S-EPT mirrors and the
//! software module's own tables).

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use appliance::config::{ApplianceConfig, TdMemory};
use log::{info, warn};
use tdx_abi::Hpa;
use tdx_abi::phys::PhysMemory;
use tdx_emu::{EmuConfig, EmuLimits, EmulatedModule};
use tdx_runtime::host::{
    BringupLog, BringupStage, BringupStep, Host, HostConfig, HostModule, Platform, PlatformMemory,
};
use uefi::boot::{self, AllocateType, MemoryType};
use uefi::mem::memory_map::MemoryMap;

use crate::platform::{heap, mp::MpPlatform, phys::ReservedMemory, tdx_detect, tdx_hardware};

const MIB: u64 = 1 << 20;
const M2: u64 = 2 * MIB;
/// Smallest TD memory worth bringing the runtime up for.
const MIN_TD_MEMORY: u64 = 64 * MIB;
/// Heap set aside per API connection for its HTTP and TLS state beyond the socket buffers:
/// an 8 KiB request head, a pipelined backlog of small responses, TLS record buffers of
/// 16 KiB each way.
const CONNECTION_STATE_BYTES: u64 = 96 * 1024;

/// Free conventional memory in bytes, from the firmware's memory map.
fn free_memory() -> u64 {
    boot::memory_map(MemoryType::LOADER_DATA).map_or(0, |map| {
        map.entries()
            .filter(|d| d.ty == MemoryType::CONVENTIONAL)
            .map(|d| d.page_count * 4096)
            .sum()
    })
}

/// Reserves `bytes` of TD memory, 2 MiB aligned; returns `(base, size)`.
fn reserve(bytes: u64) -> Result<(u64, u64), String> {
    let pages = usize::try_from((bytes + M2) / 4096).map_err(|_| String::from("too large"))?;
    let base = boot::allocate_pages(AllocateType::AnyPages, MemoryType::LOADER_DATA, pages)
        .map_err(|e| {
            format!(
                "AllocatePages of {} MiB failed: {:?}",
                bytes / MIB,
                e.status()
            )
        })?;
    let start = base.as_ptr() as u64;
    let aligned = start.next_multiple_of(M2);
    Ok((aligned, bytes))
}

/// Why there is no TD host, with the bring-up steps up to the failure (and those not
/// reached), for `GET /v1/host`.
pub struct BringupFailure {
    /// What failed, for the log and the API's 503 answers.
    pub reason: String,
    /// Every step, in order.
    pub steps: Vec<BringupStep>,
}

/// Records `stage` as failed with `reason`, lists the steps not reached, and gives both back.
fn fail(mut log: BringupLog, stage: BringupStage, reason: String) -> BringupFailure {
    log.failed(stage, reason.clone());
    log.skip_remaining();
    BringupFailure {
        reason,
        steps: log.into_steps(),
    }
}

/// Brings the runtime up, recording each step; the error says why there is no TD host.
pub fn bring_up(config: &ApplianceConfig) -> Result<Host, BringupFailure> {
    let mut log = BringupLog::new();
    let free = free_memory();
    let td_bytes = match config.td_memory {
        TdMemory::Mib(mib) => mib * MIB,
        TdMemory::Auto => free.saturating_sub((free / 4).max(128 * MIB)),
    } / M2
        * M2;
    if td_bytes < MIN_TD_MEMORY {
        let reason = format!(
            "not enough memory for TDs ({} MiB free, {} MiB for TDs; need {} MiB)",
            free / MIB,
            td_bytes / MIB,
            MIN_TD_MEMORY / MIB
        );
        return Err(fail(log, BringupStage::TdMemory, reason));
    }
    // The heap also holds the API's connections: every socket's buffers, and per
    // connection the HTTP (and TLS) state, bounded by `CONNECTION_STATE_BYTES`.
    let network_bytes = config.server.max_buffer_memory() as u64
        + config.server.sanitized().max_sockets() as u64 * CONNECTION_STATE_BYTES;
    let heap_bytes = 16 * MIB + td_bytes / 32 + network_bytes.next_multiple_of(MIB);
    if let Err(e) = heap::init(heap_bytes as usize) {
        let reason = format!(
            "cannot reserve the {} MiB heap: {:?}",
            heap_bytes / MIB,
            e.status()
        );
        return Err(fail(log, BringupStage::Heap, reason));
    }
    log.ok(
        BringupStage::Heap,
        format!(
            "{} MiB heap ({} MiB for the network and API connections)",
            heap_bytes / MIB,
            network_bytes.div_ceil(MIB)
        ),
    );
    let (base, size) = match reserve(td_bytes) {
        Ok(r) => r,
        Err(reason) => return Err(fail(log, BringupStage::TdMemory, reason)),
    };
    info!(
        "TD memory: {} MiB at {base:#x} ({} MiB free at boot), heap {} MiB",
        size / MIB,
        free / MIB,
        heap_bytes / MIB
    );
    log.ok(
        BringupStage::TdMemory,
        format!(
            "{} MiB of TD memory at {base:#x} ({} MiB free at boot)",
            size / MIB,
            free / MIB
        ),
    );
    // SAFETY: `[base, base + size)` was just allocated with AllocatePages for the runtime
    // alone (inside the allocation, after 2 MiB alignment), is never freed, and firmware
    // identity-maps it.
    let phys: Arc<dyn PhysMemory> = Arc::new(unsafe { ReservedMemory::new(base, size) });
    // The wake-up interrupt first: the CPUs' resident loops halt between their work.
    if let Err(e) = crate::platform::wake::install() {
        warn!("runner CPUs spin when idle: no wake-up interrupt ({e:?})");
    }
    if let Err(e) = crate::platform::seam_fault::install() {
        warn!("a faulting SEAMCALL would hang this CPU: no #UD/#GP fixup handlers ({e:?})");
    }
    let platform = Arc::new(MpPlatform::new());
    let (status, detail) = platform.topology_step();
    log.record(BringupStage::CpuTopology, status, detail);
    let (module, hkid_start, num_hkids) = match tdx_detect::detect() {
        Ok(p) => {
            info!(
                "TDX hardware detected ({} KeyIDs from {}): using the TDX module",
                p.num_hkids, p.hkid_start
            );
            log.ok(
                BringupStage::TdxDetect,
                format!(
                    "TDX hardware: SEAMRR enabled, TME active, {} TDX KeyIDs from {}",
                    p.num_hkids, p.hkid_start
                ),
            );
            match tdx_hardware::enable_vmx_everywhere(&platform) {
                Ok(detail) => {
                    info!("{detail}");
                    log.ok(BringupStage::VmxOn, detail);
                }
                Err(reason) => return Err(fail(log, BringupStage::VmxOn, reason)),
            }
            // SAFETY: detection found SEAMRR enabled and TDX KeyIDs partitioned (the BIOS
            // loads the TDX module there), and every CPU is in VMX root operation; a module
            // that is missing after all answers VMfailInvalid, a fault comes back as
            // TDX_SEAMCALL_UD/GP, both typed errors of TDH.SYS.INIT.
            let seam = unsafe { tdx_hardware::RunnerSeamcall::new(p) };
            log.ok(
                BringupStage::Module,
                "the TDX module of this machine, through SEAMCALL",
            );
            (
                HostModule::Hardware(Arc::new(seam)),
                p.hkid_start,
                p.num_hkids,
            )
        }
        Err(why) => {
            warn!("no TDX hardware ({why}): using the EMULATED (software) TDX module");
            // One real SEAMCALL, which faults here: proves that a fault comes back as a
            // status (TDX_SEAMCALL_UD) instead of hanging the appliance.
            let probe = match crate::platform::seam_fault::probe() {
                Ok(found) => {
                    info!("{found}");
                    found
                }
                Err(odd) => {
                    warn!("{odd}");
                    odd
                }
            };
            log.failed(
                BringupStage::TdxDetect,
                format!("no TDX hardware: {why}; {probe}"),
            );
            log.skipped(BringupStage::VmxOn, "not needed: the software module runs");
            match emulated(platform.as_ref(), base, size, &phys) {
                Ok((module, engine)) => {
                    log.ok(
                        BringupStage::Module,
                        format!(
                            "the EMULATED (software) TDX module, as there is no usable TDX \
                             hardware; {engine}"
                        ),
                    );
                    (module, EMU_HKID_START, EMU_HKIDS)
                }
                Err(reason) => return Err(fail(log, BringupStage::Module, reason)),
            }
        }
    };
    let host_config = HostConfig {
        memory: PlatformMemory {
            pool_base: Hpa(base),
            pool_size: size,
            hkid_start,
            num_hkids,
        },
        ..HostConfig::default()
    };
    let host = Host::new_recorded(
        module,
        phys,
        platform.clone() as Arc<dyn Platform>,
        host_config,
        &mut log,
    )
    .map_err(|e| BringupFailure {
        reason: format!("TDX module bring-up failed: {e}"),
        steps: log.clone().into_steps(),
    })?;
    let info = host.info();
    info!(
        "TD host ready: {} module ({}), {} CPUs, {} vCPU runners, {} KeyIDs, {} MiB pool",
        info.module_kind,
        info.module_version,
        info.cpus,
        info.runners,
        info.hkids_total,
        info.memory_total / MIB
    );
    let (used, free_heap) = heap::usage();
    info!(
        "heap: {} KiB used, {} KiB free, at {:#x?}",
        used / 1024,
        free_heap / 1024,
        heap::range()
    );
    Ok(host)
}

/// First KeyID of the software module.
const EMU_HKID_START: u16 = 16;
/// KeyIDs of the software module (one is the global KeyID).
const EMU_HKIDS: u16 = 64;

/// The software module over the TD memory, and a sentence on what runs its vCPUs.
fn emulated(
    platform: &MpPlatform,
    base: u64,
    size: u64,
    phys: &Arc<dyn PhysMemory>,
) -> Result<(HostModule, &'static str), String> {
    let module = EmulatedModule::new(
        EmuConfig {
            phys_base: Hpa(base),
            phys_size: size,
            num_lps: platform.cpus(),
            num_packages: platform.packages(),
            hkid_start: EMU_HKID_START,
            num_hkids: EMU_HKIDS,
            hkid_shift: 46,
            limits: EmuLimits::default(),
        },
        phys.clone(),
    )
    .map_err(|e| format!("software TDX module: {e}"))?;
    let engine = match crate::platform::svm::SvmGuestCpu::new() {
        Some(cpu) => {
            info!("software TDX module: vCPUs run their own code on SVM with nested paging");
            module.attach_guest_cpu(Arc::new(cpu));
            "vCPUs run their own code on SVM with nested paging"
        }
        None => {
            warn!(
                "software TDX module: no SVM with nested paging on this CPU; vCPUs run declared \
                 workloads only"
            );
            "no SVM with nested paging on this CPU: vCPUs run declared workloads only"
        }
    };
    Ok((HostModule::Software(module.hooks()), engine))
}
