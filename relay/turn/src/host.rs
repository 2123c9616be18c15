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
}
