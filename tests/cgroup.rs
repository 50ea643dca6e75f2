//! A cgroup per worker (issue 10 part 5), run for real: the test makes a cgroup2 directory
//! of its own under the host's hierarchy, marks it delegated as systemd does for
//! `Delegate=yes` (`trusted.delegate=1`), starts handover in it and checks that every
//! worker gets a cgroup of its own, that a grandchild which called setsid() dies with its
//! worker at stop, and (where the memory controller is available to cgroup2) that
//! `memory_limit` OOM-kills only that worker. Needs root and a writable cgroup2 mount;
//! skipped otherwise, in one line (`common::require`).
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{wait_for, Daemon, Options};

/// A cgroup made for one test, killed and removed (with its children) on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    /// `None` (with the reason printed) where the test cannot run.
    fn new(tag: &str) -> Option<TestCgroup> {
        if !common::require(common::is_root(), "needs root to create a cgroup") {
            return None;
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mount = handover::cgroup::parse_cgroup2_mount(&mountinfo);
        if !common::require(mount.is_some(), "no cgroup2 mount in /proc/self/mountinfo") {
            return None;
        }
        let mount = mount.expect("checked");
        let dir = mount.join(format!("handover-test-{tag}-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            common::require(false, &format!("cannot create the cgroup {}: {e}", dir.display()));
            return None;
        }
        let cg = TestCgroup(dir);
        let path = std::ffi::CString::new(cg.0.as_os_str().as_encoded_bytes()).expect("no NUL in a path");
        // SAFETY: setxattr(2) with NUL-terminated strings and a 1-byte value.
        let r = unsafe { libc::setxattr(path.as_ptr(), c"trusted.delegate".as_ptr(), b"1".as_ptr().cast(), 1, 0) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            common::require(false, &format!("cannot mark {} delegated (trusted.delegate): {e}", cg.0.display()));
            return None;
        }
        Some(cg)
    }

    fn controllers(&self) -> String {
        std::fs::read_to_string(self.0.join("cgroup.controllers")).unwrap_or_default()
    }

    /// The child cgroups' names.
    fn children(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for name in self.children() {
            let child = self.0.join(name);
            let _ = std::fs::write(child.join("cgroup.kill"), "1");
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(&child).is_err() && child.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20)); // killed processes take a moment to leave
            }
        }
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.0).is_err() && self.0.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The unified (`0::`) cgroup path of `pid`.
fn cgroup_of(pid: i32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    handover::cgroup::parse_proc_cgroup(&text).unwrap_or("").to_owned()
}

/// Alive and not a zombie.
fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    match stat.rsplit_once(')') {
        Some((_, rest)) => !rest.trim_start().starts_with('Z'),
        None => false,
    }
}

fn pids_in(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A worker command whose grandchild leaves the worker's process group and session
/// (`setsid sleep`, started by a subshell that exits), then the demo worker itself.
fn escaping_worker() -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        "(setsid sleep 300 &); exec \"$0\" demo-worker".into(),
        common::bin().display().to_string(),
    ]
}

#[test]
fn one_cgroup_per_worker_and_setsid_escapees_die_at_stop() {
    let Some(cg) = TestCgroup::new("escape") else { return };
    let opts = Options {
        workers: 2,
        command: Some(escaping_worker()),
        launch_prefix: format!("echo $$ > {:?}/cgroup.procs && ", cg.0.display().to_string()),
        ..Options::default()
    };
    let mut d = Daemon::start(opts);
    let status = d.status();
    let mode = status["worker_isolation"].as_str().unwrap_or("").to_owned();
    assert!(mode.starts_with("cgroup per worker"), "mode: {mode:?}\n{}", d.log());
    let own = cgroup_of(d.pid());
    assert!(own.ends_with(&format!("{}/master", cg.0.file_name().unwrap().to_string_lossy())), "master in {own}");
    let workers = d.worker_pids(1, "ready");
    assert_eq!(workers.len(), 2, "{}", d.log());
    let cgroups: Vec<String> = workers.iter().map(|&p| cgroup_of(p)).collect();
    assert_ne!(cgroups[0], cgroups[1], "one cgroup each: {cgroups:?}");
    for c in &cgroups {
        let name = c.rsplit('/').next().unwrap_or("");
        assert!(name.starts_with("worker-1-"), "{c}");
        assert!(cg.children().contains(&name.to_owned()), "{name} under the test's cgroup: {:?}", cg.children());
    }
    assert!(status["workers"][0]["cpu_usec"].as_u64().is_some(), "CPU per worker in status: {status}");
    // Each worker's escapee (a `sleep` in its own session) is in that worker's cgroup.
    let escapees: Vec<i32> = wait_for("the setsid() grandchildren", Duration::from_secs(10), || {
        let found: Vec<i32> = cgroups
            .iter()
            .flat_map(|c| pids_in(&cg.0.join(c.rsplit('/').next().unwrap_or(""))))
            .filter(|p| !workers.contains(p))
            .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep"))
            .collect();
        (found.len() == 2).then_some(found)
    });
    for &e in &escapees {
        let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(e))).map(|p| p.as_raw()).unwrap_or(0);
        assert!(!workers.contains(&sid), "pid {e} left its worker's session");
    }
    let table = d.cli(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("workers: cgroup per worker") && table.contains("MEMORY"), "{table}");

    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), 0, "{}", d.log());
    wait_for("the escapees to die with their workers", Duration::from_secs(10), || {
        escapees.iter().all(|&p| !alive(p)).then_some(())
    });
    assert_eq!(cg.children(), vec!["master".to_owned()], "worker cgroups removed");
}

#[test]
fn memory_limit_oom_kills_only_that_worker() {
    let Some(cg) = TestCgroup::new("oom") else { return };
    let controllers = cg.controllers();
    if !common::require_host(
        controllers.split_whitespace().any(|c| c == "memory"),
        &format!(
            "the memory controller is not available to cgroup2 here (cgroup.controllers: {:?})",
            controllers.trim()
        ),
    ) {
        return;
    }
    // Slot 0 grows past the limit once ready; slot 1 stays small.
    let script = "if [ \"$HANDOVER_WORKER_SLOT\" = 0 ] && [ \"$HANDOVER_GENERATION\" = 1 ]; then \
                  (sleep 1; exec python3 -c 'b = bytearray(256 << 20); import time; time.sleep(60)') & fi; \
                  exec \"$0\" demo-worker";
    let opts = Options {
        workers: 2,
        command: Some(vec!["/bin/sh".into(), "-c".into(), script.into(), common::bin().display().to_string()]),
        workers_extra: "boot_timeout = \"10s\"\ngraceful_timeout = \"10s\"\nmemory_limit = \"64M\"\n".into(),
        launch_prefix: format!("echo $$ > {:?}/cgroup.procs && ", cg.0.display().to_string()),
        ..Options::default()
    };
    let d = Daemon::start(opts);
    let before = d.worker_pids(1, "ready");
    assert_eq!(before.len(), 2, "{}", d.log());
    let slot_pid = |s: &serde_json::Value, slot: u64| {
        s["workers"].as_array().into_iter().flatten().find(|w| w["slot"] == slot).and_then(|w| w["pid"].as_i64())
    };
    let status = d.status();
    let (first0, first1) = (slot_pid(&status, 0), slot_pid(&status, 1));
    wait_for("slot 0 to be OOM-killed and replaced", Duration::from_secs(20), || {
        let s = d.status();
        (slot_pid(&s, 0) != first0 && slot_pid(&s, 0).is_some_and(|p| p > 0)).then_some(())
    });
    assert_eq!(slot_pid(&d.status(), 1), first1, "slot 1 untouched");
    assert!(d.log().contains("OOM killer"), "the exit says OOM:\n{}", d.log());
}

/// What a `max_memory` sample costs the master at 512 workers: one pass over /proc (process
/// groups) against one small cgroup file per worker (cgroup per worker). The memory
/// controller may not be available to cgroup2 (then `memory.current` does not exist), so the
/// cgroup side reads `cpu.stat`, a file of the same kind (kernfs, generated on read).
#[test]
fn numbers_a_memory_sample_at_512_workers_cgroup_files_against_a_proc_scan() {
    use handover::supervisor::memory::{MemorySource, ProcScan};
    const N: usize = 512;
    let Some(cg) = TestCgroup::new("sample") else { return };
    let mut children = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..N {
        let dir = cg.0.join(format!("w{i}"));
        std::fs::create_dir(&dir).expect("child cgroup");
        // Each in a process group of its own, as workers are (the /proc scan sums by group).
        let child = std::os::unix::process::CommandExt::process_group(&mut std::process::Command::new("sleep"), 0)
            .arg("60")
            .spawn()
            .expect("sleep");
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).expect("move into its cgroup");
        children.push(common::KillOnDrop(child));
        dirs.push(dir);
    }
    let pids: Vec<i32> = children.iter().map(|c| c.0.id() as i32).collect();
    // memory.current where it exists; else cgroup.freeze, another one-number file (cpu.stat
    // would add an rstat flush that memory.current does not have).
    let file =
        if cg.controllers().split_whitespace().any(|c| c == "memory") { "memory.current" } else { "cgroup.freeze" };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (mut scan, mut files) = (Vec::new(), Vec::new());
    let mut proc_scan = ProcScan::default();
    for _ in 0..5 {
        let t = Instant::now();
        let totals = proc_scan.group_rss(&pids);
        scan.push(t.elapsed().as_secs_f64());
        assert!(totals.values().filter(|&&b| b > 0).count() >= N * 9 / 10, "the scan found the processes");
        let t = Instant::now();
        let read = dirs.iter().filter(|d| handover::cgroup::read_number(&d.join(file)).is_some()).count();
        files.push(t.elapsed().as_secs_f64());
        assert_eq!(read, N, "every cgroup's {file} read");
    }
    let (s, f) = (median(scan), median(files));
    println!(
        "numbers: a memory sample of {N} workers: /proc scan {:.2} ms ({:.3} % of a core every 5 s), {N} × {file} {:.2} ms \
         ({:.3} %), ratio {:.1}x",
        s * 1e3,
        s / 5.0 * 100.0,
        f * 1e3,
        f / 5.0 * 100.0,
        s / f
    );
    drop(children);
}
