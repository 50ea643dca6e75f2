//! `handover run` and `handover check`: the daemon started (or taken over from the old
//! binary of `handover upgrade`), and the config checked as the daemon would load it.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::print_out;
use crate::config::{self, LoadEnv};
use crate::machine::Level;
use crate::sockets::{SocketError, Sockets};
use crate::systemd::Notifier;
use crate::{logging, supervisor, EXIT_FAILED, EXIT_USAGE};

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

/// Arguments of a worker command that look like relative file paths: `gunicorn.conf.py`,
/// `conf/app.ini`, `--config=app.toml`, `unix:run/app.sock` (no URL, no option name, no
/// shell script with spaces).
fn relative_paths(args: &[String]) -> Vec<&str> {
    const FILE_ENDINGS: [&str; 14] = [
        ".py", ".conf", ".cfg", ".ini", ".toml", ".json", ".yaml", ".yml", ".js", ".mjs", ".cjs", ".rb", ".sock",
        ".env",
    ];
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((_, value)) if a.starts_with('-') => value,
            _ => a.as_str(),
        })
        .filter(|a| !a.is_empty() && !a.starts_with('-') && !a.contains("://") && !a.contains(char::is_whitespace))
        .filter(|a| {
            let file = a.rsplit_once(':').map_or(*a, |(_, f)| f);
            !file.starts_with('/') && (file.contains('/') || FILE_ENDINGS.iter().any(|e| file.ends_with(e)))
        })
        .collect()
}

/// What stops the workers' user from running the program or starting in the working
/// directory, where `handover check` can tell who that is: `[workers] user`, or, when it
/// runs as root without one, any other user (the shipped unit runs each app as a user of
/// its own, `handover-APP`), so that a venv under a private home is caught before a start
/// that could only fail.
fn access_warnings(c: &config::Config) -> Vec<String> {
    let wc = &c.workers;
    let (who, as_whom) = match &wc.credentials {
        Some(cred) => (cred.clone(), format!("workers.user (uid {})", cred.uid)),
        None if nix::unistd::geteuid().is_root() => (
            config::Credentials { uid: u32::MAX - 1, gid: u32::MAX - 1, groups: vec![] },
            format!("a user of its own (under handover@.service: handover-{})", c.name),
        ),
        None => return vec![],
    };
    let mut warnings = vec![];
    let mut check = |key: &str, p: &Path| {
        if let Some(why) = config::denied_to(p, &who) {
            warnings.push(format!("{key}: {} cannot be used by {as_whom}: {why}", p.display()));
        }
    };
    check("workers.command", &wc.program);
    if let Some(wd) = &wc.working_directory {
        check("workers.working_directory", wd);
    }
    warnings
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
            // Relative to the directory the workers start in: under systemd that is `/`, not
            // the one `handover check` runs in, where they would have been found.
            if c.workers.working_directory.is_none() {
                for arg in relative_paths(c.workers.command.get(1..).unwrap_or_default()) {
                    eprintln!(
                        "{}: warning: workers.command: {arg:?} is a relative path and no \
                         workers.working_directory is set: workers start in / under systemd \
                         (set working_directory to the app's directory)",
                        path.display()
                    );
                }
            }
            for warning in access_warnings(&c) {
                eprintln!("{}: warning: {warning}", path.display());
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

#[cfg(test)]
mod tests {
    use super::relative_paths;

    #[test]
    fn relative_file_arguments_are_told_from_modules_options_and_scripts() {
        let args: Vec<String> = [
            "-c",
            "gunicorn.conf.py",
            "--config=app.toml",
            "--bind=unix:run/app.sock",
            "conf/app.ini",
            "app:app",
            "--preload",
            "-w",
            "4",
            "/etc/app.conf",
            "127.0.0.1:8000",
            "exec gunicorn -c x.py",
            "http://example.com/x.py",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(relative_paths(&args), vec!["gunicorn.conf.py", "app.toml", "unix:run/app.sock", "conf/app.ini"]);
    }
}
