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

/// A time of day for humans, in UTC: `2026-12-07 12:34:56 UTC` for `unix` seconds since the
/// epoch (civil date from the day count, Hinnant's algorithm: no time-zone database).
pub fn utc_time(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rest / 3600, rest % 3600 / 60, rest % 60)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_read_as_calendars_do() {
        assert_eq!(utc_time(0.0), "1970-01-01 00:00:00 UTC");
        // 2026-12-07 12:34:56 UTC; a leap day; the last second of a year.
        assert_eq!(utc_time(1_796_646_896.0), "2026-12-07 12:34:56 UTC");
        assert_eq!(utc_time(951_782_400.0), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_767_225_599.9), "2025-12-31 23:59:59 UTC");
    }
}
