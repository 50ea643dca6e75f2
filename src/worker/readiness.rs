//! handover's own NOTIFY_SOCKET for workers: a unix datagram socket with SO_PASSCRED, so
//! every datagram carries the sender's pid (SCM_CREDENTIALS) and cannot lie about who it is.
//!
//! Workers speak the sd_notify(3) protocol to it exactly as they would to systemd:
//! `READY=1`, `STATUS=…`, `STOPPING=1`, `WATCHDOG=1`, `WATCHDOG=trigger`. Unknown keys are
//! ignored, as systemd does. Datagrams without credentials, oversized or not UTF-8 are
//! reported and dropped; nothing a worker sends can disturb the daemon.
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr};
use tokio::io::unix::AsyncFd;

use crate::supervisor::machine::WorkerMessage;

/// The largest datagram read; longer ones are truncated and dropped (systemd allows ~4 KiB
/// of useful payload too).
pub const MAX_DATAGRAM: usize = 4096;

/// One datagram from a worker, authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The sender's pid, from SCM_CREDENTIALS.
    pub pid: i32,
    /// What it said, in order; unknown keys dropped.
    pub messages: Vec<WorkerMessage>,
}

/// A datagram that was dropped, and why (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The sender, when known.
    pub pid: Option<i32>,
    /// Why it was dropped.
    pub reason: String,
}

/// The listening side of handover's worker NOTIFY_SOCKET.
#[derive(Debug)]
pub struct NotifyServer {
    fd: AsyncFd<OwnedFd>,
    path: PathBuf,
}

impl NotifyServer {
    /// Binds the socket at `path` (replacing a stale file) with SO_PASSCRED, non-blocking.
    pub fn bind(path: &Path) -> io::Result<NotifyServer> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        socket::setsockopt(&fd, socket::sockopt::PassCred, &true)?;
        // SAFETY: `fd` is a socket we just created and own; AsyncFd takes ownership, so it is
        // registered with this reactor only and cannot be closed while registered.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(NotifyServer { fd, path: path.to_path_buf() })
    }

    /// Where workers send (their `NOTIFY_SOCKET`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next datagram if one is already queued, without waiting.
    pub fn try_recv(&self) -> io::Result<Option<Result<Datagram, Rejected>>> {
        match receive(self.fd.get_ref()) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits for the next datagram.
    pub async fn recv(&self) -> io::Result<Result<Datagram, Rejected>> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| receive(fd.get_ref())) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

impl Drop for NotifyServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one datagram (non-blocking socket).
fn receive(fd: &OwnedFd) -> io::Result<Result<Datagram, Rejected>> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut iov = [IoSliceMut::new(&mut buf)];
    // Room for credentials and for fds someone might attach (which we close at once).
    let mut cmsg = nix::cmsg_space!(libc::ucred, [std::os::fd::RawFd; 16]);
    let msg = socket::recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC,
    )?;
    let mut pid = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                ControlMessageOwned::ScmRights(fds) => {
                    for fd in fds {
                        let _ = nix::unistd::close(fd);
                    }
                }
                _ => {}
            }
        }
    }
    let len = msg.bytes;
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC) || len > MAX_DATAGRAM;
    let Some(pid) = pid else {
        return Ok(Err(Rejected { pid: None, reason: "datagram without sender credentials".into() }));
    };
    if truncated {
        return Ok(Err(Rejected { pid: Some(pid), reason: format!("datagram longer than {MAX_DATAGRAM} bytes") }));
    }
    Ok(parse(&buf[..len])
        .map(|messages| Datagram { pid, messages })
        .map_err(|reason| Rejected { pid: Some(pid), reason }))
}

/// Parses a sd_notify payload: newline-separated `KEY=VALUE`, unknown keys ignored.
pub fn parse(payload: &[u8]) -> Result<Vec<WorkerMessage>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "datagram is not UTF-8".to_string())?;
    let mut out = Vec::new();
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("malformed line {:?} (expected KEY=VALUE)", truncate(line)));
        };
        match (key, value) {
            ("READY", "1") => out.push(WorkerMessage::Ready),
            ("STOPPING", "1") => out.push(WorkerMessage::Stopping),
            ("WATCHDOG", "1") => out.push(WorkerMessage::Watchdog),
            ("WATCHDOG", "trigger") => out.push(WorkerMessage::WatchdogTrigger),
            ("STATUS", s) => out.push(WorkerMessage::Status(s.chars().take(256).collect())),
            _ => {} // MAINPID=, ERRNO=, X_*: meaningful to systemd only, or unknown.
        }
    }
    Ok(out)
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sd_notify_vocabulary() {
        let m = parse(b"READY=1\nSTATUS=serving gen=2\nMAINPID=5\nX_FOO=bar\nWATCHDOG=1\n").expect("parse");
        assert_eq!(
            m,
            vec![WorkerMessage::Ready, WorkerMessage::Status("serving gen=2".into()), WorkerMessage::Watchdog]
        );
        assert_eq!(parse(b"WATCHDOG=trigger").expect("p"), vec![WorkerMessage::WatchdogTrigger]);
        assert_eq!(parse(b"STOPPING=1").expect("p"), vec![WorkerMessage::Stopping]);
        assert_eq!(parse(b"READY=0").expect("p"), vec![], "only READY=1 means ready");
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        assert!(parse(b"\xff\xfe").expect_err("not UTF-8").contains("UTF-8"));
        assert!(parse(b"hello").expect_err("no =").contains("malformed"));
    }

    #[tokio::test]
    async fn datagrams_carry_the_senders_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let server = NotifyServer::bind(&path).expect("bind");
        let client = std::os::unix::net::UnixDatagram::unbound().expect("client");
        client.send_to(b"READY=1\nSTATUS=hi", &path).expect("send");
        let got = server.recv().await.expect("recv").expect("accepted");
        assert_eq!(got.pid, std::process::id() as i32);
        assert_eq!(got.messages, vec![WorkerMessage::Ready, WorkerMessage::Status("hi".into())]);
        client.send_to(&vec![b'x'; MAX_DATAGRAM + 10], &path).expect("send big");
        let got = server.recv().await.expect("recv");
        assert!(got.expect_err("rejected").reason.contains("longer"));
        client.send_to(b"READY=1", &path).expect("still works after garbage");
        assert!(server.recv().await.expect("recv").is_ok());
        assert!(server.try_recv().expect("try_recv").is_none(), "nothing queued");
        client.send_to(b"STOPPING=1", &path).expect("send");
        let queued = server.try_recv().expect("try_recv").expect("queued").expect("accepted");
        assert_eq!(queued.messages, vec![WorkerMessage::Stopping]);
    }
}
