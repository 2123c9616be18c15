//! REQUESTED-ADDRESS-FAMILY and ADDITIONAL-ADDRESS-FAMILY value (RFC 8656
//! §18.6, §18.11): family byte (0x01 IPv4, 0x02 IPv6) and 3 RFFU bytes.

use super::{FAMILY_V4, FAMILY_V6};
use crate::error::ParseError;

/// An IP address family as carried in TURN attributes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum AddressFamily {
    /// 0x01.
    V4,
    /// 0x02.
    V6,
}

impl AddressFamily {
    /// The wire code: 0x01 or 0x02.
    pub fn code(self) -> u8 {
        match self {
            AddressFamily::V4 => FAMILY_V4,
            AddressFamily::V6 => FAMILY_V6,
        }
    }
}

/// The family; the length must be 4, the RFFU bytes are ignored.
pub fn decode_address_family(value: &[u8]) -> Result<AddressFamily, ParseError> {
    let b: [u8; 4] = value
        .try_into()
        .map_err(|_| ParseError::BadAttributeLength)?;
    match b[0] {
        FAMILY_V4 => Ok(AddressFamily::V4),
        FAMILY_V6 => Ok(AddressFamily::V6),
        f => Err(ParseError::UnknownAddressFamily(f)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family() {
        assert_eq!(
            decode_address_family(&[1, 0, 0, 0]).unwrap(),
            AddressFamily::V4
        );
        assert_eq!(
            decode_address_family(&[2, 0, 0, 0]).unwrap(),
            AddressFamily::V6
        );
        assert_eq!(
            decode_address_family(&[3, 0, 0, 0]),
            Err(ParseError::UnknownAddressFamily(3))
        );
        assert_eq!(
            decode_address_family(&[1]),
            Err(ParseError::BadAttributeLength)
        );
        assert_eq!(AddressFamily::V6.code(), 2);
    }
}
