//! The Redis load registry against a real `redis-server` (spawned here on a
//! free loopback port, killed by PID when the test ends): the `/load`
//! document appears under `turn:node:{region}:{node}`, says "draining" at
//! once on a drain, is deleted on a clean stop, expires by its TTL when the
//! process is killed, and comes back after Redis restarts.
//!
//! Without `redis-server` the tests print a skip line and pass, unless
//! `TERN_REQUIRE_INTEROP=1`, which makes them fail.
#![allow(clippy::disallowed_methods)] // timeouts need the clock

mod common;
mod ports;
use ports::{free_relay_ports, free_relay_range};

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use tern::registry::{RegistryUrl, Resp};
use tern::{Config, DrainCause, Relay, RelayHandle};
use tern_stun::Class;

/// A `redis-server` child on a loopback port; killed (by its PID) on drop.
struct RedisServer {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl RedisServer {
    /// Start one on a free port; `None` (after the skip line) when
    /// `redis-server` is not installed.
    fn start(extra: &[&str]) -> Option<RedisServer> {
        if !installed() {
            return None;
        }
        for _ in 0..5 {
            if let Some(r) = RedisServer::start_on(free_port(), extra) {
                return Some(r);
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Start one on `port`; `None` when it exits or does not answer within 5 s.
    fn start_on(port: u16, extra: &[&str]) -> Option<RedisServer> {
        let dir = std::env::temp_dir().join(format!("tern-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let password = extra
            .windows(2)
            .find(|w| w[0] == "--requirepass")
            .map(|w| w[1]);
        let url = url(port, password, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return None;
            }
            if Resp::connect(&url, Duration::from_secs(1))
                .and_then(|mut c| c.command(&[b"PING"]))
                .is_ok()
            {
                return Some(RedisServer { child, port, dir });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Kill it (by PID) and wait for it.
    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn installed() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        let line = "redis-server not installed (apt-get install redis-server)";
        if std::env::var("TERN_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
            panic!("TERN_REQUIRE_INTEROP=1 but {line}");
        }
        eprintln!("skipped: {line}");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn url(port: u16, password: Option<&str>, db: u32) -> RegistryUrl {
    let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
    RegistryUrl::parse(&format!("redis://{auth}127.0.0.1:{port}/{db}")).unwrap()
}

/// The registry entry at `key`, parsed, or `None` when there is none.
fn entry(url: &RegistryUrl, key: &str) -> Option<Value> {
    let mut c = Resp::connect(url, Duration::from_secs(1)).unwrap();
    let raw = c.get(key).unwrap()?;
    Some(
        serde_json::from_slice(&raw)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&raw))),
    )
}

/// Poll until the entry satisfies `check`; the last entry seen otherwise.
fn wait_entry(
    url: &RegistryUrl,
    key: &str,
    within: Duration,
    check: impl Fn(&Option<Value>) -> bool,
) -> Result<Option<Value>, Option<Value>> {
    let deadline = Instant::now() + within;
    loop {
        let e = entry(url, key);
        if check(&e) {
            return Ok(e);
        }
        if Instant::now() > deadline {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn state_is(e: &Option<Value>, state: &str) -> bool {
    e.as_ref().is_some_and(|v| v["state"] == state)
}

fn config(ports: (u16, u16), registry: RegistryUrl, node: &str, interval: u64, ttl: u64) -> Config {
    let mut c = Config::dev_default();
    c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.relay_ip = vec!["127.0.0.1".parse().unwrap()];
    c.relay_ports = ports;
    c.realm = REALM.to_owned();
    c.user = vec![(USER.to_owned(), PASSWORD.to_owned())];
    c.workers = 2;
    c.admin = Some("127.0.0.1:0".parse().unwrap());
    c.registry_url = Some(registry);
    c.region = "test".to_owned();
    c.node = Some(node.to_owned());
    c.registry_interval = interval;
    c.registry_ttl = Some(ttl);
    c
}

fn publications(admin: SocketAddr) -> (f64, f64) {
    let m = parse_prometheus(&get(admin, "/metrics").body);
    (
        m["tern_registry_publish_total{result=\"ok\"}"],
        m["tern_registry_publish_total{result=\"error\"}"],
    )
}

#[test]
fn entry_follows_the_lifecycle_and_is_deleted_on_stop() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let url = url(redis.port, None, 0);
    let key = "turn:node:test:n1";
    let relay = Relay::start(config(free_relay_ports(100), url.clone(), "n1", 1, 2)).unwrap();
    let admin = relay.admin_addr().unwrap();

    let active = wait_entry(&url, key, Duration::from_secs(5), |e| state_is(e, "active"))
        .unwrap_or_else(|e| panic!("never active: {e:?}"))
        .unwrap();
    assert_eq!(active["allocations"], 0, "{active}");
    assert_eq!(active["ready"], true, "{active}");
    assert_eq!(active["workers"], 2, "{active}");
    assert_eq!(active["version"], env!("CARGO_PKG_VERSION"), "{active}");
    // The same document /load serves (its fields, not its moving rates).
    let load: Value = serde_json::from_str(&get(admin, "/load").body).unwrap();
    let fields = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(fields(&active), fields(&load));
    let ttl = Resp::connect(&url, Duration::from_secs(1))
        .unwrap()
        .ttl(key)
        .unwrap();
    assert!(
        (1..=2).contains(&ttl),
        "TTL {ttl} is within registry-ttl = 2"
    );

    // It is refreshed every second: a live allocation shows up.
    let mut client = Turn::new(relay.listen_addrs()[0]);
    assert_eq!(client.allocate().class, Class::Success);
    let busy = wait_entry(&url, key, Duration::from_secs(5), |e| {
        e.as_ref().is_some_and(|v| v["allocations"] == 1)
    });
    assert!(busy.is_ok(), "allocation never published: {busy:?}");

    relay.drain(DrainCause::Admin);
    let draining = wait_entry(&url, key, Duration::from_secs(3), |e| {
        state_is(e, "draining")
    });
    assert!(draining.is_ok(), "never draining: {draining:?}");
    assert_eq!(draining.unwrap().unwrap()["ready"], false);

    let (ok, error) = publications(admin);
    assert!(ok >= 3.0, "ok = {ok}");
    assert_eq!(error, 0.0);

    relay.shutdown();
    assert_eq!(entry(&url, key), None, "a clean stop deletes the entry");
}

/// With a 60 s interval only the lifecycle changes themselves can publish
/// "active" and "draining" within seconds.
#[test]
fn lifecycle_changes_publish_at_once() {
    let Some(redis) = RedisServer::start(&[]) else {
        return;
    };
    let url = url(redis.port, None, 0);
    let key = "turn:node:test:n3";
    let relay: RelayHandle =
        Relay::start(config(free_relay_ports(100), url.clone(), "n3", 60, 180)).unwrap();
    let active = wait_entry(&url, key, Duration::from_secs(5), |e| state_is(e, "active"));
    assert!(active.is_ok(), "never active: {active:?}");
    let mut client = Turn::new(relay.listen_addrs()[0]);
    assert_eq!(client.allocate().class, Class::Success);
    relay.drain(DrainCause::Admin);
    let draining = wait_entry(&url, key, Duration::from_secs(5), |e| {
        state_is(e, "draining")
    });
    assert!(
        draining.is_ok(),
        "drain not published at once: {draining:?}"
    );
    relay.undrain().unwrap();
    let back = wait_entry(&url, key, Duration::from_secs(5), |e| state_is(e, "active"));
    assert!(back.is_ok(), "undrain not published at once: {back:?}");
    drop(relay);
    assert_eq!(
        entry(&url, key),
        None,
        "dropping the handle deletes the entry"
    );
}

/// The binary, killed without a chance to clean up: the entry outlives it
/// only by its TTL. Also: a password (AUTH), a database (SELECT) and the
/// URL from the environment.
#[test]
fn a_killed_relay_expires_by_ttl() {
    let Some(redis) = RedisServer::start(&["--requirepass", "s3cret"]) else {
        return;
    };
    let url = url(redis.port, Some("s3cret"), 3);
    let key = "turn:node:test:n2";
    let mut d = Daemon::start(
        &free_relay_range(100),
        &[
            "--region",
            "test",
            "--node",
            "n2",
            "--registry-interval",
            "1",
            "--registry-ttl",
            "2",
        ],
        &[("TERN_REGISTRY_URL", &url_text(redis.port, "s3cret", 3))],
    );
    let active = wait_entry(&url, key, Duration::from_secs(5), |e| state_is(e, "active"));
    assert!(active.is_ok(), "never active: {active:?}");
    let db0 = self::url(redis.port, Some("s3cret"), 0);
    assert_eq!(entry(&db0, key), None, "written to database 3 only");
    let ttl = Resp::connect(&url, Duration::from_secs(1))
        .unwrap()
        .ttl(key)
        .unwrap();
    assert!(
        (1..=2).contains(&ttl),
        "TTL {ttl} is within registry-ttl = 2"
    );

    d.signal(Signal::SIGKILL);
    let killed = Instant::now();
    d.exited_within(Duration::from_secs(5)).expect("killed");
    let gone = wait_entry(&url, key, Duration::from_secs(5), Option::is_none);
    assert!(gone.is_ok(), "entry outlived its TTL: {gone:?}");
    assert!(
        killed.elapsed() <= Duration::from_millis(3500),
        "expired {:?} after the kill (ttl 2 s)",
        killed.elapsed()
    );
}

fn url_text(port: u16, password: &str, db: u32) -> String {
    format!("redis://:{password}@127.0.0.1:{port}/{db}")
}

/// Redis unreachable at start, then up, then restarted (losing every key):
/// the relay keeps serving, counts the failures, reconnects, and publishes again.
#[test]
fn publishing_survives_redis_outages() {
    if !installed() {
        return;
    }
    let port = free_port();
    let url = url(port, None, 0);
    let key = "turn:node:test:n4";
    let relay = Relay::start(config(free_relay_ports(100), url.clone(), "n4", 1, 3)).unwrap();
    let admin = relay.admin_addr().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || publications(admin).1 >= 1.0),
        "no failed publication counted: {:?}",
        publications(admin)
    );
    assert!(
        eventually(Duration::from_secs(5), || get(admin, "/readyz").status
            == 200),
        "a missing registry does not make the relay unready"
    );

    let Some(mut redis) = RedisServer::start_on(port, &[]) else {
        panic!("redis-server did not start on port {port}");
    };
    let up = wait_entry(&url, key, Duration::from_secs(15), |e| {
        state_is(e, "active")
    });
    assert!(up.is_ok(), "not published after Redis came up: {up:?}");

    redis.stop();
    let Some(_redis) = RedisServer::start_on(port, &[]) else {
        panic!("redis-server did not restart on port {port}");
    };
    let again = wait_entry(&url, key, Duration::from_secs(15), |e| {
        state_is(e, "active")
    });
    assert!(
        again.is_ok(),
        "not published after Redis restarted: {again:?}"
    );
    let (ok, error) = publications(admin);
    assert!(ok >= 2.0 && error >= 1.0, "ok {ok}, error {error}");

    relay.shutdown();
    assert_eq!(entry(&url, key), None);
}
