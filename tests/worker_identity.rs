//! `[workers] user` and `group` (issue 10 part 4): a root master runs its workers as the
//! user, group and supplementary groups asked for, their READY=1 still arrives, and a user
//! that does not exist is an error at `handover check`. Needs root (skipped otherwise,
//! with a message).
//!
//! The workers run as `nobody`, which must be able to exec the binary: a checkout under a
//! 0700 directory (root's home, `mktemp -d`) is out of its reach, so the test runs a copy of
//! the binary from a 0755 directory of its own in the temp directory.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Daemon, Options};

/// A 0755 directory holding a 0755 copy of the binary under test, for workers that run as
/// another user; `Err` says why another user could not reach it.
fn binary_for_others() -> Result<(tempfile::TempDir, PathBuf), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("handover-identity-").tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod 0755");
    let copy = dir.path().join("handover");
    std::fs::copy(common::bin(), &copy).expect("copying the binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod 0755");
    // Every directory above must be searchable by others (TMPDIR could be a private one).
    for d in dir.path().ancestors().skip(1) {
        let mode = std::fs::metadata(d).map(|m| m.permissions().mode()).unwrap_or(0);
        if mode & 0o001 == 0 {
            return Err(format!(
                "{} (mode {:o}) is not searchable by other users; set TMPDIR=/tmp",
                d.display(),
                mode & 0o7777
            ));
        }
    }
    Ok((dir, copy))
}

fn demo_worker_at(binary: &Path) -> Vec<String> {
    [binary.display().to_string(), "demo-worker".into(), "--boot-delay".into(), "200ms".into()].into()
}

/// `Uid:`, `Gid:` and `Groups:` of /proc/<pid>/status.
fn ids_of(pid: i32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("worker status");
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    (field("Uid:").unwrap_or_default(), field("Gid:").unwrap_or_default(), field("Groups:").unwrap_or_default())
}

#[test]
fn workers_run_as_the_user_and_group_asked_for_and_are_heard() {
    if !common::require(common::is_root(), "needs root (a master that is not root cannot switch users)") {
        return;
    }
    let reachable = binary_for_others();
    if !common::require(reachable.is_ok(), reachable.as_ref().err().map_or("", String::as_str)) {
        return;
    }
    let (_bin_dir, binary) = reachable.expect("checked");
    let user = nix::unistd::User::from_name("nobody").expect("passwd").expect("a 'nobody' user");
    // The group asked for differs from nobody's primary group: `group` wins for the gid,
    // and the supplementary groups are nobody's own (getgrouplist) plus that gid.
    let group = nix::unistd::Group::from_name("daemon").expect("group db").expect("a 'daemon' group");
    let name = std::ffi::CString::new(user.name.clone()).expect("no NUL");
    let mut expected: Vec<u32> =
        nix::unistd::getgrouplist(&name, group.gid).expect("getgrouplist").into_iter().map(|g| g.as_raw()).collect();
    expected.sort_unstable();
    expected.dedup();
    let opts = Options {
        workers: 2,
        workers_extra: "boot_timeout = \"10s\"\ngraceful_timeout = \"10s\"\nuser = \"nobody\"\ngroup = \"daemon\"\n"
            .into(),
        command: Some(demo_worker_at(&binary)),
        ..Options::default()
    };
    let d = Daemon::start(opts); // READY=1 comes only once both workers said READY=1
    let pids = d.worker_pids(1, "ready");
    assert_eq!(pids.len(), 2, "both workers ready: {}", d.log());
    let (uid, gid) = (user.uid.as_raw(), group.gid.as_raw());
    let groups: Vec<String> = expected.iter().map(|g| g.to_string()).collect();
    for pid in pids {
        let (u, g, gs) = ids_of(pid);
        assert_eq!(u, format!("{uid} {uid} {uid} {uid}"), "real, effective, saved and fs uid of {pid}");
        assert_eq!(g, format!("{gid} {gid} {gid} {gid}"), "gids of {pid}");
        assert_eq!(gs, groups.join(" "), "supplementary groups of {pid}");
    }
    // The notify socket belongs to the workers now; nobody else but root may send.
    let meta = std::fs::metadata(d.control.with_extension("sock.notify")).expect("notify socket");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!((meta.uid(), meta.gid(), meta.permissions().mode() & 0o777), (uid, gid, 0o600));
    // A reload (the same identity) works too: its workers' READY=1 arrive.
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "reload: {}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    let pids = d.worker_pids(2, "ready");
    assert_eq!(pids.len(), 2, "{}", d.log());
    assert!(ids_of(pids[0]).0.starts_with(&format!("{uid} ")));
}

#[test]
fn an_unknown_user_fails_check_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("app.toml");
    let text = common::config_text(
        dir.path(),
        &Options { workers_extra: "user = \"no-such-user-hx\"\n".into(), ..Options::default() },
        Some("127.0.0.1:1".parse().expect("addr")),
    );
    std::fs::write(&config, &text).expect("write");
    let mut cmd = std::process::Command::new(common::bin());
    cmd.arg("check").arg("-c").arg(&config);
    let out = common::run_with_deadline(cmd, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check must fail: {err}");
    let line = text.lines().position(|l| l.starts_with("user =")).expect("user line") + 1;
    assert!(err.contains(&format!("app.toml:{line}:8")), "names file:line:col: {err}");
    assert!(err.contains("workers.user") && err.contains("no such user"), "{err}");
}
