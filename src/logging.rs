//! Logging: natively to journald with structured fields when stderr is the journal
//! (`$JOURNAL_STREAM` names stderr's device:inode, see systemd.exec(5)), otherwise plain
//! lines on stderr.
//!
//! Fields (journald, uppercased by tracing-journald): `HANDOVER_EVENT`,
//! `HANDOVER_GENERATION`, `HANDOVER_WORKER_SLOT`, `HANDOVER_WORKER_PID`, `HANDOVER_NAME`,
//! `HANDOVER_MONOTONIC_USEC`. Query them with `journalctl -u app HANDOVER_EVENT=reload-failed`.
//! `HANDOVER_MONOTONIC_USEC` is `CLOCK_MONOTONIC` when the line was logged: the journal's own
//! timestamps say when the writer thread wrote it, which may come after what the daemon did
//! next (systemd's "Reloaded" may be stamped before handover's "reload succeeded").
//!
//! # Never blocking the event loop
//! A log line is written at once only where that cannot block (stderr with room for it, and
//! nothing queued before it); otherwise it is handed to a writer thread through a bounded
//! queue ([`QUEUE_LINES`]), and only that thread writes to the journal's socket. A reader
//! that stops reading (a full pipe, a stuck journald, a FIFO nobody reads) then blocks the
//! writer thread, never the event loop: status, reloads, reaping and systemd's watchdog go on,
//! lines that do not fit in the queue are dropped, and the next line written says how many
//! ("N log lines dropped"). Before the process execs (`handover upgrade`) or exits, [`flush`]
//! waits a bounded time for the queue to empty.
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::machine::{Level, LogRecord};
use crate::systemd::notify::monotonic_usec;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// journald's native protocol.
    Journal,
    /// Human-readable lines on stderr.
    Stderr,
}

/// How many log lines may wait for the writer thread; more are dropped and counted.
pub const QUEUE_LINES: usize = 4096;

/// The queue to the writer thread, once [`init`] started it.
static WRITER: OnceLock<Writer> = OnceLock::new();

/// The sending side of the writer thread's queue.
struct Writer {
    /// Where lines go: on stderr a line may be written at once (see `record`).
    destination: Destination,
    /// Records with the `CLOCK_MONOTONIC` µs they were logged at.
    queue: SyncSender<(LogRecord, u64)>,
    /// Lines dropped because the queue was full, not yet reported.
    dropped: Arc<AtomicU64>,
    /// Lines queued and not yet written; the writer signals `written` as it writes them.
    pending: Arc<(Mutex<usize>, Condvar)>,
}

/// Installs the global subscriber for the daemon (`name` goes into `HANDOVER_NAME`) and
/// starts the writer thread. Safe to call more than once (later calls do nothing).
pub fn init(name: &str) -> Destination {
    let destination = install(name);
    start_writer(destination);
    destination
}

fn install(name: &str) -> Destination {
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

fn start_writer(destination: Destination) {
    if WRITER.get().is_some() {
        return;
    }
    let (queue, lines) = sync_channel::<(LogRecord, u64)>(QUEUE_LINES);
    let dropped = Arc::new(AtomicU64::new(0));
    let pending = Arc::new((Mutex::new(0usize), Condvar::new()));
    let (thread_dropped, thread_pending) = (dropped.clone(), pending.clone());
    let spawned = std::thread::Builder::new().name("handover-log".into()).spawn(move || {
        for (line, logged_at) in lines {
            report_dropped(&thread_dropped);
            emit(&line, logged_at);
            let (count, written) = &*thread_pending;
            let mut count = count.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            *count = count.saturating_sub(1);
            if *count == 0 {
                written.notify_all();
            }
        }
    });
    // Without the thread (it could not be started), lines are written where they are logged.
    if spawned.is_ok() {
        let _ = WRITER.set(Writer { destination, queue, dropped, pending });
    }
}

/// Says how many lines were dropped since the last time, if any were.
fn report_dropped(dropped: &AtomicU64) {
    let lost = dropped.swap(0, Ordering::Relaxed);
    if lost > 0 {
        let message = format!("{lost} log lines dropped: stderr or the journal did not keep up");
        let record =
            LogRecord { level: Level::Warn, event: "log-dropped", message, generation: None, slot: None, pid: None };
        emit(&record, monotonic_usec());
    }
}

/// The longest message written directly by [`record`]: with the prefix, well under
/// PIPE_BUF (4096), which a pipe that polls writable takes whole.
const DIRECT_LINE_MAX: usize = 3072;

/// Whether stderr can take a line now without blocking (poll(2) with no wait).
fn stderr_has_room() -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let stderr = std::io::stderr();
    let mut fds = [PollFd::new(stderr.as_fd(), PollFlags::POLLOUT)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1))
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLOUT) && !r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
}

/// Waits until every queued line was written, at most `timeout` (a reader that stopped
/// reading must not hold up an exit or an exec for long). Returns whether the queue emptied.
pub fn flush(timeout: Duration) -> bool {
    let Some(writer) = WRITER.get() else { return true };
    let deadline = Instant::now() + timeout;
    let (count, written) = &*writer.pending;
    let mut count = count.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    while *count > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        count = match written.wait_timeout(count, left) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
    true
}

/// Logs one record from the supervisor with its structured fields: queued for the writer
/// thread (dropped and counted when the queue is full), or written here before [`init`].
pub fn record(r: &LogRecord) {
    let logged_at = monotonic_usec();
    let Some(writer) = WRITER.get() else { return emit(r, logged_at) };
    let (count, _) = &*writer.pending;
    let mut count = count.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    // Written here and now when that cannot block: nothing queued before it (the order
    // stays), stderr (not the journal's socket, which only the writer thread touches), and
    // room for the line in it (a file always has; a pipe has when poll says so, and a line
    // shorter than PIPE_BUF is then written whole). So a line is in the log before the
    // daemon answers the request that caused it, as long as stderr keeps up. The lock is
    // held meanwhile: no line is queued behind this one's back.
    if *count == 0
        && writer.destination == Destination::Stderr
        && r.message.len() < DIRECT_LINE_MAX
        && stderr_has_room()
    {
        report_dropped(&writer.dropped);
        return emit(r, logged_at);
    }
    match writer.queue.try_send((r.clone(), logged_at)) {
        Ok(()) => *count += 1,
        Err(TrySendError::Full(_)) => {
            writer.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Err(TrySendError::Disconnected(_)) => {
            drop(count);
            emit(r, logged_at);
        }
    }
}

/// Writes one record, logged at `logged_at` (`CLOCK_MONOTONIC` µs), to the installed
/// subscriber (journald or stderr), blocking.
fn emit(r: &LogRecord, logged_at: u64) {
    macro_rules! emit {
        ($lvl:expr) => {
            tracing::event!(
                target: "handover",
                $lvl,
                handover_event = r.event,
                handover_generation = r.generation,
                handover_worker_slot = r.slot.map(|s| s as u64),
                handover_worker_pid = r.pid.map(|p| p as i64),
                handover_monotonic_usec = logged_at,
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
