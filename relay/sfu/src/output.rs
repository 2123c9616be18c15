//! Caller-owned, preallocated scratch that the router writes its transmits
//! into: one fixed-size slot per packet and a list saying where each goes.
//!
//! Owns: the slab and the list. Must not touch: sockets. The caller sends the
//! packets (batched: one `sendmmsg`/io_uring submit for the lot), then calls
//! [`Output::clear`]. Pushing never allocates: the list's capacity is fixed
//! at construction and a full `Output` refuses (the router counts that).

use crate::router::{ConsumerId, TransportId};

/// Whether a transmit is RTP or RTCP (for transports without rtcp-mux, where
/// they leave from different ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// An RTP packet.
    Rtp,
    /// An RTCP (compound) packet.
    Rtcp,
}

/// Where one packet in an [`Output`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The transport to send it on.
    pub transport: TransportId,
    /// RTP or RTCP.
    pub kind: PacketKind,
    /// The consumer it is for (`None` for feedback to a producer).
    pub consumer: Option<ConsumerId>,
    /// Its length in its slot.
    pub len: usize,
}

/// Scratch for the packets one or more router calls produce.
#[derive(Debug)]
pub struct Output {
    slab: Box<[u8]>,
    slot_size: usize,
    items: Vec<Transmit>,
    max_packets: usize,
}

impl Output {
    /// Room for `max_packets` packets of up to `slot_size` bytes each. Leave
    /// room in `slot_size` for what a later stage appends in place (an SRTP
    /// auth tag: 16 bytes past the largest packet).
    pub fn new(max_packets: usize, slot_size: usize) -> Self {
        Self {
            slab: vec![0; max_packets * slot_size].into_boxed_slice(),
            slot_size,
            items: Vec::with_capacity(max_packets),
            max_packets,
        }
    }

    /// Number of packets written.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is written.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// True when no further packet fits.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.max_packets
    }

    /// Forget every packet (after sending them).
    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Size of one slot.
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Packet `i`: where it goes and its bytes.
    pub fn get(&self, i: usize) -> Option<(Transmit, &[u8])> {
        let t = *self.items.get(i)?;
        let at = i * self.slot_size;
        Some((t, &self.slab[at..at + t.len]))
    }

    /// Packet `i`'s whole slot (for in-place work such as SRTP protection)
    /// and its current length; set the new length with [`set_len`](Self::set_len).
    pub fn slot_mut(&mut self, i: usize) -> Option<(&mut [u8], usize)> {
        let t = *self.items.get(i)?;
        let at = i * self.slot_size;
        Some((&mut self.slab[at..at + self.slot_size], t.len))
    }

    /// Set packet `i`'s length (at most the slot size).
    pub fn set_len(&mut self, i: usize, len: usize) {
        if let Some(t) = self.items.get_mut(i) {
            t.len = len.min(self.slot_size);
        }
    }

    /// Every packet in order.
    pub fn iter(&self) -> impl Iterator<Item = (Transmit, &[u8])> + '_ {
        self.items.iter().enumerate().map(move |(i, t)| {
            let at = i * self.slot_size;
            (*t, &self.slab[at..at + t.len])
        })
    }

    /// Append a packet written by `write` into the next slot; `write`
    /// returns its length, or `None` to abandon it. False when the output is
    /// full or `write` abandoned.
    pub(crate) fn push(
        &mut self,
        transport: TransportId,
        kind: PacketKind,
        consumer: Option<ConsumerId>,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> bool {
        if self.is_full() {
            return false;
        }
        let at = self.items.len() * self.slot_size;
        let Some(len) = write(&mut self.slab[at..at + self.slot_size]) else {
            return false;
        };
        self.items.push(Transmit {
            transport,
            kind,
            consumer,
            len: len.min(self.slot_size),
        });
        true
    }
}
