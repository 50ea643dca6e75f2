//! Figures computed from a load report, in milliseconds, for the JSON and the tables.
use std::collections::BTreeMap;
use std::time::Duration;

use handover::demo::loadgen::{LoadHandle, LoadReport, LoadSpec, Target};
use serde::Serialize;

/// Milliseconds, as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What the load looked like within one window.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Window {
    /// Window start, seconds since the load started.
    pub from_s: f64,
    /// Window length, seconds.
    pub secs: f64,
    /// Requests completed in it.
    pub completed: usize,
    /// Longest interval without a completed request (the window edges count as edges).
    pub gap_ms: f64,
    /// Where the longest gap began, seconds since the window start.
    pub gap_at_s: f64,
    /// The 5 longest gaps: (start in seconds since the window start, length in ms).
    pub top_gaps: Vec<(f64, f64)>,
    /// Latency percentiles of the requests that started in it.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

impl Window {
    /// The window `[from, to]` of `r`.
    pub fn of(r: &LoadReport, from: Duration, to: Duration) -> Window {
        let completed = r.completions.iter().filter(|&&c| c >= from && c <= to).count();
        let gaps = gaps(r, from, to);
        let (gap, gap_at) = gaps.first().copied().unwrap_or((Duration::ZERO, from));
        debug_assert_eq!(gap, r.longest_gap_within(from, to));
        Window {
            top_gaps: gaps.iter().take(5).map(|&(g, at)| ((at - from).as_secs_f64(), ms(g))).collect(),
            gap_at_s: (gap_at - from).as_secs_f64(),
            from_s: from.as_secs_f64(),
            secs: (to.saturating_sub(from)).as_secs_f64(),
            completed,
            gap_ms: ms(gap),
            p50_ms: ms(r.latency_within(from, to, 50.0)),
            p99_ms: ms(r.latency_within(from, to, 99.0)),
            max_ms: ms(r.latency_within(from, to, 100.0)),
        }
    }
}

/// Every interval without a completion in `[from, to]` (window edges count, as in
/// `LoadReport::longest_gap_within`) with where it began, longest first.
fn gaps(r: &LoadReport, from: Duration, to: Duration) -> Vec<(Duration, Duration)> {
    let mut prev = from;
    let mut all = Vec::new();
    for &c in r.completions.iter().filter(|&&c| c >= from && c <= to) {
        all.push((c - prev, prev));
        prev = c;
    }
    all.push((to.saturating_sub(prev), prev));
    all.sort_by_key(|g| std::cmp::Reverse(g.0));
    all
}

/// Request counts of a load run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Counts {
    /// Requests started.
    pub sent: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Failed.
    pub failed: u64,
    /// Retried once on a new connection, as RFC 9112 §9.3.1 allows (also in ok or failed).
    pub retried: u64,
    /// The first failure reasons with their time (s since the load started), at most 5.
    pub first_failures: Vec<String>,
    /// Responses by the `gen=` of their body.
    pub by_generation: BTreeMap<String, u64>,
}

impl Counts {
    /// From a report.
    pub fn of(r: &LoadReport) -> Counts {
        Counts {
            sent: r.sent,
            ok: r.ok,
            failed: r.failed,
            retried: r.retried,
            first_failures: r
                .failures
                .iter()
                .take(5)
                .map(|f| format!("{} @{:.3}s", f.reason, f.at.as_secs_f64()))
                .collect(),
            by_generation: r.bodies_by_gen.clone(),
        }
    }
}

/// Completions per `bucket` from `from` to `to` (offsets since the load started).
pub fn timeline(r: &LoadReport, from: Duration, to: Duration, bucket: Duration) -> Vec<u64> {
    let n = ((to.saturating_sub(from)).as_nanos() / bucket.as_nanos()) as usize;
    let mut out = vec![0u64; n];
    for &c in &r.completions {
        if c < from {
            continue;
        }
        let i = ((c - from).as_nanos() / bucket.as_nanos()) as usize;
        if i < n {
            out[i] += 1;
        }
    }
    out
}

/// Starts the benchmark's load: `clients` loopback clients, bounded to `max`.
pub fn load(addr: std::net::SocketAddr, clients: usize, keep_alive: bool, max: Duration) -> anyhow::Result<LoadHandle> {
    let mut spec = LoadSpec::new(Target::Tcp(addr));
    spec.clients = clients;
    spec.keep_alive = keep_alive;
    spec.request_timeout = Duration::from_secs(10);
    spec.max_duration = max;
    Ok(handover::demo::loadgen::start(spec)?)
}

/// Waits until the load has completed at least one request (bounded).
pub fn wait_flowing(load: &LoadHandle, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while load.snapshot().1 == 0 {
        if std::time::Instant::now() >= deadline {
            anyhow::bail!("no request completed within {timeout:?}: {:?}", load.snapshot());
        }
        std::thread::sleep(crate::harness::POLL);
    }
    Ok(())
}

/// Median of a non-empty list (mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
