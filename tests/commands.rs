//! The commands users run, run as they run them (the built binary, `--device cpu`), each through a
//! full normal run with its outputs checked: exit status, files and their shapes, and at least one
//! number against an independent computation (transformers or numpy, onnx/check_commands.py and
//! onnx/check_interchange_scores.py):
//! - `inspect` (the README's main job): every saved hook point and the logits, and the printed norms
//!   and greedy codes, against transformers' decoder on the start token with guidance rows;
//! - `compare`: the printed per-layer residual cosine and next-token agreement of the int8 bundle
//!   against fp32, recomputed with transformers on both checkpoints;
//! - `intervene --config`: a YAML run from another working folder; means, baselines, results and
//!   their saved probabilities, summary, plots, extremes; every score row against numpy;
//! - `decoder-lens --config`: clips per prompt and layer (and text layer), codes per batch, NDCG
//!   tables, self-similarity recomputed in numpy from the saved residual means.

mod common;
mod scores;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::{Array1, Array2, ArrayD, Ix2};

use common::{assert_close, files_under, fixture, npy, Tol};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn classifier() -> PathBuf {
    root().join("tests/data/classifier")
}

/// The binary in `dir` with `args` after `--device cpu`; asserts success.
fn cli_in(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp")).current_dir(dir).args(["--device", "cpu"]).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "musicgen-interp {args:?} failed ({}): {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

/// `onnx/check_commands.py` with `args`; asserts success.
fn check_py(args: &[&str]) {
    let out = Command::new(scores::python()).arg(root().join("onnx/check_commands.py")).args(args).output().unwrap();
    assert!(out.status.success(), "check_commands.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The numbers after the first field of the stdout line starting with `prefix`.
fn numbers_after(text: &str, prefix: &str) -> Vec<f64> {
    let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line {prefix:?} in:\n{text}"));
    line[prefix.len()..].split_whitespace().map(|x| x.parse().unwrap_or_else(|_| panic!("{line:?}"))).collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn f32s(v: impl IntoIterator<Item = f64>) -> Array1<f32> {
    v.into_iter().map(|x| x as f32).collect()
}

#[test]
fn inspect_saves_every_hook_point_and_prints_what_transformers_computes() {
    let tmp = tempfile::tempdir().unwrap();
    let text = "90s rock song with loud guitars";
    let save = tmp.path().join("acts");
    let model = fixture("tiny");
    let out = cli_in(tmp.path(), &["inspect", "--model", model.to_str().unwrap(), "--text", text, "--save", "acts"]);
    let printed = stdout(&out);
    let m = common::load("tiny");
    let (layers, d, k, v) = (m.decoder.num_layers(), m.decoder.config.d_model, m.decoder.config.num_codebooks, m.manifest().decoder.vocab_size);

    // Files: every hook point of the model (embed, 5 per layer, final norm) and the logits.
    let mut want_files: Vec<String> = m.manifest().hook_points.iter().map(|p| format!("{p}.npy")).collect();
    want_files.push("logits.npy".into());
    want_files.sort();
    assert_eq!(want_files.len(), 5 * layers + 3);
    assert_eq!(files_under(&save), want_files);
    assert!(printed.contains(&format!("wrote {} arrays", want_files.len())), "{printed}");
    // Shapes: [cond + uncond rows, one position, d_model]; logits [rows, codebooks, vocabulary].
    for f in &want_files {
        let a: ArrayD<f32> = npy(save.join(f));
        let want: &[usize] = if f == "logits.npy" { &[2, k, v] } else { &[2, 1, d] };
        assert_eq!(a.shape(), want, "{f}");
    }

    // Independent: transformers on the bundle's checkpoint.
    let reference = tmp.path().join("reference");
    check_py(&["inspect", "--bundle", model.to_str().unwrap(), "--text", text, "--out", reference.to_str().unwrap()]);
    for l in 0..layers {
        let f = format!("blocks.{l}.hook_resid_post.npy");
        assert_close(&format!("inspect {f} vs transformers"), &npy::<f32>(save.join(&f)), &npy::<f32>(reference.join(&f)), 1e-4);
    }
    assert_close("inspect logits vs transformers", &npy::<f32>(save.join("logits.npy")), &npy::<f32>(reference.join("logits.npy")), 1e-4);
    let summary = json(&reference.join("summary.json"));
    // The printed norms (4 decimals) of the conditional and unconditional rows, layer by layer.
    for l in 0..layers {
        let got = numbers_after(&printed, &format!("blocks.{l}.hook_resid_post"));
        let want: Vec<f64> = serde_json::from_value(summary["norms"][l].clone()).unwrap();
        assert_close(&format!("printed |h| of layer {l} (cond, uncond)"), &f32s(got), &f32s(want), 1e-4);
    }
    let greedy: Vec<i64> = serde_json::from_value(summary["greedy"].clone()).unwrap();
    assert!(printed.contains(&format!("greedy next codes (conditional row): {greedy:?}")), "transformers' argmax {greedy:?}; printed:\n{printed}");
}

#[test]
fn compare_prints_the_fidelity_transformers_measures() {
    let tmp = tempfile::tempdir().unwrap();
    let (int8, fp32) = (fixture("tiny").with_file_name("tiny-int8"), fixture("tiny"));
    let text = "80s pop track with bassy drums and synth";
    let steps = 20;
    let out = cli_in(
        tmp.path(),
        &["compare", "--model", int8.to_str().unwrap(), "--reference", fp32.to_str().unwrap(), "--text", text, "--steps", &steps.to_string()],
    );
    let printed = stdout(&out);
    let layers = common::load("tiny").decoder.num_layers();
    let rows: Vec<Vec<f64>> = (0..layers).map(|l| numbers_after(&printed, &format!("blocks.{l}.hook_resid_post"))).collect();
    let column = |i: usize| -> Vec<f64> { rows.iter().map(|r| r[i]).collect() };
    let got = column(0);
    let summary = printed.lines().find(|l| l.starts_with("over ")).unwrap_or_else(|| panic!("{printed}"));
    // "over N positions: residual cosine min C, next-token agreement A%"
    let words: Vec<&str> = summary.split([' ', ',', '%']).filter(|w| !w.is_empty()).collect();
    let positions: usize = words[1].parse().unwrap();
    let min: f64 = words[6].parse().unwrap();
    let agreement: f64 = words[9].parse().unwrap();

    let reference = tmp.path().join("fidelity.json");
    check_py(&[
        "compare", "--candidate", int8.to_str().unwrap(), "--reference", fp32.to_str().unwrap(), "--text", text, "--steps", &steps.to_string(),
        "--out", reference.to_str().unwrap(),
    ]);
    let want = json(&reference);
    assert_eq!(positions, want["positions"].as_u64().unwrap() as usize, "positions");
    let cosine: Vec<f64> = serde_json::from_value(want["cosine"].clone()).unwrap();
    // Printed with 6 decimals; the int8 kernels' int16 activations are not the dequantized weights'
    // float arithmetic, which moves a cosine this near 1 by well under 1e-6.
    assert_close("printed per-layer residual cosine vs transformers", &f32s(got.clone()), &f32s(cosine.clone()), 1.5e-6);
    assert!((min - cosine.iter().copied().fold(f64::INFINITY, f64::min)).abs() <= 1.5e-6, "printed min {min} vs {cosine:?}");
    // Agreement over codebooks x positions: printed with 2 decimals of a percent; the int8 bundle
    // disagrees with fp32 on a few near-ties, and must disagree on the same ones as transformers.
    let share = want["agreement"].as_f64().unwrap();
    assert!((agreement - 100.0 * share).abs() <= 0.006, "printed agreement {agreement}% vs transformers' {}%", 100.0 * share);
    assert!(share < 1.0, "int8 agreed with fp32 everywhere: the comparison could not see a wrong count");
    // What each layer adds and the logits, where int8 shows (the residual cosine prints 1.000000).
    let deltas = printed.lines().find(|l| l.starts_with("what each layer adds")).unwrap_or_else(|| panic!("{printed}"));
    let numbers: Vec<f64> = deltas.split([' ', ',', ';']).filter_map(|w| w.parse().ok()).collect();
    let want_cos: Vec<f64> = serde_json::from_value(want["delta_cosine"].clone()).unwrap();
    let want_err: Vec<f64> = serde_json::from_value(want["delta_error"].clone()).unwrap();
    let want_logits = want["logits_error"].as_f64().unwrap();
    // Printed with 6 decimals; the relative errors are about 1e-2 and the int8 kernels' int16
    // activations move them by under 1e-6 from the dequantized weights' float arithmetic.
    const PRINTED: f32 = 2e-6;
    assert_close("printed per-layer delta cosine vs transformers", &f32s(column(1)), &f32s(want_cos.clone()), PRINTED);
    assert_close("printed per-layer delta error vs transformers", &f32s(column(2)), &f32s(want_err.clone()), PRINTED);
    assert_eq!(numbers.len(), 3, "{deltas}");
    let near = |a: f64, b: f64| (a - b).abs() <= PRINTED as f64;
    assert!(near(numbers[0], want_cos.iter().copied().fold(f64::INFINITY, f64::min)), "{deltas} vs {want_cos:?}");
    assert!(near(numbers[1], want_err.iter().copied().fold(0.0, f64::max)), "{deltas} vs {want_err:?}");
    assert!(near(numbers[2], want_logits), "{deltas}: logits relative error vs transformers' {want_logits}");
    assert!(want_err.iter().all(|&e| e > 1e-3) && want_logits > 1e-3, "int8 equal to fp32 in every layer: the measure could not see a wrong delta");
}

/// A YAML config in `dir` (relative output, so the run must resolve it against the config's folder).
fn write_config(dir: &Path, name: &str, body: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn intervene_with_a_config_writes_every_output_and_its_scores_equal_numpy() {
    let tmp = tempfile::tempdir().unwrap();
    let (judge, labels) = scores::sensitive_judge(tmp.path());
    let configs = tmp.path().join("configs");
    let config = write_config(
        &configs,
        "intervene.yaml",
        &format!(
            "model: {model}\nconcepts: [jazz, rock]\nn_prompts_per_concept: 2\nduration: 0.3\nseed: 3\nmodes: [adjust, replace]\n\
             sites: [blocks.0.attn, blocks.1.cross_attn, blocks.1.mlp]\nbatch_size: 4\nmeans_batch_size: 2\nsave_extremes: true\n\
             judge:\n  plugin: onnx-judge\n  settings:\n    model: {judge}\n    labels: {labels}\n    sample_rate: 32000\n\
             \x20 concepts:\n    jazz: [Jazz]\n    rock: [Rock music]\noutput: ../runs/intervene\n",
            model = fixture("tiny").display(),
            judge = judge.display(),
            labels = labels.display(),
        ),
    );
    // Run from another working folder: the output is relative to the config file.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = cli_in(&elsewhere, &["intervene", "--config", config.to_str().unwrap()]);
    assert!(stdout(&out).contains("wrote results/, summary.csv and plots/"), "{}", stdout(&out));
    assert!(files_under(&elsewhere).is_empty(), "nothing lands in the working folder: {:?}", files_under(&elsewhere));
    let run = tmp.path().join("runs/intervene");

    let m = common::load("tiny");
    let (layers, d) = (m.decoder.num_layers(), m.decoder.config.d_model);
    let steps = (0.3f64 * 50.0).round() as usize + m.decoder.config.num_codebooks - 1;
    let samples = (steps + 1 - m.decoder.config.num_codebooks) * m.manifest().audio.hop_length;
    let pairs = ["jazz__rock", "rock__jazz"];
    for f in ["intervene.resolved.yaml", "prompts.csv", "summary.csv", "plots/all_pairs_adjust.png", "plots/all_pairs_replace.png"] {
        assert!(run.join(f).is_file(), "{f}");
    }
    for c in ["jazz", "rock"] {
        // Means [layers, 3 components, positions, cond/uncond, d_model].
        let means: ArrayD<f32> = npy(run.join(format!("means/{c}.npy")));
        assert_eq!(means.shape(), &[layers, 3, steps, 2, d], "means/{c}.npy");
        assert_eq!(json(&run.join(format!("means/{c}.json")))["n_prompts"], 2);
        for i in 0..2 {
            let base = json(&run.join(format!("baseline/{c}/p{i:04}.json")));
            assert_eq!(base["probabilities"].as_array().unwrap().len(), 12, "baseline {c} {i}");
            let wav = musicgen_interp::audio::read(&run.join(format!("baseline/{c}/p{i:04}.wav"))).unwrap();
            assert_eq!((wav.frames(), wav.sample_rate), (samples, 32000), "baseline {c} {i} WAV");
        }
    }
    let prompts = std::fs::read_to_string(run.join("prompts.csv")).unwrap();
    assert_eq!(prompts.lines().count(), 1 + 2 * 2, "{prompts}");
    for pair in pairs {
        let rows = musicgen_interp::interchange::read_results(&run.join(format!("results/{pair}.csv"))).unwrap();
        assert_eq!(rows.len(), 2 * 2 * 3, "{pair}: prompts x modes x sites");
        let probs: ArrayD<f32> = npy(run.join(format!("results/{pair}_all_probs.npy")));
        assert_eq!(probs.shape(), &[rows.len(), 12], "{pair} all_probs");
        let kl: ArrayD<f64> = npy(run.join(format!("results/{pair}_kl_divs.npy")));
        assert_eq!(kl.shape(), &[rows.len(), 12], "{pair} kl_divs");
        for mode in ["adjust", "replace"] {
            assert!(run.join(format!("plots/{pair}_{mode}.png")).is_file(), "{pair} {mode} plot");
        }
        // Best and worst clip per prompt, each a clip of the run's length.
        let extremes = files_under(&run.join("extremes").join(pair));
        assert_eq!(extremes.len(), 2 * 2, "{extremes:?}");
        for i in 0..2 {
            for tag in ["best", "worst"] {
                let f = extremes.iter().find(|f| f.starts_with(&format!("p{i:04}_{tag}_"))).unwrap_or_else(|| panic!("{pair} {i} {tag}: {extremes:?}"));
                assert_eq!(musicgen_interp::audio::read(&run.join("extremes").join(pair).join(f)).unwrap().frames(), samples);
            }
        }
    }
    // The summary: one line per pair, mode and site, its mean the mean of the rows (n = 2 prompts).
    let summary = std::fs::read_to_string(run.join("summary.csv")).unwrap();
    assert_eq!(summary.lines().count(), 1 + 2 * 2 * 3);
    for line in summary.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let rows = musicgen_interp::interchange::read_results(&run.join(format!("results/{}__{}.csv", f[0], f[1]))).unwrap();
        let of: Vec<f64> = rows.iter().filter(|s| s.mode.name() == f[2] && s.site.to_string() == f[3]).map(|s| s.effectiveness).collect();
        assert_eq!((of.len(), f[6]), (2, "2"), "{line}");
        let mean: f64 = f[7].parse().unwrap();
        assert!((mean - of.iter().sum::<f64>() / 2.0).abs() <= 1e-6 * (1.0 + mean.abs()), "{line}: mean of {of:?}");
    }
    // Every score row against numpy, from the saved probabilities.
    assert_eq!(scores::check_interchange_scores(&run, &labels), 2 * 2 * 2 * 3);
}

#[test]
fn decoder_lens_with_a_config_writes_clips_tables_and_a_self_similarity_numpy_agrees_with() {
    let tmp = tempfile::tempdir().unwrap();
    let configs = tmp.path().join("configs");
    // tiny2: three decoder layers, three text-encoder layers; four prompts in batches of 3 and 1.
    let config = write_config(
        &configs,
        "decoder-lens.yaml",
        &format!(
            "model: {model}\nconcepts: [trumpet, jazz]\nn_prompts_per_concept: 2\nduration: 0.3\nseed: 2\ntext_layers: true\nbatch_size: 3\n\
             judge:\n  settings:\n    model: {judge}\n    labels: {labels}\n    sample_rate: 16000\noutput: ../runs/lens\n",
            model = fixture("tiny2").display(),
            judge = classifier().join("classifier.onnx").display(),
            labels = classifier().join("labels.csv").display(),
        ),
    );
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let run = cli_in(&elsewhere, &["decoder-lens", "--config", config.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("batch size 3 (given)"), "{}", String::from_utf8_lossy(&run.stderr));
    let printed = stdout(&run);
    assert!(files_under(&elsewhere).is_empty());
    let out = tmp.path().join("runs/lens");
    let m = common::load("tiny2");
    let (layers, d, k) = (m.decoder.num_layers(), m.decoder.config.d_model, m.decoder.config.num_codebooks);
    let text_layers = m.manifest().text_encoder.num_layers;
    let steps = (0.3f64 * 50.0).round() as usize + k - 1;
    let frames = steps + 1 - k;
    let n = 4;

    // Files: a clip per prompt and exit layer and per prompt and text layer, codes per layer and
    // batch, the tables and plots, and nothing else.
    let mut want: Vec<String> = vec![
        "decoder_lens.resolved.yaml", "prompts.csv", "self_similarity.npy", "self_similarity.png", "residual_means.npy", "ndcg.csv", "ndcg_by_layer.csv", "ndcg.png",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for p in 0..n {
        // 0-based, as the hook points: layer_00 exits after blocks.0
        want.extend((0..layers).map(|l| format!("prompt{p:03}_layer_{l:02}.wav")));
        want.extend((0..text_layers).map(|j| format!("prompt{p:03}_text_layer_{j:02}.wav")));
    }
    want.extend((0..layers).map(|l| format!("codes_layer_{l:02}.npy")));
    want.sort();
    assert_eq!(files_under(&out), want);
    // One codes file per exit with every prompt, whatever the batches (here 3 and 1).
    for l in 0..layers {
        let codes: ArrayD<i64> = npy(out.join(format!("codes_layer_{l:02}.npy")));
        assert_eq!(codes.shape(), &[n, k, frames], "layer {l}");
    }
    let wav = musicgen_interp::audio::read(&out.join("prompt003_text_layer_00.wav")).unwrap();
    assert_eq!(wav.frames(), frames * m.manifest().audio.hop_length);

    // NDCG: one row per prompt and variant; the by-layer table is their mean, and it is printed.
    let ndcg = std::fs::read_to_string(out.join("ndcg.csv")).unwrap();
    assert_eq!(ndcg.lines().count(), 1 + n * (layers + text_layers));
    let by_layer = std::fs::read_to_string(out.join("ndcg_by_layer.csv")).unwrap();
    assert_eq!(by_layer.lines().count(), 1 + layers + text_layers);
    let numbers = |variant: &str| -> Vec<usize> {
        by_layer.lines().skip(1).map(|l| l.split(',').collect::<Vec<_>>()).filter(|f| f[0] == variant).map(|f| f[1].parse().unwrap()).collect()
    };
    assert_eq!((numbers("layer"), numbers("text_layer")), ((0..layers).collect(), (0..text_layers).collect()), "0-based layers");
    for line in by_layer.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let of: Vec<f64> = ndcg.lines().skip(1).map(|l| l.split(',').collect::<Vec<_>>()).filter(|r| r[0] == f[0] && r[1] == f[1]).map(|r| r[4].parse().unwrap()).collect();
        assert_eq!(of.len(), n, "{line}");
        let mean: f64 = f[2].parse().unwrap();
        assert!((mean - of.iter().sum::<f64>() / n as f64).abs() <= 2e-6, "{line}: mean of {of:?}");
        if f[0] == "layer" {
            assert!(printed.contains(&format!("exit after layer {:>3}: NDCG {mean:.4}", f[1].parse::<usize>().unwrap())), "{printed}");
        }
    }

    // Self-similarity: numpy's cosine of the saved time-averaged layer outputs, averaged over prompts.
    let means: ArrayD<f32> = npy(out.join("residual_means.npy"));
    assert_eq!(means.shape(), &[layers, n, d]);
    let sim = npy::<f32>(out.join("self_similarity.npy")).into_dimensionality::<Ix2>().unwrap();
    assert_eq!(sim.dim(), (layers, layers));
    let numpy = tmp.path().join("numpy_sim.npy");
    check_py(&["self-similarity", "--means", out.join("residual_means.npy").to_str().unwrap(), "--out", numpy.to_str().unwrap()]);
    let want_sim = npy::<f32>(&numpy).into_dimensionality::<Ix2>().unwrap();
    assert_close("self-similarity vs numpy", &sim, &want_sim, Tol::new(1e-5, 0.0));
    // The layers are not all alike (the random tiny2's time-averaged outputs are close, cosine
    // ~0.9997): some off-diagonal entry is further from 1 than 10x the tolerance, else a defect that
    // gives 1 everywhere would pass.
    let off: Array2<f32> = &want_sim - &Array2::<f32>::eye(layers);
    assert!(off.iter().enumerate().any(|(i, x)| i % (layers + 1) != 0 && *x < 1.0 - 1e-4), "{want_sim:?}");

    // One by one, and with the batch size auto picks here: the same codes and residual means as in
    // batches of 3 and 1 (each prompt draws from its own random stream).
    for size in ["1", "auto"] {
        let again = tmp.path().join(format!("runs/lens_{size}"));
        let run = cli_in(&elsewhere, &[
            "decoder-lens", "--model", fixture("tiny2").to_str().unwrap(), "--concepts", "trumpet,jazz", "--n-prompts-per-concept", "2",
            "--duration", "0.3", "--seed", "2", "--batch-size", size, "--output-dir", again.to_str().unwrap(),
        ]);
        let said = String::from_utf8_lossy(&run.stderr).into_owned();
        stdout(&run);
        if size == "auto" {
            assert!(said.contains("batch size auto: 4 rows") && said.contains("limited by the work's size"), "{said}");
        }
        for l in 0..layers {
            let name = format!("codes_layer_{l:02}.npy");
            assert_eq!(npy::<i64>(again.join(&name)), npy::<i64>(out.join(&name)), "batch size {size}, {name}");
        }
        let again_means: ArrayD<f32> = npy(again.join("residual_means.npy"));
        assert_close(&format!("residual means, batch size {size} vs 3"), &again_means, &means, Tol::new(1e-5, 1e-6));
    }
}
