//! Every JSON input of the C ABI: key spec, patch, filter, plan, policy, store options, audit filter.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../logic.rs"]
mod logic;

fuzz_target!(|data: &[u8]| logic::json(data));
