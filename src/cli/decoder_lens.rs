//! `decoder-lens`: early-exit clips per layer, their self-similarity and NDCG.

use std::path::PathBuf;

use clap::Args;

use musicgen_interp::model::Verify;
use musicgen_interp::runtime::Runtime;
use musicgen_interp::{Error, Result};

use super::{load, positive, JudgeArgs, ModelArgs, PromptSetArgs};

#[derive(Args, Debug)]
pub struct DecoderLensArgs {
    /// A YAML file with every setting (configs/decoder-lens.yaml); the flags below build one otherwise.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text prompt(s) of your own; `--concept` names their concept for NDCG.
    #[arg(long)]
    pub text: Vec<String>,
    #[arg(long)]
    pub concept: Option<String>,
    #[command(flatten)]
    pub prompt_set: PromptSetArgs,
    /// Seconds per clip.
    #[arg(long, default_value_t = 4.0, value_parser = positive)]
    pub duration: f64,
    /// Prompts generated together: a number, or auto (sized to the device's free memory).
    #[arg(long, default_value = "auto")]
    pub batch_size: musicgen_interp::generate::BatchSize,
    /// Also the original DecoderLens: the decoder cross-attends to each text-encoder layer.
    #[arg(long)]
    pub text_layers: bool,
    #[command(flatten)]
    pub sampling: musicgen_interp::generate::SamplingOverrides,
    #[command(flatten)]
    pub judge: JudgeArgs,
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}

impl DecoderLensArgs {
    pub fn config(self) -> Result<musicgen_interp::decoder_lens::DecoderLensConfig> {
        if let Some(path) = &self.config {
            return musicgen_interp::decoder_lens::DecoderLensConfig::load(path);
        }
        let need = |what: &str| Error::Input(format!("decoder-lens needs --{what} (or --config FILE)"));
        let musicgen_interp::generate::SamplingOverrides { seed, top_k, temperature, guidance_scale } = self.sampling;
        Ok(musicgen_interp::decoder_lens::DecoderLensConfig {
            model: self.model.resolve().ok_or_else(|| need("model"))?,
            prompts: self.text,
            concept: self.concept,
            concepts: self.prompt_set.concepts,
            n_prompts_per_concept: self.prompt_set.n_prompts_per_concept,
            prompt_sampling: self.prompt_set.prompt_sampling,
            prompt_seed: 0,
            duration: self.duration,
            seed,
            top_k,
            temperature,
            guidance_scale,
            text_layers: self.text_layers,
            batch_size: self.batch_size,
            judge: self.judge.config()?,
            output: self.output_dir.ok_or_else(|| need("output-dir"))?,
        })
    }
}

pub fn run(runtime: &Runtime, verify: Verify, args: DecoderLensArgs) -> Result<()> {
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
    eprintln!("{}", report.batch);
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
