//! Fuzz target `stream_frames`: runs `tern_stun::fuzz::stream_frames`, the same body the
//! stable property tests run.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tern_stun::fuzz::stream_frames(data));
