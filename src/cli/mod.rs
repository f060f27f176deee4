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
use musicgen_interp::runtime::Runtime;
use musicgen_interp::Result;

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
