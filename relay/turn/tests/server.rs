//! Virtual-time tests of the TURN server core through its public API: a fake
//! Host, a test client speaking STUN through `tern_stun`, and a clock that only
//! moves when a test says so.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use support::*;
use tern_stun::{attr, AddressFamily, Class, Message, Method, PasswordAlgorithm, TransactionId};
use tern_turn::auth::rest_password;
use tern_turn::{
    AuthFailure, DeleteReason, DropReason, Event, RelayAddress, RelayPortRange, Via, PEER_HEADROOM,
};

const PEER: &str = "8.8.8.8:5000";
const PEER2: &str = "8.8.4.4:5000";
const PEER3: &str = "1.1.1.1:5000";
const PEER_V6: &str = "[2606:4700::1111]:6000";

fn alice() -> Client {
    Client::user("192.0.2.100:40000", "alice")
}

/// A harness with alice allocated (IPv4) and her relay's local address.
fn allocated() -> (Harness, Client, SocketAddr) {
    let mut h = Harness::new(config());
    let mut c = alice();
    let a = h.allocate(&mut c);
    let relay = a.relayed();
    h.take_events();
    (h, c, relay)
}

fn in_slice(port: u16) -> bool {
    (PORT_LO..=PORT_HI).contains(&port)
}

// ---- 1. Binding ------------------------------------------------------------

#[test]
fn binding_answered_without_auth() {
    let mut h = Harness::new(config());
    let mut c = alice();
    let r = h.call(&c, &c.clone().binding_req()).ok();
    assert_eq!(r.method(), Method::BINDING);
    assert_eq!(r.xor_addr(attr::XOR_MAPPED_ADDRESS), Some(c.addr));
    assert!(
        r.msg().has_fingerprint(),
        "request had FINGERPRINT, so must the response"
    );
    assert!(r.attr(attr::MESSAGE_INTEGRITY).is_none());

    c.fingerprint = false;
    let r = h.call(&c, &c.clone().binding_req()).ok();
    assert!(!r.msg().has_fingerprint(), "no FINGERPRINT asked for");
    assert_eq!(r.xor_addr(attr::XOR_MAPPED_ADDRESS), Some(c.addr));

    let c6 = Client::user("[2001:db8::77]:41000", "alice");
    let r = h.call(&c6, &c6.clone().binding_req()).ok();
    assert_eq!(r.xor_addr(attr::XOR_MAPPED_ADDRESS), Some(c6.addr));

    assert_eq!(h.server.stats().binding_requests, 3);
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.host.bound.is_empty());
}

// ---- 2. Allocate -----------------------------------------------------------

#[test]
fn allocate_challenge_then_success() {
    let mut h = Harness::new(config());
    let mut c = alice();
    let req = c.allocate_req();
    let r = h.call(&c, &req);
    r.expect_error(401);
    assert_eq!(r.attr(attr::REALM), Some(REALM.as_bytes()));
    let nonce = r.nonce().expect("NONCE");
    assert!(
        nonce.starts_with(b"obMatJos2"),
        "RFC 8489 nonce cookie: {nonce:?}"
    );
    let algos = r
        .attr(attr::PASSWORD_ALGORITHMS)
        .expect("PASSWORD-ALGORITHMS");
    assert!(tern_stun::password_algorithms_contains(
        algos,
        PasswordAlgorithm::Md5
    ));
    assert!(tern_stun::password_algorithms_contains(
        algos,
        PasswordAlgorithm::Sha256
    ));
    assert!(
        r.attr(attr::MESSAGE_INTEGRITY).is_none(),
        "a 401 is not signed"
    );
    assert_eq!(h.server.stats().auth_failures(AuthFailure::Challenge), 1);
    assert!(h.host.bound.is_empty());

    c.nonce = Some(nonce);
    let req = c.allocate_req();
    let r = h.call(&c, &req).ok();
    r.msg()
        .verify_integrity(&c.key_md5())
        .expect("response signed with the user's key");
    assert!(r.msg().has_fingerprint());
    let relayed = r.xor_addrs(attr::XOR_RELAYED_ADDRESS);
    assert_eq!(relayed.len(), 1);
    assert_eq!(relayed[0].ip(), IpAddr::V4(RELAY_V4));
    assert!(in_slice(relayed[0].port()), "{relayed:?}");
    assert_eq!(r.lifetime(), Some(600));
    assert_eq!(r.xor_addr(attr::XOR_MAPPED_ADDRESS), Some(c.addr));

    assert_eq!(
        h.host.bound.iter().copied().collect::<Vec<_>>(),
        vec![relayed[0]]
    );
    assert_eq!(h.host.user_count("alice"), 1);
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.stats().allocations_created, 1);
    let events = h.take_events();
    assert_eq!(
        events,
        vec![Event::AllocationCreated {
            five_tuple: c.five_tuple(),
            username: "alice".into(),
            relayed: [Some(relayed[0]), None],
            lifetime: Duration::from_secs(600),
        }]
    );
}

#[test]
fn allocate_lifetime_is_clamped() {
    let mut h = Harness::new(config());
    for (i, (asked, granted)) in [
        (1u32, 600u32),
        (599, 600),
        (600, 600),
        (1800, 1800),
        (3600, 3600),
        (3601, 3600),
        (u32::MAX, 3600),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = Client::user(&format!("192.0.2.100:{}", 41000 + i), "alice");
        let r = h
            .allocate_with(&mut c, |w| w.add_u32(attr::LIFETIME, asked).unwrap())
            .ok();
        assert_eq!(r.lifetime(), Some(granted), "asked {asked}");
    }
    assert_eq!(h.server.allocation_count(), 7);
}

// ---- 3. Retransmission, mismatch -----------------------------------------

#[test]
fn retransmitted_allocate_gets_identical_response_and_new_allocate_437() {
    let mut h = Harness::new(config());
    let mut c = alice();
    h.learn_nonce(&mut c);
    let req = c.allocate_req();
    let first = h.call(&c, &req).ok();
    h.advance(Duration::from_millis(500));
    let again = h.call(&c, &req);
    assert_eq!(first.0, again.0, "a retransmission gets the cached bytes");
    assert_eq!(h.server.stats().retransmits_answered, 1);
    assert_eq!(h.server.stats().allocations_created, 1);
    assert_eq!(h.host.bind_log.len(), 1, "no second socket");

    let req = c.allocate_req();
    let r = h.call(&c, &req);
    r.expect_error(437);
    c.assert_signed(&r);
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.host.bound.len(), 1);
}

// ---- 4. Long-term and REST authentication ---------------------------------

#[test]
fn wrong_password_and_unknown_user_get_401() {
    let mut h = Harness::new(config());
    let mut c = Client::new(sa("192.0.2.100:40000"), "alice", "not-alice-pw");
    let r = h.allocate_with(&mut c, |_| {});
    r.expect_error(401);
    assert!(r.nonce().is_some());
    assert_eq!(h.server.stats().auth_failures(AuthFailure::BadIntegrity), 1);

    let mut c = Client::new(sa("192.0.2.101:40000"), "mallory", "whatever");
    let r = h.allocate_with(&mut c, |_| {});
    r.expect_error(401);
    assert_eq!(h.server.stats().auth_failures(AuthFailure::UnknownUser), 1);

    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.host.bound.is_empty());
    assert_eq!(h.host.total, 0);
}

#[test]
fn wrong_realm_gets_401() {
    let mut h = Harness::new(config());
    let mut c = alice();
    h.learn_nonce(&mut c);
    c.realm = "other.realm".into();
    let req = c.allocate_req();
    h.call(&c, &req).expect_error(401);
    assert_eq!(h.server.stats().auth_failures(AuthFailure::WrongRealm), 1);
}

#[test]
fn signed_request_without_username_is_400() {
    let mut h = Harness::new(config());
    let mut c = alice();
    h.learn_nonce(&mut c);
    let tid = c.next_tid();
    let key = c.key_md5();
    let req = c.build(tid, Method::ALLOCATE, Class::Request, Sign::No, |w| {
        w.add_requested_transport(17).unwrap();
        w.add_text(attr::REALM, REALM).unwrap();
        w.add_message_integrity(&key).unwrap();
    });
    h.call(&c, &req).expect_error(400);
    assert_eq!(h.server.stats().auth_failures(AuthFailure::Malformed), 1);
}

fn rest_config(secrets: &[&[u8]]) -> tern_turn::ServerConfig {
    let mut cfg = config();
    for s in secrets {
        cfg.credentials.add_rest_secret(s);
    }
    cfg
}

fn rest_client(addr: &str, secret: &[u8], expiry: u64) -> Client {
    let user = format!("{expiry}:alice");
    let pw = rest_password(secret, &user);
    Client::new(sa(addr), &user, &pw)
}

#[test]
fn rest_credentials_valid_expired_and_rotated() {
    let mut h = Harness::new(rest_config(&[b"old-secret", b"new-secret"]));
    let expiry = UNIX_START + 3600;

    let mut c = rest_client("192.0.2.100:40000", b"old-secret", expiry);
    h.allocate(&mut c);
    let mut c = rest_client("192.0.2.101:40000", b"new-secret", expiry);
    h.allocate(&mut c);
    assert_eq!(h.server.allocation_count(), 2);

    let mut c = rest_client("192.0.2.102:40000", b"unknown-secret", expiry);
    h.allocate_with(&mut c, |_| {}).expect_error(401);
    assert_eq!(h.server.stats().auth_failures(AuthFailure::BadIntegrity), 1);

    let mut c = rest_client("192.0.2.103:40000", b"old-secret", UNIX_START - 1);
    h.allocate_with(&mut c, |_| {}).expect_error(401);
    assert_eq!(h.server.stats().auth_failures(AuthFailure::Expired), 1);
    assert_eq!(h.server.allocation_count(), 2);
}

#[test]
fn rest_credential_expires_on_the_virtual_wall_clock() {
    let mut h = Harness::new(rest_config(&[b"s"]));
    let mut c = rest_client("192.0.2.100:40000", b"s", UNIX_START + 100);
    h.learn_nonce(&mut c);
    h.advance_secs(101);
    assert!(h.unix_now() > UNIX_START + 100);
    let req = c.allocate_req();
    h.call(&c, &req).expect_error(401);
    assert_eq!(h.server.stats().auth_failures(AuthFailure::Expired), 1);

    // Exactly at its expiry second it is still good.
    let mut h = Harness::new(rest_config(&[b"s"]));
    let mut c = rest_client("192.0.2.100:40000", b"s", UNIX_START + 100);
    h.learn_nonce(&mut c);
    h.advance_secs(100);
    let req = c.allocate_req();
    h.call(&c, &req).ok();
}

// ---- 5. Nonces -------------------------------------------------------------

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce_that_works() {
    let mut h = Harness::new(config());
    let mut c = alice();
    h.learn_nonce(&mut c);
    let old = c.nonce.clone().unwrap();
    h.advance(h.server.config().nonce_lifetime + Duration::from_secs(1));
    let req = c.allocate_req();
    let r = h.call(&c, &req);
    r.expect_error(438);
    assert_eq!(r.attr(attr::REALM), Some(REALM.as_bytes()));
    let fresh = r.nonce().expect("438 carries a new NONCE");
    assert_ne!(fresh, old);
    assert!(fresh.starts_with(b"obMatJos2"));
    assert_eq!(h.server.stats().auth_failures(AuthFailure::StaleNonce), 1);
    assert!(h.host.bound.is_empty());

    c.nonce = Some(fresh);
    let req = c.allocate_req();
    h.call(&c, &req).ok();
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn made_up_or_foreign_nonce_gets_438() {
    let mut h = Harness::new(config());
    let mut c = alice();
    c.nonce = Some(b"obMatJos2gAAA0000000000000000000000000000000000000000000000000000".to_vec());
    let req = c.allocate_req();
    h.call(&c, &req).expect_error(438);
    c.nonce = Some(b"not-a-nonce".to_vec());
    let req = c.allocate_req();
    h.call(&c, &req).expect_error(438);

    // A nonce minted for another client IP.
    let mut other = Client::user("192.0.2.200:40000", "alice");
    h.learn_nonce(&mut other);
    c.nonce = other.nonce.clone();
    let req = c.allocate_req();
    h.call(&c, &req).expect_error(438);
    assert_eq!(h.server.stats().auth_failures(AuthFailure::StaleNonce), 3);
    assert_eq!(h.server.allocation_count(), 0);
}

// ---- 6. CreatePermission, Send and Data indications ------------------------

#[test]
fn create_permission_peer_policy() {
    let (mut h, mut c, _) = allocated();
    for (i, peer) in [
        "127.0.0.1:5000",
        "0.0.0.0:5000",
        "169.254.169.254:80",
        "10.1.2.3:5000",
        "198.51.100.7:5000",
    ]
    .into_iter()
    .enumerate()
    {
        let r = h.permit(&mut c, &[sa(peer)]);
        r.expect_error(403);
        c.assert_signed(&r);
        assert_eq!(h.server.stats().peer_denied, i as u64 + 1, "{peer}");
    }
    // A request naming an allowed and a denied peer installs neither.
    h.permit(&mut c, &[sa(PEER), sa("127.0.0.2:1")])
        .expect_error(403);
    assert_eq!(h.server.stats().permissions_created, 0);
    assert_eq!(
        h.client_sends(&c.clone(), &c.send_indication(sa(PEER), b"x")),
        None
    );

    let mut c6 = Client::user("192.0.2.101:40000", "bob");
    h.allocate_v6(&mut c6);
    let r = h.permit(&mut c6, &[sa("[::ffff:127.0.0.1]:5000")]);
    r.expect_error(403);
    let r = h.permit(&mut c6, &[sa("[::1]:5000")]);
    r.expect_error(403);
    assert_eq!(h.server.stats().peer_denied, 8);

    h.permit(&mut c, &[sa(PEER)]).ok();
    h.permit(&mut c6, &[sa(PEER_V6)]).ok();
    assert_eq!(h.server.stats().permissions_created, 2);
    // The IPv6-only allocation has no IPv4 relay: 443.
    h.permit(&mut c6, &[sa(PEER)]).expect_error(443);
    // CreatePermission without a peer: 400.
    h.permit(&mut c, &[]).expect_error(400);
}

#[test]
fn send_indication_and_data_indication_v4() {
    let (mut h, mut c, relay) = allocated();
    let peer = sa(PEER);
    let r = h.permit(&mut c, &[peer]).ok();
    c.assert_signed(&r);
    assert_eq!(h.server.stats().permissions_created, 1);

    let payload = b"hello peer, 23 bytes!!!";
    let ind = c.send_indication(peer, payload);
    let fwd = h.client_sends(&c, &ind).expect("Send relayed");
    assert_eq!(fwd.via, Via::Relay(relay));
    assert_eq!(fwd.to, peer);
    assert_eq!(fwd.payload, payload);
    assert_eq!(h.server.stats().packets_to_peer, 1);
    assert_eq!(h.server.stats().bytes_to_peer, payload.len() as u64);

    // Permissions are per IP: another port of the same peer works too.
    let fwd = h
        .client_sends(&c, &c.clone().send_indication(sa("8.8.8.8:9"), b"p"))
        .expect("same IP");
    assert_eq!(fwd.to, sa("8.8.8.8:9"));

    // No permission: dropped.
    assert_eq!(
        h.client_sends(&c, &c.clone().send_indication(sa(PEER3), b"x")),
        None
    );
    assert_eq!(h.server.stats().drops(DropReason::NoPermission), 1);

    for len in [0usize, 1, 5, 7, 8, 1200] {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let fwd = h
            .peer_packet(relay, peer, &data)
            .expect("peer data relayed");
        assert_eq!(fwd.via, Via::Listener(c.listener));
        assert_eq!(fwd.to, c.addr);
        let (from, got) = parse_data_indication(&fwd.payload);
        assert_eq!(from, peer);
        assert_eq!(got, data, "len {len}");
    }
    assert_eq!(h.server.stats().packets_to_client, 6);
    assert_eq!(h.server.stats().channel_data_to_client, 0);

    // Peer without permission; unknown relay port.
    assert_eq!(h.peer_packet(relay, sa(PEER3), b"x"), None);
    assert_eq!(h.server.stats().drops(DropReason::NoPermission), 2);
    let other = SocketAddr::new(
        relay.ip(),
        if relay.port() == PORT_HI {
            PORT_LO
        } else {
            relay.port() + 1
        },
    );
    assert_eq!(h.peer_packet(other, peer, b"x"), None);
    assert_eq!(h.server.stats().drops(DropReason::UnknownRelay), 1);
}

#[test]
fn send_and_data_indication_v6() {
    let mut h = Harness::new(config());
    let mut c = Client::user("[2001:db8::77]:41000", "alice");
    let a = h.allocate_v6(&mut c);
    let relay = a.relayed();
    assert_eq!(relay.ip(), IpAddr::V6(RELAY_V6));
    assert!(in_slice(relay.port()));
    assert!(h.host.bound.contains(&relay));
    let peer = sa(PEER_V6);
    h.permit(&mut c, &[peer]).ok();
    let fwd = h
        .client_sends(&c, &c.clone().send_indication(peer, b"v6 payload"))
        .expect("relayed");
    assert_eq!(
        fwd,
        Fwd {
            via: Via::Relay(relay),
            to: peer,
            payload: b"v6 payload".to_vec()
        }
    );
    let fwd = h
        .peer_packet(relay, peer, b"from v6 peer")
        .expect("relayed");
    assert_eq!(fwd.to, c.addr);
    assert_eq!(
        parse_data_indication(&fwd.payload),
        (peer, b"from v6 peer".to_vec())
    );
    // An IPv4 peer has no relay in this allocation.
    assert_eq!(
        h.client_sends(&c, &c.clone().send_indication(sa(PEER), b"x")),
        None
    );
    assert_eq!(h.server.stats().drops(DropReason::FamilyMismatch), 1);
}

#[test]
fn malformed_send_indications_are_dropped() {
    let (mut h, mut c, _) = allocated();
    h.permit(&mut c, &[sa(PEER)]).ok();
    let tid = c.next_tid();
    let no_data = c.build(tid, Method::SEND, Class::Indication, Sign::No, |w| {
        w.add_xor_address(attr::XOR_PEER_ADDRESS, sa(PEER)).unwrap();
    });
    assert_eq!(h.client_sends(&c, &no_data), None);
    let no_peer = c.build(tid, Method::SEND, Class::Indication, Sign::No, |w| {
        w.add_raw(attr::DATA, b"x").unwrap();
    });
    assert_eq!(h.client_sends(&c, &no_peer), None);
    assert_eq!(h.server.stats().drops(DropReason::MalformedSend), 2);
    // Send from a 5-tuple without an allocation.
    let mut stranger = Client::user("192.0.2.55:1000", "bob");
    assert_eq!(
        h.client_sends(&stranger.clone(), &stranger.send_indication(sa(PEER), b"x")),
        None
    );
    assert_eq!(h.server.stats().drops(DropReason::NoAllocation), 1);
}

// ---- 7. Channels -----------------------------------------------------------

#[test]
fn channel_bind_and_channel_data_both_ways() {
    let (mut h, mut c, relay) = allocated();
    let peer = sa(PEER);
    let r = h.channel_bind(&mut c, 0x4001, peer).ok();
    c.assert_signed(&r);
    assert_eq!(h.server.stats().channels_bound, 1);
    assert_eq!(
        h.server.stats().permissions_created,
        1,
        "ChannelBind installs a permission"
    );

    let payload = b"channel payload";
    let fwd = h
        .client_sends(&c, &channel_data(0x4001, payload))
        .expect("ChannelData relayed");
    assert_eq!(
        fwd,
        Fwd {
            via: Via::Relay(relay),
            to: peer,
            payload: payload.to_vec()
        }
    );
    // Unpadded ChannelData (as UDP allows) works too.
    let mut unpadded = vec![0x40, 0x01, 0x00, 0x03];
    unpadded.extend_from_slice(b"abc");
    assert_eq!(
        h.client_sends(&c, &unpadded).expect("relayed").payload,
        b"abc"
    );

    let fwd = h
        .peer_packet(relay, peer, b"back at you")
        .expect("relayed to client");
    assert_eq!(fwd.via, Via::Listener(c.listener));
    assert_eq!(fwd.to, c.addr);
    let mut want = vec![0x40, 0x01, 0x00, 11];
    want.extend_from_slice(b"back at you");
    assert_eq!(fwd.payload, want);
    assert_eq!(h.server.stats().channel_data_to_client, 1);

    // A peer on another port of the same IP is not the bound transport
    // address: it gets a Data indication.
    let fwd = h
        .peer_packet(relay, sa("8.8.8.8:5001"), b"x")
        .expect("relayed");
    assert_eq!(
        parse_data_indication(&fwd.payload),
        (sa("8.8.8.8:5001"), b"x".to_vec())
    );
}

#[test]
fn channel_number_rules() {
    let (mut h, mut c, relay) = allocated();
    h.channel_bind(&mut c, 0x4001, sa(PEER)).ok();
    // RFC 5766's wider range is accepted unless strict.
    h.channel_bind(&mut c, 0x6000, sa(PEER2)).ok();
    let fwd = h
        .client_sends(&c, &channel_data(0x6000, b"wide"))
        .expect("relayed on 0x6000");
    assert_eq!(fwd.to, sa(PEER2));
    let fwd = h.peer_packet(relay, sa(PEER2), b"w").expect("relayed");
    assert_eq!(fwd.payload, [0x60, 0x00, 0x00, 0x01, b'w']);

    h.channel_bind(&mut c, 0x3FFF, sa(PEER3)).expect_error(400);
    h.channel_bind(&mut c, 0x8000, sa(PEER3)).expect_error(400);
    // Same number, another peer.
    h.channel_bind(&mut c, 0x4001, sa(PEER3)).expect_error(400);
    // Same peer, another number.
    h.channel_bind(&mut c, 0x4002, sa(PEER)).expect_error(400);
    // Same pair again: a refresh.
    h.channel_bind(&mut c, 0x4001, sa(PEER)).ok();
    assert_eq!(h.server.stats().channels_bound, 2);
    // Denied peer.
    h.channel_bind(&mut c, 0x4003, sa("127.0.0.1:5000"))
        .expect_error(403);
    // Port 0 is not a peer transport address.
    h.channel_bind(&mut c, 0x4003, sa("8.8.8.8:0"))
        .expect_error(403);
    // ChannelBind without CHANNEL-NUMBER.
    let r = h.signed(&mut c, |c| {
        c.request(Method::CHANNEL_BIND, |w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, sa(PEER3))
                .unwrap()
        })
    });
    r.expect_error(400);

    let mut cfg = config();
    cfg.strict_channel_range = true;
    let mut h = Harness::new(cfg);
    let mut c = alice();
    h.allocate(&mut c);
    h.channel_bind(&mut c, 0x6000, sa(PEER)).expect_error(400);
    h.channel_bind(&mut c, 0x4FFF, sa(PEER)).ok();
    assert_eq!(h.client_sends(&c, &channel_data(0x6000, b"x")), None);
    assert_eq!(h.server.stats().drops(DropReason::ChannelOutOfRange), 1);
}

// ---- 8. Drops --------------------------------------------------------------

#[test]
fn junk_is_dropped_and_counted_without_disturbing_the_allocation() {
    let (mut h, mut c, relay) = allocated();
    let peer = sa(PEER);
    h.channel_bind(&mut c, 0x4001, peer).ok();
    let before = h.host.bound.clone();

    assert_eq!(h.client_sends(&c, &channel_data(0x4005, b"unbound")), None);
    assert_eq!(h.server.stats().drops(DropReason::UnboundChannel), 1);

    // Length field larger than the data.
    assert_eq!(h.client_sends(&c, &[0x40, 0x01, 0x00, 0x10, 1, 2]), None);
    // More than 3 bytes after the data.
    assert_eq!(
        h.client_sends(&c, &[0x40, 0x01, 0x00, 0x01, 1, 0, 0, 0, 0]),
        None
    );
    // Shorter than a header.
    assert_eq!(h.client_sends(&c, &[0x40, 0x01, 0x00]), None);
    assert_eq!(h.server.stats().drops(DropReason::MalformedChannelData), 3);

    assert_eq!(
        h.client_sends(&c, &[0x80, 0x60, 0x00, 0x01, 0, 0, 0, 0]),
        None
    );
    assert_eq!(h.client_sends(&c, &[0xFF; 40]), None);
    assert_eq!(h.client_sends(&c, &[0x16, 0x03, 0x01]), None);
    assert_eq!(h.server.stats().drops(DropReason::UnknownClass), 3);

    assert_eq!(h.client_sends(&c, &[]), None);
    assert_eq!(h.server.stats().drops(DropReason::Empty), 1);

    let full = c.refresh_req(None);
    for cut in [1usize, 4, 8, full.len() - 20] {
        assert_eq!(
            h.client_sends(&c, &full[..full.len() - cut]),
            None,
            "cut {cut}"
        );
    }
    // Corrupt the FINGERPRINT.
    let mut bad = full.clone();
    let n = bad.len();
    bad[n - 1] ^= 0xFF;
    assert_eq!(h.client_sends(&c, &bad), None);
    assert_eq!(h.server.stats().drops(DropReason::MalformedStun), 5);

    // A STUN success response sent to the server.
    let tid = c.next_tid();
    let resp = c.build(tid, Method::BINDING, Class::Success, Sign::No, |_| {});
    assert_eq!(h.client_sends(&c, &resp), None);
    assert_eq!(h.server.stats().drops(DropReason::UnexpectedStun), 1);

    // ChannelData from a 5-tuple with no allocation.
    let stranger = Client::user("192.0.2.55:1000", "bob");
    assert_eq!(h.client_sends(&stranger, &channel_data(0x4001, b"x")), None);
    assert_eq!(h.server.stats().drops(DropReason::NoAllocation), 1);

    assert_eq!(h.server.stats().total_drops(), 15);
    assert_eq!(h.server.stats().packets_to_peer, 0);
    // None of that touched the allocation.
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.host.bound, before);
    assert!(h.take_events().is_empty());
    let fwd = h
        .client_sends(&c, &channel_data(0x4001, b"still works"))
        .expect("relays");
    assert_eq!(fwd.payload, b"still works");
    assert!(h.peer_packet(relay, peer, b"and back").is_some());
    // The real refresh still goes through.
    let r = h.call(&c, &full).ok();
    assert_eq!(r.lifetime(), Some(600));
}

// ---- 9. Refresh, delete, expiry --------------------------------------------

#[test]
fn refresh_zero_deletes_the_allocation() {
    let (mut h, mut c, relay) = allocated();
    h.channel_bind(&mut c, 0x4001, sa(PEER)).ok();
    h.client_sends(&c, &channel_data(0x4001, b"one"))
        .expect("relayed");
    h.peer_packet(relay, sa(PEER), b"two").expect("relayed");
    h.peer_packet(relay, sa(PEER), b"three").expect("relayed");
    h.advance_secs(10);

    let r = h.refresh(&mut c, Some(0)).ok();
    c.assert_signed(&r);
    assert_eq!(r.lifetime(), Some(0));
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.host.bound.is_empty());
    assert_eq!(h.host.closed, vec![relay]);
    assert_eq!(h.host.total, 0, "quota given back");
    assert_eq!(h.server.stats().allocations_deleted, 1);
    assert_eq!(h.server.stats().allocations_expired, 0);
    assert_eq!(
        h.take_events(),
        vec![Event::AllocationDeleted {
            five_tuple: c.five_tuple(),
            username: "alice".into(),
            reason: DeleteReason::Refresh,
            age: Duration::from_secs(10),
            packets_to_peer: 1,
            packets_to_client: 2,
        }]
    );

    assert_eq!(h.client_sends(&c, &channel_data(0x4001, b"late")), None);
    assert_eq!(h.server.stats().drops(DropReason::NoAllocation), 1);
    assert_eq!(h.peer_packet(relay, sa(PEER), b"late"), None);
    assert_eq!(h.server.stats().drops(DropReason::UnknownRelay), 1);
    // Refresh on nothing: 437.
    h.refresh(&mut c, None).expect_error(437);
    // The 5-tuple may allocate again.
    h.allocate(&mut c);
    assert_eq!(h.server.allocation_count(), 1);
}

#[test]
fn refresh_extends_and_expiry_closes() {
    let (mut h, mut c, relay) = allocated();
    h.advance_secs(500);
    let r = h.refresh(&mut c, None).ok();
    assert_eq!(r.lifetime(), Some(600));
    let r = h.refresh(&mut c, Some(100)).ok();
    assert_eq!(r.lifetime(), Some(600), "clamped up to the default");

    // Past the original expiry (600) the allocation lives on.
    h.advance_to(h.at(1000));
    assert_eq!(h.server.allocation_count(), 1);
    assert!(h.host.bound.contains(&relay));
    h.permit(&mut c, &[sa(PEER)]).ok();
    assert!(h
        .client_sends(&c, &c.clone().send_indication(sa(PEER), b"x"))
        .is_some());
    assert!(h.take_events().is_empty());

    // Refreshed at 500 for 600 s: due at 1100.
    h.advance_to(h.at(1099));
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.poll_timeout(), Some(h.at(1100)));
    h.advance_to(h.at(1100));
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.host.bound.is_empty());
    assert_eq!(h.host.closed, vec![relay]);
    assert_eq!(h.host.total, 0);
    assert_eq!(h.server.stats().allocations_expired, 1);
    assert_eq!(h.server.stats().allocations_deleted, 0);
    let ev = h.take_events();
    assert!(
        matches!(
            ev.as_slice(),
            [Event::AllocationDeleted { reason: DeleteReason::Expired, age, packets_to_peer: 1, .. }]
                if *age == Duration::from_secs(1100)
        ),
        "{ev:?}"
    );
    assert_eq!(h.peer_packet(relay, sa(PEER), b"x"), None);
}

#[test]
fn expiry_at_poll_timeout() {
    let (mut h, _c, relay) = allocated();
    // Let the transaction cache timer pass.
    h.advance_to(h.at(599));
    assert_eq!(h.server.poll_timeout(), Some(h.at(600)));
    assert_eq!(h.server.allocation_count(), 1);
    let due = h.server.poll_timeout().unwrap();
    h.now = due;
    h.server.handle_timeout(&mut h.host, due);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.host.closed, vec![relay]);
    assert_eq!(h.server.stats().allocations_expired, 1);
    assert_eq!(h.server.poll_timeout(), None, "nothing left to time");
}

#[test]
fn expired_but_not_yet_reaped_allocation_is_not_used() {
    let (mut h, mut c, relay) = allocated();
    h.permit(&mut c, &[sa(PEER)]).ok();
    // Time passes the expiry, but the driver has not called handle_timeout yet.
    h.now = h.at(600);
    assert_eq!(
        h.client_sends(&c, &c.clone().send_indication(sa(PEER), b"x")),
        None
    );
    assert_eq!(h.peer_packet(relay, sa(PEER), b"x"), None);
}

// ---- 10. Permission and channel lifetimes ----------------------------------

#[test]
fn permission_expires_after_300s_unless_refreshed() {
    let mut h = Harness::new(config());
    let mut c = alice();
    h.allocate_with(&mut c, |w| w.add_u32(attr::LIFETIME, 3600).unwrap())
        .ok();
    let relay = *h.host.bound.iter().next().unwrap();
    let peer = sa(PEER);
    h.permit(&mut c, &[peer]).ok();
    let send = |h: &mut Harness, c: &mut Client| {
        h.client_sends(&c.clone(), &c.send_indication(peer, b"x"))
    };

    h.advance_to(h.at(299));
    assert!(send(&mut h, &mut c).is_some());
    assert!(h.peer_packet(relay, peer, b"x").is_some());
    h.advance_to(h.at(300));
    assert!(send(&mut h, &mut c).is_none(), "permission lasts 300 s");
    assert!(h.peer_packet(relay, peer, b"x").is_none());
    assert_eq!(h.server.stats().drops(DropReason::NoPermission), 2);

    // Reinstalled at 300, refreshed at 500: good until 800.
    h.permit(&mut c, &[peer]).ok();
    h.advance_to(h.at(500));
    h.permit(&mut c, &[peer]).ok();
    assert_eq!(
        h.server.stats().permissions_created,
        2,
        "a refresh is not a new permission"
    );
    h.advance_to(h.at(799));
    assert!(send(&mut h, &mut c).is_some());
    h.advance_to(h.at(800));
    assert!(send(&mut h, &mut c).is_none());
}

#[test]
fn channel_expires_after_600s() {
    let mut h = Harness::new(config());
    let mut c = alice();
    h.allocate_with(&mut c, |w| w.add_u32(attr::LIFETIME, 3600).unwrap())
        .ok();
    let relay = *h.host.bound.iter().next().unwrap();
    let peer = sa(PEER);
    h.channel_bind(&mut c, 0x4001, peer).ok();
    // Keep the permission alive on its own.
    for t in [250, 500] {
        h.advance_to(h.at(t));
        h.permit(&mut c, &[peer]).ok();
    }
    h.advance_to(h.at(599));
    assert!(h.client_sends(&c, &channel_data(0x4001, b"x")).is_some());
    assert_eq!(
        h.peer_packet(relay, peer, b"x").unwrap().payload[..2],
        [0x40, 0x01]
    );
    h.advance_to(h.at(600));
    assert!(h.client_sends(&c, &channel_data(0x4001, b"x")).is_none());
    assert_eq!(h.server.stats().drops(DropReason::UnboundChannel), 1);
    // The peer's datagrams now come as Data indications.
    let fwd = h.peer_packet(relay, peer, b"x").unwrap();
    assert_eq!(parse_data_indication(&fwd.payload), (peer, b"x".to_vec()));
    // RFC 8656 §12: for 5 minutes after expiry, neither the number nor the
    // peer may be bound to something else; the same pair may be rebound.
    h.channel_bind(&mut c, 0x4001, sa(PEER2)).expect_error(400);
    h.channel_bind(&mut c, 0x4001, peer).ok();
    assert_eq!(
        h.server.stats().channels_bound,
        2,
        "rebinding after expiry is a new binding"
    );
    assert!(h.client_sends(&c, &channel_data(0x4001, b"x")).is_some());
}

#[test]
fn channel_bind_refreshes_its_permission() {
    let mut h = Harness::new(config());
    let mut c = alice();
    h.allocate_with(&mut c, |w| w.add_u32(attr::LIFETIME, 3600).unwrap())
        .ok();
    let peer = sa(PEER);
    h.channel_bind(&mut c, 0x4001, peer).ok();
    h.advance_to(h.at(250));
    h.channel_bind(&mut c, 0x4001, peer).ok();
    h.advance_to(h.at(400));
    assert!(
        h.client_sends(&c, &channel_data(0x4001, b"x")).is_some(),
        "permission refreshed at 250"
    );
    h.advance_to(h.at(550));
    assert!(
        h.client_sends(&c, &channel_data(0x4001, b"x")).is_none(),
        "permission gone at 550"
    );
    assert_eq!(h.server.stats().drops(DropReason::NoPermission), 1);

    // Without the refresh, the permission ChannelBind made lasts 300 s.
    let mut h = Harness::new(config());
    let mut c = alice();
    h.allocate_with(&mut c, |w| w.add_u32(attr::LIFETIME, 3600).unwrap())
        .ok();
    h.channel_bind(&mut c, 0x4001, peer).ok();
    h.advance_to(h.at(301));
    assert!(h.client_sends(&c, &channel_data(0x4001, b"x")).is_none());
}

// ---- 11. Quotas ------------------------------------------------------------

#[test]
fn host_per_user_quota_gives_486_and_is_released() {
    let host = FakeHost {
        max_per_user: Some(1),
        ..FakeHost::new()
    };
    let mut h = Harness::with_host(config(), host);
    let mut a1 = alice();
    h.allocate(&mut a1);
    let mut a2 = Client::user("192.0.2.100:40001", "alice");
    let r = h.allocate_with(&mut a2, |_| {});
    r.expect_error(486);
    a2.assert_signed(&r);
    assert_eq!(h.server.stats().quota_rejections, 1);
    assert_eq!(h.host.bound.len(), 1);
    // Another user is fine.
    let mut b = Client::user("192.0.2.101:40000", "bob");
    h.allocate(&mut b);

    // Deleting alice's first allocation gives her quota back.
    h.refresh(&mut a1, Some(0)).ok();
    assert_eq!(h.host.user_count("alice"), 0);
    h.allocate(&mut a2);
    // Expiry gives it back too.
    h.advance_secs(601);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.host.total, 0);
    let mut a3 = Client::user("192.0.2.100:40002", "alice");
    h.allocate(&mut a3);
}

#[test]
fn host_total_quota_gives_508() {
    let host = FakeHost {
        max_total: Some(2),
        ..FakeHost::new()
    };
    let mut h = Harness::with_host(config(), host);
    let mut a = alice();
    let mut b = Client::user("192.0.2.101:40000", "bob");
    let mut c = Client::user("192.0.2.102:40000", "carol");
    h.allocate(&mut a);
    h.allocate(&mut b);
    h.allocate_with(&mut c, |_| {}).expect_error(508);
    assert_eq!(h.server.stats().quota_rejections, 1);
    assert_eq!(h.host.bound.len(), 2);
    h.refresh(&mut a, Some(0)).ok();
    let req = c.allocate_req();
    h.call(&c, &req).ok();
}

#[test]
fn server_max_allocations_gives_508() {
    let mut cfg = config();
    cfg.max_allocations = 1;
    let mut h = Harness::new(cfg);
    let mut a = alice();
    h.allocate(&mut a);
    let mut b = Client::user("192.0.2.101:40000", "bob");
    h.allocate_with(&mut b, |_| {}).expect_error(508);
    assert_eq!(h.host.total, 1, "no quota held for the refused one");
    assert_eq!(h.server.stats().quota_rejections, 1);
    h.refresh(&mut a, Some(0)).ok();
    let req = b.allocate_req();
    h.call(&b, &req).ok();
}

#[test]
fn no_free_port_gives_508_and_releases_the_quota() {
    let mut cfg = config();
    cfg.relay_ports = RelayPortRange::new(50000, 50001).unwrap();
    let mut host = FakeHost::new();
    host.in_use
        .insert(SocketAddr::new(IpAddr::V4(RELAY_V4), 50000));
    host.in_use
        .insert(SocketAddr::new(IpAddr::V4(RELAY_V4), 50001));
    let mut h = Harness::with_host(cfg, host);
    let mut a = alice();
    h.allocate_with(&mut a, |_| {}).expect_error(508);
    assert!(h.host.bound.is_empty());
    assert_eq!(h.host.in_use_hits, 2, "both ports tried once");
    assert_eq!(h.host.total, 0, "quota given back");
    assert_eq!(h.server.allocation_count(), 0);

    // One port frees up: it is used; the next Allocate finds nothing.
    h.host
        .in_use
        .remove(&SocketAddr::new(IpAddr::V4(RELAY_V4), 50001));
    let req = a.allocate_req();
    let r = h.call(&a, &req).ok();
    assert_eq!(r.xor_addr(attr::XOR_RELAYED_ADDRESS).unwrap().port(), 50001);
    let mut b = Client::user("192.0.2.101:40000", "bob");
    h.allocate_with(&mut b, |_| {}).expect_error(508);
    assert_eq!(h.host.total, 1);
}

#[test]
fn ports_are_spread_over_the_slice_and_unique() {
    let mut cfg = config();
    cfg.relay_ports = RelayPortRange::new(50000, 50009).unwrap();
    let mut h = Harness::new(cfg);
    let mut ports = Vec::new();
    for i in 0..10u16 {
        let mut c = Client::user(&format!("192.0.2.{}:40000", 100 + i), "alice");
        ports.push(h.allocate(&mut c).relayed().port());
    }
    ports.sort_unstable();
    assert_eq!(ports, (50000..=50009).collect::<Vec<_>>());
    let mut c = Client::user("192.0.2.200:40000", "alice");
    h.allocate_with(&mut c, |_| {}).expect_error(508);
}

// ---- 12. EVEN-PORT and RESERVATION-TOKEN -----------------------------------

#[test]
fn even_port_reserves_the_next_port_for_a_token() {
    let mut h = Harness::new(config());
    let mut a = alice();
    let r = h
        .allocate_with(&mut a, |w| w.add_even_port(true).unwrap())
        .ok();
    let relayed = r.xor_addr(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relayed.port() % 2, 0, "EVEN-PORT gives an even port");
    let token: [u8; 8] = r
        .attr(attr::RESERVATION_TOKEN)
        .expect("RESERVATION-TOKEN")
        .try_into()
        .unwrap();
    let next = SocketAddr::new(relayed.ip(), relayed.port() + 1);
    assert_eq!(h.host.reservations.get(&token), Some(&next));
    assert!(h.host.bound.contains(&relayed) && h.host.bound.contains(&next));

    // Another 5-tuple (even another user) claims it.
    let mut b = Client::user("192.0.2.101:40000", "bob");
    let r = h
        .allocate_with(&mut b, |w| w.add_reservation_token(token).unwrap())
        .ok();
    assert_eq!(r.xor_addr(attr::XOR_RELAYED_ADDRESS), Some(next));
    assert!(h.host.reservations.is_empty());
    assert_eq!(h.host.claimed, vec![token]);
    assert_eq!(h.server.allocation_count(), 2);

    // The claimed socket relays for b.
    h.permit(&mut b, &[sa(PEER)]).ok();
    let fwd = h
        .client_sends(&b, &b.clone().send_indication(sa(PEER), b"x"))
        .unwrap();
    assert_eq!(fwd.via, Via::Relay(next));
    assert_eq!(h.peer_packet(next, sa(PEER), b"y").unwrap().to, b.addr);

    // The reservation timer firing after the claim changes nothing.
    h.advance_secs(31);
    assert!(h.host.bound.contains(&next));
    assert_eq!(h.server.allocation_count(), 2);
    h.refresh(&mut b, Some(0)).ok();
    assert!(!h.host.bound.contains(&next));
    // The token is spent.
    let mut c = Client::user("192.0.2.102:40000", "carol");
    h.allocate_with(&mut c, |w| w.add_reservation_token(token).unwrap())
        .expect_error(508);
    assert_eq!(h.host.total, 1, "quota of the refused claim given back");
}

#[test]
fn unclaimed_reservation_is_cancelled_after_30s() {
    let mut h = Harness::new(config());
    let mut a = alice();
    let r = h
        .allocate_with(&mut a, |w| w.add_even_port(true).unwrap())
        .ok();
    let relayed = r.xor_addr(attr::XOR_RELAYED_ADDRESS).unwrap();
    let next = SocketAddr::new(relayed.ip(), relayed.port() + 1);
    h.advance_secs(29);
    assert_eq!(h.host.reservations.len(), 1);
    h.advance_secs(1);
    assert!(h.host.reservations.is_empty(), "cancelled at 30 s");
    assert!(!h.host.bound.contains(&next));
    assert!(
        h.host.bound.contains(&relayed),
        "the allocation keeps its own port"
    );
}

#[test]
fn even_port_without_r_bit() {
    let mut h = Harness::new(config());
    for i in 0..20 {
        let mut c = Client::user(&format!("192.0.2.{}:40000", 100 + i), "alice");
        let r = h
            .allocate_with(&mut c, |w| w.add_even_port(false).unwrap())
            .ok();
        assert_eq!(r.xor_addr(attr::XOR_RELAYED_ADDRESS).unwrap().port() % 2, 0);
        assert!(r.attr(attr::RESERVATION_TOKEN).is_none());
    }
    assert!(h.host.reservations.is_empty());
    assert_eq!(h.host.bound.len(), 20);
}

#[test]
fn reservation_token_with_even_port_is_400() {
    let mut h = Harness::new(config());
    let mut a = alice();
    h.allocate_with(&mut a, |w| {
        w.add_even_port(false).unwrap();
        w.add_reservation_token([1; 8]).unwrap();
    })
    .expect_error(400);
}

// ---- 13. Address families, transports, unknown attributes -------------------

#[test]
fn additional_address_family_dual_allocation() {
    let mut h = Harness::new(config());
    let mut a = alice();
    let r = h
        .allocate_with(&mut a, |w| {
            w.add_address_family(attr::ADDITIONAL_ADDRESS_FAMILY, AddressFamily::V6)
                .unwrap()
        })
        .ok();
    let relayed = r.xor_addrs(attr::XOR_RELAYED_ADDRESS);
    assert_eq!(relayed.len(), 2, "{relayed:?}");
    assert_eq!(relayed[0].ip(), IpAddr::V4(RELAY_V4));
    assert_eq!(relayed[1].ip(), IpAddr::V6(RELAY_V6));
    assert!(r.attr(attr::ADDRESS_ERROR_CODE).is_none());
    assert_eq!(h.host.bound.len(), 2);
    assert_eq!(h.host.total, 1, "one allocation, one quota");
    let ev = h.take_events();
    assert!(
        matches!(&ev[..], [Event::AllocationCreated { relayed: [Some(v4), Some(v6)], .. }] if *v4 == relayed[0] && *v6 == relayed[1]),
        "{ev:?}"
    );

    // Both relays work.
    h.permit(&mut a, &[sa(PEER), sa(PEER_V6)]).ok();
    assert_eq!(
        h.client_sends(&a, &a.clone().send_indication(sa(PEER), b"4"))
            .unwrap()
            .via,
        Via::Relay(relayed[0])
    );
    assert_eq!(
        h.client_sends(&a, &a.clone().send_indication(sa(PEER_V6), b"6"))
            .unwrap()
            .via,
        Via::Relay(relayed[1])
    );
    assert_eq!(
        parse_data_indication(
            &h.peer_packet(relayed[1], sa(PEER_V6), b"z")
                .unwrap()
                .payload
        )
        .0,
        sa(PEER_V6)
    );

    h.refresh(&mut a, Some(0)).ok();
    assert!(h.host.bound.is_empty(), "both sockets closed");
}

#[test]
fn additional_address_family_without_v6_gives_address_error_code() {
    let mut h = Harness::new(config_v4_only());
    let mut a = alice();
    let r = h
        .allocate_with(&mut a, |w| {
            w.add_address_family(attr::ADDITIONAL_ADDRESS_FAMILY, AddressFamily::V6)
                .unwrap()
        })
        .ok();
    assert_eq!(r.xor_addrs(attr::XOR_RELAYED_ADDRESS).len(), 1);
    let v = r
        .attr(attr::ADDRESS_ERROR_CODE)
        .expect("ADDRESS-ERROR-CODE");
    // Family IPv6, 13 reserved bits, class 4, number 40.
    assert_eq!(&v[..4], &[0x02, 0x00, 4, 40]);
    assert_eq!(h.host.bound.len(), 1);
}

#[test]
fn family_and_transport_errors() {
    let mut h = Harness::new(config_v4_only());
    let mut a = alice();
    h.allocate_with(&mut a, |w| {
        w.add_address_family(attr::REQUESTED_ADDRESS_FAMILY, AddressFamily::V6)
            .unwrap()
    })
    .expect_error(440);
    // REQUESTED-TRANSPORT TCP.
    let r = h.signed(&mut a, |c| {
        c.request(Method::ALLOCATE, |w| w.add_requested_transport(6).unwrap())
    });
    r.expect_error(442);
    // No REQUESTED-TRANSPORT at all.
    let r = h.signed(&mut a, |c| c.request(Method::ALLOCATE, |_| {}));
    r.expect_error(400);
    // ADDITIONAL-ADDRESS-FAMILY IPv4 is not allowed.
    h.allocate_with(&mut a, |w| {
        w.add_address_family(attr::ADDITIONAL_ADDRESS_FAMILY, AddressFamily::V4)
            .unwrap()
    })
    .expect_error(400);
    assert!(h.host.bound.is_empty());
    assert_eq!(h.host.total, 0);
    assert_eq!(h.server.allocation_count(), 0);
    // After all that, a plain Allocate works.
    h.allocate(&mut a);
}

#[test]
fn unknown_comprehension_required_attribute_is_420() {
    let mut h = Harness::new(config());
    let mut a = alice();
    let r = h.allocate_with(&mut a, |w| {
        w.add_raw(0x7FFF, b"what").unwrap();
        w.add_raw(0xC001, b"optional, fine").unwrap();
    });
    r.expect_error(420);
    let v = r
        .attr(attr::UNKNOWN_ATTRIBUTES)
        .expect("UNKNOWN-ATTRIBUTES");
    let mut out = [0u16; 8];
    let n = tern_stun::decode_unknown_attributes(v, &mut out).unwrap();
    assert_eq!(&out[..n], &[0x7FFF]);
    assert!(h.host.bound.is_empty());
    // Unknown comprehension-optional attributes alone are ignored.
    h.allocate_with(&mut a, |w| w.add_raw(0xC001, b"x").unwrap())
        .ok();
}

// ---- 14. Draining ----------------------------------------------------------

#[test]
fn draining_refuses_new_allocations_only() {
    let (mut h, mut a, relay) = allocated();
    h.permit(&mut a, &[sa(PEER)]).ok();
    h.server.set_draining(true);
    assert!(h.server.is_draining());
    let mut b = Client::user("192.0.2.101:40000", "bob");
    let r = h.allocate_with(&mut b, |_| {});
    r.expect_error(403);
    assert_eq!(h.host.bound.len(), 1);
    assert_eq!(h.host.total, 1);

    let r = h.refresh(&mut a, None).ok();
    assert_eq!(r.lifetime(), Some(600));
    h.permit(&mut a, &[sa(PEER)]).ok();
    assert!(h
        .client_sends(&a, &a.clone().send_indication(sa(PEER), b"x"))
        .is_some());
    assert!(h.peer_packet(relay, sa(PEER), b"x").is_some());

    h.server.set_draining(false);
    let req = b.allocate_req();
    h.call(&b, &req).ok();
}

#[test]
fn draining_with_alternate_server_gives_300() {
    let mut cfg = config();
    let alt = sa("203.0.113.50:3478");
    cfg.alternate_server = Some(alt);
    let mut h = Harness::new(cfg);
    h.server.set_draining(true);
    let mut b = alice();
    let r = h.allocate_with(&mut b, |_| {});
    r.expect_error(300);
    let v = r.attr(attr::ALTERNATE_SERVER).expect("ALTERNATE-SERVER");
    assert_eq!(tern_stun::decode_address(v).unwrap(), alt);
    assert_eq!(h.server.stats().error_responses[0], 1);
}

// ---- 15. 1:1 NAT -----------------------------------------------------------

#[test]
fn external_address_is_advertised_bind_address_is_bound() {
    let mut cfg = config();
    let bind = Ipv4Addr::new(10, 0, 0, 10);
    let public = Ipv4Addr::new(203, 0, 113, 10);
    cfg.relay.v4 = Some(RelayAddress {
        bind,
        advertised: public,
    });
    let mut h = Harness::new(cfg);
    let mut a = alice();
    let r = h.allocate(&mut a);
    let advertised = r.relayed();
    assert_eq!(advertised.ip(), IpAddr::V4(public));
    let local = SocketAddr::new(IpAddr::V4(bind), advertised.port());
    assert_eq!(
        h.host.bound.iter().copied().collect::<Vec<_>>(),
        vec![local]
    );
    let ev = h.take_events();
    assert!(
        matches!(&ev[..], [Event::AllocationCreated { relayed: [Some(l), None], .. }] if *l == local)
    );

    h.permit(&mut a, &[sa(PEER)]).ok();
    let fwd = h
        .client_sends(&a, &a.clone().send_indication(sa(PEER), b"x"))
        .unwrap();
    assert_eq!(fwd.via, Via::Relay(local));
    assert!(h.peer_packet(local, sa(PEER), b"x").is_some());
    h.refresh(&mut a, Some(0)).ok();
    assert_eq!(h.host.closed, vec![local]);
}

// ---- 16. 401 rate limiting -------------------------------------------------

#[test]
fn unauthenticated_requests_are_rate_limited_per_source_ip() {
    let mut h = Harness::new(config());
    let rate = h.server.config().unauth_rate as usize;
    let attempts = 3 * rate;
    let mut answered = 0;
    for i in 0..attempts as u16 {
        let mut c = Client::user(&format!("192.0.2.100:{}", 30000 + i), "alice");
        let req = c.allocate_req();
        if let Some(r) = h.try_call(&c, &req) {
            r.expect_error(401);
            answered += 1;
        }
    }
    assert!(answered <= 2 * rate, "{answered} answered");
    assert_eq!(answered, 2 * rate, "a full bucket answers its burst");
    assert_eq!(
        h.server.stats().drops(DropReason::RateLimited),
        (attempts - answered) as u64
    );

    let mut other = Client::user("192.0.2.101:30000", "alice");
    let req = other.allocate_req();
    h.try_call(&other, &req)
        .expect("another IP is still answered")
        .expect_error(401);
    // Binding is never rate limited.
    let mut c = Client::user("192.0.2.100:29999", "alice");
    h.call(&c, &c.clone().binding_req()).ok();
    let req = c.allocate_req();
    assert!(h.try_call(&c, &req).is_none());
    // A second later the bucket has refilled by `rate`.
    h.advance_secs(1);
    let req = c.allocate_req();
    assert!(h.try_call(&c, &req).is_some());
}

// ---- 17. SHA-256 -----------------------------------------------------------

#[test]
fn sha256_password_algorithm() {
    let mut h = Harness::new(config());
    let mut a = alice();
    a.sign = Sign::Sha256;
    let r = h.allocate_with(&mut a, |_| {}).ok();
    assert!(r.attr(attr::MESSAGE_INTEGRITY_SHA256).is_some());
    assert!(
        r.attr(attr::MESSAGE_INTEGRITY).is_none(),
        "answered in kind"
    );
    r.msg()
        .verify_integrity_sha256(&a.key_sha256())
        .expect("signed with the SHA-256 key");
    // Later requests on the allocation, signed the same way.
    let r = h.refresh(&mut a, None).ok();
    a.assert_signed(&r);
    let r = h.permit(&mut a, &[sa(PEER)]).ok();
    a.assert_signed(&r);
}

#[test]
fn password_algorithm_must_match_the_offer() {
    let mut h = Harness::new(config());
    let mut a = alice();
    h.learn_nonce(&mut a);
    let key = a.key_sha256();
    let nonce = a.nonce.clone().unwrap();
    let tid = a.next_tid();
    // PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS.
    let req = a.build(tid, Method::ALLOCATE, Class::Request, Sign::No, |w| {
        w.add_requested_transport(17).unwrap();
        w.add_password_algorithm(PasswordAlgorithm::Sha256).unwrap();
        w.add_text(attr::USERNAME, "alice").unwrap();
        w.add_text(attr::REALM, REALM).unwrap();
        w.add_raw(attr::NONCE, &nonce).unwrap();
        w.add_message_integrity_sha256(&key).unwrap();
    });
    h.call(&a, &req).expect_error(400);
    // PASSWORD-ALGORITHMS not as offered (SHA-256 only).
    let tid = a.next_tid();
    let req = a.build(tid, Method::ALLOCATE, Class::Request, Sign::No, |w| {
        w.add_requested_transport(17).unwrap();
        w.add_password_algorithms(&[PasswordAlgorithm::Sha256])
            .unwrap();
        w.add_password_algorithm(PasswordAlgorithm::Sha256).unwrap();
        w.add_text(attr::USERNAME, "alice").unwrap();
        w.add_text(attr::REALM, REALM).unwrap();
        w.add_raw(attr::NONCE, &nonce).unwrap();
        w.add_message_integrity_sha256(&key).unwrap();
    });
    h.call(&a, &req).expect_error(400);
    assert_eq!(h.server.stats().auth_failures(AuthFailure::BadAlgorithm), 2);
    assert_eq!(h.server.allocation_count(), 0);
}

// ---- 18. Bandwidth ---------------------------------------------------------

#[test]
fn bandwidth_cap_per_allocation() {
    let mut cfg = config();
    // The bucket holds one second's worth (at least one maximal datagram).
    cfg.bandwidth_per_allocation = 100_000;
    let mut h = Harness::new(cfg);
    let mut a = alice();
    let relay = h.allocate(&mut a).relayed();
    h.channel_bind(&mut a, 0x4001, sa(PEER)).ok();
    let data = vec![0xABu8; 50_000];
    let sent = (0..10)
        .filter(|_| h.client_sends(&a, &channel_data(0x4001, &data)).is_some())
        .count();
    assert_eq!(sent, 2);
    assert_eq!(h.server.stats().drops(DropReason::Bandwidth), 8);
    let back = (0..10)
        .filter(|_| h.peer_packet(relay, sa(PEER), &data).is_some())
        .count();
    assert_eq!(back, 2, "each direction has its own bucket");
    assert_eq!(h.server.stats().drops(DropReason::Bandwidth), 16);
    // Another allocation is not affected.
    let mut b = Client::user("192.0.2.101:40000", "bob");
    h.allocate(&mut b);
    h.channel_bind(&mut b, 0x4001, sa(PEER)).ok();
    assert!(h.client_sends(&b, &channel_data(0x4001, &data)).is_some());
    // Half a second refills 50,000 bytes.
    h.advance(Duration::from_millis(500));
    let sent = (0..10)
        .filter(|_| h.client_sends(&a, &channel_data(0x4001, &data)).is_some())
        .count();
    assert_eq!(sent, 1);
    assert_eq!(h.server.stats().packets_to_peer, 4);
}

// ---- 19. Wrong credentials -------------------------------------------------

#[test]
fn another_user_on_an_allocations_five_tuple_gets_441() {
    let (mut h, _a, _) = allocated();
    let mut bob = Client::user("192.0.2.100:40000", "bob");
    let r = h.refresh(&mut bob, None);
    r.expect_error(441);
    h.permit(&mut bob, &[sa(PEER)]).expect_error(441);
    assert_eq!(
        h.server
            .stats()
            .auth_failures(AuthFailure::WrongCredentials),
        2
    );
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.stats().permissions_created, 0);
}

// ---- miscellany ------------------------------------------------------------

#[test]
fn requests_other_than_turn_methods() {
    let mut h = Harness::new(config());
    let mut a = alice();
    h.learn_nonce(&mut a);
    let r = h.signed(&mut a, |c| c.request(Method::CONNECT, |_| {}));
    r.expect_error(400);
    let r = h.signed(&mut a, |c| c.request(Method(0x0FF), |_| {}));
    r.expect_error(400);
    // CreatePermission/ChannelBind/Refresh without an allocation: 437.
    h.permit(&mut a, &[sa(PEER)]).expect_error(437);
    h.channel_bind(&mut a, 0x4001, sa(PEER)).expect_error(437);
    h.refresh(&mut a, None).expect_error(437);
}

#[test]
fn software_attribute_when_configured() {
    let mut cfg = config();
    cfg.software = Some("tern test".into());
    let mut h = Harness::new(cfg);
    let mut a = alice();
    let r = h.call(&a, &a.clone().binding_req()).ok();
    assert_eq!(r.attr(attr::SOFTWARE), Some(&b"tern test"[..]));
    let r = h.allocate(&mut a).response;
    assert_eq!(r.attr(attr::SOFTWARE), Some(&b"tern test"[..]));
}

#[test]
fn data_indication_fits_the_advertised_headroom() {
    let (mut h, mut c, relay) = allocated();
    h.permit(&mut c, &[sa(PEER)]).ok();
    // Exactly the headroom and tailroom, nothing more.
    let payload = [7u8; 13];
    let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + tern_turn::PEER_TAILROOM];
    buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(&payload);
    let now = h.now;
    let fwd = h
        .server
        .handle_peer_packet(relay, sa(PEER), &mut buf, payload.len(), now)
        .unwrap();
    let (peer, data) = parse_data_indication(fwd.payload);
    assert_eq!(peer, sa(PEER));
    assert_eq!(data, payload);
    // Too little room: dropped and counted, no panic.
    let mut short = vec![0u8; PEER_HEADROOM + payload.len()];
    assert!(h
        .server
        .handle_peer_packet(relay, sa(PEER), &mut short, payload.len(), now)
        .is_none());
    assert_eq!(h.server.stats().drops(DropReason::NoRoom), 1);
}

#[test]
fn transaction_ids_of_data_indications_differ() {
    let (mut h, mut c, relay) = allocated();
    h.permit(&mut c, &[sa(PEER)]).ok();
    let a = h.peer_packet(relay, sa(PEER), b"a").unwrap();
    let b = h.peer_packet(relay, sa(PEER), b"a").unwrap();
    let ta: TransactionId = Message::parse(&a.payload).unwrap().transaction_id();
    let tb: TransactionId = Message::parse(&b.payload).unwrap().transaction_id();
    assert_ne!(ta, tb);
}

// ---- capacity limits inside an allocation ----------------------------------

#[test]
fn permission_cap_is_all_or_nothing() {
    let mut cfg = config();
    cfg.max_permissions_per_allocation = 2;
    let mut h = Harness::new(cfg);
    let mut a = alice();
    h.allocate(&mut a);
    h.permit(&mut a, &[sa(PEER)]).ok();
    // Two new peers do not fit beside the first: 508, and neither is installed
    // (RFC 8656 §9.2: permissions are installed only when the server is
    // capable of carrying out the whole request).
    h.permit(&mut a, &[sa(PEER2), sa(PEER3)]).expect_error(508);
    assert_eq!(h.server.stats().permissions_created, 1);
    assert_eq!(
        h.client_sends(&a, &a.clone().send_indication(sa(PEER2), b"x")),
        None
    );
    // Refreshing an existing one and adding one new fits.
    h.permit(&mut a, &[sa(PEER), sa(PEER2)]).ok();
    // The same new peer twice counts once.
    h.permit(&mut a, &[sa(PEER), sa(PEER)]).ok();
    h.permit(&mut a, &[sa(PEER3)]).expect_error(508);
    assert_eq!(h.server.stats().permissions_created, 2);
    // Once the first two expire, there is room again.
    h.advance_secs(300);
    h.permit(&mut a, &[sa(PEER3), sa("9.9.9.9:1")]).ok();
    assert_eq!(h.server.stats().permissions_created, 4);
}

#[test]
fn channel_cap_gives_508() {
    let mut cfg = config();
    cfg.max_channels_per_allocation = 2;
    let mut h = Harness::new(cfg);
    let mut a = alice();
    h.allocate(&mut a);
    h.channel_bind(&mut a, 0x4000, sa(PEER)).ok();
    h.channel_bind(&mut a, 0x4001, sa(PEER2)).ok();
    h.channel_bind(&mut a, 0x4002, sa(PEER3)).expect_error(508);
    // A refresh of a bound pair still works when full.
    h.channel_bind(&mut a, 0x4001, sa(PEER2)).ok();
    assert_eq!(h.server.stats().channels_bound, 2);
    // No permission was installed for the refused peer.
    assert_eq!(
        h.client_sends(&a, &a.clone().send_indication(sa(PEER3), b"x")),
        None
    );
}

#[test]
fn channel_bind_family_mismatch_is_443() {
    let (mut h, mut a, _) = allocated();
    h.channel_bind(&mut a, 0x4000, sa(PEER_V6))
        .expect_error(443);
    let r = h.refresh_with_family(&mut a, Some(600), AddressFamily::V6);
    r.expect_error(443);
}

// ---- STUN rules for every request -------------------------------------------

#[test]
fn binding_with_unknown_required_attribute_is_420() {
    // RFC 8489 §6.3.1: any request with an unknown comprehension-required
    // attribute gets 420, Binding included.
    let mut h = Harness::new(config());
    let a = alice();
    let tid = a.clone().next_tid();
    let req = a.build(tid, Method::BINDING, Class::Request, Sign::No, |w| {
        w.add_raw(0x7FFE, b"??").unwrap();
    });
    let r = h.call(&a, &req);
    r.expect_error(420);
    let mut out = [0u16; 4];
    let n =
        tern_stun::decode_unknown_attributes(r.attr(attr::UNKNOWN_ATTRIBUTES).unwrap(), &mut out)
            .unwrap();
    assert_eq!(&out[..n], &[0x7FFE]);
    // ICE's attributes are understood (or optional): a connectivity check works.
    let req = a.build(tid, Method::BINDING, Class::Request, Sign::No, |w| {
        w.add_u32(attr::PRIORITY, 1).unwrap();
        w.add_raw(attr::USE_CANDIDATE, &[]).unwrap();
        w.add_raw(attr::ICE_CONTROLLING, &[0; 8]).unwrap();
    });
    h.call(&a, &req).ok();
}

#[test]
fn transaction_cache_forgets_after_40s() {
    let mut h = Harness::new(config());
    let mut a = alice();
    h.learn_nonce(&mut a);
    let req = a.allocate_req();
    h.call(&a, &req).ok();
    h.advance_secs(39);
    h.call(&a, &req).ok();
    assert_eq!(h.server.stats().retransmits_answered, 1);
    h.advance_secs(1);
    h.call(&a, &req).expect_error(437);
    assert_eq!(h.server.stats().retransmits_answered, 1);
}

// ---- EVEN-PORT edge cases -------------------------------------------------

#[test]
fn even_port_skips_a_pair_whose_odd_port_is_taken() {
    let mut cfg = config();
    cfg.relay_ports = RelayPortRange::new(50000, 50003).unwrap();
    let mut host = FakeHost::new();
    host.in_use
        .insert(SocketAddr::new(IpAddr::V4(RELAY_V4), 50001));
    let mut h = Harness::with_host(cfg, host);
    let mut a = alice();
    let r = h
        .allocate_with(&mut a, |w| w.add_even_port(true).unwrap())
        .ok();
    let relayed = r.xor_addr(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relayed.port(), 50002);
    let token: [u8; 8] = r.attr(attr::RESERVATION_TOKEN).unwrap().try_into().unwrap();
    let v4 = |p| SocketAddr::new(IpAddr::V4(RELAY_V4), p);
    assert_eq!(h.host.reservations.get(&token), Some(&v4(50003)));
    assert_eq!(h.host.bound, [v4(50002), v4(50003)].into_iter().collect());
    // Now no even port has a free successor: 508, and nothing left bound.
    let mut b = Client::user("192.0.2.101:40000", "bob");
    h.allocate_with(&mut b, |w| w.add_even_port(true).unwrap())
        .expect_error(508);
    assert_eq!(h.host.bound.len(), 2);
    assert_eq!(h.host.total, 1);
}

// ---- dual allocations --------------------------------------------------------

#[test]
fn refresh_zero_with_family_drops_one_half_of_a_dual_allocation() {
    let mut h = Harness::new(config());
    let mut a = alice();
    let r = h
        .allocate_with(&mut a, |w| {
            w.add_address_family(attr::ADDITIONAL_ADDRESS_FAMILY, AddressFamily::V6)
                .unwrap()
        })
        .ok();
    let relayed = r.xor_addrs(attr::XOR_RELAYED_ADDRESS);
    h.permit(&mut a, &[sa(PEER), sa(PEER_V6)]).ok();
    h.refresh_with_family(&mut a, Some(0), AddressFamily::V4)
        .ok();
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.host.bound, [relayed[1]].into_iter().collect());
    assert!(h
        .take_events()
        .iter()
        .all(|e| !matches!(e, Event::AllocationDeleted { .. })));
    assert_eq!(
        h.client_sends(&a, &a.clone().send_indication(sa(PEER), b"x")),
        None
    );
    assert!(h
        .client_sends(&a, &a.clone().send_indication(sa(PEER_V6), b"x"))
        .is_some());
    assert_eq!(h.peer_packet(relayed[0], sa(PEER), b"x"), None);
    assert!(h.peer_packet(relayed[1], sa(PEER_V6), b"x").is_some());
    // Asking again for the dropped family: 443.
    h.refresh_with_family(&mut a, Some(0), AddressFamily::V4)
        .expect_error(443);
    // Dropping the last family deletes the allocation.
    h.refresh_with_family(&mut a, Some(0), AddressFamily::V6)
        .ok();
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.host.bound.is_empty());
    assert_eq!(h.host.total, 0);
}

// ---- expiry races ------------------------------------------------------------

#[test]
fn requests_after_expiry_see_no_allocation_even_before_the_timer_runs() {
    let (mut h, mut a, relay) = allocated();
    h.advance_to(h.at(599));
    // The deadline has passed, but the driver handles this datagram before
    // its timer: the allocation is gone all the same (RFC 8656 §7: an
    // allocation ends when its lifetime does).
    h.now = h.at(600);
    h.refresh(&mut a, None).expect_error(437);
    assert!(!h.host.bound.contains(&relay));
    assert_eq!(h.server.stats().allocations_expired, 1);
    assert_eq!(h.server.allocation_count(), 0);
    // And the 5-tuple may allocate afresh.
    h.allocate(&mut a);
    h.advance_to(h.at(700));
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.host.total, 1);
}

// ---- shutdown and reload -----------------------------------------------------

#[test]
fn clear_closes_everything() {
    let mut h = Harness::new(config());
    let mut a = alice();
    let mut b = Client::user("192.0.2.101:40000", "bob");
    h.allocate(&mut a);
    h.allocate_with(&mut b, |w| w.add_even_port(true).unwrap())
        .ok();
    assert_eq!(h.host.bound.len(), 3);
    let now = h.now;
    h.server.clear(&mut h.host, now);
    assert!(h.host.bound.is_empty());
    assert!(h.host.reservations.is_empty());
    assert_eq!(h.host.total, 0);
    assert_eq!(h.server.allocation_count(), 0);
    let deleted = h
        .take_events()
        .iter()
        .filter(|e| matches!(e, Event::AllocationDeleted { .. }))
        .count();
    assert_eq!(deleted, 2);
    // Timers left behind fire harmlessly.
    h.advance_secs(4000);
    assert_eq!(h.server.poll_timeout(), None);
}

#[test]
fn reload_keeps_live_allocations_and_their_permissions() {
    let (mut h, mut a, _) = allocated();
    h.permit(&mut a, &[sa(PEER)]).ok();
    let mut creds = tern_turn::Credentials::new();
    creds.add_user("erin", "erin-pw");
    let mut policy = tern_turn::policy::PeerPolicy::new();
    policy.deny(tern_turn::policy::Cidr::new(IpAddr::V4(Ipv4Addr::new(8, 8, 0, 0)), 16).unwrap());
    h.server.reload(creds, policy);
    // alice is gone from the user table, but her allocation was made with her key.
    h.refresh(&mut a, None).ok();
    assert!(h
        .client_sends(&a, &a.clone().send_indication(sa(PEER), b"x"))
        .is_some());
    // New permissions follow the new policy.
    h.permit(&mut a, &[sa(PEER2)]).expect_error(403);
    let mut b = Client::user("192.0.2.101:40000", "bob");
    h.allocate_with(&mut b, |_| {}).expect_error(401);
    let mut e = Client::user("192.0.2.102:40000", "erin");
    h.allocate(&mut e);
}

#[test]
fn ipv6_spellings_of_forbidden_ipv4_are_denied() {
    // CVE-2020-26262 style: loopback and private IPv4 reached through IPv6
    // translation spellings, on an IPv6 allocation.
    let mut h = Harness::new(config());
    let mut c = Client::user("[2001:db8::77]:41000", "alice");
    h.allocate_v6(&mut c);
    let denied = [
        "[::ffff:127.0.0.1]:5000",
        "[::ffff:10.0.0.1]:5000",
        "[64:ff9b::7f00:1]:5000",
        "[2002:c0a8:101::1]:5000",
        "[::ffff:169.254.169.254]:80",
        "[fe80::1]:5000",
        "[fd00::1]:5000",
    ];
    for (i, p) in denied.into_iter().enumerate() {
        h.permit(&mut c, &[sa(p)]).expect_error(403);
        h.channel_bind(&mut c, 0x4000, sa(p)).expect_error(403);
        assert_eq!(h.server.stats().peer_denied, 2 * (i as u64 + 1), "{p}");
    }
    assert_eq!(h.server.stats().permissions_created, 0);
    assert_eq!(h.server.stats().channels_bound, 0);
}

#[test]
fn software_is_fewer_than_128_characters_and_valid_utf8() {
    // RFC 8489 §14.14: SOFTWARE is UTF-8 of fewer than 128 characters.
    for software in ["x".repeat(300), format!("a{}", "é".repeat(200))] {
        let mut cfg = config();
        cfg.software = Some(software.clone());
        let mut h = Harness::new(cfg);
        let a = alice();
        let r = h.call(&a, &a.clone().binding_req()).ok();
        let v = r.attr(attr::SOFTWARE).expect("SOFTWARE");
        let text = std::str::from_utf8(v).expect("SOFTWARE is UTF-8");
        assert!(
            text.chars().count() < 128,
            "{} characters",
            text.chars().count()
        );
        assert!(software.starts_with(text));
        assert!(text.chars().count() >= 120, "not cut more than needed");
    }
}

#[test]
fn malformed_allocate_attributes_are_400() {
    let mut h = Harness::new(config());
    let mut a = alice();
    h.allocate_with(&mut a, |w| w.add_raw(attr::LIFETIME, &[0, 1, 2]).unwrap())
        .expect_error(400);
    h.allocate_with(&mut a, |w| w.add_raw(attr::EVEN_PORT, &[]).unwrap())
        .expect_error(400);
    h.allocate_with(&mut a, |w| {
        w.add_raw(attr::RESERVATION_TOKEN, &[1, 2, 3]).unwrap()
    })
    .expect_error(400);
    h.allocate_with(&mut a, |w| {
        w.add_raw(attr::REQUESTED_ADDRESS_FAMILY, &[0x03, 0, 0, 0])
            .unwrap()
    })
    .expect_error(440);
    assert!(h.host.bound.is_empty());
    assert_eq!(h.host.total, 0);
}

#[test]
fn even_port_reservation_on_ipv6() {
    let mut h = Harness::new(config());
    let mut a = Client::user("[2001:db8::77]:41000", "alice");
    let r = h
        .allocate_with(&mut a, |w| {
            w.add_address_family(attr::REQUESTED_ADDRESS_FAMILY, AddressFamily::V6)
                .unwrap();
            w.add_even_port(true).unwrap();
        })
        .ok();
    let relayed = r.xor_addr(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(relayed.ip(), IpAddr::V6(RELAY_V6));
    assert_eq!(relayed.port() % 2, 0);
    let token: [u8; 8] = r.attr(attr::RESERVATION_TOKEN).unwrap().try_into().unwrap();
    let mut b = Client::user("[2001:db8::78]:41000", "bob");
    let r = h
        .allocate_with(&mut b, |w| w.add_reservation_token(token).unwrap())
        .ok();
    let claimed = r.xor_addr(attr::XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(claimed, SocketAddr::new(relayed.ip(), relayed.port() + 1));
    h.permit(&mut b, &[sa(PEER_V6)]).ok();
    let fwd = h.peer_packet(claimed, sa(PEER_V6), b"to b").unwrap();
    assert_eq!(fwd.to, b.addr);
}

#[test]
fn small_bandwidth_cap_still_passes_a_large_datagram() {
    // A cap below one datagram's size must slow it down, not block it forever.
    let mut cfg = config();
    cfg.bandwidth_per_allocation = 1_000;
    let mut h = Harness::new(cfg);
    let mut a = alice();
    h.allocate(&mut a);
    h.channel_bind(&mut a, 0x4001, sa(PEER)).ok();
    let data = [0x11u8; 1_200];
    assert!(h.client_sends(&a, &channel_data(0x4001, &data)).is_some());
}

#[test]
fn per_user_quota_counts_rest_user_not_each_credential() {
    let host = FakeHost {
        max_per_user: Some(1),
        ..FakeHost::new()
    };
    let mut h = Harness::with_host(rest_config(&[b"s3cret"]), host);
    let mut first = rest_client("192.0.2.100:40000", b"s3cret", UNIX_START + 3600);
    h.allocate(&mut first);
    assert_eq!(h.host.user_count("alice"), 1);
    // A fresh credential of the same user (another expiry) shares the quota.
    let mut second = rest_client("192.0.2.100:40001", b"s3cret", UNIX_START + 3700);
    h.allocate_with(&mut second, |_| {}).expect_error(486);
}
