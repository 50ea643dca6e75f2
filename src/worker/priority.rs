//! The CPU priority of workers that boot beside serving ones (`reload.boot_priority`,
//! SPEC §5 "Boot priority").
//!
//! A new release's import burns CPU; on a busy host it would take it from the workers that
//! serve. So a worker the machine spawns with `low_priority` starts at a low priority
//! and is raised to normal once ready (or when its boot must finish: see
//! `machine::policy::raise_priority_after`). How depends on what handover may do here,
//! decided once at start ([`Lowering::choose`]):
//! 1. a delegated cgroup with the `cpu` controller: the worker's cgroup gets `cpu.weight`
//!    [`LOW_WEIGHT`] before the worker is cloned into it, and [`NORMAL_WEIGHT`] when raised;
//! 2. otherwise, nice [`LOW_NICE`] set by the child before exec, inherited by every thread
//!    and process the worker starts, and the worker's whole process group set back to the
//!    master's own nice value when raised (`setpriority(PRIO_PGRP)`, which covers every
//!    thread of every process in the group). Going back needs CAP_SYS_NICE (a root master,
//!    unless its unit took the capability away) or an `RLIMIT_NICE` that allows the
//!    master's nice value (the shipped unit's `LimitNICE=+0`, which systemd can grant only
//!    where it holds CAP_SYS_RESOURCE itself): without either, lowering would be for good,
//!    so it is not done;
//! 3. else workers boot at normal priority, and `handover status` says why.
use std::io;

/// `cpu.weight` of a booting worker's cgroup: a tenth of a serving worker's (cgroup v2
/// allows 1-10000). Not the lowest: on a saturated host the lowest leaves a boot nearly
/// stopped until it is raised, and then every new worker takes a full share at once; a
/// tenth boots a generation beside as many serving workers on about a tenth of the CPU
/// throughout (benchmark scenario 9).
pub const LOW_WEIGHT: u32 = 10;
/// `cpu.weight` once raised: the kernel's default, that of every serving worker.
pub const NORMAL_WEIGHT: u32 = 100;
/// The nice value of a booting worker without a cgroup of its own: scheduler weight 110
/// against nice 0's 1024, about a tenth, as [`LOW_WEIGHT`] (sched(7); nice 19 would be 15).
pub const LOW_NICE: i32 = 10;

/// How booting workers are lowered on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lowering {
    /// Through each worker's cgroup `cpu.weight`.
    CpuWeight,
    /// Through nice values; `normal` is the master's own, restored when raised.
    Nice {
        /// The nice value workers get back.
        normal: i32,
    },
    /// Not at all: why.
    Unavailable(String),
}

impl Lowering {
    /// Decides how to lower, from whether the worker cgroups have the cpu controller
    /// (`None`: no cgroup per worker), and this process's nice value, whether it holds
    /// CAP_SYS_NICE, and its `RLIMIT_NICE` soft limit.
    pub fn choose(cgroup_cpu: Option<bool>, nice: i32, cap_sys_nice: bool, rlimit_nice: u64) -> Lowering {
        if cgroup_cpu == Some(true) {
            return Lowering::CpuWeight;
        }
        // RLIMIT_NICE r lets a process go down to nice 20 - r (setrlimit(2)).
        let may_restore = cap_sys_nice || 20i64.saturating_sub(rlimit_nice.min(40) as i64) <= i64::from(nice);
        if may_restore {
            return Lowering::Nice { normal: nice };
        }
        let cgroup = match cgroup_cpu {
            Some(_) => "the worker cgroups lack the cpu controller",
            None => "no cgroup per worker",
        };
        Lowering::Unavailable(format!(
            "{cgroup}, and a worker's nice value could not be set back (no CAP_SYS_NICE, RLIMIT_NICE \
             {rlimit_nice}; LimitNICE=+0 in the unit allows it)"
        ))
    }

    /// Reads this process's nice value, capabilities and RLIMIT_NICE, then [`choose`]s.
    ///
    /// [`choose`]: Lowering::choose
    pub fn for_this_process(cgroup_cpu: Option<bool>) -> Lowering {
        let nice = own_nice();
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let cap = has_effective_capability(&status, CAP_SYS_NICE);
        let rlimit =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NICE).map_or(0, |(soft, _)| soft);
        Lowering::choose(cgroup_cpu, nice, cap, rlimit)
    }

    /// Whether workers can be lowered (and raised again) here.
    pub fn available(&self) -> bool {
        !matches!(self, Lowering::Unavailable(_))
    }

    /// The nice value a low-priority worker sets for itself before exec, if that is how.
    pub fn child_nice(&self) -> Option<i32> {
        match self {
            Lowering::Nice { .. } => Some(LOW_NICE),
            _ => None,
        }
    }

    /// For `handover status`: how a generation boots beside a serving one, given the
    /// config's `reload.boot_priority` (`low`).
    pub fn describe(&self, low: bool) -> String {
        match (low, self) {
            (false, _) => "normal (boot_priority = \"normal\")".to_owned(),
            (true, Lowering::CpuWeight) => {
                format!("low: cpu.weight {LOW_WEIGHT} while booting beside serving workers, {NORMAL_WEIGHT} once ready")
            }
            (true, Lowering::Nice { normal }) => {
                format!("low: nice {LOW_NICE} while booting beside serving workers, {normal} once ready")
            }
            (true, Lowering::Unavailable(why)) => format!("normal: cannot lower here: {why}"),
        }
    }
}

/// capability(7)'s number of CAP_SYS_NICE.
const CAP_SYS_NICE: u32 = 23;

/// Whether the `CapEff:` mask of a `/proc/PID/status` text has capability `cap`.
fn has_effective_capability(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| cap < 64 && mask & (1 << cap) != 0)
}

/// This process's nice value (0 if it cannot be read).
fn own_nice() -> i32 {
    // getpriority(2) may return -1 as a value: errno tells an error apart.
    nix::errno::Errno::clear();
    // SAFETY: getpriority has no memory-safety preconditions.
    let n = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    if n == -1 && nix::errno::Errno::last_raw() != 0 {
        return 0;
    }
    n
}

/// Sets the nice value of every thread of every process in the process group `pgid` (a
/// worker leads its own group).
pub fn renice_group(pgid: i32, nice: i32) -> io::Result<()> {
    // SAFETY: setpriority has no memory-safety preconditions; `pgid` is a worker's group,
    // which handover created and has not reaped.
    let r = unsafe { libc::setpriority(libc::PRIO_PGRP, pgid as libc::id_t, nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[test]
    fn the_cgroup_is_preferred_then_a_nice_value_that_can_be_restored() {
        assert_eq!(Lowering::choose(Some(true), 0, false, 0), Lowering::CpuWeight);
        assert_eq!(Lowering::choose(Some(false), 0, true, 0), Lowering::Nice { normal: 0 });
        assert_eq!(Lowering::choose(None, 0, true, 0), Lowering::Nice { normal: 0 });
        // LimitNICE=+0 is RLIMIT_NICE 20: back to nice 0 is allowed.
        assert_eq!(Lowering::choose(None, 0, false, 20), Lowering::Nice { normal: 0 });
        // A master at nice 5 needs only 15.
        assert_eq!(Lowering::choose(None, 5, false, 15), Lowering::Nice { normal: 5 });
        let no = Lowering::choose(None, 0, false, 0);
        assert!(!no.available());
        assert!(no.describe(true).contains("LimitNICE=+0"), "{}", no.describe(true));
        let no = Lowering::choose(Some(false), 0, false, 19);
        assert!(no.describe(true).contains("lack the cpu controller"), "{}", no.describe(true));
        assert_eq!(Lowering::CpuWeight.describe(false), "normal (boot_priority = \"normal\")");
        assert_eq!(Lowering::Nice { normal: 0 }.child_nice(), Some(LOW_NICE));
        assert_eq!(Lowering::CpuWeight.child_nice(), None);
    }

    #[test]
    fn cap_sys_nice_is_read_from_the_effective_set() {
        let root = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        assert!(has_effective_capability(root, CAP_SYS_NICE));
        // A root master under CapabilityBoundingSet= (empty): no capability at all.
        assert!(!has_effective_capability("CapEff:\t0000000000000000\n", CAP_SYS_NICE));
        assert!(!has_effective_capability("CapEff:\t0000000000800000\n", 24));
        assert!(has_effective_capability("CapEff:\t0000000000800000\n", CAP_SYS_NICE));
        assert!(!has_effective_capability("no such line", CAP_SYS_NICE));
    }

    /// Every process of the group moves, those forked before and after the renice.
    #[test]
    fn renicing_a_group_reaches_every_process_in_it() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30; wait"])
            .process_group(0)
            .spawn()
            .expect("spawning sh");
        let pgid = child.id() as i32;
        // A lowering is always allowed; a sleep forked after it inherits the value.
        renice_group(pgid, LOW_NICE).expect("lowering a group of our own child");
        let group = || -> Vec<(i32, i32)> {
            let mut members = Vec::new();
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
                let Some((_, after)) = stat.rsplit_once(") ") else { continue };
                let fields: Vec<&str> = after.split_whitespace().collect();
                if fields.get(2).and_then(|f| f.parse::<i32>().ok()) == Some(pgid) {
                    members.push((pid, fields.get(16).and_then(|f| f.parse().ok()).unwrap_or(i32::MIN)));
                }
            }
            members
        };
        let members = group();
        assert!(!members.is_empty() && members.iter().all(|&(_, n)| n == LOW_NICE), "{members:?}");
        if nix::unistd::geteuid().is_root() {
            renice_group(pgid, own_nice()).expect("raising as root");
            let members = group();
            assert!(members.iter().all(|&(_, n)| n == own_nice()), "{members:?}");
        }
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::SIGKILL);
        let _ = child.wait();
    }
}
