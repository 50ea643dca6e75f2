//! Scenario 4: does handover cost anything per request? The same N demo workers on a shared
//! socket, started by hand (fork+exec with `LISTEN_FDS`) and under `handover run`, both sets
//! alive and idle while the other is measured; wrk alternates between them.
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::harness::{
    handover_bin, listen_loopback, pass_fd_as_3, run_bounded, Handover, NotifySink, Proc, WorkerSetup,
};
use crate::stats::median;

/// Workers in each set.
pub const WORKERS: usize = 4;
/// Measured rounds (each: one wrk run per set, in alternating order).
pub const ROUNDS: usize = 15;
/// wrk's arguments besides the URL.
pub const WRK_ARGS: [&str; 4] = ["-t2", "-c32", "-d2s", "--timeout=5s"];

/// One wrk run.
#[derive(Debug, Clone, Serialize)]
pub struct WrkRun {
    /// Requests per second.
    pub rps: f64,
    /// Requests answered with a non-2xx/3xx status, plus socket errors.
    pub errors: u64,
}

/// The result of scenario 4.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Workers per set.
    pub workers: usize,
    /// wrk command line (without URL).
    pub wrk: String,
    /// Requests/s of the workers started by hand, per round.
    pub by_hand: Vec<WrkRun>,
    /// Requests/s of the same workers under handover, per round.
    pub handover: Vec<WrkRun>,
    /// handover / by hand, per round.
    pub ratios: Vec<f64>,
    /// Median of `ratios`: the figure that must stay >= 0.98.
    pub median_ratio: f64,
    /// Median requests/s by hand.
    pub median_by_hand: f64,
    /// Median requests/s under handover.
    pub median_handover: f64,
    /// The same comparison with the real app (gunicorn workers), if it ran.
    pub gunicorn: Option<GunicornThroughput>,
}

/// N demo workers spawned by the benchmark itself on one shared socket.
pub struct ByHand {
    /// The workers.
    pub procs: Vec<Proc>,
    /// Their NOTIFY_SOCKET.
    pub notify: NotifySink,
    /// The socket.
    pub listener: std::net::TcpListener,
    _dir: tempfile::TempDir,
}

impl ByHand {
    /// Forks and execs `n` `handover demo-worker ARGS` with the socket as fd 3 and
    /// `LISTEN_FDS=1`, each in its own process group, as a plain supervisor would; does not
    /// wait for them.
    pub fn spawn(n: usize, args: &[&str]) -> Result<ByHand> {
        let dir = tempfile::Builder::new().prefix("byhand-bench-").tempdir()?;
        let notify = NotifySink::bind(&dir.path().join("notify"))?;
        let listener = listen_loopback(1024)?;
        let log = std::fs::File::create(dir.path().join("workers.log"))?;
        let mut procs = Vec::with_capacity(n);
        for slot in 0..n {
            let mut cmd = Command::new(handover_bin());
            cmd.arg("demo-worker")
                .args(args)
                .env("LISTEN_FDS", "1")
                .env("LISTEN_FDNAMES", "http")
                // listenfd (the demo worker's library) accepts fds without LISTEN_PID; setting
                // it would take a shell per worker here.
                .env_remove("LISTEN_PID")
                .env("NOTIFY_SOCKET", &notify.path)
                .env("HANDOVER_GENERATION", "1")
                .env("HANDOVER_WORKER_SLOT", slot.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log.try_clone()?);
            pass_fd_as_3(&mut cmd, listener.as_raw_fd());
            procs.push(Proc::spawn("demo-worker (by hand)", cmd)?);
        }
        Ok(ByHand { procs, notify, listener, _dir: dir })
    }

    /// Waits until every worker said READY=1.
    pub fn wait_ready(&self, timeout: Duration) -> Result<std::time::Instant> {
        self.notify.wait_count("READY=1", self.procs.len(), timeout)
    }

    /// SIGTERM to every worker, then waits for all (bounded; SIGKILL after).
    pub fn stop(mut self, grace: Duration) {
        for p in &self.procs {
            p.signal(libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + grace;
        for p in &mut self.procs {
            if p.wait_until(deadline).is_none() {
                eprintln!("bench: a by-hand worker ignored SIGTERM; killing it");
            }
        }
    }
}

fn wrk(addr: SocketAddr) -> Result<WrkRun> {
    let mut cmd = Command::new("wrk");
    cmd.args(WRK_ARGS).arg(format!("http://{addr}/"));
    let out = run_bounded("wrk", cmd, Duration::from_secs(30))?;
    if out.code != 0 {
        bail!("wrk failed ({}): {}{}", out.code, out.stdout, out.stderr);
    }
    let rps = out
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{}", out.stdout))?;
    let mut errors = 0;
    for l in out.stdout.lines().map(str::trim) {
        if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(v) = l.strip_prefix("Socket errors:") {
            errors += v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        }
    }
    Ok(WrkRun { rps, errors })
}

/// Runs scenario 4.
pub fn run() -> Result<Throughput> {
    if Command::new("wrk").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        bail!("wrk not found: `apt-get install -y wrk` (benches/run.sh does it)");
    }
    let by_hand = ByHand::spawn(WORKERS, &[])?;
    by_hand.wait_ready(Duration::from_secs(30))?;
    let hand_addr = by_hand.listener.local_addr()?;
    let (ho, _) = Handover::start(&WorkerSetup::demo(WORKERS, &[]), Duration::from_secs(30))?;
    // Warm-up of both (page cache, connection tables), not measured.
    wrk(hand_addr)?;
    wrk(ho.addr)?;
    let mut t = Throughput {
        workers: WORKERS,
        wrk: format!("wrk {}", WRK_ARGS.join(" ")),
        by_hand: Vec::new(),
        handover: Vec::new(),
        ratios: Vec::new(),
        median_ratio: 0.0,
        median_by_hand: 0.0,
        median_handover: 0.0,
        gunicorn: None,
    };
    for round in 0..ROUNDS {
        // Alternate which goes first, so a drift in the machine's load favours neither.
        let (h, b) = if round % 2 == 0 {
            let h = wrk(hand_addr)?;
            (h, wrk(ho.addr)?)
        } else {
            let b = wrk(ho.addr)?;
            (wrk(hand_addr)?, b)
        };
        eprintln!(
            "  round {round}: by hand {:.0} req/s, handover {:.0} req/s, ratio {:.3}",
            h.rps,
            b.rps,
            b.rps / h.rps
        );
        t.ratios.push(b.rps / h.rps);
        t.by_hand.push(h);
        t.handover.push(b);
    }
    t.median_ratio = median(t.ratios.clone());
    t.median_by_hand = median(t.by_hand.iter().map(|r| r.rps).collect());
    t.median_handover = median(t.handover.iter().map(|r| r.rps).collect());
    by_hand.stop(Duration::from_secs(10));
    ho.stop(Duration::from_secs(20))?;
    Ok(t)
}

/// Rounds of the gunicorn comparison.
pub const GUNICORN_ROUNDS: usize = 15;
/// wrk's arguments for gunicorn (its sync worker closes every connection anyway).
pub const GUNICORN_WRK_ARGS: [&str; 4] = ["-t2", "-c8", "-d2s", "--timeout=5s"];

/// Scenario 4 with the real app: 4 × `gunicorn --preload -w 1` by hand on a shared socket,
/// the same under handover, and plain `gunicorn -w 4` for reference.
#[derive(Debug, Clone, Serialize)]
pub struct GunicornThroughput {
    /// wrk command line.
    pub wrk: String,
    /// req/s of 4 × gunicorn -w 1 started by hand, per round.
    pub by_hand: Vec<f64>,
    /// req/s of the same under handover, per round.
    pub handover: Vec<f64>,
    /// req/s of gunicorn -w 4, per round.
    pub gunicorn_w4: Vec<f64>,
    /// Median of handover / by hand per round.
    pub median_ratio: f64,
    /// Median of by hand / gunicorn -w 4 per round: the cost of one interpreter per worker.
    pub median_topology_ratio: f64,
}

/// Runs the gunicorn part of scenario 4.
pub fn run_gunicorn(py: &crate::gunicorn::Python) -> Result<GunicornThroughput> {
    use crate::gunicorn::{set_version, Gunicorn};
    let dir = tempfile::Builder::new().prefix("gthroughput-bench-").tempdir()?;
    let version_file = dir.path().join("version");
    set_version(&version_file, "1")?;
    // By hand: 4 gunicorns, one worker each, on one shared socket, as handover runs them.
    let sink = NotifySink::bind(&dir.path().join("notify"))?;
    let listener = listen_loopback(1024)?;
    let hand_addr = listener.local_addr()?;
    let log = std::fs::File::create(dir.path().join("byhand.log"))?;
    let setup = py.handover_workers(WORKERS, &version_file);
    let mut procs = setup.spawn_by_hand("gunicorn -w 1 (by hand)", listener.as_raw_fd(), &sink.path, &log, "1")?;
    sink.wait_count("READY=1", WORKERS, Duration::from_secs(60))?;
    let (ho, _) = Handover::start(&setup, Duration::from_secs(60))?;
    let plain_listener = listen_loopback(1024)?;
    let plain_addr = plain_listener.local_addr()?;
    let (plain, _) = Gunicorn::start(py, WORKERS, plain_listener, &version_file)?;
    let run = |addr: SocketAddr| -> Result<f64> {
        let mut cmd = Command::new("wrk");
        cmd.args(GUNICORN_WRK_ARGS).arg(format!("http://{addr}/"));
        let out = run_bounded("wrk", cmd, Duration::from_secs(30))?;
        out.stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .with_context(|| format!("no Requests/sec in wrk's output:\n{}{}", out.stdout, out.stderr))
    };
    // Warm-up, not measured.
    for a in [hand_addr, ho.addr, plain_addr] {
        run(a)?;
    }
    let mut t = GunicornThroughput {
        wrk: format!("wrk {}", GUNICORN_WRK_ARGS.join(" ")),
        by_hand: Vec::new(),
        handover: Vec::new(),
        gunicorn_w4: Vec::new(),
        median_ratio: 0.0,
        median_topology_ratio: 0.0,
    };
    for round in 0..GUNICORN_ROUNDS {
        // Rotate the order, so a drift in the machine's load favours none.
        let mut r = [0.0; 3];
        let addrs = [hand_addr, ho.addr, plain_addr];
        for k in 0..3 {
            let i = (round + k) % 3;
            r[i] = run(addrs[i])?;
        }
        eprintln!(
            "  gunicorn round {round}: by hand {:.0} req/s, handover {:.0} req/s ({:.3}), gunicorn -w 4 {:.0} req/s",
            r[0],
            r[1],
            r[1] / r[0],
            r[2]
        );
        t.by_hand.push(r[0]);
        t.handover.push(r[1]);
        t.gunicorn_w4.push(r[2]);
    }
    t.median_ratio = median(t.by_hand.iter().zip(&t.handover).map(|(h, b)| b / h).collect());
    t.median_topology_ratio = median(t.by_hand.iter().zip(&t.gunicorn_w4).map(|(h, g)| h / g).collect());
    plain.stop();
    ho.stop(Duration::from_secs(30))?;
    for p in &procs {
        p.signal(libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for p in &mut procs {
        p.wait_until(deadline);
    }
    Ok(t)
}
