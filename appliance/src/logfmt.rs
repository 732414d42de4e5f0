//! Log line format and level policy of the serial console logger.
//!
//! Lines look like `[    3.481] INFO  appliance: listening on port 8080 ...`: seconds and
//! milliseconds since the entry point, the level, the module path, the message, CRLF.

use core::fmt;
use log::{Level, LevelFilter};

/// Crates whose debug/trace output is suppressed: smoltcp's trace output through the firmware
/// console slows the stack down so much that the server stops answering.
const CAPPED_AT_INFO: &[&str] = &["smoltcp"];

/// Whether a record of `level` from `target` is logged when the global maximum is `max`.
pub fn level_enabled(target: &str, level: Level, max: LevelFilter) -> bool {
    let capped = CAPPED_AT_INFO.iter().any(|prefix| {
        target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    });
    let limit = if capped {
        max.min(LevelFilter::Info)
    } else {
        max
    };
    level <= limit
}

/// Writes one log line (terminated by CRLF) to `out`.
pub fn write_record<W: fmt::Write>(
    out: &mut W,
    elapsed_ms: u64,
    level: Level,
    target: &str,
    message: fmt::Arguments<'_>,
) -> fmt::Result {
    write!(
        out,
        "[{:>5}.{:03}] {:<5} {}: {}\r\n",
        elapsed_ms / 1000,
        elapsed_ms % 1000,
        level.as_str(),
        target,
        message
    )
}

/// Adapts a byte sink to `fmt::Write`, turning bare `\n` into `\r\n` for the serial console.
pub struct CrlfWriter<F: FnMut(u8)> {
    put: F,
    last: u8,
}

impl<F: FnMut(u8)> CrlfWriter<F> {
    /// Wraps a function that emits one byte.
    pub fn new(put: F) -> Self {
        Self { put, last: 0 }
    }
}

impl<F: FnMut(u8)> fmt::Write for CrlfWriter<F> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for &byte in text.as_bytes() {
            if byte == b'\n' && self.last != b'\r' {
                (self.put)(b'\r');
            }
            (self.put)(byte);
            self.last = byte;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate alloc;
    extern crate std;
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;
    use core::fmt::Write;

    #[test]
    fn formats_time_level_target_and_message() {
        let mut line = String::new();
        write_record(
            &mut line,
            3_481,
            Level::Info,
            "appliance",
            format_args!("listening on port {}", 8080),
        )
        .expect("fmt");
        assert_eq!(
            line,
            "[    3.481] INFO  appliance: listening on port 8080\r\n"
        );
    }

    #[test]
    fn smoltcp_is_capped_at_info_whatever_the_maximum() {
        assert!(level_enabled(
            "smoltcp::iface",
            Level::Info,
            LevelFilter::Trace
        ));
        assert!(!level_enabled(
            "smoltcp::iface",
            Level::Debug,
            LevelFilter::Trace
        ));
        assert!(!level_enabled("smoltcp", Level::Trace, LevelFilter::Trace));
        assert!(level_enabled(
            "smoltcp_other",
            Level::Debug,
            LevelFilter::Trace
        ));
        assert!(level_enabled("appliance", Level::Debug, LevelFilter::Debug));
        assert!(!level_enabled("appliance", Level::Debug, LevelFilter::Info));
    }

    #[test]
    fn crlf_writer_converts_bare_newlines_only() {
        let mut bytes = Vec::new();
        {
            let mut writer = CrlfWriter::new(|byte| bytes.push(byte));
            writer.write_str("a\nb\r\nc").expect("fmt");
        }
        assert_eq!(bytes, b"a\r\nb\r\nc");
    }
}
