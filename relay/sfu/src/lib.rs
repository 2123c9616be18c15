//! tern's SFU forwarding core, sans-IO.
//!
//! Owns: the RTP/RTCP wire views ([`rtp`], [`rtcp`]) and newtypes
//! ([`Ssrc`], [`SeqNo`]). Must not touch: sockets, threads, clocks, the
//! filesystem; `now` comes in as an argument.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod rtcp;
pub mod rtp;
mod types;

pub use types::{ExtSeq, PayloadType, SeqNo, SeqUnwrapper, Ssrc};
