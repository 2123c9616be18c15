//! tern's TURN server core: RFC 8656 (TURN) over RFC 8489 (STUN), sans-IO.
//!
//! Owns: allocations, permissions, channel bindings, long-term and REST
//! authentication, the peer address policy, quotas within a shard, and the
//! relay fast path (ChannelData and Send/Data indications, zero-copy). Must not
//! touch: sockets, threads, clocks, the filesystem. Bytes and `now` come in;
//! forwards, control transmits, a timer deadline and events come out; the OS
//! side is the caller's [`Host`].
//!
//! One [`Server`] runs per worker thread (a "shard"). Shards share nothing: the
//! kernel's SO_REUSEPORT hash keeps each client 5-tuple on one shard, each shard
//! owns the relay sockets of the allocations it made, and nonces are stateless
//! so any shard can check any nonce.
//!
//! The wire codec is [`tern_stun`], our own: see its crate docs for why the
//! webrtc-rs `stun` crate is not used as the codec.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod allocation;
pub mod auth;
mod channel;
mod config;
mod host;
mod limit;
pub mod policy;
mod server;
mod stats;

pub use allocation::{
    FiveTuple, Transport, CHANNEL_LIFETIME, CHANNEL_QUARANTINE, PERMISSION_LIFETIME,
};
pub use auth::{AuthFailure, Credentials};
pub use channel::ChannelNumber;
pub use config::{PortRangeError, RelayAddress, RelayAddresses, RelayPortRange, ServerConfig};
pub use host::{BindError, Host, QuotaError};
pub use server::{
    ConnectionId, Event, Forward, Server, Transmit, Via, CONNECTION_BIND_TIMEOUT, PEER_HEADROOM,
    PEER_TAILROOM,
};
pub use stats::{DeleteReason, DropReason, Stats, TransportStats};
