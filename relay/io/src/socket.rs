//! Making the UDP sockets the back ends drive: nonblocking, `SO_REUSEPORT` for
//! listeners shared by every worker, `IPV6_V6ONLY` for IPv6 (so an IPv6
//! wildcard never shadows the IPv4 one), and large kernel buffers. Also the
//! TCP listening sockets of TURN over TCP/TLS, made the same way
//! ([`bind_tcp_listener`]).

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// How to make one UDP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// Set `SO_REUSEPORT` so several workers bind the same address and the
    /// kernel spreads datagrams across them by flow hash.
    pub reuse_port: bool,
    /// `SO_RCVBUF` to ask for (the kernel caps it at `net.core.rmem_max`); 0 keeps the default.
    pub recv_buffer: usize,
    /// `SO_SNDBUF` to ask for (capped at `net.core.wmem_max`); 0 keeps the default.
    pub send_buffer: usize,
}

impl SocketOptions {
    /// A listening socket shared by all workers: reuse-port, 8 MiB buffers.
    pub const LISTENER: SocketOptions = SocketOptions {
        reuse_port: true,
        recv_buffer: 8 << 20,
        send_buffer: 8 << 20,
    };
    /// A relay socket of one allocation: exclusive, 1 MiB buffers.
    pub const RELAY: SocketOptions = SocketOptions {
        reuse_port: false,
        recv_buffer: 1 << 20,
        send_buffer: 1 << 20,
    };
}

/// Kernel buffer sizes a socket was granted (Linux reports twice what it
/// accounts for payload; these are the numbers `getsockopt` returns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferSizes {
    /// `SO_RCVBUF` as granted.
    pub recv: usize,
    /// `SO_SNDBUF` as granted.
    pub send: usize,
}

/// Make a nonblocking UDP socket bound to `addr` with `options`.
///
/// Errors are the kernel's: `AddrInUse` when the address is taken (and, for
/// reuse-port sockets, taken by a socket that did not set the option).
pub fn bind_udp(addr: SocketAddr, options: &SocketOptions) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if options.reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    // Buffer sizes are a wish: the kernel silently caps them, and a failure here
    // must not stop the relay. What was granted is visible through buffer_sizes().
    if options.recv_buffer > 0 {
        let _ = socket.set_recv_buffer_size(options.recv_buffer);
    }
    if options.send_buffer > 0 {
        let _ = socket.set_send_buffer_size(options.send_buffer);
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Make a nonblocking TCP listening socket on `addr` with `SO_REUSEPORT`, so
/// every worker has its own listener on one address and the kernel spreads
/// new connections across them by flow hash (`IPV6_V6ONLY` for IPv6, like
/// [`bind_udp`]). `backlog` is the accept queue's length.
pub fn bind_tcp_listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// The buffer sizes the kernel granted `socket`.
pub fn buffer_sizes(socket: &UdpSocket) -> io::Result<BufferSizes> {
    let s = SockRef::from(socket);
    Ok(BufferSizes {
        recv: s.recv_buffer_size()?,
        send: s.send_buffer_size()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_port_lets_two_sockets_share_an_address() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), &SocketOptions::LISTENER).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind_udp(addr, &SocketOptions::LISTENER).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        let sizes = buffer_sizes(&a).unwrap();
        assert!(sizes.recv > 0 && sizes.send > 0);
    }

    #[test]
    fn tcp_listeners_share_an_address_and_accept() {
        let a = bind_tcp_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind_tcp_listener(addr, 16).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        let _c = std::net::TcpStream::connect(addr).unwrap();
        // Nonblocking: one of the two has the connection, neither blocks.
        let start = std::time::Instant::now();
        loop {
            if a.accept().is_ok() || b.accept().is_ok() {
                break;
            }
            assert!(start.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            a.accept().map(|_| ()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn exclusive_socket_reports_in_use() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), &SocketOptions::RELAY).unwrap();
        let err = bind_udp(a.local_addr().unwrap(), &SocketOptions::RELAY).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn ipv6_socket_is_v6_only() {
        let Ok(s) = bind_udp("[::1]:0".parse().unwrap(), &SocketOptions::RELAY) else {
            return; // no IPv6 loopback on this host
        };
        assert!(SockRef::from(&s).only_v6().unwrap());
    }
}
