//! Unix signals → supervisor events. The handlers are installed by [`Signals::install`],
//! before handover tells systemd READY=1, so a reload or stop sent right after start is
//! never lost to a default disposition.
//!
//! | signal  | meaning                                            |
//! |---------|----------------------------------------------------|
//! | SIGHUP  | reload (also systemd's ReloadSignal= for notify-reload) |
//! | SIGTERM | graceful stop                                      |
//! | SIGINT  | fast stop                                          |
//! | SIGTTIN | one worker more                                    |
//! | SIGTTOU | one worker less                                    |
//! | SIGUSR2 | upgrade (not available yet; logged)                |
//! | SIGCHLD | reap workers                                       |
//!
//! Signals of one kind that arrive in a burst are coalesced by the kernel and tokio into
//! one wake-up; a burst of SIGHUPs therefore yields at most one reload plus one queued.
use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// What a received signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// SIGHUP.
    Reload,
    /// SIGTERM.
    Stop,
    /// SIGINT.
    FastStop,
    /// SIGTTIN.
    MoreWorkers,
    /// SIGTTOU.
    FewerWorkers,
    /// SIGUSR2.
    Upgrade,
    /// SIGCHLD: some child changed state.
    Child,
}

/// The installed signal streams.
#[derive(Debug)]
pub struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
    ttin: Signal,
    ttou: Signal,
    usr2: Signal,
    chld: Signal,
}

impl Signals {
    /// Installs the handlers (needs a tokio runtime).
    pub fn install() -> io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            ttin: signal(SignalKind::from_raw(libc::SIGTTIN))?,
            ttou: signal(SignalKind::from_raw(libc::SIGTTOU))?,
            usr2: signal(SignalKind::user_defined2())?,
            chld: signal(SignalKind::child())?,
        })
    }

    /// Waits for the next signal. SIGCHLD is listed first so that exits are seen before a
    /// stop or reload that arrived in the same instant.
    pub async fn recv(&mut self) -> SignalEvent {
        tokio::select! {
            biased;
            Some(()) = self.chld.recv() => SignalEvent::Child,
            Some(()) = self.term.recv() => SignalEvent::Stop,
            Some(()) = self.int.recv() => SignalEvent::FastStop,
            Some(()) = self.hup.recv() => SignalEvent::Reload,
            Some(()) = self.ttin.recv() => SignalEvent::MoreWorkers,
            Some(()) = self.ttou.recv() => SignalEvent::FewerWorkers,
            Some(()) = self.usr2.recv() => SignalEvent::Upgrade,
        }
    }
}
