//! [`XdpIo`], the AF_XDP back end of one worker: one [`Xsk`] on one
//! interface queue for the fast path, and an [`MmsgIo`] holding the worker's
//! UDP sockets for everything else.
//!
//! The sockets stay bound (they reserve the ports, and receive what the XDP
//! program passes up the stack: other queues, fragments, traffic before the
//! XSK is registered). Received frames whose destination is a registered
//! socket's address are handed out as that socket's datagrams (source from
//! the frame, UDP checksum verified: XDP runs before the kernel checks
//! anything). Sends from a socket bound to a specific address go out as
//! frames the relay builds, to the next hop's MAC from [`NextHops`]; when
//! the next hop is not resolved yet, the TX ring is full, or the socket is
//! bound to a wildcard, the datagram goes through the kernel instead (which
//! also resolves the neighbour), and that is counted.
//!
//! Owns the XSK and the socket table; does not own the XDP program or its
//! XSK map: the caller registers [`XdpIo::xsk_fd`] for [`XdpIo::queue`].

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::frame::{self, MacPair};
use super::neigh::{interface_mac, NextHops};
use super::{Xsk, XskConfig, XskMode};
use crate::{
    BackendKind, IoStats, MmsgConfig, MmsgIo, PacketIo, RecvBatch, RecvMeta, SocketId, Wake,
};

/// How to build an [`XdpIo`].
#[derive(Clone, Debug)]
pub struct XdpConfig {
    /// The interface whose queue the socket binds.
    pub ifname: String,
    /// The queue.
    pub queue: u32,
    /// UMEM and ring sizes.
    pub xsk: XskConfig,
    /// The kernel-path back end's settings.
    pub mmsg: MmsgConfig,
    /// Drop received datagrams whose UDP checksum is wrong (XDP sees frames
    /// before the kernel verifies them).
    pub verify_checksums: bool,
    /// Destinations whose next hop is cached.
    pub neighbours: usize,
}

impl XdpConfig {
    /// Defaults for `ifname` queue `queue`.
    pub fn new(ifname: &str, queue: u32) -> XdpConfig {
        XdpConfig {
            ifname: ifname.to_owned(),
            queue,
            xsk: XskConfig::default(),
            mmsg: MmsgConfig::default(),
            verify_checksums: true,
            neighbours: 65_536,
        }
    }
}

/// What went which way, beyond [`IoStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpIoStats {
    /// Datagrams received through the XSK.
    pub rx_xsk: u64,
    /// Datagrams received through the sockets (passed up by XDP).
    pub rx_kernel: u64,
    /// Frames dropped: not UDP to a registered socket.
    pub rx_not_ours: u64,
    /// Frames dropped: bad UDP checksum.
    pub rx_bad_checksum: u64,
    /// Datagrams sent as frames through the XSK.
    pub tx_xsk: u64,
    /// Datagrams sent through the kernel: next hop unresolved.
    pub tx_kernel_unresolved: u64,
    /// Datagrams sent through the kernel: TX ring or UMEM full.
    pub tx_kernel_ring_full: u64,
    /// Datagrams sent through the kernel: wildcard-bound socket or family mismatch.
    pub tx_kernel_other: u64,
}

/// The AF_XDP back end of one worker. See the module docs.
pub struct XdpIo {
    inner: MmsgIo,
    xsk: Xsk,
    mac: [u8; 6],
    hops: NextHops,
    by_addr: HashMap<SocketAddr, SocketId>,
    by_port: HashMap<(u16, bool), SocketId>,
    verify: bool,
    now: Instant,
    xdp: XdpIoStats,
    /// This back end's own counters (the XSK path).
    own: IoStats,
    /// `own` plus the kernel path's, refreshed every recv and flush.
    stats: IoStats,
}

impl std::fmt::Debug for XdpIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpIo")
            .field("xsk", &self.xsk)
            .field("xdp", &self.xdp)
            .finish_non_exhaustive()
    }
}

impl XdpIo {
    /// Open the XSK on `config.ifname` queue `config.queue` and the
    /// kernel-path back end.
    pub fn new(config: XdpConfig) -> io::Result<XdpIo> {
        let inner = MmsgIo::new(config.mmsg)?;
        let xsk = Xsk::open(&config.ifname, config.queue, config.xsk)?;
        inner.watch_fd(xsk.fd().as_raw_fd())?;
        let ifindex = {
            let c = std::ffi::CString::new(config.ifname.as_str())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: NUL-terminated string outliving the call.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        };
        Ok(XdpIo {
            inner,
            mac: interface_mac(&config.ifname)?,
            hops: NextHops::new(ifindex, config.neighbours)?,
            xsk,
            by_addr: HashMap::new(),
            by_port: HashMap::new(),
            verify: config.verify_checksums,
            now: Instant::now(),
            xdp: XdpIoStats::default(),
            own: IoStats::default(),
            stats: IoStats::default(),
        })
    }

    /// The XSK, to register in the XDP program's map for [`XdpIo::queue`].
    pub fn xsk_fd(&self) -> BorrowedFd<'_> {
        self.xsk.fd()
    }

    /// The queue the XSK is bound to.
    pub fn queue(&self) -> u32 {
        self.xsk.queue()
    }

    /// Zero-copy or copy mode.
    pub fn mode(&self) -> XskMode {
        self.xsk.mode()
    }

    /// Where datagrams went.
    pub fn xdp_stats(&self) -> XdpIoStats {
        self.xdp
    }

    fn refresh_stats(&mut self) {
        let mut merged = *self.inner.stats();
        merged.merge(&self.own);
        self.stats = merged;
    }

    fn recv_xsk(&mut self, batch: &mut RecvBatch) -> usize {
        let cap = batch.capacity() as u32;
        let verify = self.verify;
        let (by_addr, by_port) = (&self.by_addr, &self.by_port);
        let xdp = &mut self.xdp;
        let stats = &mut self.own;
        self.xsk.recv(cap, |f| {
            let Ok(p) = frame::parse(f) else {
                xdp.rx_not_ours += 1;
                return;
            };
            let Some(id) = by_addr
                .get(&p.dst)
                .or_else(|| by_port.get(&(p.dst.port(), p.dst.is_ipv4())))
                .copied()
            else {
                xdp.rx_not_ours += 1;
                return;
            };
            if verify && !frame::udp_checksum_ok(&p) {
                xdp.rx_bad_checksum += 1;
                return;
            }
            let i = batch.len();
            let (area, room) = batch.recv_area(i);
            if p.payload.len() > room {
                stats.rx_truncated += 1;
                return;
            }
            // SAFETY: `area` is writable for `room` >= payload bytes (recv_area's
            // contract) and cannot overlap the UMEM frame.
            unsafe { std::ptr::copy_nonoverlapping(p.payload.as_ptr(), area, p.payload.len()) };
            batch.push(RecvMeta {
                socket: id,
                source: p.src,
                len: p.payload.len(),
            });
            xdp.rx_xsk += 1;
            stats.rx_datagrams += 1;
            stats.rx_bytes += p.payload.len() as u64;
        });
        if !batch.is_empty() {
            self.own.rx_batches += 1;
        }
        batch.len()
    }

    fn send_kernel(&mut self, from: SocketId, to: SocketAddr, payload: &[u8]) {
        self.inner.send(from, to, payload);
    }
}

impl PacketIo for XdpIo {
    fn kind(&self) -> BackendKind {
        BackendKind::Xdp
    }

    fn add_socket(&mut self, socket: UdpSocket) -> io::Result<SocketId> {
        let id = self.inner.add_socket(socket)?;
        match self.inner.local_addr(id) {
            Some(a) if a.ip().is_unspecified() => {
                self.by_port.insert((a.port(), a.is_ipv4()), id);
            }
            Some(a) => {
                self.by_addr.insert(a, id);
            }
            None => {}
        }
        Ok(id)
    }

    fn remove_socket(&mut self, id: SocketId) -> io::Result<UdpSocket> {
        if let Some(a) = self.inner.local_addr(id) {
            self.by_addr.remove(&a);
            self.by_port.remove(&(a.port(), a.is_ipv4()));
        }
        self.inner.remove_socket(id)
    }

    fn local_addr(&self, id: SocketId) -> Option<SocketAddr> {
        self.inner.local_addr(id)
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = if self.xsk.rx_ready() {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        let r = self.inner.wait(timeout);
        self.now = Instant::now();
        r
    }

    fn recv(&mut self, batch: &mut RecvBatch) -> usize {
        batch.clear();
        self.now = Instant::now();
        if self.recv_xsk(batch) == 0 {
            let n = self.inner.recv(batch);
            self.xdp.rx_kernel += n as u64;
        }
        self.refresh_stats();
        batch.len()
    }

    fn has_pending(&self) -> bool {
        self.xsk.rx_ready() || self.inner.has_pending()
    }

    fn send(&mut self, from: SocketId, to: SocketAddr, payload: &[u8]) {
        let Some(local) = self.inner.local_addr(from) else {
            self.own.tx_errors += 1;
            return;
        };
        if local.ip().is_unspecified() || local.is_ipv4() != to.is_ipv4() {
            self.xdp.tx_kernel_other += 1;
            return self.send_kernel(from, to, payload);
        }
        let Some(dst_mac) = self.hops.lookup(to.ip(), self.now) else {
            self.xdp.tx_kernel_unresolved += 1;
            return self.send_kernel(from, to, payload);
        };
        let macs = MacPair {
            src: self.mac,
            dst: dst_mac,
        };
        let hl = frame::headers_len(local.ip());
        let sent = self.xsk.send(|buf| {
            buf.get_mut(hl..hl + payload.len())?
                .copy_from_slice(payload);
            frame::write_udp_frame(buf, macs, local, to, payload.len()).ok()
        });
        if sent {
            self.xdp.tx_xsk += 1;
            self.own.tx_datagrams += 1;
            self.own.tx_bytes += payload.len() as u64;
        } else {
            self.xdp.tx_kernel_ring_full += 1;
            self.send_kernel(from, to, payload);
        }
    }

    fn flush(&mut self) {
        let before = self.xsk.stats().tx_kicks;
        self.xsk.flush();
        self.own.tx_syscalls += self.xsk.stats().tx_kicks - before;
        self.inner.flush();
        self.refresh_stats();
    }

    fn waker(&self) -> Arc<dyn Wake> {
        self.inner.waker()
    }

    fn stats(&self) -> &IoStats {
        &self.stats
    }
}

/// Whether this kernel and these privileges allow an AF_XDP socket.
pub(crate) fn probe() -> Result<(), String> {
    // SAFETY: plain socket(2); closed at once.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                format!("cannot open an AF_XDP socket ({e}): needs CAP_NET_RAW (and CAP_BPF, CAP_NET_ADMIN for the XDP program)")
            }
            Some(libc::EAFNOSUPPORT) => format!("the kernel has no AF_XDP ({e})"),
            _ => format!("cannot open an AF_XDP socket: {e}"),
        });
    }
    // SAFETY: `fd` is ours and open.
    unsafe { libc::close(fd) };
    Ok(())
}
