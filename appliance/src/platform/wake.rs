//! Sleeping runner CPUs: an idle runner halts until its local APIC timer (one-shot, about a
//! millisecond) or a wake-up IPI from another CPU, instead of spinning. Under QEMU's TCG a
//! spinning application processor costs a whole host core; on hardware it burns power.
//!
//! The interrupt handler is registered once, on the main CPU, through the PI CPU
//! Architectural Protocol (`EFI_CPU_ARCH_PROTOCOL.RegisterInterruptHandler`, PI spec volume 2);
//! MP Services gives application processors the main CPU's IDT, so the handler serves them
//! too. It only signals end of interrupt. The local APIC is driven in xAPIC (MMIO) or x2APIC
//! (MSR) mode as IA32_APIC_BASE says (Intel SDM vol. 3A chapter 11). The APIC timer's rate
//! is measured against the TSC on first use.

use core::ffi::c_void;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tdx_runtime::host::posted::POSTED_INTERRUPT_VECTOR;

use super::clock::{read_tsc, ticks_per_ms};

/// The wake-up vector (timer and IPI). High priority class, unused by the firmware.
pub const WAKE_VECTOR: u8 = 0xF8;

const MSR_APIC_BASE: u32 = 0x1B;
/// IA32_APIC_BASE: x2APIC mode (EXTD).
const APIC_BASE_EXTD: u64 = 1 << 10;
/// Register offsets (xAPIC MMIO offset; the x2APIC MSR is 0x800 + offset / 16).
const REG_EOI: u64 = 0x0B0;
const REG_SVR: u64 = 0x0F0;
const REG_ICR_LOW: u64 = 0x300;
const REG_ICR_HIGH: u64 = 0x310;
const REG_LVT_TIMER: u64 = 0x320;
const REG_TMICT: u64 = 0x380;
const REG_TMCCT: u64 = 0x390;
const REG_TDCR: u64 = 0x3E0;

/// The handler is registered.
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// APIC timer counts per millisecond at divide-by-1 (0 until measured).
static APIC_COUNTS_PER_MS: AtomicU64 = AtomicU64::new(0);

/// The local APIC's register `offset`.
fn read_reg(offset: u64) -> u32 {
    // SAFETY: ring 0; IA32_APIC_BASE exists on every x86-64 CPU.
    let base = unsafe { tdx_hw::rdmsr(MSR_APIC_BASE) };
    if base & APIC_BASE_EXTD != 0 {
        // SAFETY: x2APIC mode is on, so the x2APIC MSR range exists; reads have no side
        // effect on the registers used here.
        return unsafe { tdx_hw::rdmsr(0x800 + (offset >> 4) as u32) } as u32;
    }
    let at = (base & 0x000F_FFFF_FFFF_F000) + offset;
    // SAFETY: xAPIC mode: the APIC page is at `base`, identity-mapped by the firmware;
    // APIC registers are read with aligned 32-bit loads.
    unsafe { core::ptr::read_volatile(at as *const u32) }
}

/// Writes the local APIC's register `offset` (for the ICR, `high` is the destination word).
fn write_reg(offset: u64, value: u32, high: u32) {
    // SAFETY: as in `read_reg`.
    let base = unsafe { tdx_hw::rdmsr(MSR_APIC_BASE) };
    if base & APIC_BASE_EXTD != 0 {
        let msr = 0x800 + (offset >> 4) as u32;
        let value = if offset == REG_ICR_LOW {
            // An x2APIC MSR write is not serializing: fence so that the stores the IPI
            // announces (a posted call, a posted interrupt) are visible before it (Linux
            // `weak_wrmsr_fence`).
            // SAFETY: fences only order memory accesses.
            unsafe { core::arch::asm!("mfence", "lfence", options(nostack, preserves_flags)) };
            u64::from(high) << 32 | u64::from(value)
        } else {
            u64::from(value)
        };
        // SAFETY: x2APIC mode; the registers written here (EOI, SVR, ICR, timer) have no
        // effect beyond this CPU's interrupts and the IPI the caller asks for.
        unsafe { tdx_hw::wrmsr(msr, value) };
        return;
    }
    let page = base & 0x000F_FFFF_FFFF_F000;
    if offset == REG_ICR_LOW {
        // SAFETY: xAPIC ICR: destination first, the low word's write sends the IPI.
        unsafe { core::ptr::write_volatile((page + REG_ICR_HIGH) as *mut u32, high << 24) };
    }
    // SAFETY: xAPIC mode: the APIC page is identity-mapped; aligned 32-bit store.
    unsafe { core::ptr::write_volatile((page + offset) as *mut u32, value) };
}

/// The wake-up interrupt's handler: end of interrupt, nothing else.
unsafe extern "efiapi" fn wake_handler(_vector: isize, _context: *mut c_void) {
    write_reg(REG_EOI, 0, 0);
}

/// Registers the wake-up handler for [`WAKE_VECTOR`] and the posted-interrupt notification
/// vector (main CPU, once). Without it runners keep spinning. A notification reaches the
/// handler only when it arrives at a CPU outside the TD; inside, the processor consumes it.
pub fn install() -> uefi::Result {
    for vector in [WAKE_VECTOR, POSTED_INTERRUPT_VECTOR] {
        // SAFETY: the handler only writes this CPU's EOI register.
        unsafe { super::register_interrupt_handler(vector, wake_handler) }?;
    }
    INSTALLED.store(true, Ordering::Release);
    Ok(())
}

/// Software-enables the calling CPU's local APIC (SVR bit 8) if it is not.
fn enable_apic() {
    let svr = read_reg(REG_SVR);
    if svr & 1 << 8 == 0 {
        write_reg(REG_SVR, svr | 1 << 8, 0);
    }
}

/// APIC timer counts per millisecond, measured once against the TSC on the calling CPU
/// (every CPU's timer runs on the same bus clock).
fn counts_per_ms() -> u64 {
    let known = APIC_COUNTS_PER_MS.load(Ordering::Acquire);
    if known != 0 {
        return known;
    }
    let tsc_per_ms = ticks_per_ms();
    if tsc_per_ms == 0 {
        return 0;
    }
    // Masked one-shot, divide by 1, full count; 200 µs of TSC.
    write_reg(REG_LVT_TIMER, 1 << 16 | u32::from(WAKE_VECTOR), 0);
    write_reg(REG_TDCR, 0xB, 0);
    write_reg(REG_TMICT, u32::MAX, 0);
    let start = read_tsc();
    while read_tsc().wrapping_sub(start) < tsc_per_ms / 5 {
        core::hint::spin_loop();
    }
    let counted = u64::from(u32::MAX - read_reg(REG_TMCCT));
    write_reg(REG_TMICT, 0, 0);
    let per_ms = (counted * 5).max(1);
    APIC_COUNTS_PER_MS.store(per_ms, Ordering::Release);
    per_ms
}

/// Halts the calling (runner) CPU until its APIC timer fires after about `ms` milliseconds
/// or a [`wake`] IPI arrives. Spins briefly instead when the handler is not installed.
pub fn sleep(ms: u64) {
    if !INSTALLED.load(Ordering::Acquire) {
        for _ in 0..20_000 {
            core::hint::spin_loop();
        }
        return;
    }
    let per_ms = counts_per_ms();
    enable_apic();
    let count = u32::try_from((per_ms * ms.clamp(1, 100)).max(1)).unwrap_or(u32::MAX);
    write_reg(REG_TDCR, 0xB, 0);
    write_reg(REG_LVT_TIMER, u32::from(WAKE_VECTOR), 0);
    write_reg(REG_TMICT, count, 0);
    // SAFETY: STI's one-instruction shadow makes HLT start before any interrupt is taken,
    // so a wake-up that is already pending ends the HLT instead of being lost; the only
    // interrupts this CPU receives are its timer and wake IPIs, whose handler is registered;
    // CLI restores the interrupts-off state MP Services runs procedures in.
    unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
    write_reg(REG_TMICT, 0, 0);
}

/// Arms the calling CPU's APIC timer to fire once after about `us` microseconds: the time
/// slice of a guest run. A guest that runs that long without an exit leaves with an INTR
/// exit, so one vCPU that spins cannot hold its runner (and the other vCPUs bound there).
/// Each call restarts the count. Does nothing before the handler is installed.
pub fn arm_slice(us: u64) {
    if !INSTALLED.load(Ordering::Acquire) {
        return;
    }
    let per_ms = counts_per_ms();
    if per_ms == 0 {
        return;
    }
    enable_apic();
    let count = u32::try_from((per_ms * us / 1000).max(1)).unwrap_or(u32::MAX);
    write_reg(REG_TDCR, 0xB, 0);
    write_reg(REG_LVT_TIMER, u32::from(WAKE_VECTOR), 0);
    write_reg(REG_TMICT, count, 0);
}

/// Wakes the CPU with local APIC ID `apic_id` if it sleeps in [`sleep`].
pub fn wake(apic_id: u32) {
    send(apic_id, WAKE_VECTOR);
}

/// Sends `vector` (one with a registered handler) to the CPU with local APIC ID `apic_id`.
pub fn send(apic_id: u32, vector: u8) {
    if INSTALLED.load(Ordering::Acquire) {
        // Fixed delivery, physical destination, no shorthand.
        write_reg(REG_ICR_LOW, u32::from(vector), apic_id);
    }
}

/// Signals end of interrupt on this CPU: for an interrupt the processor acknowledged on a
/// VM exit ("acknowledge interrupt on exit", which the TDX module sets with posted
/// interrupts), which no handler ran for.
pub fn end_of_interrupt() {
    write_reg(REG_EOI, 0, 0);
}
