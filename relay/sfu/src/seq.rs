//! Per-consumer continuity of sequence numbers and timestamps.
//!
//! A consumer's outgoing stream must look like one unbroken RTP stream even
//! though it is stitched together from several incoming ones (simulcast
//! encodings, runs between pauses) and has packets deliberately left out
//! (temporal layers above the consumer's). [`SeqMapper`] maps incoming
//! sequence numbers to outgoing ones so that a switch continues right after
//! the last number sent and a deliberate drop leaves no gap, while a packet
//! lost upstream still leaves one (so the receiver NACKs it). It keeps a
//! short history of offsets so a late (reordered or retransmitted) packet
//! still maps to the slot it was meant for. [`TimestampMapper`] carries RTP
//! time across the same switches by the wall-clock time between them.
//!
//! Owns: the arithmetic. Must not touch: packets, the clock (`now` is passed).

use std::time::{Duration, Instant};

use crate::types::{SeqNo, SeqUnwrapper};

/// How many offset changes (drops) a mapper remembers; inputs older than the
/// oldest remembered change no longer map.
const SEGMENTS: usize = 64;

#[derive(Clone, Copy, Debug, Default)]
struct Segment {
    /// First extended input number this offset applies to.
    start: u64,
    /// Output = input + base (mod 2^16).
    base: u16,
}

/// Maps incoming sequence numbers to a consumer's continuous outgoing ones.
#[derive(Clone, Debug)]
pub struct SeqMapper {
    unwrap: SeqUnwrapper,
    segments: [Segment; SEGMENTS],
    /// Index of the newest segment; `len` of them are valid, going backwards.
    head: usize,
    len: usize,
    /// The output the next run starts at (one after the newest output sent).
    next_out: SeqNo,
}

impl SeqMapper {
    /// A mapper whose first output will be `first_out`.
    pub fn new(first_out: SeqNo) -> Self {
        Self {
            unwrap: SeqUnwrapper::new(),
            segments: [Segment::default(); SEGMENTS],
            head: 0,
            len: 0,
            next_out: first_out,
        }
    }

    /// Start a new run at `input` (a switch to another encoding, or a resume
    /// after pause): `input` maps to one after the last output, and inputs
    /// from before it no longer map.
    pub fn sync(&mut self, input: SeqNo) {
        self.unwrap = SeqUnwrapper::new();
        let ext = self.unwrap.unwrap(input);
        self.head = 0;
        self.len = 1;
        self.segments[0] = Segment {
            start: ext.get(),
            base: self.next_out.get().wrapping_sub(input.get()),
        };
    }

    /// True when no run has started yet (the next [`map`](Self::map) syncs).
    pub fn is_unsynced(&self) -> bool {
        self.len == 0
    }

    /// The output for `input`, or `None` when it belongs to before the current
    /// run or to a part of it too old to remember.
    pub fn map(&mut self, input: SeqNo) -> Option<SeqNo> {
        if self.len == 0 {
            self.sync(input);
        }
        let ext = self.unwrap.unwrap(input).get();
        let base = self.base_for(ext)?;
        let out = input.add(base);
        if out.delta(self.next_out) >= 0 {
            self.next_out = out.add(1);
        }
        Some(out)
    }

    /// Leave `input` out of the outgoing stream without a gap: the inputs
    /// after it move down by one. An input older than the newest one seen
    /// cannot be taken back (its successors are already out) and leaves a
    /// gap instead, like a loss.
    pub fn drop(&mut self, input: SeqNo) {
        if self.len == 0 {
            self.sync(input);
            // The run starts after the dropped packet: the next input takes
            // the output this one would have had.
            self.segments[0].start += 1;
            self.segments[0].base = self.segments[0].base.wrapping_sub(1);
            return;
        }
        let highest = self.unwrap.highest().map_or(0, |h| h.get());
        let ext = self.unwrap.peek(input).get();
        if ext <= highest {
            return;
        }
        self.unwrap.unwrap(input);
        let newest = self.segments[self.head];
        if newest.start == ext {
            // Consecutive drops: widen the newest segment instead of adding one.
            self.segments[self.head] = Segment {
                start: ext + 1,
                base: newest.base.wrapping_sub(1),
            };
        } else {
            self.head = (self.head + 1) % SEGMENTS;
            self.len = (self.len + 1).min(SEGMENTS);
            self.segments[self.head] = Segment {
                start: ext + 1,
                base: newest.base.wrapping_sub(1),
            };
        }
    }

    /// The output the next new packet would get after a sync.
    pub fn next_out(&self) -> SeqNo {
        self.next_out
    }

    /// The offset for an input, or `None` when it is before the run, older
    /// than the history, or one of the inputs dropped on purpose (those must
    /// never come out later: their slots belong to the inputs after them).
    fn base_for(&self, ext: u64) -> Option<u16> {
        let mut newer: Option<Segment> = None;
        for i in 0..self.len {
            let s = self.segments[(self.head + SEGMENTS - i) % SEGMENTS];
            if s.start <= ext {
                if let Some(n) = newer {
                    // The inputs dropped just before `n` starts.
                    let dropped = u64::from(s.base.wrapping_sub(n.base));
                    if ext + dropped >= n.start {
                        return None;
                    }
                }
                return Some(s.base);
            }
            newer = Some(s);
        }
        None
    }
}

/// Maps incoming RTP timestamps to a consumer's continuous outgoing ones.
#[derive(Clone, Copy, Debug)]
pub struct TimestampMapper {
    clock_rate: u32,
    offset: u32,
    last_out: u32,
    last_at: Option<Instant>,
}

impl TimestampMapper {
    /// A mapper for a `clock_rate` Hz stream whose first output timestamp is
    /// `first_out`.
    pub fn new(clock_rate: u32, first_out: u32) -> Self {
        Self {
            clock_rate,
            offset: 0,
            last_out: first_out.wrapping_sub(1),
            last_at: None,
        }
    }

    /// Start a new run at `input`, which arrives at `now`: it maps to the last
    /// output plus the wall-clock time since that output (at least one tick).
    pub fn sync(&mut self, input: u32, now: Instant) {
        let ticks = match self.last_at {
            Some(at) => ticks(now.saturating_duration_since(at), self.clock_rate).max(1),
            None => 1,
        };
        let out = self.last_out.wrapping_add(ticks);
        self.offset = out.wrapping_sub(input);
    }

    /// The output for `input`, remembering it as the newest when it is newer.
    pub fn map(&mut self, input: u32, now: Instant) -> u32 {
        let out = input.wrapping_add(self.offset);
        if self.last_at.is_none() || (out.wrapping_sub(self.last_out) as i32) > 0 {
            self.last_out = out;
            self.last_at = Some(now);
        }
        out
    }

    /// The current offset (output − input, mod 2^32).
    pub fn offset(&self) -> u32 {
        self.offset
    }
}

/// `d` in RTP ticks of a `clock_rate` Hz clock, wrapping at 2^32.
pub(crate) fn ticks(d: Duration, clock_rate: u32) -> u32 {
    (d.as_nanos() * u128::from(clock_rate) / 1_000_000_000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u16) -> SeqNo {
        SeqNo::new(n)
    }

    #[test]
    fn in_order_stream_keeps_its_spacing_from_the_first_output() {
        let mut m = SeqMapper::new(s(1000));
        assert_eq!(m.map(s(50)), Some(s(1000)));
        assert_eq!(m.map(s(51)), Some(s(1001)));
        // An upstream loss (52) stays a gap.
        assert_eq!(m.map(s(53)), Some(s(1003)));
        // ... and the late packet fills it.
        assert_eq!(m.map(s(52)), Some(s(1002)));
    }

    #[test]
    fn wraps_around_both_sides() {
        let mut m = SeqMapper::new(s(0xFFFE));
        let outs: Vec<u16> = (0..4u16)
            .map(|i| m.map(s(0xFFFF_u16.wrapping_add(i))).unwrap().get())
            .collect();
        assert_eq!(outs, vec![0xFFFE, 0xFFFF, 0, 1]);
        assert_eq!(m.next_out(), s(2));
    }

    #[test]
    fn sync_continues_after_last_output() {
        let mut m = SeqMapper::new(s(10));
        m.map(s(100));
        m.map(s(101));
        // Switch to another stream numbered far away.
        m.sync(s(40_000));
        assert_eq!(m.map(s(40_000)), Some(s(12)));
        assert_eq!(m.map(s(40_001)), Some(s(13)));
        // Packets of the previous run no longer map.
        assert_eq!(m.map(s(39_990)), None);
    }

    #[test]
    fn drops_leave_no_gap_and_late_packets_keep_their_slot() {
        let mut m = SeqMapper::new(s(0));
        assert_eq!(m.map(s(10)), Some(s(0)));
        // 11 lost upstream; 12 and 13 dropped on purpose (a higher layer).
        m.drop(s(12));
        m.drop(s(13));
        assert_eq!(m.map(s(14)), Some(s(2)));
        // The late 11 takes the slot the gap left for it.
        assert_eq!(m.map(s(11)), Some(s(1)));
        // A drop of an old packet cannot shift what is already out.
        m.drop(s(9));
        assert_eq!(m.map(s(15)), Some(s(3)));
        // A packet dropped on purpose never maps later (a late duplicate, or
        // a layer raised since): its slot went to the packet after it.
        assert_eq!(m.map(s(12)), None);
        assert_eq!(m.map(s(13)), None);
        assert_eq!(m.map(s(11)), Some(s(1)));
    }

    #[test]
    fn drops_across_wrap_and_many_segments() {
        let mut m = SeqMapper::new(s(500));
        let mut input = s(0xFFF0);
        let mut expect = s(500);
        for i in 0..200u16 {
            if i % 3 == 2 {
                m.drop(input);
            } else {
                assert_eq!(m.map(input), Some(expect), "input {input:?}");
                expect = expect.add(1);
            }
            input = input.add(1);
        }
        // Older than the remembered history: refused rather than misplaced.
        assert_eq!(m.map(s(0xFFF1)), None);
    }

    #[test]
    fn first_packet_dropped() {
        let mut m = SeqMapper::new(s(7));
        m.drop(s(100));
        assert_eq!(m.map(s(101)), Some(s(7)));
    }

    #[test]
    fn timestamps_continue_by_elapsed_time() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let mut t = TimestampMapper::new(90_000, 5000);
        t.sync(1_000_000, t0);
        assert_eq!(t.map(1_000_000, t0), 5000);
        assert_eq!(t.map(1_003_000, t0 + Duration::from_millis(33)), 8000);
        // Resume 2 s later on a stream with another base.
        let later = t0 + Duration::from_millis(2033);
        t.sync(7, later);
        assert_eq!(t.map(7, later), 8000 + 180_000);
        // An older timestamp maps but does not move "last".
        assert_eq!(t.map(4, later), 8000 + 180_000 - 3);
        t.sync(0, later);
        assert_eq!(t.map(0, later), 8000 + 180_000 + 1, "at least one tick");
    }
}
