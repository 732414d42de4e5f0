//! `cargo xtask`: builds the appliance image, runs it in QEMU, runs every test.
//! See [`appliance_image::cli::USAGE`]; additionally `cargo xtask bench <name>` runs
//! `cargo bench -p tdx-runtime --bench <name>` (`td`, `sept`) and streams its output, and
//! `cargo xtask bench api` boots the image and measures the management API
//! ([`appliance_image::bench_api`]), `cargo xtask bench guest` boots Debian's OVMF.fd as a TD
//! and directly ([`appliance_image::bench_guest`]), `cargo xtask bench linux` does the same
//! with Debian's cloud kernel ([`appliance_image::bench_linux`]).

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, name] = args.as_slice()
        && cmd == "bench"
    {
        if name == "api" {
            return bench_api();
        }
        if name == "guest" {
            return bench_guest();
        }
        if name == "linux" {
            return bench_linux();
        }
        return bench(name);
    }
    ExitCode::from(appliance_image::cli::main_with_args(&args))
}

/// `cargo xtask bench api`: boot the image, measure the API over the forwarded port.
fn bench_api() -> ExitCode {
    let ws = appliance_image::workspace::Workspace::locate();
    match appliance_image::bench_api::run(&ws) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask bench api: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask bench guest`: Debian's OVMF.fd as a TD against a direct QEMU boot.
fn bench_guest() -> ExitCode {
    let ws = appliance_image::workspace::Workspace::locate();
    match appliance_image::bench_guest::run(&ws) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask bench guest: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask bench linux`: Debian's cloud kernel as a TD against a direct QEMU boot.
fn bench_linux() -> ExitCode {
    let ws = appliance_image::workspace::Workspace::locate();
    match appliance_image::bench_linux::run(&ws) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask bench linux: {err}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo bench -p tdx-runtime --bench <name>`, inheriting stdout/stderr.
fn bench(name: &str) -> ExitCode {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| String::from("cargo"));
    match Command::new(cargo)
        .args(["bench", "-p", "tdx-runtime", "--bench", name])
        .status()
    {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask bench: cannot run cargo: {e}");
            ExitCode::FAILURE
        }
    }
}
