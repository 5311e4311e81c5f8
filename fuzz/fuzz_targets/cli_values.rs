//! The CLI's value parsers: `10000/day`, `60/min`, `30d`, RFC 3339 times, `--since`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../logic.rs"]
mod logic;

fuzz_target!(|data: &[u8]| logic::cli_values(data));
