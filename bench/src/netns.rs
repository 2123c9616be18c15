//! Network namespaces and tc loss filters the harness creates for itself,
//! each held by a guard that removes it on drop (and, through
//! [`cleanup_registered`], when the harness is interrupted).
//!
//! - [`Netns`]: a named network namespace (`ip netns add`), deleted on drop.
//! - [`in_netns`]: run a closure on a short-lived thread that has joined a
//!   namespace with `setns(2)`. Sockets it creates stay in that namespace
//!   and can be used from any thread afterwards. Only the network namespace
//!   is switched, so /sys and the mount namespace are untouched (unlike
//!   `ip netns exec`, which remounts /sys).
//! - [`LossFilter`]: a `clsact` qdisc with a classic-BPF filter that drops a
//!   random share of UDP/IPv4 packets, in direct-action mode (this kernel
//!   has no netem qdisc and no `gact` action, so `action drop` is not
//!   available: the cBPF program itself returns `TC_ACT_SHOT`).
//! - [`Topology`]: three namespaces (client, relay, peer) joined by two veth
//!   pairs on private /30s, for relaying across real interfaces.

use std::fs::File;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread;

use crate::{bail, Error, Result};

/// Whether this process runs as root (needed for namespaces and tc).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this process's network namespace is one the harness created
/// (bind-mounted as `/run/netns/tb…`), compared by nsfs inode.
pub fn in_harness_netns() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(me) = std::fs::metadata("/proc/self/ns/net") else {
        return false;
    };
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return false;
    };
    dir.flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with("tb")
            && std::fs::metadata(e.path()).is_ok_and(|m| m.dev() == me.dev() && m.ino() == me.ino())
    })
}

/// What [`cleanup_registered`] undoes: namespaces and tc objects alive now.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Undo {
    Netns(String),
    Qdisc {
        netns: Option<String>,
        iface: String,
    },
    Filter {
        netns: Option<String>,
        iface: String,
        dir: &'static str,
        pref: u32,
    },
}

static REGISTRY: Mutex<Vec<Undo>> = Mutex::new(Vec::new());

fn register(u: Undo) {
    if let Ok(mut r) = REGISTRY.lock() {
        r.push(u);
    }
}

fn unregister(u: &Undo) {
    if let Ok(mut r) = REGISTRY.lock() {
        r.retain(|x| x != u);
    }
}

fn undo(u: &Undo) {
    let _best_effort = match u {
        Undo::Netns(n) => run("ip", &["netns", "del", n]),
        Undo::Qdisc { netns, iface } => {
            run_tc(netns.as_deref(), &["qdisc", "del", "dev", iface, "clsact"])
        }
        Undo::Filter {
            netns,
            iface,
            dir,
            pref,
        } => run_tc(
            netns.as_deref(),
            &[
                "filter",
                "del",
                "dev",
                iface,
                dir,
                "pref",
                &pref.to_string(),
            ],
        ),
    };
}

/// Remove every namespace, qdisc and filter this process created and has
/// not removed yet (newest first). For signal handlers' watcher threads:
/// guards dropped afterwards find nothing left to do.
pub fn cleanup_registered() {
    let all: Vec<Undo> = match REGISTRY.lock() {
        Ok(mut r) => r.drain(..).collect(),
        Err(_) => return,
    };
    for u in all.iter().rev() {
        undo(u);
    }
}

/// Run a command, failing with its stderr when it fails.
pub fn run(prog: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error(format!("cannot run {prog}: {e}")))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run_tc(netns: Option<&str>, args: &[&str]) -> Result<()> {
    match netns {
        Some(n) => {
            let mut v = vec!["-n", n];
            v.extend_from_slice(args);
            run("tc", &v)
        }
        None => run("tc", args),
    }
}

/// `ip -n NS -batch -` with `lines` on standard input.
/// Wait (at most 5 s) until `dev` in `netns` has carrier (LOWER_UP).
fn wait_carrier(netns: &str, dev: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = Command::new("ip")
            .args(["-n", netns, "-o", "link", "show", "dev", dev])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error(format!("cannot run ip: {e}")))?;
        if String::from_utf8_lossy(&out.stdout).contains("LOWER_UP") {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("{dev} in {netns} has no carrier after 5 s");
        }
        thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn ip_batch(netns: &str, lines: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error(format!("cannot run ip: {e}")))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(lines.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -n {netns} -batch failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name no other namespace of this or another harness process uses:
/// `tb<pid>-<n><suffix>`.
pub fn unique_name(suffix: &str) -> String {
    format!(
        "tb{}-{}{suffix}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace with its loopback up; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name (`ip netns` name).
    pub name: String,
}

impl Netns {
    /// `ip netns add NAME; ip -n NAME link set lo up`.
    pub fn create(name: &str) -> Result<Netns> {
        if !is_root() {
            bail!("network namespaces need root");
        }
        run("ip", &["netns", "add", name])?;
        register(Undo::Netns(name.to_owned()));
        let ns = Netns {
            name: name.to_owned(),
        };
        run("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its bind-mounted handle, for `setns(2)`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Open its handle (close-on-exec) for `setns(2)`.
    pub fn open(&self) -> Result<File> {
        File::open(self.path())
            .map_err(|e| Error(format!("cannot open {}: {e}", self.path().display())))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let u = Undo::Netns(self.name.clone());
        undo(&u);
        unregister(&u);
    }
}

/// Join the network namespace behind `fd` (this thread only).
pub fn setns_fd(fd: &File) -> std::io::Result<()> {
    // SAFETY: setns takes an open fd and a flag; no memory is shared.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Run `f` on a new thread inside `ns` and return its result. Sockets made
/// there belong to `ns` for good. Do not start long-lived child processes
/// from `f`: `PR_SET_PDEATHSIG` fires when the *thread* that forked exits.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T> {
    in_netns_at(&ns.path(), f)
}

/// [`in_netns`] for the namespace bind-mounted at `path`.
pub fn in_netns_at<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let fd = File::open(path).map_err(|e| Error(format!("cannot open {}: {e}", path.display())))?;
    thread::scope(|s| {
        s.spawn(move || {
            setns_fd(&fd).map_err(|e| Error(format!("setns into {}: {e}", path.display())))?;
            Ok(f())
        })
        .join()
        .map_err(|_| Error("thread inside the namespace panicked".into()))?
    })
}

/// Which way a [`LossFilter`] looks at packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    /// Packets arriving on the interface.
    Ingress,
    /// Packets leaving through the interface.
    Egress,
}

impl Direction {
    fn tc(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// The threshold the random number is compared with: round(pct/100 × 2^32),
/// clamped to the u32 range.
pub fn loss_threshold(pct: f64) -> u32 {
    let t = (pct.clamp(0.0, 100.0) / 100.0 * 4_294_967_296.0).round();
    if t >= u32::MAX as f64 {
        u32::MAX
    } else {
        t as u32
    }
}

/// The classic BPF program, in tc's `bytecode` format (`N,code jt jf k,…`),
/// that returns `TC_ACT_SHOT` (2) for a random `pct` % of UDP/IPv4 packets
/// and `TC_ACT_UNSPEC` (-1, "no verdict, go on") for everything else:
///
/// ```text
/// 0: ldh [proto]            ; SKF_AD_OFF+SKF_AD_PROTOCOL: skb->protocol, host order
/// 1: jeq #0x0800, 0, 5      ; not IPv4 -> 7
/// 2: ldb [net+9]            ; SKF_NET_OFF+9: the IPv4 protocol field
/// 3: jeq #17, 0, 3          ; not UDP -> 7
/// 4: ld rand                ; SKF_AD_OFF+SKF_AD_RANDOM: uniform u32
/// 5: jge #threshold, 1, 0   ; rand >= threshold -> 7
/// 6: ret #2                 ; TC_ACT_SHOT: drop
/// 7: ret #-1                ; TC_ACT_UNSPEC: leave it alone
/// ```
///
/// Loads relative to the network header (`SKF_NET_OFF`) and the protocol
/// ancillary load make it independent of the link-layer header length.
pub fn loss_bytecode(pct: f64) -> String {
    const SKF_AD_OFF: u32 = (-0x1000i32) as u32;
    const SKF_NET_OFF: u32 = (-0x10_0000i32) as u32;
    const SKF_AD_PROTOCOL: u32 = 0;
    const SKF_AD_RANDOM: u32 = 56;
    let (ld_h_abs, ld_b_abs, ld_w_abs) = (0x28, 0x30, 0x20);
    let (jeq_k, jge_k, ret_k) = (0x15, 0x35, 0x06);
    let prog: [(u16, u8, u8, u32); 8] = [
        (ld_h_abs, 0, 0, SKF_AD_OFF + SKF_AD_PROTOCOL),
        (jeq_k, 0, 5, 0x0800),
        (ld_b_abs, 0, 0, SKF_NET_OFF + 9),
        (jeq_k, 0, 3, 17),
        (ld_w_abs, 0, 0, SKF_AD_OFF + SKF_AD_RANDOM),
        (jge_k, 1, 0, loss_threshold(pct)),
        (ret_k, 0, 0, 2),
        (ret_k, 0, 0, u32::MAX),
    ];
    let mut s = prog.len().to_string();
    for (code, jt, jf, k) in prog {
        s += &format!(",{code} {jt} {jf} {k}");
    }
    s
}

/// A random-loss filter on one interface; removed on drop. If the harness
/// added the `clsact` qdisc it removes the qdisc (and with it the filter);
/// if the qdisc was already there it removes only its own filter.
#[derive(Debug)]
pub struct LossFilter {
    netns: Option<String>,
    iface: String,
    dir: Direction,
    pref: u32,
    own_qdisc: bool,
    /// The share dropped, percent.
    pub pct: f64,
}

impl LossFilter {
    /// Drop `pct` % of UDP/IPv4 packets in direction `dir` on `iface`
    /// (inside namespace `netns`, or the current one).
    pub fn add(netns: Option<&str>, iface: &str, dir: Direction, pct: f64) -> Result<LossFilter> {
        if !is_root() {
            bail!("tc filters need root");
        }
        if !(0.0..=100.0).contains(&pct) {
            bail!("loss {pct} % is not between 0 and 100");
        }
        let ns = netns.map(str::to_owned);
        let own_qdisc = run_tc(netns, &["qdisc", "add", "dev", iface, "clsact"]).is_ok();
        if own_qdisc {
            register(Undo::Qdisc {
                netns: ns.clone(),
                iface: iface.to_owned(),
            });
        }
        let pref = 4900 + std::process::id() % 1000;
        let f = LossFilter {
            netns: ns,
            iface: iface.to_owned(),
            dir,
            pref,
            own_qdisc,
            pct,
        };
        let code = loss_bytecode(pct);
        let p = pref.to_string();
        run_tc(
            netns,
            &[
                "filter",
                "add",
                "dev",
                iface,
                dir.tc(),
                "pref",
                &p,
                "bpf",
                "da",
                "bytecode",
                &code,
            ],
        )?;
        if !f.own_qdisc {
            register(f.filter_undo());
        }
        Ok(f)
    }

    fn filter_undo(&self) -> Undo {
        Undo::Filter {
            netns: self.netns.clone(),
            iface: self.iface.clone(),
            dir: self.dir.tc(),
            pref: self.pref,
        }
    }
}

impl Drop for LossFilter {
    fn drop(&mut self) {
        let u = if self.own_qdisc {
            Undo::Qdisc {
                netns: self.netns.clone(),
                iface: self.iface.clone(),
            }
        } else {
            self.filter_undo()
        };
        undo(&u);
        unregister(&u);
    }
}

/// Three namespaces joined by veth pairs:
///
/// ```text
///  client ns                relay ns                       peer ns
///  c0 10.201.1.2/30 ─── r0 10.201.1.1/30   r1 10.201.2.1/30 ─── p0 10.201.2.2/30
///  + 10.202.x.y/32 client addresses (routed in the relay ns via 10.201.1.2)
/// ```
///
/// Forwarding is enabled in the relay namespace only. The addresses exist
/// only inside these namespaces. Dropping it deletes all three (which
/// deletes the veths too).
#[derive(Debug)]
pub struct Topology {
    /// Clients (generator sockets).
    pub client: Netns,
    /// The relay process.
    pub relay: Netns,
    /// Peers (receiver sockets).
    pub peer: Netns,
}

impl Topology {
    /// The relay's client-facing address.
    pub const RELAY_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 1);
    /// The relay's peer-facing address (relayed addresses bind here).
    pub const RELAY_PEER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 1);
    /// The peers' address.
    pub const PEER: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 2);
    /// The peer-side /30, as the relay's allowed peer network.
    pub const PEER_NET: &'static str = "10.201.2.0/30";
    /// First client source address (client `i` gets this + i).
    pub const CLIENT_BASE: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 1);

    /// Create the three namespaces with `clients` client source addresses.
    pub fn create(clients: usize) -> Result<Topology> {
        if clients > 60_000 {
            bail!("at most 60000 client addresses");
        }
        let client = Netns::create(&unique_name("c"))?;
        let relay = Netns::create(&unique_name("r"))?;
        let peer = Netns::create(&unique_name("p"))?;
        let t = Topology {
            client,
            relay,
            peer,
        };
        let (c, r, p) = (&t.client.name, &t.relay.name, &t.peer.name);
        // Fixed MACs and permanent neighbour entries: no datagram waits for (or
        // is dropped during) ARP resolution, however loaded the machine is.
        let (c0, r0, r1, p0) = (
            "02:74:62:01:00:02",
            "02:74:62:01:00:01",
            "02:74:62:02:00:01",
            "02:74:62:02:00:02",
        );
        run(
            "ip",
            &[
                "link", "add", "c0", "address", c0, "netns", c, "type", "veth", "peer", "name",
                "r0", "address", r0, "netns", r,
            ],
        )?;
        run(
            "ip",
            &[
                "link", "add", "r1", "address", r1, "netns", r, "type", "veth", "peer", "name",
                "p0", "address", p0, "netns", p,
            ],
        )?;
        let mut cl = format!(
            "addr add 10.201.1.2/30 dev c0\nlink set c0 up\nroute add default via 10.201.1.1\n\
             neigh replace 10.201.1.1 lladdr {r0} dev c0 nud permanent\n"
        );
        for i in 0..clients {
            cl += &format!("addr add {}/32 dev c0\n", Topology::client_ip(i));
        }
        ip_batch(c, &cl)?;
        ip_batch(
            r,
            &format!(
                "addr add 10.201.1.1/30 dev r0\naddr add 10.201.2.1/30 dev r1\nlink set r0 up\n\
                 link set r1 up\nroute add 10.202.0.0/16 via 10.201.1.2\n\
                 neigh replace 10.201.1.2 lladdr {c0} dev r0 nud permanent\n\
                 neigh replace 10.201.2.2 lladdr {p0} dev r1 nud permanent\n"
            ),
        )?;
        ip_batch(
            p,
            &format!(
                "addr add 10.201.2.2/30 dev p0\nlink set p0 up\nroute add default via 10.201.2.1\n\
                 neigh replace 10.201.2.1 lladdr {r1} dev p0 nud permanent\n"
            ),
        )?;
        // A veth passes nothing until both ends report carrier.
        for (ns, dev) in [(c, "c0"), (r, "r0"), (r, "r1"), (p, "p0")] {
            wait_carrier(ns, dev)?;
        }
        // Per-namespace sysctl: written from a thread inside the relay namespace.
        in_netns(&t.relay, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        })??;
        Ok(t)
    }

    /// Source address of client `i`.
    pub fn client_ip(i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(u32::from(Topology::CLIENT_BASE) + i as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytecode_format_and_threshold() {
        assert_eq!(loss_threshold(0.0), 0);
        assert_eq!(loss_threshold(10.0), 429_496_730);
        assert_eq!(loss_threshold(100.0), u32::MAX);
        let b = loss_bytecode(10.0);
        assert_eq!(
            b,
            "8,40 0 0 4294963200,21 0 5 2048,48 0 0 4293918729,21 0 3 17,\
             32 0 0 4294963256,53 1 0 429496730,6 0 0 2,6 0 0 4294967295"
        );
    }

    #[test]
    fn names_are_unique() {
        assert_ne!(unique_name("x"), unique_name("x"));
    }
}
