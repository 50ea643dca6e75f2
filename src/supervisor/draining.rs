//! The executor's side of draining, visible (issue 23): how many client connections each
//! draining worker still holds, read through [`worker::connections`] only when someone needs
//! the number:
//! - a status request (every draining worker's count, `open_connections`; a request within
//!   [`STATUS_SAMPLE_REUSE`] of a sample that has them all is answered from it);
//! - a metrics write while workers drain (`handover_draining_connections`, sampled at most
//!   once per [`METRICS_SAMPLE_EVERY`]);
//! - right before a step that SIGKILLs workers at their graceful_timeout: their counts go to
//!   the machine as [`Event::OpenConnections`], and the kill's log line names them.
//!
//! No timer is added: an idle master (nothing draining, no request) reads nothing and wakes
//! for nothing. A worker's processes are its cgroup's `cgroup.procs` where each worker has a
//! cgroup, else its process group (one pass over /proc for all the workers asked about).
use super::*;

use crate::worker::connections::{ClientSockets, Listeners};

/// The metrics re-read the draining workers' connections at most this often: every turn of
/// the event loop renders them, and a rolling reload of thousands of workers turns it
/// thousands of times with workers draining all along.
pub const METRICS_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// A status request within this long of the last sample, which covers every worker draining
/// now, is answered from it: a client asking in a loop costs the event loop no more reads.
pub const STATUS_SAMPLE_REUSE: Duration = Duration::from_millis(100);

/// The last sample of the draining workers' connections (status requests, metrics).
#[derive(Debug, Default)]
pub(super) struct DrainSample {
    /// Open client connections by worker pid.
    open: HashMap<machine::Pid, usize>,
    /// When it was read (None: never).
    at: Option<Instant>,
}

impl Daemon {
    /// The open client connections of each worker in `pids`; a worker whose connections
    /// could not be read (gone, /proc unreadable) is absent.
    pub(super) fn open_connections(&mut self, pids: &[machine::Pid]) -> HashMap<machine::Pid, usize> {
        if pids.is_empty() {
            return HashMap::new();
        }
        // Every socket still open, an older generation's included: its workers drain there.
        let addresses = self.sockets.status();
        let listeners = Listeners::from_addresses(addresses.iter().map(|s| s.address.as_str()));
        let clients = match ClientSockets::read(&listeners) {
            Ok(c) => c,
            Err(e) => {
                logging::event(Level::Debug, "connections", format!("reading /proc/net: {e}"));
                return HashMap::new();
            }
        };
        let members: HashMap<machine::Pid, Vec<machine::Pid>> = match &self.cgroups {
            Some(tree) => pids.iter().map(|&pid| (pid, tree.procs(pid).unwrap_or_else(|| vec![pid]))).collect(),
            None => self.memory.group_members(pids),
        };
        pids.iter().filter_map(|pid| Some((*pid, clients.held_by(members.get(pid)?)?))).collect()
    }

    /// The event to feed before the next step if that step kills workers at their
    /// graceful_timeout: their open connections, for the kill's log line.
    pub(super) fn connections_before_kills(&mut self, now: Instant) -> Option<Event> {
        let due = self.machine.kills_due(now);
        if due.is_empty() {
            return None;
        }
        let open = self.open_connections(&due);
        Some(Event::OpenConnections { counts: due.iter().filter_map(|pid| Some((*pid, *open.get(pid)?))).collect() })
    }

    /// Fills in `open_connections` of the draining workers of a status reply: read now,
    /// unless the last sample is younger than [`STATUS_SAMPLE_REUSE`] and has them all.
    pub(super) fn fill_open_connections(&mut self, status: &mut machine::Status) {
        let draining = self.machine.draining_pids();
        if draining.is_empty() {
            return;
        }
        let now = Instant::now();
        let sample = &self.drain_sample;
        let recent = sample.at.is_some_and(|at| now.saturating_duration_since(at) < STATUS_SAMPLE_REUSE)
            && draining.iter().all(|pid| sample.open.contains_key(pid));
        if !recent {
            self.drain_sample = DrainSample { open: self.open_connections(&draining), at: Some(now) };
        }
        let draining: std::collections::HashSet<machine::Pid> = draining.into_iter().collect();
        for w in status.workers.iter_mut().filter(|w| draining.contains(&w.pid)) {
            w.open_connections = self.drain_sample.open.get(&w.pid).copied();
        }
    }

    /// Sets the metrics' `handover_draining_connections` before they are rendered: the sum
    /// over the workers draining now of their last sampled count, read again once the sample
    /// is [`METRICS_SAMPLE_EVERY`] old (a worker that exited leaves the sum at once; one that
    /// began draining since counts from the next sample). Nothing is read without a
    /// `[metrics] textfile` or while nothing drains.
    pub(super) fn refresh_draining_connections(&mut self) {
        if self.machine.active_config().metrics.textfile.is_none() {
            return;
        }
        // From the indexes first (cheap): the list of pids is built only while some drain.
        let some_drain = self.machine.workers_by_state().iter().any(|&(state, n)| state == "draining" && n > 0);
        let draining = if some_drain { self.machine.draining_pids() } else { Vec::new() };
        if draining.is_empty() {
            self.drain_sample = DrainSample::default();
            self.metrics.set_draining_connections(0);
            return;
        }
        let now = Instant::now();
        if self.drain_sample.at.is_none_or(|at| now.saturating_duration_since(at) >= METRICS_SAMPLE_EVERY) {
            self.drain_sample = DrainSample { open: self.open_connections(&draining), at: Some(now) };
        }
        let total = draining.iter().filter_map(|pid| self.drain_sample.open.get(pid)).sum();
        self.metrics.set_draining_connections(total);
    }
}
