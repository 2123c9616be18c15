//! RESERVATION-TOKEN value (RFC 8656 §18.10): an opaque 8-byte token.

use crate::error::ParseError;

/// The 8-byte token; the length must be 8.
pub fn decode_reservation_token(value: &[u8]) -> Result<[u8; 8], ParseError> {
    value.try_into().map_err(|_| ParseError::BadAttributeLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token() {
        assert_eq!(
            decode_reservation_token(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap(),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(
            decode_reservation_token(&[0; 7]),
            Err(ParseError::BadAttributeLength)
        );
    }
}
