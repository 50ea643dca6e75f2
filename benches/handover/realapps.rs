//! Scenario 7: real servers under handover against the same servers run alone (issue 9).
//!
//! - Memory: an app that builds ~80 MB at import, 4 workers; PSS of every process (handover
//!   included) of the README's gunicorn recipe (one handover worker running
//!   `gunicorn --preload -w 4`) vs `gunicorn --preload -w 4` alone, and of 4 handover workers
//!   each running `gunicorn -w 1`.
//! - Latency: uvicorn `--fd 3` on a socket handover binds (`nodelay` on, then off) vs
//!   `uvicorn --port`: wrk's keep-alive p50, rounds alternating between the set-ups.
//!
//! The apps and the recipe's files are those of `tests/real_apps/` (the CI test runs the
//! same comparisons with a smaller budget).
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use handover::demo::measure::{process_tree, pss_kib};

use crate::harness::{handover_bin, run_bounded, Proc};
use crate::stats::median;

/// Latency rounds per set-up.
const ROUNDS: usize = 5;
/// wrk's arguments (without URL) for the latency rounds.
const WRK_ARGS: [&str; 5] = ["-t1", "-c4", "-d3s", "--latency", "--timeout=5s"];

/// Scenario 7's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RealApps {
    /// gunicorn 27 and uvicorn versions used.
    pub versions: String,
    /// PSS of `gunicorn --preload -w 4` alone, MiB.
    pub gunicorn_alone_mib: f64,
    /// PSS of handover + one `gunicorn --preload -w 4` (the README's recipe), MiB.
    pub recipe_mib: f64,
    /// PSS of handover + 4 × `gunicorn -w 1`, MiB.
    pub four_arbiters_mib: f64,
    /// recipe / alone.
    pub memory_ratio: f64,
    /// 4 arbiters / alone.
    pub four_arbiters_ratio: f64,
    /// wrk p50 of `uvicorn --port`, per round, ms.
    pub port_p50_ms: Vec<f64>,
    /// wrk p50 of `uvicorn --fd 3` behind handover (`nodelay` on), per round, ms.
    pub fd_p50_ms: Vec<f64>,
    /// The same with `nodelay = false`, one round, ms.
    pub fd_without_nodelay_p50_ms: f64,
    /// median(fd) / median(port).
    pub latency_ratio: f64,
    /// wrk's command line.
    pub wrk: String,
}

fn apps_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/real_apps")
}

fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `handover run` binding its own socket, from a config written here.
struct Bound {
    proc: Proc,
    config: PathBuf,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Bound {
    fn start(command: &[String], count: usize, env: &[(&str, &str)], nodelay: bool) -> Result<Bound> {
        let dir = tempfile::Builder::new().prefix("realapps-bench-").tempdir()?;
        let addr = free_addr()?;
        let config = dir.path().join("app.toml");
        let argv: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k} = {v:?}")).collect();
        std::fs::write(
            &config,
            format!(
                "name = \"app\"\ncontrol_socket = {:?}\n\n[[listen]]\nname = \"http\"\naddress = \"{addr}\"\n\
                 nodelay = {nodelay}\n\n[workers]\ncommand = [{}]\ncount = {count}\nworking_directory = {:?}\n\
                 env = {{ {} }}\nboot_timeout = \"60s\"\ngraceful_timeout = \"15s\"\n",
                dir.path().join("control.sock").display().to_string(),
                argv.join(", "),
                apps_dir().display().to_string(),
                env.join(", ")
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("handover.log"))?;
        let mut cmd = Command::new(handover_bin());
        cmd.args(["run", "-c"])
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let proc = Proc::spawn("handover (scenario 7)", cmd)?;
        proc.mark_master();
        let b = Bound { proc, config, addr, _dir: dir };
        b.wait_ready(count)?;
        Ok(b)
    }

    fn wait_ready(&self, count: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut cmd = Command::new(handover_bin());
            cmd.args(["status", "--json", "-c"]).arg(&self.config);
            if let Ok(out) = run_bounded("handover status", cmd, Duration::from_secs(10)) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&out.stdout) {
                    let ready = v["workers"].as_array().into_iter().flatten().filter(|w| w["state"] == "ready").count();
                    if ready == count {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self._dir.path().join("handover.log")).unwrap_or_default();
                bail!("handover's {count} workers not ready within 60 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50)); // polling the daemon's status, with a deadline
        }
    }

    fn stop(mut self) {
        self.proc.stop(libc::SIGTERM, Duration::from_secs(30));
    }
}

/// One GET on a fresh connection; true on a 200.
fn get_ok(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.starts_with("HTTP/1.1 200")
}

/// Waits until the tree under `pid` has `n` processes and serves; its PSS in MiB.
fn settled_pss_mib(pid: i32, n: usize, addr: SocketAddr, what: &str) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while process_tree(pid).len() < n {
        if Instant::now() > deadline {
            bail!("{what}: {n} processes not up within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50)); // polling /proc, with a deadline
    }
    for _ in 0..40 {
        if !get_ok(addr) {
            bail!("{what} does not serve");
        }
    }
    Ok(process_tree(pid).iter().map(|&p| pss_kib(p)).sum::<u64>() as f64 / 1024.0)
}

fn gunicorn_args(workers: &str) -> Vec<String> {
    [
        "-c",
        "gunicorn.conf.py",
        "--preload",
        "-w",
        workers,
        "--worker-class",
        "gthread",
        "--threads",
        "2",
        "--no-control-socket",
        "wsgi_app:app",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn wrk_p50_ms(addr: SocketAddr) -> Result<f64> {
    let mut cmd = Command::new("wrk");
    cmd.args(WRK_ARGS).arg(format!("http://{addr}/"));
    let out = run_bounded("wrk", cmd, Duration::from_secs(30))?;
    let counts = handover::demo::measure::WrkReport::parse(&out.stdout);
    if out.code != 0 || counts.errors() > 0 {
        bail!("wrk failed or saw errors ({}): {}", out.code, out.stdout);
    }
    counts.p50_ms.with_context(|| format!("no 50% line in wrk's output:\n{}", out.stdout))
}

/// Runs scenario 7 with the servers of `venv`.
pub fn run(venv: &Path) -> Result<RealApps> {
    let gunicorn = venv.join("bin/gunicorn");
    let uvicorn = venv.join("bin/uvicorn");
    if !uvicorn.exists() {
        bail!("{} not found: run benches/run.sh (it installs uvicorn into the venv)", uvicorn.display());
    }
    let version_of = |program: &Path| -> Result<String> {
        let mut c = Command::new(program);
        c.arg("--version");
        Ok(crate::harness::run_bounded(&program.display().to_string(), c, Duration::from_secs(30))?
            .stdout
            .trim()
            .to_owned())
    };
    let versions = format!("{}; {}", version_of(&gunicorn)?, version_of(&uvicorn)?);

    // Memory.
    let env = [("APP_BALLAST_MB", "80"), ("APP_IMPORT_SECONDS", "0"), ("PYTHONDONTWRITEBYTECODE", "1")];
    let addr = free_addr()?;
    let mut cmd = Command::new(&gunicorn);
    cmd.args(gunicorn_args("4"))
        .args(["--bind", &addr.to_string()])
        .current_dir(apps_dir())
        .envs(env)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut alone = Proc::spawn("gunicorn --preload -w 4", cmd)?;
    let alone_mib = settled_pss_mib(alone.pid(), 5, addr, "gunicorn --preload -w 4")?;
    alone.stop(libc::SIGTERM, Duration::from_secs(20));
    let mut recipe = vec![gunicorn.display().to_string()];
    recipe.extend(gunicorn_args("4"));
    let h = Bound::start(&recipe, 1, &env, true)?;
    let recipe_mib = settled_pss_mib(h.proc.pid(), 6, h.addr, "handover + gunicorn --preload -w 4")?;
    h.stop();
    let mut one = vec![gunicorn.display().to_string()];
    one.extend(gunicorn_args("1"));
    let h = Bound::start(&one, 4, &env, true)?;
    let four_mib = settled_pss_mib(h.proc.pid(), 9, h.addr, "handover + 4 x gunicorn -w 1")?;
    h.stop();

    // Latency.
    let env = [("APP_IMPORT_SECONDS", "0"), ("PYTHONDONTWRITEBYTECODE", "1")];
    let addr = free_addr()?;
    let mut cmd = Command::new(&uvicorn);
    cmd.args(["--host", "127.0.0.1", "--port", &addr.port().to_string(), "--log-level", "warning", "asgi_app:app"])
        .current_dir(apps_dir())
        .envs(env)
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut port_server = Proc::spawn("uvicorn --port", cmd)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !get_ok(addr) {
        if Instant::now() > deadline {
            bail!("uvicorn --port did not come up");
        }
        std::thread::sleep(Duration::from_millis(50)); // polling the port, with a deadline
    }
    let mut fd_cmd = vec![uvicorn.display().to_string()];
    fd_cmd.extend(
        ["--fd", "3", "--http", "uvicorn_drain:DrainingH11Protocol", "--log-level", "warning", "asgi_app:app"]
            .iter()
            .map(|s| s.to_string()),
    );
    let with = Bound::start(&fd_cmd, 1, &env, true)?;
    let without = Bound::start(&fd_cmd, 1, &env, false)?;
    // Warm-up, not measured.
    wrk_p50_ms(addr)?;
    wrk_p50_ms(with.addr)?;
    let mut port_p50 = Vec::new();
    let mut fd_p50 = Vec::new();
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            port_p50.push(wrk_p50_ms(addr)?);
            fd_p50.push(wrk_p50_ms(with.addr)?);
        } else {
            fd_p50.push(wrk_p50_ms(with.addr)?);
            port_p50.push(wrk_p50_ms(addr)?);
        }
    }
    let slow = wrk_p50_ms(without.addr)?;
    with.stop();
    without.stop();
    port_server.stop(libc::SIGTERM, Duration::from_secs(20));
    Ok(RealApps {
        versions,
        gunicorn_alone_mib: alone_mib,
        recipe_mib,
        four_arbiters_mib: four_mib,
        memory_ratio: recipe_mib / alone_mib,
        four_arbiters_ratio: four_mib / alone_mib,
        latency_ratio: median(fd_p50.clone()) / median(port_p50.clone()),
        port_p50_ms: port_p50,
        fd_p50_ms: fd_p50,
        fd_without_nodelay_p50_ms: slow,
        wrk: format!("wrk {}", WRK_ARGS.join(" ")),
    })
}
