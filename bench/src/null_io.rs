//! The null relay on tern's own packet I/O back ends (tern-io): the same
//! `PacketIo` code tern's workers run — epoll + recvmmsg/sendmmsg, or io_uring
//! with multishot receive — with no TURN work on top. It gives the floor for a
//! given back end, so "tern on io_uring" can be set beside "nothing on
//! io_uring" in one invocation. (The harness's own forwarder, `forwarder.rs`,
//! stays the floor of the plain recvmmsg path and the base of the proxy.)

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde::Serialize;
use tern_io::{
    BackendKind, MmsgConfig, MmsgIo, PacketIo, RecvBatch, SocketId, UringConfig, UringIo,
};

use crate::Result;

/// Which I/O path the null relay runs on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum NullIo {
    /// The harness's own recvmmsg/sendmmsg forwarder.
    #[default]
    Harness,
    /// tern-io's portable back end (epoll + recvmmsg/sendmmsg, GSO).
    Mmsg,
    /// tern-io's io_uring back end.
    Uring,
}

impl NullIo {
    /// The `--null-io` value.
    pub fn name(self) -> &'static str {
        match self {
            NullIo::Harness => "harness",
            NullIo::Mmsg => "mmsg",
            NullIo::Uring => "uring",
        }
    }
}

/// What one null-relay run forwarded.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct NullIoStats {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams queued for sending.
    pub forwarded: u64,
}

/// Forward everything `socket` receives to `to` on back end `io` until
/// `max_packets` have been received or `time_limit` has passed.
///
/// With `egress_sockets` > 0 the relay opens that many sockets (on the
/// listening address's IP, registered with the back end like a TURN relay's
/// relayed sockets) before it starts, and sends each source's datagrams from
/// a socket of its own, assigned in order of first appearance (round robin
/// past the last): the structure of TURN relaying, where every allocation
/// sends from its own relayed transport address, without the TURN work.
/// With 0 everything leaves from the listening socket.
pub fn run(
    io: NullIo,
    socket: UdpSocket,
    to: SocketAddr,
    max_packets: u64,
    time_limit: Duration,
    egress_sockets: usize,
) -> Result<NullIoStats> {
    let kind = match io {
        NullIo::Harness => {
            return Err(crate::Error(
                "the harness forwarder is not a tern-io back end".into(),
            ))
        }
        NullIo::Mmsg => BackendKind::Mmsg,
        NullIo::Uring => BackendKind::Uring,
    };
    let limits = Limits {
        max_packets,
        time_limit,
        egress_sockets,
    };
    kind.probe()
        .map_err(|e| crate::Error(format!("{} back end unavailable: {e}", io.name())))?;
    match kind {
        BackendKind::Uring => forward(UringIo::new(UringConfig::default())?, socket, to, limits),
        _ => forward(MmsgIo::new(MmsgConfig::default())?, socket, to, limits),
    }
}

struct Limits {
    max_packets: u64,
    time_limit: Duration,
    egress_sockets: usize,
}

fn forward<P: PacketIo>(
    mut io: P,
    socket: UdpSocket,
    to: SocketAddr,
    limits: Limits,
) -> Result<NullIoStats> {
    socket.set_nonblocking(true)?;
    let ip = socket.local_addr()?.ip();
    let id = io.add_socket(socket)?;
    let mut egress = Vec::with_capacity(limits.egress_sockets);
    for _ in 0..limits.egress_sockets {
        let s = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        s.set_nonblocking(true)?;
        egress.push(io.add_socket(s)?);
    }
    let mut by_source: HashMap<SocketAddr, SocketId> = HashMap::with_capacity(egress.len());
    let mut batch = RecvBatch::new(64, 2048, 0, 0);
    let mut stats = NullIoStats::default();
    let max_packets = limits.max_packets;
    let deadline = Instant::now() + limits.time_limit;
    while stats.received < max_packets {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        io.wait(Some((deadline - now).min(Duration::from_millis(200))))?;
        // Bounded turn: at most 16 batches before flushing and waiting again.
        for _ in 0..16 {
            if io.recv(&mut batch) == 0 {
                break;
            }
            for (meta, payload) in batch.iter() {
                let from = if egress.is_empty() {
                    id
                } else {
                    let next = egress[by_source.len() % egress.len()];
                    *by_source.entry(meta.source).or_insert(next)
                };
                io.send(from, to, payload);
            }
            let n = batch.len() as u64;
            stats.received += n;
            stats.forwarded += n;
        }
        // Like tern's workers: the sends ride on the next wait where the back end can.
        io.flush_before_wait();
    }
    io.flush();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwards_every_datagram(io: NullIo) {
        if io == NullIo::Uring && BackendKind::Uring.probe().is_err() {
            eprintln!("skipped: io_uring unavailable here");
            return;
        }
        let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let to = sink.local_addr().unwrap();
        let worker = std::thread::spawn(move || {
            run(io, relay, to, 500, Duration::from_secs(10), 0).unwrap()
        });
        let src = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut got = 0u64;
        let mut buf = [0u8; 64];
        for i in 0..500u32 {
            src.send_to(&i.to_be_bytes(), relay_addr).unwrap();
            // Keep the sink's queue short: read what has arrived every 50 sends.
            if i % 50 == 49 {
                while got < u64::from(i) + 1 {
                    let (n, _) = sink.recv_from(&mut buf).expect("forwarded datagram");
                    assert_eq!(n, 4);
                    got += 1;
                }
            }
        }
        let stats = worker.join().unwrap();
        assert_eq!(got, 500);
        assert_eq!(stats.received, 500);
        assert_eq!(stats.forwarded, 500);
    }

    #[test]
    fn mmsg_null_relay_forwards_every_datagram() {
        forwards_every_datagram(NullIo::Mmsg);
    }

    #[test]
    fn uring_null_relay_forwards_every_datagram() {
        forwards_every_datagram(NullIo::Uring);
    }

    #[test]
    fn harness_is_not_a_tern_io_back_end() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = s.local_addr().unwrap();
        assert!(run(NullIo::Harness, s, to, 1, Duration::from_millis(10), 0).is_err());
    }

    /// With egress sockets, each source's datagrams leave from a socket of
    /// their own, the same one every time, and distinct sources get distinct sockets.
    fn each_source_gets_its_own_egress_socket(io: NullIo) {
        if io == NullIo::Uring && BackendKind::Uring.probe().is_err() {
            eprintln!("skipped: io_uring unavailable here");
            return;
        }
        let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let to = sink.local_addr().unwrap();
        let worker =
            std::thread::spawn(move || run(io, relay, to, 30, Duration::from_secs(10), 8).unwrap());
        let sources: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut seen: HashMap<u8, SocketAddr> = HashMap::new();
        let mut buf = [0u8; 8];
        for round in 0..10 {
            for (k, s) in sources.iter().enumerate() {
                s.send_to(&[k as u8, round], relay_addr).unwrap();
                let (n, from) = sink.recv_from(&mut buf).expect("forwarded");
                assert_eq!(&buf[..n], &[k as u8, round]);
                assert_ne!(from, relay_addr, "sent from the listening socket");
                assert_eq!(*seen.entry(k as u8).or_insert(from), from);
            }
        }
        let distinct: std::collections::HashSet<_> = seen.values().collect();
        assert_eq!(distinct.len(), 3);
        assert_eq!(worker.join().unwrap().forwarded, 30);
    }

    #[test]
    fn mmsg_egress_per_source() {
        each_source_gets_its_own_egress_socket(NullIo::Mmsg);
    }

    #[test]
    fn uring_egress_per_source() {
        each_source_gets_its_own_egress_socket(NullIo::Uring);
    }
}
