//! Proves that the worker's SFU path allocates nothing per packet: a
//! publisher's RTP (SRTP, AES_CM_128_HMAC_SHA1_80) arriving on an SFU
//! transport, fanned out by the router to two consumers — one plain, one on a
//! pipe transport (the cascade to another tern: every packet as it arrived)
//! — protected again (AEAD_AES_128_GCM) and queued on the PacketIo send queue.
//!
//! The same counting allocator as `no_alloc.rs`: allocations on the relay's
//! worker threads (`tern-worker-N`) fail the test; other relay threads (the
//! admin endpoint, the side thread) are counted apart and reported; this
//! test's own thread is exempt. The room is set up through the control API
//! before counting starts. Once per back end the kernel can run (or the one
//! `TERN_TEST_IO_BACKEND` names). `harness = false`, like `no_alloc.rs`.

mod ports;
use ports::free_relay_ports;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use tern::config::IoBackend;
use tern::{Config, Relay};
use tern_sfu::srtp::{SrtpContext, SrtpProfile};

mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const TOKEN: &str = "no-alloc-sfu-token-0123456789";
const WARM_UP: usize = 1_000;
const MEASURED: usize = 10_000;
const BURST: usize = 20;
const PAYLOAD: usize = 160;
const PUB_SSRC: u32 = 0x5EED_0001;
const PUB_KEY: [u8; 30] = [7; 30];
const SUB_KEY: [u8; 28] = [9; 28];

fn main() -> ExitCode {
    counting::main("no_alloc_sfu", run)
}

/// One control API call; returns the status and the JSON answer.
fn api(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, serde_json::Value), String> {
    let mut s = TcpStream::connect(admin).map_err(|e| e.to_string())?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let status = answer
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad answer {answer:?}"))?;
    let json = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v = serde_json::from_str(json).map_err(|e| format!("{e}: {json}"))?;
    Ok((status, v))
}

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[allow(clippy::print_stdout)] // a note in the test's output
fn run(backend: IoBackend) -> Result<(), String> {
    counting::reset();
    counting::counter_sees_other_threads()?;
    let mut config = Config::dev_default();
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.relay_ports = free_relay_ports(10);
    config.sfu = true;
    config.sfu_ports = free_relay_ports(20);
    config.workers = 2;
    config.admin = Some("127.0.0.1:0".parse().unwrap());
    config.admin_token = Some(TOKEN.to_owned());
    config.io_backend = backend;
    let relay = Relay::start(config).map_err(|e| format!("start: {e}"))?;
    if relay.backend().name() != backend.name() {
        return Err(format!("asked for {backend}, runs {}", relay.backend()));
    }
    let admin = relay.admin_addr().ok_or("no admin endpoint")?;

    // The room: publisher (SRTP CM, remote learned), two subscribers (SRTP GCM).
    let publisher = bound_socket();
    let subs = [bound_socket(), bound_socket()];
    let (_, r) = api(admin, "POST", "/sfu/routers", "")?;
    let base = format!("/sfu/routers/{}", r["id"]);
    let cm = format!(
        r#"{{"srtp":{{"profile":"AES_CM_128_HMAC_SHA1_80","recv_key":"{k}","send_key":"{k}"}}}}"#,
        k = b64(&PUB_KEY)
    );
    let (s, t) = api(admin, "POST", &format!("{base}/transports"), &cm)?;
    if s != 201 {
        return Err(format!("transport: {s} {t}"));
    }
    let pub_t = t["id"].clone();
    let pub_addr: SocketAddr = t["local"]
        .as_str()
        .unwrap_or("")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let mut sub_ts = Vec::new();
    for (i, sub) in subs.iter().enumerate() {
        // The second subscriber stands for another tern at the pipe's far end.
        let kind = if i == 1 { "pipe" } else { "plain" };
        let body = format!(
            r#"{{"kind":"{kind}","remote":"{}","srtp":{{"profile":"AEAD_AES_128_GCM","recv_key":"{k}","send_key":"{k}"}}}}"#,
            sub.local_addr().unwrap(),
            k = b64(&SUB_KEY)
        );
        let (s, t) = api(admin, "POST", &format!("{base}/transports"), &body)?;
        if s != 201 {
            return Err(format!("transport: {s} {t}"));
        }
        sub_ts.push(t["id"].clone());
    }
    let body = format!(
        r#"{{"transport":{pub_t},"kind":"video","codec":"vp8","clock_rate":90000,"payload_types":[96],"encodings":[{{"ssrc":{PUB_SSRC}}}]}}"#
    );
    let (s, p) = api(admin, "POST", &format!("{base}/producers"), &body)?;
    if s != 201 {
        return Err(format!("producer: {s} {p}"));
    }
    for (i, t) in sub_ts.iter().enumerate() {
        let body = if i == 1 {
            format!(r#"{{"producer":{},"transport":{t}}}"#, p["id"])
        } else {
            format!(
                r#"{{"producer":{},"transport":{t},"ssrc":{}}}"#,
                p["id"],
                0xC0DE_0000u32 + i as u32
            )
        };
        let (s, c) = api(admin, "POST", &format!("{base}/consumers"), &body)?;
        if s != 201 {
            return Err(format!("consumer: {s} {c}"));
        }
    }

    let cmp = SrtpProfile::Aes128CmHmacSha1_80;
    let mut tx =
        SrtpContext::new(cmp, &PUB_KEY[..16], &PUB_KEY[16..]).map_err(|e| e.to_string())?;
    let mut packet = vec![0u8; 12 + 5 + PAYLOAD + 32];
    let mut buf = vec![0u8; 2048];
    let mut seq: u16 = 1;
    let mut exchange = |rounds: usize| -> Result<(), String> {
        let mut done = 0;
        while done < rounds {
            let n = BURST.min(rounds - done);
            for _ in 0..n {
                // One packet per frame, every 10th a key frame.
                packet[..12].copy_from_slice(&[0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
                packet[2..4].copy_from_slice(&seq.to_be_bytes());
                packet[4..8].copy_from_slice(&(u32::from(seq) * 3000).to_be_bytes());
                packet[8..12].copy_from_slice(&PUB_SSRC.to_be_bytes());
                packet[12] = 0x10;
                packet[13] = if seq % 10 == 1 { 0x00 } else { 0x01 };
                packet[14..17].copy_from_slice(&[0x9d, 0x01, 0x2a]);
                let len = 17 + PAYLOAD;
                let len = tx
                    .protect_rtp(&mut packet, len)
                    .map_err(|e| e.to_string())?;
                publisher
                    .send_to(&packet[..len], pub_addr)
                    .map_err(|e| e.to_string())?;
                seq = seq.wrapping_add(1);
            }
            for (i, sub) in subs.iter().enumerate() {
                let mut got = 0;
                while got < n {
                    let (len, _) = sub
                        .recv_from(&mut buf)
                        .map_err(|e| format!("subscriber recv: {e}"))?;
                    // RTP only (the router's SRs and RRs may be among them).
                    if !(192..=223).contains(&buf[1]) {
                        if len != 17 + PAYLOAD + 16 {
                            return Err(format!("subscriber got {len} bytes"));
                        }
                        // The pipe keeps the publisher's SSRC; the consumer has its own.
                        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
                        if (ssrc == PUB_SSRC) != (i == 1) {
                            return Err(format!("subscriber {i} got SSRC {ssrc:#x}"));
                        }
                        got += 1;
                    }
                }
            }
            done += n;
        }
        Ok(())
    };

    exchange(WARM_UP)?;
    counting::arm();
    let measured = exchange(MEASURED);
    let (allocations, other) = counting::disarm();
    measured?;
    if other > 0 {
        println!("note: non-worker relay threads allocated {other} times while counting");
    }
    relay.shutdown();
    if allocations != 0 {
        return Err(format!(
            "worker threads allocated {allocations} times while forwarding {MEASURED} packets to a subscriber and a pipe"
        ));
    }
    Ok(())
}

fn bound_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}
