//! The relay's configuration: the [`Config`] struct, its TOML form, its
//! validation, and the development default.
//!
//! Keys are kebab-case in TOML and on the command line (`relay-ports`,
//! `--relay-ports`); the struct's fields are the same names in snake_case.
//! Every error names the key and says what is wrong with it, e.g.
//! `relay-ports: "5000-4000": low end above high end`. Unknown keys are
//! errors. This module reads files but starts nothing; [`crate::Relay`]
//! turns a validated configuration into running workers.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rand::RngCore;
use serde::Deserialize;
use tern_turn::policy::Cidr;
use tern_turn::{RelayAddress, RelayAddresses};

pub use crate::nicstats::NicSelection;
use crate::registry::Registry;
pub use crate::registry::RegistryUrl;
pub use crate::xdp::{parse_interface, parse_xdp_mode, XdpMode};

/// Everything the relay is configured with. Field names are the TOML keys
/// (kebab-case there, snake_case here); see `tern --help` for each one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Client-facing UDP addresses (IPv4 and IPv6); port 0 picks a free port.
    pub listen: Vec<SocketAddr>,
    /// Client-facing TCP addresses (TURN over TCP, RFC 8656 §3.1).
    pub listen_tcp: Vec<SocketAddr>,
    /// Client-facing TLS addresses (TURN over TLS, `turns:`; needs `tls-cert` and `tls-key`).
    pub listen_tls: Vec<SocketAddr>,
    /// Client-facing DTLS addresses (TURN over DTLS 1.2 on UDP, RFC 7350;
    /// needs `tls-cert` and `tls-key`, shared with `listen-tls`).
    pub listen_dtls: Vec<SocketAddr>,
    /// PEM certificate chain for `listen-tls`, re-read on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `listen-tls`, re-read on SIGHUP.
    pub tls_key: Option<PathBuf>,
    /// Relay-wide cap on open TCP/TLS connections; 0 means none.
    pub max_connections: usize,
    /// Cap on open TCP/TLS connections from one client IP; 0 means none.
    pub max_connections_per_source: usize,
    /// Seconds a TCP/TLS connection without an allocation may stay silent.
    pub stream_idle_timeout: u64,
    /// Seconds a TLS client has to finish its handshake.
    pub tls_handshake_timeout: u64,
    /// Offer RFC 6062 TCP allocations to TCP/TLS clients (Connect, ConnectionBind).
    pub tcp_relay: bool,
    /// Relay ports, inclusive (`relay-ports = "49152-65535"`).
    pub relay_ports: (u16, u16),
    /// Local addresses relay sockets bind to, at most one per family.
    pub relay_ip: Vec<IpAddr>,
    /// The REALM of long-term credentials.
    pub realm: String,
    /// REST API shared secrets (`use-auth-secret`); the first signs, all verify.
    pub auth_secret: Vec<String>,
    /// Long-term users as (name, password).
    pub user: Vec<(String, String)>,
    /// Peer networks allowed even where the built-in policy denies (e.g. private ranges).
    pub allow_peer: Vec<Cidr>,
    /// Peer networks denied on top of the built-in policy.
    pub deny_peer: Vec<Cidr>,
    /// Public addresses to advertise, with the private one to bind behind 1:1 NAT.
    pub external_ip: Vec<ExternalIp>,
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// A `tracing` filter: `info`, `debug`, `tern=debug,info`...
    pub log_level: String,
    /// Accept only RFC 8656 channel numbers (0x4000-0x4FFF).
    pub strict_channel_range: bool,
    /// Relay-wide cap on live allocations; 0 means none.
    pub max_allocations: usize,
    /// Cap on live allocations per username; 0 means none.
    pub max_allocations_per_user: usize,
    /// Bytes per second each way per allocation; 0 means no cap.
    pub bandwidth_per_allocation: u64,
    /// The SOFTWARE attribute in responses; empty sends none.
    pub software: String,
    /// Which packet I/O back end to run.
    pub io_backend: IoBackend,
    /// io_uring back end: microseconds a busy worker's wait may sleep to
    /// gather a batch (io_uring minimum wait, Linux 6.12+); 0 is off.
    pub uring_min_wait_us: u32,
    /// Allocation lifetime in seconds when the client asks for none (RFC 8656: 600).
    pub default_lifetime: u64,
    /// The longest allocation lifetime granted, in seconds.
    pub max_lifetime: u64,
    /// How long a NONCE stays valid, in seconds.
    pub nonce_lifetime: u64,
    /// Where new clients are sent (300 Try Alternate) while this relay drains.
    pub alternate_server: Option<SocketAddr>,
    /// The admin HTTP endpoint (`/metrics`, `/healthz`, `/readyz`, `/load`,
    /// `/admin/*`); `None` (`admin = "off"`) serves none.
    pub admin: Option<SocketAddr>,
    /// The bearer token `POST /admin/*` requires; without one they are refused.
    pub admin_token: Option<String>,
    /// Seconds a drain waits for live allocations to end before stopping anyway.
    pub drain_timeout: u64,
    /// The Redis load registry; `None` (the default) publishes nothing.
    pub registry_url: Option<RegistryUrl>,
    /// The region part of the registry key `turn:node:{region}:{node}`;
    /// required with `registry-url`.
    pub region: String,
    /// The node part of the registry key; `None` means the host name.
    pub node: Option<String>,
    /// Seconds between two registry publications.
    pub registry_interval: u64,
    /// Seconds each registry entry lives unless refreshed; `None` means
    /// three times `registry-interval`.
    pub registry_ttl: Option<u64>,
    /// Which NICs' allowance counters (`ethtool -S *_allowance_exceeded`,
    /// AWS ENA) `/metrics` exports: `auto`, `off` or interface names.
    pub nic_stats: NicSelection,
    /// Seconds between two readings of the NIC allowance counters.
    pub nic_stats_interval: u64,
    /// The XDP pre-filter: off, auto, native or generic.
    pub xdp: XdpMode,
    /// Interfaces to attach the pre-filter to; empty means those carrying
    /// the listen addresses.
    pub xdp_interfaces: Vec<String>,
    /// Unauthenticated STUN requests per second per source the pre-filter
    /// lets through; 0 means no limit.
    pub xdp_unauth_rate: u32,
    /// How many unauthenticated requests a quiet source may send at once.
    pub xdp_unauth_burst: u32,
    /// `io-backend = "xdp"`: drop received datagrams whose UDP checksum is
    /// wrong (XDP sees frames before the kernel has checked them).
    pub xdp_verify_checksums: bool,
    /// Serve the SFU forwarding plane and its control API (`/sfu/...`).
    pub sfu: bool,
    /// SFU transport ports, inclusive, split into one slice per worker.
    pub sfu_ports: (u16, u16),
    /// Local address SFU transports bind; `None`: the first listen address's IP.
    pub sfu_ip: Option<IpAddr>,
}

/// Where the admin endpoint listens unless `admin` says otherwise.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9641);

/// `registry-interval` unless set, in seconds.
pub const DEFAULT_REGISTRY_INTERVAL: u64 = 5;

/// `sfu-ports` unless set.
pub const DEFAULT_SFU_PORTS: (u16, u16) = (40000, 40999);

/// `nic-stats-interval` unless set, in seconds.
pub const DEFAULT_NIC_STATS_INTERVAL: u64 = 10;

/// Why `listen-dtls` is refused by a tern built without the `dtls` feature
/// (OpenSSL is linked only with it).
const DTLS_NOT_BUILT: &str = "needs a tern built with --features dtls \
     (cargo build --release -p tern --features dtls; OpenSSL's headers: libssl-dev, pkg-config)";

/// A public address to advertise, optionally with the private address it maps
/// to (1:1 NAT, e.g. an EC2 Elastic IP): `PUBLIC[/PRIVATE]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExternalIp {
    /// Put in XOR-RELAYED-ADDRESS.
    pub public: IpAddr,
    /// Bound by relay sockets, when given.
    pub private: Option<IpAddr>,
}

/// Which packet I/O back end runs.
///
/// Adding a back end is one variant here and its name in
/// [`IoBackend::NAMES`]; the probing lives in [`tern_io::select_backend`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IoBackend {
    /// Probe the kernel and take the fastest back end it offers.
    #[default]
    Auto,
    /// The portable `recvmmsg`/`sendmmsg` back end.
    Mmsg,
    /// io_uring (Linux 6.0+); the relay refuses to start when it is unavailable.
    Uring,
    /// AF_XDP: one socket per worker and interface queue, fed by the XDP
    /// pre-filter (attached even when `xdp = "off"`); never chosen by `auto`.
    Xdp,
}

/// A configuration that cannot be used, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not TOML, or names an unknown key.
    #[error("line {line}: {message}")]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// What the TOML parser said.
        message: String,
    },
    /// A key's value is wrong.
    #[error("{key}: {}{problem}", value.as_ref().map(|v| format!("{v:?}: ")).unwrap_or_default())]
    Invalid {
        /// The key, as spelled in TOML.
        key: &'static str,
        /// The offending value (absent for secrets, which are never echoed).
        value: Option<String>,
        /// What is wrong with it.
        problem: String,
    },
}

impl ConfigError {
    fn invalid(key: &'static str, value: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            value: Some(value.into()),
            problem: problem.into(),
        }
    }

    fn problem(key: &'static str, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            value: None,
            problem: problem.into(),
        }
    }

    /// The key at fault, when the error is about one.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

impl Default for Config {
    /// The base every file and flag set starts from: nothing implied (no
    /// listener, no credentials, no peer allowances), RFC lifetimes.
    fn default() -> Self {
        Config {
            listen: Vec::new(),
            listen_tcp: Vec::new(),
            listen_tls: Vec::new(),
            listen_dtls: Vec::new(),
            tls_cert: None,
            tls_key: None,
            max_connections: 10_000,
            max_connections_per_source: 64,
            stream_idle_timeout: 30,
            tls_handshake_timeout: 10,
            tcp_relay: false,
            relay_ports: (49152, 65535),
            relay_ip: Vec::new(),
            realm: String::new(),
            auth_secret: Vec::new(),
            user: Vec::new(),
            allow_peer: Vec::new(),
            deny_peer: Vec::new(),
            external_ip: Vec::new(),
            workers: 0,
            log_level: "info".to_owned(),
            strict_channel_range: false,
            max_allocations: 0,
            max_allocations_per_user: 0,
            bandwidth_per_allocation: 0,
            software: format!("tern {}", env!("CARGO_PKG_VERSION")),
            io_backend: IoBackend::Auto,
            uring_min_wait_us: 0,
            default_lifetime: 600,
            max_lifetime: 3600,
            nonce_lifetime: 600,
            alternate_server: None,
            admin: Some(DEFAULT_ADMIN),
            admin_token: None,
            drain_timeout: 3600,
            registry_url: None,
            region: String::new(),
            node: None,
            registry_interval: DEFAULT_REGISTRY_INTERVAL,
            registry_ttl: None,
            nic_stats: NicSelection::Auto,
            nic_stats_interval: DEFAULT_NIC_STATS_INTERVAL,
            xdp: XdpMode::Off,
            xdp_interfaces: Vec::new(),
            xdp_unauth_rate: crate::xdp::DEFAULT_UNAUTH_RATE,
            xdp_unauth_burst: crate::xdp::DEFAULT_UNAUTH_BURST,
            xdp_verify_checksums: true,
            sfu: false,
            sfu_ports: DEFAULT_SFU_PORTS,
            sfu_ip: None,
        }
    }
}

/// The realm of the development default.
pub const DEV_REALM: &str = "tern.local";
/// The username of the development default's generated user.
pub const DEV_USER: &str = "tern";

impl Config {
    /// The embedded development default: a relay that works on one machine.
    /// Listens on 127.0.0.1:3478 and [::1]:3478, relays on loopback, realm
    /// `tern.local`, a fresh random REST secret and a user `tern` with a fresh
    /// random password, and loopback peers allowed (safe only because every
    /// address it uses is loopback).
    pub fn dev_default() -> Config {
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        // INVARIANT: 8 is a valid IPv4 prefix length (at most 32).
        let loopback_v4 = Cidr::new(v4, 8).expect("valid IPv4 prefix");
        // INVARIANT: 128 is a valid IPv6 prefix length (at most 128).
        let loopback_v6 = Cidr::new(v6, 128).expect("valid IPv6 prefix");
        Config {
            listen: vec![SocketAddr::new(v4, 3478), SocketAddr::new(v6, 3478)],
            relay_ip: vec![v4, v6],
            realm: DEV_REALM.to_owned(),
            auth_secret: vec![random_token(24)],
            user: vec![(DEV_USER.to_owned(), random_token(16))],
            allow_peer: vec![loopback_v4, loopback_v6],
            ..Config::default()
        }
    }

    /// Parse the TOML form, starting from [`Config::default`].
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(s).map_err(|e| syntax_error(s, &e))?;
        let mut config = Config::default();
        raw.apply(&mut config)?;
        Ok(config)
    }

    /// Read and parse a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_str(&text)
    }

    /// Check everything that can be checked without touching the system, and
    /// work out what follows from the settings (relay addresses). Called by
    /// [`crate::Relay::start`] and `tern check-config`.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        if self.listen.is_empty()
            && self.listen_tcp.is_empty()
            && self.listen_tls.is_empty()
            && self.listen_dtls.is_empty()
        {
            return Err(ConfigError::problem("listen", "no address to listen on"));
        }
        if u128::from(self.uring_min_wait_us) > tern_io::MAX_MIN_WAIT.as_micros() {
            return Err(ConfigError::problem(
                "uring-min-wait-us",
                format!(
                    "at most {} (it is added latency)",
                    tern_io::MAX_MIN_WAIT.as_micros()
                ),
            ));
        }
        for (key, list) in [
            ("listen", &self.listen),
            ("listen-tcp", &self.listen_tcp),
            ("listen-tls", &self.listen_tls),
            ("listen-dtls", &self.listen_dtls),
        ] {
            for (i, a) in list.iter().enumerate() {
                if list[..i].contains(a) {
                    return Err(ConfigError::invalid(key, a.to_string(), "listed twice"));
                }
            }
        }
        for a in &self.listen_tls {
            // Port 0 picks a free port for each: no clash.
            if a.port() != 0 && self.listen_tcp.contains(a) {
                return Err(ConfigError::invalid(
                    "listen-tls",
                    a.to_string(),
                    "also in listen-tcp: one TCP port serves one of them",
                ));
            }
        }
        for a in &self.listen_dtls {
            // Port 0 picks a free port for each: no clash.
            if a.port() != 0 && self.listen.contains(a) {
                return Err(ConfigError::invalid(
                    "listen-dtls",
                    a.to_string(),
                    "also in listen: one UDP port serves one of them",
                ));
            }
        }
        if !cfg!(feature = "dtls") && !self.listen_dtls.is_empty() {
            return Err(ConfigError::problem("listen-dtls", DTLS_NOT_BUILT));
        }
        self.validate_tls_files()?;
        if self.tcp_relay && self.listen_tcp.is_empty() && self.listen_tls.is_empty() {
            return Err(ConfigError::problem(
                "tcp-relay",
                "RFC 6062 needs a listen-tcp or listen-tls address",
            ));
        }
        for (key, v) in [
            ("stream-idle-timeout", self.stream_idle_timeout),
            ("tls-handshake-timeout", self.tls_handshake_timeout),
        ] {
            if v == 0 {
                return Err(ConfigError::problem(key, "must be at least 1 second"));
            }
        }
        check_relay_ports(self.relay_ports)
            .map_err(|p| ConfigError::invalid("relay-ports", fmt_ports(self.relay_ports), p))?;
        check_relay_ports(self.sfu_ports)
            .map_err(|p| ConfigError::invalid("sfu-ports", fmt_ports(self.sfu_ports), p))?;
        if self.sfu {
            let (lo, hi) = self.sfu_ports;
            let (rlo, rhi) = self.relay_ports;
            if lo <= rhi && rlo <= hi {
                return Err(ConfigError::invalid(
                    "sfu-ports",
                    fmt_ports(self.sfu_ports),
                    "overlaps relay-ports",
                ));
            }
        }
        if self.realm.is_empty() {
            return Err(ConfigError::problem("realm", "must not be empty"));
        }
        self.validate_credentials()?;
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|e| {
            ConfigError::invalid("log-level", self.log_level.clone(), e.to_string())
        })?;
        if self.default_lifetime == 0 {
            return Err(ConfigError::problem(
                "default-lifetime",
                "must be at least 1 second",
            ));
        }
        if self.max_lifetime < self.default_lifetime {
            return Err(ConfigError::invalid(
                "max-lifetime",
                self.max_lifetime.to_string(),
                format!("below default-lifetime ({})", self.default_lifetime),
            ));
        }
        if self.nonce_lifetime == 0 {
            return Err(ConfigError::problem(
                "nonce-lifetime",
                "must be at least 1 second",
            ));
        }
        if self.drain_timeout == 0 {
            return Err(ConfigError::problem(
                "drain-timeout",
                "must be at least 1 second",
            ));
        }
        if self.nic_stats_interval == 0 {
            return Err(ConfigError::problem(
                "nic-stats-interval",
                "must be at least 1 second",
            ));
        }
        if self.xdp_unauth_rate > 0 && self.xdp_unauth_burst == 0 {
            return Err(ConfigError::problem(
                "xdp-unauth-burst",
                "must be at least 1 when xdp-unauth-rate is set",
            ));
        }
        let relay = self.relay_addresses()?;
        let registry = self.registry()?;
        Ok(Validated { relay, registry })
    }

    /// The registry settings, or `None` when `registry-url` is unset: the
    /// key `turn:node:{region}:{node}` (node defaulting to the host name),
    /// the interval and the TTL (defaulting to three intervals).
    pub fn registry(&self) -> Result<Option<Registry>, ConfigError> {
        if let Some(node) = &self.node {
            check_key_part(node).map_err(|p| ConfigError::invalid("node", node.clone(), p))?;
        }
        if !self.region.is_empty() {
            check_key_part(&self.region)
                .map_err(|p| ConfigError::invalid("region", self.region.clone(), p))?;
        }
        if self.registry_interval == 0 {
            return Err(ConfigError::problem(
                "registry-interval",
                "must be at least 1 second",
            ));
        }
        let ttl = match self.registry_ttl {
            Some(ttl) if ttl <= self.registry_interval => {
                return Err(ConfigError::invalid(
                    "registry-ttl",
                    ttl.to_string(),
                    format!(
                        "must exceed registry-interval ({} s), or the entry lapses between updates",
                        self.registry_interval
                    ),
                ))
            }
            Some(ttl) => ttl,
            None => self.registry_interval.saturating_mul(3),
        };
        let Some(url) = &self.registry_url else {
            return Ok(None);
        };
        if self.region.is_empty() {
            return Err(ConfigError::problem(
                "region",
                "required with registry-url (the key is turn:node:{region}:{node})",
            ));
        }
        let node = match &self.node {
            Some(n) => n.clone(),
            None => {
                let host = nix::unistd::gethostname().map_err(|e| {
                    ConfigError::problem(
                        "node",
                        format!("cannot read the host name ({e}); set node"),
                    )
                })?;
                let host = host.to_string_lossy().into_owned();
                check_key_part(&host).map_err(|p| {
                    ConfigError::invalid(
                        "node",
                        host.clone(),
                        format!("the host name: {p}; set node"),
                    )
                })?;
                host
            }
        };
        Ok(Some(Registry {
            url: url.clone(),
            key: format!("turn:node:{}:{node}", self.region),
            interval: Duration::from_secs(self.registry_interval),
            ttl: Duration::from_secs(ttl),
        }))
    }

    /// `tls-cert` and `tls-key` go together, and with `listen-tls` or `listen-dtls`.
    pub(crate) fn validate_tls_files(&self) -> Result<(), ConfigError> {
        let none = self.listen_tls.is_empty() && self.listen_dtls.is_empty();
        match (&self.tls_cert, &self.tls_key, none) {
            (Some(_), Some(_), false) | (None, None, true) => Ok(()),
            (_, _, false) => Err(ConfigError::problem(
                if self.listen_tls.is_empty() {
                    "listen-dtls"
                } else {
                    "listen-tls"
                },
                "needs both tls-cert and tls-key",
            )),
            (Some(_), _, true) | (_, Some(_), true) => Err(ConfigError::problem(
                "tls-cert",
                "tls-cert and tls-key are set but there is no listen-tls or listen-dtls address",
            )),
        }
    }

    /// Check what [`crate::RelayHandle::reload`] applies: secrets and users.
    pub(crate) fn validate_credentials(&self) -> Result<(), ConfigError> {
        for s in &self.auth_secret {
            if s.is_empty() {
                return Err(ConfigError::problem(
                    "auth-secret",
                    "a secret must not be empty",
                ));
            }
        }
        for (name, password) in &self.user {
            check_user(name, password).map_err(|p| ConfigError::problem("user", p))?;
        }
        if let Some(token) = &self.admin_token {
            check_admin_token(token).map_err(|p| ConfigError::problem("admin-token", p))?;
        }
        Ok(())
    }

    /// Relay addresses per family: bind = `relay-ip`, else the PRIVATE part of
    /// `external-ip`, else the family's listen address if it is not a
    /// wildcard; advertised = the PUBLIC part of `external-ip`, else bind.
    fn relay_addresses(&self) -> Result<RelayAddresses, ConfigError> {
        let relay_v4 = one_per_family("relay-ip", self.relay_ip.iter().copied(), true)?;
        let relay_v6 = one_per_family("relay-ip", self.relay_ip.iter().copied(), false)?;
        let ext_v4 = one_per_family_ext(&self.external_ip, true)?;
        let ext_v6 = one_per_family_ext(&self.external_ip, false)?;
        let listen_ip = |v4: bool| {
            self.listen
                .iter()
                .chain(&self.listen_tcp)
                .chain(&self.listen_tls)
                .chain(&self.listen_dtls)
                .map(|a| a.ip())
                .find(|ip| ip.is_ipv4() == v4 && !ip.is_unspecified())
        };
        let resolve = |v4: bool| -> Result<Option<(IpAddr, IpAddr)>, ConfigError> {
            let (relay, ext) = if v4 {
                (relay_v4, ext_v4)
            } else {
                (relay_v6, ext_v6)
            };
            let bind = relay
                .or(ext.and_then(|e| e.private))
                .or_else(|| listen_ip(v4));
            match bind {
                Some(ip) if ip.is_unspecified() => Err(ConfigError::invalid(
                    "relay-ip",
                    ip.to_string(),
                    "a relay address cannot be a wildcard",
                )),
                Some(bind) => Ok(Some((bind, ext.map(|e| e.public).unwrap_or(bind)))),
                None => {
                    let family = if v4 { "IPv4" } else { "IPv6" };
                    let listens = self.listen.iter().any(|a| a.is_ipv4() == v4);
                    if listens || ext.is_some() {
                        Err(ConfigError::problem(
                            "relay-ip",
                            format!(
                                "no {family} relay address: set relay-ip, external-ip \
                                 PUBLIC/PRIVATE, or listen on a specific (not wildcard) \
                                 {family} address"
                            ),
                        ))
                    } else {
                        Ok(None)
                    }
                }
            }
        };
        let v4 = resolve(true)?.map(|(bind, adv)| RelayAddress {
            bind: as_v4(bind),
            advertised: as_v4(adv),
        });
        let v6 = resolve(false)?.map(|(bind, adv)| RelayAddress {
            bind: as_v6(bind),
            advertised: as_v6(adv),
        });
        Ok(RelayAddresses { v4, v6 })
    }

    /// A one-line description for logs and `check-config`.
    pub fn summary(&self, validated: &Validated) -> String {
        let mut listen: Vec<String> = self.listen.iter().map(ToString::to_string).collect();
        listen.extend(self.listen_tcp.iter().map(|a| format!("tcp {a}")));
        listen.extend(self.listen_tls.iter().map(|a| format!("tls {a}")));
        listen.extend(self.listen_dtls.iter().map(|a| format!("dtls {a}")));
        let mut relay = Vec::new();
        if let Some(a) = validated.relay.v4 {
            relay.push(relay_text(IpAddr::V4(a.bind), IpAddr::V4(a.advertised)));
        }
        if let Some(a) = validated.relay.v6 {
            relay.push(relay_text(IpAddr::V6(a.bind), IpAddr::V6(a.advertised)));
        }
        let workers = if self.workers == 0 {
            "one per core".to_owned()
        } else {
            self.workers.to_string()
        };
        let admin = match self.admin {
            Some(a) => a.to_string(),
            None => "off".to_owned(),
        };
        let registry = match &validated.registry {
            Some(r) => format!(
                "{} as {} every {} s, ttl {} s",
                r.url,
                r.key,
                r.interval.as_secs(),
                r.ttl.as_secs()
            ),
            None => "off".to_owned(),
        };
        format!(
            "listen {}; relay {} ports {}; realm {:?}; {} user(s), {} secret(s); \
             {} allow-peer, {} deny-peer; workers {}; io-backend {}; admin {}; registry {}; \
             nic-stats {}",
            listen.join(", "),
            relay.join(", "),
            fmt_ports(self.relay_ports),
            self.realm,
            self.user.len(),
            self.auth_secret.len(),
            self.allow_peer.len(),
            self.deny_peer.len(),
            workers,
            self.io_backend,
            admin,
            registry,
            self.nic_stats,
        )
    }
}

/// What [`Config::validate`] worked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validated {
    /// Relay addresses per family (bind and advertised).
    pub relay: RelayAddresses,
    /// The load registry, when `registry-url` is set.
    pub registry: Option<Registry>,
}

impl IoBackend {
    /// Every back end name accepted by `io-backend`, in variant order.
    pub const NAMES: &'static [&'static str] = &["auto", "mmsg", "uring", "xdp"];

    /// The back end to insist on, or `None` to let [`tern_io::select_backend`] probe.
    pub fn requested(self) -> Option<tern_io::BackendKind> {
        match self {
            IoBackend::Auto => None,
            IoBackend::Mmsg => Some(tern_io::BackendKind::Mmsg),
            IoBackend::Uring => Some(tern_io::BackendKind::Uring),
            IoBackend::Xdp => Some(tern_io::BackendKind::Xdp),
        }
    }

    /// The name in configuration.
    pub fn name(self) -> &'static str {
        match self {
            IoBackend::Auto => "auto",
            IoBackend::Mmsg => "mmsg",
            IoBackend::Uring => "uring",
            IoBackend::Xdp => "xdp",
        }
    }
}

impl fmt::Display for IoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for IoBackend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoBackend::Auto),
            "mmsg" => Ok(IoBackend::Mmsg),
            "uring" => Ok(IoBackend::Uring),
            "xdp" => Ok(IoBackend::Xdp),
            _ => Err(format!(
                "unknown back end; expected one of {}",
                IoBackend::NAMES.join(", ")
            )),
        }
    }
}

impl fmt::Display for ExternalIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.private {
            Some(p) => write!(f, "{}/{}", self.public, p),
            None => write!(f, "{}", self.public),
        }
    }
}

impl FromStr for ExternalIp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (public, private) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let public: IpAddr = public
            .parse()
            .map_err(|_| format!("{public:?} is not an IP address"))?;
        let private = match private {
            Some(p) => Some(
                p.parse::<IpAddr>()
                    .map_err(|_| format!("{p:?} is not an IP address"))?,
            ),
            None => None,
        };
        if public.is_unspecified() {
            return Err("the public address cannot be a wildcard".to_owned());
        }
        if let Some(p) = private {
            if p.is_ipv4() != public.is_ipv4() {
                return Err("public and private addresses are of different families".to_owned());
            }
        }
        Ok(ExternalIp { public, private })
    }
}

// ---- value parsers shared by TOML and the command line ----------------------

/// `--listen` / `listen`: an `IP:PORT` (IPv6 in brackets).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "expected IP:PORT, e.g. 0.0.0.0:3478 or [::]:3478".to_owned())
}

/// `--relay-ports` / `relay-ports`: `LO-HI`, inclusive, no port 0.
pub fn parse_relay_ports(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or("expected LO-HI, e.g. 49152-65535")?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("{:?} is not a port (0-65535)", p.trim()))
    };
    let ports = (port(lo)?, port(hi)?);
    check_relay_ports(ports)?;
    Ok(ports)
}

/// `--relay-ip` / `relay-ip`: an IP address.
pub fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| "not an IP address".to_owned())
}

/// `--user` / `user`: `NAME:PASSWORD` (the password may contain ':').
pub fn parse_user(s: &str) -> Result<(String, String), String> {
    let (name, password) = s.split_once(':').ok_or("expected NAME:PASSWORD")?;
    check_user(name, password)?;
    Ok((name.to_owned(), password.to_owned()))
}

/// `--allow-peer`, `--deny-peer`: a network in CIDR notation.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.parse::<Cidr>().map_err(|e| e.to_string())
}

/// `--external-ip`: `PUBLIC[/PRIVATE]`.
pub fn parse_external_ip(s: &str) -> Result<ExternalIp, String> {
    s.parse()
}

/// `--io-backend`: `auto` or a back end's name.
pub fn parse_io_backend(s: &str) -> Result<IoBackend, String> {
    s.parse()
}

/// `--log-level`: a `tracing` filter directive.
pub fn parse_log_level(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

/// The value of `admin`: where the admin endpoint listens, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminListen(pub Option<SocketAddr>);

/// `--admin` / `admin`: an `IP:PORT`, or `off` for no admin endpoint.
pub fn parse_admin(s: &str) -> Result<AdminListen, String> {
    if s == "off" {
        return Ok(AdminListen(None));
    }
    s.parse()
        .map(|a| AdminListen(Some(a)))
        .map_err(|_| "expected IP:PORT (e.g. 127.0.0.1:9641) or off".to_owned())
}

/// `--admin-token` / `admin-token`: a bearer token of visible ASCII.
pub fn parse_admin_token(s: &str) -> Result<String, String> {
    check_admin_token(s)?;
    Ok(s.to_owned())
}

/// `--registry-url` / `registry-url`: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`.
pub fn parse_registry_url(s: &str) -> Result<RegistryUrl, String> {
    RegistryUrl::parse(s)
}

/// `--region`, `--node`: a part of the registry key (letters, digits, `.`, `_`, `-`).
pub fn parse_key_part(s: &str) -> Result<String, String> {
    check_key_part(s)?;
    Ok(s.to_owned())
}

/// `--alternate-server`: an `IP:PORT`.
pub fn parse_alternate_server(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| "expected IP:PORT".to_owned())
}

// ---- helpers ------------------------------------------------------------------

fn check_relay_ports((lo, hi): (u16, u16)) -> Result<(), String> {
    if lo == 0 {
        return Err("port 0 cannot be a relay port".to_owned());
    }
    if lo > hi {
        return Err("low end above high end".to_owned());
    }
    Ok(())
}

fn fmt_ports((lo, hi): (u16, u16)) -> String {
    format!("{lo}-{hi}")
}

fn check_user(name: &str, password: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty user name".to_owned());
    }
    if name.contains(':') {
        return Err(format!("user name {name:?} contains ':'"));
    }
    if password.is_empty() {
        return Err(format!("user {name:?} has an empty password"));
    }
    Ok(())
}

fn check_key_part(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.len() > 253 {
        return Err("longer than 253 characters".to_owned());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(
            "only letters, digits, '.', '_' and '-' (it is part of a Redis key)".to_owned(),
        );
    }
    Ok(())
}

fn check_admin_token(token: &str) -> Result<(), String> {
    if token.len() < 16 {
        return Err("the token must be at least 16 characters".to_owned());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token must be visible ASCII (no spaces)".to_owned());
    }
    Ok(())
}

fn one_per_family(
    key: &'static str,
    ips: impl Iterator<Item = IpAddr>,
    v4: bool,
) -> Result<Option<IpAddr>, ConfigError> {
    let mut found = None;
    for ip in ips.filter(|ip| ip.is_ipv4() == v4) {
        if found.is_some() {
            return Err(ConfigError::invalid(
                key,
                ip.to_string(),
                format!("more than one {} address", if v4 { "IPv4" } else { "IPv6" }),
            ));
        }
        found = Some(ip);
    }
    Ok(found)
}

fn one_per_family_ext(ext: &[ExternalIp], v4: bool) -> Result<Option<ExternalIp>, ConfigError> {
    let mut found = None;
    for e in ext.iter().filter(|e| e.public.is_ipv4() == v4) {
        if found.is_some() {
            return Err(ConfigError::invalid(
                "external-ip",
                e.to_string(),
                format!("more than one {} address", if v4 { "IPv4" } else { "IPv6" }),
            ));
        }
        found = Some(*e);
    }
    Ok(found)
}

fn as_v4(ip: IpAddr) -> Ipv4Addr {
    match ip {
        IpAddr::V4(a) => a,
        // Callers pass addresses filtered by family.
        IpAddr::V6(a) => a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

fn relay_text(bind: IpAddr, advertised: IpAddr) -> String {
    if bind == advertised {
        bind.to_string()
    } else {
        format!("{bind} (advertised {advertised})")
    }
}

/// A random URL-safe token of `bytes` random bytes (hex), for generated secrets.
fn random_token(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut raw);
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    ConfigError::Syntax {
        line: line.unwrap_or(1),
        message: e.message().trim().to_owned(),
    }
}

/// The TOML file as written: every key optional, values checked by hand so
/// that each error names its key.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    listen: Option<toml::Value>,
    listen_tcp: Option<toml::Value>,
    listen_tls: Option<toml::Value>,
    listen_dtls: Option<toml::Value>,
    tls_cert: Option<toml::Value>,
    tls_key: Option<toml::Value>,
    max_connections: Option<toml::Value>,
    max_connections_per_source: Option<toml::Value>,
    stream_idle_timeout: Option<toml::Value>,
    tls_handshake_timeout: Option<toml::Value>,
    tcp_relay: Option<toml::Value>,
    relay_ports: Option<toml::Value>,
    relay_ip: Option<toml::Value>,
    realm: Option<toml::Value>,
    auth_secret: Option<toml::Value>,
    user: Option<toml::Value>,
    allow_peer: Option<toml::Value>,
    deny_peer: Option<toml::Value>,
    external_ip: Option<toml::Value>,
    workers: Option<toml::Value>,
    log_level: Option<toml::Value>,
    strict_channel_range: Option<toml::Value>,
    max_allocations: Option<toml::Value>,
    max_allocations_per_user: Option<toml::Value>,
    bandwidth_per_allocation: Option<toml::Value>,
    software: Option<toml::Value>,
    io_backend: Option<toml::Value>,
    uring_min_wait_us: Option<toml::Value>,
    default_lifetime: Option<toml::Value>,
    max_lifetime: Option<toml::Value>,
    nonce_lifetime: Option<toml::Value>,
    alternate_server: Option<toml::Value>,
    admin: Option<toml::Value>,
    admin_token: Option<toml::Value>,
    drain_timeout: Option<toml::Value>,
    registry_url: Option<toml::Value>,
    region: Option<toml::Value>,
    node: Option<toml::Value>,
    registry_interval: Option<toml::Value>,
    registry_ttl: Option<toml::Value>,
    nic_stats: Option<toml::Value>,
    nic_stats_interval: Option<toml::Value>,
    xdp: Option<toml::Value>,
    xdp_interfaces: Option<toml::Value>,
    xdp_unauth_rate: Option<toml::Value>,
    xdp_unauth_burst: Option<toml::Value>,
    xdp_verify_checksums: Option<toml::Value>,
    sfu: Option<toml::Value>,
    sfu_ports: Option<toml::Value>,
    sfu_ip: Option<toml::Value>,
}

impl RawConfig {
    fn apply(self, c: &mut Config) -> Result<(), ConfigError> {
        if let Some(v) = self.listen {
            c.listen = each("listen", v, parse_listen, true)?;
        }
        if let Some(v) = self.listen_tcp {
            c.listen_tcp = each("listen-tcp", v, parse_listen, true)?;
        }
        if let Some(v) = self.listen_tls {
            c.listen_tls = each("listen-tls", v, parse_listen, true)?;
        }
        if let Some(v) = self.listen_dtls {
            c.listen_dtls = each("listen-dtls", v, parse_listen, true)?;
        }
        if let Some(v) = self.tls_cert {
            c.tls_cert = Some(PathBuf::from(string("tls-cert", v)?));
        }
        if let Some(v) = self.tls_key {
            c.tls_key = Some(PathBuf::from(string("tls-key", v)?));
        }
        if let Some(v) = self.max_connections {
            c.max_connections = integer("max-connections", v)?;
        }
        if let Some(v) = self.max_connections_per_source {
            c.max_connections_per_source = integer("max-connections-per-source", v)?;
        }
        if let Some(v) = self.stream_idle_timeout {
            c.stream_idle_timeout = integer("stream-idle-timeout", v)?;
        }
        if let Some(v) = self.tls_handshake_timeout {
            c.tls_handshake_timeout = integer("tls-handshake-timeout", v)?;
        }
        if let Some(v) = self.tcp_relay {
            c.tcp_relay = boolean("tcp-relay", v)?;
        }
        if let Some(v) = self.relay_ports {
            c.relay_ports = one("relay-ports", v, parse_relay_ports)?;
        }
        if let Some(v) = self.relay_ip {
            c.relay_ip = each("relay-ip", v, parse_ip, true)?;
        }
        if let Some(v) = self.realm {
            c.realm = string("realm", v)?;
        }
        if let Some(v) = self.auth_secret {
            c.auth_secret = each("auth-secret", v, |s| Ok(s.to_owned()), false)?;
        }
        if let Some(v) = self.user {
            c.user = each("user", v, parse_user, false)?;
        }
        if let Some(v) = self.allow_peer {
            c.allow_peer = each("allow-peer", v, parse_cidr, true)?;
        }
        if let Some(v) = self.deny_peer {
            c.deny_peer = each("deny-peer", v, parse_cidr, true)?;
        }
        if let Some(v) = self.external_ip {
            c.external_ip = each("external-ip", v, parse_external_ip, true)?;
        }
        if let Some(v) = self.workers {
            c.workers = integer("workers", v)?;
        }
        if let Some(v) = self.log_level {
            c.log_level = one("log-level", v, parse_log_level)?;
        }
        if let Some(v) = self.strict_channel_range {
            c.strict_channel_range = boolean("strict-channel-range", v)?;
        }
        if let Some(v) = self.max_allocations {
            c.max_allocations = integer("max-allocations", v)?;
        }
        if let Some(v) = self.max_allocations_per_user {
            c.max_allocations_per_user = integer("max-allocations-per-user", v)?;
        }
        if let Some(v) = self.bandwidth_per_allocation {
            c.bandwidth_per_allocation = integer("bandwidth-per-allocation", v)?;
        }
        if let Some(v) = self.software {
            c.software = string("software", v)?;
        }
        if let Some(v) = self.io_backend {
            c.io_backend = one("io-backend", v, parse_io_backend)?;
        }
        if let Some(v) = self.uring_min_wait_us {
            c.uring_min_wait_us = integer("uring-min-wait-us", v)?;
        }
        if let Some(v) = self.default_lifetime {
            c.default_lifetime = integer("default-lifetime", v)?;
        }
        if let Some(v) = self.max_lifetime {
            c.max_lifetime = integer("max-lifetime", v)?;
        }
        if let Some(v) = self.nonce_lifetime {
            c.nonce_lifetime = integer("nonce-lifetime", v)?;
        }
        if let Some(v) = self.alternate_server {
            c.alternate_server = Some(one("alternate-server", v, parse_alternate_server)?);
        }
        if let Some(v) = self.admin {
            c.admin = one("admin", v, parse_admin)?.0;
        }
        if let Some(v) = self.admin_token {
            let token = string("admin-token", v)?;
            check_admin_token(&token).map_err(|p| ConfigError::problem("admin-token", p))?;
            c.admin_token = Some(token);
        }
        if let Some(v) = self.drain_timeout {
            c.drain_timeout = integer("drain-timeout", v)?;
        }
        if let Some(v) = self.registry_url {
            // Not echoed: the URL may carry a password.
            let url = string("registry-url", v)?;
            c.registry_url = Some(
                parse_registry_url(&url).map_err(|p| ConfigError::problem("registry-url", p))?,
            );
        }
        if let Some(v) = self.region {
            c.region = one("region", v, parse_key_part)?;
        }
        if let Some(v) = self.node {
            c.node = Some(one("node", v, parse_key_part)?);
        }
        if let Some(v) = self.registry_interval {
            c.registry_interval = integer("registry-interval", v)?;
        }
        if let Some(v) = self.registry_ttl {
            c.registry_ttl = Some(integer("registry-ttl", v)?);
        }
        if let Some(v) = self.nic_stats {
            let names = each("nic-stats", v, |s| Ok(s.to_owned()), true)?;
            c.nic_stats = NicSelection::parse(&names)
                .map_err(|p| ConfigError::invalid("nic-stats", names.join(","), p))?;
        }
        if let Some(v) = self.nic_stats_interval {
            c.nic_stats_interval = integer("nic-stats-interval", v)?;
        }
        if let Some(v) = self.xdp {
            c.xdp = one("xdp", v, parse_xdp_mode)?;
        }
        if let Some(v) = self.xdp_interfaces {
            c.xdp_interfaces = each("xdp-interfaces", v, parse_interface, true)?;
        }
        if let Some(v) = self.xdp_unauth_rate {
            c.xdp_unauth_rate = integer("xdp-unauth-rate", v)?;
        }
        if let Some(v) = self.xdp_unauth_burst {
            c.xdp_unauth_burst = integer("xdp-unauth-burst", v)?;
        }
        if let Some(v) = self.xdp_verify_checksums {
            c.xdp_verify_checksums = boolean("xdp-verify-checksums", v)?;
        }
        if let Some(v) = self.sfu {
            c.sfu = boolean("sfu", v)?;
        }
        if let Some(v) = self.sfu_ports {
            c.sfu_ports = one("sfu-ports", v, parse_relay_ports)?;
        }
        if let Some(v) = self.sfu_ip {
            c.sfu_ip = Some(one("sfu-ip", v, parse_ip)?);
        }
        Ok(())
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    v.type_str()
}

fn string(key: &'static str, v: toml::Value) -> Result<String, ConfigError> {
    match v {
        toml::Value::String(s) => Ok(s),
        other => Err(ConfigError::problem(
            key,
            format!("expected a string, found {}", type_name(&other)),
        )),
    }
}

fn one<T>(
    key: &'static str,
    v: toml::Value,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    let s = string(key, v)?;
    parse(&s).map_err(|p| ConfigError::invalid(key, s, p))
}

/// A string or an array of strings, each parsed; `echo` says whether a bad
/// value may be repeated in the error (not for secrets).
fn each<T>(
    key: &'static str,
    v: toml::Value,
    parse: impl Fn(&str) -> Result<T, String>,
    echo: bool,
) -> Result<Vec<T>, ConfigError> {
    let items = match v {
        toml::Value::Array(items) => items,
        single @ toml::Value::String(_) => vec![single],
        other => {
            return Err(ConfigError::problem(
                key,
                format!(
                    "expected a string or an array of strings, found {}",
                    type_name(&other)
                ),
            ))
        }
    };
    items
        .into_iter()
        .map(|item| {
            let s = match item {
                toml::Value::String(s) => s,
                other => {
                    return Err(ConfigError::problem(
                        key,
                        format!("expected strings in the array, found {}", type_name(&other)),
                    ))
                }
            };
            parse(&s).map_err(|p| {
                if echo {
                    ConfigError::invalid(key, s, p)
                } else {
                    ConfigError::problem(key, p)
                }
            })
        })
        .collect()
}

fn integer<T: TryFrom<i64>>(key: &'static str, v: toml::Value) -> Result<T, ConfigError> {
    match v {
        toml::Value::Integer(i) => {
            T::try_from(i).map_err(|_| ConfigError::invalid(key, i.to_string(), "out of range"))
        }
        other => Err(ConfigError::problem(
            key,
            format!("expected an integer, found {}", type_name(&other)),
        )),
    }
}

fn boolean(key: &'static str, v: toml::Value) -> Result<bool, ConfigError> {
    match v {
        toml::Value::Boolean(b) => Ok(b),
        other => Err(ConfigError::problem(
            key,
            format!("expected true or false, found {}", type_name(&other)),
        )),
    }
}

#[cfg(test)]
mod tests;
