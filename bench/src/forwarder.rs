//! The null relay and the impairment proxy: one userspace UDP forwarder
//! that receives on a port with `recvmmsg` and sends everything to one fixed
//! address with `sendmmsg`, doing no TURN work.
//!
//! As the **null relay** (no drop, no delay) it is the floor: what the same
//! host, kernel and I/O path cost with nothing relay-specific on top. As the
//! **proxy** it drops a given share of packets deterministically (exactly
//! `floor(n * share)` of the first `n`, spread evenly) and holds each
//! forwarded packet for a fixed delay, so the harness's own accounting can
//! be checked against a known impairment.
//!
//! **Two-way** (`reply` set), the proxy stands on a media path: what comes
//! from `to` goes back the other way (to a fixed address, or to whoever
//! last sent from the other side), and everything else goes on to `to`,
//! from the proxy's one socket. So the far end (an SFU) sees one address
//! for its peer, sends its media and RTCP there, and gets that peer's RTCP
//! (NACKs, PLIs, reports) back from it, as from a NAT. RTCP coming back
//! (RFC 5761: second byte 192..=223) may go to its own port, for peers
//! such as GStreamer's `rtpbin` that take RTP and RTCP on two. Drop and
//! delay apply to both directions, each with its own drop pattern.

use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde::Serialize;
use socket2::SockAddr;

use crate::mmsg::{grow_buffers, RecvBatch, SendBatch};
use crate::payload::monotonic_ns;
use crate::Result;

/// What the forwarder does.
#[derive(Clone, Debug)]
pub struct ForwarderConfig {
    /// Where everything received is sent.
    pub to: SocketAddr,
    /// Share of packets to drop, 0.0..=1.0.
    pub drop_share: f64,
    /// Fixed delay added to every forwarded packet.
    pub delay: Duration,
    /// recvmmsg/sendmmsg batch size.
    pub batch: usize,
    /// Stop after receiving this many packets.
    pub max_packets: u64,
    /// Stop after this long.
    pub time_limit: Duration,
    /// Two-way mode: where what comes from `to` goes back.
    pub reply: Option<ReplyRoute>,
}

/// Where a two-way forwarder sends what comes from its `to` address.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplyRoute {
    /// Destination of everything from `to` (RTP, and RTCP unless `rtcp` is
    /// set); `None`: the source of the latest datagram from anyone else.
    pub to: Option<SocketAddr>,
    /// Destination of RTCP from `to` (second byte 192..=223, RFC 5761).
    pub rtcp: Option<SocketAddr>,
}

impl ReplyRoute {
    /// Where a datagram from `to` goes, given the last other source seen.
    fn dest(&self, data: &[u8], learned: Option<SocketAddr>) -> Option<SocketAddr> {
        let rtcp = data.len() >= 2 && (192..=223).contains(&data[1]);
        match self.rtcp {
            Some(r) if rtcp => Some(r),
            _ => self.to.or(learned),
        }
    }
}

/// Counters of a forwarder, readable while it runs.
#[derive(Debug, Default)]
pub struct ForwarderCounters {
    /// Datagrams received.
    pub received: AtomicU64,
    /// Datagrams sent on.
    pub forwarded: AtomicU64,
    /// Datagrams dropped on purpose.
    pub dropped: AtomicU64,
    /// Datagrams the kernel refused to send.
    pub send_errors: AtomicU64,
    /// Two-way: datagrams sent back from `to`'s side.
    pub replied: AtomicU64,
    /// Two-way: datagrams from `to` with nowhere to go yet (no other side
    /// learned).
    pub unroutable: AtomicU64,
}

/// A snapshot of [`ForwarderCounters`].
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ForwarderStats {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams sent on.
    pub forwarded: u64,
    /// Datagrams dropped on purpose.
    pub dropped: u64,
    /// Datagrams the kernel refused to send.
    pub send_errors: u64,
    /// Two-way: datagrams sent back from `to`'s side (within `forwarded`).
    pub replied: u64,
    /// Two-way: datagrams from `to` with nowhere to go yet.
    pub unroutable: u64,
}

impl ForwarderCounters {
    /// Read the counters.
    pub fn snapshot(&self) -> ForwarderStats {
        ForwarderStats {
            received: self.received.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
            replied: self.replied.load(Ordering::Relaxed),
            unroutable: self.unroutable.load(Ordering::Relaxed),
        }
    }
}

/// Whether packet number `n` (from 0) is dropped at `share`: exactly
/// `floor(n * share)` of the first `n` packets are.
pub fn drops(n: u64, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    ((n + 1) as f64 * share).floor() > (n as f64 * share).floor()
}

/// Bind a forwarder socket on `listen` with large buffers.
pub fn bind(listen: SocketAddr) -> Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    grow_buffers(&s, 8 << 20);
    s.bind(&listen.into())?;
    Ok(s.into())
}

/// Run a forwarder on `sock` until `stop`, the packet count or the time
/// limit; updates `counters` as it goes.
pub fn run(
    sock: &UdpSocket,
    cfg: &ForwarderConfig,
    stop: &AtomicBool,
    counters: &ForwarderCounters,
) {
    let poll = if cfg.delay.is_zero() {
        Duration::from_millis(20)
    } else {
        Duration::from_millis(1)
    };
    if sock.set_read_timeout(Some(poll)).is_err() {
        return;
    }
    let fd = sock.as_raw_fd();
    let mut rb = RecvBatch::new(cfg.batch);
    let mut sb = SendBatch::new(cfg.batch);
    let delay_ns = cfg.delay.as_nanos() as u64;
    let mut held: VecDeque<(u64, SocketAddr, Vec<u8>)> = VecDeque::new();
    let mut pool: Vec<Vec<u8>> = Vec::new();
    let end = monotonic_ns() + cfg.time_limit.as_nanos() as u64;
    // Packets received, and each direction's count for its drop pattern.
    let (mut n_seen, mut n_on, mut n_back) = (0u64, 0u64, 0u64);
    let mut learned: Option<SocketAddr> = None;
    let flush = |sb: &mut SendBatch| {
        let want = sb.len() as u64;
        let (sent, _err) = sb.flush(fd);
        counters.forwarded.fetch_add(sent as u64, Ordering::Relaxed);
        counters
            .send_errors
            .fetch_add(want - sent as u64, Ordering::Relaxed);
    };
    let send = |sb: &mut SendBatch, to: SocketAddr, data: &[u8]| {
        let dest = SockAddr::from(to);
        if !sb.push(data.len(), Some(&dest), |b| b.copy_from_slice(data)) {
            flush(sb);
            sb.push(data.len(), Some(&dest), |b| b.copy_from_slice(data));
        }
    };
    while !stop.load(Ordering::Relaxed) && n_seen < cfg.max_packets && monotonic_ns() < end {
        let Ok(n) = rb.recv(fd) else { break };
        let now = monotonic_ns();
        counters.received.fetch_add(n as u64, Ordering::Relaxed);
        for i in 0..n {
            n_seen += 1;
            let data = rb.data(i);
            let back = cfg.reply.is_some() && rb.source(i) == Some(cfg.to);
            let dest = match &cfg.reply {
                Some(r) if back => r.dest(data, learned),
                Some(_) => {
                    learned = rb.source(i).or(learned);
                    Some(cfg.to)
                }
                None => Some(cfg.to),
            };
            let Some(dest) = dest else {
                counters.unroutable.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let k = if back { &mut n_back } else { &mut n_on };
            let drop_it = drops(*k, cfg.drop_share);
            *k += 1;
            if drop_it {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if back {
                counters.replied.fetch_add(1, Ordering::Relaxed);
            }
            if delay_ns == 0 {
                send(&mut sb, dest, data);
            } else {
                let mut v = pool.pop().unwrap_or_default();
                v.clear();
                v.extend_from_slice(data);
                held.push_back((now + delay_ns, dest, v));
            }
        }
        let now = monotonic_ns();
        while held.front().is_some_and(|(due, _, _)| *due <= now) {
            let Some((_, dest, v)) = held.pop_front() else {
                break;
            };
            send(&mut sb, dest, &v);
            pool.push(v);
        }
        if !sb.is_empty() {
            flush(&mut sb);
        }
    }
}

/// A forwarder on a thread of this process; stopped and joined on drop.
pub struct ForwarderThread {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its counters.
    pub counters: Arc<ForwarderCounters>,
    stop: Arc<AtomicBool>,
    join: Option<thread::JoinHandle<()>>,
}

impl ForwarderThread {
    /// Bind `listen` (port 0 picks one) and start forwarding.
    pub fn spawn(listen: SocketAddr, cfg: ForwarderConfig) -> Result<ForwarderThread> {
        let sock = bind(listen)?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(ForwarderCounters::default());
        let (s, c) = (stop.clone(), counters.clone());
        let join = thread::Builder::new()
            .name("tb-forwarder".into())
            .spawn(move || run(&sock, &cfg, &s, &c))?;
        Ok(ForwarderThread {
            addr,
            counters,
            stop,
            join: Some(join),
        })
    }
}

impl Drop for ForwarderThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(j) = self.join.take() {
            let _joined = j.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_pattern_is_exact_and_spread() {
        let dropped = (0..1000).filter(|&n| drops(n, 0.1)).count();
        assert_eq!(dropped, 100);
        let first_20 = (0..20).filter(|&n| drops(n, 0.1)).count();
        assert_eq!(first_20, 2);
        assert_eq!((0..1000).filter(|&n| drops(n, 0.0)).count(), 0);
        assert_eq!((0..1000).filter(|&n| drops(n, 1.0)).count(), 1000);
        assert_eq!((0..999).filter(|&n| drops(n, 1.0 / 3.0)).count(), 333);
    }
}
