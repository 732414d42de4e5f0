//! The vCPU's x2APIC as the module keeps it: interrupt request and in-service registers,
//! the task priority, and the local timer in its one-shot, periodic and TSC-deadline modes.
//!
//! Register numbers and semantics: Intel SDM vol. 3A chapter 11 ("Advanced Programmable
//! Interrupt Controller"), x2APIC MSR map in table 11-6. On TDX hardware the TPR, PPR, EOI,
//! ISR, TMR and IRR live in the virtual-APIC page and never leave the CPU; the rest are the
//! VMM's. Here one object does both, and the engine injects what it says is deliverable.
//!
//! The timer's input clock is 1 GHz divided by TDCR, the APIC bus QEMU models and the one
//! OVMF's `LocalApicTimerDxe` assumes (`PcdFSBClock`), so the firmware's 10 ms tick is 10 ms.
//! Sans-IO: time comes in as arguments (nanoseconds, and the TSC for TSC-deadline mode).

/// First x2APIC MSR.
pub const X2APIC_FIRST: u32 = 0x800;
/// Last x2APIC MSR.
pub const X2APIC_LAST: u32 = 0x8FF;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;

const ID: u32 = 0x802;
const VERSION: u32 = 0x803;
const TPR: u32 = 0x808;
const PPR: u32 = 0x80A;
const EOI: u32 = 0x80B;
const LDR: u32 = 0x80D;
const SVR: u32 = 0x80F;
const ISR0: u32 = 0x810;
const TMR0: u32 = 0x818;
const IRR0: u32 = 0x820;
const ESR: u32 = 0x828;
const ICR: u32 = 0x830;
const LVT_TIMER: u32 = 0x832;
const LVT_THERMAL: u32 = 0x833;
const LVT_PMI: u32 = 0x834;
const LVT_LINT0: u32 = 0x835;
const LVT_LINT1: u32 = 0x836;
const LVT_ERROR: u32 = 0x837;
const TMICT: u32 = 0x838;
const TMCCT: u32 = 0x839;
const TDCR: u32 = 0x83E;
const SELF_IPI: u32 = 0x83F;

/// LVT mask bit.
const LVT_MASKED: u32 = 1 << 16;
/// Version register: version 0x15, six LVT entries (max LVT index 5), no EOI broadcast
/// suppression.
const VERSION_VALUE: u64 = 0x15 | 5 << 16;

/// A register access the x2APIC refuses: the guest gets #GP, as the SDM specifies for
/// reserved or read-only registers and reserved bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicFault;

/// What a register write asks of the engine besides the register change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicEffect {
    /// Nothing else.
    None,
    /// An IPI to other vCPUs (ICR with a destination that is not only this vCPU): the
    /// raw ICR value, for the caller to route.
    Ipi(u64),
}

/// Timer modes (LVT timer bits 18:17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

/// One vCPU's x2APIC.
#[derive(Clone, Debug)]
pub struct VirtualApic {
    id: u32,
    tpr: u32,
    svr: u32,
    irr: [u64; 4],
    isr: [u64; 4],
    esr: u32,
    icr: u64,
    lvt_timer: u32,
    lvt_thermal: u32,
    lvt_pmi: u32,
    lvt_lint0: u32,
    lvt_lint1: u32,
    lvt_error: u32,
    tdcr: u32,
    tmict: u32,
    /// Timer start (ns) of the current count, when counting in one-shot or periodic mode.
    started_ns: Option<u64>,
    /// IA32_TSC_DEADLINE (0 = disarmed).
    tsc_deadline: u64,
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
        (w != 0).then(|| {
            // i < 4 and the bit index < 64, so the vector fits in a byte.
            u8::try_from(i * 64 + 63 - w.leading_zeros() as usize).unwrap_or(u8::MAX)
        })
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

impl VirtualApic {
    /// The x2APIC of vCPU `id` at reset: everything masked, software-disabled.
    pub fn new(id: u32) -> VirtualApic {
        VirtualApic {
            id,
            tpr: 0,
            svr: 0xFF,
            irr: [0; 4],
            isr: [0; 4],
            esr: 0,
            icr: 0,
            lvt_timer: LVT_MASKED,
            lvt_thermal: LVT_MASKED,
            lvt_pmi: LVT_MASKED,
            lvt_lint0: LVT_MASKED,
            lvt_lint1: LVT_MASKED,
            lvt_error: LVT_MASKED,
            tdcr: 0,
            tmict: 0,
            started_ns: None,
            tsc_deadline: 0,
        }
    }

    fn timer_mode(&self) -> TimerMode {
        match (self.lvt_timer >> 17) & 3 {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::OneShot,
        }
    }

    /// The timer's divider from TDCR bits 0, 1 and 3.
    fn divider(&self) -> u64 {
        let code = (self.tdcr & 3) | (self.tdcr >> 1) & 4;
        if code == 7 { 1 } else { 2 << code }
    }

    /// Nanoseconds per timer period (1 GHz bus / divider).
    fn period_ns(&self) -> u64 {
        u64::from(self.tmict) * self.divider()
    }

    /// Processor priority: the higher of TPR and the class of the highest in-service vector.
    fn ppr(&self) -> u32 {
        let isr_class = highest(&self.isr).map_or(0, |v| u32::from(v) & 0xF0);
        if (self.tpr & 0xF0) >= isr_class {
            self.tpr & 0xFF
        } else {
            isr_class
        }
    }

    fn software_enabled(&self) -> bool {
        self.svr & (1 << 8) != 0
    }

    /// Raises `vector` (a fixed interrupt from the timer, a self-IPI or the host).
    pub fn request(&mut self, vector: u8) {
        if vector >= 16 {
            bit_set(&mut self.irr, vector);
        }
    }

    /// Moves an expired timer into IRR. `now_ns` is the clock the count runs on, `tsc` the
    /// guest's TSC for deadline mode.
    pub fn poll_timer(&mut self, now_ns: u64, tsc: u64) {
        let vector = (self.lvt_timer & 0xFF) as u8;
        let fire = match self.timer_mode() {
            TimerMode::TscDeadline => {
                let due = self.tsc_deadline != 0 && tsc >= self.tsc_deadline;
                if due {
                    self.tsc_deadline = 0;
                }
                due
            }
            mode => {
                let Some(start) = self.started_ns else {
                    return;
                };
                let period = self.period_ns();
                if period == 0 || now_ns < start.saturating_add(period) {
                    return;
                }
                if mode == TimerMode::Periodic {
                    // Missed periods collapse into one interrupt, as an APIC whose IRR bit
                    // is already set would do.
                    let elapsed = now_ns - start;
                    self.started_ns = Some(start + elapsed - elapsed % period);
                } else {
                    self.started_ns = None;
                }
                true
            }
        };
        if fire && self.lvt_timer & LVT_MASKED == 0 {
            self.request(vector);
        }
    }

    /// When the timer fires next (ns on the counting clock), for one-shot and periodic mode.
    pub fn next_timer_ns(&self) -> Option<u64> {
        if self.lvt_timer & LVT_MASKED != 0 || self.timer_mode() == TimerMode::TscDeadline {
            return None;
        }
        let start = self.started_ns?;
        Some(start.saturating_add(self.period_ns()))
    }

    /// The vector to inject now, if one is pending above the processor priority.
    pub fn deliverable(&self) -> Option<u8> {
        let vector = highest(&self.irr)?;
        (u32::from(vector) & 0xF0 > self.ppr() & 0xF0).then_some(vector)
    }

    /// Whether any interrupt is requested (deliverable or not).
    pub fn has_requested(&self) -> bool {
        self.irr.iter().any(|w| *w != 0)
    }

    /// The CPU took `vector`: IRR to ISR.
    pub fn acknowledge(&mut self, vector: u8) {
        bit_clear(&mut self.irr, vector);
        bit_set(&mut self.isr, vector);
    }

    /// RDMSR of an x2APIC register (`msr` in 0x800–0x8FF) or IA32_TSC_DEADLINE.
    pub fn read(&self, msr: u32, now_ns: u64) -> Result<u64, ApicFault> {
        Ok(match msr {
            ID => u64::from(self.id),
            VERSION => VERSION_VALUE,
            TPR => u64::from(self.tpr),
            PPR => u64::from(self.ppr()),
            // Logical ID: cluster (ID bits 19:4) and one bit of 16 in the cluster.
            LDR => u64::from((self.id >> 4) << 16 | 1 << (self.id & 15)),
            SVR => u64::from(self.svr),
            ISR0..=0x817 => word(&self.isr, msr - ISR0),
            TMR0..=0x81F => 0,
            IRR0..=0x827 => word(&self.irr, msr - IRR0),
            ESR => u64::from(self.esr),
            ICR => self.icr,
            LVT_TIMER => u64::from(self.lvt_timer),
            LVT_THERMAL => u64::from(self.lvt_thermal),
            LVT_PMI => u64::from(self.lvt_pmi),
            LVT_LINT0 => u64::from(self.lvt_lint0),
            LVT_LINT1 => u64::from(self.lvt_lint1),
            LVT_ERROR => u64::from(self.lvt_error),
            TMICT => u64::from(self.tmict),
            TMCCT => self.current_count(now_ns),
            TDCR => u64::from(self.tdcr),
            MSR_TSC_DEADLINE => self.tsc_deadline,
            // EOI and SELF_IPI are write-only; the rest is reserved.
            _ => return Err(ApicFault),
        })
    }

    fn current_count(&self, now_ns: u64) -> u64 {
        let Some(start) = self.started_ns else {
            return 0;
        };
        let period = self.period_ns();
        if period == 0 || self.timer_mode() == TimerMode::TscDeadline {
            return 0;
        }
        let elapsed = now_ns.saturating_sub(start);
        let left = if self.timer_mode() == TimerMode::Periodic {
            period - elapsed % period
        } else {
            period.saturating_sub(elapsed)
        };
        left / self.divider()
    }

    /// WRMSR of an x2APIC register or IA32_TSC_DEADLINE.
    pub fn write(&mut self, msr: u32, value: u64, now_ns: u64) -> Result<ApicEffect, ApicFault> {
        let low = (value & 0xFFFF_FFFF) as u32;
        let high_clear = value >> 32 == 0;
        let lvt = |v: u32, mask: u32| {
            if high_clear {
                Ok(v & mask)
            } else {
                Err(ApicFault)
            }
        };
        match msr {
            TPR => self.tpr = lvt(low, 0xFF)?,
            EOI => {
                if value != 0 {
                    return Err(ApicFault);
                }
                if let Some(v) = highest(&self.isr) {
                    bit_clear(&mut self.isr, v);
                }
            }
            SVR => {
                self.svr = lvt(low, 0x1FFF)?;
                if !self.software_enabled() {
                    // Disabling the APIC masks every LVT entry (SDM 11.4.7.2).
                    for l in [
                        &mut self.lvt_timer,
                        &mut self.lvt_thermal,
                        &mut self.lvt_pmi,
                        &mut self.lvt_lint0,
                        &mut self.lvt_lint1,
                        &mut self.lvt_error,
                    ] {
                        *l |= LVT_MASKED;
                    }
                }
            }
            ESR => {
                if value != 0 {
                    return Err(ApicFault);
                }
                self.esr = 0;
            }
            ICR => {
                self.icr = value & !(1 << 12);
                let vector = (value & 0xFF) as u8;
                let shorthand = (value >> 18) & 3;
                let delivery = (value >> 8) & 7;
                let dest = (value >> 32) as u32;
                let to_self = shorthand == 1 || (shorthand == 0 && dest == self.id);
                if delivery == 0 && to_self {
                    self.request(vector);
                    return Ok(ApicEffect::None);
                }
                if shorthand == 2 && delivery == 0 {
                    self.request(vector);
                }
                return Ok(ApicEffect::Ipi(value));
            }
            LVT_TIMER => {
                let enabled_mask = if self.software_enabled() {
                    0x7_10FF
                } else {
                    0x6_00FF
                };
                let old_mode = self.timer_mode();
                self.lvt_timer = lvt(low, 0x7_10FF)? & enabled_mask
                    | if self.software_enabled() {
                        0
                    } else {
                        LVT_MASKED
                    };
                if self.timer_mode() != old_mode {
                    self.started_ns = None;
                    self.tsc_deadline = 0;
                }
            }
            LVT_THERMAL => self.lvt_thermal = lvt(low, 0x1_07FF)?,
            LVT_PMI => self.lvt_pmi = lvt(low, 0x1_07FF)?,
            LVT_LINT0 => self.lvt_lint0 = lvt(low, 0x1_A7FF)?,
            LVT_LINT1 => self.lvt_lint1 = lvt(low, 0x1_A7FF)?,
            LVT_ERROR => self.lvt_error = lvt(low, 0x1_00FF)?,
            TMICT => {
                self.tmict = lvt(low, u32::MAX)?;
                if self.timer_mode() != TimerMode::TscDeadline {
                    self.started_ns = (self.tmict != 0).then_some(now_ns);
                }
            }
            TDCR => self.tdcr = lvt(low, 0xB)?,
            SELF_IPI => self.request(lvt(low, 0xFF)? as u8),
            MSR_TSC_DEADLINE => {
                if self.timer_mode() == TimerMode::TscDeadline {
                    self.tsc_deadline = value;
                }
            }
            _ => return Err(ApicFault),
        }
        Ok(ApicEffect::None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> VirtualApic {
        let mut a = VirtualApic::new(0);
        a.write(SVR, 0x1FF, 0).expect("register write");
        a
    }

    #[test]
    fn periodic_timer_fires_each_period_and_ovmf_tick_is_10ms() {
        let mut a = enabled();
        // OVMF LocalApicTimerDxe: divide by 1, periodic, vector 0x20, 10,000,000 counts.
        a.write(TDCR, 0xB, 0).expect("register write");
        a.write(LVT_TIMER, 1 << 17 | 0x20, 0)
            .expect("register write");
        a.write(TMICT, 10_000_000, 1_000).expect("register write");
        a.poll_timer(9_000_000, 0);
        assert_eq!(a.deliverable(), None);
        a.poll_timer(10_001_000, 0);
        assert_eq!(a.deliverable(), Some(0x20));
        a.acknowledge(0x20);
        assert_eq!(a.deliverable(), None);
        a.write(EOI, 0, 0).expect("register write");
        assert_eq!(a.next_timer_ns(), Some(20_001_000));
        // Three periods late: one interrupt, the next period from the last boundary.
        a.poll_timer(50_001_500, 0);
        assert_eq!(a.deliverable(), Some(0x20));
        assert_eq!(a.next_timer_ns(), Some(60_001_000));
        assert_eq!(a.read(TMCCT, 55_001_000), Ok(5_000_000));
    }

    #[test]
    fn one_shot_fires_once_and_masked_timer_never() {
        let mut a = enabled();
        a.write(TDCR, 0x3, 0).expect("register write"); // divide by 16
        a.write(LVT_TIMER, 0x31, 0).expect("register write");
        a.write(TMICT, 100, 0).expect("register write");
        a.poll_timer(1_599, 0);
        assert!(!a.has_requested());
        a.poll_timer(1_600, 0);
        assert_eq!(a.deliverable(), Some(0x31));
        a.acknowledge(0x31);
        a.write(EOI, 0, 0).expect("register write");
        a.poll_timer(10_000, 0);
        assert!(!a.has_requested());
        a.write(LVT_TIMER, LVT_MASKED as u64 | 0x31, 0)
            .expect("register write");
        a.write(TMICT, 1, 0).expect("register write");
        a.poll_timer(100_000, 0);
        assert!(!a.has_requested());
    }

    #[test]
    fn tsc_deadline_mode_uses_the_deadline_msr() {
        let mut a = enabled();
        a.write(LVT_TIMER, 2 << 17 | 0xEC, 0)
            .expect("register write");
        a.write(MSR_TSC_DEADLINE, 5_000, 0).expect("register write");
        a.poll_timer(0, 4_999);
        assert!(!a.has_requested());
        a.poll_timer(0, 5_000);
        assert_eq!(a.deliverable(), Some(0xEC));
        assert_eq!(a.read(MSR_TSC_DEADLINE, 0), Ok(0));
    }

    #[test]
    fn priority_gates_delivery_and_eoi_ends_the_highest() {
        let mut a = enabled();
        a.request(0x41);
        a.request(0x85);
        assert_eq!(a.deliverable(), Some(0x85));
        a.acknowledge(0x85);
        // 0x41's class is below the in-service 0x85.
        assert_eq!(a.deliverable(), None);
        assert_eq!(a.read(PPR, 0), Ok(0x80));
        assert_eq!(a.read(ISR0 + 4, 0), Ok(1 << 5));
        a.write(EOI, 0, 0).expect("register write");
        assert_eq!(a.deliverable(), Some(0x41));
        a.write(TPR, 0x50, 0).expect("register write");
        assert_eq!(a.deliverable(), None);
        assert_eq!(a.read(IRR0 + 2, 0), Ok(1 << 1));
    }

    #[test]
    fn reserved_registers_and_bits_fault() {
        let mut a = enabled();
        assert_eq!(a.read(EOI, 0), Err(ApicFault));
        assert_eq!(a.read(0x8FF, 0), Err(ApicFault));
        assert_eq!(a.write(EOI, 1, 0), Err(ApicFault));
        assert_eq!(a.write(TPR, 1 << 32, 0), Err(ApicFault));
        assert_eq!(a.write(PPR, 0, 0), Err(ApicFault));
    }

    #[test]
    fn self_ipi_and_icr_to_self_are_local_others_go_out() {
        let mut a = enabled();
        a.write(SELF_IPI, 0x33, 0).expect("register write");
        assert_eq!(a.deliverable(), Some(0x33));
        let mut b = enabled();
        assert_eq!(b.write(ICR, 0x44 | 1 << 18, 0), Ok(ApicEffect::None));
        assert_eq!(b.deliverable(), Some(0x44));
        assert_eq!(
            b.write(ICR, 0x45 | 1 << 32, 0),
            Ok(ApicEffect::Ipi(0x45 | 1 << 32))
        );
    }

    #[test]
    fn software_disable_masks_the_lvts() {
        let mut a = enabled();
        a.write(LVT_TIMER, 0x20, 0).expect("register write");
        a.write(SVR, 0xFF, 0).expect("register write");
        assert_eq!(a.read(LVT_TIMER, 0), Ok(u64::from(LVT_MASKED) | 0x20));
    }
}
