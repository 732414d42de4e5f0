//! The ACPI fixed-hardware I/O block of the PIIX4 power-management function: PM1 status and
//! enable (offsets 0, 2), PM1 control (offset 4) and the 24-bit ACPI PM timer (offset 8), at
//! the base the firmware writes to the function's PMBA register, decoded while PMREGMISC
//! bit 0 is set.
//!
//! Sources: ACPI 6.5 §4.8.3 (PM1 registers, SLP_TYP in bits 12:10, SLP_EN bit 13) and
//! §4.8.3.3 (the PM timer runs at 3.579545 MHz); Intel 82371AB (PIIX4) datasheet §7.2 (a
//! 24-bit timer). The guest powers off by writing SLP_EN with the S5 sleep type of the
//! tables it was given: 0 here, as QEMU's `pc` machine uses and OVMF's reset library writes.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU16, Ordering};

use super::pci::{PIIX4_PMBA, PIIX4_PMREGMISC, SharedConfig};
use super::{AccessSize, DeviceClock, PortIoDevice};

/// Where OVMF places the block on a 440FX machine (`PcdAcpiPmBaseAddress`).
pub const PIIX4_PM_BASE: u16 = 0xB000;
/// Bytes of the block.
pub const PM_BLOCK_PORTS: u16 = 64;
/// PM timer frequency (Hz).
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// PM1 control: sleep enable.
const SLP_EN: u16 = 1 << 13;
/// PM1 control: sleep type field.
const SLP_TYP_MASK: u16 = 7 << 10;
/// The sleep type of S5 (soft off).
const SLP_TYP_S5: u16 = 0;
/// Offset of the hardware-reduced ACPI sleep control register (a byte: SLP_TYP in bits
/// 4:2, SLP_EN bit 5; ACPI 6.5 §4.8.3.7), for the tables of TDs that boot a kernel.
pub const SLEEP_CONTROL_OFFSET: u16 = 0x3C;

/// Requests a guest makes of its platform's power logic.
#[derive(Default)]
pub struct PowerRequests {
    off: AtomicBool,
    reset: AtomicBool,
}

impl PowerRequests {
    /// The guest asked to be switched off (S5).
    pub fn off_requested(&self) -> bool {
        self.off.load(Ordering::Acquire)
    }

    /// The guest asked for a reset ([`ResetControl`]).
    pub fn reset_requested(&self) -> bool {
        self.reset.load(Ordering::Acquire)
    }
}

/// Port of the reset control register (PIIX3/PIIX4 "RC", Intel 82371AB datasheet §4.1.17;
/// bit 2 resets the CPU).
pub const RESET_CONTROL_PORT: u16 = 0xCF9;
/// The keyboard controller's command/status port: command 0xFE pulses the CPU reset line
/// (the oldest way a PC reboots, the second one Linux tries).
pub const KBD_COMMAND_PORT: u16 = 0x64;

/// The ways a PC guest asks to be reset: the reset control register and the keyboard
/// controller's reset pulse. A TD cannot be reset (its measured initial state is gone), so
/// a request ends the TD, as a reboot of a TD ends it under KVM. Reads return all ones, as
/// with nothing decoding the port, so firmware still finds no keyboard controller. One device
/// per port.
pub struct ResetControl {
    port: u16,
    power: Arc<PowerRequests>,
}

impl ResetControl {
    /// The device for `port` ([`RESET_CONTROL_PORT`] or [`KBD_COMMAND_PORT`]).
    pub fn new(port: u16, power: Arc<PowerRequests>) -> Self {
        ResetControl { port, power }
    }
}

impl PortIoDevice for ResetControl {
    fn read(&self, _offset: u16, size: AccessSize) -> u64 {
        size.all_ones()
    }

    fn write(&self, _offset: u16, size: AccessSize, value: u64) {
        let reset = match self.port {
            RESET_CONTROL_PORT => size == AccessSize::Byte && value & 4 != 0,
            _ => size == AccessSize::Byte && value == 0xFE,
        };
        if reset {
            self.power.reset.store(true, Ordering::Release);
        }
    }
}

/// The PM1 registers and the PM timer.
pub struct AcpiPmBlock {
    base: u16,
    function: SharedConfig,
    clock: Arc<dyn DeviceClock>,
    power: Arc<PowerRequests>,
    pm1_enable: AtomicU16,
    pm1_control: AtomicU16,
}

impl AcpiPmBlock {
    /// The block at `base`, decoded while `function` (the PIIX4 PM function) places it there.
    pub fn new(
        base: u16,
        function: SharedConfig,
        clock: Arc<dyn DeviceClock>,
        power: Arc<PowerRequests>,
    ) -> Self {
        AcpiPmBlock {
            base,
            function,
            clock,
            power,
            pm1_enable: AtomicU16::new(0),
            pm1_control: AtomicU16::new(0),
        }
    }

    /// Whether the function decodes the block at this base.
    fn decoded(&self) -> bool {
        let f = self.function.lock();
        let pmba = f.read(PIIX4_PMBA, AccessSize::Dword) & 0xFFC0;
        let enabled = f.read(PIIX4_PMREGMISC, AccessSize::Byte) & 1 != 0;
        enabled && pmba == u64::from(self.base)
    }

    /// Timer ticks since the clock's origin, 24 bits.
    fn timer(&self) -> u64 {
        let ns = u128::from(self.clock.now_ns());
        let ticks = ns * u128::from(PM_TIMER_HZ) / 1_000_000_000;
        (ticks & 0x00FF_FFFF) as u64
    }
}

impl PortIoDevice for AcpiPmBlock {
    fn read(&self, offset: u16, size: AccessSize) -> u64 {
        if !self.decoded() {
            return size.all_ones();
        }
        match offset {
            0 => 0,
            2 => u64::from(self.pm1_enable.load(Ordering::Relaxed)),
            4 => u64::from(self.pm1_control.load(Ordering::Relaxed)),
            8 => self.timer(),
            _ => 0,
        }
    }

    fn write(&self, offset: u16, _size: AccessSize, value: u64) {
        if !self.decoded() {
            return;
        }
        let value = (value & 0xFFFF) as u16;
        match offset {
            2 => self.pm1_enable.store(value, Ordering::Relaxed),
            4 => {
                self.pm1_control.store(value & !SLP_EN, Ordering::Relaxed);
                if value & SLP_EN != 0 && value & SLP_TYP_MASK == SLP_TYP_S5 << 10 {
                    self.power.off.store(true, Ordering::Release);
                }
            }
            SLEEP_CONTROL_OFFSET if value & 1 << 5 != 0 && (value >> 2) & 7 == SLP_TYP_S5 => {
                self.power.off.store(true, Ordering::Release);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::devices::pci::piix4_pm;
    use core::sync::atomic::AtomicU64;

    struct FixedClock(AtomicU64);
    impl DeviceClock for FixedClock {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn block() -> (
        AcpiPmBlock,
        SharedConfig,
        Arc<FixedClock>,
        Arc<PowerRequests>,
    ) {
        let function = piix4_pm();
        let clock = Arc::new(FixedClock(AtomicU64::new(0)));
        let power = Arc::new(PowerRequests::default());
        let pm = AcpiPmBlock::new(
            PIIX4_PM_BASE,
            function.clone(),
            clock.clone(),
            power.clone(),
        );
        (pm, function, clock, power)
    }

    fn place(function: &SharedConfig, base: u16, enable: bool) {
        let mut f = function.lock();
        f.write(PIIX4_PMBA, AccessSize::Dword, u64::from(base));
        f.write(PIIX4_PMREGMISC, AccessSize::Byte, u64::from(enable));
    }

    #[test]
    fn decoded_only_where_the_firmware_placed_it() {
        let (pm, function, _, _) = block();
        assert_eq!(pm.read(8, AccessSize::Dword), 0xFFFF_FFFF);
        place(&function, PIIX4_PM_BASE, false);
        assert_eq!(pm.read(8, AccessSize::Dword), 0xFFFF_FFFF);
        place(&function, 0x600, true);
        assert_eq!(pm.read(8, AccessSize::Dword), 0xFFFF_FFFF);
        place(&function, PIIX4_PM_BASE, true);
        assert_eq!(pm.read(8, AccessSize::Dword), 0);
    }

    #[test]
    fn timer_counts_at_3_58_mhz_in_24_bits() {
        let (pm, function, clock, _) = block();
        place(&function, PIIX4_PM_BASE, true);
        clock.0.store(1_000_000_000, Ordering::Relaxed);
        assert_eq!(pm.read(8, AccessSize::Dword), PM_TIMER_HZ);
        clock.0.store(10_000_000_000, Ordering::Relaxed);
        assert_eq!(
            pm.read(8, AccessSize::Dword),
            (10 * PM_TIMER_HZ) & 0xFF_FFFF
        );
    }

    #[test]
    fn slp_en_with_s5_powers_off() {
        let (pm, function, _, power) = block();
        place(&function, PIIX4_PM_BASE, true);
        pm.write(4, AccessSize::Word, u64::from(5u16 << 10 | SLP_EN));
        assert!(!power.off_requested(), "S1-type sleep is not power-off");
        pm.write(4, AccessSize::Word, 1);
        assert!(!power.off_requested());
        pm.write(4, AccessSize::Word, u64::from(SLP_EN));
        assert!(power.off_requested());
    }

    #[test]
    fn the_hardware_reduced_sleep_register_powers_off_at_s5() {
        let (pm, function, _, power) = block();
        place(&function, PIIX4_PM_BASE, true);
        pm.write(SLEEP_CONTROL_OFFSET, AccessSize::Byte, 5 << 2 | 1 << 5);
        assert!(!power.off_requested(), "S5 here is sleep type 0");
        pm.write(SLEEP_CONTROL_OFFSET, AccessSize::Byte, 1 << 5);
        assert!(power.off_requested());
    }
}
