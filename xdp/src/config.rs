//! What the program needs to know about the relay: its listening ports, its
//! relay port range, the ChannelData channel range, the unauthenticated-request
//! limit and which traffic goes to AF_XDP sockets. Owns the validation and the
//! byte layout of `struct tern_config`; does not talk to the kernel.

use std::ops::RangeInclusive;

/// Most listening ports the program checks (`TERN_MAX_LISTEN_PORTS`).
pub const MAX_LISTEN_PORTS: usize = 8;

const FLAG_REDIRECT_LISTEN: u16 = 1 << 0;
const FLAG_REDIRECT_RELAY: u16 = 1 << 1;
/// Size of `struct tern_config` in the program.
const RAW_LEN: usize = 40;

/// A configuration the program cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// More listening ports than the program checks.
    #[error("at most {MAX_LISTEN_PORTS} listening ports, got {0}")]
    TooManyPorts(usize),
    /// Port 0 cannot be listened on.
    #[error("listening port 0")]
    ZeroPort,
    /// The relay range is empty or starts at 0.
    #[error("relay port range {0}-{1} is empty or starts at 0")]
    BadRelayRange(u16, u16),
    /// A listening port is also a relay port.
    #[error("listening port {0} lies in the relay port range")]
    PortInRelayRange(u16),
    /// The channel range ends outside 0x4000..=0x7FFF.
    #[error("highest channel number {0:#06x} is outside 0x4000..=0x7fff")]
    BadChannelMax(u16),
    /// A rate with a zero burst lets nothing through.
    #[error("unauthenticated-request burst must be at least 1 when a rate is set")]
    ZeroBurst,
}

/// The program's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterConfig {
    /// UDP ports tern listens on for clients (STUN/TURN), at most
    /// [`MAX_LISTEN_PORTS`].
    pub listen_ports: Vec<u16>,
    /// The relay port range, if any.
    pub relay_ports: Option<RangeInclusive<u16>>,
    /// Highest acceptable ChannelData channel: 0x4FFF (RFC 8656) or up to
    /// 0x7FFF (RFC 5766).
    pub channel_max: u16,
    /// Unauthenticated STUN requests per second each source may send
    /// (0 = no limit). A source is an IPv4 address or an IPv6 /64.
    pub unauth_rate: u32,
    /// How many such requests a quiet source may send at once.
    pub unauth_burst: u32,
    /// Redirect sane traffic to listening ports into the queue's AF_XDP socket.
    pub redirect_listen: bool,
    /// Redirect traffic to the relay range into the queue's AF_XDP socket.
    pub redirect_relay: bool,
}

impl Default for FilterConfig {
    fn default() -> FilterConfig {
        FilterConfig {
            listen_ports: Vec::new(),
            relay_ports: None,
            channel_max: 0x4FFF,
            unauth_rate: 0,
            unauth_burst: 0,
            redirect_listen: false,
            redirect_relay: false,
        }
    }
}

impl FilterConfig {
    /// Check the configuration and lay it out as `struct tern_config`
    /// (native byte order, the program's host-order ports).
    pub(crate) fn to_raw(&self) -> Result<[u8; RAW_LEN], ConfigError> {
        if self.listen_ports.len() > MAX_LISTEN_PORTS {
            return Err(ConfigError::TooManyPorts(self.listen_ports.len()));
        }
        if self.listen_ports.contains(&0) {
            return Err(ConfigError::ZeroPort);
        }
        let (lo, hi) = match &self.relay_ports {
            Some(r) => {
                let (lo, hi) = (*r.start(), *r.end());
                if lo == 0 || lo > hi {
                    return Err(ConfigError::BadRelayRange(lo, hi));
                }
                if let Some(p) = self.listen_ports.iter().find(|p| r.contains(p)) {
                    return Err(ConfigError::PortInRelayRange(*p));
                }
                (lo, hi)
            }
            None => (0, 0),
        };
        if !(0x4000..=0x7FFF).contains(&self.channel_max) {
            return Err(ConfigError::BadChannelMax(self.channel_max));
        }
        let (interval, tolerance) = self.gcra()?;
        let mut flags = 0;
        if self.redirect_listen {
            flags |= FLAG_REDIRECT_LISTEN;
        }
        if self.redirect_relay {
            flags |= FLAG_REDIRECT_RELAY;
        }

        let mut raw = [0u8; RAW_LEN];
        for (i, port) in self.listen_ports.iter().enumerate() {
            raw[2 * i..2 * i + 2].copy_from_slice(&port.to_ne_bytes());
        }
        raw[16..18].copy_from_slice(&lo.to_ne_bytes());
        raw[18..20].copy_from_slice(&hi.to_ne_bytes());
        raw[20..22].copy_from_slice(&self.channel_max.to_ne_bytes());
        raw[22..24].copy_from_slice(&flags.to_ne_bytes());
        raw[24..32].copy_from_slice(&interval.to_ne_bytes());
        raw[32..40].copy_from_slice(&tolerance.to_ne_bytes());
        Ok(raw)
    }

    /// The GCRA emission interval and tolerance (ns) of the unauthenticated
    /// limit: one request costs `1e9 / rate` ns, and `burst - 1` requests may
    /// be sent ahead of schedule.
    fn gcra(&self) -> Result<(u64, u64), ConfigError> {
        if self.unauth_rate == 0 {
            return Ok((0, 0));
        }
        if self.unauth_burst == 0 {
            return Err(ConfigError::ZeroBurst);
        }
        let interval = (1_000_000_000 / u64::from(self.unauth_rate)).max(1);
        Ok((interval, interval * u64::from(self.unauth_burst - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> FilterConfig {
        FilterConfig {
            listen_ports: vec![3478, 5349],
            relay_ports: Some(49152..=65535),
            unauth_rate: 10,
            unauth_burst: 20,
            ..FilterConfig::default()
        }
    }

    #[test]
    fn layout_matches_struct_tern_config() {
        let raw = base().to_raw().unwrap();
        assert_eq!(&raw[0..2], &3478u16.to_ne_bytes());
        assert_eq!(&raw[2..4], &5349u16.to_ne_bytes());
        assert_eq!(&raw[4..16], &[0; 12]);
        assert_eq!(&raw[16..18], &49152u16.to_ne_bytes());
        assert_eq!(&raw[18..20], &65535u16.to_ne_bytes());
        assert_eq!(&raw[20..22], &0x4FFFu16.to_ne_bytes());
        assert_eq!(&raw[22..24], &0u16.to_ne_bytes());
        assert_eq!(&raw[24..32], &100_000_000u64.to_ne_bytes());
        assert_eq!(&raw[32..40], &1_900_000_000u64.to_ne_bytes());
    }

    #[test]
    fn refuses_what_the_program_cannot_check() {
        let mut c = base();
        c.listen_ports = (1..=9).collect();
        assert_eq!(c.to_raw(), Err(ConfigError::TooManyPorts(9)));
        let mut c = base();
        c.listen_ports.push(0);
        assert_eq!(c.to_raw(), Err(ConfigError::ZeroPort));
        let mut c = base();
        c.listen_ports.push(50000);
        assert_eq!(c.to_raw(), Err(ConfigError::PortInRelayRange(50000)));
        let mut c = base();
        c.relay_ports = Some(0..=10);
        assert_eq!(c.to_raw(), Err(ConfigError::BadRelayRange(0, 10)));
        let mut c = base();
        c.channel_max = 0x8000;
        assert_eq!(c.to_raw(), Err(ConfigError::BadChannelMax(0x8000)));
        let mut c = base();
        c.unauth_burst = 0;
        assert_eq!(c.to_raw(), Err(ConfigError::ZeroBurst));
        c.unauth_rate = 0;
        assert!(c.to_raw().is_ok(), "no rate, no burst needed");
    }

    #[test]
    fn flags() {
        let mut c = base();
        c.redirect_listen = true;
        c.redirect_relay = true;
        assert_eq!(&c.to_raw().unwrap()[22..24], &3u16.to_ne_bytes());
    }
}
