//! The harness's own accounting, checked against known impairments: a run
//! through the impairment proxy reports the loss it injects and the delay it
//! adds; pacing offers exactly the packets asked for; and (where coturn is
//! installed) real TURN sessions deliver everything. Counts, never speed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tern_bench::forwarder::{ForwarderConfig, ForwarderThread};
use tern_bench::load::{measure, peer_sockets, Load};
use tern_bench::scenario::{Bench, Scenario, TargetKind, TopologyKind};
use tern_bench::turn_client::DataPath;

fn load(rate: f64, count: u64) -> Load {
    Load {
        rate_pps: rate,
        duration: Duration::from_secs(20), // a limit, not an expectation
        count,
        payload_len: 64,
        senders: 1,
        burst: 1,
        pin: false,
        disturb_pct: 1e9,
        echo: false,
        mix: None,
        flood_flows: 0,
        flood_rate_pps: 0.0,
        flood_count: 0,
        tick: Duration::ZERO,
        xsk: None,
    }
}

fn proxy(to: SocketAddr, drop_share: f64, delay: Duration) -> ForwarderThread {
    let cfg = ForwarderConfig {
        to,
        drop_share,
        delay,
        batch: 64,
        max_packets: 1_000_000,
        time_limit: Duration::from_secs(60),
        reply: None,
    };
    ForwarderThread::spawn("127.0.0.1:0".parse().unwrap(), cfg).unwrap()
}

#[test]
fn proxy_loss_and_delay_show_up_in_the_report() {
    let peers = peer_sockets(1, false).unwrap();
    let fwd = proxy(
        peers[0].local_addr().unwrap(),
        0.10,
        Duration::from_millis(5),
    );
    let mut b = Bench::plain(fwd.addr, peers, 8, None).unwrap();
    let r = b.window(&load(20_000.0, 2_000), 0.0, Duration::ZERO);
    let m = &r.m;
    assert_eq!(m.sent, 2_000, "pacing offers the requested count");
    let stats = fwd.counters.snapshot();
    assert_eq!(stats.dropped, 200, "the proxy drops exactly 10 %");
    assert!(
        (9.0..=11.0).contains(&m.loss_pct),
        "reported loss {} %",
        m.loss_pct
    );
    assert_eq!(m.duplicates, 0);
    assert!(
        m.latency.p50_us >= 5_000.0,
        "p50 {} µs lacks the 5 ms delay",
        m.latency.p50_us
    );
    assert!(
        m.latency.p50_us < 500_000.0,
        "p50 {} µs is absurd",
        m.latency.p50_us
    );
}

#[test]
fn clean_path_reports_no_loss_and_exact_counts() {
    let peers = peer_sockets(1, false).unwrap();
    let fwd = proxy(peers[0].local_addr().unwrap(), 0.0, Duration::ZERO);
    let mut b = Bench::plain(fwd.addr, peers, 4, None).unwrap();
    let r = b.window(&load(50_000.0, 1_000), 0.0, Duration::ZERO);
    assert_eq!(r.m.sent, 1_000);
    assert_eq!(r.m.received, 1_000);
    assert_eq!((r.m.lost, r.m.duplicates, r.m.foreign), (0, 0, 0));
    assert!(r.m.latency.p50_us > 0.0, "{:?}", r.m.latency);
    // A second window on the same flows starts its accounting afresh.
    let r2 = b.window(&load(50_000.0, 500), 0.0, Duration::ZERO);
    assert_eq!((r2.m.sent, r2.m.received), (500, 500));
}

#[test]
fn pacing_offers_requested_count_over_several_senders() {
    // Flows straight to the peer socket (no forwarder): 3 senders, 7 flows.
    let peers = peer_sockets(1, false).unwrap();
    let addr = peers[0].local_addr().unwrap();
    let b = Bench::plain(addr, peers, 7, None).unwrap();
    let mut l = load(30_000.0, 1_001);
    l.senders = 3;
    l.burst = 4;
    let m = measure(&b.flows, &b.peers, &l, 42, None);
    assert_eq!(m.sent, 1_001);
    assert_eq!(m.received, 1_001);
    assert_eq!(m.requested, 1_001);
    assert!(!m.generator_limited || m.send_shortfall_pct == 0.0);
}

#[test]
fn tick_pacing_sends_every_packet_once_in_clumps() {
    // A 2 ms tick at 20 kpps: about 40 packets accrue per tick over 5
    // flows; the senders must still offer exactly the count, none twice.
    let peers = peer_sockets(1, false).unwrap();
    let addr = peers[0].local_addr().unwrap();
    let b = Bench::plain(addr, peers, 5, None).unwrap();
    let mut l = load(20_000.0, 2_000);
    l.senders = 2;
    l.burst = 8;
    l.tick = Duration::from_millis(2);
    let m = measure(&b.flows, &b.peers, &l, 43, None);
    assert_eq!((m.requested, m.sent, m.received), (2_000, 2_000, 2_000));
    assert_eq!((m.lost, m.duplicates), (0, 0), "{m:?}");
}

fn turnserver() -> Option<PathBuf> {
    let p = std::env::var_os("PATH")?;
    std::env::split_paths(&p)
        .map(|d| d.join("turnserver"))
        .find(|p| p.exists())
}

#[test]
fn real_turn_sessions_through_coturn_when_installed() {
    let Some(bin) = turnserver() else {
        eprintln!("skipped: coturn (turnserver) is not installed");
        return;
    };
    for (path, echo) in [(DataPath::Channel, true), (DataPath::SendIndication, false)] {
        let mut l = load(10_000.0, 400);
        l.echo = echo;
        let sc = Scenario {
            flows: 20,
            path,
            load: l,
            receivers: 2,
            workers: 1,
            tern_bin: PathBuf::from("/nonexistent"),
            coturn_bin: bin.clone(),
            realm: "tern.bench".into(),
            secret: "s3cret".into(),
            user: "bench".into(),
            long_term: false,
            server: None,
            relay_pid: None,
            idle_pct: 100.0,
            idle_wait: Duration::ZERO,
            topology: TopologyKind::Loopback,
            null_io: Default::default(),
            null_per_flow: false,
            harness_io: tern_bench::scenario::HarnessIo::Kernel,
        };
        let mut b = Bench::start(TargetKind::Coturn, &sc).unwrap();
        assert_eq!(b.flows.len(), 20);
        let r = b.window(&sc.load, 100.0, Duration::ZERO);
        assert_eq!(r.m.sent, 400, "{path:?}");
        assert_eq!(r.m.received, 400, "{path:?}: {:?}", r.m);
        assert!(
            r.m.cpu.relay_cpu_s.is_some(),
            "relay CPU is measured by pid"
        );
        if echo {
            let e = r.m.echo.as_ref().expect("echo report");
            assert_eq!(
                e.received, 400,
                "every probe comes back to its client: {e:?}"
            );
            assert!(e.rtt.p50_us > 0.0 && e.foreign == 0, "{e:?}");
        }
    }
}

#[test]
fn payload_mix_arrives_with_exactly_the_sizes_sent() {
    use tern_bench::mix::PayloadMix;
    let peers = peer_sockets(1, false).unwrap();
    let fwd = proxy(peers[0].local_addr().unwrap(), 0.0, Duration::ZERO);
    let mut b = Bench::plain(fwd.addr, peers, 8, None).unwrap();
    let mix = PayloadMix::parse("100:80,1200:15,37:5", 9).unwrap();
    // One sender, burst 1: flow k sends packets k, k+8, ..., so the counts
    // per flow (and so per size) are known.
    let mut l = load(20_000.0, 3_000);
    l.mix = Some(mix.clone());
    let r = b.window(&l, 0.0, Duration::ZERO);
    let m = &r.m;
    assert_eq!((m.sent, m.received, m.lost), (3_000, 3_000, 0), "{m:?}");
    let sizes: Vec<usize> = m.sizes.iter().map(|z| z.size).collect();
    assert_eq!(
        sizes,
        vec![37, 100, 1200],
        "only the mix's sizes: {:?}",
        m.sizes
    );
    for z in &m.sizes {
        assert_eq!(z.sent, z.received, "size {}: {:?}", z.size, m.sizes);
    }
    assert_eq!(m.sizes.iter().map(|z| z.sent).sum::<u64>(), 3_000);
    assert_eq!(m.sent_bytes, m.received_bytes);
    assert_eq!(
        m.sent_bytes,
        m.sizes.iter().map(|z| z.size as u64 * z.sent).sum::<u64>()
    );
    assert!(m.delivered_bytes_per_s > 0.0);
    // The per-flow generators are what the senders used: replaying them
    // gives the same counts per size.
    let mut want = [0u64; 3];
    for flow in 0..8u32 {
        let mut st = mix.flow_state(flow);
        let per_flow = 3_000 / 8; // 375 each
        for _ in 0..per_flow {
            let size = mix.draw(&mut st);
            let i = sizes.iter().position(|&s| s == size).unwrap();
            want[i] += 1;
        }
    }
    let got: Vec<u64> = m.sizes.iter().map(|z| z.sent).collect();
    assert_eq!(got, want.to_vec());
    // Roughly the weights (3,000 draws).
    assert!((2_250..=2_550).contains(&got[1]), "{got:?}");
    assert!(m.classes.is_empty(), "no flood flows, no class rows");
}

#[test]
fn flood_flows_are_reported_as_their_own_class() {
    // Flows straight to the peer socket (no forwarder), as above.
    let peers = peer_sockets(1, false).unwrap();
    let addr = peers[0].local_addr().unwrap();
    let b = Bench::plain(addr, peers, 6 + 3, None).unwrap();
    let mut l = load(10_000.0, 1_200);
    l.senders = 2;
    l.flood_flows = 3;
    l.flood_rate_pps = 5_000.0;
    l.flood_count = 2_000;
    let m = measure(&b.flows, &b.peers, &l, 7, None);
    assert_eq!((m.sent, m.received, m.requested), (3_200, 3_200, 3_200));
    assert_eq!(m.classes.len(), 2, "{m:?}");
    let (low, flood) = (&m.classes[0], &m.classes[1]);
    assert_eq!((low.class, low.flows), ("low-rate", 6));
    assert_eq!((flood.class, flood.flows), ("flood", 3));
    assert_eq!(
        (low.requested, low.sent, low.received, low.lost),
        (1_200, 1_200, 1_200, 0)
    );
    assert_eq!(
        (flood.requested, flood.sent, flood.received, flood.lost),
        (2_000, 2_000, 2_000, 0)
    );
    assert!(low.latency.p50_us > 0.0 && flood.latency.p50_us > 0.0);
    assert!(low.delivered_bytes_per_s > 0.0 && flood.delivered_bytes_per_s > 0.0);
}

#[test]
fn mix_and_flood_through_real_coturn_sessions_when_installed() {
    use tern_bench::mix::PayloadMix;
    let Some(bin) = turnserver() else {
        eprintln!("skipped: coturn (turnserver) is not installed");
        return;
    };
    // 37 bytes is not a multiple of 4: Send indications pad it, and the
    // peer must still get exactly 37 bytes.
    for path in [DataPath::Channel, DataPath::SendIndication] {
        let mut l = load(5_000.0, 300);
        l.mix = Some(PayloadMix::parse("37:50,1200:50", 3).unwrap());
        l.flood_flows = 2;
        l.flood_rate_pps = 2_000.0;
        l.flood_count = 400;
        let sc = Scenario {
            flows: 10,
            path,
            load: l,
            receivers: 1,
            workers: 1,
            tern_bin: PathBuf::from("/nonexistent"),
            coturn_bin: bin.clone(),
            realm: "tern.bench".into(),
            secret: "s3cret".into(),
            user: "bench".into(),
            long_term: false,
            server: None,
            relay_pid: None,
            idle_pct: 100.0,
            idle_wait: Duration::ZERO,
            topology: TopologyKind::Loopback,
            null_io: Default::default(),
            null_per_flow: false,
            harness_io: tern_bench::scenario::HarnessIo::Kernel,
        };
        let mut b = Bench::start(TargetKind::Coturn, &sc).unwrap();
        assert_eq!(b.flows.len(), 12, "flood flows are sessions too");
        let m = b.window(&sc.load, 100.0, Duration::ZERO).m;
        assert_eq!((m.sent, m.received), (700, 700), "{path:?}: {m:?}");
        let sizes: Vec<(usize, u64, u64)> = m
            .sizes
            .iter()
            .map(|z| (z.size, z.sent, z.received))
            .collect();
        assert_eq!(sizes.len(), 2, "{path:?}: {sizes:?}");
        assert!(sizes.iter().all(|&(_, s, r)| s == r), "{path:?}: {sizes:?}");
        assert_eq!((sizes[0].0, sizes[1].0), (37, 1200));
        let c: Vec<(&str, usize, u64, u64)> = m
            .classes
            .iter()
            .map(|c| (c.class, c.flows, c.sent, c.received))
            .collect();
        assert_eq!(
            c,
            vec![("low-rate", 10, 300, 300), ("flood", 2, 400, 400)],
            "{path:?}"
        );
    }
}

/// The two-way proxy on a media path: the far end (`far`, an SFU's socket)
/// sees only the proxy; its RTP goes to the peer's RTP port, its RTCP to
/// the peer's RTCP port, and the peer's RTCP reaches it from the proxy's
/// address, with the delay added each way and the drop pattern per
/// direction. Without fixed reply addresses, replies go to the latest
/// other source.
#[test]
#[allow(clippy::disallowed_methods)] // the injected delay is a lower bound on the clock
fn two_way_proxy_routes_replies_rtcp_apart_with_delay_and_loss() {
    use std::net::UdpSocket;
    use std::time::Instant;
    use tern_bench::forwarder::ReplyRoute;

    let bind = || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    };
    let (far, peer_rtp, peer_rtcp, peer_tx) = (bind(), bind(), bind(), bind());
    let delay = Duration::from_millis(30);
    let fwd = ForwarderThread::spawn(
        "127.0.0.1:0".parse().unwrap(),
        ForwarderConfig {
            to: far.local_addr().unwrap(),
            drop_share: 0.25,
            delay,
            batch: 64,
            max_packets: 1_000,
            time_limit: Duration::from_secs(20),
            reply: Some(ReplyRoute {
                to: Some(peer_rtp.local_addr().unwrap()),
                rtcp: Some(peer_rtcp.local_addr().unwrap()),
            }),
        },
    )
    .unwrap();
    let mut buf = [0u8; 64];
    // RTP (PT 96) and RTCP (PT 200, an SR) from the far end, four of each.
    let (rtp, rtcp) = ([0x80u8, 96, 0, 1], [0x80u8, 200, 0, 6]);
    let t0 = Instant::now();
    for _ in 0..4 {
        far.send_to(&rtp, fwd.addr).unwrap();
        far.send_to(&rtcp, fwd.addr).unwrap();
    }
    // 25 % of the 8 packets from the far end are dropped, exactly the 4th
    // and the 8th (both RTCP): 4 RTP and 2 RTCP arrive, each at its port.
    for _ in 0..4 {
        let (n, from) = peer_rtp.recv_from(&mut buf).unwrap();
        assert_eq!((from, &buf[..n]), (fwd.addr, &rtp[..]));
    }
    assert!(t0.elapsed() >= delay, "delayed on the way back");
    for _ in 0..2 {
        let (n, from) = peer_rtcp.recv_from(&mut buf).unwrap();
        assert_eq!((from, &buf[..n]), (fwd.addr, &rtcp[..]));
    }
    peer_rtcp
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(peer_rtcp.recv_from(&mut buf).is_err(), "two dropped");
    // The peer's RTCP reaches the far end from the proxy's address.
    let t1 = Instant::now();
    peer_tx.send_to(&[0x81, 205, 0, 2], fwd.addr).unwrap();
    let (n, from) = far.recv_from(&mut buf).unwrap();
    assert_eq!((from, &buf[..n]), (fwd.addr, &[0x81u8, 205, 0, 2][..]));
    assert!(t1.elapsed() >= delay, "delayed on the way on");
    let s = fwd.counters.snapshot();
    assert_eq!((s.received, s.dropped, s.replied), (9, 2, 6), "{s:?}");
    drop(fwd);

    // Learned: replies go to whoever sent from the other side last.
    let fwd = ForwarderThread::spawn(
        "127.0.0.1:0".parse().unwrap(),
        ForwarderConfig {
            to: far.local_addr().unwrap(),
            drop_share: 0.0,
            delay: Duration::ZERO,
            batch: 64,
            max_packets: 1_000,
            time_limit: Duration::from_secs(20),
            reply: Some(ReplyRoute::default()),
        },
    )
    .unwrap();
    far.send_to(&rtp, fwd.addr).unwrap(); // nobody learned yet
    peer_tx.send_to(&rtp, fwd.addr).unwrap();
    far.recv_from(&mut buf).unwrap();
    far.send_to(&rtcp, fwd.addr).unwrap();
    let (n, from) = peer_tx.recv_from(&mut buf).unwrap();
    assert_eq!((from, &buf[..n]), (fwd.addr, &rtcp[..]));
    let s = fwd.counters.snapshot();
    assert_eq!((s.unroutable, s.replied), (1, 1), "{s:?}");
}
