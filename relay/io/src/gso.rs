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

    #[test]
    fn cmsg_fits_its_buffer() {
        assert!(cmsg_space() <= size_of::<CmsgBuf>());
    }

    #[test]
    fn probe_is_stable() {
        assert_eq!(gso_supported(), gso_supported());
    }
}
