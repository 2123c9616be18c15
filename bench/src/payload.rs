//! The probe payload every generated packet carries, and the clock it is
//! stamped with.
//!
//! Layout (little-endian, [`HEADER_LEN`] bytes, the rest of the datagram is
//! filler): magic `u32`, run id `u32`, flow id `u32`, reserved `u32`,
//! sequence number `u64`, send time `u64` (CLOCK_MONOTONIC, ns). The receiver
//! reads the same clock, so `recv - send` is the one-way latency on this host.

/// First four bytes of every probe payload ("TBN1").
pub const MAGIC: u32 = 0x5442_4E31;
/// Bytes of the probe header; payloads are at least this long.
pub const HEADER_LEN: usize = 32;

/// What a probe payload says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Which measurement run sent it (packets of an earlier run are ignored).
    pub run: u32,
    /// Which flow (allocation) sent it.
    pub flow: u32,
    /// Per-flow sequence number, from 0.
    pub seq: u64,
    /// CLOCK_MONOTONIC at send, in nanoseconds.
    pub sent_ns: u64,
}

impl Probe {
    /// Write the header into `buf[..HEADER_LEN]`; returns `false` if `buf` is too short.
    pub fn encode(&self, buf: &mut [u8]) -> bool {
        let Some(h) = buf.get_mut(..HEADER_LEN) else {
            return false;
        };
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&self.run.to_le_bytes());
        h[8..12].copy_from_slice(&self.flow.to_le_bytes());
        h[12..16].copy_from_slice(&0u32.to_le_bytes());
        h[16..24].copy_from_slice(&self.seq.to_le_bytes());
        h[24..32].copy_from_slice(&self.sent_ns.to_le_bytes());
        true
    }

    /// Read a header from the start of `buf`; `None` if it is short or not ours.
    pub fn decode(buf: &[u8]) -> Option<Probe> {
        let h = buf.get(..HEADER_LEN)?;
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[i..i + 8]);
            u64::from_le_bytes(b)
        };
        if u32_at(0) != MAGIC {
            return None;
        }
        Some(Probe {
            run: u32_at(4),
            flow: u32_at(8),
            seq: u64_at(16),
            sent_ns: u64_at(24),
        })
    }
}

/// CLOCK_MONOTONIC in nanoseconds (the clock probes are stamped with).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let p = Probe {
            run: 7,
            flow: 123_456,
            seq: u64::MAX - 3,
            sent_ns: 987_654_321_012,
        };
        let mut buf = [0xAAu8; 160];
        assert!(p.encode(&mut buf));
        assert_eq!(Probe::decode(&buf), Some(p));
        assert_eq!(Probe::decode(&buf[..HEADER_LEN]), Some(p));
    }

    #[test]
    fn rejects_short_and_foreign() {
        let p = Probe {
            run: 1,
            flow: 2,
            seq: 3,
            sent_ns: 4,
        };
        let mut buf = [0u8; 64];
        assert!(!p.encode(&mut buf[..HEADER_LEN - 1]));
        assert!(p.encode(&mut buf));
        assert_eq!(Probe::decode(&buf[..HEADER_LEN - 1]), None);
        buf[0] ^= 1;
        assert_eq!(Probe::decode(&buf), None);
    }

    #[test]
    fn clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(b >= a && a > 0);
    }
}
