//! REQUESTED-TRANSPORT value (RFC 8656 §18.8): protocol byte and 3 RFFU bytes.

use crate::error::ParseError;

/// IANA protocol number of UDP.
pub const PROTOCOL_UDP: u8 = 17;
/// IANA protocol number of TCP (RFC 6062).
pub const PROTOCOL_TCP: u8 = 6;

/// The protocol byte (17 = UDP, 6 = TCP); the length must be 4, the RFFU
/// bytes are ignored.
pub fn decode_requested_transport(value: &[u8]) -> Result<u8, ParseError> {
    let b: [u8; 4] = value
        .try_into()
        .map_err(|_| ParseError::BadAttributeLength)?;
    Ok(b[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport() {
        assert_eq!(
            decode_requested_transport(&[17, 0, 0, 0]).unwrap(),
            PROTOCOL_UDP
        );
        assert_eq!(
            decode_requested_transport(&[6, 1, 2, 3]).unwrap(),
            PROTOCOL_TCP
        );
        assert_eq!(
            decode_requested_transport(&[17]),
            Err(ParseError::BadAttributeLength)
        );
    }
}
