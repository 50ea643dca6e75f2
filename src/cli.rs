//! The command line (SPEC §1). `man/handover.1` documents the same surface; a test checks
//! that every subcommand appears there.
use std::path::{Path, PathBuf};

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
    /// Reload back to the release of the last generation that served before the serving
    /// one (its program, working directory, environment and config as they were, even where
    /// a `current` symlink now points elsewhere); waits and exits as `reload` does.
    Rollback(RollbackArgs),
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

/// Where the apps' config files are when a client command is given an app name
/// (`handover status shop` reads `/etc/handover/shop.toml`); `$HANDOVER_CONFIG_DIR` names
/// another directory.
pub const DEFAULT_CONFIG_DIR: &str = "/etc/handover";

/// How a client command finds the daemon.
#[derive(Debug, Args)]
pub struct Target {
    /// The app: its config is CONFIG_DIR/APP.toml (/etc/handover, or $HANDOVER_CONFIG_DIR).
    /// Without it, -c or --control: $HANDOVER_CONFIG, else /etc/handover/handover.toml,
    /// else the one app configured in that directory.
    #[arg(value_name = "APP", conflicts_with_all = ["config", "control"])]
    pub app: Option<String>,
    #[command(flatten)]
    /// The config whose control socket to use.
    pub config: ConfigArg,
    /// Talk to this control socket instead of the config's.
    #[arg(long = "control", value_name = "SOCK", conflicts_with = "config")]
    pub control: Option<PathBuf>,
}

impl Target {
    /// The config file a client command reads its control socket from (SPEC §1): `-c` (or
    /// `$HANDOVER_CONFIG`); else the app's file in the config directory; else
    /// `handover.toml` there; else the only `*.toml` there. An error says which files it
    /// looked for and how to name the app.
    pub fn config_path(&self) -> Result<PathBuf, String> {
        let dir = std::env::var_os("HANDOVER_CONFIG_DIR")
            .filter(|d| !d.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_CONFIG_DIR), PathBuf::from);
        config_path_in(&dir, self.app.as_deref(), self.config.config.as_deref())
    }
}

/// [`Target::config_path`] with the config directory given.
pub fn config_path_in(dir: &Path, app: Option<&str>, explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    if let Some(app) = app {
        let valid = !app.is_empty() && !app.starts_with('.') && !app.contains('/') && !app.contains('\0');
        if !valid {
            return Err(format!("{app:?} is not an app name (its config would be {}/APP.toml)", dir.display()));
        }
        let path = dir.join(format!("{app}.toml"));
        if !path.exists() {
            return Err(format!(
                "no app {app:?}: {} does not exist{}",
                path.display(),
                listed(dir).map(|apps| format!(" (configured here: {apps})")).unwrap_or_default()
            ));
        }
        return Ok(path);
    }
    let default = dir.join("handover.toml");
    if default.exists() {
        return Ok(default);
    }
    let apps = apps_in(dir);
    match apps.as_slice() {
        [one] => Ok(dir.join(format!("{one}.toml"))),
        [] => Err(format!(
            "no app is configured: neither {} nor any other *.toml in {} exists; name the config \
             with -c FILE (or $HANDOVER_CONFIG)",
            default.display(),
            dir.display()
        )),
        several => Err(format!(
            "{} apps are configured in {} ({}); name one: handover COMMAND APP, or -c FILE",
            several.len(),
            dir.display(),
            several.join(", ")
        )),
    }
}

/// The app names with a `*.toml` in `dir`, sorted.
fn apps_in(dir: &Path) -> Vec<String> {
    let mut apps: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".toml")).map(str::to_owned))
        .filter(|n| !n.is_empty() && !n.starts_with('.'))
        .collect();
    apps.sort();
    apps
}

fn listed(dir: &Path) -> Option<String> {
    let apps = apps_in(dir);
    (!apps.is_empty()).then(|| apps.join(", "))
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
    #[arg(long, conflicts_with = "watch")]
    pub no_wait: bool,
    /// After the reload succeeded, wait out the new generation's watch (`reload.watch`):
    /// exit 0 if it is still serving at the end, 1 if it was rolled back automatically.
    #[arg(long)]
    pub watch: bool,
}

/// `handover rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    /// Which daemon.
    pub target: Target,
    /// Give up waiting after this long (e.g. "90s", at most 30d); the rollback itself goes
    /// on. Exit 1. Default: wait for the result.
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
    fn an_app_name_picks_its_file_and_without_one_the_only_app() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let none = config_path_in(d, None, None).expect_err("nothing configured");
        assert!(none.contains("handover.toml") && none.contains("-c FILE"), "{none}");
        std::fs::write(d.join("shop.toml"), "").expect("write");
        assert_eq!(config_path_in(d, None, None), Ok(d.join("shop.toml")), "the only app");
        assert_eq!(config_path_in(d, Some("shop"), None), Ok(d.join("shop.toml")));
        let missing = config_path_in(d, Some("blog"), None).expect_err("no such app");
        assert!(missing.contains("blog.toml") && missing.contains("configured here: shop"), "{missing}");
        for bad in ["", "../etc/x", ".hidden"] {
            assert!(config_path_in(d, Some(bad), None).is_err(), "{bad:?} accepted");
        }
        std::fs::write(d.join("blog.toml"), "").expect("write");
        let several = config_path_in(d, None, None).expect_err("two apps");
        assert!(several.contains("blog, shop") && several.contains("name one"), "{several}");
        std::fs::write(d.join("handover.toml"), "").expect("write");
        assert_eq!(config_path_in(d, None, None), Ok(d.join("handover.toml")), "the default file wins");
        assert_eq!(config_path_in(d, Some("blog"), Some(Path::new("/x.toml"))), Ok(PathBuf::from("/x.toml")));
        let r = Cli::try_parse_from(["handover", "scale", "3", "shop"]).expect("scale N APP");
        assert!(matches!(r.command, Command::Scale(ScaleArgs { count: 3, target: Target { app: Some(_), .. }, .. })));
        assert!(Cli::try_parse_from(["handover", "status", "shop", "--control", "/x.sock"]).is_err());
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
