//! TDX module bring-up (Intel TDX Module 1.5 ABI specification; Linux
//! `arch/x86/virt/vmx/tdx/tdx.c` `init_tdx_module()`): TDH.SYS.INIT, TDH.SYS.LP.INIT on
//! every logical CPU, the module's limits through TDH.SYS.RD, one TDMR covering the TD memory
//! pool built from the CMRs with its PAMT allocated from the pool to the sizing rules,
//! TDH.SYS.CONFIG, TDH.SYS.KEY.CONFIG once per package, TDH.SYS.TDMR.INIT until done.
//!
//! TDMR shape: one TDMR from the pool base rounded down to 1 GiB to the pool end rounded up;
//! everything in it that is not pool memory (head and tail padding, which may include
//! non-CMR memory) and the PAMT block itself are reserved areas, so only pool pages are ever
//! TDX memory. One TDMR needs at most three reserved areas, well under the module's limit.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::seam::{Counted, RetryBusy, SeamcallCounters};
use super::steps::{BringupLog, BringupStage};
use super::{HostError, HostModule, Platform, PlatformError};
use crate::pool::{MemoryPool, MemoryUse};
use tdx_abi::metadata::sys as f;
use tdx_abi::pamt::{PamtPageSize, pamt_array_size};
use tdx_abi::phys::PhysMemory;
use tdx_abi::seamcall::{SeamError, Seamcall, TdxModule};
use tdx_abi::{Hkid, Hpa, Leaf, PAGE_SIZE_4K};

/// TDMR base/size alignment (module 1.5).
pub(crate) const TDMR_ALIGN: u64 = 1 << 30;
/// Bytes of one TDMR_INFO structure.
const TDMR_INFO_SIZE: usize = 512;

/// What TDH.SYS.RD told us about the module.
#[derive(Clone, Debug, Default)]
pub(crate) struct ModuleLimits {
    pub(crate) version: String,
    pub(crate) max_vcpus_per_td: u32,
    pub(crate) tdcs_pages: u64,
    pub(crate) tdvps_pages: u64,
    pub(crate) attributes_fixed0: u64,
    pub(crate) attributes_fixed1: u64,
    pub(crate) xfam_fixed0: u64,
    pub(crate) xfam_fixed1: u64,
    /// Configurable CPUID leaves (`leaf | subleaf << 32`) and their `[EAX, EBX, ECX, EDX]`
    /// configurable-bit masks, in TD_PARAMS slot order.
    pub(crate) cpuid_config: Vec<(u64, [u32; 4])>,
    pub(crate) max_tdmrs: u64,
    pub(crate) max_reserved_per_tdmr: u64,
    pub(crate) cmrs: Vec<(u64, u64)>,
}

/// A SEAMCALL on one logical CPU failed, or the platform could not run it there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CpuCallError {
    Seam(SeamError),
    Platform(PlatformError),
}

impl From<CpuCallError> for HostError {
    fn from(e: CpuCallError) -> HostError {
        match e {
            CpuCallError::Seam(s) => HostError::Module(s),
            // The module could not even be reached: report it as a module failure of the
            // leaf's class; the log has the platform error.
            CpuCallError::Platform(p) => {
                log::error!("host: platform could not run a SEAMCALL: {p}");
                HostError::Module(SeamError {
                    leaf: Leaf::SysLpInit,
                    status: tdx_abi::TdxStatus::OPERAND_INVALID,
                    rcx: 0,
                    rdx: 0,
                })
            }
        }
    }
}

/// A typed SEAMCALL sequence to run on one logical CPU: it gets that CPU's SEAMCALL handle
/// (BUSY already retried) and issues typed wrappers on it.
pub(crate) type CpuOp<'a, T> = &'a (dyn Fn(&dyn Seamcall) -> Result<T, SeamError> + Sync);

/// Runs SEAMCALLs on a chosen logical CPU before the runner loops occupy the CPUs.
pub(crate) struct CpuCaller {
    pub(crate) module: HostModule,
    pub(crate) platform: Arc<dyn Platform>,
    pub(crate) counters: Arc<SeamcallCounters>,
}

impl CpuCaller {
    /// The counted SEAMCALL handle of the main CPU (CPU 0).
    pub(crate) fn main(&self) -> Option<Arc<dyn Seamcall>> {
        self.for_cpu(0, self.counters.clone())
    }

    /// A SEAMCALL handle for code that runs on `cpu` itself (a runner loop), counting into
    /// `counters`.
    pub(crate) fn for_cpu(
        &self,
        cpu: u32,
        counters: Arc<SeamcallCounters>,
    ) -> Option<Arc<dyn Seamcall>> {
        let inner = self.module.seamcall_on(cpu)?;
        Some(Arc::new(Counted { counters, inner }))
    }

    /// Runs `op` with the SEAMCALL handle of logical CPU `cpu` and waits for it: on the CPU
    /// itself for the hardware module (the module takes the executing CPU as the logical
    /// processor), through that processor's handle for a software module.
    pub(crate) fn on_cpu<T: Send>(&self, cpu: u32, op: CpuOp<'_, T>) -> Result<T, CpuCallError> {
        let handle = self
            .for_cpu(cpu, self.counters.clone())
            .ok_or(CpuCallError::Platform(PlatformError::NoSuchCpu(cpu)))?;
        let here = || op(&RetryBusy(&*handle)).map_err(CpuCallError::Seam);
        if cpu == 0 || matches!(self.module, HostModule::Software(_)) {
            return here();
        }
        let result = spin::Mutex::new(None);
        self.platform
            .run_on_cpu(cpu, &|| {
                *result.lock() = Some(here());
            })
            .map_err(CpuCallError::Platform)?;
        let out = result.lock().take();
        out.unwrap_or(Err(CpuCallError::Platform(PlatformError::NoSuchCpu(cpu))))
    }

    /// One logical CPU per package (the lowest-numbered), CPU 0's package first.
    pub(crate) fn one_cpu_per_package(&self) -> Vec<u32> {
        let mut seen: Vec<u32> = Vec::new();
        let mut cpus = Vec::new();
        for cpu in 0..self.platform.cpus() {
            let pkg = self.platform.package_of(cpu);
            if !seen.contains(&pkg) {
                seen.push(pkg);
                cpus.push(cpu);
            }
        }
        cpus
    }
}

/// The result of bring-up.
pub(crate) struct BroughtUp {
    pub(crate) limits: ModuleLimits,
    pub(crate) global_hkid: Hkid,
    /// The PAMT block (kept allocated for the life of the host).
    pub(crate) pamt: (Hpa, u64),
}

fn sys_rd(m: &dyn Seamcall, field: u64) -> Result<u64, SeamError> {
    m.sys_rd(field)
}

/// Reads the module limits the runtime needs.
pub(crate) fn read_limits(m: &dyn Seamcall) -> Result<ModuleLimits, SeamError> {
    let version = alloc::format!(
        "{} {}.{}.{}",
        match m.kind() {
            tdx_abi::seamcall::ModuleKind::Hardware => "TDX module",
            tdx_abi::seamcall::ModuleKind::Emulated => "emulated",
        },
        sys_rd(m, f::MAJOR_VERSION)?,
        sys_rd(m, f::MINOR_VERSION)?,
        sys_rd(m, f::UPDATE_VERSION)?
    );
    let ncpuid = sys_rd(m, f::NUM_CPUID_CONFIG)?.min(48);
    let mut cpuid_config = Vec::new();
    for i in 0..ncpuid {
        let leaf = sys_rd(m, f::CPUID_CONFIG_LEAVES + i)?;
        let lo = sys_rd(m, f::CPUID_CONFIG_VALUES + 2 * i)?;
        let hi = sys_rd(m, f::CPUID_CONFIG_VALUES + 2 * i + 1)?;
        cpuid_config.push((
            leaf,
            [lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32],
        ));
    }
    let ncmrs = sys_rd(m, f::NUM_CMRS)?.min(32);
    let mut cmrs = Vec::new();
    for i in 0..ncmrs {
        let base = sys_rd(m, f::CMR_BASE + i)?;
        let size = sys_rd(m, f::CMR_SIZE + i)?;
        if size != 0 {
            cmrs.push((base, size));
        }
    }
    Ok(ModuleLimits {
        version,
        max_vcpus_per_td: u32::try_from(sys_rd(m, f::MAX_VCPUS_PER_TD)?).unwrap_or(u32::MAX),
        tdcs_pages: sys_rd(m, f::TDCS_BASE_SIZE)?.div_ceil(PAGE_SIZE_4K),
        tdvps_pages: sys_rd(m, f::TDVPS_BASE_SIZE)?.div_ceil(PAGE_SIZE_4K),
        attributes_fixed0: sys_rd(m, f::ATTRIBUTES_FIXED0)?,
        attributes_fixed1: sys_rd(m, f::ATTRIBUTES_FIXED1)?,
        xfam_fixed0: sys_rd(m, f::XFAM_FIXED0)?,
        xfam_fixed1: sys_rd(m, f::XFAM_FIXED1)?,
        cpuid_config,
        max_tdmrs: sys_rd(m, f::MAX_TDMRS)?,
        max_reserved_per_tdmr: sys_rd(m, f::MAX_RESERVED_PER_TDMR)?,
        cmrs,
    })
}

/// TDX_FEATURES0 bits the runtime relies on, with what to call them in an error.
const REQUIRED_FEATURES0: [(u64, &str); 1] = [(
    f::features0::TOPOLOGY_ENUM,
    "TOPOLOGY_ENUM (TDX_FEATURES0 bit 20: TDH.VP.INIT version 1)",
)];

/// Refuses a module without a feature the runtime uses: vCPUs are initialized with
/// TDH.VP.INIT version 1. (KVM also refuses modules without NO_RBP_MOD; this runtime does
/// not set it: its entry path keeps the host's RBP itself.)
pub(crate) fn check_features(features0: u64) -> Result<(), HostError> {
    match REQUIRED_FEATURES0
        .iter()
        .find(|(bit, _)| features0 & bit == 0)
    {
        Some((_, name)) => {
            log::error!("host: TDX_FEATURES0 is {features0:#x}; the module lacks {name}");
            Err(HostError::ModuleUnsupported(name))
        }
        None => Ok(()),
    }
}

/// One TDMR with its PAMT and reserved areas (absolute addresses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TdmrPlan {
    pub(crate) base: u64,
    pub(crate) size: u64,
    /// PAMT arrays for 1G, 2M, 4K pages: (base, size).
    pub(crate) pamt: [(u64, u64); 3],
    /// Reserved areas (absolute base, size), ascending.
    pub(crate) reserved: Vec<(u64, u64)>,
}

/// Bytes of PAMT a TDMR of `size` bytes needs (the three arrays, each 4 KiB rounded).
pub(crate) fn pamt_bytes(size: u64) -> u64 {
    pamt_array_size(size, PamtPageSize::S1G)
        + pamt_array_size(size, PamtPageSize::S2M)
        + pamt_array_size(size, PamtPageSize::S4K)
}

/// The TDMR covering `[pool_base, pool_base + pool_size)`.
pub(crate) fn tdmr_bounds(pool_base: u64, pool_size: u64) -> Option<(u64, u64)> {
    let end = pool_base.checked_add(pool_size)?;
    let base = pool_base & !(TDMR_ALIGN - 1);
    let tend = end.checked_next_multiple_of(TDMR_ALIGN)?;
    Some((base, tend - base))
}

/// Lays out the TDMR for the pool with the PAMT block at `pamt_base`.
pub(crate) fn plan_tdmr(pool_base: u64, pool_size: u64, pamt_base: u64) -> Option<TdmrPlan> {
    let (base, size) = tdmr_bounds(pool_base, pool_size)?;
    let p1g = pamt_array_size(size, PamtPageSize::S1G);
    let p2m = pamt_array_size(size, PamtPageSize::S2M);
    let p4k = pamt_array_size(size, PamtPageSize::S4K);
    let pamt = [
        (pamt_base, p1g),
        (pamt_base + p1g, p2m),
        (pamt_base + p1g + p2m, p4k),
    ];
    let pool_end = pool_base + pool_size;
    let mut reserved = Vec::new();
    if pool_base > base {
        reserved.push((base, pool_base - base));
    }
    reserved.push((pamt_base, p1g + p2m + p4k));
    if base + size > pool_end {
        reserved.push((pool_end, base + size - pool_end));
    }
    Some(TdmrPlan {
        base,
        size,
        pamt,
        reserved,
    })
}

/// The TDMR_INFO structure for `plan` (module 1.5 layout: base, size, PAMT 1G/2M/4K base and
/// size, then up to 16 reserved areas as (offset from base, size)).
pub(crate) fn tdmr_info_bytes(plan: &TdmrPlan) -> [u8; TDMR_INFO_SIZE] {
    let mut info = [0u8; TDMR_INFO_SIZE];
    let mut fields: Vec<u64> = alloc::vec![plan.base, plan.size];
    for (b, s) in plan.pamt {
        fields.push(b);
        fields.push(s);
    }
    for (b, s) in &plan.reserved {
        fields.push(b - plan.base);
        fields.push(*s);
    }
    for (i, v) in fields.iter().enumerate() {
        if let Some(dst) = info.get_mut(i * 8..i * 8 + 8) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
    }
    info
}

/// Records `result` of `stage` in `log`: failed with the error's text, or ok with `detail`
/// of the value.
fn step<T, E: core::fmt::Display>(
    log: &mut BringupLog,
    stage: BringupStage,
    result: Result<T, E>,
    detail: impl FnOnce(&T) -> String,
) -> Result<T, E> {
    match &result {
        Ok(v) => log.ok(stage, detail(v)),
        Err(e) => log.failed(stage, alloc::format!("{e}")),
    }
    result
}

impl core::fmt::Display for CpuCallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CpuCallError::Seam(e) => write!(f, "{e}"),
            CpuCallError::Platform(e) => write!(f, "{e}"),
        }
    }
}

/// Runs `op` on every CPU of `cpus`; on failure says which CPU (and of how many) failed.
fn on_each_cpu(
    caller: &CpuCaller,
    cpus: &[u32],
    op: CpuOp<'_, ()>,
) -> Result<(), (u32, CpuCallError)> {
    for &cpu in cpus {
        caller.on_cpu(cpu, op).map_err(|e| (cpu, e))?;
    }
    Ok(())
}

/// `CPU 0, 1, 2` (the first 16, then how many more).
fn cpu_list(cpus: &[u32]) -> String {
    let mut out = String::new();
    for (i, cpu) in cpus.iter().take(16).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&alloc::format!("{cpu}"));
    }
    if cpus.len() > 16 {
        out.push_str(&alloc::format!(" and {} more", cpus.len() - 16));
    }
    out
}

/// Runs the whole bring-up sequence, recording each step in `log`. On error the pool may
/// keep the PAMT block (the module is unusable anyway).
pub(crate) fn bring_up(
    cpus: &CpuCaller,
    pool: &MemoryPool,
    phys: &dyn PhysMemory,
    hkid_start: u16,
    log: &mut BringupLog,
) -> Result<BroughtUp, HostError> {
    use BringupStage as S;
    let Some(main) = cpus.main() else {
        log.failed(S::SysInit, "no SEAMCALL handle for the main CPU (CPU 0)");
        return Err(CpuCallError::Platform(PlatformError::NoSuchCpu(0)).into());
    };
    let main = RetryBusy(&*main);
    step(log, S::SysInit, main.sys_init(), |_| {
        String::from("TDH.SYS.INIT succeeded")
    })
    .map_err(HostError::Module)?;
    let all: Vec<u32> = (0..cpus.platform.cpus()).collect();
    let lp = on_each_cpu(cpus, &all, &|m| m.sys_lp_init());
    if let Err((cpu, e)) = lp {
        log.failed(
            S::LpInit,
            alloc::format!("logical CPU {cpu} of {}: {e}", all.len()),
        );
        return Err(e.into());
    }
    log.ok(
        S::LpInit,
        alloc::format!("TDH.SYS.LP.INIT on {} logical CPUs", all.len()),
    );
    let features0 = match main.sys_rd(f::TDX_FEATURES0) {
        Ok(v) => v,
        Err(e) => {
            log.failed(S::Features, alloc::format!("reading TDX_FEATURES0: {e}"));
            return Err(HostError::Module(e));
        }
    };
    step(log, S::Features, check_features(features0), |_| {
        alloc::format!("TDX_FEATURES0 {features0:#x}: every feature the runtime needs is present")
    })?;
    let limits = step(log, S::SysRd, read_limits(&main), |l| {
        alloc::format!(
            "{}: up to {} vCPUs per TD, {} CMRs, {} TDMRs of up to {} reserved areas, {} \
             configurable CPUID leaves",
            l.version,
            l.max_vcpus_per_td,
            l.cmrs.len(),
            l.max_tdmrs,
            l.max_reserved_per_tdmr,
            l.cpuid_config.len()
        )
    })
    .map_err(HostError::Module)?;
    let configured = step(
        log,
        S::TdmrConfig,
        configure_tdmr(&main, pool, phys, &limits, hkid_start),
        |(plan, pamt_base, pamt_pages)| {
            alloc::format!(
                "TDMR {:#x}+{:#x} with {} reserved areas, PAMT {} KiB at {:#x}, global KeyID \
                 {hkid_start} (TDH.SYS.CONFIG succeeded)",
                plan.base,
                plan.size,
                plan.reserved.len(),
                pamt_pages * 4,
                pamt_base.0
            )
        },
    )?;
    let (plan, pamt_base, pamt_pages) = configured;
    if matches!(cpus.module, HostModule::Hardware(_)) {
        step(
            log,
            S::CacheWriteBack,
            cpus.platform.write_back_caches(),
            |_| alloc::format!("WBINVD on {} logical CPUs", all.len()),
        )
        .map_err(|p| HostError::from(CpuCallError::Platform(p)))?;
    } else {
        log.skipped(
            S::CacheWriteBack,
            "the software module keeps no cache lines under TDX KeyIDs",
        );
    }
    let leaders = cpus.one_cpu_per_package();
    if let Err((cpu, e)) = on_each_cpu(cpus, &leaders, &|m| m.sys_key_config()) {
        log.failed(
            S::KeyConfig,
            alloc::format!(
                "package {} (logical CPU {cpu}) of {}: {e}",
                cpus.platform.package_of(cpu),
                leaders.len()
            ),
        );
        return Err(e.into());
    }
    log.ok(
        S::KeyConfig,
        alloc::format!(
            "TDH.SYS.KEY.CONFIG on {} packages (logical CPUs {})",
            leaders.len(),
            cpu_list(&leaders)
        ),
    );
    let end = plan.base + plan.size;
    // Each call initializes a chunk and returns the next address to initialize.
    let mut calls = 0u64;
    let init = loop {
        calls += 1;
        match main.sys_tdmr_init(Hpa(plan.base)) {
            Ok(next) if next.0 >= end => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e),
        }
    };
    step(log, S::TdmrInit, init, |_| {
        alloc::format!("TDMR initialized in {calls} TDH.SYS.TDMR.INIT calls")
    })
    .map_err(HostError::Module)?;
    log::info!(
        "host: TDX module initialized ({}): {} CPUs, TDMR {:#x}+{:#x}, PAMT {} KiB",
        limits.version,
        cpus.platform.cpus(),
        plan.base,
        plan.size,
        pamt_pages * 4
    );
    Ok(BroughtUp {
        limits,
        global_hkid: Hkid(hkid_start),
        pamt: (pamt_base, pamt_pages),
    })
}

/// Plans the TDMR over the pool inside the CMRs, allocates its PAMT from the pool and
/// configures the module with it and the global KeyID (TDH.SYS.CONFIG). Returns the plan
/// and the PAMT block (base, pages).
fn configure_tdmr(
    main: &dyn Seamcall,
    pool: &MemoryPool,
    phys: &dyn PhysMemory,
    limits: &ModuleLimits,
    hkid_start: u16,
) -> Result<(TdmrPlan, Hpa, u64), HostError> {
    let (pool_base, pool_size) = (pool.base().0, pool.size());
    let pool_in_cmrs = limits
        .cmrs
        .iter()
        .any(|&(b, s)| pool_base >= b && pool_base + pool_size <= b.saturating_add(s));
    if !pool_in_cmrs {
        log::error!(
            "host: TD memory {:#x}+{:#x} is not inside one CMR ({:x?})",
            pool_base,
            pool_size,
            limits.cmrs
        );
        return Err(HostError::InvalidSpec {
            field: "td_memory",
            reason: "the TD memory range is not convertible memory (outside the CMRs)",
        });
    }
    let (_, tdmr_size) = tdmr_bounds(pool_base, pool_size).ok_or(HostError::InvalidSpec {
        field: "td_memory",
        reason: "the TD memory range overflows",
    })?;
    let pamt_pages = pamt_bytes(tdmr_size) / PAGE_SIZE_4K;
    let pamt_base = pool
        .alloc_contiguous(pamt_pages, MemoryUse::Pamt)
        .map_err(|_| HostError::OutOfMemory)?;
    let plan = plan_tdmr(pool_base, pool_size, pamt_base.0).ok_or(HostError::InvalidSpec {
        field: "td_memory",
        reason: "the TD memory range overflows",
    })?;
    if plan.reserved.len() as u64 > limits.max_reserved_per_tdmr || limits.max_tdmrs == 0 {
        return Err(HostError::InvalidSpec {
            field: "td_memory",
            reason: "the module's TDMR limits are too small",
        });
    }
    // TDMR_INFO and the array of its address, in two scratch pages.
    let info_page = pool
        .alloc_4k(MemoryUse::Control)
        .map_err(|_| HostError::OutOfMemory)?;
    let array_page = match pool.alloc_4k(MemoryUse::Control) {
        Ok(p) => p,
        Err(_) => {
            let _ = pool.free_4k(info_page, MemoryUse::Control);
            return Err(HostError::OutOfMemory);
        }
    };
    phys.write(info_page, &tdmr_info_bytes(&plan));
    phys.write(array_page, &info_page.0.to_le_bytes());
    let config = main.sys_config(array_page, 1, Hkid(hkid_start));
    phys.zero(info_page, PAGE_SIZE_4K);
    phys.zero(array_page, PAGE_SIZE_4K);
    let _ = pool.free_4k(info_page, MemoryUse::Control);
    let _ = pool.free_4k(array_page, MemoryUse::Control);
    config.map_err(HostError::Module)?;
    Ok((plan, pamt_base, pamt_pages))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn modules_without_required_features_are_refused_by_name() {
        let all = f::features0::NO_RBP_MOD | f::features0::TOPOLOGY_ENUM;
        assert!(check_features(all).is_ok());
        assert!(check_features(all | 1).is_ok());
        assert!(
            check_features(f::features0::TOPOLOGY_ENUM).is_ok(),
            "NO_RBP_MOD is not needed"
        );
        let Err(HostError::ModuleUnsupported(name)) = check_features(f::features0::NO_RBP_MOD)
        else {
            panic!("accepted a module without TOPOLOGY_ENUM");
        };
        assert!(name.starts_with("TOPOLOGY_ENUM"));
    }

    #[test]
    fn tdmr_reserves_everything_but_the_pool() {
        // Pool 8 MiB .. 520 MiB inside a 1 GiB TDMR.
        let plan = plan_tdmr(8 << 20, 512 << 20, 8 << 20).unwrap();
        assert_eq!((plan.base, plan.size), (0, 1 << 30));
        let pamt = pamt_bytes(1 << 30);
        assert_eq!(pamt, 4096 + 8192 + (4 << 20));
        assert_eq!(
            plan.reserved,
            alloc::vec![
                (0, 8 << 20),
                (8 << 20, pamt),
                (520 << 20, (1 << 30) - (520 << 20))
            ]
        );
        let info = tdmr_info_bytes(&plan);
        let q = |k: usize| u64::from_le_bytes(info[k * 8..k * 8 + 8].try_into().unwrap());
        assert_eq!(q(1), 1 << 30);
        assert_eq!(q(7), 4 << 20); // 4K PAMT size
        assert_eq!((q(8), q(9)), (0, 8 << 20));
        assert_eq!((q(12), q(13)), (520 << 20, (1 << 30) - (520 << 20)));
        assert_eq!(q(14), 0);
        // A pool that is exactly a TDMR has only the PAMT reserved.
        let plan = plan_tdmr(1 << 30, 1 << 30, 1 << 30).unwrap();
        assert_eq!(plan.reserved.len(), 1);
        assert_eq!(tdmr_bounds(u64::MAX - 4095, 8192), None);
    }
}
