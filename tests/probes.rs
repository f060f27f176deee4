//! Probe training and evaluation: the closed-form mse probe equals numpy's least-squares solution on
//! the saved training split; linearly separable classes reach test accuracy 1.0 with mse and ce; the
//! evaluated split is the saved one; bad labels are refused; extract -> train -> evaluate runs end to
//! end on the tiny model.

mod common;
mod scores;

use std::path::Path;
use std::process::Command;

use ndarray::{Array1, Array3};
use rand::{Rng, SeedableRng};

use common::npy;

const CLASSES: usize = 4;
const LAYERS: usize = 3;
const D: usize = 16;

/// Separable features: class c's mean is a distinct direction, plus small noise; class 0 has extra
/// samples so balancing has work to do. Point 0 stands for embed.hook_out (not probed).
fn features(dir: &Path) {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    let counts = [30, 20, 20, 20];
    let n: usize = counts.iter().sum();
    let mut x = Array3::<f32>::zeros((n, LAYERS + 1, D));
    let mut labels = Vec::new();
    let mut i = 0;
    for (c, &count) in counts.iter().enumerate() {
        for _ in 0..count {
            for p in 0..=LAYERS {
                for j in 0..D {
                    let mean = if j == (c * 3 + p) % D { 3.0 } else { 0.0 };
                    x[[i, p, j]] = mean + rng.random_range(-0.3..0.3);
                }
            }
            labels.push(c as i64);
            i += 1;
        }
    }
    musicgen_interp::store::write_npy(&dir.join("residuals_cond.npy"), &x).unwrap();
    musicgen_interp::store::write_npy(&dir.join("residuals_uncond.npy"), &x.mapv(|v| -v)).unwrap();
    musicgen_interp::store::write_npy(&dir.join("labels.npy"), &Array1::from(labels)).unwrap();
}

fn cli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp")).args(["--device", "cpu"]).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn cli_err(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp")).args(["--device", "cpu"]).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn python() -> std::path::PathBuf {
    musicgen_interp::runtime::find_venv_python().expect("the project's .venv (scripts/setup.sh)")
}

#[test]
fn mse_probe_equals_numpy_least_squares_and_separates() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("probes"));
    std::fs::create_dir_all(&data).unwrap();
    features(&data);
    let log = cli(&[
        "train-probes", "--data-dir", data.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--num-classes", "4",
        "--loss-type", "mse", "--epochs", "10",
    ]);
    assert_eq!(log.matches("epochs is ignored").count(), 1, "said once, not once per layer: {log}");
    let w = npy::<f32>(out.join("mse_weights.npy"));
    assert_eq!(w.shape(), &[LAYERS, CLASSES, D]);
    let metrics: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("mse_metrics.json")).unwrap()).unwrap();
    for layer in metrics["layers"].as_array().unwrap() {
        assert_eq!(layer["test_accuracy"], 1.0, "{layer}");
    }
    assert_eq!(metrics["per_class"], 20, "balanced to the smallest class");
    // Oracle: numpy's lstsq on the same L2-normalised training rows, one-hot targets, no bias.
    let script = r#"
import json, sys, numpy as np
data, out = sys.argv[1], sys.argv[2]
x = np.load(f"{data}/residuals_cond.npy")[:, 1:, :].astype(np.float64)
y = np.load(f"{data}/labels.npy")
split = json.load(open(f"{out}/mse_split.json"))
tr = np.array(split["train"])
w = []
for l in range(x.shape[1]):
    f = x[tr, l, :]
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    t = np.eye(split["num_classes"])[y[tr]]
    w.append(np.linalg.lstsq(f, t, rcond=None)[0].T)
np.save(f"{out}/numpy_weights.npy", np.array(w, dtype=np.float64))
"#;
    let status = Command::new(python()).args(["-c", script, data.to_str().unwrap(), out.to_str().unwrap()]).status().unwrap();
    assert!(status.success());
    let want = npy::<f64>(out.join("numpy_weights.npy"));
    let diff = w.iter().zip(want.iter()).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
    eprintln!("mse probe vs numpy lstsq: max abs diff {diff:.2e}");
    assert!(diff <= 1e-5, "max abs diff {diff}");

    // Evaluation on the saved split: the numbers training reported, a CSV, a confusion matrix, a PNG.
    let plot = out.join("eval.png");
    let log = cli(&[
        "evaluate", "--data-dir", data.to_str().unwrap(), "--weights-file", out.join("mse_weights.npy").to_str().unwrap(),
        "--num-classes", "4", "--output-plot", plot.to_str().unwrap(),
    ]);
    let split: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("mse_split.json")).unwrap()).unwrap();
    let n_test = split["test"].as_array().unwrap().len();
    assert!(log.contains(&format!("on {n_test} test samples")), "{log}");
    let confusion = npy::<i64>(out.join("mse_confusion.npy"));
    assert_eq!(confusion.shape(), &[LAYERS, CLASSES, CLASSES]);
    for l in 0..LAYERS {
        let total: i64 = confusion.index_axis(ndarray::Axis(0), l).sum();
        let diag: i64 = (0..CLASSES).map(|c| confusion[[l, c, c]]).sum();
        assert_eq!((total, diag), (n_test as i64, n_test as i64));
    }
    let csv = std::fs::read_to_string(out.join("mse_evaluation.csv")).unwrap();
    assert_eq!(csv.lines().count(), LAYERS + 1);
    let png = std::fs::read(&plot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 5000);
    // The test metrics of training and of evaluation agree: the same split was evaluated.
    for (layer, row) in metrics["layers"].as_array().unwrap().iter().zip(csv.lines().skip(1)) {
        let loss: f64 = row.split(',').nth(3).unwrap().parse().unwrap();
        assert!((loss - layer["test_loss"].as_f64().unwrap()).abs() < 1e-5, "{row} vs {layer}");
    }
}

#[test]
fn ce_probe_separates() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("probes"));
    std::fs::create_dir_all(&data).unwrap();
    features(&data);
    cli(&["train-probes", "--data-dir", data.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--num-classes", "4", "--loss-type", "ce", "--epochs", "200"]);
    let metrics: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("ce_metrics.json")).unwrap()).unwrap();
    for layer in metrics["layers"].as_array().unwrap() {
        assert_eq!(layer["test_accuracy"], 1.0, "{layer}");
        assert!(layer["train_loss"].as_f64().unwrap() < 1.0, "{layer}");
    }
    assert_eq!(npy::<f32>(out.join("ce_weights.npy")).shape(), &[LAYERS, CLASSES, D]);
}

#[test]
fn bad_labels_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    features(&data);
    let out = tmp.path().join("p");
    // Four classes in the data, three declared: label 3 is outside the map.
    let e = cli_err(&["train-probes", "--data-dir", data.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--num-classes", "3"]);
    assert!(e.contains("label 3, outside 0..3"), "{e}");
    // A class with a single example.
    let labels: Vec<i64> = npy::<i64>(data.join("labels.npy")).iter().enumerate().map(|(i, &l)| if l == 2 && i != 50 { 1 } else { l }).collect();
    musicgen_interp::store::write_npy(&data.join("labels.npy"), &Array1::from(labels)).unwrap();
    let e = cli_err(&["train-probes", "--data-dir", data.to_str().unwrap(), "--output-dir", out.to_str().unwrap(), "--num-classes", "4"]);
    assert!(e.contains("class 2 has 1 example"), "{e}");
}

#[test]
fn extract_train_evaluate_end_to_end_on_the_tiny_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, ext, probes) = (tmp.path().join("audio"), tmp.path().join("ext"), tmp.path().join("probes"));
    // Three classes of tones, four 11 s tracks each (one 10 s segment per track).
    for (c, (class, hz)) in [("low", 180.0f32), ("mid", 700.0), ("high", 2500.0)].into_iter().enumerate() {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for k in 0..4 {
            let spec = hound::WavSpec { channels: 1, sample_rate: 16000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
            let mut w = hound::WavWriter::create(data.join(class).join(format!("{c}_{k}.wav")), spec).unwrap();
            for i in 0..16000 * 11 {
                let t = i as f32 / 16000.0;
                w.write_sample(((std::f32::consts::TAU * hz * (1.0 + 0.05 * k as f32) * t).sin() * 12000.0) as i16).unwrap();
            }
            w.finalize().unwrap();
        }
    }
    let model = common::fixture("tiny");
    cli(&[
        "extract", "--model", model.to_str().unwrap(), "--data-dir", data.to_str().unwrap(), "--output-dir", ext.to_str().unwrap(),
        "--labels", "low=0,mid=1,high=2", "--steps", "4", "--reduction", "mean",
    ]);
    cli(&["train-probes", "--data-dir", ext.to_str().unwrap(), "--output-dir", probes.to_str().unwrap(), "--num-classes", "3"]);
    let layers = common::load("tiny").decoder.num_layers();
    assert_eq!(npy::<f32>(probes.join("mse_weights.npy")).shape(), &[layers, 3, 64]);
    let log = cli(&[
        "evaluate", "--data-dir", ext.to_str().unwrap(), "--weights-file", probes.join("mse_weights.npy").to_str().unwrap(),
        "--num-classes", "3", "--output-plot", probes.join("eval.png").to_str().unwrap(),
    ]);
    assert!(log.contains("best layer"), "{log}");
    assert!(probes.join("eval.png").is_file() && probes.join("mse_evaluation.csv").is_file());
}

#[test]
fn probe_pipeline_runs_end_to_end_and_reports_the_steering_effect() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let status = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo_dataset.py"))
        .arg(&data)
        .args(["--tracks", "3"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let out = tmp.path().join("run");
    let config = tmp.path().join("pipeline.yaml");
    let (judge, labels) = scores::sensitive_judge(tmp.path());
    std::fs::write(
        &config,
        format!(
            "model: {}\ndata_dir: {}\noutput: {}\nextract:\n  steps: 4\ntrain:\n  loss: mse\nsteer:\n  target_class: 2\n  layers: [0, 1]\n  strengths: [10.0]\n  steps: 12\n  prompts: [a, b, c, d]\n  judge:\n    settings: {{model: {}, labels: {}, sample_rate: 32000}}\n",
            common::fixture("tiny").display(),
            data.display(),
            out.display(),
            judge.display(),
            labels.display()
        ),
    )
    .unwrap();
    let log = cli(&["probe-pipeline", config.to_str().unwrap()]);
    assert!(log.contains("the steering probe itself reads class 2 (rock)") && log.contains("circular"), "{log}");
    assert!(log.contains("extract: 12 segments") && log.contains("evaluate: best layer"), "{log}");
    for f in ["extract/residuals_cond.npy", "probes/mse_weights.npy", "probes/mse_split.json", "probes/evaluation.png", "steer/steering_report.csv", "steer/steered_0.wav", "steer/plain_0.wav", "pipeline.resolved.yaml"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("steer/steering_report.json")).unwrap()).unwrap();
    // The judge's probability of the target (Rock music) on the saved clips, recomputed by
    // onnxruntime in Python from the WAVs.
    let judged = |stem: &str| -> f64 {
        let wavs: Vec<String> = (0..4).map(|c| out.join(format!("steer/{stem}_{c}.wav")).display().to_string()).collect();
        let o = Command::new(python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx/check_commands.py"))
            .args(["judge", "--judge", judge.to_str().unwrap(), "--labels", labels.to_str().unwrap(), "--label", "Rock music", "--sample-rate", "32000"])
            .args(&wavs)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["mean"].as_f64().unwrap()
    };
    let (plain, steered) = (judged("plain"), judged("steered"));
    // The test judge is calibrated on other clips: its probabilities of Rock here are tiny but
    // differ between the plain and the steered clips, so a swap of the two would show.
    let near = |a: f64, b: f64| (a - b).abs() <= 1e-4 * b.abs().max(1e-30);
    assert!(!near(plain, steered), "the judge cannot tell the clips apart: {plain} {steered}");
    for r in report.as_array().unwrap() {
        let (before, after) = (r["probe_target_share_before"].as_f64().unwrap(), r["probe_target_share_after"].as_f64().unwrap());
        // Strong steering along the probe's own direction moves its prediction to the target.
        assert!(after >= before && after >= 0.75, "{r}");
        let (jb, ja) = (r["judge_target_probability_before"].as_f64().unwrap(), r["judge_target_probability_after"].as_f64().unwrap());
        assert!(near(jb, plain) && near(ja, steered), "{r} vs onnxruntime {plain} {steered}");
    }
    assert!(log.contains("the judge's mean probability of rock: "), "{log}");
    // Unknown keys in the pipeline config name their line.
    std::fs::write(&config, "model: m\ndata_dir: d\noutput: o\nsteer:\n  target_class: 1\n  strenghts: [1]\n  prompts: [a]\n").unwrap();
    let e = cli_err(&["probe-pipeline", config.to_str().unwrap()]);
    assert!(e.contains("unknown field `strenghts`") && e.contains("line 6"), "{e}");
}

#[test]
fn example_pipeline_config_parses() {
    musicgen_interp::pipeline::PipelineConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/probe-pipeline.yaml")).unwrap();
}

#[test]
fn evaluate_refuses_a_split_written_for_other_weights() {
    // mse on cond, then ce on uncond, into one folder: each probe file keeps its own split, and a
    // split written for other weights is refused rather than used.
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("probes"));
    std::fs::create_dir_all(&data).unwrap();
    features(&data);
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    cli(&["train-probes", "--data-dir", d, "--output-dir", o, "--num-classes", "4", "--stream", "cond", "--seed", "1"]);
    cli(&["train-probes", "--data-dir", d, "--output-dir", o, "--num-classes", "4", "--loss-type", "ce", "--stream", "uncond", "--seed", "2"]);
    let mse_split: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("mse_split.json")).unwrap()).unwrap();
    assert_eq!((mse_split["stream"].as_str(), mse_split["loss"].as_str(), mse_split["seed"].as_u64()), (Some("cond"), Some("mse"), Some(1)));

    // The default split is the weights' own: the mse test metrics of training come back.
    let plot = tmp.path().join("plots/mse.png");
    std::fs::create_dir_all(plot.parent().unwrap()).unwrap();
    let mse = out.join("mse_weights.npy");
    cli(&["evaluate", "--data-dir", d, "--weights-file", mse.to_str().unwrap(), "--num-classes", "4", "--output-plot", plot.to_str().unwrap()]);
    // Outputs go beside the weights, not beside the plot.
    assert!(out.join("mse_evaluation.csv").is_file() && !plot.with_file_name("mse_evaluation.csv").exists());
    let metrics: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("mse_metrics.json")).unwrap()).unwrap();
    let csv = std::fs::read_to_string(out.join("mse_evaluation.csv")).unwrap();
    for (row, line) in metrics["layers"].as_array().unwrap().iter().zip(csv.lines().skip(1)) {
        let acc: f64 = line.split(',').nth(2).unwrap().parse().unwrap();
        assert!((acc - row["test_accuracy"].as_f64().unwrap()).abs() < 1e-6, "{line} vs {row}");
    }

    // The ce (uncond) split with the mse weights: refused, naming what the split was made for.
    let err = cli_err(&[
        "evaluate", "--data-dir", d, "--weights-file", mse.to_str().unwrap(), "--num-classes", "4",
        "--output-plot", plot.to_str().unwrap(), "--split", out.join("ce_split.json").to_str().unwrap(),
    ]);
    assert!(err.contains("written for other weights") && err.contains("loss ce, stream uncond"), "{err}");

    // A split from another dataset: refused too.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    features(&other);
    let labels: Array1<i64> = npy::<i64>(other.join("labels.npy")).into_dimensionality().unwrap();
    let mut flipped = labels.clone();
    flipped.swap(0, labels.len() - 1);
    musicgen_interp::store::write_npy(&other.join("labels.npy"), &flipped).unwrap();
    let err = cli_err(&[
        "evaluate", "--data-dir", other.to_str().unwrap(), "--weights-file", mse.to_str().unwrap(), "--num-classes", "4",
        "--output-plot", plot.to_str().unwrap(),
    ]);
    assert!(err.contains("made on other data"), "{err}");
    // No split at all: training's rule makes one, and evaluate says so.
    std::fs::remove_file(out.join("mse_split.json")).unwrap();
    let log = cli(&["evaluate", "--data-dir", d, "--weights-file", mse.to_str().unwrap(), "--num-classes", "4", "--output-plot", plot.to_str().unwrap()]);
    assert!(log.contains("made train-probes' split myself") && log.contains("saved as"), "{log}");
}

#[test]
fn evaluate_makes_the_split_for_weights_trained_elsewhere() {
    // Weights written by numpy (least squares on every sample, so not held out), with no split file:
    // evaluate makes training's split itself, says so, saves it, and its accuracies are numpy's on it.
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("elsewhere"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    features(&data);
    let make = r#"
import sys, numpy as np
data, out = sys.argv[1], sys.argv[2]
x = np.load(f"{data}/residuals_uncond.npy")[:, 1:, :].astype(np.float64)
y = np.load(f"{data}/labels.npy")
x = x / np.linalg.norm(x, axis=2, keepdims=True)
w = [np.linalg.lstsq(x[:, l, :], np.eye(4)[y], rcond=None)[0].T for l in range(x.shape[1])]
np.save(f"{out}/theirs.npy", np.array(w, dtype=np.float32))
"#;
    assert!(Command::new(python()).args(["-c", make, data.to_str().unwrap(), out.to_str().unwrap()]).status().unwrap().success());
    let weights = out.join("theirs.npy");
    let plot = out.join("eval.png");
    let log = cli(&[
        "evaluate", "--data-dir", data.to_str().unwrap(), "--weights-file", weights.to_str().unwrap(), "--num-classes", "4",
        "--output-plot", plot.to_str().unwrap(), "--residual-type", "unconditional",
    ]);
    assert!(log.contains("made train-probes' split myself: uncond stream") && log.contains("seed 42"), "{log}");
    let saved = out.join("theirs_split.json");
    assert!(log.contains(&format!("saved as {}", saved.display())), "{log}");
    let split: serde_json::Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!((split["stream"].as_str(), split["seed"].as_u64(), split["per_class"].as_u64()), (Some("uncond"), Some(42), Some(20)));
    // Training's rule on the same labels gives the same split.
    let labels: Vec<i64> = npy::<i64>(data.join("labels.npy")).iter().copied().collect();
    let rule = musicgen_interp::probe::split(&labels, 4, 0.15, 42, musicgen_interp::probe::Stream::Uncond).unwrap();
    let test: Vec<usize> = split["test"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    assert_eq!(test, rule.test);
    // numpy's accuracy per layer on the saved split's test rows.
    let check = r#"
import json, sys, numpy as np
data, out = sys.argv[1], sys.argv[2]
x = np.load(f"{data}/residuals_uncond.npy")[:, 1:, :].astype(np.float64)
y = np.load(f"{data}/labels.npy")
w = np.load(f"{out}/theirs.npy").astype(np.float64)
te = np.array(json.load(open(f"{out}/theirs_split.json"))["test"])
f = x[te] / np.linalg.norm(x[te], axis=2, keepdims=True)
print(json.dumps([float((np.argmax(f[:, l, :] @ w[l].T, axis=1) == y[te]).mean()) for l in range(w.shape[0])]))
"#;
    let o = Command::new(python()).args(["-c", check, data.to_str().unwrap(), out.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want: Vec<f64> = serde_json::from_slice(&o.stdout).unwrap();
    let csv = std::fs::read_to_string(out.join("theirs_evaluation.csv")).unwrap();
    let got: Vec<f64> = csv.lines().skip(1).map(|l| l.split(',').nth(2).unwrap().parse().unwrap()).collect();
    assert_eq!(got.len(), LAYERS);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-6, "evaluate {got:?} vs numpy {want:?}");
    }
    // The saved split belongs to the weights now: a second evaluation uses it and makes none.
    let again = cli(&[
        "evaluate", "--data-dir", data.to_str().unwrap(), "--weights-file", weights.to_str().unwrap(), "--num-classes", "4", "--output-plot", plot.to_str().unwrap(),
    ]);
    assert!(!again.contains("made train-probes' split"), "{again}");
    // An explicit --split that does not exist is still an error, not a made split.
    let err = cli_err(&[
        "evaluate", "--data-dir", data.to_str().unwrap(), "--weights-file", weights.to_str().unwrap(), "--num-classes", "4", "--output-plot", plot.to_str().unwrap(),
        "--split", out.join("nope.json").to_str().unwrap(),
    ]);
    assert!(err.contains("no split at"), "{err}");
}
