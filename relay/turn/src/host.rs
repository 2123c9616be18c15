//! What the core needs from the operating system, as a trait the worker implements.
//!
//! The core never opens sockets or touches shared state itself: binding relay
//! sockets, keeping EVEN-PORT reservations that another shard may claim, and
//! quotas that span shards all go through [`Host`]. Virtual-time tests fake it.

use std::net::SocketAddr;

/// Why a relay socket could not be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BindError {
    /// The port is taken (by another process or shard); the core tries another.
    InUse,
    /// Any other failure (out of file descriptors, permission); the core gives up
    /// on this Allocate with 508 Insufficient Capacity.
    Other,
}

/// A quota that spans shards was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuotaError {
    /// The relay-wide allocation limit (answered with 508 Insufficient Capacity).
    Total,
    /// The per-user allocation limit (answered with 486 Allocation Quota Reached).
    PerUser,
}

/// The operating-system side of one shard, implemented by the worker.
pub trait Host {
    /// Bind a UDP relay socket on exactly `addr`.
    fn bind_relay(&mut self, addr: SocketAddr) -> Result<(), BindError>;
    /// Close a relay socket bound earlier, because its allocation ended.
    fn close_relay(&mut self, addr: SocketAddr);
    /// Keep the bound socket `addr` aside under `token` (EVEN-PORT with the R bit)
    /// so that a later Allocate, possibly on another shard, can claim it.
    fn reserve_relay(&mut self, token: [u8; 8], addr: SocketAddr);
    /// Take over a reserved socket; it becomes one of this shard's relay sockets.
    fn claim_reserved(&mut self, token: [u8; 8]) -> Option<SocketAddr>;
    /// Drop a reservation that expired; closes its socket if nobody claimed it.
    fn cancel_reservation(&mut self, token: [u8; 8]);
    /// Count one more allocation for `user` against the relay-wide quotas.
    fn acquire_allocation(&mut self, user: &str) -> Result<(), QuotaError>;
    /// Give back what [`Host::acquire_allocation`] took.
    fn release_allocation(&mut self, user: &str);

    /// RFC 6062: listen for TCP peer connections on exactly `addr` (the
    /// relayed address of a TCP allocation). Accepted connections are reported
    /// with [`crate::Server::handle_peer_incoming`]. Hosts without TCP
    /// relaying keep the default, and TCP Allocates fail with 508.
    fn bind_relay_tcp(&mut self, addr: SocketAddr) -> Result<(), BindError> {
        let _ = addr;
        Err(BindError::Other)
    }
    /// Stop listening on a TCP relayed address.
    fn close_relay_tcp(&mut self, addr: SocketAddr) {
        let _ = addr;
    }
    /// RFC 6062 Connect: open a TCP connection from `relay` to `peer`, and
    /// report how it went with [`crate::Server::handle_peer_connected`].
    fn connect_peer(&mut self, id: crate::ConnectionId, relay: SocketAddr, peer: SocketAddr) {
        let _ = (id, relay, peer);
    }
    /// Close peer connection `id` (and the client data connection bound to it).
    fn close_peer_connection(&mut self, id: crate::ConnectionId) {
        let _ = id;
    }
    /// ConnectionBind succeeded: once the response queued now is written, the
    /// client connection `data` carries raw bytes to and from peer connection `id`.
    fn bind_data_connection(&mut self, id: crate::ConnectionId, data: crate::FiveTuple) {
        let _ = (id, data);
    }
}
