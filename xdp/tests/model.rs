//! Property test: on frames built from valid templates and then mutated
//! (bytes overwritten, tails cut), the program's verdict and counter equal a
//! plain-Rust model of the rules written from the issue, not from the C.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tern_xdp::{Action, Counter, FilterConfig};

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// What the pre-filter must do with `f` (the unauthenticated limit is off).
fn model(f: &[u8], cfg: &FilterConfig) -> Counter {
    use Counter::*;
    let len = f.len();
    let mut proto = be16(f, 12);
    let mut off = 14;
    for _ in 0..2 {
        if proto != 0x8100 && proto != 0x88A8 {
            break;
        }
        if off + 4 > len {
            return PassUnparsed;
        }
        proto = be16(f, off + 2);
        off += 4;
    }
    let (udp, l4_room) = match proto {
        0x0800 => {
            if off + 20 > len || f[off] >> 4 != 4 || f[off] & 15 < 5 {
                return PassUnparsed;
            }
            if f[off + 9] != 17 {
                return PassNotUdp;
            }
            if be16(f, off + 6) & 0x3FFF != 0 {
                return PassFragment;
            }
            let ihl = usize::from(f[off] & 15) * 4;
            let total = usize::from(be16(f, off + 2));
            if total < ihl {
                return PassUnparsed;
            }
            (off + ihl, total - ihl)
        }
        0x86DD => {
            if off + 40 > len || f[off] >> 4 != 6 {
                return PassUnparsed;
            }
            match f[off + 6] {
                17 => {}
                0 | 43 | 44 | 60 | 51 | 50 => return PassIpv6Ext,
                _ => return PassNotUdp,
            }
            (off + 40, usize::from(be16(f, off + 4)))
        }
        _ => return PassNotIp,
    };
    if udp + 8 > len {
        return PassUnparsed;
    }
    let port = be16(f, udp + 2);
    let listen = cfg.listen_ports.contains(&port);
    let relay = !listen && cfg.relay_ports.as_ref().is_some_and(|r| r.contains(&port));
    if !listen && !relay {
        return PassOtherPort;
    }
    let ulen = usize::from(be16(f, udp + 4));
    if ulen < 8 || ulen > l4_room || udp + ulen > len {
        return DropUdpLength;
    }
    if relay {
        return PassRelay;
    }
    let p = &f[udp + 8..udp + ulen];
    match p.first() {
        None => DropTruncated,
        Some(0..=3) => {
            if p.len() < 20 {
                DropTruncated
            } else if p[4..8] != [0x21, 0x12, 0xA4, 0x42] {
                DropStunCookie
            } else if be16(p, 2) % 4 != 0 || usize::from(be16(p, 2)) + 20 != p.len() {
                DropStunLength
            } else {
                PassStun
            }
        }
        Some(64..=127) => {
            if p.len() < 4 {
                DropTruncated
            } else if be16(p, 0) > cfg.channel_max {
                DropChannelNumber
            } else {
                let need = usize::from(be16(p, 2)) + 4;
                if need > p.len() || p.len() - need > 3 {
                    DropChannelLength
                } else {
                    PassChannelData
                }
            }
        }
        Some(_) => DropFirstByte,
    }
}

fn templates() -> Vec<Vec<u8>> {
    let stun_msg = authenticated_allocate();
    let cd = channel_data(0x4ABC, b"media payload", 3);
    let mut out = Vec::new();
    for payload in [&stun_msg[..], &cd[..], b"\x80\x00rtp-ish"] {
        for dport in [LISTEN, RELAY_LO + 7, OTHER] {
            for tags in [&[][..], &[VLAN_8021Q], &[VLAN_8021AD, VLAN_8021Q]] {
                let mut f = eth(ETH_IPV4, tags);
                f.extend(ipv4(V4_SRC, 17, &udp(1234, dport, payload)));
                out.push(f);
                let mut f = eth(ETH_IPV6, tags);
                f.extend(ipv6(V6_SRC, 17, &udp(1234, dport, payload)));
                out.push(f);
            }
        }
    }
    out
}

#[test]
fn mutated_frames_match_the_model() {
    if !can_bpf("mutated_frames_match_the_model") {
        return;
    }
    let cfg = config();
    let f = load(&cfg);
    let templates = templates();
    let n = templates.len();
    let strategy = (
        0..n,
        prop::collection::vec((0usize..120, any::<u8>()), 0..4),
        prop::option::of(14usize..200),
    );
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        failure_persistence: None,
        ..Config::default()
    });
    let seen = std::cell::RefCell::new(std::collections::HashSet::new());
    runner
        .run(&strategy, |(t, edits, cut)| {
            let mut frame = templates[t].clone();
            for (at, byte) in edits {
                if let Some(b) = frame.get_mut(at) {
                    *b = byte;
                }
            }
            if let Some(cut) = cut {
                frame.truncate(cut.max(14));
            }
            let want = model(&frame, &cfg);
            let before = f.counters().unwrap();
            let got = f.test_run(&frame).unwrap();
            let delta = f.counters().unwrap().since(&before);
            let expect_action = match want.verdict() {
                tern_xdp::Verdict::Pass => Action::Pass,
                tern_xdp::Verdict::Drop => Action::Drop,
                tern_xdp::Verdict::Redirect => Action::Redirect,
            };
            prop_assert_eq!(got, expect_action, "frame {:02x?}", frame);
            prop_assert_eq!(delta.get(want), 1, "frame {:02x?}: {:?}", frame, delta);
            seen.borrow_mut().insert(want);
            Ok(())
        })
        .unwrap();
    // The mutations reach most outcomes, so the comparison means something.
    let seen = seen.into_inner();
    assert!(seen.len() >= 12, "outcomes reached: {seen:?}");
}
