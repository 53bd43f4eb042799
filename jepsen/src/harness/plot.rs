//! `latency.svg`: one point per operation at (invocation time, latency), coloured by outcome
//! (ok green, fail red, info orange), on a log latency axis, with the fault windows shaded and
//! labelled, as in Jepsen's reports. Plain SVG written by hand: no plotting dependency.
use std::fmt::Write;

use super::nemesis::Window;
use crate::history::{History, Outcome};

const W: f64 = 1200.0;
const H: f64 = 500.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;
/// The latency axis: 0.1 ms to 10 s.
const LAT_MIN_MS: f64 = 0.1;
const LAT_MAX_MS: f64 = 10_000.0;

fn x_of(t_ns: u64, end_ns: u64) -> f64 {
    LEFT + (W - LEFT - RIGHT) * (t_ns as f64 / end_ns.max(1) as f64)
}

fn y_of(lat_ms: f64) -> f64 {
    let l = lat_ms.clamp(LAT_MIN_MS, LAT_MAX_MS).log10();
    let (lo, hi) = (LAT_MIN_MS.log10(), LAT_MAX_MS.log10());
    TOP + (H - TOP - BOTTOM) * (1.0 - (l - lo) / (hi - lo))
}

fn axes(svg: &mut String, end_ns: u64) {
    let _ = write!(
        svg,
        r#"<line x1="{LEFT}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b}" stroke="black"/>"#,
        b = H - BOTTOM,
        r = W - RIGHT
    );
    for ms in [0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0] {
        let y = y_of(ms);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{r}" y2="{y:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" font-size="11" text-anchor="end">{ms} ms</text>"##,
            r = W - RIGHT,
            tx = LEFT - 5.0,
            ty = y + 4.0
        );
    }
    let secs = end_ns / 1_000_000_000;
    let step = (secs / 10).max(1);
    for s in (0..=secs).step_by(step as usize) {
        let x = x_of(s * 1_000_000_000, end_ns);
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{y}" font-size="11" text-anchor="middle">{s} s</text>"#,
            y = H - BOTTOM + 15.0
        );
    }
}

/// The SVG of a run's latencies and faults.
pub fn latency_svg(history: &History, windows: &[Window], title: &str) -> String {
    let ops = history.operations().unwrap_or_default();
    let end_ns = ops
        .iter()
        .map(|o| o.complete_time.unwrap_or(o.invoke_time))
        .max()
        .unwrap_or(1);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>"#
    );
    for w in windows {
        let (x0, x1) = (
            x_of(w.start_ns, end_ns),
            x_of(w.end_ns.unwrap_or(end_ns), end_ns),
        );
        let _ = write!(
            svg,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#88f" fill-opacity="0.15"><title>{:?}: {}</title></rect><text x="{x0:.1}" y="{:.1}" font-size="10" fill="#44a">{:?}</text>"##,
            (x1 - x0).max(1.0),
            H - TOP - BOTTOM,
            w.fault,
            w.detail.replace('&', "&amp;").replace('<', "&lt;"),
            TOP + 10.0,
            w.fault
        );
    }
    axes(&mut svg, end_ns);
    for o in &ops {
        let complete = o.complete_time.unwrap_or(end_ns);
        let lat_ms = complete.saturating_sub(o.invoke_time) as f64 / 1e6;
        let colour = match o.outcome {
            Outcome::Ok(_) => "#2a2",
            Outcome::Fail(_) => "#d22",
            Outcome::Info(_) => "#f90",
        };
        let _ = write!(
            svg,
            r#"<circle cx="{:.1}" cy="{:.1}" r="1.5" fill="{colour}" fill-opacity="0.6"/>"#,
            x_of(o.invoke_time, end_ns),
            y_of(lat_ms)
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{LEFT}" y="14" font-size="13">{title} (green ok, red fail, orange info; shaded: faults)</text></svg>"##
    );
    svg
}
