//! Worker processes: spawning them per the worker contract (SPEC §4), hearing from them,
//! signalling and reaping them.
//!
//! - [`spawn`]: the fenced fork/exec (the only `unsafe` process code).
//! - [`readiness`]: handover's NOTIFY_SOCKET for workers.
//! - [`Launcher`]: turns a [`SpawnRequest`] into a [`spawn::SpawnSpec`] (environment,
//!   sockets, working directory).
pub mod readiness;
pub mod spawn;

use std::ffi::OsString;
use std::path::PathBuf;

use crate::sockets::Sockets;
use crate::supervisor::machine::{Pid, SpawnRequest};

/// What every spawn shares: handover's environment (without systemd's variables) and the
/// path of its worker NOTIFY_SOCKET.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// handover's environment as snapshotted at start, systemd's variables removed.
    pub base_env: Vec<(OsString, OsString)>,
    /// The worker NOTIFY_SOCKET path.
    pub notify_socket: PathBuf,
}

impl Launcher {
    /// Spawns the worker described by `req` with the sockets of its generation's config.
    pub fn launch(&self, req: &SpawnRequest, sockets: &Sockets) -> Result<Pid, String> {
        let fds = sockets.fds_for(&req.config).map_err(|e| e.to_string())?;
        let names: Vec<&str> = fds.iter().map(|(n, _)| *n).collect();
        let protocol = [
            ("LISTEN_FDS", fds.len().to_string()),
            ("LISTEN_FDNAMES", names.join(":")),
            ("NOTIFY_SOCKET", self.notify_socket.to_string_lossy().into_owned()),
            ("HANDOVER_GENERATION", req.generation.to_string()),
            ("HANDOVER_WORKER_SLOT", req.slot.to_string()),
        ];
        let wc = &req.config.workers;
        let spec = spawn::SpawnSpec {
            program: &wc.program,
            argv: &wc.command,
            env: spawn::worker_env(&self.base_env, &wc.env, &protocol),
            fds: fds.iter().map(|(_, fd)| *fd).collect(),
            cwd: wc.working_directory.as_deref(),
        };
        spawn::spawn(&spec).map_err(|e| e.to_string())
    }
}

/// Sends `signal` to the process `pid` (not its group). ESRCH (already gone) is fine.
pub fn signal_process(pid: Pid, signal: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions; pid is one of our unreaped
    // children (the supervisor forgets a pid only after reaping it), so it cannot have been
    // reused by another process.
    let r = unsafe { libc::kill(pid, signal) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// SIGKILLs the process group `pgid` (a worker and everything it forked); also the worker
/// itself, in case it left its group.
pub fn kill_process_group(pgid: Pid) {
    // SAFETY: as in `signal_process`; a negative pid addresses the group whose id is the
    // worker's pid, created by `spawn` with setpgid(0, 0).
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
        libc::kill(pgid, libc::SIGKILL);
    }
}

/// The resident memory of a process group, in bytes: the sum of RSS over every process
/// whose process group is `pgid` (a worker with the children it forked).
pub fn group_rss_bytes(pgid: Pid) -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let mut total = 0;
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the ")" that closes comm: state ppid pgrp ... rss is field 24.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2).and_then(|f| f.parse::<i32>().ok()) != Some(pgid) {
            continue;
        }
        if let Some(rss) = fields.get(21).and_then(|f| f.parse::<u64>().ok()) {
            total += rss * page;
        }
    }
    total
}

/// The process group of `pid`, if it still exists.
pub fn process_group_of(pid: Pid) -> Option<Pid> {
    nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).ok().map(|p| p.as_raw())
}
