//! TURN over DTLS 1.2 (RFC 7350): one worker's DTLS listeners and
//! associations.
//!
//! Owns: this worker's associations, keyed by (our listening address, the
//! client's address), on its own `SO_REUSEPORT` UDP sockets of the
//! `listen-dtls` addresses (registered with the worker's packet back end
//! like the UDP listeners, so the kernel spreads clients over workers by
//! flow hash and every datagram of one client reaches the same worker);
//! stateless cookies for ClientHellos from unknown sources; the handshake's
//! retransmission timers, the handshake and idle timeouts and the
//! association limits; counters. Must not touch: protocol logic (every
//! decrypted message goes to `tern_turn::Server::handle_client_message`
//! through the worker's callback; every message for a client comes back
//! through `Dtls::send`) or the plain UDP path.
//!
//! ## A datagram's way
//!
//! From a known client: into its OpenSSL session through an in-memory
//! datagram pipe (`ossl::Dgram`); a handshake step, or each decrypted
//! record handed to the core (no padding: DTLS carries datagrams); what
//! OpenSSL writes (flights, alerts, records) leaves on the same socket.
//! From an unknown source: `hello::client_hello` drops anything that is
//! not a plain ClientHello (counted), then one reused listening SSL object
//! runs `DTLSv1_listen`, which answers a ClientHello without a valid cookie
//! with a HelloVerifyRequest — smaller than the ClientHello, and with no
//! state kept — and only a ClientHello that returns our cookie (so the
//! source can receive at its address) becomes an association, subject to
//! `max-connections` and `max-connections-per-source` (shared with TCP and
//! TLS connections).
//!
//! ## Bounds
//!
//! Associations are capped relay-wide and per source IP; a handshake not
//! finished within `tls-handshake-timeout` (or given up by OpenSSL after its
//! retransmissions) and an association without an allocation that sends
//! nothing for `stream-idle-timeout` are closed; an association's end ends
//! its allocation (like a TCP/TLS connection's). OpenSSL allocates for
//! handshakes and, inside its record layer, may for records: DTLS clients
//! are not on the zero-allocation path that UDP clients are.
//!
//! ## The `dtls` feature
//!
//! Everything that links OpenSSL (the associations in `assoc`, the FFI in
//! `ossl`, the cookie callbacks and the ClientHello parser they guard) is
//! built only with the `dtls` cargo feature, so that a machine without
//! OpenSSL's headers builds tern. The counters ([`DtlsStats`],
//! [`DtlsDrop`]) always exist: `/metrics` has the same series either way
//! (zero without the feature), and `Config::validate` refuses `listen-dtls`
//! in a build without it.

#[cfg(feature = "dtls")]
mod assoc;
#[cfg(feature = "dtls")]
pub(crate) mod cookie;
#[cfg(feature = "dtls")]
pub(crate) mod hello;
#[cfg(feature = "dtls")]
pub(crate) mod ossl;

#[cfg(feature = "dtls")]
pub(crate) use assoc::{Dtls, DtlsConfig};
#[cfg(feature = "dtls")]
pub use ossl::DtlsError;

use crate::stream::CloseReason;

/// Why a datagram on a DTLS port was dropped; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DtlsDrop {
    /// From an unknown source and not a DTLS record.
    NotDtls,
    /// From an unknown source: a DTLS record but not a ClientHello.
    NotClientHello,
    /// A ClientHello too short or inconsistent, or refused by OpenSSL.
    BadHello,
    /// A message for a client whose association is gone.
    Unroutable,
    /// A message for a client whose handshake has not finished.
    NotEstablished,
}

impl DtlsDrop {
    /// Every reason, for exporting counters.
    pub const ALL: [DtlsDrop; 5] = [
        DtlsDrop::NotDtls,
        DtlsDrop::NotClientHello,
        DtlsDrop::BadHello,
        DtlsDrop::Unroutable,
        DtlsDrop::NotEstablished,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DtlsDrop::NotDtls => "not_dtls",
            DtlsDrop::NotClientHello => "not_client_hello",
            DtlsDrop::BadHello => "bad_hello",
            DtlsDrop::Unroutable => "unroutable",
            DtlsDrop::NotEstablished => "not_established",
        }
    }
}

/// Counters of the DTLS associations (one worker's, or merged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DtlsStats {
    /// HelloVerifyRequests sent: ClientHellos without a valid cookie, answered
    /// with no state kept.
    pub hello_verify_sent: u64,
    /// Of those, ClientHellos whose cookie was wrong or expired.
    pub bad_cookie: u64,
    /// ClientHellos with a valid cookie that became an association.
    pub accepted: u64,
    /// Handshakes finished.
    pub established: u64,
    /// Associations now.
    pub open: u64,
    /// Verified ClientHellos refused by `max-connections`.
    pub refused_total: u64,
    /// Verified ClientHellos refused by `max-connections-per-source`.
    pub refused_per_source: u64,
    /// Associations closed, by [`CloseReason`] (index in `CloseReason::ALL`).
    pub closed: [u64; CloseReason::ALL.len()],
    /// Datagrams dropped, by [`DtlsDrop`] (index in `DtlsDrop::ALL`).
    pub dropped: [u64; DtlsDrop::ALL.len()],
    /// Decrypted messages handed to the core.
    pub messages_in: u64,
    /// Plaintext bytes received.
    pub bytes_in: u64,
    /// Plaintext bytes sent.
    pub bytes_out: u64,
    /// Handshake flights retransmitted on a timer.
    pub retransmits: u64,
}

impl DtlsStats {
    /// Add `other`'s counters to these.
    pub fn merge(&mut self, other: &DtlsStats) {
        for (a, b) in self.closed.iter_mut().zip(other.closed) {
            *a += b;
        }
        for (a, b) in self.dropped.iter_mut().zip(other.dropped) {
            *a += b;
        }
        self.hello_verify_sent += other.hello_verify_sent;
        self.bad_cookie += other.bad_cookie;
        self.accepted += other.accepted;
        self.established += other.established;
        self.open += other.open;
        self.refused_total += other.refused_total;
        self.refused_per_source += other.refused_per_source;
        self.messages_in += other.messages_in;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.retransmits += other.retransmits;
    }

    /// Associations closed for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize]
    }

    /// Datagrams dropped for `reason`.
    pub fn dropped(&self, reason: DtlsDrop) -> u64 {
        self.dropped[reason as usize]
    }
}
