//! Metrics for Prometheus, written as a file for node_exporter's textfile collector
//! (`[metrics] textfile`): no listener and no timer in the master.
//!
//! An edge module: the executor ([`crate::supervisor`]) shows it every step's effects
//! ([`Metrics::observe`]) and, once per turn of its event loop, lets it render the text and,
//! if anything changed, hand it to a writer thread ([`Metrics::flush`]): the loop never waits
//! for the disk, and of the texts handed over during one write only the newest is written. The machine knows nothing of metrics: the
//! counters are derived from the effects it emits (the `HANDOVER_EVENT` names of its log
//! records, its spawns) and the gauges from its read-only views.
//!
//! The counters live in [`MetricsState`], plain serializable data, so that an in-place
//! upgrade can carry them to the new process ([`Metrics::state`], [`Metrics::restore`]).
//!
//! The file is replaced atomically: written to `.NAME.prom.tmp` in the same directory
//! (created exclusively, so a symlink planted there is never followed; mode 0644), then
//! renamed over `NAME.prom`. node_exporter reads only `*.prom` files, so it never sees the
//! temporary one.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::logging;
use crate::machine::{Effect, Level, Machine, Phase, Pid, SocketStatus};

/// The upper bounds (seconds) of the reload duration histogram's buckets: from a small app's
/// sub-second reload to a rolling reload of thousands of workers with a health window.
pub const RELOAD_DURATION_BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// A histogram as Prometheus exposes it: a count per bucket, the sum and the count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Histogram {
    /// The buckets' upper bounds, ascending (`+Inf` is implied).
    pub bounds: Vec<f64>,
    /// Observations per bucket, not cumulative: `counts[i]` holds those in
    /// `(bounds[i-1], bounds[i]]`; one more entry for those above the last bound.
    pub counts: Vec<u64>,
    /// The sum of every observation.
    pub sum: f64,
    /// The number of observations.
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::with_bounds(&RELOAD_DURATION_BUCKETS)
    }
}

impl Histogram {
    /// An empty histogram with these bucket bounds.
    pub fn with_bounds(bounds: &[f64]) -> Histogram {
        Histogram { bounds: bounds.to_vec(), counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    /// Adds one observation.
    pub fn observe(&mut self, value: f64) {
        let i = self.bounds.iter().position(|&b| value <= b).unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    /// Whether the counts fit the bounds (a state from another version may not).
    fn is_consistent(&self) -> bool {
        self.counts.len() == self.bounds.len() + 1 && self.bounds.windows(2).all(|w| w[0] < w[1])
    }
}

/// Reloads by how they ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reloads {
    /// The new generation took over.
    pub ok: u64,
    /// The new generation failed before it was healthy; the previous one serves.
    pub rolled_back: u64,
    /// Nothing was started: the config was invalid.
    pub refused: u64,
}

/// Rollbacks by reason (`handover_rollbacks_total{reason}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Rollbacks {
    /// A reload's new worker failed before it was healthy (exit, boot_timeout, watchdog):
    /// the reload rolled back.
    pub not_ready: u64,
    /// A reload's canary failed (an exit, a watchdog, max_memory, or errors over budget).
    pub canary: u64,
    /// `handover rollback`.
    pub manual: u64,
    /// `reload.watch` rolled a generation back by itself.
    pub watch: u64,
}

/// Worker exits by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerExits {
    /// It exited after handover told it to stop (reload, scale down, recycle, stop) or after
    /// it said `STOPPING=1`.
    pub drained: u64,
    /// It exited without being told to (a crash, an exit before it was ready), or was
    /// stopped because it missed `boot_timeout`.
    pub failed: u64,
    /// It was stopped (SIGABRT) because it missed its watchdog.
    pub watchdog: u64,
    /// It was SIGKILLed because it had not exited within `graceful_timeout`.
    pub killed: u64,
}

/// In-place upgrades by result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Upgrades {
    /// The new executable took over.
    pub ok: u64,
    /// The upgrade failed; the running process went on.
    pub failed: u64,
}

/// Every counter, as plain data: what an upgrade carries to the new process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsState {
    /// `handover_reloads_total`.
    pub reloads: Reloads,
    /// `handover_reload_duration_seconds`.
    pub reload_duration: Histogram,
    /// `handover_last_reload_duration_seconds` (none before the first reload ended).
    pub last_reload_duration_seconds: Option<f64>,
    /// `handover_worker_exits_total`.
    pub worker_exits: WorkerExits,
    /// `handover_worker_restarts_total`: workers respawned in their slot after a failure.
    pub restarts: u64,
    /// `handover_upgrades_total`.
    pub upgrades: Upgrades,
    /// `handover_rollbacks_total`.
    pub rollbacks: Rollbacks,
}

/// The metrics of one daemon: the counters, what is needed to derive them, and the file.
#[derive(Debug)]
pub struct Metrics {
    /// The app's name (the `name` label of every metric).
    name: String,
    state: MetricsState,
    /// When the reload in progress began (none: no reload runs).
    reload_started: Option<Instant>,
    /// The running reload's canary failed: its `reload-failed` is a canary rollback.
    canary_failed: bool,
    /// Workers already condemned, with the reason their exit will count under.
    doomed: HashMap<Pid, &'static str>,
    /// Slots (generation, slot) whose worker failed: their next spawn is a restart.
    failed_slots: HashSet<(u64, usize)>,
    /// What was last handed to the writer, and for which path.
    written: Option<(PathBuf, String)>,
    /// Writes the file off the event loop (started at the first write).
    writer: Option<Writer>,
    /// `handover_draining_connections`: the open client connections of the draining
    /// workers, as the executor last sampled them ([`Metrics::set_draining_connections`]).
    draining_connections: usize,
    /// The listening sockets' accept queues as last read (during a reload, or for a status
    /// request: see [`Metrics::note_sockets`]), by name: (length, limit).
    accept_queues: BTreeMap<String, (u32, u32)>,
}

impl Metrics {
    /// Metrics for the app `name`, every counter at zero.
    pub fn new(name: &str) -> Metrics {
        Metrics::restore(name, MetricsState::default())
    }

    /// Metrics for the app `name` that go on from `state` (carried over by an upgrade). A
    /// histogram whose buckets differ from this version's starts again.
    pub fn restore(name: &str, mut state: MetricsState) -> Metrics {
        if state.reload_duration.bounds != RELOAD_DURATION_BUCKETS || !state.reload_duration.is_consistent() {
            state.reload_duration = Histogram::default();
        }
        Metrics {
            name: name.to_string(),
            state,
            reload_started: None,
            canary_failed: false,
            doomed: HashMap::new(),
            failed_slots: HashSet::new(),
            written: None,
            writer: None,
            draining_connections: 0,
            accept_queues: BTreeMap::new(),
        }
    }

    /// Takes in the listening sockets' accept queues as just read (sockets whose queue the
    /// kernel does not tell are left out). Read only during reloads and for status
    /// requests, so that an idle daemon does not wake up for them. Two sockets of one name
    /// (a `[[listen]]` address moved at a reload, the old one still draining) count as one,
    /// the longer queue.
    pub fn note_sockets(&mut self, sockets: &[SocketStatus]) {
        self.accept_queues.clear();
        for s in sockets {
            if let (Some(length), Some(limit)) = (s.accept_queue, s.accept_queue_limit) {
                let q = self.accept_queues.entry(s.name.clone()).or_insert((length, limit));
                *q = (q.0.max(length), q.1.max(limit));
            }
        }
    }

    /// The counters, to carry over an upgrade.
    pub fn state(&self) -> &MetricsState {
        &self.state
    }

    /// Counts an in-place upgrade (`handover upgrade`): `ok` if the new executable took over.
    pub fn record_upgrade(&mut self, ok: bool) {
        if ok {
            self.state.upgrades.ok += 1;
        } else {
            self.state.upgrades.failed += 1;
        }
    }

    /// Takes in the effects of one machine step. `exited` is the pid of the `Exited` event
    /// that step handled, if it was one; `now` is read by the executor.
    pub fn observe(&mut self, exited: Option<Pid>, effects: &[Effect], now: Instant) {
        for effect in effects {
            match effect {
                Effect::Log(r) => self.observe_log(exited, r.event, r.generation, r.slot, r.pid, now),
                Effect::Spawn(req) if self.failed_slots.remove(&(req.generation, req.slot)) => {
                    self.state.restarts += 1;
                }
                Effect::Forgotten { generations } => self.failed_slots.retain(|(g, _)| !generations.contains(g)),
                _ => {}
            }
        }
    }

    fn observe_log(
        &mut self,
        exited: Option<Pid>,
        event: &str,
        generation: Option<u64>,
        slot: Option<usize>,
        pid: Option<Pid>,
        now: Instant,
    ) {
        let at_exit = pid.is_some() && pid == exited;
        match event {
            "reload-started" => {
                self.reload_started = Some(now);
                self.canary_failed = false;
            }
            "canary-failed" => self.canary_failed = true,
            "rollback-started" => self.state.rollbacks.manual += 1,
            "auto-rollback" => self.state.rollbacks.watch += 1,
            "reload-succeeded" => {
                self.state.reloads.ok += 1;
                self.reload_ended(now);
            }
            // A reload that never started (invalid config) was refused; one that did was
            // rolled back.
            "reload-failed" if self.reload_started.is_some() => {
                self.state.reloads.rolled_back += 1;
                match std::mem::take(&mut self.canary_failed) {
                    true => self.state.rollbacks.canary += 1,
                    false => self.state.rollbacks.not_ready += 1,
                }
                self.reload_ended(now);
            }
            "reload-failed" => self.state.reloads.refused += 1,
            "worker-killed" => self.doom(pid, "killed"),
            "worker-watchdog" => {
                self.doom(pid, "watchdog");
                self.slot_failed(generation, slot);
            }
            "worker-failed" => {
                if !at_exit {
                    // Stopped for missing boot_timeout: its exit comes later.
                    self.doom(pid, "failed");
                }
                self.slot_failed(generation, slot);
            }
            _ => {}
        }
        if at_exit {
            if let Some(pid) = pid {
                let reason = match (self.doomed.remove(&pid), event) {
                    (Some(reason), _) => Some(reason),
                    (None, "worker-drained") => Some("drained"),
                    (None, "worker-exited" | "worker-failed") => Some("failed"),
                    (None, _) => None,
                };
                let exits = &mut self.state.worker_exits;
                match reason {
                    Some("drained") => exits.drained += 1,
                    Some("failed") => exits.failed += 1,
                    Some("watchdog") => exits.watchdog += 1,
                    Some("killed") => exits.killed += 1,
                    _ => {}
                }
            }
        }
    }

    /// The first reason a worker is condemned for is the one its exit counts under.
    fn doom(&mut self, pid: Option<Pid>, reason: &'static str) {
        if let Some(pid) = pid {
            self.doomed.entry(pid).or_insert(reason);
        }
    }

    fn slot_failed(&mut self, generation: Option<u64>, slot: Option<usize>) {
        if let (Some(g), Some(s)) = (generation, slot) {
            self.failed_slots.insert((g, s));
        }
    }

    fn reload_ended(&mut self, now: Instant) {
        if let Some(started) = self.reload_started.take() {
            let secs = now.saturating_duration_since(started).as_secs_f64();
            self.state.last_reload_duration_seconds = Some(secs);
            self.state.reload_duration.observe(secs);
        }
    }

    /// Renders the metrics and, if they changed since the last time (or the file moved with
    /// a reload), hands the text to the writer thread; called once per turn of the event
    /// loop. A write error is logged once, and retried at the next change.
    pub fn flush(&mut self, machine: &Machine) {
        let Some(path) = machine.active_config().metrics.textfile.clone() else {
            self.remove_written();
            return;
        };
        let text = self.render(machine);
        if let Some((old, last)) = &self.written {
            if *old == path && *last == text {
                return;
            }
            if *old != path {
                self.remove_written();
            }
        }
        self.writer.get_or_insert_with(Writer::start).submit(Job::Write(path.clone(), text.clone()));
        self.written = Some((path, text));
    }

    /// Waits until the file holds the last text [`Metrics::flush`] handed over (before an
    /// exec, say; dropping the metrics waits too).
    pub fn sync(&self) {
        if let Some(w) = &self.writer {
            w.wait_idle();
        }
    }

    /// A reload moved the file elsewhere or turned metrics off: the old file would go on
    /// being scraped, frozen.
    fn remove_written(&mut self) {
        if let Some((old, _)) = self.written.take() {
            self.writer.get_or_insert_with(Writer::start).submit(Job::Remove(old));
        }
    }

    /// The file's contents for the machine as it is now.
    pub fn render(&self, machine: &Machine) -> String {
        let reloading = matches!(machine.phase(), Phase::Reloading(_));
        let mut out =
            render(&self.name, &self.state, machine.active_generation(), &machine.workers_by_state(), reloading);
        render_accept_queues(&mut out, &self.name, &self.accept_queues, machine.reload_queue_peak());
        render_outcomes(&mut out, &self.name, &machine.generation_outcomes());
        // Counted once per streak (not per write): the text changes once when writes start
        // failing, so a failing file is not retried at every turn of the loop.
        let streaks = self.writer.as_ref().map_or(0, |w| w.shared.streaks.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# HELP handover_metrics_write_failures_total Times writing this file started failing \
             (its directory removed or not writable; see handover status).\n\
             # TYPE handover_metrics_write_failures_total counter\n\
             handover_metrics_write_failures_total{{name=\"{}\"}} {streaks}",
            escape(&self.name)
        );
        let _ = writeln!(
            out,
            "# HELP handover_draining_connections Client connections the draining workers (told to stop, \
             not exited) still hold, over every generation.\n\
             # TYPE handover_draining_connections gauge\n\
             handover_draining_connections{{name=\"{}\"}} {}",
            escape(&self.name),
            self.draining_connections
        );
        out
    }

    /// Sets `handover_draining_connections`: the client connections the draining workers
    /// still hold, over every generation (a gauge; the executor samples it while workers
    /// drain, see `supervisor::draining`).
    pub fn set_draining_connections(&mut self, open: usize) {
        self.draining_connections = open;
    }

    /// Why the metrics file cannot be written, while writes fail (for `handover status`).
    pub fn write_error(&self) -> Option<String> {
        self.writer.as_ref().and_then(|w| w.shared.error().clone())
    }
}

/// One thing for the writer thread to do.
#[derive(Debug)]
enum Job {
    /// Replace this file with this text.
    Write(PathBuf, String),
    /// Remove this file (metrics moved or turned off).
    Remove(PathBuf),
}

/// What the event loop hands over and the writer takes: the newest write wins.
#[derive(Debug, Default)]
struct Queue {
    write: Option<(PathBuf, String)>,
    remove: Vec<PathBuf>,
    busy: bool,
    stop: bool,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Work arrived (or stop).
    work: Condvar,
    /// The writer finished what it took.
    idle: Condvar,
    /// The last write failed (logged once per streak of failures).
    failing: AtomicBool,
    /// Streaks of failed writes so far (`handover_metrics_write_failures_total`).
    streaks: AtomicU64,
    /// Why the last write failed, while writes fail (for `handover status`).
    error: Mutex<Option<String>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves the queue consistent (plain data).
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn error(&self) -> MutexGuard<'_, Option<String>> {
        // Plain data, as above.
        self.error.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A thread that writes the file, so that the event loop never waits for the disk:
/// replacing a file on ext4 costs 0.6–2 ms (the rename over an existing file makes the
/// kernel start writing the new one's blocks), and a reload of thousands of workers turns
/// the loop thousands of times. Texts handed over while a write runs replace one another:
/// only the newest is written. The thread sleeps on a condition variable otherwise (no
/// timer, no wake-up). Should the thread fail to start, the loop writes itself.
#[derive(Debug)]
struct Writer {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start() -> Writer {
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("metrics-writer".into())
            .spawn(move || write_loop(&theirs))
            .map_err(|e| {
                logging::event(
                    Level::Warn,
                    "metrics-error",
                    format!("starting the metrics writer thread: {e}; writing from the event loop"),
                )
            })
            .ok();
        Writer { shared, thread }
    }

    fn submit(&self, job: Job) {
        if self.thread.is_none() {
            carry_out(job, &self.shared);
            return;
        }
        let mut q = self.shared.lock();
        match job {
            Job::Write(path, text) => q.write = Some((path, text)),
            Job::Remove(path) => q.remove.push(path),
        }
        drop(q);
        self.shared.work.notify_one();
    }

    fn wait_idle(&self) {
        if self.thread.is_none() {
            return;
        }
        let mut q = self.shared.lock();
        while q.busy || q.write.is_some() || !q.remove.is_empty() {
            q = self.shared.idle.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Writer {
    /// The last text is written before the daemon exits.
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(shared: &Shared) {
    loop {
        let (write, remove) = {
            let mut q = shared.lock();
            while q.write.is_none() && q.remove.is_empty() && !q.stop {
                q = shared.work.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.write.is_none() && q.remove.is_empty() {
                return; // stopped, nothing left
            }
            q.busy = true;
            (q.write.take(), std::mem::take(&mut q.remove))
        };
        for path in remove {
            carry_out(Job::Remove(path), shared);
        }
        if let Some((path, text)) = write {
            carry_out(Job::Write(path, text), shared);
        }
        shared.lock().busy = false;
        shared.idle.notify_all();
    }
}

/// Does one job. A write error is logged on the first failure of a streak only (a missing
/// directory fails every write until someone recreates it), and kept for `handover status`
/// until a write succeeds again.
fn carry_out(job: Job, shared: &Shared) {
    match job {
        Job::Remove(path) => {
            let _ = std::fs::remove_file(path);
        }
        Job::Write(path, text) => match write_atomically(&path, &text) {
            Ok(()) => {
                *shared.error() = None;
                if shared.failing.swap(false, Ordering::Relaxed) {
                    logging::event(Level::Info, "metrics", format!("metrics written to {} again", path.display()));
                }
            }
            Err(e) => {
                let why = format!("cannot write the metrics to {}: {e}", path.display());
                *shared.error() = Some(why.clone());
                if !shared.failing.swap(true, Ordering::Relaxed) {
                    shared.streaks.fetch_add(1, Ordering::Relaxed);
                    logging::event(
                        Level::Warn,
                        "metrics-error",
                        format!("{why}; retried at the next change, logged again only once it works"),
                    );
                }
            }
        },
    }
}

/// Renders the text exposition format (node_exporter's textfile collector reads it).
pub fn render(
    name: &str,
    s: &MetricsState,
    active_generation: u64,
    workers: &[(&'static str, usize)],
    reloading: bool,
) -> String {
    let name = escape(name);
    let l = format!("name=\"{name}\"");
    let mut out = String::with_capacity(4096);
    let head = |out: &mut String, metric: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {metric} {help}");
        let _ = writeln!(out, "# TYPE {metric} {kind}");
    };
    head(&mut out, "handover_build_info", "gauge", "handover's version and the app it runs (always 1).");
    let _ = writeln!(out, "handover_build_info{{{l},version=\"{}\"}} 1", escape(env!("CARGO_PKG_VERSION")));
    head(&mut out, "handover_active_generation", "gauge", "The generation that serves (a new one per reload).");
    let _ = writeln!(out, "handover_active_generation{{{l}}} {active_generation}");
    head(&mut out, "handover_reload_in_progress", "gauge", "1 while a reload rolls a new generation in, else 0.");
    let _ = writeln!(out, "handover_reload_in_progress{{{l}}} {}", u8::from(reloading));
    head(
        &mut out,
        "handover_workers",
        "gauge",
        "Workers of every generation by state (booting, ready, draining: told to stop, not reaped yet).",
    );
    for (state, n) in workers {
        let _ = writeln!(out, "handover_workers{{{l},state=\"{state}\"}} {n}");
    }
    head(
        &mut out,
        "handover_reloads_total",
        "counter",
        "Reloads by result: ok, rolled_back (the new generation failed; the old one serves), refused (invalid config).",
    );
    let r = &s.reloads;
    for (result, n) in [("ok", r.ok), ("rolled_back", r.rolled_back), ("refused", r.refused)] {
        let _ = writeln!(out, "handover_reloads_total{{{l},result=\"{result}\"}} {n}");
    }
    if let Some(last) = s.last_reload_duration_seconds {
        head(
            &mut out,
            "handover_last_reload_duration_seconds",
            "gauge",
            "How long the last reload took, from its start to its commit or rollback.",
        );
        let _ = writeln!(out, "handover_last_reload_duration_seconds{{{l}}} {}", float(last));
    }
    head(
        &mut out,
        "handover_reload_duration_seconds",
        "histogram",
        "How long reloads took, from their start to their commit or rollback.",
    );
    let h = &s.reload_duration;
    let mut cumulative = 0;
    for (i, bound) in h.bounds.iter().enumerate() {
        cumulative += h.counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(out, "handover_reload_duration_seconds_bucket{{{l},le=\"{}\"}} {cumulative}", float(*bound));
    }
    let _ = writeln!(out, "handover_reload_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "handover_reload_duration_seconds_sum{{{l}}} {}", float(h.sum));
    let _ = writeln!(out, "handover_reload_duration_seconds_count{{{l}}} {}", h.count);
    head(
        &mut out,
        "handover_worker_exits_total",
        "counter",
        "Worker exits by reason: drained (told to stop), failed (crashed, or missed boot_timeout), \
         watchdog (missed its watchdog), killed (SIGKILLed after graceful_timeout).",
    );
    let e = &s.worker_exits;
    for (reason, n) in [("drained", e.drained), ("failed", e.failed), ("watchdog", e.watchdog), ("killed", e.killed)] {
        let _ = writeln!(out, "handover_worker_exits_total{{{l},reason=\"{reason}\"}} {n}");
    }
    head(&mut out, "handover_worker_restarts_total", "counter", "Workers respawned in their slot after a failure.");
    let _ = writeln!(out, "handover_worker_restarts_total{{{l}}} {}", s.restarts);
    head(&mut out, "handover_upgrades_total", "counter", "In-place upgrades (handover upgrade) by result: ok, failed.");
    for (result, n) in [("ok", s.upgrades.ok), ("failed", s.upgrades.failed)] {
        let _ = writeln!(out, "handover_upgrades_total{{{l},result=\"{result}\"}} {n}");
    }
    head(
        &mut out,
        "handover_rollbacks_total",
        "counter",
        "Rollbacks by reason: not_ready (a reload's new worker failed before it was healthy), canary \
         (a canary failed or broke the error budget), manual (handover rollback), watch (reload.watch \
         rolled a generation back by itself).",
    );
    let rb = &s.rollbacks;
    for (reason, n) in [("not_ready", rb.not_ready), ("canary", rb.canary), ("manual", rb.manual), ("watch", rb.watch)]
    {
        let _ = writeln!(out, "handover_rollbacks_total{{{l},reason=\"{reason}\"}} {n}");
    }
    out
}

/// The request outcomes each generation's workers reported (`X_HANDOVER_REQUESTS=`,
/// `X_HANDOVER_ERRORS=`), for the generations that still exist.
fn render_outcomes(out: &mut String, name: &str, outcomes: &[(u64, crate::machine::Tally)]) {
    if outcomes.is_empty() {
        return;
    }
    let l = format!("name=\"{}\"", escape(name));
    let _ = writeln!(
        out,
        "# HELP handover_generation_requests_total Requests the workers of a generation reported answering.\n\
         # TYPE handover_generation_requests_total counter"
    );
    for (generation, t) in outcomes {
        let _ = writeln!(out, "handover_generation_requests_total{{{l},generation=\"{generation}\"}} {}", t.requests);
    }
    let _ = writeln!(
        out,
        "# HELP handover_generation_errors_total Of those, the requests they reported as failed.\n\
         # TYPE handover_generation_errors_total counter"
    );
    for (generation, t) in outcomes {
        let _ = writeln!(out, "handover_generation_errors_total{{{l},generation=\"{generation}\"}} {}", t.errors);
    }
}

/// The accept queue gauges: the last reading of each listening socket, its limit, and the
/// peak of the last (or running) reload.
fn render_accept_queues(
    out: &mut String,
    name: &str,
    queues: &BTreeMap<String, (u32, u32)>,
    reload_peak: &BTreeMap<String, u32>,
) {
    let l = format!("name=\"{}\"", escape(name));
    if !queues.is_empty() {
        let _ = writeln!(
            out,
            "# HELP handover_listen_queue Connections waiting to be accepted on a listening socket, \
             as last read (during a reload, or for handover status).\n# TYPE handover_listen_queue gauge"
        );
        for (socket, (length, _)) in queues {
            let _ = writeln!(out, "handover_listen_queue{{{l},socket=\"{}\"}} {length}", escape(socket));
        }
        let _ = writeln!(
            out,
            "# HELP handover_listen_queue_limit The most connections a listening socket queues (its backlog).\n\
             # TYPE handover_listen_queue_limit gauge"
        );
        for (socket, (_, limit)) in queues {
            let _ = writeln!(out, "handover_listen_queue_limit{{{l},socket=\"{}\"}} {limit}", escape(socket));
        }
    }
    if !reload_peak.is_empty() {
        let _ = writeln!(
            out,
            "# HELP handover_reload_peak_listen_queue The longest accept queue of a listening socket \
             during the last reload.\n# TYPE handover_reload_peak_listen_queue gauge"
        );
        for (socket, peak) in reload_peak {
            let _ = writeln!(out, "handover_reload_peak_listen_queue{{{l},socket=\"{}\"}} {peak}", escape(socket));
        }
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A sample value as Prometheus reads it: `0.5`, `60`; `+Inf`, `-Inf`, `NaN` for the
/// non-finite ones (Rust would write `inf`).
fn float(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v > 0.0 {
        "+Inf".into()
    } else if v < 0.0 {
        "-Inf".into()
    } else {
        "NaN".into()
    }
}

/// Replaces `path` with `text` ([`crate::pidfile::replace`], the temporary file named
/// `.NAME.tmp`).
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    crate::pidfile::replace(path, text.as_bytes(), crate::pidfile::Temporary::Beside)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests;
