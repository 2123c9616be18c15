//! The relay fast path allocates nothing: ChannelData and Send indications
//! from clients, and peer datagrams to clients as ChannelData or Data
//! indications, go through `Server` with zero heap allocations once warm.
//!
//! Its own test binary, so the counting global allocator sees only this test.
//! Allocations are counted only on the measuring thread, inside the measured
//! region (a thread-local flag), so the test harness's own threads and the
//! setup do not disturb the count.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use support::*;
use tern_turn::{Via, PEER_HEADROOM, PEER_TAILROOM};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    // `try_with`: during thread teardown the flag may be gone; nothing to count then.
    if MEASURING.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` unchanged; counting touches only an
// atomic and a const-initialised thread-local `Cell`, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Run `f` and return how many heap allocations it made on this thread.
fn count_allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    MEASURING.with(|m| m.set(true));
    f();
    MEASURING.with(|m| m.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

const ROUNDS: u64 = 100_000;

#[test]
fn relay_fast_path_does_not_allocate() {
    // The counter works: a Vec allocates.
    assert!(count_allocations(|| drop(black_box(vec![1u8; 16]))) >= 1);

    let mut h = Harness::new(config());
    let mut c = Client::user("192.0.2.100:40000", "alice");
    let mut c6 = Client::user("[2001:db8::77]:40000", "bob");
    let relay = h.allocate(&mut c).relayed();
    let relay6 = h.allocate_v6(&mut c6).relayed();
    let (chan_peer, ind_peer, peer6) = (
        sa("8.8.8.8:5000"),
        sa("8.8.4.4:6000"),
        sa("[2606:4700::1111]:7000"),
    );
    h.channel_bind(&mut c, 0x4001, chan_peer).ok();
    h.permit(&mut c, &[ind_peer]).ok();
    h.permit(&mut c6, &[peer6]).ok();

    let payload = [0xABu8; 160];
    let cd = channel_data(0x4001, &payload);
    let send = c.send_indication(ind_peer, &payload);
    let send6 = c6.send_indication(peer6, &payload[..77]);
    let mut buf = vec![0u8; PEER_HEADROOM + 1500 + PEER_TAILROOM];
    let (listener, addr, addr6) = (c.listener, c.addr, c6.addr);

    let mut run = |n: u64| {
        let mut relayed = [0u64; 5];
        let mut bytes = 0usize;
        let t0 = h.now;
        for i in 0..n {
            let now = t0 + Duration::from_micros(i);
            let server = &mut h.server;
            let host = &mut h.host;
            if let Some(f) = server.handle_client_packet(host, listener, addr, &cd, now) {
                bytes += black_box(f.payload).len();
                relayed[0] += u64::from(f.to == chan_peer && f.via == Via::Relay(relay));
            }
            if let Some(f) = server.handle_client_packet(host, listener, addr, &send, now) {
                bytes += black_box(f.payload).len();
                relayed[1] += u64::from(f.to == ind_peer);
            }
            if let Some(f) = server.handle_client_packet(host, listener, addr6, &send6, now) {
                bytes += black_box(f.payload).len();
                relayed[1] += u64::from(f.to == peer6 && f.via == Via::Relay(relay6));
            }
            // Peer → client on the channel (ChannelData) ...
            if let Some(f) = server.handle_peer_packet(relay, chan_peer, &mut buf, 160, now) {
                bytes += black_box(f.payload).len();
                relayed[2] += u64::from(f.to == addr && f.payload[0] == 0x40);
            }
            // ... and without one (Data indication), IPv4 and IPv6.
            if let Some(f) = server.handle_peer_packet(relay, ind_peer, &mut buf, 161, now) {
                bytes += black_box(f.payload).len();
                relayed[3] += u64::from(f.to == addr && f.payload[0] == 0x00);
            }
            if let Some(f) = server.handle_peer_packet(relay6, peer6, &mut buf, 1200, now) {
                bytes += black_box(f.payload).len();
                relayed[4] += u64::from(f.to == addr6);
            }
            // Dropped datagrams are counted, not allocated for, either.
            black_box(server.handle_client_packet(host, listener, addr, &[0x40, 0x09, 0, 0], now));
            black_box(server.handle_peer_packet(relay, sa_const(), &mut buf, 10, now));
            black_box(server.poll_transmit());
            black_box(server.poll_event());
        }
        h.now = t0 + Duration::from_micros(n);
        (relayed, bytes)
    };

    // Warm-up: lets every lazily grown structure reach its size.
    let (relayed, _) = run(1_000);
    assert_eq!(relayed, [1_000, 2_000, 1_000, 1_000, 1_000]);

    let mut result = ([0u64; 5], 0usize);
    let allocations = count_allocations(|| result = run(ROUNDS));
    let (relayed, bytes) = result;
    assert_eq!(
        relayed,
        [ROUNDS, 2 * ROUNDS, ROUNDS, ROUNDS, ROUNDS],
        "everything relayed"
    );
    assert!(bytes > 0);
    assert_eq!(allocations, 0, "heap allocations on the relay fast path");
    assert_eq!(h.server.stats().packets_to_peer, 3 * (ROUNDS + 1_000));
    assert_eq!(h.server.stats().packets_to_client, 3 * (ROUNDS + 1_000));
}

/// A peer with no permission (so its datagram is dropped).
fn sa_const() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([9, 9, 9, 9], 9))
}
