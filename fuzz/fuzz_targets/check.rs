//! The request path: `Store::check` and `ms_store_check` with arbitrary key bytes and times.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../logic.rs"]
mod logic;

static TARGET: std::sync::LazyLock<logic::CheckTarget> = std::sync::LazyLock::new(logic::CheckTarget::new);

fuzz_target!(|data: &[u8]| TARGET.run(data));
