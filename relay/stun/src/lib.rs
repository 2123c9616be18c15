//! # tern-stun
//!
//! A zero-copy STUN (RFC 8489) and TURN (RFC 8656) wire codec. It owns the
//! bytes on the wire and nothing else: the message header and type
//! encoding, framing validation, the attribute iterator, typed decoders and
//! encoders of attribute values, MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256
//! and FINGERPRINT, ChannelData framing, the in-place Data indication of the
//! relay fast path, long-term credential keys, and RFC 7983 demultiplexing.
//! It does no I/O, reads no clock, keeps no state, and knows nothing of
//! allocations, permissions or nonces: that is `tern-turn`'s job.
//!
//! Parsing borrows the packet ([`Message`], [`ChannelData`], [`RawAttribute`]);
//! encoding writes into a caller-given slice ([`MessageWriter`],
//! [`write_data_indication`], [`write_channel_data_header`]). Nothing in the
//! crate allocates on the heap, and no input makes it panic: every access to
//! received bytes is bounds-checked, and the fuzz targets in `fuzz/` and the
//! property tests run the same bodies (`tern_stun::fuzz`) over arbitrary
//! bytes.
//!
//! ## Why not the `stun` crate
//!
//! The webrtc-rs `stun` crate (0.17.2, used here only as a test oracle) is
//! not a fit for a relay's packet path, as its 0.17.2 source shows:
//!
//! * its `Message` owns its bytes (`raw: Vec<u8>`) and decodes every
//!   attribute into an `Attributes(Vec<RawAttribute>)` whose entries each
//!   copy their value into a fresh `Vec<u8>`, so parsing one message
//!   allocates once per attribute, and building one grows a `Vec`;
//! * it defines the type codes of MESSAGE-INTEGRITY-SHA256 (0x001C),
//!   PASSWORD-ALGORITHM, PASSWORD-ALGORITHMS and USERHASH, but has no code
//!   to compute, check, encode or decode any of them: its `MessageIntegrity`
//!   is HMAC-SHA1 only, so RFC 8489's SHA-256 integrity is out of reach;
//! * its decoder accepts trailing bytes after the announced length, does not
//!   check the top two bits or the 4-byte alignment of the length, and does
//!   not ignore attributes that follow MESSAGE-INTEGRITY (RFC 8489 §14.5);
//! * for a codec it pulls in `tokio`, `ring`, `rand`, `url` and `lazy_static`.
//!
//! A borrowed view plus a writer into a caller's buffer is also what makes
//! the in-place Data indication possible: the payload is received once at
//! its final offset and never copied.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod attr;
mod attributes;
mod channel_data;
mod credentials;
mod error;
pub mod framing;
#[doc(hidden)]
pub mod fuzz;
mod header;
mod indication;
mod message;
mod writer;

pub use attributes::{
    decode_address, decode_address_family, decode_channel_number, decode_error_code,
    decode_even_port, decode_password_algorithm, decode_requested_transport,
    decode_reservation_token, decode_u32, decode_unknown_attributes, decode_utf8,
    decode_xor_address, password_algorithms_contains, AddressFamily, PasswordAlgorithm,
    ERROR_REASON_MAX_LEN, PROTOCOL_TCP, PROTOCOL_UDP, TEXT_MAX_LEN, USERNAME_MAX_LEN,
};
pub use channel_data::{write_channel_data_header, ChannelData, CHANNEL_DATA_HEADER_LEN};
pub use credentials::{long_term_key_md5, long_term_key_sha256, userhash};
pub use error::{BufferTooSmall, IntegrityError, ParseError};
pub use header::{
    demux, demux_wide, message_type, split_message_type, Class, Demux, Method, TransactionId,
    HEADER_LEN, MAGIC_COOKIE,
};
pub use indication::{
    data_indication_header_len, write_data_indication, DATA_INDICATION_MAX_HEADER,
};
pub use message::{Attributes, IntegrityKind, Message, RawAttribute, FINGERPRINT_XOR};
pub use writer::MessageWriter;
