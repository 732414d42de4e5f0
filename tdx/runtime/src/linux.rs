//! Linux boot inputs: recognising a kernel (a bzImage with an EFI stub, by its x86 boot
//! protocol header) and an initramfs (by its first bytes), and the limits they carry.
//!
//! Header fields and offsets: the kernel's `Documentation/arch/x86/boot.rst` ("The real-mode
//! kernel header"): `setup_sects` at 0x1F1, `boot_flag` 0xAA55 at 0x1FE, the magic "HdrS"
//! at 0x202, the protocol version at 0x206, `loadflags` at 0x211, `xloadflags` at 0x236,
//! `cmdline_size` at 0x238 (protocol 2.06 and later). The firmware boots the kernel as a
//! PE/COFF image through its EFI stub, so the file must also start with "MZ". Sans-IO: the
//! caller passes the file's first bytes.

/// Bytes of the file's start the parsers need.
pub const HEADER_BYTES: usize = 0x270;

/// What a kernel's header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelHeader {
    /// Boot protocol version (major << 8 | minor).
    pub protocol: u16,
    /// Size of the real-mode setup code in bytes (`(setup_sects + 1) * 512`).
    pub setup_bytes: u64,
    /// Longest kernel command line, without its terminating NUL.
    pub cmdline_max: u32,
}

/// Why a file is not a bootable kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// Shorter than its header.
    #[error("too short for an x86 boot protocol header")]
    TooShort,
    /// No "HdrS" magic or boot flag.
    #[error("no x86 boot protocol header (HdrS, boot flag 0xAA55)")]
    NoHeader,
    /// A protocol older than 2.12 (no `xloadflags`).
    #[error("boot protocol {0:#06x} is older than 2.12")]
    OldProtocol(u16),
    /// Not a 64-bit kernel loadable high.
    #[error("not a 64-bit kernel that loads high (loadflags/xloadflags)")]
    Not64Bit,
    /// No EFI stub (the file does not start with "MZ").
    #[error("no EFI stub (the file does not start with MZ)")]
    NoEfiStub,
    /// The setup code claims more bytes than the file has.
    #[error("the setup code is longer than the file")]
    Truncated,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl KernelHeader {
    /// Parses the header from the file's first [`HEADER_BYTES`] bytes; `file_len` is the
    /// whole file's length.
    pub fn parse(start: &[u8], file_len: u64) -> Result<KernelHeader, KernelError> {
        if start.len() < HEADER_BYTES {
            return Err(KernelError::TooShort);
        }
        if u16_at(start, 0x1FE) != 0xAA55 || &start[0x202..0x206] != b"HdrS" {
            return Err(KernelError::NoHeader);
        }
        let protocol = u16_at(start, 0x206);
        if protocol < 0x020C {
            return Err(KernelError::OldProtocol(protocol));
        }
        let loaded_high = start[0x211] & 1 != 0;
        let kernel_64 = u16_at(start, 0x236) & 1 != 0;
        if !loaded_high || !kernel_64 {
            return Err(KernelError::Not64Bit);
        }
        if &start[0..2] != b"MZ" {
            return Err(KernelError::NoEfiStub);
        }
        let sects = match start[0x1F1] {
            0 => 4,
            n => u64::from(n),
        };
        let setup_bytes = (sects + 1) * 512;
        if setup_bytes >= file_len {
            return Err(KernelError::Truncated);
        }
        Ok(KernelHeader {
            protocol,
            setup_bytes,
            cmdline_max: u32_at(start, 0x238),
        })
    }
}

/// Whether a file starting with `start` is an initramfs: a newc cpio archive, or one
/// compressed with a method the kernel's initramfs unpacker knows (gzip, bzip2, LZMA, XZ,
/// LZ4 legacy, zstd).
pub fn is_initramfs(start: &[u8]) -> bool {
    const MAGICS: [&[u8]; 8] = [
        b"070701",
        b"070702",
        &[0x1F, 0x8B],
        b"BZh",
        &[0x5D, 0x00, 0x00],
        &[0xFD, b'7', b'z', b'X', b'Z', 0x00],
        &[0x02, 0x21, 0x4C, 0x18],
        &[0x28, 0xB5, 0x2F, 0xFD],
    ];
    MAGICS.iter().any(|m| start.starts_with(m))
}

/// A file of `len` bytes with the header of a 6.x x86-64 bzImage (boot protocol 2.15, 31
/// setup sectors, EFI stub) that accepts `cmdline_max` bytes of command line (tests).
#[cfg(test)]
pub(crate) fn synthetic_bzimage(len: usize, cmdline_max: u32) -> alloc::vec::Vec<u8> {
    let mut b = alloc::vec![0u8; len];
    b[0..2].copy_from_slice(b"MZ");
    b[0x1F1] = 31;
    b[0x1FE..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
    b[0x211] = 1;
    b[0x236..0x238].copy_from_slice(&0x7Fu16.to_le_bytes());
    b[0x238..0x23C].copy_from_slice(&cmdline_max.to_le_bytes());
    b
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn bzimage(len: usize) -> Vec<u8> {
        synthetic_bzimage(len, 2047)
    }

    #[test]
    fn a_64_bit_efi_bzimage_is_a_kernel() {
        let b = bzimage(0x10000);
        let h = KernelHeader::parse(&b[..HEADER_BYTES], b.len() as u64).unwrap();
        assert_eq!(h.protocol, 0x020F);
        assert_eq!(h.setup_bytes, 32 * 512);
        assert_eq!(h.cmdline_max, 2047);
    }

    #[test]
    fn what_is_not_a_bootable_kernel_says_why() {
        let parse = |b: &[u8], len: u64| KernelHeader::parse(b, len);
        assert_eq!(parse(&[0; 16], 16), Err(KernelError::TooShort));
        assert_eq!(
            parse(&[0; HEADER_BYTES], 1 << 20),
            Err(KernelError::NoHeader)
        );
        let mut old = bzimage(0x10000);
        old[0x206] = 0x0A;
        assert_eq!(
            parse(&old[..HEADER_BYTES], 0x10000),
            Err(KernelError::OldProtocol(0x020A))
        );
        let mut low = bzimage(0x10000);
        low[0x236] = 0;
        assert_eq!(
            parse(&low[..HEADER_BYTES], 0x10000),
            Err(KernelError::Not64Bit)
        );
        let mut no_stub = bzimage(0x10000);
        no_stub[0] = 0;
        assert_eq!(
            parse(&no_stub[..HEADER_BYTES], 0x10000),
            Err(KernelError::NoEfiStub)
        );
        let short = bzimage(0x10000);
        assert_eq!(
            parse(&short[..HEADER_BYTES], 0x2000),
            Err(KernelError::Truncated)
        );
    }

    #[test]
    fn initramfs_formats_are_recognised_and_others_are_not() {
        for start in [
            &b"070701000000"[..],
            &[0x1F, 0x8B, 8, 0][..],
            &[0x28, 0xB5, 0x2F, 0xFD, 0][..],
            &[0xFD, b'7', b'z', b'X', b'Z', 0x00][..],
        ] {
            assert!(is_initramfs(start));
        }
        assert!(!is_initramfs(b"MZ\x90\x00"));
        assert!(!is_initramfs(&[]));
    }
}
