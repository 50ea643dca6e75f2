//! The client side of the control socket, used by `handover reload`, `status`, `scale` and
//! `upgrade`. Blocking: the CLI has nothing else to do while it waits.
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::proto::{Outcome, Progress, Reply, Request};

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the socket (exit code 3).
    #[error("cannot reach the handover daemon at {}: {source}", path.display())]
    Unreachable {
        /// The control socket path.
        path: PathBuf,
        /// The connect error.
        source: io::Error,
    },
    /// The daemon closed the connection or sent something unreadable.
    #[error("the daemon at {} ended the conversation: {why}", path.display())]
    Protocol {
        /// The control socket path.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// No final answer within the timeout.
    #[error("no answer within {0:?}; the operation may still be running (see handover status)")]
    Timeout(Duration),
}

/// Sends `request` and waits for its final reply, passing progress lines to `on_progress`.
/// With `wait == false`, returns as soon as the request was written.
pub fn call(
    path: &Path,
    request: &Request,
    timeout: Option<Duration>,
    wait: bool,
    mut on_progress: impl FnMut(Progress),
) -> Result<Option<Outcome>, ClientError> {
    let mut stream =
        UnixStream::connect(path).map_err(|source| ClientError::Unreachable { path: path.to_path_buf(), source })?;
    let protocol = |why: String| ClientError::Protocol { path: path.to_path_buf(), why };
    let mut line = serde_json::to_vec(request).map_err(|e| protocol(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| protocol(format!("write: {e}")))?;
    if !wait {
        return Ok(None);
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut reader = BufReader::new(stream);
    loop {
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout(timeout.unwrap_or_default()));
            }
            reader.get_ref().set_read_timeout(Some(left)).map_err(|e| protocol(e.to_string()))?;
        }
        let mut buf = String::new();
        match reader.read_line(&mut buf) {
            Ok(0) => return Err(protocol("connection closed before the final reply".into())),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ClientError::Timeout(timeout.unwrap_or_default()))
            }
            Err(e) => return Err(protocol(format!("read: {e}"))),
        }
        match serde_json::from_str::<Reply>(buf.trim_end()) {
            Ok(Reply::Progress { progress }) => on_progress(progress),
            Ok(Reply::Done(outcome)) => return Ok(Some(outcome)),
            Err(e) => return Err(protocol(format!("unreadable reply {:?}: {e}", buf.trim_end()))),
        }
    }
}
