//! The vocabulary of the supervisor: what goes into the state machine ([`Event`]) and what
//! comes out of it ([`Effect`]), with the small types they carry. Nothing here does anything;
//! [`super`] (the machine) decides, [`crate::supervisor`] (the executor) acts.
use std::sync::Arc;
use std::time::Duration;

use super::Reply;
use crate::config::Config;

/// A process id.
pub type Pid = i32;

/// Identifies one control request waiting for an answer (assigned by the executor).
pub type RequestId = u64;

/// Identifies one worker process over its life (unique per daemon run, never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(pub u64);

/// What a worker said on handover's NOTIFY_SOCKET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerMessage {
    /// `READY=1`: it serves.
    Ready,
    /// `STATUS=...`: free text, shown in `handover status`.
    Status(String),
    /// `STOPPING=1`: it is shutting down by itself.
    Stopping,
    /// `WATCHDOG=1`: alive; arms the watchdog on first use.
    Watchdog,
    /// `WATCHDOG=trigger`: it asks to be treated as hung.
    WatchdogTrigger,
    /// `X_HANDOVER_REQUESTS=` / `X_HANDOVER_ERRORS=`: the requests it answered and how many
    /// of them failed, each cumulative since it started (SPEC §4); a count the datagram
    /// left out keeps its last value.
    Outcomes {
        /// Requests answered.
        requests: Option<u64>,
        /// Of those, failed (what the app counts as an error; by default a 5xx answer).
        errors: Option<u64>,
    },
}

/// What `handover scale` / SIGTTIN / SIGTTOU ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleTo {
    /// An absolute worker count.
    Count(usize),
    /// One more (+1, SIGTTIN) or one less (-1, SIGTTOU).
    Delta(i64),
}

/// An input to the state machine.
#[derive(Debug, Clone)]
pub enum Event {
    /// The executor carried out [`Effect::Spawn`]: the worker runs with this pid.
    Spawned {
        /// The worker from the effect.
        worker: WorkerId,
        /// Its pid, also its process group id.
        pid: Pid,
    },
    /// The executor could not spawn the worker (fork or exec failed).
    SpawnFailed {
        /// The worker from the effect.
        worker: WorkerId,
        /// Why, for the log and the reload reply.
        error: String,
    },
    /// A child was reaped.
    Exited {
        /// Its pid.
        pid: Pid,
        /// How it ended, in words ("exit code 3", "killed by SIGKILL").
        status: String,
    },
    /// A datagram arrived on handover's NOTIFY_SOCKET.
    Message {
        /// The sender's pid (SCM_CREDENTIALS).
        sender: Pid,
        /// The sender's process group, when it could be read: a worker's children count as
        /// the worker.
        sender_pgid: Option<Pid>,
        /// What it said.
        message: WorkerMessage,
    },
    /// The resident memory of a worker's process group, sampled by the executor.
    MemoryUsage {
        /// The worker's pid.
        pid: Pid,
        /// RSS of the worker and its process group, in bytes.
        rss_bytes: u64,
    },
    /// A reload was asked for (control socket, SIGHUP). The executor has re-read the file.
    ReloadRequested {
        /// The new config, or why it is invalid.
        config: Result<Arc<Config>, String>,
        /// The control request to answer, if any (None for signals).
        requester: Option<RequestId>,
    },
    /// A change of the worker count was asked for.
    ScaleRequested {
        /// The new count.
        to: ScaleTo,
        /// The control request to answer, if any.
        requester: Option<RequestId>,
    },
    /// SIGTERM (graceful) or SIGINT (fast).
    StopRequested {
        /// Fast: SIGKILL every worker's process group at once.
        fast: bool,
    },
    /// Time passed: deadlines may have been reached.
    Tick,
    /// How many client connections workers that are due to be SIGKILLed at their
    /// graceful_timeout still hold, sampled by the executor right before the step that kills
    /// them (see [`crate::machine::Machine::kills_due`]): the kill's log line names the
    /// count. Plain data, valid for the step it arrives in only; also a tick (every step
    /// checks the deadlines).
    OpenConnections {
        /// (worker pid, open client connections), for the workers about to be killed whose
        /// connections could be read.
        counts: Vec<(Pid, usize)>,
    },
    /// The event loop ran again after a stall (SIGSTOP, a frozen cgroup, a host that
    /// paused): it woke `stalled` later than its earliest deadline. What workers sent in
    /// the meantime is still queued unread, so verdicts on their messages (boot_timeout,
    /// watchdog) are held for a short while (see [`crate::machine::policy::stall_hold`]).
    Resumed {
        /// How much later than its deadline the loop woke.
        stalled: Duration,
    },
    /// `handover rollback` (control request): a reload to the release of the last
    /// generation that served before the active one ([`crate::machine::Machine::rollback_target`]).
    RollbackRequested {
        /// The control request to answer, if any.
        requester: Option<RequestId>,
        /// Why the target's release cannot run any more (its program or directory was
        /// removed), as the executor found when it checked; None: it is there.
        release_gone: Option<String>,
        /// Asked by the machine itself ([`Effect::RollbackDue`]): why the watched
        /// generation failed its watch.
        automatic: Option<String>,
    },
    /// The listening sockets' accept queues, read by the executor while a reload runs: the
    /// reload's peak goes into its result line and `handover status`.
    AcceptQueues {
        /// One reading per socket whose queue the kernel tells.
        samples: Vec<QueueSample>,
    },
}

/// The accept queue of one listening socket at one moment (see [`Event::AcceptQueues`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSample {
    /// The socket's name (LISTEN_FDNAMES).
    pub socket: String,
    /// Connections waiting to be accepted.
    pub length: u32,
}

/// A message for systemd's NOTIFY_SOCKET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemdMessage {
    /// `READY=1`.
    Ready,
    /// `RELOADING=1`; the executor adds `MONOTONIC_USEC=` read when it sends.
    Reloading,
    /// `STOPPING=1`.
    Stopping,
    /// `EXTEND_TIMEOUT_USEC=`.
    ExtendTimeout(Duration),
}

/// How important a log record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something failed.
    Error,
    /// Something unexpected that handover handled.
    Warn,
    /// A normal lifecycle step.
    Info,
    /// Detail.
    Debug,
}

/// A structured log record; the executor maps it to journald fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Severity.
    pub level: Level,
    /// `HANDOVER_EVENT`: a stable, machine-readable name (`worker-ready`, `reload-failed`).
    pub event: &'static str,
    /// The human-readable line.
    pub message: String,
    /// `HANDOVER_GENERATION`.
    pub generation: Option<u64>,
    /// `HANDOVER_WORKER_SLOT`.
    pub slot: Option<usize>,
    /// `HANDOVER_WORKER_PID`.
    pub pid: Option<Pid>,
}

/// What the executor must do to spawn one worker.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    /// The id to report back in [`Event::Spawned`] / [`Event::SpawnFailed`].
    pub worker: WorkerId,
    /// `HANDOVER_GENERATION`.
    pub generation: u64,
    /// `HANDOVER_WORKER_SLOT`.
    pub slot: usize,
    /// The generation's config (command, env, sockets).
    pub config: Arc<Config>,
    /// Start it at the lowest CPU priority (`reload.boot_priority = "low"`, beside serving
    /// workers); [`Effect::RaisePriority`] ends it.
    pub low_priority: bool,
}

/// An output of the state machine, carried out by the executor.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a few short-lived effects per event: boxing would buy nothing
pub enum Effect {
    /// Fork/exec a worker; answer with `Spawned` or `SpawnFailed`.
    Spawn(SpawnRequest),
    /// Send `signal` to the worker process `pid`.
    Signal {
        /// The worker's pid.
        pid: Pid,
        /// The signal number.
        signal: i32,
    },
    /// Give a worker spawned with [`SpawnRequest::low_priority`] the normal CPU priority
    /// again (its cgroup's weight, or its process group's nice value).
    RaisePriority {
        /// The worker's pid.
        pid: Pid,
    },
    /// SIGKILL the worker's whole process group (pgid = its pid).
    KillGroup {
        /// The worker's pid.
        pid: Pid,
    },
    /// Send these messages to systemd, in one datagram.
    Systemd(Vec<SystemdMessage>),
    /// Answer a waiting control request.
    Reply {
        /// Which request.
        requester: RequestId,
        /// The reply line.
        reply: Reply,
    },
    /// Log a record.
    Log(LogRecord),
    /// A generation became the active one: sockets only older configs used may be closed.
    Committed {
        /// The new active generation.
        generation: u64,
    },
    /// Generations with nothing left were forgotten (their last worker is gone): sockets
    /// only their configs used may be closed now.
    Forgotten {
        /// The generations forgotten.
        generations: Vec<u64>,
    },
    /// The watched generation failed its watch (`reload.watch`): the executor checks the
    /// rollback target's release and prepares its sockets, as for `handover rollback`, and
    /// answers with [`Event::RollbackRequested`] (with `automatic` set to `reason`).
    RollbackDue {
        /// Why, for the log and status.
        reason: String,
    },
    /// A worker's request counters were refused (they went backwards or jumped): counted
    /// like a bad notify datagram, not logged one by one.
    BadReport {
        /// The worker's pid, when known.
        pid: Option<Pid>,
        /// Why, in words.
        reason: String,
    },
    /// Every worker is gone after a stop: exit with this code.
    Exit {
        /// The process exit code.
        code: i32,
    },
}
