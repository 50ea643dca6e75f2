//! The demo wing: the built-in demo app (what `handover demo` serves and what the integration
//! tests and benchmarks run as workers), the load generator ([`loadgen`]) and the readings
//! ([`measure`]) the demo, the tests and the benchmarks use. Nothing in the product imports
//! it (`tests/architecture.rs`); only the command line starts it.
//!
//! The worker runs as the hidden subcommand `handover demo-worker`, spawned by the master
//! like any other worker (SPEC §4): it takes its listening sockets the way a Rust app would
//! (the `listenfd` crate, from `LISTEN_FDS`), serves a tiny HTTP/1.1 app on all of them from
//! one thread, reports `READY=1` on `NOTIFY_SOCKET`, and drains gracefully on SIGTERM. Flags
//! turn it into the misbehaving workers the tests need (slow boot, broken boot, never ready,
//! hung watchdog, ignoring the stop signal, failing a share of its answers); see
//! [`worker::DemoWorkerArgs`]. It reports its request outcomes to the master, as the README's
//! recipes for real servers do ([`outcomes`]).
//!
//! Its `/info` endpoint reports what the worker inherited (fds, signal mask, ignored signals,
//! process group, environment) so tests can check the spawn contract from the outside.

mod http;
pub mod loadgen;
pub mod measure;
pub mod outcomes;
pub mod tour;
pub mod worker;
