//! The listening sockets handed to workers (SPEC §3).
//!
//! Sources, in order: what systemd passed (socket units and the fd store, see
//! [`crate::systemd::listen_fds`]), matched to `[[listen]]` entries by name, then by bound
//! address; then, for each `[[listen]]` still without a socket, one handover binds itself
//! and stores in systemd's fd store so that a restart gets the very same socket back.
//!
//! handover never calls `listen()` again on an inherited socket, never changes its flags and
//! never uses SO_REUSEPORT: every generation accepts from the same kernel queue, so no
//! queued connection is lost across reloads and restarts.
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrLike, SockaddrStorage};

use crate::config::{Config, Listen, ListenAddress};
use crate::control::proto::SocketStatus;
use crate::systemd::{fdstore, NamedFd, Notifier};

/// Where a socket came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Passed by systemd: a socket unit, or the fd store from an earlier run.
    Systemd,
    /// Bound by this handover process (and stored in the fd store).
    Bound,
}

/// One listening socket.
#[derive(Debug)]
pub struct ListenSocket {
    /// The name workers see in LISTEN_FDNAMES: the `[[listen]]` name it serves, else the
    /// name systemd gave it.
    pub name: String,
    /// The descriptor (CLOEXEC in handover; the spawner maps it to fd 3.. in workers).
    pub fd: OwnedFd,
    /// Where it came from.
    pub origin: Origin,
    /// Its bound address, as getsockname(2) tells.
    pub address: String,
    /// Claimed by a `[[listen]]` entry (or passed through when there is none).
    claimed: bool,
}

/// Errors setting up sockets. Each names the socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// bind/listen of a `[[listen]]` address failed.
    #[error("listen {name:?}: cannot bind {address}: {source}")]
    Bind {
        /// The `[[listen]]` name.
        name: String,
        /// The configured address.
        address: String,
        /// The OS error.
        source: io::Error,
    },
    /// systemd passed a socket that no `[[listen]]` entry matches.
    #[error("systemd passed socket {name:?} ({address}) that matches no [[listen]] entry by name or address; add one, or fix FileDescriptorName=/ListenStream= in the socket unit")]
    Unmatched {
        /// Its name from LISTEN_FDNAMES.
        name: String,
        /// Its bound address.
        address: String,
    },
    /// Nothing to serve on.
    #[error("no listening socket: add a [[listen]] entry, or start handover from a socket unit")]
    NoSockets,
    /// A config refers to a socket that is not there.
    #[error("no socket named {0:?}")]
    Missing(String),
}

/// The registry of listening sockets.
#[derive(Debug)]
pub struct Sockets {
    list: Vec<ListenSocket>,
    notifier: Notifier,
    fdstore_enabled: bool,
    first_prepare: bool,
}

impl Sockets {
    /// A registry holding what systemd passed.
    pub fn new(inherited: Vec<NamedFd>, notifier: Notifier, fdstore_enabled: bool) -> Sockets {
        let list = inherited
            .into_iter()
            .map(|NamedFd { name, fd }| {
                let address = describe_local(fd.as_fd());
                ListenSocket { name, fd, origin: Origin::Systemd, address, claimed: false }
            })
            .collect();
        Sockets { list, notifier, fdstore_enabled, first_prepare: true }
    }

    /// Makes sure every `[[listen]]` entry has a socket: claims passed ones by name, then by
    /// address, binds (and stores) the rest. Returns warnings to log. Idempotent; called at
    /// start and before each reload with the new config. On error, sockets bound by this
    /// call stay open (harmless) but nothing in use changes.
    pub fn prepare(&mut self, listen: &[Listen]) -> Result<Vec<String>, SocketError> {
        let mut warnings = Vec::new();
        if listen.is_empty() {
            for s in &mut self.list {
                s.claimed = true;
            }
            if self.list.is_empty() {
                return Err(SocketError::NoSockets);
            }
            return Ok(warnings);
        }
        for l in listen {
            if let Some(s) = self.list.iter_mut().find(|s| s.name == l.name) {
                s.claimed = true;
                if !same_address(&s.address, &l.address) {
                    warnings.push(format!(
                        "socket {:?} is bound to {}, not {} as configured; the passed socket wins (rename the [[listen]] entry to bind anew)",
                        l.name, s.address, l.address
                    ));
                }
                continue;
            }
            if let Some(s) = self.list.iter_mut().find(|s| !s.claimed && same_address(&s.address, &l.address)) {
                s.name = l.name.clone();
                s.claimed = true;
                continue;
            }
            let fd = bind_listener(&l.address, l.backlog, l.nodelay).map_err(|source| SocketError::Bind {
                name: l.name.clone(),
                address: l.address.to_string(),
                source,
            })?;
            if let Err(e) = fdstore::store(&self.notifier, &l.name, fd.as_fd()) {
                warnings.push(format!("could not store socket {:?} in systemd's fd store: {e}", l.name));
            }
            let address = describe_local(fd.as_fd());
            self.list.push(ListenSocket { name: l.name.clone(), fd, origin: Origin::Bound, address, claimed: true });
        }
        if std::mem::take(&mut self.first_prepare) {
            let unclaimed: Vec<usize> = (0..self.list.len()).filter(|&i| !self.list[i].claimed).collect();
            for &i in &unclaimed {
                let s = &self.list[i];
                // A name we could have stored in an earlier run (a removed [[listen]]) is a
                // stale fd store entry: drop it. A socket unit's fd (named `*.socket`, or
                // when there is no fd store) that matches nothing is a mistake.
                let stale_store_entry = self.fdstore_enabled && !s.name.ends_with(".socket") && s.name != "unknown";
                if !stale_store_entry {
                    return Err(SocketError::Unmatched { name: s.name.clone(), address: s.address.clone() });
                }
            }
            for i in unclaimed.into_iter().rev() {
                let s = self.list.remove(i);
                warnings.push(format!(
                    "dropping stale fd store entry {:?} ({}): no [[listen]] entry uses it",
                    s.name, s.address
                ));
                if let Err(e) = fdstore::remove(&self.notifier, &s.name) {
                    warnings.push(format!("could not remove {:?} from the fd store: {e}", s.name));
                }
            }
        }
        Ok(warnings)
    }

    /// The sockets a worker of `config` gets, in `[[listen]]` order (all, when it has none).
    pub fn fds_for(&self, config: &Config) -> Result<Vec<(&str, BorrowedFd<'_>)>, SocketError> {
        if config.listen.is_empty() {
            return Ok(self.list.iter().map(|s| (s.name.as_str(), s.fd.as_fd())).collect());
        }
        config
            .listen
            .iter()
            .map(|l| {
                self.list
                    .iter()
                    .find(|s| s.name == l.name)
                    .map(|s| (s.name.as_str(), s.fd.as_fd()))
                    .ok_or_else(|| SocketError::Missing(l.name.clone()))
            })
            .collect()
    }

    /// Closes sockets no config in `in_use` refers to, and removes them from the fd store.
    /// Workers that still hold a copy keep accepting on it until they exit.
    pub fn retain_used<'a>(&mut self, in_use: impl IntoIterator<Item = &'a Config>) -> Vec<String> {
        let mut names = std::collections::BTreeSet::new();
        for c in in_use {
            if c.listen.is_empty() {
                return vec![];
            }
            names.extend(c.listen.iter().map(|l| l.name.clone()));
        }
        let mut log = Vec::new();
        let notifier = self.notifier.clone();
        self.list.retain(|s| {
            let keep = names.contains(&s.name);
            if !keep {
                log.push(format!("closing socket {:?} ({}): no generation uses it", s.name, s.address));
                if let Err(e) = fdstore::remove(&notifier, &s.name) {
                    log.push(format!("could not remove {:?} from the fd store: {e}", s.name));
                }
            }
            keep
        });
        log
    }

    /// The sockets for `handover status`.
    pub fn status(&self) -> Vec<SocketStatus> {
        self.list
            .iter()
            .map(|s| SocketStatus {
                name: s.name.clone(),
                address: s.address.clone(),
                origin: match s.origin {
                    Origin::Systemd => "systemd",
                    Origin::Bound => "bound",
                }
                .into(),
            })
            .collect()
    }
}

/// Whether getsockname's `bound` is the configured `want`.
fn same_address(bound: &str, want: &ListenAddress) -> bool {
    match want {
        ListenAddress::Tcp(a) => bound.parse::<std::net::SocketAddr>().is_ok_and(|b| b == *a),
        ListenAddress::Unix(p) => bound.strip_prefix("unix:").is_some_and(|b| Path::new(b) == p),
    }
}

/// The local address of a socket, for humans and matching: `127.0.0.1:8000`, `[::]:80`,
/// `unix:/run/app.sock`, or `fd` when it is not a socket we can name.
pub fn describe_local(fd: BorrowedFd<'_>) -> String {
    match socket::getsockname::<SockaddrStorage>(fd.as_raw_fd()) {
        Ok(addr) => {
            if let Some(v4) = addr.as_sockaddr_in() {
                std::net::SocketAddr::V4((*v4).into()).to_string()
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                std::net::SocketAddr::V6((*v6).into()).to_string()
            } else if let Some(un) = addr.as_unix_addr() {
                match (un.path(), un.as_abstract()) {
                    (Some(p), _) => format!("unix:{}", p.display()),
                    (None, Some(a)) => format!("unix:@{}", String::from_utf8_lossy(a)),
                    _ => "unix:(unnamed)".into(),
                }
            } else {
                format!("family {:?}", addr.family())
            }
        }
        Err(_) => "fd".into(),
    }
}

/// Binds and listens on `address` (CLOEXEC, blocking, SO_REUSEADDR for TCP). With `nodelay`,
/// a TCP socket gets TCP_NODELAY, which Linux copies to every socket accepted from it: a
/// worker that never sets it itself (uvicorn `--fd`, which takes the fd for a unix socket)
/// then answers keep-alive requests without Nagle's delay. Ignored for unix sockets.
pub fn bind_listener(address: &ListenAddress, backlog: u32, nodelay: bool) -> io::Result<OwnedFd> {
    let backlog = Backlog::new(backlog.min(i32::MAX as u32) as i32).map_err(io::Error::from)?;
    match address {
        ListenAddress::Tcp(sa) => {
            let family = if sa.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
            let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
            socket::setsockopt(&fd, socket::sockopt::ReuseAddr, &true)?;
            if nodelay {
                socket::setsockopt(&fd, socket::sockopt::TcpNoDelay, &true)?;
            }
            let addr: SockaddrStorage = match sa {
                std::net::SocketAddr::V4(v4) => (*v4).into(),
                std::net::SocketAddr::V6(v6) => (*v6).into(),
            };
            socket::bind(fd.as_raw_fd(), &addr)?;
            socket::listen(&fd, backlog)?;
            Ok(fd)
        }
        ListenAddress::Unix(path) => {
            remove_stale_unix_socket(path)?;
            let fd = socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
            socket::bind(fd.as_raw_fd(), &socket::UnixAddr::new(path.as_path())?)?;
            socket::listen(&fd, backlog)?;
            Ok(fd)
        }
    }
}

/// Removes a socket file nobody listens on any more (left by a crash); refuses to touch a
/// live socket or anything that is not a socket.
pub fn remove_stale_unix_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if !m.file_type().is_socket() => {
            Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists and is not a socket", path.display())))
        }
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            )),
            Err(_) => std::fs::remove_file(path),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(name: &str, address: &str) -> Listen {
        let address = match address.strip_prefix("unix:") {
            Some(p) => ListenAddress::Unix(p.into()),
            None => ListenAddress::Tcp(address.parse().expect("addr")),
        };
        Listen { name: name.into(), address, backlog: 16, nodelay: true }
    }

    fn passed(name: &str, l: &std::net::TcpListener) -> NamedFd {
        NamedFd { name: name.into(), fd: l.as_fd().try_clone_to_owned().expect("dup") }
    }

    #[test]
    fn claims_by_name_then_by_address_then_binds() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("a");
        let b = std::net::TcpListener::bind("127.0.0.1:0").expect("b");
        let b_addr = b.local_addr().expect("addr").to_string();
        let mut s = Sockets::new(vec![passed("http", &a), passed("app.socket", &b)], Notifier::new(None), false);
        let cfg = [listen("http", "127.0.0.1:1"), listen("admin", &b_addr), listen("extra", "127.0.0.1:0")];
        let warnings = s.prepare(&cfg).expect("prepare");
        assert_eq!(warnings.len(), 1, "address mismatch of the name match is reported: {warnings:?}");
        let names: Vec<_> = s.status().into_iter().map(|x| (x.name, x.origin)).collect();
        assert_eq!(
            names,
            vec![
                ("http".into(), "systemd".into()),
                ("admin".into(), "systemd".into()),
                ("extra".into(), "bound".into())
            ]
        );
    }

    #[test]
    fn an_unmatched_socket_unit_fd_is_an_error() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("a");
        let mut s = Sockets::new(vec![passed("app.socket", &a)], Notifier::new(None), true);
        let err = s.prepare(&[listen("http", "127.0.0.1:0")]).expect_err("must fail");
        assert!(err.to_string().contains("app.socket"), "{err}");
    }

    #[test]
    fn a_stale_fd_store_entry_is_dropped() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("a");
        let mut s = Sockets::new(vec![passed("old", &a)], Notifier::new(None), true);
        let w = s.prepare(&[listen("http", "127.0.0.1:0")]).expect("prepare");
        assert!(w.iter().any(|w| w.contains("stale")), "{w:?}");
        assert_eq!(s.status().len(), 1);
    }

    #[test]
    fn pass_through_without_listen_entries_and_none_is_an_error() {
        let mut empty = Sockets::new(vec![], Notifier::new(None), false);
        assert!(matches!(empty.prepare(&[]), Err(SocketError::NoSockets)));
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("a");
        let mut s = Sockets::new(vec![passed("x.socket", &a)], Notifier::new(None), false);
        s.prepare(&[]).expect("pass through");
        assert_eq!(s.status()[0].name, "x.socket");
    }

    #[test]
    fn unix_sockets_bind_and_stale_files_are_replaced_but_live_ones_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.sock");
        let live = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let err = bind_listener(&ListenAddress::Unix(path.clone()), 8, true).expect_err("in use");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(live); // the file stays, nobody listens: stale
        let fd = bind_listener(&ListenAddress::Unix(path.clone()), 8, true).expect("rebind");
        assert_eq!(describe_local(fd.as_fd()), format!("unix:{}", path.display()));
    }

    /// `nodelay` (issue 9): sockets accepted from a listener handover bound inherit its
    /// TCP_NODELAY, which is what fixes workers that never set it (uvicorn `--fd`).
    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener_handover_binds() {
        for nodelay in [true, false] {
            let fd =
                bind_listener(&ListenAddress::Tcp("127.0.0.1:0".parse().expect("addr")), 8, nodelay).expect("bind");
            let listener = std::net::TcpListener::from(fd);
            let addr = listener.local_addr().expect("addr");
            let _client = std::net::TcpStream::connect(addr).expect("connect");
            let (accepted, _) = listener.accept().expect("accept");
            assert_eq!(accepted.nodelay().expect("getsockopt"), nodelay, "nodelay = {nodelay}");
        }
    }
}
