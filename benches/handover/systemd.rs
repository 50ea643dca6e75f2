//! Scenario 3: `systemctl restart`, `handover upgrade` and `kill -9` of the master under a real systemd,
//! through the e2e harness (`tests/e2e/sandbox.sh` boots systemd as PID 1 of a container
//! with the host's network; `packaging/build-deb.sh` builds the package it installs).
//!
//! The container runs the shipped `handover@.service` + `handover@.socket` (instance
//! `bench`, its own port and container name, so it never meets the e2e suite's), with 4
//! demo workers that boot in 2 s; the load comes from this process over loopback.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::harness::{handover_bin, run_bounded, CmdOutput};
use crate::stats::{self, Counts, Window};

/// The socket unit's port for the benchmark (the e2e suite uses 18471-18475).
const PORT: u16 = 18571;
/// Our container's name (sandbox.sh requires the prefix handover-e2e).
const NAME: &str = "handover-e2e-bench";
const UNIT: &str = "handover@bench.service";
const SOCKET: &str = "handover@bench.socket";
const CONFIG: &str = "/etc/handover/bench.toml";
/// Steady load before the operation.
const STEADY: Duration = Duration::from_secs(2);
/// Load after the service serves again.
const TAIL: Duration = Duration::from_secs(1);

/// One operation under load.
#[derive(Debug, Clone, Serialize)]
pub struct RestartRun {
    /// "systemctl restart" or "kill -9 of the master".
    pub operation: String,
    /// "new connection per request" or "keep-alive".
    pub clients: String,
    /// Request counts over the run.
    pub counts: Counts,
    /// Failures by kind (refused, reset, timeout, other) among the first 100 kept.
    pub failure_kinds: BTreeMap<String, u64>,
    /// From the operation until the service serves again (systemctl restart returned; or a
    /// new MainPID active with all workers ready).
    pub back_s: f64,
    /// The steady window before.
    pub steady: Window,
    /// From the operation to `TAIL` after it served again.
    pub during: Window,
}

/// Scenario 3's results.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    /// Whether the scenario ran.
    pub ran: bool,
    /// Why not, or where the harness came from.
    pub note: String,
    /// `systemctl --version`, first line.
    pub systemd: String,
    /// The runs.
    pub runs: Vec<RestartRun>,
}

/// The e2e harness and the packaging script, or why they are not usable.
fn harness_root(e2e_root: &Path) -> Result<PathBuf, String> {
    let sandbox = e2e_root.join("tests/e2e/sandbox.sh");
    let deb = e2e_root.join("packaging/build-deb.sh");
    if !sandbox.exists() || !deb.exists() {
        return Err(format!(
            "the e2e harness is not in {} (tests/e2e/sandbox.sh and packaging/build-deb.sh); pass --e2e-root",
            e2e_root.display()
        ));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the e2e harness needs root".into());
    }
    Ok(e2e_root.to_path_buf())
}

/// The container, powered off on drop.
struct Sandbox {
    script: PathBuf,
}

impl Sandbox {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.script);
        c.env("E2E_NAME", NAME);
        c
    }

    fn up(root: &Path, deb_dir: &Path) -> Result<Sandbox> {
        let sb = Sandbox { script: root.join("tests/e2e/sandbox.sh") };
        let _ = run_bounded("sandbox.sh down", sb.down_cmd(), Duration::from_secs(60));
        let mut c = sb.cmd();
        c.arg("up").env("E2E_BIND", format!("{}:/mnt/deb", deb_dir.display()));
        let out = run_bounded("sandbox.sh up", c, Duration::from_secs(300))?;
        if out.code != 0 {
            bail!("sandbox.sh up failed: {}{}", out.stdout, out.stderr);
        }
        eprintln!("  container: {}", out.stdout.trim());
        Ok(sb)
    }

    fn down_cmd(&self) -> Command {
        let mut c = self.cmd();
        c.arg("down");
        c
    }

    fn exec(&self, argv: &[&str]) -> Result<CmdOutput> {
        let mut c = self.cmd();
        c.arg("exec").args(argv);
        run_bounded(&format!("in the container: {}", argv.join(" ")), c, Duration::from_secs(150))
    }

    fn run(&self, argv: &[&str]) -> Result<String> {
        let out = self.exec(argv)?;
        if out.code != 0 {
            bail!("`{}` in the container exited {}: {}{}", argv.join(" "), out.code, out.stdout, out.stderr);
        }
        Ok(out.stdout.trim_end().to_owned())
    }

    fn sh(&self, script: &str) -> Result<String> {
        self.run(&["sh", "-c", script])
    }

    fn write(&self, path: &str, content: &str) -> Result<()> {
        let dir = Path::new(path).parent().and_then(Path::to_str).unwrap_or("/");
        self.run(&["sh", "-c", "mkdir -p \"$1\" && printf '%s' \"$2\" > \"$3\"", "sh", dir, content, path])?;
        Ok(())
    }

    fn prop(&self, unit: &str, prop: &str) -> Result<String> {
        self.run(&["systemctl", "show", "-P", prop, unit])
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = run_bounded("sandbox.sh down", self.down_cmd(), Duration::from_secs(120));
    }
}

fn config() -> String {
    format!(
        "name = \"bench\"\n\n[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:{PORT}\"\n\n[workers]\n\
         command = [\"/usr/bin/handover\", \"demo-worker\", \"--boot-delay\", \"2s\"]\ncount = 4\n\
         graceful_timeout = \"10s\"\n"
    )
}

fn kind(reason: &str) -> &'static str {
    if reason.contains("refused") {
        "refused"
    } else if reason.contains("reset") {
        "reset"
    } else if reason.contains("timeout") {
        "timeout"
    } else {
        "other"
    }
}

fn measured(
    operation: &str,
    keep_alive: bool,
    sb: &Sandbox,
    act: impl FnOnce(&Sandbox) -> Result<()>,
) -> Result<RestartRun> {
    let addr = SocketAddr::from(([127, 0, 0, 1], PORT));
    let load = stats::load(addr, crate::reload::CLIENTS, keep_alive, Duration::from_secs(120))?;
    let t0 = load.started_at();
    stats::wait_flowing(&load, Duration::from_secs(10))?;
    std::thread::sleep(STEADY); // the steady window being measured
    let trigger = t0.elapsed();
    let result = act(sb);
    let back = t0.elapsed();
    std::thread::sleep(TAIL); // load after the service is back
    let end = t0.elapsed();
    let report = load.stop();
    result?;
    let mut failure_kinds = BTreeMap::new();
    for f in &report.failures {
        *failure_kinds.entry(kind(&f.reason).to_owned()).or_insert(0) += 1;
    }
    Ok(RestartRun {
        operation: operation.into(),
        clients: if keep_alive { "keep-alive".into() } else { "new connection per request".into() },
        counts: Counts::of(&report),
        failure_kinds,
        back_s: (back - trigger).as_secs_f64(),
        steady: Window::of(&report, trigger.saturating_sub(STEADY), trigger),
        during: Window::of(&report, trigger, end),
    })
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn all_ready(sb: &Sandbox) -> Result<bool> {
    let Ok(out) = sb.run(&["handover", "status", "--json", "-c", CONFIG]) else { return Ok(false) };
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let w = v["workers"].as_array().cloned().unwrap_or_default();
    Ok(w.len() == 4 && w.iter().all(|w| w["state"] == "ready"))
}

/// Runs scenario 3 with the harness under `e2e_root`.
pub fn run(e2e_root: &Path) -> Result<Restart> {
    let root = match harness_root(e2e_root) {
        Ok(r) => r,
        Err(why) => {
            eprintln!("  skipped: {why}");
            return Ok(Restart { ran: false, note: why, systemd: String::new(), runs: Vec::new() });
        }
    };
    if std::net::TcpListener::bind(("127.0.0.1", PORT)).is_err() {
        bail!("port 127.0.0.1:{PORT} is in use on this host; scenario 3 needs it");
    }
    let mut c = Command::new(root.join("packaging/build-deb.sh"));
    c.arg("--no-build").env("HANDOVER_BIN", handover_bin());
    let out = run_bounded("packaging/build-deb.sh", c, Duration::from_secs(120))?;
    if out.code != 0 {
        bail!("packaging/build-deb.sh failed: {}", out.stderr);
    }
    let deb = PathBuf::from(out.stdout.trim());
    let deb_dir = deb.parent().context("deb dir")?;
    let deb_name = deb.file_name().and_then(|n| n.to_str()).context("deb name")?.to_owned();
    let sb = Sandbox::up(&root, deb_dir)?;
    let systemd = sb.sh("systemctl --version | head -n1")?;
    sb.sh(&format!("dpkg -i /mnt/deb/{deb_name} >/dev/null"))?;
    sb.write(
        &format!("/etc/systemd/system/{SOCKET}.d/listen.conf"),
        &format!("[Socket]\nListenStream=127.0.0.1:{PORT}\nFileDescriptorName=http\n"),
    )?;
    sb.write(CONFIG, &config())?;
    sb.run(&["systemctl", "daemon-reload"])?;
    sb.run(&["systemctl", "start", SOCKET, UNIT])?;
    wait_for("every worker ready", Duration::from_secs(30), || all_ready(&sb))?;
    let mut runs = Vec::new();
    for keep_alive in [false, true] {
        let r = measured("systemctl restart", keep_alive, &sb, |sb| {
            sb.run(&["systemctl", "restart", UNIT])?;
            Ok(())
        })?;
        eprintln!("{}", line(&r));
        runs.push(r);
    }
    // The same app and load, `handover upgrade` instead of a restart (issue 8): the binary
    // re-executes in place; the workers serve throughout.
    for keep_alive in [false, true] {
        wait_for("every worker ready", Duration::from_secs(30), || all_ready(&sb))?;
        let main = sb.prop(UNIT, "MainPID")?;
        let r = measured("handover upgrade", keep_alive, &sb, |sb| {
            sb.run(&["handover", "upgrade", "-c", CONFIG])?;
            Ok(())
        })?;
        let after = sb.prop(UNIT, "MainPID")?;
        if after != main {
            bail!("handover upgrade changed MainPID from {main} to {after}");
        }
        eprintln!("{}", line(&r));
        runs.push(r);
    }
    for keep_alive in [false, true] {
        wait_for("every worker ready", Duration::from_secs(30), || all_ready(&sb))?;
        let old = sb.prop(UNIT, "MainPID")?;
        let r = measured("kill -9 of the master", keep_alive, &sb, |sb| {
            sb.run(&["kill", "-9", &old])?;
            wait_for("a new master with every worker ready", Duration::from_secs(60), || {
                let main = sb.prop(UNIT, "MainPID")?;
                if main == old || main == "0" || sb.prop(UNIT, "ActiveState")? != "active" {
                    return Ok(false);
                }
                all_ready(sb)
            })
        })?;
        eprintln!("{}", line(&r));
        runs.push(r);
    }
    let _ = sb.run(&["systemctl", "stop", UNIT, SOCKET]);
    drop(sb);
    Ok(Restart {
        ran: true,
        note: format!(
            "harness: {} ({}), container {NAME}",
            root.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(&root).display(),
            harness_commit(&root)
        ),
        systemd,
        runs,
    })
}

fn harness_commit(root: &Path) -> String {
    std::fs::read_to_string(root.join(".bench-e2e-commit"))
        .map(|s| format!("exported from commit {}", s.trim()))
        .unwrap_or_else(|_| "this repository".into())
}

/// One console line.
pub fn line(r: &RestartRun) -> String {
    format!(
        "  {} [{}]: back after {:.2}s; sent {} failed {} {:?}; gap steady {:.1}ms -> {:.1}ms; max latency {:.1} -> {:.1}ms",
        r.operation,
        r.clients,
        r.back_s,
        r.counts.sent,
        r.counts.failed,
        r.failure_kinds,
        r.steady.gap_ms,
        r.during.gap_ms,
        r.steady.max_ms,
        r.during.max_ms
    )
}
