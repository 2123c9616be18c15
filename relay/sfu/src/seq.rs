//! Per-consumer continuity of sequence numbers, timestamps and other
//! wrapping counters (VP8 picture IDs).
//!
//! A consumer's outgoing stream must look like one unbroken RTP stream even
//! though it is stitched together from several incoming ones (simulcast
//! encodings, runs between pauses) and has packets deliberately left out
//! (temporal layers above the consumer's). [`SeqMapper`] maps incoming
//! sequence numbers to outgoing ones so that a switch continues right after
//! the last number sent and a deliberate drop leaves no gap, while a packet
//! lost upstream still leaves one (so the receiver NACKs it). It keeps a
//! short history of offsets so a late (reordered or retransmitted) packet
//! still maps to the slot it was meant for, and refuses a packet it dropped
//! on purpose. [`WrapMapper`] is the same for a counter of any width (VP8
//! picture IDs are 15 or 7 bits). [`TimestampMapper`] carries RTP time
//! across the same switches by the wall-clock time between them.
//!
//! Owns: the arithmetic. Must not touch: packets, the clock (`now` is passed).

use std::time::{Duration, Instant};

use crate::types::SeqNo;

/// How many offset changes (drops) a mapper remembers; inputs older than the
/// oldest remembered change no longer map.
const SEGMENTS: usize = 64;

#[derive(Clone, Copy, Debug, Default)]
struct Segment {
    /// First extended input number this offset applies to.
    start: u64,
    /// Output = input + base (mod 2^bits).
    base: u64,
}

/// Maps an incoming wrapping counter of `bits` bits to a continuous outgoing
/// one (see the module docs).
#[derive(Clone, Debug)]
pub struct WrapMapper {
    bits: u32,
    /// Highest extended input of the current run.
    highest: Option<u64>,
    segments: [Segment; SEGMENTS],
    /// Index of the newest segment; `len` of them are valid, going backwards.
    head: usize,
    len: usize,
    /// The output the next run starts at (one after the newest output sent).
    next_out: u64,
}

impl WrapMapper {
    /// A mapper of a `bits`-bit counter (1..=32) whose first output will be
    /// `first_out`.
    pub fn new(bits: u32, first_out: u64) -> Self {
        let bits = bits.clamp(1, 32);
        Self {
            bits,
            highest: None,
            segments: [Segment::default(); SEGMENTS],
            head: 0,
            len: 0,
            next_out: first_out & ((1 << bits) - 1),
        }
    }

    /// The counter width.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    fn mask(&self) -> u64 {
        (1 << self.bits) - 1
    }

    /// Extend `v` relative to the highest input of the run (the run's first
    /// input is placed one cycle up, so a slightly older one stays positive).
    fn extend(&self, v: u64) -> u64 {
        let v = v & self.mask();
        match self.highest {
            None => (1 << self.bits) | v,
            Some(h) => {
                let d = v.wrapping_sub(h) & self.mask();
                let half = 1 << (self.bits - 1);
                let d = if d >= half {
                    d as i64 - (1i64 << self.bits)
                } else {
                    d as i64
                };
                (h as i64 + d).max(0) as u64
            }
        }
    }

    /// Start a new run at `input`: it maps to one after the last output, and
    /// inputs from before it no longer map.
    pub fn sync(&mut self, input: u64) {
        self.highest = None;
        let ext = self.extend(input);
        self.highest = Some(ext);
        self.head = 0;
        self.len = 1;
        self.segments[0] = Segment {
            start: ext,
            base: self.next_out.wrapping_sub(input) & self.mask(),
        };
    }

    /// True when no run has started yet (the next [`map`](Self::map) syncs).
    pub fn is_unsynced(&self) -> bool {
        self.len == 0
    }

    /// The output for `input`, or `None` when it belongs to before the
    /// current run, to a part of it too old to remember, or was dropped.
    pub fn map(&mut self, input: u64) -> Option<u64> {
        if self.len == 0 {
            self.sync(input);
        }
        let ext = self.extend(input);
        let base = self.base_for(ext)?;
        if self.highest.is_none_or_less(ext) {
            self.highest = Some(ext);
        }
        let out = (input + base) & self.mask();
        let d = out.wrapping_sub(self.next_out) & self.mask();
        if d < 1 << (self.bits - 1) {
            self.next_out = (out + 1) & self.mask();
        }
        Some(out)
    }

    /// Leave `input` out without a gap: the inputs after it move down by one.
    /// An input not newer than the newest seen cannot be taken back (its
    /// successors may be out already) and leaves a gap instead, like a loss.
    pub fn drop(&mut self, input: u64) {
        if self.len == 0 {
            self.sync(input);
            // The run starts after the dropped input: the next one takes the
            // output this one would have had.
            self.segments[0].start += 1;
            self.segments[0].base = self.segments[0].base.wrapping_sub(1) & self.mask();
            return;
        }
        let ext = self.extend(input);
        if !self.highest.is_none_or_less(ext) {
            return;
        }
        self.highest = Some(ext);
        let newest = self.segments[self.head];
        let widened = Segment {
            start: ext + 1,
            base: newest.base.wrapping_sub(1) & self.mask(),
        };
        if newest.start == ext {
            // Consecutive drops: widen the newest segment instead of adding one.
            self.segments[self.head] = widened;
        } else {
            self.head = (self.head + 1) % SEGMENTS;
            self.len = (self.len + 1).min(SEGMENTS);
            self.segments[self.head] = widened;
        }
    }

    /// The output the next new input would get after a sync.
    pub fn next_out(&self) -> u64 {
        self.next_out
    }

    /// The offset for an input, or `None` when it is before the run, older
    /// than the history, or one of the inputs dropped on purpose (those must
    /// never come out later: their slots belong to the inputs after them).
    fn base_for(&self, ext: u64) -> Option<u64> {
        let mut newer: Option<Segment> = None;
        for i in 0..self.len {
            let s = self.segments[(self.head + SEGMENTS - i) % SEGMENTS];
            if s.start <= ext {
                if let Some(n) = newer {
                    // The inputs dropped just before `n` starts.
                    let dropped = s.base.wrapping_sub(n.base) & self.mask();
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

trait NoneOrLess {
    fn is_none_or_less(&self, v: u64) -> bool;
}

impl NoneOrLess for Option<u64> {
    fn is_none_or_less(&self, v: u64) -> bool {
        !matches!(*self, Some(h) if h >= v)
    }
}

/// Maps incoming sequence numbers to a consumer's continuous outgoing ones:
/// a [`WrapMapper`] of 16 bits.
#[derive(Clone, Debug)]
pub struct SeqMapper(WrapMapper);

impl SeqMapper {
    /// A mapper whose first output will be `first_out`.
    pub fn new(first_out: SeqNo) -> Self {
        Self(WrapMapper::new(16, u64::from(first_out.get())))
    }

    /// Start a new run at `input` (a switch to another encoding, or a resume
    /// after pause): `input` maps to one after the last output, and inputs
    /// from before it no longer map.
    pub fn sync(&mut self, input: SeqNo) {
        self.0.sync(u64::from(input.get()));
    }

    /// True when no run has started yet (the next [`map`](Self::map) syncs).
    pub fn is_unsynced(&self) -> bool {
        self.0.is_unsynced()
    }

    /// The output for `input`, or `None` when it belongs to before the current
    /// run, to a part of it too old to remember, or was dropped on purpose.
    pub fn map(&mut self, input: SeqNo) -> Option<SeqNo> {
        self.0
            .map(u64::from(input.get()))
            .map(|o| SeqNo::new(o as u16))
    }

    /// Leave `input` out of the outgoing stream without a gap (see
    /// [`WrapMapper::drop`]).
    pub fn drop(&mut self, input: SeqNo) {
        self.0.drop(u64::from(input.get()));
    }

    /// The output the next new packet would get after a sync.
    pub fn next_out(&self) -> SeqNo {
        SeqNo::new(self.0.next_out() as u16)
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

    /// Start a new run at `input` with `offset` (derived from sender reports,
    /// which align the new stream's clock with the old one's) when that keeps
    /// the output moving forward and within `tolerance` ticks of what the
    /// elapsed time predicts; otherwise as [`sync`](Self::sync). Returns
    /// whether `offset` was used.
    pub fn sync_with_offset(
        &mut self,
        input: u32,
        offset: u32,
        now: Instant,
        tolerance: u32,
    ) -> bool {
        let Some(at) = self.last_at else {
            self.sync(input, now);
            return false;
        };
        let elapsed = ticks(now.saturating_duration_since(at), self.clock_rate).max(1);
        let predicted = self.last_out.wrapping_add(elapsed);
        let out = input.wrapping_add(offset);
        let forward = (out.wrapping_sub(self.last_out) as i32) > 0;
        let near = (out.wrapping_sub(predicted) as i32).unsigned_abs() <= tolerance;
        if forward && near {
            self.offset = offset;
            true
        } else {
            self.sync(input, now);
            false
        }
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

    /// The clock rate in Hz.
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
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
    fn narrow_counters_wrap_at_their_width() {
        // A 7-bit VP8 picture ID: 126, 127, 0, 1 with 0 dropped.
        let mut m = WrapMapper::new(7, 120);
        assert_eq!(m.map(126), Some(120));
        assert_eq!(m.map(127), Some(121));
        m.drop(0);
        assert_eq!(m.map(1), Some(122));
        assert_eq!(m.map(0), None, "dropped");
        // A switch to a 7-bit stream numbered elsewhere continues at 123.
        m.sync(50);
        assert_eq!(m.map(50), Some(123));
        // 15 bits, crossing 0x7FFF.
        let mut m = WrapMapper::new(15, 0x7FFE);
        assert_eq!(m.map(10), Some(0x7FFE));
        assert_eq!(m.map(11), Some(0x7FFF));
        assert_eq!(m.map(12), Some(0));
        assert_eq!(m.bits(), 15);
    }

    #[test]
    fn sender_report_offsets_are_used_only_when_plausible() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let mut t = TimestampMapper::new(90_000, 0);
        t.sync(0, t0);
        t.map(0, t0);
        let t1 = t0 + Duration::from_millis(33);
        // 3000 ahead of the last output: exact frame spacing, accepted.
        assert!(t.sync_with_offset(100, 2900, t1, 90_000));
        assert_eq!(t.map(100, t1), 3000);
        // Backwards (or equal): refused, elapsed time used instead.
        assert!(!t.sync_with_offset(500, 2500, t1, 90_000));
        assert_eq!(t.map(500, t1), 3001);
        // Far from what the clock says: refused.
        assert!(!t.sync_with_offset(0, 1_000_000, t1, 90_000));
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
