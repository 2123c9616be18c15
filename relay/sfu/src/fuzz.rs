//! Fuzz-style entry points: the bodies that the proptests run on stable and
//! the cargo-fuzz targets in `relay/sfu/fuzz/` run on nightly. Each must
//! never panic, whatever the bytes.

use std::time::{Duration, Instant};

use crate::srtp::{SrtpContext, SrtpProfile};
use crate::*;

/// Parse arbitrary bytes as RTP and touch every accessor.
pub fn rtp(data: &[u8]) {
    rtp::fuzz::parse_any(data);
}

/// Walk arbitrary bytes as a compound RTCP packet.
pub fn rtcp(data: &[u8]) {
    rtcp::fuzz::parse_any(data);
}

/// Unprotect arbitrary bytes as SRTP and SRTCP with both profiles.
pub fn srtp(data: &[u8]) {
    for (profile, salt) in [
        (SrtpProfile::Aes128CmHmacSha1_80, &[5u8; 14][..]),
        (SrtpProfile::AeadAes128Gcm, &[5u8; 12][..]),
    ] {
        if let Ok(mut c) = SrtpContext::new(profile, &[4; 16], salt) {
            let _ = c.unprotect_rtp(&mut data.to_vec());
            let _ = c.unprotect_rtcp(&mut data.to_vec());
        }
    }
}

/// Feed arbitrary datagrams (split on the first byte of each chunk) to a
/// router with a simulcast VP8 producer and two consumers, from both the
/// publisher's and a subscriber's transport, with time moving on.
pub fn router(data: &[u8], start: Instant) {
    let mut r = Router::new(RouterConfig::default());
    let mut out = Output::new(64, 1500);
    let Some(vp8) = PayloadType::new(96) else {
        return;
    };
    let Ok(p) = r.add_producer(ProducerParams {
        transport: TransportId(1),
        kind: MediaKind::Video,
        codec: Codec::Vp8,
        clock_rate: 90_000,
        payload_types: vec![vp8],
        encodings: vec![
            EncodingParams {
                ssrc: Some(Ssrc::new(1)),
                rid: None,
                rtx_ssrc: None,
            },
            EncodingParams {
                ssrc: None,
                rid: Some("h".into()),
                rtx_ssrc: None,
            },
        ],
        rid_extension_id: Some(3),
        mid_extension_id: None,
        mid: None,
        key_frame_request: KeyFrameRequest::Pli,
        retransmit_capacity: 64,
        nack: true,
        rtx_payload_types: vec![],
        repaired_rid_extension_id: None,
    }) else {
        return;
    };
    for (t, ssrc) in [(2, 10), (3, 11)] {
        let _ = r.add_consumer(ConsumerParams {
            producer: p,
            transport: TransportId(t),
            ssrc: Ssrc::new(ssrc),
            payload_types: vec![],
            preferred_spatial: None,
            preferred_temporal: Some(1),
            paused: false,
            initial_seq: SeqNo::new(0),
            initial_timestamp: 0,
            rtx_ssrc: None,
            rtx_payload_types: vec![],
        });
    }
    let mut now = start;
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let len = usize::from(n).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        let from = TransportId(1 + u32::from(n % 3));
        let _ = r.handle_input(now, from, datagram, &mut out);
        now += Duration::from_millis(u64::from(n % 50));
        if r.poll_timeout().is_some_and(|t| t <= now) {
            r.handle_timeout(now, &mut out);
        }
        while r.poll_event().is_some() {}
        out.clear();
        rest = tail;
    }
}
