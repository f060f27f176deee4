//! DecoderLens's early exit against a PyTorch truncated-decoder reference
//! (onnx/reference_decoder_lens.py): greedy codes equal at every exit layer, on both tiny configs.

mod common;

use ndarray::Ix3;

use common::{fixture, load, npy};
use musicgen_interp::generate::{generate_early_exit, GenerationRequest, SamplingConfig};
use musicgen_interp::hooks::NoHooks;

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
            distinct.insert(out.codes.iter().copied().collect::<Vec<_>>());
        }
        assert_eq!(distinct.len(), layers, "{preset}: every exit depth should give different music");
        assert!(generate_early_exit(&mut m, &request, layers + 1, &mut NoHooks, |_, _| {}).is_err());
    }
}

#[test]
fn decoder_lens_command_writes_one_clip_per_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_musicgen-interp")).args(["--device", "cpu"]).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let model = fixture("tiny2");
    let out = tmp.path().join("lens");
    run(&["decoder-lens", "--model", model.to_str().unwrap(), "--text", "lo-fi jazz", "--duration", "0.5", "--seed", "4", "--output-dir", out.to_str().unwrap()]);
    let layers = load("tiny2").decoder.num_layers();
    for k in 1..=layers {
        assert!(out.join(format!("layer_{k:02}.wav")).is_file(), "layer {k}");
    }
    // The deepest exit is the full model: the same codes as `generate` with the same seed and steps.
    let codes = tmp.path().join("full.npy");
    let steps = (0.5f64 * 50.0).round() as usize + 3;
    run(&[
        "generate", "--model", model.to_str().unwrap(), "--text", "lo-fi jazz", "--steps", &steps.to_string(), "--seed", "4",
        "--output", tmp.path().join("full.wav").to_str().unwrap(), "--save-codes", codes.to_str().unwrap(),
    ]);
    assert_eq!(npy::<i64>(out.join(format!("codes_layer_{layers:02}.npy"))), npy::<i64>(&codes));
}
