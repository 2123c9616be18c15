//! `tern-bench sfu --targets tern,janus` end to end, as CI runs it: two
//! rooms of ten subscribers, 2-second windows, plain RTP and SRTP, both
//! SFUs in one run. It asserts that the run completes, that each target
//! delivered to every subscriber with the loss under the bench's bound
//! (`--max-loss 10`, the bench exits non-zero otherwise), that latency was
//! measured, and with SRTP that sampled datagrams authenticated. Without
//! Janus it is skipped (or fails under `TERN_REQUIRE_INTEROP=1`). No speed
//! is asserted: the figures belong to `tern-bench`, run on a quiet machine.

use std::process::Command;

use tern_tests::env::require_tool;
use tern_tests::relay::tern_binary;

const ROOMS: u64 = 2;
const SUBSCRIBERS: u64 = 10;
const RATE: u64 = 200;
const SECONDS: u64 = 2;

fn run(srtp: bool) -> Option<Vec<serde_json::Value>> {
    let janus = require_tool("janus", "apt-get install -y janus")?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern-bench"));
    cmd.args(["sfu", "--targets", "tern,janus", "--reps", "1", "--json"])
        .args(["--rooms", &ROOMS.to_string()])
        .args(["--subscribers", &SUBSCRIBERS.to_string()])
        .args(["--rate", &RATE.to_string()])
        .args(["--duration", &SECONDS.to_string()])
        .args(["--max-loss", "10", "--payload", "400"])
        .arg("--tern")
        .arg(tern_binary())
        .arg("--janus")
        .arg(janus);
    if srtp {
        cmd.arg("--srtp");
    }
    let out = cmd.output().expect("run tern-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tern-bench sfu failed: {stderr}");
    eprintln!("{stderr}");
    Some(serde_json::from_slice(&out.stdout).expect("JSON reports"))
}

fn check(reports: &[serde_json::Value], srtp: bool) {
    let targets: Vec<&str> = reports
        .iter()
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["tern", "janus"]);
    for r in reports {
        let t = &r["target"];
        assert_eq!(r["sent"], RATE * SECONDS, "{t}");
        assert_eq!(r["expected"], RATE * SECONDS * SUBSCRIBERS, "{t}");
        assert_eq!(r["rooms"], ROOMS);
        assert_eq!(r["srtp"], srtp);
        let received = r["received"].as_u64().unwrap();
        assert!(received > 0, "{t}: {r}");
        assert_eq!(r["silent_subscribers"], 0, "{t}: {r}");
        assert_eq!(r["foreign"], 0, "{t}: {r}");
        assert!(r["latency"]["p50_us"].as_f64().unwrap() > 0.0, "{t}: {r}");
        assert!(r["relay_cpu_seconds"].as_f64().unwrap() >= 0.0);
        assert_eq!(r["srtp_failed"], 0, "{t}: {r}");
        if srtp {
            assert!(r["srtp_verified"].as_u64().unwrap() > 0, "{t}: {r}");
        } else {
            assert_eq!(r["srtp_verified"], 0, "{t}: {r}");
        }
    }
    // tern counts what it sends; Janus has no such counter.
    assert!(
        reports[0]["relay_counted"].as_u64().unwrap() >= reports[0]["received"].as_u64().unwrap()
    );
    assert!(reports[1]["relay_counted"].is_null());
}

#[test]
fn sfu_bench_runs_tern_and_janus_in_one_run_plain_and_srtp() {
    for srtp in [false, true] {
        let Some(reports) = run(srtp) else {
            return;
        };
        check(&reports, srtp);
    }
}
