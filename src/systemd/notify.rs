//! Sending notifications to the service manager (`sd_notify(3)`).
//!
//! Messages are formatted with the `sd-notify` crate's [`NotifyState`]; the transport is
//! our own because the crate reads `$NOTIFY_SOCKET` on every call (we removed it from the
//! environment at start) and cannot reach an abstract (`@name`) socket.
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, OnceLock};

use nix::sys::socket::{sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr};
pub use sd_notify::NotifyState;

/// Where notifications go: systemd's `$NOTIFY_SOCKET`, or nowhere outside systemd.
///
/// One datagram socket is opened at the first message and kept (clones share it): a
/// start or reload of many workers sends many `STATUS=` lines, and a socket per message
/// would cost two more system calls each.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<String>,
    socket: Arc<OnceLock<OwnedFd>>,
}

/// Whether a send may wait for room in the service manager's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Lifecycle messages (READY=1, RELOADING=1, STOPPING=1, FDSTORE=1, WATCHDOG=1) wait, as
    /// `sd_notify(3)` does: losing one would leave systemd in the wrong state.
    Yes,
    /// A bare `STATUS=` line is dropped when the queue is full: the next one carries the
    /// newest text, and handover must not stall behind a busy (or stuck) manager.
    No,
}

impl Notifier {
    /// A notifier for `$NOTIFY_SOCKET` as snapshotted at start (`None`: messages are dropped).
    pub fn new(target: Option<String>) -> Notifier {
        Notifier { target, socket: Arc::default() }
    }

    /// Whether a service manager listens.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one datagram with `states`, newline-separated.
    pub fn send(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
        self.send_with_fds(states, &[])
    }

    /// Sends one datagram with `states` and `fds` attached (SCM_RIGHTS), as `FDSTORE=1` needs.
    pub fn send_with_fds(&self, states: &[NotifyState<'_>], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        self.send_message(states, fds, Wait::Yes)
    }

    /// Sends a bare `STATUS=` line without waiting: when the manager's queue is full the
    /// line is dropped (`WouldBlock`), and the caller sends a newer one later.
    pub fn send_status(&self, line: &str) -> io::Result<()> {
        self.send_message(&[NotifyState::Status(line)], &[], Wait::No)
    }

    fn send_message(&self, states: &[NotifyState<'_>], fds: &[BorrowedFd<'_>], wait: Wait) -> io::Result<()> {
        let Some(target) = &self.target else { return Ok(()) };
        let mut msg = String::new();
        for s in states {
            msg.push_str(&s.to_string());
            msg.push('\n');
        }
        let addr = notify_addr(target)?;
        let sock = match self.socket.get() {
            Some(sock) => sock,
            None => {
                let sock = socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
                self.socket.get_or_init(|| sock)
            }
        };
        let flags = match wait {
            Wait::Yes => MsgFlags::MSG_NOSIGNAL,
            Wait::No => MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        };
        send_on(sock.as_fd(), &addr, msg.as_bytes(), fds, flags)
    }
}

fn notify_addr(target: &str) -> io::Result<UnixAddr> {
    let addr = match target.strip_prefix('@') {
        Some(name) => UnixAddr::new_abstract(name.as_bytes()),
        None if target.starts_with('/') => UnixAddr::new(std::ffi::OsStr::new(target).as_bytes()),
        None => {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unsupported NOTIFY_SOCKET {target:?}")))
        }
    }?;
    Ok(addr)
}

fn send_on(
    sock: BorrowedFd<'_>,
    addr: &UnixAddr,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: MsgFlags,
) -> io::Result<()> {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() { vec![] } else { vec![ControlMessage::ScmRights(&raw)] };
    let iov = [io::IoSlice::new(payload)];
    let sent = sendmsg(sock.as_raw_fd(), &iov, &cmsgs, flags, Some(addr))?;
    if sent != payload.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short notify datagram"));
    }
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` wants (not the realtime clock).
pub fn monotonic_usec() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000,
        // CLOCK_MONOTONIC cannot fail on Linux; 0 would make systemd ignore the message.
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn sends_newline_separated_states_to_a_path_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::new(Some(path.to_string_lossy().into_owned()));
        n.send(&[NotifyState::Reloading, NotifyState::MonotonicUsec(42), NotifyState::Status("gen 2")]).expect("send");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"RELOADING=1\nMONOTONIC_USEC=42\nSTATUS=gen 2\n");
    }

    #[test]
    fn reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("handover-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        Notifier::new(Some(format!("@{name}"))).send(&[NotifyState::Ready]).expect("send");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1\n");
    }

    /// A manager that does not read: lifecycle messages would wait (as sd_notify's do), but
    /// STATUS= lines are dropped once its queue is full instead of stalling handover.
    #[test]
    fn status_lines_never_wait_for_a_manager_that_does_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::new(Some(path.to_string_lossy().into_owned()));
        let (tx, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Far more than any queue holds (net.unix.max_dgram_qlen: 10 by default, 512
            // under systemd's sysctl defaults).
            let results: Vec<io::Result<()>> = (0..2_000).map(|i| n.send_status(&format!("line {i}"))).collect();
            let _ = tx.send(results);
        });
        let results = done.recv_timeout(std::time::Duration::from_secs(20)).expect("send_status blocked");
        let dropped = results.iter().filter(|r| matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)).count();
        assert!(dropped > 0, "2,000 lines fitted in the queue: nothing was tested");
        assert_eq!(results.iter().filter(|r| r.is_ok()).count() + dropped, 2_000, "only WouldBlock may fail");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"STATUS=line 0\n", "the first lines went through, in order");
    }

    #[test]
    fn clones_share_one_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::new(Some(path.to_string_lossy().into_owned()));
        let copy = n.clone();
        n.send(&[NotifyState::Ready]).expect("send");
        copy.send_status("up").expect("send");
        let first = n.socket.get().map(|s| s.as_raw_fd());
        assert!(first.is_some() && first == copy.socket.get().map(|s| s.as_raw_fd()), "one socket");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1\n");
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"STATUS=up\n");
    }

    #[test]
    fn without_a_target_nothing_is_sent_and_nothing_fails() {
        assert!(Notifier::new(None).send(&[NotifyState::Ready]).is_ok());
        assert!(Notifier::new(Some("relative".into())).send(&[NotifyState::Ready]).is_err());
    }

    #[test]
    fn monotonic_usec_is_the_monotonic_clock() {
        let a = monotonic_usec();
        let b = monotonic_usec();
        assert!(a > 0 && b >= a);
        // Realtime µs are ~1.7e15 today; monotonic is seconds since boot.
        assert!(a < 1_000_000_000_000_000, "looks like CLOCK_REALTIME: {a}");
    }
}
