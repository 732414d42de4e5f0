//! TDX host runtime.
//!
//! * [`abi`]: the TDX module 1.5 host ABI as data (leaves, statuses, operand IDs, S-EPT states,
//!   address newtypes).
//! * [`seamcall`]: the one trait every SEAMCALL goes through, with typed wrappers.
//! * [`tdvf`]: TDVF firmware parsing, TD memory layout, build plan, expected MRTD.
//! * [`hob`]: the TD HOB handed to TDVF.
//! * [`measure`]: the MRTD hash (PAGE.ADD / MR.EXTEND block sequence).
//! * [`pool`]: the TD memory pool (4 KiB pages, 2 MiB extents, contiguous runs, accounting).
//! * [`td`]: TD lifecycle state machine.
//! * [`sept`]: the S-EPT manager (lock-free mirror, fault and unmap paths, huge pages).
//! * [`host`]: the runtime façade ([`host::Host`]): module bring-up, images, TDs, vCPU
//!   runners, jobs stepped from the main loop.
#![no_std]
// `unsafe` lives only in `hw` (the `seamcall` instruction and MSR reads).
#![deny(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

extern crate alloc;
#[cfg(any(test, feature = "testing"))]
extern crate std;

pub mod abi;
pub mod emu;
pub mod hob;
pub mod host;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub mod hw;
pub mod measure;
pub mod phys;
pub mod pool;
pub mod seamcall;
pub mod sept;
pub mod td;
pub mod tdvf;
