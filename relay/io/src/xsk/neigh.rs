//! Next-hop MAC addresses for frames the relay builds itself, from the
//! kernel's own tables over rtnetlink: `RTM_GETROUTE` for one destination
//! (what `ip route get` prints: outgoing interface, gateway), `RTM_GETNEIGH`
//! for the next hop's link-layer address (`ip neigh get`), and the
//! interface's own MAC. [`NextHops`] caches answers per destination, bounded
//! in size, re-checks them after a while, and retries misses no more than a
//! few times a second; ARP and ND stay the kernel's job (a miss means "send
//! this one through the kernel", which also makes it resolve).
//!
//! Owns the netlink socket and the cache; no per-packet system call once a
//! destination is cached.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const RTM_GETROUTE: u16 = 26;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETNEIGH: u16 = 30;
const RTM_NEWNEIGH: u16 = 28;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NUD_INCOMPLETE: u16 = 0x01;
const NUD_FAILED: u16 = 0x20;
const NUD_NOARP: u16 = 0x40;

/// How the kernel would send to one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Outgoing interface index.
    pub oif: u32,
    /// The gateway, or `None` when the destination is on-link.
    pub gateway: Option<IpAddr>,
}

impl Route {
    /// The address whose MAC the frame goes to.
    pub fn next_hop(&self, dst: IpAddr) -> IpAddr {
        self.gateway.unwrap_or(dst)
    }
}

/// A netlink route socket for one-shot queries.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Open a `NETLINK_ROUTE` socket.
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2).
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a valid timeval of the length given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(Netlink {
            fd,
            seq: 0,
            buf: vec![0; 16 * 1024],
        })
    }

    /// The route the kernel would use to `dst`.
    pub fn route_get(&mut self, dst: IpAddr) -> io::Result<Route> {
        let (family, addr) = family_and_bytes(dst);
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags(u32)
        let mut body = vec![family, (addr.len() * 8) as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        push_attr(&mut body, RTA_DST, &addr);
        let reply = self.query(RTM_GETROUTE, &body, RTM_NEWROUTE)?;
        let mut route = Route {
            oif: 0,
            gateway: None,
        };
        for (t, v) in attrs(reply.get(12..).unwrap_or(&[])) {
            match t {
                RTA_OIF if v.len() >= 4 => route.oif = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]),
                RTA_GATEWAY => route.gateway = ip_from(v),
                _ => {}
            }
        }
        if route.oif == 0 {
            return Err(io::Error::other("route without an outgoing interface"));
        }
        Ok(route)
    }

    /// The link-layer address of `ip` on interface `ifindex`, if the kernel
    /// has resolved it (`None`: unknown, incomplete or failed).
    pub fn neigh_get(&mut self, ifindex: u32, ip: IpAddr) -> io::Result<Option<[u8; 6]>> {
        let (family, addr) = family_and_bytes(ip);
        // struct ndmsg: family, pad1, pad2(u16), ifindex(i32), state(u16), flags(u8), type(u8)
        let mut body = vec![family, 0, 0, 0];
        body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
        body.extend_from_slice(&[0, 0, 0, 0]);
        push_attr(&mut body, NDA_DST, &addr);
        let reply = match self.query(RTM_GETNEIGH, &body, RTM_NEWNEIGH) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let state = reply
            .get(8..10)
            .map(|s| u16::from_ne_bytes([s[0], s[1]]))
            .unwrap_or(0);
        if state & (NUD_INCOMPLETE | NUD_FAILED | NUD_NOARP) != 0 {
            return Ok(None);
        }
        for (t, v) in attrs(reply.get(12..).unwrap_or(&[])) {
            if t == NDA_LLADDR && v.len() == 6 {
                let mut mac = [0; 6];
                mac.copy_from_slice(v);
                return Ok(Some(mac));
            }
        }
        Ok(None)
    }

    /// Send one request and return the body of its one answer of type `want`.
    fn query(&mut self, kind: u16, body: &[u8], want: u16) -> io::Result<Vec<u8>> {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: `msg` is readable for its length; a null address means the
        // kernel (the socket is unconnected, netlink's default peer).
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rest = &self.buf[..n as usize];
            while rest.len() >= 16 {
                let mlen = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let mtype = u16::from_ne_bytes([rest[4], rest[5]]);
                let seq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                if mlen < 16 || mlen > rest.len() {
                    return Err(io::Error::other("malformed netlink answer"));
                }
                let body = &rest[16..mlen];
                if seq == self.seq {
                    if mtype == NLMSG_ERROR {
                        let code = body
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc::EIO);
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    if mtype == want {
                        return Ok(body.to_vec());
                    }
                }
                rest = &rest[align4(mlen).min(rest.len())..];
            }
        }
    }
}

/// The MAC address of interface `ifname`.
pub fn interface_mac(ifname: &str) -> io::Result<[u8; 6]> {
    // SAFETY: plain socket(2), closed by OwnedFd.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= req.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr of `req`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

/// How many receive queues `ifname` has (ethtool's channel count; 1 when the
/// driver does not report channels). Asks the kernel of the calling thread's
/// network namespace, unlike /sys, which shows the mounting namespace's.
pub fn rx_queues(ifname: &str) -> io::Result<u32> {
    #[repr(C)]
    #[derive(Default)]
    struct EthtoolChannels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    // SAFETY: plain socket(2), closed by OwnedFd.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut ch = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..EthtoolChannels::default()
    };
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= req.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut ch as *mut EthtoolChannels).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GCHANNELS reads the name and writes
    // the ethtool_channels `ifru_data` points to, which outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(1),
            _ => Err(e),
        };
    }
    Ok((ch.rx_count + ch.combined_count).max(1))
}

/// Per-destination next hops (outgoing interface and MAC) through a set of
/// interfaces, cached.
#[derive(Debug)]
pub struct NextHops {
    netlink: Netlink,
    ifindexes: Vec<u32>,
    entries: HashMap<IpAddr, Entry>,
    capacity: usize,
    /// A resolved entry is re-checked after this long.
    pub refresh: Duration,
    /// An unresolved destination is asked about again after this long.
    pub retry: Duration,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    hop: Option<(u32, [u8; 6])>,
    checked: Instant,
}

impl NextHops {
    /// A cache of at most `capacity` destinations reached through one of
    /// `ifindexes`.
    pub fn new(ifindexes: Vec<u32>, capacity: usize) -> io::Result<NextHops> {
        Ok(NextHops {
            netlink: Netlink::open()?,
            ifindexes,
            entries: HashMap::with_capacity(capacity.min(4096)),
            capacity: capacity.max(1),
            refresh: Duration::from_secs(30),
            retry: Duration::from_millis(200),
        })
    }

    /// The interface and MAC to send a frame for `dst` to, or `None` (send
    /// it through the kernel): not resolved yet, not via one of our
    /// interfaces, or the cache is full.
    pub fn lookup(&mut self, dst: IpAddr, now: Instant) -> Option<(u32, [u8; 6])> {
        if let Some(e) = self.entries.get(&dst) {
            let age = now.saturating_duration_since(e.checked);
            match e.hop {
                Some(hop) if age < self.refresh => return Some(hop),
                None if age < self.retry => return None,
                _ => {}
            }
        } else if self.entries.len() >= self.capacity {
            self.evict(now);
            if self.entries.len() >= self.capacity {
                return None;
            }
        }
        let hop = self.resolve(dst);
        self.entries.insert(dst, Entry { hop, checked: now });
        hop
    }

    /// Destinations cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn resolve(&mut self, dst: IpAddr) -> Option<(u32, [u8; 6])> {
        let route = self.netlink.route_get(dst).ok()?;
        if !self.ifindexes.contains(&route.oif) {
            return None;
        }
        let mac = self
            .netlink
            .neigh_get(route.oif, route.next_hop(dst))
            .ok()
            .flatten()?;
        Some((route.oif, mac))
    }

    fn evict(&mut self, now: Instant) {
        let refresh = self.refresh;
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.checked) < refresh);
    }
}

fn family_and_bytes(ip: IpAddr) -> (u8, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    }
}

fn ip_from(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(v).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(v).ok()?)),
        _ => None,
    }
}

fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (align4(len) - len), 0);
}

/// Route attributes (type, value) in `b`; stops at the first malformed one.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let kind = u16::from_ne_bytes([b[2], b[3]]) & 0x3FFF;
        if len < 4 || len > b.len() {
            return None;
        }
        let value = &b[4..len];
        b = &b[align4(len).min(b.len())..];
        Some((kind, value))
    })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn attributes_round_trip() {
        let mut b = Vec::new();
        push_attr(&mut b, RTA_DST, &[10, 0, 0, 1]);
        push_attr(&mut b, RTA_OIF, &7u32.to_ne_bytes());
        push_attr(&mut b, 99, &[1, 2, 3]);
        let got: Vec<(u16, Vec<u8>)> = attrs(&b).map(|(t, v)| (t, v.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (RTA_DST, vec![10, 0, 0, 1]),
                (RTA_OIF, 7u32.to_ne_bytes().to_vec()),
                (99, vec![1, 2, 3])
            ]
        );
    }

    #[test]
    fn loopback_has_one_queue() {
        assert_eq!(rx_queues("lo").unwrap(), 1);
        assert!(rx_queues("txdp-none").is_err());
    }

    #[test]
    fn loopback_routes_and_mac() {
        let mut nl = Netlink::open().unwrap();
        let r = nl.route_get("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(r.gateway, None);
        assert_eq!(interface_mac("lo").unwrap(), [0; 6]);
        assert!(interface_mac("txdp-none").is_err());
    }

    proptest! {
        #[test]
        fn attribute_walk_never_panics(b in prop::collection::vec(any::<u8>(), 0..100)) {
            for (_, v) in attrs(&b) {
                prop_assert!(v.len() <= b.len());
            }
        }
    }
}
