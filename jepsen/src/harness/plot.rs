//! `latency.svg`, drawn with the `plotters` crate's SVG backend: one point per operation at
//! (invocation time in seconds, latency on a log axis from 0.1 ms to 10 s), coloured by
//! outcome (ok green, fail red, info orange), with every fault window shaded in its kind's
//! colour and labelled with the kind, and a legend, as in Jepsen's reports.
//!
//! plotters is built without its `ttf` feature: text is laid out by a size estimate and the
//! SVG names a generic font family (`sans-serif`) that the viewer resolves, so rendering needs
//! no font files on the machine that runs the test.
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::lock::LockRecord;
use super::nemesis::{Kind, Window};
use super::HarnessError;
use crate::history::{History, Outcome};

/// The picture's size in pixels.
const SIZE: (u32, u32) = (1200, 500);
/// The latency axis: 0.1 ms to 10 s (latencies outside are drawn at the edge).
const LAT_MIN_MS: f64 = 0.1;
const LAT_MAX_MS: f64 = 10_000.0;
/// A point's radius in pixels.
pub const POINT_RADIUS: u32 = 2;
/// How opaque a fault window's shading is.
pub const WINDOW_OPACITY: f64 = 0.15;

/// The outcomes' colours: ok, fail, info.
pub const OUTCOME_COLOURS: [(&str, RGBColor); 3] = [
    ("ok", RGBColor(0x22, 0xaa, 0x22)),
    ("fail", RGBColor(0xdd, 0x22, 0x22)),
    ("info", RGBColor(0xff, 0x99, 0x00)),
];

/// A fault kind's name and shading colour.
pub fn fault_style(kind: Kind) -> (&'static str, RGBColor) {
    match kind {
        Kind::Kill => ("kill", RGBColor(0x6a, 0x3d, 0x9a)),
        Kind::Pause => ("pause", RGBColor(0x1f, 0x78, 0xb4)),
        Kind::Partition => ("partition", RGBColor(0x33, 0x33, 0x99)),
        Kind::Netem => ("netem", RGBColor(0x1b, 0x9e, 0x9e)),
        Kind::Clock => ("clock", RGBColor(0x8c, 0x51, 0x0a)),
        Kind::Member => ("member", RGBColor(0x55, 0x55, 0x55)),
    }
}

fn plot_error<E: std::fmt::Debug>(e: E) -> HarnessError {
    HarnessError::Plot(format!("{e:?}"))
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, LogCoord<f64>>>;

/// One operation to plot: when it was invoked, when it completed (`None`: never) and its
/// outcome (an index into [`OUTCOME_COLOURS`]: 0 ok, 1 fail, 2 info).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// Invocation, on the history's clock.
    pub invoke_ns: u64,
    /// Completion.
    pub complete_ns: Option<u64>,
    /// 0 ok, 1 fail, 2 info.
    pub outcome: usize,
}

/// The operations of a history.
pub fn history_ops(history: &History) -> Vec<Op> {
    let ops = history.operations().unwrap_or_default();
    ops.iter()
        .map(|o| Op {
            invoke_ns: o.invoke_time,
            complete_ns: o.complete_time,
            outcome: match o.outcome {
                Outcome::Ok(_) => 0,
                Outcome::Fail(_) => 1,
                Outcome::Info(_) => 2,
            },
        })
        .collect()
}

/// The lock workload's steps (acquire, write, release) as operations (not the store's list of
/// applied writes read after the heal, which are no client's operations).
pub fn lock_ops(records: &[LockRecord]) -> Vec<Op> {
    records
        .iter()
        .filter(|r| matches!(r.op.as_str(), "acquire" | "write" | "release"))
        .map(|r| Op {
            invoke_ns: r.invoke_ns,
            complete_ns: Some(r.complete_ns),
            outcome: match r.outcome.as_str() {
                "ok" => 0,
                "fail" => 1,
                _ => 2,
            },
        })
        .collect()
}

/// One point: (invocation second, latency ms clamped to the axis) and its outcome's index.
fn points(ops: &[Op], end_ns: u64) -> Vec<((f64, f64), usize)> {
    ops.iter()
        .map(|o| {
            let complete = o.complete_ns.unwrap_or(end_ns);
            let lat_ms = complete.saturating_sub(o.invoke_ns) as f64 / 1e6;
            let at = (
                o.invoke_ns as f64 / 1e9,
                lat_ms.clamp(LAT_MIN_MS, LAT_MAX_MS),
            );
            (at, o.outcome.min(2))
        })
        .collect()
}

/// The run's end on the history's clock: the last completion or fault end.
fn end_of(ops: &[Op], windows: &[Window]) -> u64 {
    let last_op = ops.iter().map(|o| o.complete_ns.unwrap_or(o.invoke_ns));
    let last_fault = windows.iter().map(|w| w.end_ns.unwrap_or(w.start_ns));
    last_op.chain(last_fault).max().unwrap_or(0).max(1)
}

/// Shades each fault window in its kind's colour, labels it with the kind at the top, and
/// adds one legend entry per kind present.
fn draw_windows(
    chart: &mut Chart<'_, '_>,
    windows: &[Window],
    end_ns: u64,
) -> Result<(), HarnessError> {
    let mut kinds: Vec<Kind> = Vec::new();
    for (k, w) in windows.iter().enumerate() {
        let (name, colour) = fault_style(w.fault);
        // Labels step down over three rows so that those of close windows overlap less.
        let row = LAT_MAX_MS * [0.6, 0.33, 0.18][k % 3];
        let x0 = w.start_ns as f64 / 1e9;
        let x1 = w.end_ns.unwrap_or(end_ns) as f64 / 1e9;
        let shade = Rectangle::new(
            [(x0, LAT_MIN_MS), (x1, LAT_MAX_MS)],
            colour.mix(WINDOW_OPACITY).filled(),
        );
        let label = Text::new(
            name,
            (x0, row),
            ("sans-serif", 13).into_font().color(&colour),
        );
        chart.draw_series([shade]).map_err(plot_error)?;
        chart.draw_series([label]).map_err(plot_error)?;
        if !kinds.contains(&w.fault) {
            kinds.push(w.fault);
        }
    }
    for kind in kinds {
        let (name, colour) = fault_style(kind);
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())
            .map_err(plot_error)?
            .label(format!("{name} (shaded)"))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.mix(0.4).filled())
            });
    }
    Ok(())
}

/// Draws the operations, one series per outcome (so each has a legend entry).
fn draw_points(chart: &mut Chart<'_, '_>, pts: &[((f64, f64), usize)]) -> Result<(), HarnessError> {
    for (i, (name, colour)) in OUTCOME_COLOURS.iter().enumerate() {
        let colour = *colour;
        let mine = pts.iter().filter(|p| p.1 == i);
        let count = mine.clone().count();
        chart
            .draw_series(mine.map(|p| Circle::new(p.0, POINT_RADIUS, colour.mix(0.6).filled())))
            .map_err(plot_error)?
            .label(format!("{name} ({count})"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 8, y + 4)], colour.filled()));
    }
    Ok(())
}

/// The SVG of a run's operations ([`history_ops`], [`lock_ops`]) and faults, titled `title`.
pub fn latency_svg(ops: &[Op], windows: &[Window], title: &str) -> Result<String, HarnessError> {
    let end_ns = end_of(ops, windows);
    let pts = points(ops, end_ns);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(
                0f64..end_ns as f64 / 1e9,
                (LAT_MIN_MS..LAT_MAX_MS).log_scale(),
            )
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("time since the start of the run (s)")
            .y_desc("latency (ms, log scale)")
            .y_label_formatter(&|ms| format!("{ms} ms"))
            .x_label_formatter(&|s| format!("{s:.0}"))
            .light_line_style(WHITE)
            .draw()
            .map_err(plot_error)?;
        draw_windows(&mut chart, windows, end_ns)?;
        draw_points(&mut chart, &pts)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Request, Response};

    /// A tag-balance check: every element opened is closed in order, text has no raw `<`.
    fn well_formed(svg: &str) -> Result<(), String> {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = svg.trim_start();
        if let Some(after) = rest.strip_prefix("<?xml") {
            rest = after
                .split_once("?>")
                .ok_or("unterminated xml declaration")?
                .1;
        }
        let mut roots = 0;
        while let Some(open) = rest.find('<') {
            let close = rest[open..].find('>').ok_or("unterminated tag")? + open;
            let tag = &rest[open + 1..close];
            if tag.contains('<') {
                return Err(format!("'<' inside tag {tag:?}"));
            }
            let name = |t: &str| t.split_whitespace().next().unwrap_or_default().to_string();
            if let Some(end) = tag.strip_prefix('/') {
                let top = stack.pop().ok_or(format!("</{end}> with nothing open"))?;
                if top != end.trim() {
                    return Err(format!("</{end}> closes <{top}>"));
                }
            } else if !tag.ends_with('/') {
                if stack.is_empty() {
                    roots += 1;
                }
                stack.push(name(tag));
            } else if stack.is_empty() {
                return Err(format!("<{tag}> outside the root"));
            }
            rest = &rest[close + 1..];
        }
        match (stack.is_empty(), roots) {
            (true, 1) => Ok(()),
            _ => Err(format!("open at the end: {stack:?}, {roots} root elements")),
        }
    }

    fn count_elements(svg: &str, element: &str, attrs: &[String]) -> usize {
        svg.split('<')
            .filter(|t| t.starts_with(&format!("{element} ")))
            .filter(|t| attrs.iter().all(|a| t.contains(a.as_str())))
            .count()
    }

    /// The text elements' contents, trimmed.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text ")
            .skip(1)
            .filter_map(|t| t.split_once('>'))
            .filter_map(|(_, rest)| rest.split_once("</text>"))
            .map(|(body, _)| body.trim().to_string())
            .collect()
    }

    fn hex(c: RGBColor) -> String {
        format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2)
    }

    fn window(fault: Kind, start_s: f64, end_s: f64) -> Window {
        Window {
            fault,
            detail: "m1 <& m2".to_string(),
            start_ns: (start_s * 1e9) as u64,
            end_ns: Some((end_s * 1e9) as u64),
        }
    }

    #[test]
    fn renders_one_point_per_operation_and_one_shade_per_window() {
        // 5 ok, 2 fail, 3 info (one never completed) operations over ~9.3 s.
        let mut b = History::builder();
        let ms = 1_000_000u64;
        for i in 0..5u64 {
            b = b.at(i * 1000 * ms).invoke(i, Request::get("x"));
            b = b
                .at(i * 1000 * ms + (i + 1) * ms)
                .ok(i, Response::range(1, vec![]));
        }
        for p in 10..12u64 {
            b = b.at(p * 500 * ms).invoke(p, Request::put("x", "v"));
            b = b.at(p * 500 * ms + 3 * ms).fail(p, "no leader");
        }
        for p in 20..22u64 {
            let at = 6000 + (p - 20) * 1600;
            b = b.at(at * ms).invoke(p, Request::put("y", "v"));
            b = b.at((at + 1500) * ms).info(p);
        }
        b = b.at(9_300 * ms).invoke(30, Request::put("z", "v"));
        let history = b.build();
        let windows = [
            window(Kind::Pause, 1.0, 3.5),
            window(Kind::Partition, 4.0, 6.0),
            window(Kind::Pause, 7.0, 8.5),
        ];
        let svg = latency_svg(&history_ops(&history), &windows, "keel lock <seed 1>")
            .expect("the plot renders");
        well_formed(&svg).unwrap_or_else(|e| panic!("not well-formed SVG: {e}"));
        assert!(
            svg.contains("<svg") && svg.contains("xmlns=\"http://www.w3.org/2000/svg\""),
            "an SVG root"
        );
        let r = format!("r=\"{POINT_RADIUS}\"");
        let per_outcome: Vec<usize> = OUTCOME_COLOURS
            .iter()
            .map(|(_, c)| count_elements(&svg, "circle", &[r.clone(), hex(*c)]))
            .collect();
        assert_eq!(
            per_outcome,
            vec![5, 2, 3],
            "one point per operation, coloured by outcome"
        );
        assert_eq!(count_elements(&svg, "circle", &[]), 10, "no other circles");
        let shades = |k: Kind| {
            let opacity = format!("opacity=\"{WINDOW_OPACITY}\"");
            count_elements(&svg, "rect", &[opacity, hex(fault_style(k).1)])
        };
        assert_eq!(
            (shades(Kind::Pause), shades(Kind::Partition)),
            (2, 1),
            "one shade per window"
        );
        assert_eq!(
            count_elements(&svg, "rect", &[format!("opacity=\"{WINDOW_OPACITY}\"")]),
            3,
            "no other shades"
        );
        let texts = texts(&svg);
        let n = |t: &str| texts.iter().filter(|x| *x == t).count();
        assert_eq!(
            (n("pause"), n("partition")),
            (2, 1),
            "each window labelled by its kind"
        );
        for label in [
            "ok (5)",
            "fail (2)",
            "info (3)",
            "pause (shaded)",
            "partition (shaded)",
        ] {
            assert_eq!(n(label), 1, "the legend has {label}: {texts:?}");
        }
        assert_eq!(n("keel lock &lt;seed 1&gt;"), 1, "the title, escaped");
        for tick in [
            "1 ms",
            "10 ms",
            "100 ms",
            "1000 ms",
            "latency (ms, log scale)",
            "0",
            "9",
        ] {
            assert_eq!(
                n(tick),
                1,
                "a log latency axis and a time axis in seconds: {tick}"
            );
        }
    }

    #[test]
    fn an_empty_run_still_renders() {
        let svg = latency_svg(&[], &[], "empty").expect("renders");
        well_formed(&svg).unwrap_or_else(|e| panic!("not well-formed SVG: {e}"));
        assert_eq!(count_elements(&svg, "circle", &[]), 0, "no points");
    }
}
