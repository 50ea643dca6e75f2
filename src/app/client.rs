//! The client commands (`reload`, `status`, `scale`, `upgrade`): one request to the
//! daemon's control socket each, through one helper ([`call_daemon`](self)), and the exit
//! code from its answer.
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::print_out;
use crate::cli::{ReloadArgs, RollbackArgs, ScaleArgs, StatusArgs, Target, UpgradeArgs};
use crate::config::{self, LoadEnv};
use crate::control::client::{self, ClientError, Limits, ANSWER_TIMEOUT};
use crate::control::proto::{Outcome, Progress, Request};
use crate::{EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE};

/// The control socket of `t`, or the exit code for why there is none.
fn control_path(t: &Target) -> Result<PathBuf, i32> {
    if let Some(p) = &t.control {
        return Ok(p.clone());
    }
    let path = t.config_path().map_err(|e| {
        eprintln!("handover: {e}");
        EXIT_USAGE
    })?;
    match config::control_socket_of(&path, &LoadEnv::from_process()) {
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

/// What every client command does first and last: find the control socket (`--control`, or
/// the config file's, read leniently), check `--timeout` before anything is sent, send the
/// request with the [`Limits`] made from that timeout, and map a failure to its exit code
/// (said on stderr). `Ok(None)`: the daemon was not waited for.
fn call_daemon(
    target: &Target,
    request: &Request,
    timeout: Option<&str>,
    limits: impl FnOnce(Option<Duration>) -> Limits,
    wait: bool,
    on_progress: impl FnMut(Progress),
) -> Result<Option<Outcome>, i32> {
    let path = control_path(target)?;
    let timeout = client_timeout(timeout)?;
    client::call_with(&path, request, limits(timeout), wait, on_progress).map_err(|e| client_error(&e))
}

/// The limits of a request answered at once (`status`, `scale`): `--timeout`, or
/// [`ANSWER_TIMEOUT`].
fn answer_within(timeout: Option<Duration>) -> Limits {
    Limits { answer: timeout.unwrap_or(ANSWER_TIMEOUT), total: None, probe: false }
}

/// `handover reload`.
pub fn reload(a: ReloadArgs) -> i32 {
    let result = roll(&a.target, &Request::Reload {}, a.timeout.as_deref(), a.no_wait);
    match result {
        Ok(Some(outcome)) if outcome.ok && a.watch => {
            let code = report(&outcome);
            match outcome.generation {
                Some(generation) if code == EXIT_OK => watch(&a.target, generation),
                _ => code,
            }
        }
        Ok(Some(outcome)) => report(&outcome),
        Ok(None) => print_out("reload requested\n"),
        Err(code) => code,
    }
}

/// `handover rollback`: a reload to the previous release, waited for as `reload` is.
pub fn rollback(a: RollbackArgs) -> i32 {
    match roll(&a.target, &Request::Rollback {}, a.timeout.as_deref(), a.no_wait) {
        Ok(Some(outcome)) => report(&outcome),
        Ok(None) => print_out("rollback requested\n"),
        Err(code) => code,
    }
}

/// `handover reload --watch`, once the reload succeeded: asks for the status every second
/// until the watch of `generation` is over; exit 0 if it still serves then, 1 if it was
/// rolled back automatically (the reason on stderr).
fn watch(target: &Target, generation: u64) -> i32 {
    let tty = std::io::stderr().is_terminal();
    loop {
        let status = match call_daemon(target, &Request::Status {}, None, answer_within, true, |_| {}) {
            Ok(Some(o)) => match o.status {
                Some(s) => s,
                None => return report(&o),
            },
            Ok(None) => return EXIT_FAILED,
            Err(code) => return code,
        };
        match &status.watch {
            Some(w) if w.generation == generation => {
                if tty {
                    let mut err = std::io::stderr().lock();
                    let left = crate::text::human(Duration::from_secs_f64(w.secs_left.max(0.0)));
                    let _ =
                        write!(err, "\rwatching generation {generation}: {left} left\x1b[K").and_then(|()| err.flush());
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            _ => {
                if tty {
                    let _ = writeln!(std::io::stderr());
                }
                return watch_result(&status, generation);
            }
        }
    }
}

/// What `reload --watch` says once the watch of `generation` is over.
fn watch_result(status: &crate::control::proto::Status, generation: u64) -> i32 {
    // Rolled back: the watch said so (its rollback may still be booting, with `generation`
    // still active meanwhile), or another generation serves now.
    let auto = status.auto_rollback.as_ref().filter(|a| a.generation == generation);
    let rolled_back = auto.is_some() || status.active_generation != generation;
    if !rolled_back {
        let verdict = status.verdict.as_deref().unwrap_or("not watched (reload.watch is 0)");
        return print_out(&format!("generation {generation} serves after its watch: {verdict}\n"));
    }
    let why = match auto {
        Some(a) => a.message.clone(),
        None => format!("generation {generation} no longer serves (generation {} does)", status.active_generation),
    };
    eprintln!("handover: {why}");
    EXIT_FAILED
}

/// A reload or a rollback, waited for with progress on a terminal.
fn roll(target: &Target, request: &Request, timeout: Option<&str>, no_wait: bool) -> Result<Option<Outcome>, i32> {
    let tty = std::io::stderr().is_terminal();
    let mut shown = false;
    // The daemon must answer a status first (within ANSWER_TIMEOUT): a stopped or wedged
    // one is told apart (exit 3) from a reload that takes long, and gets no request.
    let limits = |timeout| Limits { answer: ANSWER_TIMEOUT, total: timeout, probe: true };
    let result = call_daemon(target, request, timeout, limits, !no_wait, |p| {
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
    result
}

/// `handover upgrade`: exit 0 once the new binary runs the daemon.
pub fn upgrade(a: UpgradeArgs) -> i32 {
    let limits = |t: Option<Duration>| Limits {
        answer: ANSWER_TIMEOUT,
        total: Some(t.unwrap_or(Duration::from_secs(300))),
        probe: true,
    };
    match call_daemon(&a.target, &Request::Upgrade {}, a.timeout.as_deref(), limits, true, |_| {}) {
        Ok(Some(outcome)) => report(&outcome),
        Ok(None) => EXIT_OK,
        Err(code) => code,
    }
}

/// `handover scale N`.
pub fn scale(a: ScaleArgs) -> i32 {
    let request = Request::Scale { count: a.count };
    match call_daemon(&a.target, &request, a.timeout.as_deref(), answer_within, true, |_| {}) {
        Ok(Some(outcome)) => report(&outcome),
        Ok(None) => EXIT_OK,
        Err(code) => code,
    }
}

/// `handover status`.
pub fn status(a: StatusArgs) -> i32 {
    let outcome = match call_daemon(&a.target, &Request::Status {}, a.timeout.as_deref(), answer_within, true, |_| {}) {
        Ok(Some(o)) => o,
        Ok(None) => return EXIT_FAILED,
        Err(code) => return code,
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
        print_out(&super::status_table::render_status(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::Status;
    use crate::machine::AutoRollbackStatus;

    /// `reload --watch`'s verdict from one status: the watch's own rollback counts even while
    /// its generation boots (the watched generation is still active then, found by e2e 23).
    #[test]
    fn a_rollback_that_still_boots_is_a_rollback() {
        let auto = AutoRollbackStatus { generation: 2, secs_ago: 0.5, message: "gen 2 failed its watch".into() };
        let booting = Status {
            active_generation: 2,
            candidate_generation: Some(3),
            auto_rollback: Some(auto),
            ..Status::default()
        };
        assert_eq!(watch_result(&booting, 2), EXIT_FAILED);
        let done = Status { active_generation: 3, ..booting.clone() };
        assert_eq!(watch_result(&done, 2), EXIT_FAILED);
        // Another generation's rollback, long ago, says nothing about this one.
        let kept = Status { active_generation: 5, candidate_generation: None, ..booting };
        assert_eq!(watch_result(&kept, 5), EXIT_OK);
    }
}
