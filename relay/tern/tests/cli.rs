//! The `tern` binary: `check-config`, `--help`, flag errors, and signals.

// Timeouts on a child process need the clock; the ban is for protocol crates.
#![allow(clippy::disallowed_methods)]

mod common;
mod ports;
use common::Daemon;
use ports::free_relay_range;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;

fn tern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tern"))
}

fn scratch(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const GOOD: &str = r#"
listen = ["127.0.0.1:3478", "[::1]:3478"]
relay-ip = ["127.0.0.1", "::1"]
relay-ports = "50000-50999"
realm = "example.org"
user = ["alice:secret"]
auth-secret = "rest"
"#;

#[test]
fn check_config_accepts_a_good_file() {
    let path = scratch("good.toml", GOOD);
    let out = run(tern().arg("check-config").arg(&path));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(stdout.contains("realm \"example.org\""), "{stdout}");
    assert!(stdout.contains("50000-50999"), "{stdout}");
}

#[test]
fn check_config_rejects_bad_files_naming_the_key() {
    let cases = [
        (
            "ports.toml",
            "realm = \"r\"\nlisten = \"127.0.0.1:1\"\nrelay-ports = \"5000-4000\"\n",
            "relay-ports: \"5000-4000\": low end above high end",
        ),
        (
            "unknown.toml",
            "realm = \"r\"\nlisten = \"127.0.0.1:1\"\nlisten-port = 1\n",
            "listen-port",
        ),
        (
            "wildcard.toml",
            "realm = \"r\"\nlisten = \"0.0.0.0:3478\"\n",
            "relay-ip:",
        ),
        (
            "type.toml",
            "realm = \"r\"\nlisten = \"127.0.0.1:1\"\nworkers = \"two\"\n",
            "workers: expected an integer",
        ),
        (
            "norealm.toml",
            "listen = \"127.0.0.1:1\"\n",
            "realm: must not be empty",
        ),
    ];
    for (name, body, expect) in cases {
        let path = scratch(name, body);
        let out = run(tern().arg("check-config").arg(&path));
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{name} must fail");
        assert!(stderr.contains(expect), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
    }
}

#[test]
fn check_config_on_a_missing_file_fails() {
    let out = run(tern().args(["check-config", "/nonexistent/tern.toml"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/tern.toml"));
}

#[test]
fn help_documents_every_flag() {
    let out = run(tern().arg("--help"));
    assert!(out.status.success());
    let help = text(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--relay-ports",
        "--relay-ip",
        "--realm",
        "--auth-secret",
        "--user",
        "--allow-peer",
        "--deny-peer",
        "--external-ip",
        "--workers",
        "--log-level",
        "--strict-channel-range",
        "--max-allocations",
        "--max-allocations-per-user",
        "--bandwidth-per-allocation",
        "--io-backend",
        "--software",
        "--default-lifetime",
        "--max-lifetime",
        "--nonce-lifetime",
        "--alternate-server",
        "--admin",
        "--admin-token",
        "--drain-timeout",
        "--registry-url",
        "--region",
        "--node",
        "--registry-interval",
        "--registry-ttl",
        "--listen-tcp",
        "--listen-tls",
        "--tls-cert",
        "--tls-key",
        "--max-connections",
        "--max-connections-per-source",
        "--stream-idle-timeout",
        "--tls-handshake-timeout",
        "check-config",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn bad_flag_exits_non_zero_naming_it() {
    let out = run(tern().args(["--relay-ports", "5000-4000"]));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--relay-ports") && stderr.contains("low end above high end"),
        "{stderr}"
    );
    let out = run(tern().args(["--listen", "127.0.0.1:0"]));
    assert!(!out.status.success(), "no realm must be an error");
    assert!(text(&out.stderr).contains("realm"));
}

/// `listen-dtls` parses in every build. A tern built without the `dtls`
/// feature (the default: no OpenSSL needed to build it) refuses it, in
/// `check-config` and at start, saying which feature it lacks; one built
/// with it accepts the file and, at start, tries to load the certificate.
#[test]
fn listen_dtls_needs_the_dtls_feature() {
    const MISSING: &str = "listen-dtls: needs a tern built with --features dtls";
    let dir = std::env::temp_dir().join(format!("tern-cli-dtls-{}", std::process::id()));
    let (cert, key) = (dir.join("absent-cert.pem"), dir.join("absent-key.pem"));
    let file = scratch(
        "dtls.toml",
        &format!(
            "{GOOD}listen-dtls = [\"127.0.0.1:0\"]\ntls-cert = {:?}\ntls-key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    );
    let checked = run(tern().arg("check-config").arg(&file));
    let stderr = text(&checked.stderr);
    let flags = [
        "--listen-dtls",
        "127.0.0.1:0",
        "--realm",
        "example.org",
        "--relay-ip",
        "127.0.0.1",
        "--admin",
        "127.0.0.1:0",
        "--user",
        "alice:secret",
        "--tls-cert",
    ];
    let started = run(tern().args(flags).arg(&cert).arg("--tls-key").arg(&key));
    let log = text(&started.stderr);
    assert!(!started.status.success(), "absent certificate files: {log}");
    if cfg!(feature = "dtls") {
        assert!(checked.status.success(), "{stderr}");
        assert!(text(&checked.stdout).contains("ok"));
        assert!(log.contains("tls-cert/tls-key (DTLS)"), "{log}");
        assert!(!log.contains(MISSING), "{log}");
    } else {
        assert_eq!(checked.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(MISSING), "{stderr}");
        assert!(log.contains(MISSING), "{log}");
        assert!(!log.contains("relay started"), "{log}");
    }
}

/// `tern` with `args`, its log read line by line; killed on drop.
fn daemon(args: &[&str]) -> Daemon {
    let mut cmd = tern();
    cmd.args(args);
    Daemon::spawn(cmd)
}

fn exit_status(d: &mut Daemon) -> std::process::ExitStatus {
    d.exited_within(Duration::from_secs(10))
        .expect("tern did not exit within 10 s")
}

#[test]
fn sigterm_stops_with_exit_zero() {
    let mut d = daemon(&[
        "--listen",
        "127.0.0.1:0",
        "--realm",
        "r",
        "--user",
        "a:b",
        "--relay-ports",
        &free_relay_range(100),
        "--workers",
        "1",
    ]);
    d.expect("relay started");
    d.signal(Signal::SIGTERM);
    assert!(exit_status(&mut d).success());
}

#[test]
fn sighup_reloads_the_file() {
    let path = scratch(
        "reload.toml",
        "listen = \"127.0.0.1:0\"\nrealm = \"r\"\nuser = \"a:b\"\nrelay-ports = \"43100-43199\"\nworkers = 1\n",
    );
    let mut d = daemon(&["--config", path.to_str().unwrap()]);
    d.expect("relay started");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\nrealm = \"r\"\nuser = [\"a:b\", \"c:d\"]\nrelay-ports = \"43100-43199\"\nworkers = 1\n",
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    let line = d.expect("reloaded credentials and peer policy");
    assert!(line.contains("users=2"), "{line}");
    d.signal(Signal::SIGINT);
    assert!(exit_status(&mut d).success());
}

#[test]
fn dev_default_logs_its_credentials() {
    // The development default listens on port 3478; skip where it is taken.
    let free = UdpSocket::bind("127.0.0.1:3478").is_ok() && UdpSocket::bind("[::1]:3478").is_ok();
    if !free {
        eprintln!("port 3478 on loopback is taken; skipping");
        return;
    }
    let mut d = daemon(&["--workers", "1"]);
    let line = d.expect("development default");
    assert!(line.contains("user tern:"), "{line}");
    assert!(line.contains("REST secret"), "{line}");
    d.expect("relay started");
    d.signal(Signal::SIGTERM);
    assert!(exit_status(&mut d).success());
}
