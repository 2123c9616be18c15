//! The client transport in the core: TCP and TLS clients get the same
//! allocations, auth, peer policy and quotas as UDP ones, their responses and
//! relayed data leave on their connection (`Via::Stream`), ChannelData to them
//! is padded to 4 bytes (RFC 8656 §12.5), their allocation ends with their
//! connection, and counters are split by transport.

mod support;

use std::net::SocketAddr;

use support::*;
use tern_turn::{DeleteReason, Event, FiveTuple, Transport, Via};

const PEER: &str = "8.8.8.8:4000";

fn tcp_client(addr: &str, user: &str) -> Client {
    let mut c = Client::user(addr, user);
    c.transport = Transport::Tcp;
    c
}

#[test]
fn a_tcp_client_allocates_binds_and_relays_on_its_connection() {
    let mut h = Harness::new(config());
    let mut c = tcp_client("203.0.113.5:40000", "alice");
    let a = h.allocate(&mut c);
    let relayed = a.relayed();
    let peer: SocketAddr = sa(PEER);
    h.channel_bind(&mut c, 0x4001, peer).ok();

    // Client → peer: a padded ChannelData frame from the stream (5 bytes + 3 pad).
    let mut frame = channel_data(0x4001, b"hello");
    frame.resize(12, 0);
    let fwd = h.client_sends(&c, &frame).expect("relayed to the peer");
    assert_eq!(fwd.via, Via::Relay(relayed));
    assert_eq!(fwd.to, peer);
    assert_eq!(fwd.payload, b"hello");

    // Peer → client: ChannelData on the connection, padded to 4 bytes.
    for (len, wire) in [(5usize, 12usize), (4, 8), (1, 8), (0, 4), (7, 12)] {
        let payload: Vec<u8> = (0..len as u8).collect();
        let fwd = h.peer_packet(relayed, peer, &payload).expect("to client");
        assert_eq!(fwd.via, Via::Stream(c.listener));
        assert_eq!(fwd.to, c.addr);
        assert_eq!(fwd.payload.len(), wire, "len {len}");
        assert_eq!(&fwd.payload[..2], &[0x40, 0x01]);
        assert_eq!(
            usize::from(u16::from_be_bytes([fwd.payload[2], fwd.payload[3]])),
            len
        );
        assert_eq!(&fwd.payload[4..4 + len], &payload[..]);
        assert!(
            fwd.payload[4 + len..].iter().all(|&b| b == 0),
            "zero padding"
        );
    }

    // A peer without a channel gets a Data indication (already 4-byte aligned).
    let other = sa("8.8.4.4:4000");
    h.permit(&mut c, &[other]).ok();
    let fwd = h.peer_packet(relayed, other, b"abc").expect("to client");
    assert_eq!(fwd.via, Via::Stream(c.listener));
    assert_eq!(fwd.payload.len() % 4, 0);
    assert_eq!(
        parse_data_indication(&fwd.payload),
        (other, b"abc".to_vec())
    );

    let by = &h.server.stats().by_transport;
    assert_eq!(by[Transport::Tcp.index()].allocations_created, 1);
    assert_eq!(by[Transport::Tcp.index()].packets_to_peer, 1);
    assert_eq!(by[Transport::Tcp.index()].packets_to_client, 6);
    assert_eq!(by[Transport::Udp.index()], Default::default());
}

#[test]
fn udp_and_tcp_from_the_same_address_are_two_five_tuples() {
    let mut h = Harness::new(config());
    let mut udp = Client::user("203.0.113.5:40000", "alice");
    let mut tcp = tcp_client("203.0.113.5:40000", "alice");
    let a = h.allocate(&mut udp).relayed();
    let b = h.allocate(&mut tcp).relayed();
    assert_ne!(a, b);
    assert_eq!(h.server.allocation_count(), 2);
    let peer = sa(PEER);
    h.channel_bind(&mut udp, 0x4001, peer).ok();
    h.channel_bind(&mut tcp, 0x4001, peer).ok();
    assert_eq!(
        h.peer_packet(a, peer, b"x").unwrap().via,
        Via::Listener(udp.listener)
    );
    assert_eq!(
        h.peer_packet(b, peer, b"x").unwrap().via,
        Via::Stream(tcp.listener)
    );
    // Unpadded (UDP) ChannelData is fine on UDP.
    assert!(h.client_sends(&udp, &channel_data(0x4001, b"x")).is_some());
}

#[test]
fn closing_the_connection_ends_the_allocation_and_frees_everything() {
    let mut h = Harness::new(config());
    let mut c = tcp_client("203.0.113.5:40000", "alice");
    let relayed = h.allocate(&mut c).relayed();
    assert_eq!(h.host.user_count("alice"), 1);
    h.take_events();
    let now = h.now;
    assert!(h
        .server
        .handle_client_closed(&mut h.host, c.five_tuple(), now));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.host.user_count("alice"), 0, "quota given back");
    assert!(h.host.relay_sockets().is_empty(), "relay socket closed");
    assert!(h.peer_packet(relayed, sa(PEER), b"late").is_none());
    let events = h.take_events();
    assert!(matches!(
        events.as_slice(),
        [Event::AllocationDeleted { reason: DeleteReason::ConnectionClosed, five_tuple, .. }]
            if *five_tuple == c.five_tuple()
    ));
    // Closing a connection without an allocation is a no-op.
    let now = h.now;
    assert!(!h
        .server
        .handle_client_closed(&mut h.host, c.five_tuple(), now));
    let by = &h.server.stats().by_transport[Transport::Tcp.index()];
    assert_eq!(
        (by.allocations_created, by.allocations_ended, by.live()),
        (1, 1, 0)
    );
}

#[test]
fn peer_policy_quota_and_auth_are_the_same_on_tls() {
    let mut cfg = config();
    cfg.max_allocations = 1;
    let mut h = Harness::new(cfg);
    let mut c = tcp_client("203.0.113.5:40000", "alice");
    c.transport = Transport::Tls;
    // Unauthenticated: 401 on the connection.
    let req = c.allocate_req();
    h.call(&c, &req).expect_error(401);
    h.allocate(&mut c);
    // Loopback peers are denied by the built-in policy.
    h.permit(&mut c, &[sa("127.0.0.1:9")]).expect_error(403);
    assert_eq!(h.server.stats().peer_denied, 1);
    // The shard's allocation cap counts TLS allocations too.
    let mut d = tcp_client("203.0.113.6:40000", "bob");
    d.transport = Transport::Tls;
    h.allocate_with(&mut d, |_| {}).expect_error(508);
    // Draining refuses new Allocates on every transport.
    h.server.set_draining(true);
    let now = h.now;
    h.server
        .handle_client_closed(&mut h.host, c.five_tuple(), now);
    let mut e = tcp_client("203.0.113.7:40000", "carol");
    e.transport = Transport::Tls;
    h.allocate_with(&mut e, |_| {}).expect_error(403);
}

#[test]
fn five_tuple_helpers() {
    let ft = FiveTuple::udp(sa("203.0.113.5:1"), sa(LISTENER));
    assert_eq!(ft.transport, Transport::Udp);
    assert_eq!(ft.via(), Via::Listener(sa(LISTENER)));
    for (i, t) in Transport::ALL.iter().enumerate() {
        assert_eq!(t.index(), i);
        assert_eq!(t.is_stream(), *t != Transport::Udp);
    }
    assert_eq!(Transport::Tls.as_str(), "tls");
}
