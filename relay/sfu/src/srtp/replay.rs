//! The replay window (RFC 3711 §3.3.2): a 128-packet bitmap behind the
//! highest index accepted.

use super::SrtpError;

const WINDOW: u64 = 128;

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ReplayWindow {
    highest: Option<u64>,
    /// Bit i = index `highest - i` was accepted.
    bits: u128,
}

impl ReplayWindow {
    /// Whether `index` may be accepted (it is not a replay and not too old).
    pub(super) fn check(&self, index: u64) -> Result<(), SrtpError> {
        let Some(h) = self.highest else {
            return Ok(());
        };
        if index > h {
            return Ok(());
        }
        let back = h - index;
        if back >= WINDOW {
            return Err(SrtpError::TooOld);
        }
        if self.bits & (1 << back) != 0 {
            return Err(SrtpError::Replayed);
        }
        Ok(())
    }

    /// Record `index` as accepted (after it authenticated).
    pub(super) fn accept(&mut self, index: u64) {
        match self.highest {
            None => {
                self.highest = Some(index);
                self.bits = 1;
            }
            Some(h) if index > h => {
                let shift = index - h;
                self.bits = if shift >= WINDOW {
                    0
                } else {
                    self.bits << shift
                };
                self.bits |= 1;
                self.highest = Some(index);
            }
            Some(h) => {
                let back = h - index;
                if back < WINDOW {
                    self.bits |= 1 << back;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window() {
        let mut w = ReplayWindow::default();
        assert!(w.check(5).is_ok());
        w.accept(5);
        assert_eq!(w.check(5), Err(SrtpError::Replayed));
        assert!(w.check(3).is_ok());
        w.accept(3);
        assert_eq!(w.check(3), Err(SrtpError::Replayed));
        w.accept(200);
        assert_eq!(w.check(72), Err(SrtpError::TooOld));
        assert!(w.check(73).is_ok());
        assert!(w.check(199).is_ok());
        w.accept(199);
        assert_eq!(w.check(199), Err(SrtpError::Replayed));
        assert_eq!(w.check(200), Err(SrtpError::Replayed));
        w.accept(1000);
        assert_eq!(w.check(200), Err(SrtpError::TooOld));
    }
}
