//! The end-to-end test's own TD guest for the SVM engine: a TDVF-format image (OVMF's GUIDed
//! table and TDX metadata, so the appliance builds and measures it like any TDVF) holding
//! real x86 code: from the reset vector it enters long mode with its own page tables and GDT,
//! checks TDG.VP.INFO's GPA width, prints a line through TDG.VP.VMCALL Instruction.IO to
//! COM1 one byte at a time, and shuts down with a triple fault (an empty IDT and `int3`),
//! which the host reports as the TD stopping. A wrong answer from the module or the host
//! makes it report fatal error 0x5EC0DE instead.
//!
//! The code is `tests/guests/hello.S`, assembled with GNU as and linked at 0xFFFF4000:
//! `as --64 -o hello.o hello.S && ld -m elf_x86_64 -Ttext=0xffff4000 --oformat binary -o
//! hello.bin hello.o`; its bytes are below so that the tests need no assembler.

use tdx_runtime::tdvf::{OVMF_TABLE_FOOTER_GUID, TDVF_SIGNATURE, TDX_METADATA_OFFSET_GUID};

/// What the guest prints.
pub const GREETING: &str = "hello from a TD on SVM";

/// `hello.bin`.
const CODE: &[u8] = &[
    0xb8, 0x00, 0x00, 0xff, 0xff, 0x0f, 0x22, 0xd8, 0x0f, 0x20, 0xe0, 0x83, 0xc8, 0x20, 0x0f, 0x22,
    0xe0, 0x0f, 0x01, 0x15, 0x20, 0x30, 0xff, 0xff, 0x0f, 0x20, 0xc0, 0x0d, 0x00, 0x00, 0x00, 0x80,
    0x0f, 0x22, 0xc0, 0xea, 0x2a, 0x40, 0xff, 0xff, 0x08, 0x00, 0x66, 0xb8, 0x10, 0x00, 0x8e, 0xd8,
    0x8e, 0xc0, 0x8e, 0xd0, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x66, 0x0f, 0x01, 0xcc, 0x48, 0x83, 0xf9,
    0x30, 0x75, 0x48, 0x48, 0x8d, 0x35, 0x68, 0x00, 0x00, 0x00, 0x44, 0x0f, 0xb6, 0x3e, 0x45, 0x85,
    0xff, 0x74, 0x30, 0x31, 0xc0, 0xb9, 0x00, 0xfc, 0x00, 0x00, 0x45, 0x31, 0xd2, 0x41, 0xbb, 0x1e,
    0x00, 0x00, 0x00, 0x41, 0xbc, 0x01, 0x00, 0x00, 0x00, 0x41, 0xbd, 0x01, 0x00, 0x00, 0x00, 0x41,
    0xbe, 0xf8, 0x03, 0x00, 0x00, 0x66, 0x0f, 0x01, 0xcc, 0x4d, 0x85, 0xd2, 0x75, 0x0d, 0x48, 0xff,
    0xc6, 0xeb, 0xc7, 0x0f, 0x01, 0x1d, 0x1e, 0x00, 0x00, 0x00, 0xcc, 0x31, 0xc0, 0xb9, 0x00, 0x10,
    0x00, 0x00, 0x45, 0x31, 0xd2, 0x41, 0xbb, 0x03, 0x00, 0x01, 0x00, 0x41, 0xbc, 0xde, 0xc0, 0x5e,
    0x00, 0x66, 0x0f, 0x01, 0xcc, 0xf4, 0xeb, 0xe3, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x20, 0x66, 0x72, 0x6f, 0x6d, 0x20, 0x61, 0x20, 0x54,
    0x44, 0x20, 0x6f, 0x6e, 0x20, 0x53, 0x56, 0x4d, 0x0a, 0x00,
];

/// Image size: 64 KiB at the top of the 4 GiB space.
const LEN: usize = 0x1_0000;
/// GPA of the image's first byte.
const BASE: u64 = 0xFFFF_0000;
/// Image offsets: page tables, GDT, code, TDX metadata.
const PML4: usize = 0x0000;
const PDPT: usize = 0x1000;
const PD: usize = 0x2000;
const GDT: usize = 0x3000;
const GDTR: usize = 0x3020;
const CODE_AT: usize = 0x4000;
const DESCRIPTOR_AT: usize = 0xE000;

/// The test guest's TDVF image.
pub fn image() -> Vec<u8> {
    let mut img = vec![0u8; LEN];
    let mut put = |at: usize, bytes: &[u8]| img[at..at + bytes.len()].copy_from_slice(bytes);
    let gpa = |offset: usize| BASE + offset as u64;
    // Identity map of the top 2 MiB below 4 GiB: PML4[0] -> PDPT, PDPT[3] -> PD,
    // PD[511] = a 2 MiB page at 0xFFE00000 (present, writable, large).
    put(PML4, &(gpa(PDPT) | 3).to_le_bytes());
    put(PDPT + 3 * 8, &(gpa(PD) | 3).to_le_bytes());
    put(PD + 511 * 8, &(0xFFE0_0000u64 | 0x83).to_le_bytes());
    // GDT: null, 64-bit code (selector 0x08), data (0x10); GDTR = limit, base.
    put(GDT + 8, &0x00AF_9A00_0000_FFFFu64.to_le_bytes());
    put(GDT + 16, &0x00CF_9200_0000_FFFFu64.to_le_bytes());
    put(GDTR, &23u16.to_le_bytes());
    put(GDTR + 2, &(gpa(GDT) as u32).to_le_bytes());
    put(CODE_AT, CODE);
    // Reset vector (0xFFFFFFF0): jmp rel32 to the code.
    let next = gpa(LEN - 16 + 5) as i64;
    let rel = (gpa(CODE_AT) as i64 - next) as i32;
    put(LEN - 16, &[0xE9]);
    put(LEN - 15, &rel.to_le_bytes());
    // TDX metadata: the image as the BFV (measured), TempMem and the TD HOB in RAM.
    // (data offset, raw size, GPA, memory size, type, attributes)
    let sections: [(u32, u32, u64, u64, u32, u32); 3] = [
        (0, LEN as u32, BASE, LEN as u64, 0, 1),
        (0, 0, 0x80_0000, 0x6000, 3, 0),
        (0, 0, 0x80_9000, 0x2000, 2, 0),
    ];
    let n = sections.len() as u32;
    put(DESCRIPTOR_AT, &TDVF_SIGNATURE.to_le_bytes());
    put(DESCRIPTOR_AT + 4, &(16 + 32 * n).to_le_bytes());
    put(DESCRIPTOR_AT + 8, &1u32.to_le_bytes());
    put(DESCRIPTOR_AT + 12, &n.to_le_bytes());
    for (i, (off, raw, gpa, size, kind, attrs)) in sections.iter().enumerate() {
        let at = DESCRIPTOR_AT + 16 + 32 * i;
        put(at, &off.to_le_bytes());
        put(at + 4, &raw.to_le_bytes());
        put(at + 8, &gpa.to_le_bytes());
        put(at + 16, &size.to_le_bytes());
        put(at + 24, &kind.to_le_bytes());
        put(at + 28, &attrs.to_le_bytes());
    }
    // OVMF's GUIDed table, ending 32 bytes before the end of the image.
    let mut table = Vec::new();
    table.extend_from_slice(&((LEN - DESCRIPTOR_AT) as u32).to_le_bytes());
    table.extend_from_slice(&(4u16 + 18).to_le_bytes());
    table.extend_from_slice(&TDX_METADATA_OFFSET_GUID);
    table.extend_from_slice(&((table.len() + 18) as u16).to_le_bytes());
    table.extend_from_slice(&OVMF_TABLE_FOOTER_GUID);
    let end = LEN - 32;
    put(end - table.len(), &table);
    img
}
