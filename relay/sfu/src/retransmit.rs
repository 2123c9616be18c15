//! A producer encoding's retransmission buffer: the last N packets, kept in
//! one preallocated slab so storing and finding a packet never allocates.
//!
//! Owns: packet copies by sequence number, with their age. Must not touch:
//! sockets, the clock (`now` is passed in).

use std::time::{Duration, Instant};

use crate::types::{ExtSeq, SeqNo};

#[derive(Clone, Copy, Debug)]
struct Slot {
    ext: u64,
    len: u16,
    stored_at: Option<Instant>,
}

/// Fixed-capacity ring of packets indexed by sequence number.
#[derive(Debug)]
pub struct RetransmitBuffer {
    slots: Box<[Slot]>,
    data: Box<[u8]>,
    slot_size: usize,
    mask: usize,
}

impl RetransmitBuffer {
    /// A buffer for `capacity` packets (rounded up to a power of two, at most
    /// 32768; 0 disables it) of at most `slot_size` bytes each.
    pub fn new(capacity: usize, slot_size: usize) -> Self {
        let cap = if capacity == 0 {
            0
        } else {
            capacity.next_power_of_two().min(1 << 15)
        };
        Self {
            slots: vec![
                Slot {
                    ext: 0,
                    len: 0,
                    stored_at: None
                };
                cap
            ]
            .into_boxed_slice(),
            data: vec![0; cap * slot_size].into_boxed_slice(),
            slot_size,
            mask: cap.saturating_sub(1),
        }
    }

    /// How many packets it holds at most.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Store a copy of `packet`. False when the buffer is disabled, the
    /// packet is larger than a slot, or a newer packet already holds its slot.
    pub fn insert(&mut self, ext: ExtSeq, packet: &[u8], now: Instant) -> bool {
        if self.slots.is_empty()
            || packet.len() > self.slot_size
            || packet.len() > usize::from(u16::MAX)
        {
            return false;
        }
        let i = ext.get() as usize & self.mask;
        let slot = &mut self.slots[i];
        if slot.stored_at.is_some() && slot.ext > ext.get() {
            return false;
        }
        let at = i * self.slot_size;
        self.data[at..at + packet.len()].copy_from_slice(packet);
        *slot = Slot {
            ext: ext.get(),
            len: packet.len() as u16,
            stored_at: Some(now),
        };
        true
    }

    /// The stored packet with sequence number `seq`, if it is no older than
    /// `max_age`.
    pub fn get(&self, seq: SeqNo, now: Instant, max_age: Duration) -> Option<&[u8]> {
        if self.slots.is_empty() {
            return None;
        }
        let i = usize::from(seq.get()) & self.mask;
        let slot = &self.slots[i];
        let stored = slot.stored_at?;
        if slot.ext as u16 != seq.get() || now.saturating_duration_since(stored) > max_age {
            return None;
        }
        let at = i * self.slot_size;
        Some(&self.data[at..at + usize::from(slot.len)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_finds_and_forgets() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let age = Duration::from_secs(1);
        let mut b = RetransmitBuffer::new(100, 32);
        assert_eq!(b.capacity(), 128);
        let e = |n: u64| ExtSeq::from_raw(n);
        assert!(b.insert(e(65_535), b"abc", t0));
        assert!(b.insert(e(65_536), b"def", t0));
        assert_eq!(b.get(SeqNo::new(65_535), t0, age), Some(&b"abc"[..]));
        assert_eq!(b.get(SeqNo::new(0), t0, age), Some(&b"def"[..]));
        assert_eq!(b.get(SeqNo::new(1), t0, age), None);
        // Too old.
        assert_eq!(b.get(SeqNo::new(0), t0 + Duration::from_secs(2), age), None);
        // Overwritten by a packet 128 later; a late older one does not evict it.
        assert!(b.insert(e(65_536 + 128), b"ghi", t0));
        assert_eq!(b.get(SeqNo::new(0), t0, age), None);
        assert!(!b.insert(e(65_536), b"old", t0));
        assert_eq!(b.get(SeqNo::new(128), t0, age), Some(&b"ghi"[..]));
        // Too large, or disabled.
        assert!(!b.insert(e(70_000), &[0; 33], t0));
        let mut off = RetransmitBuffer::new(0, 32);
        assert!(!off.insert(e(1), b"x", t0));
        assert_eq!(off.get(SeqNo::new(1), t0, age), None);
    }
}
