//! The one rule the machine applies after every event: desired against actual.
//!
//! Each generation says which slots it wants; [`Machine::reconcile`] spawns what is missing
//! (a rolling candidate only `max_surge` at a time), gives up the slots of generations on
//! their way out one per ready worker of the generation replacing them ("capacity never
//! drops by choice"), starts recycling successors, and advances the phase once readiness
//! allows. Handling the same state twice emits nothing new.
use std::time::Instant;

use crate::config::{BootPriority, Strategy};

use super::{
    describe, log, Effect, Level, Machine, Phase, Role, SpawnRequest, SystemdMessage, Timing, Worker, WorkerId,
    WorkerState,
};

impl Machine {
    /// Desired against actual: spawn what is missing, retire what is surplus, advance the
    /// phase. Idempotent.
    pub(super) fn reconcile(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if matches!(self.phase, Phase::Stopping { .. }) {
            if self.workers.is_empty() {
                let code = if self.start_given_up.is_some() { super::policy::START_FAILED_EXIT } else { 0 };
                fx.push(log(Level::Info, "stopped", "every worker has exited; exiting".into(), None, None, None));
                fx.push(Effect::Exit { code });
                self.generations.retain(|&n, _| n == self.active);
            }
            return;
        }
        // A phase change (a commit that starts a queued reload, say) changes what is wanted:
        // go round again until nothing moves. Each round either changes the phase or ends.
        for _ in 0..4 {
            self.retire_surplus(now, fx);
            self.spawn_missing(now, fx);
            self.recycle_due(now, fx);
            if !self.advance_phase(now, fx) {
                break;
            }
        }

        self.judge_watch(now, fx);

        // Forget generations that have nothing left.
        let active = self.active;
        let candidate = match &self.phase {
            Phase::Reloading(r) => Some(r.candidate),
            _ => None,
        };
        let workers = &self.workers;
        let mut forgotten = Vec::new();
        self.generations.retain(|&n, g| {
            let keep = n == active || Some(n) == candidate || workers.has_generation(n) || g.slots.wanted_count() > 0;
            if !keep {
                forgotten.push(n);
            }
            keep
        });
        if !forgotten.is_empty() {
            fx.push(Effect::Forgotten { generations: forgotten });
        }
    }

    /// Phase transitions that follow from readiness; true if the phase changed.
    fn advance_phase(&mut self, now: Instant, fx: &mut Vec<Effect>) -> bool {
        match &self.phase {
            Phase::Starting => {
                let n = self.gen(self.active).slots.len();
                if self.ready_count(self.active) < n {
                    return false;
                }
                self.phase = Phase::Running;
                self.record_release(self.active, super::ReloadKind::Reload, None);
                let msg = format!("generation {} serves: {n}/{n} workers ready", self.active);
                fx.push(log(Level::Info, "ready", msg, Some(self.active), None, None));
                fx.push(Effect::Systemd(vec![SystemdMessage::Ready]));
                self.start_pending_reload(fx);
                true
            }
            Phase::Reloading(r) => {
                let c = r.candidate;
                if r.canary.is_some() {
                    // The canary stage holds the commit; it may pass (the rest is wanted
                    // now) or fail (the phase is Running again).
                    return self.advance_canary(now, fx);
                }
                if self.healthy_count(c) < self.gen(c).slots.len() {
                    return false;
                }
                self.commit_reload(now, fx);
                true
            }
            Phase::Running | Phase::Stopping { .. } => false,
        }
    }

    fn spawn_missing(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let candidate = match &self.phase {
            Phase::Reloading(r) => Some(r.candidate),
            _ => None,
        };
        let numbers: Vec<u64> = self.generations.keys().copied().collect();
        for n in numbers {
            let g = self.gen(n);
            let mut budget = usize::MAX;
            if Some(n) == candidate && g.config.reload.strategy == Strategy::Rolling {
                let booting = self.workers.counts(n).booting;
                budget = g.config.reload.max_surge.saturating_sub(booting);
            }
            if g.role == Role::Outgoing {
                continue; // outgoing generations never spawn
            }
            // Only the vacant slots (wanted, no worker), ascending, from the slot index.
            let vacant: Vec<usize> = g
                .slots
                .vacant()
                .filter(|&slot| g.slots[slot].not_before.is_none_or(|t| t <= now))
                .take(budget)
                .collect();
            for slot in vacant {
                let id = self.new_worker(n, slot, now, fx);
                if let Some(mut s) = self.gen_mut(n).slots.get_mut(slot) {
                    s.current = Some(id);
                }
            }
        }
    }

    /// Gives up wanted slots of generations that are on their way out, one per ready worker
    /// of the generation that replaces them (the capacity rule).
    fn retire_surplus(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let (incoming, others_include_active) = match &self.phase {
            // Canaries start beside the whole old generation: nothing retires while they
            // are judged.
            Phase::Reloading(r)
                if r.canary.is_none() && self.gen(r.candidate).config.reload.strategy == Strategy::Rolling =>
            {
                (r.candidate, true)
            }
            _ => (self.active, false),
        };
        let target = self.gen(incoming).slots.len();
        // A new worker replaces an old one only once it is healthy (min_healthy_time).
        let ready_in = self.healthy_count(incoming);
        // Nothing to give up (the common case, decided from the counts alone).
        let wanted_eligible: usize = self
            .generations
            .values()
            .filter(|g| {
                g.number != incoming && (g.role == Role::Outgoing || (others_include_active && g.role == Role::Active))
            })
            .map(|g| g.slots.wanted_count())
            .sum();
        if ready_in + wanted_eligible <= target {
            return;
        }
        // Candidates for retirement: outgoing generations first (oldest first), then, in a
        // rolling reload, the active generation; highest slot first, non-ready first.
        let mut order: Vec<(u64, usize)> = Vec::new();
        for g in self.generations.values() {
            let eligible =
                g.number != incoming && (g.role == Role::Outgoing || (others_include_active && g.role == Role::Active));
            if !eligible {
                continue;
            }
            for (i, s) in g.slots.iter().enumerate().rev() {
                if s.wanted {
                    order.push((g.number, i));
                }
            }
        }
        order.sort_by_key(|&(n, i)| {
            let g = self.gen(n);
            let ready =
                g.slots[i].current.and_then(|id| self.workers.get(&id)).is_some_and(|w| w.state == WorkerState::Ready);
            (g.role == Role::Active, ready, n, std::cmp::Reverse(i))
        });
        let mut wanted_others = order.len();
        for (n, i) in order {
            if ready_in + wanted_others <= target {
                break;
            }
            let Some(mut s) = self.gen_mut(n).slots.get_mut(i) else { continue };
            s.wanted = false;
            let ids: Vec<WorkerId> = [s.current, s.successor].into_iter().flatten().collect();
            drop(s);
            for id in ids {
                self.stop_worker(id, now, fx);
            }
            wanted_others -= 1;
        }
    }

    fn recycle_due(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if self.phase != Phase::Running {
            return;
        }
        let active = self.active;
        // A worker due for recycling has reached its deadline (recycle_at is one): only the
        // due workers of the deadline index are candidates, in slot order.
        let mut due: Vec<usize> = self
            .workers
            .due(now)
            .into_iter()
            .filter_map(|id| self.workers.get(&id))
            .filter(|w| w.generation == active && w.state == WorkerState::Ready)
            .filter(|w| w.recycle_at.is_some_and(|t| t <= now))
            .map(|w| w.slot)
            .collect();
        due.sort_unstable();
        due.dedup();
        for slot in due {
            let Some(s) = self.gen(active).slots.get(slot) else { continue };
            if !s.wanted || s.successor.is_some() || s.not_before.is_some_and(|t| t > now) {
                continue;
            }
            let Some(cur) = s.current.and_then(|id| self.workers.get(&id)) else { continue };
            if cur.state != WorkerState::Ready || cur.recycle_at.is_none_or(|t| t > now) {
                continue;
            }
            let msg = format!("recycling {}: starting its replacement", describe(cur));
            fx.push(log(Level::Info, "worker-recycle", msg, Some(active), Some(slot), cur.pid));
            let id = self.new_worker(active, slot, now, fx);
            if let Some(mut s) = self.gen_mut(active).slots.get_mut(slot) {
                s.successor = Some(id);
            }
        }
    }

    fn new_worker(&mut self, generation: u64, slot: usize, now: Instant, fx: &mut Vec<Effect>) -> WorkerId {
        let id = WorkerId(self.next_worker);
        self.next_worker += 1;
        let timing = Timing::of(&self.gen(generation).config);
        // Low only beside serving workers: a first start, or a respawn with nothing
        // serving, takes the CPU it can get (SPEC §5 "Boot priority").
        let low_priority = self.boot_lowering
            && self.gen(generation).config.reload.boot_priority == BootPriority::Low
            && self.serving_workers() > 0;
        self.workers.insert(
            id,
            Worker {
                generation,
                slot,
                pid: None,
                state: WorkerState::Booting,
                since: now,
                spawned_at: now,
                stop_signal_pending: None,
                watchdog_last: None,
                recycle_at: None,
                status_text: None,
                timing,
                ready_at: None,
                healthy: false,
                low_priority,
                outcomes: super::Tally::default(),
                outcomes_at: None,
            },
        );
        let config = self.gen(generation).config.clone();
        fx.push(Effect::Spawn(SpawnRequest { worker: id, generation, slot, config, low_priority }));
        id
    }
}
