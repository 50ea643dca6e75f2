//! The demo worker's request outcomes: what it reports to the master, and the faults that
//! make it fail on purpose.
//!
//! **Reporting** (SPEC §4 "Request outcomes"): the worker counts every answered request and
//! every answer with a status of 500 or more, both since it started, and sends them to
//! `$NOTIFY_SOCKET` as one datagram `X_HANDOVER_REQUESTS=<n>\nX_HANDOVER_ERRORS=<m>\n`. The
//! master judges a canary (a new release's first workers) on these numbers against the old
//! generation's, so they are the worker's own view of its answers. A report goes out only
//! when the numbers changed, at most every [`REPORT_INTERVAL`]: a change within the interval
//! is sent when it ends, and an idle worker never wakes up for it. The exit paths send what
//! is still unsent ([`Outcomes::flush`]).
//!
//! **Faults** (`--error-rate F`, `--errors-after DUR`): a share F of the requests answered
//! once the faults apply get `500 Internal Server Error`, spread evenly and deterministically
//! ([`ErrorRate::fails`]), so a test or a benchmark knows exactly how many answers failed.
//!
//! # References
//! `sd_notify(3)` (the `X_` prefix for variables systemd does not define).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The shortest time between two reports: "at most a few times a second" (SPEC §4), which
/// keeps the master's socket quiet under any load while a canary still sees its numbers
/// within a quarter of a second.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(250);

/// A share of requests to fail, `--error-rate`, in millionths: exact for a rate written with
/// up to 6 decimals, so `0.3` fails exactly 3 of every 10 requests (a float would drift).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorRate {
    per_million: u32,
}

impl ErrorRate {
    const ONE: u32 = 1_000_000;

    /// Parses `--error-rate`: a number from 0 to 1 (`0.3`, `1`, `0`).
    pub fn parse(s: &str) -> Result<ErrorRate, String> {
        let invalid = || format!("invalid error rate {s:?}: expected a number from 0.0 to 1.0, e.g. 0.3");
        let f: f64 = s.trim().parse().map_err(|_| invalid())?;
        if !(0.0..=1.0).contains(&f) {
            return Err(invalid());
        }
        // In 0..=1e6 after the check above (NaN fails `contains`), so the cast is exact.
        Ok(ErrorRate { per_million: (f * f64::from(Self::ONE)).round() as u32 })
    }

    /// Whether this rate fails nothing.
    pub fn is_zero(self) -> bool {
        self.per_million == 0
    }

    /// Whether request number `index` (0-based, counted from when the faults apply) fails:
    /// iff ⌊(i+1)·F⌋ > ⌊i·F⌋. Over any n consecutive requests that is ⌊n·F⌋ or ⌈n·F⌉
    /// failures, spread evenly (0.5 fails every other one), the same on every run.
    pub fn fails(self, index: u64) -> bool {
        // u128: (i+1)·10⁶ cannot overflow for any u64 index.
        let (i, f, one) = (u128::from(index), u128::from(self.per_million), u128::from(Self::ONE));
        (i + 1) * f / one > i * f / one
    }
}

/// `--error-rate` from `--errors-after`: which requests the worker fails on purpose.
#[derive(Debug)]
pub struct Faults {
    rate: ErrorRate,
    /// When the faults start to apply (READY=1 plus `--errors-after`).
    from: Instant,
    /// How many requests were answered since `from`: the index [`ErrorRate::fails`] takes.
    answered: AtomicU64,
}

impl Faults {
    /// Fails a share `rate` of the requests answered from `from` on.
    pub fn new(rate: ErrorRate, from: Instant) -> Faults {
        Faults { rate, from, answered: AtomicU64::new(0) }
    }

    /// No faults: every request is answered as the app would.
    pub fn none() -> Faults {
        Faults::new(ErrorRate::default(), Instant::now())
    }

    /// Whether the request being answered at `now` fails. Call it once per request.
    pub fn next_fails(&self, now: Instant) -> bool {
        if self.rate.is_zero() || now < self.from {
            return false;
        }
        self.rate.fails(self.answered.fetch_add(1, Ordering::Relaxed))
    }
}

/// Requests answered and errors among them, since the worker started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Every answered request.
    pub requests: u64,
    /// Answers with a status of 500 or more.
    pub errors: u64,
}

impl Counts {
    /// The datagram that reports them: both lines, newline separated.
    pub fn message(self) -> String {
        format!("X_HANDOVER_REQUESTS={}\nX_HANDOVER_ERRORS={}\n", self.requests, self.errors)
    }
}

/// The last report sent (at start: nothing to report, as of no time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Sent {
    counts: Counts,
    at: Option<Instant>,
}

/// What the reporter does next, given what it last sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Nothing changed since the last report: nothing to send, nothing to wake up for.
    Idle,
    /// Send `current` now.
    SendNow,
    /// Something changed within the interval: send at this instant.
    SendAt(Instant),
}

/// The throttle: a report only when the counts changed, and at most one per `interval`.
fn next_report(last: Sent, current: Counts, now: Instant, interval: Duration) -> Next {
    if current == last.counts {
        return Next::Idle;
    }
    match last.at.map(|at| at + interval) {
        Some(due) if now < due => Next::SendAt(due),
        _ => Next::SendNow,
    }
}

/// Where reports go: a non-blocking datagram socket and the master's address.
#[derive(Debug)]
struct Destination {
    socket: UnixDatagram,
    address: SocketAddr,
    /// Whether a failed send was logged already: one line says the master is unreachable,
    /// not one every quarter of a second.
    failure_logged: AtomicBool,
}

/// The worker's request outcomes: counted by the connections, reported by [`Outcomes::run`].
///
/// Shared (`Arc`) by the app's connections and the reporting task, which all run on the demo
/// worker's one thread: the atomics are for `Send`, not for contention.
#[derive(Debug)]
pub struct Outcomes {
    requests: AtomicU64,
    errors: AtomicU64,
    /// Woken at every answered request; holds one permit while the reporter is busy, so a
    /// change is never missed and a burst of them costs one wake-up.
    changed: Notify,
    /// `None` without `$NOTIFY_SOCKET` (or with `--no-notify`): counted, never sent.
    destination: Option<Destination>,
    /// Guards the last report: every send goes through it, so the reports leave in the order
    /// of their counts and the master never sees a count go back.
    sent: Mutex<Sent>,
    /// The demo worker's log prefix.
    prefix: String,
}

impl Outcomes {
    /// Counts without reporting.
    pub fn unreported() -> Outcomes {
        Outcomes {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            changed: Notify::new(),
            destination: None,
            sent: Mutex::new(Sent::default()),
            prefix: String::new(),
        }
    }

    /// Counts and reports to `notify_socket` (`$NOTIFY_SOCKET`: a path, or `@name` for an
    /// abstract socket). Fails if the socket cannot be created or the address is invalid.
    pub fn reported_to(notify_socket: &str, prefix: &str) -> io::Result<Outcomes> {
        let address = match notify_socket.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(notify_socket)?,
        };
        let socket = UnixDatagram::unbound()?;
        // A master that stops reading must never stall the worker's one thread: a report
        // that finds the queue full is dropped, and the next one carries the newer counts.
        socket.set_nonblocking(true)?;
        Ok(Outcomes {
            destination: Some(Destination { socket, address, failure_logged: AtomicBool::new(false) }),
            prefix: prefix.to_owned(),
            ..Outcomes::unreported()
        })
    }

    /// Counts one answered request with HTTP status `status`.
    pub fn record(&self, status: u16) {
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.destination.is_some() {
            self.changed.notify_one();
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> Counts {
        Counts { requests: self.requests.load(Ordering::Relaxed), errors: self.errors.load(Ordering::Relaxed) }
    }

    /// Reports the counts whenever they change, at most every [`REPORT_INTERVAL`]. Never
    /// returns (without a destination it waits forever); the worker drops it at exit, after
    /// [`Outcomes::flush`].
    pub async fn run(&self) {
        self.run_every(REPORT_INTERVAL).await;
    }

    async fn run_every(&self, interval: Duration) {
        if self.destination.is_none() {
            return std::future::pending().await;
        }
        loop {
            self.changed.notified().await;
            while let Some(due) = self.report_if_due(Instant::now(), interval) {
                tokio::time::sleep_until(due.into()).await;
            }
        }
    }

    /// Sends the counts if they changed and the interval since the last report has passed;
    /// otherwise says when to try again (`None`: nothing to send).
    fn report_if_due(&self, now: Instant, interval: Duration) -> Option<Instant> {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.counts();
        match next_report(*sent, current, now, interval) {
            Next::Idle => None,
            Next::SendAt(due) => Some(due),
            Next::SendNow => {
                self.send(current);
                *sent = Sent { counts: current, at: Some(now) };
                None
            }
        }
    }

    /// Sends what is still unsent, whatever the interval: for the worker's exit paths
    /// (drained, `/exit`, SIGQUIT, `--exit-after-ready`), so the master's last numbers are
    /// the worker's final ones.
    pub fn flush(&self) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.counts();
        if current != sent.counts {
            self.send(current);
            *sent = Sent { counts: current, at: Some(Instant::now()) };
        }
    }

    /// One datagram with both lines. A failure is logged once and otherwise ignored: the
    /// counts are cumulative, so the next report that gets through says everything.
    fn send(&self, counts: Counts) {
        let Some(d) = &self.destination else { return };
        if let Err(e) = d.socket.send_to_addr(counts.message().as_bytes(), &d.address) {
            if !d.failure_logged.swap(true, Ordering::Relaxed) {
                eprintln!("{} cannot report request outcomes to the master (logged once): {e}", self.prefix);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> ErrorRate {
        ErrorRate::parse(s).unwrap()
    }

    fn failures(r: ErrorRate, range: std::ops::Range<u64>) -> Vec<u64> {
        range.filter(|&i| r.fails(i)).collect()
    }

    #[test]
    fn error_rate_parser() {
        assert_eq!(rate("0.3"), ErrorRate { per_million: 300_000 });
        assert_eq!(rate("1"), ErrorRate { per_million: 1_000_000 });
        assert_eq!(rate("0"), ErrorRate::default());
        assert_eq!(rate("0.0000005"), ErrorRate { per_million: 1 }, "rounded, not truncated");
        for bad in ["", "x", "-0.1", "1.01", "NaN", "inf", "30%"] {
            assert!(ErrorRate::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn error_rate_fails_exactly_its_share_spread_evenly() {
        // 0.3: exactly 3 of every 10, at the same places in every block of 10.
        let r = rate("0.3");
        assert_eq!(failures(r, 0..10), [3, 6, 9]);
        assert_eq!(failures(r, 10..20), [13, 16, 19]);
        assert_eq!(failures(r, 0..1000).len(), 300);
        assert_eq!(failures(rate("0.5"), 0..6), [1, 3, 5]);
        assert_eq!(failures(rate("0.25"), 0..8), [3, 7]);
        assert!(failures(rate("0"), 0..1000).is_empty());
        assert_eq!(failures(rate("1"), 0..1000).len(), 1000);
        // Any n consecutive requests fail floor(n·F) or ceil(n·F) times.
        let r = rate("0.37");
        for start in 0..200 {
            let n = failures(r, start..start + 20).len();
            assert!(n == 7 || n == 8, "{n} failures in 20 from {start}");
        }
        // Huge indexes do not overflow.
        assert!(rate("1").fails(u64::MAX - 1));
    }

    #[test]
    fn faults_apply_from_their_start_and_count_only_from_there() {
        let t0 = Instant::now();
        let from = t0 + Duration::from_secs(1);
        let faults = Faults::new(rate("0.5"), from);
        assert!(!faults.next_fails(t0), "before the start nothing fails");
        assert!(!faults.next_fails(t0 + Duration::from_millis(999)));
        // From the start: index 0 passes, 1 fails, 2 passes, 3 fails.
        let later = from + Duration::from_millis(1);
        assert_eq!([0; 4].map(|_| faults.next_fails(later)), [false, true, false, true]);
        assert!(!Faults::none().next_fails(later));
    }

    #[test]
    fn throttle_sends_changes_at_most_once_per_interval() {
        let t0 = Instant::now();
        let i = REPORT_INTERVAL;
        let one = Counts { requests: 1, errors: 0 };
        let two = Counts { requests: 2, errors: 1 };
        // Nothing answered yet: nothing to report.
        assert_eq!(next_report(Sent::default(), Counts::default(), t0, i), Next::Idle);
        // The first change goes at once.
        assert_eq!(next_report(Sent::default(), one, t0, i), Next::SendNow);
        let sent = Sent { counts: one, at: Some(t0) };
        // Unchanged: idle, however long it has been (no periodic wake-up).
        assert_eq!(next_report(sent, one, t0 + 10 * i, i), Next::Idle);
        // Changed within the interval: at its end; after it: now.
        assert_eq!(next_report(sent, two, t0 + i / 2, i), Next::SendAt(t0 + i));
        assert_eq!(next_report(sent, two, t0 + i, i), Next::SendNow);
        assert_eq!(next_report(sent, two, t0 + 3 * i, i), Next::SendNow);
    }

    #[test]
    fn message_has_both_lines() {
        assert_eq!(Counts { requests: 20, errors: 6 }.message(), "X_HANDOVER_REQUESTS=20\nX_HANDOVER_ERRORS=6\n");
    }

    /// A datagram socket in a tempdir standing in for the master's.
    fn master() -> (tempfile::TempDir, std::path::PathBuf, tokio::net::UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = tokio::net::UnixDatagram::bind(&path).unwrap();
        (dir, path, sock)
    }

    /// The next report, within `within` (`None`: none came).
    async fn next_report_on(sock: &tokio::net::UnixDatagram, within: Duration) -> Option<String> {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(within, sock.recv(&mut buf)).await.ok()?.unwrap();
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// The first answer is reported at once; a burst within the interval is reported once,
    /// when the interval ends, with the final counts; then the reporter stays quiet.
    #[tokio::test]
    async fn a_burst_is_reported_once_per_interval_with_the_final_counts() {
        const DEADLINE: Duration = Duration::from_secs(10);
        let (_dir, path, sock) = master();
        let outcomes = std::sync::Arc::new(Outcomes::reported_to(path.to_str().unwrap(), "test").unwrap());
        let interval = Duration::from_millis(100);
        let reporter = {
            let o = outcomes.clone();
            tokio::spawn(async move { o.run_every(interval).await })
        };
        let before_first = Instant::now();
        outcomes.record(200);
        let first = next_report_on(&sock, DEADLINE).await;
        assert_eq!(first.as_deref(), Some("X_HANDOVER_REQUESTS=1\nX_HANDOVER_ERRORS=0\n"));
        for status in [500, 200, 503, 404] {
            outcomes.record(status);
        }
        let second = next_report_on(&sock, DEADLINE).await;
        assert_eq!(second.as_deref(), Some("X_HANDOVER_REQUESTS=5\nX_HANDOVER_ERRORS=2\n"));
        // Sent an interval after the first at the earliest (which left after `before_first`).
        assert!(before_first.elapsed() >= interval, "second report after {:?}", before_first.elapsed());
        // Idle: nothing more, however long.
        assert_eq!(next_report_on(&sock, 3 * interval).await, None, "an idle reporter sends nothing");
        // Flush sends only what is unsent.
        outcomes.flush();
        assert_eq!(next_report_on(&sock, interval).await, None, "nothing unsent, nothing flushed");
        reporter.abort();
        outcomes.record(500);
        outcomes.flush();
        assert_eq!(
            next_report_on(&sock, DEADLINE).await.as_deref(),
            Some("X_HANDOVER_REQUESTS=6\nX_HANDOVER_ERRORS=3\n")
        );
    }

    #[test]
    fn an_abstract_address_and_a_missing_master_are_no_error_for_the_worker() {
        // `@name` is an abstract address; nobody listens on this one: the send fails,
        // is logged once, and counting goes on.
        let name = format!("@handover-outcomes-test-{}", std::process::id());
        let outcomes = Outcomes::reported_to(&name, "test").unwrap();
        outcomes.record(200);
        outcomes.flush();
        outcomes.record(200);
        outcomes.flush();
        assert_eq!(outcomes.counts(), Counts { requests: 2, errors: 0 });
        assert!(outcomes.destination.as_ref().unwrap().failure_logged.load(Ordering::Relaxed));
    }
}
