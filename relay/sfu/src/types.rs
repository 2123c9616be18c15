//! Newtypes of the RTP wire: [`Ssrc`], [`SeqNo`] with wrapping (RFC 3550
//! §A.1) arithmetic, extended sequence numbers ([`ExtSeq`]) and the
//! [`SeqUnwrapper`] that produces them, and [`PayloadType`].
//!
//! Owns: number semantics only. Must not touch: packets, time.

use std::fmt;

/// A synchronisation source identifier (RFC 3550 §3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Ssrc(u32);

impl Ssrc {
    /// The SSRC with this value (every 32-bit value is a valid SSRC).
    pub const fn new(value: u32) -> Self {
        Self(value)
    }

    /// The wire value.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl From<u32> for Ssrc {
    fn from(value: u32) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Ssrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ssrc({:#010x})", self.0)
    }
}

impl fmt::Display for Ssrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

/// A 16-bit RTP sequence number. Ordering is modular: `a` is newer than `b`
/// when `a - b` (mod 2^16) is in `1..0x8000`, so `SeqNo(0)` is newer than
/// `SeqNo(0xFFFF)`. It deliberately does not implement `Ord`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNo(u16);

impl SeqNo {
    /// The sequence number with this wire value.
    pub const fn new(value: u16) -> Self {
        Self(value)
    }

    /// The wire value.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// `self + n`, wrapping at 2^16.
    #[must_use]
    pub const fn add(self, n: u16) -> Self {
        Self(self.0.wrapping_add(n))
    }

    /// `self - n`, wrapping at 2^16.
    #[must_use]
    pub const fn sub(self, n: u16) -> Self {
        Self(self.0.wrapping_sub(n))
    }

    /// The signed distance from `other` to `self` in the shortest direction:
    /// positive when `self` is newer. `-0x8000..0x8000`.
    pub const fn delta(self, other: SeqNo) -> i32 {
        self.0.wrapping_sub(other.0) as i16 as i32
    }

    /// True when `self` comes after `other` in modular order.
    pub const fn is_newer_than(self, other: SeqNo) -> bool {
        self.delta(other) > 0
    }
}

impl fmt::Debug for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SeqNo({})", self.0)
    }
}

impl From<u16> for SeqNo {
    fn from(value: u16) -> Self {
        Self(value)
    }
}

/// An extended sequence number: the 16-bit sequence number plus the count of
/// wrap-arounds (cycles) in the high bits (RFC 3550 §6.4.1). Starts at
/// `1 << 16` for the first packet so a reordered packet from just before the
/// first one still has a non-negative extended number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ExtSeq(u64);

impl ExtSeq {
    /// The extended value.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The 16-bit wire sequence number.
    pub const fn seq(self) -> SeqNo {
        SeqNo(self.0 as u16)
    }

    /// The extended value truncated to 32 bits, as RTCP report blocks carry
    /// it ("extended highest sequence number received").
    pub const fn as_u32(self) -> u32 {
        self.0 as u32
    }

    /// An extended number from a raw value (tests and stored state).
    pub const fn from_raw(value: u64) -> Self {
        Self(value)
    }
}

/// Turns 16-bit sequence numbers into [`ExtSeq`]s, choosing for each the
/// extended value closest to the highest one seen so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeqUnwrapper {
    highest: Option<u64>,
}

impl SeqUnwrapper {
    /// A fresh unwrapper.
    pub const fn new() -> Self {
        Self { highest: None }
    }

    /// The highest extended sequence number seen, if any.
    pub const fn highest(&self) -> Option<ExtSeq> {
        match self.highest {
            Some(h) => Some(ExtSeq(h)),
            None => None,
        }
    }

    /// Extend `seq` relative to the highest number seen, and remember it
    /// when it is the new highest.
    pub fn unwrap(&mut self, seq: SeqNo) -> ExtSeq {
        let ext = self.peek(seq);
        if !matches!(self.highest, Some(h) if ext.0 <= h) {
            self.highest = Some(ext.0);
        }
        ext
    }

    /// What [`unwrap`](Self::unwrap) would return, without remembering it.
    pub fn peek(&self, seq: SeqNo) -> ExtSeq {
        match self.highest {
            None => ExtSeq((1 << 16) | u64::from(seq.0)),
            Some(h) => {
                let last = SeqNo(h as u16);
                let delta = i64::from(seq.delta(last));
                // Never below 0: a packet from before the very first cycle
                // cannot be expressed, so it clamps to the first one.
                ExtSeq((h as i64 + delta).max(0) as u64)
            }
        }
    }
}

/// An RTP payload type, 0..=127.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PayloadType(u8);

impl PayloadType {
    /// The payload type with this value, or `None` when it is above 127.
    pub const fn new(value: u8) -> Option<Self> {
        if value <= 0x7F {
            Some(Self(value))
        } else {
            None
        }
    }

    /// The low 7 bits of `byte` (the M bit masked off).
    pub(crate) const fn masked(byte: u8) -> Self {
        Self(byte & 0x7F)
    }

    /// The wire value.
    pub const fn get(self) -> u8 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_order_wraps() {
        assert!(SeqNo(0).is_newer_than(SeqNo(0xFFFF)));
        assert!(!SeqNo(0xFFFF).is_newer_than(SeqNo(0)));
        assert_eq!(SeqNo(2).delta(SeqNo(0xFFFE)), 4);
        assert_eq!(SeqNo(0xFFFE).delta(SeqNo(2)), -4);
        assert_eq!(SeqNo(0xFFFF).add(2), SeqNo(1));
        assert_eq!(SeqNo(1).sub(2), SeqNo(0xFFFF));
    }

    #[test]
    fn unwrapper_counts_cycles_and_handles_reordering() {
        let mut u = SeqUnwrapper::new();
        let a = u.unwrap(SeqNo(0xFFFE));
        let b = u.unwrap(SeqNo(0xFFFF));
        let c = u.unwrap(SeqNo(0));
        let late = u.unwrap(SeqNo(0xFFFD));
        let d = u.unwrap(SeqNo(1));
        assert_eq!(b.get(), a.get() + 1);
        assert_eq!(c.get(), a.get() + 2);
        assert_eq!(d.get(), a.get() + 3);
        assert_eq!(late.get(), a.get() - 1);
        assert_eq!(u.highest(), Some(d));
        assert_eq!(c.seq(), SeqNo(0));
    }

    #[test]
    fn unwrapper_many_cycles() {
        let mut u = SeqUnwrapper::new();
        let first = u.unwrap(SeqNo(100));
        let mut s = SeqNo(100);
        for _ in 0..(3 * 65536 / 1000) {
            s = s.add(1000);
            u.unwrap(s);
        }
        let last = u.highest().unwrap_or(first);
        assert_eq!(last.get() - first.get(), 196 * 1000);
    }

    #[test]
    fn payload_type_range() {
        assert_eq!(PayloadType::new(127).map(PayloadType::get), Some(127));
        assert!(PayloadType::new(128).is_none());
    }
}
