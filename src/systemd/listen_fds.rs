//! Adopting the file descriptors systemd passed (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`) and snapshotting the rest of systemd's environment.
//!
//! # References
//! `sd_listen_fds(3)`: fds start at 3, are valid only when `LISTEN_PID` is our pid, and
//! carry names from `LISTEN_FDNAMES` (colon-separated; fd store entries come last).
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

/// A file descriptor with the name systemd gave it (`FileDescriptorName=` or `FDNAME=`).
#[derive(Debug)]
pub struct NamedFd {
    /// The name from LISTEN_FDNAMES (`unknown` when systemd gave none).
    pub name: String,
    /// The descriptor, owned (and CLOEXEC) from now on.
    pub fd: OwnedFd,
}

/// Everything handover takes from systemd's environment at start.
#[derive(Debug, Default)]
pub struct Inherited {
    /// Sockets passed by socket activation and the fd store, in LISTEN_FDS order.
    pub fds: Vec<NamedFd>,
    /// `$NOTIFY_SOCKET`: where to send READY=1 & co. None outside systemd.
    pub notify_socket: Option<String>,
    /// `$WATCHDOG_USEC` when `$WATCHDOG_PID` is ours (or unset): ping at half of it.
    pub watchdog: Option<Duration>,
    /// `$FDSTORE` is set: systemd keeps an fd store for us (FileDescriptorStoreMax= > 0).
    pub fdstore_enabled: bool,
}

/// The variables this module consumes and removes from the process environment.
pub const SYSTEMD_VARS: &[&str] =
    &["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PIDFDID", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Adopts the inherited fds and snapshots NOTIFY_SOCKET/WATCHDOG_*/FDSTORE, then removes
/// those variables from the environment so no child can inherit them by accident.
///
/// # Safety
/// Must be called once, from `main`, before any other thread exists: it mutates the process
/// environment, and it takes ownership of fds 3.. that systemd passed (nothing else in the
/// process may own them).
pub unsafe fn adopt_from_env() -> std::io::Result<Inherited> {
    // sd-notify checks LISTEN_PID against our pid, sets FD_CLOEXEC on each fd and pairs
    // them with LISTEN_FDNAMES ("unknown" when missing).
    let fds = sd_notify::listen_fds_with_names()?;
    let fds = fds
        .map(|(raw, name)| NamedFd {
            name,
            // SAFETY: systemd passed these fds to us (LISTEN_PID matched our pid) and this
            // is the only place that adopts them, once, before any thread could use them.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
        .collect();
    let notify_socket = std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty());
    let watchdog =
        watchdog_from(std::env::var("WATCHDOG_USEC").ok(), std::env::var("WATCHDOG_PID").ok(), std::process::id());
    let fdstore_enabled = std::env::var_os("FDSTORE").is_some();
    for var in SYSTEMD_VARS {
        // SAFETY: the caller guarantees we are single-threaded (see # Safety).
        unsafe { std::env::remove_var(var) };
    }
    Ok(Inherited { fds, notify_socket, watchdog, fdstore_enabled })
}

/// The watchdog interval, if systemd asked *this* process to ping (sd_watchdog_enabled(3)).
fn watchdog_from(usec: Option<String>, pid: Option<String>, our_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_needs_a_positive_interval_and_our_pid() {
        assert_eq!(watchdog_from(Some("2000000".into()), None, 7), Some(Duration::from_secs(2)));
        assert_eq!(watchdog_from(Some("2000000".into()), Some("7".into()), 7), Some(Duration::from_secs(2)));
        assert_eq!(watchdog_from(Some("2000000".into()), Some("8".into()), 7), None);
        assert_eq!(watchdog_from(Some("0".into()), None, 7), None);
        assert_eq!(watchdog_from(Some("x".into()), None, 7), None);
        assert_eq!(watchdog_from(None, Some("7".into()), 7), None);
    }
}
