//! Proves that the AF_XDP back end ([`XdpIo`]) allocates nothing per packet:
//! a relay loop's turn (wait, receive a batch from the XSK, send each
//! datagram back through the TX ring, flush) over 20,000 datagrams each way,
//! IPv4 and IPv6, with every allocation counted while the back end runs.
//!
//! The topology: two throwaway namespaces (prefix `txdp-`) joined by a veth
//! pair; tern's XDP program redirects the relay's ports into the XSK on one
//! end; clients on the other end send and read the echoes. Needs root (skips
//! otherwise, fails with `TERN_REQUIRE_INTEROP=1`).
//!
//! `harness = false`: this main thread is the only thread, so nothing else can
//! allocate while counting; the counter is armed only around the back end's
//! own calls, not around the clients' socket calls.
#![allow(clippy::disallowed_methods)] // the test waits on the clock

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tern_io::xsk::{XdpConfig, XdpIo};
use tern_io::{PacketIo, RecvBatch};
use tern_xdp::{AttachMode, Filter, FilterConfig};

mod netns;
use netns::{can_run, parse_mac, Netns};

struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged; counting touches only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged; the caller upholds GlobalAlloc::alloc's contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above; `ptr` was allocated by System through this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARM_UP: usize = 1_000;
const MEASURED: usize = 10_000;
const BURST: usize = 16;
const PAYLOAD: usize = 160;
const LISTEN: &str = "10.82.0.2:3478";
const RELAYED6: &str = "[fd82::2]:50001";

/// Run `f` with the counter armed.
fn counted<T>(f: impl FnOnce() -> T) -> T {
    ARMED.store(true, Ordering::SeqCst);
    let out = f();
    ARMED.store(false, Ordering::SeqCst);
    out
}

#[allow(clippy::print_stdout)] // without libtest, this reports in libtest's words
fn main() -> ExitCode {
    const NAME: &str = "no_alloc_xsk::xdp_io_echo";
    if !can_run(NAME) {
        println!("test {NAME} ... ignored\n\ntest result: ok. 0 passed; 0 failed; 1 ignored");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => {
            println!("test {NAME} ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!(
                "test {NAME} ... FAILED\n{e}\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored"
            );
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    // The counter must see this thread's allocations, or the proof could never fail.
    let seen = counted(|| std::hint::black_box(vec![1u8; 64]).len());
    if seen != 64 || ALLOCATIONS.swap(0, Ordering::SeqCst) == 0 {
        return Err("the counting allocator saw nothing".into());
    }

    let a = Netns::new("na");
    let b = Netns::new("nb");
    a.exec(&[
        "ip", "link", "add", "txdpa", "type", "veth", "peer", "name", "txdpb", "netns", &b.0,
    ]);
    for (ns, dev, v4, v6) in [
        (&a, "txdpa", "10.82.0.1/24", "fd82::1/64"),
        (&b, "txdpb", "10.82.0.2/24", "fd82::2/64"),
    ] {
        ns.exec(&["ip", "addr", "add", v4, "dev", dev]);
        ns.exec(&["ip", "addr", "add", v6, "dev", dev, "nodad"]);
        ns.exec(&["ip", "link", "set", dev, "up"]);
        // Frames from the local stack would carry a checksum left to offload.
        ns.exec(&["ethtool", "-K", dev, "tx", "off"]);
    }
    // Next hops known up front: no ARP/ND while counting.
    for (ns, dev, other, ips) in [
        (&a, "txdpa", ("b", "txdpb"), ["10.82.0.2", "fd82::2"]),
        (&b, "txdpb", ("a", "txdpa"), ["10.82.0.1", "fd82::1"]),
    ] {
        let other_ns = if other.0 == "a" { &a } else { &b };
        let mac = other_ns.exec(&["cat", &format!("/sys/class/net/{}/address", other.1)]);
        let _checked = parse_mac(&mac);
        for ip in ips {
            ns.exec(&[
                "ip",
                "neigh",
                "replace",
                ip,
                "lladdr",
                mac.trim(),
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
    }

    let filter = Filter::load(&FilterConfig {
        listen_ports: vec![3478],
        relay_ports: Some(50000..=50999),
        redirect_listen: true,
        redirect_relay: true,
        ..FilterConfig::default()
    })
    .map_err(|e| format!("load: {e}"))?;
    let (mut io, _attached) = {
        let _in_b = b.enter();
        let att = filter
            .attach("txdpb", AttachMode::Native)
            .map_err(|e| format!("attach: {e}"))?;
        let mut io = XdpIo::new(XdpConfig::new("txdpb", 0)).map_err(|e| format!("XdpIo: {e}"))?;
        let mut add = |addr: &str| {
            io.add_socket(UdpSocket::bind(addr).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())
        };
        add(LISTEN)?;
        add(RELAYED6)?;
        (io, att)
    };
    filter
        .register_xsk(io.queue(), io.xsk_fd())
        .map_err(|e| format!("register: {e}"))?;
    let (c4, c6) = {
        let _in_a = a.enter();
        let c4 = UdpSocket::bind("10.82.0.1:0").map_err(|e| e.to_string())?;
        let c6 = UdpSocket::bind("[fd82::1]:0").map_err(|e| e.to_string())?;
        for s in [&c4, &c6] {
            s.set_read_timeout(Some(Duration::from_secs(3)))
                .map_err(|e| e.to_string())?;
        }
        (c4, c6)
    };
    let to4: SocketAddr = LISTEN.parse().unwrap();
    let to6: SocketAddr = RELAYED6.parse().unwrap();

    // STUN-shaped, so the filter's listening-port checks pass it.
    let mut msg4 = vec![0u8; PAYLOAD];
    msg4[..8].copy_from_slice(&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42]);
    msg4[2..4].copy_from_slice(&((PAYLOAD - 20) as u16).to_be_bytes());
    let mut msg6 = vec![0x6Au8; PAYLOAD];
    let mut batch = RecvBatch::new(64, 2048, 48, 4);
    let mut buf = vec![0u8; 2048];

    let mut exchange = |rounds: usize, io: &mut XdpIo| -> Result<u64, String> {
        let mut allocations = 0;
        let mut done = 0;
        while done < rounds {
            let n = BURST.min(rounds - done);
            for i in 0..n {
                msg4[19] = i as u8;
                msg6[0] = i as u8;
                c4.send_to(&msg4, to4).map_err(|e| e.to_string())?;
                c6.send_to(&msg6, to6).map_err(|e| e.to_string())?;
            }
            let mut echoed = 0;
            let deadline = Instant::now() + Duration::from_secs(5);
            while echoed < 2 * n && Instant::now() < deadline {
                ALLOCATIONS.store(0, Ordering::SeqCst);
                let turn = counted(|| -> Result<usize, String> {
                    io.wait(Some(Duration::from_millis(50)))
                        .map_err(|e| e.to_string())?;
                    let mut got = 0;
                    while io.recv(&mut batch) > 0 {
                        for (meta, payload) in batch.iter() {
                            io.send(meta.socket, meta.source, payload);
                        }
                        got += batch.len();
                        io.flush_before_wait();
                    }
                    io.flush();
                    Ok(got)
                });
                allocations += ALLOCATIONS.load(Ordering::SeqCst);
                echoed += turn?;
            }
            if echoed != 2 * n {
                return Err(format!(
                    "{echoed} of {} echoed: {:?}",
                    2 * n,
                    io.xdp_stats()
                ));
            }
            for (sock, from, len) in [(&c4, to4, PAYLOAD), (&c6, to6, PAYLOAD)] {
                for _ in 0..n {
                    let (got, src) = sock
                        .recv_from(&mut buf)
                        .map_err(|e| format!("echo from {from}: {e}"))?;
                    if got != len || src != from {
                        return Err(format!("{got} bytes from {src}, wanted {len} from {from}"));
                    }
                }
            }
            done += n;
        }
        Ok(allocations)
    };

    exchange(WARM_UP, &mut io)?;
    let before = io.xdp_stats();
    let allocations = exchange(MEASURED, &mut io)?;
    let after = io.xdp_stats();
    let rx_xsk = after.rx_xsk - before.rx_xsk;
    let tx_xsk = after.tx_xsk - before.tx_xsk;
    // A momentarily full TX ring hands a datagram to the kernel instead
    // (counted); everything else must have gone through the XSK.
    let tx_full = after.tx_kernel_ring_full - before.tx_kernel_ring_full;
    let want = 2 * MEASURED as u64;
    if rx_xsk != want || tx_xsk + tx_full != want || tx_xsk < want * 9 / 10 {
        return Err(format!(
            "not every datagram went through the XSK: received {rx_xsk}, sent {tx_xsk} \
             (+{tx_full} through the kernel on a full ring) of {want} ({after:?})"
        ));
    }
    if allocations != 0 {
        return Err(format!(
            "the AF_XDP back end allocated {allocations} times while echoing {MEASURED} datagrams \
             each way (IPv4 and IPv6)"
        ));
    }
    Ok(())
}
