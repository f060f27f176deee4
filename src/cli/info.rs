//! `info` (with `--placement`), `inspect` and `plugins`: what a bundle holds, what it computes on
//! one prompt, and which plugins are installed.

use std::path::PathBuf;

use clap::Args;
use ndarray::{s, Array3, Axis};

use musicgen_interp::hooks::{HookPoint, Recorder};
use musicgen_interp::model::Verify;
use musicgen_interp::runtime::{Runtime, RuntimeOptions};
use musicgen_interp::store::write_npy;
use musicgen_interp::{Error, Result};

use super::load;

// Named as the sub-command: `--dry-run` prints it as `Info { .. }`.
#[derive(Args, Debug)]
pub struct Info {
    /// Bundle folder, transformers checkpoint folder, or hub id (exported once into ./models).
    #[arg(long)]
    pub model: PathBuf,
    /// Also run a short generation with onnxruntime's profiler on and print, per decoder graph,
    /// which execution provider ran its nodes (on CUDA, a node on the CPU provider is a fallback:
    /// the command then fails).
    #[arg(long)]
    pub placement: bool,
}

// Named as the sub-command: `--dry-run` prints it as `Inspect { .. }`.
#[derive(Args, Debug)]
pub struct Inspect {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value = "80s pop track with bassy drums and synth")]
    pub text: String,
    #[arg(long)]
    pub save: Option<PathBuf>,
}

pub fn info(runtime: &Runtime, model: PathBuf, verify: Verify, placement: Option<&RuntimeOptions>) -> Result<()> {
    let m = load(runtime, model, verify)?;
    let man = m.manifest();
    let d = &man.decoder;
    let t = &man.text_encoder;
    println!("model        {} ({}, exporter {})", man.source.model_id, man.source.kind, man.exporter_version);
    println!("decoder      {} layers, d_model {}, {} heads x {}, ffn {}, {} codebooks x {}", d.num_layers, d.d_model, d.num_heads, d.head_dim, d.ffn_dim, d.num_codebooks, d.vocab_size);
    println!("text encoder {} layers, d_model {}, vocabulary {}", t.num_layers, t.d_model, t.vocab_size);
    let precision = man.precision.as_ref().map_or(man.dtype.to_string(), |p| {
        let copies = if p.cpu_copies { ", CPU copies with int16 activations" } else { "" };
        format!("{} weight-only matmuls (block {}) in {} graphs{copies}", p.weights, p.block_size, p.graphs.len())
    });
    println!("weights      {precision}");
    if man.dtype != musicgen_interp::model::manifest::Dtype::Float32 {
        println!("compute      {} (the KV cache and cross-attention keys and values too; the text encoder in float32; hooks see float32)", man.dtype);
    }
    let graphs = if man.graphs.decoder_cpu().is_some() { "plain graphs and CPU copies" } else { "plain graphs only (no CPU copies)" };
    println!("graphs       decoder: {graphs}");
    println!("audio        {} Hz, {} frames/s, {} channel(s)", man.audio.sample_rate, man.audio.frame_rate, man.audio.channels);
    // The points as their grammar: the first layer's names stand for every layer's.
    let points = man.hook_points.iter().map(|p| p.parse::<HookPoint>()).collect::<std::result::Result<Vec<_>, _>>()?;
    let outside: Vec<String> = points.iter().filter(|p| p.layer().is_none()).map(|p| p.to_string()).collect();
    let layer0: Vec<String> = points.iter().filter(|p| p.layer() == Some(0)).map(|p| p.to_string().splitn(3, '.').nth(2).unwrap_or_default().to_string()).collect();
    println!("hook points  {} in all: {}", man.hook_points.len(), outside.join(", "));
    println!("             blocks.{{0..{}}}.{{{}}}", d.num_layers - 1, layer0.join(", "));
    let bytes: u64 = man.files.values().map(|f| f.bytes).sum();
    println!(
        "files        {} ({:.1} MB, {}; {:.1} MB of graphs loaded here)",
        man.files.len(),
        bytes as f64 / 1e6,
        m.bundle.checked.describe(),
        m.loaded_bytes() as f64 / 1e6
    );
    println!("provider     {}", runtime.describe());
    println!("runtime      {}", runtime.library().display());
    if let Some(options) = placement {
        let dir = m.bundle.dir.clone();
        drop(m);
        print_placement(options, &dir)?;
    }
    Ok(())
}

/// `info --placement`: each decoder graph's nodes by provider; on CUDA, a node left on the CPU
/// provider (host<->device copies aside) fails the command.
fn print_placement(options: &RuntimeOptions, bundle: &std::path::Path) -> Result<()> {
    let (runtime, graphs) = musicgen_interp::model::placement::report(options, bundle)?;
    println!("placement    the decoder's graphs after a short generation on {}:", runtime.provider());
    let mut fallbacks = Vec::new();
    for g in &graphs {
        let by: Vec<String> = g.providers.iter().map(|(p, ops)| format!("{} on {p}", ops.values().sum::<usize>())).collect();
        println!("             {:<28} {} nodes: {}{}", g.graph, g.nodes(), by.join(", "), if g.copies > 0 { format!(", {} host<->device copies", g.copies) } else { String::new() });
        let on_device = !matches!(runtime.provider(), musicgen_interp::runtime::Provider::Cpu);
        if on_device && g.on_cpu() > 0 {
            let ops: Vec<String> = g.providers["CPUExecutionProvider"].iter().map(|(op, n)| format!("{op} x{n}")).collect();
            fallbacks.push(format!("{} ({})", g.graph, ops.join(", ")));
        }
    }
    if !fallbacks.is_empty() {
        return Err(musicgen_interp::Error::BundleMismatch {
            bundle: bundle.to_path_buf(),
            reason: format!("nodes fall back to the CPU provider in {}; export the GPU profile (onnx/export.py --precision fp16 --targets gpu)", fallbacks.join("; ")),
        });
    }
    Ok(())
}

pub fn inspect(runtime: &Runtime, model: PathBuf, verify: Verify, text: &str, save: Option<PathBuf>) -> Result<()> {
    let mut m = load(runtime, model, verify)?;
    let enc = m.text.encode(&[text])?;
    let mut state = m.decoder.start_guided(enc.last_hidden_state.view(), enc.attention_mask.view())?;
    let k = m.decoder.config.num_codebooks;
    let start = Array3::from_elem((state.rows(), k, 1), m.decoder.config.bos_token_id);
    let mut rec = Recorder::all();
    let out = m.decoder.forward(&mut state, start.view(), &mut rec)?;
    println!("{:<28} {:>12} {:>12}", "hook point", "|h| cond", "|h| uncond");
    for l in 0..m.decoder.num_layers() {
        let p = HookPoint::ResidPost(l);
        let h = rec.get(p, 0).ok_or_else(|| Error::Input(format!("{p} was not recorded")))?;
        let norm = |row: usize| h.slice(s![row, -1, ..]).iter().map(|x| x * x).sum::<f32>().sqrt();
        println!("{:<28} {:>12.4} {:>12.4}", p.to_string(), norm(0), norm(1));
    }
    let top: Vec<usize> = (0..k)
        .map(|cb| {
            let row = out.logits.slice(s![0, cb, -1, ..]);
            row.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b }).0
        })
        .collect();
    println!("greedy next codes (conditional row): {top:?}");
    if let Some(dir) = save {
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io { path: dir.clone(), source: e })?;
        for (point, _, a) in &rec.records {
            write_npy(&dir.join(format!("{point}.npy")), a)?;
        }
        write_npy(&dir.join("logits.npy"), &out.logits.index_axis(Axis(2), 0))?;
        println!("wrote {} arrays to {}", rec.records.len() + 1, dir.display());
    }
    Ok(())
}

pub fn list_plugins() -> Result<()> {
    let found = musicgen_interp::plugin::installed();
    if found.is_empty() {
        println!("no plugins found in {:?}; build them with `cargo build --release --workspace`", musicgen_interp::plugin::plugin_dirs());
    }
    for (path, lib) in found {
        match lib {
            Ok(l) => println!("{:<16} {:<8} {:<7} ABI {}  {}", l.name, l.version, format!("{:?}", l.kind), musicgen_interp::plugin::ABI_VERSION, path.display()),
            Err(e) => println!("{:<16} unusable: {e}", path.display()),
        }
    }
    Ok(())
}
