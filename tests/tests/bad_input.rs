//! Hostile and wrong input against an in-process relay, with raw UDP sockets and packets
//! crafted with tern-stun: peer policy, authentication failures, stale nonces, malformed
//! datagrams, ChannelData on unbound channels. After each, another client must still get
//! a Binding answer and an allocation.
#![allow(clippy::disallowed_methods)] // tests wait on the wall clock

use std::net::SocketAddr;
use std::time::Duration;

use tern_stun::{Class, Method};
use tern_tests::creds::{rest_credentials, rest_credentials_valid_for, unix_now};
use tern_tests::ports::{V4, V6};
use tern_tests::relay::{test_config, TestRelay, PASSWORD, SECRET, USER};
use tern_tests::stun_client::{build, code, error, new_tid, Attr, Peer, StunClient};
use tern_turn::DropReason;

const QUIET: Duration = Duration::from_millis(400);

/// A fresh client gets a Binding answer with its own address and an allocation, on every
/// listener; then deletes the allocation.
fn assert_still_serves(relay: &TestRelay) {
    let s = relay.stats();
    assert_eq!(
        s.workers_reporting, s.workers,
        "every worker still reports (none died)"
    );
    for server in relay.listen_addrs() {
        let mut c = StunClient::with_credentials(*server, USER, PASSWORD).expect("client socket");
        let r = c.binding().expect("Binding request answered");
        assert!(r.is_success(), "Binding on {server}: {r:?}");
        assert_eq!(
            r.xor_address(code::XOR_MAPPED_ADDRESS),
            Some(c.local_addr())
        );
        let relayed = c.allocate_ok(&[]);
        assert!(relayed.ip().is_loopback(), "relayed address {relayed}");
        let d = c.refresh(0).expect("Refresh answered");
        assert!(d.is_success(), "Refresh 0: {d:?}");
    }
}

fn v6_listener(relay: &TestRelay) -> Option<SocketAddr> {
    let v6 = relay.v6();
    if v6.is_none() {
        eprintln!("IPv6 loopback unavailable: IPv6 legs not run");
    }
    v6
}

#[test]
fn binding_is_answered_without_auth_with_the_clients_address() {
    let relay = TestRelay::start();
    for server in relay.listen_addrs() {
        for _ in 0..2 {
            let mut c = StunClient::new(*server).expect("socket");
            let r = c.binding().expect("Binding answered");
            assert_eq!(r.method(), Method::BINDING);
            assert_eq!(r.class(), Class::Success, "{r:?}");
            assert_eq!(
                r.xor_address(code::XOR_MAPPED_ADDRESS),
                Some(c.local_addr()),
                "XOR-MAPPED-ADDRESS must be the client's socket address"
            );
            assert!(r.message().get(code::MESSAGE_INTEGRITY).is_none());
        }
    }
    assert!(relay.turn_stats().binding_requests >= 2);
}

#[test]
fn default_policy_forbids_loopback_unspecified_mapped_and_metadata_peers() {
    let mut cfg = test_config();
    cfg.allow_peer = Vec::new(); // the built-in policy, nothing allowed on top
    cfg.deny_peer = Vec::new();
    let relay = TestRelay::start_with(cfg);

    let mut c4 = StunClient::with_credentials(relay.v4(), USER, PASSWORD).expect("socket");
    c4.allocate_ok(&[]);
    let v4_peers: [SocketAddr; 3] = [
        "127.0.0.1:9".parse().expect("literal"),
        "0.0.0.0:9".parse().expect("literal"),
        "169.254.169.254:80".parse().expect("literal"),
    ];
    let mut denied = 0;
    for peer in v4_peers {
        let r = c4
            .create_permission(&[peer])
            .expect("CreatePermission answered");
        assert_eq!(r.error_code(), Some(error::FORBIDDEN), "peer {peer}: {r:?}");
        denied += 1;
    }
    // The allocation is still there and usable.
    let r = c4.refresh(600).expect("Refresh answered");
    assert!(r.is_success(), "Refresh after 403s: {r:?}");

    if let Some(v6) = v6_listener(&relay) {
        let mut c6 = StunClient::with_credentials(v6, USER, PASSWORD).expect("socket");
        let relayed = c6.allocate_ok(&[Attr::RequestedAddressFamily(2)]);
        assert!(
            relayed.is_ipv6(),
            "asked for an IPv6 relayed address, got {relayed}"
        );
        let v6_peers: [SocketAddr; 2] = [
            "[::1]:9".parse().expect("literal"),
            "[::ffff:127.0.0.1]:9".parse().expect("literal"),
        ];
        for peer in v6_peers {
            let r = c6
                .create_permission(&[peer])
                .expect("CreatePermission answered");
            assert_eq!(r.error_code(), Some(error::FORBIDDEN), "peer {peer}: {r:?}");
            denied += 1;
        }
    }
    assert!(
        relay.turn_stats().peer_denied >= denied,
        "peer_denied counter {} < {denied}",
        relay.turn_stats().peer_denied
    );
    assert_still_serves(&relay);
}

#[test]
fn loopback_peer_is_permitted_when_allowed_by_config() {
    // The control for the test above: with 127.0.0.0/8 and ::1/128 allowed, the same
    // requests succeed, so the 403s there come from the policy and nothing else.
    let relay = TestRelay::start();
    let mut c = StunClient::with_credentials(relay.v4(), USER, PASSWORD).expect("socket");
    c.allocate_ok(&[]);
    let r = c
        .create_permission(&["127.0.0.1:9".parse().expect("literal")])
        .expect("answered");
    assert!(r.is_success(), "{r:?}");
    if let Some(v6) = v6_listener(&relay) {
        let mut c6 = StunClient::with_credentials(v6, USER, PASSWORD).expect("socket");
        c6.allocate_ok(&[Attr::RequestedAddressFamily(2)]);
        let r = c6
            .create_permission(&["[::1]:9".parse().expect("literal")])
            .expect("answered");
        assert!(r.is_success(), "{r:?}");
    }
}

#[test]
fn wrong_password_and_unknown_user_get_401() {
    let relay = TestRelay::start();
    for (user, password) in [(USER, "not-the-password"), ("mallory", PASSWORD)] {
        let mut c = StunClient::with_credentials(relay.v4(), user, password).expect("socket");
        let r = c.allocate(&[]).expect("Allocate answered");
        assert_eq!(
            r.error_code(),
            Some(error::UNAUTHENTICATED),
            "{user}: {r:?}"
        );
        assert!(r.attr(code::REALM).is_some(), "401 carries REALM: {r:?}");
        assert!(r.attr(code::NONCE).is_some(), "401 carries NONCE: {r:?}");
        assert!(
            r.message().get(code::MESSAGE_INTEGRITY).is_none(),
            "a 401 for bad credentials must not be signed with them"
        );
    }
    assert_still_serves(&relay);
}

#[test]
fn rest_credentials_expired_or_signed_with_another_secret_get_401() {
    let relay = TestRelay::start();
    let cases = [
        ("expired", rest_credentials(SECRET, "bob", unix_now() - 60)),
        (
            "wrong secret",
            rest_credentials_valid_for("not-the-secret", "bob", Duration::from_secs(600)),
        ),
    ];
    for (what, (username, password)) in cases {
        let mut c = StunClient::with_credentials(relay.v4(), &username, &password).expect("socket");
        let r = c.allocate(&[]).expect("Allocate answered");
        assert_eq!(
            r.error_code(),
            Some(error::UNAUTHENTICATED),
            "{what}: {r:?}"
        );
    }
    // Control: a valid REST credential allocates.
    let (username, password) = rest_credentials_valid_for(SECRET, "bob", Duration::from_secs(600));
    let mut c = StunClient::with_credentials(relay.v4(), &username, &password).expect("socket");
    c.allocate_ok(&[]);
    assert_still_serves(&relay);
}

#[test]
fn nonce_past_its_lifetime_gets_438_with_a_fresh_nonce() {
    let mut cfg = test_config();
    cfg.nonce_lifetime = 1;
    let relay = TestRelay::start_with(cfg);
    let mut c = StunClient::with_credentials(relay.v4(), USER, PASSWORD).expect("socket");
    c.allocate_ok(&[]);
    let old = c.nonce().expect("nonce learnt").to_vec();
    std::thread::sleep(Duration::from_millis(2500));
    let r = c
        .authed_once(Method::REFRESH, &[Attr::Lifetime(600)])
        .expect("answered");
    assert_eq!(r.error_code(), Some(error::STALE_NONCE), "{r:?}");
    let fresh = r.attr(code::NONCE).expect("438 carries a NONCE");
    assert_ne!(fresh, old, "438 must carry a new NONCE");
    assert!(r.attr(code::REALM).is_some(), "438 carries REALM");
    // A client that takes the new nonce goes on.
    assert!(c.learn_challenge(&r));
    let r = c
        .authed_once(Method::REFRESH, &[Attr::Lifetime(600)])
        .expect("answered");
    assert!(r.is_success(), "Refresh with the fresh nonce: {r:?}");
    assert_still_serves(&relay);
}

#[test]
fn nonce_the_relay_never_issued_gets_438() {
    let relay = TestRelay::start();
    let mut c = StunClient::with_credentials(relay.v4(), USER, PASSWORD).expect("socket");
    c.allocate_ok(&[]);
    c.set_nonce(b"obviously-not-a-nonce-tern-issued-0123456789");
    let r = c
        .authed_once(Method::REFRESH, &[Attr::Lifetime(600)])
        .expect("answered");
    assert_eq!(r.error_code(), Some(error::STALE_NONCE), "{r:?}");
    assert!(c.learn_challenge(&r));
    let r = c
        .authed_once(Method::REFRESH, &[Attr::Lifetime(600)])
        .expect("answered");
    assert!(r.is_success(), "Refresh with the issued nonce: {r:?}");
}

#[test]
fn malformed_datagrams_are_dropped_and_the_relay_keeps_serving() {
    let relay = TestRelay::start();
    // Counted anywhere: by the TURN cores or by the packet I/O layer.
    let before = relay.stats().total_drops();
    let mut bad = StunClient::new(relay.v4()).expect("socket");

    let valid = build(
        Method::ALLOCATE,
        Class::Request,
        new_tid(),
        &[Attr::RequestedTransport(17), Attr::Lifetime(600)],
        None,
        true,
    );
    let mut oversized = valid[..20].to_vec();
    oversized[2..4].copy_from_slice(&(64_980u16).to_be_bytes());
    oversized.extend((0..64_980u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    let mut bad_cookie = valid.clone();
    bad_cookie[4] ^= 0xFF;
    let mut bad_fingerprint = valid.clone();
    let n = bad_fingerprint.len();
    bad_fingerprint[n - 1] ^= 0x01;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty datagram", Vec::new()),
        (
            "truncated STUN (header only half there)",
            valid[..10].to_vec(),
        ),
        (
            "truncated STUN (length field says more)",
            valid[..valid.len() - 8].to_vec(),
        ),
        ("STUN with a bad magic cookie", bad_cookie),
        ("STUN with a bad FINGERPRINT", bad_fingerprint),
        ("garbage first byte 0xFF", {
            let mut g = vec![0xFFu8; 100];
            g[1..]
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = i as u8);
            g
        }),
        ("garbage first byte 0x80 (RTP class)", vec![0x80; 60]),
        (
            "ChannelData shorter than its length",
            vec![0x40, 0x01, 0x00, 0xFF, 1, 2, 3],
        ),
        ("65,000-byte datagram", oversized),
    ];
    for (what, pkt) in &cases {
        bad.send_raw(pkt).expect("send");
        let reply = bad.recv_raw(QUIET).expect("recv");
        if what.starts_with("65,000") {
            // No rule about answering a huge but framed request: only that the relay lives.
        } else {
            assert!(
                reply.is_none(),
                "{what}: the relay answered {:?}",
                reply.map(|r| r.len())
            );
        }
        assert_still_serves(&relay);
    }
    let after = relay.stats().total_drops();
    assert!(
        after >= before + 7,
        "malformed datagrams are counted as drops: before {before}, after {after}"
    );
}

#[test]
fn channel_data_on_an_unbound_channel_is_dropped_silently_and_counted() {
    let relay = TestRelay::start();
    let peer = Peer::bind(V4).expect("peer socket");
    let mut c = StunClient::with_credentials(relay.v4(), USER, PASSWORD).expect("socket");
    let relayed = c.allocate_ok(&[]);
    let r = c.create_permission(&[peer.addr()]).expect("answered");
    assert!(r.is_success(), "{r:?}");

    let before = relay.turn_stats().drops(DropReason::UnboundChannel);
    c.send_channel_data(0x4001, b"to nobody").expect("send");
    assert_eq!(
        peer.recv(QUIET).expect("recv"),
        None,
        "unbound channel data reached the peer"
    );
    assert_eq!(
        c.recv_raw(Duration::from_millis(100)).expect("recv"),
        None,
        "no answer to ChannelData"
    );
    let after = relay.turn_stats().drops(DropReason::UnboundChannel);
    assert_eq!(after, before + 1, "UnboundChannel drops");

    // ChannelData from a 5-tuple with no allocation at all.
    let stranger = StunClient::new(relay.v4()).expect("socket");
    let before = relay.turn_stats().drops(DropReason::NoAllocation);
    stranger
        .send_channel_data(0x4001, b"who am I")
        .expect("send");
    assert_eq!(peer.recv(QUIET).expect("recv"), None);
    assert!(relay.turn_stats().drops(DropReason::NoAllocation) > before);

    // Control: once bound, the same channel carries data.
    let r = c.channel_bind(0x4001, peer.addr()).expect("answered");
    assert!(r.is_success(), "{r:?}");
    c.send_channel_data(0x4001, b"now bound").expect("send");
    let (data, from) = peer
        .recv(Duration::from_secs(2))
        .expect("recv")
        .expect("bound channel data reaches the peer");
    assert_eq!(data, b"now bound");
    assert_eq!(from, relayed);
    assert_still_serves(&relay);
}

#[test]
fn ipv6_listener_allocates_an_ipv6_relayed_address() {
    // Binding and allocation on the IPv6 listener with an IPv6 relayed address, so the
    // "still serves" checks above cover both families.
    let relay = TestRelay::start();
    let Some(v6) = v6_listener(&relay) else {
        return;
    };
    let mut c = StunClient::with_credentials(v6, USER, PASSWORD).expect("socket");
    let relayed = c.allocate_ok(&[Attr::RequestedAddressFamily(2)]);
    assert_eq!(relayed.ip(), V6);
}

#[test]
fn channel_number_range_follows_strict_channel_range() {
    for strict in [false, true] {
        let mut cfg = test_config();
        cfg.strict_channel_range = strict;
        let relay = TestRelay::start_with(cfg);
        let mut c = StunClient::with_credentials(relay.v4(), USER, PASSWORD).expect("socket");
        let relayed = c.allocate_ok(&[]);
        let peers: Vec<Peer> = (0..4).map(|_| Peer::bind(V4).expect("peer")).collect();

        // RFC 8656 range: always accepted.
        let r = c.channel_bind(0x4FFF, peers[0].addr()).expect("answered");
        assert!(r.is_success(), "strict={strict} 0x4FFF: {r:?}");

        // RFC 5766's wider range (coturn's uclient uses it): accepted unless strict.
        let r = c.channel_bind(0x7FFF, peers[1].addr()).expect("answered");
        if strict {
            assert_eq!(
                r.error_code(),
                Some(error::BAD_REQUEST),
                "strict 0x7FFF: {r:?}"
            );
        } else {
            assert!(r.is_success(), "0x7FFF: {r:?}");
            c.send_channel_data(0x7FFF, b"wide channel").expect("send");
            let (data, from) = peers[1]
                .recv(Duration::from_secs(2))
                .expect("recv")
                .expect("data on channel 0x7FFF reaches the peer");
            assert_eq!((data.as_slice(), from), (&b"wide channel"[..], relayed));
        }

        // Never channel numbers.
        for (ch, peer) in [(0x3FFFu16, &peers[2]), (0x8000, &peers[3])] {
            let r = c.channel_bind(ch, peer.addr()).expect("answered");
            assert_eq!(
                r.error_code(),
                Some(error::BAD_REQUEST),
                "strict={strict} {ch:#x}: {r:?}"
            );
        }
        assert_still_serves(&relay);
    }
}

#[test]
fn permissions_gate_both_directions_and_allocations_are_per_five_tuple() {
    let relay = TestRelay::start();
    let peer = Peer::bind(V4).expect("peer");
    let mut c = StunClient::with_credentials(relay.v4(), USER, PASSWORD).expect("socket");
    let relayed = c.allocate_ok(&[]);

    // No permission yet: nothing passes either way.
    peer.send_to(b"unsolicited", relayed).expect("send");
    assert_eq!(
        c.recv_data(QUIET).expect("recv"),
        None,
        "peer data without a permission reached the client"
    );
    c.send_indication(peer.addr(), b"no permission")
        .expect("send");
    assert_eq!(
        peer.recv(QUIET).expect("recv"),
        None,
        "Send without a permission reached the peer"
    );

    // A permission for the peer's IP opens both directions, for any port of that IP.
    let r = c
        .create_permission(&[SocketAddr::new(V4, 9)])
        .expect("answered");
    assert!(r.is_success(), "{r:?}");
    peer.send_to(b"now permitted", relayed).expect("send");
    let d = c
        .recv_data(Duration::from_secs(2))
        .expect("recv")
        .expect("permitted data arrives");
    assert_eq!(
        (d.peer, d.data.as_slice()),
        (peer.addr(), &b"now permitted"[..])
    );

    // A second Allocate on the same 5-tuple is 437 Allocation Mismatch...
    let r = c
        .authed(Method::ALLOCATE, &[Attr::RequestedTransport(17)])
        .expect("answered");
    assert_eq!(r.error_code(), Some(error::ALLOCATION_MISMATCH), "{r:?}");
    // ...and the allocation is untouched.
    let r = c.refresh(600).expect("answered");
    assert!(r.is_success(), "{r:?}");

    // After Refresh 0 the allocation is gone: a further Refresh is 437.
    let r = c.refresh(0).expect("answered");
    assert!(r.is_success(), "{r:?}");
    let r = c.refresh(600).expect("answered");
    assert_eq!(
        r.error_code(),
        Some(error::ALLOCATION_MISMATCH),
        "Refresh after delete: {r:?}"
    );
}

#[test]
fn retransmitted_allocate_gets_the_same_answer() {
    let relay = TestRelay::start();
    let mut c = StunClient::with_credentials(relay.v4(), USER, PASSWORD).expect("socket");
    // Learn realm and nonce from a 401.
    let r = c
        .request(Method::ALLOCATE, &[Attr::RequestedTransport(17)])
        .expect("answered");
    assert_eq!(r.error_code(), Some(error::UNAUTHENTICATED));
    assert!(c.learn_challenge(&r));
    let (msg, tid) = c.build_authed_request(Method::ALLOCATE, &[Attr::RequestedTransport(17)]);
    let first = c.transact(&msg, tid).expect("answered");
    assert!(first.is_success(), "{first:?}");
    // The same request again (a retransmission, RFC 8489 §6.3.1): the same success, not 437.
    let again = c.transact(&msg, tid).expect("answered");
    assert!(again.is_success(), "retransmitted Allocate: {again:?}");
    assert_eq!(
        again.xor_address(code::XOR_RELAYED_ADDRESS),
        first.xor_address(code::XOR_RELAYED_ADDRESS)
    );
    assert_eq!(relay.stats().turn.allocations_created, 1);
}

#[test]
fn unsupported_requests_get_the_rfc_error_codes() {
    let relay = TestRelay::start();
    // 420 Unknown Attribute, listing it, for a comprehension-required attribute we do not know.
    let mut b = StunClient::new(relay.v4()).expect("socket");
    let r = b
        .request(Method::BINDING, &[Attr::Raw(0x7F31, vec![1, 2, 3, 4])])
        .expect("answered");
    assert_eq!(r.error_code(), Some(420), "{r:?}");
    let listed = r.attr(0x000A).expect("UNKNOWN-ATTRIBUTES");
    assert_eq!(
        &listed[..2],
        &[0x7F, 0x31],
        "UNKNOWN-ATTRIBUTES lists 0x7F31"
    );
    // An unknown comprehension-optional attribute is ignored.
    let r = b
        .request(Method::BINDING, &[Attr::Raw(0xBF31, vec![1, 2, 3, 4])])
        .expect("answered");
    assert!(r.is_success(), "{r:?}");

    // 442 Unsupported Transport Protocol for TCP relaying (RFC 6062 is not offered).
    let mut c = StunClient::with_credentials(relay.v4(), USER, PASSWORD).expect("socket");
    let r = c
        .request(Method::ALLOCATE, &[Attr::RequestedTransport(6)])
        .expect("answered");
    assert_eq!(
        r.error_code(),
        Some(error::UNAUTHENTICATED),
        "challenge first: {r:?}"
    );
    assert!(c.learn_challenge(&r));
    let r = c
        .authed(Method::ALLOCATE, &[Attr::RequestedTransport(6)])
        .expect("answered");
    assert_eq!(r.error_code(), Some(442), "{r:?}");
    // 400 for an Allocate without REQUESTED-TRANSPORT.
    let r = c.authed(Method::ALLOCATE, &[]).expect("answered");
    assert_eq!(r.error_code(), Some(error::BAD_REQUEST), "{r:?}");
    assert_still_serves(&relay);
}

#[test]
fn a_burst_of_mutated_packets_leaves_the_relay_serving() {
    // 2,000 bit-flipped copies of real requests, indications and ChannelData from a client
    // that holds an allocation; seeded, so a failure replays.
    use rand::{Rng, SeedableRng};
    let relay = TestRelay::start();
    let peer = Peer::bind(V4).expect("peer");
    let mut c = StunClient::with_credentials(relay.v4(), USER, PASSWORD).expect("socket");
    c.allocate_ok(&[]);
    let r = c.channel_bind(0x4001, peer.addr()).expect("answered");
    assert!(r.is_success(), "{r:?}");
    let templates: Vec<Vec<u8>> = vec![
        c.build_authed_request(Method::ALLOCATE, &[Attr::RequestedTransport(17)])
            .0,
        c.build_authed_request(Method::REFRESH, &[Attr::Lifetime(600)])
            .0,
        c.build_authed_request(
            Method::CREATE_PERMISSION,
            &[Attr::XorPeerAddress(peer.addr())],
        )
        .0,
        c.build_authed_request(
            Method::CHANNEL_BIND,
            &[
                Attr::ChannelNumber(0x4001),
                Attr::XorPeerAddress(peer.addr()),
            ],
        )
        .0,
        build(
            Method::SEND,
            Class::Indication,
            new_tid(),
            &[Attr::XorPeerAddress(peer.addr()), Attr::Data(vec![7; 40])],
            None,
            true,
        ),
        tern_tests::stun_client::channel_data(0x4001, &[9; 33], true),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7e57_7e51);
    for i in 0..2_000 {
        let mut pkt = templates[i % templates.len()].clone();
        for _ in 0..rng.gen_range(1..=4) {
            let at = rng.gen_range(0..pkt.len());
            pkt[at] ^= 1 << rng.gen_range(0..8);
        }
        if rng.gen_bool(0.1) {
            pkt.truncate(rng.gen_range(0..pkt.len()));
        }
        c.send_raw(&pkt).expect("send");
        if i % 200 == 199 {
            std::thread::sleep(Duration::from_millis(20)); // stay a modest rate
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_still_serves(&relay);
}
