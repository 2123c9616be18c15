//! Parsing every key, every error naming its key, the development default.

use super::*;

const FULL: &str = r#"
listen = ["0.0.0.0:3478", "[::]:3478"]
relay-ports = "50000-50999"
relay-ip = ["10.0.0.5", "2001:db8::5"]
realm = "example.org"
auth-secret = ["s3cret", "older"]
user = ["alice:wonder:land", "bob:builder"]
allow-peer = ["10.1.0.0/16"]
deny-peer = ["192.0.2.0/24", "2001:db8:dead::/48"]
external-ip = ["203.0.113.7/10.0.0.5"]
workers = 4
log-level = "tern=debug,info"
strict-channel-range = true
max-allocations = 1000
max-allocations-per-user = 10
bandwidth-per-allocation = 125000
software = "edge-1"
io-backend = "mmsg"
default-lifetime = 300
max-lifetime = 1800
nonce-lifetime = 120
alternate-server = "198.51.100.1:3478"
"#;

#[test]
fn parses_every_key() {
    let c = Config::from_toml_str(FULL).unwrap();
    assert_eq!(
        c.listen,
        vec![
            "0.0.0.0:3478".parse().unwrap(),
            "[::]:3478".parse().unwrap()
        ]
    );
    assert_eq!(c.relay_ports, (50000, 50999));
    assert_eq!(
        c.relay_ip,
        vec![
            "10.0.0.5".parse::<IpAddr>().unwrap(),
            "2001:db8::5".parse().unwrap()
        ]
    );
    assert_eq!(c.realm, "example.org");
    assert_eq!(c.auth_secret, vec!["s3cret", "older"]);
    assert_eq!(
        c.user,
        vec![
            ("alice".to_owned(), "wonder:land".to_owned()),
            ("bob".to_owned(), "builder".to_owned())
        ]
    );
    assert_eq!(c.allow_peer, vec!["10.1.0.0/16".parse().unwrap()]);
    assert_eq!(c.deny_peer.len(), 2);
    assert_eq!(
        c.external_ip,
        vec![ExternalIp {
            public: "203.0.113.7".parse().unwrap(),
            private: Some("10.0.0.5".parse().unwrap())
        }]
    );
    assert_eq!(c.workers, 4);
    assert_eq!(c.log_level, "tern=debug,info");
    assert!(c.strict_channel_range);
    assert_eq!(c.max_allocations, 1000);
    assert_eq!(c.max_allocations_per_user, 10);
    assert_eq!(c.bandwidth_per_allocation, 125_000);
    assert_eq!(c.software, "edge-1");
    assert_eq!(c.io_backend, IoBackend::Mmsg);
    assert_eq!(
        (c.default_lifetime, c.max_lifetime, c.nonce_lifetime),
        (300, 1800, 120)
    );
    assert_eq!(
        c.alternate_server,
        Some("198.51.100.1:3478".parse().unwrap())
    );

    let v = c.validate().unwrap();
    let v4 = v.relay.v4.unwrap();
    assert_eq!(v4.bind, Ipv4Addr::new(10, 0, 0, 5));
    assert_eq!(v4.advertised, Ipv4Addr::new(203, 0, 113, 7));
    let v6 = v.relay.v6.unwrap();
    assert_eq!(v6.bind, v6.advertised);
    assert!(c.summary(&v).contains("advertised 203.0.113.7"));
}

#[test]
fn single_strings_stand_for_one_element_lists() {
    let c = Config::from_toml_str("listen = \"127.0.0.1:3478\"\nrealm = \"r\"\nuser = \"a:b\"")
        .unwrap();
    assert_eq!(c.listen.len(), 1);
    assert_eq!(c.user.len(), 1);
}

#[test]
fn empty_file_is_the_base_default() {
    assert_eq!(Config::from_toml_str("").unwrap(), Config::default());
}

/// Each bad value, the key its error must name, and a fragment of the problem.
const BAD: &[(&str, &str, &str)] = &[
    ("listen = [\"nope\"]", "listen", "expected IP:PORT"),
    ("listen = 5", "listen", "expected a string or an array"),
    (
        "relay-ports = \"5000-4000\"",
        "relay-ports",
        "low end above high end",
    ),
    ("relay-ports = \"0-10\"", "relay-ports", "port 0"),
    ("relay-ports = \"5000\"", "relay-ports", "expected LO-HI"),
    ("relay-ports = \"1-70000\"", "relay-ports", "not a port"),
    ("relay-ports = 5", "relay-ports", "expected a string"),
    ("relay-ip = [\"1.2.3\"]", "relay-ip", "not an IP address"),
    ("realm = 3", "realm", "expected a string"),
    ("auth-secret = [1]", "auth-secret", "expected strings"),
    ("user = [\"nopassword\"]", "user", "NAME:PASSWORD"),
    ("user = [\"alice:\"]", "user", "empty password"),
    (
        "allow-peer = [\"10.0.0.0/40\"]",
        "allow-peer",
        "prefix length",
    ),
    (
        "deny-peer = [\"bogus\"]",
        "deny-peer",
        "not an IPv4 or IPv6 address",
    ),
    (
        "external-ip = [\"203.0.113.1/::1\"]",
        "external-ip",
        "different families",
    ),
    ("external-ip = [\"x\"]", "external-ip", "not an IP address"),
    ("workers = -1", "workers", "out of range"),
    ("workers = \"4\"", "workers", "expected an integer"),
    ("log-level = \"info,[\"", "log-level", ""),
    (
        "strict-channel-range = \"yes\"",
        "strict-channel-range",
        "true or false",
    ),
    (
        "max-allocations = 1.5",
        "max-allocations",
        "expected an integer",
    ),
    (
        "max-allocations-per-user = -3",
        "max-allocations-per-user",
        "out of range",
    ),
    (
        "bandwidth-per-allocation = -1",
        "bandwidth-per-allocation",
        "out of range",
    ),
    ("software = []", "software", "expected a string"),
    (
        "io-backend = \"dpdk\"",
        "io-backend",
        "expected one of auto, mmsg",
    ),
    (
        "default-lifetime = \"600\"",
        "default-lifetime",
        "expected an integer",
    ),
    ("max-lifetime = -5", "max-lifetime", "out of range"),
    (
        "nonce-lifetime = true",
        "nonce-lifetime",
        "expected an integer",
    ),
    (
        "alternate-server = \"somewhere\"",
        "alternate-server",
        "expected IP:PORT",
    ),
    (
        "nic-stats = 5",
        "nic-stats",
        "expected a string or an array",
    ),
    (
        "nic-stats = [\"auto\", \"eth0\"]",
        "nic-stats",
        "cannot be combined",
    ),
    ("nic-stats = [\"a/b\"]", "nic-stats", "no '/'"),
    (
        "nic-stats-interval = \"10\"",
        "nic-stats-interval",
        "expected an integer",
    ),
];

#[test]
fn nic_stats_selects_interfaces() {
    assert_eq!(Config::default().nic_stats, NicSelection::Auto);
    assert_eq!(
        Config::from_toml_str("nic-stats = \"off\"")
            .unwrap()
            .nic_stats,
        NicSelection::Off
    );
    let c =
        Config::from_toml_str("nic-stats = [\"ens5\", \"ens6\"]\nnic-stats-interval = 30").unwrap();
    assert_eq!(
        c.nic_stats,
        NicSelection::Interfaces(vec!["ens5".to_owned(), "ens6".to_owned()])
    );
    assert_eq!(c.nic_stats_interval, 30);
    let zero = Config {
        nic_stats_interval: 0,
        ..base()
    };
    assert_eq!(
        zero.validate().unwrap_err().key(),
        Some("nic-stats-interval")
    );
}

#[test]
fn uring_min_wait_is_read_and_capped() {
    let c = Config::from_toml_str("uring-min-wait-us = 250").unwrap();
    assert_eq!(c.uring_min_wait_us, 250);
    let ok = Config {
        uring_min_wait_us: 10_000,
        ..base()
    };
    assert!(ok.validate().is_ok());
    let long = Config {
        uring_min_wait_us: 10_001,
        ..base()
    };
    assert_eq!(
        long.validate().unwrap_err().key(),
        Some("uring-min-wait-us")
    );
    assert_eq!(
        Config::default().uring_min_wait_us,
        0,
        "off unless asked for"
    );
}

#[test]
fn every_parse_error_names_its_key() {
    for (text, key, fragment) in BAD {
        let err = Config::from_toml_str(text).unwrap_err();
        assert_eq!(err.key(), Some(*key), "{text}: {err}");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{key}: ")), "{text}: {msg}");
        assert!(msg.contains(fragment), "{text}: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
}

#[test]
fn relay_ports_error_reads_as_documented() {
    let err = Config::from_toml_str("relay-ports = \"5000-4000\"").unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"relay-ports: "5000-4000": low end above high end"#
    );
}

#[test]
fn secrets_are_never_echoed() {
    let err = Config::from_toml_str("user = [\"hunter2\"]").unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let err = Config::from_toml_str("realm = \"r\"\nlisten-port = 3478\n").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::Syntax { line: 2, .. }), "{msg}");
    assert!(msg.contains("listen-port"), "{msg}");
    // snake_case spellings are not keys either
    assert!(Config::from_toml_str("relay_ports = \"1-2\"").is_err());
}

#[test]
fn toml_syntax_error_has_a_line() {
    let err = Config::from_toml_str("realm = \"r\"\nworkers = = 3\n").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { line: 2, .. }), "{err}");
}

fn base() -> Config {
    Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        realm: "r".to_owned(),
        ..Config::default()
    }
}

#[test]
fn validation_errors_name_their_key() {
    let cases: Vec<(Config, &str)> = vec![
        (
            Config {
                listen: vec![],
                ..base()
            },
            "listen",
        ),
        (
            Config {
                listen: vec![
                    "127.0.0.1:1".parse().unwrap(),
                    "127.0.0.1:1".parse().unwrap(),
                ],
                ..base()
            },
            "listen",
        ),
        (
            Config {
                relay_ports: (10, 5),
                ..base()
            },
            "relay-ports",
        ),
        (
            Config {
                relay_ports: (0, 5),
                ..base()
            },
            "relay-ports",
        ),
        (
            Config {
                realm: String::new(),
                ..base()
            },
            "realm",
        ),
        (
            Config {
                auth_secret: vec![String::new()],
                ..base()
            },
            "auth-secret",
        ),
        (
            Config {
                user: vec![("a:b".to_owned(), "p".to_owned())],
                ..base()
            },
            "user",
        ),
        (
            Config {
                log_level: "info,[".to_owned(),
                ..base()
            },
            "log-level",
        ),
        (
            Config {
                default_lifetime: 0,
                ..base()
            },
            "default-lifetime",
        ),
        (
            Config {
                default_lifetime: 700,
                max_lifetime: 600,
                ..base()
            },
            "max-lifetime",
        ),
        (
            Config {
                nonce_lifetime: 0,
                ..base()
            },
            "nonce-lifetime",
        ),
        (
            Config {
                listen: vec!["0.0.0.0:3478".parse().unwrap()],
                ..base()
            },
            "relay-ip",
        ),
        (
            Config {
                relay_ip: vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()],
                ..base()
            },
            "relay-ip",
        ),
        (
            Config {
                relay_ip: vec!["0.0.0.0".parse().unwrap()],
                ..base()
            },
            "relay-ip",
        ),
        (
            Config {
                external_ip: vec![
                    "203.0.113.1".parse().unwrap(),
                    "203.0.113.2".parse().unwrap(),
                ],
                ..base()
            },
            "external-ip",
        ),
    ];
    for (config, key) in cases {
        let err = config.validate().unwrap_err();
        assert_eq!(err.key(), Some(key), "{err}");
        assert!(err.to_string().starts_with(key), "{err}");
    }
}

#[test]
fn relay_address_precedence() {
    // Listen address of the family, when specific.
    let v = base().validate().unwrap();
    assert_eq!(v.relay.v4.unwrap().bind, Ipv4Addr::LOCALHOST);
    assert!(v.relay.v6.is_none());
    // external-ip PRIVATE beats the listen address; PUBLIC is advertised.
    let c = Config {
        listen: vec!["0.0.0.0:3478".parse().unwrap()],
        external_ip: vec!["203.0.113.9/10.1.1.1".parse().unwrap()],
        ..base()
    };
    let a = c.validate().unwrap().relay.v4.unwrap();
    assert_eq!(
        (a.bind, a.advertised),
        (Ipv4Addr::new(10, 1, 1, 1), Ipv4Addr::new(203, 0, 113, 9))
    );
    // relay-ip beats both; a public-only external-ip is still advertised.
    let c = Config {
        relay_ip: vec!["127.0.0.2".parse().unwrap()],
        external_ip: vec!["203.0.113.9".parse().unwrap()],
        ..base()
    };
    let a = c.validate().unwrap().relay.v4.unwrap();
    assert_eq!(
        (a.bind, a.advertised),
        (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(203, 0, 113, 9))
    );
    // A relay family without a listener of that family is fine (REQUESTED-ADDRESS-FAMILY).
    let c = Config {
        relay_ip: vec!["::1".parse().unwrap()],
        ..base()
    };
    assert_eq!(
        c.validate().unwrap().relay.v6.unwrap().bind,
        Ipv6Addr::LOCALHOST
    );
}

#[test]
fn dev_default_is_loopback_with_fresh_credentials() {
    let a = Config::dev_default();
    let b = Config::dev_default();
    assert_eq!(a.realm, "tern.local");
    assert!(a
        .listen
        .iter()
        .all(|l| l.ip().is_loopback() && l.port() == 3478));
    assert!(a.relay_ip.iter().all(IpAddr::is_loopback));
    assert_eq!(a.relay_ports, (49152, 65535));
    assert_eq!(a.user[0].0, "tern");
    assert_ne!(a.user[0].1, b.user[0].1, "password is random");
    assert_ne!(a.auth_secret[0], b.auth_secret[0], "secret is random");
    assert!(a.auth_secret[0].len() >= 32);
    let allowed: Vec<String> = a.allow_peer.iter().map(ToString::to_string).collect();
    assert_eq!(allowed, vec!["127.0.0.0/8", "::1/128"]);
    let v = a.validate().unwrap();
    assert_eq!(v.relay.v4.unwrap().bind, Ipv4Addr::LOCALHOST);
    assert_eq!(v.relay.v6.unwrap().bind, Ipv6Addr::LOCALHOST);
}

#[test]
fn base_default_implies_nothing() {
    let c = Config::default();
    assert!(c.listen.is_empty() && c.allow_peer.is_empty());
    assert!(c.auth_secret.is_empty() && c.user.is_empty());
    assert_eq!(
        (c.default_lifetime, c.max_lifetime, c.nonce_lifetime),
        (600, 3600, 600)
    );
    assert_eq!(c.io_backend, IoBackend::Auto);
}

#[test]
fn io_backend_names_round_trip() {
    for name in IoBackend::NAMES {
        let b: IoBackend = name.parse().unwrap();
        assert_eq!(b.to_string(), *name);
    }
    assert_eq!(IoBackend::Auto.requested(), None);
    assert_eq!(
        IoBackend::Mmsg.requested(),
        Some(tern_io::BackendKind::Mmsg)
    );
}

#[test]
fn admin_keys() {
    let c = Config::from_toml_str("").unwrap();
    assert_eq!(c.admin, Some(DEFAULT_ADMIN));
    assert_eq!(c.admin_token, None);
    assert_eq!(c.drain_timeout, 3600);

    let c = Config::from_toml_str(
        "admin = \"off\"\nadmin-token = \"0123456789abcdef\"\ndrain-timeout = 30\n",
    )
    .unwrap();
    assert_eq!(c.admin, None);
    assert_eq!(c.admin_token.as_deref(), Some("0123456789abcdef"));
    assert_eq!(c.drain_timeout, 30);
    let c = Config::from_toml_str("admin = \"[::1]:9000\"\n").unwrap();
    assert_eq!(c.admin, Some("[::1]:9000".parse().unwrap()));

    let bad = [
        ("admin = \"localhost\"\n", "admin", "expected IP:PORT"),
        ("admin = 9641\n", "admin", "expected a string"),
        ("admin-token = \"short\"\n", "admin-token", "at least 16"),
        (
            "admin-token = \"has a space in it ok\"\n",
            "admin-token",
            "visible ASCII",
        ),
        ("drain-timeout = -1\n", "drain-timeout", "out of range"),
    ];
    for (text, key, fragment) in bad {
        let err = Config::from_toml_str(text).unwrap_err();
        assert_eq!(err.key(), Some(key), "{text}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(fragment), "{text}: {msg}");
        assert!(!msg.contains("short\""), "tokens are never echoed: {msg}");
    }
    let zero = Config {
        drain_timeout: 0,
        ..base()
    };
    assert_eq!(zero.validate().unwrap_err().key(), Some("drain-timeout"));
}

#[test]
fn registry_keys() {
    let c = Config::from_toml_str("").unwrap();
    assert_eq!(c.registry_url, None);
    assert_eq!((c.registry_interval, c.registry_ttl), (5, None));
    assert_eq!(base().validate().unwrap().registry, None);

    let c = Config::from_toml_str(
        "registry-url = \"redis://:s3cret@10.0.0.9:6380/4\"\nregion = \"eu-west-1\"\n\
         node = \"turn-7\"\nregistry-interval = 2\n",
    )
    .unwrap();
    let url = c.registry_url.as_ref().unwrap();
    assert_eq!((url.host(), url.port(), url.db()), ("10.0.0.9", 6380, 4));
    let r = c.registry().unwrap().unwrap();
    assert_eq!(r.key, "turn:node:eu-west-1:turn-7");
    assert_eq!(r.interval, Duration::from_secs(2));
    assert_eq!(r.ttl, Duration::from_secs(6), "three intervals by default");
    let with_base = Config {
        registry_url: c.registry_url.clone(),
        region: c.region.clone(),
        ..base()
    };
    let validated = with_base.validate().unwrap();
    let summary = with_base.summary(&validated);
    assert!(!summary.contains("s3cret"), "{summary}");
    assert!(summary.contains("registry redis://:***@10.0.0.9:6380/4 as turn:node:eu-west-1:"));
    // The node defaults to the host name.
    let host = nix::unistd::gethostname().unwrap();
    assert_eq!(
        validated.registry.unwrap().key,
        format!("turn:node:eu-west-1:{}", host.to_string_lossy())
    );

    let bad = [
        (
            "registry-url = \"redis://h:99999\"\n",
            "registry-url",
            "not a port",
        ),
        (
            "registry-url = \"redis://:hunter2@h:0\"\n",
            "registry-url",
            "not a port",
        ),
        ("registry-url = 6379\n", "registry-url", "expected a string"),
        (
            "registry-url = \"tcp://h\"\n",
            "registry-url",
            "not supported",
        ),
        ("region = \"eu west\"\n", "region", "only letters"),
        ("node = \"\"\n", "node", "must not be empty"),
        (
            "registry-interval = -1\n",
            "registry-interval",
            "out of range",
        ),
        (
            "registry-ttl = \"15\"\n",
            "registry-ttl",
            "expected an integer",
        ),
    ];
    for (text, key, fragment) in bad {
        let err = Config::from_toml_str(text).unwrap_err();
        assert_eq!(err.key(), Some(key), "{text}: {err}");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("{key}: ")), "{text}: {msg}");
        assert!(msg.contains(fragment), "{text}: {msg}");
        assert!(
            !msg.contains("hunter2"),
            "passwords are never echoed: {msg}"
        );
    }

    let url = Some(RegistryUrl::parse("redis://127.0.0.1").unwrap());
    let cases = [
        (
            Config {
                registry_url: url.clone(),
                ..base()
            },
            "region",
            "required with registry-url",
        ),
        (
            Config {
                registry_interval: 0,
                ..base()
            },
            "registry-interval",
            "at least 1 second",
        ),
        (
            Config {
                registry_interval: 5,
                registry_ttl: Some(5),
                ..base()
            },
            "registry-ttl",
            "must exceed registry-interval (5 s)",
        ),
    ];
    for (config, key, fragment) in cases {
        let err = config.validate().unwrap_err();
        assert_eq!(err.key(), Some(key), "{err}");
        assert!(err.to_string().contains(fragment), "{err}");
    }
    let ok = Config {
        registry_url: url,
        region: "test".to_owned(),
        node: Some("n1".to_owned()),
        registry_interval: 1,
        registry_ttl: Some(2),
        ..base()
    };
    let r = ok.validate().unwrap().registry.unwrap();
    assert_eq!((r.key.as_str(), r.ttl.as_secs()), ("turn:node:test:n1", 2));
}

#[test]
fn stream_transport_keys() {
    let c = Config::from_toml_str(
        r#"
realm = "r"
listen = ["127.0.0.1:3478"]
listen-tcp = ["127.0.0.1:3478", "[::1]:3478"]
listen-tls = "127.0.0.1:443"
tls-cert = "/etc/tern/cert.pem"
tls-key = "/etc/tern/key.pem"
max-connections = 500
max-connections-per-source = 8
stream-idle-timeout = 12
tls-handshake-timeout = 4
"#,
    )
    .unwrap();
    assert_eq!(c.listen_tcp.len(), 2);
    assert_eq!(c.listen_tls, vec!["127.0.0.1:443".parse().unwrap()]);
    assert_eq!(c.tls_cert, Some(PathBuf::from("/etc/tern/cert.pem")));
    assert_eq!(c.tls_key, Some(PathBuf::from("/etc/tern/key.pem")));
    assert_eq!((c.max_connections, c.max_connections_per_source), (500, 8));
    assert_eq!((c.stream_idle_timeout, c.tls_handshake_timeout), (12, 4));
    let v = c.validate().unwrap();
    let summary = c.summary(&v);
    assert!(
        summary.contains("tcp [::1]:3478") && summary.contains("tls 127.0.0.1:443"),
        "{summary}"
    );
    let d = Config::default();
    assert_eq!(
        (d.max_connections, d.max_connections_per_source),
        (10_000, 64)
    );
    assert_eq!((d.stream_idle_timeout, d.tls_handshake_timeout), (30, 10));

    for (text, key, fragment) in [
        ("listen-tcp = [\"x\"]", "listen-tcp", "expected IP:PORT"),
        ("listen-tls = 3", "listen-tls", "expected a string"),
        ("tls-cert = 1", "tls-cert", "expected a string"),
        ("max-connections = -1", "max-connections", "out of range"),
        (
            "stream-idle-timeout = \"5\"",
            "stream-idle-timeout",
            "expected an integer",
        ),
    ] {
        let err = Config::from_toml_str(text).unwrap_err();
        assert_eq!(err.key(), Some(key), "{text}: {err}");
        assert!(err.to_string().contains(fragment), "{text}: {err}");
    }

    let tls = |cert: bool, key: bool, listen: bool| Config {
        tls_cert: cert.then(|| PathBuf::from("c.pem")),
        tls_key: key.then(|| PathBuf::from("k.pem")),
        listen_tls: if listen {
            vec!["127.0.0.1:0".parse().unwrap()]
        } else {
            vec![]
        },
        ..base()
    };
    assert!(tls(true, true, true).validate().is_ok());
    assert!(tls(false, false, false).validate().is_ok());
    assert_eq!(
        tls(true, false, true).validate().unwrap_err().key(),
        Some("listen-tls")
    );
    assert_eq!(
        tls(false, false, true).validate().unwrap_err().key(),
        Some("listen-tls")
    );
    assert_eq!(
        tls(true, true, false).validate().unwrap_err().key(),
        Some("tls-cert")
    );
    let clash = Config {
        listen_tcp: vec!["127.0.0.1:443".parse().unwrap()],
        listen_tls: vec!["127.0.0.1:443".parse().unwrap()],
        tls_cert: Some(PathBuf::from("c.pem")),
        tls_key: Some(PathBuf::from("k.pem")),
        ..base()
    };
    assert_eq!(clash.validate().unwrap_err().key(), Some("listen-tls"));
    // DTLS shares the certificate: it needs the pair too, and its own UDP port.
    let dtls = |cert: bool| Config {
        tls_cert: cert.then(|| PathBuf::from("c.pem")),
        tls_key: cert.then(|| PathBuf::from("k.pem")),
        listen_dtls: vec!["127.0.0.1:5349".parse().unwrap()],
        ..base()
    };
    accepted_with_dtls(&dtls(true));
    assert_eq!(
        dtls(false).validate().unwrap_err().key(),
        Some("listen-dtls")
    );
    let text = "listen-dtls = [\"127.0.0.1:5349\"]\ntls-cert = \"c.pem\"\ntls-key = \"k.pem\"\n";
    let parsed = Config::from_toml_str(text).unwrap();
    assert_eq!(parsed.listen_dtls, vec!["127.0.0.1:5349".parse().unwrap()]);
    let alone = Config {
        listen: vec![],
        ..dtls(true)
    };
    accepted_with_dtls(&alone);
    let udp_clash = Config {
        listen: vec!["127.0.0.1:5349".parse().unwrap()],
        ..dtls(true)
    };
    assert_eq!(udp_clash.validate().unwrap_err().key(), Some("listen-dtls"));
    let zero = Config {
        stream_idle_timeout: 0,
        ..base()
    };
    assert_eq!(
        zero.validate().unwrap_err().key(),
        Some("stream-idle-timeout")
    );
    // A TCP-only relay is a relay.
    let tcp_only = Config {
        listen: vec![],
        listen_tcp: vec!["127.0.0.1:0".parse().unwrap()],
        ..base()
    };
    assert!(tcp_only.validate().is_ok());
}

/// A valid DTLS configuration: accepted by a tern built with the `dtls`
/// feature, refused with an error naming the feature by one without it.
fn accepted_with_dtls(c: &Config) {
    let validated = c.validate();
    if cfg!(feature = "dtls") {
        assert!(validated.is_ok(), "{:?}", validated.err());
    } else {
        let e = validated.unwrap_err();
        assert_eq!(e.key(), Some("listen-dtls"));
        assert!(e.to_string().contains("built with --features dtls"), "{e}");
    }
}

/// `listen-dtls` parses (file and flag) in every build; without the `dtls`
/// feature validation refuses it and says which feature is missing.
#[test]
fn listen_dtls_parses_in_every_build_and_needs_the_feature() {
    use clap::Parser as _;
    let text = "realm = \"r\"\nlisten-dtls = [\"127.0.0.1:0\"]\n\
                tls-cert = \"c.pem\"\ntls-key = \"k.pem\"\n";
    let from_file = Config::from_toml_str(text).unwrap();
    let cli = crate::cli::Cli::try_parse_from([
        "tern",
        "--realm",
        "r",
        "--listen-dtls",
        "127.0.0.1:0",
        "--tls-cert",
        "c.pem",
        "--tls-key",
        "k.pem",
    ])
    .unwrap();
    let mut from_flags = Config::default();
    cli.flags.apply(&mut from_flags);
    for c in [from_file, from_flags] {
        assert_eq!(c.listen_dtls, vec!["127.0.0.1:0".parse().unwrap()]);
        accepted_with_dtls(&c);
    }
    if !cfg!(feature = "dtls") {
        let e = Config::from_toml_str(text).unwrap().validate().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("listen-dtls: needs a tern built with --features dtls"),
            "{e}"
        );
    }
}

#[test]
fn sfu_keys_parse_and_are_checked() {
    let c = Config::from_toml_str(
        "sfu = true\nsfu-ports = \"30000-30099\"\nsfu-ip = \"10.0.0.9\"\nrealm = \"r\"\nlisten = [\"127.0.0.1:3478\"]",
    )
    .unwrap();
    assert!(c.sfu);
    assert_eq!(c.sfu_ports, (30000, 30099));
    assert_eq!(c.sfu_ip, Some("10.0.0.9".parse().unwrap()));
    if let Err(e) = c.validate() {
        panic!("{e}");
    }
    assert_eq!(Config::default().sfu_ports, DEFAULT_SFU_PORTS);
    for (text, problem) in [
        ("sfu = \"yes\"", "sfu"),
        ("sfu-ports = \"5-1\"", "sfu-ports"),
        ("sfu-ip = \"nope\"", "sfu-ip"),
    ] {
        let e = Config::from_toml_str(text).unwrap_err();
        assert_eq!(e.key(), Some(problem), "{text}: {e}");
    }
    // The SFU's ports may not overlap the TURN relay ports.
    let overlap = Config::from_toml_str(
        "sfu = true\nsfu-ports = \"50000-50010\"\nrealm = \"r\"\nlisten = [\"127.0.0.1:3478\"]",
    )
    .unwrap();
    let e = overlap.validate().unwrap_err();
    assert_eq!(e.key(), Some("sfu-ports"), "{e}");
}
