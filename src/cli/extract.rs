//! `extract` and `process-lewtun`: every layer's residual stream for a labelled dataset.

use std::path::PathBuf;

use clap::Args;

use musicgen_interp::hooks::Reduction;
use musicgen_interp::model::Verify;
use musicgen_interp::runtime::Runtime;
use musicgen_interp::{Error, Result};

use super::{load, non_negative, positive};

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// Bundle folder, checkpoint folder, or hub id.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A folder with one sub-folder of audio files per class, or a labels.csv (path,label).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, visible_alias = "save-dir")]
    pub output_dir: PathBuf,
    /// Read the Hugging Face dataset lewtun/music_genres (or --dataset) instead of --data-dir: from
    /// the Hugging Face cache, downloaded into it first when missing and the hub can be reached.
    #[arg(long)]
    pub lewtun: bool,
    /// The hub dataset read with --lewtun / process-lewtun: lewtun/music_genres, or a copy with its
    /// columns (the seed used roovy54/lewtun_music_genres_modified).
    #[arg(long, value_name = "REPO_ID")]
    pub dataset: Option<String>,
    /// A prompt set instead of audio: CSV `text,label` or JSON [{"text", "label"}]; each prompt is generated from text alone.
    #[arg(long, conflicts_with_all = ["data_dir", "lewtun"])]
    pub prompts: Option<PathBuf>,
    /// Keep only these genres (comma-separated), e.g. Jazz,Rock.
    #[arg(long, value_delimiter = ',')]
    pub genres: Vec<String>,
    /// Label map `name=id,...`; other labels are skipped and counted. Default: Classical=0,
    /// Electronic=1, Rock=2, Jazz=3 for audio; a prompt set's own labels, numbered in order of first
    /// appearance.
    #[arg(long)]
    pub labels: Option<String>,
    /// Text prompt for every segment; `{genre}` is replaced by its label (the default names none).
    #[arg(long, default_value = musicgen_interp::extract::DEFAULT_PROMPT)]
    pub prompt_template: String,
    /// Decoder steps generated after each segment (the seed's `--max-tokens`).
    #[arg(long, visible_alias = "max-tokens", default_value_t = 50)]
    pub steps: usize,
    #[arg(long, default_value = "last")]
    pub reduction: Reduction,
    #[arg(long, default_value_t = 10.0, value_parser = positive)]
    pub segment_seconds: f64,
    /// Tracks (and last pieces) shorter than this are skipped; a skipped track is counted and named.
    #[arg(long, default_value_t = 2.0, value_parser = non_negative)]
    pub min_seconds: f64,
    /// Use at most N tracks, taken evenly across classes (classes take turns, each giving its next
    /// track in id order).
    #[arg(long)]
    pub max_samples: Option<usize>,
    /// This host's share of the tracks, i/n (dealt round-robin in id order).
    #[arg(long, default_value = "0/1")]
    pub shard: musicgen_interp::data::Shard,
    #[command(flatten)]
    pub sampling: musicgen_interp::generate::SamplingOverrides,
    /// Segments generated together: a number, or auto (sized to the device's free memory). The
    /// residuals do not depend on it.
    #[arg(long, default_value = "auto")]
    pub batch_size: musicgen_interp::generate::BatchSize,
    /// Only merge the segments already in --output-dir (after all shards finished).
    #[arg(long)]
    pub merge: bool,
    /// Print the extraction's progress in --output-dir and exit: tracks done, pending and failed per
    /// label, the failures' errors, and the time to finish from the tracks' own timings.
    #[arg(long, conflicts_with = "merge")]
    pub status: bool,
}

pub fn run(runtime: &Runtime, verify: Verify, args: ExtractArgs) -> Result<()> {
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
        let report = extract::extract(&mut m, &scan, &args.output_dir, &settings, args.shard, args.batch_size, |key| {
            bar.set_message(key.to_string());
            bar.inc(1)
        })?;
        bar.finish_and_clear();
        eprintln!("{}", report.batch);
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
