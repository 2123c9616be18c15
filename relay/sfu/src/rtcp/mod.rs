//! Zero-copy RTCP (RFC 3550 §6, RFC 4585, RFC 5104): an iterator over the
//! packets of a compound datagram, typed views of the ones an SFU acts on,
//! and writers for the ones it sends.
//!
//! Owns: RTCP framing and the layouts of SR, RR, SDES, BYE, RTPFB generic
//! NACK, PSFB PLI/FIR and REMB (recognised so it can be counted, not acted
//! on). Everything else surfaces as [`RtcpPacket::Other`]. Must not touch:
//! SRTCP, sockets, time. Nothing here allocates.

mod feedback;
mod report;
mod sdes;
mod write;

pub use feedback::{Fir, FirEntry, Nack, NackPair, Pli, Remb};
pub use report::{
    ReceiverReport, ReportBlock, ReportBlocks, SenderInfo, SenderReport, REPORT_BLOCK_LEN,
};
pub use sdes::{
    Goodbye, SdesChunk, SdesChunks, SdesItem, SdesItems, SourceDescription, SDES_CNAME,
};
pub use write::{
    write_fir, write_nack, write_pli, write_receiver_report, write_sdes_cname, write_sender_report,
    NackBuilder, WriteError,
};

/// Sender report (RFC 3550 §6.4.1).
pub const PT_SR: u8 = 200;
/// Receiver report (RFC 3550 §6.4.2).
pub const PT_RR: u8 = 201;
/// Source description (RFC 3550 §6.5).
pub const PT_SDES: u8 = 202;
/// Goodbye (RFC 3550 §6.6).
pub const PT_BYE: u8 = 203;
/// Application-defined (RFC 3550 §6.7).
pub const PT_APP: u8 = 204;
/// Transport-layer feedback (RFC 4585 §6.2).
pub const PT_RTPFB: u8 = 205;
/// Payload-specific feedback (RFC 4585 §6.3).
pub const PT_PSFB: u8 = 206;
/// Extended report (RFC 3611).
pub const PT_XR: u8 = 207;

/// Why a buffer is not (or stops being) valid RTCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtcpError {
    /// Fewer than 4 bytes remain where a packet header should start.
    #[error("RTCP header needs 4 bytes, {0} remain")]
    TooShort(usize),
    /// The version field is not 2.
    #[error("RTCP version {0}, expected 2")]
    BadVersion(u8),
    /// The length field claims more bytes than remain.
    #[error("RTCP packet claims {declared} bytes, {available} remain")]
    LengthOverrun {
        /// Bytes the length field claims (header included).
        declared: usize,
        /// Bytes left in the datagram.
        available: usize,
    },
    /// The padding count is zero or exceeds the packet body.
    #[error("RTCP padding count {0} is zero or exceeds the packet")]
    BadPadding(u8),
    /// The body is too short for its packet type and count.
    #[error("RTCP packet type {packet_type} needs {needed} bytes of body, has {available}")]
    Truncated {
        /// The packet type.
        packet_type: u8,
        /// Bytes its count field requires.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// An SDES chunk or item runs past its packet.
    #[error("RTCP SDES chunk or item runs past the packet")]
    BadSdes,
    /// A BYE reason runs past its packet.
    #[error("RTCP BYE reason runs past the packet")]
    BadBye,
    /// The first byte looks like RTP rather than RTCP (RFC 5761 §4 demux).
    #[error("RTCP packet type {0} is outside 192..=223")]
    NotRtcp(u8),
}

/// True when a datagram on an rtcp-mux transport is RTCP rather than RTP:
/// the second byte (RTCP packet type / RTP M+PT) is in 192..=223 (RFC 5761 §4).
pub fn is_rtcp(datagram: &[u8]) -> bool {
    matches!(datagram.get(1), Some(192..=223))
}

/// The common header and (padding-trimmed) body of one RTCP packet.
#[derive(Clone, Copy, Debug)]
pub struct RawPacket<'a> {
    /// Packet type (PT).
    pub packet_type: u8,
    /// The 5-bit count field (RC, SC or FMT by packet type).
    pub count: u8,
    /// Bytes after the 4-byte header, padding removed.
    pub body: &'a [u8],
    /// The whole packet as it was on the wire (header and padding included).
    pub bytes: &'a [u8],
}

/// One typed RTCP packet of a compound datagram.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum RtcpPacket<'a> {
    /// SR.
    SenderReport(SenderReport<'a>),
    /// RR.
    ReceiverReport(ReceiverReport<'a>),
    /// SDES.
    SourceDescription(SourceDescription<'a>),
    /// BYE.
    Goodbye(Goodbye<'a>),
    /// RTPFB FMT 1, generic NACK.
    Nack(Nack<'a>),
    /// PSFB FMT 1, picture loss indication.
    Pli(Pli),
    /// PSFB FMT 4, full intra request.
    Fir(Fir<'a>),
    /// PSFB FMT 15 with the "REMB" identifier (draft-alvestrand-rmcat-remb).
    Remb(Remb),
    /// Any other packet type or format (APP, XR, TWCC, …).
    Other(RawPacket<'a>),
}

/// Iterator over the packets of a compound RTCP datagram. Yields one `Err`
/// at the first framing error and then stops; packets before it are
/// still yielded.
#[derive(Clone, Debug)]
pub struct Compound<'a> {
    rest: &'a [u8],
}

/// Iterate over the packets of a compound RTCP datagram.
pub fn compound(datagram: &[u8]) -> Compound<'_> {
    Compound { rest: datagram }
}

impl<'a> Iterator for Compound<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = split_packet(self.rest).and_then(|(raw, rest)| {
            self.rest = rest;
            parse_typed(raw)
        });
        if item.is_err() {
            self.rest = &[];
        }
        Some(item)
    }
}

/// Frame the first packet of `buf`: its header, body, and what follows it.
fn split_packet(buf: &[u8]) -> Result<(RawPacket<'_>, &[u8]), RtcpError> {
    if buf.len() < 4 {
        return Err(RtcpError::TooShort(buf.len()));
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(RtcpError::BadVersion(version));
    }
    let packet_type = buf[1];
    if !(192..=223).contains(&packet_type) {
        return Err(RtcpError::NotRtcp(packet_type));
    }
    let len = 4 * (usize::from(u16::from_be_bytes([buf[2], buf[3]])) + 1);
    if len > buf.len() {
        return Err(RtcpError::LengthOverrun {
            declared: len,
            available: buf.len(),
        });
    }
    let bytes = &buf[..len];
    let mut body = &bytes[4..];
    if buf[0] & 0x20 != 0 {
        let pad = bytes[len - 1];
        if pad == 0 || usize::from(pad) > body.len() {
            return Err(RtcpError::BadPadding(pad));
        }
        body = &body[..body.len() - usize::from(pad)];
    }
    Ok((
        RawPacket {
            packet_type,
            count: buf[0] & 0x1F,
            body,
            bytes,
        },
        &buf[len..],
    ))
}

fn parse_typed(raw: RawPacket<'_>) -> Result<RtcpPacket<'_>, RtcpError> {
    Ok(match (raw.packet_type, raw.count) {
        (PT_SR, _) => RtcpPacket::SenderReport(SenderReport::parse(raw)?),
        (PT_RR, _) => RtcpPacket::ReceiverReport(ReceiverReport::parse(raw)?),
        (PT_SDES, _) => RtcpPacket::SourceDescription(SourceDescription::parse(raw)?),
        (PT_BYE, _) => RtcpPacket::Goodbye(Goodbye::parse(raw)?),
        (PT_RTPFB, feedback::FMT_NACK) => RtcpPacket::Nack(Nack::parse(raw)?),
        (PT_PSFB, feedback::FMT_PLI) => RtcpPacket::Pli(Pli::parse(raw)?),
        (PT_PSFB, feedback::FMT_FIR) => RtcpPacket::Fir(Fir::parse(raw)?),
        (PT_PSFB, feedback::FMT_AFB) => match Remb::parse(raw) {
            Some(remb) => RtcpPacket::Remb(remb),
            None => RtcpPacket::Other(raw),
        },
        _ => RtcpPacket::Other(raw),
    })
}

/// Require `needed` bytes of body.
fn need(raw: &RawPacket<'_>, needed: usize) -> Result<(), RtcpError> {
    if raw.body.len() < needed {
        Err(RtcpError::Truncated {
            packet_type: raw.packet_type,
            needed,
            available: raw.body.len(),
        })
    } else {
        Ok(())
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Fuzz-style entry point shared by the proptests: walk a compound datagram
/// and touch every field of every packet; must never panic.
pub mod fuzz {
    use super::*;

    /// Returns the number of packets parsed before the end or the first error.
    pub fn parse_any(data: &[u8]) -> usize {
        let mut n = 0;
        for p in compound(data) {
            let Ok(p) = p else { break };
            n += 1;
            match p {
                RtcpPacket::SenderReport(sr) => {
                    let _ = sr.sender_info();
                    let _ = sr.report_blocks().count();
                }
                RtcpPacket::ReceiverReport(rr) => {
                    let _ = rr.report_blocks().count();
                }
                RtcpPacket::SourceDescription(s) => {
                    for c in s.chunks() {
                        let _ = c.items().count();
                    }
                }
                RtcpPacket::Goodbye(b) => {
                    let _ = (b.sources().count(), b.reason());
                }
                RtcpPacket::Nack(nack) => {
                    let _ = nack.lost().count();
                }
                RtcpPacket::Fir(fir) => {
                    let _ = fir.entries().count();
                }
                RtcpPacket::Pli(_) | RtcpPacket::Remb(_) | RtcpPacket::Other(_) => {}
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demux_rule() {
        assert!(is_rtcp(&[0x80, 200]));
        assert!(!is_rtcp(&[0x80, 96]));
        assert!(!is_rtcp(&[0x80, 0xE0])); // RTP PT 96 with marker
        assert!(!is_rtcp(&[0x80]));
    }

    #[test]
    fn framing_errors() {
        let e = compound(&[0x80, 201, 0]).next().unwrap().unwrap_err();
        assert_eq!(e, RtcpError::TooShort(3));
        let e = compound(&[0x40, 201, 0, 0]).next().unwrap().unwrap_err();
        assert_eq!(e, RtcpError::BadVersion(1));
        let e = compound(&[0x80, 201, 0, 1, 0, 0, 0])
            .next()
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, RtcpError::LengthOverrun { declared: 8, .. }));
        let e = compound(&[0xA0, 201, 0, 1, 0, 0, 0, 9])
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(e, RtcpError::BadPadding(9));
        let e = compound(&[0x81, 201, 0, 1, 0, 0, 0, 1])
            .next()
            .unwrap()
            .unwrap_err();
        assert!(matches!(
            e,
            RtcpError::Truncated {
                packet_type: 201,
                needed: 28,
                ..
            }
        ));
    }

    #[test]
    fn iteration_stops_after_error_but_keeps_earlier_packets() {
        let mut buf = vec![0x80, 201, 0, 1, 0, 0, 0, 1];
        buf.extend_from_slice(&[0x80, 201, 0, 9]);
        let items: Vec<_> = compound(&buf).collect();
        assert_eq!(items.len(), 2);
        assert!(matches!(items[0], Ok(RtcpPacket::ReceiverReport(_))));
        assert!(items[1].is_err());
    }

    #[test]
    fn unknown_types_are_other() {
        let buf = [0x80, PT_XR, 0, 1, 1, 2, 3, 4];
        match compound(&buf).next() {
            Some(Ok(RtcpPacket::Other(raw))) => {
                assert_eq!(raw.packet_type, PT_XR);
                assert_eq!(raw.body, &[1, 2, 3, 4]);
            }
            other => panic!("{other:?}"),
        }
    }
}
