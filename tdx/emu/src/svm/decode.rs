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

#[cfg(test)]
mod tests {
    use super::*;

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
