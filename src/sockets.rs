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

pub mod queue;

use crate::config::{Config, Listen, ListenAddress};
use crate::machine::SocketStatus;
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
    /// The `[[listen]]` address handover bound it for (`None` for passed sockets): matching
    /// at a reload compares configs, not getsockname (`127.0.0.1:0` binds a random port).
    bound_for: Option<ListenAddress>,
    /// handover may give its name a new address at a reload: it bound the socket itself, now
    /// or in an earlier run (it came back from the fd store). A socket unit's socket is not:
    /// its address belongs to the unit.
    rebindable: bool,
    /// Kept in systemd's fd store under `name`.
    stored: bool,
}

impl ListenSocket {
    /// Whether this socket serves the `[[listen]]` address `want`.
    fn serves(&self, want: &ListenAddress) -> bool {
        match &self.bound_for {
            Some(a) => a == want,
            None => same_address(&self.address, want),
        }
    }
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
    /// A reload gives a socket that systemd's socket unit passed a new address.
    #[error("listen {name:?}: the config moves it to {wanted}, but its socket came from a systemd socket unit (bound to {bound}) and handover cannot move it: change ListenStream= in the socket unit (a drop-in), then restart the socket and the service; {bound} keeps serving meanwhile")]
    AddressChanged {
        /// The `[[listen]]` name.
        name: String,
        /// Where the passed socket is bound.
        bound: String,
        /// The address the new config asks for.
        wanted: String,
    },
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
                // A name handover could have stored in an earlier run (see `prepare`).
                let from_store = fdstore_enabled && !name.ends_with(".socket") && name != "unknown";
                ListenSocket {
                    name,
                    fd,
                    origin: Origin::Systemd,
                    address,
                    claimed: false,
                    bound_for: None,
                    rebindable: from_store,
                    stored: from_store,
                }
            })
            .collect();
        Sockets { list, notifier, fdstore_enabled, first_prepare: true }
    }

    /// The sockets as plain records for `handover upgrade` (the descriptors stay open).
    pub fn handoff_records(&self) -> Vec<SocketRecord> {
        self.list
            .iter()
            .map(|s| SocketRecord {
                fd: s.fd.as_raw_fd(),
                name: s.name.clone(),
                origin: match s.origin {
                    Origin::Systemd => "systemd".into(),
                    Origin::Bound => "bound".into(),
                },
                claimed: s.claimed,
                bound_for: s.bound_for.clone(),
                rebindable: s.rebindable,
                stored: s.stored,
            })
            .collect()
    }

    /// The registry the previous binary handed over at `handover upgrade`: each record's
    /// descriptor is taken over (close-on-exec set again) and must be a socket.
    pub fn adopt(records: Vec<SocketRecord>, notifier: Notifier, fdstore_enabled: bool) -> io::Result<Sockets> {
        use std::os::fd::FromRawFd;
        let mut list = Vec::with_capacity(records.len());
        for r in records {
            if r.fd <= 2 {
                return Err(io::Error::other(format!("socket {:?}: fd {} is not a socket", r.name, r.fd)));
            }
            // SAFETY: the previous binary handed this descriptor over for this socket alone
            // (named in the hand-off), and nothing else in this process took it.
            let fd = unsafe { OwnedFd::from_raw_fd(r.fd) };
            let stat = nix::sys::stat::fstat(&fd).map_err(io::Error::from)?;
            if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
                return Err(io::Error::other(format!("socket {:?}: fd {} is not a socket", r.name, r.fd)));
            }
            crate::unix::set_cloexec(&fd)?;
            let address = describe_local(fd.as_fd());
            list.push(ListenSocket {
                name: r.name,
                fd,
                origin: if r.origin == "bound" { Origin::Bound } else { Origin::Systemd },
                address,
                claimed: r.claimed,
                bound_for: r.bound_for,
                rebindable: r.rebindable,
                stored: r.stored,
            });
        }
        Ok(Sockets { list, notifier, fdstore_enabled, first_prepare: false })
    }

    /// Makes sure every `[[listen]]` entry has a socket: claims passed ones by name, then by
    /// address, binds (and stores) the rest. Returns warnings to log. Idempotent; called at
    /// start and before each reload with the new config. On error, sockets bound by this
    /// call stay open (harmless) but nothing in use changes.
    ///
    /// A new address for a name: a socket handover bound (now or in an earlier run) gets a
    /// sibling bound to the new address, for the new generation; the old one serves the old
    /// generation until [`Sockets::retain_used`] closes it, and the fd store is switched over
    /// then. A socket unit's socket cannot move: at start the passed socket wins (a warning),
    /// at a reload the reload fails with [`SocketError::AddressChanged`].
    pub fn prepare(&mut self, listen: &[Listen]) -> Result<Vec<String>, SocketError> {
        let at_start = self.first_prepare;
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
            if let Some(s) = self.list.iter_mut().find(|s| s.name == l.name && s.serves(&l.address)) {
                s.claimed = true;
                continue;
            }
            let moved_from = self.list.iter().position(|s| s.name == l.name);
            match moved_from.map(|i| &mut self.list[i]) {
                Some(s) if !s.rebindable => {
                    if !at_start {
                        return Err(SocketError::AddressChanged {
                            name: l.name.clone(),
                            bound: s.address.clone(),
                            wanted: l.address.to_string(),
                        });
                    }
                    s.claimed = true;
                    warnings.push(format!(
                        "socket {:?} is bound to {}, not {} as configured; the socket unit's socket wins (change ListenStream= in the socket unit, or rename the [[listen]] entry to bind anew)",
                        l.name, s.address, l.address
                    ));
                    continue;
                }
                Some(_) => {} // ours: bind the new address below
                None => {
                    if let Some(s) = self.list.iter_mut().find(|s| !s.claimed && same_address(&s.address, &l.address)) {
                        s.name = l.name.clone();
                        s.claimed = true;
                        continue;
                    }
                }
            }
            let fd = bind_listener(&l.address, l.backlog, l.nodelay).map_err(|source| SocketError::Bind {
                name: l.name.clone(),
                address: l.address.to_string(),
                source,
            })?;
            let address = describe_local(fd.as_fd());
            if let Some(i) = moved_from {
                warnings.push(format!("socket {:?} moves from {} to {address}", l.name, self.list[i].address));
                if at_start {
                    // The old address came back from the fd store; nothing serves it yet.
                    let old = self.list.remove(i);
                    if let Err(e) = fdstore::remove(&self.notifier, &old.name) {
                        warnings.push(format!("could not remove {:?} from the fd store: {e}", old.name));
                    }
                }
            }
            let mut stored = false;
            // At a reload the old socket keeps its fd store entry until the old generation
            // is gone: FDSTOREREMOVE works by name and would take both.
            if at_start || moved_from.is_none() {
                match fdstore::store(&self.notifier, &l.name, fd.as_fd()) {
                    Ok(()) => stored = true,
                    Err(e) => warnings.push(format!("could not store socket {:?} in systemd's fd store: {e}", l.name)),
                }
            }
            self.list.push(ListenSocket {
                name: l.name.clone(),
                fd,
                origin: Origin::Bound,
                address,
                claimed: true,
                bound_for: Some(l.address.clone()),
                rebindable: true,
                stored,
            });
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
                self.index_for(l)
                    .map(|i| (self.list[i].name.as_str(), self.list[i].fd.as_fd()))
                    .ok_or_else(|| SocketError::Missing(l.name.clone()))
            })
            .collect()
    }

    /// The socket that serves `l`: its name at its address, else (a socket unit's socket
    /// whose address differs, see `prepare`) its name.
    fn index_for(&self, l: &Listen) -> Option<usize> {
        let named = |s: &&ListenSocket| s.name == l.name;
        let at = self.list.iter().position(|s| named(&s) && s.serves(&l.address));
        at.or_else(|| self.list.iter().position(|s| named(&s)))
    }

    /// Closes sockets no config in `in_use` refers to, and removes them from the fd store.
    /// Workers that still hold a copy keep accepting on it until they exit.
    pub fn retain_used<'a>(&mut self, in_use: impl IntoIterator<Item = &'a Config>) -> Vec<String> {
        let mut used = vec![false; self.list.len()];
        for c in in_use {
            if c.listen.is_empty() {
                return vec![];
            }
            for l in &c.listen {
                if let Some(i) = self.index_for(l) {
                    used[i] = true;
                }
            }
        }
        let mut log = Vec::new();
        let mut unstored = std::collections::BTreeSet::new();
        let mut used = used.into_iter();
        self.list.retain(|s| {
            let keep = used.next().unwrap_or(true);
            if !keep {
                log.push(format!("closing socket {:?} ({}): no generation uses it", s.name, s.address));
                // FDSTOREREMOVE is by name: a socket that moved to a new address loses its
                // entry too, and is stored again below.
                if s.stored || s.origin == Origin::Bound {
                    unstored.insert(s.name.clone());
                    if let Err(e) = fdstore::remove(&self.notifier, &s.name) {
                        log.push(format!("could not remove {:?} from the fd store: {e}", s.name));
                    }
                }
            }
            keep
        });
        for s in self.list.iter_mut().filter(|s| s.rebindable && unstored.contains(&s.name)) {
            match fdstore::store(&self.notifier, &s.name, s.fd.as_fd()) {
                Ok(()) => {
                    s.stored = true;
                    log.push(format!("socket {:?} ({}) is now the one in the fd store", s.name, s.address));
                }
                Err(e) => log.push(format!("could not store socket {:?} in systemd's fd store: {e}", s.name)),
            }
        }
        log
    }

    /// The sockets for `handover status`, with their accept queues read now (the peak of
    /// the last reload is the machine's, filled in by the executor).
    pub fn status(&self) -> Vec<SocketStatus> {
        self.list
            .iter()
            .map(|s| {
                let queue = queue::read(s.fd.as_fd()).ok();
                SocketStatus {
                    name: s.name.clone(),
                    address: s.address.clone(),
                    origin: match s.origin {
                        Origin::Systemd => "systemd",
                        Origin::Bound => "bound",
                    }
                    .into(),
                    accept_queue: queue.map(|q| q.length),
                    accept_queue_limit: queue.map(|q| q.limit),
                    reload_peak_accept_queue: None,
                }
            })
            .collect()
    }

    /// The accept queue of every socket, read now, by name: `None` where it cannot be read
    /// (see [`queue::read`]).
    pub fn accept_queues(&self) -> Vec<(&str, Option<queue::AcceptQueue>)> {
        self.list.iter().map(|s| (s.name.as_str(), queue::read(s.fd.as_fd()).ok())).collect()
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

/// One listening socket in a [`HandOff`](crate::upgrade::HandOff).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SocketRecord {
    /// Its descriptor, open across the exec.
    pub fd: std::os::fd::RawFd,
    /// Its name.
    pub name: String,
    /// `systemd` or `bound`.
    pub origin: String,
    /// Claimed by a `[[listen]]` entry.
    pub claimed: bool,
    /// The `[[listen]]` address it was bound for.
    pub bound_for: Option<crate::config::ListenAddress>,
    /// handover may move it at a reload.
    pub rebindable: bool,
    /// In systemd's fd store.
    pub stored: bool,
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
        // "http" came from a socket unit (no fd store): it keeps its address, with a warning.
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

    fn config_with(listen: Vec<Listen>) -> Config {
        let mut c = crate::config::parse(
            Path::new("/etc/handover/app.toml"),
            "control_socket = \"/run/x.sock\"\n[workers]\ncommand = [\"/bin/sh\"]\n",
            &crate::config::LoadEnv::default(),
        )
        .expect("config");
        c.listen = listen;
        c
    }

    fn free_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string() // closed again: free for the test to bind
    }

    #[test]
    fn a_reload_moves_a_socket_handover_bound_and_the_old_one_goes_once_unused() {
        let mut s = Sockets::new(vec![], Notifier::new(None), true);
        let old_cfg = config_with(vec![listen("http", "127.0.0.1:0")]);
        s.prepare(&old_cfg.listen).expect("start");
        // The same config again binds nothing new, though port 0 became a real port.
        s.prepare(&old_cfg.listen).expect("same");
        assert_eq!(s.status().len(), 1);
        let old_addr = s.status()[0].address.clone();
        let new_addr = free_port();
        let new_cfg = config_with(vec![listen("http", &new_addr)]);
        let w = s.prepare(&new_cfg.listen).expect("reload");
        assert!(w.iter().any(|w| w.contains("moves from")), "{w:?}");
        let addr_of = |s: &Sockets, c: &Config| describe_local(s.fds_for(c).expect("fds")[0].1);
        assert_eq!(addr_of(&s, &old_cfg), old_addr, "the old generation keeps its socket");
        assert_eq!(addr_of(&s, &new_cfg), new_addr, "the new generation gets the new address");
        let log = s.retain_used([&new_cfg]);
        assert!(log.iter().any(|l| l.contains("closing socket") && l.contains(&old_addr)), "{log:?}");
        assert!(log.iter().any(|l| l.contains("now the one in the fd store")), "{log:?}");
        assert_eq!(s.status().into_iter().map(|x| x.address).collect::<Vec<_>>(), vec![new_addr]);
    }

    #[test]
    fn a_reload_cannot_move_a_socket_units_socket() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("a");
        let a_addr = a.local_addr().expect("addr").to_string();
        let mut s = Sockets::new(vec![passed("app.socket", &a)], Notifier::new(None), true);
        s.prepare(&[listen("http", &a_addr)]).expect("start: claimed by address");
        let err = s.prepare(&[listen("http", &free_port())]).expect_err("must fail");
        assert!(matches!(err, SocketError::AddressChanged { .. }), "{err}");
        assert!(err.to_string().contains("change ListenStream= in the socket unit"), "{err}");
        assert_eq!(s.status().len(), 1, "nothing bound, nothing closed");
    }

    #[test]
    fn at_start_a_stored_socket_at_an_old_address_is_replaced() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").expect("a");
        let mut s = Sockets::new(vec![passed("http", &a)], Notifier::new(None), true);
        let new_addr = free_port();
        let w = s.prepare(&[listen("http", &new_addr)]).expect("start");
        assert!(w.iter().any(|w| w.contains("moves from")), "{w:?}");
        let st = s.status();
        assert_eq!((st.len(), st[0].address.as_str(), st[0].origin.as_str()), (1, new_addr.as_str(), "bound"));
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
