//! TOML → [`Config`]: serde structs that mirror the file, then validation and resolution
//! (defaults applied, paths made absolute). Checks of single values are in `checks.rs`,
//! path rules in `paths.rs`, users and groups in `users.rs`, error positions in `source.rs`;
//! the model itself in `mod.rs`.
//!
//! Parsing happens in three steps, each with its own kind of error location:
//! 1. the text is parsed into toml's spanned document tree (`DeTable`): syntax errors;
//! 2. the tree is deserialized into the `Raw*` structs below (unknown keys, wrong types,
//!    missing keys): toml gives a byte span, and the dotted key is found by looking that
//!    span up in the document tree;
//! 3. the raw values are validated and defaults applied: the raw fields keep their spans
//!    (`toml::Spanned`), so every error points at the offending value.
use super::{checks::*, paths::*, source::*, users::*};
use super::{
    units, BootPriority, Config, ConfigError, Listen, LoadEnv, Metrics, ReadyMode, Reload, Strategy, Workers,
    DEFAULT_CANARY_TIME, DEFAULT_MAX_ERROR_RATE, DEFAULT_MIN_REQUESTS, MAX_CANARY_TIME, MAX_LIFETIME, MAX_TIMEOUT,
    MAX_WATCH,
};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;
use toml::de::DeTable;
use toml::Spanned;

/// `workers.count` when the file does not say.
const DEFAULT_COUNT: i64 = 1;
/// Upper bound for `workers.count`: far above any sane pre-fork pool, low enough that a
/// typo (`40000`) is caught instead of fork-bombing the host.
const MAX_COUNT: i64 = 4096;
/// `listen.backlog` when the file does not say.
const DEFAULT_BACKLOG: i64 = 1024;
/// `workers.boot_timeout` when the file does not say.
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// `workers.graceful_timeout` when the file does not say.
const DEFAULT_GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);
/// `reload.max_surge` when the file does not say.
const DEFAULT_MAX_SURGE: i64 = 1;
/// `reload.min_healthy_time` when the file does not say and `workers.ready` is `"spawn"`
/// or `"delay:…"`: handover only guesses readiness there, so a new generation must prove
/// itself beside the old one for a while before the old one goes (an import error after
/// the delay, or a crash at the first requests, then rolls back instead of taking the site
/// down). With `"notify"` the worker says when it serves, and the default is 0.
const DEFAULT_MIN_HEALTHY_TIME_GUESSED: Duration = Duration::from_secs(5);
/// Upper bound for `reload.min_healthy_time`: a reload holds two generations (twice the
/// memory) and keeps `systemctl reload` waiting for this long.
const MAX_MIN_HEALTHY_TIME: Duration = Duration::from_secs(3600);
/// The whole file (SPEC §2).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawConfig {
    /// Default: the file stem.
    name: Option<Spanned<String>>,
    /// Default: see [`control_socket_path`].
    control_socket: Option<Spanned<String>>,
    /// Default: none.
    pidfile: Option<Spanned<String>>,
    /// Default: no entries (every inherited socket is passed through).
    #[serde(default)]
    listen: Vec<RawListen>,
    /// Required.
    workers: RawWorkers,
    /// Default: all-at-once.
    reload: Option<RawReload>,
    /// Default: no metrics.
    metrics: Option<RawMetrics>,
}

/// The `[metrics]` table (optional).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawMetrics {
    /// Default: none (no metrics written).
    textfile: Option<Spanned<String>>,
}

/// One `[[listen]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawListen {
    /// Required: the FDNAME.
    name: Spanned<String>,
    /// Required: `"IP:PORT"`, `"[IPv6]:PORT"` or `"unix:/absolute/path"`.
    address: Spanned<String>,
    /// Default 1024, 1..=65535.
    backlog: Option<Spanned<i64>>,
    /// Default true: TCP_NODELAY on TCP sockets handover binds.
    nodelay: Option<Spanned<bool>>,
}

/// The `[workers]` table (required).
///
/// Defaults: `count` 1, `ready` "notify", `boot_timeout` "60s", `watchdog` off,
/// `stop_signal` "SIGTERM", `graceful_timeout` "30s", `max_lifetime` and `max_memory` "0"
/// (off), no `working_directory` (handover's own), no extra `env`. `command` is required.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawWorkers {
    command: Spanned<Vec<Spanned<String>>>,
    count: Option<Spanned<i64>>,
    working_directory: Option<Spanned<String>>,
    #[serde(default)]
    env: BTreeMap<Spanned<String>, Spanned<String>>,
    ready: Option<Spanned<String>>,
    boot_timeout: Option<Spanned<DurationText>>,
    watchdog: Option<Spanned<DurationText>>,
    stop_signal: Option<Spanned<Scalar>>,
    graceful_timeout: Option<Spanned<DurationText>>,
    max_lifetime: Option<Spanned<DurationText>>,
    max_memory: Option<Spanned<Scalar>>,
    memory_limit: Option<Spanned<Scalar>>,
    user: Option<Spanned<Scalar>>,
    group: Option<Spanned<Scalar>>,
}

/// The `[reload]` table (optional). Defaults: `strategy` "all-at-once", `max_surge` 1,
/// `min_healthy_time` 0 with `ready = "notify"`, else 5 s, `boot_priority` "low".
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawReload {
    strategy: Option<Spanned<String>>,
    max_surge: Option<Spanned<i64>>,
    min_healthy_time: Option<Spanned<DurationText>>,
    boot_priority: Option<Spanned<String>>,
    canary: Option<Spanned<i64>>,
    canary_time: Option<Spanned<DurationText>>,
    max_error_rate: Option<Spanned<f64>>,
    min_requests: Option<Spanned<i64>>,
    watch: Option<Spanned<DurationText>>,
}

/// Reads the config file; shared by `load` and `control_socket_of` so both report an
/// unreadable file the same way.
///
/// The daemon reads the file on its event loop (at every reload), so the read must end
/// quickly whatever sits at the path: only a regular file (after following symlinks) is
/// opened, without blocking (`O_NONBLOCK`: a FIFO swapped in after the check cannot hold up
/// open(2)), checked again on the open file, and read up to [`MAX_CONFIG_BYTES`].
pub(super) fn read(path: &Path) -> Result<String, ConfigError> {
    let fail =
        |message: String| ConfigError { file: path.to_path_buf(), line: 0, col: 0, key: "(file)".into(), message };
    let cannot = |e: std::io::Error| fail(format!("cannot read: {e}"));
    // Refused before opening: opening a device can have side effects (a tape rewinds).
    let meta = std::fs::metadata(path).map_err(cannot)?;
    check_config_file(&meta).map_err(fail)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(cannot)?;
    // The path may have been replaced between the two looks: what counts is what was opened.
    let meta = file.metadata().map_err(cannot)?;
    check_config_file(&meta).map_err(fail)?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // One byte more than allowed tells a file that grew past the cap since fstat.
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(fail(too_large(None)));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        fail(format!("cannot read: not UTF-8 (invalid byte at offset {at})"))
    })
}

/// Parses and validates `text`, the contents of `path`; see [`super::parse`].
pub(super) fn parse(path: &Path, text: &str, env: &LoadEnv) -> Result<Config, ConfigError> {
    let src = Source { file: path, text };
    let doc = DeTable::parse(text).map_err(|e| src.syntax(&e))?;
    let raw = RawConfig::deserialize(toml::de::Deserializer::from(doc)).map_err(|e| src.deserialize(&e))?;
    raw.validate(&src, env)
}

/// The control socket for the file at `path`, looking only at `name` and
/// `control_socket`; see [`super::control_socket_of`].
pub(super) fn control_socket_of(path: &Path, env: &LoadEnv) -> Result<super::ClientView, ConfigError> {
    let text = read(path)?;
    let src = Source { file: path, text: &text };
    let (name, socket, skipped) = match DeTable::parse(&text) {
        Ok(doc) => {
            // A `name` of the wrong type is skipped (the file stem stands in, as the daemon
            // could not have started with that file either); a `control_socket` of the
            // wrong type is not: the default would be a guess at another daemon's socket.
            let (name, skipped) = match src.string_entry(doc.get_ref(), "name") {
                Ok(n) => (n, None),
                Err(e) => (None, Some(e)),
            };
            (name, src.string_entry(doc.get_ref(), "control_socket")?, skipped)
        }
        // The file does not parse (a half-edited deploy, say): take the two keys from
        // their lines, where they are plain strings at the top of the file.
        Err(e) => {
            let (name, socket) = scan_top_level_strings(&text);
            (name, socket, Some(src.syntax(&e)))
        }
    };
    let name = name_or_stem(path, name.as_ref().map(|n| n.get_ref().as_str()));
    let control_socket = control_socket_path(path, &name, socket.as_ref().map(|s| s.get_ref().as_str()), env)
        .map_err(|why| src.maybe_at(socket.as_ref().map(Spanned::span), "control_socket", why))?;
    Ok(super::ClientView { control_socket, skipped })
}

/// `name = "…"` and `control_socket = "…"` lines before the first table header, for a file
/// that does not parse as a whole: basic strings without escapes, or literal strings.
/// Anything less plain is left alone (the defaults apply).
fn scan_top_level_strings(text: &str) -> (Option<Spanned<String>>, Option<Spanned<String>>) {
    let (mut name, mut socket) = (None, None);
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            break; // a table: its keys are not top-level
        }
        let Some((key, rest)) = trimmed.split_once('=') else { continue };
        let rest = rest.trim_start();
        let quote = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => q,
            _ => continue,
        };
        let body = &rest[1..];
        let Some(end) = body.find(quote) else { continue };
        let value = &body[..end];
        let after = body[end + 1..].trim();
        if (quote == '"' && value.contains('\\')) || !(after.is_empty() || after.starts_with('#')) {
            continue;
        }
        // The value's byte range in the file, for an error pointing at it.
        let at = start + (line.len() - line.trim_start().len()) + (trimmed.len() - rest.len());
        let spanned = Some(Spanned::new(at..at + rest.len(), value.to_owned()));
        match key.trim() {
            "name" => name = spanned,
            "control_socket" => socket = spanned,
            _ => {}
        }
    }
    (name, socket)
}

impl RawConfig {
    fn validate(self, src: &Source<'_>, env: &LoadEnv) -> Result<Config, ConfigError> {
        let name = name_or_stem(src.file, self.name.as_ref().map(|n| n.get_ref().as_str()));
        check_name(&name).map_err(|why| match &self.name {
            Some(n) => src.at(n.span(), "name", why),
            None => src.whole("name", format!("not set, and the file stem \"{name}\" cannot be used: {why}; set name")),
        })?;

        let socket_span = self.control_socket.as_ref().map(Spanned::span);
        let control_socket =
            control_socket_path(src.file, &name, self.control_socket.as_ref().map(|s| s.get_ref().as_str()), env)
                .and_then(|p| check_socket_path(&p).map(|()| p))
                // The workers' notify socket is derived from it: refuse a collision here.
                .and_then(|p| crate::unix::check_control_socket_path(&p).map(|()| p))
                .map_err(|why| src.maybe_at(socket_span, "control_socket", why))?;

        let pidfile = match &self.pidfile {
            None => None,
            Some(p) if p.get_ref().is_empty() => return Err(src.at(p.span(), "pidfile", "must not be empty")),
            Some(p) => {
                no_nul(p.get_ref()).map_err(|why| src.at(p.span(), "pidfile", why))?;
                Some(relative_to_file(src.file, p.get_ref()))
            }
        };

        let mut listen: Vec<Listen> = Vec::with_capacity(self.listen.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, l) in self.listen.iter().enumerate() {
            let entry = l.validate(src, i)?;
            if let Some(first) = names.insert(entry.name.clone(), i) {
                return Err(src.at(
                    l.name.span(),
                    format!("listen[{i}].name"),
                    format!("duplicate name \"{}\" (also listen[{first}])", entry.name),
                ));
            }
            if let Some(first) = listen.iter().position(|e| e.address == entry.address) {
                return Err(src.at(
                    l.address.span(),
                    format!("listen[{i}].address"),
                    format!("duplicate address {} (also listen[{first}])", entry.address),
                ));
            }
            listen.push(entry);
        }

        let workers = self.workers.validate(src, env)?;
        let reload = self.reload.as_ref().unwrap_or(&RawReload::default()).validate(src, &workers)?;

        let metrics = match &self.metrics {
            None => Metrics::default(),
            Some(m) => m.validate(src)?,
        };

        Ok(Config { path: src.file.to_path_buf(), name, control_socket, pidfile, listen, workers, reload, metrics })
    }
}

impl RawMetrics {
    fn validate(&self, src: &Source<'_>) -> Result<Metrics, ConfigError> {
        let Some(t) = &self.textfile else { return Ok(Metrics::default()) };
        let path = check_textfile(src.file, t.get_ref()).map_err(|why| src.at(t.span(), "metrics.textfile", why))?;
        Ok(Metrics { textfile: Some(path) })
    }
}

impl RawListen {
    fn validate(&self, src: &Source<'_>, i: usize) -> Result<Listen, ConfigError> {
        let name = self.name.get_ref();
        check_fdname(name).map_err(|why| src.at(self.name.span(), format!("listen[{i}].name"), why))?;
        let address = parse_address(self.address.get_ref())
            .map_err(|why| src.at(self.address.span(), format!("listen[{i}].address"), why))?;
        let backlog = src.int_in(self.backlog.as_ref(), &format!("listen[{i}].backlog"), DEFAULT_BACKLOG, 1, 65535)?;
        Ok(Listen {
            name: name.clone(),
            address,
            // In range by the check above.
            backlog: u32::try_from(backlog).unwrap_or(u32::MAX),
            nodelay: self.nodelay.as_ref().is_none_or(|v| *v.get_ref()),
        })
    }
}

impl RawWorkers {
    fn validate(&self, src: &Source<'_>, env: &LoadEnv) -> Result<Workers, ConfigError> {
        let command: Vec<String> = self.command.get_ref().iter().map(|a| a.get_ref().clone()).collect();
        let Some(first) = self.command.get_ref().first() else {
            return Err(src.at(
                self.command.span(),
                "workers.command",
                "must not be empty: give the program and its arguments, e.g. \
                 [\"/usr/bin/app\", \"--port\", \"8000\"]",
            ));
        };
        for arg in self.command.get_ref() {
            no_nul(arg.get_ref()).map_err(|why| src.at(arg.span(), "workers.command", why))?;
        }

        let working_directory = match &self.working_directory {
            None => None,
            Some(wd) => {
                let p = check_working_directory(wd.get_ref())
                    .map_err(|why| src.at(wd.span(), "workers.working_directory", why))?;
                Some(p)
            }
        };

        let program =
            resolve_program(first.get_ref(), working_directory.as_deref(), &base_dir(src.file), env.path.as_deref())
                .map_err(|why| src.at(first.span(), "workers.command", why))?;

        let count = src.int_in(self.count.as_ref(), "workers.count", DEFAULT_COUNT, 1, MAX_COUNT)?;

        for arg in self.command.get_ref() {
            within_arg_limit(arg.get_ref().len(), "this argument")
                .map_err(|why| src.at(arg.span(), "workers.command", why))?;
        }
        let mut vars = BTreeMap::new();
        for (k, v) in &self.env {
            let key = format!("workers.env.{}", k.get_ref());
            check_env_name(k.get_ref()).map_err(|why| src.at(k.span(), key.as_str(), why))?;
            no_nul(v.get_ref()).map_err(|why| src.at(v.span(), key.as_str(), why))?;
            // The kernel passes each variable to execve(2) as one "NAME=VALUE" string.
            within_arg_limit(k.get_ref().len() + 1 + v.get_ref().len(), "NAME=VALUE")
                .map_err(|why| src.at(v.span(), key.as_str(), why))?;
            vars.insert(k.get_ref().clone(), v.get_ref().clone());
        }
        if let Some(arg_max) = env.arg_max {
            // The strings and their pointers share ARG_MAX with the inherited environment
            // and handover's own variables, which are not known here: what the file adds
            // must at least fit on its own.
            let strings = |n: usize| n + 1 + std::mem::size_of::<usize>();
            let total: usize = self.command.get_ref().iter().map(|a| strings(a.get_ref().len())).sum::<usize>()
                + self.env.iter().map(|(k, v)| strings(k.get_ref().len() + 1 + v.get_ref().len())).sum::<usize>();
            if total > arg_max {
                let (key, span) = match self.env.iter().max_by_key(|(_, v)| v.get_ref().len()) {
                    Some((k, v)) => (format!("workers.env.{}", k.get_ref()), v.span()),
                    None => ("workers.command".to_owned(), self.command.span()),
                };
                return Err(src.at(
                    span,
                    key,
                    format!(
                        "workers.command and workers.env take {total} bytes of execve(2)'s {arg_max} \
                         (ARG_MAX, sysconf(_SC_ARG_MAX): a quarter of the stack limit), which they \
                         share with the inherited environment: every spawn would fail with E2BIG"
                    ),
                ));
            }
        }

        let ready = match &self.ready {
            None => ReadyMode::Notify,
            Some(r) => parse_ready(r.get_ref()).map_err(|why| src.at(r.span(), "workers.ready", why))?,
        };

        let boot_timeout =
            src.positive_duration(self.boot_timeout.as_ref(), "workers.boot_timeout", DEFAULT_BOOT_TIMEOUT)?;
        // 0 is refused rather than read as "SIGKILL at once": systemd reads a 0 timeout as
        // "no timeout", and either reading would surprise someone.
        let graceful_timeout = src.positive_duration(
            self.graceful_timeout.as_ref(),
            "workers.graceful_timeout",
            DEFAULT_GRACEFUL_TIMEOUT,
        )?;
        let watchdog = src.duration(self.watchdog.as_ref(), "workers.watchdog", MAX_TIMEOUT)?.filter(|d| !d.is_zero());
        let max_lifetime =
            src.duration(self.max_lifetime.as_ref(), "workers.max_lifetime", MAX_LIFETIME)?.filter(|d| !d.is_zero());

        let stop_signal = match &self.stop_signal {
            None => libc::SIGTERM,
            Some(s) => parse_stop_signal(s.get_ref()).map_err(|why| src.at(s.span(), "workers.stop_signal", why))?,
        };

        let max_memory = match &self.max_memory {
            None => None,
            Some(m) => {
                let bytes = match m.get_ref() {
                    Scalar::Str(s) => units::parse_size(s),
                    Scalar::Int(n) => u64::try_from(*n).map_err(|_| "a size cannot be negative".to_string()),
                }
                .map_err(|why| src.at(m.span(), "workers.max_memory", why))?;
                Some(bytes).filter(|b| *b != 0)
            }
        };

        let memory_limit = match &self.memory_limit {
            None => None,
            Some(m) => {
                let bytes = match m.get_ref() {
                    Scalar::Str(s) => units::parse_size(s),
                    Scalar::Int(n) => u64::try_from(*n).map_err(|_| "a size cannot be negative".to_string()),
                }
                .map_err(|why| src.at(m.span(), "workers.memory_limit", why))?;
                Some(bytes).filter(|b| *b != 0)
            }
        };

        let credentials = resolve_credentials(self.user.as_ref(), self.group.as_ref(), src, env)?;

        let release = Some(pin_release(&program, working_directory.as_deref()));
        Ok(Workers {
            command,
            program,
            // In range by the check above.
            count: usize::try_from(count).unwrap_or(1),
            working_directory,
            env: vars,
            ready,
            boot_timeout,
            watchdog,
            stop_signal,
            graceful_timeout,
            max_lifetime,
            max_memory,
            memory_limit,
            credentials,
            release,
        })
    }
}

/// The value of a key that takes one of a few words; the first is the default.
fn one_of<T: Copy>(
    src: &Source<'_>,
    value: Option<&Spanned<String>>,
    key: &str,
    choices: &[(&str, T)],
) -> Result<T, ConfigError> {
    let Some(value) = value else { return Ok(choices[0].1) };
    match choices.iter().find(|(word, _)| *word == value.get_ref().as_str()) {
        Some(&(_, v)) => Ok(v),
        None => {
            let words: Vec<String> = choices.iter().map(|(w, _)| format!("\"{w}\"")).collect();
            let message = format!("expected {}, not \"{}\"", words.join(" or "), value.get_ref());
            Err(src.at(value.span(), key, message))
        }
    }
}

impl RawReload {
    fn validate(&self, src: &Source<'_>, workers: &Workers) -> Result<Reload, ConfigError> {
        let strategies = [("all-at-once", Strategy::AllAtOnce), ("rolling", Strategy::Rolling)];
        let strategy = one_of(src, self.strategy.as_ref(), "reload.strategy", &strategies)?;
        // Above workers.count is allowed: it means the whole generation at once.
        let max_surge = src.int_in(self.max_surge.as_ref(), "reload.max_surge", DEFAULT_MAX_SURGE, 1, i64::MAX)?;
        let key = "reload.min_healthy_time";
        let min_healthy_time = match src.duration(self.min_healthy_time.as_ref(), key, MAX_MIN_HEALTHY_TIME)? {
            Some(d) => d,
            None => match workers.ready {
                ReadyMode::Notify => Duration::ZERO,
                ReadyMode::Spawn | ReadyMode::Delay(_) => DEFAULT_MIN_HEALTHY_TIME_GUESSED,
            },
        };
        let priorities = [("low", BootPriority::Low), ("normal", BootPriority::Normal)];
        let boot_priority = one_of(src, self.boot_priority.as_ref(), "reload.boot_priority", &priorities)?;
        // Up to the whole generation: canaries as many as the workers judge the whole new
        // generation beside the whole old one before the reload commits.
        let canary = src.int_in(self.canary.as_ref(), "reload.canary", 0, 0, MAX_COUNT)?;
        let canary_time = match src.duration(self.canary_time.as_ref(), "reload.canary_time", MAX_CANARY_TIME)? {
            Some(d) => d,
            None => DEFAULT_CANARY_TIME,
        };
        let max_error_rate = match &self.max_error_rate {
            None => DEFAULT_MAX_ERROR_RATE,
            Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
            Some(r) => {
                let why = format!("must be a share between 0 and 1 (0.01 = one point), not {}", r.get_ref());
                return Err(src.at(r.span(), "reload.max_error_rate", why));
            }
        };
        let min_requests =
            src.int_in(self.min_requests.as_ref(), "reload.min_requests", DEFAULT_MIN_REQUESTS as i64, 1, 1 << 40)?;
        let watch = src.duration(self.watch.as_ref(), "reload.watch", MAX_WATCH)?.unwrap_or_default();
        Ok(Reload {
            strategy,
            max_surge: usize::try_from(max_surge).unwrap_or(usize::MAX),
            min_healthy_time,
            boot_priority,
            // In range by the checks above.
            canary: usize::try_from(canary).unwrap_or(0),
            canary_time,
            max_error_rate,
            min_requests: u64::try_from(min_requests).unwrap_or(DEFAULT_MIN_REQUESTS),
            watch,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::super::ListenAddress;
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// Most tests parse text as if it came from this file; `parse` never reads it.
    const FILE: &str = "/etc/handover/app.toml";
    const MIN: &str = "[workers]\ncommand = [\"app\"]\n";

    /// A temp dir with `bin/app` (executable) and `bin/noexec` (not), `bin` as PATH.
    struct Fx {
        dir: tempfile::TempDir,
        env: LoadEnv,
    }

    impl Fx {
        fn new() -> Fx {
            let dir = tempfile::tempdir().unwrap();
            let bin = dir.path().join("bin");
            std::fs::create_dir(&bin).unwrap();
            for (name, mode) in [("app", 0o755), ("noexec", 0o644)] {
                let p = bin.join(name);
                std::fs::write(&p, "#!/bin/sh\n").unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            let env = LoadEnv {
                runtime_directory: Some("/run/handover/app".into()),
                xdg_runtime_dir: None,
                is_root: false,
                path: Some(bin.clone().into_os_string()),
                ..LoadEnv::default()
            };
            Fx { dir, env }
        }

        fn bin(&self, name: &str) -> PathBuf {
            self.dir.path().join("bin").join(name)
        }

        fn parse(&self, text: &str) -> Result<Config, ConfigError> {
            parse(Path::new(FILE), text, &self.env)
        }

        fn ok(&self, text: &str) -> Config {
            self.parse(text).unwrap()
        }

        fn err(&self, text: &str) -> ConfigError {
            self.parse(text).unwrap_err()
        }

        /// `text` plus a working `[workers]` table.
        fn with_min(&self, text: &str) -> Result<Config, ConfigError> {
            self.parse(&format!("{text}\n{MIN}"))
        }
    }

    /// (line, col, key) of an error, for terse asserts.
    fn at(e: &ConfigError) -> (usize, usize, &str) {
        (e.line, e.col, e.key.as_str())
    }

    #[test]
    fn memory_limit_is_a_size() {
        let fx = Fx::new();
        assert_eq!(fx.ok(&format!("{MIN}memory_limit = \"64M\"\n")).workers.memory_limit, Some(64 << 20));
        assert_eq!(fx.ok(&format!("{MIN}memory_limit = \"0\"\n")).workers.memory_limit, None);
        let e = fx.err(&format!("{MIN}memory_limit = -1\n"));
        assert_eq!(at(&e), (3, 16, "workers.memory_limit"), "{e}");
    }

    #[test]
    fn workers_user_and_group_resolve_at_load_or_name_the_key() {
        let mut fx = Fx::new();
        fx.env.is_root = true;
        let c = fx.ok(&format!("{MIN}user = \"root\"\n")).workers.credentials.expect("root asked for");
        assert_eq!((c.uid, c.gid), (0, 0));
        assert!(c.groups.contains(&0), "the primary group is among the groups: {:?}", c.groups);
        // Numeric ids; a uid without a passwd entry needs the group.
        let c = fx.ok(&format!("{MIN}user = 4000123\ngroup = \"4000124\"\n")).workers.credentials.expect("ids");
        assert_eq!((c.uid, c.gid, c.groups.as_slice()), (4_000_123, 4_000_124, &[4_000_124][..]));
        let e = fx.err(&format!("{MIN}user = 4000123\n"));
        assert_eq!(at(&e), (3, 8, "workers.user"), "{e}");
        assert!(e.message.contains("workers.group"), "{e}");
        let e = fx.err(&format!("{MIN}user = \"no-such-user-hx\"\n"));
        assert_eq!(at(&e), (3, 8, "workers.user"), "{e}");
        assert!(e.message.contains("no such user"), "{e}");
        let e = fx.err(&format!("{MIN}group = \"no-such-group-hx\"\n"));
        assert_eq!(at(&e), (3, 9, "workers.group"), "{e}");
        assert!(e.message.contains("no such group"), "{e}");
        // Not root: only itself.
        fx.env.is_root = false;
        fx.env.ids = (4_000_123, 4_000_124);
        let e = fx.err(&format!("{MIN}user = \"root\"\n"));
        assert_eq!(at(&e), (3, 8, "workers.user"), "{e}");
        assert!(e.message.contains("not root"), "{e}");
        let same = fx.ok(&format!("{MIN}user = 4000123\ngroup = 4000124\n"));
        assert_eq!(same.workers.credentials, None, "its own identity: nothing to switch");
    }

    #[test]
    fn defaults() {
        let fx = Fx::new();
        let c = fx.ok(MIN);
        assert_eq!(
            c,
            Config {
                path: FILE.into(),
                name: "app".into(),
                control_socket: "/run/handover/app/control.sock".into(),
                pidfile: None,
                listen: vec![],
                workers: Workers {
                    command: vec!["app".into()],
                    program: fx.bin("app"),
                    count: 1,
                    working_directory: None,
                    env: BTreeMap::new(),
                    ready: ReadyMode::Notify,
                    boot_timeout: Duration::from_secs(60),
                    watchdog: None,
                    stop_signal: libc::SIGTERM,
                    graceful_timeout: Duration::from_secs(30),
                    max_lifetime: None,
                    max_memory: None,
                    memory_limit: None,
                    credentials: None,
                    release: Some(crate::config::Release { program: fx.bin("app"), working_directory: None }),
                },
                reload: Reload {
                    strategy: Strategy::AllAtOnce,
                    max_surge: 1,
                    min_healthy_time: Duration::ZERO,
                    boot_priority: BootPriority::Low,
                    ..Reload::default()
                },
                metrics: Metrics { textfile: None },
            }
        );
        let c = fx.ok(&format!("[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:8000\"\n{MIN}[reload]\n"));
        assert_eq!(c.listen[0].backlog, 1024);
        assert_eq!(c.reload.strategy, Strategy::AllAtOnce);
        assert_eq!(c.reload.max_surge, 1);
        let c = fx.ok(&format!("{MIN}[reload]\nstrategy = \"rolling\"\n"));
        assert_eq!(c.reload.max_surge, 1);
    }

    #[test]
    fn full_example() {
        let fx = Fx::new();
        let wd = fx.dir.path().display();
        let text = format!(
            r#"
name = "shop"
control_socket = "/run/shop/control.sock"
pidfile = "/run/shop.pid"

[[listen]]
name = "http"
address = "127.0.0.1:8000"
backlog = 4096

[[listen]]
name = "v6"
address = "[::]:8000"
nodelay = false

[[listen]]
name = "local"
address = "unix:/run/app/app.sock"

[workers]
command = ["app", "-m", "app"]
count = 4
working_directory = "{wd}"
env = {{ APP_ENV = "production", "weird.name" = "x" }}
ready = "delay:2s"
boot_timeout = "90s"
watchdog = "30s"
stop_signal = "SIGQUIT"
graceful_timeout = "1m30s"
max_lifetime = "1h"
max_memory = "512M"

[reload]
strategy = "rolling"
max_surge = 2
"#
        );
        let c = fx.ok(&text);
        assert_eq!(c.name, "shop");
        assert_eq!(c.control_socket, Path::new("/run/shop/control.sock"));
        assert_eq!(c.pidfile.as_deref(), Some(Path::new("/run/shop.pid")));
        assert_eq!(
            c.listen,
            vec![
                Listen {
                    name: "http".into(),
                    address: ListenAddress::Tcp("127.0.0.1:8000".parse().unwrap()),
                    backlog: 4096,
                    nodelay: true,
                },
                Listen {
                    name: "v6".into(),
                    address: ListenAddress::Tcp("[::]:8000".parse().unwrap()),
                    backlog: 1024,
                    nodelay: false,
                },
                Listen {
                    name: "local".into(),
                    address: ListenAddress::Unix("/run/app/app.sock".into()),
                    backlog: 1024,
                    nodelay: true,
                },
            ]
        );
        let w = &c.workers;
        assert_eq!(w.command, ["app", "-m", "app"]);
        assert_eq!(w.program, fx.bin("app"));
        assert_eq!(w.count, 4);
        assert_eq!(w.working_directory.as_deref(), Some(fx.dir.path()));
        assert_eq!(w.env.len(), 2);
        assert_eq!(w.env["APP_ENV"], "production");
        assert_eq!(w.env["weird.name"], "x");
        assert_eq!(w.ready, ReadyMode::Delay(Duration::from_secs(2)));
        assert_eq!(w.boot_timeout, Duration::from_secs(90));
        assert_eq!(w.watchdog, Some(Duration::from_secs(30)));
        assert_eq!(w.stop_signal, libc::SIGQUIT);
        assert_eq!(w.graceful_timeout, Duration::from_secs(90));
        assert_eq!(w.max_lifetime, Some(Duration::from_secs(3600)));
        assert_eq!(w.max_memory, Some(512 << 20));
        // ready = "delay:2s": handover guesses readiness, so a window by default.
        assert_eq!(
            c.reload,
            Reload {
                strategy: Strategy::Rolling,
                max_surge: 2,
                min_healthy_time: Duration::from_secs(5),
                boot_priority: BootPriority::Low,
                ..Reload::default()
            }
        );
    }

    #[test]
    fn name_default_and_validation() {
        let fx = Fx::new();
        let c = parse(Path::new("/etc/handover/web@1.toml"), MIN, &fx.env).unwrap();
        assert_eq!(c.name, "web@1");
        assert_eq!(fx.with_min("name = \"a-b_c.d@1\"").unwrap().name, "a-b_c.d@1");

        let e = fx.with_min("name = \"a/b\"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/handover/app.toml:1:8: name: '/' is not allowed; use letters, digits and . _ @ - (it is used in paths)"
        );
        assert_eq!(at(&fx.with_min("name = \"\"").unwrap_err()), (1, 8, "name"));
        let e = fx.with_min("name = \"..\"").unwrap_err();
        assert_eq!(e.message, "cannot be \"..\" (it is used in paths)");

        let e = parse(Path::new("/etc/handover/my app.toml"), MIN, &fx.env).unwrap_err();
        assert_eq!(at(&e), (0, 0, "name"));
        assert!(e.message.starts_with("not set, and the file stem \"my app\" cannot be used"));
        // Setting the name fixes it.
        let text = format!("name = \"app\"\n{MIN}");
        assert!(parse(Path::new("/etc/handover/my app.toml"), &text, &fx.env).is_ok());
    }

    #[test]
    fn control_socket_defaults() {
        let mut fx = Fx::new();
        let text = format!("name = \"shop\"\n{MIN}");
        // $RUNTIME_DIRECTORY wins, whatever else is set.
        fx.env.is_root = true;
        fx.env.xdg_runtime_dir = Some("/run/user/1000".into());
        assert_eq!(fx.ok(&text).control_socket, Path::new("/run/handover/app/control.sock"));
        // Root without it.
        fx.env.runtime_directory = None;
        assert_eq!(fx.ok(&text).control_socket, Path::new("/run/handover/shop/control.sock"));
        // Not root: $XDG_RUNTIME_DIR.
        fx.env.is_root = false;
        assert_eq!(fx.ok(&text).control_socket, Path::new("/run/user/1000/handover/shop/control.sock"));
        // Nothing applies.
        fx.env.xdg_runtime_dir = None;
        let e = fx.err(&text);
        assert_eq!(at(&e), (0, 0, "control_socket"));
        assert!(e.message.ends_with("; set control_socket"), "{e}");
        // Explicit: absolute as is, relative to the file's directory.
        let c = fx.with_min("control_socket = \"/tmp/x.sock\"").unwrap();
        assert_eq!(c.control_socket, Path::new("/tmp/x.sock"));
        let c = fx.with_min("control_socket = \"run/x.sock\"").unwrap();
        assert_eq!(c.control_socket, Path::new("/etc/handover/run/x.sock"));
        assert_eq!(at(&fx.with_min("control_socket = \"\"").unwrap_err()), (1, 18, "control_socket"));
        let long = format!("control_socket = \"/{}\"", "x".repeat(120));
        let e = fx.with_min(&long).unwrap_err();
        assert_eq!(at(&e), (1, 18, "control_socket"));
        assert!(e.message.contains("at most 107"), "{e}");
    }

    #[test]
    fn pidfile() {
        let fx = Fx::new();
        let c = fx.with_min("pidfile = \"app.pid\"").unwrap();
        assert_eq!(c.pidfile.as_deref(), Some(Path::new("/etc/handover/app.pid")));
        assert_eq!(at(&fx.with_min("pidfile = \"\"").unwrap_err()), (1, 11, "pidfile"));
    }

    #[test]
    fn metrics_textfile() {
        let fx = Fx::new();
        let dir = fx.dir.path().display().to_string();
        let with = |v: &str| fx.parse(&format!("{MIN}[metrics]\ntextfile = \"{v}\"\n"));
        assert_eq!(fx.ok(MIN).metrics.textfile, None);
        assert_eq!(fx.ok(&format!("{MIN}[metrics]\n")).metrics.textfile, None);
        let c = with(&format!("{dir}/app.prom")).unwrap();
        assert_eq!(c.metrics.textfile, Some(fx.dir.path().join("app.prom")));
        // Every error points at the value (line 4, column 12) and names the key.
        let err = |v: &str| {
            let e = with(v).unwrap_err();
            assert_eq!(at(&e), (4, 12, "metrics.textfile"), "{v}: {e}");
            e.message
        };
        assert!(err("").contains("must not be empty"));
        assert!(err(&format!("{dir}/")).contains("is a directory"));
        std::fs::create_dir(fx.dir.path().join("d.prom")).unwrap();
        assert!(err(&format!("{dir}/d.prom")).contains("is a directory"));
        assert!(err(&format!("{dir}/app.txt")).contains("NAME.prom"));
        assert!(err(&format!("{dir}/.prom")).contains("NAME.prom"));
        // A missing or unusable directory is the machine's state, not a config error: the
        // daemon starts and reloads anyway, and reports the failed writes (issue 19).
        let c = with(&format!("{dir}/no-such-dir/app.prom")).unwrap();
        assert_eq!(c.metrics.textfile, Some(fx.dir.path().join("no-such-dir/app.prom")));
        std::fs::write(fx.dir.path().join("file"), "").unwrap();
        assert!(with(&format!("{dir}/file/app.prom")).is_ok());
        // A relative path is relative to the config file's directory, as pidfile is.
        let file = fx.dir.path().join("app.toml");
        let text = format!("{MIN}[metrics]\ntextfile = \"app.prom\"\n");
        let c = parse(&file, &text, &fx.env).unwrap();
        assert_eq!(c.metrics.textfile, Some(fx.dir.path().join("app.prom")));
        let e = fx.err(&format!("{MIN}[metrics]\nfile = \"x.prom\"\n"));
        assert_eq!(e.key, "metrics.file", "{e}");
    }

    #[test]
    fn unknown_key_top_level() {
        let fx = Fx::new();
        let e = fx.err(&format!("name = \"x\"\nzzz = 1\n{MIN}"));
        assert_eq!(
            e.to_string(),
            "/etc/handover/app.toml:2:1: zzz: unknown key, expected one of `name`, \
             `control_socket`, `pidfile`, `listen`, `workers`, `reload`, `metrics`"
        );
    }

    #[test]
    fn unknown_key_in_workers() {
        let fx = Fx::new();
        let e = fx.err("[workers]\ncommand = [\"app\"]\n  cuont = 4\n");
        assert_eq!(at(&e), (3, 3, "workers.cuont"));
        assert!(e.message.starts_with("unknown key, expected one of `command`, `count`"));
        // Also when written inline or dotted.
        let e = fx.err("workers = { command = [\"app\"], x = 1 }\n");
        assert_eq!(at(&e), (1, 32, "workers.x"));
        let e = fx.err("workers.command = [\"app\"]\nworkers.y = 1\n");
        assert_eq!(at(&e), (2, 9, "workers.y"));
    }

    #[test]
    fn unknown_key_in_listen_entry() {
        let fx = Fx::new();
        let text = "[[listen]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n\n[[listen]]\n\
                    name = \"b\"\naddress = \"127.0.0.1:2\"\nbacklgo = 5\n";
        let e = fx.with_min(text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/handover/app.toml:8:1: listen[1].backlgo: unknown key, expected one of \
             `name`, `address`, `backlog`, `nodelay`"
        );
        // Unknown table inside [workers] too.
        let e = fx.err("[workers]\ncommand = [\"app\"]\n[workers.extra]\nx = 1\n");
        assert_eq!(at(&e), (3, 10, "workers.extra"));
    }

    #[test]
    fn syntax_error() {
        let fx = Fx::new();
        let e = fx.err("[workers]\ncommand = [\"app\"]\ncount = \n");
        assert_eq!(at(&e), (3, 9, "(syntax)"));
        assert_eq!(
            e.to_string(),
            "/etc/handover/app.toml:3:9: (syntax): string values must be quoted, expected literal string"
        );
        let e = fx.err("[workers]\ncommand = [\"app\"]\ncommand = [\"b\"]\n");
        assert_eq!(at(&e), (3, 1, "(syntax)"));
        assert_eq!(e.message, "duplicate key");
    }

    #[test]
    fn wrong_types() {
        let fx = Fx::new();
        let e = fx.err("[workers]\ncommand = [\"app\"]\ncount = \"four\"\n");
        assert_eq!(
            e.to_string(),
            "/etc/handover/app.toml:3:9: workers.count: invalid type: string \"four\", expected an integer"
        );
        let e = fx.err("workers = 3\n");
        assert_eq!(at(&e), (1, 11, "workers"));
        assert_eq!(e.message, "invalid type: integer `3`, expected a table");
        let e = fx.err("[workers]\ncommand = \"app\"\n");
        assert_eq!(at(&e), (2, 11, "workers.command"));
        assert_eq!(e.message, "invalid type: string \"app\", expected an array");
        let e = fx.err("[workers]\ncommand = [\"app\", 1]\n");
        assert_eq!(at(&e), (2, 19, "workers.command[1]"));
        let e = fx.with_min("listen = [{ name = \"a\", address = \"127.0.0.1:1\" }, { name = 1 }]").unwrap_err();
        assert_eq!(at(&e), (1, 61, "listen[1].name"));
        let e = fx.err("[workers]\ncommand = [\"app\"]\nenv = { A = 1 }\n");
        assert_eq!(at(&e), (3, 13, "workers.env.A"));
        let e = fx.err("[workers]\ncommand = [\"app\"]\ncount = 1.5\n");
        assert_eq!(e.message, "invalid type: floating point `1.5`, expected an integer");
        let e = fx.with_min("name = 3").unwrap_err();
        assert_eq!(at(&e), (1, 8, "name"));
        let e = fx.with_min("[listen]\nname = \"a\"").unwrap_err();
        assert_eq!(e.message, "invalid type: table, expected an array");
    }

    #[test]
    fn bad_duration_points_at_value() {
        let fx = Fx::new();
        let e = fx.err("[workers]\ncommand = [\"app\"]\nboot_timeout   =   \"30x\"\n");
        assert_eq!(
            e.to_string(),
            "/etc/handover/app.toml:3:20: workers.boot_timeout: unknown unit \"x\"; use us, ms, s, m, min or h"
        );
        let e = fx.err("[workers]\ncommand = [\"app\"]\nboot_timeout = 30\n");
        assert_eq!(at(&e), (3, 16, "workers.boot_timeout"));
        assert_eq!(e.message, "a duration is a string with a unit, e.g. \"30s\", not the number 30");
        let e = fx.err("[workers]\ncommand = [\"app\"]\nwatchdog = true\n");
        assert_eq!(at(&e), (3, 12, "workers.watchdog"));
        let e = fx.err("[workers]\ncommand = [\"app\"]\ngraceful_timeout = \"30\"\n");
        assert_eq!(e.message, "\"30\" has no unit; add a unit, e.g. \"30s\"");
        for key in ["boot_timeout", "graceful_timeout"] {
            let e = fx.err(&format!("{MIN}{key} = \"0s\"\n"));
            assert_eq!(e.key, format!("workers.{key}"));
            assert_eq!(e.message, "must be greater than 0");
        }
    }

    #[test]
    fn durations_have_upper_bounds() {
        let fx = Fx::new();
        // The bounds themselves are accepted...
        let w = fx
            .ok(&format!(
                "{MIN}boot_timeout = \"24h\"\ngraceful_timeout = \"1440m\"\nwatchdog = \"86400s\"\n\
                 ready = \"delay:24h\"\nmax_lifetime = \"168h\"\n"
            ))
            .workers;
        assert_eq!((w.boot_timeout, w.graceful_timeout, w.watchdog), (MAX_TIMEOUT, MAX_TIMEOUT, Some(MAX_TIMEOUT)));
        assert_eq!((w.ready, w.max_lifetime), (ReadyMode::Delay(MAX_TIMEOUT), Some(MAX_LIFETIME)));
        // ...one step past them is not, with the place and the key.
        for (key, bound) in
            [("boot_timeout", "24h"), ("graceful_timeout", "24h"), ("watchdog", "24h"), ("max_lifetime", "168h")]
        {
            let e = fx.err(&format!("{MIN}{key} = \"10000000000000000000s\"\n"));
            assert_eq!(at(&e), (3, key.len() + 4, format!("workers.{key}").as_str()));
            assert_eq!(e.message, format!("must be at most {bound}, not 10000000000000000000s"));
            let e = fx.err(&format!("{MIN}{key} = \"{bound} 1ms\"\n"));
            assert!(e.message.starts_with(&format!("must be at most {bound}, not ")), "{e}");
            let e = fx.err(&format!("{MIN}{key} = \"2562047788015216h\"\n"));
            assert!(e.message.starts_with(&format!("must be at most {bound}, not ")), "{e}");
        }
        let e = fx.err(&format!("{MIN}ready = \"delay:2562047788015216h\"\n"));
        assert_eq!(at(&e), (3, 9, "workers.ready"));
        assert_eq!(e.message, "in \"delay:2562047788015216h\": must be at most 24h, not 2562047788015216h");
    }

    #[test]
    fn optional_durations_and_memory() {
        let fx = Fx::new();
        let w = fx.ok(&format!("{MIN}watchdog = \"0\"\nmax_lifetime = \"0\"\nmax_memory = \"0\"\n")).workers;
        assert_eq!((w.watchdog, w.max_lifetime, w.max_memory), (None, None, None));
        let w = fx.ok(&format!("{MIN}watchdog = \"10s\"\nmax_lifetime = \"2h\"\nmax_memory = 1048576\n")).workers;
        assert_eq!(w.watchdog, Some(Duration::from_secs(10)));
        assert_eq!(w.max_lifetime, Some(Duration::from_secs(7200)));
        assert_eq!(w.max_memory, Some(1 << 20));
        assert_eq!(fx.ok(&format!("{MIN}max_memory = \"1GiB\"\n")).workers.max_memory, Some(1 << 30));
        assert_eq!(fx.ok(&format!("{MIN}max_memory = 0\n")).workers.max_memory, None);
        let e = fx.err(&format!("{MIN}max_memory = -1\n"));
        assert_eq!(at(&e), (3, 14, "workers.max_memory"));
        assert_eq!(e.message, "a size cannot be negative");
        let e = fx.err(&format!("{MIN}max_memory = \"lots\"\n"));
        assert_eq!(at(&e), (3, 14, "workers.max_memory"));
        let e = fx.err(&format!("{MIN}max_memory = 1.5\n"));
        assert_eq!(e.message, "invalid type: floating point `1.5`, expected a string or an integer");
    }

    #[test]
    fn missing_keys() {
        let fx = Fx::new();
        let e = fx.err("name = \"x\"\n\n[workers]\ncount = 2\n");
        assert_eq!(e.to_string(), "/etc/handover/app.toml:3:1: workers.command: required key is missing");
        let e = fx.err("name = \"x\"\n");
        assert_eq!(e.to_string(), "/etc/handover/app.toml:1:1: workers: the [workers] table is required");
        let e =
            fx.with_min("[[listen]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n[[listen]]\nname = \"b\"").unwrap_err();
        assert_eq!(at(&e), (4, 1, "listen[1].address"));
        let e = fx.with_min("[[listen]]\naddress = \"127.0.0.1:1\"").unwrap_err();
        assert_eq!(at(&e), (1, 1, "listen[0].name"));
    }

    #[test]
    fn command() {
        let fx = Fx::new();
        let e = fx.err("[workers]\ncommand = []\n");
        assert_eq!(at(&e), (2, 11, "workers.command"));
        assert!(e.message.starts_with("must not be empty"));
        let e = fx.err("[workers]\ncommand = [\"\"]\n");
        assert_eq!(e.message, "the program name (command[0]) is empty");
        let e = fx.err("[workers]\ncommand = [\"app\", \"a\\u0000b\"]\n");
        assert_eq!(at(&e), (2, 19, "workers.command"));
    }

    #[test]
    fn program_not_found() {
        let fx = Fx::new();
        let e = fx.err("[workers]\ncommand = [\"nope\", \"x\"]\n");
        assert_eq!(at(&e), (2, 12, "workers.command"));
        assert_eq!(e.message, format!("program \"nope\" not found in PATH ({})", fx.dir.path().join("bin").display()));
        let e = fx.err("[workers]\ncommand = [\"/nonexistent/app\"]\n");
        assert_eq!(at(&e), (2, 12, "workers.command"));
        assert!(e.message.starts_with("program \"/nonexistent/app\" (/nonexistent/app): "), "{e}");
        // Without PATH, systemd's default search path is used, never the process's.
        let mut fx = fx;
        fx.env.path = None;
        let e = fx.err("[workers]\ncommand = [\"app\"]\n");
        assert!(e.message.ends_with(&format!("not found in PATH ({DEFAULT_PATH})")), "{e}");
        assert_eq!(fx.ok("[workers]\ncommand = [\"sh\"]\n").workers.program.file_name(), Some(OsStr::new("sh")));
    }

    #[test]
    fn program_not_executable() {
        let fx = Fx::new();
        let e = fx.err("[workers]\ncommand = [\"noexec\"]\n");
        assert_eq!(at(&e), (2, 12, "workers.command"));
        assert_eq!(
            e.message,
            format!("program \"noexec\" found at {} but it is not executable", fx.bin("noexec").display())
        );
        let p = fx.bin("noexec");
        let e = fx.err(&format!("[workers]\ncommand = [\"{}\"]\n", p.display()));
        assert_eq!(e.message, format!("program \"{0}\" ({0}) is not executable", p.display()));
        let e = fx.err(&format!("[workers]\ncommand = [\"{}\"]\n", fx.dir.path().display()));
        assert!(e.message.ends_with("is not a regular file"), "{e}");
        // A non-executable file earlier in PATH is skipped, as execvp does.
        let mut fx = fx;
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("app"), "").unwrap();
        let path = std::env::join_paths([other.path(), &fx.dir.path().join("bin")]).unwrap();
        fx.env.path = Some(path);
        assert_eq!(fx.ok(MIN).workers.program, fx.bin("app"));
    }

    #[test]
    fn relative_program() {
        let fx = Fx::new();
        let dir = fx.dir.path();
        // Relative to the config file's directory...
        let file = dir.join("app.toml");
        let c = parse(&file, "[workers]\ncommand = [\"bin/app\"]\n", &fx.env).unwrap();
        assert_eq!(c.workers.program, dir.join("bin/app"));
        // ...or to working_directory when set.
        let text = format!("[workers]\ncommand = [\"./app\"]\nworking_directory = \"{}\"\n", dir.join("bin").display());
        let c = parse(Path::new(FILE), &text, &fx.env).unwrap();
        assert_eq!(c.workers.program, dir.join("bin/./app"));
        assert_eq!(c.workers.command[0], "./app");
    }

    #[test]
    fn working_directory() {
        let fx = Fx::new();
        let e = fx.err(&format!("{MIN}working_directory = \"srv\"\n"));
        assert_eq!(at(&e), (3, 21, "workers.working_directory"));
        assert_eq!(e.message, "must be an absolute path, not \"srv\"");
        let e = fx.err(&format!("{MIN}working_directory = \"/nonexistent\"\n"));
        assert!(e.message.starts_with("/nonexistent: "), "{e}");
        let e = fx.err(&format!("{MIN}working_directory = \"{}\"\n", fx.bin("app").display()));
        assert!(e.message.ends_with("is not a directory"), "{e}");
    }

    #[test]
    fn listen_addresses() {
        let fx = Fx::new();
        let one = |addr: &str| fx.with_min(&format!("[[listen]]\nname = \"a\"\naddress = \"{addr}\""));
        assert_eq!(one("0.0.0.0:80").unwrap().listen[0].address, ListenAddress::Tcp("0.0.0.0:80".parse().unwrap()));
        let e = one("localhost:8000").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/handover/app.toml:3:11: listen[0].address: cannot parse \"localhost:8000\"; \
             expected IP:PORT (\"127.0.0.1:8000\", \"[::]:8000\") or \"unix:/absolute/path\""
        );
        assert_eq!(at(&one("8000").unwrap_err()), (3, 11, "listen[0].address"));
        assert_eq!(at(&one("::1:80").unwrap_err()), (3, 11, "listen[0].address"));
        let e = one("unix:run/app.sock").unwrap_err();
        assert_eq!(at(&e), (3, 11, "listen[0].address"));
        assert!(e.message.starts_with("the unix socket path must be absolute"));
        assert!(one("unix:").is_err());
        let e = one(&format!("unix:/{}", "x".repeat(107))).unwrap_err();
        assert!(e.message.contains("at most 107"));
    }

    #[test]
    fn listen_names_and_backlog() {
        let fx = Fx::new();
        let one = |name: &str| fx.with_min(&format!("[[listen]]\nname = \"{name}\"\naddress = \"127.0.0.1:1\""));
        assert!(one("http-2 x").is_ok());
        for (bad, why) in [
            ("", "must not be empty"),
            ("a:b", "must not contain ':' (it separates names in LISTEN_FDNAMES)"),
            ("caf\u{e9}", "must be ASCII (it is a systemd FDNAME)"),
            ("a\\tb", "must not contain control characters"),
        ] {
            let e = one(bad).unwrap_err();
            assert_eq!((at(&e), e.message.as_str()), ((2, 8, "listen[0].name"), why));
        }
        assert!(one(&"n".repeat(255)).is_ok());
        assert!(one(&"n".repeat(256)).unwrap_err().message.contains("at most 255"));

        let backlog =
            |b: &str| fx.with_min(&format!("[[listen]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nbacklog = {b}"));
        assert_eq!(backlog("65535").unwrap().listen[0].backlog, 65535);
        let e = backlog("0").unwrap_err();
        assert_eq!(at(&e), (4, 11, "listen[0].backlog"));
        assert_eq!(e.message, "must be between 1 and 65535, not 0");
        assert!(backlog("65536").is_err());
    }

    #[test]
    fn duplicate_listen() {
        let fx = Fx::new();
        let text = "[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:1\"\n\
                    [[listen]]\nname = \"other\"\naddress = \"127.0.0.1:2\"\n\
                    [[listen]]\nname = \"http\"\naddress = \"127.0.0.1:3\"\n";
        let e = fx.with_min(text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/handover/app.toml:8:8: listen[2].name: duplicate name \"http\" (also listen[0])"
        );
        let text = "[[listen]]\nname = \"a\"\naddress = \"unix:/run/a.sock\"\n\
                    [[listen]]\nname = \"b\"\naddress = \"unix:/run/a.sock\"\n";
        let e = fx.with_min(text).unwrap_err();
        assert_eq!(at(&e), (6, 11, "listen[1].address"));
        assert_eq!(e.message, "duplicate address unix:/run/a.sock (also listen[0])");
    }

    #[test]
    fn count() {
        let fx = Fx::new();
        let count = |n: &str| fx.parse(&format!("{MIN}count = {n}\n"));
        assert_eq!(count("4096").unwrap().workers.count, 4096);
        let e = count("0").unwrap_err();
        assert_eq!(e.to_string(), "/etc/handover/app.toml:3:9: workers.count: must be between 1 and 4096, not 0");
        assert!(count("4097").is_err());
        assert!(count("-1").is_err());
    }

    #[test]
    fn env() {
        let fx = Fx::new();
        let e = fx.err(&format!("{MIN}env = {{ APP = \"1\", LISTEN_FDS = \"3\" }}\n"));
        assert_eq!(
            e.to_string(),
            "/etc/handover/app.toml:3:20: workers.env.LISTEN_FDS: LISTEN_FDS is set by handover \
             for each worker and cannot be overridden"
        );
        for reserved in RESERVED_ENV {
            let e = fx.err(&format!("{MIN}[workers.env]\n{reserved} = \"x\"\n"));
            assert_eq!(at(&e), (4, 1, format!("workers.env.{reserved}").as_str()));
        }
        let e = fx.err(&format!("{MIN}env = {{ \"A=B\" = \"1\" }}\n"));
        assert_eq!(at(&e), (3, 9, "workers.env.A=B"));
        assert_eq!(e.message, "the variable name must not contain '='");
        let e = fx.err(&format!("{MIN}env = {{ \"\" = \"1\" }}\n"));
        assert_eq!(e.message, "the variable name must not be empty");
        let e = fx.err(&format!("{MIN}env = {{ A = \"\\u0000\" }}\n"));
        assert_eq!(at(&e), (3, 13, "workers.env.A"));
    }

    #[test]
    fn ready() {
        let fx = Fx::new();
        let ready = |r: &str| fx.parse(&format!("{MIN}ready = \"{r}\"\n")).map(|c| c.workers.ready);
        assert_eq!(ready("notify"), Ok(ReadyMode::Notify));
        assert_eq!(ready("spawn"), Ok(ReadyMode::Spawn));
        assert_eq!(ready("delay:500ms"), Ok(ReadyMode::Delay(Duration::from_millis(500))));
        let e = ready("Notify").unwrap_err();
        assert_eq!(at(&e), (3, 9, "workers.ready"));
        assert!(e.message.starts_with("expected \"notify\", \"spawn\" or \"delay:<duration>\""));
        let e = ready("delay:2").unwrap_err();
        assert_eq!(e.message, "in \"delay:2\": \"2\" has no unit; add a unit, e.g. \"30s\"");
    }

    #[test]
    fn stop_signal() {
        let fx = Fx::new();
        let sig = |s: &str| fx.parse(&format!("{MIN}stop_signal = {s}\n")).map(|c| c.workers.stop_signal);
        assert_eq!(sig("\"SIGQUIT\""), Ok(libc::SIGQUIT));
        assert_eq!(sig("\"int\""), Ok(libc::SIGINT));
        assert_eq!(sig("\"10\""), Ok(10));
        assert_eq!(sig("3"), Ok(3));
        let e = sig("\"SIGKILL\"").unwrap_err();
        assert_eq!(at(&e), (3, 15, "workers.stop_signal"));
        assert_eq!(e.message, "SIGKILL cannot be caught, so no worker could drain on it; use e.g. SIGTERM");
        assert!(sig("\"STOP\"").unwrap_err().message.starts_with("SIGSTOP cannot be caught"));
        assert!(sig("9").is_err());
        assert!(sig("\"SIGBOGUS\"").unwrap_err().message.starts_with("unknown signal"));
        assert!(sig("0").unwrap_err().message.contains("out of range"));
    }

    #[test]
    fn min_healthy_time_defaults_by_ready_mode_and_is_bounded() {
        let fx = Fx::new();
        let mht = |extra: &str| fx.parse(&format!("{MIN}{extra}")).map(|c| c.reload.min_healthy_time);
        // The worker says when it serves: no window unless asked for.
        assert_eq!(mht(""), Ok(Duration::ZERO));
        // handover only guesses readiness: a window by default.
        assert_eq!(mht("ready = \"spawn\"\n"), Ok(Duration::from_secs(5)));
        assert_eq!(mht("ready = \"delay:2s\"\n[reload]\n"), Ok(Duration::from_secs(5)));
        assert_eq!(mht("ready = \"spawn\"\n[reload]\nmin_healthy_time = \"0\"\n"), Ok(Duration::ZERO));
        assert_eq!(mht("[reload]\nmin_healthy_time = \"10s\"\n"), Ok(Duration::from_secs(10)));
        let e = mht("[reload]\nmin_healthy_time = \"2h\"\n").unwrap_err();
        assert_eq!(at(&e), (4, 20, "reload.min_healthy_time"));
        assert_eq!(e.message, "must be at most 1h, not 2h");
        let e = mht("[reload]\nmin_healthy_time = 5\n").unwrap_err();
        assert_eq!(at(&e), (4, 20, "reload.min_healthy_time"));
    }

    #[test]
    fn reload() {
        let fx = Fx::new();
        let c = fx.ok(&format!("{MIN}count = 2\n[reload]\nstrategy = \"rolling\"\nmax_surge = 8\n"));
        assert_eq!(
            c.reload,
            Reload {
                strategy: Strategy::Rolling,
                max_surge: 8,
                min_healthy_time: Duration::ZERO,
                boot_priority: BootPriority::Low,
                ..Reload::default()
            }
        );
        let c = fx.ok(&format!("{MIN}[reload]\nboot_priority = \"normal\"\n"));
        assert_eq!(c.reload.boot_priority, BootPriority::Normal);
        let e = fx.err(&format!("{MIN}[reload]\nboot_priority = \"idle\"\n"));
        assert_eq!(at(&e), (4, 17, "reload.boot_priority"));
        let e = fx.err(&format!("{MIN}[reload]\nstrategy = \"blue-green\"\n"));
        assert_eq!(at(&e), (4, 12, "reload.strategy"));
        assert_eq!(e.message, "expected \"all-at-once\" or \"rolling\", not \"blue-green\"");
        let e = fx.err(&format!("{MIN}[reload]\nmax_surge = 0\n"));
        assert_eq!(at(&e), (4, 13, "reload.max_surge"));
        assert_eq!(e.message, "must be at least 1, not 0");
        let e = fx.err(&format!("{MIN}[reload]\nmax_sruge = 2\n"));
        assert_eq!(at(&e), (4, 1, "reload.max_sruge"));
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é = 1\nx", 3), (1, 3));
        assert_eq!(line_col("ab", 99), (1, 3));
        let fx = Fx::new();
        let e = fx.err(&format!("name = \"x\" # é\n\"é\" = 1\n{MIN}"));
        assert_eq!(at(&e), (2, 1, "é"));
    }

    fn write_config(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("site.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn control_socket_of_is_lenient() {
        let fx = Fx::new();
        let broken = "bogus = 1\n[workers]\ncount = \"four\"\nnope = true\n";
        let p = write_config(fx.dir.path(), broken);
        assert_eq!(control_socket_of(&p, &fx.env).unwrap().control_socket, Path::new("/run/handover/app/control.sock"));
        let mut env = fx.env.clone();
        env.runtime_directory = None;
        env.is_root = true;
        // The default uses the file stem, or `name` when set.
        assert_eq!(control_socket_of(&p, &env).unwrap().control_socket, Path::new("/run/handover/site/control.sock"));
        let p = write_config(fx.dir.path(), &format!("name = \"shop\"\n{broken}"));
        assert_eq!(control_socket_of(&p, &env).unwrap().control_socket, Path::new("/run/handover/shop/control.sock"));
        // An explicit socket, relative to the file's directory.
        let p = write_config(fx.dir.path(), &format!("control_socket = \"c.sock\"\n{broken}"));
        assert_eq!(control_socket_of(&p, &env).unwrap().control_socket, fx.dir.path().join("c.sock"));
        // The same answer as a full parse gives.
        let p = write_config(fx.dir.path(), &format!("name = \"shop\"\n{MIN}"));
        for e in [&fx.env, &env] {
            assert_eq!(
                control_socket_of(&p, e).unwrap().control_socket,
                super::super::load(&p, e).unwrap().control_socket
            );
        }
    }

    #[test]
    fn control_socket_of_errors() {
        let fx = Fx::new();
        // A `name` of the wrong type is passed over (the stem stands in) and reported.
        let p = write_config(fx.dir.path(), "name = 3\n");
        let v = control_socket_of(&p, &fx.env).unwrap();
        assert_eq!(v.control_socket, fx.env.runtime_directory.clone().unwrap().join("control.sock"));
        let e = v.skipped.unwrap();
        assert_eq!(e.to_string(), format!("{}:1:8: name: invalid type: integer, expected a string", p.display()));
        let p = write_config(fx.dir.path(), "\ncontrol_socket = [\"a\"]\n");
        assert_eq!(at(&control_socket_of(&p, &fx.env).unwrap_err()), (2, 18, "control_socket"));
        // A file that does not parse: the socket is still found, the syntax error reported.
        let p = write_config(fx.dir.path(), "name = \"x\n");
        assert_eq!(control_socket_of(&p, &fx.env).unwrap().skipped.unwrap().key, "(syntax)");
        let e = control_socket_of(&fx.dir.path().join("missing.toml"), &fx.env).unwrap_err();
        assert_eq!(at(&e), (0, 0, "(file)"));
        assert!(e.message.starts_with("cannot read: "));
        let mut env = fx.env.clone();
        env.runtime_directory = None;
        let p = write_config(fx.dir.path(), "");
        assert_eq!(at(&control_socket_of(&p, &env).unwrap_err()), (0, 0, "control_socket"));
    }

    #[test]
    fn control_socket_of_reads_a_file_that_does_not_parse() {
        let fx = Fx::new();
        let mut env = fx.env.clone();
        env.runtime_directory = None;
        env.is_root = true;
        let broken = "[workers]\ncommand = [\"app\"\ncount = \n";
        // The keys from their lines: basic and literal strings, comments after them.
        let p = write_config(fx.dir.path(), &format!("name = \"shop\"  # the shop\n{broken}"));
        let v = control_socket_of(&p, &env).unwrap();
        assert_eq!(v.control_socket, Path::new("/run/handover/shop/control.sock"));
        assert_eq!(v.skipped.unwrap().key, "(syntax)");
        let p = write_config(fx.dir.path(), &format!("  control_socket = 'c.sock'\nname = \"shop\"\n{broken}"));
        assert_eq!(control_socket_of(&p, &env).unwrap().control_socket, fx.dir.path().join("c.sock"));
        // Keys inside a table are not top-level; escapes are not guessed at: the stem applies.
        let p = write_config(fx.dir.path(), &format!("{broken}name = \"shop\"\n"));
        assert_eq!(control_socket_of(&p, &env).unwrap().control_socket, Path::new("/run/handover/site/control.sock"));
        let p = write_config(fx.dir.path(), &format!("name = \"sh\\u006fp\"\n{broken}"));
        assert_eq!(control_socket_of(&p, &env).unwrap().control_socket, Path::new("/run/handover/site/control.sock"));
        // An empty control_socket found this way is still an error, at its place.
        let p = write_config(fx.dir.path(), &format!("\ncontrol_socket = \"\"\n{broken}"));
        assert_eq!(at(&control_socket_of(&p, &env).unwrap_err()), (2, 18, "control_socket"));
    }

    #[test]
    fn load_reads_the_file() {
        let fx = Fx::new();
        let p = write_config(fx.dir.path(), MIN);
        let c = super::super::load(&p, &fx.env).unwrap();
        assert_eq!(c.path, p);
        assert_eq!(c.name, "site");
        let e = super::super::load(&fx.dir.path().join("nope.toml"), &fx.env).unwrap_err();
        assert_eq!(at(&e), (0, 0, "(file)"));
    }

    #[test]
    fn only_a_regular_file_of_at_most_1_mib_is_read() {
        let fx = Fx::new();
        let dir = fx.dir.path();
        let load = |p: &Path| super::super::load(p, &fx.env);
        let refused = |p: &Path, why: &str| {
            let started = std::time::Instant::now();
            let e = load(p).unwrap_err();
            assert_eq!(at(&e), (0, 0, "(file)"), "{e}");
            assert!(e.message.contains(why), "{}: expected {why:?} in {e}", p.display());
            // The same check guards the client's lenient read.
            assert_eq!(control_socket_of(p, &fx.env).unwrap_err().message, e.message);
            started.elapsed()
        };
        let fifo = dir.join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        refused(&fifo, "it is a FIFO (named pipe), not a regular file");
        let zero = dir.join("zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        refused(&zero, "it is a character device, not a regular file");
        let sub = dir.join("dir.toml");
        std::fs::create_dir(&sub).unwrap();
        refused(&sub, "it is a directory, not a regular file");
        let sock = dir.join("sock.toml");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        refused(&sock, "it is a socket, not a regular file");

        // 1 MiB is read; one byte more is not (a sparse file: no disk is spent).
        let big = dir.join("big.toml");
        let mut text = MIN.to_string();
        let filler = "# padding\n";
        while text.len() + filler.len() <= MAX_CONFIG_BYTES as usize {
            text.push_str(filler);
        }
        text.push_str(&"#".repeat(MAX_CONFIG_BYTES as usize - text.len()));
        std::fs::write(&big, &text).unwrap();
        assert_eq!(load(&big).unwrap().workers.count, 1);
        let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
        f.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        refused(&big, "the file is 1048577 bytes; a config file can have at most 1048576 bytes (1 MiB)");
        f.set_len(50 << 20).unwrap();
        refused(&big, "the file is 52428800 bytes");

        let latin1 = write_config(dir, "name = \"caf\u{e9}\"\n");
        std::fs::write(&latin1, b"name = \"caf\xe9\"\n").unwrap();
        refused(&latin1, "not UTF-8 (invalid byte at offset 11)");
    }
}
