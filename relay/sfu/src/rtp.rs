//! Zero-copy RTP packet view (RFC 3550 §5.1) with header extensions (RFC 8285
//! one-byte and two-byte forms), and in-place header rewrites.
//!
//! Owns: reading and rewriting the fixed header, CSRC list, extension block
//! and padding of one RTP packet in a caller's buffer. Must not touch: the
//! payload's meaning (see [`crate::codec`]), SRTP, sockets, time. Nothing
//! here allocates.

use crate::types::{PayloadType, SeqNo, Ssrc};

/// Length of the fixed RTP header.
pub const FIXED_HEADER_LEN: usize = 12;
/// Extension profile of the RFC 8285 one-byte form.
pub const PROFILE_ONE_BYTE: u16 = 0xBEDE;
/// Extension profile of the RFC 8285 two-byte form (low 4 bits are app bits).
pub const PROFILE_TWO_BYTE: u16 = 0x1000;
const PROFILE_TWO_BYTE_MASK: u16 = 0xFFF0;

/// Why a buffer is not an RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    /// Shorter than the fixed 12-byte header.
    #[error("RTP packet of {0} bytes is shorter than the 12-byte fixed header")]
    TooShort(usize),
    /// The version field is not 2.
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    /// The CSRC list runs past the end of the packet.
    #[error("RTP CSRC list of {0} entries runs past the end of the packet")]
    CsrcOverrun(u8),
    /// The extension header or its body runs past the end of the packet.
    #[error("RTP header extension runs past the end of the packet")]
    ExtensionOverrun,
    /// An RFC 8285 element inside the extension block runs past the block.
    #[error("RTP header extension element runs past the extension block")]
    BadExtensionElement,
    /// The padding count is zero or larger than the payload.
    #[error("RTP padding count {0} is zero or exceeds the payload")]
    BadPadding(u8),
}

/// A parsed, validated view of an RTP packet in a borrowed buffer.
///
/// Parsing checks the whole layout once (CSRCs, extension block, every
/// RFC 8285 element, padding), so every accessor is infallible.
#[derive(Clone, Copy, Debug)]
pub struct RtpPacket<'a> {
    buf: &'a [u8],
    /// Offset of the extension block's body (after its 4-byte header), if any.
    ext_body: Option<(u16, usize, usize)>,
    payload_start: usize,
    payload_end: usize,
}

impl<'a> RtpPacket<'a> {
    /// Parse and validate `buf` as one RTP packet.
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        if buf.len() < FIXED_HEADER_LEN {
            return Err(RtpError::TooShort(buf.len()));
        }
        let version = buf[0] >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        let cc = buf[0] & 0x0F;
        let mut at = FIXED_HEADER_LEN + 4 * usize::from(cc);
        if at > buf.len() {
            return Err(RtpError::CsrcOverrun(cc));
        }
        let mut ext_body = None;
        if buf[0] & 0x10 != 0 {
            if at + 4 > buf.len() {
                return Err(RtpError::ExtensionOverrun);
            }
            let profile = u16::from_be_bytes([buf[at], buf[at + 1]]);
            let words = usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
            let start = at + 4;
            let end = start + 4 * words;
            if end > buf.len() {
                return Err(RtpError::ExtensionOverrun);
            }
            validate_elements(profile, &buf[start..end])?;
            ext_body = Some((profile, start, end));
            at = end;
        }
        let mut payload_end = buf.len();
        if buf[0] & 0x20 != 0 {
            let pad = buf[buf.len() - 1];
            if pad == 0 || usize::from(pad) > buf.len() - at {
                return Err(RtpError::BadPadding(pad));
            }
            payload_end -= usize::from(pad);
        }
        Ok(Self {
            buf,
            ext_body,
            payload_start: at,
            payload_end,
        })
    }

    /// The whole packet.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Version field (always 2 after parsing).
    pub fn version(&self) -> u8 {
        self.buf[0] >> 6
    }

    /// The P bit.
    pub fn has_padding(&self) -> bool {
        self.buf[0] & 0x20 != 0
    }

    /// The X bit.
    pub fn has_extension(&self) -> bool {
        self.buf[0] & 0x10 != 0
    }

    /// The M bit.
    pub fn marker(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }

    /// The payload type (7 bits).
    pub fn payload_type(&self) -> PayloadType {
        PayloadType::masked(self.buf[1])
    }

    /// The sequence number.
    pub fn seq(&self) -> SeqNo {
        SeqNo::new(u16::from_be_bytes([self.buf[2], self.buf[3]]))
    }

    /// The RTP timestamp.
    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]])
    }

    /// The SSRC.
    pub fn ssrc(&self) -> Ssrc {
        Ssrc::new(u32::from_be_bytes([
            self.buf[8],
            self.buf[9],
            self.buf[10],
            self.buf[11],
        ]))
    }

    /// Number of CSRCs (CC field).
    pub fn csrc_count(&self) -> usize {
        usize::from(self.buf[0] & 0x0F)
    }

    /// The CSRC list.
    pub fn csrcs(&self) -> impl Iterator<Item = Ssrc> + 'a {
        let n = self.csrc_count();
        self.buf[FIXED_HEADER_LEN..FIXED_HEADER_LEN + 4 * n]
            .chunks_exact(4)
            .map(|c| Ssrc::new(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
    }

    /// The extension block's profile ("defined by profile" field), if any.
    pub fn extension_profile(&self) -> Option<u16> {
        self.ext_body.map(|(p, _, _)| p)
    }

    /// The raw body of the extension block (after its 4-byte header).
    pub fn extension_body(&self) -> Option<&'a [u8]> {
        self.ext_body.map(|(_, s, e)| &self.buf[s..e])
    }

    /// The RFC 8285 elements of the extension block. Empty when there is no
    /// block or its profile is neither the one-byte nor the two-byte form.
    pub fn extensions(&self) -> Extensions<'a> {
        match self.ext_body {
            Some((profile, s, e)) => Extensions::new(profile, &self.buf[s..e]),
            None => Extensions::empty(),
        }
    }

    /// The value of the RFC 8285 element with this id, if present.
    pub fn extension(&self, id: u8) -> Option<&'a [u8]> {
        if id == 0 {
            return None;
        }
        self.extensions().find(|e| e.id == id).map(|e| e.value)
    }

    /// Offset of the payload in the packet (= total header length).
    pub fn header_len(&self) -> usize {
        self.payload_start
    }

    /// The payload, without padding.
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.payload_start..self.payload_end]
    }

    /// Number of padding bytes at the end (0 without the P bit).
    pub fn padding_len(&self) -> usize {
        self.buf.len() - self.payload_end
    }
}

/// One RFC 8285 header extension element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extension<'a> {
    /// Element id: 1..=14 in the one-byte form, 1..=255 in the two-byte form.
    pub id: u8,
    /// Element value.
    pub value: &'a [u8],
}

/// Iterator over the RFC 8285 elements of an extension block (validated at
/// parse time, so it never fails).
#[derive(Clone, Debug)]
pub struct Extensions<'a> {
    two_byte: bool,
    rest: &'a [u8],
}

impl<'a> Extensions<'a> {
    fn new(profile: u16, body: &'a [u8]) -> Self {
        if profile == PROFILE_ONE_BYTE {
            Self {
                two_byte: false,
                rest: body,
            }
        } else if profile & PROFILE_TWO_BYTE_MASK == PROFILE_TWO_BYTE {
            Self {
                two_byte: true,
                rest: body,
            }
        } else {
            Self::empty()
        }
    }

    fn empty() -> Self {
        Self {
            two_byte: false,
            rest: &[],
        }
    }
}

impl<'a> Iterator for Extensions<'a> {
    type Item = Extension<'a>;

    fn next(&mut self) -> Option<Extension<'a>> {
        loop {
            let (&first, tail) = self.rest.split_first()?;
            // Padding between elements: a zero byte (two-byte form), or any
            // byte with ID 0 in the one-byte form, whose length is ignored
            // (ID 0 is reserved for padding, RFC 8285 §4.2; as libwebrtc).
            if first == 0 || (!self.two_byte && first >> 4 == 0) {
                self.rest = tail;
                continue;
            }
            let (id, len, hdr) = if self.two_byte {
                let &len = tail.first()?;
                (first, usize::from(len), 2)
            } else {
                let id = first >> 4;
                if id == 15 {
                    // Reserved id: stop processing the block (RFC 8285 §4.2).
                    self.rest = &[];
                    return None;
                }
                (id, usize::from(first & 0x0F) + 1, 1)
            };
            let value = self.rest.get(hdr..hdr + len)?;
            self.rest = &self.rest[hdr + len..];
            return Some(Extension { id, value });
        }
    }
}

/// Check every element of a one- or two-byte extension block fits.
fn validate_elements(profile: u16, body: &[u8]) -> Result<(), RtpError> {
    let two_byte = if profile == PROFILE_ONE_BYTE {
        false
    } else if profile & PROFILE_TWO_BYTE_MASK == PROFILE_TWO_BYTE {
        true
    } else {
        return Ok(()); // Some other profile: opaque to us.
    };
    let mut at = 0;
    while at < body.len() {
        let first = body[at];
        if first == 0 || (!two_byte && first >> 4 == 0) {
            at += 1;
            continue;
        }
        let (hdr, len) = if two_byte {
            let len = *body.get(at + 1).ok_or(RtpError::BadExtensionElement)?;
            (2, usize::from(len))
        } else {
            if first >> 4 == 15 {
                return Ok(());
            }
            (1, usize::from(first & 0x0F) + 1)
        };
        at += hdr + len;
        if at > body.len() {
            return Err(RtpError::BadExtensionElement);
        }
    }
    Ok(())
}

/// In-place rewrites of an RTP header in a mutable buffer. Construction
/// checks only what the setters need (12 bytes, version 2); the setters touch
/// fixed-offset fields and never allocate or fail.
#[derive(Debug)]
pub struct RtpHeaderMut<'a> {
    buf: &'a mut [u8],
}

impl<'a> RtpHeaderMut<'a> {
    /// Wrap `buf` for rewriting its fixed header.
    pub fn new(buf: &'a mut [u8]) -> Result<Self, RtpError> {
        if buf.len() < FIXED_HEADER_LEN {
            return Err(RtpError::TooShort(buf.len()));
        }
        if buf[0] >> 6 != 2 {
            return Err(RtpError::BadVersion(buf[0] >> 6));
        }
        Ok(Self { buf })
    }

    /// Set the SSRC.
    pub fn set_ssrc(&mut self, ssrc: Ssrc) {
        self.buf[8..12].copy_from_slice(&ssrc.get().to_be_bytes());
    }

    /// Set the sequence number.
    pub fn set_seq(&mut self, seq: SeqNo) {
        self.buf[2..4].copy_from_slice(&seq.get().to_be_bytes());
    }

    /// Set the timestamp.
    pub fn set_timestamp(&mut self, ts: u32) {
        self.buf[4..8].copy_from_slice(&ts.to_be_bytes());
    }

    /// Set the payload type, keeping the marker bit.
    pub fn set_payload_type(&mut self, pt: PayloadType) {
        self.buf[1] = (self.buf[1] & 0x80) | pt.get();
    }

    /// Set or clear the marker bit.
    pub fn set_marker(&mut self, marker: bool) {
        self.buf[1] = (self.buf[1] & 0x7F) | if marker { 0x80 } else { 0 };
    }

    /// The buffer, for further in-place work.
    pub fn into_inner(self) -> &'a mut [u8] {
        self.buf
    }
}

/// Fuzz-style entry points shared by the proptests (and usable by a
/// cargo-fuzz target on nightly).
pub mod fuzz {
    use super::RtpPacket;

    /// Parse arbitrary bytes and touch every accessor; must never panic, and
    /// every element and the payload must lie inside the buffer.
    pub fn parse_any(data: &[u8]) {
        if let Ok(p) = RtpPacket::parse(data) {
            let _ = (p.version(), p.marker(), p.payload_type(), p.seq());
            let _ = (p.timestamp(), p.ssrc(), p.has_padding());
            assert_eq!(p.csrcs().count(), p.csrc_count());
            let mut total = 0usize;
            for e in p.extensions() {
                assert!(e.id != 0);
                total += e.value.len();
            }
            assert!(total <= p.extension_body().map_or(0, <[u8]>::len));
            assert!(p.header_len() + p.payload().len() + p.padding_len() == data.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(ext: Option<(u16, &[u8])>, csrcs: &[u32], payload: &[u8], pad: u8) -> Vec<u8> {
        let mut v = vec![0x80u8 | csrcs.len() as u8, 96, 0x12, 0x34];
        v.extend_from_slice(&0xDEAD_BEEFu32.to_be_bytes());
        v.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        for c in csrcs {
            v.extend_from_slice(&c.to_be_bytes());
        }
        if let Some((profile, body)) = ext {
            v[0] |= 0x10;
            assert_eq!(body.len() % 4, 0);
            v.extend_from_slice(&profile.to_be_bytes());
            v.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
            v.extend_from_slice(body);
        }
        v.extend_from_slice(payload);
        if pad > 0 {
            v[0] |= 0x20;
            v.extend(std::iter::repeat(0).take(pad as usize - 1));
            v.push(pad);
        }
        v
    }

    #[test]
    fn fixed_header_fields() {
        let buf = packet(None, &[7, 8], b"hello", 0);
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(p.version(), 2);
        assert_eq!(p.payload_type().get(), 96);
        assert_eq!(p.seq(), SeqNo::new(0x1234));
        assert_eq!(p.timestamp(), 0xDEAD_BEEF);
        assert_eq!(p.ssrc(), Ssrc::new(0x0102_0304));
        assert_eq!(p.csrcs().map(Ssrc::get).collect::<Vec<_>>(), vec![7, 8]);
        assert_eq!(p.payload(), b"hello");
        assert_eq!(p.header_len(), 20);
    }

    #[test]
    fn one_byte_extensions_with_padding_and_stop() {
        // id 1 len 2 ("ab"), padding 0, id 2 len 1 ("c"), id 15 stops.
        let body = [0x11, b'a', b'b', 0x00, 0x20, b'c', 0xF0, 0x00];
        let buf = packet(Some((PROFILE_ONE_BYTE, &body)), &[], b"x", 0);
        let p = RtpPacket::parse(&buf).unwrap();
        let all: Vec<_> = p.extensions().collect();
        assert_eq!(all.len(), 2);
        assert_eq!(p.extension(1), Some(&b"ab"[..]));
        assert_eq!(p.extension(2), Some(&b"c"[..]));
        assert_eq!(p.extension(3), None);
        assert_eq!(p.payload(), b"x");
    }

    #[test]
    fn one_byte_id_zero_is_padding_whatever_its_length() {
        // 0x05 has ID 0 and a length nibble: one byte of padding, not an element.
        let body = [0x05, 0x10, b'a', 0x00];
        let buf = packet(Some((PROFILE_ONE_BYTE, &body)), &[], b"x", 0);
        let p = RtpPacket::parse(&buf).unwrap();
        let all: Vec<_> = p.extensions().collect();
        assert_eq!(all, vec![Extension { id: 1, value: b"a" }]);
    }

    #[test]
    fn two_byte_extensions_allow_empty_and_long_values() {
        let body = [0x05, 0x00, 0x09, 0x03, b'r', b'i', b'd', 0x00];
        let buf = packet(Some((0x1003, &body)), &[], b"", 0);
        let p = RtpPacket::parse(&buf).unwrap();
        let all: Vec<_> = p.extensions().collect();
        assert_eq!(all[0], Extension { id: 5, value: b"" });
        assert_eq!(
            all[1],
            Extension {
                id: 9,
                value: b"rid"
            }
        );
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn rejects_bad_layouts() {
        assert_eq!(
            RtpPacket::parse(&[0x80; 11]).unwrap_err(),
            RtpError::TooShort(11)
        );
        let mut b = packet(None, &[], b"", 0);
        b[0] = 0x40;
        assert_eq!(RtpPacket::parse(&b).unwrap_err(), RtpError::BadVersion(1));
        let mut b = packet(None, &[], b"", 0);
        b[0] |= 0x03;
        assert_eq!(RtpPacket::parse(&b).unwrap_err(), RtpError::CsrcOverrun(3));
        let body = [0x13, b'a', b'b', 0];
        let b = packet(Some((PROFILE_ONE_BYTE, &body)), &[], b"", 0);
        assert_eq!(
            RtpPacket::parse(&b).unwrap_err(),
            RtpError::BadExtensionElement
        );
        let mut b = packet(Some((PROFILE_ONE_BYTE, &[0; 4])), &[], b"", 0);
        b[15] = 9; // extension length in words beyond the packet
        assert_eq!(
            RtpPacket::parse(&b).unwrap_err(),
            RtpError::ExtensionOverrun
        );
        let mut b = packet(None, &[], b"abc", 0);
        b[0] |= 0x20;
        assert_eq!(
            RtpPacket::parse(&b).unwrap_err(),
            RtpError::BadPadding(b'c')
        );
    }

    #[test]
    fn padding_is_trimmed() {
        let buf = packet(None, &[], b"data", 4);
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(p.payload(), b"data");
        assert_eq!(p.padding_len(), 4);
    }

    #[test]
    fn rewrites_in_place() {
        let mut buf = packet(None, &[], b"data", 0);
        buf[1] |= 0x80;
        let mut h = RtpHeaderMut::new(&mut buf).unwrap();
        h.set_ssrc(Ssrc::new(42));
        h.set_seq(SeqNo::new(7));
        h.set_timestamp(99);
        h.set_payload_type(PayloadType::new(100).unwrap());
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(
            (
                p.ssrc().get(),
                p.seq().get(),
                p.timestamp(),
                p.payload_type().get()
            ),
            (42, 7, 99, 100)
        );
        assert!(p.marker(), "payload type rewrite keeps the marker");
        let mut h = RtpHeaderMut::new(&mut buf).unwrap();
        h.set_marker(false);
        assert!(!RtpPacket::parse(&buf).unwrap().marker());
    }
}
