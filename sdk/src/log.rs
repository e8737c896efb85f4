//! Write to the host's log, tagged with the policy's name.
//!
//! ```
//! adc_sdk::log::info("cache warmed");
//! ```

use crate::sys;

/// Severity of a log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Fine detail.
    Trace,
    /// Detail for debugging.
    Debug,
    /// Normal events.
    Info,
    /// Something an operator should look at.
    Warn,
    /// A failure.
    Error,
}

/// Write a line at `level`.
pub fn write(level: Level, message: &str) {
    sys::log_write(level, message);
}

/// Whether a line at `level` would be written; check it before building an
/// expensive message.
pub fn enabled(level: Level) -> bool {
    sys::log_enabled(level)
}

/// Write at debug level.
pub fn debug(message: &str) {
    write(Level::Debug, message);
}

/// Write at info level.
pub fn info(message: &str) {
    write(Level::Info, message);
}

/// Write at warn level.
pub fn warn(message: &str) {
    write(Level::Warn, message);
}

/// Write at error level.
pub fn error(message: &str) {
    write(Level::Error, message);
}
