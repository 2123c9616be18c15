//! The AF_XDP load harness (`--harness-io xsk`, netns topology, `xdp`
//! feature): the generator transmits through an AF_XDP socket on the client
//! namespace's veth, and the sink receives through one on the peer
//! namespace's veth, behind tern's XDP program redirecting the peer sockets'
//! ports into it.
//!
//! Why: with kernel sockets on both sides the harness's own UDP send and
//! receive paths (and the wake-ups of its receiver) are most of the
//! machine's CPU per relayed packet, the same for every target, so the
//! machine-wide figure says little about the relay. Packet generators built
//! for measuring forwarders (pktgen, TRex, MoonGen) bypass the stack for the
//! same reason. The relay sees ordinary Ethernet/IPv4/UDP frames with
//! correct checksums from the flows' own addresses, so every target (tern
//! on any back end, coturn, the null relay) is measured the same way.
//!
//! Both ends reuse tern's own pieces: `tern_io::xsk::XdpIo` (which sends a
//! registered socket's datagrams as frames it builds, and hands received
//! frames out as that socket's datagrams) and `tern_xdp::Filter` (its relay
//! range set to the peer sockets' ports, redirecting into the XSK). One XSK
//! per side on queue 0: one sender thread, one receiver thread.
//!
//! Owns nothing beyond one window: both XSKs and the XDP attachment are
//! made by the threads that use them and gone when they end.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tern_io::xsk::{XdpConfig, XdpIo};
use tern_io::{PacketIo, RecvBatch, SocketId};
use tern_xdp::{AttachMode, Filter, FilterConfig};

use crate::load::{Flow, Transmit, XskSides};
use crate::payload::monotonic_ns;
use crate::{Error, Result};

/// Frames queued in the TX ring before the sender kicks the kernel (copy
/// mode transmits at most 32 per kick; the XSK kicks as often as needed).
const KICK_EVERY: usize = 64;

/// How often the sink looks at its RX ring (see [`XskRx::run`]).
pub(crate) const SINK_POLL: Duration = Duration::from_micros(100);

/// The sender's AF_XDP transmit path, made inside the client namespace.
pub(crate) struct XskTx<'f> {
    io: XdpIo,
    ids: Vec<SocketId>,
    to: Vec<SocketAddr>,
    flows: Vec<&'f Flow>,
    buf: Vec<u8>,
    queued: usize,
    unkicked: usize,
}

impl<'f> XskTx<'f> {
    /// Join the client namespace (this thread only) and open an XSK on its
    /// veth with `flows`' sockets registered.
    pub(crate) fn open(sides: &XskSides, flows: &[&'f Flow]) -> Result<XskTx<'f>> {
        enter(&sides.client_netns)?;
        let mut io = XdpIo::new(XdpConfig::new(&sides.client_if, 0))
            .map_err(|e| Error(format!("AF_XDP on {}: {e}", sides.client_if)))?;
        let mut ids = Vec::with_capacity(flows.len());
        let mut to = Vec::with_capacity(flows.len());
        for f in flows {
            to.push(f.sock.peer_addr()?);
            ids.push(io.add_socket(f.sock.try_clone()?)?);
        }
        Ok(XskTx {
            io,
            ids,
            to,
            flows: flows.to_vec(),
            buf: vec![0; 2048],
            queued: 0,
            unkicked: 0,
        })
    }
}

impl XskTx<'_> {
    /// (frames through the XSK, datagrams through the kernel) so far.
    pub(crate) fn counts(&mut self) -> (u64, u64) {
        self.idle();
        let x = self.io.xdp_stats();
        (
            x.tx_xsk,
            x.tx_kernel_ring_full + x.tx_kernel_unresolved + x.tx_kernel_other,
        )
    }
}

impl Transmit for XskTx<'_> {
    fn push(&mut self, k: usize, len: usize, fill: impl FnOnce(&mut [u8])) {
        let len = len.min(self.buf.len());
        fill(&mut self.buf[..len]);
        self.io.send(self.ids[k], self.to[k], &self.buf[..len]);
        self.queued += 1;
    }

    fn flush(&mut self, _k: usize) -> (usize, usize) {
        let n = std::mem::take(&mut self.queued);
        self.unkicked += n;
        if self.unkicked >= KICK_EVERY {
            self.idle();
        }
        (n, 0)
    }

    fn idle(&mut self) {
        self.io.flush();
        self.unkicked = 0;
    }
}

impl Drop for XskTx<'_> {
    fn drop(&mut self) {
        self.idle();
        // The registered clones share the sockets' file descriptions, whose
        // O_NONBLOCK the XSK path set; the harness uses them blocking.
        for f in &self.flows {
            let _restore_is_best_effort = f.sock.set_nonblocking(false);
        }
    }
}

/// The sink's AF_XDP receive path, made inside the peer namespace: tern's
/// XDP program on the peer veth redirects the peer sockets' port range
/// into an XSK on queue 0.
pub(crate) struct XskRx {
    io: XdpIo,
    // Detaches when dropped, after the XSK stops being fed.
    _attachment: tern_xdp::Attachment,
    _filter: Filter,
    batch: RecvBatch,
    restore: Vec<UdpSocket>,
}

impl XskRx {
    /// Join the peer namespace (this thread only), attach the program to
    /// its veth and open the XSK with `peers` registered.
    pub(crate) fn open(sides: &XskSides, peers: &[UdpSocket]) -> Result<XskRx> {
        enter(&sides.peer_netns)?;
        let ports: Vec<u16> = peers
            .iter()
            .map(|s| s.local_addr().map(|a| a.port()))
            .collect::<std::io::Result<_>>()?;
        let (lo, hi) = (
            ports.iter().copied().min().unwrap_or(0),
            ports.iter().copied().max().unwrap_or(0),
        );
        let filter = Filter::load(&FilterConfig {
            relay_ports: Some(lo..=hi),
            redirect_relay: true,
            ..FilterConfig::default()
        })
        .map_err(|e| Error(format!("XDP program for the sink: {e}")))?;
        // Datagrams a relay sent through the kernel cross the veth with the
        // UDP checksum left for offload (unfinished): not the sink's to judge.
        let mut config = XdpConfig::new(&sides.peer_if, 0);
        config.verify_checksums = false;
        let mut io =
            XdpIo::new(config).map_err(|e| Error(format!("AF_XDP on {}: {e}", sides.peer_if)))?;
        let mut restore = Vec::with_capacity(peers.len());
        for s in peers {
            io.add_socket(s.try_clone()?)?;
            restore.push(s.try_clone()?);
        }
        filter
            .register_xsk(io.queue(), io.xsk_fd())
            .map_err(|e| Error(format!("XSK map: {e}")))?;
        let attachment = filter
            .attach(&sides.peer_if, AttachMode::Auto)
            .map_err(|e| Error(format!("attach to {}: {e}", sides.peer_if)))?;
        Ok(XskRx {
            io,
            _attachment: attachment,
            _filter: filter,
            batch: RecvBatch::new(64, 2048, 0, 0),
            restore,
        })
    }

    /// Receive until `stop`, handing each datagram and its arrival time to
    /// `on`, which says whether it was a fresh probe of this window.
    ///
    /// The sink polls its rings every [`SINK_POLL`] instead of sleeping on
    /// the socket: a sleeping reader is woken by whoever delivers the frame
    /// (the relay, through the veth), and that wake-up (a cross-core IPI,
    /// about 20 µs here) would be charged to the relay. Latency figures
    /// include up to one poll interval of waiting.
    pub(crate) fn run(
        &mut self,
        received_total: &AtomicU64,
        stop: &AtomicBool,
        mut on: impl FnMut(&[u8], u64) -> bool,
    ) {
        let hard_end = monotonic_ns() + 3_600_000_000_000;
        while !stop.load(Ordering::Relaxed) && monotonic_ns() < hard_end {
            // A zero timeout only collects the kernel sockets' readiness.
            if self.io.wait(Some(Duration::ZERO)).is_err() {
                break;
            }
            while self.io.recv(&mut self.batch) > 0 {
                let now = monotonic_ns();
                let fresh = self.batch.iter().filter(|(_, data)| on(data, now)).count();
                received_total.fetch_add(fresh as u64, Ordering::Relaxed);
            }
            std::thread::sleep(SINK_POLL);
        }
    }
}

impl XskRx {
    /// (datagrams through the XSK, through the peer sockets) so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let x = self.io.xdp_stats();
        (x.rx_xsk, x.rx_kernel)
    }
}

impl Drop for XskRx {
    fn drop(&mut self) {
        // As for the sender: the peer sockets are used blocking elsewhere.
        for s in &self.restore {
            let _restore_is_best_effort = s.set_nonblocking(false);
        }
    }
}

fn enter(netns: &std::path::Path) -> Result<()> {
    let f = File::open(netns).map_err(|e| Error(format!("{}: {e}", netns.display())))?;
    crate::netns::setns_fd(&f).map_err(|e| Error(format!("setns {}: {e}", netns.display())))
}
