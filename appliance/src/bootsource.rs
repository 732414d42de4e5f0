//! Where the configuration file is, given how the appliance was booted.
//!
//! - From a disk or USB stick: the firmware's LoadedImage protocol gives the image's file
//!   path (`\EFI\BOOT\BOOTX64.EFI`); the file is [`CONFIG_FILE_NAME`] in that directory
//!   ([`config_path_beside_image`]).
//! - Netbooted: the PXE Base Code protocol keeps the DHCP/BOOTP packets of the boot; the boot
//!   server and boot file name come from the reply ([`BootReply::parse`]) and the file is
//!   fetched over TFTP from the boot file's directory ([`config_path_beside_boot_file`]).
//!
//! The BOOTP/DHCP reading is hand-written: a few fixed offsets of RFC 951/2131 and the
//! option walk of RFC 2132 (with option overload, RFC 2132 §9.3) do not justify a DHCP crate,
//! and it must not panic on any packet.

use alloc::string::String;
use alloc::vec::Vec;
use core::net::Ipv4Addr;

use crate::config::CONFIG_FILE_NAME;

/// The configuration's path next to a UEFI image path (`\EFI\BOOT\BOOTX64.EFI` →
/// `\EFI\BOOT\appliance.toml`). Forward slashes are accepted as separators too; an empty or
/// bare name puts the file in the root directory.
pub fn config_path_beside_image(image_path: &str) -> String {
    let normalized: String = image_path
        .trim_end_matches('\0')
        .chars()
        .map(|c| if c == '/' { '\\' } else { c })
        .collect();
    let dir = normalized.rfind('\\').map_or("", |at| &normalized[..at]);
    let mut path = String::new();
    if !dir.starts_with('\\') {
        path.push('\\');
    }
    path.push_str(dir);
    if !path.ends_with('\\') {
        path.push('\\');
    }
    path.push_str(CONFIG_FILE_NAME);
    path
}

/// The configuration's path next to a TFTP boot file (`lab/appliance.efi` →
/// `lab/appliance.toml`; `appliance.efi` → `appliance.toml`). The boot file's own separator
/// (`/` or `\`) is kept.
pub fn config_path_beside_boot_file(boot_file: &str) -> String {
    let boot_file = boot_file.trim_end_matches('\0');
    match boot_file.rfind(['/', '\\']) {
        Some(at) => {
            let mut path = String::from(boot_file.get(..=at).unwrap_or(""));
            path.push_str(CONFIG_FILE_NAME);
            path
        }
        None => String::from(CONFIG_FILE_NAME),
    }
}

/// What the boot server told the firmware: where to fetch files from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootReply {
    /// The TFTP server: BOOTP `siaddr`, else option 66 when it is a dotted quad, else the
    /// DHCP server identifier (option 54).
    pub server: Ipv4Addr,
    /// The boot file name: option 67, else the BOOTP `file` field.
    pub boot_file: String,
}

const SIADDR: core::ops::Range<usize> = 20..24;
const SNAME: core::ops::Range<usize> = 44..108;
const FILE: core::ops::Range<usize> = 108..236;
const MAGIC: core::ops::Range<usize> = 236..240;
const DHCP_MAGIC: [u8; 4] = [99, 130, 83, 99];
const OPTION_PAD: u8 = 0;
const OPTION_END: u8 = 255;
const OPTION_SERVER_ID: u8 = 54;
const OPTION_OVERLOAD: u8 = 52;
const OPTION_TFTP_SERVER: u8 = 66;
const OPTION_BOOT_FILE: u8 = 67;

/// Options found in a packet (the ones this module needs).
#[derive(Default)]
struct Options<'p> {
    server_id: Option<&'p [u8]>,
    overload: u8,
    tftp_server: Option<&'p [u8]>,
    boot_file: Option<&'p [u8]>,
}

impl<'p> Options<'p> {
    /// Walks one option area; stops at END or at the first truncated option.
    fn read(&mut self, mut area: &'p [u8]) {
        while let Some((&code, rest)) = area.split_first() {
            match code {
                OPTION_PAD => {
                    area = rest;
                    continue;
                }
                OPTION_END => return,
                _ => {}
            }
            let Some((&len, rest)) = rest.split_first() else {
                return;
            };
            let Some((value, rest)) = rest.split_at_checked(usize::from(len)) else {
                return;
            };
            match code {
                OPTION_SERVER_ID => self.server_id = Some(value),
                OPTION_OVERLOAD => self.overload = value.first().copied().unwrap_or(0),
                OPTION_TFTP_SERVER => self.tftp_server = Some(value),
                OPTION_BOOT_FILE => self.boot_file = Some(value),
                _ => {}
            }
            area = rest;
        }
    }
}

/// A NUL-terminated (or full) text field as a string, `None` when empty or not UTF-8.
fn text_field(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text = core::str::from_utf8(bytes.get(..end)?).ok()?.trim();
    (!text.is_empty()).then(|| String::from(text))
}

fn ipv4(bytes: &[u8]) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = bytes.try_into().ok()?;
    let address = Ipv4Addr::from(octets);
    (!address.is_unspecified()).then_some(address)
}

impl BootReply {
    /// Reads a BOOTP/DHCP reply (as cached by the PXE Base Code protocol). `None` when the
    /// packet is too short or names no boot file or no server.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        let mut options = Options::default();
        let dhcp = packet.get(MAGIC) == Some(&DHCP_MAGIC[..]);
        if dhcp {
            options.read(packet.get(MAGIC.end..).unwrap_or_default());
            // Overload: 1 = `file` holds options, 2 = `sname` does, 3 = both.
            if options.overload & 1 != 0 {
                options.read(packet.get(FILE)?);
            }
            if options.overload & 2 != 0 {
                options.read(packet.get(SNAME)?);
            }
        }
        let file_field = if options.overload & 1 != 0 {
            None
        } else {
            packet.get(FILE).and_then(text_field)
        };
        let boot_file = options.boot_file.and_then(text_field).or(file_field)?;
        let server = packet
            .get(SIADDR)
            .and_then(ipv4)
            .or_else(|| {
                options
                    .tftp_server
                    .and_then(text_field)
                    .and_then(|name| name.parse().ok())
            })
            .or_else(|| options.server_id.and_then(ipv4))?;
        Some(Self { server, boot_file })
    }
}

/// The path a TFTP server is asked for, as a NUL-terminated byte string (what the PXE Base
/// Code protocol takes). `None` if the path has a NUL inside or is not ASCII.
pub fn tftp_path_bytes(path: &str) -> Option<Vec<u8>> {
    if !path.is_ascii() || path.contains('\0') {
        return None;
    }
    let mut bytes = Vec::with_capacity(path.len() + 1);
    bytes.extend_from_slice(path.as_bytes());
    bytes.push(0);
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn config_sits_next_to_the_image() {
        assert_eq!(
            config_path_beside_image("\\EFI\\BOOT\\BOOTX64.EFI"),
            "\\EFI\\BOOT\\appliance.toml"
        );
        assert_eq!(
            config_path_beside_image("/EFI/tdx/appliance.efi\0"),
            "\\EFI\\tdx\\appliance.toml"
        );
        assert_eq!(config_path_beside_image("app.efi"), "\\appliance.toml");
        assert_eq!(config_path_beside_image(""), "\\appliance.toml");
        assert_eq!(config_path_beside_image("\\app.efi"), "\\appliance.toml");
    }

    #[test]
    fn config_sits_next_to_the_boot_file() {
        assert_eq!(
            config_path_beside_boot_file("appliance.efi"),
            "appliance.toml"
        );
        assert_eq!(
            config_path_beside_boot_file("lab/tdx/appliance.efi"),
            "lab/tdx/appliance.toml"
        );
        assert_eq!(
            config_path_beside_boot_file("/srv/appliance.efi"),
            "/srv/appliance.toml"
        );
        assert_eq!(
            config_path_beside_boot_file("boot\\x.efi"),
            "boot\\appliance.toml"
        );
    }

    /// A BOOTP reply with `siaddr`, a `file` field and optional DHCP options.
    fn reply(siaddr: [u8; 4], file: &str, options: &[u8]) -> Vec<u8> {
        let mut packet = vec![0u8; 240];
        packet[0] = 2;
        packet[SIADDR].copy_from_slice(&siaddr);
        packet[FILE][..file.len()].copy_from_slice(file.as_bytes());
        packet[MAGIC].copy_from_slice(&DHCP_MAGIC);
        packet.extend_from_slice(options);
        packet.push(OPTION_END);
        packet.resize(1472, 0);
        packet
    }

    #[test]
    fn reads_siaddr_and_the_file_field() {
        // What QEMU's built-in DHCP/TFTP server sends.
        let packet = reply([10, 0, 2, 2], "appliance.efi", &[53, 1, 5]);
        assert_eq!(
            BootReply::parse(&packet),
            Some(BootReply {
                server: Ipv4Addr::new(10, 0, 2, 2),
                boot_file: "appliance.efi".into()
            })
        );
    }

    #[test]
    fn options_67_and_66_take_precedence_or_fill_in() {
        let mut options = vec![OPTION_BOOT_FILE, 13];
        options.extend_from_slice(b"lab/tdx.efi\0\0");
        options.extend_from_slice(&[OPTION_TFTP_SERVER, 11]);
        options.extend_from_slice(b"192.168.0.9");
        let packet = reply([0; 4], "ignored.efi", &options);
        assert_eq!(
            BootReply::parse(&packet),
            Some(BootReply {
                server: Ipv4Addr::new(192, 168, 0, 9),
                boot_file: "lab/tdx.efi".into()
            })
        );
        // No siaddr, option 66 a host name: the DHCP server identifier is used.
        let mut options = vec![OPTION_TFTP_SERVER, 4];
        options.extend_from_slice(b"boot");
        options.extend_from_slice(&[OPTION_SERVER_ID, 4, 172, 16, 0, 1]);
        let packet = reply([0; 4], "a.efi", &options);
        assert_eq!(
            BootReply::parse(&packet).map(|r| r.server),
            Some(Ipv4Addr::new(172, 16, 0, 1))
        );
    }

    #[test]
    fn overloaded_file_field_holds_options() {
        let mut packet = reply([10, 1, 1, 1], "", &[OPTION_OVERLOAD, 1, 1]);
        let mut in_file = vec![OPTION_BOOT_FILE, 5];
        in_file.extend_from_slice(b"x.efi");
        in_file.push(OPTION_END);
        packet[FILE.start..FILE.start + in_file.len()].copy_from_slice(&in_file);
        assert_eq!(
            BootReply::parse(&packet).map(|r| r.boot_file),
            Some("x.efi".into())
        );
    }

    #[test]
    fn packets_without_a_boot_file_or_server_give_none() {
        assert_eq!(BootReply::parse(&[]), None);
        assert_eq!(BootReply::parse(&[0u8; 100]), None);
        assert_eq!(BootReply::parse(&reply([10, 0, 2, 2], "", &[])), None);
        assert_eq!(BootReply::parse(&reply([0; 4], "a.efi", &[])), None);
    }

    #[test]
    fn truncated_and_random_options_never_panic() {
        for tail in [
            &[OPTION_BOOT_FILE][..],
            &[OPTION_BOOT_FILE, 200, 1],
            &[1, 2, 3, 4, 5],
        ] {
            let mut packet = reply([10, 0, 2, 2], "a.efi", &[]);
            packet.truncate(240);
            packet.extend_from_slice(tail);
            assert!(BootReply::parse(&packet).is_some());
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200 {
            let packet: Vec<u8> = (0..400)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = BootReply::parse(&packet);
        }
    }

    #[test]
    fn tftp_paths_are_nul_terminated_ascii() {
        assert_eq!(tftp_path_bytes("a/b.toml"), Some(b"a/b.toml\0".to_vec()));
        assert_eq!(tftp_path_bytes("ä"), None);
        assert_eq!(tftp_path_bytes("a\0b"), None);
    }
}
