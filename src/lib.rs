//! handover: a systemd-native master for pre-forked workers.
pub mod config;
