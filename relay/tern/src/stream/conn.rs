//! One TCP or TLS connection of a stream client: its socket, its fixed read
//! and write buffers, its rustls session when it is TLS, and the cutting of
//! the received bytes into whole STUN/ChannelData messages.
//!
//! Owns: the bytes of one connection. Must not touch: other connections,
//! limits, the epoll registration (all in [`super::Streams`]).

use std::io::{self, Read, Write};
use std::time::Instant;

use tern_stun::framing::{frame_len, Frame, FrameError};
use tern_turn::FiveTuple;

use super::{CloseReason, MAX_FRAME, READ_BUF, WRITE_BUF};

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
}

impl Conn {
    pub(super) fn new(
        socket: mio::net::TcpStream,
        ft: FiveTuple,
        gen: u32,
        tls: Option<Box<rustls::ServerConnection>>,
        now: Instant,
    ) -> Conn {
        let wbuf = if tls.is_some() {
            Box::default()
        } else {
            vec![0u8; WRITE_BUF].into_boxed_slice()
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
            Some(t) => t.wants_write(),
            None => self.wstart < self.wend,
        }
    }

    /// Read up to `reads` times, handing every whole message to `on_message`.
    /// Ok(true): the budget ran out with data possibly left (read again
    /// later); Ok(false): the socket is drained. Err: close it, for this reason.
    pub(super) fn read(
        &mut self,
        reads: usize,
        now: Instant,
        on_message: &mut impl FnMut(FiveTuple, &[u8]),
    ) -> Result<bool, CloseReason> {
        for _ in 0..reads {
            self.deliver(on_message)?;
            let got = if self.tls.is_some() {
                self.read_tls(on_message)?
            } else {
                self.read_plain()?
            };
            match got {
                Some(_) => self.last_rx = now,
                None => {
                    self.deliver(on_message)?;
                    return Ok(false);
                }
            }
        }
        self.deliver(on_message)?;
        Ok(true)
    }

    /// One `read` into the free end of the buffer: Some(n) read, None drained.
    fn read_plain(&mut self) -> Result<Option<usize>, CloseReason> {
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

    /// One `read` of TLS records into the session, then every plaintext byte
    /// it yields into the buffer (cut into messages as it fills).
    fn read_tls(
        &mut self,
        on_message: &mut impl FnMut(FiveTuple, &[u8]),
    ) -> Result<Option<usize>, CloseReason> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(None);
        };
        let n = loop {
            match tls.read_tls(&mut self.socket) {
                Ok(0) => return Err(CloseReason::PeerClosed),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // rustls' own buffer is full: take the plaintext out first.
                Err(e) if e.kind() == io::ErrorKind::Other => break 0,
                Err(_) => return Err(CloseReason::Reset),
            }
        };
        if let Err(e) = tls.process_new_packets() {
            tracing::trace!(error = %e, "TLS error");
            // Send the alert rustls prepared, best effort.
            let _closing_anyway = tls.write_tls(&mut self.socket);
            return Err(CloseReason::TlsError);
        }
        while let Some(tls) = self.tls.as_mut() {
            match tls.reader().read(&mut self.rbuf[self.rlen..]) {
                Ok(0) => return Err(CloseReason::PeerClosed),
                Ok(m) => {
                    self.rlen += m;
                    self.deliver(on_message)?;
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
        on_message: &mut impl FnMut(FiveTuple, &[u8]),
    ) -> Result<(), CloseReason> {
        let mut start = 0;
        let result = loop {
            match frame_len(&self.rbuf[start..self.rlen], MAX_FRAME) {
                Ok(Frame::Complete(n)) => {
                    on_message(self.ft, &self.rbuf[start..start + n]);
                    start += n;
                }
                Ok(Frame::Incomplete { .. }) => break Ok(()),
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

    /// Write what is queued until done or the socket would block.
    pub(super) fn flush(&mut self) -> Result<(), CloseReason> {
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
        if self.wstart > 0 {
            self.wbuf.copy_within(self.wstart..self.wend, 0);
            self.wend -= self.wstart;
            self.wstart = 0;
        }
    }
}
