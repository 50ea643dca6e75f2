//! The error budget: whether a judged set of workers (a reload's canaries, or a watched new
//! generation) fails more requests than its baseline (the old generation over the same
//! window) by more than `reload.max_error_rate`, beyond chance. Plain arithmetic on counts;
//! the machine decides when to ask (`judging.rs`).
//!
//! # Why a confidence bound, not the raw share
//! With few requests a share is noise: 2 errors in the first 50 requests of an app that
//! fails 0.1% of them is 4%, four times a 1-point budget. The judged share is therefore
//! taken at the lower end of its 99% Wilson score interval, and compared with the
//! baseline's share plus the budget: a release is blamed only when even the most
//! favourable reading of its numbers is over. A release that fails 30% of its requests is
//! still caught within its first 50 (the bound is then 16%); one that fails as often as the
//! old one never is. The baseline is taken at face value: it is the old generation, serving
//! most of the traffic over the same window, so its count is the larger one.
use serde::{Deserialize, Serialize};

/// The z value of the bound: 2.576, a two-sided 99% interval (so one side is wrong once in
/// 200 judgements at the most, and far more rarely at the counts judged here).
pub const Z: f64 = 2.576;

/// Requests answered and how many of them failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Requests answered.
    pub requests: u64,
    /// Of those, failed.
    pub errors: u64,
}

impl Tally {
    /// What was added since `earlier` (an earlier reading of the same counters).
    pub fn since(self, earlier: Tally) -> Tally {
        Tally {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
        }
    }

    /// Adds `other` (saturating).
    pub fn add(&mut self, other: Tally) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
    }

    /// The share of failed requests; None without requests.
    pub fn share(self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors.min(self.requests) as f64 / self.requests as f64)
    }
}

/// What [`judge`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Fewer requests than `min_requests`: not judged yet.
    TooFew,
    /// Inside the budget.
    Within,
    /// Over the budget: the judged workers fail more than the baseline plus the budget,
    /// even at the lower bound of their share.
    Over,
}

/// Judges `judged` against `baseline` (see the module docs).
pub fn judge(judged: Tally, baseline: Tally, max_error_rate: f64, min_requests: u64) -> Verdict {
    if judged.requests < min_requests.max(1) {
        return Verdict::TooFew;
    }
    let allowed = baseline.share().unwrap_or(0.0) + max_error_rate;
    if wilson_lower_bound(judged.errors.min(judged.requests), judged.requests, Z) > allowed {
        Verdict::Over
    } else {
        Verdict::Within
    }
}

/// The lower end of the Wilson score interval of `errors` in `n` at `z`: a share that is
/// still plausible for a small count, and tends to `errors / n` as `n` grows.
pub fn wilson_lower_bound(errors: u64, n: u64, z: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let n_f = n as f64;
    let p = errors.min(n) as f64 / n_f;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n_f);
    let margin = z * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt();
    ((centre - margin) / (1.0 + z2 / n_f)).max(0.0)
}

/// A share as people read it: `14%`, `2.5%`, `0.2%`, `0.05%`, `0%`.
pub fn percent(share: f64) -> String {
    let pct = share * 100.0;
    let text = if pct >= 10.0 {
        format!("{pct:.0}")
    } else if pct >= 1.0 {
        format!("{pct:.1}")
    } else {
        format!("{pct:.2}")
    };
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_string() } else { text };
    format!("{text}%")
}

/// `14% of 212 requests failed`, or `no requests reported`.
pub fn describe(t: Tally) -> String {
    match t.share() {
        Some(share) => {
            let what = if t.requests == 1 { "request" } else { "requests" };
            format!("{} of {} {what} failed", percent(share), t.requests)
        }
        None => "no requests reported".to_string(),
    }
}

/// `gen 7: 0.2%`, or `gen 7: no requests reported`: the baseline beside a verdict.
pub fn describe_baseline(generation: u64, t: Tally) -> String {
    match t.share() {
        Some(share) => format!("gen {generation}: {}", percent(share)),
        None => format!("gen {generation}: no requests reported"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(requests: u64, errors: u64) -> Tally {
        Tally { requests, errors }
    }

    #[test]
    fn a_release_failing_30_percent_is_over_within_its_first_50_requests() {
        assert_eq!(judge(t(50, 15), t(200, 0), 0.01, 50), Verdict::Over);
        assert_eq!(judge(t(49, 15), t(200, 0), 0.01, 50), Verdict::TooFew, "min_requests first");
        // A database down for both: the old generation fails as much, the release is not blamed.
        assert_eq!(judge(t(50, 15), t(200, 60), 0.01, 50), Verdict::Within);
    }

    #[test]
    fn a_few_errors_in_few_requests_are_not_a_verdict() {
        // 0.1% apps: 1 or 2 errors in the first 50 requests happen; they are not "4% > 1%".
        assert_eq!(judge(t(50, 1), t(200, 0), 0.01, 50), Verdict::Within);
        assert_eq!(judge(t(50, 2), t(200, 0), 0.01, 50), Verdict::Within);
        // Many requests: the share itself decides.
        assert_eq!(judge(t(100_000, 2_000), t(400_000, 100), 0.01, 50), Verdict::Over);
        assert_eq!(judge(t(100_000, 1_000), t(400_000, 400), 0.01, 50), Verdict::Within);
    }

    #[test]
    fn shares_read_as_people_write_them() {
        assert_eq!(percent(0.14), "14%");
        assert_eq!(percent(0.025), "2.5%");
        assert_eq!(percent(0.002), "0.2%");
        assert_eq!(percent(0.0005), "0.05%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(describe(t(212, 30)), "14% of 212 requests failed");
        assert_eq!(describe(t(0, 0)), "no requests reported");
        assert_eq!(describe_baseline(7, t(1000, 2)), "gen 7: 0.2%");
    }

    proptest! {
        /// The bound never exceeds the share and never goes below 0; it rises with errors.
        #[test]
        fn the_bound_is_below_the_share_and_monotonic(n in 1u64..1_000_000, e in 0u64..1_000_000) {
            let e = e.min(n);
            let lower = wilson_lower_bound(e, n, Z);
            prop_assert!(lower >= 0.0 && lower <= e as f64 / n as f64 + 1e-12);
            if e < n {
                prop_assert!(wilson_lower_bound(e + 1, n, Z) >= lower);
            }
        }

        /// Not over the budget when the judged share is within the baseline's plus the
        /// budget: a verdict of Over always means a share really above it.
        #[test]
        fn over_means_the_share_is_over(n in 1u64..100_000, e in 0u64..100_000, bn in 0u64..1_000_000, be in 0u64..1_000_000, rate in 0.0f64..=1.0, min in 1u64..1000) {
            let (judged, baseline) = (t(n, e.min(n)), t(bn, be.min(bn)));
            let verdict = judge(judged, baseline, rate, min);
            if n < min {
                prop_assert_eq!(verdict, Verdict::TooFew);
            }
            if verdict == Verdict::Over {
                let share = judged.share().unwrap_or(0.0);
                prop_assert!(share > baseline.share().unwrap_or(0.0) + rate);
            }
        }

        /// The same error share as the baseline is never over, whatever the counts.
        #[test]
        fn the_baseline_share_is_never_over(n in 1u64..1_000_000, per_mille in 0u64..=1000, scale in 1u64..10, rate in 0.0f64..0.2) {
            let judged = t(n, n * per_mille / 1000);
            let baseline = t(n * scale, n * scale * per_mille / 1000);
            prop_assert_ne!(judge(judged, baseline, rate, 1), Verdict::Over);
        }

        /// Counts far over the budget are caught once min_requests is reached: 30% errors
        /// against a clean baseline, with a budget of at most 5 points.
        #[test]
        fn a_bad_release_is_caught(n in 50u64..1_000_000, rate in 0.0f64..0.05) {
            let judged = t(n, n * 3 / 10);
            prop_assert_eq!(judge(judged, t(n * 4, 0), rate, 50), Verdict::Over);
        }
    }
}
