//! The record of the host's bring-up, step by step, so that an operator of a new server sees
//! where bring-up stopped and why (`GET /v1/host`, `bringup`).
//!
//! The steps follow the TDX module initialization sequence (Intel TDX Module 1.5 base
//! architecture specification, "TDX Module Lifecycle"; Linux
//! `arch/x86/virt/vmx/tdx/tdx.c` `init_tdx_module()`), preceded by what the platform does
//! before it (memory, CPU topology, TDX detection, the choice of module). The appliance
//! records its own steps into a [`BringupLog`] and hands it to [`super::Host::new_recorded`],
//! which records the module's steps; on failure the steps not reached are listed as
//! skipped.

use alloc::string::String;
use alloc::vec::Vec;

/// One bring-up step, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BringupStage {
    /// The appliance's heap (every CPU allocates from it).
    Heap,
    /// Sizing and reserving the TD memory.
    TdMemory,
    /// Logical CPUs and their packages (x2APIC IDs, CPUID leaf 0x1F/0xB; see
    /// [`crate::topology`]).
    CpuTopology,
    /// Whether the CPU, its MSRs and the firmware report usable TDX.
    TdxDetect,
    /// VMXON on every logical CPU, which the TDX module requires before any SEAMCALL (TDX
    /// hardware only).
    VmxOn,
    /// Which TDX module runs (hardware or the software module), and why.
    Module,
    /// The TD memory pool and KeyID range handed to the host.
    Pool,
    /// TDH.SYS.INIT.
    SysInit,
    /// TDH.SYS.LP.INIT on every logical CPU.
    LpInit,
    /// TDX_FEATURES0 has what the runtime needs: read first, so that a module too old for
    /// the runtime is named as such rather than failing on a field it does not have.
    Features,
    /// TDH.SYS.RD of the module's version, limits, CPUID configuration and CMRs.
    SysRd,
    /// The TDMR and its PAMT inside the CMRs, TDH.SYS.CONFIG with the global KeyID.
    TdmrConfig,
    /// WBINVD on every logical CPU before the key configuration.
    CacheWriteBack,
    /// TDH.SYS.KEY.CONFIG once per package.
    KeyConfig,
    /// TDH.SYS.TDMR.INIT until the TDMR is initialized.
    TdmrInit,
    /// The vCPU runners on the application processors.
    Runners,
}

impl BringupStage {
    /// Every stage, in order.
    pub const ALL: [BringupStage; 16] = [
        BringupStage::Heap,
        BringupStage::TdMemory,
        BringupStage::CpuTopology,
        BringupStage::TdxDetect,
        BringupStage::VmxOn,
        BringupStage::Module,
        BringupStage::Pool,
        BringupStage::SysInit,
        BringupStage::LpInit,
        BringupStage::Features,
        BringupStage::SysRd,
        BringupStage::TdmrConfig,
        BringupStage::CacheWriteBack,
        BringupStage::KeyConfig,
        BringupStage::TdmrInit,
        BringupStage::Runners,
    ];

    /// The API name.
    pub const fn as_str(self) -> &'static str {
        match self {
            BringupStage::Heap => "heap",
            BringupStage::TdMemory => "td-memory",
            BringupStage::CpuTopology => "cpu-topology",
            BringupStage::TdxDetect => "tdx-detect",
            BringupStage::VmxOn => "vmx-on",
            BringupStage::Module => "module",
            BringupStage::Pool => "pool",
            BringupStage::SysInit => "sys-init",
            BringupStage::LpInit => "lp-init",
            BringupStage::SysRd => "sys-rd",
            BringupStage::Features => "features",
            BringupStage::TdmrConfig => "tdmr-config",
            BringupStage::CacheWriteBack => "cache-wb",
            BringupStage::KeyConfig => "key-config",
            BringupStage::TdmrInit => "tdmr-init",
            BringupStage::Runners => "runners",
        }
    }
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepStatus {
    /// It did what it should.
    Ok,
    /// It failed. Bring-up stops at a failed step, except where the platform recovers (no
    /// TDX hardware detected: the software module runs instead).
    Failed,
    /// It did not run: not needed on this platform, or not reached after a failure.
    Skipped,
}

impl StepStatus {
    /// The API name.
    pub const fn as_str(self) -> &'static str {
        match self {
            StepStatus::Ok => "ok",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        }
    }
}

/// One recorded step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BringupStep {
    /// Which step.
    pub step: BringupStage,
    /// How it ended.
    pub status: StepStatus,
    /// A sentence for the operator: what was found or done, or why it failed (with the TDX
    /// status name for a SEAMCALL).
    pub detail: String,
}

/// What the detail of a step not reached says.
pub const NOT_REACHED: &str = "not reached: an earlier step failed";

/// The steps recorded so far, in the order they ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BringupLog {
    steps: Vec<BringupStep>,
}

impl BringupLog {
    /// An empty log.
    pub fn new() -> BringupLog {
        BringupLog::default()
    }

    /// Records `step` with `status` and `detail`.
    pub fn record(&mut self, step: BringupStage, status: StepStatus, detail: impl Into<String>) {
        self.steps.push(BringupStep {
            step,
            status,
            detail: detail.into(),
        });
    }

    /// Records a step that succeeded.
    pub fn ok(&mut self, step: BringupStage, detail: impl Into<String>) {
        self.record(step, StepStatus::Ok, detail);
    }

    /// Records a step that failed.
    pub fn failed(&mut self, step: BringupStage, detail: impl Into<String>) {
        self.record(step, StepStatus::Failed, detail);
    }

    /// Records a step that did not run.
    pub fn skipped(&mut self, step: BringupStage, detail: impl Into<String>) {
        self.record(step, StepStatus::Skipped, detail);
    }

    /// Lists every stage after the furthest one recorded as skipped ([`NOT_REACHED`]): call
    /// after a failure that ends bring-up.
    pub fn skip_remaining(&mut self) {
        let furthest = self.steps.iter().map(|s| s.step).max();
        for stage in BringupStage::ALL {
            if furthest.is_none_or(|f| stage > f) {
                self.skipped(stage, NOT_REACHED);
            }
        }
    }

    /// The steps, in the order they were recorded.
    pub fn steps(&self) -> &[BringupStep] {
        &self.steps
    }

    /// The steps, taken out of the log.
    pub fn into_steps(self) -> Vec<BringupStep> {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_remaining_lists_the_stages_after_the_furthest_one() {
        let mut log = BringupLog::new();
        log.failed(BringupStage::TdMemory, "not enough memory");
        log.skip_remaining();
        let names: Vec<&str> = log.steps().iter().map(|s| s.step.as_str()).collect();
        assert_eq!(names.len(), BringupStage::ALL.len() - 1, "heap never ran");
        assert_eq!(names[..3], ["td-memory", "cpu-topology", "tdx-detect"]);
        assert!(
            log.steps()[1..]
                .iter()
                .all(|s| s.status == StepStatus::Skipped && s.detail == NOT_REACHED)
        );
        let mut all_ok = BringupLog::new();
        all_ok.ok(BringupStage::Runners, "3 runners");
        all_ok.skip_remaining();
        assert_eq!(all_ok.steps().len(), 1);
    }

    #[test]
    fn stage_names_are_unique_and_in_order() {
        for (i, s) in BringupStage::ALL.iter().enumerate() {
            assert!(
                BringupStage::ALL[..i]
                    .iter()
                    .all(|o| o < s && o.as_str() != s.as_str())
            );
        }
    }
}
