//! Paths: the control socket's default and explicit path, paths relative to the config
//! file, the metrics textfile, unix socket paths, the working directory and the worker's
//! program looked up in `PATH`.
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::checks::*;
use super::LoadEnv;

/// The search path when the environment has no `PATH`: systemd's default for services.
pub(super) const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin";
/// The application name: `name` if the file sets it, else the file stem.
pub(super) fn name_or_stem(file: &Path, name: Option<&str>) -> String {
    match name {
        Some(n) => n.to_owned(),
        None => file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
    }
}

/// Where the control socket is, for the daemon and the CLI alike (SPEC §2): `explicit`
/// (relative to the file's directory), else `$RUNTIME_DIRECTORY/control.sock`, else
/// `/run/handover/<name>/control.sock` as root, else
/// `$XDG_RUNTIME_DIR/handover/<name>/control.sock`.
pub(super) fn control_socket_path(
    file: &Path,
    name: &str,
    explicit: Option<&str>,
    env: &LoadEnv,
) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        if p.is_empty() {
            return Err("must not be empty".into());
        }
        return Ok(relative_to_file(file, p));
    }
    if let Some(dir) = &env.runtime_directory {
        Ok(dir.join("control.sock"))
    } else if env.is_root {
        Ok(Path::new("/run/handover").join(name).join("control.sock"))
    } else if let Some(dir) = &env.xdg_runtime_dir {
        Ok(dir.join("handover").join(name).join("control.sock"))
    } else {
        Err("no default applies (not root, and neither $RUNTIME_DIRECTORY nor \
             $XDG_RUNTIME_DIR is set); set control_socket"
            .into())
    }
}

/// The directory relative paths in the file are resolved against. Made absolute so that
/// the daemon and the CLI agree, and so a later chdir cannot change its meaning.
pub(super) fn base_dir(file: &Path) -> PathBuf {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

pub(super) fn relative_to_file(file: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir(file).join(p)
    }
}

/// `metrics.textfile`: a file (relative to the config file's directory) whose name ends in
/// `.prom` (node_exporter's textfile collector reads no other), in a directory that exists.
pub(super) fn check_textfile(file: &Path, text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    no_nul(text)?;
    if text.ends_with('/') {
        return Err(format!("\"{text}\" is a directory; name the file, e.g. \"{text}app.prom\""));
    }
    let path = relative_to_file(file, text);
    if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
        return Err(format!("{} is a directory; name a file in it", path.display()));
    }
    let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
        return Err(format!("\"{text}\" does not name a file"));
    };
    if !file_name.ends_with(".prom") || file_name == ".prom" || file_name.starts_with('.') {
        return Err(format!(
            "{} must be named NAME.prom (node_exporter's textfile collector reads only *.prom files, \
             and handover writes its temporary file as .NAME.prom.tmp beside it)",
            path.display()
        ));
    }
    // Whether its directory exists and is writable is not checked: that is the state of
    // the machine, not of the file, and the metrics are optional. A daemon whose metrics
    // directory went away must still start and reload; it reports the failed writes
    // (status, journal) instead. `handover check` warns.
    Ok(path)
}

pub(super) fn check_working_directory(wd: &str) -> Result<PathBuf, String> {
    no_nul(wd)?;
    let p = Path::new(wd);
    if !p.is_absolute() {
        return Err(format!("must be an absolute path, not \"{wd}\""));
    }
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => Ok(p.to_path_buf()),
        Ok(_) => Err(format!("{wd} is not a directory")),
        Err(e) => Err(format!("{wd}: {e}")),
    }
}

/// Resolves `command[0]` now, so that a typo fails `handover check` and the reload instead
/// of every worker after fork. The path is not canonicalized: a venv's `bin/python` is a
/// symlink that must be run by its own name to find the venv.
pub(super) fn resolve_program(
    prog: &str,
    working_directory: Option<&Path>,
    base_dir: &Path,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, String> {
    if prog.is_empty() {
        return Err("the program name (command[0]) is empty".into());
    }
    if prog.contains('/') {
        let p = Path::new(prog);
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            // Relative to where the worker starts, as the shell would see it there.
            working_directory.unwrap_or(base_dir).join(p)
        };
        return match std::fs::metadata(&full) {
            Err(e) => Err(format!("program \"{prog}\" ({}): {e}", full.display())),
            Ok(m) if !m.is_file() => Err(format!("program \"{prog}\" ({}) is not a regular file", full.display())),
            Ok(_) if !is_executable(&full) => Err(format!("program \"{prog}\" ({}) is not executable", full.display())),
            Ok(_) => Ok(full),
        };
    }

    let search = path_var.unwrap_or(OsStr::new(DEFAULT_PATH));
    let mut not_executable = None;
    for dir in std::env::split_paths(search) {
        // An empty or relative PATH entry would make the result depend on the current
        // directory of whoever loads the file; execvp would accept it, we do not.
        if !dir.is_absolute() {
            continue;
        }
        let candidate = dir.join(prog);
        match std::fs::metadata(&candidate) {
            Ok(m) if m.is_file() => {
                if is_executable(&candidate) {
                    return Ok(candidate);
                }
                not_executable.get_or_insert(candidate);
            }
            _ => {}
        }
    }
    match not_executable {
        Some(p) => Err(format!("program \"{prog}\" found at {} but it is not executable", p.display())),
        None => Err(format!("program \"{prog}\" not found in PATH ({})", search.to_string_lossy())),
    }
}

/// access(2) rather than mode bits: it answers for our uid (and for root, "any x bit").
/// Pins the release a config runs (see [`super::Release`]): the program's directory and the
/// working directory with their symlinks resolved. A path that cannot be resolved (removed
/// meanwhile) stays as configured: the spawn then says what is missing.
pub(super) fn pin_release(program: &Path, working_directory: Option<&Path>) -> super::Release {
    let program = match (program.parent(), program.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir).map_or_else(|_| program.to_path_buf(), |d| d.join(name)),
        _ => program.to_path_buf(),
    };
    let working_directory = working_directory.map(|wd| std::fs::canonicalize(wd).unwrap_or_else(|_| wd.to_path_buf()));
    super::Release { program, working_directory }
}

pub(super) fn is_executable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
}

/// Why `who` cannot get to `path` (search permission on every directory on the way, then
/// execute on the file, and read as well for a `#!` script, which its interpreter opens; or
/// search on a directory), from mode bits: `None` when nothing stands in the way. ACLs are
/// not read, so this is for warnings (`handover check`), never a refusal. Both the path as
/// written and the file it resolves to (a venv's `bin/python` is a symlink) are checked.
pub(super) fn denied_to(path: &Path, who: &super::Credentials) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let allows = |meta: &std::fs::Metadata, bits: u32| -> bool {
        let mode = meta.mode();
        let granted = if who.uid == 0 {
            // root: directories always; files need some x bit for execute.
            return meta.is_dir() || bits & 0o1 == 0 || mode & 0o111 != 0;
        } else if meta.uid() == who.uid {
            mode >> 6
        } else if meta.gid() == who.gid || who.groups.contains(&meta.gid()) {
            mode >> 3
        } else {
            mode
        };
        granted & bits == bits
    };
    let mut paths = vec![path.to_path_buf()];
    if let Ok(real) = std::fs::canonicalize(path) {
        if real != path {
            paths.push(real);
        }
    }
    for p in &paths {
        for dir in p.ancestors().skip(1).collect::<Vec<_>>().into_iter().rev() {
            let Ok(meta) = std::fs::metadata(dir) else { continue };
            if !allows(&meta, 0o1) {
                return Some(format!("{} (mode {:04o}) cannot be searched", dir.display(), meta.mode() & 0o7777));
            }
        }
        let Ok(meta) = std::fs::metadata(p) else { continue };
        let script = !meta.is_dir() && std::fs::read(p).map(|b| b.starts_with(b"#!")).unwrap_or(false);
        let (bits, what) = match (meta.is_dir(), script) {
            (true, _) => (0o1, "searched"),
            (false, true) => (0o5, "read and executed (a #! script)"),
            (false, false) => (0o1, "executed"),
        };
        if !allows(&meta, bits) {
            return Some(format!("{} (mode {:04o}) cannot be {what}", p.display(), meta.mode() & 0o7777));
        }
    }
    None
}

#[cfg(test)]
mod denied_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::denied_to;
    use crate::config::Credentials;

    fn set_mode(p: &std::path::Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_program_under_a_private_directory_is_denied_to_a_stranger_and_says_where() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let bin = home.join("venv/bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let prog = bin.join("gunicorn");
        std::fs::write(&prog, "#!/bin/sh\n").expect("write");
        set_mode(dir.path(), 0o755);
        set_mode(&prog, 0o755);
        let stranger = Credentials { uid: 4_000_000, gid: 4_000_000, groups: vec![] };
        set_mode(&home, 0o700);
        let why = denied_to(&prog, &stranger).expect("a 0700 directory on the way");
        assert!(why.contains(&home.display().to_string()) && why.contains("0700"), "{why}");
        set_mode(&home, 0o755);
        assert_eq!(denied_to(&prog, &stranger), None);
        // A script must be readable too: its interpreter opens it.
        set_mode(&prog, 0o711);
        let why = denied_to(&prog, &stranger).expect("a script without read permission");
        assert!(why.contains("#! script"), "{why}");
        // Its owner may; so may a member of its group, where the group bits allow it.
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&prog).expect("stat");
        let owner = Credentials { uid: meta.uid(), gid: 4_000_000, groups: vec![] };
        assert_eq!(denied_to(&prog, &owner), None);
        set_mode(&prog, 0o750);
        let member = Credentials { uid: 4_000_000, gid: 4_000_001, groups: vec![meta.gid()] };
        assert_eq!(denied_to(&prog, &member), None);
        assert!(denied_to(&prog, &stranger).is_some());
        // The working directory: search permission.
        set_mode(&home, 0o750);
        assert!(denied_to(&home, &stranger).expect("0750, not a member").contains("cannot be searched"));
    }
}
