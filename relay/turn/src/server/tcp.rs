//! RFC 6062 TCP allocations: Connect, ConnectionAttempt, ConnectionBind and
//! the life of each peer connection, as part of the shard's state machine.
//!
//! Owns: which peer connection (CONNECTION-ID) belongs to which allocation,
//! whether it is still being connected, waits for its ConnectionBind, or is
//! bound to a client data connection; the 30 s deadlines; the deferred
//! Connect response. Must not touch: sockets — the host listens on the
//! relayed address, connects, closes and splices bytes
//! ([`Host::connect_peer`], [`Host::bind_data_connection`]...), and reports
//! back through [`Server::handle_peer_incoming`],
//! [`Server::handle_peer_connected`] and [`Server::handle_peer_closed`].
//! Bytes on a bound pair never pass through the core.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tern_stun::{attr, AddressFamily, Class, Message, MessageWriter, Method};

use super::{err, Authenticated, ErrorReply, Reply, RequestId, Server, NO_SLOT};
use crate::allocation::{FiveTuple, PermitResult};
use crate::host::{BindError, Host};
use crate::stats::DropReason;

/// How long a peer connection waits for its ConnectionBind, and a Connect for
/// its TCP handshake (RFC 6062 §5.2, §5.3: 30 s).
pub const CONNECTION_BIND_TIMEOUT: Duration = Duration::from_secs(30);

/// The CONNECTION-ID of one peer connection of a TCP allocation (RFC 6062 §6.2.1).
/// Its low byte is the shard that owns it ([`crate::ServerConfig::shard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u32);

impl ConnectionId {
    /// The shard that owns this connection.
    pub fn shard(self) -> u8 {
        self.0 as u8
    }
}

pub(super) struct TcpConn {
    /// The allocation's slot and generation.
    alloc: u32,
    generation: u32,
    peer: SocketAddr,
    state: State,
    deadline: Instant,
}

enum State {
    /// Connect sent to the host; the response waits for the outcome.
    Connecting {
        control: FiveTuple,
        request: RequestId,
        auth: Authenticated,
    },
    /// Connected (either way); waiting for the client's ConnectionBind.
    Pending,
    /// Spliced to this client data connection.
    Bound,
}

impl Server {
    /// RFC 6062 §5.1: checks a TCP Allocate needs beyond a UDP one.
    pub(super) fn check_tcp_allocate(
        &self,
        ft: FiveTuple,
        msg: &Message<'_>,
    ) -> Result<(), ErrorReply> {
        if !ft.transport.is_stream() {
            return Err(err(
                400,
                "Bad Request: TCP allocations need a TCP or TLS connection",
            ));
        }
        for a in [
            attr::EVEN_PORT,
            attr::RESERVATION_TOKEN,
            attr::ADDITIONAL_ADDRESS_FAMILY,
            attr::DONT_FRAGMENT,
        ] {
            if msg.get(a).is_some() {
                return Err(err(400, "Bad Request: not with a TCP allocation"));
            }
        }
        Ok(())
    }

    /// Bind a TCP relayed address of `family` in this shard's slice.
    pub(super) fn bind_tcp_port(
        &mut self,
        host: &mut impl Host,
        family: AddressFamily,
    ) -> Result<(SocketAddr, Option<[u8; 8]>), ErrorReply> {
        let ip = match (family, self.config.relay.v4, self.config.relay.v6) {
            (AddressFamily::V4, Some(v4), _) => std::net::IpAddr::V4(v4.bind),
            (AddressFamily::V6, _, Some(v6)) => std::net::IpAddr::V6(v6.bind),
            _ => return Err(err(440, "Address Family not Supported")),
        };
        let range = self.config.relay_ports;
        let n = range.len();
        let start = (self.rng.next() % n as u64) as usize;
        for i in 0..n.min(super::MAX_BIND_ATTEMPTS * 4) {
            let port = range.lo() + ((start + i) % n) as u16;
            if self.relay_slot(ip, port) != NO_SLOT {
                continue;
            }
            let addr = SocketAddr::new(ip, port);
            match host.bind_relay_tcp(addr) {
                Ok(()) => return Ok((addr, None)),
                Err(BindError::InUse) => continue,
                Err(_) => break,
            }
        }
        Err(err(508, "Insufficient Capacity: no relay port free"))
    }

    /// Connect (RFC 6062 §5.2). Ok(None): the answer comes with
    /// [`Server::handle_peer_connected`].
    pub(super) fn connect(
        &mut self,
        host: &mut impl Host,
        ft: FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
        now: Instant,
    ) -> Result<Option<Reply>, ErrorReply> {
        let Some(&index) = self.by_client.get(&ft) else {
            return Err(err(437, "Allocation Mismatch"));
        };
        let tid = msg.transaction_id();
        let peer = msg
            .get(attr::XOR_PEER_ADDRESS)
            .and_then(|a| tern_stun::decode_xor_address(a.value, &tid).ok())
            .filter(|p| p.port() != 0)
            .ok_or_else(|| err(400, "Bad Request: XOR-PEER-ADDRESS is required"))?;
        let generation = self.slots[index as usize].generation;
        let cap = self.config.max_permissions_per_allocation;
        let alloc = self.slots[index as usize]
            .allocation
            .as_mut()
            .ok_or_else(|| err(437, "Allocation Mismatch"))?;
        if !alloc.tcp {
            return Err(err(400, "Bad Request: Connect needs a TCP allocation"));
        }
        let Some(relay) = alloc.relay_for(&peer) else {
            return Err(err(443, "Peer Address Family Mismatch"));
        };
        if self.config.peer_policy.check(peer).is_err() {
            self.stats.peer_denied += 1;
            return Err(err(403, "Forbidden: peer address not allowed"));
        }
        let exists = self
            .tcp_conns
            .values()
            .any(|c| c.alloc == index && c.generation == generation && c.peer == peer);
        if exists {
            return Err(err(446, "Connection Already Exists"));
        }
        match alloc.permit(peer.ip(), now, cap) {
            PermitResult::Created => self.stats.permissions_created += 1,
            PermitResult::Refreshed => {}
            PermitResult::Full => {
                return Err(err(508, "Insufficient Capacity: too many permissions"))
            }
        }
        let id = self.new_connection_id();
        let deadline = now + CONNECTION_BIND_TIMEOUT;
        self.tcp_conns.insert(
            id.0,
            TcpConn {
                alloc: index,
                generation,
                peer,
                state: State::Connecting {
                    control: ft,
                    request: RequestId {
                        method: Method::CONNECT,
                        tid,
                        fingerprint: msg.has_fingerprint(),
                    },
                    auth: auth.clone(),
                },
                deadline,
            },
        );
        self.tcp_timers.push_back((deadline, id.0));
        host.connect_peer(id, relay, peer);
        Ok(None)
    }

    /// The host's outcome of the Connect for `id`: answer it (success with
    /// CONNECTION-ID, or 447), and on success wait for the ConnectionBind.
    pub fn handle_peer_connected(
        &mut self,
        host: &mut impl Host,
        id: ConnectionId,
        connected: bool,
        now: Instant,
    ) {
        let Some(conn) = self.tcp_conns.get_mut(&id.0) else {
            // Timed out or its allocation ended meanwhile.
            if connected {
                host.close_peer_connection(id);
            }
            return;
        };
        let State::Connecting { .. } = conn.state else {
            return;
        };
        let State::Connecting {
            control,
            request,
            auth,
        } = std::mem::replace(&mut conn.state, State::Pending)
        else {
            return;
        };
        if connected {
            conn.deadline = now + CONNECTION_BIND_TIMEOUT;
            self.tcp_timers.push_back((conn.deadline, id.0));
            self.respond_to(
                control,
                request,
                Reply::Connection(id.0),
                Some(&auth),
                false,
                now,
            );
        } else {
            self.tcp_conns.remove(&id.0);
            host.close_peer_connection(id);
            let reply = err(447, "Connection Timeout or Failure");
            self.respond_to(
                control,
                request,
                Reply::Error(reply),
                Some(&auth),
                false,
                now,
            );
        }
    }

    /// A peer connected to the TCP relayed address `relay`: when it has a
    /// permission, tell the client (ConnectionAttempt) and return the id to
    /// keep the connection under; None: close it.
    pub fn handle_peer_incoming(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        now: Instant,
    ) -> Option<ConnectionId> {
        let index = self.relay_slot(relay.ip(), relay.port());
        let generation = self.slots.get(index as usize)?.generation;
        let alloc = self
            .slots
            .get(index as usize)
            .and_then(|s| s.allocation.as_ref())
            .filter(|a| a.tcp && now < a.expires);
        let Some(alloc) = alloc else {
            self.stats.drop(DropReason::UnknownRelay);
            return None;
        };
        if !alloc.has_permission(peer.ip(), now) {
            self.stats.drop(DropReason::NoPermission);
            return None;
        }
        let control = alloc.five_tuple;
        let id = self.new_connection_id();
        let deadline = now + CONNECTION_BIND_TIMEOUT;
        self.tcp_conns.insert(
            id.0,
            TcpConn {
                alloc: index,
                generation,
                peer,
                state: State::Pending,
                deadline,
            },
        );
        self.tcp_timers.push_back((deadline, id.0));
        let mut buf = [0u8; 128];
        let tid = self.rng.transaction_id();
        let written = (|| {
            let mut w =
                MessageWriter::new(&mut buf, Method::CONNECTION_ATTEMPT, Class::Indication, tid)?;
            w.add_xor_address(attr::XOR_PEER_ADDRESS, peer)?;
            w.add_u32(attr::CONNECTION_ID, id.0)?;
            Ok::<usize, tern_stun::BufferTooSmall>(w.finish())
        })();
        if let Ok(len) = written {
            self.transmits.push_back(super::Transmit {
                via: control.via(),
                to: control.client,
                payload: buf[..len].to_vec(),
            });
        }
        Some(id)
    }

    /// ConnectionBind (RFC 6062 §5.4) on a new client connection `ft`.
    pub(super) fn connection_bind(
        &mut self,
        host: &mut impl Host,
        ft: FiveTuple,
        msg: &Message<'_>,
        auth: &Authenticated,
    ) -> Result<Reply, ErrorReply> {
        if !ft.transport.is_stream() || self.by_client.contains_key(&ft) {
            return Err(err(
                400,
                "Bad Request: ConnectionBind needs a new TCP connection",
            ));
        }
        let id = msg
            .get(attr::CONNECTION_ID)
            .and_then(|a| tern_stun::decode_u32(a.value).ok())
            .ok_or_else(|| err(400, "Bad Request: CONNECTION-ID is required"))?;
        let unknown = || err(400, "Bad Request: unknown CONNECTION-ID");
        let conn = self.tcp_conns.get(&id).ok_or_else(unknown)?;
        if !matches!(conn.state, State::Pending) {
            return Err(unknown());
        }
        let alloc = self
            .slots
            .get(conn.alloc as usize)
            .filter(|s| s.generation == conn.generation)
            .and_then(|s| s.allocation.as_ref())
            .ok_or_else(unknown)?;
        if *alloc.username != *auth.username {
            return Err(err(441, "Wrong Credentials"));
        }
        if let Some(conn) = self.tcp_conns.get_mut(&id) {
            conn.state = State::Bound;
        }
        self.stats.tcp_connections_bound += 1;
        host.bind_data_connection(ConnectionId(id), ft);
        Ok(Reply::Empty)
    }

    /// The host closed peer connection `id`, or its data connection (either
    /// side of a bound pair ends both).
    pub fn handle_peer_closed(&mut self, id: ConnectionId) {
        self.tcp_conns.remove(&id.0);
    }

    /// Live peer connections of TCP allocations.
    pub fn tcp_connection_count(&self) -> usize {
        self.tcp_conns.len()
    }

    /// Close every peer connection of the allocation in slot `index`.
    pub(super) fn close_tcp_connections_of(&mut self, host: &mut impl Host, index: u32) {
        let mut gone = Vec::new();
        self.tcp_conns.retain(|&id, c| {
            let keep = c.alloc != index;
            if !keep {
                gone.push(id);
            }
            keep
        });
        for id in gone {
            host.close_peer_connection(ConnectionId(id));
        }
    }

    /// Connections whose Connect or ConnectionBind did not come in time.
    pub(super) fn tcp_timeouts(&mut self, host: &mut impl Host, now: Instant) {
        while let Some(&(at, id)) = self.tcp_timers.front() {
            if at > now {
                break;
            }
            self.tcp_timers.pop_front();
            let due = self
                .tcp_conns
                .get(&id)
                .is_some_and(|c| c.deadline <= now && !matches!(c.state, State::Bound));
            if !due {
                continue;
            }
            if let Some(conn) = self.tcp_conns.remove(&id) {
                if let State::Connecting {
                    control,
                    request,
                    auth,
                } = conn.state
                {
                    let reply = err(447, "Connection Timeout or Failure");
                    self.respond_to(
                        control,
                        request,
                        Reply::Error(reply),
                        Some(&auth),
                        false,
                        now,
                    );
                }
                host.close_peer_connection(ConnectionId(id));
            }
        }
    }

    fn new_connection_id(&mut self) -> ConnectionId {
        loop {
            let id = (self.rng.next() as u32) << 8 | u32::from(self.config.shard);
            if id != 0 && !self.tcp_conns.contains_key(&id) {
                return ConnectionId(id);
            }
        }
    }
}
