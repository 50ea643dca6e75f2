//! handover's benchmark suite (issue 4). Run it with `benches/run.sh` (which prepares
//! gunicorn in a venv and wrk), or `cargo bench --bench handover -- [OPTIONS]`:
//!
//! ```text
//! --quick            scenario 1 for handover only, with the built-in demo worker (no Python,
//!                    no wrk); exits 1 if a request failed or a reload did not succeed (the
//!                    timing checks are reported, not enforced). About a minute.
//! --only 1,2,4       run only these scenarios (1-7, 9 and 10; 8 is --soak)
//! --venv DIR         the venv with gunicorn (default target/bench-venv)
//! --out DIR          where results.json, results.md and reload.svg go (default target/bench)
//! --publish          also write docs/benchmarks.md, docs/benchmark-reload.svg and the README's
//!                    Benchmarks section from this run
//! --note TEXT        a remark for docs/benchmarks.md (e.g. what else ran on the machine)
//! --filter TEXT      scenario 1: only the set-ups whose key contains TEXT (gunicorn-hup,
//!                    handover-all-at-once, handover-rolling)
//! --e2e-root DIR     scenario 3: the tree holding tests/e2e/sandbox.sh and
//!                    packaging/build-deb.sh (default: this repository)
//! --soak MINUTES     scenario 8 (not run otherwise): the soak with faults, this long
//!                    (10 is the reference figure; 1 for a smoke run)
//! scale              only the scaling scenario (issue 13): 64 / 512 / 1,024 / 4,096 demo
//!                    workers booting in 0.1 s; writes scale.json and scale.md, with
//!                    --publish also the table in docs/benchmarks.md (at most 20 minutes;
//!                    about 6 in practice)
//! spawn              only scenario 5's spawn-rate comparison (512 demo workers to the last
//!                    READY=1: plain fork+exec loop, confirming loop, handover; alternating
//!                    rounds, medians); prints a `numbers:` line (about a minute)
//! --rounds N         spawn: rounds (default 5)
//! --clients N        scenario 9: load clients (default 4)
//! --sizes 64,512     scale: the worker counts (default 64,512,1024,4096)
//! --memory-up-to N   scale: measure the idle cost of max_memory only up to N workers
//! ```
//!
//! Scenarios: 1 reload under load (handover all-at-once and rolling, gunicorn HUP); 2 failed
//! reloads (broken, never ready); 1 and 2 are run a second time under wrk, a client that keeps
//! connections alive and never retries (the first time, the load generator retries a request
//! a closing keep-alive connection never answered, as RFC 9112 allows); 3 `systemctl restart` and `kill -9` of the master under a
//! real systemd (needs the e2e harness); 4 throughput by hand vs under handover (wrk);
//! 5 cost of the master (RSS, idle CPU, spawn rate); 6 reloads of 512 workers; 7 real servers
//! (tests/real_apps/) against themselves run alone: the gunicorn recipe's memory vs
//! `gunicorn --preload -w 4`, uvicorn `--fd 3` keep-alive latency vs `uvicorn --port`.
//! 8 a soak with faults (reloads every 5 s, SIGKILLed workers, misbehaving control clients,
//! notify noise and descriptor floods, a stopped master, upgrades raced by a scale-down, an
//! unread stderr), only with `--soak MINUTES`.
//! 9 a reload under CPU saturation (issue 23): an app whose import burns 2 s of CPU
//! (benches/wsgi/cpu_app.py; 1 ms per request), 4 workers, clients keeping both cores busy;
//! gunicorn's HUP, handover with `boot_priority = "normal"` and handover's default ("low",
//! nice 10 here) side by side, alternating, 2 rounds: serving p50/p99/max and throughput
//! during the reload vs steady state, and the reload's duration (about 6 minutes; its own
//! section of docs/benchmarks.md, which `--only 9 --publish` rewrites alone).
//! 10 a release that boots but fails (SPEC §8, canaries): the good release of
//! benches/wsgi/release_app.py serves on 4 workers under 4 clients that never retry, then a
//! release that answers 500 to 30 % of its requests is deployed by gunicorn's HUP, uvicorn's
//! HUP (`--workers 4`), `handover reload` without a canary and with `canary = 1`; 500s,
//! connection errors and how long bad code served in the 45 s after the deploy command, and
//! its exit status (about 4 minutes; its own section of docs/benchmarks.md, which
//! `--only 10 --publish` rewrites alone, with its row of the README's table).
//!
//! Everything runs on loopback, is bounded in time, and kills only what it started, by pid.
//! Performance is reported as ratios to a baseline measured in the same run.
#![allow(clippy::unwrap_used)]

mod badrelease;
mod gunicorn;
mod harness;
mod master;
mod realapps;
mod reload;
mod report;
mod saturation;
mod scale;
mod soak;
mod stats;
mod statusload;
mod systemd;
mod throughput;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The whole run must end by itself well within 15 minutes (scenarios 9 and 10 add their own
/// budgets, `saturation::BUDGET` and `badrelease::BUDGET`).
const FULL_DEADLINE: Duration = Duration::from_secs(13 * 60);
/// Quick mode's bound.
const QUICK_DEADLINE: Duration = Duration::from_secs(4 * 60);

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Quick smoke mode.
    pub quick: bool,
    /// Scenarios to run.
    pub only: Vec<u8>,
    /// The venv with gunicorn.
    pub venv: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Write docs and README.
    pub publish: bool,
    /// Free-text remark for the docs.
    pub note: Option<String>,
    /// Scenario 1: only the servers whose key contains this.
    pub filter: Option<String>,
    /// Where the e2e harness (tests/e2e/, packaging/) is.
    pub e2e_root: PathBuf,
    /// The arguments as given (for the docs).
    pub args: Vec<String>,
    /// Scenario 7's length, if asked for.
    pub soak: Option<Duration>,
    /// Only the scaling scenario.
    pub scale: bool,
    /// Its worker counts.
    pub sizes: Vec<usize>,
    /// Its `max_memory` measurement stops above this many workers.
    pub memory_up_to: usize,
    /// Only the spawn-rate comparison.
    pub spawn: bool,
    /// Its rounds.
    pub rounds: usize,
    /// Scenario 9's load clients.
    pub clients: usize,
}

fn parse_args() -> Result<Option<Options>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo test --benches` runs bench targets without `--bench`: nothing to do then.
    if !args.iter().any(|a| a == "--bench") {
        return Ok(None);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut o = Options {
        quick: false,
        only: vec![1, 2, 3, 4, 5, 6, 7, 9, 10],
        venv: root.join("target/bench-venv"),
        out: root.join("target/bench"),
        publish: false,
        note: None,
        filter: None,
        e2e_root: root.clone(),
        args: Vec::new(),
        soak: None,
        scale: false,
        sizes: scale::SIZES.to_vec(),
        memory_up_to: usize::MAX,
        spawn: false,
        rounds: 5,
        clients: saturation::CLIENTS,
    };
    let mut it = args.into_iter().filter(|a| a != "--bench");
    while let Some(a) = it.next() {
        o.args.push(a.clone());
        let mut value = |name: &str| -> Result<String> {
            let v = it.next().with_context(|| format!("{name} needs a value"))?;
            o.args.push(v.clone());
            Ok(v)
        };
        match a.as_str() {
            "--quick" => o.quick = true,
            "--publish" => o.publish = true,
            "--only" => {
                o.only = value("--only")?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<u8>()
                            .ok()
                            .filter(|n| (1..=7).contains(n) || *n == 9 || *n == 10)
                            .context("--only takes 1-7, 9 and 10 (8, the soak, is --soak MINUTES)")
                    })
                    .collect::<Result<_>>()?;
            }
            "--venv" => o.venv = PathBuf::from(value("--venv")?),
            "--out" => o.out = PathBuf::from(value("--out")?),
            "--note" => o.note = Some(value("--note")?),
            "--filter" => o.filter = Some(value("--filter")?),
            "--e2e-root" => o.e2e_root = PathBuf::from(value("--e2e-root")?),
            "--soak" => {
                let minutes: f64 = value("--soak")?
                    .parse()
                    .ok()
                    .filter(|m| *m > 0.0 && *m <= 60.0)
                    .context("--soak takes minutes, 0-60")?;
                o.soak = Some(Duration::from_secs_f64(minutes * 60.0));
                if !o.args.contains(&"--only".to_owned()) {
                    o.only = vec![]; // the soak alone, unless scenarios were named
                }
            }
            "scale" | "--scale" => o.scale = true,
            "spawn" | "--spawn" => o.spawn = true,
            "--rounds" => {
                o.rounds =
                    value("--rounds")?.parse().ok().filter(|n| (1..=21).contains(n)).context("--rounds takes 1-21")?
            }
            "--sizes" => {
                o.sizes = value("--sizes")?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|n| (1..=4096).contains(n))
                            .context("--sizes takes 1-4096")
                    })
                    .collect::<Result<_>>()?;
            }
            "--clients" => {
                o.clients =
                    value("--clients")?.parse().ok().filter(|n| (1..=64).contains(n)).context("--clients takes 1-64")?
            }
            "--memory-up-to" => {
                o.memory_up_to = value("--memory-up-to")?.parse().context("--memory-up-to takes a count")?
            }
            other => bail!("unknown option {other:?} (see benches/handover/main.rs)"),
        }
    }
    if o.quick {
        o.only = vec![1];
    }
    Ok(Some(o))
}

fn main() {
    // The hidden helper mode of scenario 5's baseline (see master::spawn_baseline_main).
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, n, notify, how] = args.as_slice() {
        if mode == "--spawn-baseline" {
            let n = n.parse().unwrap_or(0);
            let confirm = how == "confirm-exec";
            std::process::exit(master::spawn_baseline_main(n, std::path::Path::new(notify), confirm));
        }
    }
    let opts = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => return,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::exit(2);
        }
    };
    // A panic anywhere kills what the benchmark started before the process goes away.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        harness::kill_everything();
        default_hook(info);
    }));
    // The overall bound: past it, kill what we started and exit.
    let limit = if opts.quick {
        QUICK_DEADLINE
    } else if opts.scale {
        scale::DEADLINE
    } else {
        FULL_DEADLINE
    } + opts.soak.unwrap_or_default()
        + if opts.only.contains(&9) { saturation::BUDGET } else { Duration::ZERO }
        + if opts.only.contains(&10) { badrelease::BUDGET } else { Duration::ZERO };
    std::thread::spawn(move || {
        std::thread::sleep(limit); // a deadline, not a synchronisation
        eprintln!("bench: overall deadline of {limit:?} passed: stopping everything it started");
        harness::kill_everything();
        std::process::exit(3);
    });
    let started = Instant::now();
    let outcome = if opts.spawn {
        master::spawn_rate_only(master::MANY, opts.rounds).map(|_| 0)
    } else if opts.scale {
        scale::run(&opts.sizes, opts.memory_up_to, &opts.out, opts.publish).map(|_| 0)
    } else {
        run(&opts)
    };
    let code = match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: {e:#}");
            harness::kill_everything();
            1
        }
    };
    eprintln!("bench: done in {:.0}s", started.elapsed().as_secs_f64());
    std::process::exit(code);
}

/// What the soak must show: only requests in flight on killed workers fail (one per load
/// client at most), every reload succeeds, and the master does not grow.
fn soak_checks(s: &soak::Soak) -> Vec<report::Check> {
    let mut checks = Vec::new();
    let mut check = |what: &str, ok: bool, detail: String| {
        checks.push(report::Check { what: what.into(), ok, detail, failures: what.contains("failed requests") });
    };
    check(
        "soak: failed requests only in flight on SIGKILLed workers",
        s.failed <= s.killed * soak::CLIENTS as u64,
        format!("{} failed of {}, {} workers killed, {} clients", s.failed, s.sent, s.killed, soak::CLIENTS),
    );
    check(
        "soak: every reload succeeded",
        s.reloads > 0 && s.reloads_ok == s.reloads,
        format!("{}/{}", s.reloads_ok, s.reloads),
    );
    check(
        "soak: every upgrade raced by a scale-down succeeded with the same pid",
        s.upgrades > 0 && s.upgrades_ok == s.upgrades,
        format!("{}/{}", s.upgrades_ok, s.upgrades),
    );
    check("soak: master fd count does not grow", s.fd_growth() <= 0, format!("{:+} fds", s.fd_growth()));
    check(
        "soak: master RSS does not grow (≤ 512 KiB after warm-up)",
        s.rss_growth_kib() <= 512,
        format!("{:+} KiB", s.rss_growth_kib()),
    );
    check(
        "soak: rejected notify datagrams are summarised, not logged one by one",
        (s.log_lines as u64) < s.notify_noise / 10,
        format!("{} log lines for {} stranger datagrams", s.log_lines, s.notify_noise),
    );
    checks
}

fn selected(opts: &Options, server: reload::Server) -> bool {
    opts.filter.as_ref().is_none_or(|f| server.key().contains(f.as_str()))
}

fn section(name: &str) {
    eprintln!("\n== {name}");
}

fn run(opts: &Options) -> Result<i32> {
    let started = Instant::now();
    let mut results = report::Results::begin(opts)?;
    let wants = |n: u8| opts.only.contains(&n);
    let python = if !opts.quick && (wants(1) || wants(2) || wants(4) || wants(9) || wants(10)) {
        Some(gunicorn::Python::find(&opts.venv)?)
    } else {
        None
    };
    if opts.quick {
        section("1 (quick): reload under load, handover with demo workers");
        for (server, keep_alive) in [
            (reload::Server::Handover("all-at-once", 1), false),
            (reload::Server::Handover("all-at-once", 1), true),
            (reload::Server::Handover("rolling", 1), false),
        ] {
            if !selected(opts, server) {
                continue;
            }
            let r = reload::reload_under_load(server, &reload::App::Demo, keep_alive)?;
            eprintln!("{}", report::reload_line(&r));
            results.reload.push(r);
        }
    } else if let (true, Some(py)) = (wants(1), &python) {
        section("1: reload under load, gunicorn HUP vs handover");
        let app = reload::App::Gunicorn(py);
        for keep_alive in [false, true] {
            for server in [
                reload::Server::GunicornHup,
                reload::Server::Handover("all-at-once", 1),
                reload::Server::Handover("rolling", 1),
            ] {
                if !selected(opts, server) {
                    continue;
                }
                let r = reload::reload_under_load(server, &app, keep_alive)?;
                eprintln!("{}", report::reload_line(&r));
                results.reload.push(r);
            }
        }
    }
    if let (true, Some(py)) = (wants(2), &python) {
        section("2: reloads of a broken version and of one that never gets ready");
        for r in reload::failed_reloads_handover(py)? {
            eprintln!("{}", report::failed_line(&r));
            results.failed_reloads.push(r);
        }
        let r = reload::failed_reload_gunicorn(py)?;
        eprintln!("{}", report::failed_line(&r));
        results.failed_reloads.push(r);
    }
    if let (true, Some(py)) = (wants(1) || wants(2), &python) {
        section("1+2 again, counted by wrk (keep-alive, never retries)");
        let app = reload::App::Gunicorn(py);
        let mut runs: Vec<(reload::Server, &str)> = Vec::new();
        if wants(1) {
            for server in [
                reload::Server::GunicornHup,
                reload::Server::Handover("all-at-once", 1),
                reload::Server::Handover("rolling", 1),
            ] {
                if selected(opts, server) {
                    runs.push((server, "2"));
                }
            }
        }
        if wants(2) {
            runs.push((reload::Server::Handover("all-at-once", 1), "broken"));
            runs.push((reload::Server::Handover("all-at-once", 1), "hang"));
            runs.push((reload::Server::GunicornHup, "broken"));
        }
        for (server, version) in runs {
            let r = reload::reload_under_wrk(server, &app, version)?;
            eprintln!("{}", report::wrk_line(&r));
            results.wrk_reloads.push(r);
        }
    }
    if wants(3) {
        section("3: systemctl restart and kill -9 of the master under systemd");
        let r = systemd::run(&opts.e2e_root)?;
        results.restart = Some(r);
    }
    if wants(4) {
        section("4: throughput, by hand vs under handover (wrk)");
        let mut t = throughput::run()?;
        if let Some(py) = &python {
            t.gunicorn = Some(throughput::run_gunicorn(py)?);
        }
        eprintln!("{}", report::throughput_line(&t));
        results.throughput = Some(t);
    }
    if wants(5) || wants(6) {
        section("5/6: cost of the master; reloads of 512 workers");
        let (cost, scale) = master::run(wants(5), wants(6))?;
        if let Some(c) = &cost {
            eprintln!("{}", report::master_line(c));
        }
        results.master = cost;
        results.scale = scale;
    }
    if wants(7) && !opts.quick {
        section("7: real servers: gunicorn recipe memory, uvicorn --fd 3 latency");
        let r = realapps::run(&opts.venv)?;
        eprintln!("{}", report::realapps_line(&r));
        results.realapps = Some(r);
    }
    if let (true, Some(py)) = (wants(9) && !opts.quick, &python) {
        section("9: reload under CPU saturation: gunicorn HUP, handover boot_priority normal and low");
        results.saturation = Some(saturation::run(py, opts.clients)?);
    }
    if let (true, Some(py)) = (wants(10) && !opts.quick, &python) {
        section("10: a release that boots but fails: gunicorn HUP, uvicorn HUP, handover without and with a canary");
        results.release = Some(badrelease::run(py)?);
    }
    let soaked = match opts.soak {
        Some(d) => {
            section("8: soak with faults");
            let s = soak::run(d)?;
            eprintln!("{}", s.line());
            Some(s)
        }
        None => None,
    };
    results.finish(started.elapsed());
    if let Some(s) = &soaked {
        std::fs::create_dir_all(&opts.out)?;
        std::fs::write(opts.out.join("soak.json"), serde_json::to_string_pretty(s)?)?;
        std::fs::write(opts.out.join("soak.md"), format!("{}\n", s.line()))?;
        let checks = soak_checks(s);
        if opts.publish {
            soak::publish(s, &checks)?;
        }
        results.checks.extend(checks);
    }
    // --quick gates on failed requests only; a full run on every check.
    let failed_checks = results.checks.iter().filter(|c| !c.ok && (c.failures || !opts.quick)).count();
    // A soak, or scenario 9 or 10, alone publishes only its own section, not an empty results page.
    let page_opts = Options { publish: opts.publish && opts.only.iter().any(|n| (1..=7).contains(n)), ..opts.clone() };
    report::write(&results, &page_opts)?;
    if let (true, Some(s)) = (opts.publish, &results.saturation) {
        report::publish_saturation(&results, s)?;
    }
    if let (true, Some(x)) = (opts.publish, &results.release) {
        report::publish_release(&results, x, !page_opts.publish)?;
    }
    for c in &results.checks {
        eprintln!("check {}: {} ({})", if c.ok { "ok  " } else { "FAIL" }, c.what, c.detail);
    }
    Ok(if failed_checks == 0 { 0 } else { 1 })
}
