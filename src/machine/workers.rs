//! The worker lifecycle: spawned, ready, healthy, told to stop, killed, gone; its messages,
//! memory samples and deadlines (boot timeout, watchdog, stop), and the failures counted per
//! slot (backoff, degraded). Reloads are in `reload.rs`.
use super::*;

impl Machine {
    pub(super) fn on_spawned(&mut self, id: WorkerId, pid: Pid, now: Instant, fx: &mut Vec<Effect>) {
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
    pub(super) fn on_worker_gone(&mut self, id: WorkerId, w: Worker, why: &str, now: Instant, fx: &mut Vec<Effect>) {
        let (generation, slot) = (w.generation, w.slot);
        let who = describe(&w);
        let output = self.output_hint(w.pid);
        // A canary is on trial until its stage passes: any failure of it fails the reload.
        let on_trial = !w.healthy || self.canary_on();
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
                if role == Role::Candidate && on_trial {
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
                    let delay = self.count_failure(generation, slot, uptime, &reason, now);
                    fx.push(log(
                        Level::Warn,
                        "worker-failed",
                        format!("{reason}; respawning in {}", human(delay)),
                        Some(generation),
                        Some(slot),
                        w.pid,
                    ));
                }
            }
        }
    }

    pub(super) fn on_message(
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
            WorkerMessage::Outcomes { requests, errors } => self.on_outcomes(id, requests, errors, now, fx),
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
                        let delay = self.count_failure(generation, slot, uptime, &format!("{msg} (STOPPING=1)"), now);
                        msg.push_str(&format!("; its replacement starts in {}", human(delay)));
                    }
                    fx.push(log(Level::Info, "worker-stopping", msg, Some(generation), Some(slot), pid));
                }
            }
        }
    }

    pub(super) fn on_memory(&mut self, pid: Pid, rss: u64, now: Instant, fx: &mut Vec<Effect>) {
        let Some(id) = self.worker_by_pid(pid) else { return };
        let canary_on = self.canary_on();
        let Some(mut w) = self.workers.get_mut(&id) else { return };
        let Some(limit) = self.generations.get(&w.generation).and_then(|g| g.config.workers.max_memory) else { return };
        let canary = self.generations.get(&w.generation).is_some_and(|g| g.role == Role::Candidate) && canary_on;
        if rss > limit && w.state == WorkerState::Ready && canary {
            let reason = format!("{} uses {} MiB > max_memory {} MiB", describe(&w), rss >> 20, limit >> 20);
            let generation = w.generation;
            drop(w);
            let reason = format!("gen {generation} canary failed: {reason}");
            fx.push(log(Level::Error, "canary-failed", reason.clone(), Some(generation), None, Some(pid)));
            self.last_verdict = Some(reason.clone());
            return self.fail_reload(reason, now, fx);
        }
        if rss > limit && w.state == WorkerState::Ready && w.recycle_at.is_none_or(|t| t > now) {
            w.recycle_at = Some(now);
            let msg = format!("{} uses {} MiB > max_memory {} MiB; recycling", describe(&w), rss >> 20, limit >> 20);
            fx.push(log(Level::Info, "worker-recycle", msg, Some(w.generation), Some(w.slot), w.pid));
        }
    }

    pub(super) fn check_deadlines(&mut self, now: Instant, fx: &mut Vec<Effect>) {
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
                        continue;
                    }
                    let raise_at = policy::deadline(w.spawned_at, policy::raise_priority_after(wc.boot_timeout));
                    if w.low_priority && now >= raise_at {
                        let why = format!("3/4 of its boot_timeout {} have passed", human(wc.boot_timeout));
                        self.raise_priority(id, &why, fx);
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
                        // The executor's sample, taken right before this step (see
                        // `kills_due`); none where it could not read them.
                        let open = match w.pid.and_then(|pid| self.open_connections.get(&pid)) {
                            Some(&n) => format!(" with {}", count(n, "open connection", "open connections")),
                            None => String::new(),
                        };
                        let msg = format!(
                            "{} killed after graceful_timeout {}{open}: SIGKILL to its process group",
                            describe(w),
                            human(kill_at.saturating_duration_since(w.since))
                        );
                        fx.push(log(Level::Warn, "worker-killed", msg, Some(w.generation), Some(w.slot), w.pid));
                        self.kill_worker(id, fx);
                    }
                }
                WorkerState::Killed => {}
            }
        }
    }

    /// Pids of the workers that a step at `now` SIGKILLs because their graceful_timeout
    /// has passed (what `check_deadlines` does with them): the executor samples their open
    /// connections first and feeds them as [`Event::OpenConnections`]. Looks at the due
    /// deadlines only, as `check_deadlines` does.
    pub fn kills_due(&self, now: Instant) -> Vec<Pid> {
        self.workers
            .due(now)
            .iter()
            .filter_map(|id| self.workers.get(id))
            .filter_map(|w| match w.state {
                WorkerState::Stopping { kill_at } if now >= kill_at => w.pid,
                _ => None,
            })
            .collect()
    }

    /// Pids of the draining workers: told to stop (or stopping by themselves), not exited
    /// and not SIGKILLed yet. The ones whose open connections status and metrics show.
    pub fn draining_pids(&self) -> Vec<Pid> {
        self.workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Stopping { .. }))
            .filter_map(|w| w.pid)
            .collect()
    }

    pub(super) fn boot_timed_out(&mut self, id: WorkerId, now: Instant, fx: &mut Vec<Effect>) {
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

    pub(super) fn watchdog_expired(&mut self, id: WorkerId, why: &str, now: Instant, fx: &mut Vec<Effect>) {
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
            Role::Candidate if !healthy || self.canary_on() => self.fail_reload(msg, now, fx),
            Role::Outgoing => {}
            _ => {
                self.count_failure(generation, slot, uptime, &msg, now);
            }
        }
    }

    // ----------------------------------------------------------------- transitions

    pub(super) fn mark_ready(&mut self, id: WorkerId, now: Instant, fx: &mut Vec<Effect>) {
        let Some(mut w) = self.workers.get_mut(&id) else { return };
        if w.state != WorkerState::Booting {
            return;
        }
        w.state = WorkerState::Ready;
        w.since = now;
        w.ready_at = Some(now);
        self.ever_ready = true;
        let (generation, slot, pid) = (w.generation, w.slot, w.pid);
        let boot = now.saturating_duration_since(w.spawned_at);
        // Ready: it takes traffic now, at the priority of every serving worker.
        if std::mem::take(&mut w.low_priority) {
            if let Some(pid) = pid {
                fx.push(Effect::RaisePriority { pid });
            }
        }
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
    pub(super) fn mark_healthy(&mut self, id: WorkerId, fx: &mut Vec<Effect>) {
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

    /// Detaches a worker from its slot, so that the slot can get a new one.
    pub(super) fn detach(&mut self, id: WorkerId) {
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

    /// Raises a worker that boots at the low priority to normal before it is ready, so that
    /// its boot finishes ([`policy::raise_priority_after`], or nothing serves any more).
    pub(super) fn raise_priority(&mut self, id: WorkerId, why: &str, fx: &mut Vec<Effect>) {
        let Some(mut w) = self.workers.get_mut(&id) else { return };
        // Not spawned yet: raised once its pid is known (the next step's check).
        let (true, Some(pid)) = (w.low_priority, w.pid) else { return };
        w.low_priority = false;
        let msg = format!("{} still booting: raised to normal CPU priority, as {why}", describe(&w));
        let (generation, slot) = (w.generation, w.slot);
        drop(w);
        fx.push(Effect::RaisePriority { pid });
        fx.push(log(Level::Info, "worker-priority", msg, Some(generation), Some(slot), Some(pid)));
    }

    /// Workers that are ready, in every generation.
    pub(super) fn serving_workers(&self) -> usize {
        self.generations.keys().map(|&g| self.workers.counts(g).ready).sum()
    }

    /// Workers boot at the low priority only beside serving ones: once none serves (the old
    /// generation crashed, a scale-down), the booting ones get the whole CPU.
    pub(super) fn raise_when_nothing_serves(&mut self, fx: &mut Vec<Effect>) {
        let low: usize = self.generations.keys().map(|&g| self.workers.counts(g).low_booting).sum();
        if low == 0 || self.serving_workers() > 0 {
            return;
        }
        let ids: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.low_priority && w.state == WorkerState::Booting)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.raise_priority(id, "no worker serves any more", fx);
        }
    }

    /// Tells a worker to drain: stop_signal now, SIGKILL of its group at graceful_timeout.
    pub(super) fn stop_worker(&mut self, id: WorkerId, now: Instant, fx: &mut Vec<Effect>) {
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
    pub(super) fn kill_worker(&mut self, id: WorkerId, fx: &mut Vec<Effect>) {
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

    /// Counts a failure of the slot's worker and sets the slot's backoff; returns how long
    /// until its replacement may start.
    pub(super) fn count_failure(
        &mut self,
        generation: u64,
        slot: usize,
        uptime: Duration,
        why: &str,
        now: Instant,
    ) -> Duration {
        let Some(mut s) = self.generations.get_mut(&generation).and_then(|g| g.slots.get_mut(slot)) else {
            return Duration::ZERO;
        };
        if uptime >= policy::BACKOFF_RESET_AFTER {
            s.failures = 0;
        }
        s.failures = s.failures.saturating_add(1);
        s.restarts = s.restarts.saturating_add(1);
        let not_before = policy::deadline(now, policy::backoff(s.failures));
        s.not_before = Some(not_before);
        s.last_failure = Some(why.to_string());
        self.failure_counted = true;
        not_before.saturating_duration_since(now)
    }

    /// A start that cannot succeed ends (SPEC §5): while the first generation starts and no
    /// worker was ever ready, once every slot failed [`policy::START_ATTEMPTS`] times in a
    /// row, the daemon says why (log, `STATUS=`) and stops with exit status 3, instead of
    /// retrying until systemd's start timeout. systemd's `Restart=` then decides (the unit
    /// bounds it with `StartLimitBurst=`): a passing cause gets another start.
    pub(super) fn give_up_a_hopeless_start(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if self.ever_ready {
            return;
        }
        let active = self.active;
        let g = self.gen(active);
        let hopeless = !g.slots.is_empty() && g.slots.iter().all(|s| s.failures >= policy::START_ATTEMPTS);
        if !hopeless {
            return;
        }
        let last = g.slots.iter().filter_map(|s| s.last_failure.clone()).next_back().unwrap_or_default();
        let msg = format!(
            "cannot start: every worker of generation {active} failed {} times in a row before it was ever ready; \
             giving up (exit 3). The last: {last}",
            policy::START_ATTEMPTS
        );
        fx.push(log(Level::Error, "start-failed", msg.clone(), Some(active), None, None));
        self.start_given_up = Some(msg);
        self.on_stop(false, now, fx);
        // The step's reconcile ran before this: with no worker left, the exit is now.
        self.reconcile(now, fx);
    }

    /// Logs the transitions into and out of the degraded state.
    pub(super) fn update_degraded(&mut self, fx: &mut Vec<Effect>) {
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
                "degraded: {} of {} of generation {active} failing (crash-loop backoff); last: {last}",
                failing.len(),
                count(self.gen(active).slots.len(), "slot", "slots")
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
    pub(super) fn output_hint(&self, pid: Option<Pid>) -> String {
        match (self.worker_output, pid) {
            (WorkerOutput::Journal, Some(pid)) => format!("; its output: journalctl _PID={pid}"),
            (WorkerOutput::Journal, None) => String::new(),
            (WorkerOutput::Stderr, _) => "; its output is above, on handover's stderr".into(),
        }
    }
}
