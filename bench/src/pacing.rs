//! Rate pacing: a token bucket per sender thread, driven by a clock the
//! caller passes in (so tests can drive it with a fake one).
//!
//! Tokens accrue at `rate` per second up to `depth`; what would overflow the
//! bucket is counted as *missed*: the generator was not there to send it in
//! time, which is the send shortfall the report shows.

/// A token bucket over nanosecond timestamps.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    per_ns: f64,
    depth: f64,
    tokens: f64,
    last_ns: u64,
    missed: f64,
}

impl TokenBucket {
    /// A bucket filling at `rate_pps` tokens per second, holding at most
    /// `depth` (at least 1), starting empty at `now_ns`.
    pub fn new(rate_pps: f64, depth: f64, now_ns: u64) -> TokenBucket {
        TokenBucket {
            per_ns: rate_pps.max(0.0) / 1e9,
            depth: depth.max(1.0),
            tokens: 0.0,
            last_ns: now_ns,
            missed: 0.0,
        }
    }

    /// Accrue tokens up to `now_ns` (an earlier time is ignored).
    pub fn refill(&mut self, now_ns: u64) {
        if now_ns <= self.last_ns {
            return;
        }
        self.tokens += (now_ns - self.last_ns) as f64 * self.per_ns;
        self.last_ns = now_ns;
        if self.tokens > self.depth {
            self.missed += self.tokens - self.depth;
            self.tokens = self.depth;
        }
    }

    /// Take up to `max` whole tokens; returns how many were taken.
    pub fn take(&mut self, max: u64) -> u64 {
        let n = (self.tokens.floor() as u64).min(max);
        self.tokens -= n as f64;
        n
    }

    /// Nanoseconds until one whole token is available (0 if one is).
    pub fn wait_ns(&self) -> u64 {
        if self.tokens >= 1.0 || self.per_ns <= 0.0 {
            return 0;
        }
        ((1.0 - self.tokens) / self.per_ns).ceil() as u64
    }

    /// Tokens that overflowed the bucket because nobody took them in time.
    pub fn missed(&self) -> u64 {
        self.missed.round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_rate_times_time_when_drained_often() {
        // 10_000 pps for 1 s of fake time in 100 µs steps: 10_000 tokens.
        let mut b = TokenBucket::new(10_000.0, 8.0, 0);
        let mut got = 0;
        for step in 1..=10_000u64 {
            b.refill(step * 100_000);
            got += b.take(u64::MAX);
        }
        assert!((9_999..=10_000).contains(&got), "got {got}");
        assert_eq!(b.missed(), 0);
    }

    #[test]
    fn counts_what_overflows_as_missed() {
        // Nobody drains for 1 s at 1000 pps with depth 10: 990 missed.
        let mut b = TokenBucket::new(1000.0, 10.0, 0);
        b.refill(1_000_000_000);
        assert_eq!(b.take(u64::MAX), 10);
        assert_eq!(b.missed(), 990);
    }

    #[test]
    fn take_respects_max_and_wait_is_positive_when_empty() {
        let mut b = TokenBucket::new(1000.0, 100.0, 0);
        b.refill(50_000_000); // 50 tokens
        assert_eq!(b.take(8), 8);
        assert_eq!(b.take(100), 42);
        assert!(b.wait_ns() > 0 && b.wait_ns() <= 1_000_000);
    }
}
