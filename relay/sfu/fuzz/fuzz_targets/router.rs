//! Fuzz target `router`: runs `tern_sfu::fuzz::router`, the same body the
//! crate's property tests run on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    #[allow(clippy::disallowed_methods)] // the fuzz harness supplies the start time
    let start = std::time::Instant::now();
    tern_sfu::fuzz::router(data, start)
});
