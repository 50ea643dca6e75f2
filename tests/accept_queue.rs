//! The accept queue, visible (SPEC §7): connections that no worker accepts show in
//! `handover status` (now, and the peak during the last reload), in the reload's result line
//! and in the `[metrics] textfile`, read from the real listening socket by the real binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Workers that never accept (`sleep`): every connection stays in the kernel's queue. The
/// first generation is ready at once (`spawn`), a reload's per `ready` (`delay:2s`: a
/// slow boot), healthy as soon as ready (`min_healthy_time = "0s"`). One worker: while the
/// reload waits for it, nothing else wakes the daemon, so only its readings of the queue
/// during the reload can see what arrives meanwhile.
fn options(textfile: &Path, ready: &str) -> Options {
    Options {
        workers: 1,
        command: Some(vec!["/bin/sh".into(), "-c".into(), "exec sleep 600".into()]),
        workers_extra: format!("ready = {ready:?}\nboot_timeout = \"20s\"\ngraceful_timeout = \"1s\"\n"),
        extra: format!(
            "[reload]\nmin_healthy_time = \"0s\"\n[metrics]\ntextfile = {:?}\n",
            textfile.display().to_string()
        ),
        ..Options::default()
    }
}

/// The `http` socket of a `handover status --json`.
fn http_socket(d: &Daemon) -> serde_json::Value {
    let status = d.status();
    let sockets = status["sockets"].as_array().cloned().unwrap_or_default();
    sockets.into_iter().find(|s| s["name"] == "http").unwrap_or_else(|| panic!("no http socket in {status}"))
}

/// Waits until status shows `n` connections queued on `http` (the kernel completes a
/// loopback handshake as `connect` returns, but nothing promises it); returns the socket.
fn wait_queue(d: &Daemon, n: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = http_socket(d);
        if s["accept_queue"] == n {
            return s;
        }
        assert!(Instant::now() < deadline, "the queue never reached {n}: {s}\nlog:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20)); // polling the kernel's queue: no event
    }
}

/// Waits until the metrics file holds `line`; returns the text.
fn wait_metrics(path: &Path, line: &str, d: &Daemon) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().any(|l| l == line) {
            return text;
        }
        assert!(Instant::now() < deadline, "never {line:?} in {}:\n{text}\nlog:\n{}", path.display(), d.log());
        // Polling a file another process writes: there is no event to wait on.
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn connections_nobody_accepts_show_in_status_the_reload_result_and_the_metrics() {
    let metrics = tempfile::tempdir().unwrap();
    let textfile = metrics.path().join("app.prom");
    let d = Daemon::start(options(&textfile, "spawn"));
    let mut clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(d.addr).unwrap()).collect();

    // Now: the queue as status reads it, no reload yet.
    let http = wait_queue(&d, 3);
    assert!(http["accept_queue_limit"].as_u64().is_some_and(|l| l >= 3), "{http}");
    assert!(http["reload_peak_accept_queue"].is_null(), "no reload yet: {http}");
    let table = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(table.contains("QUEUE") && table.contains("RELOAD PEAK"), "{table}");
    let row = table.lines().find(|l| l.starts_with("http ")).unwrap_or_default().to_owned();
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(columns.get(2..4), Some(&[format!("3/{}", http["accept_queue_limit"]).as_str(), "-"][..]), "{table}");
    wait_metrics(&textfile, "handover_listen_queue{name=\"app\",socket=\"http\"} 3", &d);

    // A slow reload, asked for without waiting; two more clients arrive while it runs, and
    // nothing but the reload's own reading sees them (no status request meanwhile).
    d.rewrite_config(&options(&textfile, "delay:2s"));
    let out = d.cli(&["reload", "--no-wait"]);
    assert!(out.status.success(), "reload: {}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    d.notify.wait_lifecycle("RELOADING=1", 1, Duration::from_secs(10));
    clients.extend((0..2).map(|_| TcpStream::connect(d.addr).unwrap()));
    d.notify.wait_lifecycle("READY=1", 2, Duration::from_secs(20));
    let status = d.status();
    assert_eq!(status["active_generation"], 2, "{status}");
    let last = status["last_reload"].as_str().unwrap_or_default();
    assert!(last.starts_with("reload succeeded") && last.ends_with("; peak accept queue 5"), "{last}");
    let http = wait_queue(&d, 5);
    assert_eq!(http["reload_peak_accept_queue"], 5, "{http}");
    let text = wait_metrics(&textfile, "handover_reload_peak_listen_queue{name=\"app\",socket=\"http\"} 5", &d);
    assert!(text.contains("handover_listen_queue{name=\"app\",socket=\"http\"} 5\n"), "{text}");
    assert!(text.contains("# TYPE handover_listen_queue_limit gauge\n"), "{text}");

    // A reload that is waited for carries the peak in the line `handover reload` prints.
    let out = d.cli(&["reload"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "reload: {stdout}{}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    assert!(stdout.contains("generation 3 serves") && stdout.contains("; peak accept queue 5"), "{stdout}");
    drop(clients);
}
