//! # tern-bench
//!
//! The load generator and side-by-side comparison harness for TURN relays.
//! It sets up real TURN allocations (Allocate with REST or long-term
//! credentials, CreatePermission, ChannelBind), sends paced probe traffic
//! through them to peer sockets on loopback, and accounts for what arrives
//! (loss, reordering, duplicates, one-way latency) and for the CPU the
//! relay and the machine spent per relayed packet. A built-in null relay
//! measures the floor of the same I/O path, and an impairment proxy checks
//! the harness's own accounting.
//!
//! Traffic stays on loopback; every load loop has a packet count and a time
//! limit; every process the harness starts is killed by PID when its guard
//! drops (see [`servers`]).

#![warn(missing_docs)]
// This crate is I/O and measurement, not a sans-IO protocol core: it reads
// the clock on purpose (the workspace clippy.toml bans it for protocol crates).
#![allow(clippy::disallowed_methods)]

pub mod compare;
pub mod cpu;
mod error;
pub mod forwarder;
pub mod load;
pub mod mix;
pub mod mmsg;
pub mod netns;
pub mod null_io;
pub mod pacing;
pub mod payload;
pub mod progress;
pub mod scenario;
pub mod servers;
pub mod sfu;
pub mod stream;
pub mod sweep;
pub mod turn_client;
#[cfg(feature = "xdp")]
mod xsk_load;

pub use error::{Error, Result};
