//! Platform-independent logic of the appliance, unit-tested on the host.
//!
//! The UEFI binary (`src/main.rs` and its `platform` modules) does the firmware calls; what can
//! be decided without firmware lives here: the TSC clock arithmetic ([`clock`]), the adaptive
//! idle policy of the main loop ([`idle`]), the log line format ([`logfmt`]), the transmit buffer
//! bookkeeping for the non-copying SNP driver ([`tx_ring`]) and the "listening" report
//! ([`startup`]).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod clock;
pub mod idle;
pub mod logfmt;
pub mod startup;
pub mod tx_ring;
