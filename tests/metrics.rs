//! `[metrics] textfile`: the counters a running daemon writes after good, rolled-back and
//! refused reloads, and the file read by a real node_exporter (textfile collector) and
//! checked by `promtool check metrics` (Debian's `prometheus-node-exporter` and `prometheus`
//! packages; `.ci/run` installs them and sets `HANDOVER_REQUIRE_TOOLS=1`, which turns a
//! missing tool into a failure rather than a one-line skip).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The value of `series` (name and labels as written) in an exposition text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until the file holds `series` with `value`; returns the text.
fn wait_for(path: &Path, series: &str, value: f64, d: &Daemon) -> String {
    wait_until(path, &format!("{series} = {value}"), |t| sample(t, series) == Some(value), d)
}

/// Waits until the file's text satisfies `pred`; returns the text.
fn wait_until(path: &Path, what: &str, pred: impl Fn(&str) -> bool, d: &Daemon) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if pred(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "never {what} in {}:\n{text}\nlog:\n{}", path.display(), d.log());
        // Polling a file another process writes: there is no event to wait on.
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn options(textfile: &Path) -> Options {
    Options {
        workers: 2,
        extra: format!("[metrics]\ntextfile = {:?}\n", textfile.display().to_string()),
        ..Options::default()
    }
}

/// A daemon with metrics after one good reload, one rolled back and one refused.
fn daemon_after_three_reloads(metrics_dir: &Path) -> (Daemon, PathBuf) {
    let textfile = metrics_dir.join("app.prom");
    let opts = options(&textfile);
    let d = Daemon::start(opts.clone());
    let text = wait_for(&textfile, "handover_workers{name=\"app\",state=\"ready\"}", 2.0, &d);
    assert_eq!(sample(&text, "handover_active_generation{name=\"app\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "handover_reloads_total{name=\"app\",result=\"ok\"}"), Some(0.0), "{text}");

    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "good reload: {}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    // A version that dies at boot: rolled back.
    let mut broken = opts.clone();
    broken.worker_args.extend(["--exit-at-boot".into(), "3".into()]);
    d.rewrite_config(&broken);
    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "broken reload: {}\n{}", String::from_utf8_lossy(&out.stderr), d.log());
    // An invalid file: refused.
    let valid = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{valid}\nnot_a_key = 1\n")).unwrap();
    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "invalid config: {}", String::from_utf8_lossy(&out.stderr));
    d.rewrite_config(&opts);
    (d, textfile)
}

#[test]
fn reloads_rollbacks_and_refusals_are_counted_in_the_textfile() {
    let _x = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let (d, textfile) = daemon_after_three_reloads(dir.path());
    let text = wait_for(&textfile, "handover_reloads_total{name=\"app\",result=\"refused\"}", 1.0, &d);
    assert_eq!(sample(&text, "handover_reloads_total{name=\"app\",result=\"ok\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "handover_reloads_total{name=\"app\",result=\"rolled_back\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "handover_active_generation{name=\"app\"}"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "handover_reload_duration_seconds_count{name=\"app\"}"), Some(2.0), "{text}");
    // The good reload waited for its workers' 200 ms boot.
    let sum = sample(&text, "handover_reload_duration_seconds_sum{name=\"app\"}").unwrap();
    assert!(sum >= 0.2, "reload durations sum to {sum} s:\n{text}");
    assert!(sample(&text, "handover_last_reload_duration_seconds{name=\"app\"}").is_some(), "{text}");
    // The rolled-back worker exited on its own: at least one failed exit. Generation 1's
    // workers drained after the good reload.
    let exits = |t: &str, reason: &str| {
        sample(t, &format!("handover_worker_exits_total{{name=\"app\",reason=\"{reason}\"}}")).unwrap_or(0.0)
    };
    let text = wait_until(
        &textfile,
        "2 drained and 1 failed exits",
        |t| exits(t, "drained") >= 2.0 && exits(t, "failed") >= 1.0,
        &d,
    );
    assert!(text.contains(&format!("handover_build_info{{name=\"app\",version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
    assert_eq!(sample(&text, "handover_upgrades_total{name=\"app\",result=\"ok\"}"), Some(0.0), "{text}");
    // Written by rename: no temporary file is left, and the mode is 0644.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&textfile).unwrap().permissions().mode() & 0o777, 0o644);
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["app.prom".to_string()], "only the file itself is in the directory");
    println!(
        "numbers: metrics: reloads ok {} rolled_back {} refused {}; reload durations sum {sum:.3} s over 2",
        sample(&text, "handover_reloads_total{name=\"app\",result=\"ok\"}").unwrap(),
        sample(&text, "handover_reloads_total{name=\"app\",result=\"rolled_back\"}").unwrap(),
        sample(&text, "handover_reloads_total{name=\"app\",result=\"refused\"}").unwrap(),
    );
}

#[test]
fn a_bad_textfile_fails_check_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("app.toml");
    // control_socket named: a user who is not root and has no XDG_RUNTIME_DIR has no default.
    let text = format!(
        "name = \"app\"\ncontrol_socket = {:?}\n[workers]\ncommand = [\"/bin/true\"]\n[metrics]\ntextfile = {:?}\n",
        dir.path().join("control.sock").display().to_string(),
        dir.path().display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    let out = run_with_deadline(
        {
            let mut c = Command::new(bin());
            c.args(["check", "-c"]).arg(&config);
            c
        },
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("app.toml:6:12: metrics.textfile:"), "{stderr}");
    assert!(stderr.contains("is a directory"), "{stderr}");
}

/// `name` on PATH, or `None` where it is not installed (the test then skips, see
/// `common::require`).
fn tool(name: &str) -> Option<PathBuf> {
    if !common::require_tool(name, "apt-get install prometheus-node-exporter prometheus") {
        return None;
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file())
}

/// A free port of the range this suite may use (18590-18599).
fn free_port() -> u16 {
    (18590..=18599)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("no free port in 127.0.0.1:18590-18599")
}

/// GET over HTTP/1.0, so the body is not chunked: (status, body).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: t\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

#[test]
fn node_exporter_serves_the_file_and_promtool_accepts_it() {
    let Some(exporter) = tool("prometheus-node-exporter") else { return };
    let Some(promtool) = tool("promtool") else { return };
    let _x = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let (d, textfile) = daemon_after_three_reloads(dir.path());
    wait_for(&textfile, "handover_reloads_total{name=\"app\",result=\"refused\"}", 1.0, &d);

    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(exporter)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--collector.disable-defaults")
        .arg("--collector.textfile")
        .arg(format!("--collector.textfile.directory={}", dir.path().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start prometheus-node-exporter");
    let _exporter = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        match get(addr, "/metrics") {
            Ok((200, body)) if body.contains("handover_") => break body,
            other => {
                assert!(Instant::now() < deadline, "node_exporter on {addr} did not serve the file: {other:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    // The collector read the file without error and serves every series from it.
    assert_eq!(sample(&body, "node_textfile_scrape_error"), Some(0.0), "{body}");
    assert_eq!(sample(&body, "handover_reloads_total{name=\"app\",result=\"ok\"}"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "handover_reloads_total{name=\"app\",result=\"rolled_back\"}"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "handover_reloads_total{name=\"app\",result=\"refused\"}"), Some(1.0), "{body}");
    assert_eq!(sample(&body, "handover_reload_duration_seconds_count{name=\"app\"}"), Some(2.0), "{body}");
    assert!(body.contains("# TYPE handover_reload_duration_seconds histogram"), "{body}");
    let file_series = std::fs::read_to_string(&textfile).unwrap().lines().filter(|l| !l.starts_with('#')).count();
    let served = body.lines().filter(|l| l.starts_with("handover_")).count();
    assert_eq!(served, file_series, "every series of the file is served:\n{body}");

    // promtool's linter: names, suffixes, HELP, units.
    for (what, text) in [("the file", std::fs::read_to_string(&textfile).unwrap()), ("the scrape", body)] {
        let mut check = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = check.wait_with_output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let ours: Vec<&str> = said.lines().filter(|l| l.contains("handover_")).collect();
        assert!(ours.is_empty(), "promtool check metrics on {what}: {said}");
        if what == "the file" {
            assert!(out.status.success(), "promtool check metrics on the file: {said}");
        }
    }
    println!("numbers: metrics: node_exporter on {addr} served {served} handover series; promtool: no complaint");
}

/// A removed metrics directory failed every reload (issue 19, item 5): the metrics are
/// optional, so reloads go on; the failure is in status, logged once (not per write), and
/// counted in the file once it can be written again.
#[test]
fn a_removed_metrics_directory_never_blocks_a_reload() {
    let metrics_dir = tempfile::tempdir().unwrap();
    let sub = metrics_dir.path().join("textfiles");
    std::fs::create_dir(&sub).unwrap();
    let textfile = sub.join("app.prom");
    let d = Daemon::start(options(&textfile));
    wait_for(&textfile, "handover_workers{name=\"app\",state=\"ready\"}", 2.0, &d);
    std::fs::remove_dir_all(&sub).unwrap();
    let mut ok = 0;
    for i in 0..3 {
        let out = d.cli(&["reload"]);
        println!("numbers: reload {} with the metrics directory removed: exit {:?}", i + 1, out.status.code());
        assert!(out.status.success(), "reload {}: {}\nlog:\n{}", i + 1, String::from_utf8_lossy(&out.stderr), d.log());
        ok += 1;
    }
    assert_eq!(ok, 3);
    let st = d.status();
    let why = st["metrics_error"].as_str().unwrap_or_default().to_owned();
    assert!(why.contains(&textfile.display().to_string()), "status names the file: {st}");
    let table = d.cli(&["status"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("metrics: cannot write"), "status table");
    let logged = d.log().matches("cannot write the metrics").count();
    assert_eq!(logged, 1, "logged once, not per write:\n{}", d.log());
    // Back: the next change writes the file, with the failure counted, and status is clear.
    std::fs::create_dir(&sub).unwrap();
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for(&textfile, "handover_metrics_write_failures_total{name=\"app\"}", 1.0, &d);
    assert!(d.status()["metrics_error"].is_null(), "cleared once written");
}
