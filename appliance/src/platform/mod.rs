//! Everything that touches firmware or hardware: the serial port, the TSC, the firmware timer,
//! the NIC (SNP), random numbers (RDSEED/RDRAND, the RNG protocol), the configuration file
//! on the boot medium or the PXE boot server, the global heap, TD memory by physical address,
//! TDX detection, the #UD/#GP fixup of a faulting SEAMCALL and the application processors (MP
//! Services). This is the only place with `unsafe`; every block says why it is sound.

pub mod clock;
pub mod config_file;
pub mod heap;
pub mod logger;
pub mod mp;
pub mod phys;
pub mod rng;
pub mod seam_fault;
pub mod serial;
pub mod snp;
pub mod svm;
pub mod tdx_detect;
pub mod tdx_hardware;
pub mod timer;
pub mod tls_identity;
pub mod wake;

use core::ffi::c_void;

use uefi::boot::{self, OpenProtocolAttributes, OpenProtocolParams, ScopedProtocol};
use uefi::proto::{ProtocolPointer, unsafe_protocol};
use uefi::{Status, StatusExt};

/// Opens the architectural protocol `P` (PI specification volume 2: CPU, Timer, …) without
/// taking ownership, as its users besides the DXE core do.
pub fn arch_protocol<P: ProtocolPointer + ?Sized>() -> uefi::Result<ScopedProtocol<P>> {
    let handle = boot::get_handle_for_protocol::<P>()?;
    // SAFETY: GetProtocol opens without taking ownership, right for an architectural
    // protocol the DXE core itself uses; it is never uninstalled while boot services run.
    unsafe {
        boot::open_protocol::<P>(
            OpenProtocolParams {
                handle,
                agent: boot::image_handle(),
                controller: None,
            },
            OpenProtocolAttributes::GetProtocol,
        )
    }
}

/// `EFI_CPU_ARCH_PROTOCOL`'s function table up to `RegisterInterruptHandler` (PI
/// specification volume 2).
#[derive(Debug)]
#[repr(C)]
struct CpuArchFunctions {
    flush_data_cache: *const c_void,
    enable_interrupt: *const c_void,
    disable_interrupt: *const c_void,
    get_interrupt_state: *const c_void,
    init: *const c_void,
    /// `RegisterInterruptHandler(This, InterruptType, InterruptHandler)`.
    register_interrupt_handler: unsafe extern "efiapi" fn(
        *const CpuArchFunctions,
        isize,
        Option<unsafe extern "efiapi" fn(isize, *mut c_void)>,
    ) -> Status,
}

/// The CPU Architectural Protocol.
#[derive(Debug)]
#[repr(transparent)]
#[unsafe_protocol("26baccb1-6f42-11d4-bce7-0080c73c8881")]
struct CpuArch(CpuArchFunctions);

/// An interrupt or exception handler as the CPU Architectural Protocol calls it: the vector
/// and the `EFI_SYSTEM_CONTEXT` (a pointer to the interrupted CPU's saved registers).
pub type InterruptHandler = unsafe extern "efiapi" fn(isize, *mut c_void);

/// Registers `handler` for `vector` in the firmware's IDT, which MP Services gives the
/// application processors too (`EFI_CPU_ARCH_PROTOCOL.RegisterInterruptHandler`). Fails if
/// a handler is registered already.
///
/// # Safety
/// `handler` must be sound to run on any CPU, at any point where that vector can arrive,
/// for the rest of the program: it may not take locks the interrupted code may hold, call
/// firmware services or allocate.
pub unsafe fn register_interrupt_handler(vector: u8, handler: InterruptHandler) -> uefi::Result {
    let cpu = arch_protocol::<CpuArch>()?;
    // SAFETY: the table has the protocol's layout; the caller vouches for the handler, a
    // plain function that lives for the program's lifetime.
    unsafe { (cpu.0.register_interrupt_handler)(&cpu.0, isize::from(vector), Some(handler)) }
        .to_result()
}
