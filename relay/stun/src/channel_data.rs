//! ChannelData messages (RFC 8656 §12.4): a 4-byte header (channel number,
//! length) and the application data, parsed and framed without copying.
//! Owns framing only; whether a channel is bound is the TURN layer's call.

use crate::error::{BufferTooSmall, ParseError};

/// Length of the ChannelData header.
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// A ChannelData message borrowed from the packet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ChannelData<'a> {
    /// The channel number, 0x4000..=0x7FFF.
    pub channel: u16,
    /// The application data, padding excluded.
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parse `buf` = header + data, optionally followed by up to 3 bytes of
    /// padding (more is [`ParseError::LengthMismatch`], fewer than the length
    /// field announces is [`ParseError::TooShort`]). The channel must be in
    /// 0x4000..=0x7FFF ([`ParseError::NotChannelData`] otherwise); the RFC
    /// 8656 range 0x4000..=0x4FFF is the caller's policy.
    pub fn parse(buf: &'a [u8]) -> Result<ChannelData<'a>, ParseError> {
        let (hdr, rest) = buf
            .split_first_chunk::<CHANNEL_DATA_HEADER_LEN>()
            .ok_or(ParseError::TooShort)?;
        let channel = u16::from_be_bytes([hdr[0], hdr[1]]);
        if !(0x4000..=0x7FFF).contains(&channel) {
            return Err(ParseError::NotChannelData);
        }
        let len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
        let data = rest.get(..len).ok_or(ParseError::TooShort)?;
        if rest.len() - data.len() > 3 {
            return Err(ParseError::LengthMismatch);
        }
        Ok(ChannelData { channel, data })
    }
}

/// Write the 4-byte header for `channel` and `len` into `buf[..4]`.
pub fn write_channel_data_header(
    buf: &mut [u8],
    channel: u16,
    len: u16,
) -> Result<(), BufferTooSmall> {
    let hdr = buf
        .first_chunk_mut::<CHANNEL_DATA_HEADER_LEN>()
        .ok_or(BufferTooSmall)?;
    hdr[0..2].copy_from_slice(&channel.to_be_bytes());
    hdr[2..4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_with_and_without_padding() {
        let b = [0x40, 0x00, 0x00, 0x03, 1, 2, 3];
        assert_eq!(
            ChannelData::parse(&b).unwrap(),
            ChannelData {
                channel: 0x4000,
                data: &[1, 2, 3]
            }
        );
        let b = [0x4f, 0xff, 0x00, 0x03, 1, 2, 3, 0];
        assert_eq!(
            ChannelData::parse(&b).unwrap(),
            ChannelData {
                channel: 0x4fff,
                data: &[1, 2, 3]
            }
        );
        let b = [0x7f, 0xff, 0x00, 0x00, 0, 0, 0];
        assert_eq!(ChannelData::parse(&b).unwrap().data, &[] as &[u8]);
    }

    #[test]
    fn parse_errors() {
        assert_eq!(ChannelData::parse(&[0x40, 0]), Err(ParseError::TooShort));
        assert_eq!(
            ChannelData::parse(&[0x40, 0, 0, 4, 1, 2, 3]),
            Err(ParseError::TooShort)
        );
        assert_eq!(
            ChannelData::parse(&[0x40, 0, 0, 0, 0, 0, 0, 0]),
            Err(ParseError::LengthMismatch)
        );
        assert_eq!(
            ChannelData::parse(&[0x3f, 0xff, 0, 0]),
            Err(ParseError::NotChannelData)
        );
        assert_eq!(
            ChannelData::parse(&[0x80, 0x00, 0, 0]),
            Err(ParseError::NotChannelData)
        );
        assert_eq!(
            ChannelData::parse(&[0x00, 0x01, 0, 0]),
            Err(ParseError::NotChannelData)
        );
    }

    #[test]
    fn header_round_trip() {
        let mut b = [0u8; 9];
        write_channel_data_header(&mut b, 0x4123, 5).unwrap();
        b[4..].copy_from_slice(b"hello");
        assert_eq!(
            ChannelData::parse(&b).unwrap(),
            ChannelData {
                channel: 0x4123,
                data: b"hello"
            }
        );
        assert_eq!(
            write_channel_data_header(&mut [0; 3], 0x4000, 0),
            Err(BufferTooSmall)
        );
    }
}
