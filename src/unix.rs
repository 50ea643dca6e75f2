//! Small unix helpers below everything else: where a daemon's sockets live and which
//! control socket paths are refused (the workers' NOTIFY_SOCKET is the control socket's
//! path plus [`NOTIFY_SUFFIX`]: see `worker::readiness`), removing a socket file nobody
//! listens on, FD_CLOEXEC, and the wall clock.
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// What the file name of the workers' NOTIFY_SOCKET adds to the control socket's.
pub const NOTIFY_SUFFIX: &str = ".notify";

/// The longest path a unix socket address holds (sun_path without its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The workers' NOTIFY_SOCKET of the daemon whose control socket is `control_socket`: its
/// full path with [`NOTIFY_SUFFIX`] appended (see the module doc for why).
pub fn notify_path_for(control_socket: &Path) -> PathBuf {
    let mut p = control_socket.as_os_str().to_owned();
    p.push(NOTIFY_SUFFIX);
    PathBuf::from(p)
}

/// Refuses a `control_socket` that would collide with a daemon's notify socket (it ends in
/// [`NOTIFY_SUFFIX`]) or whose notify socket path would not fit in a socket address.
pub fn check_control_socket_path(control_socket: &Path) -> Result<(), String> {
    if control_socket.as_os_str().as_encoded_bytes().ends_with(NOTIFY_SUFFIX.as_bytes()) {
        return Err(format!(
            "must not end in \"{NOTIFY_SUFFIX}\": such names are the workers' NOTIFY_SOCKETs \
             (the control socket path + \"{NOTIFY_SUFFIX}\")"
        ));
    }
    let notify = notify_path_for(control_socket);
    let len = notify.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "is too long: the workers' NOTIFY_SOCKET {} would be {len} bytes, more than a unix \
             socket path holds ({MAX_SOCKET_PATH})",
            notify.display()
        ));
    }
    Ok(())
}

/// Removes `path` if it is a socket nobody listens on; refuses (AddrInUse) if something
/// does, and (AlreadyExists) if it is not a socket. Checks with a datagram and then a stream
/// connect, so a live socket of either type is recognised (a connect to a socket of the
/// other type fails with EPROTOTYPE, which says nothing about whether it is live).
pub fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; not removing it", path.display()),
            ))
        }
        Ok(_) => {}
    }
    let in_use =
        || io::Error::new(io::ErrorKind::AddrInUse, format!("{} is in use by another process", path.display()));
    let datagram = std::os::unix::net::UnixDatagram::unbound().and_then(|s| s.connect(path));
    let refused = |e: &io::Error| e.raw_os_error() == Some(libc::ECONNREFUSED);
    match datagram {
        Ok(()) => Err(in_use()),
        Err(e) if refused(&e) => std::fs::remove_file(path),
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(in_use()),
            Err(e) if refused(&e) => std::fs::remove_file(path),
            Err(e) => {
                Err(io::Error::new(e.kind(), format!("{}: cannot tell whether it is in use: {e}", path.display())))
            }
        },
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: cannot tell whether it is in use: {e}", path.display()))),
    }
}

/// Sets FD_CLOEXEC on `fd` again: a descriptor handed across `handover upgrade`'s exec had
/// it cleared, and workers must not inherit it.
pub fn set_cloexec(fd: &impl std::os::fd::AsFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(drop).map_err(io::Error::from)
}

/// Now, in seconds since the epoch (0 if the clock is before it).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
