//! Integration-test harness: the real `handover` binary with an emulated systemd side.
//!
//! The emulation follows sd_listen_fds(3) and sd_notify(3): the test binds the listening
//! socket and passes it as fd 3 with `LISTEN_FDS=1`, `LISTEN_FDNAMES=http` and
//! `LISTEN_PID` set to the daemon's own pid (a shell sets it to `$$` and execs handover,
//! so the pid is exactly the daemon's, as systemd's executor does); `NOTIFY_SOCKET` is a
//! datagram socket the test reads, with fds passed via SCM_RIGHTS counted.
//!
//! Every wait has a deadline and a message; the harness kills what it started, by pid.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Whether a test can run here: the one place a test skips. `have` says whether what it
/// needs (a tool, root, a kernel feature) is there; `why` says what is missing and how to get
/// it. When it is missing, prints one line `skipped: BINARY::TEST: WHY` straight to the
/// terminal (a passing test's captured output is never shown) and returns false: the test
/// returns at once. With `HANDOVER_REQUIRE_TOOLS=1` (`.ci/run` sets it) it panics instead,
/// so that CI runs every test or fails.
pub fn require(have: bool, why: &str) -> bool {
    skip_unless(have, why, true)
}

/// [`require`] for what no installation or privilege provides, a feature of this host's
/// kernel (the memory controller where the host binds it to cgroup v1): the same one-line
/// skip, which `HANDOVER_REQUIRE_TOOLS=1` leaves a skip, as CI cannot change the host.
pub fn require_host(have: bool, why: &str) -> bool {
    skip_unless(have, why, false)
}

fn skip_unless(have: bool, why: &str, ci_must_have: bool) -> bool {
    if have {
        return true;
    }
    let thread = std::thread::current();
    let test = format!("{}::{}", env!("CARGO_CRATE_NAME"), thread.name().unwrap_or("?"));
    assert!(
        !ci_must_have || std::env::var_os("HANDOVER_REQUIRE_TOOLS").as_deref() != Some(std::ffi::OsStr::new("1")),
        "{test}: {why}; HANDOVER_REQUIRE_TOOLS=1 forbids skipping"
    );
    let _ = writeln!(std::io::stderr().lock(), "skipped: {test}: {why}");
    false
}

/// Whether `HANDOVER_TEST_HIDE` (comma-separated) names `what`: a machine that has a tool
/// can try the skip of a test that needs it (`HANDOVER_TEST_HIDE=lintian,root`).
pub fn hidden(what: &str) -> bool {
    std::env::var("HANDOVER_TEST_HIDE").is_ok_and(|v| v.split(',').any(|h| h.trim() == what))
}

/// Whether `tool` is an executable file on PATH (or, with a `/`, that file exists), unless
/// hidden by `HANDOVER_TEST_HIDE`.
pub fn have_tool(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    if hidden(tool) {
        return false;
    }
    if tool.contains('/') {
        return Path::new(tool).is_file();
    }
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p)
            .any(|d| std::fs::metadata(d.join(tool)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    })
}

/// [`require`] for a tool: `install` says how to get it (`apt-get install lintian`).
pub fn require_tool(tool: &str, install: &str) -> bool {
    require(have_tool(tool), &format!("{tool} is not installed ({install})"))
}

/// Whether the test runs as root (unless `HANDOVER_TEST_HIDE` names `root`).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root() && !hidden("root")
}

/// The handover binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_handover"))
}

/// CLOCK_MONOTONIC in µs, as the test sees it.
pub fn monotonic_usec() -> u64 {
    handover::systemd::monotonic_usec()
}

/// One datagram received on the emulated NOTIFY_SOCKET.
#[derive(Debug, Clone)]
pub struct Notice {
    /// When the test received it.
    pub at: Instant,
    /// CLOCK_MONOTONIC (µs) when it was received.
    pub mono_usec: u64,
    /// The payload.
    pub text: String,
    /// How many fds came with it (SCM_RIGHTS).
    pub fds: usize,
}

impl Notice {
    /// The value of `KEY=` in this datagram.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.text.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }
}

/// The emulated systemd notify socket: collects datagrams in a thread.
#[derive(Clone)]
pub struct NotifyLog {
    inner: Arc<(Mutex<Vec<Notice>>, Condvar)>,
}

impl NotifyLog {
    /// Binds a datagram socket at `path` and collects what is sent to it, in a thread.
    pub fn start(path: &Path) -> NotifyLog {
        let sock = UnixDatagram::bind(path).expect("bind notify socket");
        let log = NotifyLog { inner: Arc::new((Mutex::new(Vec::new()), Condvar::new())) };
        let writer = log.clone();
        std::thread::spawn(move || loop {
            let mut buf = [0u8; 8192];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!([std::os::fd::RawFd; 8]);
            let Ok(msg) = nix::sys::socket::recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
            ) else {
                return;
            };
            let mut fds = 0;
            for c in msg.cmsgs().into_iter().flatten() {
                if let nix::sys::socket::ControlMessageOwned::ScmRights(f) = c {
                    fds += f.len();
                    for fd in f {
                        let _ = nix::unistd::close(fd);
                    }
                }
            }
            let len = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            let notice = Notice { at: Instant::now(), mono_usec: monotonic_usec(), text, fds };
            let (lock, cv) = &*writer.inner;
            lock.lock().unwrap().push(notice);
            cv.notify_all();
        });
        log
    }

    /// Every datagram so far.
    pub fn all(&self) -> Vec<Notice> {
        self.inner.0.lock().unwrap().clone()
    }

    /// The lifecycle keys (READY, RELOADING, STOPPING) in order, ignoring STATUS/WATCHDOG/…
    pub fn lifecycle(&self) -> Vec<String> {
        self.all()
            .iter()
            .flat_map(|n| {
                n.text
                    .lines()
                    .filter(|l| matches!(*l, "READY=1" | "RELOADING=1" | "STOPPING=1"))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Waits until `pred` holds over all datagrams so far.
    pub fn wait_until(&self, what: &str, timeout: Duration, pred: impl Fn(&[Notice]) -> bool) {
        let (lock, cv) = &*self.inner;
        let deadline = Instant::now() + timeout;
        let mut guard = lock.lock().unwrap();
        while !pred(&guard) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out after {timeout:?} waiting for {what}; notify log: {:#?}", *guard);
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }

    /// Waits for the `n`-th occurrence of a lifecycle line (1-based).
    pub fn wait_lifecycle(&self, line: &str, n: usize, timeout: Duration) {
        let line = line.to_string();
        self.wait_until(&format!("{line} #{n}"), timeout, move |all| {
            all.iter().flat_map(|x| x.text.lines()).filter(|l| *l == line).count() >= n
        });
    }
}

/// How to set the daemon up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker count.
    pub workers: usize,
    /// Extra `handover demo-worker` arguments.
    pub worker_args: Vec<String>,
    /// Extra lines for the `[workers]` table.
    pub workers_extra: String,
    /// Extra top-level TOML (e.g. a `[reload]` table).
    pub extra: String,
    /// Pass a test-bound socket as LISTEN_FDS (true), or let handover bind `[[listen]]`.
    pub socket_activation: bool,
    /// systemd's watchdog for the daemon (WATCHDOG_USEC, WATCHDOG_PID = the daemon's pid).
    pub systemd_watchdog: Option<Duration>,
    /// Run the daemon from this path instead of the binary under test (the upgrade tests
    /// put a copy there, to replace it as a package upgrade would).
    pub daemon_binary: Option<PathBuf>,
    /// Shell run by the launching `/bin/sh` before it execs handover (e.g. joining a cgroup).
    pub launch_prefix: String,
    /// The whole `[workers] command`, instead of the demo worker with `worker_args`.
    pub command: Option<Vec<String>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            workers: 3,
            worker_args: vec!["--boot-delay".into(), "200ms".into()],
            workers_extra: "boot_timeout = \"10s\"\ngraceful_timeout = \"10s\"\n".into(),
            extra: String::new(),
            socket_activation: true,
            systemd_watchdog: None,
            daemon_binary: None,
            launch_prefix: String::new(),
            command: None,
        }
    }
}

/// A running `handover run` with its emulated systemd side.
pub struct Daemon {
    /// The test's temp dir (config, sockets, logs).
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The control socket.
    pub control: PathBuf,
    /// Where the app listens.
    pub addr: SocketAddr,
    /// The emulated systemd notify socket.
    pub notify: NotifyLog,
    /// The socket the emulated systemd holds (socket activation only).
    pub listener: Option<TcpListener>,
    watchdog: Option<Duration>,
    daemon_binary: Option<PathBuf>,
    launch_prefix: String,
    child: Option<Child>,
    seen_pids: Mutex<BTreeSet<i32>>,
}

/// The TOML for `opts` (the listen section only when handover binds itself).
pub fn config_text(dir: &Path, opts: &Options, listen: Option<SocketAddr>) -> String {
    let mut argv = vec![format!("{:?}", bin().display().to_string()), "\"demo-worker\"".into()];
    argv.extend(opts.worker_args.iter().map(|a| format!("{a:?}")));
    if let Some(command) = &opts.command {
        argv = command.iter().map(|a| format!("{a:?}")).collect();
    }
    let mut t = format!(
        "name = \"app\"\ncontrol_socket = {:?}\n{}\n",
        dir.join("control.sock").display().to_string(),
        opts.extra
    );
    if let Some(a) = listen {
        t.push_str(&format!("[[listen]]\nname = \"http\"\naddress = \"{a}\"\n\n"));
    }
    t.push_str(&format!(
        "[workers]\ncommand = [{}]\ncount = {}\n{}",
        argv.join(", "),
        opts.workers,
        opts.workers_extra
    ));
    t
}

impl Daemon {
    /// Starts handover and waits for READY=1 (generation 1 serving).
    pub fn start(opts: Options) -> Daemon {
        let d = Daemon::spawn(opts);
        d.notify.wait_lifecycle("READY=1", 1, Duration::from_secs(20));
        d
    }

    /// Starts handover without waiting.
    pub fn spawn(opts: Options) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        // Searchable by everyone (tempdir makes it 0700): workers that run as another user
        // (`[workers] user`) must reach the notify socket in it.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let config = dir.path().join("app.toml");
        let (listener, addr, listen) = if opts.socket_activation {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind app socket");
            let a = l.local_addr().expect("addr");
            (Some(l), a, None)
        } else {
            // Reserve a free port, release it, let handover bind it.
            let a = TcpListener::bind("127.0.0.1:0").expect("probe").local_addr().expect("addr");
            (None, a, Some(a))
        };
        std::fs::write(&config, config_text(dir.path(), &opts, listen)).expect("write config");
        let notify_path = dir.path().join("systemd-notify");
        let notify = NotifyLog::start(&notify_path);
        let mut d = Daemon {
            control: dir.path().join("control.sock"),
            config,
            addr,
            notify,
            listener,
            watchdog: opts.systemd_watchdog,
            daemon_binary: opts.daemon_binary.clone(),
            launch_prefix: opts.launch_prefix.clone(),
            child: None,
            seen_pids: Mutex::new(BTreeSet::new()),
            dir,
        };
        d.launch();
        d
    }

    /// (Re)starts the handover process with the same socket and notify log (a restart).
    pub fn launch(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("handover.log")).unwrap();
        let mut cmd = Command::new("/bin/sh");
        // LISTEN_PID=$$ then exec: the pid systemd would set, the daemon's own. SIGUSR1 is
        // ignored on purpose: an ignored signal the daemon inherits must not reach workers.
        let script =
            format!("{}trap '' USR1; LISTEN_PID=$$ WATCHDOG_PID=$$ exec \"$0\" run -c \"$1\"", self.launch_prefix);
        cmd.args(["-c", &script])
            .arg(self.daemon_binary.clone().unwrap_or_else(bin))
            .arg(&self.config)
            .env("NOTIFY_SOCKET", self.dir.path().join("systemd-notify"))
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        match self.watchdog {
            Some(w) => cmd.env("WATCHDOG_USEC", w.as_micros().to_string()),
            None => cmd.env_remove("WATCHDOG_USEC"),
        };
        if let Some(l) = &self.listener {
            let fd = l.as_raw_fd();
            cmd.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", "http");
            pass_fd_as_3(&mut cmd, fd);
        }
        self.child = Some(cmd.spawn().expect("spawn handover"));
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// handover's own log (stdout+stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("handover.log")).unwrap_or_default()
    }

    /// Runs `handover ARGS -c CONFIG` (client commands) with a deadline.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin());
        cmd.args(args).arg("-c").arg(&self.config);
        run_with_deadline(cmd, Duration::from_secs(60))
    }

    /// `handover status --json`.
    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(out.status.success(), "status failed: {}\nlog:\n{}", String::from_utf8_lossy(&out.stderr), self.log());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
        let mut seen = self.seen_pids.lock().unwrap();
        for w in v["workers"].as_array().into_iter().flatten() {
            if let Some(p) = w["pid"].as_i64() {
                seen.insert(p as i32);
            }
        }
        v
    }

    /// Pids of workers of `generation` in `state` ("ready", "draining", …).
    pub fn worker_pids(&self, generation: u64, state: &str) -> Vec<i32> {
        self.status()["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["generation"] == generation && w["state"] == state)
            .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
            .collect()
    }

    /// Rewrites the config file (the next reload reads it).
    pub fn rewrite_config(&self, opts: &Options) {
        let listen = if self.listener.is_some() { None } else { Some(self.addr) };
        std::fs::write(&self.config, config_text(self.dir.path(), opts, listen)).expect("rewrite config");
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the daemon to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "handover did not exit within {timeout:?}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A load generator against the app.
    pub fn load(&self, clients: usize, keep_alive: bool) -> handover::demo::loadgen::LoadHandle {
        let mut spec = handover::demo::loadgen::LoadSpec::new(handover::demo::loadgen::Target::Tcp(self.addr));
        spec.clients = clients;
        spec.keep_alive = keep_alive;
        spec.max_duration = Duration::from_secs(120);
        handover::demo::loadgen::start(spec).expect("start load")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        // Learn the worker pids while the daemon can still answer, then stop it; if it does
        // not exit in time, kill it and every worker group we saw, by pid.
        let _ = Command::new(bin()).args(["status", "--json", "-c"]).arg(&self.config).output().map(|o| {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) {
                let mut seen = self.seen_pids.lock().unwrap();
                for w in v["workers"].as_array().into_iter().flatten() {
                    if let Some(p) = w["pid"].as_i64() {
                        seen.insert(p as i32);
                    }
                }
            }
        });
        // SAFETY: signals to our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        for &pid in self.seen_pids.lock().unwrap().iter() {
            // SAFETY: worker process groups this test started (pgid == worker pid).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
}

/// Makes `cmd`'s child get `fd` as its fd 3, inherited across exec (as systemd passes a
/// socket). `fd` must stay open until the child is spawned.
pub fn pass_fd_as_3(cmd: &mut Command, fd: std::os::fd::RawFd) {
    // SAFETY: dup2 and fcntl are async-signal-safe; `fd` is open in the child (the caller
    // keeps it open until the spawn).
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Waits until `f` returns Some (what it reads: a file, /proc), failing with `what` after
/// `timeout`; polls every 20 ms.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command, failing the test if it takes longer than `timeout`.
pub fn run_with_deadline(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    match output_within(child, timeout) {
        Ok(out) => out,
        Err(out) => panic!("{cmd:?} did not finish within {timeout:?}: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// Waits for `child` at most `timeout`, reading its piped stdout and stderr meanwhile (so a
/// child that writes more than a pipe holds cannot stall). Err: it was SIGKILLed at the
/// deadline; what it had printed by then.
pub fn output_within(mut child: Child, timeout: Duration) -> Result<Output, Output> {
    let readers: Vec<_> = [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .map(|p| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    })
    .collect();
    let deadline = Instant::now() + timeout;
    let (status, finished) = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break (st, true);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break (child.wait().expect("wait"), false);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut out = readers.into_iter().map(|r| r.join().unwrap_or_default());
    let output = Output { status, stdout: out.next().unwrap_or_default(), stderr: out.next().unwrap_or_default() };
    if finished {
        Ok(output)
    } else {
        Err(output)
    }
}

/// One HTTP/1.1 GET on a fresh connection: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").expect("write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// The `gen=N` a response body names.
pub fn generation_of(body: &str) -> Option<u64> {
    body.split_whitespace().find_map(|t| t.strip_prefix("gen=")).and_then(|g| g.parse().ok())
}

/// Serializes the load-heavy tests of one binary: 2 cores cannot run several load tests
/// at once without turning latency figures into noise.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The resident set size of `pid` in KiB (VmRSS).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A child process that is fast-stopped (SIGINT: handover kills its workers' groups) and
/// then killed when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The version string of [`binary_b`].
pub const VERSION_B: &str = "0.1.0+b";

/// A second handover binary for the upgrade tests: the same code built with another version
/// string and hand-off format 2 (`HANDOVER_BUILD_VERSION`, `HANDOVER_HANDOFF_FORMAT` at
/// compile time), in its own target directory seeded from the test's, so only the handover
/// crate is rebuilt. Built once per test binary (and kept between runs).
pub fn binary_b() -> PathBuf {
    static B: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let release = bin().parent().unwrap().to_path_buf();
        // The profile the tests were built with (`release`, or `quick` while working):
        // B is built with the same one, from the same compiled dependencies.
        let profile = release.file_name().unwrap().to_string_lossy().into_owned();
        let target = release.parent().unwrap().join("upgrade-b");
        if !target.join(&profile).exists() {
            std::fs::create_dir_all(&target).unwrap();
            let st = Command::new("cp").arg("-a").arg(&release).arg(&target).status().unwrap();
            assert!(st.success(), "seeding {}", target.display());
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--profile", &profile, "--locked", "--bin", "handover", "--target-dir"])
            .arg(&target)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("HANDOVER_HANDOFF_FORMAT", "2")
            .env("HANDOVER_BUILD_VERSION", VERSION_B);
        let built = run_with_deadline(cmd, Duration::from_secs(900));
        assert!(built.status.success(), "building binary B: {}", String::from_utf8_lossy(&built.stderr));
        target.join(profile).join("handover")
    })
    .clone()
}
