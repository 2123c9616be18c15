//! REST secret rotation on the `tern` binary: rewrite `--config`, send
//! SIGHUP, and the new secret signs while the old one is refused, yet a
//! session made with the old one keeps relaying (both ways, no loss) and
//! refreshing.
#![allow(clippy::disallowed_methods)] // timeouts on a child process need the clock

mod common;
mod ports;
use ports::free_relay_range;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use tern_stun::Class;

const CHANNEL: u16 = 0x4000;

fn config_file(secret: &str) -> String {
    format!("auth-secret = [\"{secret}\"]\nallow-peer = [\"127.0.0.0/8\"]\n")
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("tern.toml")
}

#[test]
fn sighup_rotates_the_rest_secret_without_touching_live_sessions() {
    let path = scratch();
    std::fs::write(&path, config_file("old")).unwrap();
    let mut d = Daemon::start(
        &free_relay_range(100),
        &["--config", path.to_str().unwrap()],
        &[],
    );

    let mut first = Turn::with_rest_secret(d.listen, "old", "first");
    let allocated = first.allocate();
    assert_eq!(allocated.class, Class::Success, "{allocated:?}");
    let relayed = allocated.relayed.expect("XOR-RELAYED-ADDRESS");
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let bound = first.channel_bind(CHANNEL, peer.local_addr().unwrap());
    assert_eq!(bound.class, Class::Success, "{bound:?}");
    relay_both_ways(&first, CHANNEL, &peer, relayed, "before");

    std::fs::write(&path, config_file("new")).unwrap();
    d.signal(Signal::SIGHUP);
    d.expect("reloaded credentials and peer policy");
    let mut attempts = 0;
    assert!(
        eventually(Duration::from_secs(5), || {
            attempts += 1;
            Turn::with_rest_secret(d.listen, "new", &format!("second-{attempts}"))
                .allocate()
                .class
                == Class::Success
        }),
        "a credential signed with the new secret is never accepted"
    );

    let refused = Turn::with_rest_secret(d.listen, "old", "third").allocate();
    assert_eq!(
        refused.error,
        Some(401),
        "old secret after rotation: {refused:?}"
    );

    relay_both_ways(&first, CHANNEL, &peer, relayed, "after");
    let refreshed = first.refresh(600);
    assert_eq!(refreshed.class, Class::Success, "{refreshed:?}");
    let rebound = first.channel_bind(CHANNEL, peer.local_addr().unwrap());
    assert_eq!(
        rebound.class,
        Class::Success,
        "channel refresh: {rebound:?}"
    );
    relay_both_ways(&first, CHANNEL, &peer, relayed, "refreshed");

    d.signal(Signal::SIGTERM);
    d.expect("draining before stopping");
    d.signal(Signal::SIGTERM);
    let status = d.exited_within(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_file(&path);
}
