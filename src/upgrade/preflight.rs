//! The pre-flight of `handover upgrade`: run the new binary's `handoff-check` before
//! anything changes, and judge its answer.
//!
//! The check runs as our child like a worker, but it is not one: the supervisor's reaper
//! hands its exit status here ([`Preflight::pid`]) instead of to the machine. Its output
//! (stdout and stderr on one pipe, at most [`MAX_OUTPUT`] kept) is read by a thread, so
//! the event loop never blocks on it; a check that does not finish within the deadline is
//! SIGKILLed by the supervisor.
use std::io::{Read, Seek, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};

use tokio::sync::oneshot;

use super::{CheckAnswer, HANDOFF_FORMAT};

/// The most output of the check that is kept (the rest is read and dropped).
pub const MAX_OUTPUT: usize = 64 * 1024;

/// A running pre-flight check.
#[derive(Debug)]
pub struct Preflight {
    pid: i32,
    /// Its output, once it closed the pipe.
    pub output: oneshot::Receiver<Vec<u8>>,
}

impl Preflight {
    /// Starts `binary handoff-check --format N --config FILE` with `handoff` (the hand-off
    /// as it would be now) on its stdin. Err: it could not be started (not executable, not
    /// found, not a program), said in words.
    pub fn start(binary: &Path, config: &Path, handoff: &[u8]) -> Result<Preflight, String> {
        let stdin = memfd_with(handoff).map_err(|e| format!("preparing the check's input: {e}"))?;
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("creating a pipe: {e}"))?;
        let write2 = write.try_clone().map_err(|e| format!("creating a pipe: {e}"))?;
        use std::os::unix::process::CommandExt;
        let child = Command::new(binary)
            .arg("handoff-check")
            .arg("--format")
            .arg(HANDOFF_FORMAT.to_string())
            .arg("--config")
            .arg(config)
            .stdin(Stdio::from(stdin))
            .stdout(Stdio::from(write))
            .stderr(Stdio::from(write2))
            // Its own group: at the deadline the whole check goes, whatever it started.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let pid = i32::try_from(child.id()).map_err(|_| "pid out of range".to_string())?;
        // The std handle is dropped without waiting: the supervisor's reaper reaps it.
        drop(child);
        let (tx, rx) = oneshot::channel();
        let reader = std::thread::Builder::new().name("upgrade-check".into()).spawn(move || {
            let mut kept = Vec::new();
            let mut pipe = std::fs::File::from(read);
            let _ = (&mut pipe).take(MAX_OUTPUT as u64).read_to_end(&mut kept);
            // Drain the rest so the check never blocks on a full pipe.
            let _ = std::io::copy(&mut pipe, &mut std::io::sink());
            let _ = tx.send(kept);
        });
        if let Err(e) = reader {
            return Err(format!("starting the check's reader: {e}"));
        }
        Ok(Preflight { pid, output: rx })
    }

    /// The check's pid (our child until the supervisor reaps it), also its process group.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

/// Judges a finished check from how it exited and what it printed: Ok(the new version) if
/// it accepts, else why not, in words.
pub fn verdict(status: &str, exited_zero: bool, output: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(output);
    let answer = text.lines().rev().find_map(|l| serde_json::from_str::<CheckAnswer>(l.trim()).ok());
    match answer {
        Some(a) if a.accepts && exited_zero => Ok(a.version),
        Some(a) => Err(format!(
            "the new binary (handover {}) refuses the hand-off: {}",
            a.version,
            a.reason.unwrap_or_else(|| format!("it {status}"))
        )),
        None => {
            let said: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let tail = said.iter().rev().take(3).rev().copied().collect::<Vec<_>>().join(" / ");
            let tail = crate::text::strip_control_chars(&tail);
            let tail: String = tail.chars().take(300).collect();
            if tail.is_empty() {
                Err(format!("the new binary is not a handover that knows upgrades: it {status} without answering"))
            } else {
                Err(format!("the new binary is not a handover that knows upgrades: it {status}, saying: {tail}"))
            }
        }
    }
}

/// An anonymous file holding `bytes`, positioned at its start (close-on-exec: the spawn
/// passes it as stdin only).
pub fn memfd_with(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let name = c"handover-handoff";
    // SAFETY: memfd_create(2) with a valid NUL-terminated name and flags; it returns a new
    // descriptor we take ownership of below, or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    file.rewind()?;
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_say_what_the_new_binary_did() {
        let ok = br#"{"accepts":true,"version":"9.9.9","format":1}"#;
        assert_eq!(verdict("exited with code 0", true, ok), Ok("9.9.9".into()));
        let no = br#"{"accepts":false,"version":"9.9.9","format":2,"reason":"format 3 unknown"}"#;
        let e = verdict("exited with code 1", false, no).expect_err("refused");
        assert!(e.contains("9.9.9") && e.contains("format 3 unknown"), "{e}");
        let e = verdict("exited with code 1", false, b"").expect_err("script");
        assert!(e.contains("without answering"), "{e}");
        let e =
            verdict("exited with code 2", false, b"error: unrecognized subcommand 'handoff-check'\n").expect_err("old");
        assert!(e.contains("unrecognized subcommand"), "{e}");
        // Terminal escapes in what it printed do not reach the log.
        let e = verdict("exited with code 1", false, b"\x1b[31mboom\n").expect_err("esc");
        assert!(!e.contains('\x1b'), "{e}");
    }

    #[test]
    fn a_memfd_reads_back_from_its_start() {
        let fd = memfd_with(b"hello").expect("memfd");
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).expect("read");
        assert_eq!(s, "hello");
    }
}
