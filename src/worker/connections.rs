//! How many client connections a worker still holds open: what a draining worker (told to
//! stop, not exited yet) is waiting for, shown in `handover status`, the metrics and the log
//! line of a worker killed at `graceful_timeout` (issue 23).
//!
//! A client connection is a socket that one of the worker's processes holds and that was
//! accepted from one of handover's listening sockets:
//! - TCP: an entry of `/proc/net/tcp` or `/proc/net/tcp6` that is not `LISTEN` and whose
//!   local port is the port of a listening socket;
//! - unix: a connected entry of `/proc/net/unix` that carries the path of a listening socket
//!   (an accepted unix socket shows its listener's path; the worker's own client sockets,
//!   such as its stdout stream to journald, show none).
//!
//! [`ClientSockets::read`] reads those tables once (the inodes of every client connection
//! open now); [`ClientSockets::held_by`] then looks at the `socket:[INODE]` links in
//! `/proc/<pid>/fd` of a worker's processes. Who those processes are (its cgroup's
//! `cgroup.procs`, or its process group) is the caller's to say.
//!
//! Read only when asked (see `supervisor::draining`): nothing here runs on a timer. The
//! parsers are pure functions of the /proc text.
//!
//! # References
//! `proc_net(5)` (`/proc/net/tcp`, `/proc/net/unix`), `proc_pid_fd(5)`.
use std::collections::{BTreeSet, HashSet};
use std::io;

use crate::machine::Pid;

/// `st` of a listening TCP socket in `/proc/net/tcp` (`TCP_LISTEN`).
const TCP_LISTEN: u8 = 0x0A;

/// `St` of a connected socket in `/proc/net/unix` (`SS_CONNECTED`).
const UNIX_CONNECTED: &str = "03";

/// What marks a client connection: handover's listening sockets, by TCP port and unix path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listeners {
    /// The local ports of the TCP listening sockets.
    pub tcp_ports: BTreeSet<u16>,
    /// The paths of the unix listening sockets as `/proc/net/unix` shows them (`@name` for
    /// an abstract one).
    pub unix_paths: BTreeSet<String>,
}

impl Listeners {
    /// From the listening sockets' addresses as `sockets::describe_local` writes them
    /// (`127.0.0.1:8000`, `[::]:80`, `unix:/run/app.sock`, `unix:@name`); anything else
    /// (an unnamed socket, another family) marks nothing.
    pub fn from_addresses<'a>(addresses: impl IntoIterator<Item = &'a str>) -> Listeners {
        let mut l = Listeners::default();
        for a in addresses {
            if let Some(path) = a.strip_prefix("unix:") {
                if path != "(unnamed)" {
                    l.unix_paths.insert(path.to_owned());
                }
            } else if let Ok(addr) = a.parse::<std::net::SocketAddr>() {
                l.tcp_ports.insert(addr.port());
            }
        }
        l
    }
}

/// The inodes of the client connections open on this host's network namespace now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSockets {
    inodes: HashSet<u64>,
}

impl ClientSockets {
    /// Reads the tables the listeners need (`/proc/net/tcp` and `tcp6` for TCP ports,
    /// `/proc/net/unix` for paths). Err only when a table needed could be read in none of
    /// its files (no /proc).
    pub fn read(listeners: &Listeners) -> io::Result<ClientSockets> {
        let mut inodes = HashSet::new();
        if !listeners.tcp_ports.is_empty() {
            let mut read_any = Err(io::Error::from(io::ErrorKind::NotFound));
            for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
                // tcp6 is absent on a kernel without IPv6.
                match std::fs::read_to_string(table) {
                    Ok(text) => {
                        parse_tcp(&text, &listeners.tcp_ports, &mut inodes);
                        read_any = Ok(());
                    }
                    Err(e) => read_any = read_any.and(Err(e)),
                }
            }
            read_any?;
        }
        if !listeners.unix_paths.is_empty() {
            parse_unix(&std::fs::read_to_string("/proc/net/unix")?, &listeners.unix_paths, &mut inodes);
        }
        Ok(ClientSockets { inodes })
    }

    /// A set of inodes as given (for tests).
    pub fn from_inodes(inodes: impl IntoIterator<Item = u64>) -> ClientSockets {
        ClientSockets { inodes: inodes.into_iter().collect() }
    }

    /// How many distinct client connections the processes `pids` hold between them (a
    /// socket that a worker's processes share through fork counts once). `None` when the
    /// descriptors of none of them could be read (they are gone, or not ours to read).
    pub fn held_by(&self, pids: &[Pid]) -> Option<usize> {
        let mut held = HashSet::new();
        let mut readable = false;
        for pid in pids {
            // A process may have exited since it was listed: skip it.
            let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
            readable = true;
            for entry in dir.flatten() {
                let Ok(link) = std::fs::read_link(entry.path()) else { continue };
                if let Some(inode) = socket_inode(link.as_os_str().as_encoded_bytes()) {
                    if self.inodes.contains(&inode) {
                        held.insert(inode);
                    }
                }
            }
        }
        readable.then_some(held.len())
    }
}

/// The inode of a `/proc/<pid>/fd` link to a socket (`socket:[12345]`); None for any other
/// file.
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Adds to `out` the inode of every entry of a `/proc/net/tcp` or `/proc/net/tcp6` text
/// that is not listening and whose local port is one of `ports`. Lines that do not parse
/// (the header) and entries without a socket (inode 0: `TIME_WAIT`) are skipped.
pub fn parse_tcp(text: &str, ports: &BTreeSet<u16>, out: &mut HashSet<u64>) {
    for line in text.lines() {
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        let mut fields = line.split_ascii_whitespace();
        let (Some(local), Some(state), Some(inode)) = (fields.nth(1), fields.nth(1), fields.nth(5)) else {
            continue;
        };
        let port = local.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        let listening = u8::from_str_radix(state, 16).map_or(true, |s| s == TCP_LISTEN);
        match (port, inode.parse::<u64>()) {
            (Some(port), Ok(inode)) if inode != 0 && !listening && ports.contains(&port) => {
                out.insert(inode);
            }
            _ => {}
        }
    }
}

/// Adds to `out` the inode of every connected entry of a `/proc/net/unix` text whose path is
/// one of `paths`: the connections accepted from those listeners (the listener itself is
/// not connected; the client's end of a connection has no path, unless it bound one).
pub fn parse_unix(text: &str, paths: &BTreeSet<String>, out: &mut HashSet<u64>) {
    for line in text.lines() {
        // Num RefCount Protocol Flags Type St Inode Path; the inode is right-aligned, and
        // the path, after one space, is the rest of the line (it may hold spaces).
        let mut rest = line;
        let mut fields = [""; 7];
        for field in &mut fields {
            let trimmed = rest.trim_start();
            let end = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
            *field = &trimmed[..end];
            rest = &trimmed[end..];
        }
        let Some(path) = rest.strip_prefix(' ') else { continue };
        if fields[5] != UNIX_CONNECTED || !paths.contains(path) {
            continue;
        }
        if let Ok(inode) = fields[6].parse::<u64>() {
            out.insert(inode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:D2F0 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 1003 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:D2F2 08 00000000:00000000 00:00000000 00000000  1000        0 1004 1 0000000000000000 20 4 30 10 -1
   4: 0100007F:1F90 0100007F:D2F4 06 00000000:00000000 03:00000FA0 00000000     0        0 0 3 0000000000000000
   5: 0100007F:0050 0100007F:D2F6 01 00000000:00000000 00:00000000 00000000  1000        0 1005 1 0000000000000000 20 4 30 10 -1
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2001 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D300 01 00000000:00000000 00:00000000 00000000  1000        0 2002 1 0000000000000000 20 4 30 10 -1
";

    const UNIX: &str = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 30001 /run/app/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 30002 /run/app/app.sock
0000000000000000: 00000003 00000000 00000000 0001 03 30003
0000000000000000: 00000003 00000000 00000000 0001 03  3004 /run/systemd/journal/stdout
0000000000000000: 00000003 00000000 00000000 0001 03 30005 /run/app/app.sock.old
0000000000000000: 00000003 00000000 00000000 0001 03 30006 /run/my app/a.sock
0000000000000000: 00000003 00000000 00000000 0005 03 30007 @abstract-app
0000000000000000: 00000002 00000000 00000000 0002 01 30008 /run/app/app.sock
";

    fn ports(p: &[u16]) -> BTreeSet<u16> {
        p.iter().copied().collect()
    }

    fn paths(p: &[&str]) -> BTreeSet<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    fn sorted(set: HashSet<u64>) -> Vec<u64> {
        let mut v: Vec<u64> = set.into_iter().collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn tcp_connections_on_a_listening_port_and_not_the_listener() {
        let mut out = HashSet::new();
        parse_tcp(TCP, &ports(&[8080]), &mut out);
        // 1002: established on :8080; 1004: CLOSE_WAIT still held; not 1001 (LISTEN), 1003
        // (the client's end: local port 53998), TIME_WAIT (no socket), 1005 (port 80).
        assert_eq!(sorted(out), [1002, 1004]);
        let mut out = HashSet::new();
        parse_tcp(TCP, &ports(&[80, 8080]), &mut out);
        assert_eq!(sorted(out), [1002, 1004, 1005]);
        let mut out = HashSet::new();
        parse_tcp(TCP, &ports(&[9999]), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn tcp6_entries_and_garbage() {
        let mut out = HashSet::new();
        parse_tcp(TCP6, &ports(&[8080]), &mut out);
        assert_eq!(sorted(out), [2002]);
        let mut out = HashSet::new();
        parse_tcp("garbage\n\n   7: nonsense\n0: 0100007F:ZZZZ 0 01 0 0 0 0 0 5\n", &ports(&[8080]), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn unix_connections_carry_the_listeners_path() {
        let mut out = HashSet::new();
        parse_unix(UNIX, &paths(&["/run/app/app.sock"]), &mut out);
        // Not the listener (30001, unconnected), nor a client's end (30003, no path), nor
        // another path (journald's stdout stream, a longer name), nor an unconnected
        // datagram socket bound to the path (30008).
        assert_eq!(sorted(out), [30002]);
        let mut out = HashSet::new();
        parse_unix(UNIX, &paths(&["/run/my app/a.sock", "@abstract-app"]), &mut out);
        assert_eq!(sorted(out), [30006, 30007], "a path with a space; an abstract name");
        let mut out = HashSet::new();
        parse_unix(UNIX, &paths(&["/run/systemd/journal/stdout"]), &mut out);
        assert_eq!(sorted(out), [3004], "a right-aligned inode");
    }

    #[test]
    fn socket_links_and_addresses() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
        let l = Listeners::from_addresses(["127.0.0.1:8000", "[::]:80", "unix:/run/a.sock", "unix:@x", "fd"]);
        assert_eq!(l.tcp_ports, ports(&[80, 8000]));
        assert_eq!(l.unix_paths, paths(&["/run/a.sock", "@x"]));
        assert_eq!(Listeners::from_addresses(["unix:(unnamed)", "family Packet"]), Listeners::default());
    }

    /// Against this kernel: the connections this test accepts are found in the process that
    /// holds them, the clients' ends and the listeners are not.
    #[test]
    fn the_connections_this_process_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        let path = dir.path().join("app.sock");
        let unix = std::os::unix::net::UnixListener::bind(&path).expect("bind unix");
        let addresses = [tcp.local_addr().expect("addr").to_string(), format!("unix:{}", path.display())];
        let listeners = Listeners::from_addresses(addresses.iter().map(String::as_str));
        let me = [std::process::id() as Pid];
        let before = ClientSockets::read(&listeners).expect("read /proc/net");
        assert_eq!(before.held_by(&me), Some(0), "listening only");

        let first = std::net::TcpStream::connect(tcp.local_addr().expect("addr")).expect("connect");
        let second = std::net::TcpStream::connect(tcp.local_addr().expect("addr")).expect("connect");
        let unix_client = std::os::unix::net::UnixStream::connect(&path).expect("connect unix");
        let accepted = [tcp.accept().expect("accept").0, tcp.accept().expect("accept").0];
        let unix_accepted = unix.accept().expect("accept unix").0;
        let now = ClientSockets::read(&listeners).expect("read /proc/net");
        assert_eq!(now.held_by(&me), Some(3), "two TCP connections and one unix one, each counted once");
        assert_eq!(now.held_by(&[me[0], me[0]]), Some(3), "a socket two processes share counts once");
        assert_eq!(now.held_by(&[-1]), None, "no such process");

        drop(accepted);
        drop(unix_accepted);
        let after = ClientSockets::read(&listeners).expect("read /proc/net");
        assert_eq!(after.held_by(&me), Some(0), "closed on our side");
        drop((first, second, unix_client));
    }
}
