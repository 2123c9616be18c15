//! TURN over TCP and TLS (RFC 8656 §3.1, RFC 7443): one worker's stream
//! listeners and connections.
//!
//! Owns: this worker's `SO_REUSEPORT` TCP listeners (one per `listen-tcp` and
//! `listen-tls` address, beside the other workers' on the same address, so the
//! kernel spreads connections by flow hash), the connections they accept, each
//! connection's fixed read and write buffers and optional rustls session, the
//! framing of STUN/ChannelData messages on the byte stream
//! ([`tern_stun::framing`]), the connection limits, idle and handshake
//! timeouts, and counters. Must not touch: protocol logic (every whole message
//! goes to `tern_turn::Server::handle_client_message` through the worker's
//! callback, every message for a client comes back through [`Streams::send`])
//! or the UDP path.
//!
//! ## How it sits in the worker's loop
//!
//! How connections are driven depends on the worker's packet back end, and
//! is fixed when the worker starts ([`tern_io::PacketIo::stream_ring`]):
//!
//! * **io_uring: completions on the worker's own ring.** Each listener has a
//!   multishot `ACCEPT`; each connection has one single-shot `RECV` in flight
//!   into the free end of its own read buffer (TLS: into a record buffer
//!   whose bytes rustls takes with `read_tls` from the slice), re-armed once
//!   what arrived has been handled, and at most one `SEND` of its queued
//!   bytes (TLS: records `write_tls` put in the write buffer); a short send
//!   is followed by the rest when it completes. All are submitted by
//!   [`Streams::flush`] and reach the kernel with the loop's one
//!   `io_uring_enter` (the wait); [`Streams::service`] takes the completions
//!   without a syscall. So a stream message costs no syscall of its own.
//!   The kernel owns the bytes an operation names until its completion is
//!   taken: a connection closed with operations in flight has them
//!   cancelled and is kept (buffers and socket) in `retired` until their
//!   completions arrive; at shutdown [`Streams::close_all`] waits for them
//!   (and leaks rather than frees if the ring never answers). Only outgoing
//!   RFC 6062 connects still use the nested epoll below, until connected.
//! * **mmsg (readiness).** The streams have an epoll instance of their own
//!   (a `mio::Poll`), and that one descriptor is *nested* into the worker's
//!   back end with [`tern_io::PacketIo::watch`] (a registration in mmsg's
//!   own epoll). Only when the back end reports the nested epoll readable
//!   (or this module has work left from its budget, or a timer is due) does
//!   the worker call [`Streams::service`], which takes the ready events with
//!   one non-blocking `epoll_wait` and reads each ready connection. Writes
//!   to clients are queued into the connection's buffer by [`Streams::send`]
//!   and written once per loop turn by [`Streams::flush`] (one `write` per
//!   connection with data, not per message).
//!
//! Either way the worker still blocks in exactly one place, and a UDP-only
//! relay pays nothing (no listener, nothing watched or submitted).
//!
//! Readiness is edge-triggered; a connection or listener that still has data
//! after its budget (a few reads, a few dozen accepts) goes back on a ready
//! list, and [`Streams::poll_timeout`] asks for an immediate turn while that
//! list is not empty. Listeners are re-polled once a second as well, so an
//! accept that failed (out of descriptors) is retried (under the ring: a
//! multishot accept an error ended is re-armed by that sweep).
//!
//! ## Bounds
//!
//! Each connection gets a [`READ_BUF`]-byte read buffer and (plain TCP) a
//! [`WRITE_BUF`]-byte write buffer when it is accepted — nothing per message.
//! Under the ring a TLS connection has the write buffer too (records are
//! sent from it) and a [`TLS_IN_BUF`]-byte record buffer; a plain TCP one has
//! exactly the readiness buffers.
//! A message announcing more than [`MAX_FRAME`] bytes ends the connection at
//! once (a 64 KiB length prefix never makes us wait for 64 KiB). A client that
//! does not read fast enough, so that its write buffer and the kernel's send
//! buffer are both full (under the ring: its send is parked on the ring and
//! the write buffer is full), is disconnected (`slow_reader`) instead of
//! growing memory. Connections are capped relay-wide and per source IP (shared with
//! the other workers); a connection without an allocation that sends nothing
//! for `stream-idle-timeout`, or a TLS handshake not finished within
//! `tls-handshake-timeout`, is closed. Every close is counted by reason, and
//! the client's allocation ends with its connection.
//!
//! rustls sessions allocate inside rustls (records, handshake state): TLS
//! clients are not on the zero-allocation path that UDP clients are.

mod conn;
pub(crate) mod tls;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use tern_io::{PacketIo, StreamOp, StreamRing};
use tern_turn::{Event, FiveTuple, Transport};

use crate::shared::{ConnectionLimit, Shared};
use conn::{Conn, ReadOutcome};

/// Data connections handed over per service call, at most.
const HANDOFFS_PER_TURN: usize = 64;

/// A client connection moving to the worker that owns the RFC 6062 peer
/// connection its ConnectionBind names (the kernel spreads new connections
/// over every worker's listener). Counted in both workers' stats.
pub(crate) struct Handoff {
    socket: std::net::TcpStream,
    ft: FiveTuple,
    tls: Option<Box<rustls::ServerConnection>>,
    /// Bytes read and not yet handled, the ConnectionBind first
    /// (`buffered[..plain]`), then the TLS records the ring received and the
    /// session has not yet taken (`buffered[plain..]`).
    buffered: Vec<u8>,
    plain: u32,
    counted: bool,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("transport", &self.ft.transport)
            .field("buffered", &self.buffered.len())
            .finish()
    }
}

/// The worker a ConnectionBind request in `msg` must be handled by, when it
/// is not `me` (the low byte of its CONNECTION-ID, see `tern_turn::ConnectionId`).
fn foreign_bind(msg: &[u8], me: usize, workers: usize) -> Option<usize> {
    // A Binding-class check on the raw type first: 0x000B is a ConnectionBind request.
    if msg.get(..2) != Some(&[0x00, 0x0B][..]) {
        return None;
    }
    let m = tern_stun::Message::parse(msg).ok()?;
    let id = m
        .get(tern_stun::attr::CONNECTION_ID)
        .and_then(|a| tern_stun::decode_u32(a.value).ok())?;
    let owner = usize::from(id as u8);
    (owner != me && owner < workers).then_some(owner)
}

/// Bytes a connection's read buffer holds; also the largest message accepted.
pub(crate) const READ_BUF: usize = 12 * 1024;
/// The largest STUN or (padded) ChannelData message a client may send on a
/// stream: a 9216-byte datagram (the UDP path's limit) with its headers fits.
pub(crate) const MAX_FRAME: usize = READ_BUF;
/// Bytes a connection's write buffer holds (for TLS: rustls' buffer limit).
pub(crate) const WRITE_BUF: usize = 32 * 1024;
/// Bytes of TLS records a ring-driven TLS connection receives at a time
/// (one full record of 16 KiB plus its header fits).
pub(crate) const TLS_IN_BUF: usize = 16 * 1024 + 256;
/// The generation bits a ring token carries (slot: low 32 bits).
const TOKEN_GEN: u32 = 0x007F_FFFF;
/// Set in the ring token of a listener's multishot accept.
const TOKEN_LISTENER: u64 = 1 << 55;
/// Reads per connection per service call before others get their turn.
const READS_PER_TURN: usize = 4;
/// Connections accepted per listener per service call.
const ACCEPTS_PER_TURN: usize = 64;
/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 256;
/// How often timeouts are checked and listeners re-polled.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Tokens below this are listeners; connection tokens are `CONN_BASE + slot`,
/// with the slot's generation in the upper 32 bits.
const CONN_BASE: usize = 1 << 16;

/// Limits and timeouts of the stream transports.
#[derive(Clone, Debug)]
pub(crate) struct StreamConfig {
    /// A connection without an allocation that sends nothing this long is closed.
    pub(crate) idle_timeout: Duration,
    /// A TLS handshake not finished this long after accept is abandoned.
    pub(crate) handshake_timeout: Duration,
    /// The TLS server configuration (certificate, ALPN); `None` without `listen-tls`.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

/// Why a TCP/TLS connection ended; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client closed it (EOF, or a TLS close_notify).
    PeerClosed,
    /// A socket error (reset, broken pipe).
    Reset,
    /// Bytes that are neither STUN nor ChannelData at a message boundary.
    BadFrame,
    /// A message announcing more than [`MAX_FRAME`] bytes.
    FrameTooLarge,
    /// No allocation and nothing received for `stream-idle-timeout`.
    IdleTimeout,
    /// The TLS handshake did not finish within `tls-handshake-timeout`.
    HandshakeTimeout,
    /// rustls refused the client's records (bad handshake, no common ALPN...).
    TlsError,
    /// The client did not read: its write buffer and socket buffer were full.
    SlowReader,
    /// The worker stopped.
    Shutdown,
}

impl CloseReason {
    /// Every reason, for exporting counters.
    pub const ALL: [CloseReason; 9] = [
        CloseReason::PeerClosed,
        CloseReason::Reset,
        CloseReason::BadFrame,
        CloseReason::FrameTooLarge,
        CloseReason::IdleTimeout,
        CloseReason::HandshakeTimeout,
        CloseReason::TlsError,
        CloseReason::SlowReader,
        CloseReason::Shutdown,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::Reset => "reset",
            CloseReason::BadFrame => "bad_frame",
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::TlsError => "tls_error",
            CloseReason::SlowReader => "slow_reader",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

/// Counters of the TCP/TLS client connections (one worker's, or merged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamStats {
    /// Connections accepted, by [`Transport::index`].
    pub accepted: [u64; Transport::ALL.len()],
    /// Connections open now, by [`Transport::index`].
    pub open: [u64; Transport::ALL.len()],
    /// Connections refused by `max-connections`.
    pub refused_total: u64,
    /// Connections refused by `max-connections-per-source`.
    pub refused_per_source: u64,
    /// Connections closed, by [`CloseReason`] (index in `CloseReason::ALL`).
    pub closed: [u64; CloseReason::ALL.len()],
    /// `accept` calls that failed (out of descriptors...).
    pub accept_errors: u64,
    /// Whole messages read from clients.
    pub messages_in: u64,
    /// Bytes read from clients (TLS: plaintext).
    pub bytes_in: u64,
    /// Bytes queued to clients (TLS: plaintext).
    pub bytes_out: u64,
    /// Messages for a connection that had closed meanwhile.
    pub unroutable: u64,
    /// RFC 6062 peer connections opened (Connect) or accepted (relayed address).
    pub peers_opened: u64,
    /// RFC 6062 peer connections closed.
    pub peers_closed: u64,
    /// RFC 6062 bytes relayed raw between data and peer connections.
    pub raw_bytes: u64,
    /// RFC 6062 data connections handed to the worker owning their peer connection.
    pub handoffs_out: u64,
    /// RFC 6062 data connections taken over from another worker.
    pub handoffs_in: u64,
    /// Handoffs refused (the other worker's queue was full): closed.
    pub handoffs_dropped: u64,
    /// DTLS associations (`listen-dtls`, [`crate::DtlsStats`]).
    pub dtls: crate::DtlsStats,
}

impl StreamStats {
    /// Add `other`'s counters to these.
    pub fn merge(&mut self, other: &StreamStats) {
        for (a, b) in self.accepted.iter_mut().zip(other.accepted) {
            *a += b;
        }
        for (a, b) in self.open.iter_mut().zip(other.open) {
            *a += b;
        }
        for (a, b) in self.closed.iter_mut().zip(other.closed) {
            *a += b;
        }
        self.refused_total += other.refused_total;
        self.refused_per_source += other.refused_per_source;
        self.accept_errors += other.accept_errors;
        self.messages_in += other.messages_in;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.unroutable += other.unroutable;
        self.peers_opened += other.peers_opened;
        self.peers_closed += other.peers_closed;
        self.raw_bytes += other.raw_bytes;
        self.handoffs_out += other.handoffs_out;
        self.handoffs_in += other.handoffs_in;
        self.handoffs_dropped += other.handoffs_dropped;
        self.dtls.merge(&other.dtls);
    }

    /// Connections closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize]
    }
}

struct Listener {
    socket: mio::net::TcpListener,
    local: SocketAddr,
    transport: Transport,
    queued: bool,
    /// RFC 6062: the relayed address of a TCP allocation (accepts peers).
    relay: bool,
    /// Ring: this listener's generation (its index is reused), whether its
    /// multishot accept is in flight, and whether an error ended it (it is
    /// re-armed by the next sweep, as readiness retries a failed accept).
    gen: u32,
    accepting: bool,
    accept_failed: bool,
}

/// A peer that connected to a TCP relayed address, for the core to decide on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Incoming {
    slot: u32,
    gen: u32,
    /// The relayed address it connected to.
    pub(crate) relay: SocketAddr,
    /// The peer.
    pub(crate) peer: SocketAddr,
}

#[derive(Clone, Copy, Debug)]
enum Ready {
    Listener(usize),
    Conn(u32, u32),
}

/// One worker's stream listeners and connections. See the module docs.
pub(crate) struct Streams {
    worker: usize,
    poll: Poll,
    events: Events,
    listeners: Vec<Option<Listener>>,
    free_listeners: Vec<usize>,
    relay_listeners: HashMap<SocketAddr, usize, ahash::RandomState>,
    /// RFC 6062 peer connections by CONNECTION-ID.
    by_id: HashMap<u32, u32, ahash::RandomState>,
    incoming: VecDeque<Incoming>,
    connected: VecDeque<(u32, bool)>,
    peer_closed: VecDeque<u32>,
    /// Data connections other workers hand to this one, and how many workers run.
    handoffs: crossbeam::channel::Receiver<Handoff>,
    workers: usize,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    next_gen: u32,
    by_peer: HashMap<(SocketAddr, SocketAddr), u32, ahash::RandomState>,
    ready: VecDeque<Ready>,
    dirty: Vec<u32>,
    closed: VecDeque<FiveTuple>,
    /// The last `epoll_wait` filled its event buffer: more may be waiting.
    more_events: bool,
    last_service: Instant,
    next_sweep: Instant,
    config: StreamConfig,
    shared: Arc<Shared>,
    stats: StreamStats,
    /// Connections are driven by completions on the worker's ring
    /// ([`tern_io::PacketIo::stream_ring`]) rather than by readiness.
    ring: bool,
    /// Ring: connections whose receive is (re-)submitted by the next flush.
    arming: Vec<u32>,
    /// Ring: closed connections whose operations are still in flight, kept
    /// (buffers and socket) until their last completion: (slot, generation).
    retired: Vec<(u32, Conn)>,
    /// Ring: sockets of retired connections whose operations to cancel.
    cancels: Vec<RawFd>,
    /// Ring: removed listeners whose multishot accept has not ended yet, by token.
    retired_listeners: Vec<(u64, mio::net::TcpListener)>,
    next_listener_gen: u32,
    /// [`Streams::close_all`] ran: accept nothing more.
    stopping: bool,
}

impl Streams {
    /// Take over this worker's stream listeners (bound, `(socket, transport)`).
    pub(crate) fn new(
        worker: usize,
        listeners: Vec<(TcpListener, Transport)>,
        config: StreamConfig,
        shared: Arc<Shared>,
        handoffs: (crossbeam::channel::Receiver<Handoff>, usize),
        now: Instant,
        ring: bool,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut own = Vec::with_capacity(listeners.len());
        for (i, (socket, transport)) in listeners.into_iter().enumerate() {
            socket.set_nonblocking(true)?;
            let local = socket.local_addr()?;
            let mut socket = mio::net::TcpListener::from_std(socket);
            if !ring {
                poll.registry()
                    .register(&mut socket, Token(i), Interest::READABLE)?;
            }
            own.push(Some(Listener {
                socket,
                local,
                transport,
                queued: false,
                relay: false,
                gen: 0,
                accepting: false,
                accept_failed: false,
            }));
        }
        Ok(Streams {
            worker,
            poll,
            events: Events::with_capacity(EVENTS),
            listeners: own,
            free_listeners: Vec::new(),
            relay_listeners: HashMap::with_hasher(ahash::RandomState::new()),
            by_id: HashMap::with_hasher(ahash::RandomState::new()),
            incoming: VecDeque::new(),
            connected: VecDeque::new(),
            peer_closed: VecDeque::new(),
            handoffs: handoffs.0,
            workers: handoffs.1,
            conns: Vec::new(),
            free: Vec::new(),
            next_gen: 0,
            by_peer: HashMap::with_hasher(ahash::RandomState::new()),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            closed: VecDeque::new(),
            more_events: false,
            last_service: now,
            next_sweep: now + SWEEP_EVERY,
            config,
            shared,
            stats: StreamStats::default(),
            ring,
            arming: Vec::new(),
            retired: Vec::new(),
            cancels: Vec::new(),
            retired_listeners: Vec::new(),
            next_listener_gen: 0,
            stopping: false,
        })
    }

    /// Whether connections are driven by the ring (for logs).
    pub(crate) fn ring_driven(&self) -> bool {
        self.ring
    }

    /// The epoll descriptor the worker's back end watches.
    pub(crate) fn fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }

    /// This worker's counters.
    pub(crate) fn stats(&self) -> &StreamStats {
        &self.stats
    }

    /// When [`Streams::service`] must run even without readiness: at once
    /// while work is left over from a budget, else at the next sweep.
    pub(crate) fn poll_timeout(&self) -> Instant {
        if self.has_pending() {
            self.last_service
        } else {
            self.next_sweep
        }
    }

    fn has_pending(&self) -> bool {
        !self.ready.is_empty()
            || self.more_events
            || !self.closed.is_empty()
            || !self.incoming.is_empty()
            || !self.connected.is_empty()
            || !self.peer_closed.is_empty()
            || !self.handoffs.is_empty()
    }

    /// Whether [`Streams::service`] has something to do at `now` without new readiness.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.poll_timeout() <= now
    }

    /// Replace the TLS configuration (SIGHUP): new connections use it, live
    /// ones keep the one they were accepted with.
    pub(crate) fn set_tls(&mut self, tls: Arc<rustls::ServerConfig>) {
        self.config.tls = Some(tls);
    }

    /// Take the ready events, accept, read every ready connection under its
    /// budget and hand each whole message to `on_message`; then, once a
    /// second, close what timed out. Connections closed here (or by
    /// [`Streams::send`] / [`Streams::flush`]) are reported by
    /// [`Streams::take_closed`].
    ///
    /// Under the ring, the completions the back end holds are taken first
    /// (no syscall); the nested epoll (listeners, outgoing connects) is
    /// looked at only when `poll_epoll` says it signalled or a timer is due.
    pub(crate) fn service<P: PacketIo>(
        &mut self,
        now: Instant,
        io: &mut P,
        poll_epoll: bool,
        on_message: &mut impl FnMut(&mut P, FiveTuple, &[u8]),
    ) {
        self.last_service = now;
        self.absorb(io.stream_ring(), now);
        for _ in 0..HANDOFFS_PER_TURN {
            let Ok(h) = self.handoffs.try_recv() else {
                break;
            };
            self.adopt_handoff(h, now);
        }
        if poll_epoll || self.more_events || !self.ring {
            self.poll_events();
        }
        for _ in 0..self.ready.len() {
            let Some(item) = self.ready.pop_front() else {
                break;
            };
            match item {
                Ready::Listener(i) => {
                    if let Some(Some(l)) = self.listeners.get_mut(i) {
                        l.queued = false;
                    }
                    if self.accept(i, now) {
                        if let Some(Some(l)) = self.listeners.get_mut(i) {
                            l.queued = true;
                        }
                        self.ready.push_back(item);
                    }
                }
                Ready::Conn(slot, gen) => self.read(slot, gen, now, io, on_message),
            }
        }
        if now >= self.next_sweep {
            self.sweep(now);
        }
    }

    /// Ring: take every stream completion the back end holds and apply it:
    /// received bytes make their connection ready, sent bytes free its
    /// buffer (a short send or bytes queued meanwhile make it dirty again),
    /// and a retired connection is dropped with its last completion.
    fn absorb(&mut self, ring: Option<&mut dyn StreamRing>, now: Instant) {
        let Some(ring) = ring else {
            return;
        };
        while let Some(c) = ring.take_completion() {
            if c.op == StreamOp::Accept {
                self.on_accept(c, now);
                continue;
            }
            let slot = c.token as u32;
            let gen = (c.token >> 32) as u32 & TOKEN_GEN;
            let live = matches!(
                self.conns.get(slot as usize),
                Some(Some(conn)) if conn.gen & TOKEN_GEN == gen
            );
            if !live {
                let Some(k) = self
                    .retired
                    .iter()
                    .position(|(s, conn)| *s == slot && conn.gen & TOKEN_GEN == gen)
                else {
                    continue;
                };
                let conn = &mut self.retired[k].1;
                match c.op {
                    StreamOp::Recv => conn.on_recv(c.result, now),
                    StreamOp::Send => {
                        let _closed_anyway = conn.on_send(c.result);
                    }
                    StreamOp::Accept => {}
                }
                if !conn.in_flight() {
                    // Its buffers are ours again: drop it (closing the socket).
                    self.retired.swap_remove(k);
                }
                continue;
            }
            let Some(Some(conn)) = self.conns.get_mut(slot as usize) else {
                continue;
            };
            match c.op {
                StreamOp::Recv => {
                    conn.on_recv(c.result, now);
                    if !conn.queued {
                        conn.queued = true;
                        self.ready.push_back(Ready::Conn(slot, conn.gen));
                    }
                }
                StreamOp::Send => match conn.on_send(c.result) {
                    Ok(more) => {
                        if more && !conn.dirty {
                            conn.dirty = true;
                            self.dirty.push(slot);
                        }
                        self.unblock_partner(slot);
                    }
                    Err(reason) => self.close(slot, reason),
                },
                StreamOp::Accept => {}
            }
        }
    }

    /// Ring: one completion of a listener's multishot accept: adopt the
    /// connection as a readiness accept would (limits, TLS, peers), count an
    /// error, and note when the accept ended (re-armed by the next flush, or
    /// after an error by the next sweep).
    fn on_accept(&mut self, c: tern_io::StreamCompletion, now: Instant) {
        let i = (c.token as u32) as usize;
        let gen = (c.token >> 32) as u32 & TOKEN_GEN;
        let accepted = (c.result >= 0).then(|| {
            use std::os::fd::FromRawFd;
            // SAFETY: the kernel made this descriptor for us with this
            // completion; nothing else owns it.
            unsafe { std::net::TcpStream::from_raw_fd(c.result) }
        });
        let live = matches!(self.listeners.get(i), Some(Some(l)) if l.gen == gen);
        if !live || self.stopping {
            // A removed listener's accept: close what it still took.
            drop(accepted);
            if !c.more {
                self.retired_listeners.retain(|(t, _)| *t != c.token);
            }
            return;
        }
        if let Some(Some(l)) = self.listeners.get_mut(i) {
            if !c.more {
                l.accepting = false;
                l.accept_failed = c.result < 0 && c.result != -libc::ECANCELED;
            }
        }
        let Some(stream) = accepted else {
            if c.result != -libc::ECANCELED {
                self.stats.accept_errors += 1;
                tracing::debug!(worker = self.worker, errno = -c.result, "accept failed");
            }
            return;
        };
        let Some(Some(l)) = self.listeners.get(i) else {
            return;
        };
        let (local, transport, relay) = (l.local, l.transport, l.relay);
        let Ok(remote) = stream.peer_addr() else {
            // Reset before we looked: nothing to adopt.
            return;
        };
        let stream = mio::net::TcpStream::from_std(stream);
        if relay {
            self.adopt_peer(stream, remote, local, now);
        } else {
            self.adopt(stream, remote, local, transport, now);
        }
    }

    /// A raw partner of `slot` that stopped reading for want of room in
    /// `slot`'s write buffer may go on.
    fn unblock_partner(&mut self, slot: u32) {
        let Some(Some(conn)) = self.conns.get(slot as usize) else {
            return;
        };
        let Some((p, pgen)) = conn.partner else {
            return;
        };
        if let Some(Some(partner)) = self.conns.get_mut(p as usize) {
            if partner.gen == pgen && partner.blocked && !partner.queued {
                partner.blocked = false;
                partner.queued = true;
                self.ready.push_back(Ready::Conn(p, pgen));
            }
        }
    }

    /// Take the nested epoll's ready events onto the ready list.
    fn poll_events(&mut self) {
        match self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => tracing::warn!(worker = self.worker, error = %e, "stream epoll failed"),
        }
        let mut n = 0;
        for event in self.events.iter() {
            n += 1;
            let token = event.token().0;
            if token < CONN_BASE {
                if let Some(Some(l)) = self.listeners.get_mut(token) {
                    if !l.queued {
                        l.queued = true;
                        self.ready.push_back(Ready::Listener(token));
                    }
                }
                continue;
            }
            let slot = (token - CONN_BASE) as u32;
            let gen = (token >> 32) as u32;
            let Some(Some(conn)) = self.conns.get_mut(slot as usize) else {
                continue;
            };
            if conn.gen != gen {
                continue;
            }
            if conn.connecting {
                if event.is_writable() || event.is_error() || event.is_write_closed() {
                    let ok = conn.connect_result();
                    let id = conn.peer.flatten().unwrap_or(0);
                    if conn.ring {
                        // From now on its bytes go through the ring.
                        let _ring_driven_now = self.poll.registry().deregister(conn.socket_mut());
                    }
                    // A failed one is closed when the core answers 447.
                    self.connected.push_back((id, ok));
                }
                continue;
            }
            if conn.ring {
                continue;
            }
            if event.is_writable() && !conn.dirty {
                conn.dirty = true;
                self.dirty.push(slot);
            }
            if (event.is_readable() || event.is_read_closed() || event.is_error()) && !conn.queued {
                conn.queued = true;
                self.ready.push_back(Ready::Conn(slot, gen));
            }
        }
        self.more_events = n == EVENTS;
    }

    /// The next connection that closed, for the core to end its allocation.
    pub(crate) fn take_closed(&mut self) -> Option<FiveTuple> {
        self.closed.pop_front()
    }

    /// Queue one whole message (ChannelData already padded) for the client
    /// connected to our listener `local` from `remote`.
    ///
    /// Under the ring, a message that does not fit while a send is in flight
    /// first takes the completions the back end holds (the send may have
    /// ended, freeing room) before the client counts as a slow reader.
    pub(crate) fn send(
        &mut self,
        ring: Option<&mut dyn StreamRing>,
        local: SocketAddr,
        remote: SocketAddr,
        payload: &[u8],
    ) {
        let Some(&slot) = self.by_peer.get(&(local, remote)) else {
            self.stats.unroutable += 1;
            return;
        };
        let Some(Some(conn)) = self.conns.get_mut(slot as usize) else {
            self.stats.unroutable += 1;
            return;
        };
        let mut result = conn.queue(payload);
        if result == Err(CloseReason::SlowReader) && conn.send_flight > 0 {
            if let Some(ring) = ring {
                let gen = conn.gen;
                self.absorb(Some(ring), Instant::now());
                match self.conns.get_mut(slot as usize) {
                    Some(Some(conn)) if conn.gen == gen => result = conn.queue(payload),
                    // Closed by a completion meanwhile.
                    _ => return,
                }
            }
        }
        let Some(Some(conn)) = self.conns.get_mut(slot as usize) else {
            return;
        };
        match result {
            Ok(()) => {
                self.stats.bytes_out += payload.len() as u64;
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(slot);
                }
            }
            Err(reason) => self.close(slot, reason),
        }
    }

    /// Write what every connection has queued (once per loop turn). What the
    /// kernel does not take now waits for the socket's next writable edge.
    ///
    /// Under the ring this submits instead: a send of each dirty
    /// connection's queued bytes (one in flight per connection; a short send
    /// is followed by the rest when it completes), the receives to (re-)arm,
    /// and the cancels of closed connections. The loop's next wait hands
    /// them all to the kernel in its one `io_uring_enter`.
    pub(crate) fn flush(&mut self, mut ring: Option<&mut dyn StreamRing>) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            let Some(Some(conn)) = self.conns.get_mut(slot as usize) else {
                continue;
            };
            conn.dirty = false;
            if conn.ring {
                let Some(ring) = ring.as_deref_mut() else {
                    continue;
                };
                let Some((buf, len)) = conn.send_target() else {
                    continue;
                };
                let fd = conn.socket_mut().as_raw_fd();
                // SAFETY: `buf..buf + len` is `wbuf[wstart..wstart + len]` of this
                // connection, a heap buffer that neither moves nor shrinks; the
                // connection marks those bytes in flight (`send_flight`) and
                // never writes them until the completion is applied, and a
                // closed connection is kept in `retired` until then.
                if let Err(e) = unsafe { ring.send_from(fd, buf, len, token(slot, conn.gen)) } {
                    conn.send_flight = 0;
                    tracing::debug!(error = %e, "could not submit a stream send");
                    self.close(slot, CloseReason::Reset);
                }
                continue;
            }
            if let Err(reason) = conn.flush() {
                self.close(slot, reason);
                continue;
            }
            self.unblock_partner(slot);
        }
        dirty.clear();
        // Closing never pushes to `dirty`, so nothing was added meanwhile.
        self.dirty = dirty;
        if let Some(ring) = ring {
            self.arm_accepts(ring);
            self.arm_receives(ring);
            for fd in self.cancels.drain(..) {
                if let Err(e) = ring.cancel(fd) {
                    tracing::warn!(error = %e, "could not cancel a closed connection's operations");
                }
            }
        }
    }

    /// Ring: a multishot accept on every listener that has none (and did
    /// not just fail: those wait for the sweep).
    fn arm_accepts(&mut self, ring: &mut dyn StreamRing) {
        if self.stopping {
            return;
        }
        for (i, l) in self.listeners.iter_mut().enumerate() {
            let Some(l) = l else {
                continue;
            };
            if l.accepting || l.accept_failed {
                continue;
            }
            match ring.accept_multi(l.socket.as_raw_fd(), listener_token(i, l.gen)) {
                Ok(()) => l.accepting = true,
                Err(e) => {
                    l.accept_failed = true;
                    tracing::warn!(error = %e, "could not submit a multishot accept");
                }
            }
        }
    }

    /// Ring: submit a receive for every connection queued for one that can take it.
    fn arm_receives(&mut self, ring: &mut dyn StreamRing) {
        let mut arming = std::mem::take(&mut self.arming);
        for &slot in &arming {
            let Some(Some(conn)) = self.conns.get_mut(slot as usize) else {
                continue;
            };
            conn.arm_queued = false;
            // A peer connection waiting for its ConnectionBind, or one still
            // connecting, is read once spliced; a blocked one once its
            // partner has room.
            let waiting = conn.peer.is_some() && conn.partner.is_none();
            if waiting || conn.connecting || conn.blocked {
                continue;
            }
            let Some((buf, len)) = conn.recv_target() else {
                continue;
            };
            let fd = conn.socket_mut().as_raw_fd();
            // SAFETY: `buf..buf + len` is the free end of this connection's
            // read buffer (or TLS record buffer), a heap buffer that neither
            // moves nor shrinks; the connection marks it in flight
            // (`recv_flight`) and touches neither that range nor its fill
            // level until the completion is applied, and a closed connection
            // is kept in `retired` until then.
            match unsafe { ring.recv_into(fd, buf, len, token(slot, conn.gen)) } {
                Ok(()) => conn.recv_flight = true,
                Err(e) => {
                    tracing::debug!(error = %e, "could not submit a stream receive");
                    self.close(slot, CloseReason::Reset);
                }
            }
        }
        arming.clear();
        self.arming = arming;
    }

    /// Ring: queue `slot` for a receive at the next flush.
    fn queue_arm(&mut self, slot: u32) {
        if let Some(Some(conn)) = self.conns.get_mut(slot as usize) {
            if conn.ring && !conn.arm_queued && !conn.recv_flight {
                conn.arm_queued = true;
                self.arming.push(slot);
            }
        }
    }

    /// Keep track of which connections carry an allocation (those are never
    /// idle-closed: the allocation's own lifetime governs them).
    pub(crate) fn on_event(&mut self, event: &Event, now: Instant) {
        let (ft, allocated) = match event {
            Event::AllocationCreated { five_tuple, .. } => (five_tuple, true),
            Event::AllocationDeleted { five_tuple, .. } => (five_tuple, false),
            _ => return,
        };
        if !ft.transport.is_stream() {
            return;
        }
        if let Some(&slot) = self.by_peer.get(&(ft.listener, ft.client)) {
            if let Some(Some(conn)) = self.conns.get_mut(slot as usize) {
                conn.allocated = allocated;
                conn.last_rx = conn.last_rx.max(now);
            }
        }
    }

    // ---- RFC 6062 ---------------------------------------------------------

    /// Listen for peers on the relayed address of a TCP allocation.
    pub(crate) fn add_relay_listener(&mut self, socket: TcpListener, addr: SocketAddr) {
        let i = match self.free_listeners.pop() {
            Some(i) => i,
            None => {
                self.listeners.push(None);
                self.listeners.len() - 1
            }
        };
        if i >= CONN_BASE {
            tracing::warn!(worker = self.worker, "too many TCP relayed addresses");
            return;
        }
        if socket.set_nonblocking(true).is_err() {
            self.free_listeners.push(i);
            return;
        }
        let mut socket = mio::net::TcpListener::from_std(socket);
        let registered = if self.ring {
            Ok(())
        } else {
            self.poll
                .registry()
                .register(&mut socket, Token(i), Interest::READABLE)
        };
        if let Err(e) = registered {
            tracing::warn!(error = %e, "could not register a TCP relayed address");
            self.free_listeners.push(i);
            return;
        }
        self.next_listener_gen = self.next_listener_gen.wrapping_add(1) & TOKEN_GEN;
        self.listeners[i] = Some(Listener {
            socket,
            local: addr,
            transport: Transport::Tcp,
            queued: false,
            relay: true,
            gen: self.next_listener_gen,
            accepting: false,
            accept_failed: false,
        });
        self.relay_listeners.insert(addr, i);
    }

    /// Stop listening on a TCP relayed address (its allocation ended).
    pub(crate) fn remove_relay_listener(&mut self, addr: SocketAddr) {
        let Some(i) = self.relay_listeners.remove(&addr) else {
            return;
        };
        if let Some(mut l) = self.listeners.get_mut(i).and_then(Option::take) {
            let _closing_anyway = self.poll.registry().deregister(&mut l.socket);
            self.free_listeners.push(i);
            if l.accepting {
                // Its accept holds the listening socket open in the kernel:
                // cancel it, and close the socket with the accept's last completion.
                self.cancels.push(l.socket.as_raw_fd());
                self.retired_listeners
                    .push((listener_token(i, l.gen), l.socket));
            }
        }
    }

    /// Connect (RFC 6062 §5.2) from the relayed address `relay` to `peer`;
    /// the outcome comes back through [`Streams::take_connected`].
    pub(crate) fn connect_peer(
        &mut self,
        id: u32,
        relay: SocketAddr,
        peer: SocketAddr,
        now: Instant,
    ) {
        match open_peer(relay, peer) {
            Ok(stream) => {
                if let Some(slot) = self.insert_peer(stream, peer, relay, Some(id), false, now) {
                    if let Some(Some(conn)) = self.conns.get_mut(slot as usize) {
                        conn.connecting = true;
                    }
                    return;
                }
                self.connected.push_back((id, false));
            }
            Err(e) => {
                tracing::debug!(error = %e, "peer connect failed at once");
                self.connected.push_back((id, false));
            }
        }
    }

    /// A peer connected to a relayed address: hold it for the core's answer.
    fn adopt_peer(
        &mut self,
        stream: mio::net::TcpStream,
        peer: SocketAddr,
        relay: SocketAddr,
        now: Instant,
    ) {
        if let Err(limit) = self.shared.acquire_connection(peer.ip()) {
            match limit {
                ConnectionLimit::Total => self.stats.refused_total += 1,
                ConnectionLimit::PerSource => self.stats.refused_per_source += 1,
            }
            return;
        }
        match self.insert_peer(stream, peer, relay, None, true, now) {
            Some(slot) => {
                let gen = self.conns[slot as usize].as_ref().map_or(0, |c| c.gen);
                self.incoming.push_back(Incoming {
                    slot,
                    gen,
                    relay,
                    peer,
                });
            }
            None => self.shared.release_connection(peer.ip()),
        }
    }

    /// Take a connection slot and a new generation for `stream` and register
    /// it with the stream epoll (token = slot and generation); `None`, with
    /// the slot given back, when the registration fails.
    /// `epoll` false: not registered (a ring-driven connection).
    fn register(
        &mut self,
        stream: &mut mio::net::TcpStream,
        what: &str,
        epoll: bool,
    ) -> Option<(u32, u32)> {
        let _latency_matters = stream.set_nodelay(true);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                (self.conns.len() - 1) as u32
            }
        };
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let token = Token(CONN_BASE + slot as usize + ((gen as usize) << 32));
        if !epoll {
            return Some((slot, gen));
        }
        if let Err(e) =
            self.poll
                .registry()
                .register(stream, token, Interest::READABLE | Interest::WRITABLE)
        {
            tracing::warn!(error = %e, connection = what, "could not register a connection");
            self.free.push(slot);
            return None;
        }
        Some((slot, gen))
    }

    fn insert_peer(
        &mut self,
        mut stream: mio::net::TcpStream,
        peer: SocketAddr,
        relay: SocketAddr,
        id: Option<u32>,
        counted: bool,
        now: Instant,
    ) -> Option<u32> {
        // An outgoing connection learns its outcome from the epoll (writable).
        let epoll = !self.ring || id.is_some();
        let (slot, gen) = self.register(&mut stream, "peer", epoll)?;
        let ft = FiveTuple {
            client: peer,
            listener: relay,
            transport: Transport::Tcp,
        };
        let mut conn = Conn::new(stream, ft, gen, None, now, self.ring);
        conn.peer = Some(id);
        conn.counted = counted;
        self.conns[slot as usize] = Some(conn);
        if let Some(id) = id {
            self.by_id.insert(id, slot);
        }
        self.stats.peers_opened += 1;
        Some(slot)
    }

    /// The next peer that connected to a relayed address.
    pub(crate) fn take_incoming(&mut self) -> Option<Incoming> {
        self.incoming.pop_front()
    }

    /// The core's answer for an incoming peer: keep it under `id`, or close it.
    pub(crate) fn decide_incoming(&mut self, incoming: Incoming, id: Option<u32>) {
        let Some(Some(conn)) = self.conns.get_mut(incoming.slot as usize) else {
            return;
        };
        if conn.gen != incoming.gen {
            return;
        }
        match id {
            Some(id) => {
                conn.peer = Some(Some(id));
                self.by_id.insert(id, incoming.slot);
            }
            None => self.close(incoming.slot, CloseReason::PeerClosed),
        }
    }

    /// The next Connect outcome: (CONNECTION-ID, connected).
    pub(crate) fn take_connected(&mut self) -> Option<(u32, bool)> {
        self.connected.pop_front()
    }

    /// The next peer connection (or its data connection) that closed.
    pub(crate) fn take_peer_closed(&mut self) -> Option<u32> {
        self.peer_closed.pop_front()
    }

    /// Close peer connection `id` and the data connection spliced to it.
    pub(crate) fn close_peer(&mut self, id: u32) {
        if let Some(slot) = self.by_id.remove(&id) {
            self.close(slot, CloseReason::PeerClosed);
        }
    }

    /// ConnectionBind succeeded: splice the client connection `data` (its
    /// response is already queued) with peer connection `id`.
    pub(crate) fn bind_data(&mut self, id: u32, data: FiveTuple) {
        let client = self.by_peer.get(&(data.listener, data.client)).copied();
        let (Some(peer), Some(client)) = (self.by_id.get(&id).copied(), client) else {
            // One side closed meanwhile: end the other.
            self.close_peer(id);
            if let Some(client) = client {
                self.close(client, CloseReason::PeerClosed);
            }
            return;
        };
        let gen_of = |c: &Option<Conn>| c.as_ref().map_or(0, |c| c.gen);
        let pgen = gen_of(&self.conns[peer as usize]);
        let cgen = gen_of(&self.conns[client as usize]);
        for (slot, partner, gen) in [(peer, (client, cgen), pgen), (client, (peer, pgen), cgen)] {
            if let Some(Some(conn)) = self.conns.get_mut(slot as usize) {
                conn.partner = Some(partner);
                conn.allocated = true;
                if !conn.queued {
                    conn.queued = true;
                    self.ready.push_back(Ready::Conn(slot, gen));
                }
            }
        }
    }

    /// Move bytes from spliced connection `slot` to its partner, reading
    /// more while the partner has room; stop (blocked) when it has none.
    fn relay_raw(&mut self, slot: u32, now: Instant) {
        let Some(mut conn) = self.conns.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        let Some((p, pgen)) = conn.partner else {
            self.conns[slot as usize] = Some(conn);
            return;
        };
        let mut moved = 0u64;
        let mut to_flush = false;
        let result = (|| -> Result<bool, CloseReason> {
            let Some(Some(partner)) = self.conns.get_mut(p as usize) else {
                return Err(CloseReason::PeerClosed);
            };
            if partner.gen != pgen {
                return Err(CloseReason::PeerClosed);
            }
            for _ in 0..READS_PER_TURN {
                if !conn.pending_raw().is_empty() {
                    let n = partner.push_raw(conn.pending_raw())?;
                    moved += n as u64;
                    conn.consume_raw(n);
                    if n > 0 && !partner.dirty {
                        partner.dirty = true;
                        to_flush = true;
                    }
                    if !conn.pending_raw().is_empty() {
                        conn.blocked = true;
                        return Ok(false);
                    }
                }
                if conn.read_raw(now)?.is_none() {
                    return Ok(false);
                }
            }
            Ok(true)
        })();
        self.stats.raw_bytes += moved;
        if to_flush {
            self.dirty.push(p);
        }
        let gen = conn.gen;
        self.conns[slot as usize] = Some(conn);
        match result {
            Ok(true) => {
                if let Some(Some(c)) = self.conns.get_mut(slot as usize) {
                    c.queued = true;
                }
                self.ready.push_back(Ready::Conn(slot, gen));
                self.queue_arm(slot);
            }
            Ok(false) => self.queue_arm(slot),
            Err(reason) => self.close(slot, reason),
        }
    }

    /// Close every connection (the worker stops). Under the ring, cancel
    /// their operations and wait for the last completions, so no buffer is
    /// freed while the kernel may still use it (and leak them if the ring
    /// does not answer).
    pub(crate) fn close_all<P: PacketIo>(&mut self, io: &mut P) {
        self.stopping = true;
        for l in self.listeners.iter_mut().flatten() {
            if l.accepting {
                self.cancels.push(l.socket.as_raw_fd());
            }
        }
        for slot in 0..self.conns.len() {
            if self.conns[slot].is_some() {
                self.close(slot as u32, CloseReason::Shutdown);
            }
        }
        if io.stream_ring().is_none() {
            return;
        }
        self.flush(io.stream_ring());
        for _ in 0..CANCEL_TRIES {
            if self.retired.is_empty() {
                return;
            }
            if let Err(e) = io.wait(Some(CANCEL_WAIT)) {
                tracing::warn!(error = %e, "waiting for cancelled stream operations failed");
                break;
            }
            self.absorb(io.stream_ring(), Instant::now());
        }
        if !self.retired.is_empty() {
            tracing::error!(
                connections = self.retired.len(),
                "io_uring did not hand back every stream operation; leaking their buffers"
            );
            for (_, conn) in self.retired.drain(..) {
                std::mem::forget(conn);
            }
        }
    }

    /// Accept up to the budget on listener `i`; true when the budget ran out
    /// (more may wait).
    fn accept(&mut self, i: usize, now: Instant) -> bool {
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(Some(l)) = self.listeners.get(i) else {
                return false;
            };
            let (local, transport, relay) = (l.local, l.transport, l.relay);
            match l.socket.accept() {
                Ok((stream, remote)) if relay => self.adopt_peer(stream, remote, local, now),
                Ok((stream, remote)) => self.adopt(stream, remote, local, transport, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.stats.accept_errors += 1;
                    tracing::debug!(worker = self.worker, error = %e, "accept failed");
                    // Out of descriptors and the like: the sweep retries.
                    return false;
                }
            }
        }
        true
    }

    fn adopt(
        &mut self,
        mut stream: mio::net::TcpStream,
        remote: SocketAddr,
        local: SocketAddr,
        transport: Transport,
        now: Instant,
    ) {
        match self.shared.acquire_connection(remote.ip()) {
            Ok(()) => {}
            Err(limit) => {
                match limit {
                    ConnectionLimit::Total => self.stats.refused_total += 1,
                    ConnectionLimit::PerSource => self.stats.refused_per_source += 1,
                }
                tracing::trace!(?limit, "connection refused by a limit");
                // Dropping the stream closes it.
                return;
            }
        }
        let tls = match transport {
            Transport::Tls => {
                let Some(config) = self.config.tls.clone() else {
                    self.shared.release_connection(remote.ip());
                    return;
                };
                match rustls::ServerConnection::new(config) {
                    Ok(mut session) => {
                        session.set_buffer_limit(Some(WRITE_BUF));
                        Some(Box::new(session))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not start a TLS session");
                        self.shared.release_connection(remote.ip());
                        return;
                    }
                }
            }
            _ => None,
        };
        let Some((slot, gen)) = self.register(&mut stream, "client", !self.ring) else {
            self.shared.release_connection(remote.ip());
            return;
        };
        let ft = FiveTuple {
            client: remote,
            listener: local,
            transport,
        };
        self.conns[slot as usize] = Some(Conn::new(stream, ft, gen, tls, now, self.ring));
        self.by_peer.insert((local, remote), slot);
        self.stats.accepted[transport.index()] += 1;
        self.stats.open[transport.index()] += 1;
        if let Some(Some(conn)) = self.conns.get_mut(slot as usize) {
            // Bytes may have arrived with the handshake already.
            conn.queued = true;
        }
        self.ready.push_back(Ready::Conn(slot, gen));
    }

    fn read<P: PacketIo>(
        &mut self,
        slot: u32,
        gen: u32,
        now: Instant,
        io: &mut P,
        on_message: &mut impl FnMut(&mut P, FiveTuple, &[u8]),
    ) {
        let Some(Some(conn)) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if conn.gen != gen {
            return;
        }
        conn.queued = false;
        if conn.partner.is_some() {
            self.relay_raw(slot, now);
            return;
        }
        if conn.peer.is_some() {
            // A peer connection waiting for its ConnectionBind: its bytes wait
            // in the kernel until it is spliced (and read then).
            return;
        }
        let stats = &mut self.stats;
        let (me, workers, allocated) = (self.worker, self.workers, conn.allocated);
        let mut owner = None;
        let mut bound = false;
        let result = conn.read(READS_PER_TURN, now, &mut |ft, msg| {
            // After a ConnectionBind, what follows may be raw data for the
            // peer (once the bind succeeds): leave it unparsed.
            if bound {
                return false;
            }
            if !allocated && msg.get(..2) == Some(&[0x00, 0x0B][..]) {
                // RFC 6062: a ConnectionBind for a peer connection of another worker.
                if workers > 1 {
                    if let Some(w) = foreign_bind(msg, me, workers) {
                        owner = Some(w);
                        return false;
                    }
                }
                bound = true;
            }
            stats.messages_in += 1;
            stats.bytes_in += msg.len() as u64;
            on_message(&mut *io, ft, msg);
            true
        });
        let wants_write = conn.wants_write();
        match result {
            Ok(ReadOutcome::Stopped) => {
                if let Some(to) = owner {
                    self.hand_off(slot, to);
                }
            }
            Ok(outcome) => {
                if outcome == ReadOutcome::More {
                    conn.queued = true;
                    self.ready.push_back(Ready::Conn(slot, gen));
                }
                if wants_write && !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(slot);
                }
                self.queue_arm(slot);
            }
            Err(reason) => self.close(slot, reason),
        }
    }

    /// Move client connection `slot` to worker `to` (its ConnectionBind is
    /// for a peer connection there). A full queue closes it, counted.
    fn hand_off(&mut self, slot: u32, to: usize) {
        if self
            .conns
            .get(slot as usize)
            .is_some_and(|c| c.as_ref().is_some_and(Conn::in_flight))
        {
            // A send of ours is still in flight on it (bytes it must not
            // lose): it cannot move. Only a client that sent something else
            // before its ConnectionBind gets here.
            self.stats.handoffs_dropped += 1;
            self.close(slot, CloseReason::Reset);
            return;
        }
        let Some(mut conn) = self.conns.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        let _moving = self.poll.registry().deregister(conn.socket_mut());
        self.free.push(slot);
        let counted = conn.counted;
        let (socket, ft, tls, buffered, records) = conn.into_parts();
        self.by_peer.remove(&(ft.listener, ft.client));
        let open = &mut self.stats.open[ft.transport.index()];
        *open = open.saturating_sub(1);
        let std: std::net::TcpStream = {
            use std::os::fd::{FromRawFd, IntoRawFd};
            // SAFETY: the descriptor comes straight out of the mio stream,
            // which gives up ownership; the std stream becomes its only owner.
            unsafe { std::net::TcpStream::from_raw_fd(socket.into_raw_fd()) }
        };
        let plain = buffered.len() as u32;
        let mut buffered = buffered;
        buffered.extend_from_slice(&records);
        let handoff = Handoff {
            socket: std,
            ft,
            tls,
            buffered,
            plain,
            counted,
        };
        match self.shared.hand_off(to, handoff) {
            Ok(()) => self.stats.handoffs_out += 1,
            Err(h) => {
                self.stats.handoffs_dropped += 1;
                if h.counted {
                    self.shared.release_connection(h.ft.client.ip());
                }
                self.closed.push_back(h.ft);
            }
        }
    }

    /// Take over a client connection another worker handed over.
    fn adopt_handoff(&mut self, h: Handoff, now: Instant) {
        let Handoff {
            socket,
            ft,
            tls,
            buffered,
            plain,
            counted,
        } = h;
        let (buffered, records) = buffered.split_at((plain as usize).min(buffered.len()));
        let mut stream = mio::net::TcpStream::from_std(socket);
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                (self.conns.len() - 1) as u32
            }
        };
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let token = Token(CONN_BASE + slot as usize + ((gen as usize) << 32));
        let registered = if self.ring {
            Ok(())
        } else {
            self.poll.registry().register(
                &mut stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
        };
        if let Err(e) = registered {
            tracing::warn!(error = %e, "could not register a handed-over connection");
            self.free.push(slot);
            if counted {
                self.shared.release_connection(ft.client.ip());
            }
            return;
        }
        let mut conn =
            Conn::new(stream, ft, gen, tls, now, self.ring).with_buffered(buffered, records);
        conn.counted = counted;
        conn.queued = true;
        self.conns[slot as usize] = Some(conn);
        self.by_peer.insert((ft.listener, ft.client), slot);
        self.stats.open[ft.transport.index()] += 1;
        self.stats.handoffs_in += 1;
        self.ready.push_back(Ready::Conn(slot, gen));
    }

    fn close(&mut self, slot: u32, reason: CloseReason) {
        let Some(mut conn) = self.conns.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        let _closing_anyway = self.poll.registry().deregister(conn.socket_mut());
        let ft = conn.five_tuple();
        self.free.push(slot);
        if conn.counted {
            self.shared.release_connection(ft.client.ip());
        }
        tracing::trace!(
            worker = self.worker,
            reason = reason.as_str(),
            "connection closed"
        );
        if let Some(id) = conn.peer {
            // A peer connection (RFC 6062): not a client of ours.
            self.stats.peers_closed += 1;
            if let Some(id) = id {
                self.by_id.remove(&id);
                if reason != CloseReason::Shutdown {
                    self.peer_closed.push_back(id);
                }
            }
        } else {
            self.by_peer.remove(&(ft.listener, ft.client));
            self.stats.closed[reason as usize] += 1;
            let open = &mut self.stats.open[ft.transport.index()];
            *open = open.saturating_sub(1);
            if reason != CloseReason::Shutdown {
                self.closed.push_back(ft);
            }
        }
        // Either side of a spliced pair ends both.
        let partner = conn.partner;
        if conn.in_flight() {
            // The kernel still owns some of its bytes: keep it (and its
            // socket, so the descriptor is not reused) until the cancelled
            // operations have completed.
            self.cancels.push(conn.socket_mut().as_raw_fd());
            self.retired.push((slot, conn));
        } else {
            drop(conn);
        }
        if let Some((p, pgen)) = partner {
            let live = self
                .conns
                .get(p as usize)
                .is_some_and(|c| c.as_ref().is_some_and(|c| c.gen == pgen));
            if live {
                self.close(p, reason);
            }
        }
    }

    /// Close what timed out; re-poll the listeners (an accept that failed is retried).
    fn sweep(&mut self, now: Instant) {
        self.next_sweep = now + SWEEP_EVERY;
        let (idle, handshake) = (self.config.idle_timeout, self.config.handshake_timeout);
        for slot in 0..self.conns.len() {
            let Some(conn) = &self.conns[slot] else {
                continue;
            };
            // Peer and spliced connections live by the core's rules (RFC 6062).
            let managed = conn.peer.is_some() || conn.partner.is_some();
            let reason = if conn.handshaking() && now.duration_since(conn.accepted) >= handshake {
                Some(CloseReason::HandshakeTimeout)
            } else if !managed && !conn.allocated && now.duration_since(conn.last_rx) >= idle {
                Some(CloseReason::IdleTimeout)
            } else {
                None
            };
            if let Some(reason) = reason {
                self.close(slot as u32, reason);
            }
        }
        for (i, l) in self.listeners.iter_mut().enumerate() {
            let Some(l) = l else {
                continue;
            };
            if self.ring {
                // The next flush re-arms an accept an error ended.
                l.accept_failed = false;
                continue;
            }
            if !l.queued {
                l.queued = true;
                self.ready.push_back(Ready::Listener(i));
            }
        }
    }
}

/// The ring token of listener `i` in generation `gen`.
fn listener_token(i: usize, gen: u32) -> u64 {
    TOKEN_LISTENER | (i as u64 & 0xFFFF_FFFF) | (u64::from(gen & TOKEN_GEN) << 32)
}

/// The ring token of connection `slot` in generation `gen`.
fn token(slot: u32, gen: u32) -> u64 {
    u64::from(slot) | (u64::from(gen & TOKEN_GEN) << 32)
}

/// How long [`Streams::close_all`] waits, per try and in tries, for
/// cancelled operations to come back.
const CANCEL_WAIT: Duration = Duration::from_millis(10);
const CANCEL_TRIES: usize = 200;

/// A non-blocking TCP connection from the relayed address `relay` to `peer`
/// (RFC 6062 §5.2: the relayed address is the source).
fn open_peer(relay: SocketAddr, peer: SocketAddr) -> io::Result<mio::net::TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(peer),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // The relayed address is also listening: both carry SO_REUSEPORT.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&relay.into())?;
    match socket.connect(&peer.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let std: std::net::TcpStream = socket.into();
    Ok(mio::net::TcpStream::from_std(std))
}
