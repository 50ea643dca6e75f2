//! The client side of the control socket, used by `handover reload`, `status`, `scale` and
//! `upgrade`. Blocking: the CLI has nothing else to do while it waits.
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::proto::{Outcome, Progress, Reply, Request};

/// How long a client waits for the daemon's first word (connecting included) when no other
/// limit is given: `handover status` and `scale` by default, and the liveness probe before a
/// reload or an upgrade. The daemon answers in milliseconds; one that says nothing for this
/// long is stopped (SIGSTOP, a debugger) or wedged.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a connect is retried while the daemon's listen backlog is full.
const CONNECT_RETRY: Duration = Duration::from_millis(10);

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
    /// Something listens, but it did not answer within [`Limits::answer`] (exit code 3):
    /// the daemon is stopped or wedged.
    #[error(
        "the handover daemon at {} did not answer within {}: is it stopped (SIGSTOP) or wedged?",
        path.display(),
        crate::text::human(*waited)
    )]
    Unresponsive {
        /// The control socket path.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
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

/// How long a client waits, and for what.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For connecting and for the daemon's first word (the answer to the probe, else the
    /// first line of the reply); past it the daemon is taken as stopped or wedged:
    /// [`ClientError::Unresponsive`].
    pub answer: Duration,
    /// For the final reply, from the start; past it [`ClientError::Timeout`]. None: no limit
    /// once the daemon has answered the probe (a reload is bounded by the daemon's own
    /// boot_timeout and min_healthy_time).
    pub total: Option<Duration>,
    /// Send a status request first and require its answer within `answer`, before a
    /// request whose reply may legitimately take long (reload, upgrade): a wedged daemon is
    /// told from a slow operation before anything is asked of it.
    pub probe: bool,
}

/// Sends `request` and waits for its final reply, passing progress lines to `on_progress`.
/// With `wait == false`, returns as soon as the request was written. `timeout` bounds the
/// whole wait (and, without it, [`ANSWER_TIMEOUT`] the first word): see [`call_with`].
pub fn call(
    path: &Path,
    request: &Request,
    timeout: Option<Duration>,
    wait: bool,
    on_progress: impl FnMut(Progress),
) -> Result<Option<Outcome>, ClientError> {
    let limits = Limits { answer: timeout.unwrap_or(ANSWER_TIMEOUT), total: timeout, probe: false };
    call_with(path, request, limits, wait, on_progress)
}

/// [`call`] with explicit [`Limits`]. No wait is unbounded unless `limits.total` is None,
/// and then only once the daemon has shown it answers.
///
/// A status or scale whose connection the daemon closed without a word is sent once more:
/// `handover upgrade` replaces the daemon's process image, and a connection the old image
/// had accepted but not yet read a request from ends with it (connections whose request it
/// had read are handed over and answered by the new image). Both requests are safe to
/// repeat (a scale names the count, not a change); a reload or an upgrade is not repeated.
pub fn call_with(
    path: &Path,
    request: &Request,
    limits: Limits,
    wait: bool,
    mut on_progress: impl FnMut(Progress),
) -> Result<Option<Outcome>, ClientError> {
    let start = Instant::now();
    let repeatable = matches!(request, Request::Status {} | Request::Scale { .. });
    match attempt(path, request, limits, wait, &mut on_progress, start) {
        Err(Unanswered(_)) if repeatable => {
            attempt(path, request, limits, wait, &mut on_progress, start).map_err(Failed::into_error)
        }
        result => result.map_err(Failed::into_error),
    }
}

/// How an attempt failed: before the daemon said anything about the request (it may be
/// repeated), or after.
enum Failed {
    Unanswered(ClientError),
    Answered(ClientError),
}
use Failed::{Answered, Unanswered};

impl Failed {
    fn into_error(self) -> ClientError {
        match self {
            Unanswered(e) | Answered(e) => e,
        }
    }
}

/// One connection's worth of [`call_with`]: deadlines count from `start`.
fn attempt(
    path: &Path,
    request: &Request,
    limits: Limits,
    wait: bool,
    on_progress: &mut impl FnMut(Progress),
    start: Instant,
) -> Result<Option<Outcome>, Failed> {
    // A deadline too far away to represent is no deadline (a `--timeout` of 10^19 s).
    let answer_by = start.checked_add(limits.answer);
    let total_by = limits.total.and_then(|t| start.checked_add(t));
    let unresponsive = || ClientError::Unresponsive { path: path.to_path_buf(), waited: limits.answer };
    let stream = connect_by(path, answer_by).map_err(|e| match e {
        ConnectError::Failed(source) => Answered(ClientError::Unreachable { path: path.to_path_buf(), source }),
        ConnectError::TimedOut => Answered(unresponsive()),
    })?;
    let protocol = |why: String| ClientError::Protocol { path: path.to_path_buf(), why };
    let mut reader = BufReader::new(stream);
    if limits.probe {
        if let Err(write_error) = send(reader.get_mut(), &Request::Status {}) {
            return match read_refusal(reader.get_ref()) {
                Some(outcome) => Ok(Some(outcome)),
                None => Err(Answered(protocol(format!("write: {write_error}")))),
            };
        }
        match read_reply(&mut reader, answer_by) {
            // Refused (too many clients, say): that is the answer to the request too.
            Ok(Some(Reply::Done(outcome))) if !outcome.ok => return Ok(Some(outcome)),
            Ok(Some(Reply::Done(_))) => {}
            Ok(Some(Reply::Progress { .. })) => {
                return Err(Answered(protocol("a progress line answered a status".into())))
            }
            Ok(None) => return Err(Answered(unresponsive())),
            Err(why) => return Err(Answered(protocol(why))),
        }
    }
    if let Err(write_error) = send(reader.get_mut(), request) {
        // The daemon may have refused us with a reason and closed before reading: the
        // reason is still in our receive buffer, and says more than "Broken pipe".
        return match read_refusal(reader.get_ref()) {
            Some(outcome) => Ok(Some(outcome)),
            None => Err(Unanswered(protocol(format!("write: {write_error}")))),
        };
    }
    if !wait {
        return Ok(None);
    }
    let mut answered = limits.probe;
    loop {
        // Until the daemon has said something, its first word is due by `answer_by`.
        let first_word_by = if answered { None } else { answer_by };
        let by = match (first_word_by, total_by) {
            (Some(a), Some(t)) => Some(a.min(t)),
            (a, t) => a.or(t),
        };
        match read_reply(&mut reader, by) {
            Ok(Some(Reply::Progress { progress })) => on_progress(progress),
            Ok(Some(Reply::Done(outcome))) => return Ok(Some(outcome)),
            // The first word was due first: the daemon does not answer at all.
            Ok(None) if !answered && total_by.is_none_or(|t| Some(t) > answer_by) => {
                return Err(Answered(unresponsive()))
            }
            Ok(None) => return Err(Answered(ClientError::Timeout(limits.total.unwrap_or(limits.answer)))),
            // Closed without a word about the request (see `call_with`).
            Err(why) if !answered => return Err(Unanswered(protocol(why))),
            Err(why) => return Err(Answered(protocol(why))),
        }
        answered = true;
    }
}

/// Writes one request line.
fn send(stream: &mut UnixStream, request: &Request) -> io::Result<()> {
    let mut line = serde_json::to_vec(request).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// The next reply line, read by `by`; Ok(None) when `by` passed first.
fn read_reply(reader: &mut BufReader<UnixStream>, by: Option<Instant>) -> Result<Option<Reply>, String> {
    let mut buf = String::new();
    loop {
        if let Some(d) = by {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            reader.get_ref().set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        } else {
            reader.get_ref().set_read_timeout(None).map_err(|e| e.to_string())?;
        }
        // read_line keeps what it read before a timeout in `buf`: a line that arrives in
        // pieces is completed by the next round.
        match reader.read_line(&mut buf) {
            Ok(0) => return Err("connection closed before the final reply".into()),
            Ok(_) if buf.ends_with('\n') => break,
            Ok(_) => return Err("connection closed in the middle of a reply".into()),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    serde_json::from_str::<Reply>(buf.trim_end())
        .map(Some)
        .map_err(|e| format!("unreadable reply {:?}: {e}", buf.trim_end()))
}

enum ConnectError {
    Failed(io::Error),
    TimedOut,
}

/// Connects to `path`, giving up at `by`. A stopped daemon's listen backlog fills up, and
/// then a blocking connect(2) waits for ever: the socket is non-blocking while it connects,
/// and EAGAIN (backlog full) is retried until the deadline.
fn connect_by(path: &Path, by: Option<Instant>) -> Result<UnixStream, ConnectError> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let addr = UnixAddr::new(path).map_err(|e| ConnectError::Failed(e.into()))?;
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| ConnectError::Failed(e.into()))?;
    loop {
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => {
                if by.is_some_and(|d| Instant::now() >= d) {
                    return Err(ConnectError::TimedOut);
                }
                std::thread::sleep(CONNECT_RETRY);
            }
            Err(e) => return Err(ConnectError::Failed(e.into())),
        }
    }
    let stream = UnixStream::from(fd);
    stream.set_nonblocking(false).map_err(ConnectError::Failed)?;
    Ok(stream)
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
