//! Source description (RFC 3550 §6.5) and goodbye (§6.6) packets.

use super::{be32, need, RawPacket, RtcpError};
use crate::types::Ssrc;

/// SDES item type of CNAME.
pub const SDES_CNAME: u8 = 1;

/// An SDES packet; its layout is fully checked at parse time.
#[derive(Clone, Copy, Debug)]
pub struct SourceDescription<'a> {
    raw: RawPacket<'a>,
}

impl<'a> SourceDescription<'a> {
    pub(super) fn parse(raw: RawPacket<'a>) -> Result<Self, RtcpError> {
        let body = raw.body;
        let mut at = 0;
        for _ in 0..raw.count {
            if at + 4 > body.len() {
                return Err(RtcpError::BadSdes);
            }
            at += 4;
            loop {
                let &kind = body.get(at).ok_or(RtcpError::BadSdes)?;
                if kind == 0 {
                    at = (at + 1).next_multiple_of(4);
                    break;
                }
                let &len = body.get(at + 1).ok_or(RtcpError::BadSdes)?;
                at += 2 + usize::from(len);
                if at > body.len() {
                    return Err(RtcpError::BadSdes);
                }
            }
        }
        if at > body.len() {
            return Err(RtcpError::BadSdes);
        }
        Ok(Self { raw })
    }

    /// The chunks (one per source).
    pub fn chunks(&self) -> SdesChunks<'a> {
        SdesChunks {
            rest: self.raw.body,
            left: self.raw.count,
        }
    }

    /// The CNAME of the first chunk that has one.
    pub fn cname(&self) -> Option<(Ssrc, &'a [u8])> {
        self.chunks().find_map(|c| {
            c.items()
                .find(|i| i.kind == SDES_CNAME)
                .map(|i| (c.ssrc, i.text))
        })
    }
}

/// Iterator over SDES chunks.
#[derive(Clone, Debug)]
pub struct SdesChunks<'a> {
    rest: &'a [u8],
    left: u8,
}

/// One SDES chunk: a source and its items.
#[derive(Clone, Copy, Debug)]
pub struct SdesChunk<'a> {
    /// The source (SSRC or CSRC).
    pub ssrc: Ssrc,
    items: &'a [u8],
}

impl<'a> SdesChunk<'a> {
    /// The chunk's items.
    pub fn items(&self) -> SdesItems<'a> {
        SdesItems { rest: self.items }
    }
}

impl<'a> Iterator for SdesChunks<'a> {
    type Item = SdesChunk<'a>;

    fn next(&mut self) -> Option<SdesChunk<'a>> {
        if self.left == 0 || self.rest.len() < 4 {
            return None;
        }
        self.left -= 1;
        let ssrc = Ssrc::new(be32(self.rest, 0));
        let mut at = 4;
        while let Some(&kind) = self.rest.get(at) {
            if kind == 0 {
                break;
            }
            at += 2 + usize::from(*self.rest.get(at + 1)?);
        }
        let items = self.rest.get(4..at)?;
        let next = (at + 1).next_multiple_of(4).min(self.rest.len());
        self.rest = &self.rest[next..];
        Some(SdesChunk { ssrc, items })
    }
}

/// One SDES item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdesItem<'a> {
    /// Item type (1 = CNAME, 2 = NAME, …).
    pub kind: u8,
    /// Item text (UTF-8 by the RFC; not checked).
    pub text: &'a [u8],
}

/// Iterator over the items of one chunk.
#[derive(Clone, Debug)]
pub struct SdesItems<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for SdesItems<'a> {
    type Item = SdesItem<'a>;

    fn next(&mut self) -> Option<SdesItem<'a>> {
        let (&kind, tail) = self.rest.split_first()?;
        let (&len, tail) = tail.split_first()?;
        let text = tail.get(..usize::from(len))?;
        self.rest = &tail[usize::from(len)..];
        Some(SdesItem { kind, text })
    }
}

/// A BYE packet.
#[derive(Clone, Copy, Debug)]
pub struct Goodbye<'a> {
    raw: RawPacket<'a>,
}

impl<'a> Goodbye<'a> {
    pub(super) fn parse(raw: RawPacket<'a>) -> Result<Self, RtcpError> {
        let n = 4 * usize::from(raw.count);
        need(&raw, n)?;
        if let Some(&len) = raw.body.get(n) {
            if n + 1 + usize::from(len) > raw.body.len() {
                return Err(RtcpError::BadBye);
            }
        }
        Ok(Self { raw })
    }

    /// The sources leaving.
    pub fn sources(&self) -> impl Iterator<Item = Ssrc> + 'a {
        let n = 4 * usize::from(self.raw.count);
        self.raw.body[..n]
            .chunks_exact(4)
            .map(|c| Ssrc::new(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
    }

    /// The reason for leaving, if given.
    pub fn reason(&self) -> Option<&'a [u8]> {
        let n = 4 * usize::from(self.raw.count);
        let len = usize::from(*self.raw.body.get(n)?);
        self.raw.body.get(n + 1..n + 1 + len)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{compound, RtcpError, RtcpPacket};
    use crate::types::Ssrc;

    #[test]
    fn sdes_two_chunks() {
        // SC=2: chunk 1 CNAME "ab" + NAME "c"; chunk 2 CNAME "xyz".
        let mut body = vec![0, 0, 0, 1, 1, 2, b'a', b'b', 2, 1, b'c', 0];
        body.extend_from_slice(&[0, 0, 0, 2, 1, 3, b'x', b'y', b'z', 0, 0, 0]);
        let mut buf = vec![0x82, 202, 0, (body.len() / 4) as u8];
        buf.extend_from_slice(&body);
        let Some(Ok(RtcpPacket::SourceDescription(s))) = compound(&buf).next() else {
            panic!()
        };
        let chunks: Vec<_> = s.chunks().collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].items().count(), 2);
        assert_eq!(chunks[1].ssrc, Ssrc::new(2));
        assert_eq!(chunks[1].items().next().unwrap().text, b"xyz");
        assert_eq!(s.cname(), Some((Ssrc::new(1), &b"ab"[..])));
    }

    #[test]
    fn written_cname_chunks_read_back_at_every_padding() {
        use super::super::{write_sdes_cname, WriteError};
        let sources = [Ssrc::new(0x5151_0001), Ssrc::new(0x5151_0F02)];
        for n in 0..=9 {
            let cname = &b"tern-abcd"[..n];
            let mut buf = [0xEE; 64];
            let len = write_sdes_cname(&mut buf, &sources, cname).unwrap();
            assert_eq!(len % 4, 0);
            assert_eq!(len, 4 + 2 * (6 + n + 1).next_multiple_of(4));
            let mut packets = compound(&buf[..len]);
            let Some(Ok(RtcpPacket::SourceDescription(s))) = packets.next() else {
                panic!("{n}")
            };
            assert!(packets.next().is_none());
            let chunks: Vec<_> = s.chunks().collect();
            assert_eq!(chunks.len(), 2);
            for (c, want) in chunks.iter().zip(sources) {
                assert_eq!(c.ssrc, want);
                let items: Vec<_> = c.items().collect();
                assert_eq!(items.len(), 1);
                assert_eq!((items[0].kind, items[0].text), (super::SDES_CNAME, cname));
            }
        }
        let mut small = [0; 15];
        assert!(matches!(
            write_sdes_cname(&mut small, &sources, b"x"),
            Err(WriteError::BufferTooSmall { needed: 20, .. })
        ));
        let mut buf = [0; 600];
        assert_eq!(
            write_sdes_cname(&mut buf, &sources, &[b'a'; 256]),
            Err(WriteError::ItemTooLong(256))
        );
        assert_eq!(
            write_sdes_cname(&mut buf, &[Ssrc::new(1); 32], b"a"),
            Err(WriteError::TooManyChunks(32))
        );
    }

    #[test]
    fn sdes_item_past_end_is_an_error() {
        let buf = [0x81, 202, 0, 2, 0, 0, 0, 1, 1, 9, b'a', b'b'];
        let e = compound(&buf).next().unwrap().unwrap_err();
        assert_eq!(e, RtcpError::BadSdes);
    }

    #[test]
    fn bye_with_reason() {
        let buf = [0x81, 203, 0, 2, 0, 0, 0, 7, 2, b'o', b'k', 0];
        let Some(Ok(RtcpPacket::Goodbye(b))) = compound(&buf).next() else {
            panic!()
        };
        assert_eq!(b.sources().collect::<Vec<_>>(), vec![Ssrc::new(7)]);
        assert_eq!(b.reason(), Some(&b"ok"[..]));
        let bad = [0x81, 203, 0, 2, 0, 0, 0, 7, 9, b'o', b'k', 0];
        assert_eq!(
            compound(&bad).next().unwrap().unwrap_err(),
            RtcpError::BadBye
        );
    }
}
