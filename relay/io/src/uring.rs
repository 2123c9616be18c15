//! The io_uring back end (Linux 6.0+): one ring per worker; a multishot
//! `RECVMSG` per socket receiving into one shared provided-buffer ring;
//! `SENDMSG` SQEs queued by [`PacketIo::send`]; [`PacketIo::wait`] is one
//! `io_uring_enter` with a timeout (`IORING_ENTER_EXT_ARG`) that also submits
//! the sends a loop handed over with [`PacketIo::flush_before_wait`], so a
//! busy worker makes one system call per loop turn ([`PacketIo::flush`]
//! submits at once instead). The waker is an eventfd whose read sits on the
//! ring. Sockets are registered files where the kernel lets us (a sparse
//! table sized at start); the ring runs deferred task work on its single
//! issuer, so completions never interrupt the worker between turns.
//!
//! Not used, on purpose: `SEND_ZC`. Zero-copy send pins the pages and posts a
//! second completion per send when the kernel lets go of them; for datagrams
//! of media size (100–1,200 bytes) that costs more than the copy it saves
//! (the kernel's own guidance puts the break-even around 10 KB), and tern
//! never sends datagrams that large. Registered (fixed) send buffers buy
//! nothing for `SENDMSG` on UDP either: the kernel copies into the skb.
//!
//! Buffer ownership, monoio-style: every byte the kernel may write or read
//! (the provided buffers and their ring, the receive `msghdr`, the send
//! arena and its `msghdr`s, the eventfd read buffer) belongs to this back end
//! and stays put, unmoved and unread by us, until the CQE that returns it has
//! been reaped. Removing a socket cancels its receive and waits for the final
//! CQE; dropping the back end cancels everything and waits likewise (and
//! leaks the memory rather than free it under the kernel if the ring does not
//! answer).
//!
//! Received datagrams are *copied* from the provided buffer into the caller's
//! [`RecvBatch`]: the kernel lays a provided buffer out as
//! `io_uring_recvmsg_out` + name + payload, so it cannot leave the caller's
//! headroom in front of the payload, and the batch is the caller's, not
//! something the kernel may own. One `memcpy` per datagram, no syscall, no
//! allocation; the buffer goes back to the ring at once.

use std::alloc::{self, Layout};
use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use io_uring::types::{BufRingEntry, CancelBuilder, Fd, Fixed, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, EnterFlags, IoUring, Probe};

use crate::batch::{RecvBatch, RecvMeta};
use crate::gso::{self, CmsgBuf, TxEntry};
use crate::sockaddr;
use crate::stream::{StreamCompletion, StreamOp, StreamRing};
use crate::{BackendKind, IoStats, PacketIo, SocketId, Wake, MAX_UDP_PAYLOAD};

/// The one provided-buffer group of a ring.
const BGID: u16 = 0;
/// Room for the source address in a provided buffer (fits either family).
const NAME_LEN: usize = size_of::<libc::sockaddr_in6>();
/// What the kernel puts in front of the payload: `io_uring_recvmsg_out` + name.
const RECV_HEADER: usize = 16 + NAME_LEN;

// user_data: the kind in the top byte; for receives, the socket's generation
// (24 bits) and index (32 bits); for sends, the message index.
const KIND_SHIFT: u32 = 56;
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
const KIND_WAKE: u64 = 3;
const KIND_CANCEL: u64 = 4;
const KIND_WATCH: u64 = 5;
const KIND_STREAM_RECV: u64 = 6;
const KIND_STREAM_SEND: u64 = 7;
const KIND_STREAM_ACCEPT: u64 = 8;
/// Stream operation tokens are the low 56 bits of their user_data.
const TOKEN_MASK: u64 = (1 << KIND_SHIFT) - 1;
const GEN_MASK: u32 = 0x00FF_FFFF;

/// How long remove/drop wait for the kernel to hand back a cancelled request.
const CANCEL_WAIT: Duration = Duration::from_millis(10);
const CANCEL_TRIES: usize = 200;

/// Tuning of a [`UringIo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UringConfig {
    /// Use UDP GSO when the kernel supports it.
    pub gso: bool,
    /// Datagrams the send queue holds before it flushes by itself.
    pub send_queue: usize,
    /// Bytes the send arena holds before it flushes by itself (at least 64 KiB).
    pub send_arena: usize,
    /// Largest datagram a provided buffer holds; larger ones are dropped as truncated.
    pub max_payload: usize,
    /// Provided buffers (a power of two, at most 32768): datagrams received
    /// by the kernel but not yet taken by [`PacketIo::recv`]. When they run
    /// out the kernel ends the receives (ENOBUFS, counted); they are re-armed
    /// and datagrams wait in the sockets meanwhile.
    pub buffers: u16,
    /// Submission queue entries (the completion queue gets eight times as many).
    pub ring_entries: u32,
    /// Registered-file slots (sockets beyond use plain descriptors); capped by RLIMIT_NOFILE.
    pub fixed_files: u32,
    /// Coalesce wake-ups: while traffic flows, a [`PacketIo::wait`] sleeps
    /// up to this long for [`COALESCE_BATCH`] datagrams before it returns
    /// with what has arrived (io_uring's minimum-wait, Linux 6.12+). The
    /// first datagram after an idle spell still wakes the loop at once.
    /// It trades up to this much added latency for fewer sleeps and
    /// wake-ups per datagram. Zero (the default) is off.
    pub min_wait: Duration,
}

/// Completions a coalescing wait ([`UringConfig::min_wait`]) asks for
/// before its minimum wait runs out.
pub const COALESCE_BATCH: usize = 64;

/// How long an untimed coalescing wait sleeps at most before the loop goes
/// round again with nothing to do.
const IDLE_WAIT_CAP: Duration = Duration::from_secs(3600);

/// The longest [`UringConfig::min_wait`] accepted.
pub const MAX_MIN_WAIT: Duration = Duration::from_millis(10);

impl Default for UringConfig {
    fn default() -> Self {
        Self {
            gso: true,
            send_queue: 256,
            send_arena: 512 << 10,
            max_payload: 9216,
            buffers: 512,
            ring_entries: 512,
            fixed_files: 4096,
            min_wait: Duration::ZERO,
        }
    }
}

/// Whether this kernel and process can run [`UringIo`], and if not, why.
/// Probed once per process.
pub(crate) fn probe() -> Result<(), String> {
    static PROBED: OnceLock<Result<(), String>> = OnceLock::new();
    PROBED.get_or_init(probe_uncached).clone()
}

/// The io_uring back end of one worker. See the module docs.
///
/// Not `Send`: the ring is set up single-issuer, so build it on the thread
/// that drives it (tern's workers do).
pub struct UringIo {
    // Declared first: the ring closes before the memory below is freed.
    ring: IoUring,
    st: State,
}

/// Everything but the ring, so CQE handling can borrow it while the CQ is borrowed.
struct State {
    bufs: BufRing,
    /// The `msghdr` every multishot receive was prepared with (name and control lengths).
    recv_hdr: Box<libc::msghdr>,
    waker: Arc<EventFdWake>,
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// The descriptor given to [`PacketIo::watch`], its multishot poll, and
    /// whether it signalled since the caller last asked.
    watched: Option<RawFd>,
    watch_armed: bool,
    watch_ready: bool,
    sockets: Vec<Option<Slot>>,
    free: Vec<u32>,
    next_gen: u32,
    fixed_slots: u32,
    /// Received datagrams not yet handed out, in arrival order. Each holds a
    /// distinct provided buffer, so it never grows past the buffer count.
    stash: VecDeque<RxDone>,
    /// Sockets whose multishot receive ended and must be re-armed.
    rearm: Vec<u32>,
    /// Stream operations ([`StreamRing`]) queued or in flight whose CQE has
    /// not been reaped, and the completions reaped but not yet taken.
    stream_ops: usize,
    stream_done: VecDeque<StreamCompletion>,
    closing: bool,
    gso: bool,
    /// [`UringConfig::min_wait`] in microseconds; 0 is off.
    min_wait_us: u32,
    stats: IoStats,
    tx: TxQueue,
}

struct Slot {
    socket: UdpSocket,
    local: SocketAddr,
    gen: u32,
    fixed: bool,
    /// A receive SQE is queued or in flight whose final CQE has not been reaped.
    armed: bool,
    removing: bool,
}

#[derive(Clone, Copy)]
struct RxDone {
    index: u32,
    bid: u16,
    len: u32,
}

/// Queued datagrams and the `msghdr`s of their `SENDMSG`s. The arena and the
/// headers belong to the kernel while `in_flight > 0`.
struct TxQueue {
    entries: Vec<TxEntry>,
    arena: Vec<u8>,
    hdrs: Vec<libc::msghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<CmsgBuf>,
    /// For message k: the entries it carries, `start..end`.
    spans: Vec<(usize, usize)>,
    /// GSO messages the kernel refused, to send again one datagram per message.
    retry: Vec<(usize, usize)>,
    in_flight: usize,
    /// SQEs for every entry are queued (submitted, or waiting for the next
    /// `io_uring_enter`): the entries and arena stay untouched until the last
    /// send completion is reaped, which resets the queue.
    deferred: bool,
}

struct EventFdWake(OwnedFd);

impl Wake for EventFdWake {
    fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        let rc = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if rc == 8 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl UringIo {
    /// A back end with its own ring, provided buffers and eventfd. Fails when
    /// the kernel cannot run it (see [`BackendKind::probe`]).
    pub fn new(config: UringConfig) -> io::Result<Self> {
        let ring = build_ring(config.ring_entries.max(8))?;
        if config.min_wait > MAX_MIN_WAIT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("io_uring minimum wait is at most {MAX_MIN_WAIT:?}"),
            ));
        }
        if !config.min_wait.is_zero() && !ring.params().is_feature_min_timeout() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring minimum wait needs IORING_FEAT_MIN_TIMEOUT (Linux 6.12 or later)",
            ));
        }
        // Whole microseconds, and at least one when asked for at all.
        let min_wait_us = u32::try_from(config.min_wait.as_micros())
            .unwrap_or(u32::MAX)
            .max(u32::from(!config.min_wait.is_zero()));
        let buffers = config.buffers.clamp(1, 1 << 15);
        if !buffers.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "io_uring provided buffers must be a power of two",
            ));
        }
        let max_payload = config.max_payload.clamp(1, MAX_UDP_PAYLOAD);
        let mut bufs = BufRing::new(buffers, RECV_HEADER + max_payload)?;
        // SAFETY: the ring memory is page aligned, `buffers` entries long, and
        // owned by `bufs`, which lives in `st` and so outlives the ring (Drop
        // unregisters it; see also the field order of UringIo).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.ring.as_ptr() as u64,
                buffers,
                BGID,
                0,
            )?;
        }
        for bid in 0..buffers {
            bufs.provide(bid);
        }
        bufs.publish();
        let fixed_slots = config.fixed_files.min(nofile_limit());
        let fixed_slots =
            if fixed_slots > 0 && ring.submitter().register_files_sparse(fixed_slots).is_ok() {
                fixed_slots
            } else {
                0
            };
        // A blocking eventfd: a nonblocking one would make the ring's read fail
        // with EAGAIN instead of waiting for a wake.
        // SAFETY: plain syscall; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: efd is a fresh descriptor nobody else owns.
        let waker = Arc::new(EventFdWake(unsafe { OwnedFd::from_raw_fd(efd) }));
        let gso = config.gso && gso::gso_supported();
        let send_queue = config.send_queue.max(1);
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut recv_hdr: Box<libc::msghdr> = Box::new(unsafe { mem::zeroed() });
        recv_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
        let mut io = UringIo {
            ring,
            st: State {
                bufs,
                recv_hdr,
                waker,
                wake_buf: Box::new(0),
                wake_armed: false,
                watched: None,
                watch_armed: false,
                watch_ready: false,
                sockets: Vec::new(),
                free: Vec::new(),
                next_gen: 0,
                fixed_slots,
                stash: VecDeque::with_capacity(usize::from(buffers)),
                rearm: Vec::new(),
                stream_ops: 0,
                stream_done: VecDeque::new(),
                closing: false,
                gso,
                min_wait_us,
                stats: IoStats::default(),
                tx: TxQueue {
                    entries: Vec::with_capacity(send_queue),
                    arena: Vec::with_capacity(config.send_arena.max(MAX_UDP_PAYLOAD + 1)),
                    // SAFETY: msghdr is plain old data; all-zero is valid.
                    hdrs: (0..send_queue).map(|_| unsafe { mem::zeroed() }).collect(),
                    iovs: (0..send_queue)
                        .map(|_| libc::iovec {
                            iov_base: ptr::null_mut(),
                            iov_len: 0,
                        })
                        .collect(),
                    names: (0..send_queue).map(|_| sockaddr::zeroed()).collect(),
                    cmsgs: vec![CmsgBuf([0; 32]); send_queue],
                    spans: Vec::with_capacity(send_queue),
                    retry: Vec::with_capacity(send_queue),
                    in_flight: 0,
                    deferred: false,
                },
            },
        };
        io.arm_wake()?;
        io.submit()?;
        Ok(io)
    }

    /// Whether sends currently use UDP GSO.
    pub fn gso_enabled(&self) -> bool {
        self.st.gso
    }

    /// Whether sockets go to the kernel as registered files (a sparse table was granted).
    pub fn fixed_files(&self) -> bool {
        self.st.fixed_slots > 0
    }

    /// Queue one SQE, submitting first when the SQ is full.
    fn push(&mut self, sqe: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every pointer an SQE built by this back end carries refers
            // to memory owned by `self.st` (receive msghdr, provided-buffer ring,
            // send msghdrs/iovecs/names/cmsgs/arena, eventfd buffer), none of
            // which moves or is freed before the SQE's last CQE is reaped.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            self.submit()?;
        }
    }

    /// Hand queued SQEs to the kernel (one `io_uring_enter`, no waiting).
    fn submit(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // Completions are backed up: make room and go on.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    self.reap();
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Submit and run completions without blocking (GETEVENTS, zero wanted).
    fn enter_nowait(&mut self) -> io::Result<()> {
        let queued = self.ring.submission().len() as u32;
        // SAFETY: a plain io_uring_enter on our ring with no argument pointer.
        let rc = unsafe {
            self.ring.submitter().enter::<libc::sigset_t>(
                queued,
                0,
                EnterFlags::GETEVENTS.bits(),
                None,
            )
        };
        match rc {
            Ok(_) => Ok(()),
            Err(e) if benign_enter_error(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submit and wait up to `timeout` for at least `want` completions.
    fn enter_wait(&mut self, timeout: Duration, want: usize) -> io::Result<()> {
        let ts = Timespec::from(timeout);
        let args = SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => Ok(()),
            Err(e) if benign_enter_error(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Submit and wait for `want` completions for at most the minimum wait,
    /// then for at least one (or until `timeout`).
    fn enter_coalesced(&mut self, timeout: Option<Duration>, want: usize) -> io::Result<()> {
        // Without an overall timeout the kernel ends the whole wait when the
        // minimum wait runs out, events or not: an idle loop would spin every
        // minimum wait. A long timeout makes it sleep until a datagram.
        let ts = Timespec::from(timeout.unwrap_or(IDLE_WAIT_CAP));
        let args = SubmitArgs::new()
            .min_wait_usec(self.st.min_wait_us)
            .timespec(&ts);
        let rc = self.ring.submitter().submit_with_args(want, &args);
        match rc {
            Ok(_) => Ok(()),
            Err(e) if benign_enter_error(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn arm_wake(&mut self) -> io::Result<()> {
        let sqe = opcode::Read::new(
            Fd(self.st.waker.0.as_raw_fd()),
            (&mut *self.st.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(KIND_WAKE << KIND_SHIFT);
        self.push(&sqe)?;
        self.st.wake_armed = true;
        Ok(())
    }

    /// Queue the multishot poll of the watched descriptor.
    fn arm_watch(&mut self) -> io::Result<()> {
        let Some(fd) = self.st.watched else {
            return Ok(());
        };
        let sqe = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(KIND_WATCH << KIND_SHIFT);
        self.push(&sqe)?;
        self.st.watch_armed = true;
        Ok(())
    }

    /// Queue the multishot receive of socket `index`.
    fn arm(&mut self, index: u32) -> io::Result<()> {
        let Some(Some(slot)) = self.st.sockets.get(index as usize) else {
            return Ok(());
        };
        if slot.armed || slot.removing {
            return Ok(());
        }
        let msg: *const libc::msghdr = &*self.st.recv_hdr;
        let sqe = if slot.fixed {
            opcode::RecvMsgMulti::new(Fixed(index), msg, BGID).build()
        } else {
            opcode::RecvMsgMulti::new(Fd(slot.socket.as_raw_fd()), msg, BGID).build()
        };
        let sqe = sqe.user_data(recv_user_data(index, slot.gen));
        self.push(&sqe)?;
        if let Some(Some(slot)) = self.st.sockets.get_mut(index as usize) {
            slot.armed = true;
        }
        Ok(())
    }

    /// Take every completion the kernel posted; re-arm what ended.
    fn reap(&mut self) {
        let st = &mut self.st;
        for cqe in self.ring.completion() {
            st.on_cqe(cqe.user_data(), cqe.result(), cqe.flags());
        }
        self.st.bufs.publish();
        if self.st.tx.deferred && self.st.tx.in_flight == 0 {
            self.st.tx.deferred = false;
            self.finish_sends();
        }
        if self.st.closing {
            return;
        }
        while let Some(index) = self.st.rearm.pop() {
            self.st.stats.rx_rearms += 1;
            if let Err(e) = self.arm(index) {
                self.st.stats.rx_errors += 1;
                tracing::warn!(error = %e, "could not re-arm an io_uring receive");
            }
        }
        if !self.st.wake_armed {
            if let Err(e) = self.arm_wake() {
                tracing::warn!(error = %e, "could not re-arm the io_uring waker");
            }
        }
        if self.st.watched.is_some() && !self.st.watch_armed {
            if let Err(e) = self.arm_watch() {
                tracing::warn!(error = %e, "could not re-arm the io_uring poll of the watched fd");
            }
        }
    }

    /// Wait until every send SQE has completed (the arena is ours again).
    fn wait_sends(&mut self) {
        self.reap();
        let mut tries = 0;
        while self.st.tx.in_flight > 0 && tries < CANCEL_TRIES {
            if let Err(e) = self.enter_wait(CANCEL_WAIT, 1) {
                tracing::warn!(error = %e, "io_uring wait for sends failed");
            }
            self.reap();
            tries += 1;
        }
    }

    /// Send queued datagrams now: one SENDMSG SQE per message, one submit,
    /// then wait for their completions.
    fn flush_queue(&mut self) {
        if !self.st.tx.deferred {
            self.queue_all();
            self.st.tx.deferred = true;
        }
        self.complete_deferred();
    }

    /// Submit the queued sends (if the next wait has not yet) and wait for
    /// their completions; the queue is empty and ours again afterwards.
    fn complete_deferred(&mut self) {
        if !self.st.tx.deferred {
            return;
        }
        if self.st.tx.in_flight > 0 {
            if let Err(e) = self.submit() {
                tracing::warn!(error = %e, "io_uring submit failed");
            }
            // Reaping the last send completion resets the queue (see `reap`).
            self.wait_sends();
        }
        if self.st.tx.deferred {
            self.st.tx.deferred = false;
            self.finish_sends();
        }
    }

    /// One SENDMSG SQE per message for every queued datagram, not yet submitted.
    fn queue_all(&mut self) {
        self.st.tx.spans.clear();
        let mut i = 0;
        while i < self.st.tx.entries.len() {
            let from = self.st.tx.entries[i].from;
            if self.st.slot(from).is_none() {
                // The socket was removed after the datagram was queued.
                self.st.stats.tx_errors += 1;
                i += 1;
                continue;
            }
            let j = self.st.tx.run_end(i, self.st.gso);
            self.queue_message(i, j);
            i = j;
        }
        if self.st.tx.in_flight > 0 {
            self.st.stats.tx_syscalls += 1;
        }
    }

    /// After the last send completion: send again, one datagram per message,
    /// what the kernel refused as GSO, then empty the queue.
    fn finish_sends(&mut self) {
        if !self.st.tx.retry.is_empty() {
            self.st.tx.spans.clear();
            let retry = mem::take(&mut self.st.tx.retry);
            for &(start, end) in &retry {
                for k in start..end {
                    self.queue_message(k, k + 1);
                }
            }
            self.st.tx.retry = retry;
            self.st.tx.retry.clear();
            self.submit_sends();
        }
        self.st.tx.entries.clear();
        self.st.tx.arena.clear();
        self.st.tx.spans.clear();
    }

    /// Build message `spans.len()` from entries `start..end` and queue its SQE.
    fn queue_message(&mut self, start: usize, end: usize) {
        let m = self.st.tx.spans.len();
        let tx = &mut self.st.tx;
        let first = &tx.entries[start];
        let from = first.from;
        let total: usize = tx.entries[start..end].iter().map(|e| e.len).sum();
        tx.iovs[m] = libc::iovec {
            iov_base: tx.arena[first.off..].as_mut_ptr().cast(),
            iov_len: total,
        };
        let namelen = sockaddr::write(first.to, &mut tx.names[m]);
        let seg = first.len;
        let hdr = &mut tx.hdrs[m];
        // SAFETY: msghdr is plain old data; all-zero is valid.
        *hdr = unsafe { mem::zeroed() };
        hdr.msg_name = (&mut tx.names[m] as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = namelen;
        hdr.msg_iov = &mut tx.iovs[m];
        hdr.msg_iovlen = 1;
        if end - start > 1 {
            // seg <= MAX_UDP_PAYLOAD (checked in send), so it fits a u16.
            gso::set_segment_size(hdr, &mut tx.cmsgs[m], seg as u16);
        }
        tx.spans.push((start, end));
        let msg: *const libc::msghdr = &tx.hdrs[m];
        let ud = (KIND_SEND << KIND_SHIFT) | m as u64;
        // INVARIANT: the caller checked the slot exists.
        let slot = self.st.slot(from).expect("socket checked by the caller");
        // MSG_DONTWAIT: a full socket buffer fails the send (counted as would-block,
        // like the mmsg back end) instead of parking it on the ring.
        let sqe = if slot.fixed {
            opcode::SendMsg::new(Fixed(from.0), msg)
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
        } else {
            opcode::SendMsg::new(Fd(slot.socket.as_raw_fd()), msg)
                .flags(libc::MSG_DONTWAIT as u32)
                .build()
        };
        match self.push(&sqe.user_data(ud)) {
            Ok(()) => self.st.tx.in_flight += 1,
            Err(e) => {
                self.st.stats.tx_errors += (end - start) as u64;
                tracing::trace!(error = %e, "could not queue a send");
            }
        }
    }

    fn submit_sends(&mut self) {
        if self.st.tx.in_flight == 0 {
            return;
        }
        self.st.stats.tx_syscalls += 1;
        if let Err(e) = self.submit() {
            tracing::warn!(error = %e, "io_uring submit failed");
        }
        self.wait_sends();
    }
}

impl State {
    fn slot(&self, id: SocketId) -> Option<&Slot> {
        self.sockets.get(id.index())?.as_ref()
    }

    fn on_cqe(&mut self, user_data: u64, res: i32, flags: u32) {
        match user_data >> KIND_SHIFT {
            KIND_RECV => {
                let index = user_data as u32;
                let gen = (user_data >> 32) as u32 & GEN_MASK;
                let live = matches!(
                    self.sockets.get(index as usize),
                    Some(Some(s)) if s.gen == gen
                );
                if let Some(bid) = cqueue::buffer_select(flags) {
                    let removing = live
                        && self.sockets[index as usize]
                            .as_ref()
                            .is_some_and(|s| s.removing);
                    if live && !removing && res >= 0 && self.stash.len() < self.stash.capacity() {
                        self.stash.push_back(RxDone {
                            index,
                            bid,
                            len: res as u32,
                        });
                    } else {
                        self.bufs.provide(bid);
                        self.stats.rx_discarded += 1;
                    }
                } else if res < 0 {
                    match -res {
                        libc::ENOBUFS => self.stats.rx_no_buffers += 1,
                        libc::ECANCELED => {}
                        _ => {
                            self.stats.rx_errors += 1;
                            tracing::trace!(errno = -res, "io_uring receive ended with an error");
                        }
                    }
                }
                if !cqueue::more(flags) && live {
                    if let Some(Some(slot)) = self.sockets.get_mut(index as usize) {
                        slot.armed = false;
                        if !slot.removing && !self.closing {
                            // Never allocates: capacity covers every socket, and a
                            // socket is pushed only when its receive ends.
                            self.rearm.push(index);
                        }
                    }
                }
            }
            KIND_SEND => self.on_send(user_data as usize & 0xFFFF_FFFF, res),
            KIND_STREAM_ACCEPT => {
                let more = cqueue::more(flags);
                if !more {
                    self.stream_ops = self.stream_ops.saturating_sub(1);
                }
                if res >= 0 {
                    self.stats.stream_accepts += 1;
                }
                // May grow: one multishot accept posts a completion per connection.
                self.stream_done.push_back(StreamCompletion {
                    token: user_data & TOKEN_MASK,
                    op: StreamOp::Accept,
                    result: res,
                    more,
                });
            }
            kind @ (KIND_STREAM_RECV | KIND_STREAM_SEND) => {
                self.stream_ops = self.stream_ops.saturating_sub(1);
                let op = if kind == KIND_STREAM_RECV {
                    self.stats.stream_recvs += 1;
                    if res > 0 {
                        self.stats.stream_rx_bytes += res as u64;
                    }
                    StreamOp::Recv
                } else {
                    self.stats.stream_sends += 1;
                    if res > 0 {
                        self.stats.stream_tx_bytes += res as u64;
                    }
                    StreamOp::Send
                };
                // Never allocates: room for every operation in flight is
                // reserved when it is queued (`queue_stream`).
                self.stream_done.push_back(StreamCompletion {
                    token: user_data & TOKEN_MASK,
                    op,
                    result: res,
                    more: false,
                });
            }
            KIND_WATCH => {
                if res >= 0 {
                    self.watch_ready = true;
                } else if res != -libc::ECANCELED {
                    tracing::trace!(errno = -res, "poll of the watched fd failed");
                }
                if !cqueue::more(flags) {
                    self.watch_armed = false;
                    // Whatever ended the poll, let the caller look once more.
                    self.watch_ready = true;
                }
            }
            KIND_WAKE => {
                self.wake_armed = false;
                if res < 0 && res != -libc::ECANCELED {
                    tracing::trace!(errno = -res, "eventfd read failed");
                }
            }
            _ => {}
        }
    }

    fn on_send(&mut self, m: usize, res: i32) {
        self.tx.in_flight = self.tx.in_flight.saturating_sub(1);
        let Some(&(start, end)) = self.tx.spans.get(m) else {
            return;
        };
        let segments = (end - start) as u64;
        if res >= 0 {
            self.stats.tx_datagrams += segments;
            self.stats.tx_bytes += self.tx.entries[start..end]
                .iter()
                .map(|e| e.len as u64)
                .sum::<u64>();
            if segments > 1 {
                self.stats.tx_gso_messages += 1;
            }
            return;
        }
        match -res {
            libc::EAGAIN | libc::ENOBUFS => self.stats.tx_would_block += segments,
            libc::EIO | libc::EINVAL if segments > 1 => {
                if self.gso {
                    tracing::warn!(errno = -res, "UDP GSO refused by the kernel; sending one datagram per message from now on");
                }
                self.gso = false;
                self.stats.gso_fallbacks += 1;
                self.tx.retry.push((start, end));
            }
            libc::EMSGSIZE if segments > 1 => self.tx.retry.push((start, end)),
            _ => {
                self.stats.tx_errors += segments;
                tracing::trace!(errno = -res, "io_uring sendmsg failed");
            }
        }
    }

    fn has_pending(&self) -> bool {
        !self.stash.is_empty() || !self.stream_done.is_empty()
    }
}

impl TxQueue {
    /// The end of the message starting at entry `i` (see [`gso::run`]).
    fn run_end(&self, i: usize, gso_on: bool) -> usize {
        gso::run(&self.entries, i, gso_on).0
    }
}

impl PacketIo for UringIo {
    fn kind(&self) -> BackendKind {
        BackendKind::Uring
    }

    fn add_socket(&mut self, socket: UdpSocket) -> io::Result<SocketId> {
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        let index = match self.st.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.st.sockets.len())
                    .map_err(|_| io::Error::other("too many sockets"))?;
                self.st.sockets.push(None);
                i
            }
        };
        let fixed = index < self.st.fixed_slots
            && self
                .ring
                .submitter()
                .register_files_update(index, &[socket.as_raw_fd()])
                .is_ok();
        let gen = self.st.next_gen & GEN_MASK;
        self.st.next_gen = self.st.next_gen.wrapping_add(1);
        self.st.sockets[index as usize] = Some(Slot {
            socket,
            local,
            gen,
            fixed,
            armed: false,
            removing: false,
        });
        if self.st.rearm.capacity() < self.st.sockets.len() {
            self.st
                .rearm
                .reserve(self.st.sockets.len() - self.st.rearm.len());
        }
        if let Err(e) = self.arm(index) {
            let slot = self.st.sockets[index as usize].take();
            if fixed {
                let _ = self.ring.submitter().register_files_update(index, &[-1]);
            }
            self.st.free.push(index);
            drop(slot);
            return Err(e);
        }
        Ok(SocketId(index))
    }

    fn remove_socket(&mut self, id: SocketId) -> io::Result<UdpSocket> {
        let index = id.0;
        let gen = match self.st.slot(id) {
            Some(s) => s.gen,
            None => return Err(io::Error::new(io::ErrorKind::NotFound, "no such socket")),
        };
        // Datagrams queued for the old socket must not leave from a new one that
        // reuses the id.
        if self.st.tx.entries.iter().any(|e| e.from == id) {
            self.flush_queue();
        }
        if let Some(Some(slot)) = self.st.sockets.get_mut(index as usize) {
            slot.removing = true;
        }
        if self.st.slot(id).is_some_and(|s| s.armed) {
            let cancel = opcode::AsyncCancel::new(recv_user_data(index, gen))
                .build()
                .user_data(KIND_CANCEL << KIND_SHIFT);
            self.push(&cancel)?;
            let mut tries = 0;
            loop {
                self.enter_wait(CANCEL_WAIT, 1)?;
                self.reap();
                if !self.st.slot(id).is_some_and(|s| s.armed) {
                    break;
                }
                tries += 1;
                if tries >= CANCEL_TRIES {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "io_uring did not hand back the cancelled receive",
                    ));
                }
            }
        }
        // INVARIANT: checked above; nothing in between removes slots.
        let slot = self.st.sockets[index as usize]
            .take()
            .expect("slot checked above");
        if slot.fixed {
            self.ring.submitter().register_files_update(index, &[-1])?;
        }
        // Datagrams the ring already took from this socket cannot go back to it.
        let st = &mut self.st;
        let (bufs, stats) = (&mut st.bufs, &mut st.stats);
        st.stash.retain(|d| {
            if d.index == index {
                bufs.provide(d.bid);
                stats.rx_discarded += 1;
                false
            } else {
                true
            }
        });
        st.bufs.publish();
        st.rearm.retain(|&r| r != index);
        st.free.push(index);
        Ok(slot.socket)
    }

    fn local_addr(&self, id: SocketId) -> Option<SocketAddr> {
        self.st.slot(id).map(|s| s.local)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if self.has_pending() || timeout == Some(Duration::ZERO) {
            return self.enter_nowait();
        }
        // Sends deferred by `flush_before_wait` are submitted by this very call
        // and complete inline, each posting one completion: wait for those and
        // one more, so the sends alone do not end the wait. (The CQ is empty
        // here, or `has_pending` would have been true.)
        let sends = if self.st.tx.deferred {
            self.st.tx.in_flight
        } else {
            0
        };
        if self.st.min_wait_us > 0 {
            // The sends' completions count towards `want` too, so after the
            // minimum wait they alone end it: a busy loop sleeps about the
            // minimum wait a turn, an idle one until the next datagram.
            return self.enter_coalesced(timeout, sends + COALESCE_BATCH);
        }
        let want = 1 + sends;
        match timeout {
            Some(t) => self.enter_wait(t, want),
            None => match self.ring.submit_and_wait(want) {
                Ok(_) => Ok(()),
                Err(e) if benign_enter_error(&e) => Ok(()),
                Err(e) => Err(e),
            },
        }
    }

    fn recv(&mut self, batch: &mut RecvBatch) -> usize {
        batch.clear();
        self.reap();
        let st = &mut self.st;
        while batch.len() < batch.capacity() {
            let Some(d) = st.stash.pop_front() else {
                break;
            };
            let buf = st.bufs.filled(d.bid, d.len as usize);
            match RecvMsgOut::parse(buf, &st.recv_hdr) {
                Ok(out) if out.is_payload_truncated() => st.stats.rx_truncated += 1,
                Ok(out) if out.payload_data().len() > batch.max_payload() => {
                    st.stats.rx_truncated += 1
                }
                Ok(out) => {
                    let mut name = sockaddr::zeroed();
                    let n = out
                        .name_data()
                        .len()
                        .min(size_of::<libc::sockaddr_storage>());
                    // SAFETY: copies n <= size_of(sockaddr_storage) bytes from the
                    // buffer into a live, distinct storage.
                    unsafe {
                        ptr::copy_nonoverlapping(
                            out.name_data().as_ptr(),
                            (&mut name as *mut libc::sockaddr_storage).cast::<u8>(),
                            n,
                        );
                    }
                    match sockaddr::read(&name, out.incoming_name_len()) {
                        Some(source) => {
                            let payload = out.payload_data();
                            let len = payload.len();
                            let (dst, room) = batch.recv_area(batch.len());
                            debug_assert!(len <= room);
                            // SAFETY: dst points at `room >= len` writable bytes of
                            // the batch (recv_area's contract); the source is the
                            // provided buffer, which the kernel handed back with
                            // this CQE and we have not yet returned to the ring.
                            unsafe { ptr::copy_nonoverlapping(payload.as_ptr(), dst, len) };
                            batch.push(RecvMeta {
                                socket: SocketId(d.index),
                                source,
                                len,
                            });
                            st.stats.rx_datagrams += 1;
                            st.stats.rx_bytes += len as u64;
                        }
                        None => st.stats.rx_errors += 1,
                    }
                }
                Err(()) => st.stats.rx_errors += 1,
            }
            st.bufs.provide(d.bid);
        }
        st.bufs.publish();
        if !batch.is_empty() {
            st.stats.rx_batches += 1;
        }
        batch.len()
    }

    fn has_pending(&self) -> bool {
        // SAFETY: no other CompletionQueue of this ring exists: every other use
        // is scoped inside a `&mut self` method, and this one holds `&self`.
        self.st.has_pending() || !unsafe { self.ring.completion_shared() }.is_empty()
    }

    fn send(&mut self, from: SocketId, to: SocketAddr, payload: &[u8]) {
        if payload.len() > MAX_UDP_PAYLOAD {
            self.st.stats.tx_oversize += 1;
            return;
        }
        // The arena still belongs to sends handed over by `flush_before_wait`.
        self.complete_deferred();
        let tx = &self.st.tx;
        if tx.entries.len() == tx.entries.capacity()
            || tx.arena.len() + payload.len() > tx.arena.capacity()
        {
            self.flush_queue();
        }
        let tx = &mut self.st.tx;
        let off = tx.arena.len();
        // Within capacity (checked above), and the kernel holds none of the arena
        // (flush waits for every send CQE): no allocation, no aliasing.
        tx.arena.extend_from_slice(payload);
        tx.entries.push(TxEntry {
            from,
            to,
            off,
            len: payload.len(),
        });
    }

    fn flush(&mut self) {
        if self.st.tx.deferred || !self.st.tx.entries.is_empty() {
            self.flush_queue();
        }
    }

    fn flush_before_wait(&mut self) {
        if self.st.tx.deferred || self.st.tx.entries.is_empty() {
            return;
        }
        self.queue_all();
        self.st.tx.deferred = true;
        if self.st.tx.in_flight == 0 {
            // Every datagram's socket was gone: nothing to wait for.
            self.st.tx.deferred = false;
            self.finish_sends();
        }
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.st.waker.clone()
    }

    fn watch(&mut self, fd: RawFd) -> io::Result<()> {
        if self.st.watched.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "this back end already watches a descriptor",
            ));
        }
        self.st.watched = Some(fd);
        self.arm_watch()?;
        self.submit()
    }

    fn take_watch_ready(&mut self) -> bool {
        // Completions are only looked at when reaped: look now (no syscall).
        self.reap();
        mem::take(&mut self.st.watch_ready)
    }

    fn stats(&self) -> &IoStats {
        &self.st.stats
    }

    fn stream_ring(&mut self) -> Option<&mut dyn StreamRing> {
        Some(self)
    }
}

impl UringIo {
    /// Queue one stream SQE, with room reserved for its completion.
    fn queue_stream(&mut self, sqe: squeue::Entry) -> io::Result<()> {
        let st = &mut self.st;
        let needed = st.stream_done.len() + st.stream_ops + 1;
        if st.stream_done.capacity() < needed {
            // Grows with the connections in flight; reused after that.
            st.stream_done.reserve(needed - st.stream_done.len());
        }
        self.push(&sqe)?;
        self.st.stream_ops += 1;
        Ok(())
    }
}

impl StreamRing for UringIo {
    unsafe fn recv_into(
        &mut self,
        fd: RawFd,
        buf: *mut u8,
        len: u32,
        token: u64,
    ) -> io::Result<()> {
        let sqe = opcode::Recv::new(Fd(fd), buf, len)
            .build()
            .user_data((KIND_STREAM_RECV << KIND_SHIFT) | (token & TOKEN_MASK));
        // The caller keeps `buf` valid and untouched until the completion
        // (this function's contract), which `push`'s SAFETY relies on.
        self.queue_stream(sqe)
    }

    unsafe fn send_from(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: u32,
        token: u64,
    ) -> io::Result<()> {
        // MSG_NOSIGNAL: a reset peer is an error completion, never SIGPIPE.
        let sqe = opcode::Send::new(Fd(fd), buf, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data((KIND_STREAM_SEND << KIND_SHIFT) | (token & TOKEN_MASK));
        self.queue_stream(sqe)
    }

    fn accept_multi(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        let sqe = opcode::AcceptMulti::new(Fd(fd))
            .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .build()
            .user_data((KIND_STREAM_ACCEPT << KIND_SHIFT) | (token & TOKEN_MASK));
        self.queue_stream(sqe)
    }

    fn cancel(&mut self, fd: RawFd) -> io::Result<()> {
        let sqe = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
            .build()
            .user_data(KIND_CANCEL << KIND_SHIFT);
        self.push(&sqe)
    }

    fn take_completion(&mut self) -> Option<StreamCompletion> {
        if self.st.stream_done.is_empty() {
            self.reap();
        }
        self.st.stream_done.pop_front()
    }

    fn has_completions(&mut self) -> bool {
        if self.st.stream_done.is_empty() {
            self.reap();
        }
        !self.st.stream_done.is_empty()
    }

    fn in_flight(&self) -> usize {
        self.st.stream_ops + self.st.stream_done.len()
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        // What `flush_before_wait` handed over still leaves.
        self.complete_deferred();
        self.st.closing = true;
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::any())
            .build()
            .user_data(KIND_CANCEL << KIND_SHIFT);
        let mut done = self.push(&cancel).is_ok();
        let outstanding = |st: &State| {
            st.wake_armed
                || st.watch_armed
                || st.stream_ops > 0
                || st.tx.in_flight > 0
                || st.sockets.iter().flatten().any(|s| s.armed)
        };
        if done {
            let mut tries = 0;
            loop {
                if self.enter_wait(CANCEL_WAIT, 1).is_err() {
                    break;
                }
                self.reap();
                if !outstanding(&self.st) || tries >= CANCEL_TRIES {
                    break;
                }
                tries += 1;
            }
        }
        done = done && !outstanding(&self.st);
        if done {
            let _ring_closes_anyway = self.ring.submitter().unregister_buf_ring(BGID);
        } else {
            // The kernel may still write into these: never free them.
            tracing::error!("io_uring did not hand back every request; leaking its buffers");
            self.st.bufs.leak = true;
            mem::forget(mem::take(&mut self.st.tx.arena));
            mem::forget(mem::take(&mut self.st.tx.hdrs));
            mem::forget(mem::take(&mut self.st.tx.iovs));
            mem::forget(mem::take(&mut self.st.tx.names));
            mem::forget(mem::take(&mut self.st.tx.cmsgs));
            // SAFETY: msghdr is plain old data; the replacement is never used by the kernel.
            mem::forget(mem::replace(
                &mut self.st.recv_hdr,
                Box::new(unsafe { mem::zeroed() }),
            ));
            mem::forget(mem::replace(&mut self.st.wake_buf, Box::new(0)));
        }
    }
}

/// The provided-buffer ring: `count` entries (page-aligned, shared with the
/// kernel) and `count` buffers of `buf_len` bytes in one allocation.
struct BufRing {
    ring: NonNull<BufRingEntry>,
    ring_layout: Layout,
    mem: NonNull<u8>,
    mem_layout: Layout,
    buf_len: usize,
    mask: u16,
    /// Our copy of the tail, published to the kernel by `publish`.
    tail: u16,
    leak: bool,
}

impl BufRing {
    fn new(count: u16, buf_len: usize) -> io::Result<Self> {
        let buf_len = buf_len.next_multiple_of(64);
        let ring_layout = Layout::from_size_align(
            (usize::from(count) * size_of::<BufRingEntry>()).max(4096),
            4096,
        )
        .map_err(io::Error::other)?;
        let mem_layout =
            Layout::from_size_align(usize::from(count) * buf_len, 64).map_err(io::Error::other)?;
        // SAFETY: both layouts have non-zero size.
        let (ring, mem) = unsafe { (alloc::alloc_zeroed(ring_layout), alloc::alloc(mem_layout)) };
        let (Some(ring), Some(mem)) = (NonNull::new(ring.cast()), NonNull::new(mem)) else {
            alloc::handle_alloc_error(ring_layout);
        };
        Ok(BufRing {
            ring,
            ring_layout,
            mem,
            mem_layout,
            buf_len,
            mask: count - 1,
            tail: 0,
            leak: false,
        })
    }

    /// Put buffer `bid` back at the ring's tail (visible to the kernel after `publish`).
    fn provide(&mut self, bid: u16) {
        let slot = usize::from(self.tail & self.mask);
        // SAFETY: slot < count, inside the ring allocation. The kernel only reads
        // entries between its head and the published tail, and this one is past
        // the published tail until `publish`. The bid's buffer is ours: its CQE
        // was reaped (or it was never provided).
        unsafe {
            let entry = &mut *self.ring.as_ptr().add(slot);
            entry.set_addr(self.mem.as_ptr().add(usize::from(bid) * self.buf_len) as u64);
            entry.set_len(self.buf_len as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Make every provided buffer visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field overlays entry 0's reserved bytes, is u16-aligned
        // and lives as long as the ring; the kernel reads it with acquire
        // semantics, so the release store orders the entries written before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`, which the kernel handed back with a CQE.
    fn filled(&self, bid: u16, len: usize) -> &[u8] {
        let len = len.min(self.buf_len);
        // SAFETY: bid < count (the kernel only returns ids we provided), so the
        // range is inside `mem`; the kernel wrote it before posting the CQE and
        // does not touch it again until we provide it back, which needs `&mut self`.
        unsafe {
            std::slice::from_raw_parts(self.mem.as_ptr().add(usize::from(bid) * self.buf_len), len)
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: allocated in `new` with these layouts; the ring that used them
        // has handed back every buffer (UringIo::drop) or we leak instead.
        unsafe {
            alloc::dealloc(self.ring.as_ptr().cast(), self.ring_layout);
            alloc::dealloc(self.mem.as_ptr(), self.mem_layout);
        }
    }
}

fn recv_user_data(index: u32, gen: u32) -> u64 {
    (KIND_RECV << KIND_SHIFT) | (u64::from(gen & GEN_MASK) << 32) | u64::from(index)
}

/// Errors of a waiting `io_uring_enter` that only mean "nothing more now".
fn benign_enter_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
    )
}

/// A ring with the cheapest task-work mode the kernel offers.
fn build_ring(entries: u32) -> io::Result<IoUring> {
    let cq = entries.saturating_mul(8);
    // Deferred task work (6.1): completions run only when we enter the ring, on
    // this thread, with no inter-processor interrupts.
    if let Ok(ring) = IoUring::builder()
        .setup_cqsize(cq)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
    {
        return Ok(ring);
    }
    if let Ok(ring) = IoUring::builder()
        .setup_cqsize(cq)
        .setup_coop_taskrun()
        .build(entries)
    {
        return Ok(ring);
    }
    IoUring::builder().setup_cqsize(cq).build(entries)
}

fn nofile_limit() -> u32 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a live struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    u32::try_from(lim.rlim_cur).unwrap_or(u32::MAX)
}

fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut uts: libc::utsname = unsafe { mem::zeroed() };
    // SAFETY: uname writes into a live utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    let release: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let release = String::from_utf8_lossy(&release);
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn probe_uncached() -> Result<(), String> {
    // On a thread of its own: tearing a ring down queues task work, with a
    // notification signal, on the thread that created it, which interrupts
    // (EINTR) whatever blocking call that thread is in at the time. The probe
    // thread is gone by then; the caller's thread is never disturbed.
    let result = std::thread::Builder::new()
        .name("tern-uring-probe".to_owned())
        .spawn(probe_kernel)
        .map_err(|e| format!("cannot start the probe thread: {e}"))?
        .join()
        .unwrap_or_else(|_| Err("the io_uring probe panicked".to_owned()));
    match &result {
        Ok(()) => tracing::debug!("probed io_uring: usable"),
        Err(reason) => tracing::debug!(%reason, "probed io_uring: unusable"),
    }
    result
}

fn probe_kernel() -> Result<(), String> {
    match kernel_version() {
        Some(v) if v >= (6, 0) => {}
        Some((major, minor)) => {
            return Err(format!(
                "kernel {major}.{minor} lacks multishot recvmsg (needs 6.0)"
            ))
        }
        None => return Err("cannot read the kernel version".to_owned()),
    }
    let config = UringConfig::default();
    // What this back end asks the kernel to pin: the provided-buffer ring.
    let pinned =
        (usize::from(config.buffers) * size_of::<BufRingEntry>()).max(4096) as libc::rlim_t;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into a live struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0
        && lim.rlim_cur != libc::RLIM_INFINITY
        && lim.rlim_cur < pinned
    {
        return Err(format!(
            "RLIMIT_MEMLOCK is {} bytes, the provided-buffer ring pins {pinned}",
            lim.rlim_cur
        ));
    }
    let ring = IoUring::new(8).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => "io_uring_setup not implemented (ENOSYS)".to_owned(),
        Some(libc::EPERM) => {
            "io_uring_setup refused (EPERM: kernel.io_uring_disabled or seccomp)".to_owned()
        }
        Some(libc::ENOMEM) => format!("io_uring_setup: {e} (RLIMIT_MEMLOCK too small?)"),
        _ => format!("io_uring_setup: {e}"),
    })?;
    if !ring.params().is_feature_ext_arg() {
        return Err("no IORING_FEAT_EXT_ARG (timed waits)".to_owned());
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE: {e}"))?;
    let needed = [
        (opcode::RecvMsg::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::ProvideBuffers::CODE, "PROVIDE_BUFFERS"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::Read::CODE, "READ"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(code, _)| !probe.is_supported(*code))
        .map(|&(_, name)| name)
        .collect();
    if !missing.is_empty() {
        return Err(format!("opcodes not supported: {}", missing.join(", ")));
    }
    // The provided-buffer ring itself (IORING_REGISTER_PBUF_RING, 5.19).
    let bufs = BufRing::new(8, 64).map_err(|e| e.to_string())?;
    // SAFETY: the ring memory is page aligned, 8 entries long, and outlives its
    // registration: unregistered below, before `bufs` drops.
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(bufs.ring.as_ptr() as u64, 8, BGID, 0)
    }
    .map_err(|e| format!("IORING_REGISTER_PBUF_RING: {e}"))?;
    let _ring_closes_anyway = ring.submitter().unregister_buf_ring(BGID);
    drop(ring);
    drop(bufs);
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod stream_tests;
