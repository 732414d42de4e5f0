//! Building the appliance: `cargo build --release -p appliance --target x86_64-unknown-uefi`,
//! then the ESP layout `<target>/appliance/esp/EFI/BOOT/BOOTX64.EFI`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{ImageError, Result};
use crate::workspace::{UEFI_TARGET, Workspace, cargo_binary, esp_boot_file};

/// A built appliance image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The UEFI application as cargo produced it.
    pub efi: PathBuf,
    /// The ESP directory holding it as `EFI/BOOT/BOOTX64.EFI`.
    pub esp_dir: PathBuf,
}

impl BuiltImage {
    /// The boot file inside the ESP.
    pub fn boot_file(&self) -> PathBuf {
        esp_boot_file(&self.esp_dir)
    }
}

/// What `cargo xtask image` writes under `<target>/appliance/`.
#[derive(Debug, Clone)]
pub struct DeployImages {
    /// `appliance.efi`.
    pub efi: PathBuf,
    /// `disk.img`.
    pub disk: PathBuf,
    /// `netboot/`.
    pub netboot: PathBuf,
}

/// Writes the deployable images of `image` with `config` as their `appliance.toml`.
pub fn write_deploy_images(
    ws: &Workspace,
    image: &BuiltImage,
    config: &str,
) -> Result<DeployImages> {
    let images = DeployImages {
        efi: ws.appliance_dir().join("appliance.efi"),
        disk: ws.disk_image(),
        netboot: ws.netboot_dir(),
    };
    fs::create_dir_all(ws.appliance_dir()).map_err(|source| ImageError::Io {
        action: "create directory",
        path: ws.appliance_dir(),
        source,
    })?;
    fs::copy(&image.efi, &images.efi).map_err(|source| ImageError::Io {
        action: "copy the image to",
        path: images.efi.clone(),
        source,
    })?;
    crate::disk::write_disk_image(&image.efi, Some(config), &images.disk)?;
    crate::netboot::layout_netboot(&image.efi, Some(config), &images.netboot)?;
    Ok(images)
}

/// Runs a command to completion, turning failure into [`ImageError`].
pub fn run_command(command: &mut Command) -> Result<()> {
    let text = describe(command);
    let status = command.status().map_err(|source| ImageError::Spawn {
        program: command.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::CommandFailed {
            command: text,
            status,
        })
    }
}

/// A printable form of a command line.
pub fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Makes sure rustup has the UEFI target installed for the workspace's toolchain.
///
/// `rust-toolchain.toml` lists the target, but rustup installs it only when automatic installs
/// are on (`RUSTUP_AUTO_INSTALL=0` turns them off, as on a fresh CI machine), so every command
/// that builds or lints for the target calls this first. Without rustup (a distribution
/// toolchain) nothing is done and cargo reports a missing target itself.
pub fn ensure_uefi_target(ws: &Workspace) -> Result<()> {
    ensure_rustup_target(ws, UEFI_TARGET)
}

/// The target the end-to-end tests' own TD guest (`tests/guests/td-probe`) builds for.
pub const TD_GUEST_TARGET: &str = "x86_64-unknown-none";

/// Builds the end-to-end tests' TD guest (a crate of its own, not in the workspace) and
/// returns its ELF file.
pub fn build_td_probe(ws: &Workspace) -> Result<PathBuf> {
    ensure_rustup_target(ws, TD_GUEST_TARGET)?;
    let dir = ws.root.join("tests/guests/td-probe");
    let target_dir = ws.root.join("target/td-probe");
    run_command(
        Command::new(cargo_binary())
            .args(["build", "--release", "--target-dir"])
            .arg(&target_dir)
            // Its `.cargo/config.toml` (target, linker script) applies from its directory.
            .current_dir(&dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS"),
    )?;
    let elf = target_dir.join(TD_GUEST_TARGET).join("release/td-probe");
    if elf.is_file() {
        Ok(elf)
    } else {
        Err(ImageError::MissingImage(elf))
    }
}

/// Makes sure rustup has `target` installed for the workspace's toolchain (see
/// [`ensure_uefi_target`]).
pub fn ensure_rustup_target(ws: &Workspace, target: &str) -> Result<()> {
    let output = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(&ws.root)
        .output();
    let Ok(output) = output else {
        return Ok(());
    };
    let installed = String::from_utf8_lossy(&output.stdout);
    if installed.lines().any(|line| line.trim() == target) {
        return Ok(());
    }
    eprintln!("xtask: adding the rustup target {target}");
    run_command(
        Command::new("rustup")
            .args(["target", "add", target])
            .current_dir(&ws.root),
    )
}

/// Builds the appliance in release mode for UEFI and lays out the ESP directory.
pub fn build_appliance(ws: &Workspace) -> Result<BuiltImage> {
    ensure_uefi_target(ws)?;
    run_command(
        Command::new(cargo_binary())
            .args([
                "build",
                "--release",
                "--package",
                "appliance",
                "--target",
                UEFI_TARGET,
            ])
            .current_dir(&ws.root),
    )?;
    layout_esp(&ws.built_efi(), &ws.esp_dir())
}

/// Copies `efi` into `esp_dir` as `EFI/BOOT/BOOTX64.EFI`, the removable-media boot path that
/// OVMF boots without any boot entry.
pub fn layout_esp(efi: &Path, esp_dir: &Path) -> Result<BuiltImage> {
    if !efi.is_file() {
        return Err(ImageError::MissingImage(efi.to_path_buf()));
    }
    let boot_file = esp_boot_file(esp_dir);
    if let Some(dir) = boot_file.parent() {
        fs::create_dir_all(dir).map_err(|source| ImageError::Io {
            action: "create directory",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    fs::copy(efi, &boot_file).map_err(|source| ImageError::Io {
        action: "copy the image to",
        path: boot_file.clone(),
        source,
    })?;
    Ok(BuiltImage {
        efi: efi.to_path_buf(),
        esp_dir: esp_dir.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("appliance-image-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn layout_copies_the_efi_to_the_removable_media_path() {
        let dir = scratch_dir("layout");
        let efi = dir.join("app.efi");
        fs::write(&efi, b"MZ fake").expect("write");
        let built = layout_esp(&efi, &dir.join("esp")).expect("layout");
        assert_eq!(fs::read(built.boot_file()).expect("read"), b"MZ fake");
        assert!(built.boot_file().ends_with("EFI/BOOT/BOOTX64.EFI"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn layout_without_an_efi_is_an_error() {
        let dir = scratch_dir("missing");
        let err = layout_esp(&dir.join("nope.efi"), &dir.join("esp"));
        assert!(matches!(err, Err(ImageError::MissingImage(_))));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn describe_joins_program_and_args() {
        let mut command = Command::new("cargo");
        command.args(["build", "-p", "x"]);
        assert_eq!(describe(&command), "cargo build -p x");
    }
}
