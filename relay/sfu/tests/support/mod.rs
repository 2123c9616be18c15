//! Virtual-time harness for the router tests: a publisher that writes VP8,
//! H.264 and Opus RTP packets with recognisable payloads, subscribers that
//! collect what the router sends them, and a clock that only moves when a
//! test moves it.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tern_sfu::rtcp::{self, RtcpPacket};
use tern_sfu::rtp::RtpPacket;
use tern_sfu::*;

pub const PUB: TransportId = TransportId(1);
pub const VP8_PT: u8 = 96;
pub const H264_PT: u8 = 102;
pub const OPUS_PT: u8 = 111;

pub fn pt(n: u8) -> PayloadType {
    PayloadType::new(n).unwrap()
}

pub fn t0() -> Instant {
    #[allow(clippy::disallowed_methods)]
    let t = Instant::now();
    t
}

/// The router, an output, and virtual time.
pub struct World {
    pub router: Router,
    pub out: Output,
    pub now: Instant,
    /// Everything sent so far, per transport.
    pub sent: BTreeMap<TransportId, Vec<Vec<u8>>>,
    /// Consumers added through [`World::add_consumer`], in order.
    pub ids: Vec<ConsumerId>,
}

impl World {
    pub fn new() -> Self {
        Self::with_config(RouterConfig::default())
    }

    pub fn with_config(config: RouterConfig) -> Self {
        Self {
            router: Router::new(config),
            out: Output::new(512, 1600),
            now: t0(),
            sent: BTreeMap::new(),
            ids: Vec::new(),
        }
    }

    pub fn add_consumer(&mut self, params: ConsumerParams) -> Result<ConsumerId, RouterError> {
        let id = self.router.add_consumer(params)?;
        self.ids.push(id);
        Ok(id)
    }

    /// Forget the RTCP sent to the publisher so far.
    pub fn clear_sent_rtcp(&mut self) {
        if let Some(v) = self.sent.get_mut(&PUB) {
            v.retain(|b| !rtcp::is_rtcp(b));
        }
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.timers();
    }

    /// Run every timer that is due.
    pub fn timers(&mut self) {
        while let Some(at) = self.router.poll_timeout() {
            if at > self.now {
                break;
            }
            self.router.handle_timeout(self.now, &mut self.out);
            self.flush();
            if self.router.poll_timeout() == Some(at) {
                break;
            }
        }
    }

    /// Feed one datagram from `from`; returns the router's answer.
    pub fn input(&mut self, from: TransportId, datagram: &[u8]) -> Result<usize, DropReason> {
        let r = self
            .router
            .handle_input(self.now, from, datagram, &mut self.out);
        self.flush();
        r
    }

    /// Move what the router wrote into `sent`.
    pub fn flush(&mut self) {
        for (t, bytes) in self.out.iter() {
            self.sent
                .entry(t.transport)
                .or_default()
                .push(bytes.to_vec());
        }
        self.out.clear();
    }

    /// RTP packets sent to a transport, in order, as (ssrc, seq, ts, pt, payload).
    pub fn rtp_to(&self, to: TransportId) -> Vec<Rx> {
        self.sent
            .get(&to)
            .into_iter()
            .flatten()
            .filter(|b| !rtcp::is_rtcp(b))
            .map(|b| {
                let p = RtpPacket::parse(b).unwrap();
                Rx {
                    ssrc: p.ssrc().get(),
                    seq: p.seq().get(),
                    ts: p.timestamp(),
                    pt: p.payload_type().get(),
                    marker: p.marker(),
                    payload: p.payload().to_vec(),
                    bytes: b.clone(),
                }
            })
            .collect()
    }

    /// RTCP datagrams sent to a transport.
    pub fn rtcp_to(&self, to: TransportId) -> Vec<Vec<u8>> {
        self.sent
            .get(&to)
            .into_iter()
            .flatten()
            .filter(|b| rtcp::is_rtcp(b))
            .cloned()
            .collect()
    }

    /// Key frame requests (PLI and FIR) sent to the publisher, as the media SSRCs asked.
    pub fn key_frame_requests(&self) -> Vec<u32> {
        let mut v = Vec::new();
        for d in self.rtcp_to(PUB) {
            for p in rtcp::compound(&d) {
                match p.unwrap() {
                    RtcpPacket::Pli(p) => v.push(p.media.get()),
                    RtcpPacket::Fir(f) => v.extend(f.entries().map(|e| e.ssrc.get())),
                    _ => {}
                }
            }
        }
        v
    }

    pub fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.router.poll_event()).collect()
    }

    pub fn clear_sent(&mut self) {
        self.sent.clear();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rx {
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    pub pt: u8,
    pub marker: bool,
    pub payload: Vec<u8>,
    pub bytes: Vec<u8>,
}

impl Rx {
    /// The tag a [`Stream`] put in the payload: (encoding, frame, packet in frame).
    pub fn tag(&self, codec: Codec) -> (u8, u32, u8) {
        let at = match codec {
            Codec::Vp8 => vp8_descriptor_len(&self.payload) + 1,
            Codec::H264 => 2,
            _ => 0,
        };
        let t = &self.payload[at..at + 6];
        (t[0], u32::from_be_bytes([t[1], t[2], t[3], t[4]]), t[5])
    }
}

impl Rx {
    /// The VP8 PictureID and TL0PICIDX the packet carries.
    pub fn vp8(&self) -> (Option<u16>, Option<u8>) {
        let d = codec::vp8::Descriptor::parse(&self.payload).unwrap();
        (d.picture_id.map(|p| p.0), d.tl0_pic_idx)
    }
}

/// Across the first packet of each frame: PictureIDs rise by exactly one
/// (15-bit), and TL0PICIDX by one at each base-layer frame (never skips).
pub fn assert_vp8_continuous(rx: &[Rx]) {
    let starts: Vec<_> = rx
        .iter()
        .filter(|r| Codec::Vp8.frame_info(&r.payload).frame_start)
        .map(|r| r.vp8())
        .collect();
    for w in starts.windows(2) {
        let (a, b) = (w[0].0.unwrap(), w[1].0.unwrap());
        assert_eq!(b, (a + 1) & 0x7FFF, "PictureID {a} then {b}");
        if let (Some(x), Some(y)) = (w[0].1, w[1].1) {
            assert!(y == x || y == x.wrapping_add(1), "TL0PICIDX {x} then {y}");
        }
    }
}

fn vp8_descriptor_len(p: &[u8]) -> usize {
    codec::vp8::Descriptor::parse(p).unwrap().len
}

/// One outgoing RTP stream of the publisher (one simulcast encoding).
pub struct Stream {
    pub codec: Codec,
    pub pt: u8,
    pub ssrc: u32,
    pub encoding: u8,
    pub seq: u16,
    pub ts: u32,
    pub ts_step: u32,
    pub frame: u32,
    /// VP8 PictureID (15-bit form) of the next frame.
    pub picture_id: u16,
    /// VP8 TL0PICIDX of the latest base-layer frame.
    pub tl0: u8,
    /// RFC 8285 one-byte extensions to put on every packet: (id, value).
    pub extensions: Vec<(u8, Vec<u8>)>,
}

impl Stream {
    pub fn new(codec: Codec, ssrc: u32, encoding: u8, seq: u16, ts: u32) -> Self {
        let (pt, ts_step) = match codec {
            Codec::Vp8 => (VP8_PT, 3000),
            Codec::H264 => (H264_PT, 3000),
            _ => (OPUS_PT, 960),
        };
        Self {
            codec,
            pt,
            ssrc,
            encoding,
            seq,
            ts,
            ts_step,
            frame: 0,
            picture_id: (ssrc as u16).wrapping_mul(7) & 0x7FFF,
            tl0: ssrc as u8,
            extensions: Vec::new(),
        }
    }

    /// The packets of the next frame: `packets` of them, a key frame or not,
    /// in VP8 temporal layer `tid` (with the layer sync bit `sync`).
    pub fn frame(&mut self, key: bool, packets: u8, tid: Option<u8>, sync: bool) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        if key || tid == Some(0) {
            self.tl0 = self.tl0.wrapping_add(1);
        }
        for i in 0..packets {
            let mut payload = Vec::new();
            match self.codec {
                Codec::Vp8 => {
                    let first = i == 0;
                    // X; I (15-bit PictureID); with a temporal layer also L and T.
                    payload.push(0x80 | if first { 0x10 } else { 0 });
                    payload.push(if tid.is_some() { 0xE0 } else { 0x80 });
                    payload.push(0x80 | (self.picture_id >> 8) as u8);
                    payload.push(self.picture_id as u8);
                    if let Some(t) = tid {
                        payload.push(self.tl0);
                        payload.push(t << 6 | if sync { 0x20 } else { 0 });
                    }
                    // VP8 payload header byte: P = 0 for a key frame.
                    payload.push(if key { 0x00 } else { 0x01 });
                }
                Codec::H264 => {
                    // FU-A of an IDR (5) or non-IDR (1) slice.
                    let nal = if key { 5 } else { 1 };
                    let s = if i == 0 { 0x80 } else { 0 };
                    let e = if i + 1 == packets { 0x40 } else { 0 };
                    payload.push(0x60 | 28);
                    payload.push(s | e | nal);
                }
                _ => {}
            }
            payload.push(self.encoding);
            payload.extend_from_slice(&self.frame.to_be_bytes());
            payload.push(i);
            payload.extend_from_slice(&[0xAB; 40]);
            v.push(self.packet(i + 1 == packets, &payload));
        }
        self.frame += 1;
        self.picture_id = (self.picture_id + 1) & 0x7FFF;
        self.ts = self.ts.wrapping_add(self.ts_step);
        v
    }

    /// An H.264 key frame the way RTP senders such as GStreamer's
    /// `rtph264pay config-interval=-1` send it: SPS and PPS as single NAL
    /// packets, then the IDR slice in `fragments` FU-A packets, all with the
    /// frame's timestamp. Each packet carries the usual tag after its NAL
    /// (or FU) header.
    pub fn h264_key_frame_with_parameter_sets(&mut self, fragments: u8) -> Vec<Vec<u8>> {
        assert_eq!(self.codec, Codec::H264);
        let mut v = Vec::new();
        let tagged = |head: &[u8], encoding: u8, frame: u32, i: u8| {
            let mut p = head.to_vec();
            p.push(encoding);
            p.extend_from_slice(&frame.to_be_bytes());
            p.push(i);
            p.extend_from_slice(&[0xAB; 40]);
            p
        };
        // SPS (7), PPS (8): NAL header F=0, NRI=3.
        for (i, nal) in [0x67u8, 0x68].into_iter().enumerate() {
            let p = tagged(&[nal, 0x42], self.encoding, self.frame, i as u8);
            v.push(self.packet(false, &p));
        }
        for i in 0..fragments {
            let s = if i == 0 { 0x80 } else { 0 };
            let e = if i + 1 == fragments { 0x40 } else { 0 };
            let p = tagged(&[0x60 | 28, s | e | 5], self.encoding, self.frame, 2 + i);
            v.push(self.packet(i + 1 == fragments, &p));
        }
        self.frame += 1;
        self.ts = self.ts.wrapping_add(self.ts_step);
        v
    }

    fn packet(&mut self, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0x80, self.pt | if marker { 0x80 } else { 0 }];
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.extend_from_slice(&self.ts.to_be_bytes());
        b.extend_from_slice(&self.ssrc.to_be_bytes());
        if !self.extensions.is_empty() {
            let mut body = Vec::new();
            for (id, value) in &self.extensions {
                body.push(id << 4 | (value.len() as u8 - 1));
                body.extend_from_slice(value);
            }
            while body.len() % 4 != 0 {
                body.push(0);
            }
            b[0] |= 0x10;
            b.extend_from_slice(&0xBEDEu16.to_be_bytes());
            b.extend_from_slice(&((body.len() / 4) as u16).to_be_bytes());
            b.extend_from_slice(&body);
        }
        b.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
        b
    }

    /// An SR for this stream now, with `ntp`.
    pub fn sender_report(&self, ntp: u64, packets: u32, octets: u32) -> Vec<u8> {
        let mut buf = [0u8; 64];
        let info = rtcp::SenderInfo {
            ssrc: Ssrc::new(self.ssrc),
            ntp,
            rtp_timestamp: self.ts,
            packet_count: packets,
            octet_count: octets,
        };
        let n = rtcp::write_sender_report(&mut buf, &info, &[]).unwrap();
        buf[..n].to_vec()
    }
}

pub fn video_producer(codec: Codec, ssrcs: &[u32]) -> ProducerParams {
    ProducerParams {
        transport: PUB,
        kind: MediaKind::Video,
        codec,
        clock_rate: 90_000,
        payload_types: vec![pt(if codec == Codec::H264 {
            H264_PT
        } else {
            VP8_PT
        })],
        encodings: ssrcs
            .iter()
            .map(|&s| EncodingParams {
                ssrc: Some(Ssrc::new(s)),
                rid: None,
                rtx_ssrc: None,
            })
            .collect(),
        rid_extension_id: None,
        mid_extension_id: None,
        mid: None,
        key_frame_request: KeyFrameRequest::Pli,
        retransmit_capacity: 512,
        nack: true,
        rtx_payload_types: vec![],
        repaired_rid_extension_id: None,
    }
}

pub fn audio_producer(ssrc: u32) -> ProducerParams {
    ProducerParams {
        transport: PUB,
        kind: MediaKind::Audio,
        codec: Codec::Opus,
        clock_rate: 48_000,
        payload_types: vec![pt(OPUS_PT)],
        encodings: vec![EncodingParams {
            ssrc: Some(Ssrc::new(ssrc)),
            rid: None,
            rtx_ssrc: None,
        }],
        rid_extension_id: None,
        mid_extension_id: None,
        mid: None,
        key_frame_request: KeyFrameRequest::Pli,
        retransmit_capacity: 0,
        nack: false,
        rtx_payload_types: vec![],
        repaired_rid_extension_id: None,
    }
}

pub fn consumer(producer: ProducerId, transport: u32, ssrc: u32) -> ConsumerParams {
    ConsumerParams {
        producer,
        transport: TransportId(transport),
        ssrc: Ssrc::new(ssrc),
        payload_types: vec![],
        preferred_spatial: None,
        preferred_temporal: None,
        paused: false,
        initial_seq: SeqNo::new(1000),
        initial_timestamp: 50_000,
        rtx_ssrc: None,
        rtx_payload_types: vec![],
    }
}

/// A NACK from a subscriber for its consumer SSRC.
pub fn nack(consumer_ssrc: u32, lost: &[u16]) -> Vec<u8> {
    let mut buf = [0u8; 256];
    let mut n = rtcp::write_receiver_report(&mut buf, Ssrc::new(9), &[]).unwrap();
    n += rtcp::write_nack(
        &mut buf[n..],
        Ssrc::new(9),
        Ssrc::new(consumer_ssrc),
        lost.iter().map(|&s| SeqNo::new(s)),
    )
    .unwrap();
    buf[..n].to_vec()
}

/// A PLI from a subscriber for its consumer SSRC.
pub fn pli(consumer_ssrc: u32) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let mut n = rtcp::write_receiver_report(&mut buf, Ssrc::new(9), &[]).unwrap();
    n += rtcp::write_pli(&mut buf[n..], Ssrc::new(9), Ssrc::new(consumer_ssrc)).unwrap();
    buf[..n].to_vec()
}

/// Sequence numbers are consecutive (mod 2^16).
pub fn assert_contiguous(rx: &[Rx]) {
    for w in rx.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "gap or duplicate between {:?} and {:?}",
            (w[0].seq, w[0].ts),
            (w[1].seq, w[1].ts)
        );
    }
}

/// The RFC 4588 RTX packet repairing `original`: same header (timestamp,
/// marker, extensions) with the RTX SSRC, payload type and sequence number,
/// the original sequence number in front of the payload, and `padding`
/// bytes of RTP padding of its own.
pub fn rtx_of(original: &[u8], ssrc: u32, pt: u8, seq: u16, padding: u8) -> Vec<u8> {
    let p = RtpPacket::parse(original).unwrap();
    let mut b = original[..p.header_len()].to_vec();
    b[0] &= !0x20;
    b[1] = (b[1] & 0x80) | pt;
    b[2..4].copy_from_slice(&seq.to_be_bytes());
    b[8..12].copy_from_slice(&ssrc.to_be_bytes());
    b.extend_from_slice(&p.seq().get().to_be_bytes());
    b.extend_from_slice(p.payload());
    if padding > 0 {
        b[0] |= 0x20;
        b.extend(std::iter::repeat(0).take(usize::from(padding) - 1));
        b.push(padding);
    }
    b
}
