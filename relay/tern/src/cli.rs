//! The `tern` command line: a TOML file plus flags that override it, each flag
//! named after its TOML key.
//!
//! Which configuration results: with neither `--config` nor `--listen`, the
//! development default ([`Config::dev_default`]) with any other flags applied;
//! otherwise [`Config::default`] (nothing implied), then the file, then the
//! flags. A repeatable flag given at least once replaces the file's list.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tern_turn::policy::Cidr;

use crate::config::{
    self, AdminListen, Config, ConfigError, ExternalIp, IoBackend, NicSelection, RegistryUrl,
    XdpMode, DEV_REALM, DEV_USER,
};

/// tern: a thread-per-core TURN relay (RFC 8656).
///
/// Without --config or --listen it runs a development relay on loopback
/// (127.0.0.1:3478 and [::1]:3478, realm tern.local) with a generated REST
/// secret and user, both logged at start. Signals: SIGTERM/SIGINT stop,
/// SIGHUP re-reads --config and reloads credentials and peer policy.
#[derive(Parser, Debug)]
#[command(name = "tern", version, about, long_about)]
pub struct Cli {
    /// A subcommand; without one, the relay runs.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings; each overrides the TOML key of the same name.
    #[command(flatten)]
    pub flags: Flags,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate a configuration file without starting: prints a one-line
    /// summary and exits 0, or prints the error and exits non-zero.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
}

/// Every setting as a flag; names and meanings are the TOML keys'.
#[derive(Args, Debug, Default, Clone)]
pub struct Flags {
    /// TOML configuration file; flags given too override its keys.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Client-facing UDP address (repeatable; IPv4 and IPv6, e.g. 0.0.0.0:3478, [::]:3478).
    #[arg(long, value_name = "ADDR:PORT", value_parser = config::parse_listen)]
    pub listen: Vec<SocketAddr>,
    /// Client-facing TCP address for TURN over TCP (repeatable).
    #[arg(long, value_name = "ADDR:PORT", value_parser = config::parse_listen)]
    pub listen_tcp: Vec<SocketAddr>,
    /// Client-facing TLS address for TURN over TLS, turns: (repeatable; needs --tls-cert and --tls-key).
    #[arg(long, value_name = "ADDR:PORT", value_parser = config::parse_listen)]
    pub listen_tls: Vec<SocketAddr>,
    /// Client-facing DTLS address for TURN over DTLS 1.2 on UDP, RFC 7350 (repeatable; needs --tls-cert and --tls-key).
    #[arg(long, value_name = "ADDR:PORT", value_parser = config::parse_listen)]
    pub listen_dtls: Vec<SocketAddr>,
    /// PEM certificate chain for --listen-tls (re-read on SIGHUP).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --listen-tls (re-read on SIGHUP).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Relay-wide cap on open TCP/TLS connections; 0 = none [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Cap on open TCP/TLS connections from one client IP; 0 = none [default: 64].
    #[arg(long, value_name = "N")]
    pub max_connections_per_source: Option<usize>,
    /// Seconds a TCP/TLS connection without an allocation may stay silent [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub stream_idle_timeout: Option<u64>,
    /// Seconds a TLS client has to finish its handshake [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub tls_handshake_timeout: Option<u64>,
    /// Offer RFC 6062 TCP allocations (Connect, ConnectionBind) to TCP/TLS clients.
    #[arg(long)]
    pub tcp_relay: bool,
    /// Serve the SFU forwarding plane and its control API (/sfu/...).
    #[arg(long)]
    pub sfu: bool,
    /// SFU transport port range, inclusive, split per worker [default: 40000-40999].
    #[arg(long, value_name = "LO-HI", value_parser = config::parse_relay_ports)]
    pub sfu_ports: Option<(u16, u16)>,
    /// Local address SFU transports bind [default: the first listen address's IP].
    #[arg(long, value_name = "IP", value_parser = config::parse_ip)]
    pub sfu_ip: Option<IpAddr>,
    /// Relay port range, inclusive [default: 49152-65535].
    #[arg(long, value_name = "LO-HI", value_parser = config::parse_relay_ports)]
    pub relay_ports: Option<(u16, u16)>,
    /// Local address relay sockets bind to, one per family (repeatable).
    #[arg(long, value_name = "IP", value_parser = config::parse_ip)]
    pub relay_ip: Vec<IpAddr>,
    /// REALM for long-term credentials.
    #[arg(long, value_name = "NAME")]
    pub realm: Option<String>,
    /// REST API shared secret (use-auth-secret; repeatable, the first signs).
    #[arg(long, value_name = "SECRET")]
    pub auth_secret: Vec<String>,
    /// Long-term user (repeatable).
    #[arg(long, value_name = "NAME:PASSWORD", value_parser = config::parse_user)]
    pub user: Vec<(String, String)>,
    /// Peer network to allow even where the built-in policy denies it (repeatable).
    #[arg(long, value_name = "CIDR", value_parser = config::parse_cidr)]
    pub allow_peer: Vec<Cidr>,
    /// Peer network to deny on top of the built-in policy (repeatable).
    #[arg(long, value_name = "CIDR", value_parser = config::parse_cidr)]
    pub deny_peer: Vec<Cidr>,
    /// Public address to advertise, with the private one to bind behind 1:1 NAT (repeatable, one per family).
    #[arg(long, value_name = "PUBLIC[/PRIVATE]", value_parser = config::parse_external_ip)]
    pub external_ip: Vec<ExternalIp>,
    /// Worker threads, each pinned to a core; 0 = one per available core [default: 0].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Log filter (tracing syntax): error, warn, info, debug, trace, or e.g. tern=debug,info [default: info].
    #[arg(long, value_name = "LEVEL", value_parser = config::parse_log_level)]
    pub log_level: Option<String>,
    /// Accept only RFC 8656 channel numbers 0x4000-0x4FFF.
    #[arg(long)]
    pub strict_channel_range: bool,
    /// Relay-wide cap on live allocations; 0 = none [default: 0].
    #[arg(long, value_name = "N")]
    pub max_allocations: Option<usize>,
    /// Cap on live allocations per username; 0 = none [default: 0].
    #[arg(long, value_name = "N")]
    pub max_allocations_per_user: Option<usize>,
    /// Bytes per second each way per allocation; 0 = no cap [default: 0].
    #[arg(long, value_name = "BYTES")]
    pub bandwidth_per_allocation: Option<u64>,
    /// SOFTWARE attribute in responses; empty sends none [default: tern VERSION].
    #[arg(long, value_name = "TEXT")]
    pub software: Option<String>,
    /// Packet I/O back end: auto (probe, fastest available), uring, mmsg, or xdp (AF_XDP, never chosen by auto) [default: auto].
    #[arg(long, value_name = "BACKEND", env = "TERN_IO_BACKEND", value_parser = config::parse_io_backend)]
    pub io_backend: Option<IoBackend>,
    /// io_uring back end: microseconds a busy worker may sleep to gather a batch of datagrams (fewer wake-ups, up to this much added latency; Linux 6.12+); 0 is off [default: 0].
    #[arg(long, value_name = "MICROSECONDS", env = "TERN_URING_MIN_WAIT_US")]
    pub uring_min_wait_us: Option<u32>,
    /// Allocation lifetime in seconds when the client asks for none [default: 600].
    #[arg(long, value_name = "SECONDS")]
    pub default_lifetime: Option<u64>,
    /// Longest allocation lifetime granted, in seconds [default: 3600].
    #[arg(long, value_name = "SECONDS")]
    pub max_lifetime: Option<u64>,
    /// How long a NONCE stays valid, in seconds [default: 600].
    #[arg(long, value_name = "SECONDS")]
    pub nonce_lifetime: Option<u64>,
    /// Where new clients are sent (300 Try Alternate) while draining.
    #[arg(long, value_name = "ADDR:PORT", value_parser = config::parse_alternate_server)]
    pub alternate_server: Option<SocketAddr>,
    /// Admin HTTP endpoint (/metrics, /healthz, /readyz, /load, /admin/*), or off [default: 127.0.0.1:9641].
    #[arg(long, value_name = "ADDR:PORT|off", value_parser = config::parse_admin)]
    pub admin: Option<AdminListen>,
    /// Bearer token required by POST /admin/drain and /admin/undrain (at least 16 characters).
    #[arg(long, value_name = "TOKEN", env = "TERN_ADMIN_TOKEN", hide_env_values = true,
          value_parser = config::parse_admin_token)]
    pub admin_token: Option<String>,
    /// Seconds a drain (SIGTERM, /admin/drain) waits for allocations to end [default: 3600].
    #[arg(long, value_name = "SECONDS")]
    pub drain_timeout: Option<u64>,
    /// Redis load registry, off unless set: publishes the /load JSON to
    /// turn:node:{region}:{node} with SET EX every registry-interval, "draining"
    /// at once on drain, DEL on a clean stop. redis://[[USER]:PASSWORD@]HOST[:PORT][/DB],
    /// e.g. redis://127.0.0.1:6379/0 or redis://:PASSWORD@cache:6379/2 (no TLS).
    #[arg(long, value_name = "URL", env = "TERN_REGISTRY_URL", hide_env_values = true,
          value_parser = config::parse_registry_url)]
    pub registry_url: Option<RegistryUrl>,
    /// Region in the registry key (letters, digits, . _ -); required with --registry-url.
    #[arg(long, value_name = "NAME", value_parser = config::parse_key_part)]
    pub region: Option<String>,
    /// Node in the registry key (letters, digits, . _ -) [default: the host name].
    #[arg(long, value_name = "NAME", value_parser = config::parse_key_part)]
    pub node: Option<String>,
    /// Seconds between registry updates [default: 5].
    #[arg(long, value_name = "SECONDS")]
    pub registry_interval: Option<u64>,
    /// Seconds a registry entry outlives its last update, so a dead node
    /// disappears; must exceed --registry-interval [default: 3 x registry-interval].
    #[arg(long, value_name = "SECONDS")]
    pub registry_ttl: Option<u64>,
    /// NICs whose allowance counters (ethtool -S *_allowance_exceeded, AWS ENA)
    /// /metrics exports: auto (every interface that has them), off, or
    /// interface names (repeatable) [default: auto].
    #[arg(long, value_name = "auto|off|IFACE")]
    pub nic_stats: Vec<String>,
    /// Seconds between readings of the NIC allowance counters [default: 10].
    #[arg(long, value_name = "SECONDS")]
    pub nic_stats_interval: Option<u64>,
    /// XDP pre-filter: off, auto (native where the driver allows, else
    /// generic; without it when XDP cannot run, saying why), native or generic
    /// (refuse to start when that mode cannot run) [default: off].
    #[arg(long, value_name = "MODE", value_parser = config::parse_xdp_mode)]
    pub xdp: Option<XdpMode>,
    /// Interface to attach the XDP pre-filter to (repeatable) [default: those carrying --listen addresses].
    #[arg(long, value_name = "IFNAME", value_parser = config::parse_interface)]
    pub xdp_interfaces: Vec<String>,
    /// Unauthenticated STUN requests per second per source (IPv4 address, IPv6 /64) the XDP pre-filter passes; 0 = no limit [default: 100].
    #[arg(long, value_name = "PER_SECOND")]
    pub xdp_unauth_rate: Option<u32>,
    /// Burst of unauthenticated requests a quiet source may send [default: 200].
    #[arg(long, value_name = "COUNT")]
    pub xdp_unauth_burst: Option<u32>,
    /// io-backend xdp: drop received datagrams with a wrong UDP checksum (XDP sees frames before the kernel checks them) [default: true].
    #[arg(long, value_name = "BOOL", env = "TERN_XDP_VERIFY_CHECKSUMS")]
    pub xdp_verify_checksums: Option<bool>,
}

/// Where the configuration in force came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The embedded development default (plus flags).
    DevDefault,
    /// A file (plus flags).
    File(PathBuf),
    /// Flags alone.
    Flags,
}

impl Flags {
    /// The configuration these flags describe: base (dev default or
    /// [`Config::default`]), then `--config`'s file, then the flags.
    pub fn resolve(&self) -> Result<(Config, Origin), ConfigError> {
        if !self.nic_stats.is_empty() {
            NicSelection::parse(&self.nic_stats).map_err(|problem| ConfigError::Invalid {
                key: "nic-stats",
                value: Some(self.nic_stats.join(",")),
                problem,
            })?;
        }
        let no_listen = self.listen.is_empty()
            && self.listen_tcp.is_empty()
            && self.listen_tls.is_empty()
            && self.listen_dtls.is_empty();
        let (mut config, origin) = match (&self.config, no_listen) {
            (Some(path), _) => (Config::load(path)?, Origin::File(path.clone())),
            (None, false) => (Config::default(), Origin::Flags),
            (None, true) => (Config::dev_default(), Origin::DevDefault),
        };
        self.apply(&mut config);
        Ok((config, origin))
    }

    /// Override `config`'s keys with every flag given.
    pub fn apply(&self, c: &mut Config) {
        fn replace<T: Clone>(dst: &mut Vec<T>, src: &[T]) {
            if !src.is_empty() {
                *dst = src.to_vec();
            }
        }
        fn set<T: Clone>(dst: &mut T, src: &Option<T>) {
            if let Some(v) = src {
                *dst = v.clone();
            }
        }
        replace(&mut c.listen, &self.listen);
        replace(&mut c.listen_tcp, &self.listen_tcp);
        replace(&mut c.listen_tls, &self.listen_tls);
        replace(&mut c.listen_dtls, &self.listen_dtls);
        if self.tls_cert.is_some() {
            c.tls_cert.clone_from(&self.tls_cert);
        }
        if self.tls_key.is_some() {
            c.tls_key.clone_from(&self.tls_key);
        }
        set(&mut c.max_connections, &self.max_connections);
        set(
            &mut c.max_connections_per_source,
            &self.max_connections_per_source,
        );
        set(&mut c.stream_idle_timeout, &self.stream_idle_timeout);
        set(&mut c.tls_handshake_timeout, &self.tls_handshake_timeout);
        if self.tcp_relay {
            c.tcp_relay = true;
        }
        set(&mut c.relay_ports, &self.relay_ports);
        set(&mut c.sfu_ports, &self.sfu_ports);
        if self.sfu_ip.is_some() {
            c.sfu_ip = self.sfu_ip;
        }
        if self.sfu {
            c.sfu = true;
        }
        replace(&mut c.relay_ip, &self.relay_ip);
        set(&mut c.realm, &self.realm);
        replace(&mut c.auth_secret, &self.auth_secret);
        replace(&mut c.user, &self.user);
        replace(&mut c.allow_peer, &self.allow_peer);
        replace(&mut c.deny_peer, &self.deny_peer);
        replace(&mut c.external_ip, &self.external_ip);
        set(&mut c.workers, &self.workers);
        set(&mut c.log_level, &self.log_level);
        if self.strict_channel_range {
            c.strict_channel_range = true;
        }
        set(&mut c.max_allocations, &self.max_allocations);
        set(
            &mut c.max_allocations_per_user,
            &self.max_allocations_per_user,
        );
        set(
            &mut c.bandwidth_per_allocation,
            &self.bandwidth_per_allocation,
        );
        set(&mut c.software, &self.software);
        set(&mut c.io_backend, &self.io_backend);
        set(&mut c.uring_min_wait_us, &self.uring_min_wait_us);
        set(&mut c.default_lifetime, &self.default_lifetime);
        set(&mut c.max_lifetime, &self.max_lifetime);
        set(&mut c.nonce_lifetime, &self.nonce_lifetime);
        if self.alternate_server.is_some() {
            c.alternate_server = self.alternate_server;
        }
        if let Some(AdminListen(a)) = self.admin {
            c.admin = a;
        }
        if self.admin_token.is_some() {
            c.admin_token.clone_from(&self.admin_token);
        }
        set(&mut c.drain_timeout, &self.drain_timeout);
        if self.registry_url.is_some() {
            c.registry_url.clone_from(&self.registry_url);
        }
        set(&mut c.region, &self.region);
        if self.node.is_some() {
            c.node.clone_from(&self.node);
        }
        set(&mut c.registry_interval, &self.registry_interval);
        if self.registry_ttl.is_some() {
            c.registry_ttl = self.registry_ttl;
        }
        // An invalid list is refused by `resolve`; here it leaves the key alone.
        if let Ok(selection) = NicSelection::parse(&self.nic_stats) {
            c.nic_stats = selection;
        }
        set(&mut c.nic_stats_interval, &self.nic_stats_interval);
        set(&mut c.xdp, &self.xdp);
        replace(&mut c.xdp_interfaces, &self.xdp_interfaces);
        set(&mut c.xdp_unauth_rate, &self.xdp_unauth_rate);
        set(&mut c.xdp_unauth_burst, &self.xdp_unauth_burst);
        set(&mut c.xdp_verify_checksums, &self.xdp_verify_checksums);
    }
}

/// What to log at start about a development-default relay: how to use it.
/// Returns `None` for any other origin.
pub fn dev_banner(config: &Config, origin: &Origin) -> Option<String> {
    if *origin != Origin::DevDefault {
        return None;
    }
    let secret = config
        .auth_secret
        .first()
        .map(String::as_str)
        .unwrap_or("(none)");
    let user = config
        .user
        .iter()
        .find(|(n, _)| n == DEV_USER)
        .or(config.user.first())
        .map(|(n, p)| format!("{n}:{p}"))
        .unwrap_or_else(|| "(none)".to_owned());
    Some(format!(
        "development default (no --config, no --listen): loopback only, realm {DEV_REALM}, \
         loopback peers allowed; user {user}; REST secret {secret}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("tern").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn no_flags_is_dev_default() {
        let (c, origin) = parse(&[]).flags.resolve().unwrap();
        assert_eq!(origin, Origin::DevDefault);
        assert_eq!(c.realm, DEV_REALM);
        assert_eq!(c.listen.len(), 2);
        assert!(dev_banner(&c, &origin).unwrap().contains(&c.auth_secret[0]));
        c.validate().unwrap();
    }

    #[test]
    fn listen_flag_implies_nothing() {
        let (c, origin) = parse(&["--listen", "127.0.0.1:0", "--realm", "r"])
            .flags
            .resolve()
            .unwrap();
        assert_eq!(origin, Origin::Flags);
        assert!(c.allow_peer.is_empty());
        assert!(c.auth_secret.is_empty() && c.user.is_empty());
        assert!(dev_banner(&c, &origin).is_none());
    }

    #[test]
    fn flags_override_file() {
        let dir = std::env::temp_dir().join(format!("tern-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(
            f,
            r#"listen = ["127.0.0.1:3478"]
realm = "file"
workers = 3
user = ["a:b", "c:d"]
relay-ports = "50000-50100""#
        )
        .unwrap();
        drop(f);
        let cli = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--realm",
            "flag",
            "--user",
            "x:y",
            "--strict-channel-range",
            "--io-backend",
            "mmsg",
        ]);
        let (c, origin) = cli.flags.resolve().unwrap();
        assert_eq!(origin, Origin::File(path.clone()));
        assert_eq!(c.realm, "flag");
        assert_eq!(c.workers, 3);
        assert_eq!(c.user, vec![("x".to_owned(), "y".to_owned())]);
        assert_eq!(c.relay_ports, (50000, 50100));
        assert!(c.strict_channel_range);
        assert_eq!(c.io_backend, IoBackend::Mmsg);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_key_has_a_flag() {
        let cli = parse(&[
            "--listen",
            "127.0.0.1:1",
            "--listen",
            "[::1]:2",
            "--relay-ports",
            "1000-2000",
            "--relay-ip",
            "127.0.0.1",
            "--realm",
            "r",
            "--auth-secret",
            "s1",
            "--auth-secret",
            "s2",
            "--user",
            "u:p:w",
            "--allow-peer",
            "10.0.0.0/8",
            "--deny-peer",
            "192.0.2.0/24",
            "--external-ip",
            "203.0.113.1/10.0.0.1",
            "--workers",
            "4",
            "--log-level",
            "debug",
            "--strict-channel-range",
            "--max-allocations",
            "10",
            "--max-allocations-per-user",
            "2",
            "--bandwidth-per-allocation",
            "1000",
            "--software",
            "sw",
            "--io-backend",
            "auto",
            "--uring-min-wait-us",
            "200",
            "--default-lifetime",
            "60",
            "--max-lifetime",
            "120",
            "--nonce-lifetime",
            "30",
            "--alternate-server",
            "192.0.2.1:3478",
            "--admin",
            "off",
            "--admin-token",
            "0123456789abcdefXYZ",
            "--drain-timeout",
            "60",
            "--registry-url",
            "redis://:pw@127.0.0.1:6380/2",
            "--region",
            "eu-west",
            "--node",
            "n1",
            "--registry-interval",
            "7",
            "--registry-ttl",
            "30",
            "--nic-stats",
            "ens5",
            "--nic-stats",
            "ens6",
            "--nic-stats-interval",
            "3",
        ]);
        let mut c = Config::default();
        cli.flags.apply(&mut c);
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.relay_ports, (1000, 2000));
        assert_eq!(c.relay_ip, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.auth_secret, vec!["s1", "s2"]);
        assert_eq!(c.user, vec![("u".to_owned(), "p:w".to_owned())]);
        assert_eq!(c.allow_peer[0].to_string(), "10.0.0.0/8");
        assert_eq!(c.deny_peer[0].to_string(), "192.0.2.0/24");
        assert_eq!(c.external_ip[0].to_string(), "203.0.113.1/10.0.0.1");
        assert_eq!(c.workers, 4);
        assert_eq!(c.log_level, "debug");
        assert!(c.strict_channel_range);
        assert_eq!((c.max_allocations, c.max_allocations_per_user), (10, 2));
        assert_eq!(c.bandwidth_per_allocation, 1000);
        assert_eq!(c.software, "sw");
        assert_eq!(c.uring_min_wait_us, 200);
        assert_eq!(c.io_backend, IoBackend::Auto);
        assert_eq!(
            (c.default_lifetime, c.max_lifetime, c.nonce_lifetime),
            (60, 120, 30)
        );
        assert_eq!(c.alternate_server, Some("192.0.2.1:3478".parse().unwrap()));
        assert_eq!(c.admin, None);
        assert_eq!(c.admin_token.as_deref(), Some("0123456789abcdefXYZ"));
        assert_eq!(c.drain_timeout, 60);
        let url = c.registry_url.as_ref().unwrap();
        assert_eq!((url.host(), url.port(), url.db()), ("127.0.0.1", 6380, 2));
        assert!(url.has_password());
        assert_eq!(c.region, "eu-west");
        assert_eq!(c.node.as_deref(), Some("n1"));
        assert_eq!((c.registry_interval, c.registry_ttl), (7, Some(30)));
        assert_eq!(
            c.nic_stats,
            NicSelection::Interfaces(vec!["ens5".to_owned(), "ens6".to_owned()])
        );
        assert_eq!(c.nic_stats_interval, 3);
    }

    #[test]
    fn bad_nic_stats_flags_name_the_key() {
        let cli = parse(&["--nic-stats", "auto", "--nic-stats", "eth0"]);
        let err = cli.flags.resolve().unwrap_err();
        assert_eq!(err.key(), Some("nic-stats"), "{err}");
        assert!(err.to_string().contains("cannot be combined"), "{err}");
    }

    #[test]
    fn bad_registry_flags_name_the_flag() {
        for (flag, value, fragment) in [
            ("--registry-url", "redis://h:0/0", "not a port"),
            ("--registry-url", "http://h", "not supported"),
            ("--region", "eu west", "only letters"),
            ("--node", "a:b", "only letters"),
        ] {
            let err = Cli::try_parse_from(["tern", flag, value]).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(flag), "{text}");
            assert!(text.contains(fragment), "{text}");
        }
    }

    #[test]
    fn bad_flag_value_names_the_flag() {
        let err = Cli::try_parse_from(["tern", "--relay-ports", "5000-4000"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("--relay-ports"), "{text}");
        assert!(text.contains("low end above high end"), "{text}");
    }

    #[test]
    fn check_config_subcommand_parses() {
        let cli = parse(&["check-config", "/x.toml"]);
        assert!(
            matches!(cli.command, Some(Command::CheckConfig { ref file }) if file.to_str() == Some("/x.toml"))
        );
    }

    #[test]
    fn stream_flags_set_their_keys() {
        let (c, origin) = parse(&[
            "--listen-tcp",
            "127.0.0.1:3478",
            "--listen-tls",
            "127.0.0.1:5349",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--max-connections",
            "7",
            "--max-connections-per-source",
            "3",
            "--stream-idle-timeout",
            "9",
            "--tls-handshake-timeout",
            "2",
            "--realm",
            "r",
        ])
        .flags
        .resolve()
        .unwrap();
        // A stream listener alone is a listen address: not the development default.
        assert_eq!(origin, Origin::Flags);
        assert!(c.listen.is_empty());
        assert_eq!(c.listen_tcp, vec!["127.0.0.1:3478".parse().unwrap()]);
        assert_eq!(c.listen_tls, vec!["127.0.0.1:5349".parse().unwrap()]);
        assert_eq!(c.tls_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(c.tls_key, Some(PathBuf::from("k.pem")));
        assert_eq!((c.max_connections, c.max_connections_per_source), (7, 3));
        assert_eq!((c.stream_idle_timeout, c.tls_handshake_timeout), (9, 2));
    }
}
