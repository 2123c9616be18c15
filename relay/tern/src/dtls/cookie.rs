//! Stateless HelloVerifyRequest cookies (RFC 6347 §4.2.1): an HMAC-SHA256,
//! under a secret made at start and shared by every worker, of the client's
//! address, our listening address and a one-minute window. A cookie from the
//! current or the previous window verifies, so a client has one to two
//! minutes to come back with it; a spoofed source never sees its cookie.
//!
//! Owns: computing and checking cookies, and the per-thread note of which
//! five-tuple OpenSSL's cookie callbacks are asked about (they get only the
//! `SSL`, and the worker sets the note just before it calls `DTLSv1_listen`).
//! Must not touch: anything else.

use std::cell::Cell;
use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a cookie (a truncated HMAC-SHA256).
pub(crate) const COOKIE_LEN: usize = 20;
/// Seconds of one cookie window.
pub(crate) const WINDOW_SECS: u64 = 60;

/// The datagram whose ClientHello OpenSSL's callbacks are looking at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HelloFrom {
    pub(crate) client: SocketAddr,
    pub(crate) listener: SocketAddr,
    /// Unix seconds / [`WINDOW_SECS`].
    pub(crate) window: u64,
}

thread_local! {
    static HELLO_FROM: Cell<Option<HelloFrom>> = const { Cell::new(None) };
}

/// Note the five-tuple for the cookie callbacks on this thread (the worker's).
pub(crate) fn set_current(from: Option<HelloFrom>) {
    HELLO_FROM.with(|c| c.set(from));
}

/// The five-tuple noted by [`set_current`].
pub(crate) fn current() -> Option<HelloFrom> {
    HELLO_FROM.with(Cell::get)
}

/// The cookie for `from` under `secret`.
pub(crate) fn make(secret: &[u8; 32], from: &HelloFrom) -> [u8; COOKIE_LEN] {
    // INVARIANT: HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
    mac.update(&from.window.to_be_bytes());
    for addr in [from.client, from.listener] {
        match addr {
            SocketAddr::V4(a) => mac.update(&a.ip().octets()),
            SocketAddr::V6(a) => mac.update(&a.ip().octets()),
        }
        mac.update(&addr.port().to_be_bytes());
    }
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; COOKIE_LEN];
    out.copy_from_slice(&full[..COOKIE_LEN]);
    out
}

/// Whether `cookie` was made for `from` in its window or the one before.
pub(crate) fn verify(secret: &[u8; 32], from: &HelloFrom, cookie: &[u8]) -> bool {
    if cookie.len() != COOKIE_LEN {
        return false;
    }
    [from.window, from.window.wrapping_sub(1)].iter().any(|&w| {
        let expected = make(secret, &HelloFrom { window: w, ..*from });
        // Constant time: a difference anywhere costs the same.
        expected
            .iter()
            .zip(cookie)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(client: &str, window: u64) -> HelloFrom {
        HelloFrom {
            client: client.parse().unwrap(),
            listener: "192.0.2.1:5349".parse().unwrap(),
            window,
        }
    }

    #[test]
    fn a_cookie_verifies_for_its_five_tuple_and_two_windows_only() {
        let secret = [7u8; 32];
        let c = make(&secret, &from("198.51.100.1:4000", 100));
        assert!(verify(&secret, &from("198.51.100.1:4000", 100), &c));
        assert!(verify(&secret, &from("198.51.100.1:4000", 101), &c));
        assert!(!verify(&secret, &from("198.51.100.1:4000", 102), &c));
        assert!(!verify(&secret, &from("198.51.100.1:4001", 100), &c));
        assert!(!verify(&secret, &from("198.51.100.2:4000", 100), &c));
        assert!(!verify(&[8u8; 32], &from("198.51.100.1:4000", 100), &c));
        assert!(!verify(&secret, &from("198.51.100.1:4000", 100), &c[..19]));
        assert!(!verify(&secret, &from("198.51.100.1:4000", 100), b""));
    }

    #[test]
    fn the_note_is_per_thread() {
        set_current(Some(from("[2001:db8::1]:1", 1)));
        assert!(current().is_some());
        std::thread::spawn(|| assert_eq!(current(), None))
            .join()
            .unwrap();
        set_current(None);
        assert_eq!(current(), None);
    }
}
