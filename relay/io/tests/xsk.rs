//! An AF_XDP socket on a veth pair between two throwaway namespaces (prefix
//! `txdp-`): tern's XDP program redirects the relay port range into it, the
//! socket receives the datagram as a whole frame, and a frame built by the
//! relay (Ethernet, IPv4/IPv6, UDP, checksums) goes back out through its TX
//! ring and reaches an ordinary socket, whose kernel checks the checksums.
#![allow(clippy::disallowed_methods)] // the test waits on the clock

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use tern_io::xsk::frame::{self, MacPair};
use tern_io::xsk::{Xsk, XskConfig, XskMode};
use tern_xdp::{AttachMode, Counter, Filter, FilterConfig};

mod netns;
use netns::{can_run, parse_mac, veth, Netns};

#[test]
fn relay_traffic_through_an_xsk_both_ways_ipv4_and_ipv6() {
    if !can_run("relay_traffic_through_an_xsk_both_ways_ipv4_and_ipv6") {
        return;
    }
    let a = Netns::new("xa");
    let b = Netns::new("xb");
    veth(&a, "txdpa", &b, "txdpb");
    a.exec(&["ip", "addr", "add", "10.79.0.1/24", "dev", "txdpa"]);
    a.exec(&["ip", "addr", "add", "fd79::1/64", "dev", "txdpa", "nodad"]);
    b.exec(&["ip", "addr", "add", "10.79.0.2/24", "dev", "txdpb"]);
    b.exec(&["ip", "addr", "add", "fd79::2/64", "dev", "txdpb", "nodad"]);
    // Finished UDP checksums on a's frames, so the XSK sees what a NIC delivers.
    a.exec(&["ethtool", "-K", "txdpa", "tx", "off"]);
    let mac_a = parse_mac(&a.exec(&["cat", "/sys/class/net/txdpa/address"]));
    let mac_b = parse_mac(&b.exec(&["cat", "/sys/class/net/txdpb/address"]));
    let hex = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    for ip in ["10.79.0.2", "fd79::2"] {
        a.exec(&[
            "ip",
            "neigh",
            "replace",
            ip,
            "lladdr",
            &hex(mac_b),
            "dev",
            "txdpa",
            "nud",
            "permanent",
        ]);
    }

    let filter = Filter::load(&FilterConfig {
        listen_ports: vec![3478],
        relay_ports: Some(50000..=50999),
        redirect_relay: true,
        ..FilterConfig::default()
    })
    .unwrap();
    let (mut xsk, attachment) = {
        let _in_b = b.enter();
        let att = filter.attach("txdpb", AttachMode::Native).unwrap();
        let xsk = Xsk::open("txdpb", 0, XskConfig::default()).unwrap();
        (xsk, att)
    };
    assert_eq!(xsk.mode(), XskMode::Copy, "veth offers copy mode only");
    filter.register_xsk(0, xsk.fd()).unwrap();

    let (c4, c6) = {
        let _in_a = a.enter();
        let c4 = UdpSocket::bind("10.79.0.1:0").unwrap();
        let c6 = UdpSocket::bind("[fd79::1]:0").unwrap();
        for s in [&c4, &c6] {
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        }
        (c4, c6)
    };
    let relay4: SocketAddr = "10.79.0.2:50007".parse().unwrap();
    let relay6: SocketAddr = "[fd79::2]:50008".parse().unwrap();
    const N: usize = 50;
    for i in 0..N {
        c4.send_to(format!("v4 {i}").as_bytes(), relay4).unwrap();
        c6.send_to(format!("v6 {i}").as_bytes(), relay6).unwrap();
    }

    // Receive every datagram as a frame; check it and echo it back, built by hand.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < 2 * N && Instant::now() < deadline {
        let mut replies = Vec::new();
        xsk.recv(64, |f| {
            let p = frame::parse(f).expect("a UDP frame");
            assert!(frame::udp_checksum_ok(&p), "checksum of {p:?}");
            assert_eq!(p.dst_mac, mac_b);
            replies.push((p.dst, p.src, p.payload.to_vec()));
        });
        for (from, to, payload) in replies {
            let sent = xsk.send(|buf| {
                let hl = frame::headers_len(from.ip());
                buf.get_mut(hl..hl + payload.len())?
                    .copy_from_slice(&payload);
                let macs = MacPair {
                    src: mac_b,
                    dst: mac_a,
                };
                frame::write_udp_frame(buf, macs, from, to, payload.len()).ok()
            });
            assert!(sent);
            got.push(payload);
        }
        xsk.flush();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(got.len(), 2 * N, "frames received through the XSK");
    let counters = filter.counters().unwrap();
    assert_eq!(counters.get(Counter::RedirectRelay), 2 * N as u64);
    assert_eq!(counters.get(Counter::PassRelay), 0);

    // The echoes arrive at a's sockets from the relay addresses, intact
    // (a's kernel drops any datagram whose checksum is wrong).
    let mut buf = [0u8; 1500];
    for (sock, relay, tag) in [(&c4, relay4, "v4"), (&c6, relay6, "v6")] {
        let mut echoed = Vec::new();
        for _ in 0..N {
            let (n, from) = sock.recv_from(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "{tag}: {} of {N} echoes: {e} (xsk {:?})",
                    echoed.len(),
                    xsk.stats()
                )
            });
            assert_eq!(from, relay);
            echoed.push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
        echoed.sort();
        let mut want: Vec<String> = (0..N).map(|i| format!("{tag} {i}")).collect();
        want.sort();
        assert_eq!(echoed, want);
    }
    let s = xsk.stats();
    assert_eq!(s.rx_frames, 2 * N as u64);
    assert_eq!(s.tx_frames, 2 * N as u64);
    let k = xsk.kernel_stats().unwrap();
    assert_eq!(k.rx_dropped, 0);
    assert_eq!(k.tx_invalid_descs, 0);

    // A queue serving another worker's slice passes this port up the stack.
    filter.set_queue_slice(0, Some(50000..=50007)).unwrap();
    c6.send_to(b"not this worker's", relay6).unwrap();
    c4.send_to(b"this worker's", relay4).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while filter.counters().unwrap().get(Counter::PassRelay) == 0 {
        assert!(Instant::now() < deadline, "no pass for the other slice");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut seen = 0;
    while seen == 0 && Instant::now() < deadline {
        seen = xsk.recv(64, |f| {
            assert_eq!(frame::parse(f).unwrap().payload, b"this worker's");
        });
    }
    assert_eq!(seen, 1);
    filter.set_queue_slice(0, None).unwrap();
    let before = filter.counters().unwrap().get(Counter::PassRelay);

    // Unregistered, the relay range goes up the stack again.
    filter.unregister_xsk(0).unwrap();
    c4.send_to(b"after", relay4).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while filter.counters().unwrap().get(Counter::PassRelay) == before {
        assert!(Instant::now() < deadline, "no pass after unregistering");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(attachment);
}

#[test]
fn next_hops_come_from_the_kernels_tables() {
    use tern_io::xsk::neigh::{interface_mac, Netlink, NextHops};
    if !can_run("next_hops_come_from_the_kernels_tables") {
        return;
    }
    let a = Netns::new("na");
    let b = Netns::new("nb");
    veth(&a, "txdpa", &b, "txdpb");
    a.exec(&["ip", "addr", "add", "10.80.0.1/24", "dev", "txdpa"]);
    a.exec(&["ip", "addr", "add", "fd80::1/64", "dev", "txdpa", "nodad"]);
    a.exec(&["ip", "route", "add", "192.0.2.0/24", "via", "10.80.0.254"]);
    a.exec(&["ip", "route", "add", "2001:db8::/32", "via", "fd80::fe"]);
    let gw_mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    let on_link_mac = [0x02, 0x66, 0x77, 0x88, 0x99, 0xaa];
    a.exec(&[
        "ip",
        "neigh",
        "replace",
        "10.80.0.254",
        "lladdr",
        "02:11:22:33:44:55",
        "dev",
        "txdpa",
        "nud",
        "permanent",
    ]);
    a.exec(&[
        "ip",
        "neigh",
        "replace",
        "fd80::fe",
        "lladdr",
        "02:11:22:33:44:55",
        "dev",
        "txdpa",
        "nud",
        "permanent",
    ]);
    a.exec(&[
        "ip",
        "neigh",
        "replace",
        "10.80.0.7",
        "lladdr",
        "02:66:77:88:99:aa",
        "dev",
        "txdpa",
        "nud",
        "reachable",
    ]);
    let mac_a = parse_mac(&a.exec(&["cat", "/sys/class/net/txdpa/address"]));

    let _in_a = a.enter();
    assert_eq!(interface_mac("txdpa").unwrap(), mac_a);
    let ifindex = {
        let c = std::ffi::CString::new("txdpa").unwrap();
        // SAFETY: NUL-terminated string outliving the call.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    };
    let mut nl = Netlink::open().unwrap();
    let r = nl.route_get("192.0.2.9".parse().unwrap()).unwrap();
    assert_eq!(r.oif, ifindex);
    assert_eq!(r.gateway, Some("10.80.0.254".parse().unwrap()));
    let r = nl.route_get("10.80.0.7".parse().unwrap()).unwrap();
    assert_eq!((r.oif, r.gateway), (ifindex, None));
    let r = nl.route_get("2001:db8::9".parse().unwrap()).unwrap();
    assert_eq!(r.gateway, Some("fd80::fe".parse().unwrap()));
    assert_eq!(
        nl.neigh_get(ifindex, "10.80.0.99".parse().unwrap())
            .unwrap(),
        None
    );

    let mut hops = NextHops::new(vec![ifindex], 8).unwrap();
    let now = Instant::now();
    assert_eq!(
        hops.lookup("192.0.2.9".parse().unwrap(), now),
        Some((ifindex, gw_mac))
    );
    assert_eq!(
        hops.lookup("2001:db8::9".parse().unwrap(), now),
        Some((ifindex, gw_mac))
    );
    assert_eq!(
        hops.lookup("10.80.0.7".parse().unwrap(), now),
        Some((ifindex, on_link_mac))
    );
    // Not resolved: the kernel's job; asked again only after `retry`.
    assert_eq!(hops.lookup("10.80.0.99".parse().unwrap(), now), None);
    a.exec(&[
        "ip",
        "neigh",
        "replace",
        "10.80.0.99",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        "txdpa",
        "nud",
        "reachable",
    ]);
    assert_eq!(
        hops.lookup("10.80.0.99".parse().unwrap(), now),
        None,
        "cached miss"
    );
    let later = now + hops.retry;
    assert_eq!(
        hops.lookup("10.80.0.99".parse().unwrap(), later),
        Some((ifindex, [2, 0, 0, 0, 0, 0x99]))
    );
    // Loopback is not through this interface.
    assert_eq!(hops.lookup("127.0.0.1".parse().unwrap(), now), None);
    assert_eq!(hops.len(), 5);
}

#[test]
fn xdp_io_relays_through_the_xsk_and_falls_back_to_the_kernel() {
    use tern_io::xsk::{XdpConfig, XdpIo};
    use tern_io::{PacketIo, RecvBatch};
    if !can_run("xdp_io_relays_through_the_xsk_and_falls_back_to_the_kernel") {
        return;
    }
    let a = Netns::new("ia");
    let b = Netns::new("ib");
    veth(&a, "txdpa", &b, "txdpb");
    a.exec(&["ip", "addr", "add", "10.81.0.1/24", "dev", "txdpa"]);
    a.exec(&["ip", "addr", "add", "10.81.0.3/24", "dev", "txdpa"]);
    a.exec(&["ip", "addr", "add", "10.81.0.4/24", "dev", "txdpa"]);
    a.exec(&["ip", "addr", "add", "fd81::1/64", "dev", "txdpa", "nodad"]);
    b.exec(&["ip", "addr", "add", "10.81.0.2/24", "dev", "txdpb"]);
    b.exec(&["ip", "addr", "add", "fd81::2/64", "dev", "txdpb", "nodad"]);
    a.exec(&["ethtool", "-K", "txdpa", "tx", "off"]);
    b.exec(&["ethtool", "-K", "txdpb", "tx", "off"]);
    let mac_a = a.exec(&["cat", "/sys/class/net/txdpa/address"]);
    let mac_b = b.exec(&["cat", "/sys/class/net/txdpb/address"]);
    for ip in ["10.81.0.2", "fd81::2"] {
        a.exec(&[
            "ip",
            "neigh",
            "replace",
            ip,
            "lladdr",
            mac_b.trim(),
            "dev",
            "txdpa",
            "nud",
            "permanent",
        ]);
    }
    // 10.81.0.3 and .4 are left for b to resolve by ARP.
    for ip in ["10.81.0.1", "fd81::1"] {
        b.exec(&[
            "ip",
            "neigh",
            "replace",
            ip,
            "lladdr",
            mac_a.trim(),
            "dev",
            "txdpb",
            "nud",
            "permanent",
        ]);
    }

    let filter = Filter::load(&FilterConfig {
        listen_ports: vec![3478],
        relay_ports: Some(50000..=50999),
        redirect_listen: true,
        redirect_relay: true,
        ..FilterConfig::default()
    })
    .unwrap();
    let (mut io, att, ids) = {
        let _in_b = b.enter();
        let att = filter.attach("txdpb", AttachMode::Native).unwrap();
        let mut io = XdpIo::new(XdpConfig::new("txdpb", 0)).unwrap();
        let listen = io
            .add_socket(UdpSocket::bind("10.81.0.2:3478").unwrap())
            .unwrap();
        let relay6 = io
            .add_socket(UdpSocket::bind("[fd81::2]:50001").unwrap())
            .unwrap();
        let wild = io
            .add_socket(UdpSocket::bind("0.0.0.0:50002").unwrap())
            .unwrap();
        (io, att, [listen, relay6, wild])
    };
    filter.register_xsk(io.queue(), io.xsk_fd()).unwrap();
    let (c1, c3, c6) = {
        let _in_a = a.enter();
        let socks = (
            UdpSocket::bind("10.81.0.1:0").unwrap(),
            UdpSocket::bind("10.81.0.3:0").unwrap(),
            UdpSocket::bind("[fd81::1]:0").unwrap(),
        );
        for s in [&socks.0, &socks.1, &socks.2] {
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        }
        socks
    };
    const N: usize = 20;
    // STUN-shaped payloads for the listening port (the filter checks them).
    let stun = |i: usize| {
        let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        m.extend_from_slice(&[i as u8; 12]);
        m
    };
    for i in 0..N {
        c1.send_to(&stun(i), "10.81.0.2:3478").unwrap();
        c6.send_to(format!("six {i}").as_bytes(), "[fd81::2]:50001")
            .unwrap();
        c3.send_to(format!("wild {i}").as_bytes(), "10.81.0.2:50002")
            .unwrap();
    }
    let mut batch = RecvBatch::new(64, 2048, 48, 4);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < 3 * N && Instant::now() < deadline {
        io.wait(Some(Duration::from_millis(50))).unwrap();
        while io.recv(&mut batch) > 0 {
            for (meta, payload) in batch.iter() {
                got.push((meta.socket, meta.source, payload.to_vec()));
            }
            for (meta, payload) in batch.iter() {
                io.send(meta.socket, meta.source, payload);
            }
            io.flush();
        }
    }
    assert_eq!(got.len(), 3 * N, "{:?}", io.xdp_stats());
    let from = |s: &UdpSocket| s.local_addr().unwrap();
    assert_eq!(
        got.iter()
            .filter(|g| g.0 == ids[0] && g.1 == from(&c1))
            .count(),
        N
    );
    assert_eq!(
        got.iter()
            .filter(|g| g.0 == ids[1] && g.1 == from(&c6))
            .count(),
        N
    );
    assert_eq!(
        got.iter()
            .filter(|g| g.0 == ids[2] && g.1 == from(&c3))
            .count(),
        N
    );
    let x = io.xdp_stats();
    assert_eq!(
        x.rx_xsk,
        3 * N as u64,
        "every datagram came through the XSK: {x:?}"
    );
    assert_eq!(x.rx_kernel, 0);
    // Specific-address sockets answer through the XSK, the wildcard one
    // through the kernel.
    assert_eq!(x.tx_xsk, 2 * N as u64, "{x:?}");
    assert_eq!(x.tx_kernel_other, N as u64, "{x:?}");
    let mut buf = [0u8; 1500];
    for (sock, to, n) in [
        (&c1, "10.81.0.2:3478", N),
        (&c6, "[fd81::2]:50001", N),
        (&c3, "10.81.0.2:50002", N),
    ] {
        for k in 0..n {
            let (_, src) = sock
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("echo {k} to {to}: {e} ({x:?})"));
            assert_eq!(src, to.parse().unwrap());
        }
    }

    // A peer b has not resolved yet: the first answers go through the kernel
    // (which resolves it), later ones through the XSK.
    let c3_specific = {
        let _in_a = a.enter();
        let s = UdpSocket::bind("10.81.0.4:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    };
    let mut echoed = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while echoed < 10 && Instant::now() < deadline {
        c3_specific.send_to(&stun(99), "10.81.0.2:3478").unwrap();
        io.wait(Some(Duration::from_millis(50))).unwrap();
        while io.recv(&mut batch) > 0 {
            for (meta, payload) in batch.iter() {
                io.send(meta.socket, meta.source, payload);
            }
            io.flush();
        }
        if c3_specific.recv_from(&mut buf).is_ok() {
            echoed += 1;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(echoed, 10);
    let y = io.xdp_stats();
    assert!(y.tx_kernel_unresolved >= 1, "{y:?}");
    assert!(
        y.tx_xsk > x.tx_xsk,
        "resolved peers go through the XSK: {y:?}"
    );
    let s = io.stats();
    assert_eq!(s.rx_datagrams, y.rx_xsk + y.rx_kernel);
    drop(att);
}

/// A TX ring whose cached consumer lags the kernel's must still take frames
/// while slots are free: 60 frames sent and taken by the kernel, then 60
/// more queued before the next kick on a 64-slot ring. (Seen as ~1 % of
/// sends falling back to the kernel at 20 kpps before the producer
/// refreshed the consumer whenever its cached view was short, not only
/// when it read zero.)
#[test]
fn tx_ring_refreshes_the_consumer_before_calling_itself_full() {
    if !can_run("tx_ring_refreshes_the_consumer_before_calling_itself_full") {
        return;
    }
    let a = Netns::new("ta");
    let b = Netns::new("tb");
    veth(&a, "txdpr", &b, "txdps");
    a.exec(&["ip", "addr", "add", "10.78.0.1/24", "dev", "txdpr"]);
    b.exec(&["ip", "addr", "add", "10.78.0.2/24", "dev", "txdps"]);
    let mac_a = parse_mac(&a.exec(&["cat", "/sys/class/net/txdpr/address"]));
    let mac_b = parse_mac(&b.exec(&["cat", "/sys/class/net/txdps/address"]));
    let sink = {
        let _in_a = a.enter();
        let s = UdpSocket::bind("10.78.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    };
    let mut xsk = {
        let _in_b = b.enter();
        Xsk::open(
            "txdps",
            0,
            XskConfig {
                ring_size: 64,
                frames: 256,
                ..XskConfig::default()
            },
        )
        .unwrap()
    };
    let from: SocketAddr = "10.78.0.2:40000".parse().unwrap();
    let to = sink.local_addr().unwrap();
    let macs = MacPair {
        src: mac_b,
        dst: mac_a,
    };
    let send = |xsk: &mut Xsk, i: usize| {
        let payload = format!("frame {i}");
        let hl = frame::headers_len(from.ip());
        xsk.send(|buf| {
            buf[hl..hl + payload.len()].copy_from_slice(payload.as_bytes());
            frame::write_udp_frame(buf, macs, from, to, payload.len()).ok()
        })
    };
    for i in 0..60 {
        assert!(send(&mut xsk, i), "frame {i} of the first 60");
    }
    xsk.flush();
    assert_eq!(xsk.tx_in_flight(), 0, "copy mode transmits on the kick");
    for i in 60..120 {
        assert!(send(&mut xsk, i), "frame {i}: {:?}", xsk.stats());
    }
    xsk.flush();
    assert_eq!(xsk.stats().tx_full, 0);
    let mut buf = [0u8; 256];
    for i in 0..120 {
        let n = sink
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {i} of 120: {e}"));
        assert!(buf[..n].starts_with(b"frame "));
    }
}
