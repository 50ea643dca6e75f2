//! The machine seen from outside: the one-line `STATUS=` summary and the `handover status`
//! report. Read-only views; nothing here changes state.
use std::time::Instant;

use crate::control::proto;

use super::{Machine, Phase, Role, WorkerState};

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
            line.push_str(&format!("; degraded: {} slots in crash-loop backoff", failing.len()));
            if let Some(last) = failing.iter().find_map(|f| f.last_failure.as_deref()) {
                line.push_str(", last: ");
                line.push_str(last);
            }
        }
        if let Some(why) = &self.last_reload_failure {
            line.push_str("; last reload failed: ");
            line.push_str(why);
        }
        line
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
    pub fn status(&self, now: Instant) -> proto::Status {
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
                proto::GenerationStatus {
                    generation: g.number,
                    role: g.role.as_str().into(),
                    wanted: g.slots.wanted_count(),
                    ready: counts.ready,
                    booting: counts.booting,
                    draining: counts.draining,
                }
            })
            .collect();
        let mut workers: Vec<proto::WorkerStatus> = self
            .workers
            .values()
            .map(|w| proto::WorkerStatus {
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
            })
            .collect();
        workers.sort_by_key(|w| (std::cmp::Reverse(w.generation), w.slot, w.pid));
        proto::Status {
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
                .map(|f| proto::FailingSlotStatus {
                    generation: f.generation,
                    slot: f.slot,
                    restarts: f.restarts,
                    last_failure: f.last_failure,
                    next_attempt_secs: f.next_attempt.map(|t| t.saturating_duration_since(now).as_secs_f64()),
                })
                .collect(),
            // The executor's to fill in (the machine knows no binary, nor the wall clock).
            ..proto::Status::default()
        }
    }
}
