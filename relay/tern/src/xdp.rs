//! The XDP pre-filter in the daemon: the `xdp*` settings, loading
//! [`tern_xdp::Filter`] with tern's listening ports, relay range, channel
//! range and unauthenticated-request limit, attaching it to the interfaces
//! that carry the listen addresses (or `xdp-interfaces`), the metrics of what
//! runs and what it dropped, and detaching at exit (the kernel also detaches
//! it if the process dies: the attachments are bpf_links).
//!
//! Owns: the mode decision and its log line and metric. Must not touch the
//! workers or the packet path: the filter runs in the kernel, and its
//! counters are read only when `/metrics` is scraped.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use crate::config::Config;

/// `xdp-unauth-rate` unless set: unauthenticated STUN requests per second per
/// source (an IPv4 address or an IPv6 /64).
pub const DEFAULT_UNAUTH_RATE: u32 = 100;
/// `xdp-unauth-burst` unless set.
pub const DEFAULT_UNAUTH_BURST: u32 = 200;

/// The `xdp` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// No XDP program (the default).
    #[default]
    Off,
    /// Native mode where the driver allows, generic otherwise; when XDP
    /// cannot run at all (no CAP_BPF/CAP_NET_ADMIN, no interface), say why
    /// and run without it.
    Auto,
    /// Native mode on every interface, or refuse to start.
    Native,
    /// Generic mode on every interface, or refuse to start.
    Generic,
}

impl XdpMode {
    /// Every value, as spelled in the configuration.
    pub const NAMES: [&'static str; 4] = ["off", "auto", "native", "generic"];

    /// The configuration spelling.
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Off => "off",
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for XdpMode {
    type Err = String;

    fn from_str(s: &str) -> Result<XdpMode, String> {
        match s {
            "off" => Ok(XdpMode::Off),
            "auto" => Ok(XdpMode::Auto),
            "native" => Ok(XdpMode::Native),
            "generic" => Ok(XdpMode::Generic),
            _ => Err(format!(
                "unknown XDP mode; expected one of {}",
                XdpMode::NAMES.join(", ")
            )),
        }
    }
}

/// `--xdp`.
pub fn parse_xdp_mode(s: &str) -> Result<XdpMode, String> {
    s.parse()
}

/// `--xdp-interfaces`: an interface name as `ip link` shows it.
pub fn parse_interface(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 || s.contains(['/', ' ', '\0']) || s == "." || s == ".." {
        return Err("not an interface name (1-15 characters, no '/' or spaces)".to_owned());
    }
    Ok(s.to_owned())
}

/// Why a forced XDP mode could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct XdpError(String);

/// What the pre-filter is doing, for the log and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "xdp"), allow(dead_code))] // `Attached` needs the feature
pub(crate) enum XdpState {
    /// `xdp = "off"`.
    Off,
    /// Attached: (interface, mode) pairs.
    Attached(Vec<(String, &'static str)>),
    /// `auto` could not run it; why.
    Unavailable(String),
}

/// The running pre-filter (or why there is none).
pub(crate) struct Xdp {
    state: XdpState,
    #[cfg(feature = "xdp")]
    loaded: Mutex<Option<Loaded>>,
    #[cfg(not(feature = "xdp"))]
    #[allow(dead_code)] // nothing is ever loaded without the feature
    loaded: Mutex<Option<()>>,
}

impl fmt::Debug for Xdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Xdp")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "xdp")]
struct Loaded {
    filter: tern_xdp::Filter,
    attachments: Vec<tern_xdp::Attachment>,
}

/// Where the AF_XDP back end (`io-backend = "xdp"`) runs: the interfaces
/// carrying the listen and relay addresses, one worker per receive queue
/// (the fewest any of them has).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AfXdpPlan {
    pub(crate) interfaces: Vec<String>,
    pub(crate) queues: u32,
    /// Each worker's relay ports (worker i serves queue i), set by the caller.
    pub(crate) slices: Vec<(u16, u16)>,
}

impl AfXdpPlan {
    /// The interfaces (`xdp-interfaces`, else those carrying the listen
    /// addresses and the relay addresses `relay`) and their receive queues.
    pub(crate) fn new(config: &Config, relay: &[std::net::IpAddr]) -> Result<AfXdpPlan, XdpError> {
        let interfaces = if config.xdp_interfaces.is_empty() {
            let mut addrs = config.listen.clone();
            addrs.extend(relay.iter().map(|ip| SocketAddr::new(*ip, 0)));
            interfaces_for(&addrs).map_err(XdpError)?
        } else {
            config.xdp_interfaces.clone()
        };
        if interfaces.len() > 16 {
            return Err(XdpError(format!(
                "io-backend xdp serves at most 16 interfaces, not {}",
                interfaces.len()
            )));
        }
        let mut queues = u32::MAX;
        for ifname in &interfaces {
            let n = tern_io::xsk::neigh::rx_queues(ifname)
                .map_err(|e| XdpError(format!("{ifname}: receive queues: {e}")))?;
            queues = queues.min(n);
        }
        Ok(AfXdpPlan {
            interfaces,
            queues: queues.clamp(1, 256),
            slices: Vec::new(),
        })
    }
}

/// What one worker needs to run the AF_XDP back end.
pub(crate) struct XskSetup {
    pub(crate) interfaces: Vec<String>,
    pub(crate) queue: u32,
    pub(crate) verify_checksums: bool,
    pub(crate) xdp: Arc<Xdp>,
}

/// Build worker `s.queue`'s AF_XDP back end and register its sockets with
/// the XDP program.
pub(crate) fn open_worker_io(s: &XskSetup) -> io::Result<tern_io::xsk::XdpIo> {
    let names: Vec<&str> = s.interfaces.iter().map(String::as_str).collect();
    let mut config = tern_io::xsk::XdpConfig::on(&names, s.queue);
    config.verify_checksums = s.verify_checksums;
    let io = tern_io::xsk::XdpIo::new(config)?;
    for (ifindex, fd) in io.xsks() {
        s.xdp.register_xsk(ifindex, s.queue, fd)?;
    }
    tracing::info!(
        interfaces = ?s.interfaces,
        queue = s.queue,
        mode = ?io.mode(),
        "AF_XDP sockets bound and registered"
    );
    Ok(io)
}

impl Xdp {
    /// Load and attach as `config.xdp` says, for a relay bound to `listen`.
    /// `Off` and an `Auto` that cannot run return a filter-less `Xdp`; a
    /// forced mode that cannot run is an error. With `af_xdp`, the program
    /// is attached (even with `xdp = "off"`, and failure is an error) and
    /// redirects tern's traffic into the workers' AF_XDP sockets.
    pub(crate) fn start(
        config: &Config,
        listen: &[SocketAddr],
        af_xdp: Option<&AfXdpPlan>,
    ) -> Result<Xdp, XdpError> {
        if let Some(plan) = af_xdp {
            let mut c = config.clone();
            if c.xdp == XdpMode::Off {
                c.xdp = XdpMode::Native;
            }
            return load_and_attach(&c, listen, &plan.interfaces, Some(plan)).map_err(XdpError);
        }
        let unavailable = |why: String| -> Result<Xdp, XdpError> {
            if config.xdp == XdpMode::Auto {
                tracing::warn!(reason = %why, "XDP pre-filter not running (xdp = auto)");
                Ok(Xdp::without(XdpState::Unavailable(why)))
            } else {
                Err(XdpError(why))
            }
        };
        if config.xdp == XdpMode::Off {
            tracing::info!("XDP pre-filter off (xdp = off)");
            return Ok(Xdp::without(XdpState::Off));
        }
        let interfaces = if config.xdp_interfaces.is_empty() {
            match interfaces_for(listen) {
                Ok(i) => i,
                Err(why) => return unavailable(why),
            }
        } else {
            config.xdp_interfaces.clone()
        };
        match load_and_attach(config, listen, &interfaces, None) {
            Ok(x) => Ok(x),
            Err(why) => unavailable(why),
        }
    }

    fn without(state: XdpState) -> Xdp {
        Xdp {
            state,
            loaded: Mutex::new(None),
        }
    }

    /// Apply the settings that can change while the program runs (the
    /// unauthenticated-request limit).
    pub(crate) fn reconfigure(&self, config: &Config) {
        #[cfg(feature = "xdp")]
        {
            let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(l) = loaded.as_mut() {
                let mut fc = l.filter.config().clone();
                fc.unauth_rate = config.xdp_unauth_rate;
                fc.unauth_burst = config.xdp_unauth_burst;
                if fc == *l.filter.config() {
                    return;
                }
                match l.filter.set_config(&fc) {
                    Ok(()) => tracing::info!(
                        rate = fc.unauth_rate,
                        burst = fc.unauth_burst,
                        "XDP unauthenticated-request limit updated"
                    ),
                    Err(e) => tracing::warn!("XDP limit not updated: {e}"),
                }
            }
        }
        #[cfg(not(feature = "xdp"))]
        let _ = config;
    }

    /// Put the AF_XDP socket of `queue` on interface `ifindex` in the
    /// program's map.
    pub(crate) fn register_xsk(
        &self,
        ifindex: u32,
        queue: u32,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> io::Result<()> {
        #[cfg(feature = "xdp")]
        {
            let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            match loaded.as_ref() {
                Some(l) => l
                    .filter
                    .register_xsk_on(ifindex, queue, fd)
                    .map_err(io::Error::other),
                None => Err(io::Error::other("the XDP program is not loaded")),
            }
        }
        #[cfg(not(feature = "xdp"))]
        {
            let _ = (ifindex, queue, fd);
            Err(io::Error::other("built without the xdp feature"))
        }
    }

    /// Detach from every interface now (also done when dropped).
    pub(crate) fn detach(&self) {
        #[cfg(feature = "xdp")]
        {
            let taken = self.loaded.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(l) = taken {
                for a in l.attachments {
                    let ifname = a.ifname().to_owned();
                    match a.detach() {
                        Ok(()) => tracing::info!(interface = %ifname, "XDP pre-filter detached"),
                        Err(e) => tracing::warn!(interface = %ifname, "XDP detach: {e}"),
                    }
                }
            }
        }
    }

    /// The `tern_xdp_*` families, appended to the exposition.
    pub(crate) fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let (state, reason) = match &self.state {
            XdpState::Off => ("off", String::new()),
            XdpState::Attached(_) => ("attached", String::new()),
            XdpState::Unavailable(why) => ("unavailable", escape(why)),
        };
        let _ = writeln!(
            out,
            "# HELP tern_xdp_info Whether the XDP pre-filter runs (off, attached, unavailable) and why not.\n\
             # TYPE tern_xdp_info gauge\n\
             tern_xdp_info{{state=\"{state}\",reason=\"{reason}\"}} 1"
        );
        if let XdpState::Attached(ifs) = &self.state {
            let _ = writeln!(
                out,
                "# HELP tern_xdp_attached XDP pre-filter attachments by interface and mode (native, generic).\n\
                 # TYPE tern_xdp_attached gauge"
            );
            for (ifname, mode) in ifs {
                let _ = writeln!(
                    out,
                    "tern_xdp_attached{{interface=\"{}\",mode=\"{mode}\"}} 1",
                    escape(ifname)
                );
            }
        }
        #[cfg(feature = "xdp")]
        {
            let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            let Some(l) = loaded.as_ref() else {
                return;
            };
            match l.filter.counters() {
                Ok(c) => {
                    let _ = writeln!(
                        out,
                        "# HELP tern_xdp_packets_total Frames the XDP pre-filter judged, by verdict (pass, redirect, drop) and reason.\n\
                         # TYPE tern_xdp_packets_total counter"
                    );
                    for (counter, n) in c.iter() {
                        let _ = writeln!(
                            out,
                            "tern_xdp_packets_total{{verdict=\"{}\",reason=\"{}\"}} {n}",
                            counter.verdict().label(),
                            counter.reason()
                        );
                    }
                }
                Err(e) => tracing::warn!("reading XDP counters: {e}"),
            }
        }
    }
}

impl Drop for Xdp {
    fn drop(&mut self) {
        self.detach();
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The interfaces that carry `listen`: the one holding each specific
/// address; every interface that is up (loopback aside) for a wildcard.
fn interfaces_for(listen: &[SocketAddr]) -> Result<Vec<String>, String> {
    let addrs: Vec<nix::ifaddrs::InterfaceAddress> = nix::ifaddrs::getifaddrs()
        .map_err(|e| format!("cannot list interfaces: {e}"))?
        .collect();
    let ip_of = |a: &nix::ifaddrs::InterfaceAddress| -> Option<std::net::IpAddr> {
        let s = a.address.as_ref()?;
        if let Some(v4) = s.as_sockaddr_in() {
            return Some(std::net::IpAddr::V4(v4.ip()));
        }
        s.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip()))
    };
    let mut out: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        if !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    };
    for l in listen {
        if l.ip().is_unspecified() {
            for a in &addrs {
                let up = a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
                let lo = a
                    .flags
                    .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK);
                if up && !lo && ip_of(a).is_some() {
                    add(&a.interface_name);
                }
            }
        } else {
            match addrs.iter().find(|a| ip_of(a) == Some(l.ip())) {
                Some(a) => add(&a.interface_name),
                None => return Err(format!("no interface carries listen address {}", l.ip())),
            }
        }
    }
    if out.is_empty() {
        return Err("no interface to attach to (set xdp-interfaces)".to_owned());
    }
    Ok(out)
}

#[cfg(feature = "xdp")]
fn load_and_attach(
    config: &Config,
    listen: &[SocketAddr],
    interfaces: &[String],
    af_xdp: Option<&AfXdpPlan>,
) -> Result<Xdp, String> {
    use tern_xdp::{AttachMode, Filter, FilterConfig};

    let mut ports: Vec<u16> = Vec::new();
    for a in listen {
        if !ports.contains(&a.port()) {
            ports.push(a.port());
        }
    }
    let fc = FilterConfig {
        listen_ports: ports,
        relay_ports: Some(config.relay_ports.0..=config.relay_ports.1),
        channel_max: if config.strict_channel_range {
            0x4FFF
        } else {
            0x7FFF
        },
        unauth_rate: config.xdp_unauth_rate,
        unauth_burst: config.xdp_unauth_burst,
        redirect_listen: af_xdp.is_some(),
        redirect_relay: af_xdp.is_some(),
    };
    let filter = Filter::load(&fc).map_err(|e| {
        format!("{e} (needs CAP_BPF and CAP_NET_ADMIN, or root, and a kernel with XDP)")
    })?;
    if let Some(plan) = af_xdp {
        for (queue, (lo, hi)) in plan.slices.iter().enumerate() {
            filter
                .set_queue_slice(queue as u32, Some(*lo..=*hi))
                .map_err(|e| e.to_string())?;
        }
    }
    let mode = match config.xdp {
        XdpMode::Native => AttachMode::Native,
        XdpMode::Generic => AttachMode::Generic,
        XdpMode::Auto | XdpMode::Off => AttachMode::Auto,
    };
    let mut attachments = Vec::with_capacity(interfaces.len());
    let mut attached = Vec::with_capacity(interfaces.len());
    for ifname in interfaces {
        // On error the attachments made so far drop, detaching again.
        let a = filter.attach(ifname, mode).map_err(|e| e.to_string())?;
        tracing::info!(
            interface = %ifname,
            mode = %a.mode(),
            native_refused = a.native_error().unwrap_or(""),
            replaced_stale = a.replaced_stale().map(|id| id.to_string()).unwrap_or_default(),
            listen_ports = ?fc.listen_ports,
            relay_ports = %format_args!("{}-{}", config.relay_ports.0, config.relay_ports.1),
            unauth_rate = fc.unauth_rate,
            unauth_burst = fc.unauth_burst,
            "XDP pre-filter attached"
        );
        attached.push((ifname.clone(), a.mode().label()));
        attachments.push(a);
    }
    Ok(Xdp {
        state: XdpState::Attached(attached),
        loaded: Mutex::new(Some(Loaded {
            filter,
            attachments,
        })),
    })
}

#[cfg(not(feature = "xdp"))]
fn load_and_attach(
    _: &Config,
    _: &[SocketAddr],
    _: &[String],
    _: Option<&AfXdpPlan>,
) -> Result<Xdp, String> {
    Err("this tern was built without the `xdp` feature".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_and_bad_ones_name_the_choices() {
        for name in XdpMode::NAMES {
            assert_eq!(name.parse::<XdpMode>().unwrap().name(), name);
        }
        let e = "fast".parse::<XdpMode>().unwrap_err();
        assert!(e.contains("off, auto, native, generic"), "{e}");
    }

    #[test]
    fn keys_and_flags() {
        let c = Config::from_toml_str(
            "xdp = \"native\"\nxdp-interfaces = [\"eth0\", \"eth1\"]\n\
             xdp-unauth-rate = 5\nxdp-unauth-burst = 9\n",
        )
        .unwrap();
        assert_eq!(c.xdp, XdpMode::Native);
        assert_eq!(c.xdp_interfaces, vec!["eth0", "eth1"]);
        assert_eq!((c.xdp_unauth_rate, c.xdp_unauth_burst), (5, 9));
        assert!(c.xdp_verify_checksums);
        let c = Config::from_toml_str("xdp-verify-checksums = false").unwrap();
        assert!(!c.xdp_verify_checksums);
        let d = Config::default();
        assert_eq!(d.xdp, XdpMode::Off);
        assert_eq!(
            (d.xdp_unauth_rate, d.xdp_unauth_burst),
            (DEFAULT_UNAUTH_RATE, DEFAULT_UNAUTH_BURST)
        );
        let e = Config::from_toml_str("xdp = \"fast\"").unwrap_err();
        assert_eq!(e.key(), Some("xdp"));
        let e = Config::from_toml_str("xdp-interfaces = [\"a b\"]").unwrap_err();
        assert_eq!(e.key(), Some("xdp-interfaces"));

        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from([
            "tern",
            "--xdp",
            "generic",
            "--xdp-interfaces",
            "veth0",
            "--xdp-unauth-rate",
            "0",
            "--xdp-unauth-burst",
            "3",
            "--xdp-verify-checksums",
            "false",
        ])
        .unwrap();
        let mut c = Config::default();
        cli.flags.apply(&mut c);
        assert_eq!(c.xdp, XdpMode::Generic);
        assert_eq!(c.xdp_interfaces, vec!["veth0"]);
        assert_eq!((c.xdp_unauth_rate, c.xdp_unauth_burst), (0, 3));
        assert!(!c.xdp_verify_checksums);
        assert!(crate::cli::Cli::try_parse_from(["tern", "--xdp", "fast"]).is_err());
    }

    #[test]
    fn a_rate_needs_a_burst() {
        let mut c = Config::dev_default();
        c.xdp_unauth_burst = 0;
        assert_eq!(c.validate().unwrap_err().key(), Some("xdp-unauth-burst"));
        c.xdp_unauth_rate = 0;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn interface_names() {
        assert_eq!(parse_interface("eth0").unwrap(), "eth0");
        for bad in ["", "a/b", "with space", "sixteen-chars-xx", ".."] {
            assert!(parse_interface(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_listen_maps_to_lo_and_unknown_addresses_are_named() {
        let lo = interfaces_for(&["127.0.0.1:3478".parse().unwrap()]).unwrap();
        assert_eq!(lo, vec!["lo".to_owned()]);
        let e = interfaces_for(&["192.0.2.123:3478".parse().unwrap()]).unwrap_err();
        assert!(e.contains("192.0.2.123"), "{e}");
    }

    #[test]
    fn off_is_off_and_says_so_in_metrics() {
        let x = Xdp::start(&Config::default(), &[], None).unwrap();
        assert_eq!(x.state, XdpState::Off);
        let mut out = String::new();
        x.render_prometheus(&mut out);
        assert!(
            out.contains("tern_xdp_info{state=\"off\",reason=\"\"} 1"),
            "{out}"
        );
        assert!(!out.contains("tern_xdp_packets_total"));
    }

    #[test]
    fn auto_without_an_interface_runs_without_and_forced_refuses() {
        let mut c = Config {
            xdp: XdpMode::Auto,
            ..Config::default()
        };
        let listen = ["192.0.2.123:3478".parse().unwrap()];
        let x = Xdp::start(&c, &listen, None).unwrap();
        match &x.state {
            XdpState::Unavailable(why) => assert!(why.contains("192.0.2.123"), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut out = String::new();
        x.render_prometheus(&mut out);
        assert!(out.contains("state=\"unavailable\""), "{out}");
        c.xdp = XdpMode::Native;
        assert!(Xdp::start(&c, &listen, None).is_err());
    }
}
