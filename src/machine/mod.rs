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
//! This file holds the state, [`Machine::step`] and the daemon-wide handlers (scale, stop);
//! `workers.rs` the worker lifecycle (spawned, ready, healthy, stopped, gone; deadlines,
//! failures); `reload.rs` reloads (begin, progress, commit, rollback); `reconcile.rs` the
//! rule applied after every event; `status.rs` the read-only views (`STATUS=`, `handover
//! status`) and the status types; `replies.rs` what control requests are answered with;
//! `judging.rs` request outcomes, canaries and the watch after a reload; `budget.rs` the
//! error budget's arithmetic; `records.rs` release records and rollback;
//! `events.rs` the vocabulary; `policy.rs` the timing rules; `snapshot.rs` the state as
//! plain data for `handover upgrade`; `index.rs` the indexes beside the tables;
//! `invariants.rs` the checks above.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, ReadyMode, Strategy};
use crate::text::{count, human};

pub use budget::Tally;
pub use events::*;
pub use judging::CanaryStage;
pub use records::ReloadKind;
pub use replies::{Outcome, Progress, Reply};
pub use status::{
    AutoRollbackStatus, CanaryStatus, FailingSlotStatus, GenerationStatus, SocketStatus, Status, WatchStatus,
    WorkerStatus,
};

pub mod budget;
pub mod events;
mod index;
#[cfg(any(debug_assertions, test))]
mod invariants;
mod judging;
pub mod policy;
mod reconcile;
mod records;
mod reload;
mod replies;
pub mod snapshot;
mod status;
mod workers;

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
    /// The longest accept queue of each listening socket (by name) seen so far during this
    /// reload ([`Event::AcceptQueues`]).
    pub queue_peak: BTreeMap<String, u32>,
    /// How the reload came about (a reload, or a rollback to a record).
    pub kind: ReloadKind,
    /// The canary stage, while it runs (`reload.canary`).
    pub canary: Option<CanaryStage>,
    /// The previous generation's request outcomes when the reload began: the canary is
    /// judged against what it served since.
    pub previous_at_begin: Tally,
}

/// The answer of a reload whose canaries failed, held until they are gone (see
/// `Machine::fail_reload`).
#[derive(Debug, Clone)]
struct HeldAnswer {
    /// The failed canaries, told to stop.
    workers: Vec<WorkerId>,
    /// The waiting clients' answers.
    replies: Vec<(RequestId, Outcome)>,
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
    /// The request outcomes its workers reported, added up over their lives (a worker
    /// that is gone still counts).
    served: Tally,
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
    /// Spawned at the low boot priority (`reload.boot_priority`) and not raised yet: raised
    /// once ready, when 3/4 of its boot_timeout have passed, or when nothing serves any more.
    low_priority: bool,
    /// Its last accepted `X_HANDOVER_REQUESTS=`/`X_HANDOVER_ERRORS=` (cumulative), and when.
    outcomes: Tally,
    outcomes_at: Option<Instant>,
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
                let raise = match self.low_priority {
                    true => self.spawned_at.checked_add(policy::raise_priority_after(t.boot_timeout)),
                    false => None,
                };
                earliest(earliest(boot, ready), raise)
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
    /// The longest accept queue of each listening socket during the last reload that ran
    /// (empty before the first, or when none could be read).
    last_reload_queue_peak: BTreeMap<String, u32>,
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
    /// Some worker has been ready since the daemon started (a start that got this far is
    /// not hopeless: see `give_up_a_hopeless_start`). True for a restored machine.
    ever_ready: bool,
    /// The open client connections of workers about to be killed at graceful_timeout, by
    /// pid ([`Event::OpenConnections`]): read by the kill's log line, cleared after the step.
    open_connections: BTreeMap<Pid, usize>,
    /// Why the start was given up (`give_up_a_hopeless_start`): shown in `STATUS=`, and the
    /// daemon exits with [`policy::START_FAILED_EXIT`] once every worker is gone.
    start_given_up: Option<String>,
    /// The executor can lower a booting worker's CPU priority and raise it again
    /// ([`Machine::set_boot_lowering`]); without it every worker boots at normal priority.
    boot_lowering: bool,
    /// What every generation that served ran, oldest first (`records.rs`).
    records: Vec<records::ReleaseRecord>,
    /// The generation watched after its reload (`reload.watch`), while the watch runs.
    watch: Option<judging::Watch>,
    /// The last verdict on a canary or a watched generation, for status.
    last_verdict: Option<String>,
    /// The last rollback that `watch` did by itself, for status.
    last_auto_rollback: Option<judging::AutoRollback>,
    /// A failed canary reload's answer, until its canaries are gone.
    held_answer: Option<HeldAnswer>,
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
            last_reload_queue_peak: BTreeMap::new(),
            degraded: false,
            failure_counted: false,
            worker_output: WorkerOutput::default(),
            #[cfg(any(debug_assertions, test))]
            invariant_checks: true,
            last_now: now,
            verdicts_held_until: None,
            ever_ready: false,
            start_given_up: None,
            boot_lowering: false,
            open_connections: BTreeMap::new(),
            records: Vec::new(),
            watch: None,
            last_verdict: None,
            last_auto_rollback: None,
            held_answer: None,
        };
        m.add_generation(1, config, Role::Active);
        let mut fx = vec![log(
            Level::Info,
            "starting",
            format!("starting generation 1 with {}", count(m.gen(1).slots.len(), "worker", "workers")),
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

    /// Tells the machine whether the executor can lower a booting worker's CPU priority and
    /// raise it again (a delegated cgroup with the cpu controller, or a master allowed to
    /// renice): only then does `reload.boot_priority = "low"` ask for it
    /// ([`SpawnRequest::low_priority`], [`Effect::RaisePriority`]).
    pub fn set_boot_lowering(&mut self, can: bool) {
        self.boot_lowering = can;
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
        // The end of a canary stage or of a watch.
        for t in [self.canary_deadline(), self.watch_deadline()].into_iter().flatten() {
            if t > self.last_now {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
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
            Event::RollbackRequested { requester, release_gone, automatic } => {
                self.on_rollback_requested(requester, release_gone, automatic, now, &mut fx)
            }
            Event::ScaleRequested { to, requester } => self.on_scale(to, requester, now, &mut fx),
            Event::StopRequested { fast } => self.on_stop(fast, now, &mut fx),
            Event::Tick => {}
            Event::OpenConnections { counts } => self.open_connections = counts.into_iter().collect(),
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
            Event::AcceptQueues { samples } => self.note_accept_queues(samples),
        }
        if self.verdicts_held_until.is_some_and(|until| now >= until) {
            self.verdicts_held_until = None;
        }
        self.check_deadlines(now, &mut fx);
        self.open_connections.clear();
        self.reconcile(now, &mut fx);
        // Only a counted failure can make the daemon degraded, and only while it is can a
        // step end it: the scan of the slots is skipped otherwise.
        let counted = std::mem::take(&mut self.failure_counted);
        if self.degraded || counted {
            self.update_degraded(&mut fx);
        }
        if counted && matches!(self.phase, Phase::Starting) {
            self.give_up_a_hopeless_start(now, &mut fx);
        }
        self.raise_when_nothing_serves(&mut fx);
        self.release_held_answer(false, &mut fx);
        #[cfg(any(debug_assertions, test))]
        if self.invariant_checks {
            self.check_invariants();
        }
        fx
    }

    // ----------------------------------------------------------------- event handlers

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
        let msg = format!("scaled generation {active} from {have} to {}", count(want, "worker", "workers"));
        fx.push(log(Level::Info, "scaled", msg.clone(), Some(active), None, None));
        answer(fx, Outcome { generation: Some(active), ..Outcome::ok(msg) });
    }

    fn on_stop(&mut self, fast: bool, now: Instant, fx: &mut Vec<Effect>) {
        if let Phase::Stopping { fast: was_fast } = self.phase {
            if was_fast || !fast {
                return; // already stopping at least this hard
            }
        }
        self.watch = None;
        self.release_held_answer(true, fx);
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

    fn add_generation(&mut self, number: u64, config: Arc<Config>, role: Role) {
        let slots = index::Slots::wanted(config.workers.count);
        self.generations.insert(number, Generation { number, config, role, slots, served: Tally::default() });
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
