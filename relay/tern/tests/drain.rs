//! The `tern` binary under a service manager: SIGTERM drains (a live
//! allocation keeps it running, its end lets it exit 0, a second SIGTERM
//! stops at once), and `Type=notify` datagrams (READY=1, WATCHDOG=1,
//! STATUS=, STOPPING=1) reach the socket named by NOTIFY_SOCKET.
#![allow(clippy::disallowed_methods)] // timeouts on a child process need the clock

mod common;
mod ports;
use ports::free_relay_range;

use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use tern_stun::Class;

#[test]
fn sigterm_drains_until_the_last_allocation_ends() {
    let mut d = Daemon::start(
        &free_relay_range(100),
        &["--allow-peer", "127.0.0.0/8"],
        &[],
    );
    assert!(eventually(Duration::from_secs(5), || get(
        d.admin, "/readyz"
    )
    .status
        == 200));
    let mut client = Turn::new(d.listen);
    let allocated = client.allocate();
    assert_eq!(allocated.class, Class::Success, "{allocated:?}");
    let relayed = allocated.relayed.expect("XOR-RELAYED-ADDRESS");
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let channel = 0x4001;
    let bound = client.channel_bind(channel, peer.local_addr().unwrap());
    assert_eq!(bound.class, Class::Success, "{bound:?}");
    relay_both_ways(&client, channel, &peer, relayed, "before the drain");

    d.signal(Signal::SIGTERM);
    d.expect("draining before stopping");
    assert_eq!(get(d.admin, "/readyz").status, 503, "not ready at once");
    let refused = Turn::new(d.listen).allocate();
    assert_eq!(refused.error, Some(403), "{refused:?}");
    assert_eq!(
        client.refresh(600).class,
        Class::Success,
        "live allocation refreshes"
    );
    relay_both_ways(&client, channel, &peer, relayed, "during the drain");
    assert!(
        d.exited_within(Duration::from_secs(2)).is_none(),
        "one allocation is live: keeps running"
    );

    assert_eq!(client.refresh(0).class, Class::Success);
    d.expect("drain complete");
    let status = d
        .exited_within(Duration::from_secs(10))
        .expect("exits once drained");
    assert!(status.success(), "{status:?}");
}

#[test]
fn second_sigterm_stops_at_once() {
    let mut d = Daemon::start(&free_relay_range(100), &[], &[]);
    let mut client = Turn::new(d.listen);
    assert_eq!(client.allocate().class, Class::Success);
    d.signal(Signal::SIGTERM);
    d.expect("draining before stopping");
    assert!(d.exited_within(Duration::from_millis(500)).is_none());
    d.signal(Signal::SIGTERM);
    d.expect("second stop signal");
    let status = d.exited_within(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn admin_drain_with_drain_timeout_exits() {
    let mut d = Daemon::start(&free_relay_range(100), &["--drain-timeout", "1"], &[]);
    let mut client = Turn::new(d.listen);
    assert_eq!(client.allocate().class, Class::Success);
    assert_eq!(
        post(d.admin, "/admin/drain", Some("wrong-token-wrong-token")).status,
        401
    );
    assert_eq!(post(d.admin, "/admin/drain", Some(TOKEN)).status, 200);
    d.expect("drain timeout passed");
    let status = d.exited_within(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status:?}");
}

fn notify_socket(name: &str) -> (UnixDatagram, PathBuf) {
    let dir = std::env::temp_dir().join(format!("tern-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (sock, path)
}

/// Datagrams received until `until` holds for one of them, within `within`.
fn wait_for(sock: &UnixDatagram, got: &mut Vec<String>, within: Duration, until: &str) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == until || l.starts_with(until));
            got.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[test]
fn notify_socket_gets_ready_watchdog_status_and_stopping() {
    let (sock, path) = notify_socket("notify.sock");
    let mut d = Daemon::start(
        &free_relay_range(100),
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut got = Vec::new();
    assert!(
        wait_for(&sock, &mut got, Duration::from_secs(5), "READY=1"),
        "{got:?}"
    );
    assert!(
        wait_for(&sock, &mut got, Duration::from_secs(5), "WATCHDOG=1"),
        "{got:?}"
    );
    // Keep-alives keep coming (every half of the 1 s watchdog).
    assert!(
        wait_for(&sock, &mut got, Duration::from_secs(3), "WATCHDOG=1"),
        "{got:?}"
    );
    assert!(got.iter().any(|m| m.contains("STATUS=")), "{got:?}");
    d.signal(Signal::SIGTERM);
    assert!(
        wait_for(&sock, &mut got, Duration::from_secs(5), "STOPPING=1"),
        "{got:?}"
    );
    let status = d.exited_within(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_file(&path);
}
