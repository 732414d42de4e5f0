//! TDX host runtime.
//!
//! * [`abi`]: the TDX module 1.5 host ABI as data (leaves, statuses, operand IDs, S-EPT states,
//!   address newtypes).
//! * [`seamcall`]: the one trait every SEAMCALL goes through, with typed wrappers.
#![no_std]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod abi;
pub mod phys;
pub mod seamcall;
