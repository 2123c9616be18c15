//! Free loopback ports, probed rather than assumed (3478 may well be taken).
//!
//! A probe binds, reads the port and closes; another process may take the port before the
//! caller binds it, so callers that start a server on a probed port retry on bind failure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use rand::Rng;

/// IPv4 loopback.
pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// IPv6 loopback.
pub const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// A UDP port on `ip` that was free a moment ago.
pub fn free_udp_port(ip: IpAddr) -> u16 {
    let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind an ephemeral UDP port");
    sock.local_addr().expect("local_addr").port()
}

/// A UDP port free on every address in `ips` a moment ago.
pub fn free_udp_port_on(ips: &[IpAddr]) -> u16 {
    for _ in 0..100 {
        let port = free_udp_port(ips[0]);
        if ips[1..].iter().all(|ip| port_free(*ip, port)) {
            return port;
        }
    }
    panic!("no UDP port free on all of {ips:?} after 100 probes");
}

/// True when `ip` has IPv6 loopback support (binding `[::1]:0` works).
pub fn ipv6_loopback_available() -> bool {
    UdpSocket::bind(SocketAddr::new(V6, 0)).is_ok()
}

/// A window of `len` consecutive UDP ports in 20000–60000, each free on every address in
/// `ips` when probed. Random start, so tests running side by side rarely overlap.
pub fn free_port_window(len: u16, ips: &[IpAddr]) -> (u16, u16) {
    assert!((1..=10_000).contains(&len), "window length {len}");
    let mut rng = rand::thread_rng();
    for _ in 0..50 {
        let lo = rng.gen_range(20_000..=60_000 - len);
        let hi = lo + len - 1;
        if (lo..=hi).all(|p| ips.iter().all(|ip| port_free(*ip, p))) {
            return (lo, hi);
        }
    }
    panic!("no window of {len} free UDP ports on {ips:?} in 20000-60000 after 50 tries");
}

fn port_free(ip: IpAddr, port: u16) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, port)).is_ok()
}
