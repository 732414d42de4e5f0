//! The netboot directory: what a TFTP or HTTP boot server serves. `appliance.efi` (the boot
//! file), `appliance.toml` beside it (the appliance fetches it from the same directory over
//! TFTP at boot) and `README.txt`, the guide for dnsmasq PXE, UEFI HTTP boot and iPXE.

use std::fs;
use std::path::Path;

use crate::appconfig;
use crate::error::{ImageError, Result};

/// Name of the boot file in the netboot directory.
pub const BOOT_FILE: &str = "appliance.efi";

/// The netboot guide (`docs/netboot.md`), copied into the directory as `README.txt`.
pub const GUIDE: &str = include_str!("../../docs/netboot.md");

/// Lays out `dir` (created; stale files replaced) with `efi` as [`BOOT_FILE`], `config` as
/// `appliance.toml` (if any) and the guide.
pub fn layout_netboot(efi: &Path, config: Option<&str>, dir: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|source| ImageError::Io {
        action: "create directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let boot_file = dir.join(BOOT_FILE);
    fs::copy(efi, &boot_file).map_err(|source| ImageError::Io {
        action: "copy the image to",
        path: boot_file,
        source,
    })?;
    if let Some(config) = config {
        appconfig::write_into(dir, config)?;
    }
    let guide = dir.join("README.txt");
    fs::write(&guide, GUIDE).map_err(|source| ImageError::Io {
        action: "write",
        path: guide,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_holds_boot_file_config_and_guide() {
        let dir = std::env::temp_dir().join(format!("netboot-{}", std::process::id()));
        let efi = std::env::temp_dir().join(format!("netboot-{}.efi", std::process::id()));
        fs::write(&efi, b"MZ").expect("efi");
        fs::create_dir_all(&dir).expect("dir");
        fs::write(dir.join("stale"), b"old").expect("stale");
        layout_netboot(&efi, Some("[api]\n"), &dir).expect("layout");
        assert_eq!(fs::read(dir.join("appliance.efi")).expect("efi"), b"MZ");
        assert_eq!(
            fs::read_to_string(dir.join("appliance.toml")).expect("config"),
            "[api]\n"
        );
        let guide = fs::read_to_string(dir.join("README.txt")).expect("guide");
        for topic in ["dnsmasq", "HTTP boot", "iPXE"] {
            assert!(guide.contains(topic), "guide covers {topic}");
        }
        assert!(!dir.join("stale").exists());
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_file(&efi);
    }
}
