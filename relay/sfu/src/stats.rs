//! Counters: router-wide (low-cardinality, for metrics), per producer
//! encoding and per consumer (for the control API).

use std::time::Duration;

use crate::types::Ssrc;

/// Why the router dropped an incoming packet (or an outgoing one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a valid RTP packet.
    MalformedRtp,
    /// Not a valid RTCP compound packet (packets before the error were used).
    MalformedRtcp,
    /// RTP (or RTCP feedback) for an SSRC no producer or consumer on that
    /// transport has.
    UnknownSsrc,
    /// A payload type the producer did not declare.
    UnknownPayloadType,
    /// Larger than a slot of the caller's [`Output`](crate::Output).
    TooLarge,
    /// The caller's [`Output`](crate::Output) was full.
    OutputFull,
}

impl DropReason {
    /// Every reason, in [`index`](Self::index) order.
    pub const ALL: [DropReason; 6] = [
        DropReason::MalformedRtp,
        DropReason::MalformedRtcp,
        DropReason::UnknownSsrc,
        DropReason::UnknownPayloadType,
        DropReason::TooLarge,
        DropReason::OutputFull,
    ];

    /// A stable label for metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::MalformedRtp => "malformed_rtp",
            DropReason::MalformedRtcp => "malformed_rtcp",
            DropReason::UnknownSsrc => "unknown_ssrc",
            DropReason::UnknownPayloadType => "unknown_payload_type",
            DropReason::TooLarge => "too_large",
            DropReason::OutputFull => "output_full",
        }
    }

    /// Position in [`ALL`](Self::ALL) and in [`RouterStats::drops`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Router-wide counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterStats {
    /// RTP packets received from producers (before any drop).
    pub rtp_received: u64,
    /// RTP packets written for consumers (fan-out; retransmissions excluded).
    pub rtp_forwarded: u64,
    /// RTCP datagrams received.
    pub rtcp_received: u64,
    /// Packets resent from a retransmission buffer in answer to NACKs.
    pub retransmitted: u64,
    /// NACKed packets the buffer no longer (or never) had.
    pub nack_misses: u64,
    /// PLI/FIR sent to producers.
    pub key_frame_requests_sent: u64,
    /// Key frame requests held back by the throttle (sent later at most once).
    pub key_frame_requests_throttled: u64,
    /// Sender reports rewritten and sent to consumers.
    pub sender_reports_forwarded: u64,
    /// Report blocks about consumers consumed into their stats.
    pub report_blocks_received: u64,
    /// REMB messages received and ignored.
    pub remb_ignored: u64,
    /// Other RTCP packets (SDES, BYE, APP, XR, TWCC, …) received and ignored.
    pub rtcp_ignored: u64,
    /// RTX packets received from producers and rebuilt as what they repair.
    pub rtx_received: u64,
    /// Padding-only RTX packets (bandwidth probes) received and ignored.
    pub rtx_padding_only: u64,
    /// NACK packets sent to producers for packets missing upstream.
    pub upstream_nacks_sent: u64,
    /// Receiver reports sent to producers.
    pub receiver_reports_sent: u64,
    /// SDES packets naming a consumer's media and RTX SSRCs (RFC 4588 §5.2)
    /// sent to consumers.
    pub source_descriptions_sent: u64,
    /// Events dropped because the caller did not poll them.
    pub events_dropped: u64,
    /// Drops by [`DropReason::index`].
    pub drops: [u64; DropReason::ALL.len()],
}

impl RouterStats {
    /// The count for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }
}

/// Receive-side counters of one producer encoding (RFC 3550 §6.4 / A.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EncodingStats {
    /// The SSRC, once known (configured or learned from the RID).
    pub ssrc: Option<Ssrc>,
    /// Packets received.
    pub packets: u64,
    /// Bytes received (whole RTP packets).
    pub bytes: u64,
    /// Packets expected minus received (negative with duplicates).
    pub lost: i64,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    /// Key frames seen.
    pub key_frames: u64,
    /// Packets NACKed upstream (each try counts).
    pub nacks_sent: u64,
    /// Missing packets that arrived later (retransmitted or reordered).
    pub recovered: u64,
    /// The RTX SSRC, once known.
    pub rtx_ssrc: Option<Ssrc>,
    /// RTX packets received.
    pub rtx_packets: u64,
}

/// Counters and the latest receiver-report view of one consumer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Packets sent (fan-out, not retransmissions).
    pub packets: u64,
    /// Bytes sent (whole RTP packets).
    pub bytes: u64,
    /// Payload bytes sent (the SR octet count).
    pub payload_bytes: u64,
    /// Packets resent in answer to NACKs.
    pub retransmitted: u64,
    /// NACK packets received.
    pub nacks_received: u64,
    /// NACKed packets that could not be resent.
    pub nack_misses: u64,
    /// PLIs received.
    pub plis_received: u64,
    /// FIRs received.
    pub firs_received: u64,
    /// Packets left out because their temporal layer is above the consumer's.
    pub dropped_temporal: u64,
    /// Packets of another encoding than the one being sent, or before the
    /// first key frame.
    pub skipped_layer: u64,
    /// Packets too old to place in the outgoing sequence.
    pub too_old: u64,
    /// Spatial layer switches (including the first key frame).
    pub layer_switches: u64,
    /// From the latest receiver report: fraction lost (1/256).
    pub fraction_lost: u8,
    /// From the latest receiver report: cumulative lost.
    pub cumulative_lost: i32,
    /// From the latest receiver report: jitter in timestamp units.
    pub jitter: u32,
    /// Round-trip time from the latest report that echoed one of our SRs.
    pub rtt: Option<Duration>,
    /// Encoding being sent.
    pub spatial_layer: Option<u8>,
    /// Highest temporal layer being sent (`None`: the stream has no layers
    /// or all are sent).
    pub temporal_layer: Option<u8>,
    /// Paused.
    pub paused: bool,
}
