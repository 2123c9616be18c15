//! [`XdpIo`], the AF_XDP back end of one worker: one [`Xsk`] per interface
//! on the worker's queue for the fast path (a relay may face clients on one
//! interface and peers on another), and an [`MmsgIo`] holding the worker's
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
//! Owns the XSKs and the socket table; does not own the XDP program or its
//! XSK map: the caller registers each of [`XdpIo::xsks`] for [`XdpIo::queue`].

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
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
    /// The interfaces whose queue `queue` gets an AF_XDP socket.
    pub interfaces: Vec<String>,
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
        XdpConfig::on(&[ifname], queue)
    }

    /// Defaults for queue `queue` of each of `interfaces`.
    pub fn on(interfaces: &[&str], queue: u32) -> XdpConfig {
        XdpConfig {
            interfaces: interfaces.iter().map(|s| (*s).to_owned()).collect(),
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
    ports: Vec<Port>,
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

/// One interface's socket and addresses.
struct Port {
    xsk: Xsk,
    ifindex: u32,
    mac: [u8; 6],
}

impl std::fmt::Debug for XdpIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpIo")
            .field(
                "xsks",
                &self.ports.iter().map(|p| &p.xsk).collect::<Vec<_>>(),
            )
            .field("xdp", &self.xdp)
            .finish_non_exhaustive()
    }
}

impl XdpIo {
    /// Open an XSK on queue `config.queue` of every interface in
    /// `config.interfaces`, and the kernel-path back end.
    pub fn new(config: XdpConfig) -> io::Result<XdpIo> {
        if config.interfaces.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no interface for AF_XDP",
            ));
        }
        let inner = MmsgIo::new(config.mmsg)?;
        let mut ports = Vec::with_capacity(config.interfaces.len());
        for ifname in &config.interfaces {
            let xsk = Xsk::open(ifname, config.queue, config.xsk)?;
            inner.watch_fd(xsk.fd().as_raw_fd())?;
            let c = std::ffi::CString::new(ifname.as_str())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: NUL-terminated string outliving the call.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            ports.push(Port {
                xsk,
                ifindex,
                mac: interface_mac(ifname)?,
            });
        }
        let ifindexes = ports.iter().map(|p| p.ifindex).collect();
        Ok(XdpIo {
            inner,
            hops: NextHops::new(ifindexes, config.neighbours)?,
            ports,
            by_addr: HashMap::new(),
            by_port: HashMap::new(),
            verify: config.verify_checksums,
            now: Instant::now(),
            xdp: XdpIoStats::default(),
            own: IoStats::default(),
            stats: IoStats::default(),
        })
    }

    /// The first interface's XSK, to register in the XDP program's map for
    /// [`XdpIo::queue`].
    pub fn xsk_fd(&self) -> BorrowedFd<'_> {
        self.ports[0].xsk.fd()
    }

    /// Every XSK with its interface index, to register in the XDP
    /// program's map (`tern_xdp::Filter::register_xsk_on`).
    pub fn xsks(&self) -> impl Iterator<Item = (u32, BorrowedFd<'_>)> + '_ {
        self.ports.iter().map(|p| (p.ifindex, p.xsk.fd()))
    }

    /// The queue the XSKs are bound to.
    pub fn queue(&self) -> u32 {
        self.ports[0].xsk.queue()
    }

    /// Zero-copy or copy mode (of the first interface's XSK).
    pub fn mode(&self) -> XskMode {
        self.ports[0].xsk.mode()
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
        let verify = self.verify;
        let (by_addr, by_port) = (&self.by_addr, &self.by_port);
        let xdp = &mut self.xdp;
        let stats = &mut self.own;
        for port in &mut self.ports {
            let cap = (batch.capacity() - batch.len()) as u32;
            if cap == 0 {
                break;
            }
            port.xsk.recv(cap, |f| {
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
        }
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
        let timeout = if self.ports.iter().any(|p| p.xsk.rx_ready()) {
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
        self.ports.iter().any(|p| p.xsk.rx_ready()) || self.inner.has_pending()
    }

    // Stream sockets (TCP/TLS clients) stay on the kernel path: the inner
    // back end's epoll watches them beside the XSKs.
    fn watch(&mut self, fd: RawFd) -> io::Result<()> {
        self.inner.watch(fd)
    }

    fn take_watch_ready(&mut self) -> bool {
        self.inner.take_watch_ready()
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
        let Some((oif, dst_mac)) = self.hops.lookup(to.ip(), self.now) else {
            self.xdp.tx_kernel_unresolved += 1;
            return self.send_kernel(from, to, payload);
        };
        let Some(port) = self.ports.iter_mut().find(|p| p.ifindex == oif) else {
            self.xdp.tx_kernel_other += 1;
            return self.send_kernel(from, to, payload);
        };
        let macs = MacPair {
            src: port.mac,
            dst: dst_mac,
        };
        let hl = frame::headers_len(local.ip());
        let sent = port.xsk.send(|buf| {
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
        for port in &mut self.ports {
            let before = port.xsk.stats().tx_kicks;
            port.xsk.flush();
            self.own.tx_syscalls += port.xsk.stats().tx_kicks - before;
        }
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
