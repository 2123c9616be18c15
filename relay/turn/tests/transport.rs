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
        assert_eq!(t.is_stream(), matches!(t, Transport::Tcp | Transport::Tls));
    }
    assert_eq!(Transport::Tls.as_str(), "tls");
    assert_eq!(Transport::Dtls.as_str(), "dtls");
}

#[test]
fn a_dtls_client_gets_datagrams_on_its_association_unpadded() {
    let mut h = Harness::new(config());
    let mut c = Client::user("203.0.113.9:40000", "alice");
    c.transport = Transport::Dtls;
    let a = h.allocate(&mut c);
    let relayed = a.relayed();
    let peer: SocketAddr = sa(PEER);
    h.channel_bind(&mut c, 0x4001, peer).ok();
    let fwd = h
        .client_sends(&c, &channel_data(0x4001, b"hello"))
        .expect("relayed to the peer");
    assert_eq!(fwd.via, Via::Relay(relayed));
    assert_eq!(fwd.payload, b"hello");
    // Peer → client: ChannelData through the DTLS layer, not padded (datagrams).
    let fwd = h.peer_packet(relayed, peer, b"hello").expect("to client");
    assert_eq!(fwd.via, Via::Dtls(c.listener));
    assert_eq!(fwd.to, c.addr);
    assert_eq!(fwd.payload.len(), 4 + 5);
    let by = &h.server.stats().by_transport;
    assert_eq!(by[Transport::Dtls.index()].allocations_created, 1);
    assert_eq!(by[Transport::Udp.index()].allocations_created, 0);
    // The association ends: so does the allocation.
    let now = h.now;
    assert!(h
        .server
        .handle_client_closed(&mut h.host, c.five_tuple(), now));
    assert_eq!(h.server.allocation_count(), 0);
}

// ---- RFC 6062 TCP allocations ------------------------------------------------

fn tcp_relay_config() -> tern_turn::ServerConfig {
    let mut cfg = config_v4_only();
    cfg.tcp_relay = true;
    cfg
}

fn tcp_allocate(h: &mut Harness, c: &mut Client) -> Response {
    h.signed(c, |c| {
        c.request(tern_stun::Method::ALLOCATE, |w| {
            w.add_requested_transport(tern_stun::PROTOCOL_TCP).unwrap()
        })
    })
}

fn connection_id(r: &Response) -> u32 {
    r.u32(tern_stun::attr::CONNECTION_ID)
        .expect("CONNECTION-ID")
}

fn connection_bind_req(c: &mut Client, id: u32) -> Vec<u8> {
    c.request(tern_stun::Method::CONNECTION_BIND, |w| {
        w.add_u32(tern_stun::attr::CONNECTION_ID, id).unwrap()
    })
}

#[test]
fn tcp_allocations_are_offered_only_when_enabled_and_only_on_streams() {
    // Off (the default): 442.
    let mut h = Harness::new(config_v4_only());
    let mut c = tcp_client("203.0.113.5:40000", "alice");
    tcp_allocate(&mut h, &mut c).expect_error(442);
    // On, but over UDP: 400.
    let mut h = Harness::new(tcp_relay_config());
    let mut u = Client::user("203.0.113.5:40001", "alice");
    tcp_allocate(&mut h, &mut u).expect_error(400);
    // On, over TCP: a TCP listener on the relayed address.
    let mut c = tcp_client("203.0.113.5:40000", "alice");
    let r = tcp_allocate(&mut h, &mut c).ok();
    let relayed = r.xor_addr(tern_stun::attr::XOR_RELAYED_ADDRESS).unwrap();
    assert!(h.host.tcp_listening.contains(&relayed));
    assert!(h.host.relay_sockets().is_empty(), "no UDP socket");
    // No channels, no Send on it.
    h.channel_bind(&mut c, 0x4001, sa(PEER)).expect_error(400);
    h.permit(&mut c, &[sa(PEER)]).ok();
    let send = c.send_indication(sa(PEER), b"x");
    assert!(h.client_sends(&c, &send).is_none());
    assert_eq!(
        h.server.stats().drops(tern_turn::DropReason::TcpAllocation),
        1
    );
}

#[test]
fn connect_then_connection_bind_splices_a_data_connection() {
    let mut h = Harness::new(tcp_relay_config());
    let mut c = tcp_client("203.0.113.5:40000", "alice");
    let relayed = tcp_allocate(&mut h, &mut c)
        .ok()
        .xor_addr(tern_stun::attr::XOR_RELAYED_ADDRESS)
        .unwrap();
    // Connect: no answer until the host says how the TCP handshake went.
    let req = c.request(tern_stun::Method::CONNECT, |w| {
        w.add_xor_address(tern_stun::attr::XOR_PEER_ADDRESS, sa(PEER))
            .unwrap()
    });
    assert!(h.try_call(&c, &req).is_none());
    let (id, from, to) = h.host.connects[0];
    assert_eq!((from, to), (relayed, sa(PEER)));
    let now = h.now;
    h.server.handle_peer_connected(&mut h.host, id, true, now);
    let t = h.server.poll_transmit().expect("the Connect response");
    let r = Response(t.payload).ok();
    assert_eq!(connection_id(&r), id.0);
    c.assert_signed(&r);
    // A second Connect to the same peer: 446.
    let req = c.request(tern_stun::Method::CONNECT, |w| {
        w.add_xor_address(tern_stun::attr::XOR_PEER_ADDRESS, sa(PEER))
            .unwrap()
    });
    h.call(&c, &req).expect_error(446);
    // ConnectionBind on a new connection, same credentials.
    let mut data = tcp_client("203.0.113.5:40002", "alice");
    data.nonce = c.nonce.clone();
    let req = connection_bind_req(&mut data, id.0);
    h.call(&data, &req).ok();
    assert_eq!(h.host.data_bound, vec![(id, data.five_tuple())]);
    assert_eq!(h.server.stats().tcp_connections_bound, 1);
    // Not twice, and not with an unknown id.
    let mut again = tcp_client("203.0.113.5:40003", "alice");
    again.nonce = c.nonce.clone();
    let req = connection_bind_req(&mut again, id.0);
    h.call(&again, &req).expect_error(400);
    let req = connection_bind_req(&mut again, id.0 ^ 1);
    h.call(&again, &req).expect_error(400);
    // A bound pair has no deadline.
    h.advance_secs(60);
    assert!(h.host.peers_closed.is_empty());
    assert_eq!(h.server.tcp_connection_count(), 1);
    // The control connection closes: the allocation, its listener and its
    // peer connections go.
    let now = h.now;
    h.server
        .handle_client_closed(&mut h.host, c.five_tuple(), now);
    assert!(h.host.tcp_listening.is_empty());
    assert_eq!(h.host.peers_closed, vec![id]);
    assert_eq!(h.server.tcp_connection_count(), 0);
}

#[test]
fn connect_failure_and_timeout_answer_447() {
    let mut h = Harness::new(tcp_relay_config());
    let mut c = tcp_client("203.0.113.5:40000", "alice");
    tcp_allocate(&mut h, &mut c).ok();
    for peer in [sa("8.8.8.8:1"), sa("8.8.8.8:2")] {
        let req = c.request(tern_stun::Method::CONNECT, |w| {
            w.add_xor_address(tern_stun::attr::XOR_PEER_ADDRESS, peer)
                .unwrap()
        });
        assert!(h.try_call(&c, &req).is_none());
    }
    let (refused, _, _) = h.host.connects[0];
    let now = h.now;
    h.server
        .handle_peer_connected(&mut h.host, refused, false, now);
    let t = h.server.poll_transmit().unwrap();
    Response(t.payload).expect_error(447);
    assert_eq!(h.host.peers_closed, vec![refused]);
    h.host.peers_closed.clear();
    // The other never completes: 447 at 30 s, and the host closes it.
    let (slow, _, _) = h.host.connects[1];
    h.advance_secs(29);
    assert!(h.server.poll_transmit().is_none());
    let at = h.at(31);
    h.server.handle_timeout(&mut h.host, at);
    let t = h.server.poll_transmit().unwrap();
    Response(t.payload).expect_error(447);
    assert_eq!(h.host.peers_closed, vec![slow]);
    // A late success for it is closed, not answered.
    let now = h.at(31);
    h.server.handle_peer_connected(&mut h.host, slow, true, now);
    assert!(h.server.poll_transmit().is_none());
    assert_eq!(h.host.peers_closed, vec![slow, slow]);
}

#[test]
fn incoming_peer_needs_a_permission_and_a_timely_connection_bind() {
    let mut h = Harness::new(tcp_relay_config());
    let mut c = tcp_client("203.0.113.5:40000", "alice");
    let relayed = tcp_allocate(&mut h, &mut c)
        .ok()
        .xor_addr(tern_stun::attr::XOR_RELAYED_ADDRESS)
        .unwrap();
    let now = h.now;
    assert_eq!(h.server.handle_peer_incoming(relayed, sa(PEER), now), None);
    h.permit(&mut c, &[sa(PEER)]).ok();
    let now = h.now;
    let id = h
        .server
        .handle_peer_incoming(relayed, sa(PEER), now)
        .expect("permitted");
    let t = h.server.poll_transmit().expect("ConnectionAttempt");
    assert_eq!(t.via, Via::Stream(c.listener));
    assert_eq!(t.to, c.addr);
    let m = tern_stun::Message::parse(&t.payload).unwrap();
    assert_eq!(m.method(), tern_stun::Method::CONNECTION_ATTEMPT);
    assert_eq!(m.class(), tern_stun::Class::Indication);
    let r = Response(t.payload.clone());
    assert_eq!(connection_id(&r), id.0);
    assert_eq!(
        r.xor_addr(tern_stun::attr::XOR_PEER_ADDRESS),
        Some(sa(PEER))
    );
    // Another user cannot bind it.
    let mut bob = tcp_client("203.0.113.9:40000", "bob");
    let req = bob.allocate_req();
    let challenge = h.call(&bob, &req);
    bob.nonce = challenge.nonce();
    let req = connection_bind_req(&mut bob, id.0);
    h.call(&bob, &req).expect_error(441);
    // Nobody binds it in time: closed at 30 s.
    h.advance_secs(31);
    assert_eq!(h.host.peers_closed, vec![id]);
    assert_eq!(h.server.tcp_connection_count(), 0);
    // The peer side closing first is just forgotten.
    let now = h.now;
    let id2 = h
        .server
        .handle_peer_incoming(relayed, sa(PEER), now)
        .unwrap();
    h.server.poll_transmit();
    h.server.handle_peer_closed(id2);
    assert_eq!(h.server.tcp_connection_count(), 0);
}
