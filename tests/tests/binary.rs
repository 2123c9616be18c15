//! The `tern` binary as an operator runs it: `--help`, `check-config`, and a relay started
//! from flags on probed ports that answers STUN and exits 0 on SIGTERM.
#![allow(clippy::disallowed_methods)] // tests wait on the wall clock

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tern_tests::ports::{free_port_window, free_udp_port, V4};
use tern_tests::process::{run_with_timeout, scratch_dir, ChildGuard};
use tern_tests::relay::{io_backend_under_test, tern_binary, PASSWORD, REALM, USER};
use tern_tests::stun_client::{code, StunClient};

/// Flags whose names are stable (operators' scripts and unit files use them).
const STABLE_FLAGS: &[&str] = &[
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
];

fn run(args: &[&str], name: &str) -> (std::process::ExitStatus, String) {
    let dir = scratch_dir(name);
    let mut cmd = Command::new(tern_binary());
    cmd.args(args);
    let (status, log) =
        run_with_timeout(&mut cmd, name, &dir, Duration::from_secs(30)).expect("run tern");
    let status = status.unwrap_or_else(|| panic!("tern {args:?} still running after 30 s:\n{log}"));
    (status, log)
}

#[test]
fn help_lists_every_stable_flag_and_check_config() {
    let (status, out) = run(&["--help"], "help");
    assert!(status.success(), "tern --help: {status}\n{out}");
    for flag in STABLE_FLAGS {
        assert!(
            out.contains(flag),
            "tern --help does not list {flag}:\n{out}"
        );
    }
    assert!(
        out.contains("check-config"),
        "tern --help does not list check-config:\n{out}"
    );
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_bad_key() {
    let dir = scratch_dir("check-config");
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        r#"
listen = ["127.0.0.1:3478", "[::1]:3478"]
relay-ports = "49152-65535"
relay-ip = ["127.0.0.1", "::1"]
realm = "example.org"
auth-secret = ["s3cret"]
user = ["alice:wonderland"]
allow-peer = ["10.0.0.0/8"]
deny-peer = ["10.1.0.0/16"]
workers = 2
strict-channel-range = true
"#,
    )
    .expect("write good.toml");
    let (status, out) = run(
        &["check-config", good.to_str().expect("utf-8 path")],
        "check-good",
    );
    assert!(
        status.success(),
        "check-config rejected a good file: {status}\n{out}"
    );

    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown-key.toml",
            "listen = [\"127.0.0.1:3478\"]\nrealm = \"r\"\nrelay-portz = \"1-2\"\n",
            "relay-portz",
        ),
        (
            "bad-ports.toml",
            "listen = [\"127.0.0.1:3478\"]\nrealm = \"r\"\nrelay-ports = \"5000-4000\"\n",
            "relay-ports",
        ),
        (
            "bad-workers.toml",
            "listen = [\"127.0.0.1:3478\"]\nrealm = \"r\"\nworkers = \"many\"\n",
            "workers",
        ),
        (
            "bad-cidr.toml",
            "listen = [\"127.0.0.1:3478\"]\nrealm = \"r\"\nallow-peer = [\"10.0.0.0/33\"]\n",
            "allow-peer",
        ),
    ];
    for (file, text, key) in cases {
        let path = dir.join(file);
        std::fs::write(&path, text).expect("write bad file");
        let (status, out) = run(&["check-config", path.to_str().expect("utf-8 path")], file);
        assert!(
            !status.success(),
            "check-config accepted {file}:\n{text}\n{out}"
        );
        assert!(
            out.contains(key),
            "check-config error for {file} does not name `{key}`:\n{out}"
        );
    }
}

#[test]
fn relay_from_flags_answers_binding_and_allocate_and_exits_0_on_sigterm() {
    let dir = scratch_dir("daemon");
    let bin = tern_binary();
    for attempt in 0..5 {
        let port = free_udp_port(V4);
        let (lo, hi) = free_port_window(200, &[V4]);
        let listen = SocketAddr::new(V4, port);
        let mut cmd = Command::new(&bin);
        cmd.args(["--listen", &listen.to_string()])
            .args(["--relay-ports", &format!("{lo}-{hi}")])
            .args(["--relay-ip", "127.0.0.1", "--realm", REALM])
            .args(["--user", &format!("{USER}:{PASSWORD}")])
            .args(["--auth-secret", "binary-test-secret"])
            .args([
                "--allow-peer",
                "127.0.0.0/8",
                "--workers",
                "2",
                "--log-level",
                "info",
            ])
            .args(["--io-backend", &io_backend_under_test().to_string()]);
        let mut tern =
            ChildGuard::spawn(&mut cmd, &format!("tern-{attempt}"), &dir).expect("spawn tern");

        // Wait until it answers, or exits (port lost to someone else: try another).
        let mut client = StunClient::new(listen).expect("client socket");
        client.rto = Duration::from_millis(200);
        client.attempts = 1;
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut answered = None;
        while Instant::now() < deadline && tern.try_wait().is_none() {
            if let Ok(r) = client.binding() {
                answered = Some(r);
                break;
            }
        }
        let Some(r) = answered else {
            if tern.try_wait().is_some() {
                eprintln!("tern exited early (attempt {attempt}): {}", tern.describe());
                continue;
            }
            panic!(
                "tern never answered a Binding request on {listen}: {}",
                tern.describe()
            );
        };
        assert!(r.is_success(), "{r:?}");
        assert_eq!(
            r.xor_address(code::XOR_MAPPED_ADDRESS),
            Some(client.local_addr())
        );

        let mut c = StunClient::with_credentials(listen, USER, PASSWORD).expect("socket");
        let relayed = c.allocate_ok(&[]);
        assert_eq!(relayed.ip(), V4);
        assert!(
            (lo..=hi).contains(&relayed.port()),
            "relayed {relayed} outside {lo}-{hi}"
        );
        let d = c.refresh(0).expect("Refresh answered");
        assert!(d.is_success(), "{d:?}");

        tern.signal(Signal::SIGTERM);
        let status = tern
            .wait_timeout(Duration::from_secs(20))
            .unwrap_or_else(|| {
                panic!("tern still running 20 s after SIGTERM: {}", tern.describe())
            });
        assert_eq!(
            status.code(),
            Some(0),
            "exit status after SIGTERM: {}",
            tern.describe()
        );
        return;
    }
    panic!("tern could not start on a probed port in 5 attempts");
}
