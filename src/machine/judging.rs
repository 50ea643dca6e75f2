//! Judging a new release on its workers' own request outcomes (SPEC §4, §5):
//!
//! - **outcomes**: the cumulative `X_HANDOVER_REQUESTS=`/`X_HANDOVER_ERRORS=` each worker
//!   reports, checked (a counter that goes backwards or jumps is refused, and counted like a
//!   bad datagram) and added up per generation;
//! - **canary** (`reload.canary`): the first new workers start beside the whole old
//!   generation; the reload goes on only after they stayed healthy for `canary_time` and
//!   inside the error budget ([`super::budget`]) against the old generation over the same
//!   window; the rest of the generation then starts per `strategy`;
//! - **watch** (`reload.watch`): after a reload succeeded, for this long, a crash loop or an
//!   error share over budget in the new generation rolls it back by itself (`records.rs`
//!   has what it goes back to).
use super::budget::{self, Tally, Verdict};
use super::*;

/// The canary stage of a reload (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryStage {
    /// How many canaries (the candidate's first slots).
    pub canaries: usize,
    /// When every canary was healthy: `canary_time` runs from here.
    pub ready_at: Option<Instant>,
}

/// A generation watched after its reload (`reload.watch`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Watch {
    /// The watched generation (the active one).
    pub(super) generation: u64,
    /// The generation it replaced: its error share over its life is the baseline.
    pub(super) previous: u64,
    /// The previous generation's outcomes when the watch began.
    pub(super) baseline: Tally,
    /// When the watch ends.
    pub(super) until: Instant,
    /// The watched generation's outcomes when the current window began, and when that was:
    /// each window is judged on its own, so a release that starts failing late is not
    /// hidden behind the requests it served well before.
    pub(super) window_from: Tally,
    pub(super) window_started: Instant,
}

/// A rollback that `watch` did by itself, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AutoRollback {
    /// The generation rolled back (the watched one).
    pub(super) from: u64,
    pub(super) at: Instant,
    pub(super) message: String,
}

impl Machine {
    /// `X_HANDOVER_REQUESTS=`/`X_HANDOVER_ERRORS=` from worker `id`.
    pub(super) fn on_outcomes(
        &mut self,
        id: WorkerId,
        requests: Option<u64>,
        errors: Option<u64>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let Some(w) = self.workers.get(&id) else { return };
        let last = w.outcomes;
        let new = Tally { requests: requests.unwrap_or(last.requests), errors: errors.unwrap_or(last.errors) };
        let since = w.outcomes_at.unwrap_or(w.spawned_at);
        let elapsed = now.saturating_duration_since(since);
        let refused = if new.requests < last.requests || new.errors < last.errors {
            Some(format!(
                "request counters went backwards (from {} requests, {} errors to {}, {})",
                last.requests, last.errors, new.requests, new.errors
            ))
        } else if new.errors > new.requests {
            Some(format!("more errors ({}) than requests ({})", new.errors, new.requests))
        } else if !policy::plausible_requests(new.requests - last.requests, elapsed) {
            Some(format!(
                "request counter jumped by {} in {} (more than {} a second)",
                new.requests - last.requests,
                human(elapsed),
                policy::MAX_REQUESTS_PER_SECOND
            ))
        } else {
            None
        };
        if let Some(reason) = refused {
            fx.push(Effect::BadReport { pid: w.pid, reason });
            return;
        }
        let generation = w.generation;
        if let Some(mut w) = self.workers.get_mut(&id) {
            w.outcomes = new;
            w.outcomes_at = Some(now);
        }
        if let Some(g) = self.generations.get_mut(&generation) {
            g.served.add(new.since(last));
        }
    }

    /// Whether a reload's canary stage runs: its candidate workers are still on trial, so
    /// that any failure of theirs (an exit, a missed watchdog, `max_memory`) fails the
    /// reload, even once they are healthy.
    pub(super) fn canary_on(&self) -> bool {
        matches!(&self.phase, Phase::Reloading(r) if r.canary.is_some())
    }

    /// Starts the canary stage of a reload that just began: only the first `canary` slots of
    /// the candidate are wanted.
    pub(super) fn begin_canary(&mut self, candidate: u64, previous: u64, fx: &mut Vec<Effect>) {
        let g = self.gen(candidate);
        let wanted = g.config.reload.canary.min(g.slots.len());
        if wanted == 0 {
            return;
        }
        let (canary_time, total) = (g.config.reload.canary_time, g.slots.len());
        let g = self.gen_mut(candidate);
        for slot in wanted..total {
            if let Some(mut s) = g.slots.get_mut(slot) {
                s.wanted = false;
            }
        }
        let old = self.gen(previous).slots.len();
        let msg = format!(
            "generation {candidate} starts with {} beside the {} of generation {previous}; judged for {} once ready",
            count(wanted, "canary", "canaries"),
            count(old, "worker", "workers"),
            human(canary_time)
        );
        fx.push(log(Level::Info, "canary-started", msg, Some(candidate), None, None));
        if let Phase::Reloading(r) = &mut self.phase {
            r.canary = Some(CanaryStage { canaries: wanted, ready_at: None });
        }
    }

    /// Moves the canary stage on: starts its clock once every canary is healthy, fails the
    /// reload on a verdict over budget, passes it at `canary_time` (the rest of the
    /// generation is then wanted). True if something changed that the reconcile loop must go
    /// round for.
    pub(super) fn advance_canary(&mut self, now: Instant, fx: &mut Vec<Effect>) -> bool {
        let Phase::Reloading(r) = &self.phase else { return false };
        let Some(stage) = r.canary.clone() else { return false };
        let (candidate, previous) = (r.candidate, r.previous);
        let judged = self.gen(candidate).served;
        let baseline = self.gen(previous).served.since(r.previous_at_begin);
        let rc = self.gen(candidate).config.reload;
        if budget::judge(judged, baseline, rc.max_error_rate, rc.min_requests) == Verdict::Over {
            let reason = format!(
                "gen {candidate} canary: {}, {} (max_error_rate {})",
                budget::describe(judged),
                budget::describe_baseline(previous, baseline),
                budget::percent(rc.max_error_rate)
            );
            self.last_verdict = Some(reason.clone());
            fx.push(log(Level::Error, "canary-failed", reason.clone(), Some(candidate), None, None));
            self.fail_reload(reason, now, fx);
            return true;
        }
        let Some(ready_at) = stage.ready_at else {
            if self.healthy_count(candidate) >= stage.canaries {
                if let Phase::Reloading(r) = &mut self.phase {
                    if let Some(c) = &mut r.canary {
                        c.ready_at = Some(now);
                    }
                }
                let msg = format!(
                    "{} of generation {candidate} ready; judging for {} beside generation {previous}",
                    count(stage.canaries, "canary", "canaries"),
                    human(rc.canary_time)
                );
                fx.push(log(Level::Info, "canary-ready", msg, Some(candidate), None, None));
                // Its end is a deadline now: go round so that it is counted.
                return true;
            }
            return false;
        };
        if now < policy::deadline(ready_at, rc.canary_time) {
            return false;
        }
        let judged_text = match budget::judge(judged, baseline, rc.max_error_rate, rc.min_requests) {
            Verdict::TooFew => format!(
                "{} (fewer than min_requests {}: the error budget was not judged)",
                budget::describe(judged),
                rc.min_requests
            ),
            _ => budget::describe(judged),
        };
        let msg = format!(
            "gen {candidate} canary passed after {}: {judged_text}, {}",
            human(rc.canary_time),
            budget::describe_baseline(previous, baseline)
        );
        self.last_verdict = Some(msg.clone());
        fx.push(log(Level::Info, "canary-passed", msg, Some(candidate), None, None));
        if let Phase::Reloading(r) = &mut self.phase {
            r.canary = None;
        }
        self.gen_mut(candidate).slots.set_all_wanted(true);
        self.report_progress(candidate, fx);
        true
    }

    /// When the running canary stage ends (its `canary_time` is a deadline).
    pub(super) fn canary_deadline(&self) -> Option<Instant> {
        let Phase::Reloading(r) = &self.phase else { return None };
        let ready_at = r.canary.as_ref()?.ready_at?;
        Some(policy::deadline(ready_at, self.gen(r.candidate).config.reload.canary_time))
    }

    /// After a reload succeeded: watch the new generation if its config asks for it and
    /// there is a release to go back to.
    pub(super) fn begin_watch(&mut self, generation: u64, previous: u64, now: Instant, fx: &mut Vec<Effect>) {
        self.watch = None;
        let watch = self.gen(generation).config.reload.watch;
        if watch.is_zero() {
            return;
        }
        if let Err(why) = self.rollback_target() {
            let msg = format!("generation {generation} is not watched: {why}");
            fx.push(log(Level::Warn, "watch-skipped", msg, Some(generation), None, None));
            return;
        }
        let baseline = self.generations.get(&previous).map(|g| g.served).unwrap_or_default();
        let window_from = self.gen(generation).served;
        self.watch = Some(Watch {
            generation,
            previous,
            baseline,
            until: policy::deadline(now, watch),
            window_from,
            window_started: now,
        });
        let msg = format!(
            "watching generation {generation} for {}: a crash loop or errors over budget roll it back",
            human(watch)
        );
        fx.push(log(Level::Info, "watch-started", msg, Some(generation), None, None));
    }

    /// Judges the watched generation (after every step while the daemon runs): ends the
    /// watch at its deadline, or rolls back on a crash loop or an error share over budget.
    pub(super) fn judge_watch(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Some(w) = self.watch.clone() else { return };
        if self.phase != Phase::Running {
            return;
        }
        if self.active != w.generation || !self.generations.contains_key(&w.generation) {
            self.watch = None;
            return;
        }
        let g = self.gen(w.generation);
        let rc = g.config.reload;
        let served = g.served;
        let baseline_share = budget::describe_baseline(w.previous, w.baseline);
        let crash_loop = g
            .slots
            .iter()
            .enumerate()
            .find(|(_, s)| s.wanted && s.failures >= policy::WATCH_CRASH_LOOP)
            .map(|(i, s)| (i, s.failures, s.last_failure.clone().unwrap_or_default()));
        let window = served.since(w.window_from);
        let reason = if let Some((slot, failures, last)) = crash_loop {
            Some(format!("crash loop: slot {slot} failed {failures} times in a row; last: {last}"))
        } else if budget::judge(window, w.baseline, rc.max_error_rate, rc.min_requests) == Verdict::Over {
            Some(format!(
                "{}, {baseline_share} (max_error_rate {})",
                budget::describe(window),
                budget::percent(rc.max_error_rate)
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            self.auto_rollback(w.generation, reason, fx);
            return;
        }
        if now >= w.until {
            let msg = format!(
                "watch of generation {} over: it stays ({}; {baseline_share})",
                w.generation,
                budget::describe(served.since(w.window_from))
            );
            self.last_verdict = Some(msg.clone());
            fx.push(log(Level::Info, "watch-passed", msg, Some(w.generation), None, None));
            self.watch = None;
            return;
        }
        let window_full = window.requests >= rc.min_requests
            && now.saturating_duration_since(w.window_started) >= policy::WATCH_WINDOW;
        if window_full {
            if let Some(watch) = &mut self.watch {
                watch.window_from = served;
                watch.window_started = now;
            }
        }
    }

    /// The watched generation failed its watch: ask the executor for a rollback (it checks
    /// the release and prepares its sockets, then the rollback runs as `handover rollback`
    /// does, said in the journal as `auto-rollback` and in status).
    fn auto_rollback(&mut self, generation: u64, reason: String, fx: &mut Vec<Effect>) {
        self.watch = None;
        let reason = format!("gen {generation} failed its watch: {reason}");
        fx.push(Effect::RollbackDue { reason });
    }

    /// When the running watch ends.
    pub(super) fn watch_deadline(&self) -> Option<Instant> {
        self.watch.as_ref().map(|w| w.until)
    }
}
