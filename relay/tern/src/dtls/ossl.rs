//! OpenSSL's DTLS driven without sockets: the server context (certificate
//! and key from the `tls-cert`/`tls-key` PEM files, DTLS 1.2, stateless
//! cookies), an in-memory datagram "BIO" ([`Dgram`]) that OpenSSL reads one
//! received datagram from and writes each outgoing datagram into, and the
//! three DTLS calls the `openssl` crate does not wrap: `DTLSv1_listen`,
//! `DTLSv1_get_timeout` and `DTLSv1_handle_timeout`.
//!
//! Owns: OpenSSL objects and their FFI. Must not touch: sockets, clocks or
//! associations (all in [`super::Dtls`]).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use foreign_types::ForeignTypeRef;
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslMode, SslOptions, SslRef,
    SslSessionCacheMode, SslStream, SslVersion,
};

use super::cookie;

/// The datagram size our handshake flights are cut to (a 1280-byte IPv6
/// path minus IP and UDP headers, with room to spare).
pub(crate) const MTU: u32 = 1200;
/// Bytes of output one call may queue before further datagrams are refused
/// (a handshake flight with a long certificate chain fits many times).
const TX_CAP: usize = 64 * 1024;

/// Why the DTLS context could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DtlsError {
    /// OpenSSL refused a file or a setting.
    #[error("{what}: {source}")]
    OpenSsl {
        /// The file or step.
        what: String,
        /// OpenSSL's error queue.
        source: openssl::error::ErrorStack,
    },
}

fn ossl(what: impl Into<String>) -> impl FnOnce(openssl::error::ErrorStack) -> DtlsError {
    let what = what.into();
    move |source| DtlsError::OpenSsl { what, source }
}

/// Build the DTLS server context: DTLS 1.2, the PEM certificate chain and
/// key (PKCS#8, PKCS#1 or SEC1; RSA or ECDSA), OpenSSL's default cipher
/// suites, no session cache, and cookie callbacks that check [`cookie`]s
/// under `secret`.
pub(crate) fn load(cert: &Path, key: &Path, secret: [u8; 32]) -> Result<SslContext, DtlsError> {
    let path = |p: &Path| -> PathBuf { p.to_owned() };
    let mut b = SslContextBuilder::new(SslMethod::dtls()).map_err(ossl("DTLS context"))?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))
        .map_err(ossl("DTLS 1.2"))?;
    b.set_certificate_chain_file(cert)
        .map_err(ossl(path(cert).display().to_string()))?;
    b.set_private_key_file(key, SslFiletype::PEM)
        .map_err(ossl(path(key).display().to_string()))?;
    b.check_private_key()
        .map_err(ossl("certificate and key do not match"))?;
    b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::COOKIE_EXCHANGE | SslOptions::NO_TICKET);
    // Idle associations give their record buffers back.
    b.set_mode(SslMode::RELEASE_BUFFERS);
    b.set_session_cache_mode(SslSessionCacheMode::OFF);
    b.set_cookie_generate_cb(move |_ssl, out| {
        let Some(from) = cookie::current() else {
            return Err(openssl::error::ErrorStack::get());
        };
        let c = cookie::make(&secret, &from);
        out.get_mut(..c.len())
            .ok_or_else(openssl::error::ErrorStack::get)?
            .copy_from_slice(&c);
        Ok(c.len())
    });
    b.set_cookie_verify_cb(move |_ssl, c| {
        cookie::current().is_some_and(|from| cookie::verify(&secret, &from, c))
    });
    Ok(b.build())
}

/// A server-side SSL object for one association (or for listening).
pub(crate) fn new_stream(ctx: &SslContext) -> Result<SslStream<Dgram>, openssl::error::ErrorStack> {
    let mut ssl = Ssl::new(ctx)?;
    ssl.set_mtu(MTU)?;
    ssl.set_accept_state();
    SslStream::new(ssl, Dgram::default())
}

/// The in-memory datagram pipe between OpenSSL and the worker: one received
/// datagram waits in `rx` until OpenSSL reads it; every write is one
/// outgoing datagram, kept in `tx` (ends in `tx_ends`) until the worker
/// sends them. The buffers grow to the largest datagram seen and are reused.
#[derive(Debug, Default)]
pub(crate) struct Dgram {
    rx: Vec<u8>,
    rx_ready: bool,
    tx: Vec<u8>,
    tx_ends: Vec<usize>,
}

impl Dgram {
    /// Hand OpenSSL this datagram on its next read.
    pub(crate) fn put(&mut self, datagram: &[u8]) {
        self.rx.clear();
        self.rx.extend_from_slice(datagram);
        self.rx_ready = true;
    }

    /// Forget a datagram OpenSSL did not read.
    pub(crate) fn clear_rx(&mut self) {
        self.rx_ready = false;
    }

    /// Each datagram OpenSSL wrote, in order; then none are kept.
    pub(crate) fn drain(&mut self, mut each: impl FnMut(&[u8])) {
        let mut start = 0;
        for &end in &self.tx_ends {
            each(&self.tx[start..end]);
            start = end;
        }
        self.tx.clear();
        self.tx_ends.clear();
    }

    /// Whether OpenSSL wrote something not yet drained.
    pub(crate) fn has_output(&self) -> bool {
        !self.tx_ends.is_empty()
    }
}

impl Read for Dgram {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.rx_ready {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.rx_ready = false;
        // Datagram semantics: what does not fit is lost.
        let n = buf.len().min(self.rx.len());
        buf[..n].copy_from_slice(&self.rx[..n]);
        Ok(n)
    }
}

impl Write for Dgram {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.tx.len() + buf.len() > TX_CAP {
            return Err(io::Error::other("DTLS output queue full"));
        }
        self.tx.extend_from_slice(buf);
        self.tx_ends.push(self.tx.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

mod ffi {
    use std::os::raw::{c_int, c_void};

    use openssl_sys::SSL;

    /// OpenSSL's opaque `BIO_ADDR`.
    pub(super) type BioAddr = c_void;

    // In the libssl/libcrypto that openssl-sys links (OpenSSL >= 1.1.0),
    // not bound by openssl-sys.
    extern "C" {
        pub(super) fn DTLSv1_listen(s: *mut SSL, client: *mut BioAddr) -> c_int;
        pub(super) fn BIO_ADDR_new() -> *mut BioAddr;
        pub(super) fn BIO_ADDR_free(a: *mut BioAddr);
    }

    /// `DTLS_CTRL_GET_TIMEOUT` and `DTLS_CTRL_HANDLE_TIMEOUT` (ssl.h), behind
    /// the `DTLSv1_get_timeout` / `DTLSv1_handle_timeout` macros.
    pub(super) const DTLS_CTRL_GET_TIMEOUT: c_int = 73;
    pub(super) const DTLS_CTRL_HANDLE_TIMEOUT: c_int = 74;
}

/// A `BIO_ADDR` that `DTLSv1_listen` writes the peer into (it needs one;
/// tern knows the peer from the socket and ignores it).
pub(crate) struct ListenAddr(*mut ffi::BioAddr);

impl ListenAddr {
    pub(crate) fn new() -> io::Result<ListenAddr> {
        // SAFETY: BIO_ADDR_new takes nothing and returns an owned object or NULL.
        let p = unsafe { ffi::BIO_ADDR_new() };
        if p.is_null() {
            return Err(io::Error::other("BIO_ADDR_new failed"));
        }
        Ok(ListenAddr(p))
    }
}

impl Drop for ListenAddr {
    fn drop(&mut self) {
        // SAFETY: the pointer came from BIO_ADDR_new and is freed once, here.
        unsafe { ffi::BIO_ADDR_free(self.0) }
    }
}

/// What `DTLSv1_listen` made of the datagram in the stream's [`Dgram`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listen {
    /// A ClientHello with a valid cookie: the stream now carries the
    /// handshake (call `accept`).
    Verified,
    /// Answered with a HelloVerifyRequest (in the stream's output), or dropped.
    NotYet,
    /// OpenSSL failed; the stream must be thrown away.
    Failed,
}

/// Run `DTLSv1_listen` on `stream` (a fresh server SSL or one reused for
/// listening) over the datagram put into its [`Dgram`].
pub(crate) fn listen(stream: &mut SslStream<Dgram>, addr: &ListenAddr) -> Listen {
    let ssl = stream.ssl().as_ptr();
    // SAFETY: `ssl` is a live SSL owned by `stream` (borrowed mutably for
    // the call, so nothing else uses it) with its BIO set; `addr.0` is a live
    // BIO_ADDR we own. OpenSSL reads through the BIO into `Dgram`.
    let r = unsafe { ffi::DTLSv1_listen(ssl, addr.0) };
    match r {
        1 => Listen::Verified,
        0 => Listen::NotYet,
        _ => Listen::Failed,
    }
}

/// `DTLSv1_get_timeout`: how long until the handshake's retransmission
/// timer fires, if one runs.
pub(crate) fn get_timeout(ssl: &SslRef) -> Option<Duration> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: a live SSL; DTLS_CTRL_GET_TIMEOUT writes one `struct timeval`
    // through the pointer, which points at one.
    let r = unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            ffi::DTLS_CTRL_GET_TIMEOUT,
            0,
            (&mut tv as *mut libc::timeval).cast(),
        )
    };
    (r == 1).then(|| {
        Duration::from_secs(tv.tv_sec.max(0) as u64)
            + Duration::from_micros(tv.tv_usec.max(0) as u64)
    })
}

/// `DTLSv1_handle_timeout`: retransmit the last flight if its timer expired.
/// Negative: the handshake gave up (too many retransmissions).
pub(crate) fn handle_timeout(ssl: &SslRef) -> std::os::raw::c_long {
    // SAFETY: a live SSL; DTLS_CTRL_HANDLE_TIMEOUT takes no pointer.
    unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            ffi::DTLS_CTRL_HANDLE_TIMEOUT,
            0,
            std::ptr::null_mut(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dgram_keeps_datagram_boundaries() {
        let mut d = Dgram::default();
        let mut buf = [0u8; 4];
        assert_eq!(
            d.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        d.put(b"abcdef");
        // Truncated like a datagram socket, and read once.
        assert_eq!(d.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf, b"abcd");
        assert!(d.read(&mut buf).is_err());
        d.write_all(b"one").unwrap();
        d.write_all(b"three").unwrap();
        let mut out = Vec::new();
        d.drain(|dg| out.push(dg.to_vec()));
        assert_eq!(out, vec![b"one".to_vec(), b"three".to_vec()]);
        assert!(!d.has_output());
        let big = vec![0u8; TX_CAP];
        d.write_all(&big).unwrap();
        assert!(d.write(b"x").is_err(), "bounded");
    }
}
