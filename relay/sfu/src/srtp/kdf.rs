//! The SRTP key derivation function (RFC 3711 §4.3.1 and §4.3.3, AES-CM
//! PRF, key derivation rate 0; RFC 7714 §11 uses it unchanged with a 96-bit
//! salt, padded with zeros).

use aes::cipher::{KeyIvInit, StreamCipher};
use aes::Aes128;

/// The key derivation labels (RFC 3711 §4.3.1 and §4.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Label {
    /// SRTP encryption key.
    RtpEncryption = 0,
    /// SRTP authentication key.
    RtpAuth = 1,
    /// SRTP salt.
    RtpSalt = 2,
    /// SRTCP encryption key.
    RtcpEncryption = 3,
    /// SRTCP authentication key.
    RtcpAuth = 4,
    /// SRTCP salt.
    RtcpSalt = 5,
}

/// Fill `out` with the session key for `label` from a 16-byte master key
/// and a 14- (or 12-) byte master salt.
pub fn derive_session_key(master_key: &[u8], master_salt: &[u8], label: Label, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    let n = master_salt.len().min(14);
    iv[..n].copy_from_slice(&master_salt[..n]);
    // key_id = label ‖ (index DIV kdr = 0), 56 bits, XORed into the low
    // bits of the 112-bit salt: the label lands on byte 7.
    iv[7] ^= label as u8;
    let mut key = [0u8; 16];
    key.copy_from_slice(&master_key[..16]);
    out.fill(0);
    ctr::Ctr128BE::<Aes128>::new(&key.into(), &iv.into()).apply_keystream(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3711 appendix B.3.
    #[test]
    fn rfc3711_b3_key_derivation() {
        let mk = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        let ms = hex("0EC675AD498AFEEBB6960B3AABE6");
        let mut k = [0u8; 16];
        derive_session_key(&mk, &ms, Label::RtpEncryption, &mut k);
        assert_eq!(k.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut s = [0u8; 14];
        derive_session_key(&mk, &ms, Label::RtpSalt, &mut s);
        assert_eq!(s.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut a = [0u8; 94];
        derive_session_key(&mk, &ms, Label::RtpAuth, &mut a);
        assert_eq!(
            a.to_vec(),
            hex(concat!(
                "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE",
                "E049646C43D9327AD175578EF72270986371C10C9A369AC2F94A8C5FBCDDDC25",
                "6D6E919A48B610EF17C2041E474035766B68642C59BBFC2F34DB60DBDFB2"
            ))
        );
    }

    /// RFC 3711 appendix B.2: the AES-CM keystream.
    #[test]
    fn rfc3711_b2_keystream() {
        let key = hex("2B7E151628AED2A6ABF7158809CF4F3C");
        let iv = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000");
        let mut ks = [0u8; 48];
        let mut k = [0u8; 16];
        k.copy_from_slice(&key);
        let mut v = [0u8; 16];
        v.copy_from_slice(&iv);
        ctr::Ctr128BE::<Aes128>::new(&k.into(), &v.into()).apply_keystream(&mut ks);
        assert_eq!(
            ks.to_vec(),
            hex(concat!(
                "E03EAD0935C95E80E166B16DD92B4EB4",
                "D23513162B02D0F72A43A2FE4A5F97AB",
                "41E95B3BB0A2E8DD477901E4FCA894C0"
            ))
        );
    }
}
