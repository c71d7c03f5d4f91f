//! `--plot FILE.png`: latency over time and the latency distribution (or a series such as the
//! server's RSS over time), drawn with plotters' bitmap backend. Text uses a TrueType font
//! loaded at run time (`HERALD_BENCH_FONT`, or a common system path) through ab_glyph, so no
//! fontconfig is needed; without a font the chart is drawn without labels.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::anyhow;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use plotters::style::FontStyle;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/noto/NotoSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a font as "sans-serif" once; returns whether text can be drawn.
fn text_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let env = std::env::var("HERALD_BENCH_FONT").ok();
        let candidates = env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS.iter().copied());
        for path in candidates {
            if path.is_empty() {
                return false; // HERALD_BENCH_FONT="" forces label-less charts
            }
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

/// One point of the latency timeline: seconds since start, p50, p99, max (ms).
pub type TimePoint = (f64, f64, f64, f64);

type Series = (&'static str, RGBColor, fn(&TimePoint) -> f64);

pub fn plot_latency(
    path: &Path,
    title: &str,
    timeline: &[TimePoint],
    hist: &Histogram<u64>,
) -> anyhow::Result<()> {
    let text = text_available();
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(450);

    // Latency over time.
    let t_max = timeline.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_max = timeline.iter().map(|p| p.3).fold(1.0, f64::max) * 1.05;
    let mut b = ChartBuilder::on(&top);
    b.margin(15);
    if text {
        b.caption(format!("{title}: latency over time"), ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(70);
    }
    let mut chart = b
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)
        .map_err(err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds since first publish").y_desc("ms");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(err)?;
    let series: [Series; 3] = [
        ("p50", BLUE, |p| p.1),
        ("p99", RED, |p| p.2),
        ("max", RGBColor(120, 120, 120), |p| p.3),
    ];
    for (name, color, f) in series {
        let s = chart
            .draw_series(LineSeries::new(
                timeline.iter().map(|p| (p.0, f(p))),
                color.stroke_width(2),
            ))
            .map_err(err)?;
        if text {
            s.label(name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }

    // Distribution: counts per latency bucket up to p99.9 (the rest in the last bucket).
    let hi_us = if hist.is_empty() {
        1
    } else {
        hist.value_at_quantile(0.999).max(1)
    };
    const BUCKETS: usize = 100;
    let width = (hi_us as f64 / BUCKETS as f64).max(1.0);
    let mut counts = vec![0u64; BUCKETS];
    for v in hist.iter_recorded() {
        let i = ((v.value_iterated_to() as f64 / width) as usize).min(BUCKETS - 1);
        counts[i] += v.count_at_value();
    }
    let c_max = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.05;
    let x_max_ms = hi_us as f64 / 1000.0;
    let mut b = ChartBuilder::on(&bottom);
    b.margin(15);
    if text {
        b.caption(
            format!("{title}: latency distribution (to p99.9)"),
            ("sans-serif", 22),
        )
        .x_label_area_size(40)
        .y_label_area_size(70);
    }
    let mut chart = b
        .build_cartesian_2d(0f64..x_max_ms, 0f64..c_max)
        .map_err(err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("publish → receive latency, ms")
            .y_desc("deliveries");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(err)?;
    let w_ms = width / 1000.0;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &n)| {
            let x0 = i as f64 * w_ms;
            Rectangle::new([(x0, 0.0), (x0 + w_ms, n as f64)], BLUE.mix(0.6).filled())
        }))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// A single series over time (e.g. server RSS in MB).
pub fn plot_series(
    path: &Path,
    title: &str,
    y_desc: &str,
    points: &[(f64, f64)],
) -> anyhow::Result<()> {
    let text = text_available();
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let t_max = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut b = ChartBuilder::on(&root);
    b.margin(15);
    if text {
        b.caption(title, ("sans-serif", 22))
            .x_label_area_size(40)
            .y_label_area_size(70);
    }
    let mut chart = b
        .build_cartesian_2d(0f64..t_max, 0f64..y_max)
        .map_err(err)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds").y_desc(y_desc);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            points.iter().copied(),
            BLUE.stroke_width(2),
        ))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_pngs() {
        let dir = std::env::temp_dir().join(format!("herald-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut h = crate::stats::new_hist();
        for v in 1..5000u64 {
            crate::stats::record(&mut h, v * 7);
        }
        let tl: Vec<TimePoint> = (0..10)
            .map(|i| (i as f64, 5.0, 20.0, 30.0 + i as f64))
            .collect();
        let p = dir.join("lat.png");
        plot_latency(&p, "test", &tl, &h).unwrap();
        assert!(std::fs::metadata(&p).unwrap().len() > 1000);
        let p2 = dir.join("rss.png");
        plot_series(&p2, "rss", "MB", &[(0.0, 10.0), (1.0, 12.0), (2.0, 11.0)]).unwrap();
        assert!(std::fs::metadata(&p2).unwrap().len() > 1000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
