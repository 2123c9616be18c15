//! SFU mode: publishers fanned out to subscribers by an SFU — tern's, or
//! Janus' VideoRoom ([`crate::janus`]) — in one or many rooms.
//!
//! Each of `rooms` rooms (a tern router, a Janus VideoRoom) gets one
//! publisher and `subscribers` subscribers (tern: a plain transport and a
//! consumer each; Janus: an RTP forwarder each), every subscriber with its
//! own SSRC (see [`Layout`]). The harness sends paced VP8-shaped RTP — the
//! publishers' packets interleaved, `rate` packets per second **over all
//! rooms** — for `duration` seconds, and reads what the SFU sends on a few
//! receiving sockets (`receivers`, recvmmsg; the subscribers are spread
//! over them).
//!
//! Every publisher packet carries a [`Probe`] at [`PROBE_AT`] (send time on
//! CLOCK_MONOTONIC, room, per-room sequence, run id): the receivers record
//! the one-way delay of every datagram of this run in an HdrHistogram. With
//! SRTP (AES_CM_128_HMAC_SHA1_80 towards the subscribers, the same suite
//! and key on both targets) the receivers decrypt only the probe's bytes
//! of each datagram (counter mode allows it) and fully authenticate one
//! datagram in [`VERIFY_EVERY`] per subscriber ([`SrtpProbe`]).
//!
//! The figure of merit is **egress packets per relay CPU-second**: the
//! datagrams the receivers got (the same count for every target), divided by
//! the relay's CPU time from `/proc/PID/stat` over the window; for tern also
//! by its own `tern_sfu_packets_total{direction="out"}` counter. Receive-side
//! drops count as loss here, not as the relay's. Traffic stays on loopback;
//! the load loop is bounded by `duration` (at most 60 s) and its packet
//! count; the relay is killed by PID when done.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use aes::Aes128;
use hdrhistogram::Histogram;
use serde::Serialize;
use tern_sfu::srtp::{derive_session_key, Label, SrtpContext, SrtpProfile};

use crate::compare::Stat;
use crate::janus::{self, Janus};
use crate::load::Latency;
use crate::mmsg::RecvBatch;
use crate::payload::{monotonic_ns, Probe, HEADER_LEN};
use crate::{bail, Error, Result};
use crate::{cpu, servers};

/// Where the probe sits in every publisher packet: after the 12-byte RTP
/// header and 12 bytes of VP8 payload descriptor and header.
pub const PROBE_AT: usize = 24;
/// One datagram in this many per subscriber is fully SRTP-authenticated.
pub const VERIFY_EVERY: u64 = 64;
/// SSRC of the first consumer (see [`Layout::consumer_ssrc`]).
pub const CONSUMER_SSRC_BASE: u32 = 0x5000_0000;
/// SSRC of room 0's publisher on tern (one more per room).
pub const TERN_PUBLISHER_SSRC_BASE: u32 = 0x00BE_4C00;
/// The SRTP master key and salt of every subscriber on both targets: 30
/// bytes of 0x2a.
pub const SRTP_MASTER: [u8; 30] = [0x2a; 30];
/// [`SRTP_MASTER`] in base64.
const SRTP_MASTER_B64: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioq";
/// Most subscribers over all rooms.
pub const MAX_CONSUMERS: usize = 10_000;

/// Which SFU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SfuTarget {
    /// tern with `--sfu`.
    Tern,
    /// Janus' VideoRoom: remote publishers and RTP forwarders.
    Janus,
}

impl SfuTarget {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            SfuTarget::Tern => "tern",
            SfuTarget::Janus => "janus",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SfuScenario {
    /// The `tern` binary.
    pub tern: PathBuf,
    /// The `janus` binary.
    pub janus: PathBuf,
    /// Janus' module folder (with `plugins/` and `transports/`); `None`:
    /// the usual install folders.
    pub janus_modules: Option<PathBuf>,
    /// Rooms, each with one publisher.
    pub rooms: usize,
    /// Subscribers per room.
    pub subscribers: usize,
    /// Publisher packets per second, over all rooms.
    pub rate: u64,
    /// Seconds of traffic (at most 60).
    pub duration: u64,
    /// RTP payload bytes (at least [`PROBE_AT`] - 12 + the probe).
    pub payload: usize,
    /// tern worker threads.
    pub workers: usize,
    /// SRTP (AES_CM_128_HMAC_SHA1_80) towards the subscribers.
    pub srtp: bool,
    /// Receiving sockets (one thread each).
    pub receivers: usize,
    /// Receivers poll their sockets every this often instead of sleeping
    /// on them (zero: block): a sleeping receiver is woken by the relay's
    /// send, and on this VM that wake-up costs the relay more than the send
    /// (bench/README.md, "SFU: tern and Janus").
    pub receive_poll: Duration,
}

/// Rooms × subscribers, and who is who: publisher packet `k` belongs to
/// room `k % rooms`; room `r`'s subscriber `s` has SSRC
/// `CONSUMER_SSRC_BASE + r × subscribers + s` and is served on receiving
/// socket `(r × subscribers + s) % receivers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Rooms.
    pub rooms: usize,
    /// Subscribers per room.
    pub subscribers: usize,
}

impl Layout {
    /// Both at least 1, and at most [`MAX_CONSUMERS`] subscribers in all.
    pub fn new(rooms: usize, subscribers: usize) -> Result<Layout> {
        if rooms == 0 || subscribers == 0 {
            bail!("--rooms and --subscribers must be at least 1");
        }
        match rooms.checked_mul(subscribers) {
            Some(n) if n <= MAX_CONSUMERS => Ok(Layout { rooms, subscribers }),
            _ => bail!("--rooms x --subscribers must be at most {MAX_CONSUMERS}"),
        }
    }

    /// Subscribers over all rooms.
    pub fn consumers(&self) -> usize {
        self.rooms * self.subscribers
    }

    /// The room of publisher packet `k` (over all rooms) and its sequence
    /// number within that room.
    pub fn room_of(&self, k: u64) -> (usize, u64) {
        let r = self.rooms as u64;
        ((k % r) as usize, k / r)
    }

    /// Datagrams the subscribers should get for `sent` publisher packets.
    pub fn expected(&self, sent: u64) -> u64 {
        sent.saturating_mul(self.subscribers as u64)
    }

    /// Global index of room `room`'s subscriber `sub`.
    pub fn consumer(&self, room: usize, sub: usize) -> usize {
        room * self.subscribers + sub
    }

    /// The SSRC of consumer `i` (a global index).
    pub fn consumer_ssrc(&self, i: usize) -> u32 {
        CONSUMER_SSRC_BASE + i as u32
    }

    /// The global consumer index of an SSRC, if it is one of ours.
    pub fn locate(&self, ssrc: u32) -> Option<usize> {
        let i = ssrc.checked_sub(CONSUMER_SSRC_BASE)? as usize;
        (i < self.consumers()).then_some(i)
    }
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SfuReport {
    /// Which SFU.
    pub target: SfuTarget,
    /// Repetition.
    pub rep: usize,
    /// Rooms.
    pub rooms: usize,
    /// Subscribers per room.
    pub subscribers: usize,
    /// SRTP towards the subscribers.
    pub srtp: bool,
    /// Publisher packets sent (over all rooms).
    pub sent: u64,
    /// Datagrams the subscribers should get.
    pub expected: u64,
    /// Datagrams of this run the receivers got (probe checked).
    pub received: u64,
    /// Datagrams the relay counted as sent (tern's counter; none for Janus).
    pub relay_counted: Option<u64>,
    /// Subscribers that got nothing.
    pub silent_subscribers: usize,
    /// Datagrams that were not ours (unknown SSRC, no probe, earlier run).
    pub foreign: u64,
    /// SRTP: datagrams fully authenticated / refused.
    pub srtp_verified: u64,
    /// See `srtp_verified`.
    pub srtp_failed: u64,
    /// Seconds of the window.
    pub seconds: f64,
    /// Relay CPU seconds in the window.
    pub relay_cpu_seconds: f64,
    /// `received / relay_cpu_seconds`.
    pub egress_per_cpu_second: f64,
    /// `relay_counted / relay_cpu_seconds` (tern).
    pub counted_per_cpu_second: Option<f64>,
    /// `received / seconds`.
    pub egress_pps: f64,
    /// `100 × (1 - received / expected)`.
    pub loss_pct: f64,
    /// One-way latency publisher → subscriber.
    pub latency: Latency,
}

const TOKEN: &str = "tern-bench-sfu-token-0123456789";

/// Run the scenario once against `target`.
pub fn run(target: SfuTarget, sc: &SfuScenario, rep: usize) -> Result<SfuReport> {
    let layout = Layout::new(sc.rooms, sc.subscribers)?;
    let duration = sc.duration.clamp(1, 60);
    let payload = sc.payload.clamp(PROBE_AT - 12 + HEADER_LEN, 1400);
    let receivers: Vec<UdpSocket> = (0..sc.receivers.clamp(1, 16))
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            crate::mmsg::grow_buffers(&socket2::SockRef::from(&s), 32 << 20);
            if sc.receive_poll.is_zero() {
                s.set_read_timeout(Some(Duration::from_millis(100)))?;
            } else {
                s.set_nonblocking(true)?;
            }
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let dests: Vec<SocketAddr> = receivers
        .iter()
        .map(|s| s.local_addr())
        .collect::<std::io::Result<_>>()?;
    let dest_of = |i: usize| dests[i % dests.len()];

    let relay = match target {
        SfuTarget::Tern => start_tern(sc, &layout, &dest_of)?,
        SfuTarget::Janus => start_janus(sc, &layout, &dest_of)?,
    };

    let run_id = (monotonic_ns() as u32) ^ std::process::id().rotate_left(16);
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = receivers
        .into_iter()
        .map(|sock| {
            let stop = stop.clone();
            let srtp = sc.srtp.then(|| SrtpProbe::new(&SRTP_MASTER));
            let limit = Duration::from_secs(duration + 10);
            let poll = sc.receive_poll;
            std::thread::spawn(move || receive(&sock, layout, srtp, run_id, &stop, limit, poll))
        })
        .collect();

    let counted_before = relay.counted()?;
    let cpu_before = cpu::process_ticks(relay.pid())?;
    let sender = UdpSocket::bind("127.0.0.1:0")?;
    let start = Instant::now();
    let total = sc.rate.saturating_mul(duration);
    let mut packet = vec![0u8; 12 + payload];
    let mut sent = 0u64;
    let mut send_errors = 0u64;
    while sent < total {
        let due = start + Duration::from_secs_f64(sent as f64 / sc.rate.max(1) as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let (room, seq) = layout.room_of(sent);
        let (to, ssrc) = relay.publishers()[room];
        let probe = Probe {
            run: run_id,
            flow: room as u32,
            seq,
            sent_ns: monotonic_ns(),
        };
        write_packet(&mut packet, ssrc, &probe);
        if sender.send_to(&packet, to).is_err() {
            send_errors += 1;
        }
        sent += 1;
    }
    // Let the last fan-out leave, then read the counters.
    std::thread::sleep(Duration::from_millis(300));
    let seconds = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut rx = Rx::new(layout.consumers());
    for t in threads {
        let r = t
            .join()
            .map_err(|_| Error("receiver thread panicked".into()))?;
        rx.merge(r);
    }
    // After the receivers saw the last datagram: a relay that fell behind
    // is charged for the backlog it still forwarded.
    let cpu_after = cpu::process_ticks(relay.pid())?;
    let relay_counted = match counted_before {
        Some(before) => relay.counted_settled(before + rx.received)?,
        None => None,
    }
    .zip(counted_before)
    .map(|(after, before)| after.saturating_sub(before));
    drop(relay);
    if send_errors > 0 {
        bail!("{send_errors} publisher packets could not be sent");
    }
    let relay_cpu_seconds = (cpu_after - cpu_before) as f64 / cpu::ticks_per_sec();
    let expected = layout.expected(sent);
    let cpu_s = relay_cpu_seconds.max(1e-9);
    Ok(SfuReport {
        target,
        rep,
        rooms: layout.rooms,
        subscribers: layout.subscribers,
        srtp: sc.srtp,
        sent,
        expected,
        received: rx.received,
        relay_counted,
        silent_subscribers: rx.per_consumer.iter().filter(|&&n| n == 0).count(),
        foreign: rx.foreign,
        srtp_verified: rx.srtp_verified,
        srtp_failed: rx.srtp_failed,
        seconds,
        relay_cpu_seconds,
        egress_per_cpu_second: rx.received as f64 / cpu_s,
        counted_per_cpu_second: relay_counted.map(|n| n as f64 / cpu_s),
        egress_pps: rx.received as f64 / seconds,
        loss_pct: 100.0 * (1.0 - rx.received as f64 / (expected as f64).max(1.0)),
        latency: Latency::from_hist(&rx.hist),
    })
}

/// Why a report fails the run: nothing delivered, loss over `max_loss_pct`,
/// or an SRTP datagram that did not authenticate.
pub fn verdict(r: &SfuReport, max_loss_pct: f64) -> Option<String> {
    let who = format!("{} rep {}", r.target.name(), r.rep);
    if r.received == 0 {
        Some(format!("{who}: delivered nothing"))
    } else if r.srtp_failed > 0 {
        Some(format!(
            "{who}: {} SRTP datagrams failed authentication",
            r.srtp_failed
        ))
    } else if r.loss_pct > max_loss_pct {
        Some(format!(
            "{who}: lost {:.3} % (more than {max_loss_pct} %)",
            r.loss_pct
        ))
    } else {
        None
    }
}

/// One line per report, then per target the median (min–max) of each
/// figure, and the tern/janus ratios where both ran.
pub fn table(reports: &[SfuReport]) -> String {
    let mut s = String::new();
    let targets: Vec<SfuTarget> = [SfuTarget::Tern, SfuTarget::Janus]
        .into_iter()
        .filter(|t| reports.iter().any(|r| r.target == *t))
        .collect();
    type Get = fn(&SfuReport) -> Option<f64>;
    let rows: [(&str, Get, usize); 9] = [
        (
            "egress/CPU-s (received)",
            |r| Some(r.egress_per_cpu_second),
            0,
        ),
        (
            "egress/CPU-s (relay counter)",
            |r| r.counted_per_cpu_second,
            0,
        ),
        ("egress pps (received)", |r| Some(r.egress_pps), 0),
        ("relay CPU s", |r| Some(r.relay_cpu_seconds), 2),
        ("loss %", |r| Some(r.loss_pct), 3),
        ("latency p50 µs", |r| Some(r.latency.p50_us), 1),
        ("latency p99 µs", |r| Some(r.latency.p99_us), 1),
        ("latency p99.9 µs", |r| Some(r.latency.p999_us), 1),
        ("latency max µs", |r| Some(r.latency.max_us), 1),
    ];
    if let Some(r) = reports.first() {
        let _ = writeln!(
            s,
            "{} room(s) x {} subscriber(s), {}; median (min-max) over {} rep(s)",
            r.rooms,
            r.subscribers,
            if r.srtp {
                "SRTP AES_CM_128_HMAC_SHA1_80"
            } else {
                "plain RTP"
            },
            reports.iter().filter(|x| x.target == r.target).count()
        );
    }
    let _ = write!(s, "{:<30}", "");
    for t in &targets {
        let _ = write!(s, " {:>28}", t.name());
    }
    let both = targets.len() == 2;
    if both {
        let _ = write!(s, " {:>11}", "tern/janus");
    }
    s.push('\n');
    for (name, get, p) in rows {
        let stats: Vec<Option<Stat>> = targets
            .iter()
            .map(|t| Stat::of(reports.iter().filter(|r| r.target == *t).filter_map(get)))
            .collect();
        if stats.iter().all(Option::is_none) {
            continue;
        }
        let _ = write!(s, "{name:<30}");
        for st in &stats {
            let cell = st.map_or("-".to_owned(), |st| {
                format!("{:.p$} ({:.p$}-{:.p$})", st.median, st.min, st.max)
            });
            let _ = write!(s, " {cell:>28}");
        }
        if both {
            let ratio = match (stats[0], stats[1]) {
                (Some(a), Some(b)) if b.median > 0.0 => format!("{:.2}", a.median / b.median),
                _ => "-".to_owned(),
            };
            let _ = write!(s, " {ratio:>11}");
        }
        s.push('\n');
    }
    s
}

/// Write publisher packet `probe.seq` of room `probe.flow` into `buf` (its
/// whole length is the packet): RTP header (PT 96, SSRC `ssrc`, sequence
/// number and timestamp from `probe.seq`, three packets per 30 fps frame,
/// marker on the last), a VP8 payload descriptor (S on a frame's first
/// packet) and header (a key frame every 30 frames), the probe at
/// [`PROBE_AT`], zeros after it. `false` if `buf` is too short.
pub fn write_packet(buf: &mut [u8], ssrc: u32, probe: &Probe) -> bool {
    if buf.len() < PROBE_AT + HEADER_LEN {
        return false;
    }
    let seq = probe.seq;
    let frame = seq / 3;
    let first = seq % 3 == 0;
    let last = seq % 3 == 2;
    buf[0] = 0x80;
    buf[1] = 96 | if last { 0x80 } else { 0 };
    buf[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
    buf[4..8].copy_from_slice(&((frame as u32).wrapping_mul(3000)).to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    buf[12..PROBE_AT].fill(0);
    buf[12] = if first { 0x10 } else { 0x00 };
    if first {
        // Frame tag: P = 0 on a key frame; then the key frame start code.
        buf[13] = if frame % 30 == 0 { 0x00 } else { 0x01 };
        buf[16..19].copy_from_slice(&[0x9d, 0x01, 0x2a]);
    }
    probe.encode(&mut buf[PROBE_AT..]);
    buf[PROBE_AT + HEADER_LEN..].fill(0);
    true
}

/// The probe of a plain RTP datagram the SFU sent (its header may differ in
/// length from the publisher's; the payload is the publisher's).
pub fn read_probe(pkt: &[u8]) -> Option<Probe> {
    let h = rtp_header_len(pkt)?;
    Probe::decode(pkt.get(h + PROBE_AT - 12..)?)
}

/// Reads the probes of SRTP (AES_CM_128_HMAC_SHA1_80) datagrams: decrypts
/// only the probe's bytes (counter mode: the keystream of the first three
/// blocks), tracking each SSRC's rollover counter, and fully authenticates
/// one datagram in [`VERIFY_EVERY`] per SSRC with tern-sfu's SRTP.
pub struct SrtpProbe {
    aes: Aes128,
    salt: [u8; 14],
    master: [u8; 30],
    streams: HashMap<u32, SrtpStream>,
    /// Datagrams fully authenticated.
    pub verified: u64,
    /// Datagrams that failed full authentication.
    pub failed: u64,
}

struct SrtpStream {
    highest: Option<u64>,
    seen: u64,
    full: Option<SrtpContext>,
}

impl std::fmt::Debug for SrtpProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpProbe")
            .field("streams", &self.streams.len())
            .field("verified", &self.verified)
            .field("failed", &self.failed)
            .finish()
    }
}

/// Bytes of the `_80` authentication tag.
const SRTP_TAG: usize = 10;

impl SrtpProbe {
    /// For master key ‖ salt `master` (RFC 3711 key derivation, rate 0).
    pub fn new(master: &[u8; 30]) -> SrtpProbe {
        let (k, s) = master.split_at(16);
        let mut key = [0u8; 16];
        let mut salt = [0u8; 14];
        derive_session_key(k, s, Label::RtpEncryption, &mut key);
        derive_session_key(k, s, Label::RtpSalt, &mut salt);
        SrtpProbe {
            aes: Aes128::new(&key.into()),
            salt,
            master: *master,
            streams: HashMap::new(),
            verified: 0,
            failed: 0,
        }
    }

    /// The probe of one SRTP datagram; `None` if it has none (too short,
    /// not RTP, or the decrypted bytes are not a probe).
    pub fn probe(&mut self, pkt: &[u8]) -> Option<Probe> {
        let h = rtp_header_len(pkt)?;
        let at = PROBE_AT - 12;
        if pkt.len() < h + at + HEADER_LEN + SRTP_TAG {
            return None;
        }
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let st = self.streams.entry(ssrc).or_insert(SrtpStream {
            highest: None,
            seen: 0,
            full: None,
        });
        let index = estimate_index(st.highest, seq);
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (b, x) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= x;
        }
        for (b, x) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= x;
        }
        let mut clear = [0u8; PROBE_AT - 12 + HEADER_LEN];
        let n = clear.len();
        clear.copy_from_slice(&pkt[h..h + n]);
        ctr::Ctr128BE::<Aes128>::from_core(ctr::CtrCore::inner_iv_init(
            self.aes.clone(),
            &iv.into(),
        ))
        .apply_keystream(&mut clear);
        let probe = Probe::decode(&clear[at..])?;
        if st.highest.map_or(true, |hi| index > hi) {
            st.highest = Some(index);
        }
        st.seen += 1;
        if st.seen % VERIFY_EVERY == 1 {
            let master = &self.master;
            let ctx = st.full.get_or_insert_with(|| {
                // INVARIANT: the lengths are the profile's (16 + 14).
                SrtpContext::new(
                    SrtpProfile::Aes128CmHmacSha1_80,
                    &master[..16],
                    &master[16..],
                )
                .expect("AES_CM_128 key and salt lengths")
            });
            let mut buf = [0u8; 2048];
            let ok = pkt.len() <= buf.len() && {
                let b = &mut buf[..pkt.len()];
                b.copy_from_slice(pkt);
                ctx.unprotect_rtp(b)
                    .is_ok_and(|n| Probe::decode(b.get(h + at..n).unwrap_or(&[])) == Some(probe))
            };
            if ok {
                self.verified += 1;
            } else {
                self.failed += 1;
            }
        }
        Some(probe)
    }
}

/// RFC 3711 §3.3.1: the packet index of `seq` given the highest index seen.
fn estimate_index(highest: Option<u64>, seq: u16) -> u64 {
    let Some(hi) = highest else {
        return u64::from(seq);
    };
    let roc = hi >> 16;
    let s_l = (hi & 0xFFFF) as i64;
    let s = i64::from(seq);
    let v = if s_l < 32_768 {
        if s - s_l > 32_768 && roc > 0 {
            roc - 1
        } else {
            roc
        }
    } else if s_l - 32_768 > s {
        roc + 1
    } else {
        roc
    };
    (v << 16) | u64::from(seq)
}

/// Length of an RTP header (fixed part, CSRCs, extension); `None` if `pkt`
/// is not RTP version 2 or is RTCP (PT 192-223 in the second byte).
fn rtp_header_len(pkt: &[u8]) -> Option<usize> {
    if pkt.len() < 12 || pkt[0] >> 6 != 2 || (192..=223).contains(&pkt[1]) {
        return None;
    }
    let mut h = 12 + 4 * usize::from(pkt[0] & 0x0F);
    if pkt[0] & 0x10 != 0 {
        let ext = pkt.get(h + 2..h + 4)?;
        h += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    (h <= pkt.len()).then_some(h)
}

/// A receiver thread's (or all of them, merged) accounting.
struct Rx {
    received: u64,
    foreign: u64,
    per_consumer: Vec<u64>,
    hist: Histogram<u64>,
    srtp_verified: u64,
    srtp_failed: u64,
}

impl Rx {
    fn new(consumers: usize) -> Rx {
        Rx {
            received: 0,
            foreign: 0,
            per_consumer: vec![0; consumers],
            // INVARIANT: constant, valid bounds (1 ns .. 60 s, 3 digits).
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            srtp_verified: 0,
            srtp_failed: 0,
        }
    }

    /// Account one datagram that arrived at `now_ns`.
    fn on(
        &mut self,
        pkt: &[u8],
        layout: &Layout,
        srtp: Option<&mut SrtpProbe>,
        run: u32,
        now_ns: u64,
    ) {
        if pkt.len() >= 2 && (192..=223).contains(&pkt[1]) {
            return; // RTCP (sender reports): not counted either way.
        }
        let consumer = pkt
            .get(8..12)
            .and_then(|b| layout.locate(u32::from_be_bytes([b[0], b[1], b[2], b[3]])));
        let probe = match srtp {
            Some(s) => s.probe(pkt),
            None => read_probe(pkt),
        };
        match (consumer, probe) {
            (Some(i), Some(p)) if p.run == run => {
                self.received += 1;
                self.per_consumer[i] += 1;
                let _ = self.hist.record(now_ns.saturating_sub(p.sent_ns).max(1));
            }
            _ => self.foreign += 1,
        }
    }

    fn merge(&mut self, o: Rx) {
        self.received += o.received;
        self.foreign += o.foreign;
        for (a, b) in self.per_consumer.iter_mut().zip(o.per_consumer) {
            *a += b;
        }
        let _ = self.hist.add(&o.hist);
        self.srtp_verified += o.srtp_verified;
        self.srtp_failed += o.srtp_failed;
    }
}

/// Receive until `stop` is set and nothing came for half a second, or
/// `limit` passes.
fn receive(
    sock: &UdpSocket,
    layout: Layout,
    mut srtp: Option<SrtpProbe>,
    run: u32,
    stop: &AtomicBool,
    limit: Duration,
    poll: Duration,
) -> Rx {
    let mut rx = Rx::new(layout.consumers());
    let mut batch = RecvBatch::new(64);
    let end = Instant::now() + limit;
    let mut last = Instant::now();
    while Instant::now() < end {
        let n = match batch.recv(sock.as_raw_fd()) {
            Ok(n) => n,
            Err(_) => break,
        };
        if n == 0 {
            if stop.load(Ordering::Relaxed) && last.elapsed() > Duration::from_millis(500) {
                break;
            }
            if !poll.is_zero() {
                std::thread::sleep(poll);
            }
            continue;
        }
        last = Instant::now();
        let now = monotonic_ns();
        for i in 0..n {
            rx.on(batch.data(i), &layout, srtp.as_mut(), run, now);
        }
    }
    if let Some(s) = srtp {
        rx.srtp_verified = s.verified;
        rx.srtp_failed = s.failed;
    }
    rx
}

/// A started SFU with its publishers' addresses and SSRCs, by room.
enum Relay {
    Tern {
        process: servers::Spawned,
        admin: SocketAddr,
        publishers: Vec<(SocketAddr, u32)>,
    },
    Janus {
        janus: Janus,
        publishers: Vec<(SocketAddr, u32)>,
    },
}

impl Relay {
    fn pid(&self) -> u32 {
        match self {
            Relay::Tern { process, .. } => process.pid,
            Relay::Janus { janus, .. } => janus.pid,
        }
    }

    fn publishers(&self) -> &[(SocketAddr, u32)] {
        match self {
            Relay::Tern { publishers, .. } | Relay::Janus { publishers, .. } => publishers,
        }
    }

    /// The relay's own count of SFU datagrams sent, where it has one.
    fn counted(&self) -> Result<Option<u64>> {
        match self {
            Relay::Tern { admin, .. } => egress(*admin).map(Some),
            Relay::Janus { .. } => Ok(None),
        }
    }

    /// Workers report about once a second (a report can skip an interval):
    /// wait until the counter reaches `at_least`, or stops moving for three
    /// readings.
    fn counted_settled(&self, at_least: u64) -> Result<Option<u64>> {
        let Relay::Tern { admin, .. } = self else {
            return Ok(None);
        };
        let mut last = egress(*admin)?;
        let mut same = 0;
        for _ in 0..15 {
            if last >= at_least || same >= 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(700));
            let now = egress(*admin)?;
            same = if now == last { same + 1 } else { 0 };
            last = now;
        }
        Ok(Some(last))
    }
}

fn start_tern(
    sc: &SfuScenario,
    layout: &Layout,
    dest_of: &dyn Fn(usize) -> SocketAddr,
) -> Result<Relay> {
    let admin = free_tcp_port()?;
    let start = 20_000 + (std::process::id() % 20_000) as u16;
    let (lo, hi) = free_udp_window(
        start,
        layout.consumers() + layout.rooms + 64 * sc.workers.max(1),
    )?;
    let (rlo, rhi) = free_udp_window(hi.saturating_add(1), 16)?;
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    let listen = SocketAddr::new(ip, servers::free_udp_port(ip)?);
    let mut cmd = Command::new(&sc.tern);
    cmd.args([
        "--listen",
        &listen.to_string(),
        "--relay-ports",
        &format!("{rlo}-{rhi}"),
        "--sfu",
        "--sfu-ports",
        &format!("{lo}-{hi}"),
        "--admin",
        &admin.to_string(),
        "--admin-token",
        TOKEN,
        "--workers",
        &sc.workers.to_string(),
        "--realm",
        "bench",
        "--log-level",
        "warn",
        "--nic-stats",
        "off",
    ]);
    // Killed by PID when dropped, and dies with the harness.
    let process = servers::Spawned::start("tern-sfu", cmd, listen, false)?;
    let ready = Instant::now() + Duration::from_secs(10);
    while !tern_http(admin, "GET", "/readyz", "").is_ok_and(|(s, _)| s == 200) {
        if Instant::now() > ready {
            bail!("tern did not become ready on {admin}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let srtp = if sc.srtp {
        format!(
            r#","srtp":{{"profile":"AES_CM_128_HMAC_SHA1_80","recv_key":"{SRTP_MASTER_B64}","send_key":"{SRTP_MASTER_B64}"}}"#
        )
    } else {
        String::new()
    };
    let mut publishers = Vec::with_capacity(layout.rooms);
    for room in 0..layout.rooms {
        let (_, r) = call(admin, "POST", "/sfu/routers", "{}")?;
        let base = format!("/sfu/routers/{}", r["id"]);
        let (_, t) = call(admin, "POST", &format!("{base}/transports"), "{}")?;
        let pub_addr: SocketAddr = t["local"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error(format!("transport answer {t}")))?;
        let ssrc = TERN_PUBLISHER_SSRC_BASE + room as u32;
        let (_, p) = call(
            admin,
            "POST",
            &format!("{base}/producers"),
            &format!(
                r#"{{"transport":{},"kind":"video","codec":"vp8","clock_rate":90000,"payload_types":[96],"encodings":[{{"ssrc":{ssrc}}}]}}"#,
                t["id"]
            ),
        )?;
        for sub in 0..layout.subscribers {
            let i = layout.consumer(room, sub);
            let (_, t) = call(
                admin,
                "POST",
                &format!("{base}/transports"),
                &format!(r#"{{"remote":"{}"{srtp}}}"#, dest_of(i)),
            )?;
            call(
                admin,
                "POST",
                &format!("{base}/consumers"),
                &format!(
                    r#"{{"producer":{},"transport":{},"ssrc":{}}}"#,
                    p["id"],
                    t["id"],
                    layout.consumer_ssrc(i)
                ),
            )?;
        }
        publishers.push((pub_addr, ssrc));
    }
    Ok(Relay::Tern {
        process,
        admin,
        publishers,
    })
}

fn start_janus(
    sc: &SfuScenario,
    layout: &Layout,
    dest_of: &dyn Fn(usize) -> SocketAddr,
) -> Result<Relay> {
    let mut janus = Janus::start(&sc.janus, sc.janus_modules.as_deref())?;
    let mut port = 20_000 + (std::process::id() % 20_000) as u16;
    let mut publishers = Vec::with_capacity(layout.rooms);
    for room in 0..layout.rooms {
        let mut tries = 0;
        while !janus::pair_free(port) {
            port = if port >= 59_000 { 20_000 } else { port + 2 };
            tries += 1;
            if tries > 20_000 {
                bail!("no free UDP port pair for a Janus remote publisher");
            }
        }
        let id = 1 + room as u64;
        janus.create_room(id)?;
        let p = janus.add_remote_publisher(id, port)?;
        port += 2;
        let dests: Vec<(u16, u32)> = (0..layout.subscribers)
            .map(|sub| {
                let i = layout.consumer(room, sub);
                (dest_of(i).port(), layout.consumer_ssrc(i))
            })
            .collect();
        janus.rtp_forward(id, p.id, &dests, sc.srtp.then_some(SRTP_MASTER_B64))?;
        publishers.push((
            SocketAddr::from(([127, 0, 0, 1], p.port)),
            janus::PUBLISHER_SSRC,
        ));
    }
    Ok(Relay::Janus { janus, publishers })
}

fn egress(admin: SocketAddr) -> Result<u64> {
    let (_, text) = tern_http(admin, "GET", "/metrics", "")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("tern_sfu_packets_total{direction=\"out\"}"))
        .ok_or_else(|| Error("no tern_sfu_packets_total in /metrics".into()))?;
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error(format!("bad sample {line}")))
}

fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, serde_json::Value)> {
    let (status, text) = tern_http(admin, method, path, body)?;
    if status / 100 != 2 {
        bail!("{method} {path}: {status} {text}");
    }
    let v = serde_json::from_str(&text).map_err(|e| Error(format!("{path}: {e}: {text}")))?;
    Ok((status, v))
}

fn tern_http(admin: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let auth = format!("Bearer {TOKEN}");
    http_exchange(admin, method, path, &[("Authorization", &auth)], body)
}

/// One HTTP/1.1 exchange with `Connection: close`: the status and the body.
pub(crate) fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n");
    for (k, v) in headers {
        let _ = write!(req, "{k}: {v}\r\n");
    }
    let _ = write!(req, "Content-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let status = answer
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error(format!("bad HTTP answer {answer:?}")))?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| Error(format!("bad chunked body {body:?}")))?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// The body of a `Transfer-Encoding: chunked` message (Janus answers so);
/// `None` if it is malformed or cut short.
fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        s = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

fn free_tcp_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `n` consecutive free UDP ports on 127.0.0.1 from about `start`, probed now.
fn free_udp_window(start: u16, n: usize) -> Result<(u16, u16)> {
    let n = u16::try_from(n).map_err(|_| Error("too many ports".into()))?;
    let mut lo = start.clamp(20_000, 59_000);
    for _ in 0..200 {
        let hi = lo.saturating_add(n - 1);
        if hi < 60_000 && (lo..=hi).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return Ok((lo, hi));
        }
        lo = if hi >= 59_000 { 20_000 } else { hi + 1 };
    }
    bail!("no free window of {n} UDP ports")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn probe(room: u32, seq: u64) -> Probe {
        Probe {
            run: 77,
            flow: room,
            seq,
            sent_ns: 1_000_000 + seq,
        }
    }

    fn packet(ssrc: u32, p: &Probe, payload: usize) -> Vec<u8> {
        let mut b = vec![0u8; 12 + payload];
        assert!(write_packet(&mut b, ssrc, p));
        b
    }

    /// `pkt` as an SFU would send it to consumer `ssrc`: its SSRC.
    fn as_sent(mut pkt: Vec<u8>, ssrc: u32) -> Vec<u8> {
        pkt[8..12].copy_from_slice(&ssrc.to_be_bytes());
        pkt
    }

    fn protect(ctx: &mut SrtpContext, pkt: &[u8]) -> Vec<u8> {
        let mut b = pkt.to_vec();
        b.resize(pkt.len() + SRTP_TAG, 0);
        let n = ctx.protect_rtp(&mut b, pkt.len()).unwrap();
        b.truncate(n);
        b
    }

    fn ctx() -> SrtpContext {
        SrtpContext::new(
            SrtpProfile::Aes128CmHmacSha1_80,
            &SRTP_MASTER[..16],
            &SRTP_MASTER[16..],
        )
        .unwrap()
    }

    #[test]
    fn chunked_bodies_are_joined() {
        // As Janus 1.1.2 answered on this machine.
        let janus = "4C\r\n{\"janus\": \"success\", \"transaction\": \"tb1\", \"data\": {\"id\": 6519346206497087}}\r\n0\r\n\r\n";
        let body = dechunk(janus).unwrap();
        assert!(body.starts_with('{') && body.ends_with("}}"), "{body}");
        assert_eq!(
            dechunk("3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n").unwrap(),
            "abcde"
        );
        assert_eq!(dechunk("5\r\nabc"), None, "cut short");
        assert_eq!(dechunk("zz\r\nabc\r\n0\r\n\r\n"), None);
        assert_eq!(dechunk("3\r\nabcX0\r\n\r\n"), None);
        assert_eq!(dechunk(""), None);
    }

    #[test]
    fn layout_interleaves_rooms_and_names_every_subscriber() {
        let l = Layout::new(3, 4).unwrap();
        assert_eq!(l.consumers(), 12);
        let rooms: Vec<_> = (0..7).map(|k| l.room_of(k)).collect();
        assert_eq!(
            rooms,
            [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2)]
        );
        assert_eq!(l.expected(10), 40);
        let mut seen = std::collections::HashSet::new();
        for room in 0..3 {
            for sub in 0..4 {
                let i = l.consumer(room, sub);
                assert!(seen.insert(i));
                assert_eq!(l.locate(l.consumer_ssrc(i)), Some(i));
            }
        }
        assert_eq!(l.locate(CONSUMER_SSRC_BASE + 12), None);
        assert_eq!(l.locate(CONSUMER_SSRC_BASE - 1), None);
        assert_eq!(l.locate(janus::PUBLISHER_SSRC), None);
        assert!(Layout::new(0, 4).is_err());
        assert!(Layout::new(4, 0).is_err());
        assert!(Layout::new(101, 100).is_err());
        assert!(Layout::new(usize::MAX, 2).is_err());
        assert!(Layout::new(200, 50).is_ok());
    }

    #[test]
    fn packets_are_vp8_shaped_and_carry_the_probe() {
        let p = probe(2, 30);
        let b = packet(0xABCD, &p, 100);
        assert_eq!(b[0], 0x80);
        assert_eq!(b[1], 96, "first packet of a frame: no marker");
        assert_eq!(u16::from_be_bytes([b[2], b[3]]), 30);
        assert_eq!(u32::from_be_bytes([b[4], b[5], b[6], b[7]]), 10 * 3000);
        assert_eq!(b[12], 0x10, "S bit on a frame's first packet");
        assert_eq!(b[13], 1, "frame 10 is not a key frame");
        assert_eq!(read_probe(&b), Some(p));
        let key = packet(1, &probe(0, 90), 100);
        assert_eq!(key[13], 0, "frame 30 is a key frame");
        assert_eq!(&key[16..19], &[0x9d, 0x01, 0x2a]);
        let last = packet(1, &probe(0, 32), 100);
        assert_eq!(last[1], 96 | 0x80, "marker on a frame's last packet");
        assert_eq!(last[12], 0);
        assert!(!write_packet(&mut [0u8; PROBE_AT + HEADER_LEN - 1], 1, &p));
    }

    #[test]
    fn probe_is_found_behind_csrcs_and_extensions() {
        let p = probe(1, 5);
        let plain = packet(9, &p, 60);
        // The same payload behind one CSRC and a one-word header extension.
        let mut b = vec![0x80 | 0x10 | 0x01, 96];
        b.extend_from_slice(&plain[2..12]);
        b.extend_from_slice(&[0, 0, 0, 7]); // CSRC
        b.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0]); // extension
        b.extend_from_slice(&plain[12..]);
        assert_eq!(rtp_header_len(&b), Some(12 + 4 + 8));
        assert_eq!(read_probe(&b), Some(p));
        // RTCP and non-RTP are not probes.
        let mut rtcp = plain.clone();
        rtcp[1] = 200;
        assert_eq!(read_probe(&rtcp), None);
        let mut v1 = plain;
        v1[0] = 0x40;
        assert_eq!(read_probe(&v1), None);
    }

    #[test]
    fn srtp_probe_reads_what_srtp_protected_and_authenticates_samples() {
        let mut tx = ctx();
        let mut rx = SrtpProbe::new(&SRTP_MASTER);
        for seq in 0..(2 * VERIFY_EVERY) {
            let p = probe(0, seq);
            let s = protect(&mut tx, &as_sent(packet(0, &p, 200), 0x5000_0001));
            assert_ne!(Probe::decode(&s[PROBE_AT..]), Some(p), "encrypted");
            assert_eq!(rx.probe(&s), Some(p));
        }
        assert_eq!((rx.verified, rx.failed), (2, 0));
        // A datagram whose tag is wrong still shows its probe, but the
        // sampled authentication refuses it.
        let mut rx = SrtpProbe::new(&SRTP_MASTER);
        let mut s = protect(&mut ctx(), &as_sent(packet(0, &probe(0, 0), 200), 5));
        let n = s.len();
        s[n - 1] ^= 1;
        assert_eq!(rx.probe(&s), Some(probe(0, 0)));
        assert_eq!((rx.verified, rx.failed), (0, 1));
        // Another key: no probe.
        let mut other = SrtpProbe::new(&[7; 30]);
        let s = protect(&mut ctx(), &as_sent(packet(0, &probe(0, 0), 200), 6));
        assert_eq!(other.probe(&s), None);
    }

    #[test]
    fn srtp_probe_follows_the_rollover_counter() {
        // Sequence numbers wrapping: the sender's ROC goes to 1 and the
        // reader must follow to keep decrypting.
        let mut tx = ctx();
        let mut rx = SrtpProbe::new(&SRTP_MASTER);
        for (i, seq) in (65_530u64..65_536).chain(0..6).enumerate() {
            let mut p = probe(0, seq);
            p.sent_ns = i as u64;
            let s = protect(&mut tx, &as_sent(packet(0, &p, 100), 0x5000_0000));
            assert_eq!(rx.probe(&s), Some(p), "seq {seq}");
        }
        assert_eq!(estimate_index(None, 5), 5);
        assert_eq!(estimate_index(Some(65_535), 2), 65_536 + 2);
        assert_eq!(estimate_index(Some(65_536 + 3), 65_534), 65_534);
        assert_eq!(estimate_index(Some(10), 8), 8);
        assert_eq!(estimate_index(Some(40_000), 39_000), 39_000);
    }

    #[test]
    fn receiver_counts_only_this_runs_probes_from_known_subscribers() {
        let l = Layout::new(2, 3).unwrap();
        let mut rx = Rx::new(l.consumers());
        let p = probe(1, 4);
        let good = as_sent(packet(0, &p, 80), l.consumer_ssrc(4));
        rx.on(&good, &l, None, 77, p.sent_ns + 250_000);
        rx.on(&good, &l, None, 77, p.sent_ns + 750_000);
        // Earlier run, unknown SSRC, no probe: foreign. RTCP: ignored.
        rx.on(&good, &l, None, 78, p.sent_ns);
        rx.on(&as_sent(good.clone(), 0x1234), &l, None, 77, p.sent_ns);
        rx.on(&good[..PROBE_AT + 4], &l, None, 77, p.sent_ns);
        let mut rtcp = good.clone();
        rtcp[1] = 200;
        rx.on(&rtcp, &l, None, 77, p.sent_ns);
        assert_eq!((rx.received, rx.foreign), (2, 3));
        assert_eq!(rx.per_consumer, [0, 0, 0, 0, 2, 0]);
        let mut other = Rx::new(l.consumers());
        other.on(
            &as_sent(good, l.consumer_ssrc(0)),
            &l,
            None,
            77,
            p.sent_ns + 1,
        );
        rx.merge(other);
        assert_eq!(rx.per_consumer, [1, 0, 0, 0, 2, 0]);
        let lat = Latency::from_hist(&rx.hist);
        assert!(lat.max_us >= 749.0 && lat.max_us <= 751.0, "{lat:?}");
        assert!(lat.p50_us >= 249.0 && lat.p50_us <= 251.0, "{lat:?}");
    }

    fn report(target: SfuTarget, egress: f64, loss: f64) -> SfuReport {
        SfuReport {
            target,
            rep: 0,
            rooms: 1,
            subscribers: 10,
            srtp: false,
            sent: 100,
            expected: 1000,
            received: 1000,
            relay_counted: None,
            silent_subscribers: 0,
            foreign: 0,
            srtp_verified: 0,
            srtp_failed: 0,
            seconds: 1.0,
            relay_cpu_seconds: 0.1,
            egress_per_cpu_second: egress,
            counted_per_cpu_second: None,
            egress_pps: 1000.0,
            loss_pct: loss,
            latency: Latency::default(),
        }
    }

    #[test]
    fn verdict_fails_empty_lossy_and_unauthenticated_windows() {
        let ok = report(SfuTarget::Janus, 1.0, 0.5);
        assert_eq!(verdict(&ok, 1.0), None);
        let lossy = report(SfuTarget::Janus, 1.0, 2.0);
        assert!(verdict(&lossy, 1.0).unwrap().contains("lost 2.000 %"));
        let mut empty = report(SfuTarget::Tern, 0.0, 100.0);
        empty.received = 0;
        assert!(verdict(&empty, 100.0)
            .unwrap()
            .contains("delivered nothing"));
        let mut bad = report(SfuTarget::Tern, 1.0, 0.0);
        bad.srtp_failed = 1;
        assert!(verdict(&bad, 1.0).unwrap().contains("authentication"));
    }

    #[test]
    fn table_has_a_ratio_column_when_both_ran() {
        let mut t = report(SfuTarget::Tern, 3000.0, 0.0);
        t.counted_per_cpu_second = Some(3100.0);
        let both = table(&[
            t,
            report(SfuTarget::Janus, 1000.0, 0.0),
            report(SfuTarget::Janus, 2000.0, 0.0),
        ]);
        let line = both
            .lines()
            .find(|l| l.starts_with("egress/CPU-s (received)"))
            .unwrap();
        assert!(line.contains("1500 (1000-2000)"), "{both}");
        assert!(line.trim_end().ends_with("2.00"), "{both}");
        assert!(both.contains("tern/janus"));
        let one = table(&[report(SfuTarget::Tern, 1.0, 0.0)]);
        assert!(!one.contains("tern/janus"));
        assert!(!one.contains("relay counter"), "no counter, no row: {one}");
    }

    proptest! {
        #[test]
        fn readers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = rtp_header_len(&bytes);
            let _ = read_probe(&bytes);
            let mut s = SrtpProbe::new(&SRTP_MASTER);
            let _ = s.probe(&bytes);
            let l = Layout::new(2, 2).unwrap();
            let mut rx = Rx::new(4);
            rx.on(&bytes, &l, Some(&mut s), 1, 5);
            rx.on(&bytes, &l, None, 1, 5);
        }
    }
}
