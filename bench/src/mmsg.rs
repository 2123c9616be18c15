//! Batched UDP I/O with `sendmmsg(2)` / `recvmmsg(2)` over caller-owned,
//! preallocated buffers (nothing is allocated per packet).

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockAddr;

/// Largest datagram a batch slot holds.
pub const SLOT_LEN: usize = 2048;

/// A batch of receive slots for `recvmmsg`.
pub struct RecvBatch {
    bufs: Box<[[u8; SLOT_LEN]]>,
    iovs: Box<[libc::iovec]>,
    names: Box<[libc::sockaddr_storage]>,
    hdrs: Box<[libc::mmsghdr]>,
}

// SAFETY: the raw pointers inside `iovs`/`hdrs` point only into this struct's
// own boxed slices, which move with it; nothing is shared between threads.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// `n` slots (at least 1).
    pub fn new(n: usize) -> RecvBatch {
        let n = n.max(1);
        let mut bufs = vec![[0u8; SLOT_LEN]; n].into_boxed_slice();
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
        let mut names: Box<[libc::sockaddr_storage]> =
            (0..n).map(|_| unsafe { mem::zeroed() }).collect();
        let mut iovs: Box<[libc::iovec]> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: SLOT_LEN,
            })
            .collect();
        let hdrs = iovs
            .iter_mut()
            .zip(names.iter_mut())
            .map(|(iov, name)| {
                // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
                let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
                h.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as _;
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        RecvBatch {
            bufs,
            iovs,
            names,
            hdrs,
        }
    }

    /// Receive up to the batch size from `fd` (blocking for the first
    /// datagram as the socket's timeout allows, then taking what is queued).
    /// Returns how many slots were filled; `Ok(0)` on timeout.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for h in self.hdrs.iter_mut() {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as _;
            h.msg_len = 0;
        }
        debug_assert_eq!(self.iovs.len(), self.hdrs.len());
        // SAFETY: `hdrs` holds `hdrs.len()` valid mmsghdrs whose names and iovecs
        // point into buffers owned by `self` that outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as _,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }

    /// The datagram in slot `i` of the last `recv`.
    pub fn data(&self, i: usize) -> &[u8] {
        let len = (self.hdrs[i].msg_len as usize).min(SLOT_LEN);
        &self.bufs[i][..len]
    }

    /// Mutable access to slot `i`'s whole buffer (for forwarding in place).
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8; SLOT_LEN] {
        &mut self.bufs[i]
    }

    /// Length of the datagram in slot `i` of the last `recv`.
    pub fn len_of(&self, i: usize) -> usize {
        (self.hdrs[i].msg_len as usize).min(SLOT_LEN)
    }

    /// The source address of slot `i` of the last `recv`.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        storage_to_addr(&self.names[i], self.hdrs[i].msg_hdr.msg_namelen as usize)
    }
}

/// Decode a kernel-written socket address of `len` bytes.
fn storage_to_addr(ss: &libc::sockaddr_storage, len: usize) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: family is AF_INET and the kernel wrote a full sockaddr_in;
            // sockaddr_storage is aligned for every sockaddr type.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: family is AF_INET6 and the kernel wrote a full sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
        }
        _ => None,
    }
}

/// A batch of send slots for `sendmmsg`.
pub struct SendBatch {
    bufs: Box<[[u8; SLOT_LEN]]>,
    lens: Box<[usize]>,
    dests: Box<[Option<SockAddr>]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    len: usize,
}

// SAFETY: the raw pointers in `iovs`/`hdrs` are rebuilt on every send from
// this struct's own buffers; nothing is shared between threads.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// `n` slots (at least 1).
    pub fn new(n: usize) -> SendBatch {
        let n = n.max(1);
        SendBatch {
            bufs: vec![[0u8; SLOT_LEN]; n].into_boxed_slice(),
            lens: vec![0; n].into_boxed_slice(),
            dests: vec![None; n].into_boxed_slice(),
            iovs: Vec::with_capacity(n),
            hdrs: Vec::with_capacity(n),
            len: 0,
        }
    }

    /// Slots in the batch.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// Queued datagrams.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queue a datagram of `len` bytes to `dest` (`None` on a connected socket),
    /// written by `fill` into the next slot. Returns `false` if the batch is full.
    pub fn push(
        &mut self,
        len: usize,
        dest: Option<&SockAddr>,
        fill: impl FnOnce(&mut [u8]),
    ) -> bool {
        if self.len == self.bufs.len() {
            return false;
        }
        let len = len.min(SLOT_LEN);
        fill(&mut self.bufs[self.len][..len]);
        self.lens[self.len] = len;
        self.dests[self.len] = dest.cloned();
        self.len += 1;
        true
    }

    /// Send everything queued on `fd` and empty the batch. Returns how many
    /// datagrams the kernel took and the first error if it stopped early.
    pub fn flush(&mut self, fd: RawFd) -> (usize, Option<io::Error>) {
        self.iovs.clear();
        self.hdrs.clear();
        for i in 0..self.len {
            self.iovs.push(libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: self.lens[i],
            });
        }
        for i in 0..self.len {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            if let Some(d) = &self.dests[i] {
                h.msg_hdr.msg_name = d.as_ptr() as *mut libc::c_void;
                h.msg_hdr.msg_namelen = d.len();
            }
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        let total = self.len;
        self.len = 0;
        let mut done = 0;
        while done < total {
            // SAFETY: hdrs[done..total] are valid mmsghdrs pointing into buffers
            // and addresses owned by `self`, alive for the whole call.
            let n = unsafe {
                libc::sendmmsg(fd, self.hdrs[done..].as_mut_ptr(), (total - done) as _, 0)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return (done, Some(e));
            }
            if n == 0 {
                break;
            }
            done += n as usize;
        }
        (done, None)
    }
}

/// Set SO_RCVBUF/SO_SNDBUF to `bytes`, forcing past the sysctl cap when
/// privileged; best effort.
pub fn grow_buffers(sock: &socket2::Socket, bytes: usize) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        let v = bytes as libc::c_int;
        // SAFETY: valid fd, option value is a c_int of the right size.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(sock),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as _,
            )
        };
        if rc != 0 {
            let _unprivileged_fallback = if opt == libc::SO_RCVBUFFORCE {
                sock.set_recv_buffer_size(bytes)
            } else {
                sock.set_send_buffer_size(bytes)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    #[test]
    fn batch_round_trip_over_loopback() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dest = SockAddr::from(rx.local_addr().unwrap());
        let mut sb = SendBatch::new(8);
        for i in 0..8u8 {
            assert!(sb.push(10 + i as usize, Some(&dest), |b| b.fill(i)));
        }
        assert!(!sb.push(1, Some(&dest), |_| {}));
        let (n, err) = sb.flush(tx.as_raw_fd());
        assert!(err.is_none());
        assert_eq!(n, 8);
        let mut rb = RecvBatch::new(16);
        let mut got = 0;
        while got < 8 {
            let n = rb.recv(rx.as_raw_fd()).unwrap();
            assert!(n > 0, "timed out");
            for i in 0..n {
                let d = rb.data(i);
                assert_eq!(d.len(), 10 + d[0] as usize);
                assert_eq!(rb.source(i), Some(tx.local_addr().unwrap()));
            }
            got += n;
        }
    }
}
