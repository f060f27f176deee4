//! Linear probes (seed A), a probe-model plugin. Weights `W` are `[classes, d_model]`, no bias;
//! the score of class `c` for features `x` is `W[c] . x`.
//!
//! - `loss: mse`: least squares onto one-hot targets, closed form (`W^T = pinv(X) Y`, the minimum-norm
//!   solution, by SVD with nalgebra). Iterations do not apply: `epochs` is ignored (the host says so once per training run).
//! - `loss: ce`: multinomial logistic regression (linfa-logistic, L-BFGS, no intercept), `epochs` =
//!   its maximum iterations (default 100), `l2` its penalty (default 0).
//!
//! `save` writes `W` as `.npy` `[classes, d_model]`; `load` reads it back.

use musicgen_interp_sdk::ndarray::{Array2, ArrayView2};
use musicgen_interp_sdk::{export_probe, ProbeModel};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "mse")]
    loss: String,
    #[serde(default)]
    epochs: Option<u64>,
    #[serde(default)]
    l2: f32,
}

fn mse() -> String {
    "mse".into()
}

pub struct LinearProbe {
    loss: String,
    epochs: u64,
    l2: f32,
    weights: Option<Array2<f32>>,
}

fn one_hot(labels: &[i64], classes: usize) -> Result<Array2<f64>, String> {
    let mut y = Array2::<f64>::zeros((labels.len(), classes));
    for (i, &l) in labels.iter().enumerate() {
        let c = usize::try_from(l).ok().filter(|&c| c < classes).ok_or(format!("label {l} outside 0..{classes}"))?;
        y[[i, c]] = 1.0;
    }
    Ok(y)
}

/// Minimum-norm least squares `argmin_W ||X W^T - Y||`, returned as `[classes, d]`.
fn least_squares(x: ArrayView2<'_, f32>, y: &Array2<f64>) -> Result<Array2<f32>, String> {
    let (n, d) = x.dim();
    let xm = nalgebra::DMatrix::<f64>::from_fn(n, d, |i, j| x[[i, j]] as f64);
    let ym = nalgebra::DMatrix::<f64>::from_fn(n, y.ncols(), |i, j| y[[i, j]]);
    let svd = xm.svd(true, true);
    // Singular values below this are treated as zero (numpy's lstsq default rcond: eps * max(n, d)).
    let max_sv = svd.singular_values.iter().copied().fold(0.0, f64::max);
    let eps = f64::EPSILON * n.max(d) as f64 * max_sv;
    let w = svd.solve(&ym, eps).map_err(|e| format!("least squares: {e}"))?; // [d, classes]
    Ok(Array2::from_shape_fn((y.ncols(), d), |(c, j)| w[(j, c)] as f32))
}

fn logistic(x: ArrayView2<'_, f32>, labels: &[i64], classes: usize, epochs: u64, l2: f32) -> Result<Array2<f32>, String> {
    use linfa::prelude::*;
    let (n, d) = x.dim();
    let x16 = ndarray16::Array2::from_shape_fn((n, d), |(i, j)| x[[i, j]] as f64);
    let y16 = ndarray16::Array1::from_iter(labels.iter().map(|&l| l as usize));
    let dataset = linfa::Dataset::new(x16, y16);
    let model = linfa_logistic::MultiLogisticRegression::default()
        .with_intercept(false)
        .alpha(l2 as f64)
        .max_iterations(epochs)
        .fit(&dataset)
        .map_err(|e| format!("logistic regression: {e}"))?;
    let params = model.params(); // [d, present classes]
    let mut w = Array2::<f32>::zeros((classes, d));
    for (col, &class) in model.classes().iter().enumerate() {
        if class >= classes {
            return Err(format!("label {class} outside 0..{classes}"));
        }
        for j in 0..d {
            w[[class, j]] = params[[j, col]] as f32;
        }
    }
    Ok(w)
}

impl ProbeModel for LinearProbe {
    const NAME: &'static str = "linear-probe";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn create(config: &str) -> Result<Self, String> {
        let config = if config.trim().is_empty() { "{}" } else { config };
        let s: Settings = serde_json::from_str(config).map_err(|e| format!("linear-probe settings: {e}"))?;
        if s.loss != "mse" && s.loss != "ce" {
            return Err(format!("linear-probe: loss {:?}: use mse or ce", s.loss));
        }
        Ok(LinearProbe { loss: s.loss, epochs: s.epochs.unwrap_or(100), l2: s.l2, weights: None })
    }

    fn fit(&mut self, x: ArrayView2<'_, f32>, labels: &[i64], classes: usize) -> Result<(), String> {
        if x.nrows() == 0 {
            return Err("no training samples".into());
        }
        self.weights = Some(match self.loss.as_str() {
            "mse" => least_squares(x, &one_hot(labels, classes)?)?,
            _ => logistic(x, labels, classes, self.epochs, self.l2)?,
        });
        Ok(())
    }

    fn predict(&mut self, x: ArrayView2<'_, f32>) -> Result<Vec<i64>, String> {
        let s = self.scores(x)?;
        Ok(s.rows()
            .into_iter()
            .map(|r| r.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0 as i64)
            .collect())
    }

    fn scores(&mut self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>, String> {
        let w = self.weights.as_ref().ok_or("the probe is not fitted")?;
        if w.ncols() != x.ncols() {
            return Err(format!("features have {} dims, the probe {}", x.ncols(), w.ncols()));
        }
        Ok(x.dot(&w.t()))
    }

    fn save(&mut self, path: &str) -> Result<(), String> {
        let w = self.weights.as_ref().ok_or("the probe is not fitted")?;
        ndarray_npy::write_npy(path, w).map_err(|e| format!("{path}: {e}"))
    }

    fn load(&mut self, path: &str) -> Result<(), String> {
        self.weights = Some(musicgen_interp_sdk::npy::read(std::path::Path::new(path), "probe weights [classes, d_model]")?);
        Ok(())
    }
}

export_probe!(LinearProbe);
