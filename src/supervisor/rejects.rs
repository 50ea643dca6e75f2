//! Counting dropped notify datagrams, so that a flood costs a few log lines, not one each.
//!
//! The first rejection after a quiet spell is logged at once (with its reason, so a single
//! misbehaving worker is easy to diagnose); the ones that follow within
//! [`REJECT_SUMMARY_INTERVAL`] are only counted, and one summary line with the counts is
//! logged when the interval is over. The executor arms a timer for that summary only while
//! there is something to report ([`RejectTally::summary_due`]): an idle daemon does not wake.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::worker::readiness::{RejectKind, Rejected};

/// At most one log line about dropped notify datagrams per interval (after the first).
pub const REJECT_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Dropped datagrams not logged yet, and when the last line about them was.
#[derive(Debug, Default)]
pub struct RejectTally {
    last_logged: Option<Instant>,
    pending: BTreeMap<RejectKind, u64>,
    last_pid: Option<i32>,
}

impl RejectTally {
    /// Counts `rejected`; returns the line to log now, if one is due (the first rejection
    /// after a quiet interval).
    pub fn note(&mut self, rejected: &Rejected, now: Instant) -> Option<String> {
        let quiet = self.last_logged.is_none_or(|t| now.saturating_duration_since(t) >= REJECT_SUMMARY_INTERVAL);
        if quiet && self.pending.is_empty() {
            self.last_logged = Some(now);
            let from = rejected.pid.map(|p| format!(" from pid {p}")).unwrap_or_default();
            return Some(format!(
                "dropped a notify datagram{from}: {} (more within {}s are counted, not logged one by one)",
                rejected.reason,
                REJECT_SUMMARY_INTERVAL.as_secs()
            ));
        }
        *self.pending.entry(rejected.kind).or_insert(0) += 1;
        self.last_pid = rejected.pid.or(self.last_pid);
        None
    }

    /// When the summary of the counted rejections is due; None when nothing is counted.
    pub fn summary_due(&self) -> Option<Instant> {
        if self.pending.is_empty() {
            return None;
        }
        // `pending` is only filled after a line was logged, so `last_logged` is set.
        self.last_logged.map(|t| t + REJECT_SUMMARY_INTERVAL)
    }

    /// The summary line of everything counted since the last line, if anything was; resets
    /// the count.
    pub fn summary(&mut self, now: Instant) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let total: u64 = self.pending.values().sum();
        let kinds: Vec<String> = self.pending.iter().map(|(k, n)| format!("{n} {}", k.describe())).collect();
        let last = self.last_pid.map(|p| format!("; last sender pid {p}")).unwrap_or_default();
        self.pending.clear();
        self.last_pid = None;
        self.last_logged = Some(now);
        Some(format!(
            "dropped {total} more notify datagram{} in the last {}s: {}{last}",
            if total == 1 { "" } else { "s" },
            REJECT_SUMMARY_INTERVAL.as_secs(),
            kinds.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stranger(pid: i32) -> Rejected {
        Rejected { pid: Some(pid), kind: RejectKind::UnknownSender, reason: format!("pid {pid} is not a worker") }
    }

    #[test]
    fn a_flood_is_one_line_then_one_summary_per_interval() {
        let t0 = Instant::now();
        let mut tally = RejectTally::default();
        assert!(tally.summary_due().is_none(), "nothing to report: no timer");
        let first = tally.note(&stranger(7), t0).expect("the first one is logged");
        assert!(first.contains("pid 7") && first.contains("not a worker"), "{first}");
        for i in 0..100_000 {
            assert!(tally.note(&stranger(8), t0 + Duration::from_micros(i)).is_none());
        }
        let oversize = Rejected { pid: Some(9), kind: RejectKind::Oversize, reason: "long".into() };
        assert!(tally.note(&oversize, t0 + Duration::from_secs(1)).is_none());
        assert_eq!(tally.summary_due(), Some(t0 + REJECT_SUMMARY_INTERVAL));
        let due = t0 + REJECT_SUMMARY_INTERVAL;
        let summary = tally.summary(due).expect("summary");
        assert!(summary.contains("100001 more"), "{summary}");
        assert!(summary.contains("100000 from processes that are not workers") && summary.contains("1 oversized"));
        assert!(tally.summary_due().is_none(), "reset: no timer");
        // Within the next interval: counted again, not logged.
        assert!(tally.note(&stranger(7), due + Duration::from_secs(1)).is_none());
        assert!(tally.summary(due + REJECT_SUMMARY_INTERVAL).is_some());
        // After a quiet interval the next one is logged at once.
        let later = due + 3 * REJECT_SUMMARY_INTERVAL;
        assert!(tally.note(&stranger(7), later).is_some());
        assert!(tally.summary(later).is_none());
    }
}
