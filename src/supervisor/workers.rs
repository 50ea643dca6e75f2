//! The executor's side of what the workers tell it: exits (SIGCHLD, reaped by pid), the
//! datagrams on their NOTIFY_SOCKET (and the rejected ones, summarised), and memory
//! samples for `max_memory`, each turned into machine events. The event loop is in
//! `mod.rs`.
use super::*;

impl Daemon {
    /// One memory sample of every watched worker, in one pass over the processes. Only the
    /// workers over their limit are news for the machine (it ignores the others).
    pub(super) fn sample_memory(&mut self) {
        let watched = self.machine.memory_watched();
        let groups: Vec<machine::Pid> = watched.iter().map(|&(pid, _)| pid).collect();
        // One small read per worker (memory.current, what the kernel charges it) where each
        // has its own cgroup with the memory controller; one pass over /proc otherwise.
        let totals = match &mut self.cgroups {
            Some(tree) if tree.memory => {
                tree.sweep();
                tree.memory_of(&groups)
            }
            _ => self.memory.group_rss(&groups),
        };
        for (pid, limit) in watched {
            let rss_bytes = totals.get(&pid).copied().unwrap_or(0);
            if rss_bytes > limit {
                self.dispatch(Event::MemoryUsage { pid, rss_bytes });
            }
        }
    }

    /// Reaps every exited child (SIGCHLDs coalesce, so loop until none is left); returns
    /// how many workers it reaped.
    ///
    /// Each exited child is first only looked at (waitid with WNOWAIT): while it is an
    /// unreaped zombie its pid, and so its process group id, cannot be reused, and that is
    /// the moment to SIGKILL whatever the worker left in its group. Only then is it reaped
    /// and its handle (pidfd) dropped; the machine's `KillGroup` for a reaped worker finds
    /// no handle and sends nothing.
    ///
    /// What a worker said just before it died (STOPPING=1, say) must be heard before its
    /// exit, not afterwards as a stranger's. Once a child has exited, every datagram it sent
    /// is in the notify socket's queue, so the queue is read after each child and before its
    /// exit is dispatched. (Reading it once per SIGCHLD is not enough: a second child may
    /// send and exit between that read and its reaping.)
    pub(super) fn reap(&mut self, notify_server: &NotifyServer) -> usize {
        let mut reaped = 0;
        loop {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let pid = match waitid(Id::All, flags) {
                Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) => pid,
                Ok(_) | Err(_) => return reaped,
            };
            if let UpgradeStep::Checking { pid: check, exit, .. } = &mut self.upgrade.step {
                if *check == pid.as_raw() {
                    *exit = Some(match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(_, code)) => (format!("exited with code {code}"), code == 0),
                        Ok(WaitStatus::Signaled(_, sig, _)) => (format!("was killed by {}", sig.as_str()), false),
                        Ok(_) | Err(_) => ("vanished".into(), false),
                    });
                    self.judge_preflight();
                    continue;
                }
            }
            if let Some(process) = self.processes.get(&pid.as_raw()) {
                process.kill_group();
                if let Some(tree) = &self.cgroups {
                    tree.kill(pid.as_raw());
                }
            }
            let oom = self.cgroups.as_ref().and_then(|t| t.oom_kills(pid.as_raw()));
            let exited = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, format!("exit code {code}")),
                Ok(WaitStatus::Signaled(pid, sig, core)) => {
                    let core = if core { ", core dumped" } else { "" };
                    let oom = match oom {
                        Some(n) => format!(" (the kernel's OOM killer, {n} kill(s): memory_limit reached)"),
                        None => String::new(),
                    };
                    (pid, format!("killed by {}{core}{oom}", sig.as_str()))
                }
                Ok(_) | Err(_) => return reaped,
            };
            while let Ok(Some(d)) = notify_server.try_recv() {
                self.on_datagram(Ok(d));
            }
            let (pid, status) = exited;
            self.processes.remove(&pid.as_raw());
            if let Some(tree) = &mut self.cgroups {
                tree.release(pid.as_raw());
            }
            self.dispatch(Event::Exited { pid: pid.as_raw(), status });
            reaped += 1;
        }
    }

    pub(super) fn on_datagram(&mut self, datagram: std::io::Result<Result<Datagram, Rejected>>) {
        for event in self.heard(datagram) {
            self.dispatch(event);
        }
    }

    /// The machine's events for one datagram read from the workers' notify socket: one
    /// `Message` per message from a worker (or a process in a worker's group), none from
    /// anyone else (counted and summarised instead).
    pub(super) fn heard(&mut self, datagram: std::io::Result<Result<Datagram, Rejected>>) -> Vec<Event> {
        match datagram {
            Ok(Ok(d)) => {
                // A worker's own pid (every process handover holds a handle on is a worker,
                // and the leader of its group) needs no process-group lookup, a system call.
                // The group may have been looked up when the datagram was read (see
                // `Datagram::sender_group`).
                let pgid = if self.processes.contains_key(&d.pid) {
                    None
                } else {
                    d.sender_group.or_else(|| worker::process_group_of(d.pid))
                };
                // Only workers and the processes in their groups are heard; anyone else is
                // counted here rather than logged per datagram (by the machine).
                let known = |p: Option<machine::Pid>| p.is_some_and(|p| self.processes.contains_key(&p));
                if !known(Some(d.pid)) && !known(pgid) {
                    let reason = format!("pid {} is not a worker (nor in a worker's process group)", d.pid);
                    let rejected =
                        Rejected { pid: Some(d.pid), kind: worker::readiness::RejectKind::UnknownSender, reason };
                    self.on_rejected(&rejected);
                    return Vec::new();
                }
                d.messages
                    .into_iter()
                    .map(|message| Event::Message { sender: d.pid, sender_pgid: pgid, message })
                    .collect()
            }
            Ok(Err(rejected)) => {
                self.on_rejected(&rejected);
                Vec::new()
            }
            Err(e) => {
                logging::event(Level::Warn, "notify-error", format!("reading the worker notify socket: {e}"));
                Vec::new()
            }
        }
    }

    pub(super) fn on_rejected(&mut self, rejected: &worker::readiness::Rejected) {
        if let Some(line) = self.rejects.note(rejected, Instant::now()) {
            logging::record(&machine::LogRecord {
                level: Level::Warn,
                event: "notify-rejected",
                message: line,
                generation: None,
                slot: None,
                pid: rejected.pid,
            });
        }
    }
}
