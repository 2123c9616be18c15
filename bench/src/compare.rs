//! `compare`: the same scenario against several targets (tern, coturn, the
//! null relay), alternating targets within each repetition and rotating
//! which goes first, then min/median/max per figure and the tern/coturn ratio.

use std::fmt::Write as _;

use serde::Serialize;

use crate::scenario::{Bench, RunReport, Scenario, TargetKind};

/// min / median / max of one figure over the repetitions.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Stat {
    /// Smallest.
    pub min: f64,
    /// Median.
    pub median: f64,
    /// Largest.
    pub max: f64,
    /// Samples.
    pub n: usize,
}

impl Stat {
    /// Over `v` (NaNs ignored); `None` if nothing is left.
    pub fn of(v: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let mut v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            min: v[0],
            median,
            max: v[n - 1],
            n,
        })
    }
}

/// One target's figures over the repetitions.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetSummary {
    /// Target name.
    pub target: String,
    /// Offered rate, pps.
    pub offered_pps: Option<Stat>,
    /// Delivered rate, pps.
    pub delivered_pps: Option<Stat>,
    /// Loss, percent.
    pub loss_pct: Option<Stat>,
    /// Latency p50, µs.
    pub p50_us: Option<Stat>,
    /// Latency p99, µs.
    pub p99_us: Option<Stat>,
    /// Latency p99.9, µs.
    pub p999_us: Option<Stat>,
    /// Latency max, µs.
    pub max_us: Option<Stat>,
    /// Relay process CPU per relayed packet, ns.
    pub relay_ns_per_pkt: Option<Stat>,
    /// Relay process CPU, percent of one core.
    pub relay_core_pct: Option<Stat>,
    /// Whole-machine busy time per relayed packet, ns.
    pub machine_ns_per_pkt: Option<Stat>,
    /// Other processes' CPU during the window, percent of one core.
    pub others_core_pct: Option<Stat>,
    /// Runs flagged as disturbed by other processes.
    pub disturbed_runs: usize,
    /// Runs where the generator could not offer the requested rate.
    pub generator_limited_runs: usize,
    /// Runs where the relay was not idle before the window.
    pub not_idle_runs: usize,
    /// Runs that failed, with why.
    pub errors: Vec<String>,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// Every window, in the order run.
    pub runs: Vec<RunReport>,
    /// Per target.
    pub summary: Vec<TargetSummary>,
}

/// Run `reps` repetitions of `sc` over `targets`, alternating.
/// `progress` is told about each run as it ends.
pub fn compare(
    sc: &Scenario,
    targets: &[TargetKind],
    reps: usize,
    mut progress: impl FnMut(&str),
) -> CompareReport {
    let mut runs = Vec::new();
    let mut errors: Vec<(TargetKind, String)> = Vec::new();
    for rep in 0..reps {
        for k in 0..targets.len() {
            let t = targets[(rep + k) % targets.len()];
            crate::progress::set_stage(&format!(
                "run {}/{}",
                rep * targets.len() + k + 1,
                reps * targets.len()
            ));
            let outcome =
                Bench::start(t, sc).map(|mut b| b.window(&sc.load, sc.idle_pct, sc.idle_wait));
            match outcome {
                Ok(r) => {
                    progress(&format!(
                        "rep {}/{} {:<7} offered {:>9.0} pps delivered {:>9.0} pps loss {:>6.3} % p99 {:>8.1} µs relay {} ns/pkt",
                        rep + 1,
                        reps,
                        t.name(),
                        r.m.offered_pps,
                        r.m.delivered_pps,
                        r.m.loss_pct,
                        r.m.latency.p99_us,
                        r.m.cpu.relay_ns_per_pkt.map_or("-".into(), |v| format!("{v:.0}")),
                    ));
                    runs.push(r);
                }
                Err(e) => {
                    progress(&format!(
                        "rep {}/{} {}: FAILED: {e}",
                        rep + 1,
                        reps,
                        t.name()
                    ));
                    errors.push((t, e.to_string()));
                }
            }
        }
    }
    let summary = targets
        .iter()
        .map(|&t| summarize(t, &runs, &errors))
        .collect();
    CompareReport { runs, summary }
}

fn summarize(t: TargetKind, runs: &[RunReport], errors: &[(TargetKind, String)]) -> TargetSummary {
    let mine: Vec<&RunReport> = runs.iter().filter(|r| r.target == t).collect();
    let st = |f: &dyn Fn(&RunReport) -> Option<f64>| Stat::of(mine.iter().filter_map(|r| f(r)));
    TargetSummary {
        target: t.name().to_owned(),
        offered_pps: st(&|r| Some(r.m.offered_pps)),
        delivered_pps: st(&|r| Some(r.m.delivered_pps)),
        loss_pct: st(&|r| Some(r.m.loss_pct)),
        p50_us: st(&|r| Some(r.m.latency.p50_us)),
        p99_us: st(&|r| Some(r.m.latency.p99_us)),
        p999_us: st(&|r| Some(r.m.latency.p999_us)),
        max_us: st(&|r| Some(r.m.latency.max_us)),
        relay_ns_per_pkt: st(&|r| r.m.cpu.relay_ns_per_pkt),
        relay_core_pct: st(&|r| r.m.cpu.relay_core_pct),
        machine_ns_per_pkt: st(&|r| r.m.cpu.machine_ns_per_pkt),
        others_core_pct: st(&|r| Some(r.m.cpu.others_core_pct)),
        disturbed_runs: mine.iter().filter(|r| r.m.cpu.disturbed).count(),
        generator_limited_runs: mine.iter().filter(|r| r.m.generator_limited).count(),
        not_idle_runs: mine.iter().filter(|r| r.idle_ok == Some(false)).count(),
        errors: errors
            .iter()
            .filter(|(k, _)| *k == t)
            .map(|(_, e)| e.clone())
            .collect(),
    }
}

/// The ratio columns of [`table`]: every tern target against coturn, and
/// the AF_XDP back end against io_uring and against recvmmsg, for the
/// targets that ran.
fn ratio_pairs(summary: &[TargetSummary]) -> Vec<(&TargetSummary, &TargetSummary)> {
    let find = |name: &str| summary.iter().find(|s| s.target == name);
    let mut pairs = Vec::new();
    if let Some(coturn) = find("coturn") {
        for s in summary.iter().filter(|s| s.target.starts_with("tern")) {
            pairs.push((s, coturn));
        }
    }
    if let Some(xdp) = find("tern-xdp") {
        for other in ["tern-uring", "tern-mmsg"] {
            if let Some(o) = find(other) {
                pairs.push((xdp, o));
            }
        }
    }
    pairs
}

/// A Markdown table: one row per figure, one column per target as
/// `median (min–max)`, and ratio-of-medians columns ([`ratio_pairs`]):
/// `tern / coturn` when both ran.
pub fn table(summary: &[TargetSummary]) -> String {
    type Get = fn(&TargetSummary) -> Option<Stat>;
    let rows: [(&str, Get, usize); 11] = [
        ("offered pps", |s| s.offered_pps, 0),
        ("delivered pps", |s| s.delivered_pps, 0),
        ("loss %", |s| s.loss_pct, 3),
        ("latency p50 µs", |s| s.p50_us, 1),
        ("latency p99 µs", |s| s.p99_us, 1),
        ("latency p99.9 µs", |s| s.p999_us, 1),
        ("latency max µs", |s| s.max_us, 0),
        ("relay CPU ns/pkt", |s| s.relay_ns_per_pkt, 0),
        ("relay CPU % of a core", |s| s.relay_core_pct, 1),
        ("machine busy ns/pkt", |s| s.machine_ns_per_pkt, 0),
        ("other processes % of a core", |s| s.others_core_pct, 1),
    ];
    let ratios = ratio_pairs(summary);
    let mut out = String::new();
    let _ = write!(out, "| figure |");
    for s in summary {
        let _ = write!(out, " {} |", s.target);
    }
    for (a, b) in &ratios {
        let _ = write!(out, " {} / {} |", a.target, b.target);
    }
    out.push_str("\n| --- |");
    for _ in summary.iter().chain(ratios.iter().map(|(a, _)| *a)) {
        out.push_str(" ---: |");
    }
    out.push('\n');
    for (name, get, prec) in rows {
        let _ = write!(out, "| {name} |");
        for s in summary {
            match get(s) {
                Some(v) if v.n > 1 => {
                    let _ = write!(
                        out,
                        " {:.p$} ({:.p$}–{:.p$}) |",
                        v.median,
                        v.min,
                        v.max,
                        p = prec
                    );
                }
                Some(v) => {
                    let _ = write!(out, " {:.p$} |", v.median, p = prec);
                }
                None => out.push_str(" – |"),
            }
        }
        for (a, b) in &ratios {
            match (get(a), get(b)) {
                (Some(a), Some(b)) if b.median != 0.0 => {
                    let _ = write!(out, " {:.2} |", a.median / b.median);
                }
                _ => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    let _ = write!(
        out,
        "| runs disturbed / generator-limited / relay not idle |"
    );
    for s in summary {
        let _ = write!(
            out,
            " {} / {} / {} |",
            s.disturbed_runs, s.generator_limited_runs, s.not_idle_runs
        );
    }
    for _ in &ratios {
        out.push_str(" |");
    }
    out.push('\n');
    for s in summary {
        for e in &s.errors {
            let _ = writeln!(out, "\n{} failed: {e}", s.target);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_min_median_max() {
        let s = Stat::of([3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max, s.n), (1.0, 2.0, 3.0, 3));
        let s = Stat::of([4.0, 1.0, f64::NAN, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Stat::of([]).is_none());
    }

    #[test]
    fn table_has_ratio_column_when_both_ran() {
        let mk = |t: &str, v: f64| TargetSummary {
            target: t.into(),
            delivered_pps: Stat::of([v]),
            ..TargetSummary::default()
        };
        let t = table(&[mk("tern", 200.0), mk("coturn", 100.0), mk("null", 300.0)]);
        assert!(t.contains("tern / coturn"));
        assert!(
            t.contains("| delivered pps | 200 | 100 | 300 | 2.00 |"),
            "{t}"
        );
    }

    #[test]
    fn table_compares_back_ends_with_each_other_and_coturn() {
        let mk = |t: &str, v: f64| TargetSummary {
            target: t.into(),
            machine_ns_per_pkt: Stat::of([v]),
            ..TargetSummary::default()
        };
        let t = table(&[
            mk("tern-xdp", 300.0),
            mk("tern-uring", 600.0),
            mk("tern-mmsg", 1000.0),
            mk("coturn", 1500.0),
        ]);
        let header = t.lines().next().unwrap();
        assert_eq!(
            header,
            "| figure | tern-xdp | tern-uring | tern-mmsg | coturn | tern-xdp / coturn \
             | tern-uring / coturn | tern-mmsg / coturn | tern-xdp / tern-uring \
             | tern-xdp / tern-mmsg |"
        );
        assert!(
            t.contains("| machine busy ns/pkt | 300 | 600 | 1000 | 1500 | 0.20 | 0.40 | 0.67 | 0.50 | 0.30 |"),
            "{t}"
        );
        // Without coturn, only the back ends against each other.
        let t = table(&[mk("tern-xdp", 300.0), mk("tern-uring", 600.0)]);
        assert!(
            t.lines()
                .next()
                .unwrap()
                .ends_with("| tern-xdp / tern-uring |"),
            "{t}"
        );
    }
}
