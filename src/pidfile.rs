//! The daemon's pid file (`pidfile =`), and [`replace`], the one atomic file writer, which
//! the metrics textfile uses too.
use std::io::Write;
use std::path::{Path, PathBuf};

/// The daemon's pid file (`pidfile =`), written so that nobody else's file is touched.
///
/// Its directory may be writable by others (`/tmp`, a shared run directory), so the pid is
/// written to a new file next to it (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0644) that is then
/// renamed over the path: rename(2) replaces whatever is at the path, a planted symlink
/// included, without following it. At exit the file is removed only if it still holds our
/// pid (opened with `O_NOFOLLOW`): a newer daemon's pid file stays.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    pid: u32,
}

impl Pidfile {
    /// Writes `pid` to `path` as described on [`Pidfile`].
    pub fn write(path: &Path, pid: u32) -> std::io::Result<Pidfile> {
        replace(path, format!("{pid}\n").as_bytes(), Temporary::Unique { pid })?;
        Ok(Pidfile { path: path.to_path_buf(), pid })
    }

    /// Where the pid file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file if it is still a regular file that holds our pid; true if removed.
    pub fn remove(self) -> bool {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let ours = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&self.path)
            .and_then(|f| {
                if !f.metadata()?.is_file() {
                    return Ok(false);
                }
                let mut text = String::new();
                f.take(64).read_to_string(&mut text)?;
                Ok(text.trim().parse::<u32>().ok() == Some(self.pid))
            })
            .unwrap_or(false);
        ours && std::fs::remove_file(&self.path).is_ok()
    }
}

/// How [`replace`] names its temporary file, in the directory of the file it replaces.
#[derive(Debug, Clone, Copy)]
pub enum Temporary {
    /// `.NAME.tmp`, for a directory only this daemon writes to (the metrics textfile): one
    /// left by a write that died halfway, or planted, is unlinked (a symlink itself, never
    /// followed) and the name created again.
    Beside,
    /// `.NAME.PID.NONCE.N.tmp`, for a directory others may write to (`/tmp`, a shared run
    /// directory): a name someone planted is refused by `O_EXCL` and the next is tried.
    Unique {
        /// The pid in the names.
        pid: u32,
    },
}

/// Replaces `path` with `contents`, atomically: a temporary file beside it, created
/// exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`, so a symlink planted there is never followed;
/// named per [`Temporary`]), mode 0644 whatever the umask, then renamed over `path`
/// (rename(2) replaces whatever is at the path, a symlink included, without following it).
/// A reader holding the old file keeps reading the old contents. On an error the temporary
/// file is removed and `path` is untouched. The one writer of the pid file and the metrics
/// textfile.
pub fn replace(path: &Path, contents: &[u8], temporary: Temporary) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let Some(name) = path.file_name() else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file"));
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let open = |tmp: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(tmp)
    };
    let (tmp, mut file) = match temporary {
        Temporary::Beside => {
            let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
            let file = match open(&tmp) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // Left by a write that died halfway, or planted: unlink removes a symlink itself.
                    std::fs::remove_file(&tmp)?;
                    open(&tmp)?
                }
                other => other?,
            };
            (tmp, file)
        }
        Temporary::Unique { pid } => {
            // Names others can guess: O_EXCL refuses one they planted, and the next is tried.
            let nonce =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            let mut last_error = None;
            let mut opened = None;
            for attempt in 0..16u32 {
                let mut tmp_name = std::ffi::OsString::from(".");
                tmp_name.push(name);
                tmp_name.push(format!(".{pid}.{nonce:x}.{attempt}.tmp"));
                let tmp = dir.join(tmp_name);
                match open(&tmp) {
                    Ok(f) => {
                        opened = Some((tmp, f));
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last_error = Some(e),
                    Err(e) => return Err(e),
                }
            }
            match opened {
                Some(o) => o,
                None => return Err(last_error.unwrap_or_else(|| std::io::Error::other("no free temporary name"))),
            }
        }
    };
    let written = (|| {
        // The umask may have taken bits away; other users' tools must be able to read it.
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.write_all(contents)?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pidfile_replaces_a_planted_symlink_and_leaves_its_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let path = dir.path().join("app.pid");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let p = Pidfile::write(&path, 4242).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_file(), "the symlink was replaced by a file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4242\n");
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(p.remove());
        assert!(!path.exists());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    }

    #[test]
    fn pidfile_is_removed_only_while_it_holds_our_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        let p = Pidfile::write(&path, 4242).unwrap();
        std::fs::write(&path, "77\n").unwrap(); // a newer daemon's
        assert!(!p.remove());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "77\n");
        // A symlink planted at the path after we wrote it is not followed, nor removed.
        let p = Pidfile::write(&path, 4242).unwrap();
        let ours_elsewhere = dir.path().join("elsewhere");
        std::fs::write(&ours_elsewhere, "4242\n").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&ours_elsewhere, &path).unwrap();
        assert!(!p.remove());
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
    }

    #[test]
    fn pidfile_errors_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        // The path is a directory: the rename fails, the temporary file is removed.
        let path = dir.path().join("app.pid");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), "").unwrap();
        assert!(Pidfile::write(&path, 1).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(Pidfile::write(&dir.path().join("missing/app.pid"), 1).is_err());
    }
}
