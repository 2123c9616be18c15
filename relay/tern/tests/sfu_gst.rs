//! Real media peers through tern's SFU: GStreamer (`gst-launch-1.0`, from
//! Debian; nobody here wrote it) encodes a test pattern to VP8, packetizes it
//! (`rtpvp8pay`) and publishes it over RTP — plain, or SRTP with `srtpenc` —
//! to tern; two `gst-launch-1.0` subscribers depacketize and decode what tern
//! forwards to them (`rtpvp8depay ! vp8dec`, SRTP removed by `srtpdec`), and
//! count decoded frames at a `fakesink`. The decoded frame counts must match
//! what the publisher encoded (nothing undecodable, nothing lost on loopback)
//! and the decoders must report no error.
//!
//! Under loss: a two-way hop in the test drops 2 % of the RTP tern sends a
//! third subscriber (`rtpbin` with `do-retransmission` and the AVPF profile,
//! so its jitter buffer NACKs what is missing); tern answers the NACKs from
//! its retransmission ring and every frame still decodes.
//!
//! Skipped (with a message) when `gst-launch-1.0` or a plugin is missing,
//! failed instead under `TERN_REQUIRE_INTEROP=1` (CI installs them with
//! `tests/install-deps.sh`). Runs on `TERN_TEST_IO_BACKEND`'s back end.

#![allow(clippy::disallowed_methods)] // the test bounds its waits on the clock

mod common;
mod ports;

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tern::{Config, Relay};

use common::{eventually, get, test_io_backend, TOKEN};
use ports::free_relay_ports;

/// Frames the publisher encodes (3 s at 30 fps).
const FRAMES: usize = 90;
const PUB_SSRC: u32 = 0x0BAD_CAFE;
const RTP_CAPS: &str =
    "application/x-rtp,media=video,clock-rate=90000,encoding-name=VP8,payload=96";

fn have_gstreamer() -> bool {
    let ok = [
        "vp8enc",
        "vp8dec",
        "rtpvp8pay",
        "rtpvp8depay",
        "srtpenc",
        "srtpdec",
        "videotestsrc",
    ]
    .iter()
    .all(|e| {
        Command::new("gst-inspect-1.0")
            .arg(e)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !ok {
        assert!(
            std::env::var("TERN_REQUIRE_INTEROP").as_deref() != Ok("1"),
            "TERN_REQUIRE_INTEROP=1, but gst-launch-1.0 or a plugin is missing (tests/install-deps.sh)"
        );
        eprintln!("skipped: gstreamer1.0-tools / plugins-base / -good / -bad not installed");
    }
    ok
}

fn api(admin: SocketAddr, method: &str, path: &str, body: Value) -> Value {
    let body = body.to_string();
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let a = common::http_raw(admin, raw.as_bytes());
    assert!(
        a.status / 100 == 2,
        "{method} {path}: {} {}",
        a.status,
        a.body
    );
    serde_json::from_str(&a.body).unwrap()
}

/// A free loopback UDP port (probed, then released for GStreamer to bind).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SRTP caps fields for srtpdec (AES_CM_128_HMAC_SHA1_80); srtpdec takes
/// keys from caps only for the SSRC they name.
fn srtp_caps(ssrc: u32, key: &[u8]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        ",ssrc=(uint){ssrc},srtp-key=(buffer){hex},srtp-cipher=(string)aes-128-icm,srtp-auth=(string)hmac-sha1-80,\
         srtcp-cipher=(string)aes-128-icm,srtcp-auth=(string)hmac-sha1-80,roc=(uint)0"
    )
}

fn subscriber(port: u16, ssrc: u32, srtp_key: Option<&[u8]>) -> Child {
    let mut pipeline = format!("udpsrc port={port} ");
    match srtp_key {
        None => pipeline.push_str(&format!("caps=\"{RTP_CAPS}\" ! ")),
        Some(k) => pipeline.push_str(&format!(
            "caps=\"application/x-srtp,media=video,clock-rate=90000,encoding-name=VP8,payload=96{}\" ! srtpdec ! ",
            srtp_caps(ssrc, k)
        )),
    }
    pipeline.push_str("rtpjitterbuffer latency=200 ! rtpvp8depay ! vp8dec ! fakesink silent=false");
    Command::new("sh")
        .arg("-c")
        .arg(format!("exec gst-launch-1.0 -e -v {pipeline}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gst-launch-1.0 runs")
}

fn publish(port: u16, srtp_key: Option<&[u8]>) {
    let sink = match srtp_key {
        None => String::new(),
        Some(k) => {
            let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
            format!("srtpenc key={hex} rtp-cipher=aes-128-icm rtp-auth=hmac-sha1-80 rtcp-cipher=aes-128-icm rtcp-auth=hmac-sha1-80 ! ")
        }
    };
    let pipeline = format!(
        "videotestsrc num-buffers={FRAMES} is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 \
         ! vp8enc deadline=1 keyframe-max-dist=30 ! rtpvp8pay pt=96 ssrc={PUB_SSRC} mtu=1200 ! {sink}udpsink host=127.0.0.1 port={port}"
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("exec gst-launch-1.0 -q {pipeline}"))
        .output()
        .expect("gst-launch-1.0 runs");
    assert!(
        out.status.success(),
        "publisher failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stop a subscriber (SIGINT: `-e` turns it into EOS) and return its output.
fn finish(mut child: Child) -> (String, String) {
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    let _ = kill(pid, Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.wait();
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (out, err)
}

fn run(srtp: bool) {
    if !have_gstreamer() {
        return;
    }
    let mut c = Config::dev_default();
    c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.relay_ports = free_relay_ports(10);
    c.sfu = true;
    c.sfu_ports = free_relay_ports(20);
    c.workers = 2;
    c.admin = Some("127.0.0.1:0".parse().unwrap());
    c.admin_token = Some(TOKEN.to_owned());
    c.io_backend = test_io_backend();
    let relay = Relay::start(c).unwrap();
    let admin = relay.admin_addr().unwrap();
    assert!(eventually(Duration::from_secs(5), || get(admin, "/readyz")
        .status
        == 200));

    use base64::Engine as _;
    let b64 = |k: &[u8]| base64::engine::general_purpose::STANDARD.encode(k);
    let pub_key: Vec<u8> = (1u8..=30).collect();
    let sub_key: Vec<u8> = (101u8..=130).collect();
    let srtp_body = |recv: &[u8], send: &[u8]| json!({ "profile": "AES_CM_128_HMAC_SHA1_80", "recv_key": b64(recv), "send_key": b64(send) });

    let router = api(admin, "POST", "/sfu/routers", json!({}))["id"].clone();
    let base = format!("/sfu/routers/{router}");
    let mut pub_body = json!({});
    if srtp {
        pub_body["srtp"] = srtp_body(&pub_key, &pub_key);
    }
    let t = api(admin, "POST", &format!("{base}/transports"), pub_body);
    let pub_transport = t["id"].clone();
    let pub_port: SocketAddr = t["local"].as_str().unwrap().parse().unwrap();
    let producer = api(
        admin,
        "POST",
        &format!("{base}/producers"),
        json!({ "transport": pub_transport, "kind": "video", "codec": "vp8", "clock_rate": 90000,
                "payload_types": [96], "encodings": [{ "ssrc": PUB_SSRC }] }),
    )["id"]
        .clone();
    let mut subs = Vec::new();
    let mut consumers = Vec::new();
    for i in 0..2u32 {
        let port = free_port();
        let mut body = json!({ "remote": format!("127.0.0.1:{port}") });
        if srtp {
            body["srtp"] = srtp_body(&sub_key, &sub_key);
        }
        let t = api(admin, "POST", &format!("{base}/transports"), body);
        let ssrc = 0x5B5B_0000 + i;
        let c = api(
            admin,
            "POST",
            &format!("{base}/consumers"),
            json!({ "producer": producer, "transport": t["id"], "ssrc": ssrc }),
        );
        consumers.push(c["id"].clone());
        subs.push(subscriber(port, ssrc, srtp.then_some(&sub_key[..])));
    }
    // Let the subscribers bind and reach PLAYING.
    std::thread::sleep(Duration::from_millis(1500));
    publish(pub_port.port(), srtp.then_some(&pub_key[..]));
    std::thread::sleep(Duration::from_millis(1000));

    let router_view = api(admin, "GET", &base, json!({}));
    let received = router_view["producers"][0]["encodings"][0]["packets"]
        .as_u64()
        .unwrap();
    assert!(received >= FRAMES as u64, "{router_view:#}");
    for (i, sub) in subs.into_iter().enumerate() {
        let (out, err) = finish(sub);
        let frames = out.matches("last-message = chain").count();
        let forwarded = &router_view["consumers"][i]["stats"]["packets"];
        assert_eq!(
            forwarded.as_u64(),
            Some(received),
            "consumer {i}: {router_view:#}"
        );
        assert_eq!(
            frames,
            FRAMES,
            "subscriber {i} decoded {frames} of {FRAMES} frames\nstderr: {err}\nstdout tail: {}",
            out.lines().rev().take(20).collect::<Vec<_>>().join("\n")
        );
        for bad in ["ERROR", "WARNING", "Failed to decode"] {
            assert!(
                !out.contains(bad) && !err.contains(bad),
                "subscriber {i}: {bad}\n{err}\n{out}"
            );
        }
    }
    relay.shutdown();
}

#[test]
fn gstreamer_vp8_publisher_to_two_decoding_subscribers() {
    run(false);
}

#[test]
fn gstreamer_vp8_over_srtp_to_two_decoding_subscribers() {
    run(true);
}

/// A two-way lossy hop between tern and a subscriber: what tern sends to
/// `hop` goes on to the subscriber's RTP port (every 50th RTP packet dropped:
/// 2 %) or, for RTCP, its RTCP port; what the subscriber sends to the hop's
/// second socket (its NACKs and RRs) goes back to tern from `hop`, the
/// address tern knows the subscriber by. Runs until `stop`, at most 30 s.
fn lossy_hop(
    hop: UdpSocket,
    back: UdpSocket,
    rtp: SocketAddr,
    rtcp: SocketAddr,
    tern: SocketAddr,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let until = Instant::now() + Duration::from_secs(30);
    std::thread::spawn(move || {
        hop.set_nonblocking(true).unwrap();
        back.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2048];
        let (mut rtp_seen, mut dropped) = (0u64, 0u64);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            let mut idle = true;
            if let Ok(n) = hop.recv(&mut buf) {
                idle = false;
                if (192..=223).contains(&buf[1]) {
                    let _ = hop.send_to(&buf[..n], rtcp);
                } else {
                    rtp_seen += 1;
                    // Never the first packets (the first key frame), then 1 in 50.
                    if rtp_seen > 10 && rtp_seen % 50 == 0 {
                        dropped += 1;
                    } else {
                        let _ = hop.send_to(&buf[..n], rtp);
                    }
                }
            }
            if let Ok(n) = back.recv(&mut buf) {
                idle = false;
                let _ = hop.send_to(&buf[..n], tern);
            }
            if idle {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        dropped
    })
}

#[test]
fn gstreamer_subscriber_recovers_2_percent_loss_by_nack() {
    if !have_gstreamer() {
        return;
    }
    let mut c = Config::dev_default();
    c.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.relay_ports = free_relay_ports(10);
    c.sfu = true;
    c.sfu_ports = free_relay_ports(20);
    c.workers = 2;
    c.admin = Some("127.0.0.1:0".parse().unwrap());
    c.admin_token = Some(TOKEN.to_owned());
    c.io_backend = test_io_backend();
    let relay = Relay::start(c).unwrap();
    let admin = relay.admin_addr().unwrap();
    assert!(eventually(Duration::from_secs(5), || get(admin, "/readyz")
        .status
        == 200));
    let router = api(admin, "POST", "/sfu/routers", json!({}))["id"].clone();
    let base = format!("/sfu/routers/{router}");
    let t = api(admin, "POST", &format!("{base}/transports"), json!({}));
    let pub_port: SocketAddr = t["local"].as_str().unwrap().parse().unwrap();
    let producer = api(
        admin,
        "POST",
        &format!("{base}/producers"),
        json!({ "transport": t["id"], "kind": "video", "codec": "vp8", "clock_rate": 90000,
                "payload_types": [96], "encodings": [{ "ssrc": PUB_SSRC }] }),
    )["id"]
        .clone();
    let hop = UdpSocket::bind("127.0.0.1:0").unwrap();
    let back = UdpSocket::bind("127.0.0.1:0").unwrap();
    let st = api(
        admin,
        "POST",
        &format!("{base}/transports"),
        json!({ "remote": hop.local_addr().unwrap().to_string() }),
    );
    let tern_sub: SocketAddr = st["local"].as_str().unwrap().parse().unwrap();
    let consumer = api(
        admin,
        "POST",
        &format!("{base}/consumers"),
        json!({ "producer": producer, "transport": st["id"], "ssrc": 0x7777_0001u32 }),
    )["id"]
        .clone();
    let (rtp_port, rtcp_port) = (free_port(), free_port());
    let stop = Arc::new(AtomicBool::new(false));
    let hop_thread = lossy_hop(
        hop,
        back.try_clone().unwrap(),
        SocketAddr::from(([127, 0, 0, 1], rtp_port)),
        SocketAddr::from(([127, 0, 0, 1], rtcp_port)),
        tern_sub,
        stop.clone(),
    );
    let back_port = back.local_addr().unwrap().port();
    let pipeline = format!(
        "rtpbin name=rb latency=400 do-retransmission=true rtp-profile=avpf \
         udpsrc port={rtp_port} caps=\"{RTP_CAPS}\" ! rb.recv_rtp_sink_0 \
         udpsrc port={rtcp_port} caps=\"application/x-rtcp\" ! rb.recv_rtcp_sink_0 \
         rb. ! rtpvp8depay ! vp8dec ! fakesink silent=false \
         rb.send_rtcp_src_0 ! udpsink host=127.0.0.1 port={back_port} sync=false async=false"
    );
    let sub = Command::new("sh")
        .arg("-c")
        .arg(format!("exec gst-launch-1.0 -e -v {pipeline}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gst-launch-1.0 runs");
    std::thread::sleep(Duration::from_millis(1500));
    publish(pub_port.port(), None);
    std::thread::sleep(Duration::from_millis(1500));
    let view = api(
        admin,
        "GET",
        &format!("{base}/consumers/{consumer}"),
        json!({}),
    );
    let (out, err) = finish(sub);
    stop.store(true, Ordering::Relaxed);
    let dropped = hop_thread.join().unwrap();
    let frames = out.matches("last-message = chain").count();
    assert!(dropped > 0, "the hop dropped nothing");
    let resent = view["stats"]["retransmitted"].as_u64().unwrap();
    assert!(
        resent >= dropped,
        "{dropped} dropped, {resent} resent: {view:#}"
    );
    assert_eq!(
        frames, FRAMES,
        "decoded {frames} of {FRAMES} frames with {dropped} packets dropped, {resent} resent\n{err}"
    );
    relay.shutdown();
}
