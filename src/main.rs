//! The `musicgen-interp` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ndarray::{s, Array3, Axis};

use musicgen_interp::hooks::{HookPoint, Recorder};
use musicgen_interp::model::{MusicGen, Verify};
use musicgen_interp::runtime::{Device, Runtime, RuntimeOptions};
use musicgen_interp::store::write_npy;
use musicgen_interp::{Error, Result};

#[derive(Parser)]
#[command(name = "musicgen-interp", version, about = "Look inside MusicGen and steer it (ONNX graphs on onnxruntime)")]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct RuntimeArgs {
    /// Where the graphs run: cpu, cuda, or auto (CUDA when available, else CPU).
    #[arg(long, global = true, default_value = "auto")]
    device: Device,
    /// Threads of onnxruntime's global pool (0 = one per core).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    /// The onnxruntime shared library (default: $MUSICGEN_INTERP_ORT_LIB, $ORT_DYLIB_PATH, or the project's .venv).
    #[arg(long, global = true)]
    ort_lib: Option<PathBuf>,
    /// Hash every bundle file on load instead of trusting files already verified.
    #[arg(long, global = true)]
    verify_all: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Check a bundle and print its sizes, graphs, hook points and the execution provider.
    Info {
        /// Bundle folder (written by onnx/export.py).
        #[arg(long)]
        model: PathBuf,
    },
    /// Encode a prompt, run the decoder's prefill on the start token with classifier-free guidance,
    /// and print the residual stream's norm at every layer (conditional and unconditional rows);
    /// `--save DIR` writes every hook point's activation as .npy.
    Inspect {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "80s pop track with bassy drums and synth")]
        text: String,
        #[arg(long)]
        save: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let options = RuntimeOptions { device: cli.runtime.device, threads: cli.runtime.threads, library: cli.runtime.ort_lib, cuda_device: 0 };
    let runtime = Runtime::init(&options)?;
    let verify = if cli.runtime.verify_all { Verify::Full } else { Verify::Cached };
    match cli.command {
        Command::Info { model } => info(&runtime, model, verify),
        Command::Inspect { model, text, save } => inspect(&runtime, model, verify, &text, save),
    }
}

fn load(runtime: &Runtime, model: PathBuf, verify: Verify) -> Result<MusicGen> {
    let start = std::time::Instant::now();
    let m = MusicGen::load(runtime, &model, verify)?;
    eprintln!("loaded {} in {:.2} s on {}", model.display(), start.elapsed().as_secs_f64(), runtime.describe());
    Ok(m)
}

fn info(runtime: &Runtime, model: PathBuf, verify: Verify) -> Result<()> {
    let m = load(runtime, model, verify)?;
    let man = m.manifest();
    let d = &man.decoder;
    let t = &man.text_encoder;
    println!("model        {} ({}, exporter {})", man.source.model_id, man.source.kind, man.exporter_version);
    println!("decoder      {} layers, d_model {}, {} heads x {}, ffn {}, {} codebooks x {}", d.num_layers, d.d_model, d.num_heads, d.head_dim, d.ffn_dim, d.num_codebooks, d.vocab_size);
    println!("text encoder {} layers, d_model {}, vocabulary {}", t.num_layers, t.d_model, t.vocab_size);
    println!("audio        {} Hz, {} frames/s, {} channel(s)", man.audio.sample_rate, man.audio.frame_rate, man.audio.channels);
    println!("hook points  {} ({} ... {})", man.hook_points.len(), man.hook_points.first().map_or("", String::as_str), man.hook_points.last().map_or("", String::as_str));
    let bytes: u64 = man.files.values().map(|f| f.bytes).sum();
    println!("files        {} ({:.1} MB, checksums verified)", man.files.len(), bytes as f64 / 1e6);
    println!("provider     {}", runtime.describe());
    println!("runtime      {}", runtime.library().display());
    Ok(())
}

fn inspect(runtime: &Runtime, model: PathBuf, verify: Verify, text: &str, save: Option<PathBuf>) -> Result<()> {
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
