//! XOR-MAPPED-ADDRESS / XOR-PEER-ADDRESS / XOR-RELAYED-ADDRESS value (RFC
//! 8489 §14.2, RFC 8656 §18.3, §18.5): port XOR the cookie's top 16 bits,
//! IPv4 XOR the cookie, IPv6 XOR cookie || transaction id.

use std::net::SocketAddr;

use super::address::{decode_address, encode_address};
use crate::error::ParseError;
use crate::header::{TransactionId, MAGIC_COOKIE};

/// Decode an XOR address value with the message's transaction id.
pub fn decode_xor_address(value: &[u8], tid: &TransactionId) -> Result<SocketAddr, ParseError> {
    let mut clear = [0u8; 20];
    let out = clear
        .get_mut(..value.len())
        .ok_or(ParseError::BadAttributeLength)?;
    out.copy_from_slice(value);
    xor_in_place(out, tid);
    decode_address(out)
}

/// Write the XOR address value of `addr` into `out`, which must be exactly
/// `address_value_len(addr)` bytes; returns `None` otherwise.
pub(crate) fn encode_xor_address(
    addr: &SocketAddr,
    tid: &TransactionId,
    out: &mut [u8],
) -> Option<()> {
    encode_address(addr, out)?;
    xor_in_place(out, tid);
    Some(())
}

/// XOR bytes 2.. of an address value (port and address) with cookie || tid;
/// XOR is its own inverse, so this both encodes and decodes.
fn xor_in_place(value: &mut [u8], tid: &TransactionId) {
    let mut key = [0u8; 18];
    let (cookie, rest) = key.split_at_mut(4);
    cookie.copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    rest.iter_mut().zip(tid.0).for_each(|(k, t)| *k = t);
    // Port XOR the cookie's top half; address XOR cookie || tid.
    let port_key = [key[0], key[1]];
    let addr_key = key.get(..16).unwrap_or(&[]);
    if let Some(port) = value.get_mut(2..4) {
        port.iter_mut().zip(port_key).for_each(|(b, k)| *b ^= k);
    }
    if let Some(addr) = value.get_mut(4..) {
        addr.iter_mut().zip(addr_key).for_each(|(b, k)| *b ^= k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: TransactionId = TransactionId([
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ]);

    #[test]
    fn rfc5769_values() {
        let v4 = [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
        assert_eq!(
            decode_xor_address(&v4, &TID).unwrap(),
            "192.0.2.1:32853".parse().unwrap()
        );
        let v6 = [
            0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
            0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        ];
        let want: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        assert_eq!(decode_xor_address(&v6, &TID).unwrap(), want);
        let mut out = [0u8; 20];
        encode_xor_address(&want, &TID, &mut out).unwrap();
        assert_eq!(out, v6);
        let mut out = [0u8; 8];
        encode_xor_address(&"192.0.2.1:32853".parse().unwrap(), &TID, &mut out).unwrap();
        assert_eq!(out, v4);
    }

    #[test]
    fn rejects_bad_values() {
        assert_eq!(
            decode_xor_address(&[0; 21], &TID),
            Err(ParseError::BadAttributeLength)
        );
        assert_eq!(
            decode_xor_address(&[0; 3], &TID),
            Err(ParseError::BadAttributeLength)
        );
        assert_eq!(
            decode_xor_address(&[0; 8], &TID),
            Err(ParseError::UnknownAddressFamily(0))
        );
        assert_eq!(
            decode_xor_address(&[0, 1, 0, 0, 0, 0, 0, 0, 0], &TID),
            Err(ParseError::BadAttributeLength)
        );
    }
}
