//! The daemon with its XDP pre-filter on a veth pair between two throwaway
//! network namespaces (prefix `txdp-`): tern runs in `b` with `--xdp native`,
//! a TURN client and its peer in `a`. Junk and a flood of unauthenticated
//! requests are dropped at XDP (its counters rise, tern's own drop counters
//! do not) while a channel session relays every datagram; tern detaches the
//! program when it stops.
#![cfg(feature = "xdp")]
#![allow(clippy::disallowed_methods)] // clients time out on the clock

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const SERVER: &str = "10.78.0.2";
const CLIENT: &str = "10.78.0.1";
const JUNK: usize = 300;
const FLOOD: usize = 60;
const BURST: usize = 3;

#[allow(clippy::print_stdout)] // the skip note belongs in the test's output
fn can_run(test: &str) -> bool {
    // /proc/self belongs to the process's effective user.
    use std::os::unix::fs::MetadataExt as _;
    if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        return true;
    }
    if std::env::var_os("TERN_REQUIRE_INTEROP").is_some_and(|v| v == "1") {
        panic!("{test}: needs root (namespaces, XDP) and TERN_REQUIRE_INTEROP=1 is set");
    }
    println!("skipped: {test} needs root (network namespaces, XDP)");
    false
}

mod netns;
use netns::Netns;

/// tern in namespace `ns` (`ip netns exec` execs it: the child's pid is tern's).
fn start(ns: &Netns, extra: &[&str]) -> Daemon {
    let listen = format!("{SERVER}:3478");
    let mut args = vec![
        "--listen",
        &listen,
        "--relay-ip",
        SERVER,
        "--allow-peer",
        "10.78.0.0/24",
    ];
    args.extend_from_slice(extra);
    spawn(ns, &args)
}

fn spawn(ns: &Netns, extra: &[&str]) -> Daemon {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_tern")])
        .args([
            "--realm",
            REALM,
            "--user",
            &format!("{USER}:{PASSWORD}"),
            "--relay-ports",
            "50000-50999",
            "--workers",
            "1",
            "--admin",
            "127.0.0.1:9641",
            "--drain-timeout",
            "1",
        ])
        .args(extra)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("TERN_REGISTRY_URL");
    Daemon::spawn(cmd)
}

fn sum(samples: &Samples, prefix: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

fn stun_binding_request(tid: u8) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&[tid; 12]);
    m
}

/// Namespaces `a` (client and peer, CLIENT) and `b` (tern, SERVER) joined
/// by a veth pair, static neighbours both ways.
fn topology(tag: &str) -> (Netns, Netns) {
    let a = Netns::new("txdp", &format!("{tag}a"));
    let b = Netns::new("txdp", &format!("{tag}b"));
    a.exec(&[
        "ip", "link", "add", "txdpa", "type", "veth", "peer", "name", "txdpb", "netns", &b.0,
    ]);
    a.exec(&["ip", "addr", "add", &format!("{CLIENT}/24"), "dev", "txdpa"]);
    b.exec(&["ip", "addr", "add", &format!("{SERVER}/24"), "dev", "txdpb"]);
    a.exec(&["ip", "link", "set", "txdpa", "up"]);
    b.exec(&["ip", "link", "set", "txdpb", "up"]);
    // Local sockets leave UDP checksums unfinished (CHECKSUM_PARTIAL), which a
    // veth running native XDP does not carry to the receiver: finish them.
    a.exec(&["ethtool", "-K", "txdpa", "tx", "off"]);
    b.exec(&["ethtool", "-K", "txdpb", "tx", "off"]);
    let mac_a = a.exec(&["cat", "/sys/class/net/txdpa/address"]);
    let mac_b = b.exec(&["cat", "/sys/class/net/txdpb/address"]);
    a.exec(&[
        "ip",
        "neigh",
        "replace",
        SERVER,
        "lladdr",
        mac_b.trim(),
        "dev",
        "txdpa",
        "nud",
        "permanent",
    ]);
    b.exec(&[
        "ip",
        "neigh",
        "replace",
        CLIENT,
        "lladdr",
        mac_a.trim(),
        "dev",
        "txdpb",
        "nud",
        "permanent",
    ]);

    (a, b)
}

#[test]
fn junk_dies_at_xdp_while_a_session_flows() {
    if !can_run("junk_dies_at_xdp_while_a_session_flows") {
        return;
    }
    let (a, b) = topology("d");
    let mut tern = start(
        &b,
        &[
            "--xdp",
            "native",
            "--xdp-unauth-rate",
            "1",
            "--xdp-unauth-burst",
            &BURST.to_string(),
        ],
    );
    let attached = tern.expect("XDP pre-filter attached");
    assert!(attached.contains("interface=txdpb"), "{attached}");
    assert!(attached.contains("mode=native"), "{attached}");
    tern.expect("relay started");

    let server: SocketAddr = format!("{SERVER}:3478").parse().unwrap();
    let (mut client, peer, junk) = {
        let _in_a = a.enter();
        let mut client = Turn::new(server);
        client.socket = UdpSocket::bind(format!("{CLIENT}:0")).unwrap();
        client
            .socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let peer = UdpSocket::bind(format!("{CLIENT}:0")).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        (
            client,
            peer,
            UdpSocket::bind(format!("{CLIENT}:0")).unwrap(),
        )
    };
    // The Allocate challenge is the client's one unauthenticated request.
    let relayed = client.allocate().relayed.expect("a relayed address");
    let bound = client.channel_bind(0x4000, peer.local_addr().unwrap());
    assert_eq!(bound.error, None);

    // Junk and an unauthenticated flood from the client's own address while
    // the session relays in both directions.
    let flood = std::thread::spawn(move || {
        for i in 0..JUNK {
            let first = [0xFF, 0x16, 0x80, 0x04][i % 4];
            junk.send_to(&[first, 1, 2, 3, 4, 5], server).unwrap();
        }
        for i in 0..FLOOD {
            junk.send_to(&stun_binding_request(i as u8), server)
                .unwrap();
        }
    });
    relay_both_ways(&client, 0x4000, &peer, relayed, "xdp");
    flood.join().unwrap();
    relay_both_ways(&client, 0x4000, &peer, relayed, "after the flood");

    let metrics = {
        let _in_b = b.enter();
        get("127.0.0.1:9641".parse().unwrap(), "/metrics")
    };
    assert_eq!(metrics.status, 200);
    let m = parse_prometheus(&metrics.body);
    let xdp = |verdict: &str, reason: &str| {
        m.get(&format!(
            "tern_xdp_packets_total{{verdict=\"{verdict}\",reason=\"{reason}\"}}"
        ))
        .copied()
        .unwrap_or_else(|| panic!("no {verdict}/{reason} in\n{}", metrics.body))
    };
    assert_eq!(xdp("drop", "first_byte"), JUNK as f64);
    // One token went to the client's Allocate challenge, the rest of the
    // burst to the flood; at 1/s, a slow run refills a few more.
    let flood_dropped = xdp("drop", "unauth_flood");
    let most = (FLOOD - (BURST - 1)) as f64;
    assert!(
        (most - 5.0..=most).contains(&flood_dropped),
        "{flood_dropped} unauthenticated requests dropped, expected about {most}"
    );
    assert_eq!(xdp("pass", "channel_data"), 2.0 * PACKETS as f64);
    assert!(xdp("pass", "relay_port") >= 2.0 * PACKETS as f64);
    assert!(xdp("pass", "stun") >= 3.0);
    assert_eq!(
        m.get("tern_xdp_info{state=\"attached\",reason=\"\"}"),
        Some(&1.0)
    );
    assert_eq!(
        m.get("tern_xdp_attached{interface=\"txdpb\",mode=\"native\"}"),
        Some(&1.0)
    );
    // None of the junk reached tern's own parser.
    assert_eq!(sum(&m, "tern_drops_total"), 0.0, "{}", metrics.body);

    tern.stop();
    let left = b.exec(&["ip", "-d", "link", "show", "txdpb"]);
    assert!(
        !left.contains("prog/xdp"),
        "still attached after exit: {left}"
    );
}

#[test]
fn xdp_auto_without_privilege_or_interface_runs_without_and_says_why() {
    if !can_run("xdp_auto_without_privilege_or_interface_runs_without_and_says_why") {
        return;
    }
    let b = Netns::new("txdp", "du");
    // Only loopback in the namespace, and an interface list naming one that
    // does not exist: auto must log why and relay anyway.
    let mut tern = Command::new("ip")
        .args(["netns", "exec", &b.0, env!("CARGO_BIN_EXE_tern")])
        .args([
            "--listen",
            "127.0.0.1:3478",
            "--realm",
            REALM,
            "--user",
            &format!("{USER}:{PASSWORD}"),
            "--admin",
            "127.0.0.1:9641",
            "--xdp",
            "auto",
            "--xdp-interfaces",
            "txdp-none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = tern.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let mut why = None;
    for line in lines.by_ref().map_while(Result::ok) {
        seen.push(line.clone());
        if line.contains("XDP pre-filter not running") {
            why = Some(line.clone());
        }
        if line.contains("relay started") {
            break;
        }
    }
    let why = why.unwrap_or_else(|| panic!("no XDP line in\n{}", seen.join("\n")));
    assert!(why.contains("txdp-none"), "{why}");
    let metrics = {
        let _in_b = b.enter();
        get("127.0.0.1:9641".parse().unwrap(), "/metrics")
    };
    assert!(
        metrics
            .body
            .contains("tern_xdp_info{state=\"unavailable\",reason=\""),
        "{}",
        metrics.body
    );
    let _ = tern.kill();
    let _ = tern.wait();

    // A forced mode that cannot run refuses to start, naming the cause.
    let out = Command::new("ip")
        .args(["netns", "exec", &b.0, env!("CARGO_BIN_EXE_tern")])
        .args([
            "--listen",
            "127.0.0.1:3478",
            "--realm",
            REALM,
            "--user",
            &format!("{USER}:{PASSWORD}"),
            "--admin",
            "off",
            "--xdp",
            "native",
            "--xdp-interfaces",
            "txdp-none",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("xdp") && err.contains("txdp-none"), "{err}");
}

#[test]
fn a_turn_session_through_the_af_xdp_back_end() {
    if !can_run("a_turn_session_through_the_af_xdp_back_end") {
        return;
    }
    let (a, b) = topology("f");
    let mut tern = start(&b, &["--io-backend", "xdp"]);
    let line = tern.expect("AF_XDP sockets bound and registered");
    assert!(
        line.contains("[\"txdpb\"]") && line.contains("queue=0"),
        "{line}"
    );
    let started = tern.expect("relay started");
    assert!(
        started.contains("workers=1"),
        "one worker per veth queue: {started}"
    );

    let server: SocketAddr = format!("{SERVER}:3478").parse().unwrap();
    let (mut client, peer) = {
        let _in_a = a.enter();
        let mut client = Turn::new(server);
        client.socket = UdpSocket::bind(format!("{CLIENT}:0")).unwrap();
        client
            .socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let peer = UdpSocket::bind(format!("{CLIENT}:0")).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        (client, peer)
    };
    let relayed = client.allocate().relayed.expect("a relayed address");
    assert_eq!(
        client
            .channel_bind(0x4000, peer.local_addr().unwrap())
            .error,
        None
    );
    for round in ["af_xdp 1", "af_xdp 2", "af_xdp 3"] {
        relay_both_ways(&client, 0x4000, &peer, relayed, round);
    }

    let metrics = {
        let _in_b = b.enter();
        get("127.0.0.1:9641".parse().unwrap(), "/metrics")
    };
    let m = parse_prometheus(&metrics.body);
    let xdp = |verdict: &str, reason: &str| {
        m.get(&format!(
            "tern_xdp_packets_total{{verdict=\"{verdict}\",reason=\"{reason}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    // Every client and peer datagram went through the AF_XDP socket.
    assert_eq!(
        xdp("redirect", "channel_data"),
        3.0 * PACKETS as f64,
        "{}",
        metrics.body
    );
    assert_eq!(xdp("redirect", "relay_port"), 3.0 * PACKETS as f64);
    assert!(xdp("redirect", "stun") >= 3.0);
    assert_eq!(xdp("pass", "channel_data") + xdp("pass", "relay_port"), 0.0);
    assert!(
        metrics.body.contains("backend=\"xdp\""),
        "build info names the back end: {}",
        metrics.body
    );
    tern.stop();
    let left = b.exec(&["ip", "-d", "link", "show", "txdpb"]);
    assert!(
        !left.contains("prog/xdp"),
        "still attached after exit: {left}"
    );
}

/// client (a) 10.78.1.2 -- 10.78.1.1 relay (b) 10.78.2.1 -- 10.78.2.2 peer (c),
/// static neighbours, transmit checksums finished in software.
fn three_namespaces(tag: &str) -> (Netns, Netns, Netns) {
    let a = Netns::new("txdp", &format!("{tag}a"));
    let b = Netns::new("txdp", &format!("{tag}b"));
    let c = Netns::new("txdp", &format!("{tag}c"));
    a.exec(&[
        "ip", "link", "add", "txdpa", "type", "veth", "peer", "name", "txdpb", "netns", &b.0,
    ]);
    c.exec(&[
        "ip", "link", "add", "txdpd", "type", "veth", "peer", "name", "txdpc", "netns", &b.0,
    ]);
    for (ns, dev, addr) in [
        (&a, "txdpa", "10.78.1.2/24"),
        (&b, "txdpb", "10.78.1.1/24"),
        (&b, "txdpc", "10.78.2.1/24"),
        (&c, "txdpd", "10.78.2.2/24"),
    ] {
        ns.exec(&["ip", "addr", "add", addr, "dev", dev]);
        ns.exec(&["ip", "link", "set", dev, "up"]);
        ns.exec(&["ethtool", "-K", dev, "tx", "off"]);
    }
    let mac = |ns: &Netns, dev: &str| ns.exec(&["cat", &format!("/sys/class/net/{dev}/address")]);
    let (ma, mb, mc, md) = (
        mac(&a, "txdpa"),
        mac(&b, "txdpb"),
        mac(&b, "txdpc"),
        mac(&c, "txdpd"),
    );
    for (ns, ip, m, dev) in [
        (&a, "10.78.1.1", &mb, "txdpa"),
        (&b, "10.78.1.2", &ma, "txdpb"),
        (&b, "10.78.2.2", &md, "txdpc"),
        (&c, "10.78.2.1", &mc, "txdpd"),
    ] {
        ns.exec(&[
            "ip",
            "neigh",
            "replace",
            ip,
            "lladdr",
            m.trim(),
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
    }
    (a, b, c)
}

/// tern `--io-backend xdp` in `b` of [`three_namespaces`].
fn tern_af_xdp_between(b: &Netns) -> Daemon {
    let mut tern = spawn(
        b,
        &[
            "--listen",
            "10.78.1.1:3478",
            "--relay-ip",
            "10.78.2.1",
            "--allow-peer",
            "10.78.2.0/24",
            "--io-backend",
            "xdp",
        ],
    );
    let line = tern.expect("AF_XDP sockets bound and registered");
    assert!(line.contains("[\"txdpb\", \"txdpc\"]"), "{line}");
    tern.expect("relay started");
    tern
}

#[test]
fn a_turn_session_through_af_xdp_on_two_interfaces_in_three_namespaces() {
    if !can_run("a_turn_session_through_af_xdp_on_two_interfaces_in_three_namespaces") {
        return;
    }
    let (a, b, c) = three_namespaces("t");
    let mut tern = tern_af_xdp_between(&b);

    let mut client = {
        let _in_a = a.enter();
        let mut client = Turn::new("10.78.1.1:3478".parse().unwrap());
        client.socket = UdpSocket::bind("10.78.1.2:0").unwrap();
        client
            .socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        client
    };
    let peer = {
        let _in_c = c.enter();
        let peer = UdpSocket::bind("10.78.2.2:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        peer
    };
    let relayed = client.allocate().relayed.expect("a relayed address");
    assert_eq!(relayed.ip().to_string(), "10.78.2.1");
    assert_eq!(
        client
            .channel_bind(0x4000, peer.local_addr().unwrap())
            .error,
        None
    );
    for round in ["3ns 1", "3ns 2"] {
        relay_both_ways(&client, 0x4000, &peer, relayed, round);
    }
    let metrics = {
        let _in_b = b.enter();
        get("127.0.0.1:9641".parse().unwrap(), "/metrics")
    };
    let m = parse_prometheus(&metrics.body);
    let xdp = |verdict: &str, reason: &str| {
        m.get(&format!(
            "tern_xdp_packets_total{{verdict=\"{verdict}\",reason=\"{reason}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert_eq!(
        xdp("redirect", "channel_data"),
        2.0 * PACKETS as f64,
        "{}",
        metrics.body
    );
    assert_eq!(xdp("redirect", "relay_port"), 2.0 * PACKETS as f64);
    for dev in ["txdpb", "txdpc"] {
        assert_eq!(
            m.get(&format!(
                "tern_xdp_attached{{interface=\"{dev}\",mode=\"native\"}}"
            )),
            Some(&1.0),
            "{}",
            metrics.body
        );
    }
    tern.stop();
}

/// A tool of coturn's, or `None` (skipped; a failure under TERN_REQUIRE_INTEROP=1).
#[allow(clippy::print_stdout)] // the skip note belongs in the test's output
fn tool(name: &str) -> Option<String> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p.to_string_lossy().into_owned()),
        None if std::env::var_os("TERN_REQUIRE_INTEROP").is_some_and(|v| v == "1") => {
            panic!("{name} not installed (apt-get install coturn) and TERN_REQUIRE_INTEROP=1")
        }
        None => {
            println!("skipped: {name} not installed (apt-get install coturn)");
            None
        }
    }
}

#[test]
fn coturn_uclient_through_af_xdp_in_three_namespaces() {
    if !can_run("coturn_uclient_through_af_xdp_in_three_namespaces") {
        return;
    }
    let (Some(uclient), Some(peer_bin)) = (tool("turnutils_uclient"), tool("turnutils_peer"))
    else {
        return;
    };
    let (a, b, c) = three_namespaces("u");
    let mut tern = tern_af_xdp_between(&b);
    let mut peer = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.0,
            &peer_bin,
            "-p",
            "3480",
            "-L",
            "10.78.2.2",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(peer.try_wait().unwrap().is_none(), "turnutils_peer exited");
    // As in tests/tests/interop_uclient.rs (with -m 5, uclient ran 6 sessions).
    const CLIENTS: u64 = 10;
    const MESSAGES: u64 = 40;
    let run = Command::new("ip")
        .args(["netns", "exec", &a.0, &uclient])
        .args(["-u", USER, "-w", PASSWORD])
        .args(["-e", "10.78.2.2", "-r", "3480"])
        .args(["-m", &CLIENTS.to_string(), "-n", &MESSAGES.to_string()])
        .args(["-l", "160", "-z", "20", "-p", "3478", "10.78.1.1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = peer.kill();
    let _ = peer.wait();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "uclient: {log}");
    let totals = log
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))
        .unwrap_or_else(|| panic!("no totals in {log}"));
    let expected = CLIENTS * MESSAGES;
    assert!(
        totals.contains(&format!(
            "tot_send_msgs={expected}, tot_recv_msgs={expected}"
        )),
        "{totals}"
    );
    assert!(log.contains("Total lost packets 0 "), "{log}");

    let metrics = {
        let _in_b = b.enter();
        get("127.0.0.1:9641".parse().unwrap(), "/metrics")
    };
    let m = parse_prometheus(&metrics.body);
    let redirected: f64 = ["channel_data", "relay_port"]
        .iter()
        .map(|r| {
            m.get(&format!(
                "tern_xdp_packets_total{{verdict=\"redirect\",reason=\"{r}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
        })
        .sum();
    assert!(
        redirected >= 2.0 * expected as f64,
        "every relayed datagram through AF_XDP: {redirected}\n{}",
        metrics.body
    );
    tern.stop();
}
