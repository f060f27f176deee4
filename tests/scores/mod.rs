//! Shared by tests/interchange.rs and tests/commands.rs: an `intervene` run's scores against an
//! independent numpy recomputation from what the run saved (onnx/check_interchange_scores.py).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ndarray::Array1;

use crate::common::{assert_close, Tol};
use musicgen_interp::interchange::read_results;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The project's Python (scripts/test.sh sets the venv up).
pub fn python() -> PathBuf {
    let py = root().join(".venv/bin/python");
    assert!(py.is_file(), "{} is missing: run `bash scripts/setup.sh`", py.display());
    py
}

/// A judge whose probabilities move with the clip (onnx/make_sensitive_judge.py), calibrated on three
/// clips of the `tiny` bundle generated here, written under `dir`: (judge.onnx, labels.csv), at the
/// bundle's 32 kHz (no resampling in the judge). The shipped test classifier gives the tiny bundles'
/// clips nearly equal probabilities (precision ~1e-8), too flat to tell a swap of p0 and p1 apart.
pub fn sensitive_judge(dir: &Path) -> (PathBuf, PathBuf) {
    let model = crate::common::fixture("tiny");
    let mut clips = Vec::new();
    for (seed, text) in [(1, "slow jazz"), (2, "fast rock with guitars"), (3, "a calm piano piece")] {
        let wav = dir.join(format!("calibration{seed}.wav"));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_musicgen-interp"))
            .args(["--device", "cpu", "generate", "--model", model.to_str().unwrap(), "--text", text, "--duration", "0.3"])
            .args(["--seed", &seed.to_string(), "--output", wav.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "calibration clip: {}", String::from_utf8_lossy(&out.stderr));
        clips.push(wav);
    }
    let judge = dir.join("judge");
    let out = std::process::Command::new(python())
        .arg(root().join("onnx/make_sensitive_judge.py"))
        .args(["--out".as_ref(), judge.as_os_str(), "--sample-rate".as_ref(), "32000".as_ref(), "--clips".as_ref()])
        .args(&clips)
        .output()
        .unwrap();
    assert!(out.status.success(), "make_sensitive_judge.py: {}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
    (judge.join("judge.onnx"), judge.join("labels.csv"))
}

/// Runs `onnx/check_interchange_scores.py` over the finished run in `run` (judged with the label
/// map `labels`) and compares every row of every `results/*.csv` with numpy's values: the four
/// concept probabilities, effectiveness, precision, and the saved `kl_divs` (their per-label terms
/// and their sum, which must be minus the precision). Returns the number of rows checked.
///
/// Tolerances: the CSV holds 9 significant digits and both sides read the same f32 probabilities,
/// so probabilities and effectiveness agree to 1e-6 relative to the column's largest magnitude (plus
/// 1e-9). Precision: the run renormalises each f32 softmax vector in f64 before the KL (numpy takes
/// the seed's formula as it is), and a sum of 12 f32 probabilities is 1 within ~1e-7, which moves a
/// KL by about that much: 2e-6 absolute. The saved kl_divs are computed the run's way: 1e-6 relative.
///
/// And the data must be able to tell the defects apart: exchanging p0 and p1 (or the original and
/// desired concept) negates effectiveness, so some row's effectiveness must lie far outside its
/// tolerance; exchanging p0 and p1 in the KL changes it by more than 10x the precision tolerance
/// on some row.
pub fn check_interchange_scores(run: &Path, labels: &Path) -> usize {
    check_interchange_scores_and_clips(run, labels, None).0
}

/// [`check_interchange_scores`], and with `judge` (the run's judge model) every clip the run kept
/// as audio (baselines, extremes) judged again by the script with onnxruntime: its saved
/// probabilities (the baseline's row of `baseline_probabilities.npy`, the extreme's row of
/// `all_probs`) equal the classifier's softmax within 1e-6 absolute (both sides run the same graph
/// on the same f32 samples; the host normalises in f64 and rounds to f32, ~6e-8 on a probability
/// below 1). Returns (rows checked, baseline clips judged, intervened clips judged).
pub fn check_interchange_scores_and_clips(run: &Path, labels: &Path, judge: Option<&Path>) -> (usize, usize, usize) {
    let tmp = tempfile::tempdir().unwrap();
    let out_csv = tmp.path().join("numpy.csv");
    let clips_csv = tmp.path().join("clips.csv");
    let mut cmd = std::process::Command::new(python());
    cmd.arg(root().join("onnx/check_interchange_scores.py"))
        .args(["--run".as_ref(), run.as_os_str(), "--labels".as_ref(), labels.as_os_str(), "--out".as_ref(), out_csv.as_os_str()]);
    if let Some(j) = judge {
        cmd.args(["--judge-model".as_ref(), j.as_os_str(), "--clips-out".as_ref(), clips_csv.as_os_str()]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "check_interchange_scores.py: {}", String::from_utf8_lossy(&out.stderr));
    let (mut baselines, mut intervened) = (0, 0);
    if judge.is_some() {
        let text = std::fs::read_to_string(&clips_csv).unwrap();
        let (mut worst, mut spread) = (0.0f64, (f64::INFINITY, 0.0f64));
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let (diff, top): (f64, f64) = (f[2].parse().unwrap(), f[3].parse().unwrap());
            assert!(diff <= 1e-6 && top > 0.0, "{}: saved probabilities vs the judge run again: max diff {diff:e}", f[1]);
            if f[0] == "baseline" { baselines += 1 } else { intervened += 1 }
            worst = worst.max(diff);
            spread = (spread.0.min(top), spread.1.max(top));
        }
        eprintln!("{} clips judged again: max |saved - judge| {worst:.3e}; top probability {:.4}..{:.4}", baselines + intervened, spread.0, spread.1);
    }
    let text = std::fs::read_to_string(&out_csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let want: Vec<Vec<String>> = lines.map(|l| l.split(',').map(str::to_string).collect()).collect();
    let col = |name: &str| -> Array1<f64> {
        let i = header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("numpy output has no column {name}"));
        want.iter().map(|r| r[i].parse::<f64>().unwrap()).collect()
    };

    // The run's rows, pairs in file-name order as the script takes them.
    let mut pairs: Vec<PathBuf> = std::fs::read_dir(run.join("results"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "csv") && p.file_stem().is_some_and(|s| s.to_string_lossy().contains("__")))
        .collect();
    pairs.sort();
    let mut got = Vec::new();
    for p in &pairs {
        let scores = read_results(p).unwrap();
        let stem = p.file_stem().unwrap().to_string_lossy().to_string();
        // The saved probabilities: one row per CSV row, one column per label.
        let probs: ndarray::Array2<f32> = ndarray_npy::read_npy(p.with_file_name(format!("{stem}_all_probs.npy"))).unwrap();
        let kl: ndarray::Array2<f64> = ndarray_npy::read_npy(p.with_file_name(format!("{stem}_kl_divs.npy"))).unwrap();
        assert_eq!(probs.nrows(), scores.len(), "{stem}: all_probs rows vs CSV rows");
        assert_eq!(kl.dim(), probs.dim(), "{stem}: kl_divs vs all_probs");
        got.extend(scores.into_iter().map(|s| (stem.clone(), s)));
    }
    assert_eq!(got.len(), want.len(), "rows recomputed by numpy vs rows in results/");
    assert!(!got.is_empty(), "no scores in {}", run.display());
    let pair_i = header.iter().position(|h| *h == "pair").unwrap();
    let prompt_i = header.iter().position(|h| *h == "prompt").unwrap();
    for ((stem, s), w) in got.iter().zip(&want) {
        assert_eq!((stem.as_str(), s.prompt.to_string().as_str()), (w[pair_i].as_str(), w[prompt_i].as_str()), "row order");
        assert_eq!(stem, &format!("{}__{}", s.original, s.desired), "a row in the wrong pair's file");
    }

    let f32s = |v: &Array1<f64>| v.mapv(|x| x as f32);
    let run_col = |f: fn(&musicgen_interp::interchange::Score) -> f64| -> Array1<f64> { got.iter().map(|(_, s)| f(s)).collect() };
    let close = Tol::new(1e-9, 1e-6);
    for (name, f) in [
        ("p0_original", (|s: &musicgen_interp::interchange::Score| s.p0_original) as fn(&_) -> f64),
        ("p0_desired", |s| s.p0_desired),
        ("p1_original", |s| s.p1_original),
        ("p1_desired", |s| s.p1_desired),
        ("effectiveness", |s| s.effectiveness),
    ] {
        assert_close(&format!("{name}: run vs numpy"), &f32s(&run_col(f)), &f32s(&col(name)), close);
    }
    let precision_tol = Tol::new(2e-6, 0.0);
    let precision = run_col(|s| s.precision);
    assert_close("precision: run vs numpy -KL(p1 || p0)", &f32s(&precision), &f32s(&col("precision")), precision_tol);
    assert_close("precision: run vs minus the sum of the saved kl_divs", &f32s(&precision), &f32s(&col("saved_kl_sum").mapv(|x| -x)), Tol::new(1e-12, 1e-6));
    // Row by row too: each row's kl terms sum to minus its own precision within 1e-6 relative (the
    // CSV's 9 significant digits are the limit, 5e-9).
    for ((stem, s), sum) in got.iter().zip(col("saved_kl_sum").iter()) {
        assert!((s.precision + sum).abs() <= 1e-6 * s.precision.abs() + 1e-15, "{stem} prompt {} {} {}: precision {:e}, kl terms sum {sum:e}", s.prompt, s.mode.name(), s.site, s.precision);
    }
    let terms = col("kl_terms_max_abs_diff");
    let terms_scale = col("kl_terms_max_abs").fold(0.0f64, |a, &b| a.max(b));
    let worst = terms.fold(0.0f64, |a, &b| if b.is_nan() { f64::INFINITY } else { a.max(b) });
    assert!(worst <= 2e-6 && terms_scale > 1e-4, "saved kl_divs vs numpy's p1 (log p1 - log p0): max diff {worst:e} (largest term {terms_scale:e})");

    // The data can tell the defects from the truth.
    let eff = col("effectiveness");
    let eff_max = eff.fold(0.0f64, |a, &b| a.max(b.abs()));
    assert!(eff_max > 100.0 * (1e-9 + 1e-6 * eff_max) && eff_max > 1e-3, "no row moved the odds (max |effectiveness| {eff_max:e}): a swap would pass");
    let gap = (&col("precision_swapped") - &col("precision")).fold(0.0f64, |a, &b| a.max(b.abs()));
    eprintln!("largest |KL(p0||p1) - KL(p1||p0)| over the rows: {gap:.3e}; max |effectiveness| {eff_max:.3e}");
    assert!(gap > 10.0 * 2e-6, "KL(p0||p1) and KL(p1||p0) differ by at most {gap:e} here: a swap of p0 and p1 could pass");
    (got.len(), baselines, intervened)
}
