//! handover's own NOTIFY_SOCKET for workers: a unix datagram socket with SO_PASSCRED, so
//! every datagram carries the sender's pid (SCM_CREDENTIALS) and cannot lie about who it is.
//!
//! Workers speak the sd_notify(3) protocol to it exactly as they would to systemd:
//! `READY=1`, `STATUS=…`, `STOPPING=1`, `WATCHDOG=1`, `WATCHDOG=trigger`. Unknown keys are
//! ignored, as systemd does. Datagrams without credentials, oversized or not UTF-8 are
//! dropped (and counted by the supervisor, which logs a summary at most every
//! `supervisor::REJECT_SUMMARY_INTERVAL`); nothing a worker sends can disturb the daemon.
//!
//! # Where it lives
//! [`notify_path_for`](crate::unix::notify_path_for): the control socket's full path with `.notify` appended
//! (`control.sock` → `control.sock.notify`). It cannot collide with another daemon's files:
//! a second daemon's notify socket is its own control socket's path plus `.notify`, equal to
//! ours only if the control sockets are the same path (which [`bind`](NotifyServer::bind)'s
//! liveness check and the control socket's own refuse); a second daemon's control socket
//! equal to our notify path would end in `.notify`, which the config check refuses
//! ([`check_control_socket_path`](crate::unix::check_control_socket_path)). (The former scheme replaced the extension, so `x.sock`
//! and `x.ctl` shared `x.notify`.) A private directory would work as well but adds a second
//! thing to create, own and clean up next to a directory the admin chose.
//!
//! # Mode
//! 0600 after bind, whatever the umask: sending to a unix datagram socket needs write
//! permission on its file, so only handover's own uid (which workers run as) and root can
//! send. When a root master runs its workers as another user (`[workers] user`/`group`),
//! the file is given to that uid and gid before they are spawned (`Launcher`), still 0600:
//! the workers' uid and root can send, nobody else; senders are authenticated by
//! SCM_CREDENTIALS in any case (a worker's pid, or a process in a worker's group).
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use tokio::io::unix::AsyncFd;

use crate::machine::WorkerMessage;
use crate::text::strip_control_chars;
use crate::unix::{remove_stale_socket, set_cloexec};

/// The largest datagram read; longer ones are truncated and dropped (systemd allows ~4 KiB
/// of useful payload too).
pub const MAX_DATAGRAM: usize = 4096;

/// One datagram from a worker, authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The sender's pid, from SCM_CREDENTIALS.
    pub pid: i32,
    /// The sender's process group, when it attached descriptors: looked up before they
    /// were closed, since a sender waiting for them to close (sd_notify_barrier(3)) may be
    /// gone by the time the datagram is heard. `None` otherwise.
    pub sender_group: Option<i32>,
    /// What it said, in order; unknown keys dropped.
    pub messages: Vec<WorkerMessage>,
}

/// Why a datagram was dropped, as counted in the supervisor's summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectKind {
    /// No SCM_CREDENTIALS (cannot happen with SO_PASSCRED; counted all the same).
    NoCredentials,
    /// Longer than [`MAX_DATAGRAM`].
    Oversize,
    /// Not UTF-8, or a line without `=`.
    Malformed,
    /// From a process that is not a worker nor in a worker's process group.
    UnknownSender,
    /// Request counters (`X_HANDOVER_REQUESTS=`/`X_HANDOVER_ERRORS=`) that went backwards
    /// or jumped: refused by the machine, counted here.
    BadCounters,
}

impl RejectKind {
    /// How the summary names it.
    pub fn describe(self) -> &'static str {
        match self {
            RejectKind::NoCredentials => "without sender credentials",
            RejectKind::Oversize => "oversized",
            RejectKind::Malformed => "malformed",
            RejectKind::UnknownSender => "from processes that are not workers",
            RejectKind::BadCounters => "with request counters that went backwards or jumped",
        }
    }
}

/// A datagram that was dropped, and why (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The sender, when known.
    pub pid: Option<i32>,
    /// The kind of rejection, for counting.
    pub kind: RejectKind,
    /// Why it was dropped, in words (free of control characters).
    pub reason: String,
}

/// The listening side of handover's worker NOTIFY_SOCKET.
///
/// # Renewal
/// Workers find the socket by its path, so a file removed by someone (a tmpfiles clean-up,
/// an admin's `rm`) would leave every later worker unable to say READY=1, and every reload
/// would fail as "not ready within boot_timeout". [`renew_if_gone`](Self::renew_if_gone)
/// notices (the file at the path is no longer the one bound) and binds a new socket there.
/// The new socket takes the old one's descriptor number (dup3), so whatever refers to it by
/// number (the upgrade hand-off, the spawn batch's reader) stays right.
#[derive(Debug)]
pub struct NotifyServer {
    /// The socket, registered with the reactor. Replaced only by `renew_if_gone`, which
    /// the executor calls between turns of the event loop, never while `recv` waits.
    fd: std::cell::RefCell<Option<AsyncFd<OwnedFd>>>,
    /// Its descriptor number: the same for every socket `fd` holds (see the type's doc).
    number: std::os::fd::RawFd,
    path: PathBuf,
    /// Device and inode of the socket file as bound; `None` for an adopted socket whose
    /// file was gone already.
    file: std::cell::Cell<Option<(u64, u64)>>,
}

impl NotifyServer {
    /// Binds the socket at `path` with SO_PASSCRED, non-blocking, mode 0600. A stale
    /// socket file there is replaced; a live one (another daemon's) is an AddrInUse error,
    /// and anything that is not a socket is left alone (an error too).
    pub fn bind(path: &Path) -> io::Result<NotifyServer> {
        remove_stale_socket(path)?;
        let fd = bound_socket(path)?;
        let file = file_id(path).ok();
        NotifyServer::serve(fd, path, file)
    }

    /// Registers `fd` with the reactor.
    fn serve(fd: OwnedFd, path: &Path, file: Option<(u64, u64)>) -> io::Result<NotifyServer> {
        let number = fd.as_raw_fd();
        // SAFETY: `fd` is a socket we own; AsyncFd takes ownership, so it is registered with
        // this reactor only and cannot be closed while registered.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(NotifyServer {
            fd: std::cell::RefCell::new(Some(fd)),
            number,
            path: path.to_path_buf(),
            file: std::cell::Cell::new(file),
        })
    }

    /// Binds a new socket at the path if the file there is no longer the one bound (removed,
    /// or replaced by a stale file); returns whether it did. Refuses (an error, nothing
    /// changed) when something live or not a socket is there now, or while a `recv` waits.
    /// Datagrams still queued in the old socket are lost with it: call this before workers
    /// are spawned, when the ones that could not reach the path never sent anything.
    pub fn renew_if_gone(&self) -> io::Result<bool> {
        if self.file.get().is_some_and(|f| file_id(&self.path).ok() == Some(f)) {
            return Ok(false);
        }
        let mut slot = self
            .fd
            .try_borrow_mut()
            .map_err(|_| io::Error::other("the notify socket is being waited on; not renewed now"))?;
        remove_stale_socket(&self.path)?;
        let fresh = bound_socket(&self.path)?;
        let file = file_id(&self.path).ok();
        let Some(registered) = slot.take() else {
            return Err(io::Error::other("the notify socket could not be registered before"));
        };
        // Deregistered first: epoll forgets a descriptor only when its file is closed.
        let mut old = registered.into_inner();
        // The old number now names the new socket (the old socket is closed by dup3).
        let renumbered = nix::unistd::dup3(&fresh, &mut old, nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from);
        drop(fresh);
        // SAFETY: as in `serve`: `old` is ours and AsyncFd takes ownership of it.
        *slot = Some(unsafe { AsyncFd::register(old) }?);
        renumbered?;
        self.file.set(file);
        Ok(true)
    }

    /// Takes over the socket a previous handover binary bound at `path` (`handover
    /// upgrade`): the same socket, so datagrams workers sent during the hand-off are still
    /// queued in it. SO_PASSCRED and O_NONBLOCK were set on the socket and survive the exec.
    pub fn adopt(fd: OwnedFd, path: &Path) -> io::Result<NotifyServer> {
        set_cloexec(&fd)?;
        let file = file_id(path).ok();
        NotifyServer::serve(fd, path, file)
    }

    /// The socket's descriptor (handed over at `handover upgrade`).
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.number
    }

    /// The socket, to wait for it to be readable outside the event loop (see
    /// `worker::Meanwhile`).
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: `number` is open for as long as `self` lives: the socket in `fd` holds it,
        // and a renewal only makes it name another socket (dup3), never closes it.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.number) }
    }

    /// Where workers send (their `NOTIFY_SOCKET`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next datagram if one is already queued, without waiting.
    pub fn try_recv(&self) -> io::Result<Option<Result<Datagram, Rejected>>> {
        match receive(self.as_fd()) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits for the next datagram.
    ///
    /// Holds the socket borrowed while it waits: the executor renews it only between turns
    /// of the event loop, when no `recv` is pending ([`renew_if_gone`](Self::renew_if_gone)
    /// refuses otherwise, it does not panic).
    #[allow(clippy::await_holding_refcell_ref)]
    pub async fn recv(&self) -> io::Result<Result<Datagram, Rejected>> {
        let slot = self.fd.borrow();
        let Some(fd) = slot.as_ref() else {
            return Err(io::Error::other("the notify socket is not registered"));
        };
        loop {
            let mut guard = fd.readable().await?;
            match guard.try_io(|fd| receive(fd.get_ref().as_fd())) {
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

/// A new unix datagram socket bound at `path`: non-blocking, close-on-exec, SO_PASSCRED,
/// mode 0600 (the file is removed again if the mode cannot be set).
fn bound_socket(path: &Path) -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    // Bound under the umask; made 0600 before any worker exists to send to it.
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    socket::setsockopt(&fd, socket::sockopt::PassCred, &true)?;
    Ok(fd)
}

/// Device and inode of the file at `path` (not following a symlink).
fn file_id(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()))
}

/// The most descriptors one SCM_RIGHTS message can carry (the kernel's SCM_MAX_FD).
pub const SCM_MAX_FD: usize = 253;

/// Control-message room for SCM_CREDENTIALS and [`SCM_MAX_FD`] descriptors: a datagram can
/// carry no more, so the kernel never has to truncate (MSG_CTRUNC) what a sender attached.
/// `u64`s, for the alignment `cmsghdr` needs.
const CONTROL_WORDS: usize = 320;

/// Reads one datagram (non-blocking socket).
///
/// Every descriptor a sender attached is closed before this returns, whatever the datagram
/// holds, however long it is and even when its control data was truncated: the kernel has
/// already installed them in this process (close-on-exec, MSG_CMSG_CLOEXEC), and each one
/// left open would count against RLIMIT_NOFILE until the master could no longer accept a
/// control connection. nix's control-message iterator stops with an error on MSG_CTRUNC,
/// so the messages are walked here with the CMSG_* macros, by their lengths as the kernel
/// wrote them. sd_notify_barrier(3) is answered by that same close: the sender waits for
/// its pipe to hang up.
fn receive(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<Result<Datagram, Rejected>> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` points at `iov` (into `buf`) and `control`, both alive and writable for
    // the whole call, with their true lengths; `fd` is an open socket we own.
    let len = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = len as usize;
    let Attached { pid, fds } = attached(&msg);
    // The sender's process group is looked up while its descriptors are still held: a
    // sender waiting on sd_notify_barrier(3) (`systemd-notify --ready`) exits as soon as
    // they are closed, and an exited process no longer shows whose group it was in.
    let sender_group = match (pid, fds.is_empty()) {
        (Some(pid), false) => crate::worker::process_group_of(pid),
        _ => None,
    };
    drop(fds);
    let truncated = msg.msg_flags & libc::MSG_TRUNC != 0 || len > MAX_DATAGRAM;
    let Some(pid) = pid else {
        let reason = "datagram without sender credentials".into();
        return Ok(Err(Rejected { pid: None, kind: RejectKind::NoCredentials, reason }));
    };
    if truncated {
        let reason = format!("datagram longer than {MAX_DATAGRAM} bytes");
        return Ok(Err(Rejected { pid: Some(pid), kind: RejectKind::Oversize, reason }));
    }
    Ok(parse(&buf[..len]).map(|messages| Datagram { pid, sender_group, messages }).map_err(|reason| Rejected {
        pid: Some(pid),
        kind: RejectKind::Malformed,
        reason,
    }))
}

/// What the control messages of one received datagram held.
struct Attached {
    /// The sender's pid (SCM_CREDENTIALS).
    pid: Option<i32>,
    /// Every descriptor it attached (SCM_RIGHTS), owned: dropping them closes them.
    fds: Vec<OwnedFd>,
}

/// Takes the credentials and every descriptor out of `msg`'s control messages, as far as
/// the kernel wrote them (`msg_controllen`, each message's `cmsg_len`).
fn attached(msg: &libc::msghdr) -> Attached {
    use std::os::fd::FromRawFd;
    let mut out = Attached { pid: None, fds: Vec::new() };
    // SAFETY: `msg` is the header recvmsg just filled: its control pointer and length
    // describe the buffer the kernel wrote, which the CMSG_* macros stay within.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return either null or a header that lies whole
        // inside the control buffer; it may be unaligned only in theory, so it is read so.
        let header = unsafe { std::ptr::read_unaligned(cmsg) };
        // SAFETY: as above; CMSG_DATA only computes an address inside the same message.
        let data = unsafe { libc::CMSG_DATA(cmsg) };
        let header_len = data as usize - cmsg as usize;
        let data_len = (header.cmsg_len as usize).saturating_sub(header_len);
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            for i in 0..data_len / std::mem::size_of::<libc::c_int>() {
                // SAFETY: the kernel wrote `data_len` bytes of descriptors there (fewer
                // than were sent if it truncated, and cmsg_len then says so).
                let raw = unsafe { std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i)) };
                if raw >= 0 {
                    // SAFETY: the kernel installed this descriptor in this process for
                    // this message; nothing else knows of it, so we are its only owner.
                    out.fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        } else if header.cmsg_level == libc::SOL_SOCKET
            && header.cmsg_type == libc::SCM_CREDENTIALS
            && data_len >= std::mem::size_of::<libc::ucred>()
        {
            // SAFETY: a whole ucred lies at `data` (checked length).
            let cred = unsafe { std::ptr::read_unaligned(data.cast::<libc::ucred>()) };
            out.pid = Some(cred.pid);
        }
        // SAFETY: `cmsg` is a header inside `msg`'s control buffer (see above).
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    out
}

/// Parses a sd_notify payload: newline-separated `KEY=VALUE`, unknown keys ignored.
/// `STATUS=` text is stripped of control characters ([`strip_control_chars`]) and cut to 256
/// characters; an error's text quotes the payload escaped, so neither carries control
/// characters.
pub fn parse(payload: &[u8]) -> Result<Vec<WorkerMessage>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "datagram is not UTF-8".to_string())?;
    let mut out = Vec::new();
    let (mut requests, mut errors) = (None, None);
    for line in text.split('\n').filter(|l| !l.is_empty()) {
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("malformed line {:?} (expected KEY=VALUE)", truncate(line)));
        };
        match (key, value) {
            ("X_HANDOVER_REQUESTS", n) => requests = Some(counter(key, n)?),
            ("X_HANDOVER_ERRORS", n) => errors = Some(counter(key, n)?),
            ("READY", "1") => out.push(WorkerMessage::Ready),
            ("STOPPING", "1") => out.push(WorkerMessage::Stopping),
            ("WATCHDOG", "1") => out.push(WorkerMessage::Watchdog),
            ("WATCHDOG", "trigger") => out.push(WorkerMessage::WatchdogTrigger),
            // sd_notify_barrier(3): answered by closing the pipe it came with (`receive`).
            ("BARRIER", "1") => {}
            ("STATUS", s) => out.push(WorkerMessage::Status(strip_control_chars(s).chars().take(256).collect())),
            _ => {} // MAINPID=, ERRNO=, X_*: meaningful to systemd only, or unknown.
        }
    }
    if requests.is_some() || errors.is_some() {
        out.push(WorkerMessage::Outcomes { requests, errors });
    }
    Ok(out)
}

/// A request counter's value: decimal digits only (no sign, no spaces), at most what a u64
/// holds. Bounded: at most 20 digits are looked at.
fn counter(key: &str, value: &str) -> Result<u64, String> {
    let digits = !value.is_empty() && value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse::<u64>() {
        Ok(n) if digits => Ok(n),
        _ => Err(format!("{key}={:?} is not a count (decimal digits, at most 2^64-1)", truncate(value))),
    }
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
    fn request_outcomes_are_counts() {
        let both = parse(b"X_HANDOVER_REQUESTS=212\nX_HANDOVER_ERRORS=30\n").expect("parse");
        assert_eq!(both, vec![WorkerMessage::Outcomes { requests: Some(212), errors: Some(30) }]);
        let one = parse(b"READY=1\nX_HANDOVER_ERRORS=0").expect("parse");
        assert_eq!(one, vec![WorkerMessage::Ready, WorkerMessage::Outcomes { requests: None, errors: Some(0) }]);
        let max = format!("X_HANDOVER_REQUESTS={}", u64::MAX);
        assert_eq!(
            parse(max.as_bytes()).expect("max"),
            vec![WorkerMessage::Outcomes { requests: Some(u64::MAX), errors: None }]
        );
        for bad in ["-1", "+5", " 5", "5 ", "0x10", "1e3", "", "18446744073709551616", "99999999999999999999999"] {
            let line = format!("X_HANDOVER_REQUESTS={bad}");
            let e = parse(line.as_bytes()).expect_err(bad);
            assert!(e.contains("X_HANDOVER_REQUESTS") && e.contains("not a count"), "{bad}: {e}");
        }
    }

    #[test]
    fn status_text_loses_its_control_characters() {
        let m = parse(b"STATUS=\x1b[31mred\x1b[0m\rforged\x7f\xc2\x9b2J\tend").expect("parse");
        assert_eq!(m, vec![WorkerMessage::Status("[31mred[0mforged2Jend".into())]);
        assert_eq!(strip_control_chars("plain text"), "plain text");
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        assert!(parse(b"\xff\xfe").expect_err("not UTF-8").contains("UTF-8"));
        assert!(parse(b"hello").expect_err("no =").contains("malformed"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn no_control(s: &str) -> bool {
            !s.chars().any(char::is_control)
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            /// Any bytes at all: no panic, and nothing that comes out (STATUS= text or the
            /// reason of a rejection) carries a control character.
            #[test]
            fn arbitrary_bytes_never_panic_nor_leak_control_characters(payload in proptest::collection::vec(any::<u8>(), 0..MAX_DATAGRAM)) {
                match parse(&payload) {
                    Ok(messages) => {
                        for m in messages {
                            if let WorkerMessage::Status(text) = m {
                                prop_assert!(no_control(&text), "{text:?}");
                                prop_assert!(text.chars().count() <= 256);
                            }
                        }
                    }
                    Err(reason) => prop_assert!(no_control(&reason), "{reason:?}"),
                }
            }

            /// Text-shaped payloads (the interesting case: valid UTF-8 with KEY=VALUE lines
            /// and any characters, C0/C1 controls included, in the values).
            #[test]
            fn status_text_is_always_clean(
                lines in proptest::collection::vec(("(STATUS|READY|WATCHDOG|X_[A-Z]{1,3})", any::<String>()), 0..8)
            ) {
                let payload: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                match parse(payload.as_bytes()) {
                    Ok(messages) => {
                        for m in messages {
                            if let WorkerMessage::Status(text) = m {
                                prop_assert!(no_control(&text), "{text:?}");
                            }
                        }
                    }
                    Err(reason) => prop_assert!(no_control(&reason), "{reason:?}"),
                }
            }
        }
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
