//! The RTP and RTCP views, checked three ways: arbitrary bytes never panic
//! (fuzz-style proptests on stable); packets written by the webrtc-rs `rtp`
//! and `rtcp` crates read back field for field; and what tern-sfu writes,
//! or rewrites in place, reads back the same through those crates.

use bytes::Bytes;
use proptest::prelude::*;
use tern_sfu::rtcp::{self, RtcpPacket};
use tern_sfu::rtp::{self as sfu_rtp, RtpHeaderMut, RtpPacket};
use tern_sfu::{PayloadType, SeqNo, Ssrc};
use webrtc_util_ref::marshal::{Marshal, Unmarshal};

// ---------------------------------------------------------------- RTP ----

#[derive(Debug, Clone)]
struct RefRtp {
    marker: bool,
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    csrcs: Vec<u32>,
    /// None = no extension; Some(false) = one-byte; Some(true) = two-byte.
    ext_form: Option<bool>,
    exts: Vec<(u8, Vec<u8>)>,
    payload: Vec<u8>,
    padding: bool,
}

fn ref_rtp() -> impl Strategy<Value = RefRtp> {
    (
        any::<bool>(),
        0u8..128,
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(any::<u32>(), 0..16),
        prop::option::of(any::<bool>()),
        prop::collection::btree_map(1u8..15, prop::collection::vec(any::<u8>(), 1..17), 0..5),
        prop::collection::vec(any::<u8>(), 1..200),
        any::<bool>(),
    )
        .prop_map(
            |(marker, pt, seq, ts, ssrc, csrcs, ext_form, exts, payload, padding)| RefRtp {
                marker,
                pt,
                seq,
                ts,
                ssrc,
                csrcs,
                ext_form,
                exts: if ext_form.is_some() {
                    exts.into_iter().collect()
                } else {
                    vec![]
                },
                payload,
                padding,
            },
        )
}

fn marshal_ref(r: &RefRtp) -> Vec<u8> {
    let mut header = rtp_ref::header::Header {
        version: 2,
        padding: r.padding,
        marker: r.marker,
        payload_type: r.pt,
        sequence_number: r.seq,
        timestamp: r.ts,
        ssrc: r.ssrc,
        csrc: r.csrcs.clone(),
        ..Default::default()
    };
    if let Some(two) = r.ext_form {
        header.extension = true;
        header.extension_profile = if two { 0x1000 } else { 0xBEDE };
        for (id, v) in &r.exts {
            header
                .set_extension(*id, Bytes::copy_from_slice(v))
                .unwrap();
        }
    }
    let p = rtp_ref::packet::Packet {
        header,
        payload: Bytes::copy_from_slice(&r.payload),
    };
    p.marshal().unwrap().to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rtp_arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
        sfu_rtp::fuzz::parse_any(&data);
    }

    #[test]
    fn rtp_mutated_valid_packets_never_panic(r in ref_rtp(), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut buf = marshal_ref(&r);
        for (at, x) in flips {
            let n = buf.len();
            buf[at % n] ^= x;
        }
        sfu_rtp::fuzz::parse_any(&buf);
    }

    #[test]
    fn rtp_reads_what_webrtc_rs_writes(r in ref_rtp()) {
        let buf = marshal_ref(&r);
        let p = RtpPacket::parse(&buf).unwrap();
        prop_assert_eq!(p.marker(), r.marker);
        prop_assert_eq!(p.payload_type().get(), r.pt);
        prop_assert_eq!(p.seq(), SeqNo::new(r.seq));
        prop_assert_eq!(p.timestamp(), r.ts);
        prop_assert_eq!(p.ssrc(), Ssrc::new(r.ssrc));
        prop_assert_eq!(p.csrcs().map(Ssrc::get).collect::<Vec<_>>(), r.csrcs.clone());
        prop_assert_eq!(p.payload(), &r.payload[..]);
        prop_assert_eq!(p.has_padding(), r.padding);
        let got: Vec<(u8, Vec<u8>)> = p.extensions().map(|e| (e.id, e.value.to_vec())).collect();
        prop_assert_eq!(got, r.exts.clone());
        for (id, v) in &r.exts {
            prop_assert_eq!(p.extension(*id), Some(&v[..]));
        }
        // And the reference agrees with itself on what it wrote.
        let back = rtp_ref::packet::Packet::unmarshal(&mut &buf[..]).unwrap();
        prop_assert_eq!(&back.payload[..], p.payload());
    }

    #[test]
    fn rtp_accepts_what_webrtc_rs_accepts_with_same_fields(data in prop::collection::vec(any::<u8>(), 12..120)) {
        let mut data = data;
        data[0] = (data[0] & 0x3F) | 0x80; // version 2, the rest arbitrary
        let ours = RtpPacket::parse(&data);
        let theirs = rtp_ref::packet::Packet::unmarshal(&mut &data[..]);
        if let (Ok(p), Ok(r)) = (ours, theirs) {
            prop_assert_eq!(p.seq().get(), r.header.sequence_number);
            prop_assert_eq!(p.ssrc().get(), r.header.ssrc);
            prop_assert_eq!(p.csrcs().map(Ssrc::get).collect::<Vec<_>>(), r.header.csrc.clone());
            prop_assert_eq!(p.payload(), &r.payload[..]);
            if matches!(p.extension_profile(), Some(0xBEDE | 0x1000)) {
                let got: Vec<(u8, Vec<u8>)> = p.extensions().map(|e| (e.id, e.value.to_vec())).collect();
                let want: Vec<(u8, Vec<u8>)> = r.header.extensions.iter().map(|e| (e.id, e.payload.to_vec())).collect();
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn rtp_rewrites_touch_only_their_fields(r in ref_rtp(), ssrc in any::<u32>(), seq in any::<u16>(), ts in any::<u32>(), pt in 0u8..128) {
        let orig = marshal_ref(&r);
        let mut buf = orig.clone();
        let mut h = RtpHeaderMut::new(&mut buf).unwrap();
        h.set_ssrc(Ssrc::new(ssrc));
        h.set_seq(SeqNo::new(seq));
        h.set_timestamp(ts);
        h.set_payload_type(PayloadType::new(pt).unwrap());
        let back = rtp_ref::packet::Packet::unmarshal(&mut &buf[..]).unwrap();
        prop_assert_eq!(back.header.ssrc, ssrc);
        prop_assert_eq!(back.header.sequence_number, seq);
        prop_assert_eq!(back.header.timestamp, ts);
        prop_assert_eq!(back.header.payload_type, pt);
        prop_assert_eq!(back.header.marker, r.marker);
        prop_assert_eq!(&buf[12..], &orig[12..]);
        prop_assert_eq!(buf[0], orig[0]);
    }
}

// --------------------------------------------------------------- RTCP ----

fn reception_report() -> impl Strategy<Value = rtcp_ref::reception_report::ReceptionReport> {
    (
        any::<u32>(),
        any::<u8>(),
        0u32..0x100_0000,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(ssrc, fraction_lost, total_lost, last_sequence_number, jitter, lsr, delay)| {
                rtcp_ref::reception_report::ReceptionReport {
                    ssrc,
                    fraction_lost,
                    total_lost,
                    last_sequence_number,
                    jitter,
                    last_sender_report: lsr,
                    delay,
                }
            },
        )
}

#[derive(Debug, Clone)]
enum RefRtcp {
    Sr(rtcp_ref::sender_report::SenderReport),
    Rr(rtcp_ref::receiver_report::ReceiverReport),
    Pli(u32, u32),
    Fir(u32, Vec<(u32, u8)>),
    Nack(u32, u32, Vec<(u16, u16)>),
    Sdes(Vec<(u32, Vec<u8>)>),
    Bye(Vec<u32>, Vec<u8>),
}

fn ref_rtcp() -> impl Strategy<Value = RefRtcp> {
    let reports = || prop::collection::vec(reception_report(), 0..5);
    prop_oneof![
        (
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            reports()
        )
            .prop_map(|(ssrc, ntp, rtp, pc, oc, reports)| RefRtcp::Sr(
                rtcp_ref::sender_report::SenderReport {
                    ssrc,
                    ntp_time: ntp,
                    rtp_time: rtp,
                    packet_count: pc,
                    octet_count: oc,
                    reports,
                    profile_extensions: Bytes::new(),
                }
            )),
        (any::<u32>(), reports()).prop_map(|(ssrc, reports)| RefRtcp::Rr(
            rtcp_ref::receiver_report::ReceiverReport {
                ssrc,
                reports,
                profile_extensions: Bytes::new()
            }
        )),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| RefRtcp::Pli(a, b)),
        (
            any::<u32>(),
            prop::collection::vec((any::<u32>(), any::<u8>()), 1..4)
        )
            .prop_map(|(a, e)| RefRtcp::Fir(a, e)),
        (
            any::<u32>(),
            any::<u32>(),
            prop::collection::vec((any::<u16>(), any::<u16>()), 1..6)
        )
            .prop_map(|(a, b, n)| RefRtcp::Nack(a, b, n)),
        prop::collection::vec(
            (any::<u32>(), prop::collection::vec(b'a'..=b'z', 1..40)),
            1..4
        )
        .prop_map(RefRtcp::Sdes),
        (
            prop::collection::vec(any::<u32>(), 1..5),
            prop::collection::vec(b'a'..=b'z', 0..20)
        )
            .prop_map(|(s, r)| RefRtcp::Bye(s, r)),
    ]
}

fn marshal_rtcp(p: &RefRtcp) -> Vec<u8> {
    use rtcp_ref::payload_feedbacks::full_intra_request::{FirEntry, FullIntraRequest};
    use rtcp_ref::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtcp_ref::source_description::*;
    use rtcp_ref::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
    let b = match p {
        RefRtcp::Sr(sr) => sr.marshal(),
        RefRtcp::Rr(rr) => rr.marshal(),
        RefRtcp::Pli(s, m) => PictureLossIndication {
            sender_ssrc: *s,
            media_ssrc: *m,
        }
        .marshal(),
        RefRtcp::Fir(s, e) => FullIntraRequest {
            sender_ssrc: *s,
            media_ssrc: 0,
            fir: e
                .iter()
                .map(|&(ssrc, sequence_number)| FirEntry {
                    ssrc,
                    sequence_number,
                })
                .collect(),
        }
        .marshal(),
        RefRtcp::Nack(s, m, n) => TransportLayerNack {
            sender_ssrc: *s,
            media_ssrc: *m,
            nacks: n
                .iter()
                .map(|&(packet_id, lost_packets)| NackPair {
                    packet_id,
                    lost_packets,
                })
                .collect(),
        }
        .marshal(),
        RefRtcp::Sdes(chunks) => SourceDescription {
            chunks: chunks
                .iter()
                .map(|(source, cname)| SourceDescriptionChunk {
                    source: *source,
                    items: vec![SourceDescriptionItem {
                        sdes_type: SdesType::SdesCname,
                        text: Bytes::copy_from_slice(cname),
                    }],
                })
                .collect(),
        }
        .marshal(),
        RefRtcp::Bye(sources, reason) => rtcp_ref::goodbye::Goodbye {
            sources: sources.clone(),
            reason: Bytes::copy_from_slice(reason),
        }
        .marshal(),
    };
    b.unwrap().to_vec()
}

fn check_block(ours: &rtcp::ReportBlock, theirs: &rtcp_ref::reception_report::ReceptionReport) {
    assert_eq!(ours.ssrc.get(), theirs.ssrc);
    assert_eq!(ours.fraction_lost, theirs.fraction_lost);
    assert_eq!(ours.cumulative_lost as u32 & 0xFF_FFFF, theirs.total_lost);
    assert_eq!(ours.highest_seq, theirs.last_sequence_number);
    assert_eq!(ours.jitter, theirs.jitter);
    assert_eq!(ours.last_sr, theirs.last_sender_report);
    assert_eq!(ours.delay_since_last_sr, theirs.delay);
}

fn check_same(ours: &RtcpPacket<'_>, want: &RefRtcp) {
    match (ours, want) {
        (RtcpPacket::SenderReport(sr), RefRtcp::Sr(r)) => {
            let i = sr.sender_info();
            assert_eq!(
                (i.ssrc.get(), i.ntp, i.rtp_timestamp),
                (r.ssrc, r.ntp_time, r.rtp_time)
            );
            assert_eq!(
                (i.packet_count, i.octet_count),
                (r.packet_count, r.octet_count)
            );
            let blocks: Vec<_> = sr.report_blocks().collect();
            assert_eq!(blocks.len(), r.reports.len());
            blocks
                .iter()
                .zip(&r.reports)
                .for_each(|(a, b)| check_block(a, b));
        }
        (RtcpPacket::ReceiverReport(rr), RefRtcp::Rr(r)) => {
            assert_eq!(rr.sender_ssrc().get(), r.ssrc);
            let blocks: Vec<_> = rr.report_blocks().collect();
            assert_eq!(blocks.len(), r.reports.len());
            blocks
                .iter()
                .zip(&r.reports)
                .for_each(|(a, b)| check_block(a, b));
        }
        (RtcpPacket::Pli(p), RefRtcp::Pli(s, m)) => {
            assert_eq!((p.sender.get(), p.media.get()), (*s, *m));
        }
        (RtcpPacket::Fir(f), RefRtcp::Fir(s, e)) => {
            assert_eq!(f.sender.get(), *s);
            let got: Vec<_> = f.entries().map(|x| (x.ssrc.get(), x.seq_nr)).collect();
            assert_eq!(&got, e);
        }
        (RtcpPacket::Nack(n), RefRtcp::Nack(s, m, pairs)) => {
            assert_eq!((n.sender.get(), n.media.get()), (*s, *m));
            let got: Vec<_> = n.pairs().map(|p| (p.pid.get(), p.blp)).collect();
            assert_eq!(&got, pairs);
        }
        (RtcpPacket::SourceDescription(sd), RefRtcp::Sdes(chunks)) => {
            let got: Vec<(u32, Vec<u8>)> = sd
                .chunks()
                .map(|c| (c.ssrc.get(), c.items().next().unwrap().text.to_vec()))
                .collect();
            assert_eq!(&got, chunks);
            assert!(sd.chunks().all(|c| c.items().all(|i| i.kind == 1)));
        }
        (RtcpPacket::Goodbye(b), RefRtcp::Bye(sources, reason)) => {
            assert_eq!(&b.sources().map(Ssrc::get).collect::<Vec<_>>(), sources);
            assert_eq!(b.reason().unwrap_or_default(), &reason[..]);
        }
        (got, want) => panic!("parsed {got:?}, wrote {want:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rtcp_arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
        rtcp::fuzz::parse_any(&data);
    }

    #[test]
    fn rtcp_mutated_compounds_never_panic(ps in prop::collection::vec(ref_rtcp(), 1..4), flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let mut buf: Vec<u8> = ps.iter().flat_map(marshal_rtcp).collect();
        for (at, x) in flips {
            let n = buf.len();
            buf[at % n] ^= x;
        }
        rtcp::fuzz::parse_any(&buf);
    }

    #[test]
    fn rtcp_reads_compounds_webrtc_rs_writes(ps in prop::collection::vec(ref_rtcp(), 1..5)) {
        let buf: Vec<u8> = ps.iter().flat_map(marshal_rtcp).collect();
        let got: Vec<_> = rtcp::compound(&buf).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(got.len(), ps.len());
        for (g, w) in got.iter().zip(&ps) {
            check_same(g, w);
        }
        // The reference reads the same compound as the same number of packets.
        prop_assert_eq!(rtcp_ref::packet::unmarshal(&mut &buf[..]).unwrap().len(), ps.len());
    }

    #[test]
    fn sdes_cname_writer_is_read_by_webrtc_rs(
        sources in prop::collection::vec(any::<u32>(), 1..4),
        cname in prop::collection::vec(b'a'..=b'z', 1..40),
    ) {
        let ssrcs: Vec<Ssrc> = sources.iter().copied().map(Ssrc::new).collect();
        let mut buf = [0u8; 400];
        let n = rtcp::write_receiver_report(&mut buf, ssrcs[0], &[]).unwrap();
        let n = n + rtcp::write_sdes_cname(&mut buf[n..], &ssrcs, &cname).unwrap();
        let pkts = rtcp_ref::packet::unmarshal(&mut &buf[..n]).unwrap();
        prop_assert_eq!(pkts.len(), 2);
        let sd = pkts[1].as_any().downcast_ref::<rtcp_ref::source_description::SourceDescription>().unwrap();
        let theirs: Vec<(u32, Vec<u8>)> = sd.chunks.iter().map(|c| {
            assert_eq!(c.items.len(), 1);
            assert_eq!(c.items[0].sdes_type, rtcp_ref::source_description::SdesType::SdesCname);
            (c.source, c.items[0].text.to_vec())
        }).collect();
        let want: Vec<(u32, Vec<u8>)> = sources.iter().map(|&s| (s, cname.clone())).collect();
        prop_assert_eq!(theirs, want);
    }

    #[test]
    fn rtcp_writers_are_read_by_webrtc_rs(
        ssrc in any::<u32>(), ntp in any::<u64>(), rtp in any::<u32>(),
        blocks in prop::collection::vec(reception_report(), 0..4),
        lost in prop::collection::btree_set(any::<u16>(), 1..40),
    ) {
        let ours: Vec<rtcp::ReportBlock> = blocks.iter().map(|b| rtcp::ReportBlock {
            ssrc: Ssrc::new(b.ssrc),
            fraction_lost: b.fraction_lost,
            cumulative_lost: ((b.total_lost << 8) as i32) >> 8,
            highest_seq: b.last_sequence_number,
            jitter: b.jitter,
            last_sr: b.last_sender_report,
            delay_since_last_sr: b.delay,
        }).collect();
        let info = rtcp::SenderInfo { ssrc: Ssrc::new(ssrc), ntp, rtp_timestamp: rtp, packet_count: 5, octet_count: 6 };
        let mut buf = [0u8; 1500];
        let mut n = rtcp::write_sender_report(&mut buf, &info, &ours).unwrap();
        n += rtcp::write_receiver_report(&mut buf[n..], Ssrc::new(ssrc), &ours).unwrap();
        n += rtcp::write_pli(&mut buf[n..], Ssrc::new(1), Ssrc::new(ssrc)).unwrap();
        n += rtcp::write_fir(&mut buf[n..], Ssrc::new(1), Ssrc::new(ssrc), 3).unwrap();
        let lost: Vec<SeqNo> = lost.into_iter().map(SeqNo::new).collect();
        n += rtcp::write_nack(&mut buf[n..], Ssrc::new(1), Ssrc::new(ssrc), lost.iter().copied()).unwrap();
        let pkts = rtcp_ref::packet::unmarshal(&mut &buf[..n]).unwrap();
        prop_assert_eq!(pkts.len(), 5);
        let sr = pkts[0].as_any().downcast_ref::<rtcp_ref::sender_report::SenderReport>().unwrap();
        prop_assert_eq!((sr.ssrc, sr.ntp_time, sr.rtp_time), (ssrc, ntp, rtp));
        prop_assert_eq!(&sr.reports, &blocks);
        let rr = pkts[1].as_any().downcast_ref::<rtcp_ref::receiver_report::ReceiverReport>().unwrap();
        prop_assert_eq!(&rr.reports, &blocks);
        let pli = pkts[2].as_any().downcast_ref::<rtcp_ref::payload_feedbacks::picture_loss_indication::PictureLossIndication>().unwrap();
        prop_assert_eq!(pli.media_ssrc, ssrc);
        let fir = pkts[3].as_any().downcast_ref::<rtcp_ref::payload_feedbacks::full_intra_request::FullIntraRequest>().unwrap();
        prop_assert_eq!((fir.fir[0].ssrc, fir.fir[0].sequence_number), (ssrc, 3));
        let nack = pkts[4].as_any().downcast_ref::<rtcp_ref::transport_feedbacks::transport_layer_nack::TransportLayerNack>().unwrap();
        // Sorted by value, not modular order: the reference's expansion must
        // name exactly the numbers we put in.
        let mut theirs: Vec<u16> = nack.nacks.iter().flat_map(|p| p.packet_list()).collect();
        theirs.sort_unstable();
        theirs.dedup();
        let mut want: Vec<u16> = lost.iter().map(|s| s.get()).collect();
        want.sort_unstable();
        prop_assert_eq!(theirs, want);
    }
}
