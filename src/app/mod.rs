//! What each subcommand does, and the mapping of failures to exit codes (SPEC §1, the
//! constants at the crate root): 0 ok; 1 operation failed; 2 bad usage or bad config
//! (permanent: the unit lists it in `RestartPreventExitStatus=`); 3 daemon unreachable.
//!
//! This file dispatches; `daemon.rs` starts the daemon (`run`, `check`); `client.rs` holds
//! the client commands, which share one daemon-call helper; `status_table.rs` renders
//! `handover status`.
mod client;
mod daemon;
mod status_table;

pub use client::{reload, rollback, scale, status, upgrade, MAX_CLIENT_TIMEOUT};
pub use daemon::{check, run_daemon};
pub use status_table::render_status;

use std::io::Write;

use crate::cli::{Cli, Command, CompletionsArgs};
use crate::{EXIT_FAILED, EXIT_OK};

/// Runs the parsed command line; returns the exit code.
pub fn main(cli: Cli) -> i32 {
    match cli.command {
        Command::Run(c) => run_daemon(c.path()),
        Command::Check(c) => check(c.path()),
        Command::Reload(a) => reload(a),
        Command::Rollback(a) => rollback(a),
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
