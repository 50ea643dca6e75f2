//! Hostile same-uid clients and workers (issue 7): control clients that never read or never
//! send, a second daemon next to the first, notify floods, terminal escapes in `STATUS=`,
//! signals to reaped workers. Against the real binary; each prints `numbers:` lines.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// More clients than the control socket has slots.
const HOSTILE_CLIENTS: usize = 80;
/// How long an administrator's command may take under attack before the test fails (a
/// generous bound for a loaded CI machine; the figures printed are what it took).
const ADMIN_DEADLINE: Duration = Duration::from_secs(30);

/// Runs `handover ARGS -c CONFIG` within `ADMIN_DEADLINE`; returns (success, stderr, secs).
fn admin(config: &Path, args: &[&str]) -> (bool, String, f64) {
    let mut cmd = Command::new(bin());
    cmd.args(args).arg("-c").arg(config);
    let t = Instant::now();
    let out = run_with_deadline(cmd, ADMIN_DEADLINE);
    let stderr = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), stderr, t.elapsed().as_secs_f64())
}

fn assert_admin_gets_through(d: &Daemon, what: &str) -> (f64, f64) {
    let (ok, out, reload_secs) = admin(&d.config, &["reload"]);
    assert!(ok, "{what}: handover reload failed after {reload_secs:.2}s: {out}\nlog:\n{}", d.log());
    let (ok, out, status_secs) = admin(&d.config, &["status"]);
    assert!(ok, "{what}: handover status failed after {status_secs:.2}s: {out}");
    assert!(out.contains("running"), "{what}: status shows the daemon: {out}");
    (reload_secs, status_secs)
}

#[test]
fn pipelining_clients_that_never_read_cannot_lock_out_reload_and_status() {
    let _x = exclusive();
    let d = Daemon::start(Options::default());
    let request = b"{\"cmd\":\"status\"}\n".repeat(4096);
    let mut clients = Vec::new();
    let mut pipelined = 0usize;
    for _ in 0..HOSTILE_CLIENTS {
        let mut s = UnixStream::connect(&d.control).unwrap();
        s.set_nonblocking(true).unwrap();
        // As many requests as the socket takes without blocking; never a read.
        loop {
            match s.write(&request) {
                Ok(n) if n > 0 && pipelined < 64 << 20 => pipelined += n,
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break, // evicted already
            }
        }
        clients.push(s);
    }
    let (reload_secs, status_secs) = assert_admin_gets_through(&d, "pipelining clients");
    println!(
        "numbers: control pipelining-never-reading clients={HOSTILE_CLIENTS} pipelined_bytes={pipelined} \
         reload_secs={reload_secs:.3} status_secs={status_secs:.3}"
    );
    assert_eq!(http_get(d.addr, "/").0, 200);
    drop(clients);
}

#[test]
fn idle_clients_cannot_lock_out_reload_and_status_and_the_evicted_are_told_why() {
    let _x = exclusive();
    let d = Daemon::start(Options::default());
    let clients: Vec<UnixStream> = (0..HOSTILE_CLIENTS).map(|_| UnixStream::connect(&d.control).unwrap()).collect();
    let (reload_secs, status_secs) = assert_admin_gets_through(&d, "idle clients");
    println!(
        "numbers: control idle clients={HOSTILE_CLIENTS} reload_secs={reload_secs:.3} status_secs={status_secs:.3}"
    );
    // The oldest idle client was evicted to make room, with a one-line reason.
    let first = &clients[0];
    first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    BufReader::new(first).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(v["ok"], false, "{line}");
    assert!(v["error"].as_str().unwrap_or("").contains("evicted"), "{line}");
}

/// Starts a second daemon whose config is `cfg`, with its own emulated systemd notify
/// socket; returns it once it sent READY=1.
fn start_second_daemon(dir: &Path, cfg: &Path) -> KillOnDrop {
    let notify_path = dir.join("second-systemd-notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let log = std::fs::File::create(dir.join("second.log")).unwrap();
    let child = Command::new(bin())
        .args(["run", "-c"])
        .arg(cfg)
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("WATCHDOG_USEC")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    let mut buf = [0u8; 4096];
    loop {
        let n = notify.recv(&mut buf).unwrap_or_else(|e| {
            panic!("second daemon not ready: {e}; log:\n{}", std::fs::read_to_string(dir.join("second.log")).unwrap())
        });
        if buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1") {
            return child;
        }
    }
}

#[test]
fn two_daemons_whose_control_sockets_differ_only_in_extension_both_reload() {
    let _x = exclusive();
    let a = Daemon::start(Options::default());
    let dir = a.dir.path();
    // The second daemon: control socket control.ctl next to the first's control.sock.
    let addr_b = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cfg_b = dir.join("second.toml");
    let text = config_text(dir, &Options::default(), Some(addr_b)).replace("control.sock", "control.ctl");
    std::fs::write(&cfg_b, text).unwrap();
    let _b = start_second_daemon(dir, &cfg_b);
    let notify_a = handover::supervisor::worker_notify_path(&a.control);
    let notify_b = handover::supervisor::worker_notify_path(&dir.join("control.ctl"));
    let (ok, out, secs_a) = admin(&a.config, &["reload"]);
    assert!(ok, "the first daemon's reload after {secs_a:.2}s: {out}\nlog:\n{}", a.log());
    let (ok, out, secs_b) = admin(&cfg_b, &["reload"]);
    assert!(ok, "the second daemon's reload after {secs_b:.2}s: {out}");
    assert_ne!(notify_a, notify_b);
    println!("numbers: notify two-daemons first_reload_secs={secs_a:.3} second_reload_secs={secs_b:.3}");
    // Explicit mode, whatever the umask.
    for p in [&notify_a, &notify_b] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
}

#[test]
fn a_live_notify_socket_is_never_stolen_and_a_colliding_control_socket_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("app.sock");
    let squatter_path = handover::supervisor::worker_notify_path(&control);
    let squatter = UnixDatagram::bind(&squatter_path).unwrap();
    let cfg = dir.path().join("app.toml");
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = config_text(dir.path(), &Options::default(), Some(addr)).replace("control.sock", "app.sock");
    std::fs::write(&cfg, &text).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["run", "-c"]).arg(&cfg).env_remove("NOTIFY_SOCKET").env_remove("LISTEN_FDS");
    let out = run_with_deadline(cmd, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a live notify socket must stop the start: {stderr}");
    assert!(stderr.contains("in use"), "says why: {stderr}");
    // The squatter still owns its socket.
    let probe = UnixDatagram::unbound().unwrap();
    probe.send_to(b"still mine", &squatter_path).expect("the live socket was left alone");
    let mut buf = [0u8; 32];
    squatter.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = squatter.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still mine");

    // A control socket that is another daemon's notify socket name: refused by check.
    std::fs::write(&cfg, text.replace("app.sock", "other.sock.notify")).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["check", "-c"]).arg(&cfg);
    let out = run_with_deadline(cmd, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("control_socket") && stderr.contains(".notify"), "{stderr}");
}

#[test]
fn a_notify_flood_from_a_stranger_is_summarised_and_the_daemon_still_reloads() {
    let _x = exclusive();
    let d = Daemon::start(Options::default());
    let notify = handover::supervisor::worker_notify_path(&d.control);
    let s = UnixDatagram::unbound().unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    const FLOOD: usize = 100_000;
    let t = Instant::now();
    for i in 0..FLOOD {
        s.send_to(b"READY=1\nSTATUS=not a worker", &notify).unwrap_or_else(|e| panic!("datagram {i}: {e}"));
    }
    let flood_secs = t.elapsed().as_secs_f64();
    let (ok, out, reload_secs) = admin(&d.config, &["reload"]);
    assert!(ok, "reload after the flood: {out}");
    wait_until_summarised(&d, FLOOD);
    let log = d.log();
    let lines = log.lines().filter(|l| l.contains("notify datagram") || l.contains("not a worker")).count();
    println!("numbers: notify flood datagrams={FLOOD} send_secs={flood_secs:.2} log_lines={lines} reload_secs={reload_secs:.3}");
    assert_eq!(summarised(&log) + 1, FLOOD, "every datagram is counted once:\n{log}");
    // The first line, then one summary per 10 s interval the flood lasted, plus the last.
    let bound = 2 + (flood_secs / 10.0) as usize;
    assert!(lines <= bound, "{lines} log lines for the flood (at most {bound}):\n{log}");
}

/// How many dropped notify datagrams the daemon's summaries in `log` account for (the first
/// one is logged on its own, the rest counted in "dropped N more notify datagram(s)").
fn summarised(log: &str) -> usize {
    log.lines()
        .filter_map(|l| l.split("dropped ").nth(1))
        .filter_map(|r| r.split(" more notify datagram").next())
        .filter_map(|n| n.parse::<usize>().ok())
        .sum()
}

/// Waits (bounded) until the summaries account for all `flood` datagrams: one line at
/// once, then one summary per interval.
fn wait_until_summarised(d: &Daemon, flood: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while summarised(&d.log()) + 1 < flood {
        assert!(Instant::now() < deadline, "the flood is not summarised:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The same flood while a reload spawns 64 workers: the master reads the notify socket
/// while a batch is spawned (so that workers never block on its short queue) and keeps at
/// most the batch's size plus 256 of what it read for after the batch; a stranger's flood
/// then can neither grow that without bound nor hide a worker's READY=1. The reload
/// succeeds, and every datagram is counted exactly once, whichever path read it.
#[test]
fn a_notify_flood_during_a_batch_of_spawns_is_bounded_and_counted_once() {
    let _x = exclusive();
    let d = Daemon::start(Options { workers: 64, ..Options::default() });
    let notify = handover::supervisor::worker_notify_path(&d.control);
    const FLOOD: usize = 50_000;
    let flooder = std::thread::spawn(move || {
        let s = UnixDatagram::unbound().unwrap();
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        for i in 0..FLOOD {
            s.send_to(b"READY=1\nSTATUS=not a worker", &notify).unwrap_or_else(|e| panic!("datagram {i}: {e}"));
        }
    });
    let (ok, out, reload_secs) = admin(&d.config, &["reload"]);
    flooder.join().expect("the flooder");
    assert!(ok, "reload during the flood: {out}\n{}", d.log());
    assert_eq!(d.worker_pids(2, "ready").len(), 64, "generation 2 serves with all its workers");
    let rss = rss_kib(d.pid());
    assert!(rss < 32 * 1024, "the master holds {rss} KiB after the flood");
    wait_until_summarised(&d, FLOOD);
    assert_eq!(summarised(&d.log()) + 1, FLOOD, "every datagram is counted once:\n{}", d.log());
    println!(
        "numbers: notify flood during a 64-worker reload: datagrams={FLOOD} reload_secs={reload_secs:.3} rss_kib={rss}"
    );
}

/// Sends `payload` to `notify` from a new process in the process group `pgid` (a worker's:
/// it counts as that worker), as a worker's child would.
fn send_from_group(pgid: i32, notify: &Path, payload: &[u8]) {
    // Everything the child needs is prepared before fork.
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = notify.as_os_str().as_encoded_bytes();
    assert!(path.len() < addr.sun_path.len());
    for (dst, src) in addr.sun_path.iter_mut().zip(path) {
        *dst = *src as libc::c_char;
    }
    let payload = payload.to_vec();
    let mut cmd = Command::new("/bin/true");
    // SAFETY: the closure only makes async-signal-safe calls (setpgid, socket, sendto, close)
    // on memory prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, pgid) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM, 0);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let r = libc::sendto(
                fd,
                payload.as_ptr().cast(),
                payload.len(),
                0,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            libc::close(fd);
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().expect("sender ran");
    assert!(status.success());
}

#[test]
fn control_characters_in_a_workers_status_text_never_reach_the_terminal() {
    let d = Daemon::start(Options::default());
    let pid = d.worker_pids(1, "ready")[0];
    let notify = handover::supervisor::worker_notify_path(&d.control);
    send_from_group(pid, &notify, b"STATUS=\x1b[2J\x1b[31mevil\rforged\x07\x7f\xc2\x9bdone\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let v = d.status();
        let w = v["workers"].as_array().unwrap().iter().find(|w| w["pid"] == pid).cloned().unwrap();
        // The demo worker's own line ("serving gen=1", sent with its READY=1) may still be
        // the newest when the first status is asked for: the datagram sent above and the
        // status request are two events, and the daemon may take either first.
        if let Some(t) = w["status"].as_str().filter(|t| !t.starts_with("serving gen=")) {
            break t.to_string();
        }
        assert!(Instant::now() < deadline, "STATUS= never arrived: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(text, "[2J[31mevilforgeddone");
    let out = d.cli(&["status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("evilforgeddone"), "{table}");
    assert!(!table.chars().any(|c| c.is_control() && c != '\n'), "{table:?}");
    let systemd_status: Vec<String> =
        d.notify.all().iter().filter_map(|n| n.get("STATUS").map(str::to_string)).collect();
    assert!(systemd_status.iter().all(|s| !s.chars().any(char::is_control)), "{systemd_status:?}");
}

/// How many fds `pid` has open.
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn the_masters_fd_count_is_stable_across_many_worker_replacements() {
    let _x = exclusive();
    let d = Daemon::start(Options::default());
    assert!(d.cli(&["reload"]).status.success());
    let before = fd_count(d.pid());
    const RELOADS: usize = 10;
    for i in 0..RELOADS {
        let out = d.cli(&["reload"]);
        assert!(out.status.success(), "reload {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // The replaced workers are reaped once they have drained: wait for that.
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.status()["workers"].as_array().unwrap().len() != 3 {
        assert!(Instant::now() < deadline, "old workers not reaped: {}", d.status());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The server side of the last `status` connection closes a moment after the client's:
    // wait (bounded) for the count to settle back. (`before` may include such a transient
    // one too, hence `<=`; a leak of one pidfd per replaced worker would be 30 more.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = fd_count(d.pid());
    while after > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        after = fd_count(d.pid());
    }
    println!("numbers: fds master before={before} after={after} worker_replacements={}", RELOADS * 3);
    assert!(after <= before, "the master's fds grew over {RELOADS} reloads: {:#?}", fd_targets(d.pid()));
}

/// What the open fds of `pid` point to.
fn fd_targets(pid: i32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Vec::new() };
    dir.flatten().map(|e| format!("{:?} -> {:?}", e.file_name(), std::fs::read_link(e.path()))).collect()
}

/// `strace`, if installed (CI installs it; see .ci/run).
fn strace() -> Option<PathBuf> {
    ["/usr/bin/strace", "/bin/strace"].iter().map(PathBuf::from).find(|p| p.exists())
}

#[test]
fn a_reaped_worker_is_never_signalled() {
    if !require_tool("strace", "apt-get install strace; it watches the master's signals") {
        return;
    }
    let Some(strace) = strace() else { panic!("strace is on PATH but not in /usr/bin or /bin") };
    let _x = exclusive();
    let d = Daemon::start(Options::default());
    let trace = d.dir.path().join("strace.log");
    // Detached (SIGINT) and waited for however the test ends.
    let mut tracer = KillOnDrop(
        Command::new(strace)
            .args(["-e", "trace=kill,pidfd_send_signal,wait4,waitid", "-o"])
            .arg(&trace)
            .args(["-p", &d.pid().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // strace says "Process N attached" on stderr once it traces the master.
    let stderr = tracer.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.contains("attached") => break,
            Ok(line) if line.contains("Operation not permitted") => {
                // A container without ptrace: nothing to observe with; say so loudly.
                println!("numbers: signals SKIPPED: strace cannot attach here: {line}");
                return;
            }
            Ok(_) => continue,
            Err(e) => panic!("strace did not attach: {e}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let victims = d.worker_pids(1, "ready");
    for &pid in &victims {
        // SAFETY: a worker this test's daemon started; the master reaps it.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(d.cli(&["reload"]).status.success());
    while d.status()["workers"].as_array().unwrap().len() != 3 {
        assert!(Instant::now() < deadline, "workers not replaced: {}", d.status());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(tracer); // detaches: the trace file is complete

    let log = std::fs::read_to_string(&trace).unwrap();
    let mut reaped = std::collections::BTreeSet::new();
    let mut offences = Vec::new();
    for line in log.lines() {
        if line.starts_with("wait4(") {
            if let Some(pid) =
                line.rsplit("= ").next().and_then(|r| r.split_whitespace().next()).and_then(|p| p.parse::<i32>().ok())
            {
                if pid > 0 {
                    reaped.insert(pid);
                }
            }
        } else if let Some(args) = line.strip_prefix("kill(") {
            let target = args.split(',').next().and_then(|p| p.trim().parse::<i32>().ok()).unwrap_or(0);
            if reaped.contains(&target.abs()) {
                offences.push(line.to_string());
            }
        }
    }
    println!("numbers: signals reaped={} kill_after_reap={}", reaped.len(), offences.len());
    assert!(reaped.len() >= victims.len(), "the trace saw the reaping:\n{log}");
    assert!(offences.is_empty(), "signals to reaped pids: {offences:#?}\n{log}");
}

/// Runs `handover ARGS` (ARGS name the daemon) with a deadline well past any client
/// timeout; returns (exit code, stderr, seconds taken).
fn client(args: &[&str]) -> (i32, String, f64) {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    let t = Instant::now();
    let out = run_with_deadline(cmd, Duration::from_secs(30));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned(), t.elapsed().as_secs_f64())
}

fn assert_no_panic(what: &str, stderr: &str) {
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{what}: {stderr}");
}

/// `handover reload --timeout 10000000000000000000s` panicked (exit 134) after it had sent
/// the reload (issue 19, item 5): an impossible timeout is a usage error, found before
/// anything is sent.
#[test]
fn an_absurd_timeout_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    let s = sock.to_str().unwrap();
    for cmd in ["reload", "upgrade", "status"] {
        let (code, err, _) = client(&[cmd, "--timeout", "10000000000000000000s", "--control", s]);
        println!("numbers: {cmd} --timeout 10000000000000000000s: exit {code}");
        assert_eq!(code, 2, "{cmd}: {err}");
        assert!(err.contains("--timeout") && err.contains("nothing was sent"), "{cmd}: {err}");
        assert_no_panic(cmd, &err);
        // Nobody connected: the refusal came before the connection.
        let accepted = listener.accept();
        assert!(
            matches!(&accepted, Err(e) if e.kind() == ErrorKind::WouldBlock),
            "{cmd}: the client connected: {accepted:?}"
        );
    }
}

/// `handover status | head -1` panicked on EPIPE (issue 19, item 5): a reader that went
/// away ends the client quietly, exit 0.
#[test]
fn a_closed_stdout_ends_the_client_quietly() {
    let d = Daemon::start(Options { workers: 1, ..Options::default() });
    for args in [&["status"][..], &["status", "--json"][..]] {
        // A pipe whose read end is closed before the client writes: EPIPE every time.
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two fresh descriptors, owned below.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors are ours and open.
        let (read_end, write_end) = unsafe {
            use std::os::fd::FromRawFd;
            (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1]))
        };
        drop(read_end);
        let mut cmd = Command::new(bin());
        cmd.args(args).arg("-c").arg(&d.config).stdout(Stdio::from(write_end));
        let out = run_with_deadline(cmd, Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        println!("numbers: handover {} into a closed pipe: exit {:?}", args.join(" "), out.status.code());
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert_no_panic(&args.join(" "), &err);
        assert!(err.is_empty(), "{args:?}: quiet: {err}");
    }
}

/// A control socket whose listen backlog is full (a stopped daemon that many clients tried):
/// connect(2) blocks for ever in a blocking client.
struct FullBacklog {
    _dir: tempfile::TempDir,
    path: PathBuf,
    _listener: std::os::fd::OwnedFd,
    _queued: Vec<UnixStream>,
}

impl FullBacklog {
    fn new() -> FullBacklog {
        use std::os::fd::FromRawFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let fd = std::os::fd::OwnedFd::from(listener);
        // SAFETY: listen(2) on our own socket: a backlog of 0 (one queued connection).
        assert_eq!(unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&fd), 0) }, 0);
        let mut queued = Vec::new();
        loop {
            // SAFETY: a fresh non-blocking socket, owned at once.
            let s = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) };
            assert!(s >= 0);
            // SAFETY: `s` is ours.
            let stream = unsafe { UnixStream::from_raw_fd(s) };
            let addr = nix::sys::socket::UnixAddr::new(&path).unwrap();
            match nix::sys::socket::connect(s, &addr) {
                Ok(()) => queued.push(stream),
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(e) => panic!("connect: {e}"),
            }
            assert!(queued.len() < 64, "the backlog never filled");
        }
        FullBacklog { _dir: dir, path, _listener: fd, _queued: queued }
    }
}

/// A control socket that accepts and never answers; records what each client sent.
fn silent_daemon(path: &Path) -> std::sync::mpsc::Receiver<String> {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                // Reads whatever comes, answers nothing, until the client hangs up.
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
    });
    rx
}

/// `handover status` waited for ever on a wedged daemon (issue 19, item 5). Every client
/// command gives up within its default timeout (5 s for the daemon's first word), exit 3,
/// naming the socket; reload and upgrade send nothing to a daemon that does not answer.
#[test]
fn client_commands_give_up_on_a_wedged_daemon_with_exit_3() {
    // 1. The backlog is full: connect(2) itself would block.
    let full = FullBacklog::new();
    let s = full.path.to_str().unwrap();
    for args in [&["status", "--control", s][..], &["reload", "--control", s][..], &["scale", "2", "--control", s][..]]
    {
        let (code, err, secs) = client(args);
        println!("numbers: full backlog: handover {}: exit {code} after {secs:.1}s", args[0]);
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(err.contains(s) && err.contains("did not answer within 5s"), "{args:?}: {err}");
        assert!(secs < 15.0, "{args:?}: took {secs:.1}s");
    }
    // 2. It accepts and never answers.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let heard = silent_daemon(&sock);
    let s = sock.to_str().unwrap();
    for args in [&["status", "--control", s][..], &["reload", "--control", s][..], &["upgrade", "--control", s][..]] {
        let (code, err, secs) = client(args);
        println!("numbers: silent daemon: handover {}: exit {code} after {secs:.1}s", args[0]);
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(err.contains(s) && err.contains("did not answer"), "{args:?}: {err}");
        assert!(secs < 15.0, "{args:?}: took {secs:.1}s");
    }
    let said: Vec<String> = heard.try_iter().collect();
    assert!(said.iter().all(|l| l.contains("\"status\"")), "only status probes reached it: {said:?}");
    // A shorter --timeout is honoured.
    let (code, err, secs) = client(&["status", "--timeout", "1s", "--control", s]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("within 1s") && secs < 5.0, "{secs:.1}s: {err}");
}

/// The same against the real daemon, stopped with SIGSTOP (and continued however the test
/// ends).
#[test]
fn status_of_a_stopped_daemon_exits_3_and_the_daemon_goes_on_after_sigcont() {
    struct Continue(i32);
    impl Drop for Continue {
        fn drop(&mut self) {
            // SAFETY: SIGCONT to the daemon this test started.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    let d = Daemon::start(Options { workers: 1, ..Options::default() });
    d.signal(libc::SIGSTOP);
    let cont = Continue(d.pid());
    let config = d.config.to_str().unwrap();
    let (code, err, secs) = client(&["status", "--timeout", "2s", "-c", config]);
    println!("numbers: SIGSTOPped daemon: handover status: exit {code} after {secs:.1}s");
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(d.control.to_str().unwrap()) && err.contains("SIGSTOP"), "{err}");
    drop(cont);
    let (code, err, _) = client(&["status", "-c", config]);
    assert_eq!(code, 0, "after SIGCONT: {err}");
}

/// handover(1) says clients read the file leniently, yet `-c` with any TOML error exited 2
/// (issue 19, item 5): a half-edited file still leads the client to its daemon, with a
/// warning naming the error.
#[test]
fn clients_read_a_broken_config_leniently() {
    let d = Daemon::start(Options { workers: 1, ..Options::default() });
    let text = std::fs::read_to_string(&d.config).unwrap();
    let broken = d.dir.path().join("broken.toml");
    // A syntax error further down (an unclosed array), as in the middle of an edit.
    std::fs::write(&broken, format!("{text}\n[reload]\nstrategy = [\"rolling\"\n")).unwrap();
    let b = broken.to_str().unwrap();
    let (code, err, _) = client(&["status", "-c", b]);
    println!("numbers: status -c with a syntax error: exit {code}");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning") && err.contains("(syntax)") && err.contains(b), "{err}");
    // A `name` of the wrong type is passed over as well.
    let typed = d.dir.path().join("typed.toml");
    std::fs::write(&typed, text.replace("name = \"app\"", "name = 7")).unwrap();
    let (code, err, _) = client(&["status", "-c", typed.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("name: invalid type"), "{err}");
    // `check` and the daemon stay strict.
    let (code, err, _) = client(&["check", "-c", b]);
    assert_eq!(code, 2, "{err}");
}

/// A control socket that closes its first `drops` connections without reading them (as an
/// image replaced by `handover upgrade` does with a connection it had not read yet), then
/// answers `reply` to the next request; returns how many connections it saw (within 5 s).
fn closing_then_answering(path: &Path, drops: usize, reply: &'static str) -> std::thread::JoinHandle<usize> {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let (mut seen, deadline) = (0, Instant::now() + Duration::from_secs(5));
        while Instant::now() < deadline {
            let Ok((conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            seen += 1;
            if seen <= drops {
                drop(conn);
                continue;
            }
            conn.set_nonblocking(false).unwrap();
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            if reader.read_line(&mut line).is_ok() && !line.is_empty() {
                let _ = reader.get_mut().write_all(format!("{reply}\n").as_bytes());
                return seen;
            }
        }
        seen
    })
}

#[test]
fn a_status_or_scale_whose_connection_closed_unanswered_is_sent_once_more_a_reload_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("scale.sock");
    let server = closing_then_answering(&sock, 1, r#"{"ok":true,"message":"scaled to 2"}"#);
    let mut cmd = Command::new(bin());
    cmd.args(["scale", "2", "--timeout", "3s", "--control"]).arg(&sock);
    let out = run_with_deadline(cmd, Duration::from_secs(20));
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "scale after a connection closed unanswered: {said}");
    assert_eq!(server.join().unwrap(), 2, "one connection closed, one answered");
    // A reload is not repeated: the daemon may have taken it in.
    let sock = dir.path().join("reload.sock");
    let server = closing_then_answering(&sock, 1, r#"{"ok":true}"#);
    let mut cmd = Command::new(bin());
    cmd.args(["reload", "--timeout", "3s", "--control"]).arg(&sock);
    let out = run_with_deadline(cmd, Duration::from_secs(20));
    assert!(!out.status.success(), "a reload whose connection closed unanswered succeeded");
    assert_eq!(server.join().unwrap(), 1, "the reload was sent again");
}
