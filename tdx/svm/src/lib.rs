//! AMD SVM primitives: the few privileged instructions the software TDX module's guest engine
//! needs, each behind a function with its safety contract. Everything else of the engine
//! (VMCB contents, nested page tables, exit handling) is plain data in `tdx-emu`, which stays
//! free of `unsafe`.
//!
//! Source: AMD64 Architecture Programmer's Manual vol. 2, chapter 15 (Secure Virtual Machine):
//! CPUID Fn8000_0001 ECX bit 2 (SVM), Fn8000_000A (revision, ASIDs, EDX bit 0 nested
//! paging); EFER.SVME (bit 12) enables the instructions; VM_HSAVE_PA (MSR C001_0117) names
//! the page where VMRUN saves host state; VMRUN/VMLOAD/VMSAVE take the VMCB's physical
//! address in RAX; CLGI/STGI hold interrupts off across the world switch.
#![no_std]

#[cfg(target_arch = "x86_64")]
use tdx_hw::{rdmsr, wrmsr};

/// EFER.
const MSR_EFER: u32 = 0xC000_0080;
/// EFER.SVME.
const EFER_SVME: u64 = 1 << 12;
/// VM_HSAVE_PA.
const MSR_VM_HSAVE_PA: u32 = 0xC001_0117;

/// What the CPU offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvmCaps {
    /// SVM revision (Fn8000_000A EAX[7:0]).
    pub revision: u32,
    /// Number of ASIDs (Fn8000_000A EBX).
    pub asids: u32,
    /// Nested paging (Fn8000_000A EDX bit 0).
    pub nested_paging: bool,
}

/// SVM with nested paging, if the CPU reports it.
#[cfg(target_arch = "x86_64")]
pub fn detect() -> Option<SvmCaps> {
    use core::arch::x86_64::__cpuid;
    let max_ext = __cpuid(0x8000_0000).eax;
    if max_ext < 0x8000_000A || __cpuid(0x8000_0001).ecx & (1 << 2) == 0 {
        return None;
    }
    let leaf = __cpuid(0x8000_000A);
    Some(SvmCaps {
        revision: leaf.eax & 0xFF,
        asids: leaf.ebx,
        nested_paging: leaf.edx & 1 != 0,
    })
}

/// The guest's general-purpose registers that VMRUN does not load from the VMCB (RAX and RSP
/// live in the VMCB's save area), and its x87/SSE state, saved and restored around every
/// VMRUN so that vCPUs sharing a CPU never see each other's registers.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(16))]
#[allow(missing_docs)] // register names
pub struct GuestRegisters {
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    /// FXSAVE image (x87, MXCSR, XMM0–15), 16-byte aligned.
    pub fx: FxArea,
}

/// A 512-byte FXSAVE/FXRSTOR area.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(16))]
pub struct FxArea(pub [u8; 512]);

impl Default for GuestRegisters {
    fn default() -> Self {
        let mut fx = FxArea([0; 512]);
        // FCW 0x037F and MXCSR 0x1F80: the state after FNINIT/reset.
        fx.0[0..2].copy_from_slice(&0x037Fu16.to_le_bytes());
        fx.0[24..28].copy_from_slice(&0x1F80u32.to_le_bytes());
        GuestRegisters {
            rbx: 0,
            rcx: 0,
            rdx: 0,
            rsi: 0,
            rdi: 0,
            rbp: 0,
            r8: 0,
            r9: 0,
            r10: 0,
            r11: 0,
            r12: 0,
            r13: 0,
            r14: 0,
            r15: 0,
            fx,
        }
    }
}

/// Turns SVM on for the calling CPU: EFER.SVME, and `hsave` as its host save area.
///
/// # Safety
/// Ring 0 on a CPU that [`detect`] accepted; `hsave` is the physical address of a 4 KiB
/// aligned page that nothing else uses for as long as SVM stays on for this CPU.
#[cfg(target_arch = "x86_64")]
pub unsafe fn enable(hsave: u64) {
    // SAFETY: the caller guarantees ring 0 and SVM support, so these MSRs exist; setting
    // SVME only makes the SVM instructions legal, and VM_HSAVE_PA takes the caller's page.
    unsafe {
        wrmsr(MSR_EFER, rdmsr(MSR_EFER) | EFER_SVME);
        wrmsr(MSR_VM_HSAVE_PA, hsave);
    }
}

/// Whether SVM is already on for the calling CPU.
///
/// # Safety
/// Ring 0 (reads EFER).
#[cfg(target_arch = "x86_64")]
pub unsafe fn enabled() -> bool {
    // SAFETY: EFER exists on every x86-64 CPU; reading it has no side effect.
    unsafe { rdmsr(MSR_EFER) & EFER_SVME != 0 }
}

/// Runs the guest described by the VMCB at `vmcb` until its next #VMEXIT.
///
/// Host state the world switch does not keep is saved with VMSAVE to `host_area` and
/// restored with VMLOAD; the guest's FS/GS/TR/LDTR, syscall MSRs and KernelGSBase are loaded
/// from and saved to its VMCB with VMLOAD/VMSAVE; its other registers move between `regs`
/// and the CPU; interrupts stay held (GIF = 0) between the switch and the state restore.
/// The guest runs with the host's IF set (AMD APM vol. 2, 15.21.1, V_INTR_MASKING: HIF
/// gates physical interrupts), so a physical interrupt ends it with an INTR exit when the
/// VMCB intercepts INTR; the host takes that interrupt right after GIF is set again, and
/// the caller's RFLAGS (its IF) comes back before the function returns.
///
/// # Safety
/// [`enable`] ran on this CPU; `vmcb` and `host_area` are physical addresses of 4 KiB pages
/// (the VMCB valid for VMRUN, its nested page tables and intercept bitmaps valid too), both
/// identity-mapped is not required; nothing else uses them during the call. Every interrupt
/// that can reach this CPU has a handler in the current IDT.
#[cfg(target_arch = "x86_64")]
pub unsafe fn run(vmcb: u64, host_area: u64, regs: &mut GuestRegisters) {
    let regs: *mut GuestRegisters = regs;
    // SAFETY: the caller's contract covers SVM being on and both pages; `regs` is an
    // exclusive borrow of a `repr(C)` struct whose offsets come from `offset_of!`, and the
    // FX area is 16-byte aligned. RBX and RBP (reserved by the compiler) are pushed first and
    // popped last, the register pointer is kept on the stack across VMRUN, every other
    // general-purpose register is declared clobbered, and the stack is balanced at the end.
    unsafe {
        core::arch::asm!(
            "pushfq",
            "push rbp",
            "push rbx",
            "push rdi",
            "push rsi",
            "clgi",
            // Interrupts on under GIF = 0: none is taken here, but with V_INTR_MASKING the
            // host's IF (kept as HIF) lets a physical interrupt (the runner's time-slice
            // timer, a kick IPI) end the guest with an INTR exit.
            "sti",
            // Host state VMRUN does not save.
            "mov rax, rsi",
            "vmsave rax",
            "fxrstor64 [rdi + {fx}]",
            "mov rax, rdx",
            "vmload rax",
            "mov rbx, [rdi + {rbx}]",
            "mov rcx, [rdi + {rcx}]",
            "mov rdx, [rdi + {rdx}]",
            "mov rsi, [rdi + {rsi}]",
            "mov rbp, [rdi + {rbp}]",
            "mov r8, [rdi + {r8}]",
            "mov r9, [rdi + {r9}]",
            "mov r10, [rdi + {r10}]",
            "mov r11, [rdi + {r11}]",
            "mov r12, [rdi + {r12}]",
            "mov r13, [rdi + {r13}]",
            "mov r14, [rdi + {r14}]",
            "mov r15, [rdi + {r15}]",
            "mov rdi, [rdi + {rdi}]",
            "vmrun rax",
            // #VMEXIT: RAX is the VMCB address again; the guest's registers are live.
            "push rdi",
            "mov rdi, [rsp + 16]",
            "mov [rdi + {rbx}], rbx",
            "mov [rdi + {rcx}], rcx",
            "mov [rdi + {rdx}], rdx",
            "mov [rdi + {rsi}], rsi",
            "mov [rdi + {rbp}], rbp",
            "mov [rdi + {r8}], r8",
            "mov [rdi + {r9}], r9",
            "mov [rdi + {r10}], r10",
            "mov [rdi + {r11}], r11",
            "mov [rdi + {r12}], r12",
            "mov [rdi + {r13}], r13",
            "mov [rdi + {r14}], r14",
            "mov [rdi + {r15}], r15",
            "pop rbx",
            "mov [rdi + {rdi}], rbx",
            "vmsave rax",
            "fxsave64 [rdi + {fx}]",
            "mov rax, [rsp]",
            "vmload rax",
            // The interrupt that ended the guest, if any, is taken here, then the caller's
            // interrupt flag comes back.
            "stgi",
            "add rsp, 16",
            "pop rbx",
            "pop rbp",
            "popfq",
            rbx = const core::mem::offset_of!(GuestRegisters, rbx),
            rcx = const core::mem::offset_of!(GuestRegisters, rcx),
            rdx = const core::mem::offset_of!(GuestRegisters, rdx),
            rsi = const core::mem::offset_of!(GuestRegisters, rsi),
            rdi = const core::mem::offset_of!(GuestRegisters, rdi),
            rbp = const core::mem::offset_of!(GuestRegisters, rbp),
            r8 = const core::mem::offset_of!(GuestRegisters, r8),
            r9 = const core::mem::offset_of!(GuestRegisters, r9),
            r10 = const core::mem::offset_of!(GuestRegisters, r10),
            r11 = const core::mem::offset_of!(GuestRegisters, r11),
            r12 = const core::mem::offset_of!(GuestRegisters, r12),
            r13 = const core::mem::offset_of!(GuestRegisters, r13),
            r14 = const core::mem::offset_of!(GuestRegisters, r14),
            r15 = const core::mem::offset_of!(GuestRegisters, r15),
            fx = const core::mem::offset_of!(GuestRegisters, fx),
            inout("rdi") regs => _,
            inout("rsi") host_area => _,
            inout("rdx") vmcb => _,
            out("rax") _,
            out("rcx") _,
            out("r8") _,
            out("r9") _,
            out("r10") _,
            out("r11") _,
            out("r12") _,
            out("r13") _,
            out("r14") _,
            out("r15") _,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_block_layout_is_what_the_switch_expects() {
        assert_eq!(core::mem::offset_of!(GuestRegisters, rbx), 0);
        assert_eq!(core::mem::offset_of!(GuestRegisters, r15), 13 * 8);
        assert_eq!(core::mem::offset_of!(GuestRegisters, fx) % 16, 0);
        assert_eq!(core::mem::size_of::<FxArea>(), 512);
        let r = GuestRegisters::default();
        assert_eq!(u16::from_le_bytes([r.fx.0[0], r.fx.0[1]]), 0x037F);
        assert_eq!(
            u32::from_le_bytes([r.fx.0[24], r.fx.0[25], r.fx.0[26], r.fx.0[27]]),
            0x1F80
        );
    }
}
