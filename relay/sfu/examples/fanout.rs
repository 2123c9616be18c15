//! Throughput of the forwarding core on one core: one VP8 publisher (three
//! simulcast encodings, ~1200-byte packets) fanned out to N consumers, with
//! the egress optionally SRTP-protected in place, as a worker would. No
//! sockets: this measures the router (and SRTP) alone, the ceiling the
//! packet I/O then eats into. Prints egress packets per CPU-second (the
//! thread's CPU time, so a loaded machine slows it down but does not skew it).
//!
//! cargo run --release -p tern-sfu --example fanout -- [consumers] [srtp: none|cm|gcm] [seconds]

#![allow(clippy::print_stdout)] // a command-line measuring tool

use std::time::{Duration, Instant};

use tern_sfu::srtp::{SrtpContext, SrtpProfile};
use tern_sfu::*;

const PUB: TransportId = TransportId(0);

fn vp8_packet(ssrc: u32, seq: u16, ts: u32, key: bool, first: bool, size: usize) -> Vec<u8> {
    let mut b = vec![0x80, 96];
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&ts.to_be_bytes());
    b.extend_from_slice(&ssrc.to_be_bytes());
    b.extend_from_slice(&[0x80 | if first { 0x10 } else { 0 }, 0x80, 0x80, seq as u8]);
    b.push(if key { 0 } else { 1 });
    b.resize(size, 0xAB);
    b
}

/// CPU time this thread has run, from /proc/self/schedstat (Linux), so the
/// figure is per CPU-second even on a loaded machine.
fn cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let consumers: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let srtp = args.next().unwrap_or_else(|| "none".into());
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let profile = match srtp.as_str() {
        "cm" => Some(SrtpProfile::Aes128CmHmacSha1_80),
        "gcm" => Some(SrtpProfile::AeadAes128Gcm),
        _ => None,
    };

    let mut router = Router::new(RouterConfig::default());
    let ssrcs = [0x10, 0x11, 0x12];
    let p = router
        .add_producer(ProducerParams {
            transport: PUB,
            kind: MediaKind::Video,
            codec: Codec::Vp8,
            clock_rate: 90_000,
            payload_types: vec![PayloadType::new(96).unwrap()],
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
        })
        .unwrap();
    // One SRTP context per subscriber transport, as in production.
    let mut contexts = Vec::new();
    for i in 0..consumers {
        router
            .add_consumer(ConsumerParams {
                producer: p,
                transport: TransportId(1 + i),
                ssrc: Ssrc::new(0x1000 + i),
                payload_types: vec![],
                preferred_spatial: Some((i % 3) as u8),
                preferred_temporal: None,
                paused: false,
                initial_seq: SeqNo::new(i as u16),
                initial_timestamp: i,
                rtx_ssrc: None,
                rtx_payload_types: vec![],
            })
            .unwrap();
        if let Some(pr) = profile {
            contexts.push(
                SrtpContext::new(pr, &[i as u8; 16], &vec![7; pr.master_salt_len()]).unwrap(),
            );
        }
    }
    let mut out = Output::new(consumers as usize * 2 + 64, 1500);

    #[allow(clippy::disallowed_methods)] // a measuring harness, not protocol code
    let start = Instant::now();
    let cpu_start = cpu_time();
    let mut now = start; // virtual time: 30 frames/s of 4 packets per encoding
    let mut seq = [0u16; 3];
    let mut egress = 0u64;
    let mut ingress = 0u64;
    let mut frame = 0u32;
    let deadline = Duration::from_secs(seconds);
    #[allow(clippy::disallowed_methods)]
    let elapsed = || Instant::now().duration_since(start);
    while elapsed() < deadline {
        for _ in 0..30 {
            for (e, &ssrc) in ssrcs.iter().enumerate() {
                for k in 0..4u8 {
                    let pkt =
                        vp8_packet(ssrc, seq[e], frame * 3000, frame % 300 == 0, k == 0, 1200);
                    seq[e] = seq[e].wrapping_add(1);
                    ingress += 1;
                    router.handle_input(now, PUB, &pkt, &mut out).unwrap();
                    for i in 0..out.len() {
                        if profile.is_some() {
                            let (t, _) = out.get(i).unwrap();
                            let n_ctx = contexts.len();
                            let ctx =
                                &mut contexts[(t.transport.0 as usize).saturating_sub(1) % n_ctx];
                            let (slot, len) = out.slot_mut(i).unwrap();
                            let n = match t.kind {
                                PacketKind::Rtp => ctx.protect_rtp(slot, len),
                                PacketKind::Rtcp => ctx.protect_rtcp(slot, len),
                            }
                            .unwrap();
                            out.set_len(i, n);
                        }
                    }
                    egress += out.len() as u64;
                    std::hint::black_box(out.get(0));
                    out.clear();
                }
            }
            frame += 1;
            now += Duration::from_millis(33);
            if router.poll_timeout().is_some_and(|t| t <= now) {
                router.handle_timeout(now, &mut out);
                egress += out.len() as u64;
                out.clear();
            }
        }
    }
    let wall = elapsed().as_secs_f64();
    let cpu = match (cpu_start, cpu_time()) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => wall,
    };
    println!(
        "consumers={consumers} srtp={srtp} ingress={ingress} egress={egress} wall_s={wall:.2} \
         cpu_s={cpu:.2} egress_pkts_per_cpu_s={:.0} egress_gbit_per_cpu_s={:.2}",
        egress as f64 / cpu,
        egress as f64 * 1200.0 * 8.0 / cpu / 1e9
    );
}
