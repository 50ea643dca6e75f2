//! The control protocol (SPEC §7): one JSON request per line, one or more JSON replies per
//! line. Shared by the daemon's server and the CLI client so both sides agree by type.
//!
//! ```text
//! → {"cmd":"reload"}
//! ← {"progress":{"generation":8,"ready":2,"total":4}}
//! ← {"ok":true,"generation":8,"message":"gen 8 serving: 4/4 ready"}
//! ```
use serde::{Deserialize, Serialize};

/// The longest request line the server reads; a longer one is refused unread.
pub const MAX_REQUEST_BYTES: usize = 4096;

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Report generations, workers and sockets.
    Status {},
    /// Re-read the config and roll a new generation in; replies with progress, then the result.
    Reload {},
    /// Set the active generation's worker count.
    Scale {
        /// The new count (1..=4096).
        count: usize,
    },
    /// Re-execute the handover binary in place (the file at the path it started from).
    Upgrade {},
}

/// A reply line. Intermediate lines carry `progress`; the last one carries `ok`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)] // a few replies per request: boxing would buy nothing
pub enum Reply {
    /// A reload's progress: new workers ready so far.
    Progress {
        /// The progress figures.
        progress: Progress,
    },
    /// The final answer to a request.
    Done(Outcome),
}

/// How far a reload has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The generation being rolled in.
    pub generation: u64,
    /// Its workers ready so far.
    pub ready: usize,
    /// Its worker count.
    pub total: usize,
    /// Its workers that have stayed up `reload.min_healthy_time` since they were ready.
    #[serde(default)]
    pub healthy: usize,
    /// `reload.min_healthy_time` in milliseconds (0: ready is healthy).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_healthy_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl std::fmt::Display for Progress {
    /// `generation 8: new workers ready 4/4, healthy 2/4 (min_healthy_time 5s)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "generation {}: new workers ready {}/{}", self.generation, self.ready, self.total)?;
        if self.min_healthy_ms > 0 {
            let window = crate::supervisor::machine::human(std::time::Duration::from_millis(self.min_healthy_ms));
            write!(f, ", healthy {}/{} (min_healthy_time {window})", self.healthy, self.total)?;
        }
        Ok(())
    }
}

/// The final reply to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Outcome {
    /// Whether the operation succeeded.
    pub ok: bool,
    /// Why it failed (when `ok` is false).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// A human-readable summary of what happened.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
    /// The generation that serves now (reload) or that was affected.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub generation: Option<u64>,
    /// The full status (for `status`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<Status>,
}

impl Outcome {
    /// A success with a message.
    pub fn ok(message: impl Into<String>) -> Outcome {
        Outcome { ok: true, message: Some(message.into()), ..Outcome::default() }
    }
    /// A failure with the reason.
    pub fn error(error: impl Into<String>) -> Outcome {
        Outcome { ok: false, error: Some(error.into()), ..Outcome::default() }
    }
}

/// What `handover status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Status {
    /// The app name from the config.
    pub name: String,
    /// The daemon's pid.
    pub pid: u32,
    /// `starting`, `running`, `degraded` (running, but slots are failing: see `failing`),
    /// `reloading` or `stopping`.
    pub phase: String,
    /// The one-line summary also sent as `STATUS=`.
    pub summary: String,
    /// The generation that serves (the rollback target during a reload).
    pub active_generation: u64,
    /// The generation a reload is rolling in, if any.
    pub candidate_generation: Option<u64>,
    /// Every generation that still has workers, newest first.
    pub generations: Vec<GenerationStatus>,
    /// Every worker process, by generation then slot.
    pub workers: Vec<WorkerStatus>,
    /// The listening sockets passed to workers.
    pub sockets: Vec<SocketStatus>,
    /// The last reload's result, if any.
    pub last_reload: Option<String>,
    /// Slots of the active generation that are failing (crash-loop backoff): the daemon is
    /// degraded while this is not empty.
    #[serde(default)]
    pub failing: Vec<FailingSlotStatus>,
    /// The running handover's version.
    #[serde(default)]
    pub version: String,
    /// Since when this version runs the daemon (the start, or the last upgrade), in seconds
    /// since the epoch.
    #[serde(default)]
    pub version_since_unix: f64,
    /// When the daemon first started (upgrades keep it), in seconds since the epoch.
    #[serde(default)]
    pub started_unix: f64,
    /// In-place upgrades in the daemon's life.
    #[serde(default)]
    pub upgrades: u32,
    /// The version before the last upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgraded_from: Option<String>,
    /// How workers are kept apart: "process group per worker", or "cgroup per worker in
    /// DIR (controllers: …)" where handover's cgroup is delegated.
    #[serde(default)]
    pub worker_isolation: String,
    /// Why the `[metrics] textfile` cannot be written (its directory removed, not writable),
    /// while that lasts: metrics are optional, so this is reported and nothing waits on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_error: Option<String>,
}

/// A slot in crash-loop backoff, in [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailingSlotStatus {
    /// Its generation (the active one).
    pub generation: u64,
    /// The slot.
    pub slot: usize,
    /// Respawns after failures so far.
    pub restarts: u32,
    /// How its last worker failed.
    pub last_failure: Option<String>,
    /// Seconds until the next attempt; `None` while a new worker boots in it.
    pub next_attempt_secs: Option<f64>,
}

/// One generation in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationStatus {
    /// Its number (1 at start, +1 per reload).
    pub generation: u64,
    /// `active`, `candidate` or `outgoing`.
    pub role: String,
    /// Workers wanted.
    pub wanted: usize,
    /// Workers ready.
    pub ready: usize,
    /// Workers booting (spawned, not ready yet).
    pub booting: usize,
    /// Workers told to stop and not gone yet.
    pub draining: usize,
}

/// One worker process in [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its slot in the generation (HANDOVER_WORKER_SLOT).
    pub slot: usize,
    /// Its pid (0 while being spawned).
    pub pid: i32,
    /// Its generation (HANDOVER_GENERATION).
    pub generation: u64,
    /// `booting`, `ready`, `draining` or `killed`.
    pub state: String,
    /// Seconds since it entered that state.
    pub since_secs: f64,
    /// How many times its slot has been respawned after a failure.
    pub restarts: u32,
    /// The last `STATUS=` it sent, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<String>,
    /// Its cgroup's `memory.current`, bytes (cgroup per worker with the memory controller).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub memory_bytes: Option<u64>,
    /// Its cgroup's CPU time (`cpu.stat` `usage_usec`), microseconds (cgroup per worker).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cpu_usec: Option<u64>,
}

/// One listening socket in [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketStatus {
    /// Its name (LISTEN_FDNAMES / FDNAME).
    pub name: String,
    /// Its bound address.
    pub address: String,
    /// `systemd` (socket activation), `fdstore` or `bound` (by handover).
    pub origin: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_the_documented_lines() {
        let r: Request = serde_json::from_str(r#"{"cmd":"scale","count":3}"#).expect("scale");
        assert_eq!(r, Request::Scale { count: 3 });
        let r: Request = serde_json::from_str(r#"{"cmd":"reload"}"#).expect("reload");
        assert_eq!(r, Request::Reload {});
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"status","x":1}"#).is_err());
    }

    #[test]
    fn replies_round_trip_untagged() {
        let p =
            Reply::Progress { progress: Progress { generation: 2, ready: 1, total: 4, healthy: 1, min_healthy_ms: 0 } };
        let line = serde_json::to_string(&p).expect("ser");
        assert_eq!(line, r#"{"progress":{"generation":2,"ready":1,"total":4,"healthy":1}}"#);
        assert_eq!(serde_json::from_str::<Reply>(&line).expect("de"), p);
        let d = Reply::Done(Outcome::error("boom"));
        let line = serde_json::to_string(&d).expect("ser");
        assert_eq!(line, r#"{"ok":false,"error":"boom"}"#);
        assert_eq!(serde_json::from_str::<Reply>(&line).expect("de"), d);
    }
}
