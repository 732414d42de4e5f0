//! The part of a vCPU's x2APIC that TDX keeps inside the TD: the virtual-APIC page's task
//! priority, processor priority, in-service, trigger-mode and request registers, and EOI.
//!
//! On TDX hardware these registers never leave the CPU (virtual-interrupt delivery), while
//! every other x2APIC register (timer, LVTs, ICR, spurious vector, ID) is the VMM's: the
//! guest reaches them through #VE and TDVMCALL Instruction.RDMSR/WRMSR. The VMM posts
//! interrupts into the vCPU's posted-interrupt request bits; the CPU merges them into IRR and
//! delivers them by priority. This object is that CPU side; the engine drains the posted
//! bits into it and injects what [`VirtualApicPage::deliverable`] names. Register semantics:
//! Intel SDM vol. 3A chapter 11 ("Advanced Programmable Interrupt Controller") and chapter
//! 30 of vol. 3C ("APIC Virtualization and Virtual Interrupts"). Sans-IO.

/// IA32_X2APIC_TPR.
pub const TPR: u32 = 0x808;
const PPR: u32 = 0x80A;
const EOI: u32 = 0x80B;
const ISR0: u32 = 0x810;
const ISR7: u32 = 0x817;
const TMR0: u32 = 0x818;
const TMR7: u32 = 0x81F;
const IRR0: u32 = 0x820;
const IRR7: u32 = 0x827;

/// Whether the CPU virtualizes x2APIC MSR `msr` itself (no #VE): TPR, PPR, EOI, ISR, TMR,
/// IRR. The same set edk2's x2APIC library reads with RDMSR/WRMSR instead of TDVMCALL in a
/// TD (`UefiCpuPkg/Library/BaseXApicX2ApicLib`, `AccessMsrTdxCall`).
pub fn is_virtualized(msr: u32) -> bool {
    matches!(msr, TPR | PPR | EOI | ISR0..=IRR7)
}

/// A register access the CPU refuses: the guest gets #GP (read-only or write-only
/// registers, reserved bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicFault;

/// One vCPU's virtual-APIC page.
#[derive(Clone, Debug, Default)]
pub struct VirtualApicPage {
    tpr: u32,
    irr: [u64; 4],
    isr: [u64; 4],
}

fn bit_set(bits: &mut [u64; 4], vector: u8) {
    bits[usize::from(vector >> 6)] |= 1 << (vector & 63);
}

fn bit_clear(bits: &mut [u64; 4], vector: u8) {
    bits[usize::from(vector >> 6)] &= !(1 << (vector & 63));
}

fn highest(bits: &[u64; 4]) -> Option<u8> {
    (0..4usize).rev().find_map(|i| {
        let w = bits[i];
        (w != 0).then(|| u8::try_from(i * 64 + 63 - w.leading_zeros() as usize).unwrap_or(u8::MAX))
    })
}

/// The 32-bit word `index` (0–7) of a 256-bit register.
fn word(bits: &[u64; 4], index: u32) -> u64 {
    let w = bits[(index / 2) as usize & 3];
    if index.is_multiple_of(2) {
        w & 0xFFFF_FFFF
    } else {
        w >> 32
    }
}

impl VirtualApicPage {
    /// Processor priority: the higher of TPR and the class of the highest in-service vector.
    fn ppr(&self) -> u32 {
        let isr_class = highest(&self.isr).map_or(0, |v| u32::from(v) & 0xF0);
        if (self.tpr & 0xF0) >= isr_class {
            self.tpr & 0xFF
        } else {
            isr_class
        }
    }

    /// Merges posted-interrupt request bits into IRR (vectors 0–15 are not interrupts).
    pub fn merge_posted(&mut self, pir: [u64; 4]) {
        for (irr, posted) in self.irr.iter_mut().zip(pir) {
            *irr |= posted;
        }
        self.irr[0] &= !0xFFFF;
    }

    /// The vector to inject now, if one is requested above the processor priority.
    pub fn deliverable(&self) -> Option<u8> {
        let vector = highest(&self.irr)?;
        (u32::from(vector) & 0xF0 > self.ppr() & 0xF0).then_some(vector)
    }

    /// The CPU took `vector`: IRR to ISR.
    pub fn acknowledge(&mut self, vector: u8) {
        bit_clear(&mut self.irr, vector);
        bit_set(&mut self.isr, vector);
    }

    /// RDMSR of a virtualized register.
    pub fn read(&self, msr: u32) -> Result<u64, ApicFault> {
        Ok(match msr {
            TPR => u64::from(self.tpr),
            PPR => u64::from(self.ppr()),
            ISR0..=ISR7 => word(&self.isr, msr - ISR0),
            TMR0..=TMR7 => 0,
            IRR0..=IRR7 => word(&self.irr, msr - IRR0),
            _ => return Err(ApicFault),
        })
    }

    /// WRMSR of a virtualized register: TPR, or EOI (which ends the highest in-service
    /// vector); the others are read-only.
    pub fn write(&mut self, msr: u32, value: u64) -> Result<(), ApicFault> {
        match msr {
            TPR if value <= 0xFF => self.tpr = (value & 0xFF) as u32,
            EOI if value == 0 => {
                if let Some(v) = highest(&self.isr) {
                    bit_clear(&mut self.isr, v);
                }
            }
            _ => return Err(ApicFault),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posted(vectors: &[u8]) -> [u64; 4] {
        let mut p = [0; 4];
        for v in vectors {
            bit_set(&mut p, *v);
        }
        p
    }

    #[test]
    fn priority_gates_delivery_and_eoi_ends_the_highest() {
        let mut a = VirtualApicPage::default();
        a.merge_posted(posted(&[0x41, 0x85]));
        assert_eq!(a.deliverable(), Some(0x85));
        a.acknowledge(0x85);
        // 0x41's class is below the in-service 0x85.
        assert_eq!(a.deliverable(), None);
        assert_eq!(a.read(PPR), Ok(0x80));
        assert_eq!(a.read(ISR0 + 4), Ok(1 << 5));
        assert_eq!(a.write(EOI, 0), Ok(()));
        assert_eq!(a.deliverable(), Some(0x41));
        assert_eq!(a.write(TPR, 0x50), Ok(()));
        assert_eq!(a.deliverable(), None);
        assert_eq!(a.read(IRR0 + 2), Ok(1 << 1));
    }

    #[test]
    fn exception_vectors_are_never_requested() {
        let mut a = VirtualApicPage::default();
        a.merge_posted(posted(&[3, 15]));
        assert_eq!(a.deliverable(), None);
    }

    #[test]
    fn read_only_write_only_and_reserved_bits_fault() {
        let mut a = VirtualApicPage::default();
        assert_eq!(a.read(EOI), Err(ApicFault));
        assert_eq!(a.write(EOI, 1), Err(ApicFault));
        assert_eq!(a.write(TPR, 0x100), Err(ApicFault));
        assert_eq!(a.write(PPR, 0), Err(ApicFault));
        assert_eq!(a.write(ISR0, 0), Err(ApicFault));
    }

    #[test]
    fn the_virtualized_set_is_the_one_edk2_reads_directly() {
        for msr in [TPR, PPR, EOI, ISR0, ISR7, TMR0, TMR7, IRR0, IRR7] {
            assert!(is_virtualized(msr));
        }
        for msr in [0x802, 0x80F, 0x830, 0x832, 0x838, 0x83F] {
            assert!(!is_virtualized(msr));
        }
    }
}
