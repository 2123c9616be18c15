//! The only state workers share: relay-wide allocation quotas, EVEN-PORT
//! reservations (sockets set aside for a later Allocate, possibly on another
//! worker), and the relay-wide TCP/TLS connection limits (in total and per
//! source address: the kernel spreads one source's connections over every
//! worker's listener, so only a shared count can cap them).
//!
//! It sits behind one `Mutex`, and that is deliberate: it is touched only when
//! an allocation is made or freed, a reservation is made, claimed or
//! cancelled, or a connection is accepted or closed — never per relayed
//! packet. The packet path of every worker runs without locks.

use std::collections::HashMap;
use std::net::{IpAddr, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crossbeam::channel::{Sender, TrySendError};
use tern_io::Wake;

use crate::stream::Handoff;

use tern_turn::QuotaError;

/// Quotas and reservations shared by all workers of one relay.
#[derive(Debug)]
pub(crate) struct Shared {
    max_total: usize,
    max_per_user: usize,
    max_connections: usize,
    max_connections_per_source: usize,
    state: Mutex<State>,
    /// RFC 6062: each worker's queue of data connections handed to it (a
    /// ConnectionBind that landed on another worker), and its waker. Set once
    /// every worker runs.
    handoffs: OnceLock<Handoffs>,
}

/// Every worker's handoff queue and waker.
struct Handoffs(Vec<(Sender<Handoff>, Arc<dyn Wake>)>);

impl std::fmt::Debug for Handoffs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Handoffs({} workers)", self.0.len())
    }
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    per_user: HashMap<String, usize>,
    reservations: HashMap<[u8; 8], UdpSocket>,
    connections: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// Which connection limit refused a new TCP/TLS connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionLimit {
    /// `max-connections`, relay-wide.
    Total,
    /// `max-connections-per-source`, one client IP.
    PerSource,
}

impl Shared {
    /// Limits of 0 mean "no limit".
    pub(crate) fn new(max_total: usize, max_per_user: usize) -> Self {
        Shared {
            max_total,
            max_per_user,
            max_connections: 0,
            max_connections_per_source: 0,
            state: Mutex::new(State::default()),
            handoffs: OnceLock::new(),
        }
    }

    /// Cap TCP/TLS connections relay-wide and per source IP (0: no cap).
    pub(crate) fn with_connection_limits(mut self, total: usize, per_source: usize) -> Self {
        self.max_connections = total;
        self.max_connections_per_source = per_source;
        self
    }

    /// Count one more connection from `source`, or refuse it.
    pub(crate) fn acquire_connection(&self, source: IpAddr) -> Result<(), ConnectionLimit> {
        let mut s = self.lock();
        if self.max_connections != 0 && s.connections >= self.max_connections {
            return Err(ConnectionLimit::Total);
        }
        let count = s.per_source.get(&source).copied().unwrap_or(0);
        if self.max_connections_per_source != 0 && count >= self.max_connections_per_source {
            return Err(ConnectionLimit::PerSource);
        }
        s.connections += 1;
        *s.per_source.entry(source).or_insert(0) += 1;
        Ok(())
    }

    /// Give back one connection of `source`.
    pub(crate) fn release_connection(&self, source: IpAddr) {
        let mut s = self.lock();
        s.connections = s.connections.saturating_sub(1);
        if let Some(n) = s.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                s.per_source.remove(&source);
            }
        }
    }

    /// Install every worker's handoff queue and waker (once, at start).
    pub(crate) fn set_handoffs(&self, queues: Vec<(Sender<Handoff>, Arc<dyn Wake>)>) {
        let _set_once = self.handoffs.set(Handoffs(queues));
    }

    /// Hand a data connection to worker `to`; gives it back when the queue
    /// is full or the worker unknown (the caller closes it and counts).
    pub(crate) fn hand_off(&self, to: usize, handoff: Handoff) -> Result<(), Handoff> {
        let Some((tx, waker)) = self.handoffs.get().and_then(|q| q.0.get(to)) else {
            return Err(handoff);
        };
        match tx.try_send(handoff) {
            Ok(()) => {
                let _woken_or_stopping = waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(h) | TrySendError::Disconnected(h)) => Err(h),
        }
    }

    /// TCP/TLS connections counted relay-wide.
    pub(crate) fn connections(&self) -> usize {
        self.lock().connections
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker that panicked while holding the lock left counters that are
        // still plain numbers; keep going with them.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Count one more allocation for `user`, or refuse if a quota is reached.
    pub(crate) fn acquire(&self, user: &str) -> Result<(), QuotaError> {
        let mut s = self.lock();
        if self.max_total != 0 && s.total >= self.max_total {
            return Err(QuotaError::Total);
        }
        let count = s.per_user.get(user).copied().unwrap_or(0);
        if self.max_per_user != 0 && count >= self.max_per_user {
            return Err(QuotaError::PerUser);
        }
        s.total += 1;
        *s.per_user.entry(user.to_owned()).or_insert(0) += 1;
        Ok(())
    }

    /// Give back one allocation of `user`.
    pub(crate) fn release(&self, user: &str) {
        let mut s = self.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                s.per_user.remove(user);
            }
        }
    }

    /// Live allocations counted relay-wide.
    pub(crate) fn total(&self) -> usize {
        self.lock().total
    }

    /// Keep `socket` under `token` until claimed or cancelled.
    pub(crate) fn reserve(&self, token: [u8; 8], socket: UdpSocket) {
        self.lock().reservations.insert(token, socket);
    }

    /// Take the socket reserved under `token`.
    pub(crate) fn take_reservation(&self, token: [u8; 8]) -> Option<UdpSocket> {
        self.lock().reservations.remove(&token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_total_and_per_user() {
        let s = Shared::new(3, 2);
        s.acquire("a").unwrap();
        s.acquire("a").unwrap();
        assert_eq!(s.acquire("a"), Err(QuotaError::PerUser));
        s.acquire("b").unwrap();
        assert_eq!(s.acquire("c"), Err(QuotaError::Total));
        s.release("a");
        s.acquire("c").unwrap();
        assert_eq!(s.total(), 3);
        s.release("a");
        s.release("b");
        s.release("c");
        assert_eq!(s.total(), 0);
        assert!(s.lock().per_user.is_empty());
    }

    #[test]
    fn connection_limits_total_and_per_source() {
        let s = Shared::new(0, 0).with_connection_limits(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        s.acquire_connection(a).unwrap();
        s.acquire_connection(a).unwrap();
        assert_eq!(s.acquire_connection(a), Err(ConnectionLimit::PerSource));
        s.acquire_connection(b).unwrap();
        assert_eq!(s.acquire_connection(b), Err(ConnectionLimit::Total));
        s.release_connection(a);
        s.acquire_connection(b).unwrap();
        assert_eq!(s.connections(), 3);
        for ip in [a, b, b] {
            s.release_connection(ip);
        }
        assert_eq!(s.connections(), 0);
        assert!(s.lock().per_source.is_empty());
    }

    #[test]
    fn unlimited_when_zero() {
        let s = Shared::new(0, 0);
        for _ in 0..1000 {
            s.acquire("a").unwrap();
        }
    }

    #[test]
    fn reservations_are_taken_once() {
        let s = Shared::new(0, 0);
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        s.reserve([1; 8], sock);
        assert_eq!(
            s.take_reservation([1; 8]).unwrap().local_addr().unwrap(),
            addr
        );
        assert!(s.take_reservation([1; 8]).is_none());
    }
}
