//! Attaching the pre-filter to veth pairs in throwaway network namespaces
//! (prefix `txdp-`): native and generic mode, detach on drop, a stale tern
//! program replaced, someone else's program left alone, a crashed relay
//! leaving nothing behind, and real frames over the wire counted and dropped.

mod common;

use std::io::Write;
use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use tern_xdp::{installed, AttachMode, AttachedMode, Counter, Error, PROGRAM_NAME};

/// Two namespaces joined by a veth pair: `txdpa` (10.77.0.1, fd77::1) in
/// `a`, `txdpb` (10.77.0.2, fd77::2) in `b`.
struct Pair {
    a: Netns,
    b: Netns,
}

fn pair(tag: &str) -> Pair {
    let a = Netns::new(&format!("{tag}a"));
    let b = Netns::new(&format!("{tag}b"));
    a.exec(&[
        "ip", "link", "add", "txdpa", "type", "veth", "peer", "name", "txdpb", "netns", &b.name,
    ]);
    a.exec(&["ip", "addr", "add", "10.77.0.1/24", "dev", "txdpa"]);
    a.exec(&["ip", "addr", "add", "fd77::1/64", "dev", "txdpa", "nodad"]);
    a.exec(&["ip", "link", "set", "txdpa", "up"]);
    // Frames from a local socket leave with the UDP checksum unfinished
    // (CHECKSUM_PARTIAL), which a veth running native XDP does not carry over
    // to the receiver; a NIC's frames always arrive complete. Finish them here.
    a.exec(&["ethtool", "-K", "txdpa", "tx", "off"]);
    b.exec(&["ip", "addr", "add", "10.77.0.2/24", "dev", "txdpb"]);
    b.exec(&["ip", "addr", "add", "fd77::2/64", "dev", "txdpb", "nodad"]);
    b.exec(&["ip", "link", "set", "txdpb", "up"]);
    Pair { a, b }
}

fn ours(ifname: &str) -> Vec<(AttachedMode, String)> {
    installed(ifname)
        .unwrap()
        .into_iter()
        .map(|p| (p.mode, p.name))
        .collect()
}

#[test]
fn auto_mode_is_native_on_veth_and_drop_detaches() {
    if !can_bpf("auto_mode_is_native_on_veth_and_drop_detaches") {
        return;
    }
    let p = pair("n");
    let _in_b = p.b.enter();
    let f = load(&config());
    let att = f.attach("txdpb", AttachMode::Auto).unwrap();
    assert_eq!(att.mode(), AttachedMode::Native);
    assert_eq!(att.ifname(), "txdpb");
    assert_eq!(att.replaced_stale(), None);
    assert_eq!(att.native_error(), None);
    assert_eq!(
        ours("txdpb"),
        vec![(AttachedMode::Native, PROGRAM_NAME.to_string())]
    );
    // Dropping the Filter keeps the attachment; dropping the attachment detaches.
    drop(f);
    assert_eq!(ours("txdpb").len(), 1);
    drop(att);
    assert_eq!(ours("txdpb"), vec![]);

    let f = load(&config());
    let att = f.attach("txdpb", AttachMode::Native).unwrap();
    assert_eq!(att.mode(), AttachedMode::Native);
    att.detach().unwrap();
    assert_eq!(ours("txdpb"), vec![]);
    assert!(matches!(
        f.attach("txdp-none", AttachMode::Auto),
        Err(Error::NoInterface(_))
    ));
}

#[test]
fn generic_mode_when_asked() {
    if !can_bpf("generic_mode_when_asked") {
        return;
    }
    let p = pair("g");
    let _in_b = p.b.enter();
    let f = load(&config());
    let att = f.attach("txdpb", AttachMode::Generic).unwrap();
    assert_eq!(att.mode(), AttachedMode::Generic);
    assert_eq!(
        ours("txdpb"),
        vec![(AttachedMode::Generic, PROGRAM_NAME.to_string())]
    );
    // A second tern on the same interface cannot take it from a live link.
    let g = load(&config());
    match g.attach("txdpb", AttachMode::Auto) {
        Err(Error::HeldByLink { ifname, .. }) => assert_eq!(ifname, "txdpb"),
        other => panic!("expected HeldByLink, got {other:?}"),
    }
    assert_eq!(ours("txdpb").len(), 1, "the live attachment is untouched");
    drop(att);
    assert_eq!(ours("txdpb"), vec![]);
}

#[test]
fn a_stale_netlink_attached_tern_program_is_replaced() {
    if !can_bpf("a_stale_netlink_attached_tern_program_is_replaced") {
        return;
    }
    let p = pair("s");
    let _in_b = p.b.enter();
    for (flags, mode) in [
        (libbpf_rs::XdpFlags::DRV_MODE, AttachedMode::Native),
        (libbpf_rs::XdpFlags::SKB_MODE, AttachedMode::Generic),
    ] {
        // What an earlier version (or `ip link set dev X xdp ...`) leaves
        // behind: attached by netlink, outliving the process that loaded it.
        let old = load(&config());
        let ifindex = libc_ifindex("txdpb");
        libbpf_rs::Xdp::new(old.program_fd())
            .attach(ifindex, flags)
            .unwrap();
        drop(old);
        let stale = installed("txdpb").unwrap();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].mode, mode);

        let f = load(&config());
        let att = f.attach("txdpb", AttachMode::Auto).unwrap();
        assert_eq!(att.replaced_stale(), Some(stale[0].id));
        assert_eq!(att.mode(), AttachedMode::Native);
        let now = installed("txdpb").unwrap();
        assert_eq!(now.len(), 1);
        assert_ne!(now[0].id, stale[0].id);
        drop(att);
        assert_eq!(ours("txdpb"), vec![]);
    }
}

#[test]
fn someone_elses_program_is_left_alone() {
    if !can_bpf("someone_elses_program_is_left_alone") {
        return;
    }
    let p = pair("o");
    let _in_b = p.b.enter();
    let other = load_pass_program("other_xdp");
    let ifindex = libc_ifindex("txdpb");
    // SAFETY: `other` is an open program descriptor; null opts are allowed.
    let rc = unsafe {
        libbpf_sys::bpf_xdp_attach(
            ifindex,
            other,
            libbpf_sys::XDP_FLAGS_SKB_MODE,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0);
    let f = load(&config());
    match f.attach("txdpb", AttachMode::Auto) {
        Err(Error::Occupied { name, .. }) => assert_eq!(name, "other_xdp"),
        other => panic!("expected Occupied, got {other:?}"),
    }
    assert_eq!(
        ours("txdpb"),
        vec![(AttachedMode::Generic, "other_xdp".to_string())]
    );
    // SAFETY: plain detach by mode; null opts are allowed.
    let rc = unsafe {
        libbpf_sys::bpf_xdp_detach(ifindex, libbpf_sys::XDP_FLAGS_SKB_MODE, std::ptr::null())
    };
    assert_eq!(rc, 0);
    // SAFETY: `other` is ours to close.
    unsafe { libc::close(other) };
}

#[test]
fn a_crashed_relay_leaves_no_program_behind() {
    if !can_bpf("a_crashed_relay_leaves_no_program_behind") {
        return;
    }
    let p = pair("c");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TERN_XDP_CRASH_NETNS", &p.b.name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("crash_child attached native"),
        "child: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "the child aborts");
    let _in_b = p.b.enter();
    // The kernel releases the link when the dead process's files close.
    let mut left = ours("txdpb");
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        left = ours("txdpb");
    }
    assert_eq!(left, vec![]);
}

/// Run by `a_crashed_relay_leaves_no_program_behind` in a child process:
/// attach, then die without any cleanup.
#[test]
#[ignore = "a helper process of a_crashed_relay_leaves_no_program_behind"]
#[allow(clippy::print_stdout)]
fn crash_child() {
    let name = std::env::var("TERN_XDP_CRASH_NETNS").expect("run by the crash test");
    let ns = Netns { name };
    let _in = ns.enter();
    let f = load(&config());
    let att = f.attach("txdpb", AttachMode::Auto).unwrap();
    println!("crash_child attached {}", att.mode());
    std::io::stdout().flush().unwrap();
    std::mem::forget(ns);
    std::process::abort();
}

#[test]
fn frames_over_the_wire_are_filtered_and_counted() {
    if !can_bpf("frames_over_the_wire_are_filtered_and_counted") {
        return;
    }
    let p = pair("w");
    let f = load(&config());
    let (server4, server6, relay, att) = {
        let _in_b = p.b.enter();
        let att = f.attach("txdpb", AttachMode::Auto).unwrap();
        let s4 = UdpSocket::bind(("10.77.0.2", LISTEN)).unwrap();
        let s6 = UdpSocket::bind(("fd77::2", LISTEN)).unwrap();
        let r = UdpSocket::bind(("10.77.0.2", 50000)).unwrap();
        (s4, s6, r, att)
    };
    assert_eq!(att.mode(), AttachedMode::Native);
    let (c4, c6) = {
        let _in_a = p.a.enter();
        (
            UdpSocket::bind("10.77.0.1:0").unwrap(),
            UdpSocket::bind("[fd77::1]:0").unwrap(),
        )
    };
    let binding = stun(BINDING_REQUEST, &[(ATTR_SOFTWARE, b"wire")]);
    // Static neighbours: no datagram waits on (or is lost to) resolution.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &p.b.name,
            "cat",
            "/sys/class/net/txdpb/address",
        ])
        .output()
        .unwrap();
    let mac = String::from_utf8(out.stdout).unwrap().trim().to_string();
    for ip in ["10.77.0.2", "fd77::2"] {
        p.a.exec(&[
            "ip",
            "neigh",
            "replace",
            ip,
            "lladdr",
            &mac,
            "dev",
            "txdpa",
            "nud",
            "permanent",
        ]);
    }
    for i in 0..20u8 {
        c4.send_to(&[0xFF, i, 0, 0], "10.77.0.2:3478").unwrap();
        c6.send_to(&[0x16, 0xFE, 0xFD, i], "[fd77::2]:3478")
            .unwrap();
        c4.send_to(&channel_data(0x5000, &[i], 3), "10.77.0.2:3478")
            .unwrap();
        if i % 4 == 0 {
            c4.send_to(&binding, "10.77.0.2:3478").unwrap();
            c6.send_to(&binding, "[fd77::2]:3478").unwrap();
            c4.send_to(&[0xFF, i], "10.77.0.2:50000").unwrap();
        }
    }
    let recv_all = |s: &UdpSocket, want: usize| {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1500];
        while let Ok(n) = s.recv(&mut buf) {
            got.push(buf[..n].to_vec());
            if got.len() > want {
                break;
            }
        }
        got
    };
    assert_eq!(recv_all(&server4, 5), vec![binding.clone(); 5]);
    assert_eq!(recv_all(&server6, 5), vec![binding.clone(); 5]);
    assert_eq!(recv_all(&relay, 5).len(), 5);
    let c = f.counters().unwrap();
    assert_eq!(c.get(Counter::DropFirstByte), 40);
    assert_eq!(c.get(Counter::DropChannelNumber), 20);
    assert_eq!(c.get(Counter::PassStun), 10);
    assert_eq!(c.get(Counter::PassRelay), 5);
    assert_eq!(c.get(Counter::PassOtherPort), 0);
    drop(att);
}

fn libc_ifindex(name: &str) -> i32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: NUL-terminated string outliving the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) as i32 }
}

/// Load a two-instruction XDP program (`return XDP_PASS`) named `name`.
fn load_pass_program(name: &str) -> i32 {
    let mut mov = libbpf_sys::bpf_insn {
        code: 0xb7, // BPF_ALU64 | BPF_MOV | BPF_K, r0
        ..Default::default()
    };
    mov.imm = 2; // XDP_PASS
    let exit = libbpf_sys::bpf_insn {
        code: 0x95, // BPF_JMP | BPF_EXIT
        ..Default::default()
    };
    let insns = [mov, exit];
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid instruction array, NUL-terminated strings, null opts.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(
            libbpf_sys::BPF_PROG_TYPE_XDP,
            name.as_ptr(),
            c"GPL".as_ptr(),
            insns.as_ptr(),
            insns.len() as _,
            std::ptr::null_mut(),
        )
    };
    assert!(fd >= 0, "bpf_prog_load: {fd}");
    fd
}
