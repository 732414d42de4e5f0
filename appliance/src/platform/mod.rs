//! Everything that touches firmware or hardware: the serial port, the TSC, the firmware timer,
//! the NIC (SNP) and the random-number protocol. This is the only place with `unsafe`; every
//! block says why it is sound.

pub mod clock;
pub mod logger;
pub mod rng;
pub mod serial;
pub mod snp;
pub mod timer;
