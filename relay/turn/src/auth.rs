//! Long-term credentials (RFC 8489 §9.2), REST-API credentials compatible with
//! coturn's `use-auth-secret`, and stateless nonces.
//!
//! Owns: the user table, the REST secrets, nonce minting and checking, key
//! derivation. Must not touch: sockets, clocks (time comes in as UNIX seconds).
//!
//! Nonces carry their own expiry and a MAC over the client's IP address, so
//! they need no per-client state and stay valid on whichever shard the client's
//! 5-tuple hashes to. They start with RFC 8489's "obMatJos2" cookie and the
//! password-algorithms feature bit, so RFC 8489 clients may pick SHA-256 keys
//! while RFC 5389 clients treat the nonce as opaque.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;
use tern_stun::PasswordAlgorithm;

/// Users and REST secrets a shard accepts. Cloned into every shard; replaced on reload.
#[derive(Clone, Default)]
pub struct Credentials {
    users: HashMap<String, String>,
    secrets: Vec<Vec<u8>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print passwords or secrets.
        f.debug_struct("Credentials")
            .field("users", &self.users.len())
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl Credentials {
    /// No users, no secrets: every authenticated request is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accept long-term credentials `name`/`password`.
    pub fn add_user(&mut self, name: &str, password: &str) {
        self.users.insert(name.to_owned(), password.to_owned());
    }

    /// Accept REST credentials signed with `secret`; several may be active during a rotation.
    pub fn add_rest_secret(&mut self, secret: &[u8]) {
        self.secrets.push(secret.to_vec());
    }

    /// How many long-term users are configured.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// How many REST secrets are configured.
    pub fn secret_count(&self) -> usize {
        self.secrets.len()
    }

    /// Every key `username` may have signed a request with: the user's password if it
    /// is a long-term user, and one per REST secret if the name is an unexpired
    /// `expiry[:user]` credential. Calls `f` with each candidate until it returns true.
    pub(crate) fn find_key(
        &self,
        username: &str,
        realm: &str,
        algorithm: PasswordAlgorithm,
        unix_now: u64,
        mut f: impl FnMut(&Key) -> bool,
    ) -> Result<Key, AuthFailure> {
        let mut tried = false;
        if let Some(password) = self.users.get(username) {
            tried = true;
            let key = Key::derive(username, realm, password, algorithm);
            if f(&key) {
                return Ok(key);
            }
        }
        if !self.secrets.is_empty() {
            if let Some(expiry) = rest_expiry(username) {
                if expiry < unix_now {
                    return Err(AuthFailure::Expired);
                }
                tried = true;
                for secret in &self.secrets {
                    let password = rest_password(secret, username);
                    let key = Key::derive(username, realm, &password, algorithm);
                    if f(&key) {
                        return Ok(key);
                    }
                }
            }
        }
        Err(if tried {
            AuthFailure::BadIntegrity
        } else {
            AuthFailure::UnknownUser
        })
    }
}

/// Why a request failed authentication; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthFailure {
    /// No MESSAGE-INTEGRITY: the first, normal, unauthenticated request.
    Challenge,
    /// USERNAME, REALM or NONCE missing or malformed next to MESSAGE-INTEGRITY.
    Malformed,
    /// The REALM is not ours.
    WrongRealm,
    /// The NONCE expired or was never ours.
    StaleNonce,
    /// No such user, and not a REST credential.
    UnknownUser,
    /// A REST credential whose expiry time has passed.
    Expired,
    /// The key does not verify the integrity attribute (wrong password).
    BadIntegrity,
    /// A request on an allocation made by a different user (441).
    WrongCredentials,
    /// PASSWORD-ALGORITHM(S) not as offered.
    BadAlgorithm,
}

impl AuthFailure {
    /// Every variant, for exporting counters.
    pub const ALL: [AuthFailure; 9] = [
        AuthFailure::Challenge,
        AuthFailure::Malformed,
        AuthFailure::WrongRealm,
        AuthFailure::StaleNonce,
        AuthFailure::UnknownUser,
        AuthFailure::Expired,
        AuthFailure::BadIntegrity,
        AuthFailure::WrongCredentials,
        AuthFailure::BadAlgorithm,
    ];

    /// The metric label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            AuthFailure::Challenge => "challenge",
            AuthFailure::Malformed => "malformed",
            AuthFailure::WrongRealm => "wrong_realm",
            AuthFailure::StaleNonce => "stale_nonce",
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::Expired => "expired",
            AuthFailure::BadIntegrity => "bad_integrity",
            AuthFailure::WrongCredentials => "wrong_credentials",
            AuthFailure::BadAlgorithm => "bad_algorithm",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A long-term credential key: MD5 or SHA-256 of `username:realm:password`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    Md5([u8; 16]),
    Sha256([u8; 32]),
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Key::Md5(_) => "Key::Md5(..)",
            Key::Sha256(_) => "Key::Sha256(..)",
        })
    }
}

impl Key {
    pub(crate) fn derive(
        username: &str,
        realm: &str,
        password: &str,
        algorithm: PasswordAlgorithm,
    ) -> Key {
        match algorithm {
            PasswordAlgorithm::Sha256 => {
                Key::Sha256(tern_stun::long_term_key_sha256(username, realm, password))
            }
            _ => Key::Md5(tern_stun::long_term_key_md5(username, realm, password)),
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Md5(k) => k,
            Key::Sha256(k) => k,
        }
    }
}

/// coturn's REST password: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The expiry of a REST username `expiry` or `expiry:user` (coturn's default
/// separator), in UNIX seconds; None when the name is not of that form.
pub fn rest_expiry(username: &str) -> Option<u64> {
    let stamp = username.split_once(':').map_or(username, |(t, _)| t);
    if stamp.is_empty() || stamp.len() > 20 || !stamp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stamp.parse().ok()
}

/// RFC 8489 §9.2 nonce cookie with the password-algorithms feature bit set
/// ("obMatJos2" followed by base64 of the 24-bit feature set 0x800000).
const NONCE_PREFIX: &str = "obMatJos2gAAA";
const NONCE_MAC_LEN: usize = 12;
/// Length of every nonce we mint: prefix, 16 hex digits of expiry, 24 hex digits of MAC.
pub(crate) const NONCE_LEN: usize = NONCE_PREFIX.len() + 16 + NONCE_MAC_LEN * 2;

/// Mints and checks stateless nonces bound to a client IP and an expiry time.
#[derive(Clone)]
pub(crate) struct NonceKey {
    key: [u8; 32],
}

/// What a nonce check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceCheck {
    Valid,
    /// Ours, but past its expiry.
    Stale,
    /// Not a nonce we minted for this client.
    Invalid,
}

impl NonceKey {
    pub(crate) fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// A nonce for `client` valid until `expires` (UNIX seconds).
    pub(crate) fn mint(&self, client: IpAddr, expires: u64) -> [u8; NONCE_LEN] {
        let mut out = [0u8; NONCE_LEN];
        out[..NONCE_PREFIX.len()].copy_from_slice(NONCE_PREFIX.as_bytes());
        let mut pos = NONCE_PREFIX.len();
        hex_into(&expires.to_be_bytes(), &mut out[pos..pos + 16]);
        pos += 16;
        let mac = self.mac(client, expires);
        hex_into(&mac, &mut out[pos..]);
        out
    }

    pub(crate) fn check(&self, nonce: &[u8], client: IpAddr, unix_now: u64) -> NonceCheck {
        if nonce.len() != NONCE_LEN || !nonce.starts_with(NONCE_PREFIX.as_bytes()) {
            return NonceCheck::Invalid;
        }
        let p = NONCE_PREFIX.len();
        let mut exp = [0u8; 8];
        let mut mac = [0u8; NONCE_MAC_LEN];
        if !unhex_into(&nonce[p..p + 16], &mut exp) || !unhex_into(&nonce[p + 16..], &mut mac) {
            return NonceCheck::Invalid;
        }
        let expires = u64::from_be_bytes(exp);
        if !constant_time_eq(&mac, &self.mac(client, expires)) {
            return NonceCheck::Invalid;
        }
        if expires < unix_now {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }

    fn mac(&self, client: IpAddr, expires: u64) -> [u8; NONCE_MAC_LEN] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        match client {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        mac.update(&expires.to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; NONCE_MAC_LEN];
        out.copy_from_slice(&full[..NONCE_MAC_LEN]);
        out
    }
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
}

fn unhex_into(hex: &[u8], out: &mut [u8]) -> bool {
    if hex.len() != out.len() * 2 {
        return false;
    }
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    for (i, o) in out.iter_mut().enumerate() {
        match (nibble(hex[2 * i]), nibble(hex[2 * i + 1])) {
            (Some(h), Some(l)) => *o = h << 4 | l,
            _ => return false,
        }
    }
    true
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn rest_password_matches_coturn_formula() {
        // Computed independently: printf '1700000000:alice' | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(
            rest_password(b"secret", "1700000000:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
    }

    #[test]
    fn rest_expiry_forms() {
        assert_eq!(rest_expiry("1700000000:alice"), Some(1_700_000_000));
        assert_eq!(rest_expiry("1700000000"), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice"), None);
        assert_eq!(rest_expiry(":alice"), None);
        assert_eq!(rest_expiry("12a:alice"), None);
        assert_eq!(rest_expiry("999999999999999999999999:x"), None);
    }

    #[test]
    fn nonce_round_trip_stale_and_foreign() {
        let k = NonceKey::new([7; 32]);
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let n = k.mint(ip, 1000);
        assert!(n.starts_with(b"obMatJos2"));
        assert_eq!(k.check(&n, ip, 999), NonceCheck::Valid);
        assert_eq!(k.check(&n, ip, 1000), NonceCheck::Valid);
        assert_eq!(k.check(&n, ip, 1001), NonceCheck::Stale);
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(k.check(&n, other, 999), NonceCheck::Invalid);
        assert_eq!(
            NonceKey::new([8; 32]).check(&n, ip, 999),
            NonceCheck::Invalid
        );
        let mut tampered = n;
        tampered[NONCE_PREFIX.len() + 15] ^= 1;
        assert_eq!(k.check(&tampered, ip, 999), NonceCheck::Invalid);
        assert_eq!(k.check(b"short", ip, 0), NonceCheck::Invalid);
    }

    #[test]
    fn find_key_paths() {
        let mut c = Credentials::new();
        c.add_user("bob", "pw");
        c.add_rest_secret(b"old");
        c.add_rest_secret(b"new");
        let want = Key::derive("bob", "r", "pw", PasswordAlgorithm::Md5);
        assert_eq!(
            c.find_key("bob", "r", PasswordAlgorithm::Md5, 0, |k| *k == want),
            Ok(want)
        );
        assert_eq!(
            c.find_key("bob", "r", PasswordAlgorithm::Md5, 0, |_| false),
            Err(AuthFailure::BadIntegrity)
        );
        assert_eq!(
            c.find_key("carol", "r", PasswordAlgorithm::Md5, 0, |_| true)
                .err(),
            Some(AuthFailure::UnknownUser)
        );
        // REST: the second secret also works (rotation).
        let user = "2000:carol";
        let want = Key::derive(
            user,
            "r",
            &rest_password(b"new", user),
            PasswordAlgorithm::Md5,
        );
        assert_eq!(
            c.find_key(user, "r", PasswordAlgorithm::Md5, 1999, |k| *k == want),
            Ok(want)
        );
        assert_eq!(
            c.find_key(user, "r", PasswordAlgorithm::Md5, 2001, |_| true),
            Err(AuthFailure::Expired)
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let mut c = Credentials::new();
        c.add_user("bob", "hunter2");
        c.add_rest_secret(b"topsecret");
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2") && !s.contains("topsecret") && !s.contains("bob"));
    }
}
