//! Virtual-time tests of pipe consumers: two routers (two hosts) joined by a
//! pipe. Router A's pipe consumer sends every encoding of its producer as it
//! arrived; router B declares a producer with the same parameters on its end
//! of the pipe and serves its own subscribers. Feedback crosses back: B's
//! upstream NACKs are answered from A's retransmission buffer, a subscriber's
//! PLI on B reaches the publisher on A for the right encoding, SRs pass
//! through unchanged, and removing the pipe consumer forgets its SSRCs.

mod support;

use std::time::Duration;

use support::*;
use tern_sfu::rtcp::{self, RtcpPacket};
use tern_sfu::*;

const FRAME: Duration = Duration::from_millis(33);
/// A's end of the pipe.
const PIPE_A: TransportId = TransportId(50);
/// B's end of the pipe.
const PIPE_B: TransportId = TransportId(60);
/// B's subscriber.
const SUB: TransportId = TransportId(70);
const LOW: u32 = 0x1000;
const HIGH: u32 = 0x2000;

/// Two routers and the pipe between them.
struct Cascade {
    a: World,
    b: World,
    /// Everything A sent into the pipe.
    piped: Vec<Vec<u8>>,
    /// Everything B sent back up the pipe.
    upstream: Vec<Vec<u8>>,
    pipe_consumer: ConsumerId,
    b_consumer: ConsumerId,
}

impl Cascade {
    fn new() -> Cascade {
        let mut a = World::new();
        let mut b = World::new();
        b.now = a.now;
        let pa = a
            .router
            .add_producer(video_producer(Codec::Vp8, &[LOW, HIGH]))
            .unwrap();
        let pipe_consumer = a.router.add_pipe_consumer(pa, PIPE_A).unwrap();
        assert_eq!(a.router.is_pipe_consumer(pipe_consumer), Some(true));
        let mut far = video_producer(Codec::Vp8, &[LOW, HIGH]);
        far.transport = PIPE_B;
        let pb = b.router.add_producer(far).unwrap();
        let b_consumer = b.add_consumer(consumer(pb, SUB.0, 0xB0B)).unwrap();
        Cascade {
            a,
            b,
            piped: Vec::new(),
            upstream: Vec::new(),
            pipe_consumer,
            b_consumer,
        }
    }

    /// Carry what each router sent into the pipe to the other, dropping the
    /// A → B packets `lose` picks; repeat until the pipe is quiet.
    fn shuttle(&mut self, lose: &mut dyn FnMut(&[u8]) -> bool) {
        for _ in 0..8 {
            let down = self.a.sent.remove(&PIPE_A).unwrap_or_default();
            let up = self.b.sent.remove(&PIPE_B).unwrap_or_default();
            if down.is_empty() && up.is_empty() {
                return;
            }
            for d in down {
                self.piped.push(d.clone());
                if !lose(&d) {
                    let _ = self.b.input(PIPE_B, &d);
                }
            }
            for u in up {
                self.upstream.push(u.clone());
                let _ = self.a.input(PIPE_A, &u);
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        self.a.advance(d);
        self.b.now = self.a.now;
        self.b.timers();
        self.shuttle(&mut |_| false);
    }
}

fn feedback(d: &[u8]) -> Vec<(u8, u32)> {
    rtcp::compound(d)
        .filter_map(Result::ok)
        .filter_map(|p| match p {
            RtcpPacket::Pli(p) => Some((1, p.media.get())),
            RtcpPacket::Nack(n) => Some((205, n.media.get())),
            RtcpPacket::Fir(_) => Some((4, 0)),
            _ => None,
        })
        .collect()
}

#[test]
fn every_encoding_crosses_the_pipe_unchanged_and_reaches_the_far_subscriber() {
    let mut c = Cascade::new();
    let mut low = Stream::new(Codec::Vp8, LOW, 0, 65_530, 1000);
    let mut high = Stream::new(Codec::Vp8, HIGH, 1, 100, 5000);
    let mut sent = Vec::new();
    for f in 0..20 {
        for s in [&mut low, &mut high] {
            for pkt in s.frame(f % 10 == 0, 3, None, false) {
                // One copy per pipe consumer, as it arrived.
                assert_eq!(c.a.input(PUB, &pkt), Ok(1));
                sent.push(pkt);
            }
        }
        c.shuttle(&mut |_| false);
        c.advance(FRAME);
    }
    let rtp: Vec<_> = c.piped.iter().filter(|p| !rtcp::is_rtcp(p)).collect();
    assert_eq!(rtp.len(), sent.len());
    for (got, want) in rtp.iter().zip(&sent) {
        assert_eq!(got, &want, "byte for byte, both encodings");
    }
    // B's subscriber gets the highest encoding, rewritten and continuous.
    let rx = c.b.rtp_to(SUB);
    assert_eq!(rx.len(), 60);
    assert_contiguous(&rx);
    assert!(rx
        .iter()
        .all(|r| r.ssrc == 0xB0B && r.tag(Codec::Vp8).0 == 1));
    let es: Vec<_> =
        c.a.router
            .producer_stats(first_producer(&c.a))
            .unwrap()
            .collect();
    assert_eq!(es[0].packets + es[1].packets, 120);
    let cs = c.a.router.consumer_stats(c.pipe_consumer).unwrap();
    assert_eq!(cs.packets, 120);
}

fn first_producer(w: &World) -> ProducerId {
    w.router.producer_ids().next().unwrap()
}

#[test]
fn a_loss_on_the_pipe_is_nacked_by_b_and_answered_from_as_buffer() {
    let mut c = Cascade::new();
    let mut high = Stream::new(Codec::Vp8, HIGH, 1, 10, 0);
    let mut low = Stream::new(Codec::Vp8, LOW, 0, 10, 0);
    let mut lost_once = false;
    for f in 0..10 {
        let mut pkts = low.frame(f == 0, 1, None, false);
        pkts.extend(high.frame(f == 0, 3, None, false));
        for pkt in pkts {
            c.a.input(PUB, &pkt).unwrap();
        }
        // The pipe loses high's packet 20 once.
        c.shuttle(&mut |d| {
            let lose = !lost_once
                && !rtcp::is_rtcp(d)
                && rtp::RtpPacket::parse(d)
                    .is_ok_and(|p| p.ssrc().get() == HIGH && p.seq().get() == 20);
            lost_once |= lose;
            lose
        });
        c.advance(FRAME);
    }
    assert!(lost_once);
    // B asked A over the pipe for exactly that packet ...
    let nacks: Vec<_> = c
        .upstream
        .iter()
        .flat_map(|d| feedback(d))
        .filter(|f| f.0 == 205)
        .collect();
    assert_eq!(nacks, vec![(205, HIGH)]);
    assert_eq!(
        c.a.router
            .consumer_stats(c.pipe_consumer)
            .unwrap()
            .retransmitted,
        1
    );
    assert_eq!(c.a.router.stats().retransmitted, 1);
    // ... and its subscriber has every packet of the high encoding.
    let rx = c.b.rtp_to(SUB);
    let mut seqs: Vec<u16> = rx.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 30);
    assert_eq!(seqs[29] - seqs[0], 29, "no gap left");
    let es: Vec<_> =
        c.b.router
            .producer_stats(first_producer(&c.b))
            .unwrap()
            .collect();
    assert_eq!((es[1].packets, es[1].lost, es[1].recovered), (30, 0, 1));
}

#[test]
fn subscriber_nack_is_answered_on_b_and_pli_reaches_the_publisher_on_a() {
    let mut c = Cascade::new();
    let mut high = Stream::new(Codec::Vp8, HIGH, 1, 500, 0);
    for f in 0..10 {
        for pkt in high.frame(f == 0, 3, None, false) {
            c.a.input(PUB, &pkt).unwrap();
        }
        c.shuttle(&mut |_| false);
        c.advance(FRAME);
    }
    let rx = c.b.rtp_to(SUB);
    assert_eq!(rx.len(), 30);
    // The subscriber lost two packets: B answers from its own buffer.
    c.b.clear_sent();
    c.a.clear_sent();
    c.upstream.clear();
    let lost = [rx[4].seq, rx[7].seq];
    assert_eq!(c.b.input(SUB, &nack(0xB0B, &lost)), Ok(2));
    let again = c.b.rtp_to(SUB);
    assert_eq!(again[0].bytes, rx[4].bytes);
    assert_eq!(again[1].bytes, rx[7].bytes);
    c.shuttle(&mut |_| false);
    assert!(c.upstream.is_empty(), "nothing crossed the pipe for it");
    assert_eq!(c.a.router.stats().retransmitted, 0);
    assert_eq!(
        c.b.router
            .consumer_stats(c.b_consumer)
            .unwrap()
            .retransmitted,
        2
    );

    // A PLI from the subscriber: B → pipe (about HIGH) → A → publisher.
    c.advance(Duration::from_secs(1));
    c.a.clear_sent();
    c.upstream.clear();
    c.b.input(SUB, &pli(0xB0B)).unwrap();
    c.shuttle(&mut |_| false);
    let up: Vec<_> = c.upstream.iter().flat_map(|d| feedback(d)).collect();
    assert_eq!(up, vec![(1, HIGH)]);
    assert_eq!(c.a.key_frame_requests(), vec![HIGH]);
    assert_eq!(
        c.a.router
            .consumer_stats(c.pipe_consumer)
            .unwrap()
            .plis_received,
        1
    );
}

#[test]
fn sender_reports_pass_the_pipe_unchanged_and_rrs_come_back() {
    let mut c = Cascade::new();
    let mut high = Stream::new(Codec::Vp8, HIGH, 1, 0, 777);
    for f in 0..5 {
        for pkt in high.frame(f == 0, 2, None, false) {
            c.a.input(PUB, &pkt).unwrap();
        }
        c.shuttle(&mut |_| false);
        c.advance(FRAME);
    }
    c.piped.clear();
    let sr = high.sender_report(0x1234_5678_0000_0000, 10, 510);
    c.a.input(PUB, &sr).unwrap();
    c.shuttle(&mut |_| false);
    let through: Vec<_> = c.piped.iter().filter(|p| rtcp::is_rtcp(p)).collect();
    assert_eq!(through, vec![&sr], "the SR as the publisher sent it");
    // B rewrote it for its subscriber.
    let sub_srs = c.b.rtcp_to(SUB);
    assert_eq!(sub_srs.len(), 1);
    // Within a second B reports on the pipe producer; A files the blocks
    // under its pipe consumer.
    c.advance(Duration::from_millis(1100));
    assert!(c.b.router.stats().receiver_reports_sent >= 1);
    assert!(c.a.router.stats().report_blocks_received >= 1);
}

#[test]
fn pipe_consumers_refuse_duplicates_and_forget_their_ssrcs_when_removed() {
    let mut c = Cascade::new();
    let p = first_producer(&c.a);
    assert_eq!(
        c.a.router.add_pipe_consumer(p, PIPE_A),
        Err(RouterError::AlreadyPiped)
    );
    // A plain consumer whose SSRC is one of the piped ones clashes on that transport.
    assert_eq!(
        c.a.router.add_consumer(consumer(p, PIPE_A.0, HIGH)).err(),
        Some(RouterError::SsrcInUse(Ssrc::new(HIGH)))
    );
    c.a.router.remove_consumer(c.pipe_consumer).unwrap();
    let mut high = Stream::new(Codec::Vp8, HIGH, 1, 0, 0);
    for pkt in high.frame(true, 2, None, false) {
        assert_eq!(c.a.input(PUB, &pkt), Ok(0));
    }
    assert!(!c.a.sent.contains_key(&PIPE_A));
    // Feedback from the far side about HIGH is now a stray: counted.
    let before = c.a.router.stats().dropped(DropReason::UnknownSsrc);
    c.a.input(PIPE_A, &pli(HIGH)).unwrap();
    assert_eq!(
        c.a.router.stats().dropped(DropReason::UnknownSsrc),
        before + 1
    );
    // A fresh pipe consumer takes the SSRCs again; removing the producer
    // closes it.
    let again = c.a.router.add_pipe_consumer(p, PIPE_A).unwrap();
    c.a.router.remove_producer(p).unwrap();
    assert!(c
        .a
        .events()
        .contains(&Event::ConsumerClosed { consumer: again }));
    c.a.input(PIPE_A, &pli(HIGH)).unwrap();
    assert_eq!(
        c.a.router.stats().dropped(DropReason::UnknownSsrc),
        before + 2
    );
}

#[test]
fn rid_encodings_bound_after_piping_take_pipe_feedback() {
    let mut a = World::new();
    let mut params = video_producer(Codec::Vp8, &[]);
    params.encodings = vec![EncodingParams {
        ssrc: None,
        rid: Some("h".into()),
        rtx_ssrc: None,
    }];
    params.rid_extension_id = Some(4);
    let p = a.router.add_producer(params).unwrap();
    let pc = a.router.add_pipe_consumer(p, PIPE_A).unwrap();
    let mut s = Stream::new(Codec::Vp8, 0x7777, 0, 0, 0);
    s.extensions = vec![(4, b"h".to_vec())];
    for pkt in s.frame(true, 2, None, false) {
        assert_eq!(a.input(PUB, &pkt), Ok(1));
    }
    // The piped packets keep the RID extension (the far side binds by it too).
    let piped = a.rtp_to(PIPE_A);
    assert_eq!(piped.len(), 2);
    assert!(rtp::RtpPacket::parse(&piped[0].bytes).unwrap().extension(4) == Some(&b"h"[..]));
    a.clear_sent();
    a.input(PIPE_A, &nack(0x7777, &[1])).unwrap();
    assert_eq!(a.rtp_to(PIPE_A).len(), 1);
    assert_eq!(a.router.consumer_stats(pc).unwrap().retransmitted, 1);
}
