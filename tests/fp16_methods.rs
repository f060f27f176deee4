//! The methods on the half-precision profile (`export.py --precision fp16`, the GPU bundles) against
//! PyTorch forward-hook references computed by transformers in float16 on the same rounded weights
//! (`onnx/reference_steering.py`, `onnx/reference_decoder_lens.py` with the bundle's dtype): steered
//! generations (the built-in steering plugin) and DecoderLens's early exits. Greedy codes under
//! float16 are compared position by position: both sides round every activation to float16 but sum
//! in different orders, so a near-tie may go the other way and change what follows. Agreement, not
//! equality, is what float16 can promise; each method must also still do what it does (steering
//! moves the codes, every exit depth gives different music).

mod common;

use std::path::Path;

use common::{fixture, load, npy};
use ndarray::{Array3, Ix3};
use musicgen_interp::generate::{generate, generate_early_exit, GenerationRequest, SamplingConfig};
use musicgen_interp::plugin::MethodPlugin;
use musicgen_interp::NoHooks;

const PRESETS: [&str; 2] = ["tiny-fp16", "tiny2-fp16"];

/// Measured on tiny-fp16 and tiny2-fp16 (27 frames x 4 codebooks x 2 rows per case): steering
/// 98.6-100 %, early exits 98.6-100 % (unsteered 98.6 %, 100 %); a steering run with the wrong
/// direction or an exit at the wrong depth agrees on a fraction of that (steering moves 41-100 % of
/// the codes). The same floor as greedy generation in tests/generate.rs.
const FP16_AGREEMENT: f64 = 0.95;

fn cases(r: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(r.join("cases.json")).unwrap()).unwrap()
}

fn request(cases: &serde_json::Value) -> GenerationRequest {
    GenerationRequest {
        prompts: serde_json::from_value(cases["prompts"].clone()).unwrap(),
        max_new_tokens: cases["steps"].as_u64().unwrap() as usize,
        sampling: SamplingConfig { guidance_scale: 3.0, top_k: 1, temperature: 1.0, seed: 0 },
        ..Default::default()
    }
}

/// The share of codes equal to the reference, printed and held to [`FP16_AGREEMENT`].
fn agree(what: &str, codes: &Array3<i64>, want: &Array3<i64>) -> f64 {
    assert_eq!(codes.shape(), want.shape(), "{what}");
    let same = codes.iter().zip(want.iter()).filter(|(a, b)| a == b).count();
    let agreement = same as f64 / want.len() as f64;
    eprintln!("{what}: {same} of {} codes equal to transformers float16 ({:.1}%)", want.len(), 100.0 * agreement);
    assert!(agreement >= FP16_AGREEMENT, "{what}: agreement {agreement:.3} under {FP16_AGREEMENT}");
    agreement
}

#[test]
fn steering_on_the_fp16_profile_agrees_with_pytorch_hooks_in_float16() {
    for preset in PRESETS {
        let r = fixture(preset).join("reference/steering");
        let cases = cases(&r);
        let request = request(&cases);
        let mut m = load(preset);
        let plain = generate(&mut m, &request, &mut NoHooks, |_, _| {}).unwrap().codes;
        agree(&format!("{preset} unsteered"), &plain, &npy::<i64>(r.join("plain_codes.npy")).into_dimensionality::<Ix3>().unwrap());
        for (name, case) in cases["cases"].as_object().unwrap() {
            let settings = serde_json::json!({
                "weights": r.join("weights.npy"), "target_class": case["target_class"], "layers": case["layers"],
                "strengths": case["strengths"], "period": case["period"], "offset": case["offset"],
            });
            let mut plugin = MethodPlugin::load("steering", &settings.to_string()).unwrap();
            let out = generate(&mut m, &request, &mut plugin, |_, _| {}).unwrap();
            let want = npy::<i64>(r.join(name).join("codes.npy")).into_dimensionality::<Ix3>().unwrap();
            agree(&format!("{preset} steering {name}"), &out.codes, &want);
            assert_ne!(out.codes, plain, "{preset} {name}: steering changed nothing");
        }
    }
}

#[test]
fn early_exits_on_the_fp16_profile_agree_with_a_truncated_transformers_decoder_in_float16() {
    for preset in PRESETS {
        let r = fixture(preset).join("reference/decoder_lens");
        let cases = cases(&r);
        assert_eq!(cases["dtype"], "float16", "{preset}: the reference must compute in float16");
        let request = request(&cases);
        let mut m = load(preset);
        let layers = m.decoder.num_layers();
        let mut distinct = std::collections::BTreeSet::new();
        for k in 1..=layers {
            let out = generate_early_exit(&mut m, &request, k, &mut NoHooks, |_, _| {}).unwrap();
            let want = npy::<i64>(r.join(format!("layer_{k}.npy"))).into_dimensionality::<Ix3>().unwrap();
            agree(&format!("{preset} exit after {k} of {layers}"), &out.codes, &want);
            distinct.insert(out.codes.iter().copied().collect::<Vec<_>>());
        }
        assert_eq!(distinct.len(), layers, "{preset}: every exit depth should give different music");
    }
}
