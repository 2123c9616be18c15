//! Fuzz target `channel_data`: runs `tern_stun::fuzz::channel_data`, the same body the
//! crate's property tests run on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_stun::fuzz::channel_data(data));
