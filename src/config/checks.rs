//! Checks of single values (names, addresses, signals, durations, sizes of the file and of
//! arguments), and the serde helpers for values of two types (`DurationText`, `Scalar`).
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{de, Deserialize};

use super::{units, ListenAddress, ReadyMode, MAX_TIMEOUT};

/// systemd's limit for an FDNAME (`FDNAME_MAX`).
pub(super) const MAX_FDNAME: usize = 255;
/// Variables handover sets for each worker; `workers.env` must not override them, or the
/// worker would look for its sockets or its notify socket in the wrong place.
pub(super) const RESERVED_ENV: &[&str] =
    &["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "HANDOVER_GENERATION", "HANDOVER_WORKER_SLOT"];

/// A duration as written: a string; checked later by [`units::parse_duration`].
///
/// Its own type so that a bare TOML number (`boot_timeout = 30`) gets a hint rather than
/// serde's "invalid type: integer".
pub(super) struct DurationText(pub(super) String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = DurationText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"30s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationText, E> {
                Err(number_for_duration(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationText, E> {
                Err(number_for_duration(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DurationText, E> {
                Err(number_for_duration(v))
            }
        }
        d.deserialize_any(Visitor)
    }
}

pub(super) fn number_for_duration<E: de::Error>(v: impl fmt::Display) -> E {
    E::custom(format!("a duration is a string with a unit, e.g. \"30s\", not the number {v}"))
}

/// A value that may be written as a string or an integer (`max_memory`, `stop_signal`).
pub(super) enum Scalar {
    Str(String),
    Int(i64),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                i64::try_from(v).map(Scalar::Int).map_err(|_| E::custom("number too large"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A config file is a regular file of at most [`MAX_CONFIG_BYTES`].
pub(super) fn check_config_file(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let kind = if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    };
    if let Some(kind) = kind {
        return Err(format!("cannot read: it is {kind}, not a regular file"));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_large(Some(meta.len())));
    }
    Ok(())
}

pub(super) fn too_large(len: Option<u64>) -> String {
    let size = len.map_or_else(|| "more than 1 MiB".to_string(), |n| format!("{n} bytes"));
    format!("cannot read: the file is {size}; a config file can have at most {MAX_CONFIG_BYTES} bytes (1 MiB)")
}

/// The longest string execve(2) takes as one argument or one environment variable,
/// including its terminating NUL: MAX_ARG_STRLEN, 32 pages of 4 KiB on Linux.
pub(super) const MAX_ARG_STRLEN: usize = 32 * 4096;

/// A string of `len` bytes (without its NUL) fits in one execve(2) argument.
pub(super) fn within_arg_limit(len: usize, what: &str) -> Result<(), String> {
    if len < MAX_ARG_STRLEN {
        return Ok(());
    }
    Err(format!(
        "{what} is {} bytes with its terminating NUL; the kernel takes at most {MAX_ARG_STRLEN} \
         (MAX_ARG_STRLEN) per argument or variable, so every spawn would fail with E2BIG \
         (pass large data in a file instead)",
        len + 1
    ))
}

/// The name goes into paths (`/run/handover/<name>/`), logs and `STATUS=`.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("cannot be \"{name}\" (it is used in paths)"));
    }
    match name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))) {
        Some(c) => Err(format!("{c:?} is not allowed; use letters, digits and . _ @ - (it is used in paths)")),
        None => Ok(()),
    }
}

pub(super) fn no_nul(s: &str) -> Result<(), String> {
    if s.contains('\0') {
        Err("must not contain a NUL byte".into())
    } else {
        Ok(())
    }
}

/// A systemd FDNAME: it travels in `LISTEN_FDNAMES` (colon-separated) and `FDNAME=`.
pub(super) fn check_fdname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_FDNAME {
        return Err(format!("is {} bytes long; at most {MAX_FDNAME} (it is a systemd FDNAME)", name.len()));
    }
    for c in name.chars() {
        if !c.is_ascii() {
            return Err("must be ASCII (it is a systemd FDNAME)".into());
        }
        if c == ':' {
            return Err("must not contain ':' (it separates names in LISTEN_FDNAMES)".into());
        }
        if c.is_ascii_control() {
            return Err("must not contain control characters".into());
        }
    }
    Ok(())
}

pub(super) fn parse_address(s: &str) -> Result<ListenAddress, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        if !p.starts_with('/') {
            return Err(format!("the unix socket path must be absolute, e.g. \"unix:/run/app/app.sock\", not \"{s}\""));
        }
        let path = PathBuf::from(p);
        check_socket_path(&path)?;
        return Ok(ListenAddress::Unix(path));
    }
    s.parse().map(ListenAddress::Tcp).map_err(|_| {
        format!(
            "cannot parse \"{s}\"; expected IP:PORT (\"127.0.0.1:8000\", \"[::]:8000\") or \
             \"unix:/absolute/path\""
        )
    })
}

pub(super) fn check_env_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the variable name must not be empty".into());
    }
    if name.contains('=') {
        return Err("the variable name must not contain '='".into());
    }
    no_nul(name)?;
    if RESERVED_ENV.contains(&name) {
        return Err(format!("{name} is set by handover for each worker and cannot be overridden"));
    }
    Ok(())
}

pub(super) fn parse_ready(s: &str) -> Result<ReadyMode, String> {
    match s {
        "notify" => Ok(ReadyMode::Notify),
        "spawn" => Ok(ReadyMode::Spawn),
        _ => match s.strip_prefix("delay:") {
            Some(d) => units::parse_duration(d)
                .and_then(|d| at_most(d, MAX_TIMEOUT))
                .map(ReadyMode::Delay)
                .map_err(|why| format!("in \"{s}\": {why}")),
            None => {
                Err(format!("expected \"notify\", \"spawn\" or \"delay:<duration>\" (e.g. \"delay:2s\"), not \"{s}\""))
            }
        },
    }
}

pub(super) fn parse_stop_signal(v: &Scalar) -> Result<i32, String> {
    let sig = match v {
        Scalar::Str(s) => units::parse_signal(s)?,
        Scalar::Int(n) => units::parse_signal(&n.to_string())?,
    };
    if sig == libc::SIGKILL || sig == libc::SIGSTOP {
        let name = if sig == libc::SIGKILL { "SIGKILL" } else { "SIGSTOP" };
        return Err(format!("{name} cannot be caught, so no worker could drain on it; use e.g. SIGTERM"));
    }
    Ok(sig)
}

/// `d` if it is at most `max`: every duration in the file has an upper bound, so that no
/// deadline computed from it can overflow the clock (and a unit typo is caught).
pub(super) fn at_most(d: Duration, max: Duration) -> Result<Duration, String> {
    if d <= max {
        Ok(d)
    } else {
        Err(format!("must be at most {}, not {}", units::format_duration(max), units::format_duration(d)))
    }
}

/// The largest config file read (1 MiB): real ones are a few KiB; the cap bounds the time
/// and memory a reload spends on a wrong path.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// `sun_path` is 108 bytes, including the terminating NUL.
pub(super) const MAX_UNIX_PATH: usize = 107;

pub(super) fn check_socket_path(p: &Path) -> Result<(), String> {
    let len = p.as_os_str().len();
    if len > MAX_UNIX_PATH {
        return Err(format!(
            "{} is {len} bytes long; a unix socket path can have at most {MAX_UNIX_PATH}",
            p.display()
        ));
    }
    if p.as_os_str().as_encoded_bytes().contains(&0) {
        return Err("must not contain a NUL byte".into());
    }
    Ok(())
}
