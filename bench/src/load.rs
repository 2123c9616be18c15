//! The load itself: paced senders (a token bucket per thread, `sendmmsg`
//! per flow), receivers on the peer side (`recvmmsg`), and the accounting
//! of one measurement window — offered and delivered rates, loss,
//! reordering, duplicates, one-way latency, and CPU.
//!
//! Every loop here is bounded: senders stop at their packet count or their
//! time limit, receivers when the drain ends or at a hard deadline.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cpu::{CpuReport, Snapshot};
use crate::mix::{PayloadMix, MAX_SIZE};
use crate::mmsg::{RecvBatch, SendBatch};
use crate::pacing::TokenBucket;
use crate::payload::{monotonic_ns, Probe};

/// One flow of the load: a socket connected to the relay (or the null relay)
/// and the bytes each datagram starts with before the probe.
#[derive(Debug)]
pub struct Flow {
    /// The flow's own client socket (its 5-tuple is the allocation's).
    pub sock: UdpSocket,
    /// ChannelData or Send-indication header; empty in plain UDP mode.
    pub prefix: Vec<u8>,
}

/// How much load, how fast.
#[derive(Clone, Debug, Serialize)]
pub struct Load {
    /// Requested rate over all flows, packets per second.
    pub rate_pps: f64,
    /// Sending time limit.
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Packet count limit over all senders (whichever comes first).
    pub count: u64,
    /// Probe payload bytes (what the peer receives), a multiple of 4, >= 32.
    pub payload_len: usize,
    /// Sender threads (flows are dealt round-robin).
    pub senders: usize,
    /// Packets sent back to back on one flow in one `sendmmsg`.
    pub burst: usize,
    /// Pin sender and receiver threads to cores (senders first).
    pub pin: bool,
    /// Share of one core other processes may use before a run is flagged, percent.
    pub disturb_pct: f64,
    /// Peers echo every probe back through the relay to its client, which
    /// measures round-trip time and return loss (TURN targets only).
    pub echo: bool,
    /// Draw each packet's payload size from this mix; `None`: every packet
    /// is `payload_len` bytes.
    pub mix: Option<PayloadMix>,
    /// The last `flood_flows` flows are flood flows: each sends
    /// `flood_rate_pps` on its own, beside the others sharing `rate_pps`.
    pub flood_flows: usize,
    /// Rate of each flood flow, packets per second.
    pub flood_rate_pps: f64,
    /// Packet count limit over all flood flows.
    pub flood_count: u64,
    /// Sender clock tick: zero paces every packet on time (spinning for
    /// waits under 60 µs, so a sender thread keeps a core busy); otherwise
    /// a sender sleeps a tick whenever it is caught up and then sends what
    /// accrued, so senders use little CPU and the machine-wide CPU figure
    /// is mostly the relay's and the kernel's.
    #[serde(with = "secs")]
    pub tick: Duration,
    /// Send and receive through AF_XDP sockets in these namespaces instead
    /// of the kernel's UDP path (`--harness-io xsk`; one sender and one
    /// receiver thread; needs the `xdp` feature).
    pub xsk: Option<XskSides>,
}

/// Where the AF_XDP harness runs: the client and peer namespaces and the
/// veth in each (see `crate::xsk_load`).
#[derive(Clone, Debug, Serialize)]
pub struct XskSides {
    /// The client namespace (a `/run/netns` path).
    pub client_netns: std::path::PathBuf,
    /// The client namespace's veth.
    pub client_if: String,
    /// The peer namespace.
    pub peer_netns: std::path::PathBuf,
    /// The peer namespace's veth.
    pub peer_if: String,
}

impl Load {
    /// The sizes packets are drawn from (one size without a mix).
    pub fn sizes(&self) -> PayloadMix {
        match &self.mix {
            Some(m) => m.clone(),
            None => PayloadMix::fixed(self.payload_len),
        }
    }
}

mod secs {
    use std::time::Duration;
    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Latency percentiles, microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Latency {
    fn from_hist(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

/// What one measurement window saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Measurement {
    /// Packets requested: rate x duration, capped by the count.
    pub requested: u64,
    /// Packets the generator handed to the kernel.
    pub sent: u64,
    /// Sends the kernel refused.
    pub send_errors: u64,
    /// Sending time, seconds.
    pub send_s: f64,
    /// `sent / send_s`.
    pub offered_pps: f64,
    /// Share of the requested packets the generator could not offer, percent.
    pub send_shortfall_pct: f64,
    /// Whether the shortfall is large enough (> 1 %) that the rate asked for was not offered.
    pub generator_limited: bool,
    /// Distinct probes received by the peers.
    pub received: u64,
    /// `received / send_s`.
    pub delivered_pps: f64,
    /// `sent - received`.
    pub lost: u64,
    /// `lost / sent`, percent.
    pub loss_pct: f64,
    /// Probes that arrived after a higher sequence number of their flow.
    pub reordered: u64,
    /// Probes received more than once.
    pub duplicates: u64,
    /// Datagrams that were not probes of this run.
    pub foreign: u64,
    /// One-way latency (send to receive, same host clock).
    pub latency: Latency,
    /// CPU over the window (from the first send to the end of the drain).
    pub cpu: CpuReport,
    /// The echoed direction (peer → relay → client), with `Load::echo`.
    pub echo: Option<EchoReport>,
    /// With `--harness-io xsk`: how the harness's own datagrams went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub harness_xsk: Option<HarnessXsk>,
    /// Probe payload bytes the kernel took (what the peers see, no TURN framing).
    pub sent_bytes: u64,
    /// Payload bytes of the distinct probes received.
    pub received_bytes: u64,
    /// `received_bytes / send_s`.
    pub delivered_bytes_per_s: f64,
    /// Per payload size: probes sent and distinct probes received.
    pub sizes: Vec<SizeCount>,
    /// The low-rate and the flood flows separately (only with flood flows).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ClassReport>,
}

/// Probes of one payload size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SizeCount {
    /// Payload bytes.
    pub size: usize,
    /// Sent (taken by the kernel).
    pub sent: u64,
    /// Distinct probes of this size received by the peers.
    pub received: u64,
}

/// One class of flows (low-rate or flood) in a window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClassReport {
    /// `low-rate` or `flood`.
    pub class: &'static str,
    /// Flows in the class.
    pub flows: usize,
    /// Packets requested.
    pub requested: u64,
    /// Packets the kernel took.
    pub sent: u64,
    /// Distinct probes received.
    pub received: u64,
    /// `sent - received`.
    pub lost: u64,
    /// `lost / sent`, percent.
    pub loss_pct: f64,
    /// `sent / send_s` of this class's senders.
    pub offered_pps: f64,
    /// `received / send_s`.
    pub delivered_pps: f64,
    /// Received payload bytes per second.
    pub delivered_bytes_per_s: f64,
    /// Probes that arrived after a higher sequence number of their flow.
    pub reordered: u64,
    /// One-way latency of this class's probes.
    pub latency: Latency,
}

/// The AF_XDP harness's own paths: what went through its XSKs and what
/// the kernel carried instead (TX ring full; datagrams the sink's XDP
/// program passed up).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct HarnessXsk {
    /// Generator frames through the client-side XSK.
    pub sent_xsk: u64,
    /// Generator datagrams sent through the kernel instead.
    pub sent_kernel: u64,
    /// Sink datagrams through the peer-side XSK.
    pub received_xsk: u64,
    /// Sink datagrams through the peer sockets.
    pub received_kernel: u64,
}

/// What came back to the clients when peers echo.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EchoReport {
    /// Distinct probes back at their client.
    pub received: u64,
    /// `(received at peers − received back) ÷ received at peers`, percent.
    pub return_loss_pct: f64,
    /// Datagrams at the clients that were not this window's probes.
    pub foreign: u64,
    /// Round-trip time: client send to client receive, through the relay twice.
    pub rtt: Latency,
}

/// Send `load` over `flows` (flow `i` goes to peer `i % peers.len()`), receive
/// on `peers`, and account for it. `relay_pid` is the process whose CPU is
/// the relay's. `run` tags the probes so late packets of an earlier window
/// are not counted.
pub fn measure(
    flows: &[Flow],
    peers: &[UdpSocket],
    load: &Load,
    run: u32,
    relay_pid: Option<u32>,
) -> Measurement {
    let nflood = load.flood_flows.min(flows.len());
    let nlow = flows.len() - nflood;
    let secs = load.duration.as_secs_f64();
    // Per class: (first flow, flows, sender threads, total rate, packets).
    let classes = [
        (
            0,
            nlow,
            load.senders.clamp(1, nlow.max(1)),
            load.rate_pps,
            load.count.min((load.rate_pps * secs).round() as u64),
        ),
        (
            nlow,
            nflood,
            if nflood > 0 {
                load.senders.clamp(1, nflood)
            } else {
                0
            },
            load.flood_rate_pps * nflood as f64,
            if nflood > 0 {
                load.flood_count
                    .min((load.flood_rate_pps * nflood as f64 * secs).round() as u64)
            } else {
                0
            },
        ),
    ];
    let senders = classes[0].2 + classes[1].2;
    let requested = classes[0].4 + classes[1].4;
    let received_total = AtomicU64::new(0);
    let echo_total = AtomicU64::new(0);
    let stop_rx = AtomicBool::new(false);
    let start = Barrier::new(senders + 1);
    let cores = if load.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let max_seq = requested + load.burst as u64 + 1;

    thread::scope(|s| {
        let rx_handles: Vec<_> = match xsk_sides(load) {
            Some(sides) => {
                // One AF_XDP sink for every peer socket; senders start once
                // it is attached (or failed, which the window then shows).
                let (ready_tx, ready) = std::sync::mpsc::channel();
                let (received_total, stop_rx) = (&received_total, &stop_rx);
                let h = s.spawn(move || {
                    let mut st = RxStats::new((flows.len(), nlow), max_seq);
                    let counts =
                        xsk_receive(sides, peers, received_total, stop_rx, ready_tx, |d, now| {
                            st.on(d, run, now)
                        });
                    st.xsk = Some(counts);
                    st
                });
                match ready.recv_timeout(Duration::from_secs(10)) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("tern-bench: AF_XDP sink: {e}"),
                    Err(_) => eprintln!("tern-bench: AF_XDP sink not ready after 10 s"),
                }
                vec![h]
            }
            None => peers
                .iter()
                .enumerate()
                .map(|(r, sock)| {
                    let core = cores.get((senders + r) % cores.len().max(1)).copied();
                    let (received_total, stop_rx) = (&received_total, &stop_rx);
                    s.spawn(move || {
                        if let Some(c) = core {
                            core_affinity::set_for_current(c);
                        }
                        receive(
                            sock,
                            (flows.len(), nlow),
                            run,
                            max_seq,
                            received_total,
                            stop_rx,
                            load.echo,
                        )
                    })
                })
                .collect(),
        };
        let echo_total = &echo_total;
        let echo_handle = load.echo.then(|| {
            let stop_rx = &stop_rx;
            s.spawn(move || receive_echo(flows, run, max_seq, echo_total, stop_rx))
        });
        let mut tx_handles = Vec::with_capacity(senders);
        for (class, &(base, nc, sc, rate_total, req)) in classes.iter().enumerate() {
            for t in 0..sc {
                let mine: Vec<&Flow> = flows[base..base + nc].iter().skip(t).step_by(sc).collect();
                let first_flow = (base + t) as u32;
                // Rate and packets in proportion to the thread's flows.
                let before = |t: usize| (t * (nc / sc) + t.min(nc % sc)) as u64;
                let count = (req * before(t + 1)).checked_div(nc as u64).unwrap_or(0)
                    - (req * before(t)).checked_div(nc as u64).unwrap_or(0);
                let rate = rate_total * mine.len() as f64 / nc.max(1) as f64;
                let core = cores
                    .get((class * classes[0].2 + t) % cores.len().max(1))
                    .copied();
                let start = &start;
                let h = s.spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    match xsk_sides(load) {
                        Some(sides) => xsk_send(sides, &mine, start, |tx| {
                            send_with(tx, &mine, (first_flow, sc as u32), rate, count, load, run)
                        }),
                        None => {
                            start.wait();
                            send(&mine, first_flow, sc as u32, rate, count, load, run)
                        }
                    }
                });
                tx_handles.push((class, h));
            }
        }

        let before = Snapshot::take(relay_pid);
        start.wait();
        let mut by_class = [TxStats::default(), TxStats::default()];
        for (class, h) in tx_handles {
            by_class[class].merge(&h.join().unwrap_or_default());
        }
        let mut tx = TxStats::default();
        for t in &by_class {
            tx.merge(t);
        }
        // Drain: until everything sent has arrived, nothing arrived for
        // 300 ms, or 3 s passed.
        let drain_start = Instant::now();
        let mut last = (received_total.load(Ordering::Relaxed), Instant::now());
        while drain_start.elapsed() < Duration::from_secs(3) {
            let at_peers = received_total.load(Ordering::Relaxed);
            let back = echo_total.load(Ordering::Relaxed);
            let now_rx = at_peers + back;
            if at_peers >= tx.sent && (!load.echo || back >= at_peers) {
                break;
            }
            if now_rx != last.0 {
                last = (now_rx, Instant::now());
            } else if last.1.elapsed() > Duration::from_millis(300) {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let after = Snapshot::take(relay_pid);
        stop_rx.store(true, Ordering::Relaxed);
        let mut rx = RxStats::new((flows.len(), nlow), max_seq);
        for h in rx_handles {
            if let Ok(r) = h.join() {
                rx.merge(r);
            }
        }
        let mut m = summarize(
            requested,
            &tx,
            &rx,
            CpuReport::between(&before, &after, rx.unique(), load.disturb_pct),
        );
        if nflood > 0 {
            m.classes = ["low-rate", "flood"]
                .into_iter()
                .enumerate()
                .map(|(c, name)| {
                    class_report(name, classes[c].1, classes[c].4, &by_class[c], &rx, c)
                })
                .collect();
        }
        if let Some(h) = echo_handle {
            if let Ok(e) = h.join() {
                let back = e.unique();
                m.echo = Some(EchoReport {
                    received: back,
                    return_loss_pct: if m.received > 0 {
                        100.0 * m.received.saturating_sub(back) as f64 / m.received as f64
                    } else {
                        0.0
                    },
                    foreign: e.foreign,
                    rtt: Latency::from_hist(&{
                        let mut h = e.hists[0].clone();
                        let _same_bounds = h.add(&e.hists[1]);
                        h
                    }),
                });
            }
        }
        m
    })
}

fn per_s(n: u64, s: f64) -> f64 {
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole > 0 {
        100.0 * part as f64 / whole as f64
    } else {
        0.0
    }
}

fn class_report(
    class: &'static str,
    nflows: usize,
    requested: u64,
    tx: &TxStats,
    rx: &RxStats,
    c: usize,
) -> ClassReport {
    let send_s = tx.elapsed_ns as f64 / 1e9;
    let mine = rx.class_flows(c);
    let received = mine.iter().map(|f| f.unique).sum();
    let lost = tx.sent.saturating_sub(received);
    ClassReport {
        class,
        flows: nflows,
        requested,
        sent: tx.sent,
        received,
        lost,
        loss_pct: pct(lost, tx.sent),
        offered_pps: per_s(tx.sent, send_s),
        delivered_pps: per_s(received, send_s),
        delivered_bytes_per_s: per_s(rx.bytes[c], send_s),
        reordered: mine.iter().map(|f| f.reordered).sum(),
        latency: Latency::from_hist(&rx.hists[c]),
    }
}

fn summarize(requested: u64, tx: &TxStats, rx: &RxStats, cpu: CpuReport) -> Measurement {
    let send_s = tx.elapsed_ns as f64 / 1e9;
    let received = rx.unique();
    let mut hist = rx.hists[0].clone();
    let _same_bounds = hist.add(&rx.hists[1]);
    let received_bytes = rx.bytes[0] + rx.bytes[1];
    let sizes = (0..=MAX_SIZE)
        .filter_map(|size| {
            let sent = tx.sizes.get(size).copied().unwrap_or(0);
            let received = rx.sizes.get(size).copied().unwrap_or(0);
            (sent > 0 || received > 0).then_some(SizeCount {
                size,
                sent,
                received,
            })
        })
        .collect();
    let lost = tx.sent.saturating_sub(received);
    let shortfall = if requested > 0 {
        100.0 * requested.saturating_sub(tx.sent) as f64 / requested as f64
    } else {
        0.0
    };
    Measurement {
        requested,
        sent: tx.sent,
        send_errors: tx.errors,
        send_s,
        offered_pps: if send_s > 0.0 {
            tx.sent as f64 / send_s
        } else {
            0.0
        },
        send_shortfall_pct: shortfall,
        generator_limited: shortfall > 1.0,
        received,
        delivered_pps: if send_s > 0.0 {
            received as f64 / send_s
        } else {
            0.0
        },
        lost,
        loss_pct: if tx.sent > 0 {
            100.0 * lost as f64 / tx.sent as f64
        } else {
            0.0
        },
        reordered: rx.flows.iter().map(|f| f.reordered).sum(),
        duplicates: rx.flows.iter().map(|f| f.dups).sum(),
        foreign: rx.foreign,
        latency: Latency::from_hist(&hist),
        cpu,
        echo: None,
        harness_xsk: match (tx.xsk, rx.xsk) {
            (None, None) => None,
            (t, r) => Some(HarnessXsk {
                sent_xsk: t.map_or(0, |t| t.0),
                sent_kernel: t.map_or(0, |t| t.1),
                received_xsk: r.map_or(0, |r| r.0),
                received_kernel: r.map_or(0, |r| r.1),
            }),
        },
        sent_bytes: tx.bytes,
        received_bytes,
        delivered_bytes_per_s: per_s(received_bytes, send_s),
        sizes,
        classes: Vec::new(),
    }
}

/// What a sender did.
#[derive(Clone, Debug, Default)]
pub struct TxStats {
    /// Packets the kernel took.
    pub sent: u64,
    /// Packets the kernel refused.
    pub errors: u64,
    /// From the first token to the last send, ns.
    pub elapsed_ns: u64,
    /// Probe payload bytes the kernel took.
    pub bytes: u64,
    /// Packets the kernel took, by payload size (index = bytes).
    pub sizes: Vec<u64>,
    /// With the AF_XDP harness: frames through the XSK, datagrams the
    /// XSK path had to hand to the kernel instead.
    pub xsk: Option<(u64, u64)>,
}

impl TxStats {
    /// Add another sender's figures (elapsed: the longer one).
    pub fn merge(&mut self, o: &TxStats) {
        self.sent += o.sent;
        self.errors += o.errors;
        self.elapsed_ns = self.elapsed_ns.max(o.elapsed_ns);
        self.bytes += o.bytes;
        if self.sizes.len() < o.sizes.len() {
            self.sizes.resize(o.sizes.len(), 0);
        }
        for (a, b) in self.sizes.iter_mut().zip(&o.sizes) {
            *a += b;
        }
        self.xsk = match (self.xsk, o.xsk) {
            (Some(a), Some(b)) => Some((a.0 + b.0, a.1 + b.1)),
            (a, b) => a.or(b),
        };
    }
}

/// The bytes that follow a data-path `prefix` for a payload of `len`
/// bytes: the payload, plus padding to 4 bytes inside a Send indication.
fn body_len(prefix: &[u8], len: usize) -> usize {
    match prefix.first() {
        Some(0x00..=0x03) => len.next_multiple_of(4),
        _ => len,
    }
}

/// Set the length fields of a data-path prefix (already copied into the
/// datagram) for a payload of `len` bytes: the ChannelData length, or the
/// Send indication's message length and DATA attribute length.
fn frame(prefix: &mut [u8], len: usize) {
    let n = prefix.len();
    match prefix.first() {
        Some(0x40..=0x7F) if n == 4 => prefix[2..4].copy_from_slice(&(len as u16).to_be_bytes()),
        Some(0x00..=0x03) if n >= 24 => {
            let msg = (n + len.next_multiple_of(4) - 20) as u16;
            prefix[2..4].copy_from_slice(&msg.to_be_bytes());
            prefix[n - 2..].copy_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {}
    }
}

/// Where a sender's datagrams go: the kernel (`sendmmsg` per flow, see
/// [`KernelTx`]) or, with the `xdp` feature, an AF_XDP socket
/// (`crate::xsk_load`).
pub(crate) trait Transmit {
    /// Queue one datagram of `len` bytes on the sender's flow `k`, written by `fill`.
    fn push(&mut self, k: usize, len: usize, fill: impl FnOnce(&mut [u8]));
    /// Hand what is queued on flow `k` over: (taken, failed).
    fn flush(&mut self, k: usize) -> (usize, usize);
    /// The sender is caught up (about to sleep) or done.
    fn idle(&mut self) {}
}

/// The kernel path: a `sendmmsg` per flow and burst on its connected socket.
pub(crate) struct KernelTx {
    batch: SendBatch,
    fds: Vec<std::os::fd::RawFd>,
}

impl KernelTx {
    pub(crate) fn new(flows: &[&Flow], burst: usize) -> KernelTx {
        KernelTx {
            batch: SendBatch::new(burst.max(1)),
            fds: flows.iter().map(|f| f.sock.as_raw_fd()).collect(),
        }
    }
}

impl Transmit for KernelTx {
    fn push(&mut self, _k: usize, len: usize, fill: impl FnOnce(&mut [u8])) {
        self.batch.push(len, None, fill);
    }

    fn flush(&mut self, k: usize) -> (usize, usize) {
        let queued = self.batch.len();
        let (ok, _err) = self.batch.flush(self.fds[k]);
        (ok, queued - ok)
    }
}

/// Send `count` probes at `rate_pps` round-robin over `flows` (whose global
/// ids are `first_flow + k * stride`), stopping at the count or at
/// `load.duration`, through the kernel.
pub fn send(
    flows: &[&Flow],
    first_flow: u32,
    stride: u32,
    rate_pps: f64,
    count: u64,
    load: &Load,
    run: u32,
) -> TxStats {
    let mut tx = KernelTx::new(flows, load.burst);
    send_with(
        &mut tx,
        flows,
        (first_flow, stride),
        rate_pps,
        count,
        load,
        run,
    )
}

/// [`send`] through any [`Transmit`].
pub(crate) fn send_with(
    tx: &mut impl Transmit,
    flows: &[&Flow],
    (first_flow, stride): (u32, u32),
    rate_pps: f64,
    count: u64,
    load: &Load,
    run: u32,
) -> TxStats {
    let mut st = TxStats::default();
    if flows.is_empty() || count == 0 {
        return st;
    }
    let fixed;
    let mix = match &load.mix {
        Some(m) => m,
        None => {
            fixed = PayloadMix::fixed(load.payload_len);
            &fixed
        }
    };
    st.sizes = vec![0; MAX_SIZE + 1];
    let burst = load.burst.max(1);
    let mut lens = vec![0usize; burst];
    let mut seqs = vec![0u64; flows.len()];
    let mut states: Vec<u64> = (0..flows.len())
        .map(|k| mix.flow_state(first_flow + k as u32 * stride))
        .collect();
    let t0 = monotonic_ns();
    let end = t0 + load.duration.as_nanos() as u64;
    let tick = load.tick;
    let depth = (rate_pps * 0.005)
        .max(2.0 * burst as f64)
        .max(2.0 * rate_pps * tick.as_secs_f64());
    let mut bucket = TokenBucket::new(rate_pps, depth, t0);
    let mut next = 0usize;
    let mut now = t0;
    while st.sent + st.errors < count && now < end {
        now = monotonic_ns();
        bucket.refill(now);
        let want = (count - st.sent - st.errors).min(burst as u64);
        let n = bucket.take(want);
        if n == 0 {
            let wait = bucket.wait_ns();
            if !tick.is_zero() {
                tx.idle();
                thread::sleep(
                    tick.max(Duration::from_nanos(wait))
                        .min(Duration::from_millis(100)),
                );
            } else if wait > 60_000 {
                tx.idle();
                thread::sleep(Duration::from_nanos((wait - 50_000).min(1_000_000)));
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        let k = next;
        next = (next + 1) % flows.len();
        let flow = flows[k];
        let pl = flow.prefix.len();
        for slot in lens.iter_mut().take(n as usize) {
            let size = mix.draw(&mut states[k]);
            *slot = size;
            let probe = Probe {
                run,
                flow: first_flow + k as u32 * stride,
                seq: seqs[k],
                sent_ns: monotonic_ns(),
            };
            seqs[k] += 1;
            tx.push(k, pl + body_len(&flow.prefix, size), |b| {
                let (head, body) = b.split_at_mut(pl);
                head.copy_from_slice(&flow.prefix);
                frame(head, size);
                probe.encode(body);
                body[size..].fill(0);
            });
        }
        let (ok, failed) = tx.flush(k);
        for &size in &lens[..ok] {
            st.bytes += size as u64;
            st.sizes[size] += 1;
        }
        st.sent += ok as u64;
        st.errors += failed as u64;
    }
    tx.idle();
    st.elapsed_ns = monotonic_ns().saturating_sub(t0).max(1);
    st
}

/// The AF_XDP sides of `load`, if it uses them and this build has them.
fn xsk_sides(load: &Load) -> Option<&XskSides> {
    if cfg!(feature = "xdp") {
        load.xsk.as_ref()
    } else {
        None
    }
}

/// Open the sender's XSK, wait for the start, and run `go` through it.
#[cfg(feature = "xdp")]
fn xsk_send(
    sides: &XskSides,
    flows: &[&Flow],
    start: &Barrier,
    go: impl FnOnce(&mut crate::xsk_load::XskTx<'_>) -> TxStats,
) -> TxStats {
    let tx = crate::xsk_load::XskTx::open(sides, flows);
    start.wait();
    match tx {
        Ok(mut tx) => {
            let mut st = go(&mut tx);
            st.xsk = Some(tx.counts());
            st
        }
        Err(e) => {
            eprintln!("tern-bench: AF_XDP sender: {e}");
            TxStats::default()
        }
    }
}

#[cfg(not(feature = "xdp"))]
fn xsk_send(
    _: &XskSides,
    _: &[&Flow],
    start: &Barrier,
    _: impl FnOnce(&mut KernelTx) -> TxStats,
) -> TxStats {
    start.wait();
    TxStats::default()
}

/// Open the sink's XSK, say whether that worked, and receive until `stop`.
#[cfg(feature = "xdp")]
fn xsk_receive(
    sides: &XskSides,
    peers: &[UdpSocket],
    received_total: &AtomicU64,
    stop: &AtomicBool,
    ready: std::sync::mpsc::Sender<Result<(), crate::Error>>,
    on: impl FnMut(&[u8], u64) -> bool,
) -> (u64, u64) {
    match crate::xsk_load::XskRx::open(sides, peers) {
        Ok(mut rx) => {
            let _ = ready.send(Ok(()));
            rx.run(received_total, stop, on);
            rx.counts()
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            (0, 0)
        }
    }
}

#[cfg(not(feature = "xdp"))]
fn xsk_receive(
    _: &XskSides,
    _: &[UdpSocket],
    _: &AtomicU64,
    _: &AtomicBool,
    ready: std::sync::mpsc::Sender<Result<(), crate::Error>>,
    _: impl FnMut(&[u8], u64) -> bool,
) -> (u64, u64) {
    let _ = ready.send(Err(crate::Error(
        "this tern-bench was built without the xdp feature".into(),
    )));
    (0, 0)
}

#[derive(Clone, Debug, Default)]
struct FlowRx {
    bits: Vec<u64>,
    unique: u64,
    dups: u64,
    reordered: u64,
    max_seq: Option<u64>,
}

impl FlowRx {
    fn on(&mut self, seq: u64) {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        if self.bits[w] & (1 << b) != 0 {
            self.dups += 1;
            return;
        }
        self.bits[w] |= 1 << b;
        self.unique += 1;
        match self.max_seq {
            Some(m) if seq < m => self.reordered += 1,
            _ => self.max_seq = Some(seq),
        }
    }
}

/// What the receivers saw (merged over receiver threads). Flows from
/// `flood_from` on are flood flows (class 1), the others class 0.
struct RxStats {
    flows: Vec<FlowRx>,
    hists: [Histogram<u64>; 2],
    foreign: u64,
    max_seq: u64,
    flood_from: usize,
    bytes: [u64; 2],
    sizes: Vec<u64>,
    /// With the AF_XDP harness: datagrams through the XSK, through the kernel.
    xsk: Option<(u64, u64)>,
}

fn new_hist() -> Histogram<u64> {
    // INVARIANT: 1 ns .. 60 s at 3 significant figures are valid bounds.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

impl RxStats {
    /// `(flows, flood_from)`.
    fn new((nflows, flood_from): (usize, usize), max_seq: u64) -> RxStats {
        RxStats {
            flows: vec![FlowRx::default(); nflows],
            hists: [new_hist(), new_hist()],
            foreign: 0,
            max_seq,
            flood_from,
            bytes: [0; 2],
            sizes: vec![0; MAX_SIZE + 1],
            xsk: None,
        }
    }

    fn class_flows(&self, c: usize) -> &[FlowRx] {
        let (low, flood) = self.flows.split_at(self.flood_from.min(self.flows.len()));
        if c == 0 {
            low
        } else {
            flood
        }
    }

    fn on(&mut self, data: &[u8], run: u32, now_ns: u64) -> bool {
        match Probe::decode(data) {
            Some(p)
                if p.run == run && (p.flow as usize) < self.flows.len() && p.seq < self.max_seq =>
            {
                let i = p.flow as usize;
                let before = self.flows[i].unique;
                self.flows[i].on(p.seq);
                let c = usize::from(i >= self.flood_from);
                let _saturates = self.hists[c].record(now_ns.saturating_sub(p.sent_ns).max(1));
                let fresh = self.flows[i].unique > before;
                if fresh {
                    self.bytes[c] += data.len() as u64;
                    self.sizes[data.len().min(MAX_SIZE)] += 1;
                }
                fresh
            }
            _ => {
                self.foreign += 1;
                false
            }
        }
    }

    fn unique(&self) -> u64 {
        self.flows.iter().map(|f| f.unique).sum()
    }

    fn merge(&mut self, o: RxStats) {
        for (a, b) in self.flows.iter_mut().zip(o.flows) {
            if a.unique == 0 && a.dups == 0 {
                *a = b;
            } else if b.unique > 0 {
                a.unique += b.unique;
                a.dups += b.dups;
                a.reordered += b.reordered;
            }
        }
        for (a, b) in self.hists.iter_mut().zip(&o.hists) {
            let _same_bounds = a.add(b);
        }
        for (a, b) in self.bytes.iter_mut().zip(o.bytes) {
            *a += b;
        }
        for (a, b) in self.sizes.iter_mut().zip(&o.sizes) {
            *a += b;
        }
        self.foreign += o.foreign;
        self.xsk = self.xsk.or(o.xsk);
    }
}

fn receive(
    sock: &UdpSocket,
    nflows: (usize, usize),
    run: u32,
    max_seq: u64,
    received_total: &AtomicU64,
    stop: &AtomicBool,
    echo: bool,
) -> RxStats {
    let mut st = RxStats::new(nflows, max_seq);
    let _ = sock.set_read_timeout(Some(Duration::from_millis(10)));
    let mut rb = RecvBatch::new(64);
    let mut sb = SendBatch::new(64);
    let fd = sock.as_raw_fd();
    let hard_end = Instant::now() + Duration::from_secs(3600);
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_end {
        let Ok(n) = rb.recv(fd) else { break };
        if n == 0 {
            continue;
        }
        let now = monotonic_ns();
        let mut fresh = 0;
        for i in 0..n {
            fresh += u64::from(st.on(rb.data(i), run, now));
        }
        received_total.fetch_add(fresh, Ordering::Relaxed);
        if echo {
            for i in 0..n {
                if let Some(src) = rb.source(i) {
                    let d = rb.data(i);
                    sb.push(d.len(), Some(&src.into()), |b| b.copy_from_slice(d));
                }
            }
            let _echo_is_best_effort = sb.flush(fd);
        }
    }
    st
}

/// Client side of echo mode: wait on every flow socket with epoll, strip
/// the ChannelData header or unwrap the Data indication, account probes.
fn receive_echo(
    flows: &[Flow],
    run: u32,
    max_seq: u64,
    received_total: &AtomicU64,
    stop: &AtomicBool,
) -> RxStats {
    let mut st = RxStats::new((flows.len(), flows.len()), max_seq);
    // SAFETY: epoll_create1 has no memory-safety preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return st;
    }
    for (i, f) in flows.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: `ep` and the socket fd are open; `ev` is a valid epoll_event.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, f.sock.as_raw_fd(), &mut ev) };
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = [0u8; 2048];
    let hard_end = Instant::now() + Duration::from_secs(3600);
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_end {
        // SAFETY: `events` is a writable array of the given length.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 10) };
        let mut fresh = 0;
        for ev in events.iter().take(n.max(0) as usize) {
            let Some(f) = flows.get(ev.u64 as usize) else {
                continue;
            };
            loop {
                // SAFETY: `buf` is writable for its length; the fd is open.
                let r = unsafe {
                    libc::recv(
                        f.sock.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if r <= 0 {
                    break;
                }
                let now = monotonic_ns();
                let pkt = &buf[..r as usize];
                match unwrap_relayed(pkt) {
                    Some(data) => fresh += u64::from(st.on(data, run, now)),
                    None => st.foreign += 1,
                }
            }
        }
        received_total.fetch_add(fresh, Ordering::Relaxed);
    }
    // SAFETY: `ep` is our open epoll fd, closed once.
    unsafe { libc::close(ep) };
    st
}

/// The application data inside what a relay sends its client: ChannelData
/// or a Data indication's DATA attribute.
fn unwrap_relayed(pkt: &[u8]) -> Option<&[u8]> {
    match pkt.first()? {
        0x40..=0x7F => tern_stun::ChannelData::parse(pkt).ok().map(|c| c.data),
        0x00..=0x03 => {
            let m = tern_stun::Message::parse(pkt).ok()?;
            m.get(tern_stun::attr::DATA).map(|a| a.value)
        }
        _ => None,
    }
}

/// Peer-side sockets: bound on loopback with large buffers.
pub fn peer_sockets(n: usize, ipv6: bool) -> std::io::Result<Vec<UdpSocket>> {
    let ip: std::net::IpAddr = if ipv6 { "::1" } else { "127.0.0.1" }
        .parse()
        .expect("literal");
    peer_sockets_on(ip, n)
}

/// `n` (at least one) peer-side sockets on `ip`, with large buffers.
pub fn peer_sockets_on(ip: std::net::IpAddr, n: usize) -> std::io::Result<Vec<UdpSocket>> {
    (0..n.max(1))
        .map(|_| {
            let addr = std::net::SocketAddr::new(ip, 0);
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )?;
            crate::mmsg::grow_buffers(&s, 8 << 20);
            s.bind(&addr.into())?;
            Ok(s.into())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_follows_the_drawn_size() {
        // ChannelData: the length field is the payload length, no padding.
        let mut cd = [0x40, 0x00, 0x00, 0xA0];
        frame(&mut cd, 37);
        assert_eq!(cd, [0x40, 0x00, 0x00, 37]);
        assert_eq!(body_len(&cd, 37), 37);
        // A Send indication: 20-byte header, an 8-byte attribute, then the
        // DATA attribute header; the payload is padded to 4 bytes.
        let mut si = vec![0u8; 32];
        si[..2].copy_from_slice(&[0x00, 0x16]);
        si[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
        si[20..24].copy_from_slice(&[0x00, 0x20, 0x00, 0x04]); // placeholder attribute
        si[28..30].copy_from_slice(&0x0013u16.to_be_bytes()); // DATA
        frame(&mut si, 37);
        assert_eq!(body_len(&si, 37), 40);
        let mut pkt = si.clone();
        pkt.extend(std::iter::repeat(7u8).take(37));
        pkt.extend([0u8; 3]);
        assert_eq!(
            u16::from_be_bytes([pkt[2], pkt[3]]) as usize,
            pkt.len() - 20
        );
        assert_eq!(unwrap_relayed(&pkt).map(<[u8]>::len), Some(37));
        // Plain UDP: nothing to frame.
        assert_eq!(body_len(&[], 37), 37);
    }

    #[test]
    fn flow_accounting_counts_dups_and_reorders() {
        let mut f = FlowRx::default();
        for s in [0, 1, 3, 2, 2, 4, 100, 50] {
            f.on(s);
        }
        assert_eq!(f.unique, 7);
        assert_eq!(f.dups, 1);
        assert_eq!(f.reordered, 2); // 2 after 3, 50 after 100
    }
}
