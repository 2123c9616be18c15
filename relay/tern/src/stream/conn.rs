//! One TCP or TLS connection of a stream client: its socket, its fixed read
//! and write buffers, its rustls session when it is TLS, and the cutting of
//! the received bytes into whole STUN/ChannelData messages.
//!
//! Owns: the bytes of one connection. Must not touch: other connections,
//! limits, the epoll registration, the ring (all in [`super::Streams`]).
//!
//! A connection is driven one of two ways, fixed at accept. *Readiness*
//! (the mmsg back end): it reads and writes its socket itself when the epoll
//! says so. *Completion* (`ring`, the io_uring back end): it never makes a
//! syscall on the data path; [`super::Streams`] submits a receive into the
//! free end of its read buffer ([`Conn::recv_target`]) and a send of its
//! queued bytes ([`Conn::send_target`]) on the worker's ring, and hands the
//! results back ([`Conn::on_recv`], [`Conn::on_send`]). While an operation is
//! in flight the kernel owns the bytes it names (the read buffer's free end;
//! the write buffer's `wstart..wstart + send_flight`); the connection only
//! touches other bytes of those buffers meanwhile. TLS under the ring
//! receives records into `tin` and feeds rustls from that slice
//! (`read_tls`), and encrypts into the write buffer (`write_tls`).

use std::io::{self, Read, Write};
use std::time::Instant;

use tern_stun::framing::{frame_len, Frame, FrameError};
use tern_turn::FiveTuple;

use super::{CloseReason, MAX_FRAME, READ_BUF, TLS_IN_BUF, WRITE_BUF};

pub(super) struct Conn {
    socket: mio::net::TcpStream,
    ft: FiveTuple,
    pub(super) gen: u32,
    /// Received bytes (TLS: plaintext) not yet cut into messages: `rbuf[..rlen]`.
    rbuf: Box<[u8]>,
    rlen: usize,
    /// Plain TCP: bytes queued for the client, `wbuf[wstart..wend]`. TLS
    /// connections queue into their rustls session instead (and have no wbuf).
    wbuf: Box<[u8]>,
    wstart: usize,
    wend: usize,
    tls: Option<Box<rustls::ServerConnection>>,
    pub(super) accepted: Instant,
    pub(super) last_rx: Instant,
    /// The core made an allocation on this connection and it is alive.
    pub(super) allocated: bool,
    /// On the ready list.
    pub(super) queued: bool,
    /// On the dirty (to flush) list.
    pub(super) dirty: bool,
    /// RFC 6062: a peer connection of a TCP allocation (its CONNECTION-ID
    /// once the core gave one), not a client.
    pub(super) peer: Option<Option<u32>>,
    /// RFC 6062: an outgoing peer connection whose handshake is in progress.
    pub(super) connecting: bool,
    /// RFC 6062: spliced to this other connection (slot, generation); bytes
    /// are relayed raw, without framing.
    pub(super) partner: Option<(u32, u32)>,
    /// Raw: stopped reading because the partner's buffer was full.
    pub(super) blocked: bool,
    /// Counted against the shared connection limits.
    pub(super) counted: bool,
    /// Reading stopped at a message for another worker.
    stopped: bool,
    /// Driven by completions on the worker's ring (see the module docs).
    pub(super) ring: bool,
    /// Ring: a receive is in flight (into `rbuf[rlen..]`, or `tin[tlen..]` for TLS).
    pub(super) recv_flight: bool,
    /// Ring: bytes of `wbuf[wstart..]` a send in flight carries (0: none).
    pub(super) send_flight: usize,
    /// Ring: how the receive side ended (EOF or error), once every byte
    /// before it has been handled.
    rx_end: Option<CloseReason>,
    /// Ring, TLS: records received and not yet taken by rustls: `tin[tstart..tlen]`.
    tin: Box<[u8]>,
    tstart: usize,
    tlen: usize,
    /// On the list of connections whose receive [`super::Streams`] re-arms.
    pub(super) arm_queued: bool,
}

/// How a [`Conn::read`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadOutcome {
    /// The socket has nothing more now.
    Drained,
    /// The budget ran out; there may be more.
    More,
    /// The callback stopped at a message, which stays buffered.
    Stopped,
}

impl Conn {
    pub(super) fn new(
        socket: mio::net::TcpStream,
        ft: FiveTuple,
        gen: u32,
        tls: Option<Box<rustls::ServerConnection>>,
        now: Instant,
        ring: bool,
    ) -> Conn {
        // Readiness TLS writes straight from rustls to the socket; the ring
        // needs the records in a buffer of ours to send from.
        let wbuf = if tls.is_some() && !ring {
            Box::default()
        } else {
            vec![0u8; WRITE_BUF].into_boxed_slice()
        };
        let tin = if tls.is_some() && ring {
            vec![0u8; TLS_IN_BUF].into_boxed_slice()
        } else {
            Box::default()
        };
        Conn {
            socket,
            ft,
            gen,
            rbuf: vec![0u8; READ_BUF].into_boxed_slice(),
            rlen: 0,
            wbuf,
            wstart: 0,
            wend: 0,
            tls,
            accepted: now,
            last_rx: now,
            allocated: false,
            queued: false,
            dirty: false,
            peer: None,
            connecting: false,
            partner: None,
            blocked: false,
            counted: true,
            stopped: false,
            ring,
            recv_flight: false,
            send_flight: 0,
            rx_end: None,
            tin,
            tstart: 0,
            tlen: 0,
            arm_queued: false,
        }
    }

    /// Ring: any operation in flight (the kernel owns some of our bytes).
    pub(super) fn in_flight(&self) -> bool {
        self.recv_flight || self.send_flight > 0
    }

    /// Ring: where the next receive goes, if one should be submitted now:
    /// none while one is in flight, after the receive side ended, while
    /// reading stopped, or while the buffer is full (it is re-armed once the
    /// bytes have been handled).
    pub(super) fn recv_target(&mut self) -> Option<(*mut u8, u32)> {
        if !self.ring || self.recv_flight || self.rx_end.is_some() || self.stopped {
            return None;
        }
        if self.tls.is_some() {
            if self.tstart > 0 {
                // Nothing of `tin` is in flight: the bytes may move.
                self.tin.copy_within(self.tstart..self.tlen, 0);
                self.tlen -= self.tstart;
                self.tstart = 0;
            }
            let free = &mut self.tin[self.tlen..];
            return (!free.is_empty()).then_some((free.as_mut_ptr(), free.len() as u32));
        }
        let free = &mut self.rbuf[self.rlen..];
        (!free.is_empty()).then_some((free.as_mut_ptr(), free.len() as u32))
    }

    /// Ring: a receive ended with `result` (bytes, 0 at EOF, or -errno).
    pub(super) fn on_recv(&mut self, result: i32, now: Instant) {
        self.recv_flight = false;
        match result {
            n if n > 0 => {
                let n = n as usize;
                if self.tls.is_some() {
                    self.tlen = (self.tlen + n).min(self.tin.len());
                } else {
                    self.rlen = (self.rlen + n).min(self.rbuf.len());
                }
                self.last_rx = now;
            }
            0 => self.rx_end = Some(CloseReason::PeerClosed),
            e if e == -libc::ECANCELED => {}
            _ => self.rx_end = Some(CloseReason::Reset),
        }
    }

    /// Ring: what the next send carries, if one should be submitted now (TLS
    /// records are moved from the session into the write buffer first).
    pub(super) fn send_target(&mut self) -> Option<(*const u8, u32)> {
        if !self.ring || self.send_flight > 0 {
            return None;
        }
        self.tls_to_wbuf();
        if self.wstart == self.wend {
            return None;
        }
        let len = (self.wend - self.wstart).min(u32::MAX as usize);
        self.send_flight = len;
        Some((self.wbuf[self.wstart..].as_ptr(), len as u32))
    }

    /// Ring: a send ended with `result` (bytes sent or -errno). Ok(true):
    /// bytes are left (a short send, or more queued meanwhile) to send next.
    pub(super) fn on_send(&mut self, result: i32) -> Result<bool, CloseReason> {
        let carried = std::mem::take(&mut self.send_flight);
        match result {
            n if n > 0 => {
                self.wstart += (n as usize).min(carried);
                if self.wstart == self.wend {
                    self.wstart = 0;
                    self.wend = 0;
                }
                Ok(self.wants_write())
            }
            e if e == -libc::ECANCELED => Ok(false),
            _ => Err(CloseReason::Reset),
        }
    }

    /// Ring, TLS: move what rustls has encrypted into the write buffer's free end.
    fn tls_to_wbuf(&mut self) {
        let Some(tls) = self.tls.as_mut() else {
            return;
        };
        if !tls.wants_write() {
            return;
        }
        if self.send_flight == 0 {
            compact(&mut self.wbuf, &mut self.wstart, &mut self.wend);
        }
        while tls.wants_write() && self.wend < self.wbuf.len() {
            let mut free = &mut self.wbuf[self.wend..];
            match tls.write_tls(&mut free) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.wend += n,
            }
        }
    }

    pub(super) fn five_tuple(&self) -> FiveTuple {
        self.ft
    }

    pub(super) fn socket_mut(&mut self) -> &mut mio::net::TcpStream {
        &mut self.socket
    }

    /// A TLS connection whose handshake has not finished.
    pub(super) fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// Something is waiting to be written (TLS handshake records included).
    pub(super) fn wants_write(&self) -> bool {
        match &self.tls {
            Some(t) => t.wants_write() || self.wstart < self.wend,
            None => self.wstart < self.wend,
        }
    }

    /// Read up to `reads` times, handing every whole message to `on_message`
    /// (which returns false to stop at that message, leaving it buffered).
    /// Err: close it, for this reason.
    pub(super) fn read(
        &mut self,
        reads: usize,
        now: Instant,
        on_message: &mut impl FnMut(FiveTuple, &[u8]) -> bool,
    ) -> Result<ReadOutcome, CloseReason> {
        self.stopped = false;
        for _ in 0..reads {
            if self.deliver(on_message)? {
                return Ok(ReadOutcome::Stopped);
            }
            let got = if self.tls.is_some() {
                self.read_tls(on_message)?
            } else {
                self.read_plain()?
            };
            if self.stopped {
                return Ok(ReadOutcome::Stopped);
            }
            match got {
                Some(_) => self.last_rx = now,
                None => {
                    if self.deliver(on_message)? {
                        return Ok(ReadOutcome::Stopped);
                    }
                    return Ok(ReadOutcome::Drained);
                }
            }
        }
        if self.deliver(on_message)? {
            return Ok(ReadOutcome::Stopped);
        }
        Ok(ReadOutcome::More)
    }

    /// Take the connection apart to hand it to another worker: its socket,
    /// five-tuple, TLS session, the bytes not yet handled and (ring, TLS)
    /// the records received and not yet taken by rustls. Never with an
    /// operation in flight (the caller checks).
    #[allow(clippy::type_complexity)]
    pub(super) fn into_parts(
        self,
    ) -> (
        mio::net::TcpStream,
        FiveTuple,
        Option<Box<rustls::ServerConnection>>,
        Vec<u8>,
        Vec<u8>,
    ) {
        let records = self.tin[self.tstart..self.tlen].to_vec();
        (
            self.socket,
            self.ft,
            self.tls,
            self.rbuf[..self.rlen].to_vec(),
            records,
        )
    }

    /// A connection handed over by another worker, with the bytes it had
    /// read and the TLS records it had received but not decrypted.
    pub(super) fn with_buffered(mut self, buffered: &[u8], records: &[u8]) -> Conn {
        let n = buffered.len().min(self.rbuf.len());
        self.rbuf[..n].copy_from_slice(&buffered[..n]);
        self.rlen = n;
        if !records.is_empty() {
            if self.ring && records.len() <= self.tin.len() {
                self.tin[..records.len()].copy_from_slice(records);
                self.tlen = records.len();
            } else if let Some(tls) = self.tls.as_mut() {
                let mut rest = records;
                while !rest.is_empty() {
                    match tls.read_tls(&mut rest) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
        }
        self
    }

    /// One `read` into the free end of the buffer: Some(n) read, None drained.
    fn read_plain(&mut self) -> Result<Option<usize>, CloseReason> {
        if self.ring {
            // The ring already put what it received into the buffer.
            return match self.rx_end {
                Some(reason) => Err(reason),
                None => Ok(None),
            };
        }
        loop {
            // `deliver` left room: a partial message is shorter than MAX_FRAME <= READ_BUF.
            match self.socket.read(&mut self.rbuf[self.rlen..]) {
                Ok(0) => return Err(CloseReason::PeerClosed),
                Ok(n) => {
                    self.rlen += n;
                    return Ok(Some(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(CloseReason::Reset),
            }
        }
    }

    /// Hand rustls the next TLS records: from the ring's buffer when io_uring
    /// reads this connection, else one read of the socket. `Ok(None)`: not a
    /// TLS connection, or nothing buffered yet on the ring; `Err`: how the
    /// ring's receive side ended.
    fn pull_records(&mut self) -> Result<Option<io::Result<usize>>, CloseReason> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(None);
        };
        if !self.ring {
            return Ok(Some(tls.read_tls(&mut self.socket)));
        }
        if self.tstart == self.tlen {
            // An empty slice would read as EOF to rustls: look at how the
            // receive side ended instead.
            return self.rx_end.map_or(Ok(None), Err);
        }
        let mut records = &self.tin[self.tstart..self.tlen];
        let got = tls.read_tls(&mut records);
        if let Ok(n) = got {
            self.tstart += n;
        }
        Ok(Some(got))
    }

    /// One `read` of TLS records into the session, then every plaintext byte
    /// it yields into the buffer (cut into messages as it fills).
    fn read_tls(
        &mut self,
        on_message: &mut impl FnMut(FiveTuple, &[u8]) -> bool,
    ) -> Result<Option<usize>, CloseReason> {
        let n = loop {
            let Some(got) = self.pull_records()? else {
                return Ok(None);
            };
            match got {
                Ok(0) => return Err(CloseReason::PeerClosed),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // rustls' own buffer is full: take the plaintext out first.
                Err(e) if e.kind() == io::ErrorKind::Other => break 0,
                Err(_) => return Err(CloseReason::Reset),
            }
        };
        let Some(tls) = self.tls.as_mut() else {
            return Ok(None);
        };
        if let Err(e) = tls.process_new_packets() {
            tracing::trace!(error = %e, "TLS error");
            // Send the alert rustls prepared, best effort (not under a send in flight).
            if self.send_flight == 0 {
                let _closing_anyway = tls.write_tls(&mut self.socket);
            }
            return Err(CloseReason::TlsError);
        }
        while let Some(tls) = self.tls.as_mut() {
            match tls.reader().read(&mut self.rbuf[self.rlen..]) {
                Ok(0) => return Err(CloseReason::PeerClosed),
                Ok(m) => {
                    self.rlen += m;
                    if self.deliver(on_message)? {
                        // Stopped: the rest stays in the session for the next owner.
                        self.stopped = true;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return Err(CloseReason::PeerClosed),
            }
        }
        Ok(Some(n))
    }

    /// Hand every whole message in the buffer to `on_message`; keep the rest
    /// at the front.
    fn deliver(
        &mut self,
        on_message: &mut impl FnMut(FiveTuple, &[u8]) -> bool,
    ) -> Result<bool, CloseReason> {
        let mut start = 0;
        let result = loop {
            match frame_len(&self.rbuf[start..self.rlen], MAX_FRAME) {
                Ok(Frame::Complete(n)) => {
                    if !on_message(self.ft, &self.rbuf[start..start + n]) {
                        break Ok(true);
                    }
                    start += n;
                }
                Ok(Frame::Incomplete { .. }) => break Ok(false),
                Err(FrameError::TooLarge { .. }) => break Err(CloseReason::FrameTooLarge),
                Err(_) => break Err(CloseReason::BadFrame),
            }
        };
        if start > 0 {
            self.rbuf.copy_within(start..self.rlen, 0);
            self.rlen -= start;
        }
        result
    }

    /// Raw (RFC 6062 data): bytes received and not yet handed to the partner.
    pub(super) fn pending_raw(&self) -> &[u8] {
        &self.rbuf[..self.rlen]
    }

    /// Raw: the first `n` pending bytes went to the partner.
    pub(super) fn consume_raw(&mut self, n: usize) {
        self.rbuf.copy_within(n..self.rlen, 0);
        self.rlen -= n;
    }

    /// Raw: one read into the free end of the buffer (TLS: plaintext). Some(n):
    /// read; None: drained (or the buffer is full). Err: close.
    pub(super) fn read_raw(&mut self, now: Instant) -> Result<Option<usize>, CloseReason> {
        if self.rlen == self.rbuf.len() {
            return Ok(None);
        }
        if self.tls.is_none() {
            let got = self.read_plain()?;
            if got.is_some() {
                self.last_rx = now;
            }
            return Ok(got);
        }
        // Plaintext already decrypted first, then one socket read.
        loop {
            let Some(tls) = self.tls.as_mut() else {
                return Ok(None);
            };
            match tls.reader().read(&mut self.rbuf[self.rlen..]) {
                Ok(0) => return Err(CloseReason::PeerClosed),
                Ok(m) => {
                    self.rlen += m;
                    return Ok(Some(m));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(CloseReason::PeerClosed),
            }
            let Some(got) = self.pull_records()? else {
                return Ok(None);
            };
            match got {
                Ok(0) => return Err(CloseReason::PeerClosed),
                Ok(_) => {
                    self.last_rx = now;
                    let Some(tls) = self.tls.as_mut() else {
                        return Ok(None);
                    };
                    tls.process_new_packets()
                        .map_err(|_| CloseReason::TlsError)?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(CloseReason::Reset),
            }
        }
    }

    /// Raw: queue as many of `bytes` as fit (after writing what is queued if
    /// they do not); returns how many were taken.
    pub(super) fn push_raw(&mut self, bytes: &[u8]) -> Result<usize, CloseReason> {
        if let Some(tls) = self.tls.as_mut() {
            let n = tls.writer().write(bytes).map_err(|_| CloseReason::Reset)?;
            if n == bytes.len() {
                return Ok(n);
            }
            self.flush()?;
            let Some(tls) = self.tls.as_mut() else {
                return Ok(n);
            };
            let m = tls
                .writer()
                .write(&bytes[n..])
                .map_err(|_| CloseReason::Reset)?;
            return Ok(n + m);
        }
        if self.wbuf.len() - self.wend < bytes.len() {
            self.flush()?;
            self.compact();
        }
        let n = bytes.len().min(self.wbuf.len() - self.wend);
        self.wbuf[self.wend..self.wend + n].copy_from_slice(&bytes[..n]);
        self.wend += n;
        Ok(n)
    }

    /// An outgoing connection's handshake ended: whether it connected.
    pub(super) fn connect_result(&mut self) -> bool {
        self.connecting = false;
        matches!(self.socket.take_error(), Ok(None)) && self.socket.peer_addr().is_ok()
    }

    /// Queue one whole message. When it does not fit, write what is queued
    /// now; if it still does not fit the client is not reading: SlowReader.
    pub(super) fn queue(&mut self, payload: &[u8]) -> Result<(), CloseReason> {
        if let Some(tls) = self.tls.as_mut() {
            if tls.is_handshaking() {
                // Nothing is sent before the handshake ends: no allocation yet.
                return Ok(());
            }
            let n = tls
                .writer()
                .write(payload)
                .map_err(|_| CloseReason::Reset)?;
            if n == payload.len() {
                return Ok(());
            }
            self.flush()?;
            let Some(tls) = self.tls.as_mut() else {
                return Ok(());
            };
            let m = tls
                .writer()
                .write(&payload[n..])
                .map_err(|_| CloseReason::Reset)?;
            return if n + m == payload.len() {
                Ok(())
            } else {
                Err(CloseReason::SlowReader)
            };
        }
        if self.wbuf.len() - self.wend < payload.len() {
            self.flush()?;
            if self.wbuf.len() - self.wend < payload.len() {
                self.compact();
            }
            if self.wbuf.len() - self.wend < payload.len() {
                return Err(CloseReason::SlowReader);
            }
        }
        self.wbuf[self.wend..self.wend + payload.len()].copy_from_slice(payload);
        self.wend += payload.len();
        Ok(())
    }

    /// Write what is queued until done or the socket would block. Under the
    /// ring this is the overflow path only (a burst larger than the write
    /// buffer within one turn): it writes synchronously while no send is in
    /// flight, and otherwise only moves TLS records into the buffer.
    pub(super) fn flush(&mut self) -> Result<(), CloseReason> {
        if self.ring {
            self.tls_to_wbuf();
            if self.send_flight > 0 {
                return Ok(());
            }
            return self.write_plain();
        }
        if let Some(tls) = self.tls.as_mut() {
            while tls.wants_write() {
                match tls.write_tls(&mut self.socket) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err(CloseReason::Reset),
                }
            }
            return Ok(());
        }
        self.write_plain()
    }

    /// Write `wbuf[wstart..wend]` until done or the socket would block.
    fn write_plain(&mut self) -> Result<(), CloseReason> {
        while self.wstart < self.wend {
            match self.socket.write(&self.wbuf[self.wstart..self.wend]) {
                Ok(0) => return Err(CloseReason::Reset),
                Ok(n) => self.wstart += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(CloseReason::Reset),
            }
        }
        self.wstart = 0;
        self.wend = 0;
        Ok(())
    }

    fn compact(&mut self) {
        if self.send_flight == 0 {
            compact(&mut self.wbuf, &mut self.wstart, &mut self.wend);
        }
    }
}

/// Move `buf[*start..*end]` to the front. Never while a send is in flight.
fn compact(buf: &mut [u8], start: &mut usize, end: &mut usize) {
    if *start > 0 {
        buf.copy_within(*start..*end, 0);
        *end -= *start;
        *start = 0;
    }
}
