//! Memory sampling for `max_memory`: how much every watched worker's process group uses,
//! in one pass per sample whatever the number of workers (issue 13: one pass over /proc per
//! worker made a 512-worker master spend half a core idle).
//!
//! [`MemorySource`] is the seam: [`ProcScan`] reads `/proc/<pid>/stat` of every process once
//! and adds up the RSS by process group; a cgroup-per-worker mode would implement the same
//! trait by reading each worker's `memory.current`. The same pass lists the processes of
//! each group ([`ProcScan::group_members`]) for the draining workers' open connections.
use std::collections::HashMap;
use std::io::Read;

use crate::machine::Pid;

/// Where the executor gets worker memory from.
pub trait MemorySource {
    /// The resident memory of each process group in `groups` (a worker's pid is its group's
    /// id), in bytes; a group that has no process left is absent or 0.
    fn group_rss(&mut self, groups: &[Pid]) -> HashMap<Pid, u64>;
}

/// Sums `/proc/<pid>/stat` RSS by process group, reading every process once per sample
/// with three system calls each (open, one read, close): at 4,096 workers a sample reads
/// some 5,000 files, so what each costs matters.
#[derive(Debug)]
pub struct ProcScan {
    page_size: u64,
    /// Reused between processes and samples: no allocation per process.
    buf: Vec<u8>,
    path: String,
}

/// Room for a whole `/proc/<pid>/stat` (52 numbers and a 16-byte name: well under 1 KiB).
const STAT_MAX: usize = 1024;

impl Default for ProcScan {
    fn default() -> Self {
        let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096);
        ProcScan { page_size: page_size as u64, buf: vec![0; STAT_MAX], path: String::with_capacity(32) }
    }
}

impl MemorySource for ProcScan {
    fn group_rss(&mut self, groups: &[Pid]) -> HashMap<Pid, u64> {
        let mut totals: HashMap<Pid, u64> = groups.iter().map(|&g| (g, 0)).collect();
        let page_size = self.page_size;
        self.each_process(|_, pgrp, rss_pages| {
            if let Some(total) = totals.get_mut(&pgrp) {
                *total += rss_pages * page_size;
            }
        });
        totals
    }
}

impl ProcScan {
    /// The processes of each process group in `groups` (a worker's pid is its group's id),
    /// in the same one pass over /proc: whose open connections a draining worker holds
    /// without a cgroup per worker. A group with no process left maps to an empty list.
    pub fn group_members(&mut self, groups: &[Pid]) -> HashMap<Pid, Vec<Pid>> {
        let mut members: HashMap<Pid, Vec<Pid>> = groups.iter().map(|&g| (g, Vec::new())).collect();
        self.each_process(|pid, pgrp, _| {
            if let Some(list) = members.get_mut(&pgrp) {
                list.push(pid);
            }
        });
        members
    }

    /// Calls `each(pid, pgrp, rss_pages)` for every process, reading its `/proc/<pid>/stat`.
    fn each_process(&mut self, mut each: impl FnMut(Pid, Pid, u64)) {
        let Ok(dir) = std::fs::read_dir("/proc") else { return };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().filter(|s| s.bytes().all(|b| b.is_ascii_digit())) else { continue };
            self.path.clear();
            self.path.push_str("/proc/");
            self.path.push_str(pid);
            self.path.push_str("/stat");
            // A process may have exited since the directory was read: skip it.
            let Ok(mut f) = std::fs::File::open(&self.path) else { continue };
            // One read returns the whole file (procfs generates it at once); read_to_end
            // would add a statx and a read for EOF.
            let Ok(n) = f.read(&mut self.buf) else { continue };
            let Some((pgrp, rss_pages)) = parse_stat(&self.buf[..n]) else { continue };
            let Ok(pid) = pid.parse() else { continue };
            each(pid, pgrp, rss_pages);
        }
    }
}

/// `(pgrp, rss in pages)` from the text of `/proc/<pid>/stat`.
fn parse_stat(stat: &[u8]) -> Option<(Pid, u64)> {
    // The command name (field 2) may contain spaces and parentheses: the fields we want
    // follow the last ')'. After it: state(3) ppid(4) pgrp(5) … rss(24).
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let pgrp = fields.nth(2)?.parse().ok()?;
    let rss = fields.nth(18)?.parse().ok()?;
    Some((pgrp, rss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_follow_the_last_parenthesis() {
        let stat = b"1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 100 1000000 77 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((1234, 77)));
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn one_pass_costs_little_per_process() {
        let mut scan = ProcScan::default();
        let me = nix::unistd::getpgrp().as_raw();
        let processes = std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit())))
            .count();
        let started = std::time::Instant::now();
        for _ in 0..5 {
            assert!(scan.group_rss(&[me])[&me] > 0);
        }
        let each = started.elapsed().as_secs_f64() / 5.0;
        println!(
            "numbers: one memory sample over {processes} processes: {:.2} ms, {:.1} us per process",
            each * 1e3,
            each * 1e6 / processes as f64
        );
    }

    #[test]
    fn group_members_lists_this_process_in_its_group() {
        let me = nix::unistd::getpgrp().as_raw();
        let members = ProcScan::default().group_members(&[me, -5]);
        assert!(members[&me].contains(&(std::process::id() as Pid)), "{members:?}");
        assert!(members[&-5].is_empty(), "a group that does not exist");
    }

    #[test]
    fn one_pass_finds_this_process_group() {
        let me = nix::unistd::getpgrp().as_raw();
        let totals = ProcScan::default().group_rss(&[me, -5]);
        assert!(totals[&me] > 0, "this test's own group uses memory: {totals:?}");
        assert_eq!(totals[&-5], 0, "a group that does not exist");
    }
}
