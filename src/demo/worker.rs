//! `handover demo-worker`: the demo/test worker process.
//!
//! (Over 800 lines on purpose: one worker program whose misbehaviours, each a flag the tests
//! need, act on the same lifecycle; split, each flag's code would sit away from the step it
//! changes. Demo wing, not product.)
//!
//! One process, one thread (a tokio current-thread runtime): the master runs several of
//! these, so each one stays as simple and cheap as a pre-forked worker should be. The
//! lifecycle, in the order [`run`] goes through it:
//!
//! 1. snapshot what was inherited ([`InheritedState::capture`]), before anything opens an fd
//!    or touches the environment, so `/info` shows what the master really handed over;
//! 2. read `LISTEN_FDS` with `listenfd` (as any Rust app would; note that `listenfd` itself
//!    removes `LISTEN_PID`/`LISTEN_FDS` from the environment, which is why the snapshot comes
//!    first), install signal handlers, sleep the simulated boot time (`--boot-delay`);
//! 3. take the listening sockets, send `READY=1` on `NOTIFY_SOCKET`, and [`serve`];
//! 4. on SIGTERM/SIGINT: stop accepting (the sockets are shared, so queued connections wait in
//!    the kernel for the other workers), finish requests in flight with `Connection: close`,
//!    keep each idle keep-alive connection until its next request arrives and answer that one
//!    with `Connection: close` (an idle connection is closed only after [`DRAIN_IDLE_GRACE`]),
//!    exit 0 once no connection is left. SIGQUIT exits at once.
//!
//! Throughout, it counts its answers and reports them to the master
//! (`X_HANDOVER_REQUESTS=`/`X_HANDOVER_ERRORS=`, throttled; see [`super::outcomes`]), and
//! `--error-rate`/`--errors-after` make it answer a share of its requests with 500: a new
//! release that boots fine but fails, for the canary tests and benchmarks.
//!
//! # References
//! `sd_listen_fds(3)`, `sd_notify(3)`, RFC 9112 §9.6 (tear-down).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use listenfd::ListenFd;
use sd_notify::NotifyState;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};

use super::http::{self, Parsed, Persistence, Request};
use super::outcomes::{ErrorRate, Faults, Outcomes};

/// Flags of `handover demo-worker`, for tests and benchmarks. All optional: without any, the
/// worker is a well-behaved notify-type app.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DemoWorkerArgs {
    /// Simulated boot ("import") time, spent before the sockets are taken:
    /// an integer with a unit, `ms`, `s` or `m` (`500ms`, `2s`), or `0`.
    #[arg(long, value_name = "DUR", value_parser = parse_boot_delay)]
    pub boot_delay: Option<Duration>,

    /// Exit with CODE right after the boot delay, never serving: a broken new version.
    #[arg(long, value_name = "CODE")]
    pub exit_at_boot: Option<u8>,

    /// Say `READY=1` and serve, then exit with code 3 this long after: a version that says
    /// it is ready too early (gunicorn's arbiter does, before the app is imported) and then
    /// fails. An integer with a unit, like `--boot-delay`.
    #[arg(long, value_name = "DUR", value_parser = parse_boot_delay)]
    pub exit_after_ready: Option<Duration>,

    /// Serve, but never send `READY=1`: a version that hangs at boot.
    #[arg(long)]
    pub never_ready: bool,

    /// Serve, but never send anything to `NOTIFY_SOCKET` (for `ready = "spawn"` setups).
    #[arg(long)]
    pub no_notify: bool,

    /// Send `WATCHDOG=1` N times, every 100 ms, starting when `READY=1` is (or would be)
    /// sent, then stop pinging while still serving: a hung worker.
    #[arg(long, value_name = "N")]
    pub watchdog_pings: Option<u32>,

    /// Ignore SIGTERM and SIGINT (logged, no drain): to test graceful_timeout → SIGKILL.
    /// SIGQUIT still exits at once.
    #[arg(long)]
    pub ignore_stop: bool,

    /// Answer `500 Internal Server Error` to this share of requests (0.0 to 1.0), spread
    /// evenly and the same on every run: 0.3 fails exactly 3 of every 10. `/info` and
    /// `/exit` are never failed. Without it, nothing fails.
    #[arg(long, value_name = "F", value_parser = ErrorRate::parse)]
    pub error_rate: Option<ErrorRate>,

    /// Apply `--error-rate` only from this long after `READY=1` is (or would be) sent: a
    /// release that starts failing later. An integer with a unit, like `--boot-delay`.
    /// Without it, from the start.
    #[arg(long, value_name = "DUR", value_parser = parse_boot_delay)]
    pub errors_after: Option<Duration>,

    /// Replaces "hello from handover demo" in the answer to `GET /`.
    #[arg(long, value_name = "TEXT")]
    pub message: Option<String>,

    /// Create the file DIR/sleep-started when a `/sleep` request starts (tests wait for it
    /// instead of sleeping).
    #[arg(long, value_name = "DIR", hide = true)]
    pub mark_dir: Option<std::path::PathBuf>,
}

/// Default greeting of `GET /`.
const DEFAULT_MESSAGE: &str = "hello from handover demo";
/// Interval between `--watchdog-pings` pings.
const WATCHDOG_PING_INTERVAL: Duration = Duration::from_millis(100);
/// Read-buffer growth step; also the minimum spare room before a read.
const READ_CHUNK: usize = 4096;
/// How long a closing connection keeps reading (and discarding) what the client still sends
/// after our final response. Bounded so a client that never closes cannot hold up a drain.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// How long a draining worker keeps an idle connection open for the client's next request.
///
/// Closing an idle keep-alive connection the moment the drain begins races with a client
/// that is sending its next request on it: the request is lost, and a client that never
/// retries (wrk, `ab -k`, any POST) reports an error. So the drain keeps each open
/// connection until its next request arrives, answers that one with `Connection: close`,
/// and closes a connection only once it has stayed idle this long — from then on the race
/// is as unlikely as at any server's idle timeout. 5 s is far above the reuse interval of a
/// client under load (microseconds to milliseconds), equals the idle timeout clients
/// already cope with from Node (`keepAliveTimeout`) and uvicorn (`--timeout-keep-alive`),
/// and stays well below handover's default `graceful_timeout` (30 s). It also covers a
/// connection accepted just before the drain that has not sent its first request yet: its
/// client connected to send one, and Go's `http.Server.Shutdown` waits as long for it.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(5);
/// How many bytes a closing connection discards at most before giving up on the client.
const LINGER_MAX_BYTES: usize = 256 * 1024;
/// Pause after an accept error that would otherwise repeat at once (EMFILE and friends leave
/// the socket readable, so retrying immediately would spin).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What the worker inherited from whoever spawned it, captured before the worker changes
/// anything. Served as JSON by `GET /info`; also `Deserialize` so tests can read it back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InheritedState {
    /// Our pid.
    pub pid: u32,
    /// Parent pid (the master, or the chain-loading helper if the master uses one).
    pub ppid: i32,
    /// Process group id: the contract gives each worker its own group.
    pub pgid: i32,
    /// Session id; `None` if `getsid` failed.
    pub sid: Option<i32>,
    /// `$LISTEN_PID` as inherited (must equal `pid`).
    pub listen_pid: Option<String>,
    /// `$LISTEN_FDS` as inherited.
    pub listen_fds: Option<String>,
    /// `$LISTEN_FDNAMES` as inherited.
    pub listen_fdnames: Option<String>,
    /// `$NOTIFY_SOCKET` as inherited (the master's worker socket, never systemd's).
    pub notify_socket: Option<String>,
    /// `$HANDOVER_GENERATION`.
    pub generation: Option<String>,
    /// `$HANDOVER_WORKER_SLOT`.
    pub slot: Option<String>,
    /// `$WATCHDOG_USEC` (the contract says it must not leak from systemd to workers).
    pub watchdog_usec: Option<String>,
    /// Every fd open at startup, in increasing order (the contract: 0-2 plus the sockets).
    pub inherited_fds: Vec<i32>,
    /// The `SigBlk` mask of `/proc/self/status`, hex (the contract: all zero).
    pub sig_blocked: Option<String>,
    /// The `SigIgn` mask of `/proc/self/status`, hex. Note that Rust's std sets SIGPIPE to
    /// ignored before `main` runs, so bit 13 (`0x1000`) is always set here, whatever the
    /// master did.
    pub sig_ignored: Option<String>,
    /// The full environment (non-UTF-8 parts replaced lossily).
    pub env: BTreeMap<String, String>,
}

impl InheritedState {
    /// Captures the state of the current process. Call it first thing, while the process is
    /// still single-threaded and has opened nothing: reading `/proc/self/fd` opens an fd, which
    /// is excluded from the list.
    pub fn capture() -> Self {
        // Fds first: everything after this may open (and close) fds of its own.
        let inherited_fds = open_fds();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let status_field =
            |name: &str| status.lines().find_map(|line| line.strip_prefix(name)).map(|v| v.trim().to_owned());
        let env: BTreeMap<String, String> = std::env::vars_os()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
            .collect();
        let var = |name: &str| env.get(name).cloned();
        InheritedState {
            pid: std::process::id(),
            ppid: nix::unistd::getppid().as_raw(),
            pgid: nix::unistd::getpgrp().as_raw(),
            sid: nix::unistd::getsid(None).ok().map(|p| p.as_raw()),
            listen_pid: var("LISTEN_PID"),
            listen_fds: var("LISTEN_FDS"),
            listen_fdnames: var("LISTEN_FDNAMES"),
            notify_socket: var("NOTIFY_SOCKET"),
            generation: var("HANDOVER_GENERATION"),
            slot: var("HANDOVER_WORKER_SLOT"),
            watchdog_usec: var("WATCHDOG_USEC"),
            inherited_fds,
            sig_blocked: status_field("SigBlk:"),
            sig_ignored: status_field("SigIgn:"),
            env,
        }
    }

    /// The `gen=G slot=S pid=P` label used in log lines and in `GET /` ("-" when unset).
    fn label(&self) -> String {
        format!(
            "gen={} slot={} pid={}",
            self.generation.as_deref().unwrap_or("-"),
            self.slot.as_deref().unwrap_or("-"),
            self.pid
        )
    }
}

/// The fds open in this process, excluding the one used to list them.
fn open_fds() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let listed: Vec<i32> = dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).collect();
    // The directory handle is closed now (the iterator was consumed), so its fd number is the
    // one entry that no longer resolves: std does not expose it any other way.
    let mut fds: Vec<i32> =
        listed.into_iter().filter(|fd| std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_ok()).collect();
    fds.sort_unstable();
    fds
}

/// Parses `--boot-delay`: `<integer><unit>` with unit `ms`, `s` or `m`, or a bare `0`.
fn parse_boot_delay(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let invalid = || format!("invalid duration {s:?}: expected e.g. 500ms, 2s or 1m");
    let n: u64 = number.parse().map_err(|_| invalid())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(invalid),
        "" if n == 0 => Ok(Duration::ZERO),
        _ => Err(invalid()),
    }
}

/// Runs `handover demo-worker` to completion: returns `Ok` after a graceful drain, an error
/// if no socket was inherited or the runtime could not be set up. `--exit-at-boot`, `/exit`
/// and SIGQUIT end the process directly with their exit code.
pub fn run(args: DemoWorkerArgs) -> anyhow::Result<()> {
    // Before anything else: the snapshot must see the process exactly as it was spawned.
    let state = InheritedState::capture();
    // Still single-threaded here, which matters because listenfd removes LISTEN_PID and
    // LISTEN_FDS from the environment (remove_var is only sound without other threads). It
    // does not touch the fds yet: they are taken after the boot delay.
    let fds = ListenFd::from_env();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("building the tokio runtime")?;
    runtime.block_on(run_worker(args, state, fds))
}

/// The async part of [`run`].
async fn run_worker(args: DemoWorkerArgs, state: InheritedState, mut fds: ListenFd) -> anyhow::Result<()> {
    let prefix = format!("demo-worker {}", state.label());
    let notify = !args.no_notify;
    // Request outcomes go where READY=1 goes (the master's socket for workers). Like a
    // failed READY=1, a failure here is logged, not fatal: the worker still serves.
    let outcomes = Arc::new(match (notify, state.notify_socket.as_deref()) {
        (true, Some(socket)) => Outcomes::reported_to(socket, &prefix).unwrap_or_else(|e| {
            eprintln!("{prefix} cannot report request outcomes to NOTIFY_SOCKET={socket}: {e}");
            Outcomes::unreported()
        }),
        _ => Outcomes::unreported(),
    });

    // SIGQUIT means "now", during boot and drain alike, so it gets a task of its own that
    // lives as long as the process.
    let mut quit = signal(SignalKind::quit()).context("installing the SIGQUIT handler")?;
    let quit_prefix = prefix.clone();
    let quit_outcomes = outcomes.clone();
    tokio::spawn(async move {
        if quit.recv().await.is_some() {
            eprintln!("{quit_prefix} SIGQUIT, exiting immediately");
            quit_outcomes.flush();
            std::process::exit(0);
        }
    });
    // Installed before the boot delay (and so before READY=1): a stop requested at any point
    // is seen.
    let mut stop =
        StopSignals::install(args.ignore_stop, prefix.clone()).context("installing the SIGTERM/SIGINT handlers")?;

    if let Some(delay) = args.boot_delay {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            name = stop.next() => {
                eprintln!("{prefix} {name} during boot, exiting");
                return Ok(());
            }
        }
    }
    if let Some(code) = args.exit_at_boot {
        eprintln!("{prefix} exiting with code {code} at boot (--exit-at-boot)");
        std::process::exit(i32::from(code));
    }

    let listeners = take_listeners(&mut fds)?;
    if listeners.is_empty() {
        bail!(
            "no listening socket inherited (LISTEN_FDS={}, LISTEN_PID={}, our pid {}): \
             demo-worker is meant to be spawned by handover",
            state.listen_fds.as_deref().unwrap_or("unset"),
            state.listen_pid.as_deref().unwrap_or("unset"),
            state.pid
        );
    }
    let message = args.message.as_deref().unwrap_or(DEFAULT_MESSAGE);
    let mut app = App::new(message, &state);
    app.mark_dir = args.mark_dir.clone();
    app.outcomes = outcomes.clone();
    // READY=1 follows at once (below): `--errors-after` counts from here.
    let errors_from = std::time::Instant::now() + args.errors_after.unwrap_or_default();
    app.faults = Faults::new(args.error_rate.unwrap_or_default(), errors_from);
    let app = Arc::new(app);
    eprintln!("{prefix} serving {} socket(s)", listeners.len());

    let generation = state.generation.as_deref().unwrap_or("-");
    if notify && !args.never_ready {
        let status = format!("serving gen={generation}");
        notify_master(&prefix, &[NotifyState::Ready, NotifyState::Status(&status)]);
    }
    if let Some(after) = args.exit_after_ready {
        let prefix = prefix.clone();
        let outcomes = outcomes.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!("{prefix} exiting with code 3 after being ready (--exit-after-ready)");
            outcomes.flush();
            std::process::exit(3);
        });
    }
    // Lives as long as the runtime: idle (no wake-up) while nothing is answered.
    let reporter = outcomes.clone();
    tokio::spawn(async move { reporter.run().await });
    if let (true, Some(pings)) = (notify, args.watchdog_pings) {
        let prefix = prefix.clone();
        tokio::spawn(async move {
            for i in 0..pings {
                if i > 0 {
                    tokio::time::sleep(WATCHDOG_PING_INTERVAL).await;
                }
                notify_master(&prefix, &[NotifyState::Watchdog]);
            }
        });
    }

    let drain_prefix = prefix.clone();
    serve(listeners, app, async move {
        let name = stop.next().await;
        eprintln!("{drain_prefix} {name}, draining");
        if notify {
            notify_master(&drain_prefix, &[NotifyState::Stopping]);
        }
    })
    .await;
    // The last answers may still be within the report interval: say them before exiting.
    outcomes.flush();
    eprintln!("{prefix} drained, exiting");
    Ok(())
}

/// Sends `states` to `$NOTIFY_SOCKET` (nothing if unset). A failure is logged, not fatal:
/// the master then times the worker out, which is the behaviour being tested anyway.
fn notify_master(prefix: &str, states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        eprintln!("{prefix} cannot notify the master: {e}");
    }
}

/// Takes every inherited fd as a TCP or unix stream listener, in `LISTEN_FDS` order.
fn take_listeners(fds: &mut ListenFd) -> anyhow::Result<Vec<Listener>> {
    let mut listeners = Vec::with_capacity(fds.len());
    for idx in 0..fds.len() {
        // listenfd checks the socket family and type; on a mismatch it leaves the fd in place,
        // so the unix attempt can follow the TCP one.
        let tcp_err = match fds.take_tcp_listener(idx) {
            Ok(Some(l)) => {
                listeners.push(Listener::from_std_tcp(l).context("registering a TCP socket")?);
                continue;
            }
            Ok(None) => continue,
            Err(e) => e,
        };
        match fds.take_unix_listener(idx) {
            Ok(Some(l)) => listeners.push(Listener::from_std_unix(l).context("registering a unix socket")?),
            Ok(None) => {}
            Err(unix_err) => bail!(
                "inherited fd #{idx} (fd {}) is neither a TCP nor a unix stream socket: \
                 {tcp_err}; {unix_err}",
                idx + 3
            ),
        }
    }
    Ok(listeners)
}

/// SIGTERM and SIGINT, the graceful stop signals.
struct StopSignals {
    term: Signal,
    int: Signal,
    /// `--ignore-stop`: log the signals and keep going.
    ignore: bool,
    prefix: String,
}

impl StopSignals {
    /// Installs the handlers; from then on these signals no longer kill the process.
    fn install(ignore: bool, prefix: String) -> io::Result<Self> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            ignore,
            prefix,
        })
    }

    /// Waits for the next stop signal that is not ignored; returns its name.
    async fn next(&mut self) -> &'static str {
        loop {
            let name = tokio::select! {
                Some(()) = self.term.recv() => "SIGTERM",
                Some(()) = self.int.recv() => "SIGINT",
                // Both streams closed: cannot happen with tokio's unix signals, but never spin.
                else => std::future::pending().await,
            };
            if !self.ignore {
                return name;
            }
            eprintln!("{} ignoring {name} (--ignore-stop)", self.prefix);
        }
    }
}

/// A listening socket the server accepts on.
#[derive(Debug)]
pub enum Listener {
    /// A TCP (IPv4 or IPv6) listening socket.
    Tcp(TcpListener),
    /// A unix stream listening socket.
    Unix(UnixListener),
}

impl Listener {
    /// Registers an inherited TCP listener with the current tokio runtime.
    ///
    /// This sets `O_NONBLOCK`, which is a flag of the open file description shared with the
    /// master and the other workers: every async server does the same, and the master never
    /// relies on its copy being blocking.
    pub fn from_std_tcp(listener: std::net::TcpListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Listener::Tcp(TcpListener::from_std(listener)?))
    }

    /// Registers an inherited unix stream listener with the current tokio runtime (see
    /// [`Listener::from_std_tcp`] about `O_NONBLOCK`).
    pub fn from_std_unix(listener: std::os::unix::net::UnixListener) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Listener::Unix(UnixListener::from_std(listener)?))
    }
}

/// What the app answers, computed once at startup so a request costs no formatting beyond
/// its response head.
#[derive(Debug)]
pub struct App {
    /// `demo-worker gen=G slot=S pid=P`, the prefix of our log lines.
    prefix: String,
    /// Body of `GET /`.
    hello: Vec<u8>,
    /// Body of `GET /info`.
    info: Vec<u8>,
    /// How long a draining connection may stay idle ([`DRAIN_IDLE_GRACE`]; shorter in tests).
    drain_idle_grace: Duration,
    /// `--mark-dir`: where `/sleep` marks its start.
    mark_dir: Option<std::path::PathBuf>,
    /// Every answer is counted here and reported to the master.
    outcomes: Arc<Outcomes>,
    /// `--error-rate`/`--errors-after`: which requests get a 500 instead.
    faults: Faults,
    /// Test hook: told about each request as it starts, so tests wait on events rather than
    /// on sleeps. `None` outside tests.
    observer: Option<mpsc::UnboundedSender<ServerEvent>>,
}

/// What the server tells an observer (tests only).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ServerEvent {
    /// A request head was parsed and is about to be handled.
    RequestStarted { path: String },
}

impl App {
    /// Builds the app: `message` replaces "hello from handover demo" in `GET /`, `state` is
    /// what `GET /info` reports (and gives the generation, slot and pid shown by `GET /`).
    pub fn new(message: &str, state: &InheritedState) -> Self {
        let hello = format!("{message}: {}\n", state.label()).into_bytes();
        let info = match serde_json::to_vec_pretty(state) {
            Ok(mut json) => {
                json.push(b'\n');
                json
            }
            // Unreachable for this plain struct, but an error body beats a panic.
            Err(e) => format!("{{\"error\":\"cannot serialize the startup state: {e}\"}}\n").into_bytes(),
        };
        App {
            prefix: format!("demo-worker {}", state.label()),
            hello,
            info,
            drain_idle_grace: DRAIN_IDLE_GRACE,
            mark_dir: None,
            outcomes: Arc::new(Outcomes::unreported()),
            faults: Faults::none(),
            observer: None,
        }
    }

    #[cfg(test)]
    fn with_drain_idle_grace(mut self, grace: Duration) -> Self {
        self.drain_idle_grace = grace;
        self
    }

    #[cfg(test)]
    fn with_observer(mut self, observer: mpsc::UnboundedSender<ServerEvent>) -> Self {
        self.observer = Some(observer);
        self
    }
}

/// Serves `app` on `listeners` until `shutdown` completes, then drains: stops accepting
/// (dropping the listeners), lets requests in flight finish with `Connection: close`,
/// answers the next request of each idle keep-alive connection with `Connection: close`
/// (closing a connection that stays idle [`DRAIN_IDLE_GRACE`]), and returns once no
/// connection is left.
///
/// Must run inside a tokio runtime; connections are spawned as tasks (on the demo worker's
/// current-thread runtime, all on the one thread).
pub async fn serve(listeners: Vec<Listener>, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    // `true` once draining: accept loops stop, connections close after their current request.
    let (drain_tx, drain_rx) = watch::channel(false);
    // Every accept loop and connection task holds a clone of `alive_tx`; when the last one is
    // dropped, `alive_rx.recv()` returns None: the drain is complete.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    for listener in listeners {
        tokio::spawn(accept_loop(listener, app.clone(), drain_rx.clone(), alive_tx.clone()));
    }
    drop(drain_rx);
    shutdown.await;
    drain_tx.send_replace(true);
    drop(alive_tx);
    // Nothing is ever sent: this only waits for every sender to be gone.
    let _ = alive_rx.recv().await;
}

/// Waits until the server drains (or the drain sender is gone, which means the same).
async fn draining(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|&d| d).await;
}

/// Accepts connections on one listener until the drain starts, then drops the listener.
async fn accept_loop(listener: Listener, app: Arc<App>, mut drain: watch::Receiver<bool>, alive: mpsc::Sender<()>) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = draining(&mut drain) => break,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok(Accepted::Tcp(stream)) => {
                // Responses go out in one write; Nagle would only add latency to them.
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, app.clone(), drain.clone(), alive.clone()));
            }
            Ok(Accepted::Unix(stream)) => {
                tokio::spawn(serve_connection(stream, app.clone(), drain.clone(), alive.clone()));
            }
            Err(e) => match e.raw_os_error() {
                // The connection died in the queue, or a spurious wakeup: just go on.
                Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN | libc::EPROTO) => {}
                _ => {
                    eprintln!("{} accept error: {e}", app.prefix);
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
        }
    }
    // Dropping the listener closes only our fd: the socket and its queue live on in the other
    // workers and the master.
    drop(listener);
}

/// A freshly accepted connection.
enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Accepts one connection on either kind of listener.
async fn accept(listener: &Listener) -> io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// A connected stream of either kind.
trait Peer: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl Peer for TcpStream {}
impl Peer for UnixStream {}

/// What a request asks for, decided from its head before the body is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Hello,
    Info,
    Sleep(u64),
    Exit(u8),
    NotFound,
    MethodNotAllowed,
    BadQuery(&'static str),
    /// `Transfer-Encoding`: we cannot find the end of the body, so 501 and close.
    NotImplemented,
    /// `--error-rate`: this request fails on purpose.
    InjectedError,
}

impl Action {
    /// Whether `--error-rate` may fail this request: not the test hooks (`/info` must keep
    /// telling tests what the worker inherited, `/exit` must exit), nor a request whose
    /// body cannot be framed (its 501 also closes the connection).
    fn may_fail(&self) -> bool {
        !matches!(self, Action::Info | Action::Exit(_) | Action::NotImplemented)
    }
}

/// Maps a request to what the app does for it.
fn route(request: &Request<'_>) -> Action {
    if request.has_transfer_encoding {
        return Action::NotImplemented;
    }
    if request.method != "GET" && request.method != "HEAD" {
        return Action::MethodNotAllowed;
    }
    match request.path {
        "/" => Action::Hello,
        "/info" => Action::Info,
        "/sleep" => match request.query_param("ms").map(str::parse) {
            Some(Ok(ms)) => Action::Sleep(ms),
            _ => Action::BadQuery("expected /sleep?ms=<milliseconds>\n"),
        },
        // Without `code`, exit 1: the endpoint exists to simulate a crash.
        "/exit" => match request.query_param("code").map(str::parse) {
            None => Action::Exit(1),
            Some(Ok(code)) => Action::Exit(code),
            Some(Err(_)) => Action::BadQuery("expected /exit?code=<0-255>\n"),
        },
        _ => Action::NotFound,
    }
}

/// A response before it is framed.
struct Reply<'a> {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: Cow<'a, [u8]>,
    /// Close after this response whatever the client asked.
    close: bool,
    /// Exit the process with this code once the response is flushed.
    exit: Option<u8>,
}

const TEXT: &str = "text/plain; charset=utf-8";

impl<'a> Reply<'a> {
    fn text(status: u16, reason: &'static str, body: impl Into<Cow<'a, [u8]>>) -> Self {
        Reply { status, reason, content_type: TEXT, body: body.into(), close: false, exit: None }
    }
}

/// Carries out `action` (sleeping for `/sleep`) and says what to answer.
async fn perform(action: Action, app: &App) -> Reply<'_> {
    match action {
        Action::Hello => Reply::text(200, "OK", &app.hello[..]),
        Action::Info => Reply { content_type: "application/json", ..Reply::text(200, "OK", &app.info[..]) },
        Action::Sleep(ms) => {
            if let Some(dir) = &app.mark_dir {
                if let Err(e) = std::fs::write(dir.join("sleep-started"), b"") {
                    eprintln!("{} cannot mark the /sleep start in {}: {e}", app.prefix, dir.display());
                }
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Reply::text(200, "OK", format!("slept {ms} ms\n").into_bytes())
        }
        Action::Exit(code) => Reply {
            close: true,
            exit: Some(code),
            ..Reply::text(200, "OK", format!("exiting with code {code}\n").into_bytes())
        },
        Action::NotFound => Reply::text(404, "Not Found", &b"not found\n"[..]),
        Action::MethodNotAllowed => Reply::text(405, "Method Not Allowed", &b"only GET and HEAD\n"[..]),
        Action::BadQuery(why) => Reply::text(400, "Bad Request", why.as_bytes()),
        Action::NotImplemented => {
            Reply { close: true, ..Reply::text(501, "Not Implemented", &b"Transfer-Encoding is not supported\n"[..]) }
        }
        Action::InjectedError => Reply::text(500, "Internal Server Error", &b"failed on purpose (--error-rate)\n"[..]),
    }
}

/// How a connection ends.
enum End {
    /// Our final response was sent to a client that did not expect the close (drain, error):
    /// it may still be sending, so half-close and drain its input first.
    Linger,
    /// Nothing left to say (peer gone, idle at drain, I/O error): just close.
    Close,
}

/// Serves one connection: requests in order, keep-alive, graceful end on drain.
async fn serve_connection<S: Peer>(
    mut stream: S,
    app: Arc<App>,
    mut drain: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    if let End::Linger = connection_loop(&mut stream, &app, &mut drain).await {
        linger_close(&mut stream).await;
    }
    // Only now is this connection done; keep the drain waiting until here.
    drop(alive);
}

/// What the connection loop keeps of a request head once the read buffer moves on.
struct Head {
    action: Action,
    keep_alive: bool,
    http10: bool,
    head_only: bool,
    body_len: u64,
}

/// The request loop of [`serve_connection`]; says how the connection should end.
async fn connection_loop<S: Peer>(stream: &mut S, app: &App, drain: &mut watch::Receiver<bool>) -> End {
    // Reused for the whole connection: `buf[start..]` holds received bytes not yet consumed.
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut start = 0usize;
    let mut out: Vec<u8> = Vec::with_capacity(512);
    loop {
        // Serve a complete request if one is buffered (pipelining included).
        let head = match http::parse_request(&buf[start..]) {
            Ok(Parsed::Complete { request, head_len }) => {
                if let Some(observer) = &app.observer {
                    let _ = observer.send(ServerEvent::RequestStarted { path: request.path.to_owned() });
                }
                start += head_len;
                Some(Head {
                    action: route(&request),
                    keep_alive: request.keep_alive,
                    http10: request.minor_version == 0,
                    head_only: request.method == "HEAD",
                    body_len: request.content_length,
                })
            }
            Ok(Parsed::Partial) => None,
            Err(e) => {
                let (status, reason) = e.status();
                out.clear();
                http::write_response(
                    &mut out,
                    status,
                    reason,
                    TEXT,
                    format!("{e}\n").as_bytes(),
                    Persistence::Close,
                    false,
                );
                return match stream.write_all(&out).await {
                    // The rest of the oversized or garbled request may still be coming.
                    Ok(()) => {
                        app.outcomes.record(status);
                        End::Linger
                    }
                    Err(_) => End::Close,
                };
            }
        };

        if let Some(head) = head {
            // A body we cannot frame is not skipped: that reply closes the connection.
            if head.action != Action::NotImplemented {
                match skip_body(stream, &mut buf, &mut start, head.body_len).await {
                    Ok(()) => {}
                    Err(_) => return End::Close,
                }
            }
            let action = if head.action.may_fail() && app.faults.next_fails(std::time::Instant::now()) {
                Action::InjectedError
            } else {
                head.action
            };
            let reply = perform(action, app).await;
            // Checked after the work is done: a request that was in flight when the drain
            // began is answered, and told that the connection ends.
            let close = !head.keep_alive || reply.close || *drain.borrow();
            let persistence = if close { Persistence::Close } else { Persistence::KeepAlive { http10: head.http10 } };
            out.clear();
            http::write_response(
                &mut out,
                reply.status,
                reply.reason,
                reply.content_type,
                &reply.body,
                persistence,
                head.head_only,
            );
            // One write per response: the response head and body leave in one segment.
            if stream.write_all(&out).await.is_err() {
                return End::Close;
            }
            // Counted once written: the counts are what the clients received.
            app.outcomes.record(reply.status);
            if let Some(code) = reply.exit {
                let _ = stream.flush().await;
                eprintln!("{} /exit: exiting with code {code}", app.prefix);
                app.outcomes.flush();
                std::process::exit(i32::from(code));
            }
            if close {
                // A client that asked for the close sends nothing more, so there is no
                // input to wait for; one we are dropping may still be sending.
                return if head.keep_alive { End::Linger } else { End::Close };
            }
            if start == buf.len() {
                buf.clear();
                start = 0;
            }
            continue;
        }

        // Need more bytes: move the unconsumed tail to the front to keep the buffer bounded.
        if start > 0 {
            buf.drain(..start);
            start = 0;
        }
        let idle = buf.is_empty();
        let is_draining = *drain.borrow();
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let read = if idle && !is_draining {
            tokio::select! {
                biased;
                // read_buf is cancel-safe: if the drain wins, no byte was taken.
                read = stream.read_buf(&mut buf) => read,
                () = draining(drain) => continue,
            }
        } else if idle {
            // Draining and idle: wait for the client's next request (it may be on the wire
            // already) and answer it with `Connection: close`; close only after the bound.
            match tokio::time::timeout(app.drain_idle_grace, stream.read_buf(&mut buf)).await {
                Ok(read) => read,
                Err(_) => return End::Close,
            }
        } else {
            // Busy (a partial request is buffered): the request will be answered, so just
            // wait for the rest of it.
            stream.read_buf(&mut buf).await
        };
        match read {
            Ok(0) | Err(_) => return End::Close,
            Ok(_) => {}
        }
    }
}

/// Consumes a `Content-Length` body of `len` bytes that starts at `buf[*start..]`, reading
/// from `stream` what is not buffered yet. Bytes after the body stay in `buf[*start..]`: they
/// belong to the next request.
async fn skip_body<S: Peer>(stream: &mut S, buf: &mut Vec<u8>, start: &mut usize, len: u64) -> io::Result<()> {
    let buffered = (buf.len() - *start) as u64;
    if len <= buffered {
        // `len` fits in usize here: it is at most the buffer's length.
        *start += len as usize;
        return Ok(());
    }
    let mut remaining = len - buffered;
    loop {
        buf.clear();
        buf.reserve(READ_CHUNK);
        let n = stream.read_buf(buf).await? as u64;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if n <= remaining {
            remaining -= n;
            *start = buf.len();
            if remaining == 0 {
                return Ok(());
            }
        } else {
            *start = remaining as usize;
            return Ok(());
        }
    }
}

/// Ends a connection after our final response without destroying that response.
///
/// Closing a socket that still has unread input makes the kernel send RST, and a RST can make
/// the client drop the response it has not read yet. So: half-close (the client sees the end
/// of the response), then read and discard whatever the client still sends until it closes,
/// within [`LINGER_TIME`] and [`LINGER_MAX_BYTES`].
async fn linger_close<S: Peer>(stream: &mut S) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut scratch = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut discarded = 0usize;
        while discarded < LINGER_MAX_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::time::timeout;

    /// Deadline for any single wait in these tests.
    const DEADLINE: Duration = Duration::from_secs(10);

    fn test_state() -> InheritedState {
        InheritedState {
            pid: 4242,
            ppid: 1,
            pgid: 4242,
            sid: Some(1),
            listen_pid: Some("4242".into()),
            listen_fds: Some("1".into()),
            listen_fdnames: Some("http".into()),
            notify_socket: None,
            generation: Some("7".into()),
            slot: Some("2".into()),
            watchdog_usec: None,
            inherited_fds: vec![0, 1, 2, 3],
            sig_blocked: Some("0000000000000000".into()),
            sig_ignored: Some("0000000000001000".into()),
            env: BTreeMap::new(),
        }
    }

    /// A parsed response: the head (lowercased header names are not needed: tests match the
    /// exact header lines the server writes) and the body.
    #[derive(Debug)]
    struct Response {
        head: String,
        body: String,
    }

    impl Response {
        fn status(&self) -> &str {
            self.head.split(' ').nth(1).unwrap_or("")
        }
        fn closes(&self) -> bool {
            self.head.contains("\r\nConnection: close\r\n")
        }
    }

    /// Reads one response (head + Content-Length body) from `stream`, with a deadline.
    async fn read_response<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Response {
        timeout(DEADLINE, async {
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8(buf[..end + 4].to_vec()).expect("utf-8 head");
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .expect("Content-Length")
                        .trim()
                        .parse()
                        .expect("numeric Content-Length");
                    if buf.len() >= end + 4 + len {
                        let body = String::from_utf8(buf[end + 4..end + 4 + len].to_vec()).expect("utf-8");
                        buf.drain(..end + 4 + len);
                        return Response { head, body };
                    }
                }
                let n = stream.read_buf(buf).await.expect("read");
                assert!(n > 0, "EOF before a complete response: {buf:?}");
            }
        })
        .await
        .expect("response within the deadline")
    }

    /// Asserts that the server closes `stream` (EOF) within the deadline.
    async fn expect_eof<S: AsyncRead + Unpin>(stream: &mut S) {
        let mut scratch = [0u8; 64];
        let n = timeout(DEADLINE, stream.read(&mut scratch)).await.expect("close within the deadline").unwrap_or(0);
        assert_eq!(n, 0, "expected EOF, got {:?}", &scratch[..n]);
    }

    async fn wait_request(events: &mut mpsc::UnboundedReceiver<ServerEvent>, path: &str) {
        let event = timeout(DEADLINE, events.recv()).await.expect("request event within the deadline");
        assert_eq!(event, Some(ServerEvent::RequestStarted { path: path.to_owned() }));
    }

    #[test]
    fn boot_delay_parser() {
        assert_eq!(parse_boot_delay("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_boot_delay("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_boot_delay("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_boot_delay("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "ms", "1.5s", "2h", "-1s", "1 s"] {
            assert!(parse_boot_delay(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn routes() {
        let req = |buf: &'static [u8]| match http::parse_request(buf) {
            Ok(Parsed::Complete { request, .. }) => route(&request),
            other => panic!("{other:?}"),
        };
        assert_eq!(req(b"GET / HTTP/1.1\r\n\r\n"), Action::Hello);
        assert_eq!(req(b"HEAD /info HTTP/1.1\r\n\r\n"), Action::Info);
        assert_eq!(req(b"GET /sleep?ms=25 HTTP/1.1\r\n\r\n"), Action::Sleep(25));
        assert!(matches!(req(b"GET /sleep?ms=x HTTP/1.1\r\n\r\n"), Action::BadQuery(_)));
        assert_eq!(req(b"GET /exit?code=3 HTTP/1.1\r\n\r\n"), Action::Exit(3));
        assert_eq!(req(b"GET /exit HTTP/1.1\r\n\r\n"), Action::Exit(1));
        assert!(matches!(req(b"GET /exit?code=300 HTTP/1.1\r\n\r\n"), Action::BadQuery(_)));
        assert_eq!(req(b"GET /nope HTTP/1.1\r\n\r\n"), Action::NotFound);
        assert_eq!(req(b"DELETE / HTTP/1.1\r\n\r\n"), Action::MethodNotAllowed);
    }

    #[test]
    fn capture_sees_this_process() {
        let state = InheritedState::capture();
        assert_eq!(state.pid, std::process::id());
        for fd in [0, 1, 2] {
            // The test harness may close stdin; stdout and stderr are always there.
            if fd > 0 {
                assert!(state.inherited_fds.contains(&fd), "{:?}", state.inherited_fds);
            }
        }
        assert!(state.sig_blocked.is_some() && state.sig_ignored.is_some());
        assert!(!state.env.is_empty());
        let json = serde_json::to_value(&state).expect("serializable");
        for key in [
            "pid",
            "ppid",
            "pgid",
            "sid",
            "listen_pid",
            "listen_fds",
            "listen_fdnames",
            "notify_socket",
            "generation",
            "slot",
            "inherited_fds",
            "sig_blocked",
            "sig_ignored",
            "env",
        ] {
            assert!(json.get(key).is_some(), "missing /info key {key}");
        }
    }

    #[test]
    fn hello_body_names_generation_slot_and_pid() {
        let app = App::new(DEFAULT_MESSAGE, &test_state());
        assert_eq!(app.hello, b"hello from handover demo: gen=7 slot=2 pid=4242\n");
        let mut state = test_state();
        state.generation = None;
        state.slot = None;
        let app = App::new("custom", &state);
        assert_eq!(app.hello, b"custom: gen=- slot=- pid=4242\n");
    }

    /// Keep-alive, pipelining and endpoints over TCP, then a graceful stop: the in-flight
    /// `/sleep` is answered with `Connection: close`, the idle keep-alive connection is
    /// closed once it has stayed idle for the drain's grace, and `serve` returns.
    #[tokio::test]
    async fn tcp_keep_alive_and_graceful_stop() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let grace = Duration::from_millis(200);
        let app =
            Arc::new(App::new(DEFAULT_MESSAGE, &test_state()).with_observer(events_tx).with_drain_idle_grace(grace));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(vec![Listener::Tcp(listener)], app, async {
            let _ = stop_rx.await;
        }));

        // Idle-to-be connection: several keep-alive requests, two of them pipelined.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let mut idle_buf = Vec::new();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let r = read_response(&mut idle, &mut idle_buf).await;
        assert_eq!(r.status(), "200");
        assert!(!r.closes(), "{}", r.head);
        assert_eq!(r.body, "hello from handover demo: gen=7 slot=2 pid=4242\n");
        wait_request(&mut events, "/").await;
        idle.write_all(b"GET /info HTTP/1.1\r\n\r\nGET /missing HTTP/1.1\r\n\r\n").await.expect("write");
        let info = read_response(&mut idle, &mut idle_buf).await;
        assert_eq!(info.status(), "200");
        assert!(info.head.contains("Content-Type: application/json"));
        let parsed: InheritedState = serde_json::from_str(&info.body).expect("info JSON");
        assert_eq!(parsed, test_state());
        let missing = read_response(&mut idle, &mut idle_buf).await;
        assert_eq!(missing.status(), "404");
        assert!(!missing.closes());
        wait_request(&mut events, "/info").await;
        wait_request(&mut events, "/missing").await;

        // HTTP/1.0 without keep-alive: answered, then closed.
        let mut old = TcpStream::connect(addr).await.expect("connect");
        old.write_all(b"GET / HTTP/1.0\r\n\r\n").await.expect("write");
        let r = read_response(&mut old, &mut Vec::new()).await;
        assert!(r.closes(), "{}", r.head);
        expect_eof(&mut old).await;
        wait_request(&mut events, "/").await;

        // A request in flight when the stop begins.
        let mut busy = TcpStream::connect(addr).await.expect("connect");
        busy.write_all(b"GET /sleep?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        wait_request(&mut events, "/sleep").await;
        let started = Instant::now();

        stop_tx.send(()).expect("server still running");

        // The idle keep-alive connection is closed once it has stayed idle for the grace.
        expect_eof(&mut idle).await;
        assert!(started.elapsed() >= grace, "idle connection closed before the grace: {:?}", started.elapsed());
        // The in-flight request completes, told that the connection ends.
        let r = read_response(&mut busy, &mut Vec::new()).await;
        assert_eq!(r.status(), "200");
        assert_eq!(r.body, "slept 300 ms\n");
        assert!(r.closes(), "{}", r.head);
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(busy);
        timeout(DEADLINE, server).await.expect("serve returns once drained").expect("serve task");
        // The listener was dropped: nothing accepts any more.
        assert!(TcpStream::connect(addr).await.is_err());
    }

    /// `--error-rate 0.5`: every other request fails with 500 (`/info` never does, and does
    /// not count as one of them), and every answer is counted, 500s as errors.
    #[tokio::test]
    async fn error_rate_fails_its_share_and_every_answer_is_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut app = App::new(DEFAULT_MESSAGE, &test_state());
        app.faults = Faults::new(ErrorRate::parse("0.5").expect("a rate"), std::time::Instant::now());
        let app = Arc::new(app);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(vec![Listener::Tcp(listener)], app.clone(), async {
            let _ = stop_rx.await;
        }));

        let mut conn = TcpStream::connect(addr).await.expect("connect");
        let mut buf = Vec::new();
        conn.write_all(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET /info HTTP/1.1\r\n\r\n").await.expect("write");
        conn.write_all(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n").await.expect("write");
        let mut statuses = Vec::new();
        for _ in 0..6 {
            let r = read_response(&mut conn, &mut buf).await;
            assert!(!r.closes(), "a failed answer keeps the connection: {}", r.head);
            statuses.push(r.status().to_owned());
        }
        assert_eq!(statuses, ["200", "500", "200", "200", "500", "404"]);
        drop(conn);
        stop_tx.send(()).expect("server still running");
        timeout(DEADLINE, server).await.expect("serve returns once drained").expect("serve task");
        assert_eq!(app.outcomes.counts(), crate::demo::outcomes::Counts { requests: 6, errors: 2 });
    }

    /// Over a unix socket: a connection that has sent part of a request when the stop begins
    /// is busy, so it still gets its response (with `Connection: close`); an idle one is
    /// closed after the drain's grace; an oversized head gets 431.
    #[tokio::test]
    async fn unix_busy_connection_is_answered_during_drain() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("demo.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let app = Arc::new(
            App::new("unix", &test_state()).with_observer(events_tx).with_drain_idle_grace(Duration::from_millis(100)),
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(vec![Listener::Unix(listener)], app, async {
            let _ = stop_rx.await;
        }));

        // Oversized head: 431 and close.
        let mut big = UnixStream::connect(&path).await.expect("connect");
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        head.resize(http::MAX_HEAD + 100, b'a');
        big.write_all(&head).await.expect("write");
        let r = read_response(&mut big, &mut Vec::new()).await;
        assert_eq!(r.status(), "431");
        assert!(r.closes());
        drop(big);

        // A body split across reads, followed by a pipelined request.
        let mut body = UnixStream::connect(&path).await.expect("connect");
        let mut body_buf = Vec::new();
        body.write_all(b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc").await.expect("write");
        // The head was parsed from what had arrived, so the rest of the body is read later.
        wait_request(&mut events, "/x").await;
        body.write_all(b"defghijGET /nope HTTP/1.1\r\n\r\n").await.expect("write");
        assert_eq!(read_response(&mut body, &mut body_buf).await.status(), "405");
        assert_eq!(read_response(&mut body, &mut body_buf).await.status(), "404");
        wait_request(&mut events, "/nope").await;
        drop(body);

        let mut idle = UnixStream::connect(&path).await.expect("connect");
        let mut busy = UnixStream::connect(&path).await.expect("connect");
        let mut idle_buf = Vec::new();
        let mut busy_buf = Vec::new();
        // A body to skip, then a pipelined request in the same write.
        idle.write_all(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        assert_eq!(read_response(&mut idle, &mut idle_buf).await.status(), "405");
        let r = read_response(&mut idle, &mut idle_buf).await;
        assert_eq!(r.body, "unix: gen=7 slot=2 pid=4242\n");
        wait_request(&mut events, "/").await;
        wait_request(&mut events, "/").await;
        busy.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        assert!(!read_response(&mut busy, &mut busy_buf).await.closes());
        wait_request(&mut events, "/").await;

        // Half a request: on a unix socket the bytes are in the server's receive queue as
        // soon as write returns, so the server sees this connection as busy at the stop.
        busy.write_all(b"GET / HTTP/1.1\r\nHo").await.expect("write");
        stop_tx.send(()).expect("server still running");
        expect_eof(&mut idle).await;
        busy.write_all(b"st: x\r\n\r\n").await.expect("write");
        let r = read_response(&mut busy, &mut busy_buf).await;
        assert_eq!(r.status(), "200");
        assert!(r.closes(), "{}", r.head);
        expect_eof(&mut busy).await;
        // The server lingers until the client closes its side (see `linger_close`).
        drop(busy);
        timeout(DEADLINE, server).await.expect("serve returns once drained").expect("serve task");
    }

    /// The race of issue 14: a client that sends its next request on a kept-alive connection
    /// just after the drain began must get an answer (with `Connection: close`), not an EOF.
    /// The old drain closed idle connections at once, and wrk counted a read error.
    #[tokio::test]
    async fn idle_keep_alive_connection_gets_its_next_request_answered_during_drain() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let app = Arc::new(App::new(DEFAULT_MESSAGE, &test_state()).with_observer(events_tx));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(vec![Listener::Tcp(listener)], app, async {
            let _ = stop_rx.await;
        }));

        let mut conn = TcpStream::connect(addr).await.expect("connect");
        let mut buf = Vec::new();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let r = read_response(&mut conn, &mut buf).await;
        assert!(!r.closes(), "{}", r.head);
        wait_request(&mut events, "/").await;

        stop_tx.send(()).expect("server still running");
        // The drain has begun once the listener is gone (the test holds no other copy).
        timeout(DEADLINE, async {
            while TcpStream::connect(addr).await.is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the listener closes when the drain begins");

        // The idle connection's next request, sent during the drain, is answered...
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let r = read_response(&mut conn, &mut buf).await;
        assert_eq!(r.status(), "200");
        // ... and told that the connection ends, which it then does.
        assert!(r.closes(), "{}", r.head);
        expect_eof(&mut conn).await;
        drop(conn);
        timeout(DEADLINE, server).await.expect("serve returns once drained").expect("serve task");
    }
}
