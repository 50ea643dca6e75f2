//! The control protocol (SPEC §7): one JSON request per line, one or more JSON replies per
//! line. Shared by the daemon's server and the CLI client so both sides agree by type. The
//! replies are the machine's own types ([`crate::machine::Reply`] and the status it reports),
//! re-exported here: the machine decides what is answered, this module how it travels.
//!
//! ```text
//! → {"cmd":"reload"}
//! ← {"progress":{"generation":8,"ready":2,"total":4}}
//! ← {"ok":true,"generation":8,"message":"gen 8 serving: 4/4 ready"}
//! ```
use serde::{Deserialize, Serialize};

pub use crate::machine::{
    FailingSlotStatus, GenerationStatus, Outcome, Progress, Reply, SocketStatus, Status, WorkerStatus,
};

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
    /// Reload back to the release of the last generation that served before the active one;
    /// replies as `reload` does.
    Rollback {},
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
        let r: Request = serde_json::from_str(r#"{"cmd":"rollback"}"#).expect("rollback");
        assert_eq!(r, Request::Rollback {});
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
