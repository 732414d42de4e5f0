//! The end-to-end tests' TD guest in Rust (`tests/guests/td-probe`, built for
//! x86_64-unknown-none), packed here into a TDVF-format image: the ELF's loadable segments
//! laid out at their addresses in a 256 KiB boot firmware volume at the top of the 4 GiB
//! space (measured), TempMem for its page tables and stack at 8 MiB, the TD HOB after it,
//! and the TDX metadata with OVMF's GUIDed table. The hostile variant differs in one byte.

use std::path::Path;

use tdx_runtime::tdvf::{SectionRecord, write_tdvf_metadata};

/// GPA of the image's first byte (the probe's linker script).
const BASE: u64 = 0xFFFC_0000;
/// Image size.
const LEN: usize = 0x4_0000;
/// Where the TDX metadata descriptor goes (the last 8 KiB before the reset vector, kept
/// free by the linker script).
const DESCRIPTOR_AT: usize = 0x3_E000;
/// The hostile-mode flag byte (image offset of the probe's `.mode` section).
const MODE_AT: usize = 0;
/// The value the probe extends into RTMR 2.
pub const RTMR_VALUE: &[u8; 48] = b"td-probe extends RTMR 2 with these 48 bytes.....";

/// The probe's image from its ELF file; `hostile` selects the hostile variant.
pub fn image(elf_path: &Path, hostile: bool) -> Result<Vec<u8>, String> {
    let elf = std::fs::read(elf_path).map_err(|e| format!("{}: {e}", elf_path.display()))?;
    let mut img = vec![0u8; LEN];
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) || elf.get(4) != Some(&2) {
        return Err("td-probe: not an ELF64 file".into());
    }
    let phoff = u64_at(0x20).ok_or("short ELF header")? as usize;
    let phentsize = usize::from(u16_at(0x36).ok_or("short ELF header")?);
    let phnum = usize::from(u16_at(0x38).ok_or("short ELF header")?);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let kind = elf.get(ph..ph + 4).ok_or("short program header")?;
        if kind != [1, 0, 0, 0] {
            continue; // not PT_LOAD
        }
        let offset = u64_at(ph + 8).ok_or("short program header")? as usize;
        let vaddr = u64_at(ph + 16).ok_or("short program header")?;
        let filesz = u64_at(ph + 32).ok_or("short program header")? as usize;
        let at = vaddr
            .checked_sub(BASE)
            .map(|a| a as usize)
            .filter(|a| a + filesz <= LEN)
            .ok_or(format!("segment at {vaddr:#x} outside the image"))?;
        let bytes = elf
            .get(offset..offset + filesz)
            .ok_or("segment beyond the ELF file")?;
        img[at..at + filesz].copy_from_slice(bytes);
    }
    img[MODE_AT] = u8::from(hostile);
    let sections: [SectionRecord; 3] = [
        (0, LEN as u32, BASE, LEN as u64, 0, 1),
        (0, 0, 0x80_0000, 0x1_0000, 3, 0),
        (0, 0, 0x81_0000, 0x2000, 2, 0),
    ];
    write_tdvf_metadata(&mut img, DESCRIPTOR_AT, &sections);
    Ok(img)
}
