//! ERROR-CODE value (RFC 8489 §14.8): 21 reserved bits, 3-bit class (the
//! hundreds), 8-bit number (0..=99), UTF-8 reason phrase of at most 763
//! bytes.

use super::text::decode_utf8;
use crate::error::ParseError;

/// Longest reason phrase in bytes (fewer than 128 characters, RFC 8489 §14.8).
pub const ERROR_REASON_MAX_LEN: usize = 763;

/// Decode an ERROR-CODE value into (code, reason). The reserved bits are
/// ignored; the code must lie in 300..=699 with a number below 100.
pub fn decode_error_code(value: &[u8]) -> Result<(u16, &str), ParseError> {
    let (head, reason) = value
        .split_first_chunk::<4>()
        .ok_or(ParseError::BadAttributeLength)?;
    let class = u16::from(head[2] & 0x07);
    let number = u16::from(head[3]);
    let code = class * 100 + number;
    if !(3..=6).contains(&class) || number > 99 {
        return Err(ParseError::BadErrorCode(code));
    }
    Ok((code, decode_utf8(reason, ERROR_REASON_MAX_LEN)?))
}

/// `reason` cut to at most 763 bytes at a character boundary.
pub(crate) fn truncate_reason(reason: &str) -> &str {
    let mut end = reason.len().min(ERROR_REASON_MAX_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.get(..end).unwrap_or("")
}

/// Write the 4-byte head of an ERROR-CODE value for `code` into `out`
/// (class = code / 100 masked to 3 bits, number = code % 100).
pub(crate) fn encode_error_code(code: u16, out: &mut [u8; 4]) {
    let class = ((code / 100) & 0x07) as u8;
    let number = (code % 100) as u8;
    *out = [0, 0, class, number];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_codes() {
        let mut v = vec![0, 0, 4, 1];
        v.extend_from_slice(b"Unauthorized");
        assert_eq!(decode_error_code(&v).unwrap(), (401, "Unauthorized"));
        assert_eq!(decode_error_code(&[0, 0, 3, 0]).unwrap(), (300, ""));
        assert_eq!(decode_error_code(&[0, 0, 6, 99]).unwrap(), (699, ""));
        // Reserved bits are ignored.
        assert_eq!(
            decode_error_code(&[0xff, 0xff, 0xfc, 38]).unwrap(),
            (438, "")
        );
    }

    #[test]
    fn rejects_bad_codes() {
        assert_eq!(
            decode_error_code(&[0, 0, 2, 99]),
            Err(ParseError::BadErrorCode(299))
        );
        assert_eq!(
            decode_error_code(&[0, 0, 7, 0]),
            Err(ParseError::BadErrorCode(700))
        );
        assert_eq!(
            decode_error_code(&[0, 0, 4, 100]),
            Err(ParseError::BadErrorCode(500))
        );
        assert_eq!(
            decode_error_code(&[0, 0, 4]),
            Err(ParseError::BadAttributeLength)
        );
        assert_eq!(
            decode_error_code(&[0, 0, 4, 0, 0xff]),
            Err(ParseError::InvalidUtf8)
        );
        let mut long = vec![0, 0, 4, 0];
        long.extend_from_slice(&[b'a'; 764]);
        assert_eq!(decode_error_code(&long), Err(ParseError::TextTooLong));
    }

    #[test]
    fn encode_and_truncate() {
        let mut h = [9u8; 4];
        encode_error_code(420, &mut h);
        assert_eq!(h, [0, 0, 4, 20]);
        let s = "é".repeat(400); // 800 bytes
        let t = truncate_reason(&s);
        assert_eq!(t.len(), 762);
        assert!(t.chars().all(|c| c == 'é'));
        assert_eq!(truncate_reason("short"), "short");
    }
}
