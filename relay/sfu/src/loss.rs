//! Upstream loss repair: which packets of a producer encoding are missing,
//! and when to NACK them (again). The list is bounded and preallocated.
//!
//! Owns: the missing list and its retry schedule. Must not touch: packets,
//! the clock (`now` is passed in).

use std::time::{Duration, Instant};

use crate::types::{ExtSeq, SeqNo};

/// Most packets tracked as missing per encoding; a larger jump restarts the list.
pub(crate) const MAX_MISSING: usize = 128;
/// Wait this long before the first NACK, so mere reordering is not NACKed.
pub(crate) const REORDER_GRACE: Duration = Duration::from_millis(10);
/// NACK a packet at most this many times.
pub(crate) const MAX_TRIES: u8 = 5;

#[derive(Clone, Copy, Debug)]
struct Missing {
    ext: u64,
    since: Instant,
    sent_at: Option<Instant>,
    tries: u8,
}

/// What a received packet meant for the missing list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// In order (or a duplicate of something not missing).
    Normal,
    /// It filled a gap: a retransmission or a late packet.
    Recovered,
    /// A gap too large to track: the list was restarted.
    Jump,
}

#[derive(Debug)]
pub(crate) struct MissingList {
    entries: Vec<Missing>,
}

impl MissingList {
    pub(crate) fn new() -> Self {
        Self {
            entries: Vec::with_capacity(MAX_MISSING),
        }
    }

    /// Note packet `ext`, given the highest extended number before it.
    pub(crate) fn on_packet(
        &mut self,
        ext: ExtSeq,
        highest_before: Option<ExtSeq>,
        now: Instant,
    ) -> Arrival {
        let (ext, Some(h)) = (ext.get(), highest_before.map(ExtSeq::get)) else {
            return Arrival::Normal;
        };
        if ext > h + 1 {
            let gap = ext - h - 1;
            if gap > MAX_MISSING as u64 {
                self.entries.clear();
                return Arrival::Jump;
            }
            for missing in h + 1..ext {
                if self.entries.len() == MAX_MISSING {
                    self.entries.remove(0);
                }
                self.entries.push(Missing {
                    ext: missing,
                    since: now,
                    sent_at: None,
                    tries: 0,
                });
            }
            Arrival::Normal
        } else if ext <= h {
            match self.entries.iter().position(|m| m.ext == ext) {
                Some(i) => {
                    self.entries.remove(i);
                    Arrival::Recovered
                }
                None => Arrival::Normal,
            }
        } else {
            Arrival::Normal
        }
    }

    /// Call `nack` for every missing packet due a NACK now, in ascending
    /// order, and note the try; forget those given up on. Stops when `nack`
    /// returns false (no more room).
    pub(crate) fn take_due(
        &mut self,
        now: Instant,
        retry: Duration,
        max_age: Duration,
        mut nack: impl FnMut(SeqNo) -> bool,
    ) -> usize {
        self.entries
            .retain(|m| m.tries < MAX_TRIES && now.saturating_duration_since(m.since) <= max_age);
        let mut n = 0;
        for m in self.entries.iter_mut() {
            if is_due(m, now, retry) {
                if !nack(ExtSeq::from_raw(m.ext).seq()) {
                    break;
                }
                m.sent_at = Some(now);
                m.tries += 1;
                n += 1;
            }
        }
        n
    }

    /// True when some packet is due a NACK at `now`.
    pub(crate) fn any_due(&self, now: Instant, retry: Duration) -> bool {
        self.entries
            .iter()
            .any(|m| m.tries < MAX_TRIES && is_due(m, now, retry))
    }

    /// When the next NACK falls due.
    pub(crate) fn next_due(&self, retry: Duration) -> Option<Instant> {
        self.entries
            .iter()
            .filter(|m| m.tries < MAX_TRIES)
            .map(|m| match m.sent_at {
                None => m.since + REORDER_GRACE,
                Some(at) => at + retry,
            })
            .min()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

fn is_due(m: &Missing, now: Instant, retry: Duration) -> bool {
    match m.sent_at {
        None => now.saturating_duration_since(m.since) >= REORDER_GRACE,
        Some(at) => now.saturating_duration_since(at) >= retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_nacked_after_the_grace_retried_and_forgotten() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let retry = Duration::from_millis(100);
        let age = Duration::from_secs(1);
        let e = ExtSeq::from_raw;
        let mut l = MissingList::new();
        assert_eq!(l.on_packet(e(10), None, t0), Arrival::Normal);
        assert_eq!(l.on_packet(e(14), Some(e(10)), t0), Arrival::Normal);
        assert_eq!(l.len(), 3);
        let mut got = Vec::new();
        assert_eq!(
            l.take_due(t0, retry, age, |s| {
                got.push(s.get());
                true
            }),
            0
        );
        assert_eq!(l.next_due(retry), Some(t0 + REORDER_GRACE));
        // 12 arrives late (reordered): no NACK for it.
        assert_eq!(l.on_packet(e(12), Some(e(14)), t0), Arrival::Recovered);
        let t1 = t0 + REORDER_GRACE;
        assert!(l.any_due(t1, retry));
        l.take_due(t1, retry, age, |s| {
            got.push(s.get());
            true
        });
        assert_eq!(got, vec![11, 13]);
        // Not again before the retry interval; then again, up to MAX_TRIES.
        assert_eq!(l.take_due(t1 + retry / 2, retry, age, |_| true), 0);
        let mut t = t1;
        for _ in 1..MAX_TRIES {
            t += retry;
            assert_eq!(l.take_due(t, retry, age, |_| true), 2);
        }
        assert_eq!(l.take_due(t + retry, retry, age, |_| true), 0);
        assert_eq!(l.len(), 0);
        // A jump too large to track restarts the list.
        assert_eq!(l.on_packet(e(1000), Some(e(14)), t), Arrival::Jump);
        assert_eq!(l.len(), 0);
        // A full list drops its oldest.
        l.on_packet(e(1000 + MAX_MISSING as u64 + 1), Some(e(1000)), t);
        l.on_packet(
            e(1000 + MAX_MISSING as u64 + 3),
            Some(e(1000 + MAX_MISSING as u64 + 1)),
            t,
        );
        assert_eq!(l.len(), MAX_MISSING);
        // When the caller runs out of room, the rest stays due.
        let mut n = 0;
        l.take_due(t + REORDER_GRACE, retry, age, |_| {
            n += 1;
            n <= 5
        });
        assert!(l.any_due(t + REORDER_GRACE, retry));
    }
}
