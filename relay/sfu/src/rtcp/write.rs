//! Writers for the RTCP packets the SFU sends, into caller-owned buffers.
//! Each returns the number of bytes written, or an error when the buffer is
//! too small (nothing useful is written then).

use super::report::REPORT_BLOCK_LEN;
use super::SDES_CNAME;
use super::{feedback, ReportBlock, SenderInfo, PT_PSFB, PT_RR, PT_RTPFB, PT_SDES, PT_SR};
use crate::types::{SeqNo, Ssrc};

/// Why a packet could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The buffer cannot hold the packet.
    #[error("buffer of {available} bytes cannot hold {needed}")]
    BufferTooSmall {
        /// Bytes the packet needs.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// More report blocks than the 5-bit count field holds (31).
    #[error("{0} report blocks exceed the RTCP maximum of 31")]
    TooManyBlocks(usize),
    /// More SDES chunks than the 5-bit count field holds (31).
    #[error("{0} SDES chunks exceed the RTCP maximum of 31")]
    TooManyChunks(usize),
    /// An SDES item longer than its one-octet length field holds (255).
    #[error("SDES item of {0} bytes exceeds 255")]
    ItemTooLong(usize),
}

fn room(buf: &[u8], needed: usize) -> Result<(), WriteError> {
    if buf.len() < needed {
        Err(WriteError::BufferTooSmall {
            needed,
            available: buf.len(),
        })
    } else {
        Ok(())
    }
}

fn header(buf: &mut [u8], count: u8, packet_type: u8, len: usize) {
    debug_assert!(len % 4 == 0 && len >= 4);
    buf[0] = 0x80 | (count & 0x1F);
    buf[1] = packet_type;
    buf[2..4].copy_from_slice(&((len / 4 - 1) as u16).to_be_bytes());
}

fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Write an SR with these report blocks.
pub fn write_sender_report(
    buf: &mut [u8],
    info: &SenderInfo,
    blocks: &[ReportBlock],
) -> Result<usize, WriteError> {
    if blocks.len() > 31 {
        return Err(WriteError::TooManyBlocks(blocks.len()));
    }
    let len = 28 + REPORT_BLOCK_LEN * blocks.len();
    room(buf, len)?;
    header(buf, blocks.len() as u8, PT_SR, len);
    put32(buf, 4, info.ssrc.get());
    put32(buf, 8, (info.ntp >> 32) as u32);
    put32(buf, 12, info.ntp as u32);
    put32(buf, 16, info.rtp_timestamp);
    put32(buf, 20, info.packet_count);
    put32(buf, 24, info.octet_count);
    for (i, b) in blocks.iter().enumerate() {
        b.write(&mut buf[28 + i * REPORT_BLOCK_LEN..]);
    }
    Ok(len)
}

/// Write an RR (possibly with no blocks, as the head of a compound packet).
pub fn write_receiver_report(
    buf: &mut [u8],
    sender: Ssrc,
    blocks: &[ReportBlock],
) -> Result<usize, WriteError> {
    if blocks.len() > 31 {
        return Err(WriteError::TooManyBlocks(blocks.len()));
    }
    let len = 8 + REPORT_BLOCK_LEN * blocks.len();
    room(buf, len)?;
    header(buf, blocks.len() as u8, PT_RR, len);
    put32(buf, 4, sender.get());
    for (i, b) in blocks.iter().enumerate() {
        b.write(&mut buf[8 + i * REPORT_BLOCK_LEN..]);
    }
    Ok(len)
}

/// Write an SDES packet (RFC 3550 §6.5) naming every source in `sources`
/// with the one CNAME `cname`: a chunk each, holding the CNAME item and the
/// null octets that end the chunk on a 32-bit boundary.
pub fn write_sdes_cname(
    buf: &mut [u8],
    sources: &[Ssrc],
    cname: &[u8],
) -> Result<usize, WriteError> {
    if sources.len() > 31 {
        return Err(WriteError::TooManyChunks(sources.len()));
    }
    if cname.len() > usize::from(u8::MAX) {
        return Err(WriteError::ItemTooLong(cname.len()));
    }
    // SSRC, item type and length, the text, then at least one null octet.
    let chunk = (4 + 2 + cname.len() + 1).next_multiple_of(4);
    let len = 4 + chunk * sources.len();
    room(buf, len)?;
    header(buf, sources.len() as u8, PT_SDES, len);
    for (i, ssrc) in sources.iter().enumerate() {
        let at = 4 + i * chunk;
        put32(buf, at, ssrc.get());
        buf[at + 4] = SDES_CNAME;
        buf[at + 5] = cname.len() as u8;
        buf[at + 6..at + 6 + cname.len()].copy_from_slice(cname);
        buf[at + 6 + cname.len()..at + chunk].fill(0);
    }
    Ok(len)
}

/// Write a PLI asking `media` for a key frame.
pub fn write_pli(buf: &mut [u8], sender: Ssrc, media: Ssrc) -> Result<usize, WriteError> {
    room(buf, 12)?;
    header(buf, feedback::FMT_PLI, PT_PSFB, 12);
    put32(buf, 4, sender.get());
    put32(buf, 8, media.get());
    Ok(12)
}

/// Write a FIR with one entry asking `media` for a key frame.
pub fn write_fir(
    buf: &mut [u8],
    sender: Ssrc,
    media: Ssrc,
    seq_nr: u8,
) -> Result<usize, WriteError> {
    room(buf, 20)?;
    header(buf, feedback::FMT_FIR, PT_PSFB, 20);
    put32(buf, 4, sender.get());
    put32(buf, 8, 0); // media source SSRC is unused in FIR (RFC 5104 §4.3.1.2)
    put32(buf, 12, media.get());
    buf[16..20].copy_from_slice(&[seq_nr, 0, 0, 0]);
    Ok(20)
}

/// Write a generic NACK for `lost` (ascending in modular order; each entry
/// packs a PID and the following 16 numbers). Stops adding entries when the
/// buffer is full; fails only when not even one fits.
pub fn write_nack(
    buf: &mut [u8],
    sender: Ssrc,
    media: Ssrc,
    lost: impl IntoIterator<Item = SeqNo>,
) -> Result<usize, WriteError> {
    room(buf, 16)?;
    let mut b = NackBuilder::new(buf, sender, media);
    for seq in lost {
        if !b.push(seq) {
            break;
        }
    }
    Ok(b.finish())
}

/// Incremental NACK writer over a caller's buffer (at least 16 bytes).
#[derive(Debug)]
pub struct NackBuilder<'a> {
    buf: &'a mut [u8],
    len: usize,
    current: Option<(SeqNo, u16)>,
}

impl<'a> NackBuilder<'a> {
    /// Start a NACK; `buf` must hold at least 16 bytes (else nothing fits
    /// and [`push`](Self::push) always refuses).
    pub fn new(buf: &'a mut [u8], sender: Ssrc, media: Ssrc) -> Self {
        if buf.len() >= 12 {
            put32(buf, 4, sender.get());
            put32(buf, 8, media.get());
        }
        Self {
            buf,
            len: 12,
            current: None,
        }
    }

    /// Add a lost number; false when the buffer is full.
    pub fn push(&mut self, seq: SeqNo) -> bool {
        if let Some((pid, blp)) = self.current {
            let d = seq.delta(pid);
            if (1..=16).contains(&d) {
                self.current = Some((pid, blp | 1 << (d - 1)));
                return true;
            }
            if d == 0 {
                return true;
            }
            if !self.flush() {
                return false;
            }
        }
        if self.len + 4 > self.buf.len() {
            return false;
        }
        self.current = Some((seq, 0));
        true
    }

    fn flush(&mut self) -> bool {
        if let Some((pid, blp)) = self.current.take() {
            if self.len + 4 > self.buf.len() {
                return false;
            }
            self.buf[self.len..self.len + 2].copy_from_slice(&pid.get().to_be_bytes());
            self.buf[self.len + 2..self.len + 4].copy_from_slice(&blp.to_be_bytes());
            self.len += 4;
        }
        true
    }

    /// Write the header; returns the packet length (0 when nothing was pushed).
    pub fn finish(mut self) -> usize {
        self.flush();
        if self.len == 12 {
            return 0;
        }
        header(self.buf, feedback::FMT_NACK, PT_RTPFB, self.len);
        self.len
    }
}
