//! A small, blocking STUN/TURN client over one UDP socket, built on `tern-stun`.
//!
//! It exists to send exactly the packets a test wants (including wrong ones) and to read
//! back what the relay answered. Attribute and error codes are written out here from the
//! RFCs (8489, 8656) rather than taken from tern-stun, so a wrong constant in the codec
//! cannot hide behind the same wrong constant in the test.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use rand::RngCore;
use tern_stun::{
    decode_error_code, decode_u32, decode_xor_address, long_term_key_md5, ChannelData, Class,
    Message, MessageWriter, Method, TransactionId,
};

/// Wire codes of the attributes the tests use (RFC 8489 §18.3, RFC 8656 §18).
pub mod code {
    /// MAPPED-ADDRESS.
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY.
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// CHANNEL-NUMBER.
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME.
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS.
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA.
    pub const DATA: u16 = 0x0013;
    /// REALM.
    pub const REALM: u16 = 0x0014;
    /// NONCE.
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS.
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-ADDRESS-FAMILY.
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    /// REQUESTED-TRANSPORT.
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT.
    pub const FINGERPRINT: u16 = 0x8028;
}

/// Error codes (RFC 8489 §14.8, RFC 8656 §18.3).
pub mod error {
    /// 400 Bad Request.
    pub const BAD_REQUEST: u16 = 400;
    /// 401 Unauthenticated.
    pub const UNAUTHENTICATED: u16 = 401;
    /// 403 Forbidden.
    pub const FORBIDDEN: u16 = 403;
    /// 437 Allocation Mismatch.
    pub const ALLOCATION_MISMATCH: u16 = 437;
    /// 438 Stale Nonce.
    pub const STALE_NONCE: u16 = 438;
    /// 440 Address Family not Supported.
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: u16 = 440;
}

/// One attribute of a request, as a test writes it.
#[derive(Clone, Debug)]
pub enum Attr {
    /// XOR-PEER-ADDRESS.
    XorPeerAddress(SocketAddr),
    /// CHANNEL-NUMBER (raw u16; RFFU bytes zero).
    ChannelNumber(u16),
    /// LIFETIME in seconds.
    Lifetime(u32),
    /// REQUESTED-TRANSPORT protocol byte (17 = UDP).
    RequestedTransport(u8),
    /// REQUESTED-ADDRESS-FAMILY (1 = IPv4, 2 = IPv6).
    RequestedAddressFamily(u8),
    /// DATA.
    Data(Vec<u8>),
    /// Anything else, value as given (padded by the writer).
    Raw(u16, Vec<u8>),
}

/// A received STUN message, owned.
#[derive(Clone)]
pub struct Reply {
    raw: Vec<u8>,
    /// Where it came from.
    pub from: SocketAddr,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.message();
        f.debug_struct("Reply")
            .field("method", &m.method())
            .field("class", &m.class())
            .field("error", &self.error())
            .field("len", &self.raw.len())
            .field("from", &self.from)
            .finish()
    }
}

impl Reply {
    /// The parsed message (the bytes were validated when received).
    pub fn message(&self) -> Message<'_> {
        Message::parse(&self.raw).expect("validated on receipt")
    }
    /// The raw bytes.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
    /// Message class.
    pub fn class(&self) -> Class {
        self.message().class()
    }
    /// Message method.
    pub fn method(&self) -> Method {
        self.message().method()
    }
    /// True for a success response.
    pub fn is_success(&self) -> bool {
        self.class() == Class::Success
    }
    /// ERROR-CODE as (code, reason), if present.
    pub fn error(&self) -> Option<(u16, String)> {
        let a = self.message().get(code::ERROR_CODE)?;
        decode_error_code(a.value)
            .ok()
            .map(|(c, r)| (c, r.to_owned()))
    }
    /// Just the error code number, if any.
    pub fn error_code(&self) -> Option<u16> {
        self.error().map(|(c, _)| c)
    }
    /// The value of the first attribute of type `typ`.
    pub fn attr(&self, typ: u16) -> Option<Vec<u8>> {
        self.message().get(typ).map(|a| a.value.to_vec())
    }
    /// An XOR-encoded address attribute (XOR-MAPPED-ADDRESS, XOR-RELAYED-ADDRESS, ...).
    pub fn xor_address(&self, typ: u16) -> Option<SocketAddr> {
        let m = self.message();
        let a = m.get(typ)?;
        decode_xor_address(a.value, &m.transaction_id()).ok()
    }
    /// A 32-bit attribute (LIFETIME, ...).
    pub fn u32_attr(&self, typ: u16) -> Option<u32> {
        decode_u32(&self.attr(typ)?).ok()
    }
    /// The transaction ID.
    pub fn transaction_id(&self) -> TransactionId {
        self.message().transaction_id()
    }
}

/// Data that arrived from a peer through the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerData {
    /// The peer, from XOR-PEER-ADDRESS or from the channel binding.
    pub peer: SocketAddr,
    /// Channel number if it came as ChannelData, None for a Data indication.
    pub channel: Option<u16>,
    /// The payload.
    pub data: Vec<u8>,
}

/// Errors of a transaction.
#[derive(Debug)]
pub enum ClientError {
    /// Socket error.
    Io(io::Error),
    /// No response after all retransmissions.
    Timeout,
    /// The response was not what the exchange needs (e.g. a 401 without NONCE).
    Unexpected(Reply),
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// A fresh random transaction ID.
pub fn new_tid() -> TransactionId {
    let mut t = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut t);
    TransactionId(t)
}

/// Builds one STUN message: header, `attrs`, then MESSAGE-INTEGRITY with `key` if given,
/// then FINGERPRINT if `fingerprint`.
pub fn build(
    method: Method,
    class: Class,
    tid: TransactionId,
    attrs: &[Attr],
    key: Option<&[u8]>,
    fingerprint: bool,
) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    let mut w = MessageWriter::new(&mut buf, method, class, tid).expect("buffer");
    for a in attrs {
        match a {
            Attr::XorPeerAddress(addr) => w.add_xor_address(code::XOR_PEER_ADDRESS, *addr),
            Attr::ChannelNumber(n) => {
                let b = n.to_be_bytes();
                w.add_raw(code::CHANNEL_NUMBER, &[b[0], b[1], 0, 0])
            }
            Attr::Lifetime(s) => w.add_u32(code::LIFETIME, *s),
            Attr::RequestedTransport(p) => w.add_raw(code::REQUESTED_TRANSPORT, &[*p, 0, 0, 0]),
            Attr::RequestedAddressFamily(f) => {
                w.add_raw(code::REQUESTED_ADDRESS_FAMILY, &[*f, 0, 0, 0])
            }
            Attr::Data(d) => w.add_raw(code::DATA, d),
            Attr::Raw(t, v) => w.add_raw(*t, v),
        }
        .expect("attribute fits");
    }
    if let Some(k) = key {
        w.add_message_integrity(k).expect("fits");
    }
    if fingerprint {
        w.add_fingerprint().expect("fits");
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

/// The 4-byte-header ChannelData message for `channel` carrying `data`, padded to 4 bytes
/// when `pad`.
pub fn channel_data(channel: u16, data: &[u8], pad: bool) -> Vec<u8> {
    let len = u16::try_from(data.len()).expect("ChannelData payload fits u16");
    let mut out = vec![0u8; 4];
    tern_stun::write_channel_data_header(&mut out, channel, len).expect("4 bytes");
    out.extend_from_slice(data);
    if pad {
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    out
}

/// Long-term credentials for a [`StunClient`].
#[derive(Clone, Debug)]
pub struct LongTerm {
    /// USERNAME.
    pub username: String,
    /// Password (for REST credentials, the base64 HMAC).
    pub password: String,
}

/// A blocking STUN/TURN client on one UDP socket, talking to one server.
#[derive(Debug)]
pub struct StunClient {
    sock: UdpSocket,
    server: SocketAddr,
    creds: Option<LongTerm>,
    realm: Option<String>,
    nonce: Option<Vec<u8>>,
    key: Option<[u8; 16]>,
    channels: HashMap<u16, SocketAddr>,
    pending: VecDeque<Vec<u8>>,
    /// Time to wait for each response before retransmitting.
    pub rto: Duration,
    /// Transmissions per request (1 = no retransmission).
    pub attempts: u32,
}

impl StunClient {
    /// A client on an ephemeral loopback port of the server's family.
    pub fn new(server: SocketAddr) -> io::Result<StunClient> {
        let local: SocketAddr = if server.is_ipv4() {
            "127.0.0.1:0".parse().expect("literal")
        } else {
            "[::1]:0".parse().expect("literal")
        };
        Self::bind(local, server)
    }

    /// A client on `local`.
    pub fn bind(local: SocketAddr, server: SocketAddr) -> io::Result<StunClient> {
        let sock = UdpSocket::bind(local)?;
        Ok(StunClient {
            sock,
            server,
            creds: None,
            realm: None,
            nonce: None,
            key: None,
            channels: HashMap::new(),
            pending: VecDeque::new(),
            rto: Duration::from_millis(500),
            attempts: 4,
        })
    }

    /// Same, with long-term credentials for [`StunClient::allocate`] and friends.
    pub fn with_credentials(
        server: SocketAddr,
        username: &str,
        password: &str,
    ) -> io::Result<StunClient> {
        let mut c = Self::new(server)?;
        c.creds = Some(LongTerm {
            username: username.to_owned(),
            password: password.to_owned(),
        });
        Ok(c)
    }

    /// Our socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("bound")
    }

    /// The server this client talks to.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The NONCE currently in use, if any.
    pub fn nonce(&self) -> Option<&[u8]> {
        self.nonce.as_deref()
    }

    /// Replaces the NONCE used in authenticated requests (to send one the server never
    /// issued, say).
    pub fn set_nonce(&mut self, nonce: &[u8]) {
        self.nonce = Some(nonce.to_vec());
    }

    /// The REALM learnt from the server, if any.
    pub fn realm(&self) -> Option<&str> {
        self.realm.as_deref()
    }

    /// Sends raw bytes to the server.
    pub fn send_raw(&self, bytes: &[u8]) -> io::Result<()> {
        self.sock.send_to(bytes, self.server)?;
        Ok(())
    }

    /// Receives one datagram from the server within `timeout` (queued data first).
    pub fn recv_raw(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(Some(p));
        }
        self.recv_socket(timeout)
    }

    /// Sends `msg` (a request with transaction `tid`) and waits for the response with the
    /// same transaction ID, retransmitting per [`StunClient::rto`]/[`StunClient::attempts`].
    /// Other datagrams that arrive meanwhile are queued for [`StunClient::recv_data`].
    pub fn transact(&mut self, msg: &[u8], tid: TransactionId) -> Result<Reply, ClientError> {
        for _ in 0..self.attempts {
            self.sock.send_to(msg, self.server)?;
            let deadline = Instant::now() + self.rto;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let Some(pkt) = self.recv_socket(left)? else {
                    break;
                };
                match Message::parse(&pkt) {
                    Ok(m)
                        if m.transaction_id() == tid
                            && matches!(m.class(), Class::Success | Class::Error) =>
                    {
                        return Ok(Reply {
                            raw: pkt,
                            from: self.server,
                        });
                    }
                    _ => self.pending.push_back(pkt),
                }
            }
        }
        Err(ClientError::Timeout)
    }

    /// A request built from `attrs`, unauthenticated, with FINGERPRINT.
    pub fn request(&mut self, method: Method, attrs: &[Attr]) -> Result<Reply, ClientError> {
        let tid = new_tid();
        let msg = build(method, Class::Request, tid, attrs, None, true);
        self.transact(&msg, tid)
    }

    /// A Binding request (no authentication).
    pub fn binding(&mut self) -> Result<Reply, ClientError> {
        self.request(Method::BINDING, &[])
    }

    /// A request with long-term authentication (USERNAME, REALM, NONCE, MESSAGE-INTEGRITY,
    /// FINGERPRINT) using the realm, nonce and key learnt so far. Does not retry on 438.
    pub fn authed_once(&mut self, method: Method, attrs: &[Attr]) -> Result<Reply, ClientError> {
        let tid = new_tid();
        let msg = self.build_authed(method, Class::Request, tid, attrs);
        self.transact(&msg, tid)
    }

    /// As [`StunClient::authed_once`], but a 438 Stale Nonce (or a 401 carrying a fresh
    /// NONCE) updates the nonce and retries once, as a real client does.
    pub fn authed(&mut self, method: Method, attrs: &[Attr]) -> Result<Reply, ClientError> {
        let r = self.authed_once(method, attrs)?;
        if r.error_code() == Some(error::STALE_NONCE) {
            self.learn_challenge(&r);
            return self.authed_once(method, attrs);
        }
        Ok(r)
    }

    /// Allocate with the 401 dance: an unauthenticated request, learn REALM and NONCE from
    /// the 401, then the authenticated request. `extra` goes into both (after
    /// REQUESTED-TRANSPORT UDP). Returns the final response, success or not.
    pub fn allocate(&mut self, extra: &[Attr]) -> Result<Reply, ClientError> {
        let mut attrs = vec![Attr::RequestedTransport(17)];
        attrs.extend_from_slice(extra);
        if self.key.is_none() {
            let r = self.request(Method::ALLOCATE, &attrs)?;
            if r.error_code() != Some(error::UNAUTHENTICATED) {
                return Ok(r);
            }
            if !self.learn_challenge(&r) {
                return Err(ClientError::Unexpected(r));
            }
        }
        self.authed(Method::ALLOCATE, &attrs)
    }

    /// Allocate and return the XOR-RELAYED-ADDRESS, panicking with the response if the
    /// allocation fails.
    pub fn allocate_ok(&mut self, extra: &[Attr]) -> SocketAddr {
        let r = self.allocate(extra).expect("Allocate transaction");
        assert!(r.is_success(), "Allocate failed: {r:?}");
        r.xor_address(code::XOR_RELAYED_ADDRESS)
            .expect("XOR-RELAYED-ADDRESS in Allocate success")
    }

    /// CreatePermission for `peers` (authenticated).
    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Result<Reply, ClientError> {
        let attrs: Vec<Attr> = peers.iter().map(|p| Attr::XorPeerAddress(*p)).collect();
        self.authed(Method::CREATE_PERMISSION, &attrs)
    }

    /// ChannelBind `channel` to `peer` (authenticated); remembers the binding on success.
    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Result<Reply, ClientError> {
        let r = self.authed(
            Method::CHANNEL_BIND,
            &[Attr::ChannelNumber(channel), Attr::XorPeerAddress(peer)],
        )?;
        if r.is_success() {
            self.channels.insert(channel, peer);
        }
        Ok(r)
    }

    /// Refresh with `lifetime` seconds (0 deletes the allocation).
    pub fn refresh(&mut self, lifetime: u32) -> Result<Reply, ClientError> {
        self.authed(Method::REFRESH, &[Attr::Lifetime(lifetime)])
    }

    /// A Send indication of `data` to `peer`.
    pub fn send_indication(&self, peer: SocketAddr, data: &[u8]) -> io::Result<()> {
        let msg = build(
            Method::SEND,
            Class::Indication,
            new_tid(),
            &[Attr::XorPeerAddress(peer), Attr::Data(data.to_vec())],
            None,
            true,
        );
        self.send_raw(&msg)
    }

    /// A ChannelData message of `data` on `channel` (unpadded).
    pub fn send_channel_data(&self, channel: u16, data: &[u8]) -> io::Result<()> {
        self.send_raw(&channel_data(channel, data, false))
    }

    /// The next peer data (Data indication or ChannelData) within `timeout`; STUN
    /// responses and anything unparseable that arrive meanwhile are dropped.
    pub fn recv_data(&mut self, timeout: Duration) -> io::Result<Option<PeerData>> {
        let deadline = Instant::now() + timeout;
        loop {
            let pkt = match self.pending.pop_front() {
                Some(p) => p,
                None => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    match self.recv_socket(left)? {
                        Some(p) => p,
                        None => return Ok(None),
                    }
                }
            };
            if let Some(d) = self.decode_peer_data(&pkt) {
                return Ok(Some(d));
            }
        }
    }

    fn decode_peer_data(&self, pkt: &[u8]) -> Option<PeerData> {
        let first = *pkt.first()?;
        if (0x40..=0x7F).contains(&first) {
            let cd = ChannelData::parse(pkt).ok()?;
            let peer = *self.channels.get(&cd.channel)?;
            return Some(PeerData {
                peer,
                channel: Some(cd.channel),
                data: cd.data.to_vec(),
            });
        }
        let m = Message::parse(pkt).ok()?;
        if m.method() != Method::DATA || m.class() != Class::Indication {
            return None;
        }
        let peer =
            decode_xor_address(m.get(code::XOR_PEER_ADDRESS)?.value, &m.transaction_id()).ok()?;
        let data = m.get(code::DATA)?.value.to_vec();
        Some(PeerData {
            peer,
            channel: None,
            data,
        })
    }

    /// Takes REALM and NONCE from a 401/438 and derives the long-term key. False if the
    /// response lacks them or the client has no credentials.
    pub fn learn_challenge(&mut self, r: &Reply) -> bool {
        let (Some(realm), Some(nonce)) = (r.attr(code::REALM), r.attr(code::NONCE)) else {
            return false;
        };
        let Ok(realm) = String::from_utf8(realm) else {
            return false;
        };
        let Some(creds) = &self.creds else {
            return false;
        };
        self.key = Some(long_term_key_md5(&creds.username, &realm, &creds.password));
        self.realm = Some(realm);
        self.nonce = Some(nonce);
        true
    }

    /// An authenticated request as [`StunClient::authed_once`] would send it, for tests
    /// that send the same bytes more than once (retransmissions).
    pub fn build_authed_request(&self, method: Method, attrs: &[Attr]) -> (Vec<u8>, TransactionId) {
        let tid = new_tid();
        (self.build_authed(method, Class::Request, tid, attrs), tid)
    }

    fn build_authed(
        &self,
        method: Method,
        class: Class,
        tid: TransactionId,
        attrs: &[Attr],
    ) -> Vec<u8> {
        let mut all = attrs.to_vec();
        if let Some(c) = &self.creds {
            all.push(Attr::Raw(code::USERNAME, c.username.as_bytes().to_vec()));
        }
        if let Some(r) = &self.realm {
            all.push(Attr::Raw(code::REALM, r.as_bytes().to_vec()));
        }
        if let Some(n) = &self.nonce {
            all.push(Attr::Raw(code::NONCE, n.clone()));
        }
        build(
            method,
            class,
            tid,
            &all,
            self.key.as_ref().map(|k| &k[..]),
            true,
        )
    }

    fn recv_socket(&mut self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 65_536];
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) if from == self.server => return Ok(Some(buf[..n].to_vec())),
                Ok(_) => continue, // not from our server: ignore
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A plain UDP peer on loopback, as the far side of a relayed flow.
#[derive(Debug)]
pub struct Peer {
    sock: UdpSocket,
}

impl Peer {
    /// A peer on an ephemeral port of `ip`.
    pub fn bind(ip: std::net::IpAddr) -> io::Result<Peer> {
        Ok(Peer {
            sock: UdpSocket::bind(SocketAddr::new(ip, 0))?,
        })
    }
    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("bound")
    }
    /// Sends `data` to `to` (a relayed address).
    pub fn send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<()> {
        self.sock.send_to(data, to)?;
        Ok(())
    }
    /// One datagram within `timeout`.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<(Vec<u8>, SocketAddr)>> {
        let mut buf = vec![0u8; 65_536];
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        match self.sock.recv_from(&mut buf) {
            Ok((n, from)) => Ok(Some((buf[..n].to_vec(), from))),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}
