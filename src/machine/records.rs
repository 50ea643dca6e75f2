//! Release records (SPEC §5 "Rollback"): every generation that served keeps what it ran (its
//! config, with the release pinned when the file was read: [`crate::config::Release`]), so
//! that `handover rollback` and `watch` can go back to it after a deploy moved a `current`
//! symlink on. Records are bounded ([`policy::MAX_RECORDS`]) and cross `handover upgrade`.
//!
//! Which one a rollback goes to: the newest record older than the serving generation that
//! runs another release (a generation made by a rollback runs the release of the one it
//! went back to: its `release_of`) and was not itself rolled back from. So rolling back
//! twice goes two releases back, and never forward again to a release that was abandoned.
use super::*;

/// What one generation that served ran.
#[derive(Debug, Clone)]
pub(super) struct ReleaseRecord {
    pub(super) generation: u64,
    pub(super) config: Arc<Config>,
    /// The generation whose release this is: its own number, or, for a generation made by
    /// a rollback, the release it went back to.
    pub(super) release_of: u64,
    /// A rollback went away from it: never a rollback target again.
    pub(super) rolled_back: bool,
}

/// How a reload came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadKind {
    /// A reload (control request, SIGHUP) with the config file as it is now.
    Reload,
    /// `handover rollback`: back to the release of generation `to`.
    Rollback {
        /// The generation whose record it runs.
        to: u64,
    },
    /// `watch` went back to the release of generation `to` by itself.
    AutoRollback {
        /// The generation whose record it runs.
        to: u64,
    },
}

impl Machine {
    /// Keeps the record of a generation that serves now (its first start, or a reload that
    /// committed). `kind` says whether it ran a record of its own.
    pub(super) fn record_release(&mut self, generation: u64, kind: ReloadKind, replaced: Option<u64>) {
        let release_of = match kind {
            ReloadKind::Reload => generation,
            ReloadKind::Rollback { to } | ReloadKind::AutoRollback { to } => {
                if let Some(from) = replaced {
                    for r in self.records.iter_mut().filter(|r| r.generation == from) {
                        r.rolled_back = true;
                    }
                }
                self.records.iter().find(|r| r.generation == to).map_or(to, |r| r.release_of)
            }
        };
        let config = self.gen(generation).config.clone();
        self.records.push(ReleaseRecord { generation, config, release_of, rolled_back: false });
        if self.records.len() > policy::MAX_RECORDS {
            let drop = self.records.len() - policy::MAX_RECORDS;
            self.records.drain(..drop);
        }
    }

    /// The record a rollback from the serving generation goes to (see the module docs), or
    /// why there is none.
    pub fn rollback_target(&self) -> Result<(u64, Arc<Config>), String> {
        let active = self.active;
        let current_release = self.records.iter().find(|r| r.generation == active).map_or(active, |r| r.release_of);
        let target = self
            .records
            .iter()
            .rev()
            .filter(|r| r.generation < active && !r.rolled_back && r.release_of != current_release)
            .find(|_| true);
        match target {
            Some(r) => Ok((r.generation, r.config.clone())),
            None if self.records.iter().any(|r| r.generation < active) => Err(format!(
                "no earlier release to roll back to: every release before generation {active}'s was rolled back from, \
                 or is the one it runs"
            )),
            None => Err(format!("no earlier release to roll back to: generation {active} is the first that served")),
        }
    }

    /// The release a rollback would run, for the executor to check that it still exists
    /// before asking ([`Event::RollbackRequested`]).
    pub fn rollback_release(&self) -> Option<crate::config::Release> {
        let (_, config) = self.rollback_target().ok()?;
        Some(config.workers.release.clone().unwrap_or_else(|| crate::config::Release {
            program: config.workers.program.clone(),
            working_directory: config.workers.working_directory.clone(),
        }))
    }

    /// `handover rollback`: a reload to the rollback target's record, through the same
    /// readiness gate (and canary) as any reload. `release_gone`: the executor found the
    /// target's program or directory missing.
    pub(super) fn on_rollback_requested(
        &mut self,
        requester: Option<RequestId>,
        release_gone: Option<String>,
        automatic: Option<String>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) {
        let (level, event, what) = match &automatic {
            Some(reason) => {
                (Level::Error, "auto-rollback-failed", format!("{reason}, but the automatic rollback failed"))
            }
            None => (Level::Warn, "rollback-refused", "rollback refused".to_string()),
        };
        let refuse = |fx: &mut Vec<Effect>, why: String, generation: u64| {
            fx.push(log(level, event, format!("{what}: {why}"), Some(generation), None, None));
            if let Some(r) = requester {
                fx.push(done(r, Outcome { generation: Some(generation), ..Outcome::error(why) }));
            }
        };
        let active = self.active;
        match &self.phase {
            Phase::Running => {}
            Phase::Starting => return refuse(fx, "the daemon is starting: nothing served before".into(), active),
            Phase::Reloading(_) => {
                return refuse(
                    fx,
                    "a reload runs: roll back after it ends (a failing reload rolls back by itself)".into(),
                    active,
                )
            }
            Phase::Stopping { .. } => return refuse(fx, "the daemon is stopping".into(), active),
        }
        let (to, config) = match self.rollback_target() {
            Ok(t) => t,
            Err(why) => return refuse(fx, why, active),
        };
        if let Some(gone) = release_gone {
            return refuse(fx, format!("the release of generation {to} is gone: {gone}"), active);
        }
        let program = config.workers.program().display().to_string();
        self.watch = None;
        let kind = match automatic {
            Some(reason) => {
                let msg = format!("{reason}; rolled back automatically to the release of generation {to} ({program})");
                fx.push(log(Level::Error, "auto-rollback", msg.clone(), Some(active), None, None));
                self.last_verdict = Some(msg.clone());
                self.last_auto_rollback = Some(super::judging::AutoRollback { from: active, at: now, message: msg });
                ReloadKind::AutoRollback { to }
            }
            None => {
                let msg =
                    format!("rolling back from generation {active} to the release of generation {to} ({program})");
                fx.push(log(Level::Info, "rollback-started", msg, Some(active), None, None));
                ReloadKind::Rollback { to }
            }
        };
        self.begin_reload(Ok(config), requester.into_iter().collect(), kind, fx);
    }

    /// The records, oldest first, for status: (generation, release_of, rolled back).
    pub fn release_records(&self) -> Vec<(u64, u64, bool)> {
        self.records.iter().map(|r| (r.generation, r.release_of, r.rolled_back)).collect()
    }
}
