//! Throwaway network namespaces (prefix `txdp-`) for the AF_XDP tests: made
//! with `ip netns`, entered by one thread with `setns(2)` (never `ip netns
//! exec` for the test process itself, which would remount /sys), deleted on
//! drop.
#![allow(dead_code)] // each test binary uses its own share of these

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

#[allow(clippy::print_stdout)] // the skip note belongs in the test's output
pub(crate) fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("TERN_REQUIRE_INTEROP").is_some_and(|v| v == "1") {
        panic!("{test}: needs root (namespaces, XDP, AF_XDP) and TERN_REQUIRE_INTEROP=1 is set");
    }
    println!("skipped: {test} needs root (network namespaces, XDP, AF_XDP)");
    false
}

pub(crate) struct Netns(pub(crate) String);

impl Netns {
    pub(crate) fn new(tag: &str) -> Netns {
        let name = format!("txdp-{}-{tag}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub(crate) fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        sh(&full)
    }

    pub(crate) fn enter(&self) -> Back {
        let back = File::open("/proc/thread-self/ns/net").unwrap();
        let ns = File::open(format!("/run/netns/{}", self.0)).unwrap();
        // SAFETY: setns with an open namespace descriptor; this thread only.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0);
        Back(back)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A veth pair, `ifa` in `a` and `ifb` in `b`, both up (addresses are the
/// caller's).
pub(crate) fn veth(a: &Netns, ifa: &str, b: &Netns, ifb: &str) {
    a.exec(&[
        "ip", "link", "add", ifa, "type", "veth", "peer", "name", ifb, "netns", &b.0,
    ]);
    a.exec(&["ip", "link", "set", ifa, "up"]);
    b.exec(&["ip", "link", "set", ifb, "up"]);
}

pub(crate) struct Back(File);

impl Drop for Back {
    fn drop(&mut self) {
        // SAFETY: as in `enter`, back to where the thread came from.
        let rc = unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0);
    }
}

pub(crate) fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, part) in s.trim().split(':').enumerate() {
        m[i] = u8::from_str_radix(part, 16).unwrap();
    }
    m
}
