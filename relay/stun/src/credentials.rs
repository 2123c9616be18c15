//! Long-term credential keys (RFC 8489 §9.2.2) and USERHASH (§14.4). Inputs
//! must already be SASLprep/OpaqueString-processed; that processing is not
//! done here. Hashes stream their input, so nothing is allocated.

use md5::Md5;
use sha2::{Digest, Sha256};

/// MD5(username ":" realm ":" password): the MESSAGE-INTEGRITY key for the
/// MD5 password algorithm.
pub fn long_term_key_md5(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    feed(&mut h, username, realm, password);
    h.finalize().into()
}

/// SHA-256(username ":" realm ":" password): the key for the SHA-256
/// password algorithm.
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    feed(&mut h, username, realm, password);
    h.finalize().into()
}

/// SHA-256(username ":" realm): the USERHASH attribute value.
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.finalize().into()
}

fn feed<D: Digest>(h: &mut D, username: &str, realm: &str, password: &str) {
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_md5_key() {
        // MD5("user:realm:pass") computed independently.
        let k = long_term_key_md5("user", "realm", "pass");
        assert_eq!(k, <[u8; 16]>::from(Md5::digest(b"user:realm:pass")));
        assert_eq!(
            k,
            [
                0x84, 0x93, 0xfb, 0xc5, 0x3b, 0xa5, 0x82, 0xfb, 0x4c, 0x04, 0x4c, 0x45, 0x6b, 0xdc,
                0x40, 0xeb
            ]
        );
    }

    #[test]
    fn sha256_key_and_userhash() {
        assert_eq!(
            long_term_key_sha256("a", "b", "c"),
            <[u8; 32]>::from(Sha256::digest(b"a:b:c"))
        );
        // RFC 8489 Appendix B.1 USERHASH.
        let uh = userhash(
            "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}",
            "example.org",
        );
        assert_eq!(
            uh,
            [
                0x4a, 0x3c, 0xf3, 0x8f, 0xef, 0x69, 0x92, 0xbd, 0xa9, 0x52, 0xc6, 0x78, 0x04, 0x17,
                0xda, 0x0f, 0x24, 0x81, 0x94, 0x15, 0x56, 0x9e, 0x60, 0xb2, 0x05, 0xc4, 0x6e, 0x41,
                0x40, 0x7f, 0x17, 0x04
            ]
        );
    }
}
