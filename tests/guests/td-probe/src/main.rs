//! td-probe: a TD guest that checks, from the reset vector, what a TD guest relies on from
//! the TDX module and its host, and prints each check on COM1 (through TDVMCALL
//! Instruction.IO). It ends with a triple fault, which the host reports as the TD stopping;
//! a failed check reports TDVMCALL ReportFatalError with the check's number instead.
//!
//! Checked: TDG.VP.INFO; CPUID leaf 0x21 from the module and a hypervisor leaf through #VE
//! and TDVMCALL Instruction.CPUID; TDG.VP.VEINFO.GET with nothing pending; an unknown TDCALL
//! leaf; RDMSR of a VMM-emulated x2APIC register and port I/O through #VE; TDVMCALL
//! GetTdVmCallInfo and an unknown sub-function; TDG.MEM.PAGE.ACCEPT at 4 KiB and 2 MiB of
//! unaccepted RAM (zeroed, writable); MapGPA to shared, a write and read through the shared
//! alias, GetQuote answered "service unavailable" in that shared buffer, MapGPA back and
//! accept again (zeroed); TDG.MR.RTMR.EXTEND of RTMR 2 (the test
//! compares the measurement); TDG.VM.RD/WR; TDG.VP.CPUIDVE.SET; TDG.MR.REPORT; the x2APIC
//! one-shot and TSC-deadline timers waking a halted vCPU.
//!
//! The hostile variant (the flag byte at the image base set by the packer) then tries what a
//! misbehaving guest does: every unknown TDCALL leaf up to 64, unknown TDVMCALLs, port and
//! MMIO accesses where nothing is, an exit storm, accepting memory the TD does not have, and
//! a triple fault. Its TD has a second vCPU, which spins from the reset vector on without a
//! single exit, so the host must take the CPU back from it to run anything else on that
//! runner and to end the TD.
//!
//! Start: 32-bit flat protected mode at 0xFFFFFFF0 with paging off (TDX module 1.5
//! `tdh_vp_init.c`). The entry builds identity page tables for the low 4 GiB (2 MiB pages) in
//! TempMem at 0x800000, plus a window at 0xFFFF_8000_0000_0000 onto the first GiB of the
//! shared GPA space (bit 47), loads a GDT and enters long mode.

#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Linear base of the window onto shared GPAs.
const SHARED_WINDOW: u64 = 0xFFFF_8000_0000_0000;
/// The shared bit of a 48-bit GPA width.
const SHARED_BIT: u64 = 1 << 47;
/// RAM the probe accepts and converts (the TD has at least 32 MiB; the TDVF sections end
/// below 9 MiB).
const ACCEPT_4K_GPA: u64 = 0x100_0000;
const ACCEPT_2M_GPA: u64 = 0x120_0000;
/// The timer vector.
const TIMER_VECTOR: u8 = 0x30;

/// Set to 1 by the packer for the hostile variant.
#[unsafe(link_section = ".mode")]
#[unsafe(no_mangle)]
static MODE: u8 = 0;

global_asm!(
    r#"
    .section .reset, "ax"
    .code32
    jmp entry32
    .code64

    .section .text.entry32, "ax"
    .code32
    .global entry32
entry32:
    /* Every vCPU starts here, RSI its index. vCPU 0 runs the probe; any other (only the
       hostile TD has one) spins without a single exit, with paging still off. */
    testl %esi, %esi
    jnz spin_without_exits
    /* Zero TempMem's first 0x8000 bytes: PML4, PDPT, four PDs, shared PDPT and PD. */
    movl $0x800000, %edi
    xorl %eax, %eax
    movl $0x2000, %ecx
    rep stosl
    movl $0x801003, 0x800000          /* PML4[0] -> PDPT */
    movl $0x806003, 0x800800          /* PML4[256] -> shared PDPT */
    movl $0x802003, 0x801000          /* PDPT[0..3] -> PDs */
    movl $0x803003, 0x801008
    movl $0x804003, 0x801010
    movl $0x805003, 0x801018
    movl $0x807003, 0x806000          /* shared PDPT[0] -> shared PD */
    movl $0x802000, %edi
    movl $0x83, %eax
    movl $2048, %ecx
1:  movl %eax, (%edi)
    movl $0, 4(%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 1b
    movl $0x807000, %edi              /* shared PD: GPA bit 47 | 2 MiB frames */
    movl $0x83, %eax
    movl $512, %ecx
2:  movl %eax, (%edi)
    movl $0x8000, 4(%edi)
    addl $0x200000, %eax
    addl $8, %edi
    loop 2b
    movl $0x800000, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    lgdtl gdt_pointer
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    ljmp $0x08, $entry64

spin_without_exits:
    jmp spin_without_exits

    .code64
entry64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq $0x810000, %rsp
    movabsq $probe_main, %rax
    callq *%rax
3:  hlt
    jmp 3b

    .balign 8
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
gdt_pointer:
    .word 23
    .long gdt

    /* Interrupt stubs: push the GPRs, call the Rust handler with the frame, pop, IRETQ. */
    .macro stub name, handler
    .global \name
\name:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    movabsq $\handler, %rax
    callq *%rax
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    iretq
    .endm
    stub ve_stub, ve_handler
    stub timer_stub, timer_handler
    stub other_stub, other_handler
"#,
    options(att_syntax)
);

unsafe extern "C" {
    fn ve_stub();
    fn timer_stub();
    fn other_stub();
}

/// What an interrupt stub saved, lowest address first, then the CPU's frame.
#[repr(C)]
struct Frame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// TDCALL with RCX, RDX, R8, R9 in; RAX (status), RCX, RDX, R8, R9, R10 out.
fn tdcall(leaf: u64, rcx: u64, rdx: u64, r8: u64, r9: u64) -> [u64; 6] {
    let (mut rax, mut c, mut d, mut a8, mut a9, r10): (u64, u64, u64, u64, u64, u64);
    rax = leaf;
    c = rcx;
    d = rdx;
    a8 = r8;
    a9 = r9;
    // SAFETY: TDCALL only exchanges registers with the TDX module.
    unsafe {
        asm!(".byte 0x66, 0x0f, 0x01, 0xcc",
            inout("rax") rax, inout("rcx") c, inout("rdx") d, inout("r8") a8, inout("r9") a9,
            out("r10") r10, out("r11") _, options(nostack));
    }
    [rax, c, d, a8, a9, r10]
}

/// TDG.VP.VMCALL with R12–R15 in; R10 (status), R11–R15 out.
fn tdvmcall(leaf: u64, r12: u64, r13: u64, r14: u64, r15: u64) -> [u64; 6] {
    let (r10, mut r11, mut a12, mut a13, mut a14, mut a15): (u64, u64, u64, u64, u64, u64);
    r11 = leaf;
    a12 = r12;
    a13 = r13;
    a14 = r14;
    a15 = r15;
    // SAFETY: TDG.VP.VMCALL exposes R10–R15 (RCX mask 0xFC00) to the host and nothing else.
    unsafe {
        asm!(".byte 0x66, 0x0f, 0x01, 0xcc",
            inout("rax") 0u64 => _, inout("rcx") 0xFC00u64 => _, inout("r10") 0u64 => r10,
            inout("r11") r11, inout("r12") a12, inout("r13") a13, inout("r14") a14,
            inout("r15") a15, options(nostack));
    }
    [r10, r11, a12, a13, a14, a15]
}

/// TDG.VP.VMCALL GetTdVmCallInfo exposing RBP as well as R10–R15 (RCX mask 0xFC20, TDVF's
/// choice includes RBP too); returns R10 and RBP after it.
fn tdvmcall_exposing_rbp(rbp: u64) -> (u64, u64) {
    let (r10, rbp_after): (u64, u64);
    // SAFETY: TDG.VP.VMCALL exchanges registers with the host; RBP, which the compiler may
    // use, is saved on the stack around it and restored.
    unsafe {
        asm!("push rbp",
            "mov rbp, {rbp_in}",
            ".byte 0x66, 0x0f, 0x01, 0xcc",
            "mov {rbp_out}, rbp",
            "pop rbp",
            rbp_in = in(reg) rbp, rbp_out = lateout(reg) rbp_after,
            inout("rax") 0u64 => _, inout("rcx") 0xFC20u64 => _, inout("r10") 0u64 => r10,
            inout("r11") VMCALL_GET_INFO => _, inout("r12") 0u64 => _, inout("r13") 0u64 => _,
            inout("r14") 0u64 => _, inout("r15") 0u64 => _);
    }
    (r10, rbp_after)
}

const VMCALL_CPUID: u64 = 10;
const VMCALL_HLT: u64 = 12;
const VMCALL_IO: u64 = 30;
const VMCALL_RDMSR: u64 = 31;
const VMCALL_WRMSR: u64 = 32;
const VMCALL_MMIO: u64 = 48;
const VMCALL_GET_INFO: u64 = 0x10000;
const VMCALL_MAP_GPA: u64 = 0x10001;
const VMCALL_GET_QUOTE: u64 = 0x10002;
const VMCALL_FATAL: u64 = 0x10003;

fn out_byte(port: u64, byte: u8) {
    tdvmcall(VMCALL_IO, 1, 1, port, u64::from(byte));
}

fn print(s: &str) {
    for b in s.bytes() {
        out_byte(0x3F8, b);
    }
}

fn print_hex(v: u64) {
    print("0x");
    for i in (0..16).rev() {
        let nibble = (v >> (i * 4)) & 0xF;
        let c = b"0123456789abcdef"[nibble as usize];
        out_byte(0x3F8, c);
    }
}

static CHECKS: AtomicU32 = AtomicU32::new(0);

/// Passes or ends the TD with a fatal error naming the check.
fn check(name: &str, ok: bool, detail: u64) {
    let n = CHECKS.fetch_add(1, Ordering::Relaxed) + 1;
    if ok {
        print("td-probe: ok ");
        print(name);
        print("\n");
        return;
    }
    print("td-probe: FAILED ");
    print(name);
    print(" ");
    print_hex(detail);
    print("\n");
    loop {
        tdvmcall(VMCALL_FATAL, 0x7D00 + u64::from(n), 0, 0, 0);
    }
}

fn cpuid(leaf: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: CPUID reads identification registers (the module answers or raises #VE).
    unsafe {
        asm!("mov {tmp:r}, rbx", "cpuid", "xchg {tmp:r}, rbx", tmp = out(reg) b,
            inout("eax") leaf => a, inout("ecx") 0 => c, out("edx") d);
    }
    [a, b, c, d]
}

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR of a register TDX turns into #VE; the handler emulates it.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack)) };
    u64::from(hi) << 32 | u64::from(lo)
}

fn wrmsr(msr: u32, value: u64) {
    // SAFETY: WRMSR of an x2APIC register the CPU virtualizes (EOI) or one TDX turns into
    // #VE (IA32_TSC_DEADLINE), which the handler emulates.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
            options(nostack));
    }
}

fn apic_write(msr: u64, value: u64) -> u64 {
    tdvmcall(VMCALL_WRMSR, msr, value, 0, 0)[0]
}

/// The IDT: 256 gates.
#[repr(C, align(16))]
struct Idt([u64; 512]);
static mut IDT: Idt = Idt([0; 512]);

fn set_gate(vector: usize, handler: unsafe extern "C" fn()) {
    let addr = handler as usize as u64;
    let low = (addr & 0xFFFF) | 0x08 << 16 | 0x8E00 << 32 | (addr >> 16 & 0xFFFF) << 48;
    // SAFETY: only the boot CPU runs, before interrupts are enabled.
    unsafe {
        let idt = &raw mut IDT;
        (*idt).0[vector * 2] = low;
        (*idt).0[vector * 2 + 1] = addr >> 32;
    }
}

fn load_idt() {
    for v in 0..256 {
        set_gate(v, other_stub);
    }
    set_gate(20, ve_stub);
    set_gate(usize::from(TIMER_VECTOR), timer_stub);
    let pointer: [u16; 5] = {
        let base = (&raw const IDT) as u64;
        [
            4095,
            base as u16,
            (base >> 16) as u16,
            (base >> 32) as u16,
            (base >> 48) as u16,
        ]
    };
    // SAFETY: the IDT is a static with valid gates for every vector.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(nostack)) };
}

/// The #VE handler: reads VE_INFO and does what the instruction asked through TDVMCALLs.
#[unsafe(no_mangle)]
extern "C" fn ve_handler(f: &mut Frame) {
    let [status, reason, qual, _gla, gpa, len] = tdcall(3, 0, 0, 0, 0);
    if status != 0 {
        check("#VE information is valid in the #VE handler", false, status);
    }
    match reason {
        10 => {
            let r = tdvmcall(VMCALL_CPUID, f.rax & 0xFFFF_FFFF, f.rcx & 0xFFFF_FFFF, 0, 0);
            (f.rax, f.rbx, f.rcx, f.rdx) = (r[2], r[3], r[4], r[5]);
        }
        12 => {
            tdvmcall(VMCALL_HLT, 0, 0, 0, 0);
        }
        30 => {
            let size = (qual & 7) + 1;
            let port = qual >> 16 & 0xFFFF;
            if qual & 8 != 0 {
                let v = tdvmcall(VMCALL_IO, size, 0, port, 0)[1];
                let mask = (1u64 << (size * 8)) - 1;
                f.rax = (f.rax & !mask) | (v & mask);
            } else {
                tdvmcall(VMCALL_IO, size, 1, port, f.rax);
            }
        }
        31 => {
            let v = tdvmcall(VMCALL_RDMSR, f.rcx & 0xFFFF_FFFF, 0, 0, 0)[1];
            (f.rax, f.rdx) = (v & 0xFFFF_FFFF, v >> 32);
        }
        32 => {
            let value = f.rdx << 32 | (f.rax & 0xFFFF_FFFF);
            tdvmcall(VMCALL_WRMSR, f.rcx & 0xFFFF_FFFF, value, 0, 0);
        }
        48 => {
            // Only `mov eax, [rdi]` (8B 07) reaches shared MMIO here.
            // SAFETY: RIP points at the faulting instruction in our own code.
            let bytes = unsafe { core::ptr::read_volatile(f.rip as *const [u8; 2]) };
            if bytes != [0x8B, 0x07] {
                check("MMIO #VE on a known instruction", false, f.rip);
            }
            f.rax = tdvmcall(VMCALL_MMIO, 4, 0, gpa, 0)[1] & 0xFFFF_FFFF;
            f.rip += 2;
            return;
        }
        _ => check("a #VE reason the probe handles", false, reason),
    }
    f.rip += len & 0xFFFF_FFFF;
}

static TICKED: AtomicBool = AtomicBool::new(false);

#[unsafe(no_mangle)]
extern "C" fn timer_handler(_f: &mut Frame) {
    TICKED.store(true, Ordering::Release);
    wrmsr(0x80B, 0);
}

#[unsafe(no_mangle)]
extern "C" fn other_handler(f: &mut Frame) {
    check("no unexpected exception or interrupt", false, f.rip);
}

fn read64(linear: u64) -> u64 {
    // SAFETY: the probe's page tables map every address it passes here.
    unsafe { core::ptr::read_volatile(linear as *const u64) }
}

fn write64(linear: u64, value: u64) {
    // SAFETY: as for `read64`; the pages written are RAM the probe owns.
    unsafe { core::ptr::write_volatile(linear as *mut u64, value) }
}

fn all_zero(linear: u64, len: u64) -> bool {
    (0..len / 8).all(|i| read64(linear + i * 8) == 0)
}

/// TDG.MR.REPORT's output and input.
#[repr(C, align(1024))]
struct Report([u8; 1024]);
static mut REPORT: Report = Report([0; 1024]);
#[repr(C, align(64))]
struct ReportData([u8; 64]);
static mut REPORT_DATA: ReportData = ReportData([0; 64]);

/// The value TDG.MR.RTMR.EXTEND extends into RTMR 2 (the test recomputes RTMR 2).
#[repr(C, align(64))]
struct Digest([u8; 48]);
static RTMR_VALUE: Digest = Digest(*b"td-probe extends RTMR 2 with these 48 bytes.....");

fn accept(gpa: u64, level: u64) -> u64 {
    loop {
        let status = tdcall(6, gpa | level, 0, 0, 0)[0];
        // OPERAND_BUSY: try again.
        if status >> 32 != 0x8000_0200 {
            return status;
        }
    }
}

/// TDX_PAGE_ALREADY_ACCEPTED.
const ALREADY_ACCEPTED: u64 = 0x0000_0B0A_0000_0000;

fn map_gpa(gpa: u64, size: u64) -> u64 {
    let mut at = gpa;
    loop {
        let r = tdvmcall(
            VMCALL_MAP_GPA,
            at,
            size - (at & !SHARED_BIT) + (gpa & !SHARED_BIT),
            0,
            0,
        );
        if r[0] == 1 {
            at = r[1];
            continue;
        }
        return r[0];
    }
}

/// Halts with interrupts on until the timer handler ran (at most 1000 wake-ups).
fn wait_for_tick() {
    for _ in 0..1000 {
        if TICKED.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: interrupts on for one HLT (the timer wakes it; the #VE handler turns the
        // HLT into TDVMCALL Instruction.HLT), then off again.
        unsafe { asm!("sti", "hlt", "cli", options(nostack)) };
    }
}

fn checks() {
    let [status, gpaw, _attr, counts, index, _] = tdcall(1, 0, 0, 0, 0);
    // The hostile variant's TD has a second, spinning vCPU.
    let vcpus = 1 + u64::from(hostile_mode());
    check(
        "TDG.VP.INFO: GPA width 48, vCPU 0 of the TD's (1, or 2 when hostile)",
        status == 0 && gpaw & 0x3F == 48 && index == 0 && counts & 0xFFFF_FFFF == vcpus,
        gpaw,
    );
    let tdx = cpuid(0x21);
    check(
        "CPUID 0x21 says IntelTDX",
        tdx[1] == 0x6574_6E49 && tdx[3] == 0x5844_546C && tdx[2] == 0x2020_2020,
        u64::from(tdx[1]),
    );
    let hv = cpuid(0x4000_0000);
    check(
        "CPUID 0x40000000 goes to the host through #VE (KVM-compatible, no features)",
        hv[0] == 0x4000_0001 && hv[1] == 0x4B4D_564B && cpuid(0x4000_0001)[0] == 0,
        u64::from(hv[0]),
    );
    let none = tdcall(3, 0, 0, 0, 0)[0];
    check(
        "TDG.VP.VEINFO.GET without a #VE: TDX_NO_VALID_VE_INFO",
        none == 0xC000_0704_0000_0000,
        none,
    );
    // TDG.VP.VMCALL's mask may not expose RAX, RCX or RSP (TDX module 1.5 `tdg_vp_vmcall.c`).
    let refused = tdcall(0, 1 << 4 | 0xFC00, 0, 0, 0)[0];
    check(
        "TDG.VP.VMCALL exposing RSP: TDX_OPERAND_INVALID on RCX",
        refused == 0xC000_0100_0000_0001,
        refused,
    );
    // The host leaves NO_RBP_MOD clear, so a TDVMCALL may expose RBP (TDVF's does), and the
    // host hands back what it got.
    let (status, rbp) = tdvmcall_exposing_rbp(0x5EED_0BB0);
    check(
        "a TDVMCALL exposing RBP keeps it",
        status == 0 && rbp == 0x5EED_0BB0,
        rbp,
    );
    let bad = tdcall(99, 0, 0, 0, 0)[0];
    check(
        "an unknown TDCALL leaf: TDX_OPERAND_INVALID",
        bad >> 32 == 0xC000_0100,
        bad,
    );
    let version = rdmsr(0x803);
    check(
        "RDMSR of the x2APIC version through #VE and the host",
        version & 0xFF == 0x15,
        version,
    );
    let lsr: u8;
    // SAFETY: IN from the UART's line status; TDX raises #VE, the handler asks the host.
    unsafe { asm!("in al, dx", in("dx") 0x3FDu16, out("al") lsr, options(nostack)) };
    check(
        "port I/O through #VE reaches the UART",
        lsr & 0x60 == 0x60,
        u64::from(lsr),
    );
    let info = tdvmcall(VMCALL_GET_INFO, 0, 0, 0, 0)[0];
    check("TDVMCALL GetTdVmCallInfo", info == 0, info);
    let unknown = tdvmcall(0x7777, 0, 0, 0, 0)[0];
    check(
        "an unknown TDVMCALL: an error status, the TD lives",
        unknown >> 63 == 1,
        unknown,
    );
    let s4k = accept(ACCEPT_4K_GPA, 0);
    check(
        "TDG.MEM.PAGE.ACCEPT 4 KiB",
        s4k == 0 && all_zero(ACCEPT_4K_GPA, 4096),
        s4k,
    );
    let s2m = accept(ACCEPT_2M_GPA, 1);
    write64(ACCEPT_2M_GPA + 0x1F_FFF8, 0x5EED);
    check(
        "TDG.MEM.PAGE.ACCEPT 2 MiB, zeroed and writable",
        s2m == 0 && all_zero(ACCEPT_2M_GPA, 0x1000) && read64(ACCEPT_2M_GPA + 0x1F_FFF8) == 0x5EED,
        s2m,
    );
    // TDX_PAGE_ALREADY_ACCEPTED with the level of the leaf that covers the page as its
    // operand (intel/tdx-module `tdg_mem_page_accept.c`, `check_tdaccept_failure`).
    let again = accept(ACCEPT_4K_GPA, 0);
    check(
        "accepting an accepted page",
        again == ALREADY_ACCEPTED,
        again,
    );
    let inside = accept(ACCEPT_2M_GPA + 0x1000, 0);
    check(
        "accepting 4 KiB inside an accepted 2 MiB page",
        inside == ALREADY_ACCEPTED | 1,
        inside,
    );
    write64(ACCEPT_4K_GPA, 0x1234);
    let to_shared = map_gpa(ACCEPT_4K_GPA | SHARED_BIT, 4096);
    write64(SHARED_WINDOW + ACCEPT_4K_GPA + 8, 0xC0FFEE);
    check(
        "MapGPA to shared: the shared alias is memory, zeroed",
        to_shared == 0
            && read64(SHARED_WINDOW + ACCEPT_4K_GPA + 8) == 0xC0FFEE
            && read64(SHARED_WINDOW + ACCEPT_4K_GPA) == 0,
        to_shared,
    );
    // GetQuote on the shared page: header version 1, the host's status lands at offset 8.
    write64(SHARED_WINDOW + ACCEPT_4K_GPA, 1);
    let quote = tdvmcall(VMCALL_GET_QUOTE, ACCEPT_4K_GPA | SHARED_BIT, 4096, 0, 0)[0];
    let quote_status = read64(SHARED_WINDOW + ACCEPT_4K_GPA + 8);
    check(
        "GetQuote without a quoting service: done, buffer status unavailable",
        quote == 0 && quote_status == 0x8000_0000_0000_0001,
        quote_status,
    );
    let to_private = map_gpa(ACCEPT_4K_GPA, 4096);
    let reaccept = accept(ACCEPT_4K_GPA, 0);
    check(
        "MapGPA back to private, accepted again and zeroed",
        to_private == 0 && reaccept == 0 && all_zero(ACCEPT_4K_GPA, 4096),
        reaccept,
    );
    // TDG.VM.RD/WR: the GPA width, a guest-written NOTIFY_ENABLES, a read-only field.
    const GPAW: u64 = 0x1110_0000_0000_0003;
    const NOTIFY_ENABLES: u64 = 0x9110_0003_0000_0010;
    const ATTRIBUTES: u64 = 0x1110_0003_0000_0000;
    let gpaw = tdcall(7, 0, GPAW, 0, 0);
    let written = tdcall(8, 0, NOTIFY_ENABLES, 1, 1)[0];
    let notify = tdcall(7, 0, NOTIFY_ENABLES, 0, 0);
    let refused = tdcall(8, 0, ATTRIBUTES, 1, 1)[0];
    check(
        "TDG.VM.RD/WR: GPAW, NOTIFY_ENABLES written back, ATTRIBUTES not writable",
        gpaw[0] == 0
            && gpaw[3] == 48
            && written == 0
            && notify[3] == 1
            && refused >> 32 == 0xC000_0C01,
        refused,
    );
    // TDG.VP.CPUIDVE.SET: with supervisor CPUID #VE on, even leaf 0 goes to the host.
    let on = tdcall(5, 1, 0, 0, 0)[0];
    let via_host = cpuid(0)[0];
    let off = tdcall(5, 0, 0, 0, 0)[0];
    check(
        "TDG.VP.CPUIDVE.SET sends every CPUID to #VE and back",
        on == 0 && off == 0 && via_host == 0 && cpuid(0)[0] >= 0x21,
        u64::from(via_host),
    );
    let rtmr = tdcall(2, (&raw const RTMR_VALUE) as u64, 2, 0, 0)[0];
    check("TDG.MR.RTMR.EXTEND of RTMR 2", rtmr == 0, rtmr);
    let bad_rtmr = tdcall(2, (&raw const RTMR_VALUE) as u64 + 8, 2, 0, 0)[0];
    check(
        "RTMR.EXTEND of a misaligned value: TDX_OPERAND_INVALID",
        bad_rtmr >> 32 == 0xC000_0100,
        bad_rtmr,
    );
    // TDG.MR.REPORT: type TDX, REPORTDATA copied, TDINFO's MRTD as TDG.VM.RD reads it.
    let (report, data) = (&raw mut REPORT, &raw mut REPORT_DATA);
    // SAFETY: only the boot CPU runs; the buffers are the probe's own statics.
    unsafe { (*data).0[5] = 0xAB };
    let made = tdcall(4, report as u64, data as u64, 0, 0)[0];
    let mrtd0 = tdcall(7, 0, 0x1310_0003_0000_0000, 0, 0)[3];
    // SAFETY: as above; the module wrote the report.
    let r = unsafe { core::ptr::read_volatile(&raw const (*report).0) };
    let mut mrtd_in_report = [0u8; 8];
    mrtd_in_report.copy_from_slice(&r[528..536]);
    check(
        "TDG.MR.REPORT: a TDX report with our REPORTDATA and MRTD",
        made == 0 && r[0] == 0x81 && r[133] == 0xAB && u64::from_le_bytes(mrtd_in_report) == mrtd0,
        made,
    );
    // The x2APIC timer: software enable, divide by 1, one-shot, 2 ms at the 1 GHz bus.
    let programmed = apic_write(0x80F, 0x1FF)
        | apic_write(0x83E, 0xB)
        | apic_write(0x832, u64::from(TIMER_VECTOR))
        | apic_write(0x838, 2_000_000);
    wait_for_tick();
    check(
        "the x2APIC timer interrupt wakes a halted vCPU",
        programmed == 0 && TICKED.load(Ordering::Acquire),
        programmed,
    );
    // The TSC-deadline timer: CPUID says it exists, WRMSR IA32_TSC_DEADLINE (through #VE)
    // 2 ms ahead by the TSC rate CPUID 0x15 gives.
    TICKED.store(false, Ordering::Release);
    let has_deadline = cpuid(1)[2] & 1 << 24 != 0;
    let [denominator, numerator, crystal, _] = cpuid(0x15);
    let tsc_hz = u64::from(crystal) * u64::from(numerator) / u64::from(denominator.max(1));
    // CPUID 0x16: base and maximum frequency at the TSC's rate (MHz), a 100 MHz bus, and a
    // maximum basic leaf that reaches it; Linux takes its CPU frequency from here instead
    // of calibrating against a PIT.
    let freq = cpuid(0x16);
    let tsc_mhz = tsc_hz / 1_000_000;
    check(
        "CPUID 0x16 gives the TSC's frequency as base and maximum",
        cpuid(0)[0] >= 0x16
            && u64::from(freq[0]) == tsc_mhz
            && freq[1] == freq[0]
            && freq[2] == 100,
        u64::from(freq[0]),
    );
    let mode = apic_write(0x832, 2 << 17 | u64::from(TIMER_VECTOR));
    // SAFETY: RDTSC reads the time-stamp counter.
    let now = unsafe { core::arch::x86_64::_rdtsc() };
    wrmsr(0x6E0, now + tsc_hz / 500);
    let armed = rdmsr(0x6E0);
    wait_for_tick();
    // The deadline reads back until it fires, then as 0 (Intel SDM vol. 3A 11.5.4.1): a vCPU
    // that lost its CPU for the 2 ms between the write and the read sees 0.
    check(
        "the TSC-deadline timer wakes a halted vCPU",
        has_deadline
            && tsc_hz > 0
            && mode == 0
            && (armed > now || armed == 0)
            && TICKED.load(Ordering::Acquire),
        armed,
    );
}

/// What a hostile guest tries; none of it may stop the host or other TDs.
fn hostile() {
    for leaf in 0..64u64 {
        if ![0, 1, 2, 3, 6].contains(&leaf) {
            tdcall(leaf, u64::MAX, u64::MAX, u64::MAX, u64::MAX);
        }
    }
    for leaf in [0u64, 5, 9, 11, 0x10005, 0xFFFF_FFFF, u64::MAX] {
        tdvmcall(leaf, u64::MAX, u64::MAX, u64::MAX, u64::MAX);
    }
    tdvmcall(VMCALL_IO, 4, 0, 0x1234, 0);
    tdvmcall(VMCALL_IO, 9, 1, 0xFFFF, 0);
    tdvmcall(VMCALL_MMIO, 8, 0, SHARED_BIT | 0xFEB0_0000, 0);
    tdvmcall(VMCALL_MMIO, 3, 1, 0x1000, 0);
    tdvmcall(VMCALL_MAP_GPA, 0xFFFF_FFFF_F000, 1 << 40, 0, 0);
    tdvmcall(VMCALL_RDMSR, 0xDEAD_BEEF, 0, 0, 0);
    let nothing: u32;
    // SAFETY: a read of shared GPA space nobody maps: #VE, emulated as MMIO to nothing.
    unsafe {
        asm!("mov eax, [rdi]", in("rdi") SHARED_WINDOW + 0x3FF0_0000, out("eax") nothing,
            options(nostack));
    }
    print("td-probe: hostile: MMIO to nothing read ");
    print_hex(u64::from(nothing));
    print("\n");
    // An exit storm: port writes and hypervisor CPUID leaves as fast as the guest can.
    for i in 0..20_000u32 {
        out_byte(0x80, i as u8);
        cpuid(0x4000_0000 | (i & 0xFF));
    }
    print("td-probe: hostile: storm done\n");
    // Accepting memory the TD does not have: the host may end the TD here.
    accept(0x7FFF_FFFF_F000, 0);
}

/// Whether this is the hostile variant.
fn hostile_mode() -> bool {
    // SAFETY: reads the flag byte the packer sets.
    unsafe { core::ptr::read_volatile(&raw const MODE) != 0 }
}

#[unsafe(no_mangle)]
extern "C" fn probe_main() -> ! {
    load_idt();
    print("td-probe: started\n");
    checks();
    let n = CHECKS.load(Ordering::Relaxed);
    print("td-probe: all ");
    out_byte(0x3F8, b'0' + (n / 10) as u8);
    out_byte(0x3F8, b'0' + (n % 10) as u8);
    print(" checks passed\n");
    if hostile_mode() {
        hostile();
    }
    // A triple fault: no IDT, then a breakpoint.
    let empty: [u16; 5] = [0; 5];
    // SAFETY: ends the TD on purpose.
    unsafe { asm!("lidt [{}]", "int3", in(reg) &empty, options(nostack)) };
    loop {
        tdvmcall(VMCALL_FATAL, 0x7DFE, 0, 0, 0);
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {
        tdvmcall(VMCALL_FATAL, 0x7DFF, 0, 0, 0);
    }
}
