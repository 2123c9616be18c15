//! UDP generic segmentation offload (Linux 4.18+): one `sendmsg` carries a
//! run of same-size datagrams to one destination, and the kernel (or the NIC)
//! cuts it into segments. Probed once per process; a back end that meets a
//! refusal at send time (EIO when the device cannot checksum, EINVAL under
//! `SO_NO_CHECK` and friends) turns it off for itself and resends singly.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;

/// Most segments in one GSO message (the kernel's UDP_MAX_SEGMENTS is 64 on
/// older kernels, 128 on newer ones).
pub(crate) const MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one GSO message (an IPv4 datagram's limit, kept for both families).
pub(crate) const MAX_BYTES: usize = 65_507 - 8;

/// Room for one `UDP_SEGMENT` control message (a `u16`), aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct CmsgBuf(pub(crate) [u8; 32]);

/// Whether this kernel accepts `UDP_SEGMENT`, asked once per process.
pub fn gso_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(probe)
}

fn probe() -> bool {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let size: libc::c_int = 1200;
    // SAFETY: valid fd, option value is a live c_int of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let ok = rc == 0;
    tracing::debug!(supported = ok, "probed UDP GSO (UDP_SEGMENT)");
    ok
}

/// The control-message length a `UDP_SEGMENT` cmsg needs.
/// One datagram queued for sending: its socket, destination, and where its
/// bytes sit in the back end's send arena (runs of a GSO message are contiguous).
pub(crate) struct TxEntry {
    pub(crate) from: crate::SocketId,
    pub(crate) to: std::net::SocketAddr,
    pub(crate) off: usize,
    pub(crate) len: usize,
}

/// The GSO run starting at `entries[i]`: following datagrams from the same
/// socket to the same destination, all of the first one's size except that the
/// last may be shorter, within the segment and byte limits. Returns the end
/// index (exclusive) and the run's total bytes; a run of one when `gso_on` is
/// false or the first datagram is empty.
pub(crate) fn run(entries: &[TxEntry], i: usize, gso_on: bool) -> (usize, usize) {
    let first = &entries[i];
    let seg = first.len;
    let mut total = seg;
    let mut j = i + 1;
    if gso_on && seg > 0 {
        while j < entries.len()
            && j - i < MAX_SEGMENTS
            && entries[j].from == first.from
            && entries[j].to == first.to
            && entries[j - 1].len == seg
            && entries[j].len <= seg
            && entries[j].len > 0
            && total + entries[j].len <= MAX_BYTES
        {
            total += entries[j].len;
            j += 1;
        }
    }
    (j, total)
}

pub(crate) fn cmsg_space() -> usize {
    // SAFETY: CMSG_SPACE is a pure arithmetic macro.
    unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) as usize }
}

/// Attach a `UDP_SEGMENT` control message of `segment_size` to `hdr`, using `buf`.
pub(crate) fn set_segment_size(hdr: &mut libc::msghdr, buf: &mut CmsgBuf, segment_size: u16) {
    let space = cmsg_space();
    debug_assert!(space <= buf.0.len());
    buf.0 = [0; 32];
    hdr.msg_control = buf.0.as_mut_ptr().cast();
    hdr.msg_controllen = space as _;
    // SAFETY: msg_control points at `space` writable, cmsghdr-aligned bytes, enough
    // for one cmsghdr followed by a u16 (CMSG_SPACE(2)); CMSG_FIRSTHDR is non-null
    // because msg_controllen >= size_of::<cmsghdr>().
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(hdr);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment_size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(from: u32, to: &str, len: usize) -> TxEntry {
        TxEntry {
            from: crate::SocketId(from),
            to: to.parse().unwrap(),
            off: 0,
            len,
        }
    }

    #[test]
    fn run_groups_same_socket_destination_and_size() {
        let a = "127.0.0.1:1";
        let e = [
            entry(0, a, 100),
            entry(0, a, 100),
            entry(0, a, 60), // a shorter last segment ends the run, inside it
            entry(0, a, 100),
            entry(0, "127.0.0.1:2", 100), // another destination
            entry(1, "127.0.0.1:2", 100), // another socket
        ];
        assert_eq!(run(&e, 0, true), (3, 260));
        assert_eq!(run(&e, 3, true), (4, 100));
        assert_eq!(run(&e, 4, true), (5, 100));
        assert_eq!(
            run(&e, 0, false),
            (1, 100),
            "GSO off: one datagram per message"
        );
        let empty = [entry(0, a, 0), entry(0, a, 0)];
        assert_eq!(run(&empty, 0, true), (1, 0));
        let many: Vec<TxEntry> = (0..MAX_SEGMENTS + 5).map(|_| entry(0, a, 10)).collect();
        assert_eq!(
            run(&many, 0, true).0,
            MAX_SEGMENTS,
            "at most MAX_SEGMENTS per message"
        );
        let big: Vec<TxEntry> = (0..10).map(|_| entry(0, a, 9_000)).collect();
        let (end, total) = run(&big, 0, true);
        assert!(
            total <= MAX_BYTES && end == MAX_BYTES / 9_000,
            "{end} {total}"
        );
    }

    #[test]
    fn cmsg_fits_its_buffer() {
        assert!(cmsg_space() <= size_of::<CmsgBuf>());
    }

    #[test]
    fn probe_is_stable() {
        assert_eq!(gso_supported(), gso_supported());
    }
}
