//! A bounded HTTP/1.1 load generator for the tests, `handover demo` and the benchmarks.
//!
//! It exists to *measure* the guarantees of SPEC §8 (no failed request, no accept gap during
//! reloads): every request is accounted for as ok, failed (with a reason) or retried, and the
//! completion times are kept so gaps and latency percentiles can be computed afterwards.
//!
//! Deliberately simple and self-limiting: blocking sockets on plain std threads (one
//! connection per client), loopback targets only, and a hard `max_duration` after which the
//! clients stop by themselves, so a forgotten generator cannot outlive its test.
//!
//! Retry rule: a keep-alive connection that the server closes before any byte of the response
//! arrived (the classic race with an idle-connection close, e.g. a draining worker) is retried
//! once on a new connection, as RFC 9112 §9.3.1 allows for idempotent requests; it counts as
//! `retried`, not failed. Everything else that goes wrong is a failure.
//!
//! # References
//! RFC 9112 §9.3 (persistence), §9.3.1 (retrying requests), §6.3 (message body length).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// At most this many failures are kept (the first ones) in a report; the count is exact.
const MAX_KEPT_FAILURES: usize = 100;
/// Pause of a client after a failure, so a dead target (connection refused) does not turn
/// the clients into busy loops filling the report with millions of identical failures.
const FAILURE_PAUSE: Duration = Duration::from_millis(2);
/// Largest response head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Read chunk size.
const READ_CHUNK: usize = 16 * 1024;

/// Where the load goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A TCP address; must be loopback (127.0.0.0/8 or ::1).
    Tcp(SocketAddr),
    /// A unix stream socket path.
    Unix(PathBuf),
}

impl Target {
    /// Refuses anything but loopback: the generator is a test tool and must never be pointed
    /// at someone else's server by mistake.
    fn check_loopback(&self) -> Result<(), LoadError> {
        match self {
            Target::Tcp(addr) if !addr.ip().is_loopback() => Err(LoadError::NotLoopback(*addr)),
            _ => Ok(()),
        }
    }
}

impl FromStr for Target {
    type Err = LoadError;

    /// Parses `127.0.0.1:8080`, `[::1]:8080`, or `unix:/path/to.sock`. Loopback is checked
    /// by [`start`], not here.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(LoadError::InvalidTarget(s.to_owned()));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        s.parse().map(Target::Tcp).map_err(|_| LoadError::InvalidTarget(s.to_owned()))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(addr) => write!(f, "{addr}"),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// What load to generate.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Where to send it.
    pub target: Target,
    /// Request target of every `GET` (origin-form, e.g. `/` or `/sleep?ms=10`).
    pub path: String,
    /// Number of concurrent clients (threads), each with at most one connection.
    pub clients: usize,
    /// Reuse connections (HTTP/1.1 keep-alive); otherwise every request sends
    /// `Connection: close` and uses a new connection.
    pub keep_alive: bool,
    /// Bound on each connect and on each request (write to complete response).
    pub request_timeout: Duration,
    /// Hard bound on the run: clients start no request after this, so the generator stops by
    /// itself at most about one `request_timeout` later.
    pub max_duration: Duration,
    /// Stop after this many requests in total (all clients together), if set.
    pub max_requests: Option<u64>,
}

impl LoadSpec {
    /// `GET /` with 4 clients, a new connection per request, 5 s request timeout, 60 s at most.
    pub fn new(target: Target) -> Self {
        LoadSpec {
            target,
            path: "/".to_owned(),
            clients: 4,
            keep_alive: false,
            request_timeout: Duration::from_secs(5),
            max_duration: Duration::from_secs(60),
            max_requests: None,
        }
    }
}

/// Why a load run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The target is a TCP address outside 127.0.0.0/8 and ::1.
    #[error(
        "refusing to send load to {0}: only loopback addresses (127.0.0.0/8, ::1) and unix \
         sockets are allowed"
    )]
    NotLoopback(SocketAddr),
    /// A target string that is neither `HOST:PORT` nor `unix:PATH`.
    #[error("invalid load target {0:?}: expected IP:PORT or unix:PATH")]
    InvalidTarget(String),
    /// The request path would not make a valid request line.
    #[error("invalid request path {0:?}: it must start with '/' and contain no whitespace")]
    InvalidPath(String),
    /// `clients` is 0.
    #[error("a load run needs at least one client")]
    NoClients,
    /// A client thread could not be started.
    #[error("cannot start load client thread {index}: {source}")]
    Spawn {
        /// Index of the client that failed to start.
        index: usize,
        /// The error from the OS.
        source: io::Error,
    },
}

/// One failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// When it failed, since the start of the run.
    pub at: Duration,
    /// What went wrong (connect refused, read timeout, status 503, ...).
    pub reason: String,
}

/// Latency of one successful request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// When the request started (before connecting, if it had to), since the start of the run.
    pub started: Duration,
    /// Start to complete response, retries and reconnects included.
    pub latency: Duration,
}

/// The outcome of a load run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// Requests started; at the end `sent == ok + failed`.
    pub sent: u64,
    /// Requests answered completely with a 2xx status.
    pub ok: u64,
    /// Requests that failed (see `failures` for the first reasons).
    pub failed: u64,
    /// Requests retried once on a new connection after the server closed the kept-alive one
    /// before answering; they are also counted in `ok` or `failed` by their final outcome.
    pub retried: u64,
    /// The first 100 failures, in time order (`failed` has the exact count).
    pub failures: Vec<Failure>,
    /// From the start until the last client stopped.
    pub duration: Duration,
    /// Completion time (since the start) of every successful request, sorted.
    pub completions: Vec<Duration>,
    /// Every successful request's latency, sorted by start time.
    pub latencies: Vec<Latency>,
    /// Successful responses counted by the `gen=X` token of their body ("?" without one): which
    /// worker generation answered.
    pub bodies_by_gen: BTreeMap<String, u64>,
}

impl LoadReport {
    /// Longest interval without a completion, counting the start of the run and its end as
    /// edges: the "accept gap" a reload must not open.
    pub fn longest_gap(&self) -> Duration {
        self.longest_gap_within(Duration::ZERO, self.duration)
    }

    /// Like [`LoadReport::longest_gap`], within the window `[from, to]`: the window edges count
    /// as edges. Zero for an empty window.
    pub fn longest_gap_within(&self, from: Duration, to: Duration) -> Duration {
        if to <= from {
            return Duration::ZERO;
        }
        // `completions` is sorted: find the ones inside the window.
        let first = self.completions.partition_point(|&c| c < from);
        let last = self.completions.partition_point(|&c| c <= to);
        let mut prev = from;
        let mut longest = Duration::ZERO;
        for &c in &self.completions[first..last] {
            longest = longest.max(c - prev);
            prev = c;
        }
        longest.max(to - prev)
    }

    /// The `p`-th percentile (0-100, nearest rank) of all successful latencies; zero if there
    /// are none.
    pub fn percentile(&self, p: f64) -> Duration {
        percentile_of(self.latencies.iter().map(|l| l.latency).collect(), p)
    }

    /// The `p`-th percentile of the latencies of requests that *started* in `[from, to)`.
    pub fn latency_within(&self, from: Duration, to: Duration, p: f64) -> Duration {
        percentile_of(
            self.latencies.iter().filter(|l| l.started >= from && l.started < to).map(|l| l.latency).collect(),
            p,
        )
    }

    /// Number of completions in each consecutive `bucket` of the run (the last bucket may be
    /// partial). Empty for a zero bucket.
    pub fn timeline(&self, bucket: Duration) -> Vec<u64> {
        if bucket.is_zero() {
            return Vec::new();
        }
        let buckets = (self.duration.as_nanos().div_ceil(bucket.as_nanos())).max(1);
        let buckets = usize::try_from(buckets).unwrap_or(usize::MAX);
        let mut counts = vec![0u64; buckets];
        for &c in &self.completions {
            let i = usize::try_from(c.as_nanos() / bucket.as_nanos()).unwrap_or(usize::MAX);
            // A completion exactly at the end belongs to the last bucket.
            counts[i.min(buckets - 1)] += 1;
        }
        counts
    }

    /// One line for logs and benchmark output.
    pub fn summary(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut line = format!(
            "sent={} ok={} failed={} retried={} p50={:.2}ms p99={:.2}ms max={:.2}ms \
             longest_gap={:.1}ms duration={:.2}s",
            self.sent,
            self.ok,
            self.failed,
            self.retried,
            ms(self.percentile(50.0)),
            ms(self.percentile(99.0)),
            ms(self.percentile(100.0)),
            ms(self.longest_gap()),
            self.duration.as_secs_f64(),
        );
        if let Some(first) = self.failures.first() {
            line.push_str(&format!(" first_failure=\"{}\"@{:.3}s", first.reason, first.at.as_secs_f64()));
        }
        line
    }
}

/// Nearest-rank percentile of `values` (unsorted).
fn percentile_of(mut values: Vec<Duration>, p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort_unstable();
    let p = p.clamp(0.0, 100.0);
    let rank = (p / 100.0 * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// State shared by the clients and the handle.
struct Shared {
    spec: LoadSpec,
    /// The request bytes, built once.
    request: Vec<u8>,
    started: Instant,
    /// Set by [`LoadHandle::stop`]: clients finish their current request and return.
    stop: AtomicBool,
    /// Requests claimed so far, for `max_requests`.
    tickets: AtomicU64,
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
}

/// What one client thread observed.
#[derive(Default)]
struct ClientRecord {
    completions: Vec<Duration>,
    latencies: Vec<Latency>,
    failures: Vec<Failure>,
    bodies_by_gen: BTreeMap<String, u64>,
    /// When this client stopped, since the start.
    finished: Duration,
}

/// A running load generator. Dropping it without [`LoadHandle::stop`] or
/// [`LoadHandle::wait`] leaves the clients running until `max_duration`.
pub struct LoadHandle {
    shared: Arc<Shared>,
    clients: Vec<JoinHandle<ClientRecord>>,
}

/// Starts generating load in background threads.
pub fn start(spec: LoadSpec) -> Result<LoadHandle, LoadError> {
    spec.target.check_loopback()?;
    if !spec.path.starts_with('/') || spec.path.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(LoadError::InvalidPath(spec.path));
    }
    if spec.clients == 0 {
        return Err(LoadError::NoClients);
    }
    let mut request = format!("GET {} HTTP/1.1\r\nHost: x\r\n", spec.path).into_bytes();
    if !spec.keep_alive {
        request.extend_from_slice(b"Connection: close\r\n");
    }
    request.extend_from_slice(b"\r\n");
    let shared = Arc::new(Shared {
        spec,
        request,
        started: Instant::now(),
        stop: AtomicBool::new(false),
        tickets: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        retried: AtomicU64::new(0),
    });
    let mut handle = LoadHandle { shared: shared.clone(), clients: Vec::with_capacity(shared.spec.clients) };
    for index in 0..shared.spec.clients {
        let shared = shared.clone();
        let spawned = std::thread::Builder::new().name(format!("loadgen-{index}")).spawn(move || run_client(&shared));
        match spawned {
            Ok(client) => handle.clients.push(client),
            Err(source) => {
                // Do not leave the clients already started running behind our back.
                handle.stop();
                return Err(LoadError::Spawn { index, source });
            }
        }
    }
    Ok(handle)
}

impl LoadHandle {
    /// Asks the clients to stop after their current request, waits for them, and reports.
    pub fn stop(self) -> LoadReport {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.wait()
    }

    /// Waits for the run to end by itself (`max_requests` or `max_duration`), and reports.
    pub fn wait(self) -> LoadReport {
        let mut report = LoadReport::default();
        let mut failures = Vec::new();
        let mut finished = Duration::ZERO;
        for client in self.clients {
            match client.join() {
                Ok(record) => {
                    report.completions.extend(record.completions);
                    report.latencies.extend(record.latencies);
                    failures.extend(record.failures);
                    for (generation, n) in record.bodies_by_gen {
                        *report.bodies_by_gen.entry(generation).or_default() += n;
                    }
                    finished = finished.max(record.finished);
                }
                Err(_) => {
                    // A client panicked (a bug here, not in the server): make it visible.
                    self.shared.failed.fetch_add(1, Ordering::Relaxed);
                    failures.push(Failure {
                        at: self.shared.started.elapsed(),
                        reason: "load client thread panicked".to_owned(),
                    });
                }
            }
        }
        report.sent = self.shared.sent.load(Ordering::Relaxed);
        report.ok = self.shared.ok.load(Ordering::Relaxed);
        report.failed = self.shared.failed.load(Ordering::Relaxed);
        report.retried = self.shared.retried.load(Ordering::Relaxed);
        failures.sort_by_key(|f| f.at);
        failures.truncate(MAX_KEPT_FAILURES);
        report.failures = failures;
        report.completions.sort_unstable();
        report.latencies.sort_unstable_by_key(|l| l.started);
        report.duration = finished;
        report
    }

    /// `(sent, ok, failed)` so far; readable while the run goes on.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.shared.sent.load(Ordering::Relaxed),
            self.shared.ok.load(Ordering::Relaxed),
            self.shared.failed.load(Ordering::Relaxed),
        )
    }

    /// When the run started: the origin of every `Duration` in the report.
    pub fn started_at(&self) -> Instant {
        self.shared.started
    }

    /// Whether every client has stopped (by itself or after [`LoadHandle::stop`]).
    pub fn is_finished(&self) -> bool {
        self.clients.iter().all(JoinHandle::is_finished)
    }
}

/// One client: requests in a loop until stopped, out of time, or out of tickets.
fn run_client(shared: &Shared) -> ClientRecord {
    let spec = &shared.spec;
    let mut record = ClientRecord::default();
    let mut conn: Option<Conn> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        if shared.stop.load(Ordering::Relaxed) || shared.started.elapsed() >= spec.max_duration {
            break;
        }
        if let Some(max) = spec.max_requests {
            if shared.tickets.fetch_add(1, Ordering::Relaxed) >= max {
                break;
            }
        }
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let begin = Instant::now();
        match one_request(shared, &mut conn, &mut buf) {
            Ok(generation) => {
                let done = Instant::now();
                shared.ok.fetch_add(1, Ordering::Relaxed);
                record.completions.push(done - shared.started);
                record.latencies.push(Latency { started: begin - shared.started, latency: done - begin });
                *record.bodies_by_gen.entry(generation).or_default() += 1;
            }
            Err(reason) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                if record.failures.len() < MAX_KEPT_FAILURES {
                    record.failures.push(Failure { at: shared.started.elapsed(), reason });
                }
                conn = None;
                std::thread::sleep(FAILURE_PAUSE);
            }
        }
    }
    record.finished = shared.started.elapsed();
    record
}

/// Sends the request and reads the response, on `conn` if open, retrying once on a new
/// connection if a reused one was closed before any response byte. Returns the `gen=` token
/// of the body, or the failure reason.
fn one_request(shared: &Shared, conn: &mut Option<Conn>, buf: &mut Vec<u8>) -> Result<String, String> {
    let timeout = shared.spec.request_timeout;
    let deadline = Instant::now() + timeout;
    loop {
        let (mut stream, reused) = match conn.take() {
            Some(stream) => (stream, true),
            None => {
                buf.clear();
                (Conn::connect(&shared.spec.target, timeout)?, false)
            }
        };
        match exchange(&mut stream, &shared.request, buf, deadline) {
            Ok(response) => {
                if !response.close {
                    *conn = Some(stream);
                }
                if !(200..300).contains(&response.status) {
                    return Err(format!("HTTP status {}", response.status));
                }
                return Ok(response.generation);
            }
            Err(Exchange::ClosedBeforeResponse(_)) if reused => {
                // The server closed the kept-alive connection before seeing (or answering)
                // this request: retry once on a new one (RFC 9112 §9.3.1). The next attempt
                // is on a fresh connection, so `reused` is false and it cannot loop.
                shared.retried.fetch_add(1, Ordering::Relaxed);
            }
            Err(Exchange::ClosedBeforeResponse(why) | Exchange::Failed(why)) => return Err(why),
        }
    }
}

/// A client connection of either kind.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    /// Connects within `timeout`.
    fn connect(target: &Target, timeout: Duration) -> Result<Conn, String> {
        match target {
            Target::Tcp(addr) => {
                let stream = TcpStream::connect_timeout(addr, timeout).map_err(|e| connect_failure(&e))?;
                // Requests go out in one write; do not let Nagle delay them.
                let _ = stream.set_nodelay(true);
                Ok(Conn::Tcp(stream))
            }
            Target::Unix(path) => connect_unix(path, timeout).map(Conn::Unix).map_err(|e| connect_failure(&e)),
        }
    }

    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(Some(timeout)),
            Conn::Unix(s) => s.set_read_timeout(Some(timeout)),
        }
    }

    fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_write_timeout(Some(timeout)),
            Conn::Unix(s) => s.set_write_timeout(Some(timeout)),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn connect_failure(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect: connection refused".to_owned(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "connect: timeout".to_owned(),
        _ => format!("connect: {e}"),
    }
}

/// Connects a unix stream socket with a bounded wait.
///
/// A blocking unix `connect` waits while the listener's queue is full, for as long as the
/// socket's send timeout (`SO_SNDTIMEO`, forever by default), then fails with EAGAIN; std's
/// `UnixStream::connect` offers no way to set it first, hence the socket built by hand.
fn connect_unix(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};
    use nix::sys::time::TimeVal;

    let fd = socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    let secs = libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX);
    // A zero timeval means "no timeout": wait at least a microsecond.
    let micros = libc::suseconds_t::from(timeout.subsec_micros().max(u32::from(secs == 0)));
    socket::setsockopt(&fd, sockopt::SendTimeout, &TimeVal::new(secs, micros))?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(UnixStream::from(fd))
}

/// How one exchange on a connection failed.
enum Exchange {
    /// Nothing of the response arrived before the connection broke: retryable on a reused
    /// keep-alive connection.
    ClosedBeforeResponse(String),
    /// Anything else.
    Failed(String),
}

/// A complete response, as far as the client cares.
struct Response {
    status: u16,
    /// The connection cannot be reused.
    close: bool,
    /// The `gen=X` token of the body, "?" if none.
    generation: String,
}

/// Writes the request, reads one complete response into (and out of) `buf`.
fn exchange(conn: &mut Conn, request: &[u8], buf: &mut Vec<u8>, deadline: Instant) -> Result<Response, Exchange> {
    let remaining = |now: Instant| deadline.checked_duration_since(now).filter(|d| !d.is_zero());
    let Some(left) = remaining(Instant::now()) else {
        return Err(Exchange::Failed("request timeout".to_owned()));
    };
    conn.set_write_timeout(left).map_err(|e| Exchange::Failed(format!("setsockopt: {e}")))?;
    if let Err(e) = conn.write_all(request) {
        return Err(match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => {
                Exchange::ClosedBeforeResponse(format!("write: {e}"))
            }
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Exchange::Failed("write timeout".to_owned()),
            _ => Exchange::Failed(format!("write: {e}")),
        });
    }

    // Bytes left over from the previous response would be a protocol error on our side (we
    // never pipeline); they count as part of this response so the parser reports it.
    let mut received_any = !buf.is_empty();
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        match parse_response(buf) {
            Err(why) => return Err(Exchange::Failed(format!("malformed response: {why}"))),
            Ok(Some(head)) => {
                if let Some(body_len) = head.body_len {
                    let total = head.head_len + body_len;
                    if buf.len() >= total {
                        let response = head.finish(&buf[head.head_len..total]);
                        buf.drain(..total);
                        return Ok(response);
                    }
                }
            }
            Ok(None) => {}
        }
        let Some(left) = remaining(Instant::now()) else {
            return Err(Exchange::Failed("read timeout".to_owned()));
        };
        conn.set_read_timeout(left).map_err(|e| Exchange::Failed(format!("setsockopt: {e}")))?;
        match conn.read(&mut chunk) {
            Ok(0) => {
                if !received_any {
                    return Err(Exchange::ClosedBeforeResponse("connection closed before the response".to_owned()));
                }
                // A response without Content-Length ends at EOF.
                if let Ok(Some(head)) = parse_response(buf) {
                    if head.body_len.is_none() {
                        let response = head.finish(&buf[head.head_len..]);
                        buf.clear();
                        return Ok(response);
                    }
                }
                return Err(Exchange::Failed("connection closed in the middle of the response".to_owned()));
            }
            Ok(n) => {
                received_any = true;
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(Exchange::Failed("read timeout".to_owned()));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(if received_any {
                    Exchange::Failed("connection reset after the response started".to_owned())
                } else {
                    Exchange::ClosedBeforeResponse("connection reset before the response".to_owned())
                });
            }
            Err(e) => return Err(Exchange::Failed(format!("read: {e}"))),
        }
    }
}

/// A parsed response head.
struct ResponseHead {
    status: u16,
    head_len: usize,
    /// `None`: the body runs until the server closes the connection.
    body_len: Option<usize>,
    close: bool,
}

impl ResponseHead {
    fn finish(&self, body: &[u8]) -> Response {
        Response { status: self.status, close: self.close, generation: generation_token(body) }
    }
}

/// Parses a response head at the start of `buf`; `Ok(None)` if incomplete.
fn parse_response(buf: &[u8]) -> Result<Option<ResponseHead>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err("response head too large".to_owned());
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(format!("bad status line {status_line:?}")),
    };
    let status: u16 = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut close = http10;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| format!("bad header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| format!("bad Content-Length {value:?}"))?;
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked responses are not supported".to_owned());
        }
    }
    let body_len = match (status, content_length) {
        // RFC 9112 §6.3: these never have a body.
        (100..=199 | 204 | 304, _) => Some(0),
        (_, Some(n)) => Some(n),
        (_, None) => {
            // Delimited by the close: the connection cannot be reused.
            close = true;
            None
        }
    };
    Ok(Some(ResponseHead { status, head_len: end + 4, body_len, close }))
}

/// The `gen=X` token of a body (X up to the next whitespace), or "?".
fn generation_token(body: &[u8]) -> String {
    body.windows(4)
        .position(|w| w == b"gen=")
        .map(|at| {
            let value: Vec<u8> = body[at + 4..].iter().copied().take_while(|b| !b.is_ascii_whitespace()).collect();
            String::from_utf8_lossy(&value).into_owned()
        })
        .filter(|token| !token.is_empty())
        .unwrap_or_else(|| "?".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
    use std::sync::mpsc;

    /// Bound on every wait in these tests.
    const DEADLINE: Duration = Duration::from_secs(20);

    /// How the in-test server behaves.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mode {
        /// HTTP/1.1 200 with keep-alive (closes when asked to).
        KeepAlive,
        /// Answers, then closes the connection without saying so: like a server closing an
        /// idle keep-alive connection right after a response.
        CloseAfterResponse,
        /// Answers 503.
        Unavailable,
        /// Reads requests and never answers.
        Silent,
    }

    /// A tiny blocking HTTP server on 127.0.0.1:0; stopped and joined on drop.
    struct TestServer {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        acceptor: Option<JoinHandle<()>>,
    }

    impl TestServer {
        fn start(mode: Mode) -> TestServer {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let stop = Arc::new(AtomicBool::new(false));
            let acceptor = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        std::thread::spawn(move || serve_test_connection(stream, mode));
                    }
                })
            };
            TestServer { addr, stop, acceptor: Some(acceptor) }
        }

        fn target(&self) -> Target {
            Target::Tcp(self.addr)
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            // Wake the acceptor up so it sees the flag.
            let _ = TcpStream::connect(self.addr);
            if let Some(acceptor) = self.acceptor.take() {
                let _ = acceptor.join();
            }
        }
    }

    fn serve_test_connection<S: Read + Write>(mut stream: S, mode: Mode) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            };
            let close = String::from_utf8_lossy(&buf[..end]).contains("Connection: close");
            buf.drain(..end + 4);
            let response: &[u8] = match mode {
                Mode::Silent => continue,
                Mode::Unavailable => b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\nbusy\n",
                _ if close => b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: close\r\n\r\nhello gen=1\n",
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nhello gen=1\n",
            };
            if stream.write_all(response).is_err() || close {
                return;
            }
            if mode == Mode::CloseAfterResponse {
                return;
            }
        }
    }

    fn spec(target: Target, clients: usize, keep_alive: bool, max: Option<u64>) -> LoadSpec {
        LoadSpec { clients, keep_alive, max_requests: max, max_duration: DEADLINE, ..LoadSpec::new(target) }
    }

    /// Runs `wait` on another thread so a broken generator fails the test instead of hanging.
    fn wait_bounded(handle: LoadHandle) -> LoadReport {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(handle.wait());
        });
        rx.recv_timeout(DEADLINE + Duration::from_secs(10)).expect("the load run ends by itself")
    }

    #[test]
    fn keep_alive_counts() {
        let server = TestServer::start(Mode::KeepAlive);
        let report = wait_bounded(start(spec(server.target(), 3, true, Some(60))).expect("start"));
        assert_eq!((report.sent, report.ok, report.failed), (60, 60, 0));
        assert_eq!(report.retried, 0);
        assert_eq!(report.completions.len(), 60);
        assert_eq!(report.latencies.len(), 60);
        assert_eq!(report.bodies_by_gen.get("1"), Some(&60));
        assert!(report.completions.windows(2).all(|w| w[0] <= w[1]));
        assert!(report.percentile(50.0) <= report.percentile(100.0));
        assert!(report.percentile(100.0) > Duration::ZERO);
        assert!(report.summary().contains("sent=60 ok=60 failed=0"));
    }

    #[test]
    fn new_connection_per_request() {
        let server = TestServer::start(Mode::KeepAlive);
        let report = wait_bounded(start(spec(server.target(), 2, false, Some(20))).expect("start"));
        assert_eq!((report.sent, report.ok, report.failed, report.retried), (20, 20, 0, 0));
    }

    #[test]
    fn stop_ends_an_unbounded_run() {
        let server = TestServer::start(Mode::KeepAlive);
        let handle = start(spec(server.target(), 2, true, None)).expect("start");
        let deadline = Instant::now() + DEADLINE;
        // No event to block on: poll the counters, with a deadline.
        while handle.snapshot().1 < 20 {
            assert!(Instant::now() < deadline, "no progress: {:?}", handle.snapshot());
            std::thread::yield_now();
        }
        let report = handle.stop();
        assert!(report.ok >= 20);
        assert_eq!(report.failed, 0);
        assert_eq!(report.sent, report.ok + report.failed);
        assert!(report.duration >= *report.completions.last().expect("completions"));
    }

    #[test]
    fn max_duration_bounds_the_run() {
        let server = TestServer::start(Mode::KeepAlive);
        let handle =
            start(LoadSpec { max_duration: Duration::from_millis(200), ..spec(server.target(), 2, true, None) })
                .expect("start");
        let report = wait_bounded(handle);
        assert!(report.ok > 0);
        assert_eq!(report.failed, 0);
        assert!(report.duration >= Duration::from_millis(200));
    }

    #[test]
    fn closed_idle_keep_alive_connection_is_retried_not_failed() {
        let server = TestServer::start(Mode::CloseAfterResponse);
        let report = wait_bounded(start(spec(server.target(), 1, true, Some(10))).expect("start"));
        assert_eq!(report.failed, 0, "{:?}", report.failures);
        assert_eq!(report.ok, 10);
        // Every request but the first found its kept-alive connection closed.
        assert_eq!(report.retried, 9);
    }

    #[test]
    fn refused_connection_is_a_failure_with_a_reason() {
        let addr = {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
            listener.local_addr().expect("local addr")
        };
        let report = wait_bounded(start(spec(Target::Tcp(addr), 1, true, Some(3))).expect("start"));
        assert_eq!((report.sent, report.ok, report.failed), (3, 0, 3));
        assert_eq!(report.failures.len(), 3);
        for failure in &report.failures {
            assert!(failure.reason.contains("refused"), "{failure:?}");
        }
        assert!(report.summary().contains("first_failure"));
    }

    #[test]
    fn error_status_and_timeout_are_failures() {
        let server = TestServer::start(Mode::Unavailable);
        let report = wait_bounded(start(spec(server.target(), 1, true, Some(2))).expect("start"));
        assert_eq!(report.failed, 2);
        assert_eq!(report.failures[0].reason, "HTTP status 503");

        let server = TestServer::start(Mode::Silent);
        let report = wait_bounded(
            start(LoadSpec { request_timeout: Duration::from_millis(100), ..spec(server.target(), 1, true, Some(1)) })
                .expect("start"),
        );
        assert_eq!(report.failed, 1);
        assert_eq!(report.failures[0].reason, "read timeout");
    }

    #[test]
    fn unix_socket_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        // Serves exactly the connections of this test: 2 clients with keep-alive.
        let server = std::thread::spawn(move || {
            let conns: Vec<_> = (0..2).map(|_| listener.accept().expect("accept").0).collect();
            let threads: Vec<_> = conns
                .into_iter()
                .map(|c| std::thread::spawn(move || serve_test_connection(c, Mode::KeepAlive)))
                .collect();
            for t in threads {
                let _ = t.join();
            }
        });
        let target: Target = format!("unix:{}", path.display()).parse().expect("target");
        // Both clients must connect for the server thread to finish: give each enough work.
        let report = wait_bounded(start(spec(target, 2, true, Some(40))).expect("start"));
        assert_eq!((report.ok, report.failed), (40, 0));
        server.join().expect("server thread");
    }

    #[test]
    fn only_loopback_targets() {
        for addr in ["10.1.2.3:80", "0.0.0.0:80", "[2001:db8::1]:80", "[::]:80"] {
            let target: Target = addr.parse().expect("target");
            assert!(matches!(start(LoadSpec::new(target)), Err(LoadError::NotLoopback(_))), "{addr} accepted");
        }
        for addr in ["127.0.0.1:9", "127.255.0.1:9", "[::1]:9"] {
            let target: Target = addr.parse().expect("target");
            assert!(target.check_loopback().is_ok(), "{addr} refused");
        }
        assert!("localhost:80".parse::<Target>().is_err());
        assert!("unix:".parse::<Target>().is_err());
        let v6 = Target::Tcp(SocketAddr::from((Ipv6Addr::LOCALHOST, 1)));
        assert_eq!(v6.to_string(), "[::1]:1");
        let mut bad_path = LoadSpec::new(v6);
        bad_path.path = "/a b".to_owned();
        assert!(matches!(start(bad_path), Err(LoadError::InvalidPath(_))));
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn synthetic() -> LoadReport {
        LoadReport {
            duration: ms(1000),
            completions: vec![ms(100), ms(150), ms(400), ms(450), ms(900)],
            latencies: [10, 20, 30, 40, 50]
                .iter()
                .enumerate()
                .map(|(i, &l)| Latency { started: ms(100 * i as u64), latency: ms(l) })
                .collect(),
            ..LoadReport::default()
        }
    }

    #[test]
    fn gaps_on_synthetic_data() {
        let r = synthetic();
        // 450 -> 900 is the longest; start->100 and 900->end(1000) are shorter.
        assert_eq!(r.longest_gap(), ms(450));
        // Window edges count: [120, 420] has 150 and 400 inside: max(30, 250, 20).
        assert_eq!(r.longest_gap_within(ms(120), ms(420)), ms(250));
        // A window without completions is one gap.
        assert_eq!(r.longest_gap_within(ms(500), ms(800)), ms(300));
        // Completions on the edges are inside.
        assert_eq!(r.longest_gap_within(ms(100), ms(150)), ms(50));
        assert_eq!(r.longest_gap_within(ms(600), ms(600)), Duration::ZERO);
        let empty = LoadReport { duration: ms(300), ..LoadReport::default() };
        assert_eq!(empty.longest_gap(), ms(300));
    }

    #[test]
    fn timeline_on_synthetic_data() {
        let r = synthetic();
        assert_eq!(r.timeline(ms(250)), vec![2, 2, 0, 1]);
        assert_eq!(r.timeline(ms(300)), vec![2, 2, 0, 1]);
        assert_eq!(r.timeline(ms(1000)), vec![5]);
        assert_eq!(r.timeline(Duration::ZERO), Vec::<u64>::new());
        let mut at_end = r.clone();
        at_end.completions.push(ms(1000));
        assert_eq!(at_end.timeline(ms(500)), vec![4, 2]);
    }

    #[test]
    fn percentiles_on_synthetic_data() {
        let r = synthetic();
        assert_eq!(r.percentile(0.0), ms(10));
        assert_eq!(r.percentile(50.0), ms(30));
        assert_eq!(r.percentile(99.0), ms(50));
        assert_eq!(r.percentile(100.0), ms(50));
        // Started in [100, 300): latencies 20 and 30.
        assert_eq!(r.latency_within(ms(100), ms(300), 100.0), ms(30));
        assert_eq!(r.latency_within(ms(100), ms(300), 50.0), ms(20));
        assert_eq!(r.latency_within(ms(900), ms(950), 50.0), Duration::ZERO);
    }

    #[test]
    fn response_parsing() {
        let head = |b: &[u8]| parse_response(b).expect("parses").expect("complete");
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!((h.status, h.body_len, h.close), (200, Some(3), false));
        let h = head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert!(h.close);
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(h.close);
        let h = head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert!(!h.close);
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.body_len, h.close), (None, true));
        let h = head(b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(h.body_len, Some(0));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le").expect("ok").is_none());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 20 OK\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert_eq!(generation_token(b"hello: gen=12 slot=0\n"), "12");
        assert_eq!(generation_token(b"gen=3"), "3");
        assert_eq!(generation_token(b"no token\n"), "?");
        assert_eq!(generation_token(b"gen= x"), "?");
    }
}
