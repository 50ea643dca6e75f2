//! The protocol boundary with the service manager (PID 1). Nothing else in handover reads
//! `LISTEN_*`, `NOTIFY_SOCKET` or `WATCHDOG_*`.
//!
//! - [`listen_fds`]: sockets in (socket activation and the fd store), adopted once in `main`
//!   while the process is still single-threaded.
//! - [`notify`]: messages out (`READY=1`, `RELOADING=1` + `MONOTONIC_USEC=`, `STATUS=`, …).
//! - [`fdstore`]: keeping the sockets handover binds itself in systemd's fd store.
//!
//! # References
//! `sd_listen_fds(3)`, `sd_notify(3)`, `systemd.service(5)`,
//! <https://systemd.io/FILE_DESCRIPTOR_STORE/>.

pub mod fdstore;
pub mod listen_fds;
pub mod notify;

pub use listen_fds::{adopt_from_env, Inherited, NamedFd};
pub use notify::{monotonic_usec, Notifier};
