//! The io_uring stream capability ([`StreamRing`]) on real loopback TCP
//! connections: receives into a caller's buffer at an offset, across the
//! sender's segment boundaries; short sends reported and finished by the
//! caller; multishot accepts; cancellation of a closed connection's receive and parked send
//! (every operation still ends with exactly one completion); EOF and a
//! peer's reset. Readiness back ends have no stream ring (see
//! `crate::backend_tests::stream_ring_only_on_completion_back_ends`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::*;

fn backend() -> Option<UringIo> {
    if let Err(e) = BackendKind::Uring.probe() {
        eprintln!("skipping: {e}");
        return None;
    }
    Some(UringIo::new(UringConfig::default()).unwrap())
}

/// A connected loopback pair: (the relay's side, the client's side).
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (server, _) = l.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    (server, client)
}

/// Wait (bounded) for the next stream completion.
#[allow(clippy::disallowed_methods)] // a test waits on the clock
fn next(io: &mut UringIo) -> StreamCompletion {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(c) = io.take_completion() {
            return c;
        }
        assert!(Instant::now() < deadline, "no stream completion within 5 s");
        io.wait(Some(Duration::from_millis(10))).unwrap();
    }
}

fn set_sndbuf(s: &TcpStream, bytes: libc::c_int) {
    // SAFETY: valid fd; the option value is a live c_int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&bytes as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
fn receives_land_at_the_callers_offset_across_segments() {
    let Some(mut io) = backend() else {
        return;
    };
    let (server, mut client) = pair();
    client.set_nodelay(true).unwrap();
    // 200 writes of 1..=200 bytes: segment boundaries fall anywhere.
    let mut sent = Vec::new();
    for i in 1..=200usize {
        sent.extend((0..i).map(|k| (i * 31 + k) as u8));
    }
    let writer = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            let mut at = 0;
            for i in 1..=200usize {
                client.write_all(&sent[at..at + i]).unwrap();
                at += i;
            }
            client
        })
    };
    // The caller's buffer; each receive goes to its free end, 1,000 bytes at
    // most, like a connection's read buffer that is emptied from the front.
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    let mut got = Vec::new();
    let mut receives = 0;
    while got.len() < sent.len() {
        let room = (buf.len() - filled).min(1000) as u32;
        // SAFETY: `buf[filled..filled + room]` stays allocated and untouched
        // until the completion below is taken.
        unsafe {
            io.recv_into(server.as_raw_fd(), buf[filled..].as_mut_ptr(), room, 7)
                .unwrap()
        };
        let c = next(&mut io);
        assert_eq!((c.token, c.op), (7, StreamOp::Recv));
        assert!(c.result > 0 && c.result as u32 <= room, "{c:?}");
        filled += c.result as usize;
        receives += 1;
        // Take an odd-sized prefix; keep the rest at the front.
        let take = filled.min(777);
        got.extend_from_slice(&buf[..take]);
        buf.copy_within(take..filled, 0);
        filled -= take;
        if got.len() + filled >= sent.len() {
            got.extend_from_slice(&buf[..filled]);
            filled = 0;
        }
    }
    assert_eq!(got, sent);
    assert_eq!(io.in_flight(), 0);
    let st = *io.stats();
    assert_eq!(st.stream_recvs, receives);
    assert_eq!(st.stream_rx_bytes, sent.len() as u64);
    drop(writer.join().unwrap());
}

#[test]
fn a_short_send_is_reported_and_the_rest_follows() {
    let Some(mut io) = backend() else {
        return;
    };
    let (server, mut client) = pair();
    set_sndbuf(&server, 4096);
    // Far more than the socket and the client's receive buffer hold while
    // the client does not read.
    let data: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    // SAFETY: `data` outlives every completion taken below and is not written.
    unsafe {
        io.send_from(server.as_raw_fd(), data.as_ptr(), data.len() as u32, 9)
            .unwrap()
    };
    let c = next(&mut io);
    assert_eq!((c.token, c.op), (9, StreamOp::Send));
    assert!(
        c.result > 0 && (c.result as usize) < data.len(),
        "a short send: {c:?}"
    );
    // The client reads now; the caller sends the rest, short by short.
    let total = data.len();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(total);
        let mut buf = vec![0u8; 64 << 10];
        while got.len() < total {
            let n = client.read(&mut buf).unwrap();
            assert!(n > 0, "the relay side closed early");
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let mut at = c.result as usize;
    let mut sends = 1;
    while at < data.len() {
        let len = (data.len() - at) as u32;
        // SAFETY: as above.
        unsafe {
            io.send_from(server.as_raw_fd(), data[at..].as_ptr(), len, 9)
                .unwrap()
        };
        let c = next(&mut io);
        assert!(c.result > 0, "{c:?}");
        at += c.result as usize;
        sends += 1;
    }
    assert_eq!(reader.join().unwrap(), data, "every byte, in order");
    assert!(sends >= 2);
    let st = *io.stats();
    assert_eq!(st.stream_sends, sends);
    assert_eq!(st.stream_tx_bytes, data.len() as u64);
}

#[test]
fn cancel_ends_a_receive_and_a_parked_send_with_one_completion_each() {
    let Some(mut io) = backend() else {
        return;
    };
    let (server, client) = pair();
    set_sndbuf(&server, 4096);
    let mut rbuf = vec![0u8; 1024];
    let data = vec![0x5a_u8; 8 << 20];
    // SAFETY: both buffers outlive the completions taken below.
    unsafe {
        io.recv_into(server.as_raw_fd(), rbuf.as_mut_ptr(), 1024, 1)
            .unwrap();
        io.send_from(server.as_raw_fd(), data.as_ptr(), data.len() as u32, 2)
            .unwrap();
    }
    // The send fills what the socket holds; the caller sends the rest until
    // a send parks on the ring (no room while the client does not read).
    let mut at = 0;
    let mut parked = false;
    for _ in 0..100 {
        let c = next(&mut io);
        assert_eq!((c.token, c.op), (2, StreamOp::Send));
        assert!(c.result > 0, "{c:?}");
        at += c.result as usize;
        assert!(at < data.len(), "8 MiB never fit");
        // SAFETY: as above.
        unsafe {
            io.send_from(
                server.as_raw_fd(),
                data[at..].as_ptr(),
                (data.len() - at) as u32,
                2,
            )
            .unwrap()
        };
        io.wait(Some(Duration::from_millis(20))).unwrap();
        if !io.has_completions() {
            parked = true;
            break;
        }
    }
    assert!(parked, "a send parks once the socket is full");
    assert_eq!(io.in_flight(), 2, "the receive and the parked send");
    io.cancel(server.as_raw_fd()).unwrap();
    let mut ended = [next(&mut io), next(&mut io)];
    ended.sort_by_key(|c| c.token);
    assert_eq!((ended[0].token, ended[0].result), (1, -libc::ECANCELED));
    assert_eq!((ended[1].token, ended[1].result), (2, -libc::ECANCELED));
    assert_eq!(io.in_flight(), 0);
    io.wait(Some(Duration::from_millis(20))).unwrap();
    assert!(
        io.take_completion().is_none(),
        "exactly one completion each"
    );
    // The buffers are ours again: free them before the sockets close.
    drop(rbuf);
    drop(data);
    drop((server, client));
}

#[test]
fn eof_and_a_peers_reset_end_receives() {
    let Some(mut io) = backend() else {
        return;
    };
    let mut buf = [0u8; 64];
    // An orderly close: the receive completes with 0.
    let (server, client) = pair();
    // SAFETY: `buf` outlives the completion taken below.
    unsafe {
        io.recv_into(server.as_raw_fd(), buf.as_mut_ptr(), 64, 1)
            .unwrap()
    };
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let c = next(&mut io);
    assert_eq!((c.token, c.result), (1, 0));
    // A reset (SO_LINGER 0): the receive fails with ECONNRESET, and a send
    // afterwards fails too (never a SIGPIPE).
    let (server, client) = pair();
    // SAFETY: `buf` outlives the completion taken below.
    unsafe {
        io.recv_into(server.as_raw_fd(), buf.as_mut_ptr(), 64, 2)
            .unwrap()
    };
    io.wait(Some(Duration::from_millis(5))).unwrap();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd; the option value is a live linger of the given length.
    let rc = unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(client);
    let c = next(&mut io);
    assert_eq!((c.token, c.result), (2, -libc::ECONNRESET));
    let msg = *b"too late";
    // SAFETY: `msg` outlives the completion taken below.
    unsafe {
        io.send_from(server.as_raw_fd(), msg.as_ptr(), 8, 3)
            .unwrap()
    };
    let c = next(&mut io);
    assert_eq!(c.token, 3);
    assert!(
        c.result == -libc::EPIPE || c.result == -libc::ECONNRESET,
        "{c:?}"
    );
}

#[test]
fn dropping_the_back_end_hands_back_a_pending_receive() {
    let Some(mut io) = backend() else {
        return;
    };
    let (server, mut client) = pair();
    let mut buf = vec![0u8; 64];
    // SAFETY: `buf` outlives `io`, whose drop waits for the cancelled receive.
    unsafe {
        io.recv_into(server.as_raw_fd(), buf.as_mut_ptr(), 64, 1)
            .unwrap()
    };
    io.wait(Some(Duration::from_millis(5))).unwrap();
    assert_eq!(io.in_flight(), 1);
    drop(io);
    // The receive is gone: what the client sends now stays in the socket.
    client.write_all(b"still here").unwrap();
    server.set_nonblocking(false).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut got = [0u8; 10];
    (&server).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still here");
    assert!(buf.iter().all(|&b| b == 0), "the ring wrote nothing");
}

#[test]
fn multishot_accept_hands_over_each_connection_until_cancelled() {
    use std::os::fd::FromRawFd;
    let Some(mut io) = backend() else {
        return;
    };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    io.accept_multi(l.as_raw_fd(), 5).unwrap();
    let addr = l.local_addr().unwrap();
    let mut clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for (k, client) in clients.iter_mut().enumerate() {
        let c = next(&mut io);
        assert_eq!(
            (c.token, c.op, c.more),
            (5, StreamOp::Accept, true),
            "{c:?}"
        );
        assert!(c.result >= 0, "{c:?}");
        // SAFETY: the completion hands us this new descriptor.
        let mut accepted = unsafe { TcpStream::from_raw_fd(c.result) };
        assert_eq!(accepted.peer_addr().unwrap(), client.local_addr().unwrap());
        accepted.write_all(&[k as u8]).unwrap();
        let mut b = [0u8; 1];
        client.read_exact(&mut b).unwrap();
        assert_eq!(b[0], k as u8);
    }
    assert_eq!(io.in_flight(), 1, "one multishot accept");
    io.cancel(l.as_raw_fd()).unwrap();
    let c = next(&mut io);
    assert_eq!((c.token, c.result, c.more), (5, -libc::ECANCELED, false));
    assert_eq!(io.in_flight(), 0);
    assert_eq!(io.stats().stream_accepts, 3);
    // No longer accepting on the ring: the next connection waits in the backlog.
    let _late = TcpStream::connect(addr).unwrap();
    io.wait(Some(Duration::from_millis(20))).unwrap();
    assert!(io.take_completion().is_none());
    assert!(l.accept().is_ok());
}
