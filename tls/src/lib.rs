//! TLS for the management API: [`TlsService`] wraps the plaintext HTTP [`net::Service`] in
//! TLS 1.3/1.2, using rustls' unbuffered (sans-IO) server API
//! (<https://docs.rs/rustls/0.23/rustls/unbuffered/>) without `std`, over the pure-Rust
//! RustCrypto provider (`rustls-rustcrypto`; no C code, builds for `x86_64-unknown-uefi`).
//!
//! Module map:
//! - [`identity`]: [`TlsIdentity`] (certificate chain + key, from PEM, self-signed P-256
//!   generation, persistence bytes) and its SHA-256 [`Fingerprint`];
//! - [`config`]: [`server_config`], the rustls configuration (versions, [`CIPHER_SUITES`]);
//! - [`service`]: [`TlsService`] / [`TlsConn`], the TLS layer between the TCP server and the
//!   HTTP service, and [`TlsStats`];
//! - [`random`]: [`set_random_source`], the entropy source on UEFI;
//! - [`error`]: [`IdentityError`], what is wrong with an identity.
//!
//! On `x86_64-unknown-uefi` the workspace's `.cargo/config.toml` selects the portable
//! backends of the RustCrypto crates (the target has no SSE).
#![no_std]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod certgen;
pub mod config;
pub mod error;
pub mod identity;
pub mod random;
pub mod service;

#[cfg(test)]
mod testkit;

pub use config::{CIPHER_SUITES, FnTimeProvider, provider, server_config};
pub use error::IdentityError;
pub use identity::{Fingerprint, TlsIdentity, certificate_pem};
pub use random::set_random_source;
pub use service::{TlsConn, TlsService, TlsStats};

/// The rustls version this crate is built against (for [`rustls::ServerConfig`] and friends).
pub use rustls;
