//! Scenario 10: a release that boots but fails (SPEC §8: "A release that boots but fails
//! requests reaches at most the canaries' share of traffic for at most canary_time, and
//! systemctl reload exits 1").
//!
//! One app (`benches/wsgi/release_app.py`, WSGI and ASGI), 4 workers, 4 clients that never
//! retry ([`crate::statusload`]). The good release serves; then the release on disk becomes
//! one that boots as well as the good one but answers 500 to 30 % of its requests, and it is
//! deployed, side by side in one run, by:
//! - gunicorn's `kill -HUP` (`gunicorn -w 4`: every new worker runs the new code);
//! - uvicorn's `kill -HUP` (`uvicorn --fd 3 --workers 4`: it replaces its workers one by
//!   one);
//! - `handover reload`, without a canary (4 × `gunicorn --preload -w 1`);
//! - `handover reload` with `canary = 1`, `canary_time = "30s"` (same workers).
//!
//! The gunicorn workers under handover use the README's recipe file
//! (`packaging/examples/gunicorn/gunicorn.conf.py`): READY=1 once the arbiter's workers run,
//! and the request outcomes (`X_HANDOVER_REQUESTS=`/`X_HANDOVER_ERRORS=`) from its
//! post_request hook, which is what handover judges a canary on; gunicorn alone uses the
//! benchmark's (`benches/wsgi/gunicorn.conf.py`: READY=1 from each worker, to time its HUP).
//! For each set-up: requests, connection errors and 500s in the [`WINDOW`] after the deploy
//! command; how long bad code served (deploy command to the last 500); the command's exit
//! status; what came after it returned.
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::gunicorn::{set_version, Gunicorn, Python};
use crate::harness::{handover_bin, listen_loopback, pass_fd_as_3, run_bounded, Handover, NotifySink, Proc};
use crate::reload::sleep_until;
use crate::statusload::{self, StatusReport};

/// Workers of every set-up.
pub const WORKERS: usize = 4;
/// Load clients.
pub const CLIENTS: usize = 4;
/// The share of its requests the bad release answers with 500.
pub const BAD_SHARE: f64 = 0.3;
/// The bad release's version name (its answers say `gen=bad`).
pub const BAD: &str = "bad";
/// `reload.canary` of the canary set-up.
pub const CANARY: usize = 1;
/// `reload.canary_time` of the canary set-up.
pub const CANARY_TIME: &str = "30s";
/// Load before the steady window.
const WARMUP: Duration = Duration::from_secs(1);
/// The good release serving, just before the deploy.
pub const STEADY: Duration = Duration::from_secs(3);
/// What is measured after the deploy command: long enough for a canary that passed
/// (`canary_time` after it is ready, then the rest of its generation booting).
pub const WINDOW: Duration = Duration::from_secs(45);
/// Bad code "served until the end" if its last 500 came this close to the window's end.
const END_SLACK: Duration = Duration::from_secs(1);
/// The most this scenario may take (added to the run's overall deadline).
pub const BUDGET: Duration = Duration::from_secs(8 * 60);

/// One set-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// `gunicorn -w 4`, `kill -HUP`.
    GunicornHup,
    /// `uvicorn --workers 4`, `kill -HUP`.
    UvicornHup,
    /// handover, 4 × `gunicorn --preload -w 1`, no canary.
    Handover,
    /// The same with `canary = 1`, `canary_time = "30s"`.
    HandoverCanary,
}

/// The set-ups, in the order run.
pub const SETUPS: [Setup; 4] = [Setup::GunicornHup, Setup::UvicornHup, Setup::Handover, Setup::HandoverCanary];

impl Setup {
    /// Machine-readable name.
    pub fn key(self) -> &'static str {
        match self {
            Setup::GunicornHup => "gunicorn-hup",
            Setup::UvicornHup => "uvicorn-hup",
            Setup::Handover => "handover",
            Setup::HandoverCanary => "handover-canary",
        }
    }

    /// Human-readable.
    pub fn describe(self) -> String {
        match self {
            Setup::GunicornHup => "gunicorn -w 4".into(),
            Setup::UvicornHup => "uvicorn --fd 3 --workers 4".into(),
            Setup::Handover => "handover, no canary (4 × `gunicorn --preload -w 1`)".into(),
            Setup::HandoverCanary => format!(
                "handover, `canary = {CANARY}`, `canary_time = \"{CANARY_TIME}\"` (4 × `gunicorn --preload -w 1`)"
            ),
        }
    }

    /// The deploy command.
    pub fn deploy(self) -> &'static str {
        match self {
            Setup::GunicornHup => "kill -HUP <gunicorn master>",
            Setup::UvicornHup => "kill -HUP <uvicorn supervisor>",
            Setup::Handover | Setup::HandoverCanary => "handover reload",
        }
    }
}

/// Requests whose outcome came in a window (by completion time).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    /// Requests: answered + connection errors.
    pub requests: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Answered 500.
    pub status_500: u64,
    /// Answered with another status outside 2xx.
    pub other_status: u64,
    /// Failed without an answer (refused, reset, closed, timed out): never retried.
    pub conn_errors: u64,
}

impl Tally {
    /// The outcomes of `r` that came in `(from, to]`.
    pub fn of(r: &StatusReport, from: Duration, to: Duration) -> Tally {
        let inside = |at: Duration| at > from && at <= to;
        Self::count(r, |a| inside(a.at), |e| inside(e.at))
    }

    /// The outcomes of the requests of `r` sent in `(from, to]`, whenever they came.
    pub fn sent(r: &StatusReport, from: Duration, to: Duration) -> Tally {
        let inside = |at: Duration| at > from && at <= to;
        Self::count(r, |a| inside(a.started), |e| inside(e.started))
    }

    fn count(
        r: &StatusReport,
        answer: impl Fn(&statusload::Answer) -> bool,
        error: impl Fn(&statusload::ConnError) -> bool,
    ) -> Tally {
        let mut t = Tally::default();
        for a in r.answers.iter().filter(|a| answer(a)) {
            match a.status {
                200..=299 => t.ok += 1,
                500 => t.status_500 += 1,
                _ => t.other_status += 1,
            }
        }
        t.conn_errors = r.errors.iter().filter(|e| error(e)).count() as u64;
        t.requests = t.ok + t.status_500 + t.other_status + t.conn_errors;
        t
    }

    /// 500s, other error statuses and connection errors.
    pub fn errors(&self) -> u64 {
        self.status_500 + self.other_status + self.conn_errors
    }
}

/// One set-up's deploy of the bad release.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseRun {
    /// [`Setup::key`].
    pub key: String,
    /// [`Setup::describe`].
    pub setup: String,
    /// [`Setup::deploy`].
    pub deploy: String,
    /// The good release, in the [`STEADY`] window before the deploy command.
    pub before: Tally,
    /// The [`WINDOW`] from the deploy command.
    pub window: Tally,
    /// Answers in the window by the `gen=` of their body (the release that answered).
    pub by_release: std::collections::BTreeMap<String, u64>,
    /// First and last 500 of the window, seconds after the deploy command.
    pub first_500_s: Option<f64>,
    /// See `first_500_s`.
    pub last_500_s: Option<f64>,
    /// The last 500 came within a second of the window's end: bad code never stopped.
    pub served_to_the_end: bool,
    /// Exit status of the deploy command.
    pub exit: i32,
    /// When it returned, seconds after it started.
    pub returned_s: f64,
    /// What it said on stderr (handover's reason for a failed reload).
    pub reason: String,
    /// gunicorn, uvicorn: when all new workers had said READY=1 (a HUP returns at once).
    pub new_workers_ready_s: Option<f64>,
    /// From the deploy command until it returned.
    pub until_return: Tally,
    /// From its return to the window's end.
    pub after_return: Tally,
    /// The requests sent after it returned (until the window's end), whenever they came.
    pub sent_after_return: Tally,
    /// The bad release's first and last answer (any status), seconds after the deploy command.
    pub first_bad_s: Option<f64>,
    /// See `first_bad_s`.
    pub last_bad_s: Option<f64>,
    /// The bad release's share of the answers between its first and its last one.
    pub bad_share_of_traffic: Option<f64>,
    /// The first connection errors, "reason @ seconds after the deploy".
    pub first_conn_errors: Vec<String>,
}

/// Scenario 10's results.
#[derive(Debug, Clone, Serialize)]
pub struct BadRelease {
    /// `uvicorn --version`, or why uvicorn did not run.
    pub uvicorn: String,
    /// Every set-up, in the order run.
    pub runs: Vec<ReleaseRun>,
}

impl BadRelease {
    /// The run of `key`.
    pub fn of(&self, key: &str) -> Option<&ReleaseRun> {
        self.runs.iter().find(|r| r.key == key)
    }
}

/// The canary's expected share of the traffic: canaries / (old workers + canaries).
pub fn canary_share() -> f64 {
    CANARY as f64 / (WORKERS + CANARY) as f64
}

/// The goal: at most this many 500s for a canary that served until `requests` requests had
/// been answered since the deploy.
pub fn canary_bound(requests: u64) -> f64 {
    canary_share() * BAD_SHARE * requests as f64
}

/// Runs the scenario.
pub fn run(py: &Python) -> Result<BadRelease> {
    let uvicorn = py.gunicorn.with_file_name("uvicorn");
    let uvicorn_version = if uvicorn.exists() {
        let mut c = Command::new(&uvicorn);
        c.arg("--version");
        Some(run_bounded("uvicorn --version", c, Duration::from_secs(30))?.stdout.trim().to_owned())
    } else {
        None
    };
    let mut runs = Vec::new();
    for setup in SETUPS {
        if setup == Setup::UvicornHup && uvicorn_version.is_none() {
            eprintln!("bench: {} not found (benches/run.sh installs it): uvicorn's row is left out", uvicorn.display());
            continue;
        }
        let r = run_once(py, setup, &uvicorn)?;
        eprintln!("{}", line(&r));
        runs.push(r);
    }
    Ok(BadRelease { uvicorn: uvicorn_version.unwrap_or_else(|| "not installed".into()), runs })
}

/// One line per run, for the console.
pub fn line(r: &ReleaseRun) -> String {
    format!(
        "  {}: `{}` exit {} after {:.2} s; {} requests in {} s, {} connection errors, {} answered 500 (first {}, last {}); \
         after it returned: {} 500s, {} connection errors; by release {:?}{}",
        r.setup,
        r.deploy,
        r.exit,
        r.returned_s,
        r.window.requests,
        WINDOW.as_secs(),
        r.window.conn_errors,
        r.window.status_500,
        r.first_500_s.map_or("-".into(), |s| format!("{s:.2} s")),
        r.last_500_s.map_or("-".into(), |s| format!("{s:.2} s")),
        r.after_return.status_500,
        r.after_return.conn_errors,
        r.by_release,
        if r.reason.is_empty() { String::new() } else { format!("; {}", r.reason) }
    )
}

/// The README's gunicorn recipe file (readiness and request outcomes).
fn recipe_conf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("packaging/examples/gunicorn/gunicorn.conf.py")
}

/// gunicorn's arguments: `workers` sync workers (each closes its connection after the
/// answer, so every request is accepted anew, by whichever process is free: a canary gets its
/// share of requests, not of long-lived connections), the config file `conf`.
fn gunicorn_args(workers: usize, preload: bool, conf: &Path) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    if preload {
        args.push("--preload".into());
    }
    args.extend(
        [
            "-w",
            &workers.to_string(),
            "-c",
            &conf.display().to_string(),
            "--worker-class",
            "sync",
            "--log-level",
            "warning",
            "--graceful-timeout",
            "10",
            "--no-control-socket",
            "release_app:app",
        ]
        .map(str::to_owned),
    );
    args
}

/// uvicorn's multiprocess supervisor on the socket it was given as fd 3.
struct Uvicorn {
    proc: Proc,
    notify: NotifySink,
    _dir: tempfile::TempDir,
}

enum Running {
    Gunicorn(Gunicorn),
    Uvicorn(Uvicorn),
    Handover(Handover),
}

fn start(py: &Python, setup: Setup, uvicorn: &Path, version_file: &Path) -> Result<(Running, SocketAddr)> {
    let boot = Duration::from_secs(60);
    let env = py.app_env(version_file);
    match setup {
        Setup::GunicornHup => {
            let listener = listen_loopback(1024)?;
            let addr = listener.local_addr()?;
            let g = Gunicorn::start_with(
                py,
                WORKERS,
                &gunicorn_args(WORKERS, false, Path::new(&py.conf())),
                &env,
                listener,
                boot,
            )?
            .0;
            Ok((Running::Gunicorn(g), addr))
        }
        Setup::UvicornHup => {
            // The listening socket as a socket unit with `NoDelay=yes` passes it (handover's
            // uvicorn recipe relies on the same): uvicorn's workers do not set TCP_NODELAY on
            // the connections they accept with `--workers` > 1, and on a socket without it
            // every keep-alive answer (head and body in two writes) waits ~40 ms for the
            // client's delayed ACK: 90 requests a second here instead of thousands.
            let listener = listen_loopback(1024)?;
            nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::TcpNoDelay, &true)?;
            let addr = listener.local_addr()?;
            let dir = tempfile::Builder::new().prefix("uvicorn-bench-").tempdir()?;
            let notify = NotifySink::bind(&dir.path().join("notify"))?;
            let log = std::fs::File::create(dir.path().join("uvicorn.log"))?;
            let mut cmd = Command::new(uvicorn);
            cmd.args(["--fd", "3", "--workers", &WORKERS.to_string(), "--log-level", "warning", "release_app:asgi"])
                .current_dir(&py.app_dir)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env("NOTIFY_SOCKET", &notify.path)
                .env_remove("LISTEN_FDS")
                .env_remove("LISTEN_PID")
                .env_remove("LISTEN_FDNAMES")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            pass_fd_as_3(&mut cmd, listener.as_raw_fd());
            let proc = Proc::spawn("uvicorn", cmd)?;
            // uvicorn owns the socket now, as in a HUP deployment.
            drop(listener);
            let u = Uvicorn { proc, notify, _dir: dir };
            if let Err(e) = u.notify.wait_count("READY=1", WORKERS, boot) {
                let log = std::fs::read_to_string(u._dir.path().join("uvicorn.log")).unwrap_or_default();
                bail!("uvicorn did not start: {e}\n{log}");
            }
            Ok((Running::Uvicorn(u), addr))
        }
        Setup::Handover | Setup::HandoverCanary => {
            let listener = listen_loopback(1024)?;
            let addr = listener.local_addr()?;
            let mut w = py.handover_workers(WORKERS, version_file);
            w.command = std::iter::once(py.gunicorn.display().to_string())
                .chain(gunicorn_args(1, true, &recipe_conf()))
                .collect();
            w.env = env;
            if setup == Setup::HandoverCanary {
                w.reload_extra =
                    vec![("canary".into(), CANARY.to_string()), ("canary_time".into(), format!("{CANARY_TIME:?}"))];
            }
            let h = Handover::spawn_on(&w, listener)?;
            h.wait_ready(1, boot)?;
            Ok((Running::Handover(h), addr))
        }
    }
}

/// Runs `program ARGS` to its exit, timing the exit exactly (a blocking wait, not a poll):
/// exit code, stderr, and when it exited.
fn deploy_command(name: &str, mut cmd: Command) -> Result<(i32, String, Instant)> {
    let dir = tempfile::tempdir()?;
    let err = dir.path().join("stderr");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(std::fs::File::create(&err)?);
    let mut p = Proc::spawn(name, cmd)?;
    let status = p.wait().with_context(|| format!("waiting for {name}"))?;
    let at = Instant::now();
    Ok((status.code().unwrap_or(-1), std::fs::read_to_string(&err).unwrap_or_default().trim().to_owned(), at))
}

fn kill_hup(pid: i32) -> Result<(i32, String, Instant)> {
    let mut cmd = Command::new("kill");
    cmd.args(["-HUP", &pid.to_string()]);
    deploy_command("kill -HUP", cmd)
}

/// One set-up: the good release serves, the bad one is deployed, [`WINDOW`] is measured.
fn run_once(py: &Python, setup: Setup, uvicorn: &Path) -> Result<ReleaseRun> {
    let dir = tempfile::tempdir()?;
    let version_file = dir.path().join("version");
    set_version(&version_file, "1")?;
    let (running, addr) = start(py, setup, uvicorn, &version_file)?;
    let load = statusload::start(addr, CLIENTS, WARMUP + STEADY + WINDOW + Duration::from_secs(60))?;
    let t0 = load.started_at();
    load.wait_flowing(Duration::from_secs(20))?;
    sleep_until(t0, t0.elapsed() + WARMUP + STEADY);
    set_version(&version_file, &format!("{BAD} BAD={BAD_SHARE}"))?;
    let trigger = t0.elapsed();
    let (exit, reason, returned) = match &running {
        Running::Gunicorn(g) => kill_hup(g.pid())?,
        Running::Uvicorn(u) => kill_hup(u.proc.pid())?,
        Running::Handover(h) => {
            let mut cmd = Command::new(handover_bin());
            cmd.args(["reload", "--timeout", "120s", "-c"]).arg(&h.config);
            deploy_command("handover reload", cmd)?
        }
    };
    let returned = returned - t0;
    let end = trigger + WINDOW;
    let left = end.saturating_sub(t0.elapsed());
    let new_workers_ready = match &running {
        Running::Gunicorn(g) => g.notify.wait_count("READY=1", 2 * WORKERS, left).ok(),
        Running::Uvicorn(u) => u.notify.wait_count("READY=1", 2 * WORKERS, left).ok(),
        Running::Handover(_) => None,
    };
    sleep_until(t0, end);
    let report = load.stop();
    match running {
        Running::Gunicorn(g) => g.stop(),
        Running::Uvicorn(mut u) => {
            u.proc.stop(libc::SIGTERM, Duration::from_secs(20));
        }
        Running::Handover(h) => {
            if exit != 0 && setup != Setup::HandoverCanary {
                eprintln!("bench: handover reload exited {exit}: {reason}\n{}", h.log_tail());
            }
            h.stop(Duration::from_secs(30))?;
        }
    }

    let since = |d: Duration| d.saturating_sub(trigger).as_secs_f64();
    let in_window: Vec<&statusload::Answer> = report.answers.iter().filter(|a| a.at > trigger && a.at <= end).collect();
    let fives: Vec<Duration> = in_window.iter().filter(|a| a.status == 500).map(|a| a.at).collect();
    let mut by_release = std::collections::BTreeMap::new();
    for a in &in_window {
        *by_release.entry(a.generation.clone()).or_insert(0u64) += 1;
    }
    let bad: Vec<Duration> = in_window.iter().filter(|a| a.generation == BAD).map(|a| a.at).collect();
    let bad_share_of_traffic = match (bad.first(), bad.last()) {
        (Some(&first), Some(&last)) => {
            let all = in_window.iter().filter(|a| a.at >= first && a.at <= last).count();
            Some(bad.len() as f64 / all.max(1) as f64)
        }
        _ => None,
    };
    if !by_release.contains_key(BAD) {
        bail!("{}: the bad release never answered: {by_release:?}", setup.describe());
    }
    Ok(ReleaseRun {
        key: setup.key().into(),
        setup: setup.describe(),
        deploy: setup.deploy().into(),
        before: Tally::of(&report, trigger.saturating_sub(STEADY), trigger),
        window: Tally::of(&report, trigger, end),
        by_release,
        first_500_s: fives.first().map(|&d| since(d)),
        last_500_s: fives.last().map(|&d| since(d)),
        served_to_the_end: fives.last().is_some_and(|&d| d + END_SLACK >= end),
        exit,
        returned_s: since(returned),
        reason,
        new_workers_ready_s: new_workers_ready.map(|at| since(at - t0)),
        until_return: Tally::of(&report, trigger, returned),
        after_return: Tally::of(&report, returned, end),
        sent_after_return: Tally::sent(&report, returned, end),
        first_bad_s: bad.first().map(|&d| since(d)),
        last_bad_s: bad.last().map(|&d| since(d)),
        bad_share_of_traffic,
        first_conn_errors: report
            .errors
            .iter()
            .filter(|e| e.at > trigger && e.at <= end)
            .take(5)
            .map(|e| format!("{} @{:.3} s", e.reason, since(e.at)))
            .collect(),
    })
}
