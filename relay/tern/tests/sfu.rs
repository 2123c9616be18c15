//! The SFU on tern's data plane, end to end in one process: the control API
//! (every answer checked against `relay/tern/openapi.json`), one publisher
//! fanned out to two subscribers with rewritten SSRC and sequence numbers,
//! SRTP both ways, and bad input counted while the session keeps flowing.
//! Runs on the back end `TERN_TEST_IO_BACKEND` names, like the other daemon tests.

#![allow(clippy::disallowed_methods)] // waits bounded on the clock

mod common;
mod ports;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use serde_json::{json, Value};
use tern::{Config, Relay, RelayHandle};

use common::{eventually, get, http_raw, parse_prometheus, test_io_backend, TOKEN};
use ports::free_relay_ports;

const PUB_SSRC: u32 = 0x1111_0000;

fn config() -> Config {
    let mut c = Config::dev_default();
    c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.relay_ip = vec!["127.0.0.1".parse().unwrap()];
    c.relay_ports = free_relay_ports(20);
    c.sfu = true;
    c.sfu_ports = free_relay_ports(40);
    c.workers = 2;
    c.admin = Some("127.0.0.1:0".parse().unwrap());
    c.admin_token = Some(TOKEN.to_owned());
    c.io_backend = test_io_backend();
    c
}

fn start() -> (RelayHandle, Api) {
    let relay = Relay::start(config()).unwrap();
    let admin = relay.admin_addr().expect("admin endpoint bound");
    assert!(eventually(Duration::from_secs(5), || get(admin, "/readyz")
        .status
        == 200));
    let spec: Value =
        serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json parses");
    (relay, Api { admin, spec })
}

/// An API client that checks every answer against the OpenAPI document.
struct Api {
    admin: SocketAddr,
    spec: Value,
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, body.map(|b| b.to_string()), Some(TOKEN))
    }

    fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let body = body.unwrap_or_default();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let a = http_raw(self.admin, raw.as_bytes());
        assert!(
            a.head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{method} {path}: {}",
            a.head
        );
        let v: Value = serde_json::from_str(&a.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", a.body));
        self.check(method, path, a.status, &v);
        (a.status, v)
    }

    /// The answer matches the schema the document gives for this path,
    /// method and status.
    fn check(&self, method: &str, path: &str, status: u16, v: &Value) {
        let paths = self.spec["paths"].as_object().unwrap();
        let error = json!({ "$ref": "#/components/schemas/Error" });
        let Some(template) = paths.keys().find(|t| matches_template(t, path)) else {
            // A path the document does not list: 404 with the error shape.
            assert_eq!(status, 404, "{path}: no path in openapi.json");
            return validate(&self.spec, &error, v, "$").unwrap();
        };
        let op = &paths[template][method.to_ascii_lowercase()];
        if !op.is_object() {
            // A method the document does not list: 405 with the error shape.
            assert_eq!(status, 405, "{method} {template}: not in openapi.json");
            return validate(&self.spec, &error, v, "$").unwrap();
        }
        let resp = &op["responses"][status.to_string()];
        assert!(
            resp.is_object(),
            "{method} {template}: status {status} not documented ({v})"
        );
        let schema = &resp["content"]["application/json"]["schema"];
        if let Err(e) = validate(&self.spec, schema, v, "$") {
            panic!("{method} {path} -> {status}: {e}\n{v:#}");
        }
    }
}

fn matches_template(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(a, b)| (a.starts_with('{') && !b.is_empty()) || a == b)
}

/// A small JSON Schema (OpenAPI 3.0 subset) check: $ref, type, nullable,
/// enum, minimum/maximum, properties, required, additionalProperties, items.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        let target = &doc["components"]["schemas"][name];
        assert!(target.is_object(), "dangling $ref {r}");
        return validate(doc, target, v, at);
    }
    if v.is_null() {
        return if schema["nullable"] == json!(true) {
            Ok(())
        } else {
            Err(format!("{at}: null where the schema has no nullable"))
        };
    }
    let ty = schema["type"].as_str().unwrap_or("");
    let ok = match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "" => true,
        other => return Err(format!("{at}: unknown schema type {other}")),
    };
    if !ok {
        return Err(format!("{at}: expected {ty}, got {v}"));
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            return Err(format!("{at}: {v} not in {allowed:?}"));
        }
    }
    if let (Some(n), Some(min)) = (v.as_f64(), schema["minimum"].as_f64()) {
        if n < min {
            return Err(format!("{at}: {n} below {min}"));
        }
    }
    if let (Some(n), Some(max)) = (v.as_f64(), schema["maximum"].as_f64()) {
        if n > max {
            return Err(format!("{at}: {n} above {max}"));
        }
    }
    if let Some(items) = v.as_array() {
        for (i, item) in items.iter().enumerate() {
            validate(doc, &schema["items"], item, &format!("{at}[{i}]"))?;
        }
    }
    if let Some(map) = v.as_object() {
        let props = schema["properties"].as_object();
        for req in schema["required"].as_array().into_iter().flatten() {
            let k = req.as_str().unwrap();
            if !map.contains_key(k) {
                return Err(format!("{at}: required {k} missing"));
            }
        }
        for (k, val) in map {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(doc, s, val, &format!("{at}.{k}"))?,
                None => match &schema["additionalProperties"] {
                    Value::Bool(false) => return Err(format!("{at}: unexpected property {k}")),
                    s @ Value::Object(_) => validate(doc, s, val, &format!("{at}.{k}"))?,
                    _ => {}
                },
            }
        }
    }
    Ok(())
}

/// An RTP packet with a one-byte VP8 payload descriptor (S bit set on the
/// first packet of a frame) and a payload of `body` bytes.
fn rtp_vp8(ssrc: u32, seq: u16, ts: u32, frame_start: bool, key: bool, body: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&ts.to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p.push(if frame_start { 0x10 } else { 0x00 });
    if frame_start {
        // VP8 payload header: P bit 0 is a key frame; then the start code.
        p.extend_from_slice(&[if key { 0x00 } else { 0x01 }, 0x9d, 0x01, 0x2a]);
    }
    p.extend_from_slice(body);
    p
}

fn udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

/// Every RTP packet (not RTCP) that arrives within the timeouts.
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

fn id(v: &Value) -> u64 {
    v["id"].as_u64().unwrap_or_else(|| panic!("no id in {v}"))
}

/// A router with a publisher transport (remote learned), two subscriber
/// transports (remote given) and a VP8 producer consumed twice.
struct Room {
    router: u64,
    publisher: UdpSocket,
    pub_addr: SocketAddr,
    subs: [UdpSocket; 2],
    /// The subscriber transports' local addresses (where their RTCP goes).
    sub_transports: Vec<SocketAddr>,
    consumer_ssrcs: [u32; 2],
    consumers: [u64; 2],
}

fn room(api: &Api, srtp: Option<(Value, Value)>) -> Room {
    let (s, r) = api.call("POST", "/sfu/routers", None);
    assert_eq!(s, 201, "{r}");
    let router = id(&r);
    let base = format!("/sfu/routers/{router}");
    let publisher = udp();
    let mut pub_body = json!({});
    if let Some((k, _)) = &srtp {
        pub_body["srtp"] = k.clone();
    }
    let (s, t) = api.call("POST", &format!("{base}/transports"), Some(pub_body));
    assert_eq!(s, 201, "{t}");
    assert_eq!(t["remote"], Value::Null);
    let pub_t = id(&t);
    let pub_addr: SocketAddr = t["local"].as_str().unwrap().parse().unwrap();
    let subs = [udp(), udp()];
    let mut sub_ts = Vec::new();
    let mut sub_transports = Vec::new();
    for sub in &subs {
        let mut body = json!({ "remote": sub.local_addr().unwrap().to_string() });
        if let Some((_, k)) = &srtp {
            body["srtp"] = k.clone();
        }
        let (s, t) = api.call("POST", &format!("{base}/transports"), Some(body));
        assert_eq!(s, 201, "{t}");
        assert_eq!(t["remote_fixed"], json!(true));
        sub_ts.push(id(&t));
        sub_transports.push(t["local"].as_str().unwrap().parse().unwrap());
    }
    let (s, p) = api.call(
        "POST",
        &format!("{base}/producers"),
        Some(json!({
            "transport": pub_t, "kind": "video", "codec": "vp8", "clock_rate": 90000,
            "payload_types": [96], "encodings": [{ "ssrc": PUB_SSRC }]
        })),
    );
    assert_eq!(s, 201, "{p}");
    let producer = id(&p);
    let consumer_ssrcs = [0xAAAA_0001, 0xBBBB_0002];
    let mut consumers = [0; 2];
    for i in 0..2 {
        let (s, c) = api.call(
            "POST",
            &format!("{base}/consumers"),
            Some(
                json!({ "producer": producer, "transport": sub_ts[i], "ssrc": consumer_ssrcs[i] }),
            ),
        );
        assert_eq!(s, 201, "{c}");
        consumers[i] = id(&c);
    }
    Room {
        router,
        publisher,
        pub_addr,
        subs,
        sub_transports,
        consumer_ssrcs,
        consumers,
    }
}

/// Send `frames` frames of 3 packets each (the first a key frame), starting
/// at `seq`; returns the next sequence number.
fn publish(room: &Room, seq: u16, frames: u16, protect: &mut dyn FnMut(Vec<u8>) -> Vec<u8>) -> u16 {
    let mut seq = seq;
    for f in 0..frames {
        let ts = 3000 * u32::from(seq);
        for k in 0..3 {
            let body = [seq as u8; 40];
            let p = rtp_vp8(PUB_SSRC, seq, ts, k == 0, f == 0, &body);
            room.publisher.send_to(&protect(p), room.pub_addr).unwrap();
            seq = seq.wrapping_add(1);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    seq
}

/// Each subscriber got `n` packets with its own SSRC, consecutive sequence
/// numbers and the publisher's payload.
fn assert_fanout(room: &Room, n: usize, unprotect: &mut dyn FnMut(usize, Vec<u8>) -> Vec<u8>) {
    for (i, sub) in room.subs.iter().enumerate() {
        let got: Vec<Vec<u8>> = drain_rtp(sub)
            .into_iter()
            .map(|p| unprotect(i, p))
            .collect();
        assert_eq!(got.len(), n, "subscriber {i} got {} packets", got.len());
        let first = u16::from_be_bytes([got[0][2], got[0][3]]);
        for (k, p) in got.iter().enumerate() {
            let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
            assert_eq!(ssrc, room.consumer_ssrcs[i], "packet {k}");
            let seq = u16::from_be_bytes([p[2], p[3]]);
            assert_eq!(
                seq,
                first.wrapping_add(k as u16),
                "subscriber {i} packet {k}"
            );
            assert_eq!(p[1] & 0x7F, 96);
        }
    }
}

fn val(m: &common::Samples, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(-1.0)
}

fn sfu_metrics(api: &Api) -> common::Samples {
    parse_prometheus(&get(api.admin, "/metrics").body)
}

#[test]
fn api_round_trip_and_errors_match_the_openapi_document() {
    let (relay, api) = start();
    let (s, v) = api.call("GET", "/sfu/routers", None);
    assert_eq!((s, v), (200, json!({ "routers": [] })));

    let room = room(&api, None);
    let base = format!("/sfu/routers/{}", room.router);
    let (s, r) = api.call("GET", &base, None);
    assert_eq!(s, 200);
    assert_eq!(r["transports"].as_array().unwrap().len(), 3);
    assert_eq!(r["producers"].as_array().unwrap().len(), 1);
    assert_eq!(r["consumers"].as_array().unwrap().len(), 2);
    // A second router lands on the other worker (least loaded).
    let (s, r2) = api.call("POST", "/sfu/routers", Some(json!({})));
    assert_eq!(s, 201);
    assert_ne!(r2["worker"], r["worker"]);
    let (s, all) = api.call("GET", "/sfu/routers", None);
    assert_eq!(s, 200);
    assert_eq!(all["routers"].as_array().unwrap().len(), 2);
    for list in ["transports", "producers", "consumers"] {
        let (s, l) = api.call("GET", &format!("{base}/{list}"), None);
        assert_eq!(s, 200);
        assert!(!l[list].as_array().unwrap().is_empty());
    }

    let consumer = format!("{base}/consumers/{}", room.consumers[0]);
    let (s, c) = api.call(
        "PATCH",
        &consumer,
        Some(json!({ "paused": true, "preferred_spatial_layer": 0 })),
    );
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["paused"], json!(true));
    assert_eq!(c["preferred_spatial_layer"], json!(0));
    let (s, c) = api.call("PATCH", &consumer, Some(json!({ "paused": false })));
    assert_eq!((s, &c["paused"]), (200, &json!(false)));

    // A pipe transport: created unconnected, connected once by PATCH (409
    // to move it), consumed by a pipe consumer that keeps the producer's SSRCs.
    let (s, pipe) = api.call(
        "POST",
        &format!("{base}/transports"),
        Some(json!({ "kind": "pipe" })),
    );
    assert_eq!(s, 201, "{pipe}");
    assert_eq!(
        (&pipe["kind"], &pipe["remote"]),
        (&json!("pipe"), &Value::Null)
    );
    let pipe_path = format!("{base}/transports/{}", id(&pipe));
    let (s, t) = api.call(
        "PATCH",
        &pipe_path,
        Some(json!({ "remote": "127.0.0.1:9" })),
    );
    assert_eq!(s, 200, "{t}");
    assert_eq!(
        (&t["remote"], &t["remote_fixed"]),
        (&json!("127.0.0.1:9"), &json!(true))
    );
    let (s, _) = api.call(
        "PATCH",
        &pipe_path,
        Some(json!({ "remote": "127.0.0.1:10" })),
    );
    assert_eq!(s, 409);
    let (_, r) = api.call("GET", &base, None);
    let producer = r["producers"][0]["id"].clone();
    let (s, pc) = api.call(
        "POST",
        &format!("{base}/consumers"),
        Some(json!({ "producer": producer, "transport": id(&pipe) })),
    );
    assert_eq!(s, 201, "{pc}");
    assert_eq!((&pc["pipe"], &pc["ssrc"]), (&json!(true), &Value::Null));
    let pc_path = format!("{base}/consumers/{}", id(&pc));
    let (s, _) = api.call("PATCH", &pc_path, Some(json!({ "paused": true })));
    assert_eq!(s, 200);
    let pipe_cases: Vec<(&str, String, Value, u16)> = vec![
        (
            "PATCH",
            pipe_path.clone(),
            json!({ "remote": "nowhere" }),
            400,
        ),
        ("PATCH", pipe_path.clone(), json!({}), 400),
        (
            "PATCH",
            format!("{base}/transports/4242"),
            json!({ "remote": "127.0.0.1:9" }),
            404,
        ),
        (
            "POST",
            format!("{base}/transports"),
            json!({ "kind": "tunnel" }),
            400,
        ),
        (
            "PATCH",
            pc_path.clone(),
            json!({ "preferred_spatial_layer": 0 }),
            400,
        ),
        (
            "POST",
            format!("{base}/consumers"),
            json!({ "producer": producer, "transport": id(&pipe) }),
            409,
        ),
        (
            "POST",
            format!("{base}/consumers"),
            json!({ "producer": producer, "transport": id(&pipe), "ssrc": 9 }),
            400,
        ),
        (
            "POST",
            format!("{base}/consumers"),
            json!({ "producer": producer, "transport": id(&pipe), "payload_types": [{ "producer": 96, "consumer": 100 }] }),
            400,
        ),
        (
            "POST",
            format!("{base}/consumers"),
            json!({ "producer": producer, "transport": r["transports"][1]["id"] }),
            400,
        ),
    ];
    for (method, path, body, want) in pipe_cases {
        let (s, v) = api.call(method, &path, Some(body.clone()));
        assert_eq!(s, want, "{method} {path} {body}: {v}");
        assert!(!v["error"].as_str().unwrap().is_empty());
    }
    let (s, _) = api.call("DELETE", &pipe_path, None);
    assert_eq!(s, 200);
    let (s, _) = api.call("GET", &pc_path, None);
    assert_eq!(s, 404, "the pipe consumer went with its transport");

    // Bad IDs, bodies, methods and tokens: 4xx with a message, as documented.
    let cases: Vec<(&str, String, Option<Value>, u16)> = vec![
        ("GET", "/sfu/routers/abc".into(), None, 404),
        ("GET", "/sfu/routers/0".into(), None, 404),
        ("GET", "/sfu/routers/999999".into(), None, 404),
        ("DELETE", "/sfu/routers/999999".into(), None, 404),
        ("GET", format!("{base}/transports/4242"), None, 404),
        ("GET", format!("{base}/producers/4242"), None, 404),
        ("DELETE", format!("{base}/consumers/4242"), None, 404),
        ("PUT", "/sfu/routers".into(), None, 405),
        (
            "POST",
            format!("{base}/transports"),
            Some(json!({ "remote": "nonsense" })),
            400,
        ),
        (
            "POST",
            format!("{base}/transports"),
            Some(json!({ "bogus": 1 })),
            400,
        ),
        (
            "POST",
            format!("{base}/transports"),
            Some(json!({ "srtp": { "profile": "NULL_CIPHER", "recv_key": "", "send_key": "" } })),
            400,
        ),
        (
            "POST",
            format!("{base}/transports"),
            Some(
                json!({ "srtp": { "profile": "AES_CM_128_HMAC_SHA1_80", "recv_key": "AAAA", "send_key": "AAAA" } }),
            ),
            400,
        ),
        (
            "POST",
            format!("{base}/producers"),
            Some(json!({ "transport": 1 })),
            400,
        ),
        (
            "POST",
            format!("{base}/producers"),
            Some(
                json!({ "transport": 9999, "kind": "video", "codec": "vp8", "clock_rate": 90000,
                          "payload_types": [96], "encodings": [{ "ssrc": 5 }] }),
            ),
            404,
        ),
        (
            "POST",
            format!("{base}/producers"),
            Some(
                json!({ "transport": 1, "kind": "video", "codec": "vp8", "clock_rate": 90000,
                          "payload_types": [200], "encodings": [{ "ssrc": 5 }] }),
            ),
            400,
        ),
        (
            "POST",
            format!("{base}/consumers"),
            Some(json!({ "producer": 4242, "transport": 1, "ssrc": 7 })),
            404,
        ),
        (
            "PATCH",
            consumer.clone(),
            Some(json!({ "preferred_spatial_layer": 99 })),
            400,
        ),
        ("GET", "/sfu/nothing".into(), None, 404),
    ];
    for (method, path, body, want) in cases {
        let (s, v) = api.call(method, &path, body.clone());
        assert_eq!(s, want, "{method} {path} {body:?}: {v}");
        assert!(!v["error"].as_str().unwrap().is_empty());
    }
    let (s, v) = api.call_with(
        "POST",
        &format!("{base}/producers"),
        Some("{not json".into()),
        Some(TOKEN),
    );
    assert_eq!(s, 400, "{v}");
    let (s, _) = api.call_with("GET", "/sfu/routers", None, None);
    assert_eq!(s, 401);
    let (s, _) = api.call_with("GET", "/sfu/routers", None, Some("wrong-token-wrong-token"));
    assert_eq!(s, 401);

    // Workers report once a second.
    assert!(
        eventually(Duration::from_secs(4), || {
            let m = sfu_metrics(&api);
            val(&m, "tern_sfu_routers") == 2.0
                && val(&m, "tern_sfu_transports") == 3.0
                && val(&m, "tern_sfu_producers") == 1.0
                && val(&m, "tern_sfu_consumers") == 2.0
        }),
        "{}",
        get(api.admin, "/metrics").body
    );

    // Deleting a router frees everything in it, sockets included.
    let (s, v) = api.call("DELETE", &base, None);
    assert_eq!((s, v), (200, json!({ "deleted": true })));
    let (s, _) = api.call("GET", &base, None);
    assert_eq!(s, 404);
    let (s, _) = api.call("DELETE", &format!("/sfu/routers/{}", id(&r2)), None);
    assert_eq!(s, 200);
    assert!(
        UdpSocket::bind(room.pub_addr).is_ok(),
        "transport port still bound"
    );
    assert!(eventually(Duration::from_secs(3), || {
        let m = sfu_metrics(&api);
        val(&m, "tern_sfu_routers") == 0.0 && val(&m, "tern_sfu_transports") == 0.0
    }));
    relay.shutdown();
}

#[test]
fn one_publisher_reaches_two_subscribers_and_bad_input_is_counted() {
    let (relay, api) = start();
    let room = room(&api, None);
    let mut plain = |p: Vec<u8>| p;
    let seq = publish(&room, 1000, 20, &mut plain);
    assert_fanout(&room, 60, &mut |_, p| p);

    // Bad input on the publisher's transport: malformed RTP, malformed RTCP,
    // an unknown SSRC, an undeclared payload type. Each is a counted drop.
    let send = |b: &[u8]| room.publisher.send_to(b, room.pub_addr).unwrap();
    send(&[0x80, 96, 0, 1]);
    send(&[0x80, 200, 0, 9, 1, 2]);
    send(&rtp_vp8(0xDEAD_BEEF, 1, 1, true, true, &[0; 20]));
    let mut bad_pt = rtp_vp8(PUB_SSRC, seq, 1, false, false, &[0; 20]);
    bad_pt[1] = 97;
    send(&bad_pt);
    // A stranger writing to the publisher's (now learned) transport.
    udp()
        .send_to(
            &rtp_vp8(PUB_SSRC, seq, 1, true, true, &[0; 20]),
            room.pub_addr,
        )
        .unwrap();

    // The session keeps flowing, with continuous outgoing sequence numbers.
    let _ = publish(&room, seq.wrapping_add(1), 10, &mut plain);
    assert_fanout(&room, 30, &mut |_, p| p);

    assert!(
        eventually(Duration::from_secs(4), || {
            let m = sfu_metrics(&api);
            [
                "malformed_rtp",
                "malformed_rtcp",
                "unknown_ssrc",
                "unknown_payload_type",
                "wrong_source",
            ]
            .iter()
            .all(|r| val(&m, &format!("tern_sfu_dropped_total{{reason=\"{r}\"}}")) >= 1.0)
                && val(&m, "tern_sfu_packets_total{direction=\"out\"}") >= 180.0
        }),
        "{}",
        get(api.admin, "/metrics").body
    );
    let (s, c) = api.call(
        "GET",
        &format!(
            "/sfu/routers/{}/consumers/{}",
            room.router, room.consumers[1]
        ),
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(c["stats"]["packets"], json!(90));
    let (s, r) = api.call("GET", &format!("/sfu/routers/{}", room.router), None);
    assert_eq!(s, 200);
    assert_eq!(r["producers"][0]["encodings"][0]["packets"], json!(90));

    // Pausing one consumer stops its copies, not the other's.
    let consumer0 = format!(
        "/sfu/routers/{}/consumers/{}",
        room.router, room.consumers[0]
    );
    let (s, _) = api.call("PATCH", &consumer0, Some(json!({ "paused": true })));
    assert_eq!(s, 200);
    let _ = publish(&room, seq.wrapping_add(40), 5, &mut plain);
    assert!(drain_rtp(&room.subs[0]).is_empty());
    assert_eq!(drain_rtp(&room.subs[1]).len(), 15);
    relay.shutdown();
}

#[test]
fn srtp_both_ways_and_wrong_keys_are_counted() {
    use base64::Engine as _;
    use tern_sfu::srtp::{SrtpContext, SrtpProfile};
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let (relay, api) = start();
    // Publisher → tern with AES_CM; tern → subscribers with AEAD GCM.
    let pub_key: Vec<u8> = (0u8..30).collect();
    let tern_to_pub: Vec<u8> = (100u8..130).collect();
    let sub_recv: Vec<u8> = (50u8..78).collect(); // what subscribers send
    let sub_send: Vec<u8> = (200u8..228).collect(); // what tern sends them
    let room = room(
        &api,
        Some((
            json!({ "profile": "AES_CM_128_HMAC_SHA1_80", "recv_key": b64(&pub_key), "send_key": b64(&tern_to_pub) }),
            json!({ "profile": "AEAD_AES_128_GCM", "recv_key": b64(&sub_recv), "send_key": b64(&sub_send) }),
        )),
    );
    let cm = SrtpProfile::Aes128CmHmacSha1_80;
    let gcm = SrtpProfile::AeadAes128Gcm;
    let mut tx = SrtpContext::new(cm, &pub_key[..16], &pub_key[16..]).unwrap();
    let mut protect = |p: Vec<u8>| {
        let len = p.len();
        let mut buf = p;
        buf.resize(len + 32, 0);
        let n = tx.protect_rtp(&mut buf, len).unwrap();
        buf.truncate(n);
        buf
    };
    let seq = publish(&room, 7, 10, &mut protect);
    let mut rx: Vec<SrtpContext> = (0..2)
        .map(|_| SrtpContext::new(gcm, &sub_send[..16], &sub_send[16..]).unwrap())
        .collect();
    assert_fanout(&room, 30, &mut |i, mut p| {
        let n = rx[i].unprotect_rtp(&mut p).expect("subscriber decrypts");
        p.truncate(n);
        p
    });

    // A packet under a wrong key, and a replay of a good one: counted drops.
    let mut wrong = SrtpContext::new(cm, &[9; 16], &[9; 14]).unwrap();
    let mut bad = rtp_vp8(PUB_SSRC, seq, 1, true, true, &[1; 30]);
    let len = bad.len();
    bad.resize(len + 32, 0);
    let n = wrong.protect_rtp(&mut bad, len).unwrap();
    room.publisher.send_to(&bad[..n], room.pub_addr).unwrap();
    let good = protect(rtp_vp8(PUB_SSRC, seq, 1, true, true, &[2; 30]));
    room.publisher.send_to(&good, room.pub_addr).unwrap();
    room.publisher.send_to(&good, room.pub_addr).unwrap();
    assert_eq!(drain_rtp(&room.subs[1]).len(), 1);
    assert!(eventually(Duration::from_secs(4), || {
        let m = sfu_metrics(&api);
        val(&m, "tern_sfu_srtp_auth_failures_total") >= 1.0
            && val(&m, "tern_sfu_srtp_replays_total") >= 1.0
    }));
    let (s, t) = api.call(
        "GET",
        &format!("/sfu/routers/{}/transports", room.router),
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(t["transports"][0]["srtp"], json!("AES_CM_128_HMAC_SHA1_80"));
    assert_eq!(t["transports"][0]["stats"]["srtp_auth_failures"], json!(1));
    relay.shutdown();
}

#[test]
fn a_subscribers_nack_is_answered_from_the_retransmission_ring() {
    let (relay, api) = start();
    let room = room(&api, None);
    let _ = publish(&room, 500, 10, &mut |p| p);
    let got = drain_rtp(&room.subs[0]);
    assert_eq!(got.len(), 30);
    assert_eq!(drain_rtp(&room.subs[1]).len(), 30);
    // Subscriber 0 "lost" packets 10 and 12: an RR and a generic NACK
    // (RFC 4585, PID + BLP) from its own address, as one compound packet.
    let lost = &got[10];
    let pid = u16::from_be_bytes([lost[2], lost[3]]);
    let sender: u32 = 0x5EB0_0001;
    let media = room.consumer_ssrcs[0];
    let mut rtcp = vec![0x80, 201, 0, 1];
    rtcp.extend_from_slice(&sender.to_be_bytes());
    rtcp.extend_from_slice(&[0x81, 205, 0, 3]);
    rtcp.extend_from_slice(&sender.to_be_bytes());
    rtcp.extend_from_slice(&media.to_be_bytes());
    rtcp.extend_from_slice(&pid.to_be_bytes());
    rtcp.extend_from_slice(&0b10u16.to_be_bytes()); // pid + 2
    room.subs[0].send_to(&rtcp, room.sub_transports[0]).unwrap();
    let resent = drain_rtp(&room.subs[0]);
    assert_eq!(resent.len(), 2, "retransmissions");
    assert_eq!(&resent[0], lost, "byte-identical to the first send");
    assert_eq!(&resent[1], &got[12]);
    // The other subscriber gets nothing extra.
    assert!(drain_rtp(&room.subs[1]).is_empty());
    // A NACK from a stranger's address is not answered.
    udp().send_to(&rtcp, room.sub_transports[0]).unwrap();
    assert!(drain_rtp(&room.subs[0]).is_empty());
    let (s, c) = api.call(
        "GET",
        &format!(
            "/sfu/routers/{}/consumers/{}",
            room.router, room.consumers[0]
        ),
        None,
    );
    assert_eq!(s, 200);
    assert_eq!(c["stats"]["retransmitted"], json!(2));
    assert_eq!(c["stats"]["nacks_received"], json!(1));
    assert!(eventually(Duration::from_secs(4), || {
        let m = sfu_metrics(&api);
        val(&m, "tern_sfu_nack_retransmissions_total") == 2.0
            && val(&m, "tern_sfu_dropped_total{reason=\"wrong_source\"}") == 1.0
    }));
    relay.shutdown();
}

#[test]
fn simulcast_layer_switch_through_the_api_waits_for_a_key_frame() {
    let (relay, api) = start();
    let (_, r) = api.call("POST", "/sfu/routers", None);
    let base = format!("/sfu/routers/{}", id(&r));
    let publisher = udp();
    let (_, t) = api.call("POST", &format!("{base}/transports"), Some(json!({})));
    let pub_addr: SocketAddr = t["local"].as_str().unwrap().parse().unwrap();
    let sub = udp();
    let (_, st) = api.call(
        "POST",
        &format!("{base}/transports"),
        Some(json!({ "remote": sub.local_addr().unwrap().to_string() })),
    );
    let (low, high) = (0x1000_0001u32, 0x1000_0002u32);
    let (s, p) = api.call(
        "POST",
        &format!("{base}/producers"),
        Some(
            json!({ "transport": id(&t), "kind": "video", "codec": "vp8", "clock_rate": 90000,
                      "payload_types": [96], "encodings": [{ "ssrc": low }, { "ssrc": high }] }),
        ),
    );
    assert_eq!(s, 201, "{p}");
    let (s, c) = api.call(
        "POST",
        &format!("{base}/consumers"),
        Some(json!({ "producer": id(&p), "transport": id(&st), "ssrc": 77, "preferred_spatial_layer": 1 })),
    );
    assert_eq!(s, 201, "{c}");
    // One packet per frame on each encoding; the payload byte says which.
    let mut seq = [100u16, 9000u16];
    let mut frame = |key: [bool; 2]| {
        for (e, ssrc) in [low, high].into_iter().enumerate() {
            let p = rtp_vp8(
                ssrc,
                seq[e],
                3000 * u32::from(seq[e]),
                true,
                key[e],
                &[e as u8; 30],
            );
            publisher.send_to(&p, pub_addr).unwrap();
            seq[e] = seq[e].wrapping_add(1);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    frame([true, true]);
    for _ in 0..5 {
        frame([false, false]);
    }
    let got = drain_rtp(&sub);
    assert_eq!(got.len(), 6);
    assert!(
        got.iter().all(|p| *p.last().unwrap() == 1),
        "the high encoding"
    );

    // Ask for the low one: tern asks the publisher for a key frame (PLI) and
    // keeps sending the high one until the low one's key frame arrives.
    let consumer = format!("{base}/consumers/{}", id(&c));
    let (s, _) = api.call(
        "PATCH",
        &consumer,
        Some(json!({ "preferred_spatial_layer": 0 })),
    );
    assert_eq!(s, 200);
    let mut buf = [0u8; 1500];
    let mut pli = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !pli && std::time::Instant::now() < deadline {
        if let Ok(n) = publisher.recv(&mut buf) {
            let mut at = 0;
            while at + 4 <= n {
                let len = 4 * (usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]])) + 1);
                pli |= buf[at + 1] == 206 && buf[at] & 0x1F == 1;
                at += len;
            }
        }
    }
    assert!(pli, "no PLI reached the publisher");
    for _ in 0..3 {
        frame([false, false]);
    }
    frame([true, false]);
    frame([false, false]);
    let got = drain_rtp(&sub);
    assert_eq!(got.len(), 5);
    let from: Vec<u8> = got.iter().map(|p| *p.last().unwrap()).collect();
    assert_eq!(from, vec![1, 1, 1, 0, 0], "switch at the low key frame");
    let seqs: Vec<u16> = got
        .iter()
        .map(|p| u16::from_be_bytes([p[2], p[3]]))
        .collect();
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1), "{seqs:?}");
    }
    let (_, c) = api.call("GET", &consumer, None);
    assert_eq!(c["stats"]["spatial_layer"], json!(0));
    relay.shutdown();
}
