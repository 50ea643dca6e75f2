//! The executor's side of `Effect::Spawn`: a run of spawns launched as one batch (in
//! parallel, see `worker::Launcher::launch_all`), each worker in a cgroup of its own where
//! handover's cgroup is delegated (`crate::cgroup`). Kept apart from the event loop in
//! `mod.rs`; the state it touches is `Daemon::processes` and `Daemon::cgroups`.
use std::sync::atomic::{AtomicBool, Ordering};

use super::Daemon;
use crate::logging;
use crate::machine::Level;
use crate::machine::{Event, SpawnRequest};
use crate::worker::priority::{self, Lowering};
use crate::worker::Meanwhile;

/// Descriptors kept free beyond the workers' pidfds when the table is grown for a batch.
const FD_HEADROOM: usize = 256;

/// The warning that `memory_limit` is ignored is logged once per process.
static MEMORY_LIMIT_WARNED: AtomicBool = AtomicBool::new(false);

impl Daemon {
    /// Spawns `batch` (every spawn of one step, in order); returns an `Event::Spawned` or
    /// `Event::SpawnFailed` for each. What the workers said meanwhile waits in `early`.
    pub(super) fn spawn_batch(&mut self, batch: Vec<SpawnRequest>) -> Vec<Event> {
        let mut produced = Vec::with_capacity(batch.len());
        self.renew_notify_socket();
        let limited = batch.iter().any(|r| r.config.workers.memory_limit.is_some());
        if limited
            && !self.cgroups.as_ref().is_some_and(|t| t.memory)
            && !MEMORY_LIMIT_WARNED.swap(true, Ordering::Relaxed)
        {
            logging::event(
                Level::Warn,
                "cgroups",
                "workers.memory_limit needs a cgroup per worker with the memory controller \
                 (a delegated cgroup, Delegate=yes): ignored",
            );
        }
        // With a cgroup per worker, each is created first and the child cloned into it; a
        // worker whose cgroup cannot be made is not spawned at all.
        let (mut launch, mut fds, mut dirs) = (Vec::new(), Vec::new(), Vec::new());
        for req in batch {
            match &self.cgroups {
                Some(tree) => {
                    let limit = req.config.workers.memory_limit;
                    let weight = match (req.low_priority, &self.lowering) {
                        (true, Lowering::CpuWeight) => Some(priority::LOW_WEIGHT),
                        _ => None,
                    };
                    match tree.create_worker(req.generation, req.slot, req.worker.0, limit, weight) {
                        Ok((dir, fd)) => {
                            launch.push(req);
                            fds.push(Some(fd));
                            dirs.push(Some(dir));
                        }
                        Err(e) => produced.push(Event::SpawnFailed {
                            worker: req.worker,
                            error: format!("creating the worker's cgroup: {e}"),
                        }),
                    }
                }
                None => {
                    launch.push(req);
                    dirs.push(None);
                }
            }
        }
        // Room in the descriptor table for every pidfd of the batch (see `reserve_fds`), with
        // some to spare for the sockets and connections that come and go meanwhile.
        crate::worker::spawn::reserve_fds(self.processes.len() + launch.len() + FD_HEADROOM);
        // While the batch is spawned, this thread reads what the first workers say (READY=1)
        // into `early`: the notify socket's queue is short (net.unix.max_dgram_qlen, 10 by
        // default outside systemd's sysctl defaults), and a worker that finds it full blocks
        // in sd_notify until it is read; read only after the batch, hundreds of them would
        // then be woken one at a time. What is read here is heard once the batch's `Spawned`
        // events have been (`Daemon::run_queue`), in the order it arrived. Bounded: the rest
        // waits in the socket.
        let mut early = Vec::new();
        let notify = self.notify.clone();
        let cap = launch.len() + super::NOTIFY_BURST;
        let mut read_early = || {
            while early.len() < cap {
                match notify.try_recv() {
                    Ok(Some(d)) => early.push(Ok(d)),
                    Ok(None) => return true,
                    Err(e) => {
                        early.push(Err(e));
                        return false;
                    }
                }
            }
            false
        };
        let meanwhile = Meanwhile { watch: notify.as_fd(), on_readable: &mut read_early };
        let launched = self.launcher.launch_all(&launch, &self.sockets, &fds, Some(meanwhile));
        drop(fds);
        for ((req, result), dir) in launch.iter().zip(launched).zip(dirs) {
            match result {
                Ok(process) => {
                    let pid = process.pid();
                    if let (Some(tree), Some(dir)) = (&mut self.cgroups, dir) {
                        tree.adopt(pid, dir);
                    }
                    self.processes.insert(pid, process);
                    produced.push(Event::Spawned { worker: req.worker, pid });
                }
                Err(error) => {
                    if let (Some(tree), Some(dir)) = (&mut self.cgroups, dir) {
                        tree.discard(dir);
                    }
                    produced.push(Event::SpawnFailed { worker: req.worker, error });
                }
            }
        }
        self.early.extend(early);
        produced
    }

    /// Carries out `Effect::RaisePriority`: the worker `pid`, spawned at low priority, gets
    /// the normal one (its cgroup's weight, or its process group's nice value).
    pub(super) fn raise_priority(&mut self, pid: i32) {
        if !self.processes.contains_key(&pid) {
            return; // reaped already
        }
        let result = match (&self.lowering, &self.cgroups) {
            (Lowering::CpuWeight, Some(tree)) => tree.set_cpu_weight(pid, priority::NORMAL_WEIGHT),
            (Lowering::Nice { normal }, _) => priority::renice_group(pid, *normal),
            _ => Ok(()),
        };
        if let Err(e) = result {
            let msg = format!("worker pid {pid} could not be raised to normal CPU priority: {e}");
            logging::event(Level::Warn, "worker-priority", msg);
        }
    }

    /// Binds the workers' notify socket anew if its file was removed or replaced: the
    /// workers about to be spawned find it by its path, and could not say READY=1 otherwise
    /// (every later reload would fail as "not ready within boot_timeout"). One stat(2) per
    /// batch while the file is there.
    fn renew_notify_socket(&mut self) {
        let path = self.notify.path().display().to_string();
        match self.notify.renew_if_gone() {
            Ok(false) => {}
            Ok(true) => {
                // The new file is ours (mode 0600) until the launcher gives it to the workers.
                self.launcher.notify_owner = None;
                logging::event(
                    Level::Warn,
                    "notify-socket",
                    format!(
                        "the workers' notify socket {path} was removed or replaced; bound a new one there \
                         (what workers sent to the old one since is lost)"
                    ),
                );
            }
            Err(e) => logging::event(
                Level::Error,
                "notify-socket",
                format!("the workers' notify socket {path} is gone and could not be bound again: {e}; new workers cannot say READY=1"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::sync::Arc;

    use super::super::tests::config;
    use crate::config::Strategy;
    use crate::machine::{SpawnRequest, WorkerId};
    use crate::sockets::Sockets;
    use crate::systemd::Notifier;
    use crate::worker::Launcher;

    /// The parallel batch: results come back in the requests' order, and an exec error is
    /// known for exactly the request that had it when `launch_all` returns.
    #[test]
    fn a_batch_is_launched_in_order_and_each_exec_error_is_known_when_it_returns() {
        let mut good = config(1, Strategy::AllAtOnce, 1);
        good.workers.program = "/bin/true".into();
        good.workers.command = vec!["true".into()];
        let mut bad = good.clone();
        bad.workers.program = "/nonexistent/program".into();
        let (good, bad) = (Arc::new(good), Arc::new(bad));
        let reqs: Vec<SpawnRequest> = (0..9u64)
            .map(|i| SpawnRequest {
                worker: WorkerId(i),
                generation: 1,
                slot: i as usize,
                config: if i % 3 == 1 { bad.clone() } else { good.clone() },
                low_priority: false,
            })
            .collect();
        let sockets = Sockets::new(vec![], Notifier::new(None), false);
        let mut launcher = Launcher {
            base_env: vec![],
            notify_socket: "/nonexistent/notify".into(),
            notify_owner: None,
            boot_nice: None,
        };
        // The calling thread serves a watched descriptor meanwhile: a pipe with a byte in it
        // is readable from the start, so it is called (and asks for no more).
        let (readable, writer) = nix::unistd::pipe().expect("pipe");
        nix::unistd::write(&writer, b"x").expect("write");
        let mut calls = 0;
        let mut on_readable = || {
            calls += 1;
            false
        };
        let meanwhile = crate::worker::Meanwhile { watch: readable.as_fd(), on_readable: &mut on_readable };
        let results = launcher.launch_all(&reqs, &sockets, &[], Some(meanwhile));
        if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
            assert_eq!(calls, 1, "the watched descriptor was served once, then left alone");
        }
        assert_eq!(results.len(), reqs.len());
        for (i, r) in results.iter().enumerate() {
            match r {
                Err(e) => {
                    assert_eq!(i % 3, 1, "request {i} failed: {e}");
                    assert!(e.contains("execve") && e.contains("No such file"), "{e}");
                }
                Ok(p) => {
                    assert_ne!(i % 3, 1, "request {i} (a missing program) was spawned");
                    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(p.pid()), None).expect("wait");
                    assert!(matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)), "{status:?}");
                }
            }
        }
    }
}
