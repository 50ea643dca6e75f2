//! Reloads: a new generation requested, begun, reported on, committed or rolled back, and
//! the reload queued behind it started. The machine's state and the other handlers are in
//! `mod.rs`; the rule applied after every event in `reconcile.rs`.
use super::*;

impl Machine {
    pub(super) fn on_reload_requested(
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
            Phase::Running => self.begin_reload(config, requester.into_iter().collect(), ReloadKind::Reload, fx),
        }
    }

    pub(super) fn begin_reload(
        &mut self,
        config: Result<Arc<Config>, String>,
        waiters: Vec<RequestId>,
        kind: ReloadKind,
        fx: &mut Vec<Effect>,
    ) {
        // The answer of a failed canary reload comes first, whether its canaries are gone yet
        // or not: `READY=1` follows every `RELOADING=1`.
        self.release_held_answer(true, fx);
        fx.push(Effect::Systemd(vec![SystemdMessage::Reloading]));
        // A new reload ends the watch of the last one: what it judged is being replaced.
        self.watch = None;
        let config = match config {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("invalid config: {e}");
                let msg = format!("reload failed, still serving gen {}: {reason}", self.active);
                fx.push(log(Level::Error, "reload-failed", msg.clone(), Some(self.active), None, None));
                self.last_reload = Some(msg);
                self.last_reload_failure = Some(reason.clone());
                // No reload ran: no peak to show beside this result.
                self.last_reload_queue_peak.clear();
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
                "reloading: generation {candidate} with {} ({strategy}) replaces generation {previous}",
                count(g.slots.len(), "worker", "workers")
            ),
            Some(candidate),
            None,
            None,
        ));
        let previous_at_begin = self.gen(previous).served;
        self.phase = Phase::Reloading(Reloading {
            candidate,
            previous,
            waiters,
            queue_peak: BTreeMap::new(),
            kind,
            canary: None,
            previous_at_begin,
        });
        self.begin_canary(candidate, previous, fx);
    }

    /// Tells the clients waiting on a reload how far its generation has come.
    pub(super) fn report_progress(&self, generation: u64, fx: &mut Vec<Effect>) {
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

    /// The reload failed: stop the candidate's booting workers, keep serving the previous
    /// generation, answer the waiters, tell systemd we are ready again.
    pub(super) fn fail_reload(&mut self, reason: String, now: Instant, fx: &mut Vec<Effect>) {
        let Phase::Reloading(r) = std::mem::replace(&mut self.phase, Phase::Running) else { return };
        let candidate = r.candidate;
        self.gen_mut(candidate).role = Role::Outgoing;
        // Booting candidate workers are useless: stop them (gracefully: a worker that never
        // said READY=1 may still be serving requests it accepted). Failed canaries too, ready
        // or not: they ran beside the whole old generation, so no capacity goes with them,
        // and they are the release that failed.
        let canary = r.canary.is_some();
        let ids: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.generation == candidate)
            .filter(|(_, w)| w.state == WorkerState::Booting || (canary && w.state == WorkerState::Ready))
            .map(|(id, _)| *id)
            .collect();
        for &id in &ids {
            self.stop_worker(id, now, fx);
        }
        self.gen_mut(candidate).slots.unwant_vacant();
        // Rolling: slots of the previous generation retired during this reload are wanted
        // again; its ready candidate workers serve until they are replaced.
        self.gen_mut(r.previous).slots.set_all_wanted(true);
        let msg = format!(
            "reload to generation {candidate} failed, rolled back; generation {} serves: {reason}{}",
            r.previous,
            peak_clause(&r.queue_peak)
        );
        self.last_reload_queue_peak = r.queue_peak;
        fx.push(log(Level::Error, "reload-failed", msg.clone(), Some(candidate), None, None));
        self.last_reload = Some(msg);
        self.last_reload_failure = Some(format!("gen {candidate} rolled back: {reason}"));
        let replies: Vec<(RequestId, Outcome)> = r
            .waiters
            .into_iter()
            .map(|w| (w, Outcome { generation: Some(r.previous), ..Outcome::error(reason.clone()) }))
            .collect();
        // A failed canary may still be answering requests it accepted (with the errors it was
        // failed for): the reload is answered, and systemd told READY=1, once those workers
        // are gone, so that nothing of the release answers after `systemctl reload` returned
        // (at most graceful_timeout later: then they are SIGKILLed).
        let draining: Vec<WorkerId> = ids.into_iter().filter(|id| self.workers.get(id).is_some()).collect();
        if canary && !draining.is_empty() {
            self.held_answer = Some(HeldAnswer { workers: draining, replies });
        } else {
            fx.push(Effect::Systemd(vec![SystemdMessage::Ready]));
            for (w, outcome) in replies {
                fx.push(done(w, outcome));
            }
        }
        self.start_pending_reload(fx);
    }

    pub(super) fn commit_reload(&mut self, now: Instant, fx: &mut Vec<Effect>) {
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
            "reload succeeded: generation {candidate} serves with {n}/{n} workers ready; generation {} drains{}",
            r.previous,
            peak_clause(&r.queue_peak)
        );
        self.last_reload_queue_peak = r.queue_peak;
        fx.push(log(Level::Info, "reload-succeeded", msg.clone(), Some(candidate), None, None));
        if matches!(r.kind, ReloadKind::Rollback { .. } | ReloadKind::AutoRollback { .. }) {
            let msg = format!(
                "rolled back: generation {candidate} runs the release it went back to; generation {} drains",
                r.previous
            );
            fx.push(log(Level::Info, "rolled-back", msg, Some(candidate), None, None));
        }
        self.record_release(candidate, r.kind, Some(r.previous));
        if r.kind == ReloadKind::Reload {
            // A new release serves: an earlier automatic rollback is history.
            self.last_auto_rollback = None;
            self.begin_watch(candidate, r.previous, now, fx);
        }
        self.last_reload = Some(msg.clone());
        self.last_reload_failure = None;
        fx.push(Effect::Systemd(vec![SystemdMessage::Ready]));
        fx.push(Effect::Committed { generation: candidate });
        for w in r.waiters {
            fx.push(done(w, Outcome { generation: Some(candidate), ..Outcome::ok(msg.clone()) }));
        }
        self.start_pending_reload(fx);
    }

    pub(super) fn start_pending_reload(&mut self, fx: &mut Vec<Effect>) {
        if self.phase != Phase::Running {
            return;
        }
        if let Some(p) = self.pending_reload.take() {
            self.begin_reload(p.config, p.waiters, ReloadKind::Reload, fx);
        }
    }

    /// Keeps the longest accept queue of each socket seen during the running reload (the
    /// executor reads them only then; a reading outside a reload is ignored).
    pub(super) fn note_accept_queues(&mut self, samples: Vec<QueueSample>) {
        let Phase::Reloading(r) = &mut self.phase else { return };
        for QueueSample { socket, length } in samples {
            let peak = r.queue_peak.entry(socket).or_insert(0);
            *peak = (*peak).max(length);
        }
    }

    /// Answers a failed canary reload (READY=1 to systemd, its waiters) once its canaries are
    /// gone, or at once with `now`.
    pub(super) fn release_held_answer(&mut self, now: bool, fx: &mut Vec<Effect>) {
        let Some(held) = &self.held_answer else { return };
        if !now && held.workers.iter().any(|id| self.workers.get(id).is_some()) {
            return;
        }
        let Some(held) = self.held_answer.take() else { return };
        fx.push(Effect::Systemd(vec![SystemdMessage::Ready]));
        for (w, outcome) in held.replies {
            fx.push(done(w, outcome));
        }
    }

    // ----------------------------------------------------------------- queries

    /// The longest accept queue of each listening socket (by name) during the reload that
    /// runs, or else the last one that ran; empty when there is none or no queue was read.
    pub fn reload_queue_peak(&self) -> &BTreeMap<String, u32> {
        match &self.phase {
            Phase::Reloading(r) => &r.queue_peak,
            _ => &self.last_reload_queue_peak,
        }
    }
}

/// The end of a reload's result line: `; peak accept queue 3` (one socket), `; peak accept
/// queue: http 3, admin 0` (several), nothing when no queue could be read.
fn peak_clause(peak: &BTreeMap<String, u32>) -> String {
    match peak.len() {
        0 => String::new(),
        1 => format!("; peak accept queue {}", peak.values().next().copied().unwrap_or(0)),
        _ => {
            let each: Vec<String> = peak.iter().map(|(name, n)| format!("{name} {n}")).collect();
            format!("; peak accept queue: {}", each.join(", "))
        }
    }
}
