//! The seed's judge, PaSST (random weights, `onnx/export_passt.py` into tests/data/passt), through the
//! `onnx-judge` plugin: the judge folder alone gives its settings (32 kHz, softmax over the 527
//! logits, the clip lengths it takes), the default concept map gives the seed's AudioSet ids, its
//! probabilities equal PyTorch PaSST's softmax, and an `intervene` run on the tiny bundle judged by
//! it completes, with every saved clip judged again in Python (PyTorch and onnxruntime).

mod common;
mod scores;

use std::path::{Path, PathBuf};

use ndarray::{Array2, Axis, Ix2};

use common::{fixture, npy};
use musicgen_interp::judge::{Judge, JudgeConfig};

fn passt() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/passt");
    assert!(
        dir.join("classifier.onnx").is_file() && dir.join("classifier.json").is_file(),
        "test fixture {} is missing: run `bash scripts/test.sh` (or `.venv/bin/python onnx/export_passt.py --random-weights --seed 0 --out tests/data/passt`)",
        dir.display()
    );
    dir
}

/// The `onnx-judge` plugin over the PaSST folder with `settings` added to `model`.
fn config(settings: serde_json::Value) -> JudgeConfig {
    let mut j = JudgeConfig::onnx(passt(), PathBuf::new(), 0);
    let mut s = serde_json::json!({"model": passt()});
    s.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
    j.settings = s;
    j
}

fn softmax(logits: &Array2<f32>) -> Array2<f64> {
    let mut p = logits.mapv(|x| x as f64);
    for mut row in p.axis_iter_mut(Axis(0)) {
        let max = row.fold(f64::NEG_INFINITY, |m, &x| m.max(x));
        row.mapv_inplace(|x| (x - max).exp());
        let total = row.sum();
        row.mapv_inplace(|x| x / total);
    }
    p
}

#[test]
fn passt_judge_equals_pytorch_and_maps_the_seeds_class_ids() {
    let _rt = common::runtime(); // onnxruntime up before the judge joins it
    let all = ["guitar", "piano", "trumpet", "violin", "classical", "pop", "jazz", "rock", "electronic", "hiphop"];
    // The folder alone: no label map, no sample rate in the settings; the default concept map.
    let mut judge = Judge::load(&config(serde_json::json!({})), &all).expect("the PaSST judge");
    assert_eq!(judge.labels().len(), 527);
    let ids: Vec<usize> = all.iter().map(|c| judge.concept_labels(if *c == "hiphop" { "hip-hop" } else { c })[0]).collect();
    assert_eq!(ids, [140, 153, 187, 191, 237, 216, 235, 219, 245, 217], "the seed's PaSST class ids");

    // Three 1 s clips at 32 kHz against PyTorch's logits (export_passt.py saved them). The graph's
    // logits are within 1e-4 of PyTorch's (onnx/tests/test_passt.py), so each probability is within a
    // factor exp(+-2e-4) of PyTorch's softmax: 2e-4 relative.
    let x = npy::<f32>(passt().join("reference_input.npy")).into_dimensionality::<Ix2>().unwrap();
    let want = softmax(&npy::<f32>(passt().join("reference_logits.npy")).into_dimensionality::<Ix2>().unwrap());
    let got = judge.probabilities(x.view(), 32000).unwrap();
    let rel = got.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).abs() / w).fold(0.0, f64::max);
    eprintln!("PaSST judge vs PyTorch softmax: max relative difference {rel:.2e}");
    assert!(rel <= 2e-4, "max relative difference {rel:e}");
    // The clips differ: the test could see a judge that ignores its input.
    let spread = (0..527).map(|k| (got[[0, k]] - got[[1, k]]).abs() as f64 / want[[0, k]]).fold(0.0, f64::max);
    assert!(spread > 1e-2, "clips judged alike: {spread:e}");
    // A clip at 16 kHz is resampled to the judge's 32 kHz first: same length in seconds, a distribution.
    let half: Array2<f32> = x.slice(ndarray::s![.., ..;2]).to_owned();
    let p = judge.probabilities(half.view(), 16000).unwrap();
    assert!(p.rows().into_iter().all(|r| (r.sum() - 1.0).abs() < 1e-4));

    // Clip lengths outside the model's (its time embedding holds 99 patches; one patch is 16 frames).
    for n in [4800usize, 321_601] {
        let err = judge.probabilities(Array2::<f32>::zeros((1, n)).view(), 32000).unwrap_err().to_string();
        assert!(err.contains(&format!("a clip of {n} samples")) && err.contains("4801..=321600 samples"), "{err}");
    }
    // Settings that contradict the folder's metadata, and a label map of another size.
    let err = Judge::load(&config(serde_json::json!({"sample_rate": 16000})), &["jazz"]).err().unwrap().to_string();
    assert!(err.contains("sample_rate is 16000 in the settings but 32000"), "{err}");
    let err = Judge::load(&config(serde_json::json!({"activation": "sigmoid"})), &["jazz"]).err().unwrap().to_string();
    assert!(err.contains("activation is Sigmoid in the settings but Softmax"), "{err}");
    let twelve = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/classifier/labels.csv");
    let mut twelve = Judge::load(&config(serde_json::json!({"labels": twelve})), &["jazz"]).unwrap();
    let err = twelve.probabilities(x.view(), 32000).unwrap_err().to_string();
    assert!(err.contains("gives 527 classes but the label map names 12"), "{err}");
    // Explicit indices in a concept map.
    let mut c = config(serde_json::json!({}));
    c.concepts = serde_yaml::from_str("jazz: [235, 236]\nhiphop: [217]").unwrap();
    let judge = Judge::load(&c, &["jazz", "hip-hop"]).unwrap();
    assert_eq!((judge.concept_labels("jazz"), judge.concept_labels("hip-hop")), (&[235, 236][..], &[217][..]));
}

#[test]
fn intervene_judged_by_passt_completes_and_its_probabilities_are_pytorchs() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("intervene-passt.yaml");
    std::fs::write(
        &config,
        format!(
            "model: {model}\nconcepts: [guitar, piano]\nn_prompts_per_concept: 1\nduration: 0.3\nseed: 1\nmodes: [adjust]\n\
             sites: [blocks.0.mlp, blocks.1.cross_attn]\nsave_extremes: true\njudge:\n  settings:\n    model: {judge}\noutput: run\n",
            model = fixture("tiny").display(),
            judge = passt().display(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_musicgen-interp"))
        .args(["--device", "cpu", "intervene", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("panicked"), "intervene failed ({}): {stderr}", out.status);
    let run = tmp.path().join("run");
    for f in ["summary.csv", "prompts.csv", "plots/all_pairs_adjust.png", "intervene.resolved.yaml"] {
        assert!(run.join(f).is_file(), "{f}");
    }
    for pair in ["guitar__piano", "piano__guitar"] {
        let rows = musicgen_interp::interchange::read_results(&run.join(format!("results/{pair}.csv"))).unwrap();
        assert_eq!(rows.len(), 2, "{pair}: 1 prompt x 1 mode x 2 sites");
        assert!(rows.iter().all(|r| r.effectiveness.is_finite()), "{pair}");
        let probs: ndarray::ArrayD<f32> = npy(run.join(format!("results/{pair}_all_probs.npy")));
        assert_eq!(probs.shape(), &[2, 527], "{pair}");
    }

    // Every clip kept as audio, judged again in Python: the baselines and the extremes (their
    // probabilities are the baseline JSON and the all_probs row, here written out as JSON too).
    let mut args: Vec<PathBuf> = Vec::new();
    for c in ["guitar", "piano"] {
        args.push(run.join(format!("baseline/{c}/p0000.wav")));
        args.push(run.join(format!("baseline/{c}/p0000.json")));
    }
    for pair in ["guitar__piano", "piano__guitar"] {
        let rows = musicgen_interp::interchange::read_results(&run.join(format!("results/{pair}.csv"))).unwrap();
        let probs: Array2<f32> = npy::<f32>(run.join(format!("results/{pair}_all_probs.npy"))).into_dimensionality().unwrap();
        for entry in std::fs::read_dir(run.join("extremes").join(pair)).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let row = rows.iter().position(|r| name.ends_with(&format!("_{}_{}.wav", r.mode.name(), r.site))).unwrap_or_else(|| panic!("{name}"));
            let json = tmp.path().join(format!("{pair}_{name}.json"));
            std::fs::write(&json, serde_json::json!({"probabilities": probs.row(row).to_vec()}).to_string()).unwrap();
            args.push(entry.path());
            args.push(json);
        }
    }
    assert_eq!(args.len(), 2 * (2 + 2 * 2), "2 baselines and a best and worst clip per pair");
    let csv = tmp.path().join("clips.csv");
    let out = std::process::Command::new(scores::python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx/check_passt_judge.py"))
        .args(["--judge".as_ref(), passt().as_os_str(), "--out".as_ref(), csv.as_os_str()])
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "check_passt_judge.py: {}", String::from_utf8_lossy(&out.stderr));
    // PyTorch: 2e-4 relative, as above (the graph's logits within 1e-4 of PyTorch's). onnxruntime in
    // Python runs the same graph on the same f32 samples: 1e-6 absolute (the host's f64 softmax
    // rounded to f32, a probability below 1 moves by ~6e-8).
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut checked = 0;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (torch, onnxruntime, top): (f64, f64, f64) = (f[1].parse().unwrap(), f[2].parse().unwrap(), f[3].parse().unwrap());
        eprintln!("{}: vs PyTorch {torch:.2e} relative, vs onnxruntime {onnxruntime:.2e}", f[0]);
        assert!(torch <= 2e-4 && onnxruntime <= 1e-6 && top > 0.0, "{line}");
        checked += 1;
    }
    assert_eq!(checked, 6);
}

/// On the command line a judge folder stands alone: `--judge-model DIR` without `--judge-labels` or
/// `--judge-sample-rate` leaves both to the folder's metadata (PaSST: 32 kHz, index-only labels), and
/// the two flags are refused without a model.
#[test]
fn a_judge_folder_needs_no_label_or_rate_flags() {
    let bin = env!("CARGO_BIN_EXE_musicgen-interp");
    let tiny = fixture("tiny");
    let base = ["--dry-run", "intervene", "--model", tiny.to_str().unwrap(), "--concepts", "guitar,piano", "--output-dir", "unused"];
    let out = std::process::Command::new(bin).args(base).args(["--judge-model", passt().to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\"model\"") && !text.contains("\"labels\"") && !text.contains("\"sample_rate\""), "{text}");
    let out = std::process::Command::new(bin).args(base).args(["--judge-labels", "labels.csv"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--judge-model"), "{err}");
}

/// A duration the judge cannot score is refused before anything is generated: a 12 s clip is longer
/// than PaSST's time embedding takes (about 10.05 s), so `intervene` stops at once with the judge's
/// accepted lengths, and no means or parts were written.
#[test]
fn a_clip_length_the_judge_refuses_fails_before_generating() {
    let bin = env!("CARGO_BIN_EXE_musicgen-interp");
    let out_dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin)
        .args(["intervene", "--model", fixture("tiny").to_str().unwrap(), "--concepts", "guitar,piano", "--n-prompts-per-concept", "1"])
        .args(["--duration", "12", "--judge-model", passt().to_str().unwrap(), "--output-dir", out_dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 12 s run judged by PaSST must fail: {err}");
    assert!(err.contains("the judge cannot score this run's clips (12.00 s; nothing was generated)") && err.contains("the classifier takes"), "{err}");
    let written: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!written.iter().any(|n| n == "means" || n == "parts"), "generated before refusing: {written:?}");
    // DecoderLens checks the same before its first clip.
    let out = std::process::Command::new(bin)
        .args(["decoder-lens", "--model", fixture("tiny").to_str().unwrap(), "--text", "jazz", "--concept", "jazz", "--duration", "12"])
        .args(["--judge-model", passt().to_str().unwrap(), "--output-dir", out_dir.path().join("lens").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("the judge cannot score this run's clips (12.00 s; nothing was generated)"), "{err}");
    assert!(!out_dir.path().join("lens/decoder_lens.resolved.yaml").exists(), "the run started before refusing");
}
