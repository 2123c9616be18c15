//! Frame builders, a root check and network-namespace helpers shared by
//! tern-xdp's tests.
#![allow(dead_code, unreachable_pub)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

use tern_xdp::{Filter, FilterConfig};

pub const LISTEN: u16 = 3478;
pub const OTHER: u16 = 5000;
pub const RELAY_LO: u16 = 49152;
pub const RELAY_HI: u16 = 65535;

pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86DD;
pub const ETH_ARP: u16 = 0x0806;
pub const VLAN_8021Q: u16 = 0x8100;
pub const VLAN_8021AD: u16 = 0x88A8;

pub const BINDING_REQUEST: u16 = 0x0001;
pub const BINDING_SUCCESS: u16 = 0x0101;
pub const ALLOCATE_REQUEST: u16 = 0x0003;
pub const SEND_INDICATION: u16 = 0x0016;
pub const ATTR_USERNAME: u16 = 0x0006;
pub const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
pub const ATTR_MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
pub const ATTR_SOFTWARE: u16 = 0x8022;

/// True when the tests may load BPF. Not root: prints `skipped:` and returns
/// false, or panics under TERN_REQUIRE_INTEROP=1 (CI runs as root).
#[allow(clippy::print_stdout)] // the skip note belongs in the test's output
pub fn can_bpf(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("TERN_REQUIRE_INTEROP").is_some_and(|v| v == "1") {
        panic!("{test}: needs root (CAP_BPF, CAP_NET_ADMIN) and TERN_REQUIRE_INTEROP=1 is set");
    }
    println!("skipped: {test} needs root (CAP_BPF, CAP_NET_ADMIN)");
    false
}

pub fn config() -> FilterConfig {
    FilterConfig {
        listen_ports: vec![LISTEN, 3479],
        relay_ports: Some(RELAY_LO..=RELAY_HI),
        channel_max: 0x4FFF,
        unauth_rate: 0,
        unauth_burst: 0,
        redirect_listen: false,
        redirect_relay: false,
    }
}

pub fn load(cfg: &FilterConfig) -> Filter {
    Filter::load(cfg).unwrap_or_else(|e| panic!("loading the XDP program: {e}"))
}

/// A STUN message: `msg_type`, magic cookie, a fixed transaction id, and
/// `attrs` padded to 4 bytes.
pub fn stun(msg_type: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in attrs {
        body.extend_from_slice(&t.to_be_bytes());
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v);
        while body.len() % 4 != 0 {
            body.push(0);
        }
    }
    let mut m = Vec::new();
    m.extend_from_slice(&msg_type.to_be_bytes());
    m.extend_from_slice(&(body.len() as u16).to_be_bytes());
    m.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    m.extend_from_slice(&[7; 12]);
    m.extend_from_slice(&body);
    m
}

/// An Allocate request as a client sends it after the 401: USERNAME, REALM,
/// NONCE, REQUESTED-TRANSPORT, MESSAGE-INTEGRITY, FINGERPRINT.
pub fn authenticated_allocate() -> Vec<u8> {
    stun(
        ALLOCATE_REQUEST,
        &[
            (ATTR_USERNAME, b"alice"),
            (0x0014, b"tern.local"),
            (0x0015, b"0123456789abcdef"),
            (0x0019, &[17, 0, 0, 0]),
            (ATTR_MESSAGE_INTEGRITY, &[0xAA; 20]),
            (0x8028, &[1, 2, 3, 4]),
        ],
    )
}

pub fn channel_data(channel: u16, data: &[u8], padding: usize) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&channel.to_be_bytes());
    m.extend_from_slice(&(data.len() as u16).to_be_bytes());
    m.extend_from_slice(data);
    m.resize(m.len() + padding, 0);
    m
}

/// Ethernet header with `vlans` tags (TPIDs, outermost first) then `ethertype`.
pub fn eth(ethertype: u16, vlans: &[u16]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for (i, tpid) in vlans.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// IPv4 header (no options) around `l4` with protocol `proto`.
pub fn ipv4(src: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[10, 0, 0, 1]);
    h.extend_from_slice(l4);
    h
}

pub fn ipv6(src: [u8; 16], next: u8, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    h.extend_from_slice(l4);
    h
}

pub const V4_SRC: [u8; 4] = [192, 0, 2, 7];
pub const V6_SRC: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];

/// Ethernet + IPv4 + UDP to `dport` carrying `payload`.
pub fn v4(dport: u16, payload: &[u8]) -> Vec<u8> {
    v4_from(V4_SRC, dport, payload)
}

pub fn v4_from(src: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = eth(ETH_IPV4, &[]);
    f.extend(ipv4(src, 17, &udp(40000, dport, payload)));
    f
}

/// Ethernet + IPv6 + UDP to `dport` carrying `payload`.
pub fn v6(dport: u16, payload: &[u8]) -> Vec<u8> {
    v6_from(V6_SRC, dport, payload)
}

pub fn v6_from(src: [u8; 16], dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = eth(ETH_IPV6, &[]);
    f.extend(ipv6(src, 17, &udp(40000, dport, payload)));
    f
}

/// A network namespace named `txdp-<pid>-<tag>`, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("txdp-{}-{tag}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full);
    }

    /// Move the calling thread into this namespace until the guard drops.
    pub fn enter(&self) -> NetnsGuard {
        let back = File::open("/proc/thread-self/ns/net").expect("open own netns");
        let target = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        // SAFETY: setns with an open namespace descriptor affects only this thread.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        NetnsGuard { back }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub struct NetnsGuard {
    back: File,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // SAFETY: as in `enter`, with the descriptor of the original namespace.
        let rc = unsafe { libc::setns(self.back.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns back: {}", std::io::Error::last_os_error());
    }
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
