//! Fetching `appliance.toml` from wherever the appliance booted from.
//!
//! - Boot medium (a flashed disk, a USB stick, QEMU's `fat:` directory): the LoadedImage
//!   protocol names the device and the image's path; the device's Simple File System gives the
//!   file next to the image.
//! - Netboot: the PXE Base Code protocol that loaded the image still holds the DHCP/BOOTP
//!   replies; the file is read over TFTP from the boot server, next to the boot file. This must
//!   happen before the NIC is opened exclusively (that disconnects the PXE driver).
//!
//! "Not there" (no such file, TFTP "file not found") means defaults. Any other failure is an
//! error: the appliance must not guess what the operator configured.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr};

use appliance::bootsource::{
    BootReply, config_path_beside_boot_file, config_path_beside_image, tftp_path_bytes,
};
use appliance::config::{CONFIG_FILE_NAME, ConfigSource, MAX_CONFIG_BYTES};
use log::{debug, warn};
use uefi::boot;
use uefi::proto::device_path::{DevicePath, DevicePathNodeEnum};
use uefi::proto::loaded_image::LoadedImage;
use uefi::proto::media::file::{File, FileAttribute, FileInfo, FileMode};
use uefi::proto::media::fs::SimpleFileSystem;
use uefi::proto::network::pxe::BaseCode;
use uefi::{CStr8, CString16, Handle, Status};

/// TFTP error code "file not found" (RFC 1350).
const TFTP_FILE_NOT_FOUND: u8 = 1;

/// The configuration file as found (or not) at boot.
pub enum Fetched {
    /// The file's bytes and where they came from.
    File(Vec<u8>, ConfigSource),
    /// No file: use defaults ([`ConfigSource::Defaults`] says where it was looked for).
    Missing(ConfigSource),
}

/// The file may exist but could not be read.
#[derive(Debug)]
pub enum FetchError {
    /// A firmware call failed while reading `what`.
    Firmware {
        /// The file or URL being read.
        what: String,
        /// The call that failed.
        call: &'static str,
        /// Its status.
        status: Status,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    TooLarge {
        /// The file or URL.
        what: String,
    },
    /// The TFTP server answered with an error other than "file not found".
    Tftp {
        /// The URL.
        what: String,
        /// TFTP error code.
        code: u8,
        /// The server's message.
        message: String,
    },
    /// The path cannot be expressed for the firmware (non-ASCII TFTP path, bad UCS-2).
    BadPath(String),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Firmware { what, call, status } => {
                write!(f, "cannot read {what}: {call} failed ({status:?})")
            }
            Self::TooLarge { what } => {
                write!(f, "{what} is larger than {MAX_CONFIG_BYTES} bytes")
            }
            Self::Tftp {
                what,
                code,
                message,
            } => write!(
                f,
                "cannot read {what}: the TFTP server answered error {code} ({message})"
            ),
            Self::BadPath(path) => write!(f, "cannot express the path {path:?} for the firmware"),
        }
    }
}

/// Finds and reads the configuration file (see the module documentation).
pub fn fetch() -> Result<Fetched, FetchError> {
    let (device, image_path) =
        match boot::open_protocol_exclusive::<LoadedImage>(boot::image_handle()) {
            Ok(image) => (image.device(), image.file_path().map(file_path_text)),
            Err(e) => {
                warn!("LoadedImage unavailable ({:?})", e.status());
                (None, None)
            }
        };
    debug!("booted from device {device:?}, image path {image_path:?}");
    if let Some(device) = device
        && let Ok(volume) = boot::open_protocol_exclusive::<SimpleFileSystem>(device)
    {
        let path = config_path_beside_image(image_path.as_deref().unwrap_or(""));
        return read_from_volume(volume, path);
    }
    if let Some(fetched) = fetch_over_pxe() {
        return fetched;
    }
    warn!(
        "booted from neither a file system nor PXE (e.g. UEFI HTTP boot): no {CONFIG_FILE_NAME} can be read; using defaults"
    );
    Ok(Fetched::Missing(ConfigSource::Defaults {
        looked_for: String::from("file system or PXE boot server to read appliance.toml from"),
    }))
}

/// The text of the file-path nodes of a device path (`\EFI\BOOT\BOOTX64.EFI`).
fn file_path_text(path: &DevicePath) -> String {
    let mut text = String::new();
    for node in path.node_iter() {
        if let Ok(DevicePathNodeEnum::MediaFilePath(file)) = node.as_enum() {
            let units: Vec<u16> = file.path_name().to_vec();
            let part: String = char::decode_utf16(units.into_iter().take_while(|&u| u != 0))
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect();
            if !text.is_empty() && !text.ends_with('\\') && !part.starts_with('\\') {
                text.push('\\');
            }
            text.push_str(&part);
        }
    }
    text
}

fn read_from_volume(
    mut volume: boot::ScopedProtocol<SimpleFileSystem>,
    path: String,
) -> Result<Fetched, FetchError> {
    let firmware = |call, status| FetchError::Firmware {
        what: format!("boot medium {path}"),
        call,
        status,
    };
    let name = CString16::try_from(path.as_str()).map_err(|_| FetchError::BadPath(path.clone()))?;
    let mut root = volume
        .open_volume()
        .map_err(|e| firmware("SimpleFileSystem.OpenVolume", e.status()))?;
    let handle = match root.open(&name, FileMode::Read, FileAttribute::empty()) {
        Ok(handle) => handle,
        Err(e) if e.status() == Status::NOT_FOUND => {
            return Ok(Fetched::Missing(ConfigSource::Defaults {
                looked_for: format!("boot medium {path}"),
            }));
        }
        Err(e) => return Err(firmware("File.Open", e.status())),
    };
    let Some(mut file) = handle.into_regular_file() else {
        return Err(firmware(
            "File.Open (a directory, not a file)",
            Status::INVALID_PARAMETER,
        ));
    };
    let size = file
        .get_boxed_info::<FileInfo>()
        .map_err(|e| firmware("File.GetInfo", e.status()))?
        .file_size();
    let size = usize::try_from(size)
        .ok()
        .filter(|&size| size <= MAX_CONFIG_BYTES)
        .ok_or_else(|| FetchError::TooLarge {
            what: format!("boot medium {path}"),
        })?;
    let mut bytes = vec![0u8; size];
    let mut filled = 0;
    while let Some(rest) = bytes.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match file.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(firmware("File.Read", e.status())),
        }
    }
    bytes.truncate(filled);
    Ok(Fetched::File(bytes, ConfigSource::BootMedium { path }))
}

/// Reads the file over TFTP through a PXE Base Code instance that completed DHCP, if any.
fn fetch_over_pxe() -> Option<Result<Fetched, FetchError>> {
    let handles: Vec<Handle> = boot::find_handles::<BaseCode>().ok()?;
    for handle in handles {
        let Ok(mut pxe) = boot::open_protocol_exclusive::<BaseCode>(handle) else {
            continue;
        };
        let mode = pxe.mode();
        if !mode.started() || mode.using_ipv6() || !mode.dhcp_ack_received() {
            continue;
        }
        // With proxy DHCP the boot server and file are in the PXE reply or proxy offer.
        let packets = [
            (mode.pxe_reply_received(), mode.pxe_reply()),
            (mode.proxy_offer_received(), mode.proxy_offer()),
            (true, mode.dhcp_ack()),
        ];
        let Some(reply) = packets.iter().find_map(|(received, packet)| {
            let raw: &[u8; 1472] = (*packet).as_ref();
            received.then(|| BootReply::parse(raw)).flatten()
        }) else {
            warn!("PXE boot without a boot server/file in the DHCP reply");
            continue;
        };
        let path = config_path_beside_boot_file(&reply.boot_file);
        return Some(read_over_tftp(&mut pxe, reply.server, path));
    }
    None
}

fn read_over_tftp(
    pxe: &mut BaseCode,
    server: Ipv4Addr,
    path: String,
) -> Result<Fetched, FetchError> {
    let source = ConfigSource::Tftp {
        server,
        path: path.clone(),
    };
    let what = format!("{source}");
    let name_bytes = tftp_path_bytes(&path).ok_or_else(|| FetchError::BadPath(path.clone()))?;
    let name =
        CStr8::from_bytes_with_nul(&name_bytes).map_err(|_| FetchError::BadPath(path.clone()))?;
    let mut buffer = vec![0u8; MAX_CONFIG_BYTES];
    match pxe.tftp_read_file(&IpAddr::V4(server), name, Some(&mut buffer)) {
        Ok(len) => {
            buffer.truncate(usize::try_from(len).unwrap_or(0));
            Ok(Fetched::File(buffer, source))
        }
        Err(e) if e.status() == Status::BUFFER_TOO_SMALL => Err(FetchError::TooLarge { what }),
        Err(e) if e.status() == Status::TFTP_ERROR && pxe.mode().tftp_error_received() => {
            let error = pxe.mode().tftp_error();
            if error.error_code == TFTP_FILE_NOT_FOUND {
                Ok(Fetched::Missing(ConfigSource::Defaults {
                    looked_for: what,
                }))
            } else {
                let message = error
                    .error_string
                    .iter()
                    .copied()
                    .take_while(|&b| b != 0)
                    .map(char::from)
                    .collect();
                Err(FetchError::Tftp {
                    what,
                    code: error.error_code,
                    message,
                })
            }
        }
        Err(e) => Err(FetchError::Firmware {
            what,
            call: "PXE_BASE_CODE.Mtftp(READ_FILE)",
            status: e.status(),
        }),
    }
}
