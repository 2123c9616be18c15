//! The load registry: the `/load` document published to Redis so that a
//! routing service can pick a relay without polling each one.
//!
//! Off unless `registry-url` is set. Then a thread of its own (`tern-registry`,
//! never a worker, and not the collector either, so a slow Redis cannot delay
//! the watchdog) writes the document to `turn:node:{region}:{node}` with
//! `SET key value EX ttl` every `registry-interval` seconds, at once on every
//! lifecycle change (so `"draining"` shows without waiting), and deletes the
//! key (`DEL`) when the relay stops cleanly. A node that dies without
//! stopping disappears when the TTL runs out.
//!
//! The Redis client is a minimal RESP2 one on a blocking [`TcpStream`] with
//! one-second connect, read and write timeouts: [`Resp`] speaks `AUTH`,
//! `SELECT`, `SET ... EX`, `GET`, `TTL` and `DEL`. Failures drop the
//! connection; the next attempt waits 1 s, then 2, 4... up to 30 s, and they
//! are logged at warn at most once a minute.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver};

use crate::side::Side;

/// Connect, read and write timeout of every Redis exchange.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// The first wait after a failed publish; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between attempts while Redis is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Failures are logged at warn at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// The longest reply line or bulk string accepted from the server.
const MAX_REPLY: usize = 16 * 1024 * 1024;
/// The longest array and the deepest nesting accepted from the server.
const MAX_ARRAY: usize = 1024 * 1024;
const MAX_DEPTH: usize = 8;
/// Redis's port when the URL names none.
pub const DEFAULT_PORT: u16 = 6379;

/// Where the registry lives: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`.
///
/// `Display` and `Debug` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryUrl {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: u32,
}

impl RegistryUrl {
    /// Parse a `redis://` URL strictly: no other scheme, no query or
    /// fragment, a port in 1-65535, a decimal database number, and userinfo
    /// percent-decoded. Errors never repeat the userinfo.
    pub fn parse(s: &str) -> Result<RegistryUrl, String> {
        const FORM: &str = "expected redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]";
        let Some((scheme, rest)) = s.split_once("://") else {
            return Err(FORM.to_owned());
        };
        if scheme.eq_ignore_ascii_case("rediss") {
            return Err("TLS (rediss://) is not supported; use redis:// on a trusted network or a local TLS tunnel".to_owned());
        }
        if !scheme.eq_ignore_ascii_case("redis") {
            return Err(format!(
                "scheme {scheme:?} is not supported; {FORM}",
                scheme = scheme.get(..16).unwrap_or(scheme)
            ));
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => ("", Some(info)),
                };
                let user = percent_decode(user).map_err(|e| format!("user name: {e}"))?;
                let password = match password {
                    Some(p) => percent_decode(p).map_err(|e| format!("password: {e}"))?,
                    None => String::new(),
                };
                if password.is_empty() {
                    return Err(
                        "empty password in the URL; omit USER:PASSWORD@ for none".to_owned()
                    );
                }
                ((!user.is_empty()).then_some(user), Some(password))
            }
        };
        let (host, port) = split_host_port(hostport)?;
        let db = match tail {
            "" | "/" => 0,
            t if t.starts_with('?') || t.starts_with('#') => {
                return Err("query strings and fragments are not supported".to_owned())
            }
            t => {
                let db = &t[1..];
                if db.contains(['?', '#']) {
                    return Err("query strings and fragments are not supported".to_owned());
                }
                if db.is_empty() || db.len() > 10 || !db.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!(
                        "database {db:?} is not a number (the path is /DB, e.g. /0)"
                    ));
                }
                db.parse()
                    .map_err(|_| format!("database {db:?} is out of range"))?
            }
        };
        Ok(RegistryUrl {
            host,
            port,
            username,
            password,
            db,
        })
    }

    /// The host name or IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The database `SELECT`ed after connecting.
    pub fn db(&self) -> u32 {
        self.db
    }

    /// Whether the URL carries a password (sent with `AUTH`).
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }
}

fn split_host_port(hostport: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or("unclosed '[' in the host (IPv6 goes in brackets, e.g. [::1]:6379)")?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("host [{v6}] is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected {p:?} after the host"))?,
            ),
        };
        (v6.to_owned(), port)
    } else if hostport.matches(':').count() > 1 {
        return Err("an IPv6 host goes in brackets, e.g. redis://[::1]:6379/0".to_owned());
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (hostport.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    let valid_name = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !valid_name && host.parse::<IpAddr>().is_err() {
        return Err(format!("host {host:?} is not a host name or IP address"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("port {p:?} is not a port (1-65535)")),
            Ok(n) => n,
        },
    };
    Ok((host, port))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("a '%' not followed by two hex digits")?;
                out.push(hex);
                i += 3;
            }
            b'/' | b'?' | b'#' | b'@' | b'[' | b']' => {
                return Err("reserved characters (/ ? # @ [ ]) must be percent-encoded".to_owned())
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded".to_owned())
}

impl FromStr for RegistryUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        RegistryUrl::parse(s)
    }
}

impl fmt::Display for RegistryUrl {
    /// The URL with the password replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("redis://")?;
        match (&self.username, &self.password) {
            (Some(u), _) => write!(f, "{u}:***@")?,
            (None, Some(_)) => f.write_str(":***@")?,
            (None, None) => {}
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        write!(f, ":{}/{}", self.port, self.db)
    }
}

impl fmt::Debug for RegistryUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RegistryUrl({self})")
    }
}

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// `+OK` and the like.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$...`; `None` for the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `*...`; `None` for the null array.
    Array(Option<Vec<Reply>>),
}

/// Why a Redis exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RespError {
    /// Connecting, reading or writing failed (including timeouts and the
    /// server closing the connection).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server's bytes are not RESP2, or not the reply expected.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server answered with an error reply.
    #[error("server: {0}")]
    Server(String),
}

/// A blocking RESP2 connection.
#[derive(Debug)]
pub struct Resp {
    stream: BufReader<TcpStream>,
}

impl Resp {
    /// Connect (each resolved address in turn, `timeout` each), set read and
    /// write timeouts, then `AUTH` when the URL has a password and `SELECT`
    /// when its database is not 0.
    pub fn connect(url: &RegistryUrl, timeout: Duration) -> Result<Resp, RespError> {
        let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port).to_socket_addrs()?.collect();
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} resolves to no address", url.host),
        );
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(timeout))?;
                    stream.set_write_timeout(Some(timeout))?;
                    let _ = stream.set_nodelay(true);
                    let mut resp = Resp {
                        stream: BufReader::new(stream),
                    };
                    if let Some(password) = &url.password {
                        let reply = match &url.username {
                            Some(user) => {
                                resp.command(&[b"AUTH", user.as_bytes(), password.as_bytes()])?
                            }
                            None => resp.command(&[b"AUTH", password.as_bytes()])?,
                        };
                        expect_ok("AUTH", reply)?;
                    }
                    if url.db != 0 {
                        let db = url.db.to_string();
                        expect_ok("SELECT", resp.command(&[b"SELECT", db.as_bytes()])?)?;
                    }
                    return Ok(resp);
                }
                Err(e) => last = e,
            }
        }
        Err(RespError::Io(last))
    }

    /// Send one command and read its reply. An error reply is returned as
    /// [`Reply::Error`], not as an `Err`.
    pub fn command(&mut self, args: &[&[u8]]) -> Result<Reply, RespError> {
        let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.get_mut().write_all(&out)?;
        self.read_reply(0)
    }

    /// `SET key value EX seconds`.
    pub fn set_ex(&mut self, key: &str, value: &[u8], seconds: u64) -> Result<(), RespError> {
        let ttl = seconds.to_string();
        let reply = self.command(&[b"SET", key.as_bytes(), value, b"EX", ttl.as_bytes()])?;
        expect_ok("SET", reply)
    }

    /// `GET key`: `None` when the key does not exist.
    pub fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, RespError> {
        match self.command(&[b"GET", key.as_bytes()])? {
            Reply::Bulk(v) => Ok(v),
            other => Err(unexpected("GET", other)),
        }
    }

    /// `TTL key`: seconds left, -1 without expiry, -2 when the key does not exist.
    pub fn ttl(&mut self, key: &str) -> Result<i64, RespError> {
        match self.command(&[b"TTL", key.as_bytes()])? {
            Reply::Integer(n) => Ok(n),
            other => Err(unexpected("TTL", other)),
        }
    }

    /// `DEL key`: how many keys were removed (0 or 1).
    pub fn del(&mut self, key: &str) -> Result<i64, RespError> {
        match self.command(&[b"DEL", key.as_bytes()])? {
            Reply::Integer(n) => Ok(n),
            other => Err(unexpected("DEL", other)),
        }
    }

    fn read_line(&mut self) -> Result<Vec<u8>, RespError> {
        let mut line = Vec::new();
        let limit = MAX_REPLY as u64 + 2;
        (&mut self.stream)
            .take(limit)
            .read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(RespError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        if !line.ends_with(b"\r\n") {
            return Err(RespError::Protocol(
                "a reply line without CRLF, or too long".to_owned(),
            ));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn read_reply(&mut self, depth: usize) -> Result<Reply, RespError> {
        let line = self.read_line()?;
        let Some((&kind, rest)) = line.split_first() else {
            return Err(RespError::Protocol("an empty reply line".to_owned()));
        };
        let text = || String::from_utf8_lossy(rest).into_owned();
        let number = || -> Result<i64, RespError> {
            std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| RespError::Protocol(format!("{:?} is not a number", text())))
        };
        match kind {
            b'+' => Ok(Reply::Simple(text())),
            b'-' => Ok(Reply::Error(text())),
            b':' => Ok(Reply::Integer(number()?)),
            b'$' => {
                let len = number()?;
                if len == -1 {
                    return Ok(Reply::Bulk(None));
                }
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= MAX_REPLY)
                    .ok_or_else(|| RespError::Protocol(format!("bulk length {len}")))?;
                let mut buf = vec![0u8; len + 2];
                self.stream.read_exact(&mut buf)?;
                if !buf.ends_with(b"\r\n") {
                    return Err(RespError::Protocol(
                        "bulk string not ended by CRLF".to_owned(),
                    ));
                }
                buf.truncate(len);
                Ok(Reply::Bulk(Some(buf)))
            }
            b'*' => {
                let len = number()?;
                if len == -1 {
                    return Ok(Reply::Array(None));
                }
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= MAX_ARRAY)
                    .ok_or_else(|| RespError::Protocol(format!("array length {len}")))?;
                if depth >= MAX_DEPTH {
                    return Err(RespError::Protocol("arrays nested too deep".to_owned()));
                }
                let mut items = Vec::with_capacity(len.min(64));
                for _ in 0..len {
                    items.push(self.read_reply(depth + 1)?);
                }
                Ok(Reply::Array(Some(items)))
            }
            other => Err(RespError::Protocol(format!(
                "unknown reply type {:?}",
                char::from(other)
            ))),
        }
    }
}

fn expect_ok(command: &str, reply: Reply) -> Result<(), RespError> {
    match reply {
        Reply::Simple(s) if s == "OK" => Ok(()),
        other => Err(unexpected(command, other)),
    }
}

fn unexpected(command: &str, reply: Reply) -> RespError {
    match reply {
        Reply::Error(e) => RespError::Server(format!("{command}: {e}")),
        other => RespError::Protocol(format!("{command}: unexpected reply {other:?}")),
    }
}

/// What the registry thread needs, worked out from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registry {
    /// Where Redis is.
    pub url: RegistryUrl,
    /// `turn:node:{region}:{node}`.
    pub key: String,
    /// Between two publications.
    pub interval: Duration,
    /// The `EX` of each `SET`.
    pub ttl: Duration,
}

/// Rate-limits failure logs: warn at most once per [`WARN_EVERY`].
struct Complaints {
    last_warn: Option<Instant>,
    since_warn: u64,
    failing: u64,
}

impl Complaints {
    fn failed(&mut self, what: &str, key: &str, error: &RespError, retry: Duration) {
        self.failing += 1;
        let now = Instant::now();
        let due = match self.last_warn {
            None => true,
            Some(t) => now.duration_since(t) >= WARN_EVERY,
        };
        if due {
            tracing::warn!(
                key,
                error = %error,
                failures_since_last_warning = self.since_warn,
                retry_in_s = retry.as_secs(),
                "registry: {what} failed (warned at most once a minute)"
            );
            self.last_warn = Some(now);
            self.since_warn = 0;
        } else {
            self.since_warn += 1;
            tracing::debug!(key, error = %error, "registry: {what} failed");
        }
    }

    fn succeeded(&mut self, key: &str) {
        if self.failing > 0 {
            tracing::info!(key, failures = self.failing, "registry: publishing again");
            self.failing = 0;
            self.since_warn = 0;
        }
    }
}

/// The registry thread: publish every `interval`, at once when `wake`
/// fires (a lifecycle change), and delete the key when `stop` is dropped.
pub(crate) fn run(side: Arc<Side>, registry: Registry, wake: Receiver<()>, stop: Receiver<()>) {
    tracing::info!(
        url = %registry.url,
        key = %registry.key,
        interval_s = registry.interval.as_secs(),
        ttl_s = registry.ttl.as_secs(),
        "registry: publishing /load"
    );
    let key = registry.key.as_str();
    let mut conn: Option<Resp> = None;
    let mut complaints = Complaints {
        last_warn: None,
        since_warn: 0,
        failing: 0,
    };
    let mut backoff = FIRST_BACKOFF;
    let mut next = Instant::now();
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        channel::select! {
            recv(stop) -> _ => break,
            recv(wake) -> w => {
                if w.is_ok() && complaints.failing == 0 {
                    // A lifecycle change: publish now (unless backing off).
                    next = Instant::now();
                }
            },
            default(wait) => {}
        }
        if Instant::now() < next {
            continue;
        }
        let document = side.render_load();
        let result = publish(&mut conn, &registry, document.as_bytes());
        let now = Instant::now();
        match result {
            Ok(()) => {
                side.registry_ok.fetch_add(1, Ordering::Relaxed);
                complaints.succeeded(key);
                backoff = FIRST_BACKOFF;
                next = now + registry.interval;
            }
            Err(e) => {
                side.registry_errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
                complaints.failed("publish", key, &e, backoff);
                next = now + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    // Stopping cleanly: take the entry out now rather than at TTL.
    let deleted = match conn.take() {
        Some(mut c) => c
            .del(key)
            .or_else(|_| reconnect_and_del(&registry.url, key)),
        None => reconnect_and_del(&registry.url, key),
    };
    match deleted {
        Ok(_) => tracing::info!(key, "registry: entry deleted"),
        Err(e) => tracing::warn!(
            key,
            error = %e,
            ttl_s = registry.ttl.as_secs(),
            "registry: cannot delete the entry; it expires by its TTL"
        ),
    }
}

fn publish(conn: &mut Option<Resp>, registry: &Registry, document: &[u8]) -> Result<(), RespError> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(Resp::connect(&registry.url, IO_TIMEOUT)?),
    };
    c.set_ex(&registry.key, document, registry.ttl.as_secs())
}

fn reconnect_and_del(url: &RegistryUrl, key: &str) -> Result<i64, RespError> {
    Resp::connect(url, IO_TIMEOUT)?.del(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls_parse_strictly() {
        let u = RegistryUrl::parse("redis://127.0.0.1:6379/0").unwrap();
        assert_eq!((u.host(), u.port(), u.db()), ("127.0.0.1", 6379, 0));
        assert!(!u.has_password());
        let u = RegistryUrl::parse("redis://:p%40ss@cache.internal:7000/3").unwrap();
        assert_eq!((u.host(), u.port(), u.db()), ("cache.internal", 7000, 3));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!(u.username, None);
        assert_eq!(u.to_string(), "redis://:***@cache.internal:7000/3");
        let u = RegistryUrl::parse("redis://tern:pw@[::1]").unwrap();
        assert_eq!((u.host(), u.port(), u.db()), ("::1", 6379, 0));
        assert_eq!(u.username.as_deref(), Some("tern"));
        assert_eq!(u.to_string(), "redis://tern:***@[::1]:6379/0");
        assert!(!format!("{u:?}").contains("pw"));
        assert_eq!(RegistryUrl::parse("REDIS://h/").unwrap().db(), 0);

        for (bad, fragment) in [
            ("127.0.0.1:6379", "expected redis://"),
            ("http://h:1/0", "not supported"),
            ("rediss://h:1/0", "TLS"),
            ("redis://", "no host"),
            ("redis://:6379/0", "no host"),
            ("redis://h:0/0", "not a port"),
            ("redis://h:70000/0", "not a port"),
            ("redis://h:/0", "not a port"),
            ("redis://h:1/x", "not a number"),
            ("redis://h:1/1/2", "not a number"),
            ("redis://h:1/0?timeout=1", "query"),
            ("redis://h:1?x", "query"),
            ("redis://h:1/0#f", "query"),
            ("redis://[::1:6379/0", "unclosed"),
            ("redis://[nope]:1/0", "not an IPv6"),
            ("redis://h o:1/0", "not a host name"),
            ("redis://::1:6379/0", "brackets"),
            ("redis://:@h:1/0", "empty password"),
            ("redis://:%zz@h:1/0", "password"),
            ("redis://h:1/4294967296", "out of range"),
        ] {
            let err = RegistryUrl::parse(bad).unwrap_err();
            assert!(err.contains(fragment), "{bad}: {err}");
        }
        let err = RegistryUrl::parse("redis://:hunter2@h:99999/0").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    /// A scripted server: check what it receives, answer with canned bytes.
    fn scripted(
        script: Vec<(&'static [u8], &'static [u8])>,
    ) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            for (expect, answer) in script {
                let mut got = vec![0u8; expect.len()];
                s.read_exact(&mut got).unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(expect)
                );
                s.write_all(answer).unwrap();
            }
        });
        (addr, t)
    }

    #[test]
    fn client_authenticates_selects_and_parses_replies() {
        let (addr, server) = scripted(vec![
            (b"*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$2\r\npw\r\n", b"+OK\r\n"),
            (b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n", b"+OK\r\n"),
            (
                b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n{}\r\n$2\r\nEX\r\n$1\r\n9\r\n",
                b"+OK\r\n",
            ),
            (b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"$2\r\n{}\r\n"),
            (b"*2\r\n$3\r\nTTL\r\n$1\r\nk\r\n", b":9\r\n"),
            (b"*2\r\n$3\r\nDEL\r\n$1\r\nk\r\n", b":1\r\n"),
            (b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"$-1\r\n"),
            (b"*1\r\n$4\r\nPING\r\n", b"*2\r\n:1\r\n*-1\r\n"),
            (b"*2\r\n$3\r\nDEL\r\n$1\r\nk\r\n", b"-ERR nope\r\n"),
        ]);
        let url = RegistryUrl::parse(&format!("redis://u:pw@{addr}/2")).unwrap();
        let mut c = Resp::connect(&url, IO_TIMEOUT).unwrap();
        c.set_ex("k", b"{}", 9).unwrap();
        assert_eq!(c.get("k").unwrap(), Some(b"{}".to_vec()));
        assert_eq!(c.ttl("k").unwrap(), 9);
        assert_eq!(c.del("k").unwrap(), 1);
        assert_eq!(c.get("k").unwrap(), None);
        assert_eq!(
            c.command(&[b"PING"]).unwrap(),
            Reply::Array(Some(vec![Reply::Integer(1), Reply::Array(None)]))
        );
        let err = c.del("k").unwrap_err();
        assert!(
            matches!(err, RespError::Server(ref e) if e == "DEL: ERR nope"),
            "{err}"
        );
        server.join().unwrap();
    }

    #[test]
    fn client_rejects_bad_servers_without_panicking() {
        for answer in [
            &b"?what\r\n"[..],
            b"+OK\n",
            b"$999999999999\r\n",
            b"$3\r\nabcde",
            b":x\r\n",
            b"",
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let t = std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer);
            });
            let url = RegistryUrl::parse(&format!("redis://{addr}")).unwrap();
            let mut c = Resp::connect(&url, IO_TIMEOUT).unwrap();
            assert!(c.command(&[b"PING"]).is_err(), "{answer:?}");
            t.join().unwrap();
        }
    }

    #[test]
    fn wrong_password_is_a_server_error() {
        let (addr, server) = scripted(vec![(
            b"*2\r\n$4\r\nAUTH\r\n$1\r\nx\r\n",
            b"-WRONGPASS invalid username-password pair\r\n",
        )]);
        let url = RegistryUrl::parse(&format!("redis://:x@{addr}")).unwrap();
        let err = Resp::connect(&url, IO_TIMEOUT).unwrap_err();
        assert!(
            matches!(err, RespError::Server(ref e) if e.starts_with("AUTH: WRONGPASS")),
            "{err}"
        );
        server.join().unwrap();
    }

    #[test]
    fn nothing_listening_fails_within_the_timeout() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = RegistryUrl::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
        let t0 = Instant::now();
        assert!(matches!(
            Resp::connect(&url, IO_TIMEOUT),
            Err(RespError::Io(_))
        ));
        assert!(t0.elapsed() < 2 * IO_TIMEOUT);
    }
}
