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
//!             supervisor::machine::Machine  (sans-io state machine: Event → Effect)
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
//! demo loadgen measure                            │ the demo wing: built-in app, load generator, readings
//! supervisor                                      │ the executor: one event loop carries out effects
//! upgrade                                         │ `handover upgrade`: pre-flight, hand-off, exec
//! metrics control                                 │ textfile counters; control socket server and client
//! sockets worker cgroup systemd signals logging   │ the edges: listening sockets, workers, PID 1, journal
//! supervisor::machine                             │ the sans-io state machine: Event → Effect, plain data
//! config                                          │ the config model, read, validated and resolved
//! ```
//!
//! # Modules
//! - [`config`]: the TOML file → validated [`config::Config`], errors with file:line:col.
//! - [`systemd`]: the protocol boundary with PID 1 (sd_listen_fds, sd_notify, fd store).
//! - [`sockets`]: which listening sockets workers get, and where they came from.
//! - [`worker`]: spawning per the worker contract, the workers' NOTIFY_SOCKET, signals.
//! - [`supervisor`]: the state machine and its executor.
//! - [`cgroup`]: a cgroup per worker where handover's cgroup is delegated (else process
//!   groups only).
//! - [`control`]: the control socket protocol, server and client.
//! - [`metrics`]: counters derived from the machine's effects, written for Prometheus
//!   (node_exporter's textfile collector) once per turn of the event loop.
//! - [`upgrade`]: `handover upgrade`, the binary replaced in place (pre-flight, hand-off, exec).
//! - [`signals`], [`logging`], [`cli`], [`app`]: the edges.
//! - [`demo`], [`loadgen`], [`measure`]: the built-in demo app, a bounded load generator and
//!   the readings (wrk's report, a process tree's memory) used by the demo, the tests and the
//!   benchmarks.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod app;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod loadgen;
pub mod logging;
pub mod measure;
pub mod metrics;
pub mod signals;
pub mod sockets;
pub mod supervisor;
pub mod systemd;
pub mod upgrade;
pub mod worker;
