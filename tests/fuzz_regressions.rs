//! Every fuzz corpus file and every crash input the fuzzer found, replayed on stable Rust through the
//! same code as the fuzz targets (`fuzz/logic.rs`), so CI keeps them without nightly or cargo-fuzz.
//! Inputs live in `fuzz/corpus/<target>/` (minimized with `cargo fuzz cmin`) and
//! `fuzz/regressions/<target>/` (crashes, kept forever); add a file there to add a case.

use std::path::{Path, PathBuf};

#[path = "../fuzz/logic.rs"]
mod logic;

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let files = logic::inputs(&root, target);
    assert!(!files.is_empty(), "no inputs for fuzz target {target}");
    files
}

/// Runs every input, naming the file of the one that panics.
fn replay(target: &str, run: impl Fn(&[u8])) {
    for file in inputs(target) {
        let data = std::fs::read(&file).unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data)));
        assert!(outcome.is_ok(), "fuzz input {} fails", file.display());
    }
}

#[test]
fn check_inputs() {
    let target = logic::CheckTarget::new();
    replay("check", |data| target.run(data));
}

#[test]
fn json_inputs() {
    replay("json", logic::json);
}

#[test]
fn counters_inputs() {
    let target = logic::CountersTarget::new();
    replay("counters", |data| target.run(data));
}

#[test]
fn cli_values_inputs() {
    replay("cli_values", logic::cli_values);
}
