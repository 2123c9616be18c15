//! TURN over TCP and TLS under load: `tern-bench stream`.
//!
//! Owns: starting tern or coturn with a TCP or TLS listener (a self-signed
//! certificate made here for TLS), opening one client connection per flow,
//! allocating over it with REST credentials and binding a channel to an echo
//! peer, then sending paced, timestamped ChannelData (padded to 4 bytes, RFC
//! 8656 §12.5) on every connection for a bounded window. The peer echoes each
//! datagram back through the relay, so every message is relayed twice; the
//! client accounts for what came back (delivered rate, loss, round-trip
//! latency) and the relay's CPU per relayed packet.
//!
//! The client runs in one thread with non-blocking sockets and `poll(2)`; TLS
//! uses rustls (TLS 1.3, ALPN `stun.turn`). Traffic stays on loopback, the
//! window and the message count are bounded, and the relay is killed by PID
//! when its guard drops.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tern_stun::framing::{frame_len, padded, Frame};
use tern_stun::{attr, Class, Message, MessageWriter, Method, TransactionId};

use crate::cpu::{CpuReport, Snapshot};
use crate::servers::{free_port_range, free_udp_port, Spawned};
use crate::turn_client::rest_password;
use crate::{bail, Error, Result};

/// The client transport under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StreamTransport {
    /// TURN over TCP.
    Tcp,
    /// TURN over TLS (1.3) over TCP.
    Tls,
}

/// The relay under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StreamTarget {
    /// tern (`--listen-tcp` / `--listen-tls`), back end chosen by probing.
    Tern,
    /// tern with `--io-backend uring`: streams driven by completions on the ring.
    #[serde(rename = "tern-uring")]
    #[value(name = "tern-uring")]
    TernUring,
    /// tern with `--io-backend mmsg`: streams driven by epoll readiness.
    #[serde(rename = "tern-mmsg")]
    #[value(name = "tern-mmsg")]
    TernMmsg,
    /// coturn's `turnserver`.
    Coturn,
}

/// One stream benchmark window.
#[derive(Clone, Debug)]
pub struct StreamScenario {
    /// TCP or TLS.
    pub transport: StreamTransport,
    /// Client connections (one allocation each).
    pub flows: usize,
    /// Bytes of each message's payload (at least 16).
    pub payload: usize,
    /// Messages per second, all flows together.
    pub rate: f64,
    /// Length of the measured window.
    pub duration: Duration,
    /// Relay worker threads (tern `--workers`, coturn `--relay-threads`).
    pub workers: usize,
    /// The tern binary.
    pub tern_bin: PathBuf,
    /// coturn's `turnserver`.
    pub coturn_bin: PathBuf,
}

/// What one window measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StreamReport {
    /// The relay.
    pub target: StreamTarget,
    /// The client transport.
    pub transport: StreamTransport,
    /// Flows (connections).
    pub flows: usize,
    /// Messages sent by the clients.
    pub sent: u64,
    /// Echoes received back by the clients.
    pub received: u64,
    /// Messages offered per second.
    pub offered_rate: f64,
    /// Echoes received per second.
    pub delivered_rate: f64,
    /// Share of messages not echoed back, percent.
    pub loss_pct: f64,
    /// Round-trip client → relay → peer → relay → client, microseconds.
    pub rtt_p50_us: f64,
    /// 99th percentile of the round trip, microseconds.
    pub rtt_p99_us: f64,
    /// Relay CPU per relayed packet (two per echo), and the rest of the window's CPU.
    pub cpu: CpuReport,
}

const REALM: &str = "bench.test";
const SECRET: &str = "tern-bench-stream-secret";
const CHANNEL: u16 = 0x4000;
/// Messages a flow may have queued unsent before the sender skips (counted as loss).
const MAX_QUEUED: usize = 256 * 1024;

/// Run one window against `target`.
pub fn run(target: StreamTarget, sc: &StreamScenario) -> Result<StreamReport> {
    if sc.payload < 16 || sc.payload > 1200 {
        bail!("--payload must be 16..=1200 bytes");
    }
    if sc.flows == 0 || sc.flows > 2000 {
        bail!("--flows must be 1..=2000");
    }
    let ip: IpAddr = "127.0.0.1".parse().map_err(|_| Error("ip".into()))?;
    let pki = Pki::new()?;
    let relay = spawn(target, sc, ip, &pki)?;
    let server = relay.1;
    let relay = relay.0;

    let stop = Arc::new(AtomicBool::new(false));
    let peer = UdpSocket::bind((ip, 0))?;
    peer.set_read_timeout(Some(Duration::from_millis(100)))?;
    let peer_addr = peer.local_addr()?;
    let echo = {
        let stop = stop.clone();
        thread::spawn(move || echo_peer(&peer, &stop))
    };
    let tls = match sc.transport {
        StreamTransport::Tls => Some(pki.client_config()?),
        StreamTransport::Tcp => None,
    };
    let mut flows = Vec::with_capacity(sc.flows);
    for i in 0..sc.flows {
        flows.push(Flow::connect(server, tls.clone(), i, peer_addr)?);
    }
    let result = drive(&mut flows, sc, relay.pid);
    stop.store(true, Ordering::Relaxed);
    let _peer_done = echo.join();
    drop(relay);
    let (sent, received, hist, cpu) = result?;
    let secs = sc.duration.as_secs_f64();
    Ok(StreamReport {
        target,
        transport: sc.transport,
        flows: sc.flows,
        sent,
        received,
        offered_rate: sent as f64 / secs,
        delivered_rate: received as f64 / secs,
        loss_pct: if sent == 0 {
            0.0
        } else {
            100.0 * sent.saturating_sub(received) as f64 / sent as f64
        },
        rtt_p50_us: hist.value_at_quantile(0.5) as f64 / 1000.0,
        rtt_p99_us: hist.value_at_quantile(0.99) as f64 / 1000.0,
        cpu,
    })
}

/// A Markdown table of reports (median of each target's windows first).
pub fn table(reports: &[StreamReport]) -> String {
    let mut out = String::from(
        "| target | transport | flows | offered/s | delivered/s | loss % | rtt p50 µs | rtt p99 µs | relay ns/pkt | disturbed |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for r in reports {
        out.push_str(&format!(
            "| {:?} | {:?} | {} | {:.0} | {:.0} | {:.3} | {:.1} | {:.1} | {} | {} |\n",
            r.target,
            r.transport,
            r.flows,
            r.offered_rate,
            r.delivered_rate,
            r.loss_pct,
            r.rtt_p50_us,
            r.rtt_p99_us,
            r.cpu
                .relay_ns_per_pkt
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
            r.cpu.disturbed,
        ));
    }
    out
}

fn spawn(
    target: StreamTarget,
    sc: &StreamScenario,
    ip: IpAddr,
    pki: &Pki,
) -> Result<(Spawned, SocketAddr)> {
    let udp = free_udp_port(ip)?;
    let stream_port = match sc.transport {
        // tern: TCP on the UDP port; TLS on its own port.
        StreamTransport::Tcp => udp,
        StreamTransport::Tls => free_udp_port(ip)?,
    };
    let (lo, hi) = free_port_range(ip, (sc.flows as u16).saturating_mul(2).max(50))?;
    let listen = SocketAddr::new(ip, udp);
    let server = SocketAddr::new(ip, stream_port);
    let spawned = match target {
        StreamTarget::Tern | StreamTarget::TernUring | StreamTarget::TernMmsg => {
            if !sc.tern_bin.exists() {
                bail!(
                    "tern binary {} not found (cargo build --release -p tern)",
                    sc.tern_bin.display()
                );
            }
            let mut cmd = Command::new(&sc.tern_bin);
            cmd.args(["--listen", &listen.to_string()])
                .args(["--relay-ports", &format!("{lo}-{hi}")])
                .args(["--relay-ip", &ip.to_string(), "--realm", REALM])
                .args(["--auth-secret", SECRET, "--allow-peer", "127.0.0.0/8"])
                .args(["--workers", &sc.workers.to_string(), "--log-level", "warn"])
                .args(["--admin", "off", "--max-connections-per-source", "0"]);
            match target {
                StreamTarget::TernUring => cmd.args(["--io-backend", "uring"]),
                StreamTarget::TernMmsg => cmd.args(["--io-backend", "mmsg"]),
                _ => &mut cmd,
            };
            match sc.transport {
                StreamTransport::Tcp => cmd.args(["--listen-tcp", &server.to_string()]),
                StreamTransport::Tls => cmd
                    .args(["--listen-tls", &server.to_string()])
                    .arg("--tls-cert")
                    .arg(&pki.cert)
                    .arg("--tls-key")
                    .arg(&pki.key),
            };
            Spawned::start("tern", cmd, listen, true)?
        }
        StreamTarget::Coturn => {
            let mut cmd = Command::new(&sc.coturn_bin);
            cmd.args([
                "-n",
                "--no-cli",
                "--no-dtls",
                "--no-tcp-relay",
                "--no-rfc5780",
            ])
            .args(["--listening-ip", &ip.to_string()])
            .args(["--listening-port", &udp.to_string()])
            .args(["--relay-ip", &ip.to_string()])
            .args(["--min-port", &lo.to_string(), "--max-port", &hi.to_string()])
            .args(["--realm", REALM, "--use-auth-secret"])
            .args(["--static-auth-secret", SECRET, "--allow-loopback-peers"])
            .args(["--relay-threads", &sc.workers.to_string()])
            .args(["--no-stdout-log", "--log-file", "stdout", "--simple-log"])
            .arg("--pidfile")
            .arg(std::env::temp_dir().join(format!(
                "tern-bench-{}-coturn-stream-{udp}.pid",
                std::process::id()
            )));
            match sc.transport {
                StreamTransport::Tcp => cmd.arg("--no-tls"),
                StreamTransport::Tls => cmd
                    .args(["--tls-listening-port", &stream_port.to_string()])
                    .arg("--cert")
                    .arg(&pki.cert)
                    .arg("--pkey")
                    .arg(&pki.key),
            };
            Spawned::start("coturn", cmd, listen, true)?
        }
    };
    // The stream listener comes up with the UDP one; give TLS a moment anyway.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(server).is_err() {
        if Instant::now() > deadline {
            bail!("{target:?} does not accept on {server}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok((spawned, server))
}

/// Echo every datagram back to where it came from, until `stop`.
fn echo_peer(peer: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match peer.recv_from(&mut buf) {
            Ok((n, from)) => {
                let _best_effort = peer.send_to(&buf[..n], from);
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {
            }
            Err(_) => return,
        }
    }
}

/// Send paced messages round-robin over every flow for the window, read the
/// echoes, and account.
fn drive(
    flows: &mut [Flow],
    sc: &StreamScenario,
    relay_pid: u32,
) -> Result<(u64, u64, Histogram<u64>, CpuReport)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 2)
        .map_err(|e| Error(e.to_string()))?;
    for f in flows.iter_mut() {
        f.sock.set_nonblocking(true)?;
    }
    let interval = Duration::from_secs_f64(1.0 / sc.rate.max(1.0));
    let total = (sc.rate * sc.duration.as_secs_f64()).ceil() as u64;
    let start = Instant::now();
    let before = Snapshot::take(Some(relay_pid));
    let mut sent = 0u64;
    let mut received = 0u64;
    let mut msg = vec![0u8; padded(4 + sc.payload)];
    msg[..2].copy_from_slice(&CHANNEL.to_be_bytes());
    msg[2..4].copy_from_slice(&(sc.payload as u16).to_be_bytes());
    let mut pfds: Vec<libc::pollfd> = flows
        .iter()
        .map(|f| libc::pollfd {
            fd: f.sock.as_raw_fd(),
            events: 0,
            revents: 0,
        })
        .collect();
    // Sending stops at the window's end; echoes are awaited 1 s more.
    let end = start + sc.duration;
    let drain_until = end + Duration::from_secs(1);
    let mut next = 0usize;
    loop {
        let now = Instant::now();
        if now >= drain_until || (now >= end && received >= sent) {
            break;
        }
        // Send everything due by now (bounded by the total).
        while sent < total {
            let due = start + interval.mul_f64(sent as f64);
            if due > now {
                break;
            }
            let f = &mut flows[next % flows.len()];
            next += 1;
            let ns = start.elapsed().as_nanos() as u64;
            msg[4..12].copy_from_slice(&sent.to_be_bytes());
            msg[12..20].copy_from_slice(&ns.to_be_bytes());
            f.queue(&msg);
            sent += 1;
        }
        for (f, p) in flows.iter_mut().zip(pfds.iter_mut()) {
            f.flush()?;
            p.events = libc::POLLIN | if f.wants_write() { libc::POLLOUT } else { 0 };
        }
        let wait = if sent < total {
            (start + interval.mul_f64(sent as f64)).saturating_duration_since(Instant::now())
        } else {
            Duration::from_millis(5)
        };
        let ms = wait.as_millis().min(5) as i32;
        // SAFETY: pfds is a live, correctly sized array of pollfd for the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e.into());
            }
            continue;
        }
        let at = start.elapsed().as_nanos() as u64;
        for (f, p) in flows.iter_mut().zip(pfds.iter()) {
            if p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0 {
                f.read(|frame| {
                    if frame.len() >= 20 && frame[0] >= 0x40 {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&frame[12..20]);
                        let sent_ns = u64::from_be_bytes(b);
                        hist.saturating_record(at.saturating_sub(sent_ns).max(1));
                        received += 1;
                    }
                })?;
            }
        }
    }
    let after = Snapshot::take(Some(relay_pid));
    let cpu = CpuReport::between(&before, &after, received * 2, 25.0);
    Ok((sent, received, hist, cpu))
}

/// One client connection with its allocation and channel.
struct Flow {
    sock: TcpStream,
    tls: Option<rustls::ClientConnection>,
    inbuf: Vec<u8>,
    out: VecDeque<u8>,
}

impl Flow {
    /// Connect, allocate (REST credentials) and bind [`CHANNEL`] to `peer`, blocking.
    fn connect(
        server: SocketAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
        i: usize,
        peer: SocketAddr,
    ) -> Result<Flow> {
        let sock = TcpStream::connect(server)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let tls = match tls {
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from("localhost")
                    .map_err(|e| Error(e.to_string()))?;
                Some(
                    rustls::ClientConnection::new(config, name)
                        .map_err(|e| Error(e.to_string()))?,
                )
            }
            None => None,
        };
        let mut f = Flow {
            sock,
            tls,
            inbuf: Vec::new(),
            out: VecDeque::new(),
        };
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| Error(e.to_string()))?
            .as_secs()
            + 3600;
        let user = format!("{expiry}:bench{i}");
        let password = rest_password(SECRET, &user);
        let key = tern_stun::long_term_key_md5(&user, REALM, &password);
        let r = f.call(Method::ALLOCATE, None, |w| {
            w.add_requested_transport(tern_stun::PROTOCOL_UDP)
        })?;
        let nonce = r.1.ok_or_else(|| Error("no NONCE in the 401".into()))?;
        let auth = Auth {
            user: &user,
            key: &key,
            nonce: &nonce,
        };
        let r = f.call(Method::ALLOCATE, Some(&auth), |w| {
            w.add_requested_transport(tern_stun::PROTOCOL_UDP)
        })?;
        if r.0 != Class::Success {
            bail!("Allocate failed over the stream");
        }
        let r = f.call(Method::CHANNEL_BIND, Some(&auth), |w| {
            w.add_channel_number(CHANNEL)?;
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        })?;
        if r.0 != Class::Success {
            bail!("ChannelBind failed over the stream");
        }
        Ok(f)
    }

    fn call(
        &mut self,
        method: Method,
        auth: Option<&Auth<'_>>,
        build: impl FnOnce(&mut MessageWriter<'_>) -> std::result::Result<(), tern_stun::BufferTooSmall>,
    ) -> Result<(Class, Option<Vec<u8>>)> {
        let tid = TransactionId(crate::turn_client::new_tid());
        let mut out = [0u8; 512];
        let len = (|| {
            let mut w = MessageWriter::new(&mut out, method, Class::Request, tid)?;
            build(&mut w)?;
            if let Some(a) = auth {
                w.add_raw(attr::USERNAME, a.user.as_bytes())?;
                w.add_raw(attr::REALM, REALM.as_bytes())?;
                w.add_raw(attr::NONCE, a.nonce)?;
                w.add_message_integrity(a.key)?;
            }
            Ok::<usize, tern_stun::BufferTooSmall>(w.finish())
        })()
        .map_err(|e| Error(e.to_string()))?;
        self.queue(&out[..len]);
        while self.wants_write() {
            self.flush()?;
        }
        let mut answer = None;
        while answer.is_none() {
            self.read(|frame| {
                if let Ok(m) = Message::parse(frame) {
                    if m.transaction_id() == tid {
                        answer = Some((m.class(), m.get(attr::NONCE).map(|a| a.value.to_vec())));
                    }
                }
            })?;
        }
        answer.ok_or_else(|| Error("no answer".into()))
    }

    fn queue(&mut self, bytes: &[u8]) {
        match &mut self.tls {
            Some(t) => {
                let _ = t.writer().write_all(bytes);
            }
            None if self.out.len() < MAX_QUEUED => self.out.extend(bytes),
            None => {}
        }
    }

    fn wants_write(&self) -> bool {
        match &self.tls {
            Some(t) => t.wants_write(),
            None => !self.out.is_empty(),
        }
    }

    fn flush(&mut self) -> Result<()> {
        if let Some(t) = &mut self.tls {
            while t.wants_write() {
                match t.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(());
        }
        while !self.out.is_empty() {
            let (a, _) = self.out.as_slices();
            match self.sock.write(a) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Read what is there (blocking sockets: at least something) and hand out whole frames.
    fn read(&mut self, mut on_frame: impl FnMut(&[u8])) -> Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = match &mut self.tls {
            Some(t) => {
                match t.read_tls(&mut self.sock) {
                    Ok(0) => bail!("the relay closed the connection"),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
                t.process_new_packets().map_err(|e| Error(e.to_string()))?;
                // Handshake records to answer go out with the next flush.
                match t.reader().read(&mut chunk) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Err(e.into()),
                }
            }
            None => match self.sock.read(&mut chunk) {
                Ok(0) => bail!("the relay closed the connection"),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e.into()),
            },
        };
        if self.tls.as_ref().is_some_and(|t| t.wants_write()) {
            self.flush()?;
        }
        self.inbuf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while let Ok(Frame::Complete(len)) = frame_len(&self.inbuf[at..], 70_000) {
            on_frame(&self.inbuf[at..at + len]);
            at += len;
        }
        self.inbuf.drain(..at);
        Ok(())
    }
}

struct Auth<'a> {
    user: &'a str,
    key: &'a [u8],
    nonce: &'a [u8],
}

/// A throwaway self-signed certificate for `localhost`.
struct Pki {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    pem: String,
}

impl Pki {
    fn new() -> Result<Pki> {
        let dir = std::env::temp_dir().join(format!("tern-bench-pki-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let key = rcgen::KeyPair::generate().map_err(|e| Error(e.to_string()))?;
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .map_err(|e| Error(e.to_string()))?;
        let cert = params.self_signed(&key).map_err(|e| Error(e.to_string()))?;
        let pem = cert.pem();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, &pem)?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok(Pki {
            dir,
            cert: c,
            key: k,
            pem,
        })
    }

    fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(self.pem.as_bytes())
            .map_err(|e| Error(e.to_string()))?;
        roots.add(der).map_err(|e| Error(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"stun.turn".to_vec()];
        Ok(Arc::new(config))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the binaries usually are.
pub fn default_tern_bin() -> PathBuf {
    Path::new("target/release/tern").to_path_buf()
}
