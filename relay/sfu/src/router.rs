//! The forwarding core: one [`Router`] per room, on one worker.
//!
//! Owns: producers (incoming streams, their simulcast encodings and
//! retransmission buffers), consumers (one producer's media to one
//! transport, with their own SSRC, payload types, layers, pause state and
//! sequence/timestamp continuity), RTCP handling (SR rewrite, RR stats,
//! NACK answers, PLI/FIR forwarding with a throttle, the SDES that names
//! a consumer's RTX stream) and the key-frame requests that layer switches
//! need. Must not touch: sockets, the clock,
//! SRTP. Packets and `now` come in; transmits go into the caller's
//! [`Output`], events are polled, and [`Router::poll_timeout`] says when to
//! call [`Router::handle_timeout`].
//!
//! Hot path (`handle_rtp`): one hash lookup (transport, SSRC), a copy into
//! the producer's retransmission ring, then per consumer a decision, a copy
//! into the output slot and four in-place header writes. No allocation.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use tracing::{debug, trace};

use crate::codec::{vp8, Codec, FrameInfo};
use crate::loss::{Arrival, MissingList};
use crate::output::{Output, PacketKind};
use crate::retransmit::RetransmitBuffer;
use crate::rtcp::{self, ReportBlock, RtcpPacket, SenderInfo};
use crate::rtp::{RtpHeaderMut, RtpPacket};
use crate::seq::{ticks, SeqMapper, TimestampMapper, WrapMapper};
use crate::stats::{ConsumerStats, DropReason, EncodingStats, RouterStats};
use crate::types::{PayloadType, SeqNo, SeqUnwrapper, Ssrc};

/// Most simulcast encodings one producer may have.
pub const MAX_ENCODINGS: usize = 8;
/// How often [`Router::handle_timeout`] does its periodic work.
pub const TICK: Duration = Duration::from_millis(100);
/// Sent packets a consumer remembers for answering NACKs (a power of two).
const HISTORY: usize = 1024;
/// How often the router sends receiver reports to each producer.
pub const RR_INTERVAL: Duration = Duration::from_secs(1);
/// Recent SRs a consumer remembers for RTT from LSR/DLSR.
const SR_MEMORY: usize = 4;
const NO_PT: u8 = 0xFF;

/// A transport, as the caller names it (the daemon's socket/5-tuple handle).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransportId(pub u32);

/// A producer in a [`Router`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProducerId(u64);

/// A consumer in a [`Router`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConsumerId(u64);

impl ProducerId {
    /// The raw id (stable for the producer's life, not reused soon after).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl ConsumerId {
    /// The raw id (stable for the consumer's life, not reused soon after).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Audio or video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// Audio.
    Audio,
    /// Video.
    Video,
}

/// How a producer is asked for a key frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum KeyFrameRequest {
    /// Picture loss indication (RFC 4585).
    #[default]
    Pli,
    /// Full intra request (RFC 5104).
    Fir,
}

/// Router settings.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// SSRC the router uses as the sender of its own RTCP (RR, PLI, FIR).
    pub feedback_ssrc: Ssrc,
    /// At most one key frame request per encoding in this interval.
    pub key_frame_request_interval: Duration,
    /// NACKs for packets older than this are not answered. Two seconds by
    /// default: on a 400 ms RTT path a receiver's NACK can leave a second
    /// after the packet (AVPF paces it to its RTCP interval) and still be in
    /// time for a jitter buffer sized for that path.
    pub retransmit_max_age: Duration,
    /// An encoding with no packet for this long is not chosen as a target.
    pub encoding_inactive_after: Duration,
    /// Largest packet a retransmission buffer slot holds.
    pub max_packet_size: usize,
    /// Events kept until polled; beyond that they are counted and dropped.
    pub event_capacity: usize,
    /// Interval between NACKs for the same missing upstream packet.
    pub nack_retry_interval: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            feedback_ssrc: Ssrc::new(0x7465_726E), // "tern"
            key_frame_request_interval: Duration::from_millis(500),
            retransmit_max_age: Duration::from_secs(2),
            encoding_inactive_after: Duration::from_secs(1),
            max_packet_size: 1500,
            event_capacity: 1024,
            nack_retry_interval: Duration::from_millis(100),
        }
    }
}

/// One simulcast encoding of a producer, lowest first.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct EncodingParams {
    /// Its SSRC, when signalled.
    pub ssrc: Option<Ssrc>,
    /// Its RID (RFC 8851), when the SSRC is to be learned from the RID
    /// header extension.
    pub rid: Option<String>,
    /// SSRC of its RTX stream (RFC 4588), when signalled; a RID-signalled
    /// encoding's RTX SSRC is learned from the repaired-RID extension.
    pub rtx_ssrc: Option<Ssrc>,
}

/// What a producer sends.
#[derive(Clone, Debug)]
pub struct ProducerParams {
    /// Transport the media arrives on.
    pub transport: TransportId,
    /// Audio or video.
    pub kind: MediaKind,
    /// Codec (decides key-frame and layer awareness).
    pub codec: Codec,
    /// RTP clock rate in Hz.
    pub clock_rate: u32,
    /// Payload types it may use.
    pub payload_types: Vec<PayloadType>,
    /// Encodings, lowest spatial layer first (one for a plain stream).
    pub encodings: Vec<EncodingParams>,
    /// Header extension id of RID (urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id).
    pub rid_extension_id: Option<u8>,
    /// Header extension id of MID (urn:ietf:params:rtp-hdrext:sdes:mid).
    pub mid_extension_id: Option<u8>,
    /// The MID this producer's packets carry, when several share a transport.
    pub mid: Option<String>,
    /// PLI or FIR.
    pub key_frame_request: KeyFrameRequest,
    /// Retransmission buffer size in packets per encoding (0: no NACK answers).
    pub retransmit_capacity: usize,
    /// The producer answers generic NACKs (`a=rtcp-fb:* nack`): the router
    /// NACKs packets missing upstream.
    pub nack: bool,
    /// RTX payload types and the media payload type each repairs
    /// (`a=fmtp:RTX apt=MEDIA`), as (rtx, apt).
    pub rtx_payload_types: Vec<(PayloadType, PayloadType)>,
    /// Header extension id of the repaired RID
    /// (urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id).
    pub repaired_rid_extension_id: Option<u8>,
}

/// What a consumer receives.
#[derive(Clone, Debug)]
pub struct ConsumerParams {
    /// The producer whose media it receives.
    pub producer: ProducerId,
    /// Transport it is sent on.
    pub transport: TransportId,
    /// Its own SSRC.
    pub ssrc: Ssrc,
    /// Payload type map, producer's → consumer's. Empty: the producer's own.
    pub payload_types: Vec<(PayloadType, PayloadType)>,
    /// Preferred encoding (spatial layer); `None` for the highest.
    pub preferred_spatial: Option<u8>,
    /// Preferred highest temporal layer; `None` for all.
    pub preferred_temporal: Option<u8>,
    /// Start paused.
    pub paused: bool,
    /// First outgoing sequence number (pick at random in production).
    pub initial_seq: SeqNo,
    /// First outgoing timestamp (pick at random in production).
    pub initial_timestamp: u32,
    /// Send retransmissions as RTX (RFC 4588) on this SSRC instead of
    /// repeating them on the consumer's own SSRC. The router then names both
    /// SSRCs in an RTCP SDES with one CNAME (RFC 4588 §5.2), with the first
    /// forwarded packet and every [`RR_INTERVAL`] after, so that a receiver
    /// validating new SSRCs (RFC 3550 §6.2.1, A.1) takes the RTX stream's
    /// first packet at once instead of holding it for a second one.
    pub rtx_ssrc: Option<Ssrc>,
    /// The consumer's RTX payload type for each of its media payload types,
    /// as (media, rtx). Media types without one are retransmitted plainly.
    pub rtx_payload_types: Vec<(PayloadType, PayloadType)>,
}

/// Something the caller may want to act on or log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A consumer now sends another encoding or temporal layer set.
    LayersChanged {
        /// The consumer.
        consumer: ConsumerId,
        /// Encoding now sent.
        spatial: Option<u8>,
        /// Highest temporal layer now sent (`None`: all).
        temporal: Option<u8>,
    },
    /// An encoding's SSRC was learned from its RID header extension.
    EncodingBound {
        /// The producer.
        producer: ProducerId,
        /// Encoding index.
        encoding: u8,
        /// Its SSRC.
        ssrc: Ssrc,
    },
    /// A consumer was removed because its producer was.
    ConsumerClosed {
        /// The consumer.
        consumer: ConsumerId,
    },
}

/// Why a control call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// No such producer.
    #[error("no producer {0:?}")]
    UnknownProducer(ProducerId),
    /// No such consumer.
    #[error("no consumer {0:?}")]
    UnknownConsumer(ConsumerId),
    /// A producer needs 1..=8 encodings.
    #[error("a producer needs 1 to {MAX_ENCODINGS} encodings, got {0}")]
    EncodingCount(usize),
    /// An encoding has neither SSRC nor RID, or a RID without the extension id.
    #[error("encoding {0} needs an SSRC, or a RID and rid_extension_id")]
    EncodingUnaddressable(usize),
    /// The SSRC is already in use on that transport.
    #[error("SSRC {0} is already in use on this transport")]
    SsrcInUse(Ssrc),
    /// The clock rate is zero.
    #[error("clock rate must be positive")]
    ClockRate,
    /// No payload types.
    #[error("a producer needs at least one payload type")]
    NoPayloadTypes,
    /// The consumer's payload type map leaves out one of the producer's.
    #[error("payload type {0} of the producer has no mapping for the consumer")]
    UnmappedPayloadType(u8),
    /// The producer already has a pipe consumer on that transport.
    #[error("the producer is already piped to this transport")]
    AlreadyPiped,
}

/// The forwarding core of one room.
#[derive(Debug)]
pub struct Router {
    config: RouterConfig,
    producers: Slab<Producer>,
    consumers: Slab<Consumer>,
    /// (transport, SSRC) → producer stream (media or RTX).
    producer_streams: AHashMap<(TransportId, Ssrc), StreamRef>,
    /// Where an RTX packet is rebuilt as the packet it repairs.
    rtx_scratch: Box<[u8]>,
    /// (transport, SSRC) → consumer.
    consumer_streams: AHashMap<(TransportId, Ssrc), ConsumerId>,
    events: VecDeque<Event>,
    stats: RouterStats,
    epoch: Option<Instant>,
    last_now: Option<Instant>,
    next_tick: Option<Instant>,
    /// Something asked for work before the next tick (a key frame request).
    urgent: bool,
    /// Earliest upstream NACK due, if any packet is missing.
    nack_due: Option<Instant>,
    next_rr: Option<Instant>,
}

impl Router {
    /// An empty router.
    pub fn new(config: RouterConfig) -> Self {
        let events = VecDeque::with_capacity(config.event_capacity);
        let rtx_scratch = vec![0; config.max_packet_size].into_boxed_slice();
        Self {
            config,
            producers: Slab::default(),
            consumers: Slab::default(),
            producer_streams: AHashMap::new(),
            rtx_scratch,
            consumer_streams: AHashMap::new(),
            events,
            stats: RouterStats::default(),
            epoch: None,
            last_now: None,
            next_tick: None,
            urgent: false,
            nack_due: None,
            next_rr: None,
        }
    }

    /// Add a producer.
    pub fn add_producer(&mut self, params: ProducerParams) -> Result<ProducerId, RouterError> {
        let n = params.encodings.len();
        if n == 0 || n > MAX_ENCODINGS {
            return Err(RouterError::EncodingCount(n));
        }
        if params.clock_rate == 0 {
            return Err(RouterError::ClockRate);
        }
        if params.payload_types.is_empty() {
            return Err(RouterError::NoPayloadTypes);
        }
        for (i, e) in params.encodings.iter().enumerate() {
            let by_rid = e.rid.is_some() && params.rid_extension_id.is_some();
            if e.ssrc.is_none() && !by_rid {
                return Err(RouterError::EncodingUnaddressable(i));
            }
            for ssrc in [e.ssrc, e.rtx_ssrc].into_iter().flatten() {
                let dup = params.encodings[..i]
                    .iter()
                    .any(|o| o.ssrc == Some(ssrc) || o.rtx_ssrc == Some(ssrc))
                    || e.ssrc == e.rtx_ssrc;
                if dup
                    || self
                        .producer_streams
                        .contains_key(&(params.transport, ssrc))
                {
                    return Err(RouterError::SsrcInUse(ssrc));
                }
            }
        }
        let mut rtx_apt = [NO_PT; 128];
        for (rtx, apt) in &params.rtx_payload_types {
            rtx_apt[usize::from(rtx.get())] = apt.get();
        }
        let mut pts = [false; 128];
        for pt in &params.payload_types {
            pts[usize::from(pt.get())] = true;
        }
        let encodings = params
            .encodings
            .iter()
            .map(|e| Encoding::new(e, params.retransmit_capacity, self.config.max_packet_size))
            .collect();
        let producer = Producer {
            transport: params.transport,
            kind: params.kind,
            codec: params.codec,
            clock_rate: params.clock_rate,
            pts,
            encodings,
            rid_extension_id: params.rid_extension_id,
            mid_extension_id: params.mid_extension_id,
            mid: params.mid.map(|m| m.into_bytes().into_boxed_slice()),
            key_frame_request: params.key_frame_request,
            nack: params.nack,
            rtx_apt,
            repaired_rid_extension_id: params.repaired_rid_extension_id,
            consumers: Vec::new(),
        };
        let id = ProducerId(self.producers.insert(producer));
        for (i, e) in params.encodings.iter().enumerate() {
            for (ssrc, rtx) in [(e.ssrc, false), (e.rtx_ssrc, true)] {
                if let Some(ssrc) = ssrc {
                    let r = StreamRef {
                        producer: id,
                        encoding: i,
                        rtx,
                    };
                    self.producer_streams.insert((params.transport, ssrc), r);
                }
            }
        }
        debug!(producer = id.0, encodings = n, "producer added");
        Ok(id)
    }

    /// Remove a producer and every consumer of it (each reported as
    /// [`Event::ConsumerClosed`]).
    pub fn remove_producer(&mut self, id: ProducerId) -> Result<(), RouterError> {
        let p = self
            .producers
            .remove(id.0)
            .ok_or(RouterError::UnknownProducer(id))?;
        for e in &p.encodings {
            for ssrc in [e.ssrc(), e.rtx_ssrc()].into_iter().flatten() {
                self.producer_streams.remove(&(p.transport, ssrc));
            }
        }
        for cid in p.consumers {
            if let Some(c) = self.consumers.remove(cid.0) {
                self.forget_consumer_streams(cid, &c);
                self.push_event(Event::ConsumerClosed { consumer: cid });
            }
        }
        Ok(())
    }

    /// Add a consumer of a producer.
    pub fn add_consumer(&mut self, params: ConsumerParams) -> Result<ConsumerId, RouterError> {
        let producer = self
            .producers
            .get(params.producer.0)
            .ok_or(RouterError::UnknownProducer(params.producer))?;
        if self
            .consumer_streams
            .contains_key(&(params.transport, params.ssrc))
        {
            return Err(RouterError::SsrcInUse(params.ssrc));
        }
        let mut pt_map = [NO_PT; 128];
        if params.payload_types.is_empty() {
            for (i, &on) in producer.pts.iter().enumerate() {
                if on {
                    pt_map[i] = i as u8;
                }
            }
        } else {
            for (from, to) in &params.payload_types {
                pt_map[usize::from(from.get())] = to.get();
            }
            if let Some(i) = (0..128).find(|&i| producer.pts[i] && pt_map[i] == NO_PT) {
                return Err(RouterError::UnmappedPayloadType(i as u8));
            }
        }
        let switchable = producer.kind == MediaKind::Video && producer.codec.is_switchable_video();
        let preferred_spatial = params.preferred_spatial.unwrap_or(u8::MAX);
        let preferred_temporal = params.preferred_temporal.unwrap_or(u8::MAX);
        let target_spatial = choose_target(
            producer,
            preferred_spatial,
            self.last_now,
            self.config.encoding_inactive_after,
        );
        let consumer = Consumer {
            producer: params.producer,
            transport: params.transport,
            ssrc: params.ssrc,
            pt_map,
            switchable,
            pipe: false,
            paused: params.paused,
            preferred_spatial,
            target_spatial,
            current_spatial: None,
            target_temporal: preferred_temporal,
            current_temporal: preferred_temporal,
            seq: SeqMapper::new(params.initial_seq),
            ts: TimestampMapper::new(producer.clock_rate, params.initial_timestamp),
            needs_sync: true,
            vp8: (producer.codec == Codec::Vp8).then(Vp8Continuity::default),
            sr_offset: None,
            rtx: params.rtx_ssrc.map(|ssrc| {
                let mut map = [NO_PT; 128];
                for (media, rtx) in &params.rtx_payload_types {
                    map[usize::from(media.get())] = rtx.get();
                }
                ConsumerRtx {
                    ssrc,
                    pt_map: map,
                    next_seq: params.initial_seq.get() ^ 0x5A5A,
                    cname: consumer_cname(params.ssrc),
                }
            }),
            history: vec![HistoryEntry::default(); HISTORY].into_boxed_slice(),
            sr_sent: [(0, None); SR_MEMORY],
            sr_next: 0,
            stats: ConsumerStats {
                paused: params.paused,
                ..ConsumerStats::default()
            },
        };
        let id = ConsumerId(self.consumers.insert(consumer));
        self.consumer_streams
            .insert((params.transport, params.ssrc), id);
        if let Some(p) = self.producers.get_mut(params.producer.0) {
            p.consumers.push(id);
            if switchable && !params.paused {
                p.encodings[target_spatial].key_frame_wanted = true;
                self.urgent = true;
            }
        }
        debug!(
            consumer = id.0,
            producer = params.producer.0,
            "consumer added"
        );
        Ok(id)
    }

    /// Add a pipe consumer: the producer's media to a pipe transport that
    /// joins this router to another one (on another host), as it arrived.
    /// Every encoding goes through with its own SSRC, sequence numbers,
    /// timestamps, payload types and header extensions: no layer selection,
    /// no rewrite, so the far router can declare a producer with the same
    /// parameters. Feedback from the far side on the pipe is about those
    /// SSRCs: NACKs are answered from the producer's retransmission buffer
    /// (byte-identical), PLI/FIR go to the producer for that encoding, SRs
    /// are passed on unchanged and RR blocks fill the consumer's stats.
    pub fn add_pipe_consumer(
        &mut self,
        producer: ProducerId,
        transport: TransportId,
    ) -> Result<ConsumerId, RouterError> {
        let p = self
            .producers
            .get(producer.0)
            .ok_or(RouterError::UnknownProducer(producer))?;
        if p.consumers.iter().any(|c| {
            self.consumers
                .get(c.0)
                .is_some_and(|c| c.pipe && c.transport == transport)
        }) {
            return Err(RouterError::AlreadyPiped);
        }
        let ssrcs: Vec<Ssrc> = p.encodings.iter().filter_map(Encoding::ssrc).collect();
        if let Some(&taken) = ssrcs
            .iter()
            .find(|&&s| self.consumer_streams.contains_key(&(transport, s)))
        {
            return Err(RouterError::SsrcInUse(taken));
        }
        let consumer = Consumer {
            producer,
            transport,
            ssrc: Ssrc::new(0),
            pt_map: [NO_PT; 128],
            switchable: false,
            pipe: true,
            paused: false,
            preferred_spatial: u8::MAX,
            target_spatial: 0,
            current_spatial: None,
            target_temporal: u8::MAX,
            current_temporal: u8::MAX,
            seq: SeqMapper::new(SeqNo::new(0)),
            ts: TimestampMapper::new(p.clock_rate, 0),
            needs_sync: false,
            vp8: None,
            sr_offset: None,
            rtx: None,
            history: Box::default(),
            sr_sent: [(0, None); SR_MEMORY],
            sr_next: 0,
            stats: ConsumerStats::default(),
        };
        let id = ConsumerId(self.consumers.insert(consumer));
        for ssrc in ssrcs {
            self.consumer_streams.insert((transport, ssrc), id);
        }
        if let Some(p) = self.producers.get_mut(producer.0) {
            p.consumers.push(id);
        }
        debug!(
            consumer = id.0,
            producer = producer.0,
            "pipe consumer added"
        );
        Ok(id)
    }

    /// Remove a consumer.
    pub fn remove_consumer(&mut self, id: ConsumerId) -> Result<(), RouterError> {
        let c = self
            .consumers
            .remove(id.0)
            .ok_or(RouterError::UnknownConsumer(id))?;
        self.forget_consumer_streams(id, &c);
        if let Some(p) = self.producers.get_mut(c.producer.0) {
            p.consumers.retain(|&x| x != id);
        }
        Ok(())
    }

    /// True when the consumer is a pipe consumer.
    pub fn is_pipe_consumer(&self, id: ConsumerId) -> Option<bool> {
        self.consumers.get(id.0).map(|c| c.pipe)
    }

    /// Pause a consumer: nothing is sent to it until it is resumed.
    pub fn pause_consumer(&mut self, id: ConsumerId) -> Result<(), RouterError> {
        let c = self
            .consumers
            .get_mut(id.0)
            .ok_or(RouterError::UnknownConsumer(id))?;
        c.paused = true;
        c.stats.paused = true;
        Ok(())
    }

    /// Resume a consumer. Its stream continues right after the last packet it
    /// got (sequence numbers without a gap, timestamps advanced by the time
    /// paused); video waits for a key frame, which is requested.
    pub fn resume_consumer(&mut self, id: ConsumerId) -> Result<(), RouterError> {
        let c = self
            .consumers
            .get_mut(id.0)
            .ok_or(RouterError::UnknownConsumer(id))?;
        if !c.paused {
            return Ok(());
        }
        c.paused = false;
        c.stats.paused = false;
        c.needs_sync = true;
        if c.switchable {
            c.current_spatial = None;
            if let Some(p) = self.producers.get_mut(c.producer.0) {
                p.encodings[c.target_spatial].key_frame_wanted = true;
                self.urgent = true;
            }
        }
        Ok(())
    }

    /// Set a consumer's preferred layers (`None`: highest / all). A spatial
    /// change takes effect at the next key frame of the new encoding, which is
    /// requested; a temporal one at the next suitable frame.
    pub fn set_preferred_layers(
        &mut self,
        id: ConsumerId,
        spatial: Option<u8>,
        temporal: Option<u8>,
    ) -> Result<(), RouterError> {
        let c = self
            .consumers
            .get_mut(id.0)
            .ok_or(RouterError::UnknownConsumer(id))?;
        c.preferred_spatial = spatial.unwrap_or(u8::MAX);
        c.target_temporal = temporal.unwrap_or(u8::MAX);
        if let Some(p) = self.producers.get_mut(c.producer.0) {
            let target = choose_target(
                p,
                c.preferred_spatial,
                self.last_now,
                self.config.encoding_inactive_after,
            );
            c.target_spatial = target;
            if c.switchable && c.current_spatial != Some(target) && !c.paused {
                p.encodings[target].key_frame_wanted = true;
                self.urgent = true;
            }
        }
        Ok(())
    }

    /// Handle one datagram from a transport, RTP or RTCP (RFC 5761 demux).
    /// Returns how many packets were written to `out` for it.
    pub fn handle_input(
        &mut self,
        now: Instant,
        transport: TransportId,
        datagram: &[u8],
        out: &mut Output,
    ) -> Result<usize, DropReason> {
        if rtcp::is_rtcp(datagram) {
            let before = out.len();
            self.handle_rtcp(now, transport, datagram, out)?;
            Ok(out.len() - before)
        } else {
            self.handle_rtp(now, transport, datagram, out)
        }
    }

    /// Handle one RTP packet from a producer's transport: store it for
    /// retransmission and write one rewritten copy per consumer that should
    /// get it into `out`. Returns the number of copies written.
    pub fn handle_rtp(
        &mut self,
        now: Instant,
        transport: TransportId,
        packet: &[u8],
        out: &mut Output,
    ) -> Result<usize, DropReason> {
        self.observe(now);
        self.stats.rtp_received += 1;
        let pkt = match RtpPacket::parse(packet) {
            Ok(p) => p,
            Err(error) => {
                trace!(%error, "RTP dropped");
                return Err(self.count_drop(DropReason::MalformedRtp));
            }
        };
        if packet.len() > out.slot_size() {
            return Err(self.count_drop(DropReason::TooLarge));
        }
        let Some(stream) = self.lookup_or_bind(transport, &pkt) else {
            trace!(ssrc = %pkt.ssrc(), "RTP from unknown SSRC");
            return Err(self.count_drop(DropReason::UnknownSsrc));
        };
        if stream.rtx {
            return self.handle_rtx(now, stream, &pkt, out);
        }
        self.forward(now, stream.producer, stream.encoding, &pkt, out)
    }

    /// Rebuild an RTX packet (RFC 4588 §4) as the packet it repairs and
    /// forward that.
    fn handle_rtx(
        &mut self,
        now: Instant,
        stream: StreamRef,
        pkt: &RtpPacket<'_>,
        out: &mut Output,
    ) -> Result<usize, DropReason> {
        let Some(p) = self.producers.get_mut(stream.producer.0) else {
            return Err(self.count_drop(DropReason::UnknownSsrc));
        };
        let Some(apt) = PayloadType::new(p.rtx_apt[usize::from(pkt.payload_type().get())]) else {
            return Err(self.count_drop(DropReason::UnknownPayloadType));
        };
        let e = &mut p.encodings[stream.encoding];
        let Some(media_ssrc) = e.ssrc() else {
            return Err(self.count_drop(DropReason::UnknownSsrc));
        };
        let payload = pkt.payload();
        if payload.len() < 2 {
            // Padding-only RTX is bandwidth probing: nothing to repair.
            self.stats.rtx_padding_only += 1;
            return Ok(0);
        }
        e.rtx_packets += 1;
        self.stats.rtx_received += 1;
        let osn = SeqNo::new(u16::from_be_bytes([payload[0], payload[1]]));
        let header = pkt.header_len();
        let len = header + payload.len() - 2;
        let mut scratch = std::mem::take(&mut self.rtx_scratch);
        let result = match scratch.get_mut(..len) {
            None => Err(self.count_drop(DropReason::TooLarge)),
            Some(dst) => {
                dst[..header].copy_from_slice(&pkt.as_bytes()[..header]);
                dst[0] &= !0x20; // the RTX packet's padding is not the original's
                dst[header..].copy_from_slice(&payload[2..]);
                let rebuilt = RtpHeaderMut::new(dst).map(|mut h| {
                    h.set_ssrc(media_ssrc);
                    h.set_seq(osn);
                    h.set_payload_type(apt);
                });
                match rebuilt
                    .ok()
                    .and_then(|()| RtpPacket::parse(&scratch[..len]).ok())
                {
                    Some(original) => {
                        self.forward(now, stream.producer, stream.encoding, &original, out)
                    }
                    None => Err(self.count_drop(DropReason::MalformedRtp)),
                }
            }
        };
        self.rtx_scratch = scratch;
        result
    }

    /// Store a producer's packet and write it for every consumer that should
    /// get it.
    fn forward(
        &mut self,
        now: Instant,
        pid: ProducerId,
        enc_idx: usize,
        pkt: &RtpPacket<'_>,
        out: &mut Output,
    ) -> Result<usize, DropReason> {
        let packet = pkt.as_bytes();
        let epoch = self.epoch.unwrap_or(now);
        let Router {
            producers,
            consumers,
            events,
            stats,
            config,
            nack_due,
            ..
        } = self;
        let Some(producer) = producers.get_mut(pid.0) else {
            return Err(count(stats, DropReason::UnknownSsrc));
        };
        if !producer.pts[usize::from(pkt.payload_type().get())] {
            return Err(count(stats, DropReason::UnknownPayloadType));
        }
        let mut info = producer.codec.frame_info(pkt.payload());
        let clock_rate = producer.clock_rate;
        let nack = producer.nack;
        let encoding = &mut producer.encodings[enc_idx];
        if info.key_frame_start {
            // A key frame may open with several packets that each look like
            // its start (H.264: SPS, then the IDR slice's first fragment):
            // only the first of its timestamp starts it, so it counts once
            // and a switch never begins after its parameter sets.
            if encoding.key_frame_ts == Some(pkt.timestamp()) {
                info.key_frame_start = false;
            } else {
                encoding.key_frame_ts = Some(pkt.timestamp());
            }
        }
        let missing_before = encoding.missing.len();
        encoding.on_packet(now, epoch, clock_rate, pkt, info, nack);
        if encoding.missing.len() > missing_before {
            let due = now + crate::loss::REORDER_GRACE;
            *nack_due = Some(nack_due.map_or(due, |d| d.min(due)));
        }

        let mut forwarded = 0;
        for &cid in &producer.consumers {
            let Some(c) = consumers.get_mut(cid.0) else {
                continue;
            };
            if c.pipe {
                // As it arrived: the far router has the same parameters.
                if c.paused {
                    continue;
                }
                let written = out.push(c.transport, PacketKind::Rtp, Some(cid), |slot| {
                    let dst = slot.get_mut(..packet.len())?;
                    dst.copy_from_slice(packet);
                    Some(packet.len())
                });
                if written {
                    forwarded += 1;
                    c.stats.packets += 1;
                    c.stats.bytes += packet.len() as u64;
                    c.stats.payload_bytes += pkt.payload().len() as u64;
                } else {
                    count(stats, DropReason::OutputFull);
                }
                continue;
            }
            let Some(Forward {
                seq,
                ts,
                switched,
                picture_id,
                tl0_pic_idx,
            }) = c.decide(enc_idx, pkt, info, now, &producer.encodings)
            else {
                continue;
            };
            if switched {
                push_event(events, stats, config.event_capacity, c.layers_event(cid));
            }
            let pt = c.pt_map[usize::from(pkt.payload_type().get())];
            let Some(pt) = PayloadType::new(pt) else {
                continue;
            };
            c.history[usize::from(seq.get()) & (HISTORY - 1)] = HistoryEntry {
                valid: true,
                out_seq: seq.get(),
                in_seq: pkt.seq().get(),
                encoding: enc_idx as u8,
                ts_offset: c.ts.offset(),
                picture_id: picture_id.map_or(NONE16, |p| p),
                tl0_pic_idx: tl0_pic_idx.map_or(NONE16, u16::from),
            };
            if c.stats.packets == 0 {
                // The RTX stream is named before anything can need it.
                send_source_description(c, cid, out, stats);
            }
            let ssrc = c.ssrc;
            let header = pkt.header_len();
            let written = out.push(c.transport, PacketKind::Rtp, Some(cid), |slot| {
                let n = rewrite_into(slot, packet, ssrc, seq, ts, pt)?;
                if picture_id.is_some() || tl0_pic_idx.is_some() {
                    vp8::rewrite(&mut slot[header..n], picture_id, tl0_pic_idx);
                }
                Some(n)
            });
            if written {
                forwarded += 1;
                c.stats.packets += 1;
                c.stats.bytes += packet.len() as u64;
                c.stats.payload_bytes += pkt.payload().len() as u64;
            } else {
                count(stats, DropReason::OutputFull);
            }
        }
        stats.rtp_forwarded += forwarded as u64;
        Ok(forwarded)
    }

    /// Handle one RTCP compound packet from any transport: SRs from
    /// producers (rewritten to their consumers), RRs, NACKs, PLIs and FIRs
    /// from consumers. Packets before a malformed one are still used.
    pub fn handle_rtcp(
        &mut self,
        now: Instant,
        transport: TransportId,
        datagram: &[u8],
        out: &mut Output,
    ) -> Result<(), DropReason> {
        self.observe(now);
        self.stats.rtcp_received += 1;
        for item in rtcp::compound(datagram) {
            let packet = match item {
                Ok(p) => p,
                Err(error) => {
                    trace!(%error, "RTCP dropped");
                    return Err(self.count_drop(DropReason::MalformedRtcp));
                }
            };
            match packet {
                RtcpPacket::SenderReport(sr) => {
                    self.on_sender_report(now, transport, sr.sender_info(), out);
                    for block in sr.report_blocks() {
                        self.on_report_block(now, transport, block);
                    }
                }
                RtcpPacket::ReceiverReport(rr) => {
                    for block in rr.report_blocks() {
                        self.on_report_block(now, transport, block);
                    }
                }
                RtcpPacket::Nack(nack) => self.on_nack(now, transport, nack, out),
                RtcpPacket::Pli(pli) => {
                    self.on_key_frame_request(now, transport, pli.media, false, out)
                }
                RtcpPacket::Fir(fir) => {
                    for entry in fir.entries() {
                        self.on_key_frame_request(now, transport, entry.ssrc, true, out);
                    }
                }
                RtcpPacket::Remb(_) => self.stats.remb_ignored += 1,
                _ => self.stats.rtcp_ignored += 1,
            }
        }
        Ok(())
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called
    /// (`None` before the first input). A deadline at or before the last
    /// `now` seen means "as soon as possible".
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.urgent {
            return self.last_now.or(self.next_tick);
        }
        match (self.next_tick, self.nack_due) {
            (Some(t), Some(n)) => Some(t.min(n)),
            (t, n) => t.or(n),
        }
    }

    /// Periodic work: choose consumers' target encodings by which encodings
    /// are active, ask for the key frames that waiting consumers need, and
    /// send key frame requests the throttle held back.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Output) {
        self.observe(now);
        let tick_due = !matches!(self.next_tick, Some(t) if now < t);
        if tick_due {
            self.next_tick = Some(now + TICK);
            self.retarget(now);
        }
        self.urgent = false;
        let rr_due = !matches!(self.next_rr, Some(t) if now < t);
        if rr_due {
            self.next_rr = Some(now + RR_INTERVAL);
        }
        let Router {
            producers,
            consumers,
            stats,
            config,
            nack_due,
            ..
        } = self;
        *nack_due = None;
        if rr_due {
            for (i, c) in consumers.iter() {
                if c.rtx.is_some() && !c.paused && c.stats.packets > 0 {
                    send_source_description(c, ConsumerId(i), out, stats);
                }
            }
        }
        for (_, p) in producers.iter_mut() {
            for i in 0..p.encodings.len() {
                if p.encodings[i].key_frame_wanted {
                    request_key_frame(p, i, now, out, stats, config);
                }
                if p.nack {
                    send_upstream_nack(p, i, now, out, stats, config);
                    if let Some(due) = p.encodings[i].missing.next_due(config.nack_retry_interval) {
                        *nack_due = Some(nack_due.map_or(due, |d| d.min(due)));
                    }
                }
            }
            if rr_due {
                send_receiver_report(p, now, out, stats, config);
            }
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Router-wide counters.
    pub fn stats(&self) -> &RouterStats {
        &self.stats
    }

    /// One consumer's counters.
    pub fn consumer_stats(&self, id: ConsumerId) -> Option<ConsumerStats> {
        self.consumers.get(id.0).map(|c| c.stats)
    }

    /// One producer's per-encoding counters, lowest encoding first.
    pub fn producer_stats(
        &self,
        id: ProducerId,
    ) -> Option<impl Iterator<Item = EncodingStats> + '_> {
        self.producers
            .get(id.0)
            .map(|p| p.encodings.iter().map(Encoding::stats))
    }

    /// Every producer, for listing (the control API).
    pub fn producer_ids(&self) -> impl Iterator<Item = ProducerId> + '_ {
        self.producers.iter().map(|(id, _)| ProducerId(id))
    }

    /// Every consumer with the producer it consumes, for listing.
    pub fn consumer_ids(&self) -> impl Iterator<Item = (ConsumerId, ProducerId)> + '_ {
        self.consumers
            .iter()
            .map(|(id, c)| (ConsumerId(id), c.producer))
    }

    /// Number of producers and consumers.
    pub fn counts(&self) -> (usize, usize) {
        (self.producers.len(), self.consumers.len())
    }

    // ------------------------------------------------------------ helpers

    /// Forget the (transport, SSRC) keys that name consumer `id`: its own
    /// SSRC, or for a pipe consumer every encoding SSRC of its producer.
    fn forget_consumer_streams(&mut self, id: ConsumerId, c: &Consumer) {
        if c.pipe {
            self.consumer_streams
                .retain(|&(t, _), v| t != c.transport || *v != id);
        } else {
            self.consumer_streams.remove(&(c.transport, c.ssrc));
        }
    }

    fn observe(&mut self, now: Instant) {
        self.epoch.get_or_insert(now);
        self.last_now = Some(now);
        if self.next_tick.is_none() {
            self.next_tick = Some(now + TICK);
        }
    }

    fn count_drop(&mut self, reason: DropReason) -> DropReason {
        count(&mut self.stats, reason)
    }

    fn push_event(&mut self, event: Event) {
        push_event(
            &mut self.events,
            &mut self.stats,
            self.config.event_capacity,
            event,
        );
    }

    /// The producer stream of a packet, learning a RID-signalled encoding's
    /// SSRC from the packet's RID (and MID) header extensions.
    fn lookup_or_bind(&mut self, transport: TransportId, pkt: &RtpPacket<'_>) -> Option<StreamRef> {
        let ssrc = pkt.ssrc();
        if let Some(&found) = self.producer_streams.get(&(transport, ssrc)) {
            return Some(found);
        }
        if !pkt.has_extension() {
            return None;
        }
        let mut bound = None;
        for (raw, p) in self.producers.iter_mut() {
            if p.transport != transport {
                continue;
            }
            if let (Some(mid_id), Some(mid)) = (p.mid_extension_id, p.mid.as_deref()) {
                if pkt.extension(mid_id) != Some(mid) {
                    continue;
                }
            }
            // A media stream carries its RID; an RTX stream the RID it repairs.
            let media = p
                .rid_extension_id
                .and_then(|id| pkt.extension(id))
                .map(|r| (r, false));
            let repair = || {
                p.repaired_rid_extension_id
                    .and_then(|id| pkt.extension(id))
                    .map(|r| (r, true))
            };
            let Some((rid, rtx)) = media.or_else(repair) else {
                continue;
            };
            let free = |e: &Encoding| {
                if rtx {
                    e.rtx_ssrc().is_none()
                } else {
                    e.ssrc().is_none()
                }
            };
            let Some(i) = p
                .encodings
                .iter()
                .position(|e| free(e) && e.rid.as_deref() == Some(rid))
            else {
                continue;
            };
            if rtx {
                p.encodings[i].rtx_bound = Some(ssrc);
            } else {
                p.encodings[i].bound_ssrc = Some(ssrc);
            }
            bound = Some(StreamRef {
                producer: ProducerId(raw),
                encoding: i,
                rtx,
            });
            break;
        }
        let found = bound?;
        self.producer_streams.insert((transport, ssrc), found);
        if !found.rtx {
            // Pipe consumers hear feedback about the SSRC from now on.
            if let Some(p) = self.producers.get(found.producer.0) {
                for &cid in &p.consumers {
                    if let Some(c) = self.consumers.get(cid.0).filter(|c| c.pipe) {
                        self.consumer_streams
                            .entry((c.transport, ssrc))
                            .or_insert(cid);
                    }
                }
            }
            self.push_event(Event::EncodingBound {
                producer: found.producer,
                encoding: found.encoding as u8,
                ssrc,
            });
        }
        debug!(
            producer = found.producer.0,
            encoding = found.encoding,
            rtx = found.rtx,
            %ssrc,
            "stream bound by RID"
        );
        Some(found)
    }

    /// Recompute every consumer's target encoding and mark the key frames
    /// that consumers waiting for a switch need.
    fn retarget(&mut self, now: Instant) {
        let Router {
            producers,
            consumers,
            config,
            ..
        } = self;
        for (_, c) in consumers.iter_mut() {
            if !c.switchable || c.paused {
                continue;
            }
            let Some(p) = producers.get_mut(c.producer.0) else {
                continue;
            };
            c.target_spatial = choose_target(
                p,
                c.preferred_spatial,
                Some(now),
                config.encoding_inactive_after,
            );
            if c.current_spatial != Some(c.target_spatial) {
                p.encodings[c.target_spatial].key_frame_wanted = true;
            }
        }
    }

    fn on_sender_report(
        &mut self,
        now: Instant,
        transport: TransportId,
        info: SenderInfo,
        out: &mut Output,
    ) {
        let Some(&StreamRef {
            producer: pid,
            encoding: enc_idx,
            rtx: false,
        }) = self.producer_streams.get(&(transport, info.ssrc))
        else {
            return; // An SR from a consumer that also sends (or for RTX): only blocks matter.
        };
        let Router {
            producers,
            consumers,
            stats,
            ..
        } = self;
        let Some(p) = producers.get_mut(pid.0) else {
            return;
        };
        p.encodings[enc_idx].last_sr = Some((info, now));
        for &cid in &p.consumers {
            let Some(c) = consumers.get_mut(cid.0) else {
                continue;
            };
            if c.pipe {
                if c.paused {
                    continue;
                }
                let written = out.push(c.transport, PacketKind::Rtcp, Some(cid), |slot| {
                    rtcp::write_sender_report(slot, &info, &[]).ok()
                });
                if written {
                    c.sr_sent[c.sr_next] = (info.compact_ntp(), Some(now));
                    c.sr_next = (c.sr_next + 1) % SR_MEMORY;
                    stats.sender_reports_forwarded += 1;
                } else {
                    count(stats, DropReason::OutputFull);
                }
                continue;
            }
            let on_this = if c.switchable {
                c.current_spatial == Some(enc_idx)
            } else {
                enc_idx == 0
            };
            if c.paused || !on_this || c.stats.packets == 0 {
                continue;
            }
            let rewritten = SenderInfo {
                ssrc: c.ssrc,
                ntp: info.ntp,
                rtp_timestamp: info.rtp_timestamp.wrapping_add(c.ts.offset()),
                packet_count: c.stats.packets as u32,
                octet_count: c.stats.payload_bytes as u32,
            };
            let written = out.push(c.transport, PacketKind::Rtcp, Some(cid), |slot| {
                rtcp::write_sender_report(slot, &rewritten, &[]).ok()
            });
            if written {
                c.sr_sent[c.sr_next] = (rewritten.compact_ntp(), Some(now));
                c.sr_next = (c.sr_next + 1) % SR_MEMORY;
                stats.sender_reports_forwarded += 1;
            } else {
                count(stats, DropReason::OutputFull);
            }
        }
    }

    fn on_report_block(&mut self, now: Instant, transport: TransportId, block: ReportBlock) {
        let Some(&cid) = self.consumer_streams.get(&(transport, block.ssrc)) else {
            return;
        };
        let Some(c) = self.consumers.get_mut(cid.0) else {
            return;
        };
        self.stats.report_blocks_received += 1;
        c.stats.fraction_lost = block.fraction_lost;
        c.stats.cumulative_lost = block.cumulative_lost;
        c.stats.jitter = block.jitter;
        if block.last_sr != 0 {
            let sent = c
                .sr_sent
                .iter()
                .find(|(compact, at)| *compact == block.last_sr && at.is_some());
            if let Some(&(_, Some(at))) = sent {
                let dlsr = Duration::from_nanos(
                    u64::from(block.delay_since_last_sr) * 1_000_000_000 / 65_536,
                );
                c.stats.rtt = Some(now.saturating_duration_since(at).saturating_sub(dlsr));
            }
        }
    }

    fn on_nack(
        &mut self,
        now: Instant,
        transport: TransportId,
        nack: rtcp::Nack<'_>,
        out: &mut Output,
    ) {
        let Some(&cid) = self.consumer_streams.get(&(transport, nack.media)) else {
            count(&mut self.stats, DropReason::UnknownSsrc);
            return;
        };
        let Router {
            producers,
            consumers,
            stats,
            config,
            ..
        } = self;
        let Some(c) = consumers.get_mut(cid.0) else {
            return;
        };
        c.stats.nacks_received += 1;
        let Some(p) = producers.get(c.producer.0) else {
            return;
        };
        if c.pipe {
            // About one of the producer's own SSRCs: resend what it sent.
            let Some(e) = p.encodings.iter().find(|e| e.ssrc() == Some(nack.media)) else {
                return;
            };
            for seq in nack.lost() {
                let Some(original) = e.buffer.get(seq, now, config.retransmit_max_age) else {
                    c.stats.nack_misses += 1;
                    stats.nack_misses += 1;
                    continue;
                };
                let written = out.push(c.transport, PacketKind::Rtp, Some(cid), |slot| {
                    let dst = slot.get_mut(..original.len())?;
                    dst.copy_from_slice(original);
                    Some(original.len())
                });
                if written {
                    c.stats.retransmitted += 1;
                    stats.retransmitted += 1;
                } else {
                    count(stats, DropReason::OutputFull);
                    break;
                }
            }
            return;
        }
        for seq in nack.lost() {
            let entry = c.history[usize::from(seq.get()) & (HISTORY - 1)];
            let stored = if entry.valid && entry.out_seq == seq.get() {
                p.encodings[usize::from(entry.encoding)].buffer.get(
                    SeqNo::new(entry.in_seq),
                    now,
                    config.retransmit_max_age,
                )
            } else {
                None
            };
            let Some(original) = stored else {
                c.stats.nack_misses += 1;
                stats.nack_misses += 1;
                continue;
            };
            let Ok(orig) = RtpPacket::parse(original) else {
                continue;
            };
            let Some(pt) = PayloadType::new(c.pt_map[usize::from(orig.payload_type().get())])
            else {
                continue;
            };
            let ts = orig.timestamp().wrapping_add(entry.ts_offset);
            let header = orig.header_len();
            if let Some(rtx) = c.rtx.as_mut() {
                if let Some(rtx_pt) = PayloadType::new(rtx.pt_map[usize::from(pt.get())]) {
                    let picture_id = (entry.picture_id != NONE16).then_some(entry.picture_id);
                    let tl0 = (entry.tl0_pic_idx != NONE16).then_some(entry.tl0_pic_idx as u8);
                    let rtx_seq = SeqNo::new(rtx.next_seq);
                    let rtx_ssrc = rtx.ssrc;
                    let written = out.push(c.transport, PacketKind::Rtp, Some(cid), |slot| {
                        let payload = orig.payload();
                        let n = header + 2 + payload.len();
                        let dst = slot.get_mut(..n)?;
                        dst[..header].copy_from_slice(&original[..header]);
                        dst[0] &= !0x20;
                        dst[header..header + 2].copy_from_slice(&seq.get().to_be_bytes());
                        dst[header + 2..].copy_from_slice(payload);
                        let mut h = RtpHeaderMut::new(dst).ok()?;
                        h.set_ssrc(rtx_ssrc);
                        h.set_seq(rtx_seq);
                        h.set_timestamp(ts);
                        h.set_payload_type(rtx_pt);
                        if picture_id.is_some() || tl0.is_some() {
                            vp8::rewrite(&mut dst[header + 2..], picture_id, tl0);
                        }
                        Some(n)
                    });
                    if written {
                        rtx.next_seq = rtx.next_seq.wrapping_add(1);
                        c.stats.retransmitted += 1;
                        stats.retransmitted += 1;
                    } else {
                        count(stats, DropReason::OutputFull);
                        break;
                    }
                    continue;
                }
            }
            let ssrc = c.ssrc;
            let picture_id = (entry.picture_id != NONE16).then_some(entry.picture_id);
            let tl0_pic_idx = (entry.tl0_pic_idx != NONE16).then_some(entry.tl0_pic_idx as u8);
            let written = out.push(c.transport, PacketKind::Rtp, Some(cid), |slot| {
                let n = rewrite_into(slot, original, ssrc, seq, ts, pt)?;
                if picture_id.is_some() || tl0_pic_idx.is_some() {
                    vp8::rewrite(&mut slot[header..n], picture_id, tl0_pic_idx);
                }
                Some(n)
            });
            if written {
                c.stats.retransmitted += 1;
                stats.retransmitted += 1;
            } else {
                count(stats, DropReason::OutputFull);
                break;
            }
        }
    }

    fn on_key_frame_request(
        &mut self,
        now: Instant,
        transport: TransportId,
        media: Ssrc,
        fir: bool,
        out: &mut Output,
    ) {
        let Some(&cid) = self.consumer_streams.get(&(transport, media)) else {
            count(&mut self.stats, DropReason::UnknownSsrc);
            return;
        };
        let Router {
            producers,
            consumers,
            stats,
            config,
            ..
        } = self;
        let Some(c) = consumers.get_mut(cid.0) else {
            return;
        };
        if fir {
            c.stats.firs_received += 1;
        } else {
            c.stats.plis_received += 1;
        }
        if c.paused {
            return;
        }
        let Some(p) = producers.get_mut(c.producer.0) else {
            return;
        };
        if p.kind != MediaKind::Video {
            return;
        }
        let enc = if c.pipe {
            // The far side asks for the encoding it names.
            match p.encodings.iter().position(|e| e.ssrc() == Some(media)) {
                Some(i) => i,
                None => return,
            }
        } else if c.switchable {
            c.current_spatial.unwrap_or(c.target_spatial)
        } else {
            0
        };
        request_key_frame(p, enc, now, out, stats, config);
    }
}

// ------------------------------------------------------------ producer ----

#[derive(Debug)]
struct Producer {
    transport: TransportId,
    kind: MediaKind,
    codec: Codec,
    clock_rate: u32,
    pts: [bool; 128],
    encodings: Vec<Encoding>,
    rid_extension_id: Option<u8>,
    mid_extension_id: Option<u8>,
    mid: Option<Box<[u8]>>,
    key_frame_request: KeyFrameRequest,
    nack: bool,
    /// RTX payload type → the media payload type it repairs (`NO_PT`: none).
    rtx_apt: [u8; 128],
    repaired_rid_extension_id: Option<u8>,
    consumers: Vec<ConsumerId>,
}

/// What a (transport, SSRC) names: an encoding's media or RTX stream.
#[derive(Clone, Copy, Debug)]
struct StreamRef {
    producer: ProducerId,
    encoding: usize,
    rtx: bool,
}

/// A consumer's RTX stream.
#[derive(Clone, Debug)]
struct ConsumerRtx {
    ssrc: Ssrc,
    /// Consumer media payload type → its RTX payload type (`NO_PT`: none).
    pt_map: [u8; 128],
    next_seq: u16,
    /// The CNAME its SDES gives the media and the RTX SSRC alike.
    cname: [u8; CNAME_LEN],
}

/// Length of the CNAME the router gives a consumer with RTX.
const CNAME_LEN: usize = 13;

/// `tern-` and the consumer's media SSRC in hex: one per consumer (SSRCs
/// are unique in the receiver's session), the same for its RTX stream.
fn consumer_cname(ssrc: Ssrc) -> [u8; CNAME_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut c = *b"tern-00000000";
    for (i, b) in c[5..].iter_mut().enumerate() {
        *b = HEX[(ssrc.get() >> (28 - 4 * i) & 0xF) as usize];
    }
    c
}

/// Name a consumer's media and RTX SSRCs with one CNAME: an RR with no
/// blocks (a compound packet starts with a report) and the SDES. Nothing
/// for a consumer without RTX.
fn send_source_description(
    c: &Consumer,
    cid: ConsumerId,
    out: &mut Output,
    stats: &mut RouterStats,
) {
    let Some(rtx) = &c.rtx else {
        return;
    };
    let (media, rtx_ssrc, cname) = (c.ssrc, rtx.ssrc, rtx.cname);
    let written = out.push(c.transport, PacketKind::Rtcp, Some(cid), |slot| {
        let n = rtcp::write_receiver_report(slot, media, &[]).ok()?;
        let m = rtcp::write_sdes_cname(slot.get_mut(n..)?, &[media, rtx_ssrc], &cname).ok()?;
        Some(n + m)
    });
    if written {
        stats.source_descriptions_sent += 1;
    } else {
        count(stats, DropReason::OutputFull);
    }
}

#[derive(Debug)]
struct Encoding {
    ssrc: Option<Ssrc>,
    rid: Option<Box<[u8]>>,
    bound_ssrc: Option<Ssrc>,
    unwrap: SeqUnwrapper,
    first_ext: Option<u64>,
    buffer: RetransmitBuffer,
    packets: u64,
    bytes: u64,
    key_frames: u64,
    /// RTP timestamp of the latest key frame start.
    key_frame_ts: Option<u32>,
    last_packet_at: Option<Instant>,
    /// RFC 3550 A.8 jitter, scaled by 16.
    jitter_q4: u32,
    last_transit: Option<u32>,
    last_sr: Option<(SenderInfo, Instant)>,
    key_frame_wanted: bool,
    last_key_frame_request: Option<Instant>,
    fir_seq: u8,
    missing: MissingList,
    rtx_ssrc: Option<Ssrc>,
    rtx_bound: Option<Ssrc>,
    rtx_packets: u64,
    nacks_sent: u64,
    recovered: u64,
    /// Expected and received at the previous RR (for its fraction lost).
    expected_prior: u64,
    received_prior: u64,
}

impl Encoding {
    fn new(p: &EncodingParams, capacity: usize, slot: usize) -> Self {
        Self {
            ssrc: p.ssrc,
            rid: p.rid.as_ref().map(|r| r.as_bytes().into()),
            bound_ssrc: None,
            unwrap: SeqUnwrapper::new(),
            first_ext: None,
            buffer: RetransmitBuffer::new(capacity, slot),
            packets: 0,
            bytes: 0,
            key_frames: 0,
            key_frame_ts: None,
            last_packet_at: None,
            jitter_q4: 0,
            last_transit: None,
            last_sr: None,
            key_frame_wanted: false,
            last_key_frame_request: None,
            fir_seq: 0,
            missing: MissingList::new(),
            rtx_ssrc: p.rtx_ssrc,
            rtx_bound: None,
            rtx_packets: 0,
            nacks_sent: 0,
            recovered: 0,
            expected_prior: 0,
            received_prior: 0,
        }
    }

    fn ssrc(&self) -> Option<Ssrc> {
        self.ssrc.or(self.bound_ssrc)
    }

    fn rtx_ssrc(&self) -> Option<Ssrc> {
        self.rtx_ssrc.or(self.rtx_bound)
    }

    fn on_packet(
        &mut self,
        now: Instant,
        epoch: Instant,
        clock_rate: u32,
        pkt: &RtpPacket<'_>,
        info: FrameInfo,
        nack: bool,
    ) {
        let highest_before = self.unwrap.highest();
        let ext = self.unwrap.unwrap(pkt.seq());
        if nack && self.missing.on_packet(ext, highest_before, now) == Arrival::Recovered {
            self.recovered += 1;
        }
        self.first_ext = Some(self.first_ext.map_or(ext.get(), |f| f.min(ext.get())));
        self.packets += 1;
        self.bytes += pkt.as_bytes().len() as u64;
        self.last_packet_at = Some(now);
        let arrival = ticks(now.saturating_duration_since(epoch), clock_rate);
        let transit = arrival.wrapping_sub(pkt.timestamp());
        if let Some(last) = self.last_transit {
            let d = (transit.wrapping_sub(last) as i32).unsigned_abs();
            // J += (|D| - J) / 16, in units of 1/16 (RFC 3550 A.8).
            self.jitter_q4 = self
                .jitter_q4
                .wrapping_add(d)
                .wrapping_sub((self.jitter_q4 + 8) >> 4);
        }
        self.last_transit = Some(transit);
        if info.key_frame_start {
            self.key_frames += 1;
            self.key_frame_wanted = false;
        }
        self.buffer.insert(ext, pkt.as_bytes(), now);
    }

    fn expected(&self) -> u64 {
        match (self.first_ext, self.unwrap.highest()) {
            (Some(first), Some(h)) => h.get() - first + 1,
            _ => 0,
        }
    }

    fn stats(&self) -> EncodingStats {
        EncodingStats {
            ssrc: self.ssrc(),
            packets: self.packets,
            bytes: self.bytes,
            lost: self.expected() as i64 - self.packets as i64,
            jitter: self.jitter_q4 >> 4,
            key_frames: self.key_frames,
            nacks_sent: self.nacks_sent,
            recovered: self.recovered,
            rtx_ssrc: self.rtx_ssrc(),
            rtx_packets: self.rtx_packets,
        }
    }

    /// An RFC 3550 §6.4.1 reception report block for this encoding, and the
    /// bookkeeping for the next one's fraction lost.
    fn report_block(&mut self, now: Instant) -> Option<ReportBlock> {
        let ssrc = self.ssrc()?;
        let highest = self.unwrap.highest()?;
        let expected = self.expected();
        let expected_interval = expected - self.expected_prior.min(expected);
        let received_interval = self.packets - self.received_prior.min(self.packets);
        self.expected_prior = expected;
        self.received_prior = self.packets;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((info, at)) => (
                info.compact_ntp(),
                ticks(now.saturating_duration_since(at), 65_536),
            ),
            None => (0, 0),
        };
        Some(ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: (expected as i64 - self.packets as i64).clamp(-0x80_0000, 0x7F_FFFF)
                as i32,
            // The unwrapper starts at cycle 1; RTCP counts cycles from 0.
            highest_seq: highest.get().saturating_sub(1 << 16) as u32,
            jitter: self.jitter_q4 >> 4,
            last_sr,
            delay_since_last_sr,
        })
    }
}

/// Pick the encoding a consumer should receive: the highest active one at or
/// below its preference, else the lowest active one above it, else the
/// preference itself (nothing is active yet).
fn choose_target(
    p: &Producer,
    preferred: u8,
    now: Option<Instant>,
    inactive_after: Duration,
) -> usize {
    let n = p.encodings.len();
    let pref = usize::from(preferred).min(n - 1);
    let active = |i: &usize| {
        matches!((p.encodings[*i].last_packet_at, now),
            (Some(at), Some(now)) if now.saturating_duration_since(at) <= inactive_after)
    };
    (0..=pref)
        .rev()
        .find(active)
        .or_else(|| (pref + 1..n).find(active))
        .unwrap_or(pref)
}

/// Ask the producer for a key frame on encoding `enc`, at most once per
/// interval; a request inside the interval is remembered and sent by
/// `handle_timeout` once the interval has passed (unless a key frame came).
fn request_key_frame(
    p: &mut Producer,
    enc: usize,
    now: Instant,
    out: &mut Output,
    stats: &mut RouterStats,
    config: &RouterConfig,
) {
    let e = &mut p.encodings[enc];
    if let Some(last) = e.last_key_frame_request {
        if now.saturating_duration_since(last) < config.key_frame_request_interval {
            if !e.key_frame_wanted {
                stats.key_frame_requests_throttled += 1;
            }
            e.key_frame_wanted = true;
            return;
        }
    }
    let Some(media) = e.ssrc() else {
        e.key_frame_wanted = true; // RID not bound yet: ask once it is.
        return;
    };
    let sender = config.feedback_ssrc;
    let kind = p.key_frame_request;
    let fir_seq = e.fir_seq;
    // An empty RR first: compound RTCP must start with SR or RR (RFC 3550 §6.1).
    let written = out.push(p.transport, PacketKind::Rtcp, None, |slot| {
        let n = rtcp::write_receiver_report(slot, sender, &[]).ok()?;
        let m = match kind {
            KeyFrameRequest::Pli => rtcp::write_pli(&mut slot[n..], sender, media).ok()?,
            KeyFrameRequest::Fir => rtcp::write_fir(&mut slot[n..], sender, media, fir_seq).ok()?,
        };
        Some(n + m)
    });
    if written {
        e.last_key_frame_request = Some(now);
        e.key_frame_wanted = false;
        if kind == KeyFrameRequest::Fir {
            e.fir_seq = e.fir_seq.wrapping_add(1);
        }
        stats.key_frame_requests_sent += 1;
    } else {
        e.key_frame_wanted = true;
        count(stats, DropReason::OutputFull);
    }
}

/// NACK the packets of encoding `enc` that are missing upstream and due.
fn send_upstream_nack(
    p: &mut Producer,
    enc: usize,
    now: Instant,
    out: &mut Output,
    stats: &mut RouterStats,
    config: &RouterConfig,
) {
    let e = &mut p.encodings[enc];
    let Some(media) = e.ssrc() else {
        return;
    };
    if !e.missing.any_due(now, config.nack_retry_interval) {
        return;
    }
    let sender = config.feedback_ssrc;
    let mut nacked = 0;
    let written = out.push(p.transport, PacketKind::Rtcp, None, |slot| {
        let n = rtcp::write_receiver_report(slot, sender, &[]).ok()?;
        let mut b = rtcp::NackBuilder::new(&mut slot[n..], sender, media);
        nacked = e.missing.take_due(
            now,
            config.nack_retry_interval,
            config.retransmit_max_age,
            |seq| b.push(seq),
        );
        let m = b.finish();
        (m > 0).then_some(n + m)
    });
    if written {
        e.nacks_sent += nacked as u64;
        stats.upstream_nacks_sent += 1;
    } else if out.is_full() {
        count(stats, DropReason::OutputFull);
    }
}

/// Send the producer a receiver report with a block per encoding heard from.
fn send_receiver_report(
    p: &mut Producer,
    now: Instant,
    out: &mut Output,
    stats: &mut RouterStats,
    config: &RouterConfig,
) {
    let mut blocks = [ReportBlock::default(); MAX_ENCODINGS];
    let mut n = 0;
    for e in p.encodings.iter_mut() {
        if let Some(b) = e.report_block(now) {
            blocks[n] = b;
            n += 1;
        }
    }
    if n == 0 {
        return;
    }
    let sender = config.feedback_ssrc;
    let written = out.push(p.transport, PacketKind::Rtcp, None, |slot| {
        rtcp::write_receiver_report(slot, sender, &blocks[..n]).ok()
    });
    if written {
        stats.receiver_reports_sent += 1;
    } else {
        count(stats, DropReason::OutputFull);
    }
}

// ------------------------------------------------------------ consumer ----

/// "No value" in the u16 fields of a history entry.
const NONE16: u16 = u16::MAX;

#[derive(Clone, Copy, Debug, Default)]
struct HistoryEntry {
    valid: bool,
    out_seq: u16,
    in_seq: u16,
    encoding: u8,
    ts_offset: u32,
    /// The VP8 PictureID and TL0PICIDX it was sent with (`NONE16`: none).
    picture_id: u16,
    tl0_pic_idx: u16,
}

/// What to send for one forwarded packet.
#[derive(Clone, Copy, Debug)]
struct Forward {
    seq: SeqNo,
    ts: u32,
    /// The consumer's layers changed with this packet.
    switched: bool,
    /// VP8 PictureID and TL0PICIDX to write (continuous across switches and
    /// dropped temporal layers, like the sequence numbers).
    picture_id: Option<u16>,
    tl0_pic_idx: Option<u8>,
}

/// VP8 PictureID and TL0PICIDX continuity of one consumer.
#[derive(Clone, Debug, Default)]
struct Vp8Continuity {
    picture_id: Option<WrapMapper>,
    tl0_offset: u8,
    last_tl0_out: Option<u8>,
}

impl Vp8Continuity {
    /// A new run starts with this packet.
    fn sync(&mut self, info: &FrameInfo) {
        if let Some((pid, long)) = info.picture_id {
            let bits = if long { 15 } else { 7 };
            let first = self
                .picture_id
                .as_ref()
                .map_or(u64::from(pid), WrapMapper::next_out);
            let m = self
                .picture_id
                .get_or_insert_with(|| WrapMapper::new(bits, first));
            if m.bits() != bits {
                *m = WrapMapper::new(bits, first);
            }
            m.sync(u64::from(pid));
        }
        if let Some(t) = info.tl0_pic_idx {
            self.tl0_offset = self
                .last_tl0_out
                .map_or(0, |l| l.wrapping_add(1).wrapping_sub(t));
        }
    }

    /// A packet of a frame left out on purpose.
    fn drop(&mut self, info: &FrameInfo) {
        if let (Some(m), Some((pid, _))) = (self.picture_id.as_mut(), info.picture_id) {
            m.drop(u64::from(pid));
        }
    }

    /// The values to write, or `Err` when the PictureID cannot be placed.
    #[allow(clippy::type_complexity)]
    fn map(&mut self, info: &FrameInfo) -> Result<(Option<u16>, Option<u8>), ()> {
        let pid = match (self.picture_id.as_mut(), info.picture_id) {
            (Some(m), Some((pid, long))) if m.bits() == if long { 15 } else { 7 } => {
                Some(m.map(u64::from(pid)).ok_or(())? as u16)
            }
            _ => None,
        };
        let tl0 = info.tl0_pic_idx.map(|t| {
            let out = t.wrapping_add(self.tl0_offset);
            if self.last_tl0_out.is_none_or_older(out) {
                self.last_tl0_out = Some(out);
            }
            out
        });
        Ok((pid, tl0))
    }
}

trait NoneOrOlder {
    fn is_none_or_older(&self, v: u8) -> bool;
}

impl NoneOrOlder for Option<u8> {
    fn is_none_or_older(&self, v: u8) -> bool {
        match *self {
            None => true,
            Some(l) => (v.wrapping_sub(l) as i8) > 0,
        }
    }
}

#[derive(Debug)]
struct Consumer {
    producer: ProducerId,
    transport: TransportId,
    ssrc: Ssrc,
    pt_map: [u8; 128],
    /// Video whose key frames we can see: layers switch only at key frames.
    switchable: bool,
    /// A pipe consumer: every encoding as it arrived, no rewrite.
    pipe: bool,
    paused: bool,
    preferred_spatial: u8,
    target_spatial: usize,
    current_spatial: Option<usize>,
    target_temporal: u8,
    current_temporal: u8,
    seq: SeqMapper,
    ts: TimestampMapper,
    /// The next forwarded packet starts a new run (first packet, resume).
    needs_sync: bool,
    /// VP8 descriptor continuity (VP8 producers only).
    vp8: Option<Vp8Continuity>,
    /// Timestamp offset for the run a switch starts, from the two
    /// encodings' sender reports.
    sr_offset: Option<u32>,
    /// RTX stream for retransmissions, when negotiated.
    rtx: Option<ConsumerRtx>,
    history: Box<[HistoryEntry]>,
    sr_sent: [(u32, Option<Instant>); SR_MEMORY],
    sr_next: usize,
    stats: ConsumerStats,
}

impl Consumer {
    /// Whether to send this packet, and as what.
    fn decide(
        &mut self,
        enc: usize,
        pkt: &RtpPacket<'_>,
        info: FrameInfo,
        now: Instant,
        encodings: &[Encoding],
    ) -> Option<Forward> {
        if self.paused {
            return None;
        }
        let mut switched = false;
        if self.switchable {
            if enc == self.target_spatial
                && self.current_spatial != Some(enc)
                && info.key_frame_start
            {
                // From a running encoding: align the new one's timestamps
                // by both encodings' sender reports where they have them.
                self.sr_offset = self.current_spatial.and_then(|from| {
                    aligned_offset(
                        &encodings[from],
                        &encodings[enc],
                        self.ts.clock_rate(),
                        self.ts.offset(),
                    )
                });
                self.current_spatial = Some(enc);
                self.current_temporal = self.target_temporal;
                self.needs_sync = true;
                self.stats.layer_switches += 1;
                switched = true;
            }
            if self.current_spatial != Some(enc) {
                self.stats.skipped_layer += 1;
                return None;
            }
            if let Some(tid) = info.temporal_layer {
                if info.key_frame_start {
                    // A key frame is never filtered out, whatever layer it
                    // claims: every later frame depends on it.
                    let want = self.target_temporal.max(tid);
                    if want != self.current_temporal {
                        self.current_temporal = want;
                        switched = true;
                    }
                } else if info.frame_start {
                    if self.target_temporal < self.current_temporal {
                        self.current_temporal = self.target_temporal;
                        switched = true;
                    } else if self.target_temporal > self.current_temporal
                        && info.layer_sync
                        && tid <= self.target_temporal
                        && tid > self.current_temporal
                    {
                        self.current_temporal = tid;
                        switched = true;
                    }
                }
                if tid > self.current_temporal {
                    self.seq.drop(pkt.seq());
                    if let Some(v) = self.vp8.as_mut() {
                        v.drop(&info);
                    }
                    self.stats.dropped_temporal += 1;
                    return None;
                }
            }
        } else if enc != 0 {
            self.stats.skipped_layer += 1;
            return None;
        }
        if self.needs_sync {
            self.seq.sync(pkt.seq());
            match self.sr_offset.take() {
                Some(offset) => {
                    let tolerance = self.ts.clock_rate(); // one second
                    self.ts
                        .sync_with_offset(pkt.timestamp(), offset, now, tolerance);
                }
                None => self.ts.sync(pkt.timestamp(), now),
            }
            if let Some(v) = self.vp8.as_mut() {
                v.sync(&info);
            }
            self.needs_sync = false;
        }
        let (picture_id, tl0_pic_idx) = match self.vp8.as_mut().map(|v| v.map(&info)) {
            Some(Ok(values)) => values,
            Some(Err(())) => {
                self.stats.too_old += 1;
                return None;
            }
            None => (None, None),
        };
        let Some(seq) = self.seq.map(pkt.seq()) else {
            self.stats.too_old += 1;
            return None;
        };
        let ts = self.ts.map(pkt.timestamp(), now);
        self.stats.spatial_layer = self.current_spatial.map(|s| s as u8);
        Some(Forward {
            seq,
            ts,
            switched,
            picture_id,
            tl0_pic_idx,
        })
    }

    fn layers_event(&self, id: ConsumerId) -> Event {
        let temporal = (self.current_temporal != u8::MAX).then_some(self.current_temporal);
        Event::LayersChanged {
            consumer: id,
            spatial: self.current_spatial.map(|s| s as u8),
            temporal,
        }
    }
}

/// The timestamp offset that carries a consumer from encoding `from` (sent
/// with `from_offset`) to encoding `to` so both map the same capture instant
/// to the same output time: RTP(to) → NTP by `to`'s last SR → RTP(from) by
/// `from`'s last SR. `None` unless both have sent an SR.
fn aligned_offset(
    from: &Encoding,
    to: &Encoding,
    clock_rate: u32,
    from_offset: u32,
) -> Option<u32> {
    let (a, _) = from.last_sr?;
    let (b, _) = to.last_sr?;
    // NTP difference in 32.32 fixed-point seconds, then in RTP ticks.
    let ntp_diff = b.ntp.wrapping_sub(a.ntp) as i64;
    let tick_diff = ((i128::from(ntp_diff) * i128::from(clock_rate)) >> 32) as i64;
    Some(
        a.rtp_timestamp
            .wrapping_sub(b.rtp_timestamp)
            .wrapping_add(tick_diff as u32)
            .wrapping_add(from_offset),
    )
}

/// Copy `packet` into `slot` and rewrite its header for a consumer.
fn rewrite_into(
    slot: &mut [u8],
    packet: &[u8],
    ssrc: Ssrc,
    seq: SeqNo,
    ts: u32,
    pt: PayloadType,
) -> Option<usize> {
    let n = packet.len();
    let dst = slot.get_mut(..n)?;
    dst.copy_from_slice(packet);
    let mut h = RtpHeaderMut::new(dst).ok()?;
    h.set_ssrc(ssrc);
    h.set_seq(seq);
    h.set_timestamp(ts);
    h.set_payload_type(pt);
    Some(n)
}

fn count(stats: &mut RouterStats, reason: DropReason) -> DropReason {
    stats.drops[reason.index()] += 1;
    reason
}

fn push_event(events: &mut VecDeque<Event>, stats: &mut RouterStats, cap: usize, e: Event) {
    if events.len() >= cap {
        stats.events_dropped += 1;
    } else {
        events.push_back(e);
    }
}

// ---------------------------------------------------------------- slab ----

/// Slots with generation-tagged ids, so a stale id never reaches a new
/// occupant of the same slot.
#[derive(Debug)]
struct Slab<T> {
    entries: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, value: T) -> u64 {
        self.len += 1;
        if let Some(i) = self.free.pop() {
            let e = &mut self.entries[i as usize];
            e.0 = e.0.wrapping_add(1);
            e.1 = Some(value);
            return u64::from(e.0) << 32 | u64::from(i);
        }
        self.entries.push((0, Some(value)));
        (self.entries.len() - 1) as u64
    }

    fn split(id: u64) -> (u32, usize) {
        ((id >> 32) as u32, (id & 0xFFFF_FFFF) as usize)
    }

    fn get(&self, id: u64) -> Option<&T> {
        let (generation, i) = Self::split(id);
        match self.entries.get(i) {
            Some((g, Some(v))) if *g == generation => Some(v),
            _ => None,
        }
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        let (generation, i) = Self::split(id);
        match self.entries.get_mut(i) {
            Some((g, Some(v))) if *g == generation => Some(v),
            _ => None,
        }
    }

    fn remove(&mut self, id: u64) -> Option<T> {
        let (generation, i) = Self::split(id);
        match self.entries.get_mut(i) {
            Some((g, slot @ Some(_))) if *g == generation => {
                self.free.push(i as u32);
                self.len -= 1;
                slot.take()
            }
            _ => None,
        }
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, (g, v))| v.as_ref().map(|v| (u64::from(*g) << 32 | i as u64, v)))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut T)> {
        self.entries
            .iter_mut()
            .enumerate()
            .filter_map(|(i, (g, v))| v.as_mut().map(|v| (u64::from(*g) << 32 | i as u64, v)))
    }

    fn len(&self) -> usize {
        self.len
    }
}
