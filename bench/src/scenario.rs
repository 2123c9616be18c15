//! A scenario against one target: start it (or reach it), set up the flows
//! (real TURN allocations, or plain UDP sockets for the null relay), wait for
//! the relay to be idle, then run one or more measurement windows.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cpu;
use crate::load::{measure, peer_sockets, peer_sockets_on, Flow, Load, Measurement};
use crate::netns::{in_netns, Topology};
use crate::servers::{spawn_coturn, spawn_null, spawn_tern, RelayConfig, Spawned};
use crate::turn_client::{allocate_all, Credentials, DataPath, Setup};
use crate::{bail, Result};

/// What is being measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// tern, started by the harness, on the back end it picks itself.
    Tern,
    /// tern forced onto its io_uring back end (`--io-backend uring`).
    TernUring,
    /// tern forced onto its recvmmsg back end (`--io-backend mmsg`).
    TernMmsg,
    /// tern forced onto its AF_XDP back end (`--io-backend xdp`; needs root,
    /// a tern built with `--features xdp` and, on this harness, `--topology
    /// netns`: loopback has no XDP).
    TernXdp,
    /// coturn (`turnserver`), started by the harness.
    Coturn,
    /// The built-in null relay (plain UDP, no TURN), started by the harness.
    Null,
    /// A relay already running at `--server` (CPU measured if `--relay-pid` is given).
    External,
}

impl TargetKind {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Tern => "tern",
            TargetKind::TernUring => "tern-uring",
            TargetKind::TernMmsg => "tern-mmsg",
            TargetKind::TernXdp => "tern-xdp",
            TargetKind::Coturn => "coturn",
            TargetKind::Null => "null",
            TargetKind::External => "external",
        }
    }

    /// The back end a tern target forces (`None`: tern chooses, or not tern).
    pub fn tern_backend(self) -> Option<&'static str> {
        match self {
            TargetKind::TernUring => Some("uring"),
            TargetKind::TernMmsg => Some("mmsg"),
            TargetKind::TernXdp => Some("xdp"),
            TargetKind::Tern | TargetKind::Coturn | TargetKind::Null | TargetKind::External => None,
        }
    }

    /// Whether this is tern (on any back end).
    pub fn is_tern(self) -> bool {
        self == TargetKind::Tern || self.tern_backend().is_some()
    }
}

/// Where the client, the relay and the peers live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TopologyKind {
    /// Everything on the host's loopback.
    #[default]
    Loopback,
    /// Client, relay and peer in three network namespaces joined by veth
    /// pairs (see [`crate::netns::Topology`]); needs root.
    Netns,
}

/// The harness's own packet I/O (generator and sink).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum HarnessIo {
    /// Kernel UDP sockets: `sendmmsg` per flow, `recvmmsg` per peer socket.
    #[default]
    Kernel,
    /// AF_XDP sockets on the client and peer veths (netns topology, one
    /// sender, no echo or flood flows; a tern-bench built with `--features
    /// xdp`): the harness's CPU per packet drops far below the relay's, so
    /// the machine-wide figure is mostly the relay and its kernel path.
    Xsk,
}

/// Everything that defines a scenario, shared by `run`, `compare` and `sweep`.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Low-rate allocations (flows); `load.flood_flows` more are set up
    /// after them.
    pub flows: usize,
    /// ChannelData or Send indications (TURN targets).
    pub path: DataPath,
    /// Rate, duration, payload, threads.
    pub load: Load,
    /// Peer-side receiver sockets/threads.
    pub receivers: usize,
    /// Relay worker threads (tern `--workers`, coturn `--relay-threads`).
    pub workers: usize,
    /// tern binary.
    pub tern_bin: PathBuf,
    /// coturn binary.
    pub coturn_bin: PathBuf,
    /// Realm for spawned relays.
    pub realm: String,
    /// REST secret for spawned relays (and external, unless `user` is set).
    pub secret: String,
    /// REST user part, or long-term `user:password` for external relays.
    pub user: String,
    /// Use long-term credentials `user` (as `name:password`) instead of REST.
    pub long_term: bool,
    /// External relay address.
    pub server: Option<SocketAddr>,
    /// External relay pid.
    pub relay_pid: Option<u32>,
    /// Relay must use less than this share of a core over 1 s before a window starts.
    pub idle_pct: f64,
    /// How long to wait for that.
    pub idle_wait: Duration,
    /// Loopback, or three namespaces.
    pub topology: TopologyKind,
    /// The null relay's I/O path (`--null-io`).
    pub null_io: crate::null_io::NullIo,
    /// The null relay sends each flow from its own socket (`--null-per-flow`).
    pub null_per_flow: bool,
    /// The harness's own packet I/O.
    pub harness_io: HarnessIo,
}

impl Scenario {
    /// Sessions to set up: the low-rate flows plus the flood flows (last).
    pub fn total_flows(&self) -> usize {
        self.flows + self.load.flood_flows
    }
}

/// A target set up and ready for measurement windows.
pub struct Bench {
    /// What it is.
    pub kind: TargetKind,
    /// The flows (client sockets with their data-path prefix).
    pub flows: Vec<Flow>,
    /// Peer-side sockets.
    pub peers: Vec<UdpSocket>,
    /// Relay pid for CPU accounting.
    pub pid: Option<u32>,
    /// Time to set up all allocations, seconds.
    pub setup_s: f64,
    /// Data path in use (None: plain UDP).
    pub path: Option<DataPath>,
    releases: Vec<Vec<u8>>,
    run: u32,
    xsk: Option<crate::load::XskSides>,
    _server: Option<Spawned>,
    // After `_server`: the relay is killed before its namespace goes.
    _topo: Option<Topology>,
}

/// One window's report.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    /// Target.
    pub target: TargetKind,
    /// ChannelData / Send indications; `None` for plain UDP (null relay).
    pub path: Option<DataPath>,
    /// Flows (allocations).
    pub flows: usize,
    /// Requested load.
    pub load: Load,
    /// Allocation setup time, seconds.
    pub setup_s: f64,
    /// Relay CPU (share of a core) measured just before the window.
    pub idle_core_pct_before: Option<f64>,
    /// Whether the relay got idle in time.
    pub idle_ok: Option<bool>,
    /// The window.
    #[serde(flatten)]
    pub m: Measurement,
}

impl Bench {
    /// Start (or reach) `kind` and set up `sc.flows` flows.
    pub fn start(kind: TargetKind, sc: &Scenario) -> Result<Bench> {
        let topo = match sc.topology {
            TopologyKind::Loopback => None,
            TopologyKind::Netns => {
                if kind == TargetKind::External {
                    bail!("--topology netns starts its own relay; it cannot use --target external");
                }
                Some(Topology::create(sc.total_flows())?)
            }
        };
        if kind == TargetKind::TernXdp && topo.is_none() {
            bail!("tern-xdp needs --topology netns: XDP does not run on loopback");
        }
        let xsk = match (sc.harness_io, &topo) {
            (HarnessIo::Kernel, _) => None,
            (HarnessIo::Xsk, None) => bail!("--harness-io xsk needs --topology netns"),
            (HarnessIo::Xsk, Some(_)) if !cfg!(feature = "xdp") => {
                bail!("--harness-io xsk needs a tern-bench built with --features xdp")
            }
            (HarnessIo::Xsk, Some(_))
                if sc.load.senders > 1 || sc.load.flood_flows > 0 || sc.load.echo =>
            {
                bail!("--harness-io xsk runs one sender on one queue: no --senders > 1, --flood-flows or --echo")
            }
            (HarnessIo::Xsk, Some(t)) => Some(crate::load::XskSides {
                client_netns: t.client.path(),
                client_if: "c0".into(),
                peer_netns: t.peer.path(),
                peer_if: "p0".into(),
            }),
        };
        let mut b = Bench::start_in(kind, sc, topo.as_ref())?;
        b._topo = topo;
        b.xsk = xsk;
        Ok(b)
    }

    fn start_in(kind: TargetKind, sc: &Scenario, topo: Option<&Topology>) -> Result<Bench> {
        let ip: IpAddr = match topo {
            Some(_) => IpAddr::V4(Topology::RELAY_CLIENT_SIDE),
            None => "127.0.0.1".parse().expect("literal"),
        };
        let peers = match topo {
            Some(t) => in_netns(&t.peer, || {
                peer_sockets_on(IpAddr::V4(Topology::PEER), sc.receivers)
            })??,
            None => peer_sockets(sc.receivers, false)?,
        };
        let netns_path = topo.map(|t| t.relay.path());
        let relay = RelayConfig {
            ip,
            realm: sc.realm.clone(),
            secret: sc.secret.clone(),
            workers: sc.workers,
            ports: (sc.total_flows() as u16).saturating_add(64),
            relay_ip: topo.map(|_| IpAddr::V4(Topology::RELAY_PEER_SIDE)),
            allow_peer: topo.map(|_| Topology::PEER_NET.to_owned()),
            netns: netns_path.clone(),
        };
        let (server, addr, pid) = match kind {
            TargetKind::Null => {
                if sc.load.echo {
                    bail!("the null relay forwards one way only; --echo needs a TURN target");
                }
                let exe = std::env::current_exe()?;
                let to = peers[0].local_addr()?;
                let limit = sc.load.duration * 50 + Duration::from_secs(600);
                if sc.null_per_flow && sc.null_io == crate::null_io::NullIo::Harness {
                    bail!("--null-per-flow needs --null-io mmsg or uring");
                }
                let egress = if sc.null_per_flow {
                    sc.total_flows()
                } else {
                    0
                };
                let s = spawn_null(
                    &exe,
                    ip,
                    to,
                    limit,
                    (sc.null_io, egress),
                    netns_path.as_deref(),
                )?;
                let listen = s.listen;
                let mut b = match topo {
                    Some(t) => in_netns(&t.client, || {
                        Bench::plain(listen, peers, sc.total_flows(), Some(s.pid))
                    })??,
                    None => Bench::plain(listen, peers, sc.total_flows(), Some(s.pid))?,
                };
                b._server = Some(s);
                return Ok(b);
            }
            TargetKind::Tern
            | TargetKind::TernUring
            | TargetKind::TernMmsg
            | TargetKind::TernXdp => {
                let s = spawn_tern(&sc.tern_bin, &relay, kind.tern_backend())?;
                let (a, p) = (s.listen, s.pid);
                (Some(s), a, Some(p))
            }
            TargetKind::Coturn => {
                let s = spawn_coturn(&sc.coturn_bin, &relay)?;
                let (a, p) = (s.listen, s.pid);
                (Some(s), a, Some(p))
            }
            TargetKind::External => match sc.server {
                Some(a) => (None, a, sc.relay_pid),
                None => bail!("--target external needs --server ADDR:PORT"),
            },
        };
        let credentials = if sc.long_term {
            let (u, p) = sc.user.split_once(':').unwrap_or((&sc.user, ""));
            Credentials::LongTerm {
                user: u.to_owned(),
                password: p.to_owned(),
            }
        } else {
            Credentials::Rest {
                secret: sc.secret.clone(),
                user: sc.user.clone(),
            }
        };
        let setup = Setup {
            server: addr,
            credentials,
            path: sc.path,
            window: 64,
            timeout: Duration::from_secs(30 + sc.total_flows() as u64 / 50),
        };
        let peer_addrs: Vec<SocketAddr> = peers
            .iter()
            .map(UdpSocket::local_addr)
            .collect::<std::io::Result<_>>()?;
        let per_flow: Vec<SocketAddr> = (0..sc.total_flows())
            .map(|i| peer_addrs[i % peer_addrs.len()])
            .collect();
        let t0 = Instant::now();
        let allocs = match topo {
            Some(t) => in_netns(&t.client, || allocate_all(&setup, &per_flow))??,
            None => allocate_all(&setup, &per_flow)?,
        };
        let setup_s = t0.elapsed().as_secs_f64();
        let payload = sc.load.payload_len;
        let mut releases = Vec::with_capacity(allocs.len());
        let flows = allocs
            .into_iter()
            .map(|a| {
                let prefix = a.data_prefix(sc.path, payload);
                releases.push(a.release_message());
                Flow {
                    sock: a.sock,
                    prefix,
                }
            })
            .collect();
        Ok(Bench {
            kind,
            flows,
            peers,
            pid,
            setup_s,
            path: Some(sc.path),
            releases,
            run: 0,
            xsk: None,
            _server: server,
            _topo: None,
        })
    }

    /// Plain UDP flows to `addr` (a null relay or proxy that forwards to `peers[0]`).
    pub fn plain(
        addr: SocketAddr,
        peers: Vec<UdpSocket>,
        flows: usize,
        pid: Option<u32>,
    ) -> Result<Bench> {
        let flows = (0..flows)
            .map(|i| {
                let s = UdpSocket::bind(crate::turn_client::client_addr(addr, i))?;
                s.connect(addr)?;
                Ok(Flow {
                    sock: s,
                    prefix: Vec::new(),
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Bench {
            kind: TargetKind::Null,
            flows,
            peers,
            pid,
            setup_s: 0.0,
            path: None,
            releases: Vec::new(),
            run: 0,
            xsk: None,
            _server: None,
            _topo: None,
        })
    }

    /// Wait for the relay to be idle, then run one measurement window.
    pub fn window(&mut self, load: &Load, idle_pct: f64, idle_wait: Duration) -> RunReport {
        let (idle, ok) = match self.pid {
            Some(pid) => {
                let (p, ok) = cpu::wait_idle(pid, idle_pct, idle_wait);
                (Some(p), Some(ok))
            }
            None => (None, None),
        };
        self.run += 1;
        let run = (std::process::id() << 8) ^ self.run;
        let mut load = load.clone();
        load.xsk = self.xsk.clone();
        let m = {
            let _bar = crate::progress::Bar::start(self.kind.name(), load.duration);
            measure(&self.flows, &self.peers, &load, run, self.pid)
        };
        RunReport {
            target: self.kind,
            path: self.path,
            flows: self.flows.len(),
            load,
            setup_s: self.setup_s,
            idle_core_pct_before: idle,
            idle_ok: ok,
            m,
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for (f, r) in self.flows.iter().zip(&self.releases) {
            let _best_effort = f.sock.send(r);
        }
    }
}
