//! The `musicgen-interp` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use ndarray::{s, Array3, Axis};

use musicgen_interp::generate::{GenerationRequest, SamplingConfig};
use musicgen_interp::config::RunConfig;
use musicgen_interp::hooks::{HookPoint, Hooks, Recorder, Reduction, ResidualCapture};
use musicgen_interp::plugin::MethodPlugin;
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
    Info {
        /// Bundle folder, transformers checkpoint folder, or hub id (exported once into ./models).
        #[arg(long)]
        model: PathBuf,
        /// Also run a short generation with onnxruntime's profiler on and print, per decoder graph,
        /// which execution provider ran its nodes (on CUDA, a node on the CPU provider is a fallback:
        /// the command then fails).
        #[arg(long)]
        placement: bool,
    },
    /// Generate music from text (and optionally an audio prompt to continue), seeded.
    Generate(GenerateArgs),
    /// Extract every layer's residual stream for a labelled audio dataset (each 10 s segment is an
    /// audio prompt MusicGen continues); resumable, shardable (`--shard i/n`), merged at the end.
    Extract(ExtractArgs),
    /// `extract` over the Hugging Face dataset lewtun/music_genres or `--dataset REPO_ID` (from the HF cache,
    /// downloaded into it when missing and online), as the
    /// seed's command: `process-lewtun --model M --save-dir DIR [--max-samples N] [--genres ...]`.
    ProcessLewtun(ExtractArgs),
    /// Train one linear probe per layer on extracted residuals (balanced classes, stratified 15%
    /// test split saved for evaluation): {loss}_weights.npy [layers, classes, d_model] + metrics.
    TrainProbes {
        /// The extraction folder (residuals_cond.npy, labels.npy).
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        output_dir: PathBuf,
        #[arg(long, default_value_t = 4)]
        num_classes: usize,
        /// mse (least squares onto one-hot targets, closed form) or ce (multinomial logistic
        /// regression; the seed's `cross_entropy` is accepted for it).
        #[arg(long, default_value = "mse", value_parser = loss_type)]
        loss_type: String,
        /// Iterations of an iterative solver (ce); the closed-form mse probe ignores it and says so.
        #[arg(long)]
        epochs: Option<u64>,
        /// Residual stream: cond or uncond (the seed's `--residual-type conditional|unconditional`).
        #[arg(long, visible_alias = "residual-type", default_value = "cond")]
        stream: musicgen_interp::probe::Stream,
        #[arg(long, default_value_t = musicgen_interp::probe::DEFAULT_TEST_FRACTION, value_parser = finite_f64)]
        test_fraction: f64,
        #[arg(long, default_value_t = musicgen_interp::probe::DEFAULT_SEED)]
        seed: u64,
        /// Probe-model plugin: built-in name (linear-probe, smartcore-probe) or path to a library.
        #[arg(long, default_value = "linear-probe")]
        probe: String,
        /// The probe plugin's settings as a JSON object, e.g. '{"model": "knn", "k": 5}' (the host
        /// adds `loss` and `epochs` from their flags).
        #[arg(long)]
        settings: Option<String>,
    },
    /// Evaluate probe weights per layer on the saved test split: accuracy, loss, confusion matrix,
    /// a CSV and a PNG plot; names the best layer.
    Evaluate {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        weights_file: PathBuf,
        #[arg(long, default_value_t = 4)]
        num_classes: usize,
        #[arg(long)]
        output_plot: PathBuf,
        /// Folder for the CSVs and the confusion matrices (default: the weights' folder).
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// The split written by train-probes with these weights (default: NAME_split.json beside
        /// NAME_weights.npy); a split written for other weights is refused. Weights that come with
        /// none get training's split, made here and saved as NAME_split.json in the output folder.
        #[arg(long)]
        split: Option<PathBuf>,
        /// mse or ce (default: from the weights file name, `ce_weights.npy` -> ce).
        #[arg(long, value_parser = loss_type)]
        loss_type: Option<String>,
        /// Weights trained elsewhere come without a split: evaluate then makes train-probes'
        /// stratified split of this stream itself (default cond), and says so.
        #[arg(long, visible_alias = "residual-type")]
        stream: Option<musicgen_interp::probe::Stream>,
    },
    /// The probe workflow from one YAML file: extract -> train-probes -> evaluate -> steer towards a
    /// class with the trained probe, and report whether the probe's own prediction moved.
    ProbePipeline {
        config: PathBuf,
    },
    /// DecoderLens: for each layer k = 1..L, generation with the decoder exited after layer k (the
    /// `decoder-lens` plugin; final LayerNorm and heads on its residual, tokens fed back), one WAV per
    /// prompt and layer; the layers' self-similarity; with a judge, NDCG of the prompt's concept per
    /// layer; `--text-layers`: the decoder cross-attending to each text-encoder layer instead.
    DecoderLens(DecoderLensArgs),
    /// Interchange interventions (ISMIR 2024): concept means of every site, then for each (original,
    /// desired) concept pair, prompt and site an adjust / replace intervention on the conditional
    /// rows, scored by an audio classifier against a same-seed baseline. Resumable, shardable.
    Intervene(InterveneArgs),
    /// Write the paper's concept prompt sets (template with moods and tempi) as a prompt set CSV
    /// (`text,label`), usable by `extract --prompts`.
    ConceptPrompts {
        /// Concepts (default: all ten).
        #[arg(long, value_delimiter = ',')]
        concepts: Vec<String>,
        #[arg(long, default_value_t = musicgen_interp::data::concepts::DEFAULT_PROMPTS_PER_CONCEPT, alias = "n_prompts_per_concept")]
        n_prompts_per_concept: usize,
        /// How each concept's prompts are chosen: the seed's enumeration (the first n of 125) or seeded random draws.
        #[arg(long, value_enum, default_value_t = musicgen_interp::data::concepts::PromptSampling::Enumerate)]
        prompt_sampling: musicgen_interp::data::concepts::PromptSampling,
        /// Seed of the random draws (--prompt-sampling random only).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        output: PathBuf,
    },
    /// Run a YAML run config (model, generation, prompts, plugins with their settings, output folder).
    Run {
        config: PathBuf,
    },
    /// List the plugins installed beside this executable (built-ins) with their kind, version and ABI.
    Plugins,
    /// Benchmark: decoder steps/s against transformers in PyTorch on the same weights (same run),
    /// step time against the bytes-moved floor, peak RSS, EnCodec decode speed.
    Bench {
        /// A random-weight bundle (its hf/ folder is what PyTorch runs), e.g. models/small.
        #[arg(long)]
        model: PathBuf,
        /// Clip lengths, seconds.
        #[arg(long, value_delimiter = ',', default_value = "1,10,30", value_parser = positive)]
        durations: Vec<f64>,
        /// Cached positions for the single-step timing.
        #[arg(long, value_delimiter = ',', default_value = "50,500,1500")]
        positions: Vec<usize>,
        /// Skip the PyTorch comparison.
        #[arg(long)]
        no_torch: bool,
    },
    /// Fidelity of one bundle against another (say int8 against fp32): the reference generates
    /// greedily, both run that sequence, and per-layer residual cosine similarity and next-token
    /// agreement are printed.
    Compare {
        /// The bundle to judge (e.g. models/small-int8).
        #[arg(long)]
        model: PathBuf,
        /// The reference bundle (e.g. models/small).
        #[arg(long)]
        reference: PathBuf,
        #[arg(long, default_value = "80s pop track with bassy drums and synth")]
        text: String,
        #[arg(long, default_value_t = 100)]
        steps: usize,
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

/// The judge flags shared by decoder-lens and intervene.
#[derive(Args, Debug)]
struct JudgeArgs {
    /// An audio classifier judging the clips: an ONNX graph (input mono audio [clips, samples]) or a
    /// judge folder with its metadata (e.g. PaSST from onnx/export_passt.py).
    #[arg(long)]
    judge_model: Option<PathBuf>,
    /// Its label map (CSV with a `name` or `display_name` column, in output order); default: the
    /// judge folder's.
    #[arg(long, requires = "judge_model")]
    judge_labels: Option<PathBuf>,
    /// The sample rate the classifier expects; default: the judge folder's.
    #[arg(long, requires = "judge_model")]
    judge_sample_rate: Option<u32>,
}

impl JudgeArgs {
    fn config(self) -> Result<Option<musicgen_interp::judge::JudgeConfig>> {
        Ok(self.judge_model.map(|m| musicgen_interp::judge::JudgeConfig::onnx_given(m, self.judge_labels, self.judge_sample_rate)))
    }
}

/// The model of a seed-B command: --model, or the seed's --model-size.
#[derive(Args, Debug)]
struct ModelArgs {
    /// Bundle folder, checkpoint folder, or hub id.
    #[arg(long, conflicts_with = "model_size")]
    model: Option<String>,
    /// The seed's --model-size: facebook/musicgen-{small,medium,large} from the Hugging Face cache.
    #[arg(long, alias = "model_size", value_parser = ["small", "medium", "large"])]
    model_size: Option<String>,
}

impl ModelArgs {
    fn resolve(self) -> Option<String> {
        self.model.or(self.model_size.map(|size| format!("facebook/musicgen-{size}")))
    }
}

#[derive(Args, Debug)]
struct DecoderLensArgs {
    /// A YAML file with every setting (configs/decoder-lens.yaml); the flags below build one otherwise.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// Text prompt(s) of your own; `--concept` names their concept for NDCG.
    #[arg(long)]
    text: Vec<String>,
    #[arg(long)]
    concept: Option<String>,
    /// Or the paper's prompt sets of these concepts.
    #[arg(long, value_delimiter = ',')]
    concepts: Vec<String>,
    #[arg(long, default_value_t = musicgen_interp::data::concepts::DEFAULT_PROMPTS_PER_CONCEPT, alias = "n_prompts_per_concept")]
    n_prompts_per_concept: usize,
    /// How each concept's prompts are chosen: the seed's enumeration (the first n of 125) or seeded random draws.
    #[arg(long, value_enum, default_value_t = musicgen_interp::data::concepts::PromptSampling::Enumerate)]
    prompt_sampling: musicgen_interp::data::concepts::PromptSampling,
    /// Seconds per clip.
    #[arg(long, default_value_t = 4.0, value_parser = positive)]
    duration: f64,
    /// Also the original DecoderLens: the decoder cross-attends to each text-encoder layer.
    #[arg(long)]
    text_layers: bool,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    judge: JudgeArgs,
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

impl DecoderLensArgs {
    fn config(self) -> Result<musicgen_interp::decoder_lens::DecoderLensConfig> {
        if let Some(path) = &self.config {
            return musicgen_interp::decoder_lens::DecoderLensConfig::load(path);
        }
        let need = |what: &str| Error::Input(format!("decoder-lens needs --{what} (or --config FILE)"));
        Ok(musicgen_interp::decoder_lens::DecoderLensConfig {
            model: self.model.resolve().ok_or_else(|| need("model"))?,
            prompts: self.text,
            concept: self.concept,
            concepts: self.concepts,
            n_prompts_per_concept: self.n_prompts_per_concept,
            prompt_sampling: self.prompt_sampling,
            prompt_seed: 0,
            duration: self.duration,
            seed: self.sampling.seed,
            top_k: self.sampling.top_k,
            temperature: self.sampling.temperature,
            guidance_scale: self.sampling.guidance_scale,
            text_layers: self.text_layers,
            batch_size: 8,
            judge: self.judge.config()?,
            output: self.output_dir.ok_or_else(|| need("output-dir"))?,
        })
    }
}

#[derive(Args, Debug)]
struct InterveneArgs {
    /// A YAML file with every setting (configs/intervene.yaml); the flags below build one otherwise.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// Only pairs whose original concept is this one (name, or the seed's index 0-9 in the paper's
    /// order; -1 = all).
    #[arg(long, alias = "fixed_concept")]
    fixed_concept: Option<String>,
    /// Concepts taking part (default: all ten).
    #[arg(long, value_delimiter = ',')]
    concepts: Vec<String>,
    #[arg(long, default_value_t = musicgen_interp::data::concepts::DEFAULT_PROMPTS_PER_CONCEPT, alias = "n_prompts_per_concept")]
    n_prompts_per_concept: usize,
    /// How each concept's prompts are chosen: the seed's enumeration (the first n of 125) or seeded random draws.
    #[arg(long, value_enum, default_value_t = musicgen_interp::data::concepts::PromptSampling::Enumerate)]
    prompt_sampling: musicgen_interp::data::concepts::PromptSampling,
    /// Reuse the concept means in this folder (refused if another model, prompt set or sampling made
    /// them, or if a concept's are missing); without a folder (the seed's flag), the means cached in
    /// the output folder's means/.
    #[arg(long, alias = "pre_computed_means", num_args = 0..=1, default_missing_value = "", value_parser = path_or_bare)]
    pre_computed_means: Option<PathBuf>,
    /// Write the best and worst intervention's clip for each prompt.
    #[arg(long, alias = "save_extremes")]
    save_extremes: bool,
    /// adjust, replace, or both.
    #[arg(long, value_delimiter = ',', default_value = "adjust,replace")]
    modes: Vec<String>,
    /// Sites such as blocks.3.mlp (default: every component of every layer).
    #[arg(long, value_delimiter = ',')]
    sites: Vec<String>,
    /// Seconds per clip.
    #[arg(long, default_value_t = 4.0, value_parser = positive)]
    duration: f64,
    /// Interventions generated together.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[command(flatten)]
    judge: JudgeArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// This host's share of the run, i/n (a job array's index and size). A sharded run needs the
    /// concept means made first (--means-only) unless --compute-means; an unsharded one makes them.
    #[arg(long, default_value = "0/1")]
    shard: musicgen_interp::data::Shard,
    /// The means phase of a sweep: compute (or check) the concept means only, dealt by concept
    /// over --shard i/n; no baselines, no interventions.
    #[arg(long, conflicts_with = "compute_means")]
    means_only: bool,
    /// Let a sharded run compute missing concept means itself (every shard lacking them would).
    #[arg(long)]
    compute_means: bool,
    /// Print a run's progress and exit: parts done, pending and failed per pair, the failures'
    /// errors, and the time to finish (pending x median part time / shards active); DIR defaults
    /// to the run's output folder (--output-dir or the config's).
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_parser = path_or_bare)]
    status: Option<PathBuf>,
    #[arg(long)]
    output_dir: Option<PathBuf>,
}

impl InterveneArgs {
    fn config(self) -> Result<musicgen_interp::interchange::InterveneConfig> {
        use musicgen_interp::interchange::InterveneConfig;
        if let Some(path) = &self.config {
            return InterveneConfig::load(path);
        }
        let need = |what: &str| Error::Input(format!("intervene needs --{what} (or --config FILE)"));
        let model = self.model.resolve().ok_or_else(|| need("model"))?;
        let fixed_concept = fixed_concept(self.fixed_concept)?;
        let output = self.output_dir.ok_or_else(|| need("output-dir"))?;
        // The seed's bare --pre_computed_means: the means this output folder caches.
        let pre_computed_means = self.pre_computed_means.map(|p| if p.as_os_str().is_empty() { output.join("means") } else { p });
        let judge = self.judge.config()?.ok_or_else(|| need("judge-model (a classifier, or a judge folder such as onnx/export_passt.py writes)"))?;
        Ok(InterveneConfig {
            model,
            concepts: self.concepts,
            fixed_concept,
            n_prompts_per_concept: self.n_prompts_per_concept,
            prompt_sampling: self.prompt_sampling,
            prompt_seed: 0,
            duration: self.duration,
            seed: self.sampling.seed,
            top_k: self.sampling.top_k,
            temperature: self.sampling.temperature,
            guidance_scale: self.sampling.guidance_scale,
            modes: self.modes.iter().map(|m| m.parse()).collect::<Result<_>>()?,
            sites: self.sites,
            batch_size: self.batch_size,
            means_batch_size: 8,
            pre_computed_means,
            save_extremes: self.save_extremes,
            judge,
            output,
        })
    }
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// Bundle folder, transformers checkpoint folder, or hub id (exported once into ./models).
    #[arg(long)]
    model: PathBuf,
    /// Text prompt; repeat for a batch (one clip per prompt).
    #[arg(long, required = true)]
    text: Vec<String>,
    /// An audio file (WAV, MP3, FLAC, Ogg; any rate, mono or stereo) to continue.
    #[arg(long)]
    audio: Option<PathBuf>,
    /// Start of the audio-prompt window, seconds.
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    audio_start: f64,
    /// Length of the audio-prompt window, seconds (default: to the end).
    #[arg(long, value_parser = positive)]
    audio_duration: Option<f64>,
    /// Seconds of new audio (default 8; converted to decoder steps: seconds x frame rate + codebooks - 1).
    #[arg(long, conflicts_with = "steps", value_parser = positive)]
    duration: Option<f64>,
    /// Decoder steps. With K codebooks, the delay pattern staggers codebook k by k positions, so N
    /// steps give N - K + 1 new frames; a sequence too short for the pattern (prompt + N below
    /// 2K - 1 positions, e.g. N < 2K - 2 from text alone) is kept undelayed, as transformers does,
    /// and gives N frames. The seed's `--max-tokens` (new tokens) is this.
    #[arg(long, visible_alias = "max-tokens")]
    steps: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// The WAV to write (with several prompts: NAME_0.wav, NAME_1.wav, ...).
    #[arg(long)]
    output: PathBuf,
    /// How the WAV stores samples: float32 (exact) or pcm16 (plain 16-bit PCM that any reader opens).
    #[arg(long, value_enum, default_value_t = musicgen_interp::audio::WavFormat::Float32)]
    wav_format: musicgen_interp::audio::WavFormat,
    /// Write the generated codes [batch, codebooks, frames] as int64 .npy.
    #[arg(long)]
    save_codes: Option<PathBuf>,
    /// Print the bytes each decoder forward moved between the host and the decoder's memory (the
    /// GPU's under CUDA): the set-up, the prefill, then every step.
    #[arg(long)]
    verbose: bool,
    /// Write every layer's residual stream (conditional and unconditional rows apart) into this folder.
    #[arg(long)]
    save_residuals: Option<PathBuf>,
    /// Reduction of the saved residuals over decoder positions: last, mean or all.
    #[arg(long, default_value = "last")]
    residual_reduction: Reduction,
    /// Steering (the built-in `steering` plugin): probe weights [layers, classes, d_model] as .npy.
    #[arg(long, requires_all = ["target_class", "target_layers", "layer_strengths"])]
    steering_weights: Option<PathBuf>,
    /// The class whose probe direction is added.
    #[arg(long)]
    target_class: Option<usize>,
    /// Layers whose output is steered (0-based; the probe of layer L steers layer L's output).
    #[arg(long, num_args = 1..)]
    target_layers: Vec<usize>,
    /// One strength per target layer (or one for all).
    #[arg(long, num_args = 1.., allow_negative_numbers = true, value_parser = finite_f32)]
    layer_strengths: Vec<f32>,
    /// Steer every N-th decoder step, starting with the prefill.
    #[arg(long, default_value_t = 1)]
    steering_period: u64,
    /// Shift of the steering phase, in steps.
    #[arg(long, default_value_t = 0)]
    offset: u64,
}

/// Sampling flags shared by the generating commands; unset ones take the bundle's defaults.
#[derive(Args, Debug)]
struct SamplingArgs {
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Top-k sampling (1 = greedy).
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long, value_parser = finite_f32)]
    temperature: Option<f32>,
    /// Classifier-free guidance scale (1 = off).
    #[arg(long, value_parser = finite_f32)]
    guidance_scale: Option<f32>,
}

impl SamplingArgs {
    fn resolve(&self, defaults: &musicgen_interp::model::manifest::GenerationDefaults) -> SamplingConfig {
        SamplingConfig {
            guidance_scale: self.guidance_scale.unwrap_or(defaults.guidance_scale),
            top_k: self.top_k.unwrap_or(defaults.top_k),
            temperature: self.temperature.unwrap_or(defaults.temperature),
            seed: self.seed,
        }
    }
}

#[derive(Args, Debug)]
struct ExtractArgs {
    /// Bundle folder, checkpoint folder, or hub id.
    #[arg(long)]
    model: Option<PathBuf>,
    /// A folder with one sub-folder of audio files per class, or a labels.csv (path,label).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, visible_alias = "save-dir")]
    output_dir: PathBuf,
    /// Read the Hugging Face dataset lewtun/music_genres (or --dataset) instead of --data-dir: from
    /// the Hugging Face cache, downloaded into it first when missing and the hub can be reached.
    #[arg(long)]
    lewtun: bool,
    /// The hub dataset read with --lewtun / process-lewtun: lewtun/music_genres, or a copy with its
    /// columns (the seed used roovy54/lewtun_music_genres_modified).
    #[arg(long, value_name = "REPO_ID")]
    dataset: Option<String>,
    /// A prompt set instead of audio: CSV `text,label` or JSON [{"text", "label"}]; each prompt is generated from text alone.
    #[arg(long, conflicts_with_all = ["data_dir", "lewtun"])]
    prompts: Option<PathBuf>,
    /// Keep only these genres (comma-separated), e.g. Jazz,Rock.
    #[arg(long, value_delimiter = ',')]
    genres: Vec<String>,
    /// Label map `name=id,...`; other labels are skipped and counted. Default: Classical=0,
    /// Electronic=1, Rock=2, Jazz=3 for audio; a prompt set's own labels, numbered in order of first
    /// appearance.
    #[arg(long)]
    labels: Option<String>,
    /// Text prompt for every segment; `{genre}` is replaced by its label (the default names none).
    #[arg(long, default_value = musicgen_interp::extract::DEFAULT_PROMPT)]
    prompt_template: String,
    /// Decoder steps generated after each segment (the seed's `--max-tokens`).
    #[arg(long, visible_alias = "max-tokens", default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value = "last")]
    reduction: Reduction,
    #[arg(long, default_value_t = 10.0, value_parser = positive)]
    segment_seconds: f64,
    /// Tracks (and last pieces) shorter than this are skipped; a skipped track is counted and named.
    #[arg(long, default_value_t = 2.0, value_parser = non_negative)]
    min_seconds: f64,
    /// Use at most N tracks, taken evenly across classes (classes take turns, each giving its next
    /// track in id order).
    #[arg(long)]
    max_samples: Option<usize>,
    /// This host's share of the tracks, i/n (dealt round-robin in id order).
    #[arg(long, default_value = "0/1")]
    shard: musicgen_interp::data::Shard,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Only merge the segments already in --output-dir (after all shards finished).
    #[arg(long)]
    merge: bool,
    /// Print the extraction's progress in --output-dir and exit: tracks done, pending and failed per
    /// label, the failures' errors, and the time to finish from the tracks' own timings.
    #[arg(long, conflicts_with = "merge")]
    status: bool,
}

impl GenerateArgs {
    /// The steering plugin's settings from the seed-style flags, if any were given.
    fn steering_settings(&self) -> Option<serde_json::Value> {
        let weights = self.steering_weights.as_ref()?;
        Some(serde_json::json!({
            "weights": weights,
            "target_class": self.target_class,
            "layers": self.target_layers,
            "strengths": self.layer_strengths,
            "period": self.steering_period,
            "offset": self.offset,
        }))
    }
}

/// Every option takes negative numbers as values, so `--duration -1` reaches its range check (and
/// a message naming the flag) instead of clap's "unexpected argument '-1'"; a single-valued float
/// option takes any value starting with a hyphen (`-inf`), which its value parser then judges.
fn negatives_as_values(cmd: clap::Command) -> clap::Command {
    use std::any::TypeId;
    cmd.mut_args(|a| {
        let float = { let t = a.get_value_parser().type_id(); t == TypeId::of::<f64>() || t == TypeId::of::<f32>() };
        if float && a.get_num_args().is_none() { a.allow_hyphen_values(true) } else { a.allow_negative_numbers(true) }
    })
    .mut_subcommands(negatives_as_values)
}

/// A path, or empty for a flag given bare (clap's own path parser refuses an empty value).
fn path_or_bare(s: &str) -> std::result::Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

/// `--loss-type`: mse or ce; the seed's `cross_entropy` is ce.
fn loss_type(s: &str) -> std::result::Result<String, String> {
    match s {
        "mse" => Ok("mse".into()),
        "ce" | "cross_entropy" => Ok("ce".into()),
        _ => Err("use mse or ce (the seed's cross_entropy is ce)".into()),
    }
}

/// The seed's `--fixed_concept`: an index 0-9 in the paper's order (-1 = every concept) becomes the
/// concept's name; a name is kept as it is (checked with the other concepts).
fn fixed_concept(given: Option<String>) -> Result<Option<String>> {
    use musicgen_interp::data::concepts;
    let Some(c) = given else { return Ok(None) };
    match c.trim().parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(i) => usize::try_from(i).ok().and_then(|i| concepts::all().get(i).map(|s| s.to_string())).map(Some).ok_or_else(|| {
            let order: Vec<String> = concepts::all().iter().enumerate().map(|(i, n)| format!("{i} {n}")).collect();
            Error::Input(format!("--fixed-concept {c}: give a concept name, or the seed's index 0-{} ({}) or -1 for all", concepts::all().len() - 1, order.join(", ")))
        }),
        Err(_) => Ok(Some(c)),
    }
}

/// A number that is finite (clap names the flag and the value in its error).
fn finite_f64(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| "not a number".to_string())?;
    if v.is_finite() { Ok(v) } else { Err("not a finite number (NaN and infinities are refused)".into()) }
}

fn finite_f32(s: &str) -> std::result::Result<f32, String> {
    let v = finite_f64(s)?;
    if v.abs() > f32::MAX as f64 {
        return Err("out of range for a 32-bit float".into());
    }
    Ok(v as f32)
}

/// Seconds and the like: finite and > 0.
fn positive(s: &str) -> std::result::Result<f64, String> {
    let v = finite_f64(s)?;
    if v > 0.0 { Ok(v) } else { Err("must be greater than 0".into()) }
}

/// A start time and the like: finite and >= 0.
fn non_negative(s: &str) -> std::result::Result<f64, String> {
    let v = finite_f64(s)?;
    if v >= 0.0 { Ok(v) } else { Err("must be 0 or more".into()) }
}

fn main() -> ExitCode {
    let matches = negatives_as_values(Cli::command()).get_matches();
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
        Command::Run { config } => Some(RunConfig::load(config)?),
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
        return list_plugins();
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
        Command::Info { model, placement } => info(&runtime, model, verify, placement.then_some(&options)),
        Command::Inspect { model, text, save } => inspect(&runtime, model, verify, &text, save),
        Command::Generate(args) => generate(&runtime, verify, args, Vec::new(), &|_, _| Ok(())),
        Command::Extract(args) => extract(&runtime, verify, args),
        Command::ProcessLewtun(mut args) => {
            args.lewtun = true;
            extract(&runtime, verify, args)
        }
        Command::TrainProbes { data_dir, output_dir, num_classes, loss_type, epochs, stream, test_fraction, seed, probe, settings } => {
            musicgen_interp::store::check_writable(&output_dir, true)?;
            let options = musicgen_interp::probe::TrainOptions { num_classes, loss: loss_type.clone(), epochs, stream, test_fraction, seed, probe };
            let bar = indicatif::ProgressBar::new(0);
            let metrics = musicgen_interp::probe::train_with(&data_dir, &output_dir, &options, settings.as_deref(), |i, n| {
                bar.set_length(n as u64);
                bar.set_position(i as u64)
            })?;
            bar.finish_and_clear();
            for m in &metrics {
                println!("layer {:>3}  test accuracy {:.4}  test loss {:.6}", m.layer, m.accuracy, m.loss);
            }
            let best = musicgen_interp::probe::best_layer(&metrics);
            let probes = if output_dir.join(format!("{loss_type}_probe.json")).is_file() && !output_dir.join(format!("{loss_type}_weights.npy")).is_file() {
                format!("{loss_type}_probe.json (the probes' own states in {loss_type}_probe/)")
            } else {
                format!("{loss_type}_weights.npy")
            };
            println!("best layer {best}; wrote {}/{probes}, {loss_type}_metrics.json, {loss_type}_split.json", output_dir.display());
            Ok(())
        }
        Command::Evaluate { data_dir, weights_file, num_classes, output_plot, output_dir, split, loss_type, stream } => {
            // Without --split, weights that come with none (trained elsewhere) get training's split.
            let fallback = split.is_none().then_some(musicgen_interp::probe::SplitRule { num_classes, stream });
            let split = split.unwrap_or_else(|| {
                // NAME_split.json beside NAME_weights.npy; an older training wrote split.json.
                let own = musicgen_interp::probe::split_path_for(&weights_file);
                let legacy = weights_file.with_file_name("split.json");
                if !own.is_file() && legacy.is_file() { legacy } else { own }
            });
            let kind = loss_type.unwrap_or_else(|| {
                let name = weights_file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if name.starts_with("ce") { "ce".into() } else { "mse".into() }
            });
            let dir = output_dir.unwrap_or_else(|| weights_file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")).to_path_buf());
            musicgen_interp::store::check_writable(&output_plot, false)?;
            musicgen_interp::store::check_writable(&dir.join("x"), false)?;
            let e = musicgen_interp::probe::evaluate_with(&data_dir, &weights_file, &split, &kind, fallback.as_ref())?;
            if e.split.num_classes != num_classes {
                return Err(Error::Input(format!("--num-classes {num_classes}, but the split was made for {}", e.split.num_classes)));
            }
            let stem = musicgen_interp::probe::output_stem(&weights_file);
            if e.made_split {
                let path = dir.join(format!("{stem}_split.json"));
                musicgen_interp::probe::write_split(&path, &e.split)?;
                println!("evaluated on a split made here (none came with the weights), saved as {}", path.display());
            }
            musicgen_interp::probe::write_evaluation(&dir, &stem, &e)?;
            musicgen_interp::probe::plot(&output_plot, &e.metrics, &kind, e.best)?;
            for m in &e.metrics {
                println!("layer {:>3}  accuracy {:.4}  loss {:.6}", m.layer, m.accuracy, m.loss);
            }
            println!(
                "best layer {} (accuracy {:.4}) on {} test samples; wrote {} and {stem}_evaluation.csv, {stem}_confusion.npy, {stem}_confusion_best.csv in {}",
                e.best,
                e.metrics[e.best].accuracy,
                e.split.test.len(),
                output_plot.display(),
                dir.display()
            );
            Ok(())
        }
        Command::ProbePipeline { config } => {
            let config = musicgen_interp::pipeline::PipelineConfig::load(&config)?;
            musicgen_interp::store::check_writable(&config.output, true)?;
            let mut m = load(&runtime, PathBuf::from(&config.model), verify)?;
            musicgen_interp::pipeline::run(&mut m, &config, runtime.library(), |line| println!("{line}")).map(|_| ())
        }
        Command::Intervene(args) => intervene(&runtime, verify, args),
        Command::DecoderLens(args) => decoder_lens(&runtime, verify, args),
        Command::ConceptPrompts { concepts, n_prompts_per_concept, prompt_sampling, seed, output } => {
            use musicgen_interp::data::concepts;
            let names: Vec<&str> = if concepts.is_empty() { concepts::all() } else { concepts.iter().map(|c| concepts::concept(c)).collect::<Result<_>>()? };
            concepts::check_prompt_settings(n_prompts_per_concept, prompt_sampling, seed)?;
            musicgen_interp::store::check_writable(&output, false)?;
            let mut csv = String::from("text,label\n");
            for c in &names {
                for p in concepts::prompts(c, n_prompts_per_concept, prompt_sampling, seed)? {
                    csv.push_str(&format!("\"{p}\",{c}\n"));
                }
            }
            musicgen_interp::store::write_atomic(&output, csv.as_bytes())?;
            println!("wrote {} prompts for {} concepts to {}", names.len() * n_prompts_per_concept, names.len(), output.display());
            Ok(())
        }
        Command::Run { .. } => run_config_file(&runtime, verify, run_config.expect("parsed above")),
        Command::Plugins => unreachable!("handled before the runtime starts"),
        Command::Compare { model, reference, text, steps } => {
            let mut candidate = load(&runtime, model, verify)?;
            let mut reference = load(&runtime, reference, verify)?;
            let f = musicgen_interp::bench::fidelity(&mut candidate, &mut reference, &text, steps)?;
            println!("{:<28} {:>10} {:>12} {:>12}", "hook point", "cosine", "delta cosine", "delta error");
            for l in 0..f.residual_cosine.len() {
                println!("{:<28} {:>10.6} {:>12.6} {:>12.6}", HookPoint::ResidPost(l).to_string(), f.residual_cosine[l], f.delta_cosine[l], f.delta_error[l]);
            }
            let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
            println!(
                "over {} positions: residual cosine min {:.6}, next-token agreement {:.2}%",
                f.positions,
                min(&f.residual_cosine),
                100.0 * f.token_agreement
            );
            println!(
                "what each layer adds (hook_resid_post - hook_resid_pre): cosine min {:.6}, relative error max {:.6}; logits relative error {:.6}",
                min(&f.delta_cosine),
                f.delta_error.iter().copied().fold(0.0, f64::max),
                f.logits_error
            );
            Ok(())
        }
        Command::Bench { model, durations, positions, no_torch } => {
            let mut m = load(&runtime, model, verify)?;
            let threads = if cli.runtime.threads > 0 { cli.runtime.threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
            let options = musicgen_interp::bench::BenchOptions { durations, positions, torch: !no_torch, threads };
            eprintln!("provider {}, {} threads", runtime.describe(), threads);
            let dir = m.bundle.dir.clone();
            musicgen_interp::bench::run(&mut m, &dir, &options).map(|_| ())
        }
    }
}

/// `--dry-run`: the device and the command's settings as resolved (a YAML config's loaded and
/// checked, the seeds' flags converted), printed; nothing is loaded, run or written.
fn dry_run(device: Device, command: Command) -> Result<()> {
    println!("device: {device:?}");
    match command {
        Command::Intervene(args) => println!("{:#?}", args.config()?),
        Command::DecoderLens(args) => println!("{:#?}", args.config()?),
        Command::Run { config } => println!("{:#?}", RunConfig::load(&config)?),
        other => println!("{other:#?}"),
    }
    Ok(())
}

/// Loads `--model`: a bundle folder, or a checkpoint folder or hub id exported once into the models folder.
fn load(runtime: &Runtime, model: PathBuf, verify: Verify) -> Result<MusicGen> {
    let model = musicgen_interp::model::hub::resolve(&model.to_string_lossy(), &musicgen_interp::model::hub::models_dir())?;
    let start = std::time::Instant::now();
    let m = MusicGen::load(runtime, &model, verify)?;
    eprintln!("loaded {} in {:.2} s on {}", model.display(), start.elapsed().as_secs_f64(), runtime.describe());
    if m.manifest().source.kind == "random" {
        eprintln!("note: this bundle has random weights (a demo model): its clips and scores test the plumbing, they are not findings about MusicGen");
    }
    Ok(m)
}

fn info(runtime: &Runtime, model: PathBuf, verify: Verify, placement: Option<&RuntimeOptions>) -> Result<()> {
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

/// `generate`: checks every output location, loads the plugins and the model and checks the
/// plugins' hook points against it, calls `ready` with the resolved steps and sampling (`run`
/// writes its resolved config there), generates, and commits every output file together.
fn generate(
    runtime: &Runtime,
    verify: Verify,
    args: GenerateArgs,
    mut plugins: Vec<MethodPlugin>,
    ready: &dyn Fn(usize, &musicgen_interp::generate::SamplingConfig) -> Result<()>,
) -> Result<()> {
    // Check every output location before the long work, so no run ends without its files.
    for path in [Some(&args.output), args.save_codes.as_ref()].into_iter().flatten() {
        musicgen_interp::store::check_writable(path, false)?;
    }
    if let Some(dir) = &args.save_residuals {
        musicgen_interp::store::check_writable(dir, true)?;
    }
    if let Some(settings) = args.steering_settings() {
        plugins.push(MethodPlugin::load("steering", &settings.to_string())?);
    }
    // The audio prompt is decoded (and refused if unusable) before the model loads.
    let prompt_audio = args.audio.as_ref().map(|path| musicgen_interp::audio::read(path)).transpose()?;
    let mut m = load(runtime, args.model.clone(), verify)?;
    for p in &plugins {
        p.check_points(m.decoder.num_layers())?;
    }
    let man = m.manifest().clone();
    let sampling = args.sampling.resolve(&man.generation);
    let steps = musicgen_interp::api::steps_for(&man, args.steps, args.duration)?;
    let b = args.text.len();
    if args.text.iter().any(|t| t.trim().is_empty()) {
        return Err(Error::Input("empty text prompt: describe the music to generate".into()));
    }
    let audio_codes = match (&args.audio, &prompt_audio) {
        (Some(path), Some(audio)) => {
            let rate = man.audio.sample_rate;
            let wave = musicgen_interp::audio::window(audio, path, rate, args.audio_start, args.audio_duration)?;
            let wave = ndarray::Array3::from_shape_vec((1, 1, wave.len()), wave).expect("shape");
            let codes = m.encodec.encode(wave.view())?;
            eprintln!("audio prompt: {} frames from {}", codes.shape()[2], path.display());
            let views: Vec<_> = (0..b).map(|_| codes.view()).collect();
            Some(ndarray::concatenate(Axis(0), &views).expect("rows"))
        }
        _ => None,
    };
    let prompt_frames = audio_codes.as_ref().map_or(0, |c| c.shape()[2]);
    let request = GenerationRequest { prompts: args.text.clone(), audio_codes, max_new_tokens: steps, sampling, ..Default::default() };
    ready(steps, &request.sampling)?;
    let mut capture = args.save_residuals.as_ref().map(|_| ResidualCapture::new(m.decoder.num_layers(), args.residual_reduction));
    let bar = indicatif::ProgressBar::new(steps as u64).with_style(
        indicatif::ProgressStyle::with_template("{spinner} decoding {pos}/{len} steps [{elapsed_precise}] {per_sec} eta {eta}")
            .expect("template"),
    );
    let info = serde_json::json!({
        "output": args.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")),
        "prompts": args.text,
        "steps": steps,
        "seed": args.sampling.seed,
    })
    .to_string();
    for p in plugins.iter_mut() {
        p.run_start(&info)?;
    }
    let mut hooks: Vec<&mut dyn Hooks> = plugins.iter_mut().map(|p| p as &mut dyn Hooks).collect();
    if let Some(c) = capture.as_mut() {
        hooks.push(c);
    }
    let out = musicgen_interp::generate::generate(&mut m, &request, &mut hooks, |_, _| bar.inc(1));
    drop(hooks);
    bar.finish_and_clear();
    let out = out?;
    let decode_start = std::time::Instant::now();
    let wave = m.encodec.decode(out.codes.view())?;
    let codec_s = decode_start.elapsed().as_secs_f64();
    let rate = man.audio.sample_rate;
    // Every output is written to a temporary first and renamed into place together at the end.
    let mut staged = musicgen_interp::store::Staged::new();
    let mut written = Vec::new();
    for i in 0..b {
        let path = if b == 1 { args.output.clone() } else { numbered(&args.output, i) };
        let samples: Vec<f32> = wave.slice(s![i, 0, ..]).to_vec();
        staged.stage_with(&path, musicgen_interp::audio::wav_writer(&samples, rate, args.wav_format))?;
        written.push(format!("wrote {} ({:.2} s)", path.display(), samples.len() as f64 / rate as f64));
    }
    if let Some(path) = &args.save_codes {
        staged.stage_with(path, musicgen_interp::store::npy_writer(&out.codes))?;
    }
    if let (Some(dir), Some(capture)) = (&args.save_residuals, &capture) {
        save_residuals(&mut staged, dir, capture, b, request.sampling.guided())?;
    }
    staged.commit()?;
    written.iter().for_each(|line| eprintln!("{line}"));
    for p in plugins.iter_mut() {
        p.run_end()?;
    }
    let secs = out.decode_time.as_secs_f64();
    let audio_s = wave.shape()[2] as f64 / rate as f64;
    // The clip starts with the audio prompt's own seconds: they were encoded, not generated.
    let generated_s = audio_s - prompt_frames as f64 / man.audio.frame_rate;
    println!(
        "{} steps in {:.2} s ({:.2} steps/s), EnCodec decode {:.2} s; {:.2} s of audio per clip ({:.2} s generated), real-time factor {:.3} (compute seconds per generated second of audio; {})",
        out.steps,
        secs,
        out.steps as f64 / secs,
        codec_s,
        audio_s,
        generated_s,
        (secs + codec_s) / (generated_s * b as f64),
        runtime.provider()
    );
    if args.verbose {
        println!("host <-> decoder memory: set-up {}", out.setup_traffic);
        for (i, t) in out.traffic.iter().enumerate() {
            println!("  {} {t}", if i == 0 { "prefill:".to_string() } else { format!("step {i}:") });
        }
    }
    Ok(())
}

fn numbered(path: &std::path::Path, i: usize) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned()).unwrap_or_else(|| "wav".into());
    path.with_file_name(format!("{stem}_{i}.{ext}"))
}

/// `residuals_cond.npy` and (with guidance) `residuals_uncond.npy`, `[points, batch, (positions,) d_model]`,
/// and `residuals.json` naming the points and shapes.
fn save_residuals(staged: &mut musicgen_interp::store::Staged, dir: &std::path::Path, capture: &ResidualCapture, batch: usize, guided: bool) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), source: e })?;
    let all = capture.result()?;
    let mut files = serde_json::Map::new();
    let halves: &[(&str, std::ops::Range<usize>)] =
        if guided { &[("cond", 0..batch), ("uncond", batch..2 * batch)] } else { &[("cond", 0..batch)] };
    for (name, rows) in halves {
        let part = all.slice_axis(Axis(1), ndarray::Slice::from(rows.clone())).to_owned();
        let file = format!("residuals_{name}.npy");
        staged.stage_with(&dir.join(&file), musicgen_interp::store::npy_writer(&part))?;
        files.insert((*name).into(), serde_json::json!({"file": file, "shape": part.shape()}));
    }
    let sidecar = serde_json::json!({
        "points": capture.points().iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "axes": if all.ndim() == 4 { "[point, batch, position, d_model]" } else { "[point, batch, d_model]" },
        "arrays": files,
    });
    staged.stage(&dir.join("residuals.json"), serde_json::to_string_pretty(&sidecar).expect("json").as_bytes())
}

/// `run CONFIG.yaml`: the same path as `generate`, with the config's plugins; the output folder
/// and the resolved config are written once the plugins have loaded and the model has resolved and
/// accepted their hook points.
fn run_config_file(runtime: &Runtime, verify: Verify, config: RunConfig) -> Result<()> {
    let out = &config.output;
    musicgen_interp::store::check_writable(out, true)?;
    let plugins = config
        .plugins
        .iter()
        .map(|p| {
            let json = p.settings_json()?;
            MethodPlugin::load(&p.plugin, &json.text).map_err(|e| json.explain(e, p.origin.as_ref()))
        })
        .collect::<Result<Vec<_>>>()?;
    for p in &plugins {
        eprintln!("plugin {} {} at {}", p.name(), p.version(), p.points().iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "));
    }
    let g = &config.generation;
    let args = GenerateArgs {
        model: PathBuf::from(&config.model),
        text: config.prompts.clone(),
        audio: config.audio.as_ref().map(|a| a.path.clone()),
        audio_start: config.audio.as_ref().map_or(0.0, |a| a.start),
        audio_duration: config.audio.as_ref().and_then(|a| a.duration),
        duration: g.duration,
        steps: g.steps,
        sampling: SamplingArgs { seed: config.seed, top_k: g.top_k, temperature: g.temperature, guidance_scale: g.guidance_scale },
        output: out.join("clip.wav"),
        wav_format: config.wav_format,
        save_codes: config.save_codes.then(|| out.join("codes.npy")),
        verbose: false,
        save_residuals: None,
        residual_reduction: Reduction::Last,
        steering_weights: None,
        target_class: None,
        target_layers: Vec::new(),
        layer_strengths: Vec::new(),
        steering_period: 1,
        offset: 0,
    };
    // Every setting as the run used it, the bundle's defaults filled in, so it can be repeated exactly.
    let ready = |steps: usize, sampling: &musicgen_interp::generate::SamplingConfig| {
        let mut resolved = config.clone();
        let g = &mut resolved.generation;
        (g.steps, g.top_k, g.temperature, g.guidance_scale) = (Some(steps), Some(sampling.top_k), Some(sampling.temperature), Some(sampling.guidance_scale));
        // The write makes the run's folder (store::Staged creates missing folders).
        musicgen_interp::store::write_atomic(&out.join("config.resolved.yaml"), resolved.to_yaml().as_bytes())
    };
    generate(runtime, verify, args, plugins, &ready)
}

fn list_plugins() -> Result<()> {
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

fn extract(runtime: &Runtime, verify: Verify, args: ExtractArgs) -> Result<()> {
    use musicgen_interp::{data, extract};
    if args.status {
        print!("{}", extract::status(&args.output_dir)?);
        return Ok(());
    }
    musicgen_interp::store::check_writable(&args.output_dir, true)?;
    if !args.merge {
        let need = |what: &str| Error::Input(format!("extract needs --{what} (or --merge to join finished segments)"));
        let model_spec = args.model.clone().ok_or_else(|| need("model"))?;
        let given = args.labels.as_deref().map(data::LabelMap::parse).transpose()?;
        let labels = given.clone().unwrap_or_default();
        let genres = (!args.genres.is_empty()).then_some(args.genres.as_slice());
        let skipped_what = if args.prompts.is_some() { "prompt(s)" } else { "file(s)" };
        if let (Some(repo), false) = (&args.dataset, args.lewtun) {
            return Err(Error::Input(format!("--dataset {repo} is a hub dataset: read it with --lewtun (or process-lewtun)")));
        }
        let mut scan = if let Some(prompts) = &args.prompts {
            let (scan, labels) = data::scan_prompts(prompts, given.as_ref())?;
            if given.is_none() {
                eprintln!("classes from the prompt set's labels: {labels}");
            }
            scan
        } else if args.lewtun {
            data::lewtun::scan(&data::lewtun::files(args.dataset.as_deref().unwrap_or(data::lewtun::REPO))?, &labels, genres)?
        } else {
            let mut scan = data::scan_folder(&args.data_dir.clone().ok_or_else(|| need("data-dir"))?, &labels)?;
            if let Some(keep) = genres {
                scan.items.retain(|i| keep.iter().any(|g| g.eq_ignore_ascii_case(&i.label_name)));
            }
            scan
        };
        if scan.items.is_empty() {
            return Err(Error::Input("no labelled tracks left to extract (check --genres and --labels)".into()));
        }
        for (name, n) in &scan.unknown_labels {
            eprintln!("skipped {n} {skipped_what} labelled {name:?}: not in the label map");
        }
        if let Some(n) = args.max_samples {
            scan.keep_stratified(n);
        }
        let mut m = load(runtime, model_spec.clone(), verify)?;
        let sampling = args.sampling.resolve(&m.manifest().generation);
        let settings = extract::ExtractSettings {
            model: model_spec.display().to_string(),
            segment_seconds: args.segment_seconds,
            min_seconds: args.min_seconds,
            prompt_template: args.prompt_template.clone(),
            steps: args.steps,
            reduction: args.reduction,
            guidance_scale: sampling.guidance_scale,
            top_k: sampling.top_k,
            temperature: sampling.temperature,
            seed: sampling.seed,
        };
        let owned = scan.items.iter().enumerate().filter(|(i, _)| args.shard.owns(*i)).count();
        let bar = indicatif::ProgressBar::new_spinner().with_message(format!("{owned} tracks of shard {}/{}", args.shard.index, args.shard.count));
        let report = extract::extract(&mut m, &scan, &args.output_dir, &settings, args.shard, |key| {
            bar.set_message(key.to_string());
            bar.inc(1)
        })?;
        bar.finish_and_clear();
        for (id, why) in &report.failed {
            eprintln!("skipped {id}: {why}");
        }
        println!(
            "{} segments extracted, {} already done, {} tracks unusable, {} {skipped_what} with unknown labels",
            report.extracted,
            report.already_done,
            report.failed.len(),
            scan.unknown_labels.values().sum::<usize>()
        );
        if args.shard.count > 1 {
            println!("shard {}/{} done; when every shard is, run `extract --merge --output-dir {}`", args.shard.index, args.shard.count, args.output_dir.display());
            return Ok(());
        }
    }
    let merged = extract::merge(&args.output_dir)?;
    println!("merged {} segments: residuals_cond.npy {:?}", merged.labels.len(), merged.cond.shape());
    Ok(())
}

fn decoder_lens(runtime: &Runtime, verify: Verify, args: DecoderLensArgs) -> Result<()> {
    let config = args.config()?;
    config.prompt_set()?; // prompts or concepts, checked before anything loads
    musicgen_interp::store::check_writable(&config.output, true)?;
    let mut judge = match &config.judge {
        Some(j) => Some(musicgen_interp::judge::Judge::load(j, &config.judged_concepts()?)?),
        None => None,
    };
    let mut m = load(runtime, PathBuf::from(&config.model), verify)?;
    let bar = indicatif::ProgressBar::new_spinner();
    let report = musicgen_interp::decoder_lens::run(&mut m, judge.as_mut(), &config, |what| {
        bar.set_message(what.to_string());
        bar.tick()
    });
    bar.finish_and_clear();
    let report = report?;
    let layers = report.self_similarity.nrows();
    println!("{} clips in {}; self-similarity of {layers} layers in self_similarity.npy/.png", report.clips, config.output.display());
    if let Some(by_layer) = &report.ndcg_by_layer {
        for (k, v) in by_layer.iter().enumerate() {
            println!("exit after layer {k:>3}: NDCG {v:.4}");
        }
    }
    if let Some(by_text) = &report.ndcg_by_text_layer {
        for (j, v) in by_text.iter().enumerate() {
            println!("text encoder layer {j:>3}: NDCG {v:.4}");
        }
    }
    Ok(())
}

fn intervene(runtime: &Runtime, verify: Verify, args: InterveneArgs) -> Result<()> {
    use musicgen_interp::interchange::{Interchange, MeansPolicy};
    let shard = args.shard;
    if let Some(dir) = &args.status {
        let dir = match (dir.as_os_str().is_empty(), &args.config, &args.output_dir) {
            (false, _, _) => dir.clone(),
            (true, Some(path), _) => musicgen_interp::interchange::InterveneConfig::load(path)?.output,
            (true, None, Some(out)) => out.clone(),
            (true, None, None) => return Err(Error::Input("intervene --status needs a folder: --status DIR, or with --config FILE / --output-dir DIR".into())),
        };
        print!("{}", musicgen_interp::interchange::status(&dir)?);
        return Ok(());
    }
    let (means_only, policy) = (args.means_only, MeansPolicy::for_run(shard, args.compute_means));
    let config = args.config()?;
    musicgen_interp::store::check_writable(&config.output, true)?;
    let needed = config.concepts()?;
    let mut judge = musicgen_interp::judge::Judge::load(&config.judge, &needed)?;
    let mut m = load(runtime, PathBuf::from(&config.model), verify)?;
    let mut run = Interchange::new(&mut m, &mut judge, config)?;
    let pairs = run.pairs().len();
    eprintln!("{pairs} concept pair{}", if pairs == 1 { "" } else { "s" });
    let bar = indicatif::ProgressBar::new_spinner();
    let progress = |what: &str| {
        bar.set_message(what.to_string());
        bar.tick()
    };
    let report = if means_only { run.means_only(shard, progress) } else { run.run_with(shard, policy, progress) };
    bar.finish_and_clear();
    let report = report?;
    if means_only {
        println!(
            "concept means: {} computed, {} already there, {} belong to other shards (dealt by concept over --shard {}/{})",
            report.means_computed, report.means_loaded, report.means_left_to_other_shards, shard.index, shard.count
        );
        return Ok(());
    }
    println!(
        "concept means: {} computed, {} loaded; intervention batches: {} run, {} already done, {} belong to other shards, {} failed parts of other shards retried",
        report.means_computed, report.means_loaded, report.units_done, report.units_skipped, report.units_left_to_other_shards, report.units_retried
    );
    if !report.units_failed.is_empty() {
        for (part, why) in &report.units_failed {
            eprintln!("failed: {part}: {why}");
        }
        return Err(Error::Runtime(format!(
            "{} part(s) failed (recorded beside them as *.failed.json; `intervene --status` lists them); rerun any shard to retry them",
            report.units_failed.len()
        )));
    }
    if report.merged {
        let whose = if report.units_left_to_other_shards > 0 { "every shard's batches are done" } else { "every batch is done" };
        println!("{whose}: wrote results/, summary.csv and plots/");
    } else {
        println!("results are merged when every shard is done (run any shard again to merge)");
    }
    Ok(())
}
