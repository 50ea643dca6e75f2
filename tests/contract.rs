//! The worker contract (SPEC §4) and the systemd protocol (SPEC §3, §6), checked from the
//! outside: what a worker inherited, what the emulated systemd received, and in which order.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_worker_gets_its_own_pid_its_sockets_and_nothing_else() {
    let mut opts = Options::default();
    opts.workers_extra.push_str("env = { APP_ENV = \"test\" }\n");
    let d = Daemon::start(opts);
    let (code, body) = http_get(d.addr, "/info");
    assert_eq!(code, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).expect("json");
    let pid = info["pid"].as_u64().unwrap();
    assert_eq!(info["listen_pid"], pid.to_string(), "LISTEN_PID is the worker's own pid");
    assert_eq!(info["listen_fds"], "1");
    assert_eq!(info["listen_fdnames"], "http");
    assert_eq!(info["inherited_fds"], serde_json::json!([0, 1, 2, 3]), "no fd beyond the sockets");
    assert_eq!(info["pgid"], pid, "its own process group");
    assert_eq!(info["ppid"], d.pid(), "handover is the parent");
    assert_eq!(info["sig_blocked"], "0000000000000000", "empty signal mask");
    // The daemon was started with SIGUSR1 ignored (see the harness); workers must get default
    // dispositions. Only SIGPIPE may be ignored: the Rust runtime of the demo worker ignores it
    // itself before main.
    let ignored = u64::from_str_radix(info["sig_ignored"].as_str().unwrap(), 16).unwrap();
    assert_eq!(ignored & !(1 << (libc::SIGPIPE - 1)), 0, "ignored signals leaked: {ignored:x}");
    let notify = info["notify_socket"].as_str().unwrap();
    assert_eq!(
        notify,
        handover::supervisor::worker_notify_path(&d.control).display().to_string(),
        "handover's own NOTIFY_SOCKET"
    );
    let env = &info["env"];
    assert_eq!(env["HANDOVER_GENERATION"], "1");
    assert!(["0", "1", "2"].contains(&env["HANDOVER_WORKER_SLOT"].as_str().unwrap()));
    assert_eq!(env["APP_ENV"], "test", "workers.env is added");
    for var in ["WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PIDFDID"] {
        assert!(env.get(var).is_none(), "{var} must not leak to workers");
    }
}

#[test]
fn ready_is_sent_only_after_the_workers_are_ready_then_status_and_stopping() {
    let opts = Options { worker_args: vec!["--boot-delay".into(), "700ms".into()], ..Options::default() };
    let started = Instant::now();
    let mut d = Daemon::start(opts);
    let ready = d.notify.all().into_iter().find(|n| n.get("READY") == Some("1")).unwrap();
    assert!(
        ready.at - started >= Duration::from_millis(700),
        "READY=1 before the workers booted: {:?}",
        ready.at - started
    );
    assert_eq!(ready.get("STATUS"), Some("gen 1: 3/3 ready"), "the status line travels with READY=1");
    let (code, _) = http_get(d.addr, "/");
    assert_eq!(code, 200, "serving once READY=1 was sent");
    let statuses: Vec<String> = d.notify.all().iter().filter_map(|n| n.get("STATUS").map(str::to_string)).collect();
    assert!(statuses.iter().any(|s| s == "gen 1: 3/3 ready"), "{statuses:?}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
    assert_eq!(d.notify.lifecycle(), vec!["READY=1", "STOPPING=1"]);
}

#[test]
fn a_self_bound_socket_goes_to_the_fd_store_with_its_name() {
    let opts = Options { socket_activation: false, ..Options::default() };
    let d = Daemon::start(opts);
    let stored: Vec<_> = d.notify.all().into_iter().filter(|n| n.get("FDSTORE") == Some("1")).collect();
    assert_eq!(stored.len(), 1, "one FDSTORE message per name: {stored:?}");
    assert_eq!(stored[0].get("FDNAME"), Some("http"));
    assert_eq!(stored[0].fds, 1, "the socket travelled with SCM_RIGHTS");
    assert_eq!(http_get(d.addr, "/").0, 200);
    let status = d.status();
    assert_eq!(status["sockets"][0]["origin"], "bound");
    assert_eq!(status["sockets"][0]["address"], d.addr.to_string());
}

#[test]
fn a_crashed_worker_is_respawned_in_its_slot() {
    let d = Daemon::start(Options { workers: 1, ..Options::default() });
    let old = d.worker_pids(1, "ready");
    let _ = http_get(d.addr, "/exit?code=3");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = d.worker_pids(1, "ready");
        if now.len() == 1 && now != old {
            break;
        }
        assert!(Instant::now() < deadline, "no respawn: {:?}\n{}", d.status(), d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = d.status();
    assert_eq!(status["workers"][0]["restarts"], 1);
    assert!(d.log().contains("exited (exit code 3)"), "{}", d.log());
}

#[test]
fn scale_and_sigttin_sigttou_change_the_worker_count() {
    let d = Daemon::start(Options { workers: 2, ..Options::default() });
    let out = d.cli(&["scale", "4"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_ready_count(&d, 4);
    d.signal(libc::SIGTTOU);
    wait_ready_count(&d, 3);
    d.signal(libc::SIGTTIN);
    wait_ready_count(&d, 4);
    let out = d.cli(&["scale", "0"]);
    assert_eq!(out.status.code(), Some(1), "scale 0 refused");
}

fn wait_ready_count(d: &Daemon, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.worker_pids(1, "ready").len() != n {
        assert!(Instant::now() < deadline, "never {n} ready workers: {}", d.status());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_shows_generations_workers_and_sockets() {
    let d = Daemon::start(Options::default());
    let out = d.cli(&["status"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("running: gen 1: 3/3 ready"), "{text}");
    assert!(text.contains("http") && text.contains("systemd"), "{text}");
    let v = d.status();
    assert_eq!(v["phase"], "running");
    assert_eq!(v["generations"][0]["ready"], 3);
    assert_eq!(v["workers"].as_array().unwrap().len(), 3);
}

#[test]
fn the_daemon_runs_without_systemd_too() {
    // No NOTIFY_SOCKET, no LISTEN_FDS: handover binds [[listen]] itself and serves.
    let dir = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let opts = Options::default();
    let cfg = dir.path().join("app.toml");
    std::fs::write(&cfg, config_text(dir.path(), &opts, Some(addr))).unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new(bin())
            .args(["run", "-c"])
            .arg(&cfg)
            .env_remove("NOTIFY_SOCKET")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(s, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            if r.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "never served");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn the_daemon_pings_systemds_watchdog_at_half_the_interval_and_writes_its_pidfile() {
    let opts = Options {
        systemd_watchdog: Some(Duration::from_secs(1)),
        extra: "pidfile = \"app.pid\"\n".into(),
        ..Options::default()
    };
    let mut d = Daemon::start(opts);
    let pidfile = d.dir.path().join("app.pid");
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap().trim(), d.pid().to_string());
    d.notify.wait_until("4 WATCHDOG=1 pings", Duration::from_secs(10), |all| {
        all.iter().filter(|n| n.get("WATCHDOG") == Some("1")).count() >= 4
    });
    let pings: Vec<Instant> = d.notify.all().iter().filter(|n| n.get("WATCHDOG") == Some("1")).map(|n| n.at).collect();
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    // Pinged every WATCHDOG_USEC/2 = 500 ms; systemd aborts a service whose pings are a full
    // interval apart, so that is the bound (the other half is slack for a loaded machine).
    assert!(gaps.iter().all(|g| *g < Duration::from_secs(1)), "pings too far apart: {gaps:?}");
    assert!(gaps.iter().any(|g| *g >= Duration::from_millis(300)), "not a busy loop: {gaps:?}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0);
    assert!(!pidfile.exists(), "pidfile removed at exit");
}

#[test]
fn a_worker_that_stops_pinging_its_watchdog_is_aborted_and_replaced() {
    let opts = Options {
        workers: 1,
        worker_args: vec!["--watchdog-pings".into(), "3".into()],
        workers_extra: "watchdog = \"500ms\"\nboot_timeout = \"10s\"\ngraceful_timeout = \"10s\"\n".into(),
        ..Options::default()
    };
    let d = Daemon::start(opts);
    let hung = d.worker_pids(1, "ready");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = d.worker_pids(1, "ready");
        if now.len() == 1 && now != hung {
            break;
        }
        assert!(Instant::now() < deadline, "hung worker not replaced: {}\n{}", d.status(), d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = d.log();
    assert!(log.contains("missed its watchdog") && log.contains("SIGABRT"), "{log}");
    assert!(log.contains(&format!("pid {} exited (killed by SIGABRT", hung[0])), "{log}");
}

/// Workers are cloned sharing the master's descriptor table until they take a private copy
/// of the few descriptors they use (issue 13: no copy of every pidfd per spawn). Nothing a
/// child does to its descriptors may reach the master's: its stdin (here the config file,
/// which the child's dup2 of /dev/null onto 0 would replace) and its socket at fd 3 (whose
/// close-on-exec flag the child clears on its own copy) are as they were, after a start of
/// 24 workers and a reload.
#[test]
fn spawning_leaves_the_masters_own_descriptors_alone() {
    let opts = Options { workers: 24, launch_prefix: "exec 0<\"$1\"; ".into(), ..Options::default() };
    let d = Daemon::start(opts);
    let check = |when: &str| {
        let stdin = std::fs::read_link(format!("/proc/{}/fd/0", d.pid())).expect("the master's fd 0");
        assert_eq!(stdin, d.config, "{when}: the master's stdin was replaced");
        let fdinfo = std::fs::read_to_string(format!("/proc/{}/fdinfo/3", d.pid())).expect("the master's fd 3");
        let flags = fdinfo.lines().find_map(|l| l.strip_prefix("flags:")).expect("flags").trim();
        let flags = u32::from_str_radix(flags, 8).expect("octal flags");
        assert_ne!(flags & libc::O_CLOEXEC as u32, 0, "{when}: the master's socket lost close-on-exec: {fdinfo}");
        let socket = std::fs::read_link(format!("/proc/{}/fd/3", d.pid())).expect("link");
        assert!(socket.to_string_lossy().starts_with("socket:"), "{when}: fd 3 is {socket:?}");
    };
    check("after the start");
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "reload: {}", String::from_utf8_lossy(&out.stderr));
    check("after a reload");
    let (code, body) = http_get(d.addr, "/info");
    assert_eq!(code, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(info["inherited_fds"], serde_json::json!([0, 1, 2, 3]), "no fd beyond the sockets");
}

/// systemd hears a start of many workers as a few datagrams, not several per worker:
/// `STATUS=` lines are paced (20 at once, then the newest one per 100 ms), and an
/// `EXTEND_TIMEOUT_USEC=` that would move the deadline by less than a second is not sent. Before, 64 workers meant 64 of each, every one a
/// wake-up (and a D-Bus signal) of PID 1.
#[test]
fn a_start_of_many_workers_is_a_few_datagrams_to_systemd() {
    let _x = exclusive();
    let n = 64;
    let d = Daemon::start(Options { workers: n, ..Options::default() });
    let all = d.notify.all();
    let upto_ready: Vec<_> = all.iter().take_while(|x| x.get("READY").is_none()).collect();
    let extends = upto_ready.iter().filter(|x| x.get("EXTEND_TIMEOUT_USEC").is_some()).count();
    let statuses = upto_ready.iter().filter(|x| x.get("STATUS").is_some()).count();
    let started = all.first().map(|x| x.at);
    let ready = all.iter().find(|x| x.get("READY").is_some()).expect("READY=1");
    let took = started.map_or(Duration::ZERO, |s| ready.at - s);
    // One extension per second of the start at most, plus the first.
    let bound = 2 + took.as_secs() as usize;
    assert!(extends <= bound, "{extends} EXTEND_TIMEOUT_USEC= in a {took:?} start of {n} workers: {upto_ready:?}");
    // Paced: 20 at once, then one per 100 ms (see handover(1)).
    let paced = 20 + took.as_millis() as usize / 100 + 2;
    assert!(statuses <= paced, "{statuses} STATUS= before READY=1 in a {took:?} start of {n} workers");
    assert_eq!(ready.get("STATUS"), Some(format!("gen 1: {n}/{n} ready").as_str()), "READY=1 has the final line");
}

/// `EXTEND_TIMEOUT_USEC=` carries the whole extension even past 71 minutes (what a u32 of
/// microseconds holds): a `boot_timeout` of 2 hours asks systemd for 2 h + 5 s.
#[test]
fn a_long_boot_timeout_is_extended_in_full() {
    let opts = Options { workers_extra: "boot_timeout = \"2h\"\n".into(), ..Options::default() };
    let d = Daemon::start(opts);
    let extensions: Vec<u64> = d
        .notify
        .all()
        .iter()
        .filter_map(|n| n.get("EXTEND_TIMEOUT_USEC").map(|v| v.parse().expect("a number of µs")))
        .collect();
    assert!(!extensions.is_empty(), "no EXTEND_TIMEOUT_USEC= during the start");
    assert!(extensions.iter().all(|&us| us == 7_205_000_000), "2 h + 5 s in µs: {extensions:?}");
}
