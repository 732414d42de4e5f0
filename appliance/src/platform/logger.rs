//! The `log` backend: one line per record on COM1, stamped with the time since entry.

use appliance::logfmt::{CrlfWriter, level_enabled, write_record};
use log::{LevelFilter, Log, Metadata, Record};
use spin::Mutex;

use super::clock::now_ms;
use super::serial::Com1;

struct SerialLogger {
    port: Mutex<Com1>,
}

static LOGGER: SerialLogger = SerialLogger {
    port: Mutex::new(Com1::new()),
};

impl Log for SerialLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        level_enabled(metadata.target(), metadata.level(), log::max_level())
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut port = self.port.lock();
        let mut out = CrlfWriter::new(|byte| port.write_byte(byte));
        let _ = write_record(
            &mut out,
            now_ms(),
            record.level(),
            record.target(),
            *record.args(),
        );
    }

    fn flush(&self) {}
}

/// Installs the serial logger with `max` as the global maximum level.
pub fn init(max: LevelFilter) {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(max);
    }
}

/// Writes one console line whatever the log level: for what the operator must see even with
/// `log.level = "off"` (a generated API token, why the configuration is refused).
pub fn console(level: log::Level, args: core::fmt::Arguments<'_>) {
    let mut port = LOGGER.port.lock();
    let mut out = CrlfWriter::new(|byte| port.write_byte(byte));
    let _ = write_record(&mut out, now_ms(), level, "appliance", args);
}

/// Writes a message straight to COM1 without taking the logger's lock (for the panic handler,
/// which may run while the lock is held).
pub fn emergency_write(args: core::fmt::Arguments<'_>) {
    let mut port = Com1::new();
    let mut out = CrlfWriter::new(|byte| port.write_byte(byte));
    let _ = core::fmt::Write::write_fmt(&mut out, args);
}
