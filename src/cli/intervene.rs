//! `intervene`: interchange interventions, resumable and shardable, with `--status`.

use std::path::PathBuf;

use clap::Args;

use musicgen_interp::model::Verify;
use musicgen_interp::runtime::Runtime;
use musicgen_interp::{Error, Result};

use super::{load, path_or_bare, positive, JudgeArgs, ModelArgs, PromptSetArgs};

#[derive(Args, Debug)]
pub struct InterveneArgs {
    /// A YAML file with every setting (configs/intervene.yaml); the flags below build one otherwise.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Only pairs whose original concept is this one (name, or the seed's index 0-9 in the paper's
    /// order; -1 = all).
    #[arg(long, alias = "fixed_concept")]
    pub fixed_concept: Option<String>,
    #[command(flatten)]
    pub prompt_set: PromptSetArgs,
    /// Reuse the concept means in this folder (refused if another model, prompt set or sampling made
    /// them, or if a concept's are missing); without a folder (the seed's flag), the means cached in
    /// the output folder's means/.
    #[arg(long, alias = "pre_computed_means", num_args = 0..=1, default_missing_value = "", value_parser = path_or_bare)]
    pub pre_computed_means: Option<PathBuf>,
    /// Write the best and worst intervention's clip for each prompt.
    #[arg(long, alias = "save_extremes")]
    pub save_extremes: bool,
    /// adjust, replace, or both.
    #[arg(long, value_delimiter = ',', default_value = "adjust,replace")]
    pub modes: Vec<String>,
    /// Sites such as blocks.3.mlp (default: every component of every layer).
    #[arg(long, value_delimiter = ',')]
    pub sites: Vec<String>,
    /// Seconds per clip.
    #[arg(long, default_value_t = 4.0, value_parser = positive)]
    pub duration: f64,
    /// Interventions generated together: a number, or auto (sized to the device's free memory;
    /// the run's first start fixes it in plan.json for every shard).
    #[arg(long, default_value = "auto")]
    pub batch_size: musicgen_interp::generate::BatchSize,
    /// Prompts generated together for the concept means and baselines: a number, or auto.
    #[arg(long, default_value = "auto")]
    pub means_batch_size: musicgen_interp::generate::BatchSize,
    #[command(flatten)]
    pub judge: JudgeArgs,
    #[command(flatten)]
    pub sampling: musicgen_interp::generate::SamplingOverrides,
    /// This host's share of the run, i/n (a job array's index and size). A sharded run needs the
    /// concept means made first (--means-only) unless --compute-means; an unsharded one makes them.
    #[arg(long, default_value = "0/1")]
    pub shard: musicgen_interp::data::Shard,
    /// The means phase of a sweep: compute (or check) the concept means only, dealt by concept
    /// over --shard i/n; no baselines, no interventions.
    #[arg(long, conflicts_with = "compute_means")]
    pub means_only: bool,
    /// Let a sharded run compute missing concept means itself (every shard lacking them would).
    #[arg(long)]
    pub compute_means: bool,
    /// Print a run's progress and exit: parts done, pending and failed per pair, the failures'
    /// errors, and the time to finish (pending x median part time / shards active); DIR defaults
    /// to the run's output folder (--output-dir or the config's).
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_parser = path_or_bare)]
    pub status: Option<PathBuf>,
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
}

impl InterveneArgs {
    pub fn config(self) -> Result<musicgen_interp::interchange::InterveneConfig> {
        use musicgen_interp::interchange::InterveneConfig;
        if let Some(path) = &self.config {
            return InterveneConfig::load(path);
        }
        let need = |what: &str| Error::Input(format!("intervene needs --{what} (or --config FILE)"));
        let model = self.model.resolve().ok_or_else(|| need("model"))?;
        let fixed_concept = musicgen_interp::data::concepts::fixed_concept(self.fixed_concept)?;
        let output = self.output_dir.ok_or_else(|| need("output-dir"))?;
        // The seed's bare --pre_computed_means: the means this output folder caches.
        let pre_computed_means = self.pre_computed_means.map(|p| if p.as_os_str().is_empty() { output.join("means") } else { p });
        let judge = self.judge.config()?.ok_or_else(|| need("judge-model (a classifier, or a judge folder such as onnx/export_passt.py writes)"))?;
        let musicgen_interp::generate::SamplingOverrides { seed, top_k, temperature, guidance_scale } = self.sampling;
        Ok(InterveneConfig {
            model,
            concepts: self.prompt_set.concepts,
            fixed_concept,
            n_prompts_per_concept: self.prompt_set.n_prompts_per_concept,
            prompt_sampling: self.prompt_set.prompt_sampling,
            prompt_seed: 0,
            duration: self.duration,
            seed,
            top_k,
            temperature,
            guidance_scale,
            modes: self.modes.iter().map(|m| m.parse()).collect::<Result<_>>()?,
            sites: self.sites,
            batch_size: self.batch_size,
            means_batch_size: self.means_batch_size,
            pre_computed_means,
            save_extremes: self.save_extremes,
            judge,
            output,
        })
    }
}

pub fn run(runtime: &Runtime, verify: Verify, args: InterveneArgs) -> Result<()> {
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
    for note in run.batch_notes() {
        eprintln!("{note}");
    }
    let noted = run.batch_notes().len();
    let bar = indicatif::ProgressBar::new_spinner();
    let progress = |what: &str| {
        bar.set_message(what.to_string());
        bar.tick()
    };
    let report = if means_only { run.means_only(shard, progress) } else { run.run_with(shard, policy, progress) };
    bar.finish_and_clear();
    for note in &run.batch_notes()[noted..] {
        eprintln!("{note}");
    }
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
