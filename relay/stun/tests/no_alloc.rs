//! Proves the packet-path API allocates nothing: a counting global allocator
//! watches this thread while messages are parsed, verified, iterated,
//! decoded and written.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;

use tern_stun::{
    attr, decode_error_code, decode_xor_address, long_term_key_sha256, write_channel_data_header,
    write_data_indication, ChannelData, Class, Message, MessageWriter, Method, TransactionId,
};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter is a const-initialised thread-local that never allocates itself.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

#[test]
fn the_counter_sees_allocations() {
    let n = allocations_in(|| drop(std::hint::black_box(Vec::<u8>::with_capacity(64))));
    assert!(n > 0);
}

#[test]
fn packet_path_does_not_allocate() {
    let peer: SocketAddr = "[2001:db8::1]:40000".parse().unwrap();
    let tid = TransactionId([0x11; 12]);
    let mut buf = [0u8; 1500];
    let mut out = [0u8; 1500];
    let mut unknown = [0u16; 4];

    let n = allocations_in(|| {
        let key = long_term_key_sha256("user", "realm", "pass");
        let mut w = MessageWriter::new(&mut buf, Method::ALLOCATE, Class::Error, tid).unwrap();
        w.add_error_code(401, "Unauthorized").unwrap();
        w.add_xor_address(attr::XOR_PEER_ADDRESS, peer).unwrap();
        w.add_text(attr::REALM, "realm").unwrap();
        w.add_raw(0x7001, b"unknown").unwrap();
        w.add_message_integrity(&key).unwrap();
        w.add_message_integrity_sha256(&key).unwrap();
        w.add_fingerprint().unwrap();
        let len = w.finish();

        let m = Message::parse(&buf[..len]).unwrap();
        m.verify_integrity(&key).unwrap();
        m.verify_integrity_sha256(&key).unwrap();
        assert_eq!(m.attributes().count(), 7);
        assert_eq!(
            m.unknown_required(|t| attr::name(t).is_some(), &mut unknown),
            1
        );
        let (code, _) = decode_error_code(m.get(attr::ERROR_CODE).unwrap().value).unwrap();
        assert_eq!(code, 401);
        let a = m.get(attr::XOR_PEER_ADDRESS).unwrap();
        assert_eq!(
            decode_xor_address(a.value, &m.transaction_id()).unwrap(),
            peer
        );

        let total = write_data_indication(&mut out, tid, peer, 100).unwrap();
        assert!(Message::parse(&out[..total]).is_ok());
        write_channel_data_header(&mut out, 0x4001, 100).unwrap();
        assert_eq!(ChannelData::parse(&out[..104]).unwrap().data.len(), 100);
    });
    assert_eq!(n, 0, "the codec allocated {n} times");
}
