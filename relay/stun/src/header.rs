//! The fixed 20-byte STUN header (RFC 8489 §5): message type with its
//! interleaved class and method bits, magic cookie, transaction id; and the
//! RFC 7983 first-byte demultiplexing of a TURN port. Owns no attribute logic.

/// The fixed value of bytes 4..8 of every STUN message (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Length of the STUN header in bytes.
pub const HEADER_LEN: usize = 20;

/// The 96-bit transaction id of a STUN message.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TransactionId(pub [u8; 12]);

/// The class of a STUN message (RFC 8489 §5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Class {
    /// 0b00: a request.
    Request,
    /// 0b01: an indication.
    Indication,
    /// 0b10: a success response.
    Success,
    /// 0b11: an error response.
    Error,
}

/// A 12-bit STUN method. Values above 0xFFF are masked when encoded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Method(pub u16);

impl Method {
    /// Binding (RFC 8489).
    pub const BINDING: Method = Method(0x001);
    /// Allocate (RFC 8656).
    pub const ALLOCATE: Method = Method(0x003);
    /// Refresh (RFC 8656).
    pub const REFRESH: Method = Method(0x004);
    /// Send (RFC 8656).
    pub const SEND: Method = Method(0x006);
    /// Data (RFC 8656).
    pub const DATA: Method = Method(0x007);
    /// CreatePermission (RFC 8656).
    pub const CREATE_PERMISSION: Method = Method(0x008);
    /// ChannelBind (RFC 8656).
    pub const CHANNEL_BIND: Method = Method(0x009);
    /// Connect (RFC 6062).
    pub const CONNECT: Method = Method(0x00A);
    /// ConnectionBind (RFC 6062).
    pub const CONNECTION_BIND: Method = Method(0x00B);
    /// ConnectionAttempt (RFC 6062).
    pub const CONNECTION_ATTEMPT: Method = Method(0x00C);
}

/// Encode method and class into the 14-bit message type (bits M11..M7 C1
/// M6..M4 C0 M3..M0); the top two bits are zero.
pub fn message_type(method: Method, class: Class) -> u16 {
    let m = method.0 & 0x0FFF;
    let c: u16 = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

/// Split a message type into method and class. The two top bits are ignored.
pub fn split_message_type(t: u16) -> (Method, Class) {
    let m = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = match ((t >> 4) & 1) | ((t >> 7) & 2) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    };
    (Method(m), class)
}

/// What a datagram on a TURN port is, judged by its first byte (RFC 7983).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Demux {
    /// 0..=3: a STUN message.
    Stun,
    /// A TURN ChannelData message.
    ChannelData,
    /// Anything else (DTLS, RTP, ZRTP, garbage): not for the TURN codec.
    Other,
}

/// RFC 7983 demultiplexing with the ChannelData range of RFC 8656
/// (channel numbers 0x4000..=0x4FFF, first byte 64..=79).
pub fn demux(first_byte: u8) -> Demux {
    match first_byte {
        0..=3 => Demux::Stun,
        64..=79 => Demux::ChannelData,
        _ => Demux::Other,
    }
}

/// Like [`demux`] but with the wide ChannelData range 64..=127 (channel
/// numbers 0x4000..=0x7FFF, RFC 5766), matching what [`crate::ChannelData::parse`]
/// accepts.
pub fn demux_wide(first_byte: u8) -> Demux {
    match first_byte {
        0..=3 => Demux::Stun,
        64..=127 => Demux::ChannelData,
        _ => Demux::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASSES: [Class; 4] = [
        Class::Request,
        Class::Indication,
        Class::Success,
        Class::Error,
    ];

    #[test]
    fn well_known_types() {
        assert_eq!(message_type(Method::BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(Method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(Method::BINDING, Class::Error), 0x0111);
        assert_eq!(message_type(Method::ALLOCATE, Class::Request), 0x0003);
        assert_eq!(message_type(Method::ALLOCATE, Class::Error), 0x0113);
        assert_eq!(message_type(Method::SEND, Class::Indication), 0x0016);
        assert_eq!(message_type(Method::DATA, Class::Indication), 0x0017);
        assert_eq!(message_type(Method::CHANNEL_BIND, Class::Success), 0x0109);
        assert_eq!(
            message_type(Method::CONNECTION_ATTEMPT, Class::Indication),
            0x001C
        );
    }

    #[test]
    fn all_methods_and_classes_round_trip() {
        for m in 0..=0x0FFFu16 {
            for c in CLASSES {
                let t = message_type(Method(m), c);
                assert_eq!(t & 0xC000, 0);
                assert_eq!(split_message_type(t), (Method(m), c));
            }
        }
    }

    #[test]
    fn method_is_masked_to_12_bits() {
        assert_eq!(
            message_type(Method(0xF001), Class::Request),
            message_type(Method::BINDING, Class::Request)
        );
    }

    #[test]
    fn demux_ranges() {
        assert_eq!(demux(0), Demux::Stun);
        assert_eq!(demux(3), Demux::Stun);
        assert_eq!(demux(4), Demux::Other);
        assert_eq!(demux(20), Demux::Other);
        assert_eq!(demux(63), Demux::Other);
        assert_eq!(demux(64), Demux::ChannelData);
        assert_eq!(demux(79), Demux::ChannelData);
        assert_eq!(demux(80), Demux::Other);
        assert_eq!(demux(128), Demux::Other);
        assert_eq!(demux_wide(80), Demux::ChannelData);
        assert_eq!(demux_wide(127), Demux::ChannelData);
        assert_eq!(demux_wide(128), Demux::Other);
        assert_eq!(demux_wide(2), Demux::Stun);
    }
}
