//! `handover upgrade` (SPEC §5): the daemon replaces its own binary in place. Same pid, so
//! systemd's `MAINPID`, `NotifyAccess=main`, the watchdog and the workers' parent all stay
//! valid; the workers never notice.
//!
//! ```text
//!  upgrade asked ──→ pre-flight: run the new binary's `handoff-check` with the format
//!  (control, SIGUSR2)  version, the config path and today's hand-off on stdin; it must
//!                      answer {"accepts":true}. Anything else: exit 1, nothing changed.
//!                 ──→ wait until no reload runs or is queued (reloads asked meanwhile are
//!                      held for the new binary)
//!                 ──→ block every signal, write the hand-off (a versioned JSON
//!                      [`HandOff`]) to a memfd, clear close-on-exec on the fds it names,
//!                      execve(the path we started from)
//!  new binary     ──→ `run` finds HANDOVER_HANDOFF_FD, adopts the fds, rebuilds the machine
//!                      (deadlines re-armed from CLOCK_MONOTONIC), takes pidfds on the workers
//!                      (still its children), reaps those that died meanwhile, installs its
//!                      signal handlers, unblocks signals (pending ones arrive now), answers
//!                      the `handover upgrade` that waits on the handed-over connection.
//! ```
//!
//! This module holds the format, the pre-flight and the exec; the supervisor's executor
//! drives them ([`crate::supervisor`]); the machine only provides its state as plain data
//! ([`crate::machine::snapshot`]).
//!
//! # Format versions
//! The hand-off is versioned by [`HANDOFF_FORMAT`]. A binary reads every format from
//! [`OLDEST_HANDOFF_FORMAT`] to its own (new fields have defaults), so an upgrade to a newer
//! handover always works; a binary refuses a format newer than its own in the pre-flight, so
//! a downgrade across a format change fails with exit 1 and the running binary goes on
//! (`systemctl restart` is the way back then).
pub mod exec;
pub mod preflight;

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::machine::snapshot::MachineState;
pub use crate::VERSION;

/// The hand-off format this binary writes (and the newest it reads). A build can bump it
/// with `HANDOVER_HANDOFF_FORMAT=N` at compile time (the tests build such a binary to prove
/// that a format mismatch is refused cleanly).
pub const HANDOFF_FORMAT: u32 = match option_env!("HANDOVER_HANDOFF_FORMAT") {
    Some(v) => parse_u32(v),
    None => 1,
};

/// The oldest format this binary reads.
pub const OLDEST_HANDOFF_FORMAT: u32 = 1;

/// The environment variable that tells `handover run` it is the new binary of an upgrade:
/// the number of the memfd holding the [`HandOff`].
pub const HANDOFF_FD_VAR: &str = "HANDOVER_HANDOFF_FD";

/// The largest hand-off read (a 4,096-worker daemon writes about 2 MiB).
pub const MAX_HANDOFF_BYTES: u64 = 64 << 20;

/// How long the new binary's pre-flight may take.
pub const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut n: u32 = 0;
    while i < b.len() {
        assert!(b[i].is_ascii_digit(), "HANDOVER_HANDOFF_FORMAT must be a number");
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    n
}

/// Everything the new binary needs to go on where the old one stopped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandOff {
    /// [`HANDOFF_FORMAT`] of the binary that wrote it.
    pub format: u32,
    /// The version of the binary that wrote it.
    pub from_version: String,
    /// The binary's path as resolved when the daemon first started (what the next upgrade
    /// executes again).
    pub binary: PathBuf,
    /// The config file.
    pub config_path: PathBuf,
    /// When the daemon first started (seconds since the epoch).
    pub started_unix: f64,
    /// Upgrades so far, this one included.
    pub upgrades: u32,
    /// CLOCK_MONOTONIC just before the exec (ns): the new binary logs the hand-off's length.
    pub exec_monotonic_ns: u64,
    /// The state machine.
    pub machine: MachineState,
    /// The listening sockets, by fd.
    pub sockets: Vec<crate::sockets::SocketRecord>,
    /// The control socket's listening fd.
    pub control_fd: RawFd,
    /// The workers' notify socket's fd.
    pub notify_fd: RawFd,
    /// Control connections waiting for an answer.
    pub connections: Vec<ConnectionRecord>,
    /// A SIGHUP arrived during the upgrade: the new binary reloads.
    pub reload_pending: bool,
    /// The control server's next request id.
    pub next_request: u64,
    /// What systemd told us at start (the variables are gone from the environment).
    pub systemd: SystemdRecord,
    /// The `[metrics]` counters, so that they do not restart from zero.
    #[serde(default)]
    pub metrics: Option<crate::metrics::MetricsState>,
    /// The cgroup per worker (where handover's cgroup is delegated): the tree and which
    /// cgroup each worker runs in.
    #[serde(default)]
    pub cgroups: Option<crate::cgroup::Tree>,
    /// The uid/gid the workers' notify socket was given to (`[workers] user`).
    #[serde(default)]
    pub notify_owner: Option<(u32, u32)>,
    /// SIGTTIN (+1) and SIGTTOU (-1) that arrived while the upgrade was prepared, in order:
    /// held, so that the slots handed over are the ones the pre-flight checked, and applied
    /// by the binary that goes on. (A binary before issue 19 ignores the field: it raised
    /// the signals again, pending across the exec, and coalesced.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_scale: Vec<i64>,
    /// The version before the last upgrade that went through, and since when this version
    /// runs: what the writer reports again if the hand-off comes back to it.
    #[serde(default)]
    pub upgraded_from: Option<String>,
    /// See `upgraded_from`.
    #[serde(default)]
    pub version_since_unix: Option<f64>,
    /// Not part of the format: set when the new binary handed this hand-off back to the
    /// binary that wrote it, with its reason (see [`exec`]).
    #[serde(skip)]
    pub returned: Option<String>,
}

/// A control connection in a [`HandOff`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionRecord {
    /// Its descriptor, open across the exec.
    pub fd: RawFd,
    /// What it waits for.
    pub waits_for: Waits,
}

/// What a handed-over connection waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Waits {
    /// The answer to its `upgrade`.
    Upgrade,
    /// The answer to a request the old binary received but did not handle (a reload held
    /// during the upgrade, or any request that arrived in its last moments).
    Request(crate::control::proto::Request),
}

/// systemd's side, as snapshotted when the daemon first started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SystemdRecord {
    /// `$NOTIFY_SOCKET`.
    pub notify_socket: Option<String>,
    /// `$WATCHDOG_USEC` (when it was for us).
    pub watchdog: Option<Duration>,
    /// `$FDSTORE` was set.
    pub fdstore_enabled: bool,
}

/// One reading of [`Instant`](std::time::Instant) and `CLOCK_MONOTONIC` together (see [`crate::machine::snapshot`]).
pub fn time_base() -> crate::machine::snapshot::TimeBase {
    let instant = std::time::Instant::now();
    let monotonic_ns = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64))
        .unwrap_or(0);
    crate::machine::snapshot::TimeBase { instant, monotonic_ns }
}

impl HandOff {
    /// Every descriptor the hand-off names (they must stay open across the exec).
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.sockets.iter().map(|s| s.fd).collect();
        fds.push(self.control_fd);
        fds.push(self.notify_fd);
        fds.extend(self.connections.iter().map(|c| c.fd));
        fds
    }

    /// Whether this binary can take the hand-off over: everything that taking it over
    /// checks, done before anything is taken, so that a refusal can still hand it back
    /// (see [`exec`]): the machine rebuilds, an active generation exists, every descriptor
    /// named is an open socket and the control and notify sockets are distinct.
    pub fn acceptable(&self) -> Result<(), String> {
        if !self.machine.generations.iter().any(|g| g.number == self.machine.active) {
            return Err("no active generation in the hand-off".into());
        }
        if self.control_fd == self.notify_fd {
            return Err(format!("bad descriptors {} and {}", self.control_fd, self.notify_fd));
        }
        for fd in self.fds() {
            if fd <= 2 {
                return Err(format!("descriptor {fd} cannot be a socket handed over"));
            }
            let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
            // SAFETY: fstat(2) on a descriptor number (EBADF if it is not open) writing into
            // a buffer of the right type and size, read only if the call succeeded.
            if unsafe { libc::fstat(fd, st.as_mut_ptr()) } < 0 {
                return Err(format!("descriptor {fd}: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: fstat succeeded, so it filled the buffer.
            let mode = unsafe { st.assume_init() }.st_mode;
            if mode & libc::S_IFMT != libc::S_IFSOCK {
                return Err(format!("descriptor {fd} is not a socket"));
            }
        }
        let base = time_base();
        crate::machine::Machine::restore(self.machine.clone(), &base, base.instant)
            .map(drop)
            .map_err(|e| format!("the daemon's state cannot be taken over: {e}"))
    }

    /// Parses a hand-off, refusing formats this binary does not read.
    pub fn parse(bytes: &[u8]) -> Result<HandOff, String> {
        #[derive(Deserialize)]
        struct Header {
            format: u32,
        }
        let header: Header = serde_json::from_slice(bytes).map_err(|e| format!("not a hand-off: {e}"))?;
        check_format(header.format)?;
        serde_json::from_slice(bytes).map_err(|e| format!("hand-off format {}: {e}", header.format))
    }
}

/// Ok if this binary reads hand-off format `format`; else the reason, for the pre-flight.
pub fn check_format(format: u32) -> Result<(), String> {
    if (OLDEST_HANDOFF_FORMAT..=HANDOFF_FORMAT).contains(&format) {
        Ok(())
    } else {
        Err(format!(
            "handover {VERSION} reads hand-off formats {OLDEST_HANDOFF_FORMAT} to {HANDOFF_FORMAT}, not {format}: \
             restart the service to change to this binary"
        ))
    }
}

/// The path of the binary the daemon runs, resolved at start (SPEC §5): `argv[0]` made
/// absolute (searched in `$PATH` when it has no `/`) without resolving symlinks, so that a
/// package upgrade renaming a new file over `/usr/bin/handover`, or a symlink switched to a
/// new release, is what the next upgrade executes. If that path is not the file we run
/// (`argv[0]` is not a path to us), `/proc/self/exe` as it reads now, at start.
pub fn resolve_binary(argv0: &OsString, path_var: Option<&OsString>) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let arg = Path::new(argv0);
    let candidate = if arg.as_os_str().is_empty() {
        None
    } else if arg.components().count() > 1 || arg.is_absolute() {
        // `./handover` → `/dir/handover` (components() drops the `.`s; `..` is kept).
        std::env::current_dir().ok().map(|cwd| cwd.join(arg.components().collect::<PathBuf>()))
    } else {
        path_var.and_then(|p| std::env::split_paths(p).map(|d| d.join(arg)).find(|c| c.is_file()))
    };
    let me = std::fs::metadata("/proc/self/exe").ok();
    if let (Some(c), Some(me)) = (candidate, &me) {
        if let Ok(m) = std::fs::metadata(&c) {
            if (m.dev(), m.ino()) == (me.dev(), me.ino()) {
                return Some(c);
            }
        }
    }
    std::fs::read_link("/proc/self/exe").ok()
}

/// What `handoff-check` answers, one JSON line on stdout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckAnswer {
    /// Whether the binary accepts the hand-off.
    pub accepts: bool,
    /// Its version.
    pub version: String,
    /// Its own hand-off format.
    pub format: u32,
    /// Why it refuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `handover handoff-check --format N --config FILE` (hidden; the pre-flight): does this
/// binary accept a hand-off of format N for that config? The hand-off as it would be now is
/// on stdin; it is parsed and the machine rebuilt from it (nothing is adopted). Prints a
/// [`CheckAnswer`]; exit 0 when it accepts.
pub fn handoff_check(format: u32, config: &Path) -> i32 {
    let verdict = (|| -> Result<(), String> {
        check_format(format)?;
        crate::config::load(config, &crate::config::LoadEnv::from_process()).map_err(|e| e.to_string())?;
        let mut bytes = Vec::new();
        use std::io::Read;
        std::io::stdin()
            .take(MAX_HANDOFF_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading the hand-off on stdin: {e}"))?;
        let handoff = HandOff::parse(&bytes)?;
        let base = time_base();
        crate::machine::Machine::restore(handoff.machine, &base, base.instant)
            .map_err(|e| format!("the daemon's state cannot be taken over: {e}"))?;
        Ok(())
    })();
    let answer = CheckAnswer {
        accepts: verdict.is_ok(),
        version: VERSION.to_string(),
        format: HANDOFF_FORMAT,
        reason: verdict.err(),
    };
    match serde_json::to_string(&answer) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("handover: {e}"),
    }
    if answer.accepts {
        crate::EXIT_OK
    } else {
        crate::EXIT_FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_outside_the_readable_range_are_refused_with_a_way_out() {
        assert!(check_format(HANDOFF_FORMAT).is_ok());
        assert!(check_format(OLDEST_HANDOFF_FORMAT).is_ok());
        let e = check_format(HANDOFF_FORMAT + 1).expect_err("newer");
        assert!(e.contains("restart the service"), "{e}");
        assert!(check_format(0).is_err());
        assert!(HandOff::parse(b"{\"format\":99999}").expect_err("newer").contains("not 99999"));
        assert!(HandOff::parse(b"garbage").expect_err("junk").contains("not a hand-off"));
    }

    #[test]
    fn the_binary_path_keeps_symlinks_and_falls_back_to_proc() {
        let me = std::fs::read_link("/proc/self/exe").expect("exe");
        let dir = tempfile::tempdir().expect("tempdir");
        let link = dir.path().join("handover-link");
        std::os::unix::fs::symlink(&me, &link).expect("symlink");
        assert_eq!(resolve_binary(&link.clone().into_os_string(), None), Some(link));
        // Found in PATH by name.
        let path_var = OsString::from(dir.path());
        assert_eq!(
            resolve_binary(&OsString::from("handover-link"), Some(&path_var)),
            Some(dir.path().join("handover-link"))
        );
        // argv[0] naming something else: /proc/self/exe.
        assert_eq!(resolve_binary(&OsString::from("/bin/sh"), None), Some(me));
    }

    #[test]
    fn the_compile_time_format_parses() {
        assert_eq!(parse_u32("1"), 1);
        assert_eq!(parse_u32("42"), 42);
    }
}
