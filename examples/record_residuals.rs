//! Record activations during a generation and save one of them for numpy.
//!
//!     cargo run --release --example record_residuals -- [BUNDLE] [OUT.npy]
//!
//! BUNDLE defaults to `tests/data/tiny` (the random-weight test bundle that `bash scripts/test.sh`
//! exports); OUT.npy defaults to a file in the system's temporary folder. The file holds the last
//! layer's residual stream over the whole clip, `[rows, positions, d_model]`:
//!
//!     >>> import numpy as np; r = np.load("OUT.npy")   # rows: conditional first, then unconditional

use std::error::Error;
use std::path::PathBuf;

use ndarray::{concatenate, Array3, Axis};

use musicgen_interp::generate::{generate, GenerationRequest, SamplingConfig};
use musicgen_interp::{Component, HookPoint, MusicGen, Recorder, Runtime, RuntimeOptions, Verify};

fn main() {
    // The library's errors say what went wrong and how to fix it: print them as text.
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let bundle = args.next().unwrap_or_else(|| "tests/data/tiny".into());
    let out = args.next().map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("musicgen-interp-example/resid_post.npy"));

    // 1. Start onnxruntime (once per process) and load the bundle's graphs. The default options
    //    use CUDA when the library has it and a GPU answers, else the CPU; `describe` says which.
    let runtime = Runtime::init(&RuntimeOptions::default())?;
    let mut model = MusicGen::load(&runtime, &bundle, Verify::Cached)?;
    let layers = model.decoder.num_layers();
    println!("{bundle}: {layers} decoder layers, d_model {}, on {}", model.decoder.config.d_model, runtime.describe());

    // 2. Choose where to look. Hook points are named as in TransformerLens; `HookPoint::all(layers)`
    //    lists every one, and `"blocks.0.hook_resid_post".parse::<HookPoint>()` reads a name.
    let last = layers - 1;
    let points = [
        HookPoint::Embed,                           // embed.hook_out
        HookPoint::ResidPost(0),                    // blocks.0.hook_resid_post
        HookPoint::Component(last, Component::Mlp), // blocks.{last}.mlp.hook_out, before its residual add
        HookPoint::ResidPost(last),                 // blocks.{last}.hook_resid_post
        HookPoint::LnFinal,                         // ln_final.hook_normalized
    ];
    let mut recorder = Recorder::points(points);

    // 3. Generate a short clip greedily (top-k 1) with classifier-free guidance (scale 3), so each
    //    forward has two rows: the prompt's conditional row, then its unconditional row.
    let request = GenerationRequest {
        prompts: vec!["lo-fi piano with soft drums".into()],
        max_new_tokens: 24,
        sampling: SamplingConfig { guidance_scale: 3.0, top_k: 1, temperature: 1.0, seed: 0 },
        ..Default::default()
    };
    let clip = generate(&mut model, &request, &mut recorder, |_, _| {})?;
    println!("generated {} decoder steps, codes {:?} [batch, codebooks, frames]", clip.steps, clip.codes.shape());
    // (`model.encodec.decode(clip.codes.view())` turns the codes into audio.)

    // 4. The recorder keeps one array per (point, forward call): call 0 is the prefill, then one call
    //    per decoding step, each `[rows, new positions, d_model]`. Join the calls along positions to
    //    get each point over the whole clip.
    let mut saved = None;
    for point in points {
        let calls: Vec<_> = recorder.records.iter().filter(|(p, _, _)| *p == point).map(|(_, _, a)| a.view()).collect();
        let whole: Array3<f32> = concatenate(Axis(1), &calls)?;
        let norm = whole.iter().map(|x| x * x).sum::<f32>().sqrt();
        let per_position = whole.map_axis(Axis(2), |v| v.dot(&v).sqrt()).mean().unwrap_or(0.0);
        println!("  {:<28} {} calls -> {:?}  norm {norm:9.3}  mean norm per (row, position) {per_position:7.3}", point.to_string(), calls.len(), whole.shape());
        if point == HookPoint::ResidPost(last) {
            saved = Some(whole);
        }
    }

    // 5. Save one as .npy (written atomically: a temporary file, then a rename).
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let resid = saved.ok_or("nothing recorded at the last layer")?;
    musicgen_interp::store::write_npy(&out, &resid)?;
    println!("saved {} {:?} to {}", HookPoint::ResidPost(last), resid.shape(), out.display());
    Ok(())
}
