//! Framing of STUN and ChannelData messages on a byte stream (TURN over TCP
//! and TLS, RFC 8656 §12.5 and RFC 8489 §6.2.2).
//!
//! Owns: finding where the next message ends in the bytes received so far on
//! a stream. Must not touch: sockets, buffers, or what a message means — the
//! caller keeps the bytes, asks [`frame_len`] how long the message at the front
//! is, and hands the whole frame (padding included) to the parser.
//!
//! On a stream there are no datagram boundaries, so every message carries its
//! own length: a STUN message is its 20-byte header plus the header's length
//! field (always a multiple of 4); a ChannelData message is its 4-byte header
//! plus its length field, **padded to a multiple of 4** (RFC 8656 §12.5: over
//! TCP and TLS the padding is mandatory, because the next message must start on
//! a 4-byte boundary). Anything else at the start of a frame (a TLS record on a
//! plain TCP port, an HTTP request, noise) cannot be resynchronised and ends the
//! stream.
//!
//! ```
//! use tern_stun::framing::{frame_len, Frame};
//! // ChannelData on channel 0x4000 carrying 5 bytes, padded to 8.
//! let stream = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0, 0x40];
//! assert_eq!(frame_len(&stream, 1500), Ok(Frame::Complete(12)));
//! assert_eq!(frame_len(&stream[..6], 1500), Ok(Frame::Incomplete { needed: 12 }));
//! ```

use crate::header::{HEADER_LEN, MAGIC_COOKIE};
use crate::CHANNEL_DATA_HEADER_LEN;

/// What the bytes at the front of a stream buffer hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A whole message of this many bytes (ChannelData padding included) is
    /// at the front of the buffer.
    Complete(usize),
    /// Not yet a whole message: the frame will be `needed` bytes long (or at
    /// least `needed`, when even the header is not complete yet).
    Incomplete {
        /// Bytes the buffer must hold before asking again.
        needed: usize,
    },
}

/// Why the bytes at the front of a stream cannot be a STUN or ChannelData
/// message. Every variant ends the stream: there is no way to find the next
/// message boundary after it.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The first byte is neither STUN (0b00) nor ChannelData (0b01).
    #[error("first byte {0:#04x} starts neither STUN nor ChannelData")]
    UnknownClass(u8),
    /// A STUN header whose magic cookie is wrong.
    #[error("bad magic cookie in a STUN header")]
    BadMagicCookie,
    /// A STUN length field that is not a multiple of 4.
    #[error("STUN length {0} is not a multiple of 4")]
    BadLengthAlignment(u16),
    /// The message announces more bytes than the caller accepts.
    #[error("frame of {len} bytes is larger than the limit of {max}")]
    TooLarge {
        /// The announced frame length, header and padding included.
        len: usize,
        /// The caller's limit.
        max: usize,
    },
}

/// The length of the message at the front of `buf`, at most `max` bytes.
///
/// Needs 4 bytes to know a length (fewer: [`Frame::Incomplete`]); checks the
/// STUN magic cookie as soon as 8 bytes are there, so garbage is refused early.
/// Never reads past `buf` and never panics.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Frame, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(Frame::Incomplete {
            needed: CHANNEL_DATA_HEADER_LEN,
        });
    };
    let class = first >> 6;
    if class > 1 {
        return Err(FrameError::UnknownClass(first));
    }
    let Some(head) = buf.first_chunk::<4>() else {
        return Ok(Frame::Incomplete {
            needed: CHANNEL_DATA_HEADER_LEN,
        });
    };
    let length = u16::from_be_bytes([head[2], head[3]]);
    let total = if class == 0 {
        if length % 4 != 0 {
            return Err(FrameError::BadLengthAlignment(length));
        }
        let total = HEADER_LEN + usize::from(length);
        // Size first, so the verdict never depends on how many bytes arrived.
        if total > max {
            return Err(FrameError::TooLarge { len: total, max });
        }
        if let Some(cookie) = buf.get(4..8) {
            if cookie != MAGIC_COOKIE.to_be_bytes() {
                return Err(FrameError::BadMagicCookie);
            }
        }
        total
    } else {
        CHANNEL_DATA_HEADER_LEN + padded(usize::from(length))
    };
    if total > max {
        return Err(FrameError::TooLarge { len: total, max });
    }
    if buf.len() >= total {
        Ok(Frame::Complete(total))
    } else {
        Ok(Frame::Incomplete { needed: total })
    }
}

/// `len` rounded up to a multiple of 4: the length a ChannelData payload
/// takes on a stream.
pub fn padded(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun(len: u16) -> Vec<u8> {
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&[7; 12]);
        m.extend(std::iter::repeat(0).take(usize::from(len)));
        m
    }

    #[test]
    fn stun_frames_are_header_plus_length() {
        let m = stun(8);
        assert_eq!(frame_len(&m, 1500), Ok(Frame::Complete(28)));
        for cut in 0..4 {
            assert_eq!(
                frame_len(&m[..cut], 1500),
                Ok(Frame::Incomplete { needed: 4 }),
                "{cut}"
            );
        }
        for cut in 4..28 {
            assert_eq!(
                frame_len(&m[..cut], 1500),
                Ok(Frame::Incomplete { needed: 28 })
            );
        }
        // Two messages back to back: only the first is framed.
        let mut two = m.clone();
        two.extend_from_slice(&m);
        assert_eq!(frame_len(&two, 1500), Ok(Frame::Complete(28)));
    }

    #[test]
    fn channel_data_is_padded_on_streams() {
        for (len, total) in [(0u16, 4usize), (1, 8), (3, 8), (4, 8), (5, 12), (8, 12)] {
            let mut m = vec![0x40, 0x01];
            m.extend_from_slice(&len.to_be_bytes());
            m.resize(total, 0);
            assert_eq!(frame_len(&m, 1500), Ok(Frame::Complete(total)), "{len}");
            assert_eq!(
                frame_len(&m[..total - 1], 1500),
                Ok(Frame::Incomplete { needed: total })
            );
        }
        assert_eq!(padded(65_535), 65_536);
    }

    #[test]
    fn garbage_and_oversize_are_errors() {
        // A TLS ClientHello on a plain TCP port: its first byte (0x16) looks
        // like STUN, its missing magic cookie does not.
        assert_eq!(
            frame_len(
                &[0x16, 0x03, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03],
                1500
            ),
            Err(FrameError::BadMagicCookie)
        );
        assert_eq!(
            frame_len(&[0x80, 0, 0, 0], 1500),
            Err(FrameError::UnknownClass(0x80))
        );
        // "GET " reads as ChannelData on channel 0x4745 with 0x5420 bytes: too large.
        assert_eq!(
            frame_len(b"GET / HTTP/1.1", 1500),
            Err(FrameError::TooLarge {
                len: 21_540,
                max: 1500
            })
        );
        let mut m = stun(8);
        m[4] ^= 1;
        assert_eq!(frame_len(&m, 1500), Err(FrameError::BadMagicCookie));
        // The cookie is checked as soon as it is there, not before.
        assert_eq!(
            frame_len(&m[..7], 1500),
            Ok(Frame::Incomplete { needed: 28 })
        );
        assert_eq!(
            frame_len(&[0x00, 0x01, 0x00, 0x06], 1500),
            Err(FrameError::BadLengthAlignment(6))
        );
        // A 64 KiB ChannelData length is refused from its first 4 bytes.
        assert_eq!(
            frame_len(&[0x40, 0x00, 0xFF, 0xFF], 16_384),
            Err(FrameError::TooLarge {
                len: 65_540,
                max: 16_384
            })
        );
        assert_eq!(
            frame_len(&stun(0xFFFC), 16_384),
            Err(FrameError::TooLarge {
                len: 65_552,
                max: 16_384
            })
        );
    }
}
