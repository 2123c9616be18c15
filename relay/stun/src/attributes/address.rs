//! MAPPED-ADDRESS / ALTERNATE-SERVER / RESPONSE-ORIGIN / OTHER-ADDRESS value
//! (RFC 8489 §14.1): reserved byte, family, port, address in clear.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{FAMILY_V4, FAMILY_V6};
use crate::error::ParseError;

/// Decode a plain (non-XOR) address value. The first (reserved) byte is
/// ignored; the length must be 8 for IPv4 and 20 for IPv6.
pub fn decode_address(value: &[u8]) -> Result<SocketAddr, ParseError> {
    let (head, addr) = value
        .split_first_chunk::<4>()
        .ok_or(ParseError::BadAttributeLength)?;
    let port = u16::from_be_bytes([head[2], head[3]]);
    let ip = match head[1] {
        FAMILY_V4 => {
            let a: [u8; 4] = addr
                .try_into()
                .map_err(|_| ParseError::BadAttributeLength)?;
            IpAddr::V4(Ipv4Addr::from(a))
        }
        FAMILY_V6 => {
            let a: [u8; 16] = addr
                .try_into()
                .map_err(|_| ParseError::BadAttributeLength)?;
            IpAddr::V6(Ipv6Addr::from(a))
        }
        f => return Err(ParseError::UnknownAddressFamily(f)),
    };
    Ok(SocketAddr::new(ip, port))
}

/// Value length of an address attribute for `addr`: 8 or 20.
pub(crate) fn address_value_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    }
}

/// Write the plain address value of `addr` into `out`, which must be
/// exactly [`address_value_len`] bytes; returns `None` otherwise.
pub(crate) fn encode_address(addr: &SocketAddr, out: &mut [u8]) -> Option<()> {
    let (head, rest) = out.split_first_chunk_mut::<4>()?;
    head[0] = 0;
    head[2..4].copy_from_slice(&addr.port().to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            head[1] = FAMILY_V4;
            let o: &mut [u8; 4] = rest.try_into().ok()?;
            *o = ip.octets();
        }
        IpAddr::V6(ip) => {
            head[1] = FAMILY_V6;
            let o: &mut [u8; 16] = rest.try_into().ok()?;
            *o = ip.octets();
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_and_v6() {
        let v = [0, 1, 0x12, 0x34, 192, 0, 2, 1];
        assert_eq!(
            decode_address(&v).unwrap(),
            "192.0.2.1:4660".parse().unwrap()
        );
        let mut v6 = vec![0, 2, 0, 80];
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(
            decode_address(&v6).unwrap(),
            "[2001:db8::1]:80".parse().unwrap()
        );
    }

    #[test]
    fn encode_matches_decode() {
        for a in ["10.1.2.3:65535", "[::1]:1", "[fe80::1:2:3:4]:3478"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut buf = [0xFFu8; 20];
            let out = &mut buf[..address_value_len(&a)];
            encode_address(&a, out).unwrap();
            assert_eq!(out[0], 0);
            assert_eq!(decode_address(out).unwrap(), a);
        }
        let a: SocketAddr = "10.1.2.3:1".parse().unwrap();
        assert!(encode_address(&a, &mut [0; 7]).is_none());
    }

    #[test]
    fn rejects_bad_values() {
        assert_eq!(decode_address(&[]), Err(ParseError::BadAttributeLength));
        assert_eq!(
            decode_address(&[0, 1, 0, 0, 1, 2, 3]),
            Err(ParseError::BadAttributeLength)
        );
        assert_eq!(
            decode_address(&[0, 2, 0, 0, 1, 2, 3, 4]),
            Err(ParseError::BadAttributeLength)
        );
        assert_eq!(
            decode_address(&[0, 3, 0, 0, 1, 2, 3, 4]),
            Err(ParseError::UnknownAddressFamily(3))
        );
    }
}
