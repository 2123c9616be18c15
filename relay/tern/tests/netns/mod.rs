//! Throwaway network namespaces for the daemon tests that need them (XDP,
//! the SFU cascade): made with `ip netns`, named `<prefix>-<pid>-<tag>` so
//! concurrent runs never collide, entered by one thread at a time with
//! `setns(2)` (never `ip netns exec` for the test process itself, which
//! would remount /sys), and deleted — with their veth ends and sockets — on
//! drop.
#![allow(dead_code)] // each test binary uses its own share of these

use std::fs::File;
use std::process::{Command, Stdio};

use nix::sched::CloneFlags;

/// A network namespace, removed on drop.
pub(crate) struct Netns(pub(crate) String);

impl Netns {
    /// `<prefix>-<pid>-<tag>`, replacing one a killed run left behind.
    pub(crate) fn new(prefix: &str, tag: &str) -> Netns {
        let name = format!("{prefix}-{}-{tag}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Run a command inside the namespace; its stdout (panics on failure).
    pub(crate) fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Run the calling thread in this namespace until the guard drops
    /// (sockets opened meanwhile stay in it).
    pub(crate) fn enter(&self) -> Back {
        let back = File::open("/proc/thread-self/ns/net").unwrap();
        let ns = File::open(format!("/run/netns/{}", self.0)).unwrap();
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
        Back(back)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Takes the thread back to the namespace it came from.
pub(crate) struct Back(File);

impl Drop for Back {
    fn drop(&mut self) {
        nix::sched::setns(&self.0, CloneFlags::CLONE_NEWNET).unwrap();
    }
}

/// Run a command; its stdout (panics on failure, with its stderr).
pub(crate) fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
