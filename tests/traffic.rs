//! What crosses between the host and the decoder's memory per step (issue: the device-resident
//! decoder). The decoder keeps its state where its graphs run and moves data only where someone asked
//! for it; on the CPU provider the same calls run and count the same bytes, so these budgets hold the
//! code path a GPU host runs:
//! - no hooks: the step's input ids and the `past_len` scalar of each graph call in, the logits out;
//! - a steering plugin at n layers: plus two copies of `[rows, 1, d_model]` f32 per steered layer
//!   (the residual out to the plugin, back after its edit);
//! - a recorder at one point: plus one copy out (it edits nothing, so nothing goes back);
//! - a component edit: the edit tensors in, only for the layers edited.
//! And the codes stay those of the plain forward (a hook that reads and does not edit changes
//! nothing, bit for bit).

mod common;

use common::fixture;
use musicgen_interp::generate::{generate, Generation, GenerationRequest, SamplingConfig};
use musicgen_interp::model::device::Traffic;
use musicgen_interp::plugin::MethodPlugin;
use musicgen_interp::{Component, ForwardContext, HookPoint, Hooks, LayerEdits, MusicGen, NoHooks, Recorder, Runtime, RuntimeOptions, Verify};

const STEPS: usize = 12;

/// The bundles: both float32 presets and their half-precision profiles on the CPU; on a CUDA host
/// (`MUSICGEN_INTERP_TEST_DEVICE=cuda`) only the half-precision ones, the only ones CUDA runs.
fn presets() -> Vec<&'static str> {
    let cuda = std::env::var("MUSICGEN_INTERP_TEST_DEVICE").is_ok_and(|d| d == "cuda");
    let mut p = vec!["tiny-fp16", "tiny2-fp16"];
    if !cuda {
        p.extend(common::PRESETS);
    }
    p
}

fn request(prompts: usize) -> GenerationRequest {
    GenerationRequest {
        prompts: (0..prompts).map(|i| format!("prompt number {i}")).collect(),
        max_new_tokens: STEPS,
        sampling: SamplingConfig { guidance_scale: 3.0, top_k: 1, temperature: 1.0, seed: 0 },
        ..Default::default()
    }
}

/// Both decoder forms a CPU host runs: the CPU copies (the runtime's kernels) and the plain graphs
/// (what a GPU host loads).
fn models(preset: &str) -> Vec<(&'static str, MusicGen)> {
    [("CPU copies", true), ("plain graphs", false)]
        .into_iter()
        .map(|(name, cpu_kernels)| {
            let rt = Runtime::init(&RuntimeOptions { cpu_kernels, ..common::runtime_options() }).expect("onnxruntime");
            (name, MusicGen::load(&rt, fixture(preset), Verify::Cached).expect("fixture bundle"))
        })
        .collect()
}

/// The bytes one step moves with no hooks: ids `[rows, K, 1]` i64 and one 8-byte `past_len` per
/// graph call (embedding + every layer) in; logits `[rows, K, 1, vocab]` f32 out.
fn plain_step(m: &MusicGen, rows: usize) -> Traffic {
    let c = &m.decoder.config;
    Traffic {
        to_device: (rows * c.num_codebooks * 8 + 8 * (1 + c.num_layers)) as u64,
        to_host: (rows * c.num_codebooks * c.vocab_size * 4) as u64,
    }
}

/// Every step after the prefill moved exactly `want`.
fn assert_steps(what: &str, g: &Generation, want: Traffic) {
    assert_eq!(g.traffic.len(), g.steps, "{what}: one count per forward");
    for (i, t) in g.traffic.iter().enumerate().skip(1) {
        assert_eq!(*t, want, "{what}: step {i} moved {t}, the budget is {want}");
    }
}

#[test]
fn without_hooks_a_step_moves_its_ids_in_and_its_logits_out() {
    for preset in presets() {
        for (form, mut m) in models(preset) {
            for prompts in [1, 3] {
                let g = generate(&mut m, &request(prompts), &mut NoHooks, |_, _| {}).unwrap();
                let want = plain_step(&m, 2 * prompts);
                assert_steps(&format!("{preset} {form}, {prompts} prompt(s)"), &g, want);
                // Independent of the cache's length: the last step moves what the first did.
                assert_eq!(g.traffic[1], g.traffic[g.steps - 1]);
                // Under 1 MB a step at musicgen-small's sizes too (2 rows, 4 codebooks, vocab 2048, 24
                // layers): the same formula.
                let small = (2 * 4 * 8 + 8 * 25) + 2 * 4 * 2048 * 4;
                assert!(small < 1_000_000, "{small}");
            }
        }
    }
}

#[test]
fn a_steering_plugin_adds_two_residual_copies_per_steered_layer() {
    for preset in presets() {
        // The float32 preset's probe directions (same width).
        let r = fixture(preset.trim_end_matches("-fp16")).join("reference/steering");
        for (form, mut m) in models(preset) {
            let c = m.decoder.config.clone();
            let plain = generate(&mut m, &request(1), &mut NoHooks, |_, _| {}).unwrap();
            let layers: Vec<usize> = (0..c.num_layers).step_by(2).collect();
            let settings = serde_json::json!({
                "weights": r.join("weights.npy"), "target_class": 1, "layers": layers,
                "strengths": vec![0.5; layers.len()], "period": 1, "offset": 0,
            });
            let mut plugin = MethodPlugin::load("steering", &settings.to_string()).unwrap();
            let g = generate(&mut m, &request(1), &mut plugin, |_, _| {}).unwrap();
            let rows = 2;
            let residual = (rows * c.d_model * 4) as u64;
            let mut want = plain_step(&m, rows);
            want.to_host += residual * layers.len() as u64;
            want.to_device += residual * layers.len() as u64;
            assert_steps(&format!("{preset} {form}, steering at layers {layers:?}"), &g, want);
            assert_ne!(g.codes, plain.codes, "{preset} {form}: steering changed nothing");
        }
    }
}

#[test]
fn a_recorder_adds_one_copy_out_and_changes_nothing() {
    for preset in presets() {
        for (form, mut m) in models(preset) {
            let c = m.decoder.config.clone();
            let plain = generate(&mut m, &request(1), &mut NoHooks, |_, _| {}).unwrap();
            for point in [HookPoint::ResidPost(c.num_layers - 1), HookPoint::Component(0, Component::CrossAttn), HookPoint::LnFinal] {
                let mut rec = Recorder::points([point]);
                let g = generate(&mut m, &request(1), &mut rec, |_, _| {}).unwrap();
                let mut want = plain_step(&m, 2);
                want.to_host += (2 * c.d_model * 4) as u64;
                assert_steps(&format!("{preset} {form}, recorder at {point}"), &g, want);
                assert_eq!(g.codes, plain.codes, "{preset} {form}: recording {point} changed the codes");
                assert_eq!(rec.records.len(), g.steps, "{preset} {form}: one record per forward at {point}");
            }
        }
    }
}

/// Adds to one layer's MLP output on the conditional rows: its edit goes to the device, the other
/// layers read the state's zeros.
struct AddAtLayer(usize);

impl Hooks for AddAtLayer {
    fn wants(&self, _point: &HookPoint) -> bool {
        false
    }
    fn wants_residual(&self, _point: &HookPoint) -> bool {
        false
    }
    fn edit_components(&mut self, ctx: &ForwardContext, layer: usize, edits: &mut LayerEdits) -> musicgen_interp::Result<()> {
        if layer == self.0 {
            let rows = ctx.conditional_rows.clone();
            // Not a constant: the final LayerNorm would remove a shift of every feature alike.
            let mut add = edits.add(Component::Mlp);
            for ((_, _, j), x) in add.slice_mut(ndarray::s![rows, .., ..]).indexed_iter_mut() {
                *x = (j % 5) as f32 - 2.0;
            }
        }
        Ok(())
    }
}

#[test]
fn a_component_edit_sends_its_tensor_for_the_edited_layer_only() {
    for preset in presets() {
        for (form, mut m) in models(preset) {
            let c = m.decoder.config.clone();
            let plain = generate(&mut m, &request(1), &mut NoHooks, |_, _| {}).unwrap();
            let g = generate(&mut m, &request(1), &mut AddAtLayer(c.num_layers - 1), |_, _| {}).unwrap();
            let mut want = plain_step(&m, 2);
            want.to_device += (2 * c.d_model * 4) as u64;
            assert_steps(&format!("{preset} {form}, an MLP edit at the last layer"), &g, want);
            assert_ne!(g.codes, plain.codes, "{preset} {form}: the edit changed nothing");
        }
    }
}

/// Reading every hook point copies the whole residual stream out at every layer and never back:
/// the codes are the plain forward's, bit for bit.
#[test]
fn reading_every_point_leaves_the_residual_stream_bit_identical() {
    for preset in presets() {
        for (form, mut m) in models(preset) {
            let mut all = Recorder::all();
            let g = generate(&mut m, &request(2), &mut all, |_, _| {}).unwrap();
            let plain = generate(&mut m, &request(2), &mut NoHooks, |_, _| {}).unwrap();
            assert_eq!(g.codes, plain.codes, "{preset} {form}: recording every point changed the codes");
        }
    }
}

/// `info --placement` reads onnxruntime's own per-node profile after a short generation: every
/// decoder graph is listed with its nodes by provider (all on the CPU here; on a GPU host the same
/// report fails the command for any node left on the CPU provider).
#[test]
fn info_placement_lists_every_decoder_graph_by_provider() {
    let bin = env!("CARGO_BIN_EXE_musicgen-interp");
    let tiny = fixture("tiny");
    for (flags, layer_file) in [(vec![], "decoder_layer_0.cpu.onnx"), (vec!["--plain-graphs"], "decoder_layer_0.onnx")] {
        let out = std::process::Command::new(bin).args(["info", "--device", "cpu", "--placement", "--model", tiny.to_str().unwrap()]).args(&flags).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        for graph in ["cross_kv.onnx", "decoder_embed.onnx", layer_file] {
            let line = text.lines().find(|l| l.trim_start().starts_with(graph)).unwrap_or_else(|| panic!("{graph} not listed:\n{text}"));
            let nodes: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            assert!(nodes > 0 && line.contains(&format!("{nodes} on CPUExecutionProvider")), "{line}");
        }
    }
}
