//! The side thread's state and its collector loop: the relay's lifecycle
//! (`starting → active → draining → drained`), the drain switch, every
//! worker's latest report, rates for `/load`, and systemd's status and
//! watchdog.
//!
//! Everything here runs off the workers' cores and touches the workers only
//! through their control channels (drain on/off) and the reports they push
//! (see [`crate::metrics`]). The one `Mutex` guards side-thread state that
//! the HTTP threads read; no worker ever takes it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{self, Receiver, Sender};
use serde::Serialize;
use tern_io::{BackendKind, Wake};

use crate::metrics::{Collected, Exposition, Report, REPORT_EVERY};
use crate::nicstats::NicStats;
use crate::notify::Notifier;
use crate::worker::Control;

/// How often the collector looks at drain progress, readiness and the watchdog.
const TICK: Duration = Duration::from_millis(200);
/// A worker whose last report is older than this is not "reporting".
pub(crate) const FRESH: Duration = Duration::from_secs(3);
/// Rates in `/load` are taken over intervals of this length.
const RATE_EVERY: Duration = Duration::from_secs(5);
/// How often STATUS= goes to systemd.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Where the relay is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Lifecycle {
    /// Workers run but have not all reported yet.
    Starting,
    /// Serving: new allocations are accepted.
    Active,
    /// New allocations are refused; live ones run to their end or the drain timeout.
    Draining,
    /// The drain is over (no allocation left, or the timeout passed): the
    /// owner should shut the relay down.
    Drained,
}

impl Lifecycle {
    /// Every state, for the `tern_state` gauge.
    pub const ALL: [Lifecycle; 4] = [
        Lifecycle::Starting,
        Lifecycle::Active,
        Lifecycle::Draining,
        Lifecycle::Drained,
    ];

    /// The label and JSON value.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Starting => "starting",
            Lifecycle::Active => "active",
            Lifecycle::Draining => "draining",
            Lifecycle::Drained => "drained",
        }
    }
}

/// Who asked for a drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DrainCause {
    /// An operator, through `POST /admin/drain` or [`crate::RelayHandle::set_draining`]; can be undone.
    Admin,
    /// The process is to stop (SIGTERM): final.
    Stop,
}

/// Why a drain could not be undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UndrainError {
    /// The drain was started to stop the process.
    #[error("draining to stop (SIGTERM); cannot resume")]
    Stopping,
    /// The drain is already over.
    #[error("the drain is over; the relay is stopping")]
    Drained,
}

/// A worker's control channel and waker.
pub(crate) struct WorkerLink {
    pub(crate) control: Sender<Control>,
    pub(crate) waker: Arc<dyn Wake>,
}

impl WorkerLink {
    /// Queue `msg` and wake the worker. False if the worker is gone.
    pub(crate) fn send(&self, msg: Control) -> bool {
        if self.control.send(msg).is_err() {
            return false;
        }
        if let Err(e) = self.waker.wake() {
            tracing::warn!(error = %e, "could not wake worker");
        }
        true
    }
}

/// What the side thread, the HTTP threads and the handle share.
pub(crate) struct Side {
    pub(crate) links: Vec<WorkerLink>,
    pub(crate) backend: BackendKind,
    /// Why the packet I/O back end was chosen (the probe's sentence).
    backend_reason: String,
    capacity: Option<usize>,
    drain_timeout: Duration,
    alternate_server: Option<SocketAddr>,
    notifier: Option<Notifier>,
    cpus: usize,
    started_unix: f64,
    state: Mutex<SideState>,
    /// Tells the registry thread the lifecycle changed; `None` without a registry.
    registry_wake: Option<Sender<()>>,
    /// Registry publications that succeeded and failed.
    pub(crate) registry_ok: AtomicU64,
    pub(crate) registry_errors: AtomicU64,
    /// The newest NIC allowance counters (empty unless `nic-stats` finds some).
    pub(crate) nic: Arc<NicStats>,
    /// The SFU router directory; set once at start when `sfu = true`.
    pub(crate) sfu: std::sync::OnceLock<crate::sfu::api::Directory>,
    /// The XDP pre-filter (or why there is none), set once at start.
    pub(crate) xdp: std::sync::OnceLock<Arc<crate::xdp::Xdp>>,
}

struct SideState {
    lifecycle: Lifecycle,
    drain: Option<Drain>,
    /// Bumped at every drain and undrain; workers echo the one they applied.
    epoch: u64,
    collected: Collected,
    admin_token: Option<String>,
    rates: Rates,
    stopping_sent: bool,
}

#[derive(Clone, Copy, Debug)]
struct Drain {
    started: Instant,
    cause: DrainCause,
}

#[derive(Clone, Copy, Debug, Default)]
struct Rates {
    interval: f64,
    packets_per_second: f64,
    bits_per_second: f64,
    cpu_fraction: f64,
}

/// How an `Authorization` header fares against the admin token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenCheck {
    /// No token is configured: admin actions are off.
    Disabled,
    /// Missing, malformed or wrong.
    Denied,
    Granted,
}

/// The `/load` document.
#[derive(Serialize)]
struct Load {
    state: &'static str,
    ready: bool,
    allocations: usize,
    capacity: Option<usize>,
    workers: usize,
    workers_reporting: usize,
    interval_seconds: f64,
    packets_per_second: f64,
    bits_per_second: f64,
    cpu_fraction: f64,
    cpus: usize,
    backend: String,
    version: &'static str,
}

pub(crate) struct SideConfig {
    pub(crate) capacity: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) alternate_server: Option<SocketAddr>,
    pub(crate) admin_token: Option<String>,
    /// Why the packet I/O back end was chosen, for `tern_io_backend_info`.
    pub(crate) backend_reason: String,
    /// The registry thread's wake-up channel, when `registry-url` is set.
    pub(crate) registry_wake: Option<Sender<()>>,
}

impl Side {
    pub(crate) fn new(
        links: Vec<WorkerLink>,
        backend: BackendKind,
        config: SideConfig,
        notifier: Option<Notifier>,
    ) -> Side {
        let workers = links.len();
        Side {
            links,
            backend,
            backend_reason: config.backend_reason,
            capacity: (config.capacity != 0).then_some(config.capacity),
            drain_timeout: config.drain_timeout,
            alternate_server: config.alternate_server,
            notifier,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
            state: Mutex::new(SideState {
                lifecycle: Lifecycle::Starting,
                drain: None,
                epoch: 0,
                collected: Collected::new(workers),
                admin_token: config.admin_token,
                rates: Rates::default(),
                stopping_sent: false,
            }),
            registry_wake: config.registry_wake,
            registry_ok: AtomicU64::new(0),
            registry_errors: AtomicU64::new(0),
            nic: Arc::new(NicStats::default()),
            sfu: std::sync::OnceLock::new(),
            xdp: std::sync::OnceLock::new(),
        }
    }

    /// The lifecycle changed: have the registry publish now. Never blocks.
    fn changed(&self) {
        if let Some(wake) = &self.registry_wake {
            // Full means a wake-up is already pending.
            let _ = wake.try_send(());
        }
    }

    fn lock(&self) -> MutexGuard<'_, SideState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lifecycle(&self) -> Lifecycle {
        self.lock().lifecycle
    }

    pub(crate) fn notify(&self, state: &str) {
        if let Some(n) = &self.notifier {
            n.send(state);
        }
    }

    /// Start draining (or make an operator's drain final). Idempotent.
    pub(crate) fn drain(&self, cause: DrainCause) {
        let mut s = self.lock();
        if let Some(d) = &mut s.drain {
            if cause == DrainCause::Stop && d.cause == DrainCause::Admin {
                d.cause = DrainCause::Stop;
                tracing::info!("stop requested while draining: the drain is now final");
                self.stopping(&mut s);
            }
            return;
        }
        s.epoch += 1;
        let epoch = s.epoch;
        s.lifecycle = Lifecycle::Draining;
        self.changed();
        s.drain = Some(Drain {
            started: Instant::now(),
            cause,
        });
        for l in &self.links {
            l.send(Control::Draining { on: true, epoch });
        }
        let allocations = s.collected.totals().allocations;
        let refusal = match self.alternate_server {
            Some(a) => format!("300 Try Alternate to {a}"),
            None => "403 Forbidden".to_owned(),
        };
        tracing::info!(
            ?cause,
            allocations,
            drain_timeout_s = self.drain_timeout.as_secs(),
            "draining: new allocations get {refusal}; live ones run on until they end or the timeout"
        );
        if cause == DrainCause::Stop {
            self.stopping(&mut s);
        }
        self.notify(&format!("STATUS=draining: {allocations} allocations left"));
    }

    /// Undo an operator's drain.
    pub(crate) fn undrain(&self) -> Result<(), UndrainError> {
        let mut s = self.lock();
        match (s.lifecycle, s.drain) {
            (Lifecycle::Drained, _) => Err(UndrainError::Drained),
            (_, Some(d)) if d.cause == DrainCause::Stop => Err(UndrainError::Stopping),
            (_, Some(_)) => {
                s.epoch += 1;
                let epoch = s.epoch;
                s.drain = None;
                s.lifecycle = if s.collected.workers.iter().all(|w| w.reported.is_some()) {
                    Lifecycle::Active
                } else {
                    Lifecycle::Starting
                };
                self.changed();
                for l in &self.links {
                    l.send(Control::Draining { on: false, epoch });
                }
                tracing::info!("drain cancelled: accepting new allocations again");
                self.notify("STATUS=active: drain cancelled");
                Ok(())
            }
            (_, None) => Ok(()),
        }
    }

    /// Tell systemd the service is stopping (once).
    fn stopping(&self, s: &mut SideState) {
        if !s.stopping_sent {
            s.stopping_sent = true;
            self.notify("STOPPING=1");
        }
    }

    /// The process is about to stop the relay.
    pub(crate) fn shutting_down(&self) {
        let mut s = self.lock();
        self.stopping(&mut s);
    }

    pub(crate) fn set_admin_token(&self, token: Option<String>) {
        self.lock().admin_token = token;
    }

    pub(crate) fn check_token(&self, authorization: Option<&str>) -> TokenCheck {
        let s = self.lock();
        let Some(token) = &s.admin_token else {
            return TokenCheck::Disabled;
        };
        let offered = authorization.and_then(|a| {
            let (scheme, rest) = a.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim_start())
        });
        match offered {
            Some(o) if constant_time_eq(o.as_bytes(), token.as_bytes()) => TokenCheck::Granted,
            _ => TokenCheck::Denied,
        }
    }

    /// `Ok` when the relay should get new users; else why not.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        let s = self.lock();
        let now = Instant::now();
        let workers = s.collected.workers.len();
        let reporting = s.collected.reporting(now, FRESH);
        match s.lifecycle {
            Lifecycle::Active if reporting == workers => Ok(()),
            Lifecycle::Active => Err(format!(
                "{} of {workers} workers have not reported in {} s",
                workers - reporting,
                FRESH.as_secs()
            )),
            other => Err(other.as_str().to_owned()),
        }
    }

    pub(crate) fn render_metrics(&self) -> String {
        let cpu_seconds = cpu_time().map(|d| d.as_secs_f64());
        let resident_bytes = resident_bytes();
        let s = self.lock();
        let states: Vec<&str> = Lifecycle::ALL.iter().map(|l| l.as_str()).collect();
        let allocations = s.collected.totals().allocations;
        let mut out = s.collected.render_prometheus(&Exposition {
            backend: self.backend,
            backend_reason: &self.backend_reason,
            state: s.lifecycle.as_str(),
            states: &states,
            allocations,
            cpu_seconds,
            resident_bytes,
            start_time_seconds: self.started_unix,
            registry_publish: self.registry_wake.is_some().then(|| {
                (
                    self.registry_ok.load(Ordering::Relaxed),
                    self.registry_errors.load(Ordering::Relaxed),
                )
            }),
        });
        drop(s);
        self.nic.render(&mut out);
        if let Some(x) = self.xdp.get() {
            x.render_prometheus(&mut out);
        }
        out
    }

    pub(crate) fn render_load(&self) -> String {
        let ready = self.readiness().is_ok();
        let s = self.lock();
        let load = Load {
            state: s.lifecycle.as_str(),
            ready,
            allocations: s.collected.totals().allocations,
            capacity: self.capacity,
            workers: s.collected.workers.len(),
            workers_reporting: s.collected.reporting(Instant::now(), FRESH),
            interval_seconds: s.rates.interval,
            packets_per_second: s.rates.packets_per_second,
            bits_per_second: s.rates.bits_per_second,
            cpu_fraction: s.rates.cpu_fraction,
            cpus: self.cpus,
            backend: self.backend.to_string(),
            version: env!("CARGO_PKG_VERSION"),
        };
        serde_json::to_string(&load).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// The collector's own timers.
struct Timers {
    watchdog: Option<Duration>,
    next_watchdog: Instant,
    last_watchdog_check: Instant,
    withheld: bool,
    next_rate: Instant,
    rate_base: (Instant, u64, u64, Duration),
    next_status: Instant,
}

/// The collector loop: absorb reports as they come, hand them back, and tick.
/// Ends when `stop` is dropped or every worker's report sender is gone.
pub(crate) fn collect(
    side: Arc<Side>,
    reports: Receiver<Box<Report>>,
    recycle: Vec<Sender<Box<Report>>>,
    stop: Receiver<()>,
) {
    let now = Instant::now();
    let watchdog = side.notifier.as_ref().and_then(Notifier::watchdog);
    let mut timers = Timers {
        watchdog,
        next_watchdog: now,
        last_watchdog_check: now,
        withheld: false,
        next_rate: now + RATE_EVERY,
        rate_base: (now, 0, 0, cpu_time().unwrap_or_default()),
        next_status: now,
    };
    if let Some(w) = watchdog {
        tracing::info!(
            watchdog_ms = w.as_millis() as u64,
            "systemd watchdog armed; keep-alives every half of it while all workers progress"
        );
    }
    let mut next_tick = now;
    loop {
        let now = Instant::now();
        if now >= next_tick {
            side.tick(now, &mut timers);
            next_tick = now + TICK;
        }
        channel::select! {
            recv(reports) -> r => match r {
                Ok(mut r) => {
                    let worker = r.worker;
                    side.lock().collected.absorb(&mut r, Instant::now());
                    if let Some(back) = recycle.get(worker) {
                        // Bounded(1) and this is the worker's only report: cannot be full.
                        let _worker_may_be_gone = back.try_send(r);
                    }
                }
                Err(_) => break,
            },
            recv(stop) -> _ => break,
            default(next_tick.saturating_duration_since(now)) => {}
        }
    }
}

impl Side {
    fn tick(&self, now: Instant, t: &mut Timers) {
        let mut s = self.lock();
        if s.lifecycle == Lifecycle::Starting
            && s.collected.workers.iter().all(|w| w.reported.is_some())
        {
            s.lifecycle = Lifecycle::Active;
            self.changed();
            tracing::info!(
                workers = s.collected.workers.len(),
                "all workers reporting: active"
            );
        }
        if let (Lifecycle::Draining, Some(d)) = (s.lifecycle, s.drain) {
            let epoch = s.epoch;
            let empty =
                s.collected.workers.iter().all(|w| {
                    w.last.drain_epoch == epoch && w.last.draining && w.last.allocations == 0
                });
            if empty {
                s.lifecycle = Lifecycle::Drained;
                self.changed();
                tracing::info!(
                    took_s = now.duration_since(d.started).as_secs(),
                    "drain complete: no allocation left"
                );
            } else if now.duration_since(d.started) >= self.drain_timeout {
                s.lifecycle = Lifecycle::Drained;
                self.changed();
                tracing::warn!(
                    allocations = s.collected.totals().allocations,
                    drain_timeout_s = self.drain_timeout.as_secs(),
                    "drain timeout passed; stopping with allocations left"
                );
            }
        }
        if now >= t.next_rate {
            let totals = s.collected.totals();
            let cpu = cpu_time().unwrap_or_default();
            let (at, packets, bytes, cpu_before) = t.rate_base;
            let secs = now.duration_since(at).as_secs_f64();
            if secs > 0.0 {
                s.rates = Rates {
                    interval: secs,
                    packets_per_second: totals.packets_relayed().saturating_sub(packets) as f64
                        / secs,
                    bits_per_second: totals.bytes_relayed().saturating_sub(bytes) as f64 * 8.0
                        / secs,
                    cpu_fraction: cpu.saturating_sub(cpu_before).as_secs_f64()
                        / (secs * self.cpus as f64),
                };
            }
            t.rate_base = (now, totals.packets_relayed(), totals.bytes_relayed(), cpu);
            t.next_rate = now + RATE_EVERY;
        }
        if let Some(every) = t.watchdog {
            if now >= t.next_watchdog {
                // Progress since the last check; for watchdogs shorter than the
                // report interval, progress within the last two reports counts.
                let slack = 2 * REPORT_EVERY;
                let stuck = s.collected.workers.iter().position(|w| {
                    !w.progressed
                        .is_some_and(|p| p + slack > t.last_watchdog_check)
                });
                match stuck {
                    None => {
                        self.notify("WATCHDOG=1");
                        t.withheld = false;
                    }
                    Some(worker) if !t.withheld => {
                        t.withheld = true;
                        tracing::error!(
                            worker,
                            "worker made no progress since the last check; withholding the systemd watchdog keep-alive"
                        );
                    }
                    Some(_) => {}
                }
                t.last_watchdog_check = now;
                t.next_watchdog = now + every / 2;
            }
        }
        if self.notifier.is_some() && now >= t.next_status {
            let totals = s.collected.totals();
            self.notify(&format!(
                "STATUS={}: {} allocations, {} workers",
                s.lifecycle.as_str(),
                totals.allocations,
                s.collected.workers.len()
            ));
            t.next_status = now + STATUS_EVERY;
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// User plus system CPU time of the process.
fn cpu_time() -> Option<Duration> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let micros = |tv: nix::sys::time::TimeVal| {
        Duration::from_secs(tv.tv_sec().max(0) as u64)
            + Duration::from_micros(tv.tv_usec().max(0) as u64)
    };
    Some(micros(u.user_time()) + micros(u.system_time()))
}

/// VmRSS of the process, from /proc/self/status.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    /// WATCHDOG=1 goes out only while every worker makes progress.
    #[test]
    fn watchdog_is_withheld_while_a_worker_is_stuck() {
        use std::os::unix::net::UnixDatagram;
        let dir = std::env::temp_dir().join(format!("tern-side-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wd.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        let notifier = Notifier::new(
            path.as_os_str().as_encoded_bytes(),
            Some(Duration::from_secs(1)),
        )
        .unwrap();
        let side = Side::new(
            Vec::new(),
            BackendKind::Mmsg,
            SideConfig {
                capacity: 0,
                drain_timeout: Duration::from_secs(60),
                alternate_server: None,
                admin_token: None,
                backend_reason: "forced".to_owned(),
                registry_wake: None,
            },
            Some(notifier),
        );
        side.lock().collected = Collected::new(2);
        let t0 = Instant::now();
        let mut timers = Timers {
            watchdog: Some(Duration::from_secs(1)),
            next_watchdog: t0,
            last_watchdog_check: t0,
            withheld: false,
            next_rate: t0 + RATE_EVERY,
            rate_base: (t0, 0, 0, Duration::ZERO),
            next_status: t0 + STATUS_EVERY,
        };
        let received = || {
            let mut buf = [0u8; 256];
            let mut all = Vec::new();
            while let Ok(n) = sock.recv(&mut buf) {
                all.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            all
        };
        // Worker 1 never reported: no keep-alive.
        side.lock().collected.workers[0].progressed = Some(t0);
        side.tick(t0, &mut timers);
        assert!(!received().contains(&"WATCHDOG=1".to_owned()));
        assert!(timers.withheld);
        // Both progressed since the last check: keep-alive.
        let t1 = t0 + Duration::from_millis(500);
        for w in &mut side.lock().collected.workers {
            w.progressed = Some(t1);
        }
        side.tick(t1, &mut timers);
        assert_eq!(received(), vec!["WATCHDOG=1".to_owned()]);
        // Worker 0 stops progressing: after the slack runs out, withheld again.
        let t2 = t1 + 4 * REPORT_EVERY;
        side.lock().collected.workers[1].progressed = Some(t2);
        side.tick(t2, &mut timers);
        // (Its progress at t1 was at the previous check: this one still passes.)
        assert_eq!(received(), vec!["WATCHDOG=1".to_owned()]);
        let t3 = t2 + Duration::from_millis(500);
        side.lock().collected.workers[1].progressed = Some(t3);
        side.tick(t3, &mut timers);
        assert!(received().is_empty(), "worker 0 is stuck");
        assert!(timers.withheld);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn process_figures_are_read() {
        assert!(cpu_time().is_some());
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
