//! The `musicgen-interp` command line: parsing and dispatch. Each sub-command's flags and the
//! function that runs it live in `cli/`, over the library.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use musicgen_interp::config::RunConfig;
use musicgen_interp::model::Verify;
use musicgen_interp::runtime::{Device, Runtime, RuntimeOptions};
use musicgen_interp::Result;

use cli::{bench, decoder_lens, extract, generate, info, intervene, probes, prompts, RuntimeArgs, WithRuntime};

#[derive(Parser)]
#[command(name = "musicgen-interp", version, about = "Look inside MusicGen and steer it (ONNX graphs on onnxruntime)")]
struct Cli {
    /// The runtime flags given before the sub-command name (taken by every command, as before;
    /// after the name only the commands that load a model list and take them).
    #[command(flatten)]
    runtime: RuntimeArgs,
    /// Print the command's settings as resolved (defaults filled in, the seeds' flags converted to
    /// this tool's) and stop before anything loads or runs.
    #[arg(long, global = true, display_order = 100)]
    dry_run: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a bundle and print its sizes, graphs, hook points and the execution provider.
    Info(WithRuntime<info::Info>),
    /// Generate music from text (and optionally an audio prompt to continue), seeded.
    Generate(WithRuntime<generate::GenerateArgs>),
    /// Extract every layer's residual stream for a labelled audio dataset (each 10 s segment is an
    /// audio prompt MusicGen continues); resumable, shardable (`--shard i/n`), merged at the end.
    Extract(WithRuntime<extract::ExtractArgs>),
    /// `extract` over the Hugging Face dataset lewtun/music_genres or `--dataset REPO_ID` (from the HF cache,
    /// downloaded into it when missing and online), as the
    /// seed's command: `process-lewtun --model M --save-dir DIR [--max-samples N] [--genres ...]`.
    ProcessLewtun(WithRuntime<extract::ExtractArgs>),
    /// Train one linear probe per layer on extracted residuals (balanced classes, stratified 15%
    /// test split saved for evaluation): {loss}_weights.npy [layers, classes, d_model] + metrics.
    TrainProbes(probes::TrainProbes),
    /// Evaluate probe weights per layer on the saved test split: accuracy, loss, confusion matrix,
    /// a CSV and a PNG plot; names the best layer.
    Evaluate(probes::Evaluate),
    /// The probe workflow from one YAML file: extract -> train-probes -> evaluate -> steer towards a
    /// class with the trained probe, and report whether the probe's own prediction moved.
    ProbePipeline(WithRuntime<probes::ProbePipeline>),
    /// DecoderLens: for each layer k = 1..L, generation with the decoder exited after layer k (the
    /// `decoder-lens` plugin; final LayerNorm and heads on its residual, tokens fed back), one WAV per
    /// prompt and layer; the layers' self-similarity; with a judge, NDCG of the prompt's concept per
    /// layer; `--text-layers`: the decoder cross-attending to each text-encoder layer instead.
    DecoderLens(WithRuntime<decoder_lens::DecoderLensArgs>),
    /// Interchange interventions (ISMIR 2024): concept means of every site, then for each (original,
    /// desired) concept pair, prompt and site an adjust / replace intervention on the conditional
    /// rows, scored by an audio classifier against a same-seed baseline. Resumable, shardable.
    Intervene(WithRuntime<intervene::InterveneArgs>),
    /// Write the paper's concept prompt sets (template with moods and tempi) as a prompt set CSV
    /// (`text,label`), usable by `extract --prompts`.
    ConceptPrompts(prompts::ConceptPrompts),
    /// Run a YAML run config (model, generation, prompts, plugins with their settings, output folder).
    Run(WithRuntime<generate::Run>),
    /// List the plugins installed beside this executable (built-ins) with their kind, version and ABI.
    Plugins,
    /// Benchmark: decoder steps/s against transformers in PyTorch on the same weights (same run),
    /// step time against the bytes-moved floor, peak RSS, EnCodec decode speed.
    Bench(WithRuntime<bench::Bench>),
    /// Fidelity of one bundle against another (say int8 against fp32): the reference generates
    /// greedily, both run that sequence, and per-layer residual cosine similarity and next-token
    /// agreement are printed.
    Compare(WithRuntime<bench::Compare>),
    /// Encode a prompt, run the decoder's prefill on the start token with classifier-free guidance,
    /// and print the residual stream's norm at every layer (conditional and unconditional rows);
    /// `--save DIR` writes every hook point's activation as .npy.
    Inspect(WithRuntime<info::Inspect>),
}

impl Command {
    /// The runtime flags given after the sub-command name: only a command that loads a model has them.
    fn runtime(&self) -> Option<&RuntimeArgs> {
        match self {
            Command::Info(a) => Some(&a.runtime),
            Command::Inspect(a) => Some(&a.runtime),
            Command::Generate(a) => Some(&a.runtime),
            Command::Extract(a) | Command::ProcessLewtun(a) => Some(&a.runtime),
            Command::ProbePipeline(a) => Some(&a.runtime),
            Command::DecoderLens(a) => Some(&a.runtime),
            Command::Intervene(a) => Some(&a.runtime),
            Command::Run(a) => Some(&a.runtime),
            Command::Bench(a) => Some(&a.runtime),
            Command::Compare(a) => Some(&a.runtime),
            Command::TrainProbes(_) | Command::Evaluate(_) | Command::ConceptPrompts(_) | Command::Plugins => None,
        }
    }
}

fn main() -> ExitCode {
    let matches = cli::negatives_as_values(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let runtime = cli.runtime.with(cli.command.runtime()).unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
    // Ctrl-C or SIGTERM: remove this process's temporary files and exit 130, leaving no debris.
    if let Err(e) = ctrlc::set_handler(|| musicgen_interp::store::remove_temporaries_and_exit()) {
        eprintln!("note: Ctrl-C will not clean up temporary files ({e})");
    }
    match run(cli.command, runtime, cli.dry_run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, flags: RuntimeArgs, dry: bool) -> Result<()> {
    // A run config names its device; the --device flag, when given, wins.
    let run_config = match &command {
        Command::Run(r) => Some(RunConfig::load(&r.args.config)?),
        _ => None,
    };
    // The seed's --gpus N: this tool runs one device per process.
    let gpus = flags.gpus.map(|n| {
        let device = if n > 0 { Device::Cuda } else { Device::Cpu };
        let more = if n > 1 { format!("; one GPU per process here: split the run over {n} GPUs with --shard i/{n} and CUDA_VISIBLE_DEVICES") } else { String::new() };
        eprintln!("note: --gpus {n} (the seed's flag) is --device {} here{more}", if n > 0 { "cuda" } else { "cpu" });
        device
    });
    let device = flags.device.or(gpus).or(run_config.as_ref().map(|c| c.device)).unwrap_or_default();
    if dry {
        return dry_run(device, command);
    }
    if let Command::Plugins = command {
        return info::list_plugins();
    }
    let options = RuntimeOptions {
        device,
        threads: flags.threads,
        library: flags.ort_lib,
        cuda_device: 0,
        spin: !flags.no_spin,
        cpu_kernels: !flags.plain_graphs,
        profile: None,
    };
    let runtime = Runtime::init(&options)?;
    let verify = if flags.verify_all { Verify::Full } else { Verify::Cached };
    match command {
        Command::Info(WithRuntime { args, .. }) => info::info(&runtime, args.model, verify, args.placement.then_some(&options)),
        Command::Inspect(WithRuntime { args, .. }) => info::inspect(&runtime, args.model, verify, &args.text, args.save),
        Command::Generate(WithRuntime { args, .. }) => generate::generate(&runtime, verify, args, Vec::new(), &|_, _| Ok(())),
        Command::Extract(WithRuntime { args, .. }) => extract::run(&runtime, verify, args),
        Command::ProcessLewtun(WithRuntime { mut args, .. }) => {
            args.lewtun = true;
            extract::run(&runtime, verify, args)
        }
        Command::TrainProbes(args) => probes::train(args),
        Command::Evaluate(args) => probes::evaluate(args),
        Command::ProbePipeline(WithRuntime { args, .. }) => probes::pipeline(&runtime, verify, args),
        Command::Intervene(WithRuntime { args, .. }) => intervene::run(&runtime, verify, args),
        Command::DecoderLens(WithRuntime { args, .. }) => decoder_lens::run(&runtime, verify, args),
        Command::ConceptPrompts(args) => prompts::run(args),
        Command::Run(_) => generate::run_config_file(&runtime, verify, run_config.expect("parsed above")),
        Command::Plugins => unreachable!("handled before the runtime starts"),
        Command::Compare(WithRuntime { args, .. }) => bench::compare(&runtime, verify, args),
        Command::Bench(WithRuntime { args, .. }) => bench::bench(&runtime, verify, args, flags.threads),
    }
}

/// `--dry-run`: the device and the command's settings as resolved (a YAML config's loaded and
/// checked, the seeds' flags converted), printed; nothing is loaded, run or written.
fn dry_run(device: Device, command: Command) -> Result<()> {
    println!("device: {device:?}");
    match command {
        Command::Intervene(a) => println!("{:#?}", a.args.config()?),
        Command::DecoderLens(a) => println!("{:#?}", a.args.config()?),
        Command::Run(r) => println!("{:#?}", RunConfig::load(&r.args.config)?),
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
