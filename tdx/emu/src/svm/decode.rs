//! The few instruction decodings the engine needs. The CPU under the engine has no decode
//! assists (QEMU's SVM offers none), so a control-register intercept says which register
//! but not the operand, and a #UD says nothing: the engine reads the instruction bytes.
//!
//! Encodings: Intel SDM vol. 2 ("MOV—Move to/from Control Registers": `0F 20 /r` reads,
//! `0F 22 /r` writes, ModRM.mod ignored and treated as 11b, reg the control register, r/m
//! the general register; REX.R selects CR8 and REX.B R8–R15).

/// TDCALL's encoding (`66 0F 01 CC`).
pub const TDCALL: [u8; 4] = [0x66, 0x0F, 0x01, 0xCC];

/// A decoded `MOV` to or from a control register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MovCr {
    /// True for `MOV CRn, reg` (a write).
    pub write: bool,
    /// Control register number.
    pub cr: u8,
    /// General register number (0 RAX … 15 R15, the ModRM/REX numbering).
    pub gpr: u8,
    /// Instruction length in bytes.
    pub len: u64,
}

/// Decodes `MOV` to or from a control register at the start of `bytes` (at most one REX
/// prefix; `long_mode` says whether REX exists). `None` for anything else.
pub fn mov_cr(bytes: &[u8], long_mode: bool) -> Option<MovCr> {
    let (rex, rest) = match bytes.first() {
        Some(&b) if long_mode && b & 0xF0 == 0x40 => (b, bytes.get(1..)?),
        _ => (0, bytes),
    };
    let [0x0F, op @ (0x20 | 0x22), modrm, ..] = *rest else {
        return None;
    };
    let cr = (modrm >> 3) & 7 | (rex & 4) << 1;
    let gpr = modrm & 7 | (rex & 1) << 3;
    Some(MovCr {
        write: op == 0x22,
        cr,
        gpr,
        len: if rex != 0 { 4 } else { 3 },
    })
}

/// The memory operand of a data-moving instruction, as far as its linear address goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    /// Base register (ModRM/REX numbering), if any.
    pub base: Option<u8>,
    /// Index register and scale, if any.
    pub index: Option<(u8, u8)>,
    /// Displacement (sign-extended).
    pub disp: i64,
    /// RIP-relative: the displacement counts from the next instruction.
    pub rip_relative: bool,
    /// An FS (4) or GS (5) segment override (the only segments with a base in long mode).
    pub segment: Option<u8>,
    /// A 32-bit address size (the 0x67 prefix).
    pub addr32: bool,
    /// Instruction length in bytes.
    pub len: u64,
}

impl MemOperand {
    /// The linear address, given a register file (`reg(n)`, ModRM numbering), the
    /// instruction's own address `rip` and the FS/GS bases.
    pub fn linear(&self, reg: impl Fn(u8) -> u64, rip: u64, fs_base: u64, gs_base: u64) -> u64 {
        let mut ea = self.disp as u64;
        if self.rip_relative {
            ea = ea.wrapping_add(rip.wrapping_add(self.len));
        }
        if let Some(b) = self.base {
            ea = ea.wrapping_add(reg(b));
        }
        if let Some((i, scale)) = self.index {
            ea = ea.wrapping_add(reg(i).wrapping_mul(u64::from(scale)));
        }
        if self.addr32 {
            ea &= 0xFFFF_FFFF;
        }
        match self.segment {
            Some(4) => ea.wrapping_add(fs_base),
            Some(5) => ea.wrapping_add(gs_base),
            _ => ea,
        }
    }
}

/// Decodes the memory operand of the 64-bit-mode instructions MMIO is done with (what a TD
/// guest's #VE handler emulates, Linux `insn_decode_mmio`): MOV `88`/`89`/`8A`/`8B`/`C6`/`C7`
/// and MOVZX/MOVSX `0F B6`/`B7`/`BE`/`BF`, after legacy prefixes and a REX prefix (Intel SDM
/// vol. 2, 2.1 and 2.2: ModRM, SIB, displacement, RIP-relative addressing). `None` for other
/// instructions and register operands.
pub fn memory_operand(bytes: &[u8]) -> Option<MemOperand> {
    let mut at = 0usize;
    let mut segment = None;
    let mut addr32 = false;
    let mut opsize16 = false;
    loop {
        match *bytes.get(at)? {
            0x64 => segment = Some(4),
            0x65 => segment = Some(5),
            0x67 => addr32 = true,
            0x66 => opsize16 = true,
            0x26 | 0x2E | 0x36 | 0x3E | 0xF0 | 0xF2 | 0xF3 => {}
            _ => break,
        }
        at += 1;
    }
    let rex = match *bytes.get(at)? {
        b @ 0x40..=0x4F => {
            at += 1;
            b
        }
        _ => 0,
    };
    let imm = match *bytes.get(at)? {
        0x88..=0x8B => 0,
        0xC6 => 1,
        0xC7 if opsize16 => 2,
        0xC7 => 4,
        0x0F => {
            at += 1;
            match *bytes.get(at)? {
                0xB6 | 0xB7 | 0xBE | 0xBF => 0,
                _ => return None,
            }
        }
        _ => return None,
    };
    at += 1;
    let modrm = *bytes.get(at)?;
    at += 1;
    let (md, rm) = (modrm >> 6, modrm & 7);
    if md == 3 {
        return None;
    }
    let mut op = MemOperand {
        base: None,
        index: None,
        disp: 0,
        rip_relative: false,
        segment,
        addr32,
        len: 0,
    };
    let mut disp_bytes = match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = *bytes.get(at)?;
        at += 1;
        let index = (sib >> 3) & 7 | (rex & 2) << 2;
        if index != 4 {
            op.index = Some((index, 1 << (sib >> 6)));
        }
        if sib & 7 == 5 && md == 0 {
            disp_bytes = 4;
        } else {
            op.base = Some(sib & 7 | (rex & 1) << 3);
        }
    } else if rm == 5 && md == 0 {
        op.rip_relative = true;
        disp_bytes = 4;
    } else {
        op.base = Some(rm | (rex & 1) << 3);
    }
    op.disp = match disp_bytes {
        1 => i64::from(*bytes.get(at)? as i8),
        4 => i64::from(i32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?)),
        _ => 0,
    };
    op.len = (at + disp_bytes + imm) as u64;
    Some(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_operands_of_mmio_moves() {
        let regs = |n: u8| u64::from(n) * 0x1000;
        // mov [rsi], dil (40 88 3E): Linux's iowrite8.
        let op = memory_operand(&[0x40, 0x88, 0x3E]).expect("decodes");
        assert_eq!((op.base, op.len), (Some(6), 3));
        assert_eq!(op.linear(regs, 0, 0, 0), 0x6000);
        // mov eax, [rdi + 0x14] (8B 47 14).
        let op = memory_operand(&[0x8B, 0x47, 0x14]).expect("decodes");
        assert_eq!(op.linear(regs, 0, 0, 0), 0x7014);
        // movzx eax, word [r9 + rcx*4 - 8] (41 0F B7 44 89 F8).
        let op = memory_operand(&[0x41, 0x0F, 0xB7, 0x44, 0x89, 0xF8]).expect("decodes");
        assert_eq!(op.len, 6);
        assert_eq!(op.linear(regs, 0, 0, 0), 0x9000 + 0x4000 - 8);
        // mov dword [rip + 0x100], 5 (C7 05 00 01 00 00 05 00 00 00): from the next insn.
        let op = memory_operand(&[0xC7, 0x05, 0, 1, 0, 0, 5, 0, 0, 0]).expect("decodes");
        assert_eq!(op.len, 10);
        assert_eq!(op.linear(regs, 0x40_0000, 0, 0), 0x40_0000 + 10 + 0x100);
        // mov word gs:[0x20], 1 with an operand-size prefix, absolute (SIB, no base).
        let op =
            memory_operand(&[0x65, 0x66, 0xC7, 0x04, 0x25, 0x20, 0, 0, 0, 1, 0]).expect("decodes");
        assert_eq!(op.len, 11);
        assert_eq!(op.linear(regs, 0, 0, 0x7000_0000), 0x7000_0020);
        // Register operands and other opcodes have no memory operand.
        assert_eq!(memory_operand(&[0x89, 0xC0]), None);
        assert_eq!(memory_operand(&[0x90]), None);
        assert_eq!(memory_operand(&[0x8B]), None, "truncated");
    }

    #[test]
    fn reads_and_writes_of_control_registers() {
        // mov eax, cr0 (OVMF's reset vector), mov cr3, eax, mov cr4, ecx, mov cr8, r9.
        assert_eq!(
            mov_cr(&[0x0F, 0x20, 0xC0], false),
            Some(MovCr {
                write: false,
                cr: 0,
                gpr: 0,
                len: 3
            })
        );
        assert_eq!(
            mov_cr(&[0x0F, 0x22, 0xD8], false),
            Some(MovCr {
                write: true,
                cr: 3,
                gpr: 0,
                len: 3
            })
        );
        assert_eq!(
            mov_cr(&[0x0F, 0x22, 0xE1], false),
            Some(MovCr {
                write: true,
                cr: 4,
                gpr: 1,
                len: 3
            })
        );
        assert_eq!(
            mov_cr(&[0x45, 0x0F, 0x22, 0xC1], true),
            Some(MovCr {
                write: true,
                cr: 8,
                gpr: 9,
                len: 4
            })
        );
    }

    #[test]
    fn other_bytes_are_not_mov_cr() {
        assert_eq!(mov_cr(&[0x0F, 0x21, 0xC0], false), None);
        assert_eq!(mov_cr(&[0x0F, 0x20], false), None);
        assert_eq!(mov_cr(&[0x45, 0x0F, 0x22, 0xC1], false), None);
        assert_eq!(mov_cr(&[], true), None);
    }
}
