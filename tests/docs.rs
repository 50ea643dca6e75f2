//! The documentation cannot drift from the code:
//! - every visible subcommand and option of `handover` (taken from the clap definition) is
//!   documented in `man/handover.1`, and every subcommand is named in README.md;
//! - every config key the parser accepts (discovered from the parser itself: it lists the
//!   keys it expects when it meets an unknown one) has an entry in `man/handover.toml.5`;
//! - the man pages render without a groff warning;
//! - the shipped units comment every directive, use command lines the CLI accepts, and the
//!   plain example `app.service` says what the template `handover@.service` says;
//! - the example config is valid.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use handover::cli::Cli;
use handover::config::{self, LoadEnv};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// The visible subcommands and, for each, the long and short options (help and version
/// included, positional arguments excluded).
fn cli_surface() -> BTreeMap<String, Vec<String>> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = BTreeMap::new();
    // `help` is clap's own (`handover help reload` = `handover reload --help`).
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let mut opts = vec![];
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set() && !a.is_positional()) {
            if let Some(long) = arg.get_long() {
                opts.push(format!("--{long}"));
            }
            if let Some(short) = arg.get_short() {
                opts.push(format!("-{short}"));
            }
        }
        out.insert(sub.get_name().to_string(), opts);
    }
    out
}

/// A roff source with the escapes this project uses undone, for searching.
fn unroff(s: &str) -> String {
    s.replace("\\-", "-").replace("\\fB", "").replace("\\fR", "").replace("\\fI", "").replace("\\e", "\\")
}

#[test]
fn every_subcommand_and_option_is_in_handover_1() {
    let man = read("man/handover.1");
    let headings: Vec<String> =
        man.lines().filter_map(|l| l.strip_prefix(".SS ")).map(|t| unroff(t).trim_matches('"').to_string()).collect();
    let plain = unroff(&man);
    let surface = cli_surface();
    assert!(surface.len() >= 6, "expected at least 6 visible subcommands, found {surface:?}");
    let mut missing = vec![];
    for (name, opts) in &surface {
        if !headings.iter().any(|h| h.starts_with(&format!("handover {name}"))) {
            missing.push(format!("subcommand {name:?} (a `.SS \"handover {name} ...\"` section)"));
        }
        for o in opts {
            // Options are written with escaped hyphens (\-\-json): search the roff source.
            if !man.contains(&o.replace('-', "\\-")) {
                missing.push(format!("option {o} of {name}"));
            }
        }
        if !plain.contains(&format!("handover {name}")) {
            missing.push(format!("\"handover {name}\" in the text"));
        }
    }
    assert!(missing.is_empty(), "man/handover.1 does not document: {missing:#?}");
}

#[test]
fn every_subcommand_is_in_the_readme() {
    let path = root().join("README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let missing: Vec<String> =
        cli_surface().keys().filter(|name| !readme.contains(&format!("handover {name}"))).cloned().collect();
    assert!(missing.is_empty(), "README.md does not mention `handover <name>` for: {missing:?}");
}

/// The keys the parser expects in a table, read from its error for an unknown key, or None
/// if `prefix` does not open a table of fixed keys there.
fn expected_keys(prefix: &str) -> Option<Vec<String>> {
    let text = format!("{prefix}zzz_not_a_key = 1\n");
    let env = LoadEnv { runtime_directory: Some("/run/handover/app".into()), ..LoadEnv::default() };
    let err = config::parse(Path::new("/etc/handover/app.toml"), &text, &env).err()?;
    let list = err.message.strip_prefix("unknown key, expected ")?;
    Some(list.split('`').skip(1).step_by(2).map(str::to_owned).collect())
}

/// Every key the parser accepts: `(table, key)`, the table as its man page section names it
/// ("" for the top level, "[workers]", "[[listen]]").
fn config_keys() -> Vec<(String, String)> {
    fn walk(prefix: &str, dotted: &str, section: &str, out: &mut Vec<(String, String)>) {
        let Some(keys) = expected_keys(prefix) else { return };
        for key in keys {
            out.push((section.to_string(), key.clone()));
            let path = if dotted.is_empty() { key.clone() } else { format!("{dotted}.{key}") };
            // Depth is bounded by the schema: a scalar key opens no table either way.
            for (open, close) in [("[", "]"), ("[[", "]]")] {
                let child = format!("{prefix}{open}{path}{close}\n");
                if expected_keys(&child).is_some() {
                    walk(&child, &path, &format!("{open}{path}{close}"), out);
                }
            }
        }
    }
    let mut out = vec![];
    walk("", "", "", &mut out);
    out
}

#[test]
fn config_key_discovery_works() {
    let keys = config_keys();
    for (table, key) in [("", "name"), ("[workers]", "command"), ("[[listen]]", "address"), ("[reload]", "max_surge")] {
        assert!(
            keys.contains(&(table.to_string(), key.to_string())),
            "the parser's key list no longer reads as expected (no {table} {key} in {keys:?}); fix config_keys()"
        );
    }
}

#[test]
fn every_config_key_is_in_handover_toml_5() {
    let man = read("man/handover.toml.5");
    // Sections by title, their text up to the next .SH.
    let mut sections: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut current = String::new();
    for line in man.lines() {
        if let Some(t) = line.strip_prefix(".SH ") {
            current = unroff(t).trim_matches('"').to_string();
        }
        sections.entry(current.clone()).or_default().push(line);
    }
    let mut missing = vec![];
    for (table, key) in config_keys() {
        let title = if table.is_empty() { "TOP-LEVEL KEYS".to_string() } else { table.clone() };
        let Some(lines) = sections.get(&title) else {
            missing.push(format!("section .SH {title}"));
            continue;
        };
        // An entry: `.TP` then a line starting with \fBkey\fR.
        let entry = format!("\\fB{key}\\fR");
        let found = lines.windows(2).any(|w| w[0] == ".TP" && w[1].starts_with(&entry));
        if !found {
            missing.push(format!("{title} {key}"));
        }
    }
    assert!(missing.is_empty(), "man/handover.toml.5 lacks entries (`.TP` + `\\fBkey\\fR = ...`) for: {missing:#?}");
}

#[test]
fn man_pages_render_without_warnings() {
    if !common::require_tool("groff", "apt-get install groff-base") {
        return;
    }
    for page in ["man/handover.1", "man/handover.toml.5"] {
        let out = std::process::Command::new("groff")
            .args(["-man", "-ww", "-z"])
            .arg(root().join(page))
            .output()
            .expect("running groff");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.trim().is_empty(), "groff -man -ww -z {page}: {stderr}");
    }
}

/// `(key, value)` of the directives of a unit file, in order (comments and blanks skipped).
fn directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

const UNITS: [&str; 5] = [
    "systemd/handover@.service",
    "systemd/handover@.socket",
    "systemd/app.service",
    "systemd/app.socket",
    "systemd/notify-reload.conf",
];

#[test]
fn every_unit_directive_has_a_comment() {
    let mut bare = vec![];
    for unit in UNITS {
        let text = read(unit);
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let is_directive = !l.starts_with('#') && !l.starts_with('[') && l.contains('=');
            if is_directive && (i == 0 || !lines[i - 1].starts_with('#')) {
                bare.push(format!("{unit}:{}: {l}", i + 1));
            }
        }
    }
    assert!(bare.is_empty(), "directives without a comment line above them saying why: {bare:#?}");
}

#[test]
fn unit_command_lines_parse() {
    for unit in UNITS {
        for (k, v) in directives(&read(unit)) {
            if !matches!(k.as_str(), "ExecStart" | "ExecReload") || v.is_empty() {
                continue;
            }
            let argv: Vec<String> = v.split_whitespace().map(|a| a.replace("%i", "app")).collect();
            assert_eq!(argv[0], "/usr/bin/handover", "{unit}: {k}= runs {}", argv[0]);
            if let Err(e) = <Cli as clap::Parser>::try_parse_from(&argv) {
                panic!("{unit}: {k}={v}: the CLI rejects it: {e}");
            }
        }
    }
}

#[test]
fn plain_app_service_matches_the_template() {
    // The template with the instance name "app" ...
    let template: Vec<(String, String)> = directives(&read("systemd/handover@.service"))
        .into_iter()
        .map(|(k, v)| (k, v.replace("handover@%i", "app").replace("%i", "app")))
        .filter(|(k, _)| k != "Description")
        .collect();
    // ... is the plain example, but for its description.
    let plain: Vec<(String, String)> =
        directives(&read("systemd/app.service")).into_iter().filter(|(k, _)| k != "Description").collect();
    assert_eq!(plain, template, "systemd/app.service has drifted from systemd/handover@.service");
}

#[test]
fn the_example_config_is_valid() {
    let text = read("packaging/examples/app.toml").replace("/usr/bin/handover", env!("CARGO_BIN_EXE_handover"));
    let env = LoadEnv { runtime_directory: Some("/run/handover/app".into()), ..LoadEnv::default() };
    let c = config::parse(Path::new("/etc/handover/app.toml"), &text, &env)
        .unwrap_or_else(|e| panic!("packaging/examples/app.toml: {e}"));
    assert_eq!(c.name, "app");
    // app.socket passes "http" on the same address.
    let socket = read("systemd/app.socket");
    let l = c.listen.first().expect("a [[listen]] entry");
    assert!(socket.contains(&format!("FileDescriptorName={}", l.name)), "app.socket and app.toml disagree on the name");
    assert!(socket.contains(&format!("ListenStream={}", l.address)), "app.socket and app.toml disagree on the address");
}

/// The recipes the package ships (`packaging/examples/{gunicorn,uvicorn,node}/`), README
/// "Running a real app" and the man pages agree: every code block of that README section is
/// in one of the shipped files (whitespace aside), and each shipped config is valid.
#[test]
fn the_readme_quotes_the_shipped_recipes_and_their_configs_are_valid() {
    let readme = read("README.md");
    let section = readme.split("## Running a real app").nth(1).expect("README section Running a real app");
    let section = section.split("\n## ").next().unwrap_or_default();
    let flat = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let recipes = ["gunicorn", "uvicorn", "node"];
    let files: Vec<(String, String)> = recipes
        .iter()
        .flat_map(|r| {
            let dir = root().join("packaging/examples").join(r);
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).map(|e| {
                let p = e.expect("dir entry").path();
                (p.display().to_string(), flat(&std::fs::read_to_string(&p).expect("read")))
            })
        })
        .collect();
    assert_eq!(
        files.len(),
        7,
        "an app.toml and one file per recipe (two for uvicorn: the drain and the outcomes): {:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let mut blocks = 0;
    for fence in ["```python", "```js", "```toml"] {
        for block in section.split(fence).skip(1) {
            let code = block.split("```").next().unwrap_or_default();
            blocks += 1;
            assert!(
                files.iter().any(|(_, text)| text.contains(&flat(code))),
                "this README block is in none of packaging/examples/{{gunicorn,uvicorn,node}}/:\n{code}"
            );
        }
    }
    assert!(blocks >= 4, "README shows the gunicorn config and file, the uvicorn and the Node code: {blocks} blocks");
    assert!(section.contains("/usr/share/doc/handover/examples/"), "README names where the recipes are installed");

    // Each config is valid, with the programs it names standing in a directory of the test's.
    let dir = tempfile::tempdir().expect("tempdir");
    for prog in ["venv/bin/gunicorn", "venv/bin/uvicorn", "node"] {
        let p = dir.path().join(prog);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::copy("/bin/true", &p).expect("copy /bin/true");
    }
    let env = LoadEnv { runtime_directory: Some("/run/handover/app".into()), ..LoadEnv::default() };
    for r in recipes {
        let rel = format!("packaging/examples/{r}/app.toml");
        let text = read(&rel)
            .replace("/srv/app", &dir.path().display().to_string())
            .replace("[\"node\"", &format!("[\"{}\"", dir.path().join("node").display()));
        let c =
            config::parse(Path::new("/etc/handover/app.toml"), &text, &env).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(c.name, "app", "{rel}");
    }
}

/// `s` with what changes from run to run made constant: every number (`N`) and every
/// absolute path (`PATH`).
fn normalized_demo_output(s: &str) -> Vec<String> {
    s.lines()
        .map(|line| {
            let mut out = String::new();
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                if c.is_ascii_digit() {
                    while chars.peek().is_some_and(|d| d.is_ascii_digit() || *d == '.' || *d == ',') {
                        chars.next();
                    }
                    out.push('N');
                } else if c == '/' && (out.is_empty() || out.ends_with([' ', '('])) {
                    while chars.peek().is_some_and(|d| !d.is_whitespace() && *d != ')' && *d != ';') {
                        chars.next();
                    }
                    out.push_str("PATH");
                } else {
                    out.push(c);
                }
            }
            out.trim_end().to_owned()
        })
        .collect()
}

/// The README's sample of `handover demo` is what the demo prints, numbers, pids and paths
/// aside: the test runs it (on a free port, booting in 300 ms) and compares line by line.
#[test]
fn the_readme_shows_what_handover_demo_prints() {
    let readme = read("README.md");
    let after = readme.split("`handover demo` runs a real").nth(1).expect("README's demo paragraph");
    let block = after.split("```text\n").nth(1).and_then(|b| b.split("```").next()).expect("a ```text block");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_handover"));
    cmd.args(["demo", "--tour-only", "--boot-ms", "300", "--listen"]).arg(format!("127.0.0.1:{port}"));
    cmd.stdin(std::process::Stdio::null());
    let out = common::run_with_deadline(cmd, std::time::Duration::from_secs(120));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "handover demo failed: {printed}{}", String::from_utf8_lossy(&out.stderr));
    let (want, got) = (normalized_demo_output(block), normalized_demo_output(&printed));
    assert_eq!(want, got, "README's demo sample (left) is not what handover demo prints (right):\n{printed}");
}
