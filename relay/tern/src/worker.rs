//! One worker: a thread pinned to a core that owns a TURN [`Server`] shard,
//! its listening sockets (one SO_REUSEPORT socket per listen address), the
//! relay sockets its allocations made, its buffers and its counters.
//!
//! The loop: wait for readiness (or the next timer, or a control message);
//! receive batches under a budget, feed each datagram to the core, queue the
//! forwards it returns, drain its transmits and events after every batch; run
//! the core's timers when due; flush the send queue once per turn; record the
//! turn's duration. Nothing on the per-packet path allocates, locks or logs
//! above `trace`.
//!
//! TCP and TLS clients live in [`crate::stream`]: the worker only nests the
//! streams' epoll into its back end, services them when that says so, and
//! routes `Via::Stream` to them (the `streams` hooks below).

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{Receiver, Sender, TryRecvError};
use hdrhistogram::Histogram;
use tern_io::socket::{bind_udp, SocketOptions};
use tern_io::{
    BackendKind, IoStats, MmsgConfig, MmsgIo, PacketIo, RecvBatch, SocketId, UringConfig, UringIo,
    Wake,
};
use tern_turn::policy::PeerPolicy;
use tern_turn::{
    BindError, ConnectionId, Credentials, Event, Forward, Host, QuotaError, Server, ServerConfig,
    Stats, Transport, Via, PEER_HEADROOM, PEER_TAILROOM,
};

#[cfg(feature = "dtls")]
use crate::dtls::{Dtls, DtlsConfig};
use crate::metrics::{Counters, Reporter};
use crate::shared::Shared;
use crate::stream::{StreamConfig, StreamStats, Streams};

/// Datagrams per receive syscall.
const BATCH: usize = 64;
/// Largest datagram received (jumbo frames); larger ones are dropped and counted.
const MAX_DATAGRAM: usize = 9216;
/// Receive batches per loop turn before timers, control and flushing get their turn.
const RECV_BUDGET: usize = 16;
/// A loop turn longer than this counts as a stall.
const STALL: Duration = Duration::from_millis(50);
/// Least time between two stall warnings of one worker.
const STALL_LOG_EVERY: Duration = Duration::from_secs(10);

/// A message from the relay handle to a worker.
pub(crate) enum Control {
    /// New credentials and peer policy (SIGHUP).
    Reload {
        credentials: Credentials,
        policy: PeerPolicy,
    },
    /// A new TLS certificate and key (SIGHUP); live connections keep theirs.
    Tls(Arc<rustls::ServerConfig>),
    /// A new DTLS context (SIGHUP: certificate and key); live associations keep theirs.
    #[cfg(feature = "dtls")]
    Dtls(openssl::ssl::SslContext),
    /// Start or stop draining (refuse new allocations); `epoch` is echoed in reports.
    Draining { on: bool, epoch: u64 },
    /// Send a copy of the counters back.
    Stats(Sender<WorkerStats>),
    /// An SFU control call (see [`crate::sfu`]).
    Sfu(crate::sfu::Command),
    /// Free every allocation, close every socket and end the thread.
    Shutdown,
}

/// A worker's counters, copied out on request.
#[derive(Clone, Debug)]
pub(crate) struct WorkerStats {
    pub(crate) turn: Stats,
    pub(crate) io: IoStats,
    pub(crate) allocations: usize,
    pub(crate) unroutable: u64,
    pub(crate) stalls: u64,
    pub(crate) loop_turn_ns: Histogram<u64>,
    pub(crate) streams: StreamStats,
}

/// Everything a worker thread starts with.
pub(crate) struct Setup {
    pub(crate) index: usize,
    pub(crate) core: Option<core_affinity::CoreId>,
    pub(crate) backend: BackendKind,
    /// `uring-min-wait-us`: the io_uring back end's coalescing wait.
    pub(crate) uring_min_wait_us: u32,
    pub(crate) listeners: Vec<UdpSocket>,
    /// This worker's TCP/TLS listeners (empty: no stream transport).
    pub(crate) stream_listeners: Vec<(TcpListener, Transport)>,
    pub(crate) stream_config: StreamConfig,
    /// This worker's sockets of the `listen-dtls` addresses (empty: no DTLS).
    #[cfg(feature = "dtls")]
    pub(crate) dtls_listeners: Vec<UdpSocket>,
    /// The DTLS context and timeouts; `None` without `listen-dtls`.
    #[cfg(feature = "dtls")]
    pub(crate) dtls_config: Option<DtlsConfig>,
    /// Data connections other workers hand over (RFC 6062), and how many workers run.
    pub(crate) handoffs: (Receiver<crate::stream::Handoff>, usize),
    pub(crate) server: ServerConfig,
    pub(crate) shared: Arc<Shared>,
    pub(crate) control: Receiver<Control>,
    pub(crate) reporter: Reporter,
    pub(crate) seed: [u8; 32],
    /// The AF_XDP socket's interface and queue (`io-backend = "xdp"`).
    pub(crate) xsk: Option<crate::xdp::XskSetup>,
    /// The SFU's bind address and port slice, when `sfu = true`.
    pub(crate) sfu: Option<crate::sfu::ShardConfig>,
}

/// The thread body: build the back end, report readiness (the waker) on
/// `ready`, run until shut down.
pub(crate) fn run(setup: Setup, ready: Sender<io::Result<Arc<dyn Wake>>>) {
    if let Some(core) = setup.core {
        if !core_affinity::set_for_current(core) {
            tracing::warn!(
                worker = setup.index,
                core = core.id,
                "could not pin worker to its core"
            );
        }
    }
    match setup.backend {
        BackendKind::Mmsg => match MmsgIo::new(MmsgConfig::default()) {
            Ok(io) => start(io, setup, ready),
            Err(e) => {
                let _receiver_may_be_gone = ready.send(Err(e));
            }
        },
        // Built on the worker's own thread: the ring is single-issuer.
        BackendKind::Uring => match UringIo::new(UringConfig {
            max_payload: MAX_DATAGRAM,
            min_wait: Duration::from_micros(u64::from(setup.uring_min_wait_us)),
            ..UringConfig::default()
        }) {
            Ok(io) => start(io, setup, ready),
            Err(e) => {
                let _receiver_may_be_gone = ready.send(Err(e));
            }
        },
        BackendKind::Xdp => {
            let built = match &setup.xsk {
                Some(s) => crate::xdp::open_worker_io(s),
                None => Err(io::Error::other("io-backend xdp without an XDP interface")),
            };
            match built {
                Ok(io) => start(io, setup, ready),
                Err(e) => {
                    let _receiver_may_be_gone = ready.send(Err(e));
                }
            }
        }
        other => {
            let e = io::Error::other(format!("back end {other} not built into this worker"));
            let _receiver_may_be_gone = ready.send(Err(e));
        }
    }
}

fn start<P: PacketIo>(io: P, setup: Setup, ready: Sender<io::Result<Arc<dyn Wake>>>) {
    match Worker::new(io, setup) {
        Ok(worker) => {
            if ready.send(Ok(worker.io.waker())).is_ok() {
                worker.run();
            }
        }
        Err(e) => {
            let _receiver_may_be_gone = ready.send(Err(e));
        }
    }
}

/// What a registered socket is, indexed by [`SocketId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Free,
    Listener(SocketAddr),
    /// A `listen-dtls` socket: its datagrams go to the DTLS layer.
    #[cfg(feature = "dtls")]
    Dtls(SocketAddr),
    Relay(SocketAddr),
    /// An SFU transport's socket, by transport id.
    Sfu(u32),
}

/// The worker's socket tables, separate from the back end so the [`Host`]
/// implementation can borrow both.
struct Sockets {
    roles: Vec<Role>,
    listeners: Vec<(SocketAddr, SocketId)>,
    relays: RelayTable,
    unroutable: u64,
    /// TCP/TLS clients, when any stream listener is configured. Taken out
    /// while they are being read (see `service_streams`).
    streams: Option<Box<Streams>>,
    /// DTLS clients, when `listen-dtls` is configured. Taken out while a
    /// datagram of theirs is handled.
    #[cfg(feature = "dtls")]
    dtls: Option<Box<Dtls>>,
    /// RFC 6062 work the core asked of the host while the streams were taken
    /// out; applied by `apply_stream_ops`.
    stream_ops: Vec<StreamOp>,
}

/// An RFC 6062 request of the core to the stream module.
enum StreamOp {
    Listen(TcpListener, SocketAddr),
    Unlisten(SocketAddr),
    Connect(u32, SocketAddr, SocketAddr),
    ClosePeer(u32),
    BindData(u32, tern_turn::FiveTuple),
}

/// Relayed socket by relayed address, looked up for every datagram a client
/// sends to a peer. Relay sockets bind one address per family (the relay
/// address's `bind` IP), so the port alone names the socket: a direct-indexed
/// table per family, no hashing. An address whose slot is taken by another
/// address (a second IP of a family, which the relay never binds today) goes
/// to the hashed overflow map, checked only when it is not empty.
struct RelayTable {
    v4: Box<[u32]>,
    v6: Box<[u32]>,
    /// Which address each occupied slot holds, by socket index.
    overflow: HashMap<SocketAddr, SocketId>,
}

const NO_SOCKET: u32 = u32::MAX;

impl RelayTable {
    fn new() -> RelayTable {
        RelayTable {
            v4: vec![NO_SOCKET; 1 << 16].into_boxed_slice(),
            v6: vec![NO_SOCKET; 1 << 16].into_boxed_slice(),
            overflow: HashMap::new(),
        }
    }

    fn slot(&mut self, addr: SocketAddr) -> &mut u32 {
        let table = if addr.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        };
        &mut table[usize::from(addr.port())]
    }

    /// Remember that `addr`'s relayed socket is `id`; `roles` tells which
    /// address an occupied slot belongs to.
    fn insert(&mut self, addr: SocketAddr, id: SocketId, roles: &[Role]) {
        let slot = self.slot(addr);
        let taken_by_other = *slot != NO_SOCKET
            && roles.get(*slot as usize).copied() != Some(Role::Relay(addr))
            && roles.get(*slot as usize).is_some_and(|r| *r != Role::Free);
        if taken_by_other {
            self.overflow.insert(addr, id);
        } else {
            *slot = id.0;
        }
    }

    fn get(&self, addr: SocketAddr, roles: &[Role]) -> Option<SocketId> {
        let table = if addr.is_ipv4() { &self.v4 } else { &self.v6 };
        let id = table[usize::from(addr.port())];
        if id != NO_SOCKET && roles.get(id as usize) == Some(&Role::Relay(addr)) {
            return Some(SocketId(id));
        }
        if self.overflow.is_empty() {
            return None;
        }
        self.overflow.get(&addr).copied()
    }

    fn remove(&mut self, addr: SocketAddr, roles: &[Role]) -> Option<SocketId> {
        if let Some(id) = self.overflow.remove(&addr) {
            return Some(id);
        }
        let slot = self.slot(addr);
        let id = *slot;
        if id != NO_SOCKET && roles.get(id as usize) == Some(&Role::Relay(addr)) {
            *slot = NO_SOCKET;
            return Some(SocketId(id));
        }
        None
    }
}

struct Worker<P: PacketIo> {
    index: usize,
    io: P,
    server: Server,
    batch: RecvBatch,
    sockets: Sockets,
    shared: Arc<Shared>,
    control: Receiver<Control>,
    loop_turn_ns: Histogram<u64>,
    stalls: u64,
    last_stall_log: Option<Instant>,
    reporter: Reporter,
    drain_epoch: u64,
    /// When the batch being handled was read: the start of Allocate latency.
    batch_at: Instant,
    /// This turn's batches: when each was read and how many datagrams it
    /// relayed, for the relay latency histogram once the turn has flushed.
    relayed: [(Instant, u64); RECV_BUDGET],
    relayed_len: usize,
    /// The SFU routers placed on this worker, when `sfu = true`.
    sfu: Option<Box<crate::sfu::Shard>>,
}

impl<P: PacketIo> Worker<P> {
    fn new(mut io: P, setup: Setup) -> io::Result<Self> {
        let mut sockets = Sockets {
            roles: Vec::new(),
            listeners: Vec::new(),
            relays: RelayTable::new(),
            unroutable: 0,
            streams: None,
            #[cfg(feature = "dtls")]
            dtls: None,
            stream_ops: Vec::new(),
        };
        for socket in setup.listeners {
            let local = socket.local_addr()?;
            let id = io.add_socket(socket)?;
            sockets.set_role(id, Role::Listener(local));
            sockets.listeners.push((local, id));
        }
        let now = Instant::now();
        #[cfg(feature = "dtls")]
        if let Some(config) = setup
            .dtls_config
            .filter(|_| !setup.dtls_listeners.is_empty())
        {
            for socket in setup.dtls_listeners {
                let local = socket.local_addr()?;
                let id = io.add_socket(socket)?;
                sockets.set_role(id, Role::Dtls(local));
            }
            sockets.dtls = Some(Box::new(Dtls::new(
                setup.index,
                config,
                setup.shared.clone(),
                now,
            )?));
        }
        if !setup.stream_listeners.is_empty() {
            let streams = Streams::new(
                setup.index,
                setup.stream_listeners,
                setup.stream_config,
                setup.shared.clone(),
                setup.handoffs,
                now,
                io.stream_ring().is_some(),
            )?;
            io.watch(streams.fd())?;
            if streams.ring_driven() {
                tracing::info!(
                    worker = setup.index,
                    "TCP/TLS accepts, reads and writes go through this worker's io_uring ring"
                );
            } else {
                tracing::info!(
                    worker = setup.index,
                    backend = %io.kind(),
                    "TCP/TLS connections are driven by epoll readiness (the back end has no stream ring)"
                );
            }
            sockets.streams = Some(Box::new(streams));
        }
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let slice = setup.server.relay_ports;
        let server = Server::new(setup.server, now, unix_now, setup.seed);
        // 1 ns .. 60 s at 2 significant digits: a few thousand counters, fixed size,
        // so recording never allocates.
        let loop_turn_ns = Histogram::new_with_bounds(1, 60_000_000_000, 2)
            .map_err(|e| io::Error::other(e.to_string()))?;
        tracing::info!(
            worker = setup.index,
            backend = %io.kind(),
            relay_ports = %format_args!("{}-{}", slice.lo(), slice.hi()),
            "worker started"
        );
        Ok(Worker {
            index: setup.index,
            io,
            server,
            batch: RecvBatch::new(BATCH, MAX_DATAGRAM, PEER_HEADROOM, PEER_TAILROOM),
            sockets,
            shared: setup.shared,
            control: setup.control,
            loop_turn_ns,
            stalls: 0,
            last_stall_log: None,
            reporter: setup.reporter,
            drain_epoch: 0,
            batch_at: now,
            relayed: [(now, 0); RECV_BUDGET],
            relayed_len: 0,
            sfu: setup
                .sfu
                .map(|c| Box::new(crate::sfu::Shard::new(setup.index, c))),
        })
    }

    fn run(mut self) {
        loop {
            match self.control.try_recv() {
                Ok(Control::Shutdown) | Err(TryRecvError::Disconnected) => break,
                Ok(msg) => {
                    self.handle_control(msg);
                    continue;
                }
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            // Wake for the next report even when idle, so the side thread sees
            // every worker alive.
            let mut deadline = match self.server.poll_timeout() {
                Some(t) => t.min(self.reporter.deadline()),
                None => self.reporter.deadline(),
            };
            if let Some(streams) = &self.sockets.streams {
                deadline = deadline.min(streams.poll_timeout());
            }
            #[cfg(feature = "dtls")]
            if let Some(dtls) = &self.sockets.dtls {
                deadline = deadline.min(dtls.poll_timeout());
            }
            if let Some(t) = self.sfu.as_ref().and_then(|s| s.poll_timeout()) {
                deadline = deadline.min(t);
            }
            let timeout = Some(deadline.saturating_duration_since(now));
            if let Err(e) = self.io.wait(timeout) {
                tracing::error!(worker = self.index, error = %e, "waiting for I/O failed; worker stops");
                break;
            }
            let start = Instant::now();
            self.turn();
            let end = Instant::now();
            let took = end.duration_since(start);
            let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
            for &(read_at, count) in &self.relayed[..self.relayed_len] {
                if count > 0 {
                    let ns = u64::try_from(end.duration_since(read_at).as_nanos());
                    self.reporter.record_relay(ns.unwrap_or(u64::MAX), count);
                }
            }
            self.loop_turn_ns.saturating_record(ns);
            self.reporter.record_turn(ns);
            if took > STALL {
                self.stall(took);
            }
            self.reporter.maybe_report(
                end,
                Counters {
                    drain_epoch: self.drain_epoch,
                    draining: self.server.is_draining(),
                    turn: self.server.stats(),
                    io: self.io.stats(),
                    allocations: self.server.allocation_count(),
                    unroutable: self.sockets.unroutable,
                    stalls: self.stalls,
                    streams: self.stream_stats(),
                    sfu: self.sfu.as_ref().map(|s| s.counters()).unwrap_or_default(),
                },
            );
        }
        self.stop();
    }

    /// One loop turn after a wait: receive under the budget, then timers, then flush.
    fn turn(&mut self) {
        self.relayed_len = 0;
        for _ in 0..RECV_BUDGET {
            if self.io.recv(&mut self.batch) == 0 {
                break;
            }
            let now = Instant::now();
            self.batch_at = now;
            let relayed = self.handle_batch(now);
            self.relayed[self.relayed_len] = (now, relayed);
            self.relayed_len += 1;
            self.drain_outputs();
        }
        self.service_streams();
        let now = Instant::now();
        #[cfg(feature = "dtls")]
        {
            if let Some(dtls) = &mut self.sockets.dtls {
                if dtls.poll_timeout() <= now {
                    dtls.on_timeout(&mut self.io, now);
                }
            }
            self.end_dtls_closed(now);
        }
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            let mut host = WorkerHost {
                io: &mut self.io,
                sockets: &mut self.sockets,
                shared: &self.shared,
            };
            self.server.handle_timeout(&mut host, now);
            self.drain_outputs();
        }
        self.apply_stream_ops();
        if let Some(sfu) = &mut self.sfu {
            sfu.on_timeout(&mut self.io, Instant::now());
        }
        if let Some(streams) = &mut self.sockets.streams {
            streams.flush(self.io.stream_ring());
        }
        // The loop waits next: io_uring submits the sends with that wait.
        self.io.flush_before_wait();
    }

    /// The stream hook of a loop turn: when the nested epoll signalled (or
    /// work is left, or a stream timer is due), read the TCP/TLS clients and
    /// feed their messages to the core; then end the allocations of
    /// connections that closed. Costs nothing without stream listeners.
    fn service_streams(&mut self) {
        let Some(mut streams) = self.sockets.streams.take() else {
            return;
        };
        let now = Instant::now();
        let polled = self.io.take_watch_ready() || streams.due(now);
        let completed = self
            .io
            .stream_ring()
            .is_some_and(|ring| ring.has_completions());
        if polled || completed {
            self.batch_at = now;
            let (server, io, sockets, shared) = (
                &mut self.server,
                &mut self.io,
                &mut self.sockets,
                &self.shared,
            );
            streams.service(now, &mut *io, polled, &mut |io, ft, message| {
                let forward = {
                    let mut host = WorkerHost {
                        io: &mut *io,
                        sockets: &mut *sockets,
                        shared,
                    };
                    server.handle_client_message(&mut host, ft, message, now)
                };
                // Client messages only ever go to relay sockets.
                if let Some(Forward { via, to, payload }) = forward {
                    let _counted_when_unroutable =
                        send_via(&mut *io, &mut *sockets, via, to, payload);
                }
            });
        }
        while let Some(ft) = streams.take_closed() {
            let mut host = WorkerHost {
                io: &mut self.io,
                sockets: &mut self.sockets,
                shared: &self.shared,
            };
            self.server.handle_client_closed(&mut host, ft, now);
        }
        // RFC 6062 peer connections: incoming ones, Connect outcomes, closes.
        while let Some(incoming) = streams.take_incoming() {
            let id = self
                .server
                .handle_peer_incoming(incoming.relay, incoming.peer, now);
            streams.decide_incoming(incoming, id.map(|i| i.0));
        }
        while let Some((id, connected)) = streams.take_connected() {
            let mut host = WorkerHost {
                io: &mut self.io,
                sockets: &mut self.sockets,
                shared: &self.shared,
            };
            self.server
                .handle_peer_connected(&mut host, ConnectionId(id), connected, now);
        }
        while let Some(id) = streams.take_peer_closed() {
            self.server.handle_peer_closed(ConnectionId(id));
        }
        self.sockets.streams = Some(streams);
        self.drain_outputs();
        self.apply_stream_ops();
    }

    /// End the allocations of DTLS associations that closed.
    #[cfg(feature = "dtls")]
    fn end_dtls_closed(&mut self, now: Instant) {
        let mut ended = false;
        while let Some(ft) = self.sockets.dtls.as_mut().and_then(|d| d.take_closed()) {
            let mut host = WorkerHost {
                io: &mut self.io,
                sockets: &mut self.sockets,
                shared: &self.shared,
            };
            ended |= self.server.handle_client_closed(&mut host, ft, now);
        }
        if ended {
            self.drain_outputs();
        }
    }

    /// Carry out what the core asked of the host for RFC 6062 (after the
    /// responses it queued, so a ConnectionBind answer precedes raw bytes).
    fn apply_stream_ops(&mut self) {
        if self.sockets.stream_ops.is_empty() {
            return;
        }
        let now = Instant::now();
        let Some(streams) = &mut self.sockets.streams else {
            self.sockets.stream_ops.clear();
            return;
        };
        for op in self.sockets.stream_ops.drain(..) {
            match op {
                StreamOp::Listen(socket, addr) => streams.add_relay_listener(socket, addr),
                StreamOp::Unlisten(addr) => streams.remove_relay_listener(addr),
                StreamOp::Connect(id, relay, peer) => streams.connect_peer(id, relay, peer, now),
                StreamOp::ClosePeer(id) => streams.close_peer(id),
                StreamOp::BindData(id, ft) => streams.bind_data(id, ft),
            }
        }
    }

    /// Feed every datagram of the batch to the core and queue its forwards;
    /// returns how many forwards were queued.
    fn handle_batch(&mut self, now: Instant) -> u64 {
        let mut relayed = 0;
        for i in 0..self.batch.len() {
            let (meta, slot) = self.batch.slot_mut(i);
            let role = self
                .sockets
                .roles
                .get(meta.socket.index())
                .copied()
                .unwrap_or(Role::Free);
            let forward = match role {
                Role::Listener(local) => {
                    let packet = &slot[PEER_HEADROOM..PEER_HEADROOM + meta.len];
                    let mut host = WorkerHost {
                        io: &mut self.io,
                        sockets: &mut self.sockets,
                        shared: &self.shared,
                    };
                    self.server
                        .handle_client_packet(&mut host, local, meta.source, packet, now)
                }
                Role::Relay(local) => {
                    self.server
                        .handle_peer_packet(local, meta.source, slot, meta.len, now)
                }
                #[cfg(feature = "dtls")]
                Role::Dtls(local) => {
                    let Some(mut dtls) = self.sockets.dtls.take() else {
                        continue;
                    };
                    let packet = &slot[PEER_HEADROOM..PEER_HEADROOM + meta.len];
                    let (server, sockets, shared) =
                        (&mut self.server, &mut self.sockets, &self.shared);
                    dtls.on_datagram(
                        &mut self.io,
                        meta.socket,
                        local,
                        meta.source,
                        packet,
                        now,
                        &mut |io, ft, message| {
                            let forward = {
                                let mut host = WorkerHost {
                                    io: &mut *io,
                                    sockets: &mut *sockets,
                                    shared,
                                };
                                server.handle_client_message(&mut host, ft, message, now)
                            };
                            // Client messages only ever go to relay sockets.
                            if let Some(Forward { via, to, payload }) = forward {
                                if send_via(&mut *io, &mut *sockets, via, to, payload) {
                                    relayed += 1;
                                }
                            }
                        },
                    );
                    self.sockets.dtls = Some(dtls);
                    if self.sockets.dtls.as_ref().is_some_and(|d| d.has_closed()) {
                        self.end_dtls_closed(now);
                    }
                    None
                }
                Role::Sfu(transport) => {
                    if let Some(sfu) = &mut self.sfu {
                        let data = &mut slot[PEER_HEADROOM..PEER_HEADROOM + meta.len];
                        sfu.on_datagram(&mut self.io, transport, meta.source, data, now);
                    }
                    None
                }
                // A datagram read just before its socket was closed.
                Role::Free => None,
            };
            if let Some(Forward { via, to, payload }) = forward {
                if send_via(&mut self.io, &mut self.sockets, via, to, payload) {
                    relayed += 1;
                }
            }
        }
        relayed
    }

    /// Send the core's control transmits and log its events.
    fn drain_outputs(&mut self) {
        while let Some(t) = self.server.poll_transmit() {
            let _counted_when_unroutable =
                send_via(&mut self.io, &mut self.sockets, t.via, t.to, &t.payload);
        }
        while let Some(event) = self.server.poll_event() {
            if let Event::AllocationCreated { .. } = event {
                let ns = self.batch_at.elapsed().as_nanos();
                self.reporter
                    .record_allocation(u64::try_from(ns).unwrap_or(u64::MAX));
            }
            if let Some(streams) = &mut self.sockets.streams {
                streams.on_event(&event, self.batch_at);
            }
            #[cfg(feature = "dtls")]
            if let Some(dtls) = &mut self.sockets.dtls {
                dtls.on_event(&event, self.batch_at);
            }
            log_event(self.index, &event);
        }
    }

    fn handle_control(&mut self, msg: Control) {
        match msg {
            Control::Reload {
                credentials,
                policy,
            } => {
                self.server.reload(credentials, policy);
                tracing::debug!(worker = self.index, "credentials and peer policy reloaded");
            }
            Control::Tls(config) => {
                if let Some(streams) = &mut self.sockets.streams {
                    streams.set_tls(config);
                }
            }
            #[cfg(feature = "dtls")]
            Control::Dtls(context) => {
                if let Some(dtls) = &mut self.sockets.dtls {
                    dtls.set_context(context);
                }
            }
            Control::Draining { on, epoch } => {
                self.server.set_draining(on);
                self.drain_epoch = epoch;
                // Tell the side thread at once: it decides when the drain is over.
                self.reporter.soon();
                tracing::debug!(worker = self.index, draining = on, "drain switched");
            }
            Control::Stats(reply) => {
                let _caller_may_have_timed_out = reply.send(WorkerStats {
                    turn: self.server.stats().clone(),
                    io: *self.io.stats(),
                    allocations: self.server.allocation_count(),
                    unroutable: self.sockets.unroutable,
                    stalls: self.stalls,
                    loop_turn_ns: self.loop_turn_ns.clone(),
                    streams: self.stream_stats(),
                });
            }
            Control::Sfu(cmd) => {
                let Some(sfu) = &mut self.sfu else {
                    let refused = crate::sfu::api::ApiError::new(404, "the SFU is not enabled");
                    let _caller_may_have_timed_out = cmd.reply.send(Err(refused));
                    return;
                };
                let sockets = &mut self.sockets;
                sfu.command(cmd, &mut self.io, &mut |id, transport| {
                    sockets.set_role(id, transport.map_or(Role::Free, Role::Sfu));
                });
            }
            Control::Shutdown => {}
        }
    }

    fn stream_stats(&self) -> StreamStats {
        let stats = self
            .sockets
            .streams
            .as_ref()
            .map(|s| *s.stats())
            .unwrap_or_default();
        #[cfg(feature = "dtls")]
        let stats = StreamStats {
            dtls: self
                .sockets
                .dtls
                .as_ref()
                .map(|d| *d.stats())
                .unwrap_or_default(),
            ..stats
        };
        stats
    }

    fn stall(&mut self, took: Duration) {
        self.stalls += 1;
        let now = Instant::now();
        if !self
            .last_stall_log
            .is_some_and(|t| now.duration_since(t) < STALL_LOG_EVERY)
        {
            self.last_stall_log = Some(now);
            tracing::warn!(
                worker = self.index,
                took_ms = took.as_millis() as u64,
                stalls = self.stalls,
                "slow loop turn"
            );
        }
    }

    /// Free every allocation (closing relay sockets, releasing quotas), send
    /// what is queued, close the listeners.
    fn stop(mut self) {
        let now = Instant::now();
        let mut host = WorkerHost {
            io: &mut self.io,
            sockets: &mut self.sockets,
            shared: &self.shared,
        };
        self.server.clear(&mut host, now);
        if let Some(streams) = &mut self.sockets.streams {
            streams.close_all(&mut self.io);
        }
        #[cfg(feature = "dtls")]
        if let Some(dtls) = &mut self.sockets.dtls {
            dtls.close_all(&mut self.io);
        }
        self.drain_outputs();
        self.io.flush();
        for &(_, id) in &self.sockets.listeners {
            let _closing_anyway = self.io.remove_socket(id);
        }
        tracing::info!(worker = self.index, "worker stopped");
    }
}

impl Sockets {
    fn set_role(&mut self, id: SocketId, role: Role) {
        if self.roles.len() <= id.index() {
            self.roles.resize(id.index() + 1, Role::Free);
        }
        self.roles[id.index()] = role;
    }

    fn route(&self, via: Via) -> Option<SocketId> {
        match via {
            Via::Listener(addr) => self
                .listeners
                .iter()
                .find(|(a, _)| *a == addr)
                .map(|&(_, id)| id),
            Via::Relay(addr) => self.relays.get(addr, &self.roles),
            // Stream and DTLS clients are written by their modules, never directly.
            Via::Stream(_) | Via::Dtls(_) => None,
        }
    }
}

/// Queue one datagram on the socket the core named. A datagram whose socket is
/// gone (closed between the core's decision and now) is counted, not sent.
/// Returns whether it was queued.
fn send_via<P: PacketIo>(
    io: &mut P,
    sockets: &mut Sockets,
    via: Via,
    to: SocketAddr,
    payload: &[u8],
) -> bool {
    // Without the feature there is no DTLS client: `route` finds no socket
    // for `Via::Dtls` and the datagram is counted below.
    #[cfg(feature = "dtls")]
    if let Via::Dtls(local) = via {
        return match &mut sockets.dtls {
            Some(dtls) => dtls.send(io, local, to, payload),
            None => {
                sockets.unroutable += 1;
                false
            }
        };
    }
    if let Via::Stream(local) = via {
        return match &mut sockets.streams {
            Some(streams) => {
                streams.send(io.stream_ring(), local, to, payload);
                true
            }
            None => {
                sockets.unroutable += 1;
                false
            }
        };
    }
    match sockets.route(via) {
        Some(id) => {
            io.send(id, to, payload);
            true
        }
        None => {
            sockets.unroutable += 1;
            tracing::trace!(?via, "no socket for forward");
            false
        }
    }
}

fn log_event(worker: usize, event: &Event) {
    match event {
        Event::AllocationCreated {
            relayed, lifetime, ..
        } => tracing::debug!(
            worker,
            relayed_v4 = ?relayed[0],
            relayed_v6 = ?relayed[1],
            lifetime_s = lifetime.as_secs(),
            "allocation created"
        ),
        Event::AllocationDeleted {
            reason,
            age,
            packets_to_peer,
            packets_to_client,
            ..
        } => {
            tracing::debug!(
                worker,
                ?reason,
                age_s = age.as_secs(),
                packets_to_peer,
                packets_to_client,
                "allocation deleted"
            )
        }
        other => tracing::debug!(worker, event = ?std::mem::discriminant(other), "event"),
    }
}

/// The OS side of one worker's core: relay sockets in this worker's back end,
/// quotas and reservations in the relay-wide [`Shared`].
struct WorkerHost<'w, P: PacketIo> {
    io: &'w mut P,
    sockets: &'w mut Sockets,
    shared: &'w Shared,
}

impl<P: PacketIo> WorkerHost<'_, P> {
    /// Start receiving on a relay socket bound to `addr`.
    fn adopt(&mut self, addr: SocketAddr, socket: UdpSocket) -> Result<(), BindError> {
        match self.io.add_socket(socket) {
            Ok(id) => {
                let sockets = &mut *self.sockets;
                sockets.relays.insert(addr, id, &sockets.roles);
                sockets.set_role(id, Role::Relay(addr));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "could not register relay socket");
                Err(BindError::Other)
            }
        }
    }

    /// Stop receiving on the relay socket bound to `addr` and hand it back.
    fn release(&mut self, addr: SocketAddr) -> Option<UdpSocket> {
        let sockets = &mut *self.sockets;
        let id = sockets.relays.remove(addr, &sockets.roles)?;
        sockets.set_role(id, Role::Free);
        match self.io.remove_socket(id) {
            Ok(socket) => Some(socket),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "could not deregister relay socket");
                None
            }
        }
    }
}

impl<P: PacketIo> Host for WorkerHost<'_, P> {
    fn bind_relay(&mut self, addr: SocketAddr) -> Result<(), BindError> {
        match bind_udp(addr, &SocketOptions::RELAY) {
            Ok(socket) => self.adopt(addr, socket),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(BindError::InUse),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "could not bind relay socket");
                Err(BindError::Other)
            }
        }
    }

    fn close_relay(&mut self, addr: SocketAddr) {
        // Dropping the socket closes it.
        drop(self.release(addr));
    }

    fn reserve_relay(&mut self, token: [u8; 8], addr: SocketAddr) {
        if let Some(socket) = self.release(addr) {
            self.shared.reserve(token, socket);
        }
    }

    fn claim_reserved(&mut self, token: [u8; 8]) -> Option<SocketAddr> {
        let socket = self.shared.take_reservation(token)?;
        let addr = socket.local_addr().ok()?;
        self.adopt(addr, socket).ok()?;
        Some(addr)
    }

    fn cancel_reservation(&mut self, token: [u8; 8]) {
        drop(self.shared.take_reservation(token));
    }

    fn acquire_allocation(&mut self, user: &str) -> Result<(), QuotaError> {
        self.shared.acquire(user)
    }

    fn release_allocation(&mut self, user: &str) {
        self.shared.release(user);
    }

    fn bind_relay_tcp(&mut self, addr: SocketAddr) -> Result<(), BindError> {
        match tern_io::socket::bind_tcp_listener(addr, 128) {
            Ok(socket) => {
                self.sockets.stream_ops.push(StreamOp::Listen(socket, addr));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(BindError::InUse),
            Err(e) => {
                tracing::warn!(%addr, error = %e, "could not bind a TCP relayed address");
                Err(BindError::Other)
            }
        }
    }

    fn close_relay_tcp(&mut self, addr: SocketAddr) {
        self.sockets.stream_ops.push(StreamOp::Unlisten(addr));
    }

    fn connect_peer(&mut self, id: ConnectionId, relay: SocketAddr, peer: SocketAddr) {
        self.sockets
            .stream_ops
            .push(StreamOp::Connect(id.0, relay, peer));
    }

    fn close_peer_connection(&mut self, id: ConnectionId) {
        self.sockets.stream_ops.push(StreamOp::ClosePeer(id.0));
    }

    fn bind_data_connection(&mut self, id: ConnectionId, data: tern_turn::FiveTuple) {
        self.sockets.stream_ops.push(StreamOp::BindData(id.0, data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles_for(entries: &[(u32, SocketAddr)]) -> Vec<Role> {
        let mut roles = vec![Role::Free; 16];
        for &(id, addr) in entries {
            roles[id as usize] = Role::Relay(addr);
        }
        roles
    }

    #[test]
    fn relay_table_finds_sockets_by_address() {
        let a: SocketAddr = "10.0.0.1:50000".parse().unwrap();
        let b: SocketAddr = "[2001:db8::1]:50000".parse().unwrap();
        let mut t = RelayTable::new();
        let roles = roles_for(&[(3, a), (4, b)]);
        t.insert(a, SocketId(3), &roles);
        t.insert(b, SocketId(4), &roles);
        // Same port, other family: its own table.
        assert_eq!(t.get(a, &roles), Some(SocketId(3)));
        assert_eq!(t.get(b, &roles), Some(SocketId(4)));
        assert_eq!(t.get("10.0.0.1:50001".parse().unwrap(), &roles), None);
        assert!(t.overflow.is_empty());
        assert_eq!(t.remove(a, &roles), Some(SocketId(3)));
        let roles = roles_for(&[(4, b)]);
        assert_eq!(t.get(a, &roles), None);
        assert_eq!(t.remove(a, &roles), None);
        assert_eq!(t.get(b, &roles), Some(SocketId(4)));
    }

    #[test]
    fn relay_table_keeps_a_second_ip_on_the_same_port_apart() {
        let a: SocketAddr = "10.0.0.1:50000".parse().unwrap();
        let c: SocketAddr = "10.0.0.2:50000".parse().unwrap();
        let mut t = RelayTable::new();
        let roles = roles_for(&[(1, a), (2, c)]);
        t.insert(a, SocketId(1), &roles);
        t.insert(c, SocketId(2), &roles);
        assert_eq!(t.get(a, &roles), Some(SocketId(1)));
        assert_eq!(t.get(c, &roles), Some(SocketId(2)));
        assert_eq!(t.overflow.len(), 1);
        assert_eq!(t.remove(c, &roles), Some(SocketId(2)));
        assert_eq!(t.get(a, &roles), Some(SocketId(1)));
    }

    #[test]
    fn relay_table_ignores_a_stale_slot() {
        let a: SocketAddr = "10.0.0.1:50000".parse().unwrap();
        let mut t = RelayTable::new();
        let roles = roles_for(&[(1, a)]);
        t.insert(a, SocketId(1), &roles);
        // Socket 1 was freed and reused for another address behind the table's back.
        let other: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let roles = roles_for(&[(1, other)]);
        assert_eq!(t.get(a, &roles), None);
        // A freed slot is simply overwritten.
        let roles = roles_for(&[(5, a)]);
        t.insert(a, SocketId(5), &roles);
        assert_eq!(t.get(a, &roles), Some(SocketId(5)));
        assert!(t.overflow.is_empty());
    }
}
