//! tern's SFU forwarding core, sans-IO.
//!
//! A publisher's RTP stream arrives once and leaves many times, rewritten
//! per subscriber, never decoded. This crate is the protocol half of that:
//!
//! * [`rtp`] and [`rtcp`]: zero-copy views of the wire, in-place rewrites and
//!   RTCP writers; [`Ssrc`], [`SeqNo`], [`ExtSeq`].
//! * [`codec`]: key frames (VP8, H.264) and VP8 temporal layers, from the
//!   first bytes of a payload.
//! * [`seq`]: per-consumer sequence number and timestamp continuity.
//! * [`RetransmitBuffer`]: a producer encoding's last packets, for NACKs.
//! * [`Router`]: producers, consumers, simulcast, RTCP; see `API.md`.
//! * [`srtp`]: SRTP/SRTCP in place (AES_CM_128_HMAC_SHA1_80, AEAD_AES_128_GCM).
//!
//! Owns: all of the above. Must not touch: sockets, threads, clocks, the
//! filesystem. Bytes and `now` come in; transmits (into the caller's
//! [`Output`]), a timer deadline and events come out.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod codec;
pub mod fuzz;
mod loss;
mod output;
mod retransmit;
mod router;
pub mod rtcp;
pub mod rtp;
pub mod seq;
pub mod srtp;
mod stats;
mod types;

pub use codec::{Codec, FrameInfo};
pub use output::{Output, PacketKind, Transmit};
pub use retransmit::RetransmitBuffer;
pub use router::{
    ConsumerId, ConsumerParams, EncodingParams, Event, KeyFrameRequest, MediaKind, ProducerId,
    ProducerParams, Router, RouterConfig, RouterError, TransportId, MAX_ENCODINGS, RR_INTERVAL,
    TICK,
};
pub use stats::{ConsumerStats, DropReason, EncodingStats, RouterStats};
pub use types::{ExtSeq, PayloadType, SeqNo, SeqUnwrapper, Ssrc};
