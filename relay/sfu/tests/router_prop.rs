//! Random traffic and control calls never panic the router, and what each
//! consumer receives stays a well-formed stream: one sequence number never
//! names two different packets (a retransmission is byte-identical to the
//! original), and every change of simulcast encoding — and the very first
//! packet — starts on a key frame.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use support::*;
use tern_sfu::*;

#[derive(Debug, Clone)]
enum Op {
    /// A frame on encoding `enc` with `packets` packets.
    Frame {
        enc: usize,
        key: bool,
        packets: u8,
        tid: u8,
        sync: bool,
    },
    /// Send an earlier packet again (duplicate or late).
    Replay(usize),
    /// Lose the next packet of an encoding upstream.
    Skip(usize),
    Garbage(Vec<u8>),
    Nack {
        consumer: usize,
        back: Vec<u16>,
    },
    Pli(usize),
    Layers {
        consumer: usize,
        spatial: Option<u8>,
        temporal: Option<u8>,
    },
    Pause(usize),
    Resume(usize),
    SenderReport(usize),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..3, prop::bool::weighted(0.1), 1u8..4, 0u8..3, any::<bool>())
            .prop_map(|(enc, key, packets, tid, sync)| Op::Frame { enc, key, packets, tid, sync }),
        1 => any::<usize>().prop_map(Op::Replay),
        1 => (0usize..3).prop_map(Op::Skip),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Op::Garbage),
        1 => (0usize..3, prop::collection::vec(0u16..40, 1..6)).prop_map(|(consumer, back)| Op::Nack { consumer, back }),
        1 => (0usize..3).prop_map(Op::Pli),
        1 => (0usize..3, prop::option::of(0u8..4), prop::option::of(0u8..3))
            .prop_map(|(consumer, spatial, temporal)| Op::Layers { consumer, spatial, temporal }),
        1 => (0usize..3).prop_map(Op::Pause),
        1 => (0usize..3).prop_map(Op::Resume),
        1 => (0usize..3).prop_map(Op::SenderReport),
        3 => (0u16..400).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn random_traffic_keeps_every_consumer_stream_well_formed(ops in prop::collection::vec(op(), 1..250)) {
        let mut w = World::new();
        let p = w.router.add_producer(video_producer(Codec::Vp8, &[0xA0, 0xA1, 0xA2])).unwrap();
        for i in 0..3u32 {
            w.add_consumer(consumer(p, 10 + i, 0xC0 + i)).unwrap();
        }
        let mut streams = [
            Stream::new(Codec::Vp8, 0xA0, 0, 65_400, 0),
            Stream::new(Codec::Vp8, 0xA1, 1, 0, 1 << 31),
            Stream::new(Codec::Vp8, 0xA2, 2, 30_000, u32::MAX - 10_000),
        ];
        let mut history: Vec<Vec<u8>> = Vec::new();
        let mut skip = [false; 3];
        for op in ops {
            match op {
                Op::Frame { enc, key, packets, tid, sync } => {
                    for pkt in streams[enc].frame(key, packets, Some(tid), sync) {
                        if std::mem::take(&mut skip[enc]) {
                            continue;
                        }
                        let _ = w.input(PUB, &pkt);
                        history.push(pkt);
                    }
                }
                Op::Replay(i) if !history.is_empty() => {
                    let pkt = history[i % history.len()].clone();
                    let _ = w.input(PUB, &pkt);
                }
                Op::Replay(_) => {}
                Op::Skip(enc) => skip[enc] = true,
                Op::Garbage(g) => {
                    let _ = w.input(PUB, &g);
                    let _ = w.input(TransportId(10), &g);
                }
                Op::Nack { consumer, back } => {
                    let t = TransportId(10 + consumer as u32);
                    let last = w.rtp_to(t).last().map_or(1000, |r| r.seq);
                    let lost: Vec<u16> = back.iter().map(|b| last.wrapping_sub(*b)).collect();
                    let _ = w.input(t, &nack(0xC0 + consumer as u32, &lost));
                }
                Op::Pli(c) => {
                    let _ = w.input(TransportId(10 + c as u32), &pli(0xC0 + c as u32));
                }
                Op::Layers { consumer, spatial, temporal } => {
                    w.router.set_preferred_layers(w.ids[consumer], spatial, temporal).unwrap();
                }
                Op::Pause(c) => w.router.pause_consumer(w.ids[c]).unwrap(),
                Op::Resume(c) => w.router.resume_consumer(w.ids[c]).unwrap(),
                Op::SenderReport(enc) => {
                    let sr = streams[enc].sender_report(1 << 40, 1, 1);
                    let _ = w.input(PUB, &sr);
                }
                Op::Advance(ms) => w.advance(Duration::from_millis(u64::from(ms))),
            }
        }
        for i in 0..3u32 {
            let rx = w.rtp_to(TransportId(10 + i));
            let mut by_seq: HashMap<u16, &Vec<u8>> = HashMap::new();
            let mut last_enc = None;
            for r in &rx {
                prop_assert_eq!(r.ssrc, 0xC0 + i);
                if let Some(prev) = by_seq.get(&r.seq) {
                    prop_assert_eq!(*prev, &r.bytes, "seq {} names two packets", r.seq);
                    continue; // a retransmission
                }
                by_seq.insert(r.seq, &r.bytes);
                let enc = r.tag(Codec::Vp8).0;
                if last_enc != Some(enc) {
                    prop_assert!(
                        Codec::Vp8.frame_info(&r.payload).key_frame_start,
                        "consumer {} starts encoding {} without a key frame", i, enc
                    );
                }
                last_enc = Some(enc);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The cargo-fuzz bodies on stable: arbitrary bytes into the parsers,
    /// SRTP and a router never panic.
    #[test]
    fn fuzz_bodies_never_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
        fuzz::rtp(&data);
        fuzz::rtcp(&data);
        fuzz::srtp(&data);
        fuzz::router(&data, t0());
    }

    /// Valid-looking RTP (version 2, known SSRC and payload type) with
    /// arbitrary rest, so the router's deeper paths get random input too.
    #[test]
    fn router_survives_plausible_random_rtp(chunks in prop::collection::vec((any::<u8>(), any::<u16>(), prop::collection::vec(any::<u8>(), 0..60)), 1..80)) {
        let mut data = Vec::new();
        for (flags, seq, tail) in chunks {
            let mut pkt = vec![0x80 | (flags & 0x3F), 96 | (flags & 0x80)];
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(&[0, 0, 0, seq as u8, 0, 0, 0, 1]);
            pkt.extend_from_slice(&tail);
            pkt.truncate(255);
            // Length prefix n: n % 3 == 0 routes it from the publisher's transport.
            let n = (pkt.len() / 3 * 3) as u8;
            pkt.truncate(usize::from(n));
            data.push(n);
            data.extend_from_slice(&pkt);
        }
        fuzz::router(&data, t0());
    }
}
