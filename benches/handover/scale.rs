//! The scaling scenario (issue 13), run alone with `cargo bench --bench handover -- scale`:
//! the master at 64 … 4,096 demo workers booting in 0.1 s (`--boot-delay 100ms`).
//!
//! For each size: start until READY=1 to systemd (every worker ready); one all-at-once
//! reload, timed from `handover reload` to its exit, and the master's CPU from the trigger
//! until the old generation has been reaped (the whole cost of a reload, drain included);
//! the master's RSS after it; its CPU over an idle window; then a second reload turns
//! `max_memory` on and the idle window is measured again (the master samples every worker's
//! memory every 5 s then).
//!
//! "Reaped" is read from the STATUS= line the master sends to (emulated) systemd: once the
//! old generation is gone it is exactly `gen N: n/n ready`. Waiting on it costs the master
//! nothing, unlike polling `handover status`, whose replies list every worker.
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::harness::{clock_ticks_per_sec, cpu_ticks, rss_kib, Handover, WorkerSetup};

/// The sizes measured by default.
pub const SIZES: [usize; 4] = [64, 512, 1024, 4096];
/// The idle windows (each spans two of the master's 5 s memory samples).
pub const IDLE: Duration = Duration::from_secs(10);
/// The whole scenario's bound (the overall deadline of `scale` mode).
pub const DEADLINE: Duration = Duration::from_secs(20 * 60);
/// The demo worker's simulated boot.
pub const BOOT_DELAY: &str = "100ms";

/// One size's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Workers.
    pub workers: usize,
    /// `handover run` launched until its READY=1 (every worker ready), seconds.
    pub ready_s: f64,
    /// `handover reload` (all-at-once) until it exited 0, seconds.
    pub reload_s: f64,
    /// Master CPU (user + system) from the trigger until the old generation was reaped, s.
    pub reload_cpu_s: f64,
    /// The same per worker, milliseconds.
    pub reload_cpu_ms_per_worker: f64,
    /// Master VmRSS after the reload, KiB.
    pub rss_kib: u64,
    /// Idle master CPU, % of one core, without `max_memory`.
    pub idle_cpu_pct: f64,
    /// Idle master CPU with `max_memory` set (None: not measured at this size).
    pub idle_cpu_memory_pct: Option<f64>,
    /// The second reload (turning `max_memory` on), seconds.
    pub memory_reload_s: Option<f64>,
    /// Why the `max_memory` figures are missing, if they are.
    pub memory_error: Option<String>,
}

fn secs(ticks: u64) -> f64 {
    ticks as f64 / clock_ticks_per_sec() as f64
}

/// The master's CPU over `IDLE`, in % of one core.
fn idle_pct(h: &Handover) -> Result<f64> {
    let t0 = cpu_ticks(h.pid())?;
    let started = Instant::now();
    std::thread::sleep(IDLE); // the idle window being measured
    let t1 = cpu_ticks(h.pid())?;
    Ok(100.0 * secs(t1 - t0) / started.elapsed().as_secs_f64())
}

/// Reloads to `generation` and waits until the previous one has been reaped; returns the
/// reload's wall time and the master's CPU over it, seconds.
fn reload(h: &Handover, generation: u64, n: usize) -> Result<(f64, f64)> {
    let t0 = cpu_ticks(h.pid())?;
    let out = h.cli(&["reload"], Duration::from_secs(300))?;
    if out.code != 0 {
        bail!("handover reload exited {}: {}\n{}", out.code, out.stderr, h.log_tail());
    }
    let settled = format!("STATUS=gen {generation}: {n}/{n} ready");
    h.notify.wait_count(&settled, 1, Duration::from_secs(300))?;
    let t1 = cpu_ticks(h.pid())?;
    Ok((out.took.as_secs_f64(), secs(t1 - t0)))
}

/// Measures one size; `memory`: also the idle cost with `max_memory`.
pub fn measure(n: usize, memory: bool) -> Result<Row> {
    let mut setup = WorkerSetup::demo(n, &["--boot-delay", BOOT_DELAY]);
    setup.boot_timeout = "300s".into();
    setup.graceful_timeout = "30s".into();
    let (h, ready) = Handover::start(&setup, Duration::from_secs(600))?;
    eprintln!("  {n} workers: all ready after {:.2}s", ready.as_secs_f64());
    let (reload_s, reload_cpu_s) = reload(&h, 2, n)?;
    let rss = rss_kib(h.pid())?;
    eprintln!("  {n} workers: reload {reload_s:.2}s, master CPU {reload_cpu_s:.2}s, RSS {rss} KiB");
    let idle = idle_pct(&h)?;
    eprintln!("  {n} workers: idle master {idle:.2} % of a core");
    let (mut idle_memory, mut memory_reload, mut memory_error) = (None, None, None);
    if memory {
        setup.max_memory = Some("1G".into());
        h.rewrite(&setup)?;
        // A master too busy sampling memory may not finish this reload: a figure, not a
        // reason to stop the scenario.
        match reload(&h, 3, n) {
            Ok((s, _)) => {
                memory_reload = Some(s);
                let p = idle_pct(&h)?;
                eprintln!("  {n} workers: idle master with max_memory {p:.2} % of a core");
                idle_memory = Some(p);
            }
            Err(e) => {
                eprintln!("  {n} workers: the reload turning max_memory on failed: {e:#}");
                memory_error = Some("the reload turning it on did not finish".into());
            }
        }
    }
    if let Err(e) = h.stop(Duration::from_secs(180)) {
        eprintln!("  {n} workers: {e:#}");
    }
    Ok(Row {
        workers: n,
        ready_s: ready.as_secs_f64(),
        reload_s,
        reload_cpu_s,
        reload_cpu_ms_per_worker: 1000.0 * reload_cpu_s / n as f64,
        rss_kib: rss,
        idle_cpu_pct: idle,
        idle_cpu_memory_pct: idle_memory,
        memory_reload_s: memory_reload,
        memory_error,
    })
}

/// The Markdown table of `rows`.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| workers | start until all ready | reload | master CPU per reload (per worker) | master RSS | idle CPU | idle CPU with `max_memory` |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for r in rows {
        let memory = match (r.idle_cpu_memory_pct, &r.memory_error) {
            (Some(p), _) => format!("{p:.2} %"),
            (None, Some(e)) => e.clone(),
            (None, None) => "not measured".to_owned(),
        };
        let _ = writeln!(
            s,
            "| {} | {:.2} s | {:.2} s | {:.2} s ({:.2} ms) | {:.1} MiB | {:.2} % | {} |",
            r.workers,
            r.ready_s,
            r.reload_s,
            r.reload_cpu_s,
            r.reload_cpu_ms_per_worker,
            r.rss_kib as f64 / 1024.0,
            r.idle_cpu_pct,
            memory
        );
    }
    s
}

/// Runs every size in `sizes` (`max_memory` measured up to `memory_up_to` workers), writes
/// `scale.json` and `scale.md` to `out` (and with `publish` the table in docs/benchmarks.md);
/// returns the rows.
pub fn run(sizes: &[usize], memory_up_to: usize, out: &Path, publish: bool) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &n in sizes {
        rows.push(measure(n, n <= memory_up_to)?);
    }
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("scale.json"), serde_json::to_string_pretty(&rows)? + "\n")?;
    let md = table(&rows);
    std::fs::write(out.join("scale.md"), &md)?;
    eprintln!("\nbench: wrote {}/scale.json, scale.md", out.display());
    println!("{md}");
    if publish {
        publish_table(&md)?;
    }
    Ok(rows)
}

/// When and on what the table was measured: date, commit, load average.
fn run_line() -> String {
    let out = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "Measured {} on commit {}, {} cores; load average at the end {} (other work shares this machine).\n",
        out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        out("git", &["-C", root, "rev-parse", "--short", "HEAD"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.join(" ")
    )
}

/// Where the generated table of docs/benchmarks.md's scaling section starts and ends.
const BEGIN: &str = "<!-- scale:begin (generated by `cargo bench --bench handover -- scale --publish`) -->";
const END: &str = "<!-- scale:end -->";

/// Replaces the table between the markers of docs/benchmarks.md's scaling section (or adds
/// the section); the rest of the section is prose kept as it is.
fn publish_table(md: &str) -> Result<()> {
    crate::report::publish_block(crate::report::SCALE_HEADING, BEGIN, END, &format!("{}\n{md}", run_line()))?;
    eprintln!("bench: published the scaling table in docs/benchmarks.md");
    Ok(())
}
