//! `train-probes` and `evaluate`: linear probes per layer on extracted residuals.

use std::path::PathBuf;

use clap::Args;

use musicgen_interp::probe::{self, Stream};
use musicgen_interp::{Error, Result};

use super::{finite_f64, loss_type};

// Named as the sub-command: `--dry-run` prints it as `TrainProbes { .. }`.
#[derive(Args, Debug)]
pub struct TrainProbes {
    /// The extraction folder (residuals_cond.npy, labels.npy).
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub output_dir: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub num_classes: usize,
    /// mse (least squares onto one-hot targets, closed form) or ce (multinomial logistic
    /// regression; the seed's `cross_entropy` is accepted for it).
    #[arg(long, default_value = "mse", value_parser = loss_type)]
    pub loss_type: String,
    /// Iterations of an iterative solver (ce); the closed-form mse probe ignores it and says so.
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Residual stream: cond or uncond (the seed's `--residual-type conditional|unconditional`).
    #[arg(long, visible_alias = "residual-type", default_value = "cond")]
    pub stream: Stream,
    #[arg(long, default_value_t = probe::DEFAULT_TEST_FRACTION, value_parser = finite_f64)]
    pub test_fraction: f64,
    #[arg(long, default_value_t = probe::DEFAULT_SEED)]
    pub seed: u64,
    /// Probe-model plugin: built-in name (linear-probe, smartcore-probe) or path to a library.
    #[arg(long, default_value = "linear-probe")]
    pub probe: String,
    /// The probe plugin's settings as a JSON object, e.g. '{"model": "knn", "k": 5}' (the host
    /// adds `loss` and `epochs` from their flags).
    #[arg(long)]
    pub settings: Option<String>,
}

pub fn train(args: TrainProbes) -> Result<()> {
    let TrainProbes { data_dir, output_dir, num_classes, loss_type, epochs, stream, test_fraction, seed, probe, settings } = args;
    musicgen_interp::store::check_writable(&output_dir, true)?;
    let options = probe::TrainOptions { num_classes, loss: loss_type.clone(), epochs, stream, test_fraction, seed, probe };
    let bar = indicatif::ProgressBar::new(0);
    let metrics = probe::train_with(&data_dir, &output_dir, &options, settings.as_deref(), |i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64)
    })?;
    bar.finish_and_clear();
    for m in &metrics {
        println!("layer {:>3}  test accuracy {:.4}  test loss {:.6}", m.layer, m.accuracy, m.loss);
    }
    let best = probe::best_layer(&metrics);
    let probes = probe::trained_probes_file(&output_dir, &loss_type);
    println!("best layer {best}; wrote {}/{probes}, {loss_type}_metrics.json, {loss_type}_split.json", output_dir.display());
    Ok(())
}

// Named as the sub-command: `--dry-run` prints it as `Evaluate { .. }`.
#[derive(Args, Debug)]
pub struct Evaluate {
    #[arg(long)]
    pub data_dir: PathBuf,
    #[arg(long)]
    pub weights_file: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub num_classes: usize,
    #[arg(long)]
    pub output_plot: PathBuf,
    /// Folder for the CSVs and the confusion matrices (default: the weights' folder).
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// The split written by train-probes with these weights (default: NAME_split.json beside
    /// NAME_weights.npy); a split written for other weights is refused. Weights that come with
    /// none get training's split, made here and saved as NAME_split.json in the output folder.
    #[arg(long)]
    pub split: Option<PathBuf>,
    /// mse or ce (default: from the weights file name, `ce_weights.npy` -> ce).
    #[arg(long, value_parser = loss_type)]
    pub loss_type: Option<String>,
    /// Weights trained elsewhere come without a split: evaluate then makes train-probes'
    /// stratified split of this stream itself (default cond), and says so.
    #[arg(long, visible_alias = "residual-type")]
    pub stream: Option<Stream>,
}

pub fn evaluate(args: Evaluate) -> Result<()> {
    let Evaluate { data_dir, weights_file, num_classes, output_plot, output_dir, split, loss_type, stream } = args;
    // Without --split, weights that come with none (trained elsewhere) get training's split.
    let fallback = split.is_none().then_some(probe::SplitRule { num_classes, stream });
    let split = split.unwrap_or_else(|| probe::default_split_for(&weights_file));
    let kind = loss_type.unwrap_or_else(|| probe::loss_from_file_name(&weights_file));
    let dir = output_dir.unwrap_or_else(|| probe::default_output_dir(&weights_file));
    musicgen_interp::store::check_writable(&output_plot, false)?;
    musicgen_interp::store::check_writable(&dir.join("x"), false)?;
    let e = probe::evaluate_with(&data_dir, &weights_file, &split, &kind, fallback.as_ref())?;
    if e.split.num_classes != num_classes {
        return Err(Error::Input(format!("--num-classes {num_classes}, but the split was made for {}", e.split.num_classes)));
    }
    let stem = probe::output_stem(&weights_file);
    if e.made_split {
        let path = dir.join(format!("{stem}_split.json"));
        probe::write_split(&path, &e.split)?;
        println!("evaluated on a split made here (none came with the weights), saved as {}", path.display());
    }
    probe::write_evaluation(&dir, &stem, &e)?;
    probe::plot(&output_plot, &e.metrics, &kind, e.best)?;
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

// Named as the sub-command: `--dry-run` prints it as `ProbePipeline { .. }`.
#[derive(Args, Debug)]
pub struct ProbePipeline {
    pub config: PathBuf,
}

/// `probe-pipeline CONFIG.yaml`: extract -> train-probes -> evaluate -> steer, one line per result.
pub fn pipeline(runtime: &musicgen_interp::Runtime, verify: musicgen_interp::Verify, args: ProbePipeline) -> Result<()> {
    let config = musicgen_interp::pipeline::PipelineConfig::load(&args.config)?;
    musicgen_interp::store::check_writable(&config.output, true)?;
    let mut m = super::load(runtime, PathBuf::from(&config.model), verify)?;
    musicgen_interp::pipeline::run(&mut m, &config, runtime.library(), |line| println!("{line}")).map(|_| ())
}
