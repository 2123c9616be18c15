//! The settings one shard's [`Server`](crate::Server) runs with.
//!
//! Plain data, validated by the daemon's config loader; nothing here reads
//! files or the environment.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::auth::Credentials;
use crate::policy::PeerPolicy;

/// Everything a shard needs to answer TURN requests.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The REALM of long-term credentials.
    pub realm: String,
    /// Sent as the SOFTWARE attribute in responses, when set.
    pub software: Option<String>,
    /// Long-term users and REST (`use-auth-secret`) secrets.
    pub credentials: Credentials,
    /// Which peers clients may reach.
    pub peer_policy: PeerPolicy,
    /// Relayed transport addresses per family: what to bind, what to advertise.
    pub relay: RelayAddresses,
    /// This shard's slice of the relay port range.
    pub relay_ports: RelayPortRange,
    /// Per-shard cap on allocations (508 when reached); 0 means no cap.
    pub max_allocations: usize,
    /// Bytes per second each way per allocation; 0 means no cap. Excess is dropped and counted.
    pub bandwidth_per_allocation: u64,
    /// Accept only RFC 8656 channel numbers 0x4000–0x4FFF (else RFC 5766's 0x4000–0x7FFF too).
    pub strict_channel_range: bool,
    /// Allocation lifetime when the client asks for less or nothing (RFC 8656: 600 s).
    pub default_lifetime: Duration,
    /// The longest lifetime granted (RFC 8656 suggests 3600 s).
    pub max_lifetime: Duration,
    /// How long a NONCE stays valid before 438 Stale Nonce.
    pub nonce_lifetime: Duration,
    /// 401 challenges per second per source IP (burst twice that); excess requests are
    /// dropped. 100/s lets a corporate NAT full of clients through while a spoofed
    /// flood cannot turn the relay into a 401 reflector at line rate.
    pub unauth_rate: u32,
    /// Sent in 300 Try Alternate to new Allocates while draining.
    pub alternate_server: Option<SocketAddr>,
    /// Most permissions one allocation may hold (508 beyond).
    pub max_permissions_per_allocation: usize,
    /// Most channel bindings one allocation may hold (508 beyond).
    pub max_channels_per_allocation: usize,
    /// Offer RFC 6062 TCP allocations (REQUESTED-TRANSPORT TCP, Connect,
    /// ConnectionBind) to TCP and TLS clients; without it they get 442.
    pub tcp_relay: bool,
    /// This shard's number (0-255), the low byte of every CONNECTION-ID it
    /// hands out, so a ConnectionBind that lands on another shard can be
    /// routed to this one.
    pub shard: u8,
}

impl ServerConfig {
    /// A configuration with RFC defaults for `realm`, relaying on `relay`.
    pub fn new(
        realm: impl Into<String>,
        relay: RelayAddresses,
        relay_ports: RelayPortRange,
    ) -> Self {
        Self {
            realm: realm.into(),
            software: None,
            credentials: Credentials::new(),
            peer_policy: PeerPolicy::new(),
            relay,
            relay_ports,
            max_allocations: 0,
            bandwidth_per_allocation: 0,
            strict_channel_range: false,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            nonce_lifetime: Duration::from_secs(600),
            unauth_rate: 100,
            alternate_server: None,
            max_permissions_per_allocation: 64,
            max_channels_per_allocation: 256,
            tcp_relay: false,
            shard: 0,
        }
    }
}

/// Relayed transport addresses the shard may hand out, per family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayAddresses {
    /// IPv4 relaying, if enabled.
    pub v4: Option<RelayAddress<Ipv4Addr>>,
    /// IPv6 relaying, if enabled.
    pub v6: Option<RelayAddress<Ipv6Addr>>,
}

/// One family's relay address: the local address sockets bind, and the one put in
/// XOR-RELAYED-ADDRESS (they differ behind 1:1 NAT, e.g. an EC2 Elastic IP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayAddress<A> {
    /// The local address relay sockets bind to.
    pub bind: A,
    /// The address clients and peers see.
    pub advertised: A,
}

impl<A: Copy> RelayAddress<A> {
    /// Bind and advertise the same address.
    pub fn same(addr: A) -> Self {
        Self {
            bind: addr,
            advertised: addr,
        }
    }
}

/// An inclusive range of UDP ports for relay sockets, never containing port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayPortRange {
    lo: u16,
    hi: u16,
}

/// A relay port range that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortRangeError {
    /// Port 0 is not a port.
    #[error("port 0 cannot be a relay port")]
    Zero,
    /// The low end is above the high end.
    #[error("low end {lo} is above high end {hi}")]
    Inverted {
        /// The low end given.
        lo: u16,
        /// The high end given.
        hi: u16,
    },
}

impl RelayPortRange {
    /// The ports `lo..=hi`.
    pub fn new(lo: u16, hi: u16) -> Result<Self, PortRangeError> {
        if lo == 0 {
            return Err(PortRangeError::Zero);
        }
        if lo > hi {
            return Err(PortRangeError::Inverted { lo, hi });
        }
        Ok(Self { lo, hi })
    }

    /// The lowest port.
    pub fn lo(&self) -> u16 {
        self.lo
    }

    /// The highest port.
    pub fn hi(&self) -> u16 {
        self.hi
    }

    /// How many ports the range holds.
    pub fn len(&self) -> usize {
        usize::from(self.hi - self.lo) + 1
    }

    /// Always false: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }

    /// Split into `n` contiguous slices of nearly equal size, one per shard.
    /// Returns fewer slices when the range holds fewer than `n` ports.
    pub fn split(&self, n: usize) -> Vec<RelayPortRange> {
        let n = n.max(1).min(self.len());
        let base = self.len() / n;
        let extra = self.len() % n;
        let mut out = Vec::with_capacity(n);
        let mut lo = usize::from(self.lo);
        for i in 0..n {
            let size = base + usize::from(i < extra);
            let hi = lo + size - 1;
            // Both ends lie inside the original u16 range, so the casts are lossless.
            out.push(RelayPortRange {
                lo: lo as u16,
                hi: hi as u16,
            });
            lo = hi + 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_rejects_zero_and_inverted() {
        assert_eq!(RelayPortRange::new(0, 10), Err(PortRangeError::Zero));
        assert_eq!(
            RelayPortRange::new(10, 9),
            Err(PortRangeError::Inverted { lo: 10, hi: 9 })
        );
        assert_eq!(RelayPortRange::new(7, 7).map(|r| r.len()), Ok(1));
    }

    #[test]
    fn split_covers_range_without_overlap() {
        let r = RelayPortRange::new(49152, 65535).unwrap();
        for n in 1..9 {
            let parts = r.split(n);
            assert_eq!(parts.len(), n);
            assert_eq!(parts[0].lo(), 49152);
            assert_eq!(parts[n - 1].hi(), 65535);
            for w in parts.windows(2) {
                assert_eq!(w[0].hi() + 1, w[1].lo());
            }
            let total: usize = parts.iter().map(|p| p.len()).sum();
            assert_eq!(total, r.len());
        }
    }

    #[test]
    fn split_more_shards_than_ports() {
        let r = RelayPortRange::new(100, 102).unwrap();
        let parts = r.split(8);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() == 1));
    }
}
