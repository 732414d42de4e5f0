//! `cargo xtask flash --device PATH`: writes `disk.img` to a whole block device.
//!
//! Before anything is written the target is inspected through sysfs and the mount and swap
//! tables, and refused when it is not a block device, is a partition rather than a whole
//! disk, is read-only, is smaller than the image, or is in use (it or one of its partitions
//! mounted, used as swap, or held by device-mapper/RAID). Then what will be overwritten is
//! shown and the operator must type `YES`. The device is opened with `O_EXCL` (Linux refuses
//! that while anything else holds the device), written, synced and read back for comparison.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{ImageError, Result};

/// Linux `O_EXCL` (`<asm-generic/fcntl.h>`): on a block device, fail with EBUSY if the device
/// is mounted or otherwise claimed.
const O_EXCL: i32 = 0o200;

/// Bytes written per system call.
const CHUNK: usize = 1 << 20;

/// A device number, `major:minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNum {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl DevNum {
    /// Splits a Linux `st_rdev` (glibc's `gnu_dev_major`/`gnu_dev_minor` encoding).
    pub fn from_rdev(rdev: u64) -> Self {
        Self {
            major: (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff)) as u32,
            minor: (((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff)) as u32,
        }
    }

    /// Parses sysfs's `dev` file content, `8:16`.
    pub fn parse(text: &str) -> Option<Self> {
        let (major, minor) = text.trim().split_once(':')?;
        Some(Self {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// A partition of the target device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFacts {
    /// Kernel name (`sdb1`).
    pub name: String,
    /// Its device number.
    pub dev: DevNum,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// What sysfs says about the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    /// The path given.
    pub path: PathBuf,
    /// Kernel name (`sdb`).
    pub name: String,
    /// Its device number.
    pub dev: DevNum,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Vendor and model, if the driver reports them.
    pub model: Option<String>,
    /// Whether it is a partition of another disk.
    pub is_partition: bool,
    /// Whether the kernel marks it read-only.
    pub read_only: bool,
    /// Its partitions.
    pub partitions: Vec<PartitionFacts>,
    /// Devices stacked on it or its partitions (device-mapper, RAID): kernel names.
    pub holders: Vec<String>,
}

/// One line of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// What is mounted (`/dev/sdb1`, `tmpfs`, ...).
    pub source: String,
    /// Where.
    pub target: String,
}

/// Why a target is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The path does not exist.
    Missing,
    /// The path is not a block device.
    NotABlockDevice {
        /// What it is instead ("a regular file", "a directory", ...).
        kind: &'static str,
    },
    /// A partition, not a whole disk.
    Partition,
    /// The kernel marks the device read-only.
    ReadOnly,
    /// The image does not fit.
    TooSmall {
        /// Device size.
        device_bytes: u64,
        /// Image size.
        image_bytes: u64,
    },
    /// It or one of its partitions is mounted.
    Mounted {
        /// The mounted device (`/dev/sdb1`).
        source: String,
        /// Where.
        target: String,
    },
    /// It or one of its partitions is active swap.
    Swap {
        /// The swap device.
        source: String,
    },
    /// Something is stacked on it (device-mapper, RAID, LVM).
    Held {
        /// The holders' kernel names.
        holders: Vec<String>,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("it does not exist"),
            Self::NotABlockDevice { kind } => write!(f, "it is {kind}, not a block device"),
            Self::Partition => {
                f.write_str("it is a partition; give the whole disk (e.g. /dev/sdb, not /dev/sdb1)")
            }
            Self::ReadOnly => f.write_str("the kernel marks it read-only"),
            Self::TooSmall {
                device_bytes,
                image_bytes,
            } => write!(
                f,
                "it holds {device_bytes} bytes, the image needs {image_bytes}"
            ),
            Self::Mounted { source, target } => {
                write!(f, "{source} is mounted on {target}; unmount it first")
            }
            Self::Swap { source } => write!(f, "{source} is in use as swap"),
            Self::Held { holders } => write!(
                f,
                "it is in use by {} (device-mapper/RAID/LVM)",
                holders.join(", ")
            ),
        }
    }
}

/// Parses `/proc/self/mounts` (fields separated by blanks; `\040`-style octal escapes).
pub fn parse_mounts(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some(MountEntry {
                source: unescape_octal(fields.next()?),
                target: unescape_octal(fields.next()?),
            })
        })
        .collect()
}

/// Parses `/proc/swaps`: the first column of every line after the header.
pub fn parse_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next().map(unescape_octal))
        .collect()
}

fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        let escaped = (byte == b'\\')
            .then(|| bytes.get(index + 1..index + 4))
            .flatten()
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match escaped {
            Some(value) => {
                out.push(value);
                index += 4;
            }
            None => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decides whether `device` may be overwritten with an image of `image_bytes`, given the
/// mount and swap tables. `dev_of` gives the device number of a path (a mount source may be
/// `/dev/disk/by-uuid/...` or `/dev/mapper/...`), `None` if it is not a block device.
pub fn check_target(
    device: &DeviceFacts,
    image_bytes: u64,
    mounts: &[MountEntry],
    swaps: &[String],
    dev_of: &dyn Fn(&Path) -> Option<DevNum>,
) -> std::result::Result<(), Refusal> {
    if device.is_partition {
        return Err(Refusal::Partition);
    }
    let ours: Vec<DevNum> = std::iter::once(device.dev)
        .chain(device.partitions.iter().map(|part| part.dev))
        .collect();
    let is_ours = |source: &str| {
        source.starts_with('/') && dev_of(Path::new(source)).is_some_and(|dev| ours.contains(&dev))
    };
    if let Some(mount) = mounts.iter().find(|mount| is_ours(&mount.source)) {
        return Err(Refusal::Mounted {
            source: mount.source.clone(),
            target: mount.target.clone(),
        });
    }
    if let Some(swap) = swaps.iter().find(|swap| is_ours(swap)) {
        return Err(Refusal::Swap {
            source: swap.clone(),
        });
    }
    if !device.holders.is_empty() {
        return Err(Refusal::Held {
            holders: device.holders.clone(),
        });
    }
    if device.read_only {
        return Err(Refusal::ReadOnly);
    }
    if device.size_bytes < image_bytes {
        return Err(Refusal::TooSmall {
            device_bytes: device.size_bytes,
            image_bytes,
        });
    }
    Ok(())
}

/// The device number of `path` if it is a block device.
pub fn block_dev_of(path: &Path) -> Option<DevNum> {
    let meta = fs::metadata(path).ok()?;
    meta.file_type()
        .is_block_device()
        .then(|| DevNum::from_rdev(meta.rdev()))
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
}

fn sectors_to_bytes(dir: &Path) -> u64 {
    read_trimmed(&dir.join("size"))
        .and_then(|size| size.parse::<u64>().ok())
        .map_or(0, |sectors| sectors.saturating_mul(512))
}

fn holders_of(dir: &Path) -> Vec<String> {
    fs::read_dir(dir.join("holders"))
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Inspects `path` through sysfs (`/sys/dev/block/MAJ:MIN`).
pub fn inspect(path: &Path) -> std::result::Result<DeviceFacts, Refusal> {
    let meta = fs::metadata(path).map_err(|_| Refusal::Missing)?;
    let file_type = meta.file_type();
    if !file_type.is_block_device() {
        let kind = if file_type.is_file() {
            "a regular file"
        } else if file_type.is_dir() {
            "a directory"
        } else if file_type.is_char_device() {
            "a character device"
        } else {
            "not a device"
        };
        return Err(Refusal::NotABlockDevice { kind });
    }
    let dev = DevNum::from_rdev(meta.rdev());
    let sys = PathBuf::from(format!("/sys/dev/block/{dev}"));
    let sys = fs::canonicalize(&sys).unwrap_or(sys);
    let name = sys.file_name().map_or_else(
        || dev.to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let model = [
        read_trimmed(&sys.join("device/vendor")),
        read_trimmed(&sys.join("device/model")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    let mut partitions = Vec::new();
    let mut holders = holders_of(&sys);
    if let Ok(entries) = fs::read_dir(&sys) {
        for entry in entries.filter_map(|entry| entry.ok()) {
            let dir = entry.path();
            if !dir.join("partition").is_file() {
                continue;
            }
            let Some(part_dev) = read_trimmed(&dir.join("dev")).and_then(|d| DevNum::parse(&d))
            else {
                continue;
            };
            holders.extend(holders_of(&dir));
            partitions.push(PartitionFacts {
                name: entry.file_name().to_string_lossy().into_owned(),
                dev: part_dev,
                size_bytes: sectors_to_bytes(&dir),
            });
        }
    }
    partitions.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(DeviceFacts {
        path: path.to_path_buf(),
        name,
        dev,
        size_bytes: sectors_to_bytes(&sys),
        model: (!model.is_empty()).then_some(model),
        is_partition: sys.join("partition").is_file(),
        read_only: read_trimmed(&sys.join("ro")).as_deref() == Some("1"),
        partitions,
        holders,
    })
}

/// Bytes as `30.8 GB (30752000000 bytes)`.
fn show_size(bytes: u64) -> String {
    let gb = bytes as f64 / 1e9;
    if gb >= 1.0 {
        format!("{gb:.1} GB ({bytes} bytes)")
    } else {
        format!("{:.1} MB ({bytes} bytes)", bytes as f64 / 1e6)
    }
}

/// What the operator sees before confirming.
pub fn describe_target(device: &DeviceFacts, image: &Path, image_bytes: u64) -> String {
    let mut text = format!("About to overwrite {}:\n", device.path.display());
    text.push_str(&format!("  device      {} ({})\n", device.name, device.dev));
    text.push_str(&format!(
        "  model       {}\n",
        device.model.as_deref().unwrap_or("(not reported)")
    ));
    text.push_str(&format!("  size        {}\n", show_size(device.size_bytes)));
    if device.partitions.is_empty() {
        text.push_str("  partitions  none\n");
    }
    for (index, part) in device.partitions.iter().enumerate() {
        let label = if index == 0 { "partitions" } else { "" };
        text.push_str(&format!(
            "  {label:<11} {} ({})\n",
            part.name,
            show_size(part.size_bytes)
        ));
    }
    text.push_str(&format!(
        "  image       {} ({})\n",
        image.display(),
        show_size(image_bytes)
    ));
    text.push_str(&format!(
        "Everything on {} will be lost.\n",
        device.path.display()
    ));
    text
}

/// Whether the operator's answer confirms: exactly `YES` (surrounding blanks ignored).
pub fn confirmed(answer: &str) -> bool {
    answer.trim() == "YES"
}

/// The whole `flash` command: inspect, refuse or describe, ask on `input`, write, verify.
pub fn flash(device: &Path, image: &Path, input: &mut dyn BufRead) -> Result<()> {
    let image_bytes = fs::metadata(image)
        .map_err(|source| ImageError::Io {
            action: "read",
            path: image.to_path_buf(),
            source,
        })?
        .len();
    let refused = |reason| ImageError::FlashRefused {
        device: device.to_path_buf(),
        reason,
    };
    let facts = inspect(device).map_err(refused)?;
    let mounts = parse_mounts(&fs::read_to_string("/proc/self/mounts").unwrap_or_default());
    let swaps = parse_swaps(&fs::read_to_string("/proc/swaps").unwrap_or_default());
    check_target(&facts, image_bytes, &mounts, &swaps, &block_dev_of).map_err(refused)?;
    print!("{}", describe_target(&facts, image, image_bytes));
    print!("Type YES to overwrite {}: ", device.display());
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = input.read_line(&mut answer);
    if !confirmed(&answer) {
        return Err(ImageError::NotConfirmed);
    }
    write_and_verify(device, image, image_bytes)
}

fn write_and_verify(device: &Path, image: &Path, image_bytes: u64) -> Result<()> {
    let io_error = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    };
    let mut source = File::open(image).map_err(io_error("open", image))?;
    let mut target = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_EXCL)
        .open(device)
        .map_err(io_error("open exclusively (is it in use?)", device))?;
    let mut buffer = vec![0u8; CHUNK];
    let mut written = 0u64;
    loop {
        let n = source.read(&mut buffer).map_err(io_error("read", image))?;
        let Some(chunk) = buffer.get(..n).filter(|chunk| !chunk.is_empty()) else {
            break;
        };
        target.write_all(chunk).map_err(io_error("write", device))?;
        written += n as u64;
        print!("\rwritten {} of {} MiB", written >> 20, image_bytes >> 20);
        let _ = std::io::stdout().flush();
    }
    println!();
    target.sync_all().map_err(io_error("sync", device))?;
    source
        .seek(SeekFrom::Start(0))
        .and_then(|_| target.seek(SeekFrom::Start(0)))
        .map_err(io_error("seek", device))?;
    let mut expected = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let n = source
            .read(&mut expected)
            .map_err(io_error("read", image))?;
        let Some(want) = expected.get(..n).filter(|want| !want.is_empty()) else {
            break;
        };
        let got = buffer.get_mut(..n).unwrap_or_default();
        target
            .read_exact(got)
            .map_err(io_error("read back", device))?;
        if let Some(at) = want.iter().zip(got.iter()).position(|(a, b)| a != b) {
            return Err(ImageError::VerifyFailed {
                device: device.to_path_buf(),
                offset: offset + at as u64,
            });
        }
        offset += n as u64;
    }
    println!(
        "flashed {} with {} ({} bytes, verified)",
        device.display(),
        image.display(),
        image_bytes
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(partitions: &[(&str, u32)]) -> DeviceFacts {
        DeviceFacts {
            path: PathBuf::from("/dev/sdz"),
            name: "sdz".into(),
            dev: DevNum {
                major: 8,
                minor: 240,
            },
            size_bytes: 32 << 30,
            model: Some("ACME Stick".into()),
            is_partition: false,
            read_only: false,
            partitions: partitions
                .iter()
                .map(|&(name, minor)| PartitionFacts {
                    name: name.into(),
                    dev: DevNum { major: 8, minor },
                    size_bytes: 1 << 30,
                })
                .collect(),
            holders: Vec::new(),
        }
    }

    /// A fake `/dev`: paths and the device numbers they stand for.
    fn fake_dev(path: &Path) -> Option<DevNum> {
        let minor = match path.to_str()? {
            "/dev/sdz" => 240,
            "/dev/sdz1" | "/dev/disk/by-uuid/1234-ABCD" => 241,
            "/dev/sdz2" => 242,
            "/dev/sda1" => 1,
            _ => return None,
        };
        Some(DevNum { major: 8, minor })
    }

    const MOUNTS: &str = "\
sysfs /sys sysfs rw,nosuid 0 0
/dev/sda1 / ext4 rw,relatime 0 0
tmpfs /run tmpfs rw 0 0
";

    #[test]
    fn a_regular_file_or_directory_is_refused() {
        let file = std::env::temp_dir().join(format!("flash-not-a-device-{}", std::process::id()));
        fs::write(&file, b"x").expect("write");
        assert_eq!(
            inspect(&file),
            Err(Refusal::NotABlockDevice {
                kind: "a regular file"
            })
        );
        assert_eq!(
            inspect(&std::env::temp_dir()),
            Err(Refusal::NotABlockDevice {
                kind: "a directory"
            })
        );
        assert_eq!(
            inspect(Path::new("/dev/null")),
            Err(Refusal::NotABlockDevice {
                kind: "a character device"
            })
        );
        assert_eq!(
            inspect(Path::new("/nonexistent/sdq")),
            Err(Refusal::Missing)
        );
        let mut input = std::io::Cursor::new(b"YES\n".to_vec());
        let err = flash(&file, &file, &mut input).expect_err("refused");
        assert!(err.to_string().contains("regular file"), "{err}");
        let _ = fs::remove_file(&file);
    }

    #[test]
    fn an_unused_disk_is_accepted() {
        let mounts = parse_mounts(MOUNTS);
        assert_eq!(
            check_target(&disk(&[("sdz1", 241)]), 64 << 20, &mounts, &[], &fake_dev),
            Ok(())
        );
    }

    #[test]
    fn a_mounted_disk_or_partition_is_refused() {
        let mounts = parse_mounts(&format!("{MOUNTS}/dev/sdz2 /media/usb vfat rw 0 0\n"));
        assert_eq!(
            check_target(
                &disk(&[("sdz1", 241), ("sdz2", 242)]),
                1,
                &mounts,
                &[],
                &fake_dev
            ),
            Err(Refusal::Mounted {
                source: "/dev/sdz2".into(),
                target: "/media/usb".into()
            })
        );
        // Mounted through a by-uuid link, with a space in the mount point.
        let mounts = parse_mounts("/dev/disk/by-uuid/1234-ABCD /media/my\\040stick vfat rw 0 0\n");
        assert_eq!(
            check_target(&disk(&[("sdz1", 241)]), 1, &mounts, &[], &fake_dev),
            Err(Refusal::Mounted {
                source: "/dev/disk/by-uuid/1234-ABCD".into(),
                target: "/media/my stick".into()
            })
        );
        // The whole disk mounted (no partition table).
        let mounts = parse_mounts("/dev/sdz /mnt ext4 rw 0 0\n");
        assert!(matches!(
            check_target(&disk(&[]), 1, &mounts, &[], &fake_dev),
            Err(Refusal::Mounted { .. })
        ));
    }

    #[test]
    fn swap_holders_partitions_read_only_and_small_disks_are_refused() {
        let swaps = parse_swaps("Filename Type Size Used Priority\n/dev/sdz2 partition 1 0 -2\n");
        assert_eq!(
            check_target(&disk(&[("sdz2", 242)]), 1, &[], &swaps, &fake_dev),
            Err(Refusal::Swap {
                source: "/dev/sdz2".into()
            })
        );
        let mut held = disk(&[]);
        held.holders = vec!["dm-0".into()];
        assert!(matches!(
            check_target(&held, 1, &[], &[], &fake_dev),
            Err(Refusal::Held { .. })
        ));
        let mut partition = disk(&[]);
        partition.is_partition = true;
        assert_eq!(
            check_target(&partition, 1, &[], &[], &fake_dev),
            Err(Refusal::Partition)
        );
        let mut read_only = disk(&[]);
        read_only.read_only = true;
        assert_eq!(
            check_target(&read_only, 1, &[], &[], &fake_dev),
            Err(Refusal::ReadOnly)
        );
        assert!(matches!(
            check_target(&disk(&[]), 64 << 30, &[], &[], &fake_dev),
            Err(Refusal::TooSmall { .. })
        ));
    }

    #[test]
    fn only_an_exact_yes_confirms() {
        assert!(confirmed("YES\n"));
        assert!(confirmed("  YES  "));
        for answer in ["", "yes", "y", "YES!", "NO", "YESS"] {
            assert!(!confirmed(answer), "{answer:?}");
        }
    }

    #[test]
    fn device_numbers_decode() {
        // makedev(8, 17) and makedev(259, 1) (NVMe) in glibc's encoding.
        assert_eq!(
            DevNum::from_rdev(0x811),
            DevNum {
                major: 8,
                minor: 17
            }
        );
        assert_eq!(
            DevNum::from_rdev(0x10301),
            DevNum {
                major: 259,
                minor: 1
            }
        );
        assert_eq!(
            DevNum::parse("8:16\n"),
            Some(DevNum {
                major: 8,
                minor: 16
            })
        );
        assert_eq!(DevNum::parse("x"), None);
    }

    #[test]
    fn the_description_lists_what_is_lost() {
        let text = describe_target(&disk(&[("sdz1", 241)]), Path::new("disk.img"), 64 << 20);
        assert!(text.contains("/dev/sdz"));
        assert!(text.contains("ACME Stick"));
        assert!(text.contains("sdz1"));
        assert!(text.contains("34.4 GB"));
        assert!(text.contains("Everything on /dev/sdz will be lost."));
    }
}
