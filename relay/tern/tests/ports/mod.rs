//! Relay port windows for tests: probed free a moment before use, never assumed
//! (other processes on a shared machine may hold any fixed range). The relay
//! skips a port taken in between, so a window only has to be mostly free.
#![allow(dead_code, unreachable_pub)] // each test file uses its own subset

use std::net::UdpSocket;
use std::sync::atomic::{AtomicU16, Ordering};

/// Spreads the windows that tests of one process pick.
static NEXT: AtomicU16 = AtomicU16::new(0);

/// `n` consecutive UDP ports in 20000–59999 that are all free on 127.0.0.1 now.
pub fn free_relay_ports(n: u16) -> (u16, u16) {
    assert!((1..=1000).contains(&n), "window of {n} ports");
    let windows = 40_000 / n;
    // The process id varies the start between test binaries running at once.
    let start = (std::process::id() % u32::from(windows)) as u16;
    for _ in 0..500 {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let lo = 20_000 + (start.wrapping_add(k.wrapping_mul(17)) % windows) * n;
        let hi = lo + (n - 1);
        if (lo..=hi).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return (lo, hi);
        }
    }
    panic!("no free window of {n} UDP ports in 20000-59999");
}

/// [`free_relay_ports`] as the `LO-HI` text of `--relay-ports`.
pub fn free_relay_range(n: u16) -> String {
    let (lo, hi) = free_relay_ports(n);
    format!("{lo}-{hi}")
}
