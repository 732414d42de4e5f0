//! The one error type of the host tooling.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything that can go wrong while building, installing for or running the appliance image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A program could not be started at all (not installed, not executable).
    #[error("could not start `{program}`: {source}")]
    Spawn {
        /// The program that was started.
        program: String,
        /// Why it could not start.
        source: io::Error,
    },
    /// A program ran and exited unsuccessfully.
    #[error("`{command}` failed ({status})")]
    CommandFailed {
        /// The command line, for the message.
        command: String,
        /// Its exit status.
        status: ExitStatus,
    },
    /// A file or directory operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("copy", "create directory", ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// QEMU or OVMF is missing and could not be installed from here.
    #[error(
        "QEMU/OVMF are not installed and this user cannot install them; run as root: {command}"
    )]
    MissingTools {
        /// The command that installs them.
        command: &'static str,
    },
    /// Installing QEMU/OVMF with apt-get did not make them appear.
    #[error("installed QEMU/OVMF with apt-get but {missing} is still missing")]
    InstallIncomplete {
        /// The file that is still missing.
        missing: String,
    },
    /// The build finished but the expected output file does not exist.
    #[error("the appliance build did not produce {}", .0.display())]
    MissingImage(PathBuf),
    /// QEMU exited (crashed, or the guest reset/powered off) before the API was ready.
    #[error("QEMU exited before the API was ready ({status})")]
    QemuExited {
        /// QEMU's exit status.
        status: ExitStatus,
    },
    /// The API did not answer `GET /v1/health` with 200 in time.
    #[error("the API did not become ready within {0:?}")]
    ReadyTimeout(Duration),
    /// Waiting for the API was cancelled (Ctrl-C).
    #[error("cancelled")]
    Cancelled,
    /// A TCP connection to the appliance failed or timed out.
    #[error("talking to 127.0.0.1:{port}: {source}")]
    Network {
        /// The host port.
        port: u16,
        /// The socket error.
        source: io::Error,
    },
    /// The appliance sent something that is not a well-formed HTTP/1.1 response.
    #[error("malformed HTTP response: {0}")]
    BadResponse(&'static str),
    /// Writing the protective MBR of a disk image failed.
    #[error("disk image: protective MBR: {0}")]
    Mbr(gpt::mbr::MBRError),
    /// A GPT step of building or reading a disk image failed.
    #[error("disk image: {step}: {source}")]
    Gpt {
        /// What was being done.
        step: &'static str,
        /// The GPT library's error.
        source: gpt::GptError,
    },
    /// A FAT step of building or reading a disk image failed.
    #[error("disk image: {step}: {source}")]
    Fat {
        /// What was being done.
        step: &'static str,
        /// The FAT library's error.
        source: io::Error,
    },
    /// A disk image has no EFI System Partition.
    #[error("disk image: no EFI System Partition")]
    NoEsp,
    /// A configuration file (or the one composed from `--config` and `--token`) is invalid.
    #[error("invalid configuration {origin}:\n{errors}")]
    InvalidConfig {
        /// Which file, or "composed from --config/--token".
        origin: String,
        /// Every problem, one per line.
        errors: appliance::config::ConfigErrors,
    },
    /// `--token` is not a usable bearer token.
    #[error("--token: {0}")]
    InvalidToken(mgmt_api::TokenError),
    /// `cargo xtask flash` refused the target.
    #[error("refusing to flash {}: {reason}", device.display())]
    FlashRefused {
        /// The device path given.
        device: PathBuf,
        /// Why.
        reason: crate::flash::Refusal,
    },
    /// The operator did not confirm the flash.
    #[error("not confirmed; nothing was written")]
    NotConfirmed,
    /// What was read back from the device differs from the image.
    #[error("verification failed: {} differs from the image at byte {offset}", device.display())]
    VerifyFailed {
        /// The device.
        device: PathBuf,
        /// First differing byte.
        offset: u64,
    },
    /// No free TCP port could be reserved on 127.0.0.1.
    #[error("no free TCP port on 127.0.0.1: {0}")]
    NoFreePort(io::Error),
}

/// Result alias for this crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
