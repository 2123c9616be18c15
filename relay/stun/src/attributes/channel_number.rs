//! CHANNEL-NUMBER value (RFC 8656 §18.1): 16-bit channel number and 16 RFFU
//! bits. The range check (0x4000..=0x4FFF) is the TURN layer's policy.

use crate::error::ParseError;

/// The raw channel number; the length must be 4. The range is NOT checked.
pub fn decode_channel_number(value: &[u8]) -> Result<u16, ParseError> {
    let b: [u8; 4] = value
        .try_into()
        .map_err(|_| ParseError::BadAttributeLength)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_number() {
        assert_eq!(decode_channel_number(&[0x40, 0x01, 0, 0]).unwrap(), 0x4001);
        assert_eq!(decode_channel_number(&[0x00, 0x01, 0xff, 0xff]).unwrap(), 1);
        assert_eq!(
            decode_channel_number(&[0x40, 0x01]),
            Err(ParseError::BadAttributeLength)
        );
    }
}
