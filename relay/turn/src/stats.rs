//! Plain counters one shard keeps; the daemon merges and exports them.
//!
//! No atomics: a shard's counters are written by its own thread only; the
//! side thread reads copies the worker hands over.

use crate::auth::AuthFailure;

/// Why a datagram was dropped without an answer; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// A zero-length datagram.
    Empty,
    /// The first byte fits no RFC 7983 class we serve.
    UnknownClass,
    /// Not a well-formed STUN message (framing, cookie, length, fingerprint).
    MalformedStun,
    /// Not a well-formed ChannelData message.
    MalformedChannelData,
    /// A STUN response or an indication other than Send sent to the server.
    UnexpectedStun,
    /// ChannelData or Send from a 5-tuple with no allocation.
    NoAllocation,
    /// ChannelData on a channel number that is not bound (or expired).
    UnboundChannel,
    /// A channel number outside the accepted range.
    ChannelOutOfRange,
    /// Data to or from a peer without a permission.
    NoPermission,
    /// A Send indication without XOR-PEER-ADDRESS or DATA, or with a bad one.
    MalformedSend,
    /// The peer's family has no relayed address in this allocation.
    FamilyMismatch,
    /// Over the allocation's bandwidth cap.
    Bandwidth,
    /// A peer datagram on a relay port that has no allocation.
    UnknownRelay,
    /// Over the per-source rate of unauthenticated requests.
    RateLimited,
    /// The caller's buffer was too small for the header we must add.
    NoRoom,
    /// ChannelData or Send on a TCP allocation (RFC 6062 relays on peer connections).
    TcpAllocation,
}

impl DropReason {
    /// Every variant, for exporting counters.
    pub const ALL: [DropReason; 16] = [
        DropReason::Empty,
        DropReason::UnknownClass,
        DropReason::MalformedStun,
        DropReason::MalformedChannelData,
        DropReason::UnexpectedStun,
        DropReason::NoAllocation,
        DropReason::UnboundChannel,
        DropReason::ChannelOutOfRange,
        DropReason::NoPermission,
        DropReason::MalformedSend,
        DropReason::FamilyMismatch,
        DropReason::Bandwidth,
        DropReason::UnknownRelay,
        DropReason::RateLimited,
        DropReason::NoRoom,
        DropReason::TcpAllocation,
    ];

    /// The metric label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::Empty => "empty",
            DropReason::UnknownClass => "unknown_class",
            DropReason::MalformedStun => "malformed_stun",
            DropReason::MalformedChannelData => "malformed_channel_data",
            DropReason::UnexpectedStun => "unexpected_stun",
            DropReason::NoAllocation => "no_allocation",
            DropReason::UnboundChannel => "unbound_channel",
            DropReason::ChannelOutOfRange => "channel_out_of_range",
            DropReason::NoPermission => "no_permission",
            DropReason::MalformedSend => "malformed_send",
            DropReason::FamilyMismatch => "family_mismatch",
            DropReason::Bandwidth => "bandwidth",
            DropReason::UnknownRelay => "unknown_relay",
            DropReason::RateLimited => "rate_limited",
            DropReason::NoRoom => "no_room",
            DropReason::TcpAllocation => "tcp_allocation",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeleteReason {
    /// Its lifetime ran out.
    Expired,
    /// The client sent Refresh with LIFETIME 0.
    Refresh,
    /// The client's TCP or TLS connection closed (RFC 8656 §3.1: the
    /// allocation lives only as long as its connection).
    ConnectionClosed,
}

/// Counters of one shard. Add two with [`Stats::merge`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Allocations made.
    pub allocations_created: u64,
    /// Allocations ended by expiry.
    pub allocations_expired: u64,
    /// Allocations ended by Refresh with LIFETIME 0.
    pub allocations_deleted: u64,
    /// Permissions installed (new, not refreshed).
    pub permissions_created: u64,
    /// Channels bound (new, not refreshed).
    pub channels_bound: u64,
    /// STUN requests handled.
    pub requests: u64,
    /// Binding requests answered.
    pub binding_requests: u64,
    /// Responses resent from the transaction cache.
    pub retransmits_answered: u64,
    /// Error responses sent, by class: index = code / 100 - 3 (3xx, 4xx, 5xx, 6xx).
    pub error_responses: [u64; 4],
    /// Allocates refused by a quota (486) or capacity limit (508).
    pub quota_rejections: u64,
    /// Peers refused by the peer policy (403).
    pub peer_denied: u64,
    /// Datagrams relayed client → peer.
    pub packets_to_peer: u64,
    /// Payload bytes relayed client → peer.
    pub bytes_to_peer: u64,
    /// Datagrams relayed peer → client.
    pub packets_to_client: u64,
    /// Payload bytes relayed peer → client.
    pub bytes_to_client: u64,
    /// Of `packets_to_client`, how many went as ChannelData (the rest as Data indications).
    pub channel_data_to_client: u64,
    /// RFC 6062 peer connections spliced to a client data connection.
    pub tcp_connections_bound: u64,
    /// The same counters split by client transport, indexed by
    /// [`crate::Transport::index`].
    pub by_transport: [TransportStats; crate::Transport::ALL.len()],
    drops: [u64; DropReason::ALL.len()],
    auth_failures: [u64; AuthFailure::ALL.len()],
}

/// Counters of one client transport (a `transport` metric label).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Allocations made over this transport.
    pub allocations_created: u64,
    /// Allocations of this transport that ended, whatever the reason.
    pub allocations_ended: u64,
    /// Messages relayed client → peer.
    pub packets_to_peer: u64,
    /// Messages relayed peer → client.
    pub packets_to_client: u64,
}

impl TransportStats {
    /// Allocations of this transport alive now.
    pub fn live(&self) -> u64 {
        self.allocations_created
            .saturating_sub(self.allocations_ended)
    }
}

impl Stats {
    /// Datagrams dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// Requests that failed authentication for `reason`.
    pub fn auth_failures(&self, reason: AuthFailure) -> u64 {
        self.auth_failures[reason.index()]
    }

    /// All drops, whatever the reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Add `other`'s counters to these.
    pub fn merge(&mut self, other: &Stats) {
        let Stats {
            allocations_created,
            allocations_expired,
            allocations_deleted,
            permissions_created,
            channels_bound,
            requests,
            binding_requests,
            retransmits_answered,
            error_responses,
            quota_rejections,
            peer_denied,
            packets_to_peer,
            bytes_to_peer,
            packets_to_client,
            bytes_to_client,
            channel_data_to_client,
            tcp_connections_bound,
            by_transport,
            drops,
            auth_failures,
        } = other;
        self.allocations_created += allocations_created;
        self.allocations_expired += allocations_expired;
        self.allocations_deleted += allocations_deleted;
        self.permissions_created += permissions_created;
        self.channels_bound += channels_bound;
        self.requests += requests;
        self.binding_requests += binding_requests;
        self.retransmits_answered += retransmits_answered;
        for (a, b) in self.error_responses.iter_mut().zip(error_responses) {
            *a += b;
        }
        self.quota_rejections += quota_rejections;
        self.peer_denied += peer_denied;
        self.packets_to_peer += packets_to_peer;
        self.bytes_to_peer += bytes_to_peer;
        self.packets_to_client += packets_to_client;
        self.bytes_to_client += bytes_to_client;
        self.channel_data_to_client += channel_data_to_client;
        self.tcp_connections_bound += tcp_connections_bound;
        for (a, b) in self.by_transport.iter_mut().zip(by_transport) {
            a.allocations_created += b.allocations_created;
            a.allocations_ended += b.allocations_ended;
            a.packets_to_peer += b.packets_to_peer;
            a.packets_to_client += b.packets_to_client;
        }
        for (a, b) in self.drops.iter_mut().zip(drops) {
            *a += b;
        }
        for (a, b) in self.auth_failures.iter_mut().zip(auth_failures) {
            *a += b;
        }
    }

    pub(crate) fn drop(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }

    pub(crate) fn auth_failure(&mut self, reason: AuthFailure) {
        self.auth_failures[reason.index()] += 1;
    }

    pub(crate) fn error_response(&mut self, code: u16) {
        if let Some(slot) = usize::from(code / 100)
            .checked_sub(3)
            .and_then(|i| self.error_responses.get_mut(i))
        {
            *slot += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_everything() {
        let mut a = Stats::default();
        a.drop(DropReason::Empty);
        a.auth_failure(AuthFailure::Expired);
        a.error_response(438);
        a.packets_to_peer = 3;
        let mut b = a.clone();
        b.merge(&a);
        assert_eq!(b.drops(DropReason::Empty), 2);
        assert_eq!(b.auth_failures(AuthFailure::Expired), 2);
        assert_eq!(b.error_responses, [0, 2, 0, 0]);
        assert_eq!(b.packets_to_peer, 6);
        assert_eq!(b.total_drops(), 2);
    }

    #[test]
    fn labels_are_unique() {
        let mut seen: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), DropReason::ALL.len());
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        for (i, r) in AuthFailure::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
