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

use uefi::boot::{self, OpenProtocolAttributes, OpenProtocolParams, ScopedProtocol};
use uefi::proto::ProtocolPointer;

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
