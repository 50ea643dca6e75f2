//! Measurements the tests, the benchmarks and the e2e suite take of what runs: wrk's report
//! (a client that never retries) and the memory of a whole process tree. One reading of
//! each, so that a figure in the docs means the same wherever it was taken.
use std::path::Path;

use serde::Serialize;

/// What wrk reported for one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WrkReport {
    /// Requests completed.
    pub requests: u64,
    /// Socket errors: failed connects.
    pub connect: u64,
    /// Read errors (EOF or reset on a connection with a request outstanding).
    pub read: u64,
    /// Write errors.
    pub write: u64,
    /// Requests that took longer than wrk's `--timeout`.
    pub timeout: u64,
    /// Answers that were not 2xx or 3xx.
    pub non_2xx: u64,
    /// The median latency in milliseconds (only with `--latency`).
    pub p50_ms: Option<f64>,
}

impl WrkReport {
    /// Reads wrk's output. Lines it does not know are ignored; a run without errors prints
    /// no `Socket errors:` line at all.
    pub fn parse(text: &str) -> WrkReport {
        let mut w = WrkReport::default();
        for line in text.lines().map(str::trim) {
            if let Some((n, _)) = line.split_once(" requests in ") {
                w.requests = n.trim().parse().unwrap_or(0);
            } else if let Some(rest) = line.strip_prefix("Socket errors:") {
                for part in rest.split(',') {
                    let mut it = part.split_whitespace();
                    let (Some(key), Some(n)) = (it.next(), it.next().and_then(|n| n.parse().ok())) else { continue };
                    match key {
                        "connect" => w.connect = n,
                        "read" => w.read = n,
                        "write" => w.write = n,
                        "timeout" => w.timeout = n,
                        _ => {}
                    }
                }
            } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
                w.non_2xx = n.trim().parse().unwrap_or(0);
            } else if let Some(v) = line.strip_prefix("50%") {
                w.p50_ms = wrk_duration_ms(v.trim());
            }
        }
        w
    }

    /// Connect, read, write and timeout errors.
    pub fn socket_errors(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }

    /// Socket errors and bad answers together: what a user of wrk sees as failures.
    pub fn errors(&self) -> u64 {
        self.socket_errors() + self.non_2xx
    }
}

/// wrk prints latencies as `812.00us`, `1.23ms` or `2.01s`.
fn wrk_duration_ms(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

/// The pids of `pid` and all its descendants (from `/proc/PID/task/*/children`).
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", all[i])) {
            for t in tasks.flatten() {
                let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                all.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
            }
        }
        i += 1;
    }
    all
}

/// Proportional set size of `pid` in KiB: shared pages divided among the processes that
/// share them, so the PSS of a process tree adds up to what it costs (0 if unreadable).
pub fn pss_kib(pid: i32) -> u64 {
    let path = format!("/proc/{pid}/smaps_rollup");
    std::fs::read_to_string(Path::new(&path))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_parsed() {
        let text = "  1 threads and 8 connections\n  Latency Distribution\n     50%  812.00us\n     99%    2.01s\n\
                      552124 requests in 8.06s, 67.93MB read\n  Socket errors: connect 0, read 26, write 1, timeout 2\n\
                      Non-2xx or 3xx responses: 3\n";
        let w = WrkReport::parse(text);
        assert_eq!((w.requests, w.read, w.write, w.timeout, w.non_2xx), (552124, 26, 1, 2, 3));
        assert_eq!((w.socket_errors(), w.errors()), (29, 32));
        assert!(w.p50_ms.is_some_and(|p| (p - 0.812).abs() < 1e-9), "{:?}", w.p50_ms);
        let clean = WrkReport::parse("  100 requests in 1.00s, 1MB read\n");
        assert_eq!((clean.requests, clean.errors(), clean.p50_ms), (100, 0, None));
    }

    #[test]
    fn the_tree_of_this_process_includes_it_and_costs_memory() {
        let me = std::process::id() as i32;
        assert_eq!(process_tree(me).first(), Some(&me));
        assert!(pss_kib(me) > 0);
    }
}
