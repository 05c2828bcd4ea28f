//! PNG plot of the scaling curves from a [`Report`]: throughput and p99
//! against concurrency, and throughput, p99 and resident memory against the
//! number of stored secrets, one line per server.
//!
//! Drawn with plotters' bitmap backend; text uses a TrueType font read from
//! the system (DejaVu Sans or any `.ttf` under `/usr/share/fonts`), since the
//! crate is built without font-kit.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use plotters::prelude::*;

use crate::report::{CurvePoint, Report};

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

fn find_ttf(dir: &Path, depth: usize) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && depth > 0 {
            if let Some(f) = find_ttf(&p, depth - 1) {
                return Some(f);
            }
        } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("ttf")) {
            return Some(p);
        }
    }
    None
}

fn register_font() -> Result<()> {
    let path = FONT_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| find_ttf(Path::new("/usr/share/fonts"), 4))
        .ok_or_else(|| anyhow!("no TrueType font found (install fonts-dejavu-core)"))?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{} is not a usable font", path.display()))
}

const SERVERS: &[(&str, RGBColor)] = &[
    ("custos", RGBColor(200, 60, 30)),
    ("openbao", RGBColor(30, 90, 200)),
];

/// A logarithmic axis from the decade at or below `lo` to the one above
/// `hi`: plotters labels only decades on a log axis, so a range inside one
/// decade (p99 between 3 and 16 ms) would get one label or none.
fn decades(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let lo = lo.max(f64::MIN_POSITIVE);
    10f64.powf(lo.log10().floor())..10f64.powf((hi.max(lo) * 1.05).log10().ceil())
}

/// 10000 -> "10k", 1000000 -> "1M".
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", (v / 1e6 * 10.0).round() / 10.0)
    } else if v >= 1e3 {
        format!("{}k", (v / 1e3 * 10.0).round() / 10.0)
    } else {
        format!("{v:.0}")
    }
}

/// Draw one panel: `y(point)` against `x`, one line per server.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    xdesc: &str,
    ydesc: &str,
    points: &[CurvePoint],
    y: fn(&CurvePoint) -> Option<f64>,
    log_y: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let xs: Vec<f64> = points.iter().map(|p| p.x as f64).collect();
    let ys: Vec<f64> = points.iter().filter_map(y).filter(|v| *v > 0.0).collect();
    if xs.is_empty() || ys.is_empty() {
        return Ok(());
    }
    let (x0, x1) = (
        xs.iter().cloned().fold(f64::MAX, f64::min),
        xs.iter().cloned().fold(0.0, f64::max),
    );
    let (y0, y1) = (
        ys.iter().cloned().fold(f64::MAX, f64::min),
        ys.iter().cloned().fold(0.0, f64::max),
    );
    let xr = (x0 * 0.8)..(x1 * 1.25);
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing {title}: {e:?}");
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70);
    let series = |p: &CurvePoint| y(p).filter(|v| *v > 0.0).map(|v| (p.x as f64, v));
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(xdesc)
                .y_desc(ydesc)
                .x_labels(6)
                .x_label_formatter(&|v| si(*v))
                .y_label_formatter(&|v| {
                    if v.abs() < 10.0 {
                        format!("{v:.1}")
                    } else {
                        format!("{v:.0}")
                    }
                })
                .draw()
                .map_err(err)?;
            for (name, color) in SERVERS {
                let pts: Vec<(f64, f64)> = points
                    .iter()
                    .filter(|p| p.server == *name)
                    .filter_map(series)
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(err)?
                    .label(*name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(
                        pts.iter()
                            .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
                    )
                    .map_err(err)?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(err)?;
        }};
    }
    if log_y {
        draw!(
            builder
                .build_cartesian_2d(xr.log_scale(), decades(y0, y1).log_scale())
                .map_err(err)?
        );
    } else {
        draw!(
            builder
                .build_cartesian_2d(xr.log_scale(), 0.0..(y1 * 1.15))
                .map_err(err)?
        );
    }
    Ok(())
}

/// Write the scaling-curve PNG for `r` to `out`.
pub fn plot(r: &Report, out: &Path) -> Result<()> {
    if r.concurrency_curve.is_empty() && r.keys_curve.is_empty() {
        bail!("the report has no scaling curves (run compare with --curves)");
    }
    register_font()?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = BitMapBackend::new(out, (1500, 950)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let (head, body) = root.split_vertically(50);
    head.draw_text(
        &format!(
            "Custos vs OpenBao (kv-v2 at concurrency 16 unless noted), {} — {}",
            r.date.get(..16).unwrap_or(&r.date),
            r.machine
        ),
        &("sans-serif", 20).into_text_style(&head),
        (15, 15),
    )
    .map_err(|e| anyhow!("{e:?}"))?;
    let cells = body.split_evenly((2, 3));
    let cw = r
        .concurrency_curve
        .first()
        .map_or("kv-read".into(), |p| p.workload.clone());
    let kw = r
        .keys_curve
        .first()
        .map_or("kv-read".into(), |p| p.workload.clone());
    panel(
        &cells[0],
        &format!("{cw}: throughput vs concurrency"),
        "concurrency",
        "ops/s",
        &r.concurrency_curve,
        |p| Some(p.rps),
        false,
    )?;
    panel(
        &cells[1],
        &format!("{cw}: p99 vs concurrency"),
        "concurrency",
        "p99 ms",
        &r.concurrency_curve,
        |p| Some(p.p99_ms),
        true,
    )?;
    panel(
        &cells[2],
        &format!("{cw}: server CPU vs concurrency"),
        "concurrency",
        "cores",
        &r.concurrency_curve,
        |p| p.server_cpu_cores,
        false,
    )?;
    panel(
        &cells[3],
        &format!("{kw}: throughput vs stored secrets"),
        "stored secrets",
        "ops/s",
        &r.keys_curve,
        |p| Some(p.rps),
        false,
    )?;
    panel(
        &cells[4],
        &format!("{kw}: p99 vs stored secrets"),
        "stored secrets",
        "p99 ms",
        &r.keys_curve,
        |p| Some(p.p99_ms),
        true,
    )?;
    panel(
        &cells[5],
        "resident memory vs stored secrets",
        "stored secrets",
        "RSS MiB",
        &r.keys_curve,
        |p| p.rss_bytes.map(|b| b as f64 / 1048576.0),
        false,
    )?;
    root.present()
        .map_err(|e| anyhow!("writing {}: {e:?}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{decades, si};

    #[test]
    fn log_axes_span_whole_decades() {
        assert_eq!(decades(3.0, 16.0), 1.0..100.0);
        assert_eq!(decades(0.55, 180.0), 0.1..1000.0);
        // A point on a decade is not drawn on the frame.
        assert_eq!(decades(10.0, 100.0), 10.0..1000.0);
    }

    #[test]
    fn si_labels() {
        assert_eq!(si(10_000.0), "10k");
        assert_eq!(si(1_000_000.0), "1M");
        assert_eq!(si(256.0), "256");
    }
}
