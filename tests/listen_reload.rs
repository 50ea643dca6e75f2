//! `[[listen]] address` changes at a reload (issue 7): a socket handover bound itself moves
//! to the new address with the new generation; a socket unit's socket cannot move, so the
//! reload fails and says what to change. Never a silent success on the old port.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::*;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap() // released again at once
}

#[test]
fn a_reload_moves_a_socket_handover_bound_to_the_new_address() {
    let _x = exclusive();
    let opts = Options { workers: 2, socket_activation: false, ..Options::default() };
    let d = Daemon::start(opts.clone());
    let old = d.addr;
    let new = free_addr();
    std::fs::write(&d.config, config_text(d.dir.path(), &opts, Some(new))).unwrap();
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    let (code, body) = http_get(new, "/");
    assert_eq!((code, generation_of(&body)), (200, Some(2)), "the new generation serves the new address: {body}");
    // The old generation drains; then nothing listens on the old port any more.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&old, Duration::from_secs(1)).is_ok() {
        assert!(Instant::now() < deadline, "{old} still accepts after the reload:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(20)); // polling, bounded by the deadline
    }
    let sockets = d.status()["sockets"].clone();
    assert_eq!(sockets.as_array().map(Vec::len), Some(1), "{sockets}");
    assert_eq!(sockets[0]["address"], new.to_string(), "{sockets}");
    // systemd's fd store was switched over: the old entry removed by name, the new one stored.
    let texts: Vec<String> = d.notify.all().into_iter().map(|n| n.text).collect();
    let remove = texts.iter().rposition(|t| t.contains("FDSTOREREMOVE=1") && t.contains("FDNAME=http"));
    let store = texts.iter().rposition(|t| t.contains("FDSTORE=1") && t.contains("FDNAME=http"));
    assert!(remove.is_some() && store > remove, "FDSTOREREMOVE then FDSTORE for http: {texts:#?}");
}

#[test]
fn a_reload_that_moves_a_socket_units_socket_fails_and_keeps_serving() {
    let _x = exclusive();
    let opts = Options { workers: 2, ..Options::default() };
    let d = Daemon::start(opts.clone());
    // The socket unit's socket is matched by address at start ...
    std::fs::write(&d.config, config_text(d.dir.path(), &opts, Some(d.addr))).unwrap();
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    // ... and cannot be moved by a reload.
    let new = free_addr();
    std::fs::write(&d.config, config_text(d.dir.path(), &opts, Some(new))).unwrap();
    let out = d.cli(&["reload"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{}", d.log());
    assert!(stderr.contains("change ListenStream= in the socket unit"), "{stderr}");
    let (code, body) = http_get(d.addr, "/");
    assert_eq!((code, generation_of(&body)), (200, Some(2)), "generation 2 still serves the old address: {body}");
    assert!(TcpStream::connect_timeout(&new, Duration::from_millis(500)).is_err(), "nothing bound {new}");
}
