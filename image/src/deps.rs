//! Making sure QEMU and OVMF are installed (Debian/Ubuntu packages `qemu-system-x86` and `ovmf`),
//! and the command-line TLS clients the end-to-end tests use (`curl`, `openssl`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::run_command;
use crate::error::{ImageError, Result};

/// The QEMU binary looked up in `PATH`.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// OVMF code (read-only flash) as installed by Debian's `ovmf` package.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF variable store template; every QEMU instance gets a private copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Command-line TLS clients the end-to-end tests check the API's HTTPS with (independent
/// TLS implementations: curl's and OpenSSL's).
pub const TLS_CLIENTS: [&str; 2] = ["curl", "openssl"];
/// What a root user runs to install everything.
pub const INSTALL_COMMAND: &str = "apt-get update && apt-get install -y --no-install-recommends qemu-system-x86 ovmf curl openssl";

/// The emulator and firmware files QEMU is booted with.
#[derive(Debug, Clone)]
pub struct Firmware {
    /// Path of `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// OVMF code flash image.
    pub ovmf_code: PathBuf,
    /// OVMF variable store template.
    pub ovmf_vars: PathBuf,
}

/// Finds an executable in `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Returns the installed QEMU and OVMF, or the name of the first thing missing.
pub fn find() -> Result<Firmware, String> {
    let qemu = find_in_path(QEMU_BINARY).ok_or_else(|| QEMU_BINARY.to_string())?;
    for file in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(file).is_file() {
            return Err(file.to_string());
        }
    }
    if let Some(missing) = TLS_CLIENTS.iter().find(|tool| find_in_path(tool).is_none()) {
        return Err((*missing).to_string());
    }
    Ok(Firmware {
        qemu,
        ovmf_code: PathBuf::from(OVMF_CODE),
        ovmf_vars: PathBuf::from(OVMF_VARS),
    })
}

/// True when this process runs as root (owner of `/proc/self` is uid 0).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// Returns QEMU and OVMF, installing them with apt-get first when they are missing and this
/// process is root; otherwise fails with the exact command to run.
pub fn ensure() -> Result<Firmware> {
    let missing = match find() {
        Ok(firmware) => return Ok(firmware),
        Err(missing) => missing,
    };
    if !running_as_root() {
        return Err(ImageError::MissingTools {
            command: INSTALL_COMMAND,
        });
    }
    eprintln!("xtask: {missing} is missing; installing QEMU, OVMF, curl and openssl with apt-get");
    install_with_apt()?;
    find().map_err(|missing| ImageError::InstallIncomplete { missing })
}

fn apt_get(args: &[&str]) -> Command {
    let mut command = Command::new("apt-get");
    command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    command
}

/// `apt-get update` then `apt-get install`; the install is retried once (it has been seen to
/// fail mid-way on a fresh machine and succeed on the second attempt).
fn install_with_apt() -> Result<()> {
    run_command(&mut apt_get(&["update"]))?;
    let install = [
        "install",
        "-y",
        "--no-install-recommends",
        "qemu-system-x86",
        "ovmf",
        "curl",
        "openssl",
    ];
    match run_command(&mut apt_get(&install)) {
        Ok(()) => Ok(()),
        Err(first) => {
            eprintln!("xtask: {first}; retrying once");
            run_command(&mut apt_get(&install))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_in_path_finds_sh_and_not_nonsense() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("definitely-not-a-program-4711").is_none());
    }

    #[test]
    fn install_command_matches_the_packages_installed() {
        assert!(INSTALL_COMMAND.contains("qemu-system-x86 ovmf"));
        assert!(INSTALL_COMMAND.starts_with("apt-get update"));
    }
}
