//! The relay under test: an in-process `tern::Relay` with loopback-only test defaults, and
//! the `tern` binary built from this workspace.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use tern::{Config, Relay, RelayHandle, StatsSnapshot};

use crate::ports::{self, V4, V6};

/// Realm every test relay uses.
pub const REALM: &str = "tern.test";
/// REST shared secret every test relay accepts.
pub const SECRET: &str = "tern-test-secret";
/// Long-term user every test relay knows.
pub const USER: &str = "alice";
/// That user's password.
pub const PASSWORD: &str = "wonderland";

/// Test defaults: listen on `127.0.0.1:0` (and `[::1]:0` when IPv6 loopback works), relay
/// on loopback in a probed-free 200-port window, realm [`REALM`], REST secret [`SECRET`],
/// user [`USER`]:[`PASSWORD`], loopback peers allowed, two workers.
pub fn test_config() -> Config {
    let v6 = ports::ipv6_loopback_available();
    let ips: Vec<IpAddr> = if v6 { vec![V4, V6] } else { vec![V4] };
    let mut c = Config::dev_default();
    c.listen = ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect();
    c.relay_ip = ips.clone();
    c.relay_ports = ports::free_port_window(200, &ips);
    c.realm = REALM.to_owned();
    c.auth_secret = vec![SECRET.to_owned()];
    c.user = vec![(USER.to_owned(), PASSWORD.to_owned())];
    c.allow_peer = vec![
        "127.0.0.0/8".parse().expect("CIDR literal"),
        "::1/128".parse().expect("CIDR literal"),
    ];
    c.deny_peer = Vec::new();
    c.workers = 2;
    c.io_backend = io_backend_under_test();
    c
}

/// The packet I/O back end the tests run on: `TERN_TEST_IO_BACKEND` (`auto`,
/// `mmsg`, `uring`) when set, so CI runs the whole suite once per back end.
pub fn io_backend_under_test() -> tern::config::IoBackend {
    match std::env::var("TERN_TEST_IO_BACKEND") {
        Ok(name) => name
            .parse()
            .unwrap_or_else(|e| panic!("TERN_TEST_IO_BACKEND={name}: {e}")),
        Err(_) => tern::config::IoBackend::Auto,
    }
}

/// A running in-process relay, shut down on drop.
pub struct TestRelay {
    handle: Option<RelayHandle>,
    listen: Vec<SocketAddr>,
}

impl std::fmt::Debug for TestRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRelay")
            .field("listen", &self.listen)
            .finish()
    }
}

impl TestRelay {
    /// Starts a relay with [`test_config`].
    pub fn start() -> TestRelay {
        Self::start_with(test_config())
    }

    /// Starts a relay with `config` (start from [`test_config`] and change what matters).
    pub fn start_with(config: Config) -> TestRelay {
        let handle = match Relay::start(config) {
            Ok(h) => h,
            Err(e) => panic!("tern::Relay::start failed: {e:?}"),
        };
        let listen = handle.listen_addrs();
        assert!(!listen.is_empty(), "relay reports no listening address");
        for a in &listen {
            assert_ne!(
                a.port(),
                0,
                "listen_addrs() must report bound ports: {listen:?}"
            );
        }
        TestRelay {
            handle: Some(handle),
            listen,
        }
    }

    /// The IPv4 listening address.
    pub fn v4(&self) -> SocketAddr {
        *self
            .listen
            .iter()
            .find(|a| a.is_ipv4())
            .expect("an IPv4 listener")
    }

    /// The IPv6 listening address, if the relay has one.
    pub fn v6(&self) -> Option<SocketAddr> {
        self.listen.iter().find(|a| a.is_ipv6()).copied()
    }

    /// All listening addresses.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    /// The relay's handle.
    pub fn handle(&self) -> &RelayHandle {
        self.handle.as_ref().expect("running")
    }

    /// A statistics snapshot.
    pub fn stats(&self) -> StatsSnapshot {
        self.handle().stats()
    }

    /// The TURN counters summed over all workers.
    pub fn turn_stats(&self) -> tern_turn::Stats {
        self.stats().turn.clone()
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }
}

/// Path of the `tern` binary of this workspace, built (once per test process) with
/// `cargo build -p tern --bin tern` into the same target directory and profile as the
/// running test, with the features of the linked `tern` library ([`tern::FEATURES`]),
/// so the test never runs a stale binary.
pub fn tern_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // <target>/<profile>/deps/<test>-<hash>
        let profile_dir = exe
            .parent()
            .and_then(|d| d.parent())
            .expect("test binary lives in <target>/<profile>/deps")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("<target>").to_path_buf();
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_owned();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let mut cmd = Command::new(cargo);
        // The variables cargo set for this test process describe tern-tests, not the
        // build: ring's fingerprint tracks CARGO_MANIFEST_DIR, so passing them on made
        // every call rebuild ring, rustls and tern (and the next `cargo test` rebuild
        // them back), ~30 s each time.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .contains(&k.as_ref())
            {
                cmd.env_remove(&key);
            }
        }
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "tern",
            "--bin",
            "tern",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir);
        // The features the linked library has (`--features tern/xdp,tern/dtls`
        // in tests/run-all.sh): a binary that can run what the tests ask of
        // it, and no rebuild of tern without them (and back) on every run.
        if !tern::FEATURES.is_empty() {
            cmd.arg("--features").arg(tern::FEATURES.join(","));
        }
        if profile != "debug" {
            cmd.args([
                "--profile",
                if profile == "release" {
                    "release"
                } else {
                    &profile
                },
            ]);
        }
        let status = cmd.status().expect("run cargo build for the tern binary");
        assert!(
            status.success(),
            "cargo build -p tern --bin tern failed: {status}"
        );
        let bin = profile_dir.join("tern");
        assert!(bin.is_file(), "{} missing after build", bin.display());
        bin
    })
    .clone()
}
