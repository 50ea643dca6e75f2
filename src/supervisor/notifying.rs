//! The executor's side of `Effect::Systemd`: sd_notify messages to PID 1 (with
//! `MONOTONIC_USEC=` for `RELOADING=1`, `EXTEND_TIMEOUT_USEC=` held back when redundant),
//! and `STATUS=` published at a bounded rate.
use super::*;

impl Daemon {
    pub(super) fn notify_systemd(&mut self, messages: &[SystemdMessage]) {
        let mut states = Vec::new();
        // A lifecycle change carries the status line in the same datagram, so systemctl
        // status is never a step behind READY=1/RELOADING=1/STOPPING=1.
        let lifecycle = messages.iter().any(|m| !matches!(m, SystemdMessage::ExtendTimeout(_)));
        let now = Instant::now();
        if lifecycle {
            // A new job (start, reload, stop) has a timeout of its own.
            self.extended_until = None;
        } else if messages.iter().all(|m| self.extension_is_redundant(m, now)) {
            return;
        }
        let line = self.status_line();
        // Formatted here: the crate's EXTEND_TIMEOUT_USEC= holds a u32 (71 minutes), and a
        // boot_timeout may be 24 hours. systemd reads the value as a u64.
        let extensions: Vec<String> = messages
            .iter()
            .filter_map(|m| match m {
                SystemdMessage::ExtendTimeout(d) => Some(format!("EXTEND_TIMEOUT_USEC={}", d.as_micros())),
                _ => None,
            })
            .collect();
        let mut extensions = extensions.iter();
        for m in messages {
            match m {
                SystemdMessage::Ready => states.push(NotifyState::Ready),
                SystemdMessage::Reloading => {
                    states.push(NotifyState::Reloading);
                    states.push(NotifyState::MonotonicUsec(monotonic_usec() as i128));
                }
                SystemdMessage::Stopping => states.push(NotifyState::Stopping),
                SystemdMessage::ExtendTimeout(d) => {
                    let until = policy::deadline(now, *d);
                    self.extended_until = Some(self.extended_until.map_or(until, |u| u.max(until)));
                    if let Some(text) = extensions.next() {
                        states.push(NotifyState::Custom(text));
                    }
                }
            }
        }
        if lifecycle {
            states.push(NotifyState::Status(&line));
        }
        if let Err(e) = self.notifier.send(&states) {
            logging::event(Level::Warn, "notify-error", format!("notifying systemd: {e}"));
        }
        if lifecycle {
            self.last_status = line;
            self.status_pacer.spend(now);
        }
    }

    /// Whether `message` is an `EXTEND_TIMEOUT_USEC=` that would move systemd's deadline
    /// by less than [`EXTEND_GRANULARITY`] past the last one sent for this job. The machine
    /// asks for room after every worker that becomes ready; for a start of 512 workers,
    /// sending each would wake the service manager 512 times for nothing. The extensions
    /// carry seconds of slack, so a deadline up to that granularity short is still ahead.
    pub(super) fn extension_is_redundant(&self, message: &SystemdMessage, now: Instant) -> bool {
        match (message, self.extended_until) {
            (SystemdMessage::ExtendTimeout(d), Some(until)) => {
                policy::deadline(now, *d) < policy::deadline(until, EXTEND_GRANULARITY)
            }
            _ => false,
        }
    }

    /// The machine's `STATUS=` line, with the upgrade in progress if there is one.
    pub(super) fn status_line(&self) -> String {
        let line = self.machine.status_line();
        match self.upgrade_note() {
            Some(note) => format!("{line}; {note}"),
            None => line,
        }
    }

    pub(super) fn publish_status(&mut self) {
        let line = self.status_line();
        if line != self.last_status {
            if let Err(e) = self.notifier.send_status(&line) {
                logging::event(Level::Debug, "notify-error", format!("STATUS= to systemd: {e}"));
            }
            self.last_status = line;
            // Each line wakes the service manager and makes it emit a D-Bus signal: workers
            // that become ready one by one would otherwise be a line per worker.
            self.status_pacer.spend(Instant::now());
        }
    }
}
