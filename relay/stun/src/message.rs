//! The STUN message parse view (RFC 8489 §5, §14.5–§14.7): framing
//! validation, the attribute iterator, and MESSAGE-INTEGRITY /
//! MESSAGE-INTEGRITY-SHA256 / FINGERPRINT checks. Borrows the packet and
//! never copies or allocates; typed attribute values live in
//! `crate::attributes`, encoding in `crate::writer`.

use core::iter::FusedIterator;

use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use crate::attr;
use crate::error::{IntegrityError, ParseError};
use crate::header::{split_message_type, Class, Method, TransactionId, HEADER_LEN, MAGIC_COOKIE};

/// The value FINGERPRINT's CRC-32 is XORed with (RFC 8489 §14.7).
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// One attribute as it appears on the wire: its type and its value without
/// padding, borrowed from the packet.
#[derive(Clone, Copy, Debug)]
pub struct RawAttribute<'a> {
    /// Attribute type code (see [`crate::attr`]).
    pub typ: u16,
    /// The value, `length` bytes, padding excluded.
    pub value: &'a [u8],
}

/// Which message-integrity attribute a message carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum IntegrityKind {
    /// MESSAGE-INTEGRITY (HMAC-SHA1).
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256).
    Sha256,
}

/// A parsed, framing-validated STUN message borrowed from the packet.
///
/// [`Message::parse`] checks: top two bits zero, magic cookie, length ==
/// `buf.len() - 20` and a multiple of 4, attributes' TLV framing (with
/// padding) exactly fills the body, FINGERPRINT (if present) is last and its
/// CRC is correct. Attributes after MESSAGE-INTEGRITY other than
/// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, and attributes after
/// MESSAGE-INTEGRITY-SHA256 other than FINGERPRINT, are ignored per RFC 8489
/// §14.5–§14.6: [`Message::attributes`] does not yield them.
#[derive(Clone, Copy)]
pub struct Message<'a> {
    raw: &'a [u8],
    fingerprint: bool,
    /// Offset of the (non-ignored) MESSAGE-INTEGRITY TLV in `raw`.
    mi: Option<usize>,
    /// Offset of the (non-ignored) MESSAGE-INTEGRITY-SHA256 TLV in `raw`.
    mi256: Option<usize>,
}

impl<'a> Message<'a> {
    /// Parse and validate the framing of one STUN message that fills `buf`.
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let (hdr, body) = buf
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(ParseError::TooShort)?;
        if hdr[0] & 0xC0 != 0 {
            return Err(ParseError::NotStun);
        }
        if u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) != MAGIC_COOKIE {
            return Err(ParseError::BadMagicCookie);
        }
        let len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
        if len % 4 != 0 {
            return Err(ParseError::BadLengthAlignment);
        }
        if len != body.len() {
            return Err(ParseError::LengthMismatch);
        }

        let mut fingerprint = false;
        let mut walk = Tlvs {
            raw: buf,
            pos: HEADER_LEN,
        };
        while walk.pos < buf.len() {
            let (start, a) = walk.next_tlv().ok_or(ParseError::TruncatedAttribute)?;
            if a.typ == attr::FINGERPRINT {
                if a.value.len() != 4 {
                    return Err(ParseError::BadAttribute(attr::FINGERPRINT));
                }
                if walk.pos != buf.len() {
                    return Err(ParseError::AttributeAfterFingerprint);
                }
                let got = crate::attributes::decode_u32(a.value)?;
                let covered = buf.get(..start).ok_or(ParseError::TruncatedAttribute)?;
                if fingerprint_of(covered) != got {
                    return Err(ParseError::BadFingerprint);
                }
                fingerprint = true;
            }
        }

        let mut mi = None;
        let mut mi256 = None;
        let mut it = Attributes::new(buf);
        while let Some((start, a)) = it.next_with_offset() {
            match a.typ {
                attr::MESSAGE_INTEGRITY => mi = Some(start),
                attr::MESSAGE_INTEGRITY_SHA256 => mi256 = Some(start),
                _ => {}
            }
        }
        Ok(Message {
            raw: buf,
            fingerprint,
            mi,
            mi256,
        })
    }

    /// The whole message as received.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The message type's raw 16-bit value.
    pub fn message_type(&self) -> u16 {
        match self.raw.first_chunk::<2>() {
            Some(t) => u16::from_be_bytes(*t),
            None => 0,
        }
    }

    /// The method.
    pub fn method(&self) -> Method {
        split_message_type(self.message_type()).0
    }

    /// The class.
    pub fn class(&self) -> Class {
        split_message_type(self.message_type()).1
    }

    /// The transaction id.
    pub fn transaction_id(&self) -> TransactionId {
        let mut tid = [0; 12];
        if let Some(t) = self.raw.get(8..HEADER_LEN) {
            tid.copy_from_slice(t);
        }
        TransactionId(tid)
    }

    /// The attributes in wire order, without those RFC 8489 §14.5–§14.6 says
    /// to ignore (anything after the integrity attributes but FINGERPRINT).
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes::new(self.raw)
    }

    /// The first (non-ignored) attribute of type `typ`.
    pub fn get(&self, typ: u16) -> Option<RawAttribute<'a>> {
        self.attributes().find(|a| a.typ == typ)
    }

    /// Whether the message ends with a (validated) FINGERPRINT.
    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint
    }

    /// Collect the comprehension-required attribute types (< 0x8000) for
    /// which `known(t)` is false, each once, into `out`; at most `out.len()`
    /// of them. Returns how many were written. A non-zero return means the
    /// request must be rejected with 420 and UNKNOWN-ATTRIBUTES.
    pub fn unknown_required(&self, known: impl Fn(u16) -> bool, out: &mut [u16]) -> usize {
        let mut n = 0;
        for a in self.attributes() {
            if !attr::is_comprehension_required(a.typ) || known(a.typ) {
                continue;
            }
            let seen = out.get(..n).is_some_and(|s| s.contains(&a.typ));
            if seen {
                continue;
            }
            match out.get_mut(n) {
                Some(slot) => {
                    *slot = a.typ;
                    n += 1;
                }
                None => break,
            }
        }
        n
    }

    /// Verify MESSAGE-INTEGRITY (HMAC-SHA1, 20 bytes) with `key` (RFC 8489
    /// §14.5): the HMAC covers the message up to the attribute, with the
    /// header length field set as if the attribute ended the message.
    pub fn verify_integrity(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let start = self.mi.ok_or(IntegrityError::Missing)?;
        let (covered, value) = self.integrity_parts(start)?;
        if value.len() != 20 {
            return Err(IntegrityError::BadLength);
        }
        let mut mac = hmac_sha1(key);
        feed_adjusted(&mut mac, covered, value.len())?;
        mac.verify_slice(value)
            .map_err(|_| IntegrityError::Mismatch)
    }

    /// Verify MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256 truncated to 16..=32
    /// bytes, a multiple of 4) with `key` (RFC 8489 §14.6).
    pub fn verify_integrity_sha256(&self, key: &[u8]) -> Result<(), IntegrityError> {
        let start = self.mi256.ok_or(IntegrityError::Missing)?;
        let (covered, value) = self.integrity_parts(start)?;
        if !(16..=32).contains(&value.len()) || value.len() % 4 != 0 {
            return Err(IntegrityError::BadLength);
        }
        let mut mac = hmac_sha256(key);
        feed_adjusted(&mut mac, covered, value.len())?;
        mac.verify_truncated_left(value)
            .map_err(|_| IntegrityError::Mismatch)
    }

    /// Which integrity attribute is present (SHA-256 preferred when both are).
    pub fn integrity_kind(&self) -> Option<IntegrityKind> {
        if self.mi256.is_some() {
            Some(IntegrityKind::Sha256)
        } else if self.mi.is_some() {
            Some(IntegrityKind::Sha1)
        } else {
            None
        }
    }

    /// The bytes before the integrity TLV at `start` and that TLV's value.
    fn integrity_parts(&self, start: usize) -> Result<(&'a [u8], &'a [u8]), IntegrityError> {
        let covered = self.raw.get(..start).ok_or(IntegrityError::Missing)?;
        let mut t = Tlvs {
            raw: self.raw,
            pos: start,
        };
        let (_, a) = t.next_tlv().ok_or(IntegrityError::Missing)?;
        Ok((covered, a.value))
    }
}

impl core::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Message")
            .field("method", &self.method())
            .field("class", &self.class())
            .field("transaction_id", &self.transaction_id())
            .field("len", &self.raw.len())
            .finish()
    }
}

/// Iterator over a message's attributes; see [`Message::attributes`].
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    tlvs: Tlvs<'a>,
    seen_mi: bool,
    seen_mi256: bool,
}

impl<'a> Attributes<'a> {
    fn new(raw: &'a [u8]) -> Self {
        Attributes {
            tlvs: Tlvs {
                raw,
                pos: HEADER_LEN,
            },
            seen_mi: false,
            seen_mi256: false,
        }
    }

    fn next_with_offset(&mut self) -> Option<(usize, RawAttribute<'a>)> {
        loop {
            let (start, a) = self.tlvs.next_tlv()?;
            if self.seen_mi256 {
                if a.typ != attr::FINGERPRINT {
                    continue;
                }
            } else if self.seen_mi
                && a.typ != attr::MESSAGE_INTEGRITY_SHA256
                && a.typ != attr::FINGERPRINT
            {
                continue;
            }
            match a.typ {
                attr::MESSAGE_INTEGRITY => self.seen_mi = true,
                attr::MESSAGE_INTEGRITY_SHA256 => self.seen_mi256 = true,
                _ => {}
            }
            return Some((start, a));
        }
    }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = RawAttribute<'a>;

    fn next(&mut self) -> Option<RawAttribute<'a>> {
        self.next_with_offset().map(|(_, a)| a)
    }
}

impl FusedIterator for Attributes<'_> {}

/// CRC-32 of `covered` XOR 0x5354554e (RFC 8489 §14.7). `covered` must
/// already carry the header length that includes the FINGERPRINT TLV.
pub(crate) fn fingerprint_of(covered: &[u8]) -> u32 {
    crc32fast::hash(covered) ^ FINGERPRINT_XOR
}

/// HMAC-SHA1 keyed with `key`.
pub(crate) fn hmac_sha1(key: &[u8]) -> Hmac<Sha1> {
    // INVARIANT: HMAC accepts keys of any length (longer ones are hashed), so
    // `new_from_slice` cannot fail.
    <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC takes any key length")
}

/// HMAC-SHA256 keyed with `key`.
pub(crate) fn hmac_sha256(key: &[u8]) -> Hmac<Sha256> {
    // INVARIANT: as for `hmac_sha1`.
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length")
}

/// Feed `covered` (header and the attributes before an integrity TLV) into
/// `mac`, with the header's length field replaced by the length the message
/// would have if it ended right after that TLV of `value_len` bytes.
pub(crate) fn feed_adjusted<M: Mac>(
    mac: &mut M,
    covered: &[u8],
    value_len: usize,
) -> Result<(), IntegrityError> {
    let (hdr, rest) = covered
        .split_first_chunk::<4>()
        .ok_or(IntegrityError::Missing)?;
    let len = covered
        .len()
        .checked_add(4 + value_len)
        .and_then(|l| l.checked_sub(HEADER_LEN))
        .and_then(|l| u16::try_from(l).ok())
        .ok_or(IntegrityError::BadLength)?;
    mac.update(&hdr[..2]);
    mac.update(&len.to_be_bytes());
    mac.update(rest);
    Ok(())
}

/// Raw TLV walker over a whole message (header included in `raw`).
#[derive(Clone, Debug)]
struct Tlvs<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> Tlvs<'a> {
    /// The next TLV and its offset; `None` at the end or on broken framing
    /// (which `Message::parse` has already ruled out).
    fn next_tlv(&mut self) -> Option<(usize, RawAttribute<'a>)> {
        let rest = self.raw.get(self.pos..)?;
        let (h, tail) = rest.split_first_chunk::<4>()?;
        let typ = u16::from_be_bytes([h[0], h[1]]);
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let padded = crate::attributes::padded_len(len);
        if tail.len() < padded {
            return None;
        }
        let value = tail.get(..len)?;
        let start = self.pos;
        self.pos = start.checked_add(4 + padded)?;
        Some((start, RawAttribute { typ, value }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::MessageWriter;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5769 §2.1.
    fn sample_request() -> Vec<u8> {
        hex("00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
             00 24 00 04 6e 00 01 ff
             80 29 00 08 93 2f f9 b1 51 26 3b 36
             00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
             00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
             80 28 00 04 e5 7a 3b cf")
    }

    /// RFC 5769 §2.2.
    fn sample_ipv4_response() -> Vec<u8> {
        hex("01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
             00 20 00 08 00 01 a1 47 e1 12 a6 43
             00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
             80 28 00 04 c0 7d 4c 96")
    }

    /// RFC 5769 §2.3.
    fn sample_ipv6_response() -> Vec<u8> {
        hex("01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
             80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
             00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
             00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
             80 28 00 04 c8 fb 0b 4c")
    }

    /// RFC 5769 §2.4.
    fn sample_long_term_request() -> Vec<u8> {
        hex("00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
             00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
             00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
             00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
             00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66")
    }

    /// RFC 8489 Appendix B.1 as corrected by erratum 6268.
    fn sample_sha256_request() -> Vec<u8> {
        hex("00 01 00 90 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
             00 1e 00 20 4a 3c f3 8f ef 69 92 bd a9 52 c6 78 04 17 da 0f
                         24 81 94 15 56 9e 60 b2 05 c4 6e 41 40 7f 17 04
             00 15 00 29 6f 62 4d 61 74 4a 6f 73 32 41 41 41 43 66 2f 2f
                         34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39
                         46 53 54 76 79 36 34 73 41 00 00 00
             00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
             00 1d 00 04 00 02 00 00
             00 1c 00 20 b5 c7 bf 00 5b 6c 52 a2 1c 51 c5 e8 92 f8 19 24
                         13 62 96 cb 92 7c 43 14 93 09 27 8c c6 51 8e 65")
    }

    const SHORT_TERM_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";
    const MATRIX_USER: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";

    #[test]
    fn rfc5769_sample_request() {
        let b = sample_request();
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.method(), Method::BINDING);
        assert_eq!(m.class(), Class::Request);
        assert!(m.has_fingerprint());
        assert_eq!(m.integrity_kind(), Some(IntegrityKind::Sha1));
        m.verify_integrity(SHORT_TERM_PASSWORD).unwrap();
        assert_eq!(m.verify_integrity(b"wrong"), Err(IntegrityError::Mismatch));
        assert_eq!(
            m.verify_integrity_sha256(SHORT_TERM_PASSWORD),
            Err(IntegrityError::Missing)
        );
        let user = m.get(attr::USERNAME).unwrap();
        assert_eq!(crate::decode_utf8(user.value, 508).unwrap(), "evtj:h6vY");
        let sw = m.get(attr::SOFTWARE).unwrap();
        assert_eq!(
            crate::decode_utf8(sw.value, 763).unwrap(),
            "STUN test client"
        );
        let prio = m.get(attr::PRIORITY).unwrap();
        assert_eq!(crate::decode_u32(prio.value).unwrap(), 0x6e00_01ff);
        let types: Vec<u16> = m.attributes().map(|a| a.typ).collect();
        assert_eq!(
            types,
            [
                attr::SOFTWARE,
                attr::PRIORITY,
                attr::ICE_CONTROLLED,
                attr::USERNAME,
                attr::MESSAGE_INTEGRITY,
                attr::FINGERPRINT
            ]
        );
    }

    #[test]
    fn rfc5769_ipv4_response() {
        let b = sample_ipv4_response();
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.class(), Class::Success);
        m.verify_integrity(SHORT_TERM_PASSWORD).unwrap();
        let a = m.get(attr::XOR_MAPPED_ADDRESS).unwrap();
        let addr = crate::decode_xor_address(a.value, &m.transaction_id()).unwrap();
        assert_eq!(addr, "192.0.2.1:32853".parse().unwrap());
        let sw = m.get(attr::SOFTWARE).unwrap();
        assert_eq!(crate::decode_utf8(sw.value, 763).unwrap(), "test vector");
    }

    #[test]
    fn rfc5769_ipv6_response() {
        let b = sample_ipv6_response();
        let m = Message::parse(&b).unwrap();
        m.verify_integrity(SHORT_TERM_PASSWORD).unwrap();
        let a = m.get(attr::XOR_MAPPED_ADDRESS).unwrap();
        let addr = crate::decode_xor_address(a.value, &m.transaction_id()).unwrap();
        assert_eq!(
            addr,
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap()
        );
    }

    #[test]
    fn rfc5769_long_term_request() {
        let b = sample_long_term_request();
        let m = Message::parse(&b).unwrap();
        assert!(!m.has_fingerprint());
        let user = m.get(attr::USERNAME).unwrap();
        assert_eq!(crate::decode_utf8(user.value, 508).unwrap(), MATRIX_USER);
        let realm = m.get(attr::REALM).unwrap();
        assert_eq!(crate::decode_utf8(realm.value, 763).unwrap(), "example.org");
        let nonce = m.get(attr::NONCE).unwrap();
        assert_eq!(
            crate::decode_utf8(nonce.value, 763).unwrap(),
            "f//499k954d6OL34oL9FSTvy64sA"
        );
        // "TheMatr\u{00AD}IX" after SASLprep.
        let key = crate::long_term_key_md5(MATRIX_USER, "example.org", "TheMatrIX");
        m.verify_integrity(&key).unwrap();
        let wrong = crate::long_term_key_md5(MATRIX_USER, "example.org", "TheMatrix");
        assert_eq!(m.verify_integrity(&wrong), Err(IntegrityError::Mismatch));
    }

    #[test]
    fn rfc8489_b1_sha256_request() {
        let b = sample_sha256_request();
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.integrity_kind(), Some(IntegrityKind::Sha256));
        let key = crate::long_term_key_sha256(MATRIX_USER, "example.org", "TheMatrIX");
        m.verify_integrity_sha256(&key).unwrap();
        assert_eq!(m.verify_integrity(&key), Err(IntegrityError::Missing));
        let uh = m.get(attr::USERHASH).unwrap();
        assert_eq!(uh.value, crate::userhash(MATRIX_USER, "example.org"));
        let pa = m.get(attr::PASSWORD_ALGORITHM).unwrap();
        assert_eq!(
            crate::decode_password_algorithm(pa.value).unwrap(),
            crate::PasswordAlgorithm::Sha256
        );
    }

    #[test]
    fn framing_errors() {
        let good = sample_request();
        assert_eq!(
            Message::parse(&good[..19]).unwrap_err(),
            ParseError::TooShort
        );
        let mut b = good.clone();
        b[0] |= 0x80;
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::NotStun);
        let mut b = good.clone();
        b[4] = 0;
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::BadMagicCookie);
        let mut b = good.clone();
        b[3] = 0x59;
        assert_eq!(
            Message::parse(&b).unwrap_err(),
            ParseError::BadLengthAlignment
        );
        assert_eq!(
            Message::parse(&good[..good.len() - 4]).unwrap_err(),
            ParseError::LengthMismatch
        );
        let mut b = good.clone();
        b.extend_from_slice(&[0; 4]);
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::LengthMismatch);
        let mut b = good.clone();
        b[40] ^= 1; // inside a value: CRC catches it
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::BadFingerprint);
        let mut b = good.clone();
        b[good.len() - 1] ^= 1;
        assert_eq!(Message::parse(&b).unwrap_err(), ParseError::BadFingerprint);
    }

    #[test]
    fn truncated_attribute() {
        // Header + one TLV announcing 8 bytes with only 4 present.
        let mut b = vec![0, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42];
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&[0x00, 0x06, 0x00, 0x08, 1, 2, 3, 4]);
        assert_eq!(
            Message::parse(&b).unwrap_err(),
            ParseError::TruncatedAttribute
        );
        // The padding of the last attribute must be present too.
        let mut b = vec![0, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42];
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&[0x00, 0x06, 0x00, 0x05, 1, 2, 3, 4]);
        assert_eq!(
            Message::parse(&b).unwrap_err(),
            ParseError::TruncatedAttribute
        );
    }

    #[test]
    fn fingerprint_must_be_last_and_four_bytes() {
        let tid = TransactionId([7; 12]);
        let mut buf = [0u8; 128];
        let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid).unwrap();
        w.add_fingerprint().unwrap();
        w.add_raw(attr::SOFTWARE, b"x").unwrap();
        let n = w.finish();
        assert_eq!(
            Message::parse(&buf[..n]).unwrap_err(),
            ParseError::AttributeAfterFingerprint
        );

        let mut buf = [0u8; 128];
        let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid).unwrap();
        w.add_raw(attr::FINGERPRINT, &[0; 8]).unwrap();
        let n = w.finish();
        assert_eq!(
            Message::parse(&buf[..n]).unwrap_err(),
            ParseError::BadAttribute(attr::FINGERPRINT)
        );
    }

    #[test]
    fn attributes_after_integrity_are_ignored() {
        let tid = TransactionId([1; 12]);
        let mut buf = [0u8; 512];
        let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid).unwrap();
        w.add_raw(attr::USERNAME, b"alice").unwrap();
        w.add_message_integrity(b"k1").unwrap();
        w.add_raw(attr::SOFTWARE, b"ignored").unwrap();
        w.add_message_integrity_sha256(b"k2").unwrap();
        w.add_raw(attr::REALM, b"ignored too").unwrap();
        w.add_message_integrity(b"k3").unwrap();
        w.add_fingerprint().unwrap();
        let n = w.finish();
        let m = Message::parse(&buf[..n]).unwrap();
        let types: Vec<u16> = m.attributes().map(|a| a.typ).collect();
        assert_eq!(
            types,
            [
                attr::USERNAME,
                attr::MESSAGE_INTEGRITY,
                attr::MESSAGE_INTEGRITY_SHA256,
                attr::FINGERPRINT
            ]
        );
        assert!(m.get(attr::SOFTWARE).is_none());
        assert!(m.get(attr::REALM).is_none());
        assert_eq!(m.integrity_kind(), Some(IntegrityKind::Sha256));
        // Both verify although other attributes and FINGERPRINT follow them.
        m.verify_integrity(b"k1").unwrap();
        m.verify_integrity_sha256(b"k2").unwrap();
        assert_eq!(m.verify_integrity(b"k3"), Err(IntegrityError::Mismatch));
        assert_eq!(
            m.verify_integrity_sha256(b"k1"),
            Err(IntegrityError::Mismatch)
        );
    }

    #[test]
    fn integrity_detects_tampering_before_it_only() {
        let tid = TransactionId([9; 12]);
        let mut buf = [0u8; 256];
        let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, tid).unwrap();
        w.add_raw(attr::USERNAME, b"bob").unwrap();
        w.add_message_integrity(b"key").unwrap();
        let n = w.finish();
        Message::parse(&buf[..n])
            .unwrap()
            .verify_integrity(b"key")
            .unwrap();
        let mut t = buf;
        t[25] ^= 0x20; // inside USERNAME
        let m = Message::parse(&t[..n]).unwrap();
        assert_eq!(m.verify_integrity(b"key"), Err(IntegrityError::Mismatch));
        let mut t = buf;
        t[9] ^= 1; // transaction id
        let m = Message::parse(&t[..n]).unwrap();
        assert_eq!(m.verify_integrity(b"key"), Err(IntegrityError::Mismatch));
    }

    #[test]
    fn integrity_bad_lengths() {
        let tid = TransactionId([2; 12]);
        let mut buf = [0u8; 128];
        let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid).unwrap();
        w.add_raw(attr::MESSAGE_INTEGRITY, &[0; 16]).unwrap();
        w.add_raw(attr::MESSAGE_INTEGRITY_SHA256, &[0; 12]).unwrap();
        let n = w.finish();
        let m = Message::parse(&buf[..n]).unwrap();
        assert_eq!(m.verify_integrity(b"k"), Err(IntegrityError::BadLength));
        assert_eq!(
            m.verify_integrity_sha256(b"k"),
            Err(IntegrityError::BadLength)
        );
    }

    #[test]
    fn truncated_sha256_integrity_verifies() {
        // A 16-byte MESSAGE-INTEGRITY-SHA256 holds the leftmost 16 HMAC bytes.
        let tid = TransactionId([3; 12]);
        let mut full = [0u8; 128];
        let mut w = MessageWriter::new(&mut full, Method::BINDING, Class::Request, tid).unwrap();
        w.add_raw(attr::USERNAME, b"carol").unwrap();
        w.add_message_integrity_sha256(b"key").unwrap();
        let n_full = w.finish();
        let mac = &full[n_full - 32..n_full];

        let mut buf = [0u8; 128];
        let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid).unwrap();
        w.add_raw(attr::USERNAME, b"carol").unwrap();
        let n = w.finish();
        // Compute over a header whose length ends at a 16-byte attribute.
        let mut mac16 = hmac_sha256(b"key");
        feed_adjusted(&mut mac16, &buf[..n], 16).unwrap();
        let tag = mac16.finalize().into_bytes();
        let mut w = MessageWriter::new(&mut buf, Method::BINDING, Class::Request, tid).unwrap();
        w.add_raw(attr::USERNAME, b"carol").unwrap();
        w.add_raw(attr::MESSAGE_INTEGRITY_SHA256, &tag[..16])
            .unwrap();
        let n = w.finish();
        let m = Message::parse(&buf[..n]).unwrap();
        m.verify_integrity_sha256(b"key").unwrap();
        // Different covered length means a different MAC than the 32-byte one.
        assert_ne!(&tag[..16], &mac[..16]);
    }

    #[test]
    fn unknown_required_collects_each_once() {
        let tid = TransactionId([4; 12]);
        let mut buf = [0u8; 256];
        let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Request, tid).unwrap();
        w.add_raw(0x7001, b"").unwrap();
        w.add_raw(attr::USERNAME, b"u").unwrap();
        w.add_raw(0x7002, b"a").unwrap();
        w.add_raw(0x7001, b"").unwrap();
        w.add_raw(0x9001, b"optional").unwrap();
        w.add_raw(0x7003, b"").unwrap();
        let n = w.finish();
        let m = Message::parse(&buf[..n]).unwrap();
        let known = |t: u16| t == attr::USERNAME;
        let mut out = [0u16; 8];
        let k = m.unknown_required(known, &mut out);
        assert_eq!(&out[..k], &[0x7001, 0x7002, 0x7003]);
        let mut small = [0u16; 2];
        assert_eq!(m.unknown_required(known, &mut small), 2);
        assert_eq!(small, [0x7001, 0x7002]);
        assert_eq!(m.unknown_required(known, &mut []), 0);
        assert_eq!(m.unknown_required(|_| true, &mut out), 0);
    }

    #[test]
    fn header_accessors() {
        let b = sample_long_term_request();
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.raw(), &b[..]);
        assert_eq!(m.message_type(), 0x0001);
        assert_eq!(
            m.transaction_id(),
            TransactionId([0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41, 0x2e])
        );
        assert!(format!("{m:?}").contains("BINDING") || format!("{m:?}").contains("Method(1)"));
    }

    #[test]
    fn empty_body_parses() {
        let mut b = vec![0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        b.extend_from_slice(&[5; 12]);
        let m = Message::parse(&b).unwrap();
        assert_eq!(m.attributes().count(), 0);
        assert_eq!(m.integrity_kind(), None);
        assert_eq!(m.verify_integrity(b"k"), Err(IntegrityError::Missing));
        assert!(!m.has_fingerprint());
    }
}
