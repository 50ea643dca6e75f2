//! What the machine answers a control request with: [`Reply`] lines (a reload's
//! [`Progress`], then its [`Outcome`]). The control protocol (`control::proto`) carries them
//! as JSON lines: the serde names here are the wire format.
use serde::{Deserialize, Serialize};

use super::Status;

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
            let window = crate::text::human(std::time::Duration::from_millis(self.min_healthy_ms));
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
