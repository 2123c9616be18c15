//! Fuzz target `srtp`: runs `tern_sfu::fuzz::srtp`, the same body the crate's
//! property tests run on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_sfu::fuzz::srtp(data));
