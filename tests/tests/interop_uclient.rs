//! coturn's load client `turnutils_uclient` against tern, with coturn's own echo peer
//! `turnutils_peer`: REST and long-term credentials, channels (its default) and Send
//! indications (`-s`), ten concurrent sessions at a modest rate, IPv4 and IPv6 relaying.
//! Its final statistics must show every message sent and echoed, none lost or dropped.
//!
//! uclient picks channel numbers up to 0x7FFF (RFC 5766), which tern accepts unless
//! `strict_channel_range` is set.
#![allow(clippy::disallowed_methods)] // tests wait on the wall clock

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tern_tests::env::require_tool;
use tern_tests::ports::{free_udp_port, V4, V6};
use tern_tests::process::{run_with_timeout, scratch_dir, ChildGuard};
use tern_tests::relay::{TestRelay, PASSWORD, SECRET, USER};

const INSTALL: &str = "apt-get install -y coturn";
const CLIENTS: u64 = 10;
const MESSAGES: u64 = 40;

/// What uclient reported at the end of its run.
#[derive(Debug, Default, PartialEq, Eq)]
struct UclientTotals {
    send_msgs: u64,
    recv_msgs: u64,
    lost: u64,
    send_dropped: u64,
}

/// Parses the last `tot_send_msgs=N, tot_recv_msgs=M` and the
/// `Total lost packets N (..%), total send dropped M (..%)` lines.
fn parse_totals(log: &str) -> Option<UclientTotals> {
    let mut t = UclientTotals::default();
    let mut saw_msgs = false;
    let mut saw_lost = false;
    for line in log.lines() {
        if let (Some(s), Some(r)) = (
            number_after(line, "tot_send_msgs="),
            number_after(line, "tot_recv_msgs="),
        ) {
            if !line.contains("msz=") {
                t.send_msgs = s;
                t.recv_msgs = r;
                saw_msgs = true;
            }
        }
        if let (Some(l), Some(d)) = (
            number_after(line, "Total lost packets "),
            number_after(line, "total send dropped "),
        ) {
            t.lost = l;
            t.send_dropped = d;
            saw_lost = true;
        }
    }
    (saw_msgs && saw_lost).then_some(t)
}

fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Starts `turnutils_peer` on a probed free port of `ip`, retrying on a lost race.
fn start_peer(peer_bin: &Path, ip: IpAddr, dir: &Path) -> (ChildGuard, u16) {
    for attempt in 0..5 {
        let port = free_udp_port(ip);
        let mut cmd = Command::new(peer_bin);
        cmd.args(["-p", &port.to_string(), "-L", &ip.to_string()]);
        let mut peer = ChildGuard::spawn(&mut cmd, &format!("turnutils_peer-{attempt}"), dir)
            .expect("spawn turnutils_peer");
        // It binds at once; if the port was taken meanwhile it exits.
        if peer.wait_timeout(Duration::from_millis(300)).is_none() {
            return (peer, port);
        }
        eprintln!("turnutils_peer on {ip}:{port} exited: {}", peer.describe());
    }
    panic!("turnutils_peer could not start on {ip} after 5 attempts");
}

/// Runs one uclient session set against a fresh relay and checks its totals and the
/// relay's counters.
fn run_uclient(name: &str, auth: &[&str], extra: &[&str], peer_ip: IpAddr) {
    let Some(uclient) = require_tool("turnutils_uclient", INSTALL) else {
        return;
    };
    let Some(peer_bin) = require_tool("turnutils_peer", INSTALL) else {
        return;
    };
    let relay = TestRelay::start();
    if peer_ip.is_ipv6() && relay.v6().is_none() {
        eprintln!("IPv6 loopback unavailable: {name} not run");
        return;
    }
    let dir = scratch_dir(name);
    let (peer, peer_port) = start_peer(&peer_bin, peer_ip, &dir);
    let server = relay.v4();

    let mut cmd = Command::new(uclient);
    cmd.args(auth)
        .args(extra)
        .args(["-e", &peer_ip.to_string(), "-r", &peer_port.to_string()])
        .args(["-m", &CLIENTS.to_string(), "-n", &MESSAGES.to_string()])
        .args(["-l", "160", "-z", "20"])
        .args(["-p", &server.port().to_string(), &server.ip().to_string()]);
    let (status, log) =
        run_with_timeout(&mut cmd, "turnutils_uclient", &dir, Duration::from_secs(90))
            .expect("run turnutils_uclient");
    let context = format!(
        "uclient {auth:?} {extra:?} against {server}, peer {peer_ip}:{peer_port}\n--- uclient log tail ---\n{}\n--- {}",
        tail(&log, 30),
        peer.describe()
    );
    let status = status.unwrap_or_else(|| panic!("uclient ran past 90 s: {context}"));
    assert!(status.success(), "uclient exit status {status}: {context}");
    let totals = parse_totals(&log).unwrap_or_else(|| panic!("no final statistics: {context}"));
    let expected = CLIENTS * MESSAGES;
    assert_eq!(
        totals,
        UclientTotals {
            send_msgs: expected,
            recv_msgs: expected,
            lost: 0,
            send_dropped: 0
        },
        "{context}"
    );

    let s = relay.turn_stats();
    // Each session makes its RTP allocation plus an RTCP one (no -c).
    assert!(
        s.allocations_created >= CLIENTS,
        "allocations_created {s:?}"
    );
    assert!(
        s.packets_to_peer >= expected,
        "packets_to_peer {} < {expected}",
        s.packets_to_peer
    );
    assert!(
        s.packets_to_client >= expected,
        "packets_to_client {} < {expected}",
        s.packets_to_client
    );
    if extra.contains(&"-s") {
        assert_eq!(s.channels_bound, 0, "-s uses Send indications, no channel");
    } else {
        assert!(
            s.channels_bound >= CLIENTS,
            "channels_bound {}",
            s.channels_bound
        );
        assert!(
            s.channel_data_to_client >= expected,
            "channel_data_to_client {s:?}"
        );
    }
    drop(peer);
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn rest_credentials_with_channels() {
    run_uclient(
        "uclient-rest-channels",
        &["-W", SECRET, "-u", "uclient"],
        &[],
        V4,
    );
}

#[test]
fn long_term_credentials_with_channels() {
    run_uclient(
        "uclient-lt-channels",
        &["-u", USER, "-w", PASSWORD],
        &[],
        V4,
    );
}

#[test]
fn long_term_credentials_with_send_indications() {
    run_uclient(
        "uclient-lt-send",
        &["-u", USER, "-w", PASSWORD],
        &["-s"],
        V4,
    );
}

#[test]
fn rest_credentials_ipv6_relay_and_peer() {
    run_uclient(
        "uclient-rest-v6",
        &["-W", SECRET, "-u", "uclient6"],
        &["-x"],
        V6,
    );
}

#[test]
fn parses_uclient_totals() {
    let log = "\
5: : start_mclient: msz=10, tot_send_msgs=379, tot_recv_msgs=379, tot_send_bytes ~ 1, tot_recv_bytes ~ 1
5: : start_mclient: tot_send_msgs=500, tot_recv_msgs=498
5: : Total lost packets 2 (0.400000%), total send dropped 1 (0.200000%)
";
    assert_eq!(
        parse_totals(log),
        Some(UclientTotals {
            send_msgs: 500,
            recv_msgs: 498,
            lost: 2,
            send_dropped: 1
        })
    );
    assert_eq!(parse_totals("0: : Total connect time is 1"), None);
}
