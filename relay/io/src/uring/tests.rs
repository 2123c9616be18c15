//! Tests only the io_uring back end has: multishot receives the kernel ends
//! (on a socket error, or when the provided buffers run out) are re-armed,
//! and removing a socket cancels its receive. The tests every back end passes
//! live in `crate::backend_tests`.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::*;
use crate::backend_tests::{plain_socket, recv_all, registered};
use crate::socket::{bind_udp, SocketOptions};

fn backend(config: UringConfig) -> Option<UringIo> {
    if let Err(e) = BackendKind::Uring.probe() {
        eprintln!("skipping: {e}");
        return None;
    }
    Some(UringIo::new(config).unwrap())
}

#[test]
fn sockets_are_registered_files() {
    let Some(mut io) = backend(UringConfig::default()) else {
        return;
    };
    assert!(io.fixed_files(), "a sparse file table is granted on 6.x");
    let (id, addr) = registered(&mut io);
    assert!(io.st.slot(id).unwrap().fixed);
    plain_socket().send_to(b"fixed", addr).unwrap();
    let mut batch = RecvBatch::new(4, 100, 8, 0);
    assert_eq!(recv_all(&mut io, &mut batch, 1)[0].1, b"fixed");
}

#[test]
fn receive_ended_by_a_socket_error_is_rearmed() {
    let Some(mut io) = backend(UringConfig::default()) else {
        return;
    };
    let s = bind_udp("127.0.0.1:0".parse().unwrap(), &SocketOptions::RELAY).unwrap();
    let one: libc::c_int = 1;
    // SAFETY: valid fd; the option value is a live c_int of the given length.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            libc::IP_RECVERR,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let addr = s.local_addr().unwrap();
    let id = io.add_socket(s).unwrap();
    // A closed port: the ICMP port-unreachable sets the socket error (IP_RECVERR),
    // which ends the multishot receive with ECONNREFUSED.
    let closed = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    io.send(id, closed, b"nobody home");
    io.flush();
    let mut batch = RecvBatch::new(4, 100, 0, 0);
    for _ in 0..20 {
        io.wait(Some(Duration::from_millis(20))).unwrap();
        assert_eq!(io.recv(&mut batch), 0);
        if io.stats().rx_rearms > 0 {
            break;
        }
    }
    let st = *io.stats();
    assert!(st.rx_rearms >= 1, "{st:?}");
    assert!(st.rx_errors >= 1, "the ending error is counted: {st:?}");
    // Still receiving after the re-arm.
    plain_socket().send_to(b"after", addr).unwrap();
    let got = recv_all(&mut io, &mut batch, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, b"after");
}

#[test]
fn exhausted_buffers_are_counted_and_receiving_recovers() {
    let Some(mut io) = backend(UringConfig {
        buffers: 4,
        max_payload: 256,
        ..UringConfig::default()
    }) else {
        return;
    };
    let (id, addr) = registered(&mut io);
    let client = plain_socket();
    for i in 0..40u8 {
        client.send_to(&[i; 20], addr).unwrap();
    }
    let mut batch = RecvBatch::new(64, 256, 16, 0);
    let got = recv_all(&mut io, &mut batch, 40);
    assert_eq!(got.len(), 40, "{:?}", io.stats());
    for (i, (meta, payload)) in got.iter().enumerate() {
        assert_eq!(meta.socket, id);
        assert_eq!(payload, &vec![i as u8; 20], "in order despite re-arms");
    }
    let st = *io.stats();
    assert!(st.rx_no_buffers >= 1, "{st:?}");
    assert!(st.rx_rearms >= st.rx_no_buffers, "{st:?}");
    assert_eq!(st.drops(), 0, "ENOBUFS loses nothing: {st:?}");
}

#[test]
fn remove_cancels_the_receive() {
    let Some(mut io) = backend(UringConfig::default()) else {
        return;
    };
    let (keep, keep_addr) = registered(&mut io);
    let (gone, gone_addr) = registered(&mut io);
    // Submit both receives.
    io.wait(Some(Duration::from_millis(1))).unwrap();
    assert!(io.st.slot(gone).unwrap().armed);
    let s = io.remove_socket(gone).unwrap();
    assert!(io.local_addr(gone).is_none());
    // The ring no longer reads the socket: a datagram sent now stays in it.
    plain_socket().send_to(b"left alone", gone_addr).unwrap();
    io.wait(Some(Duration::from_millis(20))).unwrap();
    let mut batch = RecvBatch::new(4, 100, 0, 0);
    assert_eq!(io.recv(&mut batch), 0);
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.set_nonblocking(false).unwrap();
    let mut buf = [0u8; 32];
    let n = s.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"left alone");
    // The other socket is untouched, and the freed id is reused.
    plain_socket().send_to(b"still here", keep_addr).unwrap();
    let got = recv_all(&mut io, &mut batch, 1);
    assert_eq!(
        (got[0].0.socket, got[0].1.as_slice()),
        (keep, &b"still here"[..])
    );
    let (again, _) = registered(&mut io);
    assert_eq!(again, gone);
    assert_eq!(io.stats().rx_errors, 0, "{:?}", io.stats());
}

#[test]
fn datagrams_taken_before_remove_are_counted() {
    let Some(mut io) = backend(UringConfig::default()) else {
        return;
    };
    let (id, addr) = registered(&mut io);
    let client = plain_socket();
    for i in 0..3u8 {
        client.send_to(&[i], addr).unwrap();
    }
    // The ring takes them from the socket; nobody calls recv.
    for _ in 0..50 {
        io.wait(Some(Duration::from_millis(10))).unwrap();
        if io.has_pending() {
            break;
        }
    }
    io.remove_socket(id).unwrap();
    let mut batch = RecvBatch::new(4, 100, 0, 0);
    assert_eq!(
        io.recv(&mut batch),
        0,
        "nothing of a removed socket is delivered"
    );
    assert_eq!(io.stats().rx_discarded, 3, "{:?}", io.stats());
}

#[test]
fn flush_is_one_submit_per_turn() {
    let Some(mut io) = backend(UringConfig {
        gso: false,
        ..UringConfig::default()
    }) else {
        return;
    };
    let (a, _) = registered(&mut io);
    let (b, _) = registered(&mut io);
    let sink = plain_socket();
    let to = sink.local_addr().unwrap();
    for i in 0..50u8 {
        io.send(if i % 2 == 0 { a } else { b }, to, &[i; 30]);
    }
    io.flush();
    let st = *io.stats();
    assert_eq!(st.tx_datagrams, 50, "{st:?}");
    assert_eq!(st.tx_syscalls, 1, "two sockets, one submit: {st:?}");
    assert_eq!(crate::backend_tests::recv_plain(&sink, 50).len(), 50);
}

fn coalescing(min_wait: Duration) -> Option<UringIo> {
    backend(UringConfig {
        min_wait,
        ..UringConfig::default()
    })
}

#[test]
fn minimum_wait_above_the_cap_is_refused() {
    if BackendKind::Uring.probe().is_err() {
        return;
    }
    let e = UringIo::new(UringConfig {
        min_wait: MAX_MIN_WAIT + Duration::from_micros(1),
        ..UringConfig::default()
    })
    .err()
    .expect("refused");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("at most"), "{e}");
}

/// With coalescing on, an idle loop still sleeps until the first datagram
/// (it does not wait for a whole batch that never comes), and a timed wait
/// on an idle ring ends with its timeout.
#[test]
fn coalesced_wait_wakes_for_the_first_datagram() {
    if BackendKind::Uring.probe().is_err() {
        return;
    }
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // The ring is single-issuer (not Send): it lives on the waiting thread.
    let waiter = std::thread::spawn(move || {
        let mut io = coalescing(Duration::from_millis(2)).unwrap();
        let (_, addr) = registered(&mut io);
        let mut batch = RecvBatch::new(64, 100, 0, 0);
        io.wait(Some(Duration::from_millis(30))).unwrap();
        let idle = io.recv(&mut batch);
        addr_tx.send((addr, idle)).unwrap();
        // Untimed: only a datagram can end this wait.
        io.wait(None).unwrap();
        let n = io.recv(&mut batch);
        let first = batch.iter().next().map(|(_, p)| p.to_vec());
        done_tx.send((n, first)).unwrap();
    });
    let (addr, idle) = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        idle, 0,
        "nothing was sent: the timed wait ended by its timeout"
    );
    std::thread::sleep(Duration::from_millis(20));
    plain_socket().send_to(b"lone", addr).unwrap();
    let (n, first) = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a single datagram ends a coalesced wait");
    assert_eq!((n, first.as_deref()), (1, Some(&b"lone"[..])));
    waiter.join().unwrap();
}

/// A relay loop with coalescing on: every echo handed over with
/// `flush_before_wait` leaves, in order, and the counters add up.
#[test]
fn coalesced_loop_echoes_everything() {
    let Some(mut io) = coalescing(Duration::from_micros(500)) else {
        return;
    };
    let (id, addr) = registered(&mut io);
    let client = plain_socket();
    let mut batch = RecvBatch::new(16, 1500, 0, 0);
    for round in 0..20u8 {
        for k in 0..5u8 {
            client.send_to(&[round, k], addr).unwrap();
        }
        let mut got = 0;
        let mut turns = 0;
        while got < 5 && turns < 1000 {
            io.wait(Some(Duration::from_secs(2))).unwrap();
            let n = io.recv(&mut batch);
            for (meta, payload) in batch.iter() {
                io.send(id, meta.source, &[payload[0], payload[1], 0xEE]);
            }
            got += n;
            turns += 1;
            io.flush_before_wait();
        }
        assert_eq!(got, 5);
        io.wait(Some(Duration::from_millis(20))).unwrap();
        for k in 0..5u8 {
            let mut buf = [0u8; 8];
            let n = client.recv(&mut buf).expect("echo");
            assert_eq!(&buf[..n], &[round, k, 0xEE]);
        }
    }
    // Send completions are counted when reaped.
    assert_eq!(io.recv(&mut batch), 0);
    assert_eq!(io.stats().tx_datagrams, 100);
    assert_eq!(io.stats().rx_datagrams, 100);
}
