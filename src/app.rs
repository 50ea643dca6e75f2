//! What each subcommand does, and the mapping of failures to exit codes (SPEC §1):
//! 0 ok; 1 operation failed; 2 bad usage or bad config (permanent: the unit lists it in
//! `RestartPreventExitStatus=`); 3 daemon unreachable.
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::{Cli, Command, ReloadArgs, ScaleArgs, StatusArgs, Target};
use crate::config::{self, LoadEnv};
use crate::control::client::{self, ClientError};
use crate::control::proto::{Outcome, Request, Status};
use crate::sockets::{SocketError, Sockets};
use crate::supervisor::machine::Level;
use crate::systemd::Notifier;
use crate::{logging, supervisor};

/// Success.
pub const EXIT_OK: i32 = 0;
/// The operation failed (reload rolled back, the daemon said no, a socket could not be bound).
pub const EXIT_FAILED: i32 = 1;
/// Bad usage or bad config: retrying will not help.
pub const EXIT_USAGE: i32 = 2;
/// The daemon could not be reached.
pub const EXIT_UNREACHABLE: i32 = 3;

/// Runs the parsed command line; returns the exit code.
pub fn main(cli: Cli) -> i32 {
    match cli.command {
        Command::Run(c) => run_daemon(c.path()),
        Command::Check(c) => check(c.path()),
        Command::Reload(a) => reload(a),
        Command::Status(a) => status(a),
        Command::Scale(a) => scale(a),
        Command::Upgrade(t) => simple_request(&t, &Request::Upgrade {}),
        Command::Demo(a) => crate::demo::tour::run(a),
        Command::DemoWorker(a) => match crate::demo::worker::run(a) {
            Ok(()) => EXIT_OK,
            Err(e) => {
                eprintln!("demo-worker: {e:#}");
                EXIT_FAILED
            }
        },
    }
}

/// `handover run`: adopt systemd's fds, load the config, serve until stopped.
pub fn run_daemon(path: PathBuf) -> i32 {
    // SAFETY: called from main before any thread exists (the tokio runtime is built below,
    // and clap does not start threads); nothing else has adopted fds 3.. .
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
    let base_env: Vec<_> = std::env::vars_os().collect();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            logging::event(Level::Error, "startup", format!("cannot start the event loop: {e}"));
            return EXIT_FAILED;
        }
    };
    let setup = supervisor::Setup {
        config: Arc::new(config),
        config_path: path,
        load_env,
        sockets,
        notifier,
        watchdog: inherited.watchdog,
        base_env,
    };
    match runtime.block_on(supervisor::run(setup)) {
        Ok(code) => code,
        Err(e) => {
            logging::event(Level::Error, "startup", e.to_string());
            EXIT_FAILED
        }
    }
}

/// `handover check`.
pub fn check(path: PathBuf) -> i32 {
    match config::load(&path, &LoadEnv::from_process()) {
        Ok(c) => {
            let listen = if c.listen.is_empty() {
                "sockets from systemd".to_string()
            } else {
                c.listen.iter().map(|l| format!("{}={}", l.name, l.address)).collect::<Vec<_>>().join(", ")
            };
            println!(
                "{}: ok: {} x {} on {listen}; control socket {}",
                path.display(),
                c.workers.count,
                c.workers.program.display(),
                c.control_socket.display()
            );
            EXIT_OK
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
    config::control_socket_of(&t.config.path(), &LoadEnv::from_process()).map_err(|e| {
        eprintln!("handover: {e}");
        EXIT_USAGE
    })
}

fn client_error(e: &ClientError) -> i32 {
    eprintln!("handover: {e}");
    match e {
        ClientError::Unreachable { .. } => EXIT_UNREACHABLE,
        _ => EXIT_FAILED,
    }
}

fn report(outcome: &Outcome) -> i32 {
    if outcome.ok {
        if let Some(m) = &outcome.message {
            println!("{m}");
        }
        EXIT_OK
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
    let timeout = match a.timeout.as_deref().map(config::parse_duration).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("handover: --timeout: {e}");
            return EXIT_USAGE;
        }
    };
    let tty = std::io::stderr().is_terminal();
    let mut shown = false;
    let result = client::call(&path, &Request::Reload {}, timeout, !a.no_wait, |p| {
        if tty {
            eprint!("\rgeneration {}: new workers ready {}/{}", p.generation, p.ready, p.total);
            let _ = std::io::stderr().flush();
            shown = true;
        }
    });
    if shown {
        eprintln!();
    }
    match result {
        Ok(Some(outcome)) => report(&outcome),
        Ok(None) => {
            println!("reload requested");
            EXIT_OK
        }
        Err(e) => client_error(&e),
    }
}

fn simple_request(t: &Target, request: &Request) -> i32 {
    let path = match control_path(t) {
        Ok(p) => p,
        Err(code) => return code,
    };
    match client::call(&path, request, Some(Duration::from_secs(30)), true, |_| {}) {
        Ok(Some(outcome)) => report(&outcome),
        Ok(None) => EXIT_OK,
        Err(e) => client_error(&e),
    }
}

/// `handover scale N`.
pub fn scale(a: ScaleArgs) -> i32 {
    simple_request(&a.target, &Request::Scale { count: a.count })
}

/// `handover status`.
pub fn status(a: StatusArgs) -> i32 {
    let path = match control_path(&a.target) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let outcome = match client::call(&path, &Request::Status {}, Some(Duration::from_secs(10)), true, |_| {}) {
        Ok(Some(o)) => o,
        Ok(None) => return EXIT_FAILED,
        Err(e) => return client_error(&e),
    };
    let Some(status) = outcome.status.as_ref().filter(|_| outcome.ok) else { return report(&outcome) };
    if a.json {
        match serde_json::to_string_pretty(status) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("handover: {e}");
                return EXIT_FAILED;
            }
        }
    } else {
        print!("{}", render_status(status));
    }
    EXIT_OK
}

/// The human-readable `handover status` table.
pub fn render_status(s: &Status) -> String {
    use std::fmt::Write as _;
    // Worker text is cleaned where it is received; clean every string again here, so that
    // nothing in a reply can drive the terminal.
    let clean = crate::worker::readiness::strip_control_chars;
    let mut out = String::new();
    let _ = writeln!(out, "{} (pid {}): {}: {}", clean(&s.name), s.pid, clean(&s.phase), clean(&s.summary));
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
    let _ = writeln!(
        out,
        "\n{:<5} {:<5} {:>8} {:<9} {:>9} {:>8}  STATUS",
        "GEN", "SLOT", "PID", "STATE", "SINCE", "RESTARTS"
    );
    for w in &s.workers {
        let _ = writeln!(
            out,
            "{:<5} {:<5} {:>8} {:<9} {:>8.1}s {:>8}  {}",
            w.generation,
            w.slot,
            w.pid,
            clean(&w.state),
            w.since_secs,
            w.restarts,
            clean(w.status.as_deref().unwrap_or(""))
        );
    }
    let _ = writeln!(out, "\n{:<16} {:<8} ADDRESS", "SOCKET", "ORIGIN");
    for k in &s.sockets {
        let _ = writeln!(out, "{:<16} {:<8} {}", clean(&k.name), clean(&k.origin), clean(&k.address));
    }
    if let Some(last) = &s.last_reload {
        let _ = writeln!(out, "\nlast reload: {}", clean(last));
    }
    out
}
