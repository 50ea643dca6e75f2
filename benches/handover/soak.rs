//! Scenario 8: a soak with faults (issues 7 and 19). For `--soak-minutes` (10 by default): a
//! reload every 5 s under continuous load, one worker SIGKILLed per cycle, control clients
//! that connect and drop (or send a request and never read), notify datagrams from a process
//! that is not a worker and one carrying 100 descriptors, a 2 s SIGSTOP of the master, an
//! upgrade raced by a scale-down (then scaled back), and every fourth cycle the master's
//! stderr left unread for 10 s. Reported: requests sent and failed (only those in flight on
//! killed workers may fail), the reload and upgrade success rates, and the master's RSS and
//! open fds sampled every cycle (they must not grow).
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use handover::demo::loadgen::{self, LoadSpec, Target};

use crate::harness::{rss_kib, signal, Handover, WorkerSetup};

/// One reload cycle.
const CYCLE: Duration = Duration::from_secs(5);
/// Workers.
const WORKERS: usize = 4;
/// Load clients (each has at most one request in flight).
pub const CLIENTS: usize = 4;
/// Control clients opened and dropped per cycle.
const CONTROL_CLIENTS: usize = 40;
/// Notify datagrams from a stranger per cycle.
const NOTIFY_NOISE: usize = 2_000;
/// Descriptors attached to one notify datagram per cycle.
const FD_FLOOD: usize = 100;
/// How long the master is stopped (SIGSTOP) per cycle.
const MASTER_STOP: Duration = Duration::from_secs(2);
/// How long the master's stderr goes unread, every fourth cycle.
const STDERR_UNREAD: Duration = Duration::from_secs(10);

/// One sample of the master, at the end of a cycle.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the soak began.
    pub at_s: f64,
    /// VmRSS, KiB.
    pub rss_kib: u64,
    /// Open file descriptors.
    pub fds: usize,
}

/// The soak's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Soak {
    /// How long it ran, seconds.
    pub secs: f64,
    /// Requests sent / failed (all cycles).
    pub sent: u64,
    /// Failed requests.
    pub failed: u64,
    /// Workers SIGKILLed (each may take the requests in flight on it).
    pub killed: u64,
    /// Reloads asked for / succeeded.
    pub reloads: u64,
    /// Reloads that exited 0.
    pub reloads_ok: u64,
    /// Control connections opened and dropped.
    pub control_clients: u64,
    /// Notify datagrams sent by a stranger.
    pub notify_noise: u64,
    /// Datagrams with [`FD_FLOOD`] descriptors sent.
    pub fd_floods: u64,
    /// Times the master was stopped for [`MASTER_STOP`].
    pub master_stops: u64,
    /// Upgrades raced by a scale-down / those that exited 0 and kept the master's pid.
    pub upgrades: u64,
    /// Upgrades that exited 0 with the same pid.
    pub upgrades_ok: u64,
    /// Times the master's stderr went unread for [`STDERR_UNREAD`].
    pub stderr_unread: u64,
    /// Master samples, one per cycle.
    pub samples: Vec<Sample>,
    /// Lines the master logged (flooding shows here).
    pub log_lines: usize,
}

impl Soak {
    /// RSS growth from the first sample after warm-up (the 3rd) to the last, KiB.
    pub fn rss_growth_kib(&self) -> i64 {
        let base = self.samples.get(2).or(self.samples.first()).map_or(0, |s| s.rss_kib as i64);
        self.samples.last().map_or(0, |s| s.rss_kib as i64) - base
    }

    /// fd count growth from the first sample to the last.
    pub fn fd_growth(&self) -> i64 {
        let first = self.samples.first().map_or(0, |s| s.fds as i64);
        self.samples.last().map_or(0, |s| s.fds as i64) - first
    }

    /// The one-line summary.
    pub fn line(&self) -> String {
        let max_rss = self.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let (min_fd, max_fd) = (
            self.samples.iter().map(|s| s.fds).min().unwrap_or(0),
            self.samples.iter().map(|s| s.fds).max().unwrap_or(0),
        );
        format!(
            "soak {:.0}s: {} requests, {} failed ({} workers SIGKILLed); reloads {}/{} ok; upgrades raced by a scale-down {}/{} ok; {} control clients dropped, {} notify datagrams from a stranger, {} with {FD_FLOOD} fds, {} {}s stops of the master, {} times stderr unread {}s, {} log lines; master RSS {} → {} KiB (max {max_rss}, growth after warm-up {} KiB), fds {} → {} (range {min_fd}-{max_fd})",
            self.secs,
            self.sent,
            self.failed,
            self.killed,
            self.reloads_ok,
            self.reloads,
            self.upgrades_ok,
            self.upgrades,
            self.control_clients,
            self.notify_noise,
            self.fd_floods,
            self.master_stops,
            MASTER_STOP.as_secs(),
            self.stderr_unread,
            STDERR_UNREAD.as_secs(),
            self.log_lines,
            self.samples.first().map_or(0, |s| s.rss_kib),
            self.samples.last().map_or(0, |s| s.rss_kib),
            self.rss_growth_kib(),
            self.samples.first().map_or(0, |s| s.fds),
            self.samples.last().map_or(0, |s| s.fds),
        )
    }
}

fn fd_count(pid: i32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The workers' NOTIFY_SOCKET, as a worker sees it (wherever handover puts it).
fn workers_notify_socket(worker: i32) -> Result<PathBuf> {
    let env = std::fs::read(format!("/proc/{worker}/environ"))?;
    env.split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"NOTIFY_SOCKET="))
        .map(|v| PathBuf::from(String::from_utf8_lossy(v).into_owned()))
        .context("worker has no NOTIFY_SOCKET")
}

fn ready_workers(h: &Handover) -> Result<Vec<i32>> {
    Ok(h.status()?["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["state"] == "ready")
        .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
        .collect())
}

/// Control clients that misbehave: half connect and drop at once, half send a request and
/// close without reading the answer.
fn control_noise(control: &std::path::Path) -> u64 {
    let mut n = 0;
    for i in 0..CONTROL_CLIENTS {
        if let Ok(mut s) = UnixStream::connect(control) {
            if i % 2 == 1 {
                let _ = s.write_all(b"{\"cmd\":\"status\"}\n{\"cmd\":\"status\"}\n");
            }
            n += 1;
        }
    }
    n
}

/// Datagrams to the workers' notify socket from this process, which is no worker.
fn notify_noise(path: &std::path::Path) -> u64 {
    let Ok(sock) = UnixDatagram::unbound() else { return 0 };
    let mut n = 0;
    for i in 0..NOTIFY_NOISE {
        let msg: &[u8] = if i % 2 == 0 { b"READY=1\nSTATUS=noise" } else { b"\xff\xfe garbage" };
        if sock.send_to(msg, path).is_ok() {
            n += 1;
        }
    }
    n
}

/// One datagram with [`FD_FLOOD`] descriptors (of /dev/null) to `path`.
fn fd_flood(path: &std::path::Path) -> u64 {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let Ok(sock) = UnixDatagram::unbound() else { return 0 };
    let fds: Vec<OwnedFd> =
        (0..FD_FLOOD).filter_map(|_| std::fs::File::open("/dev/null").ok().map(OwnedFd::from)).collect();
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let Ok(addr) = UnixAddr::new(path) else { return 0 };
    let iov = [std::io::IoSlice::new(b"STATUS=fds")];
    let sent = sendmsg(sock.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&raw)], MsgFlags::empty(), Some(&addr));
    u64::from(sent.is_ok())
}

/// `handover upgrade` with a `handover scale` to one worker fewer sent while it is under
/// way, then the count put back; whether the upgrade exited 0 and the master kept its pid.
fn upgrade_raced_by_scale_down(h: &Handover) -> Result<bool> {
    let mut upgrade = Command::new(crate::harness::handover_bin());
    upgrade.args(["upgrade", "-c"]).arg(&h.config).stdout(Stdio::null()).stderr(Stdio::piped());
    let upgrade = upgrade.spawn().context("handover upgrade")?;
    let scaled = h.cli(&["scale", &(WORKERS - 1).to_string()], Duration::from_secs(30))?;
    let out = upgrade.wait_with_output().context("handover upgrade")?;
    let back = h.cli(&["scale", &WORKERS.to_string()], Duration::from_secs(30))?;
    let same_pid = h.status()?["pid"].as_i64() == Some(i64::from(h.pid()));
    if !out.status.success() || scaled.code != 0 || back.code != 0 || !same_pid {
        eprintln!(
            "soak: upgrade exit {:?} ({}), scale exits {} ({}) and {} ({}), same pid: {same_pid}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim(),
            scaled.code,
            scaled.stderr.trim(),
            back.code,
            back.stderr.trim()
        );
        return Ok(false);
    }
    Ok(true)
}

/// Runs the soak for `duration`.
pub fn run(duration: Duration) -> Result<Soak> {
    // The workers write their own lines to a file: the master's stderr is the one left unread.
    let mut setup = WorkerSetup::demo(WORKERS, &[]);
    setup.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        "exec \"$0\" demo-worker --boot-delay 200ms 2>>\"$1\"".into(),
        crate::harness::handover_bin().display().to_string(),
        std::env::temp_dir().join(format!("handover-soak-workers-{}.log", std::process::id())).display().to_string(),
    ];
    setup.graceful_timeout = "5s".into();
    setup.boot_timeout = "10s".into();
    let (h, stderr) = Handover::spawn_gated(&setup)?;
    h.wait_ready(1, Duration::from_secs(30))?;
    let control = h.dir.path().join("control.sock");
    let started = Instant::now();
    let mut soak = Soak {
        secs: 0.0,
        sent: 0,
        failed: 0,
        killed: 0,
        reloads: 0,
        reloads_ok: 0,
        control_clients: 0,
        notify_noise: 0,
        fd_floods: 0,
        master_stops: 0,
        upgrades: 0,
        upgrades_ok: 0,
        stderr_unread: 0,
        samples: Vec::new(),
        log_lines: 0,
    };
    let mut cycle = 0u64;
    let mut unread_since: Option<Instant> = None;
    while started.elapsed() + CYCLE <= duration {
        cycle += 1;
        if cycle % 4 == 1 && unread_since.is_none() {
            stderr.pause(true);
            unread_since = Some(Instant::now());
            soak.stderr_unread += 1;
        }
        let mut spec = LoadSpec::new(Target::Tcp(h.addr));
        spec.clients = CLIENTS;
        spec.keep_alive = cycle % 2 == 0;
        spec.max_duration = CYCLE + Duration::from_secs(5);
        let load = loadgen::start(spec)?;
        let t0 = Instant::now();
        // A second into the cycle: faults; then the reload; the rest is steady load.
        std::thread::sleep(Duration::from_millis(700)); // pacing the cycle, not synchronising
        let workers = ready_workers(&h)?;
        if let Some(&victim) = workers.get(cycle as usize % workers.len().max(1)) {
            signal(victim, libc::SIGKILL);
            soak.killed += 1;
        }
        soak.control_clients += control_noise(&control);
        if let Some(&w) = workers.first() {
            if let Ok(path) = workers_notify_socket(w) {
                soak.notify_noise += notify_noise(&path);
                soak.fd_floods += fd_flood(&path);
            }
        }
        let out = h.cli(&["reload"], Duration::from_secs(30))?;
        soak.reloads += 1;
        if out.code == 0 {
            soak.reloads_ok += 1;
        } else {
            eprintln!("soak: reload {cycle} exited {}: {}", out.code, out.stderr.trim());
        }
        soak.upgrades += 1;
        if upgrade_raced_by_scale_down(&h)? {
            soak.upgrades_ok += 1;
        }
        // The master stopped: the workers serve on, nothing is asked of it meanwhile.
        signal(h.pid(), libc::SIGSTOP);
        std::thread::sleep(MASTER_STOP); // the fault itself
        signal(h.pid(), libc::SIGCONT);
        soak.master_stops += 1;
        if unread_since.is_some_and(|t| t.elapsed() >= STDERR_UNREAD) {
            stderr.pause(false);
            unread_since = None;
        }
        if let Some(rest) = CYCLE.checked_sub(t0.elapsed()) {
            std::thread::sleep(rest); // the cycle's remaining steady load
        }
        let report = load.stop();
        soak.sent += report.sent;
        soak.failed += report.failed;
        soak.samples.push(Sample {
            at_s: started.elapsed().as_secs_f64(),
            rss_kib: rss_kib(h.pid())?,
            fds: fd_count(h.pid())?,
        });
        if cycle % 12 == 0 {
            eprintln!("soak: {}", soak_progress(&soak));
        }
    }
    stderr.pause(false);
    soak.secs = started.elapsed().as_secs_f64();
    soak.log_lines = std::fs::read_to_string(h.dir.path().join("handover.log")).map_or(0, |l| l.lines().count());
    h.stop(Duration::from_secs(30))?;
    Ok(soak)
}

fn soak_progress(s: &Soak) -> String {
    let last = s.samples.last();
    format!(
        "{} reloads ({} ok), {} requests, {} failed, RSS {} KiB, {} fds",
        s.reloads,
        s.reloads_ok,
        s.sent,
        s.failed,
        last.map_or(0, |l| l.rss_kib),
        last.map_or(0, |l| l.fds)
    )
}

/// The generated part of docs/benchmarks.md's soak section.
const BEGIN: &str = "<!-- soak:begin (generated by `benches/run.sh --soak 10 --publish`) -->";
const END: &str = "<!-- soak:end -->";

/// Writes the soak's figures into docs/benchmarks.md (its own section, kept by a full
/// `--publish`).
pub fn publish(s: &Soak, checks: &[crate::report::Check]) -> Result<()> {
    let mut body = format!(
        "What it does: for {:.0} minutes, a reload every 5 s under load from {CLIENTS} clients (keep-alive and new connections, alternating cycles), one worker of {WORKERS} SIGKILLed per cycle, {CONTROL_CLIENTS} control clients per cycle that connect and drop or send requests and never read, {NOTIFY_NOISE} notify datagrams per cycle from a process that is no worker and one with {FD_FLOOD} descriptors, an upgrade raced by a scale-down (and scaled back), a {}s SIGSTOP of the master, and every fourth cycle the master's stderr unread for {}s.\n\n{}\n\n",
        s.secs / 60.0,
        MASTER_STOP.as_secs(),
        STDERR_UNREAD.as_secs(),
        s.line()
    );
    for c in checks {
        body.push_str(&format!("- {} {} — {}\n", if c.ok { "✅" } else { "❌" }, c.what, c.detail));
    }
    crate::report::publish_block(crate::report::SOAK_HEADING, BEGIN, END, &body)?;
    eprintln!("bench: published the soak in docs/benchmarks.md");
    Ok(())
}
