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

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
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
    BindError, Credentials, Event, Forward, Host, QuotaError, Server, ServerConfig, Stats, Via,
    PEER_HEADROOM, PEER_TAILROOM,
};

use crate::metrics::{Counters, Reporter};
use crate::shared::Shared;

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
    /// Start or stop draining (refuse new allocations); `epoch` is echoed in reports.
    Draining { on: bool, epoch: u64 },
    /// Send a copy of the counters back.
    Stats(Sender<WorkerStats>),
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
}

/// Everything a worker thread starts with.
pub(crate) struct Setup {
    pub(crate) index: usize,
    pub(crate) core: Option<core_affinity::CoreId>,
    pub(crate) backend: BackendKind,
    pub(crate) listeners: Vec<UdpSocket>,
    pub(crate) server: ServerConfig,
    pub(crate) shared: Arc<Shared>,
    pub(crate) control: Receiver<Control>,
    pub(crate) reporter: Reporter,
    pub(crate) seed: [u8; 32],
    /// The AF_XDP socket's interface and queue (`io-backend = "xdp"`).
    pub(crate) xsk: Option<crate::xdp::XskSetup>,
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
    Relay(SocketAddr),
}

/// The worker's socket tables, separate from the back end so the [`Host`]
/// implementation can borrow both.
struct Sockets {
    roles: Vec<Role>,
    listeners: Vec<(SocketAddr, SocketId)>,
    relays: HashMap<SocketAddr, SocketId>,
    unroutable: u64,
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
}

impl<P: PacketIo> Worker<P> {
    fn new(mut io: P, setup: Setup) -> io::Result<Self> {
        let mut sockets = Sockets {
            roles: Vec::new(),
            listeners: Vec::new(),
            relays: HashMap::new(),
            unroutable: 0,
        };
        for socket in setup.listeners {
            let local = socket.local_addr()?;
            let id = io.add_socket(socket)?;
            sockets.set_role(id, Role::Listener(local));
            sockets.listeners.push((local, id));
        }
        let now = Instant::now();
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
            let deadline = match self.server.poll_timeout() {
                Some(t) => t.min(self.reporter.deadline()),
                None => self.reporter.deadline(),
            };
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
                },
            );
        }
        self.stop();
    }

    /// One loop turn after a wait: receive under the budget, then timers, then flush.
    fn turn(&mut self) {
        for _ in 0..RECV_BUDGET {
            if self.io.recv(&mut self.batch) == 0 {
                break;
            }
            let now = Instant::now();
            self.batch_at = now;
            self.handle_batch(now);
            self.drain_outputs();
        }
        let now = Instant::now();
        if self.server.poll_timeout().is_some_and(|t| t <= now) {
            let mut host = WorkerHost {
                io: &mut self.io,
                sockets: &mut self.sockets,
                shared: &self.shared,
            };
            self.server.handle_timeout(&mut host, now);
            self.drain_outputs();
        }
        self.io.flush();
    }

    /// Feed every datagram of the batch to the core and queue its forwards.
    fn handle_batch(&mut self, now: Instant) {
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
                // A datagram read just before its socket was closed.
                Role::Free => None,
            };
            if let Some(Forward { via, to, payload }) = forward {
                send_via(&mut self.io, &mut self.sockets, via, to, payload);
            }
        }
    }

    /// Send the core's control transmits and log its events.
    fn drain_outputs(&mut self) {
        while let Some(t) = self.server.poll_transmit() {
            send_via(&mut self.io, &mut self.sockets, t.via, t.to, &t.payload);
        }
        while let Some(event) = self.server.poll_event() {
            if let Event::AllocationCreated { .. } = event {
                let ns = self.batch_at.elapsed().as_nanos();
                self.reporter
                    .record_allocation(u64::try_from(ns).unwrap_or(u64::MAX));
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
                });
            }
            Control::Shutdown => {}
        }
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
            Via::Relay(addr) => self.relays.get(&addr).copied(),
        }
    }
}

/// Queue one datagram on the socket the core named. A datagram whose socket is
/// gone (closed between the core's decision and now) is counted, not sent.
fn send_via<P: PacketIo>(
    io: &mut P,
    sockets: &mut Sockets,
    via: Via,
    to: SocketAddr,
    payload: &[u8],
) {
    match sockets.route(via) {
        Some(id) => io.send(id, to, payload),
        None => {
            sockets.unroutable += 1;
            tracing::trace!(?via, "no socket for forward");
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
                self.sockets.set_role(id, Role::Relay(addr));
                self.sockets.relays.insert(addr, id);
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
        let id = self.sockets.relays.remove(&addr)?;
        self.sockets.set_role(id, Role::Free);
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
}
