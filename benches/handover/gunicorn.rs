//! The WSGI app of `benches/wsgi/` under gunicorn alone (`-w 4`, reloaded by `kill -HUP`) or
//! as handover's workers (`gunicorn --preload -w 1`, one per handover worker).
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::harness::{pass_fd_as_3, NotifySink, Proc, WorkerSetup};

/// The app's simulated import time (the issue: "the app takes 2 s to import").
pub const IMPORT_SECONDS: &str = "2";
/// Scenario 9's app (`cpu_app.py`): CPU seconds its import burns (issue 23: "an app whose
/// import burns 2 s of CPU")...
pub const CPU_IMPORT_SECONDS: &str = "2";
/// ...and CPU milliseconds each request burns.
pub const CPU_REQUEST_MS: &str = "1";

/// Where the app and gunicorn live.
#[derive(Debug, Clone)]
pub struct Python {
    /// `bin/gunicorn` of the benchmark's venv.
    pub gunicorn: PathBuf,
    /// `benches/wsgi`: app.py and gunicorn.conf.py.
    pub app_dir: PathBuf,
}

impl Python {
    /// Finds gunicorn in `venv`, or says how to get it.
    pub fn find(venv: &Path) -> Result<Python> {
        let gunicorn = venv.join("bin/gunicorn");
        if !gunicorn.exists() {
            bail!(
                "{} not found: run benches/run.sh (it creates the venv), or \
                 `python3 -m venv {v} && {v}/bin/pip install gunicorn`",
                gunicorn.display(),
                v = venv.display()
            );
        }
        let app_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/wsgi");
        Ok(Python { gunicorn, app_dir })
    }

    /// The benchmark's `gunicorn.conf.py` (READY=1 from every worker).
    pub fn conf(&self) -> String {
        self.app_dir.join("gunicorn.conf.py").display().to_string()
    }

    /// The environment the app needs.
    pub fn app_env(&self, version_file: &Path) -> Vec<(String, String)> {
        vec![
            ("BENCH_APP_VERSION_FILE".into(), version_file.display().to_string()),
            ("BENCH_APP_IMPORT_SECONDS".into(), IMPORT_SECONDS.into()),
            // Keep the source tree clean.
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ]
    }

    /// The environment of `cpu_app.py` (scenario 9): an import that burns
    /// [`CPU_IMPORT_SECONDS`] of CPU, requests that burn [`CPU_REQUEST_MS`].
    pub fn cpu_app_env(&self, version_file: &Path) -> Vec<(String, String)> {
        let mut env = self.app_env(version_file);
        env.push(("BENCH_APP_IMPORT_CPU_SECONDS".into(), CPU_IMPORT_SECONDS.into()));
        env.push(("BENCH_APP_REQUEST_CPU_MS".into(), CPU_REQUEST_MS.into()));
        env
    }

    /// gunicorn's arguments for `cpu_app.py` with `workers` sync workers, no `--preload`
    /// (each worker imports the app itself), and a worker timeout far above any boot here:
    /// gunicorn's arbiter kills a worker that has not checked in within `--timeout`, and the
    /// import of a worker booting at low priority beside a saturated CPU may take tens of seconds.
    pub fn cpu_app_args(&self, workers: usize) -> Vec<String> {
        let w = workers.to_string();
        ["-w", w.as_str(), "--timeout", "300", "-c", &self.conf(), "cpu_app:app"].map(str::to_owned).to_vec()
    }

    /// handover's workers: 4 × `gunicorn --preload -w 1 -c gunicorn.conf.py app:app`.
    pub fn handover_workers(&self, count: usize, version_file: &Path) -> WorkerSetup {
        WorkerSetup {
            command: vec![
                self.gunicorn.display().to_string(),
                "--preload".into(),
                "-w".into(),
                "1".into(),
                "-c".into(),
                self.conf(),
                "app:app".into(),
            ],
            count,
            env: self.app_env(version_file),
            working_directory: Some(self.app_dir.clone()),
            boot_timeout: "20s".into(),
            graceful_timeout: "15s".into(),
            strategy: "all-at-once".into(),
            max_surge: 1,
            max_memory: None,
            boot_priority: None,
            reload_extra: Vec::new(),
        }
    }

    /// Scenario 9's handover workers: `count` × `gunicorn -w 1` of `cpu_app.py` (no
    /// `--preload`: each gunicorn worker imports the app, as under `gunicorn -w 4`).
    pub fn handover_cpu_workers(&self, count: usize, version_file: &Path) -> WorkerSetup {
        let mut setup = self.handover_workers(count, version_file);
        setup.command = std::iter::once(self.gunicorn.display().to_string()).chain(self.cpu_app_args(1)).collect();
        setup.env = self.cpu_app_env(version_file);
        setup
    }
}

/// The app's version file: what the next import reads.
pub fn set_version(file: &Path, version: &str) -> Result<()> {
    std::fs::write(file, version).with_context(|| format!("writing {}", file.display()))
}

/// Plain gunicorn with 4 sync workers, started as systemd would start it (the socket as fd 3
/// with `LISTEN_PID` = its pid), after which the benchmark closes its own copy of the socket:
/// gunicorn owns it, as in a HUP-based deployment.
pub struct Gunicorn {
    proc: Proc,
    /// Collects each worker's READY=1 (see gunicorn.conf.py).
    pub notify: NotifySink,
    /// The workers per generation.
    pub workers: usize,
    _dir: tempfile::TempDir,
}

impl Gunicorn {
    /// Starts it and waits until all its workers have imported the app.
    pub fn start(
        py: &Python,
        workers: usize,
        listener: TcpListener,
        version_file: &Path,
    ) -> Result<(Gunicorn, Duration)> {
        let args = ["-w".to_owned(), workers.to_string(), "-c".into(), py.conf(), "app:app".into()];
        Self::start_with(py, workers, &args, &py.app_env(version_file), listener, Duration::from_secs(30))
    }

    /// Starts `gunicorn ARGS` (which run `workers` workers) with `env` and waits until all
    /// its workers have imported the app, at most `timeout`.
    pub fn start_with(
        py: &Python,
        workers: usize,
        args: &[String],
        env: &[(String, String)],
        listener: TcpListener,
        timeout: Duration,
    ) -> Result<(Gunicorn, Duration)> {
        let dir = tempfile::Builder::new().prefix("gunicorn-bench-").tempdir()?;
        let notify = NotifySink::bind(&dir.path().join("notify"))?;
        let log = std::fs::File::create(dir.path().join("gunicorn.log"))?;
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "LISTEN_PID=$$ exec \"$@\"", "sh"])
            .arg(&py.gunicorn)
            .args(args)
            .current_dir(&py.app_dir)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("NOTIFY_SOCKET", &notify.path)
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "http")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        pass_fd_as_3(&mut cmd, listener.as_raw_fd());
        let started = Instant::now();
        let proc = Proc::spawn("gunicorn", cmd)?;
        drop(listener);
        let g = Gunicorn { proc, notify, workers, _dir: dir };
        let ready = g.notify.wait_count("READY=1", workers, timeout)?;
        Ok((g, ready - started))
    }

    /// The master's pid.
    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    /// `kill -HUP`: gunicorn starts a new set of workers and stops the old ones at once.
    pub fn hup(&self) {
        self.proc.signal(libc::SIGHUP);
    }

    /// Whether the master still runs; its exit code if not.
    pub fn exited(&mut self) -> Option<i32> {
        self.proc.try_wait().map(|s| s.code().unwrap_or(-1))
    }

    /// The last lines of gunicorn's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self._dir.path().join("gunicorn.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Graceful stop (SIGTERM), bounded.
    pub fn stop(mut self) {
        self.proc.stop(libc::SIGTERM, Duration::from_secs(20));
    }
}
