//! Steer a generation with a closure: add a direction to one layer's residual stream.
//!
//!     cargo run --release --example steer_with_a_closure -- [BUNDLE] [STRENGTH]
//!
//! BUNDLE defaults to `tests/data/tiny`, STRENGTH (the steering vector's length as a multiple of
//! the norm of the layer's mean residual) to 1. The direction is a difference of means (the mean residual
//! of one prompt minus that of another, at the steered layer); the closure adds it, scaled, to the
//! conditional rows only, at every position of every forward. The plain and the steered run use the
//! same seed, so what differs between them is the steering, not sampling noise. The example exits
//! non-zero if the steering changed nothing, which makes it a smoke test as well.

use std::error::Error;

use ndarray::{concatenate, s, Array1, Array3, ArrayViewMut3, Axis};

use musicgen_interp::generate::{generate, GenerationRequest, SamplingConfig};
use musicgen_interp::hooks::{FnHooks, Reduction, ResidualCapture};
use musicgen_interp::{ForwardContext, HookPoint, Hooks, LayerEdits, MusicGen, NoHooks, Recorder, Runtime, RuntimeOptions, Verify};

/// The steering vector's length as a multiple of the norm of the steered layer's mean residual
/// (the second argument overrides it).
const STRENGTH: f32 = 1.0;
const PROMPT: &str = "calm acoustic guitar";
const STEPS: usize = 24;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let bundle = args.next().unwrap_or_else(|| "tests/data/tiny".into());
    let strength: f32 = match args.next() {
        Some(s) => s.parse().map_err(|_| format!("STRENGTH must be a number, got {s:?}"))?,
        None => STRENGTH,
    };
    let runtime = Runtime::init(&RuntimeOptions::default())?;
    let mut model = MusicGen::load(&runtime, &bundle, Verify::Cached)?;
    let layer = model.decoder.num_layers() / 2;
    let point = HookPoint::ResidPost(layer);
    println!("{bundle}: steering {point} on {}", runtime.describe());

    // 1. A direction: mean residual at `point` for "heavy metal" minus that for "soft jazz".
    //    `ResidualCapture` keeps embed.hook_out and every blocks.{l}.hook_resid_post, here averaged
    //    over positions: `[points, rows, d_model]`, its points in the order of `points()`.
    let greedy = SamplingConfig { guidance_scale: 3.0, top_k: 1, temperature: 1.0, seed: 0 };
    let mut mean_residual = |prompt: &str| -> Result<Array1<f32>, Box<dyn Error>> {
        let mut capture = ResidualCapture::new(model.decoder.num_layers(), Reduction::Mean);
        let request = GenerationRequest { prompts: vec![prompt.into()], max_new_tokens: 8, sampling: greedy.clone(), ..Default::default() };
        generate(&mut model, &request, &mut capture, |_, _| {})?;
        let i = capture.points().iter().position(|p| *p == point).ok_or("point not captured")?;
        Ok(capture.result()?.slice(s![i, 0, ..]).to_owned()) // row 0: the conditional row
    };
    let metal = mean_residual("heavy metal")?;
    let jazz = mean_residual("soft jazz")?;
    let difference = &metal - &jazz;
    let direction = &difference / difference.dot(&difference).sqrt();
    let alpha = strength * metal.dot(&metal).sqrt();

    // 2. The steering hook. `FnHooks` takes two closures: `edit` fills component edits before each
    //    layer (unused here), `residual` gets every residual-stream point mutably as the forward
    //    passes it. With classifier-free guidance the batch is [conditional rows; unconditional
    //    rows], and `ctx.conditional_rows` says which are which.
    let steering_vector = &direction * alpha;
    let mut steer = FnHooks {
        edit: |_: &ForwardContext, _: usize, _: &mut LayerEdits| Ok(()),
        residual: |ctx: &ForwardContext, p: HookPoint, mut h: ArrayViewMut3<'_, f32>| {
            if p == point {
                // `[rows, positions, d_model]` += `[d_model]`, broadcast over rows and positions.
                let mut conditional = h.slice_mut(s![ctx.conditional_rows.clone(), .., ..]);
                conditional += &steering_vector;
            }
            Ok(())
        },
    };

    // 3. Generate plain and steered with the same seed (top-k 250 sampling), recording `point` in
    //    both. The plain run is repeated to show that the seed alone fixes the codes.
    let request = GenerationRequest {
        prompts: vec![PROMPT.into()],
        max_new_tokens: STEPS,
        sampling: SamplingConfig { seed: 1234, ..SamplingConfig::default() },
        ..Default::default()
    };
    let (plain_codes, plain_resid) = generate_recording(&mut model, &request, point, &mut NoHooks)?;
    let (again_codes, _) = generate_recording(&mut model, &request, point, &mut NoHooks)?;
    let (steered_codes, steered_resid) = generate_recording(&mut model, &request, point, &mut steer)?;

    // 4. What changed.
    let changed = plain_codes.iter().zip(&steered_codes).filter(|(a, b)| a != b).count();
    let first_frame = (0..plain_codes.shape()[2]).find(|&f| plain_codes.slice(s![.., .., f]) != steered_codes.slice(s![.., .., f]));
    let first_frame = first_frame.map_or("none".to_string(), |f| f.to_string());
    println!("prompt {PROMPT:?}, {STEPS} steps, seed {}; steering vector norm {alpha:.3} ({strength} x |mean residual|)", request.sampling.seed);
    println!("codes {:?}: {changed} of {} changed by steering (first changed frame: {first_frame})", plain_codes.shape(), plain_codes.len());

    let diff = &steered_resid - &plain_resid; // [rows, positions, d_model]
    let cond = 0..request.prompts.len(); // conditional rows come first
    let first_cond = l2(diff.slice(s![cond.clone(), 0, ..]));
    let first_uncond = l2(diff.slice(s![cond.end.., 0, ..]));
    println!("{point} steered - plain:");
    println!("  position 0 (before any code differs): conditional {first_cond:.3} (= the steering vector), unconditional {first_uncond:.3}");
    println!(
        "  whole clip {:?}: conditional {:.3}, unconditional {:.3} (nonzero once steered codes are fed back)",
        diff.shape(),
        l2(diff.slice(s![cond.clone(), .., ..])),
        l2(diff.slice(s![cond.end.., .., ..])),
    );

    // 5. The smoke test: fail loudly if the hook did nothing, or did it to the wrong rows.
    if again_codes != plain_codes {
        return Err("two plain runs with the same seed gave different codes".into());
    }
    if changed == 0 {
        return Err("steering changed no code".into());
    }
    if (first_cond - alpha).abs() > 1e-3 * alpha || first_uncond > 1e-5 {
        return Err(format!("at position 0 the residual moved by {first_cond} (conditional) and {first_uncond} (unconditional); expected {alpha} and 0").into());
    }
    println!("ok: steering changed the codes, and only the conditional rows at the steered point");
    Ok(())
}

/// Generates with `hooks` and a [`Recorder`] on `point` (run after `hooks`, so it sees their
/// changes): the codes `[batch, codebooks, frames]` and `point` over the clip `[rows, positions, d_model]`.
fn generate_recording(
    model: &mut MusicGen,
    request: &GenerationRequest,
    point: HookPoint,
    hooks: &mut dyn Hooks,
) -> Result<(Array3<i64>, Array3<f32>), Box<dyn Error>> {
    let mut recorder = Recorder::points([point]);
    // A `Vec` of hooks is a hook: each runs in order and sees the previous one's changes.
    let mut both: Vec<&mut dyn Hooks> = vec![hooks, &mut recorder];
    let clip = generate(model, request, &mut both, |_, _| {})?;
    drop(both); // releases `recorder`
    // One record per forward call (prefill, then one per step): join them along positions.
    let calls: Vec<_> = recorder.records.iter().map(|(_, _, a)| a.view()).collect();
    Ok((clip.codes, concatenate(Axis(1), &calls)?))
}

/// The Euclidean norm of any array's values.
fn l2<'a>(values: impl IntoIterator<Item = &'a f32>) -> f32 {
    values.into_iter().map(|x| x * x).sum::<f32>().sqrt()
}
