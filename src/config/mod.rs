//! The configuration file (`handover.toml`, SPEC §2): parsing, validation and defaults.
//!
//! [`load`] turns a file into a validated [`Config`]: durations parsed, the worker program
//! resolved to an absolute path, the control socket path decided. Every error is a
//! [`ConfigError`] that names the file, line, column and key, so `handover check` and a
//! failed reload can point at the mistake. Loading has no side effects: a reload with an
//! invalid file changes nothing that is running.

mod checks;
mod paths;
#[cfg(test)]
mod prop_tests;
mod raw;
mod source;
mod units;
mod users;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use checks::MAX_CONFIG_BYTES;
pub use units::{format_duration, parse_duration, parse_signal, parse_size, SIGABRT, SIGKILL};

/// The longest `workers.boot_timeout`, `workers.graceful_timeout`, `workers.watchdog` and
/// `ready = "delay:…"` accepted: a day. Longer is a typo (a unit off), and a bound keeps
/// every deadline the supervisor computes far inside what the clock can represent.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The longest `workers.max_lifetime` accepted: a week (`"168h"`).
pub const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// A validated configuration, as the supervisor uses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The file this configuration was read from (absolute when given absolute).
    pub path: PathBuf,
    /// The application's name: used in logs, `status`, `STATUS=`. Default: the file stem.
    pub name: String,
    /// Where the daemon listens for control requests and where the CLI connects.
    pub control_socket: PathBuf,
    /// Optional pid file written at start and removed at exit.
    pub pidfile: Option<PathBuf>,
    /// The `[[listen]]` entries in file order. Empty: pass every inherited socket through.
    pub listen: Vec<Listen>,
    /// The `[workers]` table.
    pub workers: Workers,
    /// The `[reload]` table.
    pub reload: Reload,
    /// The `[metrics]` table.
    #[serde(default)]
    pub metrics: Metrics,
}

/// The `[metrics]` table: where handover publishes its metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Metrics {
    /// A `.prom` file in node_exporter's textfile-collector format, rewritten (temp file and
    /// rename) whenever a metric changes. `None`: no metrics are written.
    pub textfile: Option<PathBuf>,
}

/// One `[[listen]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listen {
    /// Matched against LISTEN_FDNAMES; also the FDNAME in systemd's fd store.
    pub name: String,
    /// Where to bind when systemd passed no socket of this name.
    pub address: ListenAddress,
    /// `listen(2)` backlog for sockets handover binds itself.
    pub backlog: u32,
    /// TCP_NODELAY on TCP sockets handover binds itself (accepted sockets inherit it).
    pub nodelay: bool,
}

/// The address of a listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ListenAddress {
    /// A TCP socket (`"127.0.0.1:8000"`, `"[::]:8000"`).
    Tcp(SocketAddr),
    /// A unix stream socket (`"unix:/run/app/app.sock"`).
    Unix(PathBuf),
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Tcp(a) => write!(f, "{a}"),
            ListenAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The `[workers]` table: what to run and how to judge it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workers {
    /// The argv as written (`command[0]` unresolved).
    pub command: Vec<String>,
    /// `command[0]` resolved to an absolute path at load time (PATH search done here, never
    /// after fork).
    pub program: PathBuf,
    /// How many workers a generation has.
    pub count: usize,
    /// The directory workers start in; `None`: handover's own.
    pub working_directory: Option<PathBuf>,
    /// Variables added to the inherited environment.
    pub env: BTreeMap<String, String>,
    /// When a spawned worker counts as ready.
    pub ready: ReadyMode,
    /// Spawn to ready, else the worker has failed.
    pub boot_timeout: Duration,
    /// A worker that sent `WATCHDOG=1` once must ping within this interval.
    pub watchdog: Option<Duration>,
    /// The signal that asks a worker to drain and exit (a signal number).
    pub stop_signal: i32,
    /// stop_signal to SIGKILL of the worker's process group.
    pub graceful_timeout: Duration,
    /// Recycle a worker after this long (jittered by up to 10 %).
    pub max_lifetime: Option<Duration>,
    /// Recycle a worker whose RSS, with its children, passes this many bytes.
    pub max_memory: Option<u64>,
    /// A hard memory limit per worker (`memory.max` of its cgroup, with a cgroup per
    /// worker): the kernel OOM-kills only that worker.
    pub memory_limit: Option<u64>,
    /// `user`/`group`, resolved at load time (the NSS lookups happen here, never after the
    /// clone): the identity a root master switches its workers to. `None`: handover's own.
    pub credentials: Option<Credentials>,
    /// The release this config runs, pinned when the file was read (absent from the
    /// hand-off of a version before rollback records: the configured paths).
    #[serde(default)]
    pub release: Option<Release>,
}

/// The release a generation runs: its program and working directory with every symlink in
/// their directories resolved when the config was read. Workers are spawned from these, so
/// a generation keeps running the release it started with (respawns included) after a
/// deploy moves a `current` symlink on, and `handover rollback` finds it again.
///
/// The program's own name is not resolved: a virtualenv's `bin/python` is a symlink to the
/// system's interpreter, and Python finds its virtualenv from the path it was started by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// `workers.command[0]`, its directory resolved.
    pub program: PathBuf,
    /// `workers.working_directory`, resolved; None when not set.
    pub working_directory: Option<PathBuf>,
}

impl Workers {
    /// The program a worker runs: the pinned release's, else the configured one.
    pub fn program(&self) -> &Path {
        self.release.as_ref().map_or(&self.program, |r| &r.program)
    }

    /// The directory a worker starts in: the pinned release's, else the configured one.
    pub fn working_directory(&self) -> Option<&Path> {
        match &self.release {
            Some(r) => r.working_directory.as_deref(),
            None => self.working_directory.as_deref(),
        }
    }
}

impl Release {
    /// Why this release cannot run any more (its program or directory was removed since),
    /// or None. For `handover rollback`, which must refuse clearly rather than fail at spawn.
    pub fn gone(&self) -> Option<String> {
        if !paths::is_executable(&self.program) {
            return Some(format!("{} is no longer an executable file", self.program.display()));
        }
        match &self.working_directory {
            Some(wd) if !wd.is_dir() => Some(format!("{} is no longer a directory", wd.display())),
            _ => None,
        }
    }
}

/// When a spawned worker counts as ready (`workers.ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadyMode {
    /// It sends `READY=1` to handover's NOTIFY_SOCKET.
    Notify,
    /// As soon as it has been spawned.
    Spawn,
    /// When it has stayed alive this long.
    Delay(Duration),
}

/// The `[reload]` table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reload {
    /// How a new generation replaces the old one.
    pub strategy: Strategy,
    /// With `Rolling`: how many new workers may boot at once.
    pub max_surge: usize,
    /// How long a new worker must stay up after it is ready before it counts as healthy:
    /// the reload commits (and, rolling, an old worker is retired) only for healthy workers,
    /// and a new worker that fails before it is healthy rolls the reload back. Zero: ready
    /// is healthy.
    pub min_healthy_time: Duration,
    /// The CPU priority a generation boots at beside a serving one (absent from the
    /// hand-off of a version before it: the default).
    #[serde(default)]
    pub boot_priority: BootPriority,
    /// How many new workers start first, beside the whole old generation, and must pass
    /// `canary_time` before the rest start; 0: no canary. (Absent from the hand-off of a
    /// version before canaries, as are the keys below: their defaults.)
    #[serde(default)]
    pub canary: usize,
    /// How long the canaries must stay healthy and inside the error budget.
    #[serde(default = "default_canary_time")]
    pub canary_time: Duration,
    /// The error budget: how much a canary's (or a watched generation's) share of failed
    /// requests may exceed the old generation's over the same window (0.01 = one point).
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// The budget is judged only once the judged workers served this many requests.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// After a successful reload, for this long, a crash loop or an error share over budget
    /// in the new generation rolls it back by itself; zero: not watched.
    #[serde(default)]
    pub watch: Duration,
}

/// `reload.canary_time` when the file does not say.
pub const DEFAULT_CANARY_TIME: Duration = Duration::from_secs(30);
/// Upper bound for `reload.canary_time`.
pub const MAX_CANARY_TIME: Duration = Duration::from_secs(3600);
/// `reload.max_error_rate` when the file does not say.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.01;
/// `reload.min_requests` when the file does not say.
pub const DEFAULT_MIN_REQUESTS: u64 = 50;
/// Upper bound for `reload.watch`.
pub const MAX_WATCH: Duration = Duration::from_secs(24 * 3600);

impl Default for Reload {
    /// What a config without a `[reload]` table gets (with `ready = "notify"`).
    fn default() -> Reload {
        Reload {
            strategy: Strategy::AllAtOnce,
            max_surge: 1,
            min_healthy_time: Duration::ZERO,
            boot_priority: BootPriority::default(),
            canary: 0,
            canary_time: DEFAULT_CANARY_TIME,
            max_error_rate: DEFAULT_MAX_ERROR_RATE,
            min_requests: DEFAULT_MIN_REQUESTS,
            watch: Duration::ZERO,
        }
    }
}

fn default_canary_time() -> Duration {
    DEFAULT_CANARY_TIME
}

fn default_max_error_rate() -> f64 {
    DEFAULT_MAX_ERROR_RATE
}

fn default_min_requests() -> u64 {
    DEFAULT_MIN_REQUESTS
}

/// `reload.boot_priority`: the CPU priority of workers that boot while others serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BootPriority {
    /// The lowest CPU weight until ready (or until half the boot_timeout passed), so that
    /// the serving workers keep the CPU while the new code imports.
    #[default]
    Low,
    /// The same priority as every other worker.
    Normal,
}

/// `reload.strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Start the whole new generation; retire the old one once all are ready.
    AllAtOnce,
    /// Start `max_surge` new workers at a time; retire one old worker per new ready one.
    Rolling,
}

/// A configuration error, pointing at the file, line, column and key.
///
/// Displayed as `file:line:col: key: why` (line and column 1-based); `line`/`col` are 0 when
/// the error is about the file as a whole (unreadable, say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{col}: {key}: {message}", file.display())]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line, 0 if none applies.
    pub line: usize,
    /// 1-based column, 0 if none applies.
    pub col: usize,
    /// The dotted key (`workers.count`, `listen[1].address`), or `(file)`/`(syntax)`.
    pub key: String,
    /// What is wrong, in words.
    pub message: String,
}

/// What the environment contributes to defaults; a snapshot so that loading is pure.
#[derive(Debug, Clone, Default)]
pub struct LoadEnv {
    /// `$RUNTIME_DIRECTORY` (set by systemd's `RuntimeDirectory=`).
    pub runtime_directory: Option<PathBuf>,
    /// `$XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<PathBuf>,
    /// Whether we run as root (uid 0).
    pub is_root: bool,
    /// `$PATH`, for resolving `workers.command[0]`.
    pub path: Option<std::ffi::OsString>,
    /// Our effective uid and gid: a master that is not root can run workers only as itself.
    pub ids: (u32, u32),
    /// sysconf(_SC_ARG_MAX): the bytes execve(2) takes for arguments and environment
    /// together. None: not checked.
    pub arg_max: Option<usize>,
}

impl LoadEnv {
    /// Reads the snapshot from this process's environment.
    pub fn from_process() -> LoadEnv {
        LoadEnv {
            runtime_directory: std::env::var_os("RUNTIME_DIRECTORY")
                // systemd joins several RuntimeDirectory= entries with ':'; the first is ours.
                .and_then(|v| v.to_str().and_then(|s| s.split(':').next()).map(PathBuf::from)),
            xdg_runtime_dir: std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
            is_root: nix::unistd::geteuid().is_root(),
            path: std::env::var_os("PATH"),
            ids: (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()),
            // SAFETY: sysconf has no preconditions; -1 (no limit, or an error) becomes None.
            arg_max: usize::try_from(unsafe { libc::sysconf(libc::_SC_ARG_MAX) }).ok().filter(|n| *n > 0),
        }
    }
}

/// The user, group and supplementary groups a worker runs as, resolved before the spawn.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    /// The user id (setresuid).
    pub uid: libc::uid_t,
    /// The primary group id (setresgid).
    pub gid: libc::gid_t,
    /// The supplementary groups (setgroups), the primary one included.
    pub groups: Vec<libc::gid_t>,
}

/// Why a worker running as `who` could not get to `path` (a program to execute, or a
/// directory to start in), judged from mode bits; `None` when nothing stands in the way.
/// For `handover check`'s warnings: ACLs are not read.
pub fn denied_to(path: &Path, who: &Credentials) -> Option<String> {
    paths::denied_to(path, who)
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path, env: &LoadEnv) -> Result<Config, ConfigError> {
    let text = raw::read(path)?;
    parse(path, &text, env)
}

/// Validates `text` as the contents of the config file `path`.
pub fn parse(path: &Path, text: &str, env: &LoadEnv) -> Result<Config, ConfigError> {
    raw::parse(path, text, env)
}

/// What a client command learns from a config file, read leniently.
#[derive(Debug, Clone)]
pub struct ClientView {
    /// The control socket path.
    pub control_socket: PathBuf,
    /// The error passed over to find it (a syntax error elsewhere in the file, a `name` of
    /// the wrong type), for a warning: the daemon will refuse the file at its next reload.
    pub skipped: Option<ConfigError>,
}

/// The control socket path for the config at `path`, read leniently: only `name` and
/// `control_socket` are looked at, so a client can still reach the daemon while the file
/// has an error elsewhere; a file that does not parse at all has those two keys taken from
/// their lines. Errors: the file cannot be read, `control_socket` is not a string, or no
/// default applies.
pub fn control_socket_of(path: &Path, env: &LoadEnv) -> Result<ClientView, ConfigError> {
    raw::control_socket_of(path, env)
}
