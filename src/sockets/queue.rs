//! The accept queue of a listening socket: connections the kernel has completed that no
//! worker has accepted yet (SPEC §7, `handover status`). Read on demand, never on a timer:
//! the executor asks while a reload runs and for a status request.
//!
//! - TCP: `getsockopt(TCP_INFO)`. For a socket in `LISTEN` state, Linux's `tcp_get_info()`
//!   puts the queue's length (`sk_ack_backlog`) in `tcpi_unacked` and its limit
//!   (`sk_max_ack_backlog`) in `tcpi_sacked`; `ss -lnt` shows them as Recv-Q and Send-Q.
//! - Unix stream: `/proc/net/unix` has no queue; the `sock_diag` netlink interface does
//!   (`UNIX_DIAG_RQLEN`: for a listener, the same two numbers), asked for the one socket by
//!   its inode. Where that interface is missing (a kernel without `unix_diag`), the queue is
//!   not known: [`read`] says so rather than guess.
//!
//! # References
//! `tcp(7)` (`TCP_INFO`), `sock_diag(7)` (`UNIX_DIAG_RQLEN`), `ss(8)`.
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{
    self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrLike, SockaddrStorage,
};

/// One reading of a listening socket's accept queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptQueue {
    /// Connections waiting to be accepted.
    pub length: u32,
    /// The most the kernel queues (the `listen()` backlog, capped by `net.core.somaxconn`);
    /// connections beyond it are dropped or refused.
    pub limit: u32,
}

/// `TCP_LISTEN` in `tcpi_state` (include/net/tcp_states.h).
const TCP_LISTEN: u8 = 10;

/// The accept queue of the listening socket `fd`, or why it cannot be read: not a TCP or
/// unix stream listener, or the kernel does not tell (`ErrorKind::Unsupported`).
pub fn read(fd: BorrowedFd<'_>) -> io::Result<AcceptQueue> {
    let local: SockaddrStorage = socket::getsockname(fd.as_raw_fd())?;
    match local.family() {
        Some(AddressFamily::Inet | AddressFamily::Inet6) => tcp_listen_queue(fd),
        Some(AddressFamily::Unix) => unix_listen_queue(fd),
        other => Err(io::Error::new(io::ErrorKind::Unsupported, format!("address family {other:?}"))),
    }
}

/// `TCP_INFO` of a TCP listener. Only the head of `struct tcp_info` is asked for (the
/// kernel copies as much as the caller's buffer holds): eight `__u8` (`tcpi_state` first),
/// then `__u32` `tcpi_rto`, `tcpi_ato`, `tcpi_snd_mss`, `tcpi_rcv_mss`, `tcpi_unacked`
/// (byte 24) and `tcpi_sacked` (byte 28), include/uapi/linux/tcp.h, a stable ABI.
fn tcp_listen_queue(fd: BorrowedFd<'_>) -> io::Result<AcceptQueue> {
    let mut info = [0u8; 32];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `fd` is an open descriptor borrowed for this call; `info` and `len` are
    // valid for writes, and `len` is the size of `info`, so the kernel writes at most that
    // many bytes (and shortens `len` if it wrote fewer).
    let rc = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len < 32 || info[0] != TCP_LISTEN {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "not a listening socket"));
    }
    let u32_at = |at: usize| u32::from_ne_bytes([info[at], info[at + 1], info[at + 2], info[at + 3]]);
    Ok(AcceptQueue { length: u32_at(24), limit: u32_at(28) })
}

// sock_diag(7) for AF_UNIX: linux/sock_diag.h, linux/unix_diag.h, linux/netlink.h.
/// `SOCK_DIAG_BY_FAMILY`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLM_F_REQUEST`.
const NLM_F_REQUEST: u16 = 1;
/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;
/// `UDIAG_SHOW_RQLEN`: ask for the queue lengths.
const UDIAG_SHOW_RQLEN: u32 = 0x10;
/// `UNIX_DIAG_RQLEN`: the attribute that carries them.
const UNIX_DIAG_RQLEN: u16 = 4;
/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDR: usize = 16;
/// `sizeof(struct unix_diag_msg)`.
const UNIX_DIAG_MSG: usize = 16;

/// `UNIX_DIAG_RQLEN` of a unix stream listener, asked of the kernel by inode.
fn unix_listen_queue(fd: BorrowedFd<'_>) -> io::Result<AcceptQueue> {
    let ty = socket::getsockopt(&fd, socket::sockopt::SockType)?;
    if ty != SockType::Stream || !socket::getsockopt(&fd, socket::sockopt::AcceptConn)? {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "not a listening stream socket"));
    }
    let inode = u32::try_from(nix::sys::stat::fstat(fd)?.st_ino)
        .map_err(|_| io::Error::new(io::ErrorKind::Unsupported, "socket inode beyond 32 bits"))?;
    let diag = socket::socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(|e| io::Error::new(io::ErrorKind::Unsupported, format!("sock_diag: {e}")))?;
    // An unconnected netlink socket sends to the kernel, which answers a request for one
    // socket before `send` returns: the answer is read without waiting.
    socket::send(diag.as_raw_fd(), &unix_diag_request(inode), MsgFlags::empty())?;
    let mut buf = [0u8; 512];
    let n = socket::recv(diag.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT)?;
    parse_unix_diag_reply(buf.get(..n).unwrap_or_default())
}

/// A `SOCK_DIAG_BY_FAMILY` request for the unix socket with `inode`, with its queue lengths.
fn unix_diag_request(inode: u32) -> Vec<u8> {
    let mut req = Vec::with_capacity(NLMSG_HDR + 24);
    req.extend_from_slice(&((NLMSG_HDR + 24) as u32).to_ne_bytes()); // nlmsg_len
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes()); // nlmsg_type
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes()); // nlmsg_flags
    req.extend_from_slice(&1u32.to_ne_bytes()); // nlmsg_seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
    req.push(libc::AF_UNIX as u8); // sdiag_family
    req.push(0); // sdiag_protocol
    req.extend_from_slice(&0u16.to_ne_bytes()); // pad
    req.extend_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes()); // udiag_states
    req.extend_from_slice(&inode.to_ne_bytes()); // udiag_ino
    req.extend_from_slice(&UDIAG_SHOW_RQLEN.to_ne_bytes()); // udiag_show
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // udiag_cookie: INET_DIAG_NOCOOKIE
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req
}

/// The `UNIX_DIAG_RQLEN` attribute of the kernel's answer (`rqueue`, `wqueue`: for a
/// listener, the queue's length and limit).
fn parse_unix_diag_reply(reply: &[u8]) -> io::Result<AcceptQueue> {
    let u16_at = |b: &[u8], at: usize| b.get(at..at + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]));
    let u32_at = |b: &[u8], at: usize| b.get(at..at + 4).map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]));
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag answer: {why}"));
    let len = u32_at(reply, 0).ok_or_else(|| bad("short"))? as usize;
    let message = reply.get(..len).ok_or_else(|| bad("truncated"))?;
    if u16_at(message, 4) == Some(NLMSG_ERROR) {
        let errno = u32_at(message, NLMSG_HDR).map_or(0, |e| -(e as i32));
        let e = io::Error::from_raw_os_error(errno);
        return Err(io::Error::new(io::ErrorKind::Unsupported, format!("sock_diag: {e}")));
    }
    let mut at = NLMSG_HDR + UNIX_DIAG_MSG;
    while let (Some(rta_len), Some(rta_type)) = (u16_at(message, at), u16_at(message, at + 2)) {
        let rta_len = usize::from(rta_len);
        if rta_len < 4 {
            break;
        }
        if rta_type == UNIX_DIAG_RQLEN {
            if let (Some(length), Some(limit)) = (u32_at(message, at + 4), u32_at(message, at + 8)) {
                return Ok(AcceptQueue { length, limit });
            }
        }
        at += rta_len.next_multiple_of(4);
    }
    Err(io::Error::new(io::ErrorKind::Unsupported, "sock_diag gave no queue length"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    /// Reads `fd`'s queue until it holds `want` (the kernel completes a loopback handshake
    /// as `connect` returns, but nothing promises it), with a deadline.
    fn queue_reaches(fd: BorrowedFd<'_>, want: u32) -> AcceptQueue {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let q = read(fd).expect("read the accept queue");
            if q.length == want || Instant::now() > deadline {
                return q;
            }
            std::thread::sleep(Duration::from_millis(5)); // polling the kernel: no event to wait on
        }
    }

    #[test]
    fn a_tcp_listener_reports_connections_not_accepted_and_its_backlog() {
        let fd = crate::sockets::bind_listener(
            &crate::config::ListenAddress::Tcp("127.0.0.1:0".parse().expect("addr")),
            16,
            false,
        )
        .expect("bind");
        let listener = std::net::TcpListener::from(fd);
        assert_eq!(read(listener.as_fd()).expect("empty"), AcceptQueue { length: 0, limit: 16 });
        let addr = listener.local_addr().expect("addr");
        let clients: Vec<_> = (0..3).map(|_| std::net::TcpStream::connect(addr).expect("connect")).collect();
        assert_eq!(queue_reaches(listener.as_fd(), 3), AcceptQueue { length: 3, limit: 16 });
        let _accepted = listener.accept().expect("accept");
        assert_eq!(queue_reaches(listener.as_fd(), 2).length, 2, "one accepted, two wait");
        drop(clients);
    }

    #[test]
    fn a_unix_listener_reports_its_queue_through_sock_diag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.sock");
        let fd =
            crate::sockets::bind_listener(&crate::config::ListenAddress::Unix(path.clone()), 8, false).expect("bind");
        let clients: Vec<_> =
            (0..2).map(|_| std::os::unix::net::UnixStream::connect(&path).expect("connect")).collect();
        match read(fd.as_fd()) {
            Ok(q) => assert_eq!(q, AcceptQueue { length: 2, limit: 8 }),
            // A kernel built without unix_diag: the queue is not known, and says so.
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}"),
        }
        drop(clients);
    }

    #[test]
    fn a_socket_that_does_not_listen_has_no_queue() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let err = read(client.as_fd()).expect_err("a connected socket");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
    }

    #[test]
    fn a_sock_diag_error_or_a_short_answer_is_no_reading() {
        let mut error = vec![0u8; 20];
        error[..4].copy_from_slice(&20u32.to_ne_bytes());
        error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_unix_diag_reply(&error).expect_err("error").kind(), io::ErrorKind::Unsupported);
        assert_eq!(parse_unix_diag_reply(&[1, 2]).expect_err("short").kind(), io::ErrorKind::InvalidData);
        let mut no_attr = vec![0u8; 32];
        no_attr[..4].copy_from_slice(&32u32.to_ne_bytes());
        assert_eq!(parse_unix_diag_reply(&no_attr).expect_err("no rqlen").kind(), io::ErrorKind::Unsupported);
    }
}
