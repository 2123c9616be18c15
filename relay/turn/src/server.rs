//! The TURN server state machine of one shard.
//!
//! Owns: allocations, their relay-port index, the transaction cache, the 401
//! rate limiter, expiry timers. Must not touch: sockets, threads, clocks —
//! everything the OS does goes through [`Host`], time comes in as `now`.
//!
//! Driving contract: after any `handle_*` call, drain [`Server::poll_transmit`]
//! and [`Server::poll_event`] until they return `None`; then wait for the next
//! datagram or for [`Server::poll_timeout`], whichever comes first, and call
//! [`Server::handle_timeout`] when the deadline passes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tern_stun::{
    attr, AddressFamily, ChannelData, Class, IntegrityKind, Message, MessageWriter, Method,
    PasswordAlgorithm, TransactionId,
};

use crate::allocation::{Allocation, BindConflict, FiveTuple, PermitResult};
use crate::auth::{AuthFailure, Credentials, Key, NonceCheck, NonceKey, NONCE_LEN};
use crate::channel::ChannelNumber;
use crate::config::ServerConfig;
use crate::host::{BindError, Host, QuotaError};
use crate::limit::{SourceLimiter, TokenBucket};
use crate::policy::PeerPolicy;
use crate::stats::{DeleteReason, DropReason, Stats};

mod tcp;
use tcp::TcpConn;
pub use tcp::{ConnectionId, CONNECTION_BIND_TIMEOUT};

/// Room the caller leaves in front of a peer payload, so the core can write a
/// ChannelData header or a Data indication header in place.
pub const PEER_HEADROOM: usize = tern_stun::DATA_INDICATION_MAX_HEADER;
/// Room the caller leaves after a peer payload for a Data indication's padding.
pub const PEER_TAILROOM: usize = 4;

/// How long responses stay in the transaction cache (RFC 8489 Rc×Rm: 39.5 s).
const TX_CACHE_TTL: Duration = Duration::from_secs(40);
/// Most cached responses per shard; the oldest go first.
const TX_CACHE_CAP: usize = 16_384;
/// How long an EVEN-PORT reservation is kept (RFC 8656 §7.2 suggests 30 s).
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// Most bind syscalls one Allocate may spend looking for a free port.
const MAX_BIND_ATTEMPTS: usize = 64;
/// Most source IPs the 401 limiter tracks.
const LIMITER_CAP: usize = 65_536;
/// Largest response we build.
const RESPONSE_BUF: usize = 1_024;
/// A slot index meaning "no allocation" in the relay-port index.
const NO_SLOT: u32 = u32::MAX;

/// Where a datagram leaves from: one of our listening sockets or a relay socket,
/// named by its local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// A listening socket (towards clients).
    Listener(SocketAddr),
    /// A relay socket (towards peers).
    Relay(SocketAddr),
    /// The TCP or TLS connection accepted on this listening address from the
    /// destination (towards a stream client; the bytes are one whole frame,
    /// ChannelData already padded to 4 bytes).
    Stream(SocketAddr),
    /// The DTLS association on this (UDP) listening address with the
    /// destination (towards a DTLS client; the host encrypts the datagram).
    Dtls(SocketAddr),
}

/// A datagram to send now, borrowing the caller's buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Forward<'a> {
    /// The socket to send from.
    pub via: Via,
    /// The destination.
    pub to: SocketAddr,
    /// The bytes to send.
    pub payload: &'a [u8],
}

/// A control message (a STUN response) to send, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The socket to send from.
    pub via: Via,
    /// The destination.
    pub to: SocketAddr,
    /// The bytes to send.
    pub payload: Vec<u8>,
}

/// Something that happened, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// An allocation was made.
    AllocationCreated {
        /// The client side.
        five_tuple: FiveTuple,
        /// Who made it.
        username: Box<str>,
        /// Local relay addresses (IPv4, IPv6).
        relayed: [Option<SocketAddr>; 2],
        /// Granted lifetime.
        lifetime: Duration,
    },
    /// An allocation ended.
    AllocationDeleted {
        /// The client side.
        five_tuple: FiveTuple,
        /// Who made it.
        username: Box<str>,
        /// Why it ended.
        reason: DeleteReason,
        /// How long it lived.
        age: Duration,
        /// Datagrams relayed client → peer over its life.
        packets_to_peer: u64,
        /// Datagrams relayed peer → client over its life.
        packets_to_client: u64,
    },
}

/// The TURN server of one shard. See the module docs for the driving contract.
pub struct Server {
    config: ServerConfig,
    nonce_key: NonceKey,
    rng: Rng,
    mono_base: Instant,
    unix_base: Duration,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    by_client: HashMap<FiveTuple, u32, ahash::RandomState>,
    relay_v4: Vec<u32>,
    relay_v6: Vec<u32>,
    expiries: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    tx_cache: HashMap<(FiveTuple, TransactionId), Box<[u8]>, ahash::RandomState>,
    tx_order: VecDeque<(Instant, FiveTuple, TransactionId)>,
    reservations: VecDeque<(Instant, [u8; 8])>,
    limiter: SourceLimiter,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    draining: bool,
    /// RFC 6062 peer connections of TCP allocations, by CONNECTION-ID.
    tcp_conns: HashMap<u32, TcpConn, ahash::RandomState>,
    /// Deadlines of connections waiting for their Connect to finish or their
    /// ConnectionBind (stale entries are skipped).
    tcp_timers: VecDeque<(Instant, u32)>,
}

struct Slot {
    generation: u32,
    allocation: Option<Allocation>,
}

/// What a response needs of its request.
#[derive(Clone, Copy)]
struct RequestId {
    method: Method,
    tid: TransactionId,
    fingerprint: bool,
}

/// Who signed a request, and how.
#[derive(Clone)]
struct Authenticated {
    username: Box<str>,
    key: Key,
    integrity: IntegrityKind,
}

/// The response to a request, as data; built into bytes by `respond`.
enum Reply {
    Error(ErrorReply),
    Allocate {
        relayed_v4: Option<SocketAddr>,
        relayed_v6: Option<SocketAddr>,
        mapped: SocketAddr,
        lifetime: u32,
        token: Option<[u8; 8]>,
        v6_error: Option<u16>,
    },
    Refresh {
        lifetime: u32,
    },
    /// Connect success (RFC 6062 §5.2).
    Connection(u32),
    Empty,
}

struct ErrorReply {
    code: u16,
    reason: &'static str,
    extra: ErrorExtra,
}

enum ErrorExtra {
    None,
    /// 401 / 438: REALM, NONCE, PASSWORD-ALGORITHMS.
    Challenge([u8; NONCE_LEN]),
    /// 420: UNKNOWN-ATTRIBUTES.
    Unknown([u16; 8], usize),
    /// 300: ALTERNATE-SERVER.
    Alternate(SocketAddr),
}

fn err(code: u16, reason: &'static str) -> ErrorReply {
    ErrorReply {
        code,
        reason,
        extra: ErrorExtra::None,
    }
}

impl Server {
    /// A shard with no allocations. `unix_now` is the wall-clock time (since the
    /// UNIX epoch) at `now`, for REST credential and nonce expiry; `seed` keys the
    /// nonces, hash tables and port choice and must be random.
    pub fn new(config: ServerConfig, now: Instant, unix_now: Duration, seed: [u8; 32]) -> Self {
        let mut rng = Rng::new(seed);
        let mut nonce_seed = [0u8; 32];
        for chunk in nonce_seed.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes());
        }
        let hasher = |rng: &mut Rng| {
            ahash::RandomState::with_seeds(rng.next(), rng.next(), rng.next(), rng.next())
        };
        let by_client = HashMap::with_hasher(hasher(&mut rng));
        let tx_cache = HashMap::with_hasher(hasher(&mut rng));
        let tcp_conns = HashMap::with_hasher(hasher(&mut rng));
        let limiter = SourceLimiter::new(
            config.unauth_rate,
            LIMITER_CAP,
            [rng.next(), rng.next(), rng.next(), rng.next()],
        );
        let table = |on: bool| {
            if on {
                vec![NO_SLOT; 65_536]
            } else {
                Vec::new()
            }
        };
        Self {
            relay_v4: table(config.relay.v4.is_some()),
            relay_v6: table(config.relay.v6.is_some()),
            config,
            nonce_key: NonceKey::new(nonce_seed),
            rng,
            mono_base: now,
            unix_base: unix_now,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            by_client,
            expiries: BinaryHeap::new(),
            tx_cache,
            tx_order: VecDeque::new(),
            reservations: VecDeque::new(),
            limiter,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            draining: false,
            tcp_conns,
            tcp_timers: VecDeque::new(),
        }
    }

    /// A datagram from `client` arrived on our listening socket `listener`.
    ///
    /// STUN requests queue their responses (see [`Server::poll_transmit`]);
    /// ChannelData and Send indications return the datagram for the peer,
    /// borrowing `packet`. Anything else is dropped and counted.
    pub fn handle_client_packet<'a>(
        &mut self,
        host: &mut impl Host,
        listener: SocketAddr,
        client: SocketAddr,
        packet: &'a [u8],
        now: Instant,
    ) -> Option<Forward<'a>> {
        self.handle_client_message(host, FiveTuple::udp(client, listener), packet, now)
    }

    /// One message from a client on any transport: a UDP datagram, or one
    /// whole frame cut from a TCP or TLS stream (see `tern_stun::framing`;
    /// ChannelData may carry its padding). Otherwise the same as
    /// [`Server::handle_client_packet`]: responses queue, relayed data is
    /// returned borrowing `packet`.
    pub fn handle_client_message<'a>(
        &mut self,
        host: &mut impl Host,
        ft: FiveTuple,
        packet: &'a [u8],
        now: Instant,
    ) -> Option<Forward<'a>> {
        let Some(&first) = packet.first() else {
            self.stats.drop(DropReason::Empty);
            return None;
        };
        match first {
            0..=3 => self.handle_stun(host, ft, packet, now),
            0x40..=0x7F => self.handle_channel_data(ft, packet, now),
            _ => {
                self.stats.drop(DropReason::UnknownClass);
                None
            }
        }
    }

    /// A datagram from `peer` arrived on our relay socket `relay` (its local
    /// address). The payload is `buf[PEER_HEADROOM..PEER_HEADROOM + len]`, and
    /// `buf` must hold [`PEER_TAILROOM`] more bytes after it. The header for the
    /// client is written into the headroom; the returned datagram borrows `buf`.
    pub fn handle_peer_packet<'a>(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        buf: &'a mut [u8],
        len: usize,
        now: Instant,
    ) -> Option<Forward<'a>> {
        let table = if relay.is_ipv4() {
            &self.relay_v4
        } else {
            &self.relay_v6
        };
        let index = table
            .get(usize::from(relay.port()))
            .copied()
            .unwrap_or(NO_SLOT);
        let Some(alloc) = self
            .slots
            .get_mut(index as usize)
            .and_then(|s| s.allocation.as_mut())
        else {
            self.stats.drop(DropReason::UnknownRelay);
            return None;
        };
        if now >= alloc.expires {
            self.stats.drop(DropReason::NoAllocation);
            return None;
        }
        if !alloc.has_permission(peer.ip(), now) {
            self.stats.drop(DropReason::NoPermission);
            return None;
        }
        // Bound `len` before adding to it: a caller's bogus length must not overflow.
        if len > usize::from(u16::MAX) - PEER_HEADROOM
            || buf.len() < PEER_HEADROOM + len + PEER_TAILROOM
        {
            self.stats.drop(DropReason::NoRoom);
            return None;
        }
        let end = PEER_HEADROOM + len;
        let rate = self.config.bandwidth_per_allocation;
        if rate != 0
            && !alloc
                .to_client_bucket
                .take(len as u64, rate, burst(rate), now)
        {
            self.stats.drop(DropReason::Bandwidth);
            return None;
        }
        let ft = alloc.five_tuple;
        let payload = if let Some(channel) = alloc.channel_by_peer(&peer, now) {
            let start = PEER_HEADROOM - tern_stun::CHANNEL_DATA_HEADER_LEN;
            // `len` was bounded above, so it fits the 16-bit length field.
            tern_stun::write_channel_data_header(&mut buf[start..], channel.get(), len as u16)
                .ok()?;
            self.stats.channel_data_to_client += 1;
            if ft.transport.is_stream() {
                // RFC 8656 §12.5: padded to 4 bytes on a stream; the tailroom
                // checked above holds the (at most 3) zero bytes.
                let padded = start + tern_stun::framing::padded(end - start);
                buf[end..padded].fill(0);
                &buf[start..padded]
            } else {
                &buf[start..end]
            }
        } else {
            let start = PEER_HEADROOM - tern_stun::data_indication_header_len(peer);
            let tid = self.rng.transaction_id();
            let Ok(total) = tern_stun::write_data_indication(&mut buf[start..], tid, peer, len)
            else {
                self.stats.drop(DropReason::NoRoom);
                return None;
            };
            &buf[start..start + total]
        };
        alloc.packets_to_client += 1;
        self.stats.packets_to_client += 1;
        self.stats.bytes_to_client += len as u64;
        self.stats.by_transport[ft.transport.index()].packets_to_client += 1;
        Some(Forward {
            via: ft.via(),
            to: ft.client,
            payload,
        })
    }

    /// The client's TCP or TLS connection `ft` closed (or was closed by the
    /// host: timeout, slow reader, limit). Its allocation, if any, ends now
    /// with [`DeleteReason::ConnectionClosed`]; returns whether there was one.
    pub fn handle_client_closed(
        &mut self,
        host: &mut impl Host,
        ft: FiveTuple,
        now: Instant,
    ) -> bool {
        match self.by_client.get(&ft) {
            Some(&index) => {
                self.delete(host, index, DeleteReason::ConnectionClosed, now);
                true
            }
            None => false,
        }
    }

    /// Run the timers due at `now`: expire allocations, cached responses and
    /// EVEN-PORT reservations.
    pub fn handle_timeout(&mut self, host: &mut impl Host, now: Instant) {
        while let Some(&Reverse((at, index, generation))) = self.expiries.peek() {
            if at > now {
                break;
            }
            self.expiries.pop();
            let due = self.slots.get(index as usize).is_some_and(|s| {
                s.generation == generation
                    && s.allocation.as_ref().is_some_and(|a| a.expires <= now)
            });
            if due {
                self.delete(host, index, DeleteReason::Expired, now);
            }
        }
        while let Some(&(at, ft, tid)) = self.tx_order.front() {
            if at > now {
                break;
            }
            self.tx_order.pop_front();
            self.tx_cache.remove(&(ft, tid));
        }
        while let Some(&(at, token)) = self.reservations.front() {
            if at > now {
                break;
            }
            self.reservations.pop_front();
            host.cancel_reservation(token);
        }
        self.tcp_timeouts(host, now);
    }

    /// The next time [`Server::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.expiries.peek().map(|Reverse((at, _, _))| *at),
            self.tx_order.front().map(|(at, _, _)| *at),
            self.reservations.front().map(|(at, _)| *at),
            self.tcp_timers.front().map(|(at, _)| *at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next control message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event to log or count.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// While draining, new Allocates are refused (300 Try Alternate when an
    /// alternate server is configured, 403 otherwise); everything else goes on.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Whether the shard is draining.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Replace credentials and peer policy (SIGHUP). Live allocations, their
    /// permissions and channels are untouched.
    pub fn reload(&mut self, credentials: Credentials, policy: PeerPolicy) {
        self.config.credentials = credentials;
        self.config.peer_policy = policy;
    }

    /// This shard's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Live allocations.
    pub fn allocation_count(&self) -> usize {
        self.live
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Delete every allocation now, closing relay sockets and giving back quotas
    /// (shutdown).
    pub fn clear(&mut self, host: &mut impl Host, now: Instant) {
        for index in 0..self.slots.len() {
            if self.slots[index].allocation.is_some() {
                self.delete(host, index as u32, DeleteReason::Expired, now);
            }
        }
        while let Some((_, token)) = self.reservations.pop_front() {
            host.cancel_reservation(token);
        }
    }

    // ---- client → server ------------------------------------------------

    fn handle_channel_data<'a>(
        &mut self,
        ft: FiveTuple,
        packet: &'a [u8],
        now: Instant,
    ) -> Option<Forward<'a>> {
        let Ok(cd) = ChannelData::parse(packet) else {
            self.stats.drop(DropReason::MalformedChannelData);
            return None;
        };
        if ChannelNumber::new(cd.channel, self.config.strict_channel_range).is_none() {
            self.stats.drop(DropReason::ChannelOutOfRange);
            return None;
        }
        let Some(alloc) = self.allocation_of(&ft, now) else {
            self.stats.drop(DropReason::NoAllocation);
            return None;
        };
        let Some(binding) = alloc.channel_by_number(cd.channel, now) else {
            self.stats.drop(DropReason::UnboundChannel);
            return None;
        };
        let peer = binding.peer;
        self.forward_to_peer(ft, peer, cd.data, now)
    }

    fn handle_stun<'a>(
        &mut self,
        host: &mut impl Host,
        ft: FiveTuple,
        packet: &'a [u8],
        now: Instant,
    ) -> Option<Forward<'a>> {
        let Ok(msg) = Message::parse(packet) else {
            self.stats.drop(DropReason::MalformedStun);
            return None;
        };
        match msg.class() {
            Class::Request => {
                self.handle_request(host, ft, &msg, now);
                None
            }
            Class::Indication if msg.method() == Method::SEND => self.handle_send(ft, &msg, now),
            _ => {
                self.stats.drop(DropReason::UnexpectedStun);
                None
            }
        }
    }

    fn handle_send<'a>(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'a>,
        now: Instant,
    ) -> Option<Forward<'a>> {
        if self.allocation_of(&ft, now).is_none() {
            self.stats.drop(DropReason::NoAllocation);
            return None;
        }
        let tid = msg.transaction_id();
        let peer = msg
            .get(attr::XOR_PEER_ADDRESS)
            .and_then(|a| tern_stun::decode_xor_address(a.value, &tid).ok())
            .filter(|p| p.port() != 0);
        let (Some(peer), Some(data)) = (peer, msg.get(attr::DATA)) else {
            self.stats.drop(DropReason::MalformedSend);
            return None;
        };
        self.forward_to_peer(ft, peer, data.value, now)
    }

    fn forward_to_peer<'a>(
        &mut self,
        ft: FiveTuple,
        peer: SocketAddr,
        data: &'a [u8],
        now: Instant,
    ) -> Option<Forward<'a>> {
        let rate = self.config.bandwidth_per_allocation;
        let index = *self.by_client.get(&ft)?;
        let alloc = self.slots.get_mut(index as usize)?.allocation.as_mut()?;
        if alloc.tcp {
            // A TCP allocation relays on its peer connections only (RFC 6062).
            self.stats.drop(DropReason::TcpAllocation);
            return None;
        }
        let Some(relay) = alloc.relay_for(&peer) else {
            self.stats.drop(DropReason::FamilyMismatch);
            return None;
        };
        if !alloc.has_permission(peer.ip(), now) {
            self.stats.drop(DropReason::NoPermission);
            return None;
        }
        if rate != 0
            && !alloc
                .to_peer_bucket
                .take(data.len() as u64, rate, burst(rate), now)
        {
            self.stats.drop(DropReason::Bandwidth);
            return None;
        }
        alloc.packets_to_peer += 1;
        self.stats.packets_to_peer += 1;
        self.stats.bytes_to_peer += data.len() as u64;
        self.stats.by_transport[ft.transport.index()].packets_to_peer += 1;
        Some(Forward {
            via: Via::Relay(relay),
            to: peer,
            payload: data,
        })
    }

    fn allocation_of(&self, ft: &FiveTuple, now: Instant) -> Option<&Allocation> {
        let index = *self.by_client.get(ft)?;
        self.slots
            .get(index as usize)?
            .allocation
            .as_ref()
            .filter(|a| now < a.expires)
    }

    fn handle_request(
        &mut self,
        host: &mut impl Host,
        ft: FiveTuple,
        msg: &Message<'_>,
        now: Instant,
    ) {
        self.stats.requests += 1;
        let method = msg.method();
        // RFC 8489 §6.3.1: every request, Binding included.
        let mut unknown = [0u16; 8];
        let n = msg.unknown_required(is_understood, &mut unknown);
        if n > 0 {
            let reply = ErrorReply {
                code: 420,
                reason: "Unknown Attribute",
                extra: ErrorExtra::Unknown(unknown, n),
            };
            self.respond(ft, msg, Reply::Error(reply), None, false, now);
            return;
        }
        if method == Method::BINDING {
            self.stats.binding_requests += 1;
            let reply = Reply::Empty;
            self.respond(ft, msg, reply, None, false, now);
            return;
        }
        if let Some(cached) = self.tx_cache.get(&(ft, msg.transaction_id())) {
            self.stats.retransmits_answered += 1;
            let payload = cached.to_vec();
            self.transmits.push_back(Transmit {
                via: ft.via(),
                to: ft.client,
                payload,
            });
            return;
        }
        let tcp_method = method == Method::CONNECT || method == Method::CONNECTION_BIND;
        let known = [
            Method::ALLOCATE,
            Method::REFRESH,
            Method::CREATE_PERMISSION,
            Method::CHANNEL_BIND,
        ]
        .contains(&method);
        let offered = known || (self.config.tcp_relay && tcp_method);
        if !offered {
            let reply = if tcp_method {
                err(
                    400,
                    "Bad Request: TCP relaying is not offered on this transport",
                )
            } else {
                err(400, "Bad Request: unknown method")
            };
            self.respond(ft, msg, Reply::Error(reply), None, false, now);
            return;
        }
        // An allocation whose lifetime has run out is gone even if its timer
        // has not fired yet: a late Refresh must not revive it (RFC 8656 §7).
        if let Some(&index) = self.by_client.get(&ft) {
            let expired = self.slots[index as usize]
                .allocation
                .as_ref()
                .is_some_and(|a| a.expires <= now);
            if expired {
                self.delete(host, index, DeleteReason::Expired, now);
            }
        }
        let auth = match self.authenticate(ft, msg, now) {
            Ok(auth) => auth,
            Err(Some(reply)) => {
                self.respond(ft, msg, Reply::Error(reply), None, false, now);
                return;
            }
            Err(None) => return,
        };
        let reply = match method {
            Method::ALLOCATE => self.allocate(host, ft, msg, &auth, now),
            Method::REFRESH => self.refresh(host, ft, msg, now),
            Method::CREATE_PERMISSION => self.create_permission(ft, msg, now),
            Method::CONNECT => match self.connect(host, ft, msg, &auth, now) {
                // Answered when the host reports the connection's outcome.
                Ok(None) => return,
                Ok(Some(r)) => Ok(r),
                Err(e) => Err(e),
            },
            Method::CONNECTION_BIND => self.connection_bind(host, ft, msg, &auth),
            _ => self.channel_bind(ft, msg, now),
        };
        let reply = match reply {
            Ok(r) => r,
            Err(e) => Reply::Error(e),
        };
        self.respond(ft, msg, reply, Some(&auth), true, now);
    }

    // ---- authentication -------------------------------------------------

    /// Ok: who signed. Err(Some): the error to send. Err(None): drop (rate limited).
    fn authenticate(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        now: Instant,
    ) -> Result<Authenticated, Option<ErrorReply>> {
        let Some(integrity) = msg.integrity_kind() else {
            return Err(self.challenge(ft, 401, "Unauthorized", AuthFailure::Challenge, now));
        };
        let text = |t| {
            msg.get(t)
                .and_then(|a| tern_stun::decode_utf8(a.value, 763).ok())
        };
        let (Some(username), Some(realm), Some(nonce)) = (
            text(attr::USERNAME),
            text(attr::REALM),
            msg.get(attr::NONCE),
        ) else {
            self.stats.auth_failure(AuthFailure::Malformed);
            return Err(Some(err(
                400,
                "Bad Request: USERNAME, REALM and NONCE are required",
            )));
        };
        let unix_now = self.unix_now(now);
        match self.nonce_key.check(nonce.value, ft.client.ip(), unix_now) {
            NonceCheck::Valid => {}
            NonceCheck::Stale | NonceCheck::Invalid => {
                return Err(self.challenge(ft, 438, "Stale Nonce", AuthFailure::StaleNonce, now));
            }
        }
        if realm != self.config.realm {
            return Err(self.challenge(ft, 401, "Unauthorized", AuthFailure::WrongRealm, now));
        }
        let algorithm = match self.password_algorithm(msg) {
            Ok(a) => a,
            Err(reply) => {
                self.stats.auth_failure(AuthFailure::BadAlgorithm);
                return Err(Some(reply));
            }
        };
        let verify = |key: &Key| match integrity {
            IntegrityKind::Sha256 => msg.verify_integrity_sha256(key.as_bytes()).is_ok(),
            _ => msg.verify_integrity(key.as_bytes()).is_ok(),
        };
        // Requests on an existing allocation are checked against the key it was
        // made with, so credential reloads never touch live allocations.
        if let Some(alloc) = self
            .by_client
            .get(&ft)
            .and_then(|&i| self.slots[i as usize].allocation.as_ref())
        {
            if *alloc.username != *username {
                self.stats.auth_failure(AuthFailure::WrongCredentials);
                return Err(Some(err(441, "Wrong Credentials")));
            }
            let same_algorithm = matches!(
                (alloc.key, algorithm),
                (Key::Md5(_), PasswordAlgorithm::Md5) | (Key::Sha256(_), PasswordAlgorithm::Sha256)
            );
            if same_algorithm && verify(&alloc.key) {
                return Ok(Authenticated {
                    username: alloc.username.clone(),
                    key: alloc.key,
                    integrity,
                });
            }
            return Err(self.challenge(ft, 401, "Unauthorized", AuthFailure::BadIntegrity, now));
        }
        match self.config.credentials.find_key(
            username,
            &self.config.realm,
            algorithm,
            unix_now,
            verify,
        ) {
            Ok(key) => Ok(Authenticated {
                username: username.into(),
                key,
                integrity,
            }),
            Err(failure) => Err(self.challenge(ft, 401, "Unauthorized", failure, now)),
        }
    }

    /// RFC 8489 §9.2.4: PASSWORD-ALGORITHMS must repeat what we offered and
    /// PASSWORD-ALGORITHM must be one of them; neither means MD5.
    fn password_algorithm(&self, msg: &Message<'_>) -> Result<PasswordAlgorithm, ErrorReply> {
        let list = msg.get(attr::PASSWORD_ALGORITHMS);
        let chosen = msg.get(attr::PASSWORD_ALGORITHM);
        match (list, chosen) {
            (None, None) => Ok(PasswordAlgorithm::Md5),
            (Some(list), Some(chosen)) => {
                let offered =
                    tern_stun::password_algorithms_contains(list.value, PasswordAlgorithm::Sha256)
                        && tern_stun::password_algorithms_contains(
                            list.value,
                            PasswordAlgorithm::Md5,
                        );
                match tern_stun::decode_password_algorithm(chosen.value) {
                    Ok(a @ (PasswordAlgorithm::Md5 | PasswordAlgorithm::Sha256)) if offered => {
                        Ok(a)
                    }
                    _ => Err(err(400, "Bad Request: PASSWORD-ALGORITHM not offered")),
                }
            }
            _ => Err(err(
                400,
                "Bad Request: PASSWORD-ALGORITHMS and PASSWORD-ALGORITHM go together",
            )),
        }
    }

    fn challenge(
        &mut self,
        ft: FiveTuple,
        code: u16,
        reason: &'static str,
        failure: AuthFailure,
        now: Instant,
    ) -> Option<ErrorReply> {
        self.stats.auth_failure(failure);
        if !self.limiter.allow(ft.client.ip(), now) {
            self.stats.drop(DropReason::RateLimited);
            return None;
        }
        let expires = self.unix_now(now) + self.config.nonce_lifetime.as_secs();
        let nonce = self.nonce_key.mint(ft.client.ip(), expires);
        Some(ErrorReply {
            code,
            reason,
            extra: ErrorExtra::Challenge(nonce),
        })
    }

    fn unix_now(&self, now: Instant) -> u64 {
        (self.unix_base + now.saturating_duration_since(self.mono_base)).as_secs()
    }

    // ---- methods --------------------------------------------------------

    fn allocate(
        &mut self,
        host: &mut impl Host,
        ft: FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        now: Instant,
    ) -> Result<Reply, ErrorReply> {
        if self.by_client.contains_key(&ft) {
            return Err(err(437, "Allocation Mismatch"));
        }
        if self.draining {
            return Err(match self.config.alternate_server {
                Some(alt) => ErrorReply {
                    code: 300,
                    reason: "Try Alternate",
                    extra: ErrorExtra::Alternate(alt),
                },
                None => err(403, "Forbidden: this relay is draining, use another"),
            });
        }
        let bad = || err(400, "Bad Request");
        let transport = msg
            .get(attr::REQUESTED_TRANSPORT)
            .ok_or_else(|| err(400, "Bad Request: REQUESTED-TRANSPORT is required"))?;
        let tcp = match tern_stun::decode_requested_transport(transport.value).map_err(|_| bad())? {
            tern_stun::PROTOCOL_UDP => false,
            tern_stun::PROTOCOL_TCP if self.config.tcp_relay => {
                self.check_tcp_allocate(ft, msg)?;
                true
            }
            _ => return Err(err(442, "Unsupported Transport Protocol")),
        };
        let even_port = msg
            .get(attr::EVEN_PORT)
            .map(|a| tern_stun::decode_even_port(a.value))
            .transpose()
            .map_err(|_| bad())?;
        let token = msg
            .get(attr::RESERVATION_TOKEN)
            .map(|a| tern_stun::decode_reservation_token(a.value))
            .transpose()
            .map_err(|_| bad())?;
        let family = match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            Some(a) => Some(
                tern_stun::decode_address_family(a.value)
                    .map_err(|_| err(440, "Address Family not Supported"))?,
            ),
            None => None,
        };
        let additional = match msg.get(attr::ADDITIONAL_ADDRESS_FAMILY) {
            Some(a) => Some(tern_stun::decode_address_family(a.value).map_err(|_| bad())?),
            None => None,
        };
        if token.is_some() && (even_port.is_some() || family.is_some()) {
            return Err(err(
                400,
                "Bad Request: RESERVATION-TOKEN excludes EVEN-PORT and REQUESTED-ADDRESS-FAMILY",
            ));
        }
        if additional.is_some() && family.is_some() {
            return Err(err(
                400,
                "Bad Request: ADDITIONAL-ADDRESS-FAMILY excludes REQUESTED-ADDRESS-FAMILY",
            ));
        }
        if matches!(additional, Some(AddressFamily::V4)) {
            return Err(err(
                400,
                "Bad Request: ADDITIONAL-ADDRESS-FAMILY must be IPv6",
            ));
        }
        let family = family.unwrap_or(AddressFamily::V4);
        if token.is_none() && !self.has_family(family) {
            return Err(err(440, "Address Family not Supported"));
        }
        let lifetime = self
            .lifetime(msg)
            .map_err(|_| bad())?
            .unwrap_or(self.config.default_lifetime);
        let lifetime = lifetime.clamp(self.config.default_lifetime, self.config.max_lifetime);

        if self.config.max_allocations != 0 && self.live >= self.config.max_allocations {
            self.stats.quota_rejections += 1;
            return Err(err(508, "Insufficient Capacity"));
        }
        if let Err(q) = host.acquire_allocation(quota_user(&auth.username)) {
            self.stats.quota_rejections += 1;
            return Err(match q {
                QuotaError::PerUser => err(486, "Allocation Quota Reached"),
                _ => err(508, "Insufficient Capacity"),
            });
        }
        let primary = match token {
            Some(token) => host
                .claim_reserved(token)
                .map(|addr| (addr, None))
                .ok_or_else(|| err(508, "Insufficient Capacity: unknown reservation")),
            None if tcp => self.bind_tcp_port(host, family),
            None => self.bind_port(host, family, even_port, now),
        };
        let (primary, reserved) = match primary {
            Ok((addr, reserved)) => (addr, reserved),
            Err(e) => {
                host.release_allocation(quota_user(&auth.username));
                self.stats.quota_rejections += 1;
                return Err(e);
            }
        };
        let mut v6_error = None;
        let mut secondary = None;
        if additional.is_some() {
            if self.has_family(AddressFamily::V6) {
                match self.bind_port(host, AddressFamily::V6, None, now) {
                    Ok((addr, _)) => secondary = Some(addr),
                    Err(_) => v6_error = Some(508),
                }
            } else {
                v6_error = Some(440);
            }
        }
        let (relay_v4, relay_v6) = if primary.is_ipv4() {
            (Some(primary), secondary)
        } else {
            (None, Some(primary))
        };
        let index = self.insert(Allocation {
            five_tuple: ft,
            username: auth.username.clone(),
            key: auth.key,
            expires: now + lifetime,
            relay_v4,
            relay_v6,
            permissions: Vec::new(),
            channels: Vec::new(),
            to_peer_bucket: TokenBucket::full(burst(self.config.bandwidth_per_allocation), now),
            to_client_bucket: TokenBucket::full(burst(self.config.bandwidth_per_allocation), now),
            packets_to_peer: 0,
            packets_to_client: 0,
            created: now,
            tcp,
        });
        let _ = index;
        self.stats.allocations_created += 1;
        self.stats.by_transport[ft.transport.index()].allocations_created += 1;
        self.events.push_back(Event::AllocationCreated {
            five_tuple: ft,
            username: auth.username.clone(),
            relayed: [relay_v4, relay_v6],
            lifetime,
        });
        Ok(Reply::Allocate {
            relayed_v4: relay_v4.map(|a| self.advertised(a)),
            relayed_v6: relay_v6.map(|a| self.advertised(a)),
            mapped: ft.client,
            lifetime: secs(lifetime),
            token: reserved,
            v6_error,
        })
    }

    fn refresh(
        &mut self,
        host: &mut impl Host,
        ft: FiveTuple,
        msg: &Message<'_>,
        now: Instant,
    ) -> Result<Reply, ErrorReply> {
        let Some(&index) = self.by_client.get(&ft) else {
            return Err(err(437, "Allocation Mismatch"));
        };
        let requested = self.lifetime(msg).map_err(|_| err(400, "Bad Request"))?;
        let family = match msg.get(attr::REQUESTED_ADDRESS_FAMILY) {
            Some(a) => Some(
                tern_stun::decode_address_family(a.value)
                    .map_err(|_| err(440, "Address Family not Supported"))?,
            ),
            None => None,
        };
        let (default, max) = (self.config.default_lifetime, self.config.max_lifetime);
        let alloc = self.slots[index as usize]
            .allocation
            .as_mut()
            .ok_or_else(|| err(437, "Allocation Mismatch"))?;
        if let Some(family) = family {
            let has = match family {
                AddressFamily::V4 => alloc.relay_v4.is_some(),
                _ => alloc.relay_v6.is_some(),
            };
            if !has {
                return Err(err(443, "Peer Address Family Mismatch"));
            }
        }
        if requested == Some(Duration::ZERO) {
            let both = alloc.relay_v4.is_some() && alloc.relay_v6.is_some();
            match family {
                Some(f) if both => {
                    // Dual allocation: drop only the named family (RFC 8656 §7.3).
                    let addr = if f == AddressFamily::V4 {
                        alloc.relay_v4.take()
                    } else {
                        alloc.relay_v6.take()
                    };
                    if let Some(addr) = addr {
                        self.unindex_relay(addr);
                        host.close_relay(addr);
                    }
                }
                _ => self.delete(host, index, DeleteReason::Refresh, now),
            }
            return Ok(Reply::Refresh { lifetime: 0 });
        }
        let lifetime = requested.unwrap_or(default).clamp(default, max);
        alloc.expires = now + lifetime;
        let generation = self.slots[index as usize].generation;
        self.expiries
            .push(Reverse((now + lifetime, index, generation)));
        Ok(Reply::Refresh {
            lifetime: secs(lifetime),
        })
    }

    fn create_permission(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        now: Instant,
    ) -> Result<Reply, ErrorReply> {
        let Some(&index) = self.by_client.get(&ft) else {
            return Err(err(437, "Allocation Mismatch"));
        };
        let tid = msg.transaction_id();
        let cap = self.config.max_permissions_per_allocation;
        let alloc = self.slots[index as usize]
            .allocation
            .as_ref()
            .ok_or_else(|| err(437, "Allocation Mismatch"))?;
        let peers = || msg.attributes().filter(|a| a.typ == attr::XOR_PEER_ADDRESS);
        let mut count = 0;
        // All or nothing (RFC 8656 §9.2): the live permissions plus the distinct
        // new ones must fit under the cap before any is installed.
        let live = alloc.permissions.iter().filter(|p| now < p.expires).count();
        let mut new_ips: Vec<IpAddr> = Vec::new();
        for a in peers() {
            let peer = tern_stun::decode_xor_address(a.value, &tid)
                .map_err(|_| err(400, "Bad Request: XOR-PEER-ADDRESS"))?;
            if !alloc.has_family_of(&peer.ip()) {
                return Err(err(443, "Peer Address Family Mismatch"));
            }
            if self.config.peer_policy.check_ip(peer.ip()).is_err() {
                self.stats.peer_denied += 1;
                return Err(err(403, "Forbidden: peer address not allowed"));
            }
            if !alloc.has_permission(peer.ip(), now) && !new_ips.contains(&peer.ip()) {
                new_ips.push(peer.ip());
                if live + new_ips.len() > cap {
                    return Err(err(508, "Insufficient Capacity: too many permissions"));
                }
            }
            count += 1;
        }
        if count == 0 {
            return Err(err(400, "Bad Request: XOR-PEER-ADDRESS is required"));
        }
        let alloc = self.slots[index as usize]
            .allocation
            .as_mut()
            .ok_or_else(|| err(437, "Allocation Mismatch"))?;
        for a in peers() {
            if let Ok(peer) = tern_stun::decode_xor_address(a.value, &tid) {
                match alloc.permit(peer.ip(), now, cap) {
                    PermitResult::Created => self.stats.permissions_created += 1,
                    PermitResult::Refreshed => {}
                    PermitResult::Full => {
                        return Err(err(508, "Insufficient Capacity: too many permissions"))
                    }
                }
            }
        }
        Ok(Reply::Empty)
    }

    fn channel_bind(
        &mut self,
        ft: FiveTuple,
        msg: &Message<'_>,
        now: Instant,
    ) -> Result<Reply, ErrorReply> {
        let Some(&index) = self.by_client.get(&ft) else {
            return Err(err(437, "Allocation Mismatch"));
        };
        let tid = msg.transaction_id();
        let number = msg
            .get(attr::CHANNEL_NUMBER)
            .and_then(|a| tern_stun::decode_channel_number(a.value).ok())
            .and_then(|n| ChannelNumber::new(n, self.config.strict_channel_range))
            .ok_or_else(|| err(400, "Bad Request: CHANNEL-NUMBER missing or out of range"))?;
        let peer = msg
            .get(attr::XOR_PEER_ADDRESS)
            .and_then(|a| tern_stun::decode_xor_address(a.value, &tid).ok())
            .ok_or_else(|| err(400, "Bad Request: XOR-PEER-ADDRESS is required"))?;
        let (pcap, ccap) = (
            self.config.max_permissions_per_allocation,
            self.config.max_channels_per_allocation,
        );
        let alloc = self.slots[index as usize]
            .allocation
            .as_mut()
            .ok_or_else(|| err(437, "Allocation Mismatch"))?;
        if alloc.tcp {
            return Err(err(400, "Bad Request: no channels on a TCP allocation"));
        }
        if !alloc.has_family_of(&peer.ip()) {
            return Err(err(443, "Peer Address Family Mismatch"));
        }
        if self.config.peer_policy.check(peer).is_err() {
            self.stats.peer_denied += 1;
            return Err(err(403, "Forbidden: peer address not allowed"));
        }
        match alloc.check_bind(number, peer, now, ccap) {
            Ok(()) => {}
            Err(BindConflict::Conflict) => {
                return Err(err(400, "Bad Request: channel or peer already bound"))
            }
            Err(BindConflict::Full) => {
                return Err(err(508, "Insufficient Capacity: too many channels"))
            }
        }
        if !alloc.can_permit(peer.ip(), now, pcap) {
            return Err(err(508, "Insufficient Capacity: too many permissions"));
        }
        if alloc.bind(number, peer, now) {
            self.stats.channels_bound += 1;
        }
        if alloc.permit(peer.ip(), now, pcap) == PermitResult::Created {
            self.stats.permissions_created += 1;
        }
        Ok(Reply::Empty)
    }

    fn lifetime(&self, msg: &Message<'_>) -> Result<Option<Duration>, tern_stun::ParseError> {
        msg.get(attr::LIFETIME)
            .map(|a| tern_stun::decode_u32(a.value).map(|s| Duration::from_secs(u64::from(s))))
            .transpose()
    }

    // ---- allocation table -----------------------------------------------

    fn has_family(&self, family: AddressFamily) -> bool {
        match family {
            AddressFamily::V4 => self.config.relay.v4.is_some(),
            _ => self.config.relay.v6.is_some(),
        }
    }

    /// The address a relay socket's local address is known by outside (1:1 NAT).
    fn advertised(&self, local: SocketAddr) -> SocketAddr {
        match (local, self.config.relay.v4, self.config.relay.v6) {
            (SocketAddr::V4(_), Some(v4), _) => {
                SocketAddr::new(IpAddr::V4(v4.advertised), local.port())
            }
            (SocketAddr::V6(_), _, Some(v6)) => {
                SocketAddr::new(IpAddr::V6(v6.advertised), local.port())
            }
            _ => local,
        }
    }

    /// Find and bind a free relay port of `family` in this shard's slice. With
    /// EVEN-PORT the port is even, and with its R bit the next port is bound too
    /// and handed to the host as a reservation.
    fn bind_port(
        &mut self,
        host: &mut impl Host,
        family: AddressFamily,
        even_port: Option<bool>,
        now: Instant,
    ) -> Result<(SocketAddr, Option<[u8; 8]>), ErrorReply> {
        let ip = match (family, self.config.relay.v4, self.config.relay.v6) {
            (AddressFamily::V4, Some(v4), _) => IpAddr::V4(v4.bind),
            (AddressFamily::V6, _, Some(v6)) => IpAddr::V6(v6.bind),
            _ => return Err(err(440, "Address Family not Supported")),
        };
        let range = self.config.relay_ports;
        let n = range.len();
        let start = (self.rng.next() % n as u64) as usize;
        let mut attempts = 0;
        let capacity = || err(508, "Insufficient Capacity: no relay port free");
        for i in 0..n {
            if attempts >= MAX_BIND_ATTEMPTS {
                break;
            }
            // In range by construction: lo + (i mod len) <= hi.
            let port = range.lo() + ((start + i) % n) as u16;
            let reserve = even_port == Some(true);
            if even_port.is_some() && (port % 2 != 0 || (reserve && port == range.hi())) {
                continue;
            }
            if self.relay_slot(ip, port) != NO_SLOT {
                continue;
            }
            let addr = SocketAddr::new(ip, port);
            attempts += 1;
            match host.bind_relay(addr) {
                Ok(()) => {}
                Err(BindError::InUse) => continue,
                Err(_) => return Err(capacity()),
            }
            if !reserve {
                return Ok((addr, None));
            }
            let next = SocketAddr::new(ip, port + 1);
            attempts += 1;
            if self.relay_slot(ip, port + 1) == NO_SLOT && host.bind_relay(next).is_ok() {
                let token = self.rng.next().to_be_bytes();
                host.reserve_relay(token, next);
                self.reservations
                    .push_back((now + RESERVATION_LIFETIME, token));
                return Ok((addr, Some(token)));
            }
            host.close_relay(addr);
        }
        Err(capacity())
    }

    fn relay_slot(&self, ip: IpAddr, port: u16) -> u32 {
        let table = if ip.is_ipv4() {
            &self.relay_v4
        } else {
            &self.relay_v6
        };
        table.get(usize::from(port)).copied().unwrap_or(NO_SLOT)
    }

    fn index_relay(&mut self, addr: SocketAddr, index: u32) {
        let table = if addr.is_ipv4() {
            &mut self.relay_v4
        } else {
            &mut self.relay_v6
        };
        if table.is_empty() {
            // A reservation claimed from a family this shard was not configured for
            // cannot happen (all shards share the family set), but stay total.
            *table = vec![NO_SLOT; 65_536];
        }
        table[usize::from(addr.port())] = index;
    }

    fn unindex_relay(&mut self, addr: SocketAddr) {
        let table = if addr.is_ipv4() {
            &mut self.relay_v4
        } else {
            &mut self.relay_v6
        };
        if let Some(slot) = table.get_mut(usize::from(addr.port())) {
            *slot = NO_SLOT;
        }
    }

    fn insert(&mut self, alloc: Allocation) -> u32 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    allocation: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let ft = alloc.five_tuple;
        let expires = alloc.expires;
        let relays = [alloc.relay_v4, alloc.relay_v6];
        let slot = &mut self.slots[index as usize];
        slot.allocation = Some(alloc);
        let generation = slot.generation;
        for addr in relays.into_iter().flatten() {
            self.index_relay(addr, index);
        }
        self.by_client.insert(ft, index);
        self.expiries.push(Reverse((expires, index, generation)));
        self.live += 1;
        index
    }

    fn delete(&mut self, host: &mut impl Host, index: u32, reason: DeleteReason, now: Instant) {
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return;
        };
        let Some(alloc) = slot.allocation.take() else {
            return;
        };
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        self.live -= 1;
        self.by_client.remove(&alloc.five_tuple);
        for addr in [alloc.relay_v4, alloc.relay_v6].into_iter().flatten() {
            self.unindex_relay(addr);
            if alloc.tcp {
                host.close_relay_tcp(addr);
            } else {
                host.close_relay(addr);
            }
        }
        if alloc.tcp {
            self.close_tcp_connections_of(host, index);
        }
        host.release_allocation(quota_user(&alloc.username));
        match reason {
            DeleteReason::Expired => self.stats.allocations_expired += 1,
            _ => self.stats.allocations_deleted += 1,
        }
        self.stats.by_transport[alloc.five_tuple.transport.index()].allocations_ended += 1;
        self.events.push_back(Event::AllocationDeleted {
            five_tuple: alloc.five_tuple,
            username: alloc.username,
            reason,
            age: now.saturating_duration_since(alloc.created),
            packets_to_peer: alloc.packets_to_peer,
            packets_to_client: alloc.packets_to_client,
        });
    }

    // ---- responses ------------------------------------------------------

    fn respond(
        &mut self,
        ft: FiveTuple,
        req: &Message<'_>,
        reply: Reply,
        auth: Option<&Authenticated>,
        cache: bool,
        now: Instant,
    ) {
        let request = RequestId {
            method: req.method(),
            tid: req.transaction_id(),
            fingerprint: req.has_fingerprint(),
        };
        self.respond_to(ft, request, reply, auth, cache, now);
    }

    /// [`Server::respond`] for a request that is no longer at hand (a
    /// Connect answered when its connection is made).
    fn respond_to(
        &mut self,
        ft: FiveTuple,
        req: RequestId,
        reply: Reply,
        auth: Option<&Authenticated>,
        cache: bool,
        now: Instant,
    ) {
        let mut buf = [0u8; RESPONSE_BUF];
        let class = if matches!(reply, Reply::Error(_)) {
            Class::Error
        } else {
            Class::Success
        };
        let tid = req.tid;
        let Ok(len) = self.encode(
            &mut buf,
            req.method,
            class,
            tid,
            ft,
            &reply,
            auth,
            req.fingerprint,
        ) else {
            // RESPONSE_BUF fits every response we build; nothing to send if not.
            return;
        };
        if let Reply::Error(e) = &reply {
            self.stats.error_response(e.code);
        }
        let payload = buf[..len].to_vec();
        if cache {
            if self.tx_order.len() >= TX_CACHE_CAP {
                if let Some((_, oft, otid)) = self.tx_order.pop_front() {
                    self.tx_cache.remove(&(oft, otid));
                }
            }
            self.tx_cache
                .insert((ft, tid), payload.clone().into_boxed_slice());
            self.tx_order.push_back((now + TX_CACHE_TTL, ft, tid));
        }
        self.transmits.push_back(Transmit {
            via: ft.via(),
            to: ft.client,
            payload,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn encode(
        &self,
        buf: &mut [u8],
        method: Method,
        class: Class,
        tid: TransactionId,
        ft: FiveTuple,
        reply: &Reply,
        auth: Option<&Authenticated>,
        fingerprint: bool,
    ) -> Result<usize, tern_stun::BufferTooSmall> {
        let mut w = MessageWriter::new(buf, method, class, tid)?;
        match reply {
            Reply::Error(e) => {
                w.add_error_code(e.code, e.reason)?;
                match &e.extra {
                    ErrorExtra::None => {}
                    ErrorExtra::Challenge(nonce) => {
                        w.add_raw(attr::REALM, self.config.realm.as_bytes())?;
                        w.add_raw(attr::NONCE, nonce)?;
                        w.add_password_algorithms(&[
                            PasswordAlgorithm::Md5,
                            PasswordAlgorithm::Sha256,
                        ])?;
                    }
                    ErrorExtra::Unknown(types, n) => w.add_unknown_attributes(&types[..*n])?,
                    ErrorExtra::Alternate(alt) => w.add_address(attr::ALTERNATE_SERVER, *alt)?,
                }
            }
            Reply::Allocate {
                relayed_v4,
                relayed_v6,
                mapped,
                lifetime,
                token,
                v6_error,
            } => {
                for relayed in [relayed_v4, relayed_v6].into_iter().flatten() {
                    w.add_xor_address(attr::XOR_RELAYED_ADDRESS, *relayed)?;
                }
                w.add_u32(attr::LIFETIME, *lifetime)?;
                if let Some(token) = token {
                    w.add_raw(attr::RESERVATION_TOKEN, token)?;
                }
                if let Some(code) = v6_error {
                    // ADDRESS-ERROR-CODE (RFC 8656 §18.13): family, 13 reserved bits,
                    // class, number, reason.
                    let reason: &[u8] = if *code == 440 {
                        b"Address Family not Supported"
                    } else {
                        b"Insufficient Capacity"
                    };
                    let mut v = [0u8; 4 + 32];
                    v[0] = 0x02;
                    v[2] = (code / 100) as u8;
                    v[3] = (code % 100) as u8;
                    v[4..4 + reason.len()].copy_from_slice(reason);
                    w.add_raw(attr::ADDRESS_ERROR_CODE, &v[..4 + reason.len()])?;
                }
                w.add_xor_address(attr::XOR_MAPPED_ADDRESS, *mapped)?;
            }
            Reply::Refresh { lifetime } => w.add_u32(attr::LIFETIME, *lifetime)?,
            Reply::Connection(id) => w.add_u32(attr::CONNECTION_ID, *id)?,
            Reply::Empty => {
                if method == Method::BINDING {
                    w.add_xor_address(attr::XOR_MAPPED_ADDRESS, ft.client)?;
                }
            }
        }
        if let Some(software) = &self.config.software {
            // RFC 8489 §14.14: fewer than 128 characters; cut on a character boundary.
            let end = software
                .char_indices()
                .nth(127)
                .map_or(software.len(), |(i, _)| i);
            w.add_text(attr::SOFTWARE, &software[..end])?;
        }
        if let Some(auth) = auth {
            match auth.integrity {
                IntegrityKind::Sha256 => w.add_message_integrity_sha256(auth.key.as_bytes())?,
                _ => w.add_message_integrity(auth.key.as_bytes())?,
            }
        }
        if fingerprint {
            w.add_fingerprint()?;
        }
        Ok(w.finish())
    }
}

/// Bucket depth for a bandwidth cap of `rate` bytes/s: one second's worth, but
/// never less than the largest UDP datagram, so a cap below 64 KiB/s still lets
/// every datagram through eventually.
fn burst(rate: u64) -> u64 {
    rate.max(65_535)
}

/// Whom a quota counts against: the user part of a REST `expiry:user` name (so
/// every fresh credential of one user shares one quota), else the whole name.
fn quota_user(username: &str) -> &str {
    match crate::auth::rest_expiry(username) {
        Some(_) => username.split_once(':').map_or(username, |(_, user)| user),
        None => username,
    }
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// Comprehension-required attributes this server understands (or knowingly
/// ignores) in requests; anything else below 0x8000 earns a 420.
fn is_understood(t: u16) -> bool {
    matches!(
        t,
        attr::USERNAME
            | attr::MESSAGE_INTEGRITY
            | attr::MESSAGE_INTEGRITY_SHA256
            | attr::REALM
            | attr::NONCE
            | attr::PASSWORD_ALGORITHM
            | attr::CHANNEL_NUMBER
            | attr::LIFETIME
            | attr::XOR_PEER_ADDRESS
            | attr::DATA
            | attr::REQUESTED_ADDRESS_FAMILY
            | attr::EVEN_PORT
            | attr::REQUESTED_TRANSPORT
            | attr::DONT_FRAGMENT
            | attr::RESERVATION_TOKEN
            | attr::PRIORITY
            | attr::USE_CANDIDATE
            | attr::CONNECTION_ID
    )
}

/// xoshiro256** — fast, seeded from the caller's randomness; used for port choice,
/// Data indication transaction ids and reservation tokens.
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: [u8; 32]) -> Self {
        let mut s = [0u64; 4];
        for (i, chunk) in seed.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            s[i] = u64::from_le_bytes(b);
        }
        if s == [0; 4] {
            s[0] = 0x9E37_79B9_7F4A_7C15;
        }
        Self(s)
    }

    fn next(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    fn transaction_id(&mut self) -> TransactionId {
        let mut id = [0u8; 12];
        id[..8].copy_from_slice(&self.next().to_le_bytes());
        id[8..].copy_from_slice(&self.next().to_le_bytes()[..4]);
        TransactionId(id)
    }
}
