//! The command line (SPEC §1). `man/handover.1` documents the same surface; a test checks
//! that every subcommand appears there.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The default config file when neither `-c` nor `$HANDOVER_CONFIG` is given.
pub const DEFAULT_CONFIG: &str = "/etc/handover/handover.toml";

/// handover: a systemd-native master for pre-forked workers.
///
/// `systemctl reload` rolls a new generation of workers in and returns only once it serves,
/// or rolls it back and fails; `systemctl restart` refuses no connection.
#[derive(Debug, Parser)]
#[command(name = "handover", version = crate::VERSION, about, long_about = None, propagate_version = true)]
#[command(after_help = "Exit codes: 0 ok; 1 operation failed (reload rolled back, daemon said no); \
2 bad usage or bad config; 3 daemon unreachable.\nSee handover(1) and handover.toml(5).")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (use as ExecStart=).
    Run(ConfigArg),
    /// Validate a config file; exit 0, or 2 with file:line:col: key: why.
    Check(ConfigArg),
    /// Ask the running daemon to reload; wait until the new generation serves (exit 0) or
    /// was rolled back (exit 1). Usable as ExecReload=.
    Reload(ReloadArgs),
    /// Show generations, workers and sockets.
    Status(StatusArgs),
    /// Change the worker count of the serving generation at runtime.
    Scale(ScaleArgs),
    /// Replace the daemon's handover binary in place with the file at the path it started
    /// from: same pid, workers keep serving. Exit 0 once the new binary runs the daemon, 1 if
    /// the upgrade was refused or failed (the old binary still runs it).
    Upgrade(UpgradeArgs),
    /// Pre-flight of `handover upgrade`, run by the daemon on the new binary (not for
    /// direct use): does this binary accept a hand-off of format N?
    #[command(hide = true)]
    HandoffCheck(HandoffCheckArgs),
    /// The quick start: serve a demo app on 127.0.0.1:8080 with 4 workers and reload it
    /// under load.
    Demo(crate::demo::tour::DemoArgs),
    /// The built-in demo worker (spawned by `handover demo`; not for direct use).
    #[command(hide = true)]
    DemoWorker(crate::demo::worker::DemoWorkerArgs),
    /// Print the shell completion script for SHELL on standard output (the packages install
    /// the bash, zsh and fish ones; see handover(1), COMPLETIONS).
    #[command(hide = true)]
    Completions(CompletionsArgs),
}

/// `-c FILE`.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The config file [env: HANDOVER_CONFIG] [default: /etc/handover/handover.toml]
    #[arg(short = 'c', long = "config", value_name = "FILE", env = "HANDOVER_CONFIG", hide_env = true)]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// The config path: `-c`, else `$HANDOVER_CONFIG`, else the default.
    pub fn path(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }
}

/// How a client command finds the daemon.
#[derive(Debug, Args)]
pub struct Target {
    #[command(flatten)]
    /// The config whose control socket to use.
    pub config: ConfigArg,
    /// Talk to this control socket instead of the config's.
    #[arg(long = "control", value_name = "SOCK", conflicts_with = "config")]
    pub control: Option<PathBuf>,
}

/// `handover reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    /// Which daemon.
    pub target: Target,
    /// Give up waiting after this long (e.g. "90s", at most 30d); the reload itself goes
    /// on. Exit 1. Default: wait for the result. Either way a daemon that does not answer
    /// within 5s (stopped, wedged) gets no reload: exit 3.
    #[arg(long, value_name = "DUR")]
    pub timeout: Option<String>,
    /// Return as soon as the daemon has the request.
    #[arg(long)]
    pub no_wait: bool,
}

/// `handover upgrade`.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    /// Which daemon.
    pub target: Target,
    /// Give up waiting after this long (e.g. "2m", at most 30d); the upgrade itself goes on.
    /// Exit 1. Default: 5m (an upgrade asked for during a reload waits for it). A daemon
    /// that does not answer within 5s (stopped, wedged) gets no upgrade: exit 3.
    #[arg(long, value_name = "DUR")]
    pub timeout: Option<String>,
}

/// `handover handoff-check` (hidden).
#[derive(Debug, Args)]
pub struct HandoffCheckArgs {
    /// The hand-off format the running daemon writes.
    #[arg(long)]
    pub format: u32,
    /// The daemon's config file.
    #[arg(long)]
    pub config: PathBuf,
}

/// `handover status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    /// Which daemon.
    pub target: Target,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
    /// Give up after this long without an answer (the daemon is stopped or wedged): exit 3.
    /// Default: 5s.
    #[arg(long, value_name = "DUR")]
    pub timeout: Option<String>,
}

/// `handover scale N`.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// The new worker count.
    #[arg(value_name = "N")]
    pub count: usize,
    #[command(flatten)]
    /// Which daemon.
    pub target: Target,
    /// Give up after this long without an answer (the daemon is stopped or wedged): exit 3;
    /// a daemon that resumes later may still carry the scale out. Default: 5s.
    #[arg(long, value_name = "DUR")]
    pub timeout: Option<String>,
}

/// `handover completions SHELL`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for: bash, zsh, fish, elvish or powershell.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// The command line the completion scripts offer: [`Cli`]'s, without its hidden subcommands
/// (clap_complete's generators would list them, and their options, like visible ones).
pub fn completion_command() -> clap::Command {
    use clap::CommandFactory;
    let full = Cli::command();
    let visible: Vec<clap::Command> = full.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    clap::Command::new("handover")
        .version(env!("CARGO_PKG_VERSION"))
        .propagate_version(true)
        .subcommand_required(true)
        .subcommands(visible)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn control_and_config_conflict() {
        let r = Cli::try_parse_from(["handover", "status", "-c", "a.toml", "--control", "/x.sock"]);
        assert!(r.is_err());
        let r = Cli::try_parse_from(["handover", "scale", "3", "--control", "/x.sock"]).expect("parse");
        assert!(matches!(r.command, Command::Scale(ScaleArgs { count: 3, .. })));
    }

    #[test]
    fn completions_offer_the_visible_subcommands_and_the_top_level_options() {
        let names = |c: &clap::Command| -> Vec<String> {
            let mut c = c.clone();
            c.build();
            c.get_subcommands().filter(|s| !s.is_hide_set()).map(|s| s.get_name().to_owned()).collect()
        };
        let args = |c: &clap::Command| -> Vec<String> {
            let mut c = c.clone();
            c.build();
            c.get_arguments().map(|a| a.get_id().to_string()).collect()
        };
        let completed = completion_command();
        assert_eq!(names(&completed), names(&Cli::command()));
        assert_eq!(args(&completed), args(&Cli::command()));
        let mut built = completed.clone();
        built.build();
        assert!(built.get_subcommands().all(|s| !s.is_hide_set()), "a hidden subcommand is offered");
        completed.debug_assert();
    }
}
