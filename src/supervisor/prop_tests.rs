//! Property test of the state machine (issue 7): any config that validates can run.
//!
//! Configs are drawn from the whole valid range (up to the maximum durations) and written
//! as TOML through the real parser; a simulated executor (as in `tests.rs`, with the real
//! executor's event order) feeds random event sequences: spawns that succeed or fail,
//! exits, READY/STATUS/STOPPING/WATCHDOG messages from workers, their children and
//! strangers, request outcome reports (sane, backwards and jumping), memory samples,
//! reloads with valid and invalid configs (canaries and watches included), rollbacks
//! (asked for, their release gone, and the watch's own), scales, stops and
//! fast stops, and time jumps up to the longest lifetime. After every step: no panic, the
//! documented invariants hold (`step` checks them itself in test builds), the machine's
//! views answer, and no deadline is left in the past (the executor's timer would spin).
//! Finally a stop, with every worker reaped, always ends in `Effect::Exit`.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::Config as RunnerConfig;

use crate::config::{self, format_duration, Config, LoadEnv, MAX_LIFETIME, MAX_TIMEOUT};

use crate::machine::{Effect, Event, Machine, Pid, ScaleTo, WorkerMessage};

/// When a worker counts as ready, as written in the file.
#[derive(Debug, Clone)]
enum Ready {
    Notify,
    Spawn,
    Delay(Duration),
}

/// A config in the valid range, before it is written as TOML.
#[derive(Debug, Clone)]
struct Spec {
    count: usize,
    ready: Ready,
    boot_timeout: Duration,
    graceful_timeout: Duration,
    watchdog: Option<Duration>,
    max_lifetime: Option<Duration>,
    max_memory: Option<u64>,
    rolling: bool,
    max_surge: i64,
    /// `reload.canary`, `canary_time`, `max_error_rate`, `min_requests`, `watch`.
    canary: i64,
    canary_time: Duration,
    max_error_rate: f64,
    min_requests: i64,
    watch: Duration,
}

impl Spec {
    fn toml(&self) -> String {
        let d = |d: Duration| format_duration(d);
        let ready = match &self.ready {
            Ready::Notify => "notify".to_string(),
            Ready::Spawn => "spawn".to_string(),
            Ready::Delay(x) => format!("delay:{}", d(*x)),
        };
        let mut t = format!(
            "[workers]\ncommand = [\"/bin/sh\"]\ncount = {}\nready = \"{ready}\"\nboot_timeout = \"{}\"\n\
             graceful_timeout = \"{}\"\nwatchdog = \"{}\"\nmax_lifetime = \"{}\"\nmax_memory = {}\n",
            self.count,
            d(self.boot_timeout),
            d(self.graceful_timeout),
            d(self.watchdog.unwrap_or_default()),
            d(self.max_lifetime.unwrap_or_default()),
            self.max_memory.unwrap_or(0),
        );
        let strategy = if self.rolling { "rolling" } else { "all-at-once" };
        t.push_str(&format!("[reload]\nstrategy = \"{strategy}\"\nmax_surge = {}\n", self.max_surge));
        t.push_str(&format!(
            "canary = {}\ncanary_time = \"{}\"\nmax_error_rate = {:?}\nmin_requests = {}\nwatch = \"{}\"\n",
            self.canary,
            d(self.canary_time),
            self.max_error_rate,
            self.min_requests,
            d(self.watch)
        ));
        t
    }

    /// Through the real parser: the machine gets exactly what `handover check` accepts.
    fn config(&self) -> Arc<Config> {
        let env = LoadEnv {
            runtime_directory: Some("/run/handover/app".into()),
            xdg_runtime_dir: None,
            is_root: false,
            path: Some("/bin".into()),
            ..LoadEnv::default()
        };
        let text = self.toml();
        match config::parse(Path::new("/etc/handover/app.toml"), &text, &env) {
            Ok(c) => Arc::new(c),
            Err(e) => panic!("a spec in the valid range must validate: {e}\n{text}"),
        }
    }
}

/// A positive duration up to `max`, with the edges likely.
fn duration_upto(max: Duration) -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::from_millis(1)),
        Just(Duration::from_secs(1)),
        Just(max),
        Just(max - Duration::from_nanos(1)),
        (1..=max.as_millis() as u64).prop_map(Duration::from_millis),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    let ready = prop_oneof![
        Just(Ready::Notify),
        Just(Ready::Spawn),
        Just(Ready::Delay(Duration::ZERO)),
        duration_upto(MAX_TIMEOUT).prop_map(Ready::Delay),
    ];
    (
        prop_oneof![4 => 1usize..=4, 1 => 5usize..=12],
        ready,
        duration_upto(MAX_TIMEOUT),
        duration_upto(MAX_TIMEOUT),
        proptest::option::of(duration_upto(MAX_TIMEOUT)),
        proptest::option::of(duration_upto(MAX_LIFETIME)),
        proptest::option::of(prop_oneof![Just(1u64), Just(1 << 20), Just(u64::MAX >> 1)]),
        any::<bool>(),
        prop_oneof![Just(1i64), 2i64..=8, Just(i64::MAX)],
        judging(),
    )
        .prop_map(
            |(
                count,
                ready,
                boot_timeout,
                graceful_timeout,
                watchdog,
                max_lifetime,
                max_memory,
                rolling,
                max_surge,
                (canary, canary_time, max_error_rate, min_requests, watch),
            )| {
                Spec {
                    count,
                    ready,
                    boot_timeout,
                    graceful_timeout,
                    watchdog,
                    max_lifetime,
                    max_memory,
                    rolling,
                    max_surge,
                    canary,
                    canary_time,
                    max_error_rate,
                    min_requests,
                    watch,
                }
            },
        )
}

/// The canary and watch keys over their valid range: no canary (often), a few, more than
/// the workers; budgets from 0 to 1; watches from none to the longest.
#[allow(clippy::type_complexity)]
fn judging() -> impl Strategy<Value = (i64, Duration, f64, i64, Duration)> {
    (
        prop_oneof![2 => Just(0i64), 2 => 1i64..=3, 1 => Just(4096i64)],
        prop_oneof![Just(Duration::ZERO), duration_upto(config::MAX_CANARY_TIME)],
        prop_oneof![Just(0.0f64), Just(0.01), Just(1.0), 0.0f64..=1.0],
        prop_oneof![Just(1i64), Just(50), Just(1i64 << 40)],
        prop_oneof![2 => Just(Duration::ZERO), 1 => duration_upto(config::MAX_WATCH)],
    )
}

/// What a worker (or a stranger) says.
#[derive(Debug, Clone)]
enum Said {
    Ready,
    Status(String),
    Stopping,
    Watchdog,
    WatchdogTrigger,
}

impl Said {
    fn message(&self) -> WorkerMessage {
        match self {
            Said::Ready => WorkerMessage::Ready,
            Said::Status(s) => WorkerMessage::Status(s.clone()),
            Said::Stopping => WorkerMessage::Stopping,
            Said::Watchdog => WorkerMessage::Watchdog,
            Said::WatchdogTrigger => WorkerMessage::WatchdogTrigger,
        }
    }
}

/// How far the clock jumps.
#[derive(Debug, Clone)]
enum Jump {
    By(Duration),
    /// To the machine's next deadline, as the executor's timer does.
    ToDeadline,
}

/// One input to the simulated daemon.
#[derive(Debug, Clone)]
enum Op {
    /// From now on, spawns fail (fork: EAGAIN) or succeed.
    SpawnsFail(bool),
    /// The n-th live worker (modulo) exits.
    Exit(usize),
    /// A pid that was never a worker is reaped.
    ExitStranger,
    /// The n-th live worker, or a child in its process group, says something.
    Say { worker: usize, from_child: bool, said: Said },
    /// A process that is no worker says something.
    StrangerSays(Said),
    /// The n-th live worker reports cumulative request counts (sane, backwards, or huge).
    Outcomes(usize, Option<u64>, Option<u64>),
    /// `handover rollback`: its release there or gone; from a client or not.
    Rollback(bool, bool),
    /// A memory sample of the n-th live worker.
    Memory(usize, u64),
    /// A reload: a valid config, or one that failed to load; from a client or SIGHUP.
    Reload(Option<Spec>, bool),
    /// `handover scale N` or SIGTTIN/SIGTTOU.
    Scale(ScaleTo, bool),
    /// SIGTERM (false) or SIGINT (true).
    Stop(bool),
    /// Time passes; then the timer's Tick.
    Advance(Jump),
}

fn said() -> impl Strategy<Value = Said> {
    prop_oneof![
        4 => Just(Said::Ready),
        1 => "\\PC{0,20}".prop_map(Said::Status),
        1 => Just(Said::Stopping),
        3 => Just(Said::Watchdog),
        1 => Just(Said::WatchdogTrigger),
    ]
}

fn jump() -> impl Strategy<Value = Jump> {
    prop_oneof![
        3 => Just(Jump::ToDeadline),
        1 => Just(Jump::By(Duration::ZERO)),
        3 => (0u64..10_000).prop_map(|ms| Jump::By(Duration::from_millis(ms))),
        1 => Just(Jump::By(MAX_TIMEOUT)),
        1 => Just(Jump::By(MAX_LIFETIME)),
        1 => Just(Jump::By(MAX_LIFETIME + MAX_LIFETIME / 10)),
        1 => (0..=2 * MAX_LIFETIME.as_secs()).prop_map(|s| Jump::By(Duration::from_secs(s))),
    ]
}

/// A cumulative request count: small and growing most of the time, with the edges.
fn count() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..5_000, 1 => Just(u64::MAX), 1 => any::<u64>()]
}

fn op() -> impl Strategy<Value = Op> {
    let scale = prop_oneof![
        // Out of range (refused) or small: thousands of workers would make a case take
        // seconds without reaching anything new.
        prop_oneof![Just(0usize), Just(4097), any::<usize>()].prop_map(ScaleTo::Count),
        (1usize..=16).prop_map(ScaleTo::Count),
        prop_oneof![Just(1i64), Just(-1), any::<i64>()].prop_map(ScaleTo::Delta),
    ];
    prop_oneof![
        1 => any::<bool>().prop_map(Op::SpawnsFail),
        4 => any::<usize>().prop_map(Op::Exit),
        1 => Just(Op::ExitStranger),
        8 => (any::<usize>(), any::<bool>(), said()).prop_map(|(worker, from_child, said)| Op::Say {
            worker,
            from_child,
            said
        }),
        1 => said().prop_map(Op::StrangerSays),
        1 => (any::<usize>(), prop_oneof![Just(0u64), Just(2u64 << 20), Just(u64::MAX)]).prop_map(|(w, r)| Op::Memory(w, r)),
        4 => (any::<usize>(), proptest::option::weighted(0.9, count()), proptest::option::weighted(0.9, count()))
            .prop_map(|(w, r, e)| Op::Outcomes(w, r, e)),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(gone, client)| Op::Rollback(gone, client)),
        2 => (proptest::option::weighted(0.8, spec()), any::<bool>()).prop_map(|(s, r)| Op::Reload(s, r)),
        1 => (scale, any::<bool>()).prop_map(|(s, r)| Op::Scale(s, r)),
        1 => any::<bool>().prop_map(Op::Stop),
        6 => jump().prop_map(Op::Advance),
    ]
}

/// The executor, simulated: spawns answered at once (or failed), events in the real
/// executor's order (effects' results queued behind the event that caused them).
struct Sim {
    m: Machine,
    now: Instant,
    next_pid: Pid,
    /// Spawned and not yet reaped.
    live: Vec<Pid>,
    spawns_fail: bool,
    next_request: u64,
    exited: bool,
}

impl Sim {
    fn start(config: Arc<Config>) -> Result<Sim, TestCaseError> {
        let now = Instant::now();
        let (mut m, fx) = Machine::start(config, now);
        // As on a host where booting workers can be lowered: the boot priority's rules are
        // held to the invariants too.
        m.set_boot_lowering(true);
        let mut sim = Sim { m, now, next_pid: 1000, live: vec![], spawns_fail: false, next_request: 1, exited: false };
        let produced = sim.execute(fx);
        sim.drain(produced)?;
        Ok(sim)
    }

    fn execute(&mut self, fx: Vec<Effect>) -> Vec<Event> {
        let mut produced = vec![];
        for e in fx {
            match e {
                Effect::Spawn(req) if self.spawns_fail => {
                    produced.push(Event::SpawnFailed { worker: req.worker, error: "fork: EAGAIN".into() })
                }
                Effect::Spawn(req) => {
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    self.live.push(pid);
                    produced.push(Event::Spawned { worker: req.worker, pid });
                }
                Effect::Exit { .. } => self.exited = true,
                // As the executor does: the release is there.
                Effect::RollbackDue { reason } => produced.push(Event::RollbackRequested {
                    requester: None,
                    release_gone: None,
                    automatic: Some(reason),
                }),
                _ => {}
            }
        }
        produced
    }

    fn drain(&mut self, events: Vec<Event>) -> Result<(), TestCaseError> {
        let mut queue: VecDeque<Event> = events.into();
        while let Some(ev) = queue.pop_front() {
            let fx = self.m.step(ev, self.now);
            queue.extend(self.execute(fx));
            self.check()?;
        }
        Ok(())
    }

    fn feed(&mut self, ev: Event) -> Result<(), TestCaseError> {
        self.drain(vec![ev])
    }

    /// What must hold after every step besides the machine's own invariants.
    fn check(&self) -> Result<(), TestCaseError> {
        let _ = self.m.status(self.now);
        let _ = self.m.status_line();
        let _ = self.m.memory_watched();
        prop_assert!(self.m.configs().count() >= 1);
        if let Some(t) = self.m.next_deadline() {
            prop_assert!(
                t > self.now,
                "a deadline {:?} in the past is left pending: the timer would spin",
                self.now - t
            );
        }
        Ok(())
    }

    fn pick(&self, n: usize) -> Option<Pid> {
        (!self.live.is_empty()).then(|| self.live[n % self.live.len()])
    }

    fn request(&mut self, with: bool) -> Option<u64> {
        with.then(|| {
            self.next_request += 1;
            self.next_request
        })
    }

    fn exit(&mut self, pid: Pid) -> Result<(), TestCaseError> {
        self.live.retain(|&p| p != pid);
        self.feed(Event::Exited { pid, status: "exit code 1".into() })
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::SpawnsFail(f) => self.spawns_fail = *f,
            Op::Exit(n) => {
                if let Some(pid) = self.pick(*n) {
                    self.exit(pid)?;
                }
            }
            Op::ExitStranger => self.feed(Event::Exited { pid: 7, status: "exit code 0".into() })?,
            Op::Say { worker, from_child, said } => {
                if let Some(pid) = self.pick(*worker) {
                    let (sender, sender_pgid) = if *from_child { (pid + 500_000, Some(pid)) } else { (pid, Some(pid)) };
                    self.feed(Event::Message { sender, sender_pgid, message: said.message() })?;
                }
            }
            Op::StrangerSays(said) => {
                self.feed(Event::Message { sender: 9, sender_pgid: None, message: said.message() })?
            }
            Op::Outcomes(n, requests, errors) => {
                if let Some(pid) = self.pick(*n) {
                    let message = WorkerMessage::Outcomes { requests: *requests, errors: *errors };
                    self.feed(Event::Message { sender: pid, sender_pgid: Some(pid), message })?;
                }
            }
            Op::Rollback(gone, client) => {
                let requester = self.request(*client);
                let release_gone = gone.then(|| "/srv/app/releases/1 is no longer a directory".to_string());
                self.feed(Event::RollbackRequested { requester, release_gone, automatic: None })?;
            }
            Op::Memory(n, rss_bytes) => {
                if let Some(pid) = self.pick(*n) {
                    self.feed(Event::MemoryUsage { pid, rss_bytes: *rss_bytes })?;
                }
            }
            Op::Reload(spec, client) => {
                let config = match spec {
                    Some(s) => Ok(s.config()),
                    None => Err("app.toml:3:16: workers.boot_timeout: must be at most 24h".to_string()),
                };
                let requester = self.request(*client);
                self.feed(Event::ReloadRequested { config, requester })?;
            }
            Op::Scale(to, client) => {
                let requester = self.request(*client);
                self.feed(Event::ScaleRequested { to: *to, requester })?;
            }
            Op::Stop(fast) => self.feed(Event::StopRequested { fast: *fast })?,
            Op::Advance(Jump::By(d)) => {
                self.now += *d;
                self.feed(Event::Tick)?;
            }
            Op::Advance(Jump::ToDeadline) => {
                if let Some(t) = self.m.next_deadline() {
                    self.now = self.now.max(t);
                    self.feed(Event::Tick)?;
                }
            }
        }
        Ok(())
    }
}

fn runner() -> RunnerConfig {
    RunnerConfig { cases: 300, failure_persistence: None, ..RunnerConfig::default() }
}

proptest! {
    #![proptest_config(runner())]

    #[test]
    fn any_valid_config_runs_reloads_and_stops(
        first in spec(),
        ops in proptest::collection::vec(op(), 1..80),
        fast_end in any::<bool>(),
    ) {
        let mut sim = Sim::start(first.config())?;
        for op in &ops {
            if sim.exited {
                break;
            }
            sim.run(op)?;
        }
        // However it got here, a stop ends in Exit once every worker has been reaped.
        if !sim.exited {
            sim.run(&Op::Stop(fast_end))?;
            let mut rounds = 0;
            while !sim.exited {
                prop_assert!(rounds < 10_000, "the daemon never exits: {:?}", sim.m.phase());
                rounds += 1;
                match sim.live.first().copied() {
                    Some(pid) => sim.exit(pid)?,
                    None => {
                        prop_assert!(sim.m.next_deadline().is_some(), "stopping, no worker left, no exit, nothing pending");
                        sim.run(&Op::Advance(Jump::ToDeadline))?;
                    }
                }
            }
        }
    }
}
