//! What the forwarding plane needs to know about a video payload without
//! decoding it: does this packet start a key frame, and (VP8) which temporal
//! layer it belongs to and whether it is a layer sync point.
//!
//! Owns: the VP8 payload descriptor (RFC 7741 §4.2) and the H.264 NAL unit
//! framing of RFC 6184 (single NAL, STAP-A, FU-A). Must not touch: the
//! bitstream beyond the first bytes; nothing here allocates.

/// Codecs whose payloads the forwarding plane understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// VP8 (RFC 7741): key frames and temporal layers.
    Vp8,
    /// H.264 (RFC 6184): key frames (IDR / SPS), no temporal layers.
    H264,
    /// Opus: audio, every packet forwarded.
    Opus,
    /// Any other codec: forwarded without key-frame or layer awareness
    /// (so no simulcast switching for it).
    Other,
}

/// What one packet's payload says about frames and layers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameInfo {
    /// The packet is the first of a key frame (a decoder can start here).
    pub key_frame_start: bool,
    /// The packet is the first of a frame (any frame).
    pub frame_start: bool,
    /// Temporal layer id, when the payload carries one (VP8 TID).
    pub temporal_layer: Option<u8>,
    /// Layer sync (VP8 Y bit): frame depends only on the base layer, so a
    /// receiver may switch up to this temporal layer here.
    pub layer_sync: bool,
    /// VP8 PictureID and whether it uses the 15-bit form.
    pub picture_id: Option<(u16, bool)>,
    /// VP8 TL0PICIDX.
    pub tl0_pic_idx: Option<u8>,
}

impl Codec {
    /// Inspect a payload. Payloads too short or malformed for the codec
    /// yield the default (nothing known: not a key frame).
    pub fn frame_info(self, payload: &[u8]) -> FrameInfo {
        match self {
            Codec::Vp8 => vp8::Descriptor::parse(payload)
                .map(|d| d.frame_info())
                .unwrap_or_default(),
            Codec::H264 => h264::frame_info(payload),
            Codec::Opus | Codec::Other => FrameInfo::default(),
        }
    }

    /// True for codecs with video frames the forwarding plane can switch on.
    pub fn is_switchable_video(self) -> bool {
        matches!(self, Codec::Vp8 | Codec::H264)
    }
}

/// VP8 payload descriptor (RFC 7741 §4.2).
pub mod vp8 {
    use super::FrameInfo;

    /// A parsed VP8 payload descriptor.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Descriptor {
        /// N bit: non-reference frame.
        pub non_reference: bool,
        /// S bit: start of a VP8 partition.
        pub start_of_partition: bool,
        /// Partition index.
        pub partition_id: u8,
        /// PictureID (7 or 15 bits) and whether it uses the 15-bit form.
        pub picture_id: Option<(u16, bool)>,
        /// TL0PICIDX.
        pub tl0_pic_idx: Option<u8>,
        /// Offset of the PictureID field (its first byte).
        pub picture_id_at: usize,
        /// Offset of the TL0PICIDX byte.
        pub tl0_pic_idx_at: usize,
        /// TID.
        pub temporal_layer: Option<u8>,
        /// Y bit.
        pub layer_sync: bool,
        /// KEYIDX.
        pub key_idx: Option<u8>,
        /// Length of the descriptor; the VP8 payload starts here.
        pub len: usize,
        /// P bit of the VP8 payload header is 0 (only meaningful at the
        /// start of partition 0).
        pub key_frame_bit: bool,
    }

    impl Descriptor {
        /// Parse the descriptor at the start of a VP8 RTP payload; `None`
        /// when it runs past the payload.
        pub fn parse(p: &[u8]) -> Option<Self> {
            let &b0 = p.first()?;
            let mut d = Descriptor {
                non_reference: b0 & 0x20 != 0,
                start_of_partition: b0 & 0x10 != 0,
                partition_id: b0 & 0x07,
                ..Descriptor::default()
            };
            let mut at = 1;
            if b0 & 0x80 != 0 {
                let &x = p.get(at)?;
                at += 1;
                if x & 0x80 != 0 {
                    d.picture_id_at = at;
                    let &m = p.get(at)?;
                    if m & 0x80 != 0 {
                        let &lo = p.get(at + 1)?;
                        d.picture_id = Some((u16::from(m & 0x7F) << 8 | u16::from(lo), true));
                        at += 2;
                    } else {
                        d.picture_id = Some((u16::from(m), false));
                        at += 1;
                    }
                }
                if x & 0x40 != 0 {
                    d.tl0_pic_idx_at = at;
                    d.tl0_pic_idx = Some(*p.get(at)?);
                    at += 1;
                }
                if x & 0x30 != 0 {
                    let &t = p.get(at)?;
                    if x & 0x20 != 0 {
                        d.temporal_layer = Some(t >> 6);
                        d.layer_sync = t & 0x20 != 0;
                    }
                    if x & 0x10 != 0 {
                        d.key_idx = Some(t & 0x1F);
                    }
                    at += 1;
                }
            }
            d.len = at;
            if d.start_of_partition && d.partition_id == 0 {
                let &h = p.get(at)?;
                d.key_frame_bit = h & 0x01 == 0;
            }
            Some(d)
        }

        /// Frame and layer facts for the forwarding plane.
        pub fn frame_info(&self) -> FrameInfo {
            let frame_start = self.start_of_partition && self.partition_id == 0;
            FrameInfo {
                key_frame_start: frame_start && self.key_frame_bit,
                frame_start,
                temporal_layer: self.temporal_layer,
                layer_sync: self.layer_sync,
                picture_id: self.picture_id,
                tl0_pic_idx: self.tl0_pic_idx,
            }
        }
    }

    /// Rewrite the PictureID (in its own 7- or 15-bit form) and TL0PICIDX of
    /// the descriptor at the start of `payload`, in place. False when the
    /// descriptor does not parse; fields it lacks are left alone.
    pub fn rewrite(payload: &mut [u8], picture_id: Option<u16>, tl0_pic_idx: Option<u8>) -> bool {
        let Some(d) = Descriptor::parse(payload) else {
            return false;
        };
        if let (Some(pid), Some((_, long))) = (picture_id, d.picture_id) {
            let at = d.picture_id_at;
            if long {
                payload[at] = 0x80 | ((pid >> 8) as u8 & 0x7F);
                payload[at + 1] = pid as u8;
            } else {
                payload[at] = pid as u8 & 0x7F;
            }
        }
        if let (Some(t), Some(_)) = (tl0_pic_idx, d.tl0_pic_idx) {
            payload[d.tl0_pic_idx_at] = t;
        }
        true
    }
}

/// H.264 RTP payload framing (RFC 6184 §5).
pub mod h264 {
    use super::FrameInfo;

    const NAL_IDR: u8 = 5;
    const NAL_SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;

    fn starts_key_frame(nal_type: u8) -> bool {
        // An IDR slice, or the SPS a key frame starts with (senders put
        // SPS/PPS in front of every IDR).
        nal_type == NAL_IDR || nal_type == NAL_SPS
    }

    /// Frame facts of one H.264 RTP payload.
    pub fn frame_info(p: &[u8]) -> FrameInfo {
        let Some(&b0) = p.first() else {
            return FrameInfo::default();
        };
        match b0 & 0x1F {
            t @ 1..=23 => FrameInfo {
                key_frame_start: starts_key_frame(t),
                // Whether a single NAL starts a frame needs the slice
                // header; the key-frame case is what matters here.
                frame_start: starts_key_frame(t),
                ..FrameInfo::default()
            },
            STAP_A => {
                let mut at = 1;
                let mut key = false;
                while at + 2 <= p.len() {
                    let size = usize::from(u16::from_be_bytes([p[at], p[at + 1]]));
                    at += 2;
                    if size == 0 || at + size > p.len() {
                        break;
                    }
                    key |= starts_key_frame(p[at] & 0x1F);
                    at += size;
                }
                FrameInfo {
                    key_frame_start: key,
                    frame_start: key,
                    ..FrameInfo::default()
                }
            }
            FU_A => {
                let Some(&fu) = p.get(1) else {
                    return FrameInfo::default();
                };
                let start = fu & 0x80 != 0;
                let key = start && starts_key_frame(fu & 0x1F);
                FrameInfo {
                    key_frame_start: key,
                    frame_start: key,
                    ..FrameInfo::default()
                }
            }
            _ => FrameInfo::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_key_frame_and_layers() {
        // X=1 S=1 PID=0; I L T: 15-bit picture id 0x1234, tl0 7, TID 2 Y=1; P=0.
        let p = [0x90, 0xE0, 0x92, 0x34, 7, 0b1010_0000, 0x10, 0, 0];
        let d = vp8::Descriptor::parse(&p).unwrap();
        assert_eq!(d.picture_id, Some((0x1234, true)));
        assert_eq!(d.tl0_pic_idx, Some(7));
        assert_eq!(d.temporal_layer, Some(2));
        assert!(d.layer_sync);
        assert_eq!(d.len, 6);
        let fi = Codec::Vp8.frame_info(&p);
        assert!(fi.key_frame_start && fi.frame_start);
        // P=1: an inter frame.
        let mut inter = p;
        inter[6] = 0x11;
        assert!(!Codec::Vp8.frame_info(&inter).key_frame_start);
        // Not the start of partition 0: not a frame start even with P=0.
        let mut middle = p;
        middle[0] = 0x80;
        assert!(!Codec::Vp8.frame_info(&middle).frame_start);
        // Truncated descriptor: nothing known.
        assert_eq!(Codec::Vp8.frame_info(&p[..3]), FrameInfo::default());
        // Minimal descriptor without extensions.
        assert!(Codec::Vp8.frame_info(&[0x10, 0x00]).key_frame_start);
        // Rewriting keeps each field's form.
        let mut q = p;
        assert!(vp8::rewrite(&mut q, Some(0x7ABC), Some(99)));
        let d = vp8::Descriptor::parse(&q).unwrap();
        assert_eq!(
            (d.picture_id, d.tl0_pic_idx),
            (Some((0x7ABC, true)), Some(99))
        );
        assert_eq!(&q[5..], &p[5..]);
        let mut short = [0x90, 0x80, 0x05, 0x10, 0];
        assert!(vp8::rewrite(&mut short, Some(0x1FF), Some(1)));
        assert_eq!(
            short,
            [0x90, 0x80, 0x7F, 0x10, 0],
            "7-bit form, no TL0PICIDX to set"
        );
    }

    #[test]
    fn h264_key_frames() {
        assert!(Codec::H264.frame_info(&[0x65, 0x88]).key_frame_start); // IDR
        assert!(Codec::H264.frame_info(&[0x67, 0x42]).key_frame_start); // SPS
        assert!(!Codec::H264.frame_info(&[0x41, 0x9A]).key_frame_start); // non-IDR slice
                                                                         // STAP-A with SPS + PPS.
        let stap = [0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xCE];
        assert!(Codec::H264.frame_info(&stap).key_frame_start);
        // STAP-A with a bad size: stops, nothing found.
        assert!(!Codec::H264.frame_info(&[0x78, 0, 9, 0x67]).key_frame_start);
        // FU-A start of an IDR, and a middle fragment of one.
        assert!(Codec::H264.frame_info(&[0x7C, 0x85, 0]).key_frame_start);
        assert!(!Codec::H264.frame_info(&[0x7C, 0x05, 0]).key_frame_start);
        assert!(!Codec::H264.frame_info(&[0x7C]).key_frame_start);
    }
}
