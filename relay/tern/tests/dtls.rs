//! TURN over DTLS 1.2 (RFC 7350) end to end, in process: an OpenSSL DTLS
//! client (its client role; tern serves the server role of the same
//! library) allocates, creates a permission, binds a channel and relays both
//! ways to a UDP peer; its close_notify ends the allocation. Bad input on the
//! DTLS port — junk datagrams, a flood of cookie-less ClientHellos from one
//! source, a handshake that never finishes, more associations than
//! `max-connections-per-source` — is dropped or closed and counted, keeps
//! no state where it must not, and a client relaying meanwhile is
//! unaffected. A certificate reload keeps the live association and serves
//! the new certificate to new clients; a drain refuses new DTLS allocations
//! and keeps the live one relaying.
//!
//! Built with tern's `dtls` feature (`--features tern/dtls`, as
//! tests/run-all.sh does); without it, tests/cli.rs checks the refusal.

#![cfg(feature = "dtls")]

mod common;
mod ports;
use common::Answer;
use ports::free_relay_ports;

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslStream, SslVerifyMode,
};
use tern::config::IoBackend;
use tern::{CloseReason, Config, DtlsDrop, Relay, RelayHandle};
use tern_stun::{attr, Class, Message, MessageWriter, Method};
use tern_turn::Transport;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
use common::REALM;

fn test_backend() -> IoBackend {
    match std::env::var("TERN_TEST_IO_BACKEND") {
        Ok(name) => name.parse().unwrap(),
        Err(_) => IoBackend::Auto,
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

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("tdtls-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        pki.write("tern first");
        pki
    }

    /// A self-signed certificate whose common name is `cn`.
    fn write(&self, cn: &str) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(self.cert(), cert.pem()).unwrap();
        std::fs::write(self.key(), key.serialize_pem()).unwrap();
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(pki: &Pki) -> Config {
    Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        listen_dtls: vec!["127.0.0.1:0".parse().unwrap()],
        tls_cert: Some(pki.cert()),
        tls_key: Some(pki.key()),
        realm: REALM.to_owned(),
        user: vec![(USER.to_owned(), PASSWORD.to_owned())],
        relay_ports: free_relay_ports(100),
        allow_peer: vec!["127.0.0.0/8".parse().unwrap()],
        workers: 2,
        io_backend: test_backend(),
        admin: None,
        ..Config::default()
    }
}

/// A connected UDP socket as OpenSSL's datagram transport.
struct Udp(UdpSocket);

impl Read for Udp {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.recv(buf) {
            Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(io::ErrorKind::WouldBlock.into()),
            other => other,
        }
    }
}

impl Write for Udp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.send(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn client_context() -> SslContext {
    let mut b = SslContextBuilder::new(SslMethod::dtls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_options(SslOptions::NO_QUERY_MTU);
    b.build()
}

fn udp_from(source: IpAddr, to: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(source, 0)).unwrap();
    s.connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// Run a DTLS client handshake from `source`; `None` if it does not finish
/// within `within`.
#[allow(clippy::disallowed_methods)] // tests wait on the clock
fn handshake(source: IpAddr, to: SocketAddr, within: Duration) -> Option<DtlsTurn> {
    handshake_on(udp_from(source, to), within)
}

/// [`handshake`] on a given connected socket.
#[allow(clippy::disallowed_methods)] // tests wait on the clock
fn handshake_on(sock: UdpSocket, within: Duration) -> Option<DtlsTurn> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut ssl = Ssl::new(&client_context()).unwrap();
    ssl.set_mtu(1200).unwrap();
    ssl.set_connect_state();
    let mut s = SslStream::new(ssl, Udp(sock)).unwrap();
    let start = Instant::now();
    loop {
        match s.connect() {
            Ok(()) => break,
            Err(e) if e.code() == ErrorCode::WANT_READ && start.elapsed() < within => {}
            Err(e) => {
                eprintln!("client handshake ended: {e}");
                return None;
            }
        }
    }
    s.get_ref()
        .0
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    Some(DtlsTurn {
        stream: s,
        nonce: Vec::new(),
        next_tid: 1,
    })
}

/// A TURN client over DTLS: one message per record, no padding.
struct DtlsTurn {
    stream: SslStream<Udp>,
    nonce: Vec<u8>,
    next_tid: u8,
}

impl DtlsTurn {
    fn recv(&mut self) -> Vec<u8> {
        let mut buf = [0u8; 4096];
        let n = self
            .stream
            .ssl_read(&mut buf)
            .expect("a record from the relay");
        buf[..n].to_vec()
    }

    fn local(&self) -> SocketAddr {
        self.stream.get_ref().0.local_addr().unwrap()
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
        self.stream.ssl_write(&out[..len]).unwrap();
        loop {
            let msg = self.recv();
            if msg[0] >= 0x40 {
                continue;
            }
            let msg = Message::parse(&msg).expect("a well-formed response");
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

    fn send_channel_data(&mut self, channel: u16, payload: &[u8]) {
        let mut m = Vec::with_capacity(4 + payload.len());
        m.extend_from_slice(&channel.to_be_bytes());
        m.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        m.extend_from_slice(payload);
        self.stream.ssl_write(&m).unwrap();
    }

    fn recv_channel_data(&mut self) -> (u16, Vec<u8>) {
        let m = self.recv();
        let channel = u16::from_be_bytes([m[0], m[1]]);
        let len = usize::from(u16::from_be_bytes([m[2], m[3]]));
        // A datagram transport: no padding.
        assert_eq!(m.len(), 4 + len, "unpadded over DTLS");
        (channel, m[4..].to_vec())
    }
}

fn peer() -> UdpSocket {
    let p = UdpSocket::bind("127.0.0.1:0").unwrap();
    p.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    p
}

/// Allocate, permit and bind a channel to a UDP peer, relay `n` messages each
/// way and check every byte.
fn relay_round_trips(client: &mut DtlsTurn, n: usize) -> SocketAddr {
    let relayed = client.allocate();
    let peer = peer();
    let peer_addr = peer.local_addr().unwrap();
    let p = client.request(Method::CREATE_PERMISSION, true, |w| {
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
            .unwrap();
    });
    assert_eq!(p.class, Class::Success, "{p:?}");
    let b = client.request(Method::CHANNEL_BIND, true, |w| {
        w.add_channel_number(0x4001).unwrap();
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
            .unwrap();
    });
    assert_eq!(b.class, Class::Success, "{b:?}");
    let mut buf = [0u8; 2048];
    for i in 0..n {
        let payload: Vec<u8> = (0..(1 + i % 9 + (i % 3) * 400))
            .map(|b| (b + i) as u8)
            .collect();
        client.send_channel_data(0x4001, &payload);
        let (len, from) = peer.recv_from(&mut buf).expect("the peer gets it");
        assert_eq!(&buf[..len], &payload[..], "message {i} to the peer");
        assert_eq!(from, relayed);
        peer.send_to(&payload, relayed).unwrap();
        assert_eq!(
            client.recv_channel_data(),
            (0x4001, payload),
            "message {i} to the client"
        );
    }
    relayed
}

#[test]
fn a_dtls_client_allocates_binds_relays_and_its_close_ends_the_allocation() {
    let pki = Pki::new("relay");
    let relay = Relay::start(config(&pki)).unwrap();
    let addr = relay.listen_dtls_addrs()[0];
    assert_ne!(addr.port(), 0);
    let mut client =
        handshake("127.0.0.1".parse().unwrap(), addr, Duration::from_secs(5)).expect("handshake");
    assert_eq!(
        client.stream.ssl().version_str(),
        "DTLSv1.2",
        "DTLS 1.2 negotiated"
    );
    // A Binding request reflects the client's UDP address.
    let local = client.local();
    let b = client.request(Method::BINDING, false, |_| {});
    assert_eq!(b.mapped, Some(local));
    relay_round_trips(&mut client, 40);

    let stats = relay.stats();
    let dtls = &stats.turn.by_transport[Transport::Dtls.index()];
    assert_eq!(dtls.allocations_created, 1);
    assert_eq!(dtls.packets_to_peer, 40);
    assert_eq!(dtls.packets_to_client, 40);
    let d = &stats.streams.dtls;
    // OpenSSL's client sends its first ClientHello without a cookie.
    assert!(d.hello_verify_sent >= 1, "{d:?}");
    assert_eq!((d.accepted, d.established, d.open), (1, 1, 1), "{d:?}");
    assert_eq!(stats.connections, 1, "counted with max-connections");

    // close_notify: the association and its allocation end.
    let _ = client.stream.shutdown();
    assert!(
        eventually(Duration::from_secs(5), || relay.stats().allocations == 0),
        "the allocation ends with its association"
    );
    let stats = relay.stats();
    assert_eq!(stats.streams.dtls.closed(CloseReason::PeerClosed), 1);
    assert_eq!(stats.streams.dtls.open, 0);
    assert_eq!(stats.connections, 0);
    assert_eq!(stats.quota_allocations, 0);
    relay.shutdown();
}

/// The datagrams OpenSSL's client writes before it hears anything: its
/// first ClientHello (no cookie).
fn first_client_hello() -> Vec<u8> {
    struct Capture(Vec<Vec<u8>>);
    impl Read for Capture {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut ssl = Ssl::new(&client_context()).unwrap();
    ssl.set_mtu(1200).unwrap();
    ssl.set_connect_state();
    let mut s = SslStream::new(ssl, Capture(Vec::new())).unwrap();
    assert!(s.connect().is_err(), "waits for the server");
    s.get_mut().0.remove(0)
}

/// `hello` (a first ClientHello, no cookie) with `cookie` put in, the
/// record, message and fragment lengths fixed up.
fn with_cookie(hello: &[u8], cookie: &[u8]) -> Vec<u8> {
    let at = 13 + 12 + 2 + 32 + 1 + usize::from(hello[13 + 12 + 2 + 32]);
    assert_eq!(hello[at], 0, "no cookie yet");
    let grow = cookie.len();
    let mut out = hello.to_vec();
    out[at] = grow as u8;
    out.splice(at + 1..at + 1, cookie.iter().copied());
    let rec = u16::from_be_bytes([out[11], out[12]]) + grow as u16;
    out[11..13].copy_from_slice(&rec.to_be_bytes());
    for len_at in [13 + 1, 13 + 9] {
        let l = u32::from_be_bytes([0, out[len_at], out[len_at + 1], out[len_at + 2]]);
        out[len_at..len_at + 3].copy_from_slice(&(l + grow as u32).to_be_bytes()[1..]);
    }
    // message_seq 1: the second ClientHello.
    out[13 + 5] = 1;
    out
}

/// ClientHello, HelloVerifyRequest, ClientHello with the cookie: the server
/// makes an association and sends its flight; then silence.
fn stalled_handshake(source: IpAddr, to: SocketAddr) -> UdpSocket {
    let sock = udp_from(source, to);
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let hello = first_client_hello();
    sock.send(&hello).unwrap();
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf).expect("a HelloVerifyRequest");
    assert_eq!(buf[13], 3, "HelloVerifyRequest");
    // HelloVerifyRequest body: server_version (2), cookie <0..32>.
    let cookie_len = usize::from(buf[13 + 12 + 2]);
    let cookie = buf[13 + 12 + 3..13 + 12 + 3 + cookie_len].to_vec();
    assert!(n >= 13 + 12 + 3 + cookie_len);
    sock.send(&with_cookie(&hello, &cookie)).unwrap();
    let n = sock.recv(&mut buf).expect("the server's flight");
    assert_eq!(buf[13], 2, "ServerHello");
    assert!(n > 13 + 12);
    sock
}

#[test]
fn bad_input_on_the_dtls_port_is_counted_and_harmless() {
    let pki = Pki::new("bad");
    let mut cfg = config(&pki);
    // Long enough for OpenSSL's first retransmission (after 1 s) to be seen.
    cfg.tls_handshake_timeout = 2;
    cfg.max_connections_per_source = 3;
    let relay = Relay::start(cfg).unwrap();
    let addr = relay.listen_dtls_addrs()[0];
    let mut good =
        handshake("127.0.0.2".parse().unwrap(), addr, Duration::from_secs(5)).expect("handshake");
    relay_round_trips(&mut good, 5);
    let before = relay.stats().streams.dtls;

    // Junk: not DTLS, and DTLS records that are not a ClientHello.
    let junk = udp_from("127.0.0.3".parse().unwrap(), addr);
    for i in 0..50u8 {
        junk.send(&[i; 40]).unwrap();
    }
    let mut app = first_client_hello();
    app[0] = 23; // application data, epoch 1
    app[4] = 1;
    for _ in 0..20 {
        junk.send(&app).unwrap();
    }
    assert!(eventually(Duration::from_secs(5), || {
        let d = relay.stats().streams.dtls;
        d.dropped(DtlsDrop::NotDtls) >= 50 && d.dropped(DtlsDrop::NotClientHello) >= 20
    }));

    // A flood of cookie-less ClientHellos from one source: each answered by a
    // smaller HelloVerifyRequest, none makes an association.
    let hello = first_client_hello();
    let flood = udp_from("127.0.0.4".parse().unwrap(), addr);
    let mut answers = 0;
    let mut buf = [0u8; 2048];
    for _ in 0..20 {
        for _ in 0..10 {
            flood.send(&hello).unwrap();
        }
        while let Ok(n) = flood.recv(&mut buf) {
            assert!(n < hello.len(), "no amplification: {n} >= {}", hello.len());
            assert_eq!(buf[0], 22, "a handshake record");
            assert_eq!(buf[13], 3, "HelloVerifyRequest");
            answers += 1;
        }
    }
    assert!(
        answers >= 150,
        "{answers} HelloVerifyRequests for 200 hellos"
    );
    let d = relay.stats().streams.dtls;
    assert!(
        d.hello_verify_sent - before.hello_verify_sent >= answers,
        "{d:?}"
    );
    assert_eq!(
        d.accepted, before.accepted,
        "no state for cookie-less hellos"
    );
    assert_eq!(d.open, 1, "only the good client");
    // A wrong cookie is counted apart.
    let forged = with_cookie(&hello, &[0xAB; 20]);
    flood.send(&forged).unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        relay.stats().streams.dtls.bad_cookie > before.bad_cookie
    }));

    // A handshake that never finishes: closed after tls-handshake-timeout.
    let _stalled = stalled_handshake("127.0.0.5".parse().unwrap(), addr);
    assert!(
        eventually(Duration::from_secs(10), || {
            relay
                .stats()
                .streams
                .dtls
                .closed(CloseReason::HandshakeTimeout)
                == 1
        }),
        "{:?}",
        relay.stats().streams.dtls
    );
    let d = relay.stats().streams.dtls;
    assert_eq!(d.open, 1, "{d:?}");
    assert!(d.retransmits >= 1, "the flight was retransmitted: {d:?}");

    // max-connections-per-source = 3: the fourth association is refused.
    let source: IpAddr = "127.0.0.6".parse().unwrap();
    let mut kept = Vec::new();
    for _ in 0..3 {
        kept.push(handshake(source, addr, Duration::from_secs(5)).expect("within the limit"));
    }
    assert!(handshake(source, addr, Duration::from_millis(600)).is_none());
    assert!(relay.stats().streams.dtls.refused_per_source >= 1);

    // The good client never noticed.
    let peer = peer();
    let peer_addr = peer.local_addr().unwrap();
    let b = good.request(Method::CHANNEL_BIND, true, |w| {
        w.add_channel_number(0x4002).unwrap();
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer_addr)
            .unwrap();
    });
    assert_eq!(b.class, Class::Success, "{b:?}");
    good.send_channel_data(0x4002, b"still here");
    let mut buf = [0u8; 64];
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still here");
    assert_eq!(relay.stats().allocations, 1);
    drop(kept);
    relay.shutdown();
}

#[test]
fn a_certificate_reload_keeps_live_associations() {
    let pki = Pki::new("reload");
    let cfg = config(&pki);
    let relay: RelayHandle = Relay::start(cfg.clone()).unwrap();
    let addr = relay.listen_dtls_addrs()[0];
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let cn = |c: &DtlsTurn| {
        let cert = c.stream.ssl().peer_certificate().expect("a certificate");
        let entry = cert
            .subject_name()
            .entries_by_nid(openssl::nid::Nid::COMMONNAME)
            .next()
            .unwrap();
        String::from_utf8(entry.data().as_slice().to_vec()).unwrap()
    };
    let mut old = handshake(lo, addr, Duration::from_secs(5)).unwrap();
    assert_eq!(cn(&old), "tern first");
    relay_round_trips(&mut old, 3);
    pki.write("tern second");
    relay.reload(&cfg).unwrap();
    let new = handshake(lo, addr, Duration::from_secs(5)).unwrap();
    assert_eq!(cn(&new), "tern second");
    // The old association still relays.
    let peer = peer();
    let b = old.request(Method::CHANNEL_BIND, true, |w| {
        w.add_channel_number(0x4003).unwrap();
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer.local_addr().unwrap())
            .unwrap();
    });
    assert_eq!(b.class, Class::Success, "{b:?}");
    assert_eq!(relay.stats().streams.dtls.open, 2);
    // Draining: a new DTLS client's Allocate is refused, the old one relays on.
    relay.set_draining(true);
    let mut late = new;
    let challenge = late.request(Method::ALLOCATE, false, |w| {
        w.add_requested_transport(tern_stun::PROTOCOL_UDP).unwrap();
    });
    late.nonce = challenge.nonce.unwrap_or_default();
    let refused = late.request(Method::ALLOCATE, true, |w| {
        w.add_requested_transport(tern_stun::PROTOCOL_UDP).unwrap();
    });
    assert_eq!(refused.error, Some(403), "{refused:?}");
    old.send_channel_data(0x4003, b"draining");
    let mut buf = [0u8; 64];
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"draining");
    relay.shutdown();
}

/// An RSA certificate (what many `tls-cert` files are; dimpl, for one, has
/// none): written by OpenSSL, served over DTLS with an RSA suite.
#[test]
fn an_rsa_certificate_serves_dtls_too() {
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509Builder, X509NameBuilder};

    let pki = Pki::new("rsa");
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "tern rsa").unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    std::fs::write(pki.cert(), b.build().to_pem().unwrap()).unwrap();
    // PKCS#1 ("BEGIN RSA PRIVATE KEY"), as older tooling writes it.
    std::fs::write(pki.key(), key.rsa().unwrap().private_key_to_pem().unwrap()).unwrap();
    let relay = Relay::start(config(&pki)).unwrap();
    let addr = relay.listen_dtls_addrs()[0];
    let mut client =
        handshake("127.0.0.1".parse().unwrap(), addr, Duration::from_secs(5)).expect("handshake");
    let cipher = client.stream.ssl().current_cipher().unwrap().name();
    assert!(cipher.contains("RSA"), "{cipher}");
    relay_round_trips(&mut client, 3);
    relay.shutdown();
}

/// A client that restarts on the same address and port (RFC 6347 §4.2.8):
/// its new ClientHello goes through the cookie exchange and replaces the old
/// association, whose allocation ends; the new one allocates afresh.
#[test]
fn a_client_restarting_on_its_port_replaces_its_association() {
    let pki = Pki::new("restart");
    let relay = Relay::start(config(&pki)).unwrap();
    let addr = relay.listen_dtls_addrs()[0];
    let sock = udp_from("127.0.0.1".parse().unwrap(), addr);
    let mut first = handshake_on(sock.try_clone().unwrap(), Duration::from_secs(5)).unwrap();
    first.allocate();
    assert_eq!(relay.stats().allocations, 1);
    std::mem::forget(first); // gone without a close_notify
    let mut second = handshake_on(sock, Duration::from_secs(5)).expect("a new handshake");
    // New transaction ids, as a restarted client's are (the core answers a
    // repeated id of the same five-tuple from its response cache).
    second.next_tid = 100;
    assert!(
        eventually(Duration::from_secs(5), || relay.stats().allocations == 0),
        "the old association's allocation ended"
    );
    relay_round_trips(&mut second, 3);
    let d = relay.stats().streams.dtls;
    assert_eq!((d.established, d.open), (2, 1), "{d:?}");
    assert_eq!(d.closed(CloseReason::PeerClosed), 1);
    relay.shutdown();
}
