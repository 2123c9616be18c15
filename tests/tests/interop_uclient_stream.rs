//! coturn's `turnutils_uclient` over TCP (`-t`), TLS (`-t -S`) and DTLS (`-S`
//! alone: DTLS over UDP) against tern's `listen-tcp` / `listen-tls` /
//! `listen-dtls`, with coturn's echo peer `turnutils_peer`: channels
//! and Send indications, ten concurrent sessions, every message echoed, none
//! lost. The relayed transport stays UDP; tern's counters must show the
//! allocations and the relayed messages under the right client transport.
//! The TLS certificate is self-signed, made by the test (rcgen). The DTLS
//! cases need tern's `dtls` feature (`--features tern/dtls`, as
//! tests/run-all.sh builds); without it they skip, or fail under
//! `TERN_REQUIRE_INTEROP=1`.
//!
//! RFC 6062 (`tcp-relay`): `turnutils_uclient -T` (and `-T -S`) makes TCP
//! allocations for four clients and has each Connect to the relayed address
//! of every client after it, so each of the six pairs is spliced on both
//! ends — a Connect on one side, a ConnectionAttempt on the other,
//! ConnectionBind on both — across tern's two workers (data connections are
//! handed to the worker owning their peer connection).
#![allow(clippy::disallowed_methods)] // tests wait on the wall clock

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tern_tests::env::{require_tern_feature, require_tool};
use tern_tests::ports::{free_udp_port, V4};
use tern_tests::process::{run_with_timeout, scratch_dir, ChildGuard};
use tern_tests::relay::{test_config, TestRelay, PASSWORD, USER};
use tern_turn::Transport;

const INSTALL: &str = "apt-get install -y coturn";
const CLIENTS: u64 = 10;
const MESSAGES: u64 = 40;

/// `tot_send_msgs`, `tot_recv_msgs`, lost and send-dropped from uclient's last lines.
fn parse_totals(log: &str) -> Option<(u64, u64, u64, u64)> {
    let mut msgs = None;
    let mut lost = None;
    for line in log.lines() {
        if let (Some(s), Some(r)) = (
            number_after(line, "tot_send_msgs="),
            number_after(line, "tot_recv_msgs="),
        ) {
            if !line.contains("msz=") {
                msgs = Some((s, r));
            }
        }
        if let (Some(l), Some(d)) = (
            number_after(line, "Total lost packets "),
            number_after(line, "total send dropped "),
        ) {
            lost = Some((l, d));
        }
    }
    let ((s, r), (l, d)) = (msgs?, lost?);
    Some((s, r, l, d))
}

fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn start_peer(peer_bin: &Path, ip: IpAddr, dir: &Path) -> (ChildGuard, u16) {
    for attempt in 0..5 {
        let port = free_udp_port(ip);
        let mut cmd = Command::new(peer_bin);
        cmd.args(["-p", &port.to_string(), "-L", &ip.to_string()]);
        let mut peer = ChildGuard::spawn(&mut cmd, &format!("turnutils_peer-{attempt}"), dir)
            .expect("spawn turnutils_peer");
        if peer.wait_timeout(Duration::from_millis(300)).is_none() {
            return (peer, port);
        }
    }
    panic!("turnutils_peer could not start on {ip} after 5 attempts");
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A self-signed certificate and key for localhost / 127.0.0.1, written to `dir`.
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().expect("key pair");
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("params");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.pem()).expect("write cert");
    std::fs::write(&k, key.serialize_pem()).expect("write key");
    (c, k)
}

fn run(name: &str, transport: Transport, extra: &[&str]) {
    if transport == Transport::Dtls && !require_tern_feature("dtls") {
        return;
    }
    let Some(uclient) = require_tool("turnutils_uclient", INSTALL) else {
        return;
    };
    let Some(peer_bin) = require_tool("turnutils_peer", INSTALL) else {
        return;
    };
    let dir = scratch_dir(name);
    let mut config = test_config();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("literal");
    match transport {
        Transport::Tls | Transport::Dtls => {
            let (cert, key) = self_signed(&dir);
            if transport == Transport::Tls {
                config.listen_tls = vec![any];
            } else {
                config.listen_dtls = vec![any];
            }
            config.tls_cert = Some(cert);
            config.tls_key = Some(key);
        }
        _ => config.listen_tcp = vec![any],
    }
    let relay = TestRelay::start_with(config);
    let server = match transport {
        Transport::Tls => relay.handle().listen_tls_addrs()[0],
        Transport::Dtls => relay.handle().listen_dtls_addrs()[0],
        _ => relay.handle().listen_tcp_addrs()[0],
    };
    let (peer, peer_port) = start_peer(&peer_bin, V4, &dir);
    let mut cmd = Command::new(uclient);
    if transport.is_stream() {
        cmd.arg("-t");
    }
    cmd.args(["-u", USER, "-w", PASSWORD])
        .args(extra)
        .args(["-e", &V4.to_string(), "-r", &peer_port.to_string()])
        .args(["-m", &CLIENTS.to_string(), "-n", &MESSAGES.to_string()])
        .args(["-l", "160", "-z", "20"])
        .args(["-p", &server.port().to_string(), &server.ip().to_string()]);
    let (status, log) =
        run_with_timeout(&mut cmd, "turnutils_uclient", &dir, Duration::from_secs(90))
            .expect("run turnutils_uclient");
    let context = format!(
        "uclient {transport:?} {extra:?} against {server}\n--- uclient log tail ---\n{}\n--- {}",
        tail(&log, 30),
        peer.describe()
    );
    let status = status.unwrap_or_else(|| panic!("uclient ran past 90 s: {context}"));
    assert!(status.success(), "uclient exit status {status}: {context}");
    let expected = CLIENTS * MESSAGES;
    assert_eq!(
        parse_totals(&log),
        Some((expected, expected, 0, 0)),
        "{context}"
    );
    let stats = relay.stats();
    let by = &stats.turn.by_transport[transport.index()];
    assert!(
        by.allocations_created >= CLIENTS,
        "{:?}",
        stats.turn.by_transport
    );
    assert!(
        by.packets_to_peer >= expected && by.packets_to_client >= expected,
        "{by:?}"
    );
    assert_eq!(
        stats.turn.by_transport[Transport::Udp.index()].allocations_created,
        0
    );
    if transport == Transport::Dtls {
        let d = &stats.streams.dtls;
        assert!(d.established >= CLIENTS, "{d:?}");
        assert!(d.hello_verify_sent >= CLIENTS, "cookies first: {d:?}");
    } else {
        assert!(stats.streams.accepted[transport.index()] >= CLIENTS);
    }
    if extra.contains(&"-s") {
        assert_eq!(stats.turn.channels_bound, 0);
    } else {
        assert!(stats.turn.channel_data_to_client >= expected);
    }
    drop(peer);
}

#[test]
fn uclient_over_tcp_with_channels() {
    run("uclient-tcp-channels", Transport::Tcp, &[]);
}

#[test]
fn uclient_over_tcp_with_send_indications() {
    run("uclient-tcp-send", Transport::Tcp, &["-s"]);
}

#[test]
fn uclient_over_tls_with_channels() {
    run("uclient-tls-channels", Transport::Tls, &["-S"]);
}

#[test]
fn uclient_over_dtls_with_channels() {
    run("uclient-dtls-channels", Transport::Dtls, &["-S"]);
}

#[test]
fn uclient_over_dtls_with_send_indications() {
    run("uclient-dtls-send", Transport::Dtls, &["-S", "-s"]);
}

/// uclient -T: TCP allocations, full mesh of Connects, every message back.
fn run_tcp_relay(name: &str, tls: bool) {
    let Some(uclient) = require_tool("turnutils_uclient", INSTALL) else {
        return;
    };
    const MESH: u64 = 4;
    let dir = scratch_dir(name);
    let mut config = test_config();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("literal");
    config.tcp_relay = true;
    config.listen_tcp = vec![any];
    if tls {
        let (cert, key) = self_signed(&dir);
        config.listen_tls = vec![any];
        config.tls_cert = Some(cert);
        config.tls_key = Some(key);
    }
    let relay = TestRelay::start_with(config);
    let server = if tls {
        relay.handle().listen_tls_addrs()[0]
    } else {
        relay.handle().listen_tcp_addrs()[0]
    };
    let mut cmd = Command::new(uclient);
    cmd.args(["-T", "-u", USER, "-w", PASSWORD]);
    if tls {
        cmd.arg("-S");
    }
    cmd.args(["-m", &MESH.to_string(), "-n", &MESSAGES.to_string()])
        .args(["-l", "160", "-z", "20"])
        .args(["-p", &server.port().to_string(), &server.ip().to_string()]);
    let (status, log) =
        run_with_timeout(&mut cmd, "turnutils_uclient", &dir, Duration::from_secs(90))
            .expect("run turnutils_uclient");
    let context = format!(
        "uclient -T (tls {tls}) against {server}\n--- uclient log tail ---\n{}",
        tail(&log, 30)
    );
    let status = status.unwrap_or_else(|| panic!("uclient ran past 90 s: {context}"));
    assert!(status.success(), "uclient exit status {status}: {context}");
    assert!(
        log.contains(&format!("{} connections are completed", MESH * (MESH - 1))),
        "{context}"
    );
    let expected = MESH * MESSAGES;
    assert_eq!(
        parse_totals(&log),
        Some((expected, expected, 0, 0)),
        "{context}"
    );
    let stats = relay.stats();
    // Each of the 6 pairs (i Connects to j for i < j): a ConnectionBind on
    // the connecting side and one on the accepting side.
    assert_eq!(
        stats.turn.tcp_connections_bound,
        MESH * (MESH - 1),
        "{context}"
    );
    assert!(
        stats.streams.raw_bytes >= expected * 160,
        "{:?}",
        stats.streams
    );
    assert_eq!(stats.streams.handoffs_out, stats.streams.handoffs_in);
    assert_eq!(stats.streams.handoffs_dropped, 0);
}

#[test]
fn uclient_tcp_relay_rfc6062() {
    run_tcp_relay("uclient-rfc6062", false);
}

#[test]
fn uclient_tcp_relay_rfc6062_over_tls() {
    run_tcp_relay("uclient-rfc6062-tls", true);
}

#[test]
fn parses_totals() {
    let log = "5: : start_mclient: tot_send_msgs=500, tot_recv_msgs=498\n\
               5: : Total lost packets 2 (0.4%), total send dropped 1 (0.2%)\n";
    assert_eq!(parse_totals(log), Some((500, 498, 2, 1)));
    assert_eq!(parse_totals("nothing"), None);
}
