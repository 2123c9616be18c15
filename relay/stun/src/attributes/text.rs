//! UTF-8 text values: USERNAME (RFC 8489 §14.3), REALM (§14.9), NONCE
//! (§14.10), SOFTWARE (§14.14), ALTERNATE-DOMAIN (§14.16). No SASLprep or
//! OpaqueString processing here; that is the credential layer's business.

use crate::error::ParseError;

/// Longest USERNAME in bytes (fewer than 509, RFC 8489 §14.3).
pub const USERNAME_MAX_LEN: usize = 508;

/// Longest REALM, NONCE, SOFTWARE or reason phrase in bytes (fewer than 128
/// characters, "which can be as long as 763 bytes", RFC 8489 §14.9–§14.14).
pub const TEXT_MAX_LEN: usize = 763;

/// The value as UTF-8 text of at most `max_len` bytes.
pub fn decode_utf8(value: &[u8], max_len: usize) -> Result<&str, ParseError> {
    if value.len() > max_len {
        return Err(ParseError::TextTooLong);
    }
    core::str::from_utf8(value).map_err(|_| ParseError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text() {
        assert_eq!(
            decode_utf8(b"example.org", TEXT_MAX_LEN).unwrap(),
            "example.org"
        );
        assert_eq!(decode_utf8(b"", 0).unwrap(), "");
        assert_eq!(decode_utf8(b"abc", 2), Err(ParseError::TextTooLong));
        assert_eq!(decode_utf8(&[0xc3], 10), Err(ParseError::InvalidUtf8));
        assert_eq!(
            decode_utf8("マトリックス".as_bytes(), 18).unwrap(),
            "マトリックス"
        );
    }
}
