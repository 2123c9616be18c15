//! Fuzz target `rtcp`: runs `tern_sfu::fuzz::rtcp`, the same body the crate's
//! property tests run on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_sfu::fuzz::rtcp(data));
