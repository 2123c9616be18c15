//! `tern-bench`: load generator, comparison harness, null relay and
//! impairment proxy for TURN relays. See README.md beside this crate.

// This binary is I/O and measurement, not a sans-IO protocol core.
#![allow(clippy::disallowed_methods)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tern_bench::compare::{compare, table};
use tern_bench::forwarder::{self, ForwarderConfig, ForwarderCounters, ReplyRoute};
use tern_bench::load::Load;
use tern_bench::mix::PayloadMix;
use tern_bench::netns::{self, Direction, LossFilter};
use tern_bench::scenario::{Bench, RunReport, Scenario, TargetKind, TopologyKind};
use tern_bench::sweep::{csv, svg, sweep, SweepConfig};
use tern_bench::turn_client::DataPath;

/// Load generator and side-by-side harness for TURN relays (loopback only).
#[derive(Parser, Debug)]
#[command(name = "tern-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// SFU mode: in each of --rooms rooms one publisher to --subscribers
    /// subscribers, through tern's SFU and/or Janus' VideoRoom (remote
    /// publishers + RTP forwarders), alternating per repetition; egress
    /// packets per relay CPU-second and one-way latency.
    Sfu {
        /// Targets, comma-separated, alternated within each repetition.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "tern")]
        targets: Vec<tern_bench::sfu::SfuTarget>,
        /// Repetitions of each target.
        #[arg(long, default_value_t = 1)]
        reps: usize,
        /// The tern binary.
        #[arg(long, default_value = "target/release/tern")]
        tern: PathBuf,
        /// The janus binary.
        #[arg(long, default_value = "/usr/bin/janus")]
        janus: PathBuf,
        /// Janus' module folder (holding plugins/ and transports/); default:
        /// the usual install folders.
        #[arg(long)]
        janus_modules: Option<PathBuf>,
        /// Rooms (tern routers, Janus VideoRooms), one publisher each.
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Subscribers per room (rooms x subscribers at most 10000).
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// Publisher packets per second, over all rooms.
        #[arg(long, default_value_t = 500)]
        rate: u64,
        /// Seconds of traffic per window (at most 60).
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// RTP payload bytes.
        #[arg(long, default_value_t = 1000)]
        payload: usize,
        /// tern worker threads.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// SRTP (AES_CM_128_HMAC_SHA1_80) towards the subscribers, on every target.
        #[arg(long)]
        srtp: bool,
        /// Receiving sockets, one thread each (subscribers spread over them).
        #[arg(long, default_value_t = 2)]
        receivers: usize,
        /// Receivers poll their sockets every N µs instead of sleeping on
        /// them, so no relay pays to wake the harness (0: block, as before).
        #[arg(long, default_value_t = 100)]
        receive_poll_us: u64,
        /// Fail (exit 1, after the table) when a window lost more than this %.
        #[arg(long, default_value_t = 5.0)]
        max_loss: f64,
        /// Print the reports as JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// One measurement window against one target.
    Run {
        /// What to measure.
        #[arg(long, value_enum, default_value = "tern")]
        target: TargetKind,
        #[command(flatten)]
        sc: ScenarioArgs,
    },
    /// The same scenario against several targets, alternating, repeated.
    Compare {
        /// Targets, comma-separated.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "tern,coturn,null"
        )]
        targets: Vec<TargetKind>,
        /// Repetitions of each target.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[command(flatten)]
        sc: ScenarioArgs,
    },
    /// Highest rate sustained at or under a loss threshold; CSV + SVG.
    Sweep {
        /// What to measure.
        #[arg(long, value_enum, default_value = "tern")]
        target: TargetKind,
        /// First rate tried (pps); doubled until a window fails, then bisected.
        #[arg(long, default_value_t = 10_000.0)]
        start_rate: f64,
        /// Never request more than this (pps).
        #[arg(long, default_value_t = 2_000_000.0)]
        max_rate: f64,
        /// A window passes at or under this loss (percent).
        #[arg(long, default_value_t = 0.1)]
        max_loss: f64,
        /// Stop bisecting when the bracket is narrower than this share.
        #[arg(long, default_value_t = 0.05)]
        resolution: f64,
        /// At most this many windows.
        #[arg(long, default_value_t = 16)]
        max_windows: usize,
        /// CSV output file.
        #[arg(long, default_value = "sweep.csv")]
        csv: PathBuf,
        /// SVG output file.
        #[arg(long, default_value = "sweep.svg")]
        svg: PathBuf,
        #[command(flatten)]
        sc: ScenarioArgs,
    },
    /// Drop a random share of UDP/IPv4 packets on an interface with a tc
    /// classic-BPF filter (clsact qdisc); removed when the time is up or on
    /// Ctrl-C / SIGTERM.
    Impair {
        /// Interface to filter on.
        #[arg(long)]
        iface: String,
        /// Share of UDP packets to drop, percent (0-100).
        #[arg(long)]
        loss: f64,
        /// Network namespace (`ip netns` name) the interface is in.
        #[arg(long)]
        netns: Option<String>,
        /// Which packets: those arriving (ingress) or leaving (egress).
        #[arg(long, value_enum, default_value = "ingress")]
        direction: Direction,
        /// Remove the filter after this many seconds (at most 3600).
        #[arg(long, default_value_t = 60)]
        duration: u64,
    },
    /// The null relay: forward every datagram from --listen to --to (recvmmsg/sendmmsg), no TURN.
    NullRelay {
        #[command(flatten)]
        f: ForwardArgs,
        /// I/O path: the harness's own recvmmsg forwarder, or tern-io's mmsg or io_uring back end.
        #[arg(long, value_enum, default_value = "harness")]
        io: tern_bench::null_io::NullIo,
        /// Send each source's datagrams from a socket of its own, out of this
        /// many opened at start (tern-io paths only; 0: from the listening socket).
        #[arg(long, default_value_t = 0)]
        egress_sockets: usize,
    },
    /// TURN over TCP or TLS: tern and/or coturn with a stream listener, one
    /// connection and allocation per flow, paced ChannelData echoed by a UDP
    /// peer; delivered rate, loss, round trip and relay CPU per packet.
    Stream {
        /// Targets, comma-separated, alternated per repetition.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "tern,coturn")]
        targets: Vec<tern_bench::stream::StreamTarget>,
        /// Client transport.
        #[arg(long, value_enum, default_value = "tcp")]
        transport: tern_bench::stream::StreamTransport,
        /// Client connections (one allocation each, at most 2000).
        #[arg(long, default_value_t = 100)]
        flows: usize,
        /// Payload bytes per message (16-1200).
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Messages per second over all flows (each is relayed twice: out and echoed back).
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        /// Seconds of each window (at most 60).
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Repetitions of each target.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Relay threads (tern --workers, coturn --relay-threads).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// The tern binary.
        #[arg(long, default_value = "target/release/tern")]
        tern_bin: PathBuf,
        /// coturn's turnserver.
        #[arg(long, default_value = "/usr/bin/turnserver")]
        coturn_bin: PathBuf,
        /// Print the reports as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The impairment proxy: the null relay plus deterministic drop and fixed delay.
    Proxy {
        #[command(flatten)]
        f: ForwardArgs,
        /// Share of packets to drop (0..1), exactly and evenly spread.
        #[arg(long, default_value_t = 0.0)]
        drop: f64,
        /// Delay added to every forwarded packet, milliseconds.
        #[arg(long, default_value_t = 0.0)]
        delay_ms: f64,
        /// Forward both ways: what comes from --to goes back (to --reply-to,
        /// or to the latest other source), everything else on to --to.
        #[arg(long)]
        two_way: bool,
        /// Two-way: where what comes from --to goes (default: learned).
        #[arg(long, requires = "two_way")]
        reply_to: Option<SocketAddr>,
        /// Two-way: where RTCP from --to goes, if not with the RTP.
        #[arg(long, requires = "two_way")]
        reply_rtcp_to: Option<SocketAddr>,
    },
}

#[derive(Args, Debug, Clone)]
struct ForwardArgs {
    /// Address to receive on (loopback).
    #[arg(long)]
    listen: SocketAddr,
    /// Address to send everything to (loopback).
    #[arg(long)]
    to: SocketAddr,
    /// recvmmsg/sendmmsg batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 3600)]
    time_limit: u64,
    /// Stop after this many packets.
    #[arg(long, default_value_t = 1_000_000_000)]
    max_packets: u64,
}

#[derive(Args, Debug, Clone)]
struct ScenarioArgs {
    /// Allocations (flows), each with its own client socket.
    #[arg(long, default_value_t = 1000)]
    flows: usize,
    /// Requested rate over all flows, packets per second.
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// Measurement window (sending time limit), seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Packet count limit (default: rate x duration).
    #[arg(long)]
    count: Option<u64>,
    /// Probe payload bytes as the peer sees them (rounded up to a multiple of 4, >= 32).
    #[arg(long, default_value_t = 160)]
    payload: usize,
    /// Draw each packet's payload size from SIZE:WEIGHT[,SIZE:WEIGHT...]
    /// (e.g. 100:80,1200:20), sizes 32..=1400 bytes, weights > 0; instead of --payload.
    #[arg(long, conflicts_with = "payload", value_parser = parse_mix)]
    payload_mix: Option<PayloadMix>,
    /// Seed of the per-flow size generators of --payload-mix.
    #[arg(long, default_value_t = 1)]
    mix_seed: u64,
    /// Extra sessions (after the --flows ones) that each send --flood-rate pps.
    #[arg(long, default_value_t = 0)]
    flood_flows: usize,
    /// Packets per second of each flood flow (needs --flood-flows).
    #[arg(long)]
    flood_rate: Option<f64>,
    /// Sender threads.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Peer-side receiver threads (one socket each; TURN targets only).
    #[arg(long, default_value_t = 1)]
    receivers: usize,
    /// Packets per flow per sendmmsg.
    #[arg(long, default_value_t = 1)]
    burst: usize,
    /// Sender tick, microseconds: 0 paces each packet on time (a sender
    /// spins between close packets); N > 0 sleeps N µs whenever caught up
    /// and sends what accrued, so the senders barely load the machine and
    /// `machine ns/pkt` is mostly relay and kernel (at most 100000).
    #[arg(long, default_value_t = 0)]
    tick_us: u64,
    /// Send indications instead of ChannelData (permission only, no channel).
    #[arg(long)]
    send_indications: bool,
    /// Peers echo every probe back through the relay; clients measure RTT and
    /// return loss (TURN targets only).
    #[arg(long)]
    echo: bool,
    /// Relay worker threads (tern --workers, coturn --relay-threads).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// tern binary (relative paths also tried beside this executable).
    #[arg(long, default_value = "target/release/tern")]
    tern_bin: PathBuf,
    /// coturn binary.
    #[arg(long, default_value = "turnserver")]
    coturn_bin: PathBuf,
    /// Realm of spawned relays.
    #[arg(long, default_value = "tern.bench")]
    realm: String,
    /// REST shared secret.
    #[arg(long, default_value = "tern-bench-secret")]
    secret: String,
    /// REST user part (or NAME:PASSWORD with --long-term).
    #[arg(long, default_value = "bench")]
    user: String,
    /// Long-term credentials from --user NAME:PASSWORD instead of REST.
    #[arg(long)]
    long_term: bool,
    /// External relay address (--target external).
    #[arg(long)]
    server: Option<SocketAddr>,
    /// External relay pid, for CPU accounting.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// The relay must use under this % of a core over 1 s before a window starts.
    #[arg(long, default_value_t = 5.0)]
    idle_pct: f64,
    /// How long to wait for that, seconds.
    #[arg(long, default_value_t = 15)]
    idle_wait: u64,
    /// Flag a window when other processes used more than this % of a core.
    #[arg(long, default_value_t = 20.0)]
    disturb_pct: f64,
    /// Pin sender and receiver threads to cores.
    #[arg(long)]
    pin: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file (the text still goes to stdout).
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// loopback: everything on the host's loopback; netns: client, relay
    /// and peer in three network namespaces joined by veth pairs (root).
    #[arg(long, value_enum, default_value = "loopback")]
    topology: TopologyKind,
    /// The null relay's I/O path: harness (its own recvmmsg forwarder), or
    /// tern-io's mmsg or uring back end, for a floor on the same path as tern.
    #[arg(long, value_enum, default_value = "harness")]
    null_io: tern_bench::null_io::NullIo,
    /// The null relay sends each flow from a socket of its own, as a TURN
    /// relay sends each allocation's datagrams from its relayed socket
    /// (needs --null-io mmsg or uring).
    #[arg(long)]
    null_per_flow: bool,
    /// The harness's own packet I/O: kernel (sendmmsg/recvmmsg), or xsk:
    /// AF_XDP sockets on the client and peer veths (--topology netns, one
    /// sender; a tern-bench built with --features xdp), which keeps the
    /// harness's CPU out of the machine-wide figure.
    #[arg(long, value_enum, default_value = "kernel")]
    harness_io: tern_bench::scenario::HarnessIo,
}

fn parse_mix(s: &str) -> Result<PayloadMix, String> {
    PayloadMix::parse(s, 1)
}

impl ScenarioArgs {
    fn scenario(&self) -> tern_bench::Result<Scenario> {
        let flood_rate = match (self.flood_flows, self.flood_rate) {
            (0, None) => 0.0,
            (0, Some(_)) => {
                return Err(tern_bench::Error(
                    "--flood-rate needs --flood-flows K (K > 0)".into(),
                ))
            }
            (_, Some(r)) if r.is_finite() && r > 0.0 => r,
            (_, Some(r)) => {
                return Err(tern_bench::Error(format!(
                    "--flood-rate {r} must be a number of packets per second > 0"
                )))
            }
            (_, None) => {
                return Err(tern_bench::Error(
                    "--flood-flows needs --flood-rate R (pps per flood flow)".into(),
                ))
            }
        };
        let payload = self
            .payload
            .max(tern_bench::payload::HEADER_LEN)
            .next_multiple_of(4)
            .min(1400);
        let duration = Duration::from_secs_f64(self.duration.max(0.01));
        let load = Load {
            rate_pps: self.rate,
            duration,
            count: self
                .count
                .unwrap_or((self.rate * duration.as_secs_f64()).ceil() as u64),
            payload_len: payload,
            senders: self.senders,
            burst: self.burst,
            pin: self.pin,
            disturb_pct: self.disturb_pct,
            echo: self.echo,
            mix: self.payload_mix.clone().map(|mut m| {
                m.seed = self.mix_seed;
                m
            }),
            flood_flows: self.flood_flows,
            flood_rate_pps: flood_rate,
            tick: Duration::from_micros(self.tick_us.min(100_000)),
            xsk: None,
            flood_count: (flood_rate * self.flood_flows as f64 * duration.as_secs_f64()).ceil()
                as u64,
        };
        Ok(Scenario {
            flows: self.flows.max(1),
            path: if self.send_indications {
                DataPath::SendIndication
            } else {
                DataPath::Channel
            },
            load,
            receivers: self.receivers,
            workers: self.workers,
            tern_bin: resolve_beside_exe(&self.tern_bin),
            coturn_bin: self.coturn_bin.clone(),
            realm: self.realm.clone(),
            secret: self.secret.clone(),
            user: self.user.clone(),
            long_term: self.long_term,
            server: self.server,
            relay_pid: self.relay_pid,
            idle_pct: self.idle_pct,
            idle_wait: Duration::from_secs(self.idle_wait),
            topology: self.topology,
            null_io: self.null_io,
            null_per_flow: self.null_per_flow,
            harness_io: self.harness_io,
        })
    }
}

/// `160 B` or `mix 100:80,1200:20 (mean 320 B)`.
fn payload_desc(l: &Load) -> String {
    match &l.mix {
        Some(m) => format!("mix {} (mean {:.0} B)", m.describe(), m.mean_size()),
        None => format!("{} B", l.payload_len),
    }
}

fn resolve_beside_exe(p: &std::path::Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p.to_path_buf();
    }
    let beside = std::env::current_exe().ok().and_then(|e| {
        e.parent()
            .map(|d| d.join(p.file_name().unwrap_or_default()))
    });
    match beside {
        Some(b) if b.exists() => b,
        _ => p.to_path_buf(),
    }
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::Relaxed);
}

/// On SIGINT/SIGTERM/SIGHUP: remove every namespace, qdisc and filter this
/// process created, then exit (children die with us: PR_SET_PDEATHSIG).
fn install_signal_cleanup() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let _watcher = std::thread::Builder::new()
        .name("tb-signals".into())
        .spawn(|| loop {
            if SIGNALLED.load(Ordering::Relaxed) {
                let mut e = std::io::stderr().lock();
                let _ = writeln!(
                    e,
                    "\ntern-bench: interrupted; removing namespaces and filters"
                );
                drop(e);
                netns::cleanup_registered();
                std::process::exit(130);
            }
            std::thread::sleep(Duration::from_millis(50));
        });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    install_signal_cleanup();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn out(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{s}");
}

fn json<T: serde::Serialize>(v: &T) -> tern_bench::Result<()> {
    out(&serde_json::to_string_pretty(v).map_err(|e| tern_bench::Error(e.to_string()))?);
    Ok(())
}

fn json_file<T: serde::Serialize>(path: Option<&std::path::Path>, v: &T) -> tern_bench::Result<()> {
    if let Some(p) = path {
        let s = serde_json::to_string_pretty(v).map_err(|e| tern_bench::Error(e.to_string()))?;
        std::fs::write(p, s + "\n")?;
    }
    Ok(())
}

fn real_main(cli: Cli) -> tern_bench::Result<()> {
    match cli.cmd {
        Cmd::Run { target, sc } => {
            let s = sc.scenario()?;
            let mut b = Bench::start(target, &s)?;
            let r = b.window(&s.load, s.idle_pct, s.idle_wait);
            json_file(sc.json_out.as_deref(), &r)?;
            if sc.json {
                json(&r)?;
            } else {
                out(&describe(&r));
            }
        }
        Cmd::Compare { targets, reps, sc } => {
            let s = sc.scenario()?;
            eprintln!(
                "compare: {} flows, {:.0} pps, {} flood flows at {:.0} pps each, {:.1} s windows, payload {}, {:?}, {} rep(s) of {:?}; null relay on {}{}",
                s.flows,
                s.load.rate_pps,
                s.load.flood_flows,
                s.load.flood_rate_pps,
                s.load.duration.as_secs_f64(),
                payload_desc(&s.load),
                s.path,
                reps,
                targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
                s.null_io.name(),
                if s.null_per_flow {
                    ", one egress socket per flow"
                } else {
                    ", one socket"
                }
            );
            let rep = compare(&s, &targets, reps.max(1), |line| eprintln!("{line}"));
            json_file(sc.json_out.as_deref(), &rep)?;
            if sc.json {
                json(&rep)?;
            } else {
                out(&table(&rep.summary));
            }
        }
        Cmd::Stream {
            targets,
            transport,
            flows,
            payload,
            rate,
            duration,
            reps,
            workers,
            tern_bin,
            coturn_bin,
            json: as_json,
        } => {
            let sc = tern_bench::stream::StreamScenario {
                transport,
                flows,
                payload,
                rate,
                duration: Duration::from_secs(duration.clamp(1, 60)),
                workers: workers.max(1),
                tern_bin,
                coturn_bin,
            };
            let mut reports = Vec::new();
            for rep in 0..reps.max(1) {
                for &target in &targets {
                    let r = tern_bench::stream::run(target, &sc)?;
                    eprintln!(
                        "rep {rep} {target:?}/{transport:?}: {:.0}/s delivered, loss {:.3} %, rtt p50 {:.1} µs",
                        r.delivered_rate, r.loss_pct, r.rtt_p50_us
                    );
                    reports.push(r);
                }
            }
            if as_json {
                json(&reports)?;
            } else {
                out(&tern_bench::stream::table(&reports));
            }
        }
        Cmd::Sweep {
            target,
            start_rate,
            max_rate,
            max_loss,
            resolution,
            max_windows,
            csv: csv_path,
            svg: svg_path,
            sc,
        } => {
            let s = sc.scenario()?;
            let mut b = Bench::start(target, &s)?;
            let cfg = SweepConfig {
                start_pps: start_rate,
                max_pps: max_rate,
                max_loss_pct: max_loss,
                resolution,
                max_windows,
            };
            let rep = sweep(&mut b, &s.load, &cfg, s.idle_pct, s.idle_wait, |p| {
                eprintln!(
                    "requested {:>9.0} offered {:>9.0} delivered {:>9.0} pps loss {:>7.3} % p99 {:>8.1} µs {}{}",
                    p.requested_pps,
                    p.offered_pps,
                    p.delivered_pps,
                    p.loss_pct,
                    p.p99_us,
                    if p.pass { "pass" } else { "FAIL" },
                    if p.generator_limited { " (generator-limited)" } else { "" }
                )
            });
            std::fs::write(&csv_path, csv(&rep.points))?;
            let title = format!(
                "{} — {} flows, payload {}, {:.1} s windows",
                target.name(),
                s.flows,
                payload_desc(&s.load),
                s.load.duration.as_secs_f64()
            );
            std::fs::write(&svg_path, svg(&rep.points, &title))?;
            json_file(sc.json_out.as_deref(), &rep)?;
            if sc.json {
                json(&rep)?;
            } else {
                out(&match rep.best_pps {
                    Some(b) => format!(
                        "{}: highest rate at <= {max_loss} % loss: {b:.0} pps{}\nwrote {} and {}",
                        target.name(),
                        if rep.generator_bound {
                            " (bounded by the generator, not the relay)"
                        } else {
                            ""
                        },
                        csv_path.display(),
                        svg_path.display()
                    ),
                    None => format!(
                        "{}: no rate passed; wrote {} and {}",
                        target.name(),
                        csv_path.display(),
                        svg_path.display()
                    ),
                });
            }
        }
        Cmd::Impair {
            iface,
            loss,
            netns,
            direction,
            duration,
        } => {
            let f = LossFilter::add(netns.as_deref(), &iface, direction, loss)?;
            let secs = duration.min(3600);
            eprintln!(
                "dropping {loss} % of UDP/IPv4 packets, {direction:?} on {iface}{} (tc bpf bytecode '{}'), for {secs} s; Ctrl-C removes it",
                netns.as_deref().map_or(String::new(), |n| format!(" in netns {n}")),
                netns::loss_bytecode(loss)
            );
            let end = std::time::Instant::now() + Duration::from_secs(secs);
            while std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(f);
            eprintln!("filter removed");
        }
        Cmd::NullRelay {
            f,
            io,
            egress_sockets,
        } => match io {
            tern_bench::null_io::NullIo::Harness if egress_sockets > 0 => {
                return Err(tern_bench::Error(
                    "--egress-sockets needs --io mmsg or uring".into(),
                ))
            }
            tern_bench::null_io::NullIo::Harness => forward(&f, 0.0, 0.0, None)?,
            io => {
                check_forward_addrs(&f)?;
                let sock = forwarder::bind(f.listen)?;
                let stats = tern_bench::null_io::run(
                    io,
                    sock,
                    f.to,
                    f.max_packets,
                    Duration::from_secs(f.time_limit),
                    egress_sockets,
                )?;
                eprintln!("{stats:?}");
            }
        },
        Cmd::Proxy {
            f,
            drop,
            delay_ms,
            two_way,
            reply_to,
            reply_rtcp_to,
        } => {
            let reply = two_way.then_some(ReplyRoute {
                to: reply_to,
                rtcp: reply_rtcp_to,
            });
            forward(&f, drop, delay_ms, reply)?
        }
        Cmd::Sfu {
            targets,
            reps,
            tern,
            janus,
            janus_modules,
            rooms,
            subscribers,
            rate,
            duration,
            payload,
            workers,
            srtp,
            receivers,
            receive_poll_us,
            max_loss,
            json: as_json,
        } => {
            use tern_bench::sfu;
            let sc = sfu::SfuScenario {
                tern: resolve_beside_exe(&tern),
                janus,
                janus_modules,
                rooms,
                subscribers,
                rate,
                duration,
                payload,
                workers,
                srtp,
                receivers,
                receive_poll: Duration::from_micros(receive_poll_us.min(100_000)),
            };
            let mut reports = Vec::new();
            for rep in 0..reps.max(1) {
                // Rotate which target goes first.
                let n = targets.len().max(1);
                for i in 0..targets.len() {
                    let target = targets[(i + rep) % n];
                    let r = sfu::run(target, &sc, rep)?;
                    eprintln!(
                        "rep {rep} {}: sent {} received {}/{} (loss {:.3} %), {:.0} egress/CPU-s{}, p50 {:.1} µs p99 {:.1} µs",
                        target.name(),
                        r.sent,
                        r.received,
                        r.expected,
                        r.loss_pct,
                        r.egress_per_cpu_second,
                        r.counted_per_cpu_second
                            .map_or(String::new(), |c| format!(" ({c:.0} by its counter)")),
                        r.latency.p50_us,
                        r.latency.p99_us
                    );
                    reports.push(r);
                }
            }
            if as_json {
                json(&reports)?;
            } else {
                out(&sfu::table(&reports));
            }
            let failed: Vec<String> = reports
                .iter()
                .filter_map(|r| sfu::verdict(r, max_loss))
                .collect();
            if !failed.is_empty() {
                return Err(tern_bench::Error(failed.join("; ")));
            }
        }
    }
    Ok(())
}

fn forward(
    f: &ForwardArgs,
    drop: f64,
    delay_ms: f64,
    reply: Option<ReplyRoute>,
) -> tern_bench::Result<()> {
    check_forward_addrs(f)?;
    for a in reply.iter().flat_map(|r| [r.to, r.rtcp]).flatten() {
        if !a.ip().is_loopback() {
            return Err(tern_bench::Error(format!("{a} is not a loopback address")));
        }
    }
    let sock = forwarder::bind(f.listen)?;
    let cfg = ForwarderConfig {
        to: f.to,
        drop_share: drop.clamp(0.0, 1.0),
        delay: Duration::from_secs_f64(delay_ms.max(0.0) / 1000.0),
        batch: f.batch,
        max_packets: f.max_packets,
        time_limit: Duration::from_secs(f.time_limit),
        reply,
    };
    let counters = ForwarderCounters::default();
    forwarder::run(&sock, &cfg, &AtomicBool::new(false), &counters);
    eprintln!("{:?}", counters.snapshot());
    Ok(())
}

fn check_forward_addrs(f: &ForwardArgs) -> tern_bench::Result<()> {
    // Loopback only; or, inside a namespace of the netns topology (never
    // the host's), its own private addresses.
    let topo_net = |a: &SocketAddr| match a.ip() {
        std::net::IpAddr::V4(v) => v.octets()[..2] == [10, 201] && netns::in_harness_netns(),
        std::net::IpAddr::V6(_) => false,
    };
    for a in [f.listen, f.to] {
        if !a.ip().is_loopback() && !topo_net(&a) {
            return Err(tern_bench::Error(format!(
                "{a} is not a loopback address (nor a netns-topology address inside its namespace)"
            )));
        }
    }
    Ok(())
}

fn describe(r: &RunReport) -> String {
    let m = &r.m;
    let c = &m.cpu;
    let mut s = format!(
        "target {} ({}), {} flows, payload {}, setup {:.2} s\n",
        r.target.name(),
        match r.path {
            Some(DataPath::Channel) => "ChannelData",
            Some(DataPath::SendIndication) => "Send indications",
            None => "plain UDP",
        },
        r.flows,
        payload_desc(&r.load),
        r.setup_s
    );
    let flood = if r.load.flood_flows > 0 {
        format!(
            " + {} flood flows x {:.0} pps",
            r.load.flood_flows, r.load.flood_rate_pps
        )
    } else {
        String::new()
    };
    s += &format!(
        "requested {:.0} pps{flood} for {:.1} s ({} packets); offered {} in {:.2} s = {:.0} pps",
        r.load.rate_pps,
        r.load.duration.as_secs_f64(),
        m.requested,
        m.sent,
        m.send_s,
        m.offered_pps
    );
    if m.generator_limited {
        s += &format!(
            "  ** GENERATOR SHORTFALL {:.1} %: the requested rate was NOT offered **",
            m.send_shortfall_pct
        );
    }
    s += &format!(
        "\ndelivered {} = {:.0} pps; lost {} ({:.3} %), reordered {}, duplicates {}, foreign {}, send errors {}\n",
        m.received, m.delivered_pps, m.lost, m.loss_pct, m.reordered, m.duplicates, m.foreign, m.send_errors
    );
    s += &format!(
        "delivered payload {:.0} bytes/s ({:.2} Mbit/s); sent {} B, received {} B\n",
        m.delivered_bytes_per_s,
        m.delivered_bytes_per_s * 8.0 / 1e6,
        m.sent_bytes,
        m.received_bytes
    );
    if r.load.mix.is_some() {
        s += "by size (sent/received):";
        for z in &m.sizes {
            s += &format!(" {} B {}/{}", z.size, z.sent, z.received);
        }
        s += "\n";
    }
    if !m.classes.is_empty() {
        s += &format!(
            "{:<9} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8} {:>11} {:>12} {:>9} {:>9} {:>9} {:>9}\n",
            "class",
            "flows",
            "requested",
            "sent",
            "received",
            "lost",
            "loss %",
            "deliv pps",
            "bytes/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs"
        );
        for c in &m.classes {
            let l = &c.latency;
            s += &format!(
                "{:<9} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8.3} {:>11.0} {:>12.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1}\n",
                c.class, c.flows, c.requested, c.sent, c.received, c.lost, c.loss_pct, c.delivered_pps,
                c.delivered_bytes_per_s, l.p50_us, l.p99_us, l.p999_us, l.max_us
            );
        }
        let l = &m.latency;
        s += &format!(
            "{:<9} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8.3} {:>11.0} {:>12.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1}\n",
            "total", r.flows, m.requested, m.sent, m.received, m.lost, m.loss_pct, m.delivered_pps,
            m.delivered_bytes_per_s, l.p50_us, l.p99_us, l.p999_us, l.max_us
        );
    }
    let l = &m.latency;
    s += &format!(
        "one-way latency µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}\n",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.mean_us
    );
    let opt = |v: Option<f64>, p: usize| v.map_or("-".to_owned(), |v| format!("{v:.p$}"));
    s += &format!(
        "CPU over {:.2} s: relay {} s ({} % of a core, {} ns/pkt); machine busy {:.2} s ({} ns/pkt, softirq {:.2} s); harness {:.2} s; others {:.2} s ({:.1} % of a core){}\n",
        c.window_s,
        opt(c.relay_cpu_s, 2),
        opt(c.relay_core_pct, 1),
        opt(c.relay_ns_per_pkt, 0),
        c.machine_busy_s,
        opt(c.machine_ns_per_pkt, 0),
        c.softirq_s,
        c.bench_cpu_s,
        c.others_cpu_s,
        c.others_core_pct,
        if c.disturbed { "  ** DISTURBED **" } else { "" }
    );
    if let Some(e) = &m.echo {
        s += &format!(
            "echo: {} back at clients, return loss {:.3} %, foreign {}; RTT µs p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n",
            e.received,
            e.return_loss_pct,
            e.foreign,
            e.rtt.p50_us,
            e.rtt.p90_us,
            e.rtt.p99_us,
            e.rtt.p999_us,
            e.rtt.max_us
        );
    }
    s += &format!(
        "kernel UDP drops during window: rcvbuf {}, sndbuf {}",
        c.udp_rcvbuf_errors, c.udp_sndbuf_errors
    );
    if let (Some(p), Some(ok)) = (r.idle_core_pct_before, r.idle_ok) {
        s += &format!(
            "\nrelay CPU before window: {p:.1} % of a core{}",
            if ok { "" } else { " (NOT idle)" }
        );
    }
    s
}
