//! The formats other binaries read, pinned as text: the hand-off `handover upgrade` passes
//! from the old binary to the new one (a binary built before a change must be able to hand
//! over to one built after it), and the control protocol's replies (`handover status` /
//! `reload` clients of another version read them). Built from a real machine driven through
//! a boot and a reload, so that every record the formats carry is present.
//!
//! A change to these files is a change of format: bump `HANDOFF_FORMAT` or keep the old
//! names. To regenerate after a deliberate change: `HANDOVER_BLESS=1 cargo test --test
//! wire_format`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use handover::config::{self, LoadEnv};
use handover::control::proto::{Outcome, Reply, Request};
use handover::machine::snapshot::TimeBase;
use handover::machine::{Effect, Event, Machine, QueueSample, SocketStatus, WorkerMessage};
use handover::sockets::SocketRecord;
use handover::upgrade::{ConnectionRecord, HandOff, SystemdRecord, Waits};

const CONFIG: &str = r#"
name = "shop"
control_socket = "/run/shop/control.sock"
pidfile = "/run/shop.pid"

[[listen]]
name = "http"
address = "127.0.0.1:8000"
backlog = 4096

[workers]
command = ["/bin/sh", "-c", "exec app"]
count = 2
working_directory = "/"
env = { APP_ENV = "production" }
boot_timeout = "90s"
watchdog = "30s"
stop_signal = "SIGQUIT"
max_lifetime = "1h"

[reload]
strategy = "rolling"
max_surge = 1
min_healthy_time = "2s"
"#;

fn config() -> Arc<config::Config> {
    let env = LoadEnv {
        runtime_directory: Some("/run/handover/shop".into()),
        xdg_runtime_dir: None,
        is_root: false,
        path: Some("/usr/bin:/bin".into()),
        ..LoadEnv::default()
    };
    Arc::new(config::parse(Path::new("/etc/handover/shop.toml"), CONFIG, &env).unwrap())
}

/// Drives a machine: generation 1 boots, a reload (request 7) rolls generation 2 in.
/// Returns the machine, the clock and every reply line, in order.
fn driven() -> (Machine, Instant, Vec<Reply>) {
    struct Sim {
        m: Machine,
        now: Instant,
        next_pid: i32,
        pids: BTreeMap<u64, Vec<i32>>,
        replies: Vec<Reply>,
    }
    impl Sim {
        fn apply(&mut self, fx: Vec<Effect>) {
            for e in fx {
                match e {
                    Effect::Spawn(req) => {
                        let pid = self.next_pid;
                        self.next_pid += 1;
                        self.pids.entry(req.generation).or_default().push(pid);
                        let fx = self.m.step(Event::Spawned { worker: req.worker, pid }, self.now);
                        self.apply(fx);
                    }
                    Effect::Reply { requester: 7, reply } => self.replies.push(reply),
                    _ => {}
                }
            }
        }
        fn feed(&mut self, ev: Event) {
            let fx = self.m.step(ev, self.now);
            self.apply(fx);
        }
        fn ready_all(&mut self, generation: u64) {
            for pid in self.pids.get(&generation).cloned().unwrap_or_default() {
                self.feed(Event::Message { sender: pid, sender_pgid: Some(pid), message: WorkerMessage::Ready });
            }
        }
    }
    let now = Instant::now();
    let (m, fx) = Machine::start(config(), now);
    let mut sim = Sim { m, now, next_pid: 100, pids: BTreeMap::new(), replies: vec![] };
    sim.apply(fx);
    sim.ready_all(1);
    sim.feed(Event::Message { sender: 100, sender_pgid: Some(100), message: WorkerMessage::Status("serving".into()) });
    sim.feed(Event::ReloadRequested { config: Ok(config()), requester: Some(7) });
    sim.feed(Event::AcceptQueues { samples: vec![QueueSample { socket: "http".into(), length: 3 }] });
    for _ in 0..10 {
        sim.ready_all(2);
        sim.now += Duration::from_secs(3);
        sim.feed(Event::Tick);
    }
    (sim.m, sim.now, sim.replies)
}

fn golden(name: &str, text: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    if std::env::var_os("HANDOVER_BLESS").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(want == text, "{} changed:\n--- want\n{want}\n--- got\n{text}", path.display());
}

#[test]
fn the_hand_off_format_is_unchanged() {
    let (m, now, _) = driven();
    assert!(m.is_quiet(), "the reload went through");
    let base = TimeBase { instant: now, monotonic_ns: 1_000_000_000_000 };
    let machine = m.snapshot(&base).unwrap();
    let handoff = HandOff {
        format: handover::upgrade::HANDOFF_FORMAT,
        from_version: "0.1.0".into(),
        binary: "/usr/bin/handover".into(),
        config_path: "/etc/handover/shop.toml".into(),
        started_unix: 1_800_000_000.5,
        upgrades: 2,
        exec_monotonic_ns: 1_000_000_500_000,
        machine,
        sockets: vec![SocketRecord {
            fd: 3,
            name: "http".into(),
            origin: "bound".into(),
            claimed: true,
            bound_for: Some(config().listen[0].address.clone()),
            rebindable: true,
            stored: false,
        }],
        control_fd: 4,
        notify_fd: 5,
        connections: vec![
            ConnectionRecord { fd: 6, waits_for: Waits::Upgrade },
            ConnectionRecord { fd: 7, waits_for: Waits::Request(Request::Scale { count: 3 }) },
        ],
        reload_pending: true,
        next_request: 12,
        systemd: SystemdRecord {
            notify_socket: Some("/run/systemd/notify".into()),
            watchdog: Some(Duration::from_secs(20)),
            fdstore_enabled: true,
        },
        metrics: Some(handover::metrics::MetricsState::default()),
        cgroups: Some(handover::cgroup::Tree {
            own: "/sys/fs/cgroup/system.slice/shop.service".into(),
            memory: true,
            cpu: false,
            workers: BTreeMap::from([(102, "/sys/fs/cgroup/system.slice/shop.service/w2".into())]),
            doomed: vec!["/sys/fs/cgroup/system.slice/shop.service/w1".into()],
        }),
        notify_owner: Some((1000, 1000)),
        held_scale: vec![1, -1],
        upgraded_from: Some("0.0.9".into()),
        version_since_unix: Some(1_800_000_100.25),
        returned: None,
    };
    let text = serde_json::to_string_pretty(&handoff).unwrap() + "\n";
    golden("handoff.json", &text);
    // And the other way: what an older binary wrote is read back whole.
    let back = HandOff::parse(text.as_bytes()).unwrap();
    assert_eq!(serde_json::to_string_pretty(&back).unwrap() + "\n", text);
}

#[test]
fn status_and_reload_replies_are_unchanged() {
    let (m, now, replies) = driven();
    let mut status = m.status(now);
    status.pid = 4242;
    status.version = "0.1.0".into();
    // Filled in by the executor for the draining workers (their open client connections).
    if let Some(w) = status.workers.iter_mut().find(|w| w.state == "draining") {
        w.open_connections = Some(3);
    }
    status.sockets = vec![SocketStatus {
        name: "http".into(),
        address: "127.0.0.1:8000".into(),
        origin: "systemd".into(),
        accept_queue: Some(1),
        accept_queue_limit: Some(4096),
        reload_peak_accept_queue: m.reload_queue_peak().get("http").copied(),
    }];
    let status = Reply::Done(Outcome { ok: true, status: Some(status), ..Outcome::default() });
    let mut text = String::new();
    for line in replies.iter().chain([&status]) {
        text += &serde_json::to_string(line).unwrap();
        text += "\n";
        assert_eq!(&serde_json::from_str::<Reply>(text.lines().last().unwrap_or_default()).unwrap(), line);
    }
    golden("replies.jsonl", &text);
}

/// A status from a binary before the accept queue was shown reads as "not known": the new
/// socket fields are additive.
#[test]
fn a_socket_status_without_accept_queue_fields_still_reads() {
    let old = r#"{"name":"http","address":"127.0.0.1:8000","origin":"systemd"}"#;
    let s: SocketStatus = serde_json::from_str(old).unwrap();
    assert_eq!((s.accept_queue, s.accept_queue_limit, s.reload_peak_accept_queue), (None, None, None));
}
