//! Residual extraction against transformers: the `last`, `mean` and `all` reductions of every hook
//! point (the embedding entry and each layer's output), conditional and unconditional rows, over the
//! same greedy generation (text prompt and audio prompt) as transformers' `generate()` with PyTorch
//! forward hooks, reduced there with numpy (onnx/reference_residuals.py). Through the library and
//! through `generate --save-residuals` as users run it; and DecoderLens' self-similarity against numpy's
//! from the reference residuals.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::{s, ArrayD, Axis, Ix3};

use common::{assert_close, fixture, load, npy, Tol};
use musicgen_interp::generate::{generate, GenerationRequest, SamplingConfig};
use musicgen_interp::hooks::{Reduction, ResidualCapture};

/// float32 residuals of a few layers: a few ulps of the stream's scale.
const TOL: Tol = Tol::new(1e-4, 1e-5);

fn reference(preset: &str) -> PathBuf {
    fixture(preset).join("reference/residuals")
}

struct Case {
    prompts: Vec<String>,
    steps: usize,
    dir: PathBuf,
}

fn case(preset: &str, name: &str) -> Case {
    let r = reference(preset);
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(r.join("cases.json")).unwrap()).unwrap();
    Case {
        prompts: serde_json::from_value(cases["prompts"].clone()).unwrap(),
        steps: cases["max_new_tokens"].as_u64().unwrap() as usize,
        dir: r.join(name),
    }
}

fn greedy() -> SamplingConfig {
    SamplingConfig { guidance_scale: 3.0, top_k: 1, temperature: 1.0, seed: 0 }
}

#[test]
fn every_reduction_matches_transformers_hooks() {
    for preset in common::PRESETS {
        let mut m = load(preset);
        for name in ["text", "audio"] {
            let c = case(preset, name);
            let audio_codes = (name == "audio").then(|| {
                let prompt = npy::<f32>(c.dir.join("prompt.npy")).into_dimensionality::<Ix3>().unwrap();
                m.encodec.encode(prompt.view()).unwrap()
            });
            let request = GenerationRequest {
                prompts: c.prompts.clone(),
                audio_codes,
                max_new_tokens: c.steps,
                sampling: greedy(),
                ..Default::default()
            };
            let want_codes = npy::<i64>(c.dir.join("codes.npy"));
            for (reduction, file) in [(Reduction::Last, "last"), (Reduction::Mean, "mean"), (Reduction::All, "all")] {
                let mut capture = ResidualCapture::new(m.decoder.num_layers(), reduction);
                let out = generate(&mut m, &request, &mut capture, |_, _| {}).unwrap();
                assert_eq!(out.codes.clone().into_dyn(), want_codes, "{preset} {name}: the generation itself differs");
                let got = capture.result().unwrap();
                let want = npy::<f32>(c.dir.join(format!("{file}.npy")));
                assert_close(&format!("{preset} {name} {file}"), &got, &want, TOL);
            }
        }
    }
}

fn write_wav(path: &Path, samples: &[f32], rate: u32) {
    let spec = hound::WavSpec { channels: 1, sample_rate: rate, bits_per_sample: 32, sample_format: hound::SampleFormat::Float };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    samples.iter().for_each(|&x| w.write_sample(x).unwrap());
    w.finalize().unwrap();
}

#[test]
fn generate_save_residuals_writes_transformers_rows_split_by_condition() {
    let preset = "tiny";
    let tmp = tempfile::tempdir().unwrap();
    let rate = load(preset).manifest().audio.sample_rate;
    for name in ["text", "audio"] {
        let c = case(preset, name);
        let batch = c.prompts.len();
        for reduction in ["last", "mean", "all"] {
            let dir = tmp.path().join(format!("{name}-{reduction}"));
            let steps = c.steps.to_string();
            let model = fixture(preset).display().to_string();
            let clip = dir.join("clip.wav").display().to_string();
            let saved = dir.join("residuals").display().to_string();
            std::fs::create_dir_all(&dir).unwrap();
            let mut args = vec!["--device", "cpu", "generate", "--model", &model, "--steps", &steps, "--top-k", "1", "--guidance-scale", "3"];
            for p in &c.prompts {
                args.extend(["--text", p.as_str()]);
            }
            args.extend(["--output", &clip, "--save-residuals", &saved, "--residual-reduction", reduction]);
            // The audio prompt as users give it: a WAV at the model's rate (32-bit float, exact).
            let wav = dir.join("prompt.wav").display().to_string();
            if name == "audio" {
                let prompt = npy::<f32>(c.dir.join("prompt.npy"));
                // The CLI continues one audio prompt for every text prompt: the reference's rows
                // differ, so the audio case uses its first row for both (checked below).
                let row: Vec<f32> = prompt.slice(s![0, 0, ..]).to_vec();
                write_wav(Path::new(&wav), &row, rate);
                args.extend(["--audio", &wav]);
            }
            let out = Command::new(env!("CARGO_BIN_EXE_musicgen-interp")).args(&args).output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            let want = npy::<f32>(c.dir.join(format!("{reduction}.npy")));
            let cond: ArrayD<f32> = npy(dir.join("residuals/residuals_cond.npy"));
            let uncond: ArrayD<f32> = npy(dir.join("residuals/residuals_uncond.npy"));
            // Rows of the reference that this run reproduces: all of them for text; the first
            // prompt's conditional and unconditional rows for audio (its prompt audio).
            let rows: Vec<usize> = if name == "text" { (0..batch).collect() } else { vec![0] };
            for &r in &rows {
                let what = format!("{name} {reduction} row {r}");
                let row = |a: &ArrayD<f32>, i: usize| a.index_axis(Axis(1), i).to_owned();
                assert_close(&format!("{what} cond"), &row(&cond, r), &row(&want, r), TOL);
                assert_close(&format!("{what} uncond"), &row(&uncond, r), &row(&want, batch + r), TOL);
            }
            let sidecar: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("residuals/residuals.json")).unwrap()).unwrap();
            let points: Vec<String> = serde_json::from_value(sidecar["points"].clone()).unwrap();
            assert_eq!(points.len(), want.shape()[0]);
            assert_eq!(points[0], "embed.hook_out", "{points:?}");
        }
    }
}

#[test]
fn decoder_lens_self_similarity_matches_numpy_over_the_reference_residuals() {
    use musicgen_interp::decoder_lens::{run, DecoderLensConfig};
    for preset in common::PRESETS {
        let c = case(preset, "text");
        let mut m = load(preset);
        let man = m.manifest().clone();
        // decoder-lens generates round(duration * frame_rate) + K - 1 steps: the reference's count.
        let duration = (c.steps + 1 - man.decoder.num_codebooks) as f64 / man.audio.frame_rate;
        let tmp = tempfile::tempdir().unwrap();
        let yaml = format!(
            "model: {}\nprompts: {}\nduration: {duration}\ntop_k: 1\nguidance_scale: 3.0\noutput: {}\n",
            fixture(preset).display(),
            serde_json::to_string(&c.prompts).unwrap(),
            tmp.path().join("lens").display()
        );
        let path = tmp.path().join("lens.yaml");
        std::fs::write(&path, yaml).unwrap();
        let config = DecoderLensConfig::load(&path).unwrap();
        let report = run(&mut m, None, &config, |_| {}).unwrap();
        let want = npy::<f32>(c.dir.join("self_similarity.npy"));
        // Cosines of float32 means: the off-diagonal entries carry the information (the diagonal is 1).
        assert_close(&format!("{preset} self-similarity"), &report.self_similarity, &want, Tol::new(1e-5, 0.0));
        let saved: ArrayD<f32> = npy(tmp.path().join("lens/self_similarity.npy"));
        assert_eq!(saved, report.self_similarity.into_dyn());
    }
}
