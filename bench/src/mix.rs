//! Packet size mixes (`--payload-mix SIZE:WEIGHT[,SIZE:WEIGHT...]`).
//!
//! A mix is turned once into a lookup table of [`TABLE_LEN`] sizes in which
//! each size fills a share of the slots proportional to its weight (largest
//! remainder, and at least one slot for every size). Each flow then draws
//! every packet's size with one step of its own SplitMix64 generator, seeded
//! from the mix seed and the flow id, and one table lookup: deterministic,
//! and no allocation per packet.

use serde::Serialize;

use crate::payload::HEADER_LEN;

/// Largest payload a mix may ask for, bytes.
pub const MAX_SIZE: usize = 1400;
/// Slots in the lookup table (a power of two: the top bits of a draw index it).
pub const TABLE_LEN: usize = 4096;
const TABLE_BITS: u32 = TABLE_LEN.trailing_zeros();

/// One size of a mix and its weight.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MixEntry {
    /// Probe payload bytes (what the peer receives).
    pub size: usize,
    /// Relative weight (> 0).
    pub weight: f64,
}

/// A weighted set of payload sizes with its precomputed lookup table.
#[derive(Clone, Debug, Serialize)]
pub struct PayloadMix {
    /// The sizes and weights, in the order given.
    pub entries: Vec<MixEntry>,
    /// Seed of the per-flow generators.
    pub seed: u64,
    #[serde(skip)]
    table: Vec<u16>,
}

impl PayloadMix {
    /// Build a mix from entries (validated as [`PayloadMix::parse`] does).
    pub fn new(entries: Vec<MixEntry>, seed: u64) -> Result<PayloadMix, String> {
        if entries.is_empty() {
            return Err("the payload mix is empty".into());
        }
        if entries.len() > 64 {
            return Err("a payload mix has at most 64 sizes".into());
        }
        for e in &entries {
            if e.size < HEADER_LEN || e.size > MAX_SIZE {
                return Err(format!(
                    "payload size {} is out of range: sizes must be {HEADER_LEN}..={MAX_SIZE} bytes \
                     ({HEADER_LEN} is the probe header)",
                    e.size
                ));
            }
            if !(e.weight.is_finite() && e.weight > 0.0) {
                return Err(format!(
                    "weight {} of size {} must be a number > 0",
                    e.weight, e.size
                ));
            }
        }
        let table = build_table(&entries);
        Ok(PayloadMix {
            entries,
            seed,
            table,
        })
    }

    /// Parse `SIZE:WEIGHT[,SIZE:WEIGHT...]`, e.g. `100:80,1200:20`.
    pub fn parse(s: &str, seed: u64) -> Result<PayloadMix, String> {
        let mut entries = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (size, weight) = part
                .split_once(':')
                .ok_or_else(|| format!("'{part}' is not SIZE:WEIGHT (e.g. 100:80,1200:20)"))?;
            let size: usize = size
                .trim()
                .parse()
                .map_err(|_| format!("'{size}' in '{part}' is not a size in bytes"))?;
            let weight: f64 = weight
                .trim()
                .parse()
                .map_err(|_| format!("'{weight}' in '{part}' is not a weight"))?;
            if entries.iter().any(|e: &MixEntry| e.size == size) {
                return Err(format!("size {size} appears twice in the payload mix"));
            }
            entries.push(MixEntry { size, weight });
        }
        PayloadMix::new(entries, seed)
    }

    /// A mix of one size (what `--payload` means).
    pub fn fixed(size: usize) -> PayloadMix {
        let size = size.clamp(HEADER_LEN, MAX_SIZE);
        PayloadMix {
            entries: vec![MixEntry { size, weight: 1.0 }],
            seed: 0,
            table: vec![size as u16; 1],
        }
    }

    /// Whether every packet has the same size.
    pub fn is_fixed(&self) -> bool {
        self.entries.len() == 1
    }

    /// The largest size.
    pub fn max_size(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.size)
            .max()
            .unwrap_or(HEADER_LEN)
    }

    /// The mean size by weight, bytes.
    pub fn mean_size(&self) -> f64 {
        let w: f64 = self.entries.iter().map(|e| e.weight).sum();
        self.entries
            .iter()
            .map(|e| e.size as f64 * e.weight)
            .sum::<f64>()
            / w
    }

    /// The generator state of flow `flow` (seeded, distinct per flow).
    pub fn flow_state(&self, flow: u32) -> u64 {
        self.seed ^ u64::from(flow).wrapping_mul(0xD6E8_FEB8_6659_FD93)
    }

    /// Draw one size, advancing `state`.
    #[inline]
    pub fn draw(&self, state: &mut u64) -> usize {
        if self.table.len() == 1 {
            return usize::from(self.table[0]);
        }
        let r = splitmix64(state);
        usize::from(self.table[(r >> (64 - TABLE_BITS)) as usize])
    }

    /// `100:80,1200:20` (weights as given).
    pub fn describe(&self) -> String {
        self.entries
            .iter()
            .map(|e| format!("{}:{}", e.size, e.weight))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One SplitMix64 step.
#[inline]
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Slots per entry by largest remainder, every entry at least one slot.
fn build_table(entries: &[MixEntry]) -> Vec<u16> {
    let total: f64 = entries.iter().map(|e| e.weight).sum();
    let free = TABLE_LEN - entries.len();
    let exact: Vec<f64> = entries
        .iter()
        .map(|e| e.weight / total * free as f64)
        .collect();
    let mut slots: Vec<usize> = exact.iter().map(|x| 1 + x.floor() as usize).collect();
    let mut left = TABLE_LEN - slots.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a].fract(), exact[b].fract());
        rb.total_cmp(&ra)
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        slots[i] += 1;
        left -= 1;
    }
    let mut table = Vec::with_capacity(TABLE_LEN);
    for (e, n) in entries.iter().zip(slots) {
        table.resize(table.len() + n, e.size as u16);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let m = PayloadMix::parse("100:80, 1200:20", 1).unwrap();
        assert_eq!(m.entries.len(), 2);
        assert_eq!(m.describe(), "100:80,1200:20");
        assert_eq!(m.max_size(), 1200);
        assert!((m.mean_size() - 320.0).abs() < 1e-9);
        for (bad, what) in [
            ("", "empty"),
            ("100", "SIZE:WEIGHT"),
            ("31:1", "out of range"),
            ("1401:1", "out of range"),
            ("100:0", "> 0"),
            ("100:-1", "> 0"),
            ("100:x", "not a weight"),
            ("abc:1", "not a size"),
            ("100:1,100:2", "twice"),
        ] {
            let e = PayloadMix::parse(bad, 1).unwrap_err();
            assert!(e.contains(what), "{bad:?}: {e}");
        }
        assert!(PayloadMix::parse("32:1,1400:1", 1).is_ok());
    }

    #[test]
    fn table_is_full_and_proportional() {
        let m = PayloadMix::parse("100:80,1200:20,600:0.001", 1).unwrap();
        assert_eq!(m.table.len(), TABLE_LEN);
        let n = |s: u16| m.table.iter().filter(|&&x| x == s).count();
        assert_eq!(n(600), 1, "a tiny weight still gets one slot");
        assert!((n(100) as f64 / TABLE_LEN as f64 - 0.8).abs() < 0.001);
    }

    #[test]
    fn draws_follow_the_weights_and_are_deterministic() {
        let m = PayloadMix::parse("100:80,1200:15,500:5", 7).unwrap();
        let draws = |flow: u32| {
            let mut st = m.flow_state(flow);
            (0..100_000).map(|_| m.draw(&mut st)).collect::<Vec<_>>()
        };
        let a = draws(3);
        assert_eq!(a, draws(3), "same seed and flow, same sizes");
        assert_ne!(a, draws(4), "another flow, another sequence");
        for (size, share) in [(100, 0.80), (1200, 0.15), (500, 0.05)] {
            let got = a.iter().filter(|&&s| s == size).count() as f64 / a.len() as f64;
            assert!((got - share).abs() < 0.01, "size {size}: {got} vs {share}");
        }
        let other = PayloadMix::parse("100:80,1200:15,500:5", 8).unwrap();
        let mut st = other.flow_state(3);
        let b: Vec<usize> = (0..1000).map(|_| other.draw(&mut st)).collect();
        assert_ne!(&a[..1000], &b[..], "another seed, another sequence");
    }

    #[test]
    fn fixed_mix_always_draws_its_size() {
        let m = PayloadMix::fixed(160);
        let mut st = m.flow_state(0);
        assert!((0..100).all(|_| m.draw(&mut st) == 160));
        assert!(m.is_fixed());
    }
}
