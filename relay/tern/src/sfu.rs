//! The SFU forwarding plane on one worker: the routers placed on it, their
//! transports (each a UDP socket from the worker's slice of `sfu-ports`,
//! rtcp-mux, remote address given or learned, optional SRTP), and the
//! control commands the side thread sends it.
//!
//! The worker's hooks are small: a datagram on a socket whose role is
//! `Role::Sfu(transport)` goes to [`Shard::on_datagram`]; [`Shard::on_timeout`]
//! runs the routers' timers; [`Shard::command`] answers the control API. The
//! fan-out is written by the router into one preallocated [`Output`], SRTP
//! protected in place, and queued on the worker's `PacketIo` send queue, which
//! the loop flushes once per turn: nothing here allocates per packet.
//!
//! Owns: per-worker SFU state, the datagram path between a transport's socket
//! and its [`tern_sfu::Router`]. Must not touch: RTP/RTCP logic (tern-sfu),
//! HTTP and JSON (see [`api`]).

pub(crate) mod api;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use ahash::AHashMap;
use tern_io::socket::{bind_udp, SocketOptions};
use tern_io::{PacketIo, SocketId};
use tern_sfu::srtp::{SrtpContext, SrtpError, SrtpProfile};
use tern_sfu::{
    ConsumerId, ConsumerParams, DropReason, Event, Output, PacketKind, ProducerId, ProducerParams,
    Router, RouterConfig, RouterStats, TransportId,
};
use tern_turn::RelayPortRange;

use api::{
    ApiError, ConsumerSpec, ConsumerUpdate, ConsumerView, EncodingView, ProducerSpec, ProducerView,
    Reply, RouterView, SrtpSpec, TransportKind, TransportSpec, TransportView,
};

/// Packets one datagram's fan-out may produce (consumers of a producer, or
/// NACK answers of one RTCP packet); more are counted drops (`output_full`)
/// that the subscribers' NACKs repair.
const OUTPUT_PACKETS: usize = 1024;
/// One output slot: the router's largest packet (1500) and room for an SRTCP
/// tag and index.
const OUTPUT_SLOT: usize = 1536;

/// What a worker needs to serve SFU transports.
#[derive(Clone, Debug)]
pub(crate) struct ShardConfig {
    /// The address transports bind.
    pub(crate) ip: IpAddr,
    /// This worker's slice of `sfu-ports`.
    pub(crate) ports: RelayPortRange,
}

/// A control call from the side thread, with where to answer.
pub(crate) struct Command {
    pub(crate) op: Op,
    pub(crate) reply: crossbeam::channel::Sender<Result<Reply, ApiError>>,
}

/// What the control API asks a worker to do.
#[derive(Debug)]
pub(crate) enum Op {
    CreateRouter {
        router: u64,
    },
    DeleteRouter {
        router: u64,
    },
    GetRouter {
        router: u64,
    },
    CreateTransport {
        router: u64,
        spec: TransportSpec,
    },
    GetTransport {
        router: u64,
        transport: u32,
    },
    ConnectTransport {
        router: u64,
        transport: u32,
        remote: SocketAddr,
    },
    DeleteTransport {
        router: u64,
        transport: u32,
    },
    CreateProducer {
        router: u64,
        spec: ProducerSpec,
    },
    GetProducer {
        router: u64,
        producer: u64,
    },
    DeleteProducer {
        router: u64,
        producer: u64,
    },
    CreateConsumer {
        router: u64,
        spec: ConsumerSpec,
    },
    GetConsumer {
        router: u64,
        consumer: u64,
    },
    UpdateConsumer {
        router: u64,
        consumer: u64,
        update: ConsumerUpdate,
    },
    DeleteConsumer {
        router: u64,
        consumer: u64,
    },
}

/// Low-cardinality SFU counters of one worker, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SfuCounters {
    pub(crate) routers: u64,
    pub(crate) transports: u64,
    pub(crate) producers: u64,
    pub(crate) consumers: u64,
    pub(crate) packets_in: u64,
    pub(crate) bytes_in: u64,
    pub(crate) packets_out: u64,
    pub(crate) bytes_out: u64,
    pub(crate) rtp_forwarded: u64,
    pub(crate) retransmitted: u64,
    pub(crate) nack_misses: u64,
    pub(crate) upstream_nacks: u64,
    pub(crate) key_frame_requests: u64,
    pub(crate) srtp_auth_failures: u64,
    pub(crate) srtp_replays: u64,
    /// Drops by [`SfuDrop::index`].
    pub(crate) drops: [u64; SfuDrop::ALL.len()],
}

impl SfuCounters {
    pub(crate) fn merge(&mut self, o: &SfuCounters) {
        self.routers += o.routers;
        self.transports += o.transports;
        self.producers += o.producers;
        self.consumers += o.consumers;
        self.packets_in += o.packets_in;
        self.bytes_in += o.bytes_in;
        self.packets_out += o.packets_out;
        self.bytes_out += o.bytes_out;
        self.rtp_forwarded += o.rtp_forwarded;
        self.retransmitted += o.retransmitted;
        self.nack_misses += o.nack_misses;
        self.upstream_nacks += o.upstream_nacks;
        self.key_frame_requests += o.key_frame_requests;
        self.srtp_auth_failures += o.srtp_auth_failures;
        self.srtp_replays += o.srtp_replays;
        for (a, b) in self.drops.iter_mut().zip(o.drops) {
            *a += b;
        }
    }

    fn add_router(&mut self, s: &RouterStats) {
        self.rtp_forwarded += s.rtp_forwarded;
        self.retransmitted += s.retransmitted;
        self.nack_misses += s.nack_misses;
        self.upstream_nacks += s.upstream_nacks_sent;
        self.key_frame_requests += s.key_frame_requests_sent;
        for r in DropReason::ALL {
            if let Some(d) = SfuDrop::from_router(r) {
                self.drops[d.index()] += s.dropped(r);
            }
        }
    }
}

/// Why an SFU datagram was dropped (a metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SfuDrop {
    MalformedRtp,
    MalformedRtcp,
    UnknownSsrc,
    UnknownPayloadType,
    TooLarge,
    OutputFull,
    /// From another address than the transport's remote.
    WrongSource,
    /// To a transport whose remote is not known yet.
    NoRemote,
    /// To a pipe transport that is not connected yet (a pipe never learns
    /// its remote from what arrives).
    PipeNotConnected,
    /// SRTP/SRTCP that did not authenticate.
    SrtpAuth,
    /// SRTP/SRTCP replayed or older than the replay window.
    SrtpReplay,
    /// SRTP/SRTCP otherwise unusable (too short, bad header, too many SSRCs).
    SrtpOther,
}

impl SfuDrop {
    pub(crate) const ALL: [SfuDrop; 12] = [
        SfuDrop::MalformedRtp,
        SfuDrop::MalformedRtcp,
        SfuDrop::UnknownSsrc,
        SfuDrop::UnknownPayloadType,
        SfuDrop::TooLarge,
        SfuDrop::OutputFull,
        SfuDrop::WrongSource,
        SfuDrop::NoRemote,
        SfuDrop::PipeNotConnected,
        SfuDrop::SrtpAuth,
        SfuDrop::SrtpReplay,
        SfuDrop::SrtpOther,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            SfuDrop::MalformedRtp => "malformed_rtp",
            SfuDrop::MalformedRtcp => "malformed_rtcp",
            SfuDrop::UnknownSsrc => "unknown_ssrc",
            SfuDrop::UnknownPayloadType => "unknown_payload_type",
            SfuDrop::TooLarge => "too_large",
            SfuDrop::OutputFull => "output_full",
            SfuDrop::WrongSource => "wrong_source",
            SfuDrop::NoRemote => "no_remote",
            SfuDrop::PipeNotConnected => "pipe_not_connected",
            SfuDrop::SrtpAuth => "srtp_auth",
            SfuDrop::SrtpReplay => "srtp_replay",
            SfuDrop::SrtpOther => "srtp_other",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    fn from_router(r: DropReason) -> Option<SfuDrop> {
        Some(match r {
            DropReason::MalformedRtp => SfuDrop::MalformedRtp,
            DropReason::MalformedRtcp => SfuDrop::MalformedRtcp,
            DropReason::UnknownSsrc => SfuDrop::UnknownSsrc,
            DropReason::UnknownPayloadType => SfuDrop::UnknownPayloadType,
            DropReason::TooLarge => SfuDrop::TooLarge,
            DropReason::OutputFull => SfuDrop::OutputFull,
            _ => return None,
        })
    }

    fn from_srtp(e: SrtpError) -> SfuDrop {
        match e {
            SrtpError::AuthFailed => SfuDrop::SrtpAuth,
            SrtpError::Replayed | SrtpError::TooOld => SfuDrop::SrtpReplay,
            _ => SfuDrop::SrtpOther,
        }
    }
}

/// A transport's own counters (the API shows them).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TransportStats {
    pub(crate) packets_in: u64,
    pub(crate) bytes_in: u64,
    pub(crate) packets_out: u64,
    pub(crate) bytes_out: u64,
    pub(crate) rtcp_in: u64,
    pub(crate) dropped: u64,
    pub(crate) srtp_auth_failures: u64,
    pub(crate) srtp_replays: u64,
}

struct Srtp {
    profile: SrtpProfile,
    /// Unprotects what the remote sends.
    rx: SrtpContext,
    /// Protects what we send.
    tx: SrtpContext,
}

struct Transport {
    router: u64,
    kind: TransportKind,
    socket: SocketId,
    local: SocketAddr,
    remote: Option<SocketAddr>,
    /// The remote was given by the API (else it is learned from the first
    /// packet that passes SRTP, when SRTP is on).
    fixed_remote: bool,
    srtp: Option<Box<Srtp>>,
    stats: TransportStats,
}

struct ProducerEntry {
    id: ProducerId,
    spec: ProducerSpec,
}

struct ConsumerEntry {
    id: ConsumerId,
    producer: u64,
    spec: ConsumerSpec,
}

struct RouterEntry {
    router: Router,
    transports: Vec<u32>,
    producers: AHashMap<u64, ProducerEntry>,
    consumers: AHashMap<u64, ConsumerEntry>,
}

/// One worker's SFU: its routers and transports.
pub(crate) struct Shard {
    worker: usize,
    config: ShardConfig,
    next_port: u16,
    next_transport: u32,
    routers: AHashMap<u64, RouterEntry>,
    transports: AHashMap<u32, Transport>,
    out: Output,
    counters: SfuCounters,
    /// Router counters of deleted routers, so totals never go backwards.
    retired: SfuCounters,
}

impl Shard {
    pub(crate) fn new(worker: usize, config: ShardConfig) -> Shard {
        Shard {
            worker,
            next_port: config.ports.lo(),
            config,
            next_transport: 1,
            routers: AHashMap::new(),
            transports: AHashMap::new(),
            out: Output::new(OUTPUT_PACKETS, OUTPUT_SLOT),
            counters: SfuCounters::default(),
            retired: SfuCounters::default(),
        }
    }

    /// One datagram that arrived on transport `id`'s socket from `source`.
    /// SRTP is removed in place in `data`.
    pub(crate) fn on_datagram<P: PacketIo>(
        &mut self,
        io: &mut P,
        id: u32,
        source: SocketAddr,
        data: &mut [u8],
        now: Instant,
    ) {
        let Some(t) = self.transports.get_mut(&id) else {
            return;
        };
        self.counters.packets_in += 1;
        self.counters.bytes_in += data.len() as u64;
        t.stats.packets_in += 1;
        t.stats.bytes_in += data.len() as u64;
        if t.remote.is_some_and(|r| r != source) {
            t.stats.dropped += 1;
            self.counters.drops[SfuDrop::WrongSource.index()] += 1;
            return;
        }
        if t.remote.is_none() && t.kind == TransportKind::Pipe {
            t.stats.dropped += 1;
            self.counters.drops[SfuDrop::PipeNotConnected.index()] += 1;
            return;
        }
        let rtcp = tern_sfu::rtcp::is_rtcp(data);
        let len = match &mut t.srtp {
            None => data.len(),
            Some(s) => {
                let r = if rtcp {
                    s.rx.unprotect_rtcp(data)
                } else {
                    s.rx.unprotect_rtp(data)
                };
                match r {
                    Ok(n) => n,
                    Err(e) => {
                        let why = SfuDrop::from_srtp(e);
                        match why {
                            SfuDrop::SrtpAuth => {
                                t.stats.srtp_auth_failures += 1;
                                self.counters.srtp_auth_failures += 1;
                            }
                            SfuDrop::SrtpReplay => {
                                t.stats.srtp_replays += 1;
                                self.counters.srtp_replays += 1;
                            }
                            _ => {}
                        }
                        t.stats.dropped += 1;
                        self.counters.drops[why.index()] += 1;
                        return;
                    }
                }
            }
        };
        if t.remote.is_none() {
            t.remote = Some(source);
            tracing::debug!(
                worker = self.worker,
                transport = id,
                "SFU transport remote learned"
            );
        }
        if rtcp {
            t.stats.rtcp_in += 1;
        }
        let Some(entry) = self.routers.get_mut(&t.router) else {
            return;
        };
        // The router counts its drops in its own stats.
        if entry
            .router
            .handle_input(now, TransportId(id), &data[..len], &mut self.out)
            .is_err()
        {
            t.stats.dropped += 1;
        }
        drain_events(entry);
        self.send_output(io);
    }

    /// The earliest router deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.routers
            .values()
            .filter_map(|r| r.router.poll_timeout())
            .min()
    }

    /// Run every router whose deadline has come.
    pub(crate) fn on_timeout<P: PacketIo>(&mut self, io: &mut P, now: Instant) {
        let mut any = false;
        for entry in self.routers.values_mut() {
            if entry.router.poll_timeout().is_some_and(|t| t <= now) {
                entry.router.handle_timeout(now, &mut self.out);
                drain_events(entry);
                any = true;
                if self.out.len() * 2 >= OUTPUT_PACKETS {
                    send_output(&mut self.out, &mut self.transports, &mut self.counters, io);
                }
            }
        }
        if any {
            self.send_output(io);
        }
    }

    fn send_output<P: PacketIo>(&mut self, io: &mut P) {
        send_output(&mut self.out, &mut self.transports, &mut self.counters, io);
    }

    /// The counters for the next report: live gauges and router totals.
    pub(crate) fn counters(&self) -> SfuCounters {
        let mut c = self.counters;
        c.merge(&self.retired);
        c.routers = self.routers.len() as u64;
        c.transports = self.transports.len() as u64;
        c.producers = 0;
        c.consumers = 0;
        for r in self.routers.values() {
            let (p, k) = r.router.counts();
            c.producers += p as u64;
            c.consumers += k as u64;
            c.add_router(r.router.stats());
        }
        c
    }

    /// Answer one control call. `set_role` records (or clears, with `None`)
    /// which transport a registered socket belongs to.
    pub(crate) fn command<P: PacketIo>(
        &mut self,
        cmd: Command,
        io: &mut P,
        set_role: &mut dyn FnMut(SocketId, Option<u32>),
    ) {
        let result = self.apply(cmd.op, io, set_role);
        if let Err(e) = &result {
            tracing::debug!(worker = self.worker, status = e.status, message = %e.message, "SFU control refused");
        }
        let _caller_may_have_timed_out = cmd.reply.send(result);
    }

    fn apply<P: PacketIo>(
        &mut self,
        op: Op,
        io: &mut P,
        set_role: &mut dyn FnMut(SocketId, Option<u32>),
    ) -> Result<Reply, ApiError> {
        match op {
            Op::CreateRouter { router } => {
                self.routers.insert(
                    router,
                    RouterEntry {
                        router: Router::new(RouterConfig::default()),
                        transports: Vec::new(),
                        producers: AHashMap::new(),
                        consumers: AHashMap::new(),
                    },
                );
                tracing::info!(worker = self.worker, router, "SFU router created");
                Ok(Reply::Router(self.router_view(router)?))
            }
            Op::GetRouter { router } => Ok(Reply::Router(self.router_view(router)?)),
            Op::DeleteRouter { router } => {
                let entry = self
                    .routers
                    .remove(&router)
                    .ok_or_else(|| no_router(router))?;
                for t in &entry.transports {
                    self.close_transport(*t, io, set_role);
                }
                self.retired.add_router(entry.router.stats());
                tracing::info!(worker = self.worker, router, "SFU router deleted");
                Ok(Reply::Deleted)
            }
            Op::CreateTransport { router, spec } => {
                self.router(router)?;
                let id = self.open_transport(router, &spec, io, set_role)?;
                self.routers
                    .get_mut(&router)
                    .ok_or_else(|| no_router(router))?
                    .transports
                    .push(id);
                Ok(Reply::Transport(self.transport_view(router, id)?))
            }
            Op::GetTransport { router, transport } => {
                Ok(Reply::Transport(self.transport_view(router, transport)?))
            }
            Op::ConnectTransport {
                router,
                transport,
                remote,
            } => {
                self.transport_view(router, transport)?;
                let t = self
                    .transports
                    .get_mut(&transport)
                    .ok_or_else(|| no_transport(transport))?;
                if t.fixed_remote && t.remote != Some(remote) {
                    return Err(ApiError::new(
                        409,
                        format!(
                            "transport {transport} is already connected to another remote; delete and recreate it to move it"
                        ),
                    ));
                }
                t.remote = Some(remote);
                t.fixed_remote = true;
                tracing::debug!(
                    worker = self.worker,
                    router,
                    transport,
                    "SFU transport connected"
                );
                Ok(Reply::Transport(self.transport_view(router, transport)?))
            }
            Op::DeleteTransport { router, transport } => {
                self.transport_view(router, transport)?;
                let entry = self.router_mut(router)?;
                entry.transports.retain(|t| *t != transport);
                let producers: Vec<u64> = entry
                    .producers
                    .iter()
                    .filter(|(_, p)| p.spec.transport == transport)
                    .map(|(k, _)| *k)
                    .collect();
                let consumers: Vec<u64> = entry
                    .consumers
                    .iter()
                    .filter(|(_, c)| c.spec.transport == transport)
                    .map(|(k, _)| *k)
                    .collect();
                for c in consumers {
                    remove_consumer(entry, c);
                }
                for p in producers {
                    remove_producer(entry, p);
                }
                self.close_transport(transport, io, set_role);
                Ok(Reply::Deleted)
            }
            Op::CreateProducer { router, spec } => {
                self.transport_view(router, spec.transport)?;
                let entry = self.router_mut(router)?;
                let id = entry
                    .router
                    .add_producer(spec.params())
                    .map_err(|e| ApiError::new(409, e.to_string()))?;
                entry.producers.insert(id.get(), ProducerEntry { id, spec });
                Ok(Reply::Producer(producer_view(router, entry, id.get())?))
            }
            Op::GetProducer { router, producer } => Ok(Reply::Producer(producer_view(
                router,
                self.router(router)?,
                producer,
            )?)),
            Op::DeleteProducer { router, producer } => {
                let entry = self.router_mut(router)?;
                if !entry.producers.contains_key(&producer) {
                    return Err(no_producer(producer));
                }
                remove_producer(entry, producer);
                Ok(Reply::Deleted)
            }
            Op::CreateConsumer { router, spec } => {
                let kind = self.transport_view(router, spec.transport)?.kind;
                let entry = self.router_mut(router)?;
                let producer = entry
                    .producers
                    .get(&spec.producer)
                    .ok_or_else(|| no_producer(spec.producer))?
                    .id;
                let added = match (kind, spec.ssrc) {
                    (TransportKind::Pipe, None) => {
                        check_pipe_consumer(&spec)?;
                        entry
                            .router
                            .add_pipe_consumer(producer, TransportId(spec.transport))
                    }
                    (TransportKind::Pipe, Some(_)) => {
                        return Err(ApiError::new(
                            400,
                            "ssrc: a consumer on a pipe transport keeps the producer's SSRCs; leave it out",
                        ))
                    }
                    (TransportKind::Plain, Some(ssrc)) => {
                        let params: ConsumerParams = spec.params(producer, ssrc);
                        entry.router.add_consumer(params)
                    }
                    (TransportKind::Plain, None) => {
                        return Err(ApiError::new(
                            400,
                            "ssrc: required for a consumer on a plain transport",
                        ))
                    }
                };
                let id = added.map_err(|e| ApiError::new(409, e.to_string()))?;
                if spec.paused && kind == TransportKind::Pipe {
                    let _just_added = entry.router.pause_consumer(id);
                }
                entry.consumers.insert(
                    id.get(),
                    ConsumerEntry {
                        id,
                        producer: spec.producer,
                        spec,
                    },
                );
                Ok(Reply::Consumer(consumer_view(router, entry, id.get())?))
            }
            Op::GetConsumer { router, consumer } => Ok(Reply::Consumer(consumer_view(
                router,
                self.router(router)?,
                consumer,
            )?)),
            Op::UpdateConsumer {
                router,
                consumer,
                update,
            } => {
                let entry = self.router_mut(router)?;
                let c = entry
                    .consumers
                    .get_mut(&consumer)
                    .ok_or_else(|| no_consumer(consumer))?;
                let id = c.id;
                let refused = |e: tern_sfu::RouterError| ApiError::new(409, e.to_string());
                if c.spec.ssrc.is_none()
                    && (update.preferred_spatial_layer.is_some()
                        || update.preferred_temporal_layer.is_some())
                {
                    return Err(ApiError::new(
                        400,
                        "a pipe consumer sends every layer; preferred layers apply on the far router's consumers",
                    ));
                }
                if update.preferred_spatial_layer.is_some()
                    || update.preferred_temporal_layer.is_some()
                {
                    if let Some(s) = update.preferred_spatial_layer {
                        c.spec.preferred_spatial_layer = s;
                    }
                    if let Some(t) = update.preferred_temporal_layer {
                        c.spec.preferred_temporal_layer = t;
                    }
                    let (s, t) = (
                        c.spec.preferred_spatial_layer,
                        c.spec.preferred_temporal_layer,
                    );
                    entry
                        .router
                        .set_preferred_layers(id, s, t)
                        .map_err(refused)?;
                }
                match update.paused {
                    Some(true) => entry.router.pause_consumer(id).map_err(refused)?,
                    Some(false) => entry.router.resume_consumer(id).map_err(refused)?,
                    None => {}
                }
                Ok(Reply::Consumer(consumer_view(router, entry, consumer)?))
            }
            Op::DeleteConsumer { router, consumer } => {
                let entry = self.router_mut(router)?;
                if !entry.consumers.contains_key(&consumer) {
                    return Err(no_consumer(consumer));
                }
                remove_consumer(entry, consumer);
                Ok(Reply::Deleted)
            }
        }
    }

    fn router(&self, router: u64) -> Result<&RouterEntry, ApiError> {
        self.routers.get(&router).ok_or_else(|| no_router(router))
    }

    fn router_mut(&mut self, router: u64) -> Result<&mut RouterEntry, ApiError> {
        self.routers
            .get_mut(&router)
            .ok_or_else(|| no_router(router))
    }

    fn open_transport<P: PacketIo>(
        &mut self,
        router: u64,
        spec: &TransportSpec,
        io: &mut P,
        set_role: &mut dyn FnMut(SocketId, Option<u32>),
    ) -> Result<u32, ApiError> {
        let srtp = match &spec.srtp {
            None => None,
            Some(s) => Some(Box::new(srtp_contexts(s)?)),
        };
        let (socket, local) = self.bind_port()?;
        let sid = io.add_socket(socket).map_err(|e| {
            tracing::warn!(error = %e, "could not register SFU socket");
            ApiError::new(503, format!("cannot register the transport's socket: {e}"))
        })?;
        let id = self.next_transport;
        self.next_transport = self.next_transport.wrapping_add(1).max(1);
        set_role(sid, Some(id));
        self.transports.insert(
            id,
            Transport {
                router,
                kind: spec.kind,
                socket: sid,
                local,
                remote: spec.remote,
                fixed_remote: spec.remote.is_some(),
                srtp,
                stats: TransportStats::default(),
            },
        );
        tracing::debug!(worker = self.worker, router, transport = id, %local, "SFU transport created");
        Ok(id)
    }

    /// A socket on the next free port of this worker's slice.
    fn bind_port(&mut self) -> Result<(std::net::UdpSocket, SocketAddr), ApiError> {
        let (lo, hi) = (self.config.ports.lo(), self.config.ports.hi());
        for _ in 0..self.config.ports.len() {
            let port = self.next_port;
            self.next_port = if port >= hi { lo } else { port + 1 };
            let addr = SocketAddr::new(self.config.ip, port);
            match bind_udp(addr, &SocketOptions::RELAY) {
                Ok(s) => return Ok((s, addr)),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => {
                    return Err(ApiError::new(
                        503,
                        format!("cannot bind an SFU port on {}: {e}", self.config.ip),
                    ))
                }
            }
        }
        Err(ApiError::new(
            503,
            format!("no free port in this worker's sfu-ports slice {lo}-{hi}"),
        ))
    }

    fn close_transport<P: PacketIo>(
        &mut self,
        id: u32,
        io: &mut P,
        set_role: &mut dyn FnMut(SocketId, Option<u32>),
    ) {
        let Some(t) = self.transports.remove(&id) else {
            return;
        };
        set_role(t.socket, None);
        // Dropping the socket closes it.
        if let Err(e) = io.remove_socket(t.socket) {
            tracing::warn!(error = %e, "could not deregister SFU socket");
        }
    }

    fn router_view(&self, router: u64) -> Result<RouterView, ApiError> {
        let entry = self.router(router)?;
        let mut transports = Vec::with_capacity(entry.transports.len());
        for &t in &entry.transports {
            transports.push(self.transport_view(router, t)?);
        }
        let mut producers: Vec<u64> = entry.producers.keys().copied().collect();
        producers.sort_unstable();
        let mut consumers: Vec<u64> = entry.consumers.keys().copied().collect();
        consumers.sort_unstable();
        let s = entry.router.stats();
        Ok(RouterView {
            id: router,
            worker: self.worker,
            transports,
            producers: producers
                .into_iter()
                .map(|p| producer_view(router, entry, p))
                .collect::<Result<_, _>>()?,
            consumers: consumers
                .into_iter()
                .map(|c| consumer_view(router, entry, c))
                .collect::<Result<_, _>>()?,
            stats: api::RouterStatsView {
                rtp_received: s.rtp_received,
                rtp_forwarded: s.rtp_forwarded,
                rtcp_received: s.rtcp_received,
                retransmitted: s.retransmitted,
                nack_misses: s.nack_misses,
                key_frame_requests_sent: s.key_frame_requests_sent,
                upstream_nacks_sent: s.upstream_nacks_sent,
                receiver_reports_sent: s.receiver_reports_sent,
                sender_reports_forwarded: s.sender_reports_forwarded,
                source_descriptions_sent: s.source_descriptions_sent,
                drops: DropReason::ALL
                    .iter()
                    .map(|r| (r.as_str().to_owned(), s.dropped(*r)))
                    .collect(),
            },
        })
    }

    fn transport_view(&self, router: u64, id: u32) -> Result<TransportView, ApiError> {
        let t = self
            .transports
            .get(&id)
            .filter(|t| t.router == router)
            .ok_or_else(|| no_transport(id))?;
        Ok(TransportView {
            id,
            router,
            kind: t.kind,
            local: t.local.to_string(),
            remote: t.remote.map(|r| r.to_string()),
            remote_fixed: t.fixed_remote,
            srtp: t
                .srtp
                .as_ref()
                .map(|s| api::profile_name(s.profile).to_owned()),
            stats: api::TransportStatsView::from(&t.stats),
        })
    }
}

/// Send what the router wrote: SRTP in place where the transport has it,
/// queued on the transport's socket to its remote, then forget it.
fn send_output<P: PacketIo>(
    out: &mut Output,
    transports: &mut AHashMap<u32, Transport>,
    counters: &mut SfuCounters,
    io: &mut P,
) {
    for i in 0..out.len() {
        let Some((tx, _)) = out.get(i) else {
            break;
        };
        let Some(t) = transports.get_mut(&tx.transport.0) else {
            continue;
        };
        let Some(remote) = t.remote else {
            t.stats.dropped += 1;
            counters.drops[SfuDrop::NoRemote.index()] += 1;
            continue;
        };
        if let Some(srtp) = &mut t.srtp {
            let Some((slot, len)) = out.slot_mut(i) else {
                continue;
            };
            let protected = match tx.kind {
                PacketKind::Rtp => srtp.tx.protect_rtp(slot, len),
                PacketKind::Rtcp => srtp.tx.protect_rtcp(slot, len),
            };
            match protected {
                Ok(n) => out.set_len(i, n),
                Err(e) => {
                    t.stats.dropped += 1;
                    counters.drops[SfuDrop::from_srtp(e).index()] += 1;
                    continue;
                }
            }
        }
        let Some((_, bytes)) = out.get(i) else {
            continue;
        };
        io.send(t.socket, remote, bytes);
        t.stats.packets_out += 1;
        t.stats.bytes_out += bytes.len() as u64;
        counters.packets_out += 1;
        counters.bytes_out += bytes.len() as u64;
    }
    out.clear();
}

/// Follow the router's events (a consumer closed with its producer).
fn drain_events(entry: &mut RouterEntry) {
    while let Some(ev) = entry.router.poll_event() {
        match ev {
            Event::ConsumerClosed { consumer } => {
                entry.consumers.remove(&consumer.get());
            }
            other => tracing::debug!(event = ?other, "SFU router event"),
        }
    }
}

fn remove_consumer(entry: &mut RouterEntry, consumer: u64) {
    if let Some(c) = entry.consumers.remove(&consumer) {
        let _already_gone_with_its_producer = entry.router.remove_consumer(c.id);
    }
}

fn remove_producer(entry: &mut RouterEntry, producer: u64) {
    if let Some(p) = entry.producers.remove(&producer) {
        let _already_gone = entry.router.remove_producer(p.id);
        entry.consumers.retain(|_, c| c.producer != producer);
        drain_events(entry);
    }
}

fn producer_view(router: u64, entry: &RouterEntry, id: u64) -> Result<ProducerView, ApiError> {
    let p = entry.producers.get(&id).ok_or_else(|| no_producer(id))?;
    let encodings = entry
        .router
        .producer_stats(p.id)
        .ok_or_else(|| no_producer(id))?
        .zip(&p.spec.encodings)
        .map(|(s, e)| EncodingView {
            ssrc: s.ssrc.map(|s| s.get()),
            rid: e.rid.clone(),
            packets: s.packets,
            bytes: s.bytes,
            lost: s.lost,
            jitter: s.jitter,
            key_frames: s.key_frames,
            nacks_sent: s.nacks_sent,
            recovered: s.recovered,
        })
        .collect();
    Ok(ProducerView {
        id,
        router,
        transport: p.spec.transport,
        kind: p.spec.kind,
        codec: p.spec.codec,
        clock_rate: p.spec.clock_rate,
        payload_types: p.spec.payload_types.clone(),
        encodings,
    })
}

fn consumer_view(router: u64, entry: &RouterEntry, id: u64) -> Result<ConsumerView, ApiError> {
    let c = entry.consumers.get(&id).ok_or_else(|| no_consumer(id))?;
    let s = entry
        .router
        .consumer_stats(c.id)
        .ok_or_else(|| no_consumer(id))?;
    Ok(ConsumerView::new(id, router, &c.spec, &s))
}

fn srtp_contexts(s: &SrtpSpec) -> Result<Srtp, ApiError> {
    let profile = s.profile;
    let (key_len, salt_len) = (profile.master_key_len(), profile.master_salt_len());
    let split = |name: &str, k: &[u8]| -> Result<(Vec<u8>, Vec<u8>), ApiError> {
        if k.len() != key_len + salt_len {
            return Err(ApiError::new(
                400,
                format!(
                    "srtp.{name}: {} bytes of key and salt, {} needs {}",
                    k.len(),
                    api::profile_name(profile),
                    key_len + salt_len
                ),
            ));
        }
        Ok((k[..key_len].to_vec(), k[key_len..].to_vec()))
    };
    let (rk, rs) = split("recv_key", &s.recv_key)?;
    let (tk, ts) = split("send_key", &s.send_key)?;
    let bad = |e: SrtpError| ApiError::new(400, format!("srtp: {e}"));
    Ok(Srtp {
        profile,
        rx: SrtpContext::new(profile, &rk, &rs).map_err(bad)?,
        tx: SrtpContext::new(profile, &tk, &ts).map_err(bad)?,
    })
}

fn no_router(id: u64) -> ApiError {
    ApiError::new(404, format!("no router {id}"))
}

fn no_transport(id: u32) -> ApiError {
    ApiError::new(404, format!("no transport {id} in this router"))
}

fn no_producer(id: u64) -> ApiError {
    ApiError::new(404, format!("no producer {id} in this router"))
}

fn no_consumer(id: u64) -> ApiError {
    ApiError::new(404, format!("no consumer {id} in this router"))
}

// `ProducerParams` is built from the validated spec on the worker.
impl ProducerSpec {
    fn params(&self) -> ProducerParams {
        ProducerParams {
            transport: TransportId(self.transport),
            kind: self.kind.into(),
            codec: self.codec.into(),
            clock_rate: self.clock_rate,
            payload_types: self
                .payload_types
                .iter()
                .filter_map(|&p| tern_sfu::PayloadType::new(p))
                .collect(),
            encodings: self
                .encodings
                .iter()
                .map(|e| tern_sfu::EncodingParams {
                    ssrc: e.ssrc.map(tern_sfu::Ssrc::new),
                    rid: e.rid.clone(),
                    rtx_ssrc: e.rtx_ssrc.map(tern_sfu::Ssrc::new),
                })
                .collect(),
            rid_extension_id: self.rid_extension_id,
            mid_extension_id: self.mid_extension_id,
            mid: self.mid.clone(),
            key_frame_request: self.key_frame_request.into(),
            retransmit_capacity: self.retransmit_capacity,
            nack: self.nack,
            rtx_payload_types: rtx_map(&self.rtx_payload_types, |m| (m.rtx, m.apt)),
            repaired_rid_extension_id: self.repaired_rid_extension_id,
        }
    }
}

/// A consumer on a pipe takes nothing but its producer, transport and
/// paused state: everything else is the producer's own.
fn check_pipe_consumer(spec: &ConsumerSpec) -> Result<(), ApiError> {
    let extra = [
        ("payload_types", !spec.payload_types.is_empty()),
        (
            "preferred_spatial_layer",
            spec.preferred_spatial_layer.is_some(),
        ),
        (
            "preferred_temporal_layer",
            spec.preferred_temporal_layer.is_some(),
        ),
        ("rtx_ssrc", spec.rtx_ssrc.is_some()),
        ("rtx_payload_types", !spec.rtx_payload_types.is_empty()),
    ];
    match extra.iter().find(|(_, given)| *given) {
        Some((name, _)) => Err(ApiError::new(
            400,
            format!("{name}: a consumer on a pipe transport forwards the producer's RTP as it arrived; leave it out"),
        )),
        None => Ok(()),
    }
}

impl ConsumerSpec {
    fn params(&self, producer: ProducerId, ssrc: u32) -> ConsumerParams {
        ConsumerParams {
            producer,
            transport: TransportId(self.transport),
            ssrc: tern_sfu::Ssrc::new(ssrc),
            payload_types: self
                .payload_types
                .iter()
                .filter_map(|m| {
                    Some((
                        tern_sfu::PayloadType::new(m.producer)?,
                        tern_sfu::PayloadType::new(m.consumer)?,
                    ))
                })
                .collect(),
            preferred_spatial: self.preferred_spatial_layer,
            preferred_temporal: self.preferred_temporal_layer,
            paused: self.paused,
            initial_seq: tern_sfu::SeqNo::new(rand::random()),
            initial_timestamp: rand::random(),
            rtx_ssrc: self.rtx_ssrc.map(tern_sfu::Ssrc::new),
            // The consumer's map is (media, rtx).
            rtx_payload_types: rtx_map(&self.rtx_payload_types, |m| (m.apt, m.rtx)),
        }
    }
}

/// Payload type pairs from the API's RTX maps (validated to 0..=127).
fn rtx_map(
    maps: &[api::RtxMap],
    pair: impl Fn(&api::RtxMap) -> (u8, u8),
) -> Vec<(tern_sfu::PayloadType, tern_sfu::PayloadType)> {
    maps.iter()
        .filter_map(|m| {
            let (a, b) = pair(m);
            Some((
                tern_sfu::PayloadType::new(a)?,
                tern_sfu::PayloadType::new(b)?,
            ))
        })
        .collect()
}
