//! `handover demo`: the quick start. Serves the built-in demo app on 127.0.0.1:8080 with 4
//! workers under a real `handover run`, then shows, under continuous load, that a reload
//! keeps serving (and how long it took, against the app's boot time), and that a broken
//! version is rolled back with the old one still serving. On a terminal it then keeps
//! serving until Ctrl-C, so you can try `curl`, `handover reload` and `handover status`.
//!
//! The daemon is a child process (`handover run -c <temp config>`), exactly as systemd
//! would run it, in its own process group so that Ctrl-C reaches only the tour, which then
//! stops it gracefully.
use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::control::client;
use crate::control::proto::{Outcome, Request};
use crate::demo::loadgen::{self, LoadSpec, Target};

/// `handover demo`'s arguments.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo app listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// How many workers.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Simulated import time of the demo app, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    pub boot_ms: u64,
    /// Run the scripted tour (load + reloads) and exit instead of serving until Ctrl-C.
    #[arg(long)]
    pub tour_only: bool,
}

/// Runs the demo; returns the exit code (0: every reload behaved and no request failed).
pub fn run(args: DemoArgs) -> i32 {
    match tour(&args) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("handover demo: {e}");
            1
        }
    }
}

struct DaemonChild {
    child: Child,
}

impl Drop for DaemonChild {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let _ = self.child.wait();
        }
    }
}

fn config_text(dir: &Path, exe: &Path, args: &DemoArgs, extra: &[&str]) -> String {
    let mut argv = vec![format!("{:?}", exe.display().to_string()), "\"demo-worker\"".to_string()];
    argv.push("\"--boot-delay\"".into());
    argv.push(format!("\"{}ms\"", args.boot_ms));
    argv.extend(extra.iter().map(|a| format!("{a:?}")));
    format!(
        "# written by `handover demo`\nname = \"demo\"\ncontrol_socket = {:?}\n\n[[listen]]\nname = \"http\"\naddress = \"{}\"\n\n\
         [workers]\ncommand = [{}]\ncount = {}\nboot_timeout = \"{}ms\"\ngraceful_timeout = \"10s\"\n",
        dir.join("control.sock").display().to_string(),
        args.listen,
        argv.join(", "),
        args.workers,
        args.boot_ms + 3000,
    )
}

fn tour(args: &DemoArgs) -> Result<bool, String> {
    if std::net::TcpListener::bind(args.listen).is_err() {
        return Err(format!("{} is in use; pick another address with --listen 127.0.0.1:PORT", args.listen));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    let dir = tempfile_dir()?;
    let config = dir.join("demo.toml");
    let control = dir.join("control.sock");
    std::fs::write(&config, config_text(&dir, &exe, args, &[])).map_err(|e| e.to_string())?;
    let log_path = dir.join("handover.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;

    println!(
        "handover demo: {} of a demo app that takes {} ms to boot (its \"import time\")",
        plural(args.workers, "worker"),
        args.boot_ms
    );
    println!("  config   {}", config.display());
    println!("  log      {}", log_path.display());
    let started = Instant::now();
    let mut cmd = Command::new(&exe);
    cmd.arg("run").arg("-c").arg(&config).stdin(Stdio::null()).stdout(log).stderr(log2).process_group(0);
    // SAFETY: prctl is async-signal-safe; if the tour dies, the daemon is told to stop.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("cannot start handover run: {e}"))?;
    let mut daemon = DaemonChild { child };
    wait_serving(&control, &mut daemon, Duration::from_millis(args.boot_ms + 15_000))?;
    println!(
        "\nserving on http://{} after {:.1}s (handover sent READY=1 only now)",
        args.listen,
        started.elapsed().as_secs_f64()
    );

    let mut all_good = true;
    println!("\n1. reload under load: 4 clients keep requesting while a new generation boots");
    let (ok, failed) = reload_under_load(args, &control, &log_path, "new workers ready")?;
    all_good &= ok && failed == 0;

    println!("\n2. reload to a broken version (its workers exit at boot): rolled back, old one keeps serving");
    std::fs::write(&config, config_text(&dir, &exe, args, &["--exit-at-boot", "3"])).map_err(|e| e.to_string())?;
    let (ok, failed) = reload_under_load(args, &control, &log_path, "new workers ready")?;
    all_good &= !ok && failed == 0;
    std::fs::write(&config, config_text(&dir, &exe, args, &[])).map_err(|e| e.to_string())?;

    if !args.tour_only && std::io::stdin().is_terminal() {
        let ctl = control.display();
        println!("\nStill serving. Try it yourself:");
        println!("  curl http://{}/", args.listen);
        println!("  {} status --control {ctl}", exe.display());
        println!("  {} reload --control {ctl}", exe.display());
        println!("  edit {} (e.g. count = 8) and reload again", config.display());
        println!("Press Ctrl-C to stop (handover drains the workers gracefully).");
        wait_for_interrupt();
    }
    println!("\nstopping: SIGTERM to handover (workers drain and exit)");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    let status = daemon.child.wait().map_err(|e| e.to_string())?;
    println!("handover exited with {status}");
    if all_good {
        let _ = std::fs::remove_dir_all(&dir);
        println!("\ndemo: every reload behaved and no request failed");
    } else {
        println!(
            "\ndemo: something went wrong (see above; handover's log, workers' output included, is kept in {})",
            log_path.display()
        );
    }
    Ok(all_good)
}

/// Runs a reload through the control socket while loading the app; prints what happened.
/// Returns (reload succeeded, failed requests).
fn reload_under_load(args: &DemoArgs, control: &Path, log: &Path, label: &str) -> Result<(bool, u64), String> {
    let mut spec = LoadSpec::new(Target::Tcp(args.listen));
    spec.clients = 4;
    spec.max_duration = Duration::from_secs(120);
    let load = loadgen::start(spec).map_err(|e| e.to_string())?;
    let t0 = load.started_at();
    std::thread::sleep(Duration::from_millis(500)); // a little steady load first
    let from = t0.elapsed();
    let begun = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let result = client::call(control, &Request::Reload {}, Some(Duration::from_secs(120)), true, |p| {
        if tty {
            print!("\r   generation {}: {label} {}/{}", p.generation, p.ready, p.total);
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
    });
    let took = begun.elapsed();
    let to = t0.elapsed();
    std::thread::sleep(Duration::from_millis(300)); // and a little after
    let report = load.stop();
    if tty {
        println!();
    }
    let outcome = match result {
        Ok(Some(o)) => o,
        Ok(None) => Outcome::error("no answer"),
        Err(e) => return Err(e.to_string()),
    };
    match (&outcome.ok, &outcome.message, &outcome.error) {
        (true, Some(m), _) => println!("   reload succeeded in {:.2}s: {m}", took.as_secs_f64()),
        (_, _, Some(e)) => {
            // The daemon's stderr, where its workers' output goes, is the demo's log file.
            let e = e.replace(DAEMON_OUTPUT_HINT, &format!("its output is in {}", log.display()));
            println!("   reload failed after {:.2}s (exit 1 for `handover reload`): {e}", took.as_secs_f64())
        }
        _ => println!("   reload: {outcome:?}"),
    }
    let gens: Vec<String> = report.bodies_by_gen.iter().map(|(g, n)| format!("gen {g}: {n}")).collect();
    println!(
        "   requests: {} sent, {} failed; responses by generation: {}",
        report.sent,
        report.failed,
        gens.join(", ")
    );
    println!(
        "   longest time without a completed request during the reload: {:.1} ms (the app boots in {} ms; gunicorn's HUP would stall that long)",
        report.longest_gap_within(from, to).as_secs_f64() * 1000.0,
        args.boot_ms
    );
    for f in report.failures.iter().take(5) {
        println!("   failed at {:?}: {}", f.at, f.reason);
    }
    Ok((outcome.ok, report.failed))
}

/// What the daemon says of a failed worker's output when it is not under journald: on its
/// stderr, which the demo sends to its log file.
const DAEMON_OUTPUT_HINT: &str = "its output is above, on handover's stderr";

/// `1 worker`, `4 workers`.
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

fn wait_serving(control: &Path, daemon: &mut DaemonChild, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return Err(format!("handover run exited early ({status}); see its log"));
        }
        if let Ok(Some(o)) = client::call(control, &Request::Status {}, Some(Duration::from_secs(2)), true, |_| {}) {
            if o.status.as_ref().is_some_and(|s| s.phase == "running") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("not serving within {timeout:?}; see the log"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_interrupt() {
    // SAFETY: plain signal-set manipulation on initialised sets; blocking SIGINT/SIGTERM in
    // this thread (the load threads have ended) so sigwait can take them.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("handover-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}
