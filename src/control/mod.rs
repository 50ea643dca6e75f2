//! The control socket (SPEC §7): a unix stream socket, mode 0600, that `handover reload`,
//! `status` and `scale` talk to.
//!
//! Each connection may send several requests, one JSON object per line; each gets one or
//! more reply lines (a reload streams progress before its result). Peers are checked with
//! SO_PEERCRED: root or our own uid only. Malformed or oversized requests get
//! `{"ok":false,"error":…}` and change nothing; a client that disconnects mid-reload does not
//! disturb the reload.
pub mod client;
pub mod proto;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};

use proto::{Outcome, Reply, Request, MAX_REQUEST_BYTES};

/// How many clients may be connected at once; more are told to retry.
pub const MAX_CLIENTS: usize = 64;
/// How long a client may take to send a request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A request handed to the supervisor, with the channel for its replies. The request is
/// answered when the supervisor sends a [`Reply::Done`]; dropping the sender ends the
/// connection's wait.
#[derive(Debug)]
pub struct Command {
    /// What the client asked.
    pub request: Request,
    /// Where replies go (progress lines, then the final one).
    pub replies: mpsc::UnboundedSender<Reply>,
}

/// The bound control socket; removed from the file system when dropped.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `path` with mode 0600, creating its directory (0755) if missing and replacing
    /// a stale socket file. Fails if another daemon listens there.
    pub fn bind(path: &Path) -> io::Result<ControlServer> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir)?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        crate::sockets::remove_stale_unix_socket(path)?;
        // Bind with a restrictive umask-independent mode: bind, then chmod before anyone
        // could have been served (the listener is not polled until `serve`).
        let std_listener = std::os::unix::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        std_listener.set_nonblocking(true)?;
        Ok(ControlServer { listener: UnixListener::from_std(std_listener)?, path: path.to_path_buf() })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts clients forever, forwarding their requests to `commands`.
    pub async fn serve(self, commands: mpsc::Sender<Command>) {
        let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    crate::logging::event(
                        crate::supervisor::machine::Level::Warn,
                        "control-error",
                        format!("accept on control socket: {e}"),
                    );
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let commands = commands.clone();
            let permit = slots.clone().try_acquire_owned();
            tokio::spawn(async move {
                match permit {
                    Ok(_permit) => serve_client(stream, commands).await,
                    Err(_) => {
                        let _ = write_reply(
                            &mut { stream },
                            &Reply::Done(Outcome::error("too many control clients; try again")),
                        )
                        .await;
                    }
                }
            });
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

async fn serve_client(stream: UnixStream, commands: mpsc::Sender<Command>) {
    match stream.peer_cred() {
        Ok(cred) if peer_allowed(cred.uid()) => {}
        Ok(cred) => {
            let mut stream = stream;
            let why = format!("uid {} may not control this daemon", cred.uid());
            let _ = write_reply(&mut stream, &Reply::Done(Outcome::error(why))).await;
            return;
        }
        Err(_) => return,
    }
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let limit = (MAX_REQUEST_BYTES + 1) as u64;
        let read = tokio::time::timeout(REQUEST_TIMEOUT, (&mut reader).take(limit).read_until(b'\n', &mut line)).await;
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return, // I/O error or idle too long
        };
        if n == 0 {
            return; // client closed
        }
        if !line.ends_with(b"\n") && line.len() > MAX_REQUEST_BYTES {
            let why = format!("request longer than {MAX_REQUEST_BYTES} bytes");
            let _ = write_reply(&mut write, &Reply::Done(Outcome::error(why))).await;
            return; // cannot find the next line boundary reliably
        }
        let request: Request = match serde_json::from_slice(trim_newline(&line)) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("malformed request: {e}");
                if write_reply(&mut write, &Reply::Done(Outcome::error(why))).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        if commands.send(Command { request, replies: tx }).await.is_err() {
            let _ = write_reply(&mut write, &Reply::Done(Outcome::error("the daemon is shutting down"))).await;
            return;
        }
        loop {
            let Some(reply) = rx.recv().await else {
                let _ = write_reply(&mut write, &Reply::Done(Outcome::error("the daemon dropped the request"))).await;
                return;
            };
            let last = matches!(reply, Reply::Done(_));
            if write_reply(&mut write, &reply).await.is_err() {
                return; // the client went away; the operation goes on without it
            }
            if last {
                break;
            }
        }
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
