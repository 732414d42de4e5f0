//! Host-side tooling for the appliance image.
//!
//! Builds the UEFI application and lays out a boot directory (ESP) for it ([`build`]), writes
//! the images operators deploy: a GPT disk image ([`disk`]) and a netboot directory
//! ([`netboot`]) with the checked configuration ([`appconfig`]), writes the disk image to a
//! block device ([`flash`]), makes sure
//! QEMU and OVMF are installed ([`deps`]), boots the image in QEMU with user networking and waits
//! until the management API answers ([`qemu`]), and speaks just enough HTTP/1.1 to check it
//! ([`http`]). The `xtask` binary ([`cli`]) and the end-to-end tests (`tests/`) both use this
//! library, so QEMU is launched in exactly one place.

pub mod appconfig;
pub mod bench_api;
pub mod bench_guest;
pub mod bench_linux;
pub mod build;
pub mod cli;
pub mod deps;
pub mod disk;
pub mod error;
pub mod flash;
pub mod hostile;
pub mod http;
pub mod linux_guest;
pub mod netboot;
pub mod qemu;
pub mod serial;
pub mod workspace;

pub use error::{ImageError, Result};
