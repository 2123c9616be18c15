//! CPU accounting from `/proc`: a process's utime+stime (by pid), this
//! process's own, the whole machine's busy time (softirq and irq included),
//! and the kernel's UDP drop counters, sampled at the edges of a
//! measurement window.

use std::fs;
use std::io;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Clock ticks per second of `/proc` CPU times (`USER_HZ`).
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime+stime of process `pid` in ticks (all its threads, live and exited).
pub fn process_ticks(pid: u32) -> io::Result<u64> {
    parse_stat_ticks(&fs::read_to_string(format!("/proc/{pid}/stat"))?)
}

/// utime+stime of this process in ticks.
pub fn self_ticks() -> io::Result<u64> {
    parse_stat_ticks(&fs::read_to_string("/proc/self/stat")?)
}

fn parse_stat_ticks(stat: &str) -> io::Result<u64> {
    // Fields after the command name (which may hold spaces and parens):
    // state(3) ... utime(14) stime(15): index 11 and 12 after ')'.
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected /proc/PID/stat format",
        )
    };
    let rest = stat.rsplit_once(')').ok_or_else(bad)?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: u64 = f.get(11).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let st: u64 = f.get(12).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    Ok(ut + st)
}

/// The machine's aggregate CPU time from the `cpu` line of `/proc/stat`, in ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineTicks {
    /// user+nice+system+irq+softirq+steal (guest time is inside user).
    pub busy: u64,
    /// busy + idle + iowait.
    pub total: u64,
    /// softirq alone (packet processing the kernel does outside any process).
    pub softirq: u64,
}

/// Read `/proc/stat`.
pub fn machine_ticks() -> io::Result<MachineTicks> {
    parse_proc_stat(&fs::read_to_string("/proc/stat")?)
}

fn parse_proc_stat(s: &str) -> io::Result<MachineTicks> {
    let line = s
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no cpu line in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    let (user, nice, system, idle, iowait, irq, softirq, steal) =
        (g(0), g(1), g(2), g(3), g(4), g(5), g(6), g(7));
    let busy = user + nice + system + irq + softirq + steal;
    Ok(MachineTicks {
        busy,
        total: busy + idle + iowait,
        softirq,
    })
}

/// Online CPUs.
pub fn cpu_count() -> usize {
    thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `Udp: ... RcvbufErrors SndbufErrors` (both IPv4 and IPv6) from `/proc/net/snmp{,6}`.
pub fn udp_buffer_errors() -> (u64, u64) {
    let mut rcv = 0;
    let mut snd = 0;
    if let Ok(s) = fs::read_to_string("/proc/net/snmp") {
        let lines: Vec<&str> = s.lines().filter(|l| l.starts_with("Udp:")).collect();
        if lines.len() >= 2 {
            let names: Vec<&str> = lines[0].split_whitespace().collect();
            let vals: Vec<&str> = lines[1].split_whitespace().collect();
            for (n, v) in names.iter().zip(vals.iter()) {
                match *n {
                    "RcvbufErrors" => rcv += v.parse::<u64>().unwrap_or(0),
                    "SndbufErrors" => snd += v.parse::<u64>().unwrap_or(0),
                    _ => {}
                }
            }
        }
    }
    if let Ok(s) = fs::read_to_string("/proc/net/snmp6") {
        for l in s.lines() {
            let mut it = l.split_whitespace();
            match (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) {
                (Some("Udp6RcvbufErrors"), Some(v)) => rcv += v,
                (Some("Udp6SndbufErrors"), Some(v)) => snd += v,
                _ => {}
            }
        }
    }
    (rcv, snd)
}

/// One sample at a window's edge.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    at: Instant,
    relay: Option<u64>,
    bench: u64,
    machine: MachineTicks,
    udp_rcvbuf_errors: u64,
    udp_sndbuf_errors: u64,
}

impl Snapshot {
    /// Sample now; `relay_pid` is the relay's process (None: not measured).
    pub fn take(relay_pid: Option<u32>) -> Snapshot {
        let (r, s) = udp_buffer_errors();
        Snapshot {
            at: Instant::now(),
            relay: relay_pid.and_then(|p| process_ticks(p).ok()),
            bench: self_ticks().unwrap_or(0),
            machine: machine_ticks().unwrap_or_default(),
            udp_rcvbuf_errors: r,
            udp_sndbuf_errors: s,
        }
    }
}

/// CPU spent between two snapshots, and what it costs per relayed packet.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuReport {
    /// Wall-clock length of the window, seconds.
    pub window_s: f64,
    /// Relay process utime+stime over the window, seconds (None: no pid).
    pub relay_cpu_s: Option<f64>,
    /// Relay CPU per relayed packet, ns.
    pub relay_ns_per_pkt: Option<f64>,
    /// Relay CPU as a share of one core, percent.
    pub relay_core_pct: Option<f64>,
    /// Whole machine busy time (user+system+irq+softirq+steal), seconds.
    pub machine_busy_s: f64,
    /// Machine busy time per relayed packet, ns (generator and receiver included).
    pub machine_ns_per_pkt: Option<f64>,
    /// softirq share of machine busy time, seconds.
    pub softirq_s: f64,
    /// This harness's own utime+stime (generator, receiver, in-process helpers), seconds.
    pub bench_cpu_s: f64,
    /// Everything else: machine busy - relay - harness, seconds (includes
    /// softirq not charged to either process, and other users of the host).
    pub others_cpu_s: f64,
    /// `others_cpu_s` as a share of one core over the window, percent.
    pub others_core_pct: f64,
    /// Whether `others_core_pct` exceeded the disturbance threshold.
    pub disturbed: bool,
    /// Kernel UDP receive-buffer drops (all sockets) during the window.
    pub udp_rcvbuf_errors: u64,
    /// Kernel UDP send-buffer errors (all sockets) during the window.
    pub udp_sndbuf_errors: u64,
}

impl CpuReport {
    /// The window from `a` to `b`, with `packets` relayed; `disturb_pct` is the
    /// share of one core other work may take before the run is flagged.
    pub fn between(a: &Snapshot, b: &Snapshot, packets: u64, disturb_pct: f64) -> CpuReport {
        let hz = ticks_per_sec();
        let window_s = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let secs = |x: u64, y: u64| y.saturating_sub(x) as f64 / hz;
        let relay_cpu_s = match (a.relay, b.relay) {
            (Some(x), Some(y)) => Some(secs(x, y)),
            _ => None,
        };
        let machine_busy_s = secs(a.machine.busy, b.machine.busy);
        let bench_cpu_s = secs(a.bench, b.bench);
        let per_pkt = |s: f64| (packets > 0).then(|| s * 1e9 / packets as f64);
        let others_cpu_s = machine_busy_s - relay_cpu_s.unwrap_or(0.0) - bench_cpu_s;
        let others_core_pct = 100.0 * others_cpu_s / window_s;
        CpuReport {
            window_s,
            relay_cpu_s,
            relay_ns_per_pkt: relay_cpu_s.and_then(per_pkt),
            relay_core_pct: relay_cpu_s.map(|s| 100.0 * s / window_s),
            machine_busy_s,
            machine_ns_per_pkt: per_pkt(machine_busy_s),
            softirq_s: secs(a.machine.softirq, b.machine.softirq),
            bench_cpu_s,
            others_cpu_s,
            others_core_pct,
            disturbed: others_core_pct > disturb_pct,
            udp_rcvbuf_errors: b.udp_rcvbuf_errors.saturating_sub(a.udp_rcvbuf_errors),
            udp_sndbuf_errors: b.udp_sndbuf_errors.saturating_sub(a.udp_sndbuf_errors),
        }
    }
}

/// Wait until process `pid` uses less than `max_core_pct` of one core over a
/// 1 s window, for at most `limit`. Returns the last measured share and
/// whether it got under the threshold.
pub fn wait_idle(pid: u32, max_core_pct: f64, limit: Duration) -> (f64, bool) {
    let hz = ticks_per_sec();
    let deadline = Instant::now() + limit;
    let mut last = f64::NAN;
    loop {
        let (Ok(a), t0) = (process_ticks(pid), Instant::now()) else {
            return (last, false);
        };
        thread::sleep(Duration::from_secs(1));
        let Ok(b) = process_ticks(pid) else {
            return (last, false);
        };
        last = 100.0 * (b.saturating_sub(a) as f64 / hz) / t0.elapsed().as_secs_f64();
        if last < max_core_pct {
            return (last, true);
        }
        if Instant::now() >= deadline {
            return (last, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let s = "1234 (we) ird (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_stat_ticks(s).unwrap(), 325);
        assert!(self_ticks().is_ok());
    }

    #[test]
    fn parses_proc_stat() {
        let s = "cpu  10 2 30 400 5 6 7 8 9 0\ncpu0 1 1 1 1 1 1 1 1 1 1\n";
        let m = parse_proc_stat(s).unwrap();
        assert_eq!(m.busy, 10 + 2 + 30 + 6 + 7 + 8);
        assert_eq!(m.total, m.busy + 400 + 5);
        assert_eq!(m.softirq, 7);
        assert!(machine_ticks().unwrap().total > 0);
    }
}
