//! `disk.img`: what an operator `dd`s to a node's disk. A GPT disk with one EFI System
//! Partition (FAT32) that holds `EFI/BOOT/BOOTX64.EFI` (the removable-media boot path every
//! UEFI firmware boots without a boot entry) and `EFI/BOOT/appliance.toml` next to it.
//!
//! Built in pure Rust (`gpt` for the partition table and protective MBR, `fatfs` to format
//! and fill the partition): no loop devices, no root, no mtools.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{ImageError, Result};

/// Size of the whole disk image.
pub const DISK_BYTES: u64 = 64 << 20;
/// Logical block size of the image.
pub const SECTOR_BYTES: u64 = 512;
/// First LBA of the ESP (1 MiB, the usual alignment).
pub const ESP_FIRST_LBA: u64 = 2048;
/// Sectors at the end of the disk kept for the backup GPT (header + 32 entry sectors),
/// rounded to 1 MiB so the partition ends aligned too.
const TAIL_RESERVED_SECTORS: u64 = 2048;
/// FAT cluster size: 512 bytes keeps a 62 MiB partition above FAT32's minimum cluster count.
const CLUSTER_BYTES: u32 = 512;
/// The volume label of the ESP (11 bytes, space padded).
const VOLUME_LABEL: [u8; 11] = *b"TDXAPPLIANC";

/// Where the ESP is inside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspExtent {
    /// Byte offset of the partition.
    pub offset: u64,
    /// Length of the partition in bytes.
    pub len: u64,
}

/// The ESP's extent in a [`DISK_BYTES`] image.
pub fn esp_extent() -> EspExtent {
    let total_sectors = DISK_BYTES / SECTOR_BYTES;
    EspExtent {
        offset: ESP_FIRST_LBA * SECTOR_BYTES,
        len: (total_sectors - ESP_FIRST_LBA - TAIL_RESERVED_SECTORS) * SECTOR_BYTES,
    }
}

fn io_error<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> ImageError + 'p {
    move |source| ImageError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `out` as a GPT disk image with an ESP holding `efi` as `EFI/BOOT/BOOTX64.EFI` and
/// `config` (if any) as `EFI/BOOT/appliance.toml`.
pub fn write_disk_image(efi: &Path, config: Option<&str>, out: &Path) -> Result<EspExtent> {
    let efi_bytes = std::fs::read(efi).map_err(io_error("read", efi))?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(io_error("create", out))?;
    file.set_len(DISK_BYTES).map_err(io_error("size", out))?;

    let total_sectors = DISK_BYTES / SECTOR_BYTES;
    let mbr =
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(total_sectors - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(&mut file).map_err(ImageError::Mbr)?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file, None)
        .map_err(|source| ImageError::Gpt {
            step: "GPT header",
            source,
        })?;
    let extent = esp_extent();
    disk.add_partition_at(
        "EFI System Partition",
        1,
        ESP_FIRST_LBA,
        extent.len / SECTOR_BYTES,
        gpt::partition_types::EFI,
        0,
    )
    .map_err(|source| ImageError::Gpt {
        step: "ESP partition entry",
        source,
    })?;
    let file = disk.write().map_err(|source| ImageError::Gpt {
        step: "GPT write",
        source,
    })?;

    let mut partition = Window::new(file, extent);
    fatfs::format_volume(
        &mut partition,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .bytes_per_cluster(CLUSTER_BYTES)
            .volume_label(VOLUME_LABEL),
    )
    .map_err(|source| ImageError::Fat {
        step: "FAT32 format",
        source,
    })?;
    {
        let fs =
            fatfs::FileSystem::new(&mut partition, fatfs::FsOptions::new()).map_err(|source| {
                ImageError::Fat {
                    step: "FAT32 mount",
                    source,
                }
            })?;
        let fat_error =
            |step: &'static str| move |source: io::Error| ImageError::Fat { step, source };
        {
            let boot_dir = fs
                .root_dir()
                .create_dir("EFI")
                .and_then(|efi_dir| efi_dir.create_dir("BOOT"))
                .map_err(fat_error("create EFI/BOOT"))?;
            let mut loader = boot_dir
                .create_file("BOOTX64.EFI")
                .map_err(fat_error("create EFI/BOOT/BOOTX64.EFI"))?;
            loader
                .truncate()
                .and_then(|()| loader.write_all(&efi_bytes))
                .and_then(|()| loader.flush())
                .map_err(fat_error("write EFI/BOOT/BOOTX64.EFI"))?;
            if let Some(config) = config {
                let mut file = boot_dir
                    .create_file(appliance::config::CONFIG_FILE_NAME)
                    .map_err(fat_error("create EFI/BOOT/appliance.toml"))?;
                file.truncate()
                    .and_then(|()| file.write_all(config.as_bytes()))
                    .and_then(|()| file.flush())
                    .map_err(fat_error("write EFI/BOOT/appliance.toml"))?;
            }
        }
        fs.unmount().map_err(|source| ImageError::Fat {
            step: "FAT32 unmount",
            source,
        })?;
    }
    partition
        .into_inner()
        .sync_all()
        .map_err(io_error("sync", out))?;
    Ok(extent)
}

/// A byte range of a file seen as a whole device (the partition, for `fatfs`).
pub struct Window<F> {
    inner: F,
    extent: EspExtent,
    position: u64,
}

impl<F> Window<F> {
    /// The `extent` of `inner`.
    pub fn new(inner: F, extent: EspExtent) -> Self {
        Self {
            inner,
            extent,
            position: 0,
        }
    }

    /// The file back.
    pub fn into_inner(self) -> F {
        self.inner
    }

    /// How many of `want` bytes fit before the window's end.
    fn clamp(&self, want: usize) -> usize {
        let left = self.extent.len.saturating_sub(self.position);
        usize::try_from(left).map_or(want, |left| want.min(left))
    }
}

impl<F: Seek> Window<F> {
    fn seek_inner(&mut self) -> io::Result<()> {
        self.inner
            .seek(SeekFrom::Start(self.extent.offset + self.position))
            .map(drop)
    }
}

impl<F: Read + Seek> Read for Window<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.clamp(buf.len());
        self.seek_inner()?;
        let n = self.inner.read(buf.get_mut(..n).unwrap_or_default())?;
        self.position += n as u64;
        Ok(n)
    }
}

impl<F: Write + Seek> Write for Window<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.clamp(buf.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.seek_inner()?;
        let n = self.inner.write(buf.get(..n).unwrap_or_default())?;
        self.position += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<F> Seek for Window<F> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.extent.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        match target {
            Some(target) if target <= self.extent.len => {
                self.position = target;
                Ok(target)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

/// Reads a file back out of the ESP of a disk image written by [`write_disk_image`]
/// (for checks; `path` like `EFI/BOOT/BOOTX64.EFI`).
pub fn read_esp_file(image: &Path, path: &str) -> Result<Vec<u8>> {
    let file = File::open(image).map_err(io_error("open", image))?;
    let gpt = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open_from_device(file)
        .map_err(|source| ImageError::Gpt {
            step: "read GPT",
            source,
        })?;
    let esp = gpt
        .partitions()
        .values()
        .find(|part| part.part_type_guid == gpt::partition_types::EFI)
        .ok_or(ImageError::NoEsp)?;
    let extent = EspExtent {
        offset: esp.first_lba * SECTOR_BYTES,
        len: (esp.last_lba + 1 - esp.first_lba) * SECTOR_BYTES,
    };
    let file = File::open(image).map_err(io_error("open", image))?;
    let mut window = Window::new(file, extent);
    let fs = fatfs::FileSystem::new(&mut window, fatfs::FsOptions::new()).map_err(|source| {
        ImageError::Fat {
            step: "mount ESP",
            source,
        }
    })?;
    let mut bytes = Vec::new();
    fs.root_dir()
        .open_file(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(|source| ImageError::Fat {
            step: "read a file from the ESP",
            source,
        })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("disk-image-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn the_image_is_a_gpt_disk_with_a_fat32_esp_holding_loader_and_config() {
        let dir = scratch("layout");
        let efi = dir.join("app.efi");
        std::fs::write(&efi, b"MZ not really a PE image").expect("write efi");
        let image = dir.join("disk.img");
        let extent = write_disk_image(&efi, Some("[api]\nport = 9\n"), &image).expect("image");
        assert_eq!(std::fs::metadata(&image).expect("stat").len(), DISK_BYTES);
        assert_eq!(extent.offset, 1 << 20);
        assert_eq!(extent.offset % (1 << 20), 0);
        assert_eq!((extent.offset + extent.len) % (1 << 20), 0);

        let bytes = std::fs::read(&image).expect("read image");
        // Protective MBR: boot signature and one 0xEE partition.
        assert_eq!(&bytes[510..512], &[0x55, 0xAA]);
        assert_eq!(bytes[446 + 4], 0xEE);
        // GPT header at LBA 1 and the backup header in the last sector.
        assert_eq!(&bytes[512..520], b"EFI PART");
        let last = usize::try_from(DISK_BYTES - SECTOR_BYTES).expect("fits");
        assert_eq!(&bytes[last..last + 8], b"EFI PART");
        // FAT32 boot sector of the ESP.
        let esp = usize::try_from(extent.offset).expect("fits");
        assert_eq!(&bytes[esp + 82..esp + 90], b"FAT32   ");

        assert_eq!(
            read_esp_file(&image, "EFI/BOOT/BOOTX64.EFI").expect("loader"),
            b"MZ not really a PE image"
        );
        assert_eq!(
            read_esp_file(&image, "EFI/BOOT/appliance.toml").expect("config"),
            b"[api]\nport = 9\n"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_config_only_the_loader_is_written() {
        let dir = scratch("noconfig");
        let efi = dir.join("app.efi");
        std::fs::write(&efi, b"MZ").expect("write efi");
        let image = dir.join("disk.img");
        write_disk_image(&efi, None, &image).expect("image");
        assert!(read_esp_file(&image, "EFI/BOOT/appliance.toml").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_efi_is_an_error() {
        let dir = scratch("missing");
        assert!(write_disk_image(&dir.join("none.efi"), None, &dir.join("d.img")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_window_refuses_to_leave_its_extent() {
        let extent = EspExtent { offset: 4, len: 8 };
        let mut window = Window::new(io::Cursor::new(vec![0u8; 16]), extent);
        assert_eq!(window.write(&[1; 20]).expect("write"), 8);
        assert!(window.write(&[1]).is_err());
        assert!(window.seek(SeekFrom::Start(9)).is_err());
        assert_eq!(window.seek(SeekFrom::End(-2)).expect("seek"), 6);
        let inner = window.into_inner().into_inner();
        assert_eq!(inner, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]);
    }
}
