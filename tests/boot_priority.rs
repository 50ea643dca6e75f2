//! Boot priority (SPEC §5, issue 23 part 1): a generation that boots beside a serving one
//! runs at the lowest CPU priority and is raised to normal once ready; `boot_priority =
//! "normal"` leaves it alone. Outside systemd (no delegated cgroup) the means is the nice
//! value, which a root master can restore; a master that could not restore it does not
//! lower, and `handover status` says why. Both cases are checked as what they are here.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The nice value of `pid` (field 19 of /proc/PID/stat), if it still runs.
fn nice_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.split_whitespace().nth(16)?.parse().ok()
}

/// Polls `status --json` until `pred` holds for it; panics with the last one after `limit`.
fn wait_status(
    d: &Daemon,
    what: &str,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let st = d.status();
        if pred(&st) {
            return st;
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}; status:\n{st:#}\nlog:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20)); // polling an observable state
    }
}

/// Waits until both workers of `generation` were spawned and boot; the status then.
fn wait_booting(d: &Daemon, generation: u64) -> serde_json::Value {
    wait_status(d, &format!("generation {generation} booting"), Duration::from_secs(10), |st| {
        let w = workers_of(st, generation);
        w.len() == 2 && w.iter().all(|w| w["state"] == "booting" && w["pid"].as_i64().unwrap_or(0) > 0)
    })
}

fn workers_of(st: &serde_json::Value, generation: u64) -> Vec<serde_json::Value> {
    st["workers"].as_array().into_iter().flatten().filter(|w| w["generation"] == generation).cloned().collect()
}

/// The master may lower workers here: CAP_SYS_NICE (root), or an RLIMIT_NICE that lets it
/// restore nice 0.
fn may_lower() -> bool {
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NICE).unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    let cap_sys_nice = u64::from_str_radix(eff, 16).unwrap() & (1 << 23) != 0;
    cap_sys_nice || soft >= 20
}

fn opts(boot_priority: Option<&str>, boot_delay: &str) -> Options {
    Options {
        workers: 2,
        worker_args: vec!["--boot-delay".into(), boot_delay.into()],
        extra: boot_priority.map(|p| format!("[reload]\nboot_priority = \"{p}\"\n")).unwrap_or_default(),
        ..Options::default()
    }
}

#[test]
fn a_reload_boots_at_nice_10_beside_the_serving_workers_and_is_raised_once_ready() {
    let _x = exclusive();
    let d = Daemon::start(opts(None, "100ms"));
    let first = d.worker_pids(1, "ready");
    let own = nice_of(d.pid()).unwrap();
    assert!(first.iter().all(|&p| nice_of(p) == Some(own)), "generation 1 boots at normal priority");
    let st = d.status();
    let line = st["boot_priority"].as_str().unwrap_or("").to_owned();
    if !may_lower() {
        // No means to restore a lowered worker here: it is not lowered, and status says so.
        assert!(line.starts_with("normal: cannot lower here"), "{line}");
        println!("numbers: boot priority: {line}");
        return;
    }
    assert!(line.starts_with("low: nice 10 while booting"), "{line}");
    // Generation 2 boots for 3 s: long enough to look at it while it boots.
    d.rewrite_config(&opts(None, "3s"));
    let reload = std::thread::scope(|s| {
        let reload = s.spawn(|| d.cli(&["reload"]));
        let booting = wait_booting(&d, 2);
        for w in workers_of(&booting, 2) {
            let pid = w["pid"].as_i64().unwrap() as i32;
            assert_eq!(w["low_priority"], true, "{w}");
            assert_eq!(nice_of(pid), Some(10), "booting worker {pid} is not at nice 10");
        }
        for &p in &first {
            assert_eq!(nice_of(p), Some(own), "the serving worker {p} was touched");
        }
        let human = d.cli(&["status"]);
        let human = String::from_utf8_lossy(&human.stdout).into_owned();
        assert!(human.contains("[low CPU priority]") && human.contains("boot priority: low: nice 10"), "{human}");
        reload.join().unwrap()
    });
    assert!(reload.status.success(), "reload: {}\n{}", String::from_utf8_lossy(&reload.stderr), d.log());
    let second = d.worker_pids(2, "ready");
    assert_eq!(second.len(), 2);
    for &p in &second {
        assert_eq!(nice_of(p), Some(own), "ready worker {p} still lowered");
    }
    assert!(workers_of(&d.status(), 2).iter().all(|w| w.get("low_priority").is_none()));
    println!("numbers: boot priority: booting workers at nice 10, {} once ready (the master's)", own);
}

#[test]
fn boot_priority_normal_boots_a_reload_at_the_serving_workers_priority() {
    let _x = exclusive();
    let d = Daemon::start(opts(Some("normal"), "100ms"));
    let own = nice_of(d.pid()).unwrap();
    assert_eq!(d.status()["boot_priority"], "normal (boot_priority = \"normal\")");
    d.rewrite_config(&opts(Some("normal"), "2s"));
    let reload = std::thread::scope(|s| {
        let reload = s.spawn(|| d.cli(&["reload"]));
        let booting = wait_booting(&d, 2);
        for w in workers_of(&booting, 2) {
            assert!(w.get("low_priority").is_none(), "{w}");
            assert_eq!(nice_of(w["pid"].as_i64().unwrap() as i32), Some(own));
        }
        reload.join().unwrap()
    });
    assert!(reload.status.success(), "reload: {}\n{}", String::from_utf8_lossy(&reload.stderr), d.log());
}
