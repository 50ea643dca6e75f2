//! The master stays small and idle (SPEC §8): RSS with 4 and 64 workers, and no CPU used
//! while nothing happens.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn master_rss_with_4_and_64_workers_and_idle_cpu() {
    let mut rss = Vec::new();
    for workers in [4usize, 64] {
        let opts = Options {
            workers,
            worker_args: vec![],
            workers_extra: "boot_timeout = \"60s\"\ngraceful_timeout = \"10s\"\n".into(),
            ..Options::default()
        };
        let d = Daemon::start(opts);
        // Exercise it once so the figure includes a reload's allocations.
        assert!(d.cli(&["reload"]).status.success());
        let kib = rss_kib(d.pid());
        rss.push((workers, kib));
        if workers == 64 {
            // Idle means idle: the reload's old generation has drained and been reaped.
            let deadline = Instant::now() + Duration::from_secs(20);
            while !d.worker_pids(1, "draining").is_empty() || !d.worker_pids(1, "killed").is_empty() {
                assert!(Instant::now() < deadline, "generation 1 still draining after 20 s: {}", d.status());
                std::thread::sleep(Duration::from_millis(20)); // polling, bounded by the deadline
            }
            let before = cpu_ticks(d.pid());
            let t = Instant::now();
            std::thread::sleep(Duration::from_secs(2)); // the idle window being measured
            let used = cpu_ticks(d.pid()) - before;
            println!("numbers: idle master used {used} clock ticks of CPU in {:?} with 64 workers", t.elapsed());
            assert!(used <= 1, "an idle master must not spin: {used} ticks");
        }
    }
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!("numbers: master RSS ({build} build): {} KiB with 4 workers, {} KiB with 64 workers", rss[0].1, rss[1].1);
    // The guarantee is for the shipped (release) build; a debug binary maps ~20x more code.
    if !cfg!(debug_assertions) {
        assert!(rss[1].1 <= 8 * 1024, "master RSS {} KiB with 64 workers exceeds 8 MiB", rss[1].1);
    }
}
