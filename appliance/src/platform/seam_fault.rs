//! A faulting SEAMCALL comes back as a status: handlers for #UD (vector 6) and #GP (vector 13)
//! that resume a fault of the hardware `seamcall` instruction right after it with
//! `TDX_SEAMCALL_UD` or `TDX_SEAMCALL_GP` in RAX ([`tdx_hw::fixup_seamcall_fault`]), as
//! Linux's exception-table fixup does (`arch/x86/virt/vmx/tdx/tdxcall.S`,
//! `EX_TYPE_SEAMCALL`). Without them a SEAMCALL on a CPU that is not in VMX root operation,
//! or has no SEAM, ends in the firmware's exception dead loop.
//!
//! The handlers are registered once, on the main CPU, through the PI CPU Architectural
//! Protocol (`EFI_CPU_ARCH_PROTOCOL.RegisterInterruptHandler`, as [`super::wake`] does); MP
//! Services gives application processors the main CPU's IDT, so they serve every CPU. The
//! firmware's exception entry (edk2 `CpuExceptionHandlerLib`, `ExceptionHandlerAsm.nasm`)
//! passes the saved registers as an `EFI_SYSTEM_CONTEXT_X64` (edk2
//! `MdePkg/Include/Protocol/DebugSupport.h`) and, when a registered handler returns, restores
//! RIP, RFLAGS and the general-purpose registers from it before `iretq`: changing them there
//! is how the fixup resumes.
//!
//! Registering replaces the firmware's default handling of these two vectors (a register
//! and image dump on the serial port, then a dead loop) for every fault, not just a
//! SEAMCALL's. Any other #UD or #GP prints one line on COM1 (vector, RIP, error code, RSP;
//! written without the logger's lock, which the interrupted code may hold) and halts the CPU
//! forever, as the firmware's dead loop would, with interrupts off.

use alloc::format;
use alloc::string::String;
use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, Ordering};

use tdx_abi::TdxStatus;
use tdx_hw::{FaultFrame, SEAMCALL_GP, SEAMCALL_UD, VECTOR_GP, VECTOR_UD};

/// Both handlers are registered.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// `EFI_SYSTEM_CONTEXT_X64` (edk2 `MdePkg/Include/Protocol/DebugSupport.h`), field for field.
/// The layout needs every field; the handler uses a few.
#[allow(dead_code)]
#[repr(C)]
struct SystemContextX64 {
    exception_data: u64,
    /// `EFI_FX_SAVE_STATE_X64`: the FXSAVE image.
    fx_save_state: [u8; 512],
    /// Dr0, Dr1, Dr2, Dr3, Dr6, Dr7.
    dr: [u64; 6],
    /// Cr0, Cr1 (reserved), Cr2, Cr3, Cr4, Cr8.
    cr: [u64; 6],
    rflags: u64,
    ldtr: u64,
    tr: u64,
    gdtr: [u64; 2],
    idtr: [u64; 2],
    rip: u64,
    gs: u64,
    fs: u64,
    es: u64,
    ds: u64,
    cs: u64,
    ss: u64,
    rdi: u64,
    rsi: u64,
    rbp: u64,
    rsp: u64,
    rbx: u64,
    rdx: u64,
    rcx: u64,
    rax: u64,
    r8: u64,
    r9: u64,
    r10: u64,
    r11: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
}

// The offsets the firmware's exception entry uses (its pushes, in reverse).
const _: () = {
    assert!(core::mem::offset_of!(SystemContextX64, fx_save_state) == 8);
    assert!(core::mem::offset_of!(SystemContextX64, rflags) == 616);
    assert!(core::mem::offset_of!(SystemContextX64, rip) == 672);
    assert!(core::mem::offset_of!(SystemContextX64, rsp) == 752);
    assert!(core::mem::offset_of!(SystemContextX64, rax) == 784);
    assert!(core::mem::size_of::<SystemContextX64>() == 856);
};

/// The #UD and #GP handler: a SEAMCALL's fault resumes after the instruction with its status;
/// any other is reported and halts this CPU.
unsafe extern "efiapi" fn fault_handler(vector: isize, context: *mut c_void) {
    // SAFETY: the firmware's exception entry passes `EFI_SYSTEM_CONTEXT.SystemContextX64`, a
    // pointer to the interrupted CPU's saved registers on its exception stack, valid for this
    // call and used by nothing else until the handler returns.
    let context = unsafe { &mut *context.cast::<SystemContextX64>() };
    let vector = u8::try_from(vector).unwrap_or(u8::MAX);
    let mut frame = FaultFrame {
        rip: context.rip,
        rax: context.rax,
        rflags: context.rflags,
    };
    if tdx_hw::fixup_seamcall_fault(vector, &mut frame) {
        context.rip = frame.rip;
        context.rax = frame.rax;
        context.rflags = frame.rflags;
        return;
    }
    let name = match vector {
        VECTOR_UD => "#UD",
        VECTOR_GP => "#GP",
        _ => "exception",
    };
    super::logger::emergency_write(format_args!(
        "\n!!!! CPU exception {name} (vector {vector}) at RIP {:#x}, error code {:#x}, RSP {:#x}: \
         not a SEAMCALL; this CPU halts !!!!\n",
        context.rip, context.exception_data, context.rsp
    ));
    loop {
        // SAFETY: stops this CPU for good with interrupts off (the firmware's default for an
        // unhandled exception is a dead loop too); nothing is touched.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Registers the #UD and #GP handlers (main CPU, once). Until this succeeds a faulting
/// SEAMCALL ends in the firmware's dead loop, so no SEAMCALL may be made on a CPU that might
/// fault ([`probe`] checks).
pub fn install() -> uefi::Result {
    if INSTALLED.load(Ordering::Acquire) {
        return Ok(());
    }
    for vector in [VECTOR_UD, VECTOR_GP] {
        // SAFETY: the handler reads and writes only the context the firmware passes it, and
        // otherwise writes COM1 and halts.
        unsafe { super::register_interrupt_handler(vector, fault_handler) }?;
    }
    INSTALLED.store(true, Ordering::Release);
    Ok(())
}

/// Whether [`install`] succeeded.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// Makes one real SEAMCALL (TDH.SYS.RD) through the hardware entry path on the calling CPU
/// and describes what came back, for a machine without TDX: the instruction faults there,
/// so `Ok` (the status is `TDX_SEAMCALL_UD` or `TDX_SEAMCALL_GP`) proves the fault path
/// end to end; `Err` says what else happened (handlers missing, another status).
pub fn probe() -> Result<String, String> {
    if !installed() {
        return Err(String::from(
            "no probe SEAMCALL: the #UD/#GP fixup handlers are not installed",
        ));
    }
    // SAFETY: `install` registered the fixup for #UD and #GP in the IDT this CPU uses.
    let rax = unsafe { tdx_hw::probe_fault_path() };
    let status = TdxStatus(rax);
    match rax {
        SEAMCALL_UD => Ok(format!(
            "a probe SEAMCALL raised #UD and returned {status} ({rax:#x})"
        )),
        SEAMCALL_GP => Ok(format!(
            "a probe SEAMCALL raised #GP and returned {status} ({rax:#x})"
        )),
        _ => Err(format!(
            "a probe SEAMCALL returned {status} ({rax:#x}), not TDX_SEAMCALL_UD or \
             TDX_SEAMCALL_GP"
        )),
    }
}
