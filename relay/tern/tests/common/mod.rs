//! Helpers shared by the admin, drain, registry and reload tests: a minimal
//! TURN client (tern-stun), the `tern` binary as a child process, a raw
//! HTTP/1.1 client, and a Prometheus text-format checker.
#![allow(dead_code, unreachable_pub)] // each test file uses its own subset
#![allow(clippy::disallowed_methods)] // clients time out on the clock

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use tern_stun::{attr, Class, Message, MessageWriter, Method, TransactionId};

/// The packet I/O back end in-process relays of the tests run on:
/// `TERN_TEST_IO_BACKEND` (`auto`, `mmsg`, `uring`), else `auto`. CI runs the
/// suite once per back end with it.
pub fn test_io_backend() -> tern::config::IoBackend {
    match std::env::var("TERN_TEST_IO_BACKEND") {
        Ok(name) => name
            .parse()
            .unwrap_or_else(|e| panic!("TERN_TEST_IO_BACKEND={name}: {e}")),
        Err(_) => tern::config::IoBackend::Auto,
    }
}

pub const USER: &str = "alice";
pub const PASSWORD: &str = "wonderland";
pub const REALM: &str = "tern.test";
pub const TOKEN: &str = "test-admin-token-0123456789";
/// Datagrams each way in [`relay_both_ways`].
pub const PACKETS: usize = 100;

/// A TURN client on its own loopback socket.
pub struct Turn {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    pub nonce: Vec<u8>,
    user: String,
    password: String,
    next_tid: u8,
}

/// What a request got back.
#[derive(Debug)]
pub struct Answer {
    pub class: Class,
    pub error: Option<u16>,
    pub relayed: Option<SocketAddr>,
    pub mapped: Option<SocketAddr>,
    pub alternate: Option<SocketAddr>,
    pub nonce: Option<Vec<u8>>,
}

impl Answer {
    /// What a test looks at in a response, on any transport.
    pub fn of(msg: &Message<'_>) -> Answer {
        let tid = msg.transaction_id();
        let xor = |a: u16| {
            msg.get(a)
                .and_then(|a| tern_stun::decode_xor_address(a.value, &tid).ok())
        };
        Answer {
            class: msg.class(),
            error: msg
                .get(attr::ERROR_CODE)
                .and_then(|a| tern_stun::decode_error_code(a.value).ok())
                .map(|(c, _)| c),
            relayed: xor(attr::XOR_RELAYED_ADDRESS),
            mapped: xor(attr::XOR_MAPPED_ADDRESS),
            alternate: msg
                .get(attr::ALTERNATE_SERVER)
                .and_then(|a| tern_stun::decode_address(a.value).ok()),
            nonce: msg.get(attr::NONCE).map(|a| a.value.to_vec()),
        }
    }
}

impl Turn {
    /// A client of the long-term user [`USER`].
    pub fn new(server: SocketAddr) -> Turn {
        Turn::with_credentials(server, USER, PASSWORD)
    }

    /// A client signing with `user` and `password` in [`REALM`].
    pub fn with_credentials(server: SocketAddr, user: &str, password: &str) -> Turn {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        Turn {
            socket,
            server,
            nonce: Vec::new(),
            user: user.to_owned(),
            password: password.to_owned(),
            next_tid: 1,
        }
    }

    /// A client with a TURN REST credential (coturn's use-auth-secret):
    /// user `EXPIRY:NAME`, password base64(HMAC-SHA1(`secret`, user)), valid an hour.
    pub fn with_rest_secret(server: SocketAddr, secret: &str, name: &str) -> Turn {
        let expiry = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let user = format!("{expiry}:{name}");
        let password = tern_turn::auth::rest_password(secret.as_bytes(), &user);
        Turn::with_credentials(server, &user, &password)
    }

    fn request(
        &mut self,
        method: Method,
        signed: bool,
        build: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Answer {
        let mut out = [0u8; 512];
        let credentials = (
            self.user.as_str(),
            self.password.as_str(),
            self.nonce.as_slice(),
        );
        let (len, _) = encode_request(
            &mut out,
            &mut self.next_tid,
            method,
            signed.then_some(credentials),
            build,
        );
        self.socket.send_to(&out[..len], self.server).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = self.socket.recv_from(&mut buf).expect("a STUN response");
        let msg = Message::parse(&buf[..n]).expect("a well-formed response");
        Answer::of(&msg)
    }

    /// Allocate (challenge, then signed): the final answer.
    pub fn allocate(&mut self) -> Answer {
        let challenge = self.request(Method::ALLOCATE, false, |w| {
            w.add_requested_transport(tern_stun::PROTOCOL_UDP).unwrap();
        });
        assert_eq!(challenge.error, Some(401), "{challenge:?}");
        self.nonce = challenge.nonce.expect("NONCE in the 401");
        self.request(Method::ALLOCATE, true, |w| {
            w.add_requested_transport(tern_stun::PROTOCOL_UDP).unwrap();
        })
    }

    pub fn refresh(&mut self, lifetime: u32) -> Answer {
        self.request(Method::REFRESH, true, |w| {
            w.add_u32(attr::LIFETIME, lifetime).unwrap();
        })
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Answer {
        self.request(Method::CHANNEL_BIND, true, |w| {
            w.add_channel_number(channel).unwrap();
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        })
    }

    /// Relay `payload` to the peer over `channel` and read it there.
    pub fn relay_via_channel(&self, channel: u16, peer: &UdpSocket, payload: &[u8]) {
        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        frame.extend_from_slice(payload);
        self.socket.send_to(&frame, self.server).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = peer.recv_from(&mut buf).expect("the peer gets the payload");
        assert_eq!(&buf[..n], payload);
    }

    /// Send `payload` as ChannelData on `channel`, not waiting for anything.
    pub fn send_channel_data(&self, channel: u16, payload: &[u8]) {
        let mut frame = Vec::with_capacity(4 + payload.len());
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        frame.extend_from_slice(payload);
        self.socket.send_to(&frame, self.server).unwrap();
    }

    /// The next ChannelData from the server: its channel and payload.
    pub fn recv_channel_data(&self) -> (u16, Vec<u8>) {
        let mut buf = [0u8; 1500];
        let (n, _) = self
            .socket
            .recv_from(&mut buf)
            .expect("ChannelData from the relay");
        assert!(n >= 4, "ChannelData is at least 4 bytes: {:?}", &buf[..n]);
        let channel = u16::from_be_bytes([buf[0], buf[1]]);
        assert!(
            (0x4000..=0x7FFF).contains(&channel),
            "not ChannelData: {:?}",
            &buf[..n]
        );
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        assert!(4 + len <= n, "truncated ChannelData");
        (channel, buf[4..4 + len].to_vec())
    }
}

/// The `tern` binary as a child process, its stderr (the log) read line by line.
pub struct Daemon {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Daemon {
    /// Start `tern` on a free loopback port with two workers, realm
    /// [`REALM`], user [`USER`], relay ports `ports`, an admin endpoint on a
    /// free port and [`TOKEN`], plus `extra` flags and `env`; return once it
    /// logged "relay started".
    pub fn start(ports: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--relay-ip",
            "127.0.0.1",
            "--realm",
            REALM,
            "--user",
            &format!("{USER}:{PASSWORD}"),
            "--relay-ports",
            ports,
            "--workers",
            "2",
            "--admin",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("TERN_REGISTRY_URL")
        .env("TERN_ADMIN_TOKEN", TOKEN);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut d = Daemon::spawn(cmd);
        let started = d.expect("relay started");
        d.listen = field(&started, "listen=[")
            .parse()
            .unwrap_or_else(|_| panic!("listen in {started}"));
        d.admin = field(&started, "admin=")
            .parse()
            .unwrap_or_else(|_| panic!("admin in {started}"));
        d
    }

    /// Run `cmd` (tern, or a wrapper that execs it) with its stderr read line
    /// by line; returns at once. `listen` and `admin` stay unspecified
    /// (`0.0.0.0:0`) until the caller reads them from the log.
    pub fn spawn(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines,
            seen: Vec::new(),
            listen: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
        }
    }

    /// SIGTERM, then wait (10 s at most) for the exit; panics if it does not come.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.exited_within(Duration::from_secs(10))
            .expect("tern did not stop within 10 s")
    }

    /// The next log line containing `needle`, within 10 s (panics with the log otherwise).
    pub fn expect(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no log line with {needle:?}; saw:\n{}",
            self.seen.join("\n")
        );
    }

    /// A log line containing `needle`, among those already read or the
    /// next ones (10 s, as [`Daemon::expect`]).
    pub fn find(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        self.expect(needle)
    }

    /// Every log line read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    pub fn exited_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value after `key` in a log line, up to the next space, ']' or ','.
pub fn field(line: &str, key: &str) -> String {
    let start = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
    line[start..]
        .split([' ', ']', ','])
        .next()
        .unwrap()
        .to_owned()
}

/// A raw HTTP exchange: the status (0 when the connection closed without an
/// answer), headers and body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Send `raw` and read until the server closes.
pub fn http_raw(addr: SocketAddr, raw: &[u8]) -> HttpAnswer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer (and close) before taking everything we send.
    let _ = s.write_all(raw);
    read_answer(&mut s)
}

pub fn read_answer(s: &mut TcpStream) -> HttpAnswer {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    HttpAnswer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

pub fn get(addr: SocketAddr, path: &str) -> HttpAnswer {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: tern\r\n\r\n").as_bytes(),
    )
}

pub fn post(addr: SocketAddr, path: &str, token: Option<&str>) -> HttpAnswer {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http_raw(
        addr,
        format!("POST {path} HTTP/1.1\r\nHost: tern\r\n{auth}Content-Length: 0\r\n\r\n").as_bytes(),
    )
}

/// Poll `check` every 50 ms for up to `within`.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Samples of a Prometheus text exposition: `name{labels}` → value.
pub type Samples = HashMap<String, f64>;

/// Check the exposition format and return its samples:
/// every sample's family has a `# TYPE` line (before it), `# HELP` and
/// `# TYPE` appear once per family, values parse, histograms have
/// `_bucket` series with monotone counts, a `+Inf` bucket equal to `_count`,
/// and a `_sum`.
pub fn parse_prometheus(text: &str) -> Samples {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut samples = Samples::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(helps.insert(name.to_owned()), "HELP twice for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice for {name}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name {name:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(
                        !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                        "{line}"
                    );
                }
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .unwrap_or_else(|| panic!("no TYPE before {line:?}"));
        assert!(helps.contains(family), "no HELP for {family}");
        if kind == "counter" {
            assert!(value >= 0.0, "negative counter {line}");
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "series twice: {series}"
        );
    }
    // Histograms: group buckets by their labels other than le.
    for (family, kind) in &types {
        if kind != "histogram" {
            continue;
        }
        let mut groups: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        for (series, value) in &samples {
            let Some(labels) = series.strip_prefix(&format!("{family}_bucket")) else {
                continue;
            };
            let inner = labels.trim_start_matches('{').trim_end_matches('}');
            let mut rest = Vec::new();
            let mut le = None;
            for pair in inner.split(',') {
                match pair.strip_prefix("le=") {
                    Some(v) => {
                        let v = v.trim_matches('"');
                        le = Some(if v == "+Inf" {
                            f64::INFINITY
                        } else {
                            v.parse::<f64>().expect("le is a number")
                        });
                    }
                    None => rest.push(pair),
                }
            }
            groups
                .entry(rest.join(","))
                .or_default()
                .push((le.expect("a bucket has le"), *value));
        }
        assert!(!groups.is_empty(), "histogram {family} has no buckets");
        for (labels, mut buckets) in groups {
            buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            for pair in buckets.windows(2) {
                assert!(
                    pair[0].1 <= pair[1].1,
                    "{family}{{{labels}}} buckets not monotone"
                );
            }
            let inf = buckets.last().unwrap();
            assert!(inf.0.is_infinite(), "{family}{{{labels}}} lacks +Inf");
            let braces = |s: &str| {
                if labels.is_empty() {
                    format!("{family}_{s}")
                } else {
                    format!("{family}_{s}{{{labels}}}")
                }
            };
            let count = samples
                .get(&braces("count"))
                .unwrap_or_else(|| panic!("no {}", braces("count")));
            assert_eq!(inf.1, *count, "{family}{{{labels}}}: +Inf != _count");
            assert!(samples.contains_key(&braces("sum")), "no {}", braces("sum"));
        }
    }
    samples
}

/// [`PACKETS`] datagrams client → peer over the channel, then peer → client;
/// every one must arrive, intact.
pub fn relay_both_ways(
    client: &Turn,
    channel: u16,
    peer: &UdpSocket,
    relayed: SocketAddr,
    round: &str,
) {
    let sent: std::collections::BTreeSet<Vec<u8>> = (0..PACKETS)
        .map(|i| format!("{round} to peer {i:03}").into_bytes())
        .collect();
    for p in &sent {
        client.send_channel_data(channel, p);
    }
    let mut got = std::collections::BTreeSet::new();
    let mut buf = [0u8; 1500];
    for _ in 0..PACKETS {
        let (n, from) = peer
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{round}: peer got {} of {PACKETS}: {e}", got.len()));
        assert_eq!(from, relayed, "{round}: from the relayed address");
        got.insert(buf[..n].to_vec());
    }
    assert_eq!(got, sent, "{round}: client → peer");

    let sent: std::collections::BTreeSet<Vec<u8>> = (0..PACKETS)
        .map(|i| format!("{round} to client {i:03}").into_bytes())
        .collect();
    for p in &sent {
        peer.send_to(p, relayed).unwrap();
    }
    let mut got = std::collections::BTreeSet::new();
    for _ in 0..PACKETS {
        let (got_channel, payload) = client.recv_channel_data();
        assert_eq!(got_channel, channel, "{round}");
        got.insert(payload);
    }
    assert_eq!(got, sent, "{round}: peer → client");
}

/// Encode a request into `out` with the next transaction id from `next_tid`
/// (all 12 bytes that value), built by `build`, and — with `signed` as
/// (user, password, nonce) — USERNAME, REALM, NONCE, MESSAGE-INTEGRITY and
/// FINGERPRINT after it. Returns its length and transaction id. Shared by
/// the UDP, stream and DTLS test clients.
pub fn encode_request(
    out: &mut [u8],
    next_tid: &mut u8,
    method: Method,
    signed: Option<(&str, &str, &[u8])>,
    build: impl FnOnce(&mut MessageWriter<'_>),
) -> (usize, TransactionId) {
    let tid = TransactionId([*next_tid; 12]);
    *next_tid = next_tid.wrapping_add(1);
    let mut w = MessageWriter::new(out, method, Class::Request, tid).unwrap();
    build(&mut w);
    if let Some((user, password, nonce)) = signed {
        let key = tern_stun::long_term_key_md5(user, REALM, password);
        w.add_raw(attr::USERNAME, user.as_bytes()).unwrap();
        w.add_raw(attr::REALM, REALM.as_bytes()).unwrap();
        w.add_raw(attr::NONCE, nonce).unwrap();
        w.add_message_integrity(&key).unwrap();
        w.add_fingerprint().unwrap();
    }
    (w.finish(), tid)
}
