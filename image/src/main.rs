//! `cargo xtask`: builds the appliance image, runs it in QEMU, runs every test.
//! See [`appliance_image::cli::USAGE`]; additionally `cargo xtask bench <name>` runs
//! `cargo bench -p tdx-runtime --bench <name>` (`td`, `sept`) and streams its output, and
//! `cargo xtask bench api` boots the image and measures the management API
//! ([`appliance_image::bench_api`]), `cargo xtask bench guest` boots Debian's OVMF.fd as a TD
//! and directly ([`appliance_image::bench_guest`]), `cargo xtask bench linux` does the same
//! with Debian's cloud kernel ([`appliance_image::bench_linux`]).

use std::process::{Command, ExitCode};

/// A bench that boots the image: its name and its runner.
type ImageBench = (
    &'static str,
    fn(&appliance_image::workspace::Workspace) -> appliance_image::error::Result<()>,
);

/// `cargo xtask bench <name>` for the benches that boot the image: the API, Debian's OVMF.fd
/// as a TD against a direct QEMU boot, and Debian's cloud kernel likewise.
const IMAGE_BENCHES: [ImageBench; 3] = [
    ("api", appliance_image::bench_api::run),
    ("guest", appliance_image::bench_guest::run),
    ("linux", appliance_image::bench_linux::run),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, name] = args.as_slice()
        && cmd == "bench"
    {
        return match IMAGE_BENCHES.iter().find(|(n, _)| n == name) {
            Some((name, run)) => image_bench(name, *run),
            None => bench(name),
        };
    }
    ExitCode::from(appliance_image::cli::main_with_args(&args))
}

/// Runs the image bench `name`; its report goes to stdout, an error to stderr.
fn image_bench(
    name: &str,
    run: fn(&appliance_image::workspace::Workspace) -> appliance_image::error::Result<()>,
) -> ExitCode {
    let ws = appliance_image::workspace::Workspace::locate();
    match run(&ws) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask bench {name}: {err}");
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
