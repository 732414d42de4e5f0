//! The host's half of a vCPU's x2APIC: the registers TDX leaves to the VMM, reached by the
//! guest with TDVMCALL Instruction.RDMSR/WRMSR (directly, as edk2's x2APIC library does in a
//! TD, or from its #VE handler): ID, version, logical destination, spurious vector, error
//! status, interrupt command, the LVT entries and the local timer (one-shot and periodic).
//!
//! The TD's CPU keeps TPR, PPR, EOI, ISR, TMR and IRR itself (virtual-interrupt delivery),
//! so those are refused here, as KVM's `tdx_has_emulated_msr` refuses them. Interrupts this
//! APIC raises (timer, self-IPI, IPIs) are posted to the vCPU by the caller. Register
//! semantics: Intel SDM vol. 3A chapter 11, x2APIC MSR map in table 11-6.
//!
//! The timer counts a 1 GHz bus divided by TDCR: the APIC bus QEMU models and the one OVMF's
//! `LocalApicTimerDxe` assumes (`PcdFSBClock`), so the firmware's 10 ms tick is 10 ms. In
//! TSC-deadline mode (LVT timer bits 18:17 = 2) IA32_TSC_DEADLINE arms it; the caller turns
//! the TSC value into a time on its clock ([`LocalApic::set_tsc_deadline`]). Sans-IO: time
//! comes in as nanoseconds.

/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;
/// First x2APIC MSR.
pub const X2APIC_FIRST: u32 = 0x800;
/// Last x2APIC MSR.
pub const X2APIC_LAST: u32 = 0x8FF;

const ID: u32 = 0x802;
const VERSION: u32 = 0x803;
const LDR: u32 = 0x80D;
const SVR: u32 = 0x80F;
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
/// Version register: version 0x15, six LVT entries (max LVT index 5).
const VERSION_VALUE: u64 = 0x15 | 5 << 16;

/// A register access this APIC refuses: the TDVMCALL fails, which the guest treats as #GP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicRefused;

/// What a register write asks the caller to deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Nothing.
    None,
    /// A fixed interrupt to this vCPU.
    ToSelf(u8),
    /// A fixed interrupt to another vCPU.
    To {
        /// The destination's x2APIC ID.
        apic_id: u32,
        /// The vector.
        vector: u8,
    },
    /// A fixed interrupt to every vCPU but this one, or to all.
    ToOthers {
        /// The vector.
        vector: u8,
        /// This vCPU too (shorthand "all including self").
        and_self: bool,
    },
}

/// Timer modes (LVT timer bits 18:17; TSC-deadline reads as one-shot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

/// One vCPU's host-side x2APIC registers.
#[derive(Clone, Debug)]
pub struct LocalApic {
    id: u32,
    svr: u32,
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
    /// Start (ns) of the current count, while the timer counts.
    started_ns: Option<u64>,
    /// IA32_TSC_DEADLINE as written (0 = disarmed) and when it expires on the caller's
    /// clock (ns).
    tsc_deadline: (u64, u64),
}

impl LocalApic {
    /// The x2APIC of the vCPU with x2APIC ID `id` at reset: software-disabled, every LVT
    /// masked.
    pub fn new(id: u32) -> LocalApic {
        LocalApic {
            id,
            svr: 0xFF,
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
            tsc_deadline: (0, 0),
        }
    }

    fn timer_mode(&self) -> TimerMode {
        match (self.lvt_timer >> 17) & 3 {
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::OneShot,
        }
    }

    /// WRMSR IA32_TSC_DEADLINE: `value` the TSC deadline (0 disarms), `at_ns` when the TSC
    /// reaches it on the caller's clock. Ignored outside TSC-deadline mode, as the SDM says.
    pub fn set_tsc_deadline(&mut self, value: u64, at_ns: u64) {
        if self.timer_mode() == TimerMode::TscDeadline {
            self.tsc_deadline = (value, at_ns);
        }
    }

    /// RDMSR IA32_TSC_DEADLINE (0 once it fired, or outside TSC-deadline mode).
    pub fn tsc_deadline(&self) -> u64 {
        self.tsc_deadline.0
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

    fn software_enabled(&self) -> bool {
        self.svr & (1 << 8) != 0
    }

    /// The timer's vector if it expired by `now_ns` (and is not masked); a periodic timer
    /// re-arms from its last period boundary, missed periods collapsing into one interrupt.
    pub fn poll_timer(&mut self, now_ns: u64) -> Option<u8> {
        if self.timer_mode() == TimerMode::TscDeadline {
            let (armed, at) = self.tsc_deadline;
            if armed == 0 || now_ns < at {
                return None;
            }
            self.tsc_deadline = (0, 0);
            return (self.lvt_timer & LVT_MASKED == 0).then_some((self.lvt_timer & 0xFF) as u8);
        }
        let start = self.started_ns?;
        let period = self.period_ns();
        if period == 0 || now_ns < start.saturating_add(period) {
            return None;
        }
        if self.timer_mode() == TimerMode::Periodic {
            let elapsed = now_ns - start;
            self.started_ns = Some(start + elapsed - elapsed % period);
        } else {
            self.started_ns = None;
        }
        (self.lvt_timer & LVT_MASKED == 0).then_some((self.lvt_timer & 0xFF) as u8)
    }

    /// When the timer expires next (ns), if it counts and is not masked.
    pub fn next_timer_ns(&self) -> Option<u64> {
        if self.lvt_timer & LVT_MASKED != 0 {
            return None;
        }
        if self.timer_mode() == TimerMode::TscDeadline {
            return (self.tsc_deadline.0 != 0).then_some(self.tsc_deadline.1);
        }
        Some(self.started_ns?.saturating_add(self.period_ns()))
    }

    /// RDMSR of x2APIC register `msr`.
    pub fn read(&self, msr: u32, now_ns: u64) -> Result<u64, ApicRefused> {
        Ok(match msr {
            ID => u64::from(self.id),
            VERSION => VERSION_VALUE,
            // Logical ID: cluster (ID bits 19:4) and one bit of 16 in the cluster.
            LDR => u64::from((self.id >> 4) << 16 | 1 << (self.id & 15)),
            SVR => u64::from(self.svr),
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
            // SELF_IPI is write-only; TPR, PPR, EOI, ISR, TMR, IRR are the CPU's; the rest is
            // reserved.
            _ => return Err(ApicRefused),
        })
    }

    fn current_count(&self, now_ns: u64) -> u64 {
        let Some(start) = self.started_ns else {
            return 0;
        };
        let period = self.period_ns();
        if period == 0 {
            return 0;
        }
        let elapsed = now_ns.saturating_sub(start);
        let left = match self.timer_mode() {
            TimerMode::Periodic => period - elapsed % period,
            TimerMode::OneShot => period.saturating_sub(elapsed),
            TimerMode::TscDeadline => return 0,
        };
        left / self.divider()
    }

    /// WRMSR of x2APIC register `msr`.
    pub fn write(&mut self, msr: u32, value: u64, now_ns: u64) -> Result<Delivery, ApicRefused> {
        let low = (value & 0xFFFF_FFFF) as u32;
        let fits = |mask: u32| {
            if value >> 32 == 0 {
                Ok(low & mask)
            } else {
                Err(ApicRefused)
            }
        };
        match msr {
            SVR => {
                self.svr = fits(0x1FFF)?;
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
                    return Err(ApicRefused);
                }
                self.esr = 0;
            }
            ICR => return Ok(self.write_icr(value)),
            LVT_TIMER => {
                let old_mode = self.timer_mode();
                // While software-disabled, the mask bit stays set.
                let forced = if self.software_enabled() {
                    0
                } else {
                    LVT_MASKED
                };
                self.lvt_timer = fits(0x7_00FF)? | forced;
                if self.timer_mode() != old_mode {
                    self.started_ns = None;
                    self.tsc_deadline = (0, 0);
                }
            }
            LVT_THERMAL => self.lvt_thermal = fits(0x1_07FF)?,
            LVT_PMI => self.lvt_pmi = fits(0x1_07FF)?,
            LVT_LINT0 => self.lvt_lint0 = fits(0x1_A7FF)?,
            LVT_LINT1 => self.lvt_lint1 = fits(0x1_A7FF)?,
            LVT_ERROR => self.lvt_error = fits(0x1_00FF)?,
            TMICT => {
                // TMICT does not count in TSC-deadline mode.
                self.tmict = fits(u32::MAX)?;
                self.started_ns = (self.tmict != 0 && self.timer_mode() != TimerMode::TscDeadline)
                    .then_some(now_ns);
            }
            TDCR => self.tdcr = fits(0xB)?,
            SELF_IPI => return Ok(fixed(Delivery::ToSelf(fits(0xFF)? as u8))),
            _ => return Err(ApicRefused),
        }
        Ok(Delivery::None)
    }

    /// An ICR write: fixed interrupts are delivered; INIT, SIPI, NMI and the rest are not
    /// TDX's business (TD vCPUs start at the reset vector, NMIs are injected by the VMM
    /// through the TDX module), so they are dropped.
    fn write_icr(&mut self, value: u64) -> Delivery {
        // The delivery-status bit always reads idle.
        self.icr = value & !(1 << 12);
        let vector = (value & 0xFF) as u8;
        if (value >> 8) & 7 != 0 {
            return Delivery::None;
        }
        let d = match (value >> 18) & 3 {
            0 if (value >> 32) as u32 == self.id => Delivery::ToSelf(vector),
            0 => Delivery::To {
                apic_id: (value >> 32) as u32,
                vector,
            },
            1 => Delivery::ToSelf(vector),
            2 => Delivery::ToOthers {
                vector,
                and_self: true,
            },
            _ => Delivery::ToOthers {
                vector,
                and_self: false,
            },
        };
        fixed(d)
    }
}

/// Drops deliveries of vectors 0–15, which are not interrupts (the SDM's "illegal vector").
fn fixed(d: Delivery) -> Delivery {
    let vector = match d {
        Delivery::None => return d,
        Delivery::ToSelf(v)
        | Delivery::To { vector: v, .. }
        | Delivery::ToOthers { vector: v, .. } => v,
    };
    if vector < 16 { Delivery::None } else { d }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> LocalApic {
        let mut a = LocalApic::new(0);
        assert_eq!(a.write(SVR, 0x1FF, 0), Ok(Delivery::None));
        a
    }

    fn write(a: &mut LocalApic, msr: u32, value: u64, now: u64) {
        assert_eq!(a.write(msr, value, now), Ok(Delivery::None));
    }

    #[test]
    fn ovmf_periodic_tick_fires_every_10ms() {
        let mut a = enabled();
        // OVMF LocalApicTimerDxe: divide by 1, periodic, vector 0x20, 10,000,000 counts.
        write(&mut a, TDCR, 0xB, 0);
        write(&mut a, LVT_TIMER, 1 << 17 | 0x20, 0);
        write(&mut a, TMICT, 10_000_000, 1_000);
        assert_eq!(a.poll_timer(9_000_000), None);
        assert_eq!(a.poll_timer(10_001_000), Some(0x20));
        assert_eq!(a.poll_timer(10_002_000), None);
        assert_eq!(a.next_timer_ns(), Some(20_001_000));
        // Three periods late: one interrupt, the next period from the last boundary.
        assert_eq!(a.poll_timer(50_001_500), Some(0x20));
        assert_eq!(a.next_timer_ns(), Some(60_001_000));
        assert_eq!(a.read(TMCCT, 55_001_000), Ok(5_000_000));
    }

    #[test]
    fn one_shot_fires_once_and_masked_timer_never() {
        let mut a = enabled();
        write(&mut a, TDCR, 0x3, 0); // divide by 16
        write(&mut a, LVT_TIMER, 0x31, 0);
        write(&mut a, TMICT, 100, 0);
        assert_eq!(a.poll_timer(1_599), None);
        assert_eq!(a.poll_timer(1_600), Some(0x31));
        assert_eq!(a.poll_timer(10_000), None);
        write(&mut a, LVT_TIMER, u64::from(LVT_MASKED) | 0x31, 0);
        write(&mut a, TMICT, 1, 0);
        assert_eq!(a.poll_timer(100_000), None);
        assert_eq!(a.next_timer_ns(), None);
    }

    #[test]
    fn tsc_deadline_mode_fires_once_at_the_deadline() {
        let mut a = enabled();
        a.set_tsc_deadline(1234, 5_000);
        assert_eq!(a.tsc_deadline(), 0, "ignored outside TSC-deadline mode");
        write(&mut a, LVT_TIMER, 2 << 17 | 0xEC, 0);
        a.set_tsc_deadline(1234, 5_000);
        assert_eq!(a.tsc_deadline(), 1234);
        assert_eq!(a.next_timer_ns(), Some(5_000));
        assert_eq!(a.poll_timer(4_999), None);
        assert_eq!(a.poll_timer(5_000), Some(0xEC));
        assert_eq!(a.poll_timer(9_000), None);
        assert_eq!(a.tsc_deadline(), 0);
        // TMICT does not count in this mode.
        write(&mut a, TMICT, 10, 0);
        assert_eq!(a.poll_timer(1_000_000), None);
    }

    #[test]
    fn a_disabled_apic_keeps_its_timer_masked() {
        let mut a = LocalApic::new(0);
        write(&mut a, LVT_TIMER, 0x20, 0);
        assert_eq!(a.read(LVT_TIMER, 0), Ok(u64::from(LVT_MASKED) | 0x20));
        let mut b = enabled();
        write(&mut b, LVT_TIMER, 0x20, 0);
        write(&mut b, SVR, 0xFF, 0);
        assert_eq!(b.read(LVT_TIMER, 0), Ok(u64::from(LVT_MASKED) | 0x20));
    }

    #[test]
    fn the_cpus_registers_and_reserved_bits_are_refused() {
        let mut a = enabled();
        for msr in [0x808, 0x80A, 0x80B, 0x810, 0x820] {
            assert_eq!(a.read(msr, 0), Err(ApicRefused));
            assert_eq!(a.write(msr, 0, 0), Err(ApicRefused));
        }
        assert_eq!(a.read(SELF_IPI, 0), Err(ApicRefused));
        assert_eq!(a.write(SVR, 1 << 32, 0), Err(ApicRefused));
        assert_eq!(a.write(ESR, 1, 0), Err(ApicRefused));
    }

    #[test]
    fn ipis_are_routed_by_destination_and_shorthand() {
        let mut a = LocalApic::new(1);
        assert_eq!(a.write(SELF_IPI, 0x33, 0), Ok(Delivery::ToSelf(0x33)));
        assert_eq!(a.write(ICR, 0x44 | 1 << 32, 0), Ok(Delivery::ToSelf(0x44)));
        assert_eq!(
            a.write(ICR, 0x45 | 2 << 32, 0),
            Ok(Delivery::To {
                apic_id: 2,
                vector: 0x45
            })
        );
        assert_eq!(
            a.write(ICR, 0x46 | 3 << 18, 0),
            Ok(Delivery::ToOthers {
                vector: 0x46,
                and_self: false
            })
        );
        // INIT and an illegal vector are dropped.
        assert_eq!(a.write(ICR, 5 << 8, 0), Ok(Delivery::None));
        assert_eq!(a.write(SELF_IPI, 0x0E, 0), Ok(Delivery::None));
    }
}
