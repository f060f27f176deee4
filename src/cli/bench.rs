//! `bench` (steps/s against PyTorch, the bytes-moved floor, peak RSS) and `compare` (one bundle's
//! fidelity against another).

use std::path::PathBuf;

use clap::Args;

use musicgen_interp::hooks::HookPoint;
use musicgen_interp::model::Verify;
use musicgen_interp::runtime::Runtime;
use musicgen_interp::Result;

use super::{load, positive};

// Named as the sub-command: `--dry-run` prints it as `Bench { .. }`.
#[derive(Args, Debug)]
pub struct Bench {
    /// A random-weight bundle (its hf/ folder is what PyTorch runs), e.g. models/small.
    #[arg(long)]
    pub model: PathBuf,
    /// Clip lengths, seconds.
    #[arg(long, value_delimiter = ',', default_value = "1,10,30", value_parser = positive)]
    pub durations: Vec<f64>,
    /// Cached positions for the single-step timing.
    #[arg(long, value_delimiter = ',', default_value = "50,500,1500")]
    pub positions: Vec<usize>,
    /// Skip the PyTorch comparison.
    #[arg(long)]
    pub no_torch: bool,
}

/// `threads`: `--threads` as given (0 = one per core).
pub fn bench(runtime: &Runtime, verify: Verify, args: Bench, threads: usize) -> Result<()> {
    let Bench { model, durations, positions, no_torch } = args;
    let mut m = load(runtime, model, verify)?;
    let threads = if threads > 0 { threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
    let options = musicgen_interp::bench::BenchOptions { durations, positions, torch: !no_torch, threads };
    eprintln!("provider {}, {} threads", runtime.describe(), threads);
    let dir = m.bundle.dir.clone();
    musicgen_interp::bench::run(&mut m, &dir, &options).map(|_| ())
}

// Named as the sub-command: `--dry-run` prints it as `Compare { .. }`.
#[derive(Args, Debug)]
pub struct Compare {
    /// The bundle to judge (e.g. models/small-int8).
    #[arg(long)]
    pub model: PathBuf,
    /// The reference bundle (e.g. models/small).
    #[arg(long)]
    pub reference: PathBuf,
    #[arg(long, default_value = "80s pop track with bassy drums and synth")]
    pub text: String,
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
}

pub fn compare(runtime: &Runtime, verify: Verify, args: Compare) -> Result<()> {
    let Compare { model, reference, text, steps } = args;
    let mut candidate = load(runtime, model, verify)?;
    let mut reference = load(runtime, reference, verify)?;
    let f = musicgen_interp::bench::fidelity(&mut candidate, &mut reference, &text, steps)?;
    println!("{:<28} {:>10} {:>12} {:>12}", "hook point", "cosine", "delta cosine", "delta error");
    for l in 0..f.residual_cosine.len() {
        println!("{:<28} {:>10.6} {:>12.6} {:>12.6}", HookPoint::ResidPost(l).to_string(), f.residual_cosine[l], f.delta_cosine[l], f.delta_error[l]);
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!("over {} positions: residual cosine min {:.6}, next-token agreement {:.2}%", f.positions, min(&f.residual_cosine), 100.0 * f.token_agreement);
    println!(
        "what each layer adds (hook_resid_post - hook_resid_pre): cosine min {:.6}, relative error max {:.6}; logits relative error {:.6}",
        min(&f.delta_cosine),
        f.delta_error.iter().copied().fold(0.0, f64::max),
        f.logits_error
    );
    Ok(())
}
