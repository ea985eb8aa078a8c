//! The sweep drawn as one SVG: throughput, and p50 (solid) and p99 (dashed) latency,
//! against concurrency, one colour per target. SVG text needs no fonts on this machine:
//! the viewer renders it.

use std::path::Path;

use plotters::prelude::*;

use crate::sweep::Curve;

const COLOURS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4), // blue
    RGBColor(0xd6, 0x27, 0x28), // red
    RGBColor(0x2c, 0xa0, 0x2c), // green
    RGBColor(0xff, 0x7f, 0x0e), // orange
    RGBColor(0x94, 0x67, 0xbd), // purple
    RGBColor(0x8c, 0x56, 0x4b), // brown
];

/// Writes the chart of `curves` to `out`; `title` goes above both panels.
pub fn draw(curves: &[Curve], title: &str, out: &Path) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("chart {}: {e}", out.display());
    let points = || curves.iter().flat_map(|c| c.points.iter());
    let (c_lo, c_hi) = bounds(points().map(|(c, _)| *c as f64));
    let (r_lo, r_hi) = bounds(points().map(|(_, r)| r.rps));
    let (l_lo, l_hi) = bounds(points().flat_map(|(_, r)| [r.lat.p50, r.lat.p99]));

    let root = SVGBackend::new(out, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(700);

    let mut tput = ChartBuilder::on(&left)
        .caption("throughput (calls/s)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (c_lo..c_hi).log_scale(),
            (r_lo / 1.5..r_hi * 1.5).log_scale(),
        )
        .map_err(|e| err(&e))?;
    tput.configure_mesh()
        .x_desc("concurrency (calls in flight)")
        .y_desc("calls/s")
        .x_label_formatter(&|c| format!("{c:.0}"))
        .y_label_formatter(&|r| format!("{r:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, curve) in curves.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let line: Vec<(f64, f64)> = curve
            .points
            .iter()
            .map(|(c, r)| (*c as f64, r.rps))
            .collect();
        tput.draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(curve.name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        tput.draw_series(line.into_iter().map(|p| Circle::new(p, 3, colour.filled())))
            .map_err(|e| err(&e))?;
    }
    tput.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;

    let mut lat = ChartBuilder::on(&right)
        .caption("latency: p50 solid, p99 dashed (µs)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (c_lo..c_hi).log_scale(),
            (l_lo / 1.5..l_hi * 1.5).log_scale(),
        )
        .map_err(|e| err(&e))?;
    lat.configure_mesh()
        .x_desc("concurrency (calls in flight)")
        .y_desc("µs")
        .x_label_formatter(&|c| format!("{c:.0}"))
        .y_label_formatter(&|l| format!("{l:.0}"))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, curve) in curves.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let p50: Vec<(f64, f64)> = curve
            .points
            .iter()
            .map(|(c, r)| (*c as f64, r.lat.p50))
            .collect();
        let p99: Vec<(f64, f64)> = curve
            .points
            .iter()
            .map(|(c, r)| (*c as f64, r.lat.p99))
            .collect();
        lat.draw_series(LineSeries::new(p50, colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(curve.name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        lat.draw_series(DashedLineSeries::new(p99, 6, 4, colour.stroke_width(1)))
            .map_err(|e| err(&e))?;
    }
    lat.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

/// Smallest and largest positive finite value (a log axis needs both above zero).
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (1.0, 10.0)
    }
}
