//! The appliance's UEFI entry point.
//!
//! Built for `x86_64-unknown-uefi` this is the whole appliance: it never exits boot services,
//! logs to the serial console, drives the first NIC through the Simple Network Protocol and
//! serves the management API from one poll loop. Built for the host (so that `cargo test
//! --workspace` and clippy cover the crate) it is an empty program; the testable logic is in
//! the library.
#![cfg_attr(target_os = "uefi", no_std, no_main)]

#[cfg(target_os = "uefi")]
extern crate alloc;

#[cfg(target_os = "uefi")]
mod platform;

#[cfg(target_os = "uefi")]
mod boot;

#[cfg(target_os = "uefi")]
mod host_init;

/// Host builds: nothing to run (see the crate documentation).
#[cfg(not(target_os = "uefi"))]
fn main() {}
