//! State-machine tests: scripted events, a fake clock, a simulated executor that hands out
//! pids. No processes, no sockets, no sleeps.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, ReadyMode, Reload, Strategy, Workers};
use crate::control::proto::Reply;

use crate::machine::*;

/// A valid config for machine tests (also used by `machine::index`'s tests).
pub(crate) fn config(count: usize, strategy: Strategy, max_surge: usize) -> Config {
    Config {
        path: "/etc/handover/app.toml".into(),
        name: "app".into(),
        control_socket: "/run/handover/app/control.sock".into(),
        pidfile: None,
        listen: vec![],
        workers: Workers {
            command: vec!["/bin/app".into()],
            program: "/bin/app".into(),
            count,
            working_directory: None,
            env: BTreeMap::new(),
            ready: ReadyMode::Notify,
            boot_timeout: Duration::from_secs(10),
            watchdog: None,
            stop_signal: libc::SIGTERM,
            graceful_timeout: Duration::from_secs(30),
            max_lifetime: None,
            max_memory: None,
            memory_limit: None,
            credentials: None,
            release: None,
        },
        reload: Reload { strategy, max_surge, ..Reload::default() },
        metrics: Default::default(),
    }
}

/// A simulated executor around the machine.
struct Sim {
    m: Machine,
    now: Instant,
    next_pid: Pid,
    /// pid → (generation, slot), for every spawn.
    spawned: BTreeMap<Pid, (u64, usize)>,
    /// Every effect, in order, with spawns already answered.
    log: Vec<Effect>,
    fail_spawns: bool,
}

impl Sim {
    fn new(cfg: Config) -> Sim {
        let now = Instant::now();
        let (m, fx) = Machine::start(Arc::new(cfg), now);
        let mut sim = Sim { m, now, next_pid: 100, spawned: BTreeMap::new(), log: vec![], fail_spawns: false };
        sim.apply(fx);
        sim
    }

    fn apply(&mut self, fx: Vec<Effect>) {
        for e in fx {
            let follow = match &e {
                Effect::Spawn(req) if self.fail_spawns => {
                    Some(Event::SpawnFailed { worker: req.worker, error: "fork: EAGAIN".into() })
                }
                // As the executor: the release is there, the rollback goes ahead.
                Effect::RollbackDue { reason } => Some(Event::RollbackRequested {
                    requester: None,
                    release_gone: None,
                    automatic: Some(reason.clone()),
                }),
                Effect::Spawn(req) => {
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    self.spawned.insert(pid, (req.generation, req.slot));
                    Some(Event::Spawned { worker: req.worker, pid })
                }
                _ => None,
            };
            self.log.push(e);
            if let Some(ev) = follow {
                let fx = self.m.step(ev, self.now);
                self.apply(fx);
            }
        }
    }

    fn feed(&mut self, ev: Event) {
        let fx = self.m.step(ev, self.now);
        self.apply(fx);
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.feed(Event::Tick);
    }

    /// Advance to the machine's next deadline (as the executor's timer would).
    fn run_timer(&mut self) {
        let next = self.m.next_deadline().expect("a deadline is pending");
        assert!(next >= self.now);
        self.now = next;
        self.feed(Event::Tick);
    }

    fn ready(&mut self, pid: Pid) {
        self.feed(Event::Message { sender: pid, sender_pgid: Some(pid), message: WorkerMessage::Ready });
    }

    fn exit(&mut self, pid: Pid) {
        self.feed(Event::Exited { pid, status: "exit code 1".into() });
    }

    fn pids_of(&self, generation: u64) -> Vec<Pid> {
        self.m.status(self.now).workers.iter().filter(|w| w.generation == generation).map(|w| w.pid).collect()
    }

    fn state_of(&self, pid: Pid) -> String {
        self.m.status(self.now).workers.iter().find(|w| w.pid == pid).map(|w| w.state.clone()).unwrap_or("gone".into())
    }

    fn ready_all(&mut self, generation: u64) {
        for pid in self.pids_of(generation) {
            self.ready(pid);
        }
    }

    /// Systemd messages since the log mark, flattened.
    fn systemd_since(&self, mark: usize) -> Vec<SystemdMessage> {
        self.log[mark..]
            .iter()
            .filter_map(|e| if let Effect::Systemd(m) = e { Some(m.clone()) } else { None })
            .flatten()
            .filter(|m| !matches!(m, SystemdMessage::ExtendTimeout(_)))
            .collect()
    }

    fn signals_since(&self, mark: usize) -> Vec<(Pid, i32)> {
        self.log[mark..]
            .iter()
            .filter_map(|e| if let Effect::Signal { pid, signal } = e { Some((*pid, *signal)) } else { None })
            .collect()
    }

    fn kills_since(&self, mark: usize) -> Vec<Pid> {
        self.log[mark..]
            .iter()
            .filter_map(|e| if let Effect::KillGroup { pid } = e { Some(*pid) } else { None })
            .collect()
    }

    fn final_reply(&self, requester: RequestId) -> Option<crate::control::proto::Outcome> {
        self.log.iter().find_map(|e| match e {
            Effect::Reply { requester: r, reply: Reply::Done(o) } if *r == requester => Some(o.clone()),
            _ => None,
        })
    }

    fn spawns_since(&self, mark: usize) -> Vec<(u64, usize)> {
        self.log[mark..]
            .iter()
            .filter_map(|e| if let Effect::Spawn(r) = e { Some((r.generation, r.slot)) } else { None })
            .collect()
    }

    fn reload(&mut self, cfg: Config, requester: Option<RequestId>) {
        self.feed(Event::ReloadRequested { config: Ok(Arc::new(cfg)), requester });
    }

    fn started(count: usize, strategy: Strategy, surge: usize) -> Sim {
        let mut sim = Sim::new(config(count, strategy, surge));
        sim.ready_all(1);
        assert_eq!(sim.m.phase(), &Phase::Running);
        sim
    }
}

const TERM: i32 = libc::SIGTERM;

#[test]
fn ready_is_sent_only_once_every_worker_of_generation_1_is_ready() {
    let mut sim = Sim::new(config(3, Strategy::AllAtOnce, 1));
    assert_eq!(sim.spawns_since(0), vec![(1, 0), (1, 1), (1, 2)]);
    let pids = sim.pids_of(1);
    sim.ready(pids[0]);
    sim.ready(pids[1]);
    assert!(sim.systemd_since(0).is_empty(), "no READY with 2/3 ready");
    assert_eq!(sim.m.phase(), &Phase::Starting);
    sim.ready(pids[2]);
    assert_eq!(sim.systemd_since(0), vec![SystemdMessage::Ready]);
    assert_eq!(sim.m.status_line(), "gen 1: 3/3 ready");
}

#[test]
fn all_at_once_reload_retires_the_old_generation_only_when_the_new_one_is_fully_ready() {
    let mut sim = Sim::started(4, Strategy::AllAtOnce, 1);
    let old = sim.pids_of(1);
    let mark = sim.log.len();
    sim.reload(config(4, Strategy::AllAtOnce, 1), Some(7));
    assert_eq!(sim.systemd_since(mark), vec![SystemdMessage::Reloading]);
    assert_eq!(sim.spawns_since(mark), vec![(2, 0), (2, 1), (2, 2), (2, 3)]);
    let new = sim.pids_of(2);
    for &pid in &new[..3] {
        sim.ready(pid);
    }
    assert!(sim.signals_since(mark).is_empty(), "old workers keep serving while 3/4 are ready");
    assert!(sim.final_reply(7).is_none());
    sim.ready(new[3]);
    assert_eq!(sim.systemd_since(mark), vec![SystemdMessage::Reloading, SystemdMessage::Ready]);
    let stopped: Vec<Pid> = sim
        .signals_since(mark)
        .into_iter()
        .map(|(p, s)| {
            assert_eq!(s, TERM);
            p
        })
        .collect();
    assert_eq!(stopped, old, "every old worker told to stop, nothing else");
    let outcome = sim.final_reply(7).expect("reply");
    assert!(outcome.ok && outcome.generation == Some(2), "{outcome:?}");
    // Progress lines went to the waiter before the result: 1/4 .. 4/4.
    let progress: Vec<usize> = sim.log[mark..]
        .iter()
        .filter_map(|e| match e {
            Effect::Reply { requester: 7, reply: Reply::Progress { progress } } => Some(progress.ready),
            _ => None,
        })
        .collect();
    assert_eq!(progress, vec![1, 2, 3, 4]);
    assert_eq!(sim.m.active_generation(), 2);
    assert_eq!(sim.m.status_line(), "gen 2: 4/4 ready; gen 1: draining 4");
    for pid in old {
        sim.exit(pid);
    }
    assert_eq!(sim.m.status_line(), "gen 2: 4/4 ready");
}

#[test]
fn a_new_worker_exiting_at_boot_rolls_back_and_leaves_the_old_generation_untouched() {
    let mut sim = Sim::started(3, Strategy::AllAtOnce, 1);
    let old = sim.pids_of(1);
    let mark = sim.log.len();
    sim.reload(config(3, Strategy::AllAtOnce, 1), Some(1));
    let new = sim.pids_of(2);
    sim.ready(new[0]);
    sim.exit(new[1]);
    let outcome = sim.final_reply(1).expect("answered at once");
    assert!(!outcome.ok);
    assert!(
        outcome.error.as_deref().is_some_and(|e| e.contains("exited") && e.contains("before it was ready")),
        "{outcome:?}"
    );
    assert_eq!(sim.systemd_since(mark), vec![SystemdMessage::Reloading, SystemdMessage::Ready]);
    let signalled: Vec<Pid> = sim.signals_since(mark).into_iter().map(|(p, _)| p).collect();
    assert!(signalled.iter().all(|p| !old.contains(p)), "old generation untouched: {signalled:?}");
    // The booting new worker is stopped; the ready one is retired because gen 1 is full.
    assert!(signalled.contains(&new[2]) && signalled.contains(&new[0]), "{signalled:?}");
    assert_eq!(sim.m.active_generation(), 1);
    assert_eq!(sim.m.phase(), &Phase::Running);
    assert!(old.iter().all(|&p| sim.state_of(p) == "ready"));
}

#[test]
fn a_new_worker_missing_boot_timeout_rolls_back() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    let mark = sim.log.len();
    sim.reload(config(2, Strategy::AllAtOnce, 1), Some(3));
    let new = sim.pids_of(2);
    sim.ready(new[0]);
    sim.advance(Duration::from_secs(9));
    assert!(sim.final_reply(3).is_none(), "still within boot_timeout");
    sim.run_timer(); // boot_timeout of the second one
    let outcome = sim.final_reply(3).expect("failed");
    assert!(outcome.error.as_deref().is_some_and(|e| e.contains("boot_timeout 10s")), "{outcome:?}");
    assert!(sim.signals_since(mark).contains(&(new[1], TERM)), "stopped gracefully: it may be serving");
    // graceful_timeout later its group is killed.
    sim.advance(Duration::from_secs(30));
    assert!(sim.kills_since(mark).contains(&new[1]));
    assert_eq!(sim.m.active_generation(), 1);
}

#[test]
fn rolling_reload_retires_one_old_worker_per_new_ready_one() {
    let mut sim = Sim::started(3, Strategy::Rolling, 1);
    let old = sim.pids_of(1);
    let mark = sim.log.len();
    sim.reload(config(3, Strategy::Rolling, 1), Some(9));
    assert_eq!(sim.spawns_since(mark), vec![(2, 0)], "max_surge 1: one new worker at a time");
    assert!(sim.signals_since(mark).is_empty());
    let first = sim.pids_of(2)[0];
    sim.ready(first);
    assert_eq!(sim.signals_since(mark).len(), 1, "one old worker retired");
    assert_eq!(sim.spawns_since(mark), vec![(2, 0), (2, 1)]);
    let second = *sim.pids_of(2).iter().find(|&&p| p != first).expect("second");
    sim.ready(second);
    assert_eq!(sim.signals_since(mark).len(), 2);
    let third = *sim.pids_of(2).iter().find(|&&p| p != first && p != second).expect("third");
    sim.ready(third);
    assert_eq!(sim.signals_since(mark).len(), 3);
    let retired: Vec<Pid> = sim.signals_since(mark).into_iter().map(|(p, _)| p).collect();
    assert_eq!(retired.len(), 3);
    assert!(retired.iter().all(|p| old.contains(p)));
    assert!(sim.final_reply(9).expect("done").ok);
    assert_eq!(sim.m.active_generation(), 2);
}

#[test]
fn rolling_reload_with_surge_two_keeps_two_booting() {
    let mut sim = Sim::started(4, Strategy::Rolling, 2);
    let mark = sim.log.len();
    sim.reload(config(4, Strategy::Rolling, 2), None);
    assert_eq!(sim.spawns_since(mark), vec![(2, 0), (2, 1)]);
    let p = sim.pids_of(2)[0];
    sim.ready(p);
    assert_eq!(sim.spawns_since(mark).len(), 3);
    assert_eq!(sim.signals_since(mark).len(), 1);
}

#[test]
fn a_failed_rolling_reload_keeps_serving_and_restores_the_old_generation() {
    let mut sim = Sim::started(2, Strategy::Rolling, 1);
    let old = sim.pids_of(1);
    sim.reload(config(2, Strategy::Rolling, 1), Some(4));
    let first = sim.pids_of(2)[0];
    sim.ready(first); // one old retired
    let second = *sim.pids_of(2).iter().find(|&&p| p != first).expect("second");
    let mark = sim.log.len();
    sim.exit(second);
    assert!(!sim.final_reply(4).expect("failed").ok);
    // The old generation's retired slot is respawned; the ready new worker keeps serving
    // until that respawn is ready, then it is retired.
    let respawned = sim.spawns_since(mark);
    assert_eq!(respawned.len(), 1);
    assert_eq!(respawned[0].0, 1, "rollback respawns the old version");
    assert_eq!(sim.state_of(first), "ready", "no capacity dropped");
    let fresh = *sim.pids_of(1).iter().find(|p| !old.contains(p)).expect("respawn");
    sim.ready(fresh);
    assert_eq!(sim.state_of(first), "draining");
    let line = sim.m.status_line();
    assert!(line.starts_with("gen 2: draining 1; gen 1: 2/2 ready draining 1; last reload failed: gen 2 rolled back: worker gen 2 slot 1"), "{line}");
}

#[test]
fn reloads_requested_during_a_reload_coalesce_into_one() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    let mark = sim.log.len();
    sim.reload(config(2, Strategy::AllAtOnce, 1), Some(1));
    for r in 2..=50 {
        sim.reload(config(2, Strategy::AllAtOnce, 1), Some(r));
    }
    sim.ready_all(2);
    assert!(sim.final_reply(1).expect("first").ok);
    assert!(sim.final_reply(2).is_none(), "queued ones wait for the second reload");
    sim.ready_all(3);
    for r in 2..=50 {
        assert!(sim.final_reply(r).expect("answered").ok);
    }
    let reloads = sim.systemd_since(mark).iter().filter(|m| **m == SystemdMessage::Reloading).count();
    assert_eq!(reloads, 2, "50 requests, 2 reloads");
    assert_eq!(sim.m.active_generation(), 3);
}

#[test]
fn an_invalid_config_fails_the_reload_and_changes_nothing() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    let mark = sim.log.len();
    sim.feed(Event::ReloadRequested { config: Err("app.toml:3:1: workers.count: bad".into()), requester: Some(5) });
    assert_eq!(sim.systemd_since(mark), vec![SystemdMessage::Reloading, SystemdMessage::Ready]);
    assert!(sim.spawns_since(mark).is_empty() && sim.signals_since(mark).is_empty());
    let o = sim.final_reply(5).expect("reply");
    assert!(!o.ok && o.error.as_deref().is_some_and(|e| e.contains("workers.count")));
}

#[test]
fn stop_during_a_reload_answers_the_waiter_and_drains_everything() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    sim.reload(config(2, Strategy::AllAtOnce, 1), Some(8));
    let mark = sim.log.len();
    sim.feed(Event::StopRequested { fast: false });
    assert!(!sim.final_reply(8).expect("answered").ok);
    assert_eq!(sim.systemd_since(mark), vec![SystemdMessage::Stopping]);
    let all: Vec<Pid> = sim.spawned.keys().copied().collect();
    let mut signalled: Vec<Pid> = sim.signals_since(mark).into_iter().map(|(p, _)| p).collect();
    signalled.sort();
    assert_eq!(signalled, all, "every worker of both generations drains");
    assert!(sim.spawns_since(mark).is_empty());
    for &pid in &all[..3] {
        sim.exit(pid);
    }
    assert!(!sim.log.iter().any(|e| matches!(e, Effect::Exit { .. })));
    sim.exit(all[3]);
    assert!(sim.log.iter().any(|e| matches!(e, Effect::Exit { code: 0 })));
}

#[test]
fn a_stuck_worker_is_killed_at_graceful_timeout_on_stop() {
    let mut sim = Sim::started(1, Strategy::AllAtOnce, 1);
    let pid = sim.pids_of(1)[0];
    let mark = sim.log.len();
    sim.feed(Event::StopRequested { fast: false });
    sim.advance(Duration::from_secs(29));
    assert!(sim.kills_since(mark).is_empty());
    sim.run_timer();
    assert_eq!(sim.kills_since(mark), vec![pid]);
    sim.exit(pid);
    assert!(sim.log.iter().any(|e| matches!(e, Effect::Exit { code: 0 })));
}

#[test]
fn fast_stop_kills_every_group_at_once() {
    let mut sim = Sim::started(3, Strategy::AllAtOnce, 1);
    let mark = sim.log.len();
    sim.feed(Event::StopRequested { fast: true });
    assert_eq!(sim.kills_since(mark), sim.pids_of(1));
}

#[test]
fn crashes_are_respawned_with_capped_exponential_backoff() {
    let mut sim = Sim::started(1, Strategy::AllAtOnce, 1);
    let mut delays = Vec::new();
    for _ in 0..12 {
        let pid = sim.pids_of(1)[0];
        sim.exit(pid);
        assert!(sim.pids_of(1).is_empty(), "not respawned before the backoff");
        let before = sim.now;
        sim.run_timer();
        delays.push(sim.now - before);
        assert_eq!(sim.pids_of(1).len(), 1, "respawned at the deadline");
    }
    let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
    assert_eq!(ms, vec![100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]);
    // A worker that stays up 60 s resets the backoff.
    let pid = sim.pids_of(1)[0];
    sim.ready(pid);
    sim.advance(Duration::from_secs(61));
    sim.exit(pid);
    let before = sim.now;
    sim.run_timer();
    assert_eq!((sim.now - before).as_millis(), 100);
}

#[test]
fn a_worker_that_stops_pinging_its_watchdog_is_aborted_killed_and_replaced() {
    let mut cfg = config(1, Strategy::AllAtOnce, 1);
    cfg.workers.watchdog = Some(Duration::from_secs(2));
    let mut sim = Sim::new(cfg);
    sim.ready_all(1);
    let pid = sim.pids_of(1)[0];
    // No ping yet: the watchdog is not armed.
    sim.advance(Duration::from_secs(10));
    assert_eq!(sim.state_of(pid), "ready");
    sim.feed(Event::Message { sender: pid, sender_pgid: Some(pid), message: WorkerMessage::Watchdog });
    sim.advance(Duration::from_secs(1));
    sim.feed(Event::Message { sender: pid, sender_pgid: Some(pid), message: WorkerMessage::Watchdog });
    let mark = sim.log.len();
    sim.advance(Duration::from_millis(1999));
    assert!(sim.signals_since(mark).is_empty());
    sim.run_timer();
    assert_eq!(sim.signals_since(mark), vec![(pid, libc::SIGABRT)]);
    sim.run_timer(); // the backoff: replacement spawned
    assert_eq!(sim.spawns_since(mark), vec![(1, 0)]);
    sim.advance(Duration::from_secs(5));
    assert_eq!(sim.kills_since(mark), vec![pid], "SIGKILL after the grace");
}

#[test]
fn max_lifetime_recycles_a_worker_only_once_its_successor_is_ready() {
    let mut cfg = config(1, Strategy::AllAtOnce, 1);
    cfg.workers.max_lifetime = Some(Duration::from_secs(100));
    let mut sim = Sim::new(cfg);
    sim.ready_all(1);
    let old = sim.pids_of(1)[0];
    let mark = sim.log.len();
    sim.advance(Duration::from_secs(99));
    assert!(sim.spawns_since(mark).is_empty());
    sim.run_timer(); // lifetime + jitter reached
    assert!(sim.now >= Instant::now() + Duration::from_secs(99));
    assert_eq!(sim.spawns_since(mark), vec![(1, 0)]);
    assert!(sim.signals_since(mark).is_empty(), "old serves until its successor is ready");
    let new = *sim.pids_of(1).iter().find(|&&p| p != old).expect("successor");
    sim.ready(new);
    assert_eq!(sim.signals_since(mark), vec![(old, TERM)]);
    assert_eq!(sim.m.status_line(), "gen 1: 1/1 ready draining 1");
}

#[test]
fn a_recycle_waiting_for_its_successor_leaves_no_deadline_in_the_past() {
    // Found by prop_tests: the old worker's recycle_at stayed the next deadline while its
    // successor booted, so the executor's timer fired at once, again and again (a busy
    // loop for up to boot_timeout). Likewise during a reload, when recycling waits.
    let mut cfg = config(1, Strategy::AllAtOnce, 1);
    cfg.workers.max_lifetime = Some(Duration::from_secs(100));
    let mut sim = Sim::new(cfg.clone());
    sim.ready_all(1);
    sim.run_timer(); // the successor is spawned and boots
    assert_eq!(sim.pids_of(1).len(), 2);
    let next = sim.m.next_deadline().expect("the successor's boot_timeout");
    assert_eq!(next, sim.now + cfg.workers.boot_timeout);

    cfg.workers.boot_timeout = Duration::from_secs(200);
    let mut sim = Sim::new(cfg.clone());
    sim.ready_all(1);
    sim.reload(cfg.clone(), None);
    sim.advance(Duration::from_secs(111)); // past max_lifetime + jitter; the candidate boots
    assert_eq!(sim.pids_of(1).len(), 1, "no recycling during a reload");
    let next = sim.m.next_deadline().expect("the candidate's boot_timeout");
    assert!(next > sim.now, "a deadline {:?} in the past", sim.now - next);
}

#[test]
fn max_memory_recycles_a_worker_over_the_limit() {
    let mut cfg = config(2, Strategy::AllAtOnce, 1);
    cfg.workers.max_memory = Some(100 << 20);
    let mut sim = Sim::new(cfg);
    sim.ready_all(1);
    let pids = sim.pids_of(1);
    assert_eq!(sim.m.memory_watched().len(), 2);
    let mark = sim.log.len();
    sim.feed(Event::MemoryUsage { pid: pids[0], rss_bytes: 50 << 20 });
    assert!(sim.spawns_since(mark).is_empty());
    sim.feed(Event::MemoryUsage { pid: pids[1], rss_bytes: 150 << 20 });
    assert_eq!(sim.spawns_since(mark), vec![(1, 1)]);
}

#[test]
fn messages_from_a_workers_child_count_and_strangers_are_ignored() {
    let mut sim = Sim::new(config(1, Strategy::AllAtOnce, 1));
    let pid = sim.pids_of(1)[0];
    sim.feed(Event::Message { sender: 99_999, sender_pgid: Some(12345), message: WorkerMessage::Ready });
    assert_eq!(sim.m.phase(), &Phase::Starting, "a stranger cannot make us ready");
    sim.feed(Event::Message { sender: 99_998, sender_pgid: Some(pid), message: WorkerMessage::Ready });
    assert_eq!(sim.m.phase(), &Phase::Running, "a process in the worker's group speaks for it");
}

#[test]
fn ready_modes_spawn_and_delay() {
    let mut cfg = config(1, Strategy::AllAtOnce, 1);
    cfg.workers.ready = ReadyMode::Spawn;
    let sim = Sim::new(cfg);
    assert_eq!(sim.m.phase(), &Phase::Running);
    let mut cfg = config(1, Strategy::AllAtOnce, 1);
    cfg.workers.ready = ReadyMode::Delay(Duration::from_secs(2));
    let mut sim = Sim::new(cfg);
    let pid = sim.pids_of(1)[0];
    sim.ready(pid); // READY=1 does not count in delay mode
    assert_eq!(sim.m.phase(), &Phase::Starting);
    sim.run_timer();
    assert_eq!(sim.m.phase(), &Phase::Running);
}

#[test]
fn scale_up_and_down_and_refused_during_a_reload() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    let mark = sim.log.len();
    sim.feed(Event::ScaleRequested { to: ScaleTo::Count(4), requester: Some(1) });
    assert!(sim.final_reply(1).expect("reply").ok);
    assert_eq!(sim.spawns_since(mark), vec![(1, 2), (1, 3)]);
    sim.ready_all(1);
    let before = sim.pids_of(1);
    sim.feed(Event::ScaleRequested { to: ScaleTo::Delta(-1), requester: None });
    assert_eq!(sim.signals_since(mark).len(), 1);
    assert_eq!(sim.signals_since(mark)[0].0, before[3], "the highest slot goes");
    sim.feed(Event::ScaleRequested { to: ScaleTo::Count(0), requester: Some(2) });
    assert!(!sim.final_reply(2).expect("reply").ok);
    sim.reload(config(2, Strategy::AllAtOnce, 1), None);
    sim.feed(Event::ScaleRequested { to: ScaleTo::Count(5), requester: Some(3) });
    assert!(!sim.final_reply(3).expect("reply").ok);
}

#[test]
fn first_generation_boot_failures_retry_with_backoff_and_no_ready() {
    let mut sim = Sim::new(config(1, Strategy::AllAtOnce, 1));
    for _ in 0..3 {
        let pid = sim.pids_of(1)[0];
        sim.exit(pid);
        sim.run_timer();
    }
    assert!(sim.systemd_since(0).is_empty(), "no READY=1 while nothing serves");
    sim.ready_all(1);
    assert_eq!(sim.systemd_since(0), vec![SystemdMessage::Ready]);
}

#[test]
fn spawn_failures_count_as_boot_failures() {
    let mut sim = Sim::started(1, Strategy::AllAtOnce, 1);
    sim.fail_spawns = true;
    sim.reload(config(1, Strategy::AllAtOnce, 1), Some(1));
    let o = sim.final_reply(1).expect("reply");
    assert!(o.error.as_deref().is_some_and(|e| e.contains("could not be spawned")), "{o:?}");
    assert_eq!(sim.m.active_generation(), 1);
}

#[test]
fn without_work_there_is_no_deadline() {
    let sim = Sim::started(4, Strategy::AllAtOnce, 1);
    assert_eq!(sim.m.next_deadline(), None, "an idle master does not wake up");
}

#[test]
fn configs_in_use_include_a_queued_reload() {
    let mut sim = Sim::started(1, Strategy::AllAtOnce, 1);
    sim.reload(config(1, Strategy::AllAtOnce, 1), None);
    let mut queued = config(1, Strategy::AllAtOnce, 1);
    queued.name = "queued".into();
    sim.reload(queued, None);
    let names: Vec<String> = sim.m.configs().map(|c| c.name.clone()).collect();
    assert_eq!(names, vec!["app", "app", "queued"], "generation 1, the candidate, and the queued reload");
}

// ------------------------------------------------------------------ issue 9: readiness that cannot be fooled

#[test]
fn a_kill_at_graceful_timeout_names_the_open_connections_sampled_right_before() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    let old = sim.pids_of(1);
    sim.reload(config(2, Strategy::AllAtOnce, 1), None);
    sim.ready_all(2);
    assert_eq!(sim.m.draining_pids(), old, "told to stop at the commit");
    sim.advance(Duration::from_secs(29));
    assert!(sim.m.kills_due(sim.now).is_empty());
    // A sample for a step that kills nobody is forgotten after that step.
    sim.feed(Event::OpenConnections { counts: vec![(old[1], 5)] });
    let kill_at = sim.m.next_deadline().expect("the kill deadline");
    assert_eq!(sim.m.kills_due(kill_at), old);
    sim.now = kill_at;
    let mark = sim.log.len();
    // The executor read the first worker's connections; the second's could not be read.
    sim.feed(Event::OpenConnections { counts: vec![(old[0], 3)] });
    assert_eq!(sim.kills_since(mark), old, "the sample is also a tick");
    let tail = "SIGKILL to its process group";
    assert_eq!(
        logged(&sim, mark, "worker-killed"),
        [
            format!(
                "worker gen 1 slot 0 pid {} killed after graceful_timeout 30s with 3 open connections: {tail}",
                old[0]
            ),
            format!("worker gen 1 slot 1 pid {} killed after graceful_timeout 30s: {tail}", old[1]),
        ]
    );
    assert!(sim.m.kills_due(sim.now).is_empty());
    assert!(sim.m.draining_pids().is_empty(), "SIGKILLed workers no longer count as draining");
}

fn with_min_healthy(mut cfg: Config, window: Duration) -> Config {
    cfg.reload.min_healthy_time = window;
    cfg
}

fn logged(sim: &Sim, mark: usize, event: &str) -> Vec<String> {
    sim.log[mark..]
        .iter()
        .filter_map(|e| match e {
            Effect::Log(r) if r.event == event => Some(r.message.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn generation_numbers_are_never_reused_after_a_rollback() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    sim.reload(config(2, Strategy::AllAtOnce, 1), Some(1));
    let failed = sim.pids_of(2);
    sim.exit(failed[0]);
    assert!(!sim.final_reply(1).expect("rolled back").ok);
    // Let the rest of the rolled-back generation go, so that nothing remembers it.
    for pid in sim.pids_of(2) {
        sim.exit(pid);
    }
    assert!(sim.pids_of(2).is_empty());
    let mark = sim.log.len();
    sim.reload(config(2, Strategy::AllAtOnce, 1), Some(2));
    assert_eq!(sim.spawns_since(mark), vec![(3, 0), (3, 1)], "generation 2 is taken: the next one is 3");
    sim.ready_all(3);
    assert_eq!(sim.final_reply(2).expect("committed").generation, Some(3));
}

#[test]
fn min_healthy_time_keeps_the_old_generation_until_the_new_one_has_stayed_up() {
    let window = Duration::from_secs(5);
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    let old = sim.pids_of(1);
    let mark = sim.log.len();
    sim.reload(with_min_healthy(config(2, Strategy::AllAtOnce, 1), window), Some(1));
    sim.ready_all(2);
    assert!(sim.final_reply(1).is_none(), "ready is not healthy yet");
    assert!(sim.signals_since(mark).is_empty(), "the old generation keeps serving during the window");
    assert_eq!(sim.m.status_line(), "gen 2: reloading 2/2 ready, 0 healthy; gen 1: 2/2 ready");
    sim.advance(Duration::from_secs(4));
    assert!(sim.final_reply(1).is_none());
    sim.run_timer(); // the window ends at 5 s
    let outcome = sim.final_reply(1).expect("committed after the window");
    assert!(outcome.ok && outcome.generation == Some(2), "{outcome:?}");
    let stopped: Vec<Pid> = sim.signals_since(mark).into_iter().map(|(p, _)| p).collect();
    assert_eq!(stopped, old);
    assert_eq!(logged(&sim, mark, "worker-healthy").len(), 2);
    // Progress told the waiter about the window: ready first, then healthy.
    let progress: Vec<(usize, usize, u64)> = sim.log[mark..]
        .iter()
        .filter_map(|e| match e {
            Effect::Reply { requester: 1, reply: Reply::Progress { progress: p } } => {
                Some((p.ready, p.healthy, p.min_healthy_ms))
            }
            _ => None,
        })
        .collect();
    assert_eq!(progress, vec![(1, 0, 5000), (2, 0, 5000), (2, 1, 5000), (2, 2, 5000)]);
}

#[test]
fn a_new_worker_that_exits_after_ready_but_within_min_healthy_time_rolls_back() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    let mark = sim.log.len();
    sim.reload(with_min_healthy(config(2, Strategy::AllAtOnce, 1), Duration::from_secs(5)), Some(1));
    sim.ready_all(2);
    sim.advance(Duration::from_secs(2));
    let new = sim.pids_of(2);
    sim.exit(new[1]); // an import error after READY=1, or a crash at the first request
    let outcome = sim.final_reply(1).expect("rolled back");
    assert!(!outcome.ok);
    let why = outcome.error.unwrap_or_default();
    assert!(why.contains("within min_healthy_time 5s of being ready"), "{why}");
    assert!(sim.signals_since(mark).iter().all(|(p, _)| new.contains(p)), "no old worker was told to stop");
    assert_eq!(sim.m.active_generation(), 1);
    assert_eq!(sim.systemd_since(mark), vec![SystemdMessage::Reloading, SystemdMessage::Ready]);
}

#[test]
fn without_min_healthy_time_a_ready_new_worker_that_exits_is_respawned_not_rolled_back() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    sim.reload(config(2, Strategy::AllAtOnce, 1), Some(1));
    let new = sim.pids_of(2);
    sim.ready(new[0]);
    sim.exit(new[0]);
    assert!(sim.final_reply(1).is_none(), "ready is healthy with no window: a crash is respawned as before");
}

#[test]
fn a_missed_watchdog_within_min_healthy_time_rolls_back() {
    let mut cfg = with_min_healthy(config(1, Strategy::AllAtOnce, 1), Duration::from_secs(10));
    cfg.workers.watchdog = Some(Duration::from_secs(2));
    let mut sim = Sim::started(1, Strategy::AllAtOnce, 1);
    sim.reload(cfg, Some(1));
    let new = sim.pids_of(2)[0];
    sim.ready(new);
    sim.feed(Event::Message { sender: new, sender_pgid: Some(new), message: WorkerMessage::Watchdog });
    sim.advance(Duration::from_secs(3));
    let outcome = sim.final_reply(1).expect("rolled back on the missed watchdog");
    assert!(!outcome.ok);
    assert!(outcome.error.unwrap_or_default().contains("missed its watchdog"));
}

#[test]
fn rolling_with_min_healthy_time_retires_an_old_worker_only_per_healthy_new_one() {
    let mut sim = Sim::started(2, Strategy::Rolling, 1);
    let old = sim.pids_of(1);
    let mark = sim.log.len();
    sim.reload(with_min_healthy(config(2, Strategy::Rolling, 1), Duration::from_secs(5)), Some(1));
    let first = sim.pids_of(2);
    assert_eq!(first.len(), 1, "max_surge 1");
    sim.ready(first[0]);
    assert!(sim.signals_since(mark).is_empty(), "ready but not healthy: nothing old retired");
    sim.run_timer();
    assert_eq!(sim.signals_since(mark).len(), 1, "healthy: one old worker retired");
    assert!(old.contains(&sim.signals_since(mark)[0].0));
    let second: Vec<Pid> = sim.pids_of(2).into_iter().filter(|p| *p != first[0]).collect();
    sim.ready(second[0]);
    sim.run_timer();
    assert!(sim.final_reply(1).expect("done").ok);
}

#[test]
fn a_crash_loop_shows_as_degraded_with_the_last_failure_and_next_attempt() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    let mark = sim.log.len();
    let pids = sim.pids_of(1);
    sim.exit(pids[0]);
    let st = sim.m.status(sim.now);
    assert_eq!(st.phase, "degraded");
    assert_eq!(st.failing.len(), 1);
    let f = &st.failing[0];
    assert_eq!((f.generation, f.slot, f.restarts), (1, 0, 1));
    assert!(f.last_failure.as_deref().unwrap_or("").contains("exit code 1"), "{f:?}");
    assert!(f.next_attempt_secs.is_some_and(|s| s > 0.0 && s <= 0.1), "{f:?}");
    assert!(st.summary.contains("degraded: 1 slot in crash-loop backoff, last: worker gen 1 slot 0"), "{}", st.summary);
    assert_eq!(logged(&sim, mark, "degraded").len(), 1);
    // Respawned after the backoff: booting, still failing until ready.
    sim.run_timer();
    let st = sim.m.status(sim.now);
    assert_eq!(st.failing.len(), 1);
    assert_eq!(st.failing[0].next_attempt_secs, None, "booting again");
    let again = sim.pids_of(1).into_iter().find(|p| !pids.contains(p)).expect("respawned");
    sim.ready(again);
    let st = sim.m.status(sim.now);
    assert_eq!(st.phase, "running");
    assert!(st.failing.is_empty());
    assert!(!st.summary.contains("degraded"));
    assert_eq!(logged(&sim, mark, "recovered").len(), 1);
    assert_eq!(logged(&sim, mark, "degraded").len(), 1, "logged once on the way in");
}

#[test]
fn failure_messages_say_where_the_workers_output_is() {
    let mut sim = Sim::started(1, Strategy::AllAtOnce, 1);
    sim.m.set_worker_output(WorkerOutput::Journal);
    let mark = sim.log.len();
    let pid = sim.pids_of(1)[0];
    sim.exit(pid);
    let failed = logged(&sim, mark, "worker-failed");
    assert!(failed[0].contains(&format!("its output: journalctl _PID={pid}")), "{failed:?}");
    sim.m.set_worker_output(WorkerOutput::Stderr);
    sim.run_timer();
    let again = sim.pids_of(1)[0];
    sim.exit(again);
    let failed = logged(&sim, mark, "worker-failed");
    assert!(failed[1].contains("on handover's stderr"), "{failed:?}");
}

#[test]
fn a_worker_that_exits_after_its_stop_signal_is_logged_as_drained_and_one_killed_as_such() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    let old = sim.pids_of(1);
    sim.reload(config(2, Strategy::AllAtOnce, 1), Some(1));
    sim.ready_all(2);
    let mark = sim.log.len();
    sim.advance(Duration::from_millis(1200));
    sim.feed(Event::Exited { pid: old[0], status: "exit code 0".into() });
    let drained = logged(&sim, mark, "worker-drained");
    assert_eq!(drained.len(), 1);
    assert!(drained[0].ends_with("exited (exit code 0) 1.2s after it was told to stop: drained"), "{drained:?}");
    sim.advance(Duration::from_secs(30)); // graceful_timeout: SIGKILL
    sim.feed(Event::Exited { pid: old[1], status: "killed by SIGKILL".into() });
    let killed = logged(&sim, mark, "worker-exited");
    assert!(killed[0].contains("SIGKILLed, it had not exited within graceful_timeout"), "{killed:?}");
}

/// Exits every booting worker of generation 1 and lets the backoff pass, `rounds` times.
fn fail_at_boot(sim: &mut Sim, rounds: usize) {
    for _ in 0..rounds {
        for pid in sim.pids_of(1) {
            if sim.state_of(pid) == "booting" {
                sim.exit(pid);
            }
        }
        if sim.m.next_deadline().is_some() {
            sim.run_timer();
        }
    }
}

#[test]
fn a_start_whose_every_slot_keeps_failing_at_boot_is_given_up_with_exit_3() {
    let mut sim = Sim::new(config(2, Strategy::AllAtOnce, 1));
    fail_at_boot(&mut sim, policy::START_ATTEMPTS as usize - 1);
    assert!(!sim.log.iter().any(|e| matches!(e, Effect::Exit { .. })), "given up too early");
    fail_at_boot(&mut sim, 1);
    assert!(sim.log.iter().any(|e| matches!(e, Effect::Exit { code: 3 })), "not given up: {}", sim.m.status_line());
    assert!(sim.m.status_line().contains("cannot start"), "{}", sim.m.status_line());
    assert!(!sim.systemd_since(0).contains(&SystemdMessage::Ready));
}

#[test]
fn a_start_where_some_worker_was_ready_is_never_given_up() {
    let mut sim = Sim::new(config(2, Strategy::AllAtOnce, 1));
    let first = sim.pids_of(1)[0];
    sim.ready(first);
    // The other slot fails at boot again and again: degraded, not hopeless.
    for _ in 0..2 * policy::START_ATTEMPTS {
        fail_at_boot(&mut sim, 1);
    }
    assert!(!sim.log.iter().any(|e| matches!(e, Effect::Exit { .. })), "{}", sim.m.status_line());
    assert_eq!(sim.state_of(first), "ready");
}

// ----------------------------------------------------------------- boot priority

fn low_spawns_since(sim: &Sim, mark: usize) -> Vec<(u64, usize, bool)> {
    sim.log[mark..]
        .iter()
        .filter_map(|e| if let Effect::Spawn(r) = e { Some((r.generation, r.slot, r.low_priority)) } else { None })
        .collect()
}

fn raises_since(sim: &Sim, mark: usize) -> Vec<Pid> {
    sim.log[mark..]
        .iter()
        .filter_map(|e| if let Effect::RaisePriority { pid } = e { Some(*pid) } else { None })
        .collect()
}

fn low_in_status(sim: &Sim) -> Vec<Pid> {
    sim.m.status(sim.now).workers.iter().filter(|w| w.low_priority).map(|w| w.pid).collect()
}

#[test]
fn a_reload_boots_low_beside_the_serving_generation_and_each_worker_is_raised_once_ready() {
    let mut sim = Sim::new(config(2, Strategy::AllAtOnce, 1));
    sim.m.set_boot_lowering(true);
    assert!(low_spawns_since(&sim, 0).iter().all(|&(_, _, low)| !low), "generation 1 had nothing beside it");
    sim.ready_all(1);
    let mark = sim.log.len();
    sim.reload(config(2, Strategy::AllAtOnce, 1), None);
    assert_eq!(low_spawns_since(&sim, mark), vec![(2, 0, true), (2, 1, true)]);
    let new = sim.pids_of(2);
    assert_eq!(low_in_status(&sim), new);
    sim.ready(new[0]);
    assert_eq!(raises_since(&sim, mark), vec![new[0]], "raised as it became ready, before it serves");
    assert_eq!(low_in_status(&sim), vec![new[1]]);
    sim.ready(new[1]);
    assert_eq!(raises_since(&sim, mark), new);
    assert!(low_in_status(&sim).is_empty());
    assert_eq!(sim.m.phase(), &Phase::Running);
}

#[test]
fn boot_priority_normal_or_an_executor_that_cannot_lower_boots_at_normal_priority() {
    let mut normal = config(2, Strategy::Rolling, 1);
    normal.reload.boot_priority = crate::config::BootPriority::Normal;
    let mut sim = Sim::started(2, Strategy::Rolling, 1);
    sim.m.set_boot_lowering(true);
    let mark = sim.log.len();
    sim.reload(normal.clone(), None);
    assert_eq!(low_spawns_since(&sim, mark), vec![(2, 0, false)]);
    // The default ("low"), where the executor has no means: normal as well.
    let mut sim = Sim::started(2, Strategy::Rolling, 1);
    let mark = sim.log.len();
    sim.reload(config(2, Strategy::Rolling, 1), None);
    assert_eq!(low_spawns_since(&sim, mark), vec![(2, 0, false)]);
    sim.ready_all(2);
    assert!(raises_since(&sim, mark).is_empty());
}

#[test]
fn a_low_boot_is_raised_at_3_4_of_its_boot_timeout_so_that_the_reload_still_finishes() {
    let mut sim = Sim::started(1, Strategy::AllAtOnce, 1);
    sim.m.set_boot_lowering(true);
    let mark = sim.log.len();
    sim.reload(config(1, Strategy::AllAtOnce, 1), None);
    let new = sim.pids_of(2);
    // The next deadline is the raise (boot_timeout 10 s: at 7.5 s), not the boot timeout.
    sim.run_timer();
    assert_eq!(raises_since(&sim, mark), new);
    assert!(low_in_status(&sim).is_empty());
    assert_eq!(sim.state_of(new[0]), "booting", "raised, still booting, not judged yet");
    let logged = sim.log[mark..].iter().any(|e| {
        matches!(e, Effect::Log(r) if r.event == "worker-priority" && r.message.contains("3/4 of its boot_timeout 10s"))
    });
    assert!(logged, "the raise is logged with its reason");
    sim.ready(new[0]);
    assert_eq!(raises_since(&sim, mark), new, "raised once only");
}

#[test]
fn when_nothing_serves_any_more_the_booting_workers_get_the_whole_cpu() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    sim.m.set_boot_lowering(true);
    let old = sim.pids_of(1);
    let mark = sim.log.len();
    sim.reload(config(2, Strategy::AllAtOnce, 1), None);
    let new = sim.pids_of(2);
    sim.exit(old[0]);
    assert!(raises_since(&sim, mark).is_empty(), "one old worker still serves");
    sim.exit(old[1]);
    assert_eq!(raises_since(&sim, mark), new);
    // The respawns of the crashed slots find nothing serving: normal priority.
    let respawn_mark = sim.log.len();
    sim.advance(Duration::from_secs(1));
    let respawns = low_spawns_since(&sim, respawn_mark);
    assert!(!respawns.is_empty() && respawns.iter().all(|&(g, _, low)| g == 1 && !low), "{respawns:?}");
}

fn queues(samples: &[(&str, u32)]) -> Event {
    Event::AcceptQueues {
        samples: samples.iter().map(|&(socket, length)| QueueSample { socket: socket.into(), length }).collect(),
    }
}

#[test]
fn a_reloads_peak_accept_queue_ends_its_result_line_and_stays_for_status() {
    let mut sim = Sim::started(2, Strategy::AllAtOnce, 1);
    sim.feed(queues(&[("http", 9)]));
    assert!(sim.m.reload_queue_peak().is_empty(), "read outside a reload: ignored");
    sim.reload(config(2, Strategy::AllAtOnce, 1), Some(7));
    sim.feed(queues(&[("http", 2)]));
    sim.feed(queues(&[("http", 5)]));
    sim.feed(queues(&[("http", 1)]));
    assert_eq!(sim.m.reload_queue_peak().get("http"), Some(&5), "the running reload's peak so far");
    let mark = sim.log.len();
    sim.ready_all(2);
    let message = sim.final_reply(7).and_then(|o| o.message).unwrap_or_default();
    assert!(message.ends_with("generation 1 drains; peak accept queue 5"), "{message}");
    assert_eq!(logged(&sim, mark, "reload-succeeded"), vec![message.clone()]);
    assert_eq!(sim.m.status(sim.now).last_reload, Some(message));
    assert_eq!(sim.m.reload_queue_peak().get("http"), Some(&5), "kept after the reload");

    // A rolled-back reload with two sockets names each; the next reload starts from zero.
    sim.reload(config(2, Strategy::AllAtOnce, 1), Some(8));
    assert!(sim.m.reload_queue_peak().is_empty(), "a new reload, a new peak");
    sim.feed(queues(&[("http", 0), ("admin", 3)]));
    let pid = sim.pids_of(3)[0];
    sim.exit(pid);
    let last = sim.m.status(sim.now).last_reload.unwrap_or_default();
    assert!(last.contains("rolled back") && last.ends_with("; peak accept queue: admin 3, http 0"), "{last}");

    // A refused reload ran nothing: no peak beside it.
    sim.feed(Event::ReloadRequested { config: Err("bad".into()), requester: None });
    assert!(sim.m.reload_queue_peak().is_empty());
}

#[test]
fn without_readings_a_reload_result_names_no_queue() {
    let mut sim = Sim::started(1, Strategy::AllAtOnce, 1);
    sim.reload(config(1, Strategy::AllAtOnce, 1), Some(7));
    sim.ready_all(2);
    let message = sim.final_reply(7).and_then(|o| o.message).unwrap_or_default();
    assert!(message.ends_with("generation 1 drains"), "{message}");
}

#[test]
fn the_last_reloads_peak_crosses_an_upgrade() {
    let mut sim = Sim::started(1, Strategy::AllAtOnce, 1);
    sim.reload(config(1, Strategy::AllAtOnce, 1), None);
    sim.feed(queues(&[("http", 4)]));
    sim.ready_all(2);
    let base = snapshot::TimeBase { instant: sim.now, monotonic_ns: 1_000_000_000 };
    let state = sim.m.snapshot(&base).expect("snapshot");
    let restored = Machine::restore(state, &base, sim.now).expect("restore");
    assert_eq!(restored.reload_queue_peak().get("http"), Some(&4));
}

mod judging;
