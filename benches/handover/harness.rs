//! Processes the benchmark starts, and the emulated systemd side around them.
//!
//! Every child leads its own process group (its pgid is its pid) and is registered in
//! [`REGISTRY`] until it has been reaped, so that a failing or overdue run can kill exactly
//! what it started, by pid, and nothing else. Every wait has a deadline.
use std::collections::BTreeSet;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often a wait without an event to block on polls its condition.
pub const POLL: Duration = Duration::from_millis(5);

/// What the benchmark started and has not reaped yet.
#[derive(Default)]
pub struct Registry {
    /// Process groups we created (pgid == the leader's pid): SIGKILL reaches all of them.
    groups: BTreeSet<i32>,
    /// handover masters: asked to stop (SIGINT = kill every worker group) before SIGKILL.
    masters: BTreeSet<i32>,
}

/// The one registry of this process.
pub static REGISTRY: Mutex<Registry> = Mutex::new(Registry { groups: BTreeSet::new(), masters: BTreeSet::new() });

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Registers a process group the benchmark created (or learned of: handover's workers).
pub fn register_group(pgid: i32) {
    if pgid > 1 {
        registry().groups.insert(pgid);
    }
}

fn unregister(pid: i32) {
    let mut r = registry();
    r.groups.remove(&pid);
    r.masters.remove(&pid);
}

/// Sends `sig` to one process.
pub fn signal(pid: i32, sig: i32) {
    if pid > 1 {
        // SAFETY: kill(2) has no memory-safety preconditions; pid is a process we started.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Sends `sig` to a process group.
pub fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: as above; a negative pid addresses the group we created.
        unsafe { libc::kill(-pgid, sig) };
    }
}

/// Kills everything still registered: handover masters get SIGINT first (they SIGKILL their
/// worker groups), then every registered group gets SIGKILL. For the panic hook and the
/// overall deadline.
pub fn kill_everything() {
    let (masters, groups) = {
        let r = registry();
        (r.masters.clone(), r.groups.clone())
    };
    for &m in &masters {
        signal(m, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && masters.iter().any(|&m| alive(m)) {
        std::thread::sleep(POLL);
    }
    for &g in &groups {
        signal_group(g, libc::SIGKILL);
    }
}

/// Whether `pid` still exists (a zombie counts as existing).
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// A child process leading its own process group.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` in a new process group and registers it.
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        cmd.process_group(0);
        let child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
        register_group(child.id() as i32);
        Ok(Proc { name: name.to_owned(), child, status: None })
    }

    /// Marks this process as a handover master (stopped with SIGINT in emergencies).
    pub fn mark_master(&self) {
        registry().masters.insert(self.pid());
    }

    /// Its pid (and process group id).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            signal(self.pid(), sig);
        }
    }

    /// Its exit status if it has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
                unregister(self.pid());
            }
        }
        self.status
    }

    /// Waits for the exit, blocking, without polling: for a command bounded by a deadline
    /// of its own (and by the run's overall deadline), whose exit must be timed exactly.
    pub fn wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(st) = self.child.wait() {
                self.status = Some(st);
                unregister(self.pid());
            }
        }
        self.status
    }

    /// Waits for the exit until `deadline`.
    pub fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends `sig`, waits up to `grace` for the exit, then SIGKILLs the whole group.
    pub fn stop(&mut self, sig: i32, grace: Duration) -> Option<ExitStatus> {
        self.signal(sig);
        if let Some(st) = self.wait_until(Instant::now() + grace) {
            // Whatever it left in its group (gunicorn's workers) goes too.
            signal_group(self.pid(), libc::SIGKILL);
            return Some(st);
        }
        eprintln!("bench: {} did not stop within {grace:?} of signal {sig}: SIGKILL", self.name);
        signal_group(self.pid(), libc::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        unregister(self.pid());
        self.status = None;
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            signal_group(self.pid(), libc::SIGKILL);
            let _ = self.child.kill();
            let _ = self.child.wait();
        } else {
            signal_group(self.pid(), libc::SIGKILL);
        }
        unregister(self.pid());
    }
}

/// Makes `fd` the child's fd 3 (inheritable): what systemd does for the first socket.
pub fn pass_fd_as_3(cmd: &mut Command, fd: RawFd) {
    // SAFETY: dup2 and fcntl are async-signal-safe, and `fd` is open in the child (it is
    // inherited across fork whatever its FD_CLOEXEC flag).
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

/// A listening TCP socket on 127.0.0.1 with a port chosen by the kernel and a real backlog
/// (what a socket unit's `Backlog=` would give), bound the way systemd binds it.
pub fn listen_loopback(backlog: i32) -> Result<TcpListener> {
    use nix::sys::socket::{bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    let addr = nix::sys::socket::SockaddrIn::new(127, 0, 0, 1, 0);
    bind(fd.as_raw_fd(), &addr)?;
    listen(&fd, Backlog::new(backlog)?)?;
    Ok(TcpListener::from(fd))
}

/// One datagram received on an emulated NOTIFY_SOCKET.
#[derive(Debug, Clone)]
pub struct Notice {
    /// When it arrived.
    pub at: Instant,
    /// Its text.
    pub text: String,
}

impl Notice {
    /// Whether one of its lines is exactly `line`.
    pub fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }
}

type Shared = Arc<(Mutex<Vec<Notice>>, Condvar)>;

/// An emulated NOTIFY_SOCKET (systemd's, or the one given to workers spawned by hand).
pub struct NotifySink {
    /// Its path.
    pub path: PathBuf,
    shared: Shared,
    stop: Arc<AtomicBool>,
}

impl NotifySink {
    /// Binds `path` and collects datagrams in a thread.
    pub fn bind(path: &Path) -> Result<NotifySink> {
        let sock = UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
        // Large enough for 512 workers saying READY=1 at once.
        let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBuf, &(4 << 20));
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let shared: Shared = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (writer, stopped) = (shared.clone(), stop.clone());
        std::thread::Builder::new().name("notify-sink".into()).spawn(move || {
            let mut buf = vec![0u8; 8192];
            while !stopped.load(Ordering::Relaxed) {
                let Ok(n) = sock.recv(&mut buf) else { continue };
                let notice = Notice { at: Instant::now(), text: String::from_utf8_lossy(&buf[..n]).into_owned() };
                let (lock, cv) = &*writer;
                lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(notice);
                cv.notify_all();
            }
        })?;
        Ok(NotifySink { path: path.to_path_buf(), shared, stop })
    }

    /// Waits until `n` datagrams have the line `line`; returns when the n-th arrived.
    pub fn wait_count(&self, line: &str, n: usize, timeout: Duration) -> Result<Instant> {
        let (lock, cv) = &*self.shared;
        let deadline = Instant::now() + timeout;
        let mut guard = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(nth) = guard.iter().filter(|x| x.has(line)).nth(n.saturating_sub(1)) {
                return Ok(nth.at);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let seen = guard.iter().filter(|x| x.has(line)).count();
                bail!("timed out after {timeout:?} waiting for {line} #{n} (saw {seen})");
            }
            guard = cv.wait_timeout(guard, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }
}

impl Drop for NotifySink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The handover binary built for this benchmark.
pub fn handover_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_handover"))
}

/// How to set up handover's workers.
#[derive(Debug, Clone)]
pub struct WorkerSetup {
    /// argv (program first).
    pub command: Vec<String>,
    /// Worker count.
    pub count: usize,
    /// `workers.env`.
    pub env: Vec<(String, String)>,
    /// `workers.working_directory`.
    pub working_directory: Option<PathBuf>,
    /// `workers.boot_timeout`.
    pub boot_timeout: String,
    /// `workers.graceful_timeout`.
    pub graceful_timeout: String,
    /// `reload.strategy`.
    pub strategy: String,
    /// `reload.max_surge`.
    pub max_surge: usize,
    /// `workers.max_memory`, if set.
    pub max_memory: Option<String>,
    /// `reload.boot_priority`, if set (the default is "low").
    pub boot_priority: Option<String>,
    /// More `[reload]` keys, as (key, TOML value): `("canary", "1")`.
    pub reload_extra: Vec<(String, String)>,
}

impl WorkerSetup {
    /// `count` built-in demo workers with these extra arguments.
    pub fn demo(count: usize, args: &[&str]) -> WorkerSetup {
        let mut command = vec![handover_bin().display().to_string(), "demo-worker".to_owned()];
        command.extend(args.iter().map(|a| (*a).to_owned()));
        WorkerSetup {
            command,
            count,
            env: Vec::new(),
            working_directory: None,
            boot_timeout: "60s".into(),
            graceful_timeout: "10s".into(),
            strategy: "all-at-once".into(),
            max_surge: 1,
            max_memory: None,
            boot_priority: None,
            reload_extra: Vec::new(),
        }
    }

    /// Starts `count` workers of this set-up by hand, without handover, as systemd would
    /// start one service each: the socket `listen_fd` as fd 3, `LISTEN_FDS=1`, `LISTEN_PID` =
    /// the worker's own pid (a shell sets it, then execs), this set-up's env and working
    /// directory, `NOTIFY_SOCKET` = `notify`, output to `log`. Does not wait for readiness.
    pub fn spawn_by_hand(
        &self,
        what: &str,
        listen_fd: RawFd,
        notify: &Path,
        log: &std::fs::File,
        generation: &str,
    ) -> Result<Vec<Proc>> {
        let mut procs = Vec::with_capacity(self.count);
        for slot in 0..self.count {
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", "LISTEN_PID=$$ exec \"$@\"", "sh"])
                .args(&self.command)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .env("LISTEN_FDS", "1")
                .env("LISTEN_FDNAMES", "http")
                .env("NOTIFY_SOCKET", notify)
                .env("HANDOVER_GENERATION", generation)
                .env("HANDOVER_WORKER_SLOT", slot.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log.try_clone()?);
            if let Some(wd) = &self.working_directory {
                cmd.current_dir(wd);
            }
            pass_fd_as_3(&mut cmd, listen_fd);
            procs.push(Proc::spawn(what, cmd)?);
        }
        Ok(procs)
    }

    fn toml(&self, control: &Path) -> String {
        let q = |s: &str| format!("{s:?}");
        let argv: Vec<String> = self.command.iter().map(|a| q(a)).collect();
        let mut t = format!("name = \"bench\"\ncontrol_socket = {}\n\n", q(&control.display().to_string()));
        t.push_str(&format!("[workers]\ncommand = [{}]\ncount = {}\n", argv.join(", "), self.count));
        if let Some(wd) = &self.working_directory {
            t.push_str(&format!("working_directory = {}\n", q(&wd.display().to_string())));
        }
        if let Some(m) = &self.max_memory {
            t.push_str(&format!("max_memory = {}\n", q(m)));
        }
        if !self.env.is_empty() {
            let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k} = {}", q(v))).collect();
            t.push_str(&format!("env = {{ {} }}\n", env.join(", ")));
        }
        t.push_str(&format!(
            "ready = \"notify\"\nboot_timeout = {}\ngraceful_timeout = {}\n\n[reload]\nstrategy = {}\nmax_surge = {}\n",
            q(&self.boot_timeout),
            q(&self.graceful_timeout),
            q(&self.strategy),
            self.max_surge
        ));
        if let Some(p) = &self.boot_priority {
            t.push_str(&format!("boot_priority = {}\n", q(p)));
        }
        for (key, value) in &self.reload_extra {
            t.push_str(&format!("{key} = {value}\n"));
        }
        t
    }
}

/// The result of a command run to completion.
#[derive(Debug)]
pub struct CmdOutput {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
    /// How long it ran.
    pub took: Duration,
}

/// Runs `cmd` to completion within `timeout` (killed after that, which is an error).
pub fn run_bounded(name: &str, mut cmd: Command, timeout: Duration) -> Result<CmdOutput> {
    let dir = tempfile::tempdir()?;
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    cmd.stdin(Stdio::null()).stdout(std::fs::File::create(&out_path)?).stderr(std::fs::File::create(&err_path)?);
    let started = Instant::now();
    let mut p = Proc::spawn(name, cmd)?;
    let Some(status) = p.wait_until(started + timeout) else {
        drop(p);
        bail!("{name} did not finish within {timeout:?}");
    };
    let took = started.elapsed();
    let mut stdout = String::new();
    let mut stderr = String::new();
    std::fs::File::open(&out_path)?.read_to_string(&mut stdout)?;
    std::fs::File::open(&err_path)?.read_to_string(&mut stderr)?;
    Ok(CmdOutput { code: status.code().unwrap_or(-1), stdout, stderr, took })
}

/// A `handover run` with an emulated systemd side: the benchmark binds the socket and
/// passes it as fd 3 (`LISTEN_FDS=1`, `LISTEN_FDNAMES=http`, `LISTEN_PID` = the daemon's pid
/// via `sh -c 'LISTEN_PID=$$ exec …'`), and reads the daemon's `NOTIFY_SOCKET`.
pub struct Handover {
    /// Temp dir: config, sockets, log.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The address workers serve.
    pub addr: SocketAddr,
    /// systemd's side of NOTIFY_SOCKET.
    pub notify: NotifySink,
    /// The listening socket, held as systemd would (open as long as this lives).
    _listener: TcpListener,
    proc: Proc,
    /// When `handover run` was started.
    pub launched: Instant,
}

impl Handover {
    /// Starts handover with `setup` on a fresh socket; does not wait for READY=1.
    pub fn spawn(setup: &WorkerSetup) -> Result<Handover> {
        Self::spawn_on(setup, listen_loopback(1024)?)
    }

    /// Starts handover with `setup` on `listener`; does not wait for READY=1.
    pub fn spawn_on(setup: &WorkerSetup, listener: TcpListener) -> Result<Handover> {
        let dir = tempfile::Builder::new().prefix("handover-bench-").tempdir()?;
        let log = std::fs::File::create(dir.path().join("handover.log"))?;
        Self::spawn_with(setup, listener, dir, log.into())
    }

    /// Starts handover with its stdout and stderr in a pipe that a thread copies to the
    /// log, and that the returned [`StderrGate`] can stop reading: a journal that got stuck.
    /// The pipe holds one page, so a few lines fill it. Does not wait for READY=1.
    pub fn spawn_gated(setup: &WorkerSetup) -> Result<(Handover, StderrGate)> {
        let dir = tempfile::Builder::new().prefix("handover-bench-").tempdir()?;
        let mut log = std::fs::File::create(dir.path().join("handover.log"))?;
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        nix::fcntl::fcntl(&write_end, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096))?;
        let paused = Arc::new(AtomicBool::new(false));
        let gate = StderrGate { paused: paused.clone() };
        std::thread::spawn(move || {
            let mut pipe = std::fs::File::from(read_end);
            let mut buf = [0u8; 8192];
            loop {
                if paused.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50)); // not reading, on purpose
                    continue;
                }
                match std::io::Read::read(&mut pipe, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let _ = std::io::Write::write_all(&mut log, &buf[..n]);
                    }
                }
            }
        });
        let h = Self::spawn_with(setup, listen_loopback(1024)?, dir, write_end)?;
        Ok((h, gate))
    }

    fn spawn_with(
        setup: &WorkerSetup,
        listener: TcpListener,
        dir: tempfile::TempDir,
        log: std::os::fd::OwnedFd,
    ) -> Result<Handover> {
        let config = dir.path().join("bench.toml");
        std::fs::write(&config, setup.toml(&dir.path().join("control.sock")))?;
        let notify = NotifySink::bind(&dir.path().join("systemd-notify"))?;
        let addr = listener.local_addr()?;
        let log = std::fs::File::from(log);
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" run -c \"$1\""])
            .arg(handover_bin())
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify.path)
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "http")
            .env_remove("JOURNAL_STREAM")
            .env_remove("WATCHDOG_USEC")
            .env_remove("RUNTIME_DIRECTORY")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        pass_fd_as_3(&mut cmd, listener.as_raw_fd());
        let launched = Instant::now();
        let proc = Proc::spawn("handover run", cmd)?;
        proc.mark_master();
        Ok(Handover { dir, config, addr, notify, _listener: listener, proc, launched })
    }

    /// Starts handover and waits for its first READY=1; returns it and the start-to-ready time.
    pub fn start(setup: &WorkerSetup, timeout: Duration) -> Result<(Handover, Duration)> {
        let h = Self::spawn(setup)?;
        let ready = h.wait_ready(1, timeout)?;
        Ok((h, ready))
    }

    /// Waits for the n-th READY=1 to systemd; returns the time since launch.
    pub fn wait_ready(&self, n: usize, timeout: Duration) -> Result<Duration> {
        match self.notify.wait_count("READY=1", n, timeout) {
            Ok(at) => Ok(at - self.launched),
            Err(e) => bail!("{e}; handover log:\n{}", self.log_tail()),
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// Rewrites the config (the next reload reads it).
    pub fn rewrite(&self, setup: &WorkerSetup) -> Result<()> {
        std::fs::write(&self.config, setup.toml(&self.dir.path().join("control.sock")))?;
        Ok(())
    }

    /// `handover ARGS -c CONFIG` with a deadline.
    pub fn cli(&self, args: &[&str], timeout: Duration) -> Result<CmdOutput> {
        let mut cmd = Command::new(handover_bin());
        cmd.args(args).arg("-c").arg(&self.config);
        run_bounded(&format!("handover {}", args.join(" ")), cmd, timeout)
    }

    /// `handover status --json`; registers every worker group it names.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = self.cli(&["status", "--json"], Duration::from_secs(30))?;
        if out.code != 0 {
            bail!("handover status failed: {}", out.stderr);
        }
        let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
        for w in v["workers"].as_array().into_iter().flatten() {
            if let Some(p) = w["pid"].as_i64() {
                register_group(p as i32);
            }
        }
        Ok(v)
    }

    /// The last lines of handover's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("handover.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Graceful stop (SIGTERM), bounded.
    pub fn stop(mut self, grace: Duration) -> Result<()> {
        let _ = self.status(); // learn the worker groups in case the stop goes wrong
        match self.proc.stop(libc::SIGTERM, grace) {
            Some(st) if st.success() => Ok(()),
            other => bail!("handover did not stop cleanly: {other:?}\n{}", self.log_tail()),
        }
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        if self.proc.try_wait().is_none() {
            // Fast stop: handover SIGKILLs every worker group itself.
            self.proc.stop(libc::SIGINT, Duration::from_secs(10));
        }
    }
}

/// Stops and resumes the reading of a daemon's stderr ([`Handover::spawn_gated`]).
pub struct StderrGate {
    paused: Arc<AtomicBool>,
}

impl StderrGate {
    /// Stops reading (`true`) or reads again (`false`).
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }
}

/// Resident set size of `pid`, in KiB.
pub fn rss_kib(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")
}

/// utime + stime of `pid` in clock ticks.
pub fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
}

/// Context switches (voluntary + involuntary) of every thread of `pid`: each wake-up of a
/// sleeping thread is at least one.
pub fn context_switches(pid: i32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let s = std::fs::read_to_string(task?.path().join("status")).unwrap_or_default();
        for l in s.lines() {
            if let Some(v) =
                l.strip_prefix("voluntary_ctxt_switches:").or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(total)
}

/// Clock ticks per second.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(100)
}
