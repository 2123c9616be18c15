//! PASSWORD-ALGORITHM and PASSWORD-ALGORITHMS values (RFC 8489 §14.11,
//! §14.12): entries of algorithm (u16), parameters length (u16) and
//! parameters padded to 32 bits.

use super::padded_len;
use crate::error::ParseError;

/// A password algorithm (RFC 8489 §18.5).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PasswordAlgorithm {
    /// 0x0001: MD5 of "username:realm:password".
    Md5,
    /// 0x0002: SHA-256 of "username:realm:password".
    Sha256,
    /// Any other code. `Other(1)` and `Other(2)` compare by code with
    /// `Md5`/`Sha256` in [`password_algorithms_contains`].
    Other(u16),
}

impl PasswordAlgorithm {
    /// The wire code.
    pub fn code(self) -> u16 {
        match self {
            PasswordAlgorithm::Md5 => 0x0001,
            PasswordAlgorithm::Sha256 => 0x0002,
            PasswordAlgorithm::Other(c) => c,
        }
    }

    /// The algorithm of a wire code.
    pub fn from_code(code: u16) -> Self {
        match code {
            0x0001 => PasswordAlgorithm::Md5,
            0x0002 => PasswordAlgorithm::Sha256,
            c => PasswordAlgorithm::Other(c),
        }
    }
}

/// Decode a PASSWORD-ALGORITHM value (a single entry). Its parameters must
/// fit in the value; up to 3 bytes of parameter padding may follow them.
pub fn decode_password_algorithm(value: &[u8]) -> Result<PasswordAlgorithm, ParseError> {
    let (algo, rest) = entry(value).ok_or(ParseError::BadAttributeLength)?;
    if !rest.is_empty() {
        return Err(ParseError::BadAttributeLength);
    }
    Ok(algo)
}

/// Whether a PASSWORD-ALGORITHMS value lists `algo`. A malformed list lists
/// nothing after the point where it breaks.
pub fn password_algorithms_contains(value: &[u8], algo: PasswordAlgorithm) -> bool {
    let mut rest = value;
    while let Some((a, tail)) = entry(rest) {
        if a.code() == algo.code() {
            return true;
        }
        rest = tail;
    }
    false
}

/// One entry at the front of `value` and what follows it. Trailing bytes
/// fewer than a padded parameter block are taken as that block's padding.
fn entry(value: &[u8]) -> Option<(PasswordAlgorithm, &[u8])> {
    let (head, rest) = value.split_first_chunk::<4>()?;
    let algo = PasswordAlgorithm::from_code(u16::from_be_bytes([head[0], head[1]]));
    let plen = usize::from(u16::from_be_bytes([head[2], head[3]]));
    if rest.len() < plen {
        return None;
    }
    let skip = padded_len(plen).min(rest.len());
    Some((algo, rest.get(skip..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single() {
        assert_eq!(
            decode_password_algorithm(&[0, 2, 0, 0]).unwrap(),
            PasswordAlgorithm::Sha256
        );
        assert_eq!(
            decode_password_algorithm(&[0, 1, 0, 0]).unwrap(),
            PasswordAlgorithm::Md5
        );
        assert_eq!(
            decode_password_algorithm(&[0, 9, 0, 1, 7, 0, 0, 0]).unwrap(),
            PasswordAlgorithm::Other(9)
        );
        assert_eq!(
            decode_password_algorithm(&[0, 9, 0, 1, 7]).unwrap(),
            PasswordAlgorithm::Other(9)
        );
        assert_eq!(
            decode_password_algorithm(&[0, 9, 0, 2, 7]),
            Err(ParseError::BadAttributeLength)
        );
        assert_eq!(
            decode_password_algorithm(&[0, 1, 0]),
            Err(ParseError::BadAttributeLength)
        );
        assert_eq!(
            decode_password_algorithm(&[0, 1, 0, 0, 0, 2, 0, 0]),
            Err(ParseError::BadAttributeLength)
        );
    }

    #[test]
    fn list() {
        let v = [0, 1, 0, 0, 0, 9, 0, 3, 1, 2, 3, 0, 0, 2, 0, 0];
        assert!(password_algorithms_contains(&v, PasswordAlgorithm::Md5));
        assert!(password_algorithms_contains(
            &v,
            PasswordAlgorithm::Other(9)
        ));
        assert!(password_algorithms_contains(&v, PasswordAlgorithm::Sha256));
        assert!(password_algorithms_contains(
            &v,
            PasswordAlgorithm::Other(2)
        ));
        assert!(!password_algorithms_contains(
            &v,
            PasswordAlgorithm::Other(3)
        ));
        assert!(!password_algorithms_contains(&[], PasswordAlgorithm::Md5));
        // Broken after the first entry.
        assert!(password_algorithms_contains(
            &[0, 1, 0, 0, 0, 2, 0, 9],
            PasswordAlgorithm::Md5
        ));
        assert!(!password_algorithms_contains(
            &[0, 1, 0, 0, 0, 2, 0, 9],
            PasswordAlgorithm::Sha256
        ));
        assert_eq!(PasswordAlgorithm::from_code(2).code(), 2);
    }
}
