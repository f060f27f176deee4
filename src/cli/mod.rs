//! The sub-commands of the `musicgen-interp` binary: each module holds a command's flags (clap) and
//! the function that runs it over the library; `main.rs` parses and dispatches.

pub mod bench;
pub mod decoder_lens;
pub mod extract;
pub mod generate;
pub mod info;
pub mod intervene;
pub mod probes;
pub mod prompts;

use std::path::PathBuf;

use clap::Args;

use musicgen_interp::model::{MusicGen, Verify};
use musicgen_interp::runtime::{Device, Runtime};
use musicgen_interp::Result;

/// How the graphs run: the flags of the commands that load a model. Given before the sub-command
/// name they are taken by every command (`--device cpu train-probes ...` as before); after it, only a
/// command that loads a model lists and takes them ([`WithRuntime`]).
#[derive(Args, Clone, Debug, Default)]
pub struct RuntimeArgs {
    /// Where the graphs run: cpu, cuda, or auto (CUDA when available, else CPU).
    #[arg(long)]
    pub device: Option<Device>,
    /// Threads of onnxruntime's global pool (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// The onnxruntime shared library (default: $MUSICGEN_INTERP_ORT_LIB, $ORT_DYLIB_PATH, or the project's .venv).
    #[arg(long)]
    pub ort_lib: Option<PathBuf>,
    /// Hash every bundle file again on load. Without it, a file hashed once is trusted while its
    /// size and modification date are unchanged (recorded in the bundle's .verified.json), so an
    /// edit that keeps both goes unseen until this flag is given.
    #[arg(long)]
    pub verify_all: bool,
    /// Let onnxruntime's worker threads sleep between operators instead of spinning (slower steps,
    /// less CPU burnt while waiting).
    #[arg(long)]
    pub no_spin: bool,
    /// On CPU, run the decoder's plain graphs (onnxruntime's own operators) instead of the bundle's
    /// CPU copies, built from this project's streaming matmul, attention and intervention operators.
    #[arg(long)]
    pub plain_graphs: bool,
    /// The seed's `--gpus N`: more than 0 runs on CUDA (`--device cuda`; one GPU per process here,
    /// `--shard i/n` splits a run over several), 0 on the CPU (`--device cpu`).
    #[arg(long, conflicts_with = "device")]
    pub gpus: Option<u32>,
}

impl RuntimeArgs {
    /// These flags (given before the sub-command name) with `after`'s (given after it) taking
    /// precedence; `--gpus` on one side and `--device` on the other conflict, as on one side.
    pub fn with(self, after: Option<&RuntimeArgs>) -> std::result::Result<RuntimeArgs, clap::Error> {
        let Some(a) = after else { return Ok(self) };
        let merged = RuntimeArgs {
            device: a.device.or(self.device),
            threads: if a.threads != 0 { a.threads } else { self.threads },
            ort_lib: a.ort_lib.clone().or(self.ort_lib),
            verify_all: a.verify_all || self.verify_all,
            no_spin: a.no_spin || self.no_spin,
            plain_graphs: a.plain_graphs || self.plain_graphs,
            gpus: a.gpus.or(self.gpus),
        };
        if merged.device.is_some() && merged.gpus.is_some() {
            let message = "the argument '--gpus <GPUS>' cannot be used with '--device <DEVICE>'";
            return Err(clap::Error::raw(clap::error::ErrorKind::ArgumentConflict, message));
        }
        Ok(merged)
    }
}

/// A command's own flags and the runtime flags, which a command that loads a model takes after its
/// name too. Prints (`--dry-run`) as the command's own flags.
#[derive(Args)]
pub struct WithRuntime<T: Args> {
    #[command(flatten)]
    pub args: T,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

impl<T: Args + std::fmt::Debug> std::fmt::Debug for WithRuntime<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.args.fmt(f)
    }
}

/// The judge flags shared by decoder-lens and intervene.
#[derive(Args, Debug)]
pub struct JudgeArgs {
    /// An audio classifier judging the clips: an ONNX graph (input mono audio [clips, samples]) or a
    /// judge folder with its metadata (e.g. PaSST from onnx/export_passt.py).
    #[arg(long)]
    pub judge_model: Option<PathBuf>,
    /// Its label map (CSV with a `name` or `display_name` column, in output order); default: the
    /// judge folder's.
    #[arg(long, requires = "judge_model")]
    pub judge_labels: Option<PathBuf>,
    /// The sample rate the classifier expects; default: the judge folder's.
    #[arg(long, requires = "judge_model")]
    pub judge_sample_rate: Option<u32>,
}

impl JudgeArgs {
    pub fn config(self) -> Result<Option<musicgen_interp::judge::JudgeConfig>> {
        Ok(self.judge_model.map(|m| musicgen_interp::judge::JudgeConfig::onnx_given(m, self.judge_labels, self.judge_sample_rate)))
    }
}

/// The paper's concept prompt sets: which concepts, how many prompts each, and how they are chosen
/// (`intervene`, `decoder-lens`, `concept-prompts`).
#[derive(Args, Debug)]
pub struct PromptSetArgs {
    /// The paper's concepts whose prompt sets are used (intervene, concept-prompts: all ten by
    /// default; decoder-lens: instead of --text).
    #[arg(long, value_delimiter = ',')]
    pub concepts: Vec<String>,
    /// Prompts per concept.
    #[arg(long, default_value_t = musicgen_interp::data::concepts::DEFAULT_PROMPTS_PER_CONCEPT, alias = "n_prompts_per_concept")]
    pub n_prompts_per_concept: usize,
    /// How each concept's prompts are chosen: the seed's enumeration (the first n of 125) or seeded random draws.
    #[arg(long, value_enum, default_value_t = musicgen_interp::data::concepts::PromptSampling::Enumerate)]
    pub prompt_sampling: musicgen_interp::data::concepts::PromptSampling,
}

/// The model of a seed-B command: --model, or the seed's --model-size.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Bundle folder, checkpoint folder, or hub id.
    #[arg(long, conflicts_with = "model_size")]
    pub model: Option<String>,
    /// The seed's --model-size: facebook/musicgen-{small,medium,large} from the Hugging Face cache.
    #[arg(long, alias = "model_size", value_parser = ["small", "medium", "large"])]
    pub model_size: Option<String>,
}

impl ModelArgs {
    pub fn resolve(self) -> Option<String> {
        self.model.or(self.model_size.map(|size| format!("facebook/musicgen-{size}")))
    }
}

/// Loads `--model`: a bundle folder, or a checkpoint folder or hub id exported once into the models
/// folder; says how long it took and whether the weights are random.
pub fn load(runtime: &Runtime, model: PathBuf, verify: Verify) -> Result<MusicGen> {
    let model = musicgen_interp::model::hub::resolve(&model.to_string_lossy(), &musicgen_interp::model::hub::models_dir())?;
    let start = std::time::Instant::now();
    let m = MusicGen::load(runtime, &model, verify)?;
    eprintln!("loaded {} in {:.2} s on {}", model.display(), start.elapsed().as_secs_f64(), runtime.describe());
    if m.manifest().source.kind == "random" {
        eprintln!("note: this bundle has random weights (a demo model): its clips and scores test the plumbing, they are not findings about MusicGen");
    }
    Ok(m)
}

/// Every option takes negative numbers as values, so `--duration -1` reaches its range check (and
/// a message naming the flag) instead of clap's "unexpected argument '-1'"; a single-valued float
/// option takes any value starting with a hyphen (`-inf`), which its value parser then judges.
pub fn negatives_as_values(cmd: clap::Command) -> clap::Command {
    use std::any::TypeId;
    cmd.mut_args(|a| {
        let float = { let t = a.get_value_parser().type_id(); t == TypeId::of::<f64>() || t == TypeId::of::<f32>() };
        if float && a.get_num_args().is_none() { a.allow_hyphen_values(true) } else { a.allow_negative_numbers(true) }
    })
    .mut_subcommands(negatives_as_values)
}

/// A path, or empty for a flag given bare (clap's own path parser refuses an empty value).
pub fn path_or_bare(s: &str) -> std::result::Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

/// `--loss-type`: mse or ce; the seed's `cross_entropy` is ce.
pub fn loss_type(s: &str) -> std::result::Result<String, String> {
    match s {
        "mse" => Ok("mse".into()),
        "ce" | "cross_entropy" => Ok("ce".into()),
        _ => Err("use mse or ce (the seed's cross_entropy is ce)".into()),
    }
}

// Value parsers shared with the library's own flag types.
pub use musicgen_interp::config::flags::{finite_f32, finite_f64, non_negative, positive};
