//! DecoderLens against PyTorch references (onnx/reference_decoder_lens.py), on both tiny configs:
//! early exit (library call and the `decoder-lens` plugin) equals a truncated transformers decoder at
//! every layer, and the text-encoder variant equals transformers conditioned on each T5 layer. The
//! command's measurements (self-similarity, NDCG) are checked against independent recomputation.
//! With no prompt, the command runs the seed's DecoderLens prompt (its full-depth clip is `generate`'s
//! clip of that text).

mod common;

use ndarray::Ix3;

use common::{fixture, load, npy};
use musicgen_interp::generate::{generate, generate_early_exit, GenerationRequest, SamplingConfig};
use musicgen_interp::hooks::NoHooks;
use musicgen_interp::plugin::MethodPlugin;

#[test]
fn early_exit_codes_match_a_truncated_transformers_decoder() {
    for preset in common::PRESETS {
        let r = fixture(preset).join("reference/decoder_lens");
        let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(r.join("cases.json")).unwrap()).unwrap();
        let prompts: Vec<String> = serde_json::from_value(cases["prompts"].clone()).unwrap();
        let steps = cases["steps"].as_u64().unwrap() as usize;
        let mut m = load(preset);
        let layers = m.decoder.num_layers();
        assert_eq!(cases["layers"].as_u64().unwrap() as usize, layers);
        let request = GenerationRequest {
            prompts,
            audio_codes: None,
            max_new_tokens: steps,
            sampling: SamplingConfig { guidance_scale: 3.0, top_k: 1, temperature: 1.0, seed: 0 },
            ..Default::default()
        };
        let mut distinct = std::collections::BTreeSet::new();
        for k in 1..=layers {
            let out = generate_early_exit(&mut m, &request, k, &mut NoHooks, |_, _| {}).unwrap();
            let want = npy::<i64>(r.join(format!("layer_{k}.npy"))).into_dimensionality::<Ix3>().unwrap();
            let differ = out.codes.iter().zip(want.iter()).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{preset} exit after {k}: {differ} of {} codes differ", want.len());
            // The same exit asked for by the decoder-lens plugin through the plugin ABI.
            let mut lens = MethodPlugin::load("decoder-lens", &format!("{{\"exit_after\": {k}}}")).unwrap();
            let via_plugin = generate(&mut m, &request, &mut lens, |_, _| {}).unwrap();
            assert_eq!(via_plugin.codes, out.codes, "{preset} exit after {k} through the plugin");
            distinct.insert(out.codes.iter().copied().collect::<Vec<_>>());
        }
        assert_eq!(distinct.len(), layers, "{preset}: every exit depth should give different music");
        assert!(generate_early_exit(&mut m, &request, layers + 1, &mut NoHooks, |_, _| {}).is_err());
        let mut past = MethodPlugin::load("decoder-lens", &format!("{{\"exit_after\": {}}}", layers + 1)).unwrap();
        let err = generate(&mut m, &request, &mut past, |_, _| {}).unwrap_err().to_string();
        assert!(err.contains(&format!("exit after {} layers", layers + 1)), "{err}");
    }
}

#[test]
fn text_layer_variant_matches_transformers_conditioned_on_each_t5_layer() {
    for preset in common::PRESETS {
        let r = fixture(preset).join("reference/decoder_lens");
        let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(r.join("cases.json")).unwrap()).unwrap();
        let prompts: Vec<String> = serde_json::from_value(cases["prompts"].clone()).unwrap();
        let steps = cases["steps"].as_u64().unwrap() as usize;
        let mut m = load(preset);
        let text_layers = m.manifest().text_encoder.num_layers;
        assert_eq!(cases["text_layers"].as_u64().unwrap() as usize, text_layers);
        let mut differing = 0;
        for j in 1..=text_layers {
            let request = GenerationRequest {
                prompts: prompts.clone(),
                max_new_tokens: steps,
                sampling: SamplingConfig { guidance_scale: 3.0, top_k: 1, temperature: 1.0, seed: 0 },
                text_layer: Some(j),
                ..Default::default()
            };
            let out = generate(&mut m, &request, &mut NoHooks, |_, _| {}).unwrap();
            let want = npy::<i64>(r.join(format!("text_layer_{j}.npy"))).into_dimensionality::<Ix3>().unwrap();
            let differ = out.codes.iter().zip(want.iter()).filter(|(a, b)| a != b).count();
            assert_eq!(differ, 0, "{preset} text layer {j}: {differ} of {} codes differ", want.len());
            if j < text_layers {
                let last = npy::<i64>(r.join(format!("text_layer_{text_layers}.npy"))).into_dimensionality::<Ix3>().unwrap();
                differing += usize::from(out.codes != last);
            }
        }
        assert!(differing > 0, "{preset}: conditioning on earlier text layers should change some music");
        let bad = GenerationRequest { prompts, max_new_tokens: 4, text_layer: Some(text_layers + 1), ..Default::default() };
        assert!(generate(&mut m, &bad, &mut NoHooks, |_, _| {}).unwrap_err().to_string().contains("text encoder layer"));
    }
}

#[test]
fn decoder_lens_command_writes_clips_self_similarity_and_ndcg() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_musicgen-interp")).args(["--device", "cpu"]).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let model = fixture("tiny2");
    let classifier = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/classifier");
    let out = tmp.path().join("lens");
    run(&[
        "decoder-lens", "--model", model.to_str().unwrap(), "--text", "lo-fi jazz", "--concept", "jazz", "--duration", "0.5", "--seed", "4",
        "--text-layers", "--judge-model", classifier.join("classifier.onnx").to_str().unwrap(),
        "--judge-labels", classifier.join("labels.csv").to_str().unwrap(), "--output-dir", out.to_str().unwrap(),
    ]);
    let m = load("tiny2");
    let layers = m.decoder.num_layers();
    let text_layers = m.manifest().text_encoder.num_layers;
    // 0-based, as the hook points: layer_{l} exits after blocks.{l}.
    for l in 0..layers {
        assert!(out.join(format!("layer_{l:02}.wav")).is_file(), "layer {l}");
    }
    assert!(!out.join(format!("layer_{layers:02}.wav")).exists());
    for j in 0..text_layers {
        assert!(out.join(format!("text_layer_{j:02}.wav")).is_file(), "text layer {j}");
    }
    // The deepest exit is the full model: the same codes and residuals as `generate` with the same seed.
    let codes = tmp.path().join("full.npy");
    let residuals = tmp.path().join("residuals");
    let steps = (0.5f64 * 50.0).round() as usize + 3;
    run(&[
        "generate", "--model", model.to_str().unwrap(), "--text", "lo-fi jazz", "--steps", &steps.to_string(), "--seed", "4",
        "--output", tmp.path().join("full.wav").to_str().unwrap(), "--save-codes", codes.to_str().unwrap(),
        "--save-residuals", residuals.to_str().unwrap(), "--residual-reduction", "mean",
    ]);
    assert_eq!(npy::<i64>(out.join(format!("codes_layer_{:02}.npy", layers - 1))), npy::<i64>(&codes));
    // Self-similarity: cosine between the time-averaged outputs of each layer (from generate's own capture).
    let cond = npy::<f32>(residuals.join("residuals_cond.npy")).into_dimensionality::<Ix3>().unwrap(); // [points, batch, d]
    let sim = npy::<f32>(out.join("self_similarity.npy")).into_dimensionality::<ndarray::Ix2>().unwrap();
    assert_eq!(sim.dim(), (layers, layers));
    for a in 0..layers {
        for b in 0..layers {
            let (x, y) = (cond.slice(ndarray::s![a + 1, 0, ..]), cond.slice(ndarray::s![b + 1, 0, ..]));
            let dot = |p: &ndarray::ArrayView1<f32>, q: &ndarray::ArrayView1<f32>| p.iter().zip(q.iter()).map(|(u, v)| u * v).sum::<f32>();
            let cos = dot(&x, &y) / (dot(&x, &x).sqrt() * dot(&y, &y).sqrt());
            assert!((sim[[a, b]] - cos).abs() < 1e-5, "similarity of layers {a}, {b}: {} vs {cos}", sim[[a, b]]);
        }
    }
    assert!(out.join("self_similarity.png").is_file() && out.join("ndcg.png").is_file());
    // NDCG: the judge's ranking of the clip's labels, recomputed here from the written WAV.
    let _rt = common::runtime(); // onnxruntime up before the judge joins it
    let config = musicgen_interp::judge::JudgeConfig::onnx(classifier.join("classifier.onnx"), classifier.join("labels.csv"), 16000);
    let mut judge = musicgen_interp::judge::Judge::load(&config, &["jazz"]).unwrap();
    let jazz = judge.labels().iter().position(|l| l == "Jazz").unwrap();
    let csv = std::fs::read_to_string(out.join("ndcg.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + layers + text_layers);
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let file = format!("{}_{:02}.wav", f[0], f[1].parse::<usize>().unwrap());
        let audio = musicgen_interp::audio::read(&out.join(&file)).unwrap();
        let wave = ndarray::Array2::from_shape_vec((1, audio.frames()), audio.to_mono()).unwrap();
        let probs = judge.probabilities(wave.view(), audio.sample_rate).unwrap();
        let rank = probs.row(0).iter().filter(|&&p| p > probs[[0, jazz]]).count();
        let want = 1.0 / ((rank + 2) as f64).log2();
        let got: f64 = f[4].parse().unwrap();
        assert!((got - want).abs() < 1e-5, "{file}: NDCG {got} but the judge ranks Jazz at {rank} (NDCG {want})");
    }
}

#[test]
fn decoder_lens_without_a_prompt_runs_the_seeds_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_musicgen-interp")).args(["--device", "cpu"]).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let model = fixture("tiny2");
    let out = tmp.path().join("lens");
    run(&["decoder-lens", "--model", model.to_str().unwrap(), "--duration", "0.3", "--seed", "4", "--output-dir", out.to_str().unwrap()]);
    // The seed's decoderlens_main.py prompt (SPEC), written out here.
    let seed_prompt = "Compose a happy rock piece with a guitar melody. Use a fast tempo.";
    assert_eq!(std::fs::read_to_string(out.join("prompts.csv")).unwrap(), format!("prompt,concept,text\n0,,\"{seed_prompt}\"\n"));
    // And it is what was generated: the full-depth exit is `generate` of that text with the same seed.
    let layers = load("tiny2").decoder.num_layers();
    let codes = tmp.path().join("full.npy");
    let steps = (0.3f64 * 50.0).round() as usize + 3;
    run(&[
        "generate", "--model", model.to_str().unwrap(), "--text", seed_prompt, "--steps", &steps.to_string(), "--seed", "4",
        "--output", tmp.path().join("full.wav").to_str().unwrap(), "--save-codes", codes.to_str().unwrap(),
    ]);
    assert_eq!(npy::<i64>(out.join(format!("codes_layer_{:02}.npy", layers - 1))), npy::<i64>(&codes));
    run(&[
        "generate", "--model", model.to_str().unwrap(), "--text", "lo-fi jazz", "--steps", &steps.to_string(), "--seed", "4",
        "--output", tmp.path().join("other.wav").to_str().unwrap(), "--save-codes", tmp.path().join("other.npy").to_str().unwrap(),
    ]);
    assert_ne!(npy::<i64>(tmp.path().join("other.npy")), npy::<i64>(&codes), "another text gives other codes here, so the check above can fail");
}
