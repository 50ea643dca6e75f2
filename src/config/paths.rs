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
pub(super) fn is_executable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
}
