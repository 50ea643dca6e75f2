//! The supervisor as a sans-io state machine: [`Event`]s in, [`Effect`]s out.
//!
//! [`Machine::step`] does no I/O and never reads the clock: the executor
//! ([`crate::supervisor::run`]) passes `now`, carries out the effects and feeds their results back as
//! events. After every event the machine *reconciles*: it recomputes what each generation
//! wants against what runs and emits the spawns and signals that are missing, so handling
//! an event twice is harmless.
//!
//! # Model
//! - A **generation** is one version of the app: the config it was started from and a
//!   vector of **slots** (0..count). A slot that is *wanted* should have a worker; the
//!   slot's `current` worker serves in it, and during a recycle a `successor` boots beside it.
//! - Generation roles: `Active` (serves; crashes are respawned with backoff), `Candidate`
//!   (being rolled in by a reload; a worker that fails to boot fails the reload) and
//!   `Outgoing` (retired: its wanted slots are given up as soon as the active generation has
//!   enough ready workers, and its workers drain).
//! - A worker told to stop is detached from its slot; it lives on in the worker table as
//!   `Stopping` until it is reaped, and is SIGKILLed (its whole process group) at its
//!   deadline.
//!
//! # Invariants (checked after every step in debug builds)
//! - Exactly one generation is `Active`; at most one is `Candidate`, and only while the
//!   phase is `Reloading`.
//! - A slot's `current`/`successor` refer to live workers of that generation and slot that
//!   are not stopping.
//! - No worker is told to stop before a ready replacement exists, except on failure
//!   (boot timeout, watchdog, crash) or when the daemon stops: capacity never drops by
//!   choice.
//! - `READY=1` to systemd follows every `RELOADING=1`.
//!
//! # Files
//! This file holds the state and the event handlers; `reconcile.rs` the rule applied after
//! every event; `status.rs` the read-only views (`STATUS=`, `handover status`);
//! `invariants.rs` the checks above.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, ReadyMode, Strategy};
use crate::text::human;

pub use events::*;
pub use replies::{Outcome, Progress, Reply};
pub use status::{FailingSlotStatus, GenerationStatus, SocketStatus, Status, WorkerStatus};

pub mod events;
mod index;
#[cfg(any(debug_assertions, test))]
mod invariants;
pub mod policy;
mod reconcile;
mod replies;
pub mod snapshot;
mod status;

/// The daemon's phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// The first generation is booting; systemd has not been told READY=1.
    Starting,
    /// The active generation serves; no reload runs.
    Running,
    /// A reload rolls in the candidate generation.
    Reloading(Reloading),
    /// Every worker has been told to stop; the daemon exits once they are gone.
    Stopping {
        /// SIGINT: workers were SIGKILLed.
        fast: bool,
    },
}

/// The state of a reload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloading {
    /// The generation being rolled in.
    pub candidate: u64,
    /// The generation that served when the reload began (the rollback target).
    pub previous: u64,
    /// Control requests waiting for the result.
    pub waiters: Vec<RequestId>,
}

/// A reload asked for while another one runs: it starts when that one ends.
#[derive(Debug, Clone)]
struct PendingReload {
    config: Result<Arc<Config>, String>,
    waiters: Vec<RequestId>,
}

/// The role of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Active,
    Candidate,
    Outgoing,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Candidate => "candidate",
            Role::Outgoing => "outgoing",
        }
    }
}

/// One slot of a generation.
#[derive(Debug, Clone, Default)]
struct Slot {
    /// A worker should run here.
    wanted: bool,
    /// The worker serving (or booting to serve) in this slot.
    current: Option<WorkerId>,
    /// A replacement booting while `current` still serves (recycling).
    successor: Option<WorkerId>,
    /// Consecutive failures, for the backoff.
    failures: u32,
    /// Respawns after failures over the slot's life (shown in status).
    restarts: u32,
    /// No spawn in this slot before this instant (backoff).
    not_before: Option<Instant>,
    /// Why its last worker failed, for the degraded view.
    last_failure: Option<String>,
}

#[derive(Debug, Clone)]
struct Generation {
    number: u64,
    config: Arc<Config>,
    role: Role,
    slots: index::Slots,
}

/// A worker's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    /// Spawned (or being spawned), not ready yet.
    Booting,
    /// Ready: it serves.
    Ready,
    /// Told to stop (or stopping by itself); SIGKILL of its group at `kill_at`.
    Stopping { kill_at: Instant },
    /// Its group was SIGKILLed; waiting to reap it.
    Killed,
}

#[derive(Debug, Clone)]
struct Worker {
    generation: u64,
    slot: usize,
    /// None until [`Event::Spawned`].
    pid: Option<Pid>,
    state: WorkerState,
    since: Instant,
    spawned_at: Instant,
    /// Set while `Booting` with a pending stop: signal as soon as the pid is known.
    stop_signal_pending: Option<i32>,
    watchdog_last: Option<Instant>,
    recycle_at: Option<Instant>,
    status_text: Option<String>,
    /// The durations of its generation's config that its deadlines depend on.
    timing: Timing,
    /// When it became ready (`None` while booting).
    ready_at: Option<Instant>,
    /// Ready and up for the generation's `reload.min_healthy_time` since (see
    /// [`Machine::mark_healthy`]); a candidate worker that fails before this rolls back.
    healthy: bool,
}

/// The config durations a worker's deadlines are computed from (copied at spawn, so that
/// [`Worker::deadline`] needs nothing but the worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timing {
    boot_timeout: Duration,
    /// `ready = "<duration>"`: ready this long after the spawn.
    ready_delay: Option<Duration>,
    watchdog: Option<Duration>,
    /// `reload.min_healthy_time`.
    min_healthy: Duration,
}

impl Timing {
    fn of(config: &Config) -> Timing {
        let wc = &config.workers;
        let ready_delay = match wc.ready {
            ReadyMode::Delay(d) => Some(d),
            _ => None,
        };
        Timing {
            boot_timeout: wc.boot_timeout,
            ready_delay,
            watchdog: wc.watchdog,
            min_healthy: config.reload.min_healthy_time,
        }
    }
}

impl Worker {
    /// The earliest instant at which [`Machine::check_deadlines`] has something to do for
    /// this worker (a deadline too far to represent is never).
    fn deadline(&self) -> Option<Instant> {
        let t = &self.timing;
        let earliest = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match self.state {
            WorkerState::Booting => {
                let boot = self.spawned_at.checked_add(t.boot_timeout);
                let ready = match (t.ready_delay, self.pid) {
                    (Some(d), Some(_)) => self.spawned_at.checked_add(d),
                    _ => None,
                };
                earliest(boot, ready)
            }
            WorkerState::Ready => {
                let watchdog = match (self.watchdog_last, t.watchdog) {
                    (Some(last), Some(wd)) => last.checked_add(wd),
                    _ => None,
                };
                let healthy = match (self.healthy, self.ready_at) {
                    (false, Some(at)) => at.checked_add(t.min_healthy),
                    _ => None,
                };
                earliest(earliest(watchdog, self.recycle_at), healthy)
            }
            WorkerState::Stopping { kill_at } => Some(kill_at),
            WorkerState::Killed => None,
        }
    }
}

/// The supervisor's state. See the module documentation for the model.
#[derive(Debug)]
pub struct Machine {
    phase: Phase,
    generations: BTreeMap<u64, Generation>,
    workers: index::Workers,
    active: u64,
    /// The number the next reload's generation gets: never reused in the daemon's life, so a
    /// rolled-back candidate keeps its number and `HANDOVER_GENERATION=n` names one version.
    next_generation: u64,
    next_worker: u64,
    pending_reload: Option<PendingReload>,
    /// The last reload's result, for `handover status`.
    last_reload: Option<String>,
    /// Why the last reload failed, shown in `STATUS=` until a reload succeeds.
    last_reload_failure: Option<String>,
    /// Check the invariants after every step (debug and test builds; the scaling test turns
    /// it off, the checks being a pass over everything by design).
    #[cfg(any(debug_assertions, test))]
    invariant_checks: bool,
    /// Some slot of the active generation is failing (see [`Machine::degraded_slots`]); kept
    /// to log the transitions in and out.
    degraded: bool,
    /// A failure was counted in this step: the degraded state may have changed.
    failure_counted: bool,
    /// Where a worker's output goes, for messages about failed workers.
    worker_output: WorkerOutput,
    /// The `now` of the last step. A deadline at or before it was acted on then, or waits
    /// for an event (a recycle for the reload to end, a respawn for rolling budget), so
    /// [`Machine::next_deadline`] leaves it out: the executor's timer must not spin on it.
    last_now: Instant,
    /// Until when boot_timeout and watchdog verdicts are held after the event loop resumed
    /// from a stall ([`Event::Resumed`]): messages that met those deadlines may still be
    /// queued unread.
    verdicts_held_until: Option<Instant>,
}

/// Where the workers' stdout and stderr end up, so that a message about a failed worker can
/// say where to read what it printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerOutput {
    /// journald (handover runs under systemd with its output in the journal): each line
    /// is stored with the worker's `_PID`.
    Journal,
    /// handover's own stderr, interleaved with its log lines.
    #[default]
    Stderr,
}

impl Machine {
    /// A machine that starts generation 1 from `config`; the returned effects spawn it.
    pub fn start(config: Arc<Config>, now: Instant) -> (Machine, Vec<Effect>) {
        let mut m = Machine {
            phase: Phase::Starting,
            generations: BTreeMap::new(),
            workers: index::Workers::default(),
            active: 1,
            next_generation: 2,
            next_worker: 1,
            pending_reload: None,
            last_reload: None,
            last_reload_failure: None,
            degraded: false,
            failure_counted: false,
            worker_output: WorkerOutput::default(),
            #[cfg(any(debug_assertions, test))]
            invariant_checks: true,
            last_now: now,
            verdicts_held_until: None,
        };
        m.add_generation(1, config, Role::Active);
        let mut fx = vec![log(
            Level::Info,
            "starting",
            format!("starting generation 1 with {} workers", m.gen(1).slots.len()),
            Some(1),
            None,
            None,
        )];
        m.reconcile(now, &mut fx);
        (m, fx)
    }

    /// Tells the machine where workers' output goes (see [`WorkerOutput`]).
    pub fn set_worker_output(&mut self, output: WorkerOutput) {
        self.worker_output = output;
    }

    /// The current phase.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The generation that serves.
    pub fn active_generation(&self) -> u64 {
        self.active
    }

    /// The config of the active generation.
    pub fn active_config(&self) -> &Arc<Config> {
        &self.gen(self.active).config
    }

    /// Every config still in use: by a generation, or by a queued reload whose sockets the
    /// executor has already prepared. The executor keeps the sockets these refer to.
    pub fn configs(&self) -> impl Iterator<Item = &Arc<Config>> {
        let pending = self.pending_reload.as_ref().and_then(|p| p.config.as_ref().ok());
        self.generations.values().map(|g| &g.config).chain(pending)
    }

    /// Pids of workers whose generation has `max_memory` set (the executor samples them).
    pub fn memory_watched(&self) -> Vec<(Pid, u64)> {
        self.workers
            .values()
            .filter(|w| w.state == WorkerState::Ready)
            .filter_map(|w| {
                let limit = self.generations.get(&w.generation)?.config.workers.max_memory?;
                Some((w.pid?, limit))
            })
            .collect()
    }

    /// Whether some ready worker's generation sets `max_memory` (cheap: per generation, not
    /// per worker; the executor asks after every event).
    pub fn watches_memory(&self) -> bool {
        self.generations
            .values()
            .any(|g| g.config.workers.max_memory.is_some() && self.workers.counts(g.number).ready > 0)
    }

    /// Pids of every worker (the new binary of an upgrade takes handles on them).
    pub fn worker_pids(&self) -> Vec<Pid> {
        self.workers.values().filter_map(|w| w.pid).collect()
    }

    /// The earliest instant at which [`Event::Tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        // Deadlines at or before the last step were acted on then, or wait for an event.
        let mut next = self.workers.next_deadline_after(self.last_now);
        // Verdicts held after a stall are due again when the hold ends.
        if let Some(until) = self.verdicts_held_until.filter(|&until| until > self.last_now) {
            next = Some(next.map_or(until, |n| n.min(until)));
        }
        if !matches!(self.phase, Phase::Stopping { .. }) {
            for g in self.generations.values() {
                if let Some(t) = g.slots.next_backoff_after(self.last_now) {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
        }
        next
    }

    /// Feeds one event; returns the effects to carry out, in order.
    pub fn step(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        let mut fx = Vec::new();
        self.last_now = self.last_now.max(now);
        match event {
            Event::Spawned { worker, pid } => self.on_spawned(worker, pid, now, &mut fx),
            Event::SpawnFailed { worker, error } => {
                if let Some(w) = self.workers.remove(&worker) {
                    let why = format!("could not be spawned: {error}");
                    self.on_worker_gone(worker, w, &why, now, &mut fx);
                }
            }
            Event::Exited { pid, status } => {
                if let Some(id) = self.worker_by_pid(pid) {
                    if let Some(w) = self.workers.remove(&id) {
                        // Whatever the worker left in its group goes with it.
                        fx.push(Effect::KillGroup { pid });
                        let why = format!("exited ({status})");
                        self.on_worker_gone(id, w, &why, now, &mut fx);
                    }
                }
            }
            Event::Message { sender, sender_pgid, message } => {
                self.on_message(sender, sender_pgid, message, now, &mut fx)
            }
            Event::MemoryUsage { pid, rss_bytes } => self.on_memory(pid, rss_bytes, now, &mut fx),
            Event::ReloadRequested { config, requester } => self.on_reload_requested(config, requester, &mut fx),
            Event::ScaleRequested { to, requester } => self.on_scale(to, requester, now, &mut fx),
            Event::StopRequested { fast } => self.on_stop(fast, now, &mut fx),
            Event::Tick => {}
            Event::Resumed { stalled } => {
                let hold = policy::stall_hold(stalled);
                let until = policy::deadline(now, hold);
                let msg = format!(
                    "the event loop ran {} late (the daemon was stopped or starved); boot and \
                     watchdog verdicts wait {} for what workers sent meanwhile",
                    human(stalled),
                    human(hold)
                );
                fx.push(log(Level::Warn, "stalled", msg, None, None, None));
                self.verdicts_held_until = Some(self.verdicts_held_until.map_or(until, |held| held.max(until)));
            }
        }
        if self.verdicts_held_until.is_some_and(|until| now >= until) {
            self.verdicts_held_until = None;
        }
        self.check_deadlines(now, &mut fx);
        self.reconcile(now, &mut fx);
        // Only a counted failure can make the daemon degraded, and only while it is can a
        // step end it: the scan of the slots is skipped otherwise.
        if self.degraded || std::mem::take(&mut self.failure_counted) {
            self.update_degraded(&mut fx);
        }
        #[cfg(any(debug_assertions, test))]
        if self.invariant_checks {
            self.check_invariants();
        }
        fx
    }

    // ----------------------------------------------------------------- event handlers

    fn on_spawned(&mut self, id: WorkerId, pid: Pid, now: Instant, fx: &mut Vec<Effect>) {
        let Some(mut w) = self.workers.get_mut(&id) else { return };
        w.pid = Some(pid);
        let (generation, slot) = (w.generation, w.slot);
        let pending = w.stop_signal_pending.take();
        drop(w);
        fx.push(log(
            Level::Debug,
            "worker-spawned",
            format!("spawned worker gen {generation} slot {slot} pid {pid}"),
            Some(generation),
            Some(slot),
            Some(pid),
        ));
        if let Some(signal) = pending {
            fx.push(Effect::Signal { pid, signal });
            return;
        }
        if self.gen(generation).config.workers.ready == ReadyMode::Spawn {
            self.mark_ready(id, now, fx);
        }
    }

    /// A worker is gone (reaped, or never spawned): settle its slot.
    fn on_worker_gone(&mut self, id: WorkerId, w: Worker, why: &str, now: Instant, fx: &mut Vec<Effect>) {
        let (generation, slot) = (w.generation, w.slot);
        let who = describe(&w);
        let output = self.output_hint(w.pid);
        let Some(g) = self.generations.get_mut(&generation) else { return };
        let role = g.role;
        let s = g.slots.get(slot);
        let was_current = s.as_ref().is_some_and(|s| s.current == Some(id));
        let was_successor = s.as_ref().is_some_and(|s| s.successor == Some(id));
        match w.state {
            WorkerState::Stopping { .. } => {
                // It exited on its own after being told to stop (or saying it stops).
                let took = human(now.saturating_duration_since(w.since));
                // A worker that dies of the signal either has no handler (and dropped what it
                // was serving) or re-raised it after draining (uvicorn does): say both.
                let how = if why.contains("killed by") {
                    "it did not catch the signal, or re-raised it after draining"
                } else {
                    "drained"
                };
                let msg = format!("{who} {why} {took} after it was told to stop: {how}");
                fx.push(log(Level::Info, "worker-drained", msg, Some(generation), Some(slot), w.pid));
            }
            WorkerState::Killed => {
                let msg = format!("{who} {why}: SIGKILLed, it had not exited within graceful_timeout");
                fx.push(log(Level::Warn, "worker-exited", msg, Some(generation), Some(slot), w.pid));
            }
            WorkerState::Booting | WorkerState::Ready => {
                let before_ready = w.state == WorkerState::Booting;
                let reason = if before_ready {
                    format!("{who} {why} before it was ready{output}")
                } else if !w.healthy {
                    let window = human(g.config.reload.min_healthy_time);
                    format!("{who} {why} within min_healthy_time {window} of being ready{output}")
                } else {
                    format!("{who} {why}{output}")
                };
                if let Some(mut s) = g.slots.get_mut(slot) {
                    if was_current {
                        s.current = None;
                    }
                    if was_successor {
                        s.successor = None;
                    }
                }
                if role == Role::Candidate && !w.healthy {
                    fx.push(log(Level::Error, "worker-failed", reason.clone(), Some(generation), Some(slot), w.pid));
                    self.fail_reload(reason, now, fx);
                } else if role == Role::Outgoing {
                    if let Some(mut s) = g.slots.get_mut(slot) {
                        if was_current {
                            s.wanted = false;
                        }
                    }
                    fx.push(log(Level::Warn, "worker-exited", reason, Some(generation), Some(slot), w.pid));
                } else {
                    let uptime = now.saturating_duration_since(w.spawned_at);
                    self.count_failure(generation, slot, uptime, &reason, now);
                    let delay = self
                        .gen(generation)
                        .slots
                        .get(slot)
                        .and_then(|s| s.not_before)
                        .map(|t| t.saturating_duration_since(now));
                    fx.push(log(
                        Level::Warn,
                        "worker-failed",
                        format!("{reason}; respawning in {}", human(delay.unwrap_or_default())),
                        Some(generation),
                        Some(slot),
                        w.pid,
                    ));
                }
            }
        }
    }

    fn on_message(
        &mut self,
        sender: Pid,
        pgid: Option<Pid>,
        message: WorkerMessage,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let id = self.worker_by_pid(sender).or_else(|| pgid.and_then(|g| self.worker_by_pid(g)));
        let Some(id) = id else {
            fx.push(log(
                Level::Warn,
                "notify-unknown-sender",
                format!("ignored {message:?} from pid {sender}, which is not a worker"),
                None,
                None,
                Some(sender),
            ));
            return;
        };
        match message {
            WorkerMessage::Ready => {
                let mode = self.workers.get(&id).map(|w| self.gen(w.generation).config.workers.ready);
                if mode == Some(ReadyMode::Notify) {
                    self.mark_ready(id, now, fx);
                }
            }
            WorkerMessage::Status(text) => {
                if let Some(mut w) = self.workers.get_mut(&id) {
                    w.status_text = Some(text);
                }
            }
            WorkerMessage::Watchdog => {
                if let Some(mut w) = self.workers.get_mut(&id) {
                    w.watchdog_last = Some(now);
                }
            }
            WorkerMessage::WatchdogTrigger => self.watchdog_expired(id, "asked for it (WATCHDOG=trigger)", now, fx),
            WorkerMessage::Stopping => {
                let Some(w) = self.workers.get(&id) else { return };
                if matches!(w.state, WorkerState::Booting | WorkerState::Ready) {
                    let who = describe(w);
                    let (generation, slot, pid) = (w.generation, w.slot, w.pid);
                    let uptime = now.saturating_duration_since(w.spawned_at);
                    self.detach(id);
                    let (graceful, role) = {
                        let g = self.gen(generation);
                        (g.config.workers.graceful_timeout, g.role)
                    };
                    if let Some(mut w) = self.workers.get_mut(&id) {
                        w.state = WorkerState::Stopping { kill_at: policy::deadline(now, graceful) };
                        w.since = now;
                    }
                    // Nobody asked it to stop, so its slot is refilled as after a crash: with
                    // the capped exponential backoff (SPEC §5). Without it a worker that says
                    // STOPPING=1 and exits at once is respawned as fast as it can boot. One
                    // that stayed up BACKOFF_RESET_AFTER recycles itself: replaced at once,
                    // and not counted as failing (no "degraded" for a healthy recycle).
                    let mut msg = format!("{who} is stopping by itself");
                    if role != Role::Outgoing && uptime >= policy::BACKOFF_RESET_AFTER {
                        if let Some(mut s) = self.generations.get_mut(&generation).and_then(|g| g.slots.get_mut(slot)) {
                            s.failures = 0;
                        }
                    } else if role != Role::Outgoing {
                        self.count_failure(generation, slot, uptime, &format!("{msg} (STOPPING=1)"), now);
                        let delay = self
                            .gen(generation)
                            .slots
                            .get(slot)
                            .and_then(|s| s.not_before)
                            .map(|t| t.saturating_duration_since(now));
                        msg.push_str(&format!("; its replacement starts in {}", human(delay.unwrap_or_default())));
                    }
                    fx.push(log(Level::Info, "worker-stopping", msg, Some(generation), Some(slot), pid));
                }
            }
        }
    }

    fn on_memory(&mut self, pid: Pid, rss: u64, now: Instant, fx: &mut Vec<Effect>) {
        let Some(id) = self.worker_by_pid(pid) else { return };
        let Some(mut w) = self.workers.get_mut(&id) else { return };
        let Some(limit) = self.generations.get(&w.generation).and_then(|g| g.config.workers.max_memory) else { return };
        if rss > limit && w.state == WorkerState::Ready && w.recycle_at.is_none_or(|t| t > now) {
            w.recycle_at = Some(now);
            let msg = format!("{} uses {} MiB > max_memory {} MiB; recycling", describe(&w), rss >> 20, limit >> 20);
            fx.push(log(Level::Info, "worker-recycle", msg, Some(w.generation), Some(w.slot), w.pid));
        }
    }

    fn on_reload_requested(
        &mut self,
        config: Result<Arc<Config>, String>,
        requester: Option<RequestId>,
        fx: &mut Vec<Effect>,
    ) {
        match &self.phase {
            Phase::Stopping { .. } => {
                if let Some(r) = requester {
                    fx.push(done(r, Outcome::error("the daemon is stopping")));
                }
            }
            Phase::Starting | Phase::Reloading(_) => {
                // Coalesce: one reload runs after the current operation, with the newest
                // config; every waiter gets its result.
                match &mut self.pending_reload {
                    Some(pending) => {
                        pending.config = config;
                        pending.waiters.extend(requester);
                    }
                    None => {
                        self.pending_reload = Some(PendingReload { config, waiters: requester.into_iter().collect() })
                    }
                }
                fx.push(log(
                    Level::Info,
                    "reload-queued",
                    "reload requested while busy; it will run next".into(),
                    None,
                    None,
                    None,
                ));
            }
            Phase::Running => self.begin_reload(config, requester.into_iter().collect(), fx),
        }
    }

    fn begin_reload(&mut self, config: Result<Arc<Config>, String>, waiters: Vec<RequestId>, fx: &mut Vec<Effect>) {
        fx.push(Effect::Systemd(vec![SystemdMessage::Reloading]));
        let config = match config {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("invalid config: {e}");
                let msg = format!("reload failed, still serving gen {}: {reason}", self.active);
                fx.push(log(Level::Error, "reload-failed", msg.clone(), Some(self.active), None, None));
                self.last_reload = Some(msg);
                self.last_reload_failure = Some(reason.clone());
                fx.push(Effect::Systemd(vec![SystemdMessage::Ready]));
                for r in waiters {
                    fx.push(done(r, Outcome { generation: Some(self.active), ..Outcome::error(reason.clone()) }));
                }
                return;
            }
        };
        let previous = self.active;
        let candidate = self.next_generation;
        self.next_generation += 1;
        self.add_generation(candidate, config, Role::Candidate);
        let g = self.gen(candidate);
        let strategy = match g.config.reload.strategy {
            Strategy::AllAtOnce => "all-at-once".to_string(),
            Strategy::Rolling => format!("rolling, max_surge {}", g.config.reload.max_surge),
        };
        fx.push(log(
            Level::Info,
            "reload-started",
            format!(
                "reloading: generation {candidate} with {} workers ({strategy}) replaces generation {previous}",
                g.slots.len()
            ),
            Some(candidate),
            None,
            None,
        ));
        self.phase = Phase::Reloading(Reloading { candidate, previous, waiters });
    }

    fn on_scale(&mut self, to: ScaleTo, requester: Option<RequestId>, now: Instant, fx: &mut Vec<Effect>) {
        let answer = |fx: &mut Vec<Effect>, o: Outcome| {
            if let Some(r) = requester {
                fx.push(done(r, o));
            }
        };
        if !matches!(self.phase, Phase::Running | Phase::Starting) {
            let why = "cannot scale while a reload runs or the daemon stops; try again after it";
            fx.push(log(Level::Warn, "scale-refused", why.into(), None, None, None));
            return answer(fx, Outcome::error(why));
        }
        let active = self.active;
        let have = self.gen(active).slots.len();
        let want = match to {
            ScaleTo::Count(n) => n,
            ScaleTo::Delta(d) => (have as i64).saturating_add(d).max(0) as usize,
        };
        if !(1..=4096).contains(&want) {
            let why = format!("worker count must be 1..=4096, not {want}");
            fx.push(log(Level::Warn, "scale-refused", why.clone(), Some(active), None, None));
            return answer(fx, Outcome::error(why));
        }
        if want < have {
            for slot in want..have {
                let s = &self.gen(active).slots[slot];
                for id in [s.current, s.successor].into_iter().flatten() {
                    self.stop_worker(id, now, fx);
                }
            }
        }
        let g = self.gen_mut(active);
        g.slots.resize(want);
        let msg = format!("scaled generation {active} from {have} to {want} workers");
        fx.push(log(Level::Info, "scaled", msg.clone(), Some(active), None, None));
        answer(fx, Outcome { generation: Some(active), ..Outcome::ok(msg) });
    }

    fn on_stop(&mut self, fast: bool, now: Instant, fx: &mut Vec<Effect>) {
        if let Phase::Stopping { fast: was_fast } = self.phase {
            if was_fast || !fast {
                return; // already stopping at least this hard
            }
        }
        if let Phase::Reloading(r) = &mut self.phase {
            let candidate = r.candidate;
            for w in std::mem::take(&mut r.waiters) {
                fx.push(done(w, Outcome::error("the daemon is stopping; reload abandoned")));
            }
            self.gen_mut(candidate).role = Role::Outgoing;
        }
        if let Some(p) = self.pending_reload.take() {
            for w in p.waiters {
                fx.push(done(w, Outcome::error("the daemon is stopping; reload abandoned")));
            }
        }
        self.phase = Phase::Stopping { fast };
        let longest = self.generations.values().map(|g| g.config.workers.graceful_timeout).max().unwrap_or_default();
        fx.push(Effect::Systemd(vec![
            SystemdMessage::Stopping,
            // systemd's TimeoutStopSec= may be shorter than our graceful_timeout.
            SystemdMessage::ExtendTimeout(longest.saturating_add(Duration::from_secs(5))),
        ]));
        let how = if fast { "fast stop: killing every worker" } else { "stopping: draining every worker" };
        fx.push(log(Level::Info, "stopping", how.into(), None, None, None));
        for g in self.generations.values_mut() {
            g.slots.set_all_wanted(false);
        }
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for id in ids {
            if fast {
                self.kill_worker(id, fx);
            } else {
                self.stop_worker(id, now, fx);
            }
        }
    }

    // ----------------------------------------------------------------- deadlines

    fn check_deadlines(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        // After a stall, the messages that met a boot or watchdog deadline may be unread.
        let verdicts_held = self.verdicts_held_until.is_some();
        // Only workers whose deadline has come (the deadline index), in id order.
        for id in self.workers.due(now) {
            let Some(w) = self.workers.get(&id) else { continue };
            let Some(g) = self.generations.get(&w.generation) else { continue };
            let wc = &g.config.workers;
            match w.state {
                WorkerState::Booting => {
                    if let (ReadyMode::Delay(d), Some(_)) = (wc.ready, w.pid) {
                        if now >= policy::deadline(w.spawned_at, d) {
                            self.mark_ready(id, now, fx);
                            continue;
                        }
                    }
                    if now >= policy::deadline(w.spawned_at, wc.boot_timeout) && !verdicts_held {
                        self.boot_timed_out(id, now, fx);
                    }
                }
                WorkerState::Ready => {
                    if let (Some(last), Some(wd)) = (w.watchdog_last, wc.watchdog) {
                        if now >= policy::deadline(last, wd) && !verdicts_held {
                            let why = format!("missed its watchdog ({} without WATCHDOG=1)", human(wd));
                            self.watchdog_expired(id, &why, now, fx);
                            continue;
                        }
                    }
                    if !w.healthy
                        && w.ready_at.is_some_and(|t| now >= policy::deadline(t, g.config.reload.min_healthy_time))
                    {
                        self.mark_healthy(id, fx);
                    }
                }
                WorkerState::Stopping { kill_at } => {
                    if now >= kill_at {
                        let msg = format!("{} did not exit in time; SIGKILL to its process group", describe(w));
                        fx.push(log(Level::Warn, "worker-killed", msg, Some(w.generation), Some(w.slot), w.pid));
                        self.kill_worker(id, fx);
                    }
                }
                WorkerState::Killed => {}
            }
        }
    }

    fn boot_timed_out(&mut self, id: WorkerId, now: Instant, fx: &mut Vec<Effect>) {
        let Some(w) = self.workers.get(&id) else { return };
        let (generation, slot, pid) = (w.generation, w.slot, w.pid);
        let g = self.gen(generation);
        let role = g.role;
        let reason = format!(
            "{} was not ready within boot_timeout {}{}",
            describe(w),
            human(g.config.workers.boot_timeout),
            self.output_hint(pid)
        );
        let uptime = now.saturating_duration_since(w.spawned_at);
        self.detach(id);
        self.stop_worker(id, now, fx);
        if role == Role::Candidate {
            fx.push(log(Level::Error, "worker-failed", reason.clone(), Some(generation), Some(slot), pid));
            self.fail_reload(reason, now, fx);
        } else {
            self.count_failure(generation, slot, uptime, &reason, now);
            fx.push(log(Level::Warn, "worker-failed", reason, Some(generation), Some(slot), pid));
        }
    }

    fn watchdog_expired(&mut self, id: WorkerId, why: &str, now: Instant, fx: &mut Vec<Effect>) {
        let Some(w) = self.workers.get(&id) else { return };
        if !matches!(w.state, WorkerState::Ready | WorkerState::Booting) {
            return;
        }
        let (generation, slot, pid, healthy) = (w.generation, w.slot, w.pid, w.healthy);
        let msg = format!("{} {why}; SIGABRT, then SIGKILL{}", describe(w), self.output_hint(pid));
        let uptime = now.saturating_duration_since(w.spawned_at);
        fx.push(log(Level::Error, "worker-watchdog", msg.clone(), Some(generation), Some(slot), pid));
        let grace = self.gen(generation).config.workers.graceful_timeout.min(policy::WATCHDOG_KILL_GRACE);
        self.detach(id);
        if let Some(mut w) = self.workers.get_mut(&id) {
            w.state = WorkerState::Stopping { kill_at: policy::deadline(now, grace) };
            w.since = now;
            match w.pid {
                Some(pid) => fx.push(Effect::Signal { pid, signal: crate::config::SIGABRT }),
                None => w.stop_signal_pending = Some(crate::config::SIGABRT),
            }
        }
        match self.gen(generation).role {
            Role::Candidate if !healthy => self.fail_reload(msg, now, fx),
            Role::Outgoing => {}
            _ => self.count_failure(generation, slot, uptime, &msg, now),
        }
    }

    // ----------------------------------------------------------------- transitions

    fn mark_ready(&mut self, id: WorkerId, now: Instant, fx: &mut Vec<Effect>) {
        let Some(mut w) = self.workers.get_mut(&id) else { return };
        if w.state != WorkerState::Booting {
            return;
        }
        w.state = WorkerState::Ready;
        w.since = now;
        w.ready_at = Some(now);
        let (generation, slot, pid) = (w.generation, w.slot, w.pid);
        let boot = now.saturating_duration_since(w.spawned_at);
        drop(w);
        let g = self.gen(generation);
        // Only a reload's new workers must prove themselves; the first generation has nothing
        // to fall back to, and a respawn or recycle replaces a single worker.
        let min_healthy = g.config.reload.min_healthy_time;
        let proving = g.role == Role::Candidate && !min_healthy.is_zero();
        let wc = &g.config.workers;
        let (max_lifetime, boot_timeout) = (wc.max_lifetime, wc.boot_timeout);
        if let Some(mut w) = self.workers.get_mut(&id) {
            w.healthy = !proving;
            if let Some(lifetime) = max_lifetime {
                w.recycle_at = Some(policy::deadline(now, policy::jittered_lifetime(lifetime, id.0)));
            }
        }
        fx.push(log(
            Level::Info,
            "worker-ready",
            format!("worker gen {generation} slot {slot} pid {} ready after {}", pid.unwrap_or(0), human(boot)),
            Some(generation),
            Some(slot),
            pid,
        ));
        // A successor that is ready takes over its slot; the worker it replaces drains.
        let g = self.gen_mut(generation);
        let replaced = match g.slots.get_mut(slot) {
            Some(mut s) if s.successor == Some(id) => {
                s.successor = None;
                s.current.replace(id)
            }
            _ => None,
        };
        if let Some(old) = replaced {
            self.stop_worker(old, now, fx);
        }
        match &self.phase {
            Phase::Starting | Phase::Reloading(_) => {
                // Progress: give systemd's start/reload timeout room for the next worker (and
                // for this one's min_healthy_time window).
                let room = boot_timeout.max(if proving { min_healthy } else { Duration::ZERO });
                fx.push(Effect::Systemd(vec![SystemdMessage::ExtendTimeout(
                    room.saturating_add(Duration::from_secs(5)),
                )]));
            }
            _ => {}
        }
        self.report_progress(generation, fx);
    }

    /// A new worker has stayed ready for `reload.min_healthy_time`: it now counts for the
    /// reload's commit and for retiring old workers.
    fn mark_healthy(&mut self, id: WorkerId, fx: &mut Vec<Effect>) {
        let Some(mut w) = self.workers.get_mut(&id) else { return };
        if w.healthy || w.state != WorkerState::Ready {
            return;
        }
        w.healthy = true;
        let (generation, slot, pid) = (w.generation, w.slot, w.pid);
        drop(w); // re-indexed: it counts as healthy from here
        let window = human(self.gen(generation).config.reload.min_healthy_time);
        fx.push(log(
            Level::Info,
            "worker-healthy",
            format!("worker gen {generation} slot {slot} pid {} healthy: up {window} since ready", pid.unwrap_or(0)),
            Some(generation),
            Some(slot),
            pid,
        ));
        self.report_progress(generation, fx);
    }

    /// Tells the clients waiting on a reload how far its generation has come.
    fn report_progress(&self, generation: u64, fx: &mut Vec<Effect>) {
        let Phase::Reloading(r) = &self.phase else { return };
        if r.candidate != generation {
            return;
        }
        let g = self.gen(generation);
        let progress = Progress {
            generation,
            ready: self.ready_count(generation),
            total: g.slots.len(),
            healthy: self.healthy_count(generation),
            min_healthy_ms: u64::try_from(g.config.reload.min_healthy_time.as_millis()).unwrap_or(u64::MAX),
        };
        for &w in &r.waiters {
            fx.push(Effect::Reply { requester: w, reply: Reply::Progress { progress } });
        }
    }

    /// Detaches a worker from its slot, so that the slot can get a new one.
    fn detach(&mut self, id: WorkerId) {
        let Some(w) = self.workers.get(&id) else { return };
        let (generation, slot) = (w.generation, w.slot);
        if let Some(mut s) = self.generations.get_mut(&generation).and_then(|g| g.slots.get_mut(slot)) {
            if s.current == Some(id) {
                s.current = s.successor.take();
            } else if s.successor == Some(id) {
                s.successor = None;
            }
        }
    }

    /// Tells a worker to drain: stop_signal now, SIGKILL of its group at graceful_timeout.
    fn stop_worker(&mut self, id: WorkerId, now: Instant, fx: &mut Vec<Effect>) {
        self.detach(id);
        let Some(w) = self.workers.get(&id) else { return };
        if !matches!(w.state, WorkerState::Booting | WorkerState::Ready) {
            return;
        }
        let wc = &self.gen(w.generation).config.workers;
        let (signal, graceful) = (wc.stop_signal, wc.graceful_timeout);
        let Some(mut w) = self.workers.get_mut(&id) else { return };
        w.state = WorkerState::Stopping { kill_at: policy::deadline(now, graceful) };
        w.since = now;
        match w.pid {
            Some(pid) => fx.push(Effect::Signal { pid, signal }),
            None => w.stop_signal_pending = Some(signal),
        }
    }

    /// SIGKILLs a worker's process group at once.
    fn kill_worker(&mut self, id: WorkerId, fx: &mut Vec<Effect>) {
        self.detach(id);
        let Some(mut w) = self.workers.get_mut(&id) else { return };
        match w.pid {
            Some(pid) => {
                w.state = WorkerState::Killed;
                fx.push(Effect::KillGroup { pid });
            }
            None => w.stop_signal_pending = Some(crate::config::SIGKILL),
        }
    }

    fn count_failure(&mut self, generation: u64, slot: usize, uptime: Duration, why: &str, now: Instant) {
        let Some(mut s) = self.generations.get_mut(&generation).and_then(|g| g.slots.get_mut(slot)) else { return };
        if uptime >= policy::BACKOFF_RESET_AFTER {
            s.failures = 0;
        }
        s.failures = s.failures.saturating_add(1);
        s.restarts = s.restarts.saturating_add(1);
        s.not_before = Some(policy::deadline(now, policy::backoff(s.failures)));
        s.last_failure = Some(why.to_string());
        self.failure_counted = true;
    }

    /// Logs the transitions into and out of the degraded state.
    fn update_degraded(&mut self, fx: &mut Vec<Effect>) {
        let failing = self.degraded_slots();
        let degraded = !failing.is_empty() && !matches!(self.phase, Phase::Stopping { .. });
        if degraded == self.degraded {
            return;
        }
        self.degraded = degraded;
        let active = self.active;
        if degraded {
            let last = failing.first().and_then(|f| f.last_failure.clone()).unwrap_or_default();
            let msg = format!(
                "degraded: {} of {} slots of generation {active} are failing (crash-loop backoff); last: {last}",
                failing.len(),
                self.gen(active).slots.len()
            );
            fx.push(log(Level::Error, "degraded", msg, Some(active), None, None));
        } else {
            let msg = format!("recovered: every slot of generation {active} serves again");
            fx.push(log(Level::Info, "recovered", msg, Some(active), None, None));
        }
    }

    /// Slots of the active generation whose worker failed and that have no ready worker:
    /// waiting out their backoff, or booting again after it.
    pub(super) fn degraded_slots(&self) -> Vec<FailingSlot> {
        let g = self.gen(self.active);
        g.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.wanted && s.failures > 0)
            .filter(|(_, s)| {
                !s.current.and_then(|id| self.workers.get(&id)).is_some_and(|w| w.state == WorkerState::Ready)
            })
            .map(|(slot, s)| FailingSlot {
                generation: g.number,
                slot,
                restarts: s.restarts,
                last_failure: s.last_failure.clone(),
                next_attempt: match s.current {
                    Some(_) => None, // booting again
                    None => s.not_before,
                },
            })
            .collect()
    }

    /// `"; its output: journalctl _PID=123"`, or where else the worker's output is.
    fn output_hint(&self, pid: Option<Pid>) -> String {
        match (self.worker_output, pid) {
            (WorkerOutput::Journal, Some(pid)) => format!("; its output: journalctl _PID={pid}"),
            (WorkerOutput::Journal, None) => String::new(),
            (WorkerOutput::Stderr, _) => "; its output is above, on handover's stderr".into(),
        }
    }

    /// The reload failed: stop the candidate's booting workers, keep serving the previous
    /// generation, answer the waiters, tell systemd we are ready again.
    fn fail_reload(&mut self, reason: String, now: Instant, fx: &mut Vec<Effect>) {
        let Phase::Reloading(r) = std::mem::replace(&mut self.phase, Phase::Running) else { return };
        let candidate = r.candidate;
        self.gen_mut(candidate).role = Role::Outgoing;
        // Booting candidate workers are useless: stop them (gracefully: a worker that never
        // said READY=1 may still be serving requests it accepted).
        let ids: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.generation == candidate && w.state == WorkerState::Booting)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.stop_worker(id, now, fx);
        }
        self.gen_mut(candidate).slots.unwant_vacant();
        // Rolling: slots of the previous generation retired during this reload are wanted
        // again; its ready candidate workers serve until they are replaced.
        self.gen_mut(r.previous).slots.set_all_wanted(true);
        let msg =
            format!("reload to generation {candidate} failed, rolled back; generation {} serves: {reason}", r.previous);
        fx.push(log(Level::Error, "reload-failed", msg.clone(), Some(candidate), None, None));
        self.last_reload = Some(msg);
        self.last_reload_failure = Some(format!("gen {candidate} rolled back: {reason}"));
        fx.push(Effect::Systemd(vec![SystemdMessage::Ready]));
        for w in r.waiters {
            fx.push(done(w, Outcome { generation: Some(r.previous), ..Outcome::error(reason.clone()) }));
        }
        self.start_pending_reload(fx);
    }

    fn commit_reload(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Phase::Reloading(r) = std::mem::replace(&mut self.phase, Phase::Running) else { return };
        let candidate = r.candidate;
        for g in self.generations.values_mut() {
            if g.number != candidate {
                g.role = Role::Outgoing;
            }
        }
        self.gen_mut(candidate).role = Role::Active;
        self.active = candidate;
        // Everything older is retired now; its workers drain.
        let old: Vec<u64> = self.generations.keys().copied().filter(|&n| n != candidate).collect();
        for n in old {
            let ids: Vec<WorkerId> =
                self.workers.iter().filter(|(_, w)| w.generation == n).map(|(id, _)| *id).collect();
            self.gen_mut(n).slots.set_all_wanted(false);
            for id in ids {
                self.stop_worker(id, now, fx);
            }
        }
        let n = self.gen(candidate).slots.len();
        let msg = format!(
            "reload succeeded: generation {candidate} serves with {n}/{n} workers ready; generation {} drains",
            r.previous
        );
        fx.push(log(Level::Info, "reload-succeeded", msg.clone(), Some(candidate), None, None));
        self.last_reload = Some(msg.clone());
        self.last_reload_failure = None;
        fx.push(Effect::Systemd(vec![SystemdMessage::Ready]));
        fx.push(Effect::Committed { generation: candidate });
        for w in r.waiters {
            fx.push(done(w, Outcome { generation: Some(candidate), ..Outcome::ok(msg.clone()) }));
        }
        self.start_pending_reload(fx);
    }

    fn start_pending_reload(&mut self, fx: &mut Vec<Effect>) {
        if self.phase != Phase::Running {
            return;
        }
        if let Some(p) = self.pending_reload.take() {
            self.begin_reload(p.config, p.waiters, fx);
        }
    }

    // ----------------------------------------------------------------- queries

    fn add_generation(&mut self, number: u64, config: Arc<Config>, role: Role) {
        let slots = index::Slots::wanted(config.workers.count);
        self.generations.insert(number, Generation { number, config, role, slots });
    }

    fn gen(&self, n: u64) -> &Generation {
        // Generations referenced by the phase, `active` or a live worker are never removed
        // (see `reconcile`); a miss is a bug in this module.
        match self.generations.get(&n) {
            Some(g) => g,
            None => panic!("generation {n} missing: state machine invariant broken"),
        }
    }

    fn gen_mut(&mut self, n: u64) -> &mut Generation {
        match self.generations.get_mut(&n) {
            Some(g) => g,
            None => panic!("generation {n} missing: state machine invariant broken"),
        }
    }

    /// Ready workers of `generation`: a ready worker is always the current worker of its
    /// slot (checked with the invariants), so this counts the slots that serve.
    fn ready_count(&self, generation: u64) -> usize {
        self.workers.counts(generation).ready
    }

    /// Ready workers of `generation` that are healthy (see [`Machine::mark_healthy`]).
    fn healthy_count(&self, generation: u64) -> usize {
        self.workers.counts(generation).healthy
    }

    fn worker_by_pid(&self, pid: Pid) -> Option<WorkerId> {
        self.workers.by_pid(pid)
    }
}

/// A slot of the active generation that is failing (see [`Machine::degraded_slots`]).
#[derive(Debug, Clone)]
pub(super) struct FailingSlot {
    pub(super) generation: u64,
    pub(super) slot: usize,
    pub(super) restarts: u32,
    pub(super) last_failure: Option<String>,
    /// None while a new worker boots in it.
    pub(super) next_attempt: Option<Instant>,
}

fn describe(w: &Worker) -> String {
    match w.pid {
        Some(pid) => format!("worker gen {} slot {} pid {pid}", w.generation, w.slot),
        None => format!("worker gen {} slot {}", w.generation, w.slot),
    }
}

fn done(requester: RequestId, outcome: Outcome) -> Effect {
    Effect::Reply { requester, reply: Reply::Done(outcome) }
}

fn log(
    level: Level,
    event: &'static str,
    message: String,
    generation: Option<u64>,
    slot: Option<usize>,
    pid: Option<Pid>,
) -> Effect {
    Effect::Log(LogRecord { level, event, message, generation, slot, pid })
}
