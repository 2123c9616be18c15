//! Data indications (RFC 8656 §11.4) built in place for the relay fast path:
//! the header, XOR-PEER-ADDRESS and the DATA attribute header go in front of
//! a payload the caller has already received at its final offset, so the
//! payload is never copied. Owns only this one message layout.

use std::net::SocketAddr;

use crate::attr;
use crate::attributes::address_value_len;
use crate::error::BufferTooSmall;
use crate::header::{Class, Method, TransactionId, HEADER_LEN};
use crate::writer::MessageWriter;

/// The largest [`data_indication_header_len`]: 20 + (4 + 20) + 4.
pub const DATA_INDICATION_MAX_HEADER: usize = 48;

/// Bytes in front of the payload of a Data indication from `peer`: 36 for
/// IPv4, 48 for IPv6.
pub fn data_indication_header_len(peer: SocketAddr) -> usize {
    HEADER_LEN + 4 + address_value_len(&peer) + 4
}

/// Write a Data indication header + XOR-PEER-ADDRESS + DATA attribute header
/// into `buf[..n]`, `n = data_indication_header_len(peer)`, so that the
/// payload already at `buf[n..n + payload_len]` completes the message, and
/// write the zero padding after the payload. Needs `buf.len() >= n +
/// payload_len` rounded up to 4 (`n + payload_len + 3` always suffices) and
/// `payload_len` small enough for a 65535-byte body. Returns the total
/// message length. The payload bytes are not touched.
pub fn write_data_indication(
    buf: &mut [u8],
    tid: TransactionId,
    peer: SocketAddr,
    payload_len: usize,
) -> Result<usize, BufferTooSmall> {
    let mut w = MessageWriter::new(buf, Method::DATA, Class::Indication, tid)?;
    w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)?;
    // Reserves the DATA TLV header and the padding; the value is left as is.
    w.begin(attr::DATA, payload_len)?;
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    #[test]
    fn in_place_v4_and_v6() {
        for (peer, n) in [("198.51.100.7:5000", 36), ("[2001:db8::7]:5000", 48)] {
            let peer: SocketAddr = peer.parse().unwrap();
            assert_eq!(data_indication_header_len(peer), n);
            let tid = TransactionId([0x5A; 12]);
            let payload = b"rtp payload";
            let mut buf = [0xEEu8; 128];
            buf[n..n + payload.len()].copy_from_slice(payload);
            let total = write_data_indication(&mut buf, tid, peer, payload.len()).unwrap();
            assert_eq!(total, n + 12);
            assert_eq!(buf[n + payload.len()], 0);
            let m = Message::parse(&buf[..total]).unwrap();
            assert_eq!(m.method(), Method::DATA);
            assert_eq!(m.class(), Class::Indication);
            assert_eq!(m.transaction_id(), tid);
            let a = m.get(attr::XOR_PEER_ADDRESS).unwrap();
            assert_eq!(crate::decode_xor_address(a.value, &tid).unwrap(), peer);
            assert_eq!(m.get(attr::DATA).unwrap().value, payload);
        }
    }

    #[test]
    fn empty_payload_and_limits() {
        let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let tid = TransactionId([1; 12]);
        let mut buf = [0u8; 36];
        assert_eq!(write_data_indication(&mut buf, tid, peer, 0).unwrap(), 36);
        assert_eq!(
            write_data_indication(&mut buf, tid, peer, 1),
            Err(BufferTooSmall)
        );
        let mut big = vec![0u8; 70_000];
        assert_eq!(
            write_data_indication(&mut big, tid, peer, 65_535),
            Err(BufferTooSmall)
        );
        // Body = XOR-PEER-ADDRESS (12) + DATA header (4) + padded payload <= 65532.
        let max = 65_516;
        assert_eq!(
            write_data_indication(&mut big, tid, peer, max + 1),
            Err(BufferTooSmall)
        );
        let total = write_data_indication(&mut big, tid, peer, max).unwrap();
        assert_eq!(total, 20 + 65_532);
        Message::parse(&big[..total]).unwrap();
        assert_eq!(
            DATA_INDICATION_MAX_HEADER,
            data_indication_header_len("[::1]:1".parse().unwrap())
        );
    }
}
