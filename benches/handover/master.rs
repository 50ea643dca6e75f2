//! Scenarios 5 and 6: what the master costs (RSS, idle CPU and wake-ups, spawn-to-ready rate
//! against a plain fork+exec baseline), and reloads of 512 workers under load.
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::harness::{
    clock_ticks_per_sec, context_switches, cpu_ticks, handover_bin, listen_loopback, pass_fd_as_3, rss_kib,
    run_bounded, Handover, NotifySink, WorkerSetup,
};
use crate::stats::{self, median, Counts, Window};

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
    /// Baseline: a fresh process's fork+exec loop to the last READY=1, seconds, per round.
    pub baseline_s: Vec<f64>,
    /// The same loop confirming each exec before the next fork (as handover does), per round.
    pub confirmed_s: Vec<f64>,
    /// Median workers/s of the confirming loop.
    pub confirmed_rate: f64,
    /// `handover run` launched to its READY=1 to systemd, seconds, per round.
    pub handover_s: Vec<f64>,
    /// Median workers/s of the baseline.
    pub baseline_rate: f64,
    /// Median workers/s of handover.
    pub handover_rate: f64,
    /// handover rate / baseline rate.
    pub ratio: f64,
    /// The same ratio with the baseline timed from its first fork (as before 2026-11-29),
    /// not from its launch: it leaves out the baseline's own start, not handover's.
    pub ratio_from_first_fork: f64,
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

/// The baseline: a fresh, small process (this benchmark's binary in its hidden
/// `--spawn-baseline` mode, see [`spawn_baseline_main`]) that fork+execs the same `n` demo
/// workers on the same kind of socket and waits for their `n` READY=1: what handover does
/// at start, without anything else.
///
/// Timed as `handover run` is (see `Handover::spawn_on`): from just before `/bin/sh -c
/// 'exec …'` is launched to the last READY=1, so both include starting a process (the
/// shell, the exec, the dynamic loader, their own set-up) and not only the loop. Also
/// returned: the time from the baseline's first fork, as earlier versions measured it.
fn baseline_spawn(n: usize, confirm_exec: bool) -> Result<(Duration, Duration)> {
    let dir = tempfile::Builder::new().prefix("baseline-bench-").tempdir()?;
    let listener = listen_loopback(1024)?;
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "exec \"$0\" \"$@\""]).arg(std::env::current_exe()?);
    cmd.arg("--spawn-baseline").arg(n.to_string()).arg(dir.path().join("notify"));
    cmd.arg(if confirm_exec { "confirm-exec" } else { "plain" });
    pass_fd_as_3(&mut cmd, listener.as_raw_fd());
    let launched_us = handover::systemd::monotonic_usec();
    let out = run_bounded("spawn baseline", cmd, Duration::from_secs(180))?;
    if out.code != 0 {
        bail!("spawn baseline failed ({}): {}{}", out.code, out.stdout, out.stderr);
    }
    let said = |key: &str| -> Result<f64> {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("spawn baseline said: {}", out.stdout))
    };
    let from_first_fork = Duration::from_secs_f64(said("ready_after_s=")?);
    let ready_at_us = said("ready_at_us=")? as u64;
    let from_launch = Duration::from_micros(ready_at_us.saturating_sub(launched_us));
    Ok((from_launch, from_first_fork))
}

/// The hidden `--spawn-baseline N NOTIFY_PATH plain|confirm-exec` mode, run with the
/// listening socket as fd 3: fork+exec `handover demo-worker` N times (each in its own
/// process group, `LISTEN_FDS=1`, `NOTIFY_SOCKET` = a socket of ours), wait for N READY=1,
/// print the time from the first fork to the last READY=1, then stop them (SIGTERM, SIGKILL
/// after 30 s) and reap them. With `confirm-exec`, each fork waits until its child's
/// `execve` succeeded (EOF on a close-on-exec pipe) before the next, as handover does to
/// report exec failures synchronously.
pub fn spawn_baseline_main(n: usize, notify: &Path, confirm_exec: bool) -> i32 {
    let sink = match NotifySink::bind(notify) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("spawn baseline: {e:#}");
            return 1;
        }
    };
    // Everything the children need, prepared before the first fork.
    let Ok(prog) = CString::new(handover_bin().as_os_str().as_bytes()) else { return 1 };
    let Ok(arg1) = CString::new("demo-worker") else { return 1 };
    let argv = [prog.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let env: Vec<CString> =
        ["LISTEN_FDS=1".to_owned(), "LISTEN_FDNAMES=http".to_owned(), format!("NOTIFY_SOCKET={}", notify.display())]
            .into_iter()
            .filter_map(|v| CString::new(v).ok())
            .collect();
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let started = Instant::now();
    let mut pids = Vec::with_capacity(n);
    for _ in 0..n {
        let mut pipe = [-1; 2];
        // SAFETY: pipe2 writes two fds into the array.
        if confirm_exec && unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            eprintln!("spawn baseline: pipe2: {}", std::io::Error::last_os_error());
            break;
        }
        // SAFETY: between fork and execve the child only calls async-signal-safe functions
        // (setpgid, execve, _exit) on memory prepared before the fork.
        let pid = unsafe {
            let pid = libc::fork();
            if pid == 0 {
                libc::setpgid(0, 0);
                libc::execve(prog.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
            pid
        };
        if confirm_exec {
            let mut byte = [0u8; 1];
            // SAFETY: our own pipe fds; the read returns 0 (EOF) once the child's execve closed
            // its copy of the write end, or at once if the fork failed.
            unsafe {
                libc::close(pipe[1]);
                libc::read(pipe[0], byte.as_mut_ptr().cast(), 1);
                libc::close(pipe[0]);
            }
        }
        if pid < 0 {
            eprintln!("spawn baseline: fork: {}", std::io::Error::last_os_error());
            break;
        }
        pids.push(pid);
    }
    let ready = sink.wait_count("READY=1", n, Duration::from_secs(120));
    let code = match &ready {
        Ok(at) => {
            println!("ready_after_s={:.6}", (*at - started).as_secs_f64());
            // The same instant on CLOCK_MONOTONIC, for the caller's own clock.
            let ago = at.elapsed().as_micros() as u64;
            println!("ready_at_us={}", handover::systemd::monotonic_usec().saturating_sub(ago));
            0
        }
        Err(e) => {
            eprintln!("spawn baseline: {e:#}");
            1
        }
    };
    for &pid in &pids {
        crate::harness::signal(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut left: Vec<i32> = pids;
    while !left.is_empty() {
        // SAFETY: waitpid on our own children, without blocking.
        left.retain(|&pid| unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } == 0);
        if Instant::now() >= deadline {
            for &pid in &left {
                crate::harness::signal_group(pid, libc::SIGKILL);
                // SAFETY: as above, now blocking: SIGKILL cannot be ignored.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
            break;
        }
        std::thread::sleep(crate::harness::POLL);
    }
    code
}

/// The `spawn` mode: only the spawn-rate comparison of scenario 5, `rounds` alternating
/// rounds of the plain loop, the confirming loop and `handover run`, each to the last
/// READY=1 of `n` demo workers; prints one `numbers:` line and returns the figures.
pub fn spawn_rate_only(n: usize, rounds: usize) -> Result<SpawnRate> {
    let mut setup = WorkerSetup::demo(n, &[]);
    setup.boot_timeout = "120s".into();
    setup.graceful_timeout = "30s".into();
    let (mut baseline_s, mut confirmed_s, mut handover_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut fork_s = Vec::new();
    for _ in 0..rounds {
        let (plain, from_fork) = baseline_spawn(n, false)?;
        baseline_s.push(plain.as_secs_f64());
        fork_s.push(from_fork.as_secs_f64());
        confirmed_s.push(baseline_spawn(n, true)?.0.as_secs_f64());
        let (h, ready) = Handover::start(&setup, Duration::from_secs(180))?;
        handover_s.push(ready.as_secs_f64());
        h.stop(Duration::from_secs(60))?;
        eprintln!(
            "  {n} workers to the last READY=1: plain {:.3}s, confirming {:.3}s, handover {:.3}s",
            baseline_s[baseline_s.len() - 1],
            confirmed_s[confirmed_s.len() - 1],
            handover_s[handover_s.len() - 1]
        );
    }
    let (b, c, o) = (median(baseline_s.clone()), median(confirmed_s.clone()), median(handover_s.clone()));
    let f = median(fork_s);
    println!(
        "numbers: spawn-to-ready of {n} demo workers, each from its launch, medians of {rounds} rounds: plain \
         fork+exec {:.0}/s, confirming loop {:.0}/s, handover {:.0}/s; ratio handover/plain {:.2}, \
         handover/confirming {:.2} (the plain loop timed from its first fork instead: {:.2})",
        n as f64 / b,
        n as f64 / c,
        n as f64 / o,
        b / o,
        c / o,
        f / o
    );
    Ok(SpawnRate {
        workers: n,
        confirmed_rate: n as f64 / c,
        confirmed_s,
        baseline_rate: n as f64 / b,
        handover_rate: n as f64 / o,
        ratio: b / o,
        ratio_from_first_fork: f / o,
        baseline_s,
        handover_s,
    })
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

/// Scenario 6's reload counted by wrk (keep-alive, never retries) instead of the load
/// generator: its socket errors and non-2xx answers are the failed requests.
fn scale_reload_wrk(h: &Handover) -> Result<ScaleRun> {
    const SECS: u64 = 8;
    let mut cmd = std::process::Command::new("wrk");
    cmd.args(["-t1", "-c4", &format!("-d{SECS}s"), "--timeout", "10s"]).arg(format!("http://{}/", h.addr));
    let wrk = std::thread::spawn(move || crate::harness::run_bounded("wrk", cmd, Duration::from_secs(SECS + 30)));
    std::thread::sleep(Duration::from_secs(2)); // steady load before the trigger: a window, not a wait
    let out = h.cli(&["reload"], Duration::from_secs(180))?;
    let w = wrk.join().map_err(|_| anyhow::anyhow!("the wrk thread panicked"))??;
    if w.code != 0 {
        bail!("wrk failed ({}): {}{}", w.code, w.stdout, w.stderr);
    }
    let c = handover::demo::measure::WrkReport::parse(&w.stdout);
    if out.code != 0 {
        eprintln!("bench: reload of {MANY} (wrk) exited {}: {}\n{}", out.code, out.stderr, h.log_tail());
    }
    Ok(ScaleRun {
        workers: MANY,
        strategy: "all-at-once".into(),
        max_surge: 1,
        clients: "wrk keep-alive, never retries".into(),
        reload_s: out.took.as_secs_f64(),
        exit: out.code,
        counts: Counts {
            sent: c.requests + c.connect + c.read + c.write + c.timeout,
            ok: c.requests - c.non_2xx.min(c.requests),
            failed: c.errors(),
            ..Counts::default()
        },
        steady: Window::default(),
        during: Window::default(),
    })
}

/// Runs scenario 5 and/or 6.
pub fn run(cost: bool, scale: bool) -> Result<(Option<MasterCost>, Vec<ScaleRun>)> {
    let mut rss = Vec::new();
    let mut idle = None;
    let mut baseline_s = Vec::new();
    let mut confirmed_s = Vec::new();
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
    let mut fork_s = Vec::new();
    let rounds = if cost { SPAWN_ROUNDS } else { 1 };
    for round in 0..rounds {
        if cost {
            let (b, from_fork) = baseline_spawn(MANY, false)?;
            let (c, _) = baseline_spawn(MANY, true)?;
            fork_s.push(from_fork.as_secs_f64());
            eprintln!(
                "  fork+exec of {MANY} demo workers to the last READY=1: {:.2}s; confirming each exec: {:.2}s",
                b.as_secs_f64(),
                c.as_secs_f64()
            );
            baseline_s.push(b.as_secs_f64());
            confirmed_s.push(c.as_secs_f64());
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
            eprintln!("{}", scale_line(&r));
            runs.push(r);
            wait_workers(&h, MANY, Duration::from_secs(120))?;
        }
        setup.strategy = "all-at-once".into();
        setup.max_surge = 1;
        h.rewrite(&setup)?;
        let r = scale_reload_wrk(&h)?;
        eprintln!("{}", scale_line(&r));
        runs.push(r);
        wait_workers(&h, MANY, Duration::from_secs(120))?;
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
            confirmed_rate: MANY as f64 / median(confirmed_s.clone()),
            confirmed_s,
            baseline_rate: MANY as f64 / b,
            handover_rate: MANY as f64 / o,
            ratio: b / o,
            ratio_from_first_fork: median(fork_s) / o,
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

/// Scenario 6 line.
pub fn scale_line(s: &ScaleRun) -> String {
    format!(
        "  {} workers {} [{}]: reload {:.2}s exit {}; sent {} failed {}; gap steady {:.1}ms -> reload {:.1}ms",
        s.workers,
        strategy(s),
        s.clients,
        s.reload_s,
        s.exit,
        s.counts.sent,
        s.counts.failed,
        s.steady.gap_ms,
        s.during.gap_ms
    )
}

/// The strategy of a scale run, as the report writes it.
pub fn strategy(s: &ScaleRun) -> String {
    if s.strategy == "rolling" {
        format!("rolling, max_surge {}", s.max_surge)
    } else {
        s.strategy.clone()
    }
}
