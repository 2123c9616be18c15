//! The only state workers share: relay-wide allocation quotas and EVEN-PORT
//! reservations (sockets set aside for a later Allocate, possibly on another
//! worker).
//!
//! It sits behind one `Mutex`, and that is deliberate: it is touched only when
//! an allocation is made or freed, or a reservation is made, claimed or
//! cancelled — never per relayed packet. The packet path of every worker runs
//! without locks.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::{Mutex, MutexGuard};

use tern_turn::QuotaError;

/// Quotas and reservations shared by all workers of one relay.
#[derive(Debug)]
pub(crate) struct Shared {
    max_total: usize,
    max_per_user: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    per_user: HashMap<String, usize>,
    reservations: HashMap<[u8; 8], UdpSocket>,
}

impl Shared {
    /// Limits of 0 mean "no limit".
    pub(crate) fn new(max_total: usize, max_per_user: usize) -> Self {
        Shared {
            max_total,
            max_per_user,
            state: Mutex::new(State::default()),
        }
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
