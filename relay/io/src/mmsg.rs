//! The portable back end: epoll readiness (through mio, edge-triggered),
//! `recvmmsg` into the caller's [`RecvBatch`], and `sendmmsg` from a send
//! arena, with runs of same-destination, same-size datagrams folded into one
//! UDP GSO message where the kernel accepts it.
//!
//! Ready sockets wait in a FIFO. A receive takes the front socket and reads
//! one batch from it; a socket that filled the batch goes to the back of the
//! FIFO (it may hold more), one that gave less is drained (edge-triggered
//! epoll reports it again when the next datagram arrives). So one busy socket
//! cannot starve the others, and a caller that stops after its budget loses
//! nothing.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::batch::{RecvBatch, RecvMeta};
use crate::gso::{self, CmsgBuf, TxEntry};
use crate::sockaddr;
use crate::{BackendKind, IoStats, PacketIo, SocketId, Wake, MAX_BATCH, MAX_UDP_PAYLOAD};

const WAKE_TOKEN: Token = Token(usize::MAX);
/// The descriptor given to [`PacketIo::watch`].
const WATCH_TOKEN: Token = Token(usize::MAX - 1);
/// Descriptors a back end built on this one registers (AF_XDP sockets): they
/// only end the wait; the owner looks at them itself.
const INNER_TOKEN: Token = Token(usize::MAX - 2);

/// Tuning of an [`MmsgIo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmsgConfig {
    /// Use UDP GSO when the kernel supports it.
    pub gso: bool,
    /// Datagrams the send queue holds before it flushes by itself.
    pub send_queue: usize,
    /// Bytes the send arena holds before it flushes by itself (at least 64 KiB).
    pub send_arena: usize,
    /// Readiness events taken from epoll per wait.
    pub events: usize,
}

impl Default for MmsgConfig {
    fn default() -> Self {
        Self {
            gso: true,
            send_queue: 256,
            send_arena: 512 << 10,
            events: 1024,
        }
    }
}

/// The `recvmmsg`/`sendmmsg` back end of one worker. See the module docs.
pub struct MmsgIo {
    poll: Poll,
    events: Events,
    waker: Arc<MioWake>,
    sockets: Vec<Option<Slot>>,
    free: Vec<u32>,
    ready: VecDeque<SocketId>,
    gso: bool,
    stats: IoStats,
    rx: RxScratch,
    tx: TxQueue,
    /// The watched descriptor (nested in this epoll, edge-triggered) and
    /// whether it signalled since the caller last asked.
    watched: Option<RawFd>,
    watch_ready: bool,
}

struct Slot {
    socket: UdpSocket,
    local: SocketAddr,
    queued: bool,
}

/// The kernel-facing arrays of one `recvmmsg`, rebuilt (pointers only) per call.
struct RxScratch {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
}

/// Queued datagrams and the kernel-facing arrays of one `sendmmsg`.
struct TxQueue {
    entries: Vec<TxEntry>,
    arena: Vec<u8>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<CmsgBuf>,
    /// For message k of the batch being sent: the entries it carries, `start..end`.
    spans: Vec<(usize, usize)>,
}

struct MioWake(Waker);

impl Wake for MioWake {
    fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}

impl MmsgIo {
    /// For back ends built on this one (AF_XDP): make [`PacketIo::wait`]
    /// also return when `fd` becomes readable (edge-triggered; the caller
    /// drains it). The event itself is not reported.
    pub(crate) fn watch_fd(&self, fd: RawFd) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), INNER_TOKEN, Interest::READABLE)
    }

    /// A back end with its own epoll instance and preallocated buffers.
    pub fn new(config: MmsgConfig) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(MioWake(Waker::new(poll.registry(), WAKE_TOKEN)?));
        let gso = config.gso && gso::gso_supported();
        let send_queue = config.send_queue.max(1);
        Ok(Self {
            poll,
            events: Events::with_capacity(config.events.max(16)),
            waker,
            sockets: Vec::new(),
            free: Vec::new(),
            ready: VecDeque::new(),
            watched: None,
            watch_ready: false,
            gso,
            stats: IoStats::default(),
            rx: RxScratch {
                hdrs: (0..MAX_BATCH).map(|_| zeroed_mmsghdr()).collect(),
                iovs: (0..MAX_BATCH).map(|_| empty_iovec()).collect(),
                names: (0..MAX_BATCH).map(|_| sockaddr::zeroed()).collect(),
            },
            tx: TxQueue {
                entries: Vec::with_capacity(send_queue),
                arena: Vec::with_capacity(config.send_arena.max(MAX_UDP_PAYLOAD + 1)),
                hdrs: (0..MAX_BATCH).map(|_| zeroed_mmsghdr()).collect(),
                iovs: (0..MAX_BATCH).map(|_| empty_iovec()).collect(),
                names: (0..MAX_BATCH).map(|_| sockaddr::zeroed()).collect(),
                cmsgs: vec![CmsgBuf([0; 32]); MAX_BATCH],
                spans: Vec::with_capacity(MAX_BATCH),
            },
        })
    }

    /// Whether sends currently use UDP GSO (false when unsupported, disabled by
    /// configuration, or turned off after the kernel refused it).
    pub fn gso_enabled(&self) -> bool {
        self.gso
    }

    fn fd(&self, id: SocketId) -> Option<RawFd> {
        self.sockets
            .get(id.index())?
            .as_ref()
            .map(|s| s.socket.as_raw_fd())
    }

    fn enqueue(&mut self, id: SocketId) {
        enqueue(&mut self.sockets, &mut self.ready, id);
    }

    /// One `recvmmsg` on `id` into `batch` (appending). Returns whether the
    /// socket filled every slot it was offered (so it may hold more).
    fn recv_from_socket(&mut self, id: SocketId, fd: RawFd, batch: &mut RecvBatch) -> bool {
        let first = batch.len();
        let want = batch.capacity() - first;
        if want == 0 {
            return true;
        }
        let rx = &mut self.rx;
        for k in 0..want {
            let (base, len) = batch.recv_area(first + k);
            rx.iovs[k] = libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            };
            let hdr = &mut rx.hdrs[k];
            *hdr = zeroed_mmsghdr();
            hdr.msg_hdr.msg_name = (&mut rx.names[k] as *mut libc::sockaddr_storage).cast();
            hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as _;
            hdr.msg_hdr.msg_iov = &mut rx.iovs[k];
            hdr.msg_hdr.msg_iovlen = 1;
        }
        let rc = loop {
            // SAFETY: hdrs[..want] are initialised mmsghdrs whose name and iovec
            // pointers refer to live storage in `rx` and to `want` distinct receive
            // areas of `batch`, all valid for the duration of the call.
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    rx.hdrs.as_mut_ptr(),
                    want as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return false,
                _ => {
                    self.stats.rx_errors += 1;
                    tracing::trace!(error = %err, "recvmmsg failed");
                    return false;
                }
            }
        };
        self.stats.rx_batches += 1;
        for k in 0..rc {
            let hdr = &rx.hdrs[k].msg_hdr;
            if hdr.msg_flags & libc::MSG_TRUNC != 0 {
                self.stats.rx_truncated += 1;
                continue;
            }
            let Some(source) = sockaddr::read(&rx.names[k], hdr.msg_namelen) else {
                self.stats.rx_errors += 1;
                continue;
            };
            let len = rx.hdrs[k].msg_len as usize;
            let to = batch.len();
            if to != first + k {
                // An earlier datagram of this call was dropped: close the gap so
                // slots stay in order. Rare (truncation), so the copy is fine.
                batch.move_payload(first + k, to, len);
            }
            batch.push(RecvMeta {
                socket: id,
                source,
                len,
            });
            self.stats.rx_datagrams += 1;
            self.stats.rx_bytes += len as u64;
        }
        rc == want
    }

    /// Send queued datagrams. See [`PacketIo::flush`].
    fn flush_queue(&mut self) {
        let mut cursor = 0;
        // Entries before this index are sent one per message (after EMSGSIZE on GSO).
        let mut single_until = 0;
        while cursor < self.tx.entries.len() {
            let from = self.tx.entries[cursor].from;
            let Some(fd) = self.fd(from) else {
                // The socket was removed after the datagram was queued.
                self.stats.tx_errors += 1;
                cursor += 1;
                continue;
            };
            let count = self.build_messages(cursor, single_until);
            let tx = &mut self.tx;
            // SAFETY: hdrs[..count] are initialised by build_messages; their name,
            // iovec and control pointers refer to live storage in `tx` (names, iovs,
            // cmsgs, arena), none of which is resized before the call returns.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    tx.hdrs.as_mut_ptr(),
                    count as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            self.stats.tx_syscalls += 1;
            if rc > 0 {
                let sent = rc as usize;
                for &(start, end) in &tx.spans[..sent] {
                    self.stats.tx_datagrams += (end - start) as u64;
                    self.stats.tx_bytes += tx.entries[start..end]
                        .iter()
                        .map(|e| e.len as u64)
                        .sum::<u64>();
                    if end - start > 1 {
                        self.stats.tx_gso_messages += 1;
                    }
                }
                cursor = tx.spans[sent - 1].1;
                continue;
            }
            let err = io::Error::last_os_error();
            let (start, end) = tx.spans[0];
            let segments = end - start;
            match err.raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                    self.stats.tx_would_block += segments as u64;
                    cursor = end;
                }
                Some(libc::EIO) | Some(libc::EINVAL) if segments > 1 => {
                    // The kernel or the device will not segment for us: stop asking.
                    self.gso = false;
                    self.stats.gso_fallbacks += 1;
                    tracing::warn!(error = %err, "UDP GSO refused by the kernel; sending one datagram per message from now on");
                }
                Some(libc::EMSGSIZE) if segments > 1 => {
                    // Segments larger than the path MTU allows: send this run singly.
                    single_until = end;
                }
                _ => {
                    self.stats.tx_errors += segments as u64;
                    tracing::trace!(error = %err, "sendmmsg failed");
                    cursor = end;
                }
            }
        }
        self.tx.entries.clear();
        self.tx.arena.clear();
    }

    /// Fill tx.hdrs with messages for the run of entries from `cursor` that share
    /// its socket (at most MAX_BATCH messages). Returns how many.
    fn build_messages(&mut self, cursor: usize, single_until: usize) -> usize {
        let gso_on = self.gso;
        let tx = &mut self.tx;
        let from = tx.entries[cursor].from;
        tx.spans.clear();
        let mut i = cursor;
        let mut m = 0;
        while m < MAX_BATCH && i < tx.entries.len() && tx.entries[i].from == from {
            let first = &tx.entries[i];
            let seg = first.len;
            let (j, total) = gso::run(&tx.entries, i, gso_on && i >= single_until);
            tx.iovs[m] = libc::iovec {
                iov_base: tx.arena[first.off..].as_mut_ptr().cast(),
                iov_len: total,
            };
            let namelen = sockaddr::write(first.to, &mut tx.names[m]);
            let hdr = &mut tx.hdrs[m];
            *hdr = zeroed_mmsghdr();
            hdr.msg_hdr.msg_name = (&mut tx.names[m] as *mut libc::sockaddr_storage).cast();
            hdr.msg_hdr.msg_namelen = namelen;
            hdr.msg_hdr.msg_iov = &mut tx.iovs[m];
            hdr.msg_hdr.msg_iovlen = 1;
            if j - i > 1 {
                // seg <= MAX_UDP_PAYLOAD (checked in send), so it fits a u16.
                gso::set_segment_size(&mut hdr.msg_hdr, &mut tx.cmsgs[m], seg as u16);
            }
            tx.spans.push((i, j));
            m += 1;
            i = j;
        }
        m
    }
}

impl PacketIo for MmsgIo {
    fn kind(&self) -> BackendKind {
        BackendKind::Mmsg
    }

    fn add_socket(&mut self, socket: UdpSocket) -> io::Result<SocketId> {
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.sockets.len())
                    .map_err(|_| io::Error::other("too many sockets"))?;
                self.sockets.push(None);
                i
            }
        };
        let id = SocketId(index);
        let fd = socket.as_raw_fd();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), Token(id.index()), Interest::READABLE)
        {
            self.free.push(index);
            return Err(e);
        }
        self.sockets[id.index()] = Some(Slot {
            socket,
            local,
            queued: false,
        });
        if self.ready.capacity() < self.sockets.len() {
            self.ready.reserve(self.sockets.len() - self.ready.len());
        }
        // It may already hold datagrams (a reserved socket handed over).
        self.enqueue(id);
        Ok(id)
    }

    fn remove_socket(&mut self, id: SocketId) -> io::Result<UdpSocket> {
        let slot = self
            .sockets
            .get_mut(id.index())
            .and_then(Option::take)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such socket"))?;
        self.free.push(id.0);
        if slot.queued {
            self.ready.retain(|&r| r != id);
        }
        // Datagrams queued for the old socket must not leave from a new one that
        // reuses the id.
        if self.tx.entries.iter().any(|e| e.from == id) {
            self.flush_queue();
        }
        let fd = slot.socket.as_raw_fd();
        self.poll.registry().deregister(&mut SourceFd(&fd))?;
        Ok(slot.socket)
    }

    fn local_addr(&self, id: SocketId) -> Option<SocketAddr> {
        self.sockets.get(id.index())?.as_ref().map(|s| s.local)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = if self.ready.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for event in self.events.iter() {
            if event.token() == WAKE_TOKEN || event.token() == INNER_TOKEN {
                continue;
            }
            if event.token() == WATCH_TOKEN {
                self.watch_ready = true;
                continue;
            }
            if let Ok(index) = u32::try_from(event.token().0) {
                enqueue(&mut self.sockets, &mut self.ready, SocketId(index));
            }
        }
        Ok(())
    }

    fn recv(&mut self, batch: &mut RecvBatch) -> usize {
        batch.clear();
        while let Some(id) = self.ready.pop_front() {
            let Some(Some(slot)) = self.sockets.get_mut(id.index()) else {
                continue;
            };
            slot.queued = false;
            let fd = slot.socket.as_raw_fd();
            let more = self.recv_from_socket(id, fd, batch);
            if more {
                self.enqueue(id);
            }
            if !batch.is_empty() {
                break;
            }
        }
        batch.len()
    }

    fn has_pending(&self) -> bool {
        !self.ready.is_empty()
    }

    fn send(&mut self, from: SocketId, to: SocketAddr, payload: &[u8]) {
        if payload.len() > MAX_UDP_PAYLOAD {
            self.stats.tx_oversize += 1;
            return;
        }
        if self.tx.entries.len() == self.tx.entries.capacity()
            || self.tx.arena.len() + payload.len() > self.tx.arena.capacity()
        {
            self.flush_queue();
        }
        let off = self.tx.arena.len();
        // Within capacity (checked above): no allocation.
        self.tx.arena.extend_from_slice(payload);
        self.tx.entries.push(TxEntry {
            from,
            to,
            off,
            len: payload.len(),
        });
    }

    fn flush(&mut self) {
        if !self.tx.entries.is_empty() {
            self.flush_queue();
        }
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    fn watch(&mut self, fd: RawFd) -> io::Result<()> {
        if self.watched.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "this back end already watches a descriptor",
            ));
        }
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), WATCH_TOKEN, Interest::READABLE)?;
        self.watched = Some(fd);
        Ok(())
    }

    fn take_watch_ready(&mut self) -> bool {
        mem::take(&mut self.watch_ready)
    }

    fn stats(&self) -> &IoStats {
        &self.stats
    }
}

/// Mark `id` as possibly readable.
fn enqueue(sockets: &mut [Option<Slot>], ready: &mut VecDeque<SocketId>, id: SocketId) {
    if let Some(Some(slot)) = sockets.get_mut(id.index()) {
        if !slot.queued {
            slot.queued = true;
            // Never allocates: `ready` has room for every socket, and a socket
            // is in it at most once (the `queued` flag).
            ready.push_back(id);
        }
    }
}

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is plain old data; all-zero (null pointers, zero lengths) is valid.
    unsafe { mem::zeroed() }
}

fn empty_iovec() -> libc::iovec {
    libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    }
}
