//! Cascading: two tern processes (the binary), each in its own network
//! namespace (`cas-<pid>-a`, `cas-<pid>-b`, made and removed by the test)
//! joined by a veth pair, their routers joined by pipe transports (SRTP,
//! AEAD_AES_128_GCM, on the pipe). A publisher in namespace a sends two
//! simulcast encodings to tern A; tern A pipes both, unchanged, to tern B;
//! a subscriber in namespace b receives the high one from tern B intact
//! (its own SSRC, continuous sequence numbers, the publisher's payload bytes).
//!
//! Feedback: the subscriber's NACK is answered by tern B from its pipe
//! producer's retransmission ring (nothing crosses the pipe for it: the
//! nearest copy answers, no cross-region round trip); a loss on the pipe
//! itself (b's veth end down for two frames) is NACKed by tern B across the
//! pipe and answered from tern A's ring; the subscriber's PLI reaches the
//! publisher through both. Deleting the far producer turns A's packets into
//! counted drops on B; deleting the pipe transport and the routers frees
//! everything (ports included).
//!
//! Needs root (namespaces) and `ip`: skipped with a message otherwise, failed
//! instead under `TERN_REQUIRE_INTEROP=1`. The test reaches each tern's admin
//! listener (127.0.0.1 in its namespace) from a thread that has entered the
//! namespace (`setns`), and opens the publisher's and subscriber's sockets the
//! same way, so nothing depends on routes from the host namespace.

#![allow(clippy::disallowed_methods)] // waits bounded on the clock

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{field, get, http_raw, parse_prometheus, Daemon, Samples, TOKEN};
use serde_json::{json, Value};

const IP_A: &str = "10.201.0.1";
const IP_B: &str = "10.201.0.2";
const LOW: u32 = 0x0A0A_0001;
const HIGH: u32 = 0x0A0A_0002;
const SUB_SSRC: u32 = 0x0B0B_0001;

#[allow(clippy::print_stdout)] // the skip note belongs in the test's output
fn can_run() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let ip = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if root && ip {
        return true;
    }
    assert!(
        std::env::var("TERN_REQUIRE_INTEROP").as_deref() != Ok("1"),
        "sfu_cascade needs root and iproute2 (network namespaces) and TERN_REQUIRE_INTEROP=1 is set"
    );
    println!("skipped: sfu_cascade needs root and `ip` (network namespaces)");
    false
}

mod netns;
use netns::Netns;

/// Namespaces a and b joined by veth `casa` (IP_A) ↔ `casb` (IP_B).
fn topology() -> (Netns, Netns) {
    let a = Netns::new("cas", "a");
    let b = Netns::new("cas", "b");
    a.exec(&[
        "ip", "link", "add", "casa", "type", "veth", "peer", "name", "casb", "netns", &b.0,
    ]);
    a.exec(&["ip", "addr", "add", &format!("{IP_A}/24"), "dev", "casa"]);
    b.exec(&["ip", "addr", "add", &format!("{IP_B}/24"), "dev", "casb"]);
    a.exec(&["ip", "link", "set", "casa", "up"]);
    b.exec(&["ip", "link", "set", "casb", "up"]);
    // Static neighbours: the loss phase takes casb down and up, and nothing
    // should wait for ARP afterwards.
    let mac_b = b.exec(&["cat", "/sys/class/net/casb/address"]);
    a.exec(&[
        "ip",
        "neigh",
        "replace",
        IP_B,
        "lladdr",
        mac_b.trim(),
        "dev",
        "casa",
        "nud",
        "permanent",
    ]);
    neighbour_of_b(&a, &b);
    (a, b)
}

/// B's permanent neighbour entry for A (a link going down flushes it).
fn neighbour_of_b(a: &Netns, b: &Netns) {
    let mac_a = a.exec(&["cat", "/sys/class/net/casa/address"]);
    b.exec(&[
        "ip",
        "neigh",
        "replace",
        IP_A,
        "lladdr",
        mac_a.trim(),
        "dev",
        "casb",
        "nud",
        "permanent",
    ]);
}

/// One tern in its namespace, and how to reach its admin listener.
struct Tern<'a> {
    ns: &'a Netns,
    daemon: Daemon,
    admin: SocketAddr,
}

impl<'a> Tern<'a> {
    fn start(ns: &'a Netns, ip: &str) -> Tern<'a> {
        let listen = format!("{ip}:3478");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_tern")])
            .args([
                "--listen",
                &listen,
                "--relay-ip",
                ip,
                "--realm",
                common::REALM,
                "--user",
                &format!("{}:{}", common::USER, common::PASSWORD),
                "--relay-ports",
                "50000-50009",
                "--sfu",
                "--sfu-ports",
                "41000-41019",
                "--workers",
                "1",
                "--admin",
                "127.0.0.1:0",
                "--drain-timeout",
                "1",
            ])
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("TERN_REGISTRY_URL")
            .env("TERN_ADMIN_TOKEN", TOKEN);
        if let Ok(backend) = std::env::var("TERN_TEST_IO_BACKEND") {
            cmd.args(["--io-backend", &backend]);
        }
        let mut daemon = Daemon::spawn(cmd);
        let started = daemon.expect("relay started");
        let admin: SocketAddr = field(&started, "admin=")
            .parse()
            .unwrap_or_else(|_| panic!("admin in {started}"));
        let t = Tern { ns, daemon, admin };
        assert!(
            common::eventually(Duration::from_secs(5), || {
                let _in = t.ns.enter();
                get(t.admin, "/readyz").status == 200
            }),
            "tern in {} not ready",
            ns.0
        );
        t
    }

    /// An SFU API call from inside the namespace.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let a = {
            let _in = self.ns.enter();
            http_raw(self.admin, raw.as_bytes())
        };
        let v: Value = serde_json::from_str(&a.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", a.body));
        (a.status, v)
    }

    /// A call that must succeed; its answer.
    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, body.clone());
        assert!(
            s / 100 == 2,
            "{} {method} {path} {body:?}: {s} {v}",
            self.ns.0
        );
        v
    }

    fn metrics(&self) -> Samples {
        let _in = self.ns.enter();
        parse_prometheus(&get(self.admin, "/metrics").body)
    }

    fn metric(&self, key: &str) -> f64 {
        self.metrics().get(key).copied().unwrap_or(-1.0)
    }

    /// A UDP socket in this tern's namespace.
    fn socket(&self, ip: &str) -> UdpSocket {
        let _in = self.ns.enter();
        let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    }
}

fn id(v: &Value) -> u64 {
    v["id"].as_u64().unwrap_or_else(|| panic!("no id in {v}"))
}

fn addr(v: &Value) -> SocketAddr {
    v["local"].as_str().unwrap().parse().unwrap()
}

/// A VP8 RTP packet (one-byte descriptor, S bit on a frame's first packet,
/// the key-frame bit in the payload header) carrying `body`.
fn rtp_vp8(ssrc: u32, seq: u16, ts: u32, frame_start: bool, key: bool, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p.push(if frame_start { 0x10 } else { 0x00 });
    if frame_start {
        p.extend_from_slice(&[if key { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a]);
    }
    p.extend_from_slice(body);
    p
}

/// The publisher's two encodings: 3 packets a frame each, recognisable
/// payload bytes (encoding, sequence number).
struct Publisher {
    socket: UdpSocket,
    to: SocketAddr,
    seq: [u16; 2],
    frames: u32,
    /// Every high-encoding packet's payload by sequence number.
    high_payloads: std::collections::HashMap<u16, Vec<u8>>,
    sent: [u64; 2],
}

impl Publisher {
    fn frame(&mut self, key: bool) {
        // High first: a router tick between the two never sees only the
        // low encoding active (and retargets a new subscriber to it).
        for (e, ssrc) in [(1, HIGH), (0, LOW)] {
            let ts = 3000 * self.frames;
            for k in 0..3u16 {
                let seq = self.seq[e];
                let mut body = vec![e as u8; 8 + 40 * e];
                body.extend_from_slice(&seq.to_be_bytes());
                body.extend_from_slice(&self.frames.to_be_bytes());
                let p = rtp_vp8(ssrc, seq, ts, k == 0, key, &body);
                if e == 1 {
                    self.high_payloads.insert(seq, p[12..].to_vec());
                }
                self.socket.send_to(&p, self.to).unwrap();
                self.seq[e] = seq.wrapping_add(1);
                self.sent[e] += 1;
            }
        }
        self.frames += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every RTP packet (not RTCP) that arrives within the read timeouts.
fn drain_rtp(s: &UdpSocket) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = s.recv(&mut buf) {
        if !(192..=223).contains(&buf[1]) {
            got.push(buf[..n].to_vec());
        }
    }
    got
}

fn seq_of(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[2], p[3]])
}

/// Media SSRCs of PLIs in the RTCP datagrams that arrive within `within`.
fn plis_within(s: &UdpSocket, within: Duration) -> Vec<u32> {
    let mut found = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let Ok(n) = s.recv(&mut buf) else { continue };
        let mut at = 0;
        while at + 12 <= n {
            let len = 4 * (usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]])) + 1);
            if buf[at + 1] == 206 && buf[at] & 0x1F == 1 {
                found.push(u32::from_be_bytes([
                    buf[at + 8],
                    buf[at + 9],
                    buf[at + 10],
                    buf[at + 11],
                ]));
            }
            at += len;
        }
        if !found.is_empty() {
            break;
        }
    }
    found
}

/// An RR (sender `0x5EB`) followed by one RTCP feedback packet.
fn feedback(fmt: u8, pt: u8, media: u32, fci: &[u8]) -> Vec<u8> {
    let sender: u32 = 0x5EB;
    let mut p = vec![0x80, 201, 0, 1];
    p.extend_from_slice(&sender.to_be_bytes());
    let words = 2 + fci.len() / 4;
    p.extend_from_slice(&[0x80 | fmt, pt, 0, words as u8]);
    p.extend_from_slice(&sender.to_be_bytes());
    p.extend_from_slice(&media.to_be_bytes());
    p.extend_from_slice(fci);
    p
}

#[test]
fn a_publisher_on_one_tern_reaches_a_subscriber_on_another_through_a_pipe() {
    if !can_run() {
        return;
    }
    let (na, nb) = topology();
    let mut a = Tern::start(&na, IP_A);
    let mut b = Tern::start(&nb, IP_B);

    // SRTP on the pipe: what A sends, B receives with, and the reverse.
    let b64 = |k: &[u8]| base64::engine::general_purpose::STANDARD.encode(k);
    let a_to_b: Vec<u8> = (1u8..=28).collect();
    let b_to_a: Vec<u8> = (101u8..=128).collect();
    let srtp = |recv: &[u8], send: &[u8]| json!({ "profile": "AEAD_AES_128_GCM", "recv_key": b64(recv), "send_key": b64(send) });

    // Tern A: the publisher's transport and its end of the pipe (not yet
    // connected: B's end does not exist).
    let ra = id(&a.ok("POST", "/sfu/routers", None));
    let base_a = format!("/sfu/routers/{ra}");
    let pub_t = a.ok("POST", &format!("{base_a}/transports"), Some(json!({})));
    let pipe_a = a.ok(
        "POST",
        &format!("{base_a}/transports"),
        Some(json!({ "kind": "pipe", "srtp": srtp(&b_to_a, &a_to_b) })),
    );
    assert_eq!(pipe_a["kind"], json!("pipe"));
    assert_eq!(pipe_a["remote"], Value::Null);
    let producer_body = |transport: u64| {
        json!({ "transport": transport, "kind": "video", "codec": "vp8", "clock_rate": 90000,
                "payload_types": [96], "encodings": [{ "ssrc": LOW }, { "ssrc": HIGH }] })
    };
    let pa = id(&a.ok(
        "POST",
        &format!("{base_a}/producers"),
        Some(producer_body(id(&pub_t))),
    ));
    // Bad pipe consumer bodies: a pipe keeps the producer's SSRCs and layers.
    for bad in [
        json!({ "producer": pa, "transport": id(&pipe_a), "ssrc": 5 }),
        json!({ "producer": pa, "transport": id(&pipe_a), "preferred_spatial_layer": 0 }),
        json!({ "producer": pa, "transport": id(&pub_t) }),
    ] {
        let (s, v) = a.call("POST", &format!("{base_a}/consumers"), Some(bad.clone()));
        assert_eq!(s, 400, "{bad}: {v}");
    }
    let pipe_consumer = a.ok(
        "POST",
        &format!("{base_a}/consumers"),
        Some(json!({ "producer": pa, "transport": id(&pipe_a) })),
    );
    assert_eq!(pipe_consumer["pipe"], json!(true));
    assert_eq!(pipe_consumer["ssrc"], Value::Null);
    let (s, v) = a.call(
        "POST",
        &format!("{base_a}/consumers"),
        Some(json!({ "producer": pa, "transport": id(&pipe_a) })),
    );
    assert_eq!(s, 409, "one pipe consumer per producer and pipe: {v}");

    // Tern B: its end of the pipe (connected to A's), the same producer on
    // it, and a subscriber.
    let rb = id(&b.ok("POST", "/sfu/routers", None));
    let base_b = format!("/sfu/routers/{rb}");
    let pipe_b = b.ok(
        "POST",
        &format!("{base_b}/transports"),
        Some(json!({ "kind": "pipe", "remote": pipe_a["local"], "srtp": srtp(&a_to_b, &b_to_a) })),
    );
    let pb = id(&b.ok(
        "POST",
        &format!("{base_b}/producers"),
        Some(producer_body(id(&pipe_b))),
    ));
    let sub = b.socket(IP_B);
    let sub_t = b.ok(
        "POST",
        &format!("{base_b}/transports"),
        Some(json!({ "remote": sub.local_addr().unwrap().to_string() })),
    );
    let sub_c = id(&b.ok(
        "POST",
        &format!("{base_b}/consumers"),
        Some(json!({ "producer": pb, "transport": id(&sub_t), "ssrc": SUB_SSRC })),
    ));
    // Whoever writes to A's end before it is connected is a counted drop: a
    // pipe never learns its remote from traffic.
    b.socket(IP_B)
        .send_to(&rtp_vp8(HIGH, 1, 1, true, true, &[0; 20]), addr(&pipe_a))
        .unwrap();
    assert!(
        common::eventually(Duration::from_secs(4), || a
            .metric("tern_sfu_dropped_total{reason=\"pipe_not_connected\"}")
            == 1.0),
        "a stray packet on A's unconnected pipe was not counted"
    );
    let connected = a.ok(
        "PATCH",
        &format!("{base_a}/transports/{}", id(&pipe_a)),
        Some(json!({ "remote": pipe_b["local"] })),
    );
    assert_eq!(connected["remote"], pipe_b["local"]);
    assert_eq!(connected["remote_fixed"], json!(true));
    let (s, _) = a.call(
        "PATCH",
        &format!("{base_a}/transports/{}", id(&pipe_a)),
        Some(json!({ "remote": "10.201.0.9:4000" })),
    );
    assert_eq!(s, 409, "a connected pipe does not move");

    // Media: the publisher in namespace a; the subscriber gets the high
    // encoding from tern B, intact.
    let mut publisher = Publisher {
        socket: a.socket(IP_A),
        to: addr(&pub_t),
        seq: [100, 60_000],
        frames: 0,
        high_payloads: Default::default(),
        sent: [0, 0],
    };
    publisher.frame(true);
    for _ in 0..19 {
        publisher.frame(false);
    }
    let got = drain_rtp(&sub);
    assert_eq!(got.len(), 60, "20 frames of 3 packets of the high encoding");
    let first = seq_of(&got[0]);
    for (k, p) in got.iter().enumerate() {
        assert_eq!(u32::from_be_bytes([p[8], p[9], p[10], p[11]]), SUB_SSRC);
        assert_eq!(seq_of(p), first.wrapping_add(k as u16), "packet {k}");
        let orig_seq = 60_000u16.wrapping_add(k as u16);
        assert_eq!(
            &p[12..],
            &publisher.high_payloads[&orig_seq][..],
            "payload of packet {k}"
        );
    }
    // Both encodings crossed the pipe, every packet.
    let pv = b.ok("GET", &format!("{base_b}/producers/{pb}"), None);
    assert_eq!(pv["encodings"][0]["packets"], json!(publisher.sent[0]));
    assert_eq!(pv["encodings"][1]["packets"], json!(publisher.sent[1]));
    let pc = a.ok(
        "GET",
        &format!("{base_a}/consumers/{}", id(&pipe_consumer)),
        None,
    );
    assert_eq!(pc["stats"]["packets"], json!(120));

    // The subscriber lost two packets: tern B answers from its pipe
    // producer's ring, byte-identical, and nothing crosses the pipe for it.
    let pid = seq_of(&got[10]);
    let nack = feedback(
        1,
        205,
        SUB_SSRC,
        &[&pid.to_be_bytes()[..], &[0, 0b10]].concat(),
    );
    sub.send_to(&nack, addr(&sub_t)).unwrap();
    let resent = drain_rtp(&sub);
    assert_eq!(resent.len(), 2, "retransmissions");
    assert_eq!(resent[0], got[10]);
    assert_eq!(resent[1], got[12]);
    let c = b.ok("GET", &format!("{base_b}/consumers/{sub_c}"), None);
    assert_eq!(c["stats"]["retransmitted"], json!(2));
    let pc = a.ok(
        "GET",
        &format!("{base_a}/consumers/{}", id(&pipe_consumer)),
        None,
    );
    assert_eq!(pc["stats"]["nacks_received"], json!(0));
    assert_eq!(pc["stats"]["retransmitted"], json!(0));

    // The subscriber's PLI: B → pipe → A → the publisher, for the high
    // encoding (after the key frame request throttle of 500 ms).
    std::thread::sleep(Duration::from_millis(700));
    while publisher.socket.recv(&mut [0u8; 2048]).is_ok() {}
    sub.send_to(&feedback(1, 206, SUB_SSRC, &[]), addr(&sub_t))
        .unwrap();
    let plis = plis_within(&publisher.socket, Duration::from_secs(3));
    assert_eq!(plis, vec![HIGH], "the PLI reached the publisher");
    let pc = a.ok(
        "GET",
        &format!("{base_a}/consumers/{}", id(&pipe_consumer)),
        None,
    );
    assert!(pc["stats"]["plis_received"].as_u64().unwrap() >= 1, "{pc}");
    let c = b.ok("GET", &format!("{base_b}/consumers/{sub_c}"), None);
    assert_eq!(c["stats"]["plis_received"], json!(1));

    // A loss on the pipe: b's veth end is down for two frames. B notices the
    // gap, NACKs across the pipe, A answers from its ring and the
    // subscriber's stream has no hole.
    drain_rtp(&sub);
    nb.exec(&["ip", "link", "set", "casb", "down"]);
    publisher.frame(false);
    publisher.frame(false);
    nb.exec(&["ip", "link", "set", "casb", "up"]);
    neighbour_of_b(&na, &nb);
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..5 {
        publisher.frame(false);
    }
    // Relative to the last packet before the loss (retransmissions to the
    // subscriber reuse their sequence numbers), every one of the 7 frames.
    let last = seq_of(&got[59]);
    let mut rel: Vec<u16> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while rel.len() < 21 && Instant::now() < deadline {
        rel.extend(drain_rtp(&sub).iter().map(|p| seq_of(p).wrapping_sub(last)));
        rel.sort_unstable();
        rel.dedup();
    }
    assert_eq!(
        rel,
        (1..=21).collect::<Vec<u16>>(),
        "no hole; B: {} A: {}",
        b.ok("GET", &base_b, None),
        a.ok("GET", &base_a, None)
    );
    let pc = a.ok(
        "GET",
        &format!("{base_a}/consumers/{}", id(&pipe_consumer)),
        None,
    );
    assert!(
        pc["stats"]["retransmitted"].as_u64().unwrap() >= 6,
        "A answered B's NACKs from its ring: {pc}"
    );
    let pv = b.ok("GET", &format!("{base_b}/producers/{pb}"), None);
    assert!(pv["encodings"][1]["lost"].as_i64().unwrap() <= 0, "{pv}");
    assert!(
        pv["encodings"][1]["recovered"].as_u64().unwrap() >= 6,
        "{pv}"
    );

    // Deleting B's producer closes its consumer; A's packets still arriving
    // on B's pipe are counted drops (unknown SSRC), nothing else.
    b.ok("DELETE", &format!("{base_b}/producers/{pb}"), None);
    let (s, _) = b.call("GET", &format!("{base_b}/consumers/{sub_c}"), None);
    assert_eq!(s, 404);
    let before = b.metric("tern_sfu_dropped_total{reason=\"unknown_ssrc\"}");
    for _ in 0..3 {
        publisher.frame(false);
    }
    assert!(drain_rtp(&sub).is_empty());
    assert!(
        common::eventually(Duration::from_secs(4), || b
            .metric("tern_sfu_dropped_total{reason=\"unknown_ssrc\"}")
            >= before + 18.0),
        "stray pipe packets on B are counted"
    );

    // Deleting A's pipe transport removes its pipe consumer and frees its
    // port; the producer stays and nothing more crosses.
    b.ok(
        "DELETE",
        &format!("{base_b}/transports/{}", id(&pipe_b)),
        None,
    );
    a.ok(
        "DELETE",
        &format!("{base_a}/transports/{}", id(&pipe_a)),
        None,
    );
    let (s, _) = a.call(
        "GET",
        &format!("{base_a}/consumers/{}", id(&pipe_consumer)),
        None,
    );
    assert_eq!(s, 404);
    let ra_view = a.ok("GET", &base_a, None);
    assert_eq!(ra_view["consumers"], json!([]));
    assert_eq!(ra_view["producers"].as_array().unwrap().len(), 1);
    {
        let _in = na.enter();
        assert!(
            UdpSocket::bind(addr(&pipe_a)).is_ok(),
            "A's pipe port freed"
        );
    }
    {
        let _in = nb.enter();
        assert!(
            UdpSocket::bind(addr(&pipe_b)).is_ok(),
            "B's pipe port freed"
        );
    }

    // Deleting the routers frees the rest.
    a.ok("DELETE", &base_a, None);
    b.ok("DELETE", &base_b, None);
    for t in [&a, &b] {
        assert!(
            common::eventually(Duration::from_secs(4), || {
                let m = t.metrics();
                m.get("tern_sfu_routers") == Some(&0.0)
                    && m.get("tern_sfu_transports") == Some(&0.0)
            }),
            "{} still holds SFU state",
            t.ns.0
        );
    }
    {
        let _in = na.enter();
        assert!(
            UdpSocket::bind(addr(&pub_t)).is_ok(),
            "publisher port freed"
        );
    }
    assert!(a.daemon.stop().success());
    assert!(b.daemon.stop().success());
}
