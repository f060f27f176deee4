//! Probes on smartcore, a probe-model plugin written with the SDK alone (as a third party would).
//!
//! - `model: ridge` (default): ridge-regularised linear probes onto one-hot targets, no intercept:
//!   `W^T = (X^T X + alpha I)^-1 X^T Y` (smartcore's `RidgeRegression`, Cholesky, unnormalised, one
//!   target column per class). With no more samples than features smartcore's ridge refuses the
//!   primal system, so the same solution is taken in its dual form `X^T (X X^T + alpha I)^-1 Y`
//!   (smartcore's Cholesky solve). `alpha` (default 1.0) must be > 0 in the dual form. Saves `W` as
//!   `.npy` `[classes, d_model]`: the host treats it as linear weights (steering can use them).
//! - `model: knn`: a non-linear baseline, smartcore's k-nearest-neighbours classifier (Euclidean
//!   distance, `k` neighbours, default 5, uniform votes); scores are its class probabilities (the
//!   share of the k neighbours' votes). Saves its training set and `k` as JSON and fits again on load.
//!
//! The host adds `loss` (the metric it reports, mse or ce) and `epochs` (no solver here iterates: ignored).

use musicgen_interp_sdk::ndarray::{Array2, ArrayView2};
use musicgen_interp_sdk::{export_probe, ProbeModel};
use smartcore::linalg::basic::arrays::{Array as _, Array2 as _, MutArray as _};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linalg::traits::cholesky::CholeskyDecomposable;
use smartcore::linear::ridge_regression::{RidgeRegression, RidgeRegressionParameters, RidgeRegressionSolverName};
use smartcore::metrics::distance::euclidian::Euclidian;
use smartcore::neighbors::knn_classifier::{KNNClassifier, KNNClassifierParameters};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default = "ridge")]
    model: String,
    #[serde(default = "one")]
    alpha: f64,
    #[serde(default = "five")]
    k: usize,
    /// Set by the host: the loss it reports (mse or ce); no effect on the fit.
    #[serde(default)]
    loss: Option<String>,
    /// Set by the host; nothing here iterates.
    #[serde(default)]
    epochs: Option<u64>,
}

fn ridge() -> String {
    "ridge".into()
}
fn one() -> f64 {
    1.0
}
fn five() -> usize {
    5
}

type Knn = KNNClassifier<f64, i64, DenseMatrix<f64>, Vec<i64>, Euclidian<f64>>;

/// What `save` writes for `knn`: the training set and `k` (smartcore's model is refitted on load).
#[derive(serde::Serialize, serde::Deserialize)]
struct KnnState {
    model: String,
    k: usize,
    classes: usize,
    x: Vec<Vec<f32>>,
    y: Vec<i64>,
}

enum Fitted {
    Linear(Array2<f32>),
    Knn { state: KnnState, model: Box<Knn> },
}

pub struct SmartcoreProbe {
    model: String,
    alpha: f64,
    k: usize,
    fitted: Option<Fitted>,
}

fn dense(x: ArrayView2<'_, f32>) -> Result<DenseMatrix<f64>, String> {
    let (n, d) = x.dim();
    DenseMatrix::new(n, d, x.iter().map(|&v| v as f64).collect(), false).map_err(|e| e.to_string())
}

fn check_labels(labels: &[i64], classes: usize) -> Result<(), String> {
    match labels.iter().find(|&&l| usize::try_from(l).map_or(true, |c| c >= classes)) {
        Some(l) => Err(format!("label {l} outside 0..{classes}")),
        None => Ok(()),
    }
}

/// Ridge onto one-hot targets, no intercept, `[classes, d]`.
fn fit_ridge(x: ArrayView2<'_, f32>, labels: &[i64], classes: usize, alpha: f64) -> Result<Array2<f32>, String> {
    let (n, d) = x.dim();
    let xm = dense(x)?;
    let mut w = Array2::<f32>::zeros((classes, d));
    if n > d {
        let params = RidgeRegressionParameters::default().with_alpha(alpha).with_normalize(false).with_solver(RidgeRegressionSolverName::Cholesky);
        for c in 0..classes {
            let y: Vec<f64> = labels.iter().map(|&l| if l as usize == c { 1.0 } else { 0.0 }).collect();
            let model = RidgeRegression::fit(&xm, &y, params.clone()).map_err(|e| format!("ridge regression (class {c}): {e}"))?;
            let coef = model.coefficients();
            for j in 0..d {
                w[[c, j]] = *coef.get((j, 0)) as f32;
            }
        }
    } else {
        if alpha <= 0.0 {
            return Err(format!("ridge with {n} samples and {d} features needs alpha > 0 (X X^T is singular without it)"));
        }
        // Dual form: W^T = X^T (X X^T + alpha I)^-1 Y.
        let mut gram = xm.matmul(&xm.transpose());
        for i in 0..n {
            gram.add_element_mut((i, i), alpha);
        }
        let y = DenseMatrix::new(n, classes, (0..n * classes).map(|k| if labels[k / classes] as usize == k % classes { 1.0 } else { 0.0 }).collect(), false)
            .map_err(|e| e.to_string())?;
        let a = gram.cholesky_solve_mut(y).map_err(|e| format!("ridge (dual form): {e}"))?; // [n, classes]
        let wt = xm.transpose().matmul(&a); // [d, classes]
        for c in 0..classes {
            for j in 0..d {
                w[[c, j]] = *wt.get((j, c)) as f32;
            }
        }
    }
    Ok(w)
}

fn fit_knn(state: &KnnState) -> Result<Knn, String> {
    let n = state.x.len();
    if n <= state.k {
        return Err(format!("knn with k = {} needs more than {} training samples (it has {n})", state.k, state.k));
    }
    let d = state.x[0].len();
    let x = DenseMatrix::new(n, d, state.x.iter().flatten().map(|&v| v as f64).collect(), false).map_err(|e| e.to_string())?;
    KNNClassifier::fit(&x, &state.y, KNNClassifierParameters::default().with_k(state.k)).map_err(|e| format!("knn: {e}"))
}

impl SmartcoreProbe {
    fn knn_scores(state: &KnnState, model: &Knn, x: ArrayView2<'_, f32>, classes: usize) -> Result<Array2<f32>, String> {
        // predict_proba's columns are the classes present in training, in increasing order.
        let mut present: Vec<i64> = state.y.clone();
        present.sort_unstable();
        present.dedup();
        let proba = model.predict_proba(&dense(x)?).map_err(|e| format!("knn: {e}"))?;
        let mut s = Array2::<f32>::zeros((x.nrows(), classes));
        for (i, row) in proba.iter().enumerate() {
            for (col, &p) in row.iter().enumerate() {
                let c = present[col] as usize;
                if c < classes {
                    s[[i, c]] = p as f32;
                }
            }
        }
        Ok(s)
    }
}

impl ProbeModel for SmartcoreProbe {
    const NAME: &'static str = "smartcore-probe";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn create(config: &str) -> Result<Self, String> {
        let config = if config.trim().is_empty() { "{}" } else { config };
        let s: Settings = serde_json::from_str(config).map_err(|e| format!("smartcore-probe settings: {e}"))?;
        if s.model != "ridge" && s.model != "knn" {
            return Err(format!("smartcore-probe: model {:?}: use ridge or knn", s.model));
        }
        if !s.alpha.is_finite() || s.alpha < 0.0 {
            return Err(format!("smartcore-probe: alpha {} must be a finite number >= 0", s.alpha));
        }
        if s.k < 2 {
            return Err(format!("smartcore-probe: k {} must be 2 or more (smartcore's knn)", s.k));
        }
        if let Some(loss) = &s.loss {
            if loss != "mse" && loss != "ce" {
                return Err(format!("smartcore-probe: loss {loss:?}: use mse or ce"));
            }
        }
        let _ = s.epochs;
        Ok(SmartcoreProbe { model: s.model, alpha: s.alpha, k: s.k, fitted: None })
    }

    fn fit(&mut self, x: ArrayView2<'_, f32>, labels: &[i64], classes: usize) -> Result<(), String> {
        if x.nrows() == 0 {
            return Err("no training samples".into());
        }
        check_labels(labels, classes)?;
        self.fitted = Some(match self.model.as_str() {
            "ridge" => Fitted::Linear(fit_ridge(x, labels, classes, self.alpha)?),
            _ => {
                let state = KnnState { model: "knn".into(), k: self.k, classes, x: x.rows().into_iter().map(|r| r.to_vec()).collect(), y: labels.to_vec() };
                let model = Box::new(fit_knn(&state)?);
                Fitted::Knn { state, model }
            }
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
        match self.fitted.as_ref().ok_or("the probe is not fitted")? {
            Fitted::Linear(w) => {
                if w.ncols() != x.ncols() {
                    return Err(format!("features have {} dims, the probe {}", x.ncols(), w.ncols()));
                }
                Ok(x.dot(&w.t()))
            }
            Fitted::Knn { state, model } => {
                if state.x.first().map_or(0, Vec::len) != x.ncols() {
                    return Err(format!("features have {} dims, the probe {}", x.ncols(), state.x.first().map_or(0, Vec::len)));
                }
                Self::knn_scores(state, model, x, state.classes)
            }
        }
    }

    fn save(&mut self, path: &str) -> Result<(), String> {
        match self.fitted.as_ref().ok_or("the probe is not fitted")? {
            Fitted::Linear(w) => ndarray_npy::write_npy(path, w).map_err(|e| format!("{path}: {e}")),
            Fitted::Knn { state, .. } => std::fs::write(path, serde_json::to_vec(state).map_err(|e| e.to_string())?).map_err(|e| format!("{path}: {e}")),
        }
    }

    fn load(&mut self, path: &str) -> Result<(), String> {
        self.fitted = Some(match self.model.as_str() {
            "ridge" => Fitted::Linear(musicgen_interp_sdk::npy::read(std::path::Path::new(path), "ridge probe weights [classes, d_model]")?),
            _ => {
                let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
                let state: KnnState = serde_json::from_slice(&bytes).map_err(|e| format!("{path}: not a knn state saved by smartcore-probe ({e})"))?;
                if state.x.is_empty() || state.x.len() != state.y.len() || state.x.iter().any(|r| r.len() != state.x[0].len()) {
                    return Err(format!("{path}: a knn state with {} rows and {} labels of unequal widths", state.x.len(), state.y.len()));
                }
                check_labels(&state.y, state.classes)?;
                let model = Box::new(fit_knn(&state)?);
                Fitted::Knn { state, model }
            }
        });
        Ok(())
    }
}

export_probe!(SmartcoreProbe);
