//! Loopback tests every back end passes: each test is a generic function
//! instantiated once per back end by `on_every_backend!` at the bottom
//! (modules `mmsg` and `uring`). A back end the kernel cannot run is skipped
//! with a note on stderr.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::gso;
use crate::socket::{bind_udp, SocketOptions};
use crate::{
    BackendKind, MmsgConfig, MmsgIo, PacketIo, RecvBatch, RecvMeta, SocketId, UringConfig, UringIo,
    MAX_UDP_PAYLOAD,
};

/// Linux's SO_NO_CHECK (not exported by libc for every arch); with it set the
/// kernel refuses UDP GSO with EINVAL, which is how the fallback is exercised.
const SO_NO_CHECK: libc::c_int = 11;

/// How the generic tests build a back end.
pub(crate) trait Harness: PacketIo + Sized {
    const KIND: BackendKind;
    fn build(gso: bool, send_queue: usize) -> Self;
    fn gso_enabled(&self) -> bool;
}

impl Harness for MmsgIo {
    const KIND: BackendKind = BackendKind::Mmsg;
    fn build(gso: bool, send_queue: usize) -> Self {
        MmsgIo::new(MmsgConfig {
            gso,
            send_queue,
            ..MmsgConfig::default()
        })
        .unwrap()
    }
    fn gso_enabled(&self) -> bool {
        MmsgIo::gso_enabled(self)
    }
}

impl Harness for UringIo {
    const KIND: BackendKind = BackendKind::Uring;
    fn build(gso: bool, send_queue: usize) -> Self {
        UringIo::new(UringConfig {
            gso,
            send_queue,
            ..UringConfig::default()
        })
        .unwrap()
    }
    fn gso_enabled(&self) -> bool {
        UringIo::gso_enabled(self)
    }
}

/// The back end with default tuning, or `None` (test skipped) when the kernel cannot run it.
fn try_backend<B: Harness>(gso: bool) -> Option<B> {
    try_backend_queue(gso, MmsgConfig::default().send_queue)
}

fn try_backend_queue<B: Harness>(gso: bool, send_queue: usize) -> Option<B> {
    if let Err(e) = B::KIND.probe() {
        eprintln!("skipping: {e}");
        return None;
    }
    Some(B::build(gso, send_queue))
}

pub(crate) fn registered<B: PacketIo>(io: &mut B) -> (SocketId, SocketAddr) {
    let s = bind_udp("127.0.0.1:0".parse().unwrap(), &SocketOptions::RELAY).unwrap();
    let addr = s.local_addr().unwrap();
    (io.add_socket(s).unwrap(), addr)
}

pub(crate) fn plain_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Receive until `want` datagrams arrived or 2 s passed.
pub(crate) fn recv_all<B: PacketIo>(
    io: &mut B,
    batch: &mut RecvBatch,
    want: usize,
) -> Vec<(RecvMeta, Vec<u8>)> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        io.wait(Some(Duration::from_millis(50))).unwrap();
        while io.recv(batch) > 0 {
            assert!(batch.len() <= batch.capacity());
            out.extend(batch.iter().map(|(m, p)| (m, p.to_vec())));
        }
    }
    out
}

pub(crate) fn recv_plain(s: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
    let mut buf = [0u8; 70_000];
    let mut out = Vec::new();
    while out.len() < want {
        match s.recv(&mut buf) {
            Ok(n) => out.push(buf[..n].to_vec()),
            Err(_) => break,
        }
    }
    out
}

fn batch_receive_in_order_with_source<B: Harness>() {
    let Some(mut io) = try_backend::<B>(true) else {
        return;
    };
    let (id, addr) = registered(&mut io);
    let client = plain_socket();
    for i in 0..100u8 {
        client.send_to(&[i; 10], addr).unwrap();
    }
    let mut batch = RecvBatch::new(32, 1500, 48, 4);
    let got = recv_all(&mut io, &mut batch, 100);
    assert_eq!(got.len(), 100);
    for (i, (meta, payload)) in got.iter().enumerate() {
        assert_eq!(meta.socket, id);
        assert_eq!(meta.source, client.local_addr().unwrap());
        assert_eq!(payload, &vec![i as u8; 10]);
    }
    // Batched: far fewer syscalls than datagrams.
    assert!(io.stats().rx_batches <= 10, "{:?}", io.stats());
    assert_eq!(io.stats().rx_datagrams, 100);
}

fn budget_leaves_socket_pending<B: Harness>() {
    let Some(mut io) = try_backend::<B>(true) else {
        return;
    };
    let (_, addr) = registered(&mut io);
    let client = plain_socket();
    for i in 0..20u8 {
        client.send_to(&[i], addr).unwrap();
    }
    let mut batch = RecvBatch::new(8, 100, 0, 0);
    io.wait(Some(Duration::from_secs(1))).unwrap();
    assert_eq!(io.recv(&mut batch), 8);
    assert!(io.has_pending(), "a full batch must keep the socket queued");
    // No new readiness event is needed to get the rest.
    assert_eq!(io.recv(&mut batch), 8);
    assert_eq!(io.recv(&mut batch), 4);
    assert_eq!(batch.payload(3), &[19]);
}

fn payload_lands_after_headroom<B: Harness>() {
    let Some(mut io) = try_backend::<B>(true) else {
        return;
    };
    let (_, addr) = registered(&mut io);
    plain_socket().send_to(b"hello", addr).unwrap();
    let mut batch = RecvBatch::new(4, 100, 48, 4);
    let got = recv_all(&mut io, &mut batch, 1);
    assert_eq!(got.len(), 1);
    // recv_all drained the batch; receive again to inspect the slot itself.
    plain_socket().send_to(b"again", addr).unwrap();
    let got = loop {
        io.wait(Some(Duration::from_millis(100))).unwrap();
        if io.recv(&mut batch) > 0 {
            break batch.len();
        }
    };
    assert_eq!(got, 1);
    let (meta, slot) = batch.slot_mut(0);
    assert_eq!(&slot[48..48 + meta.len], b"again");
    assert_eq!(slot.len(), 48 + 100 + 4);
}

fn would_block_is_not_an_error<B: Harness>() {
    let Some(mut io) = try_backend::<B>(true) else {
        return;
    };
    let (_, addr) = registered(&mut io);
    let mut batch = RecvBatch::new(8, 100, 0, 0);
    // Freshly added sockets are queued once; receiving finds EAGAIN.
    assert_eq!(io.recv(&mut batch), 0);
    assert!(!io.has_pending());
    let start = Instant::now();
    io.wait(Some(Duration::from_millis(20))).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(15));
    assert_eq!(io.recv(&mut batch), 0);
    // Drain, then EAGAIN again.
    plain_socket().send_to(b"x", addr).unwrap();
    assert_eq!(recv_all(&mut io, &mut batch, 1).len(), 1);
    assert_eq!(io.recv(&mut batch), 0);
    assert_eq!(io.stats().rx_errors, 0);
}

fn truncated_datagram_is_dropped_and_counted<B: Harness>() {
    let Some(mut io) = try_backend::<B>(true) else {
        return;
    };
    let (_, addr) = registered(&mut io);
    let client = plain_socket();
    client.send_to(&[1; 50], addr).unwrap();
    client.send_to(&[2; 200], addr).unwrap();
    client.send_to(&[3; 60], addr).unwrap();
    let mut batch = RecvBatch::new(8, 100, 16, 0);
    let got = recv_all(&mut io, &mut batch, 2);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].1, vec![1; 50]);
    assert_eq!(got[1].1, vec![3; 60]);
    assert_eq!(io.stats().rx_truncated, 1);
    assert_eq!(io.stats().drops(), 1);
}

fn batch_send_uses_few_syscalls<B: Harness>() {
    let Some(mut io) = try_backend::<B>(false) else {
        return;
    };
    let (id, _) = registered(&mut io);
    let sink = plain_socket();
    let to = sink.local_addr().unwrap();
    for i in 0..100u16 {
        // Distinct sizes: no GSO runs, one message per datagram.
        io.send(id, to, &vec![i as u8; 10 + usize::from(i)]);
    }
    io.flush();
    let got = recv_plain(&sink, 100);
    assert_eq!(got.len(), 100);
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p.len(), 10 + i);
        assert!(p.iter().all(|&b| b == i as u8));
    }
    let st = io.stats();
    assert_eq!(st.tx_datagrams, 100);
    assert!(st.tx_syscalls <= 2, "{st:?}");
    assert_eq!(st.tx_gso_messages, 0);
}

fn sends_from_several_sockets_keep_their_source<B: Harness>() {
    let Some(mut io) = try_backend::<B>(true) else {
        return;
    };
    let (a, addr_a) = registered(&mut io);
    let (b, addr_b) = registered(&mut io);
    let sink = plain_socket();
    let to = sink.local_addr().unwrap();
    for i in 0..10u8 {
        io.send(if i % 2 == 0 { a } else { b }, to, &[i]);
    }
    io.flush();
    let mut buf = [0u8; 16];
    let mut seen = HashSet::new();
    for _ in 0..10 {
        let (n, from) = sink.recv_from(&mut buf).unwrap();
        assert_eq!(n, 1);
        let expect = if buf[0] % 2 == 0 { addr_a } else { addr_b };
        assert_eq!(from, expect);
        seen.insert(buf[0]);
    }
    assert_eq!(seen.len(), 10);
}

fn gso_sends_a_run_as_one_message<B: Harness>() {
    if !gso::gso_supported() {
        eprintln!("kernel without UDP GSO; skipping");
        return;
    }
    let Some(mut io) = try_backend::<B>(true) else {
        return;
    };
    assert!(io.gso_enabled());
    let (id, _) = registered(&mut io);
    let sink = plain_socket();
    let to = sink.local_addr().unwrap();
    for i in 0..10u8 {
        io.send(id, to, &[i; 1000]);
    }
    io.send(id, to, &[10; 500]); // the last of a run may be shorter
    io.flush();
    let got = recv_plain(&sink, 11);
    assert_eq!(got.len(), 11);
    for (i, p) in got.iter().enumerate().take(10) {
        assert_eq!(p, &vec![i as u8; 1000]);
    }
    assert_eq!(got[10], vec![10; 500]);
    let st = io.stats();
    assert_eq!(st.tx_gso_messages, 1, "{st:?}");
    assert_eq!(st.tx_syscalls, 1);
    assert_eq!(st.tx_datagrams, 11);
}

fn gso_refused_falls_back_to_single_datagrams<B: Harness>() {
    if !gso::gso_supported() {
        eprintln!("kernel without UDP GSO; skipping");
        return;
    }
    let Some(mut io) = try_backend::<B>(true) else {
        return;
    };
    let s = bind_udp("127.0.0.1:0".parse().unwrap(), &SocketOptions::RELAY).unwrap();
    let one: libc::c_int = 1;
    // SAFETY: valid fd; the option value is a live c_int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NO_CHECK,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let id = io.add_socket(s).unwrap();
    let sink = plain_socket();
    let to = sink.local_addr().unwrap();
    for i in 0..8u8 {
        io.send(id, to, &[i; 700]);
    }
    io.flush();
    let got = recv_plain(&sink, 8);
    assert_eq!(got.len(), 8);
    for (i, p) in got.iter().enumerate() {
        assert_eq!(p, &vec![i as u8; 700]);
    }
    let st = io.stats();
    assert_eq!(st.gso_fallbacks, 1, "{st:?}");
    assert_eq!(st.tx_gso_messages, 0);
    assert_eq!(st.tx_datagrams, 8);
    assert!(!io.gso_enabled());
}

fn unsendable_datagrams_are_counted<B: Harness>() {
    let Some(mut io) = try_backend::<B>(true) else {
        return;
    };
    let (id, _) = registered(&mut io);
    // An IPv6 destination from an IPv4 socket: the kernel refuses it.
    io.send(id, "[::1]:9".parse().unwrap(), b"x");
    io.send(
        id,
        "127.0.0.1:9".parse().unwrap(),
        &vec![0; MAX_UDP_PAYLOAD + 1],
    );
    io.flush();
    let st = io.stats();
    assert_eq!(st.tx_errors, 1, "{st:?}");
    assert_eq!(st.tx_oversize, 1);
}

fn full_queue_flushes_by_itself<B: Harness>() {
    let Some(mut io) = try_backend_queue::<B>(false, 4) else {
        return;
    };
    let (id, _) = registered(&mut io);
    let sink = plain_socket();
    let to = sink.local_addr().unwrap();
    for i in 0..10u8 {
        io.send(id, to, &[i]);
    }
    assert_eq!(io.stats().tx_datagrams, 8);
    io.flush();
    assert_eq!(recv_plain(&sink, 10).len(), 10);
}

fn removed_socket_comes_back_bound_and_id_is_reused<B: Harness>() {
    let Some(mut io) = try_backend::<B>(true) else {
        return;
    };
    let (id, addr) = registered(&mut io);
    let s = io.remove_socket(id).unwrap();
    assert_eq!(s.local_addr().unwrap(), addr);
    assert!(io.local_addr(id).is_none());
    assert!(io.remove_socket(id).is_err());
    // Datagrams sent meanwhile wait in the socket and are received once it is back.
    plain_socket().send_to(b"kept", addr).unwrap();
    let id2 = io.add_socket(s).unwrap();
    assert_eq!(id2, id);
    let mut batch = RecvBatch::new(4, 100, 0, 0);
    let got = recv_all(&mut io, &mut batch, 1);
    assert_eq!(got[0].1, b"kept");
}

fn waker_interrupts_wait<B: Harness>() {
    let Some(mut io) = try_backend::<B>(true) else {
        return;
    };
    let waker = io.waker();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        waker.wake().unwrap();
    });
    let start = Instant::now();
    io.wait(Some(Duration::from_secs(10))).unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    t.join().unwrap();
}

/// A nested epoll (what tern's workers watch for their TCP connections)
/// wakes `wait` on every new readiness, edge after edge.
fn watched_epoll_wakes_wait<B: Harness>() {
    let Some(mut io) = try_backend::<B>(true) else {
        return;
    };
    let mut inner = mio::Poll::new().unwrap();
    let mut listener = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    inner
        .registry()
        .register(&mut listener, mio::Token(7), mio::Interest::READABLE)
        .unwrap();
    io.watch(inner.as_raw_fd()).unwrap();
    assert_eq!(
        io.watch(inner.as_raw_fd()).unwrap_err().kind(),
        std::io::ErrorKind::AlreadyExists
    );
    io.wait(Some(Duration::from_millis(20))).unwrap();
    let _ = io.take_watch_ready();
    let mut events = mio::Events::with_capacity(8);
    let mut clients = Vec::new();
    for round in 0..3 {
        assert!(!io.take_watch_ready(), "round {round}: nothing new yet");
        clients.push(std::net::TcpStream::connect(addr).unwrap());
        let start = Instant::now();
        while !io.take_watch_ready() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "round {round}: wait never saw the watched fd"
            );
            io.wait(Some(Duration::from_secs(5))).unwrap();
        }
        inner.poll(&mut events, Some(Duration::ZERO)).unwrap();
        assert_eq!(events.iter().count(), 1);
        listener.accept().unwrap();
    }
}

fn ipv6_loopback_round_trip<B: Harness>() {
    let Ok(s) = bind_udp("[::1]:0".parse().unwrap(), &SocketOptions::LISTENER) else {
        return; // no IPv6 loopback here
    };
    let Some(mut io) = try_backend::<B>(true) else {
        return;
    };
    let addr = s.local_addr().unwrap();
    let id = io.add_socket(s).unwrap();
    let peer = UdpSocket::bind("[::1]:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    peer.send_to(b"v6", addr).unwrap();
    let mut batch = RecvBatch::new(4, 100, 0, 0);
    let got = recv_all(&mut io, &mut batch, 1);
    assert_eq!(got[0].0.source, peer.local_addr().unwrap());
    io.send(id, got[0].0.source, b"back");
    io.flush();
    assert_eq!(recv_plain(&peer, 1), vec![b"back".to_vec()]);
}

/// A relay loop's turn: echo what arrived, hand the sends over with
/// `flush_before_wait`, wait. Every echo arrives, in order, and the wait
/// still sleeps until the next datagram (the sends' own completions do not
/// end it): one ring entry per turn on io_uring.
fn flush_before_wait_sends_with_the_next_wait<B: Harness>() {
    let Some(mut io) = try_backend::<B>(true) else {
        return;
    };
    let (id, addr) = registered(&mut io);
    let client = plain_socket();
    let mut batch = RecvBatch::new(16, 1500, 0, 0);
    for round in 0..20u8 {
        for k in 0..3u8 {
            client.send_to(&[round, k], addr).unwrap();
        }
        let mut got = 0;
        while got < 3 {
            io.wait(Some(Duration::from_secs(2))).unwrap();
            let n = io.recv(&mut batch);
            for (meta, payload) in batch.iter() {
                let echo = [payload[0], payload[1], 0xEE];
                io.send(id, meta.source, &echo);
            }
            got += n;
            io.flush_before_wait();
        }
        // The echoes leave with the next wait at the latest; this one times out
        // (nothing else arrives) and must not return early for the sends' sake.
        io.wait(Some(Duration::from_millis(100))).unwrap();
        for k in 0..3u8 {
            let mut buf = [0u8; 8];
            let n = client.recv(&mut buf).expect("echo");
            assert_eq!(&buf[..n], &[round, k, 0xEE]);
        }
        assert_eq!(io.recv(&mut batch), 0, "nothing else arrived");
    }
    assert_eq!(io.stats().tx_datagrams, 60);
}

/// Sends handed over with `flush_before_wait` leave even when the next call
/// is another send, a flush or dropping the back end instead of a wait.
fn flush_before_wait_completes_without_a_wait<B: Harness>() {
    let Some(mut io) = try_backend::<B>(false) else {
        return;
    };
    let (id, _) = registered(&mut io);
    let sink = plain_socket();
    let to = sink.local_addr().unwrap();
    io.send(id, to, b"one");
    io.flush_before_wait();
    io.send(id, to, b"two");
    io.flush_before_wait();
    io.flush();
    io.send(id, to, b"three");
    io.flush_before_wait();
    drop(io);
    assert_eq!(
        recv_plain(&sink, 3),
        vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
}

/// Only a completion back end drives streams itself; a readiness one leaves
/// them to the caller's epoll (nested with `watch`).
fn stream_ring_only_on_completion_back_ends<B: Harness>() {
    let Some(mut io) = try_backend::<B>(false) else {
        return;
    };
    let ring = io.stream_ring();
    assert_eq!(ring.is_some(), B::KIND == BackendKind::Uring);
    if let Some(ring) = ring {
        assert_eq!(ring.in_flight(), 0);
        assert!(!ring.has_completions());
        assert!(ring.take_completion().is_none());
    }
}

/// Instantiate every generic test above once per back end.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod mmsg {
            $( #[test] fn $name() { super::$name::<crate::MmsgIo>() } )*
        }
        mod uring {
            $( #[test] fn $name() { super::$name::<crate::UringIo>() } )*
        }
    };
}

on_every_backend!(
    batch_receive_in_order_with_source,
    budget_leaves_socket_pending,
    payload_lands_after_headroom,
    would_block_is_not_an_error,
    truncated_datagram_is_dropped_and_counted,
    batch_send_uses_few_syscalls,
    sends_from_several_sockets_keep_their_source,
    gso_sends_a_run_as_one_message,
    gso_refused_falls_back_to_single_datagrams,
    unsendable_datagrams_are_counted,
    full_queue_flushes_by_itself,
    removed_socket_comes_back_bound_and_id_is_reused,
    waker_interrupts_wait,
    watched_epoll_wakes_wait,
    ipv6_loopback_round_trip,
    flush_before_wait_sends_with_the_next_wait,
    flush_before_wait_completes_without_a_wait,
    stream_ring_only_on_completion_back_ends,
);
