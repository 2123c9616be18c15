//! The one DTLS message tern reads itself: a ClientHello from an address
//! that has no association yet (RFC 6347 §4.1 record header, §4.2.2
//! handshake header, §4.2.1 cookie).
//!
//! Owns: classifying a datagram from an unknown source before OpenSSL sees
//! it — junk is dropped here, counted, and never costs an SSL object; a
//! ClientHello is reported with whether it carries a cookie. Must not touch:
//! the cookie's value (checked by [`super::cookie`]) or any state.
//!
//! A ClientHello must be at least [`MIN_CLIENT_HELLO`] bytes: the
//! HelloVerifyRequest we answer with (a 13-byte record header, a 12-byte
//! handshake header, 3 bytes of version and length and a
//! [`super::cookie::COOKIE_LEN`]-byte cookie) is smaller, so a spoofed
//! ClientHello never makes tern send more bytes than it received.

/// DTLS record header: type, version, epoch, sequence number, length.
pub(crate) const RECORD_HEADER: usize = 13;
/// DTLS handshake header: type, length, message_seq, fragment offset and length.
pub(crate) const HANDSHAKE_HEADER: usize = 12;
/// The smallest ClientHello datagram taken (see the module docs).
pub(crate) const MIN_CLIENT_HELLO: usize =
    RECORD_HEADER + HANDSHAKE_HEADER + 2 + 32 + 1 + 1 + 4 + 2;

const CONTENT_HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;

/// A ClientHello read from the first record of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientHello<'a> {
    /// The cookie field (empty on a first ClientHello).
    pub(crate) cookie: &'a [u8],
}

/// Why a datagram from an unknown source is not a ClientHello; each a drop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HelloError {
    /// Not a DTLS record at all (too short, wrong content type range or version).
    #[error("not a DTLS record")]
    NotDtls,
    /// A DTLS record, but not an unencrypted, unfragmented ClientHello.
    #[error("not a ClientHello")]
    NotClientHello,
    /// A ClientHello too short to be answered without amplification, or whose
    /// lengths do not fit the datagram.
    #[error("malformed ClientHello")]
    Malformed,
}

/// Read the ClientHello at the start of `datagram`.
pub(crate) fn client_hello(datagram: &[u8]) -> Result<ClientHello<'_>, HelloError> {
    let Some(header) = datagram.get(..RECORD_HEADER) else {
        return Err(HelloError::NotDtls);
    };
    // RFC 7983: 20..=63 is DTLS; version 254.x is DTLS 1.0 (0xFEFF) or 1.2 (0xFEFD).
    if !(20..=63).contains(&header[0]) || header[1] != 0xFE {
        return Err(HelloError::NotDtls);
    }
    // Epoch 0 only: anything encrypted belongs to an association.
    if header[0] != CONTENT_HANDSHAKE || header[3] != 0 || header[4] != 0 {
        return Err(HelloError::NotClientHello);
    }
    let record_len = usize::from(u16::from_be_bytes([header[11], header[12]]));
    let record = datagram
        .get(RECORD_HEADER..RECORD_HEADER + record_len)
        .ok_or(HelloError::Malformed)?;
    let hs = record
        .get(..HANDSHAKE_HEADER)
        .ok_or(HelloError::Malformed)?;
    if hs[0] != CLIENT_HELLO {
        return Err(HelloError::NotClientHello);
    }
    let u24 = |b: &[u8]| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
    let msg_len = u24(&hs[1..4]);
    let frag_off = u24(&hs[6..9]);
    let frag_len = u24(&hs[9..12]);
    // A ClientHello in one fragment (OpenSSL refuses a fragmented one too).
    if frag_off != 0 || frag_len != msg_len {
        return Err(HelloError::NotClientHello);
    }
    if datagram.len() < MIN_CLIENT_HELLO {
        return Err(HelloError::Malformed);
    }
    let body = record
        .get(HANDSHAKE_HEADER..HANDSHAKE_HEADER + frag_len)
        .ok_or(HelloError::Malformed)?;
    // client_version (2), random (32), session_id <0..32>, cookie <0..255>.
    let mut at = 2 + 32;
    let session_len = usize::from(*body.get(at).ok_or(HelloError::Malformed)?);
    if session_len > 32 {
        return Err(HelloError::Malformed);
    }
    at += 1 + session_len;
    let cookie_len = usize::from(*body.get(at).ok_or(HelloError::Malformed)?);
    at += 1;
    let cookie = body.get(at..at + cookie_len).ok_or(HelloError::Malformed)?;
    Ok(ClientHello { cookie })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal DTLS 1.2 ClientHello datagram with this cookie.
    pub(crate) fn hello(cookie: &[u8]) -> Vec<u8> {
        let mut body = vec![0xFE, 0xFD];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0x00, 0x02, 0xC0, 0x2B]); // one cipher suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        let mut hs = vec![CLIENT_HELLO];
        let len = body.len() as u32;
        hs.extend_from_slice(&len.to_be_bytes()[1..]);
        hs.extend_from_slice(&[0, 0]); // message_seq
        hs.extend_from_slice(&[0, 0, 0]);
        hs.extend_from_slice(&len.to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![CONTENT_HANDSHAKE, 0xFE, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn reads_the_cookie() {
        assert_eq!(client_hello(&hello(&[])).unwrap().cookie, b"");
        assert_eq!(client_hello(&hello(b"abc")).unwrap().cookie, b"abc");
        assert!(hello(&[]).len() >= MIN_CLIENT_HELLO);
    }

    #[test]
    fn refuses_junk_and_other_records() {
        assert_eq!(client_hello(b""), Err(HelloError::NotDtls));
        assert_eq!(client_hello(&[0; 100]), Err(HelloError::NotDtls));
        // STUN on the DTLS port.
        let mut stun = vec![0x00, 0x01, 0x00, 0x00];
        stun.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        stun.extend_from_slice(&[1; 12]);
        assert_eq!(client_hello(&stun), Err(HelloError::NotDtls));
        // Application data (epoch 1) from an unknown source.
        let mut app = hello(&[]);
        app[0] = 23;
        app[4] = 1;
        assert_eq!(client_hello(&app), Err(HelloError::NotClientHello));
        // A ServerHello.
        let mut sh = hello(&[]);
        sh[RECORD_HEADER] = 2;
        assert_eq!(client_hello(&sh), Err(HelloError::NotClientHello));
        // Truncated: the record announces more than the datagram holds.
        let h = hello(b"cookie");
        assert_eq!(client_hello(&h[..h.len() - 1]), Err(HelloError::Malformed));
        // A fragment.
        let mut frag = hello(&[]);
        frag[RECORD_HEADER + 8] = 1;
        assert_eq!(client_hello(&frag), Err(HelloError::NotClientHello));
    }

    #[test]
    fn a_hello_shorter_than_our_answer_is_refused() {
        let h = hello(&[]);
        // Cut the body to just the version: lengths made consistent, too short.
        let mut short = h[..RECORD_HEADER + HANDSHAKE_HEADER + 2].to_vec();
        short[11..13].copy_from_slice(&((HANDSHAKE_HEADER + 2) as u16).to_be_bytes());
        short[RECORD_HEADER + 1..RECORD_HEADER + 4].copy_from_slice(&[0, 0, 2]);
        short[RECORD_HEADER + 9..RECORD_HEADER + 12].copy_from_slice(&[0, 0, 2]);
        assert_eq!(client_hello(&short), Err(HelloError::Malformed));
    }

    proptest! {
        #[test]
        fn never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = client_hello(&bytes);
        }

        #[test]
        fn never_panics_on_a_mutated_hello(
            cookie in proptest::collection::vec(any::<u8>(), 0..64),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            let mut h = hello(&cookie);
            prop_assert_eq!(client_hello(&h).unwrap().cookie, &cookie[..]);
            for (at, b) in flips {
                let i = at % h.len();
                h[i] = b;
            }
            let cut = cut % (h.len() + 1);
            if let Ok(found) = client_hello(&h[..cut]) {
                // Whatever was read lies inside the datagram.
                prop_assert!(found.cookie.len() <= 255);
                prop_assert!(cut >= MIN_CLIENT_HELLO);
            }
        }
    }
}
