//! The executor's side of the control socket: a command becomes a machine event (or an
//! answer right away: status, upgrade), its reply channel registered under a request id;
//! and the config file re-read for a reload.
use super::*;

impl Daemon {
    pub(super) fn on_command(&mut self, cmd: Command) {
        if self.upgrading() && matches!(cmd.request, Request::Reload {} | Request::Rollback {}) {
            logging::event(
                Level::Info,
                "reload-requested",
                "reload or rollback requested; held until the upgrade is done",
            );
            self.upgrade.held.push(cmd);
            return;
        }
        if let (true, Request::Scale { count }) = (self.upgrading(), &cmd.request) {
            let msg = format!("scale to {count} requested on the control socket; held until the upgrade is done");
            logging::event(Level::Info, "scale-requested", msg);
            self.upgrade.held.push(cmd);
            return;
        }
        let Command { request, replies, connection } = cmd;
        match request {
            Request::Status {} => {
                let mut status = self.machine.status(Instant::now());
                status.pid = std::process::id();
                status.worker_isolation = match &self.cgroups {
                    Some(tree) => {
                        for w in &mut status.workers {
                            let usage = tree.usage(w.pid);
                            w.memory_bytes = usage.memory_bytes;
                            w.cpu_usec = usage.cpu_usec;
                        }
                        tree.describe()
                    }
                    None => "process group per worker".to_owned(),
                };
                let low = self.machine.active_config().reload.boot_priority == crate::config::BootPriority::Low;
                status.boot_priority = self.lowering.describe(low);
                self.fill_open_connections(&mut status);
                status.sockets = self.read_sockets();
                status.metrics_error = self.metrics.write_error();
                status.version = crate::VERSION.to_string();
                status.version_since_unix = self.identity.version_since_unix;
                status.started_unix = self.identity.started_unix;
                status.upgrades = self.identity.upgrades;
                status.upgraded_from = self.identity.upgraded_from.clone();
                if let Some(note) = self.upgrade_note() {
                    status.summary = format!("{}; {note}", status.summary);
                }
                let outcome = Outcome { status: Some(status), ..Outcome::ok("status") };
                let _ = replies.send(Reply::Done(outcome));
            }
            Request::Reload {} => {
                let id = self.register(replies);
                logging::event(Level::Info, "reload-requested", "reload requested on the control socket");
                let config = self.load_config();
                self.dispatch(Event::ReloadRequested { config, requester: Some(id) });
            }
            Request::Rollback {} => {
                let id = self.register(replies);
                logging::event(Level::Info, "rollback-requested", "rollback requested on the control socket");
                let release_gone = self.check_rollback_release();
                self.dispatch(Event::RollbackRequested { requester: Some(id), release_gone, automatic: None });
            }
            Request::Scale { count } => {
                let id = self.register(replies);
                self.dispatch(Event::ScaleRequested { to: ScaleTo::Count(count), requester: Some(id) });
            }
            Request::Upgrade {} => {
                logging::event(Level::Info, "upgrade", "upgrade in place requested on the control socket");
                self.begin_upgrade(UpgradeRequester { replies: Some(replies), connection });
            }
        }
    }

    pub(super) fn register(&mut self, replies: mpsc::UnboundedSender<Reply>) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        self.waiters.insert(id, replies);
        id
    }

    /// Whether the release a rollback would go to can still run (its program and working
    /// directory are there, its sockets can be had); why not, if not. Nothing to check when
    /// there is no target: the machine says so.
    pub(super) fn check_rollback_release(&mut self) -> Option<String> {
        let (_, config) = self.machine.rollback_target().ok()?;
        let release = self.machine.rollback_release()?;
        if let Some(gone) = release.gone() {
            return Some(gone);
        }
        match self.sockets.prepare(&config.listen) {
            Ok(warnings) => {
                for w in warnings {
                    logging::event(Level::Warn, "sockets", w);
                }
                None
            }
            Err(e) => Some(format!("its sockets: {e}")),
        }
    }

    /// Re-reads the config file and prepares its sockets; an error changes nothing.
    pub(super) fn load_config(&mut self) -> Result<Arc<Config>, String> {
        let config = config::load(&self.config_path, &self.load_env).map_err(|e| e.to_string())?;
        let warnings = self.sockets.prepare(&config.listen).map_err(|e| e.to_string())?;
        for w in warnings {
            logging::event(Level::Warn, "sockets", w);
        }
        let running = self.machine.active_config();
        if config.control_socket != running.control_socket
            || config.name != running.name
            || config.pidfile != running.pidfile
        {
            logging::event(
                Level::Warn,
                "reload-restart-needed",
                "name, control_socket and pidfile changes take effect at the next restart",
            );
        }
        Ok(Arc::new(config))
    }
}
