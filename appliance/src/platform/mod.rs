//! Everything that touches firmware or hardware: the serial port, the TSC, the firmware timer,
//! the NIC (SNP), random numbers (RDSEED/RDRAND, the RNG protocol), the configuration file
//! on the boot medium or the PXE boot server, the global heap, TD memory by physical address,
//! TDX detection and the application processors (MP Services). This is the only place with
//! `unsafe`; every block says why it is sound.

pub mod clock;
pub mod config_file;
pub mod heap;
pub mod logger;
pub mod mp;
pub mod phys;
pub mod rng;
pub mod serial;
pub mod snp;
pub mod svm;
pub mod tdx_detect;
pub mod timer;
pub mod wake;
