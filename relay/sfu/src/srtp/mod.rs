//! SRTP and SRTCP (RFC 3711) with AES_CM_128_HMAC_SHA1_80 and
//! AEAD_AES_128_GCM (RFC 7714), keys given by the caller (SDES-style),
//! in place in the caller's buffer.
//!
//! Owns: key derivation, per-SSRC rollover counters and SRTCP indices,
//! replay windows, and the transforms. Must not touch: sockets, the clock,
//! key exchange. Nothing allocates per packet: a context keeps a bounded
//! table of per-SSRC state that grows only when a new SSRC authenticates.
//! AES runs on AES-NI where the CPU has it (the `aes` crate detects it at
//! run time).
//!
//! One [`SrtpContext`] per direction: the key a transport sends with
//! protects, the key its peer sends with unprotects.

mod kdf;
mod replay;

use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use aes::Aes128;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, Nonce, Tag};
use ahash::AHashMap;
use hmac::{Hmac, Mac};
use sha1::Sha1;

pub use kdf::{derive_session_key, Label};
use replay::ReplayWindow;

type Aes128Ctr = ctr::Ctr128BE<Aes128>;
type HmacSha1 = Hmac<Sha1>;

/// Bytes of the HMAC-SHA1 tag of the `_80` profile.
const CM_TAG: usize = 10;
/// Bytes of the GCM tag.
const GCM_TAG: usize = 16;
/// Bytes of the SRTCP E flag and index.
const SRTCP_TRAILER: usize = 4;
/// Largest SRTCP index (31 bits).
const MAX_SRTCP_INDEX: u32 = 0x7FFF_FFFF;

/// Most SSRCs one context keeps state for.
pub const MAX_STREAMS: usize = 64;

/// The protection profiles supported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SrtpProfile {
    /// AES-128 counter mode with an 80-bit HMAC-SHA1 tag (RFC 3711, RFC 4568).
    Aes128CmHmacSha1_80,
    /// AES-128 GCM with a 128-bit tag (RFC 7714).
    AeadAes128Gcm,
}

impl SrtpProfile {
    /// Master key length in bytes.
    pub const fn master_key_len(self) -> usize {
        16
    }

    /// Master salt length in bytes.
    pub const fn master_salt_len(self) -> usize {
        match self {
            SrtpProfile::Aes128CmHmacSha1_80 => 14,
            SrtpProfile::AeadAes128Gcm => 12,
        }
    }

    /// Bytes SRTP adds to an RTP packet.
    pub const fn rtp_overhead(self) -> usize {
        match self {
            SrtpProfile::Aes128CmHmacSha1_80 => CM_TAG,
            SrtpProfile::AeadAes128Gcm => GCM_TAG,
        }
    }

    /// Bytes SRTCP adds to an RTCP packet.
    pub const fn rtcp_overhead(self) -> usize {
        self.rtp_overhead() + SRTCP_TRAILER
    }
}

/// Why a packet could not be protected or unprotected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SrtpError {
    /// Master key or salt of the wrong length for the profile.
    #[error("master key/salt of {got} bytes, the profile needs {want}")]
    KeyLength {
        /// Bytes the profile needs.
        want: usize,
        /// Bytes given.
        got: usize,
    },
    /// Too short to be (S)RTP/(S)RTCP of this profile.
    #[error("packet too short")]
    TooShort,
    /// Not an RTP/RTCP header (version, CSRC/extension lengths).
    #[error("not a valid RTP/RTCP header")]
    BadHeader,
    /// No room after the packet for the tag and trailer.
    #[error("no room in the buffer for the authentication tag")]
    NoRoom,
    /// The authentication tag did not verify (wrong key, or tampering).
    #[error("authentication failed")]
    AuthFailed,
    /// A packet index already received.
    #[error("replayed packet")]
    Replayed,
    /// A packet index older than the replay window.
    #[error("packet older than the replay window")]
    TooOld,
    /// More SSRCs than [`MAX_STREAMS`].
    #[error("too many SSRCs in one SRTP context")]
    TooManyStreams,
}

/// Session keys for one direction of one of RTP or RTCP.
#[derive(Clone)]
pub struct SessionKeys {
    /// Encryption key.
    pub key: [u8; 16],
    /// Salt (14 bytes for AES-CM; the first 12 for GCM).
    pub salt: [u8; 14],
    /// HMAC-SHA1 key (AES-CM only).
    pub auth: [u8; 20],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

enum Transform {
    Cm { aes: Aes128, mac: HmacSha1 },
    Gcm { aead: Aes128Gcm },
}

struct Keyed {
    transform: Transform,
    salt: [u8; 14],
}

impl Keyed {
    fn new(profile: SrtpProfile, k: &SessionKeys) -> Self {
        let transform = match profile {
            SrtpProfile::Aes128CmHmacSha1_80 => Transform::Cm {
                aes: Aes128::new(&k.key.into()),
                // INVARIANT: HMAC accepts keys of any length.
                mac: <HmacSha1 as Mac>::new_from_slice(&k.auth).expect("any key length"),
            },
            SrtpProfile::AeadAes128Gcm => Transform::Gcm {
                aead: Aes128Gcm::new(&k.key.into()),
            },
        };
        Self {
            transform,
            salt: k.salt,
        }
    }
}

#[derive(Default)]
struct StreamState {
    /// Highest (extended) RTP packet index seen, 48 bits.
    highest: Option<u64>,
    rtp_replay: ReplayWindow,
    /// Next SRTCP index to send.
    srtcp_next: u32,
    srtcp_replay: ReplayWindow,
}

/// Counters of one context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SrtpStats {
    /// Packets protected.
    pub protected: u64,
    /// Packets unprotected.
    pub unprotected: u64,
    /// Packets refused: authentication failed.
    pub auth_failed: u64,
    /// Packets refused: replayed or too old.
    pub replayed: u64,
}

/// One direction's SRTP and SRTCP state.
pub struct SrtpContext {
    profile: SrtpProfile,
    rtp: Keyed,
    rtcp: Keyed,
    streams: AHashMap<u32, StreamState>,
    stats: SrtpStats,
}

impl std::fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpContext")
            .field("profile", &self.profile)
            .field("streams", &self.streams.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl SrtpContext {
    /// A context from a master key and salt (RFC 3711 §4.3, key derivation
    /// rate 0).
    pub fn new(
        profile: SrtpProfile,
        master_key: &[u8],
        master_salt: &[u8],
    ) -> Result<Self, SrtpError> {
        if master_key.len() != profile.master_key_len() {
            return Err(SrtpError::KeyLength {
                want: profile.master_key_len(),
                got: master_key.len(),
            });
        }
        if master_salt.len() != profile.master_salt_len() {
            return Err(SrtpError::KeyLength {
                want: profile.master_salt_len(),
                got: master_salt.len(),
            });
        }
        let keys = |enc, auth, salt| {
            let mut k = SessionKeys {
                key: [0; 16],
                salt: [0; 14],
                auth: [0; 20],
            };
            derive_session_key(master_key, master_salt, enc, &mut k.key);
            derive_session_key(master_key, master_salt, auth, &mut k.auth);
            let salt_len = profile.master_salt_len();
            derive_session_key(master_key, master_salt, salt, &mut k.salt[..salt_len]);
            k
        };
        Ok(Self::from_session_keys(
            profile,
            &keys(Label::RtpEncryption, Label::RtpAuth, Label::RtpSalt),
            &keys(Label::RtcpEncryption, Label::RtcpAuth, Label::RtcpSalt),
        ))
    }

    /// A context from already derived session keys (test vectors, or keys
    /// derived elsewhere).
    pub fn from_session_keys(profile: SrtpProfile, rtp: &SessionKeys, rtcp: &SessionKeys) -> Self {
        Self {
            profile,
            rtp: Keyed::new(profile, rtp),
            rtcp: Keyed::new(profile, rtcp),
            streams: AHashMap::with_capacity(8),
            stats: SrtpStats::default(),
        }
    }

    /// The profile.
    pub fn profile(&self) -> SrtpProfile {
        self.profile
    }

    /// Counters.
    pub fn stats(&self) -> SrtpStats {
        self.stats
    }

    /// Protect the RTP packet in `buf[..len]` in place; `buf` needs
    /// [`SrtpProfile::rtp_overhead`] bytes of room after it. Returns the
    /// SRTP packet's length.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let header = rtp_header_len(&buf[..len.min(buf.len())])?;
        let tag_len = self.profile.rtp_overhead();
        if buf.len() < len + tag_len {
            return Err(SrtpError::NoRoom);
        }
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let state = stream(&mut self.streams, ssrc)?;
        let index = estimate_index(state.highest, seq);
        if state.highest.is_none_or_less(index) {
            state.highest = Some(index);
        }
        let roc = (index >> 16) as u32;
        match &self.rtp.transform {
            Transform::Cm { aes, mac } => {
                let iv = cm_iv(&self.rtp.salt, ssrc, index);
                keystream(aes, &iv).apply_keystream(&mut buf[header..len]);
                let mut m = mac.clone();
                m.update(&buf[..len]);
                m.update(&roc.to_be_bytes());
                let tag = m.finalize().into_bytes();
                buf[len..len + CM_TAG].copy_from_slice(&tag[..CM_TAG]);
            }
            Transform::Gcm { aead } => {
                let nonce = gcm_rtp_nonce(&self.rtp.salt, ssrc, roc, seq);
                let (aad, rest) = buf.split_at_mut(header);
                let tag = aead
                    .encrypt_in_place_detached(
                        Nonce::from_slice(&nonce),
                        aad,
                        &mut rest[..len - header],
                    )
                    .map_err(|_| SrtpError::TooShort)?;
                buf[len..len + GCM_TAG].copy_from_slice(&tag);
            }
        }
        self.stats.protected += 1;
        Ok(len + tag_len)
    }

    /// Verify and decrypt the SRTP packet in `buf` in place. Returns the RTP
    /// packet's length. Replays and packets older than the window are
    /// refused; state changes only for packets that authenticate.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.profile.rtp_overhead();
        if buf.len() < 12 + tag_len {
            return Err(SrtpError::TooShort);
        }
        let len = buf.len() - tag_len;
        let header = rtp_header_len(&buf[..len])?;
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let highest = self.streams.get(&ssrc).and_then(|s| s.highest);
        let index = estimate_index(highest, seq);
        if let Some(s) = self.streams.get(&ssrc) {
            if let Err(e) = s.rtp_replay.check(index) {
                self.stats.replayed += 1;
                return Err(e);
            }
        }
        let roc = (index >> 16) as u32;
        let ok = match &self.rtp.transform {
            Transform::Cm { aes, mac } => {
                let mut m = mac.clone();
                m.update(&buf[..len]);
                m.update(&roc.to_be_bytes());
                let ok = m.verify_truncated_left(&buf[len..]).is_ok();
                if ok {
                    let iv = cm_iv(&self.rtp.salt, ssrc, index);
                    keystream(aes, &iv).apply_keystream(&mut buf[header..len]);
                }
                ok
            }
            Transform::Gcm { aead } => {
                let nonce = gcm_rtp_nonce(&self.rtp.salt, ssrc, roc, seq);
                let tag = *Tag::from_slice(&buf[len..]);
                let (aad, rest) = buf.split_at_mut(header);
                aead.decrypt_in_place_detached(
                    Nonce::from_slice(&nonce),
                    aad,
                    &mut rest[..len - header],
                    &tag,
                )
                .is_ok()
            }
        };
        if !ok {
            self.stats.auth_failed += 1;
            return Err(SrtpError::AuthFailed);
        }
        let state = stream(&mut self.streams, ssrc)?;
        state.rtp_replay.accept(index);
        if state.highest.is_none_or_less(index) {
            state.highest = Some(index);
        }
        self.stats.unprotected += 1;
        Ok(len)
    }

    /// Protect the RTCP compound packet in `buf[..len]` in place; `buf`
    /// needs [`SrtpProfile::rtcp_overhead`] bytes of room after it. Returns
    /// the SRTCP packet's length.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        if len < 8 || len > buf.len() {
            return Err(SrtpError::TooShort);
        }
        if buf[0] >> 6 != 2 {
            return Err(SrtpError::BadHeader);
        }
        let overhead = self.profile.rtcp_overhead();
        if buf.len() < len + overhead {
            return Err(SrtpError::NoRoom);
        }
        let ssrc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let state = stream(&mut self.streams, ssrc)?;
        state.srtcp_next = if state.srtcp_next >= MAX_SRTCP_INDEX {
            1
        } else {
            state.srtcp_next + 1
        };
        let index = state.srtcp_next;
        let trailer = (0x8000_0000 | index).to_be_bytes();
        match &self.rtcp.transform {
            Transform::Cm { aes, mac } => {
                let iv = cm_iv(&self.rtcp.salt, ssrc, u64::from(index));
                keystream(aes, &iv).apply_keystream(&mut buf[8..len]);
                buf[len..len + 4].copy_from_slice(&trailer);
                let mut m = mac.clone();
                m.update(&buf[..len + 4]);
                let tag = m.finalize().into_bytes();
                buf[len + 4..len + 4 + CM_TAG].copy_from_slice(&tag[..CM_TAG]);
            }
            Transform::Gcm { aead } => {
                let nonce = gcm_rtcp_nonce(&self.rtcp.salt, ssrc, index);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&buf[..8]);
                aad[8..].copy_from_slice(&trailer);
                let tag = aead
                    .encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut buf[8..len])
                    .map_err(|_| SrtpError::TooShort)?;
                buf[len..len + GCM_TAG].copy_from_slice(&tag);
                buf[len + GCM_TAG..len + GCM_TAG + 4].copy_from_slice(&trailer);
            }
        }
        self.stats.protected += 1;
        Ok(len + overhead)
    }

    /// Verify and decrypt the SRTCP packet in `buf` in place. Returns the
    /// RTCP packet's length.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let overhead = self.profile.rtcp_overhead();
        if buf.len() < 8 + overhead {
            return Err(SrtpError::TooShort);
        }
        if buf[0] >> 6 != 2 {
            return Err(SrtpError::BadHeader);
        }
        let len = buf.len() - overhead;
        let ssrc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let (trailer_at, tag_at) = match self.profile {
            SrtpProfile::Aes128CmHmacSha1_80 => (len, len + 4),
            SrtpProfile::AeadAes128Gcm => (len + GCM_TAG, len),
        };
        let mut trailer = [0u8; 4];
        trailer.copy_from_slice(&buf[trailer_at..trailer_at + 4]);
        let word = u32::from_be_bytes(trailer);
        let encrypted = word & 0x8000_0000 != 0;
        let index = word & MAX_SRTCP_INDEX;
        if let Some(s) = self.streams.get(&ssrc) {
            if let Err(e) = s.srtcp_replay.check(u64::from(index)) {
                self.stats.replayed += 1;
                return Err(e);
            }
        }
        let ok = match &self.rtcp.transform {
            Transform::Cm { aes, mac } => {
                let mut m = mac.clone();
                m.update(&buf[..len + 4]);
                let ok = m.verify_truncated_left(&buf[tag_at..]).is_ok();
                if ok && encrypted {
                    let iv = cm_iv(&self.rtcp.salt, ssrc, u64::from(index));
                    keystream(aes, &iv).apply_keystream(&mut buf[8..len]);
                }
                ok
            }
            Transform::Gcm { aead } => {
                let nonce = gcm_rtcp_nonce(&self.rtcp.salt, ssrc, index);
                let tag = *Tag::from_slice(&buf[tag_at..tag_at + GCM_TAG]);
                if encrypted {
                    let mut aad = [0u8; 12];
                    aad[..8].copy_from_slice(&buf[..8]);
                    aad[8..].copy_from_slice(&trailer);
                    aead.decrypt_in_place_detached(
                        Nonce::from_slice(&nonce),
                        &aad,
                        &mut buf[8..len],
                        &tag,
                    )
                    .is_ok()
                } else {
                    // Authenticated only (RFC 7714 §9.2): the whole packet and
                    // the trailer are the associated data. Put the trailer
                    // right after the packet (over the saved tag) so it is
                    // one contiguous slice.
                    buf[len..len + 4].copy_from_slice(&trailer);
                    aead.decrypt_in_place_detached(
                        Nonce::from_slice(&nonce),
                        &buf[..len + 4],
                        &mut [],
                        &tag,
                    )
                    .is_ok()
                }
            }
        };
        if !ok {
            self.stats.auth_failed += 1;
            return Err(SrtpError::AuthFailed);
        }
        stream(&mut self.streams, ssrc)?
            .srtcp_replay
            .accept(u64::from(index));
        self.stats.unprotected += 1;
        Ok(len)
    }
}

/// AES-CTR from an expanded key (no key schedule per packet) and an IV.
fn keystream(aes: &Aes128, iv: &[u8; 16]) -> Aes128Ctr {
    Aes128Ctr::from_core(ctr::CtrCore::inner_iv_init(aes.clone(), iv.into()))
}

/// The per-SSRC state, created on first use up to [`MAX_STREAMS`].
fn stream(
    streams: &mut AHashMap<u32, StreamState>,
    ssrc: u32,
) -> Result<&mut StreamState, SrtpError> {
    if !streams.contains_key(&ssrc) && streams.len() >= MAX_STREAMS {
        return Err(SrtpError::TooManyStreams);
    }
    Ok(streams.entry(ssrc).or_default())
}

trait LessThan {
    fn is_none_or_less(&self, v: u64) -> bool;
}

impl LessThan for Option<u64> {
    fn is_none_or_less(&self, v: u64) -> bool {
        !matches!(*self, Some(h) if h >= v)
    }
}

/// Length of an RTP header (fixed part, CSRCs, extension) without looking
/// at the (encrypted) payload or padding.
fn rtp_header_len(buf: &[u8]) -> Result<usize, SrtpError> {
    if buf.len() < 12 {
        return Err(SrtpError::TooShort);
    }
    if buf[0] >> 6 != 2 {
        return Err(SrtpError::BadHeader);
    }
    let mut n = 12 + 4 * usize::from(buf[0] & 0x0F);
    if buf[0] & 0x10 != 0 {
        if n + 4 > buf.len() {
            return Err(SrtpError::BadHeader);
        }
        n += 4 + 4 * usize::from(u16::from_be_bytes([buf[n + 2], buf[n + 3]]));
    }
    if n > buf.len() {
        return Err(SrtpError::BadHeader);
    }
    Ok(n)
}

/// The packet index of `seq` given the highest index seen (RFC 3711 §3.3.1,
/// appendix A): the candidate rollover counter closest to the highest.
fn estimate_index(highest: Option<u64>, seq: u16) -> u64 {
    let Some(h) = highest else {
        return u64::from(seq);
    };
    let roc = h >> 16;
    let s_l = (h & 0xFFFF) as u16;
    let v = if s_l < 0x8000 {
        if seq > s_l && seq - s_l > 0x8000 {
            roc.wrapping_sub(1)
        } else {
            roc
        }
    } else if s_l - 0x8000 > seq {
        roc + 1
    } else {
        roc
    };
    // A packet from before the first rollover cannot have a negative ROC.
    if v == u64::MAX {
        return u64::from(seq);
    }
    (v & 0xFFFF_FFFF) << 16 | u64::from(seq)
}

/// AES-CM IV (RFC 3711 §4.1.1): salt·2^16 ⊕ SSRC·2^64 ⊕ index·2^16.
fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (d, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *d ^= s;
    }
    for (d, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *d ^= s;
    }
    iv
}

/// GCM SRTP nonce (RFC 7714 §8.1): 00 00 ‖ SSRC ‖ ROC ‖ SEQ ⊕ salt.
fn gcm_rtp_nonce(salt: &[u8; 14], ssrc: u32, roc: u32, seq: u16) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[2..6].copy_from_slice(&ssrc.to_be_bytes());
    n[6..10].copy_from_slice(&roc.to_be_bytes());
    n[10..12].copy_from_slice(&seq.to_be_bytes());
    for (d, s) in n.iter_mut().zip(salt) {
        *d ^= s;
    }
    n
}

/// GCM SRTCP nonce (RFC 7714 §9.1): 00 00 ‖ SSRC ‖ 00 00 ‖ 0 ‖ index ⊕ salt.
fn gcm_rtcp_nonce(salt: &[u8; 14], ssrc: u32, index: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[2..6].copy_from_slice(&ssrc.to_be_bytes());
    n[8..12].copy_from_slice(&(index & MAX_SRTCP_INDEX).to_be_bytes());
    for (d, s) in n.iter_mut().zip(salt) {
        *d ^= s;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_estimation_follows_rollovers_both_ways() {
        assert_eq!(estimate_index(None, 7), 7);
        let h = 0xFFF0;
        assert_eq!(estimate_index(Some(h), 0x0002), 0x1_0002);
        assert_eq!(estimate_index(Some(0x1_0002), 0xFFF5), 0xFFF5);
        assert_eq!(estimate_index(Some(0x3_1000), 0x1005), 0x3_1005);
        assert_eq!(
            estimate_index(Some(0x0005), 0xFFF0),
            0xFFF0,
            "no negative ROC"
        );
    }
}
