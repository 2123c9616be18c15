//! Loss injected by the tc classic-BPF filter, and relaying across the
//! three-namespace topology. Everything runs inside network namespaces the
//! tests create and delete; nothing touches the host's interfaces.
//!
//! These need root. Without it they print `skipped: needs root for
//! netns/tc` and pass, unless `TERN_REQUIRE_INTEROP=1`, where they fail.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tern_bench::forwarder::{ForwarderConfig, ForwarderThread};
use tern_bench::load::{measure, peer_sockets, peer_sockets_on, Load};
use tern_bench::netns::{in_netns, is_root, unique_name, Direction, LossFilter, Netns, Topology};
use tern_bench::scenario::{Bench, HarnessIo, Scenario, TargetKind, TopologyKind};
use tern_bench::turn_client::DataPath;

fn root_or_skip() -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("TERN_REQUIRE_INTEROP").as_deref() != Ok("1"),
        "TERN_REQUIRE_INTEROP=1, but this test needs root for netns/tc"
    );
    eprintln!("skipped: needs root for netns/tc");
    false
}

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

fn netns_exists(name: &str) -> bool {
    PathBuf::from("/run/netns").join(name).exists()
}

fn tc_show(ns: &str, what: &[&str]) -> String {
    let out = Command::new("tc")
        .args(["-n", ns])
        .args(what)
        .output()
        .expect("tc runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tc_bpf_filter_drops_the_requested_share() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::create(&unique_name("t")).unwrap();
    let (flows, peers) = in_netns(&ns, || {
        let peers = peer_sockets(1, false)?;
        let addr = peers[0].local_addr()?;
        let b = Bench::plain(addr, Vec::new(), 16, None)?;
        Ok::<_, tern_bench::Error>((b, peers))
    })
    .unwrap()
    .unwrap();
    {
        let _f = LossFilter::add(Some(&ns.name), "lo", Direction::Ingress, 10.0).unwrap();
        assert!(tc_show(&ns.name, &["filter", "show", "dev", "lo", "ingress"]).contains("bpf"));
        let m = measure(&flows.flows, &peers, &load(40_000.0, 20_000), 7, None);
        assert_eq!(m.sent, 20_000);
        assert_eq!(m.duplicates, 0);
        assert!(
            (8.5..=11.5).contains(&m.loss_pct),
            "reported loss {:.3} % is not 10 ± 1.5 %",
            m.loss_pct
        );
        eprintln!("tc bpf 10 % filter: reported loss {:.3} %", m.loss_pct);
    }
    // The guard removed the qdisc, and with it the filter: nothing is lost.
    assert!(!tc_show(&ns.name, &["qdisc", "show", "dev", "lo"]).contains("clsact"));
    let m = measure(&flows.flows, &peers, &load(40_000.0, 2_000), 8, None);
    assert_eq!((m.sent, m.received), (2_000, 2_000));
    let name = ns.name.clone();
    drop((flows, peers, ns));
    assert!(!netns_exists(&name), "namespace {name} was deleted");
}

#[test]
fn egress_filter_and_zero_loss() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::create(&unique_name("t")).unwrap();
    let (b, peers) = in_netns(&ns, || {
        let peers = peer_sockets(1, false)?;
        let b = Bench::plain(peers[0].local_addr()?, Vec::new(), 4, None)?;
        Ok::<_, tern_bench::Error>((b, peers))
    })
    .unwrap()
    .unwrap();
    let f = LossFilter::add(Some(&ns.name), "lo", Direction::Egress, 0.0).unwrap();
    let m = measure(&b.flows, &peers, &load(40_000.0, 2_000), 9, None);
    assert_eq!(m.received, 2_000, "0 % drops nothing");
    drop(f);
    let f = LossFilter::add(Some(&ns.name), "lo", Direction::Egress, 100.0).unwrap();
    let m = measure(&b.flows, &peers, &load(40_000.0, 500), 10, None);
    assert_eq!(m.received, 0, "100 % drops everything");
    drop(f);
    assert!(!tc_show(&ns.name, &["qdisc", "show", "dev", "lo"]).contains("clsact"));
}

#[test]
fn three_namespace_topology_relays_and_cleans_up() {
    if !root_or_skip() {
        return;
    }
    let t = Topology::create(8).unwrap();
    let names = [
        t.client.name.clone(),
        t.relay.name.clone(),
        t.peer.name.clone(),
    ];
    let peers = in_netns(&t.peer, || peer_sockets_on(IpAddr::V4(Topology::PEER), 1))
        .unwrap()
        .unwrap();
    let to = peers[0].local_addr().unwrap();
    // A userspace forwarder in the relay namespace stands in for the relay.
    let fwd = in_netns(&t.relay, || {
        ForwarderThread::spawn(
            (Topology::RELAY_CLIENT_SIDE, 0).into(),
            ForwarderConfig {
                to,
                drop_share: 0.0,
                delay: Duration::ZERO,
                batch: 64,
                max_packets: 1_000_000,
                time_limit: Duration::from_secs(60),
                reply: None,
            },
        )
    })
    .unwrap()
    .unwrap();
    let b = in_netns(&t.client, || Bench::plain(fwd.addr, Vec::new(), 8, None))
        .unwrap()
        .unwrap();
    let src = b.flows[3].sock.local_addr().unwrap();
    assert_eq!(
        src.ip(),
        Topology::client_ip(3),
        "clients use their own IPs"
    );
    let m = measure(&b.flows, &peers, &load(20_000.0, 2_000), 11, None);
    assert_eq!((m.sent, m.received), (2_000, 2_000));
    drop((b, fwd, peers));
    drop(t);
    for n in names {
        assert!(!netns_exists(&n), "namespace {n} was deleted");
    }
}

/// 20 channel flows through coturn across the topology.
fn coturn_scenario(bin: PathBuf, load: Load, receivers: usize, harness_io: HarnessIo) -> Scenario {
    Scenario {
        flows: 20,
        path: DataPath::Channel,
        load,
        receivers,
        workers: 1,
        tern_bin: PathBuf::from("/nonexistent"),
        coturn_bin: bin,
        realm: "tern.bench".into(),
        secret: "s3cret".into(),
        user: "bench".into(),
        long_term: false,
        server: None,
        relay_pid: None,
        idle_pct: 100.0,
        idle_wait: Duration::ZERO,
        topology: TopologyKind::Netns,
        null_io: Default::default(),
        null_per_flow: false,
        harness_io,
    }
}

fn turnserver() -> Option<PathBuf> {
    let p = std::env::var_os("PATH")?;
    std::env::split_paths(&p)
        .map(|d| d.join("turnserver"))
        .find(|p| p.exists())
}

#[test]
fn coturn_across_the_netns_topology_when_installed() {
    if !root_or_skip() {
        return;
    }
    let Some(bin) = turnserver() else {
        eprintln!("skipped: coturn (turnserver) is not installed");
        return;
    };
    let sc = coturn_scenario(bin, load(10_000.0, 400), 1, HarnessIo::Kernel);
    let mut b = Bench::start(TargetKind::Coturn, &sc).unwrap();
    let r = b.window(&sc.load, 100.0, Duration::ZERO);
    assert_eq!((r.m.sent, r.m.received), (400, 400), "{:?}", r.m);
    assert!(r.m.cpu.relay_cpu_s.is_some());
}

/// The AF_XDP harness: the generator's frames leave through an XSK on the
/// client veth, coturn relays them as it would any datagram, and the sink
/// takes them from an XSK behind tern's XDP program on the peer veth —
/// every probe accounted, none through the kernel on either side.
#[cfg(feature = "xdp")]
#[test]
fn af_xdp_harness_through_coturn_when_installed() {
    if !root_or_skip() {
        return;
    }
    let Some(bin) = turnserver() else {
        eprintln!("skipped: coturn (turnserver) is not installed");
        return;
    };
    let mut l = load(10_000.0, 600);
    l.burst = 4;
    l.tick = Duration::from_millis(1);
    let sc = coturn_scenario(bin, l, 2, HarnessIo::Xsk);
    let mut b = Bench::start(TargetKind::Coturn, &sc).unwrap();
    for _ in 0..2 {
        let r = b.window(&sc.load, 100.0, Duration::ZERO);
        assert_eq!((r.m.sent, r.m.received), (600, 600), "{:?}", r.m);
        assert_eq!((r.m.lost, r.m.duplicates, r.m.foreign), (0, 0, 0));
        assert_eq!(
            r.m.harness_xsk,
            Some(tern_bench::load::HarnessXsk {
                sent_xsk: 600,
                sent_kernel: 0,
                received_xsk: 600,
                received_kernel: 0,
            })
        );
    }
    // One sender on one queue: the harness refuses more.
    let mut two = sc.clone();
    two.load.senders = 2;
    let err = Bench::start(TargetKind::Coturn, &two)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("one sender"), "{err}");
}
