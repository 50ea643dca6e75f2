//! Client commands take the app's name (SPEC §1, issue 21 part 7): `handover status app`
//! reads CONFIG_DIR/app.toml; with no name and no `-c`, the one app configured there; a
//! missing or ambiguous app is exit 2 with the files it looked for, never a `:0:0:` error.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;

/// `handover ARGS` with `HANDOVER_CONFIG_DIR=dir` and no `$HANDOVER_CONFIG`.
fn client(dir: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env("HANDOVER_CONFIG_DIR", dir).env_remove("HANDOVER_CONFIG");
    run_with_deadline(cmd, Duration::from_secs(30))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn an_app_is_named_or_found_and_a_missing_one_is_explained() {
    let d = Daemon::start(Options { workers: 1, ..Options::default() });
    let dir = d.dir.path();
    // By name, and as the only app in the directory.
    for args in [&["status", "app"][..], &["status"][..], &["scale", "2", "app"][..]] {
        let out = client(dir, args);
        assert!(out.status.success(), "handover {args:?}: {}", text(&out));
    }
    // A name that is not configured: exit 2, naming the file looked for and what there is.
    let out = client(dir, &["status", "shop"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("shop.toml") && said.contains("configured here: app"), "{said}");
    assert!(!said.contains(":0:0:"), "{said}");
    // Two apps and no name: which ones, and how to name one.
    std::fs::write(dir.join("blog.toml"), "name = \"blog\"\n").unwrap();
    let out = client(dir, &["status"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("app, blog") && text(&out).contains("name one"), "{}", text(&out));
    // None at all: the default file and how to name the config.
    let empty = tempfile::tempdir().unwrap();
    let out = client(empty.path(), &["reload"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("handover.toml") && text(&out).contains("-c FILE"), "{}", text(&out));
}
