//! Shared helpers for tern's end-to-end and interop tests.
//!
//! Owns what every test under `tests/tests/` needs and nothing else: starting a relay
//! under test (in-process [`tern::Relay`] or the `tern` binary), probing free loopback
//! ports, REST and long-term credentials, a small raw STUN/TURN client built on
//! `tern-stun`, child-process guards and the skip-or-fail rule for missing interop tools.
//! Everything here talks to loopback only (127.0.0.0/8 and ::1), or to addresses inside
//! network namespaces a test creates and deletes ([`netns`]), and every wait is bounded.
#![warn(missing_docs)]
// Tests wait on the wall clock; the `Instant::now` ban in clippy.toml is for the sans-IO
// protocol crates, not for a harness that drives real sockets.
#![allow(clippy::disallowed_methods)]

pub mod creds;
pub mod env;
pub mod netns;
pub mod ports;
pub mod process;
pub mod relay;
pub mod stun_client;
