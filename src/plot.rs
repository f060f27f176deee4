//! PNG plots (plotters, bitmap backend, the bundled DejaVu Sans): written to a temporary file and
//! renamed into place, like every other result.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};

pub type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draws a `width x height` PNG at `path` atomically with `draw`.
pub fn png(path: &Path, size: (u32, u32), draw: impl FnOnce(DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> DrawResult) -> Result<()> {
    static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = parent.join(format!(".plot-{}-{}.png", std::process::id(), path.file_stem().map(|s| s.to_string_lossy()).unwrap_or_default()));
    let result = (|| {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(root.clone())?;
        root.present()?;
        Ok::<(), Box<dyn std::error::Error>>(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Input(format!("plotting {}: {e}", path.display())));
    }
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

/// Line series against layer on one panel: `series` is (legend, points, colour).
pub fn by_layer(area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>, title: &str, y_desc: &str, series: &[(String, Vec<(f64, f64)>, RGBColor)]) -> DrawResult {
    let xs = series.iter().flat_map(|s| s.1.iter().map(|p| p.0));
    let max_x = xs.fold(0.0, f64::max);
    let ys: Vec<f64> = series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).filter(|y| y.is_finite()).collect();
    let (lo, hi) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| (a.min(y), b.max(y)));
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.08).max(1e-6);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..(max_x + 0.5), (lo - pad)..(hi + pad))?;
    let small = (hi - lo).abs() < 0.05 || hi.abs().max(lo.abs()) < 0.01;
    chart
        .configure_mesh()
        .x_desc("layer")
        .y_desc(y_desc)
        .x_labels((max_x as usize + 2).min(30))
        .x_label_formatter(&|v| if (v - v.round()).abs() < 1e-6 { format!("{}", v.round() as i64) } else { String::new() })
        .y_label_formatter(&|v| if small { format!("{v:.2e}") } else { format!("{v:.3}") })
        .draw()?;
    for (name, points, colour) in series {
        let c = *colour;
        chart
            .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }
    if series.len() > 1 {
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    Ok(())
}

/// A square matrix as a heatmap (blue low, red high) with its value range in the caption.
pub fn heatmap(path: &Path, title: &str, m: ndarray::ArrayView2<'_, f32>) -> Result<()> {
    if m.nrows() < 2 {
        return Err(Error::Input(format!("{title}: a heatmap needs at least two rows")));
    }
    let n = m.nrows();
    let (lo, hi) = m.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let span = (hi - lo).max(1e-9);
    png(path, (640, 600), |root| {
        use plotters::coord::ranged1d::{IntoSegmentedCoord, SegmentValue};
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{title} (min {lo:.4}, max {hi:.4})"), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())?;
        let label = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) => format!("{}", i + 1),
            _ => String::new(),
        };
        chart.configure_mesh().disable_mesh().x_desc("layer").y_desc("layer").x_label_formatter(&label).y_label_formatter(&label).draw()?;
        chart.draw_series((0..n).flat_map(|i| (0..n).map(move |j| (i, j))).map(|(i, j)| {
            let t = (m[[i, j]] - lo) / span;
            let colour = RGBColor((255.0 * t) as u8, 64, (255.0 * (1.0 - t)) as u8);
            Rectangle::new([(SegmentValue::Exact(j), SegmentValue::Exact(i)), (SegmentValue::Exact(j + 1), SegmentValue::Exact(i + 1))], colour.filled())
        }))?;
        Ok(())
    })
}
