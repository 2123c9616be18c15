//! `sweep`: the highest rate a target sustains at or under a loss
//! threshold (0.1 % by default) — doubling the rate until a window fails,
//! then bisecting between the last good and the first bad rate — with every
//! window written as CSV and drawn as an SVG plot (delivered rate and
//! latency percentiles against the requested rate).

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::Load;
use crate::scenario::{Bench, RunReport};

/// How to search.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    /// First rate tried, pps.
    pub start_pps: f64,
    /// Never ask for more than this, pps.
    pub max_pps: f64,
    /// A window passes at or under this loss, percent.
    pub max_loss_pct: f64,
    /// Stop bisecting when the bracket is narrower than this share of the good rate.
    pub resolution: f64,
    /// At most this many windows in all.
    pub max_windows: usize,
}

/// One window of the sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepPoint {
    /// Requested rate, pps.
    pub requested_pps: f64,
    /// Offered rate, pps.
    pub offered_pps: f64,
    /// Delivered rate, pps.
    pub delivered_pps: f64,
    /// Loss, percent.
    pub loss_pct: f64,
    /// Latency p50, µs.
    pub p50_us: f64,
    /// Latency p90, µs.
    pub p90_us: f64,
    /// Latency p99, µs.
    pub p99_us: f64,
    /// Latency p99.9, µs.
    pub p999_us: f64,
    /// Relay CPU per packet, ns.
    pub relay_ns_per_pkt: Option<f64>,
    /// The generator could not offer the rate.
    pub generator_limited: bool,
    /// Other processes disturbed the window.
    pub disturbed: bool,
    /// Passed (loss within threshold and the rate was offered).
    pub pass: bool,
}

/// The sweep's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct SweepReport {
    /// Highest requested rate that passed, pps.
    pub best_pps: Option<f64>,
    /// Whether the search stopped because the generator, not the target, ran out.
    pub generator_bound: bool,
    /// Every window in the order run.
    pub points: Vec<SweepPoint>,
    /// Full reports of every window.
    pub runs: Vec<RunReport>,
}

/// Search on `bench` with windows shaped like `load` (rate replaced).
pub fn sweep(
    bench: &mut Bench,
    load: &Load,
    cfg: &SweepConfig,
    idle_pct: f64,
    idle_wait: std::time::Duration,
    mut progress: impl FnMut(&SweepPoint),
) -> SweepReport {
    let mut points = Vec::new();
    let mut runs = Vec::new();
    let mut good: Option<f64> = None;
    let mut bad: Option<f64> = None;
    let mut generator_bound = false;
    let mut rate = cfg.start_pps.max(1.0);
    while points.len() < cfg.max_windows {
        let mut l = load.clone();
        l.rate_pps = rate;
        l.count = (rate * l.duration.as_secs_f64()).ceil() as u64;
        crate::progress::set_stage(&format!(
            "window {}/{} at {rate:.0} pps",
            points.len() + 1,
            cfg.max_windows
        ));
        let r = bench.window(&l, idle_pct, idle_wait);
        let pass = r.m.loss_pct <= cfg.max_loss_pct && !r.m.generator_limited && r.m.sent > 0;
        let p = SweepPoint {
            requested_pps: rate,
            offered_pps: r.m.offered_pps,
            delivered_pps: r.m.delivered_pps,
            loss_pct: r.m.loss_pct,
            p50_us: r.m.latency.p50_us,
            p90_us: r.m.latency.p90_us,
            p99_us: r.m.latency.p99_us,
            p999_us: r.m.latency.p999_us,
            relay_ns_per_pkt: r.m.cpu.relay_ns_per_pkt,
            generator_limited: r.m.generator_limited,
            disturbed: r.m.cpu.disturbed,
            pass,
        };
        progress(&p);
        if !pass && r.m.generator_limited && r.m.loss_pct <= cfg.max_loss_pct {
            generator_bound = true;
        }
        points.push(p);
        runs.push(r);
        if generator_bound {
            // The generator, not the target, ran out: searching lower would
            // only measure the generator. Say so instead.
            break;
        }
        if pass {
            good = Some(rate);
        } else {
            bad = Some(rate);
        }
        rate = match (good, bad) {
            (Some(g), None) => g * 2.0,
            (None, Some(b)) => b / 2.0,
            (Some(g), Some(b)) if g < b => {
                if (b - g) / g < cfg.resolution {
                    break;
                }
                (g + b) / 2.0
            }
            (Some(_), Some(b)) => b / 2.0,
            (None, None) => break,
        };
        if rate > cfg.max_pps {
            break;
        }
        if rate < 1.0 {
            break;
        }
    }
    SweepReport {
        best_pps: good,
        generator_bound,
        points,
        runs,
    }
}

/// The points as CSV, sorted by requested rate.
pub fn csv(points: &[SweepPoint]) -> String {
    let mut out = String::from(
        "requested_pps,offered_pps,delivered_pps,loss_pct,p50_us,p90_us,p99_us,p999_us,relay_ns_per_pkt,generator_limited,disturbed,pass\n",
    );
    let mut v: Vec<&SweepPoint> = points.iter().collect();
    v.sort_by(|a, b| a.requested_pps.total_cmp(&b.requested_pps));
    for p in v {
        let _ = writeln!(
            out,
            "{:.0},{:.0},{:.0},{:.4},{:.1},{:.1},{:.1},{:.1},{},{},{},{}",
            p.requested_pps,
            p.offered_pps,
            p.delivered_pps,
            p.loss_pct,
            p.p50_us,
            p.p90_us,
            p.p99_us,
            p.p999_us,
            p.relay_ns_per_pkt
                .map_or(String::new(), |v| format!("{v:.0}")),
            p.generator_limited,
            p.disturbed,
            p.pass
        );
    }
    out
}

/// Two stacked charts as an SVG document: delivered vs requested rate (with
/// the y = x line), and latency percentiles (log scale) vs requested rate.
pub fn svg(points: &[SweepPoint], title: &str) -> String {
    let mut v: Vec<&SweepPoint> = points.iter().collect();
    v.sort_by(|a, b| a.requested_pps.total_cmp(&b.requested_pps));
    let (w, h, ml, mr, mt, gap, ph) = (760.0, 640.0, 80.0, 150.0, 40.0, 60.0, 240.0);
    let pw = w - ml - mr;
    let xmax = v
        .iter()
        .map(|p| p.requested_pps.max(p.delivered_pps))
        .fold(1.0, f64::max)
        * 1.05;
    let x = |r: f64| ml + pw * r / xmax;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
"#,
        w / 2.0,
        escape(title)
    );
    // Chart 1: delivered vs requested.
    let top1 = mt;
    let y1 = |r: f64| top1 + ph - ph * r / xmax;
    axes(&mut s, ml, top1, pw, ph, "delivered pps");
    for i in 0..=4 {
        let r = xmax * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            ml - 6.0,
            y1(r) + 4.0,
            si(r),
            x(r),
            top1 + ph + 16.0,
            si(r)
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#bbb" stroke-dasharray="4 4"/>"##,
        x(0.0),
        y1(0.0),
        x(xmax),
        y1(xmax)
    );
    series(
        &mut s,
        &v,
        |p| (x(p.requested_pps), y1(p.delivered_pps)),
        "#1f77b4",
    );
    for p in &v {
        if !p.pass {
            let _ = writeln!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="5" fill="none" stroke="#d62728"/>"##,
                x(p.requested_pps),
                y1(p.delivered_pps)
            );
        }
    }
    legend(
        &mut s,
        ml + pw + 12.0,
        top1 + 10.0,
        &[("delivered", "#1f77b4"), ("failed window", "#d62728")],
    );
    // Chart 2: latency percentiles, log scale.
    let top2 = top1 + ph + gap;
    let lat: Vec<f64> = v
        .iter()
        .flat_map(|p| [p.p50_us, p.p999_us])
        .filter(|x| *x > 0.0)
        .collect();
    let lo = lat
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(1.0)
        .log10()
        .floor();
    let hi = lat
        .iter()
        .copied()
        .fold(1.0, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let y2 = |us: f64| top2 + ph - ph * (us.max(1.0).log10() - lo) / (hi - lo);
    axes(&mut s, ml, top2, pw, ph, "latency µs (log)");
    for e in lo as i32..=hi as i32 {
        let us = 10f64.powi(e);
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text><line x1="{ml}" x2="{}" y1="{}" y2="{}" stroke="#eee"/>"##,
            ml - 6.0,
            y2(us) + 4.0,
            si(us),
            ml + pw,
            y2(us),
            y2(us)
        );
    }
    for i in 0..=4 {
        let r = xmax * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            x(r),
            top2 + ph + 16.0,
            si(r)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">requested pps</text>"#,
        ml + pw / 2.0,
        top2 + ph + 34.0
    );
    type Percentile = (&'static str, &'static str, fn(&SweepPoint) -> f64);
    let pcts: [Percentile; 4] = [
        ("p50", "#2ca02c", |p| p.p50_us),
        ("p90", "#1f77b4", |p| p.p90_us),
        ("p99", "#ff7f0e", |p| p.p99_us),
        ("p99.9", "#d62728", |p| p.p999_us),
    ];
    for (_, color, f) in pcts {
        series(&mut s, &v, |p| (x(p.requested_pps), y2(f(p))), color);
    }
    let items: Vec<(&str, &str)> = pcts.iter().map(|(n, c, _)| (*n, *c)).collect();
    legend(&mut s, ml + pw + 12.0, top2 + 10.0, &items);
    s.push_str("</svg>\n");
    s
}

fn axes(s: &mut String, x: f64, y: f64, w: f64, h: f64, label: &str) {
    let _ = write!(
        s,
        r##"<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="none" stroke="#333"/>
<text transform="translate({},{}) rotate(-90)" text-anchor="middle">{}</text>
"##,
        x - 58.0,
        y + h / 2.0,
        escape(label)
    );
}

fn series(s: &mut String, v: &[&SweepPoint], at: impl Fn(&SweepPoint) -> (f64, f64), color: &str) {
    let pts: Vec<String> = v
        .iter()
        .map(|p| at(p))
        .map(|(a, b)| format!("{a:.1},{b:.1}"))
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
        pts.join(" ")
    );
    for p in v {
        let (a, b) = at(p);
        let _ = writeln!(
            s,
            r#"<circle cx="{a:.1}" cy="{b:.1}" r="3" fill="{color}"/>"#
        );
    }
}

fn legend(s: &mut String, x: f64, y: f64, items: &[(&str, &str)]) {
    for (i, (name, color)) in items.iter().enumerate() {
        let yy = y + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            yy,
            x + 18.0,
            yy + 10.0,
            escape(name)
        );
    }
}

fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(r: f64, pass: bool) -> SweepPoint {
        SweepPoint {
            requested_pps: r,
            offered_pps: r,
            delivered_pps: if pass { r } else { r * 0.9 },
            loss_pct: if pass { 0.0 } else { 10.0 },
            p50_us: 20.0,
            p90_us: 40.0,
            p99_us: 80.0,
            p999_us: 400.0,
            relay_ns_per_pkt: Some(1000.0),
            generator_limited: false,
            disturbed: false,
            pass,
        }
    }

    #[test]
    fn csv_is_sorted_with_header() {
        let c = csv(&[pt(2000.0, false), pt(1000.0, true)]);
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("requested_pps,"));
        assert!(lines[1].starts_with("1000,"));
        assert!(lines[2].starts_with("2000,"));
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let s = svg(&[pt(1000.0, true), pt(2000.0, false)], "a <b> & c");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("a &lt;b&gt; &amp; c"));
        assert_eq!(s.matches("<polyline").count(), 5);
    }
}
