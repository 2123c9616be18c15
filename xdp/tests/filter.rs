//! BPF_PROG_TEST_RUN on crafted frames: every verdict of the pre-filter, with
//! the counter each one must move (and no other).

mod common;

use common::*;
use tern_xdp::{Action, Counter, Counters, Filter, FilterConfig, Verdict};

/// Run `frame` and assert the action and that exactly `counter` rose by one.
#[track_caller]
fn expect(f: &Filter, frame: &[u8], action: Action, counter: Counter) {
    let before = f.counters().unwrap();
    let got = f.test_run(frame).unwrap();
    let delta = f.counters().unwrap().since(&before);
    assert_eq!(got, action, "frame {frame:02x?}");
    let moved: Vec<(Counter, u64)> = delta.iter().filter(|(_, n)| *n != 0).collect();
    assert_eq!(moved, vec![(counter, 1)], "frame {frame:02x?}");
}

fn filter(test: &str) -> Option<Filter> {
    can_bpf(test).then(|| load(&config()))
}

#[test]
fn sane_stun_and_channel_data_pass_on_ipv4_and_ipv6() {
    let Some(f) = filter("sane_stun_and_channel_data_pass_on_ipv4_and_ipv6") else {
        return;
    };
    let binding = stun(BINDING_REQUEST, &[(ATTR_SOFTWARE, b"test")]);
    for frame in [
        v4(LISTEN, &binding),
        v6(LISTEN, &binding),
        v4(3479, &binding),
    ] {
        expect(&f, &frame, Action::Pass, Counter::PassStun);
    }
    let auth = authenticated_allocate();
    expect(&f, &v4(LISTEN, &auth), Action::Pass, Counter::PassStun);
    expect(
        &f,
        &v6(LISTEN, &stun(BINDING_SUCCESS, &[])),
        Action::Pass,
        Counter::PassStun,
    );
    for (ch, pad) in [(0x4000, 0), (0x4FFF, 3), (0x4123, 1)] {
        let cd = channel_data(ch, b"hello", pad);
        expect(&f, &v4(LISTEN, &cd), Action::Pass, Counter::PassChannelData);
        expect(&f, &v6(LISTEN, &cd), Action::Pass, Counter::PassChannelData);
    }
    expect(
        &f,
        &v4(LISTEN, &channel_data(0x4001, b"", 0)),
        Action::Pass,
        Counter::PassChannelData,
    );
}

#[test]
fn vlan_and_qinq_tags_are_walked() {
    let Some(f) = filter("vlan_and_qinq_tags_are_walked") else {
        return;
    };
    let binding = stun(BINDING_REQUEST, &[]);
    for tags in [
        &[VLAN_8021Q][..],
        &[VLAN_8021AD, VLAN_8021Q],
        &[VLAN_8021Q, VLAN_8021Q],
    ] {
        let mut frame = eth(ETH_IPV4, tags);
        frame.extend(ipv4(V4_SRC, 17, &udp(1, LISTEN, &binding)));
        expect(&f, &frame, Action::Pass, Counter::PassStun);
        let mut frame = eth(ETH_IPV6, tags);
        frame.extend(ipv6(V6_SRC, 17, &udp(1, LISTEN, b"\xff junk")));
        expect(&f, &frame, Action::Drop, Counter::DropFirstByte);
    }
    // A third tag is more than the program walks: not provably IP, so the kernel's.
    let mut frame = eth(ETH_IPV4, &[VLAN_8021AD, VLAN_8021Q, VLAN_8021Q]);
    frame.extend(ipv4(V4_SRC, 17, &udp(1, LISTEN, b"\xff junk")));
    expect(&f, &frame, Action::Pass, Counter::PassNotIp);
}

#[test]
fn traffic_that_is_not_terns_passes_untouched() {
    let Some(f) = filter("traffic_that_is_not_terns_passes_untouched") else {
        return;
    };
    let mut arp = eth(ETH_ARP, &[]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0; 20]);
    expect(&f, &arp, Action::Pass, Counter::PassNotIp);
    let mut lldp = eth(0x88CC, &[VLAN_8021Q]);
    lldp.extend_from_slice(&[0; 32]);
    expect(&f, &lldp, Action::Pass, Counter::PassNotIp);

    // TCP to the listening port (TURN over TCP is the kernel's), ICMPv6 ND.
    let mut tcp = eth(ETH_IPV4, &[]);
    tcp.extend(ipv4(
        V4_SRC,
        6,
        &[
            0x9c, 0x40, 0x0d, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 2, 0, 0, 0, 0, 0, 0,
        ],
    ));
    expect(&f, &tcp, Action::Pass, Counter::PassNotUdp);
    let mut nd = eth(ETH_IPV6, &[]);
    nd.extend(ipv6(V6_SRC, 58, &[135, 0, 0, 0, 0, 0, 0, 0]));
    expect(&f, &nd, Action::Pass, Counter::PassNotUdp);

    // UDP junk to a port that is not tern's, both families.
    expect(
        &f,
        &v4(OTHER, b"\xff\xffjunk"),
        Action::Pass,
        Counter::PassOtherPort,
    );
    expect(&f, &v6(53, b""), Action::Pass, Counter::PassOtherPort);
    expect(
        &f,
        &v4(RELAY_LO - 1, b"\x16junk"),
        Action::Pass,
        Counter::PassOtherPort,
    );
}

#[test]
fn truncated_headers_before_the_ports_go_to_the_kernel() {
    let Some(f) = filter("truncated_headers_before_the_ports_go_to_the_kernel") else {
        return;
    };
    let full4 = v4(LISTEN, &stun(BINDING_REQUEST, &[]));
    let full6 = v6(LISTEN, &stun(BINDING_REQUEST, &[]));
    // Cut inside the IPv4 header (14..34) and the UDP header (34..42).
    for cut in [14, 15, 20, 33, 34, 37, 41] {
        expect(&f, &full4[..cut], Action::Pass, Counter::PassUnparsed);
    }
    // Cut inside the IPv6 header (14..54) and the UDP header (54..62).
    for cut in [14, 30, 53, 54, 61] {
        expect(&f, &full6[..cut], Action::Pass, Counter::PassUnparsed);
    }
    // Cut inside a VLAN tag.
    let tagged = eth(ETH_IPV4, &[VLAN_8021Q]);
    expect(&f, &tagged[..15], Action::Pass, Counter::PassUnparsed);
    expect(&f, &tagged[..17], Action::Pass, Counter::PassUnparsed);
    // IHL below 5, wrong version, total length below the header.
    let mut bad = full4.clone();
    bad[14] = 0x44;
    expect(&f, &bad, Action::Pass, Counter::PassUnparsed);
    let mut bad = full4.clone();
    bad[14] = 0x65;
    expect(&f, &bad, Action::Pass, Counter::PassUnparsed);
    let mut bad = full4.clone();
    bad[16..18].copy_from_slice(&10u16.to_be_bytes());
    expect(&f, &bad, Action::Pass, Counter::PassUnparsed);
    let mut bad = full6.clone();
    bad[14] = 0x40;
    expect(&f, &bad, Action::Pass, Counter::PassUnparsed);
}

#[test]
fn fragments_and_extension_headers_go_to_the_kernel() {
    let Some(f) = filter("fragments_and_extension_headers_go_to_the_kernel") else {
        return;
    };
    let mut first = v4(LISTEN, b"\xff junk");
    first[20] = 0x20; // MF, offset 0
    expect(&f, &first, Action::Pass, Counter::PassFragment);
    let mut later = v4(LISTEN, b"\xff junk");
    later[20..22].copy_from_slice(&0x00B9u16.to_be_bytes()); // offset 185
    expect(&f, &later, Action::Pass, Counter::PassFragment);
    let mut frag = udp(1, LISTEN, b"\xff junk");
    let mut ext = vec![17, 0, 0, 0, 0, 0, 0, 1];
    ext.append(&mut frag);
    let mut frame = eth(ETH_IPV6, &[]);
    frame.extend(ipv6(V6_SRC, 44, &ext));
    expect(&f, &frame, Action::Pass, Counter::PassIpv6Ext);
}

#[test]
fn options_and_ethernet_padding_are_handled() {
    let Some(f) = filter("options_and_ethernet_padding_are_handled") else {
        return;
    };
    // IPv4 with 4 bytes of options (IHL 6).
    let l4 = udp(1, LISTEN, &stun(BINDING_REQUEST, &[]));
    let mut frame = eth(ETH_IPV4, &[]);
    let mut ip = ipv4(V4_SRC, 17, &l4);
    ip[0] = 0x46;
    ip[2..4].copy_from_slice(&((24 + l4.len()) as u16).to_be_bytes());
    ip.splice(20..20, [1, 1, 1, 0]);
    frame.extend(ip);
    expect(&f, &frame, Action::Pass, Counter::PassStun);
    // A 4-byte ChannelData padded by the NIC to the 60-byte Ethernet minimum.
    let mut short = v4(LISTEN, &channel_data(0x4000, b"", 0));
    assert!(short.len() < 60);
    short.resize(60, 0);
    expect(&f, &short, Action::Pass, Counter::PassChannelData);
}

#[test]
fn bad_udp_lengths_to_tern_ports_are_dropped() {
    let Some(f) = filter("bad_udp_lengths_to_tern_ports_are_dropped") else {
        return;
    };
    let msg = stun(BINDING_REQUEST, &[]);
    for dport in [LISTEN, RELAY_LO, RELAY_HI] {
        // Length below the UDP header.
        let mut frame = v4(dport, &msg);
        frame[38..40].copy_from_slice(&7u16.to_be_bytes());
        expect(&f, &frame, Action::Drop, Counter::DropUdpLength);
        // Longer than the IP datagram.
        let mut frame = v4(dport, &msg);
        frame[38..40].copy_from_slice(&((8 + msg.len() + 1) as u16).to_be_bytes());
        expect(&f, &frame, Action::Drop, Counter::DropUdpLength);
        // IP and UDP agree, but the frame was cut short.
        let frame = v4(dport, &msg);
        expect(
            &f,
            &frame[..frame.len() - 1],
            Action::Drop,
            Counter::DropUdpLength,
        );
        let mut frame = v6(dport, &msg);
        frame[58..60].copy_from_slice(&((8 + msg.len() + 4) as u16).to_be_bytes());
        expect(&f, &frame, Action::Drop, Counter::DropUdpLength);
    }
    // The same lies to another port are none of tern's business.
    let mut frame = v4(OTHER, &msg);
    frame[38..40].copy_from_slice(&7u16.to_be_bytes());
    expect(&f, &frame, Action::Pass, Counter::PassOtherPort);
}

#[test]
fn junk_to_a_listening_port_is_dropped_by_reason() {
    let Some(f) = filter("junk_to_a_listening_port_is_dropped_by_reason") else {
        return;
    };
    let good = stun(BINDING_REQUEST, &[(ATTR_SOFTWARE, b"abcd")]);
    // Truncated below each header.
    expect(&f, &v4(LISTEN, b""), Action::Drop, Counter::DropTruncated);
    expect(
        &f,
        &v6(LISTEN, &good[..19]),
        Action::Drop,
        Counter::DropTruncated,
    );
    expect(
        &f,
        &v4(LISTEN, &good[..1]),
        Action::Drop,
        Counter::DropTruncated,
    );
    expect(
        &f,
        &v4(LISTEN, &[0x40, 0x00, 0x00]),
        Action::Drop,
        Counter::DropTruncated,
    );
    // RFC 7983 classes that are not STUN or ChannelData: ZRTP, DTLS, RTP, beyond.
    for first in [4u8, 16, 20, 22, 63, 128, 191, 255] {
        let mut p = good.clone();
        p[0] = first;
        expect(&f, &v4(LISTEN, &p), Action::Drop, Counter::DropFirstByte);
    }
    // Wrong magic cookie (an RFC 3489 message).
    let mut p = good.clone();
    p[4..8].copy_from_slice(&[1, 2, 3, 4]);
    expect(&f, &v6(LISTEN, &p), Action::Drop, Counter::DropStunCookie);
    // Length not a multiple of 4; longer than the datagram; shorter.
    let mut p = good.clone();
    p[3] = 6;
    expect(&f, &v4(LISTEN, &p), Action::Drop, Counter::DropStunLength);
    let mut p = good.clone();
    p[3] = 12;
    expect(&f, &v4(LISTEN, &p), Action::Drop, Counter::DropStunLength);
    let mut p = good.clone();
    p.extend_from_slice(&[0; 4]);
    expect(&f, &v4(LISTEN, &p), Action::Drop, Counter::DropStunLength);
    // Channel outside 0x4000..=0x4FFF; length past the datagram; >3 bytes over.
    expect(
        &f,
        &v4(LISTEN, &channel_data(0x5000, b"x", 3)),
        Action::Drop,
        Counter::DropChannelNumber,
    );
    expect(
        &f,
        &v6(LISTEN, &channel_data(0x7FFF, b"x", 3)),
        Action::Drop,
        Counter::DropChannelNumber,
    );
    let mut cd = channel_data(0x4000, b"abcd", 0);
    cd[3] = 5;
    expect(
        &f,
        &v4(LISTEN, &cd),
        Action::Drop,
        Counter::DropChannelLength,
    );
    expect(
        &f,
        &v4(LISTEN, &channel_data(0x4000, b"abcd", 4)),
        Action::Drop,
        Counter::DropChannelLength,
    );
    assert_eq!(f.counters().unwrap().total(Verdict::Pass), 0);
}

#[test]
fn relay_range_passes_anything_without_an_xsk() {
    let Some(f) = filter("relay_range_passes_anything_without_an_xsk") else {
        return;
    };
    for dport in [RELAY_LO, 50000, RELAY_HI] {
        expect(
            &f,
            &v4(dport, b"\xffpeer media"),
            Action::Pass,
            Counter::PassRelay,
        );
        expect(&f, &v6(dport, b""), Action::Pass, Counter::PassRelay);
    }
}

#[test]
fn configuration_changes_apply_without_reload() {
    let Some(mut f) = filter("configuration_changes_apply_without_reload") else {
        return;
    };
    let wide = channel_data(0x7ABC, b"x", 0);
    expect(
        &f,
        &v4(LISTEN, &wide),
        Action::Drop,
        Counter::DropChannelNumber,
    );
    let junk = v4(OTHER, b"\xff");
    expect(&f, &junk, Action::Pass, Counter::PassOtherPort);
    f.set_config(&FilterConfig {
        listen_ports: vec![LISTEN, OTHER],
        relay_ports: Some(60000..=60010),
        channel_max: 0x7FFF,
        ..config()
    })
    .unwrap();
    expect(
        &f,
        &v4(LISTEN, &wide),
        Action::Pass,
        Counter::PassChannelData,
    );
    expect(&f, &junk, Action::Drop, Counter::DropFirstByte);
    expect(
        &f,
        &v4(RELAY_LO, b"x"),
        Action::Pass,
        Counter::PassOtherPort,
    );
    expect(&f, &v4(60010, b"x"), Action::Pass, Counter::PassRelay);
    // An empty configuration makes the program a pass-through.
    f.set_config(&FilterConfig::default()).unwrap();
    expect(
        &f,
        &v4(LISTEN, b"\xff"),
        Action::Pass,
        Counter::PassOtherPort,
    );
    assert!(f
        .set_config(&FilterConfig {
            listen_ports: vec![0],
            ..config()
        })
        .is_err());
    assert_eq!(
        f.config(),
        &FilterConfig::default(),
        "a refused config changes nothing"
    );
}

#[test]
fn floods_of_unauthenticated_requests_are_limited_per_source() {
    let Some(mut f) =
        can_bpf("floods_of_unauthenticated_requests_are_limited_per_source").then(|| {
            load(&FilterConfig {
                // One request per 1000 s: nothing refills during the test.
                unauth_rate: 1,
                unauth_burst: 5,
                ..config()
            })
        })
    else {
        return;
    };
    f.set_config(&FilterConfig {
        unauth_rate: 0,
        ..f.config().clone()
    })
    .unwrap();
    // Rate 0 = no limit.
    let binding = stun(BINDING_REQUEST, &[]);
    for _ in 0..20 {
        expect(&f, &v4(LISTEN, &binding), Action::Pass, Counter::PassStun);
    }
    let mut cfg = f.config().clone();
    cfg.unauth_rate = 1;
    cfg.unauth_burst = 5;
    f.set_config(&cfg).unwrap();
    f.clear_sources().unwrap();

    let allocate = stun(ALLOCATE_REQUEST, &[(0x0019, &[17, 0, 0, 0])]);
    for _ in 0..3 {
        expect(&f, &v4(LISTEN, &binding), Action::Pass, Counter::PassStun);
    }
    for _ in 0..2 {
        expect(&f, &v4(LISTEN, &allocate), Action::Pass, Counter::PassStun);
    }
    // The burst of 5 is spent: the flood is dropped, on both ports.
    for _ in 0..50 {
        expect(
            &f,
            &v4(LISTEN, &binding),
            Action::Drop,
            Counter::DropUnauthFlood,
        );
        expect(
            &f,
            &v4(3479, &allocate),
            Action::Drop,
            Counter::DropUnauthFlood,
        );
    }
    // The same source's authenticated requests, responses, indications and
    // ChannelData still pass.
    expect(
        &f,
        &v4(LISTEN, &authenticated_allocate()),
        Action::Pass,
        Counter::PassStun,
    );
    let sha256 = stun(
        ALLOCATE_REQUEST,
        &[
            (ATTR_USERNAME, b"bob"),
            (ATTR_MESSAGE_INTEGRITY_SHA256, &[1; 32]),
        ],
    );
    expect(&f, &v4(LISTEN, &sha256), Action::Pass, Counter::PassStun);
    expect(
        &f,
        &v4(LISTEN, &stun(BINDING_SUCCESS, &[])),
        Action::Pass,
        Counter::PassStun,
    );
    expect(
        &f,
        &v4(LISTEN, &stun(SEND_INDICATION, &[])),
        Action::Pass,
        Counter::PassStun,
    );
    expect(
        &f,
        &v4(LISTEN, &channel_data(0x4000, b"m", 0)),
        Action::Pass,
        Counter::PassChannelData,
    );
    // Another IPv4 source has its own bucket.
    expect(
        &f,
        &v4_from([198, 51, 100, 1], LISTEN, &binding),
        Action::Pass,
        Counter::PassStun,
    );

    // IPv6: one bucket per /64.
    for _ in 0..5 {
        expect(&f, &v6(LISTEN, &binding), Action::Pass, Counter::PassStun);
    }
    let mut same64 = V6_SRC;
    same64[15] = 0x99;
    same64[9] = 0x42;
    expect(
        &f,
        &v6_from(same64, LISTEN, &binding),
        Action::Drop,
        Counter::DropUnauthFlood,
    );
    let mut other64 = V6_SRC;
    other64[7] = 2;
    expect(
        &f,
        &v6_from(other64, LISTEN, &binding),
        Action::Pass,
        Counter::PassStun,
    );

    // MESSAGE-INTEGRITY past the 16th attribute is not looked for: counted
    // as unauthenticated (documented limit of the scan).
    let many: Vec<(u16, &[u8])> = (0..16)
        .map(|_| (ATTR_SOFTWARE, &b"x"[..]))
        .chain([(ATTR_MESSAGE_INTEGRITY, &[0u8; 20][..])])
        .collect();
    expect(
        &f,
        &v4(LISTEN, &stun(ALLOCATE_REQUEST, &many)),
        Action::Drop,
        Counter::DropUnauthFlood,
    );
    let fewer: Vec<(u16, &[u8])> = (0..15)
        .map(|_| (ATTR_SOFTWARE, &b"x"[..]))
        .chain([(ATTR_MESSAGE_INTEGRITY, &[0u8; 20][..])])
        .collect();
    expect(
        &f,
        &v4(LISTEN, &stun(ALLOCATE_REQUEST, &fewer)),
        Action::Pass,
        Counter::PassStun,
    );

    // Forgetting the sources refills every bucket.
    f.clear_sources().unwrap();
    expect(&f, &v4(LISTEN, &binding), Action::Pass, Counter::PassStun);
}

#[test]
// The bucket runs on the kernel's clock; the test bounds what may pass by the
// wall time over which it offered the requests.
#[allow(clippy::disallowed_methods)]
fn the_bucket_refills_at_the_configured_rate() {
    let Some(f) = can_bpf("the_bucket_refills_at_the_configured_rate").then(|| {
        load(&FilterConfig {
            unauth_rate: 20, // one every 50 ms
            unauth_burst: 2,
            ..config()
        })
    }) else {
        return;
    };
    let binding = v4(LISTEN, &stun(BINDING_REQUEST, &[]));
    let mut passed = 0;
    let start = std::time::Instant::now();
    // Offer 40 requests over >= 400 ms: the burst (2) plus one per 50 ms may
    // pass, and at least the burst must.
    for _ in 0..40 {
        if f.test_run(&binding).unwrap() == Action::Pass {
            passed += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let elapsed_ms = start.elapsed().as_millis() as u64;
    let most = 2 + elapsed_ms / 50 + 1;
    assert!(passed >= 2 + 3, "passed {passed} in {elapsed_ms} ms");
    assert!(
        passed as u64 <= most,
        "passed {passed} in {elapsed_ms} ms, at most {most}"
    );
    let c = f.counters().unwrap();
    assert_eq!(c.get(Counter::PassStun), passed as u64);
    assert_eq!(c.get(Counter::DropUnauthFlood), 40 - passed as u64);
}

#[test]
fn counters_sum_over_many_frames() {
    let Some(f) = filter("counters_sum_over_many_frames") else {
        return;
    };
    let good = v4(LISTEN, &stun(BINDING_REQUEST, &[]));
    let bad = v6(LISTEN, b"\x80rtp");
    for _ in 0..100 {
        f.test_run(&good).unwrap();
        f.test_run(&bad).unwrap();
    }
    let c: Counters = f.counters().unwrap();
    assert_eq!(c.get(Counter::PassStun), 100);
    assert_eq!(c.get(Counter::DropFirstByte), 100);
    assert_eq!(c.total(Verdict::Pass), 100);
    assert_eq!(c.total(Verdict::Drop), 100);
    assert_eq!(c.total(Verdict::Redirect), 0);
}
