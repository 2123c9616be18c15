//! Property tests of the TURN server core: nothing from the network panics it,
//! and random sequences of plausible client, peer and timer operations keep
//! its bookkeeping consistent with the Host's.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use support::*;
use tern_stun::{attr, AddressFamily, Class, Message, MessageWriter, Method};
use tern_turn::{Event, Via};

const PEERS: [&str; 5] = [
    "8.8.8.8:5000",
    "8.8.4.4:6000",
    "[2606:4700::1111]:7000",
    "127.0.0.1:1",
    "8.8.8.8:0",
];
const CHANNELS: [u16; 5] = [0x4000, 0x4001, 0x4FFF, 0x6000, 0x3FFF];

fn peer(i: usize) -> SocketAddr {
    sa(PEERS[i % PEERS.len()])
}

/// A harness with alice allocated on both families, a permission for the
/// first three peers and channel 0x4001 bound to the first.
fn with_allocation() -> (Harness, Client, Vec<SocketAddr>) {
    let mut h = Harness::new(config());
    let mut c = Client::user("192.0.2.100:40000", "alice");
    let r = h
        .allocate_with(&mut c, |w| {
            w.add_address_family(attr::ADDITIONAL_ADDRESS_FAMILY, AddressFamily::V6)
                .unwrap()
        })
        .ok();
    let relays = r.xor_addrs(attr::XOR_RELAYED_ADDRESS);
    assert_eq!(relays.len(), 2);
    h.permit(&mut c, &[peer(0), peer(1), peer(2)]).ok();
    h.channel_bind(&mut c, 0x4001, peer(0)).ok();
    (h, c, relays)
}

/// Valid messages a client might send, to mutate.
fn templates(c: &mut Client) -> Vec<Vec<u8>> {
    let mut c = c.clone();
    let mut out = Vec::new();
    for fingerprint in [false, true] {
        c.fingerprint = fingerprint;
        out.push(c.allocate_req());
        out.push(c.request(Method::ALLOCATE, |w| {
            w.add_requested_transport(17).unwrap();
            w.add_even_port(true).unwrap();
            w.add_u32(attr::LIFETIME, 1200).unwrap();
            w.add_address_family(attr::ADDITIONAL_ADDRESS_FAMILY, AddressFamily::V6)
                .unwrap();
        }));
        out.push(c.request(Method::ALLOCATE, |w| {
            w.add_requested_transport(17).unwrap();
            w.add_reservation_token([1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        }));
        out.push(c.refresh_req(Some(0)));
        out.push(c.refresh_req(Some(700)));
        out.push(c.permission_req(&[peer(0), peer(2)]));
        out.push(c.channel_bind_req(0x4002, peer(1)));
        out.push(c.send_indication(peer(0), b"some payload"));
        out.push(c.send_indication(peer(2), &[0u8; 33]));
        out.push(c.binding_req());
    }
    out.push(channel_data(0x4001, b"channel data"));
    out.push(channel_data(0x4002, &[9u8; 17]));
    out
}

/// Every control transmit must be a well-formed STUN message to the client.
fn check_transmits(h: &mut Harness, c: &Client) {
    while let Some(t) = h.server.poll_transmit() {
        assert_eq!(t.to, c.addr);
        assert_eq!(t.via, Via::Listener(c.listener));
        Message::parse(&t.payload).expect("the server sends well-formed STUN");
    }
}

/// Every socket the Host has bound is a relay of a live allocation (from every
/// event since the harness started) or a reservation, and every live
/// allocation still has a socket. (A Refresh may drop one half of a dual
/// allocation without an event, hence not equality.)
fn check_sockets(h: &mut Harness) {
    let mut live: HashMap<tern_turn::FiveTuple, Vec<SocketAddr>> = HashMap::new();
    for e in h.take_events() {
        match e {
            Event::AllocationCreated {
                five_tuple,
                relayed,
                ..
            } => {
                live.insert(five_tuple, relayed.into_iter().flatten().collect());
            }
            Event::AllocationDeleted { five_tuple, .. } => {
                live.remove(&five_tuple);
            }
            _ => {}
        }
    }
    assert_eq!(live.len(), h.server.allocation_count());
    for relays in live.values() {
        assert!(
            relays.iter().any(|r| h.host.bound.contains(r)),
            "a live allocation lost its sockets"
        );
    }
    let mut expected: BTreeSet<SocketAddr> = live.into_values().flatten().collect();
    expected.extend(h.host.reservations.values().copied());
    assert!(
        h.host.bound.is_subset(&expected),
        "stray sockets: {:?}",
        h.host.bound.difference(&expected)
    );
}

/// Interesting attribute types for random requests.
const ATTRS: [u16; 24] = [
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::REALM,
    attr::NONCE,
    attr::PASSWORD_ALGORITHM,
    attr::PASSWORD_ALGORITHMS,
    attr::CHANNEL_NUMBER,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::ADDITIONAL_ADDRESS_FAMILY,
    attr::EVEN_PORT,
    attr::REQUESTED_TRANSPORT,
    attr::DONT_FRAGMENT,
    attr::RESERVATION_TOKEN,
    attr::USERHASH,
    attr::ERROR_CODE,
    attr::SOFTWARE,
    attr::UNKNOWN_ATTRIBUTES,
    0x7FFF,
    0xC000,
    attr::PRIORITY,
];

fn random_attr() -> impl Strategy<Value = (u16, Vec<u8>)> {
    (
        prop_oneof![3 => prop::sample::select(&ATTRS[..]), 1 => any::<u16>()],
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..8),
            prop::collection::vec(any::<u8>(), 0..48),
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_client_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..700),
        first in prop_oneof![Just(None), (0u8..4).prop_map(Some), (0x40u8..0x80).prop_map(Some)],
        with_alloc in any::<bool>(),
    ) {
        let (mut h, c) = if with_alloc {
            let (h, c, _) = with_allocation();
            (h, c)
        } else {
            (Harness::new(config()), Client::user("192.0.2.100:40000", "alice"))
        };
        let mut bytes = bytes;
        if let (Some(b), Some(f)) = (bytes.first_mut(), first) {
            *b = f;
        }
        let now = h.now;
        let fwd = h.server.handle_client_packet(&mut h.host, c.listener, c.addr, &bytes, now).map(Fwd::from);
        if let Some(f) = fwd {
            prop_assert!(with_alloc, "nothing is relayed without an allocation");
            prop_assert!(matches!(f.via, Via::Relay(_)));
        }
        check_transmits(&mut h, &c);
        // The allocation is intact.
        prop_assert_eq!(h.server.allocation_count(), usize::from(with_alloc));
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        pick in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
        with_alloc in any::<bool>(),
    ) {
        let (mut h, mut c) = if with_alloc {
            let (h, c, _) = with_allocation();
            (h, c)
        } else {
            let mut h = Harness::new(config());
            let mut c = Client::user("192.0.2.100:40000", "alice");
            h.learn_nonce(&mut c);
            (h, c)
        };
        let all = templates(&mut c);
        let mut msg = pick.get(&all).clone();
        for (i, v) in flips {
            let n = msg.len();
            msg[i.index(n)] ^= v;
        }
        if let Some(cut) = cut {
            let n = msg.len();
            msg.truncate(cut.index(n + 1));
        }
        let now = h.now;
        let _ = h.server.handle_client_packet(&mut h.host, c.listener, c.addr, &msg, now);
        check_transmits(&mut h, &c);
        prop_assert_eq!(h.host.total, h.server.allocation_count());
        check_sockets(&mut h);
    }

    #[test]
    fn random_requests_never_panic(
        method in prop_oneof![0u16..0x10, any::<u16>().prop_map(|m| m & 0x0FFF)],
        class in 0usize..4,
        attrs in prop::collection::vec(random_attr(), 0..8),
        sign in any::<bool>(),
        with_alloc in any::<bool>(),
    ) {
        let (mut h, mut c) = if with_alloc {
            let (h, c, _) = with_allocation();
            (h, c)
        } else {
            let mut h = Harness::new(config());
            let mut c = Client::user("192.0.2.100:40000", "alice");
            h.learn_nonce(&mut c);
            (h, c)
        };
        let class = [Class::Request, Class::Indication, Class::Success, Class::Error][class];
        let tid = c.next_tid();
        let sign = if sign { Sign::Md5 } else { Sign::No };
        let msg = c.build(tid, Method(method), class, sign, |w: &mut MessageWriter<'_>| {
            for (t, v) in &attrs {
                w.add_raw(*t, v).unwrap();
            }
        });
        let now = h.now;
        let _ = h.server.handle_client_packet(&mut h.host, c.listener, c.addr, &msg, now);
        check_transmits(&mut h, &c);
        prop_assert_eq!(h.host.total, h.server.allocation_count());
        check_sockets(&mut h);
    }

    #[test]
    fn arbitrary_peer_datagrams_never_panic(
        buf in prop::collection::vec(any::<u8>(), 0..400),
        len in prop_oneof![0usize..450, any::<usize>(), (usize::MAX - 64)..=usize::MAX],
        peer_pick in 0usize..6,
        relay_pick in 0usize..3,
        with_alloc in any::<bool>(),
    ) {
        let (mut h, c, relays) = if with_alloc {
            with_allocation()
        } else {
            (Harness::new(config()), Client::user("192.0.2.100:40000", "alice"),
             vec![sa("192.0.2.10:50000"), sa("[2001:db8::10]:50000")])
        };
        let relay = match relay_pick {
            0 => relays[0],
            1 => relays[1],
            _ => sa("192.0.2.10:1"),
        };
        let from = if peer_pick < PEERS.len() { peer(peer_pick) } else { sa("9.9.9.9:9") };
        let mut buf = buf;
        let now = h.now;
        let out = h.server.handle_peer_packet(relay, from, &mut buf, len, now).map(Fwd::from);
        if let Some(f) = out {
            prop_assert!(with_alloc);
            prop_assert_eq!(f.to, c.addr);
            prop_assert!(len <= buf.len());
            let first = f.payload[0];
            if first & 0xC0 == 0x40 {
                prop_assert_eq!(f.payload.len(), 4 + len);
            } else {
                let (p, data) = parse_data_indication(&f.payload);
                prop_assert_eq!(p, from);
                prop_assert_eq!(data.len(), len);
            }
        }
        prop_assert!(h.server.poll_transmit().is_none());
    }
}

// ---- random operation sequences ------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Allocate {
        client: usize,
        even: Option<bool>,
        dual: bool,
        v6: bool,
        lifetime: Option<u32>,
    },
    ClaimToken {
        client: usize,
    },
    Permission {
        client: usize,
        peer: usize,
    },
    Bind {
        client: usize,
        channel: usize,
        peer: usize,
    },
    Send {
        client: usize,
        peer: usize,
        len: usize,
    },
    ChannelData {
        client: usize,
        channel: usize,
        len: usize,
    },
    PeerData {
        client: usize,
        peer: usize,
        family: usize,
        len: usize,
    },
    Refresh {
        client: usize,
        lifetime: Option<u32>,
        family: Option<bool>,
    },
    Advance {
        millis: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    // Biased towards one client and the allowed peers, so that allocations,
    // permissions and channels line up often enough for data to flow.
    let client = || prop_oneof![3 => Just(0usize), 1 => 0usize..4];
    let peer = || prop_oneof![3 => Just(0usize), 2 => Just(2usize), 2 => 0usize..PEERS.len()];
    let channel = || prop_oneof![3 => Just(1usize), 1 => 0usize..CHANNELS.len()];
    let len = || prop_oneof![3 => 0usize..200, 1 => 0usize..1400];
    let lifetime = prop_oneof![Just(None), Just(Some(0)), (1u32..4000).prop_map(Some)];
    prop_oneof![
        3 => (client(), prop::option::of(any::<bool>()), any::<bool>(), prop::bool::weighted(0.2),
              prop::option::of(0u32..4000))
            .prop_map(|(client, even, dual, v6, lifetime)| Op::Allocate { client, even, dual, v6, lifetime }),
        1 => client().prop_map(|client| Op::ClaimToken { client }),
        3 => (client(), peer()).prop_map(|(client, peer)| Op::Permission { client, peer }),
        3 => (client(), channel(), peer())
            .prop_map(|(client, channel, peer)| Op::Bind { client, channel, peer }),
        5 => (client(), peer(), len()).prop_map(|(client, peer, len)| Op::Send { client, peer, len }),
        5 => (client(), channel(), len())
            .prop_map(|(client, channel, len)| Op::ChannelData { client, channel, len }),
        5 => (client(), peer(), 0usize..2, len())
            .prop_map(|(client, peer, family, len)| Op::PeerData { client, peer, family, len }),
        2 => (client(), lifetime, prop::option::of(any::<bool>()))
            .prop_map(|(client, lifetime, family)| Op::Refresh { client, lifetime, family }),
        3 => prop_oneof![4 => 0u64..2_000, 2 => 0u64..100_000, 1 => 0u64..1_000_000]
            .prop_map(|millis| Op::Advance { millis }),
    ]
}

/// What the test believes, kept from the server's events and responses.
#[derive(Default)]
struct Model {
    /// Relay sockets (local addresses) of each client's live allocation.
    relays: BTreeMap<usize, Vec<SocketAddr>>,
    created_events: u64,
    deleted_events: u64,
    tokens: Vec<[u8; 8]>,
}

struct World {
    h: Harness,
    clients: Vec<Client>,
    model: Model,
}

impl World {
    fn new() -> Self {
        let mut cfg = config();
        cfg.relay_ports = tern_turn::RelayPortRange::new(50_000, 50_011).unwrap();
        cfg.bandwidth_per_allocation = 1_500;
        cfg.max_permissions_per_allocation = 3;
        cfg.max_channels_per_allocation = 2;
        let host = FakeHost {
            max_per_user: Some(2),
            ..FakeHost::new()
        };
        let clients = vec![
            Client::user("192.0.2.100:40000", "alice"),
            Client::user("192.0.2.101:40000", "alice"),
            Client::user("192.0.2.102:40000", "alice"),
            Client::user("[2001:db8::200]:40000", "bob"),
        ];
        World {
            h: Harness::with_host(cfg, host),
            clients,
            model: Model::default(),
        }
    }

    fn absorb_events(&mut self) {
        for e in self.h.take_events() {
            match e {
                Event::AllocationCreated {
                    five_tuple,
                    relayed,
                    ..
                } => {
                    let i = self.client_index(five_tuple.client);
                    let old = self
                        .model
                        .relays
                        .insert(i, relayed.into_iter().flatten().collect());
                    assert!(old.is_none(), "created twice for client {i}");
                    self.model.created_events += 1;
                }
                Event::AllocationDeleted { five_tuple, .. } => {
                    let i = self.client_index(five_tuple.client);
                    assert!(
                        self.model.relays.remove(&i).is_some(),
                        "deleted unknown allocation"
                    );
                    self.model.deleted_events += 1;
                }
                _ => {}
            }
        }
    }

    fn client_index(&self, addr: SocketAddr) -> usize {
        self.clients
            .iter()
            .position(|c| c.addr == addr)
            .expect("known client")
    }

    fn signed(&mut self, i: usize, build: impl FnMut(&mut Client) -> Vec<u8>) -> Response {
        let mut c = self.clients[i].clone();
        let r = self.h.signed(&mut c, build);
        self.clients[i] = c;
        r
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Allocate {
                client,
                even,
                dual,
                v6,
                lifetime,
            } => {
                let r = self.signed(client, |c| {
                    c.request(Method::ALLOCATE, |w| {
                        w.add_requested_transport(17).unwrap();
                        if let Some(r) = even {
                            w.add_even_port(r).unwrap();
                        }
                        if dual {
                            w.add_address_family(
                                attr::ADDITIONAL_ADDRESS_FAMILY,
                                AddressFamily::V6,
                            )
                            .unwrap();
                        } else if v6 {
                            w.add_address_family(attr::REQUESTED_ADDRESS_FAMILY, AddressFamily::V6)
                                .unwrap();
                        }
                        if let Some(l) = lifetime {
                            w.add_u32(attr::LIFETIME, l).unwrap();
                        }
                    })
                });
                let had = self.model.relays.contains_key(&client);
                if r.class() == Class::Success {
                    assert!(
                        !had,
                        "Allocate succeeded on a 5-tuple that has an allocation"
                    );
                    if let Some(t) = r.attr(attr::RESERVATION_TOKEN) {
                        self.model.tokens.push(t.try_into().unwrap());
                    }
                } else if had {
                    assert_eq!(r.code(), Some(437));
                }
            }
            Op::ClaimToken { client } => {
                let Some(&token) = self.model.tokens.last() else {
                    return;
                };
                let r = self.signed(client, |c| {
                    c.request(Method::ALLOCATE, |w| {
                        w.add_requested_transport(17).unwrap();
                        w.add_reservation_token(token).unwrap();
                    })
                });
                if r.class() == Class::Success {
                    self.model.tokens.pop();
                }
            }
            Op::Permission { client, peer: p } => {
                let _ = self.signed(client, |c| c.permission_req(&[peer(p)]));
            }
            Op::Bind {
                client,
                channel,
                peer: p,
            } => {
                let _ = self.signed(client, |c| c.channel_bind_req(CHANNELS[channel], peer(p)));
            }
            Op::Send {
                client,
                peer: p,
                len,
            } => {
                let mut c = self.clients[client].clone();
                let data = vec![0x5Au8; len];
                let ind = c.send_indication(peer(p), &data);
                if let Some(f) = self.h.client_sends(&c, &ind) {
                    self.check_to_peer(client, &f, peer(p), len);
                }
            }
            Op::ChannelData {
                client,
                channel,
                len,
            } => {
                let c = self.clients[client].clone();
                let data = vec![0xA5u8; len];
                if let Some(f) = self
                    .h
                    .client_sends(&c, &channel_data(CHANNELS[channel], &data))
                {
                    assert_eq!(f.payload, data);
                    let to = f.to;
                    self.check_to_peer(client, &f, to, len);
                }
            }
            Op::PeerData {
                client,
                peer: p,
                family,
                len,
            } => {
                let relay = self
                    .model
                    .relays
                    .get(&client)
                    .and_then(|rs| rs.iter().find(|r| r.is_ipv4() == (family == 0)).copied())
                    .unwrap_or_else(|| {
                        if family == 0 {
                            sa("192.0.2.10:50005")
                        } else {
                            sa("[2001:db8::10]:50005")
                        }
                    });
                let data = vec![0x33u8; len];
                if let Some(f) = self.h.peer_packet(relay, peer(p), &data) {
                    let owner = self
                        .model
                        .relays
                        .iter()
                        .find(|(_, rs)| rs.contains(&relay))
                        .map(|(i, _)| *i);
                    let owner = owner.expect("relayed from a relay no live allocation owns");
                    assert_eq!(f.to, self.clients[owner].addr);
                    assert_eq!(f.via, Via::Listener(self.clients[owner].listener));
                    if f.payload[0] & 0xC0 == 0x40 {
                        assert_eq!(&f.payload[4..], &data[..]);
                    } else {
                        assert_eq!(parse_data_indication(&f.payload), (peer(p), data));
                    }
                }
            }
            Op::Refresh {
                client,
                lifetime,
                family,
            } => {
                let family = family.map(|v4| {
                    if v4 {
                        AddressFamily::V4
                    } else {
                        AddressFamily::V6
                    }
                });
                let before = self.model.deleted_events;
                let r = self.signed(client, |c| {
                    c.request(Method::REFRESH, |w| {
                        if let Some(l) = lifetime {
                            w.add_u32(attr::LIFETIME, l).unwrap();
                        }
                        if let Some(f) = family {
                            w.add_address_family(attr::REQUESTED_ADDRESS_FAMILY, f)
                                .unwrap();
                        }
                    })
                });
                self.absorb_events();
                if r.class() == Class::Success
                    && lifetime == Some(0)
                    && self.model.deleted_events == before
                {
                    // One family of a dual allocation was dropped.
                    let v4 = family == Some(AddressFamily::V4);
                    let rs = self
                        .model
                        .relays
                        .get_mut(&client)
                        .expect("a refreshed allocation");
                    let n = rs.len();
                    rs.retain(|r| r.is_ipv4() != v4);
                    assert_eq!(rs.len() + 1, n, "exactly one family dropped");
                }
            }
            Op::Advance { millis } => {
                self.h.advance(Duration::from_millis(millis));
            }
        }
        self.absorb_events();
    }

    fn check_to_peer(&self, client: usize, f: &Fwd, to: SocketAddr, len: usize) {
        assert_eq!(f.to, to);
        assert_eq!(f.payload.len(), len);
        let Via::Relay(relay) = f.via else {
            panic!("to a peer via a listener")
        };
        let rs = self
            .model
            .relays
            .get(&client)
            .expect("relayed without a live allocation");
        assert!(
            rs.contains(&relay),
            "relayed via {relay}, not one of the client's relays {rs:?}"
        );
        assert_eq!(
            relay.is_ipv4(),
            to.is_ipv4(),
            "relay family matches the peer's"
        );
        // The peer policy holds on the fast path too.
        assert!(
            !to.ip().is_loopback() && to.port() != 0,
            "relayed to forbidden {to}"
        );
    }

    fn check_invariants(&self) {
        let s = self.h.server.stats();
        let count = self.h.server.allocation_count() as u64;
        assert_eq!(
            count,
            s.allocations_created - s.allocations_deleted - s.allocations_expired
        );
        assert_eq!(count, self.model.created_events - self.model.deleted_events);
        assert_eq!(self.model.relays.len() as u64, count);
        assert_eq!(
            self.h.host.total as u64, count,
            "host quota matches live allocations"
        );
        let mut expected: BTreeSet<SocketAddr> =
            self.model.relays.values().flatten().copied().collect();
        expected.extend(self.h.host.reservations.values().copied());
        assert_eq!(
            self.h.host.bound, expected,
            "bound sockets = live relays + reservations"
        );
        if count > 0 {
            assert!(
                self.h.server.poll_timeout().is_some(),
                "live allocations need a timer"
            );
        }
        if let Some(t) = self.h.server.poll_timeout() {
            assert!(t > self.h.now, "timers due now were run");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_operation_sequences_keep_invariants(ops in prop::collection::vec(op(), 1..60)) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op);
            w.check_invariants();
        }
        // Everything ends eventually.
        w.h.advance_secs(4_000);
        w.absorb_events();
        w.check_invariants();
        prop_assert_eq!(w.h.server.allocation_count(), 0);
        prop_assert!(w.h.host.bound.is_empty(), "left bound: {:?}", w.h.host.bound);
        prop_assert_eq!(w.h.server.poll_timeout(), None);
    }
}

#[test]
fn templates_are_valid() {
    let mut h = Harness::new(config());
    let mut c = Client::user("192.0.2.100:40000", "alice");
    h.learn_nonce(&mut c);
    for t in templates(&mut c) {
        if t[0] & 0xC0 == 0 {
            Message::parse(&t).expect("template parses");
        }
    }
}
