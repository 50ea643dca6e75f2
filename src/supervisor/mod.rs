//! The supervisor: one event loop that owns the [`machine::Machine`] and carries out its
//! effects. This is the only impure part of the supervisor.
//!
//! ```text
//!  signals ─┐                       ┌─ spawn (fork/exec) ─→ Spawned / SpawnFailed ─┐
//!  SIGCHLD ─┤                       ├─ signal / kill group                          │
//!  notify  ─┼─→ Event → Machine::step → Effect ─┼─ sd_notify to systemd                        │
//!  control ─┤          ↑            ├─ control replies                              │
//!  timer   ─┘          └────────────┴───────────────────────────────────────────────┘
//! ```
//! Events produced by effects (a spawn's pid) are fed back before the loop waits again, so
//! the machine never sees the world out of order. The timer is the machine's own
//! [`machine::Machine::next_deadline`]: no periodic wake-up happens unless systemd's
//! watchdog or `max_memory` asks for one, or a reload runs (its accept queues are read).
//!
//! This file holds the setup and the event loop; `workers.rs` what workers report (exits,
//! notify datagrams, memory), `commands.rs` the control socket's commands, `notifying.rs`
//! what is told to systemd, `queues.rs` the listening sockets' accept queues, `spawning.rs`
//! and `upgrading.rs` the spawns and the upgrade, `draining.rs` the draining workers' open
//! connections (read only when asked).
//!
//! `LIFECYCLE.md` in this directory walks through boot → ready → reload → rollback → stop,
//! naming the functions that do each step.
mod commands;
mod draining;
pub mod memory;
mod notifying;
mod queues;
pub mod rejects;
mod spawning;
mod upgrading;
mod workers;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use tokio::sync::mpsc;

use crate::config::{self, Config, LoadEnv};
use crate::control::proto::{Outcome, Reply, Request};
use crate::control::{Command, ControlServer};
use crate::logging;
use crate::metrics::Metrics;
use crate::signals::{SignalEvent, Signals};
use crate::sockets::Sockets;
use crate::systemd::notify::NotifyState;
use crate::systemd::{monotonic_usec, Notifier};
use crate::upgrade;
use crate::worker::priority::Lowering;
use crate::worker::readiness::{Datagram, NotifyServer, Rejected};
use crate::worker::{self, Launcher, WorkerProcess};

use crate::machine::{self, policy, Effect, Event, Level, Machine, RequestId, ScaleTo, SystemdMessage};
use memory::MemorySource;
use rejects::RejectTally;

/// How often worker memory is sampled when some generation sets `max_memory`.
pub const MEMORY_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// An `EXTEND_TIMEOUT_USEC=` that would move systemd's deadline by less than this is not
/// sent (see `Daemon::extension_is_redundant`).
const EXTEND_GRANULARITY: Duration = Duration::from_secs(1);

/// `STATUS=` lines: up to this many at once (a few reloads' worth of changes: each goes
/// when it happens, so `systemctl status` right after `systemctl reload` shows the final
/// line)...
const STATUS_BURST: u32 = 20;

/// ... then one per this interval, the newest (see `policy::Pacer`).
const STATUS_EVERY: Duration = Duration::from_millis(100);

/// At most this many worker datagrams are read in one turn of the event loop.
const NOTIFY_BURST: usize = 256;

/// Everything the daemon needs, prepared by the caller.
#[derive(Debug)]
pub struct Setup {
    /// The validated config.
    pub config: Arc<Config>,
    /// Re-read on every reload.
    pub config_path: PathBuf,
    /// The environment snapshot for config defaults.
    pub load_env: LoadEnv,
    /// Sockets from systemd, already matched and bound.
    pub sockets: Sockets,
    /// systemd's NOTIFY_SOCKET.
    pub notifier: Notifier,
    /// systemd's watchdog interval for us, if any.
    pub watchdog: Option<Duration>,
    /// handover's environment without systemd's variables (the base of workers' env).
    pub base_env: Vec<(OsString, OsString)>,
    /// Who this daemon is: its binary (for `handover upgrade`), its command line, since when.
    pub identity: Identity,
    /// What systemd told us at start, handed over at an upgrade.
    pub systemd: upgrade::SystemdRecord,
    /// Set in the new binary of an upgrade: the state the old one handed over (its sockets
    /// are already in `sockets`).
    pub resume: Option<upgrade::HandOff>,
}

/// Who the daemon is, for `handover status` and `handover upgrade`.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The binary's path as resolved at the first start (see [`upgrade::resolve_binary`]);
    /// None if it could not be resolved (then upgrades are refused).
    pub binary: Option<PathBuf>,
    /// The command line, re-used by the exec of an upgrade.
    pub argv: Vec<OsString>,
    /// When the daemon first started (seconds since the epoch).
    pub started_unix: f64,
    /// When this binary took over (the start, or the last upgrade).
    pub version_since_unix: f64,
    /// Upgrades in the daemon's life.
    pub upgrades: u32,
    /// The version before the last upgrade.
    pub upgraded_from: Option<String>,
}

/// Errors that stop the daemon before it serves.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The control socket could not be bound.
    #[error("control socket {}: {source}", path.display())]
    Control {
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The worker notify socket could not be bound.
    #[error("worker notify socket {}: {source}", path.display())]
    Notify {
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    /// The state handed over by the previous binary could not be taken over.
    #[error("taking over from the previous binary: {0}")]
    Resume(String),
}

/// The path of the workers' NOTIFY_SOCKET, next to the control socket (see
/// [`crate::unix::notify_path_for`]).
pub fn worker_notify_path(control_socket: &Path) -> PathBuf {
    crate::unix::notify_path_for(control_socket)
}

/// Runs the daemon until it has stopped; returns the process exit code.
pub async fn run(setup: Setup) -> Result<i32, RunError> {
    let Setup { config, config_path, load_env, sockets, notifier, watchdog, base_env, identity, systemd, mut resume } =
        setup;
    let control_path = config.control_socket.clone();
    let notify_path = worker_notify_path(&control_path);
    let taken = |fd: i32| {
        // SAFETY: the previous binary handed this descriptor over for this socket alone
        // (named in the hand-off), and nothing else in this process took it.
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    };
    let (control, notify_server) = match &resume {
        Some(h) if h.control_fd > 2 && h.notify_fd > 2 && h.control_fd != h.notify_fd => (
            ControlServer::adopt(taken(h.control_fd), &control_path)
                .map_err(|source| RunError::Control { path: control_path.clone(), source })?,
            NotifyServer::adopt(taken(h.notify_fd), &notify_path)
                .map_err(|source| RunError::Notify { path: notify_path.clone(), source })?,
        ),
        Some(h) => return Err(RunError::Resume(format!("bad descriptors {} and {}", h.control_fd, h.notify_fd))),
        None => (
            ControlServer::bind(&control_path)
                .map_err(|source| RunError::Control { path: control_path.clone(), source })?,
            NotifyServer::bind(&notify_path)
                .map_err(|source| RunError::Notify { path: notify_path.clone(), source })?,
        ),
    };
    let control_fd = control.as_raw_fd();
    let notify_server = Rc::new(notify_server);
    // Installed before the first READY=1 (sent only once generation 1 is ready). The new
    // binary of an upgrade starts with every signal blocked (see `upgrade`): what arrived
    // during the exec is pending and is delivered to these handlers now.
    let signals = Signals::install().map_err(RunError::Signals)?;
    crate::signals::unblock_all().map_err(RunError::Signals)?;
    if let Err(e) = crate::worker::spawn::dev_null() {
        logging::event(Level::Warn, "startup", format!("opening /dev/null for the workers' stdin: {e}"));
    }
    let (commands_tx, commands) = mpsc::channel(16);
    let adopted = resume.as_mut().map(|h| adopted_connections(h, &identity, taken)).unwrap_or_default();
    tokio::spawn(control.serve_with(commands_tx, adopted));
    let pidfile = config.pidfile.as_deref().and_then(|p| match crate::pidfile::Pidfile::write(p, std::process::id()) {
        Ok(f) => Some(f),
        Err(e) => {
            logging::event(Level::Warn, "pidfile", format!("cannot write pidfile {}: {e}", p.display()));
            None
        }
    });
    let mut launcher = Launcher {
        base_env,
        notify_socket: notify_server.path().to_path_buf(),
        notify_owner: resume.as_ref().and_then(|h| h.notify_owner),
        boot_nice: None,
    };
    // A cgroup per worker where ours is delegated; process groups otherwise. After an
    // upgrade, the tree the old binary used (with its workers' cgroups) goes on.
    let cgroups = match resume.as_mut().map(|h| h.cgroups.take()) {
        Some(tree) => tree,
        None => match crate::cgroup::Tree::detect() {
            Ok(tree) => {
                logging::event(Level::Info, "cgroups", tree.describe());
                Some(tree)
            }
            Err(why) => {
                logging::event(Level::Debug, "cgroups", format!("process groups per worker: {why}"));
                None
            }
        },
    };
    // How workers that boot beside serving ones are lowered (reload.boot_priority), if at
    // all: decided once, as the cgroups are.
    let lowering = Lowering::for_this_process(cgroups.as_ref().map(|t| t.cpu));
    launcher.boot_nice = lowering.child_nice();
    let (internal_tx, internal) = mpsc::unbounded_channel();
    let (machine, effects) = match &mut resume {
        Some(h) => {
            let state = std::mem::replace(&mut h.machine, empty_state());
            let machine = Machine::restore(state, &upgrade::time_base(), Instant::now()).map_err(RunError::Resume)?;
            (machine, Vec::new())
        }
        None => Machine::start(config, Instant::now()),
    };
    let name = machine.active_config().name.clone();
    let mut daemon = Daemon {
        machine,
        sockets,
        launcher,
        notifier,
        config_path,
        load_env,
        processes: HashMap::new(),
        rejects: RejectTally::default(),
        waiters: HashMap::new(),
        next_request: resume.as_ref().map_or(1, |h| h.next_request.max(1)),
        last_status: String::new(),
        extended_until: None,
        status_due: false,
        armed_deadline: None,
        status_pacer: policy::Pacer::new(STATUS_BURST, STATUS_EVERY),
        exit: None,
        memory: memory::ProcScan::default(),
        drain_sample: draining::DrainSample::default(),
        identity,
        systemd,
        control_fd,
        notify_fd: notify_server.as_raw_fd(),
        notify: notify_server.clone(),
        early: VecDeque::new(),
        upgrade: UpgradeState::default(),
        upgrade_exec_due: false,
        internal_tx,
        metrics: match resume.as_mut().and_then(|h| h.metrics.take()) {
            Some(state) => Metrics::restore(&name, state),
            None => Metrics::new(&name),
        },
        cgroups,
        lowering,
    };
    daemon.machine.set_boot_lowering(daemon.lowering.available());
    // Workers inherit our stdout and stderr: where ours go, theirs go.
    daemon.machine.set_worker_output(if logging::stderr_is_journal() {
        machine::WorkerOutput::Journal
    } else {
        machine::WorkerOutput::Stderr
    });
    match resume {
        Some(h) => daemon.resume(h, &notify_server),
        None => daemon.execute_all(effects),
    }
    let code = daemon.event_loop(signals, notify_server, commands, internal, watchdog).await;
    daemon.sweep_cgroups_at_exit();
    if let Some(p) = pidfile {
        let path = p.path().to_path_buf();
        if !p.remove() {
            logging::event(
                Level::Info,
                "pidfile",
                format!("pidfile {} not removed: it is gone or holds another pid", path.display()),
            );
        }
    }
    Ok(code)
}

/// A placeholder for the machine state moved out of a hand-off.
fn empty_state() -> machine::snapshot::MachineState {
    machine::snapshot::MachineState {
        active: 0,
        next_generation: 0,
        next_worker: 0,
        generations: Vec::new(),
        workers: Vec::new(),
        last_reload: None,
        last_reload_failure: None,
        last_reload_queue_peak: Default::default(),
        degraded: false,
        output_to_journal: false,
        records: Vec::new(),
        watch: None,
        last_verdict: None,
        last_auto_rollback: None,
    }
}

/// The control connections the previous binary handed over, with what each waits for: the
/// `handover upgrade` clients get their answer first.
fn adopted_connections(
    h: &mut upgrade::HandOff,
    identity: &Identity,
    taken: impl Fn(i32) -> std::os::fd::OwnedFd,
) -> Vec<crate::control::Adopted> {
    let message = upgraded_message(&h.from_version, identity);
    std::mem::take(&mut h.connections)
        .into_iter()
        .filter(|c| c.fd > 2)
        .map(|c| crate::control::Adopted {
            stream: taken(c.fd),
            start: match c.waits_for {
                // Our own hand-off, back: the upgrade failed (see `upgrade::exec`).
                upgrade::Waits::Upgrade if h.returned.is_some() => {
                    let reason = h.returned.clone().unwrap_or_default();
                    let why = format!("{reason}; it was handed back and handover {} goes on", crate::VERSION);
                    crate::control::AdoptedStart::Reply(Box::new(Reply::Done(Outcome::error(why))))
                }
                upgrade::Waits::Upgrade => {
                    crate::control::AdoptedStart::Reply(Box::new(Reply::Done(Outcome::ok(message.clone()))))
                }
                upgrade::Waits::Request(r) => crate::control::AdoptedStart::Request(r),
            },
        })
        .collect()
}

fn upgraded_message(from: &str, identity: &Identity) -> String {
    let binary = identity.binary.as_deref().map_or_else(|| "?".into(), |b| b.display().to_string());
    format!("upgraded in place: handover {from} -> {} ({binary}), pid {} kept", crate::VERSION, std::process::id())
}

/// Where `handover upgrade` stands (the executor's side; the machine knows nothing of it).
#[derive(Debug, Default)]
struct UpgradeState {
    step: UpgradeStep,
    /// Who waits for the result: control clients (with a second descriptor of their
    /// connection, handed to the new binary) and SIGUSR2 (nobody to answer: logged).
    requesters: Vec<UpgradeRequester>,
    /// Reloads asked for during the upgrade: honoured by the new binary (or by this one
    /// if the upgrade fails).
    held: Vec<Command>,
    /// A SIGHUP arrived during the upgrade.
    reload_pending: bool,
    /// SIGTTIN (+1) and SIGTTOU (-1) that arrived during the upgrade, in order.
    held_scale: Vec<i64>,
}

#[derive(Debug, Default)]
enum UpgradeStep {
    #[default]
    Idle,
    /// Waiting for the running reload (or gen 1's start) to finish.
    WaitingForQuiet,
    /// The new binary's pre-flight runs.
    Checking {
        pid: i32,
        deadline: Instant,
        /// How it exited (words, and whether with code 0), once reaped.
        exit: Option<(String, bool)>,
        /// What it printed, once it closed its output.
        output: Option<Vec<u8>>,
    },
}

#[derive(Debug)]
struct UpgradeRequester {
    replies: Option<mpsc::UnboundedSender<Reply>>,
    connection: Option<std::os::fd::OwnedFd>,
}

/// Events from the executor's own helpers (threads), fed to the event loop.
#[derive(Debug)]
enum Internal {
    /// The upgrade pre-flight's output, complete.
    PreflightOutput {
        /// The check's pid.
        pid: i32,
        /// What it printed (stdout and stderr).
        output: Vec<u8>,
    },
}

struct Daemon {
    machine: Machine,
    sockets: Sockets,
    launcher: Launcher,
    notifier: Notifier,
    config_path: PathBuf,
    load_env: LoadEnv,
    /// Every spawned worker not reaped yet, by pid: the only way workers are signalled, so
    /// a pid is never signalled once reaped (its handle, and pidfd, are gone by then).
    processes: HashMap<machine::Pid, WorkerProcess>,
    /// Dropped notify datagrams, logged as a summary at most once per interval.
    rejects: RejectTally,
    /// Control requests waiting for their final reply. A sender whose client went away
    /// fails silently; the operation goes on.
    waiters: HashMap<RequestId, mpsc::UnboundedSender<Reply>>,
    next_request: RequestId,
    last_status: String,
    /// How far systemd's timeout for the current job was extended (`EXTEND_TIMEOUT_USEC=`).
    extended_until: Option<Instant>,
    /// The machine was stepped since the last `STATUS=` check (published at the next turn).
    status_due: bool,
    /// The machine's deadline the event loop last slept towards, until the next step: waking
    /// well after it means the loop stalled (see `run_queue`).
    armed_deadline: Option<Instant>,
    /// Paces `STATUS=` lines (see `STATUS_BURST`).
    status_pacer: policy::Pacer,
    exit: Option<i32>,
    /// Where worker memory is read from (`max_memory`) without a cgroup per worker; also
    /// who is in a worker's process group (its open connections).
    memory: memory::ProcScan,
    /// The draining workers' open connections as last read, for the metrics.
    drain_sample: draining::DrainSample,
    identity: Identity,
    systemd: upgrade::SystemdRecord,
    /// The control socket's listening descriptor (owned by the control server's task).
    control_fd: std::os::fd::RawFd,
    /// The workers' notify socket's descriptor (owned by `notify`).
    notify_fd: std::os::fd::RawFd,
    /// The workers' notify socket, shared with the event loop (read there, and while a
    /// batch is spawned, see `spawning`).
    notify: Rc<NotifyServer>,
    /// Datagrams read while a batch was spawned, heard once the batch's `Spawned` events
    /// have been (see `spawning` and `run_queue`); empty between turns of the event loop.
    early: VecDeque<std::io::Result<Result<Datagram, Rejected>>>,
    upgrade: UpgradeState,
    /// The pre-flight accepted: re-execute at the top of the next loop turn.
    upgrade_exec_due: bool,
    internal_tx: mpsc::UnboundedSender<Internal>,
    /// The counters derived from the machine's effects, and the `[metrics]` file.
    metrics: Metrics,
    /// The cgroup per worker, where handover's cgroup is delegated (plain data).
    cgroups: Option<crate::cgroup::Tree>,
    /// How workers that boot beside serving ones are lowered, if at all.
    lowering: worker::priority::Lowering,
}

impl Daemon {
    async fn event_loop(
        &mut self,
        mut signals: Signals,
        notify_server: Rc<NotifyServer>,
        mut commands: mpsc::Receiver<Command>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
        watchdog: Option<Duration>,
    ) -> i32 {
        // Half of systemd's interval, but never a period whose next tick the clock cannot
        // represent (tokio adds the period to each tick): pinging more often is harmless.
        let mut watchdog_tick =
            watchdog.map(|w| tokio::time::interval((w / 2).clamp(Duration::from_millis(1), policy::MAX_TIMER_SLEEP)));
        let mut memory_tick: Option<tokio::time::Interval> = None;
        let mut queue_tick: Option<tokio::time::Interval> = None;
        loop {
            // The accept queues are read only while a reload runs (see `queues`).
            let reloading = matches!(self.machine.phase(), machine::Phase::Reloading(_));
            if reloading {
                self.sample_accept_queues();
                queue_tick.get_or_insert_with(|| tokio::time::interval(queues::QUEUE_SAMPLE_INTERVAL));
            } else {
                queue_tick = None;
            }
            // At most one write of the metrics file per turn, whatever the turn fed the
            // machine (a turn may read a burst of datagrams, see below), and STATUS= lines
            // as `status_pacer` allows (the newest one; `status_timer` below).
            self.refresh_draining_connections();
            self.metrics.flush(&self.machine);
            let status_wait = if self.status_due { self.status_pacer.wait(Instant::now()) } else { None };
            if self.status_due && status_wait.is_none() {
                self.status_due = false;
                self.publish_status();
            }
            let status_deadline = status_wait.filter(|_| self.status_due);
            let status_timer = async {
                match status_deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            if let Some(code) = self.exit {
                return code;
            }
            self.advance_upgrade(&mut signals, &mut commands).await;
            // Only sample memory while some worker has a limit: no idle wake-ups otherwise.
            let watch_memory = self.machine.watches_memory();
            if watch_memory && memory_tick.is_none() {
                memory_tick = Some(tokio::time::interval(MEMORY_SAMPLE_INTERVAL));
            } else if !watch_memory {
                memory_tick = None;
            }
            // A deadline further out than MAX_TIMER_SLEEP wakes the loop early for a Tick that
            // does nothing: tokio's timer then never sees an instant near the clock's limit.
            let deadline =
                self.machine.next_deadline().map(|d| d.min(policy::deadline(Instant::now(), policy::MAX_TIMER_SLEEP)));
            self.armed_deadline = deadline;
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            // Armed only while dropped datagrams wait to be summarised.
            let reject_summary_due = self.rejects.summary_due();
            let reject_summary = async {
                match reject_summary_due {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let upgrade_deadline = match self.upgrade.step {
                UpgradeStep::Checking { deadline, .. } => Some(deadline),
                _ => None,
            };
            let upgrade_timer = async {
                match upgrade_deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = status_timer => {} // published at the top of the next turn
                () = upgrade_timer => self.preflight_timed_out(),
                Some(msg) = internal.recv() => match msg {
                    Internal::PreflightOutput { pid, output } => self.on_preflight_output(pid, output),
                },
                () = reject_summary => {
                    if let Some(line) = self.rejects.summary(Instant::now()) {
                        logging::event(Level::Warn, "notify-rejected", line);
                    }
                }
                sig = signals.recv() => match sig {
                    SignalEvent::Child => {
                        self.reap(&notify_server);
                    }
                    other => self.on_signal(other),
                },
                datagram = notify_server.recv() => {
                    self.on_datagram(datagram);
                    // What else is queued is read in the same turn: a start or reload of many
                    // workers sends a burst of READY=1, and one turn per datagram would pay the
                    // loop's fixed cost (timers, STATUS=, metrics) each time. Bounded, so
                    // signals and commands still get their turn.
                    for _ in 1..NOTIFY_BURST {
                        match notify_server.try_recv() {
                            Ok(Some(d)) => self.on_datagram(Ok(d)),
                            Ok(None) => break,
                            Err(e) => {
                                self.on_datagram(Err(e));
                                break;
                            }
                        }
                    }
                }
                Some(cmd) = commands.recv() => self.on_command(cmd),
                () = timer => self.dispatch(Event::Tick),
                _ = tick(&mut watchdog_tick) => {
                    if let Err(e) = self.notifier.send(&[NotifyState::Watchdog]) {
                        logging::event(Level::Warn, "notify-error", format!("WATCHDOG=1 to systemd: {e}"));
                    }
                }
                _ = tick(&mut memory_tick) => self.sample_memory(),
                _ = tick(&mut queue_tick) => {} // read at the top of the next turn
            }
        }
    }

    fn on_signal(&mut self, sig: SignalEvent) {
        match sig {
            SignalEvent::Child => {} // reaped by the event loop, which owns the notify socket
            SignalEvent::Stop | SignalEvent::FastStop => {
                self.dispatch(Event::StopRequested { fast: sig == SignalEvent::FastStop });
                self.fail_upgrade("the daemon is stopping; upgrade abandoned");
            }
            SignalEvent::Reload if self.upgrading() => {
                logging::event(
                    Level::Info,
                    "reload-requested",
                    "SIGHUP: reload requested; held until the upgrade is done",
                );
                self.upgrade.reload_pending = true;
            }
            SignalEvent::Reload => {
                logging::event(Level::Info, "reload-requested", "SIGHUP: reload requested");
                let config = self.load_config();
                self.dispatch(Event::ReloadRequested { config, requester: None });
            }
            SignalEvent::MoreWorkers if self.upgrading() => self.hold_scale_signal(1),
            SignalEvent::FewerWorkers if self.upgrading() => self.hold_scale_signal(-1),
            SignalEvent::MoreWorkers => self.dispatch(Event::ScaleRequested { to: ScaleTo::Delta(1), requester: None }),
            SignalEvent::FewerWorkers => {
                self.dispatch(Event::ScaleRequested { to: ScaleTo::Delta(-1), requester: None })
            }
            SignalEvent::Upgrade => {
                logging::event(Level::Info, "upgrade", "SIGUSR2: upgrade in place requested");
                self.begin_upgrade(UpgradeRequester { replies: None, connection: None });
            }
        }
    }

    /// Feeds `event` and everything its effects produce, then publishes the status.
    fn dispatch(&mut self, event: Event) {
        self.run_queue(VecDeque::from([event]));
    }

    fn execute_all(&mut self, effects: Vec<Effect>) {
        self.metrics.observe(None, &effects, Instant::now());
        let queue = self.execute(effects).into();
        self.run_queue(queue);
    }

    /// Steps the machine with every event of `queue` and every event their effects produce;
    /// once the queue is empty, with the datagrams read while a batch was spawned (one at
    /// a time: a batch of thousands is not turned into thousands of queued events at once).
    fn run_queue(&mut self, mut queue: VecDeque<Event>) {
        // The first step after the loop woke: if it woke well past the deadline it slept
        // towards, it stalled, and what workers sent meanwhile is still unread. The machine
        // hears of it before anything else, so no deadline is judged first.
        if let Some(due) = self.armed_deadline.take() {
            if let Some(stalled) = Instant::now().checked_duration_since(due).filter(|&l| l > policy::STALL_THRESHOLD) {
                queue.push_front(Event::Resumed { stalled });
            }
        }
        loop {
            let ev = match queue.pop_front() {
                Some(ev) => ev,
                None => match self.early.pop_front() {
                    Some(datagram) => {
                        queue.extend(self.heard(datagram));
                        continue;
                    }
                    None => break,
                },
            };
            let now = Instant::now();
            // A step that kills workers at their graceful_timeout is first told how many
            // connections they still hold (read now, right before the kill), for its log line.
            let ev = match self.connections_before_kills(now) {
                Some(sample) => {
                    queue.push_front(ev);
                    sample
                }
                None => ev,
            };
            let exited = exited_pid(&ev);
            let effects = self.machine.step(ev, now);
            self.metrics.observe(exited, &effects, now);
            queue.extend(self.execute(effects));
        }
        self.status_due = true;
    }

    /// Carries out effects; returns the events they produced.
    fn execute(&mut self, effects: Vec<Effect>) -> Vec<Event> {
        let mut produced = Vec::new();
        let mut effects = effects.into_iter().peekable();
        while let Some(effect) = effects.next() {
            match effect {
                // A run of spawns (a start, a reload) is launched as one batch, in parallel.
                Effect::Spawn(first) => {
                    let mut batch = vec![first];
                    while let Some(Effect::Spawn(_)) = effects.peek() {
                        if let Some(Effect::Spawn(req)) = effects.next() {
                            batch.push(req);
                        }
                    }
                    produced.extend(self.spawn_batch(batch));
                }
                // A pid without a handle was reaped already: nothing to signal (and its
                // group was killed before it was reaped, see `reap`).
                Effect::Signal { pid, signal } => {
                    if let Some(process) = self.processes.get(&pid) {
                        if let Err(e) = process.signal(signal) {
                            logging::event(Level::Warn, "signal-error", format!("signal {signal} to pid {pid}: {e}"));
                        }
                    }
                }
                Effect::RaisePriority { pid } => self.raise_priority(pid),
                Effect::KillGroup { pid } => {
                    if let Some(process) = self.processes.get(&pid) {
                        process.kill_group();
                        if let Some(tree) = &self.cgroups {
                            tree.kill(pid); // setsid() escapees included
                        }
                    }
                }
                Effect::Systemd(messages) => self.notify_systemd(&messages),
                Effect::Reply { requester, reply } => {
                    let last = matches!(reply, Reply::Done(_));
                    if let Some(tx) = self.waiters.get(&requester) {
                        let _ = tx.send(reply);
                    }
                    if last {
                        self.waiters.remove(&requester);
                    }
                }
                Effect::Log(record) => logging::record(&record),
                Effect::RollbackDue { reason } => {
                    let release_gone = self.check_rollback_release();
                    produced.push(Event::RollbackRequested { requester: None, release_gone, automatic: Some(reason) });
                }
                Effect::BadReport { pid, reason } => {
                    let kind = worker::readiness::RejectKind::BadCounters;
                    self.on_rejected(&worker::readiness::Rejected { pid, kind, reason });
                }
                Effect::Committed { .. } | Effect::Forgotten { .. } => {
                    let in_use: Vec<Arc<Config>> = self.machine.configs().cloned().collect();
                    for line in self.sockets.retain_used(in_use.iter().map(|c| c.as_ref())) {
                        logging::event(Level::Info, "sockets", line);
                    }
                }
                Effect::Exit { code } => self.exit = Some(code),
            }
        }
        produced
    }

    /// At exit: the workers are gone; their cgroups that were not empty yet get a last
    /// chance (a killed process takes a moment to leave), bounded to a second.
    fn sweep_cgroups_at_exit(&mut self) {
        let Some(tree) = &mut self.cgroups else { return };
        let deadline = Instant::now() + Duration::from_secs(1);
        tree.sweep();
        while !tree.doomed.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10)); // polling a file system, bounded
            tree.sweep();
        }
        for dir in &tree.doomed {
            logging::event(Level::Warn, "cgroups", format!("{} not removed: not empty", dir.display()));
        }
    }
}

/// The pid of an `Exited` event: the metrics count the exit under the reason the step logs.
fn exited_pid(event: &Event) -> Option<machine::Pid> {
    match event {
        Event::Exited { pid, .. } => Some(*pid),
        _ => None,
    }
}

/// Waits for the next tick of an optional interval (forever when there is none).
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
pub(crate) mod tests;
