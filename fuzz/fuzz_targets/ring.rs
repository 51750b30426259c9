//! The vhost-user backend kicked through `handle_event`, over rings and
//! guest memory the fuzzer writes (see `tests/fuzz_harness/mod.rs`).
#![no_main]

#[path = "../../tests/fuzz_harness/mod.rs"]
mod fuzz_harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzz_harness::run_ring(data);
});
