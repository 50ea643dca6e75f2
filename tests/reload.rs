//! Reloads, rollbacks and stops under continuous load: every scenario loses 0 requests.
//!
//! Each test prints one `numbers:` line (requests sent/failed, longest interval without a
//! completed request during the operation versus steady state); the closing notes and
//! docs quote them.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Steady-state load for `d`, then the longest gap in that window.
fn steady_gap(load: &handover::demo::loadgen::LoadHandle, d: Duration) -> Duration {
    std::thread::sleep(d); // measuring a window of plain load, not synchronising
    let (_, ok, _) = load.snapshot();
    assert!(ok > 0, "load must be flowing");
    d
}

fn assert_no_failures(what: &str, report: &handover::demo::loadgen::LoadReport, d: &Daemon) {
    assert_eq!(report.failed, 0, "{what}: failed requests: {:#?}\nlog:\n{}", report.failures, d.log());
    assert!(report.ok > 50, "{what}: too little load to prove anything: {}", report.summary());
}

#[test]
fn reload_under_load_loses_nothing_and_has_no_hole() {
    let _x = exclusive();
    let opts = Options { worker_args: vec!["--boot-delay".into(), "1s".into()], ..Options::default() };
    let d = Daemon::start(opts);
    let before: Vec<i32> = d.worker_pids(1, "ready");
    for keep_alive in [false, true] {
        let load = d.load(4, keep_alive);
        let t0 = load.started_at();
        steady_gap(&load, Duration::from_millis(1500));
        let steady_end = t0.elapsed();
        let mono_before = monotonic_usec();
        let started = Instant::now();
        let out = d.cli(&["reload"]);
        let took = started.elapsed();
        let reload_from = steady_end;
        let reload_to = t0.elapsed();
        assert!(out.status.success(), "reload failed: {}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
        std::thread::sleep(Duration::from_millis(300)); // a little load after the switch
        let report = load.stop();
        assert_no_failures("reload", &report, &d);
        let steady = report.longest_gap_within(Duration::from_millis(200), steady_end);
        let during = report.longest_gap_within(reload_from, reload_to);
        println!(
            "numbers: reload keep_alive={keep_alive}: sent {} failed {} retried {}; longest gap during reload {:?} vs steady {:?}; reload took {:?} (app boot 1s)",
            report.sent, report.failed, report.retried, during, steady, took
        );
        // The app takes 1 s to boot; gunicorn's HUP leaves a hole that long. Ours must not.
        assert!(during < Duration::from_millis(500), "a hole of {during:?} during the reload");
        assert!(took >= Duration::from_millis(900), "reload returned before the new workers could be ready: {took:?}");
        // RELOADING=1 carried MONOTONIC_USEC from CLOCK_MONOTONIC, between our readings.
        let notices = d.notify.all();
        let reloading = notices.iter().rev().find(|n| n.get("RELOADING") == Some("1")).expect("RELOADING=1");
        let mono: u64 = reloading.get("MONOTONIC_USEC").expect("MONOTONIC_USEC").parse().unwrap();
        assert!(
            mono >= mono_before && mono <= reloading.mono_usec,
            "MONOTONIC_USEC {mono} not in [{mono_before}, {}]",
            reloading.mono_usec
        );
    }
    assert_eq!(d.notify.lifecycle(), vec!["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1"]);
    let after = d.worker_pids(3, "ready");
    assert_eq!(after.len(), 3);
    assert!(after.iter().all(|p| !before.contains(p)), "new pids after reload");
    let (_, body) = http_get(d.addr, "/");
    assert_eq!(generation_of(&body), Some(3), "{body}");
    // Draining workers say STOPPING=1 and exit: their words must be heard before their exit.
    assert!(!d.log().contains("not a worker"), "a worker's last message was taken for a stranger's:\n{}", d.log());
}

fn failed_reload(worker_args: &[&str], expect_in_error: &str) {
    let _x = exclusive();
    let mut opts = Options::default();
    let d = Daemon::start(opts.clone());
    let before = d.worker_pids(1, "ready");
    opts.worker_args = worker_args.iter().map(|s| s.to_string()).collect();
    opts.workers_extra = "boot_timeout = \"1500ms\"\ngraceful_timeout = \"5s\"\n".into();
    d.rewrite_config(&opts);
    let load = d.load(4, true);
    std::thread::sleep(Duration::from_millis(500)); // some steady load first
    let started = Instant::now();
    let out = d.cli(&["reload"]);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(500)); // keep loading after the rollback
    let report = load.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a rolled-back reload exits 1: {stderr}");
    assert!(stderr.contains(expect_in_error), "reason names the failure: {stderr}");
    assert_no_failures("failed reload", &report, &d);
    assert_eq!(report.bodies_by_gen.keys().collect::<Vec<_>>(), vec!["1"], "only generation 1 served");
    assert_eq!(d.worker_pids(1, "ready"), before, "the old generation is untouched");
    let lifecycle = d.notify.lifecycle();
    assert_eq!(lifecycle, vec!["READY=1", "RELOADING=1", "READY=1"], "READY=1 follows RELOADING=1 on failure too");
    let status = d.notify.all().iter().rev().find_map(|n| n.get("STATUS").map(str::to_string)).unwrap_or_default();
    assert!(status.contains("last reload failed"), "STATUS= says why: {status}");
    println!(
        "numbers: failed reload ({}): sent {} failed {}; handover reload returned exit 1 after {:?}",
        worker_args.join(" "),
        report.sent,
        report.failed,
        took
    );
}

#[test]
fn reload_whose_workers_exit_at_boot_rolls_back_losing_nothing() {
    failed_reload(&["--boot-delay", "300ms", "--exit-at-boot", "3"], "before it was ready");
}

#[test]
fn reload_whose_workers_never_become_ready_rolls_back_losing_nothing() {
    failed_reload(&["--never-ready"], "boot_timeout");
}

#[test]
fn rolling_reload_under_load_loses_nothing() {
    let _x = exclusive();
    let mut opts =
        Options { workers: 4, extra: "[reload]\nstrategy = \"rolling\"\nmax_surge = 1\n".into(), ..Options::default() };
    opts.worker_args = vec!["--boot-delay".into(), "300ms".into()];
    let d = Daemon::start(opts);
    let load = d.load(4, false);
    std::thread::sleep(Duration::from_millis(500));
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = load.stop();
    assert_no_failures("rolling reload", &report, &d);
    assert!(report.bodies_by_gen.contains_key("2"), "generation 2 served: {:?}", report.bodies_by_gen);
    println!(
        "numbers: rolling reload: sent {} failed {}; longest gap {:?}",
        report.sent,
        report.failed,
        report.longest_gap()
    );
}

#[test]
fn stop_then_start_again_on_the_same_socket_loses_nothing() {
    let _x = exclusive();
    let mut d = Daemon::start(Options::default());
    let load = d.load(4, true);
    std::thread::sleep(Duration::from_millis(500));
    // An in-flight slow request must complete through the drain.
    let addr = d.addr;
    let slow = std::thread::spawn(move || http_get(addr, "/sleep?ms=1500"));
    std::thread::sleep(Duration::from_millis(200)); // let it be accepted
    d.signal(libc::SIGTERM);
    d.notify.wait_lifecycle("STOPPING=1", 1, Duration::from_secs(10));
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0, "graceful stop exits 0");
    let (code, body) = slow.join().unwrap();
    assert_eq!((code, body.trim()), (200, "slept 1500 ms"), "in-flight request completed during the drain");
    // What systemctl restart does: the socket stayed open in "systemd"; a new daemon starts.
    d.launch();
    d.notify.wait_lifecycle("READY=1", 2, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let report = load.stop();
    assert_no_failures("stop + start", &report, &d);
    println!(
        "numbers: stop and restart on the same socket: sent {} failed {} retried {}; longest gap {:?}",
        report.sent,
        report.failed,
        report.retried,
        report.longest_gap()
    );
}

#[test]
fn recycling_by_max_lifetime_under_load_loses_nothing() {
    let _x = exclusive();
    let opts = Options {
        workers: 2,
        worker_args: vec!["--boot-delay".into(), "100ms".into()],
        workers_extra: "max_lifetime = \"1s\"\nboot_timeout = \"10s\"\ngraceful_timeout = \"10s\"\n".into(),
        ..Options::default()
    };
    let d = Daemon::start(opts);
    let first = d.worker_pids(1, "ready");
    let load = d.load(4, false);
    // Each worker lives 1-1.1 s: wait until both original workers have been replaced.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = d.worker_pids(1, "ready");
        if now.len() == 2 && now.iter().all(|p| !first.contains(p)) {
            break;
        }
        assert!(Instant::now() < deadline, "workers were not recycled: {}", d.status());
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = load.stop();
    assert_no_failures("recycling", &report, &d);
    assert!(d.log().contains("recycling worker"), "{}", d.log());
    println!(
        "numbers: recycling by max_lifetime: sent {} failed {}; longest gap {:?}",
        report.sent,
        report.failed,
        report.longest_gap()
    );
}

/// Many workers drain at once: each says STOPPING=1 and exits within microseconds of the
/// others, so exits and last words interleave. Every last word must be attributed to its
/// worker (the queue is read after each `waitpid`, not once per SIGCHLD).
#[test]
fn last_words_of_many_draining_workers_are_attributed_to_them() {
    let _x = exclusive();
    let opts = Options { workers: 24, worker_args: vec!["--boot-delay".into(), "50ms".into()], ..Options::default() };
    let d = Daemon::start(opts);
    for generation in 1..=4u64 {
        let out = d.cli(&["reload"]);
        assert!(out.status.success(), "reload failed: {}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = d.status()["workers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|w| w["generation"] == generation)
                .count();
            if left == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "generation {generation} still has {left} workers after 20 s:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20)); // polling interval, the deadline bounds it
        }
    }
    let log = d.log();
    assert_eq!(log.matches("exited (exit code 0)").count(), 4 * 24, "all drained workers exited cleanly:\n{log}");
    assert!(!log.contains("not a worker"), "a worker's last message was taken for a stranger's:\n{log}");
}

/// A version that says READY=1 too early and then fails (gunicorn's arbiter before its app
/// import, `ready = "delay:…"` too short): without a window the reload "succeeds" and the
/// site goes down; with `reload.min_healthy_time` it is rolled back and nothing is lost.
#[test]
fn a_version_that_fails_after_saying_ready_is_rolled_back_within_min_healthy_time() {
    let _x = exclusive();
    let mut opts = Options { workers: 2, ..Options::default() };
    let d = Daemon::start(opts.clone());
    let before = d.worker_pids(1, "ready");
    opts.worker_args = ["--boot-delay", "100ms", "--exit-after-ready", "700ms"].map(String::from).to_vec();
    // A window far longer than the worker lives: the reload must fail at the exit (~0.8 s),
    // not at the window's end, and a loaded machine cannot blur the two.
    opts.extra = "[reload]\nmin_healthy_time = \"30s\"\n".into();
    d.rewrite_config(&opts);
    let load = d.load(4, true);
    std::thread::sleep(Duration::from_millis(300)); // some steady load first
    let started = Instant::now();
    let out = d.cli(&["reload"]);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(300)); // keep loading after the rollback
    let report = load.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "rolled back: {stderr}\n{}", d.log());
    assert!(stderr.contains("within min_healthy_time 30s of being ready"), "{stderr}");
    assert_no_failures("early READY rolled back", &report, &d);
    assert_eq!(d.worker_pids(1, "ready"), before, "the old generation never stopped");
    assert!(took < Duration::from_secs(15), "failed at the exit, not at the end of the window: {took:?}");
    // The next reload gets a new number: generation 2 stays the rolled-back version.
    opts.worker_args = vec!["--boot-delay".into(), "100ms".into()];
    opts.extra = "[reload]\nmin_healthy_time = \"300ms\"\n".into();
    d.rewrite_config(&opts);
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    let (_, body) = http_get(d.addr, "/");
    assert_eq!(generation_of(&body), Some(3), "generation 2 is not reused: {body}");
    println!(
        "numbers: early READY then exit, min_healthy_time 30s: sent {} failed {}; handover reload exit 1 after {took:?}",
        report.sent, report.failed
    );
}

/// A crash loop is visible: `handover status` says degraded and shows the failing slot.
#[test]
fn a_crash_looping_slot_shows_as_degraded_in_status() {
    let _x = exclusive();
    let d = Daemon::start(Options { workers: 2, ..Options::default() });
    let pids = d.worker_pids(1, "ready");
    // Its replacement boots for 200 ms after a 100 ms backoff: degraded until then.
    // SAFETY: plain kill(2) of a worker this test's daemon started and has not reaped.
    assert_eq!(unsafe { libc::kill(pids[0], libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s = d.status();
        if s["phase"] == "degraded" && !s["failing"].as_array().is_none_or(|f| f.is_empty()) {
            break s;
        }
        assert!(Instant::now() < deadline, "never degraded: {s}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(10)); // polling, bounded by the deadline
    };
    let failing = &status["failing"][0];
    assert_eq!(failing["slot"], 0, "{status}");
    assert!(failing["last_failure"].as_str().unwrap_or("").contains("killed by SIGKILL"), "{status}");
    assert!(status["summary"].as_str().unwrap_or("").contains("degraded"), "{status}");
    let table = d.cli(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("FAILING SLOTS"), "{table}");
    // It recovers once the slot's new worker is ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.status()["phase"] != "running" {
        assert!(Instant::now() < deadline, "never recovered: {}\n{}", d.status(), d.log());
        std::thread::sleep(Duration::from_millis(20)); // polling, bounded by the deadline
    }
    assert!(d.log().contains("recovered: every slot of generation 1 serves again"), "{}", d.log());
}
