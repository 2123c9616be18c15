//! The admin endpoint of an in-process relay: /metrics, /healthz, /readyz,
//! /load, the drain switch and its token, and hostile HTTP.
#![allow(clippy::disallowed_methods)] // timeouts need the clock

mod common;
mod ports;
use ports::free_relay_ports;

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use tern::{Config, DrainCause, Lifecycle, Relay, RelayHandle};
use tern_stun::Class;

fn config(ports: (u16, u16)) -> Config {
    let mut c = Config::dev_default();
    c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.relay_ip = vec!["127.0.0.1".parse().unwrap()];
    c.relay_ports = ports;
    c.realm = REALM.to_owned();
    c.user = vec![(USER.to_owned(), PASSWORD.to_owned())];
    c.workers = 2;
    c.admin = Some("127.0.0.1:0".parse().unwrap());
    c.admin_token = Some(TOKEN.to_owned());
    c.io_backend = test_io_backend();
    c
}

/// Start and wait until /readyz says 200.
fn start(config: Config) -> (RelayHandle, SocketAddr) {
    let relay = Relay::start(config).unwrap();
    let admin = relay.admin_addr().expect("admin endpoint bound");
    assert_ne!(admin.port(), 0);
    assert!(
        eventually(Duration::from_secs(5), || get(admin, "/readyz").status
            == 200),
        "never ready: {:?}",
        get(admin, "/readyz")
    );
    assert_eq!(relay.lifecycle(), Lifecycle::Active);
    (relay, admin)
}

fn metrics(admin: SocketAddr) -> Samples {
    let a = get(admin, "/metrics");
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.head.contains("text/plain; version=0.0.4"), "{}", a.head);
    parse_prometheus(&a.body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn metrics_parse_and_move_with_traffic() {
    let (relay, admin) = start(config(free_relay_ports(100)));
    let before = metrics(admin);
    assert_eq!(before["tern_allocations_active"], 0.0);
    assert_eq!(before["tern_state{state=\"active\"}"], 1.0);
    assert_eq!(before["tern_state{state=\"draining\"}"], 0.0);
    let version = env!("CARGO_PKG_VERSION");
    let backend = relay.backend().name();
    assert_eq!(
        before[&format!("tern_build_info{{version=\"{version}\",backend=\"{backend}\"}}")],
        1.0
    );
    for reason in tern_turn::DropReason::ALL {
        assert!(
            before.contains_key(&format!(
                "tern_drops_total{{reason=\"{}\"}}",
                reason.as_str()
            )),
            "no drop series for {}",
            reason.as_str()
        );
    }
    for reason in tern_turn::AuthFailure::ALL {
        assert!(before.contains_key(&format!(
            "tern_auth_failures_total{{reason=\"{}\"}}",
            reason.as_str()
        )));
    }
    for w in ["0", "1"] {
        assert!(before.contains_key(&format!(
            "tern_worker_loop_seconds_bucket{{worker=\"{w}\",le=\"+Inf\"}}"
        )));
    }
    // The back end in use, with the probe's reason as a label.
    let info_prefix = format!("tern_io_backend_info{{backend=\"{backend}\",reason=\"");
    let info: Vec<_> = before
        .iter()
        .filter(|(k, _)| k.starts_with(&info_prefix))
        .collect();
    assert_eq!(info.len(), 1, "{before:?}");
    assert_eq!(*info[0].1, 1.0);
    assert!(
        info[0].0.len() > info_prefix.len() + 3,
        "empty reason: {}",
        info[0].0
    );
    assert!(before["process_cpu_seconds_total"] > 0.0);
    assert!(before["process_resident_memory_bytes"] > 0.0);

    let mut client = Turn::new(relay.listen_addrs()[0]);
    let a = client.allocate();
    assert_eq!(a.class, Class::Success, "{a:?}");
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let b = client.channel_bind(0x4000, peer.local_addr().unwrap());
    assert_eq!(b.class, Class::Success, "{b:?}");
    for i in 0..5u8 {
        client.relay_via_channel(0x4000, &peer, &[i; 100]);
    }
    // Peer → client too.
    peer.send_to(&[9u8; 50], a.relayed.unwrap()).unwrap();
    let mut buf = [0u8; 200];
    client.socket.recv_from(&mut buf).unwrap();

    // Workers report once a second: the counters show up within a few.
    let to_peer =
        format!("tern_packets_relayed_total{{direction=\"to_peer\",backend=\"{backend}\"}}");
    let to_client =
        format!("tern_packets_relayed_total{{direction=\"to_client\",backend=\"{backend}\"}}");
    let mut after = Samples::new();
    assert!(
        eventually(Duration::from_secs(5), || {
            after = metrics(admin);
            after[&to_peer] >= 5.0
                && after[&to_client] >= 1.0
                && after["tern_allocation_latency_seconds_count"] >= 1.0
        }),
        "counters did not move: {after:?}"
    );
    assert_eq!(after["tern_allocations_active"], 1.0);
    assert!(after["tern_allocations_created_total"] >= 1.0);
    assert!(after["tern_channels_bound_total"] >= 1.0);
    assert!(after["tern_permissions_created_total"] >= 1.0);
    assert!(
        after[&format!("tern_bytes_relayed_total{{direction=\"to_peer\",backend=\"{backend}\"}}")]
            >= 500.0
    );
    assert!(after["tern_auth_failures_total{reason=\"challenge\"}"] >= 1.0);
    // Every relayed datagram has a relay latency sample; the report that carries
    // the packet counters carries the histogram, so one scrape agrees exactly.
    let relay_latency: f64 = ["0", "1"]
        .iter()
        .map(|w| after[&format!("tern_relay_latency_seconds_count{{worker=\"{w}\"}}")])
        .sum();
    assert_eq!(relay_latency, after[&to_peer] + after[&to_client]);
    let relay_latency_sum: f64 = ["0", "1"]
        .iter()
        .map(|w| after[&format!("tern_relay_latency_seconds_sum{{worker=\"{w}\"}}")])
        .sum();
    assert!(relay_latency_sum > 0.0);
    assert!(after["tern_io_rx_datagrams_total"] >= 6.0);
    assert!(after["tern_io_tx_datagrams_total"] >= 6.0);
    assert!(after["tern_io_rx_batches_total"] >= 1.0);
    assert!(after["tern_io_tx_syscalls_total"] >= 1.0);
    let loops: f64 = ["0", "1"]
        .iter()
        .map(|w| after[&format!("tern_worker_loop_seconds_count{{worker=\"{w}\"}}")])
        .sum();
    assert!(loops > before["tern_worker_loop_seconds_count{worker=\"0\"}"]);
    relay.shutdown();
}

#[test]
fn health_readiness_and_load() {
    let mut c = config(free_relay_ports(100));
    c.max_allocations = 100;
    let (relay, admin) = start(c);
    let h = get(admin, "/healthz");
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    assert!(h.head.contains("Connection: close"), "{}", h.head);
    let head = http_raw(admin, b"HEAD /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body");

    let load = get(admin, "/load");
    assert_eq!(load.status, 200);
    assert!(load.head.contains("application/json"));
    let j = json(&load.body);
    assert_eq!(j["state"], "active");
    assert_eq!(j["ready"], true);
    assert_eq!(j["allocations"], 0);
    assert_eq!(j["capacity"], 100);
    assert_eq!(j["workers"], 2);
    assert_eq!(j["workers_reporting"], 2);
    assert_eq!(j["backend"], relay.backend().name());
    for key in [
        "packets_per_second",
        "bits_per_second",
        "cpu_fraction",
        "interval_seconds",
    ] {
        assert!(j[key].is_number(), "{key} in {j}");
    }

    assert_eq!(get(admin, "/nope").status, 404);
    let wrong = post(admin, "/metrics", None);
    assert_eq!(wrong.status, 405);
    assert!(wrong.head.contains("Allow: GET, HEAD"));
    assert_eq!(get(admin, "/admin/drain").status, 405);

    relay.drain(DrainCause::Admin);
    // At once, not at the next report.
    let r = get(admin, "/readyz");
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body.contains("draining") || r.body.contains("drained"),
        "{r:?}"
    );
    assert_eq!(get(admin, "/healthz").status, 200, "alive while draining");
    relay.shutdown();
}

#[test]
fn load_capacity_is_null_without_a_cap() {
    let (relay, admin) = start(config(free_relay_ports(100)));
    let j = json(&get(admin, "/load").body);
    assert!(j["capacity"].is_null(), "{j}");
    relay.shutdown();
}

#[test]
fn admin_drain_needs_the_token_and_keeps_live_allocations() {
    let (relay, admin) = start(config(free_relay_ports(100)));
    let server = relay.listen_addrs()[0];
    let mut old = Turn::new(server);
    assert_eq!(old.allocate().class, Class::Success);

    assert_eq!(post(admin, "/admin/drain", None).status, 401);
    let wrong = post(admin, "/admin/drain", Some("not-the-token-at-all"));
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.head.contains("WWW-Authenticate: Bearer"),
        "{}",
        wrong.head
    );
    assert_eq!(
        get(admin, "/readyz").status,
        200,
        "refused calls change nothing"
    );

    let ok = post(admin, "/admin/drain", Some(TOKEN));
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(json(&ok.body)["state"], "draining");
    assert_eq!(get(admin, "/readyz").status, 503);
    assert_eq!(relay.lifecycle(), Lifecycle::Draining);

    // New allocations are refused with 403 (no alternate-server configured)...
    let mut new = Turn::new(server);
    let refused = new.allocate();
    assert_eq!(refused.error, Some(403), "{refused:?}");
    // ...while the live one refreshes.
    let refreshed = old.refresh(600);
    assert_eq!(refreshed.class, Class::Success, "{refreshed:?}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        relay.lifecycle(),
        Lifecycle::Draining,
        "one allocation is live"
    );

    // Undrain: ready again, allocations accepted.
    let back = post(admin, "/admin/undrain", Some(TOKEN));
    assert_eq!(back.status, 200, "{back:?}");
    assert!(eventually(Duration::from_secs(3), || get(admin, "/readyz")
        .status
        == 200));
    assert_eq!(Turn::new(server).allocate().class, Class::Success);

    // Drain again; when the last allocations end, the drain is over.
    assert_eq!(post(admin, "/admin/drain", Some(TOKEN)).status, 200);
    assert_eq!(old.refresh(0).class, Class::Success);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        relay.lifecycle(),
        Lifecycle::Draining,
        "the second client's allocation is live"
    );
    relay.shutdown();
}

#[test]
fn drain_ends_when_the_last_allocation_ends() {
    let (relay, admin) = start(config(free_relay_ports(100)));
    let mut client = Turn::new(relay.listen_addrs()[0]);
    assert_eq!(client.allocate().class, Class::Success);
    relay.drain(DrainCause::Admin);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(relay.lifecycle(), Lifecycle::Draining);
    assert_eq!(client.refresh(0).class, Class::Success);
    assert!(eventually(Duration::from_secs(5), || relay.lifecycle()
        == Lifecycle::Drained));
    assert_eq!(
        metrics(admin)["tern_state{state=\"drained\"}"],
        1.0,
        "the gauge follows"
    );
    let late = post(admin, "/admin/undrain", Some(TOKEN));
    assert_eq!(late.status, 409, "{late:?}");
    relay.shutdown();
}

#[test]
fn drain_redirects_to_the_alternate_server() {
    let mut c = config(free_relay_ports(100));
    let alternate: SocketAddr = "192.0.2.7:3478".parse().unwrap();
    c.alternate_server = Some(alternate);
    let (relay, _admin) = start(c);
    relay.drain(DrainCause::Admin);
    let mut client = Turn::new(relay.listen_addrs()[0]);
    let a = client.allocate();
    assert_eq!(a.error, Some(300), "{a:?}");
    assert_eq!(a.alternate, Some(alternate));
    relay.shutdown();
}

#[test]
fn drain_times_out() {
    let mut c = config(free_relay_ports(100));
    c.drain_timeout = 1;
    let (relay, _admin) = start(c);
    let mut client = Turn::new(relay.listen_addrs()[0]);
    assert_eq!(client.allocate().class, Class::Success);
    let t0 = Instant::now();
    relay.drain(DrainCause::Stop);
    assert!(eventually(Duration::from_secs(5), || relay.lifecycle()
        == Lifecycle::Drained));
    assert!(t0.elapsed() >= Duration::from_millis(900));
    assert!(relay.undrain().is_err(), "a stop drain cannot be undone");
    relay.shutdown();
}

#[test]
fn admin_actions_are_refused_without_a_configured_token() {
    let ports = free_relay_ports(100);
    let mut c = config(ports);
    c.admin_token = None;
    let (relay, admin) = start(c);
    let a = post(admin, "/admin/drain", Some(TOKEN));
    assert_eq!(a.status, 403, "{a:?}");
    assert!(a.body.contains("admin-token"), "says why: {}", a.body);
    assert_eq!(relay.lifecycle(), Lifecycle::Active);

    // A reload can set the token.
    let mut reloaded = config(ports);
    reloaded.admin_token = Some(TOKEN.to_owned());
    relay.reload(&reloaded).unwrap();
    assert_eq!(post(admin, "/admin/drain", Some(TOKEN)).status, 200);
    relay.shutdown();
}

#[test]
fn admin_off_serves_nothing() {
    let mut c = config(free_relay_ports(100));
    c.admin = None;
    let relay = Relay::start(c).unwrap();
    assert_eq!(relay.admin_addr(), None);
    relay.shutdown();
}

#[test]
fn hostile_requests_are_refused_and_serving_goes_on() {
    let (relay, admin) = start(config(free_relay_ports(100)));

    let garbage = http_raw(admin, b"\x00\x01\x02 hello\r\n\r\n");
    assert_eq!(garbage.status, 400, "{garbage:?}");
    let no_version = http_raw(admin, b"GET /metrics\r\n\r\n");
    assert_eq!(no_version.status, 400);
    let h2 = http_raw(admin, b"GET / HTTP/2.0\r\n\r\n");
    assert_eq!(h2.status, 505);
    let chunked = http_raw(
        admin,
        b"POST /admin/drain HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(chunked.status, 501);
    let big_body = http_raw(
        admin,
        b"POST /admin/drain HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n",
    );
    assert_eq!(big_body.status, 413);

    // A 1 MB header: refused once the head limit is passed, or the
    // connection is closed; never served.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    huge.resize(huge.len() + 1024 * 1024, b'a');
    huge.extend_from_slice(b"\r\n\r\n");
    let big = http_raw(admin, &huge);
    assert!(big.status == 431 || big.status == 0, "{:?}", big.head);

    // Slowloris: a request that never ends holds one connection until the
    // deadline, and nothing else.
    let t0 = Instant::now();
    let mut slow = TcpStream::connect(admin).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        .unwrap();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        let _ = slow.write_all(b"a");
        assert_eq!(get(admin, "/healthz").status, 200, "served meanwhile");
    }
    let answer = read_answer(&mut slow);
    assert!(
        answer.status == 408 || answer.status == 0,
        "slow request: {answer:?}"
    );
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(12),
        "closed at the deadline, took {took:?}"
    );

    // Many at once, each closed without a byte: all end, serving goes on.
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(admin).unwrap())
        .collect();
    drop(idle);
    assert!(eventually(Duration::from_secs(5), || get(
        admin, "/healthz"
    )
    .status
        == 200));
    assert_eq!(get(admin, "/readyz").status, 200);
    relay.shutdown();
}
