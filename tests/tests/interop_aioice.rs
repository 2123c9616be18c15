//! Python `aioice` (an ICE stack this project did not write) gathers relay candidates from
//! tern and two ICE agents talk through it: `tests/interop/aioice_relay.py`, one agent
//! restricted to its relay candidate. The script's exit status says whether every message
//! arrived; tern's counters must show the relayed packets.
#![allow(clippy::disallowed_methods)] // tests wait on the wall clock

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tern_tests::creds::rest_credentials_valid_for;
use tern_tests::env::require_python_module;
use tern_tests::process::{run_with_timeout, scratch_dir};
use tern_tests::relay::{TestRelay, PASSWORD, SECRET, USER};

const COUNT: u64 = 20;

#[test]
fn aioice_agents_connect_and_exchange_data_through_the_relay() {
    let Some(python) = require_python_module("aioice", "python3 -m pip install aioice") else {
        return;
    };
    let relay = TestRelay::start();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/aioice_relay.py");
    let (rest_user, rest_password) =
        rest_credentials_valid_for(SECRET, "aioice", Duration::from_secs(600));
    let dir = scratch_dir("aioice");
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .args(["--server", &relay.v4().to_string()])
        .args([
            "--relay-username",
            &rest_user,
            "--relay-password",
            &rest_password,
        ])
        .args(["--other-username", USER, "--other-password", PASSWORD])
        .args(["--count", &COUNT.to_string(), "--timeout", "40"]);
    let (status, log) = run_with_timeout(&mut cmd, "aioice_relay", &dir, Duration::from_secs(60))
        .expect("run python3 aioice_relay.py");
    let status = status.unwrap_or_else(|| panic!("aioice_relay.py ran past 60 s:\n{log}"));
    assert!(
        status.success(),
        "aioice_relay.py exit status {status}:\n{log}"
    );
    assert!(log.contains("\"ok\": true"), "script output:\n{log}");

    let s = relay.turn_stats();
    assert!(s.allocations_created >= 2, "both agents allocated: {s:?}");
    assert!(s.permissions_created >= 1, "permissions: {s:?}");
    // Every application message leaves or reaches the relay-only agent through tern, on top
    // of the ICE connectivity checks.
    assert!(
        s.packets_to_peer >= COUNT,
        "packets_to_peer {} < {COUNT}: {s:?}",
        s.packets_to_peer
    );
    assert!(
        s.packets_to_client >= COUNT,
        "packets_to_client {} < {COUNT}: {s:?}",
        s.packets_to_client
    );
}
