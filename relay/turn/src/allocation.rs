//! One TURN allocation (RFC 8656 §2.2) with its permissions and channel bindings.
//!
//! Owns: per-allocation tables and their expiry. Lookups on the packet path are
//! linear scans over small, capped vectors: no hashing of attacker-chosen keys,
//! no allocation per packet.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::auth::Key;
use crate::channel::ChannelNumber;
use crate::limit::TokenBucket;

/// How long a permission lives (RFC 8656 §9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a channel binding lives (RFC 8656 §12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// After a binding expires, neither its number nor its peer may be rebound to
/// something else for this long (RFC 8656 §12).
pub const CHANNEL_QUARANTINE: Duration = Duration::from_secs(300);

/// The client side of an allocation: the client's address, the listener it
/// reached us on, and the transport between the two.
///
/// Over UDP the five-tuple names a flow of datagrams; over TCP and TLS it names
/// one connection (the kernel never has two live connections on one
/// four-tuple), and the allocation ends when that connection closes
/// ([`crate::Server::handle_client_closed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    /// The client's (server-reflexive) transport address.
    pub client: SocketAddr,
    /// Our listening address the client sent to.
    pub listener: SocketAddr,
    /// How the client reaches us.
    pub transport: Transport,
}

impl FiveTuple {
    /// A UDP five-tuple.
    pub fn udp(client: SocketAddr, listener: SocketAddr) -> Self {
        FiveTuple {
            client,
            listener,
            transport: Transport::Udp,
        }
    }

    /// Where messages to this client leave from.
    pub fn via(&self) -> crate::Via {
        match self.transport {
            Transport::Udp => crate::Via::Listener(self.listener),
            Transport::Tcp | Transport::Tls => crate::Via::Stream(self.listener),
            Transport::Dtls => crate::Via::Dtls(self.listener),
        }
    }
}

/// The transport between a client and the server (RFC 8656 §3.1: the client
/// transport; the relayed transport towards peers is UDP whatever this is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// Datagrams on a UDP listener.
    Udp,
    /// A TCP connection (RFC 8656 §3.1, framing of RFC 8656 §12.5).
    Tcp,
    /// TLS over a TCP connection (`turns:`).
    Tls,
    /// DTLS over UDP (RFC 7350): one association per client address; messages
    /// are datagrams (no ChannelData padding), sent by the host's DTLS layer.
    Dtls,
}

impl Transport {
    /// Every transport, in index order, for exporting counters.
    pub const ALL: [Transport; 4] = [
        Transport::Udp,
        Transport::Tcp,
        Transport::Tls,
        Transport::Dtls,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Dtls => "dtls",
        }
    }

    /// Whether messages travel on a byte stream (ChannelData padded to 4 bytes).
    pub fn is_stream(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    /// A dense index (`Transport::ALL[t.index()] == t`).
    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Permission {
    pub(crate) ip: IpAddr,
    pub(crate) expires: Instant,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelBinding {
    pub(crate) number: ChannelNumber,
    pub(crate) peer: SocketAddr,
    pub(crate) expires: Instant,
}

impl ChannelBinding {
    fn usable(&self, now: Instant) -> bool {
        now < self.expires
    }
    fn reserved(&self, now: Instant) -> bool {
        now < self.expires + CHANNEL_QUARANTINE
    }
}

/// Why a ChannelBind cannot be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindConflict {
    /// The number is bound to another peer, or the peer to another number.
    Conflict,
    /// The allocation holds as many channels as allowed.
    Full,
}

pub(crate) struct Allocation {
    pub(crate) five_tuple: FiveTuple,
    pub(crate) username: Box<str>,
    pub(crate) key: Key,
    pub(crate) expires: Instant,
    /// Local bind addresses of the relay sockets (IPv4, IPv6).
    pub(crate) relay_v4: Option<SocketAddr>,
    pub(crate) relay_v6: Option<SocketAddr>,
    pub(crate) permissions: Vec<Permission>,
    pub(crate) channels: Vec<ChannelBinding>,
    pub(crate) to_peer_bucket: TokenBucket,
    pub(crate) to_client_bucket: TokenBucket,
    pub(crate) packets_to_peer: u64,
    pub(crate) packets_to_client: u64,
    pub(crate) created: Instant,
    /// An RFC 6062 TCP allocation: the relayed address is a TCP listener and
    /// data moves on peer connections, not in ChannelData or Send.
    pub(crate) tcp: bool,
}

impl Allocation {
    pub(crate) fn relay_for(&self, peer: &SocketAddr) -> Option<SocketAddr> {
        if peer.is_ipv4() {
            self.relay_v4
        } else {
            self.relay_v6
        }
    }

    pub(crate) fn has_family_of(&self, ip: &IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.relay_v4.is_some(),
            IpAddr::V6(_) => self.relay_v6.is_some(),
        }
    }

    pub(crate) fn has_permission(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions
            .iter()
            .any(|p| p.ip == ip && now < p.expires)
    }

    /// Install or refresh a permission; false when the table is full.
    pub(crate) fn permit(&mut self, ip: IpAddr, now: Instant, cap: usize) -> PermitResult {
        let expires = now + PERMISSION_LIFETIME;
        if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
            // An expired entry not swept yet is reinstalled: a new permission.
            let live = now < p.expires;
            p.expires = expires;
            return if live {
                PermitResult::Refreshed
            } else {
                PermitResult::Created
            };
        }
        self.permissions.retain(|p| now < p.expires);
        if self.permissions.len() >= cap {
            return PermitResult::Full;
        }
        self.permissions.push(Permission { ip, expires });
        PermitResult::Created
    }

    /// Whether a permission for `ip` could be installed (refresh, free slot, or an
    /// expired one to reuse) without changing anything.
    pub(crate) fn can_permit(&self, ip: IpAddr, now: Instant, cap: usize) -> bool {
        self.permissions.iter().any(|p| p.ip == ip)
            || self.permissions.iter().filter(|p| now < p.expires).count() < cap
    }

    pub(crate) fn channel_by_number(&self, number: u16, now: Instant) -> Option<&ChannelBinding> {
        self.channels
            .iter()
            .find(|c| c.number.get() == number && c.usable(now))
    }

    pub(crate) fn channel_by_peer(&self, peer: &SocketAddr, now: Instant) -> Option<ChannelNumber> {
        self.channels
            .iter()
            .find(|c| c.peer == *peer && c.usable(now))
            .map(|c| c.number)
    }

    /// Check a ChannelBind without changing anything.
    pub(crate) fn check_bind(
        &self,
        number: ChannelNumber,
        peer: SocketAddr,
        now: Instant,
        cap: usize,
    ) -> Result<(), BindConflict> {
        let mut live = 0;
        for c in self.channels.iter().filter(|c| c.reserved(now)) {
            live += 1;
            let same_number = c.number == number;
            let same_peer = c.peer == peer;
            if same_number != same_peer {
                return Err(BindConflict::Conflict);
            }
            if same_number {
                return Ok(());
            }
        }
        if live >= cap {
            return Err(BindConflict::Full);
        }
        Ok(())
    }

    /// Bind or refresh, after `check_bind` said yes. Returns true for a new binding.
    pub(crate) fn bind(&mut self, number: ChannelNumber, peer: SocketAddr, now: Instant) -> bool {
        let expires = now + CHANNEL_LIFETIME;
        if let Some(c) = self
            .channels
            .iter_mut()
            .find(|c| c.number == number && c.peer == peer)
        {
            // Rebinding the same pair after expiry (during quarantine) is a new binding.
            let was_usable = c.usable(now);
            c.expires = expires;
            return !was_usable;
        }
        self.channels.retain(|c| c.reserved(now));
        self.channels.push(ChannelBinding {
            number,
            peer,
            expires,
        });
        true
    }
}

/// What [`Allocation::permit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PermitResult {
    Created,
    Refreshed,
    Full,
}
