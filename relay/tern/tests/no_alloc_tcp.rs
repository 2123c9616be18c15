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

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tern::config::IoBackend;
use tern::{Config, Relay};
use tern_io::BackendKind;
use tern_stun::framing::{frame_len, Frame};
use tern_stun::{attr, Class, Message, MessageWriter, Method, TransactionId};

struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static OTHER_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

const UNKNOWN: u8 = 0;
const WORKER: u8 = 1;
const OTHER: u8 = 2;
const FINDING_OUT: u8 = 3;

thread_local! {
    /// Set on threads whose allocations do not count (the test's own).
    static EXEMPT: Cell<bool> = const { Cell::new(false) };
    /// Whether this thread is a relay worker, found out on its first counted allocation.
    static ROLE: Cell<u8> = const { Cell::new(UNKNOWN) };
}

fn count() {
    // try_with: during thread teardown the flags are gone; such a thread is not
    // relaying, so its allocations do not count.
    if !ARMED.load(Ordering::Relaxed) || EXEMPT.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    let role = ROLE
        .try_with(|role| {
            if role.get() == UNKNOWN {
                // Allocations made while looking up the name are not counted;
                // this one is, once the role is known.
                role.set(FINDING_OUT);
                let worker = std::thread::current()
                    .name()
                    .is_some_and(|n| n.starts_with("tern-worker-"));
                role.set(if worker { WORKER } else { OTHER });
            }
            role.get()
        })
        .unwrap_or(FINDING_OUT);
    match role {
        WORKER => ALLOCATIONS.fetch_add(1, Ordering::Relaxed),
        OTHER => OTHER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed),
        _ => 0,
    };
}

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged; counting touches only an atomic and a const thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged; the caller upholds GlobalAlloc::alloc's contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above; `ptr` was allocated by System through this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const USER: &str = "noalloc";
const PASSWORD: &str = "pass";
const REALM: &str = "tern.test";
const CHANNEL: u16 = 0x4000;
const WARM_UP: usize = 1_000;
const MEASURED: usize = 10_000;
const BURST: usize = 20;
/// Not a multiple of 4: every message to the client carries padding.
const PAYLOAD: usize = 161;

#[allow(clippy::print_stdout)] // without libtest, this reports in libtest's words
fn main() -> ExitCode {
    EXEMPT.with(|e| e.set(true));
    let backends = match std::env::var("TERN_TEST_IO_BACKEND") {
        Ok(name) => match name.parse::<IoBackend>() {
            Ok(b) => vec![b],
            Err(e) => {
                println!("TERN_TEST_IO_BACKEND={name}: {e}");
                return ExitCode::FAILURE;
            }
        },
        Err(_) => vec![IoBackend::Mmsg, IoBackend::Uring],
    };
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    for backend in backends {
        let name = format!("no_alloc_tcp::{backend}");
        if let Some(Err(e)) = backend.requested().map(BackendKind::probe) {
            println!("test {name} ... ignored ({e})");
            ignored += 1;
            continue;
        }
        match run(backend) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(e) => {
                println!("test {name} ... FAILED\n{e}");
                failed += 1;
            }
        }
    }
    let result = if failed == 0 { "ok" } else { "FAILED" };
    println!("\ntest result: {result}. {passed} passed; {failed} failed; {ignored} ignored");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The counter must see allocations of worker threads, or the assertion below
/// could never fail.
fn counter_sees_other_threads() -> Result<(), String> {
    ARMED.store(true, Ordering::SeqCst);
    let joined = std::thread::Builder::new()
        .name("tern-worker-check".to_owned())
        .spawn(|| std::hint::black_box(vec![1u8; 64]).len())
        .map_err(|e| e.to_string())?
        .join();
    ARMED.store(false, Ordering::SeqCst);
    let seen = ALLOCATIONS.swap(0, Ordering::SeqCst);
    match joined {
        Ok(64) if seen > 0 => Ok(()),
        _ => Err(format!(
            "counting allocator saw {seen} allocations of a spawned thread"
        )),
    }
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
    ALLOCATIONS.store(0, Ordering::SeqCst);
    OTHER_ALLOCATIONS.store(0, Ordering::SeqCst);
    counter_sees_other_threads()?;
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
    ARMED.store(true, Ordering::SeqCst);
    let measured = exchange(MEASURED);
    ARMED.store(false, Ordering::SeqCst);
    measured?;
    let allocations = ALLOCATIONS.load(Ordering::SeqCst);
    let other = OTHER_ALLOCATIONS.load(Ordering::SeqCst);
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
