//! Where things are: the workspace root, the cargo target directory and the image layout in it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The Rust target the appliance is built for.
pub const UEFI_TARGET: &str = "x86_64-unknown-uefi";

/// Paths of the workspace this tool was built from.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The workspace root (where the root `Cargo.toml` is).
    pub root: PathBuf,
    /// Cargo's target directory (`$CARGO_TARGET_DIR`, else `<root>/target`).
    pub target_dir: PathBuf,
}

impl Workspace {
    /// Locates the workspace this crate lives in and the target directory cargo uses for it.
    pub fn locate() -> Self {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest_dir
            .parent()
            .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf);
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => {
                let dir = PathBuf::from(dir);
                if dir.is_absolute() {
                    dir
                } else {
                    root.join(dir)
                }
            }
            _ => root.join("target"),
        };
        Self { root, target_dir }
    }

    /// The `.efi` file cargo produces for a release build of the appliance.
    pub fn built_efi(&self) -> PathBuf {
        self.target_dir
            .join(UEFI_TARGET)
            .join("release")
            .join("appliance.efi")
    }

    /// Directory for everything this tool lays out: `<target>/appliance`.
    pub fn appliance_dir(&self) -> PathBuf {
        self.target_dir.join("appliance")
    }

    /// The ESP directory that QEMU boots from (`<target>/appliance/esp`).
    pub fn esp_dir(&self) -> PathBuf {
        self.appliance_dir().join("esp")
    }

    /// `disk.img` written by `cargo xtask image` (`<target>/appliance/disk.img`).
    pub fn disk_image(&self) -> PathBuf {
        self.appliance_dir().join("disk.img")
    }

    /// The netboot directory written by `cargo xtask image` (`<target>/appliance/netboot`).
    pub fn netboot_dir(&self) -> PathBuf {
        self.appliance_dir().join("netboot")
    }

    /// Directory for per-QEMU-instance files (private firmware variables, ESP copy).
    pub fn instances_dir(&self) -> PathBuf {
        self.appliance_dir().join("instances")
    }
}

/// The cargo binary to run nested builds with: `$CARGO` when run by cargo, else `cargo`.
pub fn cargo_binary() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// Path of the boot loader inside an ESP directory (`EFI/BOOT/BOOTX64.EFI`).
pub fn esp_boot_file(esp_dir: &Path) -> PathBuf {
    esp_dir.join("EFI").join("BOOT").join("BOOTX64.EFI")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_under_the_target_dir() {
        let ws = Workspace {
            root: PathBuf::from("/w"),
            target_dir: PathBuf::from("/w/target"),
        };
        assert_eq!(
            ws.built_efi(),
            PathBuf::from("/w/target/x86_64-unknown-uefi/release/appliance.efi")
        );
        assert_eq!(ws.esp_dir(), PathBuf::from("/w/target/appliance/esp"));
        assert_eq!(
            esp_boot_file(&ws.esp_dir()),
            PathBuf::from("/w/target/appliance/esp/EFI/BOOT/BOOTX64.EFI")
        );
    }

    #[test]
    fn locate_finds_the_root_manifest() {
        let ws = Workspace::locate();
        assert!(ws.root.join("Cargo.toml").is_file());
        assert!(ws.root.join("image").is_dir());
    }
}
