//! The `musicgen-interp` command line: parsing and dispatch. Each sub-command's flags and the
//! function that runs it live in `cli/`, over the library.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use musicgen_interp::config::RunConfig;
use musicgen_interp::model::Verify;
use musicgen_interp::runtime::{Device, Runtime, RuntimeOptions};
use musicgen_interp::Result;

use cli::{bench, decoder_lens, extract, generate, info, intervene, probes, prompts};

#[derive(Parser)]
#[command(name = "musicgen-interp", version, about = "Look inside MusicGen and steer it (ONNX graphs on onnxruntime)")]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct RuntimeArgs {
    /// Where the graphs run: cpu, cuda, or auto (CUDA when available, else CPU).
    #[arg(long, global = true)]
    device: Option<Device>,
    /// Threads of onnxruntime's global pool (0 = one per core).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    /// The onnxruntime shared library (default: $MUSICGEN_INTERP_ORT_LIB, $ORT_DYLIB_PATH, or the project's .venv).
    #[arg(long, global = true)]
    ort_lib: Option<PathBuf>,
    /// Hash every bundle file again on load. Without it, a file hashed once is trusted while its
    /// size and modification date are unchanged (recorded in the bundle's .verified.json), so an
    /// edit that keeps both goes unseen until this flag is given.
    #[arg(long, global = true)]
    verify_all: bool,
    /// Let onnxruntime's worker threads sleep between operators instead of spinning (slower steps,
    /// less CPU burnt while waiting).
    #[arg(long, global = true)]
    no_spin: bool,
    /// On CPU, run the decoder's plain graphs (onnxruntime's own operators) instead of the bundle's
    /// CPU copies, built from this project's streaming matmul, attention and intervention operators.
    #[arg(long, global = true)]
    plain_graphs: bool,
    /// The seed's `--gpus N`: more than 0 runs on CUDA (`--device cuda`; one GPU per process here,
    /// `--shard i/n` splits a run over several), 0 on the CPU (`--device cpu`).
    #[arg(long, global = true, conflicts_with = "device")]
    gpus: Option<u32>,
    /// Print the command's settings as resolved (defaults filled in, the seeds' flags converted to
    /// this tool's) and stop before anything loads or runs.
    #[arg(long, global = true)]
    dry_run: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a bundle and print its sizes, graphs, hook points and the execution provider.
    Info(info::Info),
    /// Generate music from text (and optionally an audio prompt to continue), seeded.
    Generate(generate::GenerateArgs),
    /// Extract every layer's residual stream for a labelled audio dataset (each 10 s segment is an
    /// audio prompt MusicGen continues); resumable, shardable (`--shard i/n`), merged at the end.
    Extract(extract::ExtractArgs),
    /// `extract` over the Hugging Face dataset lewtun/music_genres or `--dataset REPO_ID` (from the HF cache,
    /// downloaded into it when missing and online), as the
    /// seed's command: `process-lewtun --model M --save-dir DIR [--max-samples N] [--genres ...]`.
    ProcessLewtun(extract::ExtractArgs),
    /// Train one linear probe per layer on extracted residuals (balanced classes, stratified 15%
    /// test split saved for evaluation): {loss}_weights.npy [layers, classes, d_model] + metrics.
    TrainProbes(probes::TrainProbes),
    /// Evaluate probe weights per layer on the saved test split: accuracy, loss, confusion matrix,
    /// a CSV and a PNG plot; names the best layer.
    Evaluate(probes::Evaluate),
    /// The probe workflow from one YAML file: extract -> train-probes -> evaluate -> steer towards a
    /// class with the trained probe, and report whether the probe's own prediction moved.
    ProbePipeline(probes::ProbePipeline),
    /// DecoderLens: for each layer k = 1..L, generation with the decoder exited after layer k (the
    /// `decoder-lens` plugin; final LayerNorm and heads on its residual, tokens fed back), one WAV per
    /// prompt and layer; the layers' self-similarity; with a judge, NDCG of the prompt's concept per
    /// layer; `--text-layers`: the decoder cross-attending to each text-encoder layer instead.
    DecoderLens(decoder_lens::DecoderLensArgs),
    /// Interchange interventions (ISMIR 2024): concept means of every site, then for each (original,
    /// desired) concept pair, prompt and site an adjust / replace intervention on the conditional
    /// rows, scored by an audio classifier against a same-seed baseline. Resumable, shardable.
    Intervene(intervene::InterveneArgs),
    /// Write the paper's concept prompt sets (template with moods and tempi) as a prompt set CSV
    /// (`text,label`), usable by `extract --prompts`.
    ConceptPrompts(prompts::ConceptPrompts),
    /// Run a YAML run config (model, generation, prompts, plugins with their settings, output folder).
    Run(generate::Run),
    /// List the plugins installed beside this executable (built-ins) with their kind, version and ABI.
    Plugins,
    /// Benchmark: decoder steps/s against transformers in PyTorch on the same weights (same run),
    /// step time against the bytes-moved floor, peak RSS, EnCodec decode speed.
    Bench(bench::Bench),
    /// Fidelity of one bundle against another (say int8 against fp32): the reference generates
    /// greedily, both run that sequence, and per-layer residual cosine similarity and next-token
    /// agreement are printed.
    Compare(bench::Compare),
    /// Encode a prompt, run the decoder's prefill on the start token with classifier-free guidance,
    /// and print the residual stream's norm at every layer (conditional and unconditional rows);
    /// `--save DIR` writes every hook point's activation as .npy.
    Inspect(info::Inspect),
}

fn main() -> ExitCode {
    let matches = cli::negatives_as_values(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Ctrl-C or SIGTERM: remove this process's temporary files and exit 130, leaving no debris.
    if let Err(e) = ctrlc::set_handler(|| musicgen_interp::store::remove_temporaries_and_exit()) {
        eprintln!("note: Ctrl-C will not clean up temporary files ({e})");
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    // A run config names its device; the --device flag, when given, wins.
    let run_config = match &cli.command {
        Command::Run(r) => Some(RunConfig::load(&r.config)?),
        _ => None,
    };
    // The seed's --gpus N: this tool runs one device per process.
    let gpus = cli.runtime.gpus.map(|n| {
        let device = if n > 0 { Device::Cuda } else { Device::Cpu };
        let more = if n > 1 { format!("; one GPU per process here: split the run over {n} GPUs with --shard i/{n} and CUDA_VISIBLE_DEVICES") } else { String::new() };
        eprintln!("note: --gpus {n} (the seed's flag) is --device {} here{more}", if n > 0 { "cuda" } else { "cpu" });
        device
    });
    let device = cli.runtime.device.or(gpus).or(run_config.as_ref().map(|c| c.device)).unwrap_or_default();
    if cli.runtime.dry_run {
        return dry_run(device, cli.command);
    }
    if let Command::Plugins = cli.command {
        return info::list_plugins();
    }
    let options = RuntimeOptions {
        device,
        threads: cli.runtime.threads,
        library: cli.runtime.ort_lib,
        cuda_device: 0,
        spin: !cli.runtime.no_spin,
        cpu_kernels: !cli.runtime.plain_graphs,
        profile: None,
    };
    let runtime = Runtime::init(&options)?;
    let verify = if cli.runtime.verify_all { Verify::Full } else { Verify::Cached };
    match cli.command {
        Command::Info(args) => info::info(&runtime, args.model, verify, args.placement.then_some(&options)),
        Command::Inspect(args) => info::inspect(&runtime, args.model, verify, &args.text, args.save),
        Command::Generate(args) => generate::generate(&runtime, verify, args, Vec::new(), &|_, _| Ok(())),
        Command::Extract(args) => extract::run(&runtime, verify, args),
        Command::ProcessLewtun(mut args) => {
            args.lewtun = true;
            extract::run(&runtime, verify, args)
        }
        Command::TrainProbes(args) => probes::train(args),
        Command::Evaluate(args) => probes::evaluate(args),
        Command::ProbePipeline(args) => probes::pipeline(&runtime, verify, args),
        Command::Intervene(args) => intervene::run(&runtime, verify, args),
        Command::DecoderLens(args) => decoder_lens::run(&runtime, verify, args),
        Command::ConceptPrompts(args) => prompts::run(args),
        Command::Run(_) => generate::run_config_file(&runtime, verify, run_config.expect("parsed above")),
        Command::Plugins => unreachable!("handled before the runtime starts"),
        Command::Compare(args) => bench::compare(&runtime, verify, args),
        Command::Bench(args) => bench::bench(&runtime, verify, args, cli.runtime.threads),
    }
}

/// `--dry-run`: the device and the command's settings as resolved (a YAML config's loaded and
/// checked, the seeds' flags converted), printed; nothing is loaded, run or written.
fn dry_run(device: Device, command: Command) -> Result<()> {
    println!("device: {device:?}");
    match command {
        Command::Intervene(args) => println!("{:#?}", args.config()?),
        Command::DecoderLens(args) => println!("{:#?}", args.config()?),
        Command::Run(r) => println!("{:#?}", RunConfig::load(&r.config)?),
        // A command whose flags are its own struct prints as that struct (`Info { .. }`).
        Command::Info(a) => println!("{a:#?}"),
        Command::Inspect(a) => println!("{a:#?}"),
        Command::TrainProbes(a) => println!("{a:#?}"),
        Command::Evaluate(a) => println!("{a:#?}"),
        Command::ProbePipeline(a) => println!("{a:#?}"),
        Command::ConceptPrompts(a) => println!("{a:#?}"),
        Command::Bench(a) => println!("{a:#?}"),
        Command::Compare(a) => println!("{a:#?}"),
        other @ (Command::Generate(_) | Command::Extract(_) | Command::ProcessLewtun(_) | Command::Plugins) => println!("{other:#?}"),
    }
    Ok(())
}
