//! A start that cannot succeed fails fast (SPEC §5, issue 21 part 2): when every slot of the
//! first generation failed before it was ever ready, five times in a row, handover exits 3
//! with the last failure (and where its output is) in STATUS= and the log, instead of
//! retrying until systemd's start timeout. A worker that fails fewer times and then boots
//! (a database that was down at boot) still makes a start.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_start_whose_every_worker_fails_at_boot_exits_3_with_the_reason() {
    let opts = Options {
        workers: 2,
        worker_args: vec!["--boot-delay".into(), "0".into(), "--exit-at-boot".into(), "4".into()],
        ..Options::default()
    };
    let mut d = Daemon::spawn(opts);
    let t = Instant::now();
    let code = d.wait_exit(Duration::from_secs(30));
    let took = t.elapsed();
    let log = d.log();
    println!("numbers: a start whose workers all exit at boot: exit {code} after {:.1}s", took.as_secs_f64());
    assert_eq!(code, 3, "log:\n{log}");
    assert!(log.contains("cannot start") && log.contains("exit code 4"), "the reason is not logged:\n{log}");
    assert!(log.contains("its output"), "where the output is is not said:\n{log}");
    let notices = d.notify.all();
    assert!(!notices.iter().any(|n| n.get("READY") == Some("1")), "READY=1 was sent");
    assert!(
        notices.iter().any(|n| n.get("STATUS").is_some_and(|s| s.contains("cannot start"))),
        "no STATUS= with the failure: {notices:?}"
    );
}

#[test]
fn a_start_whose_workers_fail_twice_and_then_boot_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("attempts");
    // Fails on its first two attempts (a database still down at boot), then serves.
    let script = format!(
        "n=$(cat {c:?} 2>/dev/null || echo 0); echo $((n + 1)) > {c:?}; \
         [ \"$n\" -ge 2 ] || exit 1; exec \"$0\" demo-worker --boot-delay 0",
        c = count.display().to_string()
    );
    let opts = Options {
        workers: 1,
        command: Some(vec!["/bin/sh".into(), "-c".into(), script, bin().display().to_string()]),
        ..Options::default()
    };
    let d = Daemon::spawn(opts);
    d.notify.wait_lifecycle("READY=1", 1, Duration::from_secs(30));
    let attempts: u32 = std::fs::read_to_string(&count).unwrap().trim().parse().unwrap();
    println!("numbers: a worker that failed twice at boot, then served: started after {attempts} attempts");
    assert_eq!(attempts, 3);
}

#[test]
fn check_warns_of_relative_paths_in_a_command_without_a_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("app.toml");
    let base = format!(
        "name = \"app\"\ncontrol_socket = {:?}\n[workers]\ncommand = [\"/bin/true\", \"-c\", \"gunicorn.conf.py\", \"app:app\"]\n",
        dir.path().join("control.sock").display().to_string()
    );
    let check = |text: &str| {
        std::fs::write(&config, text).unwrap();
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["check", "-c"]).arg(&config);
        run_with_deadline(cmd, Duration::from_secs(20))
    };
    let out = check(&base);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{said}");
    assert!(said.contains("\"gunicorn.conf.py\" is a relative path") && said.contains("working_directory"), "{said}");
    assert!(!said.contains("app:app"), "a module taken for a path: {said}");
    // Searchable by the workers' user (tempdir makes it 0700; see the next test).
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = check(&format!("{base}working_directory = {:?}\n", dir.path().display().to_string()));
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Issue 21: `handover check` run as root says when the workers' user could not run the
/// program or enter the working directory (a venv under a 0700 home: the shipped unit runs
/// the app as a user of its own), naming the directory in the way. Run as another user, it
/// cannot tell who the workers will be and says nothing.
#[test]
fn check_warns_when_the_workers_user_cannot_reach_the_program() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let bin_dir = home.join("venv/bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let program = bin_dir.join("app");
    std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(m)).unwrap();
    };
    mode(&program, 0o755);
    mode(dir.path(), 0o755);
    mode(&home, 0o700);
    let config = dir.path().join("app.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"shop\"\ncontrol_socket = {:?}\n[workers]\ncommand = [{:?}]\nworking_directory = {:?}\n",
            dir.path().join("control.sock").display().to_string(),
            program.display().to_string(),
            bin_dir.display().to_string()
        ),
    )
    .unwrap();
    let check = || {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["check", "-c"]).arg(&config);
        let out = run_with_deadline(cmd, Duration::from_secs(20));
        assert!(out.status.success(), "a warning, not an error: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let said = check();
    if !is_root() {
        assert!(!said.contains("cannot be used"), "{said}");
        println!("numbers: not root: check cannot tell the workers' user and says nothing");
        return;
    }
    let home_text = home.display().to_string();
    for key in ["workers.command", "workers.working_directory"] {
        let line = said.lines().find(|l| l.contains(key)).unwrap_or_else(|| panic!("no {key} warning: {said}"));
        assert!(line.contains("handover-shop") && line.contains(&home_text) && line.contains("0700"), "{line}");
    }
    mode(&home, 0o755);
    assert!(!check().contains("cannot be used"), "nothing in the way any more");
}
