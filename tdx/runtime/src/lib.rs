//! The TDX host runtime: everything the host does with a TDX module, the same code for the
//! hardware module and the software module.
//!
//! It reaches a module only through [`tdx_abi::seamcall::TdxModule`] (typed SEAMCALL
//! wrappers over the raw trait) and, for what only the software module offers, the
//! `tdx_abi::software::SoftwareModuleHooks`; it does not depend on either backend crate.
//!
//! * [`tdvf`]: TDVF firmware parsing, TD memory layout, build plan, expected MRTD.
//! * [`hob`]: the TD HOB handed to TDVF.
//! * [`pool`]: the TD memory pool (4 KiB pages, 2 MiB extents, contiguous runs, accounting).
//! * [`td`]: TD lifecycle state machine.
//! * [`sept`]: the S-EPT manager (lock-free mirror, fault and unmap paths, huge pages).
//! * [`devices`]: the device seam (port-I/O and MMIO buses, the device trait) and the
//!   devices a TD has (its console UART).
//! * [`topology`]: packages, cores and SMT threads from x2APIC IDs and CPUID leaf 0x1F/0xB.
//! * [`host`]: the runtime façade ([`host::Host`]): module bring-up, images, TDs, vCPU
//!   runners, jobs stepped from the main loop.
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

extern crate alloc;
#[cfg(any(test, feature = "testing"))]
extern crate std;

pub mod acpi;
pub mod devices;
pub mod hob;
pub mod host;
pub mod linux;
pub mod pool;
pub mod sept;
pub mod td;
pub mod tdvf;
pub mod topology;
