//! The exec of `handover upgrade`, and the new binary's first read of the hand-off.
//!
//! The caller has blocked every signal (so none is lost: blocked signals stay pending
//! across `execve`) and taken every event the loop had been told about. Here the hand-off
//! is written to a memfd, close-on-exec is cleared on exactly the descriptors it names (and
//! the memfd), and the binary is executed with `HANDOVER_HANDOFF_FD` in its environment.
//! If the exec fails, every flag is set back and the error returned: the old binary goes on.
use std::ffi::{CString, OsString};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{HandOff, HANDOFF_FD_VAR, MAX_HANDOFF_BYTES};

/// Executes `binary` in place with `handoff`. Returns only if that failed (the error),
/// with the process as it was.
pub fn exec_in_place(binary: &Path, argv: &[OsString], env: &[(OsString, OsString)], handoff: &HandOff) -> io::Error {
    // Queued log lines would be lost with this process image (bounded: see logging::flush).
    crate::logging::flush(std::time::Duration::from_millis(500));
    match prepare_and_exec(binary, argv, env, handoff) {
        Err(e) => e,
        Ok(()) => io::Error::other("execve returned without an error"),
    }
}

fn prepare_and_exec(
    binary: &Path,
    argv: &[OsString],
    env: &[(OsString, OsString)],
    handoff: &HandOff,
) -> io::Result<()> {
    let json = serde_json::to_vec(handoff).map_err(io::Error::other)?;
    let memfd = super::preflight::memfd_with(&json)?;
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::other("a NUL byte in an argument"));
    let path = cstr(binary.as_os_str().as_bytes())?;
    let argv: Vec<CString> = argv.iter().map(|a| cstr(a.as_bytes())).collect::<io::Result<_>>()?;
    let mut envp: Vec<CString> = Vec::with_capacity(env.len() + 1);
    for (k, v) in env.iter().filter(|(k, _)| k != HANDOFF_FD_VAR) {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        envp.push(cstr(&kv)?);
    }
    envp.push(cstr(format!("{HANDOFF_FD_VAR}={}", memfd.as_raw_fd()).as_bytes())?);
    let argv_ptrs: Vec<*const libc::c_char> =
        argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp_ptrs: Vec<*const libc::c_char> =
        envp.iter().map(|e| e.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();

    let mut fds = handoff.fds();
    fds.push(memfd.as_raw_fd());
    let mut cleared = Vec::with_capacity(fds.len());
    let mut result = Ok(());
    for &fd in &fds {
        match set_cloexec(fd, false) {
            Ok(()) => cleared.push(fd),
            Err(e) => {
                result = Err(io::Error::new(e.kind(), format!("fd {fd}: {e}")));
                break;
            }
        }
    }
    if result.is_ok() {
        // SAFETY: execve(2) with a NUL-terminated path and NULL-terminated arrays of
        // NUL-terminated strings, all alive until the call returns (it returns only on
        // failure). Every other thread dies with the exec; the descriptors it keeps open
        // are exactly `fds`.
        unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
        result = Err(io::Error::last_os_error());
    }
    for fd in cleared {
        let _ = set_cloexec(fd, true);
    }
    drop(memfd);
    result
}

fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl(2) F_SETFD on a descriptor number; it touches only that descriptor's
    // flags (EBADF if it is not open), no memory is passed.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// In the new binary: the hand-off named by `HANDOVER_HANDOFF_FD`, if this process is one
/// (the variable is removed from the environment either way, so no worker inherits it).
///
/// # Safety
/// Call once, from `main`, before any other thread exists (it changes the environment) and
/// before anything else could own the descriptor the variable names.
pub unsafe fn take_from_env() -> Option<Result<HandOff, String>> {
    let value = std::env::var_os(HANDOFF_FD_VAR)?;
    // SAFETY: the caller guarantees no other thread exists (the environment is not shared).
    unsafe { std::env::remove_var(HANDOFF_FD_VAR) };
    let fd: RawFd = match value.to_str().and_then(|v| v.parse().ok()) {
        Some(fd) if fd > 2 => fd,
        _ => return Some(Err(format!("{HANDOFF_FD_VAR}={value:?} is not a descriptor number"))),
    };
    // SAFETY: fcntl(F_GETFD) only checks that the descriptor is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Some(Err(format!("{HANDOFF_FD_VAR}={fd}: the descriptor is not open")));
    }
    // SAFETY: the old binary opened this memfd for us alone and named it in the variable;
    // the caller guarantees nothing else in this process owns it.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_HANDOFF_BYTES).read_to_end(&mut bytes) {
        return Some(Err(format!("reading the hand-off: {e}")));
    }
    Some(HandOff::parse(&bytes))
}
