//! Scenario 9 (issue 23): a reload under CPU saturation. The app's import burns 2 s of CPU
//! (`benches/wsgi/cpu_app.py`), each request 1 ms; 4 workers; clients keep both cores busy.
//! Side by side in one run: gunicorn's `kill -HUP`, handover with `boot_priority = "normal"`
//! and handover's default (`"low"`: the new generation boots at nice 10 here, where the
//! benchmark runs as root outside systemd, without a delegated cgroup). Each set-up does the
//! same import work on reload: 4 new interpreters each import the app once.
//!
//! Per run: serving p50/p99/max latency and throughput during the reload (from the trigger
//! until the new generation serves: `handover reload` returned, or gunicorn's 4 new workers
//! said READY=1) against the steady state just before it; the reload's duration; failed
//! requests. Set-ups alternate within each round, so that whatever else the shared machine
//! does falls on all of them alike; the summary gives the medians of the rounds.
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use handover::demo::loadgen::LoadReport;
use serde::Serialize;

use crate::gunicorn::{set_version, Gunicorn, Python};
use crate::harness::{listen_loopback, Handover};
use crate::reload::sleep_until;
use crate::stats::{self, median, Counts, Window};

/// Load clients by default (`--clients N`): each sends a request on a new connection as soon
/// as the last one was answered, so 4 sync workers that burn 1 ms of CPU per request keep
/// both cores busy (the run records how busy). With more clients than workers, every worker
/// always has a request waiting and nothing else gets any CPU without taking it from them.
pub const CLIENTS: usize = 4;
/// Workers per generation.
pub const WORKERS: usize = 4;
/// Rounds of the three set-ups.
pub const ROUNDS: usize = 2;
/// Load before the steady-state window.
const WARMUP: Duration = Duration::from_secs(2);
/// The steady-state window just before the trigger.
pub const STEADY: Duration = Duration::from_secs(5);
/// Load after the reload window, so that the requests started in it complete and count.
const TAIL: Duration = Duration::from_secs(2);
/// handover's `boot_timeout`: a worker booting at the low priority is raised to normal at
/// half of it (30 s) if not ready by then.
pub const BOOT_TIMEOUT: &str = "60s";
/// The slice of the reload window whose worst throughput and p99 are reported beside the
/// whole window's: a long reload dilutes a short disturbance, a slice of steady-window length
/// does not.
pub const SLICE: Duration = STEADY;
/// How far the slice slides each step.
const SLICE_STEP: Duration = Duration::from_millis(250);
/// When `handover status` is asked, after the trigger, which workers boot at low priority.
const STATUS_AFTER: Duration = Duration::from_millis(1500);
/// The most this scenario may take (added to the run's overall deadline).
pub const BUDGET: Duration = Duration::from_secs(9 * 60);
/// The goal (issue 23, SPEC §8) for handover's default: serving p99 during the reload at most
/// this times steady state...
pub const P99_GOAL: f64 = 1.2;
/// ...and throughput at least this times steady state.
pub const THROUGHPUT_GOAL: f64 = 0.9;

/// One set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// `gunicorn -w 4`, `kill -HUP`.
    GunicornHup,
    /// handover, 4 × `gunicorn -w 1`, with this `reload.boot_priority` (None: the default).
    Handover(Option<&'static str>),
}

/// The set-ups, in the order each round runs them.
pub const SETUPS: [Setup; 3] = [Setup::GunicornHup, Setup::Handover(Some("normal")), Setup::Handover(None)];

impl Setup {
    /// Machine-readable name.
    pub fn key(self) -> &'static str {
        match self {
            Setup::GunicornHup => "gunicorn-hup",
            Setup::Handover(Some(_)) => "handover-normal",
            Setup::Handover(None) => "handover-default",
        }
    }

    /// Human-readable.
    pub fn describe(self) -> String {
        match self {
            Setup::GunicornHup => "gunicorn -w 4, `kill -HUP`".into(),
            Setup::Handover(Some(p)) => format!("handover, `boot_priority = \"{p}\"` (4 × `gunicorn -w 1`)"),
            Setup::Handover(None) => "handover, default (`boot_priority = \"low\"`; 4 × `gunicorn -w 1`)".into(),
        }
    }
}

/// One reload of one set-up.
#[derive(Debug, Clone, Serialize)]
pub struct SaturationRun {
    /// [`Setup::key`].
    pub key: String,
    /// [`Setup::describe`].
    pub setup: String,
    /// Round number, from 1.
    pub round: usize,
    /// Requests over the whole run (warm-up, steady, reload, tail).
    pub counts: Counts,
    /// Trigger to completion: `handover reload` returned, or gunicorn's 4 new workers ready.
    pub reload_s: f64,
    /// Exit code of `handover reload` (handover only).
    pub reload_exit: Option<i32>,
    /// The steady-state window just before the trigger.
    pub steady: Window,
    /// From the trigger until the reload completed.
    pub during: Window,
    /// Completed requests per second in `steady`.
    pub steady_rps: f64,
    /// Completed requests per second in `during`.
    pub during_rps: f64,
    /// during p99 / steady p99.
    pub p99_ratio: f64,
    /// during throughput / steady throughput.
    pub throughput_ratio: f64,
    /// The lowest throughput of any [`SLICE`] of the reload window (all of it if shorter), req/s.
    pub worst_slice_rps: f64,
    /// The highest p99 of any such slice, ms.
    pub worst_slice_p99_ms: f64,
    /// Share of the machine's CPU time that was busy in the steady window (/proc/stat, every
    /// process on the host, the load's and other builds' included).
    pub cpu_busy_steady: f64,
    /// The same during the reload.
    pub cpu_busy_during: f64,
    /// handover's `status` "boot priority:" line (handover only).
    pub boot_priority: Option<String>,
    /// New workers `handover status` showed booting at low CPU priority 1.5 s after the
    /// trigger (handover only).
    pub low_workers_seen: Option<usize>,
    /// Workers raised to normal priority before they were ready (at 3/4 of their boot_timeout),
    /// counted in handover's log (handover only).
    pub raised_early: Option<usize>,
}

/// The medians of one set-up's rounds.
#[derive(Debug, Clone, Serialize)]
pub struct SetupSummary {
    /// [`Setup::key`].
    pub key: String,
    /// [`Setup::describe`].
    pub setup: String,
    /// Rounds run.
    pub rounds: usize,
    /// Median reload duration, seconds.
    pub reload_s: f64,
    /// Medians of the steady and during p50, p99, max (ms).
    pub steady_p50_ms: f64,
    /// Median of steady p99.
    pub steady_p99_ms: f64,
    /// Median of steady max.
    pub steady_max_ms: f64,
    /// Median of the reload window's p50.
    pub during_p50_ms: f64,
    /// Median of the reload window's p99.
    pub during_p99_ms: f64,
    /// Median of the reload window's max.
    pub during_max_ms: f64,
    /// Median steady throughput.
    pub steady_rps: f64,
    /// Median throughput during the reload.
    pub during_rps: f64,
    /// Median of the per-round p99 ratios.
    pub p99_ratio: f64,
    /// Median of the per-round throughput ratios.
    pub throughput_ratio: f64,
    /// Median of the per-round worst-slice throughput ratios.
    pub worst_slice_throughput_ratio: f64,
    /// Median of the per-round worst-slice p99 ratios.
    pub worst_slice_p99_ratio: f64,
    /// Failed requests, all rounds.
    pub failed: u64,
    /// Requests, all rounds.
    pub sent: u64,
}

/// Scenario 9's results.
#[derive(Debug, Clone, Serialize)]
pub struct Saturation {
    /// Load clients.
    pub clients: usize,
    /// Every run, in the order run.
    pub runs: Vec<SaturationRun>,
    /// One line per set-up.
    pub summary: Vec<SetupSummary>,
}

impl Saturation {
    /// The summary of `key`.
    pub fn of(&self, key: &str) -> Option<&SetupSummary> {
        self.summary.iter().find(|s| s.key == key)
    }
}

/// Runs the scenario: [`ROUNDS`] rounds of [`SETUPS`].
pub fn run(py: &Python, clients: usize) -> Result<Saturation> {
    let mut runs = Vec::new();
    for round in 1..=ROUNDS {
        for setup in SETUPS {
            let r = reload_once(py, setup, round, clients)?;
            eprintln!("{}", line(&r));
            runs.push(r);
        }
    }
    let summary = SETUPS
        .iter()
        .map(|s| {
            let mine: Vec<&SaturationRun> = runs.iter().filter(|r| r.key == s.key()).collect();
            let med = |f: fn(&SaturationRun) -> f64| median(mine.iter().map(|r| f(r)).collect());
            SetupSummary {
                key: s.key().into(),
                setup: s.describe(),
                rounds: mine.len(),
                reload_s: med(|r| r.reload_s),
                steady_p50_ms: med(|r| r.steady.p50_ms),
                steady_p99_ms: med(|r| r.steady.p99_ms),
                steady_max_ms: med(|r| r.steady.max_ms),
                during_p50_ms: med(|r| r.during.p50_ms),
                during_p99_ms: med(|r| r.during.p99_ms),
                during_max_ms: med(|r| r.during.max_ms),
                steady_rps: med(|r| r.steady_rps),
                during_rps: med(|r| r.during_rps),
                p99_ratio: med(|r| r.p99_ratio),
                throughput_ratio: med(|r| r.throughput_ratio),
                worst_slice_throughput_ratio: med(|r| r.worst_slice_rps / r.steady_rps),
                worst_slice_p99_ratio: med(|r| r.worst_slice_p99_ms / r.steady.p99_ms),
                failed: mine.iter().map(|r| r.counts.failed).sum(),
                sent: mine.iter().map(|r| r.counts.sent).sum(),
            }
        })
        .collect();
    Ok(Saturation { clients, runs, summary })
}

/// One line per run, for the console.
pub fn line(r: &SaturationRun) -> String {
    format!(
        "{} round {}: reload {:.2} s; p50 {:.1} → {:.1} ms, p99 {:.1} → {:.1} ms ({:.2}×), max {:.0} → {:.0} ms; \
         {:.0} → {:.0} req/s ({:.2}×); worst {} s: {:.0} req/s, p99 {:.1} ms; {} failed of {}; CPU busy {:.0} % / \
         {:.0} %{}",
        r.setup,
        r.round,
        r.reload_s,
        r.steady.p50_ms,
        r.during.p50_ms,
        r.steady.p99_ms,
        r.during.p99_ms,
        r.p99_ratio,
        r.steady.max_ms,
        r.during.max_ms,
        r.steady_rps,
        r.during_rps,
        r.throughput_ratio,
        SLICE.as_secs(),
        r.worst_slice_rps,
        r.worst_slice_p99_ms,
        r.counts.failed,
        r.counts.sent,
        r.cpu_busy_steady * 100.0,
        r.cpu_busy_during * 100.0,
        match (r.low_workers_seen, r.raised_early) {
            (Some(low), Some(early)) => format!("; {low} booting at low priority, {early} raised before ready"),
            _ => String::new(),
        }
    )
}

/// (busy, total) jiffies of the whole machine, from /proc/stat's first line.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|l| l.split_whitespace().filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal (guest is already in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

fn busy_between(a: (u64, u64), b: (u64, u64)) -> f64 {
    let total = b.1.saturating_sub(a.1);
    if total == 0 {
        return f64::NAN;
    }
    b.0.saturating_sub(a.0) as f64 / total as f64
}

/// The lowest throughput (req/s) and the highest p99 (ms) of the [`SLICE`]s of `[from, to]`
/// (the whole window if it is shorter).
fn worst_slices(r: &LoadReport, from: Duration, to: Duration) -> (f64, f64) {
    let len = SLICE.min(to.saturating_sub(from));
    if len.is_zero() {
        return (0.0, 0.0);
    }
    let (mut rps, mut p99) = (f64::INFINITY, 0.0f64);
    let mut at = from;
    while at + len <= to {
        let w = Window::of(r, at, at + len);
        rps = rps.min(w.completed as f64 / w.secs);
        p99 = p99.max(w.p99_ms);
        at += SLICE_STEP;
    }
    (rps, p99)
}

fn rps(w: &Window) -> f64 {
    if w.secs > 0.0 {
        w.completed as f64 / w.secs
    } else {
        0.0
    }
}

enum Running {
    Gunicorn(Gunicorn),
    Handover(Handover),
}

fn start(py: &Python, setup: Setup, version_file: &Path) -> Result<(Running, std::net::SocketAddr)> {
    let listener = listen_loopback(1024)?;
    let addr = listener.local_addr()?;
    // The first boot is at normal priority either way (nothing serves yet); 4 imports of 2 s
    // of CPU on a shared machine.
    let boot = Duration::from_secs(90);
    let running = match setup {
        Setup::GunicornHup => {
            let args = py.cpu_app_args(WORKERS);
            Running::Gunicorn(
                Gunicorn::start_with(py, WORKERS, &args, &py.cpu_app_env(version_file), listener, boot)?.0,
            )
        }
        Setup::Handover(priority) => {
            let mut workers = py.handover_cpu_workers(WORKERS, version_file);
            workers.boot_timeout = BOOT_TIMEOUT.into();
            workers.boot_priority = priority.map(str::to_owned);
            let h = Handover::spawn_on(&workers, listener)?;
            h.wait_ready(1, boot)?;
            Running::Handover(h)
        }
    };
    Ok((running, addr))
}

/// What handover said about the reload: its status line, the new workers seen at low
/// priority, the reload's exit code.
struct HandoverReload {
    code: i32,
    boot_priority: String,
    low_seen: usize,
}

/// `handover reload`, and meanwhile, [`STATUS_AFTER`] after the trigger, one `handover status`.
fn handover_reload(h: &Handover) -> Result<HandoverReload> {
    std::thread::scope(|s| {
        let reload = s.spawn(|| h.cli(&["reload"], Duration::from_secs(150)));
        std::thread::sleep(STATUS_AFTER); // a moment into the boot, not a wait for an event
        let status = h.status();
        let out = reload.join().map_err(|_| anyhow::anyhow!("the reload thread panicked"))??;
        if out.code != 0 {
            eprintln!("bench: handover reload exited {}: {}\n{}", out.code, out.stderr.trim(), h.log_tail());
        }
        let status = status?;
        let low_seen = status["workers"]
            .as_array()
            .map_or(0, |ws| ws.iter().filter(|w| w["low_priority"].as_bool() == Some(true)).count());
        let boot_priority = status["boot_priority"].as_str().unwrap_or("?").to_owned();
        Ok(HandoverReload { code: out.code, boot_priority, low_seen })
    })
}

/// One reload of `setup` from version 1 to 2 under `clients` clients.
fn reload_once(py: &Python, setup: Setup, round: usize, clients: usize) -> Result<SaturationRun> {
    let dir = tempfile::tempdir()?;
    let version_file = dir.path().join("version");
    set_version(&version_file, "1")?;
    let (running, addr) = start(py, setup, &version_file)?;
    let load = stats::load(addr, clients, false, Duration::from_secs(150))?;
    let t0 = load.started_at();
    stats::wait_flowing(&load, Duration::from_secs(20))?;
    let steady_from = t0.elapsed() + WARMUP;
    sleep_until(t0, steady_from);
    let cpu_a = cpu_jiffies();
    sleep_until(t0, steady_from + STEADY);
    let cpu_b = cpu_jiffies();
    set_version(&version_file, "2")?;
    let trigger = t0.elapsed();
    let (done, handover) = match &running {
        Running::Handover(h) => {
            let r = handover_reload(h)?;
            (t0.elapsed(), Some(r))
        }
        Running::Gunicorn(g) => {
            g.hup();
            let at = g.notify.wait_count("READY=1", 2 * g.workers, Duration::from_secs(120))?;
            (at - t0, None)
        }
    };
    let cpu_c = cpu_jiffies();
    sleep_until(t0, done + TAIL);
    let report = load.stop();
    let raised_early = match &running {
        Running::Handover(h) => Some(
            std::fs::read_to_string(h.dir.path().join("handover.log"))
                .unwrap_or_default()
                .matches("still booting: raised to normal CPU priority")
                .count(),
        ),
        Running::Gunicorn(_) => None,
    };
    match running {
        Running::Gunicorn(g) => g.stop(),
        Running::Handover(h) => h.stop(Duration::from_secs(30))?,
    }
    let steady = Window::of(&report, trigger.saturating_sub(STEADY), trigger);
    let during = Window::of(&report, trigger, done);
    let counts = Counts::of(&report);
    if !counts.by_generation.contains_key("2") {
        bail!("{}: the new version never answered: {counts:?}", setup.describe());
    }
    let (steady_rps, during_rps) = (rps(&steady), rps(&during));
    let (worst_slice_rps, worst_slice_p99_ms) = worst_slices(&report, trigger, done);
    Ok(SaturationRun {
        key: setup.key().into(),
        setup: setup.describe(),
        round,
        counts,
        reload_s: (done - trigger).as_secs_f64(),
        reload_exit: handover.as_ref().map(|h| h.code),
        p99_ratio: during.p99_ms / steady.p99_ms,
        throughput_ratio: during_rps / steady_rps,
        worst_slice_rps,
        worst_slice_p99_ms,
        steady,
        during,
        steady_rps,
        during_rps,
        cpu_busy_steady: busy_between(cpu_a, cpu_b),
        cpu_busy_during: busy_between(cpu_b, cpu_c),
        boot_priority: handover.as_ref().map(|h| h.boot_priority.clone()),
        low_workers_seen: handover.as_ref().map(|h| h.low_seen),
        raised_early,
    })
}
