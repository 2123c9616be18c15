//! Credentials as a TURN client computes them.
//!
//! REST ("ephemeral", draft-uberti-behave-turn-rest): username `expiry:user` where
//! `expiry` is a UNIX time in seconds, password `base64(HMAC-SHA1(secret, username))`.
//! Computed here with `hmac`/`sha1`/`base64`, independently of tern's own code.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};

/// Seconds since the UNIX epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// REST credentials `(username, password)` for `user` that expire at `expiry_unix`.
pub fn rest_credentials(secret: &str, user: &str, expiry_unix: u64) -> (String, String) {
    let username = format!("{expiry_unix}:{user}");
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// REST credentials for `user` valid for `ttl` from now.
pub fn rest_credentials_valid_for(secret: &str, user: &str, ttl: Duration) -> (String, String) {
    rest_credentials(secret, user, unix_now() + ttl.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_a_known_vector() {
        // Computed with: printf '1700000000:alice' | openssl dgst -sha1 -hmac secret -binary | base64
        let (u, p) = rest_credentials("secret", "alice", 1_700_000_000);
        assert_eq!(u, "1700000000:alice");
        assert_eq!(p, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
    }
}
