//! Fuzz target `attributes`: runs `tern_stun::fuzz::attributes`, the same body the
//! crate's property tests run on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_stun::fuzz::attributes(data));
