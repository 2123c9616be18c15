//! The program's per-CPU counters: one per (verdict, reason), in the order of
//! `enum tern_reason` in `src/bpf/tern.bpf.c`, with the labels the relay
//! exports (`tern_xdp_packets_total{verdict,reason}`).

/// What the program did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Up the kernel's stack (XDP_PASS).
    Pass,
    /// Into an AF_XDP socket (XDP_REDIRECT).
    Redirect,
    /// Dropped at the driver (XDP_DROP).
    Drop,
}

impl Verdict {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Redirect => "redirect",
            Verdict::Drop => "drop",
        }
    }
}

/// One counter of the program (`enum tern_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Counter {
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    PassNotIp = 0,
    /// IP, not UDP (TCP, ICMP, ND).
    PassNotUdp,
    /// UDP to a port that is not tern's.
    PassOtherPort,
    /// Too short or malformed to find the UDP ports: the kernel decides.
    PassUnparsed,
    /// An IPv4 fragment.
    PassFragment,
    /// IPv6 with extension headers.
    PassIpv6Ext,
    /// Sane STUN to a listening port.
    PassStun,
    /// Sane ChannelData to a listening port.
    PassChannelData,
    /// To the relay range, no AF_XDP socket for the queue.
    PassRelay,
    /// Sane STUN, redirected to AF_XDP.
    RedirectStun,
    /// Sane ChannelData, redirected to AF_XDP.
    RedirectChannelData,
    /// Relay range, redirected to AF_XDP.
    RedirectRelay,
    /// UDP length disagrees with the IP length or the frame.
    DropUdpLength,
    /// Shorter than the STUN or ChannelData header.
    DropTruncated,
    /// First byte neither STUN (0–3) nor ChannelData (64–127), RFC 7983.
    DropFirstByte,
    /// STUN without the magic cookie.
    DropStunCookie,
    /// STUN length not a multiple of 4 or not the datagram's.
    DropStunLength,
    /// ChannelData channel above the configured range.
    DropChannelNumber,
    /// ChannelData length that does not fit the datagram.
    DropChannelLength,
    /// Unauthenticated STUN request over its source's limit.
    DropUnauthFlood,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 20] = [
        Counter::PassNotIp,
        Counter::PassNotUdp,
        Counter::PassOtherPort,
        Counter::PassUnparsed,
        Counter::PassFragment,
        Counter::PassIpv6Ext,
        Counter::PassStun,
        Counter::PassChannelData,
        Counter::PassRelay,
        Counter::RedirectStun,
        Counter::RedirectChannelData,
        Counter::RedirectRelay,
        Counter::DropUdpLength,
        Counter::DropTruncated,
        Counter::DropFirstByte,
        Counter::DropStunCookie,
        Counter::DropStunLength,
        Counter::DropChannelNumber,
        Counter::DropChannelLength,
        Counter::DropUnauthFlood,
    ];

    /// The verdict this counter counts.
    pub fn verdict(self) -> Verdict {
        use Counter::*;
        match self {
            PassNotIp | PassNotUdp | PassOtherPort | PassUnparsed | PassFragment | PassIpv6Ext
            | PassStun | PassChannelData | PassRelay => Verdict::Pass,
            RedirectStun | RedirectChannelData | RedirectRelay => Verdict::Redirect,
            DropUdpLength | DropTruncated | DropFirstByte | DropStunCookie | DropStunLength
            | DropChannelNumber | DropChannelLength | DropUnauthFlood => Verdict::Drop,
        }
    }

    /// The reason label.
    pub fn reason(self) -> &'static str {
        use Counter::*;
        match self {
            PassNotIp => "not_ip",
            PassNotUdp => "not_udp",
            PassOtherPort => "other_port",
            PassUnparsed => "unparsed",
            PassFragment => "fragment",
            PassIpv6Ext => "ipv6_ext",
            PassStun | RedirectStun => "stun",
            PassChannelData | RedirectChannelData => "channel_data",
            PassRelay | RedirectRelay => "relay_port",
            DropUdpLength => "udp_length",
            DropTruncated => "truncated",
            DropFirstByte => "first_byte",
            DropStunCookie => "stun_cookie",
            DropStunLength => "stun_length",
            DropChannelNumber => "channel_number",
            DropChannelLength => "channel_length",
            DropUnauthFlood => "unauth_flood",
        }
    }
}

/// A snapshot of every counter, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters([u64; Counter::ALL.len()]);

impl Counters {
    /// One counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// Every counter with its value, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().map(|c| (*c, self.get(*c)))
    }

    /// All frames of one verdict.
    pub fn total(&self, v: Verdict) -> u64 {
        self.iter()
            .filter(|(c, _)| c.verdict() == v)
            .map(|(_, n)| n)
            .sum()
    }

    /// What changed since `earlier` (counters only grow; a wrap reads as 0).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut d = Counters::default();
        for c in Counter::ALL {
            d.0[c as usize] = self.get(c).saturating_sub(earlier.get(c));
        }
        d
    }

    pub(crate) fn set(&mut self, c: Counter, v: u64) {
        self.0[c as usize] = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_labels_unique_per_verdict() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        let mut seen = std::collections::HashSet::new();
        for c in Counter::ALL {
            assert!(seen.insert((c.verdict(), c.reason())), "{c:?}");
        }
    }

    #[test]
    fn the_c_enum_has_the_same_order() {
        let src = include_str!("bpf/tern.bpf.c");
        let start = src.find("enum tern_reason {").unwrap();
        let body = &src[start..start + src[start..].find("};").unwrap()];
        let names: Vec<&str> = body
            .lines()
            .skip(1)
            .filter_map(|l| l.trim().split([',', ' ', '\t']).next())
            .filter(|n| n.starts_with("R_") && *n != "R_COUNT")
            .collect();
        assert_eq!(names.len(), Counter::ALL.len());
        for (name, c) in names.iter().zip(Counter::ALL) {
            let expect = format!(
                "R_{}_{}",
                c.verdict().label().to_uppercase(),
                match c {
                    Counter::PassRelay | Counter::RedirectRelay => "RELAY".to_string(),
                    other => other.reason().to_uppercase(),
                }
            );
            assert_eq!(*name, expect);
        }
    }
}
