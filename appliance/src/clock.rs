//! Monotonic time from the CPU's time-stamp counter (TSC), calibrated once at boot.
//!
//! The platform reads the TSC, stalls a known number of microseconds through the firmware, reads
//! it again; [`TscClock::calibrate`] turns that into a tick rate. The arithmetic lives here so it
//! is tested on the host; reading the TSC is the platform's job.

/// Why a calibration was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalibrationError {
    /// The stall lasted zero microseconds.
    ZeroStall,
    /// The counter did not advance (or went backwards) across the stall.
    CounterStuck,
    /// Fewer than one tick per millisecond: not a usable clock.
    TooSlow,
}

impl core::fmt::Display for CalibrationError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::ZeroStall => "calibration stall of zero microseconds",
            Self::CounterStuck => "time-stamp counter did not advance during the stall",
            Self::TooSlow => "time-stamp counter runs slower than 1 kHz",
        })
    }
}

/// A calibrated TSC: converts counter readings into time since an origin (the entry point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TscClock {
    origin_tsc: u64,
    ticks_per_ms: u64,
}

impl TscClock {
    /// Calibrates from two counter readings taken around a stall of `stall_us` microseconds.
    /// `origin_tsc` is the reading that time zero corresponds to.
    pub fn calibrate(
        origin_tsc: u64,
        before_stall: u64,
        after_stall: u64,
        stall_us: u64,
    ) -> Result<Self, CalibrationError> {
        if stall_us == 0 {
            return Err(CalibrationError::ZeroStall);
        }
        let ticks = after_stall
            .checked_sub(before_stall)
            .filter(|&ticks| ticks > 0)
            .ok_or(CalibrationError::CounterStuck)?;
        let per_ms = u128::from(ticks) * 1000 / u128::from(stall_us);
        let ticks_per_ms = u64::try_from(per_ms).unwrap_or(u64::MAX);
        if ticks_per_ms == 0 {
            return Err(CalibrationError::TooSlow);
        }
        Ok(Self {
            origin_tsc,
            ticks_per_ms,
        })
    }

    /// Counter ticks per millisecond.
    pub fn ticks_per_ms(&self) -> u64 {
        self.ticks_per_ms
    }

    /// Counter frequency in kHz (same number as ticks per millisecond).
    pub fn frequency_khz(&self) -> u64 {
        self.ticks_per_ms
    }

    /// Microseconds from the origin to the reading `tsc` (0 for readings before the origin).
    pub fn elapsed_us(&self, tsc: u64) -> u64 {
        let ticks = u128::from(tsc.saturating_sub(self.origin_tsc));
        u64::try_from(ticks * 1000 / u128::from(self.ticks_per_ms)).unwrap_or(u64::MAX)
    }

    /// Nanoseconds from the origin to the reading `tsc`.
    pub fn elapsed_ns(&self, tsc: u64) -> u64 {
        let ticks = u128::from(tsc.saturating_sub(self.origin_tsc));
        u64::try_from(ticks * 1_000_000 / u128::from(self.ticks_per_ms)).unwrap_or(u64::MAX)
    }

    /// Milliseconds from the origin to the reading `tsc`.
    pub fn elapsed_ms(&self, tsc: u64) -> u64 {
        tsc.saturating_sub(self.origin_tsc) / self.ticks_per_ms
    }
}

/// Unix seconds of a UEFI `EFI_TIME` (`time_zone` in minutes from UTC, `None` = local time
/// with no zone, taken as UTC). `None` for dates before 1970 or out of range.
pub fn unix_seconds(
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    time_zone: Option<i16>,
) -> Option<u64> {
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm, public domain description).
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let local = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    // EFI_TIME: Localtime = UTC - TimeZone (UEFI 2.10 §8.3, GetTime).
    let utc = local + i64::from(time_zone.unwrap_or(0)) * 60;
    u64::try_from(utc).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrates_a_2ghz_counter() {
        // 2 GHz: 10 ms stall = 20_000_000 ticks.
        let clock = TscClock::calibrate(1_000, 5_000, 20_005_000, 10_000).expect("valid");
        assert_eq!(clock.ticks_per_ms(), 2_000_000);
        assert_eq!(clock.elapsed_ms(1_000 + 2_000_000 * 51), 51);
        assert_eq!(clock.elapsed_us(1_000 + 3_000), 1);
        assert_eq!(clock.elapsed_us(1_000 + 2_000_000 * 3), 3_000);
    }

    #[test]
    fn readings_before_the_origin_are_time_zero() {
        let clock = TscClock::calibrate(1_000_000, 0, 1_000_000, 1_000).expect("valid");
        assert_eq!(clock.elapsed_ms(5), 0);
        assert_eq!(clock.elapsed_us(5), 0);
    }

    #[test]
    fn rejects_unusable_calibrations() {
        assert_eq!(
            TscClock::calibrate(0, 10, 20, 0),
            Err(CalibrationError::ZeroStall)
        );
        assert_eq!(
            TscClock::calibrate(0, 20, 20, 5_000),
            Err(CalibrationError::CounterStuck)
        );
        assert_eq!(
            TscClock::calibrate(0, 30, 20, 5_000),
            Err(CalibrationError::CounterStuck)
        );
        // 4 ticks in 5 ms: under one tick per millisecond.
        assert_eq!(
            TscClock::calibrate(0, 0, 4, 5_000),
            Err(CalibrationError::TooSlow)
        );
    }

    #[test]
    fn huge_readings_do_not_overflow() {
        let clock = TscClock::calibrate(0, 0, 1, 1_000).expect("valid");
        assert_eq!(clock.ticks_per_ms(), 1);
        assert_eq!(clock.elapsed_ms(u64::MAX), u64::MAX);
        assert_eq!(clock.elapsed_us(u64::MAX), u64::MAX);
    }

    #[test]
    fn civil_dates_convert_to_unix_seconds() {
        assert_eq!(unix_seconds(1970, 1, 1, 0, 0, 0, None), Some(0));
        assert_eq!(
            unix_seconds(2026, 12, 5, 21, 30, 0, Some(0)),
            Some(1_796_506_200)
        );
        assert_eq!(unix_seconds(2000, 2, 29, 12, 0, 0, None), Some(951_825_600));
        // 60 minutes ahead of UTC (UEFI TimeZone -60): local 01:00 is 00:00 UTC.
        assert_eq!(unix_seconds(1970, 1, 2, 1, 0, 0, Some(-60)), Some(86_400));
        assert_eq!(unix_seconds(1969, 12, 31, 0, 0, 0, None), None);
        assert_eq!(unix_seconds(2024, 13, 1, 0, 0, 0, None), None);
    }
}
