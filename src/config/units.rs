//! Durations, sizes and signal names as they are written in the config file.
//!
//! The parsers return a short message on error; the caller adds file, line, column and key.
use std::time::Duration;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses a duration: `"0"`, `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1.5s"`, or components
/// written one after the other, `"1m30s"` (spaces between them are allowed).
///
/// Units: `us`, `ms`, `s`, `m` or `min`, `h`. A number without a unit is refused (except
/// `"0"`): `timeout = "30"` could mean seconds or milliseconds, and guessing wrong is
/// worse than asking.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration; expected e.g. \"30s\"".into());
    }
    if t.starts_with('-') {
        return Err("a duration cannot be negative".into());
    }
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!("\"{t}\" has no unit; add a unit, e.g. \"30s\""));
    }

    let mut total: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let (number, after) = split_number(rest);
        if number.is_empty() {
            return Err(format!("expected a number at \"{rest}\"; durations look like \"500ms\", \"30s\", \"1m30s\""));
        }
        let unit_len = after.find(|c: char| !c.is_alphabetic()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "" => return Err(format!("\"{number}\" has no unit; add a unit, e.g. \"30s\"")),
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" | "min" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            _ => return Err(format!("unknown unit \"{unit}\"; use us, ms, s, m, min or h")),
        };
        let nanos = scale(number, unit_nanos).ok_or_else(too_long)?;
        total = total.checked_add(nanos).ok_or_else(too_long)?;
        rest = after.trim_start();
    }

    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| too_long())?;
    // The remainder is below 10^9, so it fits in u32.
    let nanos = u32::try_from(total % NANOS_PER_SEC).map_err(|_| too_long())?;
    Ok(Duration::new(secs, nanos))
}

/// Writes `d` the way the config file would: `"24h"`, `"90m"`, `"45s"`, `"1.5s"`; parses
/// back to `d` with [`parse_duration`].
pub fn format_duration(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        return format!("{secs}.{}s", frac.trim_end_matches('0'));
    }
    match secs {
        0 => "0".into(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn too_long() -> String {
    "duration too long".into()
}

/// Splits `"1.5s..."` into `("1.5", "s...")`: digits, optionally a dot and more digits.
fn split_number(s: &str) -> (&str, &str) {
    let int_len = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if int_len == 0 {
        return ("", s);
    }
    let mut len = int_len;
    if let Some(frac) = s[int_len..].strip_prefix('.') {
        len += 1 + frac.find(|c: char| !c.is_ascii_digit()).unwrap_or(frac.len());
    }
    s.split_at(len)
}

/// `number` (`"12"`, `"1.5"`, `"2."`) times `unit` nanoseconds, truncated to whole
/// nanoseconds; `None` on overflow.
fn scale(number: &str, unit: u128) -> Option<u128> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let mut value = 0u128;
    for d in int.bytes() {
        value = value.checked_mul(10)?.checked_add(u128::from(d - b'0'))?;
    }
    let mut nanos = value.checked_mul(unit)?;
    // Each fractional digit is worth a tenth of the previous one; once that falls below a
    // nanosecond it adds nothing, so a bounded number of digits is enough.
    let mut place = unit;
    for d in frac.bytes().take(18) {
        place /= 10;
        nanos = nanos.checked_add(u128::from(d - b'0') * place)?;
    }
    Some(nanos)
}

/// Parses a size in bytes: `"0"`, `"1024"`, `"512K"`, `"512M"`, `"1G"`, `"1T"`.
///
/// Multiples are binary (K = 1024), as in systemd's `MemoryMax=`; an optional `B` or `iB`
/// may follow (`"512MiB"`, `"512MB"` — both 512 × 1024²), in any case.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty size; expected e.g. \"512M\"".into());
    }
    if t.starts_with('-') {
        return Err("a size cannot be negative".into());
    }
    let digits_len = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(digits_len);
    if digits.is_empty() || suffix.starts_with('.') {
        return Err(format!(
            "expected a whole number of bytes, optionally followed by K, M, G or T (e.g. \"512M\"), not \"{t}\""
        ));
    }
    let suffix = suffix.trim_start().to_ascii_lowercase();
    let unit = suffix.strip_suffix("ib").or_else(|| suffix.strip_suffix('b')).unwrap_or(&suffix);
    let shift = match (unit, suffix.as_str()) {
        // A lone "B" means bytes; "iB" alone means nothing.
        ("", "" | "b") => 0,
        ("k", _) => 10,
        ("m", _) => 20,
        ("g", _) => 30,
        ("t", _) => 40,
        _ => {
            return Err(format!(
                "unknown size suffix \"{}\"; use K, M, G or T (binary multiples)",
                &t[digits_len..].trim_start()
            ))
        }
    };
    let value: u64 = digits.parse().map_err(|_| "size too large".to_string())?;
    value.checked_mul(1u64 << shift).ok_or_else(|| "size too large".to_string())
}

/// SIGABRT's number: what a hung worker (watchdog) is sent, as systemd does.
pub const SIGABRT: i32 = libc::SIGABRT;

/// SIGKILL's number.
pub const SIGKILL: i32 = libc::SIGKILL;

/// Parses a signal: `"SIGTERM"`, `"TERM"` (any case) or a number in 1..=64.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return match t.parse::<i32>() {
            Ok(n @ 1..=64) => Ok(n),
            _ => Err(format!("signal number {t} is out of range 1..64")),
        };
    }
    let upper = t.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    signal_by_name(bare).ok_or_else(|| format!("unknown signal \"{t}\"; expected a name like \"SIGTERM\" or a number"))
}

/// The standard Linux signals, by name without `SIG`, as libc numbers them for this
/// architecture (they differ on mips, sparc, alpha).
fn signal_by_name(name: &str) -> Option<i32> {
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        // mips and sparc have no SIGSTKFLT.
        #[cfg(not(any(
            target_arch = "mips",
            target_arch = "mips32r6",
            target_arch = "mips64",
            target_arch = "mips64r6",
            target_arch = "sparc",
            target_arch = "sparc64"
        )))]
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert_eq!(parse_duration("30s"), Ok(ms(30_000)));
        assert_eq!(parse_duration("5m"), Ok(ms(300_000)));
        assert_eq!(parse_duration("5min"), Ok(ms(300_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1h 2m 3s 4ms"), Ok(ms(3_723_004)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration("0.25h"), Ok(ms(900_000)));
        assert_eq!(parse_duration(" 2s "), Ok(ms(2000)));
        assert_eq!(parse_duration("1.0000000001s"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn durations_format_as_written() {
        for (d, text) in [
            (Duration::ZERO, "0"),
            (Duration::from_secs(24 * 3600), "24h"),
            (Duration::from_secs(90 * 60), "90m"),
            (Duration::from_secs(45), "45s"),
            (ms(1500), "1.5s"),
            (Duration::new(86_400, 1), "86400.000000001s"),
            (Duration::from_secs(10_000_000_000_000_000_000), "10000000000000000000s"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d), "{text} parses back");
        }
    }

    #[test]
    fn duration_rejections() {
        let err = |s: &str| parse_duration(s).unwrap_err();
        assert_eq!(err(""), "empty duration; expected e.g. \"30s\"");
        assert_eq!(err("  "), "empty duration; expected e.g. \"30s\"");
        assert_eq!(err("-1s"), "a duration cannot be negative");
        assert_eq!(err("30"), "\"30\" has no unit; add a unit, e.g. \"30s\"");
        assert_eq!(err("1.5"), "\"1.5\" has no unit; add a unit, e.g. \"30s\"");
        assert_eq!(err("1m30"), "\"30\" has no unit; add a unit, e.g. \"30s\"");
        assert_eq!(err("3d"), "unknown unit \"d\"; use us, ms, s, m, min or h");
        assert_eq!(err("3S"), "unknown unit \"S\"; use us, ms, s, m, min or h");
        assert!(err("s").starts_with("expected a number at \"s\""));
        assert!(err("1s+2s").starts_with("expected a number at \"+2s\""));
        assert_eq!(err("99999999999999999999999h"), "duration too long");
        assert_eq!(err("999999999999999999999999999999999999999999999s"), "duration too long");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512mib"), Ok(512 << 20));
        assert_eq!(parse_size("512MB"), Ok(512 << 20));
        assert_eq!(parse_size("512 M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
    }

    #[test]
    fn size_rejections() {
        let err = |s: &str| parse_size(s).unwrap_err();
        assert_eq!(err(""), "empty size; expected e.g. \"512M\"");
        assert_eq!(err("-1"), "a size cannot be negative");
        assert!(err("M").starts_with("expected a whole number of bytes"));
        assert!(err("1.5G").starts_with("expected a whole number of bytes"));
        assert_eq!(err("5X"), "unknown size suffix \"X\"; use K, M, G or T (binary multiples)");
        assert!(err("5iB").starts_with("unknown size suffix \"iB\""));
        assert!(err("5 KBB").starts_with("unknown size suffix"));
        assert_eq!(err("99999999999999999999"), "size too large");
        assert_eq!(err("16777216T"), "size too large");
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("TERM"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("sigterm"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("15"), Ok(15));
        assert_eq!(parse_signal("64"), Ok(64));
        assert_eq!(parse_signal("SIGQUIT"), Ok(libc::SIGQUIT));
        assert_eq!(parse_signal("SIGINT"), Ok(libc::SIGINT));
        assert_eq!(parse_signal("SIGKILL"), Ok(libc::SIGKILL));
        assert_eq!(parse_signal("SIGWINCH"), Ok(libc::SIGWINCH));
        assert_eq!(parse_signal("SIGUSR1"), Ok(libc::SIGUSR1));
        assert_eq!(parse_signal("SIGIOT"), Ok(libc::SIGABRT));
        let names = [
            "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM",
            "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF",
            "WINCH", "IO", "PWR", "SYS",
        ];
        let mut seen = std::collections::BTreeSet::new();
        for name in names {
            let n = parse_signal(&format!("SIG{name}")).unwrap();
            assert!((1..=31).contains(&n), "{name} = {n}");
            seen.insert(n);
        }
        // Every name maps to a distinct standard signal.
        assert_eq!(seen.len(), names.len());
    }

    #[test]
    fn signal_rejections() {
        let err = |s: &str| parse_signal(s).unwrap_err();
        assert_eq!(err("0"), "signal number 0 is out of range 1..64");
        assert_eq!(err("65"), "signal number 65 is out of range 1..64");
        assert_eq!(err("99999999999999999999"), "signal number 99999999999999999999 is out of range 1..64");
        assert_eq!(err("SIGFOO"), "unknown signal \"SIGFOO\"; expected a name like \"SIGTERM\" or a number");
        assert!(err("").starts_with("unknown signal \"\""));
        assert!(err("-15").starts_with("unknown signal \"-15\""));
        assert!(err("SIG").starts_with("unknown signal"));
    }
}
