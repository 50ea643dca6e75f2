//! handover: a systemd-native master for pre-forked workers.
//!
//! `systemctl reload app` rolls a new generation of workers in and returns only once it
//! serves (or rolls it back and fails); `systemctl restart app` refuses no connection.
//! handover is never in the data path: workers accept on the listening sockets directly.
//!
//! # Layout
//! ```text
//!   main.rs ── cli ── app (run / check / reload / status / scale / demo)
//!                      │
//!   systemd ──(LISTEN_FDS, NOTIFY_SOCKET)──┐
//!   config ──(Config)──────────────────────┤
//!   sockets ──(Sockets: passed, bound, fd store)
//!                      │
//!                 supervisor::run (one event loop, the executor)
//!                   │        ▲ events: signals, SIGCHLD, worker notify, control, timer
//!                   ▼        │
//!             machine::Machine  (sans-io state machine: Event → Effect)
//!                   │ effects
//!      ┌────────────┼──────────────┬───────────────┬──────────────┐
//!   worker::spawn  signals to   systemd::notify   control replies  logging
//!   (fork/exec)    workers      (READY, RELOADING…)                (journald fields)
//! ```
//!
//! Process ownership: the handover process (systemd's MAINPID) is the parent of every
//! worker; each worker leads its own process group. handover reaps its children itself
//! (SIGCHLD → `waitpid`), and nothing else in the process spawns children.
//!
//! # Layers
//! Every import points down this list or stays on its line, and none goes round in a circle:
//! `tests/architecture.rs` reads this block and fails otherwise. Top first; the machine
//! sits low because everything around it speaks its vocabulary, while it imports only plain
//! data. Only the top line may start the demo wing; no product module imports it.
//! ```text
//! cli app                                         │ the doors: dispatch, daemon start, client commands
//! demo                                            │ the demo wing: built-in app, load generator, readings
//! supervisor                                      │ the executor: one event loop carries out effects
//! upgrade                                         │ `handover upgrade`: pre-flight, hand-off, exec
//! metrics control                                 │ textfile counters; control socket server and client
//! sockets worker cgroup systemd signals logging   │ the edges: listening sockets, workers, PID 1, journal
//! machine                                         │ the sans-io state machine: Event → Effect, plain data
//! config                                          │ the config model, read, validated and resolved
//! pidfile text unix                               │ small helpers: atomic files, text, unix paths
//! ```
//!
//! # Modules
//! - [`config`]: the TOML file → validated [`config::Config`], errors with file:line:col.
//! - [`systemd`]: the protocol boundary with PID 1 (sd_listen_fds, sd_notify, fd store).
//! - [`sockets`]: which listening sockets workers get, and where they came from.
//! - [`worker`]: spawning per the worker contract, the workers' NOTIFY_SOCKET, signals, the
//!   client connections a worker still holds.
//! - [`machine`]: the sans-io state machine (events in, effects out), its vocabulary
//!   ([`machine::events`]), its timing rules ([`machine::policy`]), the error budget that
//!   judges canaries and watched generations ([`machine::budget`]), the release records a
//!   rollback goes back to, what it reports (replies, status) and its snapshot for
//!   `handover upgrade`.
//! - [`supervisor`]: the machine's executor, the one event loop.
//! - [`cgroup`]: a cgroup per worker where handover's cgroup is delegated (else process
//!   groups only).
//! - [`control`]: the control socket protocol, server and client.
//! - [`metrics`]: counters derived from the machine's effects, written for Prometheus
//!   (node_exporter's textfile collector) once per turn of the event loop.
//! - [`upgrade`]: `handover upgrade`, the binary replaced in place (pre-flight, hand-off, exec).
//! - [`signals`], [`logging`], [`cli`], [`app`]: the edges.
//! - [`pidfile`], [`text`], [`unix`]: small helpers at the bottom (the pid file and the one
//!   atomic file writer; durations and cleaned text; socket paths, cloexec, the wall clock).
//! - [`demo`]: the demo wing: the built-in demo app, a bounded load generator
//!   ([`demo::loadgen`]) and the readings ([`demo::measure`]: wrk's report, a process tree's
//!   memory) used by the demo, the tests and the benchmarks. No product module imports it.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

/// The version this binary reports (`--version`, `handover status`, the upgrade log):
/// Cargo's package version, or `HANDOVER_BUILD_VERSION` set at compile time (a package
/// build, or the tests' second binary).
pub const VERSION: &str = match option_env!("HANDOVER_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// Exit codes (SPEC §1): 0 ok; 1 operation failed; 2 bad usage or bad config (permanent:
/// the unit lists it in `RestartPreventExitStatus=`); 3 daemon unreachable. Success:
pub const EXIT_OK: i32 = 0;
/// The operation failed (reload rolled back, the daemon said no, a socket could not be bound).
pub const EXIT_FAILED: i32 = 1;
/// Bad usage or bad config: retrying will not help.
pub const EXIT_USAGE: i32 = 2;
/// The daemon could not be reached.
pub const EXIT_UNREACHABLE: i32 = 3;

pub mod app;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod logging;
pub mod machine;
pub mod metrics;
pub mod pidfile;
pub mod signals;
pub mod sockets;
pub mod supervisor;
pub mod systemd;
pub mod text;
pub mod unix;
pub mod upgrade;
pub mod worker;
