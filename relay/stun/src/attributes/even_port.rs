//! EVEN-PORT value (RFC 8656 §18.7): one byte, R bit first, 7 RFFU bits.

use crate::error::ParseError;

/// The R bit ("reserve the next higher port too"); the length must be 1.
pub fn decode_even_port(value: &[u8]) -> Result<bool, ParseError> {
    match value {
        [b] => Ok(b & 0x80 != 0),
        _ => Err(ParseError::BadAttributeLength),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_port() {
        assert!(decode_even_port(&[0x80]).unwrap());
        assert!(!decode_even_port(&[0x7f]).unwrap());
        assert_eq!(decode_even_port(&[]), Err(ParseError::BadAttributeLength));
        assert_eq!(
            decode_even_port(&[0x80, 0, 0, 0]),
            Err(ParseError::BadAttributeLength)
        );
    }
}
