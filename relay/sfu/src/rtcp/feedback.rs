//! Feedback messages (RFC 4585 §6): generic NACK, PLI, FIR (RFC 5104
//! §4.3.1) and REMB (recognised to be counted; an SFU that does its own
//! bandwidth estimation does not act on it).

use super::{be32, need, RawPacket, RtcpError};
use crate::types::{SeqNo, Ssrc};

pub(super) const FMT_NACK: u8 = 1;
pub(super) const FMT_PLI: u8 = 1;
pub(super) const FMT_FIR: u8 = 4;
pub(super) const FMT_AFB: u8 = 15;

/// Sender and media SSRC of a feedback message (the first 8 body bytes).
fn ssrcs(raw: &RawPacket<'_>) -> Result<(Ssrc, Ssrc), RtcpError> {
    need(raw, 8)?;
    Ok((Ssrc::new(be32(raw.body, 0)), Ssrc::new(be32(raw.body, 4))))
}

/// A generic NACK (RTPFB FMT 1).
#[derive(Clone, Copy, Debug)]
pub struct Nack<'a> {
    /// SSRC of the packet's sender.
    pub sender: Ssrc,
    /// SSRC of the media source the losses are in.
    pub media: Ssrc,
    fci: &'a [u8],
}

/// One NACK FCI entry: a lost packet id and a bitmask of the 16 after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NackPair {
    /// Packet id (PID).
    pub pid: SeqNo,
    /// Bitmask of following lost packets (BLP): bit i = `pid + i + 1`.
    pub blp: u16,
}

impl<'a> Nack<'a> {
    pub(super) fn parse(raw: RawPacket<'a>) -> Result<Self, RtcpError> {
        let (sender, media) = ssrcs(&raw)?;
        let fci = &raw.body[8..];
        // A trailing partial entry is ignored rather than fatal.
        let fci = &fci[..fci.len() - fci.len() % 4];
        Ok(Self { sender, media, fci })
    }

    /// The FCI entries.
    pub fn pairs(&self) -> impl Iterator<Item = NackPair> + 'a {
        self.fci.chunks_exact(4).map(|c| NackPair {
            pid: SeqNo::new(u16::from_be_bytes([c[0], c[1]])),
            blp: u16::from_be_bytes([c[2], c[3]]),
        })
    }

    /// Every sequence number reported lost, in FCI order.
    pub fn lost(&self) -> impl Iterator<Item = SeqNo> + 'a {
        self.pairs().flat_map(|p| {
            std::iter::once(p.pid).chain(
                (0..16u16)
                    .filter(move |i| p.blp & (1 << i) != 0)
                    .map(move |i| p.pid.add(i + 1)),
            )
        })
    }
}

/// A picture loss indication (PSFB FMT 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pli {
    /// SSRC of the packet's sender.
    pub sender: Ssrc,
    /// SSRC of the media source that needs a key frame.
    pub media: Ssrc,
}

impl Pli {
    pub(super) fn parse(raw: RawPacket<'_>) -> Result<Self, RtcpError> {
        let (sender, media) = ssrcs(&raw)?;
        Ok(Self { sender, media })
    }
}

/// A full intra request (PSFB FMT 4).
#[derive(Clone, Copy, Debug)]
pub struct Fir<'a> {
    /// SSRC of the packet's sender.
    pub sender: Ssrc,
    fci: &'a [u8],
}

/// One FIR FCI entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirEntry {
    /// SSRC of the media sender asked for a key frame.
    pub ssrc: Ssrc,
    /// Command sequence number.
    pub seq_nr: u8,
}

impl<'a> Fir<'a> {
    pub(super) fn parse(raw: RawPacket<'a>) -> Result<Self, RtcpError> {
        let (sender, _media) = ssrcs(&raw)?;
        let fci = &raw.body[8..];
        let fci = &fci[..fci.len() - fci.len() % 8];
        Ok(Self { sender, fci })
    }

    /// The FCI entries.
    pub fn entries(&self) -> impl Iterator<Item = FirEntry> + 'a {
        self.fci.chunks_exact(8).map(|c| FirEntry {
            ssrc: Ssrc::new(u32::from_be_bytes([c[0], c[1], c[2], c[3]])),
            seq_nr: c[4],
        })
    }
}

/// A receiver estimated maximum bitrate message (PSFB FMT 15, "REMB").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remb {
    /// SSRC of the packet's sender.
    pub sender: Ssrc,
    /// Estimated bitrate in bits per second.
    pub bitrate: u64,
    /// Number of SSRCs the estimate applies to.
    pub ssrc_count: u8,
}

impl Remb {
    /// `None` when the AFB message is not a well-formed REMB.
    pub(super) fn parse(raw: RawPacket<'_>) -> Option<Self> {
        let b = raw.body;
        if b.len() < 16 || &b[8..12] != b"REMB" {
            return None;
        }
        let ssrc_count = b[12];
        if b.len() < 16 + 4 * usize::from(ssrc_count) {
            return None;
        }
        let exp = u32::from(b[13] >> 2);
        let mantissa = u64::from(u32::from_be_bytes([0, b[13] & 0x03, b[14], b[15]]));
        Some(Self {
            sender: Ssrc::new(be32(b, 0)),
            bitrate: mantissa.checked_shl(exp).unwrap_or(u64::MAX),
            ssrc_count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::types::{SeqNo, Ssrc};

    #[test]
    fn nack_expands_bitmask_across_wrap() {
        let mut buf = [0u8; 64];
        let lost = [0xFFFE, 0xFFFF, 1, 0x20, 0x31];
        let n = write_nack(
            &mut buf,
            Ssrc::new(1),
            Ssrc::new(2),
            lost.iter().map(|&s| SeqNo::new(s)),
        )
        .unwrap();
        let Some(Ok(RtcpPacket::Nack(nack))) = compound(&buf[..n]).next() else {
            panic!()
        };
        assert_eq!((nack.sender, nack.media), (Ssrc::new(1), Ssrc::new(2)));
        assert_eq!(
            nack.pairs().count(),
            3,
            "0xFFFE..=1 share one entry, 0x20 and 0x31 do not"
        );
        let got: Vec<u16> = nack.lost().map(SeqNo::get).collect();
        // 0x31 is 17 after 0x20: outside that entry's bitmask, so a third entry.
        assert_eq!(got, vec![0xFFFE, 0xFFFF, 1, 0x20, 0x31]);
    }

    #[test]
    fn pli_and_fir_round_trip() {
        let mut buf = [0u8; 64];
        let n = write_pli(&mut buf, Ssrc::new(3), Ssrc::new(4)).unwrap();
        let Some(Ok(RtcpPacket::Pli(pli))) = compound(&buf[..n]).next() else {
            panic!()
        };
        assert_eq!((pli.sender, pli.media), (Ssrc::new(3), Ssrc::new(4)));
        let n = write_fir(&mut buf, Ssrc::new(3), Ssrc::new(4), 9).unwrap();
        let Some(Ok(RtcpPacket::Fir(fir))) = compound(&buf[..n]).next() else {
            panic!()
        };
        let e: Vec<_> = fir.entries().collect();
        assert_eq!(
            e,
            vec![FirEntry {
                ssrc: Ssrc::new(4),
                seq_nr: 9
            }]
        );
    }

    #[test]
    fn remb_is_recognised() {
        // 1.5 Mbit/s = 187500 * 2^3 (18-bit mantissa).
        let m: u32 = 187_500;
        let mut buf = vec![0x8F, 206, 0, 5, 0, 0, 0, 1, 0, 0, 0, 0];
        buf.extend_from_slice(b"REMB");
        buf.extend_from_slice(&[1, (3 << 2) | (m >> 16) as u8, (m >> 8) as u8, m as u8]);
        buf.extend_from_slice(&[0, 0, 0, 9]);
        let Some(Ok(RtcpPacket::Remb(r))) = compound(&buf).next() else {
            panic!()
        };
        assert_eq!(r.bitrate, 1_500_000);
        assert_eq!(r.ssrc_count, 1);
        // Other AFB content is Other.
        buf[12..16].copy_from_slice(b"XXXX");
        assert!(matches!(
            compound(&buf).next(),
            Some(Ok(RtcpPacket::Other(_)))
        ));
    }
}
