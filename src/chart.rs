//! The benchmark chart: throughput and p99 latency against the number of clients, one line
//! per cluster shape, as an SVG file (`shardkv bench --grid --chart docs/grid.svg`).
//!
//! Text is left to the SVG viewer (no font files are read), so the chart renders the same on
//! any machine and needs nothing installed.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::bench::Report;

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("nothing to draw: no benchmark rows")]
    Empty,
    #[error("cannot draw {path}: {detail}")]
    Draw { path: String, detail: String },
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `rows` (cluster shape, report) into an SVG file at `path`: ops/s on the left, p99
/// latency on the right, clients on a log axis. `title` heads the picture.
pub fn render_svg(rows: &[(String, Report)], title: &str, path: &Path) -> Result<(), ChartError> {
    if rows.is_empty() {
        return Err(ChartError::Empty);
    }
    let err = |e: &dyn std::fmt::Display| ChartError::Draw {
        path: path.display().to_string(),
        detail: e.to_string(),
    };
    // Shape -> points in client order; shapes keep their first-seen order.
    let mut order: Vec<&str> = Vec::new();
    let mut series: BTreeMap<&str, Vec<&Report>> = BTreeMap::new();
    for (shape, r) in rows {
        if !series.contains_key(shape.as_str()) {
            order.push(shape);
        }
        series.entry(shape).or_default().push(r);
    }
    for points in series.values_mut() {
        points.sort_by_key(|r| r.clients);
    }
    let max_clients = rows
        .iter()
        .map(|(_, r)| r.clients)
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let max_ops = rows.iter().map(|(_, r)| r.ops_per_s).fold(1.0, f64::max) * 1.1;
    let max_p99 = rows
        .iter()
        .map(|(_, r)| r.p99_us as f64 / 1000.0)
        .fold(0.1, f64::max)
        * 1.1;

    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(title, ("sans-serif", 20))
        .map_err(|e| err(&e))?;
    let (left, right) = root.split_horizontally(550);
    type Panel<'a, DB> = (
        &'a DrawingArea<DB, plotters::coord::Shift>,
        &'a str,
        f64,
        fn(&Report) -> f64,
        usize,
    );
    let panels: [Panel<'_, _>; 2] = [
        (&left, "throughput (ops/s)", max_ops, |r| r.ops_per_s, 0),
        (
            &right,
            "p99 latency (ms)",
            max_p99,
            |r| r.p99_us as f64 / 1000.0,
            1,
        ),
    ];
    for (area, label, y_max, value, decimals) in panels {
        let mut chart = ChartBuilder::on(area)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .caption(label, ("sans-serif", 16))
            .build_cartesian_2d((1.0..max_clients * 1.2).log_scale(), 0.0..y_max)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("clients")
            .y_desc(label)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.decimals$}"))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(|e| err(&e))?;
        for (i, shape) in order.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<(f64, f64)> = series[shape]
                .iter()
                .map(|r| (r.clients as f64, value(r)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(*shape)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )
                .map_err(|e| err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(clients: usize, ops_per_s: f64, p99_ms: u64) -> Report {
        Report {
            clients,
            ops: 1000,
            errors: 0,
            elapsed_s: 1.0,
            ops_per_s,
            p50_us: 500,
            p95_us: 900,
            p99_us: p99_ms * 1000,
            max_us: p99_ms * 2000,
            error_samples: Vec::new(),
        }
    }

    #[test]
    fn draws_one_line_per_shape_in_both_panels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.svg");
        let mut rows = Vec::new();
        for (shape, scale) in [("5x5", 1.0), ("3x3", 1.5)] {
            for (n, base) in [(1, 800.0), (5, 3000.0), (64, 9000.0)] {
                rows.push((shape.to_string(), report(n, base * scale, n as u64)));
            }
        }
        render_svg(&rows, "grid test", &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "an SVG document");
        for text in [
            "grid test",
            "5x5",
            "3x3",
            "clients",
            "throughput (ops/s)",
            "p99 latency (ms)",
        ] {
            assert!(svg.contains(text), "the chart shows {text:?}");
        }
        // Two shapes x two panels: four data lines, plus the legend samples.
        assert!(svg.matches("<polyline").count() >= 4, "{svg}");
        // Three points per shape and panel.
        assert!(svg.matches("<circle").count() >= 12);
    }

    #[test]
    fn no_rows_is_an_error_not_an_empty_picture() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.svg");
        assert!(matches!(
            render_svg(&[], "t", &path),
            Err(ChartError::Empty)
        ));
        assert!(!path.exists());
    }
}
