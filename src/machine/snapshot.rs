//! The machine's state as plain data, for `handover upgrade` (SPEC §5): the old binary
//! takes a [`MachineState`] just before it re-executes itself, the new one rebuilds the
//! machine from it. Pure like the rest of the machine: instants are converted with a
//! [`TimeBase`] the executor reads once, so nothing here reads a clock.
//!
//! Instants become nanoseconds of `CLOCK_MONOTONIC`, the clock [`Instant`] is made of on
//! Linux and that an `execve` does not reset: a deadline that was 3 s away before the
//! exec is 3 s minus the exec's own time away after it. The indexes beside the tables
//! (pid, per-generation counts, deadlines, vacant slots, backoffs) are not carried: they
//! are rebuilt from the tables by the same guards every step uses.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Config;

use super::judging::{AutoRollback, Watch};
use super::records::ReleaseRecord;
use super::{
    index, Generation, Machine, Phase, Role, Slot, Tally, Timing, Worker, WorkerId, WorkerOutput, WorkerState,
};

/// One reading of both clocks at the same moment: converts [`Instant`]s to and from
/// `CLOCK_MONOTONIC` nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct TimeBase {
    /// An instant…
    pub instant: Instant,
    /// …and `CLOCK_MONOTONIC` at that instant, in nanoseconds.
    pub monotonic_ns: u64,
}

impl TimeBase {
    /// `t` as `CLOCK_MONOTONIC` nanoseconds (saturating at 0).
    pub fn to_ns(&self, t: Instant) -> u64 {
        if t >= self.instant {
            let ahead = u64::try_from(t.duration_since(self.instant).as_nanos()).unwrap_or(u64::MAX);
            self.monotonic_ns.saturating_add(ahead)
        } else {
            let behind = u64::try_from(self.instant.duration_since(t).as_nanos()).unwrap_or(u64::MAX);
            self.monotonic_ns.saturating_sub(behind)
        }
    }

    /// The instant of `CLOCK_MONOTONIC` reading `ns` (clamped to what [`Instant`] can hold).
    pub fn to_instant(&self, ns: u64) -> Instant {
        if ns >= self.monotonic_ns {
            let ahead = Duration::from_nanos(ns - self.monotonic_ns);
            self.instant.checked_add(ahead).unwrap_or(self.instant)
        } else {
            let behind = Duration::from_nanos(self.monotonic_ns - ns);
            self.instant.checked_sub(behind).unwrap_or(self.instant)
        }
    }
}

/// The whole machine as plain data (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineState {
    /// The generation that serves.
    pub active: u64,
    /// The number the next reload's generation gets.
    pub next_generation: u64,
    /// The id the next worker gets.
    pub next_worker: u64,
    /// Every generation that still exists, oldest first.
    pub generations: Vec<GenerationState>,
    /// Every worker not reaped yet.
    pub workers: Vec<WorkerRecord>,
    /// The last reload's result.
    pub last_reload: Option<String>,
    /// Why the last reload failed, while no reload has succeeded since.
    pub last_reload_failure: Option<String>,
    /// The longest accept queue of each listening socket during the last reload (absent
    /// from a hand-off written before it was shown).
    #[serde(default)]
    pub last_reload_queue_peak: BTreeMap<String, u32>,
    /// Some slot of the active generation was failing.
    pub degraded: bool,
    /// The workers' output goes to the journal (else to handover's stderr).
    pub output_to_journal: bool,
    /// What every generation that served ran, oldest first (absent from a hand-off written
    /// before rollback records: none).
    #[serde(default)]
    pub records: Vec<RecordState>,
    /// The watch of the last reload, while it runs.
    #[serde(default)]
    pub watch: Option<WatchState>,
    /// The last verdict on a canary or a watched generation.
    #[serde(default)]
    pub last_verdict: Option<String>,
    /// The last automatic rollback.
    #[serde(default)]
    pub last_auto_rollback: Option<AutoRollbackState>,
}

/// The last automatic rollback in a [`MachineState`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoRollbackState {
    /// The generation it went away from (the watched one).
    pub from: u64,
    /// When (monotonic ns).
    pub at_ns: u64,
    /// What was said.
    pub message: String,
}

/// One release record in a [`MachineState`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordState {
    /// The generation that ran it.
    pub generation: u64,
    /// Its config, release pinned.
    pub config: Config,
    /// The generation whose release it is.
    pub release_of: u64,
    /// A rollback went away from it.
    pub rolled_back: bool,
}

/// A running watch in a [`MachineState`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchState {
    /// The watched generation.
    pub generation: u64,
    /// The generation it replaced.
    pub previous: u64,
    /// The previous generation's outcomes when the watch began.
    pub baseline: Tally,
    /// When the watch ends (monotonic ns).
    pub until_ns: u64,
    /// The watched generation's outcomes at the start of the current window.
    pub window_from: Tally,
    /// When the current window started (monotonic ns).
    pub window_started_ns: u64,
}

/// One generation in a [`MachineState`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerationState {
    /// Its number.
    pub number: u64,
    /// `active`, `candidate` or `outgoing`.
    pub role: String,
    /// The config it runs.
    pub config: Config,
    /// Its slots, by index.
    pub slots: Vec<SlotState>,
    /// The request outcomes its workers reported.
    #[serde(default)]
    pub served: Tally,
}

/// One slot in a [`GenerationState`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotState {
    /// A worker should run here.
    pub wanted: bool,
    /// The worker serving in it (a worker id).
    pub current: Option<u64>,
    /// Its successor booting beside it.
    pub successor: Option<u64>,
    /// Consecutive failures.
    pub failures: u32,
    /// Respawns after failures.
    pub restarts: u32,
    /// Backoff: no spawn before this (monotonic ns).
    pub not_before_ns: Option<u64>,
    /// Why its last worker failed.
    pub last_failure: Option<String>,
}

/// One worker in a [`MachineState`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Its id.
    pub id: u64,
    /// Its generation.
    pub generation: u64,
    /// Its slot.
    pub slot: usize,
    /// Its pid.
    pub pid: Option<i32>,
    /// `booting`, `ready`, `stopping` or `killed`.
    pub state: String,
    /// For `stopping`: when its group gets SIGKILL (monotonic ns).
    pub kill_at_ns: Option<u64>,
    /// When it entered its state.
    pub since_ns: u64,
    /// When it was spawned.
    pub spawned_at_ns: u64,
    /// A stop signal to send once its pid is known.
    pub stop_signal_pending: Option<i32>,
    /// Its last `WATCHDOG=1`.
    pub watchdog_last_ns: Option<u64>,
    /// When it is recycled.
    pub recycle_at_ns: Option<u64>,
    /// Its last `STATUS=`.
    pub status_text: Option<String>,
    /// Its boot timeout.
    pub boot_timeout: Duration,
    /// `ready = "<duration>"`.
    pub ready_delay: Option<Duration>,
    /// Its watchdog interval.
    pub watchdog: Option<Duration>,
    /// Its generation's `min_healthy_time`.
    pub min_healthy: Duration,
    /// When it became ready.
    pub ready_at_ns: Option<u64>,
    /// Up for `min_healthy_time` since ready.
    pub healthy: bool,
    /// Booting at the low CPU priority, not raised yet (absent: normal).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub low_priority: bool,
    /// Its last accepted request counters.
    #[serde(default)]
    pub outcomes: Tally,
    /// When they came (monotonic ns).
    #[serde(default)]
    pub outcomes_at_ns: Option<u64>,
}

impl Machine {
    /// Whether nothing is in flight that a hand-off could not carry: the daemon runs (gen 1
    /// is ready, no reload runs, none is queued). `handover upgrade` waits for this.
    pub fn is_quiet(&self) -> bool {
        self.phase == Phase::Running && self.pending_reload.is_none() && self.held_answer.is_none()
    }

    /// The state as plain data. Only a quiet machine ([`Machine::is_quiet`]) is taken: its
    /// phase is `Running` by definition, and no control request waits on it.
    pub fn snapshot(&self, base: &TimeBase) -> Result<MachineState, String> {
        if !self.is_quiet() {
            return Err("a reload is running or queued".into());
        }
        let ns = |t: Instant| base.to_ns(t);
        let generations = self
            .generations
            .values()
            .map(|g| GenerationState {
                number: g.number,
                role: g.role.as_str().to_string(),
                config: g.config.as_ref().clone(),
                slots: g
                    .slots
                    .iter()
                    .map(|s| SlotState {
                        wanted: s.wanted,
                        current: s.current.map(|w| w.0),
                        successor: s.successor.map(|w| w.0),
                        failures: s.failures,
                        restarts: s.restarts,
                        not_before_ns: s.not_before.map(ns),
                        last_failure: s.last_failure.clone(),
                    })
                    .collect(),
                served: g.served,
            })
            .collect();
        let workers = self
            .workers
            .iter()
            .map(|(id, w)| {
                let (state, kill_at_ns) = match w.state {
                    WorkerState::Booting => ("booting", None),
                    WorkerState::Ready => ("ready", None),
                    WorkerState::Stopping { kill_at } => ("stopping", Some(ns(kill_at))),
                    WorkerState::Killed => ("killed", None),
                };
                WorkerRecord {
                    id: id.0,
                    generation: w.generation,
                    slot: w.slot,
                    pid: w.pid,
                    state: state.to_string(),
                    kill_at_ns,
                    since_ns: ns(w.since),
                    spawned_at_ns: ns(w.spawned_at),
                    stop_signal_pending: w.stop_signal_pending,
                    watchdog_last_ns: w.watchdog_last.map(ns),
                    recycle_at_ns: w.recycle_at.map(ns),
                    status_text: w.status_text.clone(),
                    boot_timeout: w.timing.boot_timeout,
                    ready_delay: w.timing.ready_delay,
                    watchdog: w.timing.watchdog,
                    min_healthy: w.timing.min_healthy,
                    ready_at_ns: w.ready_at.map(ns),
                    healthy: w.healthy,
                    low_priority: w.low_priority,
                    outcomes: w.outcomes,
                    outcomes_at_ns: w.outcomes_at.map(ns),
                }
            })
            .collect();
        Ok(MachineState {
            active: self.active,
            next_generation: self.next_generation,
            next_worker: self.next_worker,
            generations,
            workers,
            last_reload: self.last_reload.clone(),
            last_reload_failure: self.last_reload_failure.clone(),
            last_reload_queue_peak: self.last_reload_queue_peak.clone(),
            degraded: self.degraded,
            output_to_journal: self.worker_output == WorkerOutput::Journal,
            records: self
                .records
                .iter()
                .map(|r| RecordState {
                    generation: r.generation,
                    config: r.config.as_ref().clone(),
                    release_of: r.release_of,
                    rolled_back: r.rolled_back,
                })
                .collect(),
            watch: self.watch.as_ref().map(|w| WatchState {
                generation: w.generation,
                previous: w.previous,
                baseline: w.baseline,
                until_ns: ns(w.until),
                window_from: w.window_from,
                window_started_ns: ns(w.window_started),
            }),
            last_verdict: self.last_verdict.clone(),
            last_auto_rollback: self.last_auto_rollback.as_ref().map(|a| AutoRollbackState {
                from: a.from,
                at_ns: ns(a.at),
                message: a.message.clone(),
            }),
        })
    }

    /// Rebuilds a machine from `state` (see the module docs). The state came from another
    /// process, so it is checked rather than trusted: every reference must resolve, every
    /// pid be unique, exactly one generation be active; an error names what is wrong and
    /// no machine is made.
    pub fn restore(state: MachineState, base: &TimeBase, now: Instant) -> Result<Machine, String> {
        let at = |ns: u64| base.to_instant(ns);
        let mut generations = BTreeMap::new();
        for g in state.generations {
            let role = match g.role.as_str() {
                "active" => Role::Active,
                "outgoing" => Role::Outgoing,
                other => return Err(format!("generation {}: role {other:?} cannot be handed over", g.number)),
            };
            let mut slots = index::Slots::wanted(g.slots.len());
            for (i, s) in g.slots.iter().enumerate() {
                if let Some(mut slot) = slots.get_mut(i) {
                    *slot = Slot {
                        wanted: s.wanted,
                        current: s.current.map(WorkerId),
                        successor: s.successor.map(WorkerId),
                        failures: s.failures,
                        restarts: s.restarts,
                        not_before: s.not_before_ns.map(at),
                        last_failure: s.last_failure.clone(),
                    };
                }
            }
            let number = g.number;
            let generation = Generation { number, config: Arc::new(g.config), role, slots, served: g.served };
            if generations.insert(number, generation).is_some() {
                return Err(format!("generation {number} appears twice"));
            }
        }
        let actives: Vec<u64> = generations.values().filter(|g| g.role == Role::Active).map(|g| g.number).collect();
        if actives != [state.active] {
            return Err(format!("active generation {} but generations {actives:?} are active", state.active));
        }
        if generations.keys().any(|&n| n >= state.next_generation) {
            return Err(format!("next generation {} is not past every generation", state.next_generation));
        }
        let mut workers = index::Workers::default();
        let mut pids = std::collections::HashSet::new();
        for w in state.workers {
            let Some(g) = generations.get(&w.generation) else {
                return Err(format!("worker {} of missing generation {}", w.id, w.generation));
            };
            // A scale-down detaches the workers of the slots it removes and lets them drain
            // (`stopping`, then maybe `killed`): their slot number is past the end, and only
            // their exit is still awaited. A worker that still serves needs its slot.
            let detached = matches!(w.state.as_str(), "stopping" | "killed");
            if w.slot >= g.slots.len() && !detached {
                return Err(format!("worker {}: slot {} out of range", w.id, w.slot));
            }
            if w.id >= state.next_worker {
                return Err(format!("worker id {} is not below the next id {}", w.id, state.next_worker));
            }
            if let Some(pid) = w.pid {
                if pid <= 0 || !pids.insert(pid) {
                    return Err(format!("worker {}: pid {pid} is invalid or appears twice", w.id));
                }
            }
            let lifecycle = match (w.state.as_str(), w.kill_at_ns) {
                ("booting", _) => WorkerState::Booting,
                ("ready", _) => WorkerState::Ready,
                ("stopping", Some(k)) => WorkerState::Stopping { kill_at: at(k) },
                ("killed", _) => WorkerState::Killed,
                (other, _) => return Err(format!("worker {}: unknown state {other:?}", w.id)),
            };
            let worker = Worker {
                generation: w.generation,
                slot: w.slot,
                pid: w.pid,
                state: lifecycle,
                since: at(w.since_ns),
                spawned_at: at(w.spawned_at_ns),
                stop_signal_pending: w.stop_signal_pending,
                watchdog_last: w.watchdog_last_ns.map(at),
                recycle_at: w.recycle_at_ns.map(at),
                status_text: w.status_text,
                timing: Timing {
                    boot_timeout: w.boot_timeout,
                    ready_delay: w.ready_delay,
                    watchdog: w.watchdog,
                    min_healthy: w.min_healthy,
                },
                ready_at: w.ready_at_ns.map(at),
                healthy: w.healthy,
                low_priority: w.low_priority,
                outcomes: w.outcomes,
                outcomes_at: w.outcomes_at_ns.map(at),
            };
            if workers.get(&WorkerId(w.id)).is_some() {
                return Err(format!("worker id {} appears twice", w.id));
            }
            workers.insert(WorkerId(w.id), worker);
        }
        for g in generations.values() {
            for (i, s) in g.slots.iter().enumerate() {
                for id in [s.current, s.successor].into_iter().flatten() {
                    match workers.get(&id) {
                        Some(w) if (w.generation, w.slot) == (g.number, i) => {
                            if !matches!(w.state, WorkerState::Booting | WorkerState::Ready) {
                                return Err(format!("slot {i} of generation {} holds a stopping worker", g.number));
                            }
                        }
                        _ => return Err(format!("slot {i} of generation {} refers to another worker", g.number)),
                    }
                }
            }
        }
        // A record's config is shared with its generation's where both exist.
        let records = state
            .records
            .into_iter()
            .map(|r| ReleaseRecord {
                generation: r.generation,
                config: generations
                    .get(&r.generation)
                    .filter(|g| *g.config == r.config)
                    .map_or_else(|| Arc::new(r.config), |g| g.config.clone()),
                release_of: r.release_of,
                rolled_back: r.rolled_back,
            })
            .collect();
        Ok(Machine {
            phase: Phase::Running,
            generations,
            workers,
            active: state.active,
            next_generation: state.next_generation,
            next_worker: state.next_worker,
            pending_reload: None,
            last_reload: state.last_reload,
            last_reload_failure: state.last_reload_failure,
            last_reload_queue_peak: state.last_reload_queue_peak,
            #[cfg(any(debug_assertions, test))]
            invariant_checks: true,
            degraded: state.degraded,
            failure_counted: false,
            worker_output: if state.output_to_journal { WorkerOutput::Journal } else { WorkerOutput::Stderr },
            last_now: now,
            verdicts_held_until: None,
            ever_ready: true,
            start_given_up: None,
            boot_lowering: false,
            open_connections: BTreeMap::new(),
            records,
            watch: state.watch.map(|w| Watch {
                generation: w.generation,
                previous: w.previous,
                baseline: w.baseline,
                until: at(w.until_ns),
                window_from: w.window_from,
                window_started: at(w.window_started_ns),
            }),
            last_verdict: state.last_verdict,
            last_auto_rollback: state.last_auto_rollback.map(|a| AutoRollback {
                from: a.from,
                at: at(a.at_ns),
                message: a.message,
            }),
            held_answer: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{Effect, Event};

    fn config(count: usize) -> Arc<Config> {
        let text = format!("[workers]\ncommand = [\"/bin/true\"]\ncount = {count}\nready = \"notify\"\n");
        let env = crate::config::LoadEnv { runtime_directory: Some("/run/x".into()), ..Default::default() };
        Arc::new(crate::config::parse(std::path::Path::new("/etc/x.toml"), &text, &env).expect("config"))
    }

    fn spawned(fx: &[Effect], next_pid: &mut i32) -> Vec<Event> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Spawn(req) => {
                    *next_pid += 1;
                    Some(Event::Spawned { worker: req.worker, pid: *next_pid })
                }
                _ => None,
            })
            .collect()
    }

    /// A machine that served gen 1, reloaded to gen 2 (gen 1 draining), with a crashed slot.
    fn busy_machine(now: Instant) -> Machine {
        let mut pid = 100;
        let (mut m, fx) = Machine::start(config(3), now);
        for ev in spawned(&fx, &mut pid) {
            m.step(ev, now);
        }
        for p in 101..=103 {
            m.step(Event::Message { sender: p, sender_pgid: None, message: super::super::WorkerMessage::Ready }, now);
        }
        let fx = m.step(Event::ReloadRequested { config: Ok(config(3)), requester: None }, now);
        let mut evs = spawned(&fx, &mut pid);
        while let Some(ev) = evs.pop() {
            let fx = m.step(ev, now);
            evs.extend(spawned(&fx, &mut pid));
        }
        for p in 104..=106 {
            m.step(Event::Message { sender: p, sender_pgid: None, message: super::super::WorkerMessage::Ready }, now);
        }
        assert!(m.is_quiet(), "reload committed: {:?}", m.phase());
        m.step(Event::Exited { pid: 105, status: "exit code 1".into() }, now + Duration::from_secs(1));
        m
    }

    #[test]
    fn a_machine_survives_the_round_trip_through_json() {
        let now = Instant::now();
        let m = busy_machine(now);
        let base = TimeBase { instant: now, monotonic_ns: 5_000_000_000 };
        let state = m.snapshot(&base).expect("quiet");
        let json = serde_json::to_string(&state).expect("serialize");
        let back: MachineState = serde_json::from_str(&json).expect("deserialize");
        // The new process reads the clocks again: a later instant for the same monotonic time.
        let later = now + Duration::from_millis(40);
        let base2 = TimeBase { instant: later, monotonic_ns: 5_040_000_000 };
        let mut r = Machine::restore(back, &base2, later).expect("restore");
        r.check_invariants();
        assert_eq!(r.status(later).workers, m.status(later).workers);
        assert_eq!(r.status_line(), m.status_line());
        assert_eq!(r.next_deadline(), m.next_deadline(), "deadlines re-armed at the same monotonic times");
        assert_eq!(r.next_generation, m.next_generation);
        // It goes on: the crashed slot respawns after its backoff, with a fresh worker id.
        let fx = r.step(Event::Tick, now + Duration::from_secs(60));
        assert!(fx.iter().any(|e| matches!(e, Effect::Spawn(s) if s.worker.0 >= m.next_worker)));
    }

    #[test]
    fn a_busy_machine_is_not_taken() {
        let now = Instant::now();
        let (mut m, _) = Machine::start(config(1), now);
        assert!(!m.is_quiet(), "starting");
        m.step(Event::Spawned { worker: WorkerId(1), pid: 50 }, now);
        m.step(Event::Message { sender: 50, sender_pgid: None, message: super::super::WorkerMessage::Ready }, now);
        assert!(m.is_quiet());
        m.step(Event::ReloadRequested { config: Ok(config(1)), requester: Some(1) }, now);
        let base = TimeBase { instant: now, monotonic_ns: 1 };
        assert!(m.snapshot(&base).is_err(), "a reload runs");
    }

    #[test]
    fn inconsistent_states_are_refused_with_the_reason() {
        let now = Instant::now();
        let base = TimeBase { instant: now, monotonic_ns: 1_000 };
        let good = busy_machine(now).snapshot(&base).expect("quiet");
        let mut bad = good.clone();
        bad.workers[1].pid = bad.workers[0].pid;
        assert!(Machine::restore(bad, &base, now).expect_err("dup pid").contains("appears twice"));
        let mut bad = good.clone();
        bad.active = 99;
        assert!(Machine::restore(bad, &base, now).is_err());
        let mut bad = good.clone();
        bad.workers[0].generation = 42;
        assert!(Machine::restore(bad, &base, now).expect_err("gen").contains("missing generation"));
        let mut bad = good.clone();
        bad.next_worker = 1;
        assert!(Machine::restore(bad, &base, now).is_err());
        let mut bad = good;
        bad.workers[0].state = "dancing".into();
        assert!(Machine::restore(bad, &base, now).expect_err("state").contains("unknown state"));
    }

    #[test]
    fn workers_draining_from_slots_a_scale_down_removed_are_handed_over() {
        // Issue 19: `scale 8; scale 2; handover upgrade` was refused ("slot 2 out of range")
        // while the surplus drained, and a scale-down during the pre-flight killed the master.
        let now = Instant::now();
        let mut pid = 100;
        let (mut m, fx) = Machine::start(config(3), now);
        for ev in spawned(&fx, &mut pid) {
            m.step(ev, now);
        }
        for p in 101..=103 {
            m.step(Event::Message { sender: p, sender_pgid: None, message: super::super::WorkerMessage::Ready }, now);
        }
        m.step(Event::ScaleRequested { to: super::super::ScaleTo::Count(1), requester: None }, now);
        let base = TimeBase { instant: now, monotonic_ns: 1_000 };
        let state = m.snapshot(&base).expect("quiet");
        let draining: Vec<_> = state.workers.iter().filter(|w| w.slot >= 1).map(|w| w.state.as_str()).collect();
        assert_eq!(draining, ["stopping", "stopping"], "two workers drain from removed slots");
        let mut r = Machine::restore(state.clone(), &base, now).expect("draining workers of removed slots");
        r.check_invariants();
        assert_eq!(r.status(now).workers, m.status(now).workers);
        // Their exits are still awaited and settle nothing in the one slot left.
        r.step(Event::Exited { pid: 102, status: "exit code 0".into() }, now);
        r.step(Event::Exited { pid: 103, status: "exit code 0".into() }, now);
        r.check_invariants();
        assert_eq!(r.status(now).workers.len(), 1);
        // A worker that still serves must have its slot.
        let mut bad = state;
        let serving = bad.workers.iter_mut().find(|w| w.state == "ready").expect("the worker left");
        serving.slot = 5;
        assert!(Machine::restore(bad, &base, now).expect_err("ready, no slot").contains("slot 5 out of range"));
    }

    #[test]
    fn instants_convert_both_ways() {
        let now = Instant::now();
        let base = TimeBase { instant: now, monotonic_ns: 10_000_000_000_000 };
        for d in [Duration::ZERO, Duration::from_millis(1), Duration::from_secs(3600)] {
            assert_eq!(base.to_instant(base.to_ns(now + d)), now + d);
            assert_eq!(base.to_ns(now - d), 10_000_000_000_000 - d.as_nanos() as u64);
        }
    }
}
