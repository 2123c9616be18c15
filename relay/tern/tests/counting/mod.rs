//! The counting allocator of the zero-allocation proofs (`no_alloc*.rs`, each
//! a `harness = false` test binary that installs it as its global allocator):
//! while armed, allocations on threads named `tern-worker-N` count, others
//! are counted apart, and the test's own main thread is exempt. Also the
//! driver that runs a proof once per packet I/O back end the kernel can run
//! (or only the one `TERN_TEST_IO_BACKEND` names) and reports in libtest's words.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tern::config::IoBackend;
use tern_io::BackendKind;

pub(crate) struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static OTHER_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

const UNKNOWN: u8 = 0;
const WORKER: u8 = 1;
const OTHER: u8 = 2;
const FINDING_OUT: u8 = 3;

thread_local! {
    /// Set on threads whose allocations do not count (the test's own).
    static EXEMPT: Cell<bool> = const { Cell::new(false) };
    /// Whether this thread is a relay worker, found out on its first counted allocation.
    static ROLE: Cell<u8> = const { Cell::new(UNKNOWN) };
}

fn count() {
    // try_with: during thread teardown the flags are gone; such a thread is not
    // relaying, so its allocations do not count.
    if !ARMED.load(Ordering::Relaxed) || EXEMPT.try_with(Cell::get).unwrap_or(true) {
        return;
    }
    let role = ROLE
        .try_with(|role| {
            if role.get() == UNKNOWN {
                // Allocations made while looking up the name are not counted;
                // this one is, once the role is known.
                role.set(FINDING_OUT);
                let worker = std::thread::current()
                    .name()
                    .is_some_and(|n| n.starts_with("tern-worker-"));
                role.set(if worker { WORKER } else { OTHER });
            }
            role.get()
        })
        .unwrap_or(FINDING_OUT);
    match role {
        WORKER => ALLOCATIONS.fetch_add(1, Ordering::Relaxed),
        OTHER => OTHER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed),
        _ => 0,
    };
}

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged; counting touches only an atomic and a const thread-local.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged; the caller upholds GlobalAlloc::alloc's contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above; `ptr` was allocated by System through this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Zero both counters.
pub(crate) fn reset() {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    OTHER_ALLOCATIONS.store(0, Ordering::SeqCst);
}

/// Start counting.
pub(crate) fn arm() {
    ARMED.store(true, Ordering::SeqCst);
}

/// Stop counting; returns (worker allocations, other threads' allocations).
pub(crate) fn disarm() -> (u64, u64) {
    ARMED.store(false, Ordering::SeqCst);
    (
        ALLOCATIONS.load(Ordering::SeqCst),
        OTHER_ALLOCATIONS.load(Ordering::SeqCst),
    )
}

/// The counter must see allocations of worker threads, or a proof could never fail.
pub(crate) fn counter_sees_other_threads() -> Result<(), String> {
    ARMED.store(true, Ordering::SeqCst);
    let joined = std::thread::Builder::new()
        .name("tern-worker-check".to_owned())
        .spawn(|| std::hint::black_box(vec![1u8; 64]).len())
        .map_err(|e| e.to_string())?
        .join();
    ARMED.store(false, Ordering::SeqCst);
    let seen = ALLOCATIONS.swap(0, Ordering::SeqCst);
    match joined {
        Ok(64) if seen > 0 => Ok(()),
        _ => Err(format!(
            "counting allocator saw {seen} allocations of a spawned thread"
        )),
    }
}

/// Run `proof` on every back end (or `TERN_TEST_IO_BACKEND`'s), as test `{name}::{backend}`.
#[allow(clippy::print_stdout)] // without libtest, this reports in libtest's words
pub(crate) fn main(name: &str, proof: fn(IoBackend) -> Result<(), String>) -> ExitCode {
    EXEMPT.with(|e| e.set(true));
    let backends = match std::env::var("TERN_TEST_IO_BACKEND") {
        Ok(value) => match value.parse::<IoBackend>() {
            Ok(b) => vec![b],
            Err(e) => {
                println!("TERN_TEST_IO_BACKEND={value}: {e}");
                return ExitCode::FAILURE;
            }
        },
        Err(_) => vec![IoBackend::Mmsg, IoBackend::Uring],
    };
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    for backend in backends {
        let test = format!("{name}::{backend}");
        if let Some(Err(e)) = backend.requested().map(BackendKind::probe) {
            println!("test {test} ... ignored ({e})");
            ignored += 1;
            continue;
        }
        match proof(backend) {
            Ok(()) => {
                println!("test {test} ... ok");
                passed += 1;
            }
            Err(e) => {
                println!("test {test} ... FAILED\n{e}");
                failed += 1;
            }
        }
    }
    let result = if failed == 0 { "ok" } else { "FAILED" };
    println!("\ntest result: {result}. {passed} passed; {failed} failed; {ignored} ignored");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
