//! What each subcommand does, and the mapping of failures to exit codes (SPEC §1):
//! 0 ok; 1 operation failed; 2 bad usage or bad config (permanent: the unit lists it in
//! `RestartPreventExitStatus=`); 3 daemon unreachable.
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cli::{Cli, Command, CompletionsArgs, ReloadArgs, ScaleArgs, StatusArgs, Target, UpgradeArgs};
use crate::config::{self, LoadEnv};
use crate::control::client::{self, ClientError, Limits, ANSWER_TIMEOUT};
use crate::control::proto::{Outcome, Request, Status};
use crate::machine::Level;
use crate::sockets::{SocketError, Sockets};
use crate::systemd::Notifier;
use crate::{logging, supervisor, EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE};

/// Runs the parsed command line; returns the exit code.
pub fn main(cli: Cli) -> i32 {
    match cli.command {
        Command::Run(c) => run_daemon(c.path()),
        Command::Check(c) => check(c.path()),
        Command::Reload(a) => reload(a),
        Command::Status(a) => status(a),
        Command::Scale(a) => scale(a),
        Command::Upgrade(a) => upgrade(a),
        Command::HandoffCheck(a) => crate::upgrade::handoff_check(a.format, &a.config),
        Command::Demo(a) => crate::demo::tour::run(a),
        Command::DemoWorker(a) => match crate::demo::worker::run(a) {
            Ok(()) => EXIT_OK,
            Err(e) => {
                eprintln!("demo-worker: {e:#}");
                EXIT_FAILED
            }
        },
        Command::Completions(a) => completions(&a),
    }
}

/// `handover run`: adopt systemd's fds, load the config, serve until stopped. In the new
/// binary of `handover upgrade`, take over from the old one instead.
pub fn run_daemon(path: PathBuf) -> i32 {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // SAFETY: called from main before any thread exists (the tokio runtime is built below,
    // and clap does not start threads); nothing else has taken the hand-off's descriptor.
    if let Some(taken) = unsafe { crate::upgrade::exec::take_from_env() } {
        return take_over(taken, argv);
    }
    // SAFETY: as above: before any thread exists; nothing else has adopted fds 3.. .
    let inherited = match unsafe { crate::systemd::adopt_from_env() } {
        Ok(i) => i,
        Err(e) => {
            eprintln!("handover: reading LISTEN_FDS/LISTEN_FDNAMES from systemd: {e}");
            return EXIT_USAGE;
        }
    };
    let load_env = LoadEnv::from_process();
    let config = match config::load(&path, &load_env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("handover: {e}");
            return EXIT_USAGE;
        }
    };
    logging::init(&config.name);
    let notifier = Notifier::new(inherited.notify_socket.clone());
    let mut sockets = Sockets::new(inherited.fds, notifier.clone(), inherited.fdstore_enabled);
    match sockets.prepare(&config.listen) {
        Ok(warnings) => {
            for w in warnings {
                logging::event(Level::Warn, "sockets", w);
            }
        }
        Err(e) => {
            logging::event(Level::Error, "sockets", e.to_string());
            return match e {
                SocketError::Bind { .. } => EXIT_FAILED,
                _ => EXIT_USAGE,
            };
        }
    }
    for s in sockets.status() {
        logging::event(Level::Info, "sockets", format!("socket {:?} on {} ({})", s.name, s.address, s.origin));
    }
    let now = crate::unix::unix_now();
    let binary = argv.first().and_then(|a0| crate::upgrade::resolve_binary(a0, load_env.path.as_ref()));
    let identity = supervisor::Identity {
        binary,
        argv,
        started_unix: now,
        version_since_unix: now,
        upgrades: 0,
        upgraded_from: None,
    };
    let systemd = crate::upgrade::SystemdRecord {
        notify_socket: inherited.notify_socket,
        watchdog: inherited.watchdog,
        fdstore_enabled: inherited.fdstore_enabled,
    };
    let setup = supervisor::Setup {
        config: Arc::new(config),
        config_path: path,
        load_env,
        sockets,
        notifier,
        watchdog: inherited.watchdog,
        base_env: std::env::vars_os().collect(),
        identity,
        systemd,
        resume: None,
    };
    serve(setup)
}

/// The new binary of `handover upgrade` (or the old one, given its hand-off back): take
/// the hand-off over if this binary can; if not, hand it back to the old binary when it
/// gave a way back, so that a refusal after the exec never takes the daemon down.
fn take_over(taken: crate::upgrade::exec::Taken, argv: Vec<std::ffi::OsString>) -> i32 {
    let crate::upgrade::exec::Taken { handoff, bytes, way_back, returned } = taken;
    let checked = handoff.and_then(|h| h.acceptable().map(|()| h));
    match checked {
        Ok(mut h) => {
            drop(way_back);
            h.returned = returned;
            resume_daemon(h, argv)
        }
        Err(e) => {
            eprintln!("handover: taking over from the previous binary: {e}");
            // Never back to a binary that handed it back itself: that one refused already.
            if let (Some(exe), None) = (way_back, returned) {
                eprintln!("handover {}: handing the daemon back to the previous binary", crate::VERSION);
                let why = format!("handover {} refused the hand-off after the exec: {e}", crate::VERSION);
                let error = crate::upgrade::exec::hand_back(&exe, &argv, &bytes, &why);
                eprintln!("handover: handing back to the previous binary failed: {error}");
            }
            EXIT_FAILED
        }
    }
}

/// The new binary of `handover upgrade`: the old one's sockets, workers and state.
fn resume_daemon(mut h: crate::upgrade::HandOff, argv: Vec<std::ffi::OsString>) -> i32 {
    let Some(active) = h.machine.generations.iter().find(|g| g.number == h.machine.active) else {
        eprintln!("handover: taking over from the previous binary: no active generation in the hand-off");
        return EXIT_FAILED;
    };
    let config = active.config.clone();
    logging::init(&config.name);
    let notifier = Notifier::new(h.systemd.notify_socket.clone());
    let sockets = match Sockets::adopt(std::mem::take(&mut h.sockets), notifier.clone(), h.systemd.fdstore_enabled) {
        Ok(s) => s,
        Err(e) => {
            logging::event(Level::Error, "upgrade", format!("taking over the listening sockets: {e}"));
            return EXIT_FAILED;
        }
    };
    let identity = match h.returned {
        // Our own hand-off, back: we are who we were (the hand-off counted the upgrade).
        Some(_) => supervisor::Identity {
            binary: Some(h.binary.clone()),
            argv,
            started_unix: h.started_unix,
            version_since_unix: h.version_since_unix.unwrap_or_else(crate::unix::unix_now),
            upgrades: h.upgrades.saturating_sub(1),
            upgraded_from: h.upgraded_from.clone(),
        },
        None => supervisor::Identity {
            binary: Some(h.binary.clone()),
            argv,
            started_unix: h.started_unix,
            version_since_unix: crate::unix::unix_now(),
            upgrades: h.upgrades,
            upgraded_from: Some(h.from_version.clone()),
        },
    };
    let setup = supervisor::Setup {
        config: Arc::new(config),
        config_path: h.config_path.clone(),
        load_env: LoadEnv::from_process(),
        sockets,
        notifier,
        watchdog: h.systemd.watchdog,
        base_env: std::env::vars_os().collect(),
        identity,
        systemd: h.systemd.clone(),
        resume: Some(h),
    };
    serve(setup)
}

/// Runs the supervisor on a current-thread runtime.
fn serve(setup: supervisor::Setup) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            logging::event(Level::Error, "startup", format!("cannot start the event loop: {e}"));
            return EXIT_FAILED;
        }
    };
    let code = match runtime.block_on(supervisor::run(setup)) {
        Ok(code) => code,
        Err(e) => {
            logging::event(Level::Error, "startup", e.to_string());
            EXIT_FAILED
        }
    };
    // The last lines (the stop, the exit's reason) are still queued for the log writer.
    logging::flush(LOG_FLUSH_AT_EXIT);
    code
}

/// How long an exiting daemon waits for its queued log lines to be written: a reader that
/// stopped reading must not keep a stopped service from exiting.
const LOG_FLUSH_AT_EXIT: std::time::Duration = std::time::Duration::from_secs(1);

/// `handover check`.
pub fn check(path: PathBuf) -> i32 {
    match config::load(&path, &LoadEnv::from_process()) {
        Ok(c) => {
            let listen = if c.listen.is_empty() {
                "sockets from systemd".to_string()
            } else {
                c.listen.iter().map(|l| format!("{}={}", l.name, l.address)).collect::<Vec<_>>().join(", ")
            };
            // Not an error (the metrics are optional, and the directory may be created by
            // the time the daemon runs), but worth saying before a deploy.
            if let Some(dir) = c.metrics.textfile.as_deref().and_then(Path::parent) {
                if !dir.is_dir() {
                    eprintln!(
                        "{}: warning: metrics.textfile: {} is not a directory (yet): the metrics \
                         cannot be written until it is (the daemon runs and reports it)",
                        path.display(),
                        dir.display()
                    );
                }
            }
            print_out(&format!(
                "{}: ok: {} x {} on {listen}; control socket {}\n",
                path.display(),
                c.workers.count,
                c.workers.program.display(),
                c.control_socket.display()
            ))
        }
        Err(e) => {
            eprintln!("{e}");
            EXIT_USAGE
        }
    }
}

/// The control socket of `t`, or the exit code for why there is none.
fn control_path(t: &Target) -> Result<PathBuf, i32> {
    if let Some(p) = &t.control {
        return Ok(p.clone());
    }
    match config::control_socket_of(&t.config.path(), &LoadEnv::from_process()) {
        Ok(view) => {
            // Clients read the file leniently (handover(1)): a file the daemon would refuse
            // still names its socket, and the operator hears about the error now.
            if let Some(e) = &view.skipped {
                eprintln!(
                    "handover: warning: {e} (read leniently: using control socket {})",
                    view.control_socket.display()
                );
            }
            Ok(view.control_socket)
        }
        Err(e) => {
            eprintln!("handover: {e}");
            Err(EXIT_USAGE)
        }
    }
}

fn client_error(e: &ClientError) -> i32 {
    eprintln!("handover: {e}");
    match e {
        ClientError::Unreachable { .. } | ClientError::Unresponsive { .. } => EXIT_UNREACHABLE,
        _ => EXIT_FAILED,
    }
}

/// Writes `text` to standard output. A reader that went away (`handover status | head -1`)
/// had what it wanted: the command ends quietly with its own exit code, without the panic
/// that `println!` turns EPIPE into (Rust ignores SIGPIPE, so the write fails instead).
fn print_out(text: &str) -> i32 {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => EXIT_OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => {
            eprintln!("handover: writing to standard output: {e}");
            EXIT_FAILED
        }
    }
}

/// The longest `--timeout` taken: a wait beyond it is no wait anyone means, and a deadline
/// of 10^19 s is past what the clock can represent.
pub const MAX_CLIENT_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// `--timeout` of a client command, checked before anything is sent (exit 2 if bad).
fn client_timeout(text: Option<&str>) -> Result<Option<Duration>, i32> {
    let Some(text) = text else { return Ok(None) };
    match config::parse_duration(text) {
        Ok(d) if d > MAX_CLIENT_TIMEOUT => {
            eprintln!(
                "handover: --timeout: {text} is longer than the longest wait handover takes ({}); \
                 nothing was sent",
                crate::text::human(MAX_CLIENT_TIMEOUT)
            );
            Err(EXIT_USAGE)
        }
        Ok(d) if d.is_zero() => {
            eprintln!("handover: --timeout: must be more than 0; nothing was sent");
            Err(EXIT_USAGE)
        }
        Ok(d) => Ok(Some(d)),
        Err(e) => {
            eprintln!("handover: --timeout: {e}; nothing was sent");
            Err(EXIT_USAGE)
        }
    }
}

fn report(outcome: &Outcome) -> i32 {
    if outcome.ok {
        match &outcome.message {
            Some(m) => print_out(&format!("{m}\n")),
            None => EXIT_OK,
        }
    } else {
        eprintln!("handover: {}", outcome.error.as_deref().unwrap_or("the daemon refused"));
        EXIT_FAILED
    }
}

/// `handover reload`.
pub fn reload(a: ReloadArgs) -> i32 {
    let path = match control_path(&a.target) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let timeout = match client_timeout(a.timeout.as_deref()) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let tty = std::io::stderr().is_terminal();
    let mut shown = false;
    // The daemon must answer a status first (within ANSWER_TIMEOUT): a stopped or wedged
    // one is told apart (exit 3) from a reload that takes long, and gets no request.
    let limits = Limits { answer: ANSWER_TIMEOUT, total: timeout, probe: true };
    let result = client::call_with(&path, &Request::Reload {}, limits, !a.no_wait, |p| {
        if tty {
            // Clear to the end of the line: the text can get shorter. A failing stderr is
            // no reason to abandon the wait.
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{p}\x1b[K").and_then(|()| err.flush());
            shown = true;
        }
    });
    if shown {
        let _ = writeln!(std::io::stderr());
    }
    match result {
        Ok(Some(outcome)) => report(&outcome),
        Ok(None) => print_out("reload requested\n"),
        Err(e) => client_error(&e),
    }
}

fn simple_request(t: &Target, request: &Request, timeout: Option<&str>) -> i32 {
    let path = match control_path(t) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let answer = match client_timeout(timeout) {
        Ok(t) => t.unwrap_or(ANSWER_TIMEOUT),
        Err(code) => return code,
    };
    match client::call_with(&path, request, Limits { answer, total: None, probe: false }, true, |_| {}) {
        Ok(Some(outcome)) => report(&outcome),
        Ok(None) => EXIT_OK,
        Err(e) => client_error(&e),
    }
}

/// `handover upgrade`: exit 0 once the new binary runs the daemon.
pub fn upgrade(a: UpgradeArgs) -> i32 {
    let path = match control_path(&a.target) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let timeout = match client_timeout(a.timeout.as_deref()) {
        Ok(t) => t.unwrap_or(Duration::from_secs(300)),
        Err(code) => return code,
    };
    let limits = Limits { answer: ANSWER_TIMEOUT, total: Some(timeout), probe: true };
    match client::call_with(&path, &Request::Upgrade {}, limits, true, |_| {}) {
        Ok(Some(outcome)) => report(&outcome),
        Ok(None) => EXIT_OK,
        Err(e) => client_error(&e),
    }
}

/// `handover scale N`.
pub fn scale(a: ScaleArgs) -> i32 {
    simple_request(&a.target, &Request::Scale { count: a.count }, a.timeout.as_deref())
}

/// `handover status`.
pub fn status(a: StatusArgs) -> i32 {
    let path = match control_path(&a.target) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let answer = match client_timeout(a.timeout.as_deref()) {
        Ok(t) => t.unwrap_or(ANSWER_TIMEOUT),
        Err(code) => return code,
    };
    let limits = Limits { answer, total: None, probe: false };
    let outcome = match client::call_with(&path, &Request::Status {}, limits, true, |_| {}) {
        Ok(Some(o)) => o,
        Ok(None) => return EXIT_FAILED,
        Err(e) => return client_error(&e),
    };
    let Some(status) = outcome.status.as_ref().filter(|_| outcome.ok) else { return report(&outcome) };
    if a.json {
        match serde_json::to_string_pretty(status) {
            Ok(s) => print_out(&format!("{s}\n")),
            Err(e) => {
                eprintln!("handover: {e}");
                EXIT_FAILED
            }
        }
    } else {
        print_out(&render_status(status))
    }
}

/// The human-readable `handover status` table.
pub fn render_status(s: &Status) -> String {
    use std::fmt::Write as _;
    // Worker text is cleaned where it is received; clean every string again here, so that
    // nothing in a reply can drive the terminal.
    let clean = crate::text::strip_control_chars;
    let mut out = String::new();
    let _ = writeln!(out, "{} (pid {}): {}: {}", clean(&s.name), s.pid, clean(&s.phase), clean(&s.summary));
    if !s.version.is_empty() {
        let now = crate::unix::unix_now();
        let ago = |t: f64| crate::text::human(Duration::from_secs_f64((now - t).max(0.0)));
        let mut line = format!("handover {} for {}", clean(&s.version), ago(s.version_since_unix));
        if let Some(from) = &s.upgraded_from {
            let _ = write!(line, " (upgraded in place from {})", clean(from));
        }
        if s.upgrades > 0 {
            let _ = write!(line, "; daemon up {}, {} upgrade(s)", ago(s.started_unix), s.upgrades);
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "\n{:<5} {:<10} {:>6} {:>6} {:>8} {:>9}",
        "GEN", "ROLE", "WANTED", "READY", "BOOTING", "DRAINING"
    );
    for g in &s.generations {
        let _ = writeln!(
            out,
            "{:<5} {:<10} {:>6} {:>6} {:>8} {:>9}",
            g.generation,
            clean(&g.role),
            g.wanted,
            g.ready,
            g.booting,
            g.draining
        );
    }
    if !s.worker_isolation.is_empty() {
        let _ = writeln!(out, "\nworkers: {}", clean(&s.worker_isolation));
    }
    // Memory and CPU per worker where each has a cgroup (cgroup per worker mode).
    let usage = s.workers.iter().any(|w| w.cpu_usec.is_some() || w.memory_bytes.is_some());
    let _ = writeln!(
        out,
        "\n{:<5} {:<5} {:>8} {:<9} {:>9} {:>8}{}  STATUS",
        "GEN",
        "SLOT",
        "PID",
        "STATE",
        "SINCE",
        "RESTARTS",
        if usage { format!(" {:>10} {:>9}", "MEMORY", "CPU") } else { String::new() }
    );
    for w in &s.workers {
        let columns = if usage {
            let memory = w.memory_bytes.map_or("-".to_owned(), |b| format!("{:.1}MiB", b as f64 / (1 << 20) as f64));
            let cpu = w.cpu_usec.map_or("-".to_owned(), |u| format!("{:.2}s", u as f64 / 1e6));
            format!(" {memory:>10} {cpu:>9}")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:<5} {:<5} {:>8} {:<9} {:>8.1}s {:>8}{columns}  {}",
            w.generation,
            w.slot,
            w.pid,
            clean(&w.state),
            w.since_secs,
            w.restarts,
            clean(w.status.as_deref().unwrap_or(""))
        );
    }
    if !s.failing.is_empty() {
        let _ = writeln!(out, "\nFAILING SLOTS (crash-loop backoff)");
        let _ = writeln!(out, "{:<5} {:<5} {:>8} {:>13}  LAST FAILURE", "GEN", "SLOT", "RESTARTS", "NEXT ATTEMPT");
        for f in &s.failing {
            let next = match f.next_attempt_secs {
                Some(secs) => format!("in {secs:.1}s"),
                None => "booting".into(),
            };
            let _ = writeln!(
                out,
                "{:<5} {:<5} {:>8} {:>13}  {}",
                f.generation,
                f.slot,
                f.restarts,
                next,
                f.last_failure.as_deref().unwrap_or("")
            );
        }
    }
    let _ = writeln!(out, "\n{:<16} {:<8} ADDRESS", "SOCKET", "ORIGIN");
    for k in &s.sockets {
        let _ = writeln!(out, "{:<16} {:<8} {}", clean(&k.name), clean(&k.origin), clean(&k.address));
    }
    if let Some(e) = &s.metrics_error {
        let _ = writeln!(out, "\nmetrics: {} (retried at the next change; nothing waits on it)", clean(e));
    }
    if let Some(last) = &s.last_reload {
        let _ = writeln!(out, "\nlast reload: {}", clean(last));
    }
    out
}

/// `handover completions SHELL`: the completion script, generated from the clap definition
/// (hidden subcommands left out), so it cannot drift from the command line.
pub fn completions(a: &CompletionsArgs) -> i32 {
    // clap_complete panics when its writer fails; it writes to memory, and the one write
    // to stdout below reports its error.
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut crate::cli::completion_command(), "handover", &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("handover: completions: writing to standard output: {e}");
            EXIT_FAILED
        }
    }
}
