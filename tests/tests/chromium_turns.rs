//! Headless Chromium reaches a WebRTC peer only through `turns:` on tern (issue 9).
//!
//! Three network namespaces made by the test and deleted after it, pass or fail:
//!
//! ```text
//!  chr-client-PID              chr-relay-PID                      chr-peer-PID
//!  c0 10.213.1.2/30 ──── r0 10.213.1.1/30   r1 10.213.2.1/30 ──── p0 10.213.2.2/30
//!  Chromium, the test's       tern: UDP + TLS listeners on r0,    aiortc, echoing
//!  HTTP server (127.0.0.1),   relayed addresses on r1             the data channel
//!  every UDP packet dropped
//!  (nftables, in and out)
//! ```
//!
//! No namespace has a default route and the relay namespace does not forward, so the
//! only way from the browser to the peer is a TURN allocation on tern, and with UDP
//! blocked in the client namespace the only way to tern is TLS. The test checks that the
//! block works (a STUN Binding over UDP to tern succeeds before the rule and fails after
//! it), then runs Chromium twice on a page it serves (`interop/chromium_turns.html`)
//! with `iceServers: [{urls: 'turns:10.213.1.1:PORT?transport=tcp', ...}]` and
//! `iceTransportPolicy: 'relay'`:
//!
//! 1. with an NSS database that does not trust the test CA: Chromium refuses tern's
//!    certificate (an `icecandidateerror` for the `turns:` URL, no relay candidate, and
//!    tern counts the connection closed with `tls_error`) — so the next step's success
//!    is owed to the certificate check passing, not to there being none;
//! 2. with the test CA trusted in `$HOME/.pki/nssdb`: a data channel to the aiortc peer
//!    (`interop/aiortc_echo.py`, signalling through the test's HTTP server) echoes
//!    [`MESSAGES`] text and binary messages intact; `getStats()` shows the selected pair's
//!    local candidate is `relay` with `relayProtocol` `tls` on tern's relayed address,
//!    the remote one the peer's host address; tern's `/metrics` shows TLS allocations and
//!    relayed packets, none over UDP.
//!
//! How Chromium checks a `turns:` certificate: its TURN client's TCP/TLS sockets are
//! P2P sockets of the network service, opened through the same TLS client socket and
//! certificate verifier as `https:` requests, against the host of the `turns:` URL (here
//! an IP address, so the certificate carries it as an IP subjectAltName). On Linux that
//! verifier trusts the built-in roots and the anchors of the user's NSS database,
//! `$HOME/.pki/nssdb`; the test gives Chromium a scratch `HOME` whose database holds
//! the CA it made (`certutil -A -t C,,`). (Native libwebrtc outside a browser verifies
//! with BoringSSL and its own compiled-in root list instead.)
//!
//! Needs root (namespaces, nftables), `chromium`, `certutil` (libnss3-tools), `nft`
//! and python3 with `aiortc`; otherwise it prints `skipped: ...` (or fails under
//! `TERN_REQUIRE_INTEROP=1`, as in CI).
#![allow(clippy::disallowed_methods)] // tests wait on the wall clock

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tern_tests::creds::rest_credentials_valid_for;
use tern_tests::env::{interop_required, require_python_module, require_tool, which};
use tern_tests::netns::{self, Netns};
use tern_tests::process::{scratch_dir, ChildGuard};
use tern_tests::relay::{io_backend_under_test, tern_binary, REALM, SECRET};
use tern_tests::stun_client::{code, StunClient};

/// Prefix of every namespace this test makes.
const PREFIX: &str = "chr";
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 2);
const RELAY_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 1);
const RELAY_PEER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 213, 2, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 213, 2, 2);
/// Messages the page sends and expects back.
const MESSAGES: u64 = 64;
/// The page's own limits (ms) and the test's for one browser run.
const GATHER_MS: u64 = 10_000;
const OPEN_MS: u64 = 15_000;
const ECHO_MS: u64 = 10_000;
const PAGE_LIMIT: Duration = Duration::from_secs(45);

const NFT_BLOCK_UDP: &str = "table inet chr_block {
  chain out { type filter hook output priority 0; policy accept; meta l4proto udp counter drop; }
  chain in { type filter hook input priority 0; policy accept; meta l4proto udp counter drop; }
}
";

/// The three namespaces and their veths; deleted on drop (declared before anything
/// that runs inside them, so it drops last).
struct Topology {
    client: Netns,
    relay: Netns,
    peer: Netns,
}

impl Topology {
    fn create() -> io::Result<Topology> {
        netns::remove_stale(PREFIX);
        let t = Topology {
            client: Netns::create(PREFIX, "client")?,
            relay: Netns::create(PREFIX, "relay")?,
            peer: Netns::create(PREFIX, "peer")?,
        };
        netns::veth(
            (&t.client, "c0", &format!("{CLIENT}/30")),
            (&t.relay, "r0", &format!("{RELAY_CLIENT_SIDE}/30")),
        )?;
        netns::veth(
            (&t.relay, "r1", &format!("{RELAY_PEER_SIDE}/30")),
            (&t.peer, "p0", &format!("{PEER}/30")),
        )?;
        Ok(t)
    }
}

/// A test CA and a certificate it signed for tern's client-side address.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn make_certs(dir: &Path) -> Certs {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "tern chromium-test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");

    let key = KeyPair::generate().expect("server key");
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name
        .push(DnType::CommonName, RELAY_CLIENT_SIDE.to_string());
    leaf.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(RELAY_CLIENT_SIDE))];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("server certificate");

    let certs = Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&certs.ca, ca_cert.pem()).expect("write ca.pem");
    std::fs::write(&certs.cert, cert.pem() + &ca_cert.pem()).expect("write cert.pem");
    std::fs::write(&certs.key, key.serialize_pem()).expect("write key.pem");
    certs
}

/// A scratch HOME for Chromium with an NSS database in `.pki/nssdb`, trusting `ca` for
/// TLS servers when given.
fn chromium_home(certutil: &Path, home: &Path, ca: Option<&Path>) -> PathBuf {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).expect("create nssdb dir");
    let db_arg = format!("sql:{}", db.display());
    let run = |args: &[&str]| {
        let out = Command::new(certutil)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run certutil");
        assert!(
            out.status.success(),
            "certutil {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["-d", &db_arg, "-N", "--empty-password"]);
    if let Some(ca) = ca {
        let ca = ca.to_str().expect("utf-8 path");
        run(&[
            "-d",
            &db_arg,
            "-A",
            "-t",
            "C,,",
            "-n",
            "tern-test-ca",
            "-i",
            ca,
        ]);
        let listed = run(&["-d", &db_arg, "-L"]);
        assert!(listed.contains("tern-test-ca"), "certutil -L:\n{listed}");
    }
    home.to_path_buf()
}

/// tern in the relay namespace, and the addresses it reported when it started.
struct Tern {
    child: ChildGuard,
    udp: SocketAddr,
    tls: SocketAddr,
    admin: SocketAddr,
}

fn start_tern(t: &Topology, certs: &Certs, dir: &Path) -> Tern {
    let mut cmd = t.relay.command(tern_binary());
    cmd.args(["--listen", &format!("{RELAY_CLIENT_SIDE}:0")])
        .args(["--listen-tls", &format!("{RELAY_CLIENT_SIDE}:0")])
        .arg("--tls-cert")
        .arg(&certs.cert)
        .arg("--tls-key")
        .arg(&certs.key)
        .args(["--relay-ip", &RELAY_PEER_SIDE.to_string()])
        .args(["--relay-ports", "49152-49351"])
        .args(["--realm", REALM, "--auth-secret", SECRET])
        .args(["--allow-peer", &format!("{PEER}/32")])
        .args(["--workers", "2", "--admin", "127.0.0.1:0"])
        .args(["--io-backend", &io_backend_under_test().to_string()])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("TERN_REGISTRY_URL");
    let mut child = ChildGuard::spawn(&mut cmd, "tern", dir).expect("spawn tern");
    let deadline = Instant::now() + Duration::from_secs(20);
    let line = loop {
        if let Some(l) = child
            .log()
            .lines()
            .find(|l| l.contains("relay started"))
            .map(str::to_owned)
        {
            break l;
        }
        if let Some(status) = child.try_wait() {
            panic!("tern exited with {status}: {}", child.describe());
        }
        assert!(
            Instant::now() < deadline,
            "tern did not start within 20 s: {}",
            child.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let addr = |key: &str| -> SocketAddr {
        let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
        let end = rest.find([']', ',', ' ']).unwrap_or(rest.len());
        rest[..end]
            .parse()
            .unwrap_or_else(|_| panic!("{key} in {line}"))
    };
    Tern {
        udp: addr("listen=["),
        tls: addr("listen_tls=["),
        admin: addr("admin="),
        child,
    }
}

/// GET /metrics from inside the relay namespace, as `series → value`.
fn metrics(t: &Topology, admin: SocketAddr) -> HashMap<String, f64> {
    let text = t
        .relay
        .run(|| -> io::Result<String> {
            let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
            )?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .expect("enter relay namespace")
        .expect("GET /metrics");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// /metrics, read again until `done` holds (the side thread folds the workers' counters
/// in every 200 ms) or 5 s have passed; the last reading either way.
fn metrics_when(
    t: &Topology,
    admin: SocketAddr,
    done: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(t, admin);
        if done(&m) || Instant::now() >= deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn metric(m: &HashMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("{series} missing from /metrics"))
}

/// Sum of every sample of `name` whose labels contain all of `labels` (`k="v"` each).
fn metric_sum(m: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    m.iter()
        .filter(|(s, _)| {
            s.strip_prefix(name).is_some_and(|rest| {
                rest.starts_with('{') && labels.iter().all(|l| rest.contains(l))
            })
        })
        .map(|(_, v)| v)
        .sum()
}

/// A STUN Binding over UDP from the client namespace to tern: the mapped address, or
/// the error.
fn udp_binding(t: &Topology, server: SocketAddr) -> Result<SocketAddr, String> {
    t.client
        .run(|| {
            let local = SocketAddr::new(IpAddr::V4(CLIENT), 0);
            let mut c = StunClient::bind(local, server).map_err(|e| e.to_string())?;
            c.rto = Duration::from_millis(300);
            c.attempts = 3;
            let r = c.binding().map_err(|e| format!("{e:?}"))?;
            r.xor_address(code::XOR_MAPPED_ADDRESS)
                .ok_or_else(|| "no XOR-MAPPED-ADDRESS".to_owned())
        })
        .expect("enter client namespace")
}

/// The aiortc peer in the peer namespace; killed on drop.
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    log: PathBuf,
}

impl Peer {
    fn start(t: &Topology, python: &Path, dir: &Path) -> Peer {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/aiortc_echo.py");
        let log = dir.join("aiortc_echo.log");
        let mut child = t
            .peer
            .command(python)
            .arg(&script)
            .args(["--timeout", "60"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create peer log"))
            .spawn()
            .expect("spawn aiortc_echo.py");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Peer {
            child,
            stdin,
            stdout,
            log,
        }
    }

    /// Hands the offer over and returns the answer (one JSON line each way).
    fn answer(&mut self, offer: &Value) -> io::Result<String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("peer stdin closed"))?;
        writeln!(stdin, "{offer}")?;
        stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.is_empty() {
            return Err(io::Error::other("peer ended without an answer"));
        }
        Ok(line)
    }

    /// Closes its stdin (the signal to stop) and returns its last line, parsed.
    fn finish(&mut self) -> Value {
        self.stdin = None;
        let mut last = String::new();
        let mut line = String::new();
        while self.stdout.read_line(&mut line).unwrap_or(0) > 0 {
            last = std::mem::take(&mut line);
        }
        let _status = self.child.wait();
        serde_json::from_str(&last)
            .unwrap_or_else(|_| panic!("peer's last line {last:?}; log:\n{}", self.log_text()))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ignored = self.child.kill();
            let _reaped = self.child.wait();
        }
    }
}

/// What the page reports, collected by the HTTP server.
#[derive(Default)]
struct PageState {
    config: Value,
    log: Vec<String>,
    peer: Option<Peer>,
}

/// The page's HTTP server, listening on 127.0.0.1 inside the client namespace; each
/// connection is served on its own thread and closed after one request.
struct PageServer {
    addr: SocketAddr,
    state: Arc<Mutex<PageState>>,
    results: mpsc::Receiver<Value>,
    stop: Arc<AtomicBool>,
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut s) = self.state.lock() {
            s.peer = None; // killed now, not when the last request thread lets go
        }
    }
}

impl PageServer {
    fn start(t: &Topology) -> PageServer {
        let listener = t
            .client
            .run(|| TcpListener::bind("127.0.0.1:0"))
            .expect("enter client namespace")
            .expect("bind the page server");
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(Mutex::new(PageState::default()));
        let (tx, results) = mpsc::channel();
        let page = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/chromium_turns.html"),
        )
        .expect("read chromium_turns.html");
        let shared = Arc::clone(&state);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (state, tx, page) = (Arc::clone(&shared), tx.clone(), page.clone());
                        std::thread::spawn(move || {
                            let _ignored = serve(stream, &state, &tx, &page);
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        PageServer {
            addr,
            state,
            results,
            stop,
        }
    }

    fn log(&self) -> String {
        self.state
            .lock()
            .map(|s| s.log.join("\n"))
            .unwrap_or_default()
    }
}

fn serve(
    mut stream: TcpStream,
    state: &Mutex<PageState>,
    results: &mpsc::Sender<Value>,
    page: &str,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, reply) = match (method, path) {
        ("GET", "/") => ("200 OK", "text/html", page.to_owned()),
        ("GET", "/config") => {
            let config = state.lock().map(|s| s.config.clone()).unwrap_or_default();
            ("200 OK", "application/json", config.to_string())
        }
        ("POST", "/log") => {
            if let Ok(mut s) = state.lock() {
                s.log.push(body);
            }
            ("200 OK", "application/json", "{}".to_owned())
        }
        ("POST", "/offer") => {
            let answer = serde_json::from_str::<Value>(&body)
                .map_err(io::Error::other)
                .and_then(|offer| {
                    let mut s = state.lock().map_err(|_| io::Error::other("poisoned"))?;
                    let peer = s.peer.as_mut().ok_or_else(|| io::Error::other("no peer"))?;
                    peer.answer(&offer)
                });
            match answer {
                Ok(a) => ("200 OK", "application/json", a),
                Err(e) => {
                    if let Ok(mut s) = state.lock() {
                        s.log.push(format!("test: /offer failed: {e}"));
                    }
                    ("500 Internal Server Error", "text/plain", e.to_string())
                }
            }
        }
        ("POST", "/result") => {
            let v = serde_json::from_str(&body).unwrap_or_else(|_| json!({ "raw": body }));
            let _ignored_if_test_gone = results.send(v);
            ("200 OK", "application/json", "{}".to_owned())
        }
        _ => ("404 Not Found", "text/plain", String::new()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{reply}",
        reply.len()
    )?;
    stream.flush()
}

/// Chromium and its helper processes, one process group of their own (but for its crash
/// handler, which detaches and exits when the browser does).
struct Browser {
    child: Child,
    log: PathBuf,
    profile: PathBuf,
}

impl Browser {
    fn start(
        t: &Topology,
        chromium: &Path,
        home: &Path,
        url: &str,
        dir: &Path,
        name: &str,
    ) -> Browser {
        let profile = dir.join(format!("{name}-profile"));
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("create chromium log");
        let err = out.try_clone().expect("clone log handle");
        let child = t
            .client
            .command(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .env("HOME", home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_CACHE_HOME")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("spawn chromium");
        Browser {
            child,
            log,
            profile,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Browser {
    /// SIGTERM to the browser (it closes its helpers), at most 5 s for it to exit, then
    /// SIGKILL to whatever is left of its process group; the profile directory goes.
    fn drop(&mut self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"));
        let _ignored_if_gone = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ignored_if_gone = killpg(pid, Signal::SIGKILL);
        let _reaped = self.child.wait();
        // ~5 MB of profile nobody reads; the browser's log stays.
        let _best_effort = std::fs::remove_dir_all(&self.profile);
    }
}

/// Loads the page in a fresh Chromium with `config` and returns what it reported.
fn run_page(
    t: &Topology,
    chromium: &Path,
    home: &Path,
    server: &PageServer,
    config: Value,
    dir: &Path,
    name: &str,
) -> Value {
    if let Ok(mut s) = server.state.lock() {
        s.config = config;
        s.log.clear();
    }
    let url = format!("http://{}/", server.addr);
    let browser = Browser::start(t, chromium, home, &url, dir, name);
    match server.results.recv_timeout(PAGE_LIMIT) {
        Ok(v) => {
            drop(browser);
            v
        }
        Err(_) => panic!(
            "{name}: no result from the page within {PAGE_LIMIT:?}\n--- page log ---\n{}\n--- chromium ---\n{}",
            server.log(),
            browser.log_tail()
        ),
    }
}

/// The `tern_stream_*` samples, for failure messages.
fn stream_series(m: &HashMap<String, f64>) -> String {
    let mut v: Vec<String> = m
        .iter()
        .filter(|(k, _)| k.starts_with("tern_stream"))
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    v.sort();
    v.join("\n")
}

/// The packet count of the first `counter` after `chain` in `nft list` output.
fn counter_after(rules: &str, chain: &str) -> u64 {
    let rest = rules.find(chain).map_or("", |i| &rules[i..]);
    rest.find("counter packets ")
        .and_then(|i| {
            rest[i + "counter packets ".len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn skip_unless_root() -> bool {
    if netns::is_root() {
        return false;
    }
    let line = "needs root (network namespaces, veths, nftables)";
    assert!(
        !interop_required(),
        "TERN_REQUIRE_INTEROP=1 but the test {line}"
    );
    eprintln!("skipped: chromium_turns {line}");
    true
}

#[test]
fn chromium_data_channel_echo_only_through_turns() {
    if skip_unless_root() {
        return;
    }
    let install = "tests/install-deps.sh (apt-get install chromium libnss3-tools nftables)";
    let Some(chromium) = which("chromium")
        .or_else(|| which("chromium-browser"))
        .or_else(|| require_tool("chromium", install))
    else {
        return;
    };
    let Some(certutil) = require_tool("certutil", install) else {
        return;
    };
    if require_tool("nft", install).is_none() {
        return;
    }
    let Some(python) = require_python_module("aiortc", "python3 -m pip install aiortc") else {
        return;
    };
    let started = Instant::now();
    let phase = |what: &str| {
        eprintln!(
            "chromium_turns: {what} at {:.1} s",
            started.elapsed().as_secs_f64()
        );
    };
    let dir = scratch_dir("chromium-turns");
    let certs = make_certs(&dir);
    let untrusted = chromium_home(&certutil, &dir.join("home-untrusted"), None);
    let trusted = chromium_home(&certutil, &dir.join("home-trusted"), Some(&certs.ca));

    phase("certificates and NSS databases made");
    let topo = Topology::create().expect("create the namespaces");
    phase("namespaces made");
    let tern = start_tern(&topo, &certs, &dir);
    phase("tern started");
    let context = |what: &str| format!("{what}\n--- {}", tern.child.describe());

    // UDP reaches tern from the client namespace until the rule drops it.
    let mapped = udp_binding(&topo, tern.udp)
        .unwrap_or_else(|e| panic!("{}", context(&format!("UDP Binding before the block: {e}"))));
    assert_eq!(mapped.ip(), IpAddr::V4(CLIENT));
    topo.client
        .run_with_input("nft", &["-f", "-"], NFT_BLOCK_UDP)
        .expect("nft: block UDP in the client namespace");
    let blocked = udp_binding(&topo, tern.udp);
    assert!(
        blocked.is_err(),
        "a UDP Binding still got through the nftables rule: {blocked:?}"
    );

    let (username, credential) =
        rest_credentials_valid_for(SECRET, "chromium", Duration::from_secs(600));
    let turns_url = format!("turns:{}?transport=tcp", tern.tls);
    let ice_servers = json!([{
        "urls": turns_url,
        "username": username,
        "credential": credential,
    }]);
    let server = PageServer::start(&topo);

    phase("UDP blocked");
    // 1. The test CA is not trusted: Chromium refuses the certificate.
    let refused = run_page(
        &topo,
        &chromium,
        &untrusted,
        &server,
        json!({ "mode": "gather", "iceServers": ice_servers, "gatherMs": 5000 }),
        &dir,
        "chromium-untrusted",
    );
    phase("untrusted run done");
    let page_log = server.log();
    assert_eq!(refused["ok"], true, "{refused}\n{page_log}");
    assert_eq!(
        refused["candidates"].as_array().map(Vec::len),
        Some(0),
        "a candidate without a trusted certificate: {refused}\n{page_log}"
    );
    let errors = refused["errors"].as_array().cloned().unwrap_or_default();
    assert!(
        errors
            .iter()
            .any(|e| e["url"].as_str() == Some(&turns_url) && e["errorCode"] == 701),
        "no icecandidateerror 701 for {turns_url}: {refused}\n{page_log}"
    );
    let tls_errors = |m: &HashMap<String, f64>| {
        metric_sum(
            m,
            "tern_stream_connections_closed_total",
            &["reason=\"tls_error\""],
        )
    };
    let m = metrics_when(&topo, tern.admin, |m| tls_errors(m) >= 1.0);
    assert!(
        tls_errors(&m) >= 1.0,
        "tern counted no TLS failure for the refused certificate:\n{}",
        stream_series(&m)
    );
    assert_eq!(
        metric(
            &m,
            "tern_transport_allocations_created_total{transport=\"tls\"}"
        ),
        0.0
    );

    // 2. The CA is trusted: a data channel to the aiortc peer through turns: only.
    if let Ok(mut s) = server.state.lock() {
        s.peer = Some(Peer::start(&topo, &python, &dir));
    }
    let result = run_page(
        &topo,
        &chromium,
        &trusted,
        &server,
        json!({
            "mode": "echo",
            "iceServers": ice_servers,
            "count": MESSAGES,
            "gatherMs": GATHER_MS,
            "openMs": OPEN_MS,
            "echoMs": ECHO_MS,
        }),
        &dir,
        "chromium-trusted",
    );
    phase("trusted run done");
    let page_log = server.log();
    let mut peer = server
        .state
        .lock()
        .ok()
        .and_then(|mut s| s.peer.take())
        .expect("peer");
    let peer_done = peer.finish();
    let report = format!(
        "{result}\n--- page log ---\n{page_log}\n--- peer ---\n{peer_done}\n{}",
        peer.log_text()
    );
    assert_eq!(result["ok"], true, "{}", context(&report));
    assert_eq!(result["sent"], MESSAGES, "{report}");
    assert_eq!(result["echoed"], MESSAGES, "{report}");
    assert_eq!(result["intact"], MESSAGES, "{report}");
    assert_eq!(
        peer_done["done"]["echoed"]["messages"], MESSAGES,
        "the peer echoed another number: {report}"
    );

    // As aiortc saw it: its nominated pair's far end is tern's relayed address.
    let peer_pair = &peer_done["done"]["pair"];
    if !peer_pair.is_null() {
        assert_eq!(
            peer_pair["remote"][0],
            RELAY_PEER_SIDE.to_string(),
            "{report}"
        );
        assert_eq!(
            peer_pair["remote"][1], result["pair"]["local"]["port"],
            "{report}"
        );
        assert_eq!(peer_pair["remote_type"], "relay", "{report}");
        assert_eq!(peer_pair["local"][0], PEER.to_string(), "{report}");
    }
    let local = &result["pair"]["local"];
    let remote = &result["pair"]["remote"];
    assert_eq!(local["candidateType"], "relay", "{report}");
    assert_eq!(local["relayProtocol"], "tls", "{report}");
    assert_eq!(local["url"].as_str(), Some(turns_url.as_str()), "{report}");
    assert_eq!(local["address"], RELAY_PEER_SIDE.to_string(), "{report}");
    assert_eq!(remote["address"], PEER.to_string(), "{report}");
    assert_eq!(remote["candidateType"], "host", "{report}");
    let locals = result["localCandidates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !locals.is_empty()
            && locals
                .iter()
                .all(|c| c["candidateType"] == "relay" && c["relayProtocol"] == "tls"),
        "a local candidate that is not relay over TLS: {report}"
    );

    let tls_relayed = |m: &HashMap<String, f64>, direction: &str| {
        metric_sum(
            m,
            "tern_transport_packets_relayed_total",
            &["transport=\"tls\"", &format!("direction=\"{direction}\"")],
        )
    };
    let m = metrics_when(&topo, tern.admin, |m| {
        tls_relayed(m, "to_peer") >= MESSAGES as f64
            && tls_relayed(m, "to_client") >= MESSAGES as f64
    });
    let tls_allocs = metric(
        &m,
        "tern_transport_allocations_created_total{transport=\"tls\"}",
    );
    let udp_allocs = metric(
        &m,
        "tern_transport_allocations_created_total{transport=\"udp\"}",
    );
    let (to_peer, to_client) = (tls_relayed(&m, "to_peer"), tls_relayed(&m, "to_client"));
    assert!(tls_allocs >= 1.0, "TLS allocations {tls_allocs}");
    assert_eq!(udp_allocs, 0.0, "UDP allocations");
    assert!(
        to_peer >= MESSAGES as f64 && to_client >= MESSAGES as f64,
        "TLS packets relayed to_peer {to_peer}, to_client {to_client}"
    );
    let accepted = metric(
        &m,
        "tern_stream_connections_accepted_total{transport=\"tls\"}",
    );
    assert!(accepted >= 2.0, "TLS connections accepted {accepted}");

    let rules = topo
        .client
        .output("nft", &["list", "table", "inet", "chr_block"])
        .expect("nft list table");
    let dropped_out = counter_after(&rules, "chain out");
    assert!(
        dropped_out >= 1,
        "the UDP block counted no dropped packet (the probe's at least):\n{rules}"
    );
    eprintln!(
        "chromium turns: {MESSAGES} messages echoed over {}; selected pair {} -> {} \
         (aiortc: {peer_pair}); TLS allocations {tls_allocs}, relayed to_peer {to_peer} \
         to_client {to_client}; UDP packets dropped in the client namespace {dropped_out}; \
         {:.1} s in all",
        local["url"],
        local,
        remote,
        started.elapsed().as_secs_f64()
    );
}
