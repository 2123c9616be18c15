//! Caller-owned receive buffers, allocated once and reused for every batch.
//!
//! A batch is `capacity` slots in one allocation. Each slot is
//! `headroom + max_payload + tailroom` bytes; a datagram is received at
//! `slot[headroom..]`, so the caller can prepend a header in place (the TURN
//! core writes a ChannelData or Data indication header into the headroom) and
//! append padding into the tailroom without copying the payload.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use crate::{SocketId, MAX_BATCH};

/// What is known about one received datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvMeta {
    /// The socket it arrived on.
    pub socket: SocketId,
    /// Who sent it.
    pub source: SocketAddr,
    /// Payload length in bytes.
    pub len: usize,
}

/// Preallocated receive buffers for one batch of datagrams.
#[derive(Debug)]
pub struct RecvBatch {
    buf: Vec<u8>,
    meta: Vec<RecvMeta>,
    capacity: usize,
    headroom: usize,
    max_payload: usize,
    tailroom: usize,
}

impl RecvBatch {
    /// Buffers for up to `capacity` datagrams (at most [`MAX_BATCH`]) of at most
    /// `max_payload` bytes each, with `headroom` free bytes before and
    /// `tailroom` after each payload. Allocates here and never again.
    pub fn new(capacity: usize, max_payload: usize, headroom: usize, tailroom: usize) -> Self {
        let capacity = capacity.clamp(1, MAX_BATCH);
        let slot = headroom + max_payload + tailroom;
        let placeholder = RecvMeta {
            socket: SocketId(0),
            source: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            len: 0,
        };
        let mut meta = Vec::with_capacity(capacity);
        meta.resize(capacity, placeholder);
        meta.clear();
        Self {
            buf: vec![0; capacity * slot],
            meta,
            capacity,
            headroom,
            max_payload,
            tailroom,
        }
    }

    /// How many datagrams the batch holds now.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// Whether the batch holds no datagram.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// The most datagrams one batch can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Free bytes in front of each payload.
    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// Free bytes after the largest payload.
    pub fn tailroom(&self) -> usize {
        self.tailroom
    }

    /// The largest datagram a slot receives; larger ones are truncated and dropped.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Forget every datagram (the buffers stay).
    pub fn clear(&mut self) {
        self.meta.clear();
    }

    /// The metadata of datagram `i`. Panics if `i >= len()`.
    pub fn meta(&self, i: usize) -> RecvMeta {
        self.meta[i]
    }

    /// The payload of datagram `i`. Panics if `i >= len()`.
    pub fn payload(&self, i: usize) -> &[u8] {
        let m = self.meta[i];
        let start = i * self.slot_len() + self.headroom;
        &self.buf[start..start + m.len]
    }

    /// Datagram `i`'s whole slot, writable: the payload sits at
    /// `[headroom()..headroom() + meta.len]`, with `tailroom()` (at least)
    /// spare bytes after it. Panics if `i >= len()`.
    pub fn slot_mut(&mut self, i: usize) -> (RecvMeta, &mut [u8]) {
        let m = self.meta[i];
        let slot = self.slot_len();
        let start = i * slot;
        (m, &mut self.buf[start..start + slot])
    }

    /// Iterate over (metadata, payload) of every datagram held.
    pub fn iter(&self) -> impl Iterator<Item = (RecvMeta, &[u8])> + '_ {
        (0..self.len()).map(move |i| (self.meta[i], self.payload(i)))
    }

    fn slot_len(&self) -> usize {
        self.headroom + self.max_payload + self.tailroom
    }

    /// For back ends: base pointer of the receive area of slot `i` (where the
    /// payload lands) and its length. The pointer stays valid while the batch
    /// is neither moved nor dropped.
    pub(crate) fn recv_area(&mut self, i: usize) -> (*mut u8, usize) {
        debug_assert!(i < self.capacity);
        let start = i * self.slot_len() + self.headroom;
        let area = &mut self.buf[start..start + self.max_payload];
        (area.as_mut_ptr(), area.len())
    }

    /// For back ends: copy `len` received bytes from slot `from`'s receive area
    /// to slot `to`'s (closing the gap a dropped datagram left).
    pub(crate) fn move_payload(&mut self, from: usize, to: usize, len: usize) {
        let slot = self.slot_len();
        let src = from * slot + self.headroom;
        let dst = to * slot + self.headroom;
        self.buf.copy_within(src..src + len, dst);
    }

    /// For back ends: record that the next slot holds a datagram. Slots fill in order.
    pub(crate) fn push(&mut self, meta: RecvMeta) {
        debug_assert!(meta.len <= self.max_payload);
        debug_assert!(self.meta.len() < self.capacity);
        self.meta.push(meta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_have_head_and_tail_room() {
        let mut b = RecvBatch::new(4, 100, 48, 4);
        assert_eq!(b.capacity(), 4);
        let (ptr, len) = b.recv_area(1);
        assert_eq!(len, 100);
        // SAFETY: ptr points at 100 writable bytes inside b.buf (recv_area's contract).
        unsafe { std::ptr::write_bytes(ptr, 7, 3) };
        let src: SocketAddr = "127.0.0.1:9".parse().unwrap();
        b.push(RecvMeta {
            socket: SocketId(0),
            source: src,
            len: 0,
        });
        b.push(RecvMeta {
            socket: SocketId(3),
            source: src,
            len: 3,
        });
        assert_eq!(b.payload(1), &[7, 7, 7]);
        let (m, slot) = b.slot_mut(1);
        assert_eq!(m.socket, SocketId(3));
        assert_eq!(slot.len(), 48 + 100 + 4);
        assert_eq!(&slot[48..51], &[7, 7, 7]);
        b.clear();
        assert!(b.is_empty());
    }

    #[test]
    fn capacity_is_bounded() {
        assert_eq!(RecvBatch::new(1000, 10, 0, 0).capacity(), MAX_BATCH);
        assert_eq!(RecvBatch::new(0, 10, 0, 0).capacity(), 1);
    }
}
