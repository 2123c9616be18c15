//! `ChannelNumber`: a TURN channel number that exists only through its parser.

/// A channel number accepted by this server: 0x4000–0x4FFF (RFC 8656), or
/// 0x4000–0x7FFF (RFC 5766) unless the strict range is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    /// RFC 8656's range.
    pub const MIN: u16 = 0x4000;
    /// RFC 8656's upper bound (RFC 7983 demultiplexing leaves 0x5000–0x7FFF unassigned).
    pub const MAX_STRICT: u16 = 0x4FFF;
    /// RFC 5766's upper bound, still used by older clients.
    pub const MAX_WIDE: u16 = 0x7FFF;

    /// Parse `n` under the strict (RFC 8656) or wide (RFC 5766) range.
    pub fn new(n: u16, strict: bool) -> Option<Self> {
        let max = if strict {
            Self::MAX_STRICT
        } else {
            Self::MAX_WIDE
        };
        (Self::MIN..=max).contains(&n).then_some(Self(n))
    }

    /// The number on the wire.
    pub fn get(self) -> u16 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(ChannelNumber::new(0x3FFF, false).is_none());
        assert!(ChannelNumber::new(0x4000, true).is_some());
        assert!(ChannelNumber::new(0x4FFF, true).is_some());
        assert!(ChannelNumber::new(0x5000, true).is_none());
        assert!(ChannelNumber::new(0x5000, false).is_some());
        assert!(ChannelNumber::new(0x7FFF, false).is_some());
        assert!(ChannelNumber::new(0x8000, false).is_none());
    }
}
