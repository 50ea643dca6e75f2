//! The only process creation in handover.
//!
//! (About 800 lines on purpose: this is the one fenced area of fork/exec and its `unsafe`
//! (style rule 8); what runs between clone and exec is reviewed in one file.)
//!
//! Everything the child needs is prepared before it is created: the argv and envp arrays,
//! the sockets that would be overwritten duplicated above the target range, a `LISTEN_PID=`
//! entry with room for the pid, the signal sets, the identity to switch to, and the child's
//! stack (one per thread, reused). The child is created vfork-style,
//! `clone3(CLONE_VM | CLONE_VFORK | CLONE_FILES | CLONE_PIDFD)` (what `posix_spawn` does,
//! but sharing the descriptor table too; glibc's `clone(2)` where clone3 is refused): it
//! runs in handover's memory on a stack of its own while the calling thread waits, until
//! its `execve` succeeds or it exits. No page tables are copied, no pipe is needed to learn
//! the outcome, the clone returns the pidfd (no pidfd_open), no descriptor table of
//! thousands of pidfds is copied (the child takes a private copy of the few descriptors it
//! uses), and where handover runs a cgroup per worker the child starts in its cgroup
//! (`CLONE_INTO_CGROUP`: no migration). Only the
//! calling thread waits, so [`spawn`] may run on several threads at once (see
//! `Launcher::launch_all`): that, not the per-spawn work, is what brings a batch of spawns
//! near a plain fork+exec loop's rate (issue 13).
//!
//! Sharing the parent's memory, the child writes to exactly two places in it, both prepared
//! for it: the digits of the `LISTEN_PID=` entry and the error slot it fills when a step
//! fails (plus, through libc, the calling thread's `errno`, which the parent does not read
//! after a successful clone). It makes only async-signal-safe system calls (rt_sigaction,
//! sigprocmask, setpgid, getpid, close_range, unshare, dup2, fcntl, write, setpriority,
//! setgroups, setresgid, setresuid, chdir, execve, _exit; the credential calls raw, see below) and
//! allocates
//! nothing: handover has other threads, and a lock one of them holds (malloc's, say) would
//! never be released for the child.
//!
//! Child steps, in this order:
//! 1. reset every signal disposition that is not the default (all of them, unless the
//!    caller passes the list, see [`SignalResets`]), then unblock all signals (the parent
//!    blocked them all around the clone, so no handler of handover's can run in the child,
//!    where it would write to the parent's memory);
//! 2. `setpgid(0, 0)`: its own process group, so SIGKILL can reach what it forks;
//! 3. write `getpid()` into the `LISTEN_PID=` slot: the worker's *own* pid (sd_listen_fds(3));
//! 4. a private descriptor table: `close_range(keep + 1, ~0, CLOSE_RANGE_UNSHARE)` copies
//!    only the descriptors up to the highest one it uses (`unshare(CLONE_FILES)` before
//!    Linux 5.9); until then it shares handover's table, and touches no descriptor;
//! 5. `/dev/null` as stdin (as systemd gives services: a worker in a background process
//!    group must not touch a terminal); `dup2` the sockets to 3, 4, … (dup2 clears FD_CLOEXEC
//!    on the copy), then mark every fd above them close-on-exec
//!    (`close_range(CLOSE_RANGE_CLOEXEC)`), so no other fd leaks in; without clone3, join
//!    the worker's cgroup (write "0" to its `cgroup.procs`); for a worker that boots at
//!    low priority, `setpriority` to its nice value (see `worker::priority`);
//! 6. with `[workers] user`/`group`: setgroups, setresgid, setresuid (raw system calls:
//!    glibc's wrappers would try to change every thread of the parent, whose memory the
//!    child shares);
//! 7. `chdir` (as the worker's user), then `execve` with the prepared environment.
//!
//! A failing step stores `(step, errno)` in the error slot and exits 127 (126: not
//! executable). When the clone returns, the child has either exec'd or exited, so [`spawn`]
//! reports exec failures synchronously, as `std::process::Command` does.
use crate::config::Credentials;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What to spawn. The caller has resolved the program to an absolute path.
#[derive(Debug)]
pub struct SpawnSpec<'a> {
    /// The executable (absolute; no PATH search happens in the child).
    pub program: &'a Path,
    /// argv, including `argv[0]`.
    pub argv: &'a [String],
    /// The complete environment, without LISTEN_PID (added with the child's own pid).
    pub env: Vec<(OsString, OsString)>,
    /// The sockets, mapped to fds 3, 4, … in this order.
    pub fds: Vec<BorrowedFd<'a>>,
    /// The working directory, if not handover's own.
    pub cwd: Option<&'a Path>,
    /// The identity to switch to before exec (`[workers] user`/`group`), resolved in the
    /// parent: the child makes no NSS lookups.
    pub credentials: Option<&'a Credentials>,
    /// The cgroup (an `O_DIRECTORY` fd of its directory) to start the child in, where
    /// handover runs a cgroup per worker.
    pub cgroup: Option<BorrowedFd<'a>>,
    /// The signals whose disposition is not the default in this process (see
    /// [`SignalResets::query`]), reset in the child; `None`: every signal is reset, one
    /// system call each.
    pub resets: Option<&'a SignalResets>,
    /// A nice value to set before exec (a worker that boots at low priority, see
    /// [`crate::worker::priority`]); inherited by whatever the worker starts.
    pub nice: Option<i32>,
}

/// The signals whose disposition in this process is not `SIG_DFL` (a handler, or
/// `SIG_IGN`): the only ones the child must reset. A handler would not survive the exec
/// anyway, but must not run in the child before it (it would write to handover's memory);
/// an ignored signal would survive it. handover installs its handlers once, at start, so a
/// list queried before a batch of spawns holds for the batch, and the child makes a
/// handful of `rt_sigaction` calls instead of 62.
#[derive(Debug, Clone, Default)]
pub struct SignalResets {
    signals: Vec<libc::c_int>,
}

impl SignalResets {
    /// Asks the kernel for every signal's disposition (raw `rt_sigaction`, which, unlike
    /// glibc's, also answers for signals 32 and 33). A signal it will not answer for is
    /// listed, to be reset anyway.
    pub fn query() -> SignalResets {
        let mut signals = Vec::new();
        for sig in 1..libc::SIGRTMAX() + 1 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            // The kernel's struct sigaction starts with the handler on every architecture.
            let mut old = [0u64; 4];
            let null = std::ptr::null::<u64>();
            // SAFETY: reads the disposition into `old`, which is larger than the kernel's
            // struct sigaction (handler, flags, restorer, mask of 8 bytes); changes nothing.
            let r = unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, null, old.as_mut_ptr(), 8usize) };
            if r != 0 || old[0] != libc::SIG_DFL as u64 {
                signals.push(sig);
            }
        }
        SignalResets { signals }
    }

    /// The signals to reset.
    pub fn signals(&self) -> &[libc::c_int] {
        &self.signals
    }
}

/// A spawned child: its pid (also its process group id) and, where the kernel gives one
/// with the clone (`CLONE_PIDFD`, Linux 5.2+), its pidfd.
#[derive(Debug)]
pub struct Spawned {
    /// The child's pid.
    pub pid: libc::pid_t,
    /// The child's pidfd, if the clone returned one.
    pub pidfd: Option<OwnedFd>,
}

/// Why a spawn failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A string had a NUL byte.
    #[error("{what} contains a NUL byte")]
    Nul {
        /// Which string.
        what: &'static str,
    },
    /// Preparing in the parent failed (dup, mmap, clone).
    #[error("{step}: {source}")]
    Prepare {
        /// The failing step.
        step: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The child failed before or at exec.
    #[error("{step} failed in the child: {source}")]
    Child {
        /// The failing step.
        step: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// The child's failing step, reported through the error pipe as an index into this table.
const STEP_NAMES: [&str; 10] = [
    "setpgid",
    "dup2",
    "chdir",
    "execve",
    "sigprocmask",
    "setgroups",
    "setresgid",
    "setresuid",
    "join cgroup",
    "unshare the descriptor table",
];
const STEP_SETPGID: u32 = 0;
const STEP_DUP2: u32 = 1;
const STEP_CHDIR: u32 = 2;
const STEP_EXECVE: u32 = 3;
const STEP_SIGMASK: u32 = 4;
const STEP_SETGROUPS: u32 = 5;
const STEP_SETGID: u32 = 6;
const STEP_SETUID: u32 = 7;
const STEP_CGROUP: u32 = 8;
const STEP_UNSHARE: u32 = 9;
/// "No step failed" in the error slot.
const STEP_NONE: u32 = u32::MAX;

/// The child's stack: its frames are small (no allocation, a few arrays of at most 32
/// bytes), but libc's wrappers and stack probes need room; one guard page below it.
const CHILD_STACK: usize = 64 * 1024;

/// Room for the longest pid in decimal plus the terminating NUL.
const PID_DIGITS: usize = 20;
const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

fn cstring(bytes: &[u8], what: &'static str) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul { what })
}

fn os_err(step: &'static str) -> impl FnOnce(nix::Error) -> SpawnError {
    move |e| SpawnError::Prepare { step, source: io::Error::from(e) }
}

/// Forks and execs a worker per `spec`; returns its pid (also its process group id) and,
/// where the kernel gives it with the clone, its pidfd.
///
/// Safe to call from several threads at once: the clone suspends only the calling thread,
/// and each call prepares its own plan, stack and error slot.
pub fn spawn(spec: &SpawnSpec<'_>) -> Result<Spawned, SpawnError> {
    // ---- everything allocated before the clone ----
    let program = cstring(spec.program.as_os_str().as_bytes(), "program path")?;
    let argv: Vec<CString> = spec.argv.iter().map(|a| cstring(a.as_bytes(), "argument")).collect::<Result<_, _>>()?;
    let mut env: Vec<CString> = Vec::with_capacity(spec.env.len() + 1);
    for (k, v) in &spec.env {
        let mut kv = Vec::with_capacity(k.len() + v.len() + 2);
        kv.extend_from_slice(k.as_bytes());
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env.push(cstring(&kv, "environment variable")?);
    }
    // LISTEN_PID=<20 bytes of room>: the child writes its pid and a NUL into the room.
    let mut listen_pid: Vec<u8> = LISTEN_PID_PREFIX.to_vec();
    listen_pid.resize(LISTEN_PID_PREFIX.len() + PID_DIGITS + 1, 0);
    let cwd = match spec.cwd {
        Some(p) => Some(cstring(p.as_os_str().as_bytes(), "working directory")?),
        None => None,
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    let pid_slot: *mut u8 = listen_pid.as_mut_ptr();
    envp_ptrs.push(pid_slot as *const libc::c_char);
    envp_ptrs.push(std::ptr::null());

    // The sockets at 3, 4, …: one already at its place stays there (the child clears its
    // close-on-exec flag); one elsewhere in that range could be overwritten by an earlier
    // dup2 in the child, so it is duplicated (close-on-exec) above the range first; the
    // others are used as they are.
    let n = spec.fds.len() as RawFd;
    let first_free = 3 + n;
    let mut moved: Vec<OwnedFd> = Vec::new();
    let mut source_raw: Vec<RawFd> = Vec::with_capacity(spec.fds.len());
    for (i, fd) in spec.fds.iter().enumerate() {
        let raw = fd.as_raw_fd();
        if raw == 3 + i as RawFd {
            source_raw.push(raw);
        } else if raw < first_free {
            let copy = dup_above(raw, first_free).map_err(os_err("dup socket"))?;
            source_raw.push(copy.as_raw_fd());
            moved.push(copy);
        } else {
            source_raw.push(raw);
        }
    }
    let dev_null = dev_null().map_err(|source| SpawnError::Prepare { step: "open /dev/null", source })?;
    let max_fd = max_fd_hint();
    // The child shares our descriptor table at first (CLONE_FILES: no copy of every pidfd
    // per spawn) and takes a private copy of descriptors 0 to `keep` only: everything it
    // will use (and, on clone(2)'s path, the cgroup's cgroup.procs: see `clone_child`).
    let keep = source_raw.iter().copied().chain([dev_null, first_free - 1]).max().unwrap_or(2);
    let all_signals: Vec<libc::c_int> = match spec.resets {
        Some(_) => Vec::new(),
        None => (1..libc::SIGRTMAX() + 1).filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP).collect(),
    };
    let resets: &[libc::c_int] = spec.resets.map_or(&all_signals, |r| r.signals());
    let stack = ChildStack::take().map_err(|source| SpawnError::Prepare { step: "mmap child stack", source })?;
    let groups: &[libc::gid_t] = spec.credentials.map_or(&[], |c| c.groups.as_slice());

    // SAFETY: sigset_t is plain data; sigfillset/sigemptyset initialise it fully.
    let (full, empty) = unsafe {
        let mut full: libc::sigset_t = std::mem::zeroed();
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut full);
        libc::sigemptyset(&mut empty);
        (full, empty)
    };
    // SAFETY: sigset_t is plain data, filled by pthread_sigmask below.
    let mut saved: libc::sigset_t = unsafe { std::mem::zeroed() };

    // The one slot the child writes a failure to (outside `plan`, which it only reads).
    let mut error: [u32; 2] = [STEP_NONE, 0];
    let mut plan = ChildPlan {
        program: program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        // SAFETY: the prefix is within listen_pid, which has PID_DIGITS + 1 bytes after it.
        pid_slot: unsafe { pid_slot.add(LISTEN_PID_PREFIX.len()) },
        sources: &source_raw,
        stdin: dev_null,
        cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        first_free,
        keep,
        max_fd,
        resets,
        empty: &empty,
        credentials: spec.credentials.map(|c| (c.uid, c.gid)),
        groups,
        join_cgroup: -1,
        error: &raw mut error,
        nice: spec.nice.unwrap_or(i32::MIN),
    };

    // Block every signal in this thread across the clone: the child must not run one of
    // handover's handlers (tokio's would write to the parent's signal pipe, in the parent's
    // memory) before it has reset the dispositions.
    // SAFETY: pthread_sigmask with valid pointers to initialised sets.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &full, &mut saved) };
    let cloned = clone_child(&mut plan, &stack, spec.cgroup.map(|fd| fd.as_raw_fd()));
    // SAFETY: restores the mask saved above, in the parent.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut()) };
    stack.give_back();
    drop(moved);
    let (pid, pidfd) = cloned.map_err(|source| SpawnError::Prepare { step: "clone", source })?;
    // SAFETY: the child is gone from our memory (exec'd or exited); a volatile read, because
    // the compiler cannot see that the clone wrote to `error`.
    let [step, errno] = unsafe { std::ptr::read_volatile(&raw const error) };
    if step != STEP_NONE {
        // The child has exited (127/126): the caller reaps it with the others, and learns
        // why here, synchronously.
        return Err(SpawnError::Child {
            step: STEP_NAMES.get(step as usize).copied().unwrap_or("exec"),
            source: io::Error::from_raw_os_error(errno as i32),
        });
    }
    // No setpgid from the parent: the child's own setpgid(0, 0) has happened before the
    // clone returned (the parent is suspended until the exec), so the group exists already.
    Ok(Spawned { pid, pidfd })
}

/// How far clone3 is usable here: unknown, yes, or no (ENOSYS: kernels before 5.3, or a
/// seccomp filter that refuses it, as container runtimes' default profiles do).
static CLONE3: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(CLONE3_UNKNOWN);
const CLONE3_UNKNOWN: u8 = 0;
const CLONE3_YES: u8 = 1;
const CLONE3_NO: u8 = 2;

/// The kernel's `struct clone_args` (clone3(2)), version 2 (`cgroup`, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Creates the child vfork-style, running [`child_main`] on `stack` with `plan`, and
/// returns its pid and pidfd once it has exec'd or exited.
///
/// clone3 where available: it returns the pidfd (`CLONE_PIDFD`) and starts the child in
/// `cgroup` (`CLONE_INTO_CGROUP`), so no pidfd_open and no migration afterwards. Otherwise
/// glibc's clone(2) with `CLONE_PIDFD` (pidfd_open after it on kernels before 5.2), and the
/// child joins `cgroup` itself by writing to its `cgroup.procs` before it execs.
fn clone_child(
    plan: &mut ChildPlan<'_>,
    stack: &ChildStack,
    cgroup: Option<RawFd>,
) -> io::Result<(libc::pid_t, Option<OwnedFd>)> {
    use std::sync::atomic::Ordering;
    let mut pidfd: RawFd = -1;
    if cfg!(target_arch = "x86_64") && CLONE3.load(Ordering::Relaxed) != CLONE3_NO {
        let mut args = CloneArgs {
            flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::CLONE_PIDFD) as u64,
            pidfd: (&raw mut pidfd) as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.base() as u64,
            stack_size: stack.len() as u64,
            ..CloneArgs::default()
        };
        if let Some(fd) = cgroup {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = fd as u64;
        }
        // SAFETY: as for clone(2) below; clone3 runs `child_main(plan)` on the given stack.
        let r = unsafe { clone3(&mut args, (&raw mut *plan).cast()) };
        if r > 0 {
            CLONE3.store(CLONE3_YES, Ordering::Relaxed);
            // SAFETY: CLONE_PIDFD stored a fresh pidfd that nothing else owns.
            return Ok((r as libc::pid_t, Some(unsafe { OwnedFd::from_raw_fd(pidfd) })));
        }
        let e = io::Error::from_raw_os_error(-r as i32);
        match e.raw_os_error() {
            Some(libc::ENOSYS) => CLONE3.store(CLONE3_NO, Ordering::Relaxed),
            // Kernels 5.3 to 5.6 have clone3 without CLONE_INTO_CGROUP: the fallback below.
            Some(libc::EINVAL) if cgroup.is_some() => {}
            _ => return Err(e),
        }
    }
    // The fallback: the child moves itself into the cgroup before it execs.
    let cgroup_procs = match cgroup {
        Some(dir) => Some(open_cgroup_procs(dir)?),
        None => None,
    };
    plan.join_cgroup = cgroup_procs.as_ref().map_or(-1, |f| f.as_raw_fd());
    plan.keep = plan.keep.max(plan.join_cgroup);
    // SAFETY: every allocation is done; `plan` and everything it points to outlive the call,
    // because CLONE_VFORK suspends this thread until the child has exec'd or exited. The
    // child runs `child_main` on its own stack (`stack.top()`), makes only async-signal-safe
    // calls and writes only to `plan.error` and the LISTEN_PID digits (see the module docs).
    // Without CLONE_SIGHAND it has its own copy of the signal dispositions. CLONE_PIDFD
    // stores the pidfd in `pidfd` (clone's parent_tid argument).
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES | libc::CLONE_PIDFD | libc::SIGCHLD,
            (&raw mut *plan).cast(),
            &raw mut pidfd,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CLONE_PIDFD stored a fresh pidfd that nothing else owns (kernels before 5.2
    // ignore the flag and leave -1: the caller falls back to pidfd_open).
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    Ok((pid, pidfd))
}

/// clone3(2) with the child running `child_main(arg)` on the stack in `args`.
///
/// # Safety
/// `args` must describe a valid stack for the child, and `arg` what `child_main` expects;
/// with `CLONE_VM` the caller must keep everything the child uses alive until the child
/// has exec'd or exited (`CLONE_VFORK`). Returns the child's pid or `-errno`.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3(args: *mut CloneArgs, arg: *mut libc::c_void) -> i64 {
    let ret: i64;
    let entry: extern "C" fn(*mut libc::c_void) -> libc::c_int = child_main;
    // SAFETY: the raw system call; in the parent it returns like any other (rcx and r11
    // clobbered by `syscall`). In the child (rax = 0) the kernel has switched to the new
    // stack (its top, 16-byte aligned); the child clears the frame pointer and calls
    // `child_main(arg)`, which never returns (ud2 would trap if it did).
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Elsewhere clone3 is not used (the caller checks the architecture first).
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3(_args: *mut CloneArgs, _arg: *mut libc::c_void) -> i64 {
    -(libc::ENOSYS as i64)
}

/// `cgroup.procs` of the cgroup directory `dir`, opened for writing (close-on-exec).
fn open_cgroup_procs(dir: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: openat(2) relative to a directory fd we were lent, with a NUL-terminated name.
    let fd = unsafe { libc::openat(dir, c"cgroup.procs".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `/dev/null` for the children's stdin, opened once (close-on-exec) and kept: the child
/// dup2s it to 0 before it moves the sockets, so its number does not matter. The supervisor
/// opens it at start (a missing /dev/null is then said at once, and the daemon's descriptors
/// are the same before and after an upgrade in place).
pub fn dev_null() -> io::Result<RawFd> {
    static DEV_NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = DEV_NULL.get() {
        return Ok(fd.as_raw_fd());
    }
    let fd = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(io::Error::from)?;
    // Another thread may have won the race: its fd is kept, ours dropped.
    Ok(DEV_NULL.get_or_init(|| fd).as_raw_fd())
}

/// Grows this process's descriptor table to hold at least `fds` descriptors (no more than
/// RLIMIT_NOFILE allows), before a batch of spawns.
///
/// Every spawn adds a pidfd, so a start of thousands of workers grows the table several
/// times while the spawner threads run; in a process with more than one thread the kernel
/// waits for an RCU grace period at each growth (`expand_fdtable`), and a spawner thread
/// stalled there for milliseconds was the largest gap measured in a 512-worker start.
/// Grown here, on one thread before the batch, it costs two system calls and at most one
/// such wait. The table never shrinks; a table of 10,000 entries is about 100 KiB.
pub fn reserve_fds(fds: usize) {
    let limit = match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => soft.min(i32::MAX as u64) as usize,
        Err(_) => return,
    };
    let highest = fds.min(limit).saturating_sub(1) as RawFd;
    let Ok(anchor) = dev_null() else { return };
    if highest <= anchor {
        return;
    }
    // SAFETY: F_DUPFD_CLOEXEC creates one new descriptor (the lowest free number >=
    // `highest`), owned by nobody else and closed at once: only the table's size changes.
    unsafe {
        let fd = libc::fcntl(anchor, libc::F_DUPFD_CLOEXEC, highest);
        if fd >= 0 {
            libc::close(fd);
        }
    }
}

/// The child's stack: an anonymous mapping with a guard page at its low end (stacks grow
/// down on every architecture handover runs on).
///
/// Kept per thread between spawns ([`ChildStack::take`], [`ChildStack::give_back`]): the
/// child is done with it when the clone returns, and a fresh mapping per spawn would cost
/// an mmap, an mprotect, page faults and an munmap (whose TLB flush interrupts every CPU
/// running one of handover's threads) each time.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

thread_local! {
    /// This thread's spare child stack (dropped, so unmapped, with the thread).
    static SPARE_STACK: std::cell::Cell<Option<ChildStack>> = const { std::cell::Cell::new(None) };
}

impl ChildStack {
    /// This thread's spare stack, or a new one.
    fn take() -> io::Result<ChildStack> {
        match SPARE_STACK.try_with(|spare| spare.take()) {
            Ok(Some(stack)) => Ok(stack),
            _ => ChildStack::new(),
        }
    }

    /// Keeps the stack for this thread's next spawn (unmapped if the thread is exiting).
    fn give_back(self) {
        let _ = SPARE_STACK.try_with(|spare| spare.set(Some(self)));
    }

    fn new() -> io::Result<ChildStack> {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as usize;
        let len = CHILD_STACK + page;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of our own mapping becomes the guard page.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The lowest address of the usable stack (above the guard page), for clone3.
    fn base(&self) -> *mut libc::c_void {
        // SAFETY: within our mapping: the guard page is its first page.
        unsafe { self.base.cast::<u8>().add(self.len - CHILD_STACK).cast() }
    }

    /// The usable stack's size, for clone3.
    fn len(&self) -> usize {
        CHILD_STACK
    }

    /// The initial stack pointer: the mapping's end (page-aligned, so 16-byte aligned).
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of our mapping, which is how a stack's top is given.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unused once the clone has returned.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Duplicates `fd` to the lowest free number >= `min`, close-on-exec.
fn dup_above(fd: RawFd, min: RawFd) -> nix::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only creates a new descriptor, which we own from here on.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: `new` is a fresh descriptor returned by fcntl, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The highest fd number worth closing in the fallback when close_range is missing.
fn max_fd_hint() -> RawFd {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => soft.min(65_536) as RawFd,
        Err(_) => 4096,
    }
}

/// Raw pointers into memory the parent prepared before the clone, and the error slot.
struct ChildPlan<'a> {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    pid_slot: *mut u8,
    sources: &'a [RawFd],
    stdin: RawFd,
    cwd: *const libc::c_char,
    first_free: RawFd,
    /// The highest descriptor the child uses: its private table starts as a copy of 0..=keep.
    keep: RawFd,
    max_fd: RawFd,
    /// The signals to give their default disposition (every one that is not SIG_DFL here).
    resets: &'a [libc::c_int],
    empty: &'a libc::sigset_t,
    /// The uid and gid to switch to, if any, after `groups`.
    credentials: Option<(libc::uid_t, libc::gid_t)>,
    /// The supplementary groups (set only with `credentials`).
    groups: &'a [libc::gid_t],
    /// `cgroup.procs` to write "0" to (join that cgroup), or -1 (clone3 placed us already,
    /// or no cgroup).
    join_cgroup: RawFd,
    /// Where to store `(step, errno)` of a failed step (`STEP_NONE` while none failed).
    error: *mut [u32; 2],
    /// The nice value to set, or `i32::MIN` for none.
    nice: i32,
}

/// The clone's entry point: runs [`child_after_clone`] on the plan. Never returns.
extern "C" fn child_main(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `spawn` passes a pointer to its `ChildPlan`, alive while it waits for us.
    unsafe { child_after_clone(plan.cast()) }
}

/// The child's side of the clone: see the module documentation. Never returns.
///
/// # Safety
/// Must be called only in the child of `clone(CLONE_VM | CLONE_VFORK)`, with `plan`
/// pointing at the parent's plan (shared memory; the parent is suspended). It makes only
/// async-signal-safe calls, allocates nothing, and writes only to `plan.error` and the
/// LISTEN_PID digits (through `plan.pid_slot`).
unsafe fn child_after_clone(plan: *const ChildPlan<'_>) -> ! {
    // SAFETY: only async-signal-safe libc calls on pointers prepared before the clone; see
    // the per-step comments.
    unsafe {
        let plan = &*plan;
        let error = plan.error;
        // 1. Default dispositions for every signal that does not have it (the plan's
        //    list), then an empty mask. The raw system call, because glibc's sigaction()
        //    refuses signals 32 and 33 (reserved for its own use), and an inherited SIG_IGN
        //    there would survive exec and break pthread_cancel in the worker. An all-zero
        //    kernel sigaction is SIG_DFL, no flags, empty mask on every architecture.
        let dfl = [0u64; 4];
        for &sig in plan.resets {
            libc::syscall(libc::SYS_rt_sigaction, sig, dfl.as_ptr(), std::ptr::null_mut::<u64>(), 8usize);
        }
        if libc::sigprocmask(libc::SIG_SETMASK, plan.empty, std::ptr::null_mut()) != 0 {
            fail(error, STEP_SIGMASK);
        }
        // 2. Own process group.
        if libc::setpgid(0, 0) != 0 {
            fail(error, STEP_SETPGID);
        }
        // 3. LISTEN_PID=<our pid>, written with a stack-only formatter.
        write_decimal(plan.pid_slot, libc::getpid() as u64);
        // 4. A descriptor table of our own: until now we share handover's (CLONE_FILES),
        //    where a dup2 would replace handover's descriptors. close_range with
        //    CLOSE_RANGE_UNSHARE (Linux 5.9) copies only 0..=keep; before 5.9, unshare
        //    copies the whole table, as a clone without CLONE_FILES would have. Nothing
        //    below runs on a shared table: if both fail, the spawn fails.
        let above = (plan.keep + 1) as libc::c_uint;
        let unshared = libc::syscall(libc::SYS_close_range, above, libc::c_uint::MAX, libc::CLOSE_RANGE_UNSHARE);
        if unshared != 0 && libc::syscall(libc::SYS_unshare, libc::CLONE_FILES) != 0 {
            fail(error, STEP_UNSHARE);
        }
        // 5. stdin from /dev/null, sockets to 3.. and nothing else open across exec.
        if libc::dup2(plan.stdin, 0) < 0 {
            fail(error, STEP_DUP2);
        }
        for (i, &src) in plan.sources.iter().enumerate() {
            let target = 3 + i as RawFd;
            // Already in place: dup2 onto itself would leave close-on-exec set.
            let placed = if src == target { libc::fcntl(target, libc::F_SETFD, 0) } else { libc::dup2(src, target) };
            if placed < 0 {
                fail(error, STEP_DUP2);
            }
        }
        // 4b. The worker's cgroup, where clone3 could not start us in it: "0" is ourselves.
        if plan.join_cgroup >= 0 && libc::write(plan.join_cgroup, b"0".as_ptr().cast(), 1) != 1 {
            fail(error, STEP_CGROUP);
        }
        let first = plan.first_free as libc::c_uint;
        let r =
            libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_uint);
        if r != 0 {
            // Kernels before 5.11: mark them one by one (EBADF on unused numbers is fine).
            let mut fd = plan.first_free;
            while fd <= plan.max_fd {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                fd += 1;
            }
        }
        // 5b. A worker that boots at low priority lowers itself (always allowed) while it
        //     may still: before it changes identity. A failure leaves it at normal priority.
        if plan.nice != i32::MIN {
            libc::syscall(libc::SYS_setpriority, libc::PRIO_PROCESS, 0, plan.nice);
        }
        // 6. The worker's identity, with raw system calls: glibc's setuid & co. would try to
        //    change every thread of what they take for a multi-threaded process (the
        //    parent's threads, whose memory we share).
        if let Some((uid, gid)) = plan.credentials {
            if libc::syscall(libc::SYS_setgroups, plan.groups.len(), plan.groups.as_ptr()) != 0 {
                fail(error, STEP_SETGROUPS);
            }
            if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
                fail(error, STEP_SETGID);
            }
            if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                fail(error, STEP_SETUID);
            }
        }
        // 7. Working directory (as the worker's user) and exec.
        if !plan.cwd.is_null() && libc::chdir(plan.cwd) != 0 {
            fail(error, STEP_CHDIR);
        }
        libc::execve(plan.program, plan.argv, plan.envp);
        fail(error, STEP_EXECVE)
    }
}

/// Reports `(step, errno)` to the parent through the error slot and exits 127 (126: found
/// but not executable).
///
/// # Safety
/// Child of the clone only; `error` points at the plan's error slot.
unsafe fn fail(error: *mut [u32; 2], step: u32) -> ! {
    // SAFETY: __errno_location and _exit are async-signal-safe; `error` is the one slot of
    // the parent's memory designed for this write (the parent reads it once we are gone).
    unsafe {
        let errno = *libc::__errno_location();
        std::ptr::write_volatile(error, [step, errno as u32]);
        libc::_exit(if errno == libc::EACCES { 126 } else { 127 })
    }
}

/// Writes `value` in decimal plus a NUL at `dst` (room for PID_DIGITS + 1 bytes).
///
/// # Safety
/// `dst` must point at PID_DIGITS + 1 writable bytes.
unsafe fn write_decimal(dst: *mut u8, mut value: u64) {
    let mut digits = [0u8; PID_DIGITS];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (value % 10) as u8;
        n += 1;
        value /= 10;
        if value == 0 || n == PID_DIGITS {
            break;
        }
    }
    for i in 0..n {
        // SAFETY: i < n <= PID_DIGITS, within the caller's buffer.
        unsafe { *dst.add(i) = digits[n - 1 - i] };
    }
    // SAFETY: n <= PID_DIGITS, so dst + n is the last byte of the buffer at most.
    unsafe { *dst.add(n) = 0 };
}

/// Builds a worker's environment: `base` (handover's own, without systemd's variables),
/// then the config's `env`, then the protocol variables (which always win).
pub fn worker_env(
    base: &[(OsString, OsString)],
    extra: &std::collections::BTreeMap<String, String>,
    protocol: &[(&str, String)],
) -> Vec<(OsString, OsString)> {
    let mut env: std::collections::BTreeMap<OsString, OsString> = base.iter().cloned().collect();
    for (k, v) in extra {
        env.insert(k.into(), v.into());
    }
    for (k, v) in protocol {
        env.insert(OsStr::new(k).to_owned(), v.into());
    }
    env.remove(OsStr::new("LISTEN_PID"));
    env.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_writer_formats_pids_with_a_nul() {
        let mut buf = [0xffu8; PID_DIGITS + 1];
        // SAFETY: buf has PID_DIGITS + 1 bytes.
        unsafe { write_decimal(buf.as_mut_ptr(), 4_194_304) };
        assert_eq!(&buf[..8], b"4194304\0");
        // SAFETY: as above.
        unsafe { write_decimal(buf.as_mut_ptr(), 0) };
        assert_eq!(&buf[..2], b"0\0");
        // SAFETY: as above.
        unsafe { write_decimal(buf.as_mut_ptr(), u64::MAX) };
        assert_eq!(&buf[..21], b"18446744073709551615\0");
    }

    /// The list the children reset holds what is not SIG_DFL here (SIGPIPE, which the Rust
    /// runtime ignores at start; the test harness's own handlers), never SIGKILL or
    /// SIGSTOP, and is short: that is the point of asking once per batch.
    #[test]
    fn signal_resets_list_what_is_not_the_default() {
        let resets = SignalResets::query();
        let list = resets.signals();
        assert!(list.contains(&libc::SIGPIPE), "SIGPIPE is ignored in this process: {list:?}");
        assert!(!list.contains(&libc::SIGKILL) && !list.contains(&libc::SIGSTOP), "{list:?}");
        assert!(list.len() < 24, "most signals have their default disposition here: {list:?}");
        for &sig in list {
            let mut old = [0u64; 4];
            // SAFETY: reads one disposition into a large enough buffer; changes nothing.
            let r = unsafe {
                libc::syscall(libc::SYS_rt_sigaction, sig, std::ptr::null::<u64>(), old.as_mut_ptr(), 8usize)
            };
            assert!(r != 0 || old[0] != libc::SIG_DFL as u64, "signal {sig} is listed but has SIG_DFL");
        }
    }

    /// Runs `sh -c SCRIPT OUT` through [`spawn`] with `resets` and `nice`, waits for a
    /// clean exit, and returns what the script wrote to the file OUT (its `$0`).
    fn sh_report(script: &str, resets: Option<&SignalResets>, nice: Option<i32>) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("report").display().to_string();
        let spec = SpawnSpec {
            program: Path::new("/bin/sh"),
            argv: &["sh".into(), "-c".into(), script.into(), out.clone()],
            env: vec![],
            fds: vec![],
            cwd: None,
            credentials: None,
            cgroup: None,
            resets,
            nice,
        };
        let spawned = spawn(&spec).expect("spawn");
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(spawned.pid), None).expect("wait");
        assert!(matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)), "{status:?}");
        std::fs::read_to_string(&out).expect("the child's report")
    }

    /// A spawn with the per-batch list resets an ignored signal as one without it does: the
    /// child of `/bin/sh` reports SIGPIPE (ignored here) with its default disposition.
    #[test]
    fn a_spawn_with_the_batch_list_still_gives_default_dispositions() {
        let resets = SignalResets::query();
        let line = sh_report("grep SigIgn /proc/self/status > \"$0\"", Some(&resets), None);
        let mask = u64::from_str_radix(line.trim().trim_start_matches("SigIgn:").trim(), 16).expect("hex mask");
        assert_eq!(mask & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE still ignored in the child: {line}");
    }

    /// A worker that boots at low priority runs its program at the nice value asked for.
    #[test]
    fn the_child_sets_the_nice_value_it_was_given_before_exec() {
        assert_eq!(sh_report("nice > \"$0\"", None, Some(10)).trim(), "10");
    }

    #[test]
    fn protocol_variables_win_over_config_and_base() {
        let base = vec![("PATH".into(), "/bin".into()), ("LISTEN_PID".into(), "1".into()), ("A".into(), "base".into())];
        let extra = [("A".to_string(), "config".to_string()), ("LISTEN_FDS".to_string(), "9".to_string())].into();
        let env = worker_env(&base, &extra, &[("LISTEN_FDS", "2".into())]);
        let get = |k: &str| env.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.to_string_lossy().into_owned());
        assert_eq!(get("A").as_deref(), Some("config"));
        assert_eq!(get("LISTEN_FDS").as_deref(), Some("2"));
        assert_eq!(get("LISTEN_PID"), None, "LISTEN_PID is the child's own, added after fork");
        assert_eq!(get("PATH").as_deref(), Some("/bin"));
    }

    /// A real clone/exec of /bin/sh that reports what it inherited.
    #[test]
    fn child_gets_its_own_pid_sockets_at_3_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").expect("l1");
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").expect("l2");
        // An extra fd without CLOEXEC must not leak.
        let leak = nix::unistd::dup(&l1).expect("dup");
        let script = format!(
            "echo \"$$ $LISTEN_PID $LISTEN_FDS | $(ls /proc/self/fd | sort -n | tr '\\n' ' ') | $(cut -d' ' -f5 /proc/$$/stat) | $(grep SigBlk /proc/self/status) | $(readlink /proc/$$/fd/0)\" > {}",
            out.display()
        );
        use std::os::fd::AsFd;
        let spec = SpawnSpec {
            program: Path::new("/bin/sh"),
            argv: &["sh".into(), "-c".into(), script],
            env: vec![("LISTEN_FDS".into(), "2".into()), ("PATH".into(), "/usr/bin:/bin".into())],
            fds: vec![l1.as_fd(), l2.as_fd()],
            cwd: Some(dir.path()),
            credentials: None,
            cgroup: None,
            resets: None,
            nice: None,
        };
        let spawned = spawn(&spec).expect("spawn");
        assert!(spawned.pidfd.is_some(), "this kernel returns a pidfd with the clone (5.2+)");
        let pid = spawned.pid;
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).expect("wait");
        assert!(matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)), "{status:?}");
        drop(leak);
        let text = std::fs::read_to_string(&out).expect("output");
        let parts: Vec<&str> = text.split('|').map(str::trim).collect();
        let head: Vec<&str> = parts[0].split_whitespace().collect();
        assert_eq!(head[0], head[1], "LISTEN_PID is the child's pid: {text}");
        assert_eq!(head[0], pid.to_string());
        assert_eq!(head[2], "2");
        // ls opens its own directory fd (the next free number after the sockets at 3, 4).
        let fds: Vec<i32> = parts[1].split_whitespace().filter_map(|f| f.parse().ok()).collect();
        assert_eq!(fds, vec![0, 1, 2, 3, 4, 5], "no fd beyond the sockets and ls's own: {text}");
        assert_eq!(parts[2], pid.to_string(), "own process group: {text}");
        assert!(parts[4].ends_with("/dev/null"), "stdin is /dev/null: {text}");
        assert!(text.contains("SigBlk:\t0000000000000000"), "empty signal mask: {text}");
    }

    /// glibc's clone(2), used where clone3 is refused (ENOSYS: old kernels, container
    /// seccomp profiles): the same guarantees, the pidfd from CLONE_PIDFD.
    #[test]
    fn the_clone_fallback_keeps_the_guarantees() {
        use std::sync::atomic::Ordering;
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let script = format!("echo \"$$ $LISTEN_PID $(cut -d' ' -f5 /proc/$$/stat)\" > {}", out.display());
        let spec = SpawnSpec {
            program: Path::new("/bin/sh"),
            argv: &["sh".into(), "-c".into(), script],
            env: vec![],
            fds: vec![],
            cwd: None,
            credentials: None,
            cgroup: None,
            resets: None,
            nice: None,
        };
        let before = CLONE3.swap(CLONE3_NO, Ordering::Relaxed);
        let spawned = spawn(&spec);
        CLONE3.store(before, Ordering::Relaxed);
        let spawned = spawned.expect("spawn");
        assert!(spawned.pidfd.is_some(), "CLONE_PIDFD through clone(2)");
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(spawned.pid), None).expect("wait");
        assert!(matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)), "{status:?}");
        let text = std::fs::read_to_string(&out).expect("output");
        let p = spawned.pid.to_string();
        assert_eq!(text.split_whitespace().collect::<Vec<_>>(), [p.as_str(); 3], "pid, LISTEN_PID, pgid: {text}");
    }

    #[test]
    fn exec_failure_is_reported_synchronously() {
        let spec = SpawnSpec {
            program: Path::new("/nonexistent/program"),
            argv: &["x".into()],
            env: vec![],
            fds: vec![],
            cwd: None,
            credentials: None,
            cgroup: None,
            resets: None,
            nice: None,
        };
        let err = spawn(&spec).expect_err("must fail");
        assert!(err.to_string().contains("execve"), "{err}");
        assert!(err.to_string().contains("No such file"), "{err}");
    }
}

#[cfg(test)]
mod rate {
    use super::*;
    use std::time::{Duration, Instant};

    fn reap(pids: &[libc::pid_t]) {
        for &pid in pids {
            let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).expect("waitpid");
            assert!(matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)), "{status:?}");
        }
    }

    /// A plain fork+exec loop: no confirmation, no fd or signal set-up (the baseline).
    fn plain(n: usize, program: &CString, argv: &[*const libc::c_char]) -> Duration {
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        let started = Instant::now();
        let mut pids = Vec::with_capacity(n);
        for _ in 0..n {
            // SAFETY: the child only calls execve and _exit on memory prepared before fork.
            let pid = unsafe {
                let pid = libc::fork();
                if pid == 0 {
                    libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
                    libc::_exit(127);
                }
                pid
            };
            assert!(pid > 0, "fork: {}", io::Error::last_os_error());
            pids.push(pid);
        }
        let took = started.elapsed();
        reap(&pids);
        took
    }

    fn ours(n: usize) -> Duration {
        let spec = SpawnSpec {
            program: Path::new("/bin/true"),
            argv: &["true".into()],
            env: vec![],
            fds: vec![],
            cwd: None,
            credentials: None,
            cgroup: None,
            resets: None,
            nice: None,
        };
        let started = Instant::now();
        let pids: Vec<libc::pid_t> = (0..n).map(|_| spawn(&spec).expect("spawn").pid).collect();
        let took = started.elapsed();
        reap(&pids);
        took
    }

    /// Spawn rate against a plain fork+exec loop in the same process (issue 13), alternating
    /// rounds; the figure is printed, the test checks only that every spawn worked.
    #[test]
    fn spawn_rate_against_a_plain_fork_exec_loop() {
        let program = CString::new("/bin/true").expect("no NUL");
        let arg0 = CString::new("true").expect("no NUL");
        let argv = [arg0.as_ptr(), std::ptr::null()];
        let (mut base, mut mine) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            base.push(plain(200, &program, &argv).as_secs_f64());
            mine.push(ours(200).as_secs_f64());
        }
        base.sort_by(f64::total_cmp);
        mine.sort_by(f64::total_cmp);
        println!(
            "numbers: spawning 200 × /bin/true: plain fork+exec {:.1} ms, spawn() {:.1} ms (medians), rate ratio {:.2}",
            base[1] * 1e3,
            mine[1] * 1e3,
            base[1] / mine[1]
        );
    }
}
