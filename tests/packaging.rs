//! The packages (issue 12), built from the binary cargo built for these tests:
//! - the .deb (`packaging/build-deb.sh`) is lintian clean (no error, no warning; the one
//!   override is justified in `packaging/lintian-overrides`) and holds a Debian changelog
//!   whose version is the package's, a DEP-5 copyright file with a notice, the shell
//!   completions in the directories bash-completion, zsh and fish load them from, and the
//!   recipes for real servers in /usr/share/doc/handover/examples/, which the man pages
//!   point to;
//! - bash (with bash-completion), fish and zsh, each driven as a user pressing Tab would,
//!   complete handover's visible subcommands and options from the files the .deb installs,
//!   and never the hidden ones;
//! - the RPM (`packaging/build-rpm.sh`: cargo-generate-rpm, no spec file) holds the same
//!   files as the .deb, in Fedora's directories, and is rpmlint clean with
//!   `packaging/rpmlint.toml` (each filter there says why).
//!
//! The tools (lintian, bash-completion, fish, zsh, rpm, rpmlint, cargo-generate-rpm) are
//! installed by `.ci/run`; where one is missing, the tests that need it say so in one line and
//! skip (`common::require`), or fail under `HANDOVER_REQUIRE_TOOLS=1`, as in `.ci/run`.
mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use clap::CommandFactory;
use handover::cli::Cli;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The handover binary cargo built for this test run.
fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_handover"))
}

/// This test's scratch directory (under the target directory, rebuilt by each run).
fn work() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("packaging")
}

/// Whether `tools` (name, how to install it) are all there; skips (one line) at the first
/// missing one.
fn need(tools: &[(&str, &str)]) -> bool {
    tools.iter().all(|(tool, install)| common::require_tool(tool, install))
}

/// What building and unpacking the .deb takes.
const DEB_TOOLS: (&str, &str) = ("dpkg-deb", "apt-get install dpkg");

/// Runs `cmd` under coreutils' `timeout` (killed after `secs`), returning its output; panics
/// with its stderr if it could not run or was killed.
fn run(secs: u32, cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let mut bounded = Command::new("timeout");
    bounded.arg(secs.to_string()).arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => bounded.env(k, v),
            None => bounded.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        bounded.current_dir(dir);
    }
    let out = bounded.output().unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert_ne!(out.status.code(), Some(124), "{what} did not finish within {secs} s");
    out
}

/// Like [`run`], and the command must exit 0; returns its standard output.
fn run_ok(secs: u32, cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let out = run(secs, cmd);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The recipes for real servers under `packaging/examples/`, shipped in
/// `/usr/share/doc/handover/examples/`.
const RECIPES: [&str; 7] = [
    "gunicorn/app.toml",
    "gunicorn/gunicorn.conf.py",
    "uvicorn/app.toml",
    "uvicorn/uvicorn_drain.py",
    "uvicorn/handover_outcomes.py",
    "node/app.toml",
    "node/server.js",
];

/// The .deb, built once per test run.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let dir = work().join("deb");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let out = run_ok(
            300,
            Command::new(root().join("packaging/build-deb.sh"))
                .arg("--no-build")
                .env("HANDOVER_BIN", bin())
                .env("HANDOVER_DEB_DIR", &dir),
        );
        PathBuf::from(out.trim())
    })
}

/// The .deb unpacked (`dpkg-deb -x`): the tree it installs.
fn deb_tree() -> &'static Path {
    static TREE: OnceLock<PathBuf> = OnceLock::new();
    TREE.get_or_init(|| {
        let tree = work().join("deb-tree");
        let _ = std::fs::remove_dir_all(&tree);
        run_ok(60, Command::new("dpkg-deb").arg("-x").arg(deb()).arg(&tree));
        tree
    })
}

/// The files (not directories) the .deb installs, as absolute paths.
fn deb_files() -> BTreeSet<String> {
    let list = run_ok(60, Command::new("dpkg-deb").arg("--contents").arg(deb()));
    // "-rw-r--r-- root/root  5822 2026-11-29 14:38 ./usr/lib/systemd/system/handover@.service"
    list.lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect()
}

#[test]
fn the_deb_is_lintian_clean() {
    if !need(&[DEB_TOOLS, ("lintian", "apt-get install lintian")]) {
        return;
    }
    let out = run(
        300,
        Command::new("lintian")
            .args(["--info", "--pedantic", "--display-experimental", "--fail-on", "error,warning"])
            .arg(deb()),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // Tags are "E: handover: tag [context]"; info (I), pedantic (P) and experimental (X) ones
    // are printed, errors and warnings fail the test. (No --show-overrides: with it, lintian
    // fails on the overridden warning too.)
    println!("lintian {}:\n{text}", deb().display());
    let bad: Vec<&str> = text.lines().filter(|l| l.starts_with("E: ") || l.starts_with("W: ")).collect();
    assert!(bad.is_empty(), "lintian reports errors or warnings on the .deb:\n{}", bad.join("\n"));
    assert!(out.status.success(), "lintian failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    // Every override is still needed: lintian says "unused-override" (info) otherwise.
    assert!(!text.contains("-override"), "packaging/lintian-overrides has an override lintian did not use:\n{text}");
}

#[test]
fn the_deb_ships_its_changelog_copyright_and_completions() {
    if !need(&[DEB_TOOLS]) {
        return;
    }
    let files = deb_files();
    for f in [
        "/usr/bin/handover",
        "/usr/share/doc/handover/changelog.Debian.gz",
        "/usr/share/doc/handover/copyright",
        "/usr/share/lintian/overrides/handover",
        "/usr/share/man/man1/handover.1.gz",
        "/usr/share/man/man5/handover.toml.5.gz",
        "/usr/share/bash-completion/completions/handover",
        "/usr/share/zsh/vendor-completions/_handover",
        "/usr/share/fish/vendor_completions.d/handover.fish",
    ] {
        assert!(files.contains(f), "the .deb has no {f}; it holds {files:#?}");
    }

    // The recipes for real servers, as handover(1) and handover.toml(5) point to them: the
    // repository's files (which tests/real_apps.rs runs), byte for byte.
    for f in RECIPES {
        let shipped = deb_tree().join("usr/share/doc/handover/examples").join(f);
        let shipped = std::fs::read(&shipped).unwrap_or_else(|e| panic!("the .deb has no examples/{f}: {e}"));
        let source = std::fs::read(root().join("packaging/examples").join(f)).expect("packaging/examples");
        assert!(shipped == source, "examples/{f} in the .deb is not packaging/examples/{f}");
    }
    for page in ["usr/share/man/man1/handover.1.gz", "usr/share/man/man5/handover.toml.5.gz"] {
        let text = run_ok(10, Command::new("gzip").arg("-dc").arg(deb_tree().join(page)));
        assert!(
            text.contains("/usr/share/doc/handover/examples/") && !text.contains("README"),
            "{page} must point to the shipped examples, not to a README the package does not ship"
        );
    }

    // The changelog: gzip -9n (no file name, no time stamp: reproducible), and its top entry
    // is the package's version.
    let gz_path = deb_tree().join("usr/share/doc/handover/changelog.Debian.gz");
    let gz = std::fs::read(&gz_path).unwrap_or_else(|e| panic!("reading {}: {e}", gz_path.display()));
    assert_eq!(&gz[..3], b"\x1f\x8b\x08", "changelog.Debian.gz is not gzip");
    assert_eq!(gz[3] & 0x08, 0, "changelog.Debian.gz stores a file name (gzip without -n)");
    assert_eq!(&gz[4..8], &[0, 0, 0, 0], "changelog.Debian.gz stores a time stamp (gzip without -n)");
    let changelog = run_ok(10, Command::new("gzip").arg("-dc").arg(&gz_path));
    let version = run_ok(10, Command::new("dpkg-deb").args(["--field"]).arg(deb()).arg("Version"));
    let first = changelog.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("handover ({}) ", version.trim())),
        "the changelog's top entry {first:?} is not the package's version {version:?}"
    );
    assert!(
        changelog.lines().any(|l| l.starts_with(" -- ") && l.contains('<') && l.contains(">  ")),
        "the changelog entry has no Debian trailer line (\" -- name <email>  date\"):\n{changelog}"
    );

    // The copyright file: machine-readable (DEP-5) with a notice.
    let copyright = std::fs::read_to_string(deb_tree().join("usr/share/doc/handover/copyright"))
        .unwrap_or_else(|e| panic!("reading the copyright file: {e}"));
    assert!(copyright.starts_with("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"));
    assert!(
        copyright
            .lines()
            .any(|l| l.strip_prefix("Copyright: ").is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))),
        "no \"Copyright: YEAR holder\" notice in the copyright file"
    );

    // The completions are what the binary generates, not stale copies.
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/handover"),
        ("zsh", "usr/share/zsh/vendor-completions/_handover"),
        ("fish", "usr/share/fish/vendor_completions.d/handover.fish"),
    ] {
        let shipped = std::fs::read_to_string(deb_tree().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let generated = run_ok(10, Command::new(bin()).args(["completions", shell]));
        assert_eq!(shipped, generated, "{path} is not `handover completions {shell}`");
    }
}

/// What the completion of `handover ` must offer: every visible subcommand and `help`.
fn visible_subcommands() -> BTreeSet<String> {
    let mut cmd = Cli::command();
    cmd.build();
    cmd.get_subcommands().filter(|s| !s.is_hide_set()).map(|s| s.get_name().to_string()).collect()
}

/// What it must never offer: the hidden subcommands (`demo-worker`, `completions`).
fn hidden_subcommands() -> BTreeSet<String> {
    Cli::command().get_subcommands().filter(|s| s.is_hide_set()).map(|s| s.get_name().to_string()).collect()
}

/// The long options `handover reload --` must offer.
fn reload_options() -> BTreeSet<String> {
    let mut cmd = Cli::command();
    cmd.build();
    let reload = cmd.find_subcommand("reload").expect("the CLI has a reload subcommand");
    reload.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")).collect()
}

/// Checks one shell's completions: `complete(line)` returns the candidates offered for `line`.
fn check_completions(shell: &str, complete: impl Fn(&str) -> Vec<String>) {
    let offered: BTreeSet<String> = complete("handover ").into_iter().collect();
    let visible = visible_subcommands();
    let hidden = hidden_subcommands();
    assert!(visible.len() >= 8, "expected at least 8 visible subcommands, got {visible:?}");
    assert!(hidden.len() >= 2, "expected the hidden demo-worker and completions, got {hidden:?}");
    let missing: Vec<&String> = visible.difference(&offered).collect();
    assert!(missing.is_empty(), "{shell} does not complete `handover ` to {missing:?}; it offers {offered:?}");
    let leaked: Vec<&String> = hidden.intersection(&offered).collect();
    assert!(leaked.is_empty(), "{shell} offers the hidden subcommands {leaked:?}");

    let offered: BTreeSet<String> = complete("handover sc").into_iter().collect();
    assert_eq!(offered, BTreeSet::from(["scale".to_string()]), "{shell}: `handover sc` + Tab");

    let offered: BTreeSet<String> = complete("handover reload --").into_iter().collect();
    let wanted = reload_options();
    let missing: Vec<&String> = wanted.difference(&offered).collect();
    assert!(missing.is_empty(), "{shell} does not complete `handover reload --` to {missing:?}; it offers {offered:?}");
    println!("{shell}: `handover ` + Tab offers {:?}", complete("handover "));
}

#[test]
fn bash_completes_the_subcommands_from_the_deb() {
    if !need(&[DEB_TOOLS, ("/usr/share/bash-completion/bash_completion", "apt-get install bash-completion")]) {
        return;
    }
    let script = root().join("tests/packaging/bash-complete.bash");
    check_completions("bash", |line| {
        let out =
            run_ok(30, Command::new("bash").args(["--norc", "--noprofile"]).arg(&script).arg(deb_tree()).arg(line));
        out.lines().map(str::to_string).collect()
    });
}

#[test]
fn fish_completes_the_subcommands_from_the_deb() {
    if !need(&[DEB_TOOLS, ("fish", "apt-get install fish")]) {
        return;
    }
    // fish finds vendor completions in $XDG_DATA_DIRS/fish/vendor_completions.d, as it finds
    // /usr/share/fish/vendor_completions.d once the package is installed, and loads them on
    // the first completion of a command that is on PATH. HOME and XDG_CONFIG_HOME point to an
    // empty directory: no user configuration.
    let home = work().join("fish-home");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).unwrap_or_else(|e| panic!("creating {}: {e}", home.display()));
    // Installed, fish finds the file because /usr/share/fish/vendor_completions.d is on its
    // default completion path.
    let default_path = run_ok(10, Command::new("fish").args(["-c", "string join \\n -- $fish_complete_path"]));
    assert!(
        default_path.lines().any(|l| l == "/usr/share/fish/vendor_completions.d"),
        "fish's $fish_complete_path lacks /usr/share/fish/vendor_completions.d:\n{default_path}"
    );
    let path = format!("{}:{}", deb_tree().join("usr/bin").display(), std::env::var("PATH").unwrap_or_default());
    check_completions("fish", |line| {
        let out = run_ok(
            30,
            Command::new("fish")
                .arg("-c")
                .arg("complete --do-complete=$argv[1]")
                .arg(line)
                .env("XDG_DATA_DIRS", deb_tree().join("usr/share"))
                .env("PATH", &path)
                .env("HOME", &home)
                .env("XDG_CONFIG_HOME", home.join(".config"))
                .env("XDG_DATA_HOME", home.join(".local/share")),
        );
        // "status\tShow generations, workers and sockets": the candidate, a tab, its help.
        out.lines().map(|l| l.split('\t').next().unwrap_or_default().to_string()).collect()
    });
}

#[test]
fn zsh_completes_the_subcommands_from_the_deb() {
    if !need(&[DEB_TOOLS, ("zsh", "apt-get install zsh")]) {
        return;
    }
    // The test puts the unpacked directory first on $fpath; installed, the file is found
    // because Debian's zsh has the package's directory on its default $fpath.
    let fpath_default = run_ok(10, Command::new("zsh").args(["-f", "-c", "print -l $fpath"]));
    assert!(
        fpath_default.lines().any(|l| l == "/usr/share/zsh/vendor-completions"),
        "zsh's default $fpath lacks /usr/share/zsh/vendor-completions, where the .deb puts _handover:\n{fpath_default}"
    );
    let script = root().join("tests/packaging/zsh-complete.zsh");
    let fpath = deb_tree().join("usr/share/zsh/vendor-completions");
    let n = std::sync::atomic::AtomicUsize::new(0);
    check_completions("zsh", |line| {
        let out_file = work().join(format!("zsh-matches-{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        let out = run_ok(60, Command::new("zsh").arg("-f").arg(&script).arg(&fpath).arg(&out_file).arg(line));
        out.lines().map(str::to_string).collect()
    });
}

/// The RPM, built once per test run.
fn rpm() -> &'static Path {
    static RPM: OnceLock<PathBuf> = OnceLock::new();
    RPM.get_or_init(|| {
        let dir = work().join("rpm");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        // cargo generate-rpm takes the staged files from the target directory cargo built in.
        let target = bin().parent().and_then(Path::parent).map(Path::to_path_buf).expect("target/release/handover");
        let out = run_ok(
            300,
            Command::new(root().join("packaging/build-rpm.sh"))
                .arg("--no-build")
                .env("HANDOVER_BIN", bin())
                .env("HANDOVER_RPM_DIR", &dir)
                .env("CARGO_TARGET_DIR", target),
        );
        PathBuf::from(out.trim())
    })
}

#[test]
fn the_rpm_holds_the_debs_files_and_is_rpmlint_clean() {
    if !need(&[
        DEB_TOOLS,
        ("rpm", "apt-get install rpm"),
        ("rpmlint", "apt-get install rpmlint"),
        ("cargo-generate-rpm", "cargo install --locked cargo-generate-rpm"),
    ]) {
        return;
    }
    let listed = run_ok(60, Command::new("rpm").arg("-qpl").arg(rpm()));
    let rpm_files: BTreeSet<String> = listed.lines().map(str::to_string).collect();
    // The same files as the .deb, where Fedora puts them; the Debian-only ones left out.
    let expected: BTreeSet<String> = deb_files()
        .into_iter()
        .filter(|f| !f.ends_with("/changelog.Debian.gz") && !f.starts_with("/usr/share/lintian/"))
        .map(|f| match f.as_str() {
            "/usr/share/doc/handover/copyright" => "/usr/share/licenses/handover/copyright".to_string(),
            "/usr/share/zsh/vendor-completions/_handover" => "/usr/share/zsh/site-functions/_handover".to_string(),
            _ => f,
        })
        .collect();
    assert_eq!(rpm_files, expected, "the RPM's files (rpm -qpl) are not the .deb's");

    let info =
        run_ok(60, Command::new("rpm").args(["-qp", "--queryformat", "%{NAME} %{VERSION} %{LICENSE}\n"]).arg(rpm()));
    assert_eq!(info.trim(), format!("handover {} MIT OR Apache-2.0", env!("CARGO_PKG_VERSION")));
    let requires = run_ok(60, Command::new("rpm").args(["-qp", "--requires"]).arg(rpm()));
    assert!(requires.lines().any(|l| l.starts_with("libc.so.6(GLIBC_")), "no glibc requirement:\n{requires}");
    let scripts = run_ok(60, Command::new("rpm").args(["-qp", "--scripts"]).arg(rpm()));
    assert!(scripts.contains("systemctl daemon-reload"), "no daemon-reload scriptlet:\n{scripts}");

    // Installed into an empty root (no dependencies there, no scriptlets: it is not a
    // Fedora system): the payload unpacks, `rpm -V` finds every file as the header
    // describes it, and the installed binary runs.
    let root_dir = work().join("rpm-root");
    let _ = std::fs::remove_dir_all(&root_dir);
    std::fs::create_dir_all(&root_dir).unwrap_or_else(|e| panic!("creating {}: {e}", root_dir.display()));
    run_ok(60, Command::new("rpm").arg("--root").arg(&root_dir).arg("--initdb"));
    run_ok(60, Command::new("rpm").arg("--root").arg(&root_dir).args(["-i", "--nodeps", "--noscripts"]).arg(rpm()));
    run_ok(60, Command::new("rpm").arg("--root").arg(&root_dir).args(["-V", "--nodeps", "handover"]));
    let version = run_ok(10, Command::new(root_dir.join("usr/bin/handover")).arg("--version"));
    assert_eq!(version.trim(), format!("handover {}", env!("CARGO_PKG_VERSION")));

    let out = run(120, Command::new("rpmlint").arg("-c").arg(root().join("packaging/rpmlint.toml")).arg(rpm()));
    let text = String::from_utf8_lossy(&out.stdout);
    println!("rpmlint {}:\n{text}", rpm().display());
    // "handover.x86_64: W: tag details"
    let bad: Vec<&str> = text.lines().filter(|l| l.contains(": E: ") || l.contains(": W: ")).collect();
    assert!(bad.is_empty(), "rpmlint reports errors or warnings on the RPM:\n{}", bad.join("\n"));
    assert!(text.contains("0 errors, 0 warnings"), "rpmlint did not check the package:\n{text}");
    assert!(out.status.success(), "rpmlint failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
}

#[test]
fn completions_fail_cleanly_on_a_bad_shell_or_a_full_disk() {
    // clap_complete would panic on a failed write (and the release build aborts on panic):
    // handover writes the script itself and reports the error.
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("opening /dev/full");
    // (Not through `run`, which captures standard output.)
    let out = Command::new("timeout")
        .arg("10")
        .arg(bin())
        .args(["completions", "bash"])
        .stdout(full)
        .output()
        .expect("running handover completions");
    assert_eq!(out.status.code(), Some(1), "writing to /dev/full: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("completions: writing to standard output"), "stderr: {err}");

    let out = run(10, Command::new(bin()).args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2), "an unknown shell is bad usage: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values: bash"));
}
