//! `handover demo`.
/// Runs the demo.
pub fn run(_a: crate::cli::DemoArgs) -> i32 {
    1
}
