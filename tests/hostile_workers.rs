//! The master against what its own workers, and whoever shares their uid, can do to it
//! (issue 19): notify datagrams carrying many descriptors, a `sd_notify_barrier(3)` from a
//! process in a worker's group, a stall of the master itself (SIGSTOP/SIGCONT) while
//! deadlines run, and a stderr nobody reads. Against the real binary; each prints
//! `numbers:` lines with what it measured.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;

/// The workers' NOTIFY_SOCKET of `d` (the control socket's path + ".notify").
fn notify_path(d: &Daemon) -> PathBuf {
    d.control.with_extension("sock.notify")
}

/// How many descriptors `pid` has open.
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Waits until `pid` has `want` descriptors open again (the master reads the datagrams
/// queued after the last send on its own time); the last count seen on timeout.
fn wait_fd_count(pid: i32, want: usize, timeout: Duration) -> Result<(), usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = fd_count(pid);
        if n == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(n);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` descriptors to attach (each a new open file description of /dev/null).
fn open_fds(n: usize) -> Vec<OwnedFd> {
    (0..n).map(|_| OwnedFd::from(std::fs::File::open("/dev/null").unwrap())).collect()
}

/// Sends `payload` with `fds` attached (SCM_RIGHTS) to `path`, blocking while the
/// master's queue is full. SCM_RIGHTS carries at most 253 descriptors per message.
fn send_with_fds(sock: &UnixDatagram, path: &Path, payload: &[u8], fds: &[OwnedFd]) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let addr = UnixAddr::new(path).map_err(std::io::Error::from)?;
    let iov = [std::io::IoSlice::new(payload)];
    let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() { vec![] } else { vec![ControlMessage::ScmRights(&raw)] };
    sendmsg(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), Some(&addr)).map(drop).map_err(std::io::Error::from)
}

/// A datagram a hostile sender might send: `fds` descriptors, `size` bytes of `fill` (with
/// `READY=1` in front when `ready`).
#[derive(Debug, Clone)]
struct Hostile {
    fds: usize,
    size: usize,
    fill: u8,
    ready: bool,
}

impl Hostile {
    fn payload(&self) -> Vec<u8> {
        let mut p = if self.ready { b"READY=1\n".to_vec() } else { Vec::new() };
        p.resize(self.size.max(p.len()), self.fill);
        p
    }
}

/// Sends every datagram of `list` to `path` from a child process that first joins the
/// process group `pgid` (a worker's: the master hears it as that worker), as a helper of a
/// worker's would. The datagrams and descriptors are prepared before the fork; the child
/// only calls setpgid, sendmsg and _exit (async-signal-safe).
fn send_from_group(path: &Path, pgid: i32, list: &[Hostile]) {
    struct Prepared {
        payload: Vec<u8>,
        control: Vec<u64>,
        control_len: usize,
        _fds: Vec<OwnedFd>,
    }
    let prepared: Vec<Prepared> = list
        .iter()
        .map(|h| {
            let fds = open_fds(h.fds);
            let data_len = std::mem::size_of_val(&fds[..]) as u32;
            // SAFETY: CMSG_SPACE only computes a size.
            let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
            let mut control = vec![0u64; space.div_ceil(8).max(1)];
            let control_len = if fds.is_empty() { 0 } else { space };
            if !fds.is_empty() {
                // SAFETY: a zeroed msghdr pointing at `control` (space bytes) for the macros.
                unsafe {
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_control = control.as_mut_ptr().cast();
                    msg.msg_controllen = space;
                    let c = libc::CMSG_FIRSTHDR(&msg);
                    (*c).cmsg_level = libc::SOL_SOCKET;
                    (*c).cmsg_type = libc::SCM_RIGHTS;
                    (*c).cmsg_len = libc::CMSG_LEN(data_len) as usize;
                    let data = libc::CMSG_DATA(c).cast::<i32>();
                    for (i, f) in fds.iter().enumerate() {
                        data.add(i).write_unaligned(f.as_raw_fd());
                    }
                }
            }
            Prepared { payload: h.payload(), control, control_len, _fds: fds }
        })
        .collect();
    let addr = nix::sys::socket::UnixAddr::new(path).unwrap();
    let sock = UnixDatagram::unbound().unwrap();
    let mut iovs: Vec<libc::iovec> = prepared
        .iter()
        .map(|p| libc::iovec { iov_base: p.payload.as_ptr() as *mut _, iov_len: p.payload.len() })
        .collect();
    let msgs: Vec<libc::msghdr> = prepared
        .iter()
        .zip(iovs.iter_mut())
        .map(|(p, iov)| {
            // SAFETY: plain data, filled in below.
            let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
            m.msg_name = addr.as_ptr() as *mut _;
            m.msg_namelen = nix::sys::socket::SockaddrLike::len(&addr);
            m.msg_iov = iov;
            m.msg_iovlen = 1;
            if p.control_len > 0 {
                m.msg_control = p.control.as_ptr() as *mut _;
                m.msg_controllen = p.control_len;
            }
            m
        })
        .collect();
    let fd = sock.as_raw_fd();
    // SAFETY: the child calls only async-signal-safe functions (setpgid, sendmsg, _exit) on
    // memory prepared before the fork, and never returns into Rust code.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        // SAFETY: see above.
        unsafe {
            if libc::setpgid(0, pgid) != 0 {
                libc::_exit(2);
            }
            for m in &msgs {
                if libc::sendmsg(fd, m, 0) < 0 {
                    libc::_exit(3);
                }
            }
            libc::_exit(0);
        }
    }
    let status = wait_child(child, Duration::from_secs(60));
    assert_eq!(status, 0, "the sender in the worker's group failed (2: setpgid, 3: sendmsg)");
}

/// Waits for child `pid` with a deadline; its exit code.
fn wait_child(pid: i32, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child, non-blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
        }
        if Instant::now() >= deadline {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("child {pid} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn two_workers() -> Options {
    Options { workers: 2, worker_args: vec!["--boot-delay".into(), "0".into()], ..Options::default() }
}

#[test]
fn datagrams_with_many_descriptors_leave_none_open_and_ready_is_still_heard() {
    let d = Daemon::start(two_workers());
    let master = d.pid();
    let before = fd_count(master);
    let path = notify_path(&d);
    let sock = UnixDatagram::unbound().unwrap();
    // 1,300 datagrams of 100 descriptors each: before the fix 16 of every one stayed open,
    // which exhausted RLIMIT_NOFILE (1,024 here) after ~64 of them.
    let fds = open_fds(100);
    let t = Instant::now();
    for i in 0..1300 {
        let payload = format!("STATUS=flood {i}\n");
        send_with_fds(&sock, &path, payload.as_bytes(), &fds).unwrap();
    }
    let flood_s = t.elapsed().as_secs_f64();
    let settled = wait_fd_count(master, before, Duration::from_secs(20));
    let after = fd_count(master);
    println!("numbers: 1300 datagrams x 100 fds in {flood_s:.2}s; master fds before {before}, after {after}");
    assert_eq!(settled, Ok(()), "the master kept descriptors it was sent; log:\n{}", d.log());
    // The master still answers and still hears a worker's READY=1 in such a datagram: a
    // reload whose workers' group also sends descriptors with its READY=1.
    let out = d.cli(&["status"]);
    assert!(out.status.success(), "status after the flood: {}", String::from_utf8_lossy(&out.stderr));
    let worker = d.worker_pids(1, "ready")[0];
    send_from_group(&path, worker, &[Hostile { fds: 253, size: 8, fill: b'\n', ready: true }]);
    assert_eq!(wait_fd_count(master, before, Duration::from_secs(20)), Ok(()), "253 fds from a worker's group");
    let out = d.cli(&["reload"]);
    assert!(
        out.status.success(),
        "reload after the flood: {}\nlog:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
}

/// Any datagram (0-253 descriptors, up to 64 KiB, truncated or not, text or not, from a
/// stranger or from a worker's process group) leaves the master's descriptor count as it was
/// and the master answering. One daemon for every case (property-tested by proptest's runner).
#[test]
fn any_datagram_leaves_no_descriptor_open() {
    use proptest::test_runner::{Config, TestRunner};
    let d = Daemon::start(two_workers());
    let master = d.pid();
    let before = fd_count(master);
    let path = notify_path(&d);
    let worker = d.worker_pids(1, "ready")[0];
    let sock = UnixDatagram::unbound().unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let size = prop_oneof![0usize..64, 64usize..4200, 4200usize..=65536];
    let datagram = (0usize..=253, size, any::<u8>(), any::<bool>(), any::<bool>());
    let strategy = proptest::collection::vec(datagram, 1..6);
    let mut runner = TestRunner::new(Config { cases: 32, failure_persistence: None, ..Config::default() });
    let sent = std::cell::Cell::new(0usize);
    let result = runner.run(&strategy, |list| {
        let mut from_group = Vec::new();
        for (fds, size, fill, ready, in_group) in list {
            let h = Hostile { fds, size, fill, ready };
            sent.set(sent.get() + 1);
            if in_group {
                from_group.push(h);
            } else {
                send_with_fds(&sock, &path, &h.payload(), &open_fds(fds)).unwrap();
            }
        }
        if !from_group.is_empty() {
            send_from_group(&path, worker, &from_group);
        }
        prop_assert_eq!(wait_fd_count(master, before, Duration::from_secs(20)), Ok(()));
        let out = d.cli(&["status"]);
        prop_assert!(out.status.success(), "status: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    });
    println!("numbers: {} random datagrams; master fds {before} -> {}", sent.get(), fd_count(master));
    if let Err(e) = result {
        panic!("{e}\nlog:\n{}", d.log());
    }
}

#[test]
fn a_barrier_from_a_workers_group_is_answered_and_not_taken_for_a_stranger() {
    let d = Daemon::start(two_workers());
    let path = notify_path(&d);
    let worker = d.worker_pids(1, "ready")[0];
    // `systemd-notify --ready` as a worker's helper does it: BARRIER=1 with the write end of
    // a pipe, then wait for the read end to hang up (the master closing its copy), then exit.
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    let payload = b"BARRIER=1\n";
    let raw = [write_end.as_raw_fd()];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(4) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let addr = nix::sys::socket::UnixAddr::new(&path).unwrap();
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() };
    // SAFETY: plain data; the control buffer holds one SCM_RIGHTS message with one fd.
    let msg = unsafe {
        let mut m: libc::msghdr = std::mem::zeroed();
        m.msg_name = addr.as_ptr() as *mut _;
        m.msg_namelen = nix::sys::socket::SockaddrLike::len(&addr);
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        m.msg_control = control.as_mut_ptr().cast();
        m.msg_controllen = space;
        let c = libc::CMSG_FIRSTHDR(&m);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        libc::CMSG_DATA(c).cast::<i32>().write_unaligned(raw[0]);
        m
    };
    let sock = UnixDatagram::unbound().unwrap();
    let (sock_fd, read_fd, write_fd) = (sock.as_raw_fd(), read_end.as_raw_fd(), write_end.as_raw_fd());
    let t = Instant::now();
    // SAFETY: the child calls only async-signal-safe functions on memory prepared before the
    // fork (setpgid, close, sendmsg, poll, _exit) and never returns into Rust code.
    let child = unsafe { libc::fork() };
    assert!(child >= 0);
    if child == 0 {
        // SAFETY: see above.
        unsafe {
            if libc::setpgid(0, worker) != 0 {
                libc::_exit(2);
            }
            if libc::sendmsg(sock_fd, &msg, 0) < 0 {
                libc::_exit(3);
            }
            libc::close(write_fd);
            let mut p = libc::pollfd { fd: read_fd, events: 0, revents: 0 };
            // sd_notify_barrier's own default wait is 5 s.
            let n = libc::poll(&mut p, 1, 5000);
            libc::_exit(if n == 1 && p.revents & libc::POLLHUP != 0 { 0 } else { 4 });
        }
    }
    drop(write_end);
    let answered = wait_child(child, Duration::from_secs(20));
    println!("numbers: barrier answered in {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    assert_eq!(answered, 0, "the barrier was not answered (4: no hang-up within 5 s)");
    drop(read_end);
    // A stranger's datagram now: the first rejection is logged at once, so if it names the
    // stranger, the barrier was not counted as one before it.
    let stranger = UnixDatagram::unbound().unwrap();
    stranger.send_to(b"READY=1", &path).unwrap();
    let me = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        if let Some(l) = d.log().lines().find(|l| l.contains("dropped a notify datagram")).map(str::to_string) {
            break l;
        }
        assert!(Instant::now() < deadline, "no rejection logged for the stranger; log:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(line.contains(&format!("from pid {me}:")), "the first rejection is not the stranger's: {line}");
}

/// Children of `pid` (from /proc/PID/task/PID/children).
fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn a_stopped_master_kills_no_worker_that_kept_pinging_its_watchdog() {
    let _one = exclusive();
    let opts = Options {
        workers: 3,
        worker_args: vec!["--boot-delay".into(), "0".into(), "--watchdog-pings".into(), "1000000".into()],
        workers_extra: "boot_timeout = \"10s\"\ngraceful_timeout = \"10s\"\nwatchdog = \"1s\"\n".into(),
        ..Options::default()
    };
    let d = Daemon::start(opts);
    let before = d.worker_pids(1, "ready");
    assert_eq!(before.len(), 3);
    // Stopped for three watchdog intervals while every worker pings every 100 ms.
    d.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(3)); // the stall itself, not a wait for an event
    d.signal(libc::SIGCONT);
    // The loop runs again once it answers; then the hold after the stall (<= 1 s) plus one
    // more watchdog interval: a verdict, if any, has been given by then.
    let out = d.cli(&["status"]);
    assert!(out.status.success(), "status after SIGCONT");
    std::thread::sleep(Duration::from_millis(2500));
    let after = d.worker_pids(1, "ready");
    let log = d.log();
    let killed = log.matches("missed its watchdog").count();
    println!("numbers: 3 s SIGSTOP with watchdog 1s: {killed} watchdog verdicts, workers {before:?} -> {after:?}");
    assert_eq!(killed, 0, "healthy workers were judged hung; log:\n{log}");
    assert_eq!(after, before, "the workers were replaced");
    assert!(log.contains("late (the daemon was stopped"), "the stall is not in the log:\n{log}");
}

#[test]
fn a_reload_whose_workers_said_ready_while_the_master_was_stopped_succeeds() {
    let _one = exclusive();
    let opts = Options {
        workers: 2,
        worker_args: vec!["--boot-delay".into(), "300ms".into()],
        workers_extra: "boot_timeout = \"1s\"\ngraceful_timeout = \"10s\"\n".into(),
        ..Options::default()
    };
    let d = Daemon::start(opts);
    let master = d.pid();
    let mut cmd = Command::new(bin());
    cmd.args(["reload", "-c"]).arg(&d.config);
    let reload = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Once the new generation's two workers exist, stop the master past their boot_timeout:
    // they say READY=1 (after 300 ms) while it is stopped.
    let deadline = Instant::now() + Duration::from_secs(20);
    while children_of(master).len() < 4 {
        assert!(Instant::now() < deadline, "the new generation was not spawned; log:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    d.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(2500)); // the stall itself
    d.signal(libc::SIGCONT);
    let out = output_within(reload, Duration::from_secs(30)).unwrap_or_else(|o| o);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("numbers: reload across a 2.5 s stop with boot_timeout 1s: exit {:?}", out.status.code());
    assert!(out.status.success(), "the reload was rolled back: {stderr}\nlog:\n{}", d.log());
    assert_eq!(d.worker_pids(2, "ready").len(), 2, "generation 2 serves");
}

#[test]
fn a_stderr_nobody_reads_holds_up_no_reload_status_or_stop() {
    let _one = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stderr.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // The reader end: opened (so the daemon's open for writing does not block), never read,
    // and as small as a pipe can be (one page), so that a few lines fill it.
    let mut reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    // SAFETY: fcntl on a descriptor we own.
    let size = unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(size >= 4096, "F_SETPIPE_SZ: {}", std::io::Error::last_os_error());
    let worker = "exec \"$0\" demo-worker --boot-delay 0 2>/dev/null >/dev/null".to_string();
    // 64 workers: each reload logs two lines per worker, so 40 reloads log more lines than
    // the writer's queue holds (logging::QUEUE_LINES) and some must be dropped.
    let opts = Options {
        workers: 64,
        command: Some(vec!["/bin/sh".into(), "-c".into(), worker, bin().display().to_string()]),
        launch_prefix: format!("exec 2>{:?} >&2; ", fifo.display().to_string()),
        ..Options::default()
    };
    let d = Daemon::start(opts);
    let t = Instant::now();
    for i in 0..40 {
        let mut cmd = Command::new(bin());
        cmd.args(["reload", "-c"]).arg(&d.config);
        let out = run_with_deadline(cmd, Duration::from_secs(20));
        assert!(out.status.success(), "reload {i} with stderr unread: {}", String::from_utf8_lossy(&out.stderr));
    }
    let reloads_s = t.elapsed().as_secs_f64();
    let mut cmd = Command::new(bin());
    cmd.args(["status", "-c"]).arg(&d.config);
    let out = run_with_deadline(cmd, Duration::from_secs(10));
    assert!(out.status.success(), "status with stderr unread");
    // Read what is there now, then once more after one more reload: the writer says how
    // many lines it dropped.
    let mut seen = String::new();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reloaded_after_drain = false;
    while !seen.contains("log lines dropped") {
        assert!(Instant::now() < deadline, "no 'log lines dropped' line; read:\n{seen}");
        match reader.read(&mut buf) {
            Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => {
                if !reloaded_after_drain {
                    reloaded_after_drain = true;
                    let mut cmd = Command::new(bin());
                    cmd.args(["reload", "-c"]).arg(&d.config);
                    assert!(run_with_deadline(cmd, Duration::from_secs(20)).status.success());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let dropped = seen.lines().find(|l| l.contains("log lines dropped")).unwrap_or_default().to_string();
    println!("numbers: 40 reloads with stderr unread in {reloads_s:.1}s; then: {dropped}");
}

#[test]
fn a_removed_notify_socket_is_bound_again_and_the_next_reload_succeeds() {
    let extra = "boot_timeout = \"2s\"\ngraceful_timeout = \"10s\"\n".to_string();
    let d = Daemon::start(Options { workers_extra: extra, ..two_workers() });
    let path = notify_path(&d);
    std::fs::remove_file(&path).unwrap();
    let out = d.cli(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("numbers: reload after the notify socket file was removed: exit {:?}", out.status.code());
    assert!(out.status.success(), "reload after removing {}: {stderr}\nlog:\n{}", path.display(), d.log());
    assert!(d.log().contains("was removed or replaced; bound a new one"), "not said; log:\n{}", d.log());
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket() && meta.permissions().mode() & 0o777 == 0o600, "{meta:?}");
    // A stranger's file in its place is not ours to remove: the reload fails, and says why.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "not a socket").unwrap();
    let out = d.cli(&["reload"]);
    assert!(!out.status.success(), "a reload whose workers cannot be heard succeeded");
    assert!(d.log().contains("could not be bound again"), "log:\n{}", d.log());
    // Removed again: the next reload binds it and succeeds; the workers still serve.
    std::fs::remove_file(&path).unwrap();
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{}\nlog:\n{}", String::from_utf8_lossy(&out.stderr), d.log());
}
