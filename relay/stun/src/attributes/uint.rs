//! 32-bit integer values: LIFETIME (RFC 8656 §18.2), PRIORITY (RFC 8445),
//! FINGERPRINT's CRC, and any other 4-byte big-endian value.

use crate::error::ParseError;

/// The value as a big-endian u32; its length must be exactly 4.
pub fn decode_u32(value: &[u8]) -> Result<u32, ParseError> {
    let b: [u8; 4] = value
        .try_into()
        .map_err(|_| ParseError::BadAttributeLength)?;
    Ok(u32::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u32_values() {
        assert_eq!(decode_u32(&[0, 0, 0x02, 0x58]).unwrap(), 600);
        assert_eq!(decode_u32(&[0xff; 4]).unwrap(), u32::MAX);
        assert_eq!(decode_u32(&[0; 3]), Err(ParseError::BadAttributeLength));
        assert_eq!(decode_u32(&[0; 5]), Err(ParseError::BadAttributeLength));
    }
}
