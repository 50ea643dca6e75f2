//! Draining, visible (issue 23): a draining worker's open client connections, against the
//! real binary. A worker holds two keep-alive connections while it drains after a reload:
//! `handover status` (JSON and table) and the metrics show 2 for it, and its kill at
//! graceful_timeout is logged with the count.
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{wait_for, Daemon, Options};

/// One keep-alive request on `s`; returns the response body (the connection stays open).
fn keep_alive_get(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET / HTTP/1.1\r\nHost: t\r\n\r\n").expect("write");
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).expect("read the head"), 1, "closed before the head ended: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(!head.contains("connection: close"), "kept alive: {head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).expect("read the body");
    String::from_utf8_lossy(&body).into_owned()
}

#[test]
fn a_draining_workers_open_connections_are_shown_and_named_when_it_is_killed() {
    let metrics_dir = tempfile::tempdir().expect("tempdir");
    let prom = metrics_dir.path().join("app.prom");
    let opts = Options {
        workers: 1,
        // It keeps serving when told to stop: its connections stay open until the kill.
        worker_args: vec!["--ignore-stop".into()],
        workers_extra: "boot_timeout = \"10s\"\ngraceful_timeout = \"6s\"\n".into(),
        extra: format!("[metrics]\ntextfile = {:?}\n", prom.display().to_string()),
        ..Options::default()
    };
    let d = Daemon::start(opts);
    let old = d.worker_pids(1, "ready");
    assert_eq!(old.len(), 1);
    let mut conns: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(d.addr).expect("connect")).collect();
    for c in &mut conns {
        let body = keep_alive_get(c);
        assert!(body.contains(&format!("pid={}", old[0])), "served by gen 1's worker: {body}");
    }

    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "reload: {}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    // Within graceful_timeout (6 s) of the commit, the old worker still holds both.
    let status = d.status();
    let workers = status["workers"].as_array().expect("workers");
    let draining = workers.iter().find(|w| w["pid"] == old[0]).expect("the old worker");
    assert_eq!(draining["state"], "draining", "{status:#}");
    assert_eq!(draining["open_connections"], 2, "{status:#}");
    for w in workers.iter().filter(|w| w["state"] != "draining") {
        assert!(w.get("open_connections").is_none(), "only draining workers carry it: {w}");
    }

    let table = d.cli(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    let header = table.lines().find(|l| l.starts_with("GEN   SLOT")).expect("the workers' header");
    let column = header.split_whitespace().position(|c| c == "CONNS").unwrap_or_else(|| panic!("CONNS:\n{table}"));
    let row = table
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(&old[0].to_string()))
        .unwrap_or_else(|| panic!("the old worker's row:\n{table}"));
    assert_eq!(row.split_whitespace().nth(column), Some("2"), "{table}");

    // The metrics were written at the commit, with the workers draining.
    let gauge = |n: usize| format!("handover_draining_connections{{name=\"app\"}} {n}\n");
    wait_for("the gauge at 2", Duration::from_secs(10), || {
        std::fs::read_to_string(&prom).ok().filter(|t| t.contains(&gauge(2)))
    });

    let line = format!("worker gen 1 slot 0 pid {} killed after graceful_timeout 6s with 2 open connections", old[0]);
    wait_for(&line, Duration::from_secs(20), || d.log().contains(&line).then_some(()));
    for c in &mut conns {
        let mut rest = Vec::new();
        // SIGKILLed: the kernel closes (or resets) the connections.
        let _ = c.read_to_end(&mut rest);
    }
    wait_for("the gauge back at 0 once the worker is gone", Duration::from_secs(10), || {
        std::fs::read_to_string(&prom).ok().filter(|t| t.contains(&gauge(0)))
    });
}
