//! The metrics derived from a real machine's effects (a simulated executor, a fake clock),
//! the text format, and the atomic file write.
use std::collections::{BTreeMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::{Config, Strategy};
use crate::machine::{Event, WorkerMessage};

/// The machine, fed as the executor feeds it, with the metrics watching every step.
struct Sim {
    m: Machine,
    metrics: Metrics,
    now: Instant,
    next_pid: Pid,
    /// pid → generation of every live worker.
    live: BTreeMap<Pid, u64>,
}

impl Sim {
    fn new(cfg: Config) -> Sim {
        let now = Instant::now();
        let (m, fx) = Machine::start(Arc::new(cfg), now);
        let mut sim = Sim { m, metrics: Metrics::new("app"), now, next_pid: 100, live: BTreeMap::new() };
        sim.run(None, fx);
        sim
    }

    /// Like the executor's `dispatch`: observe, carry out (spawns get pids), feed back.
    fn run(&mut self, exited: Option<Pid>, fx: Vec<Effect>) {
        let mut queue = VecDeque::new();
        self.metrics.observe(exited, &fx, self.now);
        for e in &fx {
            if let Effect::Spawn(req) = e {
                let pid = self.next_pid;
                self.next_pid += 1;
                self.live.insert(pid, req.generation);
                queue.push_back(Event::Spawned { worker: req.worker, pid });
            }
        }
        while let Some(ev) = queue.pop_front() {
            let fx = self.m.step(ev, self.now);
            self.run(None, fx);
        }
    }

    fn feed(&mut self, ev: Event) {
        let exited = match &ev {
            Event::Exited { pid, .. } => Some(*pid),
            _ => None,
        };
        let fx = self.m.step(ev, self.now);
        self.run(exited, fx);
    }

    fn ready_all(&mut self, generation: u64) {
        let pids: Vec<Pid> = self.live.iter().filter(|(_, g)| **g == generation).map(|(p, _)| *p).collect();
        for pid in pids {
            self.feed(Event::Message { sender: pid, sender_pgid: Some(pid), message: WorkerMessage::Ready });
        }
    }

    fn exit(&mut self, pid: Pid) {
        self.live.remove(&pid);
        self.feed(Event::Exited { pid, status: "exit code 1".into() });
    }

    /// Every worker told to stop exits (drains).
    fn drain(&mut self, generation: u64) {
        let pids: Vec<Pid> = self.live.iter().filter(|(_, g)| **g == generation).map(|(p, _)| *p).collect();
        for pid in pids {
            self.exit(pid);
        }
    }

    fn pids_of(&self, generation: u64) -> Vec<Pid> {
        self.live.iter().filter(|(_, g)| **g == generation).map(|(p, _)| *p).collect()
    }

    fn reload(&mut self, cfg: Result<Config, String>) {
        self.feed(Event::ReloadRequested { config: cfg.map(Arc::new), requester: None });
    }

    fn text(&self) -> String {
        self.metrics.render(&self.m)
    }
}

fn config(count: usize) -> Config {
    crate::supervisor::tests::config(count, Strategy::AllAtOnce, 1)
}

/// The value of the sample `series` (name and labels as written) in the text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn reloads_are_counted_by_result_with_their_durations() {
    let mut sim = Sim::new(config(2));
    sim.ready_all(1);
    let t = sim.text();
    assert_eq!(sample(&t, "handover_active_generation{name=\"app\"}"), Some(1.0), "{t}");
    assert_eq!(sample(&t, "handover_workers{name=\"app\",state=\"ready\"}"), Some(2.0), "{t}");
    assert_eq!(sample(&t, "handover_reloads_total{name=\"app\",result=\"ok\"}"), Some(0.0), "{t}");
    assert!(!t.contains("handover_last_reload_duration_seconds{"), "no reload yet: {t}");

    // A good reload that takes 3 s.
    sim.reload(Ok(config(2)));
    assert!(sim.text().contains("handover_reload_in_progress{name=\"app\"} 1"));
    assert_eq!(sample(&sim.text(), "handover_workers{name=\"app\",state=\"booting\"}"), Some(2.0));
    sim.now += Duration::from_secs(3);
    sim.ready_all(2);
    sim.drain(1);
    // A broken one: a new worker exits before it is ready, 0.2 s in.
    sim.reload(Ok(config(2)));
    sim.now += Duration::from_millis(200);
    let bad = sim.pids_of(3)[0];
    sim.exit(bad);
    sim.drain(3);
    // An invalid config is refused at once.
    sim.reload(Err("app.toml:1:1: zzz: unknown key".into()));

    let t = sim.text();
    let s = sim.metrics.state();
    assert_eq!(s.reloads, Reloads { ok: 1, rolled_back: 1, refused: 1 }, "{t}");
    assert_eq!(sample(&t, "handover_reloads_total{name=\"app\",result=\"ok\"}"), Some(1.0), "{t}");
    assert_eq!(sample(&t, "handover_reloads_total{name=\"app\",result=\"rolled_back\"}"), Some(1.0), "{t}");
    assert_eq!(sample(&t, "handover_reloads_total{name=\"app\",result=\"refused\"}"), Some(1.0), "{t}");
    assert_eq!(sample(&t, "handover_active_generation{name=\"app\"}"), Some(2.0), "{t}");
    assert_eq!(sample(&t, "handover_reload_in_progress{name=\"app\"}"), Some(0.0), "{t}");
    assert_eq!(sample(&t, "handover_last_reload_duration_seconds{name=\"app\"}"), Some(0.2), "{t}");
    // Two observed (the refused one has no duration): 0.2 s and 3 s.
    assert_eq!(sample(&t, "handover_reload_duration_seconds_count{name=\"app\"}"), Some(2.0), "{t}");
    assert_eq!(sample(&t, "handover_reload_duration_seconds_sum{name=\"app\"}"), Some(3.2), "{t}");
    assert_eq!(sample(&t, "handover_reload_duration_seconds_bucket{name=\"app\",le=\"0.1\"}"), Some(0.0), "{t}");
    assert_eq!(sample(&t, "handover_reload_duration_seconds_bucket{name=\"app\",le=\"0.25\"}"), Some(1.0), "{t}");
    assert_eq!(sample(&t, "handover_reload_duration_seconds_bucket{name=\"app\",le=\"2.5\"}"), Some(1.0), "{t}");
    assert_eq!(sample(&t, "handover_reload_duration_seconds_bucket{name=\"app\",le=\"5\"}"), Some(2.0), "{t}");
    assert_eq!(sample(&t, "handover_reload_duration_seconds_bucket{name=\"app\",le=\"+Inf\"}"), Some(2.0), "{t}");
    // Gen 1's two workers and gen 3's other one drained; gen 3's first one failed.
    assert_eq!(s.worker_exits, WorkerExits { drained: 3, failed: 1, watchdog: 0, killed: 0 }, "{t}");
    assert_eq!(s.restarts, 0, "{t}");
}

#[test]
fn exits_by_reason_and_restarts() {
    let mut cfg = config(2);
    cfg.workers.graceful_timeout = Duration::from_secs(1);
    cfg.workers.boot_timeout = Duration::from_secs(5);
    let mut sim = Sim::new(cfg.clone());
    sim.ready_all(1);
    // A crash of a serving worker: a failure, then a respawn in its slot after the backoff.
    let crashed = sim.pids_of(1)[0];
    sim.exit(crashed);
    assert_eq!(sim.metrics.state().worker_exits.failed, 1);
    assert_eq!(sim.metrics.state().restarts, 0, "not respawned yet (backoff)");
    let next = sim.m.next_deadline().unwrap();
    sim.now = next;
    sim.feed(Event::Tick);
    assert_eq!(sim.metrics.state().restarts, 1);
    // The respawned one never becomes ready: boot_timeout stops it; it does not exit in
    // graceful_timeout and is SIGKILLed; its exit counts as failed (the first reason).
    let respawned = *sim.pids_of(1).iter().max().unwrap();
    sim.now += Duration::from_secs(5);
    sim.feed(Event::Tick);
    sim.now += Duration::from_secs(1);
    sim.feed(Event::Tick);
    sim.exit(respawned);
    assert_eq!(sim.metrics.state().worker_exits.failed, 2);
    assert_eq!(sim.metrics.state().worker_exits.killed, 0);
    // A stop where one worker ignores the signal: SIGKILL after graceful_timeout.
    let drained_before = sim.metrics.state().worker_exits.drained;
    sim.feed(Event::StopRequested { fast: false });
    let pids = sim.pids_of(1);
    assert_eq!(pids.len(), 2, "{pids:?}");
    sim.exit(pids[0]);
    sim.now += Duration::from_secs(2);
    sim.feed(Event::Tick);
    sim.exit(pids[1]);
    let s = sim.metrics.state().clone();
    assert_eq!(s.worker_exits.killed, 1, "{s:?}");
    assert_eq!(s.worker_exits.drained, drained_before + 1, "{s:?}");
    let t = sim.text();
    assert_eq!(sample(&t, "handover_worker_exits_total{name=\"app\",reason=\"killed\"}"), Some(1.0), "{t}");
    assert_eq!(sample(&t, "handover_worker_exits_total{name=\"app\",reason=\"failed\"}"), Some(2.0), "{t}");
    assert_eq!(sample(&t, "handover_worker_restarts_total{name=\"app\"}"), Some(s.restarts as f64), "{t}");
    assert!(s.restarts >= 2, "the boot-timed-out slot was respawned too: {s:?}");
}

#[test]
fn upgrades_start_at_zero_and_are_counted() {
    let mut sim = Sim::new(config(1));
    let t = sim.text();
    assert_eq!(sample(&t, "handover_upgrades_total{name=\"app\",result=\"ok\"}"), Some(0.0), "{t}");
    sim.metrics.record_upgrade(true);
    sim.metrics.record_upgrade(false);
    sim.metrics.record_upgrade(true);
    let t = sim.text();
    assert_eq!(sample(&t, "handover_upgrades_total{name=\"app\",result=\"ok\"}"), Some(2.0), "{t}");
    assert_eq!(sample(&t, "handover_upgrades_total{name=\"app\",result=\"failed\"}"), Some(1.0), "{t}");
}

#[test]
fn the_draining_connections_gauge_is_what_the_executor_sampled() {
    let mut sim = Sim::new(config(1));
    let series = "handover_draining_connections{name=\"app\"}";
    let t = sim.text();
    assert_eq!(sample(&t, series), Some(0.0), "present at 0 before anything drains: {t}");
    assert!(t.contains("# TYPE handover_draining_connections gauge\n"), "{t}");
    sim.metrics.set_draining_connections(7);
    assert_eq!(sample(&sim.text(), series), Some(7.0));
}

/// Every family has HELP and TYPE before its samples; counters end in `_total`; units are
/// base units in the name; label values are quoted; every line is a comment or a sample.
#[test]
fn the_text_format_follows_the_conventions() {
    let mut state = MetricsState::default();
    state.reload_duration.observe(0.7);
    state.last_reload_duration_seconds = Some(0.7);
    let t = render("we\"ird\\na\nme", &state, 7, &[("booting", 1), ("ready", 2), ("draining", 0)], false);
    assert!(t.ends_with('\n'));
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    for line in t.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(!help.is_empty() && help.ends_with('.'), "{line}");
            helped.insert(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(helped.contains(name), "TYPE before HELP: {line}");
            assert!(types.insert(name.into(), kind.into()).is_none(), "twice: {line}");
            match kind {
                "counter" => assert!(name.ends_with("_total"), "{line}"),
                "gauge" | "histogram" => assert!(!name.ends_with("_total"), "{line}"),
                _ => panic!("unexpected type: {line}"),
            }
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{line}");
            let name = series.split('{').next().unwrap();
            let family = types
                .keys()
                .filter(|f| name == f.as_str() || name.strip_prefix(f.as_str()).is_some_and(|s| s.starts_with('_')))
                .max_by_key(|f| f.len())
                .unwrap_or_else(|| panic!("sample before its TYPE: {line}"));
            assert!(name.starts_with("handover_"), "{line}");
            assert!(!name.contains("millis") && !name.contains("_ms"), "base units: {line}");
            assert!(series.contains("name=\"we\\\"ird\\\\na\\nme\""), "escaped label: {line}");
            let _ = family;
        }
    }
    assert_eq!(types.get("handover_reload_duration_seconds").map(String::as_str), Some("histogram"));
    assert!(t.contains("handover_build_info{name=\"we\\\"ird\\\\na\\nme\",version=\""));
    assert!(t.contains("handover_reload_duration_seconds_bucket{name=\"we\\\"ird\\\\na\\nme\",le=\"1\"} 1\n"), "{t}");
    assert!(t.contains("handover_active_generation{name=\"we\\\"ird\\\\na\\nme\"} 7\n"));
}

#[test]
fn the_histogram_is_cumulative_in_the_text() {
    let mut s = MetricsState::default();
    for v in [0.05, 0.1, 0.3, 4.0, 1000.0] {
        s.reload_duration.observe(v);
    }
    let t = render("a", &s, 1, &[], false);
    let bucket = |le: &str| sample(&t, &format!("handover_reload_duration_seconds_bucket{{name=\"a\",le=\"{le}\"}}"));
    assert_eq!(bucket("0.1"), Some(2.0), "an observation on a bound falls in its bucket");
    assert_eq!(bucket("0.5"), Some(3.0));
    assert_eq!(bucket("5"), Some(4.0));
    assert_eq!(bucket("600"), Some(4.0));
    assert_eq!(bucket("+Inf"), Some(5.0));
    assert_eq!(sample(&t, "handover_reload_duration_seconds_count{name=\"a\"}"), Some(5.0));
}

/// What the upgrade carries: the counters survive a JSON round trip, and a state from a
/// version with other buckets (or an older one without some field) still loads.
#[test]
fn the_state_round_trips_and_tolerates_other_versions() {
    let mut sim = Sim::new(config(1));
    sim.ready_all(1);
    sim.reload(Err("bad".into()));
    sim.metrics.record_upgrade(true);
    let json = serde_json::to_string(sim.metrics.state()).unwrap();
    let back: MetricsState = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, sim.metrics.state());
    let restored = Metrics::restore("app", back);
    assert_eq!(restored.state().reloads.refused, 1);
    assert_eq!(restored.state().upgrades.ok, 1);
    let old: MetricsState = serde_json::from_str(
        r#"{"reloads":{"ok":4},"reload_duration":{"bounds":[1.0],"counts":[3,1],"sum":9,"count":4}}"#,
    )
    .unwrap();
    let restored = Metrics::restore("app", old);
    assert_eq!(restored.state().reloads.ok, 4);
    assert_eq!(restored.state().reload_duration, Histogram::default(), "other buckets: the histogram restarts");
}

#[test]
fn the_file_is_replaced_atomically_with_mode_0644_and_no_symlink_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.prom");
    // A symlink planted at the temporary path must be replaced, not written through.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join(".app.prom.tmp")).unwrap();
    // SAFETY: umask(2) cannot fail; a strict umask checks that the mode is set explicitly.
    let old = unsafe { libc::umask(0o077) };
    let written = write_atomically(&path, "a 1\n");
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    written.unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 1\n");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
    assert!(!dir.path().join(".app.prom.tmp").exists(), "the temporary file was renamed");
    // A reader holding the old file keeps reading the old contents (rename, not rewrite).
    let held = std::fs::File::open(&path).unwrap();
    write_atomically(&path, "a 2\n").unwrap();
    assert_eq!(std::io::read_to_string(held).unwrap(), "a 1\n");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
    // A directory that cannot be written: an error, nothing half-written.
    let missing = dir.path().join("no-such-dir/app.prom");
    assert!(write_atomically(&missing, "x").is_err());
}

#[test]
fn flush_writes_only_changes_and_follows_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.prom");
    let mut cfg = config(1);
    cfg.metrics.textfile = Some(path.clone());
    let mut sim = Sim::new(cfg.clone());
    sim.metrics.flush(&sim.m);
    sim.metrics.sync();
    let first = std::fs::metadata(&path).unwrap();
    // Nothing changed: no write (the inode stays; a write renames a new one in).
    sim.metrics.flush(&sim.m);
    sim.metrics.sync();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), first.ino());
    sim.ready_all(1);
    sim.metrics.flush(&sim.m);
    sim.metrics.sync();
    assert_ne!(std::fs::metadata(&path).unwrap().ino(), first.ino());
    let t = std::fs::read_to_string(&path).unwrap();
    assert_eq!(sample(&t, "handover_workers{name=\"app\",state=\"ready\"}"), Some(1.0), "{t}");
    // A reload that moves the file removes the old one.
    let moved = dir.path().join("moved.prom");
    let mut cfg2 = cfg.clone();
    cfg2.metrics.textfile = Some(moved.clone());
    sim.reload(Ok(cfg2));
    sim.ready_all(2);
    sim.metrics.flush(&sim.m);
    sim.metrics.sync();
    assert!(moved.exists() && !path.exists());
    let t = std::fs::read_to_string(&moved).unwrap();
    assert_eq!(sample(&t, "handover_reloads_total{name=\"app\",result=\"ok\"}"), Some(1.0), "{t}");
    // Dropping the metrics (the daemon exits) writes what was handed over last.
    sim.drain(1);
    sim.metrics.flush(&sim.m);
    let expected = sim.text();
    drop(sim);
    assert_eq!(std::fs::read_to_string(&moved).unwrap(), expected);
}

/// Many texts handed over in a burst (a large reload): the event loop does not wait for the
/// disk, and the file ends with the newest text. Prints the loop's time per flush (render
/// and hand-over) against a synchronous write of the same text, measured in the same run.
#[test]
fn a_burst_of_changes_costs_the_loop_no_write_and_ends_with_the_newest_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.prom");
    let mut cfg = config(1000);
    cfg.metrics.textfile = Some(path.clone());
    let mut sim = Sim::new(cfg);
    let pids: Vec<Pid> = sim.live.keys().copied().collect();
    let mut in_flush = Duration::ZERO;
    for &pid in &pids {
        sim.feed(Event::Message { sender: pid, sender_pgid: Some(pid), message: WorkerMessage::Ready });
        let t = Instant::now();
        sim.metrics.flush(&sim.m);
        in_flush += t.elapsed();
    }
    sim.metrics.sync();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(sample(&text, "handover_workers{name=\"app\",state=\"ready\"}"), Some(1000.0), "{text}");
    let baseline = dir.path().join("baseline.prom");
    let t = Instant::now();
    for _ in 0..100 {
        write_atomically(&baseline, &text).unwrap();
    }
    let sync_write = t.elapsed() / 100;
    let per_flush = in_flush / pids.len() as u32;
    println!(
        "numbers: metrics: per flush on the event loop {per_flush:?} (1000 changes) vs a synchronous write {sync_write:?} ({:.3}x)",
        per_flush.as_secs_f64() / sync_write.as_secs_f64().max(1e-9)
    );
}

#[test]
fn accept_queues_as_last_read_and_the_reloads_peak_are_gauges_per_socket() {
    let mut sim = Sim::new(config(1));
    sim.ready_all(1);
    let t = sim.metrics.render(&sim.m);
    assert!(!t.contains("handover_listen_queue"), "nothing read yet: {t}");
    let socket = |name: &str, queue: Option<u32>| SocketStatus {
        name: name.into(),
        address: "127.0.0.1:8000".into(),
        origin: "bound".into(),
        accept_queue: queue,
        accept_queue_limit: queue.map(|_| 128),
        reload_peak_accept_queue: None,
    };
    // A moved address keeps its name on two sockets for a while: one series, the longer.
    sim.metrics.note_sockets(&[socket("http", Some(2)), socket("http", Some(7)), socket("unix", None)]);
    sim.feed(Event::ReloadRequested { config: Ok(Arc::new(config(1))), requester: None });
    sim.feed(Event::AcceptQueues { samples: vec![crate::machine::QueueSample { socket: "http".into(), length: 7 }] });
    sim.ready_all(2);
    let t = sim.metrics.render(&sim.m);
    assert_eq!(sample(&t, "handover_listen_queue{name=\"app\",socket=\"http\"}"), Some(7.0), "{t}");
    assert_eq!(sample(&t, "handover_listen_queue_limit{name=\"app\",socket=\"http\"}"), Some(128.0), "{t}");
    assert_eq!(sample(&t, "handover_reload_peak_listen_queue{name=\"app\",socket=\"http\"}"), Some(7.0), "{t}");
    assert_eq!(t.matches("handover_listen_queue{").count(), 1, "one series per name; none where unknown: {t}");
}
