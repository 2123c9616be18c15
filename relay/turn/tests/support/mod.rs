//! Test support for tern-turn's virtual-time tests: a fake [`Host`], a TURN
//! client that builds requests with `tern_stun::MessageWriter` and parses
//! responses with `tern_stun::Message`, and a [`Harness`] that drives a
//! [`Server`] in virtual time (one `Instant`, plus Durations; nothing sleeps).
//!
//! Shared by several test binaries, each using a different part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tern_stun::{
    attr, AddressFamily, Class, Message, MessageWriter, Method, PasswordAlgorithm, TransactionId,
};
use tern_turn::{
    BindError, Event, Forward, Host, QuotaError, RelayAddress, RelayAddresses, RelayPortRange,
    Server, ServerConfig, Transmit, Via, PEER_HEADROOM, PEER_TAILROOM,
};

/// The wall-clock time (UNIX seconds) the server is created at.
pub(crate) const UNIX_START: u64 = 1_700_000_000;
pub(crate) const REALM: &str = "tern.test";
pub(crate) const LISTENER: &str = "192.0.2.10:3478";
pub(crate) const RELAY_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub(crate) const RELAY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
pub(crate) const PORT_LO: u16 = 50_000;
pub(crate) const PORT_HI: u16 = 50_999;

pub(crate) fn sa(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad socket address {s:?}: {e}"))
}

/// A configuration relaying on both families, ports 50000–50999, users
/// alice/bob/carol with passwords "alice-pw" etc.
pub(crate) fn config() -> ServerConfig {
    let relay = RelayAddresses {
        v4: Some(RelayAddress::same(RELAY_V4)),
        v6: Some(RelayAddress::same(RELAY_V6)),
    };
    let mut cfg = ServerConfig::new(REALM, relay, RelayPortRange::new(PORT_LO, PORT_HI).unwrap());
    for u in ["alice", "bob", "carol", "dave"] {
        cfg.credentials.add_user(u, &format!("{u}-pw"));
    }
    cfg
}

/// [`config`] with IPv4 relaying only.
pub(crate) fn config_v4_only() -> ServerConfig {
    let mut cfg = config();
    cfg.relay.v6 = None;
    cfg
}

// ---- fake Host ---------------------------------------------------------------

/// A fake operating system: records relay sockets, can mark addresses in use,
/// keeps EVEN-PORT reservations and enforces configurable quotas. Contract
/// violations by the core (closing a socket that is not bound, releasing a
/// quota never acquired, reserving an unbound socket) panic.
#[derive(Debug, Default)]
pub(crate) struct FakeHost {
    /// Sockets bound now.
    pub(crate) bound: BTreeSet<SocketAddr>,
    /// Every successful bind, in order.
    pub(crate) bind_log: Vec<SocketAddr>,
    /// Every close, in order.
    pub(crate) closed: Vec<SocketAddr>,
    /// Addresses some other process holds: binding them fails with InUse.
    pub(crate) in_use: BTreeSet<SocketAddr>,
    /// Bind attempts that failed with InUse.
    pub(crate) in_use_hits: usize,
    /// Reservations held: token → reserved (bound) socket.
    pub(crate) reservations: BTreeMap<[u8; 8], SocketAddr>,
    /// Tokens claimed so far.
    pub(crate) claimed: Vec<[u8; 8]>,
    /// Relay-wide allocation cap (None: unlimited).
    pub(crate) max_total: Option<usize>,
    /// Per-user allocation cap (None: unlimited).
    pub(crate) max_per_user: Option<usize>,
    /// Allocations counted now.
    pub(crate) total: usize,
    pub(crate) per_user: HashMap<String, usize>,
    /// RFC 6062: TCP relayed addresses listening now.
    pub(crate) tcp_listening: BTreeSet<SocketAddr>,
    /// RFC 6062: Connects asked for (id, relay, peer).
    pub(crate) connects: Vec<(tern_turn::ConnectionId, SocketAddr, SocketAddr)>,
    /// RFC 6062: peer connections the core closed.
    pub(crate) peers_closed: Vec<tern_turn::ConnectionId>,
    /// RFC 6062: data connections spliced to peer connections.
    pub(crate) data_bound: Vec<(tern_turn::ConnectionId, tern_turn::FiveTuple)>,
}

impl FakeHost {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Sockets bound that are not held as reservations.
    pub(crate) fn relay_sockets(&self) -> BTreeSet<SocketAddr> {
        let reserved: BTreeSet<_> = self.reservations.values().copied().collect();
        self.bound.difference(&reserved).copied().collect()
    }

    pub(crate) fn user_count(&self, user: &str) -> usize {
        self.per_user.get(user).copied().unwrap_or(0)
    }
}

impl Host for FakeHost {
    fn bind_relay(&mut self, addr: SocketAddr) -> Result<(), BindError> {
        assert_ne!(addr.port(), 0, "core asked to bind port 0");
        if self.in_use.contains(&addr) || self.bound.contains(&addr) {
            self.in_use_hits += 1;
            return Err(BindError::InUse);
        }
        self.bound.insert(addr);
        self.bind_log.push(addr);
        Ok(())
    }

    fn close_relay(&mut self, addr: SocketAddr) {
        assert!(
            self.bound.remove(&addr),
            "core closed {addr}, which is not bound"
        );
        assert!(
            !self.reservations.values().any(|a| *a == addr),
            "core closed {addr}, which is held as a reservation"
        );
        self.closed.push(addr);
    }

    fn reserve_relay(&mut self, token: [u8; 8], addr: SocketAddr) {
        assert!(
            self.bound.contains(&addr),
            "core reserved {addr}, which is not bound"
        );
        assert!(
            self.reservations.insert(token, addr).is_none(),
            "token reused"
        );
    }

    fn claim_reserved(&mut self, token: [u8; 8]) -> Option<SocketAddr> {
        let addr = self.reservations.remove(&token)?;
        self.claimed.push(token);
        Some(addr)
    }

    fn cancel_reservation(&mut self, token: [u8; 8]) {
        if let Some(addr) = self.reservations.remove(&token) {
            assert!(
                self.bound.remove(&addr),
                "reserved socket {addr} was not bound"
            );
            self.closed.push(addr);
        }
    }

    fn acquire_allocation(&mut self, user: &str) -> Result<(), QuotaError> {
        if self.max_total.is_some_and(|m| self.total >= m) {
            return Err(QuotaError::Total);
        }
        if self
            .max_per_user
            .is_some_and(|m| self.user_count(user) >= m)
        {
            return Err(QuotaError::PerUser);
        }
        self.total += 1;
        *self.per_user.entry(user.to_owned()).or_default() += 1;
        Ok(())
    }

    fn bind_relay_tcp(&mut self, addr: SocketAddr) -> Result<(), BindError> {
        if self.in_use.contains(&addr) || !self.tcp_listening.insert(addr) {
            self.in_use_hits += 1;
            return Err(BindError::InUse);
        }
        Ok(())
    }

    fn close_relay_tcp(&mut self, addr: SocketAddr) {
        assert!(
            self.tcp_listening.remove(&addr),
            "core closed TCP {addr}, which is not listening"
        );
    }

    fn connect_peer(&mut self, id: tern_turn::ConnectionId, relay: SocketAddr, peer: SocketAddr) {
        assert!(
            self.tcp_listening.contains(&relay),
            "connect from a closed relay"
        );
        self.connects.push((id, relay, peer));
    }

    fn close_peer_connection(&mut self, id: tern_turn::ConnectionId) {
        self.peers_closed.push(id);
    }

    fn bind_data_connection(&mut self, id: tern_turn::ConnectionId, data: tern_turn::FiveTuple) {
        self.data_bound.push((id, data));
    }

    fn release_allocation(&mut self, user: &str) {
        let n = self
            .per_user
            .get_mut(user)
            .unwrap_or_else(|| panic!("release for {user} never acquired"));
        assert!(*n > 0, "release for {user} below zero");
        *n -= 1;
        assert!(self.total > 0, "total quota below zero");
        self.total -= 1;
    }
}

// ---- responses -------------------------------------------------------------

/// A STUN response (or indication) the server sent, owned.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Response(pub Vec<u8>);

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.msg();
        f.debug_struct("Response")
            .field("method", &m.method())
            .field("class", &m.class())
            .field("error", &self.error())
            .field("len", &self.0.len())
            .finish()
    }
}

impl Response {
    /// Parses (panics if the server sent something that does not parse).
    pub(crate) fn msg(&self) -> Message<'_> {
        Message::parse(&self.0).unwrap_or_else(|e| panic!("server sent unparsable STUN: {e:?}"))
    }

    pub(crate) fn class(&self) -> Class {
        self.msg().class()
    }

    pub(crate) fn method(&self) -> Method {
        self.msg().method()
    }

    pub(crate) fn tid(&self) -> TransactionId {
        self.msg().transaction_id()
    }

    pub(crate) fn attr(&self, typ: u16) -> Option<&[u8]> {
        self.msg().get(typ).map(|a| a.value)
    }

    pub(crate) fn attrs(&self, typ: u16) -> Vec<&[u8]> {
        self.msg()
            .attributes()
            .filter(|a| a.typ == typ)
            .map(|a| a.value)
            .collect()
    }

    pub(crate) fn types(&self) -> Vec<u16> {
        self.msg().attributes().map(|a| a.typ).collect()
    }

    /// The ERROR-CODE and reason, if any.
    pub(crate) fn error(&self) -> Option<(u16, String)> {
        let v = self.attr(attr::ERROR_CODE)?;
        let (code, reason) = tern_stun::decode_error_code(v).expect("ERROR-CODE decodes");
        Some((code, reason.to_owned()))
    }

    pub(crate) fn code(&self) -> Option<u16> {
        self.error().map(|(c, _)| c)
    }

    pub(crate) fn xor_addr(&self, typ: u16) -> Option<SocketAddr> {
        let tid = self.tid();
        self.attr(typ)
            .map(|v| tern_stun::decode_xor_address(v, &tid).expect("XOR address decodes"))
    }

    pub(crate) fn xor_addrs(&self, typ: u16) -> Vec<SocketAddr> {
        let tid = self.tid();
        self.attrs(typ)
            .into_iter()
            .map(|v| tern_stun::decode_xor_address(v, &tid).expect("XOR address decodes"))
            .collect()
    }

    pub(crate) fn u32(&self, typ: u16) -> Option<u32> {
        self.attr(typ)
            .map(|v| tern_stun::decode_u32(v).expect("u32 attribute decodes"))
    }

    pub(crate) fn lifetime(&self) -> Option<u32> {
        self.u32(attr::LIFETIME)
    }

    pub(crate) fn nonce(&self) -> Option<Vec<u8>> {
        self.attr(attr::NONCE).map(<[u8]>::to_vec)
    }

    /// Asserts a success response and returns self.
    #[track_caller]
    pub(crate) fn ok(self) -> Self {
        assert_eq!(
            self.class(),
            Class::Success,
            "expected success, got {:?}",
            self.error()
        );
        self
    }

    /// Asserts an error response with `code`.
    #[track_caller]
    pub(crate) fn expect_error(&self, code: u16) {
        assert_eq!(
            self.class(),
            Class::Error,
            "expected error {code}, got success"
        );
        assert_eq!(
            self.code(),
            Some(code),
            "expected error {code}, got {:?}",
            self.error()
        );
    }
}

// ---- client ----------------------------------------------------------------

/// How a request is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sign {
    /// No USERNAME/REALM/NONCE/MESSAGE-INTEGRITY.
    No,
    /// Long-term credentials, MD5 key, MESSAGE-INTEGRITY.
    Md5,
    /// RFC 8489 SHA-256: PASSWORD-ALGORITHMS (as offered) + PASSWORD-ALGORITHM
    /// SHA-256, SHA-256 key, MESSAGE-INTEGRITY-SHA256.
    Sha256,
}

/// A TURN client over UDP: its address, the listener it talks to, its
/// credentials and the nonce it last learnt.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    pub(crate) addr: SocketAddr,
    pub(crate) listener: SocketAddr,
    pub(crate) username: String,
    pub(crate) password: String,
    pub(crate) realm: String,
    pub(crate) nonce: Option<Vec<u8>>,
    pub(crate) sign: Sign,
    pub(crate) fingerprint: bool,
    /// UDP unless a test says otherwise (TCP/TLS: one connection).
    pub(crate) transport: tern_turn::Transport,
    tid_counter: u64,
}

impl Client {
    pub(crate) fn new(addr: SocketAddr, username: &str, password: &str) -> Self {
        Self {
            addr,
            listener: sa(LISTENER),
            username: username.to_owned(),
            password: password.to_owned(),
            realm: REALM.to_owned(),
            nonce: None,
            sign: Sign::Md5,
            fingerprint: true,
            transport: tern_turn::Transport::Udp,
            tid_counter: 0,
        }
    }

    /// Client `user` with the password [`config`] gives it.
    pub(crate) fn user(addr: &str, user: &str) -> Self {
        Self::new(sa(addr), user, &format!("{user}-pw"))
    }

    pub(crate) fn five_tuple(&self) -> tern_turn::FiveTuple {
        tern_turn::FiveTuple {
            client: self.addr,
            listener: self.listener,
            transport: self.transport,
        }
    }

    /// A transaction id unique in this process (so two clients on one
    /// 5-tuple never collide in the server's transaction cache).
    pub(crate) fn next_tid(&mut self) -> TransactionId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        self.tid_counter = NEXT.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 12];
        id[..8].copy_from_slice(&self.tid_counter.to_be_bytes());
        id[8..10].copy_from_slice(&self.addr.port().to_be_bytes());
        id[10] = 0x5A;
        id[11] = 0xA5;
        TransactionId(id)
    }

    pub(crate) fn key_md5(&self) -> [u8; 16] {
        tern_stun::long_term_key_md5(&self.username, &self.realm, &self.password)
    }

    pub(crate) fn key_sha256(&self) -> [u8; 32] {
        tern_stun::long_term_key_sha256(&self.username, &self.realm, &self.password)
    }

    /// Build a request of `method` with a fresh transaction id; `add` appends
    /// the method's attributes; signed as `self.sign` if a nonce is known.
    pub(crate) fn request(
        &mut self,
        method: Method,
        add: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Vec<u8> {
        let tid = self.next_tid();
        let sign = if self.nonce.is_some() {
            self.sign
        } else {
            Sign::No
        };
        self.build(tid, method, Class::Request, sign, add)
    }

    /// Build any message with full control.
    pub(crate) fn build(
        &self,
        tid: TransactionId,
        method: Method,
        class: Class,
        sign: Sign,
        add: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let mut w = MessageWriter::new(&mut buf, method, class, tid).unwrap();
        add(&mut w);
        if sign != Sign::No {
            let nonce = self.nonce.as_ref().expect("signing needs a nonce");
            if sign == Sign::Sha256 {
                w.add_password_algorithms(&[PasswordAlgorithm::Md5, PasswordAlgorithm::Sha256])
                    .unwrap();
                w.add_password_algorithm(PasswordAlgorithm::Sha256).unwrap();
            }
            w.add_text(attr::USERNAME, &self.username).unwrap();
            w.add_text(attr::REALM, &self.realm).unwrap();
            w.add_raw(attr::NONCE, nonce).unwrap();
            match sign {
                Sign::Sha256 => w.add_message_integrity_sha256(&self.key_sha256()).unwrap(),
                _ => w.add_message_integrity(&self.key_md5()).unwrap(),
            }
        }
        if self.fingerprint {
            w.add_fingerprint().unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    pub(crate) fn allocate_req(&mut self) -> Vec<u8> {
        self.request(Method::ALLOCATE, |w| w.add_requested_transport(17).unwrap())
    }

    pub(crate) fn refresh_req(&mut self, lifetime: Option<u32>) -> Vec<u8> {
        self.request(Method::REFRESH, |w| {
            if let Some(l) = lifetime {
                w.add_u32(attr::LIFETIME, l).unwrap();
            }
        })
    }

    pub(crate) fn permission_req(&mut self, peers: &[SocketAddr]) -> Vec<u8> {
        self.request(Method::CREATE_PERMISSION, |w| {
            for p in peers {
                w.add_xor_address(attr::XOR_PEER_ADDRESS, *p).unwrap();
            }
        })
    }

    pub(crate) fn channel_bind_req(&mut self, channel: u16, peer: SocketAddr) -> Vec<u8> {
        self.request(Method::CHANNEL_BIND, |w| {
            w.add_channel_number(channel).unwrap();
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        })
    }

    /// A Send indication (never signed).
    pub(crate) fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        let tid = self.next_tid();
        self.build(tid, Method::SEND, Class::Indication, Sign::No, |w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
            w.add_raw(attr::DATA, data).unwrap();
        })
    }

    /// A Binding request (never signed).
    pub(crate) fn binding_req(&mut self) -> Vec<u8> {
        let tid = self.next_tid();
        self.build(tid, Method::BINDING, Class::Request, Sign::No, |_| {})
    }

    /// Verify the response's integrity with this client's key, per how it signs.
    #[track_caller]
    pub(crate) fn assert_signed(&self, r: &Response) {
        let m = r.msg();
        match self.sign {
            Sign::Sha256 => {
                m.verify_integrity_sha256(&self.key_sha256())
                    .expect("MESSAGE-INTEGRITY-SHA256");
            }
            _ => m
                .verify_integrity(&self.key_md5())
                .expect("MESSAGE-INTEGRITY"),
        }
    }
}

/// A ChannelData message (padded to 4 bytes, as a client might send).
pub(crate) fn channel_data(channel: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + data.len() + 3);
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
    v.extend_from_slice(data);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

// ---- harness ---------------------------------------------------------------

/// A datagram the server handed back on the fast path, copied out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fwd {
    pub(crate) via: Via,
    pub(crate) to: SocketAddr,
    pub(crate) payload: Vec<u8>,
}

impl From<Forward<'_>> for Fwd {
    fn from(f: Forward<'_>) -> Self {
        Fwd {
            via: f.via,
            to: f.to,
            payload: f.payload.to_vec(),
        }
    }
}

/// What an Allocate gave a client.
#[derive(Clone, Debug)]
pub(crate) struct Allocated {
    /// XOR-RELAYED-ADDRESS values, in order.
    pub(crate) relayed: Vec<SocketAddr>,
    pub(crate) response: Response,
}

impl Allocated {
    pub(crate) fn relayed(&self) -> SocketAddr {
        self.relayed[0]
    }
}

/// A [`Server`], its [`FakeHost`] and a virtual clock.
pub(crate) struct Harness {
    pub(crate) server: Server,
    pub(crate) host: FakeHost,
    pub(crate) t0: Instant,
    pub(crate) now: Instant,
    /// Events drained from the server, in order.
    pub(crate) events: Vec<Event>,
}

impl Harness {
    pub(crate) fn new(config: ServerConfig) -> Self {
        Self::with_host(config, FakeHost::new())
    }

    pub(crate) fn with_host(config: ServerConfig, host: FakeHost) -> Self {
        // The one real clock reading: the origin of virtual time. Everything
        // after it is t0 plus a Duration.
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let server = Server::new(config, t0, Duration::from_secs(UNIX_START), [7; 32]);
        Self {
            server,
            host,
            t0,
            now: t0,
            events: Vec::new(),
        }
    }

    /// Seconds since t0 as an Instant.
    pub(crate) fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    /// The virtual wall clock now, UNIX seconds.
    pub(crate) fn unix_now(&self) -> u64 {
        UNIX_START + self.now.duration_since(self.t0).as_secs()
    }

    /// Move the clock to `t`, running every timer due on the way, in order,
    /// at the instant `poll_timeout` names (as a real event loop would).
    pub(crate) fn advance_to(&mut self, t: Instant) {
        assert!(t >= self.now, "virtual time goes forward");
        let mut turns = 0;
        while let Some(deadline) = self.server.poll_timeout() {
            if deadline > t {
                break;
            }
            turns += 1;
            assert!(
                turns < 100_000,
                "handle_timeout does not consume its deadline {deadline:?}"
            );
            self.now = self.now.max(deadline);
            self.server.handle_timeout(&mut self.host, self.now);
            self.drain_events();
            assert!(self.server.poll_transmit().is_none(), "timers send nothing");
        }
        self.now = t;
        self.server.handle_timeout(&mut self.host, self.now);
        self.drain_events();
    }

    /// Advance by `d`, running timers.
    pub(crate) fn advance(&mut self, d: Duration) {
        let t = self.now + d;
        self.advance_to(t);
    }

    pub(crate) fn advance_secs(&mut self, s: u64) {
        self.advance(Duration::from_secs(s));
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.server.poll_event() {
            self.events.push(e);
        }
    }

    /// Take the events seen since the last call.
    pub(crate) fn take_events(&mut self) -> Vec<Event> {
        self.drain_events();
        std::mem::take(&mut self.events)
    }

    /// Feed a client datagram; returns the fast-path datagram (if any) and
    /// every control transmit queued.
    pub(crate) fn client_packet(
        &mut self,
        listener: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
    ) -> (Option<Fwd>, Vec<Transmit>) {
        let fwd = self
            .server
            .handle_client_packet(&mut self.host, listener, from, bytes, self.now)
            .map(Fwd::from);
        let mut out = Vec::new();
        while let Some(t) = self.server.poll_transmit() {
            out.push(t);
        }
        self.drain_events();
        (fwd, out)
    }

    /// Feed one message from client `c` over its own transport; returns the
    /// fast-path datagram (if any) and every control transmit queued.
    pub(crate) fn client_message(
        &mut self,
        c: &Client,
        bytes: &[u8],
    ) -> (Option<Fwd>, Vec<Transmit>) {
        let fwd = self
            .server
            .handle_client_message(&mut self.host, c.five_tuple(), bytes, self.now)
            .map(Fwd::from);
        let mut out = Vec::new();
        while let Some(t) = self.server.poll_transmit() {
            out.push(t);
        }
        self.drain_events();
        (fwd, out)
    }

    /// Feed a datagram from client `c`: returns its fast-path datagram, and
    /// asserts that nothing else was queued.
    pub(crate) fn client_sends(&mut self, c: &Client, bytes: &[u8]) -> Option<Fwd> {
        let (fwd, tx) = self.client_message(c, bytes);
        assert!(
            tx.is_empty(),
            "expected no control transmit, got {}",
            tx.len()
        );
        fwd
    }

    /// Send a request and return the one response (asserting that exactly
    /// one was queued, to the client, from the listener it used).
    #[track_caller]
    pub(crate) fn call(&mut self, c: &Client, bytes: &[u8]) -> Response {
        let r = self.try_call(c, bytes);
        r.unwrap_or_else(|| panic!("no response"))
    }

    /// Like [`Harness::call`], but no response (a dropped request) is None.
    #[track_caller]
    pub(crate) fn try_call(&mut self, c: &Client, bytes: &[u8]) -> Option<Response> {
        let (fwd, mut tx) = self.client_message(c, bytes);
        assert!(fwd.is_none(), "a request returned a fast-path datagram");
        assert!(
            tx.len() <= 1,
            "expected at most one response, got {}",
            tx.len()
        );
        let t = tx.pop()?;
        assert_eq!(
            t.via,
            c.five_tuple().via(),
            "response leaves from the listener (or the client's connection)"
        );
        assert_eq!(t.to, c.addr, "response goes to the client");
        let r = Response(t.payload);
        let req = Message::parse(bytes).expect("request parses");
        assert_eq!(
            r.tid(),
            req.transaction_id(),
            "response carries the request's tid"
        );
        assert_eq!(
            r.method(),
            req.method(),
            "response carries the request's method"
        );
        Some(r)
    }

    /// Make sure `c` knows a nonce: an unauthenticated Allocate, answered 401.
    #[track_caller]
    pub(crate) fn learn_nonce(&mut self, c: &mut Client) {
        let tid = c.next_tid();
        let req = c.build(tid, Method::ALLOCATE, Class::Request, Sign::No, |w| {
            w.add_requested_transport(17).unwrap()
        });
        let r = self.call(c, &req);
        r.expect_error(401);
        c.nonce = Some(r.nonce().expect("401 carries a NONCE"));
    }

    /// Send a signed request built by `build` (learning a nonce first if
    /// needed, and once more if the server answers 438 Stale Nonce) and
    /// return the response.
    #[track_caller]
    pub(crate) fn signed(
        &mut self,
        c: &mut Client,
        mut build: impl FnMut(&mut Client) -> Vec<u8>,
    ) -> Response {
        if c.nonce.is_none() {
            self.learn_nonce(c);
        }
        let req = build(c);
        let r = self.call(c, &req);
        if r.code() != Some(438) {
            return r;
        }
        c.nonce = Some(r.nonce().expect("438 carries a NONCE"));
        let req = build(c);
        self.call(c, &req)
    }

    /// A full Allocate (401 dance included) with extra attributes from `add`;
    /// returns the response whatever it is.
    #[track_caller]
    pub(crate) fn allocate_with(
        &mut self,
        c: &mut Client,
        add: impl Fn(&mut MessageWriter<'_>),
    ) -> Response {
        self.signed(c, |c| {
            c.request(Method::ALLOCATE, |w| {
                w.add_requested_transport(17).unwrap();
                add(w);
            })
        })
    }

    /// A successful plain Allocate.
    #[track_caller]
    pub(crate) fn allocate(&mut self, c: &mut Client) -> Allocated {
        let r = self.allocate_with(c, |_| {}).ok();
        c.assert_signed(&r);
        Allocated {
            relayed: r.xor_addrs(attr::XOR_RELAYED_ADDRESS),
            response: r,
        }
    }

    /// A successful IPv6 Allocate (REQUESTED-ADDRESS-FAMILY IPv6).
    #[track_caller]
    pub(crate) fn allocate_v6(&mut self, c: &mut Client) -> Allocated {
        let r = self
            .allocate_with(c, |w| {
                w.add_address_family(attr::REQUESTED_ADDRESS_FAMILY, AddressFamily::V6)
                    .unwrap()
            })
            .ok();
        c.assert_signed(&r);
        Allocated {
            relayed: r.xor_addrs(attr::XOR_RELAYED_ADDRESS),
            response: r,
        }
    }

    #[track_caller]
    pub(crate) fn permit(&mut self, c: &mut Client, peers: &[SocketAddr]) -> Response {
        self.signed(c, |c| c.permission_req(peers))
    }

    #[track_caller]
    pub(crate) fn channel_bind(
        &mut self,
        c: &mut Client,
        channel: u16,
        peer: SocketAddr,
    ) -> Response {
        self.signed(c, |c| c.channel_bind_req(channel, peer))
    }

    #[track_caller]
    pub(crate) fn refresh(&mut self, c: &mut Client, lifetime: Option<u32>) -> Response {
        self.signed(c, |c| c.refresh_req(lifetime))
    }

    /// Refresh with REQUESTED-ADDRESS-FAMILY (RFC 8656 §7.3, dual allocations).
    #[track_caller]
    pub(crate) fn refresh_with_family(
        &mut self,
        c: &mut Client,
        lifetime: Option<u32>,
        family: AddressFamily,
    ) -> Response {
        self.signed(c, |c| {
            c.request(Method::REFRESH, |w| {
                if let Some(l) = lifetime {
                    w.add_u32(attr::LIFETIME, l).unwrap();
                }
                w.add_address_family(attr::REQUESTED_ADDRESS_FAMILY, family)
                    .unwrap();
            })
        })
    }

    /// A peer datagram arriving on relay socket `relay` (local address), laid
    /// out with the headroom and tailroom the core asks for.
    pub(crate) fn peer_packet(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        payload: &[u8],
    ) -> Option<Fwd> {
        let mut buf = vec![0xEEu8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        let fwd = self
            .server
            .handle_peer_packet(relay, peer, &mut buf, payload.len(), self.now)
            .map(Fwd::from);
        assert!(
            self.server.poll_transmit().is_none(),
            "peer data queues no control transmit"
        );
        fwd
    }
}

/// Parse a Data indication sent to a client: (XOR-PEER-ADDRESS, DATA).
#[track_caller]
pub(crate) fn parse_data_indication(bytes: &[u8]) -> (SocketAddr, Vec<u8>) {
    let m = Message::parse(bytes).expect("Data indication parses");
    assert_eq!(m.method(), Method::DATA);
    assert_eq!(m.class(), Class::Indication);
    let tid = m.transaction_id();
    let peer = tern_stun::decode_xor_address(
        m.get(attr::XOR_PEER_ADDRESS)
            .expect("XOR-PEER-ADDRESS")
            .value,
        &tid,
    )
    .expect("XOR-PEER-ADDRESS decodes");
    let data = m.get(attr::DATA).expect("DATA").value.to_vec();
    (peer, data)
}

pub(crate) fn is_v4(a: &SocketAddr) -> bool {
    matches!(a.ip(), IpAddr::V4(_))
}
