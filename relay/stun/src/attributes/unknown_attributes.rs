//! UNKNOWN-ATTRIBUTES value (RFC 8489 §14.13): a list of 16-bit types.

use crate::error::ParseError;

/// Decode the list into `out`, at most `out.len()` entries; returns how many
/// were written. The value length must be even.
pub fn decode_unknown_attributes(value: &[u8], out: &mut [u16]) -> Result<usize, ParseError> {
    if value.len() % 2 != 0 {
        return Err(ParseError::BadAttributeLength);
    }
    let mut n = 0;
    for (slot, pair) in out.iter_mut().zip(value.chunks_exact(2)) {
        if let [hi, lo] = *pair {
            *slot = u16::from_be_bytes([hi, lo]);
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list() {
        let mut out = [0u16; 4];
        assert_eq!(
            decode_unknown_attributes(&[0x70, 0x01, 0x00, 0x1a], &mut out).unwrap(),
            2
        );
        assert_eq!(&out[..2], &[0x7001, 0x001a]);
        let mut one = [0u16; 1];
        assert_eq!(
            decode_unknown_attributes(&[0x70, 0x01, 0x00, 0x1a], &mut one).unwrap(),
            1
        );
        assert_eq!(one, [0x7001]);
        assert_eq!(decode_unknown_attributes(&[], &mut out).unwrap(), 0);
        assert_eq!(
            decode_unknown_attributes(&[1, 2, 3], &mut out),
            Err(ParseError::BadAttributeLength)
        );
    }
}
