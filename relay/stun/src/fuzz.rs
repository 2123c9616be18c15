//! Bodies of the fuzz targets in `fuzz/`, kept in the crate so the stable
//! property tests run exactly what the fuzzer runs. Each function takes
//! arbitrary bytes; a panic in one is a bug in the codec (the assertions
//! check round-trip invariants, never the input).

use crate::attr;
use crate::attributes::*;
use crate::channel_data::ChannelData;
use crate::framing;
use crate::header::{Class, Method, TransactionId};
use crate::message::Message;
use crate::writer::MessageWriter;

/// Fuzz target `stun_message`: parse, walk every attribute through its typed
/// decoder, and run every integrity and lookup function.
pub fn message(data: &[u8]) {
    let Ok(m) = Message::parse(data) else {
        return;
    };
    let tid = m.transaction_id();
    let _ = (
        m.method(),
        m.class(),
        m.has_fingerprint(),
        m.integrity_kind(),
    );
    for a in m.attributes() {
        decode_by_type(a.typ, a.value, &tid);
        assert_eq!(m.get(a.typ).map(|g| g.typ), Some(a.typ));
    }
    let mut unknown = [0u16; 8];
    let n = m.unknown_required(|t| attr::name(t).is_some(), &mut unknown);
    assert!(n <= unknown.len());
    let _ = m.verify_integrity(b"key");
    let _ = m.verify_integrity_sha256(b"key");
    assert_eq!(m.raw(), data);
}

/// Fuzz target `channel_data`: parse, and re-frame what parsed.
pub fn channel_data(data: &[u8]) {
    let Ok(cd) = ChannelData::parse(data) else {
        return;
    };
    let Ok(len) = u16::try_from(cd.data.len()) else {
        return;
    };
    let mut hdr = [0u8; 4];
    if crate::write_channel_data_header(&mut hdr, cd.channel, len).is_ok() {
        assert_eq!(data.get(..4), Some(&hdr[..]));
    }
}

/// Fuzz target `stream_frames`: byte 0 chooses a read size (1..=64), the rest
/// is a byte stream. It is framed twice — all at once, and fed in reads of
/// that size into a bounded buffer the way a worker does — and both must find
/// the same frames and the same error; no frame exceeds the limit.
pub fn stream_frames(data: &[u8]) {
    const MAX: usize = 512;
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 64) + 1;
    // All at once.
    let mut whole = Vec::new();
    let mut at = 0;
    let whole_end = loop {
        match framing::frame_len(&stream[at..], MAX) {
            Ok(framing::Frame::Complete(n)) => {
                assert!((4..=MAX).contains(&n) && at + n <= stream.len());
                whole.push(&stream[at..at + n]);
                at += n;
            }
            Ok(framing::Frame::Incomplete { needed }) => {
                assert!(needed > stream.len() - at && needed <= MAX.max(4));
                break Ok(at);
            }
            Err(e) => break Err(e),
        }
    };
    // In reads of `chunk` bytes into a buffer of MAX bytes.
    let mut buf = [0u8; MAX];
    let (mut filled, mut fed, mut found) = (0usize, 0usize, 0usize);
    let incremental_end = 'outer: loop {
        loop {
            match framing::frame_len(&buf[..filled], MAX) {
                Ok(framing::Frame::Complete(n)) => {
                    assert_eq!(Some(&&buf[..n]), whole.get(found));
                    found += 1;
                    buf.copy_within(n..filled, 0);
                    filled -= n;
                }
                Ok(framing::Frame::Incomplete { .. }) => break,
                Err(e) => break 'outer Err(e),
            }
        }
        if fed == stream.len() {
            break Ok(fed - filled);
        }
        let take = chunk.min(stream.len() - fed).min(MAX - filled);
        buf[filled..filled + take].copy_from_slice(&stream[fed..fed + take]);
        filled += take;
        fed += take;
    };
    assert_eq!(found, whole.len());
    assert_eq!(incremental_end, whole_end);
}

/// Fuzz target `attributes`: byte 0 picks an attribute type, bytes 1..13
/// are the transaction id, the rest is the value. Every value a typed
/// decoder accepts must survive re-encoding with the writer and re-parsing.
pub fn attributes(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Some((tid, value)) = rest.split_first_chunk::<12>() else {
        return;
    };
    let tid = TransactionId(*tid);
    let typ = TYPES
        .get(usize::from(pick) % TYPES.len())
        .copied()
        .unwrap_or(attr::DATA);
    decode_by_type(typ, value, &tid);
    round_trip(typ, value, &tid);
}

/// Types the `attributes` target exercises: every one with a typed decoder.
const TYPES: &[u16] = &[
    attr::XOR_MAPPED_ADDRESS,
    attr::XOR_PEER_ADDRESS,
    attr::XOR_RELAYED_ADDRESS,
    attr::MAPPED_ADDRESS,
    attr::ALTERNATE_SERVER,
    attr::LIFETIME,
    attr::PRIORITY,
    attr::ERROR_CODE,
    attr::USERNAME,
    attr::REALM,
    attr::NONCE,
    attr::SOFTWARE,
    attr::REQUESTED_TRANSPORT,
    attr::CHANNEL_NUMBER,
    attr::EVEN_PORT,
    attr::RESERVATION_TOKEN,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::ADDITIONAL_ADDRESS_FAMILY,
    attr::PASSWORD_ALGORITHM,
    attr::PASSWORD_ALGORITHMS,
    attr::UNKNOWN_ATTRIBUTES,
    attr::DATA,
];

/// Run the typed decoder that belongs to `typ` (if any) on `value`.
fn decode_by_type(typ: u16, value: &[u8], tid: &TransactionId) {
    match typ {
        attr::XOR_MAPPED_ADDRESS | attr::XOR_PEER_ADDRESS | attr::XOR_RELAYED_ADDRESS => {
            let _ = decode_xor_address(value, tid);
        }
        attr::MAPPED_ADDRESS | attr::ALTERNATE_SERVER => {
            let _ = decode_address(value);
        }
        attr::LIFETIME | attr::PRIORITY | attr::FINGERPRINT => {
            let _ = decode_u32(value);
        }
        attr::ERROR_CODE => {
            let _ = decode_error_code(value);
        }
        attr::USERNAME => {
            let _ = decode_utf8(value, USERNAME_MAX_LEN);
        }
        attr::REALM | attr::NONCE | attr::SOFTWARE => {
            let _ = decode_utf8(value, TEXT_MAX_LEN);
        }
        attr::REQUESTED_TRANSPORT => {
            let _ = decode_requested_transport(value);
        }
        attr::CHANNEL_NUMBER => {
            let _ = decode_channel_number(value);
        }
        attr::EVEN_PORT => {
            let _ = decode_even_port(value);
        }
        attr::RESERVATION_TOKEN => {
            let _ = decode_reservation_token(value);
        }
        attr::REQUESTED_ADDRESS_FAMILY | attr::ADDITIONAL_ADDRESS_FAMILY => {
            let _ = decode_address_family(value);
        }
        attr::PASSWORD_ALGORITHM => {
            let _ = decode_password_algorithm(value);
        }
        attr::PASSWORD_ALGORITHMS => {
            let _ = password_algorithms_contains(value, PasswordAlgorithm::Sha256);
        }
        attr::UNKNOWN_ATTRIBUTES => {
            let mut out = [0u16; 8];
            let _ = decode_unknown_attributes(value, &mut out);
        }
        _ => {}
    }
}

/// Decode `value` as `typ`; if that works, write it back with the typed
/// writer method, parse the message, decode again and compare.
fn round_trip(typ: u16, value: &[u8], tid: &TransactionId) {
    let mut buf = [0u8; 1024];
    let Ok(mut w) = MessageWriter::new(&mut buf, Method::BINDING, Class::Success, *tid) else {
        return;
    };
    let wrote = match typ {
        attr::XOR_MAPPED_ADDRESS | attr::XOR_PEER_ADDRESS | attr::XOR_RELAYED_ADDRESS => {
            decode_xor_address(value, tid).map(|a| w.add_xor_address(typ, a))
        }
        attr::MAPPED_ADDRESS | attr::ALTERNATE_SERVER => {
            decode_address(value).map(|a| w.add_address(typ, a))
        }
        attr::LIFETIME | attr::PRIORITY => decode_u32(value).map(|v| w.add_u32(typ, v)),
        attr::ERROR_CODE => decode_error_code(value).map(|(c, r)| w.add_error_code(c, r)),
        attr::USERNAME | attr::REALM | attr::NONCE | attr::SOFTWARE => {
            decode_utf8(value, TEXT_MAX_LEN).map(|s| w.add_text(typ, s))
        }
        attr::REQUESTED_TRANSPORT => {
            decode_requested_transport(value).map(|p| w.add_requested_transport(p))
        }
        attr::CHANNEL_NUMBER => decode_channel_number(value).map(|c| w.add_channel_number(c)),
        attr::EVEN_PORT => decode_even_port(value).map(|r| w.add_even_port(r)),
        attr::RESERVATION_TOKEN => {
            decode_reservation_token(value).map(|t| w.add_reservation_token(t))
        }
        attr::REQUESTED_ADDRESS_FAMILY | attr::ADDITIONAL_ADDRESS_FAMILY => {
            decode_address_family(value).map(|f| w.add_address_family(typ, f))
        }
        attr::PASSWORD_ALGORITHM => {
            decode_password_algorithm(value).map(|a| w.add_password_algorithm(a))
        }
        _ => Ok(w.add_raw(typ, value)),
    };
    let Ok(Ok(())) = wrote else {
        return;
    };
    let n = w.finish();
    let Some(msg) = buf.get(..n) else {
        return;
    };
    // INVARIANT: the writer only produces well-framed messages, and the one
    // attribute it wrote is not after an integrity attribute.
    let m = Message::parse(msg).expect("writer output parses");
    // INVARIANT: as above.
    let a = m.get(typ).expect("written attribute is there");
    match typ {
        attr::XOR_MAPPED_ADDRESS | attr::XOR_PEER_ADDRESS | attr::XOR_RELAYED_ADDRESS => {
            assert_eq!(
                decode_xor_address(a.value, tid),
                decode_xor_address(value, tid)
            );
        }
        attr::MAPPED_ADDRESS | attr::ALTERNATE_SERVER => {
            assert_eq!(decode_address(a.value), decode_address(value));
        }
        attr::ERROR_CODE => assert_eq!(decode_error_code(a.value), decode_error_code(value)),
        attr::EVEN_PORT => assert_eq!(decode_even_port(a.value), decode_even_port(value)),
        attr::REQUESTED_TRANSPORT => assert_eq!(
            decode_requested_transport(a.value),
            decode_requested_transport(value)
        ),
        attr::CHANNEL_NUMBER => {
            assert_eq!(decode_channel_number(a.value), decode_channel_number(value));
        }
        attr::REQUESTED_ADDRESS_FAMILY | attr::ADDITIONAL_ADDRESS_FAMILY => {
            assert_eq!(decode_address_family(a.value), decode_address_family(value));
        }
        attr::PASSWORD_ALGORITHM => assert_eq!(
            decode_password_algorithm(a.value),
            decode_password_algorithm(value)
        ),
        // Byte-exact types: the value comes back unchanged.
        _ => assert_eq!(a.value, value),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::error::BufferTooSmall;

    /// A well-formed message built from fuzz-chosen attributes, so mutations
    /// of it reach past the header checks.
    fn valid_message(attrs: &[(u16, Vec<u8>)], mi: bool, fp: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 8192];
        let n = (|| -> Result<usize, BufferTooSmall> {
            let mut w = MessageWriter::new(
                &mut buf,
                Method::ALLOCATE,
                Class::Request,
                TransactionId([3; 12]),
            )?;
            for (t, v) in attrs {
                w.add_raw(*t, v)?;
            }
            if mi {
                w.add_message_integrity(b"key")?;
            }
            if fp {
                w.add_fingerprint()?;
            }
            Ok(w.finish())
        })()
        .unwrap();
        buf.truncate(n);
        buf
    }

    fn arb_attrs() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
        let typ = prop_oneof![
            prop::sample::select(TYPES.to_vec()),
            any::<u16>().prop_filter("no fingerprint", |t| *t != attr::FINGERPRINT),
        ];
        prop::collection::vec((typ, prop::collection::vec(any::<u8>(), 0..40)), 0..8)
    }

    proptest! {
        #[test]
        fn message_never_panics_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
            message(&data);
        }

        #[test]
        fn message_never_panics_on_stun_shaped_bytes(
            typ in 0u16..0x4000,
            tid in any::<[u8; 12]>(),
            body in prop::collection::vec(any::<u8>(), 0..64).prop_map(|mut b| { b.truncate(b.len() / 4 * 4); b }),
        ) {
            let mut data = Vec::new();
            data.extend_from_slice(&typ.to_be_bytes());
            data.extend_from_slice(&(body.len() as u16).to_be_bytes());
            data.extend_from_slice(&crate::MAGIC_COOKIE.to_be_bytes());
            data.extend_from_slice(&tid);
            data.extend_from_slice(&body);
            message(&data);
        }

        #[test]
        fn message_never_panics_on_mutated_valid_messages(
            attrs in arb_attrs(),
            mi in any::<bool>(),
            fp in any::<bool>(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut data = valid_message(&attrs, mi, fp);
            message(&data);
            let parsed = Message::parse(&data).is_ok();
            prop_assert!(parsed);
            for (i, x) in flips {
                let at = i.index(data.len());
                data[at] ^= x;
            }
            message(&data);
            let keep = cut.index(data.len() + 1);
            message(&data[..keep]);
        }

        #[test]
        fn channel_data_never_panics(data in prop::collection::vec(any::<u8>(), 0..128)) {
            channel_data(&data);
        }

        #[test]
        fn channel_data_shaped_never_panics(
            channel in 0x4000u16..0x8000,
            len in 0u16..80,
            data in prop::collection::vec(any::<u8>(), 0..80),
        ) {
            let mut b = Vec::new();
            b.extend_from_slice(&channel.to_be_bytes());
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&data);
            channel_data(&b);
        }

        #[test]
        fn stream_frames_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
            stream_frames(&data);
        }

        /// Valid STUN and ChannelData messages back to back, read in arbitrary
        /// pieces, come out as exactly the messages that went in.
        #[test]
        fn stream_frames_recover_every_message(
            chunk in any::<u8>(),
            msgs in prop::collection::vec(
                prop_oneof![
                    arb_attrs().prop_map(|a| valid_message(&a, false, true)),
                    (0x4000u16..0x8000, prop::collection::vec(any::<u8>(), 0..60)).prop_map(|(c, d)| {
                        let mut m = c.to_be_bytes().to_vec();
                        m.extend_from_slice(&(d.len() as u16).to_be_bytes());
                        m.extend_from_slice(&d);
                        m.resize(framing::padded(m.len()), 0);
                        m
                    }),
                ],
                0..8,
            ),
        ) {
            let mut stream = vec![chunk];
            for m in &msgs {
                stream.extend_from_slice(m);
            }
            stream_frames(&stream);
            let mut at = 1;
            for m in &msgs {
                prop_assert_eq!(framing::frame_len(&stream[at..], 8192), Ok(framing::Frame::Complete(m.len())));
                if m[0] < 0x40 {
                    prop_assert!(Message::parse(&stream[at..at + m.len()]).is_ok());
                } else {
                    prop_assert!(ChannelData::parse(&stream[at..at + m.len()]).is_ok());
                }
                at += m.len();
            }
        }

        #[test]
        fn attributes_never_panic(data in prop::collection::vec(any::<u8>(), 0..200)) {
            attributes(&data);
        }

        /// Every typed decoder on arbitrary bytes, every type on the same input.
        #[test]
        fn every_typed_decoder_never_panics(
            value in prop::collection::vec(any::<u8>(), 0..64),
            tid in any::<[u8; 12]>(),
        ) {
            for (i, _) in TYPES.iter().enumerate() {
                let mut d = vec![i as u8];
                d.extend_from_slice(&tid);
                d.extend_from_slice(&value);
                attributes(&d);
            }
            // Short, exactly-sized inputs hit the accepting paths far more often.
            for len in [1usize, 4, 8, 20] {
                let v = &value[..len.min(value.len())];
                decode_by_type(attr::XOR_MAPPED_ADDRESS, v, &TransactionId(tid));
                round_trip(attr::XOR_PEER_ADDRESS, v, &TransactionId(tid));
            }
        }
    }

    #[test]
    fn targets_accept_known_good_inputs() {
        let good = valid_message(&[(attr::USERNAME, b"u".to_vec())], true, true);
        message(&good);
        channel_data(&[0x40, 0x01, 0x00, 0x01, 0xAA, 0, 0, 0]);
        let mut a = vec![0u8]; // XOR-MAPPED-ADDRESS
        a.extend_from_slice(&[9; 12]);
        a.extend_from_slice(&[0, 1, 0x12, 0x34, 1, 2, 3, 4]);
        attributes(&a);
        assert_eq!(TYPES.first(), Some(&attr::XOR_MAPPED_ADDRESS));
    }
}
