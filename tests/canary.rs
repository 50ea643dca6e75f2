//! A release that boots but fails requests (issue 22), against the real binary with an
//! emulated systemd side: the canary fails such a reload fast with the numbers, having let
//! only a few of its 500s through; `handover rollback` goes back to the previous release
//! after a `current` symlink moved on, and refuses clearly when it cannot; `watch` rolls
//! back a release that starts failing after its reload, which `handover reload --watch`
//! reports with exit 1.
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{wait_for, Daemon, Options};

fn options(worker_args: &[&str], reload: &str, working_directory: Option<&Path>) -> Options {
    let mut workers_extra = "boot_timeout = \"10s\"\ngraceful_timeout = \"5s\"\n".to_string();
    if let Some(wd) = working_directory {
        workers_extra.push_str(&format!("working_directory = {:?}\n", wd.display().to_string()));
    }
    Options {
        workers: 4,
        worker_args: worker_args.iter().map(|s| s.to_string()).collect(),
        workers_extra,
        extra: format!("[reload]\n{reload}"),
        ..Options::default()
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn cwd_of(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/cwd")).map(|p| p.display().to_string()).unwrap_or_default()
}

#[test]
fn a_canary_fails_a_release_that_answers_500_and_lets_few_of_them_through() {
    let _x = common::exclusive();
    let reload = "canary = 1\ncanary_time = \"30s\"\n";
    let d = Daemon::start(options(&[], reload, None));
    // A connection per request: a canary gets new connections only (a kept-alive one stays
    // with the old worker that accepted it), as behind clients that come and go.
    let load = d.load(8, false);
    wait_for("traffic reported by generation 1", Duration::from_secs(10), || {
        (d.status()["generations"][0]["requests"].as_u64()? > 200).then_some(())
    });
    d.rewrite_config(&options(&["--error-rate", "0.3"], reload, None));
    let (sent_before, _, failed_before) = load.snapshot();
    assert_eq!(failed_before, 0);
    let started = Instant::now();
    let out = d.cli(&["reload"]);
    let took = started.elapsed();
    let (sent_at_reload, _, failed_at_reload) = load.snapshot();
    // After the reload returned: the old generation alone serves, no error any more.
    std::thread::sleep(Duration::from_secs(2));
    let (sent_after, _, failed_after) = load.snapshot();
    let report = load.stop();

    assert_eq!(out.status.code(), Some(1), "the reload fails: {}\n{}", stderr(&out), d.log());
    let why = stderr(&out);
    assert!(why.contains("gen 2 canary: ") && why.contains("requests failed, gen 1: 0%"), "{why}");
    assert!(took < Duration::from_secs(30), "judged on its requests, before canary_time: {took:?}");
    let status = d.status();
    assert_eq!(status["active_generation"], 1, "{status}");
    assert!(
        report.failures.iter().all(|f| f.reason == "HTTP status 500"),
        "only 500s, no failed connection: {:?}",
        report.failures
    );
    // The canary takes its share of the new connections (1 of 5 workers accepting) and fails
    // 30% of it until it is judged (its reports come every 250 ms at most, so it serves a few
    // hundred requests here before that): bounded by 30% of half of what was sent during the
    // reload. All four workers on the bad release would have failed 30% of everything.
    let during = sent_at_reload - sent_before;
    assert!(
        failed_at_reload * 2 * 10 <= during * 3,
        "{failed_at_reload} answers of 500 reached clients of {during} sent during the reload"
    );
    assert_eq!(
        failed_after,
        failed_at_reload,
        "no 500 after the reload returned ({} more sent)",
        sent_after - sent_at_reload
    );
    eprintln!(
        "canary: reload failed after {took:?}; {failed_at_reload} of the {during} requests sent during it answered 500; {}",
        why.trim()
    );
}

#[test]
fn rollback_goes_back_to_the_release_the_previous_generation_ran() {
    let _x = common::exclusive();
    let releases = tempfile::tempdir().expect("tempdir");
    let (r1, r2) = (releases.path().join("releases/1"), releases.path().join("releases/2"));
    std::fs::create_dir_all(&r1).expect("r1");
    std::fs::create_dir_all(&r2).expect("r2");
    let current = releases.path().join("current");
    std::os::unix::fs::symlink(&r1, &current).expect("symlink");
    let opts = options(&[], "", Some(&current));
    let d = Daemon::start(opts.clone());
    let out = d.cli(&["rollback"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("generation 1 is the first that served"), "{}", stderr(&out));

    // Deploy release 2: `current` moves on, a reload runs it.
    std::fs::remove_file(&current).expect("rm current");
    std::os::unix::fs::symlink(&r2, &current).expect("symlink");
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for pid in d.worker_pids(2, "ready") {
        assert_eq!(cwd_of(pid), r2.display().to_string());
    }
    // Good but wrong: roll back, under load, while `current` still names release 2.
    let load = d.load(4, true);
    let out = d.cli(&["rollback"]);
    let report = load.stop();
    assert!(out.status.success(), "rollback: {}\n{}", stderr(&out), d.log());
    assert_eq!(d.status()["active_generation"], 3);
    let pids = d.worker_pids(3, "ready");
    assert_eq!(pids.len(), 4);
    for pid in pids {
        assert_eq!(cwd_of(pid), r1.display().to_string(), "generation 3 runs release 1");
    }
    assert_eq!(report.failed, 0, "{:?}", report.failures);
    assert!(report.ok > 0);
    // Nothing earlier than release 1: a second rollback refuses and changes nothing.
    let out = d.cli(&["rollback"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no earlier release"), "{}", stderr(&out));
    assert_eq!(d.status()["active_generation"], 3);

    // Release 3 deployed, then release 1 removed: the rollback target is gone.
    let r3 = releases.path().join("releases/3");
    std::fs::create_dir_all(&r3).expect("r3");
    std::fs::remove_file(&current).expect("rm current");
    std::os::unix::fs::symlink(&r3, &current).expect("symlink");
    assert!(d.cli(&["reload"]).status.success());
    std::fs::remove_dir(&r1).expect("rm release 1");
    let out = d.cli(&["rollback"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is gone") && stderr(&out).contains("no longer a directory"), "{}", stderr(&out));
    assert_eq!(d.status()["active_generation"], 4, "a refused rollback changes nothing");
}

#[test]
fn watch_rolls_back_a_release_that_starts_failing_and_reload_watch_says_so() {
    let _x = common::exclusive();
    let reload = "watch = \"30s\"\nmin_requests = 50\n";
    let d = Daemon::start(options(&[], reload, None));
    let load = d.load(8, true);
    d.rewrite_config(&options(&["--error-rate", "0.3", "--errors-after", "3s"], reload, None));
    let started = Instant::now();
    let out = d.cli(&["reload", "--watch"]);
    let took = started.elapsed();
    let report = load.stop();
    assert_eq!(out.status.code(), Some(1), "{}\n{}", stderr(&out), d.log());
    assert!(stderr(&out).contains("gen 2 failed its watch: "), "{}", stderr(&out));
    assert!(took < Duration::from_secs(20), "rolled back well before the watch ended: {took:?}");
    let status = d.status();
    assert_eq!(status["active_generation"], 3, "{status}");
    assert!(status["auto_rollback"]["message"].as_str().unwrap_or("").contains("rolled back automatically"));
    assert!(report.failures.iter().all(|f| f.reason == "HTTP status 500"), "{:?}", report.failures);
    assert!(d.log().contains("auto-rollback") || d.log().contains("rolled back automatically"));

    // A fine release under watch is left alone, and `reload --watch` says so.
    d.rewrite_config(&options(&[], "watch = \"3s\"\n", None));
    let out = d.cli(&["reload", "--watch"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("serves after its watch"), "{:?}", out);
    assert_eq!(d.status()["active_generation"], 4);
}
