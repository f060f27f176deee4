//! Every plot function writes a PNG of its stated size, from data shaped like the runs that made
//! the plots hard to read (constant accuracy, coinciding lines, a 0.9992..1 similarity band, tiny
//! interchange scores around a -1.69e-21). `PLOTS_KEEP=DIR` keeps the PNGs there to look at.

use std::path::{Path, PathBuf};

use musicgen_interp::hooks::Component;
use musicgen_interp::interchange::{Mode, Score, Site};
use musicgen_interp::plot::{self, ColourRange};
use musicgen_interp::probe::LayerMetrics;

/// Width and height from a PNG's IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

/// A fresh folder for one test's plots (kept under `PLOTS_KEEP` when set).
fn out_dir(name: &str) -> (Option<tempfile::TempDir>, PathBuf) {
    match std::env::var_os("PLOTS_KEEP") {
        Some(dir) => {
            let d = PathBuf::from(dir).join(name);
            std::fs::create_dir_all(&d).unwrap();
            (None, d)
        }
        None => {
            let t = tempfile::tempdir().unwrap();
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    }
}

fn only_png(dir: &Path, name: &str) {
    let names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(".plot-")).collect();
    assert!(names.is_empty(), "temporaries left beside {name}: {names:?}");
}

#[test]
fn probe_plot_is_900_by_560() {
    let (_t, dir) = out_dir("probe");
    // The case: a constant accuracy (5/6) and a constant loss.
    let metrics: Vec<LayerMetrics> = (0..12).map(|l| LayerMetrics { layer: l, accuracy: 0.8333, loss: 0.18, classes: 3 }).collect();
    let path = dir.join("probe_constant.png");
    musicgen_interp::probe::plot(&path, &metrics, "mse", 0).unwrap();
    assert_eq!(png_size(&path), (900, 560));
    // Varying numbers, four classes.
    let metrics: Vec<LayerMetrics> = (0..4).map(|l| LayerMetrics { layer: l, accuracy: 0.25 + 0.2 * l as f64, loss: 0.9 - 0.2 * l as f64, classes: 4 }).collect();
    let path = dir.join("probe_varying.png");
    musicgen_interp::probe::plot(&path, &metrics, "ce", 3).unwrap();
    assert_eq!(png_size(&path), (900, 560));
    only_png(&dir, "probe");
}

#[test]
fn ndcg_plot_is_900_by_420() {
    let (_t, dir) = out_dir("ndcg");
    // Both lines flat at the same value: they must both show.
    let path = dir.join("ndcg_coinciding.png");
    musicgen_interp::decoder_lens::plot_ndcg(&path, &[0.46; 4], &[0.46; 4]).unwrap();
    assert_eq!(png_size(&path), (900, 420));
    let path = dir.join("ndcg_varying.png");
    musicgen_interp::decoder_lens::plot_ndcg(&path, &[0.2, 0.35, 0.6, 0.9], &[0.5, 0.52, 0.61, 0.58, 0.7, 0.66]).unwrap();
    assert_eq!(png_size(&path), (900, 420));
    let path = dir.join("ndcg_decoder_only.png");
    musicgen_interp::decoder_lens::plot_ndcg(&path, &[0.2, 0.35, 0.6, 0.9], &[]).unwrap();
    assert_eq!(png_size(&path), (900, 420));
    only_png(&dir, "ndcg");
}

#[test]
fn heatmap_is_760_by_640_with_either_range() {
    let (_t, dir) = out_dir("heatmap");
    // Near-identical layers (0.9992..1), as the tiny bundle gives.
    let n = 4;
    let m = ndarray::Array2::from_shape_fn((n, n), |(i, j)| if i == j { 1.0f32 } else { 1.0 - 0.0002 * (i as f32 - j as f32).abs() });
    let path = dir.join("self_similarity_fixed.png");
    plot::heatmap(&path, "cosine similarity of time-averaged layer outputs", "cosine similarity", m.view(), ColourRange::default()).unwrap();
    assert_eq!(png_size(&path), (760, 640));
    let path = dir.join("self_similarity_data.png");
    plot::heatmap(&path, "cosine similarity of time-averaged layer outputs", "cosine similarity", m.view(), ColourRange::Data).unwrap();
    assert_eq!(png_size(&path), (760, 640));
    // A spread of values over many layers (labels thinned, cells not annotated).
    let n = 24;
    let m = ndarray::Array2::from_shape_fn((n, n), |(i, j)| ((i as f32 - j as f32) / 6.0).cos());
    let path = dir.join("self_similarity_24.png");
    plot::heatmap(&path, "cosine similarity of time-averaged layer outputs", "cosine similarity", m.view(), ColourRange::default()).unwrap();
    assert_eq!(png_size(&path), (760, 640));
    // One row is refused, and nothing is left behind.
    let one = ndarray::Array2::<f32>::ones((1, 1));
    assert!(plot::heatmap(&dir.join("one.png"), "one", "cosine similarity", one.view(), ColourRange::default()).is_err());
    assert!(!dir.join("one.png").exists());
    only_png(&dir, "heatmap");
}

fn score(prompt: usize, mode: Mode, layer: usize, component: Component, effectiveness: f64, precision: f64) -> Score {
    Score {
        original: "jazz".into(),
        desired: "rock".into(),
        prompt,
        mode,
        site: Site { layer, component },
        p0_original: 0.5,
        p0_desired: 0.5,
        p1_original: 0.5,
        p1_desired: 0.5,
        effectiveness,
        precision,
    }
}

#[test]
fn interchange_plot_is_900_by_660() {
    let (_t, dir) = out_dir("interchange");
    // Tiny effectiveness around zero (a mean of -1.69e-21 among them) and precision lines that
    // coincide for the three components, over three prompts.
    let mut scores = Vec::new();
    for layer in 0..4 {
        for (k, &c) in Component::ALL.iter().enumerate() {
            for p in 0..3 {
                let e = if layer == 0 { [-1.69e-21, 1.69e-21, -1.69e-21][p] } else { 1e-5 * (layer as f64 + k as f64 * 0.3) + 2e-6 * p as f64 };
                scores.push(score(p, Mode::Adjust, layer, c, e, -0.0004 * layer as f64 - 0.0001 * p as f64));
            }
        }
    }
    let refs: Vec<&Score> = scores.iter().collect();
    let path = dir.join("jazz__rock_adjust.png");
    musicgen_interp::interchange::plot_scores(&path, "jazz -> rock, adjust", &refs).unwrap();
    assert_eq!(png_size(&path), (900, 660));
    // One component at one layer (a single site), as a small run gives.
    let one = [score(0, Mode::Replace, 2, Component::Mlp, 0.12, -0.3)];
    let refs: Vec<&Score> = one.iter().collect();
    let path = dir.join("one_site_replace.png");
    musicgen_interp::interchange::plot_scores(&path, "jazz -> rock, replace", &refs).unwrap();
    assert_eq!(png_size(&path), (900, 660));
    only_png(&dir, "interchange");
}
