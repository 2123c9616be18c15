//! A TURN client this project did not write — webrtc-rs's `turn` crate — allocates through
//! tern and relays to and from a plain UDP peer on loopback.
//!
//! The `turn` client sends its first datagrams to a peer as Send indications while it binds
//! a channel in the background, and ChannelData once the binding is up; enough messages are
//! sent here that both paths carry payload, and the relay's counters must show both.
//!
//! IPv6: the `turn` client can talk to tern over `[::1]`, but it never sends
//! REQUESTED-ADDRESS-FAMILY, so its relayed address is always IPv4 (RFC 8656 §7.2). The
//! IPv6-relayed leg is therefore done with the raw STUN client built on tern-stun.
#![allow(clippy::disallowed_methods)] // tests wait on the wall clock

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tern_tests::creds::rest_credentials_valid_for;
use tern_tests::ports::{V4, V6};
use tern_tests::relay::{test_config, TestRelay, PASSWORD, REALM, SECRET, USER};
use tern_tests::stun_client::{Attr, Peer, StunClient};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

/// Messages each way; the first few go as Send indications / Data indications, the rest as
/// ChannelData once the background ChannelBind has completed.
const MESSAGES: usize = 30;
const STEP: Duration = Duration::from_millis(20);
const WAIT: Duration = Duration::from_secs(3);

struct Outcome {
    relayed: SocketAddr,
}

/// Allocates through `server` with the `turn` client and checks payloads both ways against
/// a plain UDP peer on `peer_ip`.
async fn relay_round_trip(
    server: SocketAddr,
    username: &str,
    password: &str,
    peer_ip: IpAddr,
    relay_ports: (u16, u16),
) -> Outcome {
    let local: SocketAddr = SocketAddr::new(if server.is_ipv4() { V4 } else { V6 }, 0);
    let conn = UdpSocket::bind(local).await.expect("client socket");
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: username.to_owned(),
        password: password.to_owned(),
        realm: String::new(), // learnt from the 401
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    })
    .await
    .expect("turn client");
    client.listen().await.expect("listen");

    let mapped = timeout(WAIT, client.send_binding_request())
        .await
        .expect("Binding within 3 s")
        .expect("Binding succeeds");
    assert!(mapped.ip().is_loopback(), "mapped address {mapped}");

    let relay_conn = timeout(WAIT * 2, client.allocate())
        .await
        .expect("Allocate within 6 s")
        .expect("Allocate succeeds");
    let relayed = relay_conn.local_addr().expect("relayed address");
    assert_eq!(
        relayed.ip(),
        V4,
        "relayed address {relayed} (no family requested: IPv4)"
    );
    assert!(
        (relay_ports.0..=relay_ports.1).contains(&relayed.port()),
        "relayed port {} outside the configured range {relay_ports:?}",
        relayed.port()
    );

    let peer = UdpSocket::bind(SocketAddr::new(peer_ip, 0))
        .await
        .expect("peer socket");
    let peer_addr = peer.local_addr().expect("peer addr");
    let mut buf = vec![0u8; 2048];

    // Client -> peer.
    for i in 0..MESSAGES {
        let payload = format!("client-to-peer #{i} via {username}");
        relay_conn
            .send_to(payload.as_bytes(), peer_addr)
            .await
            .expect("relay_conn.send_to");
        let (n, from) = timeout(WAIT, peer.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("peer got message #{i} within 3 s"))
            .expect("peer recv");
        assert_eq!(&buf[..n], payload.as_bytes(), "message #{i} to the peer");
        assert_eq!(from, relayed, "the peer sees the relayed address");
        tokio::time::sleep(STEP).await;
    }
    // Peer -> client.
    for i in 0..MESSAGES {
        let payload = format!("peer-to-client #{i}");
        peer.send_to(payload.as_bytes(), relayed)
            .await
            .expect("peer send");
        let (n, from) = timeout(WAIT, relay_conn.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("client got message #{i} within 3 s"))
            .expect("relay_conn recv");
        assert_eq!(&buf[..n], payload.as_bytes(), "message #{i} to the client");
        assert_eq!(from, peer_addr, "the client sees the peer's address");
        tokio::time::sleep(STEP).await;
    }
    relay_conn
        .close()
        .await
        .expect("close relay conn (Refresh 0)");
    client.close().await.expect("close client");
    Outcome { relayed }
}

fn assert_counters(relay: &TestRelay, allocations: u64) {
    let s = relay.turn_stats();
    let n = MESSAGES as u64 * allocations;
    assert!(
        s.allocations_created >= allocations,
        "allocations_created {}",
        s.allocations_created
    );
    assert!(
        s.permissions_created >= allocations,
        "permissions_created {}",
        s.permissions_created
    );
    assert!(
        s.channels_bound >= allocations,
        "the turn client binds a channel: {s:?}"
    );
    assert!(
        s.packets_to_peer >= n,
        "packets_to_peer {} < {n}",
        s.packets_to_peer
    );
    assert!(
        s.packets_to_client >= n,
        "packets_to_client {} < {n}",
        s.packets_to_client
    );
    assert!(
        s.channel_data_to_client > 0,
        "peer -> client went as ChannelData after the binding: {s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_term_credentials_relay_both_ways() {
    let cfg = test_config();
    let range = cfg.relay_ports;
    let relay = TestRelay::start_with(cfg);
    relay_round_trip(relay.v4(), USER, PASSWORD, V4, range).await;
    assert_counters(&relay, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_credentials_relay_both_ways() {
    let cfg = test_config();
    let range = cfg.relay_ports;
    let relay = TestRelay::start_with(cfg);
    let (username, password) =
        rest_credentials_valid_for(SECRET, "carol", Duration::from_secs(600));
    relay_round_trip(relay.v4(), &username, &password, V4, range).await;
    assert_counters(&relay, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_control_channel_relays_to_an_ipv4_peer() {
    let cfg = test_config();
    let range = cfg.relay_ports;
    let relay = TestRelay::start_with(cfg);
    let Some(v6) = relay.v6() else {
        eprintln!("IPv6 loopback unavailable: test not run");
        return;
    };
    relay_round_trip(v6, USER, PASSWORD, V4, range).await;
    assert_counters(&relay, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_at_once_keep_their_flows_apart() {
    let cfg = test_config();
    let range = cfg.relay_ports;
    let relay = TestRelay::start_with(cfg);
    let (username, password) = rest_credentials_valid_for(SECRET, "dave", Duration::from_secs(600));
    let a = relay_round_trip(relay.v4(), USER, PASSWORD, V4, range);
    let b = relay_round_trip(relay.v4(), &username, &password, V4, range);
    let (a, b) = tokio::join!(a, b);
    assert_ne!(
        a.relayed, b.relayed,
        "two allocations, two relayed addresses"
    );
    assert_counters(&relay, 2);
}

/// The IPv6-relayed leg, with the raw client (the `turn` crate cannot ask for IPv6):
/// Allocate with REQUESTED-ADDRESS-FAMILY IPv6 over `[::1]`, then Send indication, Data
/// indication, ChannelBind and ChannelData both ways with a peer on `[::1]`.
#[test]
fn ipv6_relayed_address_with_raw_stun() {
    let relay = TestRelay::start();
    let Some(v6) = relay.v6() else {
        eprintln!("IPv6 loopback unavailable: test not run");
        return;
    };
    assert_eq!(relay.listen_addrs().len(), 2);
    let mut c = StunClient::with_credentials(v6, USER, PASSWORD).expect("socket");
    let relayed = c.allocate_ok(&[Attr::RequestedAddressFamily(2)]);
    assert_eq!(relayed.ip(), V6, "relayed {relayed}");
    assert_eq!(c.realm(), Some(REALM));
    let peer = Peer::bind(V6).expect("peer on ::1");
    let r = c.create_permission(&[peer.addr()]).expect("answered");
    assert!(r.is_success(), "{r:?}");

    // Send indication -> peer, peer -> Data indication.
    c.send_indication(peer.addr(), b"v6 send indication")
        .expect("send");
    let (data, from) = peer.recv(WAIT).expect("recv").expect("peer receives");
    assert_eq!(
        (data.as_slice(), from),
        (&b"v6 send indication"[..], relayed)
    );
    peer.send_to(b"v6 data indication", relayed).expect("send");
    let d = c.recv_data(WAIT).expect("recv").expect("client receives");
    assert_eq!(
        (d.peer, d.channel, d.data.as_slice()),
        (peer.addr(), None, &b"v6 data indication"[..])
    );

    // Channel both ways.
    let r = c.channel_bind(0x4000, peer.addr()).expect("answered");
    assert!(r.is_success(), "{r:?}");
    c.send_channel_data(0x4000, b"v6 channel data")
        .expect("send");
    let (data, from) = peer.recv(WAIT).expect("recv").expect("peer receives");
    assert_eq!((data.as_slice(), from), (&b"v6 channel data"[..], relayed));
    peer.send_to(b"v6 back on the channel", relayed)
        .expect("send");
    let d = c.recv_data(WAIT).expect("recv").expect("client receives");
    assert_eq!(
        (d.peer, d.channel, d.data.as_slice()),
        (peer.addr(), Some(0x4000), &b"v6 back on the channel"[..])
    );
    let r = c.refresh(0).expect("answered");
    assert!(r.is_success(), "{r:?}");
}
