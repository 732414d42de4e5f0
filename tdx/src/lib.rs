//! TDX host runtime.
//!
//! * [`abi`]: the TDX module 1.5 host ABI as data (leaves, statuses, operand IDs, S-EPT states,
//!   address newtypes).
//! * [`seamcall`]: the one trait every SEAMCALL goes through, with typed wrappers.
//! * [`tdvf`]: TDVF firmware parsing, TD memory layout, build plan, expected MRTD.
//! * [`hob`]: the TD HOB handed to TDVF.
//! * [`measure`]: the MRTD hash (PAGE.ADD / MR.EXTEND block sequence).
#![no_std]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod abi;
pub mod hob;
pub mod measure;
pub mod phys;
pub mod seamcall;
pub mod tdvf;
