//! Platform-independent logic of the appliance, unit-tested on the host.
//!
//! The UEFI binary (`src/main.rs` and its `platform` modules) does the firmware calls; what can
//! be decided without firmware lives here: the TSC clock arithmetic ([`clock`]), the adaptive
//! idle policy of the main loop ([`idle`]), the log line format ([`logfmt`]), the transmit buffer
//! bookkeeping for the non-copying SNP driver ([`tx_ring`]), the "listening" report
//! ([`startup`]), the configuration file ([`config`]) and where to find it ([`bootsource`]), the adapter that serves the management API
//! over the TCP server ([`service`]), one step of the main loop ([`runtime`]) and a gate for
//! rate-limited log lines ([`ratelimit`]).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod bootsource;
pub mod clock;
pub mod config;
pub mod idle;
pub mod logfmt;
pub mod ratelimit;
pub mod runtime;
pub mod service;
pub mod startup;
pub mod tx_ring;
