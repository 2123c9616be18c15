//! Proves that the worker's relay path allocates nothing per packet.
//!
//! A counting global allocator counts allocations made on the relay's worker
//! threads (named `tern-worker-N`); allocations of its other threads (the
//! side thread's once-a-second report handling, for one) are counted apart
//! and reported, not failed on. This test's own thread, which crafts and
//! checks packets, is exempt. The test starts a relay in-process, makes one
//! allocation with a channel to a loopback peer (packets crafted with
//! tern-stun), warms up, then relays 10,000 datagrams each way while counting,
//! and asserts the workers allocated nothing. It does so once per packet I/O
//! back end the kernel can run (or only the one `TERN_TEST_IO_BACKEND` names).
//!
//! `harness = false`: the process has only this main thread and the relay's
//! threads, so nothing else can allocate while counting.

mod ports;
use ports::free_relay_ports;

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use tern::config::IoBackend;
use tern::{Config, Relay};
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
const PAYLOAD: usize = 160;

fn main() -> ExitCode {
    counting::main("no_alloc", run)
}

#[allow(clippy::print_stdout)] // a note in the test's output
fn run(backend: IoBackend) -> Result<(), String> {
    counting::reset();
    counting::counter_sees_other_threads()?;
    let mut config = Config::dev_default();
    config.listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.relay_ip = vec!["127.0.0.1".parse().unwrap()];
    config.relay_ports = free_relay_ports(1000);
    config.realm = REALM.to_owned();
    config.user = vec![(USER.to_owned(), PASSWORD.to_owned())];
    config.workers = 2;
    config.io_backend = backend;
    let relay = Relay::start(config).map_err(|e| format!("start: {e}"))?;
    if relay.backend().name() != backend.name() {
        return Err(format!("asked for {backend}, runs {}", relay.backend()));
    }
    let server = relay.listen_addrs()[0];

    let client = bound_socket();
    let peer = bound_socket();
    let (relayed, nonce) = allocate(&client, server)?;
    channel_bind(&client, server, peer.local_addr().unwrap(), &nonce)?;

    let mut to_peer = vec![0u8; 4 + PAYLOAD];
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
                    .send_to(&to_peer, server)
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
                let (len, from) = client
                    .recv_from(&mut buf)
                    .map_err(|e| format!("client recv: {e}"))?;
                if len != 4 + PAYLOAD || from != server || buf[..2] != CHANNEL.to_be_bytes() {
                    return Err(format!("client got {len} bytes from {from}"));
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
    if stats.turn.packets_to_peer < relayed_total || stats.turn.packets_to_client < relayed_total {
        return Err(format!("relayed fewer packets than sent: {:?}", stats.turn));
    }
    if allocations != 0 {
        return Err(format!(
            "worker threads allocated {allocations} times while relaying {MEASURED} packets each way"
        ));
    }
    Ok(())
}

fn bound_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn tid(n: u8) -> TransactionId {
    TransactionId([n; 12])
}

/// Send a request built by `build` and return the response bytes.
fn request(
    socket: &UdpSocket,
    server: SocketAddr,
    method: Method,
    id: TransactionId,
    build: impl FnOnce(&mut MessageWriter<'_>),
) -> Result<Vec<u8>, String> {
    let mut out = [0u8; 512];
    let mut w = MessageWriter::new(&mut out, method, Class::Request, id).unwrap();
    build(&mut w);
    let len = w.finish();
    socket
        .send_to(&out[..len], server)
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1500];
    let (n, _) = socket
        .recv_from(&mut buf)
        .map_err(|e| format!("no response: {e}"))?;
    Ok(buf[..n].to_vec())
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
fn allocate(client: &UdpSocket, server: SocketAddr) -> Result<(SocketAddr, Vec<u8>), String> {
    let challenge = request(client, server, Method::ALLOCATE, tid(1), |w| {
        w.add_requested_transport(tern_stun::PROTOCOL_UDP).unwrap();
    })?;
    let msg = Message::parse(&challenge).map_err(|e| format!("401: {e:?}"))?;
    let nonce = msg
        .get(attr::NONCE)
        .ok_or("no NONCE in the challenge")?
        .value
        .to_vec();
    let resp = request(client, server, Method::ALLOCATE, tid(2), |w| {
        w.add_requested_transport(tern_stun::PROTOCOL_UDP).unwrap();
        authed(w, &nonce);
    })?;
    let msg = Message::parse(&resp).map_err(|e| format!("allocate: {e:?}"))?;
    if msg.class() != Class::Success {
        return Err(format!("allocate failed: {:?}", error_of(&msg)));
    }
    let relayed = msg
        .get(attr::XOR_RELAYED_ADDRESS)
        .ok_or("no XOR-RELAYED-ADDRESS")?;
    let relayed = tern_stun::decode_xor_address(relayed.value, &msg.transaction_id())
        .map_err(|e| format!("relayed address: {e:?}"))?;
    Ok((relayed, nonce))
}

fn channel_bind(
    client: &UdpSocket,
    server: SocketAddr,
    peer: SocketAddr,
    nonce: &[u8],
) -> Result<(), String> {
    let resp = request(client, server, Method::CHANNEL_BIND, tid(3), |w| {
        w.add_channel_number(CHANNEL).unwrap();
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        authed(w, nonce);
    })?;
    let msg = Message::parse(&resp).map_err(|e| format!("channel bind: {e:?}"))?;
    if msg.class() != Class::Success {
        return Err(format!("channel bind failed: {:?}", error_of(&msg)));
    }
    Ok(())
}

fn error_of(msg: &Message<'_>) -> Option<(u16, String)> {
    let a = msg.get(attr::ERROR_CODE)?;
    tern_stun::decode_error_code(a.value)
        .ok()
        .map(|(c, r)| (c, r.to_owned()))
}
