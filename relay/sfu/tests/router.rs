//! Virtual-time tests of the forwarding core: fan-out with loss, simulcast
//! switches on key frames, temporal layers, pause/resume continuity, NACKs
//! answered from the buffer, PLI throttling, SR rewrite and RTT, RID
//! binding, and bad input counted without disturbing anything.

mod support;

use std::time::Duration;

use support::*;
use tern_sfu::rtcp::{self, RtcpPacket};
use tern_sfu::*;

const FRAME: Duration = Duration::from_millis(33);

#[test]
fn one_publisher_to_many_consumers_keeps_upstream_gaps_and_rewrites_headers() {
    let mut w = World::new();
    let p = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0x1111]))
        .unwrap();
    let n = 8u32;
    for i in 0..n {
        w.add_consumer(consumer(p, 10 + i, 0x2000 + i)).unwrap();
    }
    // Sequence numbers cross the 16-bit wrap; every 7th packet is lost upstream.
    let mut s = Stream::new(Codec::Vp8, 0x1111, 0, 65_500, 1_000);
    let mut arrived = Vec::new();
    let mut lost = 0;
    let mut k = 0;
    for f in 0..60 {
        for pkt in s.frame(f == 0 || f == 30, 3, None, false) {
            k += 1;
            if k % 7 == 3 {
                lost += 1;
                continue;
            }
            assert_eq!(w.input(PUB, &pkt), Ok(n as usize));
            arrived.push(pkt);
        }
        w.advance(FRAME);
    }
    let orig: Vec<_> = arrived
        .iter()
        .map(|b| rtp::RtpPacket::parse(b).unwrap())
        .collect();
    for i in 0..n {
        let rx = w.rtp_to(TransportId(10 + i));
        assert_eq!(rx.len(), arrived.len(), "consumer {i}");
        for (r, o) in rx.iter().zip(&orig) {
            assert_eq!(r.ssrc, 0x2000 + i);
            assert_eq!(r.pt, VP8_PT);
            assert_eq!(&r.payload[..], o.payload());
            assert_eq!(r.marker, o.marker());
            // Upstream gaps stay gaps (the subscriber NACKs them); spacing kept.
            assert_eq!(r.seq.wrapping_sub(1000), o.seq().get().wrapping_sub(65_500));
            assert_eq!(r.ts.wrapping_sub(50_000), o.timestamp().wrapping_sub(1_000));
        }
        let cs = w.router.consumer_stats(w.ids[i as usize]).unwrap();
        assert_eq!(cs.packets, arrived.len() as u64);
        assert_eq!(cs.spatial_layer, Some(0));
    }
    assert_eq!(
        w.router.stats().rtp_forwarded,
        u64::from(n) * arrived.len() as u64
    );
    let es: Vec<_> = w.router.producer_stats(p).unwrap().collect();
    assert_eq!(es[0].packets, arrived.len() as u64);
    assert_eq!(es[0].lost, lost);
    assert_eq!(es[0].key_frames, 2);
}

#[test]
fn audio_is_forwarded_from_the_first_packet() {
    let mut w = World::new();
    let p = w.router.add_producer(audio_producer(0xA)).unwrap();
    w.add_consumer(consumer(p, 10, 0xB)).unwrap();
    let mut s = Stream::new(Codec::Opus, 0xA, 0, 7, 123);
    for _ in 0..10 {
        for pkt in s.frame(false, 1, None, false) {
            assert_eq!(w.input(PUB, &pkt), Ok(1));
        }
        w.advance(Duration::from_millis(20));
    }
    let rx = w.rtp_to(TransportId(10));
    assert_eq!(rx.len(), 10);
    assert_contiguous(&rx);
    assert_eq!(rx[0].seq, 1000);
    assert_eq!(rx[1].ts - rx[0].ts, 960);
    assert!(
        w.key_frame_requests().is_empty(),
        "no key frames asked for audio"
    );
}

#[test]
fn simulcast_switches_exactly_on_key_frames_and_asks_for_them() {
    let mut w = World::new();
    let p = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0xA0, 0xA1, 0xA2]))
        .unwrap();
    let c = w.add_consumer(consumer(p, 10, 0xC0)).unwrap();
    let mut streams = [
        Stream::new(Codec::Vp8, 0xA0, 0, 100, 10_000),
        Stream::new(Codec::Vp8, 0xA1, 1, 20_000, 777_777),
        Stream::new(Codec::Vp8, 0xA2, 2, 65_530, 4_000_000_000),
    ];
    for f in 0..60u32 {
        if f == 10 {
            w.router.set_preferred_layers(c, Some(0), None).unwrap();
            w.timers();
            assert_eq!(
                w.key_frame_requests(),
                vec![0xA0],
                "down-switch asks layer 0"
            );
        }
        if f == 30 {
            w.clear_sent_rtcp();
            w.router.set_preferred_layers(c, None, None).unwrap();
            w.timers();
            assert_eq!(w.key_frame_requests(), vec![0xA2], "up-switch asks layer 2");
        }
        for s in streams.iter_mut() {
            let key = f == 0 || (s.encoding == 0 && f == 20) || (s.encoding == 2 && f == 40);
            for pkt in s.frame(key, 3, None, false) {
                w.input(PUB, &pkt).unwrap();
            }
        }
        w.advance(FRAME);
    }
    let rx = w.rtp_to(TransportId(10));
    let tags: Vec<_> = rx.iter().map(|r| r.tag(Codec::Vp8)).collect();
    // Layer 2 until frame 20, layer 0 from its key frame at 20, layer 2 again
    // from its key frame at 40 (layer 0's frame 40 arrives first and is sent).
    for (r, (enc, frame, _)) in rx.iter().zip(&tags) {
        match frame {
            0..=19 => assert_eq!(*enc, 2, "frame {frame}"),
            20..=39 => assert_eq!(*enc, 0, "frame {frame}"),
            40 => {}
            _ => assert_eq!(*enc, 2, "frame {frame}"),
        }
        assert_eq!(r.ssrc, 0xC0);
    }
    assert_eq!(rx.len(), 60 * 3 + 3);
    // Each switch starts on the first packet of a key frame.
    for (at, enc) in [(20u32, 0u8), (40, 2)] {
        let i = tags.iter().position(|t| t.1 == at && t.0 == enc).unwrap();
        assert_eq!(tags[i].2, 0);
        let fi = Codec::Vp8.frame_info(&rx[i].payload);
        assert!(fi.key_frame_start, "switch at frame {at} is on a key frame");
    }
    // One unbroken stream: consecutive sequence numbers, timestamps rising by
    // about one frame time across each switch (one tick when the new layer's
    // key frame arrives at the same instant as the old layer's frame).
    assert_contiguous(&rx);
    for w2 in rx.windows(2) {
        let d = w2[1].ts.wrapping_sub(w2[0].ts);
        assert!(d <= 1 || (2900..=3100).contains(&d), "timestamp step {d}");
    }
    let ev: Vec<_> = w
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::LayersChanged { spatial, .. } => spatial,
            _ => None,
        })
        .collect();
    assert_eq!(ev, vec![2, 0, 2]);
    // The three encodings number their pictures differently; the consumer
    // sees one continuous PictureID sequence across both switches.
    assert_vp8_continuous(&rx);
    let cs = w.router.consumer_stats(c).unwrap();
    assert_eq!(cs.layer_switches, 3);
    assert_eq!(cs.spatial_layer, Some(2));
}

#[test]
fn h264_switches_on_idr_fragments() {
    let mut w = World::new();
    let p = w
        .router
        .add_producer(video_producer(Codec::H264, &[0xB0, 0xB1]))
        .unwrap();
    let c = w.add_consumer(consumer(p, 10, 0xC0)).unwrap();
    let mut streams = [
        Stream::new(Codec::H264, 0xB0, 0, 1, 1),
        Stream::new(Codec::H264, 0xB1, 1, 30_000, 9),
    ];
    for f in 0..30u32 {
        if f == 5 {
            w.router.set_preferred_layers(c, Some(0), None).unwrap();
            w.timers();
        }
        for s in streams.iter_mut() {
            let key = f == 0 || (s.encoding == 0 && f == 12);
            for pkt in s.frame(key, 4, None, false) {
                w.input(PUB, &pkt).unwrap();
            }
        }
        w.advance(FRAME);
    }
    let rx = w.rtp_to(TransportId(10));
    let tags: Vec<_> = rx.iter().map(|r| r.tag(Codec::H264)).collect();
    let first0 = tags.iter().position(|t| t.0 == 0).unwrap();
    assert_eq!(
        tags[first0],
        (0, 12, 0),
        "layer 0 starts at its IDR's first fragment"
    );
    assert!(tags[..first0].iter().all(|t| t.0 == 1 && t.1 < 12));
    assert!(tags[first0..].iter().all(|t| t.0 == 0));
    assert_contiguous(&rx);
}

/// An H.264 key frame opens with several packets that each look like its
/// start (SPS, then the IDR slice's first fragment): it is one key frame, and
/// a switch happens only at its first packet. A switch asked for between
/// them (after the SPS went by) waits for the next key frame instead of
/// starting at the IDR slice without its parameter sets, which a decoder
/// switching resolution cannot decode.
#[test]
fn h264_key_frame_with_parameter_sets_counts_once_and_switches_only_at_its_start() {
    let mut w = World::new();
    let p = w
        .router
        .add_producer(video_producer(Codec::H264, &[0xB0, 0xB1]))
        .unwrap();
    let c = w.add_consumer(consumer(p, 10, 0xC0)).unwrap();
    let mut low = Stream::new(Codec::H264, 0xB0, 0, 1, 1);
    let mut high = Stream::new(Codec::H264, 0xB1, 1, 30_000, 9);
    for f in 0..12u32 {
        for s in [&mut low, &mut high] {
            let packets = if f == 0 || (s.encoding == 0 && (f == 4 || f == 8)) {
                s.h264_key_frame_with_parameter_sets(3)
            } else {
                s.frame(false, 2, None, false)
            };
            for (i, pkt) in packets.iter().enumerate() {
                w.input(PUB, pkt).unwrap();
                if f == 4 && s.encoding == 0 && i == 0 {
                    // Between the low key frame's SPS and the rest of it.
                    w.router.set_preferred_layers(c, Some(0), None).unwrap();
                    w.timers();
                }
            }
        }
        w.advance(FRAME);
    }
    let es: Vec<_> = w.router.producer_stats(p).unwrap().collect();
    assert_eq!((es[0].key_frames, es[1].key_frames), (3, 1), "{es:?}");
    let rx = w.rtp_to(TransportId(10));
    let tags: Vec<_> = rx.iter().map(|r| r.tag(Codec::H264)).collect();
    let first0 = tags.iter().position(|t| t.0 == 0).unwrap();
    assert_eq!(
        tags[first0],
        (0, 8, 0),
        "switched at the next key frame's SPS"
    );
    assert_eq!(rx[first0].payload[0] & 0x1F, 7, "an SPS first");
    assert!(tags[..first0].iter().all(|t| t.0 == 1));
    assert!(tags[first0..].iter().all(|t| t.0 == 0));
    assert_eq!(w.router.consumer_stats(c).unwrap().layer_switches, 2);
    assert_contiguous(&rx);
}

#[test]
fn vp8_temporal_layers_are_filtered_without_gaps_and_raised_at_sync_frames() {
    let mut w = World::new();
    let p = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0x1]))
        .unwrap();
    let mut low = consumer(p, 10, 0x10);
    low.preferred_temporal = Some(0);
    let low = w.add_consumer(low).unwrap();
    w.add_consumer(consumer(p, 11, 0x11)).unwrap();
    let mut s = Stream::new(Codec::Vp8, 0x1, 0, 500, 0);
    let pattern = [0u8, 2, 1, 2];
    for f in 0..24u32 {
        if f == 6 {
            w.router.set_preferred_layers(low, None, Some(2)).unwrap();
        }
        let tid = pattern[f as usize % 4];
        let sync = f == 9 || f == 10;
        for pkt in s.frame(f == 0, 2, Some(tid), sync) {
            w.input(PUB, &pkt).unwrap();
        }
        w.advance(FRAME);
    }
    let all = w.rtp_to(TransportId(11));
    assert_eq!(all.len(), 48);
    assert_contiguous(&all);
    let rx = w.rtp_to(TransportId(10));
    let frames: Vec<u32> = rx.iter().map(|r| r.tag(Codec::Vp8).1).step_by(2).collect();
    // Base layer only (0, 4) until the raise; frame 7 (TL2, no sync) still
    // held back, 8 is base; from the TL2 sync frame 9 on, everything.
    let mut want = vec![0, 4, 8];
    want.extend(9..24);
    assert_eq!(frames, want);
    assert_contiguous(&rx);
    // PictureIDs and TL0PICIDX stay continuous although frames were left out.
    assert_vp8_continuous(&rx);
    assert_vp8_continuous(&all);
    let cs = w.router.consumer_stats(low).unwrap();
    // Frames 1, 2, 3, 5, 6 and 7, two packets each.
    assert_eq!(cs.dropped_temporal, 2 * 6);
}

#[test]
fn pause_and_resume_continue_the_stream_and_video_waits_for_a_key_frame() {
    let mut w = World::new();
    let a = w.router.add_producer(audio_producer(0xA)).unwrap();
    let v = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0xF]))
        .unwrap();
    let ca = w.add_consumer(consumer(a, 10, 0xAA)).unwrap();
    let cv = w.add_consumer(consumer(v, 10, 0xFF)).unwrap();
    let mut sa = Stream::new(Codec::Opus, 0xA, 0, 40_000, 0);
    let mut sv = Stream::new(Codec::Vp8, 0xF, 0, 9, 0);
    let mut step = |w: &mut World, f: u32| {
        for pkt in sa.frame(false, 1, None, false) {
            w.input(PUB, &pkt).unwrap();
        }
        if f % 2 == 0 {
            for pkt in sv.frame(f == 0 || f == 90, 2, None, false) {
                w.input(PUB, &pkt).unwrap();
            }
        }
        w.advance(Duration::from_millis(20));
    };
    for f in 0..50 {
        step(&mut w, f);
    }
    w.router.pause_consumer(ca).unwrap();
    w.router.pause_consumer(cv).unwrap();
    assert!(w.router.consumer_stats(ca).unwrap().paused);
    for f in 50..80 {
        step(&mut w, f);
    }
    w.clear_sent_rtcp();
    w.router.resume_consumer(ca).unwrap();
    w.router.resume_consumer(cv).unwrap();
    w.timers();
    assert_eq!(
        w.key_frame_requests(),
        vec![0xF],
        "resume asks for a key frame"
    );
    for f in 80..120 {
        step(&mut w, f);
    }
    let rx = w.rtp_to(TransportId(10));
    let audio: Vec<_> = rx.iter().filter(|r| r.ssrc == 0xAA).cloned().collect();
    let video: Vec<_> = rx.iter().filter(|r| r.ssrc == 0xFF).cloned().collect();
    assert_eq!(audio.len(), 50 + 40);
    assert_contiguous(&audio);
    // Timestamps advance by the 31 packet times spent paused (30 skipped + 1).
    assert_eq!(audio[50].ts.wrapping_sub(audio[49].ts), 31 * 960);
    // Video: 25 frames before the pause, then nothing until the key frame at 90.
    assert_contiguous(&video);
    let frames: Vec<u32> = video.iter().map(|r| r.tag(Codec::Vp8).1).collect();
    let resumed = frames.iter().position(|&f| f >= 25).unwrap();
    assert_eq!(
        frames[resumed], 45,
        "video resumes at the key frame (frame index 45)"
    );
    assert!(
        Codec::Vp8
            .frame_info(&video[resumed].payload)
            .key_frame_start
    );
    // 840 ms between the last frame before the pause and the key frame.
    assert_eq!(
        video[resumed].ts.wrapping_sub(video[resumed - 1].ts),
        840 * 90
    );
}

#[test]
fn nacks_are_answered_from_the_buffer_byte_for_byte() {
    let mut w = World::new();
    let p = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0x5]))
        .unwrap();
    for i in 0..3 {
        w.add_consumer(consumer(p, 10 + i, 0x50 + i)).unwrap();
    }
    let mut s = Stream::new(Codec::Vp8, 0x5, 0, 65_530, 0);
    for f in 0..10 {
        for pkt in s.frame(f == 0, 3, None, false) {
            w.input(PUB, &pkt).unwrap();
        }
        w.advance(FRAME);
    }
    // Subscriber 1 lost its packets 1003, 1005 and 1006.
    let before = w.rtp_to(TransportId(11));
    w.clear_sent();
    assert_eq!(
        w.input(TransportId(11), &nack(0x51, &[1003, 1005, 1006])),
        Ok(3)
    );
    let again = w.rtp_to(TransportId(11));
    let want: Vec<_> = before
        .iter()
        .filter(|r| [1003, 1005, 1006].contains(&r.seq))
        .map(|r| r.bytes.clone())
        .collect();
    assert_eq!(
        again.iter().map(|r| r.bytes.clone()).collect::<Vec<_>>(),
        want
    );
    assert!(
        w.rtp_to(TransportId(10)).is_empty(),
        "only the one who asked"
    );
    // Never sent, or too old: counted misses, nothing sent.
    w.clear_sent();
    assert_eq!(w.input(TransportId(11), &nack(0x51, &[5000])), Ok(0));
    w.advance(Duration::from_secs(2));
    w.clear_sent();
    assert_eq!(w.input(TransportId(11), &nack(0x51, &[1003])), Ok(0));
    let cs = w.router.consumer_stats(w.ids[1]).unwrap();
    assert_eq!(
        (cs.retransmitted, cs.nack_misses, cs.nacks_received),
        (3, 2, 3)
    );
    assert_eq!(w.router.stats().retransmitted, 3);
    // A NACK naming another transport's consumer is an unknown SSRC there.
    assert_eq!(w.input(TransportId(10), &nack(0x51, &[1003])), Ok(0));
    assert_eq!(w.router.stats().dropped(DropReason::UnknownSsrc), 1);
}

#[test]
fn retransmission_after_a_simulcast_switch_uses_the_right_encoding_and_timestamp() {
    let mut w = World::new();
    let p = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0xA0, 0xA1]))
        .unwrap();
    let c = w.add_consumer(consumer(p, 10, 0xC0)).unwrap();
    let mut st = [
        Stream::new(Codec::Vp8, 0xA0, 0, 100, 10_000),
        Stream::new(Codec::Vp8, 0xA1, 1, 7_000, 99_999),
    ];
    for f in 0..12u32 {
        if f == 4 {
            w.router.set_preferred_layers(c, Some(0), None).unwrap();
        }
        for s in st.iter_mut() {
            for pkt in s.frame(f == 0 || (s.encoding == 0 && f == 6), 2, None, false) {
                w.input(PUB, &pkt).unwrap();
            }
        }
        w.advance(FRAME);
    }
    let before = w.rtp_to(TransportId(10));
    let all: Vec<u16> = before.iter().map(|r| r.seq).collect();
    w.clear_sent();
    w.input(TransportId(10), &nack(0xC0, &all)).unwrap();
    let again = w.rtp_to(TransportId(10));
    assert_eq!(
        again.len(),
        before.len(),
        "every packet, from both encodings"
    );
    for (a, b) in again.iter().zip(&before) {
        assert_eq!(a.bytes, b.bytes);
    }
}

#[test]
fn key_frame_requests_are_throttled_per_encoding() {
    let mut w = World::new();
    let p = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0x7]))
        .unwrap();
    w.add_consumer(consumer(p, 10, 0x70)).unwrap();
    w.add_consumer(consumer(p, 11, 0x71)).unwrap();
    let mut s = Stream::new(Codec::Vp8, 0x7, 0, 0, 0);
    for pkt in s.frame(true, 1, None, false) {
        w.input(PUB, &pkt).unwrap();
    }
    w.timers();
    w.clear_sent_rtcp();
    let start = w.router.stats().key_frame_requests_sent;
    // A burst of PLIs from both subscribers: one goes out now.
    for i in 0..5 {
        w.input(TransportId(10 + i % 2), &pli(0x70 + i % 2))
            .unwrap();
    }
    assert_eq!(w.key_frame_requests(), vec![0x7]);
    // The rest is held back and sent once, when the interval has passed.
    for _ in 0..4 {
        w.advance(Duration::from_millis(100));
    }
    assert_eq!(w.key_frame_requests().len(), 1, "not before 500 ms");
    w.advance(Duration::from_millis(100));
    assert_eq!(
        w.key_frame_requests().len(),
        2,
        "the held request at 500 ms"
    );
    // Another burst inside the next interval, answered by a key frame
    // before it ends: the held request is dropped.
    w.input(TransportId(10), &pli(0x70)).unwrap();
    w.advance(Duration::from_millis(100));
    for pkt in s.frame(true, 1, None, false) {
        w.input(PUB, &pkt).unwrap();
    }
    for _ in 0..10 {
        w.advance(Duration::from_millis(100));
    }
    assert_eq!(w.key_frame_requests().len(), 2);
    let st = w.router.stats();
    assert_eq!(st.key_frame_requests_sent - start, 2);
    assert_eq!(st.key_frame_requests_throttled, 2);
    let cs = w.router.consumer_stats(w.ids[0]).unwrap();
    assert_eq!(cs.plis_received, 4);
    // Each request is a compound packet that starts with an RR.
    for d in w.rtcp_to(PUB) {
        assert!(matches!(
            rtcp::compound(&d).next(),
            Some(Ok(RtcpPacket::ReceiverReport(_)))
        ));
    }
}

#[test]
fn fir_producers_get_fir_with_increasing_sequence_numbers() {
    let mut w = World::new();
    let mut params = video_producer(Codec::Vp8, &[0x7]);
    params.key_frame_request = KeyFrameRequest::Fir;
    let p = w.router.add_producer(params).unwrap();
    w.add_consumer(consumer(p, 10, 0x70)).unwrap();
    let mut s = Stream::new(Codec::Vp8, 0x7, 0, 0, 0);
    w.input(PUB, &s.frame(false, 1, None, false)[0]).unwrap();
    w.timers(); // the new consumer needs a key frame
    w.advance(Duration::from_millis(600));
    let mut seqs = Vec::new();
    for d in w.rtcp_to(PUB) {
        for p in rtcp::compound(&d) {
            if let Ok(RtcpPacket::Fir(f)) = p {
                seqs.extend(f.entries().map(|e| (e.ssrc.get(), e.seq_nr)));
            }
        }
    }
    assert_eq!(seqs, vec![(0x7, 0), (0x7, 1)]);
}

#[test]
fn sender_reports_are_rewritten_per_consumer_and_receiver_reports_give_rtt() {
    let mut w = World::new();
    let p = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0x3]))
        .unwrap();
    w.add_consumer(consumer(p, 10, 0x30)).unwrap();
    let mut c1 = consumer(p, 11, 0x31);
    c1.initial_timestamp = 7;
    w.add_consumer(c1).unwrap();
    let paused = w.add_consumer(consumer(p, 12, 0x32)).unwrap();
    w.router.pause_consumer(paused).unwrap();
    let mut s = Stream::new(Codec::Vp8, 0x3, 0, 0, 1_000_000);
    for f in 0..5 {
        for pkt in s.frame(f == 0, 2, None, false) {
            w.input(PUB, &pkt).unwrap();
        }
        w.advance(FRAME);
    }
    w.clear_sent();
    let ntp = 0x0000_1234_5678_9ABC_u64 << 8;
    w.input(PUB, &s.sender_report(ntp, 99, 9999)).unwrap();
    for (t, ssrc, base) in [(10, 0x30, 50_000u32), (11, 0x31, 7)] {
        let d = w.rtcp_to(TransportId(t));
        assert_eq!(d.len(), 1);
        let Some(Ok(RtcpPacket::SenderReport(sr))) = rtcp::compound(&d[0]).next() else {
            panic!()
        };
        let i = sr.sender_info();
        assert_eq!(i.ssrc.get(), ssrc);
        assert_eq!(i.ntp, ntp);
        assert_eq!(
            i.rtp_timestamp,
            s.ts.wrapping_sub(1_000_000).wrapping_add(base)
        );
        assert_eq!(i.packet_count, 10);
        assert_eq!(i.octet_count, 10 * 51);
    }
    assert!(
        w.rtcp_to(TransportId(12)).is_empty(),
        "paused consumer gets no SR"
    );
    // The subscriber answers 150 ms later, having held the SR for 50 ms.
    w.advance(Duration::from_millis(150));
    let block = rtcp::ReportBlock {
        ssrc: Ssrc::new(0x30),
        fraction_lost: 12,
        cumulative_lost: 3,
        highest_seq: 70_000,
        jitter: 45,
        last_sr: (ntp >> 16) as u32,
        delay_since_last_sr: 65_536 / 20,
    };
    let mut buf = [0u8; 64];
    let n = rtcp::write_receiver_report(&mut buf, Ssrc::new(9), &[block]).unwrap();
    w.input(TransportId(10), &buf[..n]).unwrap();
    let cs = w.router.consumer_stats(w.ids[0]).unwrap();
    assert_eq!(
        (cs.fraction_lost, cs.cumulative_lost, cs.jitter),
        (12, 3, 45)
    );
    let rtt = cs.rtt.unwrap();
    assert!(
        rtt >= Duration::from_millis(99) && rtt <= Duration::from_millis(101),
        "{rtt:?}"
    );
    assert_eq!(w.router.stats().report_blocks_received, 1);
}

#[test]
fn rid_encodings_are_bound_from_header_extensions() {
    let mut w = World::new();
    let mut params = video_producer(Codec::Vp8, &[]);
    params.encodings = ["q", "h", "f"]
        .iter()
        .map(|r| EncodingParams {
            ssrc: None,
            rid: Some(r.to_string()),
            rtx_ssrc: None,
        })
        .collect();
    params.rid_extension_id = Some(10);
    params.mid_extension_id = Some(1);
    params.mid = Some("v0".into());
    let p = w.router.add_producer(params).unwrap();
    w.add_consumer(consumer(p, 10, 0xC0)).unwrap();
    let mut st: Vec<Stream> = ["q", "h", "f"]
        .iter()
        .enumerate()
        .map(|(i, rid)| {
            let mut s = Stream::new(Codec::Vp8, 0x100 + i as u32, i as u8, 0, 0);
            s.extensions = vec![(1, b"v0".to_vec()), (10, rid.as_bytes().to_vec())];
            s
        })
        .collect();
    // A stream with the right RID but another MID, and one with an unknown RID.
    let mut wrong_mid = Stream::new(Codec::Vp8, 0x200, 0, 0, 0);
    wrong_mid.extensions = vec![(1, b"v1".to_vec()), (10, b"q".to_vec())];
    let mut unknown_rid = Stream::new(Codec::Vp8, 0x201, 0, 0, 0);
    unknown_rid.extensions = vec![(1, b"v0".to_vec()), (10, b"x".to_vec())];
    for f in 0..6 {
        for s in st.iter_mut() {
            if f >= 3 {
                s.extensions.clear(); // bound: the SSRC alone is enough now
            }
            for pkt in s.frame(f == 0, 1, None, false) {
                w.input(PUB, &pkt).unwrap();
            }
        }
        assert_eq!(
            w.input(PUB, &wrong_mid.frame(true, 1, None, false)[0]),
            Err(DropReason::UnknownSsrc)
        );
        assert_eq!(
            w.input(PUB, &unknown_rid.frame(true, 1, None, false)[0]),
            Err(DropReason::UnknownSsrc)
        );
        w.advance(FRAME);
    }
    let bound: Vec<_> = w
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::EncodingBound { encoding, ssrc, .. } => Some((encoding, ssrc.get())),
            _ => None,
        })
        .collect();
    assert_eq!(bound, vec![(0, 0x100), (1, 0x101), (2, 0x102)]);
    let rx = w.rtp_to(TransportId(10));
    assert_eq!(rx.len(), 6);
    assert!(rx.iter().all(|r| r.tag(Codec::Vp8).0 == 2));
    let ssrcs: Vec<_> = w
        .router
        .producer_stats(p)
        .unwrap()
        .map(|e| e.ssrc.map(Ssrc::get))
        .collect();
    assert_eq!(ssrcs, vec![Some(0x100), Some(0x101), Some(0x102)]);
}

#[test]
fn bad_input_is_counted_and_disturbs_nothing() {
    let mut w = World::new();
    let p = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0x1]))
        .unwrap();
    w.add_consumer(consumer(p, 10, 0x10)).unwrap();
    let mut s = Stream::new(Codec::Vp8, 0x1, 0, 0, 0);
    let good = s.frame(true, 1, None, false).remove(0);
    assert_eq!(w.input(PUB, &good), Ok(1));
    assert_eq!(w.input(PUB, &[0x80, 96, 0]), Err(DropReason::MalformedRtp));
    assert_eq!(w.input(PUB, &[0x40; 20]), Err(DropReason::MalformedRtp));
    let mut other = Stream::new(Codec::Vp8, 0x999, 0, 0, 0);
    assert_eq!(
        w.input(PUB, &other.frame(true, 1, None, false)[0]),
        Err(DropReason::UnknownSsrc)
    );
    let mut wrong_pt = good.clone();
    wrong_pt[1] = 100;
    assert_eq!(w.input(PUB, &wrong_pt), Err(DropReason::UnknownPayloadType));
    // Media from the right SSRC on the wrong transport is unknown there.
    assert_eq!(
        w.input(TransportId(10), &good),
        Err(DropReason::UnknownSsrc)
    );
    assert_eq!(
        w.input(PUB, &[0x80, 200, 0, 9]),
        Err(DropReason::MalformedRtcp)
    );
    assert_eq!(
        w.input(PUB, &[0x81, 201, 0, 1, 0, 0, 0, 0]),
        Err(DropReason::MalformedRtcp)
    );
    let big = vec![0x80u8; 2000];
    assert_eq!(w.input(PUB, &big), Err(DropReason::TooLarge));
    // PLI for a consumer SSRC nobody has.
    w.input(TransportId(10), &pli(0x4242)).unwrap();
    let st = w.router.stats().clone();
    assert_eq!(st.dropped(DropReason::MalformedRtp), 2);
    assert_eq!(st.dropped(DropReason::UnknownSsrc), 3);
    assert_eq!(st.dropped(DropReason::UnknownPayloadType), 1);
    assert_eq!(st.dropped(DropReason::MalformedRtcp), 2);
    assert_eq!(st.dropped(DropReason::TooLarge), 1);
    // The stream goes on unharmed.
    assert_eq!(w.input(PUB, &s.frame(false, 1, None, false)[0]), Ok(1));
    let rx = w.rtp_to(TransportId(10));
    assert_eq!(rx.len(), 2);
    assert_contiguous(&rx);
}

#[test]
fn a_full_output_is_counted_and_the_gap_can_be_repaired_by_nack() {
    let mut w = World::new();
    w.out = Output::new(2, 1600);
    let p = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0x1]))
        .unwrap();
    for i in 0..4 {
        w.add_consumer(consumer(p, 10 + i, 0x10 + i)).unwrap();
    }
    let mut s = Stream::new(Codec::Vp8, 0x1, 0, 0, 0);
    assert_eq!(w.input(PUB, &s.frame(true, 1, None, false)[0]), Ok(2));
    assert_eq!(w.router.stats().dropped(DropReason::OutputFull), 2);
    assert!(w.rtp_to(TransportId(13)).is_empty());
    assert_eq!(w.input(TransportId(13), &nack(0x13, &[1000])), Ok(1));
    assert_eq!(w.rtp_to(TransportId(13))[0].seq, 1000);
}

#[test]
fn control_calls_validate_and_removal_closes_consumers() {
    let mut w = World::new();
    let mut bad = video_producer(Codec::Vp8, &[0x1]);
    bad.encodings.clear();
    assert_eq!(
        w.router.add_producer(bad),
        Err(RouterError::EncodingCount(0))
    );
    let mut bad = video_producer(Codec::Vp8, &[0x1, 0x1]);
    assert_eq!(
        w.router.add_producer(bad.clone()),
        Err(RouterError::SsrcInUse(Ssrc::new(1)))
    );
    bad.encodings[1] = EncodingParams {
        ssrc: None,
        rid: Some("h".into()),
        rtx_ssrc: None,
    };
    assert_eq!(
        w.router.add_producer(bad),
        Err(RouterError::EncodingUnaddressable(1))
    );
    let p = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0x1]))
        .unwrap();
    assert_eq!(
        w.router.add_producer(video_producer(Codec::Vp8, &[0x1])),
        Err(RouterError::SsrcInUse(Ssrc::new(1)))
    );
    let mut c = consumer(p, 10, 0x10);
    c.payload_types = vec![(pt(97), pt(98))];
    assert_eq!(
        w.add_consumer(c),
        Err(RouterError::UnmappedPayloadType(VP8_PT))
    );
    let mut c = consumer(p, 10, 0x10);
    c.payload_types = vec![(pt(VP8_PT), pt(120))];
    let c = w.add_consumer(c).unwrap();
    assert_eq!(w.router.producer_ids().collect::<Vec<_>>(), vec![p]);
    assert_eq!(w.router.consumer_ids().collect::<Vec<_>>(), vec![(c, p)]);
    assert_eq!(
        w.add_consumer(consumer(p, 10, 0x10)),
        Err(RouterError::SsrcInUse(Ssrc::new(0x10)))
    );
    let mut s = Stream::new(Codec::Vp8, 0x1, 0, 0, 0);
    w.input(PUB, &s.frame(true, 1, None, false)[0]).unwrap();
    assert_eq!(w.rtp_to(TransportId(10))[0].pt, 120, "payload type mapped");
    w.router.remove_producer(p).unwrap();
    assert_eq!(
        w.events().last(),
        Some(&Event::ConsumerClosed { consumer: c })
    );
    assert_eq!(w.router.counts(), (0, 0));
    assert_eq!(w.router.consumer_ids().count(), 0);
    assert_eq!(
        w.router.pause_consumer(c),
        Err(RouterError::UnknownConsumer(c))
    );
    assert_eq!(
        w.router.remove_producer(p),
        Err(RouterError::UnknownProducer(p))
    );
    assert_eq!(
        w.input(PUB, &s.frame(false, 1, None, false)[0]),
        Err(DropReason::UnknownSsrc)
    );
    // A new producer reusing the slot gets a new id; the old one stays dead.
    let p2 = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0x1]))
        .unwrap();
    assert_ne!(p, p2);
    assert!(w.router.producer_stats(p).is_none());
}

/// Sequence numbers NACKed to the publisher so far.
fn upstream_nacks(w: &World) -> Vec<u16> {
    let mut v = Vec::new();
    for d in w.rtcp_to(PUB) {
        for p in rtcp::compound(&d) {
            if let Ok(RtcpPacket::Nack(n)) = p {
                assert_eq!(n.media.get(), 0x5);
                v.extend(n.lost().map(|s| s.get()));
            }
        }
    }
    v
}

#[test]
fn upstream_losses_are_nacked_retried_and_repaired_for_consumers() {
    let mut w = World::new();
    let p = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0x5]))
        .unwrap();
    w.add_consumer(consumer(p, 10, 0x50)).unwrap();
    let mut s = Stream::new(Codec::Vp8, 0x5, 0, 65_534, 0);
    let mut lost = Vec::new();
    for f in 0..4 {
        for (i, pkt) in s.frame(f == 0, 3, None, false).into_iter().enumerate() {
            if f == 1 && i == 1 {
                lost.push(pkt); // seq 65_534 + 4 = 2
                continue;
            }
            w.input(PUB, &pkt).unwrap();
        }
    }
    // Reordering grace: nothing yet; then one NACK, and a retry later.
    assert!(upstream_nacks(&w).is_empty());
    w.advance(Duration::from_millis(10));
    assert_eq!(upstream_nacks(&w), vec![2]);
    w.advance(Duration::from_millis(50));
    assert_eq!(upstream_nacks(&w), vec![2], "not before the retry interval");
    w.advance(Duration::from_millis(50));
    assert_eq!(upstream_nacks(&w), vec![2, 2]);
    // The publisher resends it: the consumer gets it in its gap.
    assert_eq!(w.input(PUB, &lost[0]), Ok(1));
    w.advance(Duration::from_millis(500));
    assert_eq!(upstream_nacks(&w), vec![2, 2], "repaired: no more NACKs");
    let rx = w.rtp_to(TransportId(10));
    let mut seqs: Vec<u16> = rx.iter().map(|r| r.seq).collect();
    assert_eq!(
        *seqs.last().unwrap(),
        1004,
        "the late packet filled slot 1004"
    );
    seqs.sort_unstable();
    assert_eq!(seqs, (1000..1012).collect::<Vec<_>>());
    let es = w.router.producer_stats(p).unwrap().next().unwrap();
    assert_eq!((es.nacks_sent, es.recovered, es.lost), (2, 1, 0));
}

#[test]
fn producers_get_receiver_reports_with_loss_jitter_and_lsr() {
    let mut w = World::new();
    let p = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0x5, 0x6]))
        .unwrap();
    w.add_consumer(consumer(p, 10, 0x50)).unwrap();
    let mut s = Stream::new(Codec::Vp8, 0x5, 0, 100, 0);
    // 20 packets sent, 5 lost and never repaired (beyond the NACK tries).
    for k in 0..20u16 {
        let pkt = s.frame(k == 0, 1, None, false).remove(0);
        if k % 4 != 3 {
            w.input(PUB, &pkt).unwrap();
        }
        w.advance(Duration::from_millis(20));
    }
    let ntp = 0xAABB_CCDD_1122_3344u64;
    w.input(PUB, &s.sender_report(ntp, 20, 2000)).unwrap();
    w.clear_sent_rtcp();
    w.advance(Duration::from_millis(1000));
    let mut blocks = Vec::new();
    for d in w.rtcp_to(PUB) {
        for p in rtcp::compound(&d) {
            if let Ok(RtcpPacket::ReceiverReport(rr)) = p {
                blocks.extend(rr.report_blocks());
            }
        }
    }
    // The first RR after the SR; the silent encoding 0x6 has no block.
    let b = blocks
        .iter()
        .find(|b| b.last_sr != 0)
        .expect("an RR with LSR");
    assert_eq!(b.ssrc.get(), 0x5);
    assert_eq!(
        b.highest_seq,
        100 + 18,
        "seq 119 was lost, 118 is the highest"
    );
    assert_eq!(
        b.cumulative_lost, 4,
        "103, 107, 111, 115 (119 is past the highest)"
    );
    assert_eq!(b.last_sr, (ntp >> 16) as u32);
    assert!(b.delay_since_last_sr > 0 && b.delay_since_last_sr <= 65_536);
    assert!(blocks.iter().all(|b| b.ssrc.get() == 0x5));
    assert!(w.router.stats().receiver_reports_sent >= 1);
}

#[test]
fn a_switch_aligns_timestamps_by_the_encodings_sender_reports() {
    let mut w = World::new();
    let p = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0xA0, 0xA1]))
        .unwrap();
    let c = w.add_consumer(consumer(p, 10, 0xC0)).unwrap();
    let mut st = [
        Stream::new(Codec::Vp8, 0xA0, 0, 100, 7_777),
        Stream::new(Codec::Vp8, 0xA1, 1, 9, 3_000_000_000),
    ];
    // Both encodings share one capture clock: 30 frames/s, 3000 ticks each.
    let ntp = |frame: u32| (3_900_000_000u64 << 32) + u64::from(frame) * ((1u64 << 32) / 30);
    for f in 0..20u32 {
        if f == 8 {
            w.router.set_preferred_layers(c, Some(0), None).unwrap();
        }
        for s in st.iter_mut() {
            let key = f == 0 || (s.encoding == 0 && f == 12);
            for pkt in s.frame(key, 2, None, false) {
                w.input(PUB, &pkt).unwrap();
            }
            if f == 4 {
                let sr = s.sender_report(ntp(s.frame), 1, 1);
                w.input(PUB, &sr).unwrap();
            }
        }
        // 33 ms, not 33.3: elapsed time alone would make the step 2970.
        w.advance(FRAME);
    }
    let rx = w.rtp_to(TransportId(10));
    let i = rx.iter().position(|r| r.tag(Codec::Vp8).0 == 0).unwrap();
    assert_eq!(rx[i].tag(Codec::Vp8).1, 12);
    assert_eq!(
        rx[i].ts.wrapping_sub(rx[i - 1].ts),
        3000,
        "exactly one frame later"
    );
    assert_eq!(rx[i + 2].ts.wrapping_sub(rx[i].ts), 3000);
    assert_contiguous(&rx);
}

#[test]
fn rtx_from_the_publisher_repairs_upstream_loss() {
    let mut w = World::new();
    let mut params = video_producer(Codec::Vp8, &[0x5]);
    params.encodings[0].rtx_ssrc = Some(Ssrc::new(0x6));
    params.rtx_payload_types = vec![(pt(97), pt(VP8_PT))];
    let p = w.router.add_producer(params).unwrap();
    w.add_consumer(consumer(p, 10, 0x50)).unwrap();
    let mut s = Stream::new(Codec::Vp8, 0x5, 0, 65_534, 0);
    let mut lost = None;
    for f in 0..4 {
        for (i, pkt) in s.frame(f == 0, 3, None, false).into_iter().enumerate() {
            if f == 1 && i == 1 {
                lost = Some(pkt); // seq 2
                continue;
            }
            w.input(PUB, &pkt).unwrap();
        }
    }
    w.advance(Duration::from_millis(10));
    assert_eq!(upstream_nacks(&w), vec![2]);
    let lost = lost.unwrap();
    // A padding-only probe on the RTX stream (header and 4 padding bytes)
    // repairs nothing.
    let rtx = rtx_of(&lost, 0x6, 97, 700, 0);
    let mut probe = rtx[..12].to_vec();
    probe[0] |= 0x20;
    probe.extend_from_slice(&[0, 0, 0, 4]);
    assert_eq!(w.input(PUB, &probe), Ok(0));
    // An RTX packet with a payload type that is not a declared RTX type.
    assert_eq!(
        w.input(PUB, &rtx_of(&lost, 0x6, 98, 701, 0)),
        Err(DropReason::UnknownPayloadType)
    );
    // The repair, with RTP padding of its own.
    assert_eq!(w.input(PUB, &rtx_of(&lost, 0x6, 97, 702, 8)), Ok(1));
    let rx = w.rtp_to(TransportId(10));
    let repaired = rx.last().unwrap();
    assert_eq!(
        (repaired.ssrc, repaired.seq, repaired.pt),
        (0x50, 1004, VP8_PT)
    );
    let orig = rtp::RtpPacket::parse(&lost).unwrap();
    assert_eq!(repaired.payload, orig.payload());
    assert_eq!(
        repaired.ts,
        rx[0].ts.wrapping_add(orig.timestamp()),
        "same timestamp offset"
    );
    assert!(!rtp::RtpPacket::parse(&repaired.bytes)
        .unwrap()
        .has_padding());
    let es = w.router.producer_stats(p).unwrap().next().unwrap();
    assert_eq!(
        (es.rtx_packets, es.recovered, es.rtx_ssrc),
        (1, 1, Some(Ssrc::new(0x6)))
    );
    let st = w.router.stats();
    assert_eq!((st.rtx_received, st.rtx_padding_only), (1, 1));
    w.advance(Duration::from_millis(500));
    assert_eq!(upstream_nacks(&w), vec![2], "repaired: no more NACKs");
}

#[test]
fn rid_encodings_learn_their_rtx_ssrc_from_the_repaired_rid() {
    let mut w = World::new();
    let mut params = video_producer(Codec::Vp8, &[]);
    params.encodings = vec![EncodingParams {
        ssrc: None,
        rid: Some("f".into()),
        rtx_ssrc: None,
    }];
    params.rid_extension_id = Some(10);
    params.repaired_rid_extension_id = Some(11);
    params.rtx_payload_types = vec![(pt(97), pt(VP8_PT))];
    let p = w.router.add_producer(params).unwrap();
    w.add_consumer(consumer(p, 10, 0x50)).unwrap();
    let mut s = Stream::new(Codec::Vp8, 0x300, 0, 10, 0);
    s.extensions = vec![(10, b"f".to_vec())];
    let first = s.frame(true, 1, None, false).remove(0);
    w.input(PUB, &first).unwrap();
    let lost = s.frame(false, 1, None, false).remove(0);
    w.input(PUB, &s.frame(false, 1, None, false)[0]).unwrap();
    // The RTX stream names the RID it repairs in its own extension.
    // Its extension block is the media packet's with the element id 10
    // (RID) turned into 11 (repaired RID), same length.
    let mut rtx = rtx_of(&lost, 0x301, 97, 1, 0);
    let element = 12 + 4;
    assert_eq!(rtx[element] >> 4, 10);
    rtx[element] = (11 << 4) | (rtx[element] & 0x0F);
    assert_eq!(
        rtp::RtpPacket::parse(&rtx).unwrap().extension(11),
        Some(&b"f"[..])
    );
    assert_eq!(w.input(PUB, &rtx), Ok(1));
    let es = w.router.producer_stats(p).unwrap().next().unwrap();
    assert_eq!(es.rtx_ssrc, Some(Ssrc::new(0x301)));
    let rx = w.rtp_to(TransportId(10));
    assert_eq!(
        rx.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1000, 1002, 1001]
    );
}

/// A subscriber that validates new SSRCs as RFC 3550 allows (§6.2.1,
/// Appendix A.1) and GStreamer's `rtpsession` does: an SSRC first heard in
/// RTP is on probation until two packets arrive in sequence — its packets
/// are held till then, and one out of sequence is dropped and restarts the
/// count — while an SSRC that RTCP (a report, an SDES) named first is valid
/// from its first packet.
#[derive(Default)]
struct ValidatingReceiver {
    sources: std::collections::HashMap<u32, Source>,
    /// RTP passed on to the jitter buffer, in order.
    delivered: Vec<Rx>,
}

struct Source {
    valid: bool,
    in_sequence: u8,
    expected: Option<u16>,
    held: Vec<Rx>,
}

impl ValidatingReceiver {
    const MIN_SEQUENTIAL: u8 = 2;

    fn receive(&mut self, datagram: &[u8]) {
        if rtcp::is_rtcp(datagram) {
            for p in rtcp::compound(datagram).flatten() {
                let named: Vec<u32> = match p {
                    RtcpPacket::SourceDescription(sd) => {
                        sd.chunks().map(|c| c.ssrc.get()).collect()
                    }
                    RtcpPacket::ReceiverReport(rr) => vec![rr.sender_ssrc().get()],
                    RtcpPacket::SenderReport(sr) => vec![sr.sender_info().ssrc.get()],
                    _ => vec![],
                };
                for ssrc in named {
                    self.sources.entry(ssrc).or_insert(Source {
                        valid: true,
                        in_sequence: 0,
                        expected: None,
                        held: Vec::new(),
                    });
                }
            }
            return;
        }
        let p = rtp::RtpPacket::parse(datagram).unwrap();
        let rx = Rx {
            ssrc: p.ssrc().get(),
            seq: p.seq().get(),
            ts: p.timestamp(),
            pt: p.payload_type().get(),
            marker: p.marker(),
            payload: p.payload().to_vec(),
            bytes: datagram.to_vec(),
        };
        let s = self.sources.entry(rx.ssrc).or_insert(Source {
            valid: false,
            in_sequence: 0,
            expected: None,
            held: Vec::new(),
        });
        if s.valid {
            self.delivered.push(rx);
            return;
        }
        let next = rx.seq.wrapping_add(1);
        if s.expected.is_some_and(|e| e != rx.seq) {
            s.in_sequence = 0;
            s.expected = Some(next);
            return;
        }
        s.expected = Some(next);
        s.in_sequence += 1;
        s.held.push(rx);
        if s.in_sequence == Self::MIN_SEQUENTIAL {
            s.valid = true;
            self.delivered.append(&mut s.held);
        }
    }

    /// The original sequence numbers of the RTX packets passed on.
    fn repaired(&self, rtx_ssrc: u32) -> Vec<u16> {
        self.delivered
            .iter()
            .filter(|r| r.ssrc == rtx_ssrc)
            .map(|r| u16::from_be_bytes([r.payload[0], r.payload[1]]))
            .collect()
    }
}

#[test]
fn a_consumers_rtx_stream_is_named_so_its_first_retransmission_is_not_held_in_probation() {
    let mut w = World::new();
    let p = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0x5]))
        .unwrap();
    let mut c = consumer(p, 10, 0x50);
    c.rtx_ssrc = Some(Ssrc::new(0x51));
    c.rtx_payload_types = vec![(pt(VP8_PT), pt(97))];
    c.initial_seq = SeqNo::new(0);
    let cid = w.add_consumer(c).unwrap();
    // A plain consumer beside it gets no SDES: it has no RTX stream to name.
    w.add_consumer(consumer(p, 11, 0x60)).unwrap();
    let mut rx = ValidatingReceiver::default();
    let mut seen = 0;
    // The path to the subscriber loses two media packets 1.3 s apart: each
    // retransmission is the RTX stream's only packet for a long while, the
    // way a sparse RTX stream goes (one packet a loss).
    let lost = [5u16, 125];
    let mut deliver = |w: &World, rx: &mut ValidatingReceiver| {
        let sent = &w.sent[&TransportId(10)];
        for d in &sent[seen..] {
            let media_seq = (!rtcp::is_rtcp(d))
                .then(|| rtp::RtpPacket::parse(d).unwrap())
                .filter(|p| p.ssrc().get() == 0x50)
                .map(|p| p.seq().get());
            if !media_seq.is_some_and(|q| lost.contains(&q)) {
                rx.receive(d);
            }
        }
        seen = sent.len();
    };
    let mut s = Stream::new(Codec::Vp8, 0x5, 0, 100, 0);
    for f in 0..60u32 {
        for pkt in s.frame(f == 0, 3, None, false) {
            w.input(PUB, &pkt).unwrap();
        }
        w.advance(FRAME);
        deliver(&w, &mut rx);
        // The subscriber NACKs each loss 6 frames (200 ms) after it, and
        // the retransmission goes straight through, not held for a second.
        for (i, &l) in lost.iter().enumerate() {
            if u32::from(l / 3) + 6 == f {
                assert_eq!(w.input(TransportId(10), &nack(0x50, &[l])), Ok(1));
                deliver(&w, &mut rx);
                assert_eq!(rx.repaired(0x51), lost[..=i], "frame {f}");
            }
        }
    }
    let media: Vec<u16> = rx
        .delivered
        .iter()
        .filter(|r| r.ssrc == 0x50)
        .map(|r| r.seq)
        .collect();
    assert_eq!(media.len(), 180 - lost.len());

    // What named it: an RR and an SDES giving both SSRCs one CNAME, before
    // the first media packet and again every RR_INTERVAL.
    let first = &w.sent[&TransportId(10)][0];
    let packets: Vec<_> = rtcp::compound(first).collect::<Result<_, _>>().unwrap();
    let [RtcpPacket::ReceiverReport(rr), RtcpPacket::SourceDescription(sd)] = &packets[..] else {
        panic!("{packets:?}")
    };
    assert_eq!(
        (rr.sender_ssrc().get(), rr.report_blocks().count()),
        (0x50, 0)
    );
    let chunks: Vec<(u32, Vec<u8>)> = sd
        .chunks()
        .map(|c| (c.ssrc.get(), c.items().next().unwrap().text.to_vec()))
        .collect();
    assert_eq!(
        chunks,
        vec![
            (0x50, b"tern-00000050".to_vec()),
            (0x51, b"tern-00000050".to_vec())
        ]
    );
    // 60 frames of 33 ms: the one with the first packet, one a second after.
    let sdes = w.rtcp_to(TransportId(10)).len() as u64;
    assert_eq!(w.router.stats().source_descriptions_sent, sdes);
    assert!((2..=3).contains(&sdes), "{sdes}");
    assert!(w.rtcp_to(TransportId(11)).is_empty());
    assert_eq!(w.router.consumer_stats(cid).unwrap().retransmitted, 2);
}

#[test]
fn consumers_with_rtx_get_retransmissions_on_their_rtx_stream() {
    let mut w = World::new();
    let p = w
        .router
        .add_producer(video_producer(Codec::Vp8, &[0x5]))
        .unwrap();
    let mut c = consumer(p, 10, 0x50);
    c.rtx_ssrc = Some(Ssrc::new(0x51));
    c.rtx_payload_types = vec![(pt(VP8_PT), pt(97))];
    c.initial_seq = SeqNo::new(0);
    w.add_consumer(c).unwrap();
    let mut s = Stream::new(Codec::Vp8, 0x5, 0, 100, 0);
    for f in 0..4 {
        for pkt in s.frame(f == 0, 3, None, false) {
            w.input(PUB, &pkt).unwrap();
        }
    }
    let sent = w.rtp_to(TransportId(10));
    w.clear_sent();
    assert_eq!(w.input(TransportId(10), &nack(0x50, &[3, 7])), Ok(2));
    let rtx = w.rtp_to(TransportId(10));
    assert_eq!(rtx.len(), 2);
    for (r, osn) in rtx.iter().zip([3u16, 7]) {
        let orig = &sent[usize::from(osn)];
        assert_eq!(
            (r.ssrc, r.pt, r.ts, r.marker),
            (0x51, 97, orig.ts, orig.marker)
        );
        assert_eq!(&r.payload[..2], &osn.to_be_bytes());
        assert_eq!(
            &r.payload[2..],
            &orig.payload[..],
            "OSN, then the payload as first sent"
        );
    }
    assert_eq!(
        rtx[1].seq,
        rtx[0].seq.wrapping_add(1),
        "the RTX stream has its own sequence"
    );
}
