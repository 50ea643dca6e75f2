//! The human-readable `handover status` table.
use std::time::Duration;

use crate::control::proto::Status;

/// The human-readable `handover status` table.
pub fn render_status(s: &Status) -> String {
    use std::fmt::Write as _;
    // Worker text is cleaned where it is received; clean every string again here, so that
    // nothing in a reply can drive the terminal.
    let clean = crate::text::strip_control_chars;
    let mut out = String::new();
    let _ = writeln!(out, "{} (pid {}): {}: {}", clean(&s.name), s.pid, clean(&s.phase), clean(&s.summary));
    if !s.version.is_empty() {
        let now = crate::unix::unix_now();
        let ago = |t: f64| crate::text::human(Duration::from_secs_f64((now - t).max(0.0)));
        let mut line = format!("handover {} for {}", clean(&s.version), ago(s.version_since_unix));
        if let Some(from) = &s.upgraded_from {
            let _ = write!(line, " (upgraded in place from {})", clean(from));
        }
        if s.upgrades > 0 {
            let _ = write!(line, "; daemon up {}, {} upgrade(s)", ago(s.started_unix), s.upgrades);
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "\n{:<5} {:<10} {:>6} {:>6} {:>8} {:>9} {:>10} {:>8}",
        "GEN", "ROLE", "WANTED", "READY", "BOOTING", "DRAINING", "REQUESTS", "ERRORS"
    );
    for g in &s.generations {
        // The error share where workers report their requests (SPEC §4), else "-".
        let errors = match g.requests {
            0 => "-".to_string(),
            n => crate::machine::budget::percent(g.errors as f64 / n as f64),
        };
        let _ = writeln!(
            out,
            "{:<5} {:<10} {:>6} {:>6} {:>8} {:>9} {:>10} {:>8}",
            g.generation,
            clean(&g.role),
            g.wanted,
            g.ready,
            g.booting,
            g.draining,
            g.requests,
            errors
        );
    }
    if let Some(c) = &s.canary {
        let when = match c.secs_left {
            Some(left) => format!("judged for {} more", crate::text::human(Duration::from_secs_f64(left.max(0.0)))),
            None => "booting".to_string(),
        };
        let _ = writeln!(out, "canary: generation {}, {} beside the old generation, {when}", c.generation, c.canaries);
    }
    if let Some(w) = &s.watch {
        let left = crate::text::human(Duration::from_secs_f64(w.secs_left.max(0.0)));
        let _ = writeln!(
            out,
            "watch: generation {} for {left} more (a crash loop or errors over budget roll it back)",
            w.generation
        );
    }
    if let Some(a) = &s.auto_rollback {
        let at = crate::unix::unix_now() - a.secs_ago;
        let _ = writeln!(out, "rolled back automatically at {}: {}", crate::text::utc_time(at), clean(&a.message));
    }
    if let Some(v) = &s.verdict {
        let _ = writeln!(out, "last verdict: {}", clean(v));
    }
    if let Some(g) = s.rollback_to {
        let _ = writeln!(out, "handover rollback goes back to the release of generation {g}");
    }
    if !s.worker_isolation.is_empty() {
        let _ = writeln!(out, "\nworkers: {}", clean(&s.worker_isolation));
    }
    if !s.boot_priority.is_empty() {
        let _ = writeln!(out, "boot priority: {}", clean(&s.boot_priority));
    }
    // Memory and CPU per worker where each has a cgroup (cgroup per worker mode).
    let usage = s.workers.iter().any(|w| w.cpu_usec.is_some() || w.memory_bytes.is_some());
    // The open client connections of draining workers, while some drain.
    let conns = s.workers.iter().any(|w| w.open_connections.is_some());
    let _ = writeln!(
        out,
        "\n{:<5} {:<5} {:>8} {:<9} {:>9} {:>8}{}{}  STATUS",
        "GEN",
        "SLOT",
        "PID",
        "STATE",
        "SINCE",
        "RESTARTS",
        if usage { format!(" {:>10} {:>9}", "MEMORY", "CPU") } else { String::new() },
        if conns { format!(" {:>5}", "CONNS") } else { String::new() }
    );
    for w in &s.workers {
        let columns = if usage {
            let memory = w.memory_bytes.map_or("-".to_owned(), |b| format!("{:.1}MiB", b as f64 / (1 << 20) as f64));
            let cpu = w.cpu_usec.map_or("-".to_owned(), |u| format!("{:.2}s", u as f64 / 1e6));
            format!(" {memory:>10} {cpu:>9}")
        } else {
            String::new()
        };
        let low = if w.low_priority { "[low CPU priority] " } else { "" };
        let open = match (conns, w.open_connections) {
            (false, _) => String::new(),
            (true, Some(n)) => format!(" {n:>5}"),
            (true, None) => format!(" {:>5}", "-"),
        };
        let _ = writeln!(
            out,
            "{:<5} {:<5} {:>8} {:<9} {:>8.1}s {:>8}{columns}{open}  {low}{}",
            w.generation,
            w.slot,
            w.pid,
            clean(&w.state),
            w.since_secs,
            w.restarts,
            clean(w.status.as_deref().unwrap_or(""))
        );
    }
    if !s.failing.is_empty() {
        let _ = writeln!(out, "\nFAILING SLOTS (crash-loop backoff)");
        let _ = writeln!(out, "{:<5} {:<5} {:>8} {:>13}  LAST FAILURE", "GEN", "SLOT", "RESTARTS", "NEXT ATTEMPT");
        for f in &s.failing {
            let next = match f.next_attempt_secs {
                Some(secs) => format!("in {secs:.1}s"),
                None => "booting".into(),
            };
            let _ = writeln!(
                out,
                "{:<5} {:<5} {:>8} {:>13}  {}",
                f.generation,
                f.slot,
                f.restarts,
                next,
                f.last_failure.as_deref().unwrap_or("")
            );
        }
    }
    // The accept queue now (of its limit) and its peak during the last reload: "n/a" where
    // the kernel does not tell, "-" before the first reload.
    let _ = writeln!(out, "\n{:<16} {:<8} {:>11} {:>11}  ADDRESS", "SOCKET", "ORIGIN", "QUEUE", "RELOAD PEAK");
    for k in &s.sockets {
        let (queue, peak) = match k.accept_queue {
            None => ("n/a".to_owned(), "n/a".to_owned()),
            Some(n) => (
                k.accept_queue_limit.map_or(n.to_string(), |limit| format!("{n}/{limit}")),
                k.reload_peak_accept_queue.map_or("-".to_owned(), |p| p.to_string()),
            ),
        };
        let _ = writeln!(
            out,
            "{:<16} {:<8} {queue:>11} {peak:>11}  {}",
            clean(&k.name),
            clean(&k.origin),
            clean(&k.address)
        );
    }
    if let Some(e) = &s.metrics_error {
        let _ = writeln!(out, "\nmetrics: {} (retried at the next change; nothing waits on it)", clean(e));
    }
    if let Some(last) = &s.last_reload {
        let _ = writeln!(out, "\nlast reload: {}", clean(last));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::WorkerStatus;

    fn worker(generation: u64, state: &str, open_connections: Option<usize>) -> WorkerStatus {
        WorkerStatus {
            slot: 0,
            pid: 100 + generation as i32,
            generation,
            state: state.into(),
            since_secs: 1.0,
            restarts: 0,
            status: None,
            memory_bytes: None,
            cpu_usec: None,
            open_connections,
            low_priority: false,
        }
    }

    /// The CONNS column appears while some worker drains, with its count; `-` for the others.
    #[test]
    fn draining_workers_show_their_open_connections() {
        let mut s = Status { workers: vec![worker(2, "ready", None)], ..Status::default() };
        assert!(!render_status(&s).contains("CONNS"), "nothing drains: no column");
        s.workers.push(worker(1, "draining", Some(3)));
        let text = render_status(&s);
        let header = text.lines().find(|l| l.starts_with("GEN   SLOT")).expect("worker header");
        let column = header.split_whitespace().position(|c| c == "CONNS").expect("CONNS column");
        let cell = |pid: &str| {
            let row = text.lines().find(|l| l.split_whitespace().nth(2) == Some(pid)).expect("the worker's row");
            row.split_whitespace().nth(column).map(str::to_owned)
        };
        assert_eq!(cell("101").as_deref(), Some("3"), "{text}");
        assert_eq!(cell("102").as_deref(), Some("-"), "{text}");
    }
}
