//! Small text helpers shared by every layer: durations for humans, and text from outside
//! made safe to show. Plain functions of std only; the bottom of the house.
use std::time::Duration;

/// `n` and the noun for that many: `1 worker`, `2 workers` (`plural` for n != 1).
pub fn count(n: usize, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// A duration for humans: `250ms`, `2.5s`, `3m`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 120_000 {
        let s = d.as_secs_f64();
        if s.fract() == 0.0 {
            format!("{}s", s as u64)
        } else {
            format!("{s:.1}s")
        }
    } else {
        format!("{}m", d.as_secs() / 60)
    }
}

/// `text` without control characters (C0 including ESC, CR, LF and TAB; DEL; C1), so that
/// text a worker chose cannot move a terminal's cursor, recolour it, or forge a line when it
/// is shown by `handover status`, logged, or passed on to systemd's `STATUS=`.
///
/// Worker text is cleaned once, where the datagram is parsed (`worker::readiness::parse`); renderers call
/// this again as a second line of defence.
pub fn strip_control_chars(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        std::borrow::Cow::Owned(text.chars().filter(|c| !c.is_control()).collect())
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}
