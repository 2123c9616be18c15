//! systemd's `sd_notify` protocol without libsystemd: one datagram of
//! `KEY=VALUE` lines to the unix socket named by `NOTIFY_SOCKET`.
//!
//! Owns: reading `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, and
//! sending `READY=1`, `STATUS=`, `STOPPING=1` and `WATCHDOG=1`. When to send
//! them is decided by the relay (readiness, drain) and its side thread
//! (status, watchdog).

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier systemd asked for through the environment, or `None` when
    /// `NOTIFY_SOCKET` is unset (not run by systemd with `Type=notify`) or unusable.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog = watchdog_from_env();
        match Notifier::new(path.as_encoded_bytes(), watchdog) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, socket = ?path, "NOTIFY_SOCKET is unusable; not notifying systemd");
                None
            }
        }
    }

    /// A notifier for the socket at `path` (a leading `@` names an abstract
    /// socket), sending `WATCHDOG=1` every half of `watchdog` when given.
    pub fn new(path: &[u8], watchdog: Option<Duration>) -> io::Result<Notifier> {
        let addr = match path.split_first() {
            None => return Err(io::Error::other("empty NOTIFY_SOCKET")),
            Some((b'@', name)) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            Some((b'/', _)) => {
                use std::os::unix::ffi::OsStrExt;
                SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path))?
            }
            Some(_) => {
                return Err(io::Error::other(
                    "NOTIFY_SOCKET is neither an absolute path nor @abstract",
                ))
            }
        };
        let socket = UnixDatagram::unbound()?;
        Ok(Notifier {
            socket,
            addr,
            watchdog,
        })
    }

    /// The watchdog timeout systemd expects keep-alives within, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Send `state` (newline-separated `KEY=VALUE` lines).
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        Ok(())
    }

    /// Send `state`, logging (not returning) a failure: notifications are
    /// advisory and the relay runs on without them.
    pub(crate) fn send(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

/// `WATCHDOG_USEC`, when set for this process (`WATCHDOG_PID` absent or ours).
fn watchdog_from_env() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("tern-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.as_os_str().as_encoded_bytes(), None).unwrap();
        n.notify("READY=1\nSTATUS=up").unwrap();
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("tern-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::new(format!("@{name}").as_bytes(), None).unwrap();
        n.notify("WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
    }

    #[test]
    fn rejects_relative_paths() {
        assert!(Notifier::new(b"relative/sock", None).is_err());
        assert!(Notifier::new(b"", None).is_err());
    }
}
