//! The executor's side of the accept queues (SPEC §7): the listening sockets' queues are
//! read while a reload runs (at the top of every turn of the event loop, which
//! [`QUEUE_SAMPLE_INTERVAL`] wakes meanwhile) and for each status request, never on a
//! timer otherwise: an idle daemon does not wake for them. The machine keeps the reload's
//! peak ([`Event::AcceptQueues`]); the metrics show the last reading.
use super::*;
use crate::machine::{QueueSample, SocketStatus};

/// How often the accept queues are read while a reload runs (besides every turn of the
/// event loop): a queue that builds up while nothing else happens is seen.
pub const QUEUE_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

impl Daemon {
    /// The listening sockets with their accept queues read now and the peak of the last
    /// (or running) reload; the metrics get the readings.
    pub(super) fn read_sockets(&mut self) -> Vec<SocketStatus> {
        let mut sockets = self.sockets.status();
        let peak = self.machine.reload_queue_peak();
        for s in &mut sockets {
            s.reload_peak_accept_queue = peak.get(&s.name).copied();
        }
        self.metrics.note_sockets(&sockets);
        sockets
    }

    /// During a reload: reads the queues and tells the machine when one is longer than the
    /// reload's peak so far (steps for nothing are not taken).
    pub(super) fn sample_accept_queues(&mut self) {
        let samples: Vec<QueueSample> = self
            .read_sockets()
            .into_iter()
            .filter_map(|s| Some(QueueSample { length: s.accept_queue?, socket: s.name }))
            .collect();
        let peak = self.machine.reload_queue_peak();
        if samples.iter().any(|s| peak.get(&s.socket).is_none_or(|&p| s.length > p)) {
            self.dispatch(Event::AcceptQueues { samples });
        }
    }
}
