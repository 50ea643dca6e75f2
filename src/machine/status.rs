//! The machine seen from outside: the one-line `STATUS=` summary and the `handover status`
//! report. Read-only views; nothing here changes state.
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Machine, Phase, Role, WorkerState};
use crate::text::count;

impl Machine {
    /// The one-line summary for `STATUS=` and `handover status`.
    pub fn status_line(&self) -> String {
        let mut parts = Vec::new();
        let prefix = match &self.phase {
            Phase::Starting => "starting; ",
            Phase::Stopping { .. } => "stopping; ",
            _ => "",
        };
        for g in self.generations.values().rev() {
            // From the indexes: this line is rebuilt after every event.
            let ready = self.ready_count(g.number);
            let draining = self.workers.counts(g.number).draining;
            let wanted = g.slots.wanted_count();
            let mut p = match g.role {
                Role::Candidate if !g.config.reload.min_healthy_time.is_zero() => format!(
                    "gen {}: reloading {ready}/{} ready, {} healthy",
                    g.number,
                    g.slots.len(),
                    self.healthy_count(g.number)
                ),
                Role::Candidate if self.canary_on() => {
                    format!("gen {}: canary {ready}/{} ready", g.number, g.slots.wanted_count())
                }
                Role::Candidate => format!("gen {}: reloading {ready}/{} ready", g.number, g.slots.len()),
                Role::Active => format!("gen {}: {ready}/{} ready", g.number, g.slots.len()),
                Role::Outgoing if wanted > 0 => format!("gen {}: {ready} serving until replaced", g.number),
                Role::Outgoing => format!("gen {}:", g.number),
            };
            if draining > 0 {
                p.push_str(&format!(" draining {draining}"));
            }
            if g.role == Role::Outgoing && wanted == 0 && draining == 0 {
                continue;
            }
            parts.push(p);
        }
        let mut line = format!("{prefix}{}", parts.join("; "));
        if self.degraded {
            let failing = self.degraded_slots();
            line.push_str(&format!("; degraded: {} in crash-loop backoff", count(failing.len(), "slot", "slots")));
            if let Some(last) = failing.iter().find_map(|f| f.last_failure.as_deref()) {
                line.push_str(", last: ");
                line.push_str(last);
            }
        }
        if let Some(why) = &self.start_given_up {
            line.push_str("; ");
            line.push_str(why);
        }
        if let Some(a) = &self.last_auto_rollback {
            line.push_str("; ");
            line.push_str(&a.message);
        }
        if let Some(w) = &self.watch {
            line.push_str(&format!("; watching gen {}", w.generation));
        }
        if let Some(why) = &self.last_reload_failure {
            line.push_str("; last reload failed: ");
            line.push_str(why);
        }
        line
    }

    /// The request outcomes each generation's workers reported, oldest first.
    pub fn generation_outcomes(&self) -> Vec<(u64, super::Tally)> {
        self.generations.values().map(|g| (g.number, g.served)).collect()
    }

    /// The workers of every generation by state (`booting`, `ready`, `draining`: told to
    /// stop, or SIGKILLed and not reaped yet), for the metrics. From the indexes: cheap
    /// whatever the number of workers.
    pub fn workers_by_state(&self) -> [(&'static str, usize); 3] {
        let (mut booting, mut ready, mut draining) = (0, 0, 0);
        for g in self.generations.keys() {
            let c = self.workers.counts(*g);
            booting += c.booting;
            ready += c.ready;
            draining += c.draining;
        }
        [("booting", booting), ("ready", ready), ("draining", draining)]
    }

    /// The state for `handover status` (sockets and pid are filled in by the executor).
    pub fn status(&self, now: Instant) -> Status {
        let phase = match &self.phase {
            Phase::Starting => "starting",
            Phase::Running if self.degraded => "degraded",
            Phase::Running => "running",
            Phase::Reloading(_) => "reloading",
            Phase::Stopping { .. } => "stopping",
        };
        let generations = self
            .generations
            .values()
            .rev()
            .map(|g| {
                let counts = self.workers.counts(g.number);
                GenerationStatus {
                    generation: g.number,
                    role: g.role.as_str().into(),
                    wanted: g.slots.wanted_count(),
                    ready: counts.ready,
                    booting: counts.booting,
                    draining: counts.draining,
                    requests: g.served.requests,
                    errors: g.served.errors,
                }
            })
            .collect();
        let mut workers: Vec<WorkerStatus> = self
            .workers
            .values()
            .map(|w| WorkerStatus {
                slot: w.slot,
                pid: w.pid.unwrap_or(0),
                generation: w.generation,
                state: match w.state {
                    WorkerState::Booting => "booting",
                    WorkerState::Ready => "ready",
                    WorkerState::Stopping { .. } => "draining",
                    WorkerState::Killed => "killed",
                }
                .into(),
                since_secs: now.saturating_duration_since(w.since).as_secs_f64(),
                restarts: self
                    .generations
                    .get(&w.generation)
                    .and_then(|g| g.slots.get(w.slot))
                    .map_or(0, |s| s.restarts),
                status: w.status_text.clone(),
                memory_bytes: None, // filled in by the executor (cgroup per worker)
                cpu_usec: None,
                low_priority: w.low_priority && w.state == WorkerState::Booting,
                open_connections: None, // filled in by the executor (draining workers)
            })
            .collect();
        workers.sort_by_key(|w| (std::cmp::Reverse(w.generation), w.slot, w.pid));
        Status {
            name: self.active_config().name.clone(),
            pid: 0,
            phase: phase.into(),
            summary: self.status_line(),
            active_generation: self.active,
            candidate_generation: match &self.phase {
                Phase::Reloading(r) => Some(r.candidate),
                _ => None,
            },
            generations,
            workers,
            sockets: vec![],
            last_reload: self.last_reload.clone(),
            failing: self
                .degraded_slots()
                .into_iter()
                .map(|f| FailingSlotStatus {
                    generation: f.generation,
                    slot: f.slot,
                    restarts: f.restarts,
                    last_failure: f.last_failure,
                    next_attempt_secs: f.next_attempt.map(|t| t.saturating_duration_since(now).as_secs_f64()),
                })
                .collect(),
            canary: match &self.phase {
                Phase::Reloading(r) => r.canary.as_ref().map(|c| CanaryStatus {
                    generation: r.candidate,
                    canaries: c.canaries,
                    secs_left: self.canary_deadline().map(|t| t.saturating_duration_since(now).as_secs_f64()),
                }),
                _ => None,
            },
            watch: self.watch.as_ref().map(|w| WatchStatus {
                generation: w.generation,
                secs_left: w.until.saturating_duration_since(now).as_secs_f64(),
            }),
            verdict: self.last_verdict.clone(),
            auto_rollback: self.last_auto_rollback.as_ref().map(|a| AutoRollbackStatus {
                generation: a.from,
                secs_ago: now.saturating_duration_since(a.at).as_secs_f64(),
                message: a.message.clone(),
            }),
            rollback_to: self.rollback_target().ok().map(|(g, _)| g),
            // The executor's to fill in (the machine knows no binary, nor the wall clock).
            ..Status::default()
        }
    }
}

/// What `handover status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Status {
    /// The app name from the config.
    pub name: String,
    /// The daemon's pid.
    pub pid: u32,
    /// `starting`, `running`, `degraded` (running, but slots are failing: see `failing`),
    /// `reloading` or `stopping`.
    pub phase: String,
    /// The one-line summary also sent as `STATUS=`.
    pub summary: String,
    /// The generation that serves (the rollback target during a reload).
    pub active_generation: u64,
    /// The generation a reload is rolling in, if any.
    pub candidate_generation: Option<u64>,
    /// Every generation that still has workers, newest first.
    pub generations: Vec<GenerationStatus>,
    /// Every worker process, by generation then slot.
    pub workers: Vec<WorkerStatus>,
    /// The listening sockets passed to workers.
    pub sockets: Vec<SocketStatus>,
    /// The last reload's result, if any.
    pub last_reload: Option<String>,
    /// Slots of the active generation that are failing (crash-loop backoff): the daemon is
    /// degraded while this is not empty.
    #[serde(default)]
    pub failing: Vec<FailingSlotStatus>,
    /// The running handover's version.
    #[serde(default)]
    pub version: String,
    /// Since when this version runs the daemon (the start, or the last upgrade), in seconds
    /// since the epoch.
    #[serde(default)]
    pub version_since_unix: f64,
    /// When the daemon first started (upgrades keep it), in seconds since the epoch.
    #[serde(default)]
    pub started_unix: f64,
    /// In-place upgrades in the daemon's life.
    #[serde(default)]
    pub upgrades: u32,
    /// The version before the last upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgraded_from: Option<String>,
    /// How workers are kept apart: "process group per worker", or "cgroup per worker in
    /// DIR (controllers: …)" where handover's cgroup is delegated.
    #[serde(default)]
    pub worker_isolation: String,
    /// How a generation that boots beside a serving one is prioritised: "low: …" with the
    /// means (cgroup cpu.weight or nice), or "normal" and why.
    #[serde(default)]
    pub boot_priority: String,
    /// Why the `[metrics] textfile` cannot be written (its directory removed, not writable),
    /// while that lasts: metrics are optional, so this is reported and nothing waits on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_error: Option<String>,
    /// The running reload's canary stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    /// The running watch of the last reload (`reload.watch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchStatus>,
    /// The last verdict on a canary or a watched generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// The last rollback that `watch` did by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<AutoRollbackStatus>,
    /// The generation whose release `handover rollback` would go back to; None: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<u64>,
}

/// A slot in crash-loop backoff, in [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailingSlotStatus {
    /// Its generation (the active one).
    pub generation: u64,
    /// The slot.
    pub slot: usize,
    /// Respawns after failures so far.
    pub restarts: u32,
    /// How its last worker failed.
    pub last_failure: Option<String>,
    /// Seconds until the next attempt; `None` while a new worker boots in it.
    pub next_attempt_secs: Option<f64>,
}

/// One generation in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationStatus {
    /// Its number (1 at start, +1 per reload).
    pub generation: u64,
    /// `active`, `candidate` or `outgoing`.
    pub role: String,
    /// Workers wanted.
    pub wanted: usize,
    /// Workers ready.
    pub ready: usize,
    /// Workers booting (spawned, not ready yet).
    pub booting: usize,
    /// Workers told to stop and not gone yet.
    pub draining: usize,
    /// Requests its workers reported answering (`X_HANDOVER_REQUESTS=`), over their lives.
    #[serde(default)]
    pub requests: u64,
    /// Of those, the ones they reported as failed (`X_HANDOVER_ERRORS=`).
    #[serde(default)]
    pub errors: u64,
}

/// A reload's canary stage in [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryStatus {
    /// The candidate generation.
    pub generation: u64,
    /// How many canaries.
    pub canaries: usize,
    /// Seconds left of `canary_time`; None until every canary is ready.
    pub secs_left: Option<f64>,
}

/// A running watch in [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchStatus {
    /// The watched generation.
    pub generation: u64,
    /// Seconds until the watch ends.
    pub secs_left: f64,
}

/// The last automatic rollback in [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoRollbackStatus {
    /// The generation it rolled back (the watched one).
    #[serde(default)]
    pub generation: u64,
    /// Seconds since it happened (a client turns it into a time of day).
    pub secs_ago: f64,
    /// What was said.
    pub message: String,
}

/// One worker process in [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its slot in the generation (HANDOVER_WORKER_SLOT).
    pub slot: usize,
    /// Its pid (0 while being spawned).
    pub pid: i32,
    /// Its generation (HANDOVER_GENERATION).
    pub generation: u64,
    /// `booting`, `ready`, `draining` or `killed`.
    pub state: String,
    /// Seconds since it entered that state.
    pub since_secs: f64,
    /// How many times its slot has been respawned after a failure.
    pub restarts: u32,
    /// The last `STATUS=` it sent, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<String>,
    /// Its cgroup's `memory.current`, bytes (cgroup per worker with the memory controller).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub memory_bytes: Option<u64>,
    /// Its cgroup's CPU time (`cpu.stat` `usage_usec`), microseconds (cgroup per worker).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cpu_usec: Option<u64>,
    /// Booting at the low CPU priority (`reload.boot_priority`); absent once raised.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub low_priority: bool,
    /// A draining worker's open client connections: sockets its processes hold that were
    /// accepted from handover's listening sockets, read when the status was asked for.
    /// Absent for the other states, and where they could not be read.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub open_connections: Option<usize>,
}

/// One listening socket in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketStatus {
    /// Its name (LISTEN_FDNAMES / FDNAME).
    pub name: String,
    /// Its bound address.
    pub address: String,
    /// `systemd` (socket activation), `fdstore` or `bound` (by handover).
    pub origin: String,
    /// Connections waiting to be accepted, read for this status; `None` where the kernel
    /// does not tell (the sockets module says where it can).
    #[serde(default)]
    pub accept_queue: Option<u32>,
    /// The most connections the kernel queues on it (the listen backlog); `None` as above.
    #[serde(default)]
    pub accept_queue_limit: Option<u32>,
    /// The longest accept queue seen during the last reload (the one running, if any);
    /// `None` before the first reload, or where the queue cannot be read.
    #[serde(default)]
    pub reload_peak_accept_queue: Option<u32>,
}
