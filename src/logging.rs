//! Logging: natively to journald with structured fields when stderr is the journal
//! (`$JOURNAL_STREAM` names stderr's device:inode, see systemd.exec(5)), otherwise plain
//! lines on stderr.
//!
//! Fields (journald, uppercased by tracing-journald): `HANDOVER_EVENT`,
//! `HANDOVER_GENERATION`, `HANDOVER_WORKER_SLOT`, `HANDOVER_WORKER_PID`, `HANDOVER_NAME`.
//! Query them with `journalctl -u app HANDOVER_EVENT=reload-failed`.
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::AsFd;

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::supervisor::machine::{Level, LogRecord};

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// journald's native protocol.
    Journal,
    /// Human-readable lines on stderr.
    Stderr,
}

/// Installs the global subscriber for the daemon (`name` goes into `HANDOVER_NAME`).
/// Safe to call more than once (later calls do nothing).
pub fn init(name: &str) -> Destination {
    if stderr_is_journal() {
        if let Ok(layer) = tracing_journald::layer() {
            let layer = layer
                .with_field_prefix(None)
                .with_syslog_identifier("handover".into())
                .with_priority_mappings(tracing_journald::PriorityMappings {
                    info: tracing_journald::Priority::Informational,
                    debug: tracing_journald::Priority::Debug,
                    ..tracing_journald::PriorityMappings::new()
                })
                .with_custom_fields([("HANDOVER_NAME", name)]);
            if tracing_subscriber::registry().with(layer).try_init().is_ok() {
                return Destination::Journal;
            }
        }
    }
    let _ = tracing_subscriber::registry().with(StderrLines { name: name.to_string() }).try_init();
    Destination::Stderr
}

/// Logs one record from the supervisor with its structured fields.
pub fn record(r: &LogRecord) {
    macro_rules! emit {
        ($lvl:expr) => {
            tracing::event!(
                target: "handover",
                $lvl,
                handover_event = r.event,
                handover_generation = r.generation,
                handover_worker_slot = r.slot.map(|s| s as u64),
                handover_worker_pid = r.pid.map(|p| p as i64),
                "{}",
                r.message
            )
        };
    }
    match r.level {
        Level::Error => emit!(tracing::Level::ERROR),
        Level::Warn => emit!(tracing::Level::WARN),
        Level::Info => emit!(tracing::Level::INFO),
        Level::Debug => emit!(tracing::Level::DEBUG),
    }
}

/// Logs a line without supervisor context (startup, sockets, control).
pub fn event(level: Level, event: &'static str, message: impl Into<String>) {
    record(&LogRecord { level, event, message: message.into(), generation: None, slot: None, pid: None });
}

/// Whether `$JOURNAL_STREAM` (`dev:inode`) is our stderr.
/// Whether stderr is connected to journald (`$JOURNAL_STREAM` names its device and inode),
/// as it is for a service whose output goes to the journal.
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    match nix::sys::stat::fstat(std::io::stderr().as_fd()) {
        #[allow(clippy::unnecessary_cast)] // st_dev/st_ino are not u64 on every target
        Ok(st) => st.st_dev as u64 == dev && st.st_ino as u64 == ino,
        Err(_) => false,
    }
}

/// `handover[app]: WARN message` lines on stderr; debug records are dropped unless
/// `HANDOVER_DEBUG` is set.
struct StderrLines {
    name: String,
}

impl<S: tracing::Subscriber> Layer<S> for StderrLines {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level == tracing::Level::DEBUG && std::env::var_os("HANDOVER_DEBUG").is_none() {
            return;
        }
        if level == tracing::Level::TRACE {
            return;
        }
        let mut message = MessageOnly(String::new());
        event.record(&mut message);
        let tag = match level {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            _ => "",
        };
        let line = format!("handover[{}]: {tag}{}\n", self.name, message.0);
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

struct MessageOnly(String);

impl Visit for MessageOnly {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}
