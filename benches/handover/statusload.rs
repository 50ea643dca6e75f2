//! A load generator that never retries and keeps every answer's status (scenario 10).
//!
//! `handover::demo::loadgen` counts a non-2xx answer as a failure and keeps only the first
//! 100 failures' reasons, and it retries a request that a closing keep-alive connection never
//! answered (RFC 9112 §9.3.1); wrk never retries but counts answers only as "non-2xx", with no
//! time. Scenario 10 needs, for every request, when it completed, its status and which
//! release answered it, so that it can say when the last 500 came and how many came after a
//! deploy command returned. So: `clients` blocking loopback clients, HTTP/1.1 keep-alive
//! (a connection is reused until the server closes it or says `Connection: close`), one
//! `GET /` at a time each; a request that fails at the connection level (refused, reset,
//! closed before or during the answer, timed out) is recorded as a connection error and never
//! retried; the client pauses 2 ms after one, so a dead server does not make it spin.
//!
//! Bounded: the clients stop at [`StatusLoad::stop`] or after `max` by themselves; loopback
//! targets only.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Bound on a connect and on each request (write to complete answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a connection error.
const FAILURE_PAUSE: Duration = Duration::from_millis(2);
/// Largest answer head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// One answered request.
#[derive(Debug, Clone)]
pub struct Answer {
    /// When it was sent, since the load started.
    pub started: Duration,
    /// When its answer was complete.
    pub at: Duration,
    /// Its HTTP status.
    pub status: u16,
    /// The `gen=` token of its body ("?" without one): the release that answered.
    pub generation: String,
}

/// One request that got no answer.
#[derive(Debug, Clone)]
pub struct ConnError {
    /// When it was sent, since the load started.
    pub started: Duration,
    /// When it failed.
    pub at: Duration,
    /// What happened.
    pub reason: String,
}

/// Everything the clients saw, each list in time order.
#[derive(Debug, Default)]
pub struct StatusReport {
    /// Answers, by completion time.
    pub answers: Vec<Answer>,
    /// Connection errors, by time.
    pub errors: Vec<ConnError>,
}

/// The running load.
pub struct StatusLoad {
    started: Instant,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    clients: Vec<JoinHandle<StatusReport>>,
}

/// Starts `clients` clients against `addr` (loopback only) for at most `max`.
pub fn start(addr: SocketAddr, clients: usize, max: Duration) -> Result<StatusLoad> {
    if !addr.ip().is_loopback() {
        bail!("refusing to send load to {addr}: loopback only");
    }
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(clients);
    for i in 0..clients {
        let (stop, answered) = (stop.clone(), answered.clone());
        handles.push(
            std::thread::Builder::new()
                .name(format!("statusload-{i}"))
                .spawn(move || client(addr, started, max, &stop, &answered))?,
        );
    }
    Ok(StatusLoad { started, stop, answered, clients: handles })
}

impl StatusLoad {
    /// When the load started: every time in the report counts from here.
    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// Answers so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits (bounded) until some request was answered.
    pub fn wait_flowing(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.answered() == 0 {
            if Instant::now() >= deadline {
                bail!("no request answered within {timeout:?}");
            }
            std::thread::sleep(crate::harness::POLL);
        }
        Ok(())
    }

    /// Stops the clients (each finishes the request it is in, at most [`REQUEST_TIMEOUT`])
    /// and merges what they saw.
    pub fn stop(self) -> StatusReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = StatusReport::default();
        for c in self.clients {
            if let Ok(r) = c.join() {
                all.answers.extend(r.answers);
                all.errors.extend(r.errors);
            }
        }
        all.answers.sort_by_key(|a| a.at);
        all.errors.sort_by_key(|e| e.at);
        all
    }
}

fn client(addr: SocketAddr, t0: Instant, max: Duration, stop: &AtomicBool, answered: &AtomicU64) -> StatusReport {
    let mut report = StatusReport::default();
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    while !stop.load(Ordering::Relaxed) && t0.elapsed() < max {
        let started = t0.elapsed();
        let stream = match conn.take() {
            Some(s) => s,
            None => match TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    buf.clear();
                    s
                }
                Err(e) => {
                    report.errors.push(ConnError { started, at: t0.elapsed(), reason: format!("connect: {e}") });
                    std::thread::sleep(FAILURE_PAUSE);
                    continue;
                }
            },
        };
        let mut stream = stream;
        match exchange(&mut stream, &mut buf) {
            Ok((status, close, generation)) => {
                report.answers.push(Answer { started, at: t0.elapsed(), status, generation });
                answered.fetch_add(1, Ordering::Relaxed);
                if !close {
                    conn = Some(stream);
                }
            }
            Err(reason) => {
                report.errors.push(ConnError { started, at: t0.elapsed(), reason });
                std::thread::sleep(FAILURE_PAUSE);
            }
        }
    }
    report
}

/// Sends `GET /` and reads one whole answer: its status, whether the connection must close
/// after it, and its body's `gen=` token.
fn exchange(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, bool, String), String> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let _ = s.set_write_timeout(Some(REQUEST_TIMEOUT));
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut chunk = [0u8; 16 * 1024];
    let mut head: Option<(usize, u16, Option<usize>, bool)> = None;
    loop {
        if head.is_none() {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                head = Some(parse_head(&buf[..end]).map(|(st, len, close)| (end + 4, st, len, close))?);
            } else if buf.len() > MAX_HEAD {
                return Err("answer head too large".into());
            }
        }
        if let Some((head_len, status, Some(len), close)) = head {
            if buf.len() >= head_len + len {
                let generation = gen_token(&buf[head_len..head_len + len]);
                buf.drain(..head_len + len);
                return Ok((status, close, generation));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("read timeout".into());
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut chunk) {
            Ok(0) => {
                // Without Content-Length the body ends at EOF.
                if let Some((head_len, status, None, _)) = head {
                    let generation = gen_token(&buf[head_len..]);
                    buf.clear();
                    return Ok((status, true, generation));
                }
                let before = head.is_none() && buf.is_empty();
                return Err(if before { "closed before the answer" } else { "closed during the answer" }.into());
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err("read timeout".into())
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

/// Status, Content-Length and whether the connection closes after the answer.
fn parse_head(head: &[u8]) -> Result<(u16, Option<usize>, bool), String> {
    let text = std::str::from_utf8(head).map_err(|_| "answer head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    let status: u16 =
        parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut close = version != "HTTP/1.1";
    let mut len = None;
    for l in lines {
        let Some((name, value)) = l.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            len = Some(value.parse().map_err(|_| format!("bad Content-Length {value:?}"))?);
        } else if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                close = true;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                close = false;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked answers are not read here".into());
        }
    }
    Ok((status, len, close))
}

/// The `gen=X` token of a body, "?" if none.
fn gen_token(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.split_whitespace().find_map(|w| w.strip_prefix("gen=")).unwrap_or("?").to_owned()
}
