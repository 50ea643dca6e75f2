//! The README's gunicorn recipe is what the benchmark measures.
//!
//! gunicorn's arbiter sends READY=1 to $NOTIFY_SOCKET by itself as soon as it has its
//! sockets, before any worker has imported the app. A recipe that lets it (the README's
//! first one did) makes handover take a worker for ready ~2 s early and retire the old
//! generation while nothing serves: the hole of a HUP, measured by `benches/run.sh` at
//! 1.9 s for a 2 s import. The recipe now hides NOTIFY_SOCKET from the arbiter, and says
//! READY=1 once every gunicorn worker runs (gunicorn starts them up to 0.1 s apart). The
//! benchmark's `benches/wsgi/gunicorn.conf.py` must hide NOTIFY_SOCKET in the very words of
//! the recipe; it sends READY=1 from every worker instead, as it times plain gunicorn's HUP
//! worker by worker, and runs `-w 1` under handover, where the two are the same: the
//! figures in docs/benchmarks.md are those of the recipe users copy. The recipe users copy
//! is the shipped file, `packaging/examples/gunicorn/gunicorn.conf.py`
//! (/usr/share/doc/handover/examples/gunicorn/), which the README quotes and
//! tests/real_apps.rs runs.
use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The first ```python block after `marker` in `text`, with the list indentation removed.
fn python_block_after(text: &str, marker: &str) -> String {
    let from = text.find(marker).unwrap_or_else(|| panic!("{marker:?} not found"));
    let rest = &text[from..];
    let start = rest.find("```python\n").expect("a python block") + "```python\n".len();
    let end = rest[start..].find("```").expect("end of the python block");
    let block = &rest[start..start + end];
    let indent = block.lines().find(|l| !l.trim().is_empty()).map_or(0, |l| l.len() - l.trim_start().len());
    block.lines().map(|l| l.get(indent..).unwrap_or("").trim_end()).collect::<Vec<_>>().join("\n")
}

#[test]
fn the_benchmark_and_the_package_run_the_readme_gunicorn_recipe() {
    let recipe = python_block_after(&read("README.md"), "- **gunicorn**");
    assert!(
        recipe.contains("os.environ.pop(\"NOTIFY_SOCKET\")"),
        "the recipe must keep NOTIFY_SOCKET from gunicorn's arbiter:\n{recipe}"
    );
    assert!(recipe.contains("def post_worker_init(worker):"), "{recipe}");
    assert!(recipe.contains("up == worker.cfg.workers"), "the recipe says READY=1 once every worker runs:\n{recipe}");
    let hiding = recipe
        .split("\n\n")
        .find(|paragraph| paragraph.contains("os.environ.pop(\"NOTIFY_SOCKET\")"))
        .expect("the paragraph that hides NOTIFY_SOCKET");
    let bench = read("benches/wsgi/gunicorn.conf.py");
    assert!(
        bench.contains(hiding),
        "the benchmark's gunicorn.conf.py must hide NOTIFY_SOCKET as the README does:\n{hiding}"
    );
    assert!(bench.contains("def post_worker_init(worker):"), "the benchmark's workers say READY=1");
    let harness: String = read("benches/handover/gunicorn.rs").split_whitespace().collect();
    assert!(harness.contains("\"-w\".into(),\"1\".into()"), "under handover the benchmark runs `gunicorn -w 1`");
    // The shipped file is this recipe, then the request outcome reports, whose hook the
    // README quotes too.
    let shipped = read("packaging/examples/gunicorn/gunicorn.conf.py");
    let code = shipped.rsplit_once("\"\"\"\n").map_or(shipped.as_str(), |(_, code)| code);
    assert!(
        code.trim_start().starts_with(recipe.trim()),
        "the shipped gunicorn.conf.py begins with the README's recipe"
    );
    let outcomes = python_block_after(&read("README.md"), "- **Request outcomes**");
    assert!(outcomes.contains("def post_request(worker, req, environ, resp):"), "{outcomes}");
    assert!(
        code.contains(outcomes.trim()),
        "the shipped gunicorn.conf.py has the README's post_request hook:\n{outcomes}"
    );
}
