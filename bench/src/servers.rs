//! Processes the harness starts — tern, coturn, the null relay — on probed
//! free loopback ports, each held by a guard that kills it (by PID) when
//! dropped. Children also get `PR_SET_PDEATHSIG(SIGKILL)`, so they die with
//! the harness even when it aborts without unwinding.

use std::fs::File;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::turn_client::stun_ping;
use crate::{bail, Result};

/// A started process, killed and reaped on drop.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    /// Its PID (for CPU accounting).
    pub pid: u32,
    /// The address it listens on.
    pub listen: SocketAddr,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// What it is, for messages.
    pub name: String,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // Only our own child, by PID (Child::kill sends SIGKILL to it alone).
        let _already_gone = self.child.kill();
        let _reaped = self.child.wait();
    }
}

impl Spawned {
    /// Start `cmd` with output to `log`, dying with us; check it stays up and
    /// (when `stun` is set) answers a STUN Binding request within 10 s.
    pub fn start(name: &str, cmd: Command, listen: SocketAddr, stun: bool) -> Result<Spawned> {
        Spawned::start_in(name, cmd, listen, stun, None)
    }

    /// [`Spawned::start`] inside the network namespace bind-mounted at
    /// `netns` (joined with `setns(2)` between fork and exec, so /sys and
    /// mounts stay as they are); the readiness check runs there too.
    pub fn start_in(
        name: &str,
        mut cmd: Command,
        listen: SocketAddr,
        stun: bool,
        netns: Option<&Path>,
    ) -> Result<Spawned> {
        let ns_fd = match netns {
            Some(p) => Some(File::open(p).map_err(|e| {
                crate::Error(format!("cannot open namespace {}: {e}", p.display()))
            })?),
            None => None,
        };
        let ns_raw = ns_fd.as_ref().map(|f| f.as_raw_fd());
        let log = std::env::temp_dir().join(format!(
            "tern-bench-{}-{name}-{}.log",
            std::process::id(),
            listen.port()
        ));
        let out = File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: the closure only calls prctl(2) and setns(2), which are
        // async-signal-safe; the namespace fd stays open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(fd) = ns_raw {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            crate::Error(format!(
                "cannot start {name} ({:?}): {e}",
                cmd.get_program()
            ))
        })?;
        let mut s = Spawned {
            pid: child.id(),
            child,
            listen,
            log,
            name: name.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                bail!("{name} exited at start ({status}); see {}", s.log.display());
            }
            let check = || {
                if stun {
                    stun_ping(listen, Duration::from_millis(200))
                } else {
                    port_in_use(listen)
                }
            };
            let ready = match netns {
                Some(p) => crate::netns::in_netns_at(p, check)?,
                None => check(),
            };
            if ready {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} did not come up on {listen} within 10 s; see {}",
                    s.log.display()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether a UDP port is bound by someone.
pub fn port_in_use(addr: SocketAddr) -> bool {
    UdpSocket::bind(addr).is_err()
}

/// A UDP port on `ip` that is free now (bind port 0, read it, release it).
pub fn free_udp_port(ip: IpAddr) -> Result<u16> {
    Ok(UdpSocket::bind((ip, 0))?.local_addr()?.port())
}

/// `n` consecutive UDP ports on `ip` that are free now, below the ephemeral
/// range (probing each one).
pub fn free_port_range(ip: IpAddr, n: u16) -> Result<(u16, u16)> {
    let seed = (crate::payload::monotonic_ns() ^ u64::from(std::process::id())) as u32;
    for attempt in 0..200u32 {
        let span = 30_000u32 - 20_000 - u32::from(n);
        let lo = 20_000 + (seed.wrapping_add(attempt.wrapping_mul(7919)) % span) as u16;
        let hi = lo + n - 1;
        if (lo..=hi).all(|p| !port_in_use(SocketAddr::new(ip, p)) && tcp_free(ip, p)) {
            return Ok((lo, hi));
        }
    }
    bail!("no free range of {n} UDP ports found on {ip}")
}

fn tcp_free(ip: IpAddr, p: u16) -> bool {
    std::net::TcpListener::bind((ip, p)).is_ok()
}

/// Everything a TURN relay needs to be started equivalently.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Loopback IP to listen and relay on.
    pub ip: IpAddr,
    /// Realm.
    pub realm: String,
    /// REST shared secret.
    pub secret: String,
    /// Worker (relay) threads.
    pub workers: usize,
    /// How many relay ports to reserve (>= allocations).
    pub ports: u16,
    /// Address relay sockets bind to (`None`: `ip`).
    pub relay_ip: Option<IpAddr>,
    /// Peer network to allow (`None`: loopback).
    pub allow_peer: Option<String>,
    /// Network namespace to start the relay in (bind-mount path).
    pub netns: Option<PathBuf>,
}

impl RelayConfig {
    fn relay_ip(&self) -> IpAddr {
        self.relay_ip.unwrap_or(self.ip)
    }

    /// Free ports for the relay, probed where it will run: (listen, lo, hi).
    fn ports(&self) -> Result<(u16, u16, u16)> {
        let probe = || -> Result<(u16, u16, u16)> {
            let port = free_udp_port(self.ip)?;
            let (lo, hi) = free_port_range(self.relay_ip(), self.ports)?;
            Ok((port, lo, hi))
        };
        match &self.netns {
            Some(p) => crate::netns::in_netns_at(p, probe)?,
            None => probe(),
        }
    }
}

/// Start tern from `bin` on fresh ports.
///
/// `backend` forces tern's packet I/O back end (`--io-backend`). `xdp` also
/// switches off the XDP receive checksum check: the generator's frames cross
/// a veth from the local stack with the UDP checksum left for offload, which
/// a real NIC never delivers.
pub fn spawn_tern(bin: &Path, c: &RelayConfig, backend: Option<&str>) -> Result<Spawned> {
    if !bin.exists() {
        bail!(
            "tern binary {} not found (build it: cargo build --release -p tern)",
            bin.display()
        );
    }
    let (port, lo, hi) = c.ports()?;
    let listen = SocketAddr::new(c.ip, port);
    let peers = match &c.allow_peer {
        Some(p) => p.as_str(),
        None if c.ip.is_ipv4() => "127.0.0.0/8",
        None => "::1/128",
    };
    let mut cmd = Command::new(bin);
    cmd.arg("--listen")
        .arg(listen.to_string())
        .arg("--relay-ports")
        .arg(format!("{lo}-{hi}"))
        .arg("--relay-ip")
        .arg(c.relay_ip().to_string())
        .arg("--realm")
        .arg(&c.realm)
        .arg("--auth-secret")
        .arg(&c.secret)
        .arg("--allow-peer")
        .arg(peers)
        .arg("--workers")
        .arg(c.workers.to_string())
        .arg("--log-level")
        .arg("warn");
    if let Some(b) = backend {
        cmd.arg("--io-backend").arg(b);
        if b == "xdp" {
            cmd.arg("--xdp-verify-checksums").arg("false");
        }
    }
    Spawned::start_in("tern", cmd, listen, true, c.netns.as_deref())
}

/// Start coturn's `turnserver` from `bin` with the same settings as tern.
pub fn spawn_coturn(bin: &Path, c: &RelayConfig) -> Result<Spawned> {
    let (port, lo, hi) = c.ports()?;
    let listen = SocketAddr::new(c.ip, port);
    let pidfile = std::env::temp_dir().join(format!(
        "tern-bench-{}-coturn-{port}.pid",
        std::process::id()
    ));
    let mut cmd = Command::new(bin);
    cmd.args([
        "-n",
        "--no-cli",
        "--no-tls",
        "--no-dtls",
        "--no-tcp-relay",
        "--no-rfc5780",
    ])
    .args(["--listening-ip", &c.ip.to_string()])
    .args(["--listening-port", &port.to_string()])
    .args(["--relay-ip", &c.relay_ip().to_string()])
    .args(["--min-port", &lo.to_string(), "--max-port", &hi.to_string()])
    .args([
        "--realm",
        &c.realm,
        "--use-auth-secret",
        "--static-auth-secret",
        &c.secret,
    ])
    .args([
        "--allow-loopback-peers",
        "--relay-threads",
        &c.workers.to_string(),
    ])
    .args(["--no-stdout-log", "--log-file", "stdout", "--simple-log"])
    .arg("--pidfile")
    .arg(pidfile);
    Spawned::start_in("coturn", cmd, listen, true, c.netns.as_deref())
}

/// Start the null relay (`<this exe> null-relay`) forwarding to `to`.
pub fn spawn_null(
    exe: &Path,
    ip: IpAddr,
    to: SocketAddr,
    time_limit: Duration,
    (io, egress_sockets): (crate::null_io::NullIo, usize),
    netns: Option<&Path>,
) -> Result<Spawned> {
    let port = match netns {
        Some(p) => crate::netns::in_netns_at(p, || free_udp_port(ip))??,
        None => free_udp_port(ip)?,
    };
    let listen = SocketAddr::new(ip, port);
    let mut cmd = Command::new(exe);
    cmd.arg("null-relay")
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--to")
        .arg(to.to_string())
        .arg("--time-limit")
        .arg(time_limit.as_secs().max(1).to_string())
        .arg("--io")
        .arg(io.name())
        .arg("--egress-sockets")
        .arg(egress_sockets.to_string());
    Spawned::start_in("null-relay", cmd, listen, false, netns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_free_ports() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let p = free_udp_port(ip).unwrap();
        assert!(p > 0);
        let (lo, hi) = free_port_range(ip, 10).unwrap();
        assert_eq!(hi - lo, 9);
    }
}
