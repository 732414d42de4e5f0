//! `cargo xtask`: builds the appliance image, runs it in QEMU, runs every test.
//! See [`appliance_image::cli::USAGE`].

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    ExitCode::from(appliance_image::cli::main_with_args(&args))
}
