//! A hostile `<db>-counters` file next to a valid database: opened, then a known key checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../logic.rs"]
mod logic;

static TARGET: std::sync::LazyLock<logic::CountersTarget> = std::sync::LazyLock::new(logic::CountersTarget::new);

fuzz_target!(|data: &[u8]| TARGET.run(data));
