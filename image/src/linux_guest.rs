//! The Linux guest the end-to-end tests boot as a TD, from Debian's packages only: the
//! bookworm-backports cloud kernel (`linux-image-cloud-amd64`, 6.12, built with TDX guest
//! support) and `busybox-static` from bookworm, fetched with `apt-get download` and cached
//! under `target/linux-guest/` (the download runs once per clean tree). Adding the
//! bookworm-backports source needs root, as installing QEMU does.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::build::run_command;
use crate::error::{ImageError, Result};
use crate::workspace::Workspace;

/// The meta package whose dependency names the kernel.
const KERNEL_META: &str = "linux-image-cloud-amd64";
/// The backports suite the kernel comes from.
const BACKPORTS: &str = "bookworm-backports";
/// Where the backports source is written when apt has none.
const SOURCES_FILE: &str = "/etc/apt/sources.list.d/tdx-appliance-backports.sources";

/// The guest's files.
#[derive(Debug, Clone)]
pub struct LinuxGuest {
    /// The kernel (a bzImage with an EFI stub).
    pub kernel: PathBuf,
    /// A statically linked busybox for the initramfs.
    pub busybox: PathBuf,
    /// The drivers the test's init loads, each built as a module in Debian's cloud kernel
    /// and decompressed for busybox's `insmod`, in load order: `(file name, path)` for
    /// [`GUEST_MODULES`].
    pub modules: Vec<(&'static str, PathBuf)>,
}

/// The kernel modules the test's init loads (paths under `lib/modules/<version>/`): input
/// events (evdev), for the power button; the ACPI power button; the virtio disk.
pub const GUEST_MODULES: [&str; 3] = [
    "kernel/drivers/input/evdev.ko",
    "kernel/drivers/acpi/button.ko",
    "kernel/drivers/block/virtio_blk.ko",
];

/// Installs the Debian package `package` when `program` is missing (`xz`, `mke2fs`: both
/// in every Debian install, but a minimal container may lack them).
fn ensure_tool(program: &str, package: &str) -> Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("xtask: installing {package} for {program}");
        run_command(Command::new("apt-get").args(["install", "-y", package]))?;
    }
    Ok(())
}

/// The kernel module at `relative` (under the kernel package's `lib/modules/<version>/`),
/// xz-decompressed to `out` once.
fn decompressed_module(dir: &Path, relative: &str, out: &Path) -> Result<PathBuf> {
    if out.is_file() {
        return Ok(out.to_path_buf());
    }
    let modules = dir.join("root/lib/modules");
    let version = std::fs::read_dir(&modules)
        .map_err(io("list", &modules))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .next()
        .ok_or(ImageError::BadResponse("the kernel package has no modules"))?;
    let packed = version.join(format!("{relative}.xz"));
    ensure_tool("xz", "xz-utils")?;
    let output = Command::new("xz")
        .arg("-dc")
        .arg(&packed)
        .output()
        .map_err(|source| ImageError::Spawn {
            program: "xz".into(),
            source,
        })?;
    if !output.status.success() {
        return Err(ImageError::BadResponse(
            "xz could not decompress a kernel module",
        ));
    }
    std::fs::write(out, &output.stdout).map_err(io("write", out))?;
    Ok(out.to_path_buf())
}

/// A raw ext2 disk image of `size_mib` MiB holding `files` (`(name, contents)` in its root
/// directory), made with `mke2fs -d` in `scratch` (a directory the caller owns).
pub fn ext2_image(scratch: &Path, files: &[(&str, &[u8])], size_mib: u32) -> Result<Vec<u8>> {
    ensure_tool("mke2fs", "e2fsprogs")?;
    let tree = scratch.join("tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree).map_err(io("create directory", &tree))?;
    for (name, contents) in files {
        let path = tree.join(name);
        std::fs::write(&path, contents).map_err(io("write", &path))?;
    }
    let image = scratch.join("disk.img");
    let _ = std::fs::remove_file(&image);
    run_command(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext2", "-d"])
            .arg(&tree)
            .arg(&image)
            .arg(format!("{size_mib}M")),
    )?;
    std::fs::read(&image).map_err(io("read", &image))
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether apt knows the backports suite already.
fn backports_configured() -> bool {
    Command::new("apt-cache")
        .args(["policy", KERNEL_META])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BACKPORTS))
}

/// The versioned kernel package the backports meta package depends on.
fn kernel_package() -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", &format!("{KERNEL_META}/{BACKPORTS}")])
        .output()
        .map_err(|source| ImageError::Spawn {
            program: "apt-cache".into(),
            source,
        })?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let name = l.trim().strip_prefix("Depends: ")?;
            name.starts_with("linux-image-").then(|| name.to_string())
        })
        .ok_or(ImageError::BadResponse(
            "no kernel package behind linux-image-cloud-amd64",
        ))
}

/// Downloads `package` (optionally from `suite`) into `dir` and unpacks it into `dir/root`.
fn fetch(dir: &Path, package: &str, suite: Option<&str>) -> Result<()> {
    let spec = suite.map_or_else(|| package.to_string(), |s| format!("{package}/{s}"));
    run_command(
        Command::new("apt-get")
            .args(["download", &spec])
            .current_dir(dir),
    )?;
    let deb = std::fs::read_dir(dir)
        .map_err(io("list", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(package) && n.ends_with(".deb"))
        })
        .ok_or(ImageError::BadResponse("apt-get download produced no .deb"))?;
    run_command(
        Command::new("dpkg")
            .arg("-x")
            .arg(&deb)
            .arg(dir.join("root")),
    )
}

/// The kernel and busybox, downloading them on first use.
pub fn ensure(ws: &Workspace) -> Result<LinuxGuest> {
    let dir = ws.root.join("target/linux-guest");
    let busybox = dir.join("root/bin/busybox");
    let boot = dir.join("root/boot");
    let find_kernel = || -> Option<PathBuf> {
        std::fs::read_dir(&boot)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
    };
    let modules = |dir: &Path| -> Result<Vec<(&'static str, PathBuf)>> {
        GUEST_MODULES
            .iter()
            .map(|relative| {
                let name = relative.rsplit('/').next().unwrap_or(relative);
                Ok((name, decompressed_module(dir, relative, &dir.join(name))?))
            })
            .collect()
    };
    if let (Some(kernel), true) = (find_kernel(), busybox.is_file()) {
        return Ok(LinuxGuest {
            kernel,
            busybox,
            modules: modules(&dir)?,
        });
    }
    std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
    if !backports_configured() {
        eprintln!("xtask: adding Debian's {BACKPORTS} source for the Linux guest kernel");
        let source = format!(
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {BACKPORTS}\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
        std::fs::write(SOURCES_FILE, source).map_err(io("write", Path::new(SOURCES_FILE)))?;
        run_command(Command::new("apt-get").arg("update"))?;
    }
    let kernel_pkg = kernel_package()?;
    eprintln!(
        "xtask: downloading {kernel_pkg} and busybox-static into {}",
        dir.display()
    );
    fetch(&dir, &kernel_pkg, Some(BACKPORTS))?;
    fetch(&dir, "busybox-static", None)?;
    let kernel =
        find_kernel().ok_or(ImageError::BadResponse("the kernel package has no vmlinuz"))?;
    Ok(LinuxGuest {
        kernel,
        busybox,
        modules: modules(&dir)?,
    })
}

/// A newc cpio archive (the initramfs format) of `files`: `(path, mode, contents)`, with
/// directories given as mode `0o40755` and no contents.
pub fn cpio_newc(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entry = |ino: usize, name: &str, mode: u32, data: &[u8]| {
        let fields = [
            ino as u32,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name.len() as u32 + 1,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    };
    for (i, (name, mode, data)) in files.iter().enumerate() {
        entry(i + 1, name, *mode, data);
    }
    entry(files.len() + 1, "TRAILER!!!", 0, &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_newc_and_4_byte_aligned() {
        let a = cpio_newc(&[("init", 0o100755, b"#!/bin/sh\n")]);
        assert!(a.starts_with(b"070701"));
        // Header 110 bytes + "init\0" (115, padded to 116) + 10 bytes of data (padded to 128).
        assert_eq!(&a[110..115], b"init\0");
        assert_eq!(&a[116..126], b"#!/bin/sh\n");
        assert_eq!(&a[128..134], b"070701");
        assert!(a.len().is_multiple_of(4));
        let trailer = a.windows(10).position(|w| w == b"TRAILER!!!");
        assert!(trailer.is_some());
    }
}
