//! Typed decoders and encoders of attribute values, one file per wire
//! element. Each works on a value slice without its TLV header and padding;
//! framing belongs to `crate::message` and `crate::writer`.

mod address;
mod address_family;
mod channel_number;
mod error_code;
mod even_port;
mod password_algorithm;
mod requested_transport;
mod reservation_token;
mod text;
mod uint;
mod unknown_attributes;
mod xor_address;

pub use address::decode_address;
pub use address_family::{decode_address_family, AddressFamily};
pub use channel_number::decode_channel_number;
pub use error_code::{decode_error_code, ERROR_REASON_MAX_LEN};
pub use even_port::decode_even_port;
pub use password_algorithm::{
    decode_password_algorithm, password_algorithms_contains, PasswordAlgorithm,
};
pub use requested_transport::{decode_requested_transport, PROTOCOL_TCP, PROTOCOL_UDP};
pub use reservation_token::decode_reservation_token;
pub use text::{decode_utf8, TEXT_MAX_LEN, USERNAME_MAX_LEN};
pub use uint::decode_u32;
pub use unknown_attributes::decode_unknown_attributes;
pub use xor_address::decode_xor_address;

pub(crate) use address::{address_value_len, encode_address};
pub(crate) use error_code::{encode_error_code, truncate_reason};
pub(crate) use xor_address::encode_xor_address;

/// `len` rounded up to a multiple of 4 (RFC 8489 §14: values are padded to
/// 32-bit boundaries). Saturates instead of overflowing.
pub(crate) fn padded_len(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// Address family codes of the address attributes (RFC 8489 §14.1).
pub(crate) const FAMILY_V4: u8 = 0x01;
pub(crate) const FAMILY_V6: u8 = 0x02;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding() {
        assert_eq!(padded_len(0), 0);
        assert_eq!(padded_len(1), 4);
        assert_eq!(padded_len(4), 4);
        assert_eq!(padded_len(5), 8);
        assert_eq!(padded_len(65535), 65536);
    }
}
