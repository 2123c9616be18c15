//! One worker's DTLS listeners and associations on OpenSSL (the `dtls`
//! feature): see the parent module for a datagram's way and the bounds.
//!
//! Owns: the associations, the listening SSL object, the handshake and
//! idle timers. Must not touch: protocol logic or the plain UDP path.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::ssl::{ErrorCode, SslContext, SslStream};
use tern_io::{PacketIo, SocketId};
use tern_turn::{Event, FiveTuple, Transport};

use super::ossl::{self, Dgram, Listen, ListenAddr};
use super::{cookie, hello, DtlsDrop, DtlsStats};
use crate::shared::{ConnectionLimit, Shared};
use crate::stream::CloseReason;

/// How often timeouts are checked.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Largest decrypted record handed to the core (a DTLS record's plaintext
/// is at most 2^14 bytes).
const PLAIN_BUF: usize = 16 * 1024;

/// Timeouts and the OpenSSL context of the DTLS transport.
#[derive(Clone)]
pub(crate) struct DtlsConfig {
    /// An association without an allocation that sends nothing this long is closed.
    pub(crate) idle_timeout: Duration,
    /// A handshake not finished this long after the verified ClientHello is abandoned.
    pub(crate) handshake_timeout: Duration,
    /// Certificate, key, cookie callbacks (see [`ossl::load`]).
    pub(crate) context: SslContext,
}

impl std::fmt::Debug for DtlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsConfig")
            .field("idle_timeout", &self.idle_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish()
    }
}

struct Assoc {
    stream: SslStream<Dgram>,
    ft: FiveTuple,
    socket: SocketId,
    accepted: Instant,
    last_rx: Instant,
    established: bool,
    /// The core made an allocation for this client and it is alive.
    allocated: bool,
    /// The handshake's retransmission timer.
    timer: Option<Instant>,
}

/// One worker's DTLS listeners and associations. See the module docs.
pub(crate) struct Dtls {
    worker: usize,
    config: DtlsConfig,
    /// The SSL object `DTLSv1_listen` runs on, reused until a ClientHello
    /// verifies (then it becomes that association's).
    listening: Option<SslStream<Dgram>>,
    listen_addr: ListenAddr,
    assocs: Vec<Option<Assoc>>,
    free: Vec<u32>,
    by_peer: HashMap<(SocketAddr, SocketAddr), u32, ahash::RandomState>,
    plain: Box<[u8]>,
    closed: VecDeque<FiveTuple>,
    next_sweep: Instant,
    next_timer: Option<Instant>,
    shared: Arc<Shared>,
    stats: DtlsStats,
}

impl Dtls {
    pub(crate) fn new(
        worker: usize,
        config: DtlsConfig,
        shared: Arc<Shared>,
        now: Instant,
    ) -> std::io::Result<Dtls> {
        Ok(Dtls {
            worker,
            config,
            listening: None,
            listen_addr: ListenAddr::new()?,
            assocs: Vec::new(),
            free: Vec::new(),
            by_peer: HashMap::with_hasher(ahash::RandomState::new()),
            plain: vec![0u8; PLAIN_BUF].into_boxed_slice(),
            closed: VecDeque::new(),
            next_sweep: now + SWEEP_EVERY,
            next_timer: None,
            shared,
            stats: DtlsStats::default(),
        })
    }

    /// This worker's counters.
    pub(crate) fn stats(&self) -> &DtlsStats {
        &self.stats
    }

    /// When [`Dtls::on_timeout`] must run: the next retransmission or sweep.
    pub(crate) fn poll_timeout(&self) -> Instant {
        match self.next_timer {
            Some(t) => t.min(self.next_sweep),
            None => self.next_sweep,
        }
    }

    /// Replace the OpenSSL context (SIGHUP: a new certificate). New
    /// associations use it; live ones keep the one they were made with.
    pub(crate) fn set_context(&mut self, context: SslContext) {
        self.config.context = context;
        self.listening = None;
    }

    /// Whether associations ended since [`Dtls::take_closed`] last emptied the list.
    pub(crate) fn has_closed(&self) -> bool {
        !self.closed.is_empty()
    }

    /// The next association that ended, for the core to end its allocation.
    pub(crate) fn take_closed(&mut self) -> Option<FiveTuple> {
        self.closed.pop_front()
    }

    /// One datagram from `source` on our DTLS socket `socket` bound to
    /// `local`. Each decrypted message goes to `on_message`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_datagram<P: PacketIo>(
        &mut self,
        io: &mut P,
        socket: SocketId,
        local: SocketAddr,
        source: SocketAddr,
        datagram: &[u8],
        now: Instant,
        on_message: &mut impl FnMut(&mut P, FiveTuple, &[u8]),
    ) {
        if let Some(&slot) = self.by_peer.get(&(local, source)) {
            // RFC 6347 §4.2.8: a new ClientHello on an established
            // association (the client restarted on the same port) starts a
            // new cookie exchange; a verified one replaces the association.
            let restarted = self
                .assocs
                .get(slot as usize)
                .is_some_and(|a| a.as_ref().is_some_and(|a| a.established))
                && hello::client_hello(datagram).is_ok();
            if !restarted {
                self.on_assoc_datagram(io, slot, datagram, now, on_message);
                return;
            }
        }
        self.on_hello(io, socket, local, source, datagram, now, on_message);
        cookie::set_current(None);
    }

    /// A datagram from a source without an association.
    #[allow(clippy::too_many_arguments)]
    fn on_hello<P: PacketIo>(
        &mut self,
        io: &mut P,
        socket: SocketId,
        local: SocketAddr,
        source: SocketAddr,
        datagram: &[u8],
        now: Instant,
        on_message: &mut impl FnMut(&mut P, FiveTuple, &[u8]),
    ) {
        let had_cookie = match hello::client_hello(datagram) {
            Ok(h) => !h.cookie.is_empty(),
            Err(e) => {
                let reason = match e {
                    hello::HelloError::NotDtls => DtlsDrop::NotDtls,
                    hello::HelloError::NotClientHello => DtlsDrop::NotClientHello,
                    hello::HelloError::Malformed => DtlsDrop::BadHello,
                };
                self.stats.dropped[reason as usize] += 1;
                return;
            }
        };
        let mut stream = match self.listening.take() {
            Some(s) => s,
            None => match ossl::new_stream(&self.config.context) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(worker = self.worker, error = %e, "could not make a DTLS session");
                    self.stats.dropped[DtlsDrop::BadHello as usize] += 1;
                    return;
                }
            },
        };
        stream.get_mut().put(datagram);
        let window = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            / cookie::WINDOW_SECS;
        cookie::set_current(Some(cookie::HelloFrom {
            client: source,
            listener: local,
            window,
        }));
        let outcome = ossl::listen(&mut stream, &self.listen_addr);
        stream.get_mut().clear_rx();
        forget_errors();
        match outcome {
            Listen::NotYet => {
                if stream.get_ref().has_output() {
                    self.stats.hello_verify_sent += 1;
                    if had_cookie {
                        self.stats.bad_cookie += 1;
                    }
                    stream.get_mut().drain(|dg| io.send(socket, source, dg));
                } else {
                    self.stats.dropped[DtlsDrop::BadHello as usize] += 1;
                }
                self.listening = Some(stream);
            }
            Listen::Failed => {
                // A new listening object next time.
                self.stats.dropped[DtlsDrop::BadHello as usize] += 1;
            }
            Listen::Verified => {
                if let Some(&old) = self.by_peer.get(&(local, source)) {
                    self.close(old, CloseReason::PeerClosed);
                }
                if let Err(limit) = self.shared.acquire_connection(source.ip()) {
                    match limit {
                        ConnectionLimit::Total => self.stats.refused_total += 1,
                        ConnectionLimit::PerSource => self.stats.refused_per_source += 1,
                    }
                    tracing::trace!(?limit, "DTLS association refused by a limit");
                    return;
                }
                let slot = match self.free.pop() {
                    Some(s) => s,
                    None => {
                        self.assocs.push(None);
                        (self.assocs.len() - 1) as u32
                    }
                };
                let ft = FiveTuple {
                    client: source,
                    listener: local,
                    transport: Transport::Dtls,
                };
                self.assocs[slot as usize] = Some(Assoc {
                    stream,
                    ft,
                    socket,
                    accepted: now,
                    last_rx: now,
                    established: false,
                    allocated: false,
                    timer: None,
                });
                self.by_peer.insert((local, source), slot);
                self.stats.accepted += 1;
                self.stats.open += 1;
                // The verified ClientHello is buffered inside the session;
                // processing it checks the cookie once more (still noted).
                self.advance(io, slot, now, on_message);
            }
        }
    }

    /// A datagram of an association: a handshake step or records.
    fn on_assoc_datagram<P: PacketIo>(
        &mut self,
        io: &mut P,
        slot: u32,
        datagram: &[u8],
        now: Instant,
        on_message: &mut impl FnMut(&mut P, FiveTuple, &[u8]),
    ) {
        let Some(Some(a)) = self.assocs.get_mut(slot as usize) else {
            return;
        };
        a.last_rx = now;
        a.stream.get_mut().put(datagram);
        self.advance(io, slot, now, on_message);
        if let Some(Some(a)) = self.assocs.get_mut(slot as usize) {
            a.stream.get_mut().clear_rx();
        }
    }

    /// Drive association `slot` with what it has received: the handshake
    /// while it runs, then every record; send what OpenSSL wrote.
    fn advance<P: PacketIo>(
        &mut self,
        io: &mut P,
        slot: u32,
        now: Instant,
        on_message: &mut impl FnMut(&mut P, FiveTuple, &[u8]),
    ) {
        let Some(Some(a)) = self.assocs.get_mut(slot as usize) else {
            return;
        };
        let mut result = Ok(());
        if !a.established {
            match a.stream.accept() {
                Ok(()) => {
                    a.established = true;
                    a.timer = None;
                    self.stats.established += 1;
                    tracing::trace!(worker = self.worker, "DTLS handshake finished");
                }
                Err(e) if wants_more(e.code()) => {}
                Err(e) => {
                    tracing::trace!(worker = self.worker, error = %e, "DTLS handshake failed");
                    result = Err(CloseReason::TlsError);
                }
            }
        }
        if result.is_ok() && a.established {
            // Bounded: one datagram holds a bounded number of records.
            loop {
                match a.stream.ssl_read(&mut self.plain) {
                    Ok(n) => {
                        self.stats.messages_in += 1;
                        self.stats.bytes_in += n as u64;
                        on_message(io, a.ft, &self.plain[..n]);
                    }
                    Err(e) if wants_more(e.code()) => break,
                    Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                        result = Err(CloseReason::PeerClosed);
                        break;
                    }
                    Err(e) => {
                        tracing::trace!(worker = self.worker, error = %e, "DTLS record refused");
                        result = Err(CloseReason::TlsError);
                        break;
                    }
                }
            }
        }
        forget_errors();
        let (socket, to) = (a.socket, a.ft.client);
        a.stream.get_mut().drain(|dg| io.send(socket, to, dg));
        if !a.established {
            a.timer = ossl::get_timeout(a.stream.ssl()).map(|d| now + d);
            if let Some(t) = a.timer {
                self.next_timer = Some(self.next_timer.map_or(t, |n| n.min(t)));
            }
        }
        if let Err(reason) = result {
            self.close(slot, reason);
        }
    }

    /// Encrypt one message for the client `to` of our listener `local` and
    /// send it. Returns whether it was sent.
    pub(crate) fn send<P: PacketIo>(
        &mut self,
        io: &mut P,
        local: SocketAddr,
        to: SocketAddr,
        payload: &[u8],
    ) -> bool {
        let Some(&slot) = self.by_peer.get(&(local, to)) else {
            self.stats.dropped[DtlsDrop::Unroutable as usize] += 1;
            return false;
        };
        let Some(Some(a)) = self.assocs.get_mut(slot as usize) else {
            self.stats.dropped[DtlsDrop::Unroutable as usize] += 1;
            return false;
        };
        if !a.established {
            self.stats.dropped[DtlsDrop::NotEstablished as usize] += 1;
            return false;
        }
        let written = a.stream.ssl_write(payload);
        let socket = a.socket;
        a.stream.get_mut().drain(|dg| io.send(socket, to, dg));
        match written {
            Ok(_) => {
                self.stats.bytes_out += payload.len() as u64;
                true
            }
            Err(e) => {
                forget_errors();
                tracing::trace!(worker = self.worker, error = %e, "DTLS write failed");
                self.close(slot, CloseReason::TlsError);
                false
            }
        }
    }

    /// Keep track of which associations carry an allocation (those are
    /// never idle-closed: the allocation's own lifetime governs them).
    pub(crate) fn on_event(&mut self, event: &Event, now: Instant) {
        let (ft, allocated) = match event {
            Event::AllocationCreated { five_tuple, .. } => (five_tuple, true),
            Event::AllocationDeleted { five_tuple, .. } => (five_tuple, false),
            _ => return,
        };
        if ft.transport != Transport::Dtls {
            return;
        }
        if let Some(&slot) = self.by_peer.get(&(ft.listener, ft.client)) {
            if let Some(Some(a)) = self.assocs.get_mut(slot as usize) {
                a.allocated = allocated;
                a.last_rx = a.last_rx.max(now);
            }
        }
    }

    /// Run what is due: handshake retransmissions, and once a second the
    /// handshake and idle timeouts.
    pub(crate) fn on_timeout<P: PacketIo>(&mut self, io: &mut P, now: Instant) {
        if self.next_timer.is_some_and(|t| t <= now) {
            self.retransmit(io, now);
        }
        if now >= self.next_sweep {
            self.sweep(io, now);
        }
    }

    fn retransmit<P: PacketIo>(&mut self, io: &mut P, now: Instant) {
        let mut next: Option<Instant> = None;
        let mut gave_up = Vec::new();
        for (slot, a) in self.assocs.iter_mut().enumerate() {
            let Some(a) = a else {
                continue;
            };
            let Some(t) = a.timer else {
                continue;
            };
            if t <= now {
                if ossl::handle_timeout(a.stream.ssl()) < 0 {
                    gave_up.push(slot as u32);
                    a.timer = None;
                    continue;
                }
                if a.stream.get_ref().has_output() {
                    self.stats.retransmits += 1;
                }
                let (socket, to) = (a.socket, a.ft.client);
                a.stream.get_mut().drain(|dg| io.send(socket, to, dg));
                a.timer = ossl::get_timeout(a.stream.ssl()).map(|d| now + d);
            }
            if let Some(t) = a.timer {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        forget_errors();
        self.next_timer = next;
        for slot in gave_up {
            self.close(slot, CloseReason::HandshakeTimeout);
        }
    }

    fn sweep<P: PacketIo>(&mut self, io: &mut P, now: Instant) {
        self.next_sweep = now + SWEEP_EVERY;
        let (idle, handshake) = (self.config.idle_timeout, self.config.handshake_timeout);
        for slot in 0..self.assocs.len() {
            let Some(a) = &mut self.assocs[slot] else {
                continue;
            };
            let reason = if !a.established && now.duration_since(a.accepted) >= handshake {
                Some(CloseReason::HandshakeTimeout)
            } else if a.established && !a.allocated && now.duration_since(a.last_rx) >= idle {
                Some(CloseReason::IdleTimeout)
            } else {
                None
            };
            if let Some(reason) = reason {
                if a.established {
                    notify_close(io, a);
                }
                self.close(slot as u32, reason);
            }
        }
    }

    /// Close every association, telling each client (the worker stops).
    pub(crate) fn close_all<P: PacketIo>(&mut self, io: &mut P) {
        for slot in 0..self.assocs.len() {
            if let Some(a) = &mut self.assocs[slot] {
                if a.established {
                    notify_close(io, a);
                }
                self.close(slot as u32, CloseReason::Shutdown);
            }
        }
    }

    fn close(&mut self, slot: u32, reason: CloseReason) {
        let Some(a) = self.assocs.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(slot);
        self.by_peer.remove(&(a.ft.listener, a.ft.client));
        self.shared.release_connection(a.ft.client.ip());
        self.stats.closed[reason as usize] += 1;
        self.stats.open = self.stats.open.saturating_sub(1);
        tracing::trace!(
            worker = self.worker,
            reason = reason.as_str(),
            "DTLS association closed"
        );
        if reason != CloseReason::Shutdown {
            self.closed.push_back(a.ft);
        }
    }
}

/// Send a close_notify alert, best effort.
fn notify_close<P: PacketIo>(io: &mut P, a: &mut Assoc) {
    let _best_effort = a.stream.shutdown();
    forget_errors();
    let (socket, to) = (a.socket, a.ft.client);
    a.stream.get_mut().drain(|dg| io.send(socket, to, dg));
}

fn wants_more(code: ErrorCode) -> bool {
    code == ErrorCode::WANT_READ || code == ErrorCode::WANT_WRITE
}

/// Empty this thread's OpenSSL error queue (a failed call leaves entries
/// that would otherwise pile up and confuse the next call's result).
fn forget_errors() {
    drop(openssl::error::ErrorStack::get());
}
