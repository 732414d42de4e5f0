//! The PC's CMOS RAM and real-time clock behind ports 0x70 (index; bit 7 masks NMIs) and
//! 0x71 (data): 128 bytes, of which the clock and status registers are computed and the rest
//! is RAM the firmware may use.
//!
//! Sources: Motorola MC146818A data sheet (registers 0x00–0x0D; status B bit 1 selects 24-hour
//! mode, bit 2 binary instead of BCD; status D bit 7 "valid RAM and time"); the memory-size
//! bytes OVMF's `PlatformInitLib` reads as QEMU writes them: 0x34/0x35 RAM above 16 MiB and
//! below 4 GiB, 0x5B–0x5D RAM above 4 GiB, both in 64 KiB units.
//!
//! The TD has no wall clock of its own: the clock reads 2000-01-01 00:00:00 plus the time
//! since the TD was created.

use alloc::sync::Arc;

use super::{AccessSize, DeviceClock, PortIoDevice};

/// First port (index register).
pub const CMOS_BASE: u16 = 0x70;
/// Ports decoded (index and data).
pub const CMOS_PORTS: u16 = 2;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0A;
const STATUS_B: u8 = 0x0B;
const STATUS_C: u8 = 0x0C;
const STATUS_D: u8 = 0x0D;
const CENTURY: u8 = 0x32;
/// Status B as reset: 24-hour mode, BCD.
const STATUS_B_24H: u8 = 1 << 1;
/// Status B: binary instead of BCD.
const STATUS_B_BINARY: u8 = 1 << 2;

/// CMOS RAM and clock.
pub struct Cmos {
    clock: Arc<dyn DeviceClock>,
    origin_ns: u64,
    state: spin::Mutex<CmosState>,
}

struct CmosState {
    index: u8,
    ram: [u8; 128],
}

impl Cmos {
    /// CMOS reporting `low_ram` bytes of RAM below 4 GiB and `high_ram` above, with its clock
    /// starting now.
    pub fn new(clock: Arc<dyn DeviceClock>, low_ram: u64, high_ram: u64) -> Self {
        let mut ram = [0u8; 128];
        let above_16m = (low_ram.saturating_sub(16 << 20) >> 16).min(0xFFFF);
        ram[0x34] = (above_16m & 0xFF) as u8;
        ram[0x35] = (above_16m >> 8) as u8;
        let high = (high_ram >> 16).min(0xFF_FFFF);
        ram[0x5B] = (high & 0xFF) as u8;
        ram[0x5C] = ((high >> 8) & 0xFF) as u8;
        ram[0x5D] = (high >> 16) as u8;
        ram[usize::from(STATUS_B)] = STATUS_B_24H;
        let origin_ns = clock.now_ns();
        Cmos {
            clock,
            origin_ns,
            state: spin::Mutex::new(CmosState { index: 0, ram }),
        }
    }

    fn clock_register(&self, index: u8, status_b: u8) -> Option<u8> {
        let secs = self.clock.now_ns().saturating_sub(self.origin_ns) / 1_000_000_000;
        let (days, day_secs) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days);
        let value = match index {
            SECONDS => day_secs % 60,
            MINUTES => day_secs / 60 % 60,
            HOURS => day_secs / 3600,
            // 2000-01-01 was a Saturday (day 7 with Sunday = 1).
            WEEKDAY => (days + 6) % 7 + 1,
            DAY => day,
            MONTH => month,
            YEAR => year % 100,
            CENTURY => year / 100,
            _ => return None,
        };
        let value = (value & 0xFF) as u8;
        Some(if status_b & STATUS_B_BINARY != 0 {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        })
    }
}

/// Year, month (1–12) and day (1–31) of `days` after 2000-01-01 (proleptic Gregorian).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let (mut year, mut left) = (2000u64, days);
    loop {
        let len = if leap(year) { 366 } else { 365 };
        if left < len {
            break;
        }
        left -= len;
        year += 1;
    }
    let months = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut month = 1;
    for len in months {
        if left < len {
            break;
        }
        left -= len;
        month += 1;
    }
    (year, month, left + 1)
}

impl PortIoDevice for Cmos {
    fn read(&self, offset: u16, _size: AccessSize) -> u64 {
        let s = self.state.lock();
        if offset == 0 {
            return u64::from(s.index);
        }
        let index = s.index & 0x7F;
        let status_b = s.ram[usize::from(STATUS_B)];
        let value = match index {
            // No update in progress, 32.768 kHz time base.
            STATUS_A => 0x26,
            STATUS_B => status_b,
            STATUS_C => 0,
            STATUS_D => 0x80,
            _ => self
                .clock_register(index, status_b)
                .unwrap_or(s.ram[usize::from(index)]),
        };
        u64::from(value)
    }

    fn write(&self, offset: u16, _size: AccessSize, value: u64) {
        let mut s = self.state.lock();
        let byte = value.to_le_bytes()[0];
        if offset == 0 {
            s.index = byte;
            return;
        }
        let index = s.index & 0x7F;
        match index {
            // The clock is computed; writes to it and to the read-only status are dropped.
            SECONDS | MINUTES | HOURS | WEEKDAY | DAY | MONTH | YEAR | CENTURY | STATUS_A
            | STATUS_C | STATUS_D => {}
            _ => s.ram[usize::from(index)] = byte,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicU64, Ordering};

    struct FixedClock(AtomicU64);
    impl DeviceClock for FixedClock {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn read(c: &Cmos, index: u8) -> u64 {
        c.write(0, AccessSize::Byte, u64::from(index));
        c.read(1, AccessSize::Byte)
    }

    #[test]
    fn memory_sizes_in_64k_units() {
        let clock = Arc::new(FixedClock(AtomicU64::new(0)));
        let c = Cmos::new(clock, 256 << 20, 1 << 32);
        assert_eq!(read(&c, 0x34) | read(&c, 0x35) << 8, (240 << 20) >> 16);
        assert_eq!(
            read(&c, 0x5B) | read(&c, 0x5C) << 8 | read(&c, 0x5D) << 16,
            (1 << 32) >> 16
        );
    }

    #[test]
    fn clock_counts_from_2000_in_bcd_or_binary() {
        let clock = Arc::new(FixedClock(AtomicU64::new(5)));
        let c = Cmos::new(clock.clone(), 64 << 20, 0);
        // 2000-03-01 13:45:07: 31 + 29 days, then 13 h 45 min 7 s.
        let secs = 60 * 86_400 + 13 * 3600 + 45 * 60 + 7;
        clock.0.store(5 + secs * 1_000_000_000, Ordering::Relaxed);
        let got: alloc::vec::Vec<u64> = [YEAR, MONTH, DAY, HOURS, MINUTES, SECONDS, CENTURY]
            .iter()
            .map(|&r| read(&c, r))
            .collect();
        assert_eq!(got, [0x00, 0x03, 0x01, 0x13, 0x45, 0x07, 0x20]);
        // 2000-03-01 was a Wednesday (4).
        assert_eq!(read(&c, WEEKDAY), 4);
        c.write(0, AccessSize::Byte, u64::from(STATUS_B));
        c.write(
            1,
            AccessSize::Byte,
            u64::from(STATUS_B_24H | STATUS_B_BINARY),
        );
        assert_eq!(read(&c, MINUTES), 45);
        assert_eq!(read(&c, STATUS_D), 0x80);
        // Plain RAM reads back; the clock ignores writes.
        c.write(0, AccessSize::Byte, 0x40);
        c.write(1, AccessSize::Byte, 0x5A);
        assert_eq!(read(&c, 0x40), 0x5A);
        c.write(0, AccessSize::Byte, u64::from(SECONDS));
        c.write(1, AccessSize::Byte, 0x99);
        assert_eq!(read(&c, SECONDS), 7);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (2000, 1, 1));
        assert_eq!(civil_from_days(59), (2000, 2, 29));
        assert_eq!(civil_from_days(366), (2001, 1, 1));
        assert_eq!(civil_from_days(366 + 365 * 3 + 58), (2004, 2, 28));
    }
}
