//! Sender and receiver reports (RFC 3550 §6.4) and their report blocks.

use super::{be32, need, RawPacket, RtcpError, PT_RR, PT_SR};
use crate::types::Ssrc;

/// Length of one report block.
pub const REPORT_BLOCK_LEN: usize = 24;
const SENDER_INFO_LEN: usize = 24; // SSRC of sender + 20 bytes of sender info

/// The sender information of an SR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SenderInfo {
    /// SSRC of the sender.
    pub ssrc: Ssrc,
    /// 64-bit NTP timestamp (seconds since 1900 in the high 32 bits).
    pub ntp: u64,
    /// RTP timestamp corresponding to `ntp`.
    pub rtp_timestamp: u32,
    /// Sender's packet count.
    pub packet_count: u32,
    /// Sender's octet count (payload bytes).
    pub octet_count: u32,
}

impl SenderInfo {
    /// The middle 32 bits of the NTP timestamp, as a receiver echoes them in
    /// the LSR field.
    pub const fn compact_ntp(&self) -> u32 {
        (self.ntp >> 16) as u32
    }
}

/// One reception report block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// SSRC of the source this block reports on.
    pub ssrc: Ssrc,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative number of packets lost (24-bit signed).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received (0 = none).
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    fn parse(b: &[u8]) -> Self {
        let lost = u32::from_be_bytes([0, b[5], b[6], b[7]]);
        // Sign-extend the 24-bit field.
        let cumulative_lost = ((lost << 8) as i32) >> 8;
        Self {
            ssrc: Ssrc::new(be32(b, 0)),
            fraction_lost: b[4],
            cumulative_lost,
            highest_seq: be32(b, 8),
            jitter: be32(b, 12),
            last_sr: be32(b, 16),
            delay_since_last_sr: be32(b, 20),
        }
    }

    pub(super) fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.ssrc.get().to_be_bytes());
        let lost = self.cumulative_lost.clamp(-0x80_0000, 0x7F_FFFF) as u32 & 0x00FF_FFFF;
        out[4..8].copy_from_slice(&(u32::from(self.fraction_lost) << 24 | lost).to_be_bytes());
        out[8..12].copy_from_slice(&self.highest_seq.to_be_bytes());
        out[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        out[16..20].copy_from_slice(&self.last_sr.to_be_bytes());
        out[20..24].copy_from_slice(&self.delay_since_last_sr.to_be_bytes());
    }
}

/// Iterator over report blocks.
#[derive(Clone, Debug)]
pub struct ReportBlocks<'a> {
    chunks: std::slice::ChunksExact<'a, u8>,
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<ReportBlock> {
        self.chunks.next().map(ReportBlock::parse)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for ReportBlocks<'_> {}

/// A sender report.
#[derive(Clone, Copy, Debug)]
pub struct SenderReport<'a> {
    raw: RawPacket<'a>,
}

impl<'a> SenderReport<'a> {
    pub(super) fn parse(raw: RawPacket<'a>) -> Result<Self, RtcpError> {
        debug_assert_eq!(raw.packet_type, PT_SR);
        need(
            &raw,
            SENDER_INFO_LEN + REPORT_BLOCK_LEN * usize::from(raw.count),
        )?;
        Ok(Self { raw })
    }

    /// The sender's SSRC and sender information.
    pub fn sender_info(&self) -> SenderInfo {
        let b = self.raw.body;
        SenderInfo {
            ssrc: Ssrc::new(be32(b, 0)),
            ntp: u64::from(be32(b, 4)) << 32 | u64::from(be32(b, 8)),
            rtp_timestamp: be32(b, 12),
            packet_count: be32(b, 16),
            octet_count: be32(b, 20),
        }
    }

    /// The report blocks (the sender's reception reports).
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        let end = SENDER_INFO_LEN + REPORT_BLOCK_LEN * usize::from(self.raw.count);
        ReportBlocks {
            chunks: self.raw.body[SENDER_INFO_LEN..end].chunks_exact(REPORT_BLOCK_LEN),
        }
    }

    /// The packet as on the wire.
    pub fn raw(&self) -> RawPacket<'a> {
        self.raw
    }
}

/// A receiver report.
#[derive(Clone, Copy, Debug)]
pub struct ReceiverReport<'a> {
    raw: RawPacket<'a>,
}

impl<'a> ReceiverReport<'a> {
    pub(super) fn parse(raw: RawPacket<'a>) -> Result<Self, RtcpError> {
        debug_assert_eq!(raw.packet_type, PT_RR);
        need(&raw, 4 + REPORT_BLOCK_LEN * usize::from(raw.count))?;
        Ok(Self { raw })
    }

    /// SSRC of the packet's sender.
    pub fn sender_ssrc(&self) -> Ssrc {
        Ssrc::new(be32(self.raw.body, 0))
    }

    /// The report blocks.
    pub fn report_blocks(&self) -> ReportBlocks<'a> {
        let end = 4 + REPORT_BLOCK_LEN * usize::from(self.raw.count);
        ReportBlocks {
            chunks: self.raw.body[4..end].chunks_exact(REPORT_BLOCK_LEN),
        }
    }

    /// The packet as on the wire.
    pub fn raw(&self) -> RawPacket<'a> {
        self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::types::Ssrc;

    #[test]
    fn sender_report_round_trip() {
        let info = SenderInfo {
            ssrc: Ssrc::new(1),
            ntp: 0x1122_3344_5566_7788,
            rtp_timestamp: 9,
            packet_count: 10,
            octet_count: 11,
        };
        let block = ReportBlock {
            ssrc: Ssrc::new(2),
            fraction_lost: 25,
            cumulative_lost: -3,
            highest_seq: 70_000,
            jitter: 12,
            last_sr: 0x3344_5566,
            delay_since_last_sr: 65536,
        };
        let mut buf = [0u8; 128];
        let n = write_sender_report(&mut buf, &info, &[block, block]).unwrap();
        assert_eq!(n, 28 + 48);
        let mut it = compound(&buf[..n]);
        let Some(Ok(RtcpPacket::SenderReport(sr))) = it.next() else {
            panic!()
        };
        assert_eq!(sr.sender_info(), info);
        assert_eq!(sr.sender_info().compact_ntp(), 0x3344_5566);
        assert_eq!(sr.report_blocks().collect::<Vec<_>>(), vec![block, block]);
        assert!(it.next().is_none());
    }

    #[test]
    fn receiver_report_round_trip_and_lost_clamps() {
        let block = ReportBlock {
            ssrc: Ssrc::new(5),
            cumulative_lost: 0x7FF_FFFF,
            ..ReportBlock::default()
        };
        let mut buf = [0u8; 64];
        let n = write_receiver_report(&mut buf, Ssrc::new(4), &[block]).unwrap();
        let Some(Ok(RtcpPacket::ReceiverReport(rr))) = compound(&buf[..n]).next() else {
            panic!()
        };
        assert_eq!(rr.sender_ssrc(), Ssrc::new(4));
        let got: Vec<_> = rr.report_blocks().collect();
        assert_eq!(got[0].cumulative_lost, 0x7F_FFFF);
    }
}
