//! tern's relay on a host: configuration, the thread-per-core runtime, and the
//! handle that reloads, reports and stops it.
//!
//! Owns: turning a [`Config`] into running workers (one per core, pinned, each
//! with its own SO_REUSEPORT listening sockets, its own `tern_turn::Server`
//! shard, its own relay sockets and counters), the relay-wide quotas and
//! EVEN-PORT reservations, control of the workers (reload, drain, stats,
//! shutdown) over channels, and the side thread: metrics collected from the
//! workers without locks, the lifecycle and drain, the admin HTTP endpoint
//! (`/metrics`, `/healthz`, `/readyz`, `/load`, `/admin/*`), systemd
//! notifications, and the optional Redis load registry ([`registry`]).
//! Must not touch: protocol logic (tern-turn, tern-stun) or
//! socket syscalls (tern-io).
//!
//! ```no_run
//! let relay = tern::Relay::start(tern::Config::dev_default()).unwrap();
//! println!("listening on {:?}", relay.listen_addrs());
//! relay.shutdown();
//! ```

#![warn(missing_docs)]
// This is the daemon, not a protocol core: it reads the clock and hands `now`
// to the cores, so the workspace ban on Instant::now/SystemTime::now does not apply.
#![allow(clippy::disallowed_methods)]

mod admin;
pub mod cli;
pub mod config;
mod dtls;
mod http;
mod metrics;
pub mod nicstats;
pub mod notify;
pub mod registry;
mod sfu;
mod shared;
mod side;
mod stream;
mod worker;
pub mod xdp;

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel;
use hdrhistogram::Histogram;
use rand::RngCore;
use tern_io::socket::{bind_tcp_listener, bind_udp, buffer_sizes, SocketOptions};
use tern_io::{BackendKind, BackendUnavailable, IoStats};
use tern_turn::policy::PeerPolicy;
use tern_turn::{Credentials, RelayPortRange, ServerConfig, Stats, Transport};

pub use config::{Config, ConfigError};
#[cfg(feature = "dtls")]
pub use dtls::DtlsError;
pub use dtls::{DtlsDrop, DtlsStats};
use nicstats::NicSelection;
pub use notify::Notifier;
pub use side::{DrainCause, Lifecycle, UndrainError};
pub use stream::tls::TlsError;
pub use stream::{CloseReason, StreamStats};

use metrics::{Report, Reporter};
use shared::Shared;
use side::{Side, SideConfig, WorkerLink};
use worker::{Control, Setup, WorkerStats};

/// The optional cargo features this tern was built with, by name: `xdp`
/// (the XDP pre-filter and the AF_XDP back end) and `dtls` (TURN over DTLS,
/// OpenSSL). Tests use it to build the `tern` binary the same way and to
/// know whether a transport can run.
pub const FEATURES: &[&str] = &[
    #[cfg(feature = "xdp")]
    "xdp",
    #[cfg(feature = "dtls")]
    "dtls",
];

/// How long [`RelayHandle::stats`] waits for each worker's answer.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// The relay: start it with [`Relay::start`].
#[derive(Debug)]
pub struct Relay;

/// Why the relay did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// The requested I/O back end cannot run here.
    #[error("io-backend: {0}")]
    Backend(#[from] BackendUnavailable),
    /// A listening socket could not be bound.
    #[error("listen: cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The kernel's answer.
        source: io::Error,
    },
    /// The TLS certificate or key of `listen-tls` could not be loaded.
    #[error("tls-cert/tls-key: {0}")]
    Tls(#[from] TlsError),
    /// The certificate or key could not be loaded for `listen-dtls`.
    #[cfg(feature = "dtls")]
    #[error("tls-cert/tls-key (DTLS): {0}")]
    Dtls(#[from] DtlsError),
    /// The admin endpoint could not be bound.
    #[error("admin: cannot bind {addr}: {source}")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// The kernel's answer.
        source: io::Error,
    },
    /// A forced XDP mode (`xdp = "native"` or `"generic"`) cannot run.
    #[error("xdp: {0}")]
    Xdp(#[from] xdp::XdpError),
    /// A worker could not be started.
    #[error("worker {index}: {source}")]
    Worker {
        /// Which worker.
        index: usize,
        /// Why.
        source: io::Error,
    },
}

impl Relay {
    /// Validate `config`, bind the listening sockets and the admin endpoint,
    /// start the workers and the side thread, and return once every worker runs.
    pub fn start(config: Config) -> Result<RelayHandle, StartError> {
        Relay::start_notifying(config, None)
    }

    /// [`Relay::start`], telling systemd through `notifier` (see
    /// [`Notifier::from_env`]): `READY=1` once every socket is bound, `STATUS=`
    /// lines, `WATCHDOG=1` while every worker makes progress, `STOPPING=1`.
    pub fn start_notifying(
        config: Config,
        notifier: Option<Notifier>,
    ) -> Result<RelayHandle, StartError> {
        let validated = config.validate()?;
        if validated.registry.is_none()
            && (!config.region.is_empty()
                || config.node.is_some()
                || config.registry_ttl.is_some()
                || config.registry_interval != config::DEFAULT_REGISTRY_INTERVAL)
        {
            tracing::warn!(
                "region, node or registry-* set without registry-url: the registry is off"
            );
        }
        if config.user.is_empty() && config.auth_secret.is_empty() {
            tracing::warn!("no user and no auth-secret: every Allocate will be refused");
        }
        let selection = tern_io::select_backend(config.io_backend.requested())?;
        tracing::info!(backend = %selection.kind, reason = %selection.reason, "packet I/O back end");

        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let wanted = match config.workers {
            0 => cores.len().max(1),
            n => n,
        };
        // AF_XDP: one worker per receive queue of the one interface.
        let mut af_xdp = match selection.kind {
            BackendKind::Xdp => {
                let relay_ips: Vec<std::net::IpAddr> = [
                    validated.relay.v4.map(|a| std::net::IpAddr::V4(a.bind)),
                    validated.relay.v6.map(|a| std::net::IpAddr::V6(a.bind)),
                ]
                .into_iter()
                .flatten()
                .collect();
                Some(xdp::AfXdpPlan::new(&config, &relay_ips)?)
            }
            _ => None,
        };
        let wanted = match &af_xdp {
            Some(plan) if plan.queues as usize != wanted => {
                tracing::info!(
                    interfaces = ?plan.interfaces,
                    queues = plan.queues,
                    "io-backend xdp: one worker per receive queue"
                );
                wanted.min(plan.queues as usize)
            }
            _ => wanted,
        };
        let (lo, hi) = config.relay_ports;
        let range = RelayPortRange::new(lo, hi).map_err(|e| ConfigError::Invalid {
            key: "relay-ports",
            value: Some(format!("{lo}-{hi}")),
            problem: e.to_string(),
        })?;
        let slices = range.split(wanted);
        if slices.len() < wanted {
            tracing::warn!(
                wanted,
                workers = slices.len(),
                "fewer relay ports than workers; running fewer workers"
            );
        }
        let workers = slices.len();
        if let Some(plan) = af_xdp.as_mut() {
            plan.slices = slices.iter().map(|s| (s.lo(), s.hi())).collect();
        }

        let (listen, mut listeners) = bind_listeners(&config.listen, workers)?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) if !config.listen_tls.is_empty() => {
                Some(stream::tls::load(cert, key)?)
            }
            _ => None,
        };
        let (listen_tcp, mut tcp_listeners) =
            bind_stream_listeners(&config.listen_tcp, Transport::Tcp, workers)?;
        let (listen_tls, tls_listeners) =
            bind_stream_listeners(&config.listen_tls, Transport::Tls, workers)?;
        for (all, more) in tcp_listeners.iter_mut().zip(tls_listeners) {
            all.extend(more);
        }
        // One cookie secret for every worker: a client's retried ClientHello
        // verifies whichever worker the kernel hands it to.
        #[cfg(feature = "dtls")]
        let (dtls_secret, dtls_config, listen_dtls, mut dtls_listeners) = {
            let mut dtls_secret = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut dtls_secret);
            let dtls_context = match (&config.tls_cert, &config.tls_key) {
                (Some(cert), Some(key)) if !config.listen_dtls.is_empty() => {
                    Some(dtls::ossl::load(cert, key, dtls_secret)?)
                }
                _ => None,
            };
            let (listen_dtls, dtls_listeners) = bind_listeners(&config.listen_dtls, workers)?;
            let dtls_config = dtls_context.map(|context| dtls::DtlsConfig {
                idle_timeout: Duration::from_secs(config.stream_idle_timeout),
                handshake_timeout: Duration::from_secs(config.tls_handshake_timeout),
                context,
            });
            (dtls_secret, dtls_config, listen_dtls, dtls_listeners)
        };
        // `validate` refused `listen-dtls`: nothing to bind.
        #[cfg(not(feature = "dtls"))]
        let listen_dtls = Vec::new();
        let stream_config = stream::StreamConfig {
            idle_timeout: Duration::from_secs(config.stream_idle_timeout),
            handshake_timeout: Duration::from_secs(config.tls_handshake_timeout),
            tls,
        };
        let admin_listener = bind_admin(config.admin)?;
        let xdp = Arc::new(xdp::Xdp::start(&config, &listen, af_xdp.as_ref())?);
        let shared = Arc::new(
            Shared::new(config.max_allocations, config.max_allocations_per_user)
                .with_connection_limits(config.max_connections, config.max_connections_per_source),
        );
        let (credentials, policy) = credentials_and_policy(&config);
        let sfu_slices = sfu_slices(&config, &listen, workers)?;

        // RFC 6062: a data connection may land on any worker; it is handed to
        // the one owning its peer connection over these queues.
        let (handoff_tx, mut handoff_rx): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| channel::bounded::<stream::Handoff>(256))
            .map(|(tx, rx)| (tx, Some(rx)))
            .unzip();
        let mut wakers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        let mut links = Vec::with_capacity(workers);
        let mut recycle = Vec::with_capacity(workers);
        // One report per worker circulates: worker → `reports` → side thread →
        // the worker's recycle channel → worker.
        let (report_tx, reports) = channel::bounded(workers.max(1));
        for (index, slice) in slices.into_iter().enumerate() {
            let mut server = ServerConfig::new(config.realm.clone(), validated.relay, slice);
            server.software = (!config.software.is_empty()).then(|| config.software.clone());
            server.credentials = credentials.clone();
            server.peer_policy = policy.clone();
            // The relay-wide cap is enforced across shards by Host::acquire_allocation.
            server.max_allocations = 0;
            server.bandwidth_per_allocation = config.bandwidth_per_allocation;
            server.strict_channel_range = config.strict_channel_range;
            server.default_lifetime = Duration::from_secs(config.default_lifetime);
            server.max_lifetime = Duration::from_secs(config.max_lifetime);
            server.nonce_lifetime = Duration::from_secs(config.nonce_lifetime);
            server.alternate_server = config.alternate_server;
            server.tcp_relay = config.tcp_relay;
            server.shard = index as u8;

            let (control_tx, control_rx) = channel::unbounded();
            let (ready_tx, ready_rx) = channel::bounded(1);
            let (recycle_tx, recycle_rx) = channel::bounded(1);
            // A fresh channel of capacity 1: cannot fail.
            let _ = recycle_tx.try_send(Report::new(index));
            let mut seed = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut seed);
            let setup = Setup {
                index,
                core: (!cores.is_empty()).then(|| cores[index % cores.len()]),
                backend: selection.kind,
                uring_min_wait_us: config.uring_min_wait_us,
                listeners: std::mem::take(&mut listeners[index]),
                stream_listeners: std::mem::take(&mut tcp_listeners[index]),
                stream_config: stream_config.clone(),
                #[cfg(feature = "dtls")]
                dtls_listeners: std::mem::take(&mut dtls_listeners[index]),
                #[cfg(feature = "dtls")]
                dtls_config: dtls_config.clone(),
                handoffs: (
                    handoff_rx[index]
                        .take()
                        .unwrap_or_else(|| channel::bounded(1).1),
                    workers,
                ),
                server,
                shared: shared.clone(),
                control: control_rx,
                reporter: Reporter::new(report_tx.clone(), recycle_rx),
                seed,
                xsk: af_xdp.as_ref().map(|plan| xdp::XskSetup {
                    interfaces: plan.interfaces.clone(),
                    verify_checksums: config.xdp_verify_checksums,
                    queue: index as u32,
                    xdp: xdp.clone(),
                }),
                sfu: sfu_slices.get(index).cloned(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("tern-worker-{index}"))
                .spawn(move || worker::run(setup, ready_tx));
            let thread = match spawned {
                Ok(t) => t,
                Err(source) => {
                    stop_all(&links, &mut handles);
                    return Err(StartError::Worker { index, source });
                }
            };
            let ready = ready_rx.recv().unwrap_or_else(|_| {
                Err(io::Error::other("worker thread ended before it was ready"))
            });
            match ready {
                Ok(waker) => {
                    wakers.push(waker.clone());
                    links.push(WorkerLink {
                        control: control_tx,
                        waker,
                    });
                    recycle.push(recycle_tx);
                    handles.push(thread);
                }
                Err(source) => {
                    let _ = thread.join();
                    stop_all(&links, &mut handles);
                    return Err(StartError::Worker { index, source });
                }
            }
        }
        shared.set_handoffs(handoff_tx.into_iter().zip(wakers).collect());
        let pinned: Vec<usize> = (0..workers)
            .filter_map(|i| cores.get(i % cores.len().max(1)).map(|c| c.id))
            .collect();
        drop(report_tx);
        let (registry_wake, registry_woken) = channel::bounded::<()>(1);
        let registry = validated.registry;
        let side = Arc::new(Side::new(
            links,
            selection.kind,
            SideConfig {
                capacity: config.max_allocations,
                drain_timeout: Duration::from_secs(config.drain_timeout),
                alternate_server: config.alternate_server,
                admin_token: config.admin_token.clone(),
                backend_reason: selection.reason.clone(),
                registry_wake: registry.is_some().then_some(registry_wake),
            },
            notifier,
        ));
        if config.sfu {
            let _set_once_here = side.sfu.set(sfu::api::Directory::new(workers));
            tracing::info!(
                sfu_ports = %format_args!("{}-{}", config.sfu_ports.0, config.sfu_ports.1),
                sfu_ip = %sfu_slices.first().map_or_else(String::new, |s| s.ip.to_string()),
                "SFU forwarding plane on; control API under /sfu on the admin endpoint"
            );
        }
        let config_nic = (
            config.nic_stats.clone(),
            Duration::from_secs(config.nic_stats_interval),
        );
        // A fresh OnceLock: cannot be set already.
        let _ = side.xdp.set(xdp);
        let mut relay = RelayHandle {
            workers: handles,
            side_threads: Vec::new(),
            side_stop: None,
            admin_stop: Arc::new(AtomicBool::new(false)),
            admin_addr: None,
            listen,
            listen_tcp,
            listen_tls,
            listen_dtls,
            #[cfg(feature = "dtls")]
            dtls_secret,
            backend: selection.kind,
            shared,
            side: side.clone(),
            config: Mutex::new(config),
        };
        let (stop_tx, stop_rx) = channel::bounded::<()>(0);
        relay.side_stop = Some(stop_tx);
        if let Some(registry) = registry {
            let side = side.clone();
            let stop = stop_rx.clone();
            let spawned = std::thread::Builder::new()
                .name("tern-registry".to_owned())
                .spawn(move || registry::run(side, registry, registry_woken, stop));
            match spawned {
                Ok(t) => relay.side_threads.push(t),
                Err(source) => {
                    return Err(StartError::Worker {
                        index: workers,
                        source,
                    })
                }
            }
        }
        if config_nic.0 != NicSelection::Off {
            let stats = side.nic.clone();
            let stop = stop_rx.clone();
            let (selection, every) = config_nic;
            let spawned = std::thread::Builder::new()
                .name("tern-nicstats".to_owned())
                .spawn(move || nicstats::run(stats, selection, every, stop));
            match spawned {
                Ok(t) => relay.side_threads.push(t),
                Err(source) => {
                    return Err(StartError::Worker {
                        index: workers,
                        source,
                    })
                }
            }
        }
        let collector = {
            let side = side.clone();
            std::thread::Builder::new()
                .name("tern-side".to_owned())
                .spawn(move || side::collect(side, reports, recycle, stop_rx))
        };
        match collector {
            Ok(t) => relay.side_threads.push(t),
            Err(source) => {
                return Err(StartError::Worker {
                    index: workers,
                    source,
                })
            }
        }
        if let Some(listener) = admin_listener {
            relay.admin_addr = listener.local_addr().ok();
            let stop = relay.admin_stop.clone();
            let side = side.clone();
            let spawned = std::thread::Builder::new()
                .name("tern-admin".to_owned())
                .spawn(move || admin::serve(side, listener, stop));
            match spawned {
                Ok(t) => relay.side_threads.push(t),
                Err(source) => {
                    return Err(StartError::Worker {
                        index: workers,
                        source,
                    })
                }
            }
        }
        tracing::info!(
            listen = ?relay.listen,
            listen_tcp = ?relay.listen_tcp,
            listen_tls = ?relay.listen_tls,
            listen_dtls = ?relay.listen_dtls,
            workers,
            cores = ?pinned,
            relay_ports = %format_args!("{lo}-{hi}"),
            admin = %relay.admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            "relay started"
        );
        side.notify("READY=1\nSTATUS=starting");
        Ok(relay)
    }
}

/// A running relay. Dropping it shuts the relay down.
pub struct RelayHandle {
    workers: Vec<JoinHandle<()>>,
    /// The collector and the admin acceptor.
    side_threads: Vec<JoinHandle<()>>,
    /// Dropped to end the collector.
    side_stop: Option<channel::Sender<()>>,
    admin_stop: Arc<AtomicBool>,
    admin_addr: Option<SocketAddr>,
    listen: Vec<SocketAddr>,
    listen_tcp: Vec<SocketAddr>,
    listen_tls: Vec<SocketAddr>,
    listen_dtls: Vec<SocketAddr>,
    /// The DTLS cookie secret, kept across certificate reloads.
    #[cfg(feature = "dtls")]
    dtls_secret: [u8; 32],
    backend: BackendKind,
    shared: Arc<Shared>,
    side: Arc<Side>,
    /// The configuration in force, to tell which reloaded keys need a restart.
    config: Mutex<Config>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("listen", &self.listen)
            .field("workers", &self.side.links.len())
            .field("admin", &self.admin_addr)
            .field("backend", &self.backend)
            .finish()
    }
}

impl RelayHandle {
    /// The addresses actually bound (port 0 resolved), in `listen` order.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen.clone()
    }

    /// The TCP addresses actually bound (port 0 resolved), in `listen-tcp` order.
    pub fn listen_tcp_addrs(&self) -> Vec<SocketAddr> {
        self.listen_tcp.clone()
    }

    /// The TLS addresses actually bound (port 0 resolved), in `listen-tls` order.
    pub fn listen_tls_addrs(&self) -> Vec<SocketAddr> {
        self.listen_tls.clone()
    }

    /// The DTLS addresses actually bound (port 0 resolved), in `listen-dtls` order.
    pub fn listen_dtls_addrs(&self) -> Vec<SocketAddr> {
        self.listen_dtls.clone()
    }

    /// How many workers run.
    pub fn workers(&self) -> usize {
        self.side.links.len()
    }

    /// The admin endpoint's address (port 0 resolved), or `None` when it is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Where the relay is in its life; [`Lifecycle::Drained`] means the owner
    /// should call [`RelayHandle::shutdown`].
    pub fn lifecycle(&self) -> Lifecycle {
        self.side.lifecycle()
    }

    /// Refuse new allocations (300 Try Alternate when `alternate-server` is
    /// set, 403 otherwise) while live ones run on; once none is left, or
    /// `drain-timeout` has passed, the lifecycle becomes
    /// [`Lifecycle::Drained`]. `/readyz` answers 503 from now on. A
    /// [`DrainCause::Stop`] drain is final and tells systemd `STOPPING=1`.
    pub fn drain(&self, cause: DrainCause) {
        self.side.drain(cause);
    }

    /// Cancel a [`DrainCause::Admin`] drain that is not over yet.
    pub fn undrain(&self) -> Result<(), UndrainError> {
        self.side.undrain()
    }

    fn config(&self) -> std::sync::MutexGuard<'_, Config> {
        self.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The packet I/O back end in use.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Counters of every worker, merged. Each worker answers between two loop
    /// turns; one that does not answer within 2 s is left out (see
    /// [`StatsSnapshot::workers_reporting`]).
    pub fn stats(&self) -> StatsSnapshot {
        let mut replies = Vec::with_capacity(self.side.links.len());
        for w in &self.side.links {
            let (tx, rx) = channel::bounded(1);
            if w.send(Control::Stats(tx)) {
                replies.push(rx);
            }
        }
        let mut snap = StatsSnapshot {
            turn: Stats::default(),
            io: IoStats::default(),
            allocations: 0,
            quota_allocations: self.shared.total(),
            workers: self.side.links.len(),
            workers_reporting: 0,
            backend: self.backend,
            unroutable: 0,
            stalls: 0,
            loop_turn_ns: None,
            streams: StreamStats::default(),
            connections: self.shared.connections(),
        };
        for rx in replies {
            let Ok(w) = rx.recv_timeout(STATS_TIMEOUT) else {
                continue;
            };
            snap.add(w);
        }
        snap
    }

    /// Apply what can change without a restart: users, REST secrets, realm-less
    /// credentials and the peer policy (allow-peer, deny-peer). Live
    /// allocations are untouched. Other keys that differ from the running
    /// configuration are logged as needing a restart.
    pub fn reload(&self, config: &Config) -> Result<(), ConfigError> {
        config.validate_credentials()?;
        // The certificate is re-read when the relay serves TLS; live
        // connections keep the session they have, new ones get the new pair.
        // A pair that does not load is logged and the old one stays.
        let tls = match (
            &config.tls_cert,
            &config.tls_key,
            self.listen_tls.is_empty(),
        ) {
            (Some(cert), Some(key), false) => match stream::tls::load(cert, key) {
                Ok(tls) => Some(tls),
                Err(e) => {
                    tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays");
                    None
                }
            },
            _ => None,
        };
        // The same for DTLS: live associations keep their session.
        #[cfg(feature = "dtls")]
        let dtls = match (
            &config.tls_cert,
            &config.tls_key,
            self.listen_dtls.is_empty(),
        ) {
            (Some(cert), Some(key), false) => match dtls::ossl::load(cert, key, self.dtls_secret) {
                Ok(ctx) => Some(ctx),
                Err(e) => {
                    tracing::error!(error = %e, "DTLS certificate not reloaded; the previous one stays");
                    None
                }
            },
            _ => None,
        };
        #[cfg(not(feature = "dtls"))]
        let dtls: Option<std::convert::Infallible> = None;
        let (credentials, policy) = credentials_and_policy(config);
        self.side.set_admin_token(config.admin_token.clone());
        for w in &self.side.links {
            w.send(Control::Reload {
                credentials: credentials.clone(),
                policy: policy.clone(),
            });
            if let Some(tls) = &tls {
                w.send(Control::Tls(tls.clone()));
            }
            #[cfg(feature = "dtls")]
            if let Some(ctx) = &dtls {
                w.send(Control::Dtls(ctx.clone()));
            }
        }
        if tls.is_some() {
            tracing::info!("reloaded the TLS certificate and key");
        }
        if dtls.is_some() {
            tracing::info!("reloaded the DTLS certificate and key");
        }
        let mut running = self.config();
        let restart: Vec<&str> = restart_keys(&running, config);
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "changed keys take effect only after a restart");
        }
        running.auth_secret = config.auth_secret.clone();
        running.user = config.user.clone();
        running.allow_peer = config.allow_peer.clone();
        running.deny_peer = config.deny_peer.clone();
        running.admin_token = config.admin_token.clone();
        if tls.is_some() || dtls.is_some() {
            running.tls_cert.clone_from(&config.tls_cert);
            running.tls_key.clone_from(&config.tls_key);
        }
        if let Some(x) = self.side.xdp.get() {
            x.reconfigure(config);
        }
        running.xdp_unauth_rate = config.xdp_unauth_rate;
        running.xdp_unauth_burst = config.xdp_unauth_burst;
        tracing::info!(
            users = config.user.len(),
            secrets = config.auth_secret.len(),
            allow_peer = config.allow_peer.len(),
            deny_peer = config.deny_peer.len(),
            "reloaded credentials and peer policy"
        );
        Ok(())
    }

    /// Refuse new allocations (300 Try Alternate when `alternate-server` is
    /// set, 403 otherwise) while existing ones run on; `false` resumes.
    /// The same as [`RelayHandle::drain`] with [`DrainCause::Admin`] and
    /// [`RelayHandle::undrain`] (whose refusal is logged).
    pub fn set_draining(&self, draining: bool) {
        if draining {
            self.drain(DrainCause::Admin);
        } else if let Err(e) = self.undrain() {
            tracing::warn!("cannot resume: {e}");
        }
    }

    /// Stop every worker (freeing allocations, closing sockets), the admin
    /// endpoint and the side thread, and wait for them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        self.side.shutting_down();
        self.admin_stop.store(true, Ordering::Relaxed);
        stop_all(&self.side.links, &mut self.workers);
        if let Some(x) = self.side.xdp.get() {
            x.detach();
        }
        self.side_stop = None;
        for t in self.side_threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a side thread panicked");
            }
        }
        tracing::info!("relay stopped");
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stop_all(links: &[WorkerLink], threads: &mut Vec<JoinHandle<()>>) {
    for w in links {
        w.send(Control::Shutdown);
    }
    for t in threads.drain(..) {
        if t.join().is_err() {
            tracing::error!("a worker thread panicked");
        }
    }
}

/// Bind the admin endpoint. The default address being taken (another relay
/// or a test on this host) is logged and the relay runs without one; an
/// address set explicitly must bind.
fn bind_admin(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, StartError> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    match TcpListener::bind(addr) {
        Ok(l) => Ok(Some(l)),
        Err(e) if addr == config::DEFAULT_ADMIN && e.kind() == io::ErrorKind::AddrInUse => {
            tracing::warn!(
                %addr,
                "the default admin address is taken; running without /metrics, /readyz and /admin \
                 (set admin to a free ADDR:PORT, or \"off\")"
            );
            Ok(None)
        }
        Err(source) => Err(StartError::Admin { addr, source }),
    }
}

/// Counters of the whole relay at one moment: every worker's `tern_turn::Stats`
/// merged, the I/O layer's counters merged, and the loop-turn histogram.
///
/// Derefs to the merged [`Stats`], so `snapshot.packets_to_peer` and
/// `snapshot.drops(reason)` read the protocol counters directly.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// The TURN cores' counters, merged.
    pub turn: Stats,
    /// The packet I/O counters (including its drops), merged.
    pub io: IoStats,
    /// Live allocations, summed over the workers that answered.
    pub allocations: usize,
    /// Live allocations as counted by the relay-wide quota.
    pub quota_allocations: usize,
    /// Workers running.
    pub workers: usize,
    /// Workers whose counters are included.
    pub workers_reporting: usize,
    /// The packet I/O back end.
    pub backend: BackendKind,
    /// Datagrams dropped because the socket they were to leave from was gone.
    pub unroutable: u64,
    /// Loop turns that took longer than 50 ms.
    pub stalls: u64,
    /// Durations of loop turns in nanoseconds, all workers merged.
    pub loop_turn_ns: Option<Histogram<u64>>,
    /// TCP/TLS client connections, all workers merged.
    pub streams: StreamStats,
    /// TCP/TLS connections counted by the relay-wide limit.
    pub connections: usize,
}

impl StatsSnapshot {
    /// Every datagram dropped anywhere: by the cores (all reasons), by the I/O
    /// layer, and for want of a socket.
    pub fn total_drops(&self) -> u64 {
        self.turn.total_drops() + self.io.drops() + self.unroutable
    }

    fn add(&mut self, w: WorkerStats) {
        self.turn.merge(&w.turn);
        self.io.merge(&w.io);
        self.allocations += w.allocations;
        self.unroutable += w.unroutable;
        self.stalls += w.stalls;
        self.streams.merge(&w.streams);
        self.workers_reporting += 1;
        match &mut self.loop_turn_ns {
            Some(h) => {
                // Same bounds on every worker, so adding cannot fail.
                let _ = h.add(&w.loop_turn_ns);
            }
            None => self.loop_turn_ns = Some(w.loop_turn_ns),
        }
    }
}

impl Deref for StatsSnapshot {
    type Target = Stats;

    fn deref(&self) -> &Stats {
        &self.turn
    }
}

/// Bind every listen address once per worker: the first bind resolves port 0,
/// the others share the resolved address through SO_REUSEPORT.
fn bind_listeners(
    addrs: &[SocketAddr],
    workers: usize,
) -> Result<(Vec<SocketAddr>, Vec<Vec<UdpSocket>>), StartError> {
    let mut per_worker: Vec<Vec<UdpSocket>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let bind = |a: SocketAddr| {
            bind_udp(a, &SocketOptions::LISTENER)
                .map_err(|source| StartError::Bind { addr: a, source })
        };
        let first = bind(addr)?;
        let local = first
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        if let Ok(sizes) = buffer_sizes(&first) {
            let asked = SocketOptions::LISTENER;
            // Linux reports twice the payload size it granted (it counts overhead).
            tracing::info!(
                listen = %local,
                rcvbuf = sizes.recv / 2,
                sndbuf = sizes.send / 2,
                "listening socket buffers granted (payload bytes)"
            );
            // Linux reports twice what was granted for payload (it counts overhead), so
            // anything below twice the wish means the sysctl cap cut it.
            if sizes.recv < 2 * asked.recv_buffer || sizes.send < 2 * asked.send_buffer {
                tracing::info!(
                    asked_rcvbuf = asked.recv_buffer,
                    asked_sndbuf = asked.send_buffer,
                    "kernel granted smaller socket buffers than asked; raise net.core.rmem_max / wmem_max (tuning/)"
                );
            }
        }
        per_worker[0].push(first);
        for sockets in per_worker.iter_mut().skip(1) {
            sockets.push(bind(local)?);
        }
        bound.push(local);
    }
    Ok((bound, per_worker))
}

/// Bind every stream listen address once per worker (SO_REUSEPORT), like
/// [`bind_listeners`] for UDP.
#[allow(clippy::type_complexity)]
fn bind_stream_listeners(
    addrs: &[SocketAddr],
    transport: Transport,
    workers: usize,
) -> Result<(Vec<SocketAddr>, Vec<Vec<(TcpListener, Transport)>>), StartError> {
    /// The kernel caps it at net.core.somaxconn.
    const BACKLOG: i32 = 1024;
    let mut per_worker: Vec<Vec<(TcpListener, Transport)>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let bind = |a: SocketAddr| {
            bind_tcp_listener(a, BACKLOG).map_err(|source| StartError::Bind { addr: a, source })
        };
        let first = bind(addr)?;
        let local = first
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        per_worker[0].push((first, transport));
        for sockets in per_worker.iter_mut().skip(1) {
            sockets.push((bind(local)?, transport));
        }
        bound.push(local);
    }
    Ok((bound, per_worker))
}

/// Each worker's SFU bind address and port slice (empty unless `sfu = true`).
fn sfu_slices(
    config: &Config,
    listen: &[SocketAddr],
    workers: usize,
) -> Result<Vec<sfu::ShardConfig>, StartError> {
    if !config.sfu {
        return Ok(Vec::new());
    }
    let (lo, hi) = config.sfu_ports;
    let range = RelayPortRange::new(lo, hi).map_err(|e| ConfigError::Invalid {
        key: "sfu-ports",
        value: Some(format!("{lo}-{hi}")),
        problem: e.to_string(),
    })?;
    let ip = config
        .sfu_ip
        .or_else(|| listen.first().map(|a| a.ip()))
        .ok_or_else(|| ConfigError::Invalid {
            key: "sfu-ip",
            value: None,
            problem: "needed when there is no UDP listen address".to_owned(),
        })?;
    let slices = range.split(workers);
    if slices.len() < workers {
        return Err(ConfigError::Invalid {
            key: "sfu-ports",
            value: Some(format!("{lo}-{hi}")),
            problem: format!("fewer ports than the {workers} workers"),
        }
        .into());
    }
    Ok(slices
        .into_iter()
        .map(|ports| sfu::ShardConfig { ip, ports })
        .collect())
}

fn credentials_and_policy(config: &Config) -> (Credentials, PeerPolicy) {
    let mut credentials = Credentials::new();
    for (name, password) in &config.user {
        credentials.add_user(name, password);
    }
    for secret in &config.auth_secret {
        credentials.add_rest_secret(secret.as_bytes());
    }
    let mut policy = PeerPolicy::new();
    for &cidr in &config.allow_peer {
        policy.allow(cidr);
    }
    for &cidr in &config.deny_peer {
        policy.deny(cidr);
    }
    (credentials, policy)
}

/// Keys whose change a reload cannot apply.
fn restart_keys(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |changed: bool, key: &'static str| {
        if changed {
            keys.push(key);
        }
    };
    check(running.listen != new.listen, "listen");
    check(running.listen_tcp != new.listen_tcp, "listen-tcp");
    check(running.tcp_relay != new.tcp_relay, "tcp-relay");
    check(running.listen_tls != new.listen_tls, "listen-tls");
    check(running.listen_dtls != new.listen_dtls, "listen-dtls");
    check(
        running.max_connections != new.max_connections,
        "max-connections",
    );
    check(
        running.max_connections_per_source != new.max_connections_per_source,
        "max-connections-per-source",
    );
    check(
        running.stream_idle_timeout != new.stream_idle_timeout,
        "stream-idle-timeout",
    );
    check(
        running.tls_handshake_timeout != new.tls_handshake_timeout,
        "tls-handshake-timeout",
    );
    check(running.relay_ports != new.relay_ports, "relay-ports");
    check(running.relay_ip != new.relay_ip, "relay-ip");
    check(running.realm != new.realm, "realm");
    check(running.external_ip != new.external_ip, "external-ip");
    check(running.workers != new.workers, "workers");
    check(running.log_level != new.log_level, "log-level");
    check(
        running.strict_channel_range != new.strict_channel_range,
        "strict-channel-range",
    );
    check(
        running.max_allocations != new.max_allocations,
        "max-allocations",
    );
    check(
        running.max_allocations_per_user != new.max_allocations_per_user,
        "max-allocations-per-user",
    );
    check(
        running.bandwidth_per_allocation != new.bandwidth_per_allocation,
        "bandwidth-per-allocation",
    );
    check(running.software != new.software, "software");
    check(running.io_backend != new.io_backend, "io-backend");
    check(running.xdp != new.xdp, "xdp");
    check(
        running.xdp_interfaces != new.xdp_interfaces,
        "xdp-interfaces",
    );
    check(
        running.default_lifetime != new.default_lifetime,
        "default-lifetime",
    );
    check(running.max_lifetime != new.max_lifetime, "max-lifetime");
    check(
        running.nonce_lifetime != new.nonce_lifetime,
        "nonce-lifetime",
    );
    check(
        running.alternate_server != new.alternate_server,
        "alternate-server",
    );
    check(running.admin != new.admin, "admin");
    check(running.drain_timeout != new.drain_timeout, "drain-timeout");
    check(running.registry_url != new.registry_url, "registry-url");
    check(running.region != new.region, "region");
    check(running.node != new.node, "node");
    check(
        running.registry_interval != new.registry_interval,
        "registry-interval",
    );
    check(running.registry_ttl != new.registry_ttl, "registry-ttl");
    check(running.nic_stats != new.nic_stats, "nic-stats");
    check(running.sfu != new.sfu, "sfu");
    check(running.sfu_ports != new.sfu_ports, "sfu-ports");
    check(running.sfu_ip != new.sfu_ip, "sfu-ip");
    check(
        running.nic_stats_interval != new.nic_stats_interval,
        "nic-stats-interval",
    );
    keys
}
