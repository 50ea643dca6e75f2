//! The house keeps its shape (SPEC §9): `src/lib.rs` declares the layers once, in the
//! fenced block under its "# Layers" heading, and this test reads every file of `src/` and
//! fails on
//! - an import from a lower layer up to a higher one;
//! - an import circle, between the modules named in the layers or between files (a child
//!   module reaching its parent through `super` is how Rust nests, and is not counted);
//! - the sans-io machine importing anything but plain data ([`MACHINE`], [`MACHINE_MAY_USE`]);
//! - a product module importing the demo wing ([`DEMO_WING`]; only the top layer, which
//!   starts `handover demo`, may).
//!
//! It also fails on an import circle between the benchmark suite's files.
//!
//! Imports are read from the text: every `crate::…`, `super::…` and `self::…` path outside
//! comments and string literals, `use` groups expanded; test-only modules (`#[cfg(test)]`)
//! are left out. Each violation is reported with its file and the imported name.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer module that holds the sans-io state machine.
const MACHINE: &str = "machine";
/// What the machine may import besides itself and the standard library: the config model
/// and the small text helpers (crate modules), serde (external crates).
const MACHINE_MAY_USE: &[&str] = &["config", "text"];
/// External crates the machine may name (std, core and alloc always).
const MACHINE_MAY_USE_CRATES: &[&str] = &["serde"];
/// The demo wing: test and benchmark tooling beside the product.
const DEMO_WING: &[&str] = &["demo"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The layers from `src/lib.rs`, top first: each line of the fenced block under
/// "# Layers" is `module module … │ what they are`.
fn layers() -> Vec<Vec<String>> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let mut in_section = false;
    let mut in_block = false;
    let mut layers = vec![];
    for line in lib.lines() {
        let Some(doc) = line.strip_prefix("//!") else { continue };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        if doc.starts_with('#') {
            in_section = doc.trim() == "# Layers";
            continue;
        }
        if in_section && doc.starts_with("```") {
            if in_block {
                break;
            }
            in_block = true;
            continue;
        }
        if in_block {
            if let Some((modules, _)) = doc.split_once('│') {
                let modules: Vec<String> = modules.split_whitespace().map(str::to_owned).collect();
                if !modules.is_empty() {
                    layers.push(modules);
                }
            }
        }
    }
    assert!(!layers.is_empty(), "src/lib.rs has no fenced block of layers under `# Layers`");
    layers
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `base` (`supervisor/machine/mod.rs` → `supervisor::machine`).
fn module_of(base: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(base).unwrap();
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// The text with comments and the contents of string and char literals blanked out.
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_is_ident(&b, i) {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                if b[j] == '\n' {
                    out.push('\n');
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                } else if b[i] == '\n' {
                    out.push('\n');
                }
                i += 1;
            }
            out.push_str("\"\"");
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F}') or a lifetime ('a).
            let close = if next == Some('\\') {
                (i + 2..b.len().min(i + 12)).find(|&j| b[j] == '\'')
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match close {
                Some(j) => {
                    out.push_str("' '");
                    i = j + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// The code without its `#[cfg(test)]` items (an inline `mod tests { … }` or any item the
/// attribute is on), and the names of the child modules declared test-only.
fn without_tests(code: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut test_mods = vec![];
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        // The item: up to its `;` or its balanced `{ … }`, whichever comes first.
        let bytes = after.as_bytes();
        let mut depth = 0usize;
        let mut end = after.len();
        for (k, &ch) in bytes.iter().enumerate() {
            match ch {
                b'{' => depth += 1,
                b'}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                b';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        let item = &after[..end];
        let words: Vec<&str> =
            item.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect();
        if let Some(p) = words.iter().position(|w| *w == "mod") {
            if let Some(name) = words.get(p + 1) {
                if item.trim_end().ends_with(';') {
                    test_mods.push((*name).to_owned());
                }
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    (out, test_mods)
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Parses a path (with `use` groups) starting at `s`, which follows a leading `crate::`,
/// `super::` or `self::`; appends every full path to `out` (prefixed by `prefix`).
fn parse_tree(s: &[char], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        while i < s.len() && s[i].is_whitespace() {
            i += 1;
        }
        if i < s.len() && s[i] == '{' {
            i += 1;
            loop {
                while i < s.len() && (s[i].is_whitespace() || s[i] == ',') {
                    i += 1;
                }
                if i >= s.len() || s[i] == '}' {
                    return i + 1;
                }
                i = parse_tree(s, i, path.clone(), out);
                // Skip an `as alias`.
                while i < s.len() && !matches!(s[i], ',' | '}') {
                    i += 1;
                }
            }
        }
        let start = i;
        while i < s.len() && is_ident(s[i]) {
            i += 1;
        }
        if i == start {
            // `*` or the end of the path.
            if i < s.len() && s[i] == '*' {
                i += 1;
            }
            out.push(path);
            return i;
        }
        let seg: String = s[start..i].iter().collect();
        if seg != "self" {
            path.push(seg);
        }
        let mut j = i;
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        if s.get(j) == Some(&':') && s.get(j + 1) == Some(&':') {
            i = j + 2;
        } else {
            out.push(path);
            return i;
        }
    }
}

/// Every crate-relative path the code names, resolved against the file's module.
fn paths_named(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let s: Vec<char> = code.chars().collect();
    let children = child_modules(code);
    let mut out = vec![];
    let mut i = 0;
    while i < s.len() {
        if !is_ident(s[i]) || (i > 0 && (is_ident(s[i - 1]) || (s[i - 1] == ':' && i > 1 && s[i - 2] == ':'))) {
            i += 1;
            continue;
        }
        let start = i;
        while i < s.len() && is_ident(s[i]) {
            i += 1;
        }
        let word: String = s[start..i].iter().collect();
        if s.get(i) != Some(&':') || s.get(i + 1) != Some(&':') {
            continue;
        }
        if children.contains(&word) {
            // A child module named bare (`mod raw;` … `raw::parse`).
            let mut found = vec![];
            let mut base = module.to_vec();
            base.push(word);
            i = parse_tree(&s, i + 2, base, &mut found);
            out.extend(found);
            continue;
        }
        if !matches!(word.as_str(), "crate" | "super" | "self") {
            continue;
        }
        // Resolve the leading crate/super/self chain.
        let mut base: Vec<String> = match word.as_str() {
            "crate" => vec![],
            "super" => module[..module.len().saturating_sub(1)].to_vec(),
            _ => module.to_vec(),
        };
        let mut j = i + 2;
        while s[j..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
            base.pop();
            j += 7;
        }
        let mut found = vec![];
        i = parse_tree(&s, j, base, &mut found);
        out.extend(found);
    }
    out
}

/// The child modules a file declares (`mod x;`, `pub mod x;`).
fn child_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in code.lines() {
        let words: Vec<&str> =
            line.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect();
        if let Some(p) = words.iter().position(|w| *w == "mod") {
            if line.trim_end().ends_with(';') && words[..p].iter().all(|w| matches!(*w, "pub" | "crate" | "super")) {
                if let Some(name) = words.get(p + 1) {
                    out.insert((*name).to_owned());
                }
            }
        }
    }
    out
}

/// An edge: `from` names `name`, which lives in `to`.
#[derive(Debug, Clone)]
struct Import {
    from: String,
    to: String,
    name: String,
}

struct Tree {
    /// File (relative path) → its module path.
    files: BTreeMap<String, Vec<String>>,
    imports: Vec<Import>,
    /// Files that named an external crate, with the crate: (file, crate).
    externs: Vec<(String, String)>,
}

fn read_tree(base: &Path, skip: &[&str], crates: &[String]) -> Tree {
    let mut paths = vec![];
    rs_files(base, &mut paths);
    paths.sort();
    let root = root();
    let rel = |p: &Path| p.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
    let mut files = BTreeMap::new();
    let mut codes = BTreeMap::new();
    let mut test_only: BTreeSet<Vec<String>> = BTreeSet::new();
    for p in &paths {
        let r = rel(p);
        if skip.contains(&r.as_str()) {
            continue;
        }
        let module = module_of(base, p);
        let (code, test_mods) = without_tests(&code_only(&std::fs::read_to_string(p).unwrap()));
        for m in test_mods {
            let mut child = module.clone();
            child.push(m);
            test_only.insert(child);
        }
        files.insert(r.clone(), module);
        codes.insert(r, code);
    }
    // Test-only modules and everything under them.
    files.retain(|_, m| !test_only.iter().any(|t| m.starts_with(t)));
    codes.retain(|f, _| files.contains_key(f));
    let by_module: BTreeMap<Vec<String>, String> = files.iter().map(|(f, m)| (m.clone(), f.clone())).collect();
    let mut imports = vec![];
    let mut externs = vec![];
    for (file, code) in &codes {
        let module = &files[file];
        for path in paths_named(code, module) {
            // The longest prefix that is a file's module.
            let owner = (0..=path.len()).rev().find_map(|n| by_module.get(&path[..n]).map(|f| (n, f)));
            let Some((n, to)) = owner else { continue };
            if to == file {
                continue;
            }
            let name = if n < path.len() { path[n..].join("::") } else { path.last().cloned().unwrap_or_default() };
            imports.push(Import { from: file.clone(), to: to.clone(), name });
        }
        let s: Vec<char> = code.chars().collect();
        for c in crates {
            let pat: Vec<char> = format!("{c}::").chars().collect();
            let hit =
                (0..s.len()).any(|i| s[i..].starts_with(&pat) && !(i > 0 && (is_ident(s[i - 1]) || s[i - 1] == ':')));
            if hit {
                externs.push((file.clone(), c.clone()));
            }
        }
    }
    Tree { files, imports, externs }
}

/// Strongly connected components with more than one node (Tarjan).
fn circles(nodes: &BTreeSet<String>, edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct St<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on: BTreeSet<String>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit(st: &mut St, v: &str) {
        st.index.insert(v.to_owned(), st.next);
        st.low.insert(v.to_owned(), st.next);
        st.next += 1;
        st.stack.push(v.to_owned());
        st.on.insert(v.to_owned());
        let succ: Vec<String> = st.edges.get(v).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        for w in succ {
            if !st.index.contains_key(&w) {
                visit(st, &w);
                let l = st.low[v].min(st.low[&w]);
                st.low.insert(v.to_owned(), l);
            } else if st.on.contains(&w) {
                let l = st.low[v].min(st.index[&w]);
                st.low.insert(v.to_owned(), l);
            }
        }
        if st.low[v] == st.index[v] {
            let mut comp = vec![];
            loop {
                let w = st.stack.pop().unwrap();
                st.on.remove(&w);
                let done = w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                st.out.push(comp);
            }
        }
    }
    let mut st = St {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on: BTreeSet::new(),
        next: 0,
        out: vec![],
    };
    for n in nodes {
        if !st.index.contains_key(n) {
            visit(&mut st, n);
        }
    }
    st.out
}

/// The names each `from → to` edge carries, for the report.
fn names(imports: &[Import], from: impl Fn(&Import) -> bool) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut m: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for i in imports.iter().filter(|i| from(i)) {
        m.entry((i.from.clone(), i.to.clone())).or_default().insert(i.name.clone());
    }
    m
}

fn report_circles(
    what: &str,
    comps: &[Vec<String>],
    imports: &[Import],
    key: impl Fn(&str) -> String,
    out: &mut Vec<String>,
) {
    for comp in comps {
        let mut lines = format!("import circle between {what}: {}", comp.join(", "));
        for ((f, t), ns) in
            names(imports, |i| comp.contains(&key(&i.from)) && comp.contains(&key(&i.to)) && key(&i.from) != key(&i.to))
        {
            lines += &format!("\n    {f} -> {t}: {}", ns.into_iter().collect::<Vec<_>>().join(", "));
        }
        out.push(lines);
    }
}

/// File-level circles, not counting a child reaching an ancestor module.
fn file_circles(tree: &Tree, out: &mut Vec<String>) -> usize {
    let nested = |i: &Import| {
        let (f, t) = (&tree.files[&i.from], &tree.files[&i.to]);
        f.len() > t.len() && f.starts_with(t)
    };
    let kept: Vec<Import> = tree.imports.iter().filter(|i| !nested(i)).cloned().collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for i in &kept {
        edges.entry(i.from.clone()).or_default().insert(i.to.clone());
    }
    let nodes: BTreeSet<String> = tree.files.keys().cloned().collect();
    let comps = circles(&nodes, &edges);
    report_circles("files", &comps, &kept, |f| f.to_owned(), out);
    comps.len()
}

fn dependency_crates() -> Vec<String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let mut crates = vec![];
    let mut in_deps = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            in_deps = line.trim() == "[dependencies]";
            continue;
        }
        if in_deps {
            if let Some((name, _)) = line.split_once('=') {
                let name = name.trim();
                if !name.is_empty() && !name.starts_with('#') {
                    crates.push(name.replace('-', "_"));
                }
            }
        }
    }
    crates
}

#[test]
fn every_import_points_down_and_none_goes_round() {
    let layers = layers();
    let crates = dependency_crates();
    let tree = read_tree(&root().join("src"), &["src/lib.rs", "src/main.rs"], &crates);
    let mut out: Vec<String> = vec![];

    // Each file's layer module: the longest declared module its path starts with.
    let declared: Vec<(Vec<String>, usize, String)> = layers
        .iter()
        .enumerate()
        .flat_map(|(n, l)| l.iter().map(move |m| (m.split("::").map(str::to_owned).collect(), n, m.clone())))
        .collect();
    for (_, _, m) in &declared {
        let segs: Vec<String> = m.split("::").map(str::to_owned).collect();
        assert!(
            tree.files.values().any(|f| f.starts_with(&segs)),
            "src/lib.rs declares a layer module `{m}` that src/ does not have"
        );
    }
    let unit_of = |file: &str| -> Option<(usize, String)> {
        let m = &tree.files[file];
        declared
            .iter()
            .filter(|(segs, _, _)| m.starts_with(segs))
            .max_by_key(|(segs, _, _)| segs.len())
            .map(|(_, n, name)| (*n, name.clone()))
    };
    for f in tree.files.keys() {
        if unit_of(f).is_none() {
            out.push(format!("{f}: in no layer of src/lib.rs"));
        }
    }
    let unit = |f: &str| unit_of(f).map(|u| u.1).unwrap_or_else(|| f.to_owned());
    let layer = |f: &str| unit_of(f).map_or(usize::MAX, |u| u.0);

    // Upward imports.
    let mut up = 0;
    for ((f, t), ns) in names(&tree.imports, |i| layer(&i.from) != usize::MAX && layer(&i.to) < layer(&i.from)) {
        up += 1;
        out.push(format!(
            "import up a layer: {f} ({}) takes {} from {t} ({})",
            unit(&f),
            ns.into_iter().collect::<Vec<_>>().join(", "),
            unit(&t)
        ));
    }

    // Circles between layer modules, then between files.
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for i in &tree.imports {
        let (a, b) = (unit(&i.from), unit(&i.to));
        if a != b {
            edges.entry(a).or_default().insert(b);
        }
    }
    let nodes: BTreeSet<String> = tree.files.keys().map(|f| unit(f)).collect();
    let comps = circles(&nodes, &edges);
    report_circles("modules", &comps, &tree.imports, |f| unit(f), &mut out);
    let module_circles = comps.len();
    let files_round = file_circles(&tree, &mut out);

    // The machine: plain data only.
    let mut impure = 0;
    let in_machine = |f: &str| unit(f) == MACHINE;
    for ((f, t), ns) in names(&tree.imports, |i| in_machine(&i.from) && !in_machine(&i.to)) {
        if !MACHINE_MAY_USE.contains(&unit(&t).as_str()) {
            impure += 1;
            out.push(format!(
                "the machine imports more than plain data: {f} takes {} from {t}",
                ns.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    for (f, c) in &tree.externs {
        if in_machine(f) && !MACHINE_MAY_USE_CRATES.contains(&c.as_str()) {
            impure += 1;
            out.push(format!("the machine imports more than plain data: {f} uses the crate {c}"));
        }
    }

    // The demo wing.
    let mut demo = 0;
    let wing = |f: &str| DEMO_WING.iter().any(|w| unit(f) == *w);
    for ((f, t), ns) in names(&tree.imports, |i| wing(&i.to) && !wing(&i.from) && layer(&i.from) != 0) {
        demo += 1;
        out.push(format!(
            "a product module imports the demo wing: {f} takes {} from {t}",
            ns.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }

    // The benchmarks' files.
    let benches = read_tree(&root().join("benches/handover"), &[], &[]);
    let bench_circles = file_circles(&benches, &mut out);

    assert!(
        out.is_empty(),
        "{}\n\n{up} imports up a layer, {module_circles} circles between modules, {files_round} between files, \
         {bench_circles} between benchmark files, {impure} impure machine imports, {demo} imports of the demo wing",
        out.join("\n")
    );
}

#[test]
fn the_reader_sees_imports() {
    let code = code_only(
        "use crate::a::{b::C, d, e::{F, G as H}};\n// crate::x::Y\nlet s = \"crate::q::R\";\nsuper::super::k::L(); self::m::N;",
    );
    let got = paths_named(&code, &["p".into(), "q".into(), "r".into()]);
    let got: Vec<String> = got.into_iter().map(|p| p.join("::")).collect();
    assert_eq!(got, ["a::b::C", "a::d", "a::e::F", "a::e::G", "p::k::L", "p::q::r::m::N"]);
    let (code, mods) =
        without_tests("fn a() {}\n#[cfg(test)]\nmod tests;\n#[cfg(test)]\nmod inline { use crate::z; }\nfn b() {}");
    assert_eq!(mods, ["tests"]);
    assert!(!code.contains("crate::z") && code.contains("fn b"));
}
