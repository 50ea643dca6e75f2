//! Durations, sizes and signal names as they are written in the config file.
use std::time::Duration;

/// Parses `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"0"`.
pub fn parse_duration(_s: &str) -> Result<Duration, String> {
    Err("not implemented".into())
}

/// Parses `"512M"`, `"1G"`, `"0"` into bytes.
pub fn parse_size(_s: &str) -> Result<u64, String> {
    Err("not implemented".into())
}

/// Parses `"SIGTERM"`, `"TERM"` or `"15"` into a signal number.
pub fn parse_signal(_s: &str) -> Result<i32, String> {
    Err("not implemented".into())
}
