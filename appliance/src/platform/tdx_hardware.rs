//! The TDX module of this machine, when detection finds one: VMX root operation on every
//! logical CPU, and the `seamcall` handle the runtime drives, wrapped with what a runner CPU
//! does around TDH.VP.ENTER.
//!
//! * **VMXON everywhere.** The TDX module takes SEAMCALLs only from VMX root operation, on
//!   every logical CPU it counts (TDX module 1.5 base specification, "TDX Module Lifecycle";
//!   Linux enables VMX on all CPUs through KVM before `tdx_enable`). Each CPU gets its own
//!   VMXON region, allocated here on the main CPU and never freed, and executes VMXON through
//!   its resident loop ([`super::mp`]), where it stays: VMX is never turned off.
//! * **Around TDH.VP.ENTER** ([`RunnerSeamcall`]): the runner CPU's local APIC timer is
//!   armed as a time slice first, so a vCPU that never exits still leaves on the timer
//!   interrupt, as on the software module ([`super::svm`]). After the exit, an interrupt
//!   the processor acknowledged on the way out (the TDX module sets "acknowledge interrupt
//!   on exit") gets its end of interrupt here: only the appliance's own vectors (the time
//!   slice and wake-up, the posted-interrupt notification) reach a runner CPU, and their
//!   handlers do nothing else.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;

use tdx_abi::Leaf;
use tdx_abi::exit::acknowledged_vector;
use tdx_abi::seamcall::{ModuleKind, Regs, Seamcall};
use tdx_hw::vmx::{self, VmxonRegion};
use tdx_hw::{HardwareModule, TdxPlatform};
use tdx_runtime::host::Platform;

use super::mp::MpPlatform;

/// Every CPU is in VMX root operation ([`enable_vmx_everywhere`] succeeded).
static VMX_ON: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// INVEPT all-context on the calling CPU when the hardware module runs (a runner before it
/// enters a vCPU whose shared mappings shrank); nothing otherwise.
pub fn flush_guest_translations() {
    if VMX_ON.load(core::sync::atomic::Ordering::Acquire) {
        // SAFETY: VMX_ON is set only after VMXON succeeded on every CPU, which stays in VMX
        // root operation for good; CPL 0. A failure (VMfail) changes nothing to recover.
        let _ = unsafe { vmx::invept_all_contexts() };
    }
}

/// Executes VMXON on every logical CPU, in order, and stops at the first that fails. Returns
/// the bring-up detail, or which CPU failed and why.
pub fn enable_vmx_everywhere(platform: &MpPlatform) -> Result<String, String> {
    let cpus = platform.cpus();
    let mut revision = 0;
    for cpu in 0..cpus {
        // Never freed: the CPU stays in VMX root operation for the appliance's lifetime.
        let region: &'static mut VmxonRegion = Box::leak(Box::new(VmxonRegion::new()));
        let address = region as *mut VmxonRegion as usize;
        let outcome = spin::Mutex::new(None);
        platform
            .run_on_cpu(cpu, &|| {
                // SAFETY: `address` is this CPU's own 4 KiB-aligned VMXON region, leaked
                // above and used by nothing else; UEFI identity-maps memory, so the address
                // is also its physical address; the appliance runs at CPL 0.
                let result = unsafe {
                    vmx::enable_on_this_cpu(&mut *(address as *mut VmxonRegion), address as u64)
                };
                *outcome.lock() = Some(result);
            })
            .map_err(|e| format!("CPU {cpu}: {e}"))?;
        match outcome.lock().take() {
            Some(Ok(on)) => revision = on.revision_id,
            Some(Err(e)) => return Err(format!("VMXON on CPU {cpu} failed: {e}")),
            None => return Err(format!("CPU {cpu} did not run VMXON")),
        }
    }
    VMX_ON.store(true, core::sync::atomic::Ordering::Release);
    Ok(format!(
        "VMX root operation on all {cpus} logical CPUs (VMCS revision {revision:#x})"
    ))
}

/// The `seamcall` handle: the hardware module, with the runner CPU's part of TDH.VP.ENTER.
pub struct RunnerSeamcall {
    module: HardwareModule,
}

impl RunnerSeamcall {
    /// The handle for the module detection found.
    ///
    /// # Safety
    /// As [`HardwareModule::new`]: a TDX module is loaded, and (this appliance's addition)
    /// [`enable_vmx_everywhere`] succeeded, so every CPU that issues a SEAMCALL is in VMX root
    /// operation. A SEAMCALL that still faults comes back as a typed error through the
    /// #UD/#GP fixup ([`super::seam_fault`]).
    pub unsafe fn new(platform: TdxPlatform) -> RunnerSeamcall {
        RunnerSeamcall {
            // SAFETY: forwarded contract.
            module: unsafe { HardwareModule::new(platform) },
        }
    }
}

impl Seamcall for RunnerSeamcall {
    fn seamcall(&self, regs: &mut Regs) {
        let enter = regs.rax & 0xFFFF == Leaf::VpEnter as u64;
        if enter {
            super::wake::arm_slice(super::svm::GUEST_SLICE_US);
        }
        self.module.seamcall(regs);
        // (A SEAMCALL that faulted reads as TDX_SEAMCALL_UD/GP or VMFAILINVALID, whose low
        // bits are never exit reason 1.)
        if enter && acknowledged_vector(regs.rax, regs.r9).is_some() {
            super::wake::end_of_interrupt();
        }
    }

    fn kind(&self) -> ModuleKind {
        self.module.kind()
    }

    fn hkid_shift(&self) -> u32 {
        self.module.hkid_shift()
    }
}
