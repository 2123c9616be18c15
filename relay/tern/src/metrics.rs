//! What the workers hand to the side thread, and what the side thread makes of it.
//!
//! Workers push; the side thread never asks. Each worker owns a
//! [`Reporter`]: it records loop-turn durations and Allocate latencies into
//! its own histograms and, once per [`REPORT_EVERY`], moves a copy of its
//! counters and its histograms (the deltas since the last report) into a
//! [`Report`] it took from its recycle channel and `try_send`s it. Exactly one
//! report per worker circulates, so the report channel never fills; when the
//! side thread has not yet handed the report back, the worker skips this
//! interval and keeps accumulating. Nothing here blocks, locks or allocates
//! on the worker (the histograms have fixed bounds, the report is reused).
//!
//! On the side thread, [`Collected`] keeps every worker's latest counters and
//! cumulative histograms, which [`Collected::render_prometheus`] turns into
//! the Prometheus text exposition format.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender, TrySendError};
use hdrhistogram::Histogram;
use tern_io::{BackendKind, IoStats};
use tern_turn::{AuthFailure, DropReason, Stats, Transport};

use crate::sfu::{SfuCounters, SfuDrop};
use crate::stream::{CloseReason, StreamStats};

/// How often a worker reports (and so the longest an idle worker sleeps).
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Bucket upper bounds of the latency histograms, in seconds.
const BUCKETS: [f64; 22] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
];

/// A latency histogram in nanoseconds: 1 ns .. 60 s at 2 significant digits,
/// a fixed array of counters, so recording never allocates.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    // INVARIANT: constant bounds that hdrhistogram accepts (low >= 1, high >= 2 * low, 2 digits).
    Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("valid histogram bounds")
}

/// One worker's counters and histogram deltas, passed worker → side thread → worker.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) worker: usize,
    /// Loop turns since the worker started.
    pub(crate) turns: u64,
    /// The drain epoch the worker last applied, and whether it drains.
    pub(crate) drain_epoch: u64,
    pub(crate) draining: bool,
    pub(crate) turn: Stats,
    pub(crate) io: IoStats,
    pub(crate) allocations: usize,
    pub(crate) unroutable: u64,
    pub(crate) stalls: u64,
    pub(crate) streams: StreamStats,
    pub(crate) sfu: SfuCounters,
    /// Loop-turn durations (ns) since the previous delivered report, and their sum.
    pub(crate) loop_ns: Histogram<u64>,
    pub(crate) loop_ns_sum: u64,
    /// Allocate latencies (ns) since the previous delivered report, and their sum.
    pub(crate) alloc_ns: Histogram<u64>,
    pub(crate) alloc_ns_sum: u64,
    /// Relay latencies (ns, one count per relayed datagram) since the previous
    /// delivered report, and their sum.
    pub(crate) relay_ns: Histogram<u64>,
    pub(crate) relay_ns_sum: u64,
}

impl Report {
    pub(crate) fn new(worker: usize) -> Box<Report> {
        Box::new(Report {
            worker,
            turns: 0,
            drain_epoch: 0,
            draining: false,
            turn: Stats::default(),
            io: IoStats::default(),
            allocations: 0,
            unroutable: 0,
            stalls: 0,
            streams: StreamStats::default(),
            sfu: SfuCounters::default(),
            loop_ns: latency_histogram(),
            loop_ns_sum: 0,
            alloc_ns: latency_histogram(),
            alloc_ns_sum: 0,
            relay_ns: latency_histogram(),
            relay_ns_sum: 0,
        })
    }
}

/// The counters a worker copies into each report.
pub(crate) struct Counters<'a> {
    pub(crate) drain_epoch: u64,
    pub(crate) draining: bool,
    pub(crate) turn: &'a Stats,
    pub(crate) io: &'a IoStats,
    pub(crate) allocations: usize,
    pub(crate) unroutable: u64,
    pub(crate) stalls: u64,
    pub(crate) streams: StreamStats,
    pub(crate) sfu: SfuCounters,
}

/// The worker's end: its histograms and the two channels.
pub(crate) struct Reporter {
    tx: Sender<Box<Report>>,
    recycle: Receiver<Box<Report>>,
    turns: u64,
    loop_ns: Histogram<u64>,
    loop_ns_sum: u64,
    alloc_ns: Histogram<u64>,
    alloc_ns_sum: u64,
    relay_ns: Histogram<u64>,
    relay_ns_sum: u64,
    next: Instant,
    /// Intervals skipped because the side thread still held the report.
    skipped: u64,
}

impl Reporter {
    /// `recycle` must hold (or later receive) the worker's one [`Report`].
    pub(crate) fn new(tx: Sender<Box<Report>>, recycle: Receiver<Box<Report>>) -> Reporter {
        Reporter {
            tx,
            recycle,
            turns: 0,
            loop_ns: latency_histogram(),
            loop_ns_sum: 0,
            alloc_ns: latency_histogram(),
            alloc_ns_sum: 0,
            relay_ns: latency_histogram(),
            relay_ns_sum: 0,
            next: Instant::now(),
            skipped: 0,
        }
    }

    pub(crate) fn record_turn(&mut self, ns: u64) {
        self.turns += 1;
        self.loop_ns.saturating_record(ns);
        self.loop_ns_sum = self.loop_ns_sum.saturating_add(ns);
    }

    pub(crate) fn record_allocation(&mut self, ns: u64) {
        self.alloc_ns.saturating_record(ns);
        self.alloc_ns_sum = self.alloc_ns_sum.saturating_add(ns);
    }

    /// `count` datagrams relayed `ns` after their batch was read.
    pub(crate) fn record_relay(&mut self, ns: u64, count: u64) {
        self.relay_ns.saturating_record_n(ns, count);
        self.relay_ns_sum = self.relay_ns_sum.saturating_add(ns.saturating_mul(count));
    }

    /// When the next report is due.
    pub(crate) fn deadline(&self) -> Instant {
        self.next
    }

    /// Report at the next opportunity (after a state change).
    pub(crate) fn soon(&mut self) {
        self.next = Instant::now();
    }

    /// Send a report if one is due and the side thread has handed the last one back.
    pub(crate) fn maybe_report(&mut self, now: Instant, counters: Counters<'_>) {
        if now < self.next {
            return;
        }
        self.next = now + REPORT_EVERY;
        let Ok(mut r) = self.recycle.try_recv() else {
            self.skipped += 1;
            return;
        };
        r.turns = self.turns;
        r.drain_epoch = counters.drain_epoch;
        r.draining = counters.draining;
        r.turn.clone_from(counters.turn);
        r.io = *counters.io;
        r.allocations = counters.allocations;
        r.unroutable = counters.unroutable;
        r.stalls = counters.stalls;
        r.streams = counters.streams;
        r.sfu = counters.sfu;
        // The side thread hands reports back with empty histograms: swap, so the
        // worker goes on recording into empty ones.
        std::mem::swap(&mut r.loop_ns, &mut self.loop_ns);
        r.loop_ns_sum = std::mem::take(&mut self.loop_ns_sum);
        std::mem::swap(&mut r.alloc_ns, &mut self.alloc_ns);
        r.alloc_ns_sum = std::mem::take(&mut self.alloc_ns_sum);
        std::mem::swap(&mut r.relay_ns, &mut self.relay_ns);
        r.relay_ns_sum = std::mem::take(&mut self.relay_ns_sum);
        match self.tx.try_send(r) {
            Ok(()) => {}
            // Cannot be full (one report per worker); disconnected means the side
            // thread is gone: the relay is stopping, and the deltas go with it.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.skipped += 1,
        }
    }
}

/// What the side thread knows of one worker.
#[derive(Debug)]
pub(crate) struct WorkerView {
    /// When its last report arrived.
    pub(crate) reported: Option<Instant>,
    /// When its loop-turn counter was last seen to advance.
    pub(crate) progressed: Option<Instant>,
    /// Its latest counters; the histograms and their sums accumulate every
    /// report delivered so far.
    pub(crate) last: Report,
}

/// Every worker's latest counters and cumulative histograms.
#[derive(Debug)]
pub(crate) struct Collected {
    pub(crate) workers: Vec<WorkerView>,
}

/// Counters summed over the workers.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub(crate) turn: Stats,
    pub(crate) io: IoStats,
    pub(crate) allocations: usize,
    pub(crate) unroutable: u64,
    pub(crate) streams: StreamStats,
    pub(crate) sfu: SfuCounters,
}

impl Totals {
    pub(crate) fn packets_relayed(&self) -> u64 {
        self.turn.packets_to_peer + self.turn.packets_to_client
    }

    pub(crate) fn bytes_relayed(&self) -> u64 {
        self.turn.bytes_to_peer + self.turn.bytes_to_client
    }
}

/// Process-wide facts for the exposition.
#[derive(Debug)]
pub(crate) struct Exposition<'a> {
    pub(crate) backend: BackendKind,
    /// Why the back end was chosen.
    pub(crate) backend_reason: &'a str,
    /// Label of the current lifecycle state, one of `states`.
    pub(crate) state: &'a str,
    pub(crate) states: &'a [&'a str],
    /// Live allocations relay-wide.
    pub(crate) allocations: usize,
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) resident_bytes: Option<u64>,
    pub(crate) start_time_seconds: f64,
    /// Registry publications (ok, error), when `registry-url` is set.
    pub(crate) registry_publish: Option<(u64, u64)>,
}

impl Collected {
    pub(crate) fn new(workers: usize) -> Collected {
        Collected {
            workers: (0..workers)
                .map(|worker| WorkerView {
                    reported: None,
                    progressed: None,
                    last: *Report::new(worker),
                })
                .collect(),
        }
    }

    /// Take in `r` and empty its histograms for reuse.
    pub(crate) fn absorb(&mut self, r: &mut Report, now: Instant) {
        let Some(w) = self.workers.get_mut(r.worker) else {
            return;
        };
        w.reported = Some(now);
        let last = &mut w.last;
        if r.turns > last.turns {
            w.progressed = Some(now);
        }
        last.turns = r.turns;
        last.drain_epoch = r.drain_epoch;
        last.draining = r.draining;
        last.turn.clone_from(&r.turn);
        last.io = r.io;
        last.allocations = r.allocations;
        last.unroutable = r.unroutable;
        last.stalls = r.stalls;
        last.streams = r.streams;
        last.sfu = r.sfu;
        // Same bounds everywhere, so adding cannot fail.
        let _ = last.loop_ns.add(&r.loop_ns);
        last.loop_ns_sum = last.loop_ns_sum.saturating_add(r.loop_ns_sum);
        let _ = last.alloc_ns.add(&r.alloc_ns);
        last.alloc_ns_sum = last.alloc_ns_sum.saturating_add(r.alloc_ns_sum);
        let _ = last.relay_ns.add(&r.relay_ns);
        last.relay_ns_sum = last.relay_ns_sum.saturating_add(r.relay_ns_sum);
        r.relay_ns.reset();
        r.relay_ns_sum = 0;
        r.loop_ns.reset();
        r.loop_ns_sum = 0;
        r.alloc_ns.reset();
        r.alloc_ns_sum = 0;
    }

    pub(crate) fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for w in &self.workers {
            t.turn.merge(&w.last.turn);
            t.io.merge(&w.last.io);
            t.allocations += w.last.allocations;
            t.unroutable += w.last.unroutable;
            t.streams.merge(&w.last.streams);
            t.sfu.merge(&w.last.sfu);
        }
        t
    }

    /// Workers whose last report is younger than `fresh`.
    pub(crate) fn reporting(&self, now: Instant, fresh: Duration) -> usize {
        self.workers
            .iter()
            .filter(|w| w.reported.is_some_and(|t| now.duration_since(t) < fresh))
            .count()
    }

    /// Everything, in the Prometheus text exposition format (version 0.0.4).
    pub(crate) fn render_prometheus(&self, x: &Exposition<'_>) -> String {
        let t = self.totals();
        let mut out = String::with_capacity(16 * 1024);
        let backend = x.backend.to_string();
        let o = &mut out;

        header(
            o,
            "tern_build_info",
            "gauge",
            "Version and packet I/O back end of the running relay.",
        );
        sample(
            o,
            "tern_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("backend", &backend),
            ],
            1,
        );
        header(
            o,
            "tern_io_backend_info",
            "gauge",
            "The packet I/O back end in use and why start-up probing chose it.",
        );
        sample(
            o,
            "tern_io_backend_info",
            &[("backend", &backend), ("reason", x.backend_reason)],
            1,
        );
        header(
            o,
            "tern_state",
            "gauge",
            "Lifecycle state: 1 for the current one, 0 for the others.",
        );
        for s in x.states {
            sample(o, "tern_state", &[("state", s)], u64::from(*s == x.state));
        }
        header(o, "tern_workers", "gauge", "Worker threads running.");
        sample(o, "tern_workers", &[], self.workers.len() as u64);

        header(
            o,
            "tern_allocations_active",
            "gauge",
            "Live TURN allocations.",
        );
        sample(o, "tern_allocations_active", &[], x.allocations as u64);
        let counters: [(&str, &str, u64); 7] = [
            (
                "tern_allocations_created_total",
                "TURN allocations made.",
                t.turn.allocations_created,
            ),
            (
                "tern_allocations_expired_total",
                "TURN allocations ended by expiry.",
                t.turn.allocations_expired,
            ),
            (
                "tern_allocations_deleted_total",
                "TURN allocations ended by Refresh with LIFETIME 0.",
                t.turn.allocations_deleted,
            ),
            (
                "tern_permissions_created_total",
                "Permissions installed (not refreshes).",
                t.turn.permissions_created,
            ),
            (
                "tern_channels_bound_total",
                "Channels bound (not refreshes).",
                t.turn.channels_bound,
            ),
            (
                "tern_quota_rejections_total",
                "Allocates refused by a quota (486) or the capacity limit (508).",
                t.turn.quota_rejections,
            ),
            (
                "tern_peer_denied_total",
                "Peers refused by the peer policy (403).",
                t.turn.peer_denied,
            ),
        ];
        for (name, help, value) in counters {
            header(o, name, "counter", help);
            sample(o, name, &[], value);
        }
        header(
            o,
            "tern_stun_requests_total",
            "counter",
            "STUN requests handled.",
        );
        sample(o, "tern_stun_requests_total", &[], t.turn.requests);

        header(
            o,
            "tern_packets_relayed_total",
            "counter",
            "Datagrams relayed, by direction.",
        );
        sample(
            o,
            "tern_packets_relayed_total",
            &[("direction", "to_peer"), ("backend", &backend)],
            t.turn.packets_to_peer,
        );
        sample(
            o,
            "tern_packets_relayed_total",
            &[("direction", "to_client"), ("backend", &backend)],
            t.turn.packets_to_client,
        );
        header(
            o,
            "tern_bytes_relayed_total",
            "counter",
            "Payload bytes relayed, by direction.",
        );
        sample(
            o,
            "tern_bytes_relayed_total",
            &[("direction", "to_peer"), ("backend", &backend)],
            t.turn.bytes_to_peer,
        );
        sample(
            o,
            "tern_bytes_relayed_total",
            &[("direction", "to_client"), ("backend", &backend)],
            t.turn.bytes_to_client,
        );

        self.render_transports(o, &t);
        render_sfu(o, &t.sfu);

        header(
            o,
            "tern_drops_total",
            "counter",
            "Datagrams dropped, by reason (TURN core reasons, then packet I/O ones).",
        );
        for reason in DropReason::ALL {
            sample(
                o,
                "tern_drops_total",
                &[("reason", reason.as_str())],
                t.turn.drops(reason),
            );
        }
        let io_drops = [
            ("io_rx_truncated", t.io.rx_truncated),
            ("io_tx_would_block", t.io.tx_would_block),
            ("io_tx_error", t.io.tx_errors),
            ("io_tx_oversize", t.io.tx_oversize),
            ("io_unroutable", t.unroutable),
        ];
        for (reason, value) in io_drops {
            sample(o, "tern_drops_total", &[("reason", reason)], value);
        }
        header(
            o,
            "tern_auth_failures_total",
            "counter",
            "Requests that failed authentication, by reason.",
        );
        for reason in AuthFailure::ALL {
            sample(
                o,
                "tern_auth_failures_total",
                &[("reason", reason.as_str())],
                t.turn.auth_failures(reason),
            );
        }

        header(
            o,
            "tern_worker_stalls_total",
            "counter",
            "Worker loop turns longer than 50 ms.",
        );
        for (i, w) in self.workers.iter().enumerate() {
            sample(
                o,
                "tern_worker_stalls_total",
                &[("worker", &i.to_string())],
                w.last.stalls,
            );
        }
        header(
            o,
            "tern_worker_loop_seconds",
            "histogram",
            "Duration of worker loop turns (bucket edges within 1%).",
        );
        for (i, w) in self.workers.iter().enumerate() {
            histogram(
                o,
                "tern_worker_loop_seconds",
                Some(("worker", &i.to_string())),
                &w.last.loop_ns,
                w.last.loop_ns_sum,
            );
        }
        let mut alloc = latency_histogram();
        let mut alloc_sum = 0u64;
        for w in &self.workers {
            let _ = alloc.add(&w.last.alloc_ns);
            alloc_sum = alloc_sum.saturating_add(w.last.alloc_ns_sum);
        }
        header(
            o,
            "tern_allocation_latency_seconds",
            "histogram",
            "Successful Allocates: from reading the request's batch to queueing the success response.",
        );
        histogram(
            o,
            "tern_allocation_latency_seconds",
            None,
            &alloc,
            alloc_sum,
        );
        header(
            o,
            "tern_relay_latency_seconds",
            "histogram",
            "Relayed datagrams: from the worker reading the datagram's batch to handing the forward to the kernel at the end of the loop turn.",
        );
        for (i, w) in self.workers.iter().enumerate() {
            histogram(
                o,
                "tern_relay_latency_seconds",
                Some(("worker", &i.to_string())),
                &w.last.relay_ns,
                w.last.relay_ns_sum,
            );
        }
        let io_counters: [(&str, &str, u64); 13] = [
            (
                "tern_io_rx_datagrams_total",
                "Datagrams the packet I/O back end received.",
                t.io.rx_datagrams,
            ),
            (
                "tern_io_rx_batches_total",
                "Receive batches that held at least one datagram (datagrams per batch = rx_datagrams / rx_batches).",
                t.io.rx_batches,
            ),
            (
                "tern_io_rx_no_buffers_total",
                "io_uring: times the provided receive buffers ran out (the receive is re-armed; datagrams wait in the socket).",
                t.io.rx_no_buffers,
            ),
            (
                "tern_io_rx_rearms_total",
                "io_uring: multishot receives re-armed after the kernel ended them.",
                t.io.rx_rearms,
            ),
            (
                "tern_io_tx_datagrams_total",
                "Datagrams handed to the kernel.",
                t.io.tx_datagrams,
            ),
            (
                "tern_io_tx_syscalls_total",
                "Send system calls (io_uring: submissions that carried sends).",
                t.io.tx_syscalls,
            ),
            (
                "tern_io_tx_gso_messages_total",
                "Messages sent as one UDP GSO super-datagram.",
                t.io.tx_gso_messages,
            ),
            (
                "tern_io_gso_fallbacks_total",
                "Times the kernel refused UDP GSO and the back end fell back to one datagram per message.",
                t.io.gso_fallbacks,
            ),
            (
                "tern_io_stream_accepts_total",
                "io_uring: TCP/TLS connections accepted by multishot accepts on the worker's ring.",
                t.io.stream_accepts,
            ),
            (
                "tern_io_stream_recvs_total",
                "io_uring: TCP/TLS connection receives completed on the worker's ring.",
                t.io.stream_recvs,
            ),
            (
                "tern_io_stream_rx_bytes_total",
                "io_uring: bytes those stream receives delivered.",
                t.io.stream_rx_bytes,
            ),
            (
                "tern_io_stream_sends_total",
                "io_uring: TCP/TLS connection sends completed on the worker's ring (a short send counts once per part).",
                t.io.stream_sends,
            ),
            (
                "tern_io_stream_tx_bytes_total",
                "io_uring: bytes those stream sends handed to the kernel.",
                t.io.stream_tx_bytes,
            ),
        ];
        for (name, help, value) in io_counters {
            header(o, name, "counter", help);
            sample(o, name, &[], value);
        }

        if let Some(cpu) = x.cpu_seconds {
            header(
                o,
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
            );
            let _ = writeln!(o, "process_cpu_seconds_total {cpu}");
        }
        if let Some(rss) = x.resident_bytes {
            header(
                o,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
            );
            sample(o, "process_resident_memory_bytes", &[], rss);
        }
        header(
            o,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
        );
        let _ = writeln!(o, "process_start_time_seconds {}", x.start_time_seconds);
        if let Some((ok, error)) = x.registry_publish {
            header(
                o,
                "tern_registry_publish_total",
                "counter",
                "Publications of /load to the Redis registry, by result.",
            );
            sample(o, "tern_registry_publish_total", &[("result", "ok")], ok);
            sample(
                o,
                "tern_registry_publish_total",
                &[("result", "error")],
                error,
            );
        }
        out
    }
}

impl Collected {
    /// DTLS associations (`listen-dtls`): ClientHellos by outcome, open and
    /// closed associations, refusals by limit, dropped datagrams by reason.
    fn render_dtls(&self, o: &mut String, t: &Totals) {
        let d = &t.streams.dtls;
        header(
            o,
            "tern_dtls_client_hellos_total",
            "counter",
            "ClientHellos from new sources, by result: verify_sent (HelloVerifyRequest, no state kept; bad_cookie is the part that carried a wrong or expired cookie), accepted (cookie verified: an association).",
        );
        for (result, value) in [
            ("verify_sent", d.hello_verify_sent),
            ("bad_cookie", d.bad_cookie),
            ("accepted", d.accepted),
        ] {
            sample(
                o,
                "tern_dtls_client_hellos_total",
                &[("result", result)],
                value,
            );
        }
        for (name, kind, help, value) in [
            (
                "tern_dtls_handshakes_total",
                "counter",
                "DTLS handshakes finished.",
                d.established,
            ),
            (
                "tern_dtls_associations_open",
                "gauge",
                "DTLS associations now (handshaking or established).",
                d.open,
            ),
            (
                "tern_dtls_retransmissions_total",
                "counter",
                "DTLS handshake flights retransmitted on a timer.",
                d.retransmits,
            ),
        ] {
            header(o, name, kind, help);
            sample(o, name, &[], value);
        }
        header(
            o,
            "tern_dtls_associations_refused_total",
            "counter",
            "Verified ClientHellos refused by max-connections (total) or max-connections-per-source (per_source).",
        );
        for (limit, value) in [
            ("total", d.refused_total),
            ("per_source", d.refused_per_source),
        ] {
            sample(
                o,
                "tern_dtls_associations_refused_total",
                &[("limit", limit)],
                value,
            );
        }
        header(
            o,
            "tern_dtls_associations_closed_total",
            "counter",
            "DTLS associations closed, by reason.",
        );
        for reason in CloseReason::ALL {
            sample(
                o,
                "tern_dtls_associations_closed_total",
                &[("reason", reason.as_str())],
                d.closed(reason),
            );
        }
        header(
            o,
            "tern_dtls_dropped_total",
            "counter",
            "Datagrams on DTLS ports dropped, by reason.",
        );
        for reason in crate::DtlsDrop::ALL {
            sample(
                o,
                "tern_dtls_dropped_total",
                &[("reason", reason.as_str())],
                d.dropped(reason),
            );
        }
    }

    /// Allocations and relayed packets by client transport, and the TCP/TLS
    /// connections: accepted, open, refused by limit, closed by reason.
    fn render_transports(&self, o: &mut String, t: &Totals) {
        let by = &t.turn.by_transport;
        per_transport(
            o,
            ("tern_transport_allocations_active", "gauge"),
            "Live TURN allocations, by client transport.",
            &Transport::ALL,
            |tr| by[tr.index()].live(),
        );
        per_transport(
            o,
            ("tern_transport_allocations_created_total", "counter"),
            "TURN allocations made, by client transport.",
            &Transport::ALL,
            |tr| by[tr.index()].allocations_created,
        );
        header(
            o,
            "tern_transport_packets_relayed_total",
            "counter",
            "Messages relayed, by client transport and direction.",
        );
        for tr in Transport::ALL {
            let by = &t.turn.by_transport[tr.index()];
            for (direction, value) in [
                ("to_peer", by.packets_to_peer),
                ("to_client", by.packets_to_client),
            ] {
                sample(
                    o,
                    "tern_transport_packets_relayed_total",
                    &[("transport", tr.as_str()), ("direction", direction)],
                    value,
                );
            }
        }
        let s = &t.streams;
        let streams = [Transport::Tcp, Transport::Tls];
        per_transport(
            o,
            ("tern_stream_connections_accepted_total", "counter"),
            "TCP/TLS client connections accepted, by transport.",
            &streams,
            |tr| s.accepted[tr.index()],
        );
        per_transport(
            o,
            ("tern_stream_connections_open", "gauge"),
            "TCP/TLS client connections open, by transport.",
            &streams,
            |tr| s.open[tr.index()],
        );
        header(
            o,
            "tern_stream_connections_refused_total",
            "counter",
            "TCP/TLS connections closed at accept by max-connections (total) or max-connections-per-source (per_source).",
        );
        sample(
            o,
            "tern_stream_connections_refused_total",
            &[("limit", "total")],
            s.refused_total,
        );
        sample(
            o,
            "tern_stream_connections_refused_total",
            &[("limit", "per_source")],
            s.refused_per_source,
        );
        header(
            o,
            "tern_stream_connections_closed_total",
            "counter",
            "TCP/TLS client connections closed, by reason.",
        );
        for reason in CloseReason::ALL {
            sample(
                o,
                "tern_stream_connections_closed_total",
                &[("reason", reason.as_str())],
                s.closed(reason),
            );
        }
        self.render_dtls(o, t);
        header(
            o,
            "tern_tcp_relay_connections_bound_total",
            "counter",
            "RFC 6062 peer connections spliced to a client data connection (ConnectionBind).",
        );
        sample(
            o,
            "tern_tcp_relay_connections_bound_total",
            &[],
            t.turn.tcp_connections_bound,
        );
        for (name, help, value) in [
            (
                "tern_tcp_relay_peers_opened_total",
                "RFC 6062 peer connections opened by Connect or accepted on a relayed address.",
                s.peers_opened,
            ),
            (
                "tern_tcp_relay_peers_closed_total",
                "RFC 6062 peer connections closed.",
                s.peers_closed,
            ),
            (
                "tern_tcp_relay_bytes_total",
                "RFC 6062 bytes relayed between data and peer connections (both ways).",
                s.raw_bytes,
            ),
        ] {
            header(o, name, "counter", help);
            sample(o, name, &[], value);
        }
        header(
            o,
            "tern_stream_handoffs_total",
            "counter",
            "Data connections handed to the worker owning their peer connection (out, in, dropped: queue full).",
        );
        for (dir, value) in [
            ("out", s.handoffs_out),
            ("in", s.handoffs_in),
            ("dropped", s.handoffs_dropped),
        ] {
            sample(o, "tern_stream_handoffs_total", &[("result", dir)], value);
        }
        header(
            o,
            "tern_stream_accept_errors_total",
            "counter",
            "accept() calls that failed (out of descriptors...).",
        );
        sample(o, "tern_stream_accept_errors_total", &[], s.accept_errors);
    }
}

/// The SFU's aggregates: no per-router, per-transport or per-SSRC labels.
fn render_sfu(o: &mut String, s: &SfuCounters) {
    for (name, help, value) in [
        ("tern_sfu_routers", "SFU routers.", s.routers),
        (
            "tern_sfu_transports",
            "SFU transports (one UDP socket each).",
            s.transports,
        ),
        ("tern_sfu_producers", "SFU producers.", s.producers),
        ("tern_sfu_consumers", "SFU consumers.", s.consumers),
    ] {
        header(o, name, "gauge", help);
        sample(o, name, &[], value);
    }
    header(
        o,
        "tern_sfu_packets_total",
        "counter",
        "Datagrams on SFU transports, by direction (in: received; out: handed to the kernel).",
    );
    sample(
        o,
        "tern_sfu_packets_total",
        &[("direction", "in")],
        s.packets_in,
    );
    sample(
        o,
        "tern_sfu_packets_total",
        &[("direction", "out")],
        s.packets_out,
    );
    header(
        o,
        "tern_sfu_bytes_total",
        "counter",
        "Bytes on SFU transports, by direction.",
    );
    sample(
        o,
        "tern_sfu_bytes_total",
        &[("direction", "in")],
        s.bytes_in,
    );
    sample(
        o,
        "tern_sfu_bytes_total",
        &[("direction", "out")],
        s.bytes_out,
    );
    for (name, help, value) in [
        (
            "tern_sfu_rtp_forwarded_total",
            "RTP packets written for consumers (fan-out).",
            s.rtp_forwarded,
        ),
        (
            "tern_sfu_nack_retransmissions_total",
            "Packets resent from a retransmission buffer in answer to NACKs.",
            s.retransmitted,
        ),
        (
            "tern_sfu_nack_misses_total",
            "NACKed packets the buffer no longer had.",
            s.nack_misses,
        ),
        (
            "tern_sfu_upstream_nacks_total",
            "NACKs sent to producers for packets missing upstream.",
            s.upstream_nacks,
        ),
        (
            "tern_sfu_key_frame_requests_total",
            "PLI/FIR sent to producers.",
            s.key_frame_requests,
        ),
        (
            "tern_sfu_srtp_auth_failures_total",
            "SRTP/SRTCP packets that did not authenticate.",
            s.srtp_auth_failures,
        ),
        (
            "tern_sfu_srtp_replays_total",
            "SRTP/SRTCP packets refused as replays.",
            s.srtp_replays,
        ),
    ] {
        header(o, name, "counter", help);
        sample(o, name, &[], value);
    }
    header(
        o,
        "tern_sfu_dropped_total",
        "counter",
        "SFU datagrams dropped, by reason.",
    );
    for d in SfuDrop::ALL {
        sample(
            o,
            "tern_sfu_dropped_total",
            &[("reason", d.as_str())],
            s.drops[d.index()],
        );
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One sample; label values here are fixed identifiers, never user input,
/// so they need no escaping.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    write_labels(out, labels);
    let _ = writeln!(out, " {value}");
}

/// One metric with a sample per client transport in `transports`.
fn per_transport(
    out: &mut String,
    (name, kind): (&str, &str),
    help: &str,
    transports: &[Transport],
    value: impl Fn(Transport) -> u64,
) {
    header(out, name, kind, help);
    for &tr in transports {
        sample(out, name, &[("transport", tr.as_str())], value(tr));
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"");
        // The exposition format escapes backslash, double quote and newline in label values.
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// A nanosecond HdrHistogram as cumulative `_bucket`s in seconds, `_sum` and `_count`.
fn histogram(
    out: &mut String,
    name: &str,
    label: Option<(&str, &str)>,
    h: &Histogram<u64>,
    sum_ns: u64,
) {
    let base: Vec<(&str, &str)> = label.into_iter().collect();
    let bucket = format!("{name}_bucket");
    for le in BUCKETS {
        let le_ns = (le * 1e9).round() as u64;
        let count = if h.is_empty() {
            0
        } else {
            h.count_between(0, le_ns)
        };
        let le_text = le.to_string();
        let mut labels = base.clone();
        labels.push(("le", &le_text));
        sample(out, &bucket, &labels, count);
    }
    let mut labels = base.clone();
    labels.push(("le", "+Inf"));
    sample(out, &bucket, &labels, h.len());
    out.push_str(name);
    out.push_str("_sum");
    write_labels(out, &base);
    let _ = writeln!(out, " {}", sum_ns as f64 / 1e9);
    out.push_str(name);
    out.push_str("_count");
    write_labels(out, &base);
    let _ = writeln!(out, " {}", h.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam::channel;

    #[test]
    fn reports_circulate_without_loss() {
        let (tx, rx) = channel::bounded(4);
        let (back_tx, back_rx) = channel::bounded(1);
        back_tx.send(Report::new(0)).unwrap();
        let mut reporter = Reporter::new(tx, back_rx);
        let stats = Stats::default();
        let io = IoStats::default();
        let counters = || Counters {
            drain_epoch: 0,
            draining: false,
            turn: &stats,
            io: &io,
            allocations: 3,
            unroutable: 0,
            stalls: 0,
            streams: StreamStats::default(),
            sfu: SfuCounters::default(),
        };
        let mut collected = Collected::new(1);
        let t0 = Instant::now();
        reporter.record_turn(1_000);
        reporter.record_turn(2_000);
        reporter.maybe_report(t0, counters());
        let mut r = rx.try_recv().unwrap();
        collected.absorb(&mut r, t0);
        assert!(r.loop_ns.is_empty());
        // Not handed back yet: the next interval is skipped, nothing is lost.
        reporter.record_turn(3_000);
        reporter.maybe_report(t0 + REPORT_EVERY, counters());
        assert!(rx.try_recv().is_err());
        assert_eq!(reporter.skipped, 1);
        back_tx.send(r).unwrap();
        reporter.maybe_report(t0 + 2 * REPORT_EVERY, counters());
        let mut r = rx.try_recv().unwrap();
        collected.absorb(&mut r, t0);
        let w = &collected.workers[0];
        assert_eq!(
            (w.last.turns, w.last.loop_ns.len(), w.last.loop_ns_sum),
            (3, 3, 6_000)
        );
        assert_eq!(collected.totals().allocations, 3);
    }

    #[test]
    fn transport_series_carry_their_own_values() {
        let mut t = Totals::default();
        t.turn.by_transport[Transport::Tcp.index()].allocations_created = 3;
        t.turn.by_transport[Transport::Tcp.index()].allocations_ended = 1;
        t.turn.by_transport[Transport::Tls.index()].allocations_created = 5;
        t.streams.accepted[Transport::Tls.index()] = 7;
        t.streams.open[Transport::Tcp.index()] = 2;
        t.turn.by_transport[Transport::Dtls.index()].allocations_created = 4;
        t.streams.dtls.hello_verify_sent = 9;
        t.streams.dtls.open = 1;
        t.streams.dtls.closed[CloseReason::HandshakeTimeout as usize] = 6;
        t.streams.dtls.dropped[crate::DtlsDrop::NotDtls as usize] = 8;
        let mut o = String::new();
        Collected::new(1).render_transports(&mut o, &t);
        for line in [
            "tern_transport_allocations_active{transport=\"tcp\"} 2\n",
            "tern_transport_allocations_created_total{transport=\"tls\"} 5\n",
            "tern_transport_allocations_created_total{transport=\"udp\"} 0\n",
            "tern_stream_connections_accepted_total{transport=\"tls\"} 7\n",
            "tern_stream_connections_open{transport=\"tcp\"} 2\n",
            "# TYPE tern_stream_connections_open gauge\n",
            "tern_transport_allocations_created_total{transport=\"dtls\"} 4\n",
            "tern_dtls_client_hellos_total{result=\"verify_sent\"} 9\n",
            "tern_dtls_associations_open 1\n",
            "tern_dtls_associations_closed_total{reason=\"handshake_timeout\"} 6\n",
            "tern_dtls_dropped_total{reason=\"not_dtls\"} 8\n",
        ] {
            assert!(o.contains(line), "no {line:?} in\n{o}");
        }
        // Streams only: no UDP connection series.
        assert!(!o.contains("tern_stream_connections_open{transport=\"udp\"}"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "x", &[("reason", "a \"b\" \\ c\nd")], 1);
        assert_eq!(out, "x{reason=\"a \\\"b\\\" \\\\ c\\nd\"} 1\n");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = latency_histogram();
        h.record(500).unwrap(); // 0.5 µs
        h.record(3_000_000).unwrap(); // 3 ms
        h.record(20_000_000_000).unwrap(); // 20 s
        let mut out = String::new();
        histogram(&mut out, "x", Some(("worker", "0")), &h, 20_003_000_500);
        assert!(
            out.contains("x_bucket{worker=\"0\",le=\"0.000001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{worker=\"0\",le=\"0.005\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{worker=\"0\",le=\"10\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{worker=\"0\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_count{worker=\"0\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{worker=\"0\"} 20.0030005\n"), "{out}");
    }
}
