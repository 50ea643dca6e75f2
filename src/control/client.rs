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
    if let Err(write_error) = stream.write_all(&line) {
        // The daemon may have refused us with a reason and closed before reading: the
        // reason is still in our receive buffer, and says more than "Broken pipe".
        return match read_refusal(&stream) {
            Some(outcome) => Ok(Some(outcome)),
            None => Err(protocol(format!("write: {write_error}"))),
        };
    }
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

/// The final reply already waiting on a connection whose write failed, if any.
fn read_refusal(stream: &UnixStream) -> Option<Outcome> {
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    match serde_json::from_str::<Reply>(line.trim_end()) {
        Ok(Reply::Done(outcome)) => Some(outcome),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_reported_with_its_reason_not_as_a_broken_pipe() {
        // Whether the request is written before the server closes (then read as the reply)
        // or after (EPIPE, then the reason is read from the receive buffer), the caller gets
        // the reason.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.write_all(b"{\"ok\":false,\"error\":\"too many control clients\"}\n").expect("write");
            // Closed without reading the request.
        });
        let request = Request::Scale { count: 1 };
        let outcome = call(&path, &request, Some(Duration::from_secs(5)), true, |_| {}).expect("an answer");
        server.join().expect("server");
        assert_eq!(outcome.expect("outcome").error.as_deref(), Some("too many control clients"));
    }
}
