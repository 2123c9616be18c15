//! SFU mode: one publisher fanned out by tern's SFU to N subscribers.
//!
//! Starts `tern` (the binary given) with `--sfu` on probed loopback ports,
//! builds one router through the control API (a publisher transport whose
//! remote tern learns, N subscriber transports and N consumers), sends paced
//! VP8-shaped RTP (a key frame every `key_every` packets) for `duration`
//! seconds, and reports what tern sent (its `tern_sfu_packets_total{direction="out"}`
//! counter), what arrived, and the relay's CPU time from `/proc/PID/stat`:
//! **egress packets per relay CPU-second**, the SFU's figure of merit.
//!
//! Every subscriber transport's remote is the same receiving socket (the
//! consumers differ by SSRC): tern still sends N datagrams per packet, and
//! the harness reads one socket. Receive-side drops of that socket count as
//! loss here, not as tern's. Traffic stays on loopback; the load loop is
//! bounded by `duration` (at most 60 s) and its packet count; the relay is
//! killed by PID when done.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{bail, Error, Result};
use crate::{cpu, servers};

/// What to run.
#[derive(Debug, Clone)]
pub struct SfuScenario {
    /// The `tern` binary.
    pub tern: PathBuf,
    /// Subscribers (consumers) of the one publisher.
    pub subscribers: usize,
    /// Publisher packets per second.
    pub rate: u64,
    /// Seconds of traffic (at most 60).
    pub duration: u64,
    /// RTP payload bytes.
    pub payload: usize,
    /// tern worker threads.
    pub workers: usize,
    /// SRTP (AES_CM_128_HMAC_SHA1_80) towards the subscribers.
    pub srtp: bool,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct SfuReport {
    /// Subscribers.
    pub subscribers: usize,
    /// Publisher packets sent.
    pub sent: u64,
    /// Datagrams tern handed to the kernel (its own counter).
    pub egress: u64,
    /// Datagrams the harness received.
    pub received: u64,
    /// Seconds of the window.
    pub seconds: f64,
    /// Relay CPU seconds in the window.
    pub relay_cpu_seconds: f64,
    /// `egress / relay_cpu_seconds`.
    pub egress_per_cpu_second: f64,
    /// `egress / seconds`.
    pub egress_pps: f64,
    /// `1 - received / (sent × subscribers)`.
    pub loss: f64,
}

const TOKEN: &str = "tern-bench-sfu-token-0123456789";

/// Run the scenario once.
pub fn run(sc: &SfuScenario) -> Result<SfuReport> {
    if sc.subscribers == 0 || sc.subscribers > 10_000 {
        bail!("--subscribers must be 1..=10000");
    }
    let duration = sc.duration.clamp(1, 60);
    let admin = free_tcp_port()?;
    let start = 20_000 + (std::process::id() % 20_000) as u16;
    let (lo, hi) = free_udp_window(start, sc.subscribers + 64 * sc.workers.max(1))?;
    let (rlo, rhi) = free_udp_window(hi.saturating_add(1), 16)?;
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    let listen = SocketAddr::new(ip, servers::free_udp_port(ip)?);
    let mut cmd = Command::new(&sc.tern);
    cmd.args([
        "--listen",
        &listen.to_string(),
        "--relay-ports",
        &format!("{rlo}-{rhi}"),
        "--sfu",
        "--sfu-ports",
        &format!("{lo}-{hi}"),
        "--admin",
        &admin.to_string(),
        "--admin-token",
        TOKEN,
        "--workers",
        &sc.workers.to_string(),
        "--realm",
        "bench",
        "--log-level",
        "warn",
        "--nic-stats",
        "off",
    ]);
    // Killed by PID when dropped, and dies with the harness.
    let relay = servers::Spawned::start("tern-sfu", cmd, listen, false)?;
    let ready = Instant::now() + Duration::from_secs(10);
    while !http(admin, "GET", "/readyz", "").is_ok_and(|(s, _)| s == 200) {
        if Instant::now() > ready {
            bail!("tern did not become ready on {admin}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let receiver = UdpSocket::bind("127.0.0.1:0")?;
    let sock = socket2::SockRef::from(&receiver);
    let _ = sock.set_recv_buffer_size(64 << 20);
    receiver.set_read_timeout(Some(Duration::from_millis(200)))?;
    let publisher = UdpSocket::bind("127.0.0.1:0")?;

    let (_, r) = call(admin, "POST", "/sfu/routers", "{}")?;
    let base = format!("/sfu/routers/{}", r["id"]);
    let (_, t) = call(admin, "POST", &format!("{base}/transports"), "{}")?;
    let pub_t = t["id"].clone();
    let pub_addr: SocketAddr = t["local"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error(format!("transport answer {t}")))?;
    let ssrc: u32 = 0x00BE_4C00;
    let (_, p) = call(
        admin,
        "POST",
        &format!("{base}/producers"),
        &format!(
            r#"{{"transport":{pub_t},"kind":"video","codec":"vp8","clock_rate":90000,"payload_types":[96],"encodings":[{{"ssrc":{ssrc}}}]}}"#
        ),
    )?;
    let srtp = if sc.srtp {
        // Key and salt, base64 of 30 bytes of 0x2a.
        r#","srtp":{"profile":"AES_CM_128_HMAC_SHA1_80","recv_key":"KioqKioqKioqKioqKioqKioqKioqKioqKioqKioq","send_key":"KioqKioqKioqKioqKioqKioqKioqKioqKioqKioq"}"#
    } else {
        ""
    };
    let remote = receiver.local_addr()?;
    for i in 0..sc.subscribers {
        let (_, t) = call(
            admin,
            "POST",
            &format!("{base}/transports"),
            &format!(r#"{{"remote":"{remote}"{srtp}}}"#),
        )?;
        call(
            admin,
            "POST",
            &format!("{base}/consumers"),
            &format!(
                r#"{{"producer":{},"transport":{},"ssrc":{}}}"#,
                p["id"],
                t["id"],
                0x5000_0000 + i
            ),
        )?;
    }

    let counting = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        let mut idle_since: Option<Instant> = None;
        let end = Instant::now() + Duration::from_secs(duration + 5);
        while Instant::now() < end {
            match receiver.recv(&mut buf) {
                Ok(len) if len >= 12 && !(192..=223).contains(&buf[1]) => {
                    n += 1;
                    idle_since = None;
                }
                Ok(_) => {}
                Err(_) => {
                    // Done once nothing came for a second after the window.
                    let t = *idle_since.get_or_insert_with(Instant::now);
                    if n > 0 && t.elapsed() > Duration::from_secs(1) {
                        break;
                    }
                }
            }
        }
        n
    });

    let out_before = egress(admin)?;
    let cpu_before = cpu::process_ticks(relay.pid)?;
    let start = Instant::now();
    let total = sc.rate.saturating_mul(duration);
    let mut packet = vec![0u8; 12 + 5 + sc.payload.max(8)];
    let mut sent = 0u64;
    while sent < total {
        let due = start + Duration::from_secs_f64(sent as f64 / sc.rate.max(1) as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let seq = sent as u16;
        packet[..2].copy_from_slice(&[0x80, 96]);
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet[4..8].copy_from_slice(&((sent / 3) as u32 * 3000).to_be_bytes());
        packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
        // VP8 payload descriptor with S set (every packet starts a frame),
        // and a key frame every 30.
        packet[12] = 0x10;
        packet[13] = if sent % 30 == 0 { 0x00 } else { 0x01 };
        packet[14..17].copy_from_slice(&[0x9d, 0x01, 0x2a]);
        publisher.send_to(&packet, pub_addr)?;
        sent += 1;
    }
    // Let the last fan-out leave, then read the counters.
    std::thread::sleep(Duration::from_millis(300));
    let seconds = start.elapsed().as_secs_f64();
    let cpu_after = cpu::process_ticks(relay.pid)?;
    let received = counting
        .join()
        .map_err(|_| Error("receiver thread panicked".into()))?;
    let out_after = egress_settled(admin, out_before + received)?;
    let relay_cpu_seconds = (cpu_after - cpu_before) as f64 / cpu::ticks_per_sec();
    let egress = out_after - out_before;
    drop(relay);
    Ok(SfuReport {
        subscribers: sc.subscribers,
        sent,
        egress,
        received,
        seconds,
        relay_cpu_seconds,
        egress_per_cpu_second: egress as f64 / relay_cpu_seconds.max(1e-9),
        egress_pps: egress as f64 / seconds,
        loss: 1.0 - received as f64 / (sent as f64 * sc.subscribers as f64).max(1.0),
    })
}

fn egress(admin: SocketAddr) -> Result<u64> {
    let (_, text) = http(admin, "GET", "/metrics", "")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("tern_sfu_packets_total{direction=\"out\"}"))
        .ok_or_else(|| Error("no tern_sfu_packets_total in /metrics".into()))?;
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Error(format!("bad sample {line}")))
}

/// Workers report about once a second (a report can skip an interval):
/// wait until the counter reaches what the harness received, or stops
/// moving for three readings.
fn egress_settled(admin: SocketAddr, at_least: u64) -> Result<u64> {
    let mut last = egress(admin)?;
    let mut same = 0;
    for _ in 0..15 {
        if last >= at_least || same >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(700));
        let now = egress(admin)?;
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    Ok(last)
}

fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, serde_json::Value)> {
    let (status, text) = http(admin, method, path, body)?;
    if status / 100 != 2 {
        bail!("{method} {path}: {status} {text}");
    }
    let v = serde_json::from_str(&text).map_err(|e| Error(format!("{path}: {e}: {text}")))?;
    Ok((status, v))
}

fn http(admin: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let status = answer
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error(format!("bad HTTP answer {answer:?}")))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

fn free_tcp_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `n` consecutive free UDP ports on 127.0.0.1 from about `start`, probed now.
fn free_udp_window(start: u16, n: usize) -> Result<(u16, u16)> {
    let n = u16::try_from(n).map_err(|_| Error("too many ports".into()))?;
    let mut lo = start.clamp(20_000, 59_000);
    for _ in 0..200 {
        let hi = lo.saturating_add(n - 1);
        if hi < 60_000 && (lo..=hi).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return Ok((lo, hi));
        }
        lo = if hi >= 59_000 { 20_000 } else { hi + 1 };
    }
    bail!("no free window of {n} UDP ports")
}
