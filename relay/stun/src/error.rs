//! Error values of the codec. Owns the three error types every other module
//! returns; it must not grow variants that carry borrowed data or allocate.

/// Why bytes could not be read as a STUN message, ChannelData message or
/// attribute value.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than the fixed header (20 for STUN, 4 for ChannelData),
    /// or fewer than the header's length field announces.
    #[error("too short")]
    TooShort,
    /// The two most significant bits of a STUN message are not zero.
    #[error("not a STUN message")]
    NotStun,
    /// The magic cookie is not 0x2112A442.
    #[error("bad magic cookie")]
    BadMagicCookie,
    /// The header's length field does not match the bytes received (STUN), or
    /// more than three bytes of padding follow the data (ChannelData).
    #[error("length field does not match the datagram")]
    LengthMismatch,
    /// The STUN message length is not a multiple of 4.
    #[error("message length is not a multiple of 4")]
    BadLengthAlignment,
    /// An attribute's TLV (with padding) runs past the end of the message.
    #[error("truncated attribute")]
    TruncatedAttribute,
    /// The FINGERPRINT CRC does not match the message.
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
    /// Another attribute follows FINGERPRINT, which must be last.
    #[error("attribute after FINGERPRINT")]
    AttributeAfterFingerprint,
    /// An attribute of this type is malformed at the message level (for
    /// example a FINGERPRINT whose length is not 4).
    #[error("malformed attribute {0:#06x}")]
    BadAttribute(u16),
    /// An attribute value has a length its type does not allow.
    #[error("attribute value has a bad length")]
    BadAttributeLength,
    /// An address attribute carries a family other than 0x01 or 0x02.
    #[error("unknown address family {0:#04x}")]
    UnknownAddressFamily(u8),
    /// ERROR-CODE outside 300..=699 (class 3..=6, number 0..=99).
    #[error("bad error code {0}")]
    BadErrorCode(u16),
    /// A text attribute is not UTF-8.
    #[error("text attribute is not UTF-8")]
    InvalidUtf8,
    /// A text attribute is longer than its type allows.
    #[error("text attribute too long")]
    TextTooLong,
    /// The first two bits of a ChannelData message are not 0b01 (channel
    /// number outside 0x4000..=0x7FFF).
    #[error("not a ChannelData message")]
    NotChannelData,
}

/// Why MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 did not verify.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityError {
    /// The message carries no (non-ignored) integrity attribute of that kind.
    #[error("integrity attribute missing")]
    Missing,
    /// The HMAC does not match: wrong key or altered message.
    #[error("integrity mismatch")]
    Mismatch,
    /// The attribute's length is not one its algorithm allows (20 for SHA-1;
    /// 16..=32 in steps of 4 for SHA-256).
    #[error("integrity attribute has a bad length")]
    BadLength,
}

/// The caller's buffer cannot hold what was asked to be written. Also returned
/// when the result could not be encoded at all: a STUN message body is limited
/// to 65535 bytes by its 16-bit length field, and so is one attribute value.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
#[error("buffer too small for STUN message")]
pub struct BufferTooSmall;
