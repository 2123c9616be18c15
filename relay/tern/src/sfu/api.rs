//! The SFU control API on the admin listener (`/sfu/...`, bearer token):
//! JSON bodies in and out, routers placed on the least loaded worker, every
//! call after placement marshalled to the owning worker over its control
//! channel and answered within [`WORKER_TIMEOUT`].
//!
//! Owns: request parsing and validation, the router → worker directory, the
//! JSON views. Must not touch: packets (see [`super::Shard`]). The paths and
//! schemas are in `relay/tern/openapi.json`, which the tests validate every
//! answer against.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use crossbeam::channel;
use serde::{Deserialize, Serialize};
use tern_sfu::srtp::SrtpProfile;
use tern_sfu::{Codec, ConsumerStats, KeyFrameRequest, MediaKind};

use super::{Command, Op, TransportStats};
use crate::http::{Request, Response};
use crate::side::{Side, TokenCheck};
use crate::worker::Control;

/// How long a call waits for the owning worker's answer.
const WORKER_TIMEOUT: Duration = Duration::from_secs(2);
/// Most packets a producer encoding's retransmission ring may hold.
const MAX_RETRANSMIT: usize = 8192;

/// A refusal: an HTTP status and a one-line reason (sent as `{"error": ...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

/// A worker's answer.
#[derive(Debug)]
pub(crate) enum Reply {
    Router(RouterView),
    Transport(TransportView),
    Producer(ProducerView),
    Consumer(ConsumerView),
    Deleted,
}

/// Which worker owns which router, and how many each owns.
pub(crate) struct Directory {
    next: AtomicU64,
    routers: Mutex<Placement>,
}

#[derive(Default)]
struct Placement {
    owner: HashMap<u64, usize>,
    per_worker: Vec<usize>,
}

impl Directory {
    pub(crate) fn new(workers: usize) -> Directory {
        Directory {
            next: AtomicU64::new(1),
            routers: Mutex::new(Placement {
                owner: HashMap::new(),
                per_worker: vec![0; workers],
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Placement> {
        // A panicking HTTP thread cannot leave the map half-updated (each
        // change is one insert or remove), so a poisoned lock is still good.
        self.routers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn owner(&self, router: u64) -> Option<usize> {
        self.lock().owner.get(&router).copied()
    }
}

// ------------------------------------------------------------- requests

/// `POST /sfu/routers/{id}/transports`.
#[derive(Debug, Clone)]
pub(crate) struct TransportSpec {
    pub(crate) kind: TransportKind,
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) srtp: Option<SrtpSpec>,
}

/// A plain RTP transport to a media peer, or a pipe to another tern
/// router (cascading): pipe consumers send a producer's encodings as they
/// arrived, and its remote is only ever the one the API gives.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum TransportKind {
    #[default]
    Plain,
    Pipe,
}

/// SDES-style keys: each the base64 of master key ‖ master salt.
#[derive(Clone)]
pub(crate) struct SrtpSpec {
    pub(crate) profile: SrtpProfile,
    /// What the remote sends with.
    pub(crate) recv_key: Vec<u8>,
    /// What tern sends with.
    pub(crate) send_key: Vec<u8>,
}

impl std::fmt::Debug for SrtpSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never log keys.
        f.debug_struct("SrtpSpec")
            .field("profile", &self.profile)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransportBody {
    #[serde(default)]
    kind: TransportKind,
    #[serde(default)]
    remote: Option<String>,
    #[serde(default)]
    srtp: Option<SrtpBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SrtpBody {
    profile: String,
    recv_key: String,
    send_key: String,
}

/// Audio or video.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    Audio,
    Video,
}

impl From<Kind> for MediaKind {
    fn from(k: Kind) -> MediaKind {
        match k {
            Kind::Audio => MediaKind::Audio,
            Kind::Video => MediaKind::Video,
        }
    }
}

/// The codecs the router knows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CodecName {
    Vp8,
    H264,
    Opus,
    Other,
}

impl From<CodecName> for Codec {
    fn from(c: CodecName) -> Codec {
        match c {
            CodecName::Vp8 => Codec::Vp8,
            CodecName::H264 => Codec::H264,
            CodecName::Opus => Codec::Opus,
            CodecName::Other => Codec::Other,
        }
    }
}

/// PLI or FIR.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KeyFrameRequestName {
    #[default]
    Pli,
    Fir,
}

impl From<KeyFrameRequestName> for KeyFrameRequest {
    fn from(k: KeyFrameRequestName) -> KeyFrameRequest {
        match k {
            KeyFrameRequestName::Pli => KeyFrameRequest::Pli,
            KeyFrameRequestName::Fir => KeyFrameRequest::Fir,
        }
    }
}

/// One simulcast encoding, by SSRC or RID.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EncodingSpec {
    #[serde(default)]
    pub(crate) ssrc: Option<u32>,
    #[serde(default)]
    pub(crate) rid: Option<String>,
    /// Its RTX (RFC 4588) SSRC, when signalled.
    #[serde(default)]
    pub(crate) rtx_ssrc: Option<u32>,
}

/// An RTX payload type and the media payload type it repairs (`apt`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RtxMap {
    pub(crate) rtx: u8,
    pub(crate) apt: u8,
}

/// `POST /sfu/routers/{id}/producers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProducerSpec {
    pub(crate) transport: u32,
    pub(crate) kind: Kind,
    pub(crate) codec: CodecName,
    pub(crate) clock_rate: u32,
    pub(crate) payload_types: Vec<u8>,
    pub(crate) encodings: Vec<EncodingSpec>,
    #[serde(default)]
    pub(crate) rid_extension_id: Option<u8>,
    #[serde(default)]
    pub(crate) mid_extension_id: Option<u8>,
    #[serde(default)]
    pub(crate) mid: Option<String>,
    #[serde(default)]
    pub(crate) key_frame_request: KeyFrameRequestName,
    #[serde(default = "default_retransmit")]
    pub(crate) retransmit_capacity: usize,
    #[serde(default = "default_true")]
    pub(crate) nack: bool,
    #[serde(default)]
    pub(crate) rtx_payload_types: Vec<RtxMap>,
    #[serde(default)]
    pub(crate) repaired_rid_extension_id: Option<u8>,
}

fn default_retransmit() -> usize {
    512
}

fn default_true() -> bool {
    true
}

/// A payload type mapping, producer's → consumer's.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PayloadTypeMap {
    pub(crate) producer: u8,
    pub(crate) consumer: u8,
}

/// `POST /sfu/routers/{id}/consumers`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumerSpec {
    pub(crate) producer: u64,
    pub(crate) transport: u32,
    /// Required on a plain transport; absent on a pipe (which keeps the
    /// producer's SSRCs).
    #[serde(default)]
    pub(crate) ssrc: Option<u32>,
    #[serde(default)]
    pub(crate) payload_types: Vec<PayloadTypeMap>,
    #[serde(default)]
    pub(crate) preferred_spatial_layer: Option<u8>,
    #[serde(default)]
    pub(crate) preferred_temporal_layer: Option<u8>,
    #[serde(default)]
    pub(crate) paused: bool,
    /// Send retransmissions as RTX on this SSRC.
    #[serde(default)]
    pub(crate) rtx_ssrc: Option<u32>,
    /// RTX payload type per media payload type of the consumer.
    #[serde(default)]
    pub(crate) rtx_payload_types: Vec<RtxMap>,
}

/// `PATCH /sfu/routers/{id}/transports/{id}`: connect a transport (a pipe's
/// far end, known once the far router created it) to its remote.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransportUpdate {
    remote: String,
}

/// `PATCH /sfu/routers/{id}/consumers/{id}`: only what is given changes.
/// A layer given as `null` means "the highest".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsumerUpdate {
    #[serde(default)]
    pub(crate) paused: Option<bool>,
    #[serde(default, deserialize_with = "some")]
    pub(crate) preferred_spatial_layer: Option<Option<u8>>,
    #[serde(default, deserialize_with = "some")]
    pub(crate) preferred_temporal_layer: Option<Option<u8>>,
}

/// Present (even as `null`) → `Some`.
fn some<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u8>>, D::Error> {
    Option::<u8>::deserialize(d).map(Some)
}

// ---------------------------------------------------------------- views

/// A router with everything in it.
#[derive(Debug, Serialize)]
pub(crate) struct RouterView {
    pub(crate) id: u64,
    pub(crate) worker: usize,
    pub(crate) transports: Vec<TransportView>,
    pub(crate) producers: Vec<ProducerView>,
    pub(crate) consumers: Vec<ConsumerView>,
    pub(crate) stats: RouterStatsView,
}

/// A router's counters.
#[derive(Debug, Serialize)]
pub(crate) struct RouterStatsView {
    pub(crate) rtp_received: u64,
    pub(crate) rtp_forwarded: u64,
    pub(crate) rtcp_received: u64,
    pub(crate) retransmitted: u64,
    pub(crate) nack_misses: u64,
    pub(crate) key_frame_requests_sent: u64,
    pub(crate) upstream_nacks_sent: u64,
    pub(crate) receiver_reports_sent: u64,
    pub(crate) sender_reports_forwarded: u64,
    pub(crate) source_descriptions_sent: u64,
    pub(crate) drops: std::collections::BTreeMap<String, u64>,
}

/// A transport.
#[derive(Debug, Serialize)]
pub(crate) struct TransportView {
    pub(crate) id: u32,
    pub(crate) router: u64,
    pub(crate) kind: TransportKind,
    pub(crate) local: String,
    pub(crate) remote: Option<String>,
    pub(crate) remote_fixed: bool,
    pub(crate) srtp: Option<String>,
    pub(crate) stats: TransportStatsView,
}

/// A transport's counters.
#[derive(Debug, Serialize)]
pub(crate) struct TransportStatsView {
    pub(crate) packets_in: u64,
    pub(crate) bytes_in: u64,
    pub(crate) packets_out: u64,
    pub(crate) bytes_out: u64,
    pub(crate) rtcp_in: u64,
    pub(crate) dropped: u64,
    pub(crate) srtp_auth_failures: u64,
    pub(crate) srtp_replays: u64,
}

impl From<&TransportStats> for TransportStatsView {
    fn from(s: &TransportStats) -> Self {
        TransportStatsView {
            packets_in: s.packets_in,
            bytes_in: s.bytes_in,
            packets_out: s.packets_out,
            bytes_out: s.bytes_out,
            rtcp_in: s.rtcp_in,
            dropped: s.dropped,
            srtp_auth_failures: s.srtp_auth_failures,
            srtp_replays: s.srtp_replays,
        }
    }
}

/// A producer and its encodings' receive statistics.
#[derive(Debug, Serialize)]
pub(crate) struct ProducerView {
    pub(crate) id: u64,
    pub(crate) router: u64,
    pub(crate) transport: u32,
    pub(crate) kind: Kind,
    pub(crate) codec: CodecName,
    pub(crate) clock_rate: u32,
    pub(crate) payload_types: Vec<u8>,
    pub(crate) encodings: Vec<EncodingView>,
}

/// One encoding's receive statistics.
#[derive(Debug, Serialize)]
pub(crate) struct EncodingView {
    pub(crate) ssrc: Option<u32>,
    pub(crate) rid: Option<String>,
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
    pub(crate) lost: i64,
    pub(crate) jitter: u32,
    pub(crate) key_frames: u64,
    pub(crate) nacks_sent: u64,
    pub(crate) recovered: u64,
}

/// A consumer and its statistics.
#[derive(Debug, Serialize)]
pub(crate) struct ConsumerView {
    pub(crate) id: u64,
    pub(crate) router: u64,
    pub(crate) producer: u64,
    pub(crate) transport: u32,
    pub(crate) ssrc: Option<u32>,
    /// A pipe consumer (every encoding as it arrived).
    pub(crate) pipe: bool,
    pub(crate) paused: bool,
    pub(crate) preferred_spatial_layer: Option<u8>,
    pub(crate) preferred_temporal_layer: Option<u8>,
    pub(crate) stats: ConsumerStatsView,
}

/// A consumer's counters and its latest receiver-report view.
#[derive(Debug, Serialize)]
pub(crate) struct ConsumerStatsView {
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
    pub(crate) retransmitted: u64,
    pub(crate) nacks_received: u64,
    pub(crate) nack_misses: u64,
    pub(crate) plis_received: u64,
    pub(crate) firs_received: u64,
    pub(crate) dropped_temporal: u64,
    pub(crate) skipped_layer: u64,
    pub(crate) layer_switches: u64,
    pub(crate) fraction_lost: u8,
    pub(crate) cumulative_lost: i32,
    pub(crate) jitter: u32,
    pub(crate) rtt_ms: Option<f64>,
    pub(crate) spatial_layer: Option<u8>,
    pub(crate) temporal_layer: Option<u8>,
}

impl ConsumerView {
    pub(crate) fn new(id: u64, router: u64, spec: &ConsumerSpec, s: &ConsumerStats) -> Self {
        ConsumerView {
            id,
            router,
            producer: spec.producer,
            transport: spec.transport,
            ssrc: spec.ssrc,
            pipe: spec.ssrc.is_none(),
            paused: s.paused,
            preferred_spatial_layer: spec.preferred_spatial_layer,
            preferred_temporal_layer: spec.preferred_temporal_layer,
            stats: ConsumerStatsView {
                packets: s.packets,
                bytes: s.bytes,
                retransmitted: s.retransmitted,
                nacks_received: s.nacks_received,
                nack_misses: s.nack_misses,
                plis_received: s.plis_received,
                firs_received: s.firs_received,
                dropped_temporal: s.dropped_temporal,
                skipped_layer: s.skipped_layer,
                layer_switches: s.layer_switches,
                fraction_lost: s.fraction_lost,
                cumulative_lost: s.cumulative_lost,
                jitter: s.jitter,
                rtt_ms: s.rtt.map(|d| d.as_secs_f64() * 1000.0),
                spatial_layer: s.spatial_layer,
                temporal_layer: s.temporal_layer,
            },
        }
    }
}

/// The API's name of a profile (RFC 4568 / RFC 7714 crypto-suite names).
pub(crate) fn profile_name(p: SrtpProfile) -> &'static str {
    match p {
        SrtpProfile::Aes128CmHmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
        SrtpProfile::AeadAes128Gcm => "AEAD_AES_128_GCM",
        _ => "unknown",
    }
}

// ------------------------------------------------------------- routing

/// Answer a request under `/sfu`.
pub(crate) fn route(side: &Side, req: &Request) -> Response {
    match side.check_token(req.authorization.as_deref()) {
        TokenCheck::Disabled => {
            return error(ApiError::new(
                403,
                "the SFU API is disabled: no admin-token is configured",
            ))
        }
        TokenCheck::Denied => {
            return error(ApiError::new(401, "missing or wrong bearer token"))
                .with_header("WWW-Authenticate", "Bearer realm=\"tern-admin\"")
        }
        TokenCheck::Granted => {}
    }
    let Some(dir) = side.sfu.get() else {
        return error(ApiError::new(
            404,
            "the SFU is not enabled on this relay (sfu = true)",
        ));
    };
    match dispatch(side, dir, req) {
        Ok((status, body)) => Response::json(status, body),
        Err(e) => error(e),
    }
}

fn error(e: ApiError) -> Response {
    let body = serde_json::json!({ "error": e.message }).to_string();
    Response::json(e.status, body)
}

type Answer = Result<(u16, String), ApiError>;

fn dispatch(side: &Side, dir: &Directory, req: &Request) -> Answer {
    let rest = req.path.strip_prefix("/sfu").unwrap_or("");
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let m = req.method.as_str();
    match parts.as_slice() {
        ["routers"] => match m {
            "GET" => list_routers(side, dir),
            "POST" => create_router(side, dir, req),
            _ => Err(method(m, "GET, POST")),
        },
        ["routers", r] => {
            let router = parse_id(r, "router")?;
            match m {
                "GET" => call(side, dir, router, Op::GetRouter { router }, 200),
                "DELETE" => delete_router(side, dir, router),
                _ => Err(method(m, "GET, DELETE")),
            }
        }
        ["routers", r, "transports"] => {
            let router = parse_id(r, "router")?;
            match m {
                "POST" => {
                    let spec = transport_spec(body(req)?)?;
                    call(side, dir, router, Op::CreateTransport { router, spec }, 201)
                }
                "GET" => list(
                    side,
                    dir,
                    router,
                    |v| serde_json::json!({ "transports": v.transports }),
                ),
                _ => Err(method(m, "GET, POST")),
            }
        }
        ["routers", r, "transports", t] => {
            let router = parse_id(r, "router")?;
            let transport = u32::try_from(parse_id(t, "transport")?)
                .map_err(|_| ApiError::new(404, format!("no transport {t}")))?;
            match m {
                "GET" => call(
                    side,
                    dir,
                    router,
                    Op::GetTransport { router, transport },
                    200,
                ),
                "PATCH" => {
                    let remote = remote_addr(&parse_json::<TransportUpdate>(body(req)?)?.remote)?;
                    let op = Op::ConnectTransport {
                        router,
                        transport,
                        remote,
                    };
                    call(side, dir, router, op, 200)
                }
                "DELETE" => call(
                    side,
                    dir,
                    router,
                    Op::DeleteTransport { router, transport },
                    200,
                ),
                _ => Err(method(m, "GET, PATCH, DELETE")),
            }
        }
        ["routers", r, "producers"] => {
            let router = parse_id(r, "router")?;
            match m {
                "POST" => {
                    let spec = producer_spec(body(req)?)?;
                    call(side, dir, router, Op::CreateProducer { router, spec }, 201)
                }
                "GET" => list(
                    side,
                    dir,
                    router,
                    |v| serde_json::json!({ "producers": v.producers }),
                ),
                _ => Err(method(m, "GET, POST")),
            }
        }
        ["routers", r, "producers", p] => {
            let router = parse_id(r, "router")?;
            let producer = parse_id(p, "producer")?;
            match m {
                "GET" => call(side, dir, router, Op::GetProducer { router, producer }, 200),
                "DELETE" => call(
                    side,
                    dir,
                    router,
                    Op::DeleteProducer { router, producer },
                    200,
                ),
                _ => Err(method(m, "GET, DELETE")),
            }
        }
        ["routers", r, "consumers"] => {
            let router = parse_id(r, "router")?;
            match m {
                "POST" => {
                    let spec = consumer_spec(body(req)?)?;
                    call(side, dir, router, Op::CreateConsumer { router, spec }, 201)
                }
                "GET" => list(
                    side,
                    dir,
                    router,
                    |v| serde_json::json!({ "consumers": v.consumers }),
                ),
                _ => Err(method(m, "GET, POST")),
            }
        }
        ["routers", r, "consumers", c] => {
            let router = parse_id(r, "router")?;
            let consumer = parse_id(c, "consumer")?;
            match m {
                "GET" => call(side, dir, router, Op::GetConsumer { router, consumer }, 200),
                "PATCH" => {
                    let update: ConsumerUpdate = parse_json(body(req)?)?;
                    check_layers(
                        update.preferred_spatial_layer.flatten(),
                        update.preferred_temporal_layer.flatten(),
                    )?;
                    let op = Op::UpdateConsumer {
                        router,
                        consumer,
                        update,
                    };
                    call(side, dir, router, op, 200)
                }
                "DELETE" => call(
                    side,
                    dir,
                    router,
                    Op::DeleteConsumer { router, consumer },
                    200,
                ),
                _ => Err(method(m, "GET, PATCH, DELETE")),
            }
        }
        _ => Err(ApiError::new(404, format!("no SFU resource {}", req.path))),
    }
}

fn method(m: &str, allow: &str) -> ApiError {
    ApiError::new(405, format!("{m} is not allowed here; use {allow}"))
}

fn parse_id(s: &str, what: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .map_err(|_| ApiError::new(404, format!("no {what} {s:?}: ids are integers")))
}

fn body(req: &Request) -> Result<&[u8], ApiError> {
    if req.body.is_empty() {
        return Err(ApiError::new(400, "a JSON body is required"));
    }
    Ok(&req.body)
}

fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::new(400, format!("bad JSON body: {e}")))
}

/// A remote transport address from the API: IP:PORT, neither unspecified.
fn remote_addr(r: &str) -> Result<SocketAddr, ApiError> {
    let addr: SocketAddr = r
        .parse()
        .map_err(|_| ApiError::new(400, format!("remote: {r:?} is not an IP:PORT address")))?;
    if addr.port() == 0 || addr.ip().is_unspecified() {
        return Err(ApiError::new(
            400,
            format!("remote: {r} is not a usable address"),
        ));
    }
    Ok(addr)
}

fn transport_spec(body: &[u8]) -> Result<TransportSpec, ApiError> {
    let b: TransportBody = parse_json(body)?;
    let remote = b.remote.as_deref().map(remote_addr).transpose()?;
    let srtp = match b.srtp {
        None => None,
        Some(s) => {
            let profile = match s.profile.as_str() {
                "AES_CM_128_HMAC_SHA1_80" => SrtpProfile::Aes128CmHmacSha1_80,
                "AEAD_AES_128_GCM" => SrtpProfile::AeadAes128Gcm,
                other => {
                    return Err(ApiError::new(
                        400,
                        format!(
                            "srtp.profile: {other:?} is not supported; use AES_CM_128_HMAC_SHA1_80 or AEAD_AES_128_GCM"
                        ),
                    ))
                }
            };
            let decode = |name: &str, v: &str| {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map_err(|e| ApiError::new(400, format!("srtp.{name}: not base64: {e}")))
            };
            let recv_key = decode("recv_key", &s.recv_key)?;
            let send_key = decode("send_key", &s.send_key)?;
            let want = profile.master_key_len() + profile.master_salt_len();
            for (name, k) in [("recv_key", &recv_key), ("send_key", &send_key)] {
                if k.len() != want {
                    return Err(ApiError::new(
                        400,
                        format!(
                            "srtp.{name}: {} bytes of key and salt; {} needs {want}",
                            k.len(),
                            s.profile
                        ),
                    ));
                }
            }
            Some(SrtpSpec {
                profile,
                recv_key,
                send_key,
            })
        }
    };
    Ok(TransportSpec {
        kind: b.kind,
        remote,
        srtp,
    })
}

fn producer_spec(body: &[u8]) -> Result<ProducerSpec, ApiError> {
    let p: ProducerSpec = parse_json(body)?;
    if p.payload_types.is_empty() {
        return Err(ApiError::new(400, "payload_types: at least one is needed"));
    }
    if let Some(pt) = p.payload_types.iter().find(|&&pt| pt > 127) {
        return Err(ApiError::new(
            400,
            format!("payload_types: {pt} is above 127"),
        ));
    }
    if p.clock_rate == 0 {
        return Err(ApiError::new(400, "clock_rate: must be positive"));
    }
    if p.encodings.is_empty() || p.encodings.len() > tern_sfu::MAX_ENCODINGS {
        return Err(ApiError::new(
            400,
            format!(
                "encodings: 1 to {} are needed, got {}",
                tern_sfu::MAX_ENCODINGS,
                p.encodings.len()
            ),
        ));
    }
    for (i, e) in p.encodings.iter().enumerate() {
        if e.ssrc.is_none() && (e.rid.is_none() || p.rid_extension_id.is_none()) {
            return Err(ApiError::new(
                400,
                format!("encodings[{i}]: needs an ssrc, or a rid and rid_extension_id"),
            ));
        }
    }
    if p.rtx_payload_types
        .iter()
        .any(|m| m.rtx > 127 || m.apt > 127)
    {
        return Err(ApiError::new(400, "rtx_payload_types: values are 0..=127"));
    }
    for (name, id) in [
        ("rid_extension_id", p.rid_extension_id),
        ("mid_extension_id", p.mid_extension_id),
        ("repaired_rid_extension_id", p.repaired_rid_extension_id),
    ] {
        if id.is_some_and(|id| id == 0 || id > 14) {
            return Err(ApiError::new(400, format!("{name}: must be 1..=14")));
        }
    }
    if p.retransmit_capacity > MAX_RETRANSMIT {
        return Err(ApiError::new(
            400,
            format!("retransmit_capacity: at most {MAX_RETRANSMIT}"),
        ));
    }
    Ok(p)
}

fn consumer_spec(body: &[u8]) -> Result<ConsumerSpec, ApiError> {
    let c: ConsumerSpec = parse_json(body)?;
    for m in &c.payload_types {
        if m.producer > 127 || m.consumer > 127 {
            return Err(ApiError::new(400, "payload_types: values are 0..=127"));
        }
    }
    if c.rtx_payload_types
        .iter()
        .any(|m| m.rtx > 127 || m.apt > 127)
    {
        return Err(ApiError::new(400, "rtx_payload_types: values are 0..=127"));
    }
    check_layers(c.preferred_spatial_layer, c.preferred_temporal_layer)?;
    Ok(c)
}

fn check_layers(spatial: Option<u8>, temporal: Option<u8>) -> Result<(), ApiError> {
    if spatial.is_some_and(|s| usize::from(s) >= tern_sfu::MAX_ENCODINGS) {
        return Err(ApiError::new(
            400,
            format!(
                "preferred_spatial_layer: at most {}",
                tern_sfu::MAX_ENCODINGS - 1
            ),
        ));
    }
    if temporal.is_some_and(|t| t > 7) {
        return Err(ApiError::new(400, "preferred_temporal_layer: at most 7"));
    }
    Ok(())
}

/// Send `op` to `worker` and wait for its answer.
fn ask(side: &Side, worker: usize, op: Op) -> Result<Reply, ApiError> {
    let (tx, rx) = channel::bounded(1);
    let link = side
        .links
        .get(worker)
        .ok_or_else(|| ApiError::new(503, "the owning worker is gone"))?;
    if !link.send(Control::Sfu(Command { op, reply: tx })) {
        return Err(ApiError::new(503, "the owning worker is gone"));
    }
    match rx.recv_timeout(WORKER_TIMEOUT) {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(
            504,
            format!("worker {worker} did not answer in time"),
        )),
    }
}

fn call(side: &Side, dir: &Directory, router: u64, op: Op, status: u16) -> Answer {
    let worker = dir
        .owner(router)
        .ok_or_else(|| ApiError::new(404, format!("no router {router}")))?;
    let reply = ask(side, worker, op)?;
    Ok((status, render(&reply)))
}

fn render(reply: &Reply) -> String {
    let v = match reply {
        Reply::Router(v) => serde_json::to_value(v),
        Reply::Transport(v) => serde_json::to_value(v),
        Reply::Producer(v) => serde_json::to_value(v),
        Reply::Consumer(v) => serde_json::to_value(v),
        Reply::Deleted => Ok(serde_json::json!({ "deleted": true })),
    };
    // Plain structs of numbers and strings always serialize.
    v.unwrap_or_default().to_string()
}

fn list(
    side: &Side,
    dir: &Directory,
    router: u64,
    pick: impl Fn(RouterView) -> serde_json::Value,
) -> Answer {
    let worker = dir
        .owner(router)
        .ok_or_else(|| ApiError::new(404, format!("no router {router}")))?;
    match ask(side, worker, Op::GetRouter { router })? {
        Reply::Router(v) => Ok((200, pick(v).to_string())),
        _ => Err(ApiError::new(500, "unexpected worker answer")),
    }
}

fn list_routers(side: &Side, dir: &Directory) -> Answer {
    let mut owned: Vec<(u64, usize)> = dir.lock().owner.iter().map(|(r, w)| (*r, *w)).collect();
    owned.sort_unstable();
    let mut routers = Vec::with_capacity(owned.len());
    for (router, worker) in owned {
        match ask(side, worker, Op::GetRouter { router }) {
            Ok(Reply::Router(v)) => routers.push(v),
            // Deleted meanwhile.
            Err(e) if e.status == 404 => {}
            Err(e) => return Err(e),
            Ok(_) => return Err(ApiError::new(500, "unexpected worker answer")),
        }
    }
    Ok((200, serde_json::json!({ "routers": routers }).to_string()))
}

fn create_router(side: &Side, dir: &Directory, req: &Request) -> Answer {
    // An optional body: `{}` or nothing.
    if !req.body.is_empty() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Empty {}
        let _: Empty = parse_json(&req.body)?;
    }
    let router = dir.next.fetch_add(1, Ordering::Relaxed);
    let worker = {
        let mut p = dir.lock();
        let worker = (0..p.per_worker.len())
            .min_by_key(|&w| p.per_worker[w])
            .ok_or_else(|| ApiError::new(503, "no worker"))?;
        p.per_worker[worker] += 1;
        p.owner.insert(router, worker);
        worker
    };
    match ask(side, worker, Op::CreateRouter { router }) {
        Ok(reply) => Ok((201, render(&reply))),
        Err(e) => {
            forget(dir, router);
            Err(e)
        }
    }
}

fn delete_router(side: &Side, dir: &Directory, router: u64) -> Answer {
    let answer = call(side, dir, router, Op::DeleteRouter { router }, 200);
    if answer.as_ref().is_ok() || answer.as_ref().is_err_and(|e| e.status == 404) {
        forget(dir, router);
    }
    answer
}

fn forget(dir: &Directory, router: u64) {
    let mut p = dir.lock();
    if let Some(w) = p.owner.remove(&router) {
        if let Some(n) = p.per_worker.get_mut(w) {
            *n = n.saturating_sub(1);
        }
    }
}
