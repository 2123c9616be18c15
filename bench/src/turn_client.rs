//! A minimal TURN client (RFC 8656 over UDP) for load generation: it sets up
//! many allocations concurrently — Allocate (with the 401 challenge),
//! CreatePermission, ChannelBind — and builds the data-path prefixes
//! (ChannelData header, Send indication header) the generator prepends to
//! each probe. Responses' integrity is not checked: this is a load
//! generator, not a conformance tester.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use tern_stun::{
    attr, decode_error_code, decode_utf8, decode_xor_address, write_channel_data_header, Class,
    Message, MessageWriter, Method, TransactionId, PROTOCOL_UDP,
};

use crate::{bail, Error, Result};

/// The channel number every allocation binds (channels are per allocation).
pub const CHANNEL: u16 = 0x4000;

/// How a client proves who it is.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// TURN REST API (`use-auth-secret`): username `expiry:user`, password
    /// base64(HMAC-SHA1(secret, username)).
    Rest {
        /// Shared secret.
        secret: String,
        /// User part of the username.
        user: String,
    },
    /// A static long-term user.
    LongTerm {
        /// Username.
        user: String,
        /// Password.
        password: String,
    },
}

impl Credentials {
    /// The username and password to use now (REST ones expire in a day).
    pub fn username_password(&self) -> (String, String) {
        match self {
            Credentials::LongTerm { user, password } => (user.clone(), password.clone()),
            Credentials::Rest { secret, user } => {
                let expiry = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
                    + 86_400;
                let username = format!("{expiry}:{user}");
                (username.clone(), rest_password(secret, &username))
            }
        }
    }
}

/// The TURN REST API password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &str, username: &str) -> String {
    // INVARIANT: HMAC accepts keys of any length.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// How relayed data is framed from client to relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataPath {
    /// ChannelData messages on a bound channel.
    Channel,
    /// Send indications (permission only, no channel).
    SendIndication,
}

/// One set-up allocation.
#[derive(Debug)]
pub struct Allocation {
    /// The client socket, connected to the relay (the allocation's 5-tuple).
    pub sock: UdpSocket,
    /// XOR-RELAYED-ADDRESS the relay gave.
    pub relayed: SocketAddr,
    /// The peer this allocation's traffic goes to.
    pub peer: SocketAddr,
    auth: Auth,
}

#[derive(Clone, Debug, Default)]
struct Auth {
    username: String,
    realm: String,
    nonce: Vec<u8>,
    key: [u8; 16],
}

impl Allocation {
    /// Bytes to put before the probe payload on the data path, for a payload
    /// of `payload_len` bytes.
    pub fn data_prefix(&self, path: DataPath, payload_len: usize) -> Vec<u8> {
        match path {
            DataPath::Channel => {
                let mut h = vec![0u8; 4];
                // INVARIANT: 4 bytes is exactly a ChannelData header.
                write_channel_data_header(&mut h, CHANNEL, payload_len as u16).expect("4 bytes");
                h
            }
            DataPath::SendIndication => {
                // Header + XOR-PEER-ADDRESS + DATA attribute header; padding
                // after the payload is left to the caller (we send lengths
                // that are multiples of 4).
                let mut buf = [0u8; 128];
                let mut w = MessageWriter::new(
                    &mut buf,
                    Method::SEND,
                    Class::Indication,
                    TransactionId(new_tid()),
                )
                .expect("128 bytes hold a header");
                w.add_xor_address(attr::XOR_PEER_ADDRESS, self.peer)
                    .expect("fits");
                let head = w.finish();
                let total = head + 4 + payload_len.next_multiple_of(4);
                buf[2..4].copy_from_slice(&((total - 20) as u16).to_be_bytes());
                buf[head..head + 2].copy_from_slice(&attr::DATA.to_be_bytes());
                buf[head + 2..head + 4].copy_from_slice(&(payload_len as u16).to_be_bytes());
                buf[..head + 4].to_vec()
            }
        }
    }

    /// A Refresh with LIFETIME 0 that releases this allocation (send it and
    /// forget it when done).
    pub fn release_message(&self) -> Vec<u8> {
        let mut buf = [0u8; 512];
        match build(Step::Release, &self.auth, self.peer, &mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(_) => Vec::new(),
        }
    }
}

/// Settings for [`allocate_all`].
#[derive(Clone, Debug)]
pub struct Setup {
    /// The relay's listening address.
    pub server: SocketAddr,
    /// Credentials.
    pub credentials: Credentials,
    /// Channel binding or Send indications.
    pub path: DataPath,
    /// Requests in flight at once.
    pub window: usize,
    /// Give up after this long in total.
    pub timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Probe,
    Allocate,
    Permission,
    Bind,
    Done,
    Release,
}

struct Handshake {
    sock: UdpSocket,
    peer: SocketAddr,
    step: Step,
    tid: [u8; 12],
    sent_at: Instant,
    tries: u32,
    auth: Auth,
    relayed: Option<SocketAddr>,
    path: DataPath,
    challenges: u32,
}

/// Set up one allocation per entry of `peers` (each with a permission for
/// its peer, and a channel binding on [`DataPath::Channel`]), keeping
/// `setup.window` transactions in flight, retransmitting after 500 ms.
pub fn allocate_all(setup: &Setup, peers: &[SocketAddr]) -> Result<Vec<Allocation>> {
    let (username, password) = setup.credentials.username_password();
    let mut hs = Vec::with_capacity(peers.len());
    for (i, &peer) in peers.iter().enumerate() {
        let sock = UdpSocket::bind(client_addr(setup.server, i))?;
        sock.connect(setup.server)?;
        sock.set_nonblocking(true)?;
        hs.push(Handshake {
            sock,
            peer,
            step: Step::Probe,
            tid: new_tid(),
            sent_at: Instant::now(),
            tries: 0,
            auth: Auth {
                username: username.clone(),
                ..Auth::default()
            },
            relayed: None,
            path: setup.path,
            challenges: 0,
        });
    }
    let deadline = Instant::now() + setup.timeout;
    let rto = Duration::from_millis(500);
    let mut next = 0usize;
    let mut inflight: Vec<usize> = Vec::new();
    let mut buf = [0u8; 1500];
    let mut pfds: Vec<libc::pollfd> = Vec::new();
    let mut done = 0usize;
    while done < hs.len() {
        if Instant::now() >= deadline {
            bail!(
                "TURN setup timed out after {:?}: {done} of {} allocations ready (is the relay \
                 at {} up and are the credentials right?)",
                setup.timeout,
                hs.len(),
                setup.server
            );
        }
        while inflight.len() < setup.window.max(1) && next < hs.len() {
            resend(&mut hs[next], &mut buf)?;
            inflight.push(next);
            next += 1;
        }
        pfds.clear();
        pfds.extend(inflight.iter().map(|&i| libc::pollfd {
            fd: hs[i].sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // SAFETY: `pfds` is a valid array of pollfd of the given length.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as _, 20) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
        let mut k = 0;
        while k < inflight.len() {
            let i = inflight[k];
            let h = &mut hs[i];
            if pfds.get(k).is_some_and(|p| p.revents != 0) {
                while let Ok(n) = h.sock.recv(&mut buf) {
                    on_response(h, &buf[..n], &password)?;
                    if h.step == Step::Done {
                        break;
                    }
                }
            }
            if h.step == Step::Done {
                done += 1;
                inflight.swap_remove(k);
                pfds.swap_remove(k);
                continue;
            }
            if h.sent_at.elapsed() >= rto {
                if h.tries >= 6 {
                    bail!(
                        "no answer from {} to {:?} after {} tries",
                        setup.server,
                        h.step,
                        h.tries
                    );
                }
                resend(h, &mut buf)?;
            }
            k += 1;
        }
    }
    let mut out = Vec::with_capacity(hs.len());
    for h in hs {
        h.sock.set_nonblocking(false)?;
        let relayed = h
            .relayed
            .ok_or_else(|| Error("allocation finished without a relayed address".into()))?;
        out.push(Allocation {
            sock: h.sock,
            relayed,
            peer: h.peer,
            auth: h.auth,
        });
    }
    Ok(out)
}

/// The local address client `i` binds when talking to `server`. On IPv4
/// loopback each client gets its own source IP (127.64.0.1, 127.64.0.2, ...),
/// as real clients behind different NATs have, so a relay's per-source-IP
/// limits (tern allows 10 challenges per second per IP) and IP-bound nonces
/// see what they would in production. On IPv6, `[::1]:0`.
pub fn client_addr(server: SocketAddr, i: usize) -> SocketAddr {
    if server.ip() == crate::netns::Topology::RELAY_CLIENT_SIDE {
        // The three-namespace topology: clients have 10.202.x.y addresses.
        return SocketAddr::new(crate::netns::Topology::client_ip(i), 0);
    }
    match server {
        SocketAddr::V4(_) => {
            let base = u32::from(std::net::Ipv4Addr::new(127, 64, 0, 0));
            let n = (i as u32) % (1 << 22); // up to 127.127.255.255 (exclusive)
            SocketAddr::from((std::net::Ipv4Addr::from(base + 1 + n), 0))
        }
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
    }
}

/// Whether a STUN server answers a Binding request at `server` within `timeout`.
pub fn stun_ping(server: SocketAddr, timeout: Duration) -> bool {
    let bind_ip = match server.ip() {
        IpAddr::V4(a) if a.is_loopback() => "127.0.0.1:0",
        IpAddr::V4(_) => "0.0.0.0:0",
        IpAddr::V6(a) if a.is_loopback() => "[::1]:0",
        IpAddr::V6(_) => "[::]:0",
    };
    let Ok(sock) = UdpSocket::bind(bind_ip) else {
        return false;
    };
    if sock
        .set_read_timeout(Some(Duration::from_millis(100)))
        .is_err()
    {
        return false;
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        let tid = new_tid();
        let Ok(w) = MessageWriter::new(
            &mut buf,
            Method::BINDING,
            Class::Request,
            TransactionId(tid),
        ) else {
            return false;
        };
        let n = w.finish();
        let _best_effort = sock.send_to(&buf[..n], server);
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if Message::parse(&buf[..n]).is_ok_and(|m| m.transaction_id().0 == tid) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn resend(h: &mut Handshake, buf: &mut [u8]) -> Result<()> {
    let n = build_with_tid(h.step, &h.auth, h.peer, h.tid, buf)?;
    match h.sock.send(&buf[..n]) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            bail!("relay refused (ICMP port unreachable): is it listening? ({e})")
        }
        Err(e) => return Err(e.into()),
    }
    h.sent_at = Instant::now();
    h.tries += 1;
    Ok(())
}

fn on_response(h: &mut Handshake, pkt: &[u8], password: &str) -> Result<()> {
    let Ok(msg) = Message::parse(pkt) else {
        return Ok(());
    };
    if msg.transaction_id().0 != h.tid {
        return Ok(()); // a late answer to a retransmission
    }
    let step = h.step;
    match msg.class() {
        Class::Success => {
            if matches!(step, Step::Probe | Step::Allocate) {
                let a = msg
                    .get(attr::XOR_RELAYED_ADDRESS)
                    .ok_or_else(|| Error("Allocate success without XOR-RELAYED-ADDRESS".into()))?;
                h.relayed = Some(
                    decode_xor_address(a.value, &msg.transaction_id())
                        .map_err(|e| Error(format!("bad XOR-RELAYED-ADDRESS: {e}")))?,
                );
            }
            h.step = match (step, h.path) {
                (Step::Probe | Step::Allocate, _) => Step::Permission,
                (Step::Permission, DataPath::Channel) => Step::Bind,
                _ => Step::Done,
            };
        }
        Class::Error => {
            let (code, reason) = msg
                .get(attr::ERROR_CODE)
                .and_then(|a| decode_error_code(a.value).ok())
                .unwrap_or((0, ""));
            let realm = msg
                .get(attr::REALM)
                .and_then(|a| decode_utf8(a.value, 763).ok());
            let nonce = msg.get(attr::NONCE).map(|a| a.value.to_vec());
            match (code, nonce) {
                (401, Some(nonce)) if step == Step::Probe || h.challenges < 2 => {
                    h.challenges += 1;
                    if let Some(r) = realm {
                        h.auth.realm = r.to_owned();
                    }
                    h.auth.nonce = nonce;
                    h.auth.key =
                        tern_stun::long_term_key_md5(&h.auth.username, &h.auth.realm, password);
                    if step == Step::Probe {
                        h.step = Step::Allocate;
                    }
                }
                (438, Some(nonce)) => {
                    h.auth.nonce = nonce;
                    if let Some(r) = realm {
                        h.auth.realm = r.to_owned();
                    }
                }
                _ => bail!("relay refused {step:?}: {code} {reason}"),
            }
        }
        _ => return Ok(()),
    }
    h.tid = new_tid();
    h.tries = 0;
    if h.step != Step::Done {
        resend(h, &mut [0u8; 1500][..])?;
    }
    Ok(())
}

fn build(step: Step, auth: &Auth, peer: SocketAddr, buf: &mut [u8]) -> Result<usize> {
    build_with_tid(step, auth, peer, new_tid(), buf)
}

fn build_with_tid(
    step: Step,
    auth: &Auth,
    peer: SocketAddr,
    tid: [u8; 12],
    buf: &mut [u8],
) -> Result<usize> {
    let small = |_| Error("STUN message does not fit".into());
    let (method, authed) = match step {
        Step::Probe => (Method::ALLOCATE, false),
        Step::Allocate => (Method::ALLOCATE, true),
        Step::Permission => (Method::CREATE_PERMISSION, true),
        Step::Bind => (Method::CHANNEL_BIND, true),
        Step::Release => (Method::REFRESH, true),
        Step::Done => bail!("no request after Done"),
    };
    let mut w =
        MessageWriter::new(buf, method, Class::Request, TransactionId(tid)).map_err(small)?;
    match step {
        Step::Probe | Step::Allocate => {
            w.add_requested_transport(PROTOCOL_UDP).map_err(small)?;
            w.add_u32(attr::LIFETIME, 3600).map_err(small)?;
        }
        Step::Permission => w
            .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            .map_err(small)?,
        Step::Bind => {
            w.add_channel_number(CHANNEL).map_err(small)?;
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)
                .map_err(small)?;
        }
        Step::Release => w.add_u32(attr::LIFETIME, 0).map_err(small)?,
        Step::Done => {}
    }
    if authed && !auth.realm.is_empty() {
        w.add_text(attr::USERNAME, &auth.username).map_err(small)?;
        w.add_text(attr::REALM, &auth.realm).map_err(small)?;
        w.add_raw(attr::NONCE, &auth.nonce).map_err(small)?;
        w.add_message_integrity(&auth.key).map_err(small)?;
    }
    Ok(w.finish())
}

/// A fresh transaction id (xorshift over a per-thread seed; uniqueness, not secrecy).
pub(crate) fn new_tid() -> [u8; 12] {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            crate::payload::monotonic_ns() ^ (u64::from(std::process::id()) << 32) | 1
        );
    }
    let mut out = [0u8; 12];
    STATE.with(|s| {
        for chunk in out.chunks_mut(4) {
            let mut x = s.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.set(x);
            chunk.copy_from_slice(&(x as u32).to_le_bytes()[..chunk.len()]);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_get_distinct_loopback_sources() {
        let srv: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        assert_eq!(client_addr(srv, 0).to_string(), "127.64.0.1:0");
        assert_eq!(client_addr(srv, 255).to_string(), "127.64.1.0:0");
        assert_ne!(client_addr(srv, 1), client_addr(srv, 2));
        assert!(UdpSocket::bind(client_addr(srv, 999)).is_ok());
        let v6: SocketAddr = "[::1]:3478".parse().unwrap();
        assert_eq!(client_addr(v6, 5).to_string(), "[::1]:0");
    }

    #[test]
    fn rest_password_matches_coturn_formula() {
        // echo -n "1700000000:alice" | openssl dgst -sha1 -hmac s3cret -binary | base64
        let p = rest_password("s3cret", "1700000000:alice");
        assert_eq!(p, "TtElzSjT0GdnTQ9xdcRNxx96yQs=");
        assert_ne!(p, rest_password("other", "1700000000:alice"));
    }

    #[test]
    fn send_indication_prefix_parses_with_payload() {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = Allocation {
            sock,
            relayed: "127.0.0.1:1".parse().unwrap(),
            peer: "127.0.0.1:40000".parse().unwrap(),
            auth: Auth::default(),
        };
        let mut pkt = a.data_prefix(DataPath::SendIndication, 100);
        pkt.extend_from_slice(&[7u8; 100]);
        let m = Message::parse(&pkt).unwrap();
        assert_eq!(m.method(), Method::SEND);
        assert_eq!(m.get(attr::DATA).unwrap().value, &[7u8; 100][..]);
        let peer = decode_xor_address(
            m.get(attr::XOR_PEER_ADDRESS).unwrap().value,
            &m.transaction_id(),
        );
        assert_eq!(peer.unwrap(), a.peer);
        let mut cd = a.data_prefix(DataPath::Channel, 100);
        cd.extend_from_slice(&[7u8; 100]);
        let c = tern_stun::ChannelData::parse(&cd).unwrap();
        assert_eq!((c.channel, c.data.len()), (CHANNEL, 100));
    }
}
