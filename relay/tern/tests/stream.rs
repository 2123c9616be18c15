//! TURN over TCP and TLS end to end, in process: our own raw client (tern-stun
//! framing) allocates over a stream, relays both ways to a UDP peer, and the
//! relay ends the allocation when the connection closes; bad input (a 64 KiB
//! length prefix, garbage, a stalled partial message, 1,000 idle connections
//! from one source, a TLS handshake that never finishes) is bounded, counted,
//! and never disturbs a well-behaved client; a TLS certificate reload keeps
//! live connections. The main flows run once per packet I/O back end.

mod common;
mod ports;
use common::Answer;
use ports::free_relay_ports;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern::config::IoBackend;
use tern::{CloseReason, Config, Relay, RelayHandle};
use tern_stun::framing::{frame_len, padded, Frame};
use tern_stun::{attr, Class, Message, MessageWriter, Method, TransactionId};
use tern_turn::Transport;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
use common::REALM;

fn config(io_backend: IoBackend) -> Config {
    Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        listen_tcp: vec!["127.0.0.1:0".parse().unwrap()],
        realm: REALM.to_owned(),
        user: vec![(USER.to_owned(), PASSWORD.to_owned())],
        relay_ports: free_relay_ports(100),
        allow_peer: vec!["127.0.0.0/8".parse().unwrap()],
        workers: 2,
        io_backend,
        admin: None,
        ..Config::default()
    }
}

fn available(backend: IoBackend) -> bool {
    match backend.requested().map(|k| k.probe()) {
        Some(Err(e)) => {
            eprintln!("skipping: {e}");
            false
        }
        _ => true,
    }
}

fn test_backend() -> IoBackend {
    match std::env::var("TERN_TEST_IO_BACKEND") {
        Ok(name) => name.parse().unwrap(),
        Err(_) => IoBackend::Auto,
    }
}

/// The stream bytes went the back end's way: through the worker's ring on
/// io_uring (receives and sends completed there, at least `min_bytes` each
/// way), never through it on the readiness back end.
fn assert_stream_path(stats: &tern::StatsSnapshot, min_bytes: u64) {
    let io = &stats.io;
    match stats.backend {
        tern_io::BackendKind::Uring => {
            assert!(io.stream_accepts > 0, "accepts on the ring: {io:?}");
            assert!(io.stream_recvs > 0, "receives on the ring: {io:?}");
            assert!(io.stream_sends > 0, "sends on the ring: {io:?}");
            assert!(io.stream_rx_bytes >= min_bytes, "{io:?}");
            assert!(io.stream_tx_bytes >= min_bytes, "{io:?}");
        }
        _ => {
            assert_eq!(io.stream_accepts, 0, "{io:?}");
            assert_eq!(io.stream_recvs, 0, "{io:?}");
            assert_eq!(io.stream_sends, 0, "{io:?}");
        }
    }
}

#[allow(clippy::disallowed_methods)] // tests wait on the clock
fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// A TURN client on a byte stream (TCP, or TLS over TCP).
struct StreamTurn<S: Read + Write> {
    stream: S,
    buf: Vec<u8>,
    nonce: Vec<u8>,
    next_tid: u8,
}

impl<S: Read + Write> StreamTurn<S> {
    fn new(stream: S) -> Self {
        StreamTurn {
            stream,
            buf: Vec::new(),
            nonce: Vec::new(),
            next_tid: 1,
        }
    }

    /// The next whole message from the server (ChannelData with its padding).
    fn recv(&mut self) -> io::Result<Vec<u8>> {
        loop {
            match frame_len(&self.buf, 70_000) {
                Ok(Frame::Complete(n)) => return Ok(self.buf.drain(..n).collect()),
                Ok(Frame::Incomplete { .. }) => {}
                Err(e) => panic!("the relay sent a bad frame: {e}"),
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn request(
        &mut self,
        method: Method,
        signed: bool,
        build: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Answer {
        let mut out = [0u8; 512];
        let credentials = (USER, PASSWORD, self.nonce.as_slice());
        let (len, tid) = common::encode_request(
            &mut out,
            &mut self.next_tid,
            method,
            signed.then_some(credentials),
            build,
        );
        self.stream.write_all(&out[..len]).unwrap();
        loop {
            let frame = self.recv().expect("a response");
            if frame[0] >= 0x40 {
                continue; // ChannelData racing the response
            }
            let msg = Message::parse(&frame).expect("a well-formed response");
            if msg.class() == Class::Indication {
                continue;
            }
            assert_eq!(msg.transaction_id(), tid);
            return Answer::of(&msg);
        }
    }

    fn allocate(&mut self) -> SocketAddr {
        let challenge = self.request(Method::ALLOCATE, false, |w| {
            w.add_requested_transport(tern_stun::PROTOCOL_UDP).unwrap();
        });
        assert_eq!(challenge.error, Some(401), "{challenge:?}");
        self.nonce = challenge.nonce.expect("NONCE in the 401");
        let a = self.request(Method::ALLOCATE, true, |w| {
            w.add_requested_transport(tern_stun::PROTOCOL_UDP).unwrap();
        });
        assert_eq!(a.class, Class::Success, "{a:?}");
        a.relayed.expect("XOR-RELAYED-ADDRESS")
    }

    fn channel_bind(&mut self, channel: u16, peer: SocketAddr) {
        let a = self.request(Method::CHANNEL_BIND, true, |w| {
            w.add_channel_number(channel).unwrap();
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        });
        assert_eq!(a.class, Class::Success, "{a:?}");
    }

    /// ChannelData on a stream: padded to 4 bytes (RFC 8656 §12.5).
    fn send_channel_data(&mut self, channel: u16, payload: &[u8]) {
        let mut frame = Vec::with_capacity(4 + payload.len() + 3);
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.resize(padded(frame.len()), 0);
        self.stream.write_all(&frame).unwrap();
    }

    fn recv_channel_data(&mut self) -> (u16, Vec<u8>) {
        let frame = self.recv().expect("ChannelData from the relay");
        assert_eq!(frame.len() % 4, 0, "padded on a stream");
        let channel = u16::from_be_bytes([frame[0], frame[1]]);
        let len = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
        (channel, frame[4..4 + len].to_vec())
    }
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn peer() -> UdpSocket {
    let p = UdpSocket::bind("127.0.0.1:0").unwrap();
    p.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    p
}

/// Allocate over `client`, bind a channel to a UDP peer, relay `n` messages
/// each way and check every byte.
fn relay_round_trips<S: Read + Write>(client: &mut StreamTurn<S>, n: usize) -> SocketAddr {
    let relayed = client.allocate();
    let peer = peer();
    let peer_addr = peer.local_addr().unwrap();
    client.channel_bind(0x4001, peer_addr);
    let mut buf = [0u8; 2048];
    for i in 0..n {
        // Lengths that exercise every padding remainder.
        let payload: Vec<u8> = (0..(1 + i % 9 + (i % 3) * 400))
            .map(|b| (b + i) as u8)
            .collect();
        client.send_channel_data(0x4001, &payload);
        let (len, from) = peer.recv_from(&mut buf).expect("the peer gets it");
        assert_eq!(&buf[..len], &payload[..], "message {i} to the peer");
        assert_eq!(from.port(), relayed.port());
        peer.send_to(&payload, relayed).unwrap();
        let (channel, back) = client.recv_channel_data();
        assert_eq!(
            (channel, back),
            (0x4001, payload),
            "message {i} to the client"
        );
    }
    relayed
}

fn tcp_allocation_relays_and_ends_with_its_connection(backend: IoBackend) {
    if !available(backend) {
        return;
    }
    let relay = Relay::start(config(backend)).unwrap();
    let addr = relay.listen_tcp_addrs()[0];
    assert_ne!(addr.port(), 0);
    let mut client = StreamTurn::new(tcp(addr));
    // A Binding request over TCP reflects the connection's address.
    let local = client.stream.local_addr().unwrap();
    let b = client.request(Method::BINDING, false, |_| {});
    assert_eq!(b.mapped, Some(local));
    relay_round_trips(&mut client, 60);

    let stats = relay.stats();
    let tcp = &stats.turn.by_transport[Transport::Tcp.index()];
    assert_eq!(tcp.allocations_created, 1);
    assert_eq!(tcp.packets_to_peer, 60);
    assert_eq!(tcp.packets_to_client, 60);
    assert_eq!(stats.streams.accepted[Transport::Tcp.index()], 1);
    assert_eq!(stats.streams.open[Transport::Tcp.index()], 1);
    assert_eq!(stats.allocations, 1);
    assert_stream_path(&stats, 60 * 8);

    drop(client);
    assert!(
        eventually(Duration::from_secs(5), || relay.stats().allocations == 0),
        "the allocation ends with its connection"
    );
    let stats = relay.stats();
    assert_eq!(stats.streams.closed(CloseReason::PeerClosed), 1);
    assert_eq!(stats.streams.open[Transport::Tcp.index()], 0);
    assert_eq!(stats.quota_allocations, 0);
    assert_eq!(stats.connections, 0);
    relay.shutdown();
}

/// Bad input on TCP: each is closed (or refused) and counted, and a client
/// relaying at the same time loses nothing.
fn bad_input_is_bounded_and_counted(backend: IoBackend) {
    if !available(backend) {
        return;
    }
    let mut cfg = config(backend);
    cfg.stream_idle_timeout = 1;
    cfg.max_connections_per_source = 20;
    let relay = Relay::start(cfg).unwrap();
    let addr = relay.listen_tcp_addrs()[0];
    // A well-behaved client from another source address (127.0.0.2).
    let good = connect_from("127.0.0.2".parse().unwrap(), addr);
    let mut good = StreamTurn::new(good);
    relay_round_trips(&mut good, 5);

    // A 64 KiB length prefix, then nothing: refused at once from its header.
    let mut big = tcp(addr);
    big.write_all(&[0x40, 0x01, 0xFF, 0xFF, 1, 2, 3, 4])
        .unwrap();
    assert_closed(&mut big);
    // The same with a STUN header announcing 65,532 bytes.
    let mut big_stun = tcp(addr);
    let mut hdr = vec![0x00, 0x01, 0xFF, 0xFC];
    hdr.extend_from_slice(&tern_stun::MAGIC_COOKIE.to_be_bytes());
    hdr.extend_from_slice(&[9; 12]);
    big_stun.write_all(&hdr).unwrap();
    assert_closed(&mut big_stun);
    // Garbage: an HTTP request and a TLS ClientHello on the plain TCP port.
    let mut http = tcp(addr);
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_closed(&mut http);
    let mut hello = tcp(addr);
    hello
        .write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ])
        .unwrap();
    assert_closed(&mut hello);
    // A partial message, then a stall: the idle timeout closes it.
    let mut stall = tcp(addr);
    stall.write_all(&[0x40, 0x01, 0x00, 0x40, 1, 2]).unwrap();
    assert_closed(&mut stall);

    // 1,000 idle connections from one source: 20 are admitted (and later
    // idle-closed), the rest refused at accept.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(addr).unwrap());
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            let s = relay.stats().streams;
            s.refused_per_source >= 980
        }),
        "{:?}",
        relay.stats().streams
    );
    // Meanwhile the good client relays as before.
    let peer = peer();
    good.channel_bind(0x4002, peer.local_addr().unwrap());
    for i in 0..20u8 {
        good.send_channel_data(0x4002, &[i; 33]);
        let mut b = [0u8; 64];
        let (n, _) = peer.recv_from(&mut b).unwrap();
        assert_eq!(&b[..n], &[i; 33]);
    }
    assert!(
        eventually(Duration::from_secs(10), || {
            relay.stats().streams.closed(CloseReason::IdleTimeout) >= 21
        }),
        "{:?}",
        relay.stats().streams
    );
    drop(idle);
    let s = relay.stats().streams;
    assert_eq!(s.closed(CloseReason::FrameTooLarge), 3, "{s:?}");
    assert_eq!(s.closed(CloseReason::BadFrame), 1, "{s:?}");
    assert!(s.refused_per_source >= 980 && s.refused_per_source <= 1000);
    assert_eq!(s.refused_total, 0);
    // The good client, with its allocation, was never idle-closed.
    assert_eq!(relay.stats().allocations, 1);
    good.request(Method::BINDING, false, |_| {});
    relay.shutdown();
}

/// A client that stops reading while its peer keeps sending is cut once its
/// write buffer and socket buffer are full (`slow_reader`), its allocation
/// ends, and a client beside it keeps relaying.
fn slow_reader_is_disconnected(backend: IoBackend) {
    if !available(backend) {
        return;
    }
    let relay = Relay::start(config(backend)).unwrap();
    let addr = relay.listen_tcp_addrs()[0];
    let mut good = StreamTurn::new(tcp(addr));
    relay_round_trips(&mut good, 2);
    // A small receive window keeps the kernel from buffering much for it.
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let slow: TcpStream = s.into();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut slow = StreamTurn::new(slow);
    let relayed = slow.allocate();
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    slow.channel_bind(0x4005, flood.local_addr().unwrap());
    let payload = [0x5Au8; 1200];
    let mut sent = 0;
    // At most 60,000 datagrams (72 MB): far more than any socket buffer holds.
    while sent < 60_000 {
        for _ in 0..500 {
            let _ = flood.send_to(&payload, relayed);
        }
        sent += 500;
        if relay.stats().streams.closed(CloseReason::SlowReader) > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let streams = relay.stats().streams;
    assert_eq!(
        streams.closed(CloseReason::SlowReader),
        1,
        "after {sent}: {streams:?}"
    );
    assert!(
        eventually(Duration::from_secs(5), || relay.stats().allocations == 1),
        "the slow client's allocation ended, the good one's did not"
    );
    // The good client relays on.
    let peer = peer();
    good.channel_bind(0x4006, peer.local_addr().unwrap());
    good.send_channel_data(0x4006, b"still here");
    let mut b = [0u8; 64];
    let (n, _) = peer.recv_from(&mut b).unwrap();
    assert_eq!(&b[..n], b"still here");
    relay.shutdown();
}

/// The peer closes the connection within a few seconds (EOF or reset).
fn assert_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected the relay to close the connection, got {e}"),
        }
    }
}

fn connect_from(source: std::net::IpAddr, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(source, 0).into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

// ---- TLS -------------------------------------------------------------------

struct Pki {
    dir: PathBuf,
    cert_pem: String,
}

impl Pki {
    /// A fresh self-signed certificate for "localhost" and 127.0.0.1 in a temp dir.
    fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("ttcp-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki {
            dir,
            cert_pem: String::new(),
        };
        pki.rotate()
    }

    fn rotate(mut self) -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        self.cert_pem = cert.pem();
        std::fs::write(self.cert(), &self.cert_pem).unwrap();
        std::fs::write(self.key(), key.serialize_pem()).unwrap();
        self
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// A client that trusts exactly this certificate and offers `alpn`.
    fn client(&self, addr: SocketAddr, alpn: &[&[u8]]) -> StreamTurn<TlsStream> {
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(self.cert_pem.as_bytes());
        roots.add(der.unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        StreamTurn::new(rustls::StreamOwned::new(conn, tcp(addr)))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

use rustls_pki_types::pem::PemObject;

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_config(backend: IoBackend, pki: &Pki) -> Config {
    let mut cfg = config(backend);
    cfg.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.tls_cert = Some(pki.cert());
    cfg.tls_key = Some(pki.key());
    cfg
}

fn tls_allocation_relays_with_alpn(backend: IoBackend) {
    if !available(backend) {
        return;
    }
    let pki = Pki::new(backend.name());
    let relay = Relay::start(tls_config(backend, &pki)).unwrap();
    let addr = relay.listen_tls_addrs()[0];
    let mut client = pki.client(addr, &[b"stun.turn"]);
    relay_round_trips(&mut client, 30);
    assert_eq!(client.stream.conn.alpn_protocol(), Some(&b"stun.turn"[..]));
    // RFC 7443's other id is accepted too; no ALPN at all is fine.
    let mut other = pki.client(addr, &[b"stun.nat-discovery"]);
    other.request(Method::BINDING, false, |_| {});
    assert_eq!(
        other.stream.conn.alpn_protocol(),
        Some(&b"stun.nat-discovery"[..])
    );
    let mut plain = pki.client(addr, &[]);
    plain.request(Method::BINDING, false, |_| {});
    // A client offering only another protocol is refused by the handshake.
    let mut h2 = pki.client(addr, &[b"h2"]);
    assert!(h2.stream.flush().is_err() || h2.recv().is_err());
    let stats = relay.stats();
    assert_eq!(
        stats.turn.by_transport[Transport::Tls.index()].allocations_created,
        1
    );
    assert_eq!(stats.streams.accepted[Transport::Tls.index()], 4);
    assert_stream_path(&stats, 30 * 8);
    assert!(eventually(Duration::from_secs(5), || relay
        .stats()
        .streams
        .closed(CloseReason::TlsError)
        == 1));
    drop(client);
    assert!(eventually(Duration::from_secs(5), || relay
        .stats()
        .allocations
        == 0));
    relay.shutdown();
}

/// A TLS client that never finishes its handshake is cut at the handshake
/// timeout; one that never says anything at all as well; others go on.
fn tls_handshake_timeout(backend: IoBackend) {
    if !available(backend) {
        return;
    }
    let pki = Pki::new(&format!("hs-{}", backend.name()));
    let mut cfg = tls_config(backend, &pki);
    cfg.tls_handshake_timeout = 1;
    cfg.stream_idle_timeout = 30;
    let relay = Relay::start(cfg).unwrap();
    let addr = relay.listen_tls_addrs()[0];
    let mut silent = tcp(addr);
    // Half a ClientHello record header, then nothing.
    let mut partial = tcp(addr);
    partial.write_all(&[0x16, 0x03, 0x01, 0x00]).unwrap();
    let mut good = pki.client(addr, &[b"stun.turn"]);
    relay_round_trips(&mut good, 3);
    assert_closed(&mut silent);
    assert_closed(&mut partial);
    assert_eq!(
        relay.stats().streams.closed(CloseReason::HandshakeTimeout),
        2
    );
    good.request(Method::BINDING, false, |_| {});
    relay.shutdown();
}

/// SIGHUP's reload re-reads the certificate: a live TLS connection keeps
/// relaying, a new one is served the new certificate.
fn tls_reload_keeps_live_connections(backend: IoBackend) {
    if !available(backend) {
        return;
    }
    let pki = Pki::new(&format!("reload-{}", backend.name()));
    let cfg = tls_config(backend, &pki);
    let relay: RelayHandle = Relay::start(cfg.clone()).unwrap();
    let addr = relay.listen_tls_addrs()[0];
    let mut live = pki.client(addr, &[b"stun.turn"]);
    let relayed = live.allocate();
    let old_pem = pki.cert_pem.clone();
    let pki = pki.rotate();
    assert_ne!(old_pem, pki.cert_pem);
    relay.reload(&cfg).unwrap();
    // The new certificate is served to new clients (once the workers have it).
    assert!(eventually(Duration::from_secs(5), || {
        let mut fresh = pki.client(addr, &[b"stun.turn"]);
        fresh
            .stream
            .sock
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        fresh.stream.flush().is_ok() && fresh.request_maybe().is_some()
    }));
    // The live one still relays.
    let peer = peer();
    live.channel_bind(0x4003, peer.local_addr().unwrap());
    live.send_channel_data(0x4003, b"after reload");
    let mut b = [0u8; 64];
    let (n, _) = peer.recv_from(&mut b).unwrap();
    assert_eq!(&b[..n], b"after reload");
    peer.send_to(b"back", relayed).unwrap();
    assert_eq!(live.recv_channel_data(), (0x4003, b"back".to_vec()));
    relay.shutdown();
}

impl StreamTurn<TlsStream> {
    /// A Binding request that may fail (handshake refused): Some on success.
    fn request_maybe(&mut self) -> Option<()> {
        let tid = TransactionId([0xAB; 12]);
        let mut out = [0u8; 64];
        let w = MessageWriter::new(&mut out, Method::BINDING, Class::Request, tid).unwrap();
        let len = w.finish();
        self.stream.write_all(&out[..len]).ok()?;
        let frame = self.recv().ok()?;
        (Message::parse(&frame).ok()?.transaction_id() == tid).then_some(())
    }
}

// ---- RFC 6062 ----------------------------------------------------------------

impl<S: Read + Write> StreamTurn<S> {
    fn allocate_tcp(&mut self) -> SocketAddr {
        let challenge = self.request(Method::ALLOCATE, false, |w| {
            w.add_requested_transport(tern_stun::PROTOCOL_TCP).unwrap();
        });
        assert_eq!(challenge.error, Some(401), "{challenge:?}");
        self.nonce = challenge.nonce.expect("NONCE in the 401");
        let a = self.request(Method::ALLOCATE, true, |w| {
            w.add_requested_transport(tern_stun::PROTOCOL_TCP).unwrap();
        });
        assert_eq!(a.class, Class::Success, "{a:?}");
        a.relayed.expect("XOR-RELAYED-ADDRESS")
    }

    /// A request answered with CONNECTION-ID (Connect), or its error code.
    fn connection_request(
        &mut self,
        method: Method,
        build: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Result<Option<u32>, u16> {
        let tid = TransactionId([self.next_tid; 12]);
        self.next_tid = self.next_tid.wrapping_add(1);
        let mut out = [0u8; 512];
        let mut w = MessageWriter::new(&mut out, method, Class::Request, tid).unwrap();
        build(&mut w);
        let key = tern_stun::long_term_key_md5(USER, REALM, PASSWORD);
        w.add_raw(attr::USERNAME, USER.as_bytes()).unwrap();
        w.add_raw(attr::REALM, REALM.as_bytes()).unwrap();
        w.add_raw(attr::NONCE, &self.nonce).unwrap();
        w.add_message_integrity(&key).unwrap();
        let len = w.finish();
        self.stream.write_all(&out[..len]).unwrap();
        loop {
            let frame = self.recv().expect("a response");
            let msg = Message::parse(&frame).expect("STUN");
            if msg.transaction_id() != tid {
                continue;
            }
            if msg.class() == Class::Error {
                let code = msg
                    .get(attr::ERROR_CODE)
                    .and_then(|a| tern_stun::decode_error_code(a.value).ok())
                    .map_or(0, |(c, _)| c);
                return Err(code);
            }
            return Ok(msg
                .get(attr::CONNECTION_ID)
                .and_then(|a| tern_stun::decode_u32(a.value).ok()));
        }
    }
}

/// A TCP echo server on loopback: echoes every byte of every connection.
fn tcp_echo() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().take(8) {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Our own client drives both directions of RFC 6062: Connect to a TCP echo
/// peer and ConnectionBind a data connection; a peer connecting to the
/// relayed address is announced (ConnectionAttempt) and bound. Bytes flow
/// raw both ways; a failed Connect is 447; the allocation's end closes its
/// peer and data connections.
fn tcp_relay_both_directions(backend: IoBackend) {
    if !available(backend) {
        return;
    }
    let mut cfg = config(backend);
    cfg.tcp_relay = true;
    let relay = Relay::start(cfg).unwrap();
    let server = relay.listen_tcp_addrs()[0];
    let mut control = StreamTurn::new(tcp(server));
    let relayed = control.allocate_tcp();
    // Active: Connect to the echo peer.
    let echo = tcp_echo();
    let id = control
        .connection_request(Method::CONNECT, |w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, echo).unwrap();
        })
        .expect("Connect succeeds")
        .expect("CONNECTION-ID");
    assert_eq!(
        control.connection_request(Method::CONNECT, |w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, echo).unwrap();
        }),
        Err(446)
    );
    let mut data = StreamTurn::new(tcp(server));
    data.nonce = control.nonce.clone();
    data.connection_request(Method::CONNECTION_BIND, |w| {
        w.add_u32(attr::CONNECTION_ID, id).unwrap();
    })
    .expect("ConnectionBind succeeds");
    // Raw bytes now, any size, no framing: 64 KiB through the echo.
    let blob: Vec<u8> = (0..65_536u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut raw = data.stream;
    raw.write_all(&blob).unwrap();
    let mut back = vec![0u8; blob.len()];
    raw.read_exact(&mut back).unwrap();
    assert_eq!(back, blob);

    // A Connect to a port nobody listens on: 447.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert_eq!(
        control.connection_request(Method::CONNECT, |w| {
            w.add_xor_address(attr::XOR_PEER_ADDRESS, closed_port)
                .unwrap();
        }),
        Err(447)
    );

    // Passive: a peer connects to the relayed address after a permission.
    let pa = control.request(Method::CREATE_PERMISSION, true, |w| {
        w.add_xor_address(attr::XOR_PEER_ADDRESS, "127.0.0.1:1".parse().unwrap())
            .unwrap();
    });
    assert_eq!(pa.class, Class::Success);
    let mut peer = TcpStream::connect(relayed).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    peer.write_all(b"early bytes from the peer").unwrap();
    let attempt = control.recv().expect("ConnectionAttempt");
    let msg = Message::parse(&attempt).unwrap();
    assert_eq!(msg.method(), Method::CONNECTION_ATTEMPT);
    let id2 = tern_stun::decode_u32(msg.get(attr::CONNECTION_ID).unwrap().value).unwrap();
    let from = tern_stun::decode_xor_address(
        msg.get(attr::XOR_PEER_ADDRESS).unwrap().value,
        &msg.transaction_id(),
    )
    .unwrap();
    assert_eq!(from, peer.local_addr().unwrap());
    // The data connection may land on the other worker: it is handed over.
    let mut data2 = StreamTurn::new(tcp(server));
    data2.nonce = control.nonce.clone();
    data2
        .connection_request(Method::CONNECTION_BIND, |w| {
            w.add_u32(attr::CONNECTION_ID, id2).unwrap();
        })
        .expect("ConnectionBind succeeds");
    let mut raw2 = data2.stream;
    let mut early = [0u8; 25];
    // Bytes the peer sent before the bind arrive after the response.
    let pending = data2.buf.len();
    raw2.read_exact(&mut early[pending..]).unwrap();
    early[..pending].copy_from_slice(&data2.buf);
    assert_eq!(&early, b"early bytes from the peer");
    raw2.write_all(b"hello peer").unwrap();
    let mut got = [0u8; 10];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello peer");

    let stats = relay.stats();
    assert_eq!(stats.turn.tcp_connections_bound, 2);
    assert!(stats.streams.raw_bytes >= 2 * 65_536 + 35);
    // The allocation ends with its control connection; so do the pairs.
    drop(control);
    assert_closed(&mut raw);
    assert_closed(&mut raw2);
    assert_closed(&mut peer);
    assert!(eventually(Duration::from_secs(5), || relay
        .stats()
        .allocations
        == 0));
    relay.shutdown();
}

/// A client that resets its connection (RST, not FIN) while the relay has a
/// receive pending on it (under io_uring: a RECV on the ring) is closed as
/// `reset`, its allocation ends, and another client relays on.
fn client_reset_ends_its_allocation(backend: IoBackend) {
    if !available(backend) {
        return;
    }
    let relay = Relay::start(config(backend)).unwrap();
    let addr = relay.listen_tcp_addrs()[0];
    let mut good = StreamTurn::new(tcp(addr));
    let mut gone = StreamTurn::new(tcp(addr));
    relay_round_trips(&mut gone, 5);
    relay_round_trips(&mut good, 5);
    assert_eq!(relay.stats().allocations, 2);
    // Idle: the relay waits for its next bytes. SO_LINGER 0 makes close send RST.
    std::thread::sleep(Duration::from_millis(50));
    socket2::SockRef::from(&gone.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(gone);
    assert!(
        eventually(Duration::from_secs(5), || relay.stats().allocations == 1),
        "the reset client's allocation ends"
    );
    let stats = relay.stats();
    assert_eq!(
        stats.streams.closed(CloseReason::Reset),
        1,
        "{:?}",
        stats.streams
    );
    assert_eq!(stats.streams.closed(CloseReason::PeerClosed), 0);
    assert_eq!(stats.streams.open[Transport::Tcp.index()], 1);
    // The other client relays on.
    let peer = peer();
    good.channel_bind(0x4007, peer.local_addr().unwrap());
    good.send_channel_data(0x4007, b"still here");
    let mut b = [0u8; 64];
    let (n, _) = peer.recv_from(&mut b).unwrap();
    assert_eq!(&b[..n], b"still here");
    relay.shutdown();
}

/// Instantiate the flows once per back end.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod mmsg {
            $( #[test] fn $name() { super::$name(tern::config::IoBackend::Mmsg) } )*
        }
        mod uring {
            $( #[test] fn $name() { super::$name(tern::config::IoBackend::Uring) } )*
        }
    };
}

on_every_backend!(
    tcp_allocation_relays_and_ends_with_its_connection,
    tcp_relay_both_directions,
    slow_reader_is_disconnected,
    tls_allocation_relays_with_alpn,
    tls_reload_keeps_live_connections,
    client_reset_ends_its_allocation,
);

#[test]
fn bad_tcp_input() {
    bad_input_is_bounded_and_counted(test_backend());
}

#[test]
fn tls_handshake_that_never_finishes() {
    tls_handshake_timeout(test_backend());
}
