//! One AF_XDP socket with its own UMEM, owned directly (no libxdp/xsk-rs):
//! the UMEM area and the four rings are mmap'd from the offsets the kernel
//! reports (`XDP_MMAP_OFFSETS`), registered with `setsockopt`
//! (`XDP_UMEM_REG`, `XDP_*_RING`) and bound to one interface queue
//! (`sockaddr_xdp`), zero-copy where the driver supports it and copy mode
//! otherwise. Rings are driven with acquire/release atomics and no system
//! call per packet: the fill ring is topped up from a free list, received
//! frames are lent to a closure and recycled, sends are queued and one
//! `sendto` kicks the kernel per flush, only when it asks for it
//! (`XDP_RING_NEED_WAKEUP`) or in copy mode.
//!
//! Owns: the socket, the UMEM and the rings. Knows nothing of UDP, TURN or
//! which program redirects into it (`tern_xdp::Filter::register_xsk` does).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// Sizes of one socket's UMEM and rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// Bytes per UMEM frame: 2048 or 4096.
    pub frame_size: u32,
    /// Frames in the UMEM (a power of two, at least twice `ring_size`).
    pub frames: u32,
    /// Entries in each of the four rings (a power of two).
    pub ring_size: u32,
    /// Ask for copy mode even where zero-copy would work.
    pub force_copy: bool,
}

impl Default for XskConfig {
    fn default() -> XskConfig {
        XskConfig {
            frame_size: 2048,
            frames: 4096,
            ring_size: 2048,
            force_copy: false,
        }
    }
}

/// How the kernel moves frames between the driver and the UMEM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XskMode {
    /// The NIC DMAs into the UMEM.
    ZeroCopy,
    /// The kernel copies (every driver; veth only has this).
    Copy,
}

/// Counters of one socket (ours, plus the kernel's `XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames taken from the RX ring.
    pub rx_frames: u64,
    /// Frames put on the TX ring.
    pub tx_frames: u64,
    /// Sends refused because no UMEM frame or TX slot was free.
    pub tx_full: u64,
    /// `sendto` kicks made.
    pub tx_kicks: u64,
    /// Fill-ring wake-ups made (`recvfrom` when the kernel asked).
    pub fill_wakeups: u64,
}

/// An AF_XDP socket bound to one queue of one interface.
pub struct Xsk {
    fd: OwnedFd,
    umem: Mmap,
    frame_size: u32,
    fill: Ring,
    comp: Ring,
    rx: Ring,
    tx: Ring,
    /// UMEM frame addresses owned by userspace and unused.
    free: Vec<u64>,
    /// TX descriptors written but not yet published.
    tx_pending: u32,
    ifindex: u32,
    queue: u32,
    mode: XskMode,
    stats: XskStats,
}

// SAFETY: the mappings and the descriptor belong to this value alone; moving
// it to another thread moves all of them (nothing is shared or aliased).
unsafe impl Send for Xsk {}

impl std::fmt::Debug for Xsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Xsk")
            .field("ifindex", &self.ifindex)
            .field("queue", &self.queue)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Xsk {
    /// Open a socket on `ifname` queue `queue`: zero-copy when the driver
    /// has it (unless `force_copy`), copy mode otherwise. Needs CAP_NET_RAW
    /// (and CAP_IPC_LOCK or enough RLIMIT_MEMLOCK for the UMEM).
    pub fn open(ifname: &str, queue: u32, config: XskConfig) -> io::Result<Xsk> {
        check_config(&config)?;
        let ifindex = ifindex(ifname)?;
        if !config.force_copy {
            if let Ok(x) = Xsk::open_mode(ifindex, queue, config, XskMode::ZeroCopy) {
                return Ok(x);
            }
        }
        Xsk::open_mode(ifindex, queue, config, XskMode::Copy)
    }

    fn open_mode(ifindex: u32, queue: u32, config: XskConfig, mode: XskMode) -> io::Result<Xsk> {
        // SAFETY: plain socket(2).
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem_len = config.frames as usize * config.frame_size as usize;
        let umem = Mmap::anonymous(umem_len)?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr.as_ptr() as u64,
            len: umem_len as u64,
            chunk_size: config.frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(&fd, libc::XDP_UMEM_REG, &reg)?;
        for opt in [
            libc::XDP_UMEM_FILL_RING,
            libc::XDP_UMEM_COMPLETION_RING,
            libc::XDP_RX_RING,
            libc::XDP_TX_RING,
        ] {
            setsockopt(&fd, opt, &config.ring_size)?;
        }
        let off = mmap_offsets(&fd)?;
        let n = config.ring_size;
        let fill = Ring::map(&fd, &off.fr, n, 8, libc::XDP_UMEM_PGOFF_FILL_RING as i64)?;
        let comp = Ring::map(
            &fd,
            &off.cr,
            n,
            8,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING as i64,
        )?;
        let desc = size_of::<libc::xdp_desc>();
        let rx = Ring::map(&fd, &off.rx, n, desc, libc::XDP_PGOFF_RX_RING)?;
        let tx = Ring::map(&fd, &off.tx, n, desc, libc::XDP_PGOFF_TX_RING)?;
        let mut flags = libc::XDP_USE_NEED_WAKEUP;
        flags |= match mode {
            XskMode::ZeroCopy => libc::XDP_ZEROCOPY,
            XskMode::Copy => libc::XDP_COPY,
        };
        let sxdp = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sxdp` is a valid sockaddr_xdp of the length given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sxdp as *const libc::sockaddr_xdp).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let free = (0..u64::from(config.frames))
            .rev()
            .map(|i| i * u64::from(config.frame_size))
            .collect();
        let mut x = Xsk {
            fd,
            umem,
            frame_size: config.frame_size,
            fill,
            comp,
            rx,
            tx,
            free,
            tx_pending: 0,
            ifindex,
            queue,
            mode,
            stats: XskStats::default(),
        };
        x.refill();
        Ok(x)
    }

    /// The socket, for `tern_xdp::Filter::register_xsk` and poll(2).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Zero-copy or copy mode.
    pub fn mode(&self) -> XskMode {
        self.mode
    }

    /// The queue this socket is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Whether received frames wait on the RX ring.
    pub fn rx_ready(&self) -> bool {
        self.rx.prod().load(Ordering::Acquire) != self.rx.cached_cons
    }

    /// Our counters.
    pub fn stats(&self) -> XskStats {
        self.stats
    }

    /// The kernel's counters for this socket.
    pub fn kernel_stats(&self) -> io::Result<libc::xdp_statistics> {
        // SAFETY: xdp_statistics is plain old data; all-zero is valid.
        let mut s: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `s` is writable for `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut s as *mut libc::xdp_statistics).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    /// Hand free frames to the kernel for receiving (no system call unless
    /// the kernel asked to be woken).
    pub fn refill(&mut self) {
        // Frames beyond half a ring's worth stay free for sending.
        let spare = (self.free.len() as u32).saturating_sub(self.fill.size / 2);
        let want = self.fill.free_entries().min(spare);
        if want > 0 {
            let start = self.fill.cached_prod;
            for i in 0..want {
                // INVARIANT: want <= free.len(), checked above.
                let addr = self.free.pop().unwrap_or(0);
                // SAFETY: the slot lies within the reserved range of the ring.
                unsafe { self.fill.write::<u64>(start.wrapping_add(i), addr) };
            }
            self.fill.publish(want);
        }
        if self.fill.needs_wakeup() {
            self.stats.fill_wakeups += 1;
            // SAFETY: a zero-length, nonblocking recvfrom only wakes the driver.
            unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
    }

    /// Lend up to `max` received frames to `each`, then recycle them and
    /// refill. Returns how many.
    pub fn recv(&mut self, max: u32, mut each: impl FnMut(&[u8])) -> u32 {
        let n = self.rx.available().min(max);
        let start = self.rx.cached_cons;
        for i in 0..n {
            // SAFETY: the slot lies within the published range of the ring.
            let d: libc::xdp_desc = unsafe { self.rx.read(start.wrapping_add(i)) };
            if let Some(frame) = self.umem.slice(d.addr, d.len as usize) {
                each(frame);
            }
            // Copy mode hands back the frame's base plus headroom; recycle the base.
            let base = d.addr - d.addr % u64::from(self.frame_size);
            self.free.push(base);
        }
        if n > 0 {
            self.rx.release(n);
            self.stats.rx_frames += u64::from(n);
        }
        self.refill();
        n
    }

    /// Build one frame with `build` (given a whole UMEM frame; it returns the
    /// frame's length, or `None` to cancel) and queue it for sending. `false`
    /// when no frame or TX slot is free or `build` cancelled.
    pub fn send(&mut self, build: impl FnOnce(&mut [u8]) -> Option<usize>) -> bool {
        self.complete();
        if !self.tx.has_free(self.tx_pending + 1) {
            self.stats.tx_full += 1;
            return false;
        }
        let Some(addr) = self.free.pop() else {
            self.stats.tx_full += 1;
            return false;
        };
        let fs = self.frame_size as usize;
        let len = match self.umem.slice_mut(addr, fs).and_then(build) {
            Some(len) if len <= fs => len,
            _ => {
                self.free.push(addr);
                return false;
            }
        };
        let slot = self.tx.cached_prod.wrapping_add(self.tx_pending);
        let d = libc::xdp_desc {
            addr,
            len: len as u32,
            options: 0,
        };
        // SAFETY: has_free(tx_pending + 1): the slot is ours to write.
        unsafe { self.tx.write(slot, d) };
        self.tx_pending += 1;
        self.stats.tx_frames += 1;
        true
    }

    /// Publish queued sends and kick the kernel when it needs it.
    pub fn flush(&mut self) {
        if self.tx_pending > 0 {
            self.tx.publish(self.tx_pending);
            self.tx_pending = 0;
        }
        // Copy mode transmits at most 32 frames per kick (the kernel's
        // TX_BATCH_SIZE), so kick until the ring is drained (bounded);
        // zero-copy drivers need one kick, and only when they ask.
        let queued = self.tx_in_flight();
        let kicks = match self.mode {
            XskMode::Copy if queued > 0 => queued / 32 + 2,
            XskMode::ZeroCopy if self.tx.needs_wakeup() => 1,
            _ => 0,
        };
        for _ in 0..kicks {
            self.stats.tx_kicks += 1;
            // SAFETY: a zero-length, nonblocking sendto only starts transmission.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            let busy = rc < 0
                && matches!(
                    io::Error::last_os_error().raw_os_error(),
                    Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS)
                );
            if (rc < 0 && !busy) || self.tx_in_flight() == 0 {
                break;
            }
        }
        self.complete();
    }

    /// Frames on the TX ring the kernel has not taken yet.
    pub fn tx_in_flight(&self) -> u32 {
        self.tx.size - self.tx.free_entries_now()
    }

    /// Take back the frames the kernel finished sending.
    fn complete(&mut self) {
        let n = self.comp.available();
        let start = self.comp.cached_cons;
        for i in 0..n {
            // SAFETY: the slot lies within the published range of the ring.
            let addr: u64 = unsafe { self.comp.read(start.wrapping_add(i)) };
            self.free.push(addr);
        }
        if n > 0 {
            self.comp.release(n);
        }
    }
}

fn check_config(c: &XskConfig) -> io::Result<()> {
    let bad = |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what.to_owned()));
    if c.frame_size != 2048 && c.frame_size != 4096 {
        return bad("frame_size must be 2048 or 4096");
    }
    if !c.ring_size.is_power_of_two() || !c.frames.is_power_of_two() {
        return bad("frames and ring_size must be powers of two");
    }
    if c.frames < 2 * c.ring_size {
        return bad("frames must be at least twice ring_size");
    }
    Ok(())
}

fn ifindex(ifname: &str) -> io::Result<u32> {
    let c = CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: NUL-terminated string outliving the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {ifname}"),
        ));
    }
    Ok(i)
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a valid T of the length given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mmap_offsets(fd: &OwnedFd) -> io::Result<libc::xdp_mmap_offsets> {
    // SAFETY: plain old data; all-zero is valid.
    let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
    // SAFETY: `off` is writable for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            libc::XDP_MMAP_OFFSETS,
            (&mut off as *mut libc::xdp_mmap_offsets).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<libc::xdp_mmap_offsets>() {
        // Pre-5.4 kernels report the layout without `flags`.
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "kernel too old for XDP ring flags (need Linux 5.4+)",
        ));
    }
    Ok(off)
}

/// An mmap'd region, unmapped on drop.
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    fn anonymous(len: usize) -> io::Result<Mmap> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        Mmap::checked(p, len)
    }

    fn of_socket(fd: &OwnedFd, len: usize, offset: i64) -> io::Result<Mmap> {
        // SAFETY: maps the kernel's ring memory for this socket; no existing
        // memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                offset,
            )
        };
        Mmap::checked(p, len)
    }

    fn checked(p: *mut libc::c_void, len: usize) -> io::Result<Mmap> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Mmap { ptr, len })
    }

    fn slice(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(addr).ok()?;
        if start.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: in bounds (checked); the kernel wrote this frame before
        // publishing its descriptor, and does not touch it until we give the
        // frame back through the fill ring.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), len) })
    }

    fn slice_mut(&mut self, addr: u64, len: usize) -> Option<&mut [u8]> {
        let start = usize::try_from(addr).ok()?;
        if start.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: in bounds (checked); the frame came from the free list, so
        // neither the kernel nor any other borrow uses it.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(start), len) })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region mapped in `checked`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One single-producer single-consumer ring shared with the kernel.
struct Ring {
    map: Mmap,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    desc: NonNull<u8>,
    entry: usize,
    size: u32,
    mask: u32,
    cached_prod: u32,
    cached_cons: u32,
}

impl Ring {
    fn map(
        fd: &OwnedFd,
        off: &libc::xdp_ring_offset,
        size: u32,
        entry: usize,
        pgoff: i64,
    ) -> io::Result<Ring> {
        let len = off.desc as usize + size as usize * entry;
        let map = Mmap::of_socket(fd, len, pgoff)?;
        let at = |o: u64| -> io::Result<NonNull<u8>> {
            if o as usize + 4 > len {
                return Err(io::Error::other("ring offset outside the mapping"));
            }
            // SAFETY: in bounds of the mapping (checked just above).
            Ok(unsafe { map.ptr.add(o as usize) })
        };
        let producer = at(off.producer)?.cast();
        let consumer = at(off.consumer)?.cast();
        let flags = at(off.flags)?.cast();
        let desc = at(off.desc)?;
        let mut r = Ring {
            map,
            producer,
            consumer,
            flags,
            desc,
            entry,
            size,
            mask: size - 1,
            cached_prod: 0,
            cached_cons: 0,
        };
        r.cached_prod = r.prod().load(Ordering::Relaxed);
        r.cached_cons = r.cons().load(Ordering::Relaxed);
        Ok(r)
    }

    fn prod(&self) -> &AtomicU32 {
        // SAFETY: a 4-byte aligned u32 the kernel shares with us for the
        // lifetime of the mapping, which `self` owns.
        unsafe { self.producer.as_ref() }
    }

    fn cons(&self) -> &AtomicU32 {
        // SAFETY: as in `prod`.
        unsafe { self.consumer.as_ref() }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as in `prod`.
        let flags = unsafe { self.flags.as_ref() };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Producer side: slots we may fill (refreshing the consumer only when
    /// the cached view says the ring is full).
    fn free_entries(&mut self) -> u32 {
        let free = self.size - self.cached_prod.wrapping_sub(self.cached_cons);
        if free > 0 {
            return free;
        }
        self.cached_cons = self.cons().load(Ordering::Acquire);
        self.size - self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Producer side: whether `n` slots are free, refreshing the consumer
    /// when the cached view has fewer (it only ever underestimates).
    fn has_free(&mut self, n: u32) -> bool {
        if self.size - self.cached_prod.wrapping_sub(self.cached_cons) >= n {
            return true;
        }
        self.cached_cons = self.cons().load(Ordering::Acquire);
        self.size - self.cached_prod.wrapping_sub(self.cached_cons) >= n
    }

    fn free_entries_now(&self) -> u32 {
        let cons = self.cons().load(Ordering::Acquire);
        self.size - self.cached_prod.wrapping_sub(cons)
    }

    fn publish(&mut self, n: u32) {
        self.cached_prod = self.cached_prod.wrapping_add(n);
        self.prod().store(self.cached_prod, Ordering::Release);
    }

    /// Consumer side: entries ready to read.
    fn available(&mut self) -> u32 {
        let ready = self.cached_prod.wrapping_sub(self.cached_cons);
        if ready > 0 {
            return ready;
        }
        self.cached_prod = self.prod().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.cons().store(self.cached_cons, Ordering::Release);
    }

    /// # Safety
    /// `index` must be in the range this side owns (published by the other
    /// side and not yet released, for a consumer).
    unsafe fn read<T: Copy>(&self, index: u32) -> T {
        let at = (index & self.mask) as usize * self.entry;
        debug_assert!(at + size_of::<T>() <= self.map.len);
        // SAFETY: within the descriptor array (mask bounds the index); the
        // caller guarantees the kernel is not writing this slot.
        unsafe { self.desc.as_ptr().add(at).cast::<T>().read_unaligned() }
    }

    /// # Safety
    /// `index` must be in the range this side owns (reserved, not published).
    unsafe fn write<T: Copy>(&mut self, index: u32, v: T) {
        let at = (index & self.mask) as usize * self.entry;
        debug_assert!(at + size_of::<T>() <= self.map.len);
        // SAFETY: within the descriptor array; the caller guarantees the
        // kernel is not reading this slot.
        unsafe { self.desc.as_ptr().add(at).cast::<T>().write_unaligned(v) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_the_kernel_would_refuse_are_refused_first() {
        assert!(check_config(&XskConfig::default()).is_ok());
        for c in [
            XskConfig {
                frame_size: 1000,
                ..XskConfig::default()
            },
            XskConfig {
                ring_size: 1000,
                ..XskConfig::default()
            },
            XskConfig {
                frames: 2048,
                ring_size: 2048,
                ..XskConfig::default()
            },
        ] {
            assert_eq!(
                check_config(&c).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
        assert_eq!(
            Xsk::open("txdp-none", 0, XskConfig::default())
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
    }
}
