//! Packet I/O for tern's workers.
//!
//! This crate owns the path between UDP sockets and a worker's buffers: making
//! sockets ([`socket`]), receiving datagrams in batches into caller-owned,
//! reused buffers ([`RecvBatch`]), and sending queued datagrams in batches
//! ([`PacketIo::send`] / [`PacketIo::flush`]). It knows nothing of STUN or
//! TURN, of threads or of configuration files; the worker in the `tern` crate
//! glues it to the protocol core.
//!
//! Every back end implements the one small trait [`PacketIo`]. The contract is
//! shaped so that both a readiness back end ([`MmsgIo`]: epoll +
//! `recvmmsg`/`sendmmsg`) and a completion back end ([`UringIo`]: io_uring
//! with multishot receives into provided buffers) fit it:
//!
//! * [`PacketIo::wait`] blocks until something may be received, a timer is
//!   due, or a [`Wake`] handle is poked;
//! * [`PacketIo::recv`] fills a [`RecvBatch`] with the next batch of received
//!   datagrams (socket, source, bytes), never blocking;
//! * [`PacketIo::send`] queues one datagram (copied into the back end's send
//!   arena, so the caller may reuse its buffer at once) and
//!   [`PacketIo::flush`] hands everything queued to the kernel, once per loop
//!   turn.
//!
//! Which back end runs is chosen once at start by [`select_backend`].

#![warn(missing_docs)]
// This crate is the I/O layer, not a protocol core: it may read the clock.
#![allow(clippy::disallowed_methods)]

mod batch;
mod gso;
mod mmsg;
mod sockaddr;
pub mod socket;
mod stream;
mod uring;
pub mod xsk;

#[cfg(test)]
mod backend_tests;

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

pub use batch::{RecvBatch, RecvMeta};
pub use gso::gso_supported;
pub use mmsg::{MmsgConfig, MmsgIo};
pub use stream::{StreamCompletion, StreamOp, StreamRing};
pub use uring::{UringConfig, UringIo, COALESCE_BATCH, MAX_MIN_WAIT};

/// Most datagrams one receive or send syscall handles.
pub const MAX_BATCH: usize = 64;

/// The largest UDP payload there is (IPv4; IPv6 without jumbograms allows 8 bytes more).
pub(crate) const MAX_UDP_PAYLOAD: usize = 65_507;

/// Identifies a socket registered with a [`PacketIo`] back end.
///
/// Ids are small dense integers, suitable as indices into the caller's own
/// per-socket tables. An id is reused after [`PacketIo::remove_socket`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u32);

impl SocketId {
    /// The id as an index into a table.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A handle that interrupts a [`PacketIo::wait`] from another thread.
pub trait Wake: Send + Sync {
    /// Make the back end's current or next `wait` return promptly.
    fn wake(&self) -> io::Result<()>;
}

/// The packet I/O back end of one worker.
///
/// One instance belongs to one thread; it is not shared. No method allocates
/// once the back end is built and its socket table has reached its size,
/// except [`PacketIo::add_socket`], which may grow tables.
pub trait PacketIo {
    /// Which back end this is (for logs and metrics).
    fn kind(&self) -> BackendKind;

    /// Take ownership of a bound UDP socket and start receiving on it.
    /// The socket is made nonblocking. Datagrams already queued on it are
    /// received by the next [`PacketIo::recv`] calls.
    fn add_socket(&mut self, socket: UdpSocket) -> io::Result<SocketId>;

    /// Stop receiving on `id` and hand the socket back (still bound). Datagrams
    /// the socket still queues stay queued. Its id may be reused afterwards.
    fn remove_socket(&mut self, id: SocketId) -> io::Result<UdpSocket>;

    /// The local address `id` is bound to.
    fn local_addr(&self, id: SocketId) -> Option<SocketAddr>;

    /// Block until a socket may have datagrams to receive, a [`Wake`] handle
    /// fired, or `timeout` passed (`None`: no timeout). Returns at once when
    /// [`PacketIo::has_pending`] is true.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()>;

    /// Clear `batch` and fill it with received datagrams, without blocking.
    /// Returns how many it holds; 0 means nothing is ready now. A socket that
    /// still had more to give than fitted stays pending, so a caller that
    /// stops after a budget of batches loses nothing. Truncated datagrams
    /// (larger than the batch's payload size) are dropped and counted.
    fn recv(&mut self, batch: &mut RecvBatch) -> usize;

    /// Whether [`PacketIo::recv`] may return more without waiting.
    fn has_pending(&self) -> bool;

    /// Queue one datagram to `to` from socket `from`. The payload is copied;
    /// the queue is flushed first when it is full. Datagrams that cannot be
    /// sent are dropped and counted in [`IoStats`], never retried.
    fn send(&mut self, from: SocketId, to: SocketAddr, payload: &[u8]);

    /// Send everything queued. Call once per loop turn, and before waiting.
    fn flush(&mut self);

    /// Send everything queued no later than the next [`PacketIo::wait`]: a
    /// loop that waits right after its turn calls this instead of
    /// [`PacketIo::flush`]. The io_uring back end hands the sends to the kernel
    /// in the wait's own system call (one `io_uring_enter` per turn instead of
    /// two); the others send at once. Any later `send`, `flush`, `recv` or
    /// `remove_socket` also completes them.
    fn flush_before_wait(&mut self) {
        self.flush();
    }

    /// A handle other threads use to interrupt [`PacketIo::wait`].
    fn waker(&self) -> Arc<dyn Wake>;

    /// Watch one more pollable descriptor (tern's workers pass the epoll
    /// instance of their TCP/TLS connections): from now on [`PacketIo::wait`]
    /// also returns when `fd` becomes readable, and
    /// [`PacketIo::take_watch_ready`] says that it did. The caller keeps `fd`
    /// open for as long as the back end lives; one watched descriptor per back
    /// end (a second call fails with `AlreadyExists`). Readiness is reported on
    /// edges: the caller drains what `fd` signals, or remembers itself that it
    /// left something behind.
    fn watch(&mut self, fd: RawFd) -> io::Result<()>;

    /// Whether the watched descriptor signalled readiness since the last call
    /// (and clear that). Costs no syscall.
    fn take_watch_ready(&mut self) -> bool;

    /// The back end's counters.
    fn stats(&self) -> &IoStats;

    /// The back end's own driver of TCP stream reads and writes, when it has
    /// one (io_uring): the stream module then submits receives and sends on
    /// the worker's ring instead of reading and writing its sockets when
    /// they are ready. `None` (the default): streams are driven by readiness
    /// through [`PacketIo::watch`].
    fn stream_ring(&mut self) -> Option<&mut dyn StreamRing> {
        None
    }
}

/// Counters of one back end; plain numbers, merged by the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Datagrams received and handed to the caller.
    pub rx_datagrams: u64,
    /// Bytes of payload received and handed to the caller.
    pub rx_bytes: u64,
    /// Receive syscalls (mmsg) or [`PacketIo::recv`] calls (io_uring) that
    /// returned at least one datagram.
    pub rx_batches: u64,
    /// Datagrams dropped because they did not fit a receive buffer (MSG_TRUNC).
    pub rx_truncated: u64,
    /// Receives that failed with something other than "would block" (for
    /// io_uring: receives the kernel ended with an error; they are re-armed).
    pub rx_errors: u64,
    /// io_uring: times the provided buffers ran out and the kernel ended a
    /// socket's receive (ENOBUFS); it is re-armed, datagrams wait in the socket.
    pub rx_no_buffers: u64,
    /// io_uring: multishot receives re-armed after the kernel ended them.
    pub rx_rearms: u64,
    /// io_uring: datagrams the ring had already taken from a socket when the
    /// socket was removed (they cannot go back to it), dropped.
    pub rx_discarded: u64,
    /// Datagrams handed to the kernel.
    pub tx_datagrams: u64,
    /// Bytes of payload handed to the kernel.
    pub tx_bytes: u64,
    /// Send syscalls made (for io_uring: submits that carried sends).
    pub tx_syscalls: u64,
    /// Messages sent as one UDP GSO super-datagram (each carries several datagrams).
    pub tx_gso_messages: u64,
    /// Datagrams dropped because the socket's send buffer was full.
    pub tx_would_block: u64,
    /// Datagrams dropped because the kernel refused them (unreachable, wrong family...).
    pub tx_errors: u64,
    /// Datagrams dropped because they are larger than the send queue's slot size.
    pub tx_oversize: u64,
    /// Times the kernel refused UDP GSO and the back end fell back to one datagram per message.
    pub gso_fallbacks: u64,
    /// io_uring: stream (TCP) connections accepted on the ring ([`StreamRing`]).
    pub stream_accepts: u64,
    /// io_uring: stream (TCP) receives completed on the ring.
    pub stream_recvs: u64,
    /// io_uring: bytes those receives delivered.
    pub stream_rx_bytes: u64,
    /// io_uring: stream (TCP) sends completed on the ring.
    pub stream_sends: u64,
    /// io_uring: bytes those sends handed to the kernel.
    pub stream_tx_bytes: u64,
}

impl IoStats {
    /// Add `other`'s counters to these.
    pub fn merge(&mut self, other: &IoStats) {
        self.rx_datagrams += other.rx_datagrams;
        self.rx_bytes += other.rx_bytes;
        self.rx_batches += other.rx_batches;
        self.rx_truncated += other.rx_truncated;
        self.rx_errors += other.rx_errors;
        self.rx_no_buffers += other.rx_no_buffers;
        self.rx_rearms += other.rx_rearms;
        self.rx_discarded += other.rx_discarded;
        self.tx_datagrams += other.tx_datagrams;
        self.tx_bytes += other.tx_bytes;
        self.tx_syscalls += other.tx_syscalls;
        self.tx_gso_messages += other.tx_gso_messages;
        self.tx_would_block += other.tx_would_block;
        self.tx_errors += other.tx_errors;
        self.tx_oversize += other.tx_oversize;
        self.gso_fallbacks += other.gso_fallbacks;
        self.stream_accepts += other.stream_accepts;
        self.stream_recvs += other.stream_recvs;
        self.stream_rx_bytes += other.stream_rx_bytes;
        self.stream_sends += other.stream_sends;
        self.stream_tx_bytes += other.stream_tx_bytes;
    }

    /// Every datagram dropped by the I/O layer, whatever the reason.
    pub fn drops(&self) -> u64 {
        self.rx_truncated
            + self.rx_discarded
            + self.tx_would_block
            + self.tx_errors
            + self.tx_oversize
    }
}

/// The packet I/O back ends this build knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendKind {
    /// Portable: epoll readiness, `recvmmsg`/`sendmmsg`, UDP GSO where the kernel has it.
    Mmsg,
    /// io_uring (Linux 6.0+): multishot `recvmsg` into a provided-buffer ring,
    /// `sendmsg` SQEs submitted once per loop turn.
    Uring,
    /// AF_XDP ([`xsk::XdpIo`]): frames redirected by tern's XDP program into
    /// a socket per queue, headers built by the relay; never chosen by
    /// probing (it needs an interface and the XDP program).
    Xdp,
}

impl BackendKind {
    /// The name used in configuration, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Mmsg => "mmsg",
            BackendKind::Uring => "uring",
            BackendKind::Xdp => "xdp",
        }
    }

    /// Every back end, fastest first: the order [`select_backend`] tries them in.
    pub const ALL: &'static [BackendKind] = &[BackendKind::Uring, BackendKind::Mmsg];

    /// Whether this kernel offers what the back end needs, and if not, why.
    pub fn probe(self) -> Result<(), BackendUnavailable> {
        match self {
            // recvmmsg/sendmmsg exist since Linux 3.0; nothing to probe.
            BackendKind::Mmsg => Ok(()),
            // Kernel >= 6.0, io_uring not disabled, the opcodes, the
            // provided-buffer ring and RLIMIT_MEMLOCK; probed once per process.
            BackendKind::Uring => {
                uring::probe().map_err(|reason| BackendUnavailable { kind: self, reason })
            }
            // An AF_XDP socket can be made (CAP_NET_RAW, kernel support).
            BackendKind::Xdp => {
                xsk::probe().map_err(|reason| BackendUnavailable { kind: self, reason })
            }
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A back end the kernel (or this build) cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} back end unavailable: {reason}")]
pub struct BackendUnavailable {
    /// The back end asked for.
    pub kind: BackendKind,
    /// What the probe found.
    pub reason: String,
}

/// The outcome of [`select_backend`]: which back end runs and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The back end to build.
    pub kind: BackendKind,
    /// One sentence saying why this one.
    pub reason: String,
}

/// Choose the back end: the one `requested` when given (an error if the
/// kernel cannot run it), else the fastest that probes successfully.
pub fn select_backend(requested: Option<BackendKind>) -> Result<Selection, BackendUnavailable> {
    if let Some(kind) = requested {
        kind.probe()?;
        return Ok(Selection {
            kind,
            reason: format!("{kind} requested by configuration"),
        });
    }
    let mut skipped = Vec::new();
    for &kind in BackendKind::ALL {
        match kind.probe() {
            Ok(()) => {
                let reason = if skipped.is_empty() {
                    format!("{kind} is the fastest back end this kernel offers")
                } else {
                    format!("{kind} chosen; skipped: {}", skipped.join("; "))
                };
                return Ok(Selection { kind, reason });
            }
            Err(e) => skipped.push(e.to_string()),
        }
    }
    // The portable back end is always in ALL and always probes Ok, so the loop returns.
    Err(BackendUnavailable {
        kind: BackendKind::Mmsg,
        reason: skipped.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_selects_a_backend_and_says_why() {
        let s = select_backend(None).unwrap();
        match BackendKind::Uring.probe() {
            Ok(()) => {
                assert_eq!(s.kind, BackendKind::Uring);
                assert!(s.reason.contains("uring"), "{}", s.reason);
            }
            Err(e) => {
                assert_eq!(s.kind, BackendKind::Mmsg);
                assert!(s.reason.contains("skipped"), "{}", s.reason);
                assert!(s.reason.contains(&e.reason), "{}", s.reason);
            }
        }
        let s = select_backend(Some(BackendKind::Mmsg)).unwrap();
        assert_eq!(s.kind, BackendKind::Mmsg);
        assert!(s.reason.contains("requested"));
    }

    #[test]
    fn forcing_uring_fails_with_the_reason_or_succeeds() {
        match select_backend(Some(BackendKind::Uring)) {
            Ok(s) => assert_eq!(s.kind, BackendKind::Uring),
            Err(e) => {
                assert_eq!(e.kind, BackendKind::Uring);
                assert!(!e.reason.is_empty());
                assert!(e.to_string().starts_with("uring back end unavailable: "));
            }
        }
        assert_eq!(BackendKind::Uring.name(), "uring");
        assert_eq!(BackendKind::ALL[0], BackendKind::Uring, "fastest first");
    }

    #[test]
    fn stats_merge_adds_every_counter() {
        let one = IoStats {
            rx_datagrams: 1,
            rx_bytes: 2,
            rx_batches: 3,
            rx_truncated: 4,
            rx_errors: 5,
            rx_no_buffers: 14,
            rx_rearms: 15,
            rx_discarded: 16,
            tx_datagrams: 6,
            tx_bytes: 7,
            tx_syscalls: 8,
            tx_gso_messages: 9,
            tx_would_block: 10,
            tx_errors: 11,
            tx_oversize: 12,
            gso_fallbacks: 13,
            stream_accepts: 21,
            stream_recvs: 17,
            stream_rx_bytes: 18,
            stream_sends: 19,
            stream_tx_bytes: 20,
        };
        let mut sum = one;
        sum.merge(&one);
        assert_eq!(sum.rx_datagrams, 2);
        assert_eq!(sum.gso_fallbacks, 26);
        assert_eq!(sum.rx_no_buffers, 28);
        assert_eq!(sum.rx_rearms, 30);
        assert_eq!(sum.stream_recvs, 34);
        assert_eq!(sum.stream_tx_bytes, 40);
        assert_eq!(sum.drops(), 2 * (4 + 16 + 10 + 11 + 12));
    }
}
