//! PNG plots (plotters, bitmap backend, the bundled DejaVu Sans): written to a temporary file and
//! renamed into place, like every other result.
//!
//! Every plot numbers layers from 0 and says so on its axis ([`LAYER_AXIS`]); tick labels are plain
//! decimals ([`tick_label`]), never scientific notation; a heatmap's colours come from a fixed
//! range unless asked otherwise ([`ColourRange`], [`colour_at`]) and it carries a colour bar.

use std::path::Path;

use plotters::coord::Shift;
use plotters::element::ComposedElement;
use plotters::prelude::*;

use crate::error::{Error, Result};

pub type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// The drawing area every plot function draws on.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Line colours (tab10's blue, red, green), in order.
pub const LINE_COLOURS: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];

/// The layer axis' description, the same in every plot.
pub const LAYER_AXIS: &str = "layer (0-based)";

/// Draws a `width x height` PNG at `path` atomically with `draw`.
pub fn png(path: &Path, size: (u32, u32), draw: impl FnOnce(Area<'_>) -> DrawResult) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------
// Tick labels (pure functions, unit-tested)

/// How many decimals the ticks of an axis over `lo..hi` with at most `max_ticks` ticks need: one
/// more than the rough step's first significant digit (plotters steps by 1, 2 or 5 times a power of
/// ten), at most 12; [`tick_label`] drops the zeros that turn out not to be needed.
pub fn tick_decimals(lo: f64, hi: f64, max_ticks: usize) -> usize {
    let step = (hi - lo).abs() / max_ticks.max(1) as f64;
    if !(step.is_finite() && step > 0.0) {
        return 2;
    }
    (1.0 - step.log10().floor()).clamp(0.0, 12.0) as usize
}

/// A tick value as a plain decimal with at most `decimals` places, trailing zeros dropped, and no
/// "-0": `tick_label(0.8333, 2) == "0.83"`, `tick_label(-1.69e-21, 3) == "0"`,
/// `tick_label(0.180, 3) == "0.18"`.
pub fn tick_label(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        s = s.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    if s == "-0" {
        s = "0".into();
    }
    s
}

/// The power of ten (a multiple of 3) an axis over `lo..hi` is shown in, when plain decimals would
/// be too long (ticks needing more than 6 decimals, or values of a million and more): the ticks are
/// then value / 10^e, still plain decimals, and the axis' description says "× 10^e" ([`scaled_desc`]).
/// 0 when the values read well as they are.
pub fn axis_exponent(lo: f64, hi: f64, max_ticks: usize) -> i32 {
    let big = lo.abs().max(hi.abs());
    if !(big.is_finite() && big > 0.0) || (tick_decimals(lo, hi, max_ticks) <= 6 && big < 1e6) {
        return 0;
    }
    (big.log10().floor() as i32).div_euclid(3) * 3
}

/// An axis description with its scale, as `"precision (× 10⁻⁹)"`.
pub fn scaled_desc(desc: &str, exponent: i32) -> String {
    if exponent == 0 {
        return desc.to_string();
    }
    let sup: String = exponent.to_string().chars().map(|c| match c {
        '-' => '⁻',
        d => ['⁰', '¹', '²', '³', '⁴', '⁵', '⁶', '⁷', '⁸', '⁹'][d.to_digit(10).unwrap_or(0) as usize],
    }).collect();
    format!("{desc} (× 10{sup})")
}

/// A layer tick: the integer, or nothing between integers.
pub fn layer_label(v: f64) -> String {
    if (v - v.round()).abs() < 1e-6 { format!("{}", v.round() as i64) } else { String::new() }
}

/// Integer ticks from 0 to `max_layer`, every 1, 2, 5, 10, ... so that at most `max_ticks` show.
pub fn layer_ticks(max_layer: usize, max_ticks: usize) -> Vec<f64> {
    let mut step = 1usize;
    let mut k = 0;
    while max_layer / step + 1 > max_ticks.max(2) {
        step = [2, 5, 10][k % 3] * 10usize.pow((k / 3) as u32);
        k += 1;
    }
    (0..=max_layer).step_by(step).map(|l| l as f64).collect()
}

// ---------------------------------------------------------------------------------------------
// Lines by layer

/// A point marker; series of one plot take different ones so that lines that coincide still show:
/// a small filled circle, a larger hollow square around it, a filled triangle, a hollow diamond.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    Circle,
    Square,
    Triangle,
    Diamond,
}

impl Marker {
    /// The `i`-th of the markers, in order.
    pub fn nth(i: usize) -> Marker {
        [Marker::Circle, Marker::Square, Marker::Triangle, Marker::Diamond][i % 4]
    }

    /// The outline in pixels around the point, and whether it is filled.
    pub fn outline(self) -> (Vec<(i32, i32)>, bool) {
        match self {
            Marker::Circle => ((0..12).map(|k| std::f64::consts::TAU * k as f64 / 12.0).map(|a| ((4.5 * a.cos()).round() as i32, (4.5 * a.sin()).round() as i32)).collect(), true),
            Marker::Square => (vec![(-6, -6), (6, -6), (6, 6), (-6, 6)], false),
            Marker::Triangle => (vec![(0, -6), (6, 5), (-6, 5)], true),
            Marker::Diamond => (vec![(0, -8), (8, 0), (0, 8), (-8, 0)], false),
        }
    }

    /// The marker at `at` (data or pixel coordinates): one element type for every shape.
    fn element<C, DB: DrawingBackend>(self, at: C, colour: RGBColor) -> MarkerElement<C, DB> {
        let (points, filled) = self.outline();
        let fill = if filled { colour.filled() } else { WHITE.mix(0.0).filled() };
        let mut closed = points.clone();
        closed.push(points[0]);
        EmptyElement::at(at) + Polygon::new(points, fill) + PathElement::new(closed, colour.stroke_width(2))
    }
}

/// A marker drawn at a point: its filled outline and its stroke, in pixels around the point.
type MarkerElement<C, DB> = ComposedElement<C, DB, Polygon<(i32, i32)>, PathElement<(i32, i32)>>;

/// One line of a [`by_layer`] panel.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    /// (layer, value).
    pub points: Vec<(f64, f64)>,
    /// A standard deviation per point, drawn as an error bar of +/- one.
    pub std: Option<Vec<f64>>,
    pub colour: RGBColor,
    pub marker: Marker,
    pub dashed: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, colour: RGBColor) -> Series {
        Series { name: name.into(), points, std: None, colour, marker: Marker::Circle, dashed: false }
    }

    pub fn marker(mut self, m: Marker) -> Series {
        self.marker = m;
        self
    }

    pub fn dashed(mut self, dashed: bool) -> Series {
        self.dashed = dashed;
        self
    }

    pub fn std(mut self, std: Vec<f64>) -> Series {
        self.std = Some(std);
        self
    }
}

/// What a [`by_layer`] panel shows besides its lines.
#[derive(Clone, Debug, Default)]
pub struct Panel {
    pub title: String,
    pub y_desc: String,
    /// The x axis' description; [`LAYER_AXIS`] when empty.
    pub x_desc: String,
    /// A fixed y range (e.g. 0..1 for an accuracy); fitted to the data (and error bars) when `None`.
    pub y_range: Option<(f64, f64)>,
    /// A labelled horizontal reference line, dashed (e.g. the chance level).
    pub reference: Option<(f64, String)>,
    /// Shifts the series sideways around each layer so that points and error bars at one layer do
    /// not hide one another.
    pub dodge: bool,
}

impl Panel {
    pub fn new(title: impl Into<String>, y_desc: impl Into<String>) -> Panel {
        Panel { title: title.into(), y_desc: y_desc.into(), ..Default::default() }
    }
}

/// The y range fitted to `values` (with a margin; a flat line gets a band around its value rather
/// than a band of rounding noise).
pub fn fitted_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.filter(|y| y.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let scale = lo.abs().max(hi.abs());
    let pad = ((hi - lo) * 0.08).max(scale * 0.05);
    let pad = if pad > 0.0 { pad } else { 1.0 };
    (lo - pad, hi + pad)
}

const Y_TICKS: usize = 8;
const LEGEND_W: i32 = 200;

/// Line series against layer on one panel, each with its marker (and dashes, error bars) as the
/// series says; the legend sits right of the plotting area, where it covers no data.
pub fn by_layer(area: &Area<'_>, panel: &Panel, series: &[Series]) -> DrawResult {
    let n = series.len();
    let offset = |i: usize| if panel.dodge && n > 1 { (i as f64 - (n - 1) as f64 / 2.0) * 0.12 } else { 0.0 };
    let max_x = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(0.0, f64::max);
    let (lo, hi) = panel.y_range.unwrap_or_else(|| {
        fitted_range(series.iter().flat_map(|s| {
            s.points.iter().enumerate().flat_map(move |(k, p)| {
                let e = s.std.as_ref().and_then(|v| v.get(k)).copied().unwrap_or(0.0);
                [p.1 - e, p.1 + e]
            })
        }).chain(panel.reference.iter().map(|r| r.0)))
    });
    let exponent = axis_exponent(lo, hi, Y_TICKS);
    let unit = 10f64.powi(exponent);
    let decimals = tick_decimals(lo / unit, hi / unit, Y_TICKS);
    let y_desc = scaled_desc(&panel.y_desc, exponent);
    let grey = RGBColor(90, 90, 90);
    let mut legend: Vec<LegendEntry> = series.iter().map(|s| LegendEntry { name: s.name.clone(), colour: s.colour, marker: Some(s.marker), dashed: s.dashed }).collect();
    if let Some((_, name)) = &panel.reference {
        legend.push(LegendEntry { name: name.clone(), colour: grey, marker: None, dashed: true });
    }
    let font = TextStyle::from(("sans-serif", 14).into_font());
    // The legend has a column of its own right of the chart, of one width (unless a name is long)
    // so that stacked panels line up.
    let legend_w = legend.iter().map(|l| area.estimate_text_size(&l.name, &font).map(|s| s.0).unwrap_or(100) as i32 + 72).max().unwrap_or(0).max(LEGEND_W);
    let (w, _) = area.dim_in_pixel();
    let (area, legend_area) = area.split_horizontally(w as i32 - legend_w);
    // plotters steps a numeric axis by 1, 2 or 5 times a power of ten: with at most as many labels
    // as layers it never takes a step below 1, so every tick is a layer.
    let x_labels = (max_x.round() as usize + 1).min(25);
    let mut chart = ChartBuilder::on(&area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..(max_x + 0.5), lo..hi)?;
    let x_desc = if panel.x_desc.is_empty() { LAYER_AXIS } else { panel.x_desc.as_str() };
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc.as_str())
        .axis_desc_style(("sans-serif", 15))
        .label_style(("sans-serif", 13))
        .x_labels(x_labels)
        .y_labels(Y_TICKS)
        .x_label_formatter(&|v| layer_label(*v))
        .y_label_formatter(&|v| tick_label(*v / unit, decimals))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;
    if let Some((y, _)) = &panel.reference {
        chart.draw_series(DashedLineSeries::new([(-0.5, *y), (max_x + 0.5, *y)], 8, 5, grey.stroke_width(2)))?;
    }
    for (i, s) in series.iter().enumerate() {
        let c = s.colour;
        let dx = offset(i);
        let points: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (x + dx, y)).collect();
        if let Some(std) = &s.std {
            let bar = c.mix(0.8).stroke_width(1);
            // +/- one standard deviation: a vertical line with 4-pixel caps.
            let bars: Vec<(f64, f64, f64)> = points.iter().zip(std).filter(|(_, e)| e.is_finite() && **e > 0.0).map(|(&(x, y), &e)| (x, y - e, y + e)).collect();
            chart.draw_series(bars.iter().map(|&(x, a, b)| PathElement::new(vec![(x, a), (x, b)], bar)))?;
            chart.draw_series(bars.iter().flat_map(|&(x, a, b)| [(x, a), (x, b)]).map(|p| EmptyElement::at(p) + PathElement::new(vec![(-4, 0), (4, 0)], bar)))?;
        }
        if s.dashed {
            chart.draw_series(DashedLineSeries::new(points.clone(), 7, 4, c.stroke_width(2)))?;
        } else {
            chart.draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?;
        }
        chart.draw_series(points.iter().map(|&p| s.marker.element(p, c)))?;
    }
    // The legend's top at the plotting area's top.
    let top = chart.plotting_area().get_pixel_range().1.start - area.get_base_pixel().1;
    draw_legend(&legend_area, top, &legend, &font)
}

/// One line of a legend: its name and a sample of its line (and marker).
struct LegendEntry {
    name: String,
    colour: RGBColor,
    marker: Option<Marker>,
    dashed: bool,
}

/// A framed legend at the top left of `area` (`top` pixels down).
fn draw_legend(area: &Area<'_>, top: i32, entries: &[LegendEntry], font: &TextStyle<'_>) -> DrawResult {
    if entries.is_empty() {
        return Ok(());
    }
    let (w, _) = area.dim_in_pixel();
    let row = 22;
    let (x0, y0) = (8, top);
    area.draw(&Rectangle::new([(x0, y0), (w as i32 - 6, y0 + row * entries.len() as i32 + 8)], BLACK.mix(0.4).stroke_width(1)))?;
    for (k, e) in entries.iter().enumerate() {
        let y = y0 + 4 + row * k as i32 + row / 2;
        // A solid line is one dash as long as the sample.
        let (dash, gap) = if e.dashed { (5, 3) } else { (28, 1) };
        area.draw(&(EmptyElement::at((x0 + 8, y)) + plotters::element::DashedPathElement::new(vec![(0, 0), (28, 0)], dash, gap, e.colour.stroke_width(2))))?;
        if let Some(m) = e.marker {
            area.draw(&m.element((x0 + 22, y), e.colour))?;
        }
        area.draw_text(&e.name, &font.pos(plotters::style::text_anchor::Pos::new(plotters::style::text_anchor::HPos::Left, plotters::style::text_anchor::VPos::Center)), (x0 + 44, y))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Heatmaps

/// The values a heatmap's colours span.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ColourRange {
    /// A fixed range, the same for every run (values outside take the end colours): near-identical
    /// values look near-identical.
    Fixed(f64, f64),
    /// The data's own minimum to maximum: shows small differences, but stretches a tiny band over
    /// the whole palette.
    Data,
}

impl Default for ColourRange {
    /// [-1, 1], a cosine's range.
    fn default() -> Self {
        ColourRange::Fixed(-1.0, 1.0)
    }
}

/// A diverging palette (ColorBrewer RdBu, reversed): blue low, near-white middle, red high.
const PALETTE: [(u8, u8, u8); 7] = [(33, 102, 172), (103, 169, 207), (209, 229, 240), (247, 247, 247), (253, 219, 199), (239, 138, 98), (178, 24, 43)];

/// The colour of `v` on a scale from `lo` to `hi` (clamped to it; grey for a non-finite value).
pub fn colour_at(v: f64, lo: f64, hi: f64) -> RGBColor {
    if !v.is_finite() {
        return RGBColor(128, 128, 128);
    }
    let t = if hi > lo { ((v - lo) / (hi - lo)).clamp(0.0, 1.0) } else { 0.5 };
    let x = t * (PALETTE.len() - 1) as f64;
    let i = (x.floor() as usize).min(PALETTE.len() - 2);
    let f = x - i as f64;
    let (a, b) = (PALETTE[i], PALETTE[i + 1]);
    let mix = |p: u8, q: u8| (p as f64 + (q as f64 - p as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// The range a heatmap of `values` uses under `range`.
pub fn resolve_range(range: ColourRange, values: impl Iterator<Item = f64>) -> (f64, f64) {
    match range {
        ColourRange::Fixed(lo, hi) => (lo, hi),
        ColourRange::Data => {
            let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
            if !lo.is_finite() {
                (0.0, 1.0)
            } else if hi - lo < 1e-12 {
                (lo - 0.5e-12, hi + 0.5e-12)
            } else {
                (lo, hi)
            }
        }
    }
}

/// A square matrix indexed by layer (0-based) as a heatmap, row `i` column `j` the value of layers
/// `i` and `j`, with a colour bar over `range` labelled `value_desc`; each cell is annotated with
/// its value while the matrix is small enough to read them.
pub fn heatmap(path: &Path, title: &str, value_desc: &str, m: ndarray::ArrayView2<'_, f32>, range: ColourRange) -> Result<()> {
    if m.nrows() < 2 || m.nrows() != m.ncols() {
        return Err(Error::Input(format!("{title}: a heatmap needs a square matrix of at least two rows, got {:?}", m.dim())));
    }
    let n = m.nrows();
    let (lo, hi) = resolve_range(range, m.iter().map(|&v| v as f64));
    let (min, max) = m.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let scale = match range {
        ColourRange::Fixed(..) => "fixed colour scale",
        ColourRange::Data => "colour scale fitted to the data",
    };
    png(path, (760, 640), |root| {
        use plotters::coord::ranged1d::{IntoSegmentedCoord, SegmentValue};
        let (header, body) = root.split_vertically(52);
        let centre = plotters::style::text_anchor::Pos::new(plotters::style::text_anchor::HPos::Center, plotters::style::text_anchor::VPos::Top);
        header.draw_text(title, &TextStyle::from(("sans-serif", 17).into_font()).pos(centre), (380, 8))?;
        header.draw_text(
            &format!("values {} to {}; {scale}", tick_label(min as f64, 4), tick_label(max as f64, 4)),
            &TextStyle::from(("sans-serif", 13).into_font()).color(&BLACK.mix(0.7)).pos(centre),
            (380, 30),
        )?;
        let (main, bar) = body.split_horizontally(640);
        let step = layer_ticks(n - 1, 16).get(1).map(|s| *s as usize).unwrap_or(1);
        let mut chart = ChartBuilder::on(&main)
            .margin(10)
            .x_label_area_size(45)
            .y_label_area_size(50)
            .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())?;
        let label = |v: &SegmentValue<usize>| match v {
            SegmentValue::CenterOf(i) if i % step == 0 => format!("{i}"),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(LAYER_AXIS)
            .y_desc(LAYER_AXIS)
            .axis_desc_style(("sans-serif", 15))
            .label_style(("sans-serif", 13))
            .x_labels(n + 1)
            .y_labels(n + 1)
            .x_label_formatter(&label)
            .y_label_formatter(&label)
            .draw()?;
        chart.draw_series((0..n).flat_map(|i| (0..n).map(move |j| (i, j))).map(|(i, j)| {
            let colour = colour_at(m[[i, j]] as f64, lo, hi);
            Rectangle::new([(SegmentValue::Exact(j), SegmentValue::Exact(i)), (SegmentValue::Exact(j + 1), SegmentValue::Exact(i + 1))], colour.filled())
        }))?;
        let (w, _) = chart.plotting_area().dim_in_pixel();
        let cell = w as usize / n;
        if cell >= 36 {
            let size = (cell / 4).clamp(10, 14) as u32;
            let decimals = if (max - min) < 0.01 { 4 } else { 2 };
            chart.draw_series((0..n).flat_map(|i| (0..n).map(move |j| (i, j))).map(|(i, j)| {
                let v = m[[i, j]] as f64;
                let c = colour_at(v, lo, hi);
                let dark = (0.299 * c.0 as f64 + 0.587 * c.1 as f64 + 0.114 * c.2 as f64) < 128.0;
                let style = TextStyle::from(("sans-serif", size).into_font()).color(if dark { &WHITE } else { &BLACK }).pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ));
                Text::new(format!("{v:.decimals$}"), (SegmentValue::CenterOf(j), SegmentValue::CenterOf(i)), style)
            }))?;
        }
        colour_bar(&bar, value_desc, lo, hi)
    })
}

/// A vertical colour bar over `lo..hi` with plain-decimal ticks.
fn colour_bar(area: &Area<'_>, desc: &str, lo: f64, hi: f64) -> DrawResult {
    let decimals = tick_decimals(lo, hi, 10);
    let mut bar = ChartBuilder::on(area)
        .margin_top(10)
        .margin_bottom(55)
        .margin_left(5)
        .margin_right(5)
        .y_label_area_size(0)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..1.0, lo..hi)?;
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(10)
        .label_style(("sans-serif", 13))
        .y_label_formatter(&|v| tick_label(*v, decimals))
        .y_desc(desc)
        .axis_desc_style(("sans-serif", 14))
        .draw()?;
    let steps = 200;
    bar.draw_series((0..steps).map(|k| {
        let a = lo + (hi - lo) * k as f64 / steps as f64;
        let b = lo + (hi - lo) * (k + 1) as f64 / steps as f64;
        Rectangle::new([(0.0, a), (1.0, b)], colour_at((a + b) / 2.0, lo, hi).filled())
    }))?;
    bar.draw_series(std::iter::once(Rectangle::new([(0.0, lo), (1.0, hi)], BLACK.mix(0.5).stroke_width(1))))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_plain_decimals() {
        assert_eq!(tick_label(0.8333, 2), "0.83");
        assert_eq!(tick_label(1e-21, 2), "0");
        assert_eq!(tick_label(-1.69e-21, 6), "0");
        assert_eq!(tick_label(0.18, 2), "0.18");
        assert_eq!(tick_label(0.180, 3), "0.18");
        assert_eq!(tick_label(0.30000000000000004, 3), "0.3");
        assert_eq!(tick_label(1.0, 2), "1");
        assert_eq!(tick_label(-0.25, 2), "-0.25");
        assert_eq!(tick_label(12.0, 0), "12");
        assert_eq!(tick_label(0.000015, 6), "0.000015");
        for v in [0.8333, 1e-21, 0.18, 1e-5, -3.5e-7, 123.456] {
            let s = tick_label(v, 8);
            assert!(!s.contains('e') && !s.contains('E'), "{v} -> {s}");
        }
    }

    #[test]
    fn tick_decimals_follow_the_step() {
        assert_eq!(tick_decimals(0.0, 1.0, 8), 2); // steps of 0.1 or 0.2
        assert_eq!(tick_decimals(0.17, 0.19, 8), 4); // steps of 0.002 or 0.005
        assert_eq!(tick_decimals(0.0, 100.0, 8), 0);
        assert_eq!(tick_decimals(0.0, 2e-5, 8), 7);
        assert_eq!(tick_decimals(1.0, 1.0, 8), 2);
        // Every tick plotters would put on 0.17..0.19 reads exactly.
        let d = tick_decimals(0.17, 0.19, 8);
        assert_eq!(tick_label(0.1725, d), "0.1725");
    }

    #[test]
    fn tiny_and_huge_axes_are_scaled_not_written_in_e_notation() {
        assert_eq!(axis_exponent(0.0, 1.0, 8), 0);
        assert_eq!(axis_exponent(-0.0004, 0.0002, 8), 0); // "-0.0004" reads well
        assert_eq!(axis_exponent(-2.7e-9, 5e-10, 8), -9);
        assert_eq!(axis_exponent(-1.69e-21, 4e-5, 8), -6);
        assert_eq!(axis_exponent(0.0, 3e7, 8), 6);
        let e = axis_exponent(-2.7e-9, 5e-10, 8);
        let unit = 10f64.powi(e);
        let d = tick_decimals(-2.7e-9 / unit, 5e-10 / unit, 8);
        assert_eq!(tick_label(-1.5e-9 / unit, d), "-1.5");
        assert_eq!(tick_label(-1.69e-21 / unit, d), "0");
        assert_eq!(scaled_desc("precision (-KL)", -9), "precision (-KL) (× 10⁻⁹)");
        assert_eq!(scaled_desc("loss", 0), "loss");
        assert_eq!(scaled_desc("x", 6), "x (× 10⁶)");
    }

    #[test]
    fn layer_ticks_are_integers() {
        assert_eq!(layer_ticks(3, 25), vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(layer_ticks(0, 25), vec![0.0]);
        let t = layer_ticks(47, 25);
        assert!(t.len() <= 25 && t.iter().all(|v| v.fract() == 0.0) && t[0] == 0.0, "{t:?}");
        assert_eq!(t[1], 2.0);
        assert_eq!(layer_ticks(200, 25)[1], 10.0);
        assert_eq!(layer_label(3.0), "3");
        assert_eq!(layer_label(2.5), "");
        assert_eq!(layer_label(-0.0), "0");
    }

    #[test]
    fn flat_lines_get_a_readable_band() {
        let (lo, hi) = fitted_range([0.18, 0.18, 0.18].into_iter());
        assert!(lo < 0.18 && hi > 0.18 && hi - lo > 0.01, "{lo} {hi}");
        assert!(!tick_label(lo, tick_decimals(lo, hi, 8)).contains('e'));
        // Tiny values keep a band of their own size, not one of a fixed width.
        let (lo, hi) = fitted_range([-2.5e-9, -1e-10].into_iter());
        assert!(hi < 3e-10 && lo > -3e-9, "{lo} {hi}");
        assert_eq!(fitted_range([0.0, 0.0].into_iter()), (-1.0, 1.0));
    }

    fn dist(a: RGBColor, b: RGBColor) -> f64 {
        ((a.0 as f64 - b.0 as f64).powi(2) + (a.1 as f64 - b.1 as f64).powi(2) + (a.2 as f64 - b.2 as f64).powi(2)).sqrt()
    }

    #[test]
    fn colours_use_the_fixed_range() {
        let (lo, hi) = resolve_range(ColourRange::default(), [0.9992, 1.0].into_iter());
        assert_eq!((lo, hi), (-1.0, 1.0));
        let (low, mid, high) = (colour_at(-1.0, lo, hi), colour_at(0.0, lo, hi), colour_at(1.0, lo, hi));
        assert_eq!(low, RGBColor(33, 102, 172));
        assert_eq!(mid, RGBColor(247, 247, 247));
        assert_eq!(high, RGBColor(178, 24, 43));
        // Near-identical layers look near-identical; opposite ends look opposite.
        assert!(dist(colour_at(0.9992, lo, hi), high) < 1.0);
        assert!(dist(low, high) > 150.0);
        // Outside the range: the end colours.
        assert_eq!(colour_at(1.5, lo, hi), high);
        assert_eq!(colour_at(-7.0, lo, hi), low);
        // The data-fitted option stretches the band over the palette.
        let (dl, dh) = resolve_range(ColourRange::Data, [0.9992, 1.0].into_iter());
        assert!(dist(colour_at(0.9992, dl, dh), colour_at(1.0, dl, dh)) > 150.0);
    }
}
