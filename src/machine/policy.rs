//! Timing policy: crash backoff, recycle jitter and deadline arithmetic. Pure functions, so
//! the state machine stays deterministic under test.
use std::time::{Duration, Instant};

/// The first respawn delay after a failure.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// The longest respawn delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How many times in a row every slot of the first generation may fail before it was ever
/// ready before handover gives the start up (exit 3): with the backoff, 1.5 s of waiting
/// plus five boots, long enough for a worker that fails once or twice on a passing cause.
pub const START_ATTEMPTS: u32 = 5;

/// The daemon's exit status when it gives a start up (SPEC §5: 3). Not in
/// `RestartPreventExitStatus=`: systemd may try again, bounded by `StartLimitBurst=`.
pub const START_FAILED_EXIT: i32 = 3;
/// A worker that stayed up this long resets its slot's failure count.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
/// How long a worker that missed its watchdog gets between SIGABRT and SIGKILL.
pub const WATCHDOG_KILL_GRACE: Duration = Duration::from_secs(5);

/// The most requests a second a worker's `X_HANDOVER_REQUESTS=` may grow by: far above
/// what one process answers, so that only a counter that jumps (garbage, a restarted count
/// added to an old one) is refused.
pub const MAX_REQUESTS_PER_SECOND: u64 = 1_000_000;

/// Whether a worker answering `requests` more requests in `elapsed` is plausible (at most
/// [`MAX_REQUESTS_PER_SECOND`], over at least one second).
pub fn plausible_requests(requests: u64, elapsed: Duration) -> bool {
    let seconds = elapsed.as_secs_f64().max(1.0);
    (requests as f64) <= MAX_REQUESTS_PER_SECOND as f64 * seconds
}

/// A watched generation (`reload.watch`) is rolled back when a slot of it failed this many
/// times in a row (a crash loop: with the backoff, three crashes within about a second).
pub const WATCH_CRASH_LOOP: u32 = 3;

/// A watched generation's error budget is judged over windows of at least this long (and
/// at least `min_requests`): a release that starts failing late is judged on what it does
/// now, not hidden behind the requests it served well before.
pub const WATCH_WINDOW: Duration = Duration::from_secs(10);

/// How many release records (`handover rollback`'s targets) are kept.
pub const MAX_RECORDS: usize = 16;

/// How long after its spawn a worker booting at the low priority (`reload.boot_priority`)
/// is raised to normal if it is not ready by then: 3/4 of its boot_timeout, so that a boot
/// slowed down by a saturated CPU still has the last quarter at full priority and a reload
/// always finishes, while a boot that takes its time on the low share (a tenth of the CPU
/// beside as many serving workers) is not raised in the middle of it.
pub fn raise_priority_after(boot_timeout: std::time::Duration) -> std::time::Duration {
    boot_timeout / 4 * 3
}

/// The longest the executor's timer sleeps in one go (a later deadline is slept towards in
/// steps), and the longest period of its systemd watchdog ping.
pub const MAX_TIMER_SLEEP: Duration = Duration::from_secs(3600);

/// How late the event loop may wake for a deadline before it counts as a stall
/// ([`crate::machine::Event::Resumed`]): far above a busy host's scheduling delay.
pub const STALL_THRESHOLD: Duration = Duration::from_millis(100);

/// The longest that verdicts on workers' messages are held after a stall.
pub const STALL_HOLD_MAX: Duration = Duration::from_secs(1);

/// How long boot_timeout and watchdog verdicts wait after the event loop resumes from a
/// stall of `stalled`: as long as the stall, at most [`STALL_HOLD_MAX`]. Long enough for the
/// loop to read what is queued on the notify socket and for workers that blocked sending
/// (its queue holds only `net.unix.max_dgram_qlen` datagrams) to get theirs in; a worker
/// that really hung is judged at most this much later.
pub fn stall_hold(stalled: Duration) -> Duration {
    stalled.min(STALL_HOLD_MAX)
}

/// The respawn delay after `failures` consecutive failures (1 → 100 ms, doubling, capped
/// at 30 s).
pub fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16);
    BACKOFF_START.saturating_mul(1 << doublings).min(BACKOFF_CAP)
}

/// The lifetime of one worker under `max_lifetime`, lengthened by up to 10 % so that the
/// workers of one generation are not all recycled in the same instant (gunicorn's
/// `max_requests_jitter` idea). Deterministic in `seed` (the worker id).
pub fn jittered_lifetime(max_lifetime: Duration, seed: u64) -> Duration {
    // splitmix64: a tiny, well-mixed hash; no RNG state needed.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let permille = z % 101; // 0..=100 ‰ of the lifetime
    max_lifetime.saturating_add(max_lifetime.mul_f64(permille as f64 / 1000.0))
}

/// The instant `after` past `from`, never panicking: where `from + after` cannot be
/// represented, the latest instant that can be, short of it, is used instead (`after`
/// halved until it fits). A deadline that far out never fires, which is what such a
/// duration asks for; the config bounds every duration (config::MAX_TIMEOUT and
/// config::MAX_LIFETIME), so this is a second line of defence, not the rule.
pub fn deadline(from: Instant, after: Duration) -> Instant {
    let mut d = after;
    loop {
        if let Some(t) = from.checked_add(d) {
            return t;
        }
        d /= 2;
        if d.is_zero() {
            return from;
        }
    }
}

/// A token bucket for messages that may be dropped in favour of a newer one (systemd's
/// `STATUS=` lines): up to `burst` go at once, then one per `every`. A quiet daemon's few
/// changes (a reload's RELOADING=1, progress, READY=1, the old generation gone) go out as
/// they happen; hundreds of workers becoming ready one by one become a line per `every`.
#[derive(Debug, Clone)]
pub struct Pacer {
    burst: f64,
    every: Duration,
    tokens: f64,
    at: Option<Instant>,
}

impl Pacer {
    /// A full bucket of `burst` tokens, refilled with one per `every`.
    pub fn new(burst: u32, every: Duration) -> Pacer {
        Pacer { burst: f64::from(burst), every, tokens: f64::from(burst), at: None }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(at) = self.at {
            let earned = now.saturating_duration_since(at).as_secs_f64() / self.every.as_secs_f64().max(1e-9);
            self.tokens = (self.tokens + earned).min(self.burst);
        }
        self.at = Some(now);
    }

    /// When a message may go: `None` now, else the instant a token will be there.
    pub fn wait(&mut self, now: Instant) -> Option<Instant> {
        self.refill(now);
        if self.tokens >= 1.0 {
            return None;
        }
        Some(deadline(now, self.every.mul_f64(1.0 - self.tokens)))
    }

    /// A message went (one that may not wait, too: the bucket then stays empty).
    pub fn spend(&mut self, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pacer_lets_a_burst_through_then_one_per_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pacer::new(3, ms(100));
        for _ in 0..3 {
            assert_eq!(p.wait(t0), None, "the burst goes at once");
            p.spend(t0);
        }
        assert_eq!(p.wait(t0), Some(t0 + ms(100)), "then one per interval");
        assert_eq!(p.wait(t0 + ms(99)), Some(t0 + ms(100)));
        assert_eq!(p.wait(t0 + ms(100)), None);
        p.spend(t0 + ms(100));
        assert_eq!(p.wait(t0 + ms(150)), Some(t0 + ms(200)), "half a token earned, half to go");
        // A message that could not wait (a lifecycle one) leaves the bucket empty, no debt.
        p.spend(t0 + ms(150));
        assert_eq!(p.wait(t0 + ms(150)), Some(t0 + ms(250)));
        // Quiet for long enough: full again, never more than the burst.
        assert_eq!(p.wait(t0 + ms(10_000)), None);
        for _ in 0..3 {
            p.spend(t0 + ms(10_000));
        }
        assert!(p.wait(t0 + ms(10_000)).is_some(), "the bucket holds 3, not 100");
    }

    #[test]
    fn backoff_doubles_from_100ms_and_caps_at_30s() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(1600));
        assert_eq!(backoff(9), Duration::from_millis(25_600));
        assert_eq!(backoff(10), BACKOFF_CAP);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn deadline_saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(deadline(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        assert_eq!(deadline(now, Duration::ZERO), now);
        let far = deadline(now, Duration::MAX);
        assert!(far > now + Duration::from_secs(100 * 365 * 24 * 3600), "{:?}", far - now);
        // Saturating again from a far-away instant still does not panic.
        assert!(deadline(far, Duration::MAX) >= far);
        assert!(deadline(far, Duration::from_secs(10_000_000_000_000_000_000)) >= far);
    }

    #[test]
    fn jittered_lifetime_saturates() {
        assert_eq!(jittered_lifetime(Duration::MAX, 1), Duration::MAX);
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_varies() {
        let base = Duration::from_secs(100);
        let lifetimes: Vec<_> = (0..50).map(|s| jittered_lifetime(base, s)).collect();
        assert!(lifetimes.iter().all(|l| *l >= base && *l <= base + base / 10));
        let distinct: std::collections::BTreeSet<_> = lifetimes.iter().collect();
        assert!(distinct.len() > 10, "jitter should spread workers: {distinct:?}");
    }
}
