//! The TURN peer address policy: which peer addresses a client may be given a
//! permission, a channel binding or a Send indication for (RFC 8656 §17 and
//! §21.3, "the server SHOULD NOT relay to private networks").
//!
//! This module owns the decision for one peer address and nothing else:
//! [`Cidr`], the network type used by the operator's allow and deny lists;
//! [`PeerPolicy`], the built-in special-purpose ranges plus those lists; and
//! [`Denial`], the reason a peer was refused (a metric label). It must not
//! touch I/O, DNS, the clock, logging or counters (the caller counts by
//! [`Denial::as_str`]), and it knows nothing about allocations or sockets.
//!
//! # Spellings of IPv4 addresses in IPv6
//!
//! CVE-2020-26262 (coturn) let clients reach the relay host's loopback by
//! spelling it `0.0.0.0` or `::ffff:127.0.0.1`. Here every IPv6 address that
//! embeds an IPv4 address is judged as the IPv4 address it reaches, its
//! *effective address*:
//!
//! | spelling | prefix | embedded IPv4 |
//! | --- | --- | --- |
//! | IPv4-mapped | `::ffff:0:0/96` | last 32 bits |
//! | IPv4-compatible (deprecated) | `::/96`, except `::` and `::1` | last 32 bits |
//! | IPv4-translated (SIIT) | `::ffff:0:0:0/96` | last 32 bits |
//! | NAT64 well-known prefix | `64:ff9b::/96` | last 32 bits |
//! | NAT64 local use (RFC 8215) | `64:ff9b:1::/48` | last 32 bits |
//! | 6to4 | `2002::/16` | bits 16..48 |
//!
//! Every other address (including `::` and `::1`) is its own effective address.
//!
//! The operator's lists follow one rule, chosen so that a list entry can only
//! ever *narrow* what an IPv4 address's other spellings reach:
//!
//! * **Allow entries are matched against the effective address only.** Allowing
//!   `127.0.0.0/8` allows `127.0.0.1`, `::ffff:127.0.0.1`, `::127.0.0.1`,
//!   `64:ff9b::7f00:1` and `2002:7f00:1::` alike. An IPv6 allow entry never
//!   matches an address that embeds IPv4, so a broad IPv6 allow such as `::/0`,
//!   `2000::/3` or `2002::/16` cannot reopen loopback or a private IPv4 network
//!   through a translation spelling.
//! * **Deny entries are matched against the effective address and against the
//!   address as written.** Denying `10.0.0.0/8` denies all its spellings;
//!   denying `64:ff9b::/96` or `2002::/16` refuses NAT64 or 6to4 as such.
//! * **An IPv4-mapped entry is an IPv4 entry.** [`PeerPolicy::allow`] and
//!   [`PeerPolicy::deny`] store `::ffff:a.b.c.d/96+n` as `a.b.c.d/n` (the
//!   mapped form is only a socket API spelling of IPv4), so allowing
//!   `::ffff:127.0.0.1` is the same as allowing `127.0.0.1`. Entries in the other
//!   translation prefixes stay IPv6: they name a route through a translator,
//!   not an IPv4 network, and as allow entries they have no effect.
//!
//! Precedence, for the effective address `e` and the written address `w`:
//! explicit allow (`e`) > explicit deny (`e` or `w`) > built-in deny (`e`) >
//! allow. Port 0 is refused before any of these.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address is
/// a host route).
///
/// The address is stored with its host bits cleared, so `10.1.2.3/8` and
/// `10.0.0.0/8` are the same network and both display as `10.0.0.0/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// The network of `prefix_len` leading bits of `addr`; the host bits are
    /// masked off. Fails if `prefix_len` exceeds 32 (IPv4) or 128 (IPv6).
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Cidr, CidrError> {
        let max = max_prefix_len(addr);
        if prefix_len > max {
            return Err(CidrError::PrefixTooLong {
                prefix_len: u32::from(prefix_len),
                max,
            });
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(prefix_len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(prefix_len))),
        };
        Ok(Cidr { addr, prefix_len })
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The number of leading bits that identify the network.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` lies in this network. Only addresses of the network's own
    /// family match: `10.0.0.0/8` does not contain `::ffff:10.0.0.1` here (the
    /// spelling rules live in [`PeerPolicy`]).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                (u32::from(net) ^ u32::from(ip)) & mask_v4(self.prefix_len) == 0
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                (u128::from(net) ^ u128::from(ip)) & mask_v6(self.prefix_len) == 0
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `ADDRESS/PREFIX_LEN` or a bare `ADDRESS` (a host route).
    /// The text is taken as is: no surrounding whitespace, no brackets, no
    /// IPv6 zone id, a prefix length in plain decimal digits.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            return Err(CidrError::Empty);
        }
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        if addr_text.is_empty() {
            return Err(CidrError::MissingAddress);
        }
        if addr_text.contains('%') {
            return Err(CidrError::ZoneId(addr_text.to_owned()));
        }
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError::InvalidAddress(addr_text.to_owned()))?;
        let prefix_len = match prefix_text {
            None => max_prefix_len(addr),
            Some("") => return Err(CidrError::MissingPrefixLength),
            Some(prefix) => parse_prefix_len(prefix, max_prefix_len(addr))?,
        };
        Cidr::new(addr, prefix_len)
    }
}

impl fmt::Display for Cidr {
    /// Always `ADDRESS/PREFIX_LEN`, e.g. `10.0.0.0/8`, `::1/128`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// What is wrong with the text of a network ([`Cidr`]).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CidrError {
    /// The text is empty.
    #[error("empty network: expected an address such as 10.0.0.0/8 or ::1")]
    Empty,
    /// Nothing before the `/`.
    #[error("missing address before '/'")]
    MissingAddress,
    /// A `/` with nothing after it, as in `1.2.3.4/`.
    #[error("missing prefix length after '/'")]
    MissingPrefixLength,
    /// The part before the `/` is not an IPv4 or IPv6 address.
    #[error("{0:?} is not an IPv4 or IPv6 address")]
    InvalidAddress(String),
    /// The address carries an IPv6 zone id (`fe80::1%eth0`), which names an
    /// interface, not a network.
    #[error("{0:?} has an IPv6 zone id ('%'), which a network cannot have")]
    ZoneId(String),
    /// The part after the `/` is not plain decimal digits (no sign, no
    /// leading zeros, no netmask).
    #[error("prefix length {0:?} is not a decimal number (digits only, no sign or leading zeros)")]
    InvalidPrefixLength(String),
    /// The prefix length exceeds the family's address width.
    #[error("prefix length {prefix_len} is larger than {max} for {}", family_name(*.max))]
    PrefixTooLong {
        /// The prefix length given (saturated at `u32::MAX`).
        prefix_len: u32,
        /// The largest prefix length of the address family: 32 or 128.
        max: u8,
    },
}

/// Why a peer address was refused. [`Denial::as_str`] gives the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Denial {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `0.0.0.0/8` ("this network"), `::`.
    Unspecified,
    /// RFC 1918: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    Private,
    /// RFC 6598 shared address space (carrier-grade NAT): `100.64.0.0/10`.
    SharedCgnat,
    /// `169.254.0.0/16` (including the cloud metadata service
    /// `169.254.169.254`), `fe80::/10`.
    LinkLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// The limited broadcast address `255.255.255.255`.
    Broadcast,
    /// IPv6 unique local addresses, `fc00::/7`.
    UniqueLocal,
    /// Other special-purpose space: `192.0.0.0/24`, `198.18.0.0/15`,
    /// `240.0.0.0/4`, `fec0::/10`, `100::/64`, Teredo `2001::/32`,
    /// `2001:2::/48`, `5f00::/16`.
    Reserved,
    /// Documentation ranges: `192.0.2.0/24`, `198.51.100.0/24`,
    /// `203.0.113.0/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// A network the operator denied ([`PeerPolicy::deny`]).
    DenyList,
    /// The peer's port is 0.
    Port0,
}

impl Denial {
    /// A stable snake_case label for metrics and logs, e.g. `"loopback"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Denial::Loopback => "loopback",
            Denial::Unspecified => "unspecified",
            Denial::Private => "private",
            Denial::SharedCgnat => "shared_cgnat",
            Denial::LinkLocal => "link_local",
            Denial::Multicast => "multicast",
            Denial::Broadcast => "broadcast",
            Denial::UniqueLocal => "unique_local",
            Denial::Reserved => "reserved",
            Denial::Documentation => "documentation",
            Denial::DenyList => "deny_list",
            Denial::Port0 => "port0",
        }
    }
}

impl fmt::Display for Denial {
    /// The same text as [`Denial::as_str`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which peer addresses the relay may send to: the built-in special-purpose
/// ranges (always on) plus the operator's allow and deny lists. See the
/// module documentation for how IPv6 spellings of IPv4 addresses are judged.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl PeerPolicy {
    /// The default: deny the built-in special-purpose ranges, nothing else.
    pub fn new() -> Self {
        PeerPolicy::default()
    }

    /// Networks to allow even if a built-in or configured deny would match
    /// (operator override, e.g. the relay's own public address or a lab
    /// network). An allow entry matches a peer's effective (IPv4 if embedded)
    /// address only; an IPv4-mapped entry (`::ffff:a.b.c.d/n`, n >= 96) is
    /// stored as the IPv4 network it spells.
    pub fn allow(&mut self, cidr: Cidr) {
        push_unique(&mut self.allow, unmap(cidr));
    }

    /// Additional networks to deny. A deny entry matches a peer's effective
    /// address and its address as written, so `10.0.0.0/8` also denies
    /// `::ffff:10.0.0.1` and `64:ff9b::/96` denies all NAT64 peers. An
    /// IPv4-mapped entry is stored as the IPv4 network it spells.
    pub fn deny(&mut self, cidr: Cidr) {
        push_unique(&mut self.deny, unmap(cidr));
    }

    /// Decides for a peer transport address: port 0 is refused, then the
    /// address is judged by [`PeerPolicy::check_ip`].
    ///
    /// Precedence: explicit allow > explicit deny > built-in deny > allow.
    pub fn check(&self, peer: SocketAddr) -> Result<(), Denial> {
        if peer.port() == 0 {
            return Err(Denial::Port0);
        }
        self.check_ip(peer.ip())
    }

    /// Decides for a peer IP address (ports are not considered).
    ///
    /// Precedence: explicit allow > explicit deny > built-in deny > allow.
    /// Does not allocate.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Denial> {
        let effective = effective_addr(ip);
        if self.allow.iter().any(|net| net.contains(effective)) {
            return Ok(());
        }
        if self
            .deny
            .iter()
            .any(|net| net.contains(effective) || net.contains(ip))
        {
            return Err(Denial::DenyList);
        }
        match builtin_denial(effective) {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }
}

/// Built-in IPv4 special-purpose ranges, first match wins (so the broadcast
/// host route precedes `240.0.0.0/4`).
const BUILTIN_V4: &[(u32, u8, Denial)] = &[
    (0xffff_ffff, 32, Denial::Broadcast),     // 255.255.255.255/32
    (0x0000_0000, 8, Denial::Unspecified),    // 0.0.0.0/8
    (0x7f00_0000, 8, Denial::Loopback),       // 127.0.0.0/8
    (0x0a00_0000, 8, Denial::Private),        // 10.0.0.0/8
    (0xac10_0000, 12, Denial::Private),       // 172.16.0.0/12
    (0xc0a8_0000, 16, Denial::Private),       // 192.168.0.0/16
    (0x6440_0000, 10, Denial::SharedCgnat),   // 100.64.0.0/10
    (0xa9fe_0000, 16, Denial::LinkLocal),     // 169.254.0.0/16
    (0xc000_0000, 24, Denial::Reserved),      // 192.0.0.0/24
    (0xc000_0200, 24, Denial::Documentation), // 192.0.2.0/24
    (0xc633_6400, 24, Denial::Documentation), // 198.51.100.0/24
    (0xcb00_7100, 24, Denial::Documentation), // 203.0.113.0/24
    (0xc612_0000, 15, Denial::Reserved),      // 198.18.0.0/15
    (0xe000_0000, 4, Denial::Multicast),      // 224.0.0.0/4
    (0xf000_0000, 4, Denial::Reserved),       // 240.0.0.0/4
];

/// Built-in IPv6 special-purpose ranges for native IPv6 addresses (those that
/// embed IPv4 are judged by the IPv4 table), first match wins.
const BUILTIN_V6: &[(u128, u8, Denial)] = &[
    (0, 128, Denial::Unspecified),                       // ::/128
    (1, 128, Denial::Loopback),                          // ::1/128
    (0xfc00_u128 << 112, 7, Denial::UniqueLocal),        // fc00::/7
    (0xfe80_u128 << 112, 10, Denial::LinkLocal),         // fe80::/10
    (0xfec0_u128 << 112, 10, Denial::Reserved),          // fec0::/10
    (0xff00_u128 << 112, 8, Denial::Multicast),          // ff00::/8
    (0x2001_0db8_u128 << 96, 32, Denial::Documentation), // 2001:db8::/32
    (0x3fff_u128 << 112, 20, Denial::Documentation),     // 3fff::/20
    (0x0100_u128 << 112, 64, Denial::Reserved),          // 100::/64
    (0x2001_0000_u128 << 96, 32, Denial::Reserved),      // 2001::/32 Teredo
    (0x2001_0002_0000_u128 << 80, 48, Denial::Reserved), // 2001:2::/48
    (0x5f00_u128 << 112, 16, Denial::Reserved),          // 5f00::/16 SRv6 SIDs
];

/// The widest prefix length of `addr`'s family.
fn max_prefix_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn family_name(max: u8) -> &'static str {
    if max == 32 {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// The netmask of an IPv4 prefix length (0..=32).
fn mask_v4(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32_u32.saturating_sub(u32::from(prefix_len)))
        .unwrap_or(0)
}

/// The netmask of an IPv6 prefix length (0..=128).
fn mask_v6(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128_u32.saturating_sub(u32::from(prefix_len)))
        .unwrap_or(0)
}

/// Parses the decimal prefix length after the `/`, at most `max`.
fn parse_prefix_len(text: &str, max: u8) -> Result<u8, CidrError> {
    let invalid = || CidrError::InvalidPrefixLength(text.to_owned());
    if !text.bytes().all(|b| b.is_ascii_digit()) || (text.len() > 1 && text.starts_with('0')) {
        return Err(invalid());
    }
    let value = text.bytes().fold(0_u32, |acc, b| {
        acc.saturating_mul(10).saturating_add(u32::from(b - b'0'))
    });
    let too_long = CidrError::PrefixTooLong {
        prefix_len: value,
        max,
    };
    match u8::try_from(value) {
        Ok(len) if len <= max => Ok(len),
        _ => Err(too_long),
    }
}

/// The IPv4 address embedded in an IPv6 translation spelling, if any (see
/// the table in the module documentation). `::` and `::1` embed nothing.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    // Truncations below are intended: they select the embedded 32 bits.
    let last32 = Ipv4Addr::from(bits as u32);
    match bits >> 32 {
        // IPv4-compatible ::/96, which excludes :: and ::1 (RFC 4291 §2.5.5.1).
        0 if bits > 1 => return Some(last32),
        // IPv4-mapped ::ffff:0:0/96.
        0xffff => return Some(last32),
        // IPv4-translated ::ffff:0:0:0/96 (RFC 2765).
        0xffff_0000 => return Some(last32),
        // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052).
        0x0064_ff9b_0000_0000_0000_0000 => return Some(last32),
        _ => {}
    }
    if bits >> 80 == 0x0064_ff9b_0001 {
        // NAT64 local-use 64:ff9b:1::/48 (RFC 8215), /96 format.
        return Some(last32);
    }
    if bits >> 112 == 0x2002 {
        // 6to4 2002::/16 (RFC 3056): the IPv4 address is bits 16..48.
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

/// The address a peer is judged as: the embedded IPv4 address of an IPv6
/// translation spelling, otherwise the address itself.
fn effective_addr(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6).map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// An IPv4-mapped network (`::ffff:a.b.c.d/n`, n >= 96) as the IPv4 network
/// it spells; any other network unchanged.
fn unmap(cidr: Cidr) -> Cidr {
    if let IpAddr::V6(v6) = cidr.addr {
        if cidr.prefix_len >= 96 && u128::from(v6) >> 32 == 0xffff {
            if let Ok(v4) = Cidr::new(
                IpAddr::V4(Ipv4Addr::from(u128::from(v6) as u32)),
                cidr.prefix_len - 96,
            ) {
                return v4;
            }
        }
    }
    cidr
}

fn push_unique(list: &mut Vec<Cidr>, cidr: Cidr) {
    if !list.contains(&cidr) {
        list.push(cidr);
    }
}

/// The built-in reason to refuse an effective address, if any.
fn builtin_denial(ip: IpAddr) -> Option<Denial> {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            BUILTIN_V4
                .iter()
                .find(|(net, len, _)| (bits ^ net) & mask_v4(*len) == 0)
                .map(|(_, _, reason)| *reason)
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            BUILTIN_V6
                .iter()
                .find(|(net, len, _)| (bits ^ net) & mask_v6(*len) == 0)
                .map(|(_, _, reason)| *reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn default_check(text: &str) -> Result<(), Denial> {
        PeerPolicy::new().check_ip(ip(text))
    }

    fn mapped(v4: Ipv4Addr) -> IpAddr {
        IpAddr::V6(v4.to_ipv6_mapped())
    }

    /// Every spelling of `v4` that the policy decodes, except IPv4-compatible
    /// (whose `::` and `::1` are native IPv6 addresses).
    fn spellings(v4: Ipv4Addr) -> [IpAddr; 5] {
        let b = u128::from(u32::from(v4));
        [
            IpAddr::V6(Ipv6Addr::from(0xffff_u128 << 32 | b)),
            IpAddr::V6(Ipv6Addr::from(0xffff_0000_u128 << 32 | b)),
            IpAddr::V6(Ipv6Addr::from(0x0064_ff9b_u128 << 96 | b)),
            IpAddr::V6(Ipv6Addr::from(
                0x0064_ff9b_0001_u128 << 80 | 0xabcd_u128 << 32 | b,
            )),
            IpAddr::V6(Ipv6Addr::from(0x2002_u128 << 112 | b << 80 | 0x1234)),
        ]
    }

    #[test]
    fn the_named_dangerous_addresses_are_denied() {
        let cases = [
            ("127.0.0.1", Denial::Loopback),
            ("0.0.0.0", Denial::Unspecified),
            ("::ffff:127.0.0.1", Denial::Loopback),
            ("::ffff:7f00:1", Denial::Loopback),
            ("::1", Denial::Loopback),
            ("::", Denial::Unspecified),
            ("::127.0.0.1", Denial::Loopback),
            ("::2", Denial::Unspecified),
            ("::a00:1", Denial::Private),
            ("::ffff:0:7f00:1", Denial::Loopback),
            ("64:ff9b::7f00:1", Denial::Loopback),
            ("64:ff9b:1::7f00:1", Denial::Loopback),
            ("2002:7f00:1::", Denial::Loopback),
            ("169.254.169.254", Denial::LinkLocal),
            ("::ffff:169.254.169.254", Denial::LinkLocal),
            ("64:ff9b::a9fe:a9fe", Denial::LinkLocal),
            ("::ffff:0.0.0.0", Denial::Unspecified),
            ("2002::", Denial::Unspecified),
            ("::ffff:10.1.2.3", Denial::Private),
            ("255.255.255.255", Denial::Broadcast),
            ("::ffff:255.255.255.255", Denial::Broadcast),
            ("2001::1", Denial::Reserved),
        ];
        for (text, reason) in cases {
            assert_eq!(default_check(text), Err(reason), "{text}");
        }
        let socket: SocketAddr = "[::1]:3478".parse().unwrap();
        assert_eq!(PeerPolicy::new().check(socket), Err(Denial::Loopback));
        let socket: SocketAddr = "[::ffff:127.0.0.1]:3478".parse().unwrap();
        assert_eq!(PeerPolicy::new().check(socket), Err(Denial::Loopback));
    }

    #[test]
    fn every_builtin_ipv4_range_is_denied_in_every_spelling() {
        let ranges = [
            ("0.0.0.0/8", Denial::Unspecified),
            ("127.0.0.0/8", Denial::Loopback),
            ("10.0.0.0/8", Denial::Private),
            ("172.16.0.0/12", Denial::Private),
            ("192.168.0.0/16", Denial::Private),
            ("100.64.0.0/10", Denial::SharedCgnat),
            ("169.254.0.0/16", Denial::LinkLocal),
            ("192.0.0.0/24", Denial::Reserved),
            ("192.0.2.0/24", Denial::Documentation),
            ("198.51.100.0/24", Denial::Documentation),
            ("203.0.113.0/24", Denial::Documentation),
            ("198.18.0.0/15", Denial::Reserved),
            ("224.0.0.0/4", Denial::Multicast),
            ("240.0.0.0/4", Denial::Reserved),
            ("255.255.255.255/32", Denial::Broadcast),
        ];
        let policy = PeerPolicy::new();
        for (text, reason) in ranges {
            let net = cidr(text);
            let IpAddr::V4(first) = net.addr() else {
                panic!("{text} is not IPv4")
            };
            let size_minus_one = !mask_v4(net.prefix_len());
            let last = Ipv4Addr::from(u32::from(first) | size_minus_one);
            let mut last_reason = reason;
            if last == Ipv4Addr::BROADCAST {
                last_reason = Denial::Broadcast;
            }
            for (addr, want) in [(first, reason), (last, last_reason)] {
                assert_eq!(
                    policy.check_ip(IpAddr::V4(addr)),
                    Err(want),
                    "{addr} in {text}"
                );
                for spelled in spellings(addr) {
                    assert_eq!(policy.check_ip(spelled), Err(want), "{spelled} in {text}");
                }
            }
        }
        // Neighbours of private ranges that are public.
        for public in [
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "11.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "1.0.0.0",
        ] {
            assert_eq!(policy.check_ip(ip(public)), Ok(()), "{public}");
        }
    }

    #[test]
    fn builtin_tables_are_exactly_the_documented_ranges() {
        let v4: Vec<String> = BUILTIN_V4
            .iter()
            .map(|(net, len, _)| Cidr::new(IpAddr::V4(Ipv4Addr::from(*net)), *len).unwrap())
            .map(|net| net.to_string())
            .collect();
        let want_v4 = [
            "255.255.255.255/32",
            "0.0.0.0/8",
            "127.0.0.0/8",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "169.254.0.0/16",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "198.18.0.0/15",
            "224.0.0.0/4",
            "240.0.0.0/4",
        ];
        assert_eq!(v4, want_v4);
        let v6: Vec<String> = BUILTIN_V6
            .iter()
            .map(|(net, len, _)| Cidr::new(IpAddr::V6(Ipv6Addr::from(*net)), *len).unwrap())
            .map(|net| net.to_string())
            .collect();
        let want_v6 = [
            "::/128",
            "::1/128",
            "fc00::/7",
            "fe80::/10",
            "fec0::/10",
            "ff00::/8",
            "2001:db8::/32",
            "3fff::/20",
            "100::/64",
            "2001::/32",
            "2001:2::/48",
            "5f00::/16",
        ];
        assert_eq!(v6, want_v6);
        // No table entry has host bits set.
        for (net, len, _) in BUILTIN_V4 {
            assert_eq!(net & !mask_v4(*len), 0);
        }
        for (net, len, _) in BUILTIN_V6 {
            assert_eq!(net & !mask_v6(*len), 0);
        }
    }

    #[test]
    fn every_builtin_ipv6_range_is_denied() {
        let ranges = [
            ("::/128", Denial::Unspecified),
            ("::1/128", Denial::Loopback),
            ("fc00::/7", Denial::UniqueLocal),
            ("fe80::/10", Denial::LinkLocal),
            ("fec0::/10", Denial::Reserved),
            ("ff00::/8", Denial::Multicast),
            ("2001:db8::/32", Denial::Documentation),
            ("3fff::/20", Denial::Documentation),
            ("100::/64", Denial::Reserved),
            ("2001::/32", Denial::Reserved),
            ("2001:2::/48", Denial::Reserved),
            ("5f00::/16", Denial::Reserved),
        ];
        let policy = PeerPolicy::new();
        for (text, reason) in ranges {
            let net = cidr(text);
            let IpAddr::V6(first) = net.addr() else {
                panic!("{text} is not IPv6")
            };
            let last = Ipv6Addr::from(u128::from(first) | !mask_v6(net.prefix_len()));
            for addr in [first, last] {
                assert_eq!(
                    policy.check_ip(IpAddr::V6(addr)),
                    Err(reason),
                    "{addr} in {text}"
                );
            }
        }
        for public in [
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "2001:db9::1",
            "fbff::1",
            "fe7f::1",
            "2001:1::1",
            "2001:3::1",
            "100:0:0:1::1",
        ] {
            assert_eq!(policy.check_ip(ip(public)), Ok(()), "{public}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for text in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(default_check(text), Ok(()), "{text}");
        }
        let peer: SocketAddr = "8.8.8.8:3478".parse().unwrap();
        assert_eq!(PeerPolicy::default().check(peer), Ok(()));
    }

    #[test]
    fn port_zero_is_denied_even_when_allowed() {
        let mut policy = PeerPolicy::new();
        policy.allow(cidr("0.0.0.0/0"));
        policy.allow(cidr("::/0"));
        for text in ["8.8.8.8:0", "[2606:4700::1111]:0", "127.0.0.1:0"] {
            let peer: SocketAddr = text.parse().unwrap();
            assert_eq!(policy.check(peer), Err(Denial::Port0), "{text}");
        }
        assert_eq!(policy.check("127.0.0.1:1".parse().unwrap()), Ok(()));
    }

    #[test]
    fn allow_overrides_builtin_deny_in_every_spelling() {
        let mut policy = PeerPolicy::new();
        policy.allow(cidr("127.0.0.0/8"));
        for text in [
            "127.0.0.1",
            "127.255.0.1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
        ] {
            assert_eq!(policy.check_ip(ip(text)), Ok(()), "{text}");
        }
        assert_eq!(policy.check_ip(ip("::1")), Err(Denial::Loopback));
        assert_eq!(policy.check_ip(ip("10.0.0.1")), Err(Denial::Private));
    }

    #[test]
    fn a_mapped_allow_entry_is_an_ipv4_entry() {
        let mut policy = PeerPolicy::new();
        policy.allow(cidr("::ffff:10.0.0.0/104"));
        assert_eq!(policy.check_ip(ip("10.9.8.7")), Ok(()));
        assert_eq!(policy.check_ip(ip("::ffff:10.9.8.7")), Ok(()));
        assert_eq!(policy.check_ip(ip("11.0.0.1")), Ok(()));
        assert_eq!(policy.check_ip(ip("192.168.0.1")), Err(Denial::Private));
        assert_eq!(unmap(cidr("::ffff:127.0.0.1")), cidr("127.0.0.1/32"));
        assert_eq!(unmap(cidr("::ffff:0:0/96")), cidr("0.0.0.0/0"));
        assert_eq!(unmap(cidr("::ffff:0:0/95")), cidr("::ffff:0:0/95"));
        assert_eq!(unmap(cidr("64:ff9b::/96")), cidr("64:ff9b::/96"));
    }

    #[test]
    fn broad_ipv6_allows_do_not_reopen_embedded_ipv4() {
        let mut policy = PeerPolicy::new();
        policy.allow(cidr("::/0"));
        policy.allow(cidr("2002::/16"));
        policy.allow(cidr("64:ff9b::/96"));
        for text in [
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "::ffff:0:a00:1",
        ] {
            assert_ne!(policy.check_ip(ip(text)), Ok(()), "{text}");
        }
        // Native IPv6 is opened by ::/0, as asked.
        assert_eq!(policy.check_ip(ip("::1")), Ok(()));
        assert_eq!(policy.check_ip(ip("fe80::1")), Ok(()));
    }

    #[test]
    fn deny_list_matches_every_spelling_and_translation_prefixes() {
        let mut policy = PeerPolicy::new();
        policy.deny(cidr("8.8.8.0/24"));
        for text in [
            "8.8.8.8",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::",
        ] {
            assert_eq!(policy.check_ip(ip(text)), Err(Denial::DenyList), "{text}");
        }
        assert_eq!(policy.check_ip(ip("8.8.4.4")), Ok(()));

        let mut policy = PeerPolicy::new();
        policy.deny(cidr("64:ff9b::/96"));
        policy.deny(cidr("2002::/16"));
        policy.deny(cidr("2606:4700::/32"));
        for text in ["64:ff9b::808:808", "2002:808:808::", "2606:4700::1111"] {
            assert_eq!(policy.check_ip(ip(text)), Err(Denial::DenyList), "{text}");
        }
        // The NAT64 prefix as IPv6 does not deny the IPv4 addresses themselves.
        assert_eq!(policy.check_ip(ip("8.8.8.8")), Ok(()));
        assert_eq!(policy.check_ip(ip("::ffff:8.8.8.8")), Ok(()));
        // A mapped deny entry is an IPv4 entry.
        let mut policy = PeerPolicy::new();
        policy.deny(cidr("::ffff:1.1.1.1"));
        assert_eq!(policy.check_ip(ip("1.1.1.1")), Err(Denial::DenyList));
        assert_eq!(
            policy.check_ip(ip("64:ff9b::101:101")),
            Err(Denial::DenyList)
        );
    }

    #[test]
    fn deny_list_reason_precedes_builtin_and_allow_precedes_deny() {
        let mut policy = PeerPolicy::new();
        policy.deny(cidr("10.0.0.0/8"));
        assert_eq!(policy.check_ip(ip("10.1.1.1")), Err(Denial::DenyList));
        policy.allow(cidr("10.1.0.0/16"));
        assert_eq!(policy.check_ip(ip("10.1.1.1")), Ok(()));
        assert_eq!(policy.check_ip(ip("::ffff:10.1.1.1")), Ok(()));
        assert_eq!(policy.check_ip(ip("10.2.1.1")), Err(Denial::DenyList));
        // Duplicates are stored once.
        policy.allow(cidr("10.1.0.0/16"));
        policy.allow(cidr("::ffff:10.1.0.0/112"));
        assert_eq!(policy.allow.len(), 1);
    }

    #[test]
    fn cidr_new_masks_host_bits_and_rejects_long_prefixes() {
        let net = Cidr::new(ip("10.1.2.3"), 8).unwrap();
        assert_eq!(net.addr(), ip("10.0.0.0"));
        assert_eq!(net.prefix_len(), 8);
        assert_eq!(net, cidr("10.0.0.0/8"));
        assert_eq!(cidr("10.1.2.3/8"), net);
        assert_eq!(Cidr::new(ip("1.2.3.4"), 0).unwrap(), cidr("0.0.0.0/0"));
        assert_eq!(
            Cidr::new(ip("2001:db8::1"), 32).unwrap().addr(),
            ip("2001:db8::")
        );
        assert_eq!(
            Cidr::new(ip("1.2.3.4"), 33),
            Err(CidrError::PrefixTooLong {
                prefix_len: 33,
                max: 32
            })
        );
        assert_eq!(
            Cidr::new(ip("::"), 129),
            Err(CidrError::PrefixTooLong {
                prefix_len: 129,
                max: 128
            })
        );
        assert!(Cidr::new(ip("::"), 128).is_ok());
    }

    #[test]
    fn cidr_contains_is_same_family_only() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.255.255.255")));
        assert!(!net.contains(ip("11.0.0.0")));
        assert!(!net.contains(ip("::ffff:10.0.0.1")));
        assert!(cidr("0.0.0.0/0").contains(ip("255.255.255.255")));
        assert!(!cidr("0.0.0.0/0").contains(ip("::")));
        assert!(cidr("::/0").contains(ip("ffff::1")));
        assert!(!cidr("::/0").contains(ip("0.0.0.0")));
        assert!(cidr("::1").contains(ip("::1")));
        assert!(!cidr("::1").contains(ip("::2")));
    }

    #[test]
    fn cidr_parses_and_displays() {
        let cases = [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("1.2.3.4", "1.2.3.4/32"),
            ("::1", "::1/128"),
            ("::/0", "::/0"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:DB8::/32", "2001:db8::/32"),
            ("192.168.1.77/24", "192.168.1.0/24"),
            ("::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104"),
            ("fe80::1/10", "fe80::/10"),
        ];
        for (text, shown) in cases {
            let net = cidr(text);
            assert_eq!(net.to_string(), shown, "{text}");
            assert_eq!(cidr(shown), net, "{text}");
        }
    }

    #[test]
    fn cidr_parse_errors_say_what_is_wrong() {
        let cases = [
            ("", CidrError::Empty),
            ("/8", CidrError::MissingAddress),
            ("1.2.3.4/", CidrError::MissingPrefixLength),
            ("::1/", CidrError::MissingPrefixLength),
            ("garbage", CidrError::InvalidAddress("garbage".into())),
            ("1.2.3/8", CidrError::InvalidAddress("1.2.3".into())),
            ("010.0.0.0/8", CidrError::InvalidAddress("010.0.0.0".into())),
            (" 10.0.0.0/8", CidrError::InvalidAddress(" 10.0.0.0".into())),
            ("[::1]/128", CidrError::InvalidAddress("[::1]".into())),
            ("fe80::1%eth0", CidrError::ZoneId("fe80::1%eth0".into())),
            ("fe80::1%2/64", CidrError::ZoneId("fe80::1%2".into())),
            (
                "1.2.3.4/33",
                CidrError::PrefixTooLong {
                    prefix_len: 33,
                    max: 32,
                },
            ),
            (
                "::/129",
                CidrError::PrefixTooLong {
                    prefix_len: 129,
                    max: 128,
                },
            ),
            (
                "1.2.3.4/256",
                CidrError::PrefixTooLong {
                    prefix_len: 256,
                    max: 32,
                },
            ),
            (
                "1.2.3.4/99999999999999",
                CidrError::PrefixTooLong {
                    prefix_len: u32::MAX,
                    max: 32,
                },
            ),
            ("1.2.3.4/+8", CidrError::InvalidPrefixLength("+8".into())),
            ("1.2.3.4/-1", CidrError::InvalidPrefixLength("-1".into())),
            ("1.2.3.4/08", CidrError::InvalidPrefixLength("08".into())),
            ("1.2.3.4/8 ", CidrError::InvalidPrefixLength("8 ".into())),
            ("1.2.3.4/8/9", CidrError::InvalidPrefixLength("8/9".into())),
            (
                "10.0.0.0/255.0.0.0",
                CidrError::InvalidPrefixLength("255.0.0.0".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Cidr>(), Err(want), "{text:?}");
        }
        assert_eq!(
            "1.2.3.4/33".parse::<Cidr>().unwrap_err().to_string(),
            "prefix length 33 is larger than 32 for IPv4"
        );
        assert_eq!(
            "::/200".parse::<Cidr>().unwrap_err().to_string(),
            "prefix length 200 is larger than 128 for IPv6"
        );
        assert_eq!(
            "nope/8".parse::<Cidr>().unwrap_err().to_string(),
            "\"nope\" is not an IPv4 or IPv6 address"
        );
        assert!("fe80::1%eth0/64"
            .parse::<Cidr>()
            .unwrap_err()
            .to_string()
            .contains("zone id"));
    }

    #[test]
    fn denial_labels_are_distinct_snake_case() {
        let all = [
            Denial::Loopback,
            Denial::Unspecified,
            Denial::Private,
            Denial::SharedCgnat,
            Denial::LinkLocal,
            Denial::Multicast,
            Denial::Broadcast,
            Denial::UniqueLocal,
            Denial::Reserved,
            Denial::Documentation,
            Denial::DenyList,
            Denial::Port0,
        ];
        for (i, a) in all.iter().enumerate() {
            let label = a.as_str();
            assert!(label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert_eq!(a.to_string(), label);
            for b in &all[i + 1..] {
                assert_ne!(label, b.as_str());
            }
        }
    }

    fn arb_cidr() -> impl Strategy<Value = Cidr> {
        prop_oneof![
            (any::<u32>(), 0_u8..=32).prop_map(|(a, len)| (IpAddr::V4(Ipv4Addr::from(a)), len)),
            (any::<u128>(), 0_u8..=128).prop_map(|(a, len)| (IpAddr::V6(Ipv6Addr::from(a)), len)),
            // Addresses in the translation prefixes, which display specially.
            (any::<u32>(), 0_u8..=128).prop_map(|(a, len)| (mapped(Ipv4Addr::from(a)), len)),
            (any::<u32>(), 0_u8..=128)
                .prop_map(|(a, len)| (IpAddr::V6(Ipv6Addr::from(u128::from(a))), len)),
        ]
        .prop_map(|(addr, len)| Cidr::new(addr, len).unwrap())
    }

    /// A policy with some operator entries in both families and spellings.
    fn configured_policy() -> PeerPolicy {
        let mut policy = PeerPolicy::new();
        policy.allow(cidr("127.0.0.0/9"));
        policy.allow(cidr("::ffff:192.168.1.0/120"));
        policy.allow(cidr("::/0"));
        policy.deny(cidr("8.0.0.0/8"));
        policy.deny(cidr("::ffff:1.0.0.0/104"));
        policy.deny(cidr("2606::/16"));
        policy
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(net in arb_cidr()) {
            prop_assert_eq!(net.to_string().parse::<Cidr>(), Ok(net));
        }

        #[test]
        fn contains_agrees_with_masking(net in arb_cidr(), bits in any::<u128>()) {
            let probe = match net.addr() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(bits as u32)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(bits)),
            };
            let same_net = Cidr::new(probe, net.prefix_len()).unwrap() == net;
            prop_assert_eq!(net.contains(probe), same_net);
            prop_assert!(net.contains(net.addr()));
        }

        #[test]
        fn mapped_spelling_is_judged_like_ipv4(a in any::<u32>()) {
            let v4 = Ipv4Addr::from(a);
            for policy in [PeerPolicy::new(), configured_policy()] {
                prop_assert_eq!(policy.check_ip(mapped(v4)), policy.check_ip(IpAddr::V4(v4)));
            }
        }

        #[test]
        fn every_ipv4_spelling_is_judged_like_ipv4(a in any::<u32>()) {
            let v4 = Ipv4Addr::from(a);
            for policy in [PeerPolicy::new(), configured_policy()] {
                let want = policy.check_ip(IpAddr::V4(v4));
                for spelled in spellings(v4) {
                    prop_assert_eq!(policy.check_ip(spelled), want, "{}", spelled);
                }
                if a > 1 {
                    let compat = IpAddr::V6(Ipv6Addr::from(u128::from(a)));
                    prop_assert_eq!(policy.check_ip(compat), want);
                }
            }
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in any::<String>()) {
            let _ = text.parse::<Cidr>();
        }

        #[test]
        fn parsing_address_like_text_never_panics(text in "[0-9a-fA-F:./%]{0,48}") {
            if let Ok(net) = text.parse::<Cidr>() {
                prop_assert_eq!(net.to_string().parse::<Cidr>(), Ok(net));
            }
        }
    }
}
