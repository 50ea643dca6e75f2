//! Worker processes: spawning them per the worker contract (SPEC §4), hearing from them,
//! signalling and reaping them.
//!
//! - [`spawn`]: the fenced fork/exec (the only `unsafe` process code).
//! - [`readiness`]: handover's NOTIFY_SOCKET for workers.
//! - [`priority`]: the CPU priority of workers that boot beside serving ones.
//! - [`connections`]: the client connections a worker still holds (draining, visible).
//! - [`WorkerProcess`]: a spawned worker's pidfd, through which it is signalled.
//! - [`Launcher`]: turns a [`SpawnRequest`] into a [`spawn::SpawnSpec`] (environment,
//!   sockets, working directory).
pub mod connections;
pub mod priority;
pub mod readiness;
pub mod spawn;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::machine::{Pid, SpawnRequest};
use crate::sockets::Sockets;

/// What every spawn shares: handover's environment (without systemd's variables) and the
/// path of its worker NOTIFY_SOCKET.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// handover's environment as snapshotted at start, systemd's variables removed.
    pub base_env: Vec<(OsString, OsString)>,
    /// The worker NOTIFY_SOCKET path.
    pub notify_socket: PathBuf,
    /// Who owns the NOTIFY_SOCKET file now (uid, gid): it is given to the workers' identity
    /// before they are spawned (sending needs write permission on it). `None`: as bound.
    pub notify_owner: Option<(u32, u32)>,
    /// The nice value a worker spawned with `low_priority` starts at, where nice values are
    /// how booting workers are lowered ([`priority::Lowering::child_nice`]).
    pub boot_nice: Option<i32>,
}

impl Launcher {
    /// Spawns the worker described by `req` with the sockets of its generation's config;
    /// returns the handle to signal it through.
    pub fn launch(
        &self,
        req: &SpawnRequest,
        sockets: &Sockets,
        cgroup: Option<BorrowedFd<'_>>,
        resets: Option<&spawn::SignalResets>,
    ) -> Result<WorkerProcess, String> {
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
            program: wc.program(),
            argv: &wc.command,
            env: spawn::worker_env(&self.base_env, &wc.env, &protocol),
            fds: fds.iter().map(|(_, fd)| *fd).collect(),
            cwd: wc.working_directory(),
            credentials: wc.credentials.as_ref(),
            cgroup,
            resets,
            nice: if req.low_priority { self.boot_nice } else { None },
        };
        spawn::spawn(&spec).map(WorkerProcess::from_spawned).map_err(|e| e.to_string())
    }

    /// Spawns every worker of `reqs`, on up to [`SPAWN_THREADS`] threads at once (as many
    /// as there are CPUs): each spawn waits for its child's exec, which on one thread
    /// serialises the execs; in parallel they overlap as a plain fork+exec loop's do, and
    /// every exec error is still known when this returns. The results are in `reqs`' order.
    ///
    /// `cgroups`, when not empty, has for each request the cgroup to start it in.
    ///
    /// With `meanwhile`, the calling thread does not only wait: whenever the fd it watches
    /// becomes readable while the spawner threads run, it calls its `on_readable` (the
    /// supervisor reads the workers' early READY=1 so that they do not block on a full
    /// notify socket queue, see `supervisor::spawning`).
    pub fn launch_all(
        &mut self,
        reqs: &[SpawnRequest],
        sockets: &Sockets,
        cgroups: &[Option<OwnedFd>],
        meanwhile: Option<Meanwhile<'_>>,
    ) -> Vec<Result<WorkerProcess, String>> {
        let cgroup_of = |i: usize| cgroups.get(i).and_then(|c| c.as_ref()).map(|fd| fd.as_fd());
        // The newest identity asked for gets the socket (a batch holds one generation's).
        if let Some(last) = reqs.last() {
            if let Err(e) = self.give_notify_socket(last.config.workers.credentials.as_ref()) {
                return reqs.iter().map(|_| Err(e.clone())).collect();
            }
        }
        let this = &*self;
        // Which signals the children must reset, asked once for the whole batch.
        let resets = spawn::SignalResets::query();
        let resets = Some(&resets);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = cpus.min(SPAWN_THREADS).min(reqs.len());
        if threads <= 1 {
            return reqs.iter().enumerate().map(|(i, r)| this.launch(r, sockets, cgroup_of(i), resets)).collect();
        }
        let mut results: Vec<Option<Result<WorkerProcess, String>>> = Vec::new();
        results.resize_with(reqs.len(), || None);
        // Each spawner thread adds 1 to `finished` when it ends (panicking or not), so the
        // calling thread can wait for "all done" and its watched fd at once.
        let finished = match meanwhile {
            Some(_) => EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK).ok(),
            None => None,
        };
        std::thread::scope(|scope| {
            let finished = finished.as_ref();
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let spawner = std::thread::Builder::new().name("spawner".into());
                    spawner.spawn_scoped(scope, move || {
                        let _done = finished.map(Finished);
                        reqs.iter()
                            .enumerate()
                            .skip(t)
                            .step_by(threads)
                            .map(|(i, r)| (i, this.launch(r, sockets, cgroup_of(i), resets)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            if let (Some(m), Some(finished)) = (meanwhile, finished) {
                let started = handles.iter().filter(|h| h.is_ok()).count() as u64;
                m.run_until(finished, started);
            }
            for (t, handle) in handles.into_iter().enumerate() {
                match handle {
                    Ok(h) => match h.join() {
                        Ok(done) => done.into_iter().for_each(|(i, r)| results[i] = Some(r)),
                        Err(_) => {
                            // A panicking spawner (a bug): its requests are reported failed.
                        }
                    },
                    // No thread: this thread does that share itself.
                    Err(_) => {
                        for (i, r) in reqs.iter().enumerate().skip(t).step_by(threads) {
                            results[i] = Some(this.launch(r, sockets, cgroup_of(i), resets));
                        }
                    }
                }
            }
        });
        results.into_iter().map(|r| r.unwrap_or_else(|| Err("the spawning thread panicked".to_owned()))).collect()
    }
}

/// What the calling thread of [`Launcher::launch_all`] does while the spawner threads run.
pub struct Meanwhile<'a> {
    /// The fd to watch (the workers' notify socket).
    pub watch: BorrowedFd<'a>,
    /// Called whenever `watch` is readable; returns whether to go on watching (`false`:
    /// it wants no more now, and the rest waits for the event loop).
    pub on_readable: &'a mut dyn FnMut() -> bool,
}

impl Meanwhile<'_> {
    /// Serves `watch` until `threads` spawner threads have counted themselves finished on
    /// `finished` (or polling fails, when the caller's join simply waits).
    fn run_until(self, finished: &EventFd, threads: u64) {
        let Meanwhile { watch, on_readable } = self;
        let (mut done, mut watching) = (0u64, true);
        while done < threads {
            let mut fds = vec![PollFd::new(finished.as_fd(), PollFlags::POLLIN)];
            if watching {
                fds.push(PollFd::new(watch, PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            if fds.get(1).is_some_and(ready) {
                watching = on_readable();
            }
            if ready(&fds[0]) {
                match finished.read() {
                    Ok(n) => done += n,
                    Err(nix::errno::Errno::EAGAIN) => {}
                    Err(_) => return,
                }
            }
        }
    }
}

/// Counts a spawner thread finished when dropped (also when the thread panics).
struct Finished<'a>(&'a EventFd);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        let _ = self.0.write(1);
    }
}

impl Launcher {
    /// Makes the NOTIFY_SOCKET file belong to the workers' uid and gid (mode 0600 stays):
    /// they can send to it, other users still cannot (root can anyway), and the sender of
    /// every datagram is authenticated by its SCM_CREDENTIALS pid regardless. Only a root
    /// master has workers of another identity (the config check refuses it otherwise).
    fn give_notify_socket(&mut self, credentials: Option<&crate::config::Credentials>) -> Result<(), String> {
        let wanted = match credentials {
            Some(c) => (c.uid, c.gid),
            None if self.notify_owner.is_none() => return Ok(()), // still as bound: ours
            None => (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw()),
        };
        if self.notify_owner == Some(wanted) {
            return Ok(());
        }
        std::os::unix::fs::chown(&self.notify_socket, Some(wanted.0), Some(wanted.1)).map_err(|e| {
            format!(
                "giving the notify socket {} to uid {} gid {}: {e}",
                self.notify_socket.display(),
                wanted.0,
                wanted.1
            )
        })?;
        self.notify_owner = Some(wanted);
        Ok(())
    }
}

/// The most threads [`Launcher::launch_all`] spawns on at once.
pub const SPAWN_THREADS: usize = 4;

/// A spawned, not yet reaped worker, and the only way the supervisor signals it.
///
/// It holds a pidfd (pidfd_open(2), taken right after the spawn, while the child cannot have
/// been reaped: only the supervisor's event loop reaps, and it is the caller). Signals go
/// through the pidfd, so they reach this process or nobody: never a later process that
/// reused the pid. On kernels without pidfds (before 5.3: ENOSYS) it falls back to kill(2),
/// which is safe for the same reason as long as the handle is dropped when the worker is
/// reaped, which the supervisor does (dropping closes the pidfd).
#[derive(Debug)]
pub struct WorkerProcess {
    pid: Pid,
    pidfd: Option<OwnedFd>,
}

impl WorkerProcess {
    /// Takes a handle on our unreaped child `pid`.
    pub fn open(pid: Pid) -> WorkerProcess {
        WorkerProcess { pid, pidfd: pidfd_open(pid) }
    }

    /// The handle of a child just spawned: the pidfd its clone returned, or one opened now
    /// (the child cannot have been reaped yet: only the supervisor's event loop reaps, and it
    /// is the caller).
    pub fn from_spawned(spawned: spawn::Spawned) -> WorkerProcess {
        match spawned.pidfd {
            Some(fd) => WorkerProcess { pid: spawned.pid, pidfd: Some(fd) },
            None => WorkerProcess::open(spawned.pid),
        }
    }

    /// Its pid (also its process group id).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Whether signals go through a pidfd (false on kernels without pidfd_open).
    pub fn has_pidfd(&self) -> bool {
        self.pidfd.is_some()
    }

    /// Sends `signal` to the worker (not its group). A worker that has exited but is not
    /// reaped yet is fine (ESRCH is ignored).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        let r = match &self.pidfd {
            // SAFETY: pidfd_send_signal(2) with a pidfd we own, a null siginfo (the kernel
            // fills in a SI_USER one, as kill does) and no flags; no memory is passed.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                )
            },
            // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our unreaped child
            // (the handle is dropped when it is reaped), so the pid cannot have been reused.
            None => unsafe { libc::kill(self.pid, signal) as libc::c_long },
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// SIGKILLs the worker's process group (the worker and everything it forked that stayed
    /// in its group), then the worker itself in case it left its group.
    ///
    /// Sound only while the worker is not reaped (which holding `&self` guarantees): an
    /// unreaped worker, even a zombie, keeps its pid, so no other process can hold that pid
    /// or lead a group with that id. This is why the supervisor kills a dead worker's group
    /// before it reaps the worker (see `supervisor::Daemon::reap`), never after.
    pub fn kill_group(&self) {
        // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses the
        // group whose id is the worker's pid, created by `spawn` with setpgid, which cannot
        // be another group while the worker is unreaped (see above). ESRCH (an empty group)
        // is fine.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        let _ = self.signal(libc::SIGKILL);
    }
}

/// A pidfd for `pid`, or None where the kernel has none (ENOSYS) or refuses (then signals
/// fall back to kill(2) before reaping, see [`WorkerProcess`]).
fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags (0: the pidfd is close-on-exec by
    // default) and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep")
    }

    #[test]
    fn signals_go_through_the_pidfd_and_reach_the_worker() {
        let mut child = sleeper();
        let w = WorkerProcess::open(child.id() as Pid);
        assert!(w.has_pidfd(), "this kernel has pidfd_open (5.3+)");
        w.signal(libc::SIGTERM).expect("signal");
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        // Reaped: the pidfd still names the dead process, never a newcomer with its pid.
        w.signal(libc::SIGTERM).expect("ESRCH is fine");
    }
}
