//! Ethernet + IPv4/IPv6 + UDP framing for the AF_XDP back end, which sees
//! whole frames: [`parse`] turns a received frame into addresses and a
//! payload view (no copy), [`write_udp_frame`] writes the headers in front of
//! a payload already in place, with the IPv4 header checksum and the UDP
//! checksum, and [`udp_checksum_ok`] checks a received datagram's checksum
//! (XDP runs before the kernel has verified anything).
//!
//! Owns only byte layouts; never allocates, never panics on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Ethernet header without VLAN tags.
pub const ETH_HEADER_LEN: usize = 14;
/// Ethernet + IPv4 (no options) + UDP.
pub const V4_HEADERS_LEN: usize = ETH_HEADER_LEN + 20 + 8;
/// Ethernet + IPv6 (no extension headers) + UDP.
pub const V6_HEADERS_LEN: usize = ETH_HEADER_LEN + 40 + 8;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_UDP: u8 = 17;
const TTL: u8 = 64;

/// Why a frame is not a UDP datagram this back end takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Shorter than its headers say.
    #[error("truncated frame")]
    Truncated,
    /// Not IPv4/IPv6 (after at most two VLAN tags).
    #[error("not IP")]
    NotIp,
    /// IP, but not UDP (or IPv6 with extension headers).
    #[error("not UDP")]
    NotUdp,
    /// An IPv4 fragment.
    #[error("IP fragment")]
    Fragment,
    /// Header fields that contradict each other or the frame.
    #[error("malformed IP/UDP header")]
    Malformed,
    /// Addresses of different families.
    #[error("source and destination of different families")]
    MixedFamilies,
    /// The buffer cannot hold the headers and payload.
    #[error("buffer too small")]
    BufferTooSmall,
}

/// A received UDP datagram, borrowed from its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpFrame<'a> {
    /// Source MAC address.
    pub src_mac: [u8; 6],
    /// Destination MAC address.
    pub dst_mac: [u8; 6],
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// The UDP payload.
    pub payload: &'a [u8],
    /// Where the payload starts in the frame.
    pub payload_offset: usize,
    /// The UDP checksum field as received (0: none, IPv4 only).
    pub checksum: u16,
}

/// The Ethernet addresses of an outgoing frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacPair {
    /// Ours (the interface's).
    pub src: [u8; 6],
    /// The next hop's.
    pub dst: [u8; 6],
}

/// Headers in front of a payload to or from an address of `ip`'s family.
pub fn headers_len(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => V4_HEADERS_LEN,
        IpAddr::V6(_) => V6_HEADERS_LEN,
    }
}

/// Parse an Ethernet frame carrying UDP over IPv4 or IPv6 (up to two VLAN
/// tags). Ethernet padding after the datagram is ignored.
pub fn parse(frame: &[u8]) -> Result<UdpFrame<'_>, FrameError> {
    let eth = frame.get(..ETH_HEADER_LEN).ok_or(FrameError::Truncated)?;
    let dst_mac = mac(&eth[0..6]);
    let src_mac = mac(&eth[6..12]);
    let mut proto = be16(eth, 12);
    let mut off = ETH_HEADER_LEN;
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let tag = frame.get(off..off + 4).ok_or(FrameError::Truncated)?;
        proto = be16(tag, 2);
        off += 4;
    }
    let (src_ip, dst_ip, udp_off, l4_room) = match proto {
        ETH_P_IP => {
            let ip = frame.get(off..off + 20).ok_or(FrameError::Truncated)?;
            let ihl = usize::from(ip[0] & 0x0F) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 {
                return Err(FrameError::Malformed);
            }
            if ip[9] != IPPROTO_UDP {
                return Err(FrameError::NotUdp);
            }
            if be16(ip, 6) & 0x3FFF != 0 {
                return Err(FrameError::Fragment);
            }
            let total = usize::from(be16(ip, 2));
            if total < ihl || off + total > frame.len() {
                return Err(FrameError::Malformed);
            }
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (IpAddr::V4(src), IpAddr::V4(dst), off + ihl, total - ihl)
        }
        ETH_P_IPV6 => {
            let ip = frame.get(off..off + 40).ok_or(FrameError::Truncated)?;
            if ip[0] >> 4 != 6 {
                return Err(FrameError::Malformed);
            }
            if ip[6] != IPPROTO_UDP {
                return Err(FrameError::NotUdp);
            }
            let plen = usize::from(be16(ip, 4));
            if off + 40 + plen > frame.len() {
                return Err(FrameError::Malformed);
            }
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap_or([0; 16]));
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap_or([0; 16]));
            (IpAddr::V6(src), IpAddr::V6(dst), off + 40, plen)
        }
        _ => return Err(FrameError::NotIp),
    };
    let udp = frame
        .get(udp_off..udp_off + 8)
        .ok_or(FrameError::Truncated)?;
    let ulen = usize::from(be16(udp, 4));
    if ulen < 8 || ulen > l4_room {
        return Err(FrameError::Malformed);
    }
    let payload = frame
        .get(udp_off + 8..udp_off + ulen)
        .ok_or(FrameError::Truncated)?;
    Ok(UdpFrame {
        src_mac,
        dst_mac,
        src: SocketAddr::new(src_ip, be16(udp, 0)),
        dst: SocketAddr::new(dst_ip, be16(udp, 2)),
        payload,
        payload_offset: udp_off + 8,
        checksum: be16(udp, 6),
    })
}

/// Whether `f`'s UDP checksum is right (an IPv4 datagram without one is).
pub fn udp_checksum_ok(f: &UdpFrame<'_>) -> bool {
    if f.checksum == 0 {
        return f.src.is_ipv4();
    }
    let sum = pseudo_header_sum(f.src, f.dst, f.payload.len())
        + u32::from(f.src.port())
        + u32::from(f.dst.port())
        + (8 + f.payload.len()) as u32
        + u32::from(f.checksum);
    fold(sum_words(f.payload, sum)) == 0xFFFF
}

/// Write Ethernet, IP and UDP headers for a datagram `src` → `dst` whose
/// `payload_len` bytes already sit at `buf[headers_len(src.ip())..]`.
/// Returns the frame's length.
pub fn write_udp_frame(
    buf: &mut [u8],
    macs: MacPair,
    src: SocketAddr,
    dst: SocketAddr,
    payload_len: usize,
) -> Result<usize, FrameError> {
    let hl = headers_len(src.ip());
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(FrameError::MixedFamilies);
    }
    let total = hl + payload_len;
    if total > buf.len() || 8 + payload_len > usize::from(u16::MAX) - 40 {
        return Err(FrameError::BufferTooSmall);
    }
    let (head, rest) = buf.split_at_mut(hl);
    let payload = &rest[..payload_len];
    head[0..6].copy_from_slice(&macs.dst);
    head[6..12].copy_from_slice(&macs.src);
    let udp_len = (8 + payload_len) as u16;
    let udp_off = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            head[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
            let ip = &mut head[14..34];
            ip[0] = 0x45;
            ip[1] = 0;
            ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
            ip[4..6].copy_from_slice(&[0, 0]);
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
            ip[8] = TTL;
            ip[9] = IPPROTO_UDP;
            ip[10..12].copy_from_slice(&[0, 0]);
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let csum = !fold(sum_words(ip, 0));
            ip[10..12].copy_from_slice(&csum.to_be_bytes());
            34
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            head[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
            let ip = &mut head[14..54];
            ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
            ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
            ip[6] = IPPROTO_UDP;
            ip[7] = TTL;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            54
        }
        _ => return Err(FrameError::MixedFamilies),
    };
    let udp = &mut head[udp_off..udp_off + 8];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    let sum = pseudo_header_sum(src, dst, payload_len)
        + u32::from(src.port())
        + u32::from(dst.port())
        + u32::from(udp_len);
    let mut csum = !fold(sum_words(payload, sum));
    if csum == 0 {
        csum = 0xFFFF; // RFC 768: a computed 0 is sent as all ones
    }
    udp[6..8].copy_from_slice(&csum.to_be_bytes());
    Ok(total)
}

/// The pseudo-header's sum (RFC 768, RFC 8200 §8.1) without the UDP header.
fn pseudo_header_sum(src: SocketAddr, dst: SocketAddr, payload_len: usize) -> u32 {
    let mut sum = u32::from(IPPROTO_UDP) + (8 + payload_len) as u32;
    for ip in [src.ip(), dst.ip()] {
        sum = match ip {
            IpAddr::V4(a) => sum_words(&a.octets(), sum),
            IpAddr::V6(a) => sum_words(&a.octets(), sum),
        };
    }
    sum
}

/// Add `data` as big-endian 16-bit words (a trailing odd byte padded with 0)
/// to `sum`, folding carries as it goes so it never overflows.
fn sum_words(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        if sum > 0xFFFF_0000 {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn mac(b: &[u8]) -> [u8; 6] {
    let mut m = [0; 6];
    m.copy_from_slice(&b[..6]);
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MACS: MacPair = MacPair {
        src: [2, 0, 0, 0, 0, 1],
        dst: [2, 0, 0, 0, 0, 2],
    };

    fn build(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let hl = headers_len(src.ip());
        let mut buf = vec![0u8; hl + payload.len()];
        buf[hl..].copy_from_slice(payload);
        let n = write_udp_frame(&mut buf, MACS, src, dst, payload.len()).unwrap();
        assert_eq!(n, buf.len());
        buf
    }

    #[test]
    fn known_ipv4_checksums() {
        // 192.0.2.1:1234 -> 198.51.100.2:3478, payload "hello": checksums
        // computed independently (Python, RFC 1071 algorithm).
        let f = build(
            "192.0.2.1:1234".parse().unwrap(),
            "198.51.100.2:3478".parse().unwrap(),
            b"hello",
        );
        assert_eq!(&f[24..26], &[0x4e, 0x95], "IPv4 header checksum");
        assert_eq!(&f[40..42], &[0xbd, 0x62], "UDP checksum");
        let p = parse(&f).unwrap();
        assert!(udp_checksum_ok(&p));
        assert_eq!(p.payload, b"hello");
        assert_eq!(p.src_mac, MACS.src);
        assert_eq!(p.dst_mac, MACS.dst);
    }

    #[test]
    fn ipv6_round_trip_and_vlan_tags_are_skipped() {
        let src: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::2]:3478".parse().unwrap();
        let f = build(src, dst, b"odd");
        let p = parse(&f).unwrap();
        assert_eq!((p.src, p.dst, p.payload), (src, dst, &b"odd"[..]));
        assert!(udp_checksum_ok(&p));
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        tagged.extend_from_slice(&f[12..]);
        let p = parse(&tagged).unwrap();
        assert_eq!(p.payload_offset, V6_HEADERS_LEN + 4);
        assert!(udp_checksum_ok(&p));
    }

    #[test]
    fn refusals() {
        let src: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let f = build(src, "192.0.2.2:2".parse().unwrap(), b"x");
        assert_eq!(parse(&f[..20]), Err(FrameError::Truncated));
        assert_eq!(parse(&f[..f.len() - 1]), Err(FrameError::Malformed));
        let mut g = f.clone();
        g[23] = 6;
        assert_eq!(parse(&g), Err(FrameError::NotUdp));
        let mut g = f.clone();
        g[20] = 0x20;
        assert_eq!(parse(&g), Err(FrameError::Fragment));
        let mut g = f.clone();
        g[12] = 0x08;
        g[13] = 0x06;
        assert_eq!(parse(&g), Err(FrameError::NotIp));
        let mut buf = [0u8; 10];
        assert_eq!(
            write_udp_frame(&mut buf, MACS, src, "[::1]:1".parse().unwrap(), 0),
            Err(FrameError::MixedFamilies)
        );
        assert_eq!(
            write_udp_frame(&mut buf, MACS, src, "192.0.2.2:2".parse().unwrap(), 0),
            Err(FrameError::BufferTooSmall)
        );
        let mut g = f.clone();
        g[V4_HEADERS_LEN] ^= 1;
        assert!(!udp_checksum_ok(&parse(&g).unwrap()));
        let mut g = f;
        g[40..42].copy_from_slice(&[0, 0]);
        assert!(udp_checksum_ok(&parse(&g).unwrap()), "IPv4 may omit it");
    }

    fn addr_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        prop_oneof![
            (
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<[u8; 4]>(),
                any::<u16>()
            )
                .prop_map(|(a, p, b, q)| (
                    SocketAddr::new(IpAddr::from(a), p),
                    SocketAddr::new(IpAddr::from(b), q)
                )),
            (
                any::<[u8; 16]>(),
                any::<u16>(),
                any::<[u8; 16]>(),
                any::<u16>()
            )
                .prop_map(|(a, p, b, q)| (
                    SocketAddr::new(IpAddr::from(a), p),
                    SocketAddr::new(IpAddr::from(b), q)
                )),
        ]
    }

    proptest! {
        #[test]
        fn write_then_parse_round_trips((src, dst) in addr_pair(),
                                        payload in prop::collection::vec(any::<u8>(), 0..1500),
                                        flip in any::<prop::sample::Index>()) {
            let f = build(src, dst, &payload);
            let p = parse(&f).unwrap();
            prop_assert_eq!(p.src, src);
            prop_assert_eq!(p.dst, dst);
            prop_assert_eq!(p.payload, &payload[..]);
            prop_assert!(udp_checksum_ok(&p));
            if !payload.is_empty() {
                let mut g = f.clone();
                let at = p.payload_offset + flip.index(payload.len());
                g[at] ^= 0x5A;
                prop_assert!(!udp_checksum_ok(&parse(&g).unwrap()));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(p) = parse(&bytes) {
                let _ = udp_checksum_ok(&p);
                prop_assert!(p.payload_offset + p.payload.len() <= bytes.len());
            }
        }
    }
}
