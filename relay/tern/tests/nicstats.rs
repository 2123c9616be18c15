//! The NIC allowance reader against a real driver: a veth pair in a network
//! namespace this test makes and deletes. veth has an `ethtool -S` table
//! (`peer_ifindex`, per-queue XDP counters) but no allowance counters, so the
//! reader must find nothing, say why, and `/metrics` must export no
//! `tern_nic_*` series. (The export of a table that has them is unit-tested
//! in `src/nicstats.rs`: no virtual driver reports them.)
//!
//! Needs root (netns). Without it the tests print `skipped: ...` and pass,
//! unless `TERN_REQUIRE_INTEROP=1`, where they fail.
#![allow(clippy::disallowed_methods)] // timeouts need the clock

mod common;

use std::fs::File;
use std::process::Command;
use std::time::Duration;

use common::{eventually, get, parse_prometheus, Daemon};
use nix::sched::{setns, CloneFlags};
use tern::nicstats::{scan, NicSelection, NicStatsError};

fn root_or_skip() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("TERN_REQUIRE_INTEROP").as_deref() != Ok("1"),
        "TERN_REQUIRE_INTEROP=1, but this test needs root for a network namespace"
    );
    eprintln!("skipped: needs root for a network namespace");
    false
}

/// A network namespace `tpkg-nic-<tag>-<pid>` holding the veth pair
/// `tpkg<tag>a`/`tpkg<tag>b` and a loopback that is up; deleted on drop.
struct Netns {
    name: String,
    veth: (String, String),
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let pid = std::process::id();
        let name = format!("tpkg-nic-{tag}-{pid}");
        let short = format!("tpkg{tag}{}", pid % 10_000);
        let veth = (format!("{short}a"), format!("{short}b"));
        let ns = Netns { name, veth };
        // A namespace left by an earlier run with the same pid would fail `add`.
        if std::path::Path::new("/run/netns").join(&ns.name).exists() {
            ip(&["netns", "del", &ns.name]);
        }
        ip(&["netns", "add", &ns.name]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ip(&[
            "-n", &ns.name, "link", "add", &ns.veth.0, "type", "veth", "peer", "name", &ns.veth.1,
        ]);
        ip(&["-n", &ns.name, "link", "set", &ns.veth.0, "up"]);
        ip(&["-n", &ns.name, "link", "set", &ns.veth.1, "up"]);
        ns
    }

    /// Run `f` on a thread that has entered the namespace (setns is per thread).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = File::open(&path).expect("namespace file");
            setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn veth_has_stats_but_no_allowance_counters() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("r");
    let (a, b) = ns.veth.clone();
    let (listed, auto, named) = ns.run(move || {
        let listed = tern::nicstats::interfaces().unwrap();
        let auto = scan(&NicSelection::Auto).unwrap();
        let named = scan(&NicSelection::Interfaces(vec![
            a.clone(),
            "tpkg-nonesuch".to_owned(),
        ]))
        .unwrap();
        (listed, auto, named)
    });
    // Only the namespace's own interfaces are seen.
    let mut sorted = listed.clone();
    sorted.sort();
    let mut want = vec!["lo".to_owned(), ns.veth.0.clone(), b.clone()];
    want.sort();
    assert_eq!(sorted, want);

    // auto: loopback is not looked at; both veths are, and have no allowance counters.
    assert!(auto.found.is_empty(), "{auto:?}");
    let looked: Vec<&str> = auto.without.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(looked.len(), 2, "{auto:?}");
    assert!(!looked.contains(&"lo"));
    for (name, why) in &auto.without {
        match why {
            NicStatsError::NoAllowances { driver, count } => {
                assert_eq!(driver, "veth", "{name}");
                // veth's table has at least peer_ifindex.
                assert!(*count >= 1, "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let account = auto.describe();
    assert!(
        account.starts_with("no interface with allowance counters (looked at "),
        "{account}"
    );
    assert!(account.contains("driver veth"), "{account}");

    // Named: the veth says why, the missing one says it is missing.
    assert!(named.found.is_empty());
    assert!(matches!(
        named.without[0].1,
        NicStatsError::NoAllowances { .. }
    ));
    assert!(
        matches!(named.without[1].1, NicStatsError::NoSuchInterface),
        "{named:?}"
    );
}

/// The daemon in the namespace: it logs that no interface has allowance
/// counters, and `/metrics` serves without any `tern_nic_*` series.
#[test]
fn daemon_exports_nothing_and_says_why() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("d");
    let veth = ns.veth.0.clone();
    ns.run(move || {
        let mut d = Daemon::start("50000-50099", &["--nic-stats-interval", "1"], &[]);
        let line = d.find("NIC allowance counters:");
        assert!(
            line.contains("no interface with allowance counters"),
            "{line}"
        );
        assert!(line.contains("driver veth"), "{line}");
        assert!(
            line.contains("INFO"),
            "auto finding nothing is not a warning: {line}"
        );
        assert!(eventually(Duration::from_secs(10), || get(
            d.admin, "/readyz"
        )
        .status
            == 200));
        let metrics = get(d.admin, "/metrics");
        assert_eq!(metrics.status, 200);
        let samples = parse_prometheus(&metrics.body);
        assert!(samples.keys().any(|k| k.starts_with("tern_state")));
        assert!(!metrics.body.contains("tern_nic_"), "{}", metrics.body);
        drop(d);

        // Naming an interface that has no counters is a warning that says why.
        let mut d = Daemon::start("50100-50199", &["--nic-stats", &veth], &[]);
        let line = d.find("NIC allowance counters:");
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains(&format!("{veth}: driver veth")), "{line}");

        // off: no reader at all.
        let mut d = Daemon::start("50200-50299", &["--nic-stats", "off"], &[]);
        assert!(eventually(Duration::from_secs(10), || get(
            d.admin, "/readyz"
        )
        .status
            == 200));
        d.signal(nix::sys::signal::Signal::SIGTERM);
        let status = d.exited_within(Duration::from_secs(10)).expect("exits");
        assert!(status.success());
        let _ = d.expect("relay stopped");
        assert!(
            !d.seen().iter().any(|l| l.contains("NIC allowance")),
            "nic-stats off still read: {:?}",
            d.seen()
        );
    });
}
