//! A cgroup per worker, where handover's own cgroup is delegated to it (issue 10 part 5).
//!
//! Under systemd with `Delegate=yes`, the unit's cgroup belongs to the service: systemd
//! marks it with the extended attribute `trusted.delegate=1` (`user.delegate=1` for user
//! services) and will not touch what is below it. handover then:
//! 1. moves itself into a leaf of its own, `<own>/master` (cgroup v2 allows processes only
//!    in leaves once controllers are enabled below a cgroup);
//! 2. enables the `memory` and `cpu` controllers for `<own>`'s children, where available;
//! 3. starts each worker in a child cgroup `<own>/worker-<generation>-<slot>-<id>`: the
//!    directory is created before the spawn and the child is cloned into it
//!    (`CLONE_INTO_CGROUP`, see `worker::spawn`), so it never runs anywhere else;
//! 4. kills a worker's whole cgroup (`cgroup.kill`) where it kills its process group (its
//!    exit, a timeout, a stop), so a grandchild that called setsid() dies with it, then
//!    removes the directory once it is empty.
//!
//! Without delegation (a laptop, `handover run` in a shell, a unit without `Delegate=yes`)
//! nothing here is used: process groups, as before. [`Tree`] is plain data (paths and
//! flags), so it can be carried across an in-place upgrade; the files are opened by path
//! whenever they are used.
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The leaf handover moves itself into.
pub const MASTER_LEAF: &str = "master";
/// The prefix of every worker cgroup's name.
pub const WORKER_PREFIX: &str = "worker-";

/// handover's delegated cgroup and the worker cgroups in it. Plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// The delegated cgroup (the unit's), as a directory under the cgroup2 mount.
    pub own: PathBuf,
    /// Whether the `memory` controller is enabled for the workers (`memory.current`,
    /// `memory.max`, `memory.events`).
    #[serde(default)]
    pub memory: bool,
    /// Whether the `cpu` controller is enabled for the workers (`cpu.stat` exists anyway).
    #[serde(default)]
    pub cpu: bool,
    /// The cgroup of every worker not yet reaped, by pid.
    #[serde(default)]
    pub workers: BTreeMap<i32, PathBuf>,
    /// Worker cgroups killed but not yet empty: removed at the next chance.
    #[serde(default)]
    pub doomed: Vec<PathBuf>,
}

/// A worker cgroup's usage, for `handover status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// `memory.current`, bytes (None without the memory controller).
    pub memory_bytes: Option<u64>,
    /// `cpu.stat` `usage_usec`.
    pub cpu_usec: Option<u64>,
}

/// The cgroup v2 path of this process: the `0::` line of `/proc/self/cgroup`.
pub fn parse_proc_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::")).map(str::trim).filter(|p| p.starts_with('/'))
}

/// Where the cgroup2 hierarchy is mounted, from `/proc/self/mountinfo`: the mount point
/// (field 5) of the first line whose file system type (after the ` - ` separator) is
/// `cgroup2`. Octal escapes (`\040` for a space) are decoded.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mount_point)))
    })
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The names listed in a `cgroup.controllers` file.
pub fn parse_controllers(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

/// A `key value` line of a flat-keyed file (`cpu.stat`, `memory.events`).
pub fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Whether `dir` is a cgroup delegated to us: marked by systemd (`trusted.delegate` or
/// `user.delegate` = "1"), or, for a master that is not root (which cannot read `trusted.*`
/// attributes), owned by our uid, which systemd does only for a delegated cgroup of a
/// `User=` service; and writable (we can create children and move processes).
pub fn is_delegated(dir: &Path) -> bool {
    let marked = ["trusted.delegate", "user.delegate"].iter().any(|name| xattr(dir, name).as_deref() == Some(b"1"));
    let euid = nix::unistd::geteuid().as_raw();
    let owned = euid != 0 && std::fs::metadata(dir).is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == euid);
    (marked || owned) && writable(&dir.join("cgroup.subtree_control")) && writable(&dir.join("cgroup.procs"))
}

fn writable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: access(2) with a NUL-terminated path; no memory is written.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = [0u8; 16];
    // SAFETY: getxattr(2) with NUL-terminated strings and a buffer of the length given.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

/// What [`Tree::detect`] found when there is no cgroup per worker: the reason, for the log.
pub type NotDelegated = String;

impl Tree {
    /// Finds handover's cgroup and, if it is delegated, prepares it: moves this process
    /// into `<own>/master` and enables the memory and cpu controllers for the children.
    /// After an in-place re-exec handover is in `<own>/master` already: its parent is the
    /// delegated one then. `Err` carries why there is no cgroup per worker.
    pub fn detect() -> Result<Tree, NotDelegated> {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let path = parse_proc_cgroup(&cgroup).ok_or("no cgroup v2 (unified) hierarchy")?.to_owned();
        let mountinfo =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
        let mount = parse_cgroup2_mount(&mountinfo).ok_or("cgroup2 is not mounted")?;
        let dir = mount.join(path.trim_start_matches('/'));
        let own = match dir.parent() {
            Some(parent) if dir.file_name() == Some(MASTER_LEAF.as_ref()) && is_delegated(parent) => {
                parent.to_path_buf()
            }
            _ => dir,
        };
        if !is_delegated(&own) {
            return Err(format!("{} is not delegated to handover (Delegate=yes)", own.display()));
        }
        Tree::prepare(own).map_err(|e| format!("preparing the delegated cgroup: {e}"))
    }

    /// Moves this process into `<own>/master` and enables the controllers handover uses.
    pub fn prepare(own: PathBuf) -> io::Result<Tree> {
        let leaf = own.join(MASTER_LEAF);
        match std::fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(annotate(e, &leaf)),
        }
        let procs = leaf.join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string()).map_err(|e| annotate(e, &procs))?;
        let available = std::fs::read_to_string(own.join("cgroup.controllers")).unwrap_or_default();
        let available = parse_controllers(&available);
        let subtree = own.join("cgroup.subtree_control");
        let enable =
            |name: &str| available.iter().any(|c| c == name) && std::fs::write(&subtree, format!("+{name}")).is_ok();
        let memory = enable("memory");
        let cpu = enable("cpu");
        let mut tree = Tree { own, memory, cpu, workers: BTreeMap::new(), doomed: Vec::new() };
        tree.remove_stale();
        Ok(tree)
    }

    /// Removes empty worker cgroups a previous run left (a crash); one that still has
    /// processes is left alone (it may be an upgraded master's worker we are about to be
    /// told about).
    fn remove_stale(&mut self) {
        let Ok(dir) = std::fs::read_dir(&self.own) else { return };
        for entry in dir.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(WORKER_PREFIX) && !self.workers.values().any(|p| p == &entry.path()) {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }

    /// `cgroup per worker in DIR (controllers: memory cpu)`, for the log and `status`.
    pub fn describe(&self) -> String {
        let mut c: Vec<&str> = Vec::new();
        if self.memory {
            c.push("memory");
        }
        if self.cpu {
            c.push("cpu");
        }
        let controllers = if c.is_empty() { "none".to_owned() } else { c.join(" ") };
        format!("cgroup per worker in {} (controllers: {controllers})", self.own.display())
    }

    /// Creates the cgroup for a worker about to be spawned, with `memory.max` set if asked
    /// (and the memory controller is enabled) and `cpu.weight` if given (the cpu controller
    /// is), and returns it opened (`O_DIRECTORY`) for the clone.
    pub fn create_worker(
        &self,
        generation: u64,
        slot: usize,
        id: u64,
        memory_max: Option<u64>,
        cpu_weight: Option<u32>,
    ) -> io::Result<(PathBuf, OwnedFd)> {
        let dir = self.own.join(format!("{WORKER_PREFIX}{generation}-{slot}-{id}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(annotate(e, &dir)),
        }
        if let (Some(max), true) = (memory_max, self.memory) {
            // The limit, and the whole worker killed when it is reached (oom.group): not just
            // its largest process, which could leave a worker without its children.
            for (name, value) in [("memory.max", max.to_string()), ("memory.oom.group", "1".to_owned())] {
                let file = dir.join(name);
                if let Err(e) = std::fs::write(&file, value) {
                    let _ = std::fs::remove_dir(&dir);
                    return Err(annotate(e, &file));
                }
            }
        }
        if let (Some(weight), true) = (cpu_weight, self.cpu) {
            let file = dir.join("cpu.weight");
            if let Err(e) = std::fs::write(&file, weight.to_string()) {
                let _ = std::fs::remove_dir(&dir);
                return Err(annotate(e, &file));
            }
        }
        match open_dir(&dir) {
            Ok(fd) => Ok((dir, fd)),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(annotate(e, &dir))
            }
        }
    }

    /// Sets the `cpu.weight` of the worker `pid`'s cgroup (a worker that booted at low
    /// priority, raised).
    pub fn set_cpu_weight(&self, pid: i32, weight: u32) -> io::Result<()> {
        let Some(dir) = self.workers.get(&pid) else { return Ok(()) };
        let file = dir.join("cpu.weight");
        std::fs::write(&file, weight.to_string()).map_err(|e| annotate(e, &file))
    }

    /// Records that the worker `pid` runs in `dir`.
    pub fn adopt(&mut self, pid: i32, dir: PathBuf) {
        self.workers.insert(pid, dir);
    }

    /// SIGKILLs every process in the worker's cgroup (`cgroup.kill`, Linux 5.14; before, each
    /// pid listed in `cgroup.procs`). Sound while the worker is unreaped: its cgroup then
    /// still holds it, and nobody else is spawned into it.
    pub fn kill(&self, pid: i32) {
        let Some(dir) = self.workers.get(&pid) else { return };
        if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for p in self.procs(pid).unwrap_or_default() {
            // SAFETY: kill(2) has no memory-safety preconditions; a pid listed in the
            // worker's own cgroup (a race with its exit at worst hits nobody: the cgroup
            // is ours and nothing else is started in it).
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }

    /// Every process in the worker `pid`'s cgroup (its `cgroup.procs`): the worker, what it
    /// forked, and what left its process group (setsid()). None if it has no cgroup here or
    /// the file cannot be read.
    pub fn procs(&self, pid: i32) -> Option<Vec<i32>> {
        let text = std::fs::read_to_string(self.workers.get(&pid)?.join("cgroup.procs")).ok()?;
        Some(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// How the worker `pid` ended, from its cgroup's `memory.events`: `Some(n)` when the
    /// kernel's OOM killer killed `n` processes in it (its `memory.max` was reached).
    pub fn oom_kills(&self, pid: i32) -> Option<u64> {
        let dir = self.workers.get(&pid)?;
        let events = std::fs::read_to_string(dir.join("memory.events")).ok()?;
        parse_keyed(&events, "oom_kill").filter(|n| *n > 0)
    }

    /// Forgets the reaped worker `pid` and removes its cgroup (killed first, so that
    /// nothing it left can keep it); one not empty yet is retried later ([`Tree::sweep`]).
    pub fn release(&mut self, pid: i32) {
        self.kill(pid);
        if let Some(dir) = self.workers.remove(&pid) {
            if std::fs::remove_dir(&dir).is_err() && dir.exists() {
                self.doomed.push(dir);
            }
        }
        self.sweep();
    }

    /// Removes the cgroup of a worker whose spawn failed (its child, if any, has exited:
    /// later if it is not empty yet).
    pub fn discard(&mut self, dir: PathBuf) {
        if std::fs::remove_dir(&dir).is_err() && dir.exists() {
            self.doomed.push(dir);
        }
    }

    /// Retries removing the killed workers' cgroups that were not empty yet.
    pub fn sweep(&mut self) {
        self.doomed.retain(|dir| {
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            std::fs::remove_dir(dir).is_err() && dir.exists()
        });
    }

    /// The memory (`memory.current`) of each worker in `pids`; absent where unknown.
    pub fn memory_of(&self, pids: &[i32]) -> std::collections::HashMap<i32, u64> {
        pids.iter()
            .filter_map(|pid| Some((*pid, read_number(&self.workers.get(pid)?.join("memory.current"))?)))
            .collect()
    }

    /// The worker `pid`'s memory and CPU use.
    pub fn usage(&self, pid: i32) -> Usage {
        let Some(dir) = self.workers.get(&pid) else { return Usage::default() };
        let memory_bytes = if self.memory {
            std::fs::read_to_string(dir.join("memory.current")).ok().and_then(|t| t.trim().parse().ok())
        } else {
            None
        };
        let cpu_usec = std::fs::read_to_string(dir.join("cpu.stat")).ok().and_then(|t| parse_keyed(&t, "usage_usec"));
        Usage { memory_bytes, cpu_usec }
    }
}

/// A file holding one number (`memory.current`), read with open, one read, close: no
/// allocation and no statx, as it is read once per worker per sample.
pub fn read_number(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut buf = [0u8; 32];
    let n = std::fs::File::open(path).ok()?.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

fn annotate(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: open(2) with a NUL-terminated path; returns a new fd or -1.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unified_line_of_proc_self_cgroup() {
        let hybrid = "9:name=systemd:/\n4:memory:/x\n0::/system.slice/handover@app.service\n";
        assert_eq!(parse_proc_cgroup(hybrid), Some("/system.slice/handover@app.service"));
        assert_eq!(parse_proc_cgroup("0::/\n"), Some("/"));
        assert_eq!(parse_proc_cgroup("4:memory:/x\n"), None, "v1 only");
    }

    #[test]
    fn the_cgroup2_mount_point_from_mountinfo() {
        let info = "\
25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
33 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
40 25 0:35 / /sys/fs/cgroup/uni\\040fied rw,nosuid - cgroup2 cgroup2 rw
";
        assert_eq!(parse_cgroup2_mount(info), Some(PathBuf::from("/sys/fs/cgroup/uni fied")));
        assert_eq!(parse_cgroup2_mount("25 30 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"), None);
    }

    #[test]
    fn controllers_and_keyed_files() {
        assert_eq!(parse_controllers("cpuset cpu io memory pids\n"), ["cpuset", "cpu", "io", "memory", "pids"]);
        let stat = "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n";
        assert_eq!(parse_keyed(stat, "usage_usec"), Some(1234));
        assert_eq!(parse_keyed(stat, "user"), None);
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_keyed(events, "oom_kill"), Some(1));
        assert_eq!(parse_keyed(events, "oom"), Some(1));
    }

    #[test]
    fn a_directory_without_the_delegate_mark_is_not_delegated() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cgroup.subtree_control"), "").expect("write");
        std::fs::write(dir.path().join("cgroup.procs"), "").expect("write");
        assert!(!is_delegated(dir.path()), "writable but not marked by systemd");
    }

    #[test]
    fn a_workers_processes_are_its_cgroup_procs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let worker = dir.path().join("worker-2-0-7");
        std::fs::create_dir(&worker).expect("mkdir");
        std::fs::write(worker.join("cgroup.procs"), "123\n130\n").expect("write");
        let mut t =
            Tree { own: dir.path().into(), memory: false, cpu: false, workers: BTreeMap::new(), doomed: vec![] };
        assert_eq!(t.procs(123), None, "not a worker of this tree");
        t.adopt(123, worker);
        assert_eq!(t.procs(123), Some(vec![123, 130]));
    }

    /// A booting worker's cgroup is made with the low cpu.weight before the worker is
    /// cloned into it, and set back when it is raised; without the cpu controller, no
    /// weight is written (the file would not exist in a real cgroup).
    #[test]
    fn a_low_priority_worker_cgroup_gets_its_cpu_weight_and_is_raised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut t = Tree { own: dir.path().into(), memory: false, cpu: true, workers: BTreeMap::new(), doomed: vec![] };
        let (worker, _fd) = t.create_worker(3, 1, 9, None, Some(10)).expect("create");
        assert_eq!(std::fs::read_to_string(worker.join("cpu.weight")).expect("cpu.weight"), "10");
        t.adopt(77, worker.clone());
        t.set_cpu_weight(77, 100).expect("raise");
        assert_eq!(std::fs::read_to_string(worker.join("cpu.weight")).expect("cpu.weight"), "100");
        t.cpu = false;
        let (plain, _fd) = t.create_worker(3, 2, 10, None, Some(10)).expect("create");
        assert!(!plain.join("cpu.weight").exists(), "no cpu controller: no weight");
    }

    #[test]
    fn describe_names_the_mode_and_controllers() {
        let t = Tree {
            own: "/sys/fs/cgroup/x.service".into(),
            memory: true,
            cpu: false,
            workers: BTreeMap::new(),
            doomed: vec![],
        };
        assert_eq!(t.describe(), "cgroup per worker in /sys/fs/cgroup/x.service (controllers: memory)");
        let back: Tree = serde_json::from_str(&serde_json::to_string(&t).expect("ser")).expect("de");
        assert_eq!(back, t, "plain data, carried across an upgrade");
    }
}
