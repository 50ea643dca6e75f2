//! The shipped systemd files, checked without systemd (the e2e suite, `tests/e2e_systemd.rs`,
//! runs them under real systemd 252, 254, 257 and sid's):
//! - `systemd/handover-generator` restores the unit's own `ExecReload=` when the
//!   notify-reload drop-in is installed on systemd < 253, and does nothing on 253+ or for
//!   units of other programs;
//! - it gives every app with a config a valid, unique dynamic user name where the template's
//!   `User=handover-%i` is not one;
//! - the templates run unprivileged, one user per app, with the cgroup delegated and without
//!   the hardening that breaks JIT runtimes.
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// A fake unit search path: `etc` (the admin's) before `usr` (the package's), with the shipped
/// template in `usr`.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let t = Tree { dir: tempfile::tempdir().expect("tempdir") };
        t.put("usr/handover@.service", &read("systemd/handover@.service"));
        t
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn put(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, content).expect("write");
    }

    /// Runs the generator as systemd `version` would; the files it wrote, relative to its
    /// output directory, with their contents.
    fn generate(&self, version: &str) -> Vec<(String, String)> {
        let out = self.path(&format!("out-{version}"));
        let unit_path = format!("{} {}", self.path("etc").display(), self.path("usr").display());
        let status = Command::new(root().join("systemd/handover-generator"))
            .arg(&out)
            .arg(self.path("early"))
            .arg(self.path("late"))
            .env("HANDOVER_GENERATOR_SYSTEMD_VERSION", version)
            .env("HANDOVER_GENERATOR_UNIT_PATH", unit_path)
            .env("HANDOVER_GENERATOR_CONFIG_DIR", self.path("conf"))
            .status()
            .expect("running systemd/handover-generator");
        assert!(status.success(), "handover-generator exited {status}");
        let mut files = vec![];
        collect(&out, &out, &mut files);
        files.sort();
        files
    }
}

fn collect(base: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(base, &p, files);
        } else {
            let rel = p.strip_prefix(base).expect("under base").display().to_string();
            files.push((rel, std::fs::read_to_string(&p).expect("read")));
        }
    }
}

const GUARD: &str = "zz-handover-notify-reload-needs-253.conf";

#[test]
fn generator_restores_exec_reload_for_the_notify_reload_drop_in_before_253() {
    let t = Tree::new();
    t.put("etc/handover@app.service.d/notify-reload.conf", &read("systemd/notify-reload.conf"));
    let files = t.generate("252");
    assert_eq!(files.len(), 1, "{files:?}");
    let (name, content) = &files[0];
    assert_eq!(name, &format!("handover@app.service.d/{GUARD}"));
    // Reset, then the template's own line: the synchronous default recipe.
    assert!(
        content.contains("[Service]\nExecReload=\nExecReload=/usr/bin/handover reload -c /etc/handover/%i.toml\n"),
        "{content}"
    );
    // The guard sorts after the drop-in it repairs (drop-ins apply in file name order).
    assert!(GUARD > "notify-reload.conf" && GUARD > "override.conf");
    assert_eq!(t.generate("249").len(), 1, "every version before 253");
}

#[test]
fn generator_does_nothing_where_notify_reload_exists() {
    let t = Tree::new();
    t.put("etc/handover@app.service.d/notify-reload.conf", &read("systemd/notify-reload.conf"));
    for version in ["253", "254", "257", "262"] {
        assert_eq!(t.generate(version), vec![], "systemd {version}");
    }
    // An unreadable version: nothing either (a guard on 253+ would reload twice).
    assert_eq!(t.generate("unknown"), vec![]);
}

#[test]
fn generator_covers_the_template_and_copied_units_and_only_handovers() {
    let t = Tree::new();
    // A drop-in for every instance of the template.
    t.put("etc/handover@.service.d/notify-reload.conf", &read("systemd/notify-reload.conf"));
    // The plain example copied by an admin, with the drop-in.
    t.put("etc/app.service", &read("systemd/app.service"));
    t.put("etc/app.service.d/notify-reload.conf", &read("systemd/notify-reload.conf"));
    // Another program's unit with a notify-reload drop-in: not ours to touch.
    t.put(
        "usr/other.service",
        "[Service]\nType=notify\nExecStart=/usr/bin/other\nExecReload=/bin/kill -HUP $MAINPID\n",
    );
    t.put("etc/other.service.d/reload.conf", "[Service]\nType=notify-reload\nExecReload=\n");
    // A handover instance without the drop-in: untouched.
    t.put("etc/handover@quiet.service.d/limits.conf", "[Service]\nLimitNOFILE=4096\n");
    let files = t.generate("252");
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec![format!("app.service.d/{GUARD}"), format!("handover@.service.d/{GUARD}")]);
    assert!(files[0].1.contains("ExecReload=/usr/bin/handover reload -c /etc/handover/app.toml\n"), "{}", files[0].1);
}

/// The directives of a unit file's [Service] section (comments and blank lines dropped).
fn directives(rel: &str) -> Vec<String> {
    read(rel)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(str::to_owned)
        .collect()
}

#[test]
fn templates_run_unprivileged_with_a_delegated_cgroup() {
    for unit in ["systemd/handover@.service", "systemd/app.service"] {
        let d = directives(unit);
        for wanted in [
            "DynamicUser=yes",
            "Delegate=yes",
            "CapabilityBoundingSet=",
            "PrivateDevices=yes",
            "ProtectSystem=strict",
            "RestrictNamespaces=yes",
            "SystemCallFilter=@system-service",
        ] {
            assert!(d.iter().any(|l| l == wanted), "{unit} lacks {wanted}");
        }
        // One user per app (a dynamic one, named after the app), never root.
        let user = if unit.contains('@') { "User=handover-%i" } else { "User=handover-app" };
        assert!(d.iter().any(|l| l == user), "{unit} lacks {user}");
        assert_eq!(d.iter().filter(|l| l.starts_with("User=")).count(), 1, "{unit}: one User=");
        for key in ["Group=", "MemoryDenyWriteExecute=", "PrivateUsers=", "ProtectControlGroups="] {
            assert!(
                !d.iter().any(|l| l.starts_with(key)),
                "{unit} sets {key}: root, JIT runtimes (Node), `handover status` as root or the delegated cgroup would break"
            );
        }
        assert!(d.iter().any(|l| l.starts_with("StateDirectory=handover/")), "{unit}: no StateDirectory=");
    }
}

/// What systemd accepts as a dynamic user's name (measured on 252, 254, 257 and 262): at most
/// 31 characters, a letter or `_` first, then letters, digits, `_`, `-`.
fn valid_dynamic_user(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 31
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[test]
fn generator_gives_every_app_a_valid_unique_user() {
    let t = Tree::new();
    let direct = ["app", "my-app", "a-b", "My_App2", "1st", "abcdefghijklmnopqrstuv"];
    let hashed = ["shop.example.com", "a\\x2db", "x@y", "abcdefghijklmnopqrstuvw", "a.b"];
    // Not unit instance names at all, or refused by systemd at load (":"): nothing to write.
    let ignored = ["a:b", "a b", "caf\u{e9}"];
    for name in direct.iter().chain(&hashed).chain(&ignored) {
        t.put(&format!("conf/{name}.toml"), "");
    }
    t.put("conf/notes.txt", "");
    for version in ["252", "257"] {
        let files = t.generate(version);
        let mut users = std::collections::BTreeSet::new();
        for name in direct {
            let user = format!("handover-{name}");
            assert!(valid_dynamic_user(&user), "{user}");
            assert!(users.insert(user));
        }
        let mut written = vec![];
        for (file, content) in &files {
            let app = file
                .strip_prefix("handover@")
                .and_then(|f| f.strip_suffix(".service.d/50-handover-user.conf"))
                .unwrap_or_else(|| panic!("unexpected file {file}"));
            let user = content
                .lines()
                .find_map(|l| l.strip_prefix("User="))
                .unwrap_or_else(|| panic!("{file} sets no User=: {content}"));
            assert!(content.contains("[Service]\n"), "{content}");
            assert!(valid_dynamic_user(user), "{app}: {user} is not a valid dynamic user name");
            assert!(user.starts_with("handover_") && user.len() == 25, "{app}: {user}");
            assert!(users.insert(user.to_owned()), "{app}: {user} is not unique");
            written.push(app.to_owned());
        }
        written.sort();
        let mut expected: Vec<String> = hashed.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(written, expected, "systemd {version}");
    }
}
