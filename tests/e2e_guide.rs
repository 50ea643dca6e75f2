//! `docs/deploy.md`, the newcomer's first deploy, run literally under a real systemd.
//!
//! Every fenced block of the guide is one of:
//! - ` ```sh `: commands. Run in order, each block by `bash -e -o pipefail -c BLOCK` as root
//!   in `/root` of a fresh container (`tests/e2e/sandbox.sh`, systemd 254 unless
//!   `E2E_SYSTEMD` says otherwise), stdout and stderr merged as a terminal shows them. A
//!   block must exit 0 (one that shows a failing command handles it, `|| echo ...`).
//! - ` ```text ` right after a `sh` block (only blank lines between): what that block prints.
//!   Compared line by line, trailing blanks ignored. `…` in a line matches any text within
//!   that line; a line that is only `⋮` matches any number of lines, none included. The
//!   guide explains both to its readers.
//! - any block right after `<!-- not run: REASON -->` (only blank lines between): not run;
//!   the reason is printed. The comment may span lines.
//!
//! Any other block fails the test, so that no command is shown that is not run. The one
//! thing the test does that the guide does not show is the "copy the .deb to the server"
//! of the not-run block: it builds the package (`packaging/build-deb.sh --no-build` from the
//! binary cargo built for this test) and a newer one (`common::binary_b()`, version
//! `common::VERSION_B`) and copies both into `/root`, where the blocks run. The file names the
//! guide installs must be the ones built, so a version bump fails here until the guide says so.
//!
//! The parser and the matcher are tested by plain `cargo test`, and the guide's structure
//! with them; the run itself boots a container as root, so plain `cargo test` lists it as
//! ignored (with the reason) and `cargo test --test e2e_guide -- --ignored` runs it (without
//! root it skips in one line, or fails under `HANDOVER_REQUIRE_TOOLS=1`): `.ci/run` runs it
//! after the e2e suite, on systemd 252, 254, 257 and sid. Container: `E2E_NAME` `handover-e2e-guide` on the e2e suite's cached root fs
//! (whose recipe has curl, which the guide uses), app port 127.0.0.1:8000 (the container
//! shares the host network).
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

/// The guide, relative to the repository root.
const GUIDE: &str = "docs/deploy.md";
/// The container's name: the guide's own, apart from the e2e suite's (same root fs).
const E2E_NAME: &str = "handover-e2e-guide";
/// The address the guide's app listens on (a host port: the container shares the network).
const APP_PORT: u16 = 8000;
/// Where the blocks run, and where the test puts the packages.
const WORKDIR: &str = "/root";
/// The longest one block may take (a reload waits at most for the app's boot).
const BLOCK_DEADLINE: Duration = Duration::from_secs(120);

/// One fenced block of the guide, as the test treats it.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// A `sh` block and the `text` block after it, if any.
    Run { line: usize, script: String, expected: Option<String> },
    /// A block after a `<!-- not run: ... -->` comment.
    Skip { line: usize, reason: String },
}

/// Splits the guide into its steps, or says which block breaks the rules (see the module doc).
fn parse_guide(md: &str) -> Result<Vec<Step>, String> {
    let lines: Vec<&str> = md.lines().collect();
    let mut steps = vec![];
    let mut skip_reason: Option<String> = None;
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if let Some(rest) = l.trim_start().strip_prefix("<!-- not run:") {
            // The comment ends at the first line containing "-->".
            let mut reason = String::new();
            let mut text = rest.to_owned();
            loop {
                if let Some((before, _)) = text.split_once("-->") {
                    reason.push_str(before.trim());
                    break;
                }
                reason.push_str(text.trim());
                reason.push(' ');
                i += 1;
                text = lines.get(i).ok_or_else(|| format!("{GUIDE}: unterminated <!-- not run: comment"))?.to_string();
            }
            if reason.trim().is_empty() {
                return Err(format!("{GUIDE}:{}: a not-run comment must give the reason", i + 1));
            }
            skip_reason = Some(reason.trim().to_owned());
            i += 1;
            continue;
        }
        if let Some(info) = l.strip_prefix("```") {
            let start = i + 1;
            let lang = info.trim().to_owned();
            let mut body = vec![];
            i += 1;
            while i < lines.len() && lines[i] != "```" {
                body.push(lines[i]);
                i += 1;
            }
            if i == lines.len() {
                return Err(format!("{GUIDE}:{start}: unterminated ``` block"));
            }
            i += 1;
            let body = body.join("\n");
            if let Some(reason) = skip_reason.take() {
                steps.push(Step::Skip { line: start, reason });
                continue;
            }
            match lang.as_str() {
                "sh" => {
                    // Its expected output: a text block after nothing but blank lines.
                    let mut j = i;
                    while j < lines.len() && lines[j].trim().is_empty() {
                        j += 1;
                    }
                    let mut expected = None;
                    if lines.get(j) == Some(&"```text") {
                        let mut out = vec![];
                        j += 1;
                        while j < lines.len() && lines[j] != "```" {
                            out.push(lines[j]);
                            j += 1;
                        }
                        if j == lines.len() {
                            return Err(format!("{GUIDE}:{}: unterminated ```text block", i + 1));
                        }
                        expected = Some(out.join("\n"));
                        i = j + 1;
                    }
                    steps.push(Step::Run { line: start, script: body, expected });
                }
                "text" => {
                    return Err(format!(
                        "{GUIDE}:{start}: a ```text block must follow a ```sh block (only blank lines between): it is that block's output"
                    ))
                }
                other => {
                    return Err(format!(
                        "{GUIDE}:{start}: a ```{other} block: every block is ```sh (run), ```text (the output of the sh block before it), or marked <!-- not run: REASON -->"
                    ))
                }
            }
            continue;
        }
        if !l.trim().is_empty() && skip_reason.is_some() {
            return Err(format!("{GUIDE}:{}: a <!-- not run: --> comment must come right before its block", i + 1));
        }
        i += 1;
    }
    Ok(steps)
}

/// Whether `line` matches `pattern`, where each `…` matches any text (possibly none).
fn line_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !line.starts_with(first) || line.len() < first.len() + last.len() || !line.ends_with(last) {
        return false;
    }
    // Leftmost match of each middle part is optimal for `*`-only patterns.
    let mut rest = &line[first.len()..line.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Compares a command's output with the guide's: lines with trailing blanks removed, trailing
/// empty lines ignored, `…` within a line and `⋮` lines as in the module doc. Err explains.
fn output_matches(expected: &str, actual: &str) -> Result<(), String> {
    fn lines(s: &str) -> Vec<String> {
        let mut v: Vec<String> = s.lines().map(|l| l.trim_end().to_owned()).collect();
        while v.last().is_some_and(|l| l.is_empty()) {
            v.pop();
        }
        v
    }
    let (want, got) = (lines(expected), lines(actual));
    // Backtracking over `⋮` (few per block, short outputs): memoised on (pattern, line).
    fn m(want: &[String], got: &[String], memo: &mut std::collections::HashMap<(usize, usize), bool>) -> bool {
        let key = (want.len(), got.len());
        if let Some(&r) = memo.get(&key) {
            return r;
        }
        let r = match want.first() {
            None => got.is_empty(),
            Some(w) if w == "⋮" => (0..=got.len()).any(|k| m(&want[1..], &got[k..], memo)),
            Some(w) => got.first().is_some_and(|g| line_matches(w, g)) && m(&want[1..], &got[1..], memo),
        };
        memo.insert(key, r);
        r
    }
    if m(&want, &got, &mut Default::default()) {
        return Ok(());
    }
    // Point at the first expected line not found: each must match the next printed line,
    // or, after a `⋮`, some later one.
    let mut at = 0;
    let mut skipping = false;
    let mut first_bad = format!("{} line(s) printed after the last expected one", got.len().saturating_sub(at));
    for (k, w) in want.iter().enumerate() {
        if w == "⋮" {
            skipping = true;
            continue;
        }
        let found = if skipping {
            got[at.min(got.len())..].iter().position(|g| line_matches(w, g)).map(|p| at + p)
        } else {
            got.get(at).filter(|g| line_matches(w, g)).map(|_| at)
        };
        match found {
            Some(p) => at = p + 1,
            None => {
                let next = got.get(at).map(|g| format!("{g:?}")).unwrap_or_else(|| "the end".into());
                first_bad = format!("expected line {} {w:?} not printed (next printed line: {next})", k + 1);
                break;
            }
        }
        skipping = false;
    }
    Err(format!("{first_bad}\n--- expected:\n{}\n--- printed:\n{}", want.join("\n"), got.join("\n")))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn guide_steps() -> Vec<Step> {
    let md = std::fs::read_to_string(root().join(GUIDE)).unwrap_or_else(|e| panic!("reading {GUIDE}: {e}"));
    parse_guide(&md).unwrap_or_else(|e| panic!("{e}"))
}

/// The `apt install ./FILE` package files the guide's blocks install, in order.
fn installed_debs(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Run { script, .. } => Some(script),
            Step::Skip { .. } => None,
        })
        .flat_map(|s| s.lines())
        .filter_map(|l| l.trim().strip_prefix("apt install ./"))
        .map(|f| f.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

// ------------------------------------------------------------------------------ unit tests

#[test]
fn the_guide_walks_the_whole_path_and_every_block_is_run_checked_or_explained() {
    let steps = guide_steps();
    let scripts: Vec<&str> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Run { script, .. } => Some(script.as_str()),
            Step::Skip { .. } => None,
        })
        .collect();
    let all = scripts.join("\n");
    // The path issue 12 asks for, in this order.
    let path = [
        "apt install ./handover_",
        "cat > /etc/handover/shop.toml",
        "handover@shop.socket.d/listen.conf",
        "systemctl enable --now handover@shop.socket",
        "handover status -c /etc/handover/shop.toml",
        "journalctl -u handover@shop",
        "systemctl reload handover@shop",
        "systemctl status handover@shop",
        "HANDOVER_EVENT=reload-failed",
        "releases/v4",
        "apt install ./handover_0.1.0+b",
    ];
    let mut from = 0;
    for want in path {
        let at = all[from..].find(want).unwrap_or_else(|| panic!("{GUIDE}: no `{want}` after the previous step"));
        from += at + want.len();
    }
    // Most of what it shows is checked.
    let checked = steps.iter().filter(|s| matches!(s, Step::Run { expected: Some(_), .. })).count();
    assert!(checked >= 8, "only {checked} outputs checked in {GUIDE}");
    let skipped: Vec<_> = steps.iter().filter(|s| matches!(s, Step::Skip { .. })).collect();
    assert!(skipped.len() <= 1, "{GUIDE} has {} blocks that are not run: {skipped:?}", skipped.len());
    // The newer package is the test's second build.
    let debs = installed_debs(&steps);
    assert_eq!(debs.len(), 2, "{GUIDE} should install two packages: {debs:?}");
    assert!(debs[1].contains(common::VERSION_B), "the upgrade installs {}, not version {}", debs[1], common::VERSION_B);
}

#[test]
fn readme_links_the_guide_on_its_first_screen_and_the_man_page_names_it() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let first_screen: Vec<&str> = readme.lines().take(25).collect();
    assert!(
        first_screen.iter().any(|l| l.contains("](docs/deploy.md)")),
        "README.md's first 25 lines do not link {GUIDE}"
    );
    let man = std::fs::read_to_string(root().join("man/handover.1")).expect("man/handover.1");
    assert!(man.contains("docs/deploy.md"), "handover(1) does not point to {GUIDE}");
}

#[test]
fn parser_pairs_outputs_with_commands_and_rejects_what_it_would_not_run() {
    let md = "intro\n```sh\necho a\n```\n\n```text\na\n```\n<!-- not run: on\nyour laptop -->\n```sh\nscp x y:\n```\n```sh\ntrue\n```\n";
    assert_eq!(
        parse_guide(md).unwrap(),
        vec![
            Step::Run { line: 2, script: "echo a".into(), expected: Some("a".into()) },
            Step::Skip { line: 11, reason: "on your laptop".into() },
            Step::Run { line: 14, script: "true".into(), expected: None },
        ]
    );
    let err = parse_guide("```toml\nx = 1\n```\n").unwrap_err();
    assert!(err.contains("```toml"), "{err}");
    let err = parse_guide("```text\nx\n```\n").unwrap_err();
    assert!(err.contains("must follow"), "{err}");
    let err = parse_guide("<!-- not run: why -->\nprose\n```sh\nx\n```\n").unwrap_err();
    assert!(err.contains("right before"), "{err}");
    let err = parse_guide("<!-- not run: -->\n```sh\nx\n```\n").unwrap_err();
    assert!(err.contains("reason"), "{err}");
    assert!(parse_guide("```sh\nx\n").unwrap_err().contains("unterminated"));
}

#[test]
fn matcher_takes_ellipses_within_lines_and_vertical_ellipses_for_lines() {
    assert!(line_matches("shop v1, worker pid …", "shop v1, worker pid 4121"));
    assert!(line_matches("a … b … c", "a x b y b z c"));
    assert!(line_matches("…", ""));
    assert!(!line_matches("shop v1, worker pid …", "shop v2, worker pid 4121"));
    assert!(!line_matches("x…x", "x"));
    assert!(!line_matches("exact", "exact "));
    assert!(output_matches("a\n⋮\nz", "a\nb\nc\nz\n\n").is_ok());
    assert!(output_matches("a\n⋮\nz", "a\nz").is_ok());
    assert!(output_matches("⋮\nSetting up …\n⋮", "x\nSetting up h\ny").is_ok());
    assert!(output_matches("a  \nb", "a\nb   ").is_ok(), "trailing blanks are ignored");
    let err = output_matches("a\nb", "a\nc").unwrap_err();
    assert!(err.contains("line 2"), "{err}");
    assert!(output_matches("a", "a\nextra").is_err());
    assert!(output_matches("a\n⋮", "b").is_err());
}

// ------------------------------------------------------------------------------ the run

#[test]
#[ignore = "boots systemd in a container as root: cargo test --test e2e_guide -- --ignored (.ci/run does)"]
fn the_guide_runs_as_written_under_systemd() {
    run_guide(GUIDE, E2E_NAME, false);
}

/// The gunicorn guide: a Flask app in a venv, deployed twice, the second time broken.
const GUNICORN_GUIDE: &str = "docs/deploy-gunicorn.md";

#[test]
#[ignore = "boots systemd in a container as root: cargo test --test e2e_guide -- --ignored (.ci/run does)"]
fn the_gunicorn_guide_runs_as_written_under_systemd() {
    run_guide(GUNICORN_GUIDE, "handover-e2e-guide-gunicorn", true);
}

#[test]
fn the_gunicorn_guide_covers_the_venv_the_recipe_and_a_refused_release() {
    let md = std::fs::read_to_string(root().join(GUNICORN_GUIDE)).expect("reading the gunicorn guide");
    let steps = parse_guide(&md).unwrap_or_else(|e| panic!("{GUNICORN_GUIDE}: {e}"));
    let all: String = steps
        .iter()
        .filter_map(|s| match s {
            Step::Run { script, .. } => Some(script.as_str()),
            Step::Skip { .. } => None,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = [
        "apt install ./handover_",
        "python3-venv",
        "python3 -m venv /srv/shop/venv",
        "pip install -q gunicorn flask",
        "chmod -R a+rX /srv/shop",
        "HANDOVER_NOTIFY_SOCKET",
        "\"--preload\"",
        "working_directory = \"/srv/shop/current\"",
        "handover check -c /etc/handover/shop.toml",
        "systemctl start handover@shop",
        "systemctl reload handover@shop\n",
        "import shop_payments",
        "systemctl reload handover@shop || echo",
    ];
    let mut from = 0;
    for want in path {
        let at =
            all[from..].find(want).unwrap_or_else(|| panic!("{GUNICORN_GUIDE}: no `{want}` after the previous step"));
        from += at + want.len();
    }
    let checked = steps.iter().filter(|s| matches!(s, Step::Run { expected: Some(_), .. })).count();
    assert!(checked >= 5, "only {checked} outputs checked in {GUNICORN_GUIDE}");
    assert!(!steps.iter().any(|s| matches!(s, Step::Skip { .. })), "{GUNICORN_GUIDE}: every block runs");
    // The config is the README's recipe: the same gunicorn.conf.py, byte for byte.
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let heredoc = "/gunicorn.conf.py <<'EOF'\n";
    let conf_start = all.find(heredoc).expect("the guide's gunicorn.conf.py") + heredoc.len();
    let conf_end = conf_start + all[conf_start..].find("\nEOF").expect("its end");
    let conf = &all[conf_start..conf_end];
    let first_line = conf.lines().next().unwrap_or_default();
    assert!(first_line.starts_with("import ") && first_line.contains("socket"), "{first_line}");
    let readme_conf: String = readme
        .lines()
        .skip_while(|l| l.trim() != first_line)
        .take_while(|l| l.trim() != "```")
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(conf.trim_end(), readme_conf.trim_end(), "{GUNICORN_GUIDE}'s gunicorn.conf.py is not the README's");
}

/// The Python version of the container's python3, as pip's --python-version wants it.
fn container_python(sb: &Container) -> String {
    let out =
        sb.exec("python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'").unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "python3 in the container: {}", text_of(&out));
    text_of(&out).trim().to_owned()
}

/// Runs `guide` in a fresh container `name`. With `wheels`, pip in the container installs
/// from wheels the host downloads for the container's Python (this machine's network cannot
/// verify PyPI's certificate from inside the container), through pip's own environment
/// variables: the guide's `pip install` line runs unchanged.
fn run_guide(guide: &str, name: &'static str, wheels: bool) {
    if !common::require(common::is_root(), &format!("running {guide} in a systemd container needs root")) {
        return;
    }
    // Both guides' apps listen on APP_PORT: one guide at a time (cargo runs tests in threads).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t_all = Instant::now();
    let md = std::fs::read_to_string(root().join(guide)).unwrap_or_else(|e| panic!("reading {guide}: {e}"));
    let steps = parse_guide(&md).unwrap_or_else(|e| panic!("{guide}: {e}"));
    let root = root();
    let script = root.join("tests/e2e/sandbox.sh");
    let _ = sandbox_cmd(&script, name, &["down"]).stdout(Stdio::null()).status();
    if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", APP_PORT)) {
        panic!("port 127.0.0.1:{APP_PORT} is in use on this host ({e}); {guide}'s app needs it");
    }
    let t0 = Instant::now();
    let deb_dir = root.join(format!("target/{name}-deb"));
    let _ = std::fs::remove_dir_all(&deb_dir);
    std::fs::create_dir_all(&deb_dir).expect("creating the guide's package directory");
    let wanted = installed_debs(&steps);
    let mut built = vec![build_deb(&root, &deb_dir, Path::new(env!("CARGO_BIN_EXE_handover")), None)];
    if wanted.len() > 1 {
        built.push(build_deb(&root, &deb_dir, &common::binary_b(), Some(common::VERSION_B)));
    }
    let built: Vec<String> =
        built.iter().map(|p| p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned()).collect();
    assert_eq!(
        wanted, built,
        "{guide} installs {wanted:?} but the packages built are {built:?}: update the file names (and the versions shown) in the guide"
    );
    let t_build = t0.elapsed();

    let t0 = Instant::now();
    let wheel_dir = root.join(format!("target/{name}-wheels"));
    let mut binds = format!("{}:/mnt/deb", deb_dir.display());
    if wheels {
        std::fs::create_dir_all(&wheel_dir).expect("creating the wheel directory");
        binds.push_str(&format!(" {}:/mnt/wheels", wheel_dir.display()));
    }
    let mut sb = Container::up(&script, name, &binds);
    let t_boot = t0.elapsed();
    let version = sb.exec("systemctl --version | head -n1").unwrap_or_else(|e| panic!("{e}"));
    eprintln!("e2e_guide: container up in {:.1}s: {}", t_boot.as_secs_f64(), text_of(&version).trim());
    let copy = sb.exec(&format!("cp /mnt/deb/*.deb {WORKDIR}/")).unwrap_or_else(|e| panic!("{e}"));
    assert!(copy.status.success(), "copying the packages into the container: {}", text_of(&copy));
    let mut t_wheels = Duration::ZERO;
    if wheels {
        let t0 = Instant::now();
        let py = container_python(&sb);
        // gunicorn and flask, as the guide installs them, for the container's Python.
        let out = Command::new("python3")
            .args(["-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", &py])
            .args(["--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", "-d"])
            .arg(&wheel_dir)
            .args(["gunicorn", "flask"])
            .output()
            .expect("running python3 -m pip download on the host");
        assert!(out.status.success(), "pip download on the host (Python {py}): {}", text_of(&out));
        sb.prelude = "export PIP_NO_INDEX=1 PIP_FIND_LINKS=/mnt/wheels PIP_DISABLE_PIP_VERSION_CHECK=1\n".into();
        t_wheels = t0.elapsed();
    }

    let t0 = Instant::now();
    let (mut ran, mut checked) = (0, 0);
    for step in &steps {
        match step {
            Step::Skip { line, reason } => eprintln!("\n--- {guide}:{line}: not run: {reason}"),
            Step::Run { line, script, expected } => {
                eprintln!("\n--- {guide}:{line}:\n{script}");
                let t = Instant::now();
                let out = sb.exec(&format!("cd {WORKDIR}\n{script}")).unwrap_or_else(|e| panic!("{guide}:{line}: {e}"));
                let printed = text_of(&out);
                eprintln!("{printed}--- exit {:?} in {:.2}s", out.status.code(), t.elapsed().as_secs_f64());
                if !out.status.success() {
                    sb.dump_journal();
                    panic!("{guide}:{line}: the block failed (exit {:?}); it printed:\n{printed}", out.status.code());
                }
                ran += 1;
                if let Some(expected) = expected {
                    if let Err(e) = output_matches(expected, &printed) {
                        sb.dump_journal();
                        panic!("{guide}:{line}: the output differs from the guide's: {e}");
                    }
                    checked += 1;
                }
            }
        }
    }
    let t_blocks = t0.elapsed();
    drop(sb);
    eprintln!(
        "\nnumbers: e2e_guide {guide}: {ran} blocks run, {checked} outputs checked; packages {:.1}s, container boot {:.1}s, wheels {:.1}s, blocks {:.1}s, total {:.1}s",
        t_build.as_secs_f64(),
        t_boot.as_secs_f64(),
        t_wheels.as_secs_f64(),
        t_blocks.as_secs_f64(),
        t_all.elapsed().as_secs_f64()
    );
}

/// `packaging/build-deb.sh --no-build` of `binary` into `dir`, as `version` if given.
fn build_deb(root: &Path, dir: &Path, binary: &Path, version: Option<&str>) -> PathBuf {
    let mut cmd = Command::new(root.join("packaging/build-deb.sh"));
    cmd.arg("--no-build").env("HANDOVER_BIN", binary).env("HANDOVER_DEB_DIR", dir).stderr(Stdio::inherit());
    if let Some(v) = version {
        cmd.env("HANDOVER_DEB_VERSION", v);
    }
    let out = cmd.output().expect("running packaging/build-deb.sh");
    assert!(out.status.success(), "packaging/build-deb.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `tests/e2e/sandbox.sh ARGS` for the guide's container, `name`.
fn sandbox_cmd(script: &Path, name: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(script);
    cmd.args(args)
        .env("E2E_NAME", name)
        .env("E2E_SYSTEMD", std::env::var("E2E_SYSTEMD").unwrap_or_else(|_| "254".into()));
    cmd
}

/// stdout and stderr of a block, which `exec` merged into stdout.
fn text_of(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The guide's container; powered off on drop.
struct Container {
    script: PathBuf,
    name: &'static str,
    /// Lines run before every block (the wheelhouse for pip, where the guide needs one).
    prelude: String,
}

impl Container {
    fn up(script: &Path, name: &'static str, binds: &str) -> Container {
        // Created first, so that a failed `up` is torn down too (Drop).
        let sb = Container { script: script.to_owned(), name, prelude: String::new() };
        let out = sandbox_cmd(script, name, &["up"])
            .env("E2E_BIND", binds)
            .stderr(Stdio::inherit())
            .output()
            .expect("running tests/e2e/sandbox.sh up");
        eprintln!("sandbox: {}", String::from_utf8_lossy(&out.stdout).trim());
        assert!(out.status.success(), "tests/e2e/sandbox.sh up failed");
        sb
    }

    /// Runs `script` with `bash -e -o pipefail` in the container, stderr merged into stdout.
    fn exec(&self, script: &str) -> Result<Output, String> {
        let mut cmd = sandbox_cmd(
            &self.script,
            self.name,
            &["exec", "bash", "-c", "exec 2>&1; set -e -o pipefail; eval \"$1\"", "_"],
        );
        cmd.arg(format!("{}{script}", self.prelude)).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|e| format!("sandbox.sh exec: {e}"))?;
        common::output_within(child, BLOCK_DEADLINE)
            .map_err(|_| format!("the block did not finish within {BLOCK_DEADLINE:?}"))
    }

    fn dump_journal(&self) {
        if let Ok(out) = self.exec("journalctl -u 'handover@*' -n 60 --no-pager") {
            eprintln!("--- last journal lines:\n{}", text_of(&out));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = sandbox_cmd(&self.script, self.name, &["down"]).stdout(Stdio::null()).status();
    }
}
