//! `Device::execute_batch` with structured, well-framed command batches
//! (see `tests/fuzz_harness/mod.rs`).
#![no_main]

#[path = "../../tests/fuzz_harness/mod.rs"]
mod fuzz_harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_harness::run_batch(data);
});
