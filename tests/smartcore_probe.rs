//! The `smartcore-probe` plugin through `train-probes --probe smartcore-probe --settings ...` and
//! `evaluate`: ridge weights equal the closed form `(X^T X + alpha I)^-1 X^T Y` computed here by
//! Gauss-Jordan elimination in f64 on the saved training split (both with more samples than features,
//! smartcore's ridge, and fewer, the dual form); k-nearest neighbours separates an XOR set that no
//! linear probe through the origin can.

mod common;

use std::path::Path;
use std::process::Command;

use ndarray::{Array1, Array2, Array3};
use rand::{Rng, SeedableRng};

use common::npy;

fn cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp")).args(["--device", "cpu"]).args(args).output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?}: {log}");
    log
}

/// `residuals_cond.npy` `[n, layers + 1, d]` (point 0 unused by probes) and `labels.npy`.
fn write(dir: &Path, x: &Array3<f32>, labels: Vec<i64>) {
    std::fs::create_dir_all(dir).unwrap();
    musicgen_interp::store::write_npy(&dir.join("residuals_cond.npy"), x).unwrap();
    musicgen_interp::store::write_npy(&dir.join("labels.npy"), &Array1::from(labels)).unwrap();
}

/// Noisy classes around distinct directions.
fn gaussian_classes(dir: &Path, per_class: usize, classes: usize, layers: usize, d: usize, seed: u64) {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let n = per_class * classes;
    let mut x = Array3::<f32>::zeros((n, layers + 1, d));
    let mut labels = Vec::new();
    for i in 0..n {
        let c = i % classes;
        for p in 0..=layers {
            for j in 0..d {
                x[[i, p, j]] = if j == (c * 2 + p) % d { 1.5 } else { 0.0 } + rng.random_range(-0.8..0.8);
            }
        }
        labels.push(c as i64);
    }
    write(dir, &x, labels);
}

/// `(A + alpha I)^-1 B` by Gauss-Jordan elimination with partial pivoting (A symmetric positive definite).
fn solve(mut a: Array2<f64>, mut b: Array2<f64>) -> Array2<f64> {
    let n = a.nrows();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[[i, col]].abs().total_cmp(&a[[j, col]].abs())).unwrap();
        for k in 0..n {
            a.swap([col, k], [pivot, k]);
        }
        for k in 0..b.ncols() {
            b.swap([col, k], [pivot, k]);
        }
        let p = a[[col, col]];
        for row in 0..n {
            if row != col {
                let f = a[[row, col]] / p;
                for k in 0..n {
                    a[[row, k]] -= f * a[[col, k]];
                }
                for k in 0..b.ncols() {
                    b[[row, k]] -= f * b[[col, k]];
                }
            }
        }
    }
    for row in 0..n {
        let p = a[[row, row]];
        b.row_mut(row).mapv_inplace(|v| v / p);
    }
    b
}

/// The oracle: ridge on the saved split's L2-normalised training rows, one-hot targets, no intercept.
fn ridge_oracle(data: &Path, split: &serde_json::Value, layer: usize, alpha: f64) -> Array2<f64> {
    let x = npy::<f32>(data.join("residuals_cond.npy"));
    let y = npy::<i64>(data.join("labels.npy"));
    let train: Vec<usize> = split["train"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let classes = split["num_classes"].as_u64().unwrap() as usize;
    let d = x.shape()[2];
    let mut f = Array2::<f64>::zeros((train.len(), d));
    for (r, &i) in train.iter().enumerate() {
        let norm = (0..d).map(|j| (x[[i, layer + 1, j]] as f64).powi(2)).sum::<f64>().sqrt();
        for j in 0..d {
            f[[r, j]] = x[[i, layer + 1, j]] as f64 / norm;
        }
    }
    let t = Array2::from_shape_fn((train.len(), classes), |(r, c)| if y[[train[r]]] as usize == c { 1.0 } else { 0.0 });
    let mut a = f.t().dot(&f);
    for j in 0..d {
        a[[j, j]] += alpha;
    }
    solve(a, f.t().dot(&t)).reversed_axes() // [classes, d]
}

#[test]
fn ridge_weights_equal_the_closed_form() {
    let tmp = tempfile::tempdir().unwrap();
    // 4 x 30 samples of 12 features (primal: smartcore's RidgeRegression), then 4 x 5 samples of 40
    // features (fewer samples than features: the dual form).
    for (name, per_class, d, alpha) in [("primal", 30, 12, 0.5), ("dual", 5, 40, 0.25)] {
        let (data, out) = (tmp.path().join(name), tmp.path().join(format!("{name}-probes")));
        gaussian_classes(&data, per_class, 4, 3, d, 7);
        let settings = format!("{{\"model\": \"ridge\", \"alpha\": {alpha}}}");
        cli(&["train-probes", "--data-dir", data.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--probe", "smartcore-probe", "--settings", &settings]);
        let w = npy::<f32>(out.join("mse_weights.npy"));
        assert_eq!(w.shape(), &[3, 4, d]);
        let split: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("mse_split.json")).unwrap()).unwrap();
        let mut worst = 0.0f64;
        for l in 0..3 {
            let want = ridge_oracle(&data, &split, l, alpha);
            let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for c in 0..4 {
                for j in 0..d {
                    worst = worst.max((w[[l, c, j]] as f64 - want[[c, j]]).abs() / scale);
                }
            }
        }
        eprintln!("{name}: ridge vs closed form, max error relative to the largest weight {worst:.2e}");
        assert!(worst <= 1e-5, "{name}: {worst}");
        // A different alpha gives different weights (the setting reaches the plugin).
        let again = tmp.path().join(format!("{name}-alpha"));
        cli(&["train-probes", "--data-dir", data.to_str().unwrap(), "--output-dir", again.to_str().unwrap(), "--probe", "smartcore-probe", "--settings", "{\"alpha\": 5.0}"]);
        let w5 = npy::<f32>(again.join("mse_weights.npy"));
        assert!(w5.iter().zip(w.iter()).any(|(a, b)| (a - b).abs() > 1e-3));
    }
}

/// XOR of the signs of two coordinates (a constant third, small noise in two more): after the host's
/// L2 normalisation the signs survive, but no hyperplane through the origin separates the classes.
fn xor(dir: &Path, n: usize) {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
    let layers = 2;
    let mut x = Array3::<f32>::zeros((n, layers + 1, 5));
    let mut labels = Vec::new();
    for i in 0..n {
        let (a, b) = (rng.random_range(0.15f32..1.0), rng.random_range(0.15f32..1.0));
        let (sa, sb) = (if i % 2 == 0 { 1.0 } else { -1.0 }, if (i / 2) % 2 == 0 { 1.0 } else { -1.0 });
        for p in 0..=layers {
            let row = [sa * a, sb * b, 0.6, rng.random_range(-0.05..0.05), rng.random_range(-0.05..0.05)];
            for (j, v) in row.iter().enumerate() {
                x[[i, p, j]] = *v;
            }
        }
        labels.push(if sa * sb > 0.0 { 0 } else { 1 });
    }
    write(dir, &x, labels);
}

#[test]
fn knn_separates_xor_where_a_linear_probe_cannot_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("xor");
    xor(&data, 400);
    let (d, knn, ridge) = (data.to_str().unwrap(), tmp.path().join("knn"), tmp.path().join("ridge"));
    let log = cli(&["train-probes", "--data-dir", d, "--output-dir", knn.to_str().unwrap(), "--num-classes", "2", "--probe", "smartcore-probe", "--settings", "{\"model\": \"knn\", \"k\": 5}"]);
    assert!(log.contains("mse_probe.json"), "{log}");
    cli(&["train-probes", "--data-dir", d, "--output-dir", ridge.to_str().unwrap(), "--num-classes", "2", "--probe", "smartcore-probe", "--settings", "{\"model\": \"ridge\", \"alpha\": 0.01}"]);
    let accuracies = |dir: &Path| -> Vec<f64> {
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("mse_metrics.json")).unwrap()).unwrap();
        m["layers"].as_array().unwrap().iter().map(|l| l["test_accuracy"].as_f64().unwrap()).collect()
    };
    let (k, r) = (accuracies(&knn), accuracies(&ridge));
    eprintln!("XOR test accuracy per layer: knn {k:?}, ridge {r:?}");
    assert!(k.iter().all(|&a| a >= 0.95), "knn {k:?}");
    assert!(r.iter().all(|&a| a <= 0.8), "a linear probe separated XOR? {r:?}");
    assert!(!knn.join("mse_weights.npy").exists() && knn.join("mse_probe/layer_000.state").is_file());

    // evaluate on the probe states: the test accuracies of training come back, on the same split.
    let plot = knn.join("eval.png");
    let log = cli(&[
        "evaluate", "--data-dir", d, "--weights-file", knn.join("mse_probe.json").to_str().unwrap(), "--num-classes", "2", "--output-plot", plot.to_str().unwrap(),
    ]);
    assert!(log.contains("best layer") && !log.contains("made train-probes' split"), "{log}");
    let csv = std::fs::read_to_string(knn.join("mse_evaluation.csv")).unwrap();
    for (line, want) in csv.lines().skip(1).zip(&k) {
        let acc: f64 = line.split(',').nth(2).unwrap().parse().unwrap();
        assert!((acc - want).abs() < 1e-6, "{line} vs {want}");
    }
    assert_eq!(csv.lines().count(), 3);
    // A changed state file is refused rather than evaluated.
    std::fs::write(knn.join("mse_probe/layer_001.state"), b"{}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"))
        .args(["--device", "cpu", "evaluate", "--data-dir", d, "--weights-file", knn.join("mse_probe.json").to_str().unwrap(), "--num-classes", "2", "--output-plot", plot.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("changed since train-probes"), "{err}");
}

#[test]
fn bad_settings_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    gaussian_classes(&data, 10, 2, 1, 4, 1);
    for (settings, says) in [
        ("{\"model\": \"svm\"}", "use ridge or knn"),
        ("{\"alpha\": -1}", "alpha -1"),
        ("{\"k\": 1}", "k 1 must be 2 or more"),
        ("{\"modle\": \"knn\"}", "unknown field `modle`"),
        ("[1]", "give a JSON object"),
        ("{\"loss\": \"ce\"}", "--loss-type is \"mse\""),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp"))
            .args(["--device", "cpu", "train-probes", "--data-dir", data.to_str().unwrap(), "--output-dir", tmp.path().join("o").to_str().unwrap(), "--num-classes", "2"])
            .args(["--probe", "smartcore-probe", "--settings", settings])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{settings}: {err}");
    }
}
