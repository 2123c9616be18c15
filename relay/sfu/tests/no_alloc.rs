//! The forwarding path allocates nothing: RTP fan-out to many consumers,
//! simulcast switches, temporal filtering, NACK answers, SR rewrites,
//! PLI forwarding, upstream NACKs, receiver reports, timers and SRTP
//! protection of every transmit in place all run with zero heap allocations once the
//! router is set up.
//!
//! Its own test binary, so the counting global allocator sees only this test.
//! Allocations are counted only on the measuring thread, inside the measured
//! region (a thread-local flag).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use support::*;
use tern_sfu::*;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if MEASURING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` unchanged; counting touches only an
// atomic and a const-initialised thread-local `Cell`, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn count_allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    MEASURING.with(|m| m.set(true));
    f();
    MEASURING.with(|m| m.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

const CONSUMERS: u32 = 20;
const FRAMES: u32 = 600;

/// The far end of a pipe transport.
const PIPE: TransportId = TransportId(90);

#[test]
fn forwarding_path_does_not_allocate() {
    assert!(count_allocations(|| drop(black_box(vec![1u8; 16]))) >= 1);

    let mut router = Router::new(RouterConfig::default());
    let mut out = Output::new(256, 1600);
    let mut now = t0();
    let p = router
        .add_producer({
            let mut params = video_producer(Codec::Vp8, &[0xA0, 0xA1]);
            params.encodings[0].rtx_ssrc = Some(Ssrc::new(0xB0));
            params.rtx_payload_types = vec![(pt(97), pt(VP8_PT))];
            params
        })
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..CONSUMERS {
        let mut c = consumer(p, 10 + i, 0x100 + i);
        if i % 2 == 0 {
            c.preferred_temporal = Some(0);
        } else {
            c.rtx_ssrc = Some(Ssrc::new(0x300 + i));
            c.rtx_payload_types = vec![(pt(VP8_PT), pt(97))];
        }
        ids.push(router.add_consumer(c).unwrap());
    }
    // A pipe to another router: every encoding as it arrived; its far
    // side NACKs and asks for key frames about the original SSRCs.
    let pipe = router.add_pipe_consumer(p, PIPE).unwrap();
    let a = router.add_producer(audio_producer(0xAA)).unwrap();
    for i in 0..CONSUMERS {
        router.add_consumer(consumer(a, 10 + i, 0x200 + i)).unwrap();
    }
    // Everything the publisher and subscribers will send, built up front.
    let mut streams = [
        Stream::new(Codec::Vp8, 0xA0, 0, 65_000, 0),
        Stream::new(Codec::Vp8, 0xA1, 1, 100, 0),
    ];
    let mut audio = Stream::new(Codec::Opus, 0xAA, 0, 0, 0);
    let mut frames = Vec::new();
    let mut rtx_seq = 0u16;
    let mut repair = None;
    for f in 0..FRAMES {
        let mut pkts = Vec::new();
        for s in streams.iter_mut() {
            let key = f % 100 == 0 || (s.encoding == 0 && f % 100 == 50);
            pkts.extend(s.frame(key, 3, Some((f % 2) as u8), f % 4 == 1));
        }
        pkts.extend(audio.frame(false, 1, None, false));
        if f % 7 == 3 {
            // Lost upstream: NACKed by the router, repaired by RTX a frame later.
            let lost = pkts.remove(1);
            rtx_seq = rtx_seq.wrapping_add(1);
            repair = Some(rtx_of(&lost, 0xB0, 97, rtx_seq, 0));
        } else if let Some(r) = repair.take() {
            pkts.push(r);
        }
        frames.push(pkts);
    }
    let nacks: Vec<_> = (0..CONSUMERS)
        .map(|i| (TransportId(10 + i), nack(0x100 + i, &[1000, 1001, 1005])))
        .collect();
    let plis: Vec<_> = (0..CONSUMERS)
        .map(|i| (TransportId(10 + i), pli(0x100 + i)))
        .collect();
    // The far side of the pipe NACKs the packet of encoding 1 sent two
    // frames earlier (3 packets a frame from 100) and asks for a key frame.
    let pipe_feedback: Vec<_> = (0..FRAMES)
        .map(|f| {
            let seq = 100u16.wrapping_add(3 * f.saturating_sub(2) as u16);
            (nack(0xA1, &[seq, seq + 1]), pli(0xA1))
        })
        .collect();
    let sr = streams[1].sender_report(1 << 40, 10, 1000);
    let mut events = 0u64;
    // Every transmit is SRTP-protected in place in its slot, as the worker
    // will do (one sending context per subscriber transport in production;
    // one per profile suffices to show the transform allocates nothing).
    let mut cm =
        srtp::SrtpContext::new(srtp::SrtpProfile::Aes128CmHmacSha1_80, &[1; 16], &[2; 14]).unwrap();
    let mut gcm =
        srtp::SrtpContext::new(srtp::SrtpProfile::AeadAes128Gcm, &[1; 16], &[2; 12]).unwrap();
    // Warm the per-SSRC tables (a new SSRC allocates once, not per packet).
    for ctx in [&mut cm, &mut gcm] {
        for ssrc in (0x100..0x100 + CONSUMERS)
            .chain(0x200..0x200 + CONSUMERS)
            .chain([0x7465_726E, 0xA0, 0xA1])
        {
            let mut b = [0u8; 64];
            b[0] = 0x80;
            b[8..12].copy_from_slice(&ssrc.to_be_bytes());
            ctx.protect_rtp(&mut b, 20).unwrap();
            b[0] = 0x81;
            b[1] = 201;
            b[4..8].copy_from_slice(&ssrc.to_be_bytes());
            ctx.protect_rtcp(&mut b, 8).unwrap();
        }
    }
    let mut protected = 0u64;

    let mut run = |range: std::ops::Range<u32>| {
        for f in range {
            if f % 100 == 40 {
                // Half the consumers switch down, the others back up.
                for (i, &c) in ids.iter().enumerate() {
                    let spatial = if (f / 100 + i as u32) % 2 == 0 {
                        Some(0)
                    } else {
                        None
                    };
                    router.set_preferred_layers(c, spatial, None).unwrap();
                }
            }
            for pkt in &frames[f as usize] {
                router.handle_input(now, PUB, pkt, &mut out).unwrap();
            }
            if f % 10 == 5 {
                let (t, n) = &nacks[(f / 10) as usize % nacks.len()];
                router.handle_input(now, *t, n, &mut out).unwrap();
                let (t, p) = &plis[(f / 10) as usize % plis.len()];
                router.handle_input(now, *t, p, &mut out).unwrap();
                router.handle_input(now, PUB, &sr, &mut out).unwrap();
                let (n, p) = &pipe_feedback[f as usize];
                router.handle_input(now, PIPE, n, &mut out).unwrap();
                router.handle_input(now, PIPE, p, &mut out).unwrap();
            }
            now += Duration::from_millis(33);
            if router.poll_timeout().is_some_and(|t| t <= now) {
                router.handle_timeout(now, &mut out);
            }
            while router.poll_event().is_some() {
                events += 1;
            }
            for i in 0..out.len() {
                let (t, _) = out.get(i).unwrap();
                let ctx = if t.transport.0 % 2 == 0 {
                    &mut cm
                } else {
                    &mut gcm
                };
                let (slot, len) = out.slot_mut(i).unwrap();
                let n = match t.kind {
                    PacketKind::Rtp => ctx.protect_rtp(slot, len),
                    PacketKind::Rtcp => ctx.protect_rtcp(slot, len),
                }
                .unwrap();
                out.set_len(i, n);
                protected += 1;
            }
            black_box(out.iter().count());
            out.clear();
        }
    };
    // Warm up (first packets, first switches), then measure.
    run(0..100);
    let n = count_allocations(|| run(100..FRAMES));
    assert_eq!(n, 0, "allocations on the forwarding path");
    let st = router.stats();
    assert!(
        st.rtp_forwarded > u64::from(FRAMES) * u64::from(CONSUMERS),
        "{st:?}"
    );
    assert!(st.retransmitted > 0 && st.sender_reports_forwarded > 0);
    assert!(st.key_frame_requests_sent > 0);
    assert!(st.upstream_nacks_sent > 0 && st.receiver_reports_sent > 0);
    assert!(st.rtx_received > 0);
    assert!(events > 0, "layer switches happened");
    assert!(protected >= st.rtp_forwarded);
    let switches: u64 = ids
        .iter()
        .map(|&c| router.consumer_stats(c).unwrap().layer_switches)
        .sum();
    assert!(switches > u64::from(CONSUMERS) * 4, "switches {switches}");
    let piped = router.consumer_stats(pipe).unwrap();
    assert!(piped.packets > u64::from(FRAMES) * 6 - 100, "{piped:?}");
    assert!(
        piped.retransmitted > 0 && piped.plis_received > 0,
        "{piped:?}"
    );
}
