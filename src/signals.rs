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
//! | SIGUSR2 | upgrade in place (`handover upgrade`; result logged) |
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

    /// A signal the event loop has been told about but not taken yet, without waiting
    /// (`handover upgrade` takes them before it re-executes, once signals are blocked).
    pub fn try_recv(&mut self) -> Option<SignalEvent> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let streams = [
            (&mut self.chld, SignalEvent::Child),
            (&mut self.term, SignalEvent::Stop),
            (&mut self.int, SignalEvent::FastStop),
            (&mut self.hup, SignalEvent::Reload),
            (&mut self.ttin, SignalEvent::MoreWorkers),
            (&mut self.ttou, SignalEvent::FewerWorkers),
            (&mut self.usr2, SignalEvent::Upgrade),
        ];
        for (stream, event) in streams {
            if let std::task::Poll::Ready(Some(())) = stream.poll_recv(&mut cx) {
                return Some(event);
            }
        }
        None
    }
}

/// Blocks every signal in this thread (the daemon's only thread that handles them) and
/// returns the mask before. Blocked signals stay pending, across an `execve` too.
pub fn block_all() -> io::Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut old)).map_err(io::Error::from)?;
    Ok(old)
}

/// Restores a signal mask (after [`block_all`]); pending signals are delivered now.
pub fn set_mask(mask: &nix::sys::signal::SigSet) -> io::Result<()> {
    use nix::sys::signal::{pthread_sigmask, SigmaskHow};
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(mask), None).map_err(io::Error::from)
}

/// Unblocks every signal: the new binary of an upgrade starts with all of them blocked
/// (the old one blocked them across the exec) and calls this once its handlers are in place.
pub fn unblock_all() -> io::Result<()> {
    set_mask(&nix::sys::signal::SigSet::empty())
}
