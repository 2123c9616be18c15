//! Proves that the relay path of a TCP client allocates nothing per message:
//! ChannelData read from the client's connection, cut from the stream and
//! sent to the peer, and peer datagrams written back to the connection as
//! padded ChannelData.
//!
//! The same counting allocator as `no_alloc.rs` (allocations on threads named
//! `tern-worker-N` count; this test's own thread is exempt): one TCP client
//! allocates and binds a channel to a loopback peer, warms up, then relays
//! 10,000 messages each way while counting, once per packet I/O back end the
//! kernel can run (or only the one `TERN_TEST_IO_BACKEND` names). TLS clients
//! are not covered: rustls allocates per record.
//!
//! `harness = false`: the process has only this main thread and the relay's
//! threads, so nothing else can allocate while counting.

mod ports;
use ports::free_relay_ports;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use tern::config::IoBackend;
use tern::{Config, Relay};
use tern_stun::framing::{frame_len, Frame};
use tern_stun::{attr, Class, Message, MessageWriter, Method, TransactionId};

mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const USER: &str = "noalloc";
const PASSWORD: &str = "pass";
const REALM: &str = "tern.test";
const CHANNEL: u16 = 0x4000;
const WARM_UP: usize = 1_000;
const MEASURED: usize = 10_000;
const BURST: usize = 20;
/// Not a multiple of 4: every message to the client carries padding.
const PAYLOAD: usize = 161;

fn main() -> ExitCode {
    counting::main("no_alloc_tcp", run)
}

/// A blocking TCP TURN client's stream and what it has read but not framed.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    filled: usize,
}

impl Conn {
    /// The next whole message, copied into `out`; returns its length.
    fn recv(&mut self, out: &mut [u8]) -> Result<usize, String> {
        loop {
            if let Ok(Frame::Complete(n)) = frame_len(&self.buf[..self.filled], self.buf.len()) {
                out[..n].copy_from_slice(&self.buf[..n]);
                self.buf.copy_within(n..self.filled, 0);
                self.filled -= n;
                return Ok(n);
            }
            let got = self
                .stream
                .read(&mut self.buf[self.filled..])
                .map_err(|e| format!("client recv: {e}"))?;
            if got == 0 {
                return Err("the relay closed the connection".to_owned());
            }
            self.filled += got;
        }
    }

    fn request(
        &mut self,
        method: Method,
        id: TransactionId,
        build: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Result<Vec<u8>, String> {
        let mut out = [0u8; 512];
        let mut w = MessageWriter::new(&mut out, method, Class::Request, id).unwrap();
        build(&mut w);
        let len = w.finish();
        self.stream
            .write_all(&out[..len])
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1500];
        let n = self.recv(&mut buf)?;
        Ok(buf[..n].to_vec())
    }
}

#[allow(clippy::print_stdout)] // a note in the test's output
fn run(backend: IoBackend) -> Result<(), String> {
    counting::reset();
    counting::counter_sees_other_threads()?;
    let mut config = Config::dev_default();
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.listen_tcp = vec!["127.0.0.1:0".parse().unwrap()];
    config.relay_ip = vec!["127.0.0.1".parse().unwrap()];
    config.relay_ports = free_relay_ports(1000);
    config.realm = REALM.to_owned();
    config.user = vec![(USER.to_owned(), PASSWORD.to_owned())];
    config.workers = 2;
    config.io_backend = backend;
    config.admin = None;
    let relay = Relay::start(config).map_err(|e| format!("start: {e}"))?;
    if relay.backend().name() != backend.name() {
        return Err(format!("asked for {backend}, runs {}", relay.backend()));
    }
    let server = relay.listen_tcp_addrs()[0];
    let stream = TcpStream::connect(server).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut client = Conn {
        stream,
        buf: vec![0u8; 64 * 1024],
        filled: 0,
    };
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (relayed, nonce) = allocate(&mut client)?;
    channel_bind(&mut client, peer.local_addr().unwrap(), &nonce)?;

    let padded = tern_stun::framing::padded(4 + PAYLOAD);
    let mut to_peer = vec![0u8; padded];
    to_peer[..2].copy_from_slice(&CHANNEL.to_be_bytes());
    to_peer[2..4].copy_from_slice(&(PAYLOAD as u16).to_be_bytes());
    let from_peer = vec![0x5Au8; PAYLOAD];
    let mut buf = vec![0u8; 2048];

    let mut exchange = |rounds: usize| -> Result<(), String> {
        let mut done = 0;
        while done < rounds {
            let n = BURST.min(rounds - done);
            for i in 0..n {
                to_peer[4] = i as u8;
                client
                    .stream
                    .write_all(&to_peer)
                    .map_err(|e| e.to_string())?;
                peer.send_to(&from_peer, relayed)
                    .map_err(|e| e.to_string())?;
            }
            for _ in 0..n {
                let (len, from) = peer
                    .recv_from(&mut buf)
                    .map_err(|e| format!("peer recv: {e}"))?;
                if len != PAYLOAD || from != relayed {
                    return Err(format!("peer got {len} bytes from {from}"));
                }
                let len = client.recv(&mut buf)?;
                if len != padded || buf[..2] != CHANNEL.to_be_bytes() {
                    return Err(format!("client got {len} bytes: {:?}", &buf[..4]));
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

    let stats = relay.stats();
    relay.shutdown();
    let relayed_total = (WARM_UP + MEASURED) as u64;
    let tcp = stats.turn.by_transport[tern_turn::Transport::Tcp.index()];
    if tcp.packets_to_peer < relayed_total || tcp.packets_to_client < relayed_total {
        return Err(format!("relayed fewer messages than sent: {tcp:?}"));
    }
    if allocations != 0 {
        return Err(format!(
            "worker threads allocated {allocations} times while relaying {MEASURED} TCP messages each way"
        ));
    }
    Ok(())
}

fn tid(n: u8) -> TransactionId {
    TransactionId([n; 12])
}

fn authed(w: &mut MessageWriter<'_>, nonce: &[u8]) {
    let key = tern_stun::long_term_key_md5(USER, REALM, PASSWORD);
    w.add_raw(attr::USERNAME, USER.as_bytes()).unwrap();
    w.add_raw(attr::REALM, REALM.as_bytes()).unwrap();
    w.add_raw(attr::NONCE, nonce).unwrap();
    w.add_message_integrity(&key).unwrap();
    w.add_fingerprint().unwrap();
}

/// Allocate; returns the relayed address and the nonce to sign later requests with.
fn allocate(client: &mut Conn) -> Result<(SocketAddr, Vec<u8>), String> {
    let challenge = client.request(Method::ALLOCATE, tid(1), |w| {
        w.add_requested_transport(tern_stun::PROTOCOL_UDP).unwrap();
    })?;
    let msg = Message::parse(&challenge).map_err(|e| format!("401: {e:?}"))?;
    let nonce = msg
        .get(attr::NONCE)
        .ok_or("no NONCE in the challenge")?
        .value
        .to_vec();
    let resp = client.request(Method::ALLOCATE, tid(2), |w| {
        w.add_requested_transport(tern_stun::PROTOCOL_UDP).unwrap();
        authed(w, &nonce);
    })?;
    let msg = Message::parse(&resp).map_err(|e| format!("allocate: {e:?}"))?;
    if msg.class() != Class::Success {
        return Err("allocate failed".to_owned());
    }
    let relayed = msg
        .get(attr::XOR_RELAYED_ADDRESS)
        .ok_or("no XOR-RELAYED-ADDRESS")?;
    let relayed = tern_stun::decode_xor_address(relayed.value, &msg.transaction_id())
        .map_err(|e| format!("relayed address: {e:?}"))?;
    Ok((relayed, nonce))
}

fn channel_bind(client: &mut Conn, peer: SocketAddr, nonce: &[u8]) -> Result<(), String> {
    let resp = client.request(Method::CHANNEL_BIND, tid(3), |w| {
        w.add_channel_number(CHANNEL).unwrap();
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        authed(w, nonce);
    })?;
    let msg = Message::parse(&resp).map_err(|e| format!("channel bind: {e:?}"))?;
    if msg.class() != Class::Success {
        return Err("channel bind failed".to_owned());
    }
    Ok(())
}
