//! `handover upgrade` against the real binary (SPEC §5, issue 8): the daemon runs from a
//! copy of the binary in the test's directory, and the tests replace that file as a package
//! upgrade does (a new file renamed over the path), then ask for the upgrade.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, binary_b, exclusive, http_get, run_with_deadline, Daemon, Options};

/// A copy of the binary under test in `dir`, for the daemon to run from.
fn installed_copy(dir: &Path) -> PathBuf {
    let path = dir.join("bin/handover");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::copy(bin(), &path).unwrap();
    path
}

/// Puts `content` at `path` as a package manager does: a new file renamed over it (the old
/// inode, which the daemon may be running, is untouched).
fn replace(path: &Path, content: &[u8], mode: u32) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, content).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A daemon running from a copy of the binary (in a directory kept as long as the daemon).
fn start_from_copy(opts: Options) -> (Daemon, PathBuf, tempfile::TempDir) {
    let bin_dir = tempfile::tempdir().unwrap();
    let copy = installed_copy(bin_dir.path());
    let d = Daemon::start(Options { daemon_binary: Some(copy.clone()), ..opts });
    (d, copy, bin_dir)
}

fn upgrade(d: &Daemon) -> (bool, String, String) {
    let out = d.cli(&["upgrade"]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

fn sorted(mut v: Vec<i32>) -> Vec<i32> {
    v.sort_unstable();
    v
}

#[test]
fn twenty_upgrades_under_load_keep_every_pid_lose_nothing_and_leak_nothing() {
    let _x = exclusive();
    // An app that takes 1 s to boot: a restart (or gunicorn's HUP) leaves a hole that long.
    let opts = Options { worker_args: vec!["--boot-delay".into(), "1s".into()], ..Options::default() };
    let (d, path, _bin) = start_from_copy(opts);
    let master = d.pid();
    let workers = sorted(d.worker_pids(1, "ready"));
    assert_eq!(workers.len(), 3);
    let fds_before = fd_count(master);
    for keep_alive in [false, true] {
        let load = d.load(4, keep_alive);
        let t0 = load.started_at();
        // Steady state first, as long as the upgrades will take.
        let steady_for = Duration::from_millis(1000);
        while t0.elapsed() < steady_for {
            std::thread::sleep(Duration::from_millis(20));
        }
        let from = t0.elapsed();
        let started = Instant::now();
        for i in 0..10 {
            // A new file at the path each time, as a package upgrade leaves it.
            replace(&path, &std::fs::read(bin()).unwrap(), 0o755);
            let (ok, stdout, stderr) = upgrade(&d);
            assert!(ok, "upgrade {i} failed: {stderr}\nlog:\n{}", d.log());
            assert!(stdout.contains(&format!("pid {master} kept")), "{stdout}");
        }
        let took = started.elapsed();
        let to = t0.elapsed();
        std::thread::sleep(Duration::from_millis(200));
        let report = load.stop();
        assert_eq!(report.failed, 0, "failed requests across upgrades: {:?}\nlog:\n{}", report.failures, d.log());
        let steady = report.longest_gap_within(Duration::from_millis(100), from);
        let during = report.longest_gap_within(from, to);
        println!(
            "numbers: 10 upgrades keep_alive={keep_alive} under load in {took:?} ({:?} each): sent {} failed {}; longest gap during {during:?} vs steady {steady:?}",
            took / 10,
            report.sent,
            report.failed
        );
        // handover is not in the data path: the workers serve through the exec. On this
        // shared 2-core machine scheduling alone makes gaps of tens of ms, so the bound is
        // half the app's boot, the least a restart would cost (as in tests/reload.rs).
        assert!(during < Duration::from_millis(500), "a hole of {during:?} during the upgrades (steady {steady:?})");
    }
    let st = d.status();
    assert_eq!(st["pid"], master, "the master's pid stays");
    assert_eq!(sorted(d.worker_pids(1, "ready")), workers, "the same workers serve");
    assert_eq!(st["upgrades"], 20);
    assert_eq!(st["upgraded_from"], env!("CARGO_PKG_VERSION"));
    let fds_after = fd_count(master);
    println!("numbers: master fds before {fds_before}, after 20 upgrades {fds_after}");
    assert_eq!(fds_after, fds_before, "descriptors leaked across upgrades");
    let log = d.log();
    assert_eq!(log.matches("upgraded in place").count(), 20, "{log}");
    // The workers' parent is still the master.
    for w in &workers {
        let stat = std::fs::read_to_string(format!("/proc/{w}/stat")).unwrap();
        let ppid: i32 = stat.rsplit(')').next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(ppid, master);
    }
}

#[test]
fn a_broken_new_binary_fails_the_upgrade_and_changes_nothing() {
    let metrics_dir = tempfile::tempdir().unwrap();
    let textfile = metrics_dir.path().join("app.prom");
    let extra = format!("[metrics]\ntextfile = {:?}\n", textfile.display().to_string());
    let (d, path, _bin) = start_from_copy(Options { extra, ..Options::default() });
    // A reload first: its count must survive the upgrade at the end.
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let master = d.pid();
    let workers = sorted(d.worker_pids(1, "ready"));
    let cases: [(&str, Vec<u8>, u32, &str); 4] = [
        ("a script that exits 1", b"#!/bin/sh\necho 'exec format gone wrong' >&2\nexit 1\n".to_vec(), 0o755, "exec format gone wrong"),
        ("a file that is not executable", std::fs::read(bin()).unwrap(), 0o644, "Permission denied"),
        ("a program that is not handover", std::fs::read("/bin/true").unwrap(), 0o755, "without answering"),
        (
            "a handover that refuses the format",
            b"#!/bin/sh\necho '{\"accepts\":false,\"version\":\"9.0.0\",\"format\":7,\"reason\":\"format 1 retired\"}'\nexit 1\n"
                .to_vec(),
            0o755,
            "format 1 retired",
        ),
    ];
    for (what, content, mode, expect) in cases {
        replace(&path, &content, mode);
        let started = Instant::now();
        let (ok, _, stderr) = upgrade(&d);
        println!("numbers: upgrade to {what}: refused in {:?}: {}", started.elapsed(), stderr.trim());
        assert!(!ok, "upgrade to {what} succeeded");
        assert!(stderr.contains(expect), "{what}: {stderr}");
        let st = d.status();
        assert_eq!(st["pid"], master);
        assert_eq!(st["upgrades"], 0);
        assert_eq!(sorted(d.worker_pids(1, "ready")), workers, "{what}: workers changed");
        assert_eq!(http_get(d.addr, "/").0, 200, "{what}: not serving");
    }
    assert!(d.log().contains("upgrade failed"), "{}", d.log());
    // And a good binary afterwards goes through.
    replace(&path, &std::fs::read(bin()).unwrap(), 0o755);
    let (ok, _, stderr) = upgrade(&d);
    assert!(ok, "{stderr}\n{}", d.log());
    // The metrics went across: the reload before, 4 failed upgrades, 1 good one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&textfile).unwrap_or_default();
        let has = |line: &str| text.lines().any(|l| l == line);
        if has(r#"handover_upgrades_total{name="app",result="ok"} 1"#)
            && has(r#"handover_upgrades_total{name="app",result="failed"} 4"#)
            && has(r#"handover_reloads_total{name="app",result="ok"} 1"#)
        {
            break;
        }
        assert!(Instant::now() < deadline, "metrics after the upgrades:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_that_dies_during_the_hand_off_is_reaped_and_replaced() {
    let (d, path, _bin) = start_from_copy(Options { worker_args: vec![], ..Options::default() });
    let workers = sorted(d.worker_pids(1, "ready"));
    // The "new binary" kills one of its children (the workers: it runs as the master's pid)
    // in the middle of the exec, then becomes handover.
    let real = path.with_file_name("handover-real");
    std::fs::copy(bin(), &real).unwrap();
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = run ]; then\n  victim=$(cut -d' ' -f1 /proc/$$/task/$$/children)\n  kill -9 \"$victim\"\n  echo \"killed $victim\" >&2\n  # Until it is a zombie, or gone if the shell reaped it (bounded; builtins only): its\n  # exit is then for the new binary to find.\n  n=0\n  while [ $n -lt 1000000 ] && read -r _ _ state _ < /proc/$victim/stat 2>/dev/null && [ \"$state\" != Z ]; do n=$((n+1)); done\nfi\nexec {} \"$@\"\n",
        real.display()
    );
    replace(&path, script.as_bytes(), 0o755);
    let (ok, _, stderr) = upgrade(&d);
    assert!(ok, "{stderr}\n{}", d.log());
    let log = d.log();
    let victim: i32 = log
        .lines()
        .find_map(|l| l.strip_prefix("killed "))
        .expect("the script killed a worker")
        .trim()
        .parse()
        .unwrap();
    assert!(workers.contains(&victim), "{victim} is not one of {workers:?}");
    assert!(log.contains("1 exited during the hand-off"), "{log}");
    // The slot gets a new worker.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = d.worker_pids(1, "ready");
        if ready.len() == 3 && !ready.contains(&victim) {
            break;
        }
        assert!(Instant::now() < deadline, "no replacement for {victim}: {ready:?}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn formats_a_newer_binary_takes_over_and_an_older_one_refuses() {
    let b = binary_b();
    let (d, path, _bin) = start_from_copy(Options::default());
    let master = d.pid();
    let workers = sorted(d.worker_pids(1, "ready"));
    let version_a = env!("CARGO_PKG_VERSION");
    replace(&path, &std::fs::read(&b).unwrap(), 0o755);
    let (ok, stdout, stderr) = upgrade(&d);
    assert!(ok, "A (format 1) -> B (format 2): {stderr}\n{}", d.log());
    assert!(stdout.contains(&format!("handover {version_a} -> {}", common::VERSION_B)), "{stdout}");
    let st = d.status();
    assert_eq!(st["version"], common::VERSION_B);
    assert_eq!(st["pid"], master);
    assert_eq!(sorted(d.worker_pids(1, "ready")), workers);
    // Back to A: A reads format 1 only, B wrote format 2. Refused, B goes on.
    replace(&path, &std::fs::read(bin()).unwrap(), 0o755);
    let (ok, _, stderr) = upgrade(&d);
    assert!(!ok, "B (format 2) -> A (format 1) went through");
    assert!(stderr.contains("not 2") && stderr.contains("restart the service"), "{stderr}");
    let st = d.status();
    assert_eq!(st["version"], common::VERSION_B);
    assert_eq!(sorted(d.worker_pids(1, "ready")), workers);
    assert_eq!(http_get(d.addr, "/").0, 200);
}

/// `handover CMD -c CONFIG` in a thread (the test goes on while it waits).
fn in_background(d: &Daemon, cmd: &str) -> std::thread::JoinHandle<std::process::Output> {
    let mut c = Command::new(bin());
    c.args([cmd, "-c"]).arg(&d.config);
    std::thread::spawn(move || run_with_deadline(c, Duration::from_secs(60)))
}

/// A new binary whose pre-flight takes `secs` (then it is the real handover).
fn slow_check_script(path: &Path, secs: &str) {
    let real = path.with_file_name("handover-real");
    std::fs::copy(bin(), &real).unwrap();
    let script =
        format!("#!/bin/sh\nif [ \"$1\" = handoff-check ]; then sleep {secs}; fi\nexec {} \"$@\"\n", real.display());
    replace(path, script.as_bytes(), 0o755);
}

fn wait_status(d: &Daemon, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = d.status();
        if pred(&st) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {st}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_reload_asked_for_during_the_upgrade_is_honoured_by_the_new_binary() {
    let (d, path, _bin) = start_from_copy(Options::default());
    slow_check_script(&path, "1");
    let upgrading = in_background(&d, "upgrade");
    wait_status(&d, "the pre-flight", |st| st["summary"].as_str().unwrap_or("").contains("upgrading: checking"));
    // A SIGHUP too: held as well, never lost across the exec.
    d.signal(libc::SIGHUP);
    let reload = d.cli(&["reload"]);
    let up = upgrading.join().unwrap();
    assert!(up.status.success(), "upgrade: {}", String::from_utf8_lossy(&up.stderr));
    assert!(reload.status.success(), "reload: {}\n{}", String::from_utf8_lossy(&reload.stderr), d.log());
    let log = d.log();
    let held = log.find("held until the upgrade is done").expect("the reload was held");
    let upgraded = log.find("upgraded in place").expect("upgraded");
    let reloaded = log.find("reload succeeded").expect("reloaded");
    assert!(held < upgraded && upgraded < reloaded, "order: held, upgraded, reloaded:\n{log}");
    assert!(log.contains("SIGHUP: reload requested; held until the upgrade is done"), "{log}");
    // Both reloads ran in the new binary: the control one, then the SIGHUP's.
    wait_status(&d, "the second reload", |st| st["active_generation"] == 3 && st["phase"] == "running");
}

#[test]
fn an_upgrade_asked_for_during_a_reload_waits_for_it() {
    let opts = Options { worker_args: vec!["--boot-delay".into(), "1s".into()], ..Options::default() };
    let (d, _path, _bin) = start_from_copy(opts);
    let reloading = in_background(&d, "reload");
    wait_status(&d, "the reload", |st| st["phase"] == "reloading");
    let (ok, _, stderr) = upgrade(&d);
    assert!(ok, "{stderr}");
    let reload = reloading.join().unwrap();
    assert!(reload.status.success(), "{}", String::from_utf8_lossy(&reload.stderr));
    let log = d.log();
    let waits = log.find("upgrade waits for the running reload").expect("it waited");
    let reloaded = log.find("reload succeeded").expect("reloaded");
    let executed = log.find("upgrade: executing").expect("executed");
    assert!(waits < reloaded && reloaded < executed, "{log}");
    assert_eq!(d.status()["active_generation"], 2);
}

#[test]
fn sigterm_during_the_upgrade_stops_cleanly_and_sigusr2_upgrades() {
    let (mut d, path, _bin) = start_from_copy(Options::default());
    // SIGUSR2: the same upgrade, its result in the log.
    d.signal(libc::SIGUSR2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log().contains("upgraded in place") {
        assert!(Instant::now() < deadline, "SIGUSR2 did not upgrade:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.status()["upgrades"], 1);
    slow_check_script(&path, "5");
    let upgrading = in_background(&d, "upgrade");
    wait_status(&d, "the pre-flight", |st| st["summary"].as_str().unwrap_or("").contains("upgrading: checking"));
    d.signal(libc::SIGTERM);
    let up = upgrading.join().unwrap();
    assert!(!up.status.success());
    assert!(String::from_utf8_lossy(&up.stderr).contains("stopping"), "{}", String::from_utf8_lossy(&up.stderr));
    assert_eq!(d.wait_exit(Duration::from_secs(20)), 0, "{}", d.log());
}

#[test]
fn a_bad_hand_off_variable_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("app.toml");
    std::fs::write(&config, common::config_text(dir.path(), &Options::default(), None)).unwrap();
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, b"{\"format\": \"not a number\"}").unwrap();
    // (the variable's value, what the error says)
    let cases: [(&str, &str); 4] = [
        ("abc", "is not a descriptor number"),
        ("1", "is not a descriptor number"),
        ("77", "the descriptor is not open"),
        ("0", "is not a descriptor number"),
    ];
    for (value, expect) in cases {
        let mut cmd = Command::new(bin());
        cmd.args(["run", "-c"]).arg(&config).env("HANDOVER_HANDOFF_FD", value);
        let out = run_with_deadline(cmd, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "HANDOVER_HANDOFF_FD={value}: {stderr}");
        assert!(stderr.contains(expect), "HANDOVER_HANDOFF_FD={value}: {stderr}");
    }
    // A descriptor that holds no hand-off: refused before anything is taken over.
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "exec 5<\"$1\"; HANDOVER_HANDOFF_FD=5 exec \"$0\" run -c \"$2\""])
        .arg(bin())
        .arg(&garbage)
        .arg(&config);
    let out = run_with_deadline(cmd, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("taking over from the previous binary") && stderr.contains("not a hand-off"), "{stderr}");
}

// Issue 19, item 2: state that changes while an upgrade is prepared, and a new binary that
// refuses the hand-off only after the exec.

/// Workers that ignore SIGTERM for `graceful_timeout` (a drain of long requests): a worker
/// told to stop is still there, draining, when the upgrade's exec comes.
fn slow_drain() -> Options {
    Options {
        worker_args: vec!["--ignore-stop".into()],
        workers_extra: "boot_timeout = \"10s\"\ngraceful_timeout = \"15s\"\n".into(),
        ..Options::default()
    }
}

/// A new binary at `path` whose pre-flight waits until the file it returns exists (bounded
/// at 15 s; the daemon's own pre-flight deadline is 10 s), then runs `check`; `run` execs
/// `run`. The test makes the state change during the pre-flight, then lets it finish.
fn gated_script(path: &Path, check: &Path, run: &Path) -> PathBuf {
    let go = path.with_file_name("go");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = handoff-check ]; then\n  n=0\n  while [ ! -e {go} ] && [ $n -lt 300 ]; do sleep 0.05; n=$((n+1)); done\n  exec {check} \"$@\"\nfi\nexec {run} \"$@\"\n",
        go = go.display(),
        check = check.display(),
        run = run.display(),
    );
    replace(path, script.as_bytes(), 0o755);
    go
}

fn wait_log(d: &Daemon, what: &str, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pred(&d.log()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ready_count(st: &serde_json::Value) -> usize {
    st["workers"].as_array().into_iter().flatten().filter(|w| w["state"] == "ready").count()
}

/// Whether the master still runs and answers (a zombie child of the test does not).
fn master_answers(d: &Daemon, master: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{master}/stat")).unwrap_or_default();
    let running = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).is_some_and(|s| s != "Z");
    running && d.cli(&["status", "--json"]).status.success()
}

/// If the master died, its workers are orphans still holding the port: SIGKILL their groups
/// (started by this test, by pid), count them for the numbers.
fn orphans_cleaned_up(master: i32, workers: &[i32]) -> usize {
    let mut orphans = 0;
    for &w in workers {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{w}/stat")) else { continue };
        let ppid: i32 = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0);
        if ppid != master {
            orphans += 1;
            // SAFETY: kill(2) on the process group of a worker this test's daemon started.
            unsafe { libc::kill(-w, libc::SIGKILL) };
        }
    }
    orphans
}

#[test]
fn a_scale_down_during_the_pre_flight_keeps_the_master_and_is_honoured_after() {
    let (d, path, _bin) = start_from_copy(slow_drain());
    let master = d.pid();
    let out = d.cli(&["scale", "8"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_status(&d, "8 ready workers", |st| ready_count(st) == 8);
    let workers = sorted(d.worker_pids(1, "ready"));
    let real = path.with_file_name("handover-real");
    std::fs::copy(bin(), &real).unwrap();
    let go = gated_script(&path, &real, &real);
    let upgrading = in_background(&d, "upgrade");
    wait_status(&d, "the pre-flight", |st| st["summary"].as_str().unwrap_or("").contains("upgrading: checking"));
    // One worker fewer by signal, then `scale 2` on the control socket, both while the
    // pre-flight runs: they are held (or, before issue 19, applied at once).
    d.signal(libc::SIGTTOU);
    wait_log(&d, "the SIGTTOU taken in", |l| {
        l.contains("from 8 to 7 workers") || l.contains("SIGTTOU: one worker fewer")
    });
    let scaling = in_background_args(&d, &["scale", "2"]);
    wait_log(&d, "the scale taken in", |l| l.contains("from 7 to 2 workers") || l.contains("scale to 2 requested"));
    std::fs::write(&go, b"").unwrap();
    let up = upgrading.join().unwrap();
    let scale = scaling.join().unwrap();
    let alive = master_answers(&d, master);
    let orphans = if alive { 0 } else { orphans_cleaned_up(master, &workers) };
    let ready = if alive { ready_count(&d.status()) } else { 0 };
    println!(
        "numbers: scale-down during the pre-flight: upgrade exit {:?}, scale exit {:?}, master alive {alive}, ready workers {ready}, orphaned workers {orphans}",
        up.status.code(),
        scale.status.code()
    );
    assert!(alive, "the master died: upgrade said {}\nlog:\n{}", String::from_utf8_lossy(&up.stderr), d.log());
    assert!(up.status.success(), "upgrade: {}\n{}", String::from_utf8_lossy(&up.stderr), d.log());
    assert!(scale.status.success(), "scale: {}\n{}", String::from_utf8_lossy(&scale.stderr), d.log());
    assert_eq!(d.status()["pid"], master);
    assert_eq!(d.status()["upgrades"], 1);
    // The new binary applies both, in the order they came: 8 -> 7 -> 2.
    wait_status(&d, "2 ready workers", |st| {
        ready_count(st) == 2 && st["workers"].as_array().is_some_and(|w| w.len() >= 2)
    });
    let log = d.log();
    let upgraded = log.find("upgraded in place").expect("upgraded");
    let to7 = log.find("from 8 to 7 workers").expect("the SIGTTOU applied");
    let to2 = log.find("from 7 to 2 workers").expect("the scale applied");
    assert!(upgraded < to7 && to7 < to2, "held until the upgrade, then in order:\n{log}");
    assert_eq!(orphans_cleaned_up(master, &workers), 0, "every worker is the master's child");
    assert_eq!(http_get(d.addr, "/").0, 200);
}

#[test]
fn an_upgrade_while_a_scale_down_drains_hands_the_draining_workers_over() {
    let (d, path, _bin) = start_from_copy(slow_drain());
    let master = d.pid();
    for n in ["8", "2"] {
        let out = d.cli(&["scale", n]);
        assert!(out.status.success(), "scale {n}: {}", String::from_utf8_lossy(&out.stderr));
        if n == "8" {
            wait_status(&d, "8 ready workers", |st| ready_count(st) == 8);
        }
    }
    let st = d.status();
    let draining: Vec<i32> = st["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["state"] != "ready")
        .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
        .collect();
    assert_eq!(draining.len(), 6, "six workers drain (they ignore SIGTERM): {st}");
    let all: Vec<i32> =
        st["workers"].as_array().into_iter().flatten().filter_map(|w| w["pid"].as_i64()).map(|p| p as i32).collect();
    replace(&path, &std::fs::read(bin()).unwrap(), 0o755);
    let (ok, stdout, stderr) = upgrade(&d);
    let alive = master_answers(&d, master);
    let orphans = if alive { 0 } else { orphans_cleaned_up(master, &all) };
    println!(
        "numbers: upgrade while 6 workers drain after scale 8 -> 2: upgrade ok {ok} ({}), master alive {alive}, orphaned {orphans}",
        if ok { stdout.trim() } else { stderr.trim() }
    );
    assert!(ok, "{stderr}\n{}", d.log());
    assert!(alive);
    // The draining workers went across with their deadline: the new binary still awaits
    // them and SIGKILLs them at graceful_timeout; the two that serve are untouched.
    let st = d.status();
    let after: Vec<i32> = st["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["state"] != "ready")
        .filter_map(|w| w["pid"].as_i64())
        .map(|p| p as i32)
        .collect();
    assert_eq!(sorted(after), sorted(draining.clone()), "the same workers drain after the upgrade");
    assert_eq!(ready_count(&st), 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while draining.iter().any(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) {
        assert!(Instant::now() < deadline, "the draining workers were never killed:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_status(&d, "only the 2 serving workers", |st| st["workers"].as_array().is_some_and(|w| w.len() == 2));
    assert_eq!(d.status()["pid"], master);
}

#[test]
fn a_new_binary_that_refuses_the_hand_off_after_the_exec_returns_it_and_the_old_one_goes_on() {
    // The daemon runs binary B (format 2). The file at its path answers the pre-flight as B
    // does, but what the exec runs is A (format 1 only): as if a package upgrade replaced
    // the file between the pre-flight and the exec. A refuses the hand-off after the exec;
    // it must hand it back to B, which goes on with the same pid and workers.
    let b = binary_b();
    let bin_dir = tempfile::tempdir().unwrap();
    let path = bin_dir.path().join("bin/handover");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::copy(&b, &path).unwrap();
    let d = Daemon::start(Options { daemon_binary: Some(path.clone()), ..Options::default() });
    let master = d.pid();
    let workers = sorted(d.worker_pids(1, "ready"));
    let fds_before = fd_count(master);
    let b_copy = path.with_file_name("handover-b");
    let a_copy = path.with_file_name("handover-a");
    std::fs::copy(&b, &b_copy).unwrap();
    std::fs::copy(bin(), &a_copy).unwrap();
    let go = gated_script(&path, &b_copy, &a_copy);
    std::fs::write(&go, b"").unwrap();
    let started = Instant::now();
    let (ok, _, stderr) = upgrade(&d);
    let took = started.elapsed();
    let alive = master_answers(&d, master);
    let orphans = if alive { 0 } else { orphans_cleaned_up(master, &workers) };
    println!(
        "numbers: new binary refusing after the exec: upgrade ok {ok} in {took:?} ({}), master alive {alive}, orphaned {orphans}",
        stderr.trim()
    );
    assert!(alive, "the master died:\n{}", d.log());
    assert!(!ok, "the upgrade to A said it succeeded");
    assert!(stderr.contains("not 2") && stderr.contains("handed back"), "{stderr}");
    let st = d.status();
    assert_eq!(st["pid"], master);
    assert_eq!(st["version"], common::VERSION_B, "B goes on");
    assert_eq!(st["upgrades"], 0, "a returned upgrade is no upgrade");
    assert_eq!(sorted(d.worker_pids(1, "ready")), workers, "the same workers serve");
    assert_eq!(http_get(d.addr, "/").0, 200);
    assert!(d.log().contains("upgrade failed"), "{}", d.log());
    // Nothing leaked (the old executable's descriptor, the hand-off's memfd), and B still
    // upgrades: to itself, for real this time.
    assert_eq!(fd_count(master), fds_before, "descriptors leaked by the round trip");
    replace(&path, &std::fs::read(&b).unwrap(), 0o755);
    let (ok, stdout, stderr) = upgrade(&d);
    assert!(ok, "{stderr}\n{}", d.log());
    assert!(stdout.contains(&format!("pid {master} kept")), "{stdout}");
    assert_eq!(d.status()["upgrades"], 1);
    assert_eq!(fd_count(master), fds_before, "descriptors leaked by the upgrade after it");
}

/// `handover ARGS -c CONFIG` in a thread.
fn in_background_args(d: &Daemon, args: &[&str]) -> std::thread::JoinHandle<std::process::Output> {
    let mut c = Command::new(bin());
    c.args(args).arg("-c").arg(&d.config);
    std::thread::spawn(move || run_with_deadline(c, Duration::from_secs(60)))
}
