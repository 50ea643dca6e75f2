//! Property tests of the config parser (issue 7): whatever the text, [`parse`] returns (no
//! panic), every error points at a line and column of that text, and every config it
//! accepts keeps its durations within their documented bounds.
#![allow(clippy::unwrap_used)] // In tests a panic is the failure report.

use std::path::Path;
use std::time::Duration;

use super::{format_duration, parse, LoadEnv, ReadyMode, MAX_LIFETIME, MAX_TIMEOUT};
use proptest::prelude::*;
use proptest::test_runner::Config as RunnerConfig;

const FILE: &str = "/etc/handover/app.toml";

/// Defaults that always apply (so no error can be about a default rather than the text).
fn env() -> LoadEnv {
    LoadEnv {
        runtime_directory: Some("/run/handover/app".into()),
        xdg_runtime_dir: None,
        is_root: false,
        path: Some("/bin:/usr/bin".into()),
        ..LoadEnv::default()
    }
}

/// A config that uses every key, the start of every mutation.
const SEED: &str = r#"name = "shop"
control_socket = "/run/shop/control.sock"
pidfile = "/run/shop.pid"

[[listen]]
name = "http"
address = "127.0.0.1:8000"
backlog = 4096

[[listen]]
name = "local"
address = "unix:/run/app/app.sock"

[workers]
command = ["/bin/sh", "-c", "exec app"]
count = 4
working_directory = "/"
env = { APP_ENV = "production", "weird.name" = "x" }
ready = "delay:2s"
boot_timeout = "90s"
watchdog = "30s"
stop_signal = "SIGQUIT"
graceful_timeout = "1m30s"
max_lifetime = "1h"
max_memory = "512M"

[reload]
strategy = "rolling"
max_surge = 2
"#;

/// Fragments that tend to reach the parser's corners.
const TOKENS: &[&str] = &[
    "\"",
    "'",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    ",",
    ".",
    "\n",
    "\r\n",
    "\t",
    "#",
    "\\",
    "\"\"\"",
    "'''",
    "\\u0000",
    "\\uD800",
    "\u{0}",
    "\u{e9}",
    "\u{1F600}",
    "1e400",
    "-1",
    "0",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "nan",
    "inf",
    "-inf",
    "true",
    "1979-05-27T07:32:00Z",
    "0x7f",
    "\"10000000000000000000s\"",
    "\"2562047788015216h\"",
    "\"24h\"",
    "\"24h 1ns\"",
    "\"168h\"",
    "\"169h\"",
    "\"delay:24h\"",
    "\"delay:25h\"",
    "\"0\"",
    "\"0.0000000001s\"",
    "\"1.5\"",
    "\"-1s\"",
    "\"99999999999999999999h\"",
    "[workers]",
    "[reload]",
    "[[listen]]",
    "[workers.env]",
    "count = ",
    "boot_timeout = ",
    "ready = ",
    "max_lifetime = ",
    "watchdog = ",
    "a.b.c = 1",
    "x = [[[[1]]]]",
    "x = {a={b={c=1}}}",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Replace { at: usize, len: usize, text: String },
    DuplicateLine(usize),
    SwapLines(usize, usize),
}

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(TOKENS).prop_map(str::to_string),
        1 => "\\PC{0,12}",
        1 => ".{0,6}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), fragment()).prop_map(|(at, text)| Mutation::Insert { at, text }),
        (any::<usize>(), 1usize..12, fragment()).prop_map(|(at, len, text)| Mutation::Replace { at, len, text }),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

/// Applies `m` to `text` on character boundaries (the parser takes valid UTF-8).
fn apply(text: &str, m: &Mutation) -> String {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let pos = |at: usize| if n == 0 { 0 } else { at % (n + 1) };
    let join = |a: &[char], mid: &str, b: &[char]| a.iter().collect::<String>() + mid + &b.iter().collect::<String>();
    match m {
        Mutation::Delete { at, len } => {
            let start = pos(*at);
            let end = (start + len).min(n);
            join(&chars[..start], "", &chars[end..])
        }
        Mutation::Insert { at, text } => {
            let at = pos(*at);
            join(&chars[..at], text, &chars[at..])
        }
        Mutation::Replace { at, len, text } => {
            let start = pos(*at);
            let end = (start + len).min(n);
            join(&chars[..start], text, &chars[end..])
        }
        Mutation::DuplicateLine(i) => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let i = i % lines.len();
            lines.insert(i, lines[i]);
            lines.join("\n")
        }
        Mutation::SwapLines(a, b) => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let (a, b) = (a % lines.len(), b % lines.len());
            lines.swap(a, b);
            lines.join("\n")
        }
    }
}

/// The property: `parse` returns; an error names a line and column inside `text`; an
/// accepted config has every duration within its bound.
fn parses_or_points_at_the_mistake(text: &str) -> Result<(), TestCaseError> {
    match parse(Path::new(FILE), text, &env()) {
        Ok(c) => {
            let w = &c.workers;
            prop_assert!(w.boot_timeout <= MAX_TIMEOUT && w.graceful_timeout <= MAX_TIMEOUT);
            prop_assert!(w.watchdog.is_none_or(|d| d <= MAX_TIMEOUT));
            prop_assert!(w.max_lifetime.is_none_or(|d| d <= MAX_LIFETIME));
            if let ReadyMode::Delay(d) = w.ready {
                prop_assert!(d <= MAX_TIMEOUT);
            }
            prop_assert!((1..=4096).contains(&w.count) && c.reload.max_surge >= 1);
        }
        Err(e) => {
            let lines: Vec<&str> = text.split('\n').collect();
            prop_assert!(e.line >= 1 && e.line <= lines.len(), "line {} of {}: {e}", e.line, lines.len());
            let line_chars = lines[e.line - 1].chars().count();
            prop_assert!(e.col >= 1 && e.col <= line_chars + 1, "col {} of {line_chars}: {e}", e.col);
            prop_assert!(!e.key.is_empty() && !e.message.is_empty(), "{e:?}");
            let place = format!("{FILE}:{}:{}: ", e.line, e.col);
            prop_assert!(e.to_string().starts_with(&place), "{e}");
        }
    }
    Ok(())
}

fn runner(cases: u32) -> RunnerConfig {
    RunnerConfig { cases, failure_persistence: None, ..RunnerConfig::default() }
}

#[test]
fn the_seed_is_valid() {
    let c = parse(Path::new(FILE), SEED, &env()).unwrap(); // unwrap-ok: a test module (the seed config is valid)
    assert_eq!(c.workers.count, 4);
}

proptest! {
    #![proptest_config(runner(512))]

    /// Arbitrary text, mostly not TOML at all.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        parses_or_points_at_the_mistake(&text)?;
    }

    /// A full config with a few mutations: mostly near-valid TOML, which reaches validation.
    #[test]
    fn mutated_configs_never_panic(mutations in proptest::collection::vec(mutation(), 1..6)) {
        let text = mutations.iter().fold(SEED.to_string(), |t, m| apply(&t, m));
        parses_or_points_at_the_mistake(&text)?;
    }

    /// Every duration key with a value drawn from the edges of the grammar and the bounds.
    #[test]
    fn any_duration_value_is_accepted_within_bounds_or_refused_with_its_place(
        key in proptest::sample::select(&["boot_timeout", "graceful_timeout", "watchdog", "max_lifetime", "ready"][..]),
        secs in prop_oneof![Just(0u64), Just(86_400), Just(86_401), Just(604_800), Just(604_801), Just(u64::MAX), any::<u64>()],
        nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000],
    ) {
        let d = format_duration(Duration::new(secs, nanos));
        let value = if key == "ready" { format!("delay:{d}") } else { d };
        let text = format!("[workers]\ncommand = [\"/bin/sh\"]\n{key} = \"{value}\"\n");
        parses_or_points_at_the_mistake(&text)?;
        let bound = if key == "max_lifetime" { MAX_LIFETIME } else { MAX_TIMEOUT };
        let parsed = parse(Path::new(FILE), &text, &env());
        let within = Duration::new(secs, nanos) <= bound;
        let positive = secs > 0 || nanos > 0 || !matches!(key, "boot_timeout" | "graceful_timeout");
        prop_assert_eq!(parsed.is_ok(), within && positive, "{}", text);
    }
}
