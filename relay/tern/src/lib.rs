//! tern's relay on a host: configuration, the thread-per-core runtime, and the
//! handle that reloads, reports and stops it.
//!
//! Owns: turning a [`Config`] into running workers (one per core, pinned, each
//! with its own SO_REUSEPORT listening sockets, its own `tern_turn::Server`
//! shard, its own relay sockets and counters), the relay-wide quotas and
//! EVEN-PORT reservations, and control of the workers (reload, drain, stats,
//! shutdown) over channels. Must not touch: protocol logic (tern-turn, tern-stun)
//! or socket syscalls (tern-io).
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

pub mod cli;
pub mod config;
mod shared;
mod worker;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel;
use hdrhistogram::Histogram;
use rand::RngCore;
use tern_io::socket::{bind_udp, buffer_sizes, SocketOptions};
use tern_io::{BackendKind, BackendUnavailable, IoStats, Wake};
use tern_turn::policy::PeerPolicy;
use tern_turn::{Credentials, RelayPortRange, ServerConfig, Stats};

pub use config::{Config, ConfigError};

use shared::Shared;
use worker::{Control, Setup, WorkerStats};

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
    /// Validate `config`, bind the listening sockets, start the workers and
    /// return once every worker runs.
    pub fn start(config: Config) -> Result<RelayHandle, StartError> {
        let validated = config.validate()?;
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

        let (listen, mut listeners) = bind_listeners(&config.listen, workers)?;
        let shared = Arc::new(Shared::new(
            config.max_allocations,
            config.max_allocations_per_user,
        ));
        let (credentials, policy) = credentials_and_policy(&config);

        let mut handles = Vec::with_capacity(workers);
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

            let (control_tx, control_rx) = channel::unbounded();
            let (ready_tx, ready_rx) = channel::bounded(1);
            let mut seed = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut seed);
            let setup = Setup {
                index,
                core: (!cores.is_empty()).then(|| cores[index % cores.len()]),
                backend: selection.kind,
                listeners: std::mem::take(&mut listeners[index]),
                server,
                shared: shared.clone(),
                control: control_rx,
                seed,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("tern-worker-{index}"))
                .spawn(move || worker::run(setup, ready_tx));
            let thread = match spawned {
                Ok(t) => t,
                Err(source) => {
                    stop_all(&mut handles);
                    return Err(StartError::Worker { index, source });
                }
            };
            let ready = ready_rx.recv().unwrap_or_else(|_| {
                Err(io::Error::other("worker thread ended before it was ready"))
            });
            match ready {
                Ok(waker) => handles.push(WorkerHandle {
                    control: control_tx,
                    waker,
                    thread: Some(thread),
                }),
                Err(source) => {
                    let _ = thread.join();
                    stop_all(&mut handles);
                    return Err(StartError::Worker { index, source });
                }
            }
        }
        let pinned: Vec<usize> = (0..workers)
            .filter_map(|i| cores.get(i % cores.len().max(1)).map(|c| c.id))
            .collect();
        tracing::info!(
            listen = ?listen,
            workers,
            cores = ?pinned,
            relay_ports = %format_args!("{lo}-{hi}"),
            "relay started"
        );
        Ok(RelayHandle {
            workers: handles,
            listen,
            backend: selection.kind,
            shared,
            config: Mutex::new(config),
        })
    }
}

/// A running relay. Dropping it shuts the relay down.
pub struct RelayHandle {
    workers: Vec<WorkerHandle>,
    listen: Vec<SocketAddr>,
    backend: BackendKind,
    shared: Arc<Shared>,
    /// The configuration in force, to tell which reloaded keys need a restart.
    config: Mutex<Config>,
}

struct WorkerHandle {
    control: channel::Sender<Control>,
    waker: Arc<dyn Wake>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("listen", &self.listen)
            .field("workers", &self.workers.len())
            .field("backend", &self.backend)
            .finish()
    }
}

impl RelayHandle {
    /// The addresses actually bound (port 0 resolved), in `listen` order.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.listen.clone()
    }

    /// How many workers run.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The packet I/O back end in use.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Counters of every worker, merged. Each worker answers between two loop
    /// turns; one that does not answer within 2 s is left out (see
    /// [`StatsSnapshot::workers_reporting`]).
    pub fn stats(&self) -> StatsSnapshot {
        let mut replies = Vec::with_capacity(self.workers.len());
        for w in &self.workers {
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
            workers: self.workers.len(),
            workers_reporting: 0,
            backend: self.backend,
            unroutable: 0,
            stalls: 0,
            loop_turn_ns: None,
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
        let (credentials, policy) = credentials_and_policy(config);
        for w in &self.workers {
            w.send(Control::Reload {
                credentials: credentials.clone(),
                policy: policy.clone(),
            });
        }
        let mut running = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let restart: Vec<&str> = restart_keys(&running, config);
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "changed keys take effect only after a restart");
        }
        running.auth_secret = config.auth_secret.clone();
        running.user = config.user.clone();
        running.allow_peer = config.allow_peer.clone();
        running.deny_peer = config.deny_peer.clone();
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
    pub fn set_draining(&self, draining: bool) {
        for w in &self.workers {
            w.send(Control::Draining(draining));
        }
    }

    /// Stop every worker (freeing allocations, closing sockets) and wait for them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.workers.is_empty() {
            return;
        }
        stop_all(&mut self.workers);
        tracing::info!("relay stopped");
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

impl WorkerHandle {
    /// Queue `msg` and wake the worker. False if the worker is gone.
    fn send(&self, msg: Control) -> bool {
        if self.control.send(msg).is_err() {
            return false;
        }
        if let Err(e) = self.waker.wake() {
            tracing::warn!(error = %e, "could not wake worker");
        }
        true
    }
}

fn stop_all(workers: &mut Vec<WorkerHandle>) {
    for w in workers.iter() {
        w.send(Control::Shutdown);
    }
    for mut w in workers.drain(..) {
        if let Some(t) = w.thread.take() {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
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
    keys
}
