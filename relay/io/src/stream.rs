//! The stream capability of a completion back end: TCP receives and sends
//! submitted on the worker's own ring (see [`StreamRing`]).
//!
//! Owns: only the contract. The caller (tern's stream module) owns the
//! connections, their sockets and their buffers; a back end that offers this
//! capability turns its calls into SQEs, submitted with the loop's next
//! `io_uring_enter`, and hands the completions back in order.

use std::io;
use std::os::fd::RawFd;

/// Which stream operation a [`StreamCompletion`] ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamOp {
    /// A [`StreamRing::recv_into`].
    Recv,
    /// A [`StreamRing::send_from`].
    Send,
    /// One connection (or error) of a [`StreamRing::accept_multi`].
    Accept,
}

/// The end of one stream operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamCompletion {
    /// The token the operation was submitted with.
    pub token: u64,
    /// Which operation it was.
    pub op: StreamOp,
    /// Bytes received or sent (0 on a receive: the peer closed), the
    /// accepted connection's descriptor (the caller owns it), or a negated
    /// errno (`-ECANCELED` for a cancelled operation).
    pub result: i32,
    /// A multishot accept goes on after this completion; `false` on its
    /// last one (and always for receives and sends).
    pub more: bool,
}

/// TCP receives and sends on a back end's ring, driven by completions.
///
/// Each operation is one SQE submitted no later than the next
/// [`crate::PacketIo::wait`]; its end comes back through
/// [`StreamRing::take_completion`] exactly once, whatever happened (also
/// after [`StreamRing::cancel`], also for a socket closed meanwhile). Until
/// then the kernel owns the buffer it was given: the caller neither frees,
/// moves nor touches those bytes (it may use the rest of the same
/// allocation). A caller that closes a connection cancels its operations and
/// keeps the buffers until their completions are taken.
pub trait StreamRing {
    /// Receive at most `len` bytes from stream socket `fd` into `buf`.
    ///
    /// # Safety
    /// `buf..buf + len` must stay valid for writes, and untouched by the
    /// caller, until the completion carrying `token` has been taken.
    unsafe fn recv_into(&mut self, fd: RawFd, buf: *mut u8, len: u32, token: u64)
        -> io::Result<()>;

    /// Send `len` bytes from `buf` on stream socket `fd`. The kernel may send
    /// fewer (a short send, reported in the completion); it waits for room
    /// in the socket's buffer rather than failing.
    ///
    /// # Safety
    /// `buf..buf + len` must stay valid, and unmodified, until the
    /// completion carrying `token` has been taken.
    unsafe fn send_from(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: u32,
        token: u64,
    ) -> io::Result<()>;

    /// Accept connections on listening socket `fd` until cancelled or an
    /// error ends it (then `more` is false on the last completion): one
    /// completion per connection, whose descriptor the caller owns from then.
    fn accept_multi(&mut self, fd: RawFd, token: u64) -> io::Result<()>;

    /// Cancel every stream operation on `fd`; each still ends with a
    /// completion (`-ECANCELED`, or its result if it finished first).
    fn cancel(&mut self, fd: RawFd) -> io::Result<()>;

    /// The next completed stream operation, in completion order. Costs no
    /// system call.
    fn take_completion(&mut self) -> Option<StreamCompletion>;

    /// Whether [`StreamRing::take_completion`] has something now (looks at
    /// the completion queue; no system call).
    fn has_completions(&mut self) -> bool;

    /// Stream operations whose completion has not been taken yet.
    fn in_flight(&self) -> usize;
}
