//! Janus (meetecho janus-gateway, 1.1.x) as an SFU target of `tern-bench sfu`.
//!
//! Janus is driven in plain RTP, without WebRTC: its VideoRoom plugin's
//! **remote publishers** (`add_remote_publisher`: Janus opens a plain RTP
//! port and creates a publisher fed by whatever arrives there, SSRC
//! [`PUBLISHER_SSRC`] for the first stream) and **RTP forwarders**
//! (`rtp_forward`: every packet of that publisher is sent to a plain RTP
//! destination, with its own SSRC, SRTP-protected when `srtp_suite` and
//! `srtp_crypto` are given). One forwarder per subscriber is the same
//! fan-out tern's SFU does per consumer.
//!
//! Owns: the generated configuration (a temporary folder with `janus.jcfg`,
//! the HTTP transport on a probed loopback port and the VideoRoom plugin
//! only, by symbolic links to the installed modules), the process (killed
//! by PID when [`Janus`] drops, and with the harness), and its HTTP API
//! client. The session never times out (`session_timeout = 0`), so no
//! keepalives are needed. Must not touch: the packets (see [`crate::sfu`]).

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{bail, Error, Result};

/// The SSRC a remote publisher's first stream (mindex 0) must carry: Janus
/// 1.1 demultiplexes a remote publisher's streams by SSRC, from 1000 in
/// steps of 10 (`REMOTE_PUBLISHER_BASE_SSRC` in `janus_videoroom.c`).
pub const PUBLISHER_SSRC: u32 = 1000;

/// At most this many forwarders per `rtp_forward` request.
const FORWARDERS_PER_REQUEST: usize = 100;

/// Where Debian and a source build put Janus' modules.
const MODULE_DIRS: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/janus",
    "/usr/lib/janus",
    "/usr/local/lib/janus",
];

/// A running Janus with one API session and one VideoRoom handle.
#[derive(Debug)]
pub struct Janus {
    child: Child,
    /// Its PID (for CPU accounting).
    pub pid: u32,
    dir: PathBuf,
    http: SocketAddr,
    session: u64,
    handle: u64,
    transaction: u64,
}

impl Drop for Janus {
    fn drop(&mut self) {
        // Only our own child, by PID.
        let _already_gone = self.child.kill();
        let _reaped = self.child.wait();
        let _scratch = std::fs::remove_dir_all(&self.dir);
    }
}

/// A remote publisher Janus created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemotePublisher {
    /// Its participant id.
    pub id: u64,
    /// The port Janus receives its RTP on.
    pub port: u16,
}

impl Janus {
    /// Start `bin` with a generated configuration (modules from `modules`,
    /// or the first of the usual install folders that has them), wait for
    /// its HTTP API, create a session and attach the VideoRoom plugin.
    pub fn start(bin: &Path, modules: Option<&Path>) -> Result<Janus> {
        let modules = match modules {
            Some(m) => m.to_path_buf(),
            None => MODULE_DIRS
                .iter()
                .map(PathBuf::from)
                .find(|d| d.join("plugins/libjanus_videoroom.so").exists())
                .ok_or_else(|| {
                    Error(format!(
                        "no Janus VideoRoom plugin in {MODULE_DIRS:?} (apt-get install janus, or --janus-modules)"
                    ))
                })?,
        };
        let http = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()?));
        let dir = std::env::temp_dir().join(format!(
            "tern-bench-janus-{}-{}",
            std::process::id(),
            http.port()
        ));
        let child = write_config(&dir, &modules, http.port()).and_then(|()| spawn(bin, &dir));
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _scratch = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut j = Janus {
            pid: child.id(),
            child,
            dir,
            http,
            session: 0,
            handle: 0,
            transaction: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            // The folder goes when `j` drops: say what the log said.
            if let Ok(Some(status)) = j.child.try_wait() {
                bail!(
                    "janus exited at start ({status}); its log ends:\n{}",
                    j.log_tail()
                );
            }
            if http_json(http, "GET", "/janus/info", "").is_ok_and(|(s, _)| s == 200) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "janus did not answer on {http} within 15 s; its log ends:\n{}",
                    j.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let created = j.request("/janus", json!({"janus": "create"}))?;
        j.session = id_of(&created, "session")?;
        let attached = j.request(
            &format!("/janus/{}", j.session),
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
        )?;
        j.handle = id_of(&attached, "handle")?;
        Ok(j)
    }

    /// Create VideoRoom `room` (VP8, not permanent).
    pub fn create_room(&mut self, room: u64) -> Result<()> {
        let data = self.message(json!({
            "request": "create",
            "room": room,
            "videocodec": "vp8",
            "publishers": 1,
            "permanent": false,
        }))?;
        match data["videoroom"].as_str() {
            Some("created") => Ok(()),
            _ => bail!("janus create room {room}: {data}"),
        }
    }

    /// A remote publisher in `room` with one VP8 video stream, receiving
    /// RTP on `port` (and RTCP on `port + 1`).
    pub fn add_remote_publisher(&mut self, room: u64, port: u16) -> Result<RemotePublisher> {
        let data = self.message(json!({
            "request": "add_remote_publisher",
            "room": room,
            "display": "tern-bench",
            "port": port,
            "rtcp_port": port + 1,
            "streams": [{"type": "video", "mindex": 0, "mid": "0", "codec": "vp8"}],
        }))?;
        parse_remote_publisher(&data)
    }

    /// Forward `publisher`'s video to each `(port, ssrc)` on 127.0.0.1,
    /// SRTP AES_CM_128_HMAC_SHA1_80 with `srtp` (base64 of key ‖ salt)
    /// when given; returns how many forwarders Janus created.
    pub fn rtp_forward(
        &mut self,
        room: u64,
        publisher: u64,
        dests: &[(u16, u32)],
        srtp: Option<&str>,
    ) -> Result<usize> {
        let mut made = 0;
        for chunk in dests.chunks(FORWARDERS_PER_REQUEST) {
            let mut body = rtp_forward_body(room, publisher, chunk);
            if let Some(key) = srtp {
                body["srtp_suite"] = json!(80);
                body["srtp_crypto"] = json!(key);
            }
            // add_remote_publisher answers before the publisher's thread
            // has entered it in the room: "No such feed" (428) for a moment.
            let mut tries = 0;
            let data = loop {
                match self.message(body.clone()) {
                    Err(e) if e.0.contains("error 428") && tries < 100 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    r => break r?,
                }
            };
            let n = parse_forwarders(&data)?;
            if n != chunk.len() {
                bail!("janus made {n} of {} forwarders: {data}", chunk.len());
            }
            made += n;
        }
        Ok(made)
    }

    /// The last lines of Janus' log.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("janus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn message(&mut self, body: Value) -> Result<Value> {
        let path = format!("/janus/{}/{}", self.session, self.handle);
        self.request(&path, json!({"janus": "message", "body": body}))
    }

    fn request(&mut self, path: &str, mut msg: Value) -> Result<Value> {
        self.transaction += 1;
        msg["transaction"] = json!(format!("tb{}", self.transaction));
        let (status, text) = http_json(self.http, "POST", path, &msg.to_string())?;
        if status != 200 {
            bail!("janus {path}: HTTP {status}: {text}");
        }
        parse_answer(&text)
    }
}

/// Start `bin` on the configuration in `dir`, its output to `dir/janus.log`,
/// dying with the harness.
fn spawn(bin: &Path, dir: &Path) -> Result<Child> {
    let log = std::fs::File::create(dir.join("janus.log"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-F")
        .arg(dir)
        .arg("-C")
        .arg(dir.join("janus.jcfg"))
        .arg("-L")
        .arg(dir.join("janus.log"))
        .args(["-N", "-o", "-d", "3"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|e| Error(format!("cannot start janus ({}): {e}", bin.display())))
}

/// The useful part of a Janus API answer: `plugindata.data` for a plugin
/// message, `data` otherwise; an error (`"janus": "error"`, or a plugin
/// `error_code`) as [`Error`].
pub fn parse_answer(text: &str) -> Result<Value> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| Error(format!("janus answer {text:?}: {e}")))?;
    match v["janus"].as_str() {
        Some("success") => {}
        Some("error") => bail!(
            "janus error {}: {}",
            v["error"]["code"],
            v["error"]["reason"].as_str().unwrap_or("(no reason)")
        ),
        _ => bail!("unexpected janus answer: {text}"),
    }
    let data = match v.get("plugindata") {
        Some(p) => p["data"].clone(),
        None => v["data"].clone(),
    };
    if let Some(code) = data.get("error_code") {
        bail!(
            "janus videoroom error {code}: {}",
            data["error"].as_str().unwrap_or("(no reason)")
        );
    }
    Ok(data)
}

/// The id of a created session or attached handle.
fn id_of(data: &Value, what: &str) -> Result<u64> {
    data["id"]
        .as_u64()
        .ok_or_else(|| Error(format!("janus {what} answer without an id: {data}")))
}

/// `add_remote_publisher`'s answer.
pub fn parse_remote_publisher(data: &Value) -> Result<RemotePublisher> {
    let id = data["id"].as_u64();
    let port = data["port"].as_u64().and_then(|p| u16::try_from(p).ok());
    match (data["videoroom"].as_str(), id, port) {
        (Some("success"), Some(id), Some(port)) if port > 0 => Ok(RemotePublisher { id, port }),
        _ => bail!("janus add_remote_publisher answer: {data}"),
    }
}

/// How many forwarders an `rtp_forward` answer lists.
pub fn parse_forwarders(data: &Value) -> Result<usize> {
    match (data["videoroom"].as_str(), data["forwarders"].as_array()) {
        (Some("rtp_forward"), Some(f)) => Ok(f.len()),
        _ => bail!("janus rtp_forward answer: {data}"),
    }
}

fn rtp_forward_body(room: u64, publisher: u64, dests: &[(u16, u32)]) -> Value {
    let streams: Vec<Value> = dests
        .iter()
        .map(|&(port, ssrc)| json!({"mid": "0", "port": port, "ssrc": ssrc}))
        .collect();
    json!({
        "request": "rtp_forward",
        "room": room,
        "publisher_id": publisher,
        "host": "127.0.0.1",
        "host_family": "ipv4",
        "streams": streams,
    })
}

/// The configuration folder: `janus.jcfg`, the HTTP transport on
/// 127.0.0.1:`port`, an empty VideoRoom configuration, and module folders
/// holding links to the VideoRoom plugin and the HTTP transport only.
fn write_config(dir: &Path, modules: &Path, port: u16) -> Result<()> {
    for sub in ["plugins", "transports", "events", "loggers"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    for (sub, file) in [
        ("plugins", "libjanus_videoroom.so"),
        ("transports", "libjanus_http.so"),
    ] {
        let src = modules.join(sub).join(file);
        if !src.exists() {
            bail!("{} is missing", src.display());
        }
        let dst = dir.join(sub).join(file);
        if !dst.exists() {
            std::os::unix::fs::symlink(&src, &dst)?;
        }
    }
    let d = dir.display();
    std::fs::write(
        dir.join("janus.jcfg"),
        format!(
            "general: {{\n\tconfigs_folder = \"{d}\"\n\tplugins_folder = \"{d}/plugins\"\n\
             \ttransports_folder = \"{d}/transports\"\n\tevents_folder = \"{d}/events\"\n\
             \tloggers_folder = \"{d}/loggers\"\n\tlog_to_stdout = false\n\tdebug_level = 3\n\
             \tsession_timeout = 0\n\tserver_name = \"tern-bench\"\n}}\n\
             nat: {{\n\tnice_debug = false\n}}\nmedia: {{\n}}\n"
        ),
    )?;
    std::fs::write(
        dir.join("janus.transport.http.jcfg"),
        format!(
            "general: {{\n\tjson = \"plain\"\n\tbase_path = \"/janus\"\n\thttp = true\n\
             \tport = {port}\n\tip = \"127.0.0.1\"\n\thttps = false\n}}\n\
             admin: {{\n\tadmin_http = false\n}}\n"
        ),
    )?;
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")?;
    Ok(())
}

/// One HTTP/1.1 exchange (`Connection: close`), the status and the body.
pub(crate) fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String)> {
    crate::sfu::http_exchange(addr, method, path, &[], body)
}

fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether UDP `port` and `port + 1` are free on every address (Janus binds
/// remote publishers' sockets on the wildcard address).
pub fn pair_free(port: u16) -> bool {
    port < u16::MAX
        && UdpSocket::bind(("0.0.0.0", port)).is_ok()
        && UdpSocket::bind(("0.0.0.0", port + 1)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Answers recorded from Janus 1.1.2 (Debian 12) on this machine.
    const CREATED: &str =
        r#"{"janus": "success", "transaction": "t1", "data": {"id": 8627260226431041}}"#;
    const ROOM: &str = r#"{"janus": "success", "session_id": 8627260226431041, "transaction": "t3", "sender": 1285502657850989, "plugindata": {"plugin": "janus.plugin.videoroom", "data": {"videoroom": "created", "room": 4242, "permanent": false}}}"#;
    const REMOTE: &str = r#"{"janus": "success", "session_id": 8627260226431041, "transaction": "t4", "sender": 1285502657850989, "plugindata": {"plugin": "janus.plugin.videoroom", "data": {"videoroom": "success", "room": 4242, "id": 3800836038321324, "port": 10000, "rtcp_port": 10001}}}"#;
    const FORWARD: &str = r#"{"janus": "success", "session_id": 8627260226431041, "transaction": "t5", "sender": 1285502657850989, "plugindata": {"plugin": "janus.plugin.videoroom", "data": {"publisher_id": 3800836038321324, "forwarders": [{"stream_id": 279178306, "host": "127.0.0.1", "port": 47500, "type": "video", "ssrc": 1234, "srtp": true}, {"stream_id": 3986840783, "host": "127.0.0.1", "port": 47500, "type": "video", "ssrc": 1235, "srtp": true}], "room": 4242, "videoroom": "rtp_forward"}}}"#;
    const NO_ROOM: &str = r#"{"janus": "success", "session_id": 8627260226431041, "transaction": "t6", "sender": 1285502657850989, "plugindata": {"plugin": "janus.plugin.videoroom", "data": {"videoroom": "event", "error_code": 426, "error": "No such room (999)"}}}"#;
    const NO_SESSION: &str = r#"{"janus": "error", "session_id": 123, "transaction": "t7", "error": {"code": 458, "reason": "No such session 123"}}"#;

    #[test]
    fn recorded_answers_parse() {
        assert_eq!(
            id_of(&parse_answer(CREATED).unwrap(), "session").unwrap(),
            8_627_260_226_431_041
        );
        assert_eq!(parse_answer(ROOM).unwrap()["videoroom"], "created");
        assert_eq!(
            parse_remote_publisher(&parse_answer(REMOTE).unwrap()).unwrap(),
            RemotePublisher {
                id: 3_800_836_038_321_324,
                port: 10000
            }
        );
        assert_eq!(
            parse_forwarders(&parse_answer(FORWARD).unwrap()).unwrap(),
            2
        );
    }

    #[test]
    fn errors_say_what_janus_said() {
        let e = parse_answer(NO_ROOM).unwrap_err().0;
        assert!(e.contains("426") && e.contains("No such room (999)"), "{e}");
        let e = parse_answer(NO_SESSION).unwrap_err().0;
        assert!(
            e.contains("458") && e.contains("No such session 123"),
            "{e}"
        );
        assert!(parse_answer("not json").is_err());
        assert!(parse_answer(r#"{"janus": "ack"}"#).is_err());
        // A success that is not the answer asked for is refused too.
        let room = parse_answer(ROOM).unwrap();
        assert!(parse_remote_publisher(&room).is_err());
        assert!(parse_forwarders(&room).is_err());
        assert!(id_of(&room, "session").is_err());
    }

    #[test]
    fn forward_requests_name_every_destination() {
        let body = rtp_forward_body(7, 99, &[(5000, 11), (5002, 12)]);
        assert_eq!(body["request"], "rtp_forward");
        assert_eq!(body["publisher_id"], 99);
        let s = body["streams"].as_array().unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1]["port"], 5002);
        assert_eq!(s[1]["ssrc"], 12);
        assert_eq!(s[0]["mid"], "0");
    }

    #[test]
    fn config_links_only_the_videoroom_and_http() {
        let modules = std::env::temp_dir().join(format!("tb-janus-mod-{}", std::process::id()));
        let dir = std::env::temp_dir().join(format!("tb-janus-cfg-{}", std::process::id()));
        for (sub, f) in [
            ("plugins", "libjanus_videoroom.so"),
            ("plugins", "libjanus_sip.so"),
            ("transports", "libjanus_http.so"),
        ] {
            std::fs::create_dir_all(modules.join(sub)).unwrap();
            std::fs::write(modules.join(sub).join(f), b"").unwrap();
        }
        write_config(&dir, &modules, 18088).unwrap();
        let names = |sub: &str| {
            let mut v: Vec<String> = std::fs::read_dir(dir.join(sub))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names("plugins"), ["libjanus_videoroom.so"]);
        assert_eq!(names("transports"), ["libjanus_http.so"]);
        let http = std::fs::read_to_string(dir.join("janus.transport.http.jcfg")).unwrap();
        assert!(http.contains("port = 18088") && http.contains("ip = \"127.0.0.1\""));
        let main = std::fs::read_to_string(dir.join("janus.jcfg")).unwrap();
        assert!(main.contains("session_timeout = 0"));
        std::fs::remove_file(modules.join("transports/libjanus_http.so")).unwrap();
        let dir2 = dir.with_extension("2");
        assert!(write_config(&dir2, &modules, 1).is_err());
        for d in [&modules, &dir, &dir2] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
