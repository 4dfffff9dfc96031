//! The scale chart: times and peak memory against collection size, log-log, as SVG.

use std::path::Path;

use plotters::prelude::*;

use crate::tracked::{Report, rss_target_kib};

/// A labelled line of the chart: label, colour, points.
type Line = (&'static str, RGBColor, Vec<(f64, f64)>);

fn count_label(n: f64) -> String {
    if n >= 1e6 {
        format!("{}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{}k", n / 1e3)
    } else {
        format!("{n}")
    }
}

/// Write the chart of `reports` (at least two sizes) to `path`, titled with `note` (what and when).
pub fn write(path: &Path, reports: &[Report], note: &str) -> Result<(), String> {
    if reports.len() < 2 {
        return Err("a chart needs at least two sizes".to_owned());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    draw(path, reports, note).map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

fn draw(path: &Path, reports: &[Report], note: &str) -> Result<(), Box<dyn std::error::Error>> {
    let xs: Vec<f64> = reports.iter().map(|r| r.entities as f64).collect();
    let (x_lo, x_hi) = (xs[0] / 1.5, xs[xs.len() - 1] * 1.5);
    let series = |f: &dyn Fn(&Report) -> f64| -> Vec<(f64, f64)> {
        reports.iter().map(|r| (r.entities as f64, f(r))).collect()
    };
    let times: [Line; 4] = [
        (
            "first tracked read",
            RGBColor(200, 60, 40),
            series(&|r| r.first_read.elapsed.as_secs_f64()),
        ),
        (
            "delta poll, 1% changed",
            RGBColor(40, 90, 200),
            series(&|r| r.poll_changed.median()),
        ),
        (
            "delta poll, unchanged",
            RGBColor(40, 160, 90),
            series(&|r| r.poll_unchanged.median()),
        ),
        (
            "floor (fetch+parse+hash)",
            RGBColor(110, 110, 110),
            series(&|r| r.floor.median()),
        ),
    ];
    let t_values = times.iter().flat_map(|t| t.2.iter().map(|p| p.1));
    let t_lo = t_values.clone().fold(f64::INFINITY, f64::min).max(1e-4) / 2.0;
    let t_hi = t_values.fold(0.0, f64::max) * 2.0;

    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(36);
    title.draw(&Text::new(
        format!("odata-delta-gateway at scale — {note}"),
        (12, 10),
        ("sans-serif", 20).into_font(),
    ))?;
    let (left, right) = body.split_horizontally(560);

    let mut chart = ChartBuilder::on(&left)
        .caption("time (seconds)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (t_lo..t_hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("entities")
        .label_style(("sans-serif", 14))
        .x_label_formatter(&|x| count_label(*x))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()?;
    for (label, color, points) in &times {
        let c = *color;
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;

    let rss = series(&|r| r.peak_rss_kib as f64 / 1024.0);
    let target = series(&|r| rss_target_kib(r.entities) as f64 / 1024.0);
    let m_values = rss.iter().chain(&target).map(|p| p.1);
    let m_lo = m_values.clone().fold(f64::INFINITY, f64::min).max(1.0) / 1.5;
    let m_hi = m_values.fold(0.0, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&right)
        .caption("gateway peak RSS (MiB)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (m_lo..m_hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("entities")
        .label_style(("sans-serif", 14))
        .x_label_formatter(&|x| count_label(*x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let red = RGBColor(200, 60, 40);
    chart
        .draw_series(LineSeries::new(rss.clone(), red.stroke_width(2)))?
        .label("peak RSS (VmHWM)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], red.stroke_width(2)));
    chart.draw_series(rss.iter().map(|p| Circle::new(*p, 3, red.filled())))?;
    let grey = RGBColor(110, 110, 110);
    chart
        .draw_series(LineSeries::new(target, grey.stroke_width(1)))?
        .label("target: 64 MiB + 100 B/entity")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey.stroke_width(1)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}
