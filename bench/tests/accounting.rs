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
    assert!(r.m.latency.p50_us < 5_000.0 || r.m.latency.p50_us > 0.0);
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
