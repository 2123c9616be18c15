//! Token buckets: the per-allocation bandwidth cap and the per-source limit on
//! 401 challenges. Time comes in as an argument.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A token bucket refilled continuously at `rate` tokens per second, holding at
/// most `burst` tokens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn full(burst: u64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    /// Take `n` tokens if there are that many.
    pub(crate) fn take(&mut self, n: u64, rate: u64, burst: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        // Refill in whole tokens; keep the remainder of time by advancing `last` only
        // by the time those tokens represent.
        let add = (elapsed.as_nanos().saturating_mul(u128::from(rate)) / 1_000_000_000) as u64;
        if add > 0 {
            self.tokens = self.tokens.saturating_add(add).min(burst);
            if self.tokens == burst {
                self.last = now;
            } else {
                self.last += Duration::from_nanos(
                    (u128::from(add) * 1_000_000_000 / u128::from(rate.max(1))) as u64,
                );
            }
        }
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// At most `rate` events per second per source IP, burst twice that. The table is
/// bounded: when full, buckets that have refilled completely are forgotten, and if
/// none has, the table is cleared (a flood from many sources then gets through for
/// one refill interval — the worst case is a burst of challenges, not memory growth).
#[derive(Debug)]
pub(crate) struct SourceLimiter {
    rate: u64,
    buckets: HashMap<IpAddr, TokenBucket, ahash::RandomState>,
    cap: usize,
}

impl SourceLimiter {
    pub(crate) fn new(rate: u32, cap: usize, seed: [u64; 4]) -> Self {
        Self {
            rate: u64::from(rate),
            buckets: HashMap::with_hasher(ahash::RandomState::with_seeds(
                seed[0], seed[1], seed[2], seed[3],
            )),
            cap,
        }
    }

    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let burst = self.rate * 2;
        if self.buckets.len() >= self.cap && !self.buckets.contains_key(&ip) {
            let window = Duration::from_secs(2);
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.last) < window);
            if self.buckets.len() >= self.cap {
                self.buckets.clear();
            }
        }
        self.buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::full(burst, now))
            .take(1, self.rate, burst, now)
    }
}

#[cfg(test)]
// Virtual time needs one real Instant as its origin; nothing here reads the clock after.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn bucket_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(1000, t0);
        assert!(b.take(1000, 1000, 1000, t0));
        assert!(!b.take(1, 1000, 1000, t0));
        // 0.5 ms at 1000/s is half a token: still nothing.
        assert!(!b.take(1, 1000, 1000, t0 + Duration::from_micros(500)));
        assert!(b.take(1, 1000, 1000, t0 + Duration::from_millis(1)));
        // After 10 s the bucket is full again but no fuller.
        let t1 = t0 + Duration::from_secs(10);
        assert!(b.take(1000, 1000, 1000, t1));
        assert!(!b.take(1, 1000, 1000, t1));
    }

    #[test]
    fn limiter_per_source_and_bounded() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(5, 4, [1, 2, 3, 4]);
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let allowed = (0..100).filter(|_| l.allow(a, t0)).count();
        assert_eq!(allowed, 10);
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        assert!(l.allow(b, t0));
        for i in 0..100u8 {
            l.allow(IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)), t0);
            assert!(l.buckets.len() <= 4);
        }
        assert!(l.allow(a, t0 + Duration::from_secs(1)));
    }
}
