//! Everything that touches firmware or hardware: the serial port, the TSC, the firmware timer,
//! the NIC (SNP), random numbers (RDSEED/RDRAND, the RNG protocol) and the configuration file
//! on the boot medium or the PXE boot server. This is the only place with `unsafe`; every
//! block says why it is sound.

pub mod clock;
pub mod config_file;
pub mod logger;
pub mod rng;
pub mod serial;
pub mod snp;
pub mod timer;
