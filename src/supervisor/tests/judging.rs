//! Request outcomes, canaries, rollback and watch, driven through the machine with the
//! simulated executor: counters fed as events, time as a fake clock.
use super::*;

/// A config whose program is `program`: a release, as a rollback record tells them apart.
fn release(count: usize, program: &str) -> Config {
    let mut c = config(count, Strategy::AllAtOnce, 1);
    c.workers.program = program.into();
    c.workers.command = vec![program.into()];
    c
}

fn with_canary(mut c: Config, canaries: usize, time: Duration) -> Config {
    c.reload.canary = canaries;
    c.reload.canary_time = time;
    c
}

fn with_watch(mut c: Config, watch: Duration) -> Config {
    c.reload.watch = watch;
    c
}

impl Sim {
    /// Worker `pid` reports these cumulative counts.
    fn report(&mut self, pid: Pid, requests: u64, errors: u64) {
        let message = WorkerMessage::Outcomes { requests: Some(requests), errors: Some(errors) };
        self.feed(Event::Message { sender: pid, sender_pgid: Some(pid), message });
    }

    fn served(&self, generation: u64) -> (u64, u64) {
        let s = self.m.status(self.now);
        s.generations.iter().find(|g| g.generation == generation).map_or((0, 0), |g| (g.requests, g.errors))
    }

    fn bad_reports_since(&self, mark: usize) -> Vec<String> {
        self.log[mark..]
            .iter()
            .filter_map(|e| if let Effect::BadReport { reason, .. } = e { Some(reason.clone()) } else { None })
            .collect()
    }

    fn program_of(&self, generation: u64) -> String {
        let spawn = self.log.iter().rev().find_map(|e| match e {
            Effect::Spawn(r) if r.generation == generation => Some(r.config.workers.program().display().to_string()),
            _ => None,
        });
        spawn.unwrap_or_default()
    }

    fn rollback(&mut self, requester: RequestId) {
        self.feed(Event::RollbackRequested { requester: Some(requester), release_gone: None, automatic: None });
    }

    /// Every worker of `generation` that is ready reports `per_worker` more requests, of
    /// which `errors` more failed, on top of what it reported before.
    fn traffic(&mut self, generation: u64, totals: &mut BTreeMap<Pid, (u64, u64)>, per_worker: u64, errors: u64) {
        let ready: Vec<Pid> = self
            .m
            .status(self.now)
            .workers
            .iter()
            .filter(|w| w.generation == generation && w.state == "ready")
            .map(|w| w.pid)
            .collect();
        for pid in ready {
            let t = totals.entry(pid).or_default();
            t.0 += per_worker;
            t.1 += errors;
            let (r, e) = *t;
            self.report(pid, r, e);
        }
    }
}

#[test]
fn request_outcomes_add_up_per_generation_and_bad_counters_are_refused() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    let pids = sim.pids_of(1);
    sim.report(pids[0], 100, 2);
    sim.report(pids[1], 50, 0);
    sim.report(pids[0], 120, 3);
    assert_eq!(sim.served(1), (170, 3));
    // A report of one count keeps the other.
    let only = WorkerMessage::Outcomes { requests: Some(130), errors: None };
    sim.feed(Event::Message { sender: pids[0], sender_pgid: Some(pids[0]), message: only });
    assert_eq!(sim.served(1), (180, 3));

    let mark = sim.log.len();
    sim.report(pids[0], 10, 3); // backwards
    sim.report(pids[1], 60, 61); // more errors than requests
    sim.report(pids[1], 50 + 5_000_000, 0); // a jump: 5 million in well under a second
    let bad = sim.bad_reports_since(mark);
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(
        bad[0].contains("went backwards") && bad[1].contains("more errors") && bad[2].contains("jumped"),
        "{bad:?}"
    );
    assert_eq!(sim.served(1), (180, 3), "refused counters change nothing");
    // The worker goes on from its last accepted counts.
    sim.report(pids[0], 140, 3);
    assert_eq!(sim.served(1), (190, 3));
    // A worker that is gone still counts for its generation.
    sim.exit(pids[0]);
    assert_eq!(sim.served(1), (190, 3));
}

#[test]
fn a_canary_runs_beside_the_whole_old_generation_then_the_rest_starts() {
    let mut sim = Sim::started(4, Strategy::AllAtOnce, 1);
    let old = sim.pids_of(1);
    let mark = sim.log.len();
    sim.reload(with_canary(config(4, Strategy::AllAtOnce, 1), 1, Duration::from_secs(30)), Some(5));
    assert_eq!(sim.spawns_since(mark), vec![(2, 0)], "only the canary starts");
    assert_eq!(sim.m.status_line(), "gen 2: canary 0/1 ready; gen 1: 4/4 ready");
    let canary = sim.pids_of(2)[0];
    sim.ready(canary);
    assert!(sim.signals_since(mark).is_empty(), "the old generation keeps every worker");
    assert_eq!(sim.spawns_since(mark).len(), 1, "nothing more before canary_time");
    let s = sim.m.status(sim.now);
    assert_eq!(s.canary.as_ref().map(|c| (c.generation, c.canaries)), Some((2, 1)));
    // Traffic in both: the canary as good as the old ones.
    let mut totals = BTreeMap::new();
    for _ in 0..10 {
        sim.traffic(1, &mut totals, 40, 0);
        sim.traffic(2, &mut totals, 10, 0);
        sim.advance(Duration::from_secs(1));
    }
    assert!(matches!(sim.m.phase(), Phase::Reloading(_)));
    sim.run_timer(); // canary_time is over
    let passed = logged(&sim, mark, "canary-passed");
    assert_eq!(passed.len(), 1, "{passed:?}");
    assert!(passed[0].contains("0% of 100 requests failed, gen 1: 0%"), "{passed:?}");
    assert_eq!(sim.spawns_since(mark), vec![(2, 0), (2, 1), (2, 2), (2, 3)], "the rest starts");
    assert!(sim.signals_since(mark).is_empty(), "still nothing retired");
    sim.ready_all(2);
    assert_eq!(sim.m.active_generation(), 2);
    assert!(sim.final_reply(5).is_some_and(|o| o.ok));
    let stopped: Vec<Pid> = sim.signals_since(mark).iter().map(|&(p, _)| p).collect();
    assert_eq!(stopped, old, "the old generation drains after the commit");
}

#[test]
fn a_canary_over_the_error_budget_fails_the_reload_with_the_numbers() {
    let mut sim = Sim::started(4, Strategy::AllAtOnce, 1);
    let mark = sim.log.len();
    sim.reload(with_canary(config(4, Strategy::AllAtOnce, 1), 1, Duration::from_secs(30)), Some(5));
    let canary = sim.pids_of(2)[0];
    sim.ready(canary);
    let mut totals = BTreeMap::new();
    // 30% errors in the canary, 0.2% in the old generation, over the same window.
    for _ in 0..4 {
        sim.traffic(1, &mut totals, 125, 0);
        sim.traffic(2, &mut totals, 10, 3);
    }
    assert!(matches!(sim.m.phase(), Phase::Reloading(_)), "fewer than min_requests: not judged yet");
    sim.report(sim.pids_of(1)[0], 501, 2); // old: 2 errors in 2001
    sim.traffic(2, &mut totals, 10, 3); // canary: 50 requests, 15 errors
    assert_eq!(logged(&sim, mark, "reload-failed").len(), 1, "failed at once");
    assert_eq!(sim.state_of(canary), "draining", "the canary is told to stop");
    // Answered once the canary is gone: nothing of the release answers after the reload
    // returned.
    assert!(sim.final_reply(5).is_none(), "no answer while the failed canary drains");
    assert_eq!(sim.systemd_since(mark), vec![SystemdMessage::Reloading]);
    sim.exit(canary);
    let reply = sim.final_reply(5).expect("the reload ended");
    let error = reply.error.unwrap_or_default();
    assert_eq!(error, "gen 2 canary: 30% of 50 requests failed, gen 1: 0.1% (max_error_rate 1%)");
    assert_eq!(sim.m.active_generation(), 1);
    assert_eq!(sim.spawns_since(mark), vec![(2, 0)], "no other new worker ever started");
    assert!(sim.m.status_line().contains("last reload failed: gen 2 rolled back: gen 2 canary: 30%"));
    assert_eq!(sim.systemd_since(mark), vec![SystemdMessage::Reloading, SystemdMessage::Ready]);
}

#[test]
fn a_database_down_for_both_generations_does_not_fail_the_canary() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    sim.reload(with_canary(config(2, Strategy::AllAtOnce, 1), 1, Duration::from_secs(10)), Some(5));
    let canary = sim.pids_of(2)[0];
    sim.ready(canary);
    let mut totals = BTreeMap::new();
    for _ in 0..9 {
        sim.traffic(1, &mut totals, 100, 50);
        sim.traffic(2, &mut totals, 50, 25);
        sim.advance(Duration::from_secs(1));
    }
    sim.run_timer(); // canary_time is over
    assert_eq!(logged(&sim, 0, "canary-passed").len(), 1);
    sim.ready_all(2);
    let r = sim.final_reply(5);
    assert!(r.as_ref().is_some_and(|o| o.ok), "50% errors in both: not the release's fault: {r:?}");
}

#[test]
fn a_canary_that_exits_after_ready_fails_the_reload_even_when_healthy() {
    let mut sim = Sim::started(3, Strategy::AllAtOnce, 1);
    sim.reload(with_canary(config(3, Strategy::AllAtOnce, 1), 1, Duration::from_secs(30)), Some(5));
    let canary = sim.pids_of(2)[0];
    sim.ready(canary);
    sim.advance(Duration::from_secs(5));
    sim.exit(canary);
    let reply = sim.final_reply(5).expect("ended");
    assert!(!reply.ok && reply.error.as_deref().unwrap_or("").contains("exited"), "{reply:?}");
    assert_eq!(sim.m.active_generation(), 1);
}

#[test]
fn a_rolling_canary_retires_nothing_until_it_passed() {
    let mut sim = Sim::started(4, Strategy::Rolling, 1);
    let mark = sim.log.len();
    sim.reload(with_canary(config(4, Strategy::Rolling, 1), 2, Duration::from_secs(5)), Some(5));
    // max_surge 1: the canaries start one at a time too.
    assert_eq!(sim.spawns_since(mark), vec![(2, 0)]);
    sim.ready_all(2);
    assert_eq!(sim.spawns_since(mark), vec![(2, 0), (2, 1)]);
    sim.ready_all(2);
    assert!(sim.signals_since(mark).is_empty(), "no old worker retired beside canaries");
    sim.run_timer();
    assert_eq!(sim.signals_since(mark).len(), 2, "after the canary: one old retired per healthy new one");
    for _ in 0..2 {
        sim.ready_all(2);
    }
    assert_eq!(sim.m.active_generation(), 2);
    assert!(sim.final_reply(5).is_some_and(|o| o.ok));
}

#[test]
fn rollback_goes_back_to_the_previous_release_and_refuses_clearly_otherwise() {
    let mut sim = Sim::new(release(2, "/srv/app/releases/1/bin/app"));
    sim.rollback(1);
    assert!(sim.final_reply(1).is_some_and(|o| o.error.unwrap_or_default().contains("starting")));
    sim.ready_all(1);
    sim.rollback(2);
    let no_target = sim.final_reply(2).and_then(|o| o.error).unwrap_or_default();
    assert!(no_target.contains("generation 1 is the first that served"), "{no_target}");

    sim.reload(release(2, "/srv/app/releases/2/bin/app"), Some(3));
    sim.ready_all(2);
    assert_eq!(sim.m.active_generation(), 2);
    assert_eq!(sim.m.status(sim.now).rollback_to, Some(1));

    let gone =
        Event::RollbackRequested { requester: Some(4), release_gone: Some("/srv/x is gone".into()), automatic: None };
    sim.feed(gone);
    assert!(sim
        .final_reply(4)
        .is_some_and(|o| o.error.unwrap_or_default().contains("release of generation 1 is gone")));
    assert_eq!(sim.m.active_generation(), 2, "a refused rollback changes nothing");

    let mark = sim.log.len();
    sim.rollback(5);
    assert_eq!(sim.systemd_since(mark), vec![SystemdMessage::Reloading]);
    assert_eq!(sim.program_of(3), "/srv/app/releases/1/bin/app", "generation 3 runs generation 1's release");
    sim.rollback(6);
    assert!(sim.final_reply(6).is_some_and(|o| o.error.unwrap_or_default().contains("a reload runs")));
    sim.ready_all(3);
    assert!(sim.final_reply(5).is_some_and(|o| o.ok && o.generation == Some(3)));
    assert_eq!(logged(&sim, mark, "rolled-back").len(), 1);
    // Generation 2 was rolled back from, generation 1's release is the one serving:
    // nothing earlier is left.
    sim.rollback(7);
    let none = sim.final_reply(7).and_then(|o| o.error).unwrap_or_default();
    assert!(none.contains("no earlier release"), "{none}");
    // A new release later: rollback goes back to release 1 (generation 3's), never to 2.
    sim.reload(release(2, "/srv/app/releases/3/bin/app"), None);
    sim.ready_all(4);
    sim.rollback(8);
    sim.ready_all(5);
    assert_eq!(sim.program_of(5), "/srv/app/releases/1/bin/app");
}

#[test]
fn watch_rolls_back_a_release_that_starts_failing_after_its_reload() {
    let mut sim = Sim::new(release(4, "/srv/app/releases/1/bin/app"));
    sim.ready_all(1);
    let mut totals = BTreeMap::new();
    for _ in 0..5 {
        sim.traffic(1, &mut totals, 50, 0);
        sim.advance(Duration::from_secs(1));
    }
    sim.reload(with_watch(release(4, "/srv/app/releases/2/bin/app"), Duration::from_secs(300)), Some(1));
    sim.ready_all(2);
    assert!(sim.final_reply(1).is_some_and(|o| o.ok), "the reload itself succeeds");
    assert_eq!(sim.m.status(sim.now).watch.map(|w| w.generation), Some(2));
    let mark = sim.log.len();
    // Fine for 10 s, then 30% errors.
    for _ in 0..10 {
        sim.traffic(2, &mut totals, 50, 0);
        sim.advance(Duration::from_secs(1));
    }
    assert!(logged(&sim, mark, "auto-rollback").is_empty());
    for _ in 0..5 {
        sim.traffic(2, &mut totals, 50, 15);
        sim.advance(Duration::from_millis(200));
    }
    let said = logged(&sim, mark, "auto-rollback");
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].starts_with("gen 2 failed its watch: 30% of"), "{said:?}");
    assert!(said[0].contains("gen 1: 0%") && said[0].contains("release of generation 1"), "{said:?}");
    assert_eq!(sim.program_of(3), "/srv/app/releases/1/bin/app");
    sim.ready_all(3);
    assert_eq!(sim.m.active_generation(), 3);
    let s = sim.m.status(sim.now);
    assert!(s.auto_rollback.as_ref().is_some_and(|a| a.message.contains("rolled back automatically")));
    assert!(s.watch.is_none(), "a rollback is not watched");
    // `handover upgrade` carries it: which generation was rolled back, what was said.
    let base = snapshot::TimeBase { instant: sim.now, monotonic_ns: 1_000_000_000_000 };
    let state = sim.m.snapshot(&base).expect("quiet");
    let text = serde_json::to_string(&state).expect("serialise");
    let back: snapshot::MachineState = serde_json::from_str(&text).expect("parse");
    let m = Machine::restore(back, &base, sim.now).expect("restore");
    let carried = m.status(sim.now).auto_rollback.expect("the automatic rollback after the upgrade");
    let before = s.auto_rollback.expect("before");
    assert_eq!((carried.generation, &carried.message), (2, &before.message));
}

#[test]
fn watch_rolls_back_a_crash_loop() {
    let mut sim = Sim::new(release(2, "/srv/app/releases/1/bin/app"));
    sim.ready_all(1);
    sim.reload(with_watch(release(2, "/srv/app/releases/2/bin/app"), Duration::from_secs(60)), None);
    sim.ready_all(2);
    let mark = sim.log.len();
    for _ in 0..policy::WATCH_CRASH_LOOP {
        let pid = sim.pids_of(2).into_iter().find(|&p| sim.state_of(p) == "ready").expect("a ready worker");
        sim.exit(pid);
        sim.run_timer(); // its backoff
        if let Some(pid) = sim.pids_of(2).into_iter().find(|&p| sim.state_of(p) == "booting") {
            sim.ready(pid);
        }
    }
    let said = logged(&sim, mark, "auto-rollback");
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("crash loop"), "{said:?}");
}

/// The soak: ten minutes of traffic with 0.1% errors in both generations, judged
/// the whole time: no false rollback, and the watch ends saying so.
#[test]
fn watch_leaves_a_fine_release_alone_over_a_ten_minute_soak() {
    let mut sim = Sim::new(release(4, "/srv/app/releases/1/bin/app"));
    sim.ready_all(1);
    let mut totals = BTreeMap::new();
    let mut n = 0u64;
    // 0.1% errors: one error in every thousand requests, spread as they come.
    let mut step = |sim: &mut Sim, generation: u64, totals: &mut BTreeMap<Pid, (u64, u64)>| {
        n += 1;
        let errors = u64::from(n % 25 == 0); // 1 in 25 rounds of 4 × 10 requests
        sim.traffic(generation, totals, 10, errors);
        sim.advance(Duration::from_millis(250));
    };
    for _ in 0..240 {
        step(&mut sim, 1, &mut totals);
    }
    sim.reload(with_watch(release(4, "/srv/app/releases/2/bin/app"), Duration::from_secs(600)), None);
    sim.ready_all(2);
    let mark = sim.log.len();
    for _ in 0..(600 * 4) {
        step(&mut sim, 2, &mut totals);
    }
    sim.advance(Duration::from_secs(1));
    assert!(logged(&sim, mark, "auto-rollback").is_empty(), "no false rollback");
    let passed = logged(&sim, mark, "watch-passed");
    assert_eq!(passed.len(), 1, "{passed:?}");
    assert_eq!(sim.m.active_generation(), 2);
    let (requests, errors) = sim.served(2);
    assert!(requests >= 90_000 && errors * 1000 >= requests / 2, "the soak served with errors: {requests} / {errors}");
}

#[test]
fn upgrade_carries_records_counters_and_the_watch() {
    let mut sim = Sim::new(release(2, "/srv/app/releases/1/bin/app"));
    sim.ready_all(1);
    sim.reload(with_watch(release(2, "/srv/app/releases/2/bin/app"), Duration::from_secs(60)), None);
    sim.ready_all(2);
    let pids = sim.pids_of(2);
    sim.report(pids[0], 40, 1);
    let base = snapshot::TimeBase { instant: sim.now, monotonic_ns: 1_000_000_000_000 };
    let state = sim.m.snapshot(&base).expect("quiet");
    let text = serde_json::to_string(&state).expect("serialise");
    let back: snapshot::MachineState = serde_json::from_str(&text).expect("parse");
    let mut m = Machine::restore(back, &base, sim.now).expect("restore");
    let s = m.status(sim.now);
    assert_eq!(s.rollback_to, Some(1));
    assert_eq!(s.watch.map(|w| w.generation), Some(2));
    assert_eq!(s.generations.iter().find(|g| g.generation == 2).map(|g| (g.requests, g.errors)), Some((40, 1)));
    // The worker's last counts came along: going on from them is no jump nor regression.
    let fx = m.step(
        Event::Message {
            sender: pids[0],
            sender_pgid: Some(pids[0]),
            message: WorkerMessage::Outcomes { requests: Some(45), errors: Some(1) },
        },
        sim.now,
    );
    assert!(!fx.iter().any(|e| matches!(e, Effect::BadReport { .. })));
    assert_eq!(m.status(sim.now).generations.iter().find(|g| g.generation == 2).map(|g| g.requests), Some(45));
}

#[test]
fn a_failed_canary_that_will_not_exit_is_answered_at_its_kill_and_a_new_reload_answers_it_first() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    let mut c = with_canary(config(2, Strategy::AllAtOnce, 1), 1, Duration::from_secs(30));
    c.workers.graceful_timeout = Duration::from_secs(5);
    sim.reload(c.clone(), Some(5));
    let canary = sim.pids_of(2)[0];
    sim.ready(canary);
    let mut totals = BTreeMap::new();
    sim.traffic(2, &mut totals, 60, 30);
    assert!(sim.final_reply(5).is_none());
    sim.run_timer(); // graceful_timeout: SIGKILL of its group
    assert!(sim.final_reply(5).is_none(), "still not reaped");
    sim.exit(canary);
    assert!(sim.final_reply(5).is_some_and(|o| !o.ok));

    // A reload that begins while a failed canary drains answers the failed one first.
    let mark = sim.log.len();
    sim.reload(c.clone(), Some(6));
    let canary = sim.pids_of(3)[0];
    sim.ready(canary);
    sim.traffic(3, &mut totals, 60, 30);
    assert!(sim.final_reply(6).is_none());
    sim.reload(c, Some(7));
    assert!(sim.final_reply(6).is_some_and(|o| !o.ok), "answered before the next reload began");
    let systemd = sim.systemd_since(mark);
    assert_eq!(
        systemd,
        vec![SystemdMessage::Reloading, SystemdMessage::Ready, SystemdMessage::Reloading],
        "READY=1 follows every RELOADING=1"
    );
}
