//! NIC allowance counters: the cloud NICs' own count of packets they dropped
//! because the instance went over an allowance (AWS ENA's
//! `pps_allowance_exceeded`, `bw_in_allowance_exceeded`,
//! `bw_out_allowance_exceeded`, `conntrack_allowance_exceeded`,
//! `linklocal_allowance_exceeded`), exported as
//! `tern_nic_allowance_exceeded_total{interface,allowance}` so an operator can
//! tell a host limit from a relay limit.
//!
//! Owns: finding the interfaces whose `ethtool -S` table holds those names,
//! and reading them with the `SIOCETHTOOL` ioctl (`ETHTOOL_GDRVINFO`,
//! `ETHTOOL_GSSET_INFO`, `ETHTOOL_GSTRINGS`, `ETHTOOL_GSTATS`) on a thread of
//! its own, every `nic-stats-interval` seconds. The newest reading sits in a
//! [`NicStats`] that `/metrics` renders. Must not touch: the workers or the
//! packet path (nothing here runs there), or any setting of the NIC (only
//! `G…` get-requests, which need no privilege).
//!
//! The stats table of a driver is read by name each time, never cached by
//! position: a driver may renumber its table when queues change.

use std::ffi::c_void;
use std::fmt::{self, Write as _};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam::channel::{Receiver, RecvTimeoutError};

/// Which interfaces to read (`nic-stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NicSelection {
    /// Every interface but loopback whose stats table has allowance counters.
    #[default]
    Auto,
    /// Read nothing.
    Off,
    /// Exactly these interfaces; one without allowance counters is logged.
    Interfaces(Vec<String>),
}

impl NicSelection {
    /// Parse the values of `nic-stats`: `["auto"]`, `["off"]`, or interface
    /// names (each valid as a Linux interface name).
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<NicSelection, String> {
        match values {
            [] => Err("expected \"auto\", \"off\" or interface names".to_owned()),
            [one] if one.as_ref() == "auto" => Ok(NicSelection::Auto),
            [one] if one.as_ref() == "off" => Ok(NicSelection::Off),
            names => {
                let mut out: Vec<String> = Vec::with_capacity(names.len());
                for n in names {
                    let n = n.as_ref();
                    if n == "auto" || n == "off" {
                        return Err(format!("{n:?} cannot be combined with interface names"));
                    }
                    check_ifname(n)?;
                    if out.iter().any(|o| o == n) {
                        return Err(format!("{n:?} listed twice"));
                    }
                    out.push(n.to_owned());
                }
                Ok(NicSelection::Interfaces(out))
            }
        }
    }
}

impl fmt::Display for NicSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NicSelection::Auto => f.write_str("auto"),
            NicSelection::Off => f.write_str("off"),
            NicSelection::Interfaces(names) => f.write_str(&names.join(",")),
        }
    }
}

/// A limit of the cloud NIC's that drops packets when exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Allowance {
    /// Packets per second (ENA `pps_allowance_exceeded`).
    Pps,
    /// Inbound bandwidth (`bw_in_allowance_exceeded`).
    BwIn,
    /// Outbound bandwidth (`bw_out_allowance_exceeded`).
    BwOut,
    /// Connection-tracking entries (`conntrack_allowance_exceeded`).
    Conntrack,
    /// Traffic to link-local services: DNS, metadata, NTP (`linklocal_allowance_exceeded`).
    Linklocal,
}

impl Allowance {
    /// Every allowance, in label order.
    pub const ALL: [Allowance; 5] = [
        Allowance::Pps,
        Allowance::BwIn,
        Allowance::BwOut,
        Allowance::Conntrack,
        Allowance::Linklocal,
    ];

    /// The `allowance` label.
    pub fn label(self) -> &'static str {
        match self {
            Allowance::Pps => "pps",
            Allowance::BwIn => "bw_in",
            Allowance::BwOut => "bw_out",
            Allowance::Conntrack => "conntrack",
            Allowance::Linklocal => "linklocal",
        }
    }

    /// The driver's name for the counter in `ethtool -S`.
    pub fn stat_name(self) -> &'static str {
        match self {
            Allowance::Pps => "pps_allowance_exceeded",
            Allowance::BwIn => "bw_in_allowance_exceeded",
            Allowance::BwOut => "bw_out_allowance_exceeded",
            Allowance::Conntrack => "conntrack_allowance_exceeded",
            Allowance::Linklocal => "linklocal_allowance_exceeded",
        }
    }

    /// The allowance a stats-table name counts, if it is one of ours.
    pub fn from_stat_name(name: &str) -> Option<Allowance> {
        Allowance::ALL.into_iter().find(|a| a.stat_name() == name)
    }
}

/// ENA's gauge of connection-tracking entries left before the allowance
/// (newer drivers only).
const CONNTRACK_AVAILABLE: &str = "conntrack_allowance_available";

/// Where in a stats table our counters sit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableLayout {
    /// (index in the table, allowance), in table order.
    pub allowances: Vec<(usize, Allowance)>,
    /// Index of `conntrack_allowance_available`, when present.
    pub conntrack_available: Option<usize>,
}

impl TableLayout {
    /// Find our names among a driver's stat names. A name the table repeats
    /// counts once (its first place).
    pub fn of<S: AsRef<str>>(names: &[S]) -> TableLayout {
        let mut layout = TableLayout::default();
        for (i, name) in names.iter().enumerate() {
            let name = name.as_ref();
            if let Some(a) = Allowance::from_stat_name(name) {
                if !layout.allowances.iter().any(|(_, seen)| *seen == a) {
                    layout.allowances.push((i, a));
                }
            } else if name == CONNTRACK_AVAILABLE && layout.conntrack_available.is_none() {
                layout.conntrack_available = Some(i);
            }
        }
        layout
    }

    /// True when the table has no allowance counter.
    pub fn is_empty(&self) -> bool {
        self.allowances.is_empty()
    }

    /// Pick `interface`'s counters out of its table's values (same order as
    /// the names). `None` if the values do not cover the layout.
    pub fn read(&self, interface: &str, driver: &str, values: &[u64]) -> Option<NicAllowances> {
        let counters = self
            .allowances
            .iter()
            .map(|&(i, a)| values.get(i).map(|&v| (a, v)))
            .collect::<Option<Vec<_>>>()?;
        let conntrack_available = match self.conntrack_available {
            Some(i) => Some(*values.get(i)?),
            None => None,
        };
        Some(NicAllowances {
            interface: interface.to_owned(),
            driver: driver.to_owned(),
            counters,
            conntrack_available,
        })
    }
}

/// One interface's allowance counters at one reading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicAllowances {
    /// The interface name.
    pub interface: String,
    /// The driver, as `ethtool -i` names it.
    pub driver: String,
    /// The counters the table has, in [`Allowance::ALL`] order.
    pub counters: Vec<(Allowance, u64)>,
    /// `conntrack_allowance_available`, when the driver reports it.
    pub conntrack_available: Option<u64>,
}

/// Why an interface gives no allowance counters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NicStatsError {
    /// No interface of that name (in this network namespace).
    #[error("no such interface")]
    NoSuchInterface,
    /// The driver has no `ethtool -S` table (loopback, tun, ...).
    #[error("no ethtool statistics (driver {driver})")]
    NoStats {
        /// The driver.
        driver: String,
    },
    /// The table has no allowance counter (not an ENA NIC, or an old driver).
    #[error("driver {driver}: none of its {count} ethtool statistics is an allowance counter")]
    NoAllowances {
        /// The driver.
        driver: String,
        /// How many statistics the table has.
        count: usize,
    },
    /// The table changed size between two requests; read again next time.
    #[error("the statistics table changed while being read ({expected} then {got})")]
    TableChanged {
        /// What `ETHTOOL_GSSET_INFO` said.
        expected: usize,
        /// What the later request said.
        got: usize,
    },
    /// The names the kernel returned do not parse.
    #[error("malformed statistics names: {0}")]
    Malformed(String),
    /// An ioctl failed.
    #[error("{request}: {source}")]
    Ioctl {
        /// `ETHTOOL_GSTATS` etc.
        request: &'static str,
        /// The kernel's answer.
        source: io::Error,
    },
}

/// What one scan found: interfaces with counters, and why the others gave none.
#[derive(Debug, Default)]
pub struct Scan {
    /// Interfaces with allowance counters, in the order looked at.
    pub found: Vec<NicAllowances>,
    /// Interfaces looked at without result, and why.
    pub without: Vec<(String, NicStatsError)>,
}

impl Scan {
    /// A one-line account for the log: what was found and why the rest was not.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if self.found.is_empty() {
            s.push_str("no interface with allowance counters");
        } else {
            for (i, n) in self.found.iter().enumerate() {
                if i > 0 {
                    s.push_str("; ");
                }
                let names: Vec<&str> = n.counters.iter().map(|(a, _)| a.label()).collect();
                let _ = write!(s, "{} ({}): {}", n.interface, n.driver, names.join(", "));
            }
        }
        if !self.without.is_empty() {
            s.push_str(" (looked at ");
            for (i, (name, why)) in self.without.iter().enumerate() {
                if i > 0 {
                    s.push_str("; ");
                }
                let _ = write!(s, "{name}: {why}");
            }
            s.push(')');
        }
        s
    }
}

/// The newest reading, shared by the reader thread and `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct NicStats {
    latest: Mutex<Vec<NicAllowances>>,
}

impl NicStats {
    fn lock(&self) -> MutexGuard<'_, Vec<NicAllowances>> {
        self.latest.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set(&self, found: Vec<NicAllowances>) {
        *self.lock() = found;
    }

    /// Append the exposition of the newest reading (nothing when no
    /// interface has allowance counters).
    pub(crate) fn render(&self, out: &mut String) {
        render(out, &self.lock());
    }
}

/// The Prometheus text for `nics`; nothing at all when it is empty.
pub fn render(out: &mut String, nics: &[NicAllowances]) {
    if nics.iter().any(|n| !n.counters.is_empty()) {
        let name = "tern_nic_allowance_exceeded_total";
        let _ = writeln!(
            out,
            "# HELP {name} Packets the NIC dropped or queued because the instance exceeded an \
             allowance (ethtool -S *_allowance_exceeded; AWS ENA)."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        for n in nics {
            for &(a, v) in &n.counters {
                let _ = writeln!(
                    out,
                    "{name}{{interface=\"{}\",allowance=\"{}\"}} {v}",
                    escape_label(&n.interface),
                    a.label()
                );
            }
        }
    }
    if nics.iter().any(|n| n.conntrack_available.is_some()) {
        let name = "tern_nic_conntrack_allowance_available";
        let _ = writeln!(
            out,
            "# HELP {name} Connections the NIC can still track before conntrack_allowance_exceeded \
             (ethtool -S conntrack_allowance_available; AWS ENA)."
        );
        let _ = writeln!(out, "# TYPE {name} gauge");
        for n in nics {
            if let Some(v) = n.conntrack_available {
                let _ = writeln!(
                    out,
                    "{name}{{interface=\"{}\"}} {v}",
                    escape_label(&n.interface)
                );
            }
        }
    }
}

/// Escape a label value per the text exposition format (`\`, `"`, newline).
/// Interface names may contain quotes and backslashes.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Read every selected interface once. `Off` reads nothing.
pub fn scan(selection: &NicSelection) -> io::Result<Scan> {
    let names = match selection {
        NicSelection::Off => return Ok(Scan::default()),
        NicSelection::Auto => interfaces()?,
        NicSelection::Interfaces(names) => names.clone(),
    };
    let ethtool = Ethtool::open()?;
    let mut scan = Scan::default();
    for name in names {
        if *selection == NicSelection::Auto && ethtool.is_loopback(&name).unwrap_or(false) {
            continue;
        }
        match ethtool.allowances(&name) {
            Ok(n) => scan.found.push(n),
            Err(e) => scan.without.push((name, e)),
        }
    }
    Ok(scan)
}

/// The reader thread: scan at once, then every `every`, until `stop` is
/// dropped. Logs what it finds at start and whenever that changes.
pub(crate) fn run(
    stats: Arc<NicStats>,
    selection: NicSelection,
    every: Duration,
    stop: Receiver<()>,
) {
    let mut last_account: Option<String> = None;
    loop {
        match scan(&selection) {
            Ok(s) => {
                let account = s.describe();
                if last_account.as_deref() != Some(&account) {
                    let explicit = matches!(selection, NicSelection::Interfaces(_));
                    if explicit && !s.without.is_empty() {
                        tracing::warn!(nic_stats = %selection, "NIC allowance counters: {account}");
                    } else {
                        tracing::info!(nic_stats = %selection, "NIC allowance counters: {account}");
                    }
                    last_account = Some(account);
                }
                stats.set(s.found);
            }
            Err(e) => {
                let account = format!("cannot list interfaces: {e}");
                if last_account.as_deref() != Some(&account) {
                    tracing::warn!("NIC allowance counters: {account}");
                    last_account = Some(account);
                }
            }
        }
        match stop.recv_timeout(every) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
}

/// Interface names of this thread's network namespace, in index order.
pub fn interfaces() -> io::Result<Vec<String>> {
    let list = nix::net::if_::if_nameindex().map_err(io::Error::from)?;
    Ok(list
        .iter()
        .map(|i| i.name().to_string_lossy().into_owned())
        .collect())
}

/// Split the `ETH_SS_STATS` strings buffer (`count` NUL-padded names of
/// [`ETH_GSTRING_LEN`] bytes) into names. Bytes past a name's first NUL are
/// ignored; a name without NUL uses all 32 bytes; invalid UTF-8 is replaced.
pub fn parse_stat_names(buf: &[u8], count: usize) -> Result<Vec<String>, NicStatsError> {
    let need = count
        .checked_mul(ETH_GSTRING_LEN)
        .ok_or_else(|| NicStatsError::Malformed(format!("{count} names overflow")))?;
    if buf.len() < need {
        return Err(NicStatsError::Malformed(format!(
            "{} bytes for {count} names of {ETH_GSTRING_LEN}",
            buf.len()
        )));
    }
    Ok(buf[..need]
        .chunks_exact(ETH_GSTRING_LEN)
        .map(|raw| {
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        })
        .collect())
}

/// Bytes per name in `ETHTOOL_GSTRINGS` (`ETH_GSTRING_LEN`).
pub const ETH_GSTRING_LEN: usize = 32;

// <linux/ethtool.h>
const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETH_SS_STATS: u32 = 1;
/// `struct ethtool_drvinfo`: cmd, driver[32], version[32], fw_version[32],
/// bus_info[32], erom_version[32], reserved2[12], five u32 counts.
const DRVINFO_LEN: usize = 4 + 32 * 5 + 12 + 4 * 5;
/// Kernels write as many entries as the driver has *now*, whatever count the
/// request carried; a table that grew between two requests would overrun a
/// buffer sized exactly. Leave this much room (and then reject the reading).
fn with_slack(count: usize) -> usize {
    count.saturating_mul(2).saturating_add(64)
}
/// Refuse tables larger than this (ENA has a few hundred entries).
const MAX_STATS: usize = 1 << 16;

/// A socket to send `SIOCETHTOOL` requests on.
struct Ethtool {
    fd: OwnedFd,
}

impl Ethtool {
    fn open() -> io::Result<Ethtool> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Ethtool { fd })
    }

    /// The allowance counters of `name`, or why it has none.
    fn allowances(&self, name: &str) -> Result<NicAllowances, NicStatsError> {
        let driver = match self.driver(name) {
            Ok(d) => d,
            // No ethtool operations at all (loopback): no table either.
            Err(NicStatsError::Ioctl { source, .. })
                if source.raw_os_error() == Some(libc::EOPNOTSUPP) =>
            {
                return Err(NicStatsError::NoStats {
                    driver: "unknown".to_owned(),
                })
            }
            Err(e) => return Err(e),
        };
        let count = self.stats_count(name).map_err(|e| match e {
            NicStatsError::Ioctl { source, .. }
                if matches!(source.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) =>
            {
                NicStatsError::NoStats {
                    driver: driver.clone(),
                }
            }
            other => other,
        })?;
        if count == 0 {
            return Err(NicStatsError::NoStats { driver });
        }
        let names = self.stat_names(name, count)?;
        let layout = TableLayout::of(&names);
        if layout.is_empty() {
            return Err(NicStatsError::NoAllowances { driver, count });
        }
        let values = self.stat_values(name, count)?;
        layout.read(name, &driver, &values).ok_or_else(|| {
            NicStatsError::Malformed(format!("{} values for {count} names", values.len()))
        })
    }

    fn is_loopback(&self, name: &str) -> Result<bool, NicStatsError> {
        let mut req = ifreq(name)?;
        // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifru_flags inside `req`,
        // which lives across the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
        if rc < 0 {
            return Err(ioctl_error("SIOCGIFFLAGS"));
        }
        // SAFETY: the kernel filled the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        Ok(i32::from(flags) & libc::IFF_LOOPBACK != 0)
    }

    fn driver(&self, name: &str) -> Result<String, NicStatsError> {
        let mut buf = Words::new(DRVINFO_LEN);
        buf.put_u32(0, ETHTOOL_GDRVINFO);
        self.ethtool(name, &mut buf, "ETHTOOL_GDRVINFO")?;
        let raw = &buf.bytes()[4..4 + 32];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Ok(String::from_utf8_lossy(&raw[..end]).into_owned())
    }

    fn stats_count(&self, name: &str) -> Result<usize, NicStatsError> {
        // struct ethtool_sset_info { u32 cmd; u32 reserved; u64 sset_mask; u32 data[]; }
        let mut buf = Words::new(16 + 4);
        buf.put_u32(0, ETHTOOL_GSSET_INFO);
        buf.put_u64(8, 1 << ETH_SS_STATS);
        self.ethtool(name, &mut buf, "ETHTOOL_GSSET_INFO")?;
        // The kernel clears the bits of sets the driver lacks.
        if buf.get_u64(8) & (1 << ETH_SS_STATS) == 0 {
            return Ok(0);
        }
        let count = buf.get_u32(16) as usize;
        if count > MAX_STATS {
            return Err(NicStatsError::Malformed(format!(
                "{count} statistics (more than {MAX_STATS})"
            )));
        }
        Ok(count)
    }

    fn stat_names(&self, name: &str, count: usize) -> Result<Vec<String>, NicStatsError> {
        // struct ethtool_gstrings { u32 cmd; u32 string_set; u32 len; u8 data[]; }
        let room = with_slack(count);
        let mut buf = Words::new(12 + room * ETH_GSTRING_LEN);
        buf.put_u32(0, ETHTOOL_GSTRINGS);
        buf.put_u32(4, ETH_SS_STATS);
        buf.put_u32(8, count as u32);
        self.ethtool(name, &mut buf, "ETHTOOL_GSTRINGS")?;
        let got = buf.get_u32(8) as usize;
        if got != count {
            return Err(NicStatsError::TableChanged {
                expected: count,
                got,
            });
        }
        parse_stat_names(&buf.bytes()[12..], count)
    }

    fn stat_values(&self, name: &str, count: usize) -> Result<Vec<u64>, NicStatsError> {
        // struct ethtool_stats { u32 cmd; u32 n_stats; u64 data[]; }
        let room = with_slack(count);
        let mut buf = Words::new(8 + room * 8);
        buf.put_u32(0, ETHTOOL_GSTATS);
        buf.put_u32(4, count as u32);
        self.ethtool(name, &mut buf, "ETHTOOL_GSTATS")?;
        let got = buf.get_u32(4) as usize;
        if got != count {
            return Err(NicStatsError::TableChanged {
                expected: count,
                got,
            });
        }
        Ok((0..count).map(|i| buf.get_u64(8 + 8 * i)).collect())
    }

    /// One `SIOCETHTOOL` request whose argument block is `buf`.
    fn ethtool(
        &self,
        name: &str,
        buf: &mut Words,
        request: &'static str,
    ) -> Result<(), NicStatsError> {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_data = buf.as_mut_ptr().cast();
        // SAFETY: SIOCETHTOOL reads ifr_name and the command block ifru_data
        // points to, and writes at most the block's declared size back into
        // it; `buf` (8-byte aligned) was sized for that plus the slack of
        // `with_slack`, and both `req` and `buf` outlive the call.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
        if rc < 0 {
            let source = io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::ENODEV) {
                return Err(NicStatsError::NoSuchInterface);
            }
            return Err(NicStatsError::Ioctl { request, source });
        }
        Ok(())
    }
}

fn ioctl_error(request: &'static str) -> NicStatsError {
    let source = io::Error::last_os_error();
    if source.raw_os_error() == Some(libc::ENODEV) {
        NicStatsError::NoSuchInterface
    } else {
        NicStatsError::Ioctl { request, source }
    }
}

/// A zeroed `ifreq` naming `name`.
fn ifreq(name: &str) -> Result<libc::ifreq, NicStatsError> {
    check_ifname(name).map_err(NicStatsError::Malformed)?;
    // SAFETY: ifreq is plain old data (a name array and a union of integers,
    // addresses and pointers), for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &b) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = b as libc::c_char;
    }
    Ok(req)
}

/// A Linux interface name: 1 to 15 bytes, not `.` or `..`, no `/`, `:`,
/// whitespace or NUL (the kernel's `dev_valid_name`).
fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(format!(
            "{name:?}: an interface name has 1 to {} bytes",
            libc::IFNAMSIZ - 1
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not an interface name"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return Err(format!(
            "{name:?}: an interface name has no '/', ':', NUL or whitespace"
        ));
    }
    Ok(())
}

/// An 8-byte-aligned, zeroed byte buffer for ioctl argument blocks.
struct Words(Vec<u64>);

impl Words {
    fn new(bytes: usize) -> Words {
        Words(vec![0; bytes.div_ceil(8)])
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the Vec's allocation holds len * 8 initialised bytes, u8 has
        // alignment 1, and the slice borrows self.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast::<u8>(), self.0.len() * 8) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, with the unique borrow of self.
        unsafe {
            std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), self.0.len() * 8)
        }
    }

    fn as_mut_ptr(&mut self) -> *mut c_void {
        self.0.as_mut_ptr().cast()
    }

    fn put_u32(&mut self, at: usize, v: u32) {
        self.bytes_mut()[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(&mut self, at: usize, v: u64) {
        self.bytes_mut()[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }

    fn get_u32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes()[at..at + 4]);
        u32::from_ne_bytes(b)
    }

    fn get_u64(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes()[at..at + 8]);
        u64::from_ne_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(names: &[&str]) -> Vec<u8> {
        let mut buf = vec![0u8; names.len() * ETH_GSTRING_LEN];
        for (i, n) in names.iter().enumerate() {
            buf[i * ETH_GSTRING_LEN..i * ETH_GSTRING_LEN + n.len()].copy_from_slice(n.as_bytes());
        }
        buf
    }

    #[test]
    fn names_parse_from_the_padded_table() {
        let buf = table(&["tx_timeout", "pps_allowance_exceeded", ""]);
        assert_eq!(
            parse_stat_names(&buf, 3).unwrap(),
            vec!["tx_timeout", "pps_allowance_exceeded", ""]
        );
        // A full 32-byte name has no NUL.
        let full = "a".repeat(ETH_GSTRING_LEN);
        assert_eq!(parse_stat_names(full.as_bytes(), 1).unwrap(), vec![full]);
        // Short buffers are errors, not panics.
        assert!(matches!(
            parse_stat_names(&buf, 4),
            Err(NicStatsError::Malformed(_))
        ));
        assert!(parse_stat_names(&buf, usize::MAX).is_err());
    }

    #[test]
    fn only_allowance_names_are_picked() {
        let names = [
            "tx_timeout",
            "bw_in_allowance_exceeded",
            "queue_0_tx_cnt",
            "pps_allowance_exceeded",
            "conntrack_allowance_available",
            "bw_out_allowance_exceeded",
            "pps_allowance_exceeded_x",
            "linklocal_allowance_exceeded",
            "conntrack_allowance_exceeded",
            "pps_allowance_exceeded",
        ];
        let layout = TableLayout::of(&names);
        assert_eq!(
            layout.allowances,
            vec![
                (1, Allowance::BwIn),
                (3, Allowance::Pps),
                (5, Allowance::BwOut),
                (7, Allowance::Linklocal),
                (8, Allowance::Conntrack),
            ]
        );
        assert_eq!(layout.conntrack_available, Some(4));
        let values: Vec<u64> = (100..110).collect();
        let nic = layout.read("eth0", "ena", &values).unwrap();
        assert_eq!(nic.counters[0], (Allowance::BwIn, 101));
        assert_eq!(nic.counters.len(), 5);
        assert_eq!(nic.conntrack_available, Some(104));
        assert!(layout.read("eth0", "ena", &values[..5]).is_none());
        // veth's table: nothing of ours.
        assert!(TableLayout::of(&["peer_ifindex", "rx_queue_0_xdp_packets"]).is_empty());
    }

    /// An ENA-like table comes out as one labelled counter per allowance.
    #[test]
    fn an_allowance_table_is_exported_with_labels() {
        let names = [
            "tx_timeout",
            "bw_in_allowance_exceeded",
            "bw_out_allowance_exceeded",
            "pps_allowance_exceeded",
            "conntrack_allowance_exceeded",
            "linklocal_allowance_exceeded",
            "conntrack_allowance_available",
        ];
        let values = [9, 11, 22, 33, 44, 55, 123_456];
        let layout = TableLayout::of(&names);
        let nic = layout.read("ens5", "ena", &values).unwrap();
        let odd = NicAllowances {
            interface: "we\"ird\\".to_owned(),
            driver: "ena".to_owned(),
            counters: vec![(Allowance::Pps, 7)],
            conntrack_available: None,
        };
        let mut out = String::new();
        render(&mut out, &[nic, odd]);
        let samples: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            vec![
                r#"tern_nic_allowance_exceeded_total{interface="ens5",allowance="bw_in"} 11"#,
                r#"tern_nic_allowance_exceeded_total{interface="ens5",allowance="bw_out"} 22"#,
                r#"tern_nic_allowance_exceeded_total{interface="ens5",allowance="pps"} 33"#,
                r#"tern_nic_allowance_exceeded_total{interface="ens5",allowance="conntrack"} 44"#,
                r#"tern_nic_allowance_exceeded_total{interface="ens5",allowance="linklocal"} 55"#,
                r#"tern_nic_allowance_exceeded_total{interface="we\"ird\\",allowance="pps"} 7"#,
                r#"tern_nic_conntrack_allowance_available{interface="ens5"} 123456"#,
            ]
        );
        assert!(out.contains("# TYPE tern_nic_allowance_exceeded_total counter"));
        assert!(out.contains("# TYPE tern_nic_conntrack_allowance_available gauge"));
        // Nothing found, nothing exported (not even HELP lines).
        let mut none = String::new();
        render(&mut none, &[]);
        assert!(none.is_empty());
    }

    #[test]
    fn selection_parses() {
        assert_eq!(NicSelection::parse(&["auto"]), Ok(NicSelection::Auto));
        assert_eq!(NicSelection::parse(&["off"]), Ok(NicSelection::Off));
        assert_eq!(
            NicSelection::parse(&["eth0", "ens5"]),
            Ok(NicSelection::Interfaces(vec!["eth0".into(), "ens5".into()]))
        );
        for bad in [
            &["auto", "eth0"][..],
            &["eth0", "eth0"],
            &[""],
            &["a/b"],
            &["sixteen-bytes-xx"],
            &[".."],
            &["e th0"],
        ] {
            assert!(NicSelection::parse(bad).is_err(), "{bad:?}");
        }
        let none: [&str; 0] = [];
        assert!(NicSelection::parse(&none).is_err());
        assert_eq!(
            NicSelection::Interfaces(vec!["a".into(), "b".into()]).to_string(),
            "a,b"
        );
    }

    #[test]
    fn describe_says_why_nothing_was_found() {
        let scan = Scan {
            found: Vec::new(),
            without: vec![(
                "veth0".to_owned(),
                NicStatsError::NoAllowances {
                    driver: "veth".to_owned(),
                    count: 1,
                },
            )],
        };
        assert_eq!(
            scan.describe(),
            "no interface with allowance counters (looked at veth0: driver veth: none of its 1 \
             ethtool statistics is an allowance counter)"
        );
    }

    /// Loopback has no ethtool table: read for real, it says so.
    #[test]
    fn loopback_has_no_allowance_counters() {
        let scan = scan(&NicSelection::Interfaces(vec!["lo".to_owned()])).unwrap();
        assert!(scan.found.is_empty());
        assert_eq!(scan.without.len(), 1);
        assert!(
            matches!(scan.without[0].1, NicStatsError::NoStats { .. }),
            "{:?}",
            scan.without[0].1
        );
        let missing = scan_one("tern-nonesuch");
        assert!(
            matches!(missing, Err(NicStatsError::NoSuchInterface)),
            "{missing:?}"
        );
    }

    fn scan_one(name: &str) -> Result<NicAllowances, NicStatsError> {
        Ethtool::open().unwrap().allowances(name)
    }

    proptest! {
        /// Arbitrary bytes and counts never panic, and every parsed name
        /// comes from its own 32-byte slot.
        #[test]
        fn parse_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..400), count in 0usize..20) {
            if let Ok(names) = parse_stat_names(&buf, count) {
                prop_assert_eq!(names.len(), count);
                for n in &names {
                    prop_assert!(n.len() <= ETH_GSTRING_LEN * 3);
                }
            }
        }

        /// Names written into a table come back, and the layout finds
        /// exactly the allowance names among them.
        #[test]
        fn tables_round_trip(picks in proptest::collection::vec(0usize..8, 0..24)) {
            const POOL: [&str; 8] = [
                "pps_allowance_exceeded", "bw_in_allowance_exceeded", "rx_drops",
                "bw_out_allowance_exceeded", "conntrack_allowance_exceeded",
                "linklocal_allowance_exceeded", "peer_ifindex", "conntrack_allowance_available",
            ];
            let names: Vec<&str> = picks.iter().map(|&i| POOL[i]).collect();
            let parsed = parse_stat_names(&table(&names), names.len()).unwrap();
            prop_assert_eq!(&parsed, &names);
            let layout = TableLayout::of(&parsed);
            let mut distinct: Vec<Allowance> =
                names.iter().filter_map(|n| Allowance::from_stat_name(n)).collect();
            distinct.sort();
            distinct.dedup();
            let mut got: Vec<Allowance> = layout.allowances.iter().map(|&(_, a)| a).collect();
            got.sort();
            prop_assert_eq!(got, distinct);
            for &(i, a) in &layout.allowances {
                prop_assert_eq!(names[i], a.stat_name());
            }
        }

        #[test]
        fn selection_parse_never_panics(values in proptest::collection::vec(".{0,20}", 0..4)) {
            let _ = NicSelection::parse(&values);
        }
    }
}
