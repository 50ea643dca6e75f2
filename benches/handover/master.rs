//! Scenarios 5 and 6: what the master costs (RSS, idle CPU and wake-ups, spawn-to-ready rate
//! against a plain fork+exec baseline), and reloads of 512 workers under load.
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::harness::{clock_ticks_per_sec, context_switches, cpu_ticks, rss_kib, Handover, WorkerSetup};
use crate::stats::{self, median, Counts, Window};
use crate::throughput::ByHand;

/// The scale of scenarios 5 (spawn rate) and 6.
pub const MANY: usize = 512;
/// The idle window of scenario 5.
pub const IDLE: Duration = Duration::from_secs(30);
/// Workers during the idle window (the SPEC's RSS figure is for 64).
pub const IDLE_WORKERS: usize = 64;
/// Rounds of the spawn-rate comparison (baseline, handover, alternating).
pub const SPAWN_ROUNDS: usize = 2;

/// Master RSS with a given worker count.
#[derive(Debug, Clone, Serialize)]
pub struct Rss {
    /// Workers.
    pub workers: usize,
    /// VmRSS of the master after start and one reload, KiB.
    pub rss_kib: u64,
}

/// CPU and wake-ups of an idle master.
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    /// Workers.
    pub workers: usize,
    /// Window length, seconds.
    pub secs: f64,
    /// utime + stime used in the window, clock ticks.
    pub cpu_ticks: u64,
    /// Clock ticks per second.
    pub ticks_per_sec: u64,
    /// Context switches of all its threads in the window (each wake-up is one).
    pub context_switches: u64,
}

/// Spawn-to-ready of many trivial workers: handover vs a plain fork+exec loop.
#[derive(Debug, Clone, Serialize)]
pub struct SpawnRate {
    /// Workers.
    pub workers: usize,
    /// Baseline: fork+exec loop to the last READY=1, seconds, per round.
    pub baseline_s: Vec<f64>,
    /// `handover run` launched to its READY=1 to systemd, seconds, per round.
    pub handover_s: Vec<f64>,
    /// Median workers/s of the baseline.
    pub baseline_rate: f64,
    /// Median workers/s of handover.
    pub handover_rate: f64,
    /// handover rate / baseline rate.
    pub ratio: f64,
}

/// Scenario 5.
#[derive(Debug, Clone, Serialize)]
pub struct MasterCost {
    /// RSS by worker count.
    pub rss: Vec<Rss>,
    /// Idle CPU.
    pub idle: Idle,
    /// Spawn rate.
    pub spawn: SpawnRate,
}

/// Scenario 6: one reload of `MANY` workers under load.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRun {
    /// Workers.
    pub workers: usize,
    /// "all-at-once" or "rolling".
    pub strategy: String,
    /// max_surge (rolling).
    pub max_surge: usize,
    /// How long `handover reload` took.
    pub reload_s: f64,
    /// Its exit code.
    pub exit: i32,
    /// "keep-alive" or "new connection per request".
    pub clients: String,
    /// Request counts over the run (4 clients).
    pub counts: Counts,
    /// The steady window before the reload.
    pub steady: Window,
    /// During the reload (plus 0.5 s).
    pub during: Window,
}

fn reload_ok(h: &Handover) -> Result<Duration> {
    let out = h.cli(&["reload"], Duration::from_secs(180))?;
    if out.code != 0 {
        bail!("handover reload exited {}: {}\n{}", out.code, out.stderr, h.log_tail());
    }
    Ok(out.took)
}

fn rss_after_reload(workers: usize, idle: bool) -> Result<(Rss, Option<Idle>)> {
    let (h, _) = Handover::start(&WorkerSetup::demo(workers, &[]), Duration::from_secs(120))?;
    reload_ok(&h)?;
    // The reload has returned; the old generation drains: wait until it has gone.
    wait_workers(&h, workers, Duration::from_secs(60))?;
    let rss = Rss { workers, rss_kib: rss_kib(h.pid())? };
    let idle = if idle {
        let (t0, c0) = (cpu_ticks(h.pid())?, context_switches(h.pid())?);
        let started = Instant::now();
        std::thread::sleep(IDLE); // the idle window being measured
        let (t1, c1) = (cpu_ticks(h.pid())?, context_switches(h.pid())?);
        Some(Idle {
            workers,
            secs: started.elapsed().as_secs_f64(),
            cpu_ticks: t1 - t0,
            ticks_per_sec: clock_ticks_per_sec(),
            context_switches: c1 - c0,
        })
    } else {
        None
    };
    h.stop(Duration::from_secs(60))?;
    Ok((rss, idle))
}

/// Waits until `handover status` lists exactly `n` workers (old generations drained).
fn wait_workers(h: &Handover, n: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = h.status()?;
        let count = s["workers"].as_array().map_or(0, Vec::len);
        if count == n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{count} workers still listed after {timeout:?}, expected {n}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn baseline_spawn(n: usize) -> Result<Duration> {
    let started = Instant::now();
    let workers = ByHand::spawn(n, &[])?;
    let last = workers.wait_ready(Duration::from_secs(120))?;
    workers.stop(Duration::from_secs(60));
    Ok(last - started)
}

fn scale_reload(h: &Handover, strategy: &str, surge: usize, keep_alive: bool) -> Result<ScaleRun> {
    let load = stats::load(h.addr, 4, keep_alive, Duration::from_secs(240))?;
    let t0 = load.started_at();
    stats::wait_flowing(&load, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(2)); // the steady window being measured
    let trigger = t0.elapsed();
    let out = h.cli(&["reload"], Duration::from_secs(180))?;
    let done = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500)); // a little load after the switch
    let end = t0.elapsed();
    let report = load.stop();
    if out.code != 0 {
        eprintln!("bench: reload of {MANY} ({strategy}) exited {}: {}\n{}", out.code, out.stderr, h.log_tail());
    }
    Ok(ScaleRun {
        workers: MANY,
        strategy: strategy.into(),
        max_surge: surge,
        clients: if keep_alive { "keep-alive".into() } else { "new connection per request".into() },
        reload_s: (done - trigger).as_secs_f64(),
        exit: out.code,
        counts: Counts::of(&report),
        steady: Window::of(&report, trigger.saturating_sub(Duration::from_secs(2)), trigger),
        during: Window::of(&report, trigger, end),
    })
}

/// Runs scenario 5 and/or 6.
pub fn run(cost: bool, scale: bool) -> Result<(Option<MasterCost>, Vec<ScaleRun>)> {
    let mut rss = Vec::new();
    let mut idle = None;
    let mut baseline_s = Vec::new();
    let mut handover_s = Vec::new();
    if cost {
        for n in [4, IDLE_WORKERS] {
            let (r, i) = rss_after_reload(n, n == IDLE_WORKERS)?;
            eprintln!("  {n} workers: master RSS {} KiB", r.rss_kib);
            rss.push(r);
            if let Some(i) = i {
                eprintln!("  idle {:.0}s: {} ticks, {} context switches", i.secs, i.cpu_ticks, i.context_switches);
                idle = Some(i);
            }
        }
    }
    let mut setup = WorkerSetup::demo(MANY, &[]);
    setup.boot_timeout = "120s".into();
    setup.graceful_timeout = "30s".into();
    let mut kept = None;
    let rounds = if cost { SPAWN_ROUNDS } else { 1 };
    for round in 0..rounds {
        if cost {
            let b = baseline_spawn(MANY)?;
            eprintln!("  fork+exec of {MANY} demo workers to the last READY=1: {:.2}s", b.as_secs_f64());
            baseline_s.push(b.as_secs_f64());
        }
        let (h, ready) = Handover::start(&setup, Duration::from_secs(180))?;
        eprintln!("  handover with {MANY} workers: READY=1 after {:.2}s", ready.as_secs_f64());
        handover_s.push(ready.as_secs_f64());
        if round + 1 == rounds {
            kept = Some(h);
        } else {
            h.stop(Duration::from_secs(60))?;
        }
    }
    let h = kept.expect("at least one round");
    let mut runs = Vec::new();
    if scale {
        // Keep-alive clients first: with 512 workers on one socket, each new connection wakes
        // every worker blocked in epoll on it (the demo worker, like most epoll servers, does
        // not use EPOLLEXCLUSIVE), so connection-per-request load mostly measures that herd;
        // it comes last, once.
        for (strategy, surge, keep_alive) in
            [("all-at-once", 1, true), ("rolling", 32, true), ("all-at-once", 1, false)]
        {
            setup.strategy = strategy.into();
            setup.max_surge = surge;
            h.rewrite(&setup)?;
            let r = scale_reload(&h, strategy, surge, keep_alive)?;
            eprintln!("{}", crate::report::scale_line(&r));
            runs.push(r);
            wait_workers(&h, MANY, Duration::from_secs(120))?;
        }
    } else {
        reload_ok(&h)?;
        wait_workers(&h, MANY, Duration::from_secs(120))?;
    }
    let cost = if cost {
        rss.push(Rss { workers: MANY, rss_kib: rss_kib(h.pid())? });
        eprintln!("  {MANY} workers: master RSS {} KiB", rss[rss.len() - 1].rss_kib);
        let (b, o) = (median(baseline_s.clone()), median(handover_s.clone()));
        let spawn = SpawnRate {
            workers: MANY,
            baseline_rate: MANY as f64 / b,
            handover_rate: MANY as f64 / o,
            ratio: b / o,
            baseline_s,
            handover_s,
        };
        Some(MasterCost { rss, idle: idle.expect("idle measured"), spawn })
    } else {
        None
    };
    h.stop(Duration::from_secs(90))?;
    Ok((cost, runs))
}
