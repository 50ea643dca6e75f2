//! The executor's side of `handover upgrade` (see [`crate::upgrade`] for the protocol):
//! wait until the machine is quiet, run the pre-flight, re-execute; in the new binary,
//! take over. The machine is not involved beyond `Machine::is_quiet`, `Machine::snapshot`
//! and `Machine::restore`.
//!
//! Interplay (documented in handover(1)):
//! - an upgrade asked for while a reload runs (or is queued, or generation 1 still boots)
//!   waits for it, then goes ahead;
//! - a reload asked for during the upgrade (control socket or SIGHUP) is held, and honoured
//!   by the new binary (or by this one if the upgrade fails);
//! - SIGTERM/SIGINT during the upgrade stops the daemon; the upgrade is abandoned (exit 1);
//! - a scale asked for during the upgrade (`handover scale`, SIGTTIN, SIGTTOU) is held the
//!   same way: the slots handed over are the ones the pre-flight checked (issue 19);
//! - a second upgrade request joins the one in progress.
use std::time::Instant;

use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use crate::control::proto::{Outcome, Reply, Request};
use crate::control::Command;
use crate::logging;
use crate::signals::{SignalEvent, Signals};
use crate::text::count;
use crate::upgrade::{self, ConnectionRecord, HandOff, Waits};
use crate::worker::readiness::NotifyServer;
use crate::worker::WorkerProcess;

use super::{upgraded_message, Daemon, Internal, UpgradeRequester, UpgradeStep};
use crate::machine::{Event, Level};
use crate::upgrade::time_base;

impl Daemon {
    /// Whether an upgrade is in progress.
    pub(super) fn upgrading(&self) -> bool {
        // Between the pre-flight's verdict and the exec too: nothing may change then.
        !matches!(self.upgrade.step, UpgradeStep::Idle) || self.upgrade_exec_due
    }

    /// A SIGTTIN (+1) or SIGTTOU (-1) during the upgrade: held (see the module docs).
    pub(super) fn hold_scale_signal(&mut self, delta: i64) {
        let what = if delta > 0 { "SIGTTIN: one worker more" } else { "SIGTTOU: one worker fewer" };
        logging::event(Level::Info, "scale-requested", format!("{what} requested; held until the upgrade is done"));
        self.upgrade.held_scale.push(delta);
    }

    /// Applies the scale signals held during an upgrade, in the order they came.
    fn apply_held_scale(&mut self, deltas: Vec<i64>) {
        for d in deltas {
            self.dispatch(Event::ScaleRequested { to: crate::machine::ScaleTo::Delta(d), requester: None });
        }
    }

    /// What `STATUS=` and `handover status` say about an upgrade in progress.
    pub(super) fn upgrade_note(&self) -> Option<String> {
        let binary = self.identity.binary.as_deref().map(|b| b.display().to_string()).unwrap_or_default();
        match self.upgrade.step {
            UpgradeStep::Idle => None,
            UpgradeStep::WaitingForQuiet => Some(format!("upgrade to {binary} waits for the reload to finish")),
            UpgradeStep::Checking { .. } => Some(format!("upgrading: checking {binary}")),
        }
    }

    /// An upgrade is asked for: start one, or join the one in progress.
    pub(super) fn begin_upgrade(&mut self, requester: UpgradeRequester) {
        if matches!(self.machine.phase(), crate::machine::Phase::Stopping { .. }) {
            return self.answer(requester, Err("the daemon is stopping".into()));
        }
        if self.identity.binary.is_none() {
            let why = "the path of handover's binary could not be resolved at start; restart the service instead";
            return self.answer(requester, Err(why.into()));
        }
        self.upgrade.requesters.push(requester);
        if self.upgrading() {
            return; // joins the one in progress
        }
        self.upgrade.step = UpgradeStep::WaitingForQuiet;
        if !self.machine.is_quiet() {
            logging::event(Level::Info, "upgrade", "upgrade waits for the running reload to finish");
        }
        self.publish_status();
    }

    /// Moves the upgrade on when the machine allows it: starts the pre-flight once no
    /// reload runs; re-executes once the pre-flight accepted.
    pub(super) async fn advance_upgrade(&mut self, signals: &mut Signals, commands: &mut mpsc::Receiver<Command>) {
        if matches!(self.upgrade.step, UpgradeStep::WaitingForQuiet) && self.machine.is_quiet() {
            self.start_preflight();
        }
        self.exec_now(signals, commands).await;
    }

    fn start_preflight(&mut self) {
        let Some(binary) = self.identity.binary.clone() else { return };
        let handoff = match self.build_handoff(Vec::new(), false) {
            Ok(h) => h,
            Err(e) => return self.fail_upgrade(&format!("cannot describe the daemon's state: {e}")),
        };
        let json = match serde_json::to_vec(&handoff) {
            Ok(j) => j,
            Err(e) => return self.fail_upgrade(&format!("cannot describe the daemon's state: {e}")),
        };
        logging::event(
            Level::Info,
            "upgrade",
            format!("upgrade: checking {} (hand-off format {})", binary.display(), upgrade::HANDOFF_FORMAT),
        );
        match upgrade::preflight::Preflight::start(&binary, &self.config_path, &json) {
            Ok(p) => {
                let pid = p.pid();
                let tx = self.internal_tx.clone();
                // The output arrives from the reader thread; the exit from the reaper.
                tokio::spawn(async move {
                    let out = p.output.await.unwrap_or_default();
                    let _ = tx.send(Internal::PreflightOutput { pid, output: out });
                });
                let deadline = crate::machine::policy::deadline(Instant::now(), upgrade::PREFLIGHT_TIMEOUT);
                self.upgrade.step = UpgradeStep::Checking { pid, deadline, exit: None, output: None };
                self.publish_status();
            }
            Err(e) => self.fail_upgrade(&format!("pre-flight of {}: {e}", binary.display())),
        }
    }

    pub(super) fn on_preflight_output(&mut self, from: i32, out: Vec<u8>) {
        // A check abandoned earlier may close its output late: only this one's counts.
        if let UpgradeStep::Checking { pid, output, .. } = &mut self.upgrade.step {
            if *pid != from {
                return;
            }
            *output = Some(out);
            self.judge_preflight();
        }
    }

    pub(super) fn preflight_timed_out(&mut self) {
        if let UpgradeStep::Checking { pid, ref exit, .. } = self.upgrade.step {
            if exit.is_none() {
                // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our child and
                // not reaped yet (`exit` is None), so the group it leads is its own.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let secs = upgrade::PREFLIGHT_TIMEOUT.as_secs();
            self.fail_upgrade(&format!("the new binary did not answer the pre-flight within {secs}s"));
        }
    }

    /// Once the pre-flight has exited and closed its output: go ahead or fail.
    pub(super) fn judge_preflight(&mut self) {
        let UpgradeStep::Checking { exit: Some((status, zero)), output: Some(output), .. } = &self.upgrade.step else {
            return;
        };
        match upgrade::preflight::verdict(status, *zero, output) {
            Ok(version) => {
                logging::event(
                    Level::Info,
                    "upgrade",
                    format!("upgrade: handover {version} accepts the hand-off; re-executing in place"),
                );
                self.upgrade.step = UpgradeStep::Idle;
                // Executed from the event loop (it needs the signal streams): see `exec_now`.
                self.upgrade_exec_due = true;
            }
            Err(reason) => self.fail_upgrade(&reason),
        }
    }

    /// Re-executes in place, if the pre-flight accepted. Returns only if that failed (then
    /// the daemon goes on as before, the requesters told why).
    async fn exec_now(&mut self, signals: &mut Signals, commands: &mut mpsc::Receiver<Command>) {
        if !std::mem::take(&mut self.upgrade_exec_due) {
            return;
        }
        let old_mask = match crate::signals::block_all() {
            Ok(m) => m,
            Err(e) => return self.fail_upgrade(&format!("blocking signals: {e}")),
        };
        // Let the reactor take in what was delivered before the block, and let the
        // connection tasks write replies already given to them.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        let mut drained = Vec::new();
        while let Some(sig) = signals.try_recv() {
            match sig {
                SignalEvent::Stop | SignalEvent::FastStop => {
                    let _ = crate::signals::set_mask(&old_mask);
                    self.on_signal(sig);
                    for cmd in drained {
                        self.on_command(cmd);
                    }
                    return;
                }
                SignalEvent::Reload => self.upgrade.reload_pending = true,
                // Held like the rest, carried in the hand-off for the new binary.
                SignalEvent::MoreWorkers => self.hold_scale_signal(1),
                SignalEvent::FewerWorkers => self.hold_scale_signal(-1),
                // Exits are swept by the new binary; a second SIGUSR2 joins this upgrade.
                SignalEvent::Child | SignalEvent::Upgrade => {}
            }
        }
        while let Ok(cmd) = commands.try_recv() {
            drained.push(cmd);
        }
        let mut connections = Vec::new();
        for r in &self.upgrade.requesters {
            if let Some(c) = &r.connection {
                connections
                    .push(ConnectionRecord { fd: std::os::fd::AsRawFd::as_raw_fd(c), waits_for: Waits::Upgrade });
            }
        }
        for cmd in self.upgrade.held.iter().chain(drained.iter()) {
            match (&cmd.connection, &cmd.request) {
                (Some(c), Request::Upgrade {}) => connections
                    .push(ConnectionRecord { fd: std::os::fd::AsRawFd::as_raw_fd(c), waits_for: Waits::Upgrade }),
                (Some(c), request) => connections.push(ConnectionRecord {
                    fd: std::os::fd::AsRawFd::as_raw_fd(c),
                    waits_for: Waits::Request(request.clone()),
                }),
                (None, _) => {}
            }
        }
        let handoff = match self.build_handoff(connections, true) {
            Ok(h) => h,
            Err(e) => {
                let _ = crate::signals::set_mask(&old_mask);
                for cmd in drained {
                    self.on_command(cmd);
                }
                return self.fail_upgrade(&format!("cannot describe the daemon's state: {e}"));
            }
        };
        // Re-checked by our own rules: what we could not take back ourselves must not
        // leave this process (a state the pre-flight did not see, say).
        if let Err(e) = handoff.acceptable() {
            let _ = crate::signals::set_mask(&old_mask);
            for cmd in drained {
                self.on_command(cmd);
            }
            return self.fail_upgrade(&format!("the state to hand over changed since the pre-flight: {e}"));
        }
        let Some(binary) = self.identity.binary.clone() else { return };
        logging::event(
            Level::Info,
            "upgrade",
            format!(
                "upgrade: executing {} in place ({}, {}, {} handed over)",
                binary.display(),
                count(handoff.machine.workers.len(), "worker", "workers"),
                count(handoff.sockets.len(), "socket", "sockets"),
                count(handoff.connections.len(), "waiting connection", "waiting connections")
            ),
        );
        // The metrics file gets its last text before the writer thread ends with the exec.
        self.metrics.sync();
        let env: Vec<_> = self.launcher.base_env.clone();
        let error = upgrade::exec::exec_in_place(&binary, &self.identity.argv, &env, &handoff);
        // Still here: the exec failed and nothing was handed over.
        let _ = crate::signals::set_mask(&old_mask);
        for cmd in drained {
            self.on_command(cmd);
        }
        self.fail_upgrade(&format!("executing {}: {error}", binary.display()));
    }

    /// The hand-off as it stands, naming `connections` as waiting. `final_` marks the one
    /// executed (it counts as an upgrade).
    fn build_handoff(&self, connections: Vec<ConnectionRecord>, final_: bool) -> Result<HandOff, String> {
        let base = time_base();
        let machine = self.machine.snapshot(&base)?;
        Ok(HandOff {
            format: upgrade::HANDOFF_FORMAT,
            from_version: crate::VERSION.to_string(),
            binary: self.identity.binary.clone().unwrap_or_default(),
            config_path: self.config_path.clone(),
            started_unix: self.identity.started_unix,
            upgrades: self.identity.upgrades + u32::from(final_),
            exec_monotonic_ns: base.monotonic_ns,
            machine,
            sockets: self.sockets.handoff_records(),
            control_fd: self.control_fd,
            notify_fd: self.notify_fd,
            connections,
            reload_pending: self.upgrade.reload_pending,
            next_request: self.next_request,
            systemd: self.systemd.clone(),
            metrics: Some(self.metrics.state().clone()),
            cgroups: self.cgroups.clone(),
            notify_owner: self.launcher.notify_owner,
            held_scale: self.upgrade.held_scale.clone(),
            upgraded_from: self.identity.upgraded_from.clone(),
            version_since_unix: Some(self.identity.version_since_unix),
            returned: None,
        })
    }

    /// The upgrade failed (or was abandoned): tell whoever asked, log it, and release what
    /// was held for the new binary. Nothing else changed.
    pub(super) fn fail_upgrade(&mut self, reason: &str) {
        if let UpgradeStep::Checking { pid, exit: None, .. } = self.upgrade.step {
            // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our unreaped child
            // and leads its group (see `preflight_timed_out`).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        self.upgrade.step = UpgradeStep::Idle;
        self.upgrade_exec_due = false;
        let requesters = std::mem::take(&mut self.upgrade.requesters);
        if requesters.is_empty()
            && self.upgrade.held.is_empty()
            && self.upgrade.held_scale.is_empty()
            && !self.upgrade.reload_pending
        {
            self.publish_status();
            return;
        }
        logging::event(
            Level::Error,
            "upgrade",
            format!("upgrade failed, handover {} goes on: {reason}", crate::VERSION),
        );
        self.metrics.record_upgrade(false);
        for r in requesters {
            self.answer(r, Err(reason.to_string()));
        }
        // Scale before reload: a scale is refused while a reload runs.
        let held_scale = std::mem::take(&mut self.upgrade.held_scale);
        self.apply_held_scale(held_scale);
        for cmd in std::mem::take(&mut self.upgrade.held) {
            self.on_command(cmd);
        }
        if std::mem::take(&mut self.upgrade.reload_pending) {
            self.on_signal(SignalEvent::Reload);
        }
        self.publish_status();
    }

    fn answer(&mut self, requester: UpgradeRequester, result: Result<String, String>) {
        if let Some(tx) = requester.replies {
            let outcome = match result {
                Ok(m) => Outcome::ok(m),
                Err(e) => Outcome::error(e),
            };
            let _ = tx.send(Reply::Done(outcome));
        }
    }

    /// In the new binary: goes on from the hand-off. The machine is rebuilt already; this
    /// takes handles on the workers, reaps those that exited meanwhile, and logs it.
    pub(super) fn resume(&mut self, h: HandOff, notify_server: &NotifyServer) {
        for pid in self.machine.worker_pids() {
            self.processes.insert(pid, WorkerProcess::open(pid));
        }
        let mut gone = self.reap(notify_server);
        // A worker that is no longer our child at all was reaped by someone else during the
        // exec (a wrapper script in its place, say): it is gone, and its exit unknown.
        for pid in self.machine.worker_pids() {
            let ours =
                waitid(Id::Pid(Pid::from_raw(pid)), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT);
            if ours == Err(nix::errno::Errno::ECHILD) {
                self.processes.remove(&pid);
                self.dispatch(Event::Exited { pid, status: "vanished during the upgrade (reaped elsewhere)".into() });
                gone += 1;
            }
        }
        let took = time_base().monotonic_ns.saturating_sub(h.exec_monotonic_ns);
        let adopted = format!(
            "{} adopted, {gone} exited during the hand-off; the exec took {:.1} ms",
            count(self.processes.len() + gone, "worker", "workers"),
            took as f64 / 1e6
        );
        match &h.returned {
            Some(reason) => {
                let msg = format!(
                    "upgrade failed, handover {} goes on: {reason}; the hand-off was handed back ({adopted})",
                    crate::VERSION
                );
                logging::event(Level::Error, "upgrade", msg);
                self.metrics.record_upgrade(false);
            }
            None => {
                let msg = format!("{}; {adopted}", upgraded_message(&h.from_version, &self.identity));
                logging::event(Level::Info, "upgrade", msg);
                self.metrics.record_upgrade(true);
            }
        }
        // Scale before reload: a scale is refused while a reload runs.
        self.apply_held_scale(h.held_scale);
        if h.reload_pending {
            self.on_signal(SignalEvent::Reload);
        }
        // The machine's deadlines may have passed during the exec.
        self.dispatch(Event::Tick);
    }
}
