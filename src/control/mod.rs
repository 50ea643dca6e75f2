//! The control socket (SPEC §7): a unix stream socket, mode 0600, that `handover reload`,
//! `status` and `scale` talk to.
//!
//! Each connection may send several requests, one JSON object per line; each gets one or
//! more reply lines (a reload streams progress before its result). Peers are checked with
//! SO_PEERCRED: root or our own uid only. Malformed or oversized requests get
//! `{"ok":false,"error":…}` and change nothing; a client that disconnects mid-reload does not
//! disturb the reload.
//!
//! # Limits: an administrator always gets through
//! Every client may be hostile (any process of our uid can connect), so no client can hold
//! a resource the next one needs:
//! - at most [`MAX_CLIENTS`] connections; when a new one arrives and all are taken, the one
//!   that has made no progress for the longest (no request read, no reply taken) is
//!   **evicted**, unless it waits for a reload or scale it asked for. Only if every
//!   connection waits for one is the newcomer refused;
//! - one request in flight per connection: the next line is read only once the reply to
//!   the last one was written, so pipelined requests wait in the kernel's socket buffer;
//! - the output buffered for a connection is one request's replies (a reload's progress
//!   lines and its result) plus the kernel's socket buffer; a reply line the client does not
//!   take within [`WRITE_TIMEOUT`] drops the client;
//! - a connection that sends no complete request within [`IDLE_TIMEOUT`] is closed.
//!
//! A client that is refused, evicted or timed out while idle gets one line saying why
//! (`{"ok":false,"error":"…"}`) before the close, if its socket takes it within
//! [`NOTICE_TIMEOUT`].
pub mod client;
pub mod proto;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use proto::{Outcome, Reply, Request, MAX_REQUEST_BYTES};

/// How many clients may be connected at once; a newcomer evicts the idlest one.
pub const MAX_CLIENTS: usize = 64;
/// How long a connection may stay without sending a complete request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may leave a reply line untaken before it is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the one-line reason for a refusal, eviction or idle close may take to write.
pub const NOTICE_TIMEOUT: Duration = Duration::from_millis(200);

/// A request handed to the supervisor, with the channel for its replies. The request is
/// answered when the supervisor sends a [`Reply::Done`]; dropping the sender ends the
/// connection's wait.
#[derive(Debug)]
pub struct Command {
    /// What the client asked.
    pub request: Request,
    /// Where replies go (progress lines, then the final one).
    pub replies: mpsc::UnboundedSender<Reply>,
    /// For `upgrade`, `reload` and `scale` (the requests held during an upgrade): a second
    /// descriptor of the client's connection, so that `handover upgrade` can hand the
    /// connection to the new binary, which answers on it.
    /// Dropping it changes nothing (the connection's own task holds the first).
    pub connection: Option<std::os::fd::OwnedFd>,
}

/// A connection taken over from the previous binary at `handover upgrade`, and what it
/// waits for.
#[derive(Debug)]
pub struct Adopted {
    /// The connection.
    pub stream: std::os::fd::OwnedFd,
    /// What to do first: answer it, or handle the request it sent to the old binary.
    pub start: AdoptedStart,
}

/// See [`Adopted`].
#[derive(Debug)]
pub enum AdoptedStart {
    /// Write this reply (the answer to `handover upgrade`), then serve the connection.
    Reply(Box<Reply>),
    /// Handle this request as if it had just been read (a reload asked for during the
    /// upgrade, honoured by the new binary).
    Request(Request),
}

/// The bound control socket; removed from the file system when dropped.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` with mode 0600, creating its directory (0755) if missing and replacing
    /// a stale socket file. Fails if another daemon listens there (on a stream or a datagram
    /// socket) or if the path is not a socket.
    pub fn bind(path: &Path) -> io::Result<ControlServer> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        crate::unix::remove_stale_socket(path)?;
        // Bind with a restrictive umask-independent mode: bind, then chmod before anyone
        // could have been served (the listener is not polled until `serve`).
        let std_listener = std::os::unix::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        std_listener.set_nonblocking(true)?;
        Ok(ControlServer { listener: UnixListener::from_std(std_listener)?, path: path.to_path_buf() })
    }

    /// Takes over the listening socket a previous handover binary bound at `path`
    /// (`handover upgrade`). Clients that connected during the exec wait in its backlog.
    pub fn adopt(fd: std::os::fd::OwnedFd, path: &Path) -> io::Result<ControlServer> {
        crate::unix::set_cloexec(&fd)?;
        let std_listener = std::os::unix::net::UnixListener::from(fd);
        std_listener.set_nonblocking(true)?;
        Ok(ControlServer { listener: UnixListener::from_std(std_listener)?, path: path.to_path_buf() })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket's descriptor (handed over at `handover upgrade`).
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.listener.as_raw_fd()
    }

    /// Accepts clients forever, forwarding their requests to `commands`.
    pub async fn serve(self, commands: mpsc::Sender<Command>) {
        self.serve_with(commands, Vec::new()).await
    }

    /// [`ControlServer::serve`], first taking over `adopted` connections.
    pub async fn serve_with(self, commands: mpsc::Sender<Command>, adopted: Vec<Adopted>) {
        let clients = Clients::default();
        for Adopted { stream, start } in adopted {
            let stream = std::os::unix::net::UnixStream::from(stream);
            let stream = match crate::unix::set_cloexec(&stream)
                .and_then(|()| stream.set_nonblocking(true))
                .and_then(|()| UnixStream::from_std(stream))
            {
                Ok(s) => s,
                Err(e) => {
                    crate::logging::event(
                        crate::machine::Level::Warn,
                        "control-error",
                        format!("taking over a control connection: {e}"),
                    );
                    continue;
                }
            };
            // Never refused: the table is empty, and they are at most a few.
            if let Ok((id, evicted)) = clients.admit(Instant::now()) {
                let commands = commands.clone();
                let clients = clients.clone();
                tokio::spawn(async move {
                    serve_adopted(stream, start, commands, &clients, id, evicted).await;
                    clients.leave(id);
                });
            }
        }
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    crate::logging::event(
                        crate::machine::Level::Warn,
                        "control-error",
                        format!("accept on control socket: {e}"),
                    );
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match stream.peer_cred() {
                Ok(cred) if peer_allowed(cred.uid()) => {}
                Ok(cred) => {
                    let why = format!("uid {} may not control this daemon", cred.uid());
                    tokio::spawn(notice(stream, why));
                    continue;
                }
                Err(_) => continue,
            }
            match clients.admit(Instant::now()) {
                Ok((id, evicted)) => {
                    let commands = commands.clone();
                    let clients = clients.clone();
                    tokio::spawn(async move {
                        serve_client(stream, commands, &clients, id, evicted).await;
                        clients.leave(id);
                    });
                }
                Err(why) => {
                    tokio::spawn(notice(stream, why));
                }
            }
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a peer with `uid` may control us: root, or the uid we run as.
fn peer_allowed(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Writes one `{"ok":false,"error":why}` line (if the socket takes it in time), then closes.
async fn notice(mut stream: UnixStream, why: String) {
    let _ = tokio::time::timeout(NOTICE_TIMEOUT, write_reply(&mut stream, &Reply::Done(Outcome::error(why)))).await;
}

/// Identifies one connection in [`Clients`].
type ClientId = u64;

/// The connected clients, for eviction.
#[derive(Debug, Clone, Default)]
struct Clients {
    inner: Arc<Mutex<ClientTable>>,
}

#[derive(Debug, Default)]
struct ClientTable {
    next_id: ClientId,
    slots: HashMap<ClientId, Slot>,
}

#[derive(Debug)]
struct Slot {
    /// When a request was last read or a reply last taken (or the connection was made).
    last_progress: Instant,
    /// Waiting for a reload or scale it asked for: not evicted.
    protected: bool,
    /// Fired to evict the connection.
    evict: Option<oneshot::Sender<()>>,
}

impl Clients {
    fn table(&self) -> std::sync::MutexGuard<'_, ClientTable> {
        // A panic elsewhere cannot leave the table inconsistent (every update is one
        // statement), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes room for a new client (evicting the idlest unprotected one if all slots are
    /// taken) and registers it; returns its id and the receiver its eviction fires. Err: the
    /// reason it is refused.
    fn admit(&self, now: Instant) -> Result<(ClientId, oneshot::Receiver<()>), String> {
        let mut t = self.table();
        if t.slots.len() >= MAX_CLIENTS {
            let victim =
                t.slots.iter().filter(|(_, s)| !s.protected).min_by_key(|(_, s)| s.last_progress).map(|(id, _)| *id);
            let Some(victim) = victim else {
                return Err(format!(
                    "too many control clients: all {MAX_CLIENTS} wait for a reload or scale; try again when it is done"
                ));
            };
            if let Some(mut slot) = t.slots.remove(&victim) {
                if let Some(evict) = slot.evict.take() {
                    let _ = evict.send(());
                }
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        let (tx, rx) = oneshot::channel();
        t.slots.insert(id, Slot { last_progress: now, protected: false, evict: Some(tx) });
        Ok((id, rx))
    }

    /// Records progress (a request read, a reply taken) and whether the client now waits
    /// for a reload or scale.
    fn progress(&self, id: ClientId, protected: bool) {
        if let Some(slot) = self.table().slots.get_mut(&id) {
            slot.last_progress = Instant::now();
            slot.protected = protected;
        }
    }

    fn leave(&self, id: ClientId) {
        self.table().slots.remove(&id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table().slots.len()
    }
}

/// One client connection.
struct Connection<'a> {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    clients: &'a Clients,
    id: ClientId,
    /// A reply line is partly written: no other line may follow it.
    mid_line: bool,
}

/// How a connection's conversation ended.
enum End {
    /// Closed by the client, by an error, or after a reply it would not take.
    Quiet,
    /// Closed for sending nothing within [`IDLE_TIMEOUT`]: tell it why.
    Idle,
}

async fn serve_client(
    stream: UnixStream,
    commands: mpsc::Sender<Command>,
    clients: &Clients,
    id: ClientId,
    evicted: oneshot::Receiver<()>,
) {
    serve_connection(stream, None, commands, clients, id, evicted).await
}

/// A connection taken over at `handover upgrade`: answered or its request handled first.
async fn serve_adopted(
    stream: UnixStream,
    start: AdoptedStart,
    commands: mpsc::Sender<Command>,
    clients: &Clients,
    id: ClientId,
    evicted: oneshot::Receiver<()>,
) {
    let first = match start {
        AdoptedStart::Request(r) => Some(r),
        AdoptedStart::Reply(reply) => {
            let mut stream = stream;
            let written = tokio::time::timeout(WRITE_TIMEOUT, write_reply(&mut stream, reply.as_ref())).await;
            if !matches!(written, Ok(Ok(()))) {
                return;
            }
            return serve_connection(stream, None, commands, clients, id, evicted).await;
        }
    };
    serve_connection(stream, first, commands, clients, id, evicted).await
}

async fn serve_connection(
    stream: UnixStream,
    first: Option<Request>,
    commands: mpsc::Sender<Command>,
    clients: &Clients,
    id: ClientId,
    mut evicted: oneshot::Receiver<()>,
) {
    let (read, write) = stream.into_split();
    let mut conn = Connection { reader: BufReader::new(read), writer: write, clients, id, mid_line: false };
    let why = tokio::select! {
        Ok(()) = &mut evicted => format!(
            "evicted: {MAX_CLIENTS} control clients were connected and this one had been idle the longest; reconnect"
        ),
        end = conn.converse(&commands, first) => match end {
            End::Quiet => return,
            End::Idle => format!("closed: no request within {}s", IDLE_TIMEOUT.as_secs()),
        },
    };
    if !conn.mid_line {
        let reply = Reply::Done(Outcome::error(why));
        let _ = tokio::time::timeout(NOTICE_TIMEOUT, write_reply(&mut conn.writer, &reply)).await;
    }
}

impl Connection<'_> {
    async fn converse(&mut self, commands: &mpsc::Sender<Command>, mut first: Option<Request>) -> End {
        loop {
            if let Some(request) = first.take() {
                if self.handle(commands, request).await.is_err() {
                    return End::Quiet;
                }
                continue;
            }
            let mut line = Vec::new();
            let limit = (MAX_REQUEST_BYTES + 1) as u64;
            let read =
                tokio::time::timeout(IDLE_TIMEOUT, (&mut self.reader).take(limit).read_until(b'\n', &mut line)).await;
            let n = match read {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return End::Quiet,
                Err(_) => return End::Idle,
            };
            if n == 0 {
                return End::Quiet; // client closed
            }
            let request = match decode_request(&line) {
                Decoded::Request(r) => r,
                Decoded::TooLong(why) => {
                    let _ = self.reply(&Reply::Done(Outcome::error(why))).await;
                    return End::Quiet; // cannot find the next line boundary reliably
                }
                Decoded::Malformed(why) => {
                    if self.reply(&Reply::Done(Outcome::error(why))).await.is_err() {
                        return End::Quiet;
                    }
                    continue;
                }
            };
            if self.handle(commands, request).await.is_err() {
                return End::Quiet;
            }
        }
    }

    /// Hands one request to the supervisor and writes its replies. Err: the connection is
    /// done (the client is gone or not reading, or the daemon dropped the request).
    async fn handle(&mut self, commands: &mpsc::Sender<Command>, request: Request) -> Result<(), ()> {
        let waits_for_change = matches!(request, Request::Reload {} | Request::Scale { .. } | Request::Upgrade {});
        self.clients.progress(self.id, waits_for_change);
        // Only these may be handed to a new binary by `handover upgrade` (see `Command`).
        let connection = match request {
            Request::Reload {} | Request::Scale { .. } | Request::Upgrade {} => self.duplicate(),
            _ => None,
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        if commands.send(Command { request, replies: tx, connection }).await.is_err() {
            let _ = self.reply(&Reply::Done(Outcome::error("the daemon is shutting down"))).await;
            return Err(());
        }
        loop {
            let Some(reply) = rx.recv().await else {
                let _ = self.reply(&Reply::Done(Outcome::error("the daemon dropped the request"))).await;
                return Err(());
            };
            let last = matches!(reply, Reply::Done(_));
            if last {
                // Answered: from now on only the client's reading holds the connection.
                self.clients.progress(self.id, false);
            }
            if self.reply(&reply).await.is_err() {
                return Err(()); // gone or not reading; the operation goes on without it
            }
            if last {
                return Ok(());
            }
        }
    }

    /// A second descriptor of this connection (close-on-exec), or None if none can be made.
    fn duplicate(&self) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        let stream: &UnixStream = self.writer.as_ref();
        stream.as_fd().try_clone_to_owned().ok()
    }

    /// Writes one reply line within [`WRITE_TIMEOUT`]; taking it counts as progress.
    async fn reply(&mut self, reply: &Reply) -> io::Result<()> {
        let mut line = serde_json::to_vec(reply).map_err(io::Error::other)?;
        line.push(b'\n');
        self.mid_line = true;
        match tokio::time::timeout(WRITE_TIMEOUT, self.writer.write_all(&line)).await {
            Ok(Ok(())) => {
                self.mid_line = false;
                let protected = matches!(reply, Reply::Progress { .. });
                self.clients.progress(self.id, protected);
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "the client does not read its replies")),
        }
    }
}

/// A request line, decoded.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// A valid request.
    Request(Request),
    /// Not a request (bad JSON, unknown command, extra fields): the reason.
    Malformed(String),
    /// Longer than [`MAX_REQUEST_BYTES`] without a newline: the reason. The connection is
    /// closed after the reply, since the next line boundary is unknown.
    TooLong(String),
}

/// Decodes one line as read by the server (at most `MAX_REQUEST_BYTES + 1` bytes, with its
/// newline if one was found within them). Never panics, whatever the bytes.
pub fn decode_request(line: &[u8]) -> Decoded {
    if !line.ends_with(b"\n") && line.len() > MAX_REQUEST_BYTES {
        return Decoded::TooLong(format!("request longer than {MAX_REQUEST_BYTES} bytes"));
    }
    match serde_json::from_slice(trim_newline(line)) {
        Ok(r) => Decoded::Request(r),
        Err(e) => Decoded::Malformed(format!("malformed request: {e}")),
    }
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

async fn write_reply<W: AsyncWriteExt + Unpin>(w: &mut W, reply: &Reply) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(server_path: &Path, payload: &[u8]) -> String {
        let mut s = UnixStream::connect(server_path).await.expect("connect");
        s.write_all(payload).await.expect("write");
        let mut reader = BufReader::new(s);
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
            .await
            .expect("reply in time")
            .expect("read");
        line
    }

    #[tokio::test]
    async fn bad_requests_get_errors_and_good_ones_reach_the_supervisor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/control.sock");
        let server = ControlServer::bind(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(server.serve(tx));
        assert!(roundtrip(&path, b"garbage\n").await.contains("malformed request"));
        assert!(roundtrip(&path, b"{\"cmd\":\"nope\"}\n").await.contains("malformed request"));
        let huge = vec![b'x'; MAX_REQUEST_BYTES + 100];
        assert!(roundtrip(&path, &huge).await.contains("longer than"));
        assert!(rx.try_recv().is_err(), "nothing reached the supervisor");
        let answer = tokio::spawn(async move {
            let cmd = rx.recv().await.expect("command");
            assert_eq!(cmd.request, Request::Status {});
            cmd.replies.send(Reply::Done(Outcome::ok("fine"))).expect("reply");
        });
        let line = roundtrip(&path, b"{\"cmd\":\"status\"}\n").await;
        assert_eq!(line.trim(), r#"{"ok":true,"message":"fine"}"#);
        answer.await.expect("supervisor side");
    }

    #[test]
    fn a_newcomer_evicts_the_idlest_unprotected_client_and_is_refused_only_when_all_wait() {
        let clients = Clients::default();
        let t0 = Instant::now();
        let mut receivers = Vec::new();
        for i in 0..MAX_CLIENTS {
            let (id, rx) = clients.admit(t0 + Duration::from_millis(i as u64)).expect("room");
            receivers.push((id, rx));
        }
        // The oldest one waits for a reload: the second oldest goes instead.
        clients.progress(receivers[0].0, true);
        let (_, _newcomer) = clients.admit(Instant::now()).expect("evicts");
        assert_eq!(clients.len(), MAX_CLIENTS);
        assert!(receivers[0].1.try_recv().is_err(), "a client waiting for a reload stays");
        assert!(receivers[1].1.try_recv().is_ok(), "the idlest one is evicted");
        for (id, _) in &receivers[2..] {
            clients.progress(*id, true);
        }
        // All but the newcomer are protected: the next newcomer evicts the previous one.
        assert!(clients.admit(Instant::now()).is_ok());
        let mut t = clients.table();
        for slot in t.slots.values_mut() {
            slot.protected = true;
        }
        drop(t);
        let why = clients.admit(Instant::now()).expect_err("everyone waits for a reload");
        assert!(why.contains("too many control clients"), "{why}");
    }

    #[tokio::test]
    async fn an_evicted_idle_client_is_told_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let server = ControlServer::bind(&path).expect("bind");
        let (tx, _rx) = mpsc::channel(4);
        tokio::spawn(server.serve(tx));
        let mut idle = Vec::new();
        for _ in 0..MAX_CLIENTS + 1 {
            idle.push(UnixStream::connect(&path).await.expect("connect"));
        }
        let mut reader = BufReader::new(idle.remove(0));
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
            .await
            .expect("the reason in time")
            .expect("read");
        assert!(line.contains("\"ok\":false") && line.contains("evicted"), "{line}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn request() -> impl Strategy<Value = Request> {
            prop_oneof![
                Just(Request::Status {}),
                Just(Request::Reload {}),
                Just(Request::Upgrade {}),
                any::<usize>().prop_map(|count| Request::Scale { count }),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            /// A line as the server reads it (at most MAX_REQUEST_BYTES + 1 bytes): never a
            /// panic; an oversized one is refused with a reason; anything else is a request
            /// or a reason why not.
            #[test]
            fn arbitrary_lines_never_panic(mut line in proptest::collection::vec(any::<u8>(), 0..MAX_REQUEST_BYTES + 2)) {
                line.truncate(MAX_REQUEST_BYTES + 1);
                match decode_request(&line) {
                    Decoded::TooLong(why) => {
                        prop_assert!(line.len() > MAX_REQUEST_BYTES && !line.ends_with(b"\n"));
                        prop_assert!(why.contains("longer than"));
                    }
                    Decoded::Malformed(why) => prop_assert!(why.starts_with("malformed request")),
                    Decoded::Request(_) => {}
                }
            }

            /// Oversized input of any content is refused, never parsed.
            #[test]
            fn oversized_lines_are_refused(fill in any::<u8>().prop_filter("no newline", |b| *b != b'\n')) {
                let line = vec![fill; MAX_REQUEST_BYTES + 1];
                prop_assert!(matches!(decode_request(&line), Decoded::TooLong(_)));
            }

            /// Every request the client can send decodes to itself, with or without CR.
            #[test]
            fn every_request_round_trips(req in request(), crlf in any::<bool>()) {
                let mut line = serde_json::to_vec(&req).expect("serialize");
                line.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
                prop_assert_eq!(decode_request(&line), Decoded::Request(req));
            }
        }

        #[tokio::test]
        async fn an_oversized_line_gets_an_error_reply_from_the_server() {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("control.sock");
            let server = ControlServer::bind(&path).expect("bind");
            let (tx, _rx) = mpsc::channel(4);
            tokio::spawn(server.serve(tx));
            for len in [MAX_REQUEST_BYTES + 1, 3 * MAX_REQUEST_BYTES] {
                let line = roundtrip(&path, &vec![b'{'; len]).await;
                let reply: Reply = serde_json::from_str(line.trim()).expect("a JSON reply");
                assert_oversize_refused(&reply);
            }
        }

        fn assert_oversize_refused(reply: &Reply) {
            match reply {
                Reply::Done(o) => {
                    assert!(!o.ok);
                    assert!(o.error.as_deref().unwrap_or("").contains("longer than"), "{o:?}");
                }
                other => panic!("not a final reply: {other:?}"),
            }
        }
    }

    #[test]
    fn a_live_control_socket_is_not_stolen() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("control.sock");
            let _first = ControlServer::bind(&path).expect("bind");
            let err = ControlServer::bind(&path).expect_err("second bind must fail");
            assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        });
    }
}
