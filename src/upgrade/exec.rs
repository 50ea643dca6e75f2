//! The exec of `handover upgrade`, and the new binary's first read of the hand-off.
//!
//! The caller has blocked every signal (so none is lost: blocked signals stay pending
//! across `execve`) and taken every event the loop had been told about. Here the hand-off
//! is written to a memfd, close-on-exec is cleared on exactly the descriptors it names (and
//! the memfd), and the binary is executed with `HANDOVER_HANDOFF_FD` in its environment.
//! If the exec fails, every flag is set back and the error returned: the old binary goes on.
//!
//! # The way back
//! The pre-flight judges the state as it was when the check ran, and the file at the path
//! may change between the check and the exec (a package upgrade landing then). So a new
//! binary can still find, after the exec, that it cannot take the hand-off, and the pid
//! that systemd watches must not die of that. The old binary therefore also hands over a
//! descriptor of its own executable (`O_PATH` of `/proc/self/exe`, valid even when the
//! file was replaced or deleted since), named by [`RETURN_EXE_FD_VAR`]. A new binary that
//! refuses the hand-off executes that descriptor ([`hand_back`]) with the hand-off's bytes
//! unchanged and the reason in [`RETURNED_VAR`]; the old binary takes its own state back,
//! answers `handover upgrade` with the reason (exit 1) and goes on. Signals stay blocked
//! through both execs, so none is lost. Only binaries of this version or later know the
//! way back: a binary that does not is refused by the pre-flight or takes the hand-off.
use std::ffi::{CString, OsString};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{HandOff, HANDOFF_FD_VAR, MAX_HANDOFF_BYTES};

/// The environment variable naming the descriptor of the old binary's executable, the
/// way back for a new binary that refuses the hand-off (see the module docs).
pub const RETURN_EXE_FD_VAR: &str = "HANDOVER_RETURN_EXE_FD";

/// The environment variable set by a new binary that hands the hand-off back: why it
/// refused it. The old binary answers `handover upgrade` with it.
pub const RETURNED_VAR: &str = "HANDOVER_HANDOFF_RETURNED";

/// The longest reason passed back (the environment is no place for a novel).
const MAX_REASON: usize = 2000;

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
    // The way back (see the module docs). Without it the upgrade still goes ahead, as it
    // did before there was one: it is a safety net, not a precondition.
    let way_back = open_own_executable().ok();
    let path = cstr(binary.as_os_str().as_bytes())?;
    let mut extra = vec![(HANDOFF_FD_VAR, memfd.as_raw_fd().to_string())];
    if let Some(exe) = &way_back {
        extra.push((RETURN_EXE_FD_VAR, exe.as_raw_fd().to_string()));
    }
    let (argv, envp) = c_arrays(argv, env, &extra)?;
    let argv_ptrs = null_terminated(&argv);
    let envp_ptrs = null_terminated(&envp);

    let mut fds = handoff.fds();
    fds.push(memfd.as_raw_fd());
    fds.extend(way_back.as_ref().map(AsRawFd::as_raw_fd));
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
    drop(way_back);
    result
}

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::other("a NUL byte in an argument"))
}

/// `argv` and `env` (without any of the variables of this module, which only `extra` sets)
/// as C strings.
fn c_arrays(
    argv: &[OsString],
    env: &[(OsString, OsString)],
    extra: &[(&str, String)],
) -> io::Result<(Vec<CString>, Vec<CString>)> {
    let argv: Vec<CString> = argv.iter().map(|a| cstr(a.as_bytes())).collect::<io::Result<_>>()?;
    let ours = [HANDOFF_FD_VAR, RETURN_EXE_FD_VAR, RETURNED_VAR];
    let mut envp: Vec<CString> = Vec::with_capacity(env.len() + extra.len());
    for (k, v) in env.iter().filter(|(k, _)| !ours.iter().any(|o| k == o)) {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        envp.push(cstr(&kv)?);
    }
    for (k, v) in extra {
        envp.push(cstr(format!("{k}={v}").as_bytes())?);
    }
    Ok((argv, envp))
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
}

/// An `O_PATH` descriptor of the executable this process runs (close-on-exec until the
/// exec clears it): it stays valid when the file at the path is replaced or deleted.
fn open_own_executable() -> io::Result<OwnedFd> {
    let path = c"/proc/self/exe";
    // SAFETY: open(2) with a valid NUL-terminated path and flags; it returns a new
    // descriptor we take ownership of below, or -1.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// In a new binary that cannot take the hand-off: executes the old binary again through
/// `exe` (the descriptor [`RETURN_EXE_FD_VAR`] named), with `bytes` (the hand-off as it
/// came, unchanged) and `reason` in [`RETURNED_VAR`]. Every descriptor the hand-off names
/// is still open and inheritable (nothing has taken them yet). Returns only if the exec
/// failed (the error).
pub fn hand_back(exe: &OwnedFd, argv: &[OsString], bytes: &[u8], reason: &str) -> io::Error {
    let attempt = || -> io::Result<()> {
        let memfd = super::preflight::memfd_with(bytes)?;
        set_cloexec(memfd.as_raw_fd(), false)?;
        let mut reason: String = reason.chars().filter(|&c| c != '\0').take(MAX_REASON).collect();
        if reason.is_empty() {
            reason = "refused".into();
        }
        let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let extra = [(HANDOFF_FD_VAR, memfd.as_raw_fd().to_string()), (RETURNED_VAR, reason)];
        let (argv, envp) = c_arrays(argv, &env, &extra)?;
        let argv_ptrs = null_terminated(&argv);
        let envp_ptrs = null_terminated(&envp);
        // SAFETY: fexecve(3) (execveat with AT_EMPTY_PATH) on a descriptor we own, with
        // NULL-terminated arrays of NUL-terminated strings alive until the call returns (it
        // returns only on failure). `exe` is close-on-exec, which is fine for an ELF
        // executable (only a script would need it open), and /proc/self/exe is always one.
        unsafe { libc::fexecve(exe.as_raw_fd(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
        let e = io::Error::last_os_error();
        drop(memfd);
        Err(e)
    };
    match attempt() {
        Err(e) => e,
        Ok(()) => io::Error::other("fexecve returned without an error"),
    }
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

/// What a new binary (or an old one given its hand-off back) found in its environment.
#[derive(Debug)]
pub struct Taken {
    /// The hand-off, or why it cannot be read.
    pub handoff: Result<HandOff, String>,
    /// Its bytes as read (what [`hand_back`] passes back unchanged).
    pub bytes: Vec<u8>,
    /// The old binary's executable, when it gave a way back.
    pub way_back: Option<OwnedFd>,
    /// Set when this binary wrote the hand-off and a new one handed it back: why.
    pub returned: Option<String>,
}

/// In the new binary: the hand-off named by `HANDOVER_HANDOFF_FD`, if this process is one,
/// with the way back and the returned reason if there are (the variables are removed from
/// the environment either way, so no worker inherits them).
///
/// # Safety
/// Call once, from `main`, before any other thread exists (it changes the environment) and
/// before anything else could own the descriptors the variables name.
pub unsafe fn take_from_env() -> Option<Taken> {
    let value = std::env::var_os(HANDOFF_FD_VAR)?;
    let way_back = std::env::var_os(RETURN_EXE_FD_VAR);
    let returned = std::env::var_os(RETURNED_VAR).map(|r| r.to_string_lossy().into_owned());
    for var in [HANDOFF_FD_VAR, RETURN_EXE_FD_VAR, RETURNED_VAR] {
        // SAFETY: the caller guarantees no other thread exists (the environment is not shared).
        unsafe { std::env::remove_var(var) };
    }
    let way_back = way_back
        .and_then(|v| v.to_str().and_then(|v| v.parse::<RawFd>().ok()))
        .filter(|&fd| fd > 2 && set_cloexec(fd, true).is_ok())
        // SAFETY: the old binary opened this descriptor for us alone (set_cloexec just
        // proved it open) and named it in the variable; the caller guarantees nothing else
        // in this process owns it.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let mut taken = Taken { handoff: Err(String::new()), bytes: Vec::new(), way_back, returned };
    let fd: RawFd = match value.to_str().and_then(|v| v.parse().ok()) {
        Some(fd) if fd > 2 => fd,
        _ => {
            taken.handoff = Err(format!("{HANDOFF_FD_VAR}={value:?} is not a descriptor number"));
            return Some(taken);
        }
    };
    // SAFETY: fcntl(F_GETFD) only checks that the descriptor is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        taken.handoff = Err(format!("{HANDOFF_FD_VAR}={fd}: the descriptor is not open"));
        return Some(taken);
    }
    // SAFETY: the old binary opened this memfd for us alone and named it in the variable;
    // the caller guarantees nothing else in this process owns it.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if let Err(e) = file.take(MAX_HANDOFF_BYTES).read_to_end(&mut taken.bytes) {
        taken.handoff = Err(format!("reading the hand-off: {e}"));
        return Some(taken);
    }
    taken.handoff = HandOff::parse(&taken.bytes);
    Some(taken)
}
