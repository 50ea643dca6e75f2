//! Scenarios 1 and 2: reloads under continuous HTTP load, successful and failed, for handover
//! and, on the same WSGI app in the same run, for gunicorn's `kill -HUP`.
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::gunicorn::{set_version, Gunicorn, Python};
use crate::harness::{listen_loopback, Handover, NotifySink, WorkerSetup};
use crate::stats::{self, Counts, Window};

/// Load clients in every reload scenario.
pub const CLIENTS: usize = 4;
/// Load before the steady-state window, to let connections and caches settle.
const WARMUP: Duration = Duration::from_secs(1);
/// The steady-state window just before the reload, and the least length of the reload
/// window: both equally long, so that their longest gaps compare (the longest gap of a
/// window grows with its length). Rolling reloads take longer: see [`Server::window`].
pub const STEADY: Duration = Duration::from_secs(3);
/// The reload window lasts at least this long after the reload completed.
const TAIL: Duration = Duration::from_millis(500);
/// Timeline bucket of the plot.
pub const BUCKET: Duration = Duration::from_millis(100);
/// Worker count of scenarios 1 and 2.
pub const WORKERS: usize = 4;

/// Which server is reloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// gunicorn -w 4, `kill -HUP`.
    GunicornHup,
    /// handover, `handover reload`, with this strategy and max_surge.
    Handover(&'static str, usize),
}

impl Server {
    /// Length of the steady-state window and least length of the reload window: long enough
    /// to hold the whole reload (a rolling reload with max_surge 1 boots the workers one
    /// after the other, 2 s of import and the interpreter's start each).
    fn window(self) -> Duration {
        match self {
            Server::Handover("rolling", surge) => {
                STEADY.max(Duration::from_secs(3) * (WORKERS.div_ceil(surge.max(1)) as u32))
            }
            _ => STEADY,
        }
    }

    /// Machine-readable name.
    pub fn key(self) -> String {
        match self {
            Server::GunicornHup => "gunicorn-hup".into(),
            Server::Handover(s, _) => format!("handover-{s}"),
        }
    }

    fn describe(self, app: &App<'_>) -> String {
        match (self, app) {
            (Server::GunicornHup, _) => "gunicorn -w 4, `kill -HUP`".into(),
            (Server::Handover(s, m), App::Gunicorn(_)) => {
                let how = if s == "rolling" { format!("rolling, max_surge {m}") } else { s.to_string() };
                format!("handover {how} (4 × `gunicorn --preload -w 1`)")
            }
            (Server::Handover(s, m), App::Demo) => {
                let how = if s == "rolling" { format!("rolling, max_surge {m}") } else { s.to_string() };
                format!("handover {how} (4 × demo-worker)")
            }
        }
    }
}

/// Which app the workers run.
#[derive(Debug, Clone, Copy)]
pub enum App<'a> {
    /// benches/wsgi/app.py under gunicorn, importing for 2 s.
    Gunicorn(&'a Python),
    /// The built-in demo worker with `--boot-delay 2s` (quick mode: no Python needed).
    Demo,
}

/// Scenario 1: one reload under load.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRun {
    /// Machine-readable name of the server set-up.
    pub key: String,
    /// Human-readable.
    pub server: String,
    /// "new connection per request" or "keep-alive".
    pub clients: String,
    /// Whether clients reuse connections.
    pub keep_alive: bool,
    /// Request counts over the whole run.
    pub counts: Counts,
    /// Trigger to completion: `handover reload` returned, or gunicorn's new workers all ready.
    pub reload_s: f64,
    /// Exit code of `handover reload` (handover only).
    pub reload_exit: Option<i32>,
    /// The steady-state window just before the trigger.
    pub steady: Window,
    /// The control window after the reload window (handover only): steady load while the
    /// same new worker processes boot and stop beside the serving ones, on another socket,
    /// so without any hand-over: what the reload costs the machine, minus the switch.
    pub control: Option<Window>,
    /// From the trigger to the end of the reload window.
    pub during: Window,
    /// Start of the timeline relative to the trigger, seconds (negative).
    pub timeline_from_s: f64,
    /// Completed requests per 100 ms from `timeline_from_s`.
    pub timeline: Vec<u64>,
}

enum Running {
    Gunicorn(Gunicorn),
    Handover(Handover),
}

fn start_server(
    server: Server,
    app: &App<'_>,
    version_file: &Path,
    boot_timeout: &str,
) -> Result<(Running, std::net::SocketAddr)> {
    let listener = listen_loopback(1024)?;
    let addr = listener.local_addr()?;
    let running = match (server, app) {
        (Server::GunicornHup, App::Gunicorn(py)) => {
            Running::Gunicorn(Gunicorn::start(py, WORKERS, listener, version_file)?.0)
        }
        (Server::GunicornHup, App::Demo) => bail!("gunicorn needs the WSGI app"),
        (Server::Handover(strategy, surge), app) => {
            let mut setup = match app {
                App::Gunicorn(py) => py.handover_workers(WORKERS, version_file),
                App::Demo => WorkerSetup::demo(WORKERS, &["--boot-delay", "2s"]),
            };
            setup.strategy = strategy.into();
            setup.max_surge = surge;
            setup.boot_timeout = boot_timeout.into();
            let h = Handover::spawn_on(&setup, listener)?;
            h.wait_ready(1, Duration::from_secs(60))?;
            Running::Handover(h)
        }
    };
    Ok((running, addr))
}

fn stop_server(r: Running) -> Result<()> {
    match r {
        Running::Gunicorn(g) => {
            g.stop();
            Ok(())
        }
        Running::Handover(h) => h.stop(Duration::from_secs(30)),
    }
}

/// Sleeps until `offset` after `origin`: the length of a measurement window, not a wait for
/// an event.
pub fn sleep_until(origin: Instant, offset: Duration) {
    if let Some(left) = (origin + offset).checked_duration_since(Instant::now()) {
        std::thread::sleep(left);
    }
}

/// Scenario 1: `server` reloads from version 1 to version 2 under `CLIENTS` clients.
pub fn reload_under_load(server: Server, app: &App<'_>, keep_alive: bool) -> Result<ReloadRun> {
    let dir = tempfile::tempdir()?;
    let version_file = dir.path().join("version");
    set_version(&version_file, "1")?;
    let (running, addr) = start_server(server, app, &version_file, "20s")?;
    let load = stats::load(addr, CLIENTS, keep_alive, Duration::from_secs(120))?;
    let t0 = load.started_at();
    stats::wait_flowing(&load, Duration::from_secs(10))?;
    let flowing = t0.elapsed();
    let window = server.window();
    sleep_until(t0, flowing + WARMUP + window);
    set_version(&version_file, "2")?;
    let trigger = t0.elapsed();
    let (done, exit) = match &running {
        Running::Handover(h) => {
            let out = h.cli(&["reload"], Duration::from_secs(120))?;
            if out.code != 0 {
                eprintln!("bench: handover reload exited {}: {}\n{}", out.code, out.stderr.trim(), h.log_tail());
            }
            (t0.elapsed(), Some(out.code))
        }
        Running::Gunicorn(g) => {
            g.hup();
            let at = g.notify.wait_count("READY=1", 2 * g.workers, Duration::from_secs(60))?;
            (at - t0, None)
        }
    };
    let end = (trigger + window).max(done + TAIL);
    sleep_until(t0, end);
    // The control comes after the reload, so that the plot's steady state before the
    // trigger is plain steady state for every server.
    let control = match server {
        Server::Handover(..) => {
            let (from, stopped) = control_boot(app, &version_file, t0)?;
            let to = (from + window).max(stopped + TAIL);
            sleep_until(t0, to);
            Some((from, to))
        }
        Server::GunicornHup => None,
    };
    let report = load.stop();
    stop_server(running)?;
    let from = trigger.saturating_sub(STEADY);
    let run = ReloadRun {
        key: server.key(),
        server: server.describe(app),
        clients: if keep_alive { "keep-alive".into() } else { "new connection per request".into() },
        keep_alive,
        counts: Counts::of(&report),
        reload_s: (done - trigger).as_secs_f64(),
        reload_exit: exit,
        steady: Window::of(&report, trigger.saturating_sub(window), trigger),
        control: control.map(|(from, to)| Window::of(&report, from, to)),
        during: Window::of(&report, trigger, end),
        timeline_from_s: -STEADY.as_secs_f64(),
        timeline: stats::timeline(&report, from, end, BUCKET),
    };
    if !run.counts.by_generation.contains_key("2") {
        bail!("{} {}: the new version never answered: {:?}", run.server, run.clients, run.counts);
    }
    Ok(run)
}

/// The control of a handover reload: boots the same `WORKERS` new worker processes a reload
/// would (same command, same app, same version), beside the serving generation but on a
/// socket of their own that nobody connects to, waits until they all said READY=1, then
/// stops them as a reload stops the old generation (SIGTERM) and waits for their exit.
/// Returns when it began and when the last one had exited, as offsets from `t0`.
fn control_boot(app: &App<'_>, version_file: &Path, t0: Instant) -> Result<(Duration, Duration)> {
    let dir = tempfile::Builder::new().prefix("control-bench-").tempdir()?;
    let sink = NotifySink::bind(&dir.path().join("notify"))?;
    let dummy = listen_loopback(16)?;
    let log = std::fs::File::create(dir.path().join("control.log"))?;
    let from = t0.elapsed();
    let setup = match app {
        App::Gunicorn(py) => py.handover_workers(WORKERS, version_file),
        App::Demo => WorkerSetup::demo(WORKERS, &["--boot-delay", "2s"]),
    };
    let mut procs = setup.spawn_by_hand("control worker", dummy.as_raw_fd(), &sink.path, &log, "control")?;
    sink.wait_count("READY=1", WORKERS, Duration::from_secs(60))?;
    for p in &procs {
        p.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for p in &mut procs {
        if p.wait_until(deadline).is_none() {
            bail!("a control worker did not exit on SIGTERM");
        }
    }
    Ok((from, t0.elapsed()))
}

/// Scenario 2: a reload to a version that cannot serve.
#[derive(Debug, Clone, Serialize)]
pub struct FailedReload {
    /// "broken" (exits at import), "never-ready" (never says READY=1).
    pub version: String,
    /// Human-readable server set-up.
    pub server: String,
    /// Request counts over the run: 1 s of steady load, the trigger, and the window after it.
    pub counts: Counts,
    /// Exit code of `handover reload` (1 = rolled back), or of gunicorn's master if it died.
    pub exit: Option<i32>,
    /// When `handover reload` returned, or gunicorn's master exited, after the trigger.
    pub returned_s: Option<f64>,
    /// What `handover reload` said on stderr, or what gunicorn did.
    pub reason: String,
    /// The load from the trigger to the end of the window.
    pub during: Window,
    /// The steady-state window just before the trigger.
    pub steady: Window,
}

/// Scenario 2 for handover: broken, then never-ready, on one daemon (gunicorn workers).
pub fn failed_reloads_handover(py: &Python) -> Result<Vec<FailedReload>> {
    let dir = tempfile::tempdir()?;
    let version_file = dir.path().join("version");
    set_version(&version_file, "1")?;
    let app = App::Gunicorn(py);
    let server = Server::Handover("all-at-once", 1);
    // boot_timeout 5 s: the app needs ~2.5 s; the never-ready version is given up on at 5 s.
    let (running, addr) = start_server(server, &app, &version_file, "5s")?;
    let Running::Handover(h) = &running else { bail!("not handover") };
    let mut out = Vec::new();
    for version in ["broken", "hang"] {
        let load = stats::load(addr, CLIENTS, false, Duration::from_secs(60))?;
        let t0 = load.started_at();
        stats::wait_flowing(&load, Duration::from_secs(10))?;
        let flowing = t0.elapsed();
        sleep_until(t0, flowing + Duration::from_secs(1));
        set_version(&version_file, version)?;
        let trigger = t0.elapsed();
        let r = h.cli(&["reload"], Duration::from_secs(60))?;
        let returned = t0.elapsed();
        let end = returned + Duration::from_secs(1);
        sleep_until(t0, end);
        let report = load.stop();
        out.push(FailedReload {
            version: if version == "hang" { "never-ready".into() } else { version.into() },
            server: server.describe(&app),
            counts: Counts::of(&report),
            exit: Some(r.code),
            returned_s: Some((returned - trigger).as_secs_f64()),
            reason: r.stderr.trim().to_owned(),
            during: Window::of(&report, trigger, end),
            steady: Window::of(&report, trigger.saturating_sub(Duration::from_secs(1)), trigger),
        });
    }
    stop_server(running)?;
    Ok(out)
}

/// Scenario 2's contrast: gunicorn's HUP to the broken version.
pub fn failed_reload_gunicorn(py: &Python) -> Result<FailedReload> {
    let dir = tempfile::tempdir()?;
    let version_file = dir.path().join("version");
    set_version(&version_file, "1")?;
    let (running, addr) = start_server(Server::GunicornHup, &App::Gunicorn(py), &version_file, "5s")?;
    let Running::Gunicorn(mut g) = running else { bail!("not gunicorn") };
    // Short request timeout: once nobody serves, each client would wait that long per try.
    let mut spec = handover::demo::loadgen::LoadSpec::new(handover::demo::loadgen::Target::Tcp(addr));
    spec.clients = CLIENTS;
    spec.request_timeout = Duration::from_secs(3);
    spec.max_duration = Duration::from_secs(60);
    let load = handover::demo::loadgen::start(spec)?;
    let t0 = load.started_at();
    stats::wait_flowing(&load, Duration::from_secs(10))?;
    let flowing = t0.elapsed();
    sleep_until(t0, flowing + Duration::from_secs(1));
    set_version(&version_file, "broken")?;
    let trigger = t0.elapsed();
    g.hup();
    let end = trigger + Duration::from_secs(6);
    let mut exited = None;
    // Watch for the master's exit during the window (no event to block on: poll).
    while t0.elapsed() < end {
        if exited.is_none() {
            if let Some(code) = g.exited() {
                exited = Some((code, t0.elapsed() - trigger));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = load.stop();
    let reason = match exited {
        Some((code, _)) => {
            format!("gunicorn's master exited with code {code}: its new workers failed to boot; nothing serves")
        }
        None => "gunicorn's master still runs".to_owned(),
    };
    let tail = g.log_tail();
    g.stop();
    if exited.is_none() {
        eprintln!("bench: gunicorn after HUP to a broken version:\n{tail}");
    }
    Ok(FailedReload {
        version: "broken".into(),
        server: Server::GunicornHup.describe(&App::Gunicorn(py)),
        counts: Counts::of(&report),
        exit: exited.map(|e| e.0),
        returned_s: exited.map(|e| e.1.as_secs_f64()),
        reason,
        during: Window::of(&report, trigger, end),
        steady: Window::of(&report, trigger.saturating_sub(Duration::from_secs(1)), trigger),
    })
}

pub use handover::demo::measure::WrkReport as WrkCounts;

/// Scenarios 1 and 2 again, counted by wrk instead of the load generator: wrk keeps
/// connections alive and never retries a request (the load generator retries one that a
/// closing keep-alive connection never answered, as RFC 9112 §9.3.1 allows), so any request
/// a drain drops shows here.
#[derive(Debug, Clone, Serialize)]
pub struct WrkReload {
    /// Human-readable server set-up.
    pub server: String,
    /// "2" (a good version), "broken" or "never-ready".
    pub version: String,
    /// wrk's command line, without the URL.
    pub wrk: String,
    /// What wrk counted over the whole run (warm-up, reload, tail).
    pub counts: WrkCounts,
    /// Exit code of `handover reload`, or of gunicorn's master if it died.
    pub exit: Option<i32>,
}

/// wrk's connections: as many as the load generator's clients.
const WRK_CONNECTIONS: usize = CLIENTS;

/// One reload of `server` to `version` ("2", "broken" or "hang") under wrk.
pub fn reload_under_wrk(server: Server, app: &App<'_>, version: &str) -> Result<WrkReload> {
    let dir = tempfile::tempdir()?;
    let version_file = dir.path().join("version");
    set_version(&version_file, "1")?;
    let (mut running, addr) = start_server(server, app, &version_file, "5s")?;
    // Long enough for the warm-up, the slowest reload (rolling: 4 imports of 2 s one after
    // the other) and a tail; --timeout far above any latency a working reload causes.
    let secs = match server {
        Server::Handover("rolling", _) => 16,
        _ => 9,
    };
    let args =
        vec!["-t1".to_owned(), format!("-c{WRK_CONNECTIONS}"), format!("-d{secs}s"), "--timeout".into(), "10s".into()];
    let mut cmd = std::process::Command::new("wrk");
    cmd.args(&args).arg(format!("http://{addr}/"));
    let wrk = std::thread::spawn(move || crate::harness::run_bounded("wrk", cmd, Duration::from_secs(secs + 30)));
    std::thread::sleep(WARMUP + Duration::from_secs(1)); // steady load before the trigger: a window, not a wait
    set_version(&version_file, version)?;
    let exit = match &mut running {
        Running::Handover(h) => Some(h.cli(&["reload"], Duration::from_secs(60))?.code),
        Running::Gunicorn(g) => {
            g.hup();
            None
        }
    };
    let out = wrk.join().map_err(|_| anyhow::anyhow!("the wrk thread panicked"))??;
    let exit = match &mut running {
        Running::Gunicorn(g) => g.exited(),
        Running::Handover(_) => exit,
    };
    if out.code != 0 {
        bail!("wrk failed ({}): {}{}", out.code, out.stdout, out.stderr);
    }
    let counts = WrkCounts::parse(&out.stdout);
    if counts.requests == 0 {
        bail!("wrk made no request:\n{}", out.stdout);
    }
    stop_server(running)?;
    Ok(WrkReload {
        server: server.describe(app),
        version: if version == "hang" { "never-ready".into() } else { version.into() },
        wrk: format!("wrk {}", args.join(" ")),
        counts,
        exit,
    })
}
